//! Erase throughput benchmark on loop devices with direct I/O (DESIGN.md performance
//! targets): molar's overwrite against `dd if=/dev/zero of=DEV bs=4M oflag=direct` on the
//! same device (target ratio ≥ 0.95), and four devices in parallel against one.
//!
//! Needs root and `losetup`; otherwise prints why and exits successfully. Size per device:
//! `MOLAR_BENCH_SIZE_MIB` (default 1024). Run with `cargo bench -p molar-agent --bench
//! erase_bench`.

// A benchmark: a failed setup step should abort loudly.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use molar_agent::erase::{self, EraseEnv, EraseMethod, EraseRequest};
use molar_agent::safety::Authority;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

struct LoopDev {
    dev: String,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn new(size: u64) -> LoopDev {
        let dir =
            tempfile::tempdir_in(std::env::var("MOLAR_BENCH_DIR").unwrap_or("/var/tmp".into()))
                .unwrap();
        let path = dir.path().join("disk.img");
        // Fully written, so neither contender pays for allocating the backing file.
        let mut f = File::create(&path).unwrap();
        let buf = vec![0xa5u8; 4 * MIB as usize];
        for _ in 0..size / (4 * MIB) {
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDev {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            _dir: dir,
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn dd(devs: &[&LoopDev], size: u64) -> Duration {
    let t0 = Instant::now();
    let children: Vec<_> = devs
        .iter()
        .map(|d| {
            Command::new("dd")
                .args([
                    "if=/dev/zero",
                    &format!("of={}", d.dev),
                    "bs=4M",
                    "oflag=direct",
                    &format!("count={}", size / (4 * MIB)),
                    "status=none",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    t0.elapsed()
}

fn molar(devs: &[&LoopDev]) -> Duration {
    let env = EraseEnv::new(
        "/",
        Authority::Host {
            allowed: devs.iter().map(|d| d.dev.clone()).collect(),
        },
    );
    let req = EraseRequest {
        devices: Some(devs.iter().map(|d| d.dev.clone()).collect()),
        method: EraseMethod::Overwrite,
        verify: false,
        ..Default::default()
    };
    let t0 = Instant::now();
    let r = erase::run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap();
    let t = t0.elapsed();
    assert_eq!(r.erased as usize, devs.len(), "{r:#?}");
    t
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64()
}

fn best(mut f: impl FnMut() -> Duration, rounds: usize) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap()
}

fn backing_fs() -> String {
    let dir: PathBuf = std::env::var("MOLAR_BENCH_DIR")
        .unwrap_or("/var/tmp".into())
        .into();
    Command::new("findmnt")
        .args(["-no", "FSTYPE,SOURCE", "-T"])
        .arg(Path::new(&dir))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() {
    if !nix::unistd::geteuid().is_root()
        || Command::new("losetup").arg("--version").output().is_err()
    {
        println!("erase_bench: skipped (needs root and losetup for loop devices)");
        return;
    }
    let size: u64 = std::env::var("MOLAR_BENCH_SIZE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
        * MIB;
    let rounds = 3;
    println!(
        "erase_bench: loop devices (direct I/O) of {} MiB over files on {}, {} cpus",
        size / MIB,
        backing_fs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. One device: molar overwrite vs dd, alternating, best of `rounds` each.
    let a = LoopDev::new(size);
    dd(&[&a], size); // warm-up
    let mut t_dd = Duration::MAX;
    let mut t_molar = Duration::MAX;
    for _ in 0..rounds {
        t_dd = t_dd.min(dd(&[&a], size));
        t_molar = t_molar.min(molar(&[&a]));
    }
    let ratio = t_dd.as_secs_f64() / t_molar.as_secs_f64();
    println!(
        "single device: dd {:.0} MiB/s, molar overwrite {:.0} MiB/s, ratio {:.2} (target >= 0.95)",
        mbps(size, t_dd),
        mbps(size, t_molar),
        ratio
    );

    // 2. Four devices in parallel vs one.
    let b = LoopDev::new(size);
    let c = LoopDev::new(size);
    let d = LoopDev::new(size);
    let four = [&a, &b, &c, &d];
    molar(&four); // warm-up
    let t4 = best(|| molar(&four), rounds);
    let t4_dd = best(|| dd(&four, size), rounds);
    let one = mbps(size, t_molar);
    let agg = mbps(4 * size, t4);
    println!(
        "four devices: molar {:.0} MiB/s aggregate ({:.2}x one device), 4 parallel dd {:.0} MiB/s aggregate ({:.2}x)",
        agg,
        agg / one,
        mbps(4 * size, t4_dd),
        mbps(4 * size, t4_dd) / mbps(size, t_dd),
    );
    println!(
        "four devices share one backing filesystem and disk: when parallel dd scales no \
         better than molar, the limit is the backing storage (and the shared CPUs doing the \
         loop I/O), not the erase engine"
    );
}
