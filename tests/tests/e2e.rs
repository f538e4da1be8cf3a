//! End to end, in one process: a real controller (TLS listener, SQLite store, HTTPS API) and
//! real agents over loopback TLS. Covers the Foundation issue's scenarios: handshake, ping,
//! status, a task's whole life, cancellation, controller and agent restarts, and the bad input
//! that reaches the agent through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::logfwd::LogBuffer;
use molar_agent::session::AGENT_VERSION;
use molar_agent::tls::Trust;
use molar_controller::store::TaskPhase;
use molar_protocol::catalogue::Qc;
use molar_protocol::{Method, Secret};
use molar_tests::inproc::{Controller, TestAgent, connected_server, eventually};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_and_answers_ping_and_status() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S100",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S100").await;
    eventually(5, "agent to learn its server id", || async {
        (agent.agent.server_id().as_deref() == Some(id.as_str())).then_some(())
    })
    .await;

    let echoed = client
        .call(&id, "ping", json!({"x": 1}), None)
        .await
        .unwrap();
    assert_eq!(echoed, json!({"x": 1}));

    let status = client.call(&id, "status", json!({}), None).await.unwrap();
    assert_eq!(status["agent_version"], AGENT_VERSION);
    assert_eq!(status["boot_id"], "boot-S100");
    assert_eq!(status["ramdisk"], false);
    assert_eq!(status["tasks"], json!([]));

    let view = client.server(&id, false).await.unwrap();
    assert_eq!(view.server.macs, vec!["52:54:00:12:34:56"]);
    assert_eq!(
        view.server.system_uuid.as_deref(),
        Some("5e1f6c2a-8d3b-4b8e-9a51-00000000s100")
    );
    assert_eq!(view.server.boot_id.as_deref(), Some("boot-S100"));
    assert_eq!(view.server.agent_version.as_deref(), Some(AGENT_VERSION));

    // Discovery: the controller took the inventory at the first connection and made the
    // server available.
    let discovered = eventually(10, "discovery to complete", || async {
        let v = client.server(&id, true).await.ok()?;
        (v.server.state == molar_controller::store::ServerState::Available).then_some(v)
    })
    .await;
    let inv = discovered.inventory.expect("inventory stored");
    assert_eq!(inv["system"]["serial"], "S100");
    assert_eq!(inv["nics"][0]["mac"], "52:54:00:12:34:56");

    agent.stop().await;
    eventually(10, "server to show disconnected", || async {
        let v = client.server(&id, false).await.ok()?;
        (!v.server.connected).then_some(())
    })
    .await;
    let err = client.call(&id, "ping", json!({}), None).await.unwrap_err();
    assert_eq!(err.code(), "not_connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_pinned_by_fingerprint_works_and_a_wrong_pin_never_connects() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let pin = Trust::parse_fingerprint(&ctl.running().ca_fingerprint).unwrap();
    let good = TestAgent::start(&ctl.agent_addr(), pin, token.clone(), "S110");
    let client = ctl.client();
    let id = connected_server(&client, "S110").await;
    assert_eq!(
        client.call(&id, "ping", json!({}), None).await.unwrap(),
        json!({})
    );

    let wrong = Trust::Fingerprint([0x42; 32]);
    let bad = TestAgent::start(&ctl.agent_addr(), wrong, token, "S111");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let servers = client.servers().await.unwrap();
    assert!(
        servers
            .iter()
            .all(|s| s.server.serial.as_deref() != Some("S111"))
    );
    assert!(bad.agent.server_id().is_none());
    bad.stop().await;
    good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_plaintext_agent_are_refused_and_nothing_is_stored() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let client = ctl.client();
    let ok = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S120",
    );
    let id = connected_server(&client, "S120").await;

    let forged = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        Secret::new("not-a-real-token"),
        "S121",
    );
    let plaintext = TestAgent::start(
        &ctl.agent_addr(),
        Trust::Insecure,
        Secret::new("whatever"),
        "S122",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let servers = client.servers().await.unwrap();
    assert_eq!(servers.len(), 1, "only the honest agent registered");
    assert!(forged.agent.server_id().is_none());
    assert!(plaintext.agent.server_id().is_none());
    // The honest agent is unaffected.
    assert_eq!(
        client
            .call(&id, "ping", json!({"still": "up"}), None)
            .await
            .unwrap(),
        json!({"still": "up"})
    );
    forged.stop().await;
    plaintext.stop().await;
    ok.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_lives_streams_progress_and_is_stored_once() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S130",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S130").await;

    let started = client
        .start_task(&id, Qc::NAME, json!({"steps": 40, "step_ms": 100}))
        .await
        .unwrap();
    let mut events = client.task_events(&started.task_id).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("events keep coming")
    {
        seen.push(ev.unwrap());
    }
    let running: Vec<_> = seen
        .iter()
        .filter(|e| e.state == TaskPhase::Running)
        .collect();
    assert!(running.len() >= 3, "progress moved: {running:?}");
    let percents: Vec<f64> = running.iter().filter_map(|e| e.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert!(
        percents.iter().any(|p| *p > 10.0 && *p < 90.0),
        "{percents:?}"
    );
    assert!(
        running
            .iter()
            .any(|e| e.eta.is_some_and(|s| s > 0 && s < 10)),
        "eta given: {running:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskPhase::Complete);
    assert_eq!(last.result, Some(json!({"counted": 40})));
    assert_eq!(
        seen.iter()
            .filter(|e| e.state == TaskPhase::Complete)
            .count(),
        1
    );

    let record = client.task(&started.task_id).await.unwrap();
    assert_eq!(record.state, TaskPhase::Complete);
    assert_eq!(record.percent, Some(100.0));
    let listed = client
        .call(&id, "task.list", json!({}), None)
        .await
        .unwrap();
    assert_eq!(listed["tasks"][0]["task_id"], started.task_id.as_str());
    assert_eq!(listed["tasks"][0]["state"], "complete");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_task_and_is_reported() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S140",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S140").await;
    let t = client
        .start_task(&id, Qc::NAME, json!({"steps": 1000, "step_ms": 100}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = client
        .call(&id, "task.cancel", json!({"task_id": t.task_id}), None)
        .await
        .unwrap();
    assert_eq!(info["cancel_requested"], true);
    let done = eventually(10, "cancelled task to end", || async {
        let r = client.task(&t.task_id).await.ok()?;
        (r.state == TaskPhase::Error).then_some(r)
    })
    .await;
    assert_eq!(done.code.as_deref(), Some("cancelled"));
    assert!(done.percent.unwrap_or(0.0) < 50.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restarted_mid_task_gets_the_final_status_exactly_once() {
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S150",
    );
    let id = connected_server(&ctl.client(), "S150").await;
    let t = ctl
        .client()
        .start_task(&id, Qc::NAME, json!({"steps": 30, "step_ms": 100}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ctl.stop().await;
    // The task finishes while the controller is away.
    eventually(10, "task to finish on the agent", || async {
        let i = agent.agent.engine().get(&t.task_id)?;
        i.state.is_terminal().then_some(())
    })
    .await;
    assert_eq!(agent.agent.engine().unacknowledged(), 1);
    ctl.restart().await;
    let client = ctl.client();
    let record = eventually(20, "final status after the restart", || async {
        let r = client.task(&t.task_id).await.ok()?;
        (r.state == TaskPhase::Complete).then_some(r)
    })
    .await;
    assert_eq!(record.result, Some(json!({"counted": 30})));
    eventually(10, "agent to see the acknowledgement", || async {
        (agent.agent.engine().unacknowledged() == 0).then_some(())
    })
    .await;
    // Reconnect once more: nothing is resent, nothing is doubled.
    ctl.restart().await;
    connected_server(&ctl.client(), "S150").await;
    let mut events = ctl.client().task_events(&t.task_id).await.unwrap();
    let mut complete = 0;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
    {
        if ev.unwrap().state == TaskPhase::Complete {
            complete += 1;
        }
    }
    assert_eq!(complete, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_its_server_identity() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let client = ctl.client();
    let a = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token.clone(),
        "S160",
    );
    let id = connected_server(&client, "S160").await;
    let root = a.stop().await;
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        root.path(),
    );
    let b = TestAgent::start_with(cfg, root, LogBuffer::new(10));
    let again = connected_server(&client, "S160").await;
    assert_eq!(again, id);
    assert_eq!(client.servers().await.unwrap().len(), 1);
    assert_eq!(
        client
            .call(&id, "ping", json!({"n": 2}), None)
            .await
            .unwrap(),
        json!({"n": 2})
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_reach_the_agent_and_get_exact_errors() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S170",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S170").await;
    let err = |r: Result<serde_json::Value, molar_controller::client::ClientError>| {
        let e = r.unwrap_err();
        (e.code().to_owned(), e.to_string())
    };

    // A name outside the catalogue is refused by the controller before it reaches the agent.
    let (code, msg) = err(client.call(&id, "frobnicate", json!({}), None).await);
    assert_eq!(code, "unknown_method");
    assert!(msg.contains("unknown method frobnicate"), "{msg}");

    let (code, msg) = err(client
        .call(&id, "task.cancel", json!({"task_id": 5}), None)
        .await);
    assert_eq!(code, "invalid_params");
    assert!(
        msg.contains(
            "invalid params for task.cancel: invalid type: integer `5`, expected a string"
        ),
        "{msg}"
    );

    let (code, msg) = err(client
        .call(&id, "status", json!({"verbose": true}), None)
        .await);
    assert_eq!(code, "invalid_params");
    assert!(msg.contains("unknown field `verbose`"), "{msg}");

    let (code, _) = err(client
        .call(&id, "task.cancel", json!({"task_id": "nope"}), None)
        .await);
    assert_eq!(code, "unknown_task");

    // A task command as the controller sends it (the API starts tasks with ids of its own,
    // so these go to the agent's dispatch directly): the same id is idempotent with the same
    // params and a conflict with others.
    let dispatch =
        |params: serde_json::Value| agent.agent.clone().dispatch(Qc::NAME.into(), params);
    let derr = |r: Result<serde_json::Value, molar_protocol::ErrorBody>| {
        let e = r.unwrap_err();
        (e.code, e.msg)
    };
    let first = json!({"task_id": "dup", "steps": 1, "step_ms": 1});
    let ok = dispatch(first.clone()).await.unwrap();
    assert_eq!(ok, json!({"task_id": "dup", "state": "running"}));
    let (code, msg) = derr(dispatch(json!({"task_id": "dup", "steps": 2, "step_ms": 1})).await);
    assert_eq!(code, "task_conflict");
    assert!(
        msg.contains(&format!(
            "task dup already exists as {} with different params",
            Qc::NAME
        )),
        "{msg}"
    );
    // Repeating with the same params is idempotent.
    let again = dispatch(first).await.unwrap();
    assert_eq!(again["task_id"], "dup");

    let (code, msg) = derr(dispatch(json!({"steps": 1, "step_ms": 1})).await);
    assert_eq!(code, "invalid_params");
    assert!(msg.contains("missing field `task_id`"), "{msg}");

    let (code, msg) = derr(dispatch(json!({"task_id": "x", "steps": "many", "step_ms": 1})).await);
    assert_eq!(code, "invalid_params");
    assert!(msg.contains("invalid type: string \"many\""), "{msg}");

    // Through the API a task is started on the task route, not called.
    let (code, _) = err(client.call(&id, Qc::NAME, json!({}), None).await);
    assert_eq!(code, "invalid_request");

    // After all that the connection is still up.
    assert_eq!(
        client
            .call(&id, "ping", json!({"ok": 1}), None)
            .await
            .unwrap(),
        json!({"ok": 1})
    );
    agent.stop().await;
}
