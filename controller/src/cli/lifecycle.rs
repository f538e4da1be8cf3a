//! `molar history`, `transitions`, `maintenance`, `claim`, `release`, `retry` and `workflows`: the
//! lifecycle of servers, read once or watched, and the operator's own transitions and
//! workflows.

use super::output::{emit, format_time, json_for_terminal, print_json, sanitize};
use super::{Cli, EXIT_USAGE, Failure, api_err, client};
use crate::api::TransitionPage;
use crate::store::{Transition, WorkflowRecord};
use crate::workflow::{ClaimParams, ReleaseParams};
use molar_protocol::erase::DiskEraseParams;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// `molar history SERVER [--watch]`.
pub(super) async fn history(cli: &Cli, server: &str, watch: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    follow(cli, watch, |after| c.history(server, after, 1000)).await
}

/// `molar transitions [--watch]`: every server's state changes.
pub(super) async fn transitions(cli: &Cli, watch: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    follow(cli, watch, |after| c.transitions(None, after, 1000)).await
}

/// Prints pages of transitions; with `watch`, keeps asking for newer ones.
async fn follow<F, Fut>(cli: &Cli, watch: bool, mut page: F) -> Result<(), Failure>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<TransitionPage, crate::client::ClientError>>,
{
    let mut after = 0;
    loop {
        let p = page(after).await.map_err(api_err(false))?;
        for t in &p.transitions {
            if cli.json {
                emit(&json_for_terminal(
                    &serde_json::to_string(t).unwrap_or_default(),
                ))?;
            } else {
                emit(&transition_line(t))?;
            }
        }
        after = p.next_after;
        if p.transitions.len() < 1000 {
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `molar maintenance SERVER on|off [--firmware PLAN] [--reason TEXT]`.
pub(super) async fn maintenance(
    cli: &Cli,
    server: &str,
    on: bool,
    firmware: Option<&Path>,
    reason: Option<&str>,
) -> Result<(), Failure> {
    let firmware = match firmware {
        Some(p) => Some(
            serde_json::from_value(json_file("--firmware", p)?)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("--firmware: {e}")))?,
        ),
        None => None,
    };
    let req = crate::api::MaintenanceRequest {
        on,
        reason: reason.map(str::to_owned),
        firmware,
    };
    let c = client(cli)?;
    let a = c
        .maintenance_with(server, &req)
        .await
        .map_err(api_err(false))?;
    if cli.json {
        return print_json(&a);
    }
    emit(&transition_line(&a.transition))?;
    if let Some(t) = &a.firmware_task {
        emit(&format!(
            "firmware task {}: follow it with `molar task show {}`",
            sanitize(t),
            sanitize(t)
        ))?;
    }
    Ok(())
}

/// Reads a JSON file an operator names (`--image-spec`, `--config-drive`).
fn json_file(flag: &str, path: &Path) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("{flag}: reading {}: {e}", path.display()),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("{flag}: {} is not valid JSON: {e}", path.display()),
        )
    })
}

/// What `molar claim` was given.
pub(super) struct ClaimArgs<'a> {
    pub image: Option<&'a str>,
    pub image_spec: Option<&'a Path>,
    pub device: &'a str,
    pub config_drive: Option<&'a Path>,
    pub kernel_args: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// `molar claim SERVER (--image ID | --image-spec FILE) --device DEV [--config-drive FILE]
/// [--kernel-args ARGS]`.
pub(super) async fn claim(cli: &Cli, server: &str, a: ClaimArgs<'_>) -> Result<(), Failure> {
    let image = match a.image_spec {
        Some(path) => Some(
            serde_json::from_value(json_file("--image-spec", path)?)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("--image-spec: {e}")))?,
        ),
        None => None,
    };
    let mut run = serde_json::Map::new();
    if let Some(p) = a.config_drive {
        run.insert("config_drive".into(), json_file("--config-drive", p)?);
    }
    if let Some(k) = a.kernel_args {
        run.insert("kernel_args".into(), Value::String(k.to_owned()));
    }
    let params = ClaimParams {
        image,
        image_id: a.image.map(str::to_owned),
        device: a.device.to_owned(),
        run,
        name: a.name.map(str::to_owned),
    };
    let c = client(cli)?;
    let wf = c.claim(server, &params).await.map_err(api_err(false))?;
    workflow_out(cli, &wf)
}

/// `molar release SERVER [--erase-method M] [--passes N] [--exclude DEV]... [--in-ramdisk]`.
pub(super) async fn release(
    cli: &Cli,
    server: &str,
    erase: Option<DiskEraseParams>,
    in_ramdisk: bool,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let wf = c
        .release(server, &ReleaseParams { erase, in_ramdisk })
        .await
        .map_err(api_err(false))?;
    workflow_out(cli, &wf)
}

/// `molar retry SERVER`.
pub(super) async fn retry(cli: &Cli, server: &str) -> Result<(), Failure> {
    let c = client(cli)?;
    let wf = c.retry(server).await.map_err(api_err(false))?;
    workflow_out(cli, &wf)
}

/// `molar workflows SERVER`.
pub(super) async fn workflows(cli: &Cli, server: &str, limit: u32) -> Result<(), Failure> {
    let c = client(cli)?;
    let list = c.workflows(server, limit).await.map_err(api_err(false))?;
    if cli.json {
        return print_json(&list);
    }
    for wf in &list {
        for line in workflow_lines(wf) {
            emit(&line)?;
        }
    }
    Ok(())
}

fn workflow_out(cli: &Cli, wf: &WorkflowRecord) -> Result<(), Failure> {
    if cli.json {
        return print_json(wf);
    }
    for line in workflow_lines(wf) {
        emit(&line)?;
    }
    Ok(())
}

/// A workflow and its steps, one line each, [`sanitize`]d (messages quote agents).
pub(crate) fn workflow_lines(wf: &WorkflowRecord) -> Vec<String> {
    let mut out = vec![format!(
        "workflow {} {} on {}: {}{} (started {})",
        wf.id,
        wf.kind.as_str(),
        sanitize(&wf.server_id),
        wf.state.as_str(),
        wf.message
            .as_deref()
            .map(|m| format!(": {}", sanitize(m)))
            .unwrap_or_default(),
        format_time(wf.created_ms)
    )];
    for s in &wf.steps {
        let tied = match (&s.task_id, s.request_id) {
            (Some(t), _) => format!(" task={}", sanitize(t)),
            (None, Some(r)) => format!(" request={r}"),
            _ => String::new(),
        };
        out.push(format!(
            "  {}. {} {}{tied}{}",
            s.seq + 1,
            s.name,
            s.state.as_str(),
            s.message
                .as_deref()
                .map(|m| format!(": {}", sanitize(m)))
                .unwrap_or_default()
        ));
    }
    out
}

/// One line of history: time, server, from → to, cause, reason and what it is tied to,
/// [`sanitize`]d (a reason is an operator's or an agent's text).
pub(crate) fn transition_line(t: &Transition) -> String {
    let from = t.from.map_or("-", |s| s.as_str());
    let cause = t.cause.map_or("created", |c| c.as_str());
    let mut refs = String::new();
    if let Some(r) = t.request_id {
        refs.push_str(&format!(" request={r}"));
    }
    if let Some(task) = &t.task_id {
        refs.push_str(&format!(" task={}", sanitize(task)));
    }
    format!(
        "{} {} {from} -> {} ({cause}): {}{refs}",
        format_time(t.at_ms),
        sanitize(&t.server_id),
        t.to,
        sanitize(&t.reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::tests::assert_printable;
    use crate::lifecycle::Cause;
    use crate::store::ServerState;

    #[test]
    fn history_lines_say_what_changed_and_cannot_forge_lines() {
        let t = Transition {
            id: 7,
            server_id: "srv-1".into(),
            from: Some(ServerState::Available),
            to: ServerState::Maintenance,
            cause: Some(Cause::MaintenanceOn),
            reason: "fan\r\n1970-01-01 00:00:00 srv-2 forged\x1b[2J".into(),
            request_id: None,
            task_id: Some("t-1".into()),
            at_ms: 0,
        };
        let line = transition_line(&t);
        assert_printable(&line);
        assert!(
            line.starts_with(
                "1970-01-01 00:00:00 srv-1 available -> maintenance (maintenance_on): fan\\r\\n"
            ),
            "{line}"
        );
        assert!(line.ends_with(" task=t-1"), "{line}");
        let created = Transition {
            from: None,
            cause: None,
            to: ServerState::Initial,
            ..t
        };
        assert!(transition_line(&created).contains(" - -> initial (created): "));
    }
}
