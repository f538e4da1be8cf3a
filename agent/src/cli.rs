//! The `molar-agent` command line. `main.rs` only calls [`main`]; every subcommand's logic
//! lives in the library so it is testable.

use crate::logfwd::{ForwardLayer, LogBuffer};
use crate::session::{Agent, AgentConfig, Methods};
use crate::tls::Trust;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use molar_protocol::Secret;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

#[derive(Parser, Debug)]
#[command(
    name = "molar-agent",
    version,
    about = "molar's in-band provisioning agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to a controller and serve it until stopped.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The controller's agent listener, HOST:PORT.
    #[arg(long)]
    controller: String,
    /// PEM file with the controller's CA certificate.
    #[arg(long, conflicts_with_all = ["ca_fingerprint", "insecure"])]
    ca: Option<PathBuf>,
    /// Pin the controller's CA by fingerprint: sha256:HEX.
    #[arg(long, conflicts_with = "insecure")]
    ca_fingerprint: Option<String>,
    /// Connect without TLS (lab only; the controller must allow plaintext agents).
    #[arg(long)]
    insecure: bool,
    /// File holding the agent token (created with `molar token create`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Root under which /sys, /proc and /dev are read.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Log level forwarded and printed: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", env = "MOLAR_LOG")]
    log: tracing::Level,
}

/// Installs stderr logging plus forwarding to the controller; returns the forwarding buffer.
pub fn init_logging(level: tracing::Level) -> Arc<LogBuffer> {
    let buffer = LogBuffer::new(crate::logfwd::DEFAULT_CAPACITY);
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(ForwardLayer::new(buffer.clone(), level))
        .try_init();
    buffer
}

fn read_token(path: Option<&PathBuf>) -> anyhow::Result<Secret> {
    let Some(path) = path else {
        return Ok(Secret::default());
    };
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(Secret::new(token))
}

/// The methods every agent offers, whatever it runs on.
pub fn default_methods() -> Methods {
    Methods::new()
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let logs = init_logging(args.log);
    let trust = match (&args.ca, &args.ca_fingerprint, args.insecure) {
        (Some(ca), _, _) => Trust::CaFile(ca.clone()),
        (None, Some(fp), _) => Trust::parse_fingerprint(fp)?,
        (None, None, true) => Trust::Insecure,
        (None, None, false) => {
            bail!(
                "no way to trust the controller: give --ca FILE, --ca-fingerprint sha256:HEX or --insecure"
            )
        }
    };
    crate::tls::split_addr(&args.controller)?;
    // Fail early on an unreadable CA file rather than in the reconnect loop.
    crate::tls::client_config(&trust)?;
    let mut config = AgentConfig::new(
        args.controller,
        trust,
        read_token(args.token_file.as_ref())?,
    );
    config.root = args.root;
    let agent = Agent::new(config, default_methods(), logs);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("stopping on signal");
            shutdown.cancel();
        }
    });
    agent.run(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Entry point of the `molar-agent` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("molar-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molar-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
