//! The narrow interface between `standbye.run_image` and the world: every mount, module load,
//! partition re-read, config drive write, kexec load, BMC boot flag and final jump goes
//! through [`BootSystem`]. The real implementation ([`LinuxBoot`]) does them; the recording
//! fake of the tests writes down each call, so the task's order of events (the final status
//! acknowledged before the jump) is tested without root. Reading the image's files, its
//! partition table and efivarfs is not here: those take paths, like the rest of the agent.

use crate::hw::kexec::KexecError;
use molar_protocol::bmc::BootDeviceResult;
use molar_protocol::configdrive::{ConfigDrive, ConfigDriveFormat, ConfigDriveOutcome};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// The mount options that keep a read-only mount from writing the disk: `MS_RDONLY` alone
/// lets ext3/ext4 replay a dirty journal, XFS recover its log and btrfs replay its log tree
/// onto the device. `noload`/`norecovery`/`nologreplay` read the filesystem as it is.
pub fn no_replay_options(fstype: &str) -> Option<&'static str> {
    match fstype {
        "ext3" | "ext4" => Some("noload"),
        "xfs" => Some("norecovery"),
        "btrfs" => Some("nologreplay"),
        _ => None,
    }
}

/// What a mount reads: a partition's own node, or a read-only loop window of the disk where
/// there is none (a loop device here, a ramdisk whose devtmpfs has not made the node yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Node(PathBuf),
    Window {
        disk: PathBuf,
        offset: u64,
        len: u64,
    },
}

/// How the machine leaves the ramdisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    /// `reboot(LINUX_REBOOT_CMD_KEXEC)` into the loaded kernel.
    Kexec,
    /// `reboot(RB_AUTOBOOT)` through the firmware.
    Reboot,
}

/// A side effect that failed, with what was attempted in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct SysError {
    pub code: String,
    pub msg: String,
}

impl SysError {
    pub fn new(code: &str, msg: impl Into<String>) -> Self {
        SysError {
            code: code.to_owned(),
            msg: msg.into(),
        }
    }
}

/// The world `standbye.run_image` changes. Usable from several threads.
pub trait BootSystem: Send + Sync {
    /// Loads kernel modules by name or alias (filesystems, `loop`); returns what failed.
    fn load_modules(&self, names: &[&str]) -> Vec<String>;
    /// BLKRRPART on `disk`, so partition nodes match the table.
    fn reread_partitions(&self, disk: &Path) -> Result<(), SysError>;
    /// Mounts `source` read only on `target`; returns where its files are read (`target`,
    /// or in the fake a fixture tree).
    fn mount_ro(&self, source: &Source, target: &Path, fstype: &str) -> Result<PathBuf, SysError>;
    fn umount(&self, target: &Path) -> Result<(), SysError>;
    /// Mounts efivarfs on `target` (read-write: boot entries are written there).
    fn mount_efivarfs(&self, target: &Path) -> Result<(), SysError>;
    /// The image id `standbye.prepare_image` last wrote to `device` in this agent.
    fn image_written_on(&self, device: &Path) -> Option<String>;
    /// Writes the config drive partition on `device`.
    fn write_config_drive(
        &self,
        device: &Path,
        spec: &ConfigDrive,
        format: ConfigDriveFormat,
    ) -> Result<ConfigDriveOutcome, SysError>;
    fn kexec_load(
        &self,
        kernel: &Path,
        initrds: &[PathBuf],
        cmdline: &str,
    ) -> Result<(), KexecError>;
    fn kexec_unload(&self) -> Result<(), KexecError>;
    /// Next boot from disk through the local BMC; `Ok(None)` when there is no BMC.
    fn bmc_boot_from_disk(&self, efi: bool) -> Result<Option<BootDeviceResult>, SysError>;
    /// Syncs, then leaves: returns only on failure (or in the fake).
    fn jump(&self, how: Jump) -> Result<(), SysError>;
}

type ConfigDriveWriter = dyn Fn(&Path, &ConfigDrive, ConfigDriveFormat) -> Result<ConfigDriveOutcome, SysError>
    + Send
    + Sync;
type BmcBoot = dyn Fn(bool) -> Result<Option<BootDeviceResult>, SysError> + Send + Sync;
type WrittenOn = dyn Fn(&Path) -> Option<String> + Send + Sync;

/// The real thing. The capability supplies the parts that live in other modules: the
/// config drive writer, the BMC, what was written where.
pub struct LinuxBoot {
    /// Root of `/lib/modules`, `/dev` (loop devices).
    pub root: PathBuf,
    /// Load filesystem modules first (the ramdisk has no modprobe for the kernel to call).
    pub load_modules: bool,
    pub config_drive: Box<ConfigDriveWriter>,
    pub bmc: Box<BmcBoot>,
    pub written_on: Box<WrittenOn>,
}

fn errno(what: String) -> impl FnOnce(nix::Error) -> SysError {
    move |e| SysError::new("mount_failed", format!("{what}: {e}"))
}

impl BootSystem for LinuxBoot {
    fn load_modules(&self, names: &[&str]) -> Vec<String> {
        if !self.load_modules {
            return Vec::new();
        }
        use crate::ramdisk::modules::{Loader, ModuleIndex};
        use crate::ramdisk::sys::{LinuxSystem, System};
        let sys = LinuxSystem;
        let release = match sys.kernel_release() {
            Ok(r) => r,
            Err(e) => return vec![format!("kernel release: {e}")],
        };
        let index = match ModuleIndex::read(&self.root.join("lib/modules").join(release)) {
            Ok(i) => i,
            Err(e) => return vec![e.to_string()],
        };
        let mut loader = Loader::new(&sys, &index, 1);
        names
            .iter()
            .filter(|n| !loader.load(n))
            .map(|n| format!("module {n} did not load"))
            .collect()
    }

    fn reread_partitions(&self, disk: &Path) -> Result<(), SysError> {
        let f = std::fs::File::open(disk)
            .map_err(|e| SysError::new("io_error", format!("opening {}: {e}", disk.display())))?;
        crate::hw::block::reread_partitions(&f)
            .map_err(|e| SysError::new(e.code(), format!("{}: {e}", disk.display())))
    }

    fn mount_ro(&self, source: &Source, target: &Path, fstype: &str) -> Result<PathBuf, SysError> {
        std::fs::create_dir_all(target).map_err(|e| {
            SysError::new(
                "mount_failed",
                format!("creating {}: {e}", target.display()),
            )
        })?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let data = no_replay_options(fstype);
        let what = |dev: &Path| {
            format!(
                "mounting {} ({fstype}) on {}",
                dev.display(),
                target.display()
            )
        };
        match source {
            Source::Node(dev) => {
                nix::mount::mount(Some(dev), target, Some(fstype), flags, data)
                    .map_err(errno(what(dev)))?;
            }
            Source::Window { disk, offset, len } => {
                let window = crate::hw::loop_dev::LoopWindow::map(
                    &self.root.join("dev"),
                    disk,
                    *offset,
                    *len,
                )
                .map_err(|e| SysError::new(e.code(), e.to_string()))?;
                nix::mount::mount(Some(window.device()), target, Some(fstype), flags, data)
                    .map_err(errno(what(window.device())))?;
                // Dropping the window now leaves it auto-clearing: it goes with the umount.
            }
        }
        Ok(target.to_path_buf())
    }

    fn umount(&self, target: &Path) -> Result<(), SysError> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            SysError::new(
                "umount_failed",
                format!("unmounting {}: {e}", target.display()),
            )
        })?;
        let _ = std::fs::remove_dir(target);
        Ok(())
    }

    fn mount_efivarfs(&self, target: &Path) -> Result<(), SysError> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(
            Some("efivarfs"),
            target,
            Some("efivarfs"),
            flags,
            None::<&str>,
        )
        .map_err(errno(format!("mounting efivarfs on {}", target.display())))
    }

    fn image_written_on(&self, device: &Path) -> Option<String> {
        (self.written_on)(device)
    }

    fn write_config_drive(
        &self,
        device: &Path,
        spec: &ConfigDrive,
        format: ConfigDriveFormat,
    ) -> Result<ConfigDriveOutcome, SysError> {
        (self.config_drive)(device, spec, format)
    }

    fn kexec_load(
        &self,
        kernel: &Path,
        initrds: &[PathBuf],
        cmdline: &str,
    ) -> Result<(), KexecError> {
        crate::hw::kexec::load(kernel, initrds, cmdline)
    }

    fn kexec_unload(&self) -> Result<(), KexecError> {
        crate::hw::kexec::unload()
    }

    fn bmc_boot_from_disk(&self, efi: bool) -> Result<Option<BootDeviceResult>, SysError> {
        (self.bmc)(efi)
    }

    fn jump(&self, how: Jump) -> Result<(), SysError> {
        nix::unistd::sync();
        match how {
            Jump::Kexec => match crate::hw::kexec::execute() {
                Ok(never) => match never {},
                Err(e) => Err(SysError::new(e.code(), e.to_string())),
            },
            Jump::Reboot => {
                match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
                    Ok(never) => match never {},
                    Err(e) => Err(SysError::new("reboot_failed", format!("reboot(2): {e}"))),
                }
            }
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! The recording [`BootSystem`] of the tests.
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// One call as the fake saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        LoadModules(Vec<String>),
        Reread(PathBuf),
        Mount {
            source: Source,
            target: PathBuf,
            fstype: String,
        },
        Umount(PathBuf),
        MountEfivarfs(PathBuf),
        ConfigDrive {
            device: PathBuf,
            format: ConfigDriveFormat,
        },
        KexecLoad {
            kernel: PathBuf,
            initrds: Vec<PathBuf>,
            cmdline: String,
        },
        KexecUnload,
        BmcDisk {
            efi: bool,
        },
        Jump(Jump),
        /// Not a call: the controller stand-in stored a terminal status (tests push it into
        /// the same record to check the order).
        Stored(String),
    }

    #[derive(Default)]
    pub struct RecordingBoot {
        pub calls: Arc<Mutex<Vec<Call>>>,
        /// Partition byte offset → fixture tree a mount of it shows.
        pub trees: HashMap<u64, PathBuf>,
        pub written: HashMap<PathBuf, String>,
        pub kexec_error: Option<fn() -> KexecError>,
        pub bmc: Option<BootDeviceResult>,
        pub bmc_error: Option<SysError>,
    }

    impl RecordingBoot {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
    }

    impl BootSystem for RecordingBoot {
        fn load_modules(&self, names: &[&str]) -> Vec<String> {
            self.record(Call::LoadModules(
                names.iter().map(|n| n.to_string()).collect(),
            ));
            Vec::new()
        }
        fn reread_partitions(&self, disk: &Path) -> Result<(), SysError> {
            self.record(Call::Reread(disk.to_path_buf()));
            Ok(())
        }
        fn mount_ro(
            &self,
            source: &Source,
            target: &Path,
            fstype: &str,
        ) -> Result<PathBuf, SysError> {
            self.record(Call::Mount {
                source: source.clone(),
                target: target.to_path_buf(),
                fstype: fstype.to_owned(),
            });
            let offset = match source {
                Source::Window { offset, .. } => *offset,
                Source::Node(_) => u64::MAX,
            };
            self.trees
                .get(&offset)
                .cloned()
                .ok_or_else(|| SysError::new("mount_failed", format!("nothing at offset {offset}")))
        }
        fn umount(&self, target: &Path) -> Result<(), SysError> {
            self.record(Call::Umount(target.to_path_buf()));
            Ok(())
        }
        fn mount_efivarfs(&self, target: &Path) -> Result<(), SysError> {
            self.record(Call::MountEfivarfs(target.to_path_buf()));
            Ok(())
        }
        fn image_written_on(&self, device: &Path) -> Option<String> {
            self.written.get(device).cloned()
        }
        fn write_config_drive(
            &self,
            device: &Path,
            _spec: &ConfigDrive,
            format: ConfigDriveFormat,
        ) -> Result<ConfigDriveOutcome, SysError> {
            self.record(Call::ConfigDrive {
                device: device.to_path_buf(),
                format,
            });
            Ok(ConfigDriveOutcome {
                partition_number: 3,
                start_bytes: 7 << 20,
                size_bytes: 64 << 20,
                format,
                reused: false,
                notes: Vec::new(),
            })
        }
        fn kexec_load(
            &self,
            kernel: &Path,
            initrds: &[PathBuf],
            cmdline: &str,
        ) -> Result<(), KexecError> {
            self.record(Call::KexecLoad {
                kernel: kernel.to_path_buf(),
                initrds: initrds.to_vec(),
                cmdline: cmdline.to_owned(),
            });
            match self.kexec_error {
                Some(e) => Err(e()),
                None => Ok(()),
            }
        }
        fn kexec_unload(&self) -> Result<(), KexecError> {
            self.record(Call::KexecUnload);
            Ok(())
        }
        fn bmc_boot_from_disk(&self, efi: bool) -> Result<Option<BootDeviceResult>, SysError> {
            self.record(Call::BmcDisk { efi });
            match &self.bmc_error {
                Some(e) => Err(e.clone()),
                None => Ok(self.bmc.clone()),
            }
        }
        fn jump(&self, how: Jump) -> Result<(), SysError> {
            self.record(Call::Jump(how));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journaled_filesystems_are_mounted_without_replaying_their_logs() {
        assert_eq!(no_replay_options("ext4"), Some("noload"));
        assert_eq!(no_replay_options("xfs"), Some("norecovery"));
        assert_eq!(no_replay_options("btrfs"), Some("nologreplay"));
        assert_eq!(no_replay_options("vfat"), None);
    }
}
