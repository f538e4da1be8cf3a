//! `decom.qc` in the lab, one VM boot (QEMU server: NVMe + virtio disks, virtio NIC, no BMC):
//! the spec templated from the server's stored inventory passes with a brief memory, CPU
//! and disk burn-in whose numbers are in the stored result; a wrong spec fails with exactly
//! the differences; `molar task start SERVER decom.qc PARAMS --wait` prints the readable
//! table. Needs QEMU and the lab images (skipped with a reason outside CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::TaskPhase;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{QcReport, Spec, check, template};
use molar_tests::bins::bin;
use molar_tests::inproc::{Controller, eventually, follow_task};
use molar_tests::lab::{Lab, QemuConfig};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// Runs `decom.qc` with `params` to its end: state, code, msg and the stored result.
async fn run_qc(
    c: &Client,
    id: &str,
    params: Value,
) -> (TaskPhase, Option<String>, Option<String>, Option<Value>) {
    let (_, record) = follow_task(c, id, "decom.qc", params, Duration::from_secs(300)).await;
    (record.state, record.code, record.msg, record.result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn decom_qc_in_the_lab_passes_its_template_with_burnin_and_fails_a_wrong_spec() {
    let Some(lab) = Lab::require("decom_qc_in_the_lab") else {
        return;
    };
    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let mut server = QemuConfig::server(&lab);
    server.forward_as(9000, ctl.agent_port());
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

    // The spec from the server's stored inventory, as an operator would template it.
    let inv: Value = client
        .call(&id, "inventory", json!({}), Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let inv: Inventory = serde_json::from_value(inv).unwrap();
    let spec = template(&inv);
    assert!(!spec.disks.is_empty() && spec.cpu.is_some(), "{spec:?}");
    let burnin = json!({
        "memory": {"share_percent": 5, "seconds": 2},
        "cpu": {"seconds": 2},
        "disks": {"seconds": 2, "verify": true, "min_mb_s": 1.0}});
    let (state, code, msg, result) =
        run_qc(&client, &id, json!({"spec": spec, "burnin": burnin})).await;
    assert_eq!(state, TaskPhase::Complete, "{code:?} {msg:?} {result:?}");
    let report: QcReport = serde_json::from_value(result.unwrap()).unwrap();
    assert!(report.passed, "{:?}", report.failures);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "burnin.memory",
        "burnin.cpu",
        "burnin.disks[nvme0n1]",
        "burnin.disks[nvme0n1].verify",
        "burnin.disks[nvme0n1].health",
        "burnin.disks[vda]",
        "burnin.disks[vda].verify",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let b = report.burnin.expect("burn-in numbers stored");
    let m = b.memory.unwrap();
    assert!(m.bytes > 0 && m.errors == 0 && m.mb_s > 0.0, "{m:?}");
    assert!(!m.patterns.is_empty());
    let cpu = b.cpu.unwrap();
    assert_eq!(cpu.threads, 2);
    assert!(cpu.rounds > 0 && cpu.wrong_results == 0, "{cpu:?}");
    assert_eq!(b.disks.len(), 2, "{:?}", b.disks);
    for d in &b.disks {
        assert!(d.bytes_read > 0 && d.mb_s > 1.0, "{d:?}");
        assert_eq!(d.verified, Some(true), "{d:?}");
    }
    let nvme = b.disks.iter().find(|d| d.name == "nvme0n1").unwrap();
    let h = nvme
        .health
        .as_ref()
        .expect("QEMU's NVMe answers the SMART log");
    assert_eq!(h.critical_warning, Some(0));
    eprintln!(
        "lab burn-in: memory {:.0} MB/s over {} MiB, cpu {} units, nvme {:.0} MB/s, vda {:.0} MB/s",
        m.mb_s,
        m.bytes >> 20,
        cpu.rounds,
        nvme.mb_s,
        b.disks.iter().find(|d| d.name == "vda").unwrap().mb_s
    );

    // A wrong spec: exactly the differences fail, and they are what the pure check says of
    // the stored inventory.
    let wrong: Spec = serde_json::from_value(json!({
        "cpu": {"sockets": 4, "cores": inv.cpu.cores},
        "disks": [{"count": 7}],
        "memory": {"min_bytes": 1u64 << 42},
        "bmc": {"present": false}}))
    .unwrap();
    let (state, code, msg, result) = run_qc(&client, &id, json!({"spec": wrong})).await;
    assert_eq!(state, TaskPhase::Error);
    assert_eq!(code.as_deref(), Some("qc_failed"));
    let report: QcReport = serde_json::from_value(result.expect("report kept")).unwrap();
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["cpu.sockets", "memory.min_bytes", "disks[0]"]);
    assert_eq!(report.failures, check(&wrong, &inv).failures);
    assert!(msg.unwrap().starts_with("3 of 5 checks failed"));

    // The operator's command: the readable table, exit status 0 for a pass.
    let params = json!({"spec": spec, "burnin": {"cpu": {"seconds": 1}}}).to_string();
    let state_dir = ctl.ca_pem().parent().unwrap().to_owned();
    let out = tokio::task::block_in_place(|| {
        Command::new(bin("molar"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["task", "start", &id, "decom.qc", &params, "--wait"])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = stdout
        .lines()
        .find(|l| l.contains("CHECK") && l.contains("EXPECTED") && l.contains("ACTUAL"));
    assert!(header.is_some(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("burnin.cpu")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("cpu.model")),
        "{stdout}"
    );
}
