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
    /// `ipmi` or `redfish`; absent: probed (Redfish service root over HTTPS, then IPMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::oob::BmcProtocol>,
    /// Redfish: PEM certificates of the CA that signed the BMC's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_pem: Option<String>,
    /// Redfish: the SHA-256 fingerprint of the BMC's certificate, pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Redfish: do not check the BMC's certificate (labs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_insecure: bool,
}

impl AddBmc {
    /// The one trust option given; more than one is refused.
    pub fn trust(&self) -> Result<Option<crate::oob::BmcTrust>, String> {
        use crate::oob::BmcTrust;
        let mut given = Vec::new();
        if let Some(pem) = &self.tls_ca_pem {
            given.push(BmcTrust::Ca(pem.clone()));
        }
        if let Some(f) = &self.tls_fingerprint {
            given.push(BmcTrust::Fingerprint(f.clone()));
        }
        if self.tls_insecure {
            given.push(BmcTrust::Insecure);
        }
        if given.len() > 1 {
            return Err(
                "give one of --bmc-ca, --bmc-fingerprint and --bmc-insecure, not several".into(),
            );
        }
        Ok(given.pop())
    }
}

/// How an out-of-band failure is answered: the BMC not answering is a timeout, refusing
/// the login is forbidden, anything else it says is a bad gateway.
impl From<OobError> for ApiError {
    fn from(e: OobError) -> Self {
        let (code, status) = match &e {
            OobError::Unreachable { .. } => (codes::TIMEOUT, StatusCode::GATEWAY_TIMEOUT),
            OobError::Auth { .. } | OobError::Untrusted { .. } => {
                (codes::REFUSED, StatusCode::FORBIDDEN)
            }
            OobError::RedfishOnly { .. } | OobError::IpmiOnly { .. } => {
                (codes::INVALID_PARAMS, StatusCode::BAD_REQUEST)
            }
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
    let trust = req
        .bmc
        .trust()
        .map_err(|m| ApiError::new(codes::INVALID_PARAMS, m))?;
    let server = crate::enrol::enrol(
        &st.fleet.store,
        EnrolRequest {
            name: req.name,
            host: req.bmc.host,
            port: req.bmc.port,
            username: req.bmc.username,
            password: req.bmc.password,
            allow_ipmi15: req.bmc.allow_ipmi15,
            protocol: req.bmc.protocol,
            trust,
        },
    )
    .await?;
    st.fleet.console.wake_capture();
    if st.workflows.policy().discovery.power_on_enrolled {
        // The policy walks it initial → discovery → available on its own; a failure to
        // start is logged and leaves it in initial for the operator.
        if let Err(e) = st.workflows.discover_enrolled(&server.id).await {
            tracing::warn!(server = %server.id, error = %e, "starting the discovery of an enrolled server");
        }
    }
    let server = st
        .fleet
        .store
        .get_server(&server.id)
        .await?
        .unwrap_or(server);
    let bmc = st.fleet.store.bmc(&server.id).await?;
    let mut v = view(&st.fleet, server);
    v.bmc = bmc;
    Ok((StatusCode::CREATED, axum::Json(v)))
}
