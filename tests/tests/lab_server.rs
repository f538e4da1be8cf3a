//! The lab scenario: a QEMU server boots the ramdisk `molar-imagebuilder` built, with
//! `ipmi_sim` as its BMC owning its power, against a real controller on this machine. One VM,
//! many steps, because every boot under TCG costs seconds:
//!
//! boot → handshake → listed with its SMBIOS serial, NIC and disks → `ping`, `status` →
//! `inventory` (NVMe and virtio serials, SMBIOS serial and uuid, NIC MAC, BMC MAC) →
//! `bmc.set_credentials`, proven from the host with `ipmitool -I lanplus` → `bmc.reset` and the
//! BMC answers again → `decom.disk_erase` (NVMe by Format NVM, virtio by discard/zero-out, an
//! excluded disk untouched; host images checked) → `chassis.power reset` and `reboot` (the
//! agent comes back with a new boot id) → `poweroff` (QEMU ends).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::TaskPhase;
use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::{BMC_MAC, Disk, DiskKind, IpmiSimConfig, Lab, QemuConfig};
use molar_tests::privileged::is_all_zero;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const SERVER_MAC: &str = "52:54:00:12:34:56";

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn call(c: &Client, id: &str, method: &str, params: Value) -> Value {
    c.call(id, method, params, Some(Duration::from_secs(120)))
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// Waits for the server's agent to be connected with a boot id other than `old`.
async fn back_with_new_boot(c: &Client, id: &str, old: &str) -> String {
    eventually(
        BOOT.as_secs(),
        "the agent to come back after a restart",
        || async {
            let v = c.server(id, false).await.ok()?;
            let boot = v.server.boot_id.clone()?;
            (v.server.connected && boot != old).then_some(boot)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_server_boots_registers_and_is_managed() {
    let Some(lab) = Lab::require("a_server_boots_registers_and_is_managed") else {
        return;
    };
    // The guest dials 10.0.2.100 (QEMU's guestfwd): the certificate must name it.
    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let ctl_port = ctl.agent_port();

    let mut server = QemuConfig::server(&lab);
    server.disks.push(Disk {
        kind: DiskKind::VirtioBlk {
            serial: Some("keepme".into()),
        },
        size_bytes: 32 << 20,
    });
    server.forward_as(9000, ctl_port);
    // The controller on the kernel command line, the secrets in SMBIOS OEM strings (the
    // kernel prints its command line on the console): both settings sources are exercised.
    server.append.extend([
        "molar.controller=10.0.2.100:9000".to_owned(),
        "panic=10".to_owned(),
    ]);
    server.oem_strings = vec![
        format!("molar.token={}", token.expose()),
        format!("molar.ca={}", ctl.running().ca_fingerprint),
    ];
    let started = Instant::now();
    let sim = block(|| {
        lab.start_ipmi_sim(IpmiSimConfig {
            power: Some(server.clone()),
            ..IpmiSimConfig::default()
        })
    })
    .unwrap();
    let disks: Vec<_> = (0..3)
        .map(|i| lab.dir().join(format!("server-disk{i}.img")))
        .collect();
    for d in &disks {
        molar_tests::privileged::fill_pattern(d).unwrap();
    }

    // Boot → handshake → listed.
    let id = eventually(BOOT.as_secs(), "the server to register", || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.serial.as_deref() == Some("S123") && s.server.connected)
            .map(|s| s.server.id)
    })
    .await;
    eprintln!(
        "lab: QEMU start -> handshake in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let view = client.server(&id, false).await.unwrap();
    assert_eq!(
        view.server.system_uuid.as_deref(),
        Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
    );
    assert_eq!(view.server.macs, vec![SERVER_MAC]);
    let boot1 = view.server.boot_id.clone().unwrap();

    assert_eq!(
        call(&client, &id, "ping", json!({"x": 1})).await,
        json!({"x": 1})
    );
    // The session starts while drivers still load; the module report follows.
    let status = eventually(60, "the module report in status", || async {
        let s = client.call(&id, "status", json!({}), None).await.ok()?;
        s["modules"].is_object().then_some(s)
    })
    .await;
    assert_eq!(status["ramdisk"], true);
    let loaded: Vec<&str> = status["modules"]["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        "virtio_net",
        "nvme",
        "virtio_blk",
        "ipmi_si",
        "ipmi_devintf",
    ] {
        assert!(loaded.contains(&m), "{m} not loaded: {loaded:?}");
    }

    // Inventory.
    let inv = call(&client, &id, "inventory", json!({})).await;
    assert_eq!(inv["system"]["serial"], "S123");
    assert_eq!(
        inv["system"]["uuid"],
        "5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b"
    );
    let inv_text = inv.to_string();
    assert!(
        inv_text.contains("deadbeef"),
        "NVMe serial in the inventory"
    );
    assert!(
        inv_text.contains("keepme"),
        "virtio serial in the inventory"
    );
    assert!(inv_text.contains(SERVER_MAC), "NIC MAC in the inventory");
    // QEMU's NVMe controller reports its firmware revision (QEMU's version) in Identify, and
    // answers the Firmware Slot Information log (one slot, running from slot 1).
    let nvme_fw = inv["firmware"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["kind"] == "nvme"));
    assert!(
        nvme_fw.is_some_and(|c| c["version"].as_str().is_some_and(|v| !v.is_empty())
            && c["nvme"]["active_slot"] == 1),
        "NVMe firmware component in the inventory: {}",
        inv["firmware"]
    );
    assert!(
        inv_text.contains(BMC_MAC),
        "BMC MAC in the inventory: {}",
        inv["bmc"]
    );

    // BMC credentials set in-band, proven out-of-band from the host.
    let creds = call(
        &client,
        &id,
        "bmc.set_credentials",
        json!({"username": "molar", "privilege": "administrator"}),
    )
    .await;
    let password = creds["password"].as_str().unwrap().to_owned();
    assert_eq!(creds["username"], "molar");
    let status =
        block(|| sim.ipmitool_ok("molar", &password, &["chassis", "power", "status"])).unwrap();
    assert!(status.contains("Chassis Power is on"), "{status}");
    // Seed 004's BMC table: the controller kept the credentials with the BMC's MAC.
    let bmc = eventually(30, "the BMC table entry", || async {
        client.server(&id, false).await.ok()?.bmc
    })
    .await;
    assert_eq!(bmc.username, "molar");
    assert_eq!(bmc.mac.as_deref(), Some(BMC_MAC));
    assert_eq!(
        ctl.running()
            .fleet
            .store
            .bmc_password(&id)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        password
    );
    let wrong =
        block(|| sim.ipmitool("molar", "not-the-password", &["chassis", "power", "status"]))
            .unwrap();
    assert!(!wrong.status.success(), "a wrong BMC password was accepted");
    let logs = client.logs(&id, 0, 10_000).await.unwrap();
    assert!(
        logs.logs.iter().all(|l| !l.msg.contains(&password)
            && !l
                .fields
                .as_ref()
                .is_some_and(|f| f.to_string().contains(&password))),
        "the BMC password reached the logs"
    );

    // BMC reset: ipmi_sim does not implement Cold Reset (0xc1); either way the BMC answers again.
    match client
        .call(
            &id,
            "bmc.reset",
            json!({"kind": "cold"}),
            Some(Duration::from_secs(120)),
        )
        .await
    {
        Ok(v) => assert_eq!(v["kind"], "cold"),
        Err(e) => assert_eq!(e.code(), "bmc_invalid_command", "{e}"),
    }
    let info = call(&client, &id, "bmc.info", json!({})).await;
    assert!(info.to_string().contains(BMC_MAC));

    // Erase: NVMe and the first virtio disk; the third disk is excluded.
    let t = client
        .start_task(
            &id,
            "decom.disk_erase",
            json!({"method": "auto", "exclude": ["vdb"]}),
        )
        .await
        .unwrap();
    let mut events = client.task_events(&t.task_id).await.unwrap();
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(300), events.next())
        .await
        .unwrap()
    {
        last = Some(ev.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.state, TaskPhase::Complete, "{last:?}");
    let report = last.result.unwrap();
    let nvme = report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"].as_str().unwrap().contains("nvme"))
        .unwrap();
    assert!(
        nvme["method"].as_str().unwrap().starts_with("nvme_format"),
        "{nvme}"
    );
    assert!(report["skipped"].to_string().contains("vdb"), "{report}");
    assert!(is_all_zero(&disks[0]), "the NVMe image reads zeros");
    assert!(is_all_zero(&disks[1]), "the virtio image reads zeros");
    assert!(!is_all_zero(&disks[2]), "the excluded disk is untouched");

    // Power reset through the BMC in-band; the agent returns with a new boot id.
    let r = call(&client, &id, "chassis.power", json!({"action": "reset"})).await;
    assert_eq!(r["action"], "reset");
    let boot2 = back_with_new_boot(&client, &id, &boot1).await;

    // Reboot through reboot(2).
    assert_eq!(
        call(&client, &id, "reboot", json!({})).await,
        json!({"action": "reboot"})
    );
    let _boot3 = back_with_new_boot(&client, &id, &boot2).await;

    // Power off: QEMU ends.
    assert_eq!(
        call(&client, &id, "poweroff", json!({})).await,
        json!({"action": "poweroff"})
    );
    let vm = sim.vm().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.pid().is_some() {
        assert!(Instant::now() < deadline, "poweroff left QEMU running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
