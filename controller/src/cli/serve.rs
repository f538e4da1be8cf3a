//! `molar serve`: runs the controller in this process until SIGINT or SIGTERM.

use super::output::emit;
use super::{EXIT_OTHER, EXIT_USAGE, Failure};
use crate::store::Retention;
use crate::{ServeConfig, start};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The flags of `molar serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Agent listener address, e.g. 0.0.0.0:7700.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Also serve agents that connect without TLS (lab only).
    #[arg(long)]
    pub allow_plaintext_agents: bool,
    /// Agent connections held at once.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
    #[command(flatten)]
    pub limits: crate::LimitFlags,
    /// Days agents' log records are kept (0: forever).
    #[arg(long, default_value_t = 30)]
    pub retain_logs_days: u64,
    /// Most log records kept per server, the newest (0: no limit).
    #[arg(long, default_value_t = 100_000)]
    pub retain_logs_per_server: u64,
    /// Days task events are kept; a task's latest and final events always are (0: forever).
    #[arg(long, default_value_t = 30)]
    pub retain_task_events_days: u64,
    /// Most events kept per task, the newest (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub retain_task_events_per_task: u64,
    /// Seconds between checks that every server with an operator-given BMC address has its console
    /// captured into the console log (0: capture only while someone watches).
    #[arg(long, default_value_t = 30)]
    pub console_capture_s: u64,
}

pub(super) async fn run(cli: &super::Cli, args: &ServeArgs) -> Result<(), Failure> {
    let ServeArgs {
        listen,
        sans,
        allow_plaintext_agents,
        max_connections,
        limits,
        retain_logs_days,
        retain_logs_per_server,
        retain_task_events_days,
        retain_task_events_per_task,
        console_capture_s,
    } = args;
    let mut cfg = ServeConfig::new(
        *listen,
        api_listen_addr(cli.api.as_deref())?,
        &cli.state_dir,
    );
    cfg.sans = sans.clone();
    cfg.allow_plaintext_agents = *allow_plaintext_agents;
    cfg.max_connections = *max_connections;
    limits.apply(&mut cfg);
    cfg.retention = Retention {
        logs_max_age: Retention::days(*retain_logs_days),
        logs_per_server: Retention::count(*retain_logs_per_server),
        task_events_max_age: Retention::days(*retain_task_events_days),
        task_events_per_task: Retention::count(*retain_task_events_per_task),
        ..Retention::default()
    };
    cfg.console_capture =
        (*console_capture_s > 0).then(|| std::time::Duration::from_secs(*console_capture_s));
    serve(cfg).await
}

/// The API listen address of `serve`: `--api ADDR` (a URL's `https://` is tolerated, so one
/// `MOLAR_API` serves the daemon and its clients).
fn api_listen_addr(api: Option<&str>) -> Result<SocketAddr, Failure> {
    let Some(api) = api else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 7701)));
    };
    let addr = api
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    addr.parse().map_err(|_| {
        Failure::new(
            EXIT_USAGE,
            format!("--api must be an address such as 127.0.0.1:7701, not {api:?}"),
        )
    })
}

async fn serve(cfg: ServeConfig) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let shutdown = CancellationToken::new();
    let running = start(cfg, shutdown.clone())
        .await
        .map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;
    // The fingerprint alone on stdout: agents pin it (`molar.ca=sha256:...`).
    // A closed stdout must not take the controller down with it.
    if emit(&running.ca_fingerprint).is_err() {
        tracing::warn!(fingerprint = %running.ca_fingerprint, "could not print the CA fingerprint to stdout");
    }
    tracing::info!(
        agents = %running.agent_addr,
        api = %running.api_url,
        ca = %running.ca_pem_path.display(),
        "serving"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    running.join().await;
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
