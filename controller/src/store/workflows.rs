//! Durable lifecycle workflows (claim, release): one row per workflow and one per step, each
//! step tied to the task or request that carries it out, so a controller that restarts
//! finds where every workflow stood. A workflow starts and ends with its state transitions
//! in the same transaction (`store::lifecycle`), and a server has at most one running
//! workflow (a partial unique index), so two claims of one server cannot both start.

use super::lifecycle::{Refs, TransitionError, apply};
use super::{Db, Result, Store, StoreError, now_ms, q};
use crate::lifecycle::Cause;
use crate::store::ServerState;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a workflow does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    /// (Initial →) Discovery → (inventory, BMC credentials, QC, firmware) → Available.
    Discovery,
    /// Available → (deploy) → Reserved.
    Claim,
    /// Reserved → Cleanup → (ramdisk, erase) → Available.
    Release,
}

impl WorkflowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowKind::Discovery => "discovery",
            WorkflowKind::Claim => "claim",
            WorkflowKind::Release => "release",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [
            WorkflowKind::Discovery,
            WorkflowKind::Claim,
            WorkflowKind::Release,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where a workflow or a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [
            StepState::Pending,
            StepState::Running,
            StepState::Done,
            StepState::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub seq: u32,
    pub name: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

/// A stored workflow with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub id: i64,
    pub server_id: String,
    pub kind: WorkflowKind,
    /// What it was started with (the claim's image and device, the release's erase policy).
    pub params: Value,
    /// `running`, `done` or `failed` (never `pending`).
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The server's boot id when the workflow started (a release waits for another one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The failed workflow this one retries (`molar retry`): it ends error → available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub steps: Vec<StepRecord>,
}

/// Why a workflow did not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("server {server} already runs workflow {id} ({kind}): wait for it to end")]
    Busy {
        server: String,
        id: i64,
        kind: &'static str,
    },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Not startable for a reason of its own (e.g. nothing to retry).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const WHAT: &str = "storing a workflow";

/// Workflows listed at most at once.
pub const WORKFLOWS_LISTED_MAX: u32 = 100;

impl Db {
    /// Starts a workflow of `kind` on `server` with `steps` (all pending), when the server is
    /// in `from` and runs no other workflow; applies `start` (a cause) in the same
    /// transaction when given, else checks that `end` (the cause it will end with) could
    /// apply (so a refusal names the table's reason).
    #[allow(clippy::too_many_arguments)]
    pub fn create_workflow(
        &mut self,
        server: &str,
        kind: WorkflowKind,
        params: &Value,
        steps: &[&str],
        from: ServerState,
        start: Option<(Cause, &str)>,
        end: Cause,
    ) -> Result<WorkflowRecord, WorkflowError> {
        let tx = self.write_tx().map_err(q(WHAT))?;
        let (state, boot_id): (Option<String>, Option<String>) = tx
            .query_row(
                "SELECT state, boot_id FROM servers WHERE id = ?1",
                [server],
                |r| Ok((Some(r.get(0)?), r.get(1)?)),
            )
            .optional()
            .map_err(q(WHAT))?
            .unwrap_or((None, None));
        let Some(state) = state else {
            return Err(TransitionError::NotFound(server.to_owned()).into());
        };
        if let Some((id, k)) = tx
            .query_row(
                "SELECT id, kind FROM workflows WHERE server_id = ?1 AND state = 'running'",
                [server],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(q(WHAT))?
        {
            return Err(WorkflowError::Busy {
                server: server.to_owned(),
                id,
                kind: WorkflowKind::parse(&k).map_or("?", WorkflowKind::as_str),
            });
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO workflows (server_id, kind, params, state, boot_id, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5)",
            params![server, kind.as_str(), params.to_string(), boot_id, now],
        )
        .map_err(q(WHAT))?;
        let id = tx.last_insert_rowid();
        for (seq, name) in steps.iter().enumerate() {
            tx.execute(
                "INSERT INTO workflow_steps (workflow_id, seq, name, state) VALUES (?1, ?2, ?3, 'pending')",
                params![id, seq as i64, name],
            )
            .map_err(q(WHAT))?;
        }
        let actual = ServerState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            what: "server state",
            msg: state.clone(),
        })?;
        // The claim's deploy runs while Available and its transition comes at the end; the
        // release's comes first. Either way the server must be in `from` now.
        let cause = start.map_or(end, |(c, _)| c);
        if actual != from {
            return Err(match crate::lifecycle::next(actual, cause) {
                Err(illegal) => TransitionError::Illegal(illegal),
                Ok(_) => TransitionError::Conflict {
                    server: server.to_owned(),
                    expected: from,
                    actual,
                },
            }
            .into());
        }
        if let Some((cause, reason)) = start {
            apply(&tx, server, from, cause, reason, &Refs::default())?;
        }
        tx.commit().map_err(q(WHAT))?;
        Ok(self.workflow(id)?.expect("just stored"))
    }

    /// Starts the retry of `server`'s latest workflow, which must have failed and left the
    /// server in error: the same kind and params, its steps done before the failed one kept
    /// done (they are not run again), the failed one and those after it pending.
    pub fn retry_workflow(&mut self, server: &str) -> Result<WorkflowRecord, WorkflowError> {
        let last = self
            .server_workflows(server, 1)?
            .pop()
            .ok_or_else(|| TransitionError::NotFound(format!("{server} (it ran no workflow)")))?;
        let refuse = |msg: String| WorkflowError::Refused(msg);
        if last.state != StepState::Failed {
            return Err(refuse(format!(
                "the latest workflow of server {server} ({} {}) is {}, not failed: nothing to retry",
                last.kind.as_str(),
                last.id,
                last.state.as_str()
            )));
        }
        if last.kind == WorkflowKind::Claim {
            return Err(refuse(format!(
                "a failed claim is not retried (the disk may hold half an image): take server \
                 {server} through maintenance and claim it again"
            )));
        }
        let names: Vec<&str> = last.steps.iter().map(|s| s.name.as_str()).collect();
        let mut wf = self.create_workflow(
            server,
            last.kind,
            &last.params,
            &names,
            ServerState::Error,
            None,
            Cause::Resolved,
        )?;
        let now = now_ms();
        let tx = self.write_tx().map_err(q(WHAT))?;
        tx.execute(
            "UPDATE workflows SET retry_of = ?2 WHERE id = ?1",
            params![wf.id, last.id],
        )
        .map_err(q(WHAT))?;
        for s in last.steps.iter().take_while(|s| s.state == StepState::Done) {
            tx.execute(
                "UPDATE workflow_steps SET state = 'done', task_id = ?3, request_id = ?4,
                    message = ?5, started_ms = ?6, finished_ms = ?6
                 WHERE workflow_id = ?1 AND seq = ?2",
                params![
                    wf.id,
                    s.seq as i64,
                    s.task_id,
                    s.request_id,
                    format!("done in workflow {}", last.id),
                    now
                ],
            )
            .map_err(q(WHAT))?;
        }
        tx.commit().map_err(q(WHAT))?;
        wf = self.workflow(wf.id)?.expect("just stored");
        Ok(wf)
    }

    /// Marks step `seq` running, tied to its task or request (stored before the task is
    /// sent, so a restart knows to look for it).
    pub fn step_running(
        &self,
        workflow: i64,
        seq: u32,
        task_id: Option<&str>,
        request_id: Option<i64>,
    ) -> Result<()> {
        let now = now_ms();
        self.conn
            .execute(
                "UPDATE workflow_steps SET state = 'running', task_id = COALESCE(?3, task_id),
                    request_id = COALESCE(?4, request_id), started_ms = COALESCE(started_ms, ?5)
                 WHERE workflow_id = ?1 AND seq = ?2",
                params![workflow, seq as i64, task_id, request_id, now],
            )
            .map_err(q(WHAT))?;
        self.conn
            .execute(
                "UPDATE workflows SET updated_ms = ?2 WHERE id = ?1",
                params![workflow, now],
            )
            .map_err(q(WHAT))?;
        Ok(())
    }

    /// Marks step `seq` done (or failed) with a message.
    pub fn step_finished(&self, workflow: i64, seq: u32, ok: bool, message: &str) -> Result<()> {
        let now = now_ms();
        self.conn
            .execute(
                "UPDATE workflow_steps SET state = ?3, message = ?4, finished_ms = ?5
                 WHERE workflow_id = ?1 AND seq = ?2",
                params![
                    workflow,
                    seq as i64,
                    if ok { "done" } else { "failed" },
                    message,
                    now
                ],
            )
            .map_err(q(WHAT))?;
        Ok(())
    }

    /// Ends a workflow, applying `cause` to its server from the state it is in (the claim's
    /// `claimed`, the release's `cleaned`, or `failed`) in the same transaction.
    pub fn finish_workflow(
        &mut self,
        workflow: i64,
        ok: bool,
        message: &str,
        cause: Cause,
        refs: &Refs,
    ) -> Result<(), WorkflowError> {
        let tx = self.write_tx().map_err(q(WHAT))?;
        let server: String = tx
            .query_row(
                "SELECT server_id FROM workflows WHERE id = ?1 AND state = 'running'",
                [workflow],
                |r| r.get(0),
            )
            .map_err(q(WHAT))?;
        tx.execute(
            "UPDATE workflows SET state = ?2, message = ?3, updated_ms = ?4 WHERE id = ?1",
            params![
                workflow,
                if ok { "done" } else { "failed" },
                message,
                now_ms()
            ],
        )
        .map_err(q(WHAT))?;
        let current: String = tx
            .query_row("SELECT state FROM servers WHERE id = ?1", [&server], |r| {
                r.get(0)
            })
            .map_err(q(WHAT))?;
        // A retry that fails again leaves the server in error: the workflow says why.
        if !(cause == Cause::Failed && current == ServerState::Error.as_str()) {
            match super::lifecycle::apply_current(&tx, &server, cause, message, refs) {
                Ok(_) => {}
                // The server moved on under the workflow: it ends failed (never running
                // forever, which would block the server's next workflow), saying why.
                Err(e @ (TransitionError::Illegal(_) | TransitionError::Conflict { .. })) => {
                    tx.execute(
                        "UPDATE workflows SET state = 'failed', message = ?2 WHERE id = ?1",
                        params![workflow, format!("{message}; not applied: {e}")],
                    )
                    .map_err(q(WHAT))?;
                    tx.commit().map_err(q(WHAT))?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().map_err(q(WHAT))?;
        Ok(())
    }

    pub fn workflow(&self, id: i64) -> Result<Option<WorkflowRecord>> {
        let wf = self
            .conn
            .query_row(
                "SELECT id, server_id, kind, params, state, message, boot_id, retry_of, created_ms,
                    updated_ms FROM workflows WHERE id = ?1",
                [id],
                workflow_row,
            )
            .optional()
            .map_err(q("reading a workflow"))?;
        wf.map(|w| self.with_steps(w)).transpose()
    }

    /// Workflows still running (what a restart resumes), oldest first.
    pub fn running_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        self.workflows_where("state = 'running' ORDER BY id", params![])
    }

    /// A server's workflows, newest first, at most `limit`.
    pub fn server_workflows(&self, server: &str, limit: u32) -> Result<Vec<WorkflowRecord>> {
        self.workflows_where(
            "server_id = ?1 ORDER BY id DESC LIMIT ?2",
            params![server, limit.min(WORKFLOWS_LISTED_MAX)],
        )
    }

    fn workflows_where(
        &self,
        clause: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<WorkflowRecord>> {
        let what = "listing workflows";
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, server_id, kind, params, state, message, boot_id, retry_of,
                    created_ms, updated_ms FROM workflows WHERE {clause}"
            ))
            .map_err(q(what))?;
        let rows = stmt
            .query_map(p, workflow_row)
            .map_err(q(what))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q(what))?;
        rows.into_iter().map(|w| self.with_steps(w)).collect()
    }

    fn with_steps(&self, w: RawWorkflow) -> Result<WorkflowRecord> {
        let corrupt = |what: &'static str, msg: String| StoreError::Corrupt { what, msg };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, name, state, task_id, request_id, message, started_ms, finished_ms
                 FROM workflow_steps WHERE workflow_id = ?1 ORDER BY seq",
            )
            .map_err(q("reading workflow steps"))?;
        let steps = stmt
            .query_map([w.id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .map_err(q("reading workflow steps"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(q("reading workflow steps"))?;
        let steps = steps
            .into_iter()
            .map(|(seq, name, state, task_id, request_id, message, s, f)| {
                Ok(StepRecord {
                    seq: seq as u32,
                    name,
                    state: StepState::parse(&state)
                        .ok_or_else(|| corrupt("workflow step state", state))?,
                    task_id,
                    request_id,
                    message,
                    started_ms: s,
                    finished_ms: f,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WorkflowRecord {
            id: w.id,
            server_id: w.server_id,
            kind: WorkflowKind::parse(&w.kind).ok_or_else(|| corrupt("workflow kind", w.kind))?,
            params: serde_json::from_str(&w.params)
                .map_err(|e| corrupt("workflow params", e.to_string()))?,
            state: StepState::parse(&w.state).ok_or_else(|| corrupt("workflow state", w.state))?,
            message: w.message,
            boot_id: w.boot_id,
            retry_of: w.retry_of,
            created_ms: w.created_ms,
            updated_ms: w.updated_ms,
            steps,
        })
    }
}

struct RawWorkflow {
    id: i64,
    server_id: String,
    kind: String,
    params: String,
    state: String,
    message: Option<String>,
    boot_id: Option<String>,
    retry_of: Option<i64>,
    created_ms: i64,
    updated_ms: i64,
}

fn workflow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawWorkflow> {
    Ok(RawWorkflow {
        id: r.get(0)?,
        server_id: r.get(1)?,
        kind: r.get(2)?,
        params: r.get(3)?,
        state: r.get(4)?,
        message: r.get(5)?,
        boot_id: r.get(6)?,
        retry_of: r.get(7)?,
        created_ms: r.get(8)?,
        updated_ms: r.get(9)?,
    })
}

impl Store {
    /// See [`Db::create_workflow`].
    #[allow(clippy::too_many_arguments)]
    pub async fn create_workflow(
        &self,
        server: &str,
        kind: WorkflowKind,
        params: Value,
        steps: Vec<&'static str>,
        from: ServerState,
        start: Option<(Cause, &'static str)>,
        end: Cause,
    ) -> Result<WorkflowRecord, WorkflowError> {
        let server = server.to_owned();
        self.write(move |db| {
            Ok(db.create_workflow(&server, kind, &params, &steps, from, start, end))
        })
        .await?
    }

    pub async fn step_running(
        &self,
        workflow: i64,
        seq: u32,
        task_id: Option<String>,
        request_id: Option<i64>,
    ) -> Result<()> {
        self.write(move |db| db.step_running(workflow, seq, task_id.as_deref(), request_id))
            .await
    }

    pub async fn step_finished(
        &self,
        workflow: i64,
        seq: u32,
        ok: bool,
        message: String,
    ) -> Result<()> {
        self.write(move |db| db.step_finished(workflow, seq, ok, &message))
            .await
    }

    pub async fn finish_workflow(
        &self,
        workflow: i64,
        ok: bool,
        message: String,
        cause: Cause,
        refs: Refs,
    ) -> Result<(), WorkflowError> {
        self.write(move |db| Ok(db.finish_workflow(workflow, ok, &message, cause, &refs)))
            .await?
    }

    /// Ends a running workflow failed without changing its server's state.
    pub async fn abandon_workflow(&self, workflow: i64, message: String) -> Result<()> {
        self.write(move |db| {
            db.conn
                .execute(
                    "UPDATE workflows SET state = 'failed', message = ?2, updated_ms = ?3
                     WHERE id = ?1 AND state = 'running'",
                    params![workflow, message, now_ms()],
                )
                .map(|_| ())
                .map_err(q(WHAT))
        })
        .await
    }

    pub async fn retry_workflow(&self, server: &str) -> Result<WorkflowRecord, WorkflowError> {
        let server = server.to_owned();
        self.write(move |db| Ok(db.retry_workflow(&server))).await?
    }

    pub async fn workflow(&self, id: i64) -> Result<Option<WorkflowRecord>> {
        self.read(move |db| db.workflow(id)).await
    }

    pub async fn running_workflows(&self) -> Result<Vec<WorkflowRecord>> {
        self.write(|db| db.running_workflows()).await
    }

    pub async fn server_workflows(&self, server: &str, limit: u32) -> Result<Vec<WorkflowRecord>> {
        let server = server.to_owned();
        self.read(move |db| db.server_workflows(&server, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{grant, reg};
    use serde_json::json;

    fn available(db: &mut Db) -> String {
        let (s, _) = db
            .register(&reg("k"), &grant(), &mut || "srv-1".into(), "127.0.0.1:1")
            .unwrap();
        db.transition(
            &s.id,
            ServerState::Discovery,
            Cause::Discovered,
            "",
            &Refs::default(),
        )
        .unwrap();
        s.id
    }

    #[test]
    fn one_running_workflow_per_server_and_its_transitions_in_the_same_transaction() {
        let mut db = Db::open_in_memory().unwrap();
        let id = available(&mut db);
        // A release needs a reserved server: refused, nothing stored.
        let e = db
            .create_workflow(
                &id,
                WorkflowKind::Release,
                &json!({}),
                &["erase"],
                ServerState::Reserved,
                Some((Cause::Released, "released")),
                Cause::Cleaned,
            )
            .unwrap_err();
        assert!(
            matches!(e, WorkflowError::Transition(TransitionError::Illegal(_))),
            "{e}"
        );
        assert!(db.running_workflows().unwrap().is_empty());

        let wf = db
            .create_workflow(
                &id,
                WorkflowKind::Claim,
                &json!({"image": "x"}),
                &["prepare_image", "run_image"],
                ServerState::Available,
                None,
                Cause::Claimed,
            )
            .unwrap();
        assert_eq!(wf.steps.len(), 2);
        assert!(wf.steps.iter().all(|s| s.state == StepState::Pending));
        assert_eq!(wf.boot_id.as_deref(), Some("b1"));
        let e = db
            .create_workflow(
                &id,
                WorkflowKind::Claim,
                &json!({}),
                &["prepare_image"],
                ServerState::Available,
                None,
                Cause::Claimed,
            )
            .unwrap_err();
        assert!(matches!(e, WorkflowError::Busy { .. }), "{e}");

        db.step_running(wf.id, 0, Some("wf-1-0"), None).unwrap();
        db.step_finished(wf.id, 0, true, "written").unwrap();
        db.finish_workflow(wf.id, true, "deployed", Cause::Claimed, &Refs::default())
            .unwrap();
        let wf = db.workflow(wf.id).unwrap().unwrap();
        assert_eq!(wf.state, StepState::Done);
        assert_eq!(wf.steps[0].task_id.as_deref(), Some("wf-1-0"));
        assert_eq!(wf.steps[0].state, StepState::Done);
        assert_eq!(wf.steps[1].state, StepState::Pending);
        assert_eq!(
            db.get_server(&id).unwrap().unwrap().state,
            ServerState::Reserved
        );
        // A workflow whose server moved on ends failed, not running forever.
        let stuck = db
            .create_workflow(
                &id,
                WorkflowKind::Release,
                &json!({}),
                &["erase"],
                ServerState::Reserved,
                Some((Cause::Released, "released")),
                Cause::Cleaned,
            )
            .unwrap();
        db.transition(
            &id,
            ServerState::Cleanup,
            Cause::Failed,
            "operator",
            &Refs::default(),
        )
        .unwrap();
        let e = db
            .finish_workflow(stuck.id, true, "cleaned", Cause::Cleaned, &Refs::default())
            .unwrap_err();
        assert!(
            matches!(e, WorkflowError::Transition(TransitionError::Illegal(_))),
            "{e}"
        );
        let stuck = db.workflow(stuck.id).unwrap().unwrap();
        assert_eq!(stuck.state, StepState::Failed);
        assert!(stuck.message.unwrap().contains("not applied"));
        db.transition(
            &id,
            ServerState::Error,
            Cause::Resolved,
            "fixed",
            &Refs::default(),
        )
        .unwrap();
        db.transition(
            &id,
            ServerState::Available,
            Cause::Claimed,
            "again",
            &Refs::default(),
        )
        .unwrap();
        // A finished workflow cannot be finished again.
        assert!(
            db.finish_workflow(wf.id, true, "again", Cause::Claimed, &Refs::default())
                .is_err()
        );

        let rel = db
            .create_workflow(
                &id,
                WorkflowKind::Release,
                &json!({}),
                &["erase"],
                ServerState::Reserved,
                Some((Cause::Released, "released by the operator")),
                Cause::Cleaned,
            )
            .unwrap();
        assert_eq!(
            db.get_server(&id).unwrap().unwrap().state,
            ServerState::Cleanup
        );
        assert_eq!(db.running_workflows().unwrap(), std::slice::from_ref(&rel));
        db.finish_workflow(
            rel.id,
            false,
            "erase failed: disk gone",
            Cause::Failed,
            &Refs::default(),
        )
        .unwrap();
        assert_eq!(
            db.get_server(&id).unwrap().unwrap().state,
            ServerState::Error
        );
        let listed = db.server_workflows(&id, 10).unwrap();
        assert_eq!(
            listed.iter().map(|w| w.id).collect::<Vec<_>>(),
            [rel.id, stuck.id, wf.id]
        );
        assert_eq!(
            listed[0].message.as_deref(),
            Some("erase failed: disk gone")
        );
    }
}
