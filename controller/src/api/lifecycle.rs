//! The lifecycle in the API: a server's state history, the operator's transitions
//! (maintenance on and off) and the fleet-wide stream of state changes, paged or followed
//! as server-sent events resumable by event id.
//!
//! - `GET /servers/{id}/history?after=&limit=`: one server's transitions, oldest first.
//! - `POST /servers/{id}/maintenance {on, reason, firmware}`: Available or Error →
//!   Maintenance (then the firmware plan, when given, as `decom.firmware_secure`), or
//!   Maintenance → Available; refused with `illegal_transition` (409) from any other state.
//! - `GET /transitions?after=&limit=&server=`: every server's transitions, by id.
//! - `GET /transitions/stream?after=&server=`: the same followed live (`text/event-stream`,
//!   event `transition`, id = the transition's id; a reconnecting client's `Last-Event-ID`
//!   resumes after it, so no change is missed or repeated).
//! - `POST /servers/{id}/claim {image, device, run}` and `POST /servers/{id}/release
//!   {erase, in_ramdisk}`: start the durable workflows of [`crate::workflow`];
//!   `GET /servers/{id}/workflows` lists a server's, newest first, with their steps;
//!   `POST /servers/{id}/retry` re-runs a failed discovery or release from its failed step.

use super::{ApiError, ApiResult, ApiState, parse_body, query_num, query_pairs, server_or_404};
use crate::fleet::FleetError;
use crate::lifecycle::Cause;
use crate::store::{
    Refs, TRANSITIONS_LISTED_MAX, Transition, TransitionError, WORKFLOWS_LISTED_MAX, WorkflowError,
    WorkflowRecord,
};
use crate::workflow::{ClaimParams, ReleaseParams, StartError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use futures::Stream;
use molar_protocol::codes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The body of `POST /servers/{id}/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// `true` takes the server into maintenance, `false` returns it to available.
    pub on: bool,
    /// Why, kept in the history (1 to [`REASON_MAX`] printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `on`: a `decom.firmware_secure` plan started once the server is in maintenance
    /// (its agent must be connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<molar_protocol::firmware::FirmwareParams>,
}

/// The answer of `POST /servers/{id}/maintenance`: the transition, and the firmware task
/// started in maintenance when a plan was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceAnswer {
    #[serde(flatten)]
    pub transition: Transition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_task: Option<String>,
}

/// Longest reason an operator can give, in bytes.
pub const REASON_MAX: usize = 1024;

/// A page of transitions: `next_after` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionPage {
    pub transitions: Vec<Transition>,
    pub next_after: i64,
}

/// How often a followed stream looks for new transitions.
const STREAM_POLL: Duration = Duration::from_millis(250);

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/servers/{id}/history", get(history))
        .route("/servers/{id}/maintenance", post(maintenance))
        .route("/transitions", get(list))
        .route("/transitions/stream", get(stream))
        .route("/servers/{id}/claim", post(claim))
        .route("/servers/{id}/release", post(release))
        .route("/servers/{id}/workflows", get(workflows))
        .route("/servers/{id}/retry", post(retry))
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::InvalidParams(m) => ApiError::new(codes::INVALID_PARAMS, m),
            StartError::Workflow(WorkflowError::Transition(t)) => t.into(),
            StartError::Workflow(e @ WorkflowError::Busy { .. }) => {
                ApiError::new(codes::WORKFLOW_RUNNING, e.to_string())
            }
            StartError::Workflow(WorkflowError::Refused(m)) => {
                ApiError::new(codes::NOT_RETRIABLE, m)
            }
            StartError::Workflow(WorkflowError::Store(s)) => s.into(),
        }
    }
}

/// The answer of `GET /servers/{id}/workflows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowRecord>,
}

async fn claim(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<WorkflowRecord> {
    let p: ClaimParams = parse_body(&body)?;
    Ok(axum::Json(st.workflows.claim(&id, p).await?))
}

async fn release(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<WorkflowRecord> {
    let p: ReleaseParams = parse_body(&body)?;
    Ok(axum::Json(st.workflows.release(&id, p).await?))
}

async fn retry(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<WorkflowRecord> {
    if !body.is_empty() {
        let _: molar_protocol::methods::Empty = parse_body(&body)?;
    }
    Ok(axum::Json(st.workflows.retry(&id).await?))
}

async fn workflows(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<WorkflowList> {
    let q = query_pairs(&q);
    let limit: u32 = query_num(&q, "limit", 20)?;
    server_or_404(&st.fleet, &id).await?;
    let workflows = st
        .fleet
        .store
        .server_workflows(&id, limit.clamp(1, WORKFLOWS_LISTED_MAX))
        .await?;
    Ok(axum::Json(WorkflowList { workflows }))
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        let code = match &e {
            TransitionError::NotFound(_) => codes::NOT_FOUND,
            TransitionError::Illegal(_) => codes::ILLEGAL_TRANSITION,
            TransitionError::Conflict { .. } => codes::STATE_CHANGED,
            TransitionError::Store(_) => {
                tracing::error!(error = %e, "store failure in a transition");
                codes::INTERNAL
            }
        };
        ApiError::new(code, e.to_string())
    }
}

/// Checks an operator's reason: printable, bounded.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() || reason.len() > REASON_MAX {
        return Err(format!("reason must be 1 to {REASON_MAX} bytes of text"));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason must not contain control characters".into());
    }
    Ok(())
}

fn page_query(q: &Option<String>) -> Result<(i64, u32, Option<String>), ApiError> {
    let q = query_pairs(q);
    let after: i64 = query_num(&q, "after", 0)?;
    let limit: u32 = query_num(&q, "limit", 100)?;
    if after < 0 {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "query parameter after must not be negative",
        ));
    }
    let server = q
        .iter()
        .find(|(k, _)| k == "server")
        .map(|(_, v)| v.clone());
    if let Some(s) = &server
        && (s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "query parameter server must be a server id",
        ));
    }
    Ok((after, limit.clamp(1, TRANSITIONS_LISTED_MAX), server))
}

fn page(transitions: Vec<Transition>, after: i64) -> axum::Json<TransitionPage> {
    let next_after = transitions.last().map_or(after, |t| t.id);
    axum::Json(TransitionPage {
        transitions,
        next_after,
    })
}

async fn history(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<TransitionPage> {
    let (after, limit, _) = page_query(&q)?;
    server_or_404(&st.fleet, &id).await?;
    let t = st.fleet.store.transitions(Some(&id), after, limit).await?;
    Ok(page(t, after))
}

async fn list(State(st): State<Arc<ApiState>>, RawQuery(q): RawQuery) -> ApiResult<TransitionPage> {
    let (after, limit, server) = page_query(&q)?;
    let t = st
        .fleet
        .store
        .transitions(server.as_deref(), after, limit)
        .await?;
    Ok(page(t, after))
}

async fn maintenance(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<MaintenanceAnswer> {
    let req: MaintenanceRequest = parse_body(&body)?;
    if req.firmware.is_some() && !req.on {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "firmware goes with on: updates run in maintenance",
        ));
    }
    if req.firmware.is_some() && !st.fleet.is_connected(&id) {
        return Err(FleetError::NotConnected(id).into());
    }
    let reason = match &req.reason {
        Some(r) => {
            check_reason(r).map_err(|m| ApiError::new(codes::INVALID_PARAMS, m))?;
            r.clone()
        }
        None => "operator".to_owned(),
    };
    let cause = if req.on {
        Cause::MaintenanceOn
    } else {
        Cause::MaintenanceOff
    };
    let t = st
        .fleet
        .store
        .transition_current(&id, cause, &reason, Refs::default())
        .await?;
    tracing::info!(server = %id, from = ?t.from, to = %t.to, "maintenance {}", if req.on { "on" } else { "off" });
    let firmware_task = match &req.firmware {
        None => None,
        // In maintenance now; a plan the agent refuses is the answer's error, and the
        // server stays in maintenance for the operator.
        Some(plan) => Some(
            st.fleet
                .start_task_method::<molar_protocol::catalogue::FirmwareSecure>(&id, plan)
                .await?
                .task_id,
        ),
    };
    Ok(axum::Json(MaintenanceAnswer {
        transition: t,
        firmware_task,
    }))
}

struct Follow {
    st: Arc<ApiState>,
    server: Option<String>,
    after: i64,
    backlog: VecDeque<Transition>,
}

impl Follow {
    async fn next(&mut self) -> Option<Transition> {
        loop {
            if let Some(t) = self.backlog.pop_front() {
                self.after = t.id;
                return Some(t);
            }
            match self
                .st
                .fleet
                .store
                .transitions(self.server.as_deref(), self.after, TRANSITIONS_LISTED_MAX)
                .await
            {
                Ok(t) if !t.is_empty() => {
                    self.backlog = t.into();
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading transitions for a stream"),
            }
            tokio::select! {
                _ = self.st.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(STREAM_POLL) => {}
            }
        }
    }
}

async fn stream(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (mut after, _, server) = page_query(&q)?;
    if let Some(v) = headers.get("last-event-id") {
        after = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::new(
                    codes::INVALID_PARAMS,
                    "Last-Event-ID must be the id of a transition event",
                )
            })?;
    }
    if let Some(s) = &server {
        server_or_404(&st.fleet, s).await?;
    }
    let follow = Follow {
        st,
        server,
        after,
        backlog: VecDeque::new(),
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        let t = f.next().await?;
        let data = serde_json::to_string(&t).unwrap_or_default();
        let event = Event::default()
            .event("transition")
            .id(t.id.to_string())
            .data(data);
        Some((Ok(event), f))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_printable_text() {
        assert!(check_reason("fan replaced").is_ok());
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(REASON_MAX + 1)).is_err());
        assert!(check_reason("a\nb").is_err());
        assert!(check_reason("a\u{1b}[2J").is_err());
    }

    #[test]
    fn maintenance_requests_are_strict() {
        let ok: MaintenanceRequest = serde_json::from_str(r#"{"on":true}"#).unwrap();
        assert_eq!(ok.reason, None);
        assert!(serde_json::from_str::<MaintenanceRequest>(r#"{"on":true,"force":1}"#).is_err());
        assert!(serde_json::from_str::<MaintenanceRequest>(r#"{"on":"yes"}"#).is_err());
        assert!(serde_json::from_str::<MaintenanceRequest>(r#"{}"#).is_err());
    }
}
