//! Seed 004's BMC table in the API: `GET /bmcs` (every entry) and `GET /servers/{id}/bmc`
//! (one). Entries never carry the password (it is stored sealed, see `store::sealing`).

use super::{ApiError, ApiResult, ApiState, server_or_404};
use crate::store::BmcRecord;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use molar_protocol::codes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The answer of `GET /bmcs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcList {
    pub bmcs: Vec<BmcRecord>,
}

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/bmcs", get(list))
        .route("/servers/{id}/bmc", get(show))
}

async fn list(State(st): State<Arc<ApiState>>) -> ApiResult<BmcList> {
    Ok(axum::Json(BmcList {
        bmcs: st.fleet.store.bmcs().await?,
    }))
}

async fn show(State(st): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<BmcRecord> {
    server_or_404(&st.fleet, &id).await?;
    let bmc = st.fleet.store.bmc(&id).await?.ok_or_else(|| {
        ApiError::new(
            codes::NOT_FOUND,
            format!("server {id} has no BMC entry (enrol it with --bmc, or let its agent set credentials)"),
        )
    })?;
    Ok(axum::Json(bmc))
}
