//! The BMC table's operator actions (seed 004) and its periodic session check.
//!
//! - **reveal** ([`Fleet::reveal_bmc`]): the stored credentials, to an admin; every reveal is
//!   written to the audit log (event `bmc_password_revealed`, with the client's address).
//! - **set** ([`Fleet::set_bmc_login`]): an operator's login, proven with a session before it
//!   is stored when the BMC has an address.
//! - **rotate** ([`Fleet::rotate_bmc`]): a new password for the same user, set in-band through
//!   the agent when one is connected, else over IPMI LAN in a session with the current one.
//!   The new password is stored sealed as *pending* before the BMC is asked to take it, and
//!   replaces the current one only once a session with it worked: a failure half-way never
//!   leaves the controller without the password the BMC has.
//! - **check** ([`run_checks`]): every BMC with an address gets a session with the stored
//!   credentials every `interval`, one at a time and at most `per_minute` a minute. A failure
//!   is kept (`verify_error`, shown by `molar bmc list`), counted (`molar_bmc_checks_total`,
//!   `molar_bmcs_failing`) and logged; a pending password that works is confirmed.

use crate::fleet::{Fleet, FleetError};
use crate::oob::{self, BmcProtocol, BmcTarget, OobError};
use crate::store::{BmcSecrets, NewEvent, StoreError};
use molar_protocol::Secret;
use molar_protocol::bmc::SetCredentialsParams;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the agent gets for an in-band `bmc.set_credentials`.
const IN_BAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Length of a generated password: 16 of 62 letters and digits (~95 bits), within every
/// BMC's limit (IPMI 1.5's 16 bytes).
const PASSWORD_LEN: usize = oob::ops::LAN_PASSWORD_MAX;

/// How often the check loop looks for due BMCs when none was due.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The body of `PUT /servers/{id}/bmc` (`molar bmc set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcLogin {
    pub username: String,
    pub password: Secret,
    /// Store it without a session check (a BMC that cannot be reached yet); ignored when
    /// the BMC has no address, since then nothing can be checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_verify: bool,
}

/// What `PUT /servers/{id}/bmc` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcLoginStored {
    pub server_id: String,
    pub username: String,
    /// A session with the new login worked before it was stored.
    pub verified: bool,
    pub message: String,
}

/// What `POST /servers/{id}/bmc/rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcRotated {
    pub server_id: String,
    pub username: String,
    /// `in_band` (the agent set it through the host interface) or `out_of_band` (IPMI LAN).
    pub path: String,
    /// A session with the new password worked (or, without a BMC address, the BMC itself
    /// confirmed it to the agent).
    pub verified: bool,
    pub message: String,
}

/// Why a BMC table action failed. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error(
        "server {0} has no BMC entry (enrol it with `molar server add --bmc`, let its agent set \
         credentials, or give them with `molar bmc set`)"
    )]
    NoEntry(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "server {0}'s BMC has no address and no agent is connected: nothing can set a password"
    )]
    Unreachable(String),
    /// The BMC refused or did not answer; nothing changed.
    #[error("{context}: {source}")]
    Bmc {
        context: String,
        #[source]
        source: OobError,
    },
    /// The agent's `bmc.set_credentials` failed.
    #[error("setting the password in-band: {0}")]
    InBand(FleetError),
    /// The password may or may not have been taken: both are kept, the next check decides.
    #[error("{0}")]
    Unconfirmed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh BMC password.
pub fn random_password() -> Secret {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let p: String = (0..PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    Secret::new(p)
}

/// A copy of `t` logging in with `password`.
fn with_password(t: &BmcTarget, password: &Secret) -> BmcTarget {
    BmcTarget {
        password: password.clone(),
        ..t.clone()
    }
}

impl Fleet {
    /// The stored credentials of the server's BMC, for an admin; written to the audit log.
    pub async fn reveal_bmc(
        &self,
        server_id: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<BmcSecrets, BmcError> {
        let secrets = self
            .store
            .bmc_secrets(server_id)
            .await?
            .ok_or_else(|| BmcError::NoEntry(server_id.to_owned()))?;
        self.record(NewEvent {
            kind: "bmc_password_revealed".into(),
            server_id: Some(server_id.to_owned()),
            token_id: None,
            peer_addr: peer.map(|p| p.to_string()),
            msg: format!(
                "the BMC password of user {} was revealed to an admin",
                secrets.username.escape_debug()
            ),
        })
        .await;
        Ok(secrets)
    }

    /// Replaces the BMC login with an operator's, after a session with it worked (unless
    /// `no_verify`, or the BMC has no address yet).
    pub async fn set_bmc_login(
        &self,
        server_id: &str,
        login: &BmcLogin,
    ) -> Result<BmcLoginStored, BmcError> {
        let target = self.store.bmc_target(server_id).await?;
        let redfish = target
            .as_ref()
            .is_some_and(|t| t.protocol == BmcProtocol::Redfish);
        let (user_max, password_max) = if redfish {
            (
                crate::enrol::REDFISH_USER_MAX,
                crate::enrol::REDFISH_PASSWORD_MAX,
            )
        } else {
            (crate::enrol::BMC_USER_MAX, crate::enrol::BMC_PASSWORD_MAX)
        };
        crate::enrol::check_printable("BMC user name", &login.username, user_max)
            .and_then(|()| {
                crate::enrol::check_printable("BMC password", login.password.expose(), password_max)
            })
            .map_err(BmcError::Invalid)?;
        let (verified, message) = match &target {
            Some(t) if !login.no_verify => {
                let t = BmcTarget {
                    username: login.username.clone(),
                    ..with_password(t, &login.password)
                };
                oob::verify(&t).await.map_err(|source| BmcError::Bmc {
                    context: "checking the new login (nothing was stored)".into(),
                    source,
                })?;
                (true, format!("a session with {} worked: stored", t.addr()))
            }
            Some(_) => (false, "stored without a session check (no_verify)".into()),
            None => (
                false,
                "stored; the BMC has no address yet, so it was not checked".into(),
            ),
        };
        self.store
            .set_bmc_login(server_id, &login.username, login.password.clone(), verified)
            .await?;
        self.record(NewEvent {
            kind: "bmc_login_set".into(),
            server_id: Some(server_id.to_owned()),
            token_id: None,
            peer_addr: None,
            msg: format!(
                "an admin set the BMC login (user {})",
                login.username.escape_debug()
            ),
        })
        .await;
        tracing::info!(server = %server_id, username = %login.username, verified, "BMC login set by an operator");
        Ok(BmcLoginStored {
            server_id: server_id.to_owned(),
            username: login.username.clone(),
            verified,
            message,
        })
    }

    /// Sets a new password for the BMC's user: in-band when an agent is connected, else over
    /// IPMI LAN with the current one; confirmed with a session before it replaces the
    /// current one.
    pub async fn rotate_bmc(&self, server_id: &str) -> Result<BmcRotated, BmcError> {
        let current = self
            .store
            .bmc_secrets(server_id)
            .await?
            .ok_or_else(|| BmcError::NoEntry(server_id.to_owned()))?;
        let record = self.store.bmc(server_id).await?;
        let user_id = record.as_ref().and_then(|r| r.user_id);
        let target = self.store.bmc_target(server_id).await?;
        let in_band = self.is_connected(server_id);
        if !in_band && target.is_none() {
            return Err(BmcError::Unreachable(server_id.to_owned()));
        }
        let new = random_password();
        self.store.set_bmc_pending(server_id, new.clone()).await?;
        let username = current.username.clone();
        let (path, set) = if in_band {
            let params = SetCredentialsParams {
                username: username.clone(),
                password: Some(new.clone()),
                user_id: user_id.and_then(|i| u32::try_from(i).ok()),
                channel: None,
                privilege: Default::default(),
            };
            // On success this stores the new password as the current one.
            let r = self
                .set_bmc_credentials(server_id, &params, IN_BAND_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(BmcError::InBand);
            ("in_band", r)
        } else {
            let t = target
                .as_ref()
                .ok_or_else(|| BmcError::Unreachable(server_id.to_owned()))?;
            let r = oob::set_password(t, user_id.and_then(|i| u8::try_from(i).ok()), &new)
                .await
                .map(|_| ())
                .map_err(|source| BmcError::Bmc {
                    context: "setting the new password over LAN".into(),
                    source,
                });
            ("out_of_band", r)
        };
        let source = if in_band { "in_band" } else { "rotated" };
        let done = |verified: bool, message: String| {
            tracing::info!(server = %server_id, username = %username, path, verified, "BMC password rotated");
            BmcRotated {
                server_id: server_id.to_owned(),
                username: username.clone(),
                path: path.to_owned(),
                verified,
                message,
            }
        };
        let Some(target) = target else {
            // In-band without a LAN address: the agent's success is all there is to go on.
            set?;
            self.store.promote_bmc_pending(server_id, source).await?;
            return Ok(done(
                false,
                "set in-band; the BMC has no LAN address to check it from".into(),
            ));
        };
        // Which password works now decides, whatever the set answered.
        let set_error = set.err();
        match oob::verify(&with_password(&target, &new)).await {
            Ok(_) => {
                self.store.promote_bmc_pending(server_id, source).await?;
                let how = if in_band { "in-band" } else { "over LAN" };
                Ok(done(
                    true,
                    format!("set {how}; a session with it worked: stored"),
                ))
            }
            Err(new_err) => match oob::verify(&with_password(&target, &current.password)).await {
                Ok(_) => {
                    self.store.clear_bmc_pending(server_id).await?;
                    Err(set_error.unwrap_or_else(|| BmcError::Bmc {
                        context: "the BMC accepted the new password but a session with it failed; \
                                  the current one still works and is kept"
                            .into(),
                        source: new_err,
                    }))
                }
                Err(old_err) => Err(BmcError::Unconfirmed(format!(
                    "neither the new password ({new_err}) nor the current one ({old_err}) opens \
                     a session; both are kept and the next check confirms the one that works{}",
                    set_error
                        .map(|e| format!(" (the set said: {e})"))
                        .unwrap_or_default()
                ))),
            },
        }
    }

    /// One session check of the server's BMC with the stored credentials (and, when it
    /// fails and a rotation is pending, with the pending password). `None` without an
    /// address.
    pub async fn check_bmc(&self, server_id: &str) -> Result<Option<bool>, StoreError> {
        let Some(target) = self.store.bmc_target(server_id).await? else {
            return Ok(None);
        };
        let pending = self
            .store
            .bmc_secrets(server_id)
            .await?
            .and_then(|s| s.pending_password);
        match oob::verify(&target).await {
            Ok(_) => {
                self.store.record_bmc_check(server_id, Ok(())).await?;
                if pending.is_some() {
                    // One password per user: the BMC did not take the pending one.
                    self.store.clear_bmc_pending(server_id).await?;
                }
                Ok(Some(true))
            }
            Err(e) => {
                if let Some(p) = pending
                    && oob::verify(&with_password(&target, &p)).await.is_ok()
                {
                    self.store.promote_bmc_pending(server_id, "rotated").await?;
                    tracing::info!(server = %server_id, "BMC check: the pending password works; confirmed");
                    return Ok(Some(true));
                }
                tracing::warn!(server = %server_id, error = %e, "BMC check failed");
                self.store
                    .record_bmc_check(server_id, Err(e.to_string()))
                    .await?;
                Ok(Some(false))
            }
        }
    }
}

/// How often BMC credentials are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Each BMC is checked again this long after its last check.
    pub interval: Duration,
    /// Most sessions opened a minute (a fleet's BMCs are not all checked at once).
    pub per_minute: u32,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            interval: Duration::from_secs(3600),
            per_minute: 60,
        }
    }
}

/// Checks due BMCs, one at a time, spaced to `per_minute`, until `shutdown`.
pub async fn run_checks(
    fleet: std::sync::Arc<Fleet>,
    policy: CheckPolicy,
    shutdown: CancellationToken,
) {
    let spacing = Duration::from_secs(60) / policy.per_minute.max(1);
    let every_ms = i64::try_from(policy.interval.as_millis()).unwrap_or(i64::MAX);
    loop {
        let due = match fleet.store.bmcs_due(every_ms, 1).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "BMC checks: listing due BMCs");
                Vec::new()
            }
        };
        let wait = match due.first() {
            Some(id) => {
                let checked = tokio::select! {
                    r = fleet.check_bmc(id) => r,
                    _ = shutdown.cancelled() => return,
                };
                match checked {
                    Ok(Some(ok)) => crate::metrics::get().bmc_check(ok),
                    Ok(None) => {}
                    Err(e) => tracing::error!(server = %id, error = %e, "BMC checks: recording"),
                }
                spacing
            }
            None => IDLE_POLL.min(policy.interval).max(spacing),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_fit_every_bmc_and_differ() {
        let a = random_password();
        let b = random_password();
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.expose().len(), PASSWORD_LEN);
            assert!(p.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_eq!(format!("{a:?}"), "<redacted>");
    }

    #[test]
    fn a_login_is_strict() {
        let ok: BmcLogin =
            serde_json::from_value(serde_json::json!({"username": "u", "password": "p"})).unwrap();
        assert!(!ok.no_verify);
        for bad in [
            serde_json::json!({"username": "u"}),
            serde_json::json!({"username": "u", "password": "p", "role": "admin"}),
            serde_json::json!({"username": 1, "password": "p"}),
        ] {
            assert!(
                serde_json::from_value::<BmcLogin>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
