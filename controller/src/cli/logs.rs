//! `molar logs` and `molar events`: agents' log records and security events, once or
//! followed.

use super::output::{emit, format_time, json_for_terminal, opt, sanitize};
use super::{Cli, Failure, api_err, client};
use std::time::Duration;

/// `molar logs ID [--follow]`.
pub(super) async fn logs(cli: &Cli, id: &str, follow: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    let mut after = 0;
    loop {
        let page = c.logs(id, after, 1000).await.map_err(api_err(false))?;
        for l in &page.logs {
            if cli.json {
                let line = serde_json::to_string(l).unwrap_or_default();
                emit(&json_for_terminal(&line))?;
            } else {
                emit(&log_line(l))?;
            }
        }
        after = page.next_after;
        if page.logs.len() < 1000 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `molar events [--server ID] [--follow]`.
pub(super) async fn events(cli: &Cli, server: Option<&str>, follow: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    let mut after = 0;
    loop {
        let page = c
            .events(server, after, 1000)
            .await
            .map_err(api_err(false))?;
        for e in &page.events {
            if cli.json {
                let line = serde_json::to_string(e).unwrap_or_default();
                emit(&json_for_terminal(&line))?;
            } else {
                emit(&event_line(e))?;
            }
        }
        after = page.next_after;
        if page.events.len() < 1000 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One line of `molar logs`: level, target, message and fields as the agent sent them,
/// [`sanitize`]d (a record's CR/LF cannot forge further lines).
fn log_line(l: &crate::store::LogEntry) -> String {
    let fields = l
        .fields
        .as_ref()
        .map(|f| format!(" {}", sanitize(&f.to_string())))
        .unwrap_or_default();
    format!(
        "{} {:>5} {}: {}{fields}",
        format_time(l.ts_ms),
        sanitize(&l.level.to_uppercase()),
        sanitize(&l.target),
        sanitize(&l.msg)
    )
}

/// One line of `molar events`: time, kind, server, token, peer and message, [`sanitize`]d
/// (a message can name what a peer sent).
fn event_line(e: &crate::store::EventRecord) -> String {
    let ev = &e.event;
    let or_dash = |s: &Option<String>| opt(s);
    format!(
        "{} {} server={} token={} peer={}: {}",
        format_time(e.at_ms),
        sanitize(&ev.kind),
        or_dash(&ev.server_id),
        or_dash(&ev.token_id),
        or_dash(&ev.peer_addr),
        sanitize(&ev.msg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::tests::assert_printable;

    #[test]
    fn event_lines_escape_what_peers_sent() {
        let e = crate::store::EventRecord {
            id: 1,
            at_ms: 0,
            event: crate::store::NewEvent {
                kind: "handshake_refused".into(),
                server_id: Some("srv-1".into()),
                token_id: None,
                peer_addr: Some("127.0.0.1:9".into()),
                msg: "refused\r\nforged\x1b[2J".into(),
            },
        };
        let line = event_line(&e);
        assert_printable(&line);
        assert_eq!(
            line,
            r"1970-01-01 00:00:00 handshake_refused server=srv-1 token=- peer=127.0.0.1:9: refused\r\nforged\x1b[2J"
        );
    }

    #[test]
    fn log_lines_cannot_forge_lines_or_send_escapes() {
        let l = crate::store::LogEntry {
            id: 1,
            ts_ms: 0,
            level: "info\x1b".into(),
            target: "agent\r".into(),
            msg: "done\r\n1970-01-01 00:00:00 ERROR agent: forged\x1b]0;t\x07".into(),
            fields: Some(serde_json::json!({"k": "\u{9b}31m\u{202e}"})),
        };
        let line = log_line(&l);
        assert_printable(&line);
        assert!(!line.contains('\n'));
        assert!(line.contains(r"done\r\n1970-01-01"), "{line}");
    }
}
