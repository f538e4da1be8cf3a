//! Tasks and their events: idempotent storage of the agent's task statuses.

use super::{Db, Result, Store, StoreError, json_text, now_ms, parse_json, q};
use molar_protocol::methods::{TaskState, TaskStatus};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most task ids listed in a handshake's `acknowledged_tasks`.
pub const ACKNOWLEDGED_MAX: i64 = 1000;

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

impl Db {
    /// Stores a task the controller is about to send, in state `pending`.
    pub fn create_task(
        &self,
        task_id: &str,
        server_id: &str,
        method: &str,
        params: &Value,
    ) -> Result<TaskRecord> {
        let now = now_ms();
        self.conn
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
        self.conn
            .execute(
                "UPDATE tasks SET state = 'running', updated_ms = ?2
                 WHERE task_id = ?1 AND state = 'pending'",
                params![task_id, now_ms()],
            )
            .map_err(q("updating a task"))?;
        Ok(())
    }

    /// The agent refused the task: it ends in `error` with the agent's message and code.
    pub fn task_refused(
        &mut self,
        task_id: &str,
        msg: &str,
        code: &str,
    ) -> Result<Option<TaskEvent>> {
        let tx = self.write_tx().map_err(q("updating a task"))?;
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
        if ev.is_some() {
            self.touched.task(task_id);
        }
        Ok(ev)
    }

    /// Applies a `task_status` from the agent of `server_id`, idempotently.
    pub fn apply_task_status(&mut self, server_id: &str, st: &TaskStatus) -> Result<StatusOutcome> {
        let tx = self.write_tx().map_err(q("storing a task status"))?;
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
        self.touched.task(&st.task_id);
        Ok(StatusOutcome::Stored(ev))
    }

    pub fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        let conn = &self.conn;
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
        let conn = &self.conn;
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
        let conn = &self.conn;
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
        let conn = &self.conn;
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
}

impl Store {
    /// Stores a task the controller is about to send, in state `pending`.
    pub async fn create_task(
        &self,
        task_id: &str,
        server_id: &str,
        method: &str,
        params: Value,
    ) -> Result<TaskRecord> {
        let (task_id, server_id, method) =
            (task_id.to_owned(), server_id.to_owned(), method.to_owned());
        self.write(move |db| db.create_task(&task_id, &server_id, &method, &params))
            .await
    }

    /// [`Db::task_accepted`].
    pub async fn task_accepted(&self, task_id: &str) -> Result<()> {
        let task_id = task_id.to_owned();
        self.write(move |db| db.task_accepted(&task_id)).await
    }

    /// [`Db::task_refused`].
    pub async fn task_refused(
        &self,
        task_id: &str,
        msg: &str,
        code: &str,
    ) -> Result<Option<TaskEvent>> {
        let (task_id, msg, code) = (task_id.to_owned(), msg.to_owned(), code.to_owned());
        self.write(move |db| db.task_refused(&task_id, &msg, &code))
            .await
    }

    /// [`Db::apply_task_status`].
    pub async fn apply_task_status(
        &self,
        server_id: &str,
        st: TaskStatus,
    ) -> Result<StatusOutcome> {
        let server_id = server_id.to_owned();
        self.write(move |db| db.apply_task_status(&server_id, &st))
            .await
    }

    pub async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        let task_id = task_id.to_owned();
        self.read(move |db| db.get_task(&task_id)).await
    }

    pub async fn server_tasks(&self, server_id: &str) -> Result<Vec<TaskRecord>> {
        let id = server_id.to_owned();
        self.read(move |db| db.server_tasks(&id)).await
    }

    /// Events of a task with an id greater than `after`, oldest first.
    pub async fn task_events(&self, task_id: &str, after: i64) -> Result<Vec<TaskEvent>> {
        let task_id = task_id.to_owned();
        self.read(move |db| db.task_events(&task_id, after)).await
    }

    /// [`Db::acknowledged_tasks`].
    pub async fn acknowledged_tasks(&self, server_id: &str) -> Result<Vec<String>> {
        let id = server_id.to_owned();
        self.read(move |db| db.acknowledged_tasks(&id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use molar_protocol::methods::TaskState;
    use serde_json::json;

    #[test]
    fn terminal_status_is_stored_once_and_stale_running_ignored() {
        let mut s = Db::open_in_memory().unwrap();
        s.register(&reg("k"), &grant(), &mut || "srv-1".into(), "a")
            .unwrap();
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
        let mut s = Db::open_in_memory().unwrap();
        s.register(&reg("k"), &grant(), &mut || "srv-1".into(), "a")
            .unwrap();
        s.apply_task_status("srv-1", &status("t-x", TaskState::Error, 1))
            .unwrap();
        assert_eq!(s.get_task("t-x").unwrap().unwrap().state, TaskPhase::Error);
        s.create_task("t-2", "srv-1", "m", &json!({})).unwrap();
        s.register(&reg("k2"), &grant(), &mut || "srv-2".into(), "b")
            .unwrap();
        assert_eq!(
            s.apply_task_status("srv-2", &status("t-x", TaskState::Complete, 2))
                .unwrap(),
            StatusOutcome::Foreign
        );
        let ev = s.task_refused("t-2", "nope", "unknown_method").unwrap();
        assert_eq!(ev.unwrap().state, TaskPhase::Error);
        assert!(s.task_refused("t-2", "again", "x").unwrap().is_none());
    }
}
