//! The one narrow gate every destructive action on a device (erase, image write) goes through.
//!
//! DESIGN.md "Safety of destructive operations": the agent acts on a device only when its
//! [`Authority`] allows it (the ramdisk's init, or a device the operator named with
//! `--allow-host`: [`crate::authority`] decides); never on a device with a mounted filesystem
//! (on the disk, its partitions or anything stacked on them), a holder (dm, md, bcache …), the
//! device the system booted from, removable media unless named, or a partition unless named.
//! Each refusal is a typed [`Refusal`] that the caller reports as `skipped: <reason>`.
//!
//! The only way to obtain a [`ClearedTarget`] — what destructive code takes as input — is
//! [`select_targets`], so a device that was not checked cannot be erased by mistake. The
//! kernel enforces the same rule a second time: the erase engine opens with `O_EXCL`, which
//! fails with `EBUSY` on anything mounted or claimed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::authority::{Action, Device};
use crate::disks::{Disk, Partition, Transport};

/// Who may change the machine; kept at this path for the erase engine.
pub use crate::authority::Authority;

/// Why a device was not touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    NotAllowedOnHost,
    Excluded,
    Mounted { mount_points: Vec<String> },
    HasHolders { holders: Vec<String> },
    BootDevice,
    RemovableMedia,
    PartitionNotNamed,
    ReadOnly,
    Empty,
    CoveredByDisk { disk: String },
}

impl Refusal {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::NotAllowedOnHost => "not_allowed_on_host",
            Refusal::Excluded => "excluded",
            Refusal::Mounted { .. } => "mounted",
            Refusal::HasHolders { .. } => "has_holders",
            Refusal::BootDevice => "boot_device",
            Refusal::RemovableMedia => "removable_media",
            Refusal::PartitionNotNamed => "partition_not_named",
            Refusal::ReadOnly => "read_only",
            Refusal::Empty => "empty",
            Refusal::CoveredByDisk { .. } => "covered_by_disk",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound => write!(f, "no such block device"),
            Refusal::NotAllowedOnHost => write!(
                f,
                "not running as the ramdisk's init and the device was not named with --allow-host"
            ),
            Refusal::Excluded => write!(f, "excluded by request"),
            Refusal::Mounted { mount_points } => {
                write!(f, "mounted at {}", mount_points.join(", "))
            }
            Refusal::HasHolders { holders } => {
                write!(f, "in use by {} (dm/md/stacked device)", holders.join(", "))
            }
            Refusal::BootDevice => write!(f, "the system booted from this device"),
            Refusal::RemovableMedia => {
                write!(f, "removable media is erased only when named explicitly")
            }
            Refusal::PartitionNotNamed => write!(f, "partitions are erased only when named"),
            Refusal::ReadOnly => write!(f, "device is read-only"),
            Refusal::Empty => write!(f, "device has no media (size 0)"),
            Refusal::CoveredByDisk { disk } => {
                write!(f, "the whole disk {disk} is erased already")
            }
        }
    }
}

/// A device left alone, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// What was named, or the device path for devices from the default set.
    pub device: String,
    pub refusal: Refusal,
}

impl Skipped {
    /// `skipped: <reason>`.
    pub fn reason(&self) -> String {
        format!("skipped: {}", self.refusal)
    }
}

/// A device that passed every check. Only [`select_targets`] builds these.
#[derive(Debug, Clone)]
pub struct ClearedTarget {
    disk: Disk,
    partition: Option<Partition>,
    /// Other whole disks on the same NVMe controller that are *not* cleared: controller-wide
    /// operations (sanitize, format with FNA scope "all") are not allowed then.
    nvme_siblings_not_cleared: Vec<String>,
}

impl ClearedTarget {
    /// The whole disk (for a partition: the disk that contains it).
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }
    pub fn is_partition(&self) -> bool {
        self.partition.is_some()
    }
    pub fn name(&self) -> &str {
        self.partition.as_ref().map_or(&self.disk.name, |p| &p.name)
    }
    pub fn dev_path(&self) -> &Path {
        self.partition
            .as_ref()
            .map_or(&self.disk.dev_path, |p| &p.dev_path)
    }
    pub fn size_bytes(&self) -> u64 {
        self.partition
            .as_ref()
            .map_or(self.disk.size_bytes, |p| p.size_bytes)
    }
    /// True when every namespace of this disk's NVMe controller is cleared too, so an
    /// operation on the whole controller touches nothing else.
    pub fn owns_nvme_controller(&self) -> bool {
        !self.is_partition() && self.nvme_siblings_not_cleared.is_empty()
    }
}

/// Kernel name of a device given by name or path (symlinks under `root/dev` resolved).
pub fn device_name(root: &Path, spec: &str) -> String {
    if spec.starts_with('/') {
        let p = root.join(spec.trim_start_matches('/'));
        if let Ok(c) = std::fs::canonicalize(&p)
            && let Some(n) = c.file_name().and_then(|n| n.to_str())
        {
            return n.to_owned();
        }
        return PathBuf::from(spec)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(spec)
            .to_owned();
    }
    spec.to_owned()
}

/// Check one device for `action`; `named` says the operator asked for it by name.
fn check(
    root: &Path,
    authority: &Authority,
    action: DeviceAction,
    disk: &Disk,
    partition: Option<&Partition>,
    named: bool,
) -> Result<(), Refusal> {
    let name = partition.map_or(&disk.name, |p| &p.name);
    if authority.decide(&action(Device { root, name })).is_err() {
        return Err(Refusal::NotAllowedOnHost);
    }
    if disk.boot_device {
        return Err(Refusal::BootDevice);
    }
    let (mounts, holders, size) = match partition {
        // Something holding the whole disk (multipath, md on the raw disk) holds every
        // partition of it too.
        Some(p) => (
            p.mounts.iter().map(|m| m.mount_point.clone()).collect(),
            p.holders.iter().chain(&disk.holders).cloned().collect(),
            p.size_bytes,
        ),
        None => (disk.mount_points(), disk.all_holders(), disk.size_bytes),
    };
    if !mounts.is_empty() {
        let mut mount_points: Vec<String> = mounts;
        mount_points.sort();
        mount_points.dedup();
        return Err(Refusal::Mounted { mount_points });
    }
    if !holders.is_empty() {
        return Err(Refusal::HasHolders { holders });
    }
    if partition.is_some() && !named {
        return Err(Refusal::PartitionNotNamed);
    }
    let removable = disk.removable == Some(true) || disk.transport == Transport::Usb;
    if removable && !named {
        return Err(Refusal::RemovableMedia);
    }
    if disk.read_only == Some(true) {
        return Err(Refusal::ReadOnly);
    }
    if size == 0 {
        return Err(Refusal::Empty);
    }
    Ok(())
}

/// Devices erased when none are named: real disks with media. Loop, ram, zram, dm and md
/// devices are not disks of the machine and are only considered when named.
fn in_default_set(d: &Disk) -> bool {
    !matches!(d.transport, Transport::Loop | Transport::Virtual) && d.size_bytes > 0
}

/// (label, (disk index, partition index) when found, named by the operator)
type Candidate = (String, Option<(usize, Option<usize>)>, bool);

/// Which device action a selection is for: `|d| Action::Erase(d)`, `|d| Action::WriteImage(d)`...
/// (a closure: the variant itself is not a function for every lifetime, clippy's
/// `redundant_closure` notwithstanding).
pub type DeviceAction = for<'a> fn(Device<'a>) -> Action<'a>;

/// Decide which devices may be erased. `devices = None` means every whole disk.
/// Returns the cleared targets and the skipped devices with their reasons.
pub fn select_targets(
    root: &Path,
    disks: &[Disk],
    authority: &Authority,
    devices: Option<&[String]>,
    exclude: &[String],
) -> (Vec<ClearedTarget>, Vec<Skipped>) {
    #[allow(clippy::redundant_closure)] // see DeviceAction
    select_targets_for(
        root,
        disks,
        authority,
        |d| Action::Erase(d),
        devices,
        exclude,
    )
}

/// [`select_targets`] for any device action (an image write asks about `Action::WriteImage`).
pub fn select_targets_for(
    root: &Path,
    disks: &[Disk],
    authority: &Authority,
    action: DeviceAction,
    devices: Option<&[String]>,
    exclude: &[String],
) -> (Vec<ClearedTarget>, Vec<Skipped>) {
    let excluded: BTreeSet<String> = exclude.iter().map(|s| device_name(root, s)).collect();

    let mut candidates: Vec<Candidate> = Vec::new();
    match devices {
        Some(list) => {
            let mut seen = BTreeSet::new();
            for spec in list {
                let name = device_name(root, spec);
                if !seen.insert(name.clone()) {
                    continue;
                }
                let found = disks.iter().enumerate().find_map(|(i, d)| {
                    if d.name == name {
                        Some((i, None))
                    } else {
                        d.partitions
                            .iter()
                            .position(|p| p.name == name)
                            .map(|pi| (i, Some(pi)))
                    }
                });
                candidates.push((spec.clone(), found, true));
            }
        }
        None => {
            for (i, d) in disks.iter().enumerate() {
                if in_default_set(d) {
                    candidates.push((d.dev_path.display().to_string(), Some((i, None)), false));
                }
            }
        }
    }

    let mut cleared_idx: Vec<(usize, Option<usize>)> = Vec::new();
    let mut skipped = Vec::new();
    for (label, found, named) in candidates {
        let Some((di, pi)) = found else {
            skipped.push(Skipped {
                device: label,
                refusal: Refusal::NotFound,
            });
            continue;
        };
        let disk = &disks[di];
        let part = pi.map(|p| &disk.partitions[p]);
        let name = part.map_or(&disk.name, |p| &p.name);
        let label = if named {
            label
        } else {
            disk.dev_path.display().to_string()
        };
        if excluded.contains(name) || (part.is_some() && excluded.contains(&disk.name)) {
            skipped.push(Skipped {
                device: label,
                refusal: Refusal::Excluded,
            });
            continue;
        }
        match check(root, authority, action, disk, part, named) {
            Ok(()) => cleared_idx.push((di, pi)),
            Err(refusal) => skipped.push(Skipped {
                device: label,
                refusal,
            }),
        }
    }

    // A partition whose whole disk is also cleared is covered by it.
    let whole: BTreeSet<usize> = cleared_idx
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(d, _)| *d)
        .collect();
    let mut out = Vec::new();
    for (di, pi) in &cleared_idx {
        let disk = &disks[*di];
        if let Some(p) = pi
            && whole.contains(di)
        {
            skipped.push(Skipped {
                device: disk.partitions[*p].dev_path.display().to_string(),
                refusal: Refusal::CoveredByDisk {
                    disk: disk.name.clone(),
                },
            });
            continue;
        }
        let nvme_siblings_not_cleared = match &disk.nvme_controller {
            Some(ctrl) => disks
                .iter()
                .enumerate()
                .filter(|(j, d)| {
                    j != di && d.nvme_controller.as_deref() == Some(ctrl) && !whole.contains(j)
                })
                .map(|(_, d)| d.name.clone())
                .collect(),
            None => Vec::new(),
        };
        out.push(ClearedTarget {
            disk: disk.clone(),
            partition: pi.map(|p| disk.partitions[p].clone()),
            nvme_siblings_not_cleared,
        });
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::{enumerate, tests::sample};

    fn names(t: &[ClearedTarget]) -> Vec<&str> {
        t.iter().map(|t| t.name()).collect()
    }

    fn codes(s: &[Skipped]) -> Vec<(String, &'static str)> {
        s.iter()
            .map(|s| {
                (
                    s.device.rsplit('/').next().unwrap_or("").to_owned(),
                    s.refusal.code(),
                )
            })
            .collect()
    }

    #[test]
    fn ramdisk_default_set_skips_mounted_boot_and_removable() {
        let f = sample();
        let disks = enumerate(f.root()).unwrap();
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, None, &[]);
        assert_eq!(names(&t), ["nvme0n1", "vda"]);
        // sda holds / (through dm-0) and a mounted partition; sdb is the live medium.
        assert_eq!(
            codes(&s),
            [
                ("sda".to_owned(), "boot_device"),
                ("sdb".to_owned(), "boot_device")
            ]
        );
        assert!(t[0].owns_nvme_controller());
        assert_eq!(t[0].dev_path(), f.root().join("dev/nvme0n1"));
        assert_eq!(s[0].reason(), "skipped: the system booted from this device");
    }

    #[test]
    fn mounted_holders_removable_and_partitions() {
        let f = sample();
        let mut disks = enumerate(f.root()).unwrap();
        for d in &mut disks {
            d.boot_device = false;
        }
        let list: Vec<String> = ["sda", "sda2", "dm-0", "sdb", "/dev/sdb1", "nope"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert!(t.is_empty());
        let c = codes(&s);
        for name in ["sda", "sda2", "dm-0", "sdb", "sdb1"] {
            assert!(c.contains(&(name.into(), "mounted")), "{name}: {c:?}");
        }
        assert!(c.contains(&("nope".into(), "not_found")), "{c:?}");
        match &s.iter().find(|s| s.device == "sda").unwrap().refusal {
            Refusal::Mounted { mount_points } => {
                assert_eq!(mount_points, &["/", "/mnt/my disk"])
            }
            other => panic!("{other:?}"),
        }
        // Once unmounted, a named removable disk is allowed and covers its partition; not
        // named, it is refused.
        f.mountinfo(&["23 1 0:5 / /proc rw - proc proc rw"]);
        let disks = enumerate(f.root()).unwrap();
        let list = vec!["sdb".to_owned(), "sdb1".to_owned()];
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert_eq!(names(&t), ["sdb"]);
        assert_eq!(codes(&s), [("sdb1".to_owned(), "covered_by_disk")]);
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, None, &[]);
        assert_eq!(names(&t), ["nvme0n1", "vda"], "sda still carries dm-0");
        assert!(codes(&s).contains(&("sdb".into(), "removable_media")));
    }

    #[test]
    fn holders_refuse_the_disk_and_partition_needs_a_name() {
        let f = sample();
        // Unmount everything: sda2 still carries dm-0.
        f.mountinfo(&["23 1 0:5 / /proc rw - proc proc rw"]);
        let disks = enumerate(f.root()).unwrap();
        let list = vec!["sda".to_owned(), "sda1".to_owned()];
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert_eq!(names(&t), ["sda1"]);
        assert!(t[0].is_partition());
        assert_eq!(t[0].size_bytes(), 1000 * 512);
        assert_eq!(codes(&s), [("sda".to_owned(), "has_holders")]);
        assert_eq!(
            s[0].reason(),
            "skipped: in use by dm-0 (dm/md/stacked device)"
        );
        // A holder of the whole disk also refuses its partitions.
        let mut disks = disks;
        let sda = disks.iter_mut().find(|d| d.name == "sda").unwrap();
        sda.holders = vec!["md0".into()];
        let list = vec!["sda1".to_owned()];
        let (t, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert!(t.is_empty());
        assert_eq!(codes(&s), [("sda1".to_owned(), "has_holders")]);
    }

    #[test]
    fn host_mode_only_allows_named_devices() {
        let f = sample();
        let disks = enumerate(f.root()).unwrap();
        let auth = Authority::Host {
            allowed: vec!["/dev/loop0".into()],
        };
        let list = vec!["loop0".to_owned(), "vda".to_owned()];
        let (t, s) = select_targets(f.root(), &disks, &auth, Some(&list), &[]);
        assert_eq!(names(&t), ["loop0"]);
        assert_eq!(codes(&s), [("vda".to_owned(), "not_allowed_on_host")]);
        // Default set in host mode: nothing allowed, loop devices not even candidates.
        let (t, s) = select_targets(f.root(), &disks, &auth, None, &[]);
        assert!(t.is_empty());
        assert!(
            s.iter()
                .all(|s| matches!(s.refusal, Refusal::NotAllowedOnHost | Refusal::BootDevice))
        );
        // Empty allow list refuses everything.
        let none = Authority::Host { allowed: vec![] };
        let (t, _) = select_targets(f.root(), &disks, &none, Some(&list), &[]);
        assert!(t.is_empty());
        // --allow-host-power changes nothing about devices; every device action asks the same.
        let power = Authority::host(&["/dev/loop0".into()], true);
        #[allow(clippy::redundant_closure)] // see DeviceAction
        let actions: [DeviceAction; 3] = [
            |d| Action::Erase(d),
            |d| Action::WriteImage(d),
            |d| Action::EditPartitions(d),
        ];
        for action in actions {
            let (t, s) = select_targets_for(f.root(), &disks, &power, action, Some(&list), &[]);
            assert_eq!(names(&t), ["loop0"]);
            assert_eq!(codes(&s), [("vda".to_owned(), "not_allowed_on_host")]);
        }
    }

    #[test]
    fn exclusions_and_nvme_siblings() {
        let f = sample();
        let nv2 = f.disk(
            "pci0000:00/0000:00:03.0/nvme/nvme0",
            "nvme0n2",
            "259:1",
            2048,
        );
        let _ = nv2;
        let disks = enumerate(f.root()).unwrap();
        let (t, s) = select_targets(
            f.root(),
            &disks,
            &Authority::Ramdisk,
            None,
            &["/dev/nvme0n2".into()],
        );
        assert_eq!(names(&t), ["nvme0n1", "vda"]);
        assert!(codes(&s).contains(&("nvme0n2".into(), "excluded")));
        assert!(!t[0].owns_nvme_controller(), "nvme0n2 is not cleared");
        let (t, _) = select_targets(f.root(), &disks, &Authority::Ramdisk, None, &[]);
        assert_eq!(names(&t), ["nvme0n1", "nvme0n2", "vda"]);
        assert!(t[0].owns_nvme_controller() && t[1].owns_nvme_controller());
    }

    #[test]
    fn captured_qemu_tree_clears_both_namespaces_and_the_virtio_disk() {
        let root = crate::disks::tests::captured_qemu_root();
        let disks = enumerate(&root).unwrap();
        let (t, s) = select_targets(&root, &disks, &Authority::Ramdisk, None, &[]);
        assert_eq!(names(&t), ["nvme0n1", "nvme0n2", "vda"]);
        assert!(s.is_empty());
        assert!(t[0].owns_nvme_controller() && t[1].owns_nvme_controller());
        let (t, s) = select_targets(
            &root,
            &disks,
            &Authority::Ramdisk,
            None,
            &["nvme0n2".into()],
        );
        assert_eq!(names(&t), ["nvme0n1", "vda"]);
        assert_eq!(codes(&s), [("nvme0n2".to_owned(), "excluded")]);
        assert!(!t[0].owns_nvme_controller());
    }

    #[test]
    fn read_only_and_empty_are_refused() {
        let f = sample();
        let mut disks = enumerate(f.root()).unwrap();
        let vda = disks.iter_mut().find(|d| d.name == "vda").unwrap();
        vda.read_only = Some(true);
        let list = vec!["vda".to_owned()];
        let (_, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert_eq!(codes(&s), [("vda".to_owned(), "read_only")]);
        let vda = disks.iter_mut().find(|d| d.name == "vda").unwrap();
        vda.read_only = Some(false);
        vda.size_bytes = 0;
        let (_, s) = select_targets(f.root(), &disks, &Authority::Ramdisk, Some(&list), &[]);
        assert_eq!(codes(&s), [("vda".to_owned(), "empty")]);
    }
}
