//! A controller and agents in one process, talking over loopback TLS exactly as they would
//! across a network.

use molar_agent::logfwd::LogBuffer;
use molar_agent::session::{Agent, AgentConfig, Backoff, Methods};
use molar_agent::tasks::{Task, TaskContext, TaskFailure};
use molar_agent::tls::Trust;
use molar_controller::client::Client;
use molar_controller::{Running, ServeConfig};
use molar_protocol::catalogue::Qc;
use molar_protocol::{Method, Secret, codes};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A test task: counts `steps` steps of `step_ms` each, honouring cancellation; logs at
/// start so log forwarding can be checked. Registered as `decom.qc`, in place of the
/// product's spec check (tested in `qc_e2e.rs`): the controller starts only catalogue tasks.
pub struct Count;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    pub steps: u64,
    pub step_ms: u64,
    #[serde(default)]
    pub fail: bool,
}

impl Task for Count {
    type Params = CountParams;

    async fn run(&self, p: CountParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        tracing::info!(task_id = ctx.task_id(), steps = p.steps, "counting started");
        for i in 0..p.steps {
            tokio::select! {
                _ = ctx.cancel_token().cancelled() => return Err(TaskFailure::cancelled()),
                _ = tokio::time::sleep(Duration::from_millis(p.step_ms)) => {}
            }
            ctx.set_progress_of(i + 1, p.steps);
        }
        if p.fail {
            return Err(TaskFailure::new(codes::IO, "counting failed as asked"));
        }
        Ok(json!({ "counted": p.steps }))
    }
}

/// A controller in a temp state dir, restartable on the same dir and ports.
pub struct Controller {
    pub state: tempfile::TempDir,
    pub running: Option<Running>,
    shutdown: CancellationToken,
    listen: SocketAddr,
    api: SocketAddr,
    sans: Vec<String>,
    /// The token-less metrics listener's address, when started with one.
    pub metrics: Option<SocketAddr>,
    /// The policy file it starts with.
    pub policy: Option<PathBuf>,
    /// The periodic BMC checks it starts with (`None`: `ServeConfig`'s default).
    pub bmc_checks: Option<molar_controller::bmc::CheckPolicy>,
    /// The media directory and its plain-HTTP listener, when started with them.
    pub media: Option<(PathBuf, SocketAddr)>,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Controller {
    /// Starts a controller on fixed loopback ports so a restart keeps its address.
    pub async fn start() -> Controller {
        Self::start_with_sans(Vec::new()).await
    }

    /// Starts a controller whose certificate also names `sans` (e.g. the address a VM dials).
    pub async fn start_with_sans(sans: Vec<String>) -> Controller {
        let state = tempfile::tempdir().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut c = Controller {
            state,
            running: None,
            shutdown: CancellationToken::new(),
            listen,
            api,
            sans,
            metrics: None,
            policy: None,
            bmc_checks: None,
            media: None,
        };
        c.restart().await;
        c
    }

    /// Starts a controller with a policy file of `text` (kept in its state dir).
    pub async fn start_with_policy(text: &str) -> Controller {
        let mut c = Self::start().await;
        let path = c.state.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        c.policy = Some(path);
        c.restart().await;
        c
    }

    /// Starts a controller whose certificate also names `sans`, with a policy file of `text`.
    pub async fn start_with_sans_and_policy(sans: Vec<String>, text: &str) -> Controller {
        let mut c = Self::start_with_sans(sans).await;
        let path = c.state.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        c.policy = Some(path);
        c.restart().await;
        c
    }

    /// Starts a controller that also serves `/metrics` without a token on a loopback port.
    pub async fn start_with_metrics_listener() -> Controller {
        let mut c = Self::start().await;
        c.metrics = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        c.restart().await;
        c
    }

    /// Starts a controller serving `dir` at `/media/NAME` on the API and on a plain-HTTP
    /// loopback listener.
    pub async fn start_with_media(dir: &Path) -> Controller {
        let mut c = Self::start().await;
        c.media = Some((
            dir.to_path_buf(),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        ));
        c.restart().await;
        c
    }

    /// `http://ADDR/media/NAME` on the plain-HTTP media listener.
    pub fn media_url(&self, name: &str) -> String {
        let (_, addr) = self.media.as_ref().expect("started with media");
        format!("http://{addr}/media/{name}")
    }

    /// (Re)starts on the same state dir and ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.shutdown = CancellationToken::new();
        let mut cfg = ServeConfig::new(self.listen, self.api, self.state.path());
        cfg.sans = self.sans.clone();
        cfg.metrics_listen = self.metrics;
        cfg.policy = self.policy.clone();
        if let Some(c) = self.bmc_checks {
            cfg.bmc_checks = Some(c);
        }
        if let Some((dir, addr)) = &self.media {
            cfg.media_dir = Some(dir.clone());
            cfg.media_listen = Some(*addr);
        }
        let running = molar_controller::start(cfg, self.shutdown.clone())
            .await
            .expect("controller starts");
        self.running = Some(running);
    }

    /// Stops it, dropping every agent connection.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), r.join())
                .await
                .expect("controller stops within 10 s");
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("controller is running")
    }

    pub fn client(&self) -> Client {
        self.running().client().unwrap()
    }

    pub fn agent_addr(&self) -> String {
        self.listen.to_string()
    }

    /// The agent listener's port (what a lab VM's guestfwd points at).
    pub fn agent_port(&self) -> u16 {
        self.listen.port()
    }

    /// An HTTPS client that trusts this controller's CA and nothing else.
    pub fn https(&self) -> reqwest::Client {
        let ca = std::fs::read(self.ca_pem()).expect("the controller's CA");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM CA"))
            .build()
            .expect("an HTTPS client")
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.state.path().join("ca.pem")
    }

    /// `molar --state-dir STATE ARGS` against this controller, as an operator runs it: exit
    /// code, stdout, stderr. Blocks (off the async workers on a multi-threaded runtime).
    pub fn molar(&self, args: &[&str]) -> (i32, String, String) {
        let run = || {
            std::process::Command::new(crate::bins::bin("molar"))
                .arg("--state-dir")
                .arg(self.state.path())
                .args(args)
                .output()
                .expect("running molar")
        };
        let out = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        };
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn agent_token(&self) -> Secret {
        self.client()
            .create_token("test-agents")
            .await
            .unwrap()
            .token
    }
}

/// A fixture root making a machine with the given serial and MAC.
pub fn machine_root(dir: &Path, serial: &str, mac: &str) {
    let w = |rel: &str, s: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("sys/class/dmi/id/product_serial", serial);
    w(
        "sys/class/dmi/id/product_uuid",
        &format!(
            "5e1f6c2a-8d3b-4b8e-9a51-{:0>12}",
            serial.to_ascii_lowercase()
        ),
    );
    w("sys/class/net/eth0/address", mac);
    std::fs::create_dir_all(dir.join("sys/class/net/eth0/device")).unwrap();
    w("proc/sys/kernel/random/boot_id", &format!("boot-{serial}"));
}

/// An agent running in this process.
pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub root: tempfile::TempDir,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestAgent {
    pub fn config(addr: &str, trust: Trust, token: Secret, root: &Path) -> AgentConfig {
        let mut cfg = AgentConfig::new(addr, trust, token);
        cfg.root = root.to_owned();
        cfg.backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        cfg
    }

    /// The product's capabilities on the machine under `root` (nothing destructive allowed),
    /// plus the test task (as `decom.qc`).
    pub fn methods(root: &Path) -> Methods {
        let mut m = molar_agent::capabilities::methods(&molar_agent::capabilities::Machine::host(
            root.to_owned(),
            &[],
        ));
        m.task(Qc::NAME, Count);
        m
    }

    /// Starts an agent for a machine with `serial`.
    pub fn start(addr: &str, trust: Trust, token: Secret, serial: &str) -> TestAgent {
        let root = tempfile::tempdir().unwrap();
        machine_root(root.path(), serial, "52:54:00:12:34:56");
        let cfg = Self::config(addr, trust, token, root.path());
        Self::start_with(cfg, root, LogBuffer::new(100))
    }

    pub fn start_with(
        cfg: AgentConfig,
        root: tempfile::TempDir,
        logs: Arc<LogBuffer>,
    ) -> TestAgent {
        let methods = Self::methods(&cfg.root);
        Self::start_with_methods(cfg, root, logs, methods)
    }

    /// Starts an agent offering `methods` (e.g. the product's capabilities).
    pub fn start_with_methods(
        cfg: AgentConfig,
        root: tempfile::TempDir,
        logs: Arc<LogBuffer>,
        methods: Methods,
    ) -> TestAgent {
        let agent = Agent::new(cfg, methods, logs);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let agent = agent.clone();
            let shutdown = shutdown.clone();
            async move { agent.run(shutdown).await }
        });
        TestAgent {
            agent,
            root,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10 s")
            .unwrap();
        self.root
    }
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `secs`.
/// Starts `method` on server `id` and follows its events to the end (panicking after
/// `within`, naming the last event); returns the terminal event and the stored task.
pub async fn follow_task(
    c: &Client,
    id: &str,
    method: &str,
    params: Value,
    within: Duration,
) -> (
    molar_controller::store::TaskEvent,
    molar_controller::store::TaskRecord,
) {
    let started = c
        .start_task(id, method, params)
        .await
        .unwrap_or_else(|e| panic!("starting {method}: {e}"));
    let mut events = c.task_events(&started.task_id).await.unwrap();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) => last = Some(ev.unwrap()),
            Ok(None) => break,
            Err(_) => panic!("{method} did not end within {within:?}; last event {last:?}"),
        }
    }
    let last = last.unwrap_or_else(|| panic!("{method}: no events"));
    let record = c.task(&started.task_id).await.unwrap();
    (last, record)
}

pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the controller lists a connected server with this serial; returns its id.
pub async fn connected_server(client: &Client, serial: &str) -> String {
    eventually(20, &format!("server {serial} to connect"), || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.serial.as_deref() == Some(serial) && s.server.connected)
            .map(|s| s.server.id)
    })
    .await
}
