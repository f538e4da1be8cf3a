//! `qc-bench`: the burn-in's speed against simple baselines measured in the same run (the
//! README's figures):
//! - memory: the pattern write/verify of `decom.qc`'s memory burn-in over a locked region,
//!   against a plain `memcpy` (`copy_from_slice`) of the same size; both as bytes moved
//!   (written + read) per second, and their ratio;
//! - disk: the burn-in's O_DIRECT sequential read of a loop device over a temp file,
//!   against `dd if=LOOP of=/dev/null bs=4M iflag=direct`, and the read with its digest
//!   (what `verify` costs on each of the two reads).
//!
//! Needs root and losetup for the disk part (skipped otherwise). Build in release:
//! `cargo build --release -p molar-tests --bin qc-bench`, then `target/release/qc-bench`
//! (`QC_BENCH_MEM_MIB` sets the memory size, default 512; `QC_BENCH_DISK_MIB` the loop
//! device's, default 1024).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use molar_agent::burnin::{disk, memory};
use molar_tests::privileged::LoopDevice;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

fn env_mib(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Best of three: bytes moved per second by a plain copy of `bytes` into another buffer.
fn memcpy_mb_s(bytes: usize) -> f64 {
    let src: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let mut dst = vec![0u64; bytes / 8];
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        let s = t.elapsed().as_secs_f64();
        best = best.max(2.0 * bytes as f64 / s / 1e6);
    }
    best
}

fn memory_part() -> Result<(f64, f64, bool)> {
    let bytes = env_mib("QC_BENCH_MEM_MIB", 512) * MIB;
    let base = memcpy_mb_s(bytes as usize);
    let mut region = memory::Region::new(bytes).context("mapping the region")?;
    let out = memory::run(
        region.words_mut(),
        memory::Until::Passes(1),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .context("cancelled")?;
    if out.errors != 0 {
        bail!("{} memory errors during the benchmark", out.errors);
    }
    let burnin = out.bytes_moved as f64 / out.seconds / 1e6;
    Ok((burnin, base, region.locked))
}

fn dd_mb_s(dev: &str, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("dd")
        .args([
            &format!("if={dev}"),
            "of=/dev/null",
            "bs=4M",
            "iflag=direct",
            "status=none",
        ])
        .output()
        .context("running dd")?;
    if !out.status.success() {
        bail!("dd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e6)
}

fn molar_mb_s(dev: &std::path::Path, digest: bool) -> Result<f64> {
    let f = disk::open(dev)?;
    let size = disk::size_of(&f)?;
    let p = disk::read_pass(
        &f,
        size,
        None,
        digest,
        &CancellationToken::new(),
        &mut |_| {},
    )?;
    Ok(p.bytes as f64 / p.elapsed.as_secs_f64() / 1e6)
}

fn main() -> Result<()> {
    let (burnin, base, locked) = memory_part()?;
    println!(
        "memory: burn-in {burnin:.0} MB/s ({}), memcpy {base:.0} MB/s, ratio {:.2}",
        if locked { "locked" } else { "not locked" },
        burnin / base
    );
    if !molar_tests::privileged::require_root_and_losetup("qc-bench disk") {
        return Ok(());
    }
    let bytes = env_mib("QC_BENCH_DISK_MIB", 1024) * MIB;
    let dev = LoopDevice::new(bytes);
    let (mut m, mut d, mut v) = (0f64, 0f64, 0f64);
    // Alternated, best of three each: neither tool gets a warmer device.
    for _ in 0..3 {
        d = d.max(dd_mb_s(&dev.name(), bytes)?);
        m = m.max(molar_mb_s(&dev.dev, false)?);
        v = v.max(molar_mb_s(&dev.dev, true)?);
    }
    println!(
        "disk ({} MiB loop, direct): burn-in read {m:.0} MB/s, dd bs=4M iflag=direct {d:.0} MB/s, \
         ratio {:.2}; with verify digest {v:.0} MB/s",
        bytes / MIB,
        m / d
    );
    Ok(())
}
