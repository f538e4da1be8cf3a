//! The HTTP JSON API under `/api/v1`, served over HTTPS with the controller's certificate.
//!
//! Every route requires `Authorization: Bearer <admin token>` (scheme in any case; token
//! compared in constant time). Errors are `{"error":{"msg","code"}}` with the HTTP status
//! given by the code ([`status_for`]), axum's own rejections included ([`json_errors`]); an
//! agent's own error is relayed as the agent sent it. Request bodies are
//! parsed here rather than by axum's `Json` extractor so a malformed body gets the same error
//! shape as everything else.
//!
//! The response types are public and shared with [`crate::client`].

mod enrol;
mod obmd;

pub use enrol::{AddBmc, AddServer};
pub use obmd::{ObmdPowerStatus, ObmdToken};
mod console;

pub use console::{
    CONSOLE_BUSY, ConsoleTokenRequest, CreatedConsoleToken, RevokedConsoleTokens,
    text_stream_response,
};

mod bmc;
mod control;
mod lifecycle;
mod qc;

pub use bmc::BmcList;
pub use lifecycle::{MaintenanceAnswer, MaintenanceRequest, TransitionPage, WorkflowList};
pub use qc::QcCheckRequest;

pub use control::{
    Condition, ConditionParams, ConditionRecords, ConditionSet, ConditionStatus,
    ConditionStatusAnswer, ControlQueued, ControlRequest, REQUESTS_LISTED_DEFAULT, RequestList,
};

use crate::fleet::{Fleet, FleetError};
use crate::store::{
    ConnectionRecord, EventRecord, LogEntry, ServerRecord, TaskEvent, TaskRecord, TokenRecord,
    TokenScope,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::Stream;
use molar_protocol::bmc::SetCredentialsParams;
use molar_protocol::catalogue::{
    BmcSetCredentials, Direction, DiskErase, InventoryGet, Kind, Method, MethodInfo, lookup,
};
use molar_protocol::erase::DiskEraseParams;
use molar_protocol::methods::{Empty, parse_params};
use molar_protocol::{ErrorBody, Secret, codes};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Default and maximum `timeout_s` of `POST /servers/{id}/call`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// A server as the API shows it: the stored record, `connected` from the live connections,
/// the latest connection and, on request, the stored inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    #[serde(flatten)]
    pub server: ServerRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Value>,
    /// The BMC table's entry (seed 004), without the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<crate::store::BmcRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResponse {
    pub result: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub task_id: String,
    pub state: crate::store::TaskPhase,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    pub logs: Vec<LogEntry>,
    /// Pass as `after` to get the next page (the last id returned, or `after` if none).
    pub next_after: i64,
}

/// `POST /tokens`: a name and at most one scope (none: `any`, what tokens always meant).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// Only this enrolled server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Servers with this label; servers it enrols get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Only the enrolment of new servers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enrol: bool,
}

impl TokenRequest {
    /// The scope asked for; more than one is `invalid_params`.
    pub fn scope(&self) -> Result<TokenScope, String> {
        match (&self.server, &self.set, self.enrol) {
            (None, None, false) => Ok(TokenScope::Any),
            (Some(id), None, false) => Ok(TokenScope::Server {
                server_id: id.clone(),
            }),
            (None, Some(label), false) => Ok(TokenScope::Set {
                label: label.clone(),
            }),
            (None, None, true) => Ok(TokenScope::Enrol),
            _ => Err("a token has one scope: give at most one of server, set and enrol".into()),
        }
    }
}

/// The answer to `POST /tokens` and `POST /tokens/{id}/rotate`: the only time the token
/// is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    pub token: Secret,
    #[serde(default)]
    pub scope: TokenScope,
    /// The token this one replaced (rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

/// `POST /servers/{id}/reenrol`: how long the controller expects the server to boot the
/// ramdisk (default [`REENROL_DEFAULT`], at most [`REENROL_MAX`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReenrolRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_s: Option<u64>,
}

/// Default and longest re-enrolment window.
pub const REENROL_DEFAULT: Duration = Duration::from_secs(3600);
pub const REENROL_MAX: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reenrolled {
    pub id: String,
    /// Unix ms.
    pub expect_ramdisk_until_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<EventRecord>,
    /// Pass as `after` to get the next page.
    pub next_after: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenRecord>,
}

/// The HTTP status for an error code; `from_agent` is whether the agent itself answered the
/// error (or answered something unreadable). A code that says what is wrong with the request
/// or the server's state keeps its status wherever it comes from; any other error is the
/// gateway's (502) only when the agent produced it, else the controller's own (500).
pub fn status_for(code: &str, from_agent: bool) -> StatusCode {
    match code {
        codes::INVALID_PARAMS | codes::INVALID_REQUEST | codes::UNKNOWN_METHOD => {
            StatusCode::BAD_REQUEST
        }
        // The agent refusing the controller is not the operator's token being wrong.
        codes::UNAUTHORIZED if !from_agent => StatusCode::UNAUTHORIZED,
        codes::REFUSED => StatusCode::FORBIDDEN,
        codes::NOT_FOUND | codes::UNKNOWN_TASK => StatusCode::NOT_FOUND,
        codes::NOT_CONNECTED | codes::TASK_CONFLICT => StatusCode::CONFLICT,
        codes::EXPECTED_DISK_MISSING => StatusCode::CONFLICT,
        codes::ILLEGAL_TRANSITION
        | codes::STATE_CHANGED
        | codes::WORKFLOW_RUNNING
        | codes::NOT_RETRIABLE => StatusCode::CONFLICT,
        codes::BUSY | codes::NOT_READY | codes::HARDWARE_NOT_READY => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        codes::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        _ if from_agent => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An API error: an [`ErrorBody`] and the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub body: ErrorBody,
    pub status: StatusCode,
}

impl ApiError {
    /// An error of the controller itself, as a body.
    fn from_body(body: ErrorBody) -> Self {
        ApiError::new(&body.code, body.msg)
    }

    /// An error of the controller itself.
    fn new(code: &str, msg: impl Into<String>) -> Self {
        let body = ErrorBody::new(code, msg);
        ApiError {
            status: status_for(&body.code, false),
            body,
        }
    }

    /// The same error answered with another status than its code's.
    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": {"msg": self.body.msg, "code": self.body.code}})),
        )
            .into_response()
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        if let FleetError::Store(s) = &e {
            tracing::error!(error = %s, "store failure in an API request");
        }
        let body = e.to_body();
        ApiError {
            status: status_for(&body.code, e.from_agent()),
            body,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        FleetError::Store(e).into()
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// The address an API request came from (a request extension set per connection), for
/// the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiPeer(pub std::net::SocketAddr);

struct ApiState {
    fleet: Arc<Fleet>,
    requests: Arc<crate::requests::Requests>,
    workflows: Arc<crate::workflow::Workflows>,
    admin_hash: [u8; 32],
    shutdown: CancellationToken,
}

/// Parses a JSON request body: bad syntax is `invalid_request`, a wrong shape `invalid_params`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(codes::INVALID_PARAMS, format!("invalid request body: {e}"))
        }
        _ => ApiError::new(
            codes::INVALID_REQUEST,
            format!("request body is not valid JSON: {e}"),
        ),
    })
}

/// `a=1&b=x` into pairs (values here are ids, numbers and booleans: no escaping needed).
fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn query_num<T: std::str::FromStr>(
    q: &[(String, String)],
    key: &str,
    default: T,
) -> Result<T, ApiError> {
    match q.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v.parse().map_err(|_| {
            ApiError::new(
                codes::INVALID_PARAMS,
                format!("query parameter {key} must be a number, not {v:?}"),
            )
        }),
    }
}

/// Builds the router (without the TLS listener), for [`serve`] and for in-process tests.
pub fn router(
    fleet: Arc<Fleet>,
    requests: Arc<crate::requests::Requests>,
    workflows: Arc<crate::workflow::Workflows>,
    admin_token: &Secret,
    media: Option<Arc<crate::media::MediaDir>>,
    shutdown: CancellationToken,
) -> Router {
    let state = Arc::new(ApiState {
        fleet,
        requests,
        workflows,
        admin_hash: Sha256::digest(admin_token.expose().as_bytes()).into(),
        shutdown,
    });
    let api = Router::new()
        .route("/servers", get(list_servers).post(enrol::add_server))
        .route("/servers/{id}", get(show_server).delete(remove_server))
        .route("/servers/{id}/call", post(call))
        .route("/servers/{id}/tasks", post(start_task).get(server_tasks))
        .route("/servers/{id}/logs", get(server_logs))
        .route("/servers/{id}/reenrol", post(reenrol_server))
        .route("/events", get(list_events))
        .route("/tasks/{task_id}", get(show_task))
        .route("/tasks/{task_id}/events", get(task_events))
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{id}", delete(revoke_token))
        .route("/tokens/{id}/rotate", post(rotate_token))
        .route("/openapi.json", get(openapi))
        .merge(console::routes())
        .merge(control::routes())
        .merge(qc::routes())
        .merge(lifecycle::routes())
        .merge(bmc::routes());
    let routed = Router::new()
        .nest("/api/v1", api)
        .merge(obmd::routes())
        .route(
            "/media/{name}",
            get(move |name, headers| crate::media::serve_file(media.clone(), name, headers)),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(route_pattern))
        .with_state(state.clone());
    // Names are resolved before routing (a layer on the routed router would run after the
    // path parameters were taken), so the outer router only wraps the routed one.
    Router::new()
        .fallback_service(routed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            server_names,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// The OpenAPI 3.1 description of this API (`openapi.json`, written by hand and checked
/// against the router by `tests/tests/openapi.rs` in both directions).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The route pattern a request matched, carried on its response to [`count_request`].
#[derive(Clone)]
struct RoutePattern(String);

/// Marks the response with the pattern of the route that answered (none for the fallback).
async fn route_pattern(req: Request, next: Next) -> Response {
    let pattern = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(p) = pattern {
        resp.extensions_mut().insert(RoutePattern(p));
    }
    resp
}

/// Counts every request with its route pattern (`unmatched` for a path no route has, and for
/// a request refused before routing, such as one without the admin token), method and final
/// status, and its latency until the response head.
async fn count_request(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RoutePattern>()
        .map_or("unmatched", |p| p.0.as_str());
    crate::metrics::get().api_request(route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

/// `GET /metrics`: the Prometheus exposition text (behind the admin token like every route).
async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    metrics_response(&st.fleet).await
}

async fn metrics_response(fleet: &Fleet) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(fleet).await,
    )
        .into_response()
}

/// The token-less metrics listener (`--metrics-listen`): plain HTTP, `GET /metrics` only.
pub async fn serve_metrics(listener: TcpListener, fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let fleet = fleet.clone();
                async move { metrics_response(&fleet).await }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

/// Most bytes of a rejection's text repeated in its JSON error.
const REJECTION_TEXT_MAX: usize = 512;

/// Every error answered in the documented shape: axum's own rejections (body over the
/// limit, a path segment that is not UTF-8, a bad query, ...) are plain text; they become
/// `{"error":{"msg","code"}}` with the same status and their text as the message.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), REJECTION_TEXT_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let msg = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let code = match status {
        StatusCode::NOT_FOUND => codes::NOT_FOUND,
        StatusCode::UNAUTHORIZED => codes::UNAUTHORIZED,
        StatusCode::UNPROCESSABLE_ENTITY => codes::INVALID_PARAMS,
        s if s.is_client_error() => codes::INVALID_REQUEST,
        _ => codes::INTERNAL,
    };
    let body = json!({"error": {"msg": msg, "code": code}});
    (status, axum::Json(body)).into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        codes::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let body = json!({"error": {
        "msg": format!("method {} is not allowed on {}", req.method(), req.uri().path()),
        "code": codes::INVALID_REQUEST,
    }});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn auth(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    // Console token holders and OBMd's clients are checked by their own routes; boot media
    // is public (a BMC cannot send a token, see `media`).
    if console::presents_console_token(&req)
        || obmd::is_obmd(&req)
        || req.uri().path().starts_with("/media/")
    {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return ApiError::new(codes::UNAUTHORIZED, "missing admin token").into_response();
    };
    let presented = value.to_str().ok().and_then(bearer).unwrap_or("");
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if presented.is_empty() || !bool::from(hash.ct_eq(&st.admin_hash)) {
        return ApiError::new(codes::UNAUTHORIZED, "invalid admin token").into_response();
    }
    next.run(req).await
}

/// Routes under `/servers/{id}` take a server's name as well as its id: a segment that is
/// not an id but names a server is replaced by that server's id before routing, so every
/// handler sees ids only.
async fn server_names(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    const PREFIX: &str = "/api/v1/servers/";
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return next.run(req).await;
    };
    let (key, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if key.is_empty() || crate::enrol::check_name(key).is_err() {
        return next.run(req).await;
    }
    let resolved = match st.fleet.store.resolve_server(key).await {
        Ok(Some(s)) if s.id != key => s.id,
        Ok(_) => return next.run(req).await,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut rewritten = format!("{PREFIX}{resolved}{tail}");
    if let Some(q) = req.uri().query() {
        rewritten.push('?');
        rewritten.push_str(q);
    }
    match rewritten.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return next.run(req).await,
    }
    next.run(req).await
}

/// The token of an `Authorization` value: the scheme `Bearer` in any case (HTTP schemes are
/// case-insensitive), then one or more spaces.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn view(fleet: &Fleet, mut server: ServerRecord) -> ServerView {
    server.connected = fleet.is_connected(&server.id);
    ServerView {
        server,
        connection: None,
        inventory: None,
        bmc: None,
    }
}

async fn list_servers(State(st): State<Arc<ApiState>>) -> ApiResult<ServerList> {
    let servers = st.fleet.store.list_servers().await?;
    let servers = servers.into_iter().map(|s| view(&st.fleet, s)).collect();
    Ok(axum::Json(ServerList { servers }))
}

async fn server_or_404(fleet: &Fleet, id: &str) -> Result<ServerRecord, ApiError> {
    fleet
        .store
        .get_server(id)
        .await?
        .ok_or_else(|| FleetError::ServerNotFound(id.to_owned()).into())
}

async fn show_server(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<ServerView> {
    let q = query_pairs(&q);
    let with_inventory = q
        .iter()
        .any(|(k, v)| k == "inventory" && (v == "true" || v == "1" || v.is_empty()));
    let server = server_or_404(&st.fleet, &id).await?;
    let mut v = view(&st.fleet, server);
    v.connection = st.fleet.store.last_connection(&id).await?;
    v.bmc = st.fleet.store.bmc(&id).await?;
    // The out-of-band inventory (read through the BMC) travels with the in-band one.
    if !with_inventory && let Some(b) = v.bmc.as_mut() {
        b.oob_inventory = None;
    }
    if with_inventory {
        v.inventory = Some(
            st.fleet
                .store
                .server_inventory(&id)
                .await?
                .unwrap_or(Value::Null),
        );
    }
    Ok(axum::Json(v))
}

/// The answer to `DELETE /servers/{id}`: what was deleted with the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovedServer {
    pub id: String,
    pub removed: bool,
    #[serde(flatten)]
    pub deleted: crate::store::Removed,
}

async fn remove_server(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<RemovedServer> {
    let deleted = st.fleet.remove_server(&id).await?;
    tracing::info!(server = %id, ?deleted, "server removed");
    Ok(axum::Json(RemovedServer {
        id,
        removed: true,
        deleted,
    }))
}

async fn call(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<CallResponse> {
    let req: CallRequest = parse_body(&body)?;
    let timeout = match req.timeout_s {
        None => DEFAULT_CALL_TIMEOUT,
        Some(t) if t.is_finite() && t > 0.0 => {
            Duration::from_secs_f64(t.min(MAX_CALL_TIMEOUT.as_secs_f64()))
        }
        Some(t) => {
            return Err(ApiError::new(
                codes::INVALID_PARAMS,
                format!("timeout_s must be a positive number of seconds, not {t}"),
            ));
        }
    };
    let params = req.params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "params must be a JSON object",
        ));
    }
    let info = catalogue_entry(&req.method, Kind::Call)?;
    // What the controller keeps of an answer is decided by an explicit handler, never by
    // the generic call.
    let result = match info.name {
        name if name == InventoryGet::NAME => {
            let _: Empty = parse_params(name, params).map_err(ApiError::from_body)?;
            st.fleet.refresh_inventory(&id, timeout).await?
        }
        name if name == BmcSetCredentials::NAME => {
            let p: SetCredentialsParams =
                parse_params(name, params).map_err(ApiError::from_body)?;
            st.fleet.set_bmc_credentials(&id, &p, timeout).await?
        }
        name => st.fleet.call(&id, name, params, timeout).await?,
    };
    Ok(axum::Json(CallResponse { result }))
}

/// Most characters of an unknown method name repeated in an error.
const SHOWN_NAME_MAX: usize = 64;

/// The catalogue entry of a method an operator asks to send to an agent: it must exist, be
/// sent to agents, and be of `kind` (the call and task routes are not interchangeable).
fn catalogue_entry(method: &str, kind: Kind) -> Result<&'static MethodInfo, ApiError> {
    let info = lookup(method).filter(|m| m.direction != Direction::ToController);
    let Some(info) = info else {
        let mut shown: String = method.chars().take(SHOWN_NAME_MAX).collect();
        if shown.len() < method.len() {
            shown.push_str("...");
        }
        return Err(ApiError::new(
            codes::UNKNOWN_METHOD,
            format!(
                "unknown method {}: not one the controller sends to agents",
                shown.escape_debug()
            ),
        ));
    };
    if info.kind != kind {
        let msg = match info.kind {
            Kind::Task => format!(
                "{} is a task: start it with POST /servers/{{id}}/tasks (molar task start)",
                info.name
            ),
            Kind::Call => format!(
                "{} is not a task: call it with POST /servers/{{id}}/call (molar call)",
                info.name
            ),
        };
        return Err(ApiError::new(codes::INVALID_REQUEST, msg));
    }
    Ok(info)
}

async fn start_task(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<TaskStarted> {
    let req: TaskRequest = parse_body(&body)?;
    let info = catalogue_entry(&req.method, Kind::Task)?;
    let params = req.params.unwrap_or_else(|| json!({}));
    let task = if info.name == DiskErase::NAME {
        // Checked here, before the erase's strict params would name task_id an unknown field.
        let params = Fleet::task_params(params)?;
        let p: DiskEraseParams =
            parse_params(info.name, Value::Object(params)).map_err(ApiError::from_body)?;
        st.fleet.erase_disks(&id, p).await?
    } else {
        st.fleet.start_task(&id, info.name, params).await?
    };
    Ok(axum::Json(TaskStarted {
        task_id: task.task_id,
        state: task.state,
    }))
}

async fn server_tasks(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<TaskList> {
    server_or_404(&st.fleet, &id).await?;
    Ok(axum::Json(TaskList {
        tasks: st.fleet.store.server_tasks(&id).await?,
    }))
}

async fn server_logs(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<LogPage> {
    let q = query_pairs(&q);
    let after: i64 = query_num(&q, "after", 0)?;
    let limit: u32 = query_num(&q, "limit", 100)?;
    server_or_404(&st.fleet, &id).await?;
    let logs = st
        .fleet
        .store
        .logs(&id, after, limit.clamp(1, 1000))
        .await?;
    let next_after = logs.last().map_or(after, |l| l.id);
    Ok(axum::Json(LogPage { logs, next_after }))
}

async fn show_task(
    State(st): State<Arc<ApiState>>,
    Path(task_id): Path<String>,
) -> ApiResult<TaskRecord> {
    let task = st
        .fleet
        .store
        .get_task(&task_id)
        .await?
        .ok_or(FleetError::TaskNotFound(task_id))?;
    Ok(axum::Json(task))
}

struct Follow {
    fleet: Arc<Fleet>,
    task_id: String,
    rx: broadcast::Receiver<TaskEvent>,
    backlog: VecDeque<TaskEvent>,
    last_id: i64,
    /// The task was already finished when the stream opened: end after the backlog.
    finished: bool,
    done: bool,
    shutdown: CancellationToken,
}

impl Follow {
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.backlog.pop_front() {
                if ev.id <= self.last_id {
                    continue;
                }
                self.last_id = ev.id;
                if ev.state.is_terminal() {
                    self.done = true;
                }
                return Some(ev);
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(ev) if ev.task_id == self.task_id => self.backlog.push_back(ev),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: the store has them all.
                        match self.fleet.store.task_events(&self.task_id, self.last_id).await {
                            Ok(evs) => self.backlog.extend(evs),
                            Err(e) => {
                                tracing::error!(error = %e, "reading task events");
                                return None;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }
}

async fn task_events(
    State(st): State<Arc<ApiState>>,
    Path(task_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading what is stored, so nothing falls between the two.
    let rx = st.fleet.subscribe();
    let task = st
        .fleet
        .store
        .get_task(&task_id)
        .await?
        .ok_or_else(|| FleetError::TaskNotFound(task_id.clone()))?;
    let backlog: VecDeque<TaskEvent> = st.fleet.store.task_events(&task_id, 0).await?.into();
    let follow = Follow {
        fleet: st.fleet.clone(),
        task_id,
        rx,
        backlog,
        last_id: 0,
        finished: task.state.is_terminal(),
        done: false,
        shutdown: st.shutdown.clone(),
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let ev = f.next().await?;
        let data = serde_json::to_string(&ev).unwrap_or_default();
        let event = Event::default()
            .event("status")
            .id(ev.id.to_string())
            .data(data);
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn create_token(State(st): State<Arc<ApiState>>, body: Bytes) -> ApiResult<CreatedToken> {
    let req: TokenRequest = parse_body(&body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "token name must be 1 to 128 characters",
        ));
    }
    let scope = req
        .scope()
        .map_err(|m| ApiError::new(codes::INVALID_PARAMS, m))?;
    if let TokenScope::Server { server_id } = &scope
        && (server_id.is_empty() || server_id.len() > 128)
    {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "server must be a server id of 1 to 128 characters",
        ));
    }
    let (rec, token) = st.fleet.create_scoped_token(name, scope).await?;
    Ok(axum::Json(created(rec, token)))
}

fn created(rec: TokenRecord, token: Secret) -> CreatedToken {
    CreatedToken {
        id: rec.id,
        name: rec.name,
        token,
        scope: rec.scope,
        rotated_from: rec.rotated_from,
    }
}

async fn rotate_token(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<CreatedToken> {
    let (rec, token) = st.fleet.rotate_token(&id).await?;
    Ok(axum::Json(created(rec, token)))
}

async fn reenrol_server(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Reenrolled> {
    let req: ReenrolRequest = if body.is_empty() {
        ReenrolRequest::default()
    } else {
        parse_body(&body)?
    };
    let window = match req.for_s {
        None => REENROL_DEFAULT,
        Some(s) if s >= 1 && s <= REENROL_MAX.as_secs() => Duration::from_secs(s),
        Some(s) => {
            return Err(ApiError::new(
                codes::INVALID_PARAMS,
                format!(
                    "for_s must be 1 to {} seconds, not {s}",
                    REENROL_MAX.as_secs()
                ),
            ));
        }
    };
    let until = st
        .fleet
        .expect_ramdisk(&id, window, "re-enrolment by the admin")
        .await?;
    Ok(axum::Json(Reenrolled {
        id,
        expect_ramdisk_until_ms: until,
    }))
}

async fn list_events(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> ApiResult<EventPage> {
    let q = query_pairs(&q);
    let after: i64 = query_num(&q, "after", 0)?;
    let limit: u32 = query_num(&q, "limit", 100)?;
    let server = q
        .iter()
        .find(|(k, _)| k == "server")
        .map(|(_, v)| v.as_str());
    if let Some(s) = server
        && (s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "query parameter server must be a server id",
        ));
    }
    let events = st
        .fleet
        .store
        .events(server, after, limit.clamp(1, 1000))
        .await?;
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(axum::Json(EventPage { events, next_after }))
}

async fn list_tokens(State(st): State<Arc<ApiState>>) -> ApiResult<TokenList> {
    Ok(axum::Json(TokenList {
        tokens: st.fleet.store.list_tokens().await?,
    }))
}

async fn revoke_token(State(st): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<Value> {
    st.fleet.revoke_token(&id).await?;
    Ok(axum::Json(json!({"id": id, "revoked": true})))
}

/// Resource limits of the API listener (issue #9).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Connections served at once. Past it a connection gets a minimal `503`
    /// `{"error":{"code":"busy",...}}` (from a small budget of its own, an eighth of this
    /// and at most [`BUSY_ANSWERS`]), or is closed at once when even that budget is spent.
    pub max_connections: usize,
    /// Time from the connection to the end of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time a client gets to send a request's headers. hyper starts this clock whenever the
    /// connection is ready for a request, so it is also the keep-alive idle timeout: a
    /// connection that sends no request for this long is closed.
    pub header_read_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Most connections past [`ApiLimits::max_connections`] answered `503` at once; more are
/// closed. Each holds a descriptor for up to [`BUSY_TIMEOUT`] twice, so the budget is small.
pub const BUSY_ANSWERS: usize = 64;

/// Time a connection past the cap gets for its TLS handshake and request headers, each.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `router` over HTTPS on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ApiLimits,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let served = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let busy = Arc::new(tokio::sync::Semaphore::new(
        (limits.max_connections / 8).clamp(1, BUSY_ANSWERS),
    ));
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let Ok(permit) = served.clone().try_acquire_owned() else {
            let Ok(answer) = busy.clone().try_acquire_owned() else {
                // Not even a 503: the socket closes now rather than wait for a place.
                tracing::debug!(peer = %addr, "API busy; connection closed");
                continue;
            };
            tracing::debug!(peer = %addr, "API busy; answering 503");
            tracker.spawn(async move {
                answer_busy(stream, acceptor).await;
                drop(answer);
            });
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls =
                match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %addr, error = %e, "API TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ApiPeer(addr));
                    router.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(crate::http_errors::JsonErrors::new(tls)),
                    svc,
                )
                // The console's WebSocket.
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %addr, error = %e, "API connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

/// Answers one request on a connection past the cap with `503 busy`, then closes it.
async fn answer_busy(stream: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
    let Ok(Ok(tls)) = tokio::time::timeout(BUSY_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    let svc = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
        let body = json!({"error": {
            "code": "busy",
            "msg": "the controller serves too many API connections now; retry later",
        }})
        .to_string();
        hyper::Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::RETRY_AFTER, "1")
            .body(axum::body::Body::from(body))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(BUSY_TIMEOUT)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
    let _ = tokio::time::timeout(BUSY_TIMEOUT * 2, conn).await;
}
