//! Disk burn-in on a host, over loop devices (root and losetup; skipped with a reason
//! outside CI): the named device is read with O_DIRECT, its throughput judged and its two
//! reads compared; a device not named with `--allow-host` is not read; nothing is written
//! (the backing file's digest is unchanged).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::authority::Authority;
use molar_agent::burnin::{Env, run};
use molar_protocol::burnin::Burnin;
use molar_tests::privileged::{LoopDevice, require_root_and_losetup};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio_util::sync::CancellationToken;

fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn disk_burnin_reads_a_named_loop_device_verifies_it_and_never_writes() {
    if !require_root_and_losetup(
        "disk_burnin_reads_a_named_loop_device_verifies_it_and_never_writes",
    ) {
        return;
    }
    let named = LoopDevice::new(64 << 20);
    let other = LoopDevice::new(8 << 20);
    let before = digest(named.backing.path());
    let name = named.dev.file_name().unwrap().to_str().unwrap().to_owned();
    let other_name = other.dev.file_name().unwrap().to_str().unwrap().to_owned();
    let root = Path::new("/");
    let inv = molar_agent::inventory::collect(
        root,
        &molar_agent::inventory::CollectOptions {
            filesystem_signatures: false,
            nvme_identify: false,
        },
    );
    let b: Burnin = serde_json::from_value(json!({"disks": {
        "seconds": 30, "verify": true, "min_mb_s": 1.0,
        "devices": [name.clone(), other_name.clone()]}}))
    .unwrap();
    b.validate().unwrap();
    let authority = Authority::host(&[named.name()], false);
    let env = Env {
        root,
        authority: &authority,
        inv: &inv,
    };
    let (checks, report) = run(&env, &b, &CancellationToken::new(), &|_, _, _| {}).unwrap();
    let by_name = |n: &str| checks.iter().find(|c| c.name == n).unwrap();
    let read = by_name(&format!("burnin.disks[{name}]"));
    assert!(read.pass, "{read:?}");
    let verify = by_name(&format!("burnin.disks[{name}].verify"));
    assert!(verify.pass, "{verify:?}");
    assert_eq!(verify.actual, "identical (64.0 MiB)");
    let refused = by_name(&format!("burnin.disks[{other_name}]"));
    assert!(!refused.pass);
    assert!(refused.actual.contains("--allow-host"), "{refused:?}");
    let d = &report.disks[0];
    assert_eq!(d.name, name);
    assert_eq!(d.bytes_read, 64 << 20);
    assert!(d.mb_s > 1.0, "{d:?}");
    assert_eq!(d.verified, Some(true));
    assert_eq!(report.disks.len(), 1, "the refused device is not read");
    eprintln!("disk burn-in of {name}: {:.0} MB/s", d.mb_s);
    // Read-only: the device's content is what it was.
    assert_eq!(digest(named.backing.path()), before);

    // An impossible minimum fails the read check with the measured rate.
    let fast: Burnin = serde_json::from_value(json!({"disks": {
        "bytes": 8 << 20, "min_mb_s": 1_000_000.0, "devices": [name.clone()]}}))
    .unwrap();
    let (checks, _) = run(&env, &fast, &CancellationToken::new(), &|_, _, _| {}).unwrap();
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].pass);
    assert!(checks[0].actual.ends_with(" s"), "{:?}", checks[0]);
    assert!(
        checks[0].expected.ends_with("at least 1000000 MB/s"),
        "{:?}",
        checks[0]
    );
}
