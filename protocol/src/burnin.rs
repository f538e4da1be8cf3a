//! Wire types of `decom.qc`'s burn-in: what to exercise ([`Burnin`]) and the numbers it
//! measured ([`BurninReport`]).
//!
//! Settings deny unknown fields and are bounded ([`Burnin::validate`]): a misspelt
//! `min_mb_s` silently ignored would pass a slow disk, and an unbounded duration would hold a
//! machine for ever. The report tolerates unknown fields. Its pass/fail lines are
//! [`crate::qc::Check`]s named `burnin.…`, merged into the [`crate::qc::QcReport`]'s checks
//! (so every table of checks shows them); the numbers behind them stay here.

use serde::{Deserialize, Serialize};

/// Longest burn-in of one part, in seconds (a week).
pub const MAX_SECONDS: u32 = 7 * 24 * 3600;
/// Most memory passes.
pub const MAX_PASSES: u32 = 1000;
/// Largest share of available memory tested, in percent: the rest keeps the agent alive.
pub const MAX_SHARE_PERCENT: u8 = 90;
/// Smallest memory size tested, in bytes.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// Highest accepted minimum throughput, in MB/s.
pub const MAX_MB_S: f64 = 1_000_000.0;
/// Most devices or interfaces named in one list.
pub const MAX_NAMES: usize = 256;

/// Burn-in settings: every part is optional and an absent part is not exercised.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burnin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryBurnin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuBurnin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<DiskBurnin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<NicBurnin>,
}

/// Pattern write/verify over locked memory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBurnin {
    /// Share of MemAvailable to test, 1 to [`MAX_SHARE_PERCENT`]. Exclusive with `bytes`;
    /// neither means 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_percent: Option<u8>,
    /// Bytes to test (at least [`MIN_MEMORY_BYTES`]; capped at the share maximum of
    /// MemAvailable when run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Full passes over every pattern. Exclusive with `seconds`; neither means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u32>,
    /// Run patterns for this long (the pattern under way finishes its buffer first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
}

/// Every online CPU busy on checked work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuBurnin {
    pub seconds: u32,
}

/// Sequential direct reads of each disk. Read-only: a disk is never written.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBurnin {
    /// Read each disk for this long; with `bytes` too, whichever ends first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// Read this many bytes of each disk (from its start; at most its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Each disk reads at least this fast, in MB/s (10^6 bytes per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mb_s: Option<f64>,
    /// Read the same region a second time and compare digests.
    #[serde(default)]
    pub verify: bool,
    /// Kernel names (`nvme0n1`, `sda`) of the disks to read; absent means every hardware
    /// disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
}

/// Carrier and negotiated speed of the physical interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicBurnin {
    /// Every checked interface has carrier (default true).
    #[serde(default = "yes")]
    pub require_carrier: bool,
    /// Every checked interface negotiated at least this, in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_speed_mbps: Option<u32>,
    /// Interface names to check; absent means every physical interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// Why burn-in settings were refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("burnin.{field}: {why}")]
pub struct BurninError {
    pub field: &'static str,
    pub why: String,
}

fn err(field: &'static str, why: impl Into<String>) -> BurninError {
    BurninError {
        field,
        why: why.into(),
    }
}

fn seconds_ok(field: &'static str, s: u32) -> Result<(), BurninError> {
    if s == 0 || s > MAX_SECONDS {
        return Err(err(
            field,
            format!("{s} is outside 1..={MAX_SECONDS} seconds"),
        ));
    }
    Ok(())
}

fn names_ok(field: &'static str, names: &[String]) -> Result<(), BurninError> {
    if names.is_empty() {
        return Err(err(
            field,
            "an empty list checks nothing; leave it out for all",
        ));
    }
    if names.len() > MAX_NAMES {
        return Err(err(field, format!("more than {MAX_NAMES} names")));
    }
    for n in names {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b));
        if !ok {
            return Err(err(
                field,
                format!(
                    "{:?} is not a kernel device name",
                    n.escape_debug().to_string()
                ),
            ));
        }
    }
    Ok(())
}

impl Burnin {
    /// True when nothing would be exercised.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none() && self.disks.is_none() && self.nics.is_none()
    }

    /// Checks every bound and exclusive pair; the error names the first wrong field.
    pub fn validate(&self) -> Result<(), BurninError> {
        if self.is_empty() {
            return Err(err("*", "burn-in exercises nothing; leave `burnin` out"));
        }
        if let Some(m) = &self.memory {
            if m.share_percent.is_some() && m.bytes.is_some() {
                return Err(err("memory", "give share_percent or bytes, not both"));
            }
            if m.passes.is_some() && m.seconds.is_some() {
                return Err(err("memory", "give passes or seconds, not both"));
            }
            if let Some(p) = m.share_percent
                && (p == 0 || p > MAX_SHARE_PERCENT)
            {
                return Err(err(
                    "memory.share_percent",
                    format!("{p} is outside 1..={MAX_SHARE_PERCENT}"),
                ));
            }
            if let Some(b) = m.bytes
                && b < MIN_MEMORY_BYTES
            {
                return Err(err(
                    "memory.bytes",
                    format!("{b} is below the minimum of {MIN_MEMORY_BYTES}"),
                ));
            }
            if let Some(p) = m.passes
                && (p == 0 || p > MAX_PASSES)
            {
                return Err(err(
                    "memory.passes",
                    format!("{p} is outside 1..={MAX_PASSES}"),
                ));
            }
            if let Some(s) = m.seconds {
                seconds_ok("memory.seconds", s)?;
            }
        }
        if let Some(c) = &self.cpu {
            seconds_ok("cpu.seconds", c.seconds)?;
        }
        if let Some(d) = &self.disks {
            if d.seconds.is_none() && d.bytes.is_none() {
                return Err(err("disks", "give seconds or bytes (or both)"));
            }
            if let Some(s) = d.seconds {
                seconds_ok("disks.seconds", s)?;
            }
            if d.bytes == Some(0) {
                return Err(err("disks.bytes", "0 reads nothing"));
            }
            if let Some(m) = d.min_mb_s
                && !(m.is_finite() && m > 0.0 && m <= MAX_MB_S)
            {
                return Err(err(
                    "disks.min_mb_s",
                    format!("{m} is not a speed in (0, {MAX_MB_S}]"),
                ));
            }
            if let Some(n) = &d.devices {
                names_ok("disks.devices", n)?;
            }
        }
        if let Some(n) = &self.nics {
            if !n.require_carrier && n.min_speed_mbps.is_none() {
                return Err(err(
                    "nics",
                    "require_carrier false and no min_speed_mbps checks nothing",
                ));
            }
            if n.min_speed_mbps == Some(0) {
                return Err(err("nics.min_speed_mbps", "0 checks nothing"));
            }
            if let Some(names) = &n.names {
                names_ok("nics.names", names)?;
            }
        }
        Ok(())
    }
}

/// The numbers of a burn-in (the pass/fail lines are in the QC report's checks).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BurninReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicResult>,
    /// What could not be done as asked and why (no mlock, no SMART, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// EDAC counters summed over every memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EdacCounters {
    pub controllers: u32,
    /// Corrected errors.
    pub ce: u64,
    /// Uncorrected errors.
    pub ue: u64,
}

/// One word that read back wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryError {
    pub pattern: String,
    /// Byte offset in the tested region (its virtual address is not stable information).
    pub offset: u64,
    pub expected: u64,
    pub found: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryResult {
    pub bytes: u64,
    /// Whether the region was locked in RAM (mlock).
    pub locked: bool,
    pub passes: u32,
    pub patterns: Vec<String>,
    pub errors: u64,
    /// The first errors (bounded).
    #[serde(default)]
    pub first_errors: Vec<MemoryError>,
    pub seconds: f64,
    /// Bytes written plus bytes verified, per second, in MB/s.
    pub mb_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edac_before: Option<EdacCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edac_after: Option<EdacCounters>,
}

/// Thermal throttle event counts summed over every CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThrottleCounters {
    pub core: u64,
    pub package: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CpuResult {
    pub threads: u32,
    pub seconds: f64,
    /// Work units completed over every thread.
    pub rounds: u64,
    /// Work units whose result was wrong.
    pub wrong_results: u64,
    /// Threads that could not be pinned to their CPU.
    #[serde(default)]
    pub unpinned: u32,
    /// Machine-check exceptions (`/proc/interrupts` MCE line, summed over CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mce_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mce_after: Option<u64>,
    /// Machine-check polls (MCP line): they tick on a timer, so they are reported, not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_before: Option<ThrottleCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_after: Option<ThrottleCounters>,
}

/// A disk's health as its own log reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskHealth {
    /// `nvme` (SMART / Health log, page 0x02) or `ata` (SMART READ DATA).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_warning: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage_used: Option<u8>,
    /// ATA: reallocated sectors (attribute 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reallocated: Option<u64>,
    /// ATA: current pending sectors (197).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// ATA: offline uncorrectable sectors (198).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncorrectable: Option<u64>,
    /// ATA: attributes at or below their threshold, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_attributes: Vec<u8>,
}

impl DiskHealth {
    /// Every critical sign the log shows, as text; empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(w) = self.critical_warning.filter(|w| *w != 0) {
            p.push(format!("critical warning 0x{w:02x}"));
        }
        let counts = [
            ("media errors", self.media_errors),
            ("reallocated sectors", self.reallocated),
            ("pending sectors", self.pending),
            ("uncorrectable sectors", self.uncorrectable),
        ];
        for (what, n) in counts {
            if let Some(n) = n.filter(|n| *n != 0) {
                p.push(format!("{n} {what}"));
            }
        }
        if let Some(u) = self.percentage_used.filter(|u| *u >= 100) {
            p.push(format!("{u}% of rated endurance used"));
        }
        if !self.failing_attributes.is_empty() {
            p.push(format!(
                "attributes at threshold: {:?}",
                self.failing_attributes
            ));
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskResult {
    pub name: String,
    pub bytes_read: u64,
    pub seconds: f64,
    pub mb_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// Whether the second read of the region matched the first (absent without verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<DiskHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NicResult {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
}

/// Whether `bytes` read in `seconds` meets `min_mb_s` (MB/s = 10^6 bytes/s); the rate, and
/// the verdict (`None` minimum always passes; no time measured passes only with data read).
pub fn throughput(bytes: u64, seconds: f64, min_mb_s: Option<f64>) -> (f64, bool) {
    let rate = if seconds > 0.0 {
        bytes as f64 / seconds / 1e6
    } else if bytes > 0 {
        f64::INFINITY
    } else {
        0.0
    };
    (rate, min_mb_s.is_none_or(|m| rate >= m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Burnin, String> {
        let b: Burnin = serde_json::from_value(v).map_err(|e| e.to_string())?;
        b.validate().map_err(|e| e.to_string())?;
        Ok(b)
    }

    #[test]
    fn good_settings_pass_and_defaults_fill_in() {
        let b = parse(json!({"memory": {"share_percent": 5, "seconds": 2},
            "cpu": {"seconds": 2}, "disks": {"seconds": 2, "verify": true, "min_mb_s": 1.5},
            "nics": {}}))
        .unwrap();
        assert!(b.nics.unwrap().require_carrier);
        assert!(b.disks.unwrap().verify);
        parse(json!({"memory": {}})).unwrap();
    }

    #[test]
    fn unknown_fields_and_wrong_bounds_are_refused_naming_the_field() {
        let cases = [
            (json!({"memroy": {}}), "unknown field `memroy`"),
            (
                json!({"disks": {"seconds": 1, "min_mbs": 5}}),
                "unknown field `min_mbs`",
            ),
            (json!({}), "burnin.*: burn-in exercises nothing"),
            (
                json!({"memory": {"share_percent": 95}}),
                "burnin.memory.share_percent: 95",
            ),
            (
                json!({"memory": {"share_percent": 0}}),
                "burnin.memory.share_percent: 0",
            ),
            (
                json!({"memory": {"share_percent": 5, "bytes": 4096}}),
                "not both",
            ),
            (
                json!({"memory": {"bytes": 4096}}),
                "burnin.memory.bytes: 4096 is below",
            ),
            (
                json!({"memory": {"passes": 1, "seconds": 1}}),
                "passes or seconds",
            ),
            (json!({"memory": {"passes": 0}}), "burnin.memory.passes: 0"),
            (
                json!({"cpu": {"seconds": 0}}),
                "burnin.cpu.seconds: 0 is outside",
            ),
            (
                json!({"cpu": {"seconds": 604801}}),
                "burnin.cpu.seconds: 604801",
            ),
            (json!({"cpu": {}}), "missing field `seconds`"),
            (json!({"disks": {}}), "burnin.disks: give seconds or bytes"),
            (
                json!({"disks": {"bytes": 0}}),
                "burnin.disks.bytes: 0 reads nothing",
            ),
            (
                json!({"disks": {"seconds": 1, "min_mb_s": -1.0}}),
                "burnin.disks.min_mb_s",
            ),
            (
                json!({"disks": {"seconds": 1, "devices": []}}),
                "burnin.disks.devices: an empty",
            ),
            (
                json!({"disks": {"seconds": 1, "devices": ["../sda"]}}),
                "not a kernel device",
            ),
            (
                json!({"nics": {"require_carrier": false}}),
                "burnin.nics: require_carrier",
            ),
            (
                json!({"nics": {"min_speed_mbps": 0}}),
                "burnin.nics.min_speed_mbps",
            ),
        ];
        for (v, want) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn throughput_is_judged_in_decimal_megabytes() {
        assert_eq!(throughput(100_000_000, 2.0, Some(50.0)), (50.0, true));
        assert!(!throughput(100_000_000, 2.0, Some(50.1)).1);
        assert!(throughput(0, 0.0, None).1);
        assert!(!throughput(0, 0.0, Some(1.0)).1);
        assert!(throughput(1, 0.0, Some(1.0)).1);
    }

    #[test]
    fn health_problems_name_each_sign() {
        let h = DiskHealth {
            source: "nvme".into(),
            critical_warning: Some(0x04),
            media_errors: Some(3),
            percentage_used: Some(100),
            ..DiskHealth::default()
        };
        assert_eq!(
            h.problems(),
            [
                "critical warning 0x04",
                "3 media errors",
                "100% of rated endurance used"
            ]
        );
        let ok = DiskHealth {
            source: "nvme".into(),
            critical_warning: Some(0),
            media_errors: Some(0),
            percentage_used: Some(3),
            ..DiskHealth::default()
        };
        assert!(ok.problems().is_empty());
    }

    #[test]
    fn the_report_tolerates_unknown_fields() {
        let r: BurninReport =
            serde_json::from_value(json!({"nics": [{"name": "eth0", "carrier": true, "x": 1}],
                "future": 2}))
            .unwrap();
        assert_eq!(r.nics[0].name, "eth0");
    }
}
