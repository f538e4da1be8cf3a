//! Servers known by their BMC first (`molar server add`, OBMd's "register a node"): created
//! in `initial` with an operator's BMC entry before any agent connected, and recognised as
//! the same machine when its agent later does: by the system GUID the BMC reported (matched
//! against the SMBIOS UUID of the handshake) or by the BMC's MAC (from the agent's
//! `bmc.info`).
//!
//! An enrolled server's identity key is `enrolled:ID` until an agent is matched to it: no
//! handshake can produce that key, so an enrolled server is never taken by an unrelated
//! machine.

use super::servers::{SERVER_COLS, finish_server, server_row};
use super::{Db, Result, Store, now_ms, q};
use rusqlite::{OptionalExtension, params};

use super::ServerRecord;

/// The identity-key prefix of servers no agent has been matched to yet.
pub const ENROLLED_KEY_PREFIX: &str = "enrolled:";

/// What an operator enrols: a name and a BMC the controller has opened a session with.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub protocol: String,
    pub username: String,
    pub password: molar_protocol::Secret,
    pub allow_ipmi15: bool,
    /// What the verifying session found.
    pub cipher_suite: Option<u8>,
    pub system_guid: Option<String>,
    pub bmc_mac: Option<String>,
    /// Redfish: how the BMC's certificate is trusted.
    pub trust: Option<crate::oob::BmcTrust>,
    /// Redfish: the out-of-band inventory read at enrolment.
    pub oob_inventory: Option<crate::oob::redfish::OobInventory>,
}

/// Why an enrolment was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolRefusal {
    #[error("a server named {0:?} exists")]
    NameTaken(String),
    #[error("BMC {addr} is already enrolled as server {server_id}")]
    BmcTaken { addr: String, server_id: String },
}

/// The 16 bytes of a textual UUID/GUID (hyphens optional), `None` when it is not one.
fn guid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn guid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The textual forms a BMC's system GUID may take as an SMBIOS UUID. BMCs disagree on the
/// byte order of Get System GUID: some send the UUID's text order, the specification's is
/// least significant byte first (the whole 16 bytes reversed), and SMBIOS itself stores the
/// first three fields little-endian. A match in any of the three is the same machine.
pub fn guid_candidates(guid: &str) -> Vec<String> {
    let Some(b) = guid_bytes(guid) else {
        return Vec::new();
    };
    let mut reversed = b;
    reversed.reverse();
    let mut mixed = b;
    mixed[0..4].reverse();
    mixed[4..6].reverse();
    mixed[6..8].reverse();
    let mut out = vec![guid_text(&b), guid_text(&reversed), guid_text(&mixed)];
    out.dedup();
    out
}

impl Db {
    /// Creates a server in `initial` with the operator's BMC entry, in one transaction: both
    /// rows or neither.
    pub fn enrol_server(
        &mut self,
        e: &Enrolment,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<Result<ServerRecord, EnrolRefusal>> {
        let what = "enrolling a server";
        let key = self.key.clone();
        let tx = self.write_tx().map_err(q(what))?;
        let taken: Option<String> = tx
            .query_row("SELECT id FROM servers WHERE name = ?1", [&e.name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(q(what))?;
        if taken.is_some() {
            return Ok(Err(EnrolRefusal::NameTaken(e.name.clone())));
        }
        let same_bmc: Option<String> = tx
            .query_row(
                "SELECT server_id FROM bmcs WHERE lower(host) = lower(?1) AND port = ?2",
                params![e.host, e.port],
                |r| r.get(0),
            )
            .optional()
            .map_err(q(what))?;
        if let Some(server_id) = same_bmc {
            return Ok(Err(EnrolRefusal::BmcTaken {
                addr: format!("{}:{}", e.host, e.port),
                server_id,
            }));
        }
        let id = loop {
            let id = new_id();
            let used: Option<i64> = tx
                .query_row("SELECT 1 FROM servers WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(q(what))?;
            if used.is_none() {
                break id;
            }
        };
        let now = now_ms();
        tx.execute(
            "INSERT INTO servers (id, identity_key, name, state, first_seen_ms, last_seen_ms,
                connected)
             VALUES (?1, ?2, ?3, 'initial', ?4, ?4, 0)",
            params![id, format!("{ENROLLED_KEY_PREFIX}{id}"), e.name, now],
        )
        .map_err(q(what))?;
        super::lifecycle::created(&tx, &id, super::ServerState::Initial, "enrolled by its BMC")?;
        let sealed = key.seal(&id, e.password.expose())?;
        tx.execute(
            "INSERT INTO bmcs (server_id, mac, ip, username, password_sealed, user_id, source,
                updated_ms, host, port, protocol, allow_ipmi15, cipher_suite, system_guid,
                verified_ms, tls_ca_pem, tls_fingerprint, tls_insecure, oob_inventory,
                oob_inventory_ms, checked_ms)
             VALUES (?1, ?2, NULL, ?3, ?4, NULL, 'operator', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?5,
                ?12, ?13, ?14, ?15, CASE WHEN ?15 IS NULL THEN NULL ELSE ?5 END, ?5)",
            params![
                id,
                e.bmc_mac.as_deref().map(str::to_ascii_lowercase),
                e.username,
                sealed,
                now,
                e.host,
                e.port,
                e.protocol,
                e.allow_ipmi15,
                e.cipher_suite,
                e.system_guid,
                match &e.trust {
                    Some(crate::oob::BmcTrust::Ca(pem)) => Some(pem.as_str()),
                    _ => None,
                },
                match &e.trust {
                    Some(crate::oob::BmcTrust::Fingerprint(f)) => Some(f.as_str()),
                    _ => None,
                },
                e.trust == Some(crate::oob::BmcTrust::Insecure),
                e.oob_inventory
                    .as_ref()
                    .map(|i| serde_json::to_string(i).unwrap_or_default()),
            ],
        )
        .map_err(q(what))?;
        let server = tx
            .query_row(
                &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
                [&id],
                server_row,
            )
            .map_err(q(what))?;
        tx.commit().map_err(q(what))?;
        Ok(Ok(finish_server(server)?))
    }

    /// Folds an enrolled server no agent was matched to yet into `server_id`, the server of
    /// a connected agent whose BMC has `bmc_mac`: the operator's name, BMC address and
    /// options, queued requests, console tokens and console log move over; the enrolled row
    /// goes. Returns the enrolled server's id when one was merged.
    ///
    /// Run before the agent's own BMC entry is written, so that entry updates the moved one
    /// (credentials, MAC) and keeps the operator's address.
    pub fn merge_enrolled_by_bmc_mac(
        &mut self,
        server_id: &str,
        bmc_mac: &str,
    ) -> Result<Option<String>> {
        let what = "merging an enrolled server";
        let tx = self.write_tx().map_err(q(what))?;
        let enrolled: Option<String> = tx
            .query_row(
                "SELECT s.id FROM servers s JOIN bmcs b ON b.server_id = s.id
                 WHERE s.identity_key LIKE 'enrolled:%' AND s.id != ?1
                   AND lower(b.mac) = lower(?2)
                 ORDER BY s.first_seen_ms LIMIT 1",
                params![server_id, bmc_mac],
                |r| r.get(0),
            )
            .optional()
            .map_err(q(what))?;
        let Some(from) = enrolled else {
            return Ok(None);
        };
        merge_into(&tx, &from, server_id)?;
        tx.commit().map_err(q(what))?;
        Ok(Some(from))
    }
}

/// Moves everything of server `from` into `into` and deletes `from`, inside the caller's
/// transaction.
fn merge_into(tx: &rusqlite::Transaction<'_>, from: &str, into: &str) -> Result<()> {
    let what = "merging an enrolled server";
    let exec = |sql: &str| tx.execute(sql, params![from, into]).map_err(q(what));
    let exec_from = |sql: &str| tx.execute(sql, [from]).map_err(q(what));
    // The name first: it is unique.
    let name: Option<String> = tx
        .query_row("SELECT name FROM servers WHERE id = ?1", [from], |r| {
            r.get(0)
        })
        .map_err(q(what))?;
    exec_from("UPDATE servers SET name = NULL WHERE id = ?1")?;
    tx.execute(
        "UPDATE servers SET name = COALESCE(name, ?2) WHERE id = ?1",
        params![into, name],
    )
    .map_err(q(what))?;
    let into_has_bmc: Option<i64> = tx
        .query_row("SELECT 1 FROM bmcs WHERE server_id = ?1", [into], |r| {
            r.get(0)
        })
        .optional()
        .map_err(q(what))?;
    if into_has_bmc.is_some() {
        // The agent's entry has the working credentials; the operator's address stays.
        exec(
            "UPDATE bmcs SET
                host = COALESCE(host, (SELECT host FROM bmcs WHERE server_id = ?1)),
                port = COALESCE(port, (SELECT port FROM bmcs WHERE server_id = ?1)),
                protocol = (SELECT protocol FROM bmcs WHERE server_id = ?1),
                allow_ipmi15 = (SELECT allow_ipmi15 FROM bmcs WHERE server_id = ?1),
                system_guid = COALESCE(system_guid,
                    (SELECT system_guid FROM bmcs WHERE server_id = ?1))
             WHERE server_id = ?2",
        )?;
        exec_from("DELETE FROM bmcs WHERE server_id = ?1")?;
    } else {
        exec("UPDATE bmcs SET server_id = ?2 WHERE server_id = ?1")?;
    }
    // The enrolled server's history (its enrolment) stays, ahead of the agent's own.
    for table in [
        "requests",
        "console_tokens",
        "console_log",
        "events",
        "transitions",
    ] {
        exec(&format!(
            "UPDATE {table} SET server_id = ?2 WHERE server_id = ?1"
        ))?;
    }
    exec_from("DELETE FROM connections WHERE server_id = ?1")?;
    exec_from("DELETE FROM servers WHERE id = ?1")?;
    Ok(())
}

/// At registration, the enrolled server whose BMC reported the handshake's system UUID as
/// its system GUID (in any of the byte orders of [`guid_candidates`]).
pub(super) fn enrolled_by_uuid(
    tx: &rusqlite::Transaction<'_>,
    system_uuid: &str,
) -> Result<Option<String>> {
    let uuid = system_uuid.trim().to_ascii_lowercase();
    let mut stmt = tx
        .prepare(
            "SELECT s.id, b.system_guid FROM servers s JOIN bmcs b ON b.server_id = s.id
             WHERE s.identity_key LIKE 'enrolled:%' AND b.system_guid IS NOT NULL
             ORDER BY s.first_seen_ms",
        )
        .map_err(q("looking up enrolled servers"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(q("looking up enrolled servers"))?;
    for row in rows {
        let (id, guid) = row.map_err(q("looking up enrolled servers"))?;
        if guid_candidates(&guid).contains(&uuid) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

impl Store {
    /// See [`Db::enrol_server`].
    pub async fn enrol_server(
        &self,
        e: Enrolment,
        mut new_id: impl FnMut() -> String + Send + 'static,
    ) -> Result<Result<ServerRecord, EnrolRefusal>> {
        self.write(move |db| db.enrol_server(&e, &mut new_id)).await
    }

    /// See [`Db::merge_enrolled_by_bmc_mac`].
    pub async fn merge_enrolled_by_bmc_mac(
        &self,
        server_id: &str,
        bmc_mac: &str,
    ) -> Result<Option<String>> {
        let (id, mac) = (server_id.to_owned(), bmc_mac.to_owned());
        self.write(move |db| db.merge_enrolled_by_bmc_mac(&id, &mac))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::{BmcCredentials, ServerState};

    fn enrolment(name: &str, port: u16) -> Enrolment {
        Enrolment {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            protocol: "ipmi".into(),
            username: "admin".into(),
            password: molar_protocol::Secret::new("operator-pw"),
            allow_ipmi15: false,
            cipher_suite: Some(3),
            system_guid: Some("a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90".into()),
            bmc_mac: Some("52:54:00:BE:EF:01".into()),
            trust: None,
            oob_inventory: None,
        }
    }

    #[test]
    fn guid_candidates_cover_the_three_byte_orders() {
        let c = guid_candidates("00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(
            c,
            [
                "00112233-4455-6677-8899-aabbccddeeff",
                "ffeeddcc-bbaa-9988-7766-554433221100",
                "33221100-5544-7766-8899-aabbccddeeff",
            ]
        );
        assert!(guid_candidates("not a guid").is_empty());
        assert!(guid_candidates("00112233-4455-6677-8899-aabbccddeeffxx").is_empty());
        assert!(guid_candidates("ü0112233-4455-6677-8899-aabbccddeeff").is_empty());
    }

    #[test]
    fn an_enrolment_stores_both_rows_or_refuses_with_nothing_stored() {
        let mut db = Db::open_in_memory().unwrap();
        let s = db
            .enrol_server(&enrolment("rack1-07", 9001), &mut || "srv-e".into())
            .unwrap()
            .unwrap();
        assert_eq!(s.state, ServerState::Initial);
        assert_eq!(s.name.as_deref(), Some("rack1-07"));
        assert!(!s.connected);
        let bmc = db.bmc("srv-e").unwrap().unwrap();
        assert_eq!(bmc.source, "operator");
        assert_eq!(bmc.mac.as_deref(), Some("52:54:00:be:ef:01"));
        assert_eq!(
            db.bmc_password("srv-e").unwrap().unwrap().expose(),
            "operator-pw"
        );
        assert_eq!(
            db.enrol_server(&enrolment("rack1-07", 9002), &mut || "srv-f".into())
                .unwrap()
                .unwrap_err(),
            EnrolRefusal::NameTaken("rack1-07".into())
        );
        assert!(matches!(
            db.enrol_server(&enrolment("other", 9001), &mut || "srv-g".into())
                .unwrap()
                .unwrap_err(),
            EnrolRefusal::BmcTaken { server_id, .. } if server_id == "srv-e"
        ));
        assert_eq!(db.list_servers().unwrap().len(), 1);
        assert!(db.get_server("srv-f").unwrap().is_none());
        assert!(db.bmc("srv-g").unwrap().is_none());
    }

    #[test]
    fn an_agent_reporting_the_bmc_guid_is_the_enrolled_server() {
        let mut db = Db::open_in_memory().unwrap();
        db.enrol_server(&enrolment("rack1-07", 9001), &mut || "srv-e".into())
            .unwrap()
            .unwrap();
        // SMBIOS order of the BMC's GUID: the first three fields swapped.
        let mut r = reg("uuid:d4c3b2a1-f6e5-1807-293a-4b5c6d7e8f90");
        r.system_uuid = Some("D4C3B2A1-F6E5-1807-293A-4B5C6D7E8F90".into());
        let (s, _) = db
            .register(&r, &grant(), &mut || "srv-new".into(), "127.0.0.1:1")
            .unwrap();
        assert_eq!(s.id, "srv-e");
        assert_eq!(s.state, ServerState::Discovery);
        assert_eq!(s.name.as_deref(), Some("rack1-07"));
        assert!(s.connected);
        assert_eq!(db.list_servers().unwrap().len(), 1);
        // The next boot finds it by its real identity.
        let (again, _) = db
            .register(&r, &grant(), &mut || "srv-other".into(), "127.0.0.1:2")
            .unwrap();
        assert_eq!(again.id, "srv-e");
    }

    #[test]
    fn an_unrelated_agent_does_not_take_an_enrolled_server() {
        let mut db = Db::open_in_memory().unwrap();
        db.enrol_server(&enrolment("rack1-07", 9001), &mut || "srv-e".into())
            .unwrap()
            .unwrap();
        let mut r = reg("uuid:11111111-2222-3333-4444-555555555555");
        r.system_uuid = Some("11111111-2222-3333-4444-555555555555".into());
        let (s, _) = db
            .register(&r, &grant(), &mut || "srv-new".into(), "127.0.0.1:1")
            .unwrap();
        assert_eq!(s.id, "srv-new");
        assert_eq!(db.list_servers().unwrap().len(), 2);
        // A MAC that is not the enrolled BMC's merges nothing.
        assert_eq!(
            db.merge_enrolled_by_bmc_mac("srv-new", "52:54:00:00:00:99")
                .unwrap(),
            None
        );
        assert_eq!(db.list_servers().unwrap().len(), 2);
    }

    #[test]
    fn an_agent_whose_bmc_has_the_enrolled_mac_absorbs_the_enrolment() {
        let mut db = Db::open_in_memory().unwrap();
        db.enrol_server(&enrolment("rack1-07", 9001), &mut || "srv-e".into())
            .unwrap()
            .unwrap();
        let (s, _) = db
            .register(
                &reg("uuid:u"),
                &grant(),
                &mut || "srv-a".into(),
                "127.0.0.1:1",
            )
            .unwrap();
        assert_eq!(s.id, "srv-a");
        assert_eq!(
            db.merge_enrolled_by_bmc_mac("srv-a", "52:54:00:be:ef:01")
                .unwrap()
                .as_deref(),
            Some("srv-e")
        );
        // The in-band reset then writes its credentials over the moved entry.
        db.set_bmc(
            "srv-a",
            &BmcCredentials {
                mac: Some("52:54:00:be:ef:01".into()),
                ip: Some("192.0.2.10".into()),
                username: "molar".into(),
                password: molar_protocol::Secret::new("in-band-pw"),
                user_id: Some(3),
                source: "in_band".into(),
            },
        )
        .unwrap();
        let servers = db.list_servers().unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].id, "srv-a");
        assert_eq!(servers[0].name.as_deref(), Some("rack1-07"));
        assert_eq!(db.resolve_server("rack1-07").unwrap().unwrap().id, "srv-a");
        let target = db.bmc_target("srv-a").unwrap().unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 9001));
        assert_eq!(target.username, "molar");
        assert_eq!(target.password.expose(), "in-band-pw");
        assert!(db.get_server("srv-e").unwrap().is_none());
    }
}
