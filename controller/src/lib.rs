//! molar controller: the daemon (`molar serve`) and the library its CLI and tests share.
//!
//! Code map:
//! - [`store`]: the embedded SQLite store (servers, connections, tokens, BMCs, tasks, task
//!   events, logs; one file per table group) with versioned migrations and retention, run on
//!   store threads behind an async handle.
//! - [`pki`]: the state directory: CA, server certificate, admin token.
//! - [`identity`]: which stored server an agent is.
//! - [`lifecycle`]: seed 003's server states and the one table of transitions between them;
//!   the store applies them as compare-and-sets with a history (`store::lifecycle`).
//! - [`policy`]: the fleet policy file: chassis models (QC spec, firmware baseline, erase
//!   policy), the image catalogue, defaults.
//! - [`workflow`]: the durable claim and release workflows, one stored row per step tied to
//!   its task or request, resumed after a restart.
//! - [`bounds`]: length and character limits on what agents send (handshake, inventory).
//! - [`fleet`]: live agent connections, commands and tasks sent to them, task event bus, and
//!   the explicit handlers that store what agents answer (inventory, BMC credentials).
//! - [`admission`]: which handshake may become a server's session (token scopes, session
//!   credentials, the expected ramdisk boot); [`credentials`]: tokens, claims, expectations
//!   and the security events every refusal is recorded as.
//! - [`enrol`]: servers enrolled by their BMC before any agent connected (`molar server
//!   add`), checked by a session with the BMC before anything is stored.
//! - [`oob`]: out-of-band control through a server's BMC (IPMI over LAN).
//! - [`http_errors`]: hyper's own parse-error answers in the API's JSON error shape.
//! - [`erase`]: the disks an erase started by the controller expects to find.
//! - [`listener`]: the agent listener (TLS, handshake, per-connection protocol peer).
//! - [`requests`]: queued control requests (power, boot device, BMC reset, identify), run
//!   one at a time per server, in-band or out-of-band.
//! - [`api`]: the HTTPS JSON API under `/api/v1`.
//! - [`client`]: a typed client of that API (the CLI and the end-to-end tests use it).
//! - [`cli`]: the `molar` command line.
//!
//! Architecture invariant: wire types come from `molar-protocol`; this crate converts them at
//! the edge and defines only its own store and API shapes. Architecture invariant: the HTTP
//! API never talks to an agent except through [`fleet::Fleet`].
//!
//! Embedding (what the end-to-end tests do):
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let cfg = molar_controller::ServeConfig::loopback("/tmp/molar-state");
//! let running = molar_controller::start(cfg, shutdown.clone()).await?;
//! let client = running.client()?;
//! let token = client.create_token("agents").await?; // token.token is the agent's secret
//! // ... run an agent against running.agent_addr with --ca running.ca_pem_path ...
//! shutdown.cancel();
//! running.join().await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod api;
pub mod bmc;
pub mod bounds;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod credentials;
pub mod enrol;
pub mod erase;
pub mod fleet;
pub mod http_errors;
pub mod identity;
pub mod lifecycle;
pub mod listener;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod oob;
pub mod pki;
pub mod policy;
pub mod requests;
pub mod store;
pub mod workflow;

use molar_protocol::{PeerConfig, Secret};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use fleet::Fleet;
pub use listener::{DEFAULT_PRE_HANDSHAKE, ListenerConfig, PLAINTEXT_REFUSAL};

/// Everything `molar serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Agent listener address (port 0 picks one).
    pub listen: SocketAddr,
    /// API address (port 0 picks one).
    pub api: SocketAddr,
    pub state_dir: PathBuf,
    /// Extra names for the server certificate.
    pub sans: Vec<String>,
    pub allow_plaintext_agents: bool,
    /// Agent connections held at once.
    pub max_connections: usize,
    /// Agent-port connections held at once before their handshake is answered (see
    /// [`ListenerConfig::pre_handshake`]).
    pub pre_handshake_connections: usize,
    /// Base configuration of every agent connection's peer (timeouts, line limit).
    pub peer: PeerConfig,
    /// Listen backlog of the agent socket: agents arriving in a burst wait there.
    pub backlog: u32,
    /// API connections served at once; past it a `503 busy` (see [`api::ApiLimits`]).
    pub api_max_connections: usize,
    /// Time an API client gets for a request's headers, also the keep-alive idle timeout.
    pub api_header_timeout: std::time::Duration,
    /// Time a client of either port gets for its TLS handshake (from the connection).
    pub tls_handshake_timeout: std::time::Duration,
    /// Time an agent gets for its `handshake` command once TLS is up.
    pub handshake_timeout: std::time::Duration,
    /// How much of the logs and task events is kept.
    pub retention: store::Retention,
    /// How often consoles are checked for always-on capture into the console log (see
    /// [`console::capture`]); `None` captures only while someone watches.
    pub console_capture: Option<std::time::Duration>,
    /// The periodic session checks of BMCs with an operator-given address (see
    /// [`bmc::run_checks`]); `None`: none.
    pub bmc_checks: Option<bmc::CheckPolicy>,
    /// A plain-HTTP listener serving only `/metrics`, without the admin token (for a
    /// scraper on a management network); `None`: metrics only on the API, behind the token.
    pub metrics_listen: Option<SocketAddr>,
    /// The fleet policy file ([`policy::Policy`]), read and checked at start.
    pub policy: Option<PathBuf>,
    /// The directory `/media/NAME` serves token-less (boot media for BMCs, see [`media`]);
    /// `None`: `/media/` answers 404.
    pub media_dir: Option<PathBuf>,
    /// A plain-HTTP listener serving only `/media/NAME` (needs `media_dir`).
    pub media_listen: Option<SocketAddr>,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, api: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            listen,
            api,
            state_dir: state_dir.into(),
            sans: Vec::new(),
            allow_plaintext_agents: false,
            max_connections: 20_000,
            pre_handshake_connections: DEFAULT_PRE_HANDSHAKE,
            peer: ListenerConfig::default_peer(),
            backlog: 4096,
            api_max_connections: api::ApiLimits::default().max_connections,
            api_header_timeout: api::ApiLimits::default().header_read_timeout,
            tls_handshake_timeout: std::time::Duration::from_secs(10),
            handshake_timeout: std::time::Duration::from_secs(10),
            retention: store::Retention::default(),
            console_capture: Some(std::time::Duration::from_secs(30)),
            bmc_checks: Some(bmc::CheckPolicy::default()),
            metrics_listen: None,
            policy: None,
            media_dir: None,
            media_listen: None,
        }
    }

    /// Both listeners on 127.0.0.1 with ports chosen by the kernel (tests).
    pub fn loopback(state_dir: impl Into<PathBuf>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        ServeConfig::new(any, any, state_dir)
    }
}

/// `molar serve`'s flags for the listeners' resource limits (issue #9); the defaults are
/// [`ServeConfig::new`]'s.
/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("preparing the state directory: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("opening the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("the policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn code(&self) -> &'static str {
        molar_protocol::codes::INTERNAL
    }
}

/// A started controller.
#[derive(Debug)]
pub struct Running {
    /// Where agents connect.
    pub agent_addr: SocketAddr,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the token-less metrics listener listens, when there is one.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the plain-HTTP media listener listens, when there is one.
    pub media_addr: Option<SocketAddr>,
    /// The retention limits in force: sending new ones applies them from the next pass,
    /// which starts at once (`molar serve` does on SIGHUP).
    pub retention: tokio::sync::watch::Sender<store::Retention>,
    /// `https://127.0.0.1:PORT` (also written to `state_dir/api.url`).
    pub api_url: String,
    /// The CA agents and API clients trust.
    pub ca_pem_path: PathBuf,
    /// `sha256:` + hex of the CA certificate's DER (also in `state_dir/ca.sha256`).
    pub ca_fingerprint: String,
    /// Whether this start created the CA (first start).
    pub created_ca: bool,
    pub admin_token: Secret,
    pub state_dir: PathBuf,
    pub fleet: Arc<Fleet>,
    join: JoinHandle<()>,
}

impl Running {
    /// A client of this controller's API.
    pub fn client(&self) -> Result<client::Client, client::ClientError> {
        let ca = std::fs::read(&self.ca_pem_path).map_err(|source| client::ClientError::Read {
            path: self.ca_pem_path.clone(),
            source,
        })?;
        client::Client::new(&self.api_url, self.admin_token.clone(), &ca)
    }

    /// Waits until both listeners have stopped (after the shutdown token fired) and every
    /// connection drained.
    pub async fn join(self) {
        let _ = self.join.await;
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    // Accepted sockets inherit SO_KEEPALIVE from the listening socket on Linux.
    socket.set_keepalive(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(backlog).map_err(err)
}

/// The URL a client on this machine uses to reach an API bound at `addr`.
fn local_url(addr: SocketAddr) -> String {
    let host = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => "127.0.0.1".to_owned(),
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => "[::1]".to_owned(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!("https://{host}:{}", addr.port())
}

/// Prunes logs and task events under `retention`: at start, then every interval, until
/// `shutdown`.
async fn prune(
    store: Arc<store::Store>,
    mut retention_rx: tokio::sync::watch::Receiver<store::Retention>,
    shutdown: CancellationToken,
) {
    let interval = retention_rx.borrow().interval;
    let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // New limits (a reloaded configuration) take effect in a pass at once.
            Ok(()) = retention_rx.changed() => {}
            _ = shutdown.cancelled() => return,
        }
        let retention = retention_rx.borrow_and_update().clone();
        let pass = tokio::select! {
            r = store.prune(&retention) => r,
            _ = shutdown.cancelled() => return,
        };
        match pass {
            Ok(p) if p == store::Pruned::default() => {}
            Ok(p) => tracing::info!(
                logs = p.logs,
                task_events = p.task_events,
                "pruned old records"
            ),
            Err(e) => tracing::error!(error = %e, "pruning old records"),
        }
    }
}

/// Starts the controller: prepares the state directory (CA, certificates, admin token, store),
/// binds both listeners and serves until `shutdown` fires.
pub async fn start(
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    pki::install_default_provider();
    let dir = config.state_dir.clone();
    let pki = pki::load_or_create(&dir, &config.sans)?;
    let admin_token = pki::load_or_create_admin_token(&dir)?;
    let store = Arc::new(store::Store::open(&dir)?);
    store.reset_connections("controller restarted").await?;
    let fleet = Fleet::new(store);

    let agent_listener = bind(config.listen, config.backlog)?;
    let api_listener = bind(config.api, 1024)?;
    let agent_addr = agent_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.api,
            source,
        })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let l = bind(addr, 128)?;
            let bound = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            Some((l, bound))
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, a)| *a);
    let media = config
        .media_dir
        .clone()
        .map(|d| Arc::new(media::MediaDir::new(d)));
    let media_listener = match (config.media_listen, &media) {
        (Some(addr), Some(dir)) => {
            let l = bind(addr, 128)?;
            let bound = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            Some((l, bound, dir.clone()))
        }
        _ => None,
    };
    let media_addr = media_listener.as_ref().map(|(_, a, _)| *a);
    if let Some(m) = &media {
        tracing::info!(
            dir = %m.root().display(),
            plain_http = ?media_addr,
            "serving boot media at /media/NAME without a token"
        );
    }
    let api_url = local_url(api_addr);
    pki::write_file(
        &dir.join("api.url"),
        format!("{api_url}\n").as_bytes(),
        0o644,
    )?;

    let mut lcfg = ListenerConfig::new(pki::server_config(&pki, &[])?);
    lcfg.allow_plaintext = config.allow_plaintext_agents;
    lcfg.max_connections = config.max_connections;
    lcfg.peer = config.peer.clone();
    lcfg.pre_handshake = config.pre_handshake_connections;
    lcfg.tls_handshake_timeout = config.tls_handshake_timeout;
    lcfg.handshake_timeout = config.handshake_timeout;
    let api_tls = pki::server_config(&pki, &[b"http/1.1"])?;
    let requests = requests::Requests::start(fleet.clone(), shutdown.clone()).await?;
    let policy = match &config.policy {
        Some(p) => policy::Policy::load(p)?,
        None => policy::Policy::default(),
    };
    let workflows = workflow::Workflows::start(
        fleet.clone(),
        requests.clone(),
        Arc::new(policy),
        shutdown.clone(),
    )
    .await?;
    let router = api::router(
        fleet.clone(),
        requests.clone(),
        workflows.clone(),
        &admin_token,
        media,
        shutdown.clone(),
    );

    let agents = tokio::spawn(listener::run(
        agent_listener,
        fleet.clone(),
        lcfg,
        shutdown.clone(),
    ));
    let api_limits = api::ApiLimits {
        max_connections: config.api_max_connections,
        tls_handshake_timeout: config.tls_handshake_timeout,
        header_read_timeout: config.api_header_timeout,
    };
    let http = tokio::spawn(api::serve(
        api_listener,
        api_tls,
        router,
        api_limits,
        shutdown.clone(),
    ));
    let metrics = tokio::spawn({
        let (fleet, shutdown) = (fleet.clone(), shutdown.clone());
        async move {
            match metrics_listener {
                Some((l, _)) => api::serve_metrics(l, fleet, shutdown).await,
                None => shutdown.cancelled().await,
            }
        }
    });
    let media_http = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            match media_listener {
                Some((l, _, dir)) => media::serve(l, dir, shutdown).await,
                None => shutdown.cancelled().await,
            }
        }
    });
    let (retention, retention_rx) = tokio::sync::watch::channel(config.retention.clone());
    let pruner = tokio::spawn(prune(fleet.store.clone(), retention_rx, shutdown.clone()));
    let capture = tokio::spawn({
        let (consoles, store, shutdown) =
            (fleet.console.clone(), fleet.store.clone(), shutdown.clone());
        let interval = config.console_capture;
        async move {
            match interval {
                Some(i) => console::capture::run(consoles, store, i, shutdown).await,
                None => shutdown.cancelled().await,
            }
        }
    });
    let bmc_checks = tokio::spawn({
        let (fleet, shutdown) = (fleet.clone(), shutdown.clone());
        let policy = config.bmc_checks;
        async move {
            match policy {
                Some(p) => bmc::run_checks(fleet, p, shutdown).await,
                None => shutdown.cancelled().await,
            }
        }
    });
    let join = tokio::spawn(async move {
        let _ = tokio::join!(
            agents,
            http,
            metrics,
            media_http,
            pruner,
            capture,
            bmc_checks,
            requests.join(),
            workflows.join()
        );
    });
    tracing::info!(%agent_addr, %api_url, "controller started");
    Ok(Running {
        agent_addr,
        api_addr,
        metrics_addr,
        media_addr,
        retention,
        api_url,
        ca_pem_path: pki.ca_pem_path.clone(),
        ca_fingerprint: pki.ca_fingerprint.clone(),
        created_ca: pki.created,
        admin_token,
        state_dir: dir,
        fleet,
        join,
    })
}
