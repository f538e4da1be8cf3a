//! Servers (identity, lifecycle state, stored inventory) and their agent connections.

use super::{Db, Result, Store, StoreError, json_text, now_ms, parse_json, q};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle states of a server (seed 003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Initial,
    Discovery,
    Available,
    Reserved,
    Cleanup,
    Maintenance,
    Error,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Initial => "initial",
            ServerState::Discovery => "discovery",
            ServerState::Available => "available",
            ServerState::Reserved => "reserved",
            ServerState::Cleanup => "cleanup",
            ServerState::Maintenance => "maintenance",
            ServerState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<ServerState> {
        Some(match s {
            "initial" => ServerState::Initial,
            "discovery" => ServerState::Discovery,
            "available" => ServerState::Available,
            "reserved" => ServerState::Reserved,
            "cleanup" => ServerState::Cleanup,
            "maintenance" => ServerState::Maintenance,
            "error" => ServerState::Error,
            _ => return None,
        })
    }
}

/// A server as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: String,
    /// The operator's name for it (`molar server add NAME`, an OBMd node id); unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    pub macs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub state: ServerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub connected: bool,
    pub logs_dropped: u64,
    /// Set labels (a server enrolled with a `set` token carries its label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Until when the controller expects this server to boot the ramdisk (re-enrolment or
    /// a reboot it asked for): an enrolment token may claim it, and a new boot may take the
    /// place of its session. Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_ramdisk_until_ms: Option<i64>,
}

/// What the handshake's decision needs to know of an enrolled server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binding {
    pub server_id: String,
    pub labels: Vec<String>,
    /// SHA-256 (hex) of the session credential of its current boot, the boot and the
    /// token it was issued under.
    pub session_sha256: Option<String>,
    pub session_boot_id: Option<String>,
    pub session_token_id: Option<String>,
    pub expect_ramdisk_until_ms: Option<i64>,
}

/// What an admitted handshake changes besides what [`Registration`] refreshes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionGrant {
    /// A new session credential: its SHA-256 (hex) and the token it is issued under; bound
    /// to the registration's boot id.
    pub issue: Option<(String, String)>,
    /// A label the server gets (enrolled with a `set` token).
    pub add_label: Option<String>,
    /// The expected ramdisk boot happened: forget the expectation.
    pub consume_expectation: bool,
    /// The token a new server is enrolled with.
    pub enrolled_by: Option<String>,
}

/// What a handshake tells about a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// From [`crate::identity::identity_key`].
    pub identity_key: String,
    pub system_uuid: Option<String>,
    pub serial: Option<String>,
    pub macs: Vec<String>,
    pub hostname: Option<String>,
    pub agent_version: String,
    pub boot_id: String,
}

/// One agent connection as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub id: i64,
    pub server_id: String,
    pub peer_addr: String,
    pub boot_id: String,
    pub agent_version: String,
    pub opened_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
}

pub(super) const SERVER_COLS: &str = "id, system_uuid, serial, macs, hostname, state, agent_version, boot_id, \
     first_seen_ms, last_seen_ms, connected, logs_dropped, labels, expect_ramdisk_until_ms, name";

pub(super) type ServerRow = (ServerRecord, String, String, String);

pub(super) fn server_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ServerRow> {
    let macs: String = row.get(3)?;
    let state: String = row.get(5)?;
    Ok((
        ServerRecord {
            id: row.get(0)?,
            name: row.get(14)?,
            system_uuid: row.get(1)?,
            serial: row.get(2)?,
            macs: Vec::new(),
            hostname: row.get(4)?,
            state: ServerState::Initial,
            agent_version: row.get(6)?,
            boot_id: row.get(7)?,
            first_seen_ms: row.get(8)?,
            last_seen_ms: row.get(9)?,
            connected: row.get::<_, i64>(10)? != 0,
            logs_dropped: row.get::<_, i64>(11)?.max(0) as u64,
            labels: Vec::new(),
            expect_ramdisk_until_ms: row.get(13)?,
        },
        macs,
        state,
        row.get(12)?,
    ))
}

fn labels_of(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: "server labels",
        msg: e.to_string(),
    })
}

pub(super) fn finish_server((mut s, macs, state, labels): ServerRow) -> Result<ServerRecord> {
    s.labels = labels_of(&labels)?;
    s.macs = serde_json::from_str(&macs).map_err(|e| StoreError::Corrupt {
        what: "server macs",
        msg: e.to_string(),
    })?;
    s.state = ServerState::parse(&state).ok_or_else(|| StoreError::Corrupt {
        what: "server state",
        msg: state.clone(),
    })?;
    Ok(s)
}

/// An agent connecting starts the discovery of a server that was waiting for it.
fn discover_if_initial(tx: &rusqlite::Transaction<'_>, id: &str, reason: &str) -> Result<()> {
    use super::lifecycle::apply;
    match apply(
        tx,
        id,
        ServerState::Initial,
        crate::lifecycle::Cause::Discover,
        reason,
        &Default::default(),
    ) {
        Ok(_) | Err(super::TransitionError::Conflict { .. }) => Ok(()),
        Err(super::TransitionError::Store(e)) => Err(e),
        Err(e) => Err(StoreError::Corrupt {
            what: "server state",
            msg: e.to_string(),
        }),
    }
}

impl Db {
    /// Finds the server by identity or creates it (state `discovery`, a fresh `new_id`),
    /// refreshes what the handshake tells, marks it connected and records the connection.
    /// Returns the server and the connection's id.
    pub fn register(
        &mut self,
        reg: &Registration,
        grant: &SessionGrant,
        new_id: &mut dyn FnMut() -> String,
        peer_addr: &str,
    ) -> Result<(ServerRecord, i64)> {
        let tx = self.write_tx().map_err(q("registering a server"))?;
        let now = now_ms();
        let macs = serde_json::to_string(&reg.macs).unwrap_or_else(|_| "[]".into());
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM servers WHERE identity_key = ?1",
                [&reg.identity_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("looking up a server"))?;
        // A machine seen for the first time may be one an operator enrolled by its BMC:
        // it takes that server's place (and its name) instead of becoming a second one.
        let existing = match existing {
            Some(id) => Some(id),
            None => match reg.system_uuid.as_deref() {
                Some(uuid) => {
                    let adopted = super::enrolled::enrolled_by_uuid(&tx, uuid)?;
                    if let Some(id) = &adopted {
                        tx.execute(
                            "UPDATE servers SET identity_key = ?2 WHERE id = ?1",
                            params![id, reg.identity_key],
                        )
                        .map_err(q("adopting an enrolled server"))?;
                        discover_if_initial(&tx, id, "its agent connected")?;
                    }
                    adopted
                }
                None => None,
            },
        };
        let id = match existing {
            Some(id) => {
                tx.execute(
                    "UPDATE servers SET system_uuid = ?2, serial = ?3, macs = ?4,
                        hostname = COALESCE(?5, hostname), agent_version = ?6, boot_id = ?7,
                        last_seen_ms = ?8, connected = 1 WHERE id = ?1",
                    params![
                        id,
                        reg.system_uuid,
                        reg.serial,
                        macs,
                        reg.hostname,
                        reg.agent_version,
                        reg.boot_id,
                        now
                    ],
                )
                .map_err(q("updating a server"))?;
                if let Some(label) = &grant.add_label {
                    let labels: String = tx
                        .query_row("SELECT labels FROM servers WHERE id = ?1", [&id], |r| {
                            r.get(0)
                        })
                        .map_err(q("reading a server's labels"))?;
                    let mut labels = labels_of(&labels)?;
                    if !labels.contains(label) {
                        labels.push(label.clone());
                        labels.sort();
                    }
                    tx.execute(
                        "UPDATE servers SET labels = ?2 WHERE id = ?1",
                        params![id, serde_json::to_string(&labels).unwrap_or_default()],
                    )
                    .map_err(q("labelling a server"))?;
                }
                if grant.consume_expectation {
                    tx.execute(
                        "UPDATE servers SET expect_ramdisk_until_ms = NULL WHERE id = ?1",
                        [&id],
                    )
                    .map_err(q("updating a server"))?;
                }
                id
            }
            None => {
                // Short random ids can collide: draw again until one is free.
                let new_id = loop {
                    let id = new_id();
                    let taken: Option<i64> = tx
                        .query_row("SELECT 1 FROM servers WHERE id = ?1", [&id], |r| r.get(0))
                        .optional()
                        .map_err(q("looking up a server"))?;
                    if taken.is_none() {
                        break id;
                    }
                };
                let labels: Vec<&String> = grant.add_label.iter().collect();
                tx.execute(
                    "INSERT INTO servers (id, identity_key, system_uuid, serial, macs, hostname,
                        state, agent_version, boot_id, first_seen_ms, last_seen_ms, connected,
                        labels, enrolled_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'initial', ?7, ?8, ?9, ?9, 1, ?10, ?11)",
                    params![
                        new_id,
                        reg.identity_key,
                        reg.system_uuid,
                        reg.serial,
                        macs,
                        reg.hostname,
                        reg.agent_version,
                        reg.boot_id,
                        now,
                        serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into()),
                        grant.enrolled_by,
                    ],
                )
                .map_err(q("creating a server"))?;
                super::lifecycle::created(
                    &tx,
                    &new_id,
                    ServerState::Initial,
                    "an unknown agent connected",
                )?;
                discover_if_initial(&tx, &new_id, "its agent connected")?;
                new_id
            }
        };
        tx.execute(
            "INSERT INTO connections (server_id, peer_addr, boot_id, agent_version, opened_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, peer_addr, reg.boot_id, reg.agent_version, now],
        )
        .map_err(q("recording a connection"))?;
        let conn_id = tx.last_insert_rowid();
        if let Some((sha256, token_id)) = &grant.issue {
            tx.execute(
                "UPDATE servers SET session_sha256 = ?2, session_boot_id = ?3,
                    session_token_id = ?4 WHERE id = ?1",
                params![id, sha256, reg.boot_id, token_id],
            )
            .map_err(q("storing a session credential"))?;
        }
        let server = tx
            .query_row(
                &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
                [&id],
                server_row,
            )
            .map_err(q("reading a server"))?;
        tx.commit().map_err(q("registering a server"))?;
        Ok((finish_server(server)?, conn_id))
    }

    /// The enrolled server an identity key is bound to, with its session credential.
    pub fn binding(&self, identity_key: &str) -> Result<Option<Binding>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, labels, session_sha256, session_boot_id, session_token_id,
                    expect_ramdisk_until_ms FROM servers WHERE identity_key = ?1",
                [identity_key],
                |r| {
                    Ok((
                        Binding {
                            server_id: r.get(0)?,
                            labels: Vec::new(),
                            session_sha256: r.get(2)?,
                            session_boot_id: r.get(3)?,
                            session_token_id: r.get(4)?,
                            expect_ramdisk_until_ms: r.get(5)?,
                        },
                        r.get::<_, String>(1)?,
                    ))
                },
            )
            .optional()
            .map_err(q("looking up a server"))?;
        row.map(|(mut b, labels)| {
            b.labels = labels_of(&labels)?;
            Ok(b)
        })
        .transpose()
    }

    /// Expects the server to boot the ramdisk until `until_ms` (`None`: no longer); `false`
    /// when there is no such server.
    pub fn set_expect_ramdisk(&self, id: &str, until_ms: Option<i64>) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE servers SET expect_ramdisk_until_ms = ?2 WHERE id = ?1",
                params![id, until_ms],
            )
            .map_err(q("updating a server"))?;
        Ok(n > 0)
    }

    /// Records the end of a connection; `still_connected` is whether the server has another
    /// live connection (one that superseded this one).
    pub fn close_connection(
        &mut self,
        conn_id: i64,
        reason: &str,
        still_connected: bool,
    ) -> Result<()> {
        let tx = self.write_tx().map_err(q("closing a connection"))?;
        let now = now_ms();
        tx.execute(
            "UPDATE connections SET closed_ms = ?2, close_reason = ?3 WHERE id = ?1 AND closed_ms IS NULL",
            params![conn_id, now, reason],
        )
        .map_err(q("closing a connection"))?;
        tx.execute(
            "UPDATE servers SET last_seen_ms = ?2, connected = ?3
             WHERE id = (SELECT server_id FROM connections WHERE id = ?1)",
            params![conn_id, now, still_connected as i64],
        )
        .map_err(q("closing a connection"))?;
        tx.commit().map_err(q("closing a connection"))
    }

    /// At start-up: no agent is connected yet, whatever the last run left behind.
    pub fn reset_connections(&self, reason: &str) -> Result<()> {
        let conn = &self.conn;
        conn.execute(
            "UPDATE connections SET closed_ms = ?1, close_reason = ?2 WHERE closed_ms IS NULL",
            params![now_ms(), reason],
        )
        .map_err(q("closing stale connections"))?;
        conn.execute("UPDATE servers SET connected = 0", [])
            .map_err(q("closing stale connections"))?;
        Ok(())
    }

    pub fn touch_server(&self, id: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE servers SET last_seen_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(q("updating a server"))?;
        Ok(())
    }

    pub fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        let conn = &self.conn;
        let mut st = conn
            .prepare(&format!(
                "SELECT {SERVER_COLS} FROM servers ORDER BY first_seen_ms, id"
            ))
            .map_err(q("listing servers"))?;
        let rows = st
            .query_map([], server_row)
            .map_err(q("listing servers"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("listing servers"))?;
        rows.into_iter().map(finish_server).collect()
    }

    pub fn get_server(&self, id: &str) -> Result<Option<ServerRecord>> {
        let conn = &self.conn;
        let row = conn
            .query_row(
                &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
                [id],
                server_row,
            )
            .optional()
            .map_err(q("reading a server"))?;
        row.map(finish_server).transpose()
    }

    /// The server an operator means by `key`: its id, else its name.
    pub fn resolve_server(&self, key: &str) -> Result<Option<ServerRecord>> {
        if let Some(s) = self.get_server(key)? {
            return Ok(Some(s));
        }
        let row = self
            .conn
            .query_row(
                &format!("SELECT {SERVER_COLS} FROM servers WHERE name = ?1"),
                [key],
                server_row,
            )
            .optional()
            .map_err(q("reading a server by name"))?;
        row.map(finish_server).transpose()
    }

    /// The stored inventory (set by the inventory capability), if any.
    pub fn server_inventory(&self, id: &str) -> Result<Option<Value>> {
        let conn = &self.conn;
        let text: Option<Option<String>> = conn
            .query_row("SELECT inventory FROM servers WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(q("reading an inventory"))?;
        parse_json("inventory", text.flatten())
    }

    pub fn set_server_inventory(&self, id: &str, inventory: &Value) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE servers SET inventory = ?2 WHERE id = ?1",
                params![id, json_text(inventory)],
            )
            .map_err(q("storing an inventory"))?;
        Ok(n > 0)
    }

    /// The latest connection of a server.
    pub fn last_connection(&self, server_id: &str) -> Result<Option<ConnectionRecord>> {
        let conn = &self.conn;
        conn.query_row(
            "SELECT id, server_id, peer_addr, boot_id, agent_version, opened_ms, closed_ms, close_reason
             FROM connections WHERE server_id = ?1 ORDER BY id DESC LIMIT 1",
            [server_id],
            |r| {
                Ok(ConnectionRecord {
                    id: r.get(0)?,
                    server_id: r.get(1)?,
                    peer_addr: r.get(2)?,
                    boot_id: r.get(3)?,
                    agent_version: r.get(4)?,
                    opened_ms: r.get(5)?,
                    closed_ms: r.get(6)?,
                    close_reason: r.get(7)?,
                })
            },
        )
        .optional()
        .map_err(q("reading a connection"))
    }
}

/// What [`Db::remove_server`] deleted with a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub connections: u64,
    pub tasks: u64,
    pub task_events: u64,
    pub logs: u64,
    pub bmcs: u64,
    /// Control requests, queued or finished.
    #[serde(default)]
    pub requests: u64,
    /// Console tokens (revoked with the server) and console log rows.
    #[serde(default)]
    pub console: u64,
    /// State changes of its history.
    #[serde(default)]
    pub transitions: u64,
    /// Lifecycle workflows and their steps.
    #[serde(default)]
    pub workflows: u64,
}

impl Db {
    /// Deletes a server with everything stored about it (connections, tasks and their
    /// events, logs, BMC entry) in one transaction; `None` when there is no such server.
    pub fn remove_server(&mut self, id: &str) -> Result<Option<Removed>> {
        let what = "removing a server";
        let tx = self.write_tx().map_err(q(what))?;
        let n = |tx: &rusqlite::Transaction<'_>, sql: &str| -> Result<u64> {
            tx.execute(sql, [id]).map(|n| n as u64).map_err(q(what))
        };
        // Children first: foreign keys are enforced.
        let removed = Removed {
            task_events: n(
                &tx,
                "DELETE FROM task_events WHERE task_id IN \
                 (SELECT task_id FROM tasks WHERE server_id = ?1)",
            )?,
            tasks: n(&tx, "DELETE FROM tasks WHERE server_id = ?1")?,
            logs: n(&tx, "DELETE FROM logs WHERE server_id = ?1")?,
            bmcs: n(&tx, "DELETE FROM bmcs WHERE server_id = ?1")?,
            // Removing a server revokes its console tokens: they go with it.
            console: n(&tx, "DELETE FROM console_tokens WHERE server_id = ?1")?
                + n(&tx, "DELETE FROM console_log WHERE server_id = ?1")?,
            requests: n(&tx, "DELETE FROM requests WHERE server_id = ?1")?,
            transitions: n(&tx, "DELETE FROM transitions WHERE server_id = ?1")?,
            workflows: n(
                &tx,
                "DELETE FROM workflow_steps WHERE workflow_id IN \
                 (SELECT id FROM workflows WHERE server_id = ?1)",
            )? + n(&tx, "DELETE FROM workflows WHERE server_id = ?1")?,
            connections: n(&tx, "DELETE FROM connections WHERE server_id = ?1")?,
        };
        if n(&tx, "DELETE FROM servers WHERE id = ?1")? == 0 {
            // Nothing else can have matched either; dropping the transaction rolls back.
            return Ok(None);
        }
        tx.commit().map_err(q(what))?;
        Ok(Some(removed))
    }
}

impl Store {
    /// See [`Db::remove_server`].
    pub async fn remove_server(&self, id: &str) -> Result<Option<Removed>> {
        let id = id.to_owned();
        self.write(move |db| db.remove_server(&id)).await
    }

    /// [`Db::register`]: finds or creates the server of a handshake and records the
    /// connection.
    pub async fn register(
        &self,
        reg: Registration,
        grant: SessionGrant,
        mut new_id: impl FnMut() -> String + Send + 'static,
        peer_addr: &str,
    ) -> Result<(ServerRecord, i64)> {
        let peer_addr = peer_addr.to_owned();
        self.write(move |db| db.register(&reg, &grant, &mut new_id, &peer_addr))
            .await
    }

    /// [`Db::binding`] (on the writer: a decision must see the latest grant).
    pub async fn binding(&self, identity_key: &str) -> Result<Option<Binding>> {
        let key = identity_key.to_owned();
        self.write(move |db| db.binding(&key)).await
    }

    /// [`Db::set_expect_ramdisk`].
    pub async fn set_expect_ramdisk(&self, id: &str, until_ms: Option<i64>) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |db| db.set_expect_ramdisk(&id, until_ms))
            .await
    }

    /// [`Db::close_connection`].
    pub async fn close_connection(
        &self,
        conn_id: i64,
        reason: &str,
        still_connected: bool,
    ) -> Result<()> {
        let reason = reason.to_owned();
        self.write(move |db| db.close_connection(conn_id, &reason, still_connected))
            .await
    }

    /// At start-up: no agent is connected yet, whatever the last run left behind.
    pub async fn reset_connections(&self, reason: &str) -> Result<()> {
        let reason = reason.to_owned();
        self.write(move |db| db.reset_connections(&reason)).await
    }

    pub async fn touch_server(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write(move |db| db.touch_server(&id)).await
    }

    pub async fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        self.read(|db| db.list_servers()).await
    }

    pub async fn get_server(&self, id: &str) -> Result<Option<ServerRecord>> {
        let id = id.to_owned();
        self.read(move |db| db.get_server(&id)).await
    }

    /// See [`Db::resolve_server`].
    pub async fn resolve_server(&self, key: &str) -> Result<Option<ServerRecord>> {
        let key = key.to_owned();
        self.read(move |db| db.resolve_server(&key)).await
    }

    /// The stored inventory, if any.
    pub async fn server_inventory(&self, id: &str) -> Result<Option<Value>> {
        let id = id.to_owned();
        self.read(move |db| db.server_inventory(&id)).await
    }

    pub async fn set_server_inventory(&self, id: &str, inventory: Value) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |db| db.set_server_inventory(&id, &inventory))
            .await
    }

    /// The latest connection of a server.
    pub async fn last_connection(&self, server_id: &str) -> Result<Option<ConnectionRecord>> {
        let id = server_id.to_owned();
        self.read(move |db| db.last_connection(&id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;

    #[test]
    fn removing_a_server_deletes_what_is_stored_about_it_and_nothing_else() {
        use molar_protocol::methods::TaskState;
        let mut s = Db::open_in_memory().unwrap();
        for (key, id) in [("uuid:a", "srv-1"), ("uuid:b", "srv-2")] {
            s.register(&reg(key), &grant(), &mut || id.into(), "127.0.0.1:1")
                .unwrap();
            for (task, seq) in [(format!("t-{id}"), 1), (format!("t-{id}"), 2)] {
                s.apply_task_status(id, &status(&task, TaskState::Running, seq))
                    .unwrap();
            }
            s.conn
                .execute(
                    "INSERT INTO logs (server_id, ts_ms, level, target, msg, received_ms)
                        VALUES (?1, 1, 'info', 't', 'm', 1)",
                    [id],
                )
                .unwrap();
            s.set_bmc(
                id,
                &crate::store::BmcCredentials {
                    mac: None,
                    ip: None,
                    username: "molar".into(),
                    password: molar_protocol::Secret::new("pw"),
                    user_id: None,
                    source: "in_band".into(),
                },
            )
            .unwrap();
        }
        let removed = s.remove_server("srv-1").unwrap().unwrap();
        assert_eq!(removed.connections, 1);
        assert_eq!(removed.tasks, 1);
        assert!(removed.task_events >= 1, "{removed:?}");
        assert_eq!((removed.logs, removed.bmcs), (1, 1));
        assert_eq!(s.get_server("srv-1").unwrap(), None);
        assert_eq!(s.get_task("t-srv-1").unwrap(), None);
        assert_eq!(s.task_events("t-srv-1", 0).unwrap(), vec![]);
        assert_eq!(s.logs("srv-1", 0, 10).unwrap(), vec![]);
        assert_eq!(s.bmc("srv-1").unwrap(), None);
        assert_eq!(s.last_connection("srv-1").unwrap(), None);
        // The other server keeps everything.
        assert!(s.get_server("srv-2").unwrap().is_some());
        assert!(s.get_task("t-srv-2").unwrap().is_some());
        assert_eq!(s.logs("srv-2", 0, 10).unwrap().len(), 1);
        assert!(s.bmc("srv-2").unwrap().is_some());
        // Unknown (or already removed): nothing to do.
        assert_eq!(s.remove_server("srv-1").unwrap(), None);
        assert_eq!(s.remove_server("srv-nope").unwrap(), None);
    }

    #[test]
    fn register_finds_the_same_server_by_identity() {
        let mut s = Db::open_in_memory().unwrap();
        let (a, c1) = s
            .register(
                &reg("uuid:u"),
                &grant(),
                &mut || "srv-1".into(),
                "127.0.0.1:1",
            )
            .unwrap();
        assert_eq!(a.state, ServerState::Discovery);
        assert!(a.connected);
        let (b, c2) = s
            .register(
                &reg("uuid:u"),
                &grant(),
                &mut || "srv-2".into(),
                "127.0.0.1:2",
            )
            .unwrap();
        assert_eq!(b.id, "srv-1");
        assert_ne!(c1, c2);
        s.close_connection(c1, "superseded", true).unwrap();
        assert!(s.get_server("srv-1").unwrap().unwrap().connected);
        s.close_connection(c2, "eof", false).unwrap();
        assert!(!s.get_server("srv-1").unwrap().unwrap().connected);
        assert_eq!(
            s.last_connection("srv-1").unwrap().unwrap().close_reason,
            Some("eof".into())
        );
    }
}
