//! `molar power`, `molar bootdev`, `molar bmc-reset`, `molar identify` and `molar requests`:
//! queued control requests ([`crate::requests`]). Without `--wait` a command prints the
//! request's id; with it, the request's outcome, and fails (exit 5) when the request failed.

use super::output::{emit, format_time, print_json, sanitize, table};
use super::{Cli, EXIT_FAILED, EXIT_USAGE, Failure, api_err, client};
use crate::api::ControlQueued;
use crate::client::Client;
use crate::store::{RequestRecord, RequestState};
use std::time::Duration;

/// `--wait` and how long it waits.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitFlags {
    /// Wait for the request to finish; exit 5 when it failed.
    #[arg(long)]
    pub wait: bool,
    /// Seconds `--wait` waits at most.
    #[arg(long, default_value_t = 600, requires = "wait")]
    pub wait_timeout: u64,
}

/// `molar power SERVER STATE`.
pub(super) async fn power(
    cli: &Cli,
    server: &str,
    state: &str,
    wait: &WaitFlags,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let q = c.power(server, state).await.map_err(api_err(false))?;
    finish(cli, &c, q, wait).await
}

/// `molar bootdev SERVER DEVICE`.
pub(super) async fn bootdev(
    cli: &Cli,
    server: &str,
    device: &str,
    persistent: bool,
    efi: bool,
    wait: &WaitFlags,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let q = c
        .boot_device(server, device, persistent, efi)
        .await
        .map_err(api_err(false))?;
    finish(cli, &c, q, wait).await
}

/// `molar bootdev SERVER cd --media URL`.
pub(super) async fn boot_media(
    cli: &Cli,
    server: &str,
    url: &str,
    wait: &WaitFlags,
) -> Result<(), Failure> {
    crate::requests::check_media_url(url)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("--media: {e}")))?;
    let c = client(cli)?;
    let q = c
        .boot_from_media(server, url)
        .await
        .map_err(api_err(false))?;
    finish(cli, &c, q, wait).await
}

/// `molar bmc-reset SERVER`.
pub(super) async fn bmc_reset(cli: &Cli, server: &str, wait: &WaitFlags) -> Result<(), Failure> {
    let c = client(cli)?;
    let q = c.bmc_reset(server).await.map_err(api_err(false))?;
    finish(cli, &c, q, wait).await
}

/// `molar identify SERVER`.
pub(super) async fn identify(
    cli: &Cli,
    server: &str,
    seconds: Option<u8>,
    wait: &WaitFlags,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let q = c.identify(server, seconds).await.map_err(api_err(false))?;
    finish(cli, &c, q, wait).await
}

/// `molar requests SERVER`.
pub(super) async fn requests(
    cli: &Cli,
    server: &str,
    limit: u32,
    wait: bool,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let mut list = c.requests(server, limit).await.map_err(api_err(false))?;
    while wait && list.iter().any(|r| !r.state.is_final()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        list = c.requests(server, limit).await.map_err(api_err(false))?;
    }
    if cli.json {
        print_json(&list)?;
    } else {
        let rows = list
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.action.clone(),
                    r.parameter.clone().unwrap_or_else(|| "-".into()),
                    r.state.as_str().into(),
                    r.path.map_or("-", |p| p.as_str()).into(),
                    format_time(r.created_ms),
                    r.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "ACTION",
                "PARAMETER",
                "STATE",
                "PATH",
                "CREATED",
                "MESSAGE",
            ],
            rows,
        )?;
    }
    // After waiting, the newest request's outcome is the command's.
    match list.first() {
        Some(r) if wait && r.state == RequestState::Failed => Err(failed(r)),
        _ => Ok(()),
    }
}

/// Prints a queued request (its id, or the record with `--json`), or waits for it.
async fn finish(cli: &Cli, c: &Client, q: ControlQueued, wait: &WaitFlags) -> Result<(), Failure> {
    if !wait.wait {
        return if cli.json {
            print_json(&q.request)
        } else {
            emit(&q.id.to_string())
        };
    }
    let r = c
        .wait_request(q.id, Duration::from_secs(wait.wait_timeout))
        .await
        .map_err(api_err(false))?;
    if cli.json {
        print_json(&r)?;
    }
    if r.state == RequestState::Failed {
        if !cli.json {
            // The request's failure decides the exit code, even if stdout is gone.
            let _ = emit(&line(&r));
        }
        return Err(failed(&r));
    }
    if cli.json { Ok(()) } else { emit(&line(&r)) }
}

/// "request 7 succeeded (out_of_band): server power state set successful: off".
fn line(r: &RequestRecord) -> String {
    let path = r
        .path
        .map(|p| format!(" ({})", p.as_str()))
        .unwrap_or_default();
    format!(
        "request {} {}{path}: {}",
        r.id,
        r.state.as_str(),
        sanitize(r.message.as_deref().unwrap_or("no message"))
    )
}

fn failed(r: &RequestRecord) -> Failure {
    Failure::new(EXIT_FAILED, line(r))
}
