//! `molar history`, `molar transitions` and `molar maintenance`: the lifecycle of servers,
//! read once or watched, and the operator's own transitions.

use super::output::{emit, format_time, json_for_terminal, print_json, sanitize};
use super::{Cli, Failure, api_err, client};
use crate::api::TransitionPage;
use crate::store::Transition;
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

/// `molar maintenance SERVER on|off [--reason TEXT]`.
pub(super) async fn maintenance(
    cli: &Cli,
    server: &str,
    on: bool,
    reason: Option<&str>,
) -> Result<(), Failure> {
    let c = client(cli)?;
    let t = c
        .maintenance(server, on, reason)
        .await
        .map_err(api_err(false))?;
    if cli.json {
        return print_json(&t);
    }
    emit(&transition_line(&t))
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
