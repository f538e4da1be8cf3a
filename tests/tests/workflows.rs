//! The claim and release workflows end to end against an in-process agent whose deploy,
//! erase and chassis methods are test-defined stand-ins (the real ones are tested on loop
//! devices and in the QEMU lab): a claim deploys and reserves the server, a release
//! power-cycles it into a "new boot" of the ramdisk, erases and returns it to available;
//! the controller is restarted in the middle of the erase and the walk still completes with
//! every step run exactly once; failures take the server to Error with the step's reason;
//! hostile bodies change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::lifecycle::Cause;
use molar_controller::store::{ServerState, StepState, WorkflowKind, WorkflowRecord};
use molar_controller::workflow::{ClaimParams, ReleaseParams};
use molar_protocol::Method;
use molar_protocol::catalogue::{
    ChassisBootDevice, ChassisPower, DiskErase, FirmwareSecure, PrepareImage, Qc, RunImage,
};
use molar_tests::inproc::{Controller, connected_server, eventually, machine_root};
use molar_tests::standin::{Machine, start_agent};
use serde_json::{Value, json};

type S = ServerState;

async fn state(client: &molar_controller::client::Client, id: &str) -> S {
    client.server(id, false).await.unwrap().server.state
}

async fn until_state(client: &molar_controller::client::Client, id: &str, want: S) {
    eventually(30, &format!("server {id} to be {want:?}"), || async {
        (client.server(id, false).await.ok()?.server.state == want).then_some(())
    })
    .await
}

async fn until_step(
    client: &molar_controller::client::Client,
    id: &str,
    name: &str,
    st: StepState,
) -> WorkflowRecord {
    eventually(30, &format!("step {name} to be {st:?}"), || async {
        let wf = client.workflows(id, 1).await.ok()?.pop()?;
        wf.steps
            .iter()
            .any(|s| s.name == name && s.state == st)
            .then_some(wf)
    })
    .await
}

/// Claims the server, then releases it with an erase that fails: it ends in error.
async fn claim_then_fail_the_erase(
    client: &molar_controller::client::Client,
    id: &str,
    m: &Machine,
) -> WorkflowRecord {
    let wf = client.claim(id, &claim_params()).await.unwrap();
    until_state(client, id, S::Reserved).await;
    m.fail_erase
        .store(true, std::sync::atomic::Ordering::SeqCst);
    m.erase_gate.add_permits(1);
    let release = ReleaseParams {
        in_ramdisk: true,
        ..Default::default()
    };
    client.release(id, &release).await.unwrap();
    until_state(client, id, S::Error).await;
    wf
}

fn claim_params() -> ClaimParams {
    serde_json::from_value(json!({
        "image": {"id": "debian-13", "urls": ["http://127.0.0.1:9/debian.qcow2"],
            "checksum": format!("sha256:{}", "ab".repeat(32))},
        "device": "/dev/vda",
        "run": {"kernel_args": "console=ttyS0"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_release_walk_the_lifecycle_across_a_controller_restart() {
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let m = Machine::default();
    let root = tempfile::tempdir().unwrap();
    machine_root(root.path(), "WF-1", "52:54:00:00:0f:01");
    let agent = start_agent(&ctl, &token, root, &m);
    let client = ctl.client();
    let id = connected_server(&client, "WF-1").await;
    until_state(&client, &id, S::Available).await;

    // A release of an available server is refused by the table; nothing runs.
    let e = client
        .release(&id, &ReleaseParams::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "illegal_transition", "{e}");
    assert!(
        client
            .workflows(&id, 10)
            .await
            .unwrap()
            .iter()
            .all(|w| w.kind == WorkflowKind::Discovery),
        "nothing but the discovery ran"
    );

    // Claim: the image is written and booted, then the server is reserved.
    let wf = client.claim(&id, &claim_params()).await.unwrap();
    assert_eq!(
        wf.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["prepare_image", "run_image"]
    );
    until_state(&client, &id, S::Reserved).await;
    let prep = m.calls(PrepareImage::NAME);
    assert_eq!(prep.len(), 1);
    assert_eq!(prep[0]["device"], "/dev/vda");
    assert_eq!(prep[0]["image"]["id"], "debian-13");
    let run = m.calls(RunImage::NAME);
    assert_eq!(run.len(), 1);
    assert_eq!(
        (
            &run[0]["image_id"],
            &run[0]["device"],
            &run[0]["kernel_args"]
        ),
        (
            &json!("debian-13"),
            &json!("/dev/vda"),
            &json!("console=ttyS0")
        )
    );
    let wf = client.workflows(&id, 1).await.unwrap().pop().unwrap();
    assert_eq!(wf.state, StepState::Done);
    assert_eq!(
        wf.steps[1].task_id.as_deref(),
        Some(&*format!("wf-{}-1", wf.id))
    );
    // A reserved server is not claimed twice.
    let e = client.claim(&id, &claim_params()).await.unwrap_err();
    assert_eq!(e.code(), "illegal_transition", "{e}");

    // Release: Cleanup at once, next boot PXE and a power cycle through the request queue.
    let rel = client
        .release(&id, &ReleaseParams::default())
        .await
        .unwrap();
    assert_eq!(state(&client, &id).await, S::Cleanup);
    let e = client
        .release(&id, &ReleaseParams::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "workflow_running", "{e}");
    until_step(&client, &id, "power_cycle", StepState::Done).await;
    assert_eq!(m.calls(ChassisBootDevice::NAME)[0]["device"], "pxe");
    assert_eq!(m.calls(ChassisPower::NAME)[0]["action"], "cycle");

    // The machine "reboots" into the ramdisk: a new boot id.
    let root = agent.stop().await;
    std::fs::write(
        root.path().join("proc/sys/kernel/random/boot_id"),
        "boot-WF-1-ramdisk",
    )
    .unwrap();
    let agent = start_agent(&ctl, &token, root, &m);
    until_step(&client, &id, "erase", StepState::Running).await;
    eventually(10, "the erase to start on the agent", || async {
        (!m.calls(DiskErase::NAME).is_empty()).then_some(())
    })
    .await;

    // The controller dies mid-erase and comes back: the erase is found again, not re-run.
    ctl.restart().await;
    let client = ctl.client();
    assert_eq!(state(&client, &id).await, S::Cleanup);
    m.erase_gate.add_permits(1);
    until_state(&client, &id, S::Available).await;
    assert_eq!(m.calls(DiskErase::NAME).len(), 1, "the erase ran once");
    assert_eq!(m.calls(ChassisPower::NAME).len(), 1, "one power cycle");
    assert_eq!(m.calls(PrepareImage::NAME).len(), 1);
    let wf = client.workflows(&id, 1).await.unwrap().pop().unwrap();
    assert_eq!(wf.id, rel.id);
    assert_eq!(wf.state, StepState::Done);
    assert!(
        wf.steps.iter().all(|s| s.state == StepState::Done),
        "{wf:?}"
    );
    assert!(wf.steps[0].request_id.is_some() && wf.steps[1].request_id.is_some());

    let h = client.history(&id, 0, 100).await.unwrap().transitions;
    let walk: Vec<_> = h.iter().map(|t| (t.to, t.cause)).collect();
    assert_eq!(
        walk,
        [
            (S::Initial, None),
            (S::Discovery, Some(Cause::Discover)),
            (S::Available, Some(Cause::Discovered)),
            (S::Reserved, Some(Cause::Claimed)),
            (S::Cleanup, Some(Cause::Released)),
            (S::Available, Some(Cause::Cleaned)),
        ]
    );
    assert!(
        h[3].task_id
            .as_deref()
            .is_some_and(|t| t.starts_with("wf-") && t.ends_with("-1")),
        "the claim's transition names run_image's task: {:?}",
        h[3]
    );

    // A failing erase takes the server to Error with the step's reason.
    let wf = claim_then_fail_the_erase(&client, &id, &m).await;
    let last = client
        .history(&id, 0, 100)
        .await
        .unwrap()
        .transitions
        .pop()
        .unwrap();
    assert_eq!(last.cause, Some(Cause::Failed));
    assert!(
        last.reason.contains("release failed at erase") && last.reason.contains("D-2 vanished"),
        "{}",
        last.reason
    );
    assert!(last.task_id.is_some());
    assert!(wf.id > 0);
    // A retry that fails again leaves it in error; one that succeeds resolves it.
    m.erase_gate.add_permits(1);
    let again = client.retry(&id).await.unwrap();
    assert!(again.retry_of.is_some());
    eventually(30, "the retry to fail again", || async {
        let w = client.workflows(&id, 1).await.ok()?.pop()?;
        (w.id == again.id && w.state == StepState::Failed).then_some(())
    })
    .await;
    assert_eq!(state(&client, &id).await, S::Error);
    m.fail_erase
        .store(false, std::sync::atomic::Ordering::SeqCst);
    m.erase_gate.add_permits(1);
    client.retry(&id).await.unwrap();
    until_state(&client, &id, S::Available).await;
    let last = client
        .history(&id, 0, 100)
        .await
        .unwrap()
        .transitions
        .pop()
        .unwrap();
    assert_eq!(
        (last.from, last.cause),
        (Some(S::Error), Some(Cause::Resolved))
    );
    let e = client.retry(&id).await.unwrap_err();
    assert_eq!(e.code(), "not_retriable", "{e}");
    // From Error, maintenance is the way back too.
    claim_then_fail_the_erase(&client, &id, &m).await;
    client
        .maintenance(&id, true, Some("disk replaced"))
        .await
        .unwrap();
    client.maintenance(&id, false, None).await.unwrap();
    assert_eq!(state(&client, &id).await, S::Available);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_releases_refuse_hostile_bodies_and_change_nothing() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let m = Machine::default();
    let root = tempfile::tempdir().unwrap();
    machine_root(root.path(), "WF-2", "52:54:00:00:0f:02");
    let _agent = start_agent(&ctl, &token, root, &m);
    let client = ctl.client();
    let id = connected_server(&client, "WF-2").await;
    until_state(&client, &id, S::Available).await;

    let https = ctl.https();
    let api = ctl.running().api_url.clone();
    let admin = ctl.running().admin_token.expose().to_owned();
    let image = json!({"id": "i", "urls": ["http://127.0.0.1:9/i.img"],
        "checksum": format!("sha256:{}", "0".repeat(64))});
    let cases: Vec<(&str, String, &str)> = vec![
        ("claim", "{".into(), "invalid_request"),
        ("claim", "[]".into(), "invalid_params"),
        (
            "claim",
            json!({"device": "/dev/vda"}).to_string(),
            "invalid_params",
        ),
        (
            "claim",
            json!({"image": image, "device": "/dev/vda", "wipe": true}).to_string(),
            "invalid_params",
        ),
        (
            "claim",
            json!({"image": image, "device": ""}).to_string(),
            "invalid_params",
        ),
        (
            "claim",
            json!({"image": image, "device": "/dev/vda", "run": {"device": "/dev/sdb"}})
                .to_string(),
            "invalid_params",
        ),
        (
            "claim",
            json!({"image": image, "device": "/dev/vda", "run": {"kernel_args": "a\nb"}})
                .to_string(),
            "invalid_params",
        ),
        (
            "claim",
            json!({"image": {"id": "i", "urls": ["file:///etc/shadow"]}, "device": "/dev/vda"})
                .to_string(),
            "invalid_params",
        ),
        ("release", "{".into(), "invalid_request"),
        (
            "release",
            json!({"erase": {"method": "shred"}}).to_string(),
            "invalid_params",
        ),
        (
            "release",
            json!({"erase": {"devices": ["/dev/vda"], "force": 1}}).to_string(),
            "invalid_params",
        ),
        (
            "release",
            json!({"now": true}).to_string(),
            "invalid_params",
        ),
    ];
    for (route, body, code) in cases {
        let r = https
            .post(format!("{api}/api/v1/servers/{id}/{route}"))
            .bearer_auth(&admin)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap()),
            (400, code),
            "{route} {body}: {v}"
        );
        assert!(!v["error"]["msg"].as_str().unwrap().is_empty());
    }
    let r = https
        .post(format!("{api}/api/v1/servers/srv-nope/claim"))
        .bearer_auth(&admin)
        .body(json!({"image": image, "device": "/dev/vda"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = https
        .get(format!("{api}/api/v1/servers/{id}/workflows?limit=x"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        client
            .workflows(&id, 10)
            .await
            .unwrap()
            .iter()
            .all(|w| w.kind == WorkflowKind::Discovery),
        "nothing but the discovery ran"
    );
    assert_eq!(state(&client, &id).await, S::Available);
    assert!(
        m.calls.lock().unwrap().is_empty(),
        "nothing reached the agent"
    );
}

const POLICY: &str = r#"
[[chassis]]
name = "lab"
match = { manufacturer = "Molar Lab*" }
erase = { method = "metadata", preserve = ["device:vdb"] }

[[image]]
id = "debian-13"
urls = ["http://127.0.0.1:9/debian.qcow2"]
checksum = "sha256:abababababababababababababababababababababababababababababababab"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_names_the_image_and_the_chassis_models_erase() {
    let ctl = Controller::start_with_policy(POLICY).await;
    let token = ctl.agent_token().await;
    let m = Machine::default();
    let root = tempfile::tempdir().unwrap();
    machine_root(root.path(), "WF-3", "52:54:00:00:0f:03");
    std::fs::write(
        root.path().join("sys/class/dmi/id/sys_vendor"),
        "Molar Lab Inc.",
    )
    .unwrap();
    let _agent = start_agent(&ctl, &token, root, &m);
    let client = ctl.client();
    let id = connected_server(&client, "WF-3").await;
    until_state(&client, &id, S::Available).await;

    let by_id: ClaimParams = serde_json::from_value(json!({
        "image_id": "debian-13", "device": "/dev/vda"}))
    .unwrap();
    let wf = client.claim(&id, &by_id).await.unwrap();
    assert_eq!(
        wf.params["image"]["id"], "debian-13",
        "the spec is stored with the workflow"
    );
    until_state(&client, &id, S::Reserved).await;
    let prep = m.calls(PrepareImage::NAME)[0]["image"].to_string();
    assert!(prep.contains("http://127.0.0.1:9/debian.qcow2"), "{prep}");
    let unknown: ClaimParams =
        serde_json::from_value(json!({"image_id": "nope", "device": "/dev/vda"})).unwrap();
    let e = client.claim(&id, &unknown).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("not in the policy's image catalogue"),
        "{e}"
    );

    m.erase_gate.add_permits(1);
    let rel = client
        .release(
            &id,
            &ReleaseParams {
                in_ramdisk: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rel.params["erase"]["method"], "metadata", "{}", rel.params);
    until_state(&client, &id, S::Available).await;
    let erase = &m.calls(DiskErase::NAME)[0];
    assert_eq!(erase["method"], "metadata");
    assert_eq!(erase["exclude"], json!(["vdb"]), "{erase}");
}

#[test]
fn molar_policy_check_names_the_line_of_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let molar = molar_tests::bins::bin("molar");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, POLICY).unwrap();
    let out = std::process::Command::new(&molar)
        .args(["policy", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 chassis model(s), 1 image(s)"), "{text}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        POLICY.replace("method = \"metadata\"", "method = \"shred\""),
    )
    .unwrap();
    let out = std::process::Command::new(&molar)
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("shred"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_runs_the_chassis_models_qc_and_firmware_and_fails_to_error() {
    let policy = r#"
[[chassis]]
name = "lab"
match = { manufacturer = "Molar Lab*" }
qc = { cpu = { sockets = 1 } }
firmware = { components = [] }

[[chassis]]
name = "big"
match = { manufacturer = "Big Iron*" }
qc = { cpu = { sockets = 8 } }
"#;
    let ctl = Controller::start_with_policy(policy).await;
    let token = ctl.agent_token().await;
    let client = ctl.client();
    let (m, big) = (Machine::default(), Machine::default());
    let mut agents = Vec::new();
    for (serial, vendor, mac, m) in [
        ("WF-4", "Molar Lab Inc.", "52:54:00:00:0f:04", &m),
        ("WF-5", "Big Iron Ltd.", "52:54:00:00:0f:05", &big),
    ] {
        let root = tempfile::tempdir().unwrap();
        machine_root(root.path(), serial, mac);
        std::fs::write(root.path().join("sys/class/dmi/id/sys_vendor"), vendor).unwrap();
        agents.push(start_agent(&ctl, &token, root, m));
    }
    let id = connected_server(&client, "WF-4").await;
    until_state(&client, &id, S::Available).await;
    let wf = client.workflows(&id, 1).await.unwrap().pop().unwrap();
    assert_eq!(wf.kind, WorkflowKind::Discovery);
    assert_eq!(
        wf.steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect::<Vec<_>>(),
        [
            ("store_inventory", StepState::Done),
            ("bmc_credentials", StepState::Done),
            ("qc", StepState::Done),
            ("firmware", StepState::Done),
        ]
    );
    assert_eq!(
        m.calls(Qc::NAME),
        [json!({"spec": {"cpu": {"sockets": 1}}})]
    );
    assert_eq!(m.calls(FirmwareSecure::NAME).len(), 1);
    assert!(
        wf.steps[1]
            .message
            .as_deref()
            .unwrap()
            .contains("does not ask")
    );

    // A machine that does not meet its model's spec ends discovery in error, saying why.
    let bad = connected_server(&client, "WF-5").await;
    until_state(&client, &bad, S::Error).await;
    let last = client
        .history(&bad, 0, 100)
        .await
        .unwrap()
        .transitions
        .pop()
        .unwrap();
    assert_eq!(
        (last.from, last.cause),
        (Some(S::Discovery), Some(Cause::Failed))
    );
    assert!(
        last.reason.contains("discovery failed at qc") && last.reason.contains("expected 8"),
        "{}",
        last.reason
    );
    assert!(
        big.calls(FirmwareSecure::NAME).is_empty(),
        "nothing after the failed step"
    );
    // A retry runs the failed step again, not the ones before it.
    let retry = client.retry(&bad).await.unwrap();
    assert_eq!(
        retry
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect::<Vec<_>>(),
        [
            ("store_inventory", StepState::Done),
            ("bmc_credentials", StepState::Done),
            ("qc", StepState::Pending),
            ("firmware", StepState::Pending),
        ]
    );
    assert!(
        retry.steps[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("done in workflow")
    );
    eventually(30, "the retried qc to fail again", || async {
        (big.calls(Qc::NAME).len() == 2).then_some(())
    })
    .await;
    drop(agents);
}
