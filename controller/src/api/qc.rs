//! `POST /servers/{id}/qc {spec}`: the `decom.qc` check on the server's stored inventory,
//! without the agent — the same [`molar_protocol::qc::check`] the agent runs, so a spec can
//! be tried against a fleet before any machine is touched.

use super::{ApiError, ApiResult, ApiState, parse_body, server_or_404};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use molar_protocol::codes;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{QcReport, Spec, check};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The body of `POST /servers/{id}/qc`. Strict like the task's params: a misspelt field
/// would otherwise pass a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QcCheckRequest {
    pub spec: Spec,
}

/// The routes, merged into the API router.
pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/servers/{id}/qc", post(qc_stored))
}

/// Answers the report whether or not the machine passes (the check ran; `passed` says how
/// it went).
async fn qc_stored(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<QcReport> {
    let req: QcCheckRequest = parse_body(&body)?;
    if req.spec.is_empty() {
        return Err(ApiError::new(
            codes::INVALID_PARAMS,
            "the spec checks nothing",
        ));
    }
    server_or_404(&st.fleet, &id).await?;
    let Some(stored) = st.fleet.store.server_inventory(&id).await? else {
        return Err(ApiError::new(
            codes::NOT_FOUND,
            format!("no inventory is stored for server {id}: call `inventory` on it first"),
        ));
    };
    let inv: Inventory = serde_json::from_value(stored).map_err(|e| {
        ApiError::new(
            codes::INTERNAL,
            format!("the stored inventory of server {id} cannot be read: {e}"),
        )
    })?;
    Ok(axum::Json(check(&req.spec, &inv)))
}
