//! Issue #9: credentials bound to servers. Fake agents (real protocol peers over TLS) try
//! what an attacker holding some agent token would: claim a connected server's identity,
//! use a token outside its scope, enrol over an enrolled server; and what operators do:
//! scope, revoke and rotate tokens, re-enrol a server, read the events.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_controller::store::{EventRecord, TokenScope};
use molar_protocol::methods::HandshakeParams;
use molar_protocol::{CallError, CloseReason, ErrorBody, Secret};
use serde_json::json;
use std::time::Duration;

/// The refusal a handshake got: its error body.
fn refusal(r: Result<FakeAgent, CallError>) -> ErrorBody {
    match r {
        Ok(a) => panic!("admitted as {}", a.welcome.server_id),
        Err(CallError::Remote(body)) => body,
        Err(e) => panic!("not refused but {e}"),
    }
}

async fn token(c: &Controller, name: &str, scope: TokenScope) -> (String, String) {
    let t = c.client.create_scoped_token(name, &scope).await.unwrap();
    assert_eq!(t.scope, scope);
    (t.id, t.token.expose().to_owned())
}

/// Node `n` with `token`, from boot `boot`.
fn node(token: &str, n: u32, boot: &str) -> HandshakeParams {
    let mut h = hello(token, n);
    h.boot_id = boot.into();
    h
}

async fn events(c: &Controller) -> Vec<EventRecord> {
    c.client.events(None, 0, 1000).await.unwrap().events
}

/// Closes a fake agent's connection and waits until the controller has noticed.
async fn disconnect(c: &Controller, a: FakeAgent) {
    let sid = a.welcome.server_id.clone();
    a.peer.close(None).await;
    let _ = a.task.await;
    let fleet = c.running.fleet.clone();
    eventually("the controller to notice the close", || {
        !fleet.is_connected(&sid)
    })
    .await;
}

#[tokio::test]
async fn an_impostor_with_another_token_cannot_take_a_live_session() {
    let c = controller().await;
    let real = fake_agent(&c, 1).await;
    let sid = real.welcome.server_id.clone();
    let (other_id, other) = token(&c, "other", TokenScope::Any).await;
    // The same uuid and MACs, any boot, no credential or a made-up one.
    for (boot, session) in [
        ("boot-1", None),
        ("boot-evil", None),
        ("boot-1", Some("0".repeat(64))),
    ] {
        let mut h = node(&other, 1, boot);
        h.session = session.map(Secret::new);
        let body = refusal(fake_agent_as(&c, &h).await);
        assert_eq!(body.code, "session_conflict", "{body:?}");
        assert_eq!(
            body.msg,
            format!(
                "server {sid} has a live session; only that session's credential may replace it"
            )
        );
    }
    // The agent's own token without its credential is refused too: never superseded.
    let body = refusal(fake_agent_as(&c, &hello(&c.agent_token, 1)).await);
    assert_eq!(body.code, "session_conflict");

    still_answers(&c, &sid).await;
    assert!(!real.peer.is_closed());
    assert_eq!(c.client.servers().await.unwrap().len(), 1);
    let evs = events(&c).await;
    let refused: Vec<_> = evs
        .iter()
        .filter(|e| e.event.kind == "handshake_refused")
        .collect();
    assert_eq!(refused.len(), 4, "{evs:?}");
    assert_eq!(refused[0].event.server_id.as_deref(), Some(sid.as_str()));
    assert_eq!(
        refused[0].event.token_id.as_deref(),
        Some(other_id.as_str())
    );
    assert!(refused[0].event.peer_addr.is_some());
    assert!(refused[0].event.msg.contains("session_conflict"));
    // No secret in any event.
    let text = serde_json::to_string(&evs).unwrap();
    for secret in [&other, &c.agent_token] {
        assert!(!text.contains(secret.as_str()));
    }
    assert!(!text.contains(real.welcome.session.as_ref().unwrap().expose()));
}

#[tokio::test]
async fn the_session_credential_reconnects_within_its_boot_only() {
    let c = controller().await;
    let first = fake_agent(&c, 2).await;
    let sid = first.welcome.server_id.clone();
    let cred = first.welcome.session.clone().unwrap();
    assert_eq!(cred.expose().len(), 64);

    // The connection died without the controller noticing: the credential replaces it.
    let mut again = hello(&c.agent_token, 2);
    again.session = Some(cred.clone());
    let second = fake_agent_as(&c, &again).await.unwrap();
    assert_eq!(second.welcome.server_id, sid);
    assert_eq!(
        first.task.await.unwrap(),
        CloseReason::RemoteFatal("superseded by a new connection".into())
    );
    still_answers(&c, &sid).await;
    let evs = events(&c).await;
    assert!(
        evs.iter().any(|e| e.event.kind == "session_superseded"
            && e.event.server_id.as_deref() == Some(sid.as_str())),
        "{evs:?}"
    );

    // After a dropped connection the credential still works, and survives a restart of
    // the controller's store (it is kept hashed).
    disconnect(&c, second).await;
    let third = fake_agent_as(&c, &again).await.unwrap();
    assert_eq!(
        (
            third.welcome.server_id.as_str(),
            third.welcome.session.as_ref()
        ),
        (sid.as_str(), None)
    );

    // The credential is bound to its boot: presented from another boot while the session
    // is live, it is refused; and to its token: with another token, refused.
    let mut other_boot = again.clone();
    other_boot.boot_id = "boot-2-later".into();
    assert_eq!(
        refusal(fake_agent_as(&c, &other_boot).await).code,
        "session_conflict"
    );
    let (_, other) = token(&c, "other", TokenScope::Any).await;
    let mut other_token = again.clone();
    other_token.token = Secret::new(other);
    assert_eq!(
        refusal(fake_agent_as(&c, &other_token).await).code,
        "session_conflict"
    );
    still_answers(&c, &sid).await;

    // A new boot once the session is gone gets a new credential; the old one is dead.
    disconnect(&c, third).await;
    let rebooted = fake_agent_as(&c, &other_boot).await.unwrap();
    let new_cred = rebooted.welcome.session.clone().unwrap();
    assert_ne!(new_cred, cred);
    assert_eq!(
        refusal(fake_agent_as(&c, &again).await).code,
        "session_conflict"
    );
}

#[tokio::test]
async fn each_token_scope_admits_its_servers_and_refuses_the_rest() {
    let c = controller().await;
    // Server 1 enrolled with the unscoped token, then offline.
    let one = fake_agent(&c, 1).await;
    let sid1 = one.welcome.server_id.clone();
    disconnect(&c, one).await;

    // server: only that server, never a new one.
    let (_, server_tok) = token(
        &c,
        "srv1",
        TokenScope::Server {
            server_id: sid1.clone(),
        },
    )
    .await;
    let a = fake_agent_as(&c, &node(&server_tok, 1, "b-1"))
        .await
        .unwrap();
    assert_eq!(a.welcome.server_id, sid1);
    disconnect(&c, a).await;
    let body = refusal(fake_agent_as(&c, &node(&server_tok, 2, "b-2")).await);
    assert_eq!(body.code, "unauthorized");
    assert_eq!(
        body.msg,
        format!("this agent token is scoped to server {sid1}; it cannot enrol a new server")
    );

    // set: enrols new servers into the set, reconnects its members, nothing else.
    let (_, rack) = token(
        &c,
        "rack-a",
        TokenScope::Set {
            label: "rack-a".into(),
        },
    )
    .await;
    let three = fake_agent_as(&c, &node(&rack, 3, "b-3")).await.unwrap();
    let sid3 = three.welcome.server_id.clone();
    assert_eq!(
        c.client.server(&sid3, false).await.unwrap().server.labels,
        vec!["rack-a"]
    );
    disconnect(&c, three).await;
    let back = fake_agent_as(&c, &node(&rack, 3, "b-3-reboot"))
        .await
        .unwrap();
    assert_eq!(back.welcome.server_id, sid3);
    let body = refusal(fake_agent_as(&c, &node(&rack, 1, "b-1-2")).await);
    assert_eq!(body.code, "unauthorized");
    assert!(
        body.msg
            .contains(&format!("server {sid1} is not in set rack-a")),
        "{}",
        body.msg
    );

    // enrol: new servers only.
    let (_, enrol) = token(&c, "enrol", TokenScope::Enrol).await;
    let four = fake_agent_as(&c, &node(&enrol, 4, "b-4")).await.unwrap();
    let sid4 = four.welcome.server_id.clone();
    disconnect(&c, four).await;
    let body = refusal(fake_agent_as(&c, &node(&enrol, 4, "b-4-reboot")).await);
    assert_eq!(body.code, "unauthorized");
    assert_eq!(
        body.msg,
        format!(
            "server {sid4} is already enrolled; an enrolment token claims it only after `molar server reenrol {sid4}`"
        )
    );
    let body = refusal(fake_agent_as(&c, &node(&enrol, 1, "b-1-3")).await);
    assert_eq!(body.code, "unauthorized");

    // Nothing refused was stored: four servers' worth of handshakes made three servers.
    assert_eq!(c.client.servers().await.unwrap().len(), 3);
    let refused = events(&c)
        .await
        .into_iter()
        .filter(|e| e.event.kind == "handshake_refused")
        .count();
    assert_eq!(refused, 4);
}

#[tokio::test]
async fn an_enrolment_token_claims_an_enrolled_server_only_after_reenrol() {
    let c = controller().await;
    let (_, enrol) = token(&c, "enrol", TokenScope::Enrol).await;
    let a = fake_agent_as(&c, &node(&enrol, 5, "b-1")).await.unwrap();
    let sid = a.welcome.server_id.clone();
    // Within its boot the credential reconnects (the enrolment token alone would not).
    let mut again = node(&enrol, 5, "b-1");
    again.session = a.welcome.session.clone();
    disconnect(&c, a).await;
    let a = fake_agent_as(&c, &again).await.unwrap();
    disconnect(&c, a).await;
    assert_eq!(
        refusal(fake_agent_as(&c, &node(&enrol, 5, "b-2")).await).code,
        "unauthorized"
    );

    let (code, out, err) = molar(&c, &["server", "reenrol", &sid, "--for-s", "600"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "server {sid} may boot the ramdisk and enrol again until "
        )),
        "{out}"
    );
    let shown = c.client.server(&sid, false).await.unwrap().server;
    assert!(shown.expect_ramdisk_until_ms.is_some());

    let b = fake_agent_as(&c, &node(&enrol, 5, "b-2")).await.unwrap();
    assert_eq!(b.welcome.server_id, sid);
    assert!(b.welcome.session.is_some());
    // The expectation is used up: the next boot needs another re-enrolment.
    disconnect(&c, b).await;
    assert_eq!(
        c.client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .expect_ramdisk_until_ms,
        None
    );
    assert_eq!(
        refusal(fake_agent_as(&c, &node(&enrol, 5, "b-3")).await).code,
        "unauthorized"
    );
    let (code, _, err) = molar(&c, &["server", "reenrol", "srv-nope"]).await;
    assert_eq!(code, 3, "{err}");
}

#[tokio::test]
async fn the_expected_boot_after_a_reboot_replaces_the_old_session() {
    let c = controller().await;
    let a = fake_agent(&c, 6).await;
    let sid = a.welcome.server_id.clone();
    c.running
        .fleet
        .expect_ramdisk(&sid, Duration::from_secs(60), "test: power-cycled into PXE")
        .await
        .unwrap();
    // The old connection is still open (a machine that reset sends no FIN); the new boot
    // takes its place, the same boot without the credential still cannot.
    assert_eq!(
        refusal(fake_agent_as(&c, &hello(&c.agent_token, 6)).await).code,
        "session_conflict"
    );
    let b = fake_agent_as(&c, &node(&c.agent_token, 6, "boot-6-new"))
        .await
        .unwrap();
    assert_eq!(b.welcome.server_id, sid);
    assert_eq!(
        a.task.await.unwrap(),
        CloseReason::RemoteFatal("superseded by a new connection".into())
    );
    still_answers(&c, &sid).await;
    let kinds: Vec<String> = events(&c).await.into_iter().map(|e| e.event.kind).collect();
    assert!(kinds.contains(&"ramdisk_expected".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"session_superseded".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn revoking_a_token_closes_its_live_sessions_at_once() {
    let c = controller().await;
    let (id, tok) = token(&c, "doomed", TokenScope::Any).await;
    let doomed = fake_agent_as(&c, &node(&tok, 1, "b")).await.unwrap();
    let kept = fake_agent(&c, 2).await;
    c.client.revoke_token(&id).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), doomed.task)
        .await
        .expect("the session closes at once")
        .unwrap();
    assert_eq!(
        closed,
        CloseReason::RemoteFatal("agent token revoked".into())
    );
    let sid = doomed.welcome.server_id.clone();
    let fleet = c.running.fleet.clone();
    eventually("the revoked session to be gone", || {
        !fleet.is_connected(&sid)
    })
    .await;
    let err = c
        .client
        .call(&sid, "ping", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_connected");
    // Its credential went with it.
    let mut again = node(&tok, 1, "b");
    again.session = doomed.welcome.session.clone();
    let body = refusal(fake_agent_as(&c, &again).await);
    assert_eq!(
        (body.code.as_str(), body.msg.as_str()),
        ("unauthorized", "invalid agent token")
    );
    still_answers(&c, &kept.welcome.server_id).await;
    let evs = events(&c).await;
    let revoked = evs
        .iter()
        .find(|e| e.event.kind == "token_revoked")
        .unwrap();
    assert_eq!(
        revoked.event.msg,
        format!("agent token {id} revoked; 1 sessions closed")
    );
}

#[tokio::test]
async fn rotating_a_token_keeps_its_scope_and_retires_the_old_secret() {
    let c = controller().await;
    let (id, old) = token(
        &c,
        "rack-b",
        TokenScope::Set {
            label: "rack-b".into(),
        },
    )
    .await;
    let a = fake_agent_as(&c, &node(&old, 8, "b-8")).await.unwrap();
    let sid = a.welcome.server_id.clone();

    let (code, out, err) = molar(&c, &["--json", "token", "rotate", &id]).await;
    assert_eq!(code, 0, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["rotated_from"], id.as_str());
    assert_eq!(rotated["scope"], json!({"kind": "set", "label": "rack-b"}));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), a.task)
            .await
            .unwrap()
            .unwrap(),
        CloseReason::RemoteFatal("agent token revoked".into())
    );
    let fleet = c.running.fleet.clone();
    eventually("the old session to be gone", || !fleet.is_connected(&sid)).await;
    assert_eq!(
        refusal(fake_agent_as(&c, &node(&old, 8, "b-8")).await).code,
        "unauthorized"
    );
    let b = fake_agent_as(&c, &node(&new, 8, "b-8")).await.unwrap();
    assert_eq!(b.welcome.server_id, sid);

    let tokens = c.client.tokens().await.unwrap();
    let old_rec = tokens.iter().find(|t| t.id == id).unwrap();
    assert!(old_rec.revoked_ms.is_some());
    let new_rec = tokens
        .iter()
        .find(|t| t.rotated_from.as_deref() == Some(&id))
        .unwrap();
    assert_eq!(
        (new_rec.name.as_str(), &new_rec.scope),
        ("rack-b", &old_rec.scope)
    );
    // A revoked (or unknown) token cannot be rotated.
    let (code, _, err) = molar(&c, &["token", "rotate", &id]).await;
    assert_eq!(code, 3, "{err}");
    // `molar token list` shows the scope; `molar events` the rotation.
    let (code, out, _) = molar(&c, &["token", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("SCOPE"), "{out}");
    assert!(out.contains("set rack-b"), "{out}");
    let (code, out, _) = molar(&c, &["events"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("token_rotated server=- token={id}")),
        "{out}"
    );
    assert!(!out.contains(&old) && !out.contains(&new));
}

#[tokio::test]
async fn hostile_input_to_the_new_routes_and_fields_is_refused_in_the_json_shape() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let sid = good.welcome.server_id.clone();
    let auth = admin(&c);
    use reqwest::Method;
    let long = "s".repeat(10_000);
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "server": sid, "enrol": true}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "set": "rack a\u{1b}[2J"}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "set": ""}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "server": long}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "server": "srv-nope"}).to_string()),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "scope": "any"}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "enrol": "yes"}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            "/tokens/tok-nope/rotate".into(),
            None,
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("/servers/{sid}/reenrol"),
            Some(json!({"for_s": 0}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            format!("/servers/{sid}/reenrol"),
            Some(json!({"for_s": 1u64 << 40}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            format!("/servers/{sid}/reenrol"),
            Some(json!({"for_s": -1}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            format!("/servers/{sid}/reenrol"),
            Some(json!({"until": 1}).to_string()),
            400,
            "invalid_params",
        ),
        (
            Method::POST,
            format!("/servers/{sid}/reenrol"),
            Some("{".into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/servers/srv-nope/reenrol".into(),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/events?limit=many".into(),
            None,
            400,
            "invalid_params",
        ),
        (
            Method::GET,
            format!("/events?server={}", "x".repeat(200)),
            None,
            400,
            "invalid_params",
        ),
        (
            Method::GET,
            "/events?after=-1x".into(),
            None,
            400,
            "invalid_params",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = raw_api(&c, method.clone(), &path, Some(&auth), body.as_deref()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
        let msg = answer["error"]["msg"].as_str().unwrap();
        assert!(msg.len() < 300, "{path}: the error repeats input: {msg}");
    }
    // Without the admin token, nothing.
    for path in ["/events", "/tokens/tok-x/rotate"] {
        let (got, _) = raw_api(&c, Method::GET, path, None, None).await;
        assert!(got == 401 || got == 405, "{path}: {got}");
    }
    let (got, _) = raw_api(
        &c,
        Method::POST,
        &format!("/servers/{sid}/reenrol"),
        None,
        None,
    )
    .await;
    assert_eq!(got, 401);
    assert_eq!(
        c.client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .expect_ramdisk_until_ms,
        None
    );

    // The handshake's session field: too long, or not a string.
    let mut h = hello(&c.agent_token, 2);
    h.session = Some(Secret::new("c".repeat(100_000)));
    let body = refusal(fake_agent_as(&c, &h).await);
    assert_eq!(
        body.msg,
        "invalid params for handshake: session is longer than 128 bytes"
    );
    // Refused before any server is looked at, and still an event, without the value.
    let evs = events(&c).await;
    let ev = evs.last().unwrap();
    assert_eq!(ev.event.kind, "handshake_refused");
    assert!(
        ev.event.msg.contains("session is longer than 128 bytes"),
        "{ev:?}"
    );
    assert!(!serde_json::to_string(&evs).unwrap().contains("ccccccccc"));
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    let mut params = serde_json::to_value(hello(&c.agent_token, 2)).unwrap();
    params["session"] = json!({"nested": true});
    raw.send(&json!({"version":"v1","id":"h1","method":"handshake","params": params}).to_string())
        .await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["error"]["code"], "invalid_params", "{reply}");
    // A session credential for no server at all is just not one: admitted by token.
    let mut h = hello(&c.agent_token, 3);
    h.session = Some(Secret::new("f".repeat(64)));
    let a = fake_agent_as(&c, &h).await.unwrap();
    assert!(a.welcome.session.is_some());
    still_answers(&c, &sid).await;
}

#[tokio::test]
async fn a_reboot_the_controller_sent_lets_the_new_boot_replace_the_session() {
    use futures::FutureExt;
    let c = controller().await;
    let handler: std::sync::Arc<dyn molar_protocol::Handler> = std::sync::Arc::new(
        |_: &molar_protocol::PeerHandle, method: String, params: serde_json::Value| {
            async move {
                Ok(match method.as_str() {
                    "chassis.power" => json!({"action": params["action"],
                        "status": {"power_on": true}}),
                    _ => json!({"action": method}),
                })
            }
            .boxed()
        },
    );
    let a = fake_agent_with(&c, 9, handler).await;
    let sid = a.welcome.server_id.clone();
    let expected = || async {
        c.client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .expect_ramdisk_until_ms
    };
    // Reading the power state expects nothing.
    let _ = c
        .client
        .call(&sid, "chassis.power", json!({"action": "status"}), None)
        .await;
    assert_eq!(expected().await, None);
    c.client
        .call(&sid, "reboot", json!({}), None)
        .await
        .unwrap();
    assert!(expected().await.is_some());
    // The rebooted machine's old connection never closed; its new boot takes its place.
    let b = fake_agent_as(&c, &node(&c.agent_token, 9, "boot-9-after-reboot"))
        .await
        .unwrap();
    assert_eq!(b.welcome.server_id, sid);
    assert_eq!(
        a.task.await.unwrap(),
        CloseReason::RemoteFatal("superseded by a new connection".into())
    );
    assert_eq!(expected().await, None, "the expectation is used up");
}
