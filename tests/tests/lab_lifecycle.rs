//! The whole lifecycle in the lab, driven by the controller's workflows and the CLI (issue
//! #15): one QEMU server whose power `ipmi_sim` owns, off, enrolled by its BMC only.
//!
//! `molar server add` with the policy's `[discovery] power_on_enrolled` → boot_pxe, power on
//! over IPMI LAN, the ramdisk boots over PXE, inventory, BMC credentials (the operator's,
//! verified, kept: proven with `ipmitool -I lanplus` from the host) → available on its own.
//! `molar bmc rotate` sets a new password in-band, proven over LAN before it is stored.
//! `molar claim --image guest` (the policy's catalogue) → prepare_image, run_image → the
//! deployed guest boots by kexec (its marker and meta data on the console) → reserved.
//! `molar release` → next boot PXE, power cycle over the BMC (the guest powered itself off),
//! the controller is killed and restarted while the release waits for the ramdisk, the
//! ramdisk's agent comes back, the erase → available. Every step ran once: one request per
//! request step, one task per task step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::{ServerState, StepState, WorkflowRecord};
use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::guest::{self, DiskSpec, GuestKit, GuestReport};
use molar_tests::lab::{HttpFiles, IpmiSimConfig, Lab, QemuConfig};
use serde_json::json;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const NAME: &str = "lab-life-1";
/// The guest's port for the image server (QEMU guestfwd to the host's `HttpFiles`).
const IMAGES_PORT: u16 = 8080;
const NVME: &str = "nvme0n1";

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The newest workflow of the server.
async fn newest(c: &Client) -> WorkflowRecord {
    c.workflows(NAME, 10)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|w| w.id)
        .expect("a workflow")
}

/// Waits for the server's state to be `want`; a workflow that failed fails the test.
async fn reach(c: &Client, want: &str, secs: u64) {
    let what = format!("the server to be {want}");
    eventually(secs, &what, || async {
        let v = c.server(NAME, false).await.ok()?;
        let s = v.server.state.as_str();
        if s == "error" {
            let wfs = c.workflows(NAME, 10).await;
            panic!("the server went to error: {wfs:?}");
        }
        (s == want).then_some(())
    })
    .await;
}

/// Every step done, in order, each once; the request steps each with their own request.
fn assert_steps(wf: &WorkflowRecord, names: &[&str]) {
    let got: Vec<(&str, StepState)> = wf
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect();
    let want: Vec<(&str, StepState)> = names.iter().map(|n| (*n, StepState::Done)).collect();
    assert_eq!(got, want, "{wf:?}");
    assert_eq!(wf.state, StepState::Done, "{wf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_bmc_enrolled_server_walks_the_whole_lifecycle() {
    let Some(lab) = Lab::require("a_bmc_enrolled_server_walks_the_whole_lifecycle") else {
        return;
    };
    let Some(kit) = block(|| GuestKit::require(&lab)) else {
        return;
    };
    let www = lab.dir().join("www");
    let published = block(|| {
        let spec = DiskSpec {
            size_bytes: 64 << 20,
            kernel: true,
            config_drive: None,
        };
        let g = guest::build_disk(&kit, &spec, lab.dir(), "guest").unwrap();
        guest::publish_qcow2(&g.raw, &www, "guest").unwrap()
    });
    let http = HttpFiles::serve(&www).unwrap();
    let policy = format!(
        r#"
[discovery]
power_on_enrolled = true
bmc_credentials = {{ username = "molar" }}

[[image]]
id = "guest"
urls = ["http://10.0.2.100:{IMAGES_PORT}/{}"]
checksum = "{}"
format = "qcow2"
"#,
        published.url_path, published.checksum
    );
    let mut ctl = Controller::start_with_sans_and_policy(vec!["10.0.2.100".into()], &policy).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let mut server = QemuConfig::server(&lab);
    // The NVMe disk takes the image and a config drive after it.
    server.disks[0].size_bytes = 256 << 20;
    server.disks[1].size_bytes = 64 << 20;
    server.forward_as(9000, ctl.agent_port());
    server.forward_as(IMAGES_PORT, http.port());
    server.append.extend([
        "molar.controller=10.0.2.100:9000".to_owned(),
        "panic=10".to_owned(),
    ]);
    server.oem_strings = vec![
        format!("molar.token={}", token.expose()),
        format!("molar.ca={}", ctl.running().ca_fingerprint),
    ];
    let sim = block(|| {
        lab.start_ipmi_sim(IpmiSimConfig {
            power: Some(server.clone()),
            start_now: false,
            ..IpmiSimConfig::default()
        })
    })
    .unwrap();
    let vm = || sim.vm().expect("the BMC's VM");
    assert!(!vm().is_running(), "the server starts off");

    // Enrolled by its BMC only; the controller does the rest.
    let pw = lab.dir().join("bmc-password");
    std::fs::write(&pw, "test\n").unwrap();
    let bmc = format!("127.0.0.1:{}", sim.lan_port());
    let started = Instant::now();
    let (code, out, err) = ctl.molar(&[
        "server",
        "add",
        NAME,
        "--bmc",
        &bmc,
        "--bmc-user",
        "ipmiusr",
        "--bmc-password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    reach(&client, "available", BOOT.as_secs()).await;
    eprintln!(
        "lab: server add -> available in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let discovery = newest(&client).await;
    assert_steps(
        &discovery,
        &[
            "boot_pxe",
            "power_on",
            "ramdisk",
            "store_inventory",
            "bmc_credentials",
            "qc",
            "firmware",
        ],
    );
    let creds = &discovery.steps[4];
    assert!(
        creds
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("the operator's credentials for ipmiusr work: kept"),
        "{creds:?}"
    );
    let states: Vec<(Option<ServerState>, ServerState)> = client
        .history(NAME, 0, 100)
        .await
        .unwrap()
        .transitions
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        states,
        [
            (None, ServerState::Initial),
            (Some(ServerState::Initial), ServerState::Discovery),
            (Some(ServerState::Discovery), ServerState::Available),
        ]
    );
    // The stored credentials work from the host, over IPMI v2.0 LAN.
    let b = client.server(NAME, false).await.unwrap().bmc.unwrap();
    assert_eq!(b.username, "ipmiusr");
    let status = block(|| {
        sim.ipmitool_ok(&b.username, "test", &["chassis", "power", "status"])
            .unwrap()
    });
    assert!(status.contains("Chassis Power is on"), "{status}");

    // `molar bmc rotate` while the ramdisk runs: set in-band through /dev/ipmi0, proven over
    // LAN before it replaces the stored password; the old one stops working.
    let (code, out, err) = ctl.molar(&["bmc", "rotate", NAME]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("new password set in-band; a session with it worked: stored"),
        "{out}"
    );
    let id = client.server(NAME, false).await.unwrap().server.id;
    let rotated = ctl
        .running()
        .fleet
        .store
        .bmc_password(&id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(rotated.expose(), "test");
    assert!(!out.contains(rotated.expose()) && !err.contains(rotated.expose()));
    block(|| {
        let new = sim.ipmitool("ipmiusr", rotated.expose(), &["chassis", "power", "status"]);
        assert!(new.unwrap().status.success(), "the rotated password works");
        let old = sim.ipmitool("ipmiusr", "test", &["chassis", "power", "status"]);
        assert!(
            !old.unwrap().status.success(),
            "the old password still works"
        );
    });
    let b = client.bmc(NAME).await.unwrap();
    assert_eq!((b.source.as_str(), b.rotation_pending), ("in_band", false));
    assert!(b.verify_error.is_none(), "{b:?}");

    // Claim: the catalogue's image written to the NVMe disk, then kexec'd with a config drive.
    let meta = json!({
        "uuid": "7d0c7d52-3c1b-4a8e-8f5e-0f1f3e5b9a21",
        "hostname": "claimed-by-molar",
        "name": "claimed-by-molar",
    });
    let cd = lab.dir().join("config-drive.json");
    std::fs::write(&cd, json!({ "meta_data": meta }).to_string()).unwrap();
    let boot1 = client.server(NAME, false).await.unwrap().server.boot_id;
    let console_from = vm().console().len();
    let (code, out, err) = ctl.molar(&[
        "claim",
        NAME,
        "--image",
        "guest",
        "--device",
        NVME,
        "--config-drive",
        cd.to_str().unwrap(),
        "--kernel-args",
        "console=ttyS0 panic=-1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let claimed_at = Instant::now();
    reach(&client, "reserved", 300).await;
    assert_steps(&newest(&client).await, &["prepare_image", "run_image"]);
    block(|| {
        vm().wait_for_console_from(console_from, guest::POWEROFF, BOOT)
            .unwrap()
    });
    eprintln!(
        "lab: claim -> guest ran and powered off in {:.1} s",
        claimed_at.elapsed().as_secs_f64()
    );
    let report = GuestReport::parse(&vm().console()[console_from..]);
    assert_eq!(report.boot_ids.len(), 1, "{report:?}");
    assert_ne!(
        Some(&report.boot_ids[0]),
        boot1.as_ref(),
        "a new kernel runs"
    );
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.meta_data[0]["uuid"], meta["uuid"], "{report:?}");
    block(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while vm().pid().is_some() {
            assert!(
                Instant::now() < deadline,
                "the guest's poweroff left QEMU on"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    // Release: PXE, power cycle over the BMC (the machine is off), the ramdisk, the erase.
    let released_at = Instant::now();
    let (code, out, err) = ctl.molar(&["release", NAME, "--erase-method", "metadata"]);
    assert_eq!(code, 0, "{out}{err}");
    // Killed and restarted while the release waits for the ramdisk.
    eventually(120, "the release to wait for the ramdisk", || async {
        let wf = newest(&client).await;
        let ramdisk = wf.steps.iter().find(|s| s.name == "ramdisk")?;
        (ramdisk.state == StepState::Running).then_some(())
    })
    .await;
    ctl.restart().await;
    let client = ctl.client();
    reach(&client, "available", BOOT.as_secs()).await;
    eprintln!(
        "lab: release (with a controller restart) -> available in {:.1} s",
        released_at.elapsed().as_secs_f64()
    );
    let release = newest(&client).await;
    assert_steps(&release, &["boot_pxe", "power_cycle", "ramdisk", "erase"]);
    let v = client.server(NAME, false).await.unwrap();
    assert!(v.server.connected, "the ramdisk's agent is connected");

    // Each step ran once: one request per request step, one task per task step.
    let requests = client.requests(NAME, 50).await.unwrap();
    let workflows = client.workflows(NAME, 10).await.unwrap();
    for wf in &workflows {
        for step in &wf.steps {
            let source = format!("wf-{}-{}", wf.id, step.seq);
            let queued: Vec<_> = requests.iter().filter(|r| r.source == source).collect();
            match step.request_id {
                Some(id) => {
                    assert_eq!(queued.len(), 1, "{step:?}: {queued:?}");
                    assert_eq!(queued[0].id, id);
                    if step.name == "boot_pxe" {
                        // ipmi_sim has no boot overrides; the step notes it and goes on.
                        assert!(
                            step.message
                                .as_deref()
                                .unwrap_or_default()
                                .contains("the BMC refuses a boot override"),
                            "{step:?}"
                        );
                    } else {
                        assert_eq!(queued[0].state.as_str(), "succeeded", "{:?}", queued[0]);
                    }
                }
                None => assert!(queued.is_empty(), "{step:?}: {queued:?}"),
            }
        }
    }
    let tasks = client.server_tasks(NAME).await.unwrap();
    let task_steps = ["prepare_image", "run_image", "erase"];
    for wf in &workflows {
        for step in wf
            .steps
            .iter()
            .filter(|s| task_steps.contains(&s.name.as_str()))
        {
            let id = format!("wf-{}-{}", wf.id, step.seq);
            assert_eq!(step.task_id.as_deref(), Some(id.as_str()), "{step:?}");
            let ran: Vec<_> = tasks.iter().filter(|t| t.task_id == id).collect();
            assert_eq!(ran.len(), 1, "{step:?}: {tasks:?}");
            assert_eq!(ran[0].state.as_str(), "complete", "{:?}", ran[0]);
        }
    }
    assert_eq!(
        workflows
            .iter()
            .flat_map(|w| &w.steps)
            .filter(|s| task_steps.contains(&s.name.as_str()))
            .count(),
        3,
        "{workflows:?}"
    );
    let (code, out, err) = ctl.molar(&["requests", NAME]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("test\n"), "{out}");
    let (code, out, err) = ctl.molar(&["history", NAME]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("lab: history\n{out}");
    let states: Vec<(Option<ServerState>, ServerState)> = client
        .history(NAME, 0, 100)
        .await
        .unwrap()
        .transitions
        .iter()
        .map(|t| (t.from, t.to))
        .skip(3)
        .collect();
    assert_eq!(
        states,
        [
            (Some(ServerState::Available), ServerState::Reserved),
            (Some(ServerState::Reserved), ServerState::Cleanup),
            (Some(ServerState::Cleanup), ServerState::Available),
        ]
    );

    // Power off: QEMU ends.
    let id = v.server.id.clone();
    let _ = client
        .call(&id, "poweroff", json!({}), Some(Duration::from_secs(60)))
        .await;
    block(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while vm().pid().is_some() {
            assert!(Instant::now() < deadline, "poweroff left QEMU running");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}
