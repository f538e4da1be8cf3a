//! `image-bench`: molar's image writer against the shell pipelines it replaces, over
//! loopback HTTP onto a loop device with direct I/O, in one run (the README's figures):
//! - a zstd raw image: `molar-agent image write` against
//!   `curl -s URL | zstd -d | dd of=DEV bs=4M oflag=direct`;
//! - the same content as a compressed qcow2 (`qemu-img convert -c`): molar against
//!   `curl -o FILE URL && qemu-img convert -O raw FILE DEV` (the reference agent's way);
//! - molar's peak RSS (the child's `ru_maxrss` from `wait4`) writing a 1 GiB and a 4 GiB
//!   image: it must not grow with the size.
//!
//! Needs root, losetup, curl, zstd and qemu-img. Build in release next to `molar-agent`:
//! `cargo build --release -p molar-agent -p molar-tests --bin molar-agent --bin image-bench`,
//! then `target/release/image-bench` (`IMAGE_BENCH_GIB` sets the main size, default 2;
//! `IMAGE_BENCH_RSS_GIB` the two RSS sizes, default `1,4`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use molar_tests::lab::HttpFiles;
use molar_tests::privileged::{LoopDevice, require_root_and_losetup};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// A disk-like raw image: a third of its MiBs zero (free space), the rest bytes from a
/// 16-letter alphabet (compresses about 2:1, like binaries and text).
fn make_raw(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; MIB as usize];
    for i in 0..bytes / MIB {
        if i % 3 == 2 {
            block.fill(0);
        } else {
            for w in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = x & 0x0f0f_0f0f_0f0f_0f0f;
                w.copy_from_slice(&(v | 0x4040_4040_4040_4040).to_ne_bytes());
            }
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

fn sh(cmd: &str) -> Result<f64> {
    let t0 = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("{cmd}: {st}");
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().context("sha256sum output")?;
    Ok(format!("sha256:{hex}"))
}

/// Runs `molar-agent image write`; (seconds, peak RSS in bytes).
fn molar_write(agent: &Path, url: &str, checksum: &str, dev: &str) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let child = Command::new(agent)
        .args(["image", "write", "--url", url, "--checksum", checksum])
        .args(["--device", dev, "--allow-host", "--yes"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t0.elapsed().as_secs_f64();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("molar-agent image write failed (status {status})");
    }
    std::mem::forget(child); // reaped by wait4
    Ok((secs, usage.ru_maxrss as u64 * 1024))
}

fn main() -> Result<()> {
    if !require_root_and_losetup("image-bench") {
        return Ok(());
    }
    let gib: f64 = std::env::var("IMAGE_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let rss_sizes: Vec<f64> = std::env::var("IMAGE_BENCH_RSS_GIB")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let agent: PathBuf = std::env::current_exe()?
        .parent()
        .context("bench directory")?
        .join("molar-agent");
    if !agent.exists() {
        bail!("{} not built next to image-bench", agent.display());
    }
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let d = dir.path();
    let bytes = ((gib * GIB) as u64).next_multiple_of(MIB);
    eprintln!("making a {gib} GiB image ...");
    make_raw(&d.join("a.raw"), bytes)?;
    sh(&format!(
        "zstd -q -T0 -3 -f {0}/a.raw -o {0}/a.raw.zst",
        d.display()
    ))?;
    sh(&format!(
        "qemu-img convert -c -f raw -O qcow2 {0}/a.raw {0}/a.qcow2",
        d.display()
    ))?;
    std::fs::remove_file(d.join("a.raw"))?;
    let zst_len = std::fs::metadata(d.join("a.raw.zst"))?.len();
    let q_len = std::fs::metadata(d.join("a.qcow2"))?.len();
    let http = HttpFiles::serve(d)?;
    let dev = LoopDevice::sparse(bytes + 64 * MIB);
    let devn = dev.name();
    let zst_sum = sha256_of(&d.join("a.raw.zst"))?;
    let q_sum = sha256_of(&d.join("a.qcow2"))?;

    eprintln!("zstd raw: molar ...");
    let (molar_zst, rss_main) = molar_write(&agent, &http.url("a.raw.zst"), &zst_sum, &devn)?;
    eprintln!("zstd raw: curl | zstd -d | dd ...");
    let dd = sh(&format!(
        "curl -s {} | zstd -q -d | dd of={devn} bs=4M oflag=direct status=none",
        http.url("a.raw.zst")
    ))?;
    eprintln!("compressed qcow2: molar ...");
    let (molar_q, _) = molar_write(&agent, &http.url("a.qcow2"), &q_sum, &devn)?;
    eprintln!("compressed qcow2: curl -o && qemu-img convert ...");
    let qi = sh(&format!(
        "curl -s -o {0}/dl.qcow2 {1} && qemu-img convert -n -f qcow2 -O raw {0}/dl.qcow2 {devn}",
        d.display(),
        http.url("a.qcow2")
    ))?;
    let _ = std::fs::remove_file(d.join("dl.qcow2"));
    drop(dev);
    std::fs::remove_file(d.join("a.qcow2"))?;
    std::fs::remove_file(d.join("a.raw.zst"))?;

    let mut rss = Vec::new();
    for s in &rss_sizes {
        let b = ((s * GIB) as u64).next_multiple_of(MIB);
        eprintln!("peak RSS at {s} GiB ...");
        make_raw(&d.join("r.raw"), b)?;
        sh(&format!(
            "zstd -q -T0 -1 -f --rm {0}/r.raw -o {0}/r.raw.zst",
            d.display()
        ))?;
        let sum = sha256_of(&d.join("r.raw.zst"))?;
        let dev = LoopDevice::sparse(b + 64 * MIB);
        let (secs, peak) = molar_write(&agent, &http.url("r.raw.zst"), &sum, &dev.name())?;
        rss.push((*s, peak, secs));
        std::fs::remove_file(d.join("r.raw.zst"))?;
    }

    let gbs = |secs: f64| bytes as f64 / secs / 1e9;
    println!("image-bench: {gib} GiB disk image over loopback HTTP to a loop device (direct I/O)");
    println!(
        "  zstd raw ({:.2} GiB file):   molar {molar_zst:.2} s ({:.2} GB/s), curl|zstd|dd {dd:.2} s ({:.2} GB/s): {:.2}x",
        zst_len as f64 / GIB,
        gbs(molar_zst),
        gbs(dd),
        dd / molar_zst
    );
    println!(
        "  compressed qcow2 ({:.2} GiB): molar {molar_q:.2} s ({:.2} GB/s), curl -o && qemu-img convert {qi:.2} s: {:.2}x",
        q_len as f64 / GIB,
        gbs(molar_q),
        qi / molar_q
    );
    println!(
        "  molar peak RSS: {:.1} MiB at {gib} GiB",
        rss_main as f64 / MIB as f64
    );
    for (s, peak, secs) in &rss {
        println!(
            "  molar peak RSS: {:.1} MiB at {s} GiB ({secs:.2} s)",
            *peak as f64 / MIB as f64
        );
    }
    Ok(())
}
