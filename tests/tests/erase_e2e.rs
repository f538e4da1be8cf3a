//! `decom.disk_erase` end to end: the controller starts the task on a real agent, progress
//! streams back, and the loop devices' backing files read all zeros afterwards; a device the
//! agent was not allowed to touch is reported as skipped and left intact. Needs root and loop
//! devices (CI runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::capabilities::Machine;
use molar_agent::logfwd::LogBuffer;
use molar_agent::tls::Trust;
use molar_controller::store::TaskPhase;
use molar_tests::inproc::{Controller, TestAgent};
use molar_tests::privileged::{LoopDevice, require_root_and_losetup};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_two_loop_devices_through_the_controller() {
    if !require_root_and_losetup("erase_two_loop_devices_through_the_controller") {
        return;
    }
    let a = LoopDevice::new(64 << 20);
    let b = LoopDevice::new(64 << 20);
    let untouched = LoopDevice::new(8 << 20);

    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    // The real machine's /sys and /dev, but only these two devices may be touched.
    let root = tempfile::tempdir().unwrap();
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        std::path::Path::new("/"),
    );
    let methods =
        molar_agent::capabilities::methods(&Machine::host("/".into(), &[a.name(), b.name()]));
    let agent = TestAgent::start_with_methods(cfg, root, LogBuffer::new(10), methods);
    let client = ctl.client();
    let id = the_server(&client).await;

    let started = client
        .start_task(
            &id,
            "decom.disk_erase",
            json!({"devices": [a.name(), b.name(), untouched.name()], "method": "overwrite", "passes": 2}),
        )
        .await
        .unwrap();
    let mut events = client.task_events(&started.task_id).await.unwrap();
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), events.next())
        .await
        .unwrap()
    {
        last = Some(ev.unwrap());
    }
    let last = last.expect("at least the terminal event");
    assert_eq!(last.state, TaskPhase::Complete, "{last:?}");
    let result = last.result.unwrap();
    assert_eq!(result["erased"], 2, "{result}");
    assert_eq!(result["failed"], 0, "{result}");
    let skipped = result["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{result}");
    assert_eq!(skipped[0]["device"], untouched.name());
    assert_eq!(skipped[0]["code"], "not_allowed_on_host");
    assert!(a.backing_is_zero(), "first device erased");
    assert!(b.backing_is_zero(), "second device erased");
    assert!(
        !untouched.backing_is_zero(),
        "the device not allowed is intact"
    );
    agent.stop().await;
}

/// The one server this controller knows, once connected.
async fn the_server(client: &molar_controller::client::Client) -> String {
    molar_tests::inproc::eventually(20, "the agent to connect", || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.connected)
            .map(|s| s.server.id)
    })
    .await
}

/// The task_status stream of a longer erase: percent climbs steadily and running updates carry
/// a sensible eta. 1 GiB, three passes (two random, one zeros).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erase_streams_steady_percent_and_eta() {
    if !require_root_and_losetup("an_erase_streams_steady_percent_and_eta") {
        return;
    }
    let dev = LoopDevice::sparse(1 << 30);
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let root = tempfile::tempdir().unwrap();
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        std::path::Path::new("/"),
    );
    let methods = molar_agent::capabilities::methods(&Machine::host("/".into(), &[dev.name()]));
    let agent = TestAgent::start_with_methods(cfg, root, LogBuffer::new(10), methods);
    let client = ctl.client();
    let id = the_server(&client).await;
    let t = client
        .start_task(
            &id,
            "decom.disk_erase",
            json!({"devices": [dev.name()], "method": "overwrite", "passes": 3}),
        )
        .await
        .unwrap();
    let mut events = client.task_events(&t.task_id).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(300), events.next())
        .await
        .unwrap()
    {
        seen.push(ev.unwrap());
    }
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskPhase::Complete, "{last:?}");
    let running: Vec<_> = seen
        .iter()
        .filter(|e| e.state == TaskPhase::Running)
        .collect();
    let percents: Vec<f64> = running.iter().filter_map(|e| e.percent).collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "steady: {percents:?}"
    );
    let mid: Vec<_> = running
        .iter()
        .filter(|e| e.percent.is_some_and(|p| p > 0.0 && p < 100.0))
        .collect();
    assert!(
        !mid.is_empty(),
        "progress between 0 and 100 was reported: {percents:?}"
    );
    assert!(
        mid.iter().all(|e| e.eta.is_some_and(|s| s < 600)),
        "every running update carries a sensible eta: {mid:?}"
    );
    assert!(dev.backing_is_zero());
    agent.stop().await;
}
