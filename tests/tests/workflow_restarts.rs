//! A release killed at each of its steps: the controller restarts while the step is in
//! flight (the boot-device and power requests held on the agent, the ramdisk not yet
//! booted, the erase running) and the walk still ends available, with nothing lost and only
//! what must not run twice run once: the erase and the deploy exactly once, an interrupted
//! request sent at most once more (its outcome was unknown).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::{ServerState, StepState, WorkflowKind};
use molar_controller::workflow::{ClaimParams, ReleaseParams};
use molar_protocol::Method;
use molar_protocol::catalogue::{
    ChassisBootDevice, ChassisPower, DiskErase, PrepareImage, RunImage,
};
use molar_tests::inproc::{Controller, connected_server, eventually, machine_root};
use molar_tests::standin::{Machine, start_agent};
use serde_json::json;

type S = ServerState;

async fn until_state(client: &Client, id: &str, want: S) {
    eventually(30, &format!("server {id} to be {want:?}"), || async {
        (client.server(id, false).await.ok()?.server.state == want).then_some(())
    })
    .await
}

async fn until_step(client: &Client, id: &str, name: &str, st: StepState) {
    eventually(30, &format!("step {name} to be {st:?}"), || async {
        let wf = client.workflows(id, 1).await.ok()?.pop()?;
        wf.steps
            .iter()
            .any(|s| s.name == name && s.state == st)
            .then_some(())
    })
    .await
}

/// Walks a server through claim and release, restarting the controller while `kill_at` runs.
async fn release_killed_at(kill_at: &str) {
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let m = Machine::default();
    let root = tempfile::tempdir().unwrap();
    let serial = format!("WR-{kill_at}");
    machine_root(root.path(), &serial, "52:54:00:00:0e:01");
    let agent = start_agent(&ctl, &token, root, &m);
    let client = ctl.client();
    let id = connected_server(&client, &serial).await;
    until_state(&client, &id, S::Available).await;
    let claim: ClaimParams = serde_json::from_value(json!({
        "image": {"id": "i", "urls": ["http://127.0.0.1:9/i.img"],
            "checksum": format!("sha256:{}", "ab".repeat(32))},
        "device": "/dev/vda"}))
    .unwrap();
    client.claim(&id, &claim).await.unwrap();
    until_state(&client, &id, S::Reserved).await;

    let held = match kill_at {
        "boot_pxe" => Some(ChassisBootDevice::NAME),
        "power_cycle" => Some(ChassisPower::NAME),
        _ => None,
    };
    *m.hold.lock().unwrap() = held;
    client
        .release(&id, &ReleaseParams::default())
        .await
        .unwrap();

    // Wait until the step is in flight, then kill the controller.
    let reboot_into_ramdisk = |agent: molar_tests::inproc::TestAgent| async {
        let root = agent.stop().await;
        std::fs::write(
            root.path().join("proc/sys/kernel/random/boot_id"),
            format!("boot-{kill_at}-ramdisk"),
        )
        .unwrap();
        root
    };
    let mut agent = Some(agent);
    match kill_at {
        "boot_pxe" | "power_cycle" => {
            let method = held.unwrap();
            eventually(10, "the held call", || async {
                (!m.calls(method).is_empty()).then_some(())
            })
            .await;
        }
        "ramdisk" => until_step(&client, &id, "ramdisk", StepState::Running).await,
        "erase" => {
            until_step(&client, &id, "power_cycle", StepState::Done).await;
            let root = reboot_into_ramdisk(agent.take().unwrap()).await;
            agent = Some(start_agent(&ctl, &token, root, &m));
            eventually(10, "the erase to start", || async {
                (!m.calls(DiskErase::NAME).is_empty()).then_some(())
            })
            .await;
        }
        other => panic!("no step {other}"),
    }
    ctl.restart().await;
    let client = ctl.client();
    *m.hold.lock().unwrap() = None;
    m.held.add_permits(4);
    m.erase_gate.add_permits(1);
    if kill_at != "erase" {
        until_step(&client, &id, "power_cycle", StepState::Done).await;
        let root = reboot_into_ramdisk(agent.take().unwrap()).await;
        agent = Some(start_agent(&ctl, &token, root, &m));
    }
    until_state(&client, &id, S::Available).await;

    let wf = client.workflows(&id, 1).await.unwrap().pop().unwrap();
    assert_eq!(wf.kind, WorkflowKind::Release);
    assert_eq!(wf.state, StepState::Done, "{kill_at}: {wf:?}");
    assert_eq!(
        m.calls(DiskErase::NAME).len(),
        1,
        "{kill_at}: the erase ran once"
    );
    assert_eq!(m.calls(PrepareImage::NAME).len(), 1);
    assert_eq!(m.calls(RunImage::NAME).len(), 1);
    let (boots, powers) = (
        m.calls(ChassisBootDevice::NAME).len(),
        m.calls(ChassisPower::NAME).len(),
    );
    let interrupted = |step: &str| if kill_at == step { 2 } else { 1 };
    assert_eq!(
        boots,
        interrupted("boot_pxe"),
        "{kill_at}: boot device calls"
    );
    assert_eq!(powers, interrupted("power_cycle"), "{kill_at}: power calls");
    agent.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_killed_during_the_boot_device_request_completes() {
    release_killed_at("boot_pxe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_killed_during_the_power_cycle_completes() {
    release_killed_at("power_cycle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_killed_while_waiting_for_the_ramdisk_completes() {
    release_killed_at("ramdisk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_killed_during_the_erase_completes_without_erasing_twice() {
    release_killed_at("erase").await;
}
