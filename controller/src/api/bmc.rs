//! Seed 004's BMC table in the API: `GET /bmcs` (every entry) and `GET /servers/{id}/bmc`
//! (one), which never carry the password (it is stored sealed, see `store::sealing`);
//! `POST /servers/{id}/bmc/reveal` (the credentials, written to the audit log),
//! `PUT /servers/{id}/bmc` (an operator's login, checked with a session before it is stored)
//! and `POST /servers/{id}/bmc/rotate` (a new password, in-band or over LAN). See
//! [`crate::bmc`].

use super::{ApiError, ApiPeer, ApiResult, ApiState, parse_body, server_or_404};
use crate::bmc::{BmcError, BmcLogin, BmcLoginStored, BmcRotated};
use crate::store::{BmcRecord, BmcSecrets};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
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
        .route("/servers/{id}/bmc", get(show).put(set))
        .route("/servers/{id}/bmc/reveal", post(reveal))
        .route("/servers/{id}/bmc/rotate", post(rotate))
}

impl From<BmcError> for ApiError {
    fn from(e: BmcError) -> Self {
        match e {
            e @ BmcError::NoEntry(_) => ApiError::new(codes::NOT_FOUND, e.to_string()),
            BmcError::Invalid(m) => ApiError::new(codes::INVALID_PARAMS, m),
            e @ BmcError::Unreachable(_) => ApiError::new(codes::NOT_CONNECTED, e.to_string()),
            BmcError::Bmc { context, source } => {
                let mut err = ApiError::from(source);
                err.body.msg = format!("{context}: {}", err.body.msg);
                err
            }
            BmcError::InBand(f) => {
                let mut err = ApiError::from(f);
                err.body.msg = format!("setting the password in-band: {}", err.body.msg);
                err
            }
            e @ BmcError::Unconfirmed(_) => {
                ApiError::new(codes::IO, e.to_string()).with_status(StatusCode::BAD_GATEWAY)
            }
            BmcError::Store(s) => s.into(),
        }
    }
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

async fn reveal(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    peer: Option<Extension<ApiPeer>>,
) -> ApiResult<BmcSecrets> {
    let server = server_or_404(&st.fleet, &id).await?;
    let peer = peer.map(|Extension(ApiPeer(a))| a);
    Ok(axum::Json(st.fleet.reveal_bmc(&server.id, peer).await?))
}

async fn set(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<BmcLoginStored> {
    let login: BmcLogin = parse_body(&body)?;
    let server = server_or_404(&st.fleet, &id).await?;
    Ok(axum::Json(
        st.fleet.set_bmc_login(&server.id, &login).await?,
    ))
}

async fn rotate(State(st): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<BmcRotated> {
    let server = server_or_404(&st.fleet, &id).await?;
    Ok(axum::Json(st.fleet.rotate_bmc(&server.id).await?))
}
