//! Control requests over HTTP: `POST /servers/{id}/control` queues one
//! ([`crate::requests`]), `GET /servers/{id}/requests` and `GET /requests/{rid}` show them,
//! and seed 000's own shapes (`POST /servers/{id}/condition/serverControl`,
//! `GET /servers/{id}/status`) serve the scripts written for it. `{id}` is a server's id or
//! its name.

use super::{ApiError, ApiResult, ApiState, parse_body, query_num, query_pairs};
use crate::fleet::FleetError;
use crate::requests::RequestError;
use crate::store::{NewRequest, REQUESTS_LISTED_MAX, RequestRecord, RequestState, ServerRecord};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use molar_protocol::codes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Requests `GET /servers/{id}/requests` lists unless `limit` says otherwise.
pub const REQUESTS_LISTED_DEFAULT: u32 = 100;

/// The body of `POST /servers/{id}/control`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// One of [`crate::requests::ACTIONS`].
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// `set_next_boot_device` only: every boot, not only the next.
    #[serde(default)]
    pub persistent: bool,
    /// `set_next_boot_device` only: boot in UEFI mode.
    #[serde(default)]
    pub efi: bool,
}

/// The answer to `POST /servers/{id}/control`: the queued request and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlQueued {
    pub id: i64,
    pub request: RequestRecord,
}

/// The answer to `GET /servers/{id}/requests`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestList {
    pub requests: Vec<RequestRecord>,
}

/// Seed 000's condition create body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionCreate {
    /// Accepted as the seed's clients send it; requests always queue.
    #[serde(default)]
    #[allow(dead_code)]
    exclusive: Option<bool>,
    parameters: ConditionParams,
}

/// Seed 000's `serverControl` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionParams {
    pub asset_id: String,
    pub action: String,
    #[serde(default)]
    pub action_parameter: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_next_boot_device_persistent: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_next_boot_device_efi: bool,
}

/// A request as seed 000 shows a condition (field order as the seed prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub version: String,
    pub client: String,
    pub id: String,
    pub kind: String,
    pub parameters: ConditionParams,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConditionStatus>,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
    #[serde(rename = "createdAt")]
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionStatus {
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionRecords {
    #[serde(rename = "serverID")]
    pub server_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub conditions: Vec<Condition>,
}

/// The answer to seed 000's condition create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionSet {
    pub message: String,
    pub records: ConditionRecords,
}

/// The answer to seed 000's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionStatusAnswer {
    pub records: ConditionRecords,
}

/// The routes, merged into the API router.
pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/servers/{id}/control", post(control))
        .route("/servers/{id}/requests", get(server_requests))
        .route("/requests/{rid}", get(show_request))
        .route(
            "/servers/{id}/condition/serverControl",
            post(condition_server_control),
        )
        .route("/servers/{id}/status", get(condition_status))
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(m) => ApiError::new(codes::INVALID_PARAMS, m),
            RequestError::ServerNotFound(id) => FleetError::ServerNotFound(id).into(),
            e @ RequestError::QueueFull { .. } => ApiError::new(codes::BUSY, e.to_string()),
            RequestError::Store(e) => e.into(),
        }
    }
}

async fn resolve(st: &ApiState, key: &str) -> Result<ServerRecord, ApiError> {
    st.fleet
        .store
        .resolve_server(key)
        .await?
        .ok_or_else(|| FleetError::ServerNotFound(crate::requests::shown(key)).into())
}

async fn control(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<ControlQueued> {
    let req: ControlRequest = parse_body(&body)?;
    // The request is checked before the server is looked up: a bad one is refused alike
    // for every server.
    crate::requests::parse_action(
        &req.action,
        req.parameter.as_deref(),
        req.persistent,
        req.efi,
    )?;
    let server = resolve(&st, &id).await?;
    let rec = st
        .requests
        .submit(
            &server.id,
            NewRequest {
                action: req.action,
                parameter: req.parameter.filter(|p| !p.is_empty()),
                persistent: req.persistent,
                efi: req.efi,
                source: "api".into(),
            },
        )
        .await?;
    Ok(axum::Json(ControlQueued {
        id: rec.id,
        request: rec,
    }))
}

async fn server_requests(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<RequestList> {
    let q = query_pairs(&q);
    let limit: u32 = query_num(&q, "limit", REQUESTS_LISTED_DEFAULT)?;
    if limit == 0 || limit > REQUESTS_LISTED_MAX {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            format!("limit must be from 1 to {REQUESTS_LISTED_MAX}, not {limit}"),
        ));
    }
    let server = resolve(&st, &id).await?;
    Ok(axum::Json(RequestList {
        requests: st.fleet.store.server_requests(&server.id, limit).await?,
    }))
}

async fn show_request(
    State(st): State<Arc<ApiState>>,
    Path(rid): Path<String>,
) -> ApiResult<RequestRecord> {
    let not_found = || {
        ApiError::new(
            codes::NOT_FOUND,
            format!("request {} not found", rid.escape_debug()),
        )
    };
    let Ok(n) = rid.parse::<i64>() else {
        return Err(not_found());
    };
    let rec = st.fleet.store.request(n).await?.ok_or_else(not_found)?;
    Ok(axum::Json(rec))
}

async fn condition_server_control(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<ConditionSet> {
    let c: ConditionCreate = parse_body(&body)?;
    let p = c.parameters;
    let parameter = Some(p.action_parameter.as_str()).filter(|s| !s.is_empty());
    crate::requests::parse_action(
        &p.action,
        parameter,
        p.set_next_boot_device_persistent,
        p.set_next_boot_device_efi,
    )?;
    let server = resolve(&st, &id).await?;
    if p.asset_id != server.id && server.name.as_deref() != Some(p.asset_id.as_str()) {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            format!(
                "parameters.asset_id {} is not the server of the path ({})",
                p.asset_id.escape_debug(),
                server.id
            ),
        ));
    }
    let rec = st
        .requests
        .submit(
            &server.id,
            NewRequest {
                action: p.action.clone(),
                parameter: parameter.map(str::to_owned),
                persistent: p.set_next_boot_device_persistent,
                efi: p.set_next_boot_device_efi,
                source: "condition".into(),
            },
        )
        .await?;
    Ok(axum::Json(ConditionSet {
        message: "condition set".into(),
        records: ConditionRecords {
            server_id: server.id.clone(),
            state: None,
            conditions: vec![condition(&server.id, &rec)],
        },
    }))
}

async fn condition_status(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<ConditionStatusAnswer> {
    let server = resolve(&st, &id).await?;
    let recent = st
        .fleet
        .store
        .server_requests(&server.id, REQUESTS_LISTED_MAX)
        .await?;
    let Some(latest) = recent.first() else {
        return Err(ApiError::new(
            codes::NOT_FOUND,
            format!("no condition found for server {}", server.id),
        ));
    };
    // What is queued or running, oldest first; when nothing is, the latest outcome.
    let mut shown: Vec<&RequestRecord> = recent.iter().filter(|r| !r.state.is_final()).collect();
    shown.reverse();
    if shown.is_empty() {
        shown.push(latest);
    }
    let state = if shown.iter().any(|r| r.state == RequestState::Active) {
        RequestState::Active
    } else if shown.iter().any(|r| r.state == RequestState::Pending) {
        RequestState::Pending
    } else {
        latest.state
    };
    Ok(axum::Json(ConditionStatusAnswer {
        records: ConditionRecords {
            server_id: server.id.clone(),
            state: Some(state.as_str().into()),
            conditions: shown
                .into_iter()
                .map(|r| condition(&server.id, r))
                .collect(),
        },
    }))
}

/// A request as a seed 000 condition.
pub fn condition(server_id: &str, r: &RequestRecord) -> Condition {
    let updated = r.finished_ms.or(r.started_ms);
    Condition {
        version: "1.1".into(),
        client: String::new(),
        id: r.id.to_string(),
        kind: "serverControl".into(),
        parameters: ConditionParams {
            asset_id: server_id.to_owned(),
            action: r.action.clone(),
            action_parameter: r.parameter.clone().unwrap_or_default(),
            set_next_boot_device_persistent: r.persistent,
            set_next_boot_device_efi: r.efi,
        },
        state: r.state.as_str().into(),
        status: r
            .message
            .clone()
            .filter(|_| r.state.is_final())
            .map(|msg| ConditionStatus { msg }),
        updated_at: updated.map_or_else(|| "0001-01-01T00:00:00Z".into(), rfc3339),
        created_at: rfc3339(r.created_ms),
    }
}

/// RFC 3339 in UTC the way Go's `RFC3339Nano` prints it (the seed's clients parse that):
/// fractional seconds without trailing zeros, none when zero.
pub fn rfc3339(ms: i64) -> String {
    let base = crate::cli::format_time(ms).replacen(' ', "T", 1);
    let frac = ms.rem_euclid(1000);
    if frac == 0 {
        return format!("{base}Z");
    }
    let digits = format!("{frac:03}");
    format!("{base}.{}Z", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_printed_like_go_rfc3339nano() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_822_518_881), "2024-03-07T14:41:58.881Z");
        assert_eq!(rfc3339(1_709_822_518_880), "2024-03-07T14:41:58.88Z");
    }
}
