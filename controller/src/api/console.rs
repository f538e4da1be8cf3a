//! Console routes: console tokens (admin), the bounded console log (admin), and the console
//! stream, which a console token holder may open without the admin token.
//!
//! `GET /servers/{id}/console` is a WebSocket when the request asks for an upgrade, else a
//! chunked `text/plain` stream (read-only, for `curl`). On the WebSocket, binary frames are
//! console bytes both ways; a text frame from the client is typed text, except the JSON
//! object `{"break": true}`, which sends a break; text frames to the client are molar's own
//! messages as JSON (`{"notice": "..."}`, and `{"ended": "..."}` last). The WebSocket holds
//! the console interactively when it is free (`force=true` takes it over, `exclusive=true`
//! refuses with 409 rather than watch read-only when it is held).

use super::{ApiError, ApiResult, ApiState, parse_body, query_pairs, server_or_404};
use crate::console::{ConsoleInput, ConsoleMsg, Holder, TOKEN_RECHECK, Viewer};
use crate::store::{CONSOLE_TOKEN_TTL_DEFAULT, CONSOLE_TOKEN_TTL_MAX, ConsoleTokenKind, Store};
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use molar_protocol::{Secret, codes};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `POST /servers/{id}/console/token`: an optional lifetime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleTokenRequest {
    /// Seconds, 1 to [`CONSOLE_TOKEN_TTL_MAX`]; default [`CONSOLE_TOKEN_TTL_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// The answer to `POST /servers/{id}/console/token`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedConsoleToken {
    pub server_id: String,
    pub token: Secret,
    /// Unix ms.
    pub expires_ms: i64,
}

/// The answer to `DELETE /servers/{id}/console/token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokedConsoleTokens {
    pub server_id: String,
    pub revoked: u64,
}

/// The error code of a console held by another session (409).
pub const CONSOLE_BUSY: &str = "console_busy";

/// Most bytes of WebSocket message from a client (typed input comes in small pieces).
const WS_MESSAGE_MAX: usize = 64 * 1024;

pub(super) fn routes() -> axum::Router<Arc<ApiState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/servers/{id}/console/token",
            post(create_token).delete(revoke_tokens),
        )
        .route("/servers/{id}/console/log", get(console_log))
        .route("/servers/{id}/console", get(console))
}

/// Whether the request is one the admin check leaves to the console route: a `GET` of a
/// console stream that presents a console token (checked there instead).
pub(super) fn presents_console_token(req: &Request) -> bool {
    let path = req.uri().path();
    req.method() == axum::http::Method::GET
        && path.starts_with("/api/v1/servers/")
        && path.ends_with("/console")
        && query_pairs(&req.uri().query().map(str::to_owned))
            .iter()
            .any(|(k, _)| k == "token")
}

async fn create_token(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<CreatedConsoleToken> {
    let req: ConsoleTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConsoleTokenRequest::default()
    } else {
        let v: serde_json::Value = parse_body(&body)?;
        if !v.is_object() {
            return Err(ApiError::new(
                codes::INVALID_PARAMS,
                "invalid request body: expected a JSON object",
            ));
        }
        serde_json::from_value(v).map_err(|e| {
            ApiError::new(codes::INVALID_PARAMS, format!("invalid request body: {e}"))
        })?
    };
    let ttl = match req.ttl_s {
        None => CONSOLE_TOKEN_TTL_DEFAULT,
        Some(s) if s >= 1 && s <= CONSOLE_TOKEN_TTL_MAX.as_secs() => Duration::from_secs(s),
        Some(s) => {
            return Err(ApiError::new(
                codes::INVALID_PARAMS,
                format!(
                    "ttl_s must be 1 to {} seconds, not {s}",
                    CONSOLE_TOKEN_TTL_MAX.as_secs()
                ),
            ));
        }
    };
    let made = st
        .fleet
        .store
        .create_console_token(&id, ConsoleTokenKind::Console, ttl)
        .await?;
    let Some(made) = made else {
        return Err(crate::fleet::FleetError::ServerNotFound(id).into());
    };
    tracing::info!(server = %id, expires_ms = made.expires_ms, "console token created");
    Ok(axum::Json(CreatedConsoleToken {
        server_id: id,
        token: made.token,
        expires_ms: made.expires_ms,
    }))
}

async fn revoke_tokens(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<RevokedConsoleTokens> {
    server_or_404(&st.fleet, &id).await?;
    let revoked = st
        .fleet
        .store
        .revoke_console_tokens(&id, Some(ConsoleTokenKind::Console))
        .await?;
    tracing::info!(server = %id, revoked, "console tokens revoked");
    Ok(axum::Json(RevokedConsoleTokens {
        server_id: id,
        revoked,
    }))
}

async fn console_log(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    server_or_404(&st.fleet, &id).await?;
    let log = st.fleet.store.console_log(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

/// Who opened a stream: the admin, or a console token that is re-checked while it lasts.
#[derive(Clone)]
struct Watcher {
    store: Arc<Store>,
    server_id: String,
    token: Option<Secret>,
}

impl Watcher {
    /// Whether the stream may go on (its token still live, the server still there).
    async fn still_allowed(&self) -> bool {
        match &self.token {
            None => true,
            Some(t) => matches!(
                self.store
                    .check_console_token(&self.server_id, t.expose())
                    .await,
                Ok(true)
            ),
        }
    }
}

fn flag(q: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::new(
            codes::INVALID_PARAMS,
            format!("query parameter {key} must be true or false, not {v:?}"),
        )),
    }
}

async fn console(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req.uri().query().map(str::to_owned));
    let token = q.iter().find(|(k, _)| k == "token").map(|(_, v)| v.clone());
    let watcher = Watcher {
        store: st.fleet.store.clone(),
        server_id: id.clone(),
        token: token.map(Secret::new),
    };
    if watcher.token.is_some() {
        // The same answer for a wrong token and an unknown server: a token holder learns
        // nothing about servers it has no token for.
        if !watcher.still_allowed().await {
            return Err(ApiError::new(
                codes::UNAUTHORIZED,
                "invalid, expired or revoked console token",
            ));
        }
    } else {
        server_or_404(&st.fleet, &id).await?;
    }
    let force = flag(&q, "force")?;
    let exclusive = flag(&q, "exclusive")?;
    let (mut parts, _body) = req.into_parts();
    let wants_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let console = st.fleet.console.clone();
    if !wants_ws {
        return Ok(text_stream(console.attach_viewer(&id), watcher));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::new(codes::INVALID_REQUEST, e.body_text()))?;
    let attached = match console.attach_interactive(&id, force) {
        Ok(h) => Attached::Holder(h),
        Err(e) if exclusive => {
            let mut err = ApiError::new(CONSOLE_BUSY, e.to_string());
            err.status = StatusCode::CONFLICT;
            return Err(err);
        }
        Err(_) => Attached::Viewer(console.attach_viewer(&id)),
    };
    Ok(ws
        .max_message_size(WS_MESSAGE_MAX)
        .on_upgrade(move |socket| websocket(socket, attached, watcher)))
}

enum Attached {
    Holder(Holder),
    Viewer(Viewer),
}

/// One console message as chunked text: bytes as they are, molar's lines on their own.
fn text_chunk(m: &ConsoleMsg) -> Bytes {
    match m {
        ConsoleMsg::Data(d) => d.clone(),
        ConsoleMsg::Notice(n) | ConsoleMsg::Ended(n) => Bytes::from(format!("\r\n[molar] {n}\r\n")),
    }
}

/// The read-only chunked `text/plain` stream of a viewer, ending when the session ends or
/// the watcher's token stops being valid. Also for seed 001's `GET /obmd/node/{id}/console`.
pub fn text_stream_response(
    viewer: Viewer,
    store: Arc<Store>,
    server_id: &str,
    token: Option<Secret>,
) -> Response {
    text_stream(
        viewer,
        Watcher {
            store,
            server_id: server_id.to_owned(),
            token,
        },
    )
}

fn text_stream(viewer: Viewer, watcher: Watcher) -> Response {
    // One interval for the whole stream: a console that never pauses must not starve the
    // token re-check.
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_RECHECK, TOKEN_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (viewer, watcher, recheck, false);
    let stream = futures::stream::unfold(
        state,
        |(mut viewer, watcher, mut recheck, done)| async move {
            if done {
                return None;
            }
            let next = tokio::select! {
                biased;
                _ = recheck.tick() => {
                    if watcher.still_allowed().await {
                        None
                    } else {
                        Some(ConsoleMsg::Ended("console token revoked or expired".into()))
                    }
                }
                m = viewer.recv() => Some(m.unwrap_or(ConsoleMsg::Ended("console session ended".into()))),
            };
            // A re-check that passed yields an empty chunk, filtered out below.
            let m = next.unwrap_or(ConsoleMsg::Data(Bytes::new()));
            let last = matches!(m, ConsoleMsg::Ended(_));
            Some((
                Ok::<_, std::io::Error>(text_chunk(&m)),
                (viewer, watcher, recheck, last),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn control(m: &ConsoleMsg) -> Option<Message> {
    let v = match m {
        ConsoleMsg::Data(d) => return Some(Message::Binary(d.clone())),
        ConsoleMsg::Notice(n) => serde_json::json!({ "notice": n }),
        ConsoleMsg::Ended(n) => serde_json::json!({ "ended": n }),
    };
    Some(Message::Text(v.to_string().into()))
}

/// Whether a client's text frame is the break request.
fn is_break(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("break").and_then(serde_json::Value::as_bool))
        == Some(true)
}

async fn websocket(socket: WebSocket, attached: Attached, watcher: Watcher) {
    let (mut tx, mut rx) = socket.split();
    let (mut viewer, mut holder) = match attached {
        Attached::Holder(h) => (h.viewer, Some(h.control)),
        Attached::Viewer(v) => {
            let _ = tx
                .send(Message::Text(
                    serde_json::json!({"notice": "read-only: the console is held by another session"})
                        .to_string()
                        .into(),
                ))
                .await;
            (v, None)
        }
    };
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.tick().await;
    let end = |why: &str| Message::Text(serde_json::json!({ "ended": why }).to_string().into());
    loop {
        let next = viewer.recv();
        let taken = async {
            match &mut holder {
                Some(h) => h.taken_over().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = next => {
                let Some(m) = m else { break };
                let last = matches!(m, ConsoleMsg::Ended(_));
                if let Some(frame) = control(&m)
                    && tx.send(frame).await.is_err()
                {
                    break;
                }
                if last {
                    break;
                }
            }
            _ = taken => {
                let _ = tx.send(end("console taken over by another session")).await;
                break;
            }
            _ = recheck.tick() => {
                if !watcher.still_allowed().await {
                    let _ = tx.send(end("console token revoked or expired")).await;
                    break;
                }
            }
            frame = rx.next() => {
                let input = match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) => ConsoleInput::Data(b.to_vec()),
                    Some(Ok(Message::Text(t))) if is_break(t.as_str()) => ConsoleInput::Break,
                    Some(Ok(Message::Text(t))) => ConsoleInput::Data(t.as_bytes().to_vec()),
                    Some(Ok(_)) => continue,
                };
                // Input from a read-only viewer goes nowhere.
                if let Some(h) = &holder
                    && !h.send(input).await
                {
                    let _ = tx.send(end("console session ended")).await;
                    break;
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}
