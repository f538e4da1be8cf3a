//! `molar servers` and `molar server`: list, show, remove and re-enrol servers.

use super::output::json_for_terminal;
use super::output::{emit, format_time, opt, print_json, render_table, sanitize};
use super::{Cli, EXIT_USAGE, Failure, api_err, client};
use std::path::Path;
use std::time::Duration;

/// `molar servers`.
pub(super) async fn list(cli: &Cli) -> Result<(), Failure> {
    let c = client(cli)?;
    let servers = c.servers().await.map_err(api_err(false))?;
    if cli.json {
        print_json(&servers)?;
    } else {
        for line in servers_table(servers) {
            emit(&line)?;
        }
    }
    Ok(())
}

/// `molar server ID [--inventory]`.
pub(super) async fn show(cli: &Cli, id: &str, inventory: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    let v = c.server(id, inventory).await.map_err(api_err(false))?;
    if cli.json {
        print_json(&v)?;
        return Ok(());
    }
    for line in server_text(&v) {
        emit(&line)?;
    }
    Ok(())
}

/// The trust options of `molar server add` (Redfish).
#[derive(Debug, Default)]
pub(super) struct AddTrust<'a> {
    pub ca: Option<&'a Path>,
    pub fingerprint: Option<&'a str>,
    pub insecure: bool,
}

/// A password from a file (`flag` names it in errors): its first line's ending is not part
/// of it.
pub(super) fn read_password_file(
    flag: &str,
    path: &Path,
) -> Result<molar_protocol::Secret, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("reading {flag} {}: {e}", path.display()),
        )
    })?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(molar_protocol::Secret::new(password))
}

/// `molar server add NAME --bmc [redfish://|ipmi://]HOST[:PORT] --bmc-user U
/// --bmc-password-file F [--bmc-ca FILE | --bmc-fingerprint SHA256 | --bmc-insecure]`.
pub(super) async fn add(
    cli: &Cli,
    name: &str,
    bmc: &str,
    user: &str,
    password_file: &Path,
    allow_ipmi15: bool,
    trust: AddTrust<'_>,
) -> Result<(), Failure> {
    let (protocol, host, port) = crate::enrol::parse_bmc_url(bmc)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("--bmc: {e}")))?;
    let tls_ca_pem = match trust.ca {
        None => None,
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            Failure::new(EXIT_USAGE, format!("reading --bmc-ca {}: {e}", p.display()))
        })?),
    };
    let tls_fingerprint = match trust.fingerprint {
        None => None,
        Some(f) => Some(
            crate::oob::redfish::trust::normalise_fingerprint(f)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("--bmc-fingerprint: {e}")))?,
        ),
    };
    let password = read_password_file("--bmc-password-file", password_file)?;
    let req = crate::api::AddServer {
        name: name.to_owned(),
        bmc: crate::api::AddBmc {
            host,
            port,
            username: user.to_owned(),
            password,
            allow_ipmi15,
            protocol,
            tls_ca_pem,
            tls_fingerprint,
            tls_insecure: trust.insecure,
        },
    };
    let c = client(cli)?;
    let v = c.add_server(&req).await.map_err(api_err(false))?;
    if cli.json {
        print_json(&v)?;
    } else {
        let suite = v.bmc.as_ref().and_then(|b| b.cipher_suite);
        outln!(
            "server {} enrolled as {} (state {}; BMC session verified{})",
            sanitize(name),
            sanitize(&v.server.id),
            v.server.state.as_str(),
            suite
                .map(|s| format!(", cipher suite {s}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `molar server remove ID`.
pub(super) async fn remove(cli: &Cli, id: &str) -> Result<(), Failure> {
    let c = client(cli)?;
    let r = c.remove_server(id).await.map_err(api_err(false))?;
    if cli.json {
        print_json(&r)?;
    } else {
        let d = r.deleted;
        outln!(
            "server {} removed ({} tasks, {} task events, {} log records, {} connections)",
            sanitize(id),
            d.tasks,
            d.task_events,
            d.logs,
            d.connections
        )?;
    }
    Ok(())
}

/// `molar server reenrol ID [--for-s N]`.
pub(super) async fn reenrol(cli: &Cli, id: &str, for_s: Option<u64>) -> Result<(), Failure> {
    let c = client(cli)?;
    let r = c
        .reenrol_server(id, for_s.map(Duration::from_secs))
        .await
        .map_err(api_err(false))?;
    if cli.json {
        print_json(&r)?;
    } else {
        outln!(
            "server {} may boot the ramdisk and enrol again until {}",
            sanitize(id),
            format_time(r.expect_ramdisk_until_ms)
        )?;
    }
    Ok(())
}

/// The table of `molar servers`.
fn servers_table(servers: Vec<crate::api::ServerView>) -> Vec<String> {
    let rows = servers
        .into_iter()
        .map(|v| {
            let s = v.server;
            vec![
                s.id,
                s.state.as_str().into(),
                if s.connected { "yes" } else { "no" }.into(),
                opt(&s.hostname),
                opt(&s.agent_version),
                format_time(s.last_seen_ms),
                s.system_uuid
                    .or(s.serial)
                    .unwrap_or_else(|| s.macs.join(",")),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "STATE",
            "CONNECTED",
            "HOSTNAME",
            "AGENT",
            "LAST SEEN",
            "IDENTITY",
        ],
        rows,
    )
}

/// The text of `molar server`: every agent- or BMC-reported value [`sanitize`]d, in full.
fn server_text(v: &crate::api::ServerView) -> Vec<String> {
    let s = &v.server;
    let mut out = vec![
        format!("id:            {}", sanitize(&s.id)),
        format!("state:         {}", s.state.as_str()),
        format!("connected:     {}", if s.connected { "yes" } else { "no" }),
        format!("hostname:      {}", opt(&s.hostname)),
        format!("system uuid:   {}", opt(&s.system_uuid)),
        format!("serial:        {}", opt(&s.serial)),
        format!("macs:          {}", sanitize(&s.macs.join(", "))),
        format!("agent version: {}", opt(&s.agent_version)),
        format!("boot id:       {}", opt(&s.boot_id)),
        format!("first seen:    {}", format_time(s.first_seen_ms)),
        format!("last seen:     {}", format_time(s.last_seen_ms)),
        format!("logs dropped:  {}", s.logs_dropped),
    ];
    if !s.labels.is_empty() {
        out.push(format!("labels:        {}", sanitize(&s.labels.join(", "))));
    }
    if let Some(until) = s.expect_ramdisk_until_ms {
        out.push(format!("reenrol until: {}", format_time(until)));
    }
    if let Some(conn) = &v.connection {
        out.push(format!("peer address:  {}", sanitize(&conn.peer_addr)));
        out.push(format!("connected at:  {}", format_time(conn.opened_ms)));
        if let (Some(at), Some(why)) = (conn.closed_ms, &conn.close_reason) {
            out.push(format!(
                "closed at:     {} ({})",
                format_time(at),
                sanitize(why)
            ));
        }
    }
    if let Some(b) = &v.bmc {
        out.push(format!(
            "bmc:           {} {} user {} ({}, {})",
            opt(&b.mac),
            opt(&b.ip),
            sanitize(&b.username),
            sanitize(&b.source),
            format_time(b.updated_ms)
        ));
        if let Some(host) = &b.host {
            let port = b.port.unwrap_or(
                crate::oob::BmcProtocol::parse(&b.protocol)
                    .unwrap_or_default()
                    .default_port(),
            );
            out.push(format!(
                "bmc address:   {}:{port} ({})",
                sanitize(host),
                sanitize(&b.protocol)
            ));
        }
        match (b.verified_ms, &b.verify_error) {
            (_, Some(e)) => out.push(format!("bmc check:     failed: {}", sanitize(e))),
            (Some(at), None) => out.push(format!(
                "bmc check:     ok at {}{}",
                format_time(at),
                b.cipher_suite
                    .map(|s| format!(", cipher suite {s}"))
                    .unwrap_or_default()
            )),
            (None, None) => {}
        }
        if let Some(fp) = &b.tls_fingerprint {
            out.push(format!("bmc tls:       pinned {}", sanitize(fp)));
        } else if b.tls_ca {
            out.push("bmc tls:       checked against the operator's CA".into());
        } else if b.tls_insecure {
            out.push("bmc tls:       NOT checked (--bmc-insecure)".into());
        }
    }
    if let Some(inv) = &v.inventory {
        out.push("inventory (in-band, from the agent):".into());
        let text = serde_json::to_string_pretty(inv).unwrap_or_default();
        out.push(json_for_terminal(&text).into_owned());
    }
    if let Some(b) = &v.bmc
        && let Some(inv) = &b.oob_inventory
    {
        out.push(format!(
            "inventory (out-of-band, from the BMC over {}, read {}):",
            sanitize(&b.protocol),
            b.oob_inventory_ms.map(format_time).unwrap_or_default()
        ));
        let text = serde_json::to_string_pretty(inv).unwrap_or_default();
        out.push(json_for_terminal(&text).into_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::CELL_MAX;
    use crate::cli::output::tests::{HOSTILE, assert_printable};

    fn server(hostname: &str, agent_version: String) -> crate::api::ServerView {
        crate::api::ServerView {
            server: crate::store::ServerRecord {
                name: None,
                id: "srv-1".into(),
                system_uuid: Some("uuid\u{202e}1".into()),
                serial: None,
                macs: vec!["52:54:00:00:00:01".into()],
                hostname: Some(hostname.into()),
                state: crate::store::ServerState::Available,
                agent_version: Some(agent_version),
                boot_id: None,
                first_seen_ms: 0,
                last_seen_ms: 0,
                connected: true,
                logs_dropped: 0,
                labels: vec![],
                expect_ramdisk_until_ms: None,
            },
            connection: None,
            inventory: None,
            bmc: Some(crate::store::BmcRecord {
                server_id: "srv-1".into(),
                mac: None,
                ip: Some("10.0.0.1\u{9b}2J".into()),
                username: "admin\x1b[2J".into(),
                user_id: None,
                source: "in_band".into(),
                updated_ms: 0,
                host: Some("bmc\x1b[2J".into()),
                port: None,
                protocol: "ipmi".into(),
                allow_ipmi15: false,
                cipher_suite: None,
                system_guid: None,
                verified_ms: None,
                verify_error: Some("refused\x1b[2J".into()),
                checked_ms: None,
                rotation_pending: false,
                tls_fingerprint: None,
                tls_ca: false,
                tls_insecure: false,
                oob_inventory: None,
                oob_inventory_ms: None,
            }),
        }
    }

    #[test]
    fn server_tables_escape_and_cut_hostile_cells_without_panicking() {
        let huge = "v".repeat(200_000);
        let lines = servers_table(vec![server(HOSTILE, huge), server("h2", "0.1".into())]);
        assert_eq!(lines.len(), 3, "{lines:?}");
        for l in &lines {
            assert_printable(l);
            assert!(l.chars().count() < 7 * (CELL_MAX + 2), "{l}");
        }
        assert!(lines[1].contains(r"uuid\u{202e}1"), "{}", lines[1]);
        assert!(lines[1].contains(r"evil\x1b]0;pwned\x07\r\nforged"));
        assert!(lines[1].contains(&format!("{}…", "v".repeat(CELL_MAX - 1))));
        // The header lines up with the cut cells.
        let agent_col = lines[0].find("AGENT").unwrap();
        assert_eq!(lines[1].chars().nth(agent_col), Some('v'));
        assert_eq!(lines[2].chars().nth(agent_col), Some('0'));
    }

    #[test]
    fn server_text_escapes_every_reported_value() {
        let text = server_text(&server(HOSTILE, "1.0\r\nstate:         error".into()));
        for l in &text {
            assert_printable(l);
        }
        let text = text.join("\n");
        assert!(text.contains(r"hostname:      evil\x1b]0;pwned\x07\r\nforged"));
        assert!(text.contains(r"agent version: 1.0\r\nstate:         error"));
        assert!(text.contains(r"user admin\x1b[2J"));
        assert!(text.contains(r"10.0.0.1\u{9b}2J"));
        assert!(text.contains(r"uuid\u{202e}1"));
        // A 200 KB agent version prints in full, escaped, without panicking.
        let big = server_text(&server("h", "\x1b".repeat(200_000)));
        assert!(big.iter().any(|l| l.len() > 800_000));
    }
}
