//! `decom.qc` end to end: the controller starts the task on a real agent whose machine is the
//! QEMU q35 inventory fixture; the spec the agent's own template writes passes, a spec the
//! machine does not meet fails the task with every failed check named and the report stored,
//! a CPU burn-in adds its checks and numbers to the report, and burn-in settings out of bounds
//! are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::capabilities::Machine;
use molar_agent::logfwd::LogBuffer;
use molar_agent::tls::Trust;
use molar_controller::store::TaskPhase;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{QcReport, template};
use molar_tests::inproc::{Controller, TestAgent, eventually, follow_task};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Runs `decom.qc` with `params` and returns the terminal event's state, code, msg and result.
async fn run_qc(
    client: &molar_controller::client::Client,
    id: &str,
    params: Value,
) -> (TaskPhase, Option<String>, Option<String>, Option<Value>) {
    let (last, record) = follow_task(client, id, "decom.qc", params, Duration::from_secs(60)).await;
    assert_eq!(record.state, last.state);
    (last.state, record.code, record.msg, record.result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qc_through_the_controller_passes_fails_and_refuses() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/inventory/qemu-q35");
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        &fixture,
    );
    let methods = molar_agent::capabilities::methods(&Machine::host(fixture.clone(), &[]));
    let agent = TestAgent::start_with_methods(
        cfg,
        tempfile::tempdir().unwrap(),
        LogBuffer::new(10),
        methods,
    );
    let client = ctl.client();
    let id = eventually(20, "the agent to connect", || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.connected)
            .map(|s| s.server.id)
    })
    .await;

    // The template of the machine's own inventory, as an operator would make it.
    let inv: Inventory = serde_json::from_value(
        client
            .call(&id, "inventory", json!({}), None)
            .await
            .unwrap(),
    )
    .unwrap();
    let spec = template(&inv);
    let (state, _, msg, result) = run_qc(&client, &id, json!({ "spec": spec })).await;
    assert_eq!(state, TaskPhase::Complete, "{msg:?}");
    let report: QcReport = serde_json::from_value(result.unwrap()).unwrap();
    assert!(report.passed);
    assert!(!report.checks.is_empty());

    let (state, code, msg, result) = run_qc(
        &client,
        &id,
        json!({"spec": {"cpu": {"sockets": 8}, "disks": [{"count": 40}],
            "bmc": {"present": true}}}),
    )
    .await;
    assert_eq!(state, TaskPhase::Error);
    assert_eq!(code.as_deref(), Some("qc_failed"));
    let msg = msg.unwrap();
    for name in ["cpu.sockets", "disks[0]", "bmc.present"] {
        assert!(msg.contains(name), "{msg}");
    }
    let report: QcReport = serde_json::from_value(result.expect("report kept")).unwrap();
    assert!(!report.passed);
    assert_eq!(report.failures.len(), 3);

    // A brief CPU burn-in on the agent's (real) CPUs: its check joins the spec's.
    let (state, _, msg, result) = run_qc(
        &client,
        &id,
        json!({"spec": {"bmc": {"present": false}}, "burnin": {"cpu": {"seconds": 1}}}),
    )
    .await;
    assert_eq!(state, TaskPhase::Complete, "{msg:?}");
    let report: QcReport = serde_json::from_value(result.unwrap()).unwrap();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names[..2], ["bmc.present", "burnin.cpu"]);
    let cpu = report.burnin.unwrap().cpu.unwrap();
    assert!(
        cpu.rounds > 0 && cpu.threads > 0 && cpu.seconds >= 1.0,
        "{cpu:?}"
    );
    assert_eq!(cpu.wrong_results, 0);

    let (state, code, msg, _) = run_qc(
        &client,
        &id,
        json!({"spec": {"bmc": {"present": false}}, "burnin": {"cpu": {"seconds": 0}}}),
    )
    .await;
    assert_eq!(state, TaskPhase::Error);
    assert_eq!(code.as_deref(), Some("refused"));
    assert!(msg.unwrap().contains("burnin.cpu.seconds: 0 is outside"));

    // Strict params: refused before any task exists.
    let err = client
        .start_task(&id, "decom.qc", json!({"spec": {"cpu": {"cores": "many"}}}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid type"), "{err}");
    let err = client
        .start_task(&id, "decom.qc", json!({"spec": {}, "extra": true}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `extra`"), "{err}");
    let err = client
        .start_task(
            &id,
            "decom.qc",
            json!({"spec": {"bmc": {"present": false}}, "burnin": {"minutes": 5}}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `minutes`"), "{err}");
    agent.stop().await;
}
