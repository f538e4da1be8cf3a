//! The controller's embedded SQLite store: servers, agent connections, agent tokens, the BMC
//! table, tasks, task events, logs and security events, one file per table group.
//!
//! No SQLite call runs on an async worker: [`Store`] is a handle to store threads that own
//! the connections ([`Db`]), and its async methods send them jobs. The table modules write
//! each query once, as a synchronous method on [`Db`], and its async face on [`Store`]. The
//! schema is versioned with `PRAGMA user_version` and an ordered list of migration steps
//! ([`MIGRATIONS`]); a step is never edited once released, only appended to.
//!
//! Idempotence of task statuses lives in [`tasks`], in SQL: a terminal state is stored once
//! per `(task_id, state)` (a partial unique index enforces it even if two connections race),
//! and a `running` update is applied only when its `seq` is newer than the stored one.

mod bmc;
mod bmc_rotation;
mod console;
mod enrolled;
mod events;
mod lifecycle;
mod logs;
mod requests;
mod retention;
mod sealing;
mod servers;
mod stats;
mod tasks;
mod tokens;
mod workflows;

pub use bmc::{BmcCredentials, BmcRecord};
pub use bmc_rotation::BmcSecrets;
pub use console::{
    CONSOLE_LOG_CAP, CONSOLE_TOKEN_TTL_DEFAULT, CONSOLE_TOKEN_TTL_MAX, CONSOLE_TOKENS_MAX,
    ConsoleToken, ConsoleTokenKind,
};
pub use enrolled::{ENROLLED_KEY_PREFIX, EnrolRefusal, Enrolment, guid_candidates};
pub use events::{EVENTS_KEPT, EventRecord, NewEvent};
pub use lifecycle::{Refs, TRANSITIONS_LISTED_MAX, Transition, TransitionError};
pub use logs::LogEntry;
pub use requests::{NewRequest, REQUESTS_LISTED_MAX, RequestPath, RequestRecord, RequestState};
pub use retention::{Pruned, Retention};
pub use sealing::{BmcKey, KEY_FILE};
pub use servers::{
    Binding, ConnectionRecord, Registration, Removed, ServerRecord, ServerState, SessionGrant,
};
pub use tasks::{ACKNOWLEDGED_MAX, StatusOutcome, TaskEvent, TaskPhase, TaskRecord};
pub use tokens::{ActiveToken, TokenRecord, TokenScope};
pub use workflows::{
    StepRecord, StepState, WORKFLOWS_LISTED_MAX, WorkflowError, WorkflowKind, WorkflowRecord,
};

use rusqlite::Connection;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    // Retention: logs age by when the controller received them (an agent's clock may be
    // anywhere), rows already stored count from this migration.
    r#"
ALTER TABLE logs ADD COLUMN received_ms INTEGER;
UPDATE logs SET received_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
CREATE INDEX logs_received ON logs(received_ms);
CREATE INDEX task_events_at ON task_events(at_ms);
"#,
    // Credentials bound to servers (issue #9): token scopes, set labels, the session
    // credential of each server's current boot, the expected ramdisk boot, and the events
    // table every refusal is recorded in. Existing tokens keep their meaning (`any`).
    r#"
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'any'
    CHECK (scope IN ('any','server','set','enrol'));
ALTER TABLE tokens ADD COLUMN scope_value TEXT;
ALTER TABLE tokens ADD COLUMN rotated_from TEXT;
ALTER TABLE servers ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
ALTER TABLE servers ADD COLUMN enrolled_by TEXT;
ALTER TABLE servers ADD COLUMN session_sha256 TEXT;
ALTER TABLE servers ADD COLUMN session_boot_id TEXT;
ALTER TABLE servers ADD COLUMN session_token_id TEXT;
ALTER TABLE servers ADD COLUMN expect_ramdisk_until_ms INTEGER;
CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    server_id TEXT,
    token_id  TEXT,
    peer_addr TEXT,
    msg       TEXT NOT NULL
);
CREATE INDEX events_server ON events(server_id, id);
CREATE INDEX events_at ON events(at_ms);
"#,
    // Out-of-band control (issue #11): servers known by name and by their BMC before any
    // agent connected, where and how the controller reaches a BMC, queued control requests
    // with their state, console tokens and the bounded console log.
    r#"
ALTER TABLE servers ADD COLUMN name TEXT;
CREATE UNIQUE INDEX servers_name ON servers(name) WHERE name IS NOT NULL;
ALTER TABLE bmcs ADD COLUMN host TEXT;
ALTER TABLE bmcs ADD COLUMN port INTEGER;
ALTER TABLE bmcs ADD COLUMN protocol TEXT NOT NULL DEFAULT 'ipmi';
ALTER TABLE bmcs ADD COLUMN allow_ipmi15 INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bmcs ADD COLUMN cipher_suite INTEGER;
ALTER TABLE bmcs ADD COLUMN system_guid TEXT;
ALTER TABLE bmcs ADD COLUMN verified_ms INTEGER;
ALTER TABLE bmcs ADD COLUMN verify_error TEXT;
CREATE TABLE requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id   TEXT NOT NULL REFERENCES servers(id),
    action      TEXT NOT NULL,
    parameter   TEXT,
    persistent  INTEGER NOT NULL DEFAULT 0,
    efi         INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL CHECK (state IN ('pending','active','succeeded','failed')),
    message     TEXT,
    path        TEXT CHECK (path IS NULL OR path IN ('in_band','out_of_band')),
    source      TEXT NOT NULL DEFAULT 'api',
    created_ms  INTEGER NOT NULL,
    started_ms  INTEGER,
    finished_ms INTEGER
);
CREATE INDEX requests_server ON requests(server_id, id);
CREATE INDEX requests_open ON requests(state) WHERE state IN ('pending','active');
CREATE TABLE console_tokens (
    sha256     TEXT PRIMARY KEY,
    server_id  TEXT NOT NULL REFERENCES servers(id),
    kind       TEXT NOT NULL CHECK (kind IN ('console','obmd')),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE INDEX console_tokens_server ON console_tokens(server_id);
CREATE TABLE console_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id TEXT NOT NULL REFERENCES servers(id),
    at_ms     INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE INDEX console_log_server ON console_log(server_id, id);
"#,
    // Redfish BMCs (issue #12): how the controller trusts a BMC's HTTPS certificate, and the
    // hardware details read through the BMC (JSON, with its source). Existing rows stay IPMI.
    r#"
ALTER TABLE bmcs ADD COLUMN tls_ca_pem TEXT;
ALTER TABLE bmcs ADD COLUMN tls_fingerprint TEXT;
ALTER TABLE bmcs ADD COLUMN tls_insecure INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bmcs ADD COLUMN oob_inventory TEXT;
ALTER TABLE bmcs ADD COLUMN oob_inventory_ms INTEGER;
"#,
    // The lifecycle (issue #15): every state change of a server, in order. Servers stored
    // before it get one row saying the state they were found in.
    r#"
CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id   TEXT NOT NULL REFERENCES servers(id),
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    cause       TEXT,
    reason      TEXT NOT NULL,
    request_id  INTEGER,
    task_id     TEXT,
    at_ms       INTEGER NOT NULL
);
CREATE INDEX transitions_server ON transitions(server_id, id);
INSERT INTO transitions (server_id, to_state, reason, at_ms)
    SELECT id, state, 'found in this state when the history started',
        CAST(strftime('%s','now') AS INTEGER) * 1000
    FROM servers ORDER BY first_seen_ms;
"#,
    // Durable lifecycle workflows (issue #15): discovery, claim and release, one row per step tied to
    // its task or request; one running workflow per server.
    r#"
CREATE TABLE workflows (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id   TEXT NOT NULL REFERENCES servers(id),
    kind        TEXT NOT NULL CHECK (kind IN ('discovery','claim','release')),
    params      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running','done','failed')),
    message     TEXT,
    boot_id     TEXT,
    retry_of    INTEGER REFERENCES workflows(id),
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE UNIQUE INDEX workflows_one_running ON workflows(server_id) WHERE state = 'running';
CREATE TABLE workflow_steps (
    workflow_id INTEGER NOT NULL REFERENCES workflows(id),
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending','running','done','failed')),
    task_id     TEXT,
    request_id  INTEGER,
    message     TEXT,
    started_ms  INTEGER,
    finished_ms INTEGER,
    PRIMARY KEY (workflow_id, seq)
);
"#,
    SEAL_STEP,
    // BMC passwords rotated by the controller (issue #15): the new password is kept sealed
    // while it is being set (`pending_sealed`, so a failure half-way never loses it), and
    // the periodic session check records when it last ran (`checked_ms`).
    r#"
ALTER TABLE bmcs ADD COLUMN pending_sealed TEXT;
ALTER TABLE bmcs ADD COLUMN checked_ms INTEGER;
"#,
];

/// BMC passwords encrypted at rest (issue #15): the column is renamed so nothing reads a
/// clear-text password by mistake, and [`migrate`] seals every existing password in the same
/// transaction ([`sealing::seal_clear`]).
pub(crate) const SEAL_STEP: &str = r#"
ALTER TABLE bmcs RENAME COLUMN password TO password_sealed;
"#;

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
    #[error("starting the store thread: {source}")]
    Thread { source: std::io::Error },
    #[error("the store thread has stopped")]
    Stopped,
    #[error("BMC password key {path}: {msg}")]
    Key { path: PathBuf, msg: String },
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

/// How long a statement waits for a lock another connection holds (another process on the
/// same file, a backup, the reader during a checkpoint) before failing with "database is
/// locked". Writes wait rather than fail at once; the wait happens on the store threads, so
/// it never stalls the async workers serving agents.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Jobs waiting for a store thread; more make callers wait (asynchronously) to queue theirs.
const QUEUE: usize = 4096;

/// One connection to the database, owned by a store thread. The table modules implement
/// their queries on it; async code reaches it only through [`Store`].
pub struct Db {
    conn: Connection,
    /// Seals and opens BMC passwords ([`sealing`]).
    key: std::sync::Arc<BmcKey>,
    /// What [`retention`] must look at next (written by the writer's own methods).
    touched: retention::Touched,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The store as async code sees it: a cheap handle to two threads, one owning the
/// connection that writes and one owning a read-only connection, each running the jobs sent
/// to it in order. No SQLite call ever runs on an async worker, so a slow commit or a lock
/// held by another process delays only the store's own callers, never the agent
/// connections' protocol work (pings, keepalives, other agents' commands). In WAL mode the
/// reader is not blocked by the writer, so API reads go on while a write waits for a lock.
#[derive(Clone)]
pub struct Store {
    writer: mpsc::Sender<Job>,
    /// `None` for an in-memory store (a second connection would be another database).
    reader: Option<mpsc::Sender<Job>>,
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

impl Db {
    /// Opens (creating if needed) `dir/molar.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Db> {
        let path = Self::create_file(dir)?;
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        // A new key only for a database that holds no sealed password: a lost key file must
        // not be silently replaced.
        let sealed = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('bmcs') WHERE name = 'password_sealed'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .and_then(|n| match n {
                0 => Ok(0),
                _ => conn.query_row("SELECT count(*) FROM bmcs", [], |r| r.get::<_, i64>(0)),
            })
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let key = std::sync::Arc::new(BmcKey::load(dir, sealed == 0)?);
        let db = Self::init(conn, &path, false, key)?;
        db.check_bmc_key()?;
        Ok(db)
    }

    /// The key this database's BMC passwords are sealed with (for its reader).
    pub fn bmc_key(&self) -> std::sync::Arc<BmcKey> {
        self.key.clone()
    }

    /// `dir/molar.db`, created owner-only if missing.
    fn create_file(dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("molar.db");
        // The database holds BMC passwords: owner-only from its first byte. SQLite gives its
        // -wal and -shm files the database file's mode.
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
        Ok(path)
    }

    /// A second connection, for reads only, to a database [`Db::open`] prepared.
    fn open_reader(path: &Path, key: std::sync::Arc<BmcKey>) -> Result<Db> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::init(conn, path, true, key)
    }

    /// A throwaway in-memory database (tests).
    pub fn open_in_memory() -> Result<Db> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, &path, false, std::sync::Arc::new(BmcKey::ephemeral()))
    }

    fn init(
        mut conn: Connection,
        path: &Path,
        reader: bool,
        key: std::sync::Arc<BmcKey>,
    ) -> Result<Db> {
        let open = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open)?;
        if reader {
            conn.pragma_update(None, "query_only", "ON").map_err(open)?;
        } else {
            // WAL: readers never block the writer; NORMAL sync is durable across process
            // crashes, which is what matters for a daemon (a power cut may lose the last
            // commits).
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(open)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(open)?;
            migrate(&mut conn, &key)?;
        }
        Ok(Db {
            conn,
            key,
            touched: retention::Touched::default(),
        })
    }

    /// A write transaction that takes the write lock at once: a deferred one that read first
    /// could not wait for the lock (SQLite answers "busy" at once when a read transaction
    /// must be upgraded after another connection's commit).
    fn write_tx(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// The applied schema version.
    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(q("reading the schema version"))
    }
}

/// Runs the jobs of `rx` on `db` until every sender is gone.
fn serve(mut db: Db, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.blocking_recv() {
        // A panicking job (a bug) drops its answer channel, so its caller gets
        // `StoreError::Stopped`; the thread and SQLite stay usable (transactions roll back on
        // drop).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut db)));
    }
}

fn spawn(name: &str, db: Db) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || serve(db, rx))
        .map_err(|source| StoreError::Thread { source })?;
    Ok(tx)
}

async fn submit<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    f: impl FnOnce(&mut Db) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |db| {
        let _ = tx.send(f(db));
    });
    jobs.send(job).await.map_err(|_| StoreError::Stopped)?;
    rx.await.map_err(|_| StoreError::Stopped)?
}

impl Store {
    /// Opens (creating if needed) `dir/molar.db`, brings its schema up to date and starts the
    /// store threads. They end when the last handle is dropped.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = Db::open(dir)?;
        let reader = Db::open_reader(&dir.join("molar.db"), db.bmc_key())?;
        Ok(Store {
            writer: spawn("molar-store", db)?,
            reader: Some(spawn("molar-store-read", reader)?),
        })
    }

    /// A throwaway in-memory store (tests): one thread for reads and writes.
    pub fn open_in_memory() -> Result<Store> {
        Ok(Store {
            writer: spawn("molar-store", Db::open_in_memory()?)?,
            reader: None,
        })
    }

    /// Runs `f` on the writing connection's thread and returns what it returns.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let out = submit(&self.writer, f).await;
        crate::metrics::get().store_query(true, started.elapsed());
        out
    }

    /// Runs `f` on the read-only connection's thread (`f` must not write: that connection
    /// refuses to).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let out = submit(self.reader.as_ref().unwrap_or(&self.writer), move |db| {
            f(db)
        })
        .await;
        crate::metrics::get().store_query(false, started.elapsed());
        out
    }

    /// The applied schema version.
    pub async fn schema_version(&self) -> Result<i64> {
        self.read(|db| db.schema_version()).await
    }
}

fn migrate(conn: &mut Connection, key: &BmcKey) -> Result<()> {
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
        if *step == SEAL_STEP {
            sealing::seal_clear(&tx, key).map_err(err)?;
        }
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

    pub fn grant() -> SessionGrant {
        SessionGrant::default()
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
        let s = Db::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("molar.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the database holds BMC passwords");
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.create_token("tok-1", "a", "00", &TokenScope::Any, None)
            .unwrap();
        drop(s);
        let s = Db::open(dir.path()).unwrap();
        assert_eq!(s.list_tokens().unwrap().len(), 1);
    }

    #[test]
    fn logs_stored_before_retention_age_from_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("molar.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO servers (id, identity_key, first_seen_ms, last_seen_ms)
                    VALUES ('srv-1', 'k', 0, 0);
                 INSERT INTO logs (server_id, ts_ms, level, target, msg)
                    VALUES ('srv-1', 1, 'info', 't', 'old');",
            )
            .unwrap();
        }
        let before = now_ms();
        let db = Db::open(dir.path()).unwrap();
        let received: i64 = db
            .conn
            .query_row("SELECT received_ms FROM logs", [], |r| r.get(0))
            .unwrap();
        // Whole seconds: the migration's clock is SQLite's.
        assert!(
            received >= before - 1000 && received <= now_ms(),
            "{received}"
        );
    }
}
