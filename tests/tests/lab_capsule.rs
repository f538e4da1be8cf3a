//! `decom.firmware_secure` with a `uefi_capsule` component in the lab: the QEMU server booted
//! under OVMF (`Firmware::Uefi`) from the ramdisk, its virtio disk prepared on the host with a
//! GPT and a FAT ESP (sgdisk, mkfs.fat at the partition's offset, an `EFI` directory by
//! mtools), the capsule served from loopback.
//!
//! A dry run reports the delivery the agent would use and why (OVMF's
//! OsIndicationsSupported is printed in the test log); then the real run must do what that
//! said: capsule on disk leaves the component `updated` with `reboot`, and after the VM is
//! stopped the host reads `\EFI\UpdateCapsule\molar-bios.cap` back from the disk image
//! byte-identical (mtools at the partition offset); the kernel's loader either takes it
//! (`updated`, `reboot`) or its refusal is the component's clear failure and nothing is on
//! the ESP; neither is a `capsule_not_deliverable` failure. A package that is no capsule is
//! refused before anything is staged.
//!
//! Measured with Debian's OVMF (2022.11): OsIndicationsSupported is 0x41 (no file capsule
//! delivery), `/dev/efi_capsule_loader` exists, and the loader's first write fails with
//! EINVAL (the kernel's check or OVMF's QueryCapsuleCapabilities; which one was not traced), so
//! the lab exercises the loader's refusal; capsule on disk is covered by the unit tests
//! (`agent/src/firmware/capsule/tests.rs`) against a GPT+ESP image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::client::Client;
use molar_controller::store::{TaskEvent, TaskPhase};
use molar_tests::inproc::{Controller, eventually, follow_task};
use molar_tests::lab::{HttpFiles, Lab, QemuConfig};
use serde_json::{Value, json};
use sha2::Digest;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TEST: &str = "uefi_capsule_is_staged_under_ovmf";
const BOOT: Duration = Duration::from_secs(240);
const FILES_PORT: u16 = 8080;
/// The ESP: sectors 2048 to 67583 (32 MiB) of the virtio disk.
const ESP_OFFSET: u64 = 2048 * 512;
/// A capsule GUID of no firmware's (OVMF has no ESRT entry to address).
const CAPSULE_GUID: [u8; 16] = [
    0x78, 0x56, 0x34, 0x12, 0xcd, 0xab, 0x01, 0xef, 0x89, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
];

async fn run_task(c: &Client, id: &str, params: Value) -> TaskEvent {
    let (last, _) = follow_task(
        c,
        id,
        "decom.firmware_secure",
        params,
        Duration::from_secs(300),
    )
    .await;
    eprintln!(
        "lab: decom.firmware_secure: {} {} {}",
        last.state.as_str(),
        last.msg.clone().unwrap_or_default(),
        last.result
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default()
    );
    last
}

fn tool(args: &[&str]) -> Vec<u8> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(out.status.success(), "{args:?}: {out:?}");
    out.stdout
}

/// A GPT with one 32 MiB ESP holding an empty FAT and an `EFI` directory, as an installed
/// machine's disk has.
fn prepare_disk(img: &Path, size: u64) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let img_s = img.to_str().unwrap();
    tool(&["sgdisk", "-n", "1:2048:67583", "-t", "1:EF00", img_s]);
    // mkfs.fat's block count is in KiB; --offset in sectors.
    tool(&["mkfs.fat", "--offset", "2048", "-n", "ESP", img_s, "32768"]);
    let at = format!("{img_s}@@{ESP_OFFSET}");
    tool(&["mmd", "-i", &at, "::/EFI"]);
}

/// A plain capsule (EFI_CAPSULE_HEADER, PERSIST_ACROSS_RESET) with `body`.
fn capsule(body: &[u8]) -> Vec<u8> {
    let mut c = CAPSULE_GUID.to_vec();
    c.extend_from_slice(&28u32.to_le_bytes());
    c.extend_from_slice(&0x0001_0000u32.to_le_bytes());
    c.extend_from_slice(&((28 + body.len()) as u32).to_le_bytes());
    c.extend_from_slice(body);
    c
}

/// After the VM stops: no `\EFI\UpdateCapsule` on the ESP (a refused capsule stages
/// nothing), the `EFI` directory still there.
fn nothing_on_the_esp(vm: &mut molar_tests::lab::Qemu, disk: &Path) {
    vm.kill();
    let at = format!("{}@@{ESP_OFFSET}", disk.display());
    tool(&["mdir", "-i", &at, "::/EFI"]);
    let out = Command::new("mdir")
        .args(["-i", &at, "::/EFI/UpdateCapsule"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "UpdateCapsule exists: {out:?}");
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn uefi_capsule_is_staged_under_ovmf() {
    let Some(lab) = Lab::require(TEST) else {
        return;
    };
    for (what, path) in [
        ("OVMF (apt-get install ovmf)", molar_tests::lab::OVMF_CODE),
        ("sgdisk (gdisk)", "/usr/sbin/sgdisk"),
        ("mkfs.fat (dosfstools)", "/usr/sbin/mkfs.fat"),
        ("mtools", "/usr/bin/mtype"),
    ] {
        if !Path::new(path).exists() {
            molar_tests::lab::skip_or_fail::<()>(TEST, &format!("no {what}"));
            return;
        }
    }
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let cap = capsule(&body);
    std::fs::write(www.join("fw.cap"), &cap).unwrap();
    std::fs::write(
        www.join("junk.cap"),
        b"<html>404 page not found, really</html>",
    )
    .unwrap();
    let http = HttpFiles::serve(&www).unwrap();

    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;
    let mut server = QemuConfig::server(&lab);
    server.firmware = molar_tests::lab::Firmware::Uefi;
    // OVMF starts a `-kernel` only as an EFI application: the bzImage, not the PVH vmlinux.
    server.boot = molar_tests::lab::Boot::Kernel {
        kernel: lab.images().vmlinuz.clone(),
        initrd: lab.images().initramfs.clone(),
    };
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
    let disk = server.disk_path(lab.dir(), 1);
    prepare_disk(&disk, server.disks[1].size_bytes);
    let mut vm = tokio::task::block_in_place(|| lab.spawn_qemu(&server)).unwrap();
    let id = eventually(BOOT.as_secs(), "the server to register", || async {
        let servers = client.servers().await.ok()?;
        servers
            .into_iter()
            .find(|s| s.server.serial.as_deref() == Some("S123") && s.server.connected)
            .map(|s| s.server.id)
    })
    .await;
    let inv = client
        .call(&id, "inventory", json!({}), Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let bios = inv["firmware"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["kind"] == "bios"))
        .and_then(|c| c["version"].as_str())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no BIOS firmware in {}", inv["firmware"]));
    eprintln!("lab: OVMF's BIOS version {bios:?}");
    let newer = format!("{bios}.1");
    let url = |f: &str| format!("http://10.0.2.100:{FILES_PORT}/{f}");
    let component = |file: &str, bytes: &[u8]| {
        json!({"match": {"kind": "bios"}, "version": newer,
               "package": {"url": url(file), "checksum": sha256(bytes)},
               "method": "uefi_capsule"})
    };

    // The plan says which delivery and why (OsIndicationsSupported's value included).
    let ev = run_task(
        &client,
        &id,
        json!({"dry_run": true, "components": [component("fw.cap", &cap)]}),
    )
    .await;
    // Without a delivery even the dry run fails ("secure"), the plan in its message.
    let plan = match ev.state {
        TaskPhase::Complete => {
            let r = ev.result.clone().unwrap();
            assert_eq!(r["components"][0]["action"], "would_update", "{r}");
            eprintln!(
                "lab: settings: capsule_on_disk_supported {}",
                r["settings"]["capsule_on_disk_supported"]
            );
            r["components"][0]["message"].as_str().unwrap().to_owned()
        }
        _ => ev.msg.clone().unwrap_or_default(),
    };
    eprintln!("lab: capsule plan under OVMF: {plan}");

    // Garbage is refused before anything is staged.
    let junk = std::fs::read(www.join("junk.cap")).unwrap();
    let ev = run_task(
        &client,
        &id,
        json!({"components": [component("junk.cap", &junk)]}),
    )
    .await;
    assert_eq!(ev.state, TaskPhase::Error, "{ev:?}");
    let msg = ev.msg.clone().unwrap_or_default();
    assert!(
        msg.contains("bad_package: capsule: CapsuleImageSize"),
        "{msg}"
    );

    let ev = run_task(
        &client,
        &id,
        json!({"components": [component("fw.cap", &cap)]}),
    )
    .await;
    if plan.contains("would stage by capsule_on_disk") {
        assert_eq!(ev.state, TaskPhase::Complete, "{ev:?}");
        let r = ev.result.clone().unwrap();
        assert_eq!(r["components"][0]["action"], "updated", "{r}");
        assert_eq!(r["components"][0]["reboot"], true);
        assert_eq!(r["reboot_required"], true);
        let m = r["components"][0]["message"].as_str().unwrap();
        assert!(m.starts_with("staged by capsule_on_disk"), "{m}");
        // After the VM stops, the capsule is on the ESP of the disk image.
        vm.kill();
        let at = format!("{}@@{ESP_OFFSET}", disk.display());
        let back = tool(&["mtype", "-i", &at, "::/EFI/UpdateCapsule/molar-bios.cap"]);
        assert!(
            back == cap,
            "the staged capsule differs ({} bytes)",
            back.len()
        );
        tool(&["mdir", "-i", &at, "::/EFI"]);
    } else if plan.contains("would stage by capsule_loader") {
        match ev.state {
            TaskPhase::Complete => {
                let r = ev.result.clone().unwrap();
                assert_eq!(r["components"][0]["action"], "updated", "{r}");
                assert_eq!(r["reboot_required"], true);
                eprintln!("lab: OVMF took the capsule through /dev/efi_capsule_loader");
            }
            _ => {
                assert_eq!(ev.code.as_deref(), Some("firmware_not_secure"), "{ev:?}");
                let msg = ev.msg.clone().unwrap_or_default();
                assert!(msg.contains("capsule_refused"), "{msg}");
                eprintln!("lab: OVMF refused the capsule through the loader: {msg}");
                nothing_on_the_esp(&mut vm, &disk);
            }
        }
    } else {
        assert!(plan.contains("no capsule delivery"), "{plan}");
        assert_eq!(ev.state, TaskPhase::Error, "{ev:?}");
        let msg = ev.msg.clone().unwrap_or_default();
        assert!(msg.contains("capsule_not_deliverable"), "{msg}");
        nothing_on_the_esp(&mut vm, &disk);
    }
}
