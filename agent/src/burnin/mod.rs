//! `decom.qc`'s burn-in, in the agent and without external tools: memory patterns over
//! locked memory ([`memory`]), every CPU busy on checked work ([`cpu`]), direct sequential
//! reads of the disks with their health logs ([`disk`], read-only), NIC carrier and speed
//! ([`nic`]); hardware error counters before and after ([`counters`]).
//!
//! [`run`] produces `burnin.…` checks (merged into the QC report's checks by the caller)
//! and the numbers behind them. Parts run one after the other (memory and CPU together
//! would measure neither); progress is reported as a fraction of the estimated total time,
//! with an eta. A counter the machine does not expose is a note, never a pass or a fail.
//!
//! Which disks: those named in the settings, else every hardware disk of the inventory. On
//! a host (not the ramdisk) a disk is read only when named with `--allow-host`, like every
//! device action ([`crate::authority::Action::BurninRead`]), though this one only reads.

pub mod counters;
pub mod cpu;
pub mod disk;
pub mod memory;
pub mod nic;

use crate::authority::{Action, Authority, Device};
use molar_protocol::burnin::{
    Burnin, BurninReport, CpuResult, DiskBurnin, DiskResult, MAX_SHARE_PERCENT, MemoryBurnin,
    MemoryResult, throughput,
};
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{Check, is_hardware_disk};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The burn-in was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("burn-in cancelled")]
pub struct Cancelled;

/// Where the burn-in runs.
pub struct Env<'a> {
    pub root: &'a Path,
    pub authority: &'a Authority,
    /// The inventory just collected (disk transports, physical NICs).
    pub inv: &'a Inventory,
}

/// Progress sink: overall fraction done (0..=1), eta in seconds, what is running.
pub type Progress<'a> = &'a (dyn Fn(f64, Option<u64>, &str) + Sync);

/// Default share of MemAvailable tested.
const DEFAULT_SHARE_PERCENT: u8 = 50;
/// Rough speeds for estimating time of size-bound parts (the eta, not a judgement).
const EST_MEMORY_BYTES_PER_S: f64 = 2e9;
const EST_DISK_BYTES_PER_S: f64 = 200e6;

fn check(
    name: impl Into<String>,
    expected: impl Into<String>,
    actual: String,
    pass: bool,
) -> Check {
    Check {
        name: name.into(),
        expected: expected.into(),
        actual,
        pass,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

/// Tracks the overall fraction: parts with estimated durations, the current one's share.
struct Plan<'a> {
    estimates: Vec<f64>,
    current: usize,
    progress: Progress<'a>,
}

impl Plan<'_> {
    fn report(&self, frac: f64, what: &str) {
        let total: f64 = self.estimates.iter().sum::<f64>().max(1e-3);
        let before: f64 = self.estimates[..self.current].iter().sum();
        let cur = self.estimates.get(self.current).copied().unwrap_or(0.0);
        let frac = frac.clamp(0.0, 1.0);
        let done = before + cur * frac;
        let eta = (total - done).max(0.0).round() as u64;
        (self.progress)(done / total, Some(eta), what);
    }
    fn next(&mut self) {
        self.current += 1;
    }
}

/// Runs every part of `b` that is set. `b` must have passed [`Burnin::validate`].
pub fn run(
    env: &Env<'_>,
    b: &Burnin,
    cancel: &CancellationToken,
    progress: Progress<'_>,
) -> Result<(Vec<Check>, BurninReport), Cancelled> {
    let mut checks = Vec::new();
    let mut report = BurninReport::default();
    let mem_bytes = b.memory.as_ref().map(|m| memory_size(env.root, m));
    let disks = b.disks.as_ref().map(|d| select_disks(env, d));
    let mut estimates = Vec::new();
    if let (Some(m), Some(size)) = (&b.memory, &mem_bytes) {
        let per_pass = size
            .as_ref()
            .map_or(0.0, |s| *s as f64 * 10.0 / EST_MEMORY_BYTES_PER_S);
        estimates.push(match (m.seconds, m.passes) {
            (Some(s), _) => f64::from(s),
            (None, p) => per_pass * f64::from(p.unwrap_or(1)),
        });
    }
    if let Some(c) = &b.cpu {
        estimates.push(f64::from(c.seconds));
    }
    if let (Some(d), Some(list)) = (&b.disks, &disks) {
        let per = match (d.seconds, d.bytes) {
            (Some(s), _) => f64::from(s),
            (None, Some(by)) => by as f64 / EST_DISK_BYTES_PER_S,
            (None, None) => 0.0,
        };
        let reads = if d.verify { 2.0 } else { 1.0 };
        estimates.push(per * reads * list.iter().filter(|x| x.1.is_ok()).count() as f64);
    }
    let mut plan = Plan {
        estimates,
        current: 0,
        progress,
    };
    if let (Some(m), Some(size)) = (&b.memory, mem_bytes) {
        run_memory(env, m, size, cancel, &plan, &mut checks, &mut report)?;
        plan.next();
    }
    if let Some(c) = &b.cpu {
        run_cpu(env, c.seconds, cancel, &plan, &mut checks, &mut report)?;
        plan.next();
    }
    if let (Some(d), Some(list)) = (&b.disks, disks) {
        run_disks(env, d, list, cancel, &plan, &mut checks, &mut report)?;
        plan.next();
    }
    if let Some(n) = &b.nics {
        let names: Vec<String> = match &n.names {
            Some(names) => names.clone(),
            None => env
                .inv
                .nics
                .iter()
                .filter(|x| !x.virtual_device)
                .map(|x| x.name.clone())
                .collect(),
        };
        if names.is_empty() {
            checks.push(check(
                "burnin.nics",
                "at least one physical interface",
                "none".into(),
                false,
            ));
        }
        for name in names {
            let r = nic::read(env.root, &name);
            checks.push(nic::judge(&r, n));
            report.nics.push(r);
        }
    }
    plan.report(1.0, "burn-in done");
    Ok((checks, report))
}

/// Bytes of memory to test: the asked size or share of MemAvailable, never more than
/// [`MAX_SHARE_PERCENT`] of it. An error text when MemAvailable cannot be read.
fn memory_size(root: &Path, m: &MemoryBurnin) -> Result<u64, String> {
    let avail = counters::mem_available(root);
    let share = |a: u64, p: u8| (u128::from(a) * u128::from(p) / 100) as u64;
    let cap = avail.map(|a| share(a, MAX_SHARE_PERCENT));
    match (m.bytes, avail) {
        (Some(b), _) => Ok(cap.map_or(b, |c| b.min(c))),
        (None, Some(a)) => Ok(share(a, m.share_percent.unwrap_or(DEFAULT_SHARE_PERCENT))),
        (None, None) => Err("MemAvailable unreadable in /proc/meminfo".into()),
    }
}

fn run_memory(
    env: &Env<'_>,
    m: &MemoryBurnin,
    size: Result<u64, String>,
    cancel: &CancellationToken,
    plan: &Plan<'_>,
    checks: &mut Vec<Check>,
    report: &mut BurninReport,
) -> Result<(), Cancelled> {
    let expected = "0 errors";
    let size = match size {
        Ok(s) => s,
        Err(why) => {
            checks.push(check("burnin.memory", expected, why, false));
            return Ok(());
        }
    };
    plan.report(0.0, "memory burn-in: locking memory");
    let mut region = match memory::Region::new(size) {
        Ok(r) => r,
        Err(e) => {
            let actual = format!("mapping {} failed: {e}", mib(size));
            checks.push(check("burnin.memory", expected, actual, false));
            return Ok(());
        }
    };
    if let Some(e) = &region.lock_error {
        report.notes.push(format!(
            "memory: mlock of {} refused ({e}); tested unlocked, so pages may have been \
             swapped",
            mib(region.bytes())
        ));
    }
    let until = match m.seconds {
        Some(s) => memory::Until::Deadline(Instant::now() + Duration::from_secs(s.into())),
        None => memory::Until::Passes(m.passes.unwrap_or(1)),
    };
    let edac_before = counters::edac(env.root);
    let out = memory::run(region.words_mut(), until, cancel, &mut |f| {
        plan.report(f, "memory burn-in")
    })
    .ok_or(Cancelled)?;
    let edac_after = counters::edac(env.root);
    let mb_s = out.bytes_moved as f64 / out.seconds.max(1e-9) / 1e6;
    let locked = if region.locked {
        "locked"
    } else {
        "not locked"
    };
    checks.push(check(
        "burnin.memory",
        expected,
        format!(
            "{} errors, {} pass(es) of {} over {} ({locked}), {mb_s:.0} MB/s",
            out.errors,
            out.passes,
            out.patterns.join("/"),
            mib(region.bytes())
        ),
        out.errors == 0,
    ));
    match (edac_before, edac_after) {
        (Some(a), Some(b)) => checks.push(check(
            "burnin.memory.edac",
            "no new EDAC errors",
            format!("ce {} -> {}, ue {} -> {}", a.ce, b.ce, a.ue, b.ue),
            a.ce == b.ce && a.ue == b.ue,
        )),
        _ => report
            .notes
            .push("memory: no EDAC counters (no EDAC driver for this memory controller)".into()),
    }
    report.memory = Some(MemoryResult {
        bytes: region.bytes(),
        locked: region.locked,
        passes: out.passes,
        patterns: out.patterns,
        errors: out.errors,
        first_errors: out.kept,
        seconds: out.seconds,
        mb_s,
        edac_before,
        edac_after,
    });
    Ok(())
}

fn run_cpu(
    env: &Env<'_>,
    seconds: u32,
    cancel: &CancellationToken,
    plan: &Plan<'_>,
    checks: &mut Vec<Check>,
    report: &mut BurninReport,
) -> Result<(), Cancelled> {
    let cpus = counters::online_cpus(env.root).unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    });
    let mce_before = counters::machine_checks(env.root);
    let throttle_before = counters::throttle(env.root);
    let start = Instant::now();
    let out = cpu::run(
        &cpus,
        Duration::from_secs(seconds.into()),
        cancel,
        &mut |f| plan.report(f, "cpu burn-in"),
    )
    .ok_or(Cancelled)?;
    let elapsed = start.elapsed().as_secs_f64();
    let mce_after = counters::machine_checks(env.root);
    let throttle_after = counters::throttle(env.root);
    checks.push(check(
        "burnin.cpu",
        "every CPU computes right",
        format!(
            "{} wrong of {} work units on {} CPUs in {elapsed:.1} s",
            out.wrong,
            out.rounds,
            cpus.len()
        ),
        out.wrong == 0 && out.rounds > 0,
    ));
    if out.unpinned > 0 {
        report.notes.push(format!(
            "cpu: {} thread(s) could not be pinned to their CPU",
            out.unpinned
        ));
    }
    match (mce_before.exceptions, mce_after.exceptions) {
        (Some(a), Some(b)) => checks.push(check(
            "burnin.cpu.machine_checks",
            "no new machine-check exceptions",
            format!("{a} -> {b}"),
            a == b,
        )),
        _ => report
            .notes
            .push("cpu: no MCE line in /proc/interrupts".into()),
    }
    match (throttle_before, throttle_after) {
        (Some(a), Some(b)) => checks.push(check(
            "burnin.cpu.thermal_throttle",
            "no new thermal throttling",
            format!(
                "core {} -> {}, package {} -> {}",
                a.core, b.core, a.package, b.package
            ),
            a == b,
        )),
        _ => report
            .notes
            .push("cpu: no thermal_throttle counters in sysfs".into()),
    }
    report.cpu = Some(CpuResult {
        threads: cpus.len() as u32,
        seconds: elapsed,
        rounds: out.rounds,
        wrong_results: out.wrong,
        unpinned: out.unpinned,
        mce_before: mce_before.exceptions,
        mce_after: mce_after.exceptions,
        mcp_before: mce_before.polls,
        mcp_after: mce_after.polls,
        throttle_before,
        throttle_after,
    });
    Ok(())
}

/// The disks to read, each with whether it may be read here (the refusal text if not).
fn select_disks(env: &Env<'_>, d: &DiskBurnin) -> Vec<(String, Result<(), String>)> {
    let names: Vec<String> = match &d.devices {
        Some(n) => n.clone(),
        None => {
            let all = env
                .inv
                .block_devices
                .iter()
                .filter(|b| is_hardware_disk(b))
                .map(|b| b.name.clone());
            match env.authority {
                Authority::Ramdisk => all.collect(),
                // On a host "every disk" is every disk named with --allow-host.
                _ => env
                    .authority
                    .named_devices()
                    .iter()
                    .map(|s| crate::safety::device_name(env.root, s))
                    .collect(),
            }
        }
    };
    names
        .into_iter()
        .map(|name| {
            let allowed = env
                .authority
                .decide(&Action::BurninRead(Device {
                    root: env.root,
                    name: &name,
                }))
                .map_err(|e| e.to_string());
            (name, allowed)
        })
        .collect()
}

fn run_disks(
    env: &Env<'_>,
    d: &DiskBurnin,
    disks: Vec<(String, Result<(), String>)>,
    cancel: &CancellationToken,
    plan: &Plan<'_>,
    checks: &mut Vec<Check>,
    report: &mut BurninReport,
) -> Result<(), Cancelled> {
    if disks.is_empty() {
        let actual = match env.authority {
            Authority::Ramdisk => "none".to_owned(),
            _ => "none (on a host, name disks with --allow-host)".to_owned(),
        };
        checks.push(check(
            "burnin.disks",
            "at least one disk to read",
            actual,
            false,
        ));
        return Ok(());
    }
    let readable = disks.iter().filter(|x| x.1.is_ok()).count().max(1);
    let mut expected = "read without error".to_owned();
    if let Some(m) = d.min_mb_s {
        expected.push_str(&format!(", at least {m} MB/s"));
    }
    let mut index = 0usize;
    for (name, allowed) in disks {
        let cname = format!("burnin.disks[{name}]");
        if let Err(why) = allowed {
            checks.push(check(cname, expected.clone(), why, false));
            continue;
        }
        let at = index as f64;
        let share = move |f: f64| (at + f.clamp(0.0, 1.0)) / readable as f64;
        index += 1;
        let path = env.root.join("dev").join(&name);
        let mut result = DiskResult {
            name: name.clone(),
            ..DiskResult::default()
        };
        let file = match disk::open(&path).and_then(|f| disk::size_of(&f).map(|s| (f, s))) {
            Ok(f) => f,
            Err(e) => {
                let actual = format!("opening {}: {e}", path.display());
                checks.push(check(cname, expected.clone(), actual.clone(), false));
                result.read_error = Some(actual);
                report.disks.push(result);
                continue;
            }
        };
        let (file, size) = file;
        let limit = d.bytes.unwrap_or(u64::MAX).min(size);
        let deadline = d
            .seconds
            .map(|s| Instant::now() + Duration::from_secs(s.into()));
        let reads = if d.verify { 2.0 } else { 1.0 };
        let what = format!("disk burn-in: reading {name}");
        let first = disk::read_pass(&file, limit, deadline, d.verify, cancel, &mut |b| {
            let by_bytes = b as f64 / limit.max(1) as f64;
            let by_time = deadline.map_or(0.0, |dl| {
                let total = d.seconds.map_or(1.0, f64::from);
                1.0 - dl.saturating_duration_since(Instant::now()).as_secs_f64() / total
            });
            plan.report(share(by_bytes.max(by_time) / reads), &what)
        });
        let first = match first {
            Ok(p) => p,
            Err(disk::ReadError::Cancelled) => return Err(Cancelled),
            Err(e) => {
                let actual = e.to_string();
                checks.push(check(cname, expected.clone(), actual.clone(), false));
                result.read_error = Some(actual);
                report.disks.push(result);
                continue;
            }
        };
        let seconds = first.elapsed.as_secs_f64();
        let (mb_s, fast) = throughput(first.bytes, seconds, d.min_mb_s);
        result.bytes_read = first.bytes;
        result.seconds = seconds;
        result.mb_s = mb_s;
        checks.push(check(
            cname.clone(),
            expected.clone(),
            format!("{mb_s:.1} MB/s over {} in {seconds:.1} s", mib(first.bytes)),
            fast && first.bytes > 0,
        ));
        if d.verify {
            let what = format!("disk burn-in: verifying {name}");
            let second = disk::read_pass(&file, first.bytes, None, true, cancel, &mut |b| {
                plan.report(
                    share(0.5 + b as f64 / first.bytes.max(1) as f64 / 2.0),
                    &what,
                )
            });
            let (ok, actual) = match second {
                Err(disk::ReadError::Cancelled) => return Err(Cancelled),
                Err(e) => (false, format!("second read: {e}")),
                Ok(s) if s.bytes != first.bytes => (
                    false,
                    format!("second read ended at {} of {} bytes", s.bytes, first.bytes),
                ),
                Ok(s) if s.digest != first.digest => {
                    (false, format!("digests of {} differ", mib(first.bytes)))
                }
                Ok(_) => (true, format!("identical ({})", mib(first.bytes))),
            };
            result.verified = Some(ok);
            checks.push(check(
                format!("{cname}.verify"),
                "two reads identical",
                actual,
                ok,
            ));
        }
        health(env, &name, &file, &cname, checks, report, &mut result);
        report.disks.push(result);
    }
    Ok(())
}

/// The disk's own health log, where its kind has one.
fn health(
    env: &Env<'_>,
    name: &str,
    file: &std::fs::File,
    cname: &str,
    checks: &mut Vec<Check>,
    report: &mut BurninReport,
    result: &mut DiskResult,
) {
    use molar_protocol::inventory::Transport;
    let transport = env
        .inv
        .block_devices
        .iter()
        .find(|b| b.name == name)
        .map(|b| b.transport);
    let h = if name.starts_with("nvme") {
        disk::nvme_smart(file).map_err(|e| e.to_string())
    } else if matches!(transport, Some(Transport::Sata)) {
        disk::ata_smart(file).map_err(|e| e.to_string())
    } else {
        report.notes.push(format!(
            "disks: {name}: no SMART log for this kind of device"
        ));
        return;
    };
    match h {
        Ok(h) => {
            let problems = h.problems();
            let actual = if problems.is_empty() {
                format!(
                    "ok ({})",
                    [
                        h.critical_warning.map(|w| format!("critical warning {w}")),
                        h.media_errors.map(|n| format!("{n} media errors")),
                        h.percentage_used.map(|u| format!("{u}% used")),
                        h.reallocated.map(|n| format!("{n} reallocated")),
                        h.pending.map(|n| format!("{n} pending")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
                )
            } else {
                problems.join(", ")
            };
            checks.push(check(
                format!("{cname}.health"),
                format!("no critical {} SMART sign", h.source),
                actual,
                problems.is_empty(),
            ));
            result.health = Some(h);
        }
        Err(e) => report
            .notes
            .push(format!("disks: {name}: SMART log unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molar_protocol::inventory::Nic;
    use serde_json::json;

    fn write(root: &Path, rel: &str, text: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A machine under a temporary root: 16 MiB available, one CPU, EDAC and MCE counters,
    /// one NIC up at 1000 Mbit/s, one "disk" that is a 6 MiB file.
    fn machine() -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "proc/meminfo",
            b"MemTotal: 65536 kB\nMemAvailable: 16384 kB\n",
        );
        write(root, "sys/devices/system/cpu/online", b"0\n");
        write(root, "sys/devices/system/edac/mc/mc0/ce_count", b"0\n");
        write(root, "sys/devices/system/edac/mc/mc0/ue_count", b"0\n");
        write(
            root,
            "proc/interrupts",
            b"MCE: 0 Machine check exceptions\n",
        );
        write(root, "sys/class/net/eth0/carrier", b"1\n");
        write(root, "sys/class/net/eth0/speed", b"1000\n");
        let data: Vec<u8> = (0..6 << 20).map(|i: u32| (i % 253) as u8).collect();
        write(root, "dev/disk0", &data);
        let mut inv = crate::inventory::collect(root, &Default::default());
        let nic: Nic =
            serde_json::from_value(json!({"name": "eth0", "virtual_device": false})).unwrap();
        inv.nics = vec![nic];
        (dir, inv)
    }

    fn settings() -> Burnin {
        let b: Burnin = serde_json::from_value(json!({
            "memory": {"share_percent": 25, "passes": 1},
            "cpu": {"seconds": 1},
            "disks": {"bytes": 5 << 20, "seconds": 30, "verify": true, "min_mb_s": 1.0,
                      "devices": ["disk0"]},
            "nics": {"min_speed_mbps": 1000}}))
        .unwrap();
        b.validate().unwrap();
        b
    }

    #[test]
    fn every_part_runs_and_reports_its_checks_numbers_and_progress() {
        let (dir, inv) = machine();
        let env = Env {
            root: dir.path(),
            authority: &Authority::Ramdisk,
            inv: &inv,
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |f: f64, eta: Option<u64>, what: &str| {
            seen.lock().unwrap().push((f, eta, what.to_owned()));
        };
        let (checks, report) =
            run(&env, &settings(), &CancellationToken::new(), &progress).unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "burnin.memory",
                "burnin.memory.edac",
                "burnin.cpu",
                "burnin.cpu.machine_checks",
                "burnin.disks[disk0]",
                "burnin.disks[disk0].verify",
                "burnin.nics[eth0]",
            ]
        );
        assert!(checks.iter().all(|c| c.pass), "{checks:#?}");
        let m = report.memory.unwrap();
        assert_eq!(m.bytes, 4 << 20);
        assert_eq!((m.errors, m.passes), (0, 1));
        assert!(m.mb_s > 0.0);
        let c = report.cpu.unwrap();
        assert_eq!(c.threads, 1);
        assert!(c.rounds > 0 && c.seconds >= 1.0);
        assert_eq!((c.mce_before, c.mce_after), (Some(0), Some(0)));
        assert_eq!(report.disks[0].bytes_read, 5 << 20);
        assert_eq!(report.disks[0].verified, Some(true));
        assert_eq!(report.nics[0].speed_mbps, Some(1000));
        // No thermal counters in this tree, no SMART for a file: said, not judged.
        assert!(report.notes.iter().any(|n| n.contains("thermal_throttle")));
        assert!(report.notes.iter().any(|n| n.contains("disk0: no SMART")));
        let seen = seen.into_inner().unwrap();
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 + 1e-9), "{seen:?}");
        assert_eq!(seen.last().unwrap().0, 1.0);
        assert!(seen.iter().all(|s| s.1.is_some()));
        assert!(seen.iter().any(|s| s.2 == "cpu burn-in"));
    }

    #[test]
    fn failures_are_checks_that_fail_with_what_was_found() {
        let (dir, inv) = machine();
        let root = dir.path();
        write(root, "sys/class/net/eth0/carrier", b"0\n");
        write(
            root,
            "proc/interrupts",
            b"MCE: 0 Machine check exceptions\n",
        );
        let mut b = settings();
        b.memory = None;
        b.cpu = None;
        if let Some(d) = b.disks.as_mut() {
            d.min_mb_s = Some(1_000_000.0);
            d.devices = Some(vec!["disk0".into(), "nosuch".into()]);
        }
        let env = Env {
            root,
            authority: &Authority::Ramdisk,
            inv: &inv,
        };
        let (checks, _) = run(&env, &b, &CancellationToken::new(), &|_, _, _| {}).unwrap();
        let failed: Vec<(&str, &str)> = checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| (c.name.as_str(), c.actual.as_str()))
            .collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed[0].0, "burnin.disks[disk0]");
        assert_eq!(failed[1].0, "burnin.disks[nosuch]");
        assert!(failed[1].1.starts_with("opening "), "{}", failed[1].1);
        assert_eq!(failed[2], ("burnin.nics[eth0]", "no carrier, 1000 Mbit/s"));
    }

    #[test]
    fn on_a_host_only_disks_named_with_allow_host_are_read() {
        let (dir, inv) = machine();
        let mut b = settings();
        b.memory = None;
        b.cpu = None;
        b.nics = None;
        let host = Authority::host(&[], false);
        let env = Env {
            root: dir.path(),
            authority: &host,
            inv: &inv,
        };
        let (checks, report) = run(&env, &b, &CancellationToken::new(), &|_, _, _| {}).unwrap();
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].pass);
        assert!(
            checks[0].actual.contains("--allow-host"),
            "{}",
            checks[0].actual
        );
        assert!(report.disks.is_empty());
        // Without named devices in the settings, "every disk" on a host is the named ones.
        if let Some(d) = b.disks.as_mut() {
            d.devices = None;
        }
        let named = Authority::host(&["/dev/disk0".into()], false);
        let env = Env {
            authority: &named,
            ..env
        };
        let (checks, _) = run(&env, &b, &CancellationToken::new(), &|_, _, _| {}).unwrap();
        assert_eq!(checks[0].name, "burnin.disks[disk0]");
        assert!(checks.iter().all(|c| c.pass), "{checks:#?}");
    }

    #[test]
    fn cancellation_ends_the_run() {
        let (dir, inv) = machine();
        let env = Env {
            root: dir.path(),
            authority: &Authority::Ramdisk,
            inv: &inv,
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(
            run(&env, &settings(), &cancel, &|_, _, _| {}).unwrap_err(),
            Cancelled
        );
    }
}
