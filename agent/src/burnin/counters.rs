//! Hardware error and throttle counters, read under a root path (a fixture tree in tests):
//! EDAC memory-controller counts, machine checks from `/proc/interrupts`, thermal throttle
//! counts, plus the online CPU list and MemAvailable the burn-in sizes itself by.
//!
//! Each reader returns `None` when the machine does not expose the counter (no EDAC driver,
//! no MCE line on a non-x86 kernel, no thermal_throttle directory in a VM): a counter that
//! cannot be read is reported as such, never as zero.

use molar_protocol::burnin::{EdacCounters, ThrottleCounters};
use std::path::Path;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sorted entries of `dir` whose names start with `prefix` followed by a digit.
fn numbered(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// EDAC corrected/uncorrected counts summed over `/sys/devices/system/edac/mc/mc*/`.
pub fn edac(root: &Path) -> Option<EdacCounters> {
    let mut c = EdacCounters::default();
    for mc in numbered(&root.join("sys/devices/system/edac/mc"), "mc") {
        let (Some(ce), Some(ue)) = (
            read_u64(&mc.join("ce_count")),
            read_u64(&mc.join("ue_count")),
        ) else {
            continue;
        };
        c.controllers += 1;
        c.ce = c.ce.saturating_add(ce);
        c.ue = c.ue.saturating_add(ue);
    }
    (c.controllers > 0).then_some(c)
}

/// Machine-check counts from `/proc/interrupts`, each summed over CPUs; `None` where the
/// line is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineChecks {
    /// The `MCE:` line: machine-check exceptions.
    pub exceptions: Option<u64>,
    /// The `MCP:` line: machine-check polls (they tick on a timer).
    pub polls: Option<u64>,
}

pub fn machine_checks(root: &Path) -> MachineChecks {
    std::fs::read_to_string(root.join("proc/interrupts"))
        .map(|t| parse_machine_checks(&t))
        .unwrap_or_default()
}

/// The `MCE:` and `MCP:` lines' counts (one per CPU, then a description), summed.
pub fn parse_machine_checks(text: &str) -> MachineChecks {
    let mut m = MachineChecks::default();
    for line in text.lines() {
        let line = line.trim_start();
        let (slot, rest) = if let Some(r) = line.strip_prefix("MCE:") {
            (&mut m.exceptions, r)
        } else if let Some(r) = line.strip_prefix("MCP:") {
            (&mut m.polls, r)
        } else {
            continue;
        };
        let sum = rest
            .split_whitespace()
            .map_while(|w| w.parse::<u64>().ok())
            .fold(0u64, u64::saturating_add);
        *slot = Some(sum);
    }
    m
}

/// Thermal throttle event counts summed over `cpu*/thermal_throttle/`. The package count is
/// repeated by every CPU of the package; the sum is only compared with itself (before and
/// after), so the repetition does not matter.
pub fn throttle(root: &Path) -> Option<ThrottleCounters> {
    let mut t = ThrottleCounters::default();
    let mut found = false;
    for cpu in numbered(&root.join("sys/devices/system/cpu"), "cpu") {
        let dir = cpu.join("thermal_throttle");
        if let Some(n) = read_u64(&dir.join("core_throttle_count")) {
            t.core = t.core.saturating_add(n);
            found = true;
        }
        if let Some(n) = read_u64(&dir.join("package_throttle_count")) {
            t.package = t.package.saturating_add(n);
            found = true;
        }
    }
    found.then_some(t)
}

/// Longest CPU list accepted (more CPUs than any machine has).
const MAX_CPUS: usize = 1 << 16;

/// The online CPUs from `/sys/devices/system/cpu/online` (`0-3,8,10-11`).
pub fn online_cpus(root: &Path) -> Option<Vec<usize>> {
    parse_cpu_list(
        std::fs::read_to_string(root.join("sys/devices/system/cpu/online"))
            .ok()?
            .trim(),
    )
}

/// A kernel CPU list; `None` when malformed or absurdly long.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ),
            None => {
                let a = part.trim().parse::<usize>().ok()?;
                (a, a)
            }
        };
        if b < a || b >= MAX_CPUS || v.len() + (b - a) >= MAX_CPUS {
            return None;
        }
        v.extend(a..=b);
    }
    (!v.is_empty()).then_some(v)
}

/// MemAvailable from `/proc/meminfo`, in bytes.
pub fn mem_available(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    text.lines().find_map(|l| {
        let kb = l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?;
        kb.trim().parse::<u64>().ok()?.checked_mul(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn edac_counts_are_summed_over_controllers_and_absent_without_edac() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(edac(root), None);
        write(root, "sys/devices/system/edac/mc/mc0/ce_count", "3\n");
        write(root, "sys/devices/system/edac/mc/mc0/ue_count", "0\n");
        write(root, "sys/devices/system/edac/mc/mc1/ce_count", "4\n");
        write(root, "sys/devices/system/edac/mc/mc1/ue_count", "1\n");
        // Not a controller, and a controller with unreadable counts: both ignored.
        write(root, "sys/devices/system/edac/mc/power/ce_count", "100\n");
        write(root, "sys/devices/system/edac/mc/mc2/ce_count", "garbage\n");
        write(root, "sys/devices/system/edac/mc/mc2/ue_count", "0\n");
        assert_eq!(
            edac(root),
            Some(EdacCounters {
                controllers: 2,
                ce: 7,
                ue: 1
            })
        );
    }

    #[test]
    fn machine_checks_sum_the_mce_and_mcp_lines() {
        let text = "           CPU0       CPU1\n  0:         31          0  IO-APIC   2-edge      timer\n\
                    NMI:          0          0   Non-maskable interrupts\n\
                    MCE:          1          2   Machine check exceptions\n\
                    MCP:         40         41   Machine check polls\n\
                    ERR:          0\n";
        let want = MachineChecks {
            exceptions: Some(3),
            polls: Some(81),
        };
        assert_eq!(parse_machine_checks(text), want);
        assert_eq!(
            parse_machine_checks("  0: 1 2 timer\n"),
            MachineChecks::default()
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(machine_checks(dir.path()), MachineChecks::default());
        write(dir.path(), "proc/interrupts", text);
        assert_eq!(machine_checks(dir.path()), want);
    }

    #[test]
    fn throttle_counts_are_summed_over_cpus() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(throttle(root), None);
        write(
            root,
            "sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count",
            "2",
        );
        write(
            root,
            "sys/devices/system/cpu/cpu0/thermal_throttle/package_throttle_count",
            "5",
        );
        write(
            root,
            "sys/devices/system/cpu/cpu1/thermal_throttle/core_throttle_count",
            "1",
        );
        write(
            root,
            "sys/devices/system/cpu/cpufreq/thermal_throttle/core_throttle_count",
            "9",
        );
        assert_eq!(
            throttle(root),
            Some(ThrottleCounters {
                core: 3,
                package: 5
            })
        );
    }

    #[test]
    fn cpu_lists_and_meminfo_parse_and_refuse_garbage() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        for bad in ["", "3-1", "a", "0-99999999", "1,,x"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/devices/system/cpu/online", "0-1\n");
        assert_eq!(online_cpus(dir.path()), Some(vec![0, 1]));
        write(
            dir.path(),
            "proc/meminfo",
            "MemTotal:       16318412 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n",
        );
        assert_eq!(mem_available(dir.path()), Some(2 << 20));
    }
}
