//! Seed 001's OBMd REST API, served unchanged under `/obmd` so OBMd's clients (HIL) can point
//! at molar. A node is a molar server enrolled by its BMC, named by its `node_id`.
//!
//! Admin operations take HTTP basic auth with user `admin` and the admin token as password
//! (a bearer admin token works too); the others take `?token=` (a console token of kind
//! `obmd` from `POST /obmd/node/{id}/token`, or any console token of the node). Power and
//! boot-device operations go through the request queue, so they are ordered with molar's own
//! requests and listed by `molar requests`; the answer waits for the request to finish.
//!
//! Status codes: 200 on success (OBMd answers no body except where the seed shows one),
//! 400 malformed body, 401 wrong credentials, 404 unknown node, 409 node exists, 502/504 when
//! the BMC failed or did not answer, 500 otherwise.

use super::{ApiError, ApiState, parse_body, query_pairs};
use crate::enrol::EnrolRequest;
use crate::store::{CONSOLE_TOKEN_TTL_MAX, ConsoleTokenKind, NewRequest, RequestState};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use molar_protocol::{Secret, codes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a power or boot-device operation may take before the answer says so (the
/// request goes on and is listed either way).
const WAIT: Duration = Duration::from_secs(90);

/// `PUT /node/{id}` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeInfo {
    #[serde(rename = "type")]
    kind: String,
    info: IpmiInfo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpmiInfo {
    addr: String,
    user: String,
    pass: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerCycle {
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootDevice {
    bootdev: String,
}

/// The answer to `POST /node/{id}/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObmdToken {
    pub token: Secret,
}

/// The answer to `GET /node/{id}/power_status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObmdPowerStatus {
    pub power_status: String,
}

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/obmd/node/{node_id}", put(register).delete(unregister))
        .route(
            "/obmd/node/{node_id}/token",
            post(new_token).delete(revoke_tokens),
        )
        .route("/obmd/node/{node_id}/console", get(console))
        .route("/obmd/node/{node_id}/power_cycle", post(power_cycle))
        .route("/obmd/node/{node_id}/power_on", post(power_on))
        .route("/obmd/node/{node_id}/power_off", post(power_off))
        .route("/obmd/node/{node_id}/boot_device", put(boot_device))
        .route("/obmd/node/{node_id}/power_status", get(power_status))
}

/// Whether a path is OBMd's: the API's bearer check leaves those to this module.
pub(super) fn is_obmd(req: &Request) -> bool {
    req.uri().path().starts_with("/obmd/")
}

/// Basic auth `admin:<admin token>` as the seed describes, or the API's own bearer token.
fn is_admin(st: &ApiState, req_headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = req_headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = match value.trim_start().split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
                return false;
            };
            let Ok(text) = String::from_utf8(decoded) else {
                return false;
            };
            match text.split_once(':') {
                Some(("admin", password)) => password.to_owned(),
                _ => return false,
            }
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_owned(),
        _ => return false,
    };
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    !presented.is_empty() && bool::from(hash.ct_eq(&st.admin_hash))
}

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(codes::UNAUTHORIZED, msg).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"obmd\""),
    );
    r
}

fn not_found(node: &str) -> ApiError {
    ApiError::new(
        codes::NOT_FOUND,
        format!("no node {:?}", node.escape_debug().to_string()),
    )
}

fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// The server of a node: by name (its node id), else by id.
async fn node(st: &ApiState, node_id: &str) -> Result<crate::store::ServerRecord, ApiError> {
    st.fleet
        .store
        .resolve_server(node_id)
        .await?
        .ok_or_else(|| not_found(node_id))
}

/// Admin check, then the node.
async fn admin_node(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    node_id: &str,
) -> Result<crate::store::ServerRecord, Response> {
    if !is_admin(st, headers) {
        return Err(unauthorized(
            "obmd admin operations take basic auth admin:<admin token>",
        ));
    }
    node(st, node_id).await.map_err(IntoResponse::into_response)
}

/// A non-admin operation: the node's token in `?token=` (or admin credentials). A wrong
/// token and an unknown node get the same answer.
async fn token_node(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    node_id: &str,
) -> Result<(crate::store::ServerRecord, Option<Secret>), Response> {
    if is_admin(st, headers) {
        return node(st, node_id)
            .await
            .map(|s| (s, None))
            .map_err(IntoResponse::into_response);
    }
    let q = query_pairs(&query.map(str::to_owned));
    let Some(token) = q.iter().find(|(k, _)| k == "token").map(|(_, v)| v.clone()) else {
        return Err(unauthorized("missing ?token="));
    };
    let refused = || unauthorized("invalid, expired or revoked token");
    let server = match st.fleet.store.resolve_server(node_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(refused()),
        Err(e) => return Err(ApiError::from(e).into_response()),
    };
    match st.fleet.store.check_console_token(&server.id, &token).await {
        Ok(true) => Ok((server, Some(Secret::new(token)))),
        Ok(false) => Err(refused()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

async fn register(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    if !is_admin(&st, req.headers()) {
        return unauthorized("obmd admin operations take basic auth admin:<admin token>");
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(codes::INVALID_REQUEST, format!("reading the body: {e}"))
                .into_response();
        }
    };
    let info: NodeInfo = match parse_body(&body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    if info.kind != "ipmi" {
        return ApiError::new(
            codes::INVALID_PARAMS,
            format!(
                "node type {:?} is not supported: molar drives \"ipmi\" nodes",
                info.kind.escape_debug().to_string()
            ),
        )
        .into_response();
    }
    let (host, port) = match crate::enrol::parse_bmc_address(&info.info.addr) {
        Ok(a) => a,
        Err(e) => return ApiError::new(codes::INVALID_PARAMS, e).into_response(),
    };
    let enrolled = crate::enrol::enrol(
        &st.fleet.store,
        EnrolRequest {
            name: node_id,
            host,
            port,
            username: info.info.user,
            password: info.info.pass,
            allow_ipmi15: false,
            protocol: Some(crate::oob::BmcProtocol::Ipmi),
            trust: None,
        },
    )
    .await;
    match enrolled {
        Ok(_) => {
            st.fleet.console.wake_capture();
            ok_empty()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn unregister(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let server = match admin_node(&st, req.headers(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Removing the server closes its console and deletes its tokens.
    match st.fleet.remove_server(&server.id).await {
        Ok(_) => ok_empty(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn new_token(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let server = match admin_node(&st, req.headers(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // OBMd keeps one token per node: a new one replaces the last.
    let made = async {
        st.fleet
            .store
            .revoke_console_tokens(&server.id, Some(ConsoleTokenKind::Obmd))
            .await?;
        st.fleet
            .store
            .create_console_token(&server.id, ConsoleTokenKind::Obmd, CONSOLE_TOKEN_TTL_MAX)
            .await
    };
    match made.await {
        Ok(Some(t)) => axum::Json(ObmdToken { token: t.token }).into_response(),
        Ok(None) => not_found(&node_id).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn revoke_tokens(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    if !is_admin(&st, req.headers()) {
        return unauthorized("obmd admin operations take basic auth admin:<admin token>");
    }
    // Always a success for an authenticated admin, as the seed says.
    if let Ok(Some(server)) = st.fleet.store.resolve_server(&node_id).await
        && let Err(e) = st
            .fleet
            .store
            .revoke_console_tokens(&server.id, Some(ConsoleTokenKind::Obmd))
            .await
    {
        return ApiError::from(e).into_response();
    }
    ok_empty()
}

async fn console(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let (server, token) = match token_node(&st, req.headers(), req.uri().query(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let viewer = st.fleet.console.attach_viewer(&server.id);
    super::console::text_stream_response(viewer, st.fleet.store.clone(), &server.id, token)
}

/// Queues `action parameter` on the server and waits for it to finish.
async fn run_request(
    st: &ApiState,
    server_id: &str,
    action: &str,
    parameter: &str,
    persistent: bool,
) -> Response {
    let queued = st
        .requests
        .submit(
            server_id,
            NewRequest {
                action: action.into(),
                parameter: Some(parameter.into()),
                persistent,
                efi: false,
                source: "obmd".into(),
            },
        )
        .await;
    let rec = match queued {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match st.fleet.store.request(rec.id).await {
            Ok(Some(r)) if r.state == RequestState::Succeeded => return ok_empty(),
            Ok(Some(r)) if r.state == RequestState::Failed => {
                let msg = r.message.unwrap_or_else(|| "request failed".into());
                return ApiError::new(codes::IO, msg)
                    .with_status(StatusCode::BAD_GATEWAY)
                    .into_response();
            }
            Ok(_) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
        if tokio::time::Instant::now() > deadline {
            return ApiError::new(
                codes::TIMEOUT,
                format!(
                    "request {} has not finished after {} s",
                    rec.id,
                    WAIT.as_secs()
                ),
            )
            .into_response();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's power state from its BMC: `Some(true)` on.
async fn read_power(st: &ApiState, server_id: &str) -> Result<bool, ApiError> {
    let target = st.fleet.store.bmc_target(server_id).await?.ok_or_else(|| {
        ApiError::new(
            codes::NOT_READY,
            format!("server {server_id} has no BMC address"),
        )
    })?;
    let outcome = crate::oob::perform(&target, &crate::oob::OobAction::PowerStatus).await?;
    outcome.power_on.ok_or_else(|| {
        ApiError::new(codes::IO, "the BMC did not report a power state")
            .with_status(StatusCode::BAD_GATEWAY)
    })
}

async fn body_of(req: Request) -> Result<Bytes, Response> {
    axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| {
            ApiError::new(codes::INVALID_REQUEST, format!("reading the body: {e}")).into_response()
        })
}

async fn power_cycle(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let (server, _) = match token_node(&st, req.headers(), req.uri().query(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match body_of(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let p: PowerCycle = if body.iter().all(u8::is_ascii_whitespace) {
        PowerCycle::default()
    } else {
        match parse_body(&body) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        }
    };
    // A node that is off is turned on; else forced off and on, or asked to shut down. A
    // forced cycle decides in its request (a cycle of a chassis that is off powers it on),
    // so it is ordered with the node's other requests; only the ACPI request reads first.
    let parameter = if p.force {
        "cycle"
    } else {
        match read_power(&st, &server.id).await {
            Ok(true) => "soft",
            Ok(false) => "on",
            Err(e) => return e.into_response(),
        }
    };
    run_request(&st, &server.id, "set_power_state", parameter, false).await
}

async fn power_on(st: State<Arc<ApiState>>, node_id: Path<String>, req: Request) -> Response {
    set_power(st, node_id, req, "on").await
}

async fn power_off(st: State<Arc<ApiState>>, node_id: Path<String>, req: Request) -> Response {
    set_power(st, node_id, req, "off").await
}

/// `power_on` and `power_off`: no effect when the node is already so (the BMC's own rule).
async fn set_power(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
    parameter: &str,
) -> Response {
    match token_node(&st, req.headers(), req.uri().query(), &node_id).await {
        Ok((server, _)) => run_request(&st, &server.id, "set_power_state", parameter, false).await,
        Err(r) => r,
    }
}

async fn boot_device(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let (server, _) = match token_node(&st, req.headers(), req.uri().query(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match body_of(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: BootDevice = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if !matches!(b.bootdev.as_str(), "pxe" | "disk" | "none") {
        return ApiError::new(
            codes::INVALID_PARAMS,
            format!(
                "bootdev {:?} is not one of \"pxe\", \"disk\", \"none\"",
                b.bootdev.escape_debug().to_string()
            ),
        )
        .into_response();
    }
    run_request(&st, &server.id, "set_next_boot_device", &b.bootdev, true).await
}

async fn power_status(
    State(st): State<Arc<ApiState>>,
    Path(node_id): Path<String>,
    req: Request,
) -> Response {
    let (server, _) = match token_node(&st, req.headers(), req.uri().query(), &node_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match read_power(&st, &server.id).await {
        Ok(on) => axum::Json(ObmdPowerStatus {
            power_status: if on { "on" } else { "off" }.into(),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_parsed_strictly() {
        let ok: NodeInfo = serde_json::from_value(
            json!({"type": "ipmi", "info": {"addr": "10.0.0.4", "user": "u", "pass": "p"}}),
        )
        .unwrap();
        assert_eq!(ok.info.addr, "10.0.0.4");
        assert!(
            serde_json::from_value::<NodeInfo>(
                json!({"type": "ipmi", "info": {"addr": "a", "user": "u", "pass": "p", "x": 1}})
            )
            .is_err()
        );
        assert!(serde_json::from_value::<PowerCycle>(json!({"force": "yes"})).is_err());
        assert!(serde_json::from_value::<BootDevice>(json!({})).is_err());
    }
}
