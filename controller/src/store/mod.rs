//! The controller's embedded SQLite store: servers, agent connections, agent tokens, the BMC
//! table, tasks, task events and logs, one file per table group.
//!
//! One `rusqlite` connection behind a mutex: every query is short (a row or a small batch),
//! so holding the lock from async code is cheaper than a thread hop. The schema is versioned
//! with `PRAGMA user_version` and an ordered list of migration steps ([`MIGRATIONS`]); a step
//! is never edited once released, only appended to.
//!
//! Idempotence of task statuses lives in [`tasks`], in SQL: a terminal state is stored once
//! per `(task_id, state)` (a partial unique index enforces it even if two connections race),
//! and a `running` update is applied only when its `seq` is newer than the stored one.

mod bmc;
mod logs;
mod servers;
mod tasks;
mod tokens;

pub use bmc::{BmcCredentials, BmcRecord};
pub use logs::LogEntry;
pub use servers::{ConnectionRecord, Registration, ServerRecord, ServerState};
pub use tasks::{ACKNOWLEDGED_MAX, StatusOutcome, TaskEvent, TaskPhase, TaskRecord};
pub use tokens::TokenRecord;

use rusqlite::Connection;
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
pub(crate) mod test_support {
    use super::*;
    use molar_protocol::methods::{TaskState, TaskStatus};
    use serde_json::json;

    pub fn reg(key: &str) -> Registration {
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

    pub fn status(task: &str, state: TaskState, seq: u64) -> TaskStatus {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
