//! Waiting until the set of block devices has stopped changing, so that "every disk" means
//! every disk.
//!
//! Loading a storage driver does not make its disks exist: NVMe controllers are reset and
//! brought `live` by a work queue, then their namespaces are scanned by another; SAS/SCSI
//! HBAs scan targets asynchronously and `sd` attaches each disk after talking to it. An erase
//! that enumerates the moment coldplug's module loads return can miss disks and still report
//! `complete`.
//!
//! The rule ([`wait`]), polled under the root path every [`SettleRule::poll`]:
//! - the observed state is the names and sizes in `sys/block`, every NVMe controller in
//!   `sys/class/nvme/` with its `state` and the namespaces below it, and every SCSI disk
//!   (`sys/class/scsi_device/*/device`, peripheral type 0 or 14) with whether `sd` has given
//!   it a block device yet;
//! - it is *settled* when that state has not changed for [`SettleRule::quiet`], every NVMe
//!   controller is `live` and every SCSI disk has its block device;
//! - it fails after [`SettleRule::timeout`], naming what was still changing or not ready.
//!
//! Why these defaults: 2 s of quiet is an order of magnitude above the gap between
//! consecutive disks of one scan (namespaces of a live controller appear within
//! milliseconds of each other; disks behind a SAS expander within tens to hundreds of
//! milliseconds), and costs nothing next to an erase that takes minutes to hours. The quiet
//! period restarts at every change, so a controller that comes `live` late still gets its
//! namespace scan counted. 60 s bounds the wait well above the few seconds real NVMe
//! controllers and HBAs take to come ready after their driver loads (the wait starts only
//! once coldplug has loaded the drivers), and keeps a machine with a dead controller from
//! holding the task forever: it fails with `hardware_not_ready` and the controller may retry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DiskError;
use crate::clock::{Clock, SystemClock};

/// The settle rule's numbers (see the module documentation for why the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleRule {
    /// How long the observed state must stay unchanged.
    pub quiet: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// Time between two observations.
    pub poll: Duration,
}

impl Default for SettleRule {
    fn default() -> Self {
        SettleRule {
            quiet: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

/// Why the block devices are not known to be complete.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    List(#[from] DiskError),
    #[error(
        "block devices did not settle within {} s: {}",
        waited.as_secs_f64().round(),
        what.join("; ")
    )]
    Timeout {
        waited: Duration,
        /// What was still changing or not ready when the bound passed.
        what: Vec<String>,
    },
    #[error("cancelled while waiting for block devices to settle")]
    Cancelled,
}

impl SettleError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            SettleError::List(e) => e.code(),
            SettleError::Timeout { .. } => molar_protocol::codes::HARDWARE_NOT_READY,
            SettleError::Cancelled => molar_protocol::codes::CANCELLED,
        }
    }
}

/// What a settled wait saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub waited: Duration,
    /// Entries of `sys/block` at the end.
    pub block_devices: usize,
}

/// One observation of everything that must stop changing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Snapshot {
    /// `sys/block` name → `size` (sectors; `None` when unreadable).
    block: BTreeMap<String, Option<u64>>,
    /// NVMe controller → (`state`, namespaces and namespace paths below it).
    nvme: BTreeMap<String, (String, BTreeSet<String>)>,
    /// SCSI disk (H:C:T:L) → whether `sd` has attached a block device.
    scsi_disks: BTreeMap<String, bool>,
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Snapshot {
    fn read(root: &Path) -> Result<Snapshot, DiskError> {
        let block_dir = root.join("sys/block");
        let entries = fs::read_dir(&block_dir).map_err(|source| DiskError::ListBlock {
            path: block_dir.clone(),
            source,
        })?;
        let mut s = Snapshot::default();
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(name) = e.file_name().into_string() {
                let size =
                    read_trimmed(&block_dir.join(&name).join("size")).and_then(|v| v.parse().ok());
                s.block.insert(name, size);
            }
        }
        // A machine without the nvme or scsi driver has no such class directory.
        let nvme = root.join("sys/class/nvme");
        for ctrl in names(&nvme) {
            let dir = nvme.join(&ctrl);
            let state = read_trimmed(&dir.join("state")).unwrap_or_else(|| "unknown".into());
            let ns = names(&dir)
                .into_iter()
                .filter(|n| n.starts_with("nvme"))
                .collect();
            s.nvme.insert(ctrl, (state, ns));
        }
        let scsi = root.join("sys/class/scsi_device");
        for hctl in names(&scsi) {
            let dev = scsi.join(&hctl).join("device");
            // Peripheral device type 0 (direct access) or 14 (RBC): sd's disks. CD-ROMs,
            // tapes and enclosures are not waited for.
            let is_disk = matches!(read_trimmed(&dev.join("type")).as_deref(), Some("0" | "14"));
            if is_disk {
                let attached = !names(&dev.join("block")).is_empty();
                s.scsi_disks.insert(hctl, attached);
            }
        }
        Ok(s)
    }

    /// What keeps the state from counting as settled however long it stays unchanged.
    fn not_ready(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nvme
            .iter()
            .filter(|(_, (state, _))| state != "live")
            .map(|(c, (state, _))| format!("nvme controller {c} is {state}, not live"))
            .collect();
        v.extend(
            self.scsi_disks
                .iter()
                .filter(|(_, attached)| !**attached)
                .map(|(h, _)| {
                    format!("scsi disk {h} has no block device yet (sd still probing it)")
                }),
        );
        v
    }

    /// What changed from `old` to `self`.
    fn changes_since(&self, old: &Snapshot) -> Vec<String> {
        let mut v = Vec::new();
        for (n, size) in &self.block {
            match old.block.get(n) {
                None => v.push(format!("{n} appeared")),
                Some(s) if s != size => v.push(format!("{n} changed size")),
                _ => {}
            }
        }
        v.extend(
            old.block
                .keys()
                .filter(|n| !self.block.contains_key(*n))
                .map(|n| format!("{n} disappeared")),
        );
        for (c, (state, ns)) in &self.nvme {
            match old.nvme.get(c) {
                None => v.push(format!("nvme controller {c} appeared")),
                Some((s, _)) if s != state => {
                    v.push(format!("nvme controller {c} went from {s} to {state}"))
                }
                Some((_, n)) if n != ns => v.push(format!("namespaces of {c} changed")),
                _ => {}
            }
        }
        v.extend(
            old.nvme
                .keys()
                .filter(|c| !self.nvme.contains_key(*c))
                .map(|c| format!("nvme controller {c} disappeared")),
        );
        if self.scsi_disks != old.scsi_disks {
            v.push("scsi disks changed".into());
        }
        v
    }
}

/// Wait until the block devices under `root` have settled (see the module documentation).
pub fn wait(
    root: &Path,
    rule: &SettleRule,
    cancel: &CancellationToken,
) -> Result<Settled, SettleError> {
    wait_with(root, rule, cancel, &SystemClock::new())
}

/// [`wait`] on the given clock.
pub fn wait_with(
    root: &Path,
    rule: &SettleRule,
    cancel: &CancellationToken,
    clock: &dyn Clock,
) -> Result<Settled, SettleError> {
    let start = clock.now();
    let mut last = Snapshot::read(root)?;
    let mut changed_at = start;
    let mut last_changes: Vec<String> = Vec::new();
    loop {
        let now = clock.now();
        let not_ready = last.not_ready();
        let quiet_for = now.saturating_sub(changed_at);
        if not_ready.is_empty() && quiet_for >= rule.quiet {
            return Ok(Settled {
                waited: now.saturating_sub(start),
                block_devices: last.block.len(),
            });
        }
        if now.saturating_sub(start) >= rule.timeout {
            let mut what = not_ready;
            if quiet_for < rule.quiet {
                let ago = format!("{:.1} s ago", quiet_for.as_secs_f64());
                what.extend(last_changes.iter().map(|c| format!("{c} {ago}")));
            }
            return Err(SettleError::Timeout {
                waited: now.saturating_sub(start),
                what,
            });
        }
        if cancel.is_cancelled() {
            return Err(SettleError::Cancelled);
        }
        clock.sleep(rule.poll);
        let next = Snapshot::read(root)?;
        if next != last {
            last_changes = next.changes_since(&last);
            changed_at = clock.now();
            last = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::disks::tests::Fixture;

    const MS: Duration = Duration::from_millis(1);

    fn rule() -> SettleRule {
        SettleRule::default()
    }

    fn nvme_ctrl(root: &Path, ctrl: &str, state: &str, namespaces: &[&str]) {
        let d = root.join("sys/class/nvme").join(ctrl);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("state"), format!("{state}\n")).unwrap();
        for n in namespaces {
            fs::create_dir_all(d.join(n)).unwrap();
        }
    }

    fn scsi_disk(root: &Path, hctl: &str, block: Option<&str>) {
        let d = root.join("sys/class/scsi_device").join(hctl).join("device");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("type"), "0\n").unwrap();
        if let Some(b) = block {
            fs::create_dir_all(d.join("block").join(b)).unwrap();
        }
    }

    #[test]
    fn a_stable_tree_settles_after_the_quiet_period() {
        let f = Fixture::new();
        f.disk("pci0000:00/0000:00:03.0/nvme/nvme0", "nvme0n1", "259:0", 8);
        nvme_ctrl(f.root(), "nvme0", "live", &["nvme0n1"]);
        scsi_disk(f.root(), "2:0:0:0", Some("sda"));
        let clock = FakeClock::new();
        let s = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap();
        assert_eq!(s.block_devices, 1);
        assert_eq!(s.waited, Duration::from_secs(2));
    }

    #[test]
    fn every_change_restarts_the_quiet_period() {
        let f = Fixture::new();
        nvme_ctrl(f.root(), "nvme0", "connecting", &[]);
        let root = f.root().to_owned();
        // The controller comes live at 1 s, its namespaces show up at 1.5 s and 2.5 s.
        let clock = FakeClock::new().on_sleep(move |now| {
            if now == Duration::from_millis(1000) {
                nvme_ctrl(&root, "nvme0", "live", &[]);
            }
            if now == Duration::from_millis(1500) {
                nvme_ctrl(&root, "nvme0", "live", &["nvme0n1"]);
                fs::create_dir_all(root.join("sys/block/nvme0n1")).unwrap();
            }
            if now == Duration::from_millis(2500) {
                fs::create_dir_all(root.join("sys/block/nvme0n2")).unwrap();
            }
        });
        let s = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap();
        assert_eq!(s.block_devices, 2);
        assert_eq!(s.waited, Duration::from_millis(4500));
    }

    #[test]
    fn a_controller_that_never_comes_live_times_out_naming_it() {
        let f = Fixture::new();
        nvme_ctrl(f.root(), "nvme0", "live", &["nvme0n1"]);
        nvme_ctrl(f.root(), "nvme1", "resetting", &[]);
        let clock = FakeClock::new();
        let e = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap_err();
        assert_eq!(e.code(), "hardware_not_ready");
        let m = e.to_string();
        assert_eq!(
            m,
            "block devices did not settle within 60 s: nvme controller nvme1 is resetting, \
             not live"
        );
        assert_eq!(clock.now(), Duration::from_secs(60));
    }

    #[test]
    fn a_scsi_disk_without_its_block_device_is_waited_for() {
        let f = Fixture::new();
        scsi_disk(f.root(), "2:0:0:0", None);
        let root = f.root().to_owned();
        let clock = FakeClock::new().on_sleep(move |now| {
            if now == Duration::from_secs(3) {
                scsi_disk(&root, "2:0:0:0", Some("sda"));
            }
        });
        let s = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap();
        assert_eq!(s.waited, Duration::from_secs(5));
        // Without sd ever attaching, the timeout names the disk.
        let f = Fixture::new();
        scsi_disk(f.root(), "3:0:1:0", None);
        let e = wait_with(
            f.root(),
            &rule(),
            &CancellationToken::new(),
            &FakeClock::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("scsi disk 3:0:1:0 has no block device yet")
        );
    }

    #[test]
    fn devices_that_keep_appearing_time_out_naming_the_last_change() {
        let f = Fixture::new();
        let root = f.root().to_owned();
        let mut n = 0;
        // A new disk every second: never two quiet seconds.
        let clock = FakeClock::new().on_sleep(move |now| {
            if now.as_millis() % 1000 == 0 {
                n += 1;
                fs::create_dir_all(root.join(format!("sys/block/sd{n}"))).unwrap();
            }
        });
        let e = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap_err();
        assert_eq!(e.code(), "hardware_not_ready");
        assert_eq!(
            e.to_string(),
            "block devices did not settle within 60 s: sd60 appeared 0.0 s ago"
        );
    }

    #[test]
    fn a_size_change_counts_as_a_change() {
        let f = Fixture::new();
        let d = f.disk("pci0000:00/0000:00:05.0/virtio2", "vdb", "252:16", 0);
        let clock = FakeClock::new().on_sleep(move |now| {
            if now == Duration::from_millis(1900) {
                fs::write(d.join("size"), "2048\n").unwrap();
            }
        });
        let s = wait_with(f.root(), &rule(), &CancellationToken::new(), &clock).unwrap();
        assert_eq!(s.waited, Duration::from_millis(3900));
    }

    #[test]
    fn a_missing_sys_block_fails_at_once_and_cancel_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let e = wait_with(
            dir.path(),
            &rule(),
            &CancellationToken::new(),
            &FakeClock::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "disk_list_failed");
        let f = Fixture::new();
        nvme_ctrl(f.root(), "nvme0", "new", &[]);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = wait_with(f.root(), &rule(), &cancel, &FakeClock::new()).unwrap_err();
        assert_eq!(e.code(), "cancelled");
    }

    #[test]
    fn the_real_clock_settles_a_quiet_tree_in_milliseconds() {
        let f = Fixture::new();
        let r = SettleRule {
            quiet: 5 * MS,
            timeout: Duration::from_secs(5),
            poll: MS,
        };
        let s = wait(f.root(), &r, &CancellationToken::new()).unwrap();
        assert!(s.waited >= 5 * MS);
    }
}
