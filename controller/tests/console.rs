//! Console routes: tokens (create, expiry, revoke, wrong token, removed server), malformed
//! and hostile input, the bounded log, the chunked and WebSocket streams of a server with no
//! BMC (which end saying so), and that no token shows in any answer.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use molar_controller::console::attach;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn http(c: &Controller) -> reqwest::Client {
    let ca = std::fs::read(&c.running.ca_pem_path).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// `GET /servers/{id}/console?token=T` as `curl` does it: status and the whole body (the
/// stream of a server with no BMC ends at once).
async fn stream_with_token(c: &Controller, id: &str, token: &str) -> (u16, String, String) {
    let url = format!(
        "{}/api/v1/servers/{id}/console?token={token}",
        c.running.api_url
    );
    let resp = tokio::time::timeout(Duration::from_secs(20), http(c).get(url).send())
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .unwrap()
        .unwrap();
    (status, ctype, body)
}

#[tokio::test]
async fn tokens_stream_and_are_revoked_expired_and_removed_with_the_server() {
    let c = controller().await;
    let agent = fake_agent(&c, 1).await;
    let id = agent.welcome.server_id.clone();

    let made = c.client.create_console_token(&id, None).await.unwrap();
    let token = made.token.expose().to_owned();
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let left = made.expires_ms - molar_controller::store::now_ms();
    assert!((3_500_000..=3_600_000).contains(&left), "{left}");
    // The token redacts itself anywhere but its one answer.
    assert!(!format!("{made:?}").contains(&token));

    // A holder streams without the admin token: this server has no BMC, so the stream
    // says so and ends.
    let (status, ctype, body) = stream_with_token(&c, &id, &token).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    assert!(body.contains("has no BMC on record"), "{body}");
    assert!(!body.contains(&token));

    // Wrong, empty, hostile and other-server tokens: one refusal, never echoed.
    let other = fake_agent(&c, 2).await.welcome.server_id;
    let hostile = "%00%ff'\"<>".repeat(100);
    for (sid, t) in [
        (id.as_str(), "0123456789abcdef0123456789abcdef"),
        (id.as_str(), ""),
        (id.as_str(), hostile.as_str()),
        (other.as_str(), token.as_str()),
        ("no-such-server", token.as_str()),
    ] {
        let (status, _, body) = stream_with_token(&c, sid, t).await;
        assert_eq!(status, 401, "{sid} {t}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(!body.contains(&token) || t != token);
        assert!(!body.contains("0123456789abcdef"));
    }
    // A console token is no admin token.
    let (status, _) = raw_api(
        &c,
        Method::GET,
        &format!("/servers/{id}/console/log"),
        Some(&format!("Bearer {token}")),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Revoked: refused.
    let revoked = c.client.revoke_console_tokens(&id).await.unwrap();
    assert_eq!(revoked.revoked, 1);
    assert_eq!(stream_with_token(&c, &id, &token).await.0, 401);

    // Expired: refused.
    let short = c.client.create_console_token(&id, Some(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        stream_with_token(&c, &id, short.token.expose()).await.0,
        401
    );

    // Removing the server revokes its tokens.
    let live = c.client.create_console_token(&id, Some(600)).await.unwrap();
    assert_eq!(stream_with_token(&c, &id, live.token.expose()).await.0, 200);
    c.client.remove_server(&id).await.unwrap();
    assert_eq!(stream_with_token(&c, &id, live.token.expose()).await.0, 401);
    let (status, v) = raw_api(
        &c,
        Method::POST,
        &format!("/servers/{id}/console/token"),
        Some(&admin(&c)),
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn malformed_and_hostile_token_requests_are_refused_clearly() {
    let c = controller().await;
    let id = fake_agent(&c, 1).await.welcome.server_id;
    let path = format!("/servers/{id}/console/token");
    for (body, code, needle) in [
        (
            "{\"ttl_s\": 0}",
            "invalid_params",
            "ttl_s must be 1 to 604800 seconds, not 0",
        ),
        ("{\"ttl_s\": 604801}", "invalid_params", "not 604801"),
        ("{\"ttl_s\": -1}", "invalid_params", "invalid request body"),
        (
            "{\"ttl_s\": \"1\"}",
            "invalid_params",
            "invalid request body",
        ),
        ("{\"ttl_s\": 1e400}", "invalid_request", "not valid JSON"),
        ("{\"ttl\": 5}", "invalid_params", "unknown field `ttl`"),
        ("{", "invalid_request", "not valid JSON"),
        ("[]", "invalid_params", "invalid request body"),
    ] {
        let (status, v) = raw_api(&c, Method::POST, &path, Some(&admin(&c)), Some(body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        let msg = v["error"]["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // An empty body is the default lifetime; a long id is just an unknown server.
    let (status, v) = raw_api(&c, Method::POST, &path, Some(&admin(&c)), Some("")).await;
    assert_eq!(status, 200, "{v}");
    let long = "x".repeat(4000);
    let (status, _) = raw_api(
        &c,
        Method::POST,
        &format!("/servers/{long}/console/token"),
        Some(&admin(&c)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Without the admin token nothing but the token stream is reachable.
    for (m, p) in [
        (Method::POST, path.clone()),
        (Method::DELETE, path.clone()),
        (Method::GET, format!("/servers/{id}/console/log")),
        (Method::GET, format!("/servers/{id}/console")),
    ] {
        let (status, v) = raw_api(&c, m.clone(), &p, None, None).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{m} {p}"
        );
    }
    // The token stream with a bad flag is refused before anything is attached.
    let (status, v) = raw_api(
        &c,
        Method::GET,
        &format!("/servers/{id}/console?force=maybe"),
        Some(&admin(&c)),
        None,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        v["error"]["msg"],
        "query parameter force must be true or false, not \"maybe\""
    );
}

#[tokio::test]
async fn the_console_log_is_bounded_and_shown_by_molar_console_log() {
    let c = controller().await;
    let id = fake_agent(&c, 1).await.welcome.server_id;
    let store = &c.running.fleet.store;
    assert!(c.client.console_log(&id).await.unwrap().is_empty());
    for i in 0..40u8 {
        let mut chunk = vec![b'a' + (i % 26); 64 * 1024 - 1];
        chunk.push(b'\n');
        store.append_console_log(&id, chunk).await.unwrap();
    }
    store
        .append_console_log(&id, b"login: \x1b[0m".to_vec())
        .await
        .unwrap();
    let log = c.client.console_log(&id).await.unwrap();
    assert!(
        log.len() <= molar_controller::store::CONSOLE_LOG_CAP,
        "{}",
        log.len()
    );
    assert!(log.len() > molar_controller::store::CONSOLE_LOG_CAP / 2);
    assert!(log.ends_with(b"login: \x1b[0m"));

    let (code, out, err) = molar(&c, &["console", &id, "--log"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("login: \x1b[0m"),
        "{}",
        &out[out.len() - 40..]
    );
    let (code, _, err) = molar(&c, &["console", "no-such-server", "--log"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no-such-server"), "{err}");

    // Removing the server drops its log.
    c.client.remove_server(&id).await.unwrap();
    assert!(store.console_log(&id).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_websocket_ends_saying_why_and_a_token_holder_may_open_it() {
    let c = controller().await;
    let id = fake_agent(&c, 1).await.welcome.server_id;

    // The CLI's own connection (admin token): no BMC, so the console ends at once.
    let mut ws = attach::connect(&c.client, &id, false).await.unwrap();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if let Some(e) = v["ended"].as_str() {
                    break e.to_owned();
                }
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(ended.contains("has no BMC on record"), "{ended}");

    // Unknown server: refused before the upgrade, with the API's error.
    match attach::connect(&c.client, "no-such-server", false).await {
        Err(attach::AttachError::Refused { code, msg }) => {
            assert_eq!(code, "not_found");
            assert!(msg.contains("no-such-server"), "{msg}");
        }
        other => panic!("{other:?}"),
    }

    // A token holder's WebSocket, hostile frames included.
    let token = c.client.create_console_token(&id, None).await.unwrap();
    let tls = tls_stream(c.running.api_addr, &c.running.ca_pem_path).await;
    let req = format!(
        "wss://127.0.0.1:{}/api/v1/servers/{id}/console?token={}",
        c.running.api_addr.port(),
        token.token.expose()
    )
    .into_client_request()
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let _ = ws.send(Message::Text("{\"break\": \"yes\"}".into())).await;
    let _ = ws.send(Message::Binary(vec![0xFF; 1000].into())).await;
    let mut saw_end = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        if let Message::Text(t) = m {
            assert!(!t.as_str().contains(token.token.expose()));
            saw_end |= t.as_str().contains("\"ended\"");
        }
    }
    assert!(saw_end);

    // The controller still answers.
    assert_eq!(c.client.servers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn molar_console_restores_the_terminal_whatever_ends_it() {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    let c = controller().await;
    let id = fake_agent(&c, 1).await.welcome.server_id;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let before = tcgetattr(&slave).unwrap();
    assert!(before.local_flags.contains(LocalFlags::ICANON));
    // This server has no BMC: the console ends with an error after raw mode was entered.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .arg("--state-dir")
        .arg(c.dir.path())
        .args(["console", &id])
        .env_remove("MOLAR_API")
        .env_remove("MOLAR_TOKEN_FILE")
        .env_remove("MOLAR_CA")
        .stdin(slave.try_clone().unwrap())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("has no BMC on record"), "{stderr}");
    assert!(!stderr.contains(c.running.admin_token.expose()));
    let after = tcgetattr(&slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    drop(pty.master);
}
