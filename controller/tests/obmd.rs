//! Seed 001's OBMd API under `/obmd` with malformed and hostile input: admin operations
//! refuse anything but basic auth `admin:<admin token>` (or the bearer admin token), token
//! operations refuse a missing or wrong token the same way for unknown nodes, bodies are
//! checked strictly, and nothing is stored by a refusal. The BMC paths run against ipmi_sim
//! (`tests/tests/lab_oob.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::Value;

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// One request to `/obmd{path}`: status and body text.
async fn obmd(
    c: &Controller,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let http = https(c);
    let mut req = http.request(method, format!("{}/obmd{path}", c.running.api_url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn admin_operations_need_the_admin_basic_auth() {
    let c = controller().await;
    let token = c.running.admin_token.expose().to_owned();
    let node = r#"{"type":"ipmi","info":{"addr":"127.0.0.1:1","user":"u","pass":"Sekrit-pw"}}"#;
    for auth in [
        None,
        Some(basic("admin", "wrong")),
        Some(basic("root", &token)),
        Some(basic("admin", "")),
        Some("Basic !!!not-base64".to_string()),
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe])
        )),
        Some(format!("Digest {token}")),
        Some("Bearer not-the-token".into()),
    ] {
        for (method, path, body) in [
            (Method::PUT, "/node/n1", Some(node)),
            (Method::DELETE, "/node/n1", None),
            (Method::POST, "/node/n1/token", None),
            (Method::DELETE, "/node/n1/token", None),
        ] {
            let (status, text) = obmd(&c, method.clone(), path, auth.as_deref(), body).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {text}");
            assert!(!text.contains("Sekrit") && !text.contains(&token), "{text}");
        }
    }
    assert!(c.client.servers().await.unwrap().is_empty());
    // An authenticated admin: unknown nodes are 404, revoking their tokens is a success.
    let admin = basic("admin", &token);
    let (status, _) = obmd(&c, Method::DELETE, "/node/nope", Some(&admin), None).await;
    assert_eq!(status, 404);
    let (status, _) = obmd(&c, Method::POST, "/node/nope/token", Some(&admin), None).await;
    assert_eq!(status, 404);
    let (status, _) = obmd(&c, Method::DELETE, "/node/nope/token", Some(&admin), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn node_registrations_are_checked_strictly_and_store_nothing_when_refused() {
    let c = controller().await;
    let admin = basic("admin", c.running.admin_token.expose());
    for (body, expect) in [
        ("{", "not valid JSON"),
        ("{}", "missing field `type`"),
        (r#"{"type":"ipmi"}"#, "missing field `info`"),
        (
            r#"{"type":"mock","info":{"addr":"h","user":"u","pass":"p"}}"#,
            "not supported",
        ),
        (
            r#"{"type":"ipmi","info":{"addr":"h","user":"u","pass":"p","port":1}}"#,
            "unknown field `port`",
        ),
        (
            r#"{"type":"ipmi","info":{"addr":"bad host","user":"u","pass":"p"}}"#,
            "neither an IP",
        ),
        (
            r#"{"type":"ipmi","info":{"addr":"h:0","user":"u","pass":"p"}}"#,
            "not a number from 1",
        ),
        (
            r#"{"type":"ipmi","info":{"addr":"h","user":"","pass":"p"}}"#,
            "user name has 1 to 16",
        ),
        (
            r#"{"type":"ipmi","info":{"addr":"h","user":"u","pass":"Sekrit-123456789012345"}}"#,
            "password has 1 to 20",
        ),
    ] {
        let (status, text) = obmd(&c, Method::PUT, "/node/n1", Some(&admin), Some(body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(expect), "{body}: {text}");
        assert!(!text.contains("Sekrit"), "{text}");
    }
    // A node id that cannot be a server name.
    let ok = r#"{"type":"ipmi","info":{"addr":"127.0.0.1","user":"u","pass":"p"}}"#;
    let (status, text) = obmd(&c, Method::PUT, "/node/-rf", Some(&admin), Some(ok)).await;
    assert_eq!(status, 400, "{text}");
    assert!(c.client.servers().await.unwrap().is_empty());
}

#[tokio::test]
async fn token_operations_refuse_missing_and_wrong_tokens_alike() {
    let c = controller().await;
    for (method, path, body) in [
        (Method::GET, "/node/n1/console", None),
        (
            Method::POST,
            "/node/n1/power_cycle",
            Some(r#"{"force":true}"#),
        ),
        (Method::POST, "/node/n1/power_on", None),
        (Method::POST, "/node/n1/power_off", None),
        (
            Method::PUT,
            "/node/n1/boot_device",
            Some(r#"{"bootdev":"pxe"}"#),
        ),
        (Method::GET, "/node/n1/power_status", None),
    ] {
        for q in [
            "",
            "?token=",
            "?token=00112233445566778899aabbccddeeff",
            "?token=%00%ff",
        ] {
            let (status, text) = obmd(&c, method.clone(), &format!("{path}{q}"), None, body).await;
            assert_eq!(status, 401, "{method} {path}{q}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
}
