//! `molar serve`: runs the controller in this process until SIGINT or SIGTERM.

use super::output::emit;
use super::{EXIT_OTHER, EXIT_USAGE, Failure};
use crate::config::{ConfigError, ConfigFile, LogFormat, Settings};
use crate::{ServeConfig, start};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The flags of `molar serve`: every setting of [`Settings`], and the file they may come
/// from instead.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML, one key per flag: `retain-logs-days = 30`). Flags win over
    /// environment variables (`MOLAR_*`), which win over the file.
    #[arg(long, env = "MOLAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Box<Settings>,
}

/// The settings given by flags and environment (the global --api and --state-dir included),
/// and the configuration file named by --config / MOLAR_CONFIG.
pub(super) fn given(
    cli: &super::Cli,
    args: &ServeArgs,
) -> Result<(Settings, Option<ConfigFile>), Failure> {
    let file = args
        .config
        .as_deref()
        .map(ConfigFile::load)
        .transpose()
        .map_err(usage)?;
    let mut given = (*args.settings).clone();
    given.state_dir = cli.state_dir.clone();
    given.api = cli.api.as_deref().map(api_listen_addr).transpose()?;
    Ok((given, file))
}

fn usage(e: ConfigError) -> Failure {
    Failure::new(EXIT_USAGE, e.to_string())
}

pub(super) async fn run(cli: &super::Cli, args: &ServeArgs) -> Result<(), Failure> {
    let (given, file) = given(cli, args)?;
    let resolved = Settings::resolve(&given, file.as_ref()).map_err(usage)?;
    let reload = Reload {
        given,
        path: args.config.clone(),
        running: resolved.config.clone(),
    };
    serve(resolved.config, resolved.log_format, reload).await
}

/// What SIGHUP needs: the settings flags and environment gave, the file to read again, and
/// the configuration in force.
struct Reload {
    given: Settings,
    path: Option<PathBuf>,
    running: ServeConfig,
}

impl Reload {
    /// Reads the file again and applies what can change while serving (the retention
    /// limits); a change to anything else is named as needing a restart. A file that does
    /// not check changes nothing.
    fn apply(&mut self, retention: &tokio::sync::watch::Sender<crate::store::Retention>) {
        let file = match self.path.as_deref().map(ConfigFile::load).transpose() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded");
                return;
            }
        };
        let new = match Settings::resolve(&self.given, file.as_ref()) {
            Ok(r) => r.config,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded");
                return;
            }
        };
        let old = &self.running;
        let mut restart = Vec::new();
        if new.listen != old.listen
            || new.api != old.api
            || new.metrics_listen != old.metrics_listen
            || new.media_listen != old.media_listen
            || new.media_dir != old.media_dir
        {
            restart.push("listen/api/metrics-listen/media");
        }
        if new.state_dir != old.state_dir {
            restart.push("state-dir");
        }
        if new.sans != old.sans || new.allow_plaintext_agents != old.allow_plaintext_agents {
            restart.push("san/allow-plaintext-agents");
        }
        if new.max_connections != old.max_connections
            || new.pre_handshake_connections != old.pre_handshake_connections
            || new.api_max_connections != old.api_max_connections
            || new.tls_handshake_timeout != old.tls_handshake_timeout
            || new.handshake_timeout != old.handshake_timeout
            || new.api_header_timeout != old.api_header_timeout
        {
            restart.push("connection limits and timeouts");
        }
        if new.console_capture != old.console_capture {
            restart.push("console-capture-s");
        }
        if new.bmc_checks != old.bmc_checks {
            restart.push("bmc-check-s and bmc-checks-per-minute");
        }
        let retention_changed = format!("{:?}", new.retention) != format!("{:?}", old.retention);
        if retention_changed {
            retention.send_replace(new.retention.clone());
        }
        tracing::info!(
            retention_applied = retention_changed,
            needs_restart = %restart.join(", "),
            "SIGHUP: configuration reloaded"
        );
        self.running.retention = new.retention;
    }
}

/// `molar config check FILE` and `molar config defaults`.
pub(super) fn config(cli: &super::Cli, command: &super::ConfigCommand) -> Result<(), Failure> {
    let settings = match command {
        super::ConfigCommand::Check { file, settings } => {
            let args = ServeArgs {
                config: Some(file.clone()),
                settings: settings.clone(),
            };
            let (given, file) = given(cli, &args)?;
            Settings::resolve(&given, file.as_ref()).map_err(usage)?;
            given
                .layered(file.map(|f| f.settings).unwrap_or_default())
                .with_defaults()
        }
        super::ConfigCommand::Defaults => Settings::default().with_defaults(),
    };
    if cli.json {
        let v = serde_json::to_string_pretty(&settings)
            .map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;
        outln!("{v}")
    } else {
        emit(settings.to_toml().trim_end())
    }
}

/// The API listen address of `serve`: `--api ADDR` (a URL's `https://` is tolerated, so one
/// `MOLAR_API` serves the daemon and its clients).
fn api_listen_addr(api: &str) -> Result<SocketAddr, Failure> {
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

async fn serve(cfg: ServeConfig, log_format: LogFormat, mut reload: Reload) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log_format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().flatten_event(true).try_init(),
    };
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
    if let Err(e) = crate::notify::ready() {
        tracing::warn!(error = %e, "could not tell systemd the controller is ready");
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Failure::new(EXIT_OTHER, format!("installing the SIGHUP handler: {e}")))?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hup.recv() => reload.apply(&running.retention),
        }
    }
    tracing::info!("shutting down");
    let _ = crate::notify::stopping();
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
