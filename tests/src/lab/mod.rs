//! The lab: real components on loopback for end-to-end tests — `ipmi_sim` as a server's BMC
//! (owning its power), `qemu-system-x86_64` booting molar's kernel and initramfs with NVMe,
//! virtio disks, a restricted user network and SMBIOS identity, and a static HTTP server for
//! images. LAB.md holds the measured facts this follows.
//!
//! Everything is torn down whatever happens: each process sits in a guard that kills it by
//! PID and waits on drop, panics included. When a test panics, the console logs of its
//! lab directory are copied to `target/lab-logs/<test>/` and the path is printed.
//!
//! ```no_run
//! use molar_tests::lab::{Lab, QemuConfig};
//! let Some(lab) = Lab::require("my_test") else { return };
//! let mut cfg = QemuConfig::server(&lab);
//! cfg.append.push("panic=-1".into());
//! let vm = lab.spawn_qemu(&cfg).unwrap();
//! vm.wait_for_console("Run /init as init process", std::time::Duration::from_secs(60)).unwrap();
//! ```

pub mod guest;
mod http;
mod ipmi_sim;
mod process;
mod qemu;
mod serial_relay;

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use http::{Faults, HttpFiles};
pub use ipmi_sim::{BMC_MAC, BmcUser, IpmiSim, IpmiSimConfig};
pub use process::ChildGuard;
pub use qemu::{
    Accel, Boot, Disk, DiskKind, Firmware, Machine, Nic, OVMF_CODE, OVMF_VARS, Qemu, QemuConfig,
    Smbios,
};
pub use serial_relay::SerialRelay;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// The PXE artefacts the lab boots, as `molar-imagebuilder build` writes them.
#[derive(Debug, Clone)]
pub struct Images {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// The uncompressed kernel (`build --vmlinux`), when present: QEMU boots it via PVH.
    pub vmlinux: Option<PathBuf>,
    pub initramfs: PathBuf,
    pub boot_ipxe: PathBuf,
}

impl Images {
    /// `$MOLAR_LAB_OUT`, else `target/lab/images` (where `scripts/lab-images` builds them).
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("MOLAR_LAB_OUT") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => target_dir().join("lab/images"),
        }
    }

    pub fn in_dir(dir: &Path) -> Images {
        Images {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            vmlinux: Some(dir.join("vmlinux")).filter(|p| p.is_file()),
            initramfs: dir.join("initramfs.img"),
            boot_ipxe: dir.join("boot.ipxe"),
        }
    }

    /// The kernel `-kernel` boots take: vmlinux (PVH, faster) when built, else vmlinuz.
    pub fn direct_boot_kernel(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.vmlinuz)
    }

    fn missing(&self) -> Vec<String> {
        [&self.vmlinuz, &self.initramfs, &self.boot_ipxe]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect()
    }
}

/// The programs the lab runs.
pub const TOOLS: &[&str] = &["qemu-system-x86_64", "ipmi_sim", "ipmitool", "busybox"];

/// `PATH` lookup.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The kernel package `scripts/fetch-kernel` downloaded (`$MOLAR_CACHE/kernel/*.deb`).
pub fn kernel_package() -> Option<PathBuf> {
    let cache = match std::env::var_os("MOLAR_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_dir().join("molar-cache"),
    };
    let mut debs: Vec<PathBuf> = fs::read_dir(cache.join("kernel"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("linux-image-") && name.ends_with(".deb") && !name.contains("-dbg")
        })
        .collect();
    debs.sort();
    debs.into_iter().next()
}

/// A test's missing prerequisite: outside CI prints why the test is skipped and returns
/// `None`; with `CI=true` panics naming it.
pub fn skip_or_fail<T>(test: &str, reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {reason}");
    }
    eprintln!("skipped {test}: {reason}");
    None
}

/// One test's lab: a private directory for disks, configs and console logs, and the images
/// to boot. Keep it alive longer than the VMs and BMCs started from it (declare it first).
#[derive(Debug)]
pub struct Lab {
    test: String,
    dir: tempfile::TempDir,
    images: Images,
    keep_logs: bool,
}

impl Lab {
    /// Checks the lab's prerequisites (the programs in [`TOOLS`], the built images and, when
    /// they are missing, the kernel package they are built from). Outside CI a missing one
    /// prints why the test is skipped and returns `None`; with `CI=true` it panics naming it.
    pub fn require(test: &str) -> Option<Lab> {
        let mut missing: Vec<String> = TOOLS
            .iter()
            .filter(|t| which(t).is_none())
            .map(|t| format!("{t} (not in PATH)"))
            .collect();
        let images = Images::in_dir(&Images::default_dir());
        let absent = images.missing();
        if !absent.is_empty() {
            let how = if kernel_package().is_some() {
                "run scripts/lab-images"
            } else {
                "run scripts/fetch-kernel, then scripts/lab-images"
            };
            missing.push(format!("the lab images {} ({how})", absent.join(", ")));
        }
        if !missing.is_empty() {
            let reason = format!("lab prerequisites missing: {}", missing.join("; "));
            return skip_or_fail(test, &reason);
        }
        match Lab::new(test, images) {
            Ok(lab) => Some(lab),
            Err(e) => panic!("{test}: creating the lab directory: {e:#}"),
        }
    }

    /// A lab over explicit images, without the prerequisite check.
    pub fn new(test: &str, images: Images) -> Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("molar-lab-{test}-"))
            .tempdir()
            .context("creating a temp dir")?;
        Ok(Lab {
            test: test.to_string(),
            dir,
            images,
            keep_logs: false,
        })
    }

    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// The lab's private directory (removed when the lab drops).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Keeps the logs in `target/lab-logs/<test>/` even if the test passes.
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
    }

    /// Starts QEMU as a child of the test.
    pub fn spawn_qemu(&self, cfg: &QemuConfig) -> Result<Qemu> {
        Qemu::spawn(self, cfg)
    }

    /// Starts `ipmi_sim`; with `cfg.power` set it owns that VM's power.
    pub fn start_ipmi_sim(&self, cfg: IpmiSimConfig) -> Result<IpmiSim> {
        IpmiSim::start(self, cfg)
    }

    /// Where the logs of this test are copied.
    pub fn log_dir(&self) -> PathBuf {
        target_dir().join("lab-logs").join(&self.test)
    }

    fn save_logs(&self) -> Result<PathBuf> {
        let dest = self.log_dir();
        fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        for entry in fs::read_dir(self.dir()).context("listing the lab directory")? {
            let path = entry?.path();
            let is_log = path
                .extension()
                .is_some_and(|e| e == "log" || e == "out" || e == "conf" || e == "emu");
            if is_log && let Some(name) = path.file_name() {
                fs::copy(&path, dest.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        Ok(dest)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep_logs {
            match self.save_logs() {
                Ok(dest) => eprintln!("lab logs of {}: {}", self.test, dest.display()),
                Err(e) => eprintln!("lab logs of {} could not be kept: {e:#}", self.test),
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding 127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")
        .context("binding 127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something listens on 127.0.0.1:`port` (`tcp`) or is bound to it (`udp`),
/// read from /proc/net so the check itself opens no connection.
pub fn loopback_port_open(proto: &str, port: u16) -> bool {
    let Ok(table) = fs::read_to_string(format!("/proc/net/{proto}")) else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && (f[1] == local || f[1] == any) && (proto != "tcp" || f[3] == "0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_test_keeps_its_console_log() {
        let name = format!("lab-selftest-{}", std::process::id());
        let result = std::panic::catch_unwind(|| {
            let lab = Lab::new(&name, Images::in_dir(Path::new("/nonexistent"))).unwrap();
            fs::write(lab.dir().join("server-console.log"), "last words\n").unwrap();
            fs::write(lab.dir().join("disk0.img"), "not a log").unwrap();
            panic!("the test failed");
        });
        assert!(result.is_err());
        let kept = target_dir().join("lab-logs").join(&name);
        let log = fs::read_to_string(kept.join("server-console.log"));
        let disk_copied = kept.join("disk0.img").exists();
        let _ = fs::remove_dir_all(&kept);
        assert_eq!(log.unwrap(), "last words\n");
        assert!(!disk_copied, "disk images are not logs");
    }

    #[test]
    fn a_passing_test_leaves_nothing() {
        let name = format!("lab-selftest-pass-{}", std::process::id());
        let dir;
        {
            let lab = Lab::new(&name, Images::in_dir(Path::new("/nonexistent"))).unwrap();
            dir = lab.dir().to_path_buf();
            fs::write(lab.dir().join("server-console.log"), "fine\n").unwrap();
        }
        assert!(!dir.exists());
        assert!(!target_dir().join("lab-logs").join(&name).exists());
    }

    #[test]
    fn reads_listening_ports_from_proc() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(loopback_port_open("tcp", port));
        drop(l);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(loopback_port_open("udp", u.local_addr().unwrap().port()));
    }
}
