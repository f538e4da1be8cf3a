//! The agent's life on the network: dial the controller, handshake, answer commands, stream
//! task statuses and logs, and when the connection ends, dial again with jittered
//! exponential backoff (1 s to 120 s), forever.
//!
//! After the first handshake of a boot the controller gives the agent a session credential
//! bound to (this server, this boot). It lives only in memory and is presented on every
//! reconnect: with it, the reconnect takes the place of the agent's old connection even if
//! the controller has not noticed that one is dead; without it, a server with a live
//! session is refused (`session_conflict`). A session that ends in that contest — refused
//! with `session_conflict`, or superseded — resets the backoff ([`Backoff::after`]), so an
//! impostor that reconnects quickly cannot starve the legitimate agent.
//!
//! Commands are dispatched to three places: the built-ins (`status`, `task.list`,
//! `task.cancel`), the task engine (anything registered as a [`Task`](crate::tasks::Task)),
//! and plain request/response methods registered in [`Methods`] (inventory, BMC, power...).

use crate::logfwd::LogBuffer;
use crate::tasks::{TaskEngine, TaskRegistry};
use crate::tls::{self, Trust};
use futures::FutureExt;
use futures::future::BoxFuture;
use molar_protocol::catalogue::{Handshake, Method, Status, TaskCancel, TaskList, TaskMethod};
use molar_protocol::methods::{
    HandshakeParams, ModuleReport, SUPERSEDED, StatusResult, TaskListResult, TaskRef, parse_params,
};
use molar_protocol::{
    CallError, CloseReason, ErrorBody, Handler, Peer, PeerConfig, PeerHandle, Secret, codes,
};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The agent's version, sent in the handshake and `status`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A plain request/response method.
pub type CallFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, ErrorBody>> + Send + Sync>;

/// Everything the agent answers besides the built-ins.
#[derive(Default, Clone)]
pub struct Methods {
    calls: HashMap<String, CallFn>,
    tasks: TaskRegistry,
}

impl Methods {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a request/response method.
    pub fn call<F, Fut>(&mut self, method: &str, f: F) -> &mut Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        self.calls
            .insert(method.to_owned(), Arc::new(move |p| f(p).boxed()));
        self
    }

    /// Registers a task kind.
    pub fn task<T: crate::tasks::Task>(&mut self, method: &str, task: T) -> &mut Self {
        self.tasks.register(method, task);
        self
    }

    /// Registers the handler of catalogue method `M`: its params are decoded as `M::Params`
    /// (anything else is answered `invalid_params` before `f` runs) and its typed result is
    /// encoded.
    pub fn handle<M, F, Fut>(&mut self, f: F) -> &mut Self
    where
        M: Method,
        F: Fn(M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Result, ErrorBody>> + Send + 'static,
    {
        self.call(M::NAME, move |params| {
            let answer = parse_params::<M::Params>(M::NAME, params).map(&f);
            async move { encode_result(&answer?.await?) }
        })
    }

    /// Registers `task` as catalogue task `M`, whose params it takes.
    pub fn task_method<M, T>(&mut self, task: T) -> &mut Self
    where
        M: TaskMethod,
        T: crate::tasks::Task<Params = M::Params>,
    {
        self.task(M::NAME, task)
    }
}

/// A method's typed result as the JSON it is answered with.
pub fn encode_result<T: serde::Serialize>(result: &T) -> Result<Value, ErrorBody> {
    serde_json::to_value(result)
        .map_err(|e| ErrorBody::new(codes::INTERNAL, format!("encoding result: {e}")))
}

/// Backoff between connection attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(120),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failed attempts: exponential, capped, and
    /// jittered to between half and all of it so a fleet rebooting together spreads out.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        capped.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Consecutive failures after an attempt that ended as `ended`, `failures` before it.
    pub fn after(failures: u32, ended: Ended) -> u32 {
        match ended {
            // A contest for the session is not the controller failing: try again soon, so
            // the legitimate agent is back as soon as the contest ends.
            Ended::Lasted | Ended::Contested => 0,
            Ended::Short | Ended::Failed => failures.saturating_add(1),
        }
    }
}

/// How a session attempt ended, as the backoff sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Connected for a while (over 30 s), then lost.
    Lasted,
    /// Connected, then lost at once: a flapping controller must not be hammered.
    Short,
    /// Could not connect, or the handshake was refused.
    Failed,
    /// Refused with `session_conflict`, or superseded by another connection.
    Contested,
}

impl Ended {
    /// Classifies the outcome of [`Agent::session`]; `lasted` is whether it was up > 30 s.
    pub fn of(outcome: &Result<CloseReason, SessionError>, lasted: bool) -> Ended {
        match outcome {
            Err(SessionError::Refused(body)) if body.code == codes::SESSION_CONFLICT => {
                Ended::Contested
            }
            Ok(CloseReason::RemoteFatal(msg)) if msg == SUPERSEDED => Ended::Contested,
            Ok(_) if lasted => Ended::Lasted,
            Ok(_) => Ended::Short,
            Err(_) => Ended::Failed,
        }
    }
}

/// How the agent reaches and authenticates to the controller.
#[derive(Clone)]
pub struct AgentConfig {
    /// `HOST:PORT`.
    pub controller: String,
    pub trust: Trust,
    pub token: Secret,
    /// Root under which /sys, /proc and /dev are read.
    pub root: PathBuf,
    /// Whether this process is PID 1 of the ramdisk.
    pub ramdisk: bool,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub peer: PeerConfig,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("controller", &self.controller)
            .field("trust", &self.trust)
            .field("token", &self.token)
            .field("root", &self.root)
            .field("ramdisk", &self.ramdisk)
            .finish()
    }
}

impl AgentConfig {
    pub fn new(controller: impl Into<String>, trust: Trust, token: Secret) -> Self {
        AgentConfig {
            controller: controller.into(),
            trust,
            token,
            root: PathBuf::from("/"),
            ramdisk: false,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            peer: PeerConfig {
                name: "controller".into(),
                id_prefix: "a".into(),
                ..PeerConfig::default()
            },
        }
    }
}

/// This process's resident set size, from `ROOT/proc/self/status`.
fn rss_bytes(root: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(root.join("proc/self/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Seconds since the kernel booted (`ROOT/proc/uptime`), in milliseconds: on the same clock as
/// the kernel's console timestamps, so boot timings can be read off one console log.
fn uptime_ms(root: &std::path::Path) -> Option<u64> {
    let s = std::fs::read_to_string(root.join("proc/uptime")).ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Why one session attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] tls::TlsError),
    #[error("controller refused the handshake: {0}")]
    Refused(ErrorBody),
    #[error("handshake failed: {0}")]
    Handshake(CallError),
    #[error("connection lost: {0}")]
    Lost(CloseReason),
}

/// A running agent: the engine, the log buffer, and what `status` reports.
pub struct Agent {
    config: AgentConfig,
    engine: TaskEngine,
    calls: HashMap<String, CallFn>,
    logs: Arc<LogBuffer>,
    started: Instant,
    boot_id: String,
    modules: Mutex<Option<ModuleReport>>,
    server_id: Mutex<Option<String>>,
    /// The session credential of this boot, once the controller gave one (memory only).
    session: Mutex<Option<Secret>>,
}

impl Agent {
    pub fn new(config: AgentConfig, methods: Methods, logs: Arc<LogBuffer>) -> Arc<Self> {
        let boot_id = crate::identity::boot_id(&config.root);
        Arc::new(Agent {
            engine: TaskEngine::new(methods.tasks),
            calls: methods.calls,
            logs,
            started: Instant::now(),
            boot_id,
            modules: Mutex::new(None),
            server_id: Mutex::new(None),
            session: Mutex::new(None),
            config,
        })
    }

    pub fn engine(&self) -> &TaskEngine {
        &self.engine
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The id the controller gave this server in the last successful handshake.
    pub fn server_id(&self) -> Option<String> {
        self.server_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session credential the controller gave this boot, if any.
    pub fn session_credential(&self) -> Option<Secret> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what the ramdisk's coldplug loaded, for `status`.
    pub fn set_modules(&self, report: ModuleReport) {
        *self.modules.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    pub fn status(&self) -> StatusResult {
        StatusResult {
            agent_version: AGENT_VERSION.to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            boot_id: self.boot_id.clone(),
            ramdisk: self.config.ramdisk,
            tasks: self.engine.list(),
            logs_dropped: self.logs.dropped_total(),
            modules: self
                .modules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            rss_bytes: rss_bytes(&self.config.root),
        }
    }

    /// Answers one command as if it had come from the controller: the connection uses this,
    /// and so does the local command line (`molar-agent bmc ...`), so both run the same code.
    pub async fn dispatch(
        self: Arc<Self>,
        method: String,
        params: Value,
    ) -> Result<Value, ErrorBody> {
        match method.as_str() {
            Status::NAME => {
                parse_params::<<Status as Method>::Params>(&method, params)?;
                encode_result(&self.status())
            }
            TaskList::NAME => {
                parse_params::<<TaskList as Method>::Params>(&method, params)?;
                encode_result(&TaskListResult {
                    tasks: self.engine.list(),
                })
            }
            TaskCancel::NAME => {
                let r: TaskRef = parse_params(&method, params)?;
                encode_result(&self.engine.cancel(&r.task_id)?)
            }
            m if self.engine.handles(m) => encode_result(&self.engine.submit(m, params)?),
            m => match self.calls.get(m) {
                Some(f) => f(params).await,
                None => Err(ErrorBody::new(
                    codes::UNKNOWN_METHOD,
                    format!("unknown method {m}"),
                )),
            },
        }
    }

    fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        let agent = self.clone();
        Arc::new(move |_: &PeerHandle, method: String, params: Value| {
            agent.clone().dispatch(method, params).boxed()
        })
    }

    /// One connection: dial, handshake, serve until it ends or `shutdown` fires.
    pub async fn session(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
    ) -> Result<CloseReason, SessionError> {
        let cfg = &self.config;
        let tls = tls::client_config(&cfg.trust)?;
        let stream = tls::connect(&cfg.controller, tls, cfg.connect_timeout).await?;
        // Gated: nothing the controller sends is served until it accepted the handshake, so
        // a controller that refuses it cannot have anything run.
        let peer_config = PeerConfig {
            gated: true,
            ..cfg.peer.clone()
        };
        let (peer, done) = Peer::spawn(stream, self.handler(), peer_config);
        let hello = HandshakeParams {
            agent_version: AGENT_VERSION.to_owned(),
            protocols: vec![molar_protocol::VERSION.to_owned()],
            boot_id: self.boot_id.clone(),
            node: crate::identity::node_identity(&cfg.root),
            token: cfg.token.clone(),
            session: self.session_credential(),
        };
        let welcome = match peer.call_method_opening::<Handshake>(&hello).await {
            Ok(w) => w,
            Err(e) => {
                peer.close(None).await;
                let _ = done.await;
                return Err(match e {
                    CallError::Remote(body) => SessionError::Refused(body),
                    other => SessionError::Handshake(other),
                });
            }
        };
        tracing::info!(
            server_id = %welcome.server_id,
            controller = %cfg.controller,
            uptime_ms = uptime_ms(&cfg.root),
            "connected to the controller"
        );
        *self.server_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(welcome.server_id);
        if let Some(credential) = welcome.session {
            *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(credential);
        }
        self.engine
            .acknowledge_terminal(&welcome.acknowledged_tasks);
        let statuses = tokio::spawn({
            let engine = self.engine.clone();
            let peer = peer.clone();
            async move { engine.pump(peer).await }
        });
        let logs = tokio::spawn(self.logs.clone().pump(peer.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => peer.close(None).await,
            _ = peer.closed() => {}
        }
        let reason = done.await.unwrap_or(CloseReason::Local(None));
        statuses.abort();
        logs.abort();
        Ok(reason)
    }

    /// Runs sessions forever (until `shutdown`), reconnecting with backoff.
    pub async fn run(self: &Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let attempt_started = Instant::now();
            let outcome = self.session(&shutdown).await;
            match &outcome {
                Ok(reason) => tracing::warn!(%reason, "connection to the controller ended"),
                Err(e) => tracing::warn!(error = %e, "connecting to the controller failed"),
            }
            let lasted = attempt_started.elapsed() > Duration::from_secs(30);
            let ended = Ended::of(&outcome, lasted);
            if ended == Ended::Contested {
                tracing::warn!("another connection claims this server; retrying soon");
            }
            failures = Backoff::after(failures, ended);
            if shutdown.is_cancelled() {
                break;
            }
            let delay = self.config.backoff.delay(failures.saturating_sub(1));
            tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.engine.cancel_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molar_protocol::methods::Empty;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(500) && d0 <= Duration::from_secs(1));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8));
            let d30 = b.delay(30);
            assert!(d30 >= Duration::from_secs(60) && d30 <= Duration::from_secs(120));
        }
    }

    #[test]
    fn rss_and_uptime_are_read_from_proc() {
        let root = std::path::Path::new("/");
        assert!(rss_bytes(root).is_some_and(|b| b > 1 << 20));
        assert!(uptime_ms(root).is_some_and(|u| u > 0));
        assert_eq!(rss_bytes(std::path::Path::new("/nonexistent")), None);
    }

    struct Sleep;

    impl crate::tasks::Task for Sleep {
        type Params = Empty;
        async fn run(
            &self,
            _: Empty,
            ctx: crate::tasks::TaskContext,
        ) -> Result<Value, crate::tasks::TaskFailure> {
            ctx.cancel_token().cancelled().await;
            Err(crate::tasks::TaskFailure::cancelled())
        }
    }

    /// A controller that sends a task before answering the handshake, then refuses it: the
    /// command is answered `not_ready` and no task exists afterwards.
    #[tokio::test]
    async fn nothing_is_served_before_the_handshake_is_accepted() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut methods = Methods::new();
        methods.task("test.sleep", Sleep);
        let agent = Agent::new(
            AgentConfig::new(addr, Trust::Insecure, Secret::new("t")),
            methods,
            LogBuffer::new(1),
        );
        let session = tokio::spawn({
            let agent = agent.clone();
            async move { agent.session(&CancellationToken::new()).await }
        });
        let (sock, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = sock.into_split();
        let mut lines = BufReader::new(rd).lines();
        let hello: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(hello["method"], "handshake");
        wr.write_all(
            b"{\"version\":\"v1\",\"id\":\"c1\",\"method\":\"test.sleep\",\"params\":{\"task_id\":\"early\"}}\n",
        )
        .await
        .unwrap();
        let answer: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(answer["id"], "c1");
        assert_eq!(answer["error"]["code"], codes::NOT_READY, "{answer}");
        let refusal = serde_json::json!({
            "version": "v1",
            "id": hello["id"],
            "error": {"code": codes::UNAUTHORIZED, "msg": "unknown token"},
        });
        wr.write_all(format!("{refusal}\n").as_bytes())
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ended, Err(SessionError::Refused(_))), "{ended:?}");
        assert!(agent.engine().list().is_empty(), "a task was started");
    }

    /// A test-only catalogue-shaped method.
    struct Suffix;
    impl Method for Suffix {
        const NAME: &'static str = "test.suffix";
        const DIRECTION: molar_protocol::catalogue::Direction =
            molar_protocol::catalogue::Direction::ToAgent;
        const KIND: molar_protocol::catalogue::Kind = molar_protocol::catalogue::Kind::Call;
        type Params = TaskRef;
        type Result = TaskRef;
    }

    /// `handle::<M>` answers malformed params with `invalid_params` naming the method, before
    /// the handler runs, and encodes the typed result.
    #[tokio::test]
    async fn typed_handlers_decode_params_and_encode_results() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ran = Arc::new(AtomicBool::new(false));
        let mut m = Methods::new();
        let r = ran.clone();
        m.handle::<Suffix, _, _>(move |p| {
            r.store(true, Ordering::SeqCst);
            async move {
                Ok(TaskRef {
                    task_id: format!("{}!", p.task_id),
                })
            }
        });
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            m,
            LogBuffer::new(1),
        );
        for bad in [
            serde_json::json!({"task_id": 7}),
            serde_json::json!({"task_id": "a", "x": 1}),
            serde_json::json!([]),
        ] {
            let err = agent
                .clone()
                .dispatch(Suffix::NAME.into(), bad)
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::INVALID_PARAMS);
            assert!(
                err.msg.starts_with("invalid params for test.suffix"),
                "{err}"
            );
        }
        assert!(!ran.load(Ordering::SeqCst), "the handler ran on bad params");
        let ok = agent
            .dispatch(Suffix::NAME.into(), serde_json::json!({"task_id": "a"}))
            .await
            .unwrap();
        assert_eq!(ok, serde_json::json!({"task_id": "a!"}));
    }

    #[test]
    fn a_contest_for_the_session_resets_the_backoff() {
        let conflict = ErrorBody::new(codes::SESSION_CONFLICT, "server srv-1 has a live session");
        let unauthorized = ErrorBody::new(codes::UNAUTHORIZED, "invalid agent token");
        let superseded = Ok(CloseReason::RemoteFatal(SUPERSEDED.into()));
        let refused = |b: &ErrorBody| Err(SessionError::Refused(b.clone()));
        assert_eq!(Ended::of(&refused(&conflict), false), Ended::Contested);
        assert_eq!(Ended::of(&superseded, false), Ended::Contested);
        assert_eq!(Ended::of(&refused(&unauthorized), false), Ended::Failed);
        assert_eq!(Ended::of(&Ok(CloseReason::Eof), false), Ended::Short);
        assert_eq!(Ended::of(&Ok(CloseReason::Eof), true), Ended::Lasted);
        assert_eq!(
            Ended::of(
                &Ok(CloseReason::RemoteFatal("controller shutting down".into())),
                false
            ),
            Ended::Short
        );
        // Ten failures grow the delay to its cap; a contest brings it back to the minimum.
        let mut failures = 0;
        for _ in 0..10 {
            failures = Backoff::after(failures, Ended::Failed);
        }
        let b = Backoff::default();
        assert!(b.delay(failures.saturating_sub(1)) >= Duration::from_secs(60));
        failures = Backoff::after(failures, Ended::Contested);
        assert!(b.delay(failures.saturating_sub(1)) <= Duration::from_secs(1));
    }

    /// A fake controller's side of one handshake: reads it, answers with `answer` (a
    /// result or an error body as JSON), returns the handshake's params.
    async fn answer_handshake(
        listener: &tokio::net::TcpListener,
        answer: impl FnOnce(&Value) -> Value,
        then_close: bool,
    ) -> Value {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (sock, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = sock.into_split();
        let mut lines = BufReader::new(rd).lines();
        let hello: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let mut reply = answer(&hello);
        reply["version"] = "v1".into();
        reply["id"] = hello["id"].clone();
        wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        if then_close {
            wr.write_all(b"{\"version\":\"v1\",\"fatal_error\":\"test over\"}\n")
                .await
                .unwrap();
        }
        hello["params"].clone()
    }

    fn test_agent(addr: String, backoff: Backoff) -> Arc<Agent> {
        let mut cfg = AgentConfig::new(addr, Trust::Insecure, Secret::new("t"));
        cfg.backoff = backoff;
        Agent::new(cfg, Methods::new(), LogBuffer::new(1))
    }

    /// The credential of the first handshake is kept in memory and presented on the next.
    #[tokio::test]
    async fn the_session_credential_is_presented_on_every_reconnect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = test_agent(
            listener.local_addr().unwrap().to_string(),
            Backoff {
                min: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
        );
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let (agent, shutdown) = (agent.clone(), shutdown.clone());
            async move { agent.run(shutdown).await }
        });
        let welcome = |session: Option<&str>| {
            let mut r = serde_json::json!({"server_id": "srv-1", "protocol": "v1"});
            if let Some(s) = session {
                r["session"] = s.into();
            }
            serde_json::json!({ "result": r })
        };
        let first = answer_handshake(&listener, |_| welcome(Some("cred-1")), true).await;
        assert_eq!(first.get("session"), None, "{first}");
        // A reconnect answered without a new credential keeps the old one.
        let second = answer_handshake(&listener, |_| welcome(None), true).await;
        assert_eq!(second["session"], "cred-1");
        let third = answer_handshake(&listener, |_| welcome(None), true).await;
        assert_eq!(third["session"], "cred-1");
        assert_eq!(third["boot_id"], first["boot_id"]);
        assert!(!format!("{:?}", agent.session_credential()).contains("cred-1"));
        shutdown.cancel();
        run.await.unwrap();
    }

    /// Refused with `session_conflict` again and again, the agent keeps retrying at the
    /// minimum delay; refused for a bad token, it backs off.
    #[tokio::test]
    async fn an_agent_refused_for_a_session_conflict_is_not_starved() {
        async fn attempts_within(code: &'static str, window: Duration) -> usize {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let agent = test_agent(
                listener.local_addr().unwrap().to_string(),
                Backoff {
                    min: Duration::from_millis(40),
                    max: Duration::from_secs(10),
                },
            );
            let shutdown = CancellationToken::new();
            let run = tokio::spawn({
                let (agent, shutdown) = (agent.clone(), shutdown.clone());
                async move { agent.run(shutdown).await }
            });
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + window;
            while tokio::time::timeout_at(
                deadline,
                answer_handshake(
                    &listener,
                    |_| serde_json::json!({"error": {"code": code, "msg": "refused"}}),
                    false,
                ),
            )
            .await
            .is_ok()
            {
                n += 1;
            }
            shutdown.cancel();
            run.await.unwrap();
            n
        }
        let window = Duration::from_millis(1500);
        let contested = attempts_within(codes::SESSION_CONFLICT, window).await;
        let refused = attempts_within(codes::UNAUTHORIZED, window).await;
        // Backing off from 40 ms doubles to 1.28 s after 6 attempts; at the minimum (at
        // most 40 ms apart) 1.5 s holds well over 15.
        assert!(contested >= 15, "{contested} attempts while contested");
        assert!(refused <= 8, "{refused} attempts while unauthorized");
    }

    #[test]
    fn config_debug_never_shows_the_token() {
        let c = AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::new("s3cret-token"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
