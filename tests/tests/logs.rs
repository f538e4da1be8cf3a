//! Log forwarding end to end: the agent's tracing records reach the controller's store and the
//! logs API, in order, with their structured fields. Its own test binary because it installs a
//! process-wide tracing subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::logfwd::{ForwardLayer, LogBuffer};
use molar_agent::tls::Trust;
use molar_protocol::Method;
use molar_protocol::catalogue::Qc;
use molar_tests::inproc::{Controller, TestAgent, connected_server, eventually, machine_root};
use serde_json::json;
use tracing_subscriber::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_logs_reach_the_controller() {
    let buffer = LogBuffer::new(1000);
    tracing_subscriber::registry()
        .with(ForwardLayer::new(buffer.clone(), tracing::Level::INFO))
        .init();

    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let root = tempfile::tempdir().unwrap();
    machine_root(root.path(), "S200", "52:54:00:00:02:00");
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        root.path(),
    );
    let agent = TestAgent::start_with(cfg, root, buffer);
    let client = ctl.client();
    let id = connected_server(&client, "S200").await;

    let t = client
        .start_task(&id, Qc::NAME, json!({"steps": 1, "step_ms": 1}))
        .await
        .unwrap();
    let page = eventually(10, "the task's log record", || async {
        let page = client.logs(&id, 0, 1000).await.ok()?;
        page.logs
            .iter()
            .any(|l| {
                l.msg == "counting started"
                    && l.fields.as_ref().and_then(|f| f.get("task_id")) == Some(&json!(t.task_id))
            })
            .then_some(page)
    })
    .await;
    let rec = page
        .logs
        .iter()
        .find(|l| l.msg == "counting started")
        .unwrap();
    assert_eq!(rec.level, "info");
    assert_eq!(rec.fields.as_ref().unwrap()["steps"], json!(1));
    // The agent's own connection log came first.
    let connected = page
        .logs
        .iter()
        .position(|l| l.msg == "connected to the controller")
        .expect("connection record forwarded");
    let counting = page
        .logs
        .iter()
        .position(|l| l.msg == "counting started")
        .unwrap();
    assert!(connected < counting);
    // Paging: nothing after the last id.
    let next = client.logs(&id, page.next_after, 1000).await.unwrap();
    assert!(next.logs.iter().all(|l| l.msg != "counting started"));
    agent.stop().await;
}
