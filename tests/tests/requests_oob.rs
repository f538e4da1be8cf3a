//! Queued control requests out-of-band: a server known only by its BMC entry (no agent ever
//! connected) whose BMC is a real `ipmi_sim` on loopback. Power status, next boot device,
//! identify and a BMC reset are queued at once and run in order through RMCP+, each
//! recorded `out_of_band`, and no message carries the BMC password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::api::ControlRequest;
use molar_controller::store::{
    BmcCredentials, Db, Registration, RequestPath, RequestRecord, RequestState, SessionGrant,
};
use molar_controller::{ServeConfig, start};
use molar_protocol::Secret;
use molar_tests::lab::{Images, IpmiSim, IpmiSimConfig, Lab, skip_or_fail, which};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The BMC user the controller logs in as; its password must never show.
const USER: &str = "molar";
const PASSWORD: &str = "Zq8-oob-secret";

fn sim(test: &str) -> Option<(Lab, IpmiSim)> {
    if which("ipmi_sim").is_none() {
        return skip_or_fail(test, "ipmi_sim is not in PATH");
    }
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let mut cfg = IpmiSimConfig::default();
    // LAB.md's admin user (id 2), under this test's name and password.
    let admin = cfg
        .users
        .iter_mut()
        .find(|u| u.privilege == "admin")
        .unwrap();
    admin.name = USER.into();
    admin.password = PASSWORD.into();
    let sim = lab.start_ipmi_sim(cfg).unwrap();
    Some((lab, sim))
}

/// A state directory with one server, `srv-oob`, whose BMC entry points at `port` on
/// loopback: what an operator's `server add --bmc` leaves, before any agent connects.
fn state_with_bmc(dir: &std::path::Path, port: u16) {
    let mut db = Db::open(dir).unwrap();
    let reg = Registration {
        identity_key: "uuid:4c4c4544-0000-4000-8000-00000000b0b0".into(),
        system_uuid: Some("4c4c4544-0000-4000-8000-00000000b0b0".into()),
        serial: None,
        macs: vec![],
        hostname: None,
        agent_version: "none".into(),
        boot_id: "none".into(),
    };
    db.register(
        &reg,
        &SessionGrant::default(),
        &mut || "srv-oob".into(),
        "127.0.0.1:1",
    )
    .unwrap();
    db.set_bmc(
        "srv-oob",
        &BmcCredentials {
            mac: None,
            ip: None,
            username: USER.into(),
            password: Secret::new(PASSWORD),
            user_id: Some(2),
            source: "operator".into(),
        },
    )
    .unwrap();
    assert!(db.set_bmc_endpoint("srv-oob", "127.0.0.1", port).unwrap());
}

fn req(action: &str, parameter: Option<&str>, efi: bool) -> ControlRequest {
    ControlRequest {
        action: action.into(),
        parameter: parameter.map(str::to_owned),
        persistent: false,
        efi,
    }
}

#[tokio::test]
async fn requests_run_in_order_out_of_band_against_ipmi_sim() {
    let test = "requests_run_in_order_out_of_band_against_ipmi_sim";
    let Some((_lab, sim)) = sim(test) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    state_with_bmc(state.path(), sim.lan_port());
    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::loopback(state.path()), shutdown.clone())
        .await
        .unwrap();
    let c = running.client().unwrap();

    let queued = [
        req("set_power_state", Some("status"), false),
        req("set_next_boot_device", Some("pxe"), true),
        req("identify", Some("5"), false),
        req("set_power_state", Some("status"), false),
        req("bmc_reset", None, false),
    ];
    let mut ids = Vec::new();
    for r in &queued {
        ids.push(c.control("srv-oob", r).await.unwrap().id);
    }
    let mut done: Vec<RequestRecord> = Vec::new();
    for id in &ids {
        done.push(c.wait_request(*id, Duration::from_secs(60)).await.unwrap());
    }
    for r in &done {
        eprintln!(
            "{} {:?}: {:?} {:?}",
            r.action, r.parameter, r.state, r.message
        );
        assert_eq!(r.path, Some(RequestPath::OutOfBand), "{r:?}");
        let msg = r.message.as_deref().unwrap_or_default();
        assert!(!msg.is_empty(), "{r:?}");
        assert!(!msg.contains(PASSWORD), "the password in a message: {msg}");
    }
    // The reads succeed.
    for r in [&done[0], &done[3]] {
        assert_eq!(r.state, RequestState::Succeeded, "{r:?}");
        let msg = r.message.as_deref().unwrap();
        assert!(
            msg == "server power state: on" || msg == "server power state: off",
            "{msg}"
        );
    }
    // The boot device, identify and the BMC reset are answered, or refused with the BMC's
    // own completion code named (ipmi_sim without a VM refuses some of them).
    for r in [&done[1], &done[2], &done[4]] {
        let msg = r.message.as_deref().unwrap();
        assert!(
            r.state == RequestState::Succeeded
                || (msg.contains(" refused: ") && msg.contains("(0x")),
            "{r:?}"
        );
    }
    // What ipmitool gets from the same BMC, for comparison when one is refused.
    if which("ipmitool").is_some() {
        for args in [
            &["chassis", "bootdev", "pxe", "options=efiboot"][..],
            &["chassis", "identify", "5"],
        ] {
            let out = sim.ipmitool(USER, PASSWORD, args).unwrap();
            eprintln!(
                "ipmitool {args:?}: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    // In queue order, one at a time.
    for pair in done.windows(2) {
        assert!(
            pair[0].finished_ms.unwrap() <= pair[1].started_ms.unwrap(),
            "{pair:?}"
        );
    }
    // The seed's status shows the latest outcome; nothing anywhere shows the password.
    let status = c.condition_status("srv-oob").await.unwrap();
    assert_eq!(status.records.conditions.len(), 1);
    let listed = serde_json::to_string(&c.requests("srv-oob", 100).await.unwrap()).unwrap();
    assert!(!listed.contains(PASSWORD));
    shutdown.cancel();
    running.join().await;
}

/// Queues `action parameter` on `srv-oob` and marks it active, as a controller stopped
/// mid-request leaves it.
fn left_active(dir: &std::path::Path, parameter: &str) -> i64 {
    let mut db = Db::open(dir).unwrap();
    let r = db
        .add_request(
            "srv-oob",
            &molar_controller::store::NewRequest {
                action: "set_power_state".into(),
                parameter: Some(parameter.into()),
                persistent: false,
                efi: false,
                source: "api".into(),
            },
        )
        .unwrap();
    assert_eq!(db.next_request("srv-oob").unwrap().unwrap().id, r.id);
    r.id
}

#[tokio::test]
async fn a_power_change_active_at_a_restart_is_rechecked_over_the_bmc() {
    let test = "a_power_change_active_at_a_restart_is_rechecked_over_the_bmc";
    let Some((_lab, sim)) = sim(test) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    state_with_bmc(state.path(), sim.lan_port());
    // ipmi_sim without a VM is off: `off` took effect, `on` did not.
    let out = sim.ipmitool(USER, PASSWORD, &["chassis", "power", "status"]);
    eprintln!(
        "{:?}",
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    );
    for (parameter, confirmed) in [("off", true), ("on", false)] {
        let id = left_active(state.path(), parameter);
        let shutdown = CancellationToken::new();
        let running = start(ServeConfig::loopback(state.path()), shutdown.clone())
            .await
            .unwrap();
        let c = running.client().unwrap();
        // A request queued meanwhile runs after the re-check.
        let next = c
            .control("srv-oob", &req("set_power_state", Some("status"), false))
            .await
            .unwrap()
            .id;
        let r = c.wait_request(id, Duration::from_secs(60)).await.unwrap();
        let after = c.wait_request(next, Duration::from_secs(60)).await.unwrap();
        eprintln!("{r:?}\n{after:?}");
        let msg = r.message.as_deref().unwrap();
        if confirmed {
            assert_eq!(r.state, RequestState::Succeeded, "{r:?}");
            assert_eq!(
                msg,
                "server power state set successful: off (confirmed by a power state read \
                 after a controller restart)"
            );
        } else {
            assert_eq!(r.state, RequestState::Failed, "{r:?}");
            assert_eq!(
                msg,
                "controller restarted while the request was active; the power is off now, \
                 not on"
            );
        }
        assert_eq!(r.path, Some(RequestPath::OutOfBand));
        assert_eq!(after.state, RequestState::Succeeded, "{after:?}");
        assert!(r.finished_ms.unwrap() <= after.started_ms.unwrap());
        shutdown.cancel();
        running.join().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_local_bmc_device_falls_back_to_the_network_bmc() {
    use molar_agent::tls::Trust;
    use molar_tests::inproc::{Controller, TestAgent, connected_server};
    let test = "an_agent_without_a_local_bmc_device_falls_back_to_the_network_bmc";
    let Some((_lab, sim)) = sim(test) else {
        return;
    };
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    // A real agent whose machine root has no /dev/ipmi0.
    let _agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S310",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S310").await;
    {
        let db = Db::open(&ctl.running().state_dir).unwrap();
        db.set_bmc(
            &id,
            &BmcCredentials {
                mac: None,
                ip: None,
                username: USER.into(),
                password: Secret::new(PASSWORD),
                user_id: Some(2),
                source: "operator".into(),
            },
        )
        .unwrap();
        assert!(
            db.set_bmc_endpoint(&id, "127.0.0.1", sim.lan_port())
                .unwrap()
        );
    }
    let q = client
        .control(&id, &req("set_power_state", Some("status"), false))
        .await
        .unwrap();
    let r = client
        .wait_request(q.id, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("{r:?}");
    assert_eq!(r.state, RequestState::Succeeded, "{r:?}");
    assert_eq!(r.path, Some(RequestPath::OutOfBand));
    assert_eq!(r.message.as_deref(), Some("server power state: off"));
}

#[tokio::test]
async fn an_out_of_band_power_change_expects_the_server_to_boot_again() {
    let test = "an_out_of_band_power_change_expects_the_server_to_boot_again";
    let Some((_lab, sim)) = sim(test) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    state_with_bmc(state.path(), sim.lan_port());
    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::loopback(state.path()), shutdown.clone())
        .await
        .unwrap();
    let c = running.client().unwrap();
    let before = c.server("srv-oob", false).await.unwrap();
    assert_eq!(before.server.expect_ramdisk_until_ms, None);
    let q = c
        .control("srv-oob", &req("set_power_state", Some("on"), false))
        .await
        .unwrap();
    let r = c.wait_request(q.id, Duration::from_secs(60)).await.unwrap();
    eprintln!("{r:?}");
    assert_eq!(r.path, Some(RequestPath::OutOfBand));
    let after = c.server("srv-oob", false).await.unwrap();
    // ipmi_sim without a VM takes a power on (its chassis state becomes on).
    assert_eq!(r.state, RequestState::Succeeded, "{r:?}");
    assert_eq!(
        r.message.as_deref(),
        Some("server power state set successful: on")
    );
    assert!(after.server.expect_ramdisk_until_ms.is_some(), "{after:?}");
    let events = c.events(Some("srv-oob"), 0, 100).await.unwrap();
    assert!(
        events
            .events
            .iter()
            .any(|e| e.event.kind == "ramdisk_expected"
                && e.event.msg.contains("out-of-band power on")),
        "{events:?}"
    );
    shutdown.cancel();
    running.join().await;
}
