//! The task engine: long-running commands with controller-chosen ids, progress, cancellation,
//! and statuses that survive lost connections.
//!
//! Every capability that takes time (erase, image writes, firmware, ...) implements [`Task`]
//! and is registered once in a [`TaskRegistry`]; the engine does the rest:
//! - a task command carries `task_id`; it is answered at once with `{task_id, state}`.
//!   Repeating a task id with the same method and params returns the current state; with
//!   different ones, a `task_conflict` error. Params are validated before a task is accepted.
//! - progress goes out as `task_status` when it moves, at most once a second and at least
//!   every 10 s ([`TaskEngine::pump`]);
//! - tasks keep running while disconnected; after a reconnect the latest status of every task
//!   the controller has not acknowledged is resent, and terminal statuses are retried until
//!   acknowledged, so none is lost or doubled;
//! - `task.cancel` trips the task's `CancellationToken`, which every task must honour;
//! - a task whose end takes the agent away (kexec, reboot) waits, after returning its outcome,
//!   until the controller acknowledged that terminal status
//!   ([`TaskContext::terminal_acknowledged`]), so its result is stored before the machine goes.

use futures::FutureExt;
use futures::future::BoxFuture;
use molar_protocol::catalogue::{TaskStatusUpdate, canonical_method};
use molar_protocol::methods::{TaskAccepted, TaskInfo, TaskState, TaskStatus};
use molar_protocol::{CallError, ErrorBody, PeerHandle, codes};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Minimum interval between two `running` updates of one task.
pub const MIN_UPDATE_INTERVAL: Duration = Duration::from_secs(1);
/// Maximum interval between two `running` updates of one task.
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(10);
/// Finished tasks kept for `task.list` and idempotent resubmission.
pub const FINISHED_KEPT: usize = 1000;

/// How a task failed: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub code: String,
    pub msg: String,
    /// A partial result sent with the `error` status (e.g. which disks did get erased).
    pub details: Option<Value>,
}

impl TaskFailure {
    pub fn new(code: &str, msg: impl Into<String>) -> Self {
        TaskFailure {
            code: code.to_owned(),
            msg: msg.into(),
            details: None,
        }
    }

    /// Attaches a partial result, sent as the `error` status's `result`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn cancelled() -> Self {
        TaskFailure::new(codes::CANCELLED, "cancelled")
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.code)
    }
}

/// A kind of long-running work.
pub trait Task: Send + Sync + 'static {
    /// The task's own params (without `task_id`, which the engine strips).
    type Params: DeserializeOwned + Send + 'static;

    /// Runs the task to completion. Must return promptly once `ctx` is cancelled.
    fn run(
        &self,
        params: Self::Params,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Value, TaskFailure>> + Send;
}

type StartFn = dyn Fn(Value, TaskContext) -> Result<BoxFuture<'static, Result<Value, TaskFailure>>, ErrorBody>
    + Send
    + Sync;

/// The task kinds an agent offers, by method name.
#[derive(Default, Clone)]
pub struct TaskRegistry {
    kinds: HashMap<String, Arc<StartFn>>,
}

impl TaskRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `task` under `method`.
    pub fn register<T: Task>(&mut self, method: &str, task: T) -> &mut Self {
        let task = Arc::new(task);
        let name = method.to_owned();
        let start = move |params: Value, ctx: TaskContext| {
            let p: T::Params = molar_protocol::methods::parse_params(&name, params)?;
            let t = task.clone();
            Ok(async move { t.run(p, ctx).await }.boxed())
        };
        self.kinds.insert(method.to_owned(), Arc::new(start));
        self
    }

    pub fn contains(&self, method: &str) -> bool {
        self.kinds.contains_key(method)
    }

    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// What a running task sees of the engine.
#[derive(Clone)]
pub struct TaskContext {
    task_id: Arc<str>,
    cancel: CancellationToken,
    engine: Arc<Inner>,
}

impl TaskContext {
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress in percent (0–100) and, when the task knows better than a linear
    /// estimate, the seconds left.
    pub fn set_progress(&self, percent: f64, eta: Option<u64>) {
        self.engine.progress(&self.task_id, percent, eta, None);
    }

    /// Reports progress as work done out of a total (bytes, steps...).
    pub fn set_progress_of(&self, done: u64, total: u64) {
        let percent = if total == 0 {
            0.0
        } else {
            done.min(total) as f64 * 100.0 / total as f64
        };
        self.set_progress(percent, None);
    }

    /// Resolves `true` once the controller acknowledged this task's terminal status, or
    /// `false` when `bound` passes first. For a task whose end takes the agent away: it
    /// spawns this before returning its outcome, and acts when it resolves.
    pub fn terminal_acknowledged(
        &self,
        bound: Duration,
    ) -> impl Future<Output = bool> + Send + 'static {
        let engine = self.engine.clone();
        let task_id = self.task_id.clone();
        async move {
            let deadline = Instant::now() + bound;
            loop {
                let notified = engine.acked.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if engine.terminal_acked(&task_id) {
                    return true;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return engine.terminal_acked(&task_id);
                }
            }
        }
    }

    /// A short human-readable note about the current step, sent with `running` updates.
    pub fn set_message(&self, msg: impl Into<String>) {
        self.engine
            .progress(&self.task_id, f64::NAN, None, Some(msg.into()));
    }
}

struct Entry {
    method: String,
    params_key: String,
    state: TaskState,
    percent: f64,
    eta: Option<u64>,
    explicit_eta: bool,
    msg: Option<String>,
    code: Option<String>,
    result: Option<Value>,
    started: Instant,
    started_at_ms: u64,
    finished_at_ms: Option<u64>,
    cancel: CancellationToken,
    /// Bumped at every change of what a `task_status` would carry.
    seq: u64,
    /// Highest seq handed to the pump for sending on the current connection.
    sent_seq: u64,
    /// Highest seq the controller acknowledged.
    acked_seq: u64,
    last_sent: Option<Instant>,
    /// Order of arrival, to keep `task.list` stable and drop the oldest finished first.
    order: u64,
}

impl Entry {
    fn info(&self, task_id: &str) -> TaskInfo {
        TaskInfo {
            task_id: task_id.to_owned(),
            method: self.method.clone(),
            state: self.state,
            percent: Some(round1(self.percent)),
            eta: self.eta,
            msg: self.msg.clone(),
            code: self.code.clone(),
            result: self.result.clone(),
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            cancel_requested: self.cancel.is_cancelled(),
        }
    }

    fn status(&self, task_id: &str) -> TaskStatus {
        let running = self.state == TaskState::Running;
        TaskStatus {
            task_id: task_id.to_owned(),
            state: self.state,
            percent: Some(round1(self.percent)),
            eta: if running { self.eta } else { None },
            msg: self.msg.clone(),
            code: self.code.clone(),
            result: self.result.clone(),
            seq: self.seq,
        }
    }
}

fn round1(p: f64) -> f64 {
    (p * 10.0).round() / 10.0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Inner {
    registry: TaskRegistry,
    tasks: Mutex<HashMap<String, Entry>>,
    changed: Notify,
    /// Notified whenever the controller acknowledges a status.
    acked: Notify,
    next_order: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are updated field by field under the lock; a panic elsewhere cannot leave
        // one half-written in a way that matters more than losing the agent would.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `task_id` ended and the controller holds its terminal status. A task no longer
    /// known was forgotten, which happens only to acknowledged terminal ones.
    fn terminal_acked(&self, task_id: &str) -> bool {
        self.tasks()
            .get(task_id)
            .is_none_or(|e| e.state.is_terminal() && e.acked_seq >= e.seq)
    }

    fn progress(&self, task_id: &str, percent: f64, eta: Option<u64>, msg: Option<String>) {
        let mut tasks = self.tasks();
        let Some(e) = tasks.get_mut(task_id) else {
            return;
        };
        if e.state != TaskState::Running {
            return;
        }
        let mut moved = false;
        if percent.is_finite() {
            let p = percent.clamp(0.0, 100.0);
            if round1(p) != round1(e.percent) {
                moved = true;
            }
            e.percent = p;
            let elapsed = e.started.elapsed().as_secs_f64();
            e.explicit_eta = eta.is_some();
            e.eta = eta
                .or_else(|| (p > 0.0).then(|| (elapsed * (100.0 - p) / p).round().max(0.0) as u64));
        }
        if let Some(m) = msg
            && e.msg.as_deref() != Some(m.as_str())
        {
            e.msg = Some(m);
            moved = true;
        }
        if moved {
            e.seq += 1;
            drop(tasks);
            self.changed.notify_waiters();
        }
    }

    fn finish(&self, task_id: &str, outcome: Result<Value, TaskFailure>) {
        let mut tasks = self.tasks();
        let Some(e) = tasks.get_mut(task_id) else {
            return;
        };
        match outcome {
            Ok(result) => {
                e.state = TaskState::Complete;
                e.percent = 100.0;
                e.result = Some(result);
                e.msg = None;
            }
            Err(f) => {
                e.state = TaskState::Error;
                e.msg = Some(f.msg);
                e.code = Some(f.code);
                e.result = f.details;
            }
        }
        e.eta = None;
        e.finished_at_ms = Some(now_ms());
        e.seq += 1;
        tracing::info!(task_id, method = %e.method, state = %e.state, "task finished");
        // Forget the oldest finished and acknowledged tasks beyond the retention limit.
        let mut done: Vec<(u64, String)> = tasks
            .iter()
            .filter(|(_, e)| e.state.is_terminal() && e.acked_seq >= e.seq)
            .map(|(id, e)| (e.order, id.clone()))
            .collect();
        if done.len() > FINISHED_KEPT {
            done.sort();
            for (_, id) in done.iter().take(done.len() - FINISHED_KEPT) {
                tasks.remove(id);
            }
        }
        drop(tasks);
        self.changed.notify_waiters();
    }
}

/// Whether a refusal means the message itself can never be accepted (as opposed to the
/// receiver failing to take it now, which is worth retrying).
pub fn refused_for_good(body: &ErrorBody) -> bool {
    matches!(
        body.code.as_str(),
        codes::INVALID_PARAMS | codes::INVALID_REQUEST | codes::UNKNOWN_METHOD
    )
}

/// The engine: one per agent process, shared by every connection it makes.
#[derive(Clone)]
pub struct TaskEngine {
    inner: Arc<Inner>,
}

impl TaskEngine {
    pub fn new(registry: TaskRegistry) -> Self {
        TaskEngine {
            inner: Arc::new(Inner {
                registry,
                tasks: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                acked: Notify::new(),
                next_order: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Whether `method` names a task kind.
    pub fn handles(&self, method: &str) -> bool {
        self.inner.registry.contains(&canonical_method(method))
    }

    /// Starts (or, for a repeated id, looks up) a task from a command's params.
    pub fn submit(&self, method: &str, params: Value) -> Result<TaskAccepted, ErrorBody> {
        let method = canonical_method(method).into_owned();
        let Value::Object(mut params) = params else {
            return Err(ErrorBody::new(
                codes::INVALID_PARAMS,
                format!("invalid params for {method}: expected an object"),
            ));
        };
        let task_id = match params.remove("task_id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id,
            Some(Value::String(_)) => {
                return Err(ErrorBody::new(
                    codes::INVALID_PARAMS,
                    format!("invalid params for {method}: task_id must be 1 to 128 bytes"),
                ));
            }
            Some(_) => {
                return Err(ErrorBody::new(
                    codes::INVALID_PARAMS,
                    format!("invalid params for {method}: task_id must be a string"),
                ));
            }
            None => {
                return Err(ErrorBody::new(
                    codes::INVALID_PARAMS,
                    format!("invalid params for {method}: missing field `task_id`"),
                ));
            }
        };
        let params = Value::Object(params);
        // serde_json's map is ordered by key, so this is a canonical form of the params.
        let params_key = params.to_string();

        let mut tasks = self.inner.tasks();
        if let Some(e) = tasks.get(&task_id) {
            if e.method == method && e.params_key == params_key {
                return Ok(TaskAccepted {
                    task_id,
                    state: e.state,
                });
            }
            return Err(ErrorBody::new(
                codes::TASK_CONFLICT,
                format!(
                    "task {task_id} already exists as {} with different params",
                    e.method
                ),
            ));
        }
        let Some(start) = self.inner.registry.kinds.get(&method).cloned() else {
            return Err(ErrorBody::new(
                codes::UNKNOWN_METHOD,
                format!("unknown method {method}"),
            ));
        };
        let cancel = CancellationToken::new();
        let ctx = TaskContext {
            task_id: Arc::from(task_id.as_str()),
            cancel: cancel.clone(),
            engine: self.inner.clone(),
        };
        let fut = start(params, ctx)?;
        tasks.insert(
            task_id.clone(),
            Entry {
                method: method.clone(),
                params_key,
                state: TaskState::Running,
                percent: 0.0,
                eta: None,
                explicit_eta: false,
                msg: None,
                code: None,
                result: None,
                started: Instant::now(),
                started_at_ms: now_ms(),
                finished_at_ms: None,
                cancel: cancel.clone(),
                seq: 1,
                sent_seq: 0,
                acked_seq: 0,
                last_sent: None,
                order: self
                    .inner
                    .next_order
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
        );
        drop(tasks);
        tracing::info!(task_id, %method, "task started");
        let inner = self.inner.clone();
        let id = task_id.clone();
        tokio::spawn(async move {
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(r) => r,
                Err(_) => Err(TaskFailure::new(
                    codes::INTERNAL,
                    "the task panicked; this is a bug in the agent",
                )),
            };
            // A task that ignored cancellation but failed anyway still reports as cancelled.
            let outcome = match outcome {
                Err(f) if cancel.is_cancelled() && f.code != codes::CANCELLED => Err(
                    TaskFailure::new(codes::CANCELLED, format!("cancelled: {}", f.msg)),
                ),
                o => o,
            };
            inner.finish(&id, outcome);
        });
        self.inner.changed.notify_waiters();
        Ok(TaskAccepted {
            task_id,
            state: TaskState::Running,
        })
    }

    /// Requests cancellation; returns the task as it is now.
    pub fn cancel(&self, task_id: &str) -> Result<TaskInfo, ErrorBody> {
        let tasks = self.inner.tasks();
        let e = tasks
            .get(task_id)
            .ok_or_else(|| ErrorBody::new(codes::UNKNOWN_TASK, format!("no task {task_id}")))?;
        if e.state == TaskState::Running {
            e.cancel.cancel();
            tracing::info!(task_id, "task cancellation requested");
        }
        Ok(e.info(task_id))
    }

    /// Cancels every running task (agent shutdown).
    pub fn cancel_all(&self) {
        for e in self.inner.tasks().values() {
            e.cancel.cancel();
        }
    }

    /// Every known task, oldest first.
    pub fn list(&self) -> Vec<TaskInfo> {
        let tasks = self.inner.tasks();
        let mut v: Vec<(u64, TaskInfo)> =
            tasks.iter().map(|(id, e)| (e.order, e.info(id))).collect();
        v.sort_by_key(|(o, _)| *o);
        v.into_iter().map(|(_, i)| i).collect()
    }

    pub fn get(&self, task_id: &str) -> Option<TaskInfo> {
        self.inner.tasks().get(task_id).map(|e| e.info(task_id))
    }

    /// Marks tasks whose terminal status the controller reports holding already.
    pub fn acknowledge_terminal(&self, task_ids: &[String]) {
        let mut tasks = self.inner.tasks();
        for id in task_ids {
            if let Some(e) = tasks.get_mut(id)
                && e.state.is_terminal()
            {
                e.acked_seq = e.seq;
            }
        }
        drop(tasks);
        self.inner.acked.notify_waiters();
    }

    /// Number of tasks whose latest status the controller has not acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.inner
            .tasks()
            .values()
            .filter(|e| e.acked_seq < e.seq)
            .count()
    }

    /// Sends `task_status` updates over `peer` until it closes: first every unacknowledged
    /// status, then changes as they come, within the rate limits.
    pub async fn pump(&self, peer: PeerHandle) {
        {
            // A new connection: whatever was sent but not acknowledged goes out again.
            let mut tasks = self.inner.tasks();
            for e in tasks.values_mut() {
                e.sent_seq = e.acked_seq;
                e.last_sent = None;
            }
        }
        loop {
            let changed = self.inner.changed.notified();
            let (due, next) = self.collect_due();
            let mut retry_soon = false;
            for status in due {
                let seq = status.seq;
                let terminal = status.state.is_terminal();
                let task_id = status.task_id.clone();
                match peer.call_method::<TaskStatusUpdate>(&status).await {
                    Ok(_) => self.mark_acked(&task_id, seq),
                    Err(CallError::Remote(body)) if refused_for_good(&body) => {
                        // The controller read it and can never accept it: resending the same
                        // status cannot succeed, so count it as delivered.
                        tracing::warn!(%task_id, error = %body, "controller refused a task status");
                        self.mark_acked(&task_id, seq);
                    }
                    Err(CallError::Remote(body)) => {
                        // The controller could not store it now (its database is busy or
                        // full): the status stays due and goes out again after a pause.
                        tracing::warn!(%task_id, error = %body, "controller could not take a task status; retrying");
                        self.unmark_sent(&task_id, seq);
                        retry_soon = true;
                    }
                    Err(e) => {
                        tracing::debug!(%task_id, terminal, error = %e, "task status not delivered");
                        if peer.is_closed() {
                            return;
                        }
                        // Timed out: let it become due again.
                        self.unmark_sent(&task_id, seq);
                    }
                }
            }
            let wait = match next {
                _ if retry_soon => MIN_UPDATE_INTERVAL,
                Some(n) => n,
                None => MAX_UPDATE_INTERVAL,
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(wait) => {}
                _ = peer.closed() => return,
            }
        }
    }

    /// The statuses due now, and how long until the next one may be.
    fn collect_due(&self) -> (Vec<TaskStatus>, Option<Duration>) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        let mut tasks = self.inner.tasks();
        for (id, e) in tasks.iter_mut() {
            if e.state.is_terminal() && e.acked_seq >= e.seq {
                continue;
            }
            let since = e.last_sent.map(|t| now.saturating_duration_since(t));
            let is_due = if e.state.is_terminal() {
                e.sent_seq < e.seq
            } else if e.sent_seq < e.seq {
                since.is_none_or(|s| s >= MIN_UPDATE_INTERVAL)
            } else {
                // Unchanged but running: a heartbeat every MAX_UPDATE_INTERVAL.
                since.is_none_or(|s| s >= MAX_UPDATE_INTERVAL)
            };
            if is_due {
                if !e.explicit_eta && e.state == TaskState::Running && e.percent > 0.0 {
                    let elapsed = e.started.elapsed().as_secs_f64();
                    e.eta = Some((elapsed * (100.0 - e.percent) / e.percent).round() as u64);
                }
                e.sent_seq = e.seq;
                e.last_sent = Some(now);
                due.push(e.status(id));
            } else if e.state == TaskState::Running {
                let wait = match since {
                    Some(s) if e.sent_seq < e.seq => MIN_UPDATE_INTERVAL.saturating_sub(s),
                    Some(s) => MAX_UPDATE_INTERVAL.saturating_sub(s),
                    None => Duration::ZERO,
                };
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        // Terminal statuses first: they matter most if the connection is about to drop.
        due.sort_by_key(|s| !s.state.is_terminal());
        (due, next.map(|n| n.max(Duration::from_millis(50))))
    }

    fn mark_acked(&self, task_id: &str, seq: u64) {
        if let Some(e) = self.inner.tasks().get_mut(task_id) {
            e.acked_seq = e.acked_seq.max(seq);
        }
        self.inner.acked.notify_waiters();
    }

    fn unmark_sent(&self, task_id: &str, seq: u64) {
        if let Some(e) = self.inner.tasks().get_mut(task_id)
            && e.sent_seq == seq
        {
            e.sent_seq = e.acked_seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molar_protocol::{Handler, Peer, PeerConfig};
    use serde::Deserialize;
    use serde_json::json;

    /// Counts to `steps`, one step per `step_ms`, honouring cancellation.
    struct Count;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CountParams {
        steps: u64,
        step_ms: u64,
        #[serde(default)]
        fail: bool,
    }

    impl Task for Count {
        type Params = CountParams;
        async fn run(&self, p: CountParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
            for i in 0..p.steps {
                tokio::select! {
                    _ = ctx.cancel_token().cancelled() => return Err(TaskFailure::cancelled()),
                    _ = tokio::time::sleep(Duration::from_millis(p.step_ms)) => {}
                }
                ctx.set_progress_of(i + 1, p.steps);
            }
            if p.fail {
                return Err(TaskFailure::new(codes::IO, "disk on fire"));
            }
            Ok(json!({"counted": p.steps}))
        }
    }

    /// Returns at once, leaving behind a waiter that records when (and whether) its terminal
    /// status was acknowledged: what a kexec does before jumping.
    struct Leave(Arc<Mutex<Option<(bool, Instant)>>>);

    impl Task for Leave {
        type Params = serde_json::Map<String, Value>;
        async fn run(&self, _: Self::Params, ctx: TaskContext) -> Result<Value, TaskFailure> {
            let acked = ctx.terminal_acknowledged(Duration::from_secs(10));
            let seen = self.0.clone();
            tokio::spawn(async move {
                let ok = acked.await;
                *seen.lock().unwrap() = Some((ok, Instant::now()));
            });
            Ok(json!({"leaving": true}))
        }
    }

    fn engine() -> TaskEngine {
        engine_with(Arc::default())
    }

    fn engine_with(left: Arc<Mutex<Option<(bool, Instant)>>>) -> TaskEngine {
        let mut r = TaskRegistry::new();
        r.register("test.count", Count);
        r.register("standbye.count", Count);
        r.register("test.leave", Leave(left));
        TaskEngine::new(r)
    }

    #[tokio::test]
    async fn submit_validates_and_is_idempotent() {
        let e = engine();
        let p = json!({"task_id":"t1","steps":1000,"step_ms":1000});
        assert_eq!(
            e.submit("test.count", p.clone()).unwrap(),
            TaskAccepted {
                task_id: "t1".into(),
                state: TaskState::Running
            }
        );
        assert_eq!(e.submit("test.count", p).unwrap().state, TaskState::Running);
        let err = e
            .submit("test.count", json!({"task_id":"t1","steps":5,"step_ms":1}))
            .unwrap_err();
        assert_eq!(
            err,
            ErrorBody::new(
                codes::TASK_CONFLICT,
                "task t1 already exists as test.count with different params"
            )
        );
        let err = e
            .submit("test.count", json!({"steps":5,"step_ms":1}))
            .unwrap_err();
        assert_eq!(
            err,
            ErrorBody::new(
                codes::INVALID_PARAMS,
                "invalid params for test.count: missing field `task_id`"
            )
        );
        let err = e.submit("test.count", json!({"task_id":7})).unwrap_err();
        assert_eq!(
            err.msg,
            "invalid params for test.count: task_id must be a string"
        );
        let err = e
            .submit(
                "test.count",
                json!({"task_id":"t2","steps":"many","step_ms":1}),
            )
            .unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);
        assert!(
            err.msg
                .starts_with("invalid params for test.count: invalid type: string \"many\""),
            "{}",
            err.msg
        );
        // A rejected submission leaves no task behind.
        assert!(e.get("t2").is_none());
        let err = e.submit("test.nope", json!({"task_id":"t3"})).unwrap_err();
        assert_eq!(err.code, codes::UNKNOWN_METHOD);
        e.cancel_all();
    }

    #[tokio::test]
    async fn standby_alias_reaches_the_same_task() {
        let e = engine();
        e.submit(
            "standby.count",
            json!({"task_id":"a","steps":1,"step_ms":1}),
        )
        .unwrap();
        assert_eq!(e.get("a").unwrap().method, "standbye.count");
        assert!(e.handles("standby.count"));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_task_and_reports_cancelled() {
        let e = engine();
        e.submit(
            "test.count",
            json!({"task_id":"c","steps":1000,"step_ms":50}),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let info = e.cancel("c").unwrap();
        assert!(info.cancel_requested);
        for _ in 0..100 {
            if e.get("c").unwrap().state != TaskState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let info = e.get("c").unwrap();
        assert_eq!(info.state, TaskState::Error);
        assert_eq!(info.code.as_deref(), Some(codes::CANCELLED));
        assert_eq!(e.cancel("nope").unwrap_err().code, codes::UNKNOWN_TASK);
    }

    /// A controller stand-in that records every task_status it acknowledges.
    fn recorder(log: Arc<Mutex<Vec<TaskStatus>>>, refuse_first: bool) -> Arc<dyn Handler> {
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(!refuse_first));
        Arc::new(move |_: &PeerHandle, method: String, params: Value| {
            let log = log.clone();
            let refused = refused.clone();
            async move {
                assert_eq!(method, "task_status");
                let s: TaskStatus = serde_json::from_value(params).unwrap();
                if s.state.is_terminal() && !refused.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    // Simulate a lost acknowledgement: never answer.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                log.lock().unwrap().push(s);
                Ok(json!({}))
            }
            .boxed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_are_rate_limited_and_carry_percent_and_eta() {
        let e = engine();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = tokio::io::duplex(1 << 20);
        let (agent, _) = Peer::spawn(
            a,
            Arc::new(|_: &PeerHandle, _: String, _: Value| async { Ok(json!({})) }.boxed()),
            PeerConfig::default(),
        );
        let (_ctl, _) = Peer::spawn(b, recorder(log.clone(), false), PeerConfig::default());
        tokio::spawn({
            let e = e.clone();
            async move { e.pump(agent).await }
        });
        // 100 steps of 100 ms: progress moves 10 times a second, updates go out once a second.
        e.submit(
            "test.count",
            json!({"task_id":"r","steps":100,"step_ms":100}),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let log = log.lock().unwrap().clone();
        let running: Vec<_> = log
            .iter()
            .filter(|s| s.state == TaskState::Running)
            .collect();
        assert!(
            (9..=13).contains(&running.len()),
            "{} running updates",
            running.len()
        );
        let percents: Vec<f64> = running.iter().map(|s| s.percent.unwrap()).collect();
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        let mid = running.iter().find(|s| s.percent.unwrap() >= 40.0).unwrap();
        let eta = mid.eta.unwrap();
        assert!((4..=7).contains(&eta), "eta {eta} at {:?}%", mid.percent);
        let terminal: Vec<_> = log.iter().filter(|s| s.state.is_terminal()).collect();
        assert_eq!(terminal.len(), 1);
        assert_eq!(terminal[0].state, TaskState::Complete);
        assert_eq!(terminal[0].result, Some(json!({"counted":100})));
        assert!(
            log.last().unwrap().state.is_terminal(),
            "nothing after the terminal status"
        );
        assert_eq!(e.unacknowledged(), 0);
    }

    /// A controller whose store fails once answers an `internal` error: the terminal status
    /// is retried, not dropped.
    #[tokio::test(start_paused = true)]
    async fn a_controller_failing_to_store_gets_the_terminal_status_again() {
        let e = engine();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, b) = tokio::io::duplex(1 << 20);
        let noop = Arc::new(|_: &PeerHandle, _: String, _: Value| async { Ok(json!({})) }.boxed());
        let (agent, _) = Peer::spawn(a, noop, PeerConfig::default());
        let ctl_handler: Arc<dyn Handler> = {
            let stored = stored.clone();
            Arc::new(move |_: &PeerHandle, _m: String, params: Value| {
                let stored = stored.clone();
                let failed_once = failed_once.clone();
                async move {
                    let s: TaskStatus = serde_json::from_value(params).unwrap();
                    if s.state.is_terminal()
                        && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                    {
                        return Err(ErrorBody::new(
                            codes::INTERNAL,
                            "the controller cannot store task statuses now",
                        ));
                    }
                    stored.lock().unwrap().push(s);
                    Ok(json!({}))
                }
                .boxed()
            })
        };
        let (_ctl, _) = Peer::spawn(b, ctl_handler, PeerConfig::default());
        tokio::spawn({
            let e = e.clone();
            async move { e.pump(agent).await }
        });
        e.submit("test.count", json!({"task_id":"s","steps":2,"step_ms":10}))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let terminal: Vec<_> = stored
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.state.is_terminal())
            .cloned()
            .collect();
        assert_eq!(terminal.len(), 1, "delivered once, after the failure");
        assert_eq!(e.unacknowledged(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_terminal_status_is_resent_on_the_next_connection() {
        let e = engine();
        let log = Arc::new(Mutex::new(Vec::new()));
        e.submit(
            "test.count",
            json!({"task_id":"f","steps":2,"step_ms":100,"fail":true}),
        )
        .unwrap();
        // First connection: the controller never acknowledges the terminal status.
        let (a, b) = tokio::io::duplex(1 << 20);
        let noop = Arc::new(|_: &PeerHandle, _: String, _: Value| async { Ok(json!({})) }.boxed());
        let (agent, _) = Peer::spawn(
            a,
            noop.clone(),
            PeerConfig {
                call_timeout: Duration::from_secs(5),
                ..PeerConfig::default()
            },
        );
        let (ctl, _) = Peer::spawn(b, recorder(log.clone(), true), PeerConfig::default());
        let pump = tokio::spawn({
            let e = e.clone();
            let agent = agent.clone();
            async move { e.pump(agent).await }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(e.get("f").unwrap().state, TaskState::Error);
        assert_eq!(e.unacknowledged(), 1);
        ctl.close(None).await;
        pump.await.unwrap();
        // Second connection: resent and acknowledged exactly once.
        let (a, b) = tokio::io::duplex(1 << 20);
        let (agent, _) = Peer::spawn(a, noop, PeerConfig::default());
        let (_ctl, _) = Peer::spawn(b, recorder(log.clone(), false), PeerConfig::default());
        tokio::spawn({
            let e = e.clone();
            async move { e.pump(agent).await }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let terminal: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.state.is_terminal())
            .cloned()
            .collect();
        assert_eq!(terminal.len(), 1);
        assert_eq!(terminal[0].msg.as_deref(), Some("disk on fire"));
        assert_eq!(terminal[0].code.as_deref(), Some(codes::IO));
        assert_eq!(e.unacknowledged(), 0);
    }

    /// The waiter resolves only once the controller answered the terminal status (here two
    /// seconds late), and gives up, saying so, after its bound when no answer comes.
    #[tokio::test(start_paused = true)]
    async fn a_task_can_wait_until_its_terminal_status_is_acknowledged() {
        for (ack_delay, want) in [
            (Duration::from_secs(2), true),
            (Duration::from_secs(60), false),
        ] {
            let left = Arc::new(Mutex::new(None));
            let e = engine_with(left.clone());
            let (a, b) = tokio::io::duplex(1 << 20);
            let noop =
                Arc::new(|_: &PeerHandle, _: String, _: Value| async { Ok(json!({})) }.boxed());
            let (agent, _) = Peer::spawn(
                a,
                noop,
                PeerConfig {
                    call_timeout: Duration::from_secs(120),
                    ..PeerConfig::default()
                },
            );
            let answered = Arc::new(Mutex::new(None));
            let ctl: Arc<dyn Handler> = {
                let answered = answered.clone();
                Arc::new(move |_: &PeerHandle, _: String, _: Value| {
                    let answered = answered.clone();
                    async move {
                        tokio::time::sleep(ack_delay).await;
                        *answered.lock().unwrap() = Some(Instant::now());
                        Ok(json!({}))
                    }
                    .boxed()
                })
            };
            let (_ctl, _) = Peer::spawn(b, ctl, PeerConfig::default());
            tokio::spawn({
                let e = e.clone();
                async move { e.pump(agent).await }
            });
            let start = Instant::now();
            e.submit("test.leave", json!({"task_id": "k"})).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(e.get("k").unwrap().state, TaskState::Complete);
            assert!(left.lock().unwrap().is_none(), "resolved before the answer");
            tokio::time::sleep(Duration::from_secs(15)).await;
            let (acked, at) = left.lock().unwrap().expect("the waiter resolved");
            assert_eq!(acked, want, "ack after {ack_delay:?}");
            if want {
                assert!(at >= answered.lock().unwrap().unwrap());
                assert!(at - start < Duration::from_secs(5));
            } else {
                assert!(at - start >= Duration::from_secs(10));
                assert!(answered.lock().unwrap().is_none());
            }
        }
    }
}
