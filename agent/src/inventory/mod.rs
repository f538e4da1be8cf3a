//! Hardware inventory: tells the controller exactly what machine the agent runs on.
//!
//! Everything is read under a root path (sysfs, procfs, the SMBIOS tables, `/dev`), so the
//! same code runs on the live machine (`/`) and on fixture trees in tests. Collection never
//! fails as a whole: an attribute that cannot be read is left absent and explained by a
//! [`Note`] in the document. Work is linear in the number of devices and runs no
//! subprocesses, so a machine with a thousand disks is as safe to inventory as one with one.
//!
//! The collector is synchronous; callers on an async runtime run it in `spawn_blocking`.

mod block;
mod boot;
mod cpu;
pub mod firmware;
pub mod fssig;
mod memory;
mod net;
mod nvme;
mod pci;
pub mod smbios;

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use molar_protocol::inventory::{Inventory, Kernel, Note};

/// What [`collect`] may do beyond reading sysfs and procfs.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Open `ROOT/dev/NAME` of each disk and partition read-only to look for filesystem
    /// signatures.
    pub filesystem_signatures: bool,
    /// Send NVMe Identify Controller/Namespace to `ROOT/dev/nvmeN` (needs root on a live
    /// machine).
    pub nvme_identify: bool,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            filesystem_signatures: true,
            nvme_identify: true,
        }
    }
}

/// Why an attribute is missing from the inventory; each becomes a [`Note`].
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("reading {path}: {}", io_reason(source))]
    Read { path: String, source: io::Error },
    #[error("parsing {path}: {what}")]
    Parse { path: String, what: String },
    #[error("smbios table {path}: {source}")]
    Smbios {
        path: String,
        source: smbios::SmbiosError,
    },
    #[error("enumerating block devices under {path}: {reason}")]
    BlockDevices { path: String, reason: String },
    #[error("probing signatures on {path}: {}", io_reason(source))]
    Signature { path: String, source: io::Error },
    #[error("nvme identify on {path}: {reason}")]
    NvmeIdentify { path: String, reason: String },
}

impl InventoryError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "inventory_read_failed",
            Self::Parse { .. } => "inventory_parse_failed",
            Self::Smbios { source, .. } => source.code(),
            Self::BlockDevices { .. } => "inventory_block_devices_failed",
            Self::Signature { .. } => "inventory_signature_probe_failed",
            Self::NvmeIdentify { .. } => "inventory_nvme_identify_failed",
        }
    }

    fn into_note(self) -> Note {
        let (path, reason) = match self {
            Self::Read { path, source } => (path, io_reason(&source)),
            Self::Parse { path, what } => (path, what),
            Self::Smbios { path, source } => (path, source.to_string()),
            Self::BlockDevices { path, reason } => (path, reason),
            Self::Signature { path, source } => (path, io_reason(&source)),
            Self::NvmeIdentify { path, reason } => (path, reason),
        };
        Note { path, reason }
    }
}

/// An io::Error as lowercase text without the "(os error N)" suffix.
pub(crate) fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Collects the inventory of the machine whose sysfs/procfs/dev are under `root`.
pub fn collect(root: &Path, opts: &CollectOptions) -> Inventory {
    let mut ctx = Ctx::new(root);

    let kernel = Kernel {
        release: ctx.read_required("/proc/sys/kernel/osrelease"),
        version: ctx.read_required("/proc/sys/kernel/version"),
    };
    let smbios = smbios::collect(&mut ctx);
    let boot = boot::collect(&mut ctx);
    let (cpu, numa_nodes) = cpu::collect(&mut ctx);
    let memory = memory::collect(&mut ctx, &smbios.dimms);
    let block_devices = block::collect(&mut ctx, opts);
    let nics = net::collect(&mut ctx);
    let pci_devices = pci::collect(&mut ctx);
    let firmware = firmware::collect(
        &mut ctx,
        opts,
        smbios.bios.as_ref(),
        &cpu,
        &block_devices,
        &nics,
    );
    let gpus = pci_devices
        .iter()
        .filter(|d| d.class.is_some_and(|c| c >> 16 == 0x03))
        .cloned()
        .collect();

    Inventory {
        collected_at: rfc3339_utc(SystemTime::now()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel,
        system: smbios.system,
        bios: smbios.bios,
        baseboard: smbios.baseboard,
        chassis: smbios.chassis,
        oem_strings: smbios.oem_strings,
        boot,
        cpu,
        numa_nodes,
        memory,
        dimms: smbios.dimms,
        block_devices,
        nics,
        pci_devices,
        gpus,
        bmc: None,
        firmware,
        notes: ctx.notes,
    }
}

/// Formats a time as RFC 3339 in UTC with second precision, e.g. "2026-11-21T18:48:11Z".
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for every date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Reading context: the root of the inspected machine and the notes gathered so far.
///
/// Paths given to its methods are absolute paths *on the inspected machine* ("/sys/...");
/// notes carry them in that form, independent of where the tree is mounted.
pub(crate) struct Ctx {
    root: PathBuf,
    pub(crate) notes: Vec<Note>,
}

impl Ctx {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            notes: Vec::new(),
        }
    }

    /// True when inspecting the machine we run on (so sockets and ioctls see the same world).
    pub(crate) fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub(crate) fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub(crate) fn error(&mut self, e: InventoryError) {
        self.notes.push(e.into_note());
    }

    pub(crate) fn note(&mut self, path: &str, reason: impl Into<String>) {
        self.notes.push(Note {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    fn read_error(&mut self, path: &str, source: io::Error) {
        self.error(InventoryError::Read {
            path: path.to_string(),
            source,
        });
    }

    /// Raw bytes of a file that must exist; any failure is noted.
    pub(crate) fn read_bytes_required(&mut self, path: &str) -> Option<Vec<u8>> {
        match fs::read(self.path(path)) {
            Ok(b) => Some(b),
            Err(e) => {
                self.read_error(path, e);
                None
            }
        }
    }

    /// Trimmed text of a file that must exist; any failure (or an empty file) is noted.
    pub(crate) fn read_required(&mut self, path: &str) -> Option<String> {
        match fs::read(self.path(path)) {
            Ok(b) => {
                let s = trimmed(&b);
                if s.is_none() {
                    self.note(path, "empty");
                }
                s
            }
            Err(e) => {
                self.read_error(path, e);
                None
            }
        }
    }

    /// Trimmed text of an attribute that may legitimately be absent: a missing file, or
    /// EINVAL (what sysfs answers for e.g. the speed of a link that is down) is silently
    /// `None`; other failures (permission denied, I/O error) are noted. Empty is `None`.
    pub(crate) fn read_attr(&mut self, path: &str) -> Option<String> {
        match fs::read(self.path(path)) {
            Ok(b) => trimmed(&b),
            Err(e) if is_not_applicable(&e) => None,
            Err(e) => {
                self.read_error(path, e);
                None
            }
        }
    }

    /// An attribute parsed with `FromStr`; a value that does not parse is noted.
    pub(crate) fn parse_attr<T: FromStr>(&mut self, path: &str) -> Option<T> {
        let text = self.read_attr(path)?;
        self.parse_text(path, &text)
    }

    /// Parses text read from `path`, noting a failure.
    pub(crate) fn parse_text<T: FromStr>(&mut self, path: &str, text: &str) -> Option<T> {
        match text.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(InventoryError::Parse {
                    path: path.to_string(),
                    what: format!("unexpected value {:?}", truncate(text, 64)),
                });
                None
            }
        }
    }

    /// A hexadecimal attribute such as "0x8086" or "0x030000".
    pub(crate) fn hex_attr(&mut self, path: &str) -> Option<u32> {
        let text = self.read_attr(path)?;
        let digits = text.trim_start_matches("0x").trim_start_matches("0X");
        match u32::from_str_radix(digits, 16) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(InventoryError::Parse {
                    path: path.to_string(),
                    what: format!("not a hexadecimal number: {:?}", truncate(&text, 64)),
                });
                None
            }
        }
    }

    /// The target of a symlink that may be absent (a missing link is silently `None`).
    pub(crate) fn read_link(&mut self, path: &str) -> Option<PathBuf> {
        match fs::read_link(self.path(path)) {
            Ok(p) => Some(p),
            Err(e) if is_not_applicable(&e) => None,
            Err(e) => {
                self.read_error(path, e);
                None
            }
        }
    }

    /// Last component of a symlink's target, e.g. the driver name of `device/driver`.
    pub(crate) fn link_name(&mut self, path: &str) -> Option<String> {
        let target = self.read_link(path)?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Entry names of a directory, in natural order ("sda", "sdb", ..., "sdaa"; "cpu2" before
    /// "cpu10"). A missing directory is noted only when `required`.
    pub(crate) fn list_dir(&mut self, path: &str, required: bool) -> Vec<String> {
        let entries = match fs::read_dir(self.path(path)) {
            Ok(entries) => entries,
            Err(e) => {
                if required || !is_not_applicable(&e) {
                    self.read_error(path, e);
                }
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        fs::symlink_metadata(self.path(path)).is_ok()
    }
}

/// Missing file, or EINVAL/ENODEV/ENXIO: sysfs's ways of saying "no value right now".
fn is_not_applicable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENODEV) | Some(libc::ENXIO)
        )
}

/// Trimmed UTF-8 (lossy) text; `None` when empty.
pub(crate) fn trimmed(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Orders names with embedded numbers by value: "cpu2" < "cpu10"; and kernel disk names,
/// which grow in length before they grow alphabetically: "sdz" < "sdaa".
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = match (da, db) {
            (true, true) => {
                let ta = sa.trim_start_matches('0');
                let tb = sb.trim_start_matches('0');
                ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
            }
            // Same device family ("sd", "vd", "nvme"): shorter runs first, so sdz < sdaa.
            (false, false) if sa.get(..2).is_some() && sa.get(..2) == sb.get(..2) => {
                sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb))
            }
            _ => sa.cmp(sb),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// Parses a kernel CPU list such as "0-3,8,10-11".
pub(crate) fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: u32 = lo.trim().parse().ok()?;
                let hi: u32 = hi.trim().parse().ok()?;
                // A list wider than any real machine is corrupt input, not a reason to
                // allocate gigabytes.
                if hi < lo || hi - lo > 1 << 20 {
                    return None;
                }
                out.extend(lo..=hi);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn natural_order_of_kernel_names() {
        let mut names = vec![
            "sdaa", "sdb", "sda", "sdz", "cpu10", "cpu2", "nvme10n1", "nvme2n1",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            vec![
                "cpu2", "cpu10", "nvme2n1", "nvme10n1", "sda", "sdb", "sdz", "sdaa"
            ]
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_286_891);
        assert_eq!(rfc3339_utc(t), "2026-11-21T18:48:11Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_utc(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn io_reasons_are_lowercase_without_errno() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_reason(&e), "permission denied");
    }
}
