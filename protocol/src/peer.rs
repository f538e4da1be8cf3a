//! The request/response engine both sides run on one connection.
//!
//! A [`Peer`] owns the stream: a reader loop decodes lines, answers `ping` itself, hands other
//! commands to a [`Handler`] (each in its own task, at most `max_in_flight` at once), and
//! routes responses to the [`PeerHandle::call`] awaiting them; a writer task serialises every
//! outgoing line so responses, commands and the final `fatal_error` leave in order.
//!
//! Liveness (DESIGN.md): after `keepalive_after` (20 s) without an inbound line the peer sends
//! a `ping`; after `idle_timeout` (60 s) without one it closes the connection. Any malformed
//! line without a usable id gets a `fatal_error` naming the problem and the connection closes;
//! a malformed command with a usable id gets an `error` response and the connection stays up.

use crate::catalogue::{Method, Ping};
use crate::codec::{CodecError, LineCodec};
use crate::message::{Command, ErrorBody, ErrorResponse, Fatal, Message, Success, codes};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Tunables of a connection. The defaults are DESIGN.md's.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Used in log lines, e.g. `agent` or `controller 10.0.0.5:41234`.
    pub name: String,
    /// Prefix of the ids this side generates; ids are unique per sender and connection.
    pub id_prefix: String,
    pub max_line: usize,
    /// How long [`PeerHandle::call`] waits for a response.
    pub call_timeout: Duration,
    /// Inbound silence after which a `ping` is sent.
    pub keepalive_after: Duration,
    /// Inbound silence after which the connection is closed.
    pub idle_timeout: Duration,
    /// Incoming commands handled concurrently; more are answered `busy`.
    pub max_in_flight: usize,
    /// Serve no command until a call made with [`PeerHandle::call_method_opening`] succeeded:
    /// until then every command is answered `not_ready` and reaches no handler. The agent's
    /// session opens with its handshake (DESIGN.md: "Until the handshake is accepted, the agent
    /// serves no command").
    pub gated: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            name: "peer".into(),
            id_prefix: String::new(),
            max_line: crate::codec::DEFAULT_MAX_LINE,
            call_timeout: Duration::from_secs(30),
            keepalive_after: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_in_flight: 256,
            gated: false,
        }
    }
}

/// Answers the commands the other side sends (except `ping`, which the peer answers).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: &PeerHandle,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, ErrorBody>>;
}

impl<F> Handler for F
where
    F: Fn(&PeerHandle, String, Value) -> BoxFuture<'static, Result<Value, ErrorBody>>
        + Send
        + Sync
        + 'static,
{
    fn handle(
        &self,
        peer: &PeerHandle,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, ErrorBody>> {
        self(peer, method, params)
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The other side closed the stream on a line boundary.
    Eof,
    /// The other side closed the stream in the middle of a line.
    Truncated(usize),
    /// The other side sent `fatal_error`.
    RemoteFatal(String),
    /// The other side broke the protocol; we sent `fatal_error` with this message.
    ProtocolViolation(String),
    /// Closed on this side through [`PeerHandle::close`], with the fatal message sent, if any.
    Local(Option<String>),
    /// Nothing arrived for `idle_timeout`.
    IdleTimeout,
    /// The stream failed.
    Io(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Eof => write!(f, "closed by the other side"),
            CloseReason::Truncated(n) => {
                write!(
                    f,
                    "closed by the other side in the middle of a line ({n} bytes)"
                )
            }
            CloseReason::RemoteFatal(m) => write!(f, "fatal error from the other side: {m}"),
            CloseReason::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            CloseReason::Local(Some(m)) => write!(f, "closed locally: {m}"),
            CloseReason::Local(None) => write!(f, "closed locally"),
            CloseReason::IdleTimeout => write!(f, "no message received within the idle timeout"),
            CloseReason::Io(m) => write!(f, "connection i/o: {m}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Remote(ErrorBody),
    #[error("no response to {method} within {after:?}")]
    Timeout { method: String, after: Duration },
    #[error("connection closed")]
    Closed,
    #[error("{method} message exceeds the maximum line length of {max} bytes")]
    TooLong { method: String, max: usize },
    #[error("encoding params of {method}: {msg}")]
    Encode { method: String, msg: String },
    #[error("unexpected result of {method}: {msg}")]
    BadResult { method: String, msg: String },
}

impl CallError {
    /// The error as a wire body, e.g. to relay it to an API client.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            CallError::Remote(b) => b.clone(),
            CallError::Timeout { .. } => ErrorBody::new(codes::TIMEOUT, self.to_string()),
            CallError::Closed => ErrorBody::new(codes::NOT_CONNECTED, self.to_string()),
            CallError::TooLong { .. } | CallError::Encode { .. } => {
                ErrorBody::new(codes::INVALID_PARAMS, self.to_string())
            }
            CallError::BadResult { .. } => ErrorBody::new(codes::INTERNAL, self.to_string()),
        }
    }
}

enum Out {
    Line(String),
    Close(Option<String>),
}

type Pending = HashMap<String, oneshot::Sender<Result<Value, ErrorBody>>>;

struct Shared {
    name: String,
    id_prefix: String,
    max_line: usize,
    call_timeout: Duration,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    out: mpsc::Sender<Out>,
    /// Set when the connection starts closing: calls fail fast from then on.
    closing: CancellationToken,
    /// Set when the reader and writer have both ended.
    closed: CancellationToken,
    /// Whether commands are served (see [`PeerConfig::gated`]).
    open: AtomicBool,
    /// The id of the call whose success opens a gated peer.
    opening: Mutex<Option<String>>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned map only means a panic elsewhere while holding it; the map itself is
        // still consistent (single insert/remove operations).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cheap, cloneable handle to a running connection.
#[derive(Clone)]
pub struct PeerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHandle")
            .field("name", &self.shared.name)
            .field("closing", &self.shared.closing.is_cancelled())
            .finish()
    }
}

/// Removes a pending call's entry when the call is abandoned (timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
    }
}

impl PeerHandle {
    /// Sends a command and waits for its response, with the configured timeout.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_timeout(method, params, self.shared.call_timeout)
            .await
    }

    /// Sends a command and waits at most `after` for its response.
    pub async fn call_timeout(
        &self,
        method: &str,
        params: Value,
        after: Duration,
    ) -> Result<Value, CallError> {
        self.exchange(method, params, after, false).await
    }

    async fn exchange(
        &self,
        method: &str,
        params: Value,
        after: Duration,
        opens: bool,
    ) -> Result<Value, CallError> {
        let shared = &*self.shared;
        if shared.closing.is_cancelled() {
            return Err(CallError::Closed);
        }
        let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", shared.id_prefix);
        if opens {
            *shared.opening.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        }
        let line = Message::Command(Command {
            id: id.clone(),
            method: method.to_owned(),
            params,
        })
        .encode();
        if line.len() > shared.max_line {
            return Err(CallError::TooLong {
                method: method.to_owned(),
                max: shared.max_line,
            });
        }
        let (tx, rx) = oneshot::channel();
        shared.pending().insert(id.clone(), tx);
        let _guard = PendingGuard { shared, id };
        let exchange = async {
            if shared.out.send(Out::Line(line)).await.is_err() {
                return Err(CallError::Closed);
            }
            match rx.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(body)) => Err(CallError::Remote(body)),
                Err(_) => Err(CallError::Closed),
            }
        };
        // Biased: an answer already read wins over the close that followed it (a refused
        // handshake is an error response and then a fatal; both may be read before this
        // task runs, and the caller must see the refusal, not just "closed").
        tokio::select! {
            biased;
            r = tokio::time::timeout(after, exchange) => r.unwrap_or_else(|_| Err(CallError::Timeout {
                method: method.to_owned(),
                after,
            })),
            _ = shared.closing.cancelled() => Err(CallError::Closed),
        }
    }

    /// A typed call of a [`Method`].
    pub async fn call_method<M: Method>(&self, params: &M::Params) -> Result<M::Result, CallError> {
        self.typed::<M>(params, false).await
    }

    /// A typed call whose success opens a [gated](PeerConfig::gated) peer: the reader marks
    /// the peer open when it reads the success response, before it reads the next line, so
    /// a command the other side sends right after answering is served, and one it sent
    /// before answering is not.
    pub async fn call_method_opening<M: Method>(
        &self,
        params: &M::Params,
    ) -> Result<M::Result, CallError> {
        self.typed::<M>(params, true).await
    }

    async fn typed<M: Method>(
        &self,
        params: &M::Params,
        opens: bool,
    ) -> Result<M::Result, CallError> {
        let params = serde_json::to_value(params).map_err(|e| CallError::Encode {
            method: M::NAME.to_owned(),
            msg: e.to_string(),
        })?;
        let v = self
            .exchange(M::NAME, params, self.shared.call_timeout, opens)
            .await?;
        serde_json::from_value(v).map_err(|e| CallError::BadResult {
            method: M::NAME.to_owned(),
            msg: e.to_string(),
        })
    }

    /// Closes the connection after the lines already queued, sending `fatal_error` first when
    /// `fatal` is given.
    pub async fn close(&self, fatal: Option<String>) {
        let queued = tokio::time::timeout(
            Duration::from_secs(2),
            self.shared.out.send(Out::Close(fatal)),
        )
        .await;
        if !matches!(queued, Ok(Ok(()))) {
            self.shared.closing.cancel();
        }
    }

    /// Whether the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.is_cancelled()
    }

    /// Resolves once the connection is fully closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// Starts the engine on a stream.
pub struct Peer;

impl Peer {
    /// Runs a connection on `stream`. The returned task ends when the connection does and
    /// tells why.
    pub fn spawn<S>(
        stream: S,
        handler: Arc<dyn Handler>,
        config: PeerConfig,
    ) -> (PeerHandle, JoinHandle<CloseReason>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            id_prefix: config.id_prefix.clone(),
            max_line: config.max_line,
            call_timeout: config.call_timeout,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            out: out_tx,
            closing: CancellationToken::new(),
            closed: CancellationToken::new(),
            open: AtomicBool::new(!config.gated),
            opening: Mutex::new(None),
        });
        let handle = PeerHandle { shared };
        let (rd, wr) = tokio::io::split(stream);
        let reader = FramedRead::new(rd, LineCodec::new(config.max_line));
        // Outgoing commands and responses are checked against `max_line` before they are
        // queued; the slack only lets a `fatal_error` about an over-long line through.
        let writer = FramedWrite::new(wr, LineCodec::new(config.max_line.saturating_add(4096)));
        let writer_task = tokio::spawn(write_loop(
            writer,
            out_rx,
            handle.shared.clone(),
            config.idle_timeout,
        ));
        let task = tokio::spawn(read_loop(
            reader,
            writer_task,
            handler,
            handle.clone(),
            config,
        ));
        (handle, task)
    }
}

async fn write_loop<W>(
    mut sink: FramedWrite<W, LineCodec>,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
    stall: Duration,
) -> Option<String>
where
    W: AsyncWrite + Send + Unpin,
{
    let mut sent_fatal = None;
    loop {
        let out = tokio::select! {
            biased;
            out = rx.recv() => out,
            _ = shared.closing.cancelled() => break,
        };
        match out {
            Some(Out::Line(line)) => {
                // A peer that stops reading (a zero TCP window) must not hold the connection,
                // its queue and the reader behind it for ever.
                match tokio::time::timeout(stall, sink.send(line)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %shared.name, error = %e, "write failed");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %shared.name, "the other side stopped reading; closing");
                        break;
                    }
                }
            }
            Some(Out::Close(fatal)) => {
                if let Some(msg) = fatal {
                    let line = Message::Fatal(Fatal {
                        fatal_error: msg.clone(),
                    })
                    .encode();
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(line)).await;
                    sent_fatal = Some(msg);
                }
                break;
            }
            None => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), SinkExt::<String>::close(&mut sink)).await;
    shared.closing.cancel();
    sent_fatal
}

struct Reader {
    handle: PeerHandle,
    handler: Arc<dyn Handler>,
    permits: Arc<Semaphore>,
}

enum Flow {
    Continue,
    Stop(CloseReason),
}

impl Reader {
    async fn send(&self, msg: Message) {
        // Fails only when the writer has ended, and then the reader stops at its next step.
        let _ = self.handle.shared.out.send(Out::Line(msg.encode())).await;
    }

    async fn fatal(&self, msg: String) -> Flow {
        let _ = self
            .handle
            .shared
            .out
            .send(Out::Close(Some(msg.clone())))
            .await;
        Flow::Stop(CloseReason::ProtocolViolation(msg))
    }

    async fn on_line(&self, line: String) -> Flow {
        if line.trim().is_empty() {
            return Flow::Continue;
        }
        let shared = &self.handle.shared;
        match Message::decode(&line) {
            Ok(Message::Command(c)) if c.method == Ping::NAME => {
                self.send(Message::Success(Success {
                    id: c.id,
                    result: c.params,
                }))
                .await;
            }
            Ok(Message::Command(c)) if !shared.open.load(Ordering::Acquire) => {
                let error = ErrorBody::new(
                    codes::NOT_READY,
                    format!(
                        "{} refused: nothing is served before the handshake is accepted",
                        c.method
                    ),
                );
                self.send(Message::Error(ErrorResponse { id: c.id, error }))
                    .await;
            }
            Ok(Message::Command(c)) => {
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    let error = ErrorBody::new(
                        codes::BUSY,
                        format!("too many commands in flight, {} is refused", c.method),
                    );
                    self.send(Message::Error(ErrorResponse { id: c.id, error }))
                        .await;
                    return Flow::Continue;
                };
                let method = c.method.clone();
                let fut = self.handler.handle(&self.handle, c.method, c.params);
                let out = shared.out.clone();
                let name = shared.name.clone();
                let max_line = shared.max_line;
                tokio::spawn(async move {
                    let result = AssertUnwindSafe(fut).catch_unwind().await;
                    let msg = match result {
                        Ok(Ok(result)) => Message::Success(Success { id: c.id, result }),
                        Ok(Err(error)) => Message::Error(ErrorResponse { id: c.id, error }),
                        Err(_) => {
                            tracing::error!(peer = %name, %method, "handler panicked");
                            Message::Error(ErrorResponse {
                                id: c.id,
                                error: ErrorBody::new(
                                    codes::INTERNAL,
                                    format!("internal error while handling {method}"),
                                ),
                            })
                        }
                    };
                    let mut line = msg.encode();
                    if line.len() > max_line {
                        let id = match msg {
                            Message::Success(s) => s.id,
                            Message::Error(e) => e.id,
                            _ => unreachable!("only responses are built above"),
                        };
                        let error = ErrorBody::new(
                            codes::INTERNAL,
                            format!(
                                "response to {method} exceeds the maximum line length of {max_line} bytes"
                            ),
                        );
                        line = Message::Error(ErrorResponse { id, error }).encode();
                    }
                    let _ = out.send(Out::Line(line)).await;
                    drop(permit);
                });
            }
            Ok(Message::Success(s)) => self.complete(&s.id, Ok(s.result)),
            Ok(Message::Error(e)) => self.complete(&e.id, Err(e.error)),
            Ok(Message::Fatal(f)) => {
                return Flow::Stop(CloseReason::RemoteFatal(f.fatal_error));
            }
            Err(e) => {
                if let Some(id) = e.reply_id() {
                    let error = ErrorBody::new(codes::INVALID_REQUEST, e.to_string());
                    self.send(Message::Error(ErrorResponse {
                        id: id.to_owned(),
                        error,
                    }))
                    .await;
                } else {
                    return self.fatal(e.to_string()).await;
                }
            }
        }
        Flow::Continue
    }

    fn complete(&self, id: &str, result: Result<Value, ErrorBody>) {
        let shared = &self.handle.shared;
        if result.is_ok() {
            let mut opening = shared.opening.lock().unwrap_or_else(|p| p.into_inner());
            if opening.as_deref() == Some(id) {
                *opening = None;
                shared.open.store(true, Ordering::Release);
            }
        }
        let waiter = shared.pending().remove(id);
        match waiter {
            // The caller may have given up meanwhile (timeout): nothing to do.
            Some(tx) => drop(tx.send(result)),
            None => tracing::warn!(peer = %shared.name, id, "response to unknown id ignored"),
        }
    }
}

async fn read_loop<R>(
    mut lines: FramedRead<R, LineCodec>,
    writer: JoinHandle<Option<String>>,
    handler: Arc<dyn Handler>,
    handle: PeerHandle,
    config: PeerConfig,
) -> CloseReason
where
    R: AsyncRead + Send + Unpin,
{
    let reader = Reader {
        handle: handle.clone(),
        handler,
        permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
    };
    let shared = handle.shared.clone();
    let mut last_in = Instant::now();
    let mut last_ping: Option<Instant> = None;
    let reason = loop {
        let ping_due = last_ping.map_or(last_in, |p| p.max(last_in)) + config.keepalive_after;
        let idle_due = last_in + config.idle_timeout;
        let tick = ping_due.min(idle_due);
        tokio::select! {
            _ = shared.closing.cancelled() => break CloseReason::Local(None),
            frame = lines.next() => {
                let flow = match frame {
                    None => Flow::Stop(CloseReason::Eof),
                    Some(Ok(line)) => {
                        last_in = Instant::now();
                        reader.on_line(line).await
                    }
                    Some(Err(CodecError::Truncated { len })) => Flow::Stop(CloseReason::Truncated(len)),
                    Some(Err(CodecError::Io(e))) => Flow::Stop(CloseReason::Io(e.to_string())),
                    Some(Err(e)) => reader.fatal(e.to_string()).await,
                };
                if let Flow::Stop(reason) = flow {
                    break reason;
                }
            }
            _ = tokio::time::sleep_until(tick) => {
                let now = Instant::now();
                if now >= idle_due {
                    let msg = format!("no message received for {} s", config.idle_timeout.as_secs());
                    let _ = shared.out.send(Out::Close(Some(msg))).await;
                    break CloseReason::IdleTimeout;
                }
                if now >= ping_due {
                    last_ping = Some(now);
                    let h = handle.clone();
                    tokio::spawn(async move {
                        let _ = h.call(Ping::NAME, serde_json::json!({})).await;
                    });
                }
            }
        }
    };
    // Let the writer flush what is queued (responses, the fatal line) before closing.
    if !matches!(
        reason,
        CloseReason::ProtocolViolation(_) | CloseReason::IdleTimeout
    ) {
        shared.closing.cancel();
    }
    let sent = tokio::time::timeout(Duration::from_secs(3), writer).await;
    shared.closing.cancel();
    shared.pending().clear();
    shared.closed.cancel();
    match (reason, sent) {
        (CloseReason::Local(None), Ok(Ok(Some(msg)))) => CloseReason::Local(Some(msg)),
        (reason, _) => {
            tracing::debug!(peer = %shared.name, %reason, "connection ended");
            reason
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    fn echo_handler() -> Arc<dyn Handler> {
        Arc::new(|_: &PeerHandle, method: String, params: Value| {
            async move {
                match method.as_str() {
                    "echo" => Ok(params),
                    "sleep" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(json!({}))
                    }
                    "panic" => panic!("boom"),
                    _ => Err(ErrorBody::new(
                        codes::UNKNOWN_METHOD,
                        format!("unknown method {method}"),
                    )),
                }
            }
            .boxed()
        })
    }

    fn cfg(name: &str) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            id_prefix: format!("{name}-"),
            ..PeerConfig::default()
        }
    }

    /// A peer on one end, raw lines on the other.
    struct Raw {
        rd: BufReader<tokio::io::ReadHalf<DuplexStream>>,
        wr: tokio::io::WriteHalf<DuplexStream>,
    }

    impl Raw {
        async fn send(&mut self, line: &str) {
            self.wr.write_all(line.as_bytes()).await.unwrap();
            self.wr.write_all(b"\n").await.unwrap();
        }
        async fn recv(&mut self) -> Option<Value> {
            let mut s = String::new();
            let n = self.rd.read_line(&mut s).await.unwrap();
            (n > 0).then(|| serde_json::from_str(&s).unwrap())
        }
    }

    fn raw_pair(config: PeerConfig) -> (PeerHandle, JoinHandle<CloseReason>, Raw) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (h, t) = Peer::spawn(a, echo_handler(), config);
        let (rd, wr) = tokio::io::split(b);
        (
            h,
            t,
            Raw {
                rd: BufReader::new(rd),
                wr,
            },
        )
    }

    /// A gated peer serves nothing before its opening call succeeded; the command the other
    /// side sends right after its success response is served (the reader opens the gate
    /// before it reads on); a refused opening call leaves it closed.
    #[tokio::test]
    async fn a_gated_peer_serves_only_after_its_opening_call_succeeded() {
        for accept in [true, false] {
            let (h, _t, mut raw) = raw_pair(PeerConfig {
                gated: true,
                ..cfg("agent")
            });
            let opening = tokio::spawn({
                let h = h.clone();
                async move {
                    h.call_method_opening::<crate::catalogue::Ping>(&serde_json::Map::new())
                        .await
                }
            });
            let hello = raw.recv().await.unwrap();
            assert_eq!(hello["method"], "ping");
            raw.send(r#"{"version":"v1","id":"early","method":"echo","params":{"a":1}}"#)
                .await;
            let early = raw.recv().await.unwrap();
            assert_eq!(early["id"], "early");
            assert_eq!(early["error"]["code"], codes::NOT_READY, "{early}");
            let answer = if accept {
                json!({"version": "v1", "id": hello["id"], "result": {}})
            } else {
                json!({"version": "v1", "id": hello["id"],
                    "error": {"code": "unauthorized", "msg": "no"}})
            };
            // The answer and the next command arrive in one write: no time for the caller to
            // run in between.
            let next = r#"{"version":"v1","id":"next","method":"echo","params":{"b":2}}"#;
            raw.wr
                .write_all(format!("{answer}\n{next}\n").as_bytes())
                .await
                .unwrap();
            let reply = raw.recv().await.unwrap();
            assert_eq!(reply["id"], "next");
            if accept {
                assert_eq!(reply["result"], json!({"b": 2}), "{reply}");
                assert!(opening.await.unwrap().is_ok());
            } else {
                assert_eq!(reply["error"]["code"], codes::NOT_READY, "{reply}");
                assert!(opening.await.unwrap().is_err());
            }
        }
    }

    #[tokio::test]
    async fn two_peers_call_each_other() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ha, _) = Peer::spawn(a, echo_handler(), cfg("a"));
        let (hb, _) = Peer::spawn(b, echo_handler(), cfg("b"));
        assert_eq!(
            ha.call("echo", json!({"x":1})).await.unwrap(),
            json!({"x":1})
        );
        assert_eq!(
            hb.call("ping", json!({"y":2})).await.unwrap(),
            json!({"y":2})
        );
        let err = ha.call("nope", json!({})).await.unwrap_err();
        assert_eq!(
            err,
            CallError::Remote(ErrorBody::new(codes::UNKNOWN_METHOD, "unknown method nope"))
        );
        // Concurrent calls are matched by id, not by order.
        let (r1, r2) = tokio::join!(
            ha.call("echo", json!({"n":1})),
            ha.call("echo", json!({"n":2}))
        );
        assert_eq!((r1.unwrap(), r2.unwrap()), (json!({"n":1}), json!({"n":2})));
    }

    #[tokio::test]
    async fn exact_replies_to_bad_input() {
        let (_h, task, mut raw) = raw_pair(cfg("p"));
        raw.send(r#"{"version":"v1","id":"1","method":"ping","params":{"x":1}}"#)
            .await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","id":"1","result":{"x":1}})
        );
        raw.send(r#"{"version":"v1","id":"2","method":"frob"}"#)
            .await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","id":"2","error":{"msg":"unknown method frob","code":"unknown_method"}})
        );
        raw.send(r#"{"version":"v1","id":"3","method":"echo","params":"x"}"#)
            .await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","id":"3","error":{
                "msg":"invalid command \"3\": \"params\" must be an object, not a string",
                "code":"invalid_request"}})
        );
        raw.send(r#"{"version":"v1","id":"4","method":"panic"}"#)
            .await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","id":"4","error":{"msg":"internal error while handling panic","code":"internal"}})
        );
        // A response to an unknown id is ignored: the connection stays up.
        raw.send(r#"{"version":"v1","id":"zzz","result":{}}"#).await;
        raw.send(r#"{"version":"v1","id":"5","method":"ping"}"#)
            .await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","id":"5","result":{}})
        );
        raw.send("this is not json").await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","fatal_error":"line is not valid JSON: expected ident at line 1 column 2"})
        );
        assert_eq!(raw.recv().await, None);
        assert_eq!(
            task.await.unwrap(),
            CloseReason::ProtocolViolation(
                "line is not valid JSON: expected ident at line 1 column 2".into()
            )
        );
    }

    #[tokio::test]
    async fn fatal_cases_each_name_the_problem() {
        let cases = [
            ("[1]", "message is not a JSON object but an array"),
            (
                r#"{"version":"v1","method":"ping"}"#,
                "command has no usable \"id\": field is missing",
            ),
            (
                r#"{"version":"v9","id":"1","method":"ping"}"#,
                "unsupported protocol version \"v9\", only \"v1\" is spoken",
            ),
        ];
        for (line, msg) in cases {
            let (_h, task, mut raw) = raw_pair(cfg("p"));
            raw.send(line).await;
            assert_eq!(
                raw.recv().await.unwrap(),
                json!({"version":"v1","fatal_error": msg})
            );
            assert_eq!(
                task.await.unwrap(),
                CloseReason::ProtocolViolation(msg.into())
            );
        }
        let (_h, task, mut raw) = raw_pair(PeerConfig {
            max_line: 64,
            ..cfg("p")
        });
        raw.send(&"x".repeat(100)).await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","fatal_error":"line exceeds the maximum length of 64 bytes"})
        );
        assert!(matches!(
            task.await.unwrap(),
            CloseReason::ProtocolViolation(_)
        ));
    }

    #[tokio::test]
    async fn truncated_line_and_clean_close_are_told_apart() {
        let (_h, task, mut raw) = raw_pair(cfg("p"));
        raw.wr.write_all(b"{\"version\":").await.unwrap();
        raw.wr.shutdown().await.unwrap();
        drop(raw);
        assert_eq!(task.await.unwrap(), CloseReason::Truncated(11));
        let (_h, task, raw) = raw_pair(cfg("p"));
        drop(raw);
        assert_eq!(task.await.unwrap(), CloseReason::Eof);
    }

    /// A refusal followed at once by the fatal close (how a controller refuses a handshake):
    /// the caller gets the refusal, however the two lines are scheduled.
    #[tokio::test]
    async fn an_answer_read_before_the_close_is_not_lost_to_it() {
        for _ in 0..50 {
            let (h, task, mut raw) = raw_pair(cfg("p"));
            let call = tokio::spawn({
                let h = h.clone();
                async move { h.call("handshake", json!({})).await }
            });
            let cmd = raw.recv().await.unwrap();
            let id = cmd["id"].as_str().unwrap();
            let lines = format!(
                "{{\"version\":\"v1\",\"id\":\"{id}\",\"error\":{{\"code\":\"unauthorized\",\"msg\":\"no\"}}}}\n{{\"version\":\"v1\",\"fatal_error\":\"handshake failed: no\"}}\n"
            );
            raw.wr.write_all(lines.as_bytes()).await.unwrap();
            assert_eq!(
                call.await.unwrap(),
                Err(CallError::Remote(ErrorBody::new("unauthorized", "no")))
            );
            let _ = task.await;
        }
    }

    #[tokio::test]
    async fn close_sends_fatal_after_queued_lines_and_fails_pending_calls() {
        let (h, task, mut raw) = raw_pair(cfg("p"));
        let call = tokio::spawn({
            let h = h.clone();
            async move { h.call("status", json!({})).await }
        });
        let cmd = raw.recv().await.unwrap();
        assert_eq!(cmd["method"], "status");
        h.close(Some("bad token".into())).await;
        assert_eq!(
            raw.recv().await.unwrap(),
            json!({"version":"v1","fatal_error":"bad token"})
        );
        assert_eq!(call.await.unwrap(), Err(CallError::Closed));
        assert_eq!(
            task.await.unwrap(),
            CloseReason::Local(Some("bad token".into()))
        );
        assert_eq!(h.call("x", json!({})).await, Err(CallError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_ping_then_idle_close() {
        let (_h, task, mut raw) = raw_pair(cfg("p"));
        // 20 s of silence: the peer pings.
        let ping = raw.recv().await.unwrap();
        assert_eq!(ping["method"], "ping");
        // Answering keeps it alive; staying silent 60 s closes it.
        raw.send(&json!({"version":"v1","id":ping["id"],"result":{}}).to_string())
            .await;
        let ping2 = raw.recv().await.unwrap();
        assert_eq!(ping2["method"], "ping");
        let ping3 = raw.recv().await.unwrap();
        assert_eq!(ping3["method"], "ping");
        let fatal = raw.recv().await.unwrap();
        assert_eq!(
            fatal,
            json!({"version":"v1","fatal_error":"no message received for 60 s"})
        );
        assert_eq!(task.await.unwrap(), CloseReason::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn call_times_out_and_late_answer_is_ignored() {
        let (h, _task, mut raw) = raw_pair(PeerConfig {
            call_timeout: Duration::from_secs(2),
            ..cfg("p")
        });
        let call = tokio::spawn({
            let h = h.clone();
            async move { h.call("status", json!({})).await }
        });
        let cmd = raw.recv().await.unwrap();
        let r = call.await.unwrap();
        assert_eq!(
            r,
            Err(CallError::Timeout {
                method: "status".into(),
                after: Duration::from_secs(2)
            })
        );
        raw.send(&json!({"version":"v1","id":cmd["id"],"result":{}}).to_string())
            .await;
        raw.send(r#"{"version":"v1","id":"9","method":"ping"}"#)
            .await;
        assert_eq!(raw.recv().await.unwrap()["id"], "9");
    }

    /// A peer that keeps talking but never reads fills the pipe; the writer gives up after
    /// the idle timeout instead of holding the connection for ever.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_closed() {
        let (a, b) = tokio::io::duplex(256);
        let (_h, task) = Peer::spawn(a, echo_handler(), cfg("p"));
        let (_rd, mut wr) = tokio::io::split(b);
        let big = "y".repeat(100);
        let talk = tokio::spawn(async move {
            for i in 0.. {
                let line = format!(
                    "{{\"version\":\"v1\",\"id\":\"{i}\",\"method\":\"ping\",\"params\":{{\"p\":\"{big}\"}}}}\n"
                );
                if wr.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let reason = tokio::time::timeout(Duration::from_secs(600), task)
            .await
            .expect("the connection ends")
            .unwrap();
        assert!(matches!(reason, CloseReason::Local(_)), "{reason:?}");
        talk.abort();
    }

    #[tokio::test]
    async fn too_many_in_flight_is_busy_not_fatal() {
        let (_h, _task, mut raw) = raw_pair(PeerConfig {
            max_in_flight: 1,
            ..cfg("p")
        });
        raw.send(r#"{"version":"v1","id":"1","method":"sleep"}"#)
            .await;
        raw.send(r#"{"version":"v1","id":"2","method":"sleep"}"#)
            .await;
        let r = raw.recv().await.unwrap();
        assert_eq!(r["id"], "2");
        assert_eq!(r["error"]["code"], "busy");
    }
}
