//! The agent listener: accepts agent connections (TLS, or plaintext only when explicitly
//! allowed), runs the `handshake`, then hands the connection to a protocol [`Peer`] that
//! serves the agent's commands (`log`, `task_status`; `ping` is answered by the peer).
//!
//! Shape of tokio's mini-redis `server.rs`: [`run`] takes the bound listener and a shutdown
//! token, one task per connection, a connection cap (a semaphore taken before `accept`, so an
//! overloaded controller leaves new agents in the kernel's backlog instead of dropping them),
//! and a drain on exit. The handshake is read here, before the peer starts, so that nothing
//! — not even a `ping` — is served to an agent that has not authenticated.
//!
//! Unauthenticated connections get a budget of their own (issue #9): a connection holds a
//! pre-handshake permit from `accept` until its `handshake` is answered, and one that finds
//! the budget spent is closed at once. Sockets that never authenticate thus hold at most
//! that many of the connection cap's places, and the rest stays the agents'. The TLS
//! handshake (with the wait for the first byte) has its own deadline, then the `handshake`
//! command its own.

use crate::admission::{self, Admission};
use crate::fleet::{Fleet, LiveAgent, TOKEN_REVOKED, token_hash};
use crate::identity::identity_key;
use crate::store::{
    NewEvent, Registration, ServerRecord, ServerState, SessionGrant, StatusOutcome, StoreError,
    now_ms,
};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use molar_protocol::catalogue::{Handshake, Log, Method, TaskStatusUpdate};
use molar_protocol::methods::{
    HandshakeParams, HandshakeResult, LogParams, SUPERSEDED, TaskStatus, parse_params,
};
use molar_protocol::{
    Command, ErrorBody, ErrorResponse, Handler, LineCodec, Message, Peer, PeerConfig, PeerHandle,
    Secret, Success, VERSION, codes,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The one line a plaintext client gets from the TLS-only listener before it is closed.
pub const PLAINTEXT_REFUSAL: &str = r#"{"version":"v1","fatal_error":"this listener requires TLS; connect with TLS or start the controller with --allow-plaintext-agents"}"#;

/// Default [`ListenerConfig::pre_handshake`]: four times the fan-in benchmark's ramp of 256
/// concurrent handshakes, 5 % of the default connection cap.
pub const DEFAULT_PRE_HANDSHAKE: usize = 1024;

/// Tunables of the agent listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub tls: Arc<rustls::ServerConfig>,
    /// Serve connections whose first byte is `{` in plaintext (lab only).
    pub allow_plaintext: bool,
    /// Connections held at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections held at once that have not yet been answered their `handshake`; one more
    /// is closed at once. It bounds concurrent handshakes, not sessions: a fleet reconnecting
    /// after a controller restart handshakes a few hundred at a time (agents retry with
    /// backoff, the fan-in benchmark ramps 256 at a time), well inside the default
    /// [`DEFAULT_PRE_HANDSHAKE`], while unauthenticated sockets can never take more than
    /// that share of `max_connections`.
    pub pre_handshake: usize,
    /// Time allowed for the first byte and the TLS handshake together.
    pub tls_handshake_timeout: Duration,
    /// Time allowed for the `handshake` command once the transport is up.
    pub handshake_timeout: Duration,
    /// Base configuration of every agent connection's peer.
    pub peer: PeerConfig,
}

impl ListenerConfig {
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        ListenerConfig {
            tls,
            allow_plaintext: false,
            max_connections: 20_000,
            pre_handshake: DEFAULT_PRE_HANDSHAKE,
            tls_handshake_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            peer: Self::default_peer(),
        }
    }

    /// DESIGN.md's timeouts; the controller's command ids start with `c`.
    pub fn default_peer() -> PeerConfig {
        PeerConfig {
            name: "controller".into(),
            id_prefix: "c".into(),
            ..PeerConfig::default()
        }
    }
}

/// Why a connection ended before or during its handshake (logged, never sent as is).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("reading the first byte from {addr}: {source}")]
    Peek {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} sent nothing within {after:?}")]
    Silent { addr: SocketAddr, after: Duration },
    #[error("writing to {addr}: {source}")]
    Write {
        addr: SocketAddr,
        source: molar_protocol::CodecError,
    },
    #[error("handshake from {addr} refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },
}

impl ConnectionError {
    pub fn code(&self) -> &'static str {
        match self {
            ConnectionError::Refused { .. } => codes::UNAUTHORIZED,
            ConnectionError::Silent { .. } => codes::TIMEOUT,
            _ => codes::IO,
        }
    }
}

/// Accepts agent connections until `shutdown`, then closes them all and waits for them.
pub async fn run(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    cfg: ListenerConfig,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let unauthenticated = Arc::new(Semaphore::new(cfg.pre_handshake.max(1)));
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls.clone());
    let cfg = Arc::new(cfg);
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an agent connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(pre) = unauthenticated.clone().try_acquire_owned() else {
            // Closed at once (its cap permit with it): waiting would let idle sockets queue
            // up behind idle sockets. Debug only: a flood must not flood the log too.
            tracing::debug!(peer = %addr, "pre-handshake budget spent; connection closed");
            drop(stream);
            continue;
        };
        let fleet = fleet.clone();
        let cfg = cfg.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = connection(stream, addr, acceptor, fleet, &cfg, pre, shutdown).await {
                match e {
                    ConnectionError::Tls { .. } => tracing::warn!(peer = %addr, "{e}"),
                    _ => tracing::info!(peer = %addr, "{e}"),
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("agent connections still open 10 s after shutdown");
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    fleet: Arc<Fleet>,
    cfg: &ListenerConfig,
    pre: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + cfg.tls_handshake_timeout;
    let silent = || ConnectionError::Silent {
        addr,
        after: cfg.tls_handshake_timeout,
    };
    let mut first = [0u8; 1];
    let n = tokio::select! {
        r = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => match r {
            Ok(r) => r.map_err(|source| ConnectionError::Peek { addr, source })?,
            Err(_) => return Err(silent()),
        },
        _ = shutdown.cancelled() => return Ok(()),
    };
    if n == 0 {
        return Ok(());
    }
    if first[0] == b'{' {
        if cfg.allow_plaintext {
            tracing::warn!(peer = %addr, "serving an agent in plaintext (--allow-plaintext-agents)");
            return serve(stream, addr, fleet, cfg, pre, shutdown).await;
        }
        tracing::warn!(peer = %addr, "plaintext client on the TLS agent listener refused");
        let mut stream = stream;
        let _ = stream
            .write_all(format!("{PLAINTEXT_REFUSAL}\n").as_bytes())
            .await;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    // Boxed: the TLS handshake's state is large and short-lived (see `serve`).
    let tls = tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(stream)))
        .await
        .map_err(|_| silent())?
        .map_err(|source| ConnectionError::Tls { addr, source })?;
    serve(tls, addr, fleet, cfg, pre, shutdown).await
}

/// What the first line of a connection led to.
enum Opening {
    Accepted {
        id: String,
        params: Box<HandshakeParams>,
    },
    /// Answer `reply` (if any), then close with this fatal message.
    Refused {
        reply: Option<ErrorResponse>,
        fatal: String,
    },
    /// The client went away.
    Gone,
}

fn refuse(id: String, code: &str, msg: String, fatal: String) -> Opening {
    Opening::Refused {
        reply: Some(ErrorResponse {
            id,
            error: ErrorBody::new(code, msg),
        }),
        fatal,
    }
}

/// Judges the first line: it must be a well-formed `handshake` speaking v1.
fn opening(line: &str) -> Opening {
    match Message::decode(line) {
        Ok(Message::Command(Command { id, method, params })) if method == Handshake::NAME => {
            let params: HandshakeParams = match parse_params(Handshake::NAME, params) {
                Ok(p) => p,
                Err(body) => {
                    let fatal = format!("handshake failed: {}", body.msg);
                    return Opening::Refused {
                        reply: Some(ErrorResponse { id, error: body }),
                        fatal,
                    };
                }
            };
            // Before anything is stored or logged: the refusal names the field, not the value.
            if let Err(e) = crate::bounds::check_handshake(&params) {
                let msg = format!("invalid params for handshake: {e}");
                return refuse(
                    id,
                    codes::INVALID_PARAMS,
                    msg.clone(),
                    format!("handshake failed: {msg}"),
                );
            }
            if !params.protocols.iter().any(|p| p == VERSION) {
                let msg = format!(
                    "no common protocol version: the agent speaks {:?}, the controller speaks [\"v1\"]",
                    params.protocols
                );
                return refuse(
                    id,
                    codes::UNSUPPORTED_PROTOCOL,
                    msg.clone(),
                    format!("handshake failed: {msg}"),
                );
            }
            Opening::Accepted {
                id,
                params: Box::new(params),
            }
        }
        Ok(Message::Command(Command { id, method, .. })) => refuse(
            id,
            codes::HANDSHAKE_REQUIRED,
            format!(
                "the first command must be handshake, not {}",
                crate::bounds::echo(&method)
            ),
            "handshake required".into(),
        ),
        Ok(Message::Fatal(_)) => Opening::Gone,
        Ok(_) => Opening::Refused {
            reply: None,
            fatal: "handshake required".into(),
        },
        Err(e) => match e.reply_id() {
            Some(id) => refuse(
                id.to_owned(),
                codes::HANDSHAKE_REQUIRED,
                format!("the first command must be a valid handshake: {e}"),
                "handshake required".into(),
            ),
            None => Opening::Refused {
                reply: None,
                fatal: e.to_string(),
            },
        },
    }
}

async fn send_line<S>(
    framed: &mut Framed<S, LineCodec>,
    addr: SocketAddr,
    msg: Message,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed
        .send(msg.encode())
        .await
        .map_err(|source| ConnectionError::Write { addr, source })
}

/// An agent past its handshake, its peer running.
struct Admitted {
    server_id: String,
    conn_id: i64,
    peer: PeerHandle,
    task: tokio::task::JoinHandle<molar_protocol::CloseReason>,
}

/// Serves one connection: the handshake, then the agent's life.
///
/// The handshake's state (framing buffers, the stream itself) is large and needed only for a
/// moment, so it runs in its own boxed future: what stays allocated for the connection's
/// life is the small future that waits for the peer to end.
async fn serve<S>(
    stream: S,
    addr: SocketAddr,
    fleet: Arc<Fleet>,
    cfg: &ListenerConfig,
    pre: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admitted = Box::pin(admit(stream, addr, &fleet, cfg, &shutdown)).await;
    // Answered (or refused): no longer counted against the pre-handshake budget.
    drop(pre);
    let admitted = admitted?;
    let Some(Admitted {
        server_id,
        conn_id,
        peer,
        mut task,
    }) = admitted
    else {
        return Ok(());
    };
    let reason = tokio::select! {
        r = &mut task => r.map(|r| r.to_string()).unwrap_or_else(|e| format!("connection task failed: {e}")),
        _ = shutdown.cancelled() => {
            peer.close(Some("controller shutting down".into())).await;
            match task.await {
                Ok(r) => r.to_string(),
                Err(e) => format!("connection task failed: {e}"),
            }
        }
    };
    let still = fleet.detach(&server_id, conn_id);
    if let Err(e) = fleet.store.close_connection(conn_id, &reason, still).await {
        tracing::error!(server = %server_id, error = %e, "recording a closed connection");
    }
    tracing::info!(server = %server_id, peer = %addr, %reason, "agent disconnected");
    Ok(())
}

/// Reads and judges the handshake; on success starts the peer and registers it.
async fn admit<S>(
    stream: S,
    addr: SocketAddr,
    fleet: &Arc<Fleet>,
    cfg: &ListenerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Admitted>, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut framed = Framed::new(stream, LineCodec::new(cfg.peer.max_line));
    let first = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout, framed.next()) => r,
        _ = shutdown.cancelled() => return Ok(None),
    };
    let first_was_timeout = first.is_err();
    let verdict = match first {
        Err(_) => Opening::Refused {
            reply: None,
            fatal: format!(
                "no handshake within {} s",
                cfg.handshake_timeout.as_secs_f64()
            ),
        },
        Ok(None)
        | Ok(Some(Err(molar_protocol::CodecError::Truncated { .. })))
        | Ok(Some(Err(molar_protocol::CodecError::Io(_)))) => Opening::Gone,
        Ok(Some(Err(e))) => Opening::Refused {
            reply: None,
            fatal: e.to_string(),
        },
        Ok(Some(Ok(line))) => opening(&line),
    };
    let (id, hello) = match verdict {
        Opening::Gone => return Ok(None),
        Opening::Refused { reply, fatal } => {
            let reason = match (&reply, &first_was_timeout) {
                (Some(r), _) => r.error.code.clone(),
                (None, true) => "timeout".to_owned(),
                (None, false) => "malformed".to_owned(),
            };
            crate::metrics::get().handshake("refused", &reason);
            if let Some(r) = reply {
                fleet
                    .record(NewEvent {
                        kind: "handshake_refused".into(),
                        peer_addr: Some(addr.to_string()),
                        msg: format!("handshake refused ({}): {}", r.error.code, r.error.msg),
                        ..NewEvent::default()
                    })
                    .await;
                send_line(&mut framed, addr, Message::Error(r)).await?;
            }
            send_line(
                &mut framed,
                addr,
                Message::Fatal(molar_protocol::Fatal {
                    fatal_error: fatal.clone(),
                }),
            )
            .await?;
            let _ = framed.get_mut().shutdown().await;
            return Err(ConnectionError::Refused {
                addr,
                reason: fatal,
            });
        }
        Opening::Accepted { id, params } => (id, params),
    };

    match decide(fleet, &hello, addr).await {
        Ok(admitted) => {
            let started = start_session(framed, addr, fleet, cfg, id, &hello, admitted).await?;
            crate::metrics::get().handshake("accepted", "");
            Ok(Some(started))
        }
        Err(refusal) => {
            crate::metrics::get().handshake("refused", refusal.code);
            fleet
                .record(NewEvent {
                    kind: "handshake_refused".into(),
                    server_id: refusal.server_id.clone(),
                    token_id: refusal.token_id.clone(),
                    peer_addr: Some(addr.to_string()),
                    msg: format!("handshake refused ({}): {}", refusal.code, refusal.msg),
                })
                .await;
            let fatal = format!("handshake failed: {}", refusal.msg);
            let reply = ErrorResponse {
                id,
                error: ErrorBody::new(refusal.code, refusal.msg),
            };
            send_line(&mut framed, addr, Message::Error(reply)).await?;
            send_line(
                &mut framed,
                addr,
                Message::Fatal(molar_protocol::Fatal {
                    fatal_error: fatal.clone(),
                }),
            )
            .await?;
            let _ = framed.get_mut().shutdown().await;
            Err(ConnectionError::Refused {
                addr,
                reason: fatal,
            })
        }
    }
}

/// A handshake the controller refused: the code and message the agent gets (never a
/// secret), and what the event names.
struct Refused {
    code: &'static str,
    msg: String,
    server_id: Option<String>,
    token_id: Option<String>,
}

impl Refused {
    fn new(code: &'static str, msg: impl Into<String>) -> Self {
        Refused {
            code,
            msg: msg.into(),
            server_id: None,
            token_id: None,
        }
    }
}

/// A handshake admitted and registered: what [`start_session`] needs.
struct Registered<'a> {
    server: ServerRecord,
    conn_id: i64,
    acknowledged_tasks: Vec<String>,
    token_id: String,
    admission: Admission,
    /// The credential issued for this boot, sent once in the handshake's answer.
    issued: Option<Secret>,
    /// [`Fleet::revocations`] before the token was checked.
    revocations: u64,
    /// Held until the session is attached.
    _claim: crate::credentials::Claim<'a>,
}

/// Checks the token, claims the identity, decides (see [`crate::admission`]) and registers.
async fn decide<'a>(
    fleet: &'a Arc<Fleet>,
    hello: &HandshakeParams,
    addr: SocketAddr,
) -> Result<Registered<'a>, Refused> {
    let internal = |what: &str, e: StoreError| {
        tracing::error!(error = %e, "{what}");
        Refused::new(codes::INTERNAL, format!("the controller cannot {what} now"))
    };
    let revocations = fleet.revocations();
    let token = match fleet.find_token(&hello.token).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Refused::new(codes::UNAUTHORIZED, "invalid agent token")),
        Err(e) => return Err(internal("check tokens", e)),
    };
    let with_token = |mut r: Refused| {
        r.token_id = Some(token.id.clone());
        r
    };
    let Some(key) = identity_key(&hello.node) else {
        return Err(with_token(Refused::new(
            codes::INVALID_PARAMS,
            "the node reports no usable identity (no system uuid, serial or mac address)",
        )));
    };
    let Some(claim) = fleet.claim(&key) else {
        return Err(with_token(Refused::new(
            codes::SESSION_CONFLICT,
            "another handshake for this server is being decided",
        )));
    };
    let binding = fleet
        .store
        .binding(&key)
        .await
        .map_err(|e| with_token(internal("look up the server", e)))?;
    let live = binding
        .as_ref()
        .and_then(|b| fleet.live_session(&b.server_id));
    let verdict = admission::decide(admission::Claim {
        token: &token,
        binding: binding.as_ref(),
        live: live.as_ref(),
        presented: hello.session.as_ref(),
        boot_id: &hello.boot_id,
        now_ms: now_ms(),
    });
    let admission = verdict.map_err(|r| Refused {
        code: r.code,
        msg: r.msg,
        server_id: binding.as_ref().map(|b| b.server_id.clone()),
        token_id: Some(token.id.clone()),
    })?;
    if hello.session.is_some() && admission.via != admission::Via::Credential {
        tracing::info!(peer = %addr, "a session credential that is not the server's current one was presented; admitted by token");
    }
    let issued = admission
        .issue
        .then(|| Secret::new(crate::pki::random_hex(32)));
    let grant = SessionGrant {
        issue: issued
            .as_ref()
            .map(|s| (token_hash(s.expose()), token.id.clone())),
        add_label: admission.add_label.clone(),
        consume_expectation: admission.consume_expectation,
        enrolled_by: Some(token.id.clone()),
    };
    let (server, conn_id, acknowledged_tasks) = register(fleet, hello, key, grant, addr)
        .await
        .map_err(|e| with_token(internal("store the server", e)))?;
    Ok(Registered {
        server,
        conn_id,
        acknowledged_tasks,
        token_id: token.id,
        admission,
        issued,
        revocations,
        _claim: claim,
    })
}

/// Answers an admitted handshake, starts the peer and attaches it to the fleet.
async fn start_session<S>(
    mut framed: Framed<S, LineCodec>,
    addr: SocketAddr,
    fleet: &Arc<Fleet>,
    cfg: &ListenerConfig,
    id: String,
    hello: &HandshakeParams,
    reg: Registered<'_>,
) -> Result<Admitted, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Registered {
        server,
        conn_id,
        acknowledged_tasks,
        token_id,
        admission,
        issued,
        revocations,
        _claim,
    } = reg;
    let welcome = HandshakeResult {
        server_id: server.id.clone(),
        protocol: VERSION.into(),
        acknowledged_tasks,
        session: issued,
    };
    let result = serde_json::to_value(&welcome).unwrap_or(Value::Null);
    if let Err(e) = send_line(&mut framed, addr, Message::Success(Success { id, result })).await {
        let _ = fleet
            .store
            .close_connection(conn_id, &e.to_string(), fleet.is_connected(&server.id))
            .await;
        return Err(e);
    }
    tracing::info!(server = %server.id, peer = %addr, agent_version = %hello.agent_version, "agent connected");

    // Bytes the agent sent after its handshake are already in the framing buffer.
    // Copied out so the framing buffer's 8 KiB allocation is not held for the connection's life.
    let parts = framed.into_parts();
    let stream = Prefixed {
        prefix: BytesMut::from(&parts.read_buf[..]),
        inner: parts.io,
    };
    let handler = Arc::new(AgentCommands {
        fleet: fleet.clone(),
        server_id: server.id.clone(),
    });
    let peer_cfg = PeerConfig {
        name: format!("agent {} {addr}", server.id),
        ..cfg.peer.clone()
    };
    let (peer, task) = Peer::spawn(stream, handler, peer_cfg);
    let live = LiveAgent {
        conn_id,
        peer: peer.clone(),
        token_id: token_id.clone(),
        boot_id: hello.boot_id.clone(),
    };
    if let Some(old) = fleet.attach(&server.id, live) {
        tracing::info!(server = %server.id, "closing the connection superseded by {addr}");
        let how = match admission.via {
            admission::Via::Credential => "its agent reconnected with the session credential",
            _ => "the boot the controller expected replaced it",
        };
        fleet
            .record(NewEvent {
                kind: "session_superseded".into(),
                server_id: Some(server.id.clone()),
                token_id: Some(token_id.clone()),
                peer_addr: Some(addr.to_string()),
                msg: format!("the session of server {} was superseded: {how}", server.id),
            })
            .await;
        // Closed once the event is stored: whoever sees the old session end finds why.
        tokio::spawn(async move { old.close(Some(SUPERSEDED.into())).await });
    }
    drop(_claim);
    // A revocation that raced this handshake closed the sessions it saw; this one was not
    // attached yet, so it looks again.
    if fleet.revocations() != revocations && !fleet.token_active(&token_id).await.unwrap_or(true) {
        fleet
            .close_sessions_of_token(&token_id, TOKEN_REVOKED)
            .await;
    }
    if server.state == ServerState::Discovery {
        fleet.request_discovery(&server.id);
    }
    Ok(Admitted {
        server_id: server.id,
        conn_id,
        peer,
        task,
    })
}

/// Stores the server of an accepted handshake and its connection; returns the server, the
/// connection's id and the tasks whose end is already stored.
async fn register(
    fleet: &Fleet,
    hello: &HandshakeParams,
    identity_key: String,
    grant: SessionGrant,
    addr: SocketAddr,
) -> Result<(ServerRecord, i64, Vec<String>), StoreError> {
    let reg = Registration {
        identity_key,
        system_uuid: hello.node.system_uuid.clone(),
        serial: hello.node.serial.clone(),
        macs: hello.node.macs.clone(),
        hostname: hello.node.hostname.clone(),
        agent_version: hello.agent_version.clone(),
        boot_id: hello.boot_id.clone(),
    };
    let new_id = || format!("srv-{}", crate::pki::random_hex(4));
    let (server, conn_id) = fleet
        .store
        .register(reg, grant, new_id, &addr.to_string())
        .await?;
    let acked = fleet.store.acknowledged_tasks(&server.id).await?;
    Ok((server, conn_id, acked))
}

/// Serves the agent's commands after the handshake.
struct AgentCommands {
    fleet: Arc<Fleet>,
    server_id: String,
}

impl Handler for AgentCommands {
    fn handle(
        &self,
        _peer: &PeerHandle,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, ErrorBody>> {
        let fleet = self.fleet.clone();
        let server_id = self.server_id.clone();
        async move {
            match method.as_str() {
                m if m == Log::NAME => {
                    let mut p: LogParams = parse_params(&method, params)?;
                    // Before anything is stored: cut and scrubbed like handshake fields are
                    // checked (bounds.rs), never refused (that would drop the batch).
                    let cut = crate::bounds::clamp_logs(&mut p.records);
                    if cut > 0 {
                        tracing::debug!(server = %server_id, records = cut, "agent log records cut to their bounds");
                    }
                    if p.dropped > 0 {
                        tracing::warn!(server = %server_id, dropped = p.dropped, "agent dropped log records");
                    }
                    let m = crate::metrics::get();
                    m.log_records_dropped.inc_by(p.dropped);
                    m.log_records_stored.inc_by(p.records.len() as u64);
                    fleet
                        .store
                        .append_logs(&server_id, p.records, p.dropped)
                        .await
                        .map_err(|e| {
                            tracing::error!(server = %server_id, error = %e, "storing logs");
                            ErrorBody::new(e.code(), "the controller cannot store logs now")
                        })?;
                    Ok(json!({}))
                }
                m if m == TaskStatusUpdate::NAME => {
                    let st: TaskStatus = parse_params(&method, params)?;
                    let task_id = st.task_id.clone();
                    let state = st.state;
                    match fleet.task_status(&server_id, st).await {
                        Ok(StatusOutcome::Stored(_)) => {}
                        Ok(StatusOutcome::Duplicate) => {
                            tracing::debug!(server = %server_id, task = %task_id, %state, "duplicate task status acknowledged");
                        }
                        Ok(StatusOutcome::Stale) => {}
                        Ok(StatusOutcome::Foreign) => {
                            tracing::warn!(server = %server_id, task = %task_id, "status of another server's task ignored");
                        }
                        Err(e) => {
                            tracing::error!(server = %server_id, error = %e, "storing a task status");
                            // Not acknowledged: the agent keeps the status and resends it.
                            return Err(ErrorBody::new(
                                e.code(),
                                "the controller cannot store the task status now",
                            ));
                        }
                    }
                    Ok(json!({}))
                }
                m if m == Handshake::NAME => Err(ErrorBody::new(
                    codes::INVALID_REQUEST,
                    "the handshake is already done on this connection",
                )),
                other => Err(ErrorBody::new(
                    codes::UNKNOWN_METHOD,
                    format!("unknown method {other}"),
                )),
            }
        }
        .boxed()
    }
}

/// A stream whose first bytes come from a buffer (what was read past the handshake line).
struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
