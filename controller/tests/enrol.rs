//! `POST /api/v1/servers` (enrolling a server by its BMC) with malformed and hostile input:
//! every refusal names the problem, never repeats the password, and stores nothing. The
//! successful paths need a BMC and run against ipmi_sim (`tests/tests/enrol_oob.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "Hunter2-sekrit";

fn body(name: &str, host: &str, port: Value, user: &str, pass: &str) -> String {
    json!({"name": name, "bmc": {"host": host, "port": port, "username": user, "password": pass}})
        .to_string()
}

async fn refused(c: &Controller, body: &str) -> (u16, String, String) {
    let (status, v) = raw_api(c, Method::POST, "/servers", Some(&admin(c)), Some(body)).await;
    let msg = v["error"]["msg"].as_str().unwrap_or_default().to_owned();
    let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
    assert!(!msg.contains("sekrit"), "password in {msg:?}");
    assert!(
        c.client.servers().await.unwrap().is_empty(),
        "stored after {msg:?}"
    );
    (status, code, msg)
}

#[tokio::test]
async fn malformed_enrolments_are_refused_with_what_is_wrong_and_nothing_stored() {
    let c = controller().await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "not valid JSON"),
        ("[]".into(), "invalid request body"),
        (json!({"name": "n"}).to_string(), "missing field `bmc`"),
        (
            json!({"name": "n", "bmc": {"host": "127.0.0.1", "username": "u", "password": PASSWORD}, "extra": 1}).to_string(),
            "unknown field `extra`",
        ),
        (
            json!({"name": "n", "bmc": {"host": "127.0.0.1", "username": "u", "password": PASSWORD, "pass": "x"}}).to_string(),
            "unknown field `pass`",
        ),
        (body("", "127.0.0.1", json!(623), "u", PASSWORD), "1 to 64 characters"),
        (body(&"n".repeat(65), "127.0.0.1", json!(623), "u", PASSWORD), "1 to 64 characters"),
        (body("a/b", "127.0.0.1", json!(623), "u", PASSWORD), "use letters, digits"),
        (body("-rf", "127.0.0.1", json!(623), "u", PASSWORD), "must start with a letter"),
        (body("x\u{1b}[2J", "127.0.0.1", json!(623), "u", PASSWORD), "use letters, digits"),
        (body("n", "bad host!", json!(623), "u", PASSWORD), "neither an IP address nor a DNS name"),
        (body("n", "", json!(623), "u", PASSWORD), "neither an IP address"),
        (body("n", "127.0.0.1", json!(0), "u", PASSWORD), "port 0"),
        (body("n", "127.0.0.1", json!(70000), "u", PASSWORD), "invalid request body"),
        (body("n", "127.0.0.1", json!("623"), "u", PASSWORD), "invalid request body"),
        (body("n", "127.0.0.1", json!(623), "", PASSWORD), "BMC user name has 1 to 16"),
        (body("n", "127.0.0.1", json!(623), &"u".repeat(17), PASSWORD), "BMC user name has 1 to 16"),
        (body("n", "127.0.0.1", json!(623), "u", "0123456789-Hunter2-sekrit"), "BMC password has 1 to 20"),
        (body("n", "127.0.0.1", json!(623), "u", "Hunter2\n-sekrit"), "printable ASCII"),
        (body("n", "127.0.0.1", json!(623), "u", ""), "BMC password has 1 to 20"),
    ];
    for (b, expect) in cases {
        let (status, code, msg) = refused(&c, &b).await;
        assert_eq!(status, 400, "{b}: {msg}");
        assert!(
            code == "invalid_params" || code == "invalid_request",
            "{b}: {code}"
        );
        assert!(msg.contains(expect), "{b}: {msg:?} should say {expect:?}");
    }
    // Without the admin token nothing is even parsed.
    let (status, v) = raw_api(
        &c,
        Method::POST,
        "/servers",
        None,
        Some(&body("n", "127.0.0.1", json!(623), "u", PASSWORD)),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[tokio::test]
async fn a_bmc_that_does_not_answer_is_a_timeout_and_nothing_is_stored() {
    let c = controller().await;
    // A loopback UDP port nobody listens on: the session's packets go unanswered.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, code, msg) = refused(
        &c,
        &body("rack1-07", "127.0.0.1", json!(port), "admin", PASSWORD),
    )
    .await;
    assert_eq!((status, code.as_str()), (504, "timeout"), "{msg}");
    assert!(
        msg.starts_with("verifying the BMC: BMC 127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("no answer"), "{msg}");
}

#[tokio::test]
async fn unknown_names_in_server_routes_are_not_found() {
    let c = controller().await;
    let (status, v) = raw_api(
        &c,
        Method::GET,
        "/servers/no-such-name",
        Some(&admin(&c)),
        None,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["msg"].as_str().unwrap().contains("no-such-name"),
        "{v}"
    );
    // A name-shaped segment that is not a name leaves hostile paths to the router.
    let (status, _) = raw_api(&c, Method::GET, "/servers/%2e%2e", Some(&admin(&c)), None).await;
    assert_eq!(status, 404);
}
