//! Wire types of `decom.qc` (the hardware spec check) and the check itself.
//!
//! [`check`] is a pure function of a [`Spec`] and an [`Inventory`], so the agent (on the live
//! machine) and the controller (on a stored inventory) judge a machine the same way. Params and
//! spec deny unknown fields: a misspelt `min_size_bytes` silently ignored would pass a machine
//! that should fail. The report tolerates unknown fields, so a controller reads the report of
//! a newer agent.
//!
//! Patterns (CPU model, disk model, GPU `vendor:device`) are globs, matched against the whole
//! text, case-insensitively: `*` is any run of characters, `?` one character, everything else
//! itself. A glob rather than a substring so that `Intel*Gold 6338*` pins a model while
//! `*6338*` still reads as "contains".

use crate::burnin::{Burnin, BurninReport};
use crate::firmware::{ComponentMatch, Version};
use crate::inventory::{BlockDevice, Inventory, Nic, PciDevice, Transport};
use serde::{Deserialize, Serialize};

/// Longest accepted pattern, in characters: patterns match model strings, which are short, and
/// the bound keeps matching cheap whatever a hostile spec holds.
pub const MAX_PATTERN_CHARS: usize = 256;

/// Params of `decom.qc` (without the engine's `task_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QcParams {
    /// What the machine must be.
    pub spec: Spec,
    /// Burn-in run after the spec check (see [`crate::burnin`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burnin: Option<Burnin>,
}

/// What a machine must be; every part is optional and an absent part is not checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
    /// Groups of disks; each group is checked on its own (e.g. two NVMe plus four SATA HDDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// Groups of physical network interfaces, each checked on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcSpec>,
    /// Firmware versions: every matching component must satisfy its entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareSpec>,
}

impl Spec {
    /// True when the spec checks nothing (such a spec would pass any machine).
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.memory.is_none()
            && self.disks.is_empty()
            && self.nics.is_empty()
            && self.gpus.is_none()
            && self.bmc.is_none()
            && self.firmware.is_empty()
    }
}

/// Processors.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Glob on the model name, e.g. `"Intel(R) Xeon(R) Gold 6338*"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Pattern>,
    /// Exact number of physical packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Exact number of physical cores over all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
}

/// Memory, as a total and as DIMMs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// The total must be at least this. The total is the installed size from SMBIOS when
    /// known, else what the kernel can use (MemTotal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bytes: Option<u64>,
    /// The total must be this, within `tolerance_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Allowed distance from `bytes`; absent means 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_bytes: Option<u64>,
    /// Exact number of populated DIMM slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimm_count: Option<u32>,
    /// Every populated DIMM has exactly this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimm_size_bytes: Option<u64>,
    /// Every populated DIMM runs at least this fast (configured speed, else maximum speed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_dimm_speed_mts: Option<u32>,
}

/// A group of disks: the hardware disks (not loop or kernel-made devices) matching every given
/// attribute are counted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Exact number of matching disks; absent means at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Glob on the disk's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Pattern>,
}

/// A group of physical network interfaces: those matching every given attribute are counted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Exact number of matching interfaces; absent means at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Link speed at least this, in Mbit/s (a link that is down has no speed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_speed_mbps: Option<u32>,
    /// Carrier present (true) or absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
}

/// Display-class PCI functions (class 0x03).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Exact number of matching GPUs; absent means at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Glob on `vendor:device` as four-digit lowercase hex ids, e.g. `"10de:*"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Pattern>,
}

/// Firmware components (matched as `decom.firmware_secure` matches them) and the version they
/// must run: at least `min_version`, exactly `version` ([`Version`] order), or both. At least
/// one component must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSpec {
    #[serde(rename = "match")]
    pub matches: ComponentMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The local BMC as the agent saw it in-band.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcSpec {
    /// A BMC must answer (true) or must not (false).
    pub present: bool,
}

/// A glob pattern of at most [`MAX_PATTERN_CHARS`] characters; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern longer than {max} characters")]
    TooLong { max: usize },
    #[error("pattern contains a control character")]
    Control,
}

impl TryFrom<String> for Pattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, PatternError> {
        if s.chars().count() > MAX_PATTERN_CHARS {
            return Err(PatternError::TooLong {
                max: MAX_PATTERN_CHARS,
            });
        }
        if s.chars().any(char::is_control) {
            return Err(PatternError::Control);
        }
        Ok(Pattern(s))
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.0
    }
}

impl Pattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A pattern matching exactly `text` (its `*` and `?` become `?`, which still match them);
    /// text longer than the bound keeps its start and ends in `*`.
    pub fn literal(text: &str) -> Pattern {
        let mut p: String = text
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '*' { '?' } else { c })
            .collect();
        if p.chars().count() > MAX_PATTERN_CHARS {
            p = p.chars().take(MAX_PATTERN_CHARS - 1).collect();
            p.push('*');
        }
        Pattern(p)
    }

    /// Whole-text, case-insensitive glob match. The classic greedy-star algorithm with one
    /// backtrack point: O(pattern × text) at worst, never exponential.
    pub fn matches(&self, text: &str) -> bool {
        let p: Vec<char> = self.0.chars().flat_map(char::to_lowercase).collect();
        let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. `cpu.cores`, `disks[1]`.
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub pass: bool,
}

/// The result of `decom.qc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcReport {
    /// True when every check passed.
    pub passed: bool,
    pub checks: Vec<Check>,
    /// One line per failed check: `name: expected …, found …`.
    #[serde(default)]
    pub failures: Vec<String>,
    /// The numbers of the burn-in, when one ran; its checks (`burnin.…`) are in `checks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burnin: Option<BurninReport>,
}

impl QcReport {
    /// Adds burn-in checks (and their numbers) to the report: failures and verdict follow.
    pub fn add_burnin(&mut self, checks: Vec<Check>, numbers: BurninReport) {
        for c in checks {
            if !c.pass {
                self.failures.push(failure_line(&c));
                self.passed = false;
            }
            self.checks.push(c);
        }
        self.burnin = Some(numbers);
    }
}

fn failure_line(c: &Check) -> String {
    format!("{}: expected {}, found {}", c.name, c.expected, c.actual)
}

/// Checks `inv` against `spec`.
pub fn check(spec: &Spec, inv: &Inventory) -> QcReport {
    let mut checks = Vec::new();
    let mut add = |name: String, expected: String, actual: String, pass: bool| {
        checks.push(Check {
            name,
            expected,
            actual,
            pass,
        })
    };
    if let Some(cpu) = &spec.cpu {
        if let Some(p) = &cpu.model {
            let actual = inv.cpu.model.as_deref();
            add(
                "cpu.model".into(),
                format!("matches {:?}", p.as_str()),
                show(actual.map(|m| format!("{m:?}"))),
                actual.is_some_and(|m| p.matches(m)),
            );
        }
        if let Some(want) = cpu.sockets {
            add(
                "cpu.sockets".into(),
                want.to_string(),
                show(inv.cpu.sockets),
                inv.cpu.sockets == Some(want),
            );
        }
        if let Some(want) = cpu.cores {
            add(
                "cpu.cores".into(),
                want.to_string(),
                show(inv.cpu.cores),
                inv.cpu.cores == Some(want),
            );
        }
    }
    if let Some(mem) = &spec.memory {
        let total = memory_total(inv);
        let total_text = show(total.map(|(b, src)| format!("{b} bytes ({src})")));
        if let Some(min) = mem.min_bytes {
            add(
                "memory.min_bytes".into(),
                format!("at least {min} bytes"),
                total_text.clone(),
                total.is_some_and(|(b, _)| b >= min),
            );
        }
        if let Some(want) = mem.bytes {
            let tol = mem.tolerance_bytes.unwrap_or(0);
            add(
                "memory.bytes".into(),
                format!("{want} bytes ± {tol}"),
                total_text,
                total.is_some_and(|(b, _)| b.abs_diff(want) <= tol),
            );
        }
        let dimms: Vec<_> = inv.dimms.iter().filter(|d| d.populated).collect();
        if let Some(want) = mem.dimm_count {
            add(
                "memory.dimm_count".into(),
                want.to_string(),
                dimms.len().to_string(),
                dimms.len() == want as usize,
            );
        }
        if let Some(want) = mem.dimm_size_bytes {
            let sizes: Vec<String> = dimms
                .iter()
                .map(|d| show(d.size_bytes).to_string())
                .collect();
            add(
                "memory.dimm_size_bytes".into(),
                format!("every DIMM {want} bytes"),
                list_or_none(&sizes),
                !dimms.is_empty() && dimms.iter().all(|d| d.size_bytes == Some(want)),
            );
        }
        if let Some(want) = mem.min_dimm_speed_mts {
            let speeds: Vec<Option<u32>> = dimms
                .iter()
                .map(|d| d.configured_speed_mts.or(d.speed_mts))
                .collect();
            let text: Vec<String> = speeds.iter().map(|s| show(*s)).collect();
            add(
                "memory.min_dimm_speed_mts".into(),
                format!("every DIMM at least {want} MT/s"),
                list_or_none(&text),
                !speeds.is_empty() && speeds.iter().all(|s| s.is_some_and(|s| s >= want)),
            );
        }
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let found: Vec<&BlockDevice> = inv
            .block_devices
            .iter()
            .filter(|b| is_hardware_disk(b) && disk_matches(d, b))
            .collect();
        let names: Vec<String> = found.iter().map(|b| b.name.clone()).collect();
        add(
            format!("disks[{i}]"),
            format!("{} {}", count_text(d.count), disk_text(d)),
            format!("{}: {}", found.len(), list_or_none(&names)),
            count_ok(d.count, found.len()),
        );
    }
    for (i, n) in spec.nics.iter().enumerate() {
        let found: Vec<&Nic> = inv
            .nics
            .iter()
            .filter(|x| !x.virtual_device && nic_matches(n, x))
            .collect();
        let names: Vec<String> = found.iter().map(|x| x.name.clone()).collect();
        add(
            format!("nics[{i}]"),
            format!("{} {}", count_text(n.count), nic_text(n)),
            format!("{}: {}", found.len(), list_or_none(&names)),
            count_ok(n.count, found.len()),
        );
    }
    if let Some(g) = &spec.gpus {
        let found: Vec<&PciDevice> = gpus(inv)
            .into_iter()
            .filter(|p| g.model.as_ref().is_none_or(|m| m.matches(&pci_ids(p))))
            .collect();
        let ids: Vec<String> = found
            .iter()
            .map(|p| format!("{} {}", p.address, pci_ids(p)))
            .collect();
        let model = g
            .model
            .as_ref()
            .map(|m| format!(" matching {:?}", m.as_str()))
            .unwrap_or_default();
        add(
            "gpus".into(),
            format!("{} display device(s){model}", count_text(g.count)),
            format!("{}: {}", found.len(), list_or_none(&ids)),
            count_ok(g.count, found.len()),
        );
    }
    if let Some(b) = &spec.bmc {
        let present = inv.bmc.is_some();
        add(
            "bmc.present".into(),
            b.present.to_string(),
            present.to_string(),
            present == b.present,
        );
    }
    for (i, f) in spec.firmware.iter().enumerate() {
        let found: Vec<_> = inv
            .firmware
            .iter()
            .filter(|c| f.matches.matches(c))
            .collect();
        let mut want = Vec::new();
        if let Some(m) = &f.min_version {
            want.push(format!("at least {m}"));
        }
        if let Some(v) = &f.version {
            want.push(format!("exactly {v}"));
        }
        let ok = |c: &&crate::inventory::FirmwareComponent| {
            let have = Version::parse(&c.version);
            f.min_version
                .as_ref()
                .is_none_or(|m| have >= Version::parse(m))
                && f.version.as_ref().is_none_or(|v| have == Version::parse(v))
        };
        let actual: Vec<String> = found
            .iter()
            .map(|c| format!("{} {}", c.name, c.version.trim()))
            .collect();
        add(
            format!("firmware[{i}]"),
            format!("{} {}", f.matches, list_or_none(&want)),
            list_or_none(&actual),
            !found.is_empty()
                && (f.min_version.is_some() || f.version.is_some())
                && found.iter().all(ok),
        );
    }
    let failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(failure_line)
        .collect();
    QcReport {
        passed: failures.is_empty(),
        checks,
        failures,
        burnin: None,
    }
}

/// A spec that the machine of `inv` passes: its CPU model, socket and core counts, memory and
/// DIMMs, its disks grouped by transport and rotation (each group's smallest size as the
/// minimum), its physical NIC count, GPUs and BMC presence. Attributes the inventory lacks are
/// left out rather than guessed.
pub fn template(inv: &Inventory) -> Spec {
    let cpu = CpuSpec {
        model: inv.cpu.model.as_deref().map(Pattern::literal),
        sockets: inv.cpu.sockets,
        cores: inv.cpu.cores,
    };
    let dimms: Vec<_> = inv.dimms.iter().filter(|d| d.populated).collect();
    let first_size = dimms.first().and_then(|d| d.size_bytes);
    let speeds: Option<Vec<u32>> = dimms
        .iter()
        .map(|d| d.configured_speed_mts.or(d.speed_mts))
        .collect();
    let memory = MemorySpec {
        min_bytes: memory_total(inv).map(|(b, _)| b),
        dimm_count: (!dimms.is_empty()).then_some(dimms.len() as u32),
        dimm_size_bytes: first_size.filter(|s| dimms.iter().all(|d| d.size_bytes == Some(*s))),
        min_dimm_speed_mts: speeds.and_then(|s| s.into_iter().min()),
        ..MemorySpec::default()
    };
    let mut disks: Vec<DiskSpec> = Vec::new();
    for b in inv.block_devices.iter().filter(|b| is_hardware_disk(b)) {
        match disks
            .iter_mut()
            .find(|d| d.transport == Some(b.transport) && d.rotational == b.rotational)
        {
            Some(d) => {
                d.count = d.count.map(|c| c + 1);
                d.min_size_bytes = match (d.min_size_bytes, b.size_bytes) {
                    (Some(a), Some(s)) => Some(a.min(s)),
                    _ => None,
                };
            }
            None => disks.push(DiskSpec {
                count: Some(1),
                min_size_bytes: b.size_bytes,
                transport: Some(b.transport),
                rotational: b.rotational,
                model: None,
            }),
        }
    }
    let physical = inv.nics.iter().filter(|n| !n.virtual_device).count();
    let nics = if physical > 0 {
        vec![NicSpec {
            count: Some(physical as u32),
            ..NicSpec::default()
        }]
    } else {
        Vec::new()
    };
    let gpu_count = gpus(inv).len();
    Spec {
        cpu: (cpu != CpuSpec::default()).then_some(cpu),
        memory: (memory != MemorySpec::default()).then_some(memory),
        disks,
        nics,
        gpus: (gpu_count > 0).then_some(GpuSpec {
            count: Some(gpu_count as u32),
            model: None,
        }),
        bmc: Some(BmcSpec {
            present: inv.bmc.is_some(),
        }),
        firmware: Vec::new(),
    }
}

/// The memory total and where it comes from.
fn memory_total(inv: &Inventory) -> Option<(u64, &'static str)> {
    inv.memory
        .installed_bytes
        .map(|b| (b, "installed"))
        .or(inv.memory.total_bytes.map(|b| (b, "kernel MemTotal")))
}

/// Disks that are hardware: loop devices and kernel-made ones (zram, dm, md) are not.
pub fn is_hardware_disk(b: &BlockDevice) -> bool {
    !matches!(b.transport, Transport::Loop | Transport::Virtual)
}

fn disk_matches(d: &DiskSpec, b: &BlockDevice) -> bool {
    d.min_size_bytes
        .is_none_or(|min| b.size_bytes.is_some_and(|s| s >= min))
        && d.transport.is_none_or(|t| t == b.transport)
        && d.rotational.is_none_or(|r| b.rotational == Some(r))
        && d.model
            .as_ref()
            .is_none_or(|m| b.model.as_deref().is_some_and(|x| m.matches(x.trim())))
}

fn nic_matches(n: &NicSpec, x: &Nic) -> bool {
    n.min_speed_mbps
        .is_none_or(|min| x.speed_mbps.is_some_and(|s| s >= min))
        && n.link_up.is_none_or(|up| x.carrier == Some(up))
}

/// Display-class functions: the inventory's `gpus`, else `pci_devices` of class 0x03.
fn gpus(inv: &Inventory) -> Vec<&PciDevice> {
    if !inv.gpus.is_empty() {
        return inv.gpus.iter().collect();
    }
    inv.pci_devices
        .iter()
        .filter(|p| p.class.is_some_and(|c| c >> 16 == 0x03))
        .collect()
}

fn pci_ids(p: &PciDevice) -> String {
    let hex = |v: Option<u16>| v.map_or_else(|| "????".to_owned(), |v| format!("{v:04x}"));
    format!("{}:{}", hex(p.vendor_id), hex(p.device_id))
}

fn count_ok(want: Option<u32>, found: usize) -> bool {
    match want {
        Some(n) => found == n as usize,
        None => found >= 1,
    }
}

fn count_text(want: Option<u32>) -> String {
    match want {
        Some(n) => n.to_string(),
        None => "at least 1".to_owned(),
    }
}

fn disk_text(d: &DiskSpec) -> String {
    let mut parts = vec!["disk(s)".to_owned()];
    if let Some(t) = d.transport {
        parts.push(serde_json::to_value(t).map_or_else(|_| "?".into(), |v| v.to_string()));
    }
    if let Some(r) = d.rotational {
        parts.push(if r { "rotational" } else { "non-rotational" }.into());
    }
    if let Some(min) = d.min_size_bytes {
        parts.push(format!("at least {min} bytes"));
    }
    if let Some(m) = &d.model {
        parts.push(format!("model {:?}", m.as_str()));
    }
    parts.join(", ")
}

fn nic_text(n: &NicSpec) -> String {
    let mut parts = vec!["interface(s)".to_owned()];
    if let Some(min) = n.min_speed_mbps {
        parts.push(format!("at least {min} Mb/s"));
    }
    if let Some(up) = n.link_up {
        parts.push(if up { "link up" } else { "link down" }.into());
    }
    parts.join(", ")
}

fn show<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A two-socket server with two NVMe disks, one SATA HDD, a loop device, two NICs (one
    /// up at 25 Gb/s), a bridge, one GPU and a BMC.
    fn server() -> Inventory {
        serde_json::from_value(json!({
            "collected_at": "2026-01-01T00:00:00Z", "agent_version": "0",
            "kernel": {}, "boot": {"mode": "uefi"},
            "cpu": {"model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "sockets": 2,
                "cores": 64},
            "memory": {"total_bytes": 270_000_000_000_u64, "installed_bytes": 274_877_906_944_u64},
            "dimms": [
                {"populated": true, "size_bytes": 137_438_953_472_u64, "configured_speed_mts": 3200},
                {"populated": true, "size_bytes": 137_438_953_472_u64, "speed_mts": 3200},
                {"populated": false}],
            "block_devices": [
                {"name": "nvme0n1", "path": "/dev/nvme0n1", "size_bytes": 1_920_383_410_176_u64,
                 "rotational": false, "model": "SAMSUNG MZQL21T9HCJR", "transport": "nvme",
                 "mounted": false},
                {"name": "nvme1n1", "path": "/dev/nvme1n1", "size_bytes": 1_920_383_410_176_u64,
                 "rotational": false, "model": "SAMSUNG MZQL21T9HCJR", "transport": "nvme",
                 "mounted": false},
                {"name": "sda", "path": "/dev/sda", "size_bytes": 8_001_563_222_016_u64,
                 "rotational": true, "model": "ST8000NM000A   ", "transport": "sata",
                 "mounted": false},
                {"name": "loop0", "path": "/dev/loop0", "size_bytes": 1, "transport": "loop",
                 "mounted": true}],
            "nics": [
                {"name": "eno1", "speed_mbps": 25000, "carrier": true, "virtual_device": false},
                {"name": "eno2", "carrier": false, "virtual_device": false},
                {"name": "br0", "speed_mbps": 25000, "carrier": true, "virtual_device": true}],
            "pci_devices": [
                {"address": "0000:00:02.0", "class": 0x030000, "vendor_id": 0x10de,
                 "device_id": 0x2204},
                {"address": "0000:00:03.0", "class": 0x020000, "vendor_id": 0x8086,
                 "device_id": 0x1572}],
            "bmc": {"device_id": 32, "device_revision": 1, "firmware_version": "9.08",
                "ipmi_version": "2.0", "manufacturer_id": 4753, "product_id": 3842,
                "lan_channels": [], "users": []}
        }))
        .unwrap()
    }

    fn spec(v: Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn failed(r: &QcReport) -> Vec<&str> {
        r.checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn firmware_checks_compare_versions_of_every_matching_component() {
        let mut inv = server();
        inv.firmware = serde_json::from_value(json!([
            {"kind": "nvme", "name": "nvme0", "model": "SAMSUNG MZQL21T9HCJR", "version": "GDC5602Q"},
            {"kind": "nvme", "name": "nvme1", "model": "SAMSUNG MZQL21T9HCJR", "version": "GDC5302Q"},
            {"kind": "bios", "name": "bios", "version": "2.16.0"}]))
        .unwrap();
        let r = check(
            &spec(json!({"firmware": [
                {"match": {"kind": "bios"}, "min_version": "2.9"},
                {"match": {"kind": "bios"}, "version": "2.16"},
                {"match": {"kind": "nvme", "name": "nvme0"}, "version": "gdc5602q"},
                {"match": {"kind": "nvme", "model": "SAMSUNG*"}, "min_version": "GDC5602Q"},
                {"match": {"kind": "bmc"}, "min_version": "1"},
                {"match": {"kind": "bios"}}]})),
            &inv,
        );
        assert_eq!(failed(&r), ["firmware[3]", "firmware[4]", "firmware[5]"]);
        assert_eq!(
            r.failures[0],
            "firmware[3]: expected nvme model \"SAMSUNG*\" at least GDC5602Q, found nvme0 GDC5602Q, nvme1 GDC5302Q"
        );
        assert!(r.failures[1].ends_with("found none"), "{}", r.failures[1]);
        let e = serde_json::from_value::<Spec>(
            json!({"firmware": [{"match": {"kind": "bios"}, "min": "1"}]}),
        );
        assert!(e.unwrap_err().to_string().contains("unknown field `min`"));
    }

    #[test]
    fn a_matching_spec_passes_every_check() {
        let s = spec(json!({
            "cpu": {"model": "intel(r) xeon(r) gold 6338*", "sockets": 2, "cores": 64},
            "memory": {"min_bytes": 256_000_000_000_u64, "bytes": 274_877_906_944_u64,
                "dimm_count": 2, "dimm_size_bytes": 137_438_953_472_u64,
                "min_dimm_speed_mts": 3200},
            "disks": [{"count": 2, "transport": "nvme", "rotational": false,
                "min_size_bytes": 1_900_000_000_000_u64, "model": "SAMSUNG MZQL2*"},
                {"count": 1, "rotational": true, "model": "ST8000NM000A"}],
            "nics": [{"count": 2}, {"count": 1, "min_speed_mbps": 25000, "link_up": true}],
            "gpus": {"count": 1, "model": "10de:*"},
            "bmc": {"present": true}
        }));
        let r = check(&s, &server());
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!(r.checks.len(), 14);
        assert!(r.failures.is_empty());
    }

    #[test]
    fn each_kind_of_mismatch_fails_its_own_check() {
        let inv = server();
        let cases = [
            (json!({"cpu": {"model": "AMD EPYC*"}}), "cpu.model"),
            (json!({"cpu": {"sockets": 1}}), "cpu.sockets"),
            (json!({"cpu": {"cores": 32}}), "cpu.cores"),
            (
                json!({"memory": {"min_bytes": 300_000_000_000_u64}}),
                "memory.min_bytes",
            ),
            (
                json!({"memory": {"bytes": 270_000_000_000_u64, "tolerance_bytes": 1000}}),
                "memory.bytes",
            ),
            (json!({"memory": {"dimm_count": 4}}), "memory.dimm_count"),
            (
                json!({"memory": {"dimm_size_bytes": 68_719_476_736_u64}}),
                "memory.dimm_size_bytes",
            ),
            (
                json!({"memory": {"min_dimm_speed_mts": 4800}}),
                "memory.min_dimm_speed_mts",
            ),
            (
                json!({"disks": [{"count": 3, "transport": "nvme"}]}),
                "disks[0]",
            ),
            (
                json!({"disks": [{"min_size_bytes": 10_000_000_000_000_u64}]}),
                "disks[0]",
            ),
            (json!({"disks": [{"transport": "sas"}]}), "disks[0]"),
            (
                json!({"disks": [{"count": 1, "rotational": false}]}),
                "disks[0]",
            ),
            (json!({"disks": [{"model": "INTEL*"}]}), "disks[0]"),
            (json!({"nics": [{"count": 3}]}), "nics[0]"),
            (json!({"nics": [{"count": 2, "link_up": true}]}), "nics[0]"),
            (json!({"nics": [{"min_speed_mbps": 100000}]}), "nics[0]"),
            (json!({"gpus": {"count": 2}}), "gpus"),
            (json!({"gpus": {"model": "1002:*"}}), "gpus"),
            (json!({"bmc": {"present": false}}), "bmc.present"),
        ];
        for (s, name) in cases {
            let r = check(&spec(s.clone()), &inv);
            assert!(!r.passed, "{s} passed");
            assert_eq!(failed(&r), vec![name], "{s}");
            assert_eq!(r.failures.len(), 1);
            assert!(
                r.failures[0].starts_with(&format!("{name}: expected ")),
                "{:?}",
                r.failures
            );
        }
    }

    #[test]
    fn unknown_attributes_fail_rather_than_pass() {
        let mut inv = server();
        inv.cpu = Default::default();
        inv.memory = Default::default();
        inv.dimms.clear();
        inv.bmc = None;
        let r = check(
            &spec(json!({"cpu": {"model": "*", "sockets": 2, "cores": 64},
                "memory": {"min_bytes": 1, "dimm_size_bytes": 1, "min_dimm_speed_mts": 1},
                "bmc": {"present": true}})),
            &inv,
        );
        assert_eq!(r.checks.len(), 7);
        assert!(r.checks.iter().all(|c| !c.pass), "{:?}", r.checks);
        assert!(r.failures[0].contains("found unknown"), "{:?}", r.failures);
    }

    #[test]
    fn the_template_passes_its_own_inventory() {
        let inv = server();
        let t = template(&inv);
        let r = check(&t, &inv);
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!(t.disks.len(), 2, "nvme and sata groups, no loop device");
        assert_eq!(t.nics[0].count, Some(2), "the bridge is not counted");
        assert_eq!(t.gpus.as_ref().unwrap().count, Some(1));
        // Through JSON too, since that is how an operator keeps it.
        let again: Spec = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        assert!(check(&again, &inv).passed);
        // A bare inventory still gets a passing (if small) template.
        let mut bare = inv.clone();
        bare.cpu = Default::default();
        bare.dimms.clear();
        bare.block_devices.clear();
        bare.nics.clear();
        bare.pci_devices.clear();
        bare.bmc = None;
        assert!(check(&template(&bare), &bare).passed);
    }

    #[test]
    fn template_of_a_model_with_glob_characters_still_matches_it() {
        let mut inv = server();
        inv.cpu.model = Some("Weird *CPU? model".into());
        assert!(check(&template(&inv), &inv).passed);
        inv.cpu.model = Some("x".repeat(1000));
        let t = template(&inv);
        assert_eq!(
            t.cpu
                .as_ref()
                .unwrap()
                .model
                .as_ref()
                .unwrap()
                .as_str()
                .chars()
                .count(),
            MAX_PATTERN_CHARS
        );
        assert!(check(&t, &inv).passed);
    }

    #[test]
    fn glob_matching() {
        let p = |s: &str| Pattern::try_from(s.to_owned()).unwrap();
        assert!(p("abc").matches("ABC"));
        assert!(!p("abc").matches("abcd"), "whole text, not a substring");
        assert!(p("*bc*").matches("abcd"));
        assert!(p("a?c").matches("abc"));
        assert!(!p("a?c").matches("ac"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("a-b-b-c"));
        assert!(!p("a*b*c").matches("a-b-b-d"));
        assert!(p("").matches(""));
        assert!(!p("").matches("a"));
        // The worst case for naive backtracking stays fast.
        let long = "a".repeat(10_000);
        let hostile = format!("{}b", "*a".repeat(120));
        assert!(!p(&hostile).matches(&long));
    }

    #[test]
    fn hostile_params_are_refused_with_the_reason() {
        let bad = [
            (json!({"spec": {}, "extra": 1}), "unknown field `extra`"),
            (json!({}), "missing field `spec`"),
            (json!({"spec": {"cpus": {}}}), "unknown field `cpus`"),
            (json!({"spec": {"cpu": {"cores": "64"}}}), "invalid type"),
            (json!({"spec": {"cpu": {"cores": -1}}}), "invalid value"),
            (
                json!({"spec": {"cpu": {"threads": 2}}}),
                "unknown field `threads`",
            ),
            (
                json!({"spec": {"memory": {"min_bytes": 1.5}}}),
                "invalid type",
            ),
            (json!({"spec": {"disks": {"count": 1}}}), "invalid type"),
            (
                json!({"spec": {"disks": [{"size": 1}]}}),
                "unknown field `size`",
            ),
            (
                json!({"spec": {"disks": [{"transport": 7}]}}),
                "invalid type",
            ),
            (
                json!({"spec": {"nics": [{"link_up": "yes"}]}}),
                "invalid type",
            ),
            (json!({"spec": {"bmc": {}}}), "missing field `present`"),
            (
                json!({"spec": {"gpus": {"model": "x".repeat(MAX_PATTERN_CHARS + 1)}}}),
                "pattern longer than 256 characters",
            ),
            (
                json!({"spec": {"cpu": {"model": "a\u{1b}[2J"}}}),
                "control character",
            ),
            (json!({"spec": "cpu"}), "invalid type"),
        ];
        for (v, want) in bad {
            let e = serde_json::from_value::<QcParams>(v.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = serde_json::from_value::<QcParams>(
            json!({"spec": {"bmc": {"present": true}}, "burnin": {"x": 1}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let ok: QcParams = serde_json::from_value(
            json!({"spec": {"bmc": {"present": true}}, "burnin": {"cpu": {"seconds": 2}}}),
        )
        .unwrap();
        assert_eq!(ok.burnin.unwrap().cpu.unwrap().seconds, 2);
        assert!(Spec::default().is_empty());
        assert!(!ok.spec.is_empty());
    }

    #[test]
    fn the_report_tolerates_fields_of_a_newer_agent() {
        let r: QcReport = serde_json::from_value(json!({"passed": false, "checks": [
            {"name": "n", "expected": "e", "actual": "a", "pass": false, "unit": "u"}],
            "failures": ["n: x"], "burnin": {}}))
        .unwrap();
        assert!(!r.passed);
    }

    #[test]
    fn burnin_checks_join_the_verdict_and_the_failures() {
        let mut r = check(&spec(json!({"bmc": {"present": true}})), &server());
        assert!(r.passed);
        let line = |name: &str, pass| Check {
            name: name.into(),
            expected: "0 errors".into(),
            actual: "2 errors".into(),
            pass,
        };
        r.add_burnin(
            vec![line("burnin.cpu", true), line("burnin.memory", false)],
            BurninReport::default(),
        );
        assert!(!r.passed);
        assert_eq!(r.checks.len(), 3);
        assert_eq!(
            r.failures,
            ["burnin.memory: expected 0 errors, found 2 errors"]
        );
        assert!(r.burnin.is_some());
    }
}
