//! The fleet's credentials: agent tokens (created with a scope, rotated, revoked — which
//! closes their sessions at once), the claim each handshake holds on an identity while it is
//! decided, the expected ramdisk boot, and the security events every refusal is recorded as.
//!
//! What a token or a session credential allows is decided in [`crate::admission`]; this
//! module keeps the state that decision reads and records what came of it.

use crate::fleet::{Fleet, FleetError, TOKEN_REVOKED, token_hash};
use crate::store::{ActiveToken, NewEvent, StoreError, TokenRecord, TokenScope, now_ms};
use molar_protocol::Secret;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most events recorded per second; more are counted and summed up in one event when the
/// next second starts (a flood of refused handshakes must not become a flood of rows).
pub const EVENTS_PER_SECOND: u32 = 50;

/// Longest event message kept (the messages are the controller's own, but some name what a
/// peer sent).
pub const EVENT_MSG_MAX: usize = 512;

/// The per-second budget of [`Fleet::record`].
#[derive(Debug)]
pub struct EventBudget {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl Default for EventBudget {
    fn default() -> Self {
        EventBudget {
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }
}

impl EventBudget {
    /// Whether one more event fits now, and how many were suppressed in the window that
    /// just ended (reported once).
    fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
            ended = std::mem::take(&mut self.suppressed);
        }
        if self.used < EVENTS_PER_SECOND {
            self.used += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

/// An identity being decided: held from the token check until the session is attached, so
/// two handshakes for one server never both see it free. Released on drop.
pub struct Claim<'a> {
    fleet: &'a Fleet,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.fleet
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Why a label is not acceptable, or `None`: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn label_problem(label: &str) -> Option<String> {
    let ok = (1..=64).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| "a set label must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into())
}

impl Fleet {
    // ---- agent tokens ----

    /// Creates an agent token of scope `any` (`molar token create NAME`); the token itself
    /// is returned only here.
    pub async fn create_token(&self, name: &str) -> Result<(TokenRecord, Secret), FleetError> {
        self.create_scoped_token(name, TokenScope::Any).await
    }

    /// Creates an agent token of `scope`; a `server` scope must name an enrolled server.
    pub async fn create_scoped_token(
        &self,
        name: &str,
        scope: TokenScope,
    ) -> Result<(TokenRecord, Secret), FleetError> {
        match &scope {
            TokenScope::Server { server_id } => {
                if self.store.get_server(server_id).await?.is_none() {
                    return Err(FleetError::ServerNotFound(server_id.clone()));
                }
            }
            TokenScope::Set { label } => {
                if let Some(p) = label_problem(label) {
                    return Err(FleetError::InvalidParams(p));
                }
            }
            TokenScope::Any | TokenScope::Enrol => {}
        }
        let token = crate::pki::random_hex(32);
        let id = format!("tok-{}", crate::pki::random_hex(4));
        let rec = self
            .store
            .create_token(&id, name, &token_hash(&token), scope)
            .await?;
        tracing::info!(token = %rec.id, scope = %rec.scope.describe(), "agent token created");
        Ok((rec, Secret::new(token)))
    }

    /// Revokes a token and closes the sessions admitted with it at once (their agents are
    /// refused when they reconnect with it).
    pub async fn revoke_token(&self, id: &str) -> Result<(), FleetError> {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        if !self.store.revoke_token(id).await? {
            return Err(FleetError::TokenNotFound(id.to_owned()));
        }
        let closed = self.close_sessions_of_token(id, TOKEN_REVOKED).await;
        self.record(NewEvent {
            kind: "token_revoked".into(),
            token_id: Some(id.to_owned()),
            msg: format!("agent token {id} revoked; {} sessions closed", closed.len()),
            ..NewEvent::default()
        })
        .await;
        Ok(())
    }

    /// `molar token rotate`: a new secret with the same name and scope, under a new id; the
    /// old token is revoked and its sessions are closed at once (no grace: rotation is what
    /// an operator does when a token leaked; to move agents over without interrupting them,
    /// create a second token of the same scope, roll it out, then revoke the first).
    pub async fn rotate_token(&self, id: &str) -> Result<(TokenRecord, Secret), FleetError> {
        let token = crate::pki::random_hex(32);
        let new_id = format!("tok-{}", crate::pki::random_hex(4));
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let Some(rec) = self
            .store
            .rotate_token(id, &new_id, &token_hash(&token))
            .await?
        else {
            return Err(FleetError::TokenNotFound(id.to_owned()));
        };
        let closed = self.close_sessions_of_token(id, TOKEN_REVOKED).await;
        self.record(NewEvent {
            kind: "token_rotated".into(),
            token_id: Some(id.to_owned()),
            msg: format!(
                "agent token {id} rotated to {new_id} and revoked; {} sessions closed",
                closed.len()
            ),
            ..NewEvent::default()
        })
        .await;
        Ok((rec, Secret::new(token)))
    }

    /// The token not revoked whose hash is the presented token's, if any. Compares hashes in
    /// constant time and looks at every stored token whatever matches.
    pub async fn find_token(&self, token: &Secret) -> Result<Option<ActiveToken>, StoreError> {
        let presented = Sha256::digest(token.expose().as_bytes());
        let mut found = None;
        for stored in self.store.active_tokens().await? {
            let hash = hex::decode(&stored.sha256).unwrap_or_default();
            if bool::from(presented.as_slice().ct_eq(&hash)) {
                found = Some(stored);
            }
        }
        Ok(found.filter(|_| !token.is_empty()))
    }

    /// How many revocations (and rotations) have begun.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    /// Whether token `id` is still active (checked again once a session is attached, so a
    /// revocation racing a handshake cannot leave a session behind).
    pub async fn token_active(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.store.active_tokens().await?.iter().any(|t| t.id == id))
    }

    // ---- claims and expectations ----

    /// Claims an identity for one handshake; `None` when another handshake holds it.
    pub fn claim(&self, identity_key: &str) -> Option<Claim<'_>> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.insert(identity_key.to_owned()).then(|| Claim {
            fleet: self,
            key: identity_key.to_owned(),
        })
    }

    /// Expects `server_id` to boot the ramdisk within `window` (re-enrolment by the admin, a
    /// reboot it asked for, or a lifecycle step that power-cycles it into PXE): until then an
    /// enrolment token may claim it and a new boot may replace its session. Returns the end
    /// of the window (Unix ms).
    pub async fn expect_ramdisk(
        &self,
        server_id: &str,
        window: Duration,
        why: &str,
    ) -> Result<i64, FleetError> {
        let until = now_ms().saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        if !self
            .store
            .set_expect_ramdisk(server_id, Some(until))
            .await?
        {
            return Err(FleetError::ServerNotFound(server_id.to_owned()));
        }
        self.record(NewEvent {
            kind: "ramdisk_expected".into(),
            server_id: Some(server_id.to_owned()),
            msg: format!(
                "server {server_id} expected to boot the ramdisk within {} s ({why})",
                window.as_secs()
            ),
            ..NewEvent::default()
        })
        .await;
        Ok(until)
    }

    // ---- events ----

    /// Logs `ev` (a warning) and stores it, within [`EVENTS_PER_SECOND`]. Failing to store
    /// is logged, never the caller's failure: a refusal stands whether or not it is recorded.
    pub async fn record(&self, mut ev: NewEvent) {
        if ev.msg.len() > EVENT_MSG_MAX {
            let mut end = EVENT_MSG_MAX;
            while !ev.msg.is_char_boundary(end) {
                end -= 1;
            }
            ev.msg.truncate(end);
            ev.msg.push('…');
        }
        tracing::warn!(
            kind = %ev.kind,
            server = ev.server_id.as_deref().unwrap_or("-"),
            token = ev.token_id.as_deref().unwrap_or("-"),
            peer = ev.peer_addr.as_deref().unwrap_or("-"),
            "{}",
            ev.msg
        );
        let (fits, suppressed) = self
            .event_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        if suppressed > 0 {
            let summary = NewEvent {
                kind: "events_suppressed".into(),
                msg: format!(
                    "{suppressed} events not recorded (over {EVENTS_PER_SECOND} a second)"
                ),
                ..NewEvent::default()
            };
            if let Err(e) = self.store.append_event(summary).await {
                tracing::error!(error = %e, "storing an event");
            }
        }
        if fits && let Err(e) = self.store.append_event(ev).await {
            tracing::error!(error = %e, "storing an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_counts_what_it_refuses_and_reports_it_once() {
        let t0 = Instant::now();
        let mut b = EventBudget {
            window: t0,
            used: 0,
            suppressed: 0,
        };
        for _ in 0..EVENTS_PER_SECOND {
            assert_eq!(b.take(t0), (true, 0));
        }
        assert_eq!(b.take(t0), (false, 0));
        assert_eq!(b.take(t0), (false, 0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1), (true, 2));
        assert_eq!(b.take(t1), (true, 0));
    }

    #[test]
    fn labels_are_short_plain_words() {
        assert_eq!(label_problem("rack-a.row_3"), None);
        for bad in ["", "rack a", "rack\n", "r\u{202e}", &"x".repeat(65)] {
            assert!(label_problem(bad).is_some(), "{bad:?}");
        }
    }
}
