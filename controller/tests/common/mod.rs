//! Helpers shared by the controller's integration tests: a controller on loopback in a temp
//! state dir, fake agents built on the real protocol `Peer` over TLS, and raw-line clients.
// Test helpers: a failed setup step should panic with its error.
#![allow(dead_code, clippy::unwrap_used)]

use futures::FutureExt;
use molar_controller::{Running, ServeConfig, start};
use molar_protocol::Method;
use molar_protocol::catalogue::Handshake;
use molar_protocol::methods::{HandshakeParams, HandshakeResult, NodeIdentity};
use molar_protocol::{CloseReason, ErrorBody, Handler, Peer, PeerConfig, PeerHandle, Secret};
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Controller {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub shutdown: CancellationToken,
    pub client: molar_controller::client::Client,
    pub agent_token: String,
}

pub async fn controller() -> Controller {
    controller_with(|_| {}).await
}

/// [`controller`] with `change` applied to its configuration.
pub async fn controller_with(change: impl FnOnce(&mut ServeConfig)) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut cfg = ServeConfig::loopback(dir.path());
    // These tests run on a current-thread runtime, where the console's blocking opener
    // (`Handle::block_on`) stalls while the periodic BMC check loop holds a timer; the
    // checks have their own test (tests/tests/bmc_table.rs, multi-threaded).
    cfg.bmc_checks = None;
    change(&mut cfg);
    let running = start(cfg, shutdown.clone()).await.unwrap();
    let client = running.client().unwrap();
    let agent_token = client
        .create_token("tests")
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    Controller {
        dir,
        running,
        shutdown,
        client,
        agent_token,
    }
}

pub fn tls_connector(ca_pem: &Path) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

pub async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &Path,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tls_connector(ca_pem).connect(name, tcp).await.unwrap()
}

pub fn hello(token: &str, n: u32) -> HandshakeParams {
    HandshakeParams {
        agent_version: "0.1.0-test".into(),
        protocols: vec!["v1".into()],
        boot_id: format!("boot-{n}"),
        node: NodeIdentity {
            system_uuid: Some(format!("4c4c4544-0000-4000-8000-{n:012x}")),
            serial: None,
            macs: vec![format!(
                "52:54:00:00:{:02x}:{:02x}",
                n >> 8 & 0xff,
                n & 0xff
            )],
            hostname: Some(format!("node{n}")),
        },
        token: Secret::new(token),
        session: None,
    }
}

/// The fake agent's counting task: three running steps then `complete`. A catalogue task
/// (the controller starts no other), non-destructive.
pub const TASK: &str = molar_protocol::catalogue::Qc::NAME;
/// A catalogue task the fake agent refuses.
pub const REFUSED_TASK: &str = molar_protocol::catalogue::FirmwareSecure::NAME;

/// The inventory the fake agent reports (a QEMU q35 machine with two NVMe namespaces of one
/// controller and a virtio disk).
pub fn inventory_sample() -> Value {
    serde_json::from_str(include_str!(
        "../../../protocol/tests/data/inventory-qemu-q35.json"
    ))
    .unwrap()
}

/// Answers [`TASK`], [`REFUSED_TASK`], `bmc.set_credentials`, `bmc.info`,
/// `decom.disk_erase` (accepted, never reported) and one method per error code; not
/// `inventory`, so the server stays in discovery.
pub fn fake_handler() -> Arc<dyn Handler> {
    fake_handler_with(Arc::new(AtomicBool::new(false)))
}

/// [`fake_handler`], also answering `inventory` with [`inventory_sample`] while `inventory`
/// holds.
pub fn fake_handler_with(inventory: Arc<AtomicBool>) -> Arc<dyn Handler> {
    Arc::new(move |peer: &PeerHandle, method: String, params: Value| {
        let peer = peer.clone();
        let inventory = inventory.load(Ordering::SeqCst);
        async move {
            match method.as_str() {
                TASK => {
                    let task_id = params["task_id"].as_str().unwrap_or_default().to_owned();
                    let steps = params["steps"].as_u64().unwrap_or(3);
                    let id = task_id.clone();
                    tokio::spawn(async move {
                        for i in 1..=steps {
                            let st = json!({"task_id": id, "state": "running",
                                "percent": (i * 100 / (steps + 1)) as f64, "eta": steps + 1 - i, "seq": i});
                            let _ = peer.call("task_status", st).await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let done = json!({"task_id": id, "state": "complete",
                            "result": {"ok": true}, "seq": steps + 1});
                        let _ = peer.call("task_status", done).await;
                    });
                    Ok(json!({"task_id": task_id, "state": "running"}))
                }
                REFUSED_TASK => Err(ErrorBody::new("refused", "the fake agent refuses")),
                "inventory" if inventory => Ok(inventory_sample()),
                "bmc.set_credentials" => Ok(json!({"user_id": 3, "username": params["username"],
                    "password": "Zq8-fake-pw", "privilege": "administrator", "channels": [1],
                    "sol_enabled": true, "password_verified": true})),
                "bmc.info" => Ok(json!({"device_id": 32, "device_revision": 1,
                    "firmware_version": "9.08", "ipmi_version": "2.0", "manufacturer_id": 4753,
                    "product_id": 3842, "users": [], "lan_channels": [
                        {"channel": 1, "mac": "52:54:00:be:ef:01", "ip": "192.0.2.10"}]})),
                "decom.disk_erase" => Ok(json!({"task_id": params["task_id"], "state": "running"})),
                // One answer per error code, for the API's status mapping.
                "reboot" => Err(ErrorBody::new("refused", "not outside the ramdisk")),
                "poweroff" => Err(ErrorBody::new("busy", "an erase is running")),
                "task.cancel" => Err(ErrorBody::new("unknown_task", "no task t-x")),
                "bmc.reset" => Err(ErrorBody::new("io_error", "the BMC did not answer")),
                "chassis.power" => Err(ErrorBody::new("unauthorized", "the BMC refused")),
                "chassis.boot_device" => Err(ErrorBody::new("hardware_not_ready", "coldplug")),
                "task.list" => Err(ErrorBody::new("not_ready", "handshake not taken in")),
                "status" => std::future::pending().await,
                other => Err(ErrorBody::new(
                    "unknown_method",
                    format!("unknown method {other}"),
                )),
            }
        }
        .boxed()
    })
}

pub struct FakeAgent {
    pub peer: PeerHandle,
    pub task: JoinHandle<CloseReason>,
    pub welcome: HandshakeResult,
}

pub async fn fake_agent(c: &Controller, n: u32) -> FakeAgent {
    fake_agent_with(c, n, fake_handler()).await
}

/// A fake agent answering with `handler`.
pub async fn fake_agent_with(c: &Controller, n: u32, handler: Arc<dyn Handler>) -> FakeAgent {
    let tls = tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await;
    let (peer, task) = Peer::spawn(
        tls,
        handler,
        PeerConfig {
            name: format!("fake agent {n}"),
            id_prefix: "a".into(),
            ..PeerConfig::default()
        },
    );
    let welcome = peer
        .call_method::<Handshake>(&hello(&c.agent_token, n))
        .await
        .unwrap();
    FakeAgent {
        peer,
        task,
        welcome,
    }
}

/// A fake agent handshaking with `hello` (its own token, identity, boot and session
/// credential); the controller's refusal as the error.
pub async fn fake_agent_as(
    c: &Controller,
    hello: &HandshakeParams,
) -> Result<FakeAgent, molar_protocol::CallError> {
    let tls = tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await;
    let (peer, task) = Peer::spawn(
        tls,
        fake_handler(),
        PeerConfig {
            name: format!("fake agent {}", hello.boot_id),
            id_prefix: "a".into(),
            ..PeerConfig::default()
        },
    );
    match peer.call_method::<Handshake>(hello).await {
        Ok(welcome) => Ok(FakeAgent {
            peer,
            task,
            welcome,
        }),
        Err(e) => {
            let _ = task.await;
            Err(e)
        }
    }
}

/// Runs the `molar` binary against `c`: exit code, stdout, stderr.
pub async fn molar(c: &Controller, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .arg("--state-dir")
        .arg(c.dir.path())
        .args(args)
        .env_remove("MOLAR_API")
        .env_remove("MOLAR_TOKEN_FILE")
        .env_remove("MOLAR_CA")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw line client over TLS.
pub struct Raw<S> {
    pub rd: BufReader<tokio::io::ReadHalf<S>>,
    pub wr: tokio::io::WriteHalf<S>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite> Raw<S> {
    pub fn new(s: S) -> Self {
        let (rd, wr) = tokio::io::split(s);
        Raw {
            rd: BufReader::new(rd),
            wr,
        }
    }
    pub async fn send(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
        self.wr.flush().await.unwrap();
    }
    /// The next line, `None` at EOF (or a reset after the close).
    pub async fn recv(&mut self) -> Option<String> {
        let mut s = String::new();
        match tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut s)).await {
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(_)) => Some(s.trim_end().to_owned()),
            Err(_) => panic!("no line within 10 s"),
        }
    }
    pub async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv().await.expect("a line")).unwrap()
    }
}

/// Waits until `f` holds (polling), panicking after 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Asserts another agent still answers a ping through the API.
pub async fn still_answers(c: &Controller, server_id: &str) {
    let r = c
        .client
        .call(server_id, "ping", json!({"alive": true}), None)
        .await
        .unwrap();
    assert_eq!(r, json!({"alive": true}));
}

/// One API request with explicit headers and body: the status and the JSON answer.
pub async fn raw_api(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = https(c).request(method, format!("{}/api/v1{path}", c.running.api_url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// An HTTPS client that trusts `c`'s CA and nothing else.
pub fn https(c: &Controller) -> reqwest::Client {
    let ca = std::fs::read(&c.running.ca_pem_path).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// `Bearer <admin token>` of `c`.
pub fn admin(c: &Controller) -> String {
    format!("Bearer {}", c.running.admin_token.expose())
}
