//! `molar-agent configdrive write` on a loop device, as an operator runs it: a GPT image
//! smaller than the device is written to it first, then the config drive goes at the real
//! end; the backing file is read back by mtools (by offset) and checked by `sgdisk -v`.
//! Without `--allow-host` the same command is refused and the device left as it was. Needs
//! root, loop devices, sfdisk, sgdisk and mtools (CI installs them with scripts/install-deps).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::bins::bin;
use molar_tests::privileged::{LoopDevice, require_root_and_losetup};
use std::io::Write;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

fn tools_present(test: &str) -> bool {
    for tool in ["sfdisk", "sgdisk", "mtype"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {tool} is missing (scripts/install-deps)"
            );
            eprintln!("skipping {test}: needs {tool}");
            return false;
        }
    }
    true
}

/// A 32 MiB GPT disk image with partitions 1 and 3, as a deployed image would be.
fn small_gpt_image() -> Vec<u8> {
    let img = tempfile::Builder::new().suffix(".img").tempfile().unwrap();
    img.as_file().set_len(32 * MIB).unwrap();
    let p = img.path().display().to_string();
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel", &p])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    write!(
        child.stdin.take().unwrap(),
        "label: gpt\n{p}1 : start=2048, size=8192, name=root\n{p}3 : start=12288, size=4096\n"
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read(img.path()).unwrap()
}

#[test]
fn configdrive_write_on_a_loop_device() {
    let test = "configdrive_write_on_a_loop_device";
    if !require_root_and_losetup(test) || !tools_present(test) {
        return;
    }
    let dev = LoopDevice::new(128 * MIB);
    {
        let mut d = std::fs::OpenOptions::new()
            .write(true)
            .open(&dev.dev)
            .unwrap();
        d.write_all(&small_gpt_image()).unwrap();
        d.sync_all().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("cd.json");
    std::fs::write(
        &from,
        r##"{"meta_data": {"uuid": "u-42", "hostname": "loop"}, "user_data": "#cloud-config\n"}"##,
    )
    .unwrap();

    // Not named with --allow-host: refused, nothing written.
    let before = std::fs::read(dev.backing.path()).unwrap();
    let out = Command::new(bin("molar-agent"))
        .args([
            "configdrive",
            "write",
            "--device",
            &dev.name(),
            "--yes",
            "--from",
        ])
        .arg(&from)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("--allow-host"),
        "{err}"
    );
    assert!(std::fs::read(dev.backing.path()).unwrap() == before);

    let out = Command::new(bin("molar-agent"))
        .args([
            "configdrive",
            "write",
            "--device",
            &dev.name(),
            "--allow-host",
            "--yes",
        ])
        .arg("--from")
        .arg(&from)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["partition_number"], 2, "{o}");
    assert_eq!(o["format"], "vfat");
    assert_eq!(o["reused"], false);
    // A loop device attached without partscan refuses BLKRRPART: a note, not a failure.
    let notes = o["notes"].to_string();
    assert!(notes.contains("did not re-read the partition table"), "{o}");
    let start = o["start_bytes"].as_u64().unwrap();
    assert_eq!(start + o["size_bytes"].as_u64().unwrap(), 127 * MIB);

    let backing = dev.backing.path().display().to_string();
    let v = Command::new("sgdisk")
        .args(["-v", &backing])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.contains("No problems found"), "{v}");
    let meta = Command::new("mtype")
        .args([
            "-i",
            &format!("{backing}@@{start}"),
            "::/openstack/latest/meta_data.json",
        ])
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(meta["uuid"], "u-42");

    // Again: the config-2 partition is found and rewritten in place.
    let out = Command::new(bin("molar-agent"))
        .args([
            "configdrive",
            "write",
            "--device",
            &dev.name(),
            "--allow-host",
            "--yes",
        ])
        .args(["--format", "iso9660", "--from"])
        .arg(&from)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["start_bytes"], o["start_bytes"]);
    assert_eq!(again["format"], "iso9660");
}
