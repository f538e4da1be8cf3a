//! Block device enumeration from sysfs and procfs under a root path.
//!
//! This is the single description of "which disks exist and what is on them" that both the
//! inventory and the erase safety layer consume. Everything is read below `root`
//! (`/` in production, a fixture tree in tests): `sys/block`, `sys/class/block`,
//! `proc/self/mountinfo`, `proc/swaps`, `proc/cmdline` and `dev/disk/by-*`.
//!
//! A missing or unreadable attribute becomes `None` (or an empty list): one odd device must
//! not hide the others. Only the two things the safety layer cannot do without fail the whole
//! enumeration: the list of block devices and the mount table.
//!
//! [`settle`] waits, before a "every disk" enumeration, until the set of devices has stopped
//! changing.

pub mod settle;
pub mod zeroed;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Why enumeration failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("listing block devices in {path}: {source}")]
    ListBlock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading mount table {path}: {source}")]
    ReadMounts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DiskError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            DiskError::ListBlock { .. } => "disk_list_failed",
            DiskError::ReadMounts { .. } => "mount_table_unreadable",
        }
    }
}

/// How a block device is attached, derived from its sysfs device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Nvme,
    Sata,
    Sas,
    Scsi,
    Virtio,
    Usb,
    Mmc,
    Loop,
    /// Kernel-internal devices: device-mapper, md, ram, zram, nbd …
    Virtual,
    Other,
}

impl Transport {
    /// Lowercase name used on the wire and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Nvme => "nvme",
            Transport::Sata => "sata",
            Transport::Sas => "sas",
            Transport::Scsi => "scsi",
            Transport::Virtio => "virtio",
            Transport::Usb => "usb",
            Transport::Mmc => "mmc",
            Transport::Loop => "loop",
            Transport::Virtual => "virtual",
            Transport::Other => "other",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mounted filesystem (or active swap) that lives on a device or on one of its holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Kernel name of the device actually mounted (`sda1`, `dm-0`, …).
    pub device: String,
    /// Mount point, or `[swap]` for active swap.
    pub mount_point: String,
    pub fs_type: String,
}

/// A partition of a whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub dev_path: PathBuf,
    pub major: u32,
    pub minor: u32,
    pub number: Option<u32>,
    /// Start in bytes from the beginning of the disk.
    pub start_bytes: Option<u64>,
    pub size_bytes: u64,
    /// Devices stacked on this partition (dm, md, bcache …), transitively.
    pub holders: Vec<String>,
    /// Mounts of this partition and of its holders.
    pub mounts: Vec<Mount>,
}

/// A whole block device as listed in `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `sda`, `nvme0n1`, `vda`, `loop3`.
    pub name: String,
    /// Device node, `root/dev/NAME` (so `/dev/sda` in production).
    pub dev_path: PathBuf,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    pub logical_block_size: Option<u32>,
    pub physical_block_size: Option<u32>,
    pub rotational: Option<bool>,
    pub removable: Option<bool>,
    pub read_only: Option<bool>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub firmware_rev: Option<String>,
    pub transport: Transport,
    /// Stable path-based id in the spirit of udev's `by-path` (`pci-0000:01:00.0-nvme-1`).
    pub by_path: Option<String>,
    /// sysfs device path relative to root (`/sys/devices/pci0000:00/…/block/sda`).
    pub sysfs_path: Option<String>,
    /// Largest single discard the device accepts; 0 or `None` means no discard support.
    pub discard_max_bytes: Option<u64>,
    pub discard_granularity: Option<u64>,
    /// `queue/discard_zeroes_data` (always 0 on kernels ≥ 4.12, kept for old ones).
    pub discard_zeroes_data: Option<bool>,
    /// Largest single BLKZEROOUT offload (WRITE SAME / WRITE ZEROES); 0 means emulated.
    pub write_zeroes_max_bytes: Option<u64>,
    /// NVMe controller name (`nvme0`) for namespaces.
    pub nvme_controller: Option<String>,
    /// NVMe namespace id.
    pub nsid: Option<u32>,
    pub partitions: Vec<Partition>,
    /// Devices stacked directly on the whole disk (dm, md …), transitively.
    pub holders: Vec<String>,
    /// Devices this one is stacked on (for dm/md devices).
    pub slaves: Vec<String>,
    /// Mounts of the disk, its partitions and every holder of either.
    pub mounts: Vec<Mount>,
    /// True when the running system booted from this disk (it holds `/`, `/boot`, the
    /// `root=` of the kernel command line, or live boot media).
    pub boot_device: bool,
}

impl Disk {
    /// Mount points of the disk and everything on it, deduplicated.
    pub fn mount_points(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.mounts.iter().map(|m| m.mount_point.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Holders of the disk and of its partitions, deduplicated.
    pub fn all_holders(&self) -> Vec<String> {
        let mut set: BTreeSet<String> = self.holders.iter().cloned().collect();
        for p in &self.partitions {
            set.extend(p.holders.iter().cloned());
        }
        set.into_iter().collect()
    }

    /// Logical block size, defaulting to 512 when sysfs did not say.
    pub fn logical_block_size_or_default(&self) -> u32 {
        self.logical_block_size.filter(|b| *b > 0).unwrap_or(512)
    }
}

/// List every whole block device under `root/sys/block`, sorted by name.
pub fn enumerate(root: &Path) -> Result<Vec<Disk>, DiskError> {
    let block_dir = root.join("sys/block");
    let entries = fs::read_dir(&block_dir).map_err(|source| DiskError::ListBlock {
        path: block_dir.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();

    let mounts = read_mounts(root)?;
    let boot = BootHints::read(root, &mounts);

    let mut disks: Vec<Disk> = names.iter().map(|n| read_disk(root, n, &mounts)).collect();
    for d in &mut disks {
        d.boot_device = boot.matches(root, d);
    }
    Ok(disks)
}

/// Find one device (whole disk or partition) by kernel name or device path.
/// Returns the disk and, when the name is a partition, the partition's index.
pub fn find<'a>(disks: &'a [Disk], name_or_path: &str) -> Option<(&'a Disk, Option<usize>)> {
    let name = name_or_path
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name_or_path);
    for d in disks {
        if d.name == name || d.dev_path == Path::new(name_or_path) {
            return Some((d, None));
        }
        if let Some(i) = d
            .partitions
            .iter()
            .position(|p| p.name == name || p.dev_path == Path::new(name_or_path))
        {
            return Some((d, Some(i)));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------

type DevT = (u32, u32);

/// Mounts by device number, from mountinfo plus active swap.
struct MountTable {
    by_dev: BTreeMap<DevT, Vec<(String, String)>>,
    /// Swap devices by kernel name (from /proc/swaps, which names paths not numbers).
    swaps: BTreeSet<String>,
    root_dev: Option<DevT>,
    boot_devs: Vec<DevT>,
    /// Mounts whose device number is anonymous (`0:N`: btrfs, for one), by the kernel name
    /// of their `/dev/NAME` source: the number says nothing about the disk behind them.
    by_name: BTreeMap<String, Vec<(String, String)>>,
    /// Root and boot mounts known only by their source name.
    boot_names: Vec<String>,
}

fn read_mounts(root: &Path) -> Result<MountTable, DiskError> {
    let path = root.join("proc/self/mountinfo");
    let text = fs::read_to_string(&path).map_err(|source| DiskError::ReadMounts {
        path: path.clone(),
        source,
    })?;
    let mut table = parse_mountinfo(&text);
    if let Ok(swaps) = fs::read_to_string(root.join("proc/swaps")) {
        for line in swaps.lines().skip(1) {
            if let Some(dev) = line.split_whitespace().next() {
                let dev = unescape_octal(dev);
                // /proc/swaps names the path the swapon used; resolve symlinks like
                // /dev/disk/by-uuid/… or /dev/mapper/… to the kernel name.
                let resolved = resolve_dev_name(root, &dev);
                table.swaps.insert(resolved);
            }
        }
    }
    Ok(table)
}

fn parse_mountinfo(text: &str) -> MountTable {
    let mut table = MountTable {
        by_dev: BTreeMap::new(),
        swaps: BTreeSet::new(),
        root_dev: None,
        boot_devs: Vec::new(),
        by_name: BTreeMap::new(),
        boot_names: Vec::new(),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let Some(dev) = parse_devt(fields[2]) else {
            continue;
        };
        let mount_point = unescape_octal(fields[4]);
        let fs_type = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default();
        let is_boot_mount = mount_point == "/"
            || matches!(
                mount_point.as_str(),
                "/boot" | "/boot/efi" | "/efi" | "/run/live/medium" | "/lib/live/mount/medium"
            )
            || mount_point.starts_with("/run/initramfs/");
        if dev.0 == 0 {
            let source = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|i| fields.get(i + 2))
                .and_then(|s| s.strip_prefix("/dev/"))
                .filter(|n| !n.is_empty() && !n.contains('/'));
            if let Some(name) = source {
                if is_boot_mount {
                    table.boot_names.push(name.to_owned());
                }
                table
                    .by_name
                    .entry(name.to_owned())
                    .or_default()
                    .push((mount_point.clone(), fs_type.clone()));
            }
        }
        if dev.0 != 0 {
            if mount_point == "/" {
                table.root_dev = Some(dev);
            }
            if matches!(
                mount_point.as_str(),
                "/boot" | "/boot/efi" | "/efi" | "/run/live/medium" | "/lib/live/mount/medium"
            ) || mount_point.starts_with("/run/initramfs/")
            {
                table.boot_devs.push(dev);
            }
        }
        table
            .by_dev
            .entry(dev)
            .or_default()
            .push((mount_point, fs_type));
    }
    table
}

fn parse_devt(s: &str) -> Option<DevT> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// mountinfo and /proc/swaps escape space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Map a device path (possibly a symlink under root/dev) to its kernel name.
fn resolve_dev_name(root: &Path, dev: &str) -> String {
    let under_root = root.join(dev.trim_start_matches('/'));
    if let Ok(canon) = fs::canonicalize(&under_root)
        && let Some(n) = canon.file_name().and_then(|n| n.to_str())
    {
        return n.to_owned();
    }
    dev.rsplit('/').next().unwrap_or(dev).to_owned()
}

fn read_attr(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let t = s.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_owned())
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    read_attr(path)?.parse().ok()
}

fn read_bool(path: &Path) -> Option<bool> {
    match read_attr(path)?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Canonical sysfs path of a device, relative to root (starting with `/sys/`).
fn sysfs_rel(root: &Path, p: &Path) -> Option<String> {
    let canon = fs::canonicalize(p).ok()?;
    let root_canon = fs::canonicalize(root).ok()?;
    let rel = canon.strip_prefix(&root_canon).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// Holders of `name`, transitively (dm-0 on sda1, then dm-1 on dm-0 …).
fn holders_transitive(root: &Path, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut todo = vec![name.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) || seen.len() > 256 {
            continue;
        }
        for h in list_dir(&root.join("sys/class/block").join(&n).join("holders")) {
            if !out.contains(&h) {
                out.push(h.clone());
            }
            todo.push(h);
        }
    }
    out.sort();
    out
}

fn devt_of(root: &Path, name: &str) -> Option<DevT> {
    parse_devt(&read_attr(
        &root.join("sys/class/block").join(name).join("dev"),
    )?)
}

/// Mounts of the named devices (each by its device number, plus swap by name).
fn mounts_of(root: &Path, table: &MountTable, names: &[String]) -> Vec<Mount> {
    let mut out = Vec::new();
    for n in names {
        if let Some(dev) = devt_of(root, n)
            && let Some(ms) = table.by_dev.get(&dev)
        {
            for (mp, fs) in ms {
                out.push(Mount {
                    device: n.clone(),
                    mount_point: mp.clone(),
                    fs_type: fs.clone(),
                });
            }
        }
        for (mp, fs) in table.by_name.get(n).into_iter().flatten() {
            out.push(Mount {
                device: n.clone(),
                mount_point: mp.clone(),
                fs_type: fs.clone(),
            });
        }
        if table.swaps.contains(n) {
            out.push(Mount {
                device: n.clone(),
                mount_point: "[swap]".into(),
                fs_type: "swap".into(),
            });
        }
    }
    out
}

fn read_disk(root: &Path, name: &str, table: &MountTable) -> Disk {
    let dir = root.join("sys/block").join(name);
    let dev = read_attr(&dir.join("dev")).and_then(|s| parse_devt(&s));
    let (major, minor) = dev.unwrap_or((0, 0));
    let sysfs_path = sysfs_rel(root, &dir);
    let sp = sysfs_path.clone().unwrap_or_default();
    let transport = transport_from_path(name, &sp);
    let devdir = dir.join("device");

    let nvme_controller = if transport == Transport::Nvme {
        nvme_controller_of(root, name, &sp)
    } else {
        None
    };
    let nsid = read_attr(&dir.join("nsid"))
        .and_then(|s| s.parse().ok())
        .or_else(|| nvme_nsid_from_name(name));

    let first = |cands: &[PathBuf]| cands.iter().find_map(|p| read_attr(p));
    let model = first(&[devdir.join("model"), dir.join("model")]);
    let vendor = first(&[devdir.join("vendor")]);
    let serial = first(&[devdir.join("serial"), dir.join("serial")])
        .or_else(|| vpd_pg80_serial(&devdir.join("vpd_pg80")));
    let wwn = first(&[
        dir.join("wwid"),
        devdir.join("wwid"),
        dir.join("device/wwn"),
    ]);
    let firmware_rev = first(&[devdir.join("firmware_rev"), devdir.join("rev")]);

    let partitions: Vec<Partition> = list_dir(&dir)
        .into_iter()
        .filter(|n| dir.join(n).join("partition").exists())
        .map(|pn| read_partition(root, &dir, &pn, table))
        .collect();

    let holders = holders_transitive(root, name);
    let mut names_for_mounts = vec![name.to_owned()];
    names_for_mounts.extend(holders.iter().cloned());
    let mut mounts = mounts_of(root, table, &names_for_mounts);
    for p in &partitions {
        mounts.extend(p.mounts.iter().cloned());
    }

    let queue = dir.join("queue");
    let by_path = by_path_from(&sp, transport, nsid);
    Disk {
        name: name.to_owned(),
        dev_path: root.join("dev").join(name),
        major,
        minor,
        size_bytes: read_u64(&dir.join("size")).unwrap_or(0).saturating_mul(512),
        logical_block_size: read_u64(&queue.join("logical_block_size")).map(|v| v as u32),
        physical_block_size: read_u64(&queue.join("physical_block_size")).map(|v| v as u32),
        rotational: read_bool(&queue.join("rotational")),
        removable: read_bool(&dir.join("removable")),
        read_only: read_bool(&dir.join("ro")),
        model,
        vendor,
        serial,
        wwn,
        firmware_rev,
        transport,
        by_path,
        sysfs_path,
        discard_max_bytes: read_u64(&queue.join("discard_max_bytes")),
        discard_granularity: read_u64(&queue.join("discard_granularity")),
        discard_zeroes_data: read_bool(&queue.join("discard_zeroes_data")),
        write_zeroes_max_bytes: read_u64(&queue.join("write_zeroes_max_bytes")),
        nvme_controller,
        nsid,
        partitions,
        holders,
        slaves: list_dir(&dir.join("slaves")),
        mounts,
        boot_device: false,
    }
}

fn read_partition(root: &Path, disk_dir: &Path, name: &str, table: &MountTable) -> Partition {
    let dir = disk_dir.join(name);
    let (major, minor) = read_attr(&dir.join("dev"))
        .and_then(|s| parse_devt(&s))
        .unwrap_or((0, 0));
    let holders = holders_transitive(root, name);
    let mut names = vec![name.to_owned()];
    names.extend(holders.iter().cloned());
    let mounts = mounts_of(root, table, &names);
    Partition {
        name: name.to_owned(),
        dev_path: root.join("dev").join(name),
        major,
        minor,
        number: read_attr(&dir.join("partition")).and_then(|s| s.parse().ok()),
        start_bytes: read_u64(&dir.join("start")).map(|s| s.saturating_mul(512)),
        size_bytes: read_u64(&dir.join("size")).unwrap_or(0).saturating_mul(512),
        holders,
        mounts,
    }
}

/// Classify the transport from the canonical sysfs path.
fn transport_from_path(name: &str, sp: &str) -> Transport {
    if name.starts_with("loop") || sp.contains("/virtual/block/loop") {
        Transport::Loop
    } else if name.starts_with("nvme") || sp.contains("/nvme/") || sp.contains("/nvme-subsys") {
        Transport::Nvme
    } else if sp.contains("/devices/virtual/") {
        Transport::Virtual
    } else if sp.contains("/usb") {
        Transport::Usb
    } else if sp.contains("/virtio") {
        Transport::Virtio
    } else if sp
        .split('/')
        .any(|c| c.starts_with("ata") && c[3..].parse::<u32>().is_ok())
    {
        Transport::Sata
    } else if sp.contains("/end_device-") || sp.contains("/sas_") || sp.contains("/expander-") {
        Transport::Sas
    } else if sp.contains("/mmc_host/") || name.starts_with("mmcblk") {
        Transport::Mmc
    } else if sp
        .split('/')
        .any(|c| c.starts_with("host") && c[4..].parse::<u32>().is_ok())
    {
        Transport::Scsi
    } else {
        Transport::Other
    }
}

fn is_pci_addr(c: &str) -> bool {
    // dddd:bb:dd.f
    let b = c.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && c.chars()
            .enumerate()
            .all(|(i, ch)| matches!(i, 4 | 7 | 10) || ch.is_ascii_hexdigit())
}

/// A udev-like path id: the last PCI function on the path, plus the transport's own address.
fn by_path_from(sp: &str, transport: Transport, nsid: Option<u32>) -> Option<String> {
    let comps: Vec<&str> = sp.split('/').collect();
    let pci = comps.iter().rev().find(|c| is_pci_addr(c))?;
    let mut id = format!("pci-{pci}");
    match transport {
        Transport::Nvme => {
            if let Some(n) = nsid {
                id.push_str(&format!("-nvme-{n}"));
            }
        }
        Transport::Sata => {
            if let Some(a) = comps
                .iter()
                .find(|c| c.starts_with("ata") && c[3..].parse::<u32>().is_ok())
            {
                id.push_str(&format!("-ata-{}", &a[3..]));
            }
        }
        Transport::Usb => {
            // The last usb port component looks like `2-1.4:1.0`.
            if let Some(u) = comps.iter().rev().find(|c| {
                c.contains(':')
                    && c.contains('-')
                    && c.chars().next().is_some_and(|ch| ch.is_ascii_digit())
            }) {
                id.push_str(&format!("-usb-{u}"));
            }
            if let Some(h) = scsi_hctl(&comps) {
                id.push_str(&format!("-scsi-{h}"));
            }
        }
        Transport::Sas | Transport::Scsi => {
            if let Some(e) = comps.iter().find(|c| c.starts_with("end_device-")) {
                id.push_str(&format!("-sas-{e}"));
            }
            if let Some(h) = scsi_hctl(&comps) {
                id.push_str(&format!("-scsi-{h}"));
            }
        }
        _ => {}
    }
    Some(id)
}

fn scsi_hctl(comps: &[&str]) -> Option<String> {
    comps
        .iter()
        .rev()
        .find(|c| {
            let parts: Vec<&str> = c.split(':').collect();
            parts.len() == 4 && parts.iter().all(|p| p.parse::<u32>().is_ok())
        })
        .map(|s| s.to_string())
}

fn nvme_nsid_from_name(name: &str) -> Option<u32> {
    // nvme<ctrl>n<nsid>
    let rest = name.strip_prefix("nvme")?;
    let (_, ns) = rest.split_once('n')?;
    ns.parse().ok()
}

/// Controller name for an NVMe namespace, on both the plain and the multipath layout.
fn nvme_controller_of(root: &Path, name: &str, sp: &str) -> Option<String> {
    // Plain: …/nvme/nvme0/nvme0n1 ; the component after "nvme" is the controller.
    let comps: Vec<&str> = sp.split('/').collect();
    if let Some(i) = comps.iter().position(|c| *c == "nvme")
        && let Some(c) = comps.get(i + 1)
    {
        return Some((*c).to_owned());
    }
    // Multipath: …/nvme-subsys0/nvme0n1, controllers are nvme-subsys0/nvme*[0-9].
    if let Some(i) = comps.iter().position(|c| c.starts_with("nvme-subsys")) {
        let subsys = root.join(comps[1..=i].join("/"));
        if let Some(c) = list_dir(&subsys).into_iter().find(|c| {
            c.strip_prefix("nvme")
                .is_some_and(|r| !r.is_empty() && r.chars().all(|ch| ch.is_ascii_digit()))
        }) {
            return Some(c);
        }
    }
    // Fall back to the kernel name: nvme0n1 → nvme0.
    let rest = name.strip_prefix("nvme")?;
    let (ctrl, _) = rest.split_once('n')?;
    Some(format!("nvme{ctrl}"))
}

/// SCSI VPD page 0x80 (unit serial number): 4-byte header, then ASCII.
fn vpd_pg80_serial(path: &Path) -> Option<String> {
    let b = fs::read(path).ok()?;
    if b.len() < 4 || b[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let body = b.get(4..4 + len.min(b.len() - 4))?;
    let s = String::from_utf8_lossy(body).trim().to_owned();
    if s.is_empty() { None } else { Some(s) }
}

/// What points at the device this system booted from.
struct BootHints {
    devs: Vec<DevT>,
    names: BTreeSet<String>,
}

impl BootHints {
    fn read(root: &Path, table: &MountTable) -> BootHints {
        let mut devs: Vec<DevT> = table.boot_devs.clone();
        devs.extend(table.root_dev);
        let mut names: BTreeSet<String> = table.boot_names.iter().cloned().collect();
        if let Ok(cmdline) = fs::read_to_string(root.join("proc/cmdline")) {
            for arg in cmdline.split_whitespace() {
                let Some(val) = arg.strip_prefix("root=") else {
                    continue;
                };
                let link = if let Some(u) = val.strip_prefix("UUID=") {
                    Some(format!("dev/disk/by-uuid/{u}"))
                } else if let Some(u) = val.strip_prefix("PARTUUID=") {
                    Some(format!("dev/disk/by-partuuid/{}", u.to_lowercase()))
                } else if let Some(l) = val.strip_prefix("LABEL=") {
                    Some(format!("dev/disk/by-label/{l}"))
                } else if val.starts_with("/dev/") {
                    Some(val.trim_start_matches('/').to_owned())
                } else {
                    None
                };
                if let Some(l) = link {
                    names.insert(resolve_dev_name(root, &l));
                } else if let Some(d) = parse_devt(val) {
                    devs.push(d);
                }
            }
        }
        BootHints { devs, names }
    }

    /// The disk is the boot device if it, a partition, a holder, or something it is
    /// stacked under holds a boot hint.
    fn matches(&self, root: &Path, d: &Disk) -> bool {
        let mut names: Vec<String> = vec![d.name.clone()];
        names.extend(d.holders.iter().cloned());
        for p in &d.partitions {
            names.push(p.name.clone());
            names.extend(p.holders.iter().cloned());
        }
        names.iter().any(|n| {
            self.names.contains(n) || devt_of(root, n).is_some_and(|dt| self.devs.contains(&dt))
        }) || self.devs.contains(&(d.major, d.minor))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builder for a sysfs/procfs fixture shaped like the real thing: devices live under
    /// `sys/devices/...`, `sys/block/X` and `sys/class/block/X` are relative symlinks.
    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for d in [
                "sys/block",
                "sys/class/block",
                "proc/self",
                "dev/disk/by-uuid",
            ] {
                fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            fs::write(dir.path().join("proc/cmdline"), "console=ttyS0\n").unwrap();
            fs::write(dir.path().join("proc/self/mountinfo"), "").unwrap();
            Fixture { dir }
        }
        pub fn root(&self) -> &Path {
            self.dir.path()
        }
        pub fn write(&self, rel: &str, content: &str) {
            let p = self.root().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        /// Add a whole disk at `devpath` (relative to sys/devices) with attributes.
        pub fn disk(&self, devpath: &str, name: &str, dev: &str, sectors: u64) -> PathBuf {
            let full = self
                .root()
                .join("sys/devices")
                .join(devpath)
                .join("block")
                .join(name);
            fs::create_dir_all(full.join("queue")).unwrap();
            fs::create_dir_all(full.join("holders")).unwrap();
            fs::create_dir_all(full.join("slaves")).unwrap();
            fs::write(full.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(full.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(full.join("queue/logical_block_size"), "512\n").unwrap();
            fs::write(full.join("queue/physical_block_size"), "4096\n").unwrap();
            fs::write(full.join("queue/rotational"), "0\n").unwrap();
            fs::write(full.join("removable"), "0\n").unwrap();
            fs::write(full.join("ro"), "0\n").unwrap();
            let rel_from_sys_block = format!("../devices/{devpath}/block/{name}");
            symlink(
                &rel_from_sys_block,
                self.root().join("sys/block").join(name),
            )
            .unwrap();
            symlink(
                format!("../../devices/{devpath}/block/{name}"),
                self.root().join("sys/class/block").join(name),
            )
            .unwrap();
            full
        }
        pub fn partition(&self, disk_dir: &Path, name: &str, dev: &str, num: u32) {
            let p = disk_dir.join(name);
            fs::create_dir_all(p.join("holders")).unwrap();
            fs::write(p.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(p.join("partition"), format!("{num}\n")).unwrap();
            fs::write(p.join("start"), "2048\n").unwrap();
            fs::write(p.join("size"), "1000\n").unwrap();
            let rel = p
                .strip_prefix(self.root().join("sys"))
                .unwrap()
                .to_string_lossy()
                .into_owned();
            symlink(
                format!("../../{rel}"),
                self.root().join("sys/class/block").join(name),
            )
            .unwrap();
        }
        /// Add a virtual device (dm, md) holding `on` (a class/block name).
        pub fn holder(&self, name: &str, dev: &str, on: &str) {
            let full = self.root().join("sys/devices/virtual/block").join(name);
            fs::create_dir_all(full.join("holders")).unwrap();
            fs::create_dir_all(full.join("slaves")).unwrap();
            fs::write(full.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(full.join("size"), "100\n").unwrap();
            symlink(
                format!("../devices/virtual/block/{name}"),
                self.root().join("sys/block").join(name),
            )
            .unwrap();
            symlink(
                format!("../../devices/virtual/block/{name}"),
                self.root().join("sys/class/block").join(name),
            )
            .unwrap();
            let on_dir = fs::canonicalize(self.root().join("sys/class/block").join(on)).unwrap();
            symlink(&full, on_dir.join("holders").join(name)).unwrap();
            symlink(on_dir, full.join("slaves").join(on)).unwrap();
        }
        pub fn mountinfo(&self, lines: &[&str]) {
            self.write("proc/self/mountinfo", &(lines.join("\n") + "\n"));
        }
    }

    pub(crate) fn sample() -> Fixture {
        let f = Fixture::new();
        // NVMe namespace on a PCI controller.
        let nv = f.disk(
            "pci0000:00/0000:00:03.0/nvme/nvme0",
            "nvme0n1",
            "259:0",
            2097152,
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/model",
            "QEMU NVMe Ctrl                          \n",
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/serial",
            "deadbeef\n",
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/firmware_rev",
            "7.2.0\n",
        );
        symlink("../../../nvme0", nv.join("device")).unwrap();
        f.write(
            "sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/block/nvme0n1/wwid",
            "eui.0000000000000001\n",
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/block/nvme0n1/nsid",
            "1\n",
        );
        // SATA disk with a partition holding an LVM volume that is mounted.
        let sda = f.disk(
            "pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0",
            "sda",
            "8:0",
            4194304,
        );
        symlink("../../../2:0:0:0", sda.join("device")).unwrap();
        f.write(
            "sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/model",
            "Samsung SSD 870\n",
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/vendor",
            "ATA     \n",
        );
        f.write(
            "sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/rev",
            "2B6Q\n",
        );
        let mut pg80 = vec![0u8, 0x80, 0, 6];
        pg80.extend_from_slice(b"S5Y1NX");
        fs::write(
            f.root().join(
                "sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/vpd_pg80",
            ),
            pg80,
        )
        .unwrap();
        f.partition(&sda, "sda1", "8:1", 1);
        f.partition(&sda, "sda2", "8:2", 2);
        f.holder("dm-0", "254:0", "sda2");
        // virtio disk, untouched.
        f.disk("pci0000:00/0000:00:04.0/virtio1", "vda", "252:0", 1000);
        f.write(
            "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/serial",
            "vblk1\n",
        );
        // USB stick, removable, booted from (live medium).
        let sdb = f.disk(
            "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host5/target5:0:0/5:0:0:0",
            "sdb",
            "8:16",
            64000,
        );
        fs::write(sdb.join("removable"), "1\n").unwrap();
        f.partition(&sdb, "sdb1", "8:17", 1);
        // A loop device.
        f.disk("virtual", "loop0", "7:0", 2048);
        f.mountinfo(&[
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw",
            "23 22 0:5 / /proc rw - proc proc rw",
            "30 22 8:17 / /run/live/medium ro - iso9660 /dev/sdb1 ro",
            "31 22 8:1 / /mnt/my\\040disk rw - vfat /dev/sda1 rw",
        ]);
        f
    }

    #[test]
    fn enumerates_disks_with_attributes() {
        let f = sample();
        let disks = enumerate(f.root()).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["dm-0", "loop0", "nvme0n1", "sda", "sdb", "vda"]);

        let nv = &disks[2];
        assert_eq!(nv.transport, Transport::Nvme);
        assert_eq!((nv.major, nv.minor), (259, 0));
        assert_eq!(nv.size_bytes, 1 << 30);
        assert_eq!(nv.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(nv.serial.as_deref(), Some("deadbeef"));
        assert_eq!(nv.firmware_rev.as_deref(), Some("7.2.0"));
        assert_eq!(nv.wwn.as_deref(), Some("eui.0000000000000001"));
        assert_eq!(nv.nvme_controller.as_deref(), Some("nvme0"));
        assert_eq!(nv.nsid, Some(1));
        assert_eq!(nv.by_path.as_deref(), Some("pci-0000:00:03.0-nvme-1"));
        assert_eq!(nv.logical_block_size, Some(512));
        assert_eq!(nv.physical_block_size, Some(4096));
        assert_eq!(nv.dev_path, f.root().join("dev/nvme0n1"));
        assert!(nv.mounts.is_empty() && nv.holders.is_empty() && !nv.boot_device);
        assert_eq!(nv.discard_max_bytes, None);

        let sda = &disks[3];
        assert_eq!(sda.transport, Transport::Sata);
        assert_eq!(sda.model.as_deref(), Some("Samsung SSD 870"));
        assert_eq!(sda.vendor.as_deref(), Some("ATA"));
        assert_eq!(sda.firmware_rev.as_deref(), Some("2B6Q"));
        assert_eq!(sda.serial.as_deref(), Some("S5Y1NX"));
        assert_eq!(sda.by_path.as_deref(), Some("pci-0000:00:1f.2-ata-3"));
        assert_eq!(sda.partitions.len(), 2);
        assert_eq!(sda.partitions[0].number, Some(1));
        assert_eq!(sda.partitions[0].start_bytes, Some(2048 * 512));
        assert_eq!(sda.partitions[0].mounts[0].mount_point, "/mnt/my disk");
        assert_eq!(sda.partitions[1].holders, ["dm-0"]);
        assert!(sda.holders.is_empty());
        assert_eq!(sda.all_holders(), ["dm-0"]);
        assert_eq!(sda.mount_points(), ["/", "/mnt/my disk"]);
        assert!(sda.boot_device, "root fs is on dm-0 over sda2");

        let sdb = &disks[4];
        assert_eq!(sdb.transport, Transport::Usb);
        assert_eq!(sdb.removable, Some(true));
        assert!(sdb.boot_device, "live medium");
        assert_eq!(
            sdb.by_path.as_deref(),
            Some("pci-0000:00:14.0-usb-2-1:1.0-scsi-5:0:0:0")
        );

        let vda = &disks[5];
        assert_eq!(vda.transport, Transport::Virtio);
        assert_eq!(vda.serial.as_deref(), Some("vblk1"));
        assert_eq!(vda.by_path.as_deref(), Some("pci-0000:00:04.0"));
        assert!(!vda.boot_device);

        assert_eq!(disks[1].transport, Transport::Loop);
        assert_eq!(disks[0].transport, Transport::Virtual);
        assert_eq!(disks[0].slaves, ["sda2"]);
    }

    /// The sysfs tree captured from a QEMU q35 guest by
    /// `tests/fixtures/capture-inventory-qemu.sh` (NVMe with two namespaces, partitioned
    /// virtio disk).
    pub(crate) fn captured_qemu_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35")
    }

    #[test]
    fn enumerates_the_captured_qemu_tree() {
        let root = captured_qemu_root();
        let disks = enumerate(&root).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "nvme0n2", "vda"]);
        for (d, ns) in disks[..2].iter().zip(1..) {
            assert_eq!(d.transport, Transport::Nvme);
            assert_eq!(d.model.as_deref(), Some("QEMU NVMe Ctrl"));
            assert_eq!(d.serial.as_deref(), Some("deadbeef"));
            assert_eq!(d.firmware_rev.as_deref(), Some("7.2.22"));
            assert_eq!(d.nvme_controller.as_deref(), Some("nvme0"));
            assert_eq!(d.nsid, Some(ns));
            assert_eq!(d.size_bytes, 32 << 20);
            assert_eq!(
                d.by_path.as_deref(),
                Some(format!("pci-0000:00:03.0-nvme-{ns}").as_str())
            );
            assert!(d.wwn.as_deref().unwrap().starts_with("nvme.1b36-"));
            assert_eq!(d.discard_max_bytes, Some(2147483136));
        }
        let vda = &disks[2];
        assert_eq!(vda.transport, Transport::Virtio);
        assert_eq!((vda.major, vda.minor), (254, 0));
        assert_eq!(vda.serial.as_deref(), Some("VB0001"));
        assert_eq!(vda.by_path.as_deref(), Some("pci-0000:00:02.0"));
        assert_eq!(vda.partitions.len(), 1);
        assert_eq!(vda.partitions[0].name, "vda1");
        assert_eq!(vda.partitions[0].start_bytes, Some(2048 * 512));
        assert_eq!(vda.partitions[0].size_bytes, 129024 * 512);
        assert!(disks.iter().all(|d| !d.boot_device && d.mounts.is_empty()));
    }

    #[test]
    fn missing_attributes_become_none() {
        let f = Fixture::new();
        let d = f.disk("pci0000:00/0000:00:05.0/virtio2", "vdb", "252:16", 8);
        for a in ["queue/logical_block_size", "removable", "ro", "size"] {
            fs::remove_file(d.join(a)).unwrap();
        }
        let disks = enumerate(f.root()).unwrap();
        assert_eq!(disks[0].logical_block_size, None);
        assert_eq!(disks[0].removable, None);
        assert_eq!(disks[0].size_bytes, 0);
        assert_eq!(disks[0].logical_block_size_or_default(), 512);
    }

    #[test]
    fn swap_and_cmdline_root_are_seen() {
        let f = Fixture::new();
        let d = f.disk("pci0000:00/0000:00:05.0/virtio2", "vdb", "252:16", 8);
        f.partition(&d, "vdb1", "252:17", 1);
        let e = f.disk("pci0000:00/0000:00:06.0/virtio3", "vdc", "252:32", 8);
        f.partition(&e, "vdc1", "252:33", 1);
        fs::write(f.root().join("dev/vdc1"), "").unwrap();
        symlink("../../vdc1", f.root().join("dev/disk/by-uuid/1234-abcd")).unwrap();
        f.write(
            "proc/swaps",
            "Filename Type Size Used Priority\n/dev/vdb1 partition 100 0 -2\n",
        );
        f.write(
            "proc/cmdline",
            "BOOT_IMAGE=/vmlinuz root=UUID=1234-abcd ro quiet\n",
        );
        let disks = enumerate(f.root()).unwrap();
        assert_eq!(disks[0].mount_points(), ["[swap]"]);
        assert!(!disks[0].boot_device);
        assert!(disks[1].boot_device);
    }

    #[test]
    fn missing_mountinfo_fails() {
        let f = Fixture::new();
        fs::remove_file(f.root().join("proc/self/mountinfo")).unwrap();
        let e = enumerate(f.root()).unwrap_err();
        assert_eq!(e.code(), "mount_table_unreadable");
        assert!(e.to_string().starts_with("reading mount table "));
    }

    #[test]
    fn find_by_name_or_path() {
        let f = sample();
        let disks = enumerate(f.root()).unwrap();
        assert_eq!(
            find(&disks, "sda").map(|(d, p)| (d.name.as_str(), p)),
            Some(("sda", None))
        );
        assert_eq!(
            find(&disks, "/dev/sda1").map(|(d, p)| (d.name.as_str(), p)),
            Some(("sda", Some(0)))
        );
        assert!(find(&disks, "sdz").is_none());
    }

    /// btrfs reports an anonymous device number; its source names the partition.
    #[test]
    fn btrfs_mounts_are_found_by_their_source() {
        let t = parse_mountinfo(
            "29 1 0:26 / / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 rw,ssd\n\
             30 29 0:26 /home /home rw shared:2 - btrfs /dev/nvme0n1p2 rw\n\
             31 29 0:5 / /dev rw - devtmpfs udev rw\n",
        );
        let mounted = t.by_name.get("nvme0n1p2").unwrap();
        assert_eq!(mounted.len(), 2);
        assert_eq!(mounted[0], ("/".to_owned(), "btrfs".to_owned()));
        assert_eq!(t.boot_names, vec!["nvme0n1p2".to_owned()]);
        assert!(!t.by_name.contains_key("udev"), "not a /dev/ source");
    }

    #[test]
    fn mountinfo_octal_and_transport_rules() {
        assert_eq!(unescape_octal("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_octal("\\04"), "\\04");
        assert_eq!(
            transport_from_path(
                "sdc",
                "/sys/devices/pci0000:00/0000:00:1.0/host0/port-0:0/expander-0:0/port-0:0:1/end_device-0:0:1/target0:0:1/0:0:1:0/block/sdc"
            ),
            Transport::Sas
        );
        assert_eq!(
            transport_from_path(
                "nvme0n1",
                "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1"
            ),
            Transport::Nvme
        );
        assert_eq!(
            transport_from_path(
                "mmcblk0",
                "/sys/devices/platform/x/mmc_host/mmc0/mmc0:0001/block/mmcblk0"
            ),
            Transport::Mmc
        );
        assert_eq!(
            transport_from_path("ram0", "/sys/devices/virtual/block/ram0"),
            Transport::Virtual
        );
        assert!(is_pci_addr("0000:00:1f.2"));
        assert!(!is_pci_addr("pci0000:00"));
    }
}
