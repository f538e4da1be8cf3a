//! Out-of-band control in the lab: a QEMU server whose power `ipmi_sim` owns, enrolled by
//! its BMC while it is off, driven through molar's own API and CLI with no agent running,
//! then with the credentials its agent set in-band:
//!
//! `molar server add` (session verified, `initial`) → `molar power status` = off over IPMI
//! LAN → `molar power on` (out-of-band) → the ramdisk boots, its agent is recognised as the
//! enrolled server by the system GUID the BMC reported → discovery → `bmc.set_credentials`
//! in-band, the BMC entry keeps the operator's address with the new credentials → queued
//! `power off` stops QEMU, `power on` starts it again and the agent re-registers with a new
//! boot → `molar requests` lists them in order, each with its path and message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::api::ControlRequest;
use molar_controller::client::Client;
use molar_controller::store::RequestRecord;
use molar_tests::bins::bin;
use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::{IpmiSimConfig, Lab, QemuConfig, SerialRelay};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const NAME: &str = "lab-oob-1";

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `molar ARGS` as an operator runs it against `ctl`: exit code, stdout, stderr.
fn molar(ctl: &Controller, args: &[&str]) -> (i32, String, String) {
    let state = ctl.ca_pem().parent().unwrap().to_owned();
    let out = block(|| {
        Command::new(bin("molar"))
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .output()
            .unwrap()
    });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Queues a power request and waits for its end.
async fn power(c: &Client, parameter: &str) -> RequestRecord {
    let req = ControlRequest {
        action: "set_power_state".into(),
        parameter: Some(parameter.into()),
        persistent: false,
        efi: false,
    };
    let q = c.control(NAME, &req).await.unwrap();
    c.wait_request(q.id, Duration::from_secs(60)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_bmc_enrolled_server_is_powered_and_managed_out_of_band() {
    let Some(lab) = Lab::require("a_bmc_enrolled_server_is_powered_and_managed_out_of_band") else {
        return;
    };
    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let ctl_port = ctl.agent_port();
    let mut server = QemuConfig::server(&lab);
    server.forward_as(9000, ctl_port);
    server.append.extend([
        "molar.controller=10.0.2.100:9000".to_owned(),
        "panic=10".to_owned(),
    ]);
    server.oem_strings = vec![
        format!("molar.token={}", token.expose()),
        format!("molar.ca={}", ctl.running().ca_fingerprint),
    ];
    let uuid = server.smbios.as_ref().unwrap().uuid.clone();
    // The serial console goes to the BMC's Serial over LAN, through LAB.md's relay.
    let relay = SerialRelay::start().unwrap();
    server.serial_port = Some(relay.vm_port());
    // The server is off: nothing runs until the controller powers it on.
    let sim = block(|| {
        lab.start_ipmi_sim(IpmiSimConfig {
            power: Some(server.clone()),
            start_now: false,
            sol_port: Some(relay.bmc_port()),
            ..IpmiSimConfig::default()
        })
    })
    .unwrap();
    let vm = sim.vm().unwrap();
    assert!(!vm.is_running());

    // Enrolled by its BMC, with the operator's credentials.
    let pw = lab.dir().join("bmc-password");
    std::fs::write(&pw, "test\n").unwrap();
    let bmc = format!("127.0.0.1:{}", sim.lan_port());
    let (code, out, err) = molar(
        &ctl,
        &[
            "server",
            "add",
            NAME,
            "--bmc",
            &bmc,
            "--bmc-user",
            "ipmiusr",
            "--bmc-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let enrolled = client.server(NAME, false).await.unwrap();
    let id = enrolled.server.id.clone();
    assert_eq!(enrolled.server.state.as_str(), "initial");

    // No agent: power status over IPMI LAN.
    let (code, out, err) = molar(&ctl, &["power", NAME, "status", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("server power state: off"), "{out}");

    // A console token holder watches the console (chunked text, as `curl` reads it) from
    // before the power-on: the boot scrolls by over IPMI SOL.
    let console_token = client.create_console_token(NAME, None).await.unwrap().token;
    let http = ctl.https();
    let mut stream = http
        .get(format!(
            "{}/api/v1/servers/{NAME}/console?token={}",
            ctl.running().api_url,
            console_token.expose()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let watched = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
                Ok(Ok(Some(c))) => seen.extend_from_slice(&c),
                Ok(_) => break,
                Err(_) => {}
            }
            if String::from_utf8_lossy(&seen).contains("molar init starting") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });

    // Power on out-of-band: QEMU starts, the agent connects and is the enrolled server.
    let started = Instant::now();
    let r = power(&client, "on").await;
    assert_eq!(r.state.as_str(), "succeeded", "{r:?}");
    assert_eq!(r.path.map(|p| p.as_str()), Some("out_of_band"));
    assert_eq!(
        r.message.as_deref(),
        Some("server power state set successful: on")
    );
    let boot1 = eventually(BOOT.as_secs(), "the enrolled server's agent", || async {
        let v = client.server(NAME, false).await.ok()?;
        (v.server.connected && v.server.state.as_str() == "available")
            .then(|| v.server.boot_id.clone())
            .flatten()
    })
    .await;
    eprintln!(
        "lab: power on -> agent registered and discovered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let watched = watched.await.unwrap();
    assert!(
        watched.contains("Linux version"),
        "the kernel's banner on the SOL console: {}",
        watched.chars().take(2000).collect::<String>()
    );
    assert!(
        watched.contains("molar init starting"),
        "the agent on the SOL console"
    );
    // What scrolled by is in the bounded console log too.
    let (code, out, err) = molar(&ctl, &["console", NAME, "--log"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Linux version"),
        "{}",
        out.chars().take(2000).collect::<String>()
    );
    let v = client.server(NAME, false).await.unwrap();
    assert_eq!(
        v.server.id, id,
        "the agent took the enrolled server's place"
    );
    assert_eq!(v.server.system_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(client.servers().await.unwrap().len(), 1);

    // Credentials set in-band; the BMC entry keeps the operator's address.
    let creds = client
        .call(
            &id,
            "bmc.set_credentials",
            json!({"username": "molar", "privilege": "administrator"}),
            Some(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let password = creds["password"].as_str().unwrap().to_owned();
    let b = eventually(30, "the in-band BMC entry", || async {
        let b = client.server(&id, false).await.ok()?.bmc?;
        (b.source == "in_band").then_some(b)
    })
    .await;
    assert_eq!(b.username, "molar");
    assert_eq!(
        (b.host.as_deref(), b.port),
        (Some("127.0.0.1"), Some(sim.lan_port()))
    );

    // Power off out-of-band with the new credentials: QEMU ends.
    let r = power(&client, "off").await;
    assert_eq!(r.state.as_str(), "succeeded", "{r:?}");
    assert_eq!(r.path.map(|p| p.as_str()), Some("out_of_band"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.is_running() {
        assert!(Instant::now() < deadline, "power off left QEMU running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(60, "the agent connection to close", || async {
        (!client.server(&id, false).await.ok()?.server.connected).then_some(())
    })
    .await;
    let r = power(&client, "status").await;
    assert_eq!(
        r.message.as_deref(),
        Some("server power state: off"),
        "{r:?}"
    );

    // And on again: the agent re-registers with a new boot.
    let r = power(&client, "on").await;
    assert_eq!(r.state.as_str(), "succeeded", "{r:?}");
    eventually(BOOT.as_secs(), "the agent to come back", || async {
        let v = client.server(&id, false).await.ok()?;
        (v.server.connected && v.server.boot_id.as_deref() != Some(boot1.as_str())).then_some(())
    })
    .await;

    // The requests, newest first, every one finished with its message; no password shown.
    let (code, out, err) = molar(&ctl, &["requests", NAME]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(&password) && !out.contains("test\n"), "{out}");
    let listed = client.requests(NAME, 20).await.unwrap();
    let kinds: Vec<_> = listed
        .iter()
        .rev()
        .map(|r| (r.parameter.clone().unwrap_or_default(), r.state.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("status".to_string(), "succeeded"),
            ("on".to_string(), "succeeded"),
            ("off".to_string(), "succeeded"),
            ("status".to_string(), "succeeded"),
            ("on".to_string(), "succeeded"),
        ]
    );

    // Seed 001's OBMd API on the same server: a node token, power status and power off.
    let base = format!("{}/obmd/node/{NAME}", ctl.running().api_url);
    let admin = ("admin", Some(ctl.running().admin_token.expose().to_owned()));
    let t: serde_json::Value = http
        .post(format!("{base}/token"))
        .basic_auth(admin.0, admin.1.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node_token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(node_token.len(), 32, "{t}");
    let status = |http: reqwest::Client, url: String| async move {
        let v: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
        v["power_status"].as_str().unwrap().to_owned()
    };
    let url = format!("{base}/power_status?token={node_token}");
    assert_eq!(status(http.clone(), url.clone()).await, "on");
    let off = http
        .post(format!("{base}/power_off?token={node_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status().as_u16(), 200, "{:?}", off.text().await);
    assert_eq!(status(http.clone(), url.clone()).await, "off");
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.is_running() {
        assert!(
            Instant::now() < deadline,
            "obmd power_off left QEMU running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Revoked: the token no longer works.
    let revoked = http
        .delete(format!("{base}/token"))
        .basic_auth(admin.0, admin.1)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    let refused = http.get(url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
}
