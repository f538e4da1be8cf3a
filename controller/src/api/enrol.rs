//! `POST /api/v1/servers`: enrolling a server by its BMC (see [`crate::enrol`]).

use super::{ApiError, ApiState, ServerView, parse_body, view};
use crate::enrol::{EnrolError, EnrolRequest};
use crate::oob::OobError;
use crate::store::EnrolRefusal;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use molar_protocol::{Secret, codes};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The body of `POST /servers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddServer {
    pub name: String,
    pub bmc: AddBmc,
}

/// Where the BMC is and the operator's credentials for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBmc {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub username: String,
    pub password: Secret,
    /// IPMI 1.5 sessions (weak authentication) only when this is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_ipmi15: bool,
}

/// How an out-of-band failure is answered: the BMC not answering is a timeout, refusing
/// the login is forbidden, anything else it says is a bad gateway.
impl From<OobError> for ApiError {
    fn from(e: OobError) -> Self {
        let (code, status) = match &e {
            OobError::Unreachable { .. } => (codes::TIMEOUT, StatusCode::GATEWAY_TIMEOUT),
            OobError::Auth { .. } => (codes::REFUSED, StatusCode::FORBIDDEN),
            _ => (codes::IO, StatusCode::BAD_GATEWAY),
        };
        ApiError::new(code, e.to_string()).with_status(status)
    }
}

impl From<EnrolError> for ApiError {
    fn from(e: EnrolError) -> Self {
        match e {
            EnrolError::Invalid(msg) => ApiError::new(codes::INVALID_PARAMS, msg),
            EnrolError::Refused(r @ EnrolRefusal::NameTaken(_))
            | EnrolError::Refused(r @ EnrolRefusal::BmcTaken { .. }) => {
                ApiError::new(codes::INVALID_REQUEST, r.to_string())
                    .with_status(StatusCode::CONFLICT)
            }
            EnrolError::Bmc(e) => {
                let mut err = ApiError::from(e);
                err.body.msg = format!("verifying the BMC: {}", err.body.msg);
                err
            }
            EnrolError::Store(e) => e.into(),
        }
    }
}

pub(super) async fn add_server(
    State(st): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<ServerView>), ApiError> {
    let req: AddServer = parse_body(&body)?;
    let server = crate::enrol::enrol(
        &st.fleet.store,
        EnrolRequest {
            name: req.name,
            host: req.bmc.host,
            port: req.bmc.port,
            username: req.bmc.username,
            password: req.bmc.password,
            allow_ipmi15: req.bmc.allow_ipmi15,
        },
    )
    .await?;
    st.fleet.console.wake_capture();
    let bmc = st.fleet.store.bmc(&server.id).await?;
    let mut v = view(&st.fleet, server);
    v.bmc = bmc;
    Ok((StatusCode::CREATED, axum::Json(v)))
}
