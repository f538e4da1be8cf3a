//! The controller's embedded SQLite store: servers, agent connections, agent tokens, tasks,
//! task events and logs.
//!
//! One `rusqlite` connection behind a mutex: every query is short (a row or a small batch),
//! so holding the lock from async code is cheaper than a thread hop. The schema is versioned
//! with `PRAGMA user_version` and an ordered list of migration steps ([`MIGRATIONS`]); a step
//! is never edited once released, only appended to.
//!
//! Idempotence of task statuses lives here, in SQL: a terminal state is stored once per
//! `(task_id, state)` (a partial unique index enforces it even if two connections race), and a
//! `running` update is applied only when its `seq` is newer than the stored one.

use molar_protocol::methods::{LogRecord, TaskState, TaskStatus};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Ordered schema migrations; `PRAGMA user_version` is the number of steps applied.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    identity_key  TEXT NOT NULL UNIQUE,
    system_uuid   TEXT,
    serial        TEXT,
    macs          TEXT NOT NULL DEFAULT '[]',
    hostname      TEXT,
    state         TEXT NOT NULL DEFAULT 'initial'
                  CHECK (state IN ('initial','discovery','available','reserved','cleanup','maintenance','error')),
    agent_version TEXT,
    boot_id       TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    connected     INTEGER NOT NULL DEFAULT 0,
    logs_dropped  INTEGER NOT NULL DEFAULT 0,
    inventory     TEXT
);
CREATE TABLE connections (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id     TEXT NOT NULL REFERENCES servers(id),
    peer_addr     TEXT NOT NULL,
    boot_id       TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    opened_ms     INTEGER NOT NULL,
    closed_ms     INTEGER,
    close_reason  TEXT
);
CREATE INDEX connections_server ON connections(server_id, id);
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE tasks (
    task_id     TEXT PRIMARY KEY,
    server_id   TEXT NOT NULL REFERENCES servers(id),
    method      TEXT NOT NULL,
    params      TEXT NOT NULL DEFAULT '{}',
    state       TEXT NOT NULL CHECK (state IN ('pending','running','complete','error')),
    percent     REAL,
    eta         INTEGER,
    msg         TEXT,
    code        TEXT,
    result      TEXT,
    seq         INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX tasks_server ON tasks(server_id, created_ms);
CREATE TABLE task_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(task_id),
    state   TEXT NOT NULL,
    percent REAL,
    eta     INTEGER,
    msg     TEXT,
    code    TEXT,
    result  TEXT,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX task_events_task ON task_events(task_id, id);
CREATE UNIQUE INDEX task_events_terminal_once ON task_events(task_id, state)
    WHERE state IN ('complete', 'error');
CREATE TABLE logs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id TEXT NOT NULL REFERENCES servers(id),
    ts_ms     INTEGER NOT NULL,
    level     TEXT NOT NULL,
    target    TEXT NOT NULL,
    msg       TEXT NOT NULL,
    fields    TEXT
);
CREATE INDEX logs_server ON logs(server_id, id);
"#,
    r#"
CREATE TABLE bmcs (
    server_id     TEXT PRIMARY KEY REFERENCES servers(id),
    mac           TEXT,
    ip            TEXT,
    username      TEXT NOT NULL,
    password      TEXT NOT NULL,
    user_id       INTEGER,
    source        TEXT NOT NULL,
    updated_ms    INTEGER NOT NULL
);
"#,
];

/// Most task ids listed in a handshake's `acknowledged_tasks`.
pub const ACKNOWLEDGED_MAX: i64 = 1000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating database file {path} (mode 0600): {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migrating database to version {version}: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this controller knows ({known})")]
    TooNew { found: i64, known: usize },
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("stored {what} is corrupt: {msg}")]
    Corrupt { what: &'static str, msg: String },
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        molar_protocol::codes::INTERNAL
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn q(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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

/// An agent token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

/// The state of a task on the controller: `pending` until the agent accepts it, then the
/// agent's own states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    Pending,
    Running,
    Complete,
    Error,
}

impl TaskPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "pending",
            TaskPhase::Running => "running",
            TaskPhase::Complete => "complete",
            TaskPhase::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<TaskPhase> {
        Some(match s {
            "pending" => TaskPhase::Pending,
            "running" => TaskPhase::Running,
            "complete" => TaskPhase::Complete,
            "error" => TaskPhase::Error,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskPhase::Complete | TaskPhase::Error)
    }
}

impl From<TaskState> for TaskPhase {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Running => TaskPhase::Running,
            TaskState::Complete => TaskPhase::Complete,
            TaskState::Error => TaskPhase::Error,
        }
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub server_id: String,
    pub method: String,
    pub params: Value,
    pub state: TaskPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    pub seq: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

/// One stored status of a task, as streamed to watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub id: i64,
    pub task_id: String,
    pub state: TaskPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    pub at_ms: i64,
}

/// What became of a `task_status`.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusOutcome {
    /// Stored and appended to the task's events.
    Stored(TaskEvent),
    /// A terminal status already stored (or the task already ended): acknowledged, ignored.
    Duplicate,
    /// A `running` update not newer than the stored one: acknowledged, ignored.
    Stale,
    /// The task belongs to another server: acknowledged (so the agent stops resending),
    /// ignored.
    Foreign,
}

/// A stored log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub level: String,
    pub target: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Value>,
}

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(what: &'static str, s: Option<String>) -> Result<Option<Value>> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt {
            what,
            msg: e.to_string(),
        })
    })
    .transpose()
}

const SERVER_COLS: &str = "id, system_uuid, serial, macs, hostname, state, agent_version, boot_id, \
     first_seen_ms, last_seen_ms, connected, logs_dropped";

fn server_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ServerRecord, String, String)> {
    let macs: String = row.get(3)?;
    let state: String = row.get(5)?;
    Ok((
        ServerRecord {
            id: row.get(0)?,
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
        },
        macs,
        state,
    ))
}

fn finish_server((mut s, macs, state): (ServerRecord, String, String)) -> Result<ServerRecord> {
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

const TASK_COLS: &str = "task_id, server_id, method, params, state, percent, eta, msg, code, \
     result, seq, created_ms, updated_ms, finished_ms";

type RawTask = (TaskRecord, String, String, Option<String>);

fn task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawTask> {
    Ok((
        TaskRecord {
            task_id: row.get(0)?,
            server_id: row.get(1)?,
            method: row.get(2)?,
            params: Value::Null,
            state: TaskPhase::Pending,
            percent: row.get(5)?,
            eta: row.get::<_, Option<i64>>(6)?.map(|e| e.max(0) as u64),
            msg: row.get(7)?,
            code: row.get(8)?,
            result: None,
            seq: row.get::<_, i64>(10)?.max(0) as u64,
            created_ms: row.get(11)?,
            updated_ms: row.get(12)?,
            finished_ms: row.get(13)?,
        },
        row.get(3)?,
        row.get(4)?,
        row.get(9)?,
    ))
}

fn finish_task((mut t, params, state, result): RawTask) -> Result<TaskRecord> {
    t.params = parse_json("task params", Some(params))?.unwrap_or(Value::Null);
    t.state = TaskPhase::parse(&state).ok_or_else(|| StoreError::Corrupt {
        what: "task state",
        msg: state.clone(),
    })?;
    t.result = parse_json("task result", result)?;
    Ok(t)
}

const EVENT_COLS: &str = "id, task_id, state, percent, eta, msg, code, result, at_ms";

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TaskEvent, String, Option<String>)> {
    Ok((
        TaskEvent {
            id: row.get(0)?,
            task_id: row.get(1)?,
            state: TaskPhase::Pending,
            percent: row.get(3)?,
            eta: row.get::<_, Option<i64>>(4)?.map(|e| e.max(0) as u64),
            msg: row.get(5)?,
            code: row.get(6)?,
            result: None,
            at_ms: row.get(8)?,
        },
        row.get(2)?,
        row.get(7)?,
    ))
}

fn finish_event((mut e, state, result): (TaskEvent, String, Option<String>)) -> Result<TaskEvent> {
    e.state = TaskPhase::parse(&state).ok_or_else(|| StoreError::Corrupt {
        what: "task event state",
        msg: state.clone(),
    })?;
    e.result = parse_json("task event result", result)?;
    Ok(e)
}

// The columns of one row; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
    state: TaskPhase,
    percent: Option<f64>,
    eta: Option<u64>,
    msg: Option<&str>,
    code: Option<&str>,
    result: Option<&Value>,
    at_ms: i64,
) -> Result<Option<TaskEvent>> {
    let result_text = result.map(json_text);
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO task_events (task_id, state, percent, eta, msg, code, result, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                task_id,
                state.as_str(),
                percent,
                eta.map(|e| e.min(i64::MAX as u64) as i64),
                msg,
                code,
                result_text,
                at_ms
            ],
        )
        .map_err(q("appending a task event"))?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(TaskEvent {
        id: tx.last_insert_rowid(),
        task_id: task_id.to_owned(),
        state,
        percent,
        eta,
        msg: msg.map(str::to_owned),
        code: code.map(str::to_owned),
        result: result.cloned(),
        at_ms,
    }))
}

impl Store {
    /// Opens (creating if needed) `dir/molar.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("molar.db");
        // The database holds BMC passwords: owner-only from its first byte. SQLite gives its
        // -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let created = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
            created.map_err(|source| StoreError::CreateFile {
                path: path.clone(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, &path)
    }

    /// A throwaway in-memory store (tests).
    pub fn open_in_memory() -> Result<Store> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, &path)
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Store> {
        let open = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        // WAL: readers never block the writer; NORMAL sync is durable across process crashes,
        // which is what matters for a daemon (a power cut may lose the last commits).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open)?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (statements are
        // atomic and transactions roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied schema version.
    pub fn schema_version(&self) -> Result<i64> {
        self.lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(q("reading the schema version"))
    }

    // ---- tokens ----

    /// Stores a new agent token by its SHA-256 hash (lowercase hex).
    pub fn create_token(&self, id: &str, name: &str, sha256_hex: &str) -> Result<TokenRecord> {
        let created_ms = now_ms();
        self.lock()
            .execute(
                "INSERT INTO tokens (id, name, sha256, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, sha256_hex, created_ms],
            )
            .map_err(q("storing a token"))?;
        Ok(TokenRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            created_ms,
            revoked_ms: None,
        })
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.lock();
        let mut st = conn
            .prepare("SELECT id, name, created_ms, revoked_ms FROM tokens ORDER BY created_ms, id")
            .map_err(q("listing tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get(2)?,
                    revoked_ms: r.get(3)?,
                })
            })
            .map_err(q("listing tokens"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("listing tokens"))
    }

    /// Revokes a token; `false` when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(q("revoking a token"))?;
        Ok(n > 0)
    }

    /// Hashes (hex) of the tokens not revoked.
    pub fn active_token_hashes(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT sha256 FROM tokens WHERE revoked_ms IS NULL")
            .map_err(q("reading tokens"))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(q("reading tokens"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("reading tokens"))
    }

    // ---- servers and connections ----

    /// Finds the server by identity or creates it (state `discovery`, a fresh `new_id`),
    /// refreshes what the handshake tells, marks it connected and records the connection.
    /// Returns the server and the connection's id.
    pub fn register(
        &self,
        reg: &Registration,
        new_id: &mut dyn FnMut() -> String,
        peer_addr: &str,
    ) -> Result<(ServerRecord, i64)> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(q("registering a server"))?;
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
                tx.execute(
                    "INSERT INTO servers (id, identity_key, system_uuid, serial, macs, hostname,
                        state, agent_version, boot_id, first_seen_ms, last_seen_ms, connected)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'discovery', ?7, ?8, ?9, ?9, 1)",
                    params![
                        new_id,
                        reg.identity_key,
                        reg.system_uuid,
                        reg.serial,
                        macs,
                        reg.hostname,
                        reg.agent_version,
                        reg.boot_id,
                        now
                    ],
                )
                .map_err(q("creating a server"))?;
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

    /// Records the end of a connection; `still_connected` is whether the server has another
    /// live connection (one that superseded this one).
    pub fn close_connection(
        &self,
        conn_id: i64,
        reason: &str,
        still_connected: bool,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(q("closing a connection"))?;
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
        let conn = self.lock();
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
        self.lock()
            .execute(
                "UPDATE servers SET last_seen_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(q("updating a server"))?;
        Ok(())
    }

    pub fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        let conn = self.lock();
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
        let conn = self.lock();
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
}

/// A server's BMC as seed 004's BMC table keeps it: where it is and credentials that work.
/// The password is stored for the controller's own out-of-band use and never listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcRecord {
    pub server_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// How the credentials were obtained: `in_band` (the agent set them).
    pub source: String,
    pub updated_ms: i64,
}

/// What is stored for a BMC.
#[derive(Debug, Clone)]
pub struct BmcCredentials<'a> {
    pub mac: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub username: &'a str,
    pub password: &'a molar_protocol::Secret,
    pub user_id: Option<i64>,
    pub source: &'a str,
}

impl Store {
    /// Stores (or replaces) the server's BMC entry.
    pub fn set_bmc(&self, server_id: &str, c: &BmcCredentials<'_>) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO bmcs (server_id, mac, ip, username, password, user_id, source, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(server_id) DO UPDATE SET mac = excluded.mac, ip = excluded.ip,
                   username = excluded.username, password = excluded.password,
                   user_id = excluded.user_id, source = excluded.source,
                   updated_ms = excluded.updated_ms",
                params![
                    server_id,
                    c.mac,
                    c.ip,
                    c.username,
                    c.password.expose(),
                    c.user_id,
                    c.source,
                    now_ms()
                ],
            )
            .map_err(q("storing a BMC"))?;
        Ok(())
    }

    /// The server's BMC entry, without its password.
    pub fn bmc(&self, server_id: &str) -> Result<Option<BmcRecord>> {
        self.lock()
            .query_row(
                "SELECT server_id, mac, ip, username, user_id, source, updated_ms FROM bmcs
                 WHERE server_id = ?1",
                [server_id],
                |r| {
                    Ok(BmcRecord {
                        server_id: r.get(0)?,
                        mac: r.get(1)?,
                        ip: r.get(2)?,
                        username: r.get(3)?,
                        user_id: r.get(4)?,
                        source: r.get(5)?,
                        updated_ms: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(q("reading a BMC"))
    }

    /// The stored BMC password, for the controller's out-of-band use only.
    pub fn bmc_password(&self, server_id: &str) -> Result<Option<molar_protocol::Secret>> {
        let p: Option<String> = self
            .lock()
            .query_row(
                "SELECT password FROM bmcs WHERE server_id = ?1",
                [server_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("reading a BMC password"))?;
        Ok(p.map(molar_protocol::Secret::new))
    }
}

impl Store {
    /// The stored inventory (set by the inventory capability), if any.
    pub fn server_inventory(&self, id: &str) -> Result<Option<Value>> {
        let conn = self.lock();
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
            .lock()
            .execute(
                "UPDATE servers SET inventory = ?2 WHERE id = ?1",
                params![id, json_text(inventory)],
            )
            .map_err(q("storing an inventory"))?;
        Ok(n > 0)
    }

    pub fn set_server_state(&self, id: &str, state: ServerState) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "UPDATE servers SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )
            .map_err(q("changing a server's state"))?;
        Ok(n > 0)
    }

    /// The latest connection of a server.
    pub fn last_connection(&self, server_id: &str) -> Result<Option<ConnectionRecord>> {
        let conn = self.lock();
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

    // ---- tasks ----

    /// Stores a task the controller is about to send, in state `pending`.
    pub fn create_task(
        &self,
        task_id: &str,
        server_id: &str,
        method: &str,
        params: &Value,
    ) -> Result<TaskRecord> {
        let now = now_ms();
        self.lock()
            .execute(
                "INSERT INTO tasks (task_id, server_id, method, params, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                params![task_id, server_id, method, json_text(params), now],
            )
            .map_err(q("storing a task"))?;
        Ok(TaskRecord {
            task_id: task_id.to_owned(),
            server_id: server_id.to_owned(),
            method: method.to_owned(),
            params: params.clone(),
            state: TaskPhase::Pending,
            percent: None,
            eta: None,
            msg: None,
            code: None,
            result: None,
            seq: 0,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
        })
    }

    /// The agent accepted the task: `pending` becomes `running` (a status may have arrived
    /// first, and then it wins).
    pub fn task_accepted(&self, task_id: &str) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE tasks SET state = 'running', updated_ms = ?2
                 WHERE task_id = ?1 AND state = 'pending'",
                params![task_id, now_ms()],
            )
            .map_err(q("updating a task"))?;
        Ok(())
    }

    /// The agent refused the task: it ends in `error` with the agent's message and code.
    pub fn task_refused(&self, task_id: &str, msg: &str, code: &str) -> Result<Option<TaskEvent>> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(q("updating a task"))?;
        let now = now_ms();
        let n = tx
            .execute(
                "UPDATE tasks SET state = 'error', msg = ?2, code = ?3, updated_ms = ?4, finished_ms = ?4
                 WHERE task_id = ?1 AND state = 'pending'",
                params![task_id, msg, code, now],
            )
            .map_err(q("updating a task"))?;
        let ev = if n > 0 {
            insert_event(
                &tx,
                task_id,
                TaskPhase::Error,
                None,
                None,
                Some(msg),
                Some(code),
                None,
                now,
            )?
        } else {
            None
        };
        tx.commit().map_err(q("updating a task"))?;
        Ok(ev)
    }

    /// Applies a `task_status` from the agent of `server_id`, idempotently.
    pub fn apply_task_status(&self, server_id: &str, st: &TaskStatus) -> Result<StatusOutcome> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(q("storing a task status"))?;
        let now = now_ms();
        let current: Option<(String, i64, String)> = tx
            .query_row(
                "SELECT state, seq, server_id FROM tasks WHERE task_id = ?1",
                [&st.task_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(q("reading a task"))?;
        let seq = st.seq.min(i64::MAX as u64) as i64;
        let phase = TaskPhase::from(st.state);
        match current {
            None => {
                // A task this controller never started (e.g. its database was replaced):
                // keep what the agent reports, attached to the server.
                tx.execute(
                    "INSERT INTO tasks (task_id, server_id, method, params, state, created_ms, updated_ms)
                     VALUES (?1, ?2, '', '{}', 'pending', ?3, ?3)",
                    params![st.task_id, server_id, now],
                )
                .map_err(q("storing a task"))?;
            }
            Some((_, _, owner)) if owner != server_id => return Ok(StatusOutcome::Foreign),
            Some((state, _, _)) if TaskPhase::parse(&state).is_some_and(TaskPhase::is_terminal) => {
                return Ok(StatusOutcome::Duplicate);
            }
            Some((_, stored_seq, _)) if phase == TaskPhase::Running && seq <= stored_seq => {
                return Ok(StatusOutcome::Stale);
            }
            Some(_) => {}
        }
        let Some(ev) = insert_event(
            &tx,
            &st.task_id,
            phase,
            st.percent,
            st.eta,
            st.msg.as_deref(),
            st.code.as_deref(),
            st.result.as_ref(),
            now,
        )?
        else {
            return Ok(StatusOutcome::Duplicate);
        };
        let finished = phase.is_terminal().then_some(now);
        tx.execute(
            "UPDATE tasks SET state = ?2, percent = COALESCE(?3, percent), eta = ?4, msg = ?5,
                code = ?6, result = ?7, seq = MAX(seq, ?8), updated_ms = ?9, finished_ms = ?10
             WHERE task_id = ?1",
            params![
                st.task_id,
                phase.as_str(),
                st.percent,
                st.eta.map(|e| e.min(i64::MAX as u64) as i64),
                st.msg,
                st.code,
                st.result.as_ref().map(json_text),
                seq,
                now,
                finished
            ],
        )
        .map_err(q("storing a task status"))?;
        tx.execute(
            "UPDATE servers SET last_seen_ms = ?2 WHERE id = ?1",
            params![server_id, now],
        )
        .map_err(q("updating a server"))?;
        tx.commit().map_err(q("storing a task status"))?;
        Ok(StatusOutcome::Stored(ev))
    }

    pub fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                &format!("SELECT {TASK_COLS} FROM tasks WHERE task_id = ?1"),
                [task_id],
                task_row,
            )
            .optional()
            .map_err(q("reading a task"))?;
        row.map(finish_task).transpose()
    }

    pub fn server_tasks(&self, server_id: &str) -> Result<Vec<TaskRecord>> {
        let conn = self.lock();
        let mut st = conn
            .prepare(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE server_id = ?1 ORDER BY created_ms, task_id"
            ))
            .map_err(q("listing tasks"))?;
        let rows = st
            .query_map([server_id], task_row)
            .map_err(q("listing tasks"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("listing tasks"))?;
        rows.into_iter().map(finish_task).collect()
    }

    /// Events of a task with an id greater than `after`, oldest first.
    pub fn task_events(&self, task_id: &str, after: i64) -> Result<Vec<TaskEvent>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM task_events WHERE task_id = ?1 AND id > ?2 ORDER BY id"
            ))
            .map_err(q("reading task events"))?;
        let rows = st
            .query_map(params![task_id, after], event_row)
            .map_err(q("reading task events"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("reading task events"))?;
        rows.into_iter().map(finish_event).collect()
    }

    /// Ids of the server's most recently finished tasks (at most [`ACKNOWLEDGED_MAX`]) whose
    /// terminal status is stored: the agent stops resending them. Older ones are not listed
    /// (the handshake answer must stay far below the line limit); a resent old status is
    /// still acknowledged as a duplicate.
    pub fn acknowledged_tasks(&self, server_id: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT task_id FROM (
                    SELECT task_id FROM tasks WHERE server_id = ?1 AND state IN ('complete','error')
                    ORDER BY finished_ms DESC, task_id LIMIT ?2)
                 ORDER BY task_id",
            )
            .map_err(q("listing acknowledged tasks"))?;
        let rows = st
            .query_map(params![server_id, ACKNOWLEDGED_MAX], |r| r.get(0))
            .map_err(q("listing acknowledged tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(q("listing acknowledged tasks"))
    }

    // ---- logs ----

    /// Appends a batch of log records of a server; `dropped` adds to its dropped counter.
    pub fn append_logs(&self, server_id: &str, records: &[LogRecord], dropped: u64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(q("storing logs"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO logs (server_id, ts_ms, level, target, msg, fields)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(q("storing logs"))?;
            for r in records {
                let fields =
                    (!r.fields.is_empty()).then(|| Value::Object(r.fields.clone()).to_string());
                st.execute(params![
                    server_id,
                    r.ts_ms.min(i64::MAX as u64) as i64,
                    r.level,
                    r.target,
                    r.msg,
                    fields
                ])
                .map_err(q("storing logs"))?;
            }
        }
        tx.execute(
            "UPDATE servers SET logs_dropped = logs_dropped + ?2, last_seen_ms = ?3 WHERE id = ?1",
            params![server_id, dropped.min(i64::MAX as u64) as i64, now_ms()],
        )
        .map_err(q("storing logs"))?;
        tx.commit().map_err(q("storing logs"))
    }

    /// Log records of a server with an id greater than `after`, oldest first.
    pub fn logs(&self, server_id: &str, after: i64, limit: u32) -> Result<Vec<LogEntry>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT id, ts_ms, level, target, msg, fields FROM logs
                 WHERE server_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(q("reading logs"))?;
        let rows = st
            .query_map(params![server_id, after, limit], |r| {
                Ok((
                    LogEntry {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        level: r.get(2)?,
                        target: r.get(3)?,
                        msg: r.get(4)?,
                        fields: None,
                    },
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(q("reading logs"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("reading logs"))?;
        rows.into_iter()
            .map(|(mut e, f)| {
                e.fields = parse_json("log fields", f)?;
                Ok(e)
            })
            .collect()
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Migrate { version: 0, source })?;
    if found > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = i + 1;
        let err = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(step).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(key: &str) -> Registration {
        Registration {
            identity_key: key.into(),
            system_uuid: Some("u".into()),
            serial: None,
            macs: vec!["52:54:00:00:00:01".into()],
            hostname: Some("h".into()),
            agent_version: "0.1.0".into(),
            boot_id: "b1".into(),
        }
    }

    fn status(task: &str, state: TaskState, seq: u64) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            state,
            percent: (state == TaskState::Running).then_some(seq as f64),
            eta: None,
            msg: None,
            code: None,
            result: (state == TaskState::Complete).then(|| json!({"ok":true})),
            seq,
        }
    }

    #[test]
    fn migrations_apply_once_and_reopen() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("molar.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the database holds BMC passwords");
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.create_token("tok-1", "a", "00").unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.list_tokens().unwrap().len(), 1);
    }

    #[test]
    fn the_bmc_table_keeps_credentials_and_lists_them_without_the_password() {
        let s = Store::open_in_memory().unwrap();
        s.register(&reg("uuid:u"), &mut || "srv-1".into(), "127.0.0.1:1")
            .unwrap();
        assert_eq!(s.bmc("srv-1").unwrap(), None);
        let pw = molar_protocol::Secret::new("Zq8-secret-pw");
        let c = BmcCredentials {
            mac: Some("52:54:00:be:ef:01"),
            ip: Some("192.0.2.10"),
            username: "molar",
            password: &pw,
            user_id: Some(3),
            source: "in_band",
        };
        s.set_bmc("srv-1", &c).unwrap();
        let pw2 = molar_protocol::Secret::new("second-pw");
        s.set_bmc(
            "srv-1",
            &BmcCredentials {
                password: &pw2,
                ..c
            },
        )
        .unwrap();
        let rec = s.bmc("srv-1").unwrap().unwrap();
        assert_eq!(rec.mac.as_deref(), Some("52:54:00:be:ef:01"));
        assert_eq!(rec.username, "molar");
        assert_eq!(rec.user_id, Some(3));
        let listed = serde_json::to_string(&rec).unwrap();
        assert!(!listed.contains("pw"), "{listed}");
        assert_eq!(
            s.bmc_password("srv-1").unwrap().unwrap().expose(),
            "second-pw"
        );
        // A BMC for a server that does not exist is refused by the foreign key.
        assert!(s.set_bmc("srv-nope", &c).is_err());
    }

    #[test]
    fn register_finds_the_same_server_by_identity() {
        let s = Store::open_in_memory().unwrap();
        let (a, c1) = s
            .register(&reg("uuid:u"), &mut || "srv-1".into(), "127.0.0.1:1")
            .unwrap();
        assert_eq!(a.state, ServerState::Discovery);
        assert!(a.connected);
        let (b, c2) = s
            .register(&reg("uuid:u"), &mut || "srv-2".into(), "127.0.0.1:2")
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

    #[test]
    fn terminal_status_is_stored_once_and_stale_running_ignored() {
        let s = Store::open_in_memory().unwrap();
        s.register(&reg("k"), &mut || "srv-1".into(), "a").unwrap();
        s.create_task("t-1", "srv-1", "x", &json!({})).unwrap();
        assert!(matches!(
            s.apply_task_status("srv-1", &status("t-1", TaskState::Running, 2))
                .unwrap(),
            StatusOutcome::Stored(_)
        ));
        assert_eq!(
            s.apply_task_status("srv-1", &status("t-1", TaskState::Running, 1))
                .unwrap(),
            StatusOutcome::Stale
        );
        assert!(matches!(
            s.apply_task_status("srv-1", &status("t-1", TaskState::Complete, 3))
                .unwrap(),
            StatusOutcome::Stored(_)
        ));
        for st in [TaskState::Complete, TaskState::Error, TaskState::Running] {
            assert_eq!(
                s.apply_task_status("srv-1", &status("t-1", st, 9)).unwrap(),
                StatusOutcome::Duplicate
            );
        }
        let t = s.get_task("t-1").unwrap().unwrap();
        assert_eq!(t.state, TaskPhase::Complete);
        assert_eq!(t.result, Some(json!({"ok":true})));
        assert_eq!(t.percent, Some(2.0));
        let evs = s.task_events("t-1", 0).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(s.acknowledged_tasks("srv-1").unwrap(), vec!["t-1"]);
    }

    #[test]
    fn unknown_task_is_kept_and_refusal_ends_a_pending_task() {
        let s = Store::open_in_memory().unwrap();
        s.register(&reg("k"), &mut || "srv-1".into(), "a").unwrap();
        s.apply_task_status("srv-1", &status("t-x", TaskState::Error, 1))
            .unwrap();
        assert_eq!(s.get_task("t-x").unwrap().unwrap().state, TaskPhase::Error);
        s.create_task("t-2", "srv-1", "m", &json!({})).unwrap();
        s.register(&reg("k2"), &mut || "srv-2".into(), "b").unwrap();
        assert_eq!(
            s.apply_task_status("srv-2", &status("t-x", TaskState::Complete, 2))
                .unwrap(),
            StatusOutcome::Foreign
        );
        let ev = s.task_refused("t-2", "nope", "unknown_method").unwrap();
        assert_eq!(ev.unwrap().state, TaskPhase::Error);
        assert!(s.task_refused("t-2", "again", "x").unwrap().is_none());
    }

    #[test]
    fn logs_page_by_id() {
        let s = Store::open_in_memory().unwrap();
        s.register(&reg("k"), &mut || "srv-1".into(), "a").unwrap();
        let rec = |m: &str| LogRecord {
            ts_ms: 1,
            level: "info".into(),
            target: "t".into(),
            msg: m.into(),
            fields: Default::default(),
        };
        s.append_logs("srv-1", &[rec("a"), rec("b"), rec("c")], 4)
            .unwrap();
        let first = s.logs("srv-1", 0, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = s.logs("srv-1", first[1].id, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].msg, "c");
        assert_eq!(s.get_server("srv-1").unwrap().unwrap().logs_dropped, 4);
    }
}
