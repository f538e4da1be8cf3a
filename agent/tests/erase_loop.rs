//! Privileged erase tests on loop devices over temp files.
//!
//! Each loop device is created by the test over its own temp file and detached by a drop
//! guard whatever happens (panics included). Outside CI the tests skip with a printed reason
//! when not root or without `losetup`; with `CI=true` a missing prerequisite fails.
//! Mounting happens only inside a private `unshare -m` namespace: the mounted-device test
//! re-runs this test binary there as a helper.

// Test helpers: a failed setup step should abort the test loudly.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molar_agent::erase::{self, DeviceOutcome, EraseEnv, EraseMethod, EraseRequest, ErasedWith};
use molar_agent::safety::Authority;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// True when loop devices can be used; otherwise skip (or fail in CI) with the reason.
fn prerequisites(test: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if Command::new("losetup").arg("--version").output().is_err() {
        Some("losetup not found")
    } else if !Path::new("/dev/loop-control").exists() {
        Some("no /dev/loop-control")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if in_ci() => panic!("{test}: prerequisite missing in CI: {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// A loop device over a temp file; detached on drop.
struct LoopDev {
    dev: String,
    backing: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl LoopDev {
    /// `size` bytes of random data (so an erase has something to remove).
    fn new(size: u64) -> LoopDev {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        let mut f = File::create(&backing).unwrap();
        let mut chunk = vec![0u8; MIB as usize];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..size / MIB {
            for b in chunk.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.copy_from_slice(&seed.to_le_bytes()[..b.len()]);
            }
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let dev = attach(&backing, true);
        LoopDev {
            dev,
            backing,
            _dir: Some(dir),
        }
    }
}

fn attach(file: &Path, direct: bool) -> String {
    let mut cmd = Command::new("losetup");
    cmd.args(["-f", "--show"]);
    if direct {
        cmd.arg("--direct-io=on");
    }
    let out = cmd.arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn host_env(allowed: &[&LoopDev]) -> EraseEnv {
    EraseEnv::new(
        "/",
        Authority::Host {
            allowed: allowed.iter().map(|l| l.dev.clone()).collect(),
        },
    )
}

fn request(devs: &[&LoopDev], method: EraseMethod) -> EraseRequest {
    EraseRequest {
        devices: Some(devs.iter().map(|l| l.dev.clone()).collect()),
        method,
        ..Default::default()
    }
}

/// Offset of the first non-zero byte of the file in [from, to), if any.
fn first_nonzero(path: &Path, from: u64, to: u64) -> Option<u64> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = from;
    while off < to {
        let n = (to - off).min(MIB) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

#[test]
fn overwrite_and_discard_leave_all_zeros() {
    if !prerequisites("overwrite_and_discard_leave_all_zeros") {
        return;
    }
    let a = LoopDev::new(64 * MIB);
    let b = LoopDev::new(64 * MIB);
    let env = host_env(&[&a, &b]);
    let last_done = AtomicU64::new(0);
    let monotonic = std::sync::atomic::AtomicBool::new(true);
    let mut req = request(&[&a], EraseMethod::Overwrite);
    req.passes = 2; // random, then zeros
    let r = erase::run(
        &req,
        &env,
        &|p| {
            if p.bytes_done < last_done.swap(p.bytes_done, Ordering::Relaxed) {
                monotonic.store(false, Ordering::Relaxed);
            }
        },
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.erased, 1, "{r:#?}");
    let d = &r.devices[0];
    assert_eq!(d.method, Some(ErasedWith::Overwrite));
    assert_eq!(d.bytes_done, 2 * 64 * MIB);
    assert!(d.verification.as_ref().unwrap().passed);
    assert!(d.verification.as_ref().unwrap().blocks_checked > 256);
    assert!(d.throughput > 0.0);
    assert!(monotonic.load(Ordering::Relaxed));
    assert_eq!(last_done.load(Ordering::Relaxed), 2 * 64 * MIB);
    assert_eq!(first_nonzero(&a.backing, 0, file_len(&a.backing)), None);

    let r = erase::run(
        &request(&[&b], EraseMethod::Discard),
        &env,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.erased, 1, "{r:#?}");
    assert_eq!(r.devices[0].method, Some(ErasedWith::Discard));
    assert_eq!(first_nonzero(&b.backing, 0, file_len(&b.backing)), None);
}

#[test]
fn auto_on_a_loop_device_falls_back_and_ends_zeroed() {
    if !prerequisites("auto_on_a_loop_device_falls_back_and_ends_zeroed") {
        return;
    }
    let a = LoopDev::new(32 * MIB);
    let r = erase::run(
        &request(&[&a], EraseMethod::Auto),
        &host_env(&[&a]),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.erased, 1, "{r:#?}");
    assert_eq!(first_nonzero(&a.backing, 0, file_len(&a.backing)), None);
    // BLKSECDISCARD is not supported by loop: the note says what was tried.
    assert!(
        r.devices[0]
            .notes
            .iter()
            .any(|n| n.contains("secure discard")),
        "{r:#?}"
    );
}

#[test]
fn metadata_wipe_removes_signatures_at_both_ends() {
    if !prerequisites("metadata_wipe_removes_signatures_at_both_ends") {
        return;
    }
    let a = LoopDev::new(64 * MIB);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", &a.dev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        // MBR boot signature, GPT headers at LBA 1 and the last LBA, an md 0.90 magic in
        // the last 64 KiB.
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&a.dev)
            .unwrap();
        let mut sector = AlignedSector::new();
        sector.0[510] = 0x55;
        sector.0[511] = 0xaa;
        f.write_all_at(sector.get(), 0).unwrap();
        let mut gpt = AlignedSector::new();
        gpt.0[..8].copy_from_slice(b"EFI PART");
        f.write_all_at(gpt.get(), 4096).unwrap();
        f.write_all_at(gpt.get(), 64 * MIB - 4096).unwrap();
        let mut md = AlignedSector::new();
        md.0[..4].copy_from_slice(&0xa92b4efcu32.to_le_bytes());
        f.write_all_at(md.get(), 64 * MIB - 64 * 1024).unwrap();
        f.sync_all().unwrap();
    }
    let blkid = |p: &Path| {
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(p)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let found = blkid(&a.backing);
    assert!(found == "ext4" || found == "linux_raid_member", "{found}");
    let r = erase::run(
        &request(&[&a], EraseMethod::Metadata),
        &host_env(&[&a]),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.erased, 1, "{r:#?}");
    assert_eq!(r.devices[0].method, Some(ErasedWith::Metadata));
    assert!(r.devices[0].verification.as_ref().unwrap().passed);
    assert_eq!(blkid(&a.backing), "");
    // Head (16 MiB) and tail (2 MiB) are zero; the middle is left alone (express wipe).
    assert_eq!(first_nonzero(&a.backing, 0, 16 * MIB), None);
    assert_eq!(first_nonzero(&a.backing, 62 * MIB, 64 * MIB), None);
    assert!(first_nonzero(&a.backing, 16 * MIB, 62 * MIB).is_some());
}

/// A 4 KiB aligned block for O_DIRECT writes in tests.
#[repr(C, align(4096))]
struct AlignedSector([u8; 4096]);
impl AlignedSector {
    fn new() -> Box<AlignedSector> {
        Box::new(AlignedSector([0u8; 4096]))
    }
    fn get(&self) -> &[u8] {
        &self.0
    }
}

#[test]
fn cancellation_stops_promptly_and_reports_progress() {
    if !prerequisites("cancellation_stops_promptly_and_reports_progress") {
        return;
    }
    let a = LoopDev::new(256 * MIB);
    let b = LoopDev::new(256 * MIB);
    let cancel = CancellationToken::new();
    let mut req = request(&[&a, &b], EraseMethod::Overwrite);
    req.passes = 4;
    let mut env = host_env(&[&a, &b]);
    env.progress_interval = Duration::from_millis(20);
    let cancelled_at = std::sync::Mutex::new(None);
    let t0 = Instant::now();
    let r = erase::run(
        &req,
        &env,
        &|p| {
            if p.bytes_done > 32 * MIB && !cancel.is_cancelled() {
                cancel.cancel();
                *cancelled_at.lock().unwrap() = Some(Instant::now());
            }
        },
        &cancel,
    )
    .unwrap();
    let stopped_after = cancelled_at.lock().unwrap().unwrap().elapsed();
    assert!(stopped_after < Duration::from_secs(3), "{stopped_after:?}");
    assert!(r.cancelled);
    for d in &r.devices {
        assert_eq!(d.outcome, DeviceOutcome::Cancelled, "{d:#?}");
        assert!(d.bytes_done < 4 * 256 * MIB);
        let e = d.error.as_ref().unwrap();
        assert_eq!(e.code, "cancelled");
        assert!(
            e.msg.contains(&format!("of {} bytes", 4 * 256 * MIB)),
            "{}",
            e.msg
        );
    }
    assert!(r.devices.iter().map(|d| d.bytes_done).sum::<u64>() > 32 * MIB);
    eprintln!("cancelled run took {:?}", t0.elapsed());
}

/// A loop device whose backing file lives on a 24 MiB tmpfs but claims 96 MiB: writes past
/// the tmpfs capacity fail. The tmpfs is mounted in a private namespace of a short-lived
/// `unshare -m` shell; the loop device keeps the file (and so the tmpfs) alive.
fn failing_loop() -> Option<LoopDev> {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=24m molar-erase-test {d} && truncate -s 96M {d}/f && \
         losetup -f --show {d}/f",
        d = dir.path().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "cannot build a failing device: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let dev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    Some(LoopDev {
        dev,
        backing: PathBuf::new(),
        _dir: Some(dir),
    })
}

#[test]
fn a_failing_device_fails_alone_with_a_clear_message() {
    if !prerequisites("a_failing_device_fails_alone_with_a_clear_message") {
        return;
    }
    let good = LoopDev::new(64 * MIB);
    let Some(bad) = failing_loop() else {
        assert!(!in_ci(), "unshare/tmpfs unavailable in CI");
        return;
    };
    let r = erase::run(
        &request(&[&good, &bad], EraseMethod::Overwrite),
        &host_env(&[&good, &bad]),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!((r.erased, r.failed), (1, 1), "{r:#?}");
    let g = r.devices.iter().find(|d| d.device == good.dev).unwrap();
    assert_eq!(g.outcome, DeviceOutcome::Erased);
    assert_eq!(first_nonzero(&good.backing, 0, 64 * MIB), None);
    let b = r.devices.iter().find(|d| d.device == bad.dev).unwrap();
    assert_eq!(b.outcome, DeviceOutcome::Failed);
    let e = b.error.as_ref().unwrap();
    assert_eq!(e.code, "write_failed", "{e:?}");
    assert!(
        e.msg
            .starts_with(&format!("writing {} at offset ", bad.dev)),
        "{}",
        e.msg
    );
    eprintln!("failing device reported: {}", e.msg);
    // It got roughly as far as the tmpfs allowed.
    assert!(
        b.bytes_done >= 8 * MIB && b.bytes_done < 96 * MIB,
        "{}",
        b.bytes_done
    );
}

#[test]
fn devices_not_named_with_allow_host_are_refused() {
    if !prerequisites("devices_not_named_with_allow_host_are_refused") {
        return;
    }
    let a = LoopDev::new(16 * MIB);
    let b = LoopDev::new(16 * MIB);
    let before = fs::read(&b.backing).unwrap();
    let r = erase::run(
        &request(&[&a, &b], EraseMethod::Overwrite),
        &host_env(&[&a]),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.erased, 1);
    assert_eq!(r.devices.len(), 1);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].device, b.dev);
    assert_eq!(r.skipped[0].code, "not_allowed_on_host");
    assert!(r.skipped[0].reason.starts_with("skipped: "));
    assert_eq!(fs::read(&b.backing).unwrap(), before, "untouched");
    // With no allow list at all, nothing is touched.
    let r = erase::run(
        &request(&[&a], EraseMethod::Overwrite),
        &EraseEnv::new("/", Authority::Host { allowed: vec![] }),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert!(r.devices.is_empty());
}

const HELPER_ENV: &str = "MOLAR_ERASE_MOUNT_HELPER_DEV";

/// Runs inside `unshare -m` (started by `a_mounted_device_is_refused`): mounts the device,
/// asks for an erase, and checks it is refused both by the safety layer and by the kernel.
#[test]
fn mounted_helper() {
    let Ok(dev) = std::env::var(HELPER_ENV) else {
        return; // only meaningful as the helper
    };
    let mnt = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args([&dev, mnt.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "mount in the private namespace");
    let r = erase::run(
        &EraseRequest {
            devices: Some(vec![dev.clone()]),
            method: EraseMethod::Overwrite,
            ..Default::default()
        },
        &EraseEnv::new(
            "/",
            Authority::Host {
                allowed: vec![dev.clone()],
            },
        ),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert!(r.devices.is_empty(), "{r:#?}");
    assert_eq!(r.skipped[0].code, "mounted");
    assert!(r.skipped[0].reason.contains(mnt.path().to_str().unwrap()));
    // The kernel's own refusal backs the safety layer up.
    let e = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let _ = Command::new("umount").arg(mnt.path()).status();
    println!("HELPER_OK {}", r.skipped[0].reason);
}

#[test]
fn a_mounted_device_is_refused() {
    if !prerequisites("a_mounted_device_is_refused") {
        return;
    }
    let a = LoopDev::new(32 * MIB);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", &a.dev])
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = fs::read(&a.backing).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(&exe)
        .args([
            "--exact",
            "mounted_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &a.dev)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HELPER_OK"),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("HELPER_OK"))
            .unwrap_or("")
    );
    // Only the (unchanged) filesystem's own mount bookkeeping may differ: the ext4
    // superblock is still there and nothing was zeroed.
    let after = fs::read(&a.backing).unwrap();
    assert_eq!(
        &after[1024 + 56..1024 + 58],
        &[0x53, 0xef],
        "ext4 magic intact"
    );
    let differing = before
        .chunks(4096)
        .zip(after.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    assert!(differing < 64, "{differing} blocks changed");
}

#[test]
fn a_device_held_exclusively_elsewhere_fails_as_busy() {
    if !prerequisites("a_device_held_exclusively_elsewhere_fails_as_busy") {
        return;
    }
    let a = LoopDev::new(16 * MIB);
    let before = fs::read(&a.backing).unwrap();
    // What a mount or a dm/md table would do: claim the device exclusively.
    let _claim = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&a.dev)
        .unwrap();
    let r = erase::run(
        &request(&[&a], EraseMethod::Overwrite),
        &host_env(&[&a]),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(r.failed, 1);
    let e = r.devices[0].error.as_ref().unwrap();
    assert_eq!(e.code, "device_busy");
    assert!(e.msg.contains("device is busy"), "{}", e.msg);
    assert_eq!(fs::read(&a.backing).unwrap(), before, "untouched");
}
