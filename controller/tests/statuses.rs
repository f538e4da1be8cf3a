//! Every error code the API answers, through the real API, with the HTTP status it maps to:
//! what the request got wrong is 4xx, a busy or slow agent 503/504, and 502 only when the
//! agent itself answered the error.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// POSTs `body` to `path` as the admin; returns the status and the error's code.
async fn post(c: &Controller, path: &str, body: &str) -> (u16, String) {
    answer(raw_api(c, reqwest::Method::POST, path, Some(&admin(c)), Some(body)).await)
}

async fn get(c: &Controller, path: &str) -> (u16, String) {
    answer(raw_api(c, reqwest::Method::GET, path, Some(&admin(c)), None).await)
}

fn answer((status, body): (u16, Value)) -> (u16, String) {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

/// A controller with one fake agent; the agent's server id.
async fn with_agent() -> (Controller, FakeAgent, String) {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    (c, a, sid)
}

#[tokio::test]
async fn refused_by_the_agent_is_403() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"reboot"}"#).await,
        (403, "refused".into())
    );
}

#[tokio::test]
async fn busy_is_503() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"poweroff"}"#).await,
        (503, "busy".into())
    );
}

#[tokio::test]
async fn an_agent_not_ready_yet_is_503() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"task.list"}"#).await,
        (503, "not_ready".into())
    );
    assert_eq!(
        post(
            &c,
            &path,
            r#"{"method":"chassis.boot_device","params":{"device":"pxe"}}"#
        )
        .await,
        (503, "hardware_not_ready".into())
    );
}

#[tokio::test]
async fn an_unknown_task_is_404_from_the_agent_and_from_the_controller() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(
            &c,
            &path,
            r#"{"method":"task.cancel","params":{"task_id":"t-x"}}"#
        )
        .await,
        (404, "unknown_task".into())
    );
    assert_eq!(get(&c, "/tasks/t-nope").await, (404, "not_found".into()));
    assert_eq!(
        get(&c, "/tasks/t-nope/events").await,
        (404, "not_found".into())
    );
}

#[tokio::test]
async fn an_unknown_server_is_404() {
    let (c, _a, _) = with_agent().await;
    for (status, code) in [
        get(&c, "/servers/srv-nope").await,
        get(&c, "/servers/srv-nope/tasks").await,
        get(&c, "/servers/srv-nope/logs").await,
        post(&c, "/servers/srv-nope/call", r#"{"method":"ping"}"#).await,
        post(
            &c,
            "/servers/srv-nope/tasks",
            r#"{"method":"decom.disk_erase"}"#,
        )
        .await,
    ] {
        assert_eq!((status, code.as_str()), (404, "not_found"));
    }
}

#[tokio::test]
async fn invalid_params_is_400() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"ping","params":[1]}"#).await,
        (400, "invalid_params".into())
    );
    assert_eq!(
        get(&c, &format!("/servers/{sid}/logs?after=x")).await,
        (400, "invalid_params".into())
    );
}

#[tokio::test]
async fn invalid_request_is_400() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, "{not json").await,
        (400, "invalid_request".into())
    );
}

#[tokio::test]
async fn an_unknown_method_is_400() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"no.such.method"}"#).await,
        (400, "unknown_method".into())
    );
}

#[tokio::test]
async fn not_connected_is_409() {
    let (c, a, sid) = with_agent().await;
    a.peer.close(None).await;
    let _ = a.task.await;
    let fleet = c.running.fleet.clone();
    eventually("the agent to be disconnected", || !fleet.is_connected(&sid)).await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"ping"}"#).await,
        (409, "not_connected".into())
    );
}

#[tokio::test]
async fn a_call_the_agent_does_not_answer_in_time_is_504() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        post(&c, &path, r#"{"method":"status","timeout_s":0.2}"#).await,
        (504, "timeout".into())
    );
}

#[tokio::test]
async fn an_error_the_agent_answered_is_502_and_relayed_as_sent() {
    let (c, _a, sid) = with_agent().await;
    let path = format!("/servers/{sid}/call");
    let (status, body) = raw_api(
        &c,
        reqwest::Method::POST,
        &path,
        Some(&admin(&c)),
        Some(r#"{"method":"bmc.reset"}"#),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"error":{"msg":"the BMC did not answer","code":"io_error"}})
    );
    // The agent's "unauthorized" is not the operator's admin token being wrong.
    assert_eq!(
        post(
            &c,
            &path,
            r#"{"method":"chassis.power","params":{"action":"status"}}"#
        )
        .await,
        (502, "unauthorized".into())
    );
}

#[tokio::test]
async fn a_wrong_admin_token_is_401() {
    let (c, _a, _) = with_agent().await;
    assert_eq!(
        answer(raw_api(&c, reqwest::Method::GET, "/servers", Some("Bearer x"), None).await),
        (401, "unauthorized".into())
    );
}
