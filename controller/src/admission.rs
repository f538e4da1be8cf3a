//! Which handshakes may become a server's session: the decision, as a pure function of what
//! the controller knows (the token's scope, the server the identity is bound to, its live
//! session, the session credential presented, the expected ramdisk boot).
//!
//! The rules (the threat model in ARCHITECTURE.md says why):
//! 1. A handshake presenting the session credential of the server's current boot, under the
//!    token it was issued with, is that session's agent reconnecting: admitted, and it
//!    supersedes the old connection if the controller still holds one (a dead connection
//!    the controller has not noticed yet). No scope check: the credential is the binding.
//! 2. Otherwise the token's scope must allow the identity: `any` allows every server, new
//!    or enrolled; `server` only its server; `set` the servers with its label and new ones
//!    (which get the label); `enrol` only new identities. An identity already bound to a
//!    server is claimed by a `set` token outside its set or an `enrol` token only while the
//!    controller expects that server to boot the ramdisk (`molar server reenrol`, or a
//!    reboot it asked for).
//! 3. A server with a live session is never taken over without its credential: refused
//!    with `session_conflict`. The one exception is the expected ramdisk boot: a handshake
//!    from a *different* boot, allowed by rule 2, replaces the session of the boot the
//!    controller rebooted (that machine is gone).
//! 4. Every admission by token (rules 2 and 3) issues a new session credential for the boot.

use crate::store::{ActiveToken, Binding, TokenScope};
use molar_protocol::{Secret, codes};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The live session of a server, as the fleet holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub boot_id: String,
    pub token_id: String,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub token: &'a ActiveToken,
    /// The enrolled server the handshake's identity is bound to, if any.
    pub binding: Option<&'a Binding>,
    /// That server's live session, if any.
    pub live: Option<&'a LiveSession>,
    /// The session credential the handshake presented.
    pub presented: Option<&'a Secret>,
    /// The handshake's boot id.
    pub boot_id: &'a str,
    pub now_ms: i64,
}

/// How a handshake was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Its session credential (a reconnect within the boot).
    Credential,
    /// Its token's scope, the server having no live session.
    Token,
    /// Its token's scope and the expected ramdisk boot, replacing a live session.
    ExpectedBoot,
}

/// An admitted handshake and what it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub via: Via,
    /// It replaces the server's live connection.
    pub supersede: bool,
    /// A new session credential is issued for its boot.
    pub issue: bool,
    /// The server gets this label (a `set` token).
    pub add_label: Option<String>,
    /// The expected ramdisk boot happened.
    pub consume_expectation: bool,
}

/// A refused handshake: the protocol code and a message naming why (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub msg: String,
}

fn refuse(code: &'static str, msg: String) -> Refusal {
    Refusal { code, msg }
}

/// Whether `presented` is the binding's session credential for this boot and token,
/// compared in constant time.
pub fn credential_matches(
    binding: &Binding,
    presented: &Secret,
    boot_id: &str,
    token_id: &str,
) -> bool {
    let Some(stored) = binding.session_sha256.as_deref() else {
        return false;
    };
    let stored = hex::decode(stored).unwrap_or_default();
    let hash = Sha256::digest(presented.expose().as_bytes());
    let same = bool::from(hash.as_slice().ct_eq(&stored));
    same && !presented.is_empty()
        && binding.session_boot_id.as_deref() == Some(boot_id)
        && binding.session_token_id.as_deref() == Some(token_id)
}

/// What rule 2 allows: `Ok((label to add, whether the expected boot was needed))`.
fn scope_allows(
    scope: &TokenScope,
    binding: Option<&Binding>,
    expected: bool,
) -> Result<(Option<String>, bool), Refusal> {
    let unauthorized = |msg: String| Err(refuse(codes::UNAUTHORIZED, msg));
    match (scope, binding) {
        (TokenScope::Any, _) => Ok((None, false)),
        (TokenScope::Server { server_id }, Some(b)) if &b.server_id == server_id => {
            Ok((None, false))
        }
        (TokenScope::Server { server_id }, Some(b)) => unauthorized(format!(
            "this agent token is scoped to server {server_id}; the node is server {}",
            b.server_id
        )),
        (TokenScope::Server { server_id }, None) => unauthorized(format!(
            "this agent token is scoped to server {server_id}; it cannot enrol a new server"
        )),
        (TokenScope::Set { label }, None) => Ok((Some(label.clone()), false)),
        (TokenScope::Set { label }, Some(b)) if b.labels.contains(label) => Ok((None, false)),
        (TokenScope::Set { label }, Some(_)) if expected => Ok((Some(label.clone()), true)),
        (TokenScope::Set { label }, Some(b)) => unauthorized(format!(
            "server {} is not in set {label}; a set token claims it only after `molar server reenrol {}`",
            b.server_id, b.server_id
        )),
        (TokenScope::Enrol, None) => Ok((None, false)),
        (TokenScope::Enrol, Some(_)) if expected => Ok((None, true)),
        (TokenScope::Enrol, Some(b)) => unauthorized(format!(
            "server {} is already enrolled; an enrolment token claims it only after `molar server reenrol {}`",
            b.server_id, b.server_id
        )),
    }
}

/// Decides a handshake (see the module documentation for the rules).
pub fn decide(c: Claim<'_>) -> Result<Admission, Refusal> {
    if let (Some(b), Some(p)) = (c.binding, c.presented)
        && credential_matches(b, p, c.boot_id, &c.token.id)
    {
        return Ok(Admission {
            via: Via::Credential,
            supersede: c.live.is_some(),
            issue: false,
            add_label: None,
            consume_expectation: false,
        });
    }
    let expected = c
        .binding
        .and_then(|b| b.expect_ramdisk_until_ms)
        .is_some_and(|until| until > c.now_ms);
    let (add_label, _needed_expectation) = scope_allows(&c.token.scope, c.binding, expected)?;
    let via = match (c.live, c.binding) {
        (Some(live), Some(_)) if expected && live.boot_id != c.boot_id => Via::ExpectedBoot,
        (Some(_), Some(b)) => {
            return Err(refuse(
                codes::SESSION_CONFLICT,
                format!(
                    "server {} has a live session; only that session's credential may replace it",
                    b.server_id
                ),
            ));
        }
        _ => Via::Token,
    };
    Ok(Admission {
        via,
        supersede: via == Via::ExpectedBoot,
        issue: true,
        add_label,
        consume_expectation: expected,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_000_000;

    fn token(id: &str, scope: TokenScope) -> ActiveToken {
        ActiveToken {
            id: id.into(),
            sha256: String::new(),
            scope,
        }
    }

    fn bound(labels: &[&str]) -> Binding {
        Binding {
            server_id: "srv-1".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            session_sha256: Some(hex::encode(Sha256::digest(b"cred-1"))),
            session_boot_id: Some("boot-1".into()),
            session_token_id: Some("tok-a".into()),
            expect_ramdisk_until_ms: None,
        }
    }

    fn live() -> LiveSession {
        LiveSession {
            boot_id: "boot-1".into(),
            token_id: "tok-a".into(),
        }
    }

    fn claim<'a>(
        t: &'a ActiveToken,
        b: Option<&'a Binding>,
        l: Option<&'a LiveSession>,
        p: Option<&'a Secret>,
        boot: &'a str,
    ) -> Claim<'a> {
        Claim {
            token: t,
            binding: b,
            live: l,
            presented: p,
            boot_id: boot,
            now_ms: NOW,
        }
    }

    #[test]
    fn a_live_session_is_replaced_only_with_its_own_credential() {
        let any_a = token("tok-a", TokenScope::Any);
        let any_b = token("tok-b", TokenScope::Any);
        let b = bound(&[]);
        let l = live();
        let good = Secret::new("cred-1");
        let wrong = Secret::new("cred-2");
        // The impostor: another token, the same identity, no or a wrong credential.
        for (t, p) in [
            (&any_b, None),
            (&any_b, Some(&wrong)),
            (&any_a, Some(&wrong)),
        ] {
            let r = decide(claim(t, Some(&b), Some(&l), p, "boot-1")).unwrap_err();
            assert_eq!(r.code, codes::SESSION_CONFLICT, "{r:?}");
            assert!(r.msg.contains("srv-1 has a live session"), "{}", r.msg);
        }
        // Not even the right credential under another token, or for another boot.
        let r = decide(claim(&any_b, Some(&b), Some(&l), Some(&good), "boot-1")).unwrap_err();
        assert_eq!(r.code, codes::SESSION_CONFLICT);
        let r = decide(claim(&any_a, Some(&b), Some(&l), Some(&good), "boot-2")).unwrap_err();
        assert_eq!(r.code, codes::SESSION_CONFLICT);
        // Its own agent reconnecting supersedes the dead connection, no new credential.
        let a = decide(claim(&any_a, Some(&b), Some(&l), Some(&good), "boot-1")).unwrap();
        assert_eq!(
            (a.via, a.supersede, a.issue),
            (Via::Credential, true, false)
        );
        // ... and after the controller noticed the connection is gone.
        let a = decide(claim(&any_a, Some(&b), None, Some(&good), "boot-1")).unwrap();
        assert_eq!((a.via, a.supersede), (Via::Credential, false));
        // No live session: a new boot by token, with a new credential.
        let a = decide(claim(&any_b, Some(&b), None, None, "boot-2")).unwrap();
        assert_eq!((a.via, a.supersede, a.issue), (Via::Token, false, true));
    }

    #[test]
    fn each_scope_allows_its_servers_and_nothing_else() {
        let b = bound(&["rack-a"]);
        let ok = |t: &ActiveToken, b: Option<&Binding>| decide(claim(t, b, None, None, "boot-9"));
        let server1 = token(
            "t",
            TokenScope::Server {
                server_id: "srv-1".into(),
            },
        );
        let server2 = token(
            "t",
            TokenScope::Server {
                server_id: "srv-2".into(),
            },
        );
        assert!(ok(&server1, Some(&b)).is_ok());
        let e = ok(&server2, Some(&b)).unwrap_err();
        assert_eq!(e.code, codes::UNAUTHORIZED);
        assert_eq!(
            e.msg,
            "this agent token is scoped to server srv-2; the node is server srv-1"
        );
        assert!(ok(&server1, None).unwrap_err().msg.contains("cannot enrol"));

        let rack_a = token(
            "t",
            TokenScope::Set {
                label: "rack-a".into(),
            },
        );
        let rack_b = token(
            "t",
            TokenScope::Set {
                label: "rack-b".into(),
            },
        );
        assert_eq!(ok(&rack_a, Some(&b)).unwrap().add_label, None);
        assert_eq!(ok(&rack_b, None).unwrap().add_label, Some("rack-b".into()));
        assert!(
            ok(&rack_b, Some(&b))
                .unwrap_err()
                .msg
                .contains("srv-1 is not in set rack-b")
        );

        let enrol = token("t", TokenScope::Enrol);
        assert!(ok(&enrol, None).is_ok());
        let e = ok(&enrol, Some(&b)).unwrap_err();
        assert_eq!(e.code, codes::UNAUTHORIZED);
        assert!(e.msg.contains("molar server reenrol srv-1"), "{}", e.msg);
        assert!(ok(&token("t", TokenScope::Any), Some(&b)).is_ok());
        assert!(ok(&token("t", TokenScope::Any), None).is_ok());
    }

    #[test]
    fn the_expected_ramdisk_boot_lets_enrolment_claim_and_a_new_boot_replace() {
        let mut b = bound(&[]);
        b.expect_ramdisk_until_ms = Some(NOW + 1);
        let enrol = token("t", TokenScope::Enrol);
        let rack = token(
            "t",
            TokenScope::Set {
                label: "rack-c".into(),
            },
        );
        let a = decide(claim(&enrol, Some(&b), None, None, "boot-2")).unwrap();
        assert!(a.consume_expectation && a.issue);
        let a = decide(claim(&rack, Some(&b), None, None, "boot-2")).unwrap();
        assert_eq!(a.add_label, Some("rack-c".into()));
        // A live session of the old boot is replaced by the new boot ...
        let l = live();
        let a = decide(claim(&enrol, Some(&b), Some(&l), None, "boot-2")).unwrap();
        assert_eq!((a.via, a.supersede), (Via::ExpectedBoot, true));
        // ... never by the same boot without its credential.
        let r = decide(claim(&enrol, Some(&b), Some(&l), None, "boot-1")).unwrap_err();
        assert_eq!(r.code, codes::SESSION_CONFLICT);
        // An expectation that ended allows nothing.
        b.expect_ramdisk_until_ms = Some(NOW);
        assert_eq!(
            decide(claim(&enrol, Some(&b), None, None, "boot-2"))
                .unwrap_err()
                .code,
            codes::UNAUTHORIZED
        );
    }
}
