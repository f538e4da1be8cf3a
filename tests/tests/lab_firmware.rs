//! `decom.firmware_secure` and `decom.qc`'s firmware checks in the lab: one QEMU server booted
//! from the ramdisk, against a real controller on this machine, with an HTTP server on
//! loopback that the guest reaches through QEMU's guestfwd.
//!
//! (a) a dry run against the QEMU NVMe's real firmware revision (read from the inventory):
//!     required == current is `skipped_current`, a newer required version is `would_update`
//!     and nothing is fetched; (b) a `payload` update — a tar.gz carrying Debian's static
//!     busybox and a script run as `busybox sh update.sh` — runs in the ramdisk and its
//!     output line reaches the controller's log of the server; (c) `decom.qc` with a
//!     firmware check on the NVMe version passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::{TaskEvent, TaskPhase};
use molar_tests::inproc::{Controller, eventually, follow_task};
use molar_tests::lab::{HttpFiles, Lab, QemuConfig};
use serde_json::{Value, json};
use sha2::Digest;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
/// The guest's port for the package server.
const FILES_PORT: u16 = 8080;
/// Debian's busybox-static (scripts/install-deps): the ramdisk has no shell of its own.
const BUSYBOX: &str = "/bin/busybox";

async fn run_task(c: &Client, id: &str, method: &str, params: Value, secs: u64) -> TaskEvent {
    let (last, _) = follow_task(c, id, method, params, Duration::from_secs(secs)).await;
    eprintln!(
        "lab: {method}: {} {}",
        last.state.as_str(),
        last.result
            .as_ref()
            .map(Value::to_string)
            .or(last.msg.clone())
            .unwrap_or_default()
    );
    last
}

fn complete(ev: &TaskEvent, what: &str) -> Value {
    assert_eq!(ev.state, TaskPhase::Complete, "{what}: {ev:?}");
    ev.result.clone().unwrap()
}

/// A gzip tar of busybox and `update.sh` in `www`, and its sha256.
fn payload_archive(www: &std::path::Path, line: &str) -> String {
    let src = www.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(BUSYBOX, src.join("busybox")).unwrap();
    std::fs::write(
        src.join("update.sh"),
        format!("echo \"{line} $1\"\necho 'to stderr' >&2\nexit 0\n"),
    )
    .unwrap();
    let out = www.join("payload.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&out)
        .args(["busybox", "update.sh"])
        .status()
        .unwrap();
    assert!(st.success());
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(&out).unwrap()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn firmware_secure_dry_run_payload_and_qc_in_the_lab() {
    let Some(lab) = Lab::require("firmware_secure_dry_run_payload_and_qc_in_the_lab") else {
        return;
    };
    if !std::path::Path::new(BUSYBOX).exists() {
        molar_tests::lab::skip_or_fail::<()>(
            "firmware_secure_dry_run_payload_and_qc_in_the_lab",
            "no /bin/busybox (apt-get install busybox-static)",
        );
        return;
    }
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let marker = "molar-lab-payload: flashing";
    let checksum = payload_archive(&www, marker);
    let http = HttpFiles::serve(&www).unwrap();

    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let mut server = QemuConfig::server(&lab);
    server.forward_as(9000, ctl.agent_port());
    server.forward_as(FILES_PORT, http.port());
    server.append.extend([
        "molar.controller=10.0.2.100:9000".to_owned(),
        "panic=10".to_owned(),
    ]);
    server.oem_strings = vec![
        format!("molar.token={}", token.expose()),
        format!("molar.ca={}", ctl.running().ca_fingerprint),
    ];
    let _vm = tokio::task::block_in_place(|| lab.spawn_qemu(&server)).unwrap();
    let id = eventually(BOOT.as_secs(), "the server to register", || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.serial.as_deref() == Some("S123") && s.server.connected)
            .map(|s| s.server.id)
    })
    .await;

    // The NVMe's real firmware revision, from the stored inventory.
    let inv = client
        .call(&id, "inventory", json!({}), Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let current = inv["firmware"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["kind"] == "nvme"))
        .and_then(|c| c["version"].as_str())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no NVMe firmware in {}", inv["firmware"]));
    let newer = format!("{current}.1");
    let url = format!("http://10.0.2.100:{FILES_PORT}/payload.tar.gz");

    // (a) Dry run: current is skipped, newer would be updated, nothing fetched.
    let before = http.requests().len();
    let ev = run_task(
        &client,
        &id,
        "decom.firmware_secure",
        json!({"dry_run": true, "components": [
            {"match": {"kind": "nvme", "name": "nvme0"}, "version": current},
            {"match": {"kind": "nvme", "name": "nvme0"}, "version": newer,
             "package": {"url": url, "checksum": checksum}, "method": "nvme",
             "nvme": {"action": "replace_activate_reset"}}]}),
        120,
    )
    .await;
    let r = complete(&ev, "dry run");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["components"][0]["action"], "skipped_current", "{r}");
    assert_eq!(r["components"][0]["before"], current.as_str());
    assert_eq!(r["components"][1]["action"], "would_update", "{r}");
    assert_eq!(r["reboot_required"], false);
    assert_eq!(http.requests().len(), before, "a dry run fetches nothing");
    assert!(r["settings"].is_object(), "{r}");

    // (b) A payload update runs in the ramdisk; its output reaches the controller's log.
    let ev = run_task(
        &client,
        &id,
        "decom.firmware_secure",
        json!({"components": [
            {"match": {"kind": "nvme", "name": "nvme0"}, "version": newer,
             "package": {"url": url, "checksum": checksum}, "method": "payload",
             "payload": {"command": "busybox", "args": ["sh", "update.sh", "nvme0"],
                         "timeout_s": 60, "activation": "reboot"}}]}),
        300,
    )
    .await;
    let r = complete(&ev, "payload update");
    assert_eq!(r["components"][0]["action"], "updated", "{r}");
    assert_eq!(r["components"][0]["reboot"], true);
    assert_eq!(r["reboot_required"], true);
    assert!(http.requests().len() > before, "the package was fetched");
    let want = format!("{marker} nvme0");
    let logs = eventually(30, "the payload's output in the server's log", || async {
        let page = client.logs(&id, 0, 10_000).await.ok()?;
        page.logs.into_iter().find(|l| l.msg == want)
    })
    .await;
    assert_eq!(logs.level, "info");
    assert_eq!(logs.fields.as_ref().unwrap()["stream"], "stdout");

    // A package whose checksum does not match is refused before anything runs.
    let bad = format!("sha256:{}", "0".repeat(64));
    let ev = run_task(
        &client,
        &id,
        "decom.firmware_secure",
        json!({"components": [
            {"match": {"kind": "nvme", "name": "nvme0"}, "version": newer,
             "package": {"url": url, "checksum": bad}, "method": "payload",
             "payload": {"command": "busybox", "args": ["sh", "update.sh"]}}]}),
        300,
    )
    .await;
    assert_eq!(ev.state, TaskPhase::Error, "{ev:?}");
    assert_eq!(ev.code.as_deref(), Some("firmware_not_secure"), "{ev:?}");
    assert!(
        ev.msg.as_deref().unwrap().contains("checksum_mismatch"),
        "{ev:?}"
    );

    // (c) decom.qc with a firmware check on the NVMe version.
    let ev = run_task(
        &client,
        &id,
        "decom.qc",
        json!({"spec": {"firmware": [
            {"match": {"kind": "nvme"}, "min_version": current},
            {"match": {"kind": "nvme", "name": "nvme0"}, "version": current}]}}),
        120,
    )
    .await;
    let r = complete(&ev, "qc with firmware checks");
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["checks"].as_array().unwrap().len(), 2);
}
