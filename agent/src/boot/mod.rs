//! Starting the written image: find its kernel, set up the firmware to boot it, kexec or
//! reboot. `standbye.run_image` ([`crate::capabilities`]) drives these in order.
//!
//! - [`table`]: the image's partition table (GPT, MBR), read only;
//! - [`inspect`] (here): mounts the image's filesystems read only through [`sys::BootSystem`]
//!   (the partition's node after a re-read, else a loop window by offset), then
//! - [`discover`]: the kernel, initrd and command line, a pure function of the mounted trees
//!   ([`bls`] entries, else the [`grub`] default entry, else Debian's symlinks);
//! - [`efi`]: the ESP's loader and the `Boot####`/`BootOrder` variables;
//! - [`sys`]: every side effect, behind one trait with a recording fake.

pub mod bls;
pub mod discover;
pub mod efi;
pub mod grub;
pub mod sys;
pub mod table;

use crate::inventory::fssig;
use discover::{KernelEntry, MountedFs, NotFound};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sys::{BootSystem, Source};
use table::{PartitionTable, Role};

/// Modules mounting an image's filesystems needs in a ramdisk without modprobe: ext4 and
/// xfs roots, the vfat ESP with the code pages it mounts with by default, loop windows,
/// efivarfs.
pub const MODULES: &[&str] = &[
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "loop",
    "efivarfs",
];

/// How long a partition node that sysfs shows may take to appear in devtmpfs.
const NODE_WAIT: Duration = Duration::from_secs(3);
/// Partitions mounted at most (a table of 128 entries is not 128 filesystems to look at).
const MAX_MOUNTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The partition table, read by [`crate::partition::read`]: its errors name the device.
    #[error(transparent)]
    Table(#[from] crate::partition::PartitionError),
}

impl BootError {
    pub fn code(&self) -> &'static str {
        match self {
            BootError::Open { .. } => "io_error",
            BootError::Table(e) => e.code(),
        }
    }
}

/// The image's filesystems, mounted, and what was found on them. [`Inspection::release`]
/// unmounts them (after the kexec load: the kernel has its own copy by then).
#[derive(Debug)]
pub struct Inspection {
    pub table: PartitionTable,
    pub filesystems: Vec<MountedFs>,
    pub entry: Result<KernelEntry, NotFound>,
    /// The ESP's partition number and mounted tree, when the image has one mounted.
    pub esp: Option<(u32, PathBuf)>,
    pub notes: Vec<String>,
    mounted: Vec<PathBuf>,
}

impl Inspection {
    pub fn release(&mut self, sys: &dyn BootSystem) {
        for target in self.mounted.drain(..).rev() {
            if let Err(e) = sys.umount(&target) {
                self.notes.push(e.to_string());
            }
        }
    }
}

/// The filesystem type to mount a partition as, from its signature; `None` for what boot
/// does not read (swap, LVM, a config drive).
fn mount_type(sig: &[fssig::Signature]) -> Option<&'static str> {
    sig.iter().find_map(|s| {
        if s.label
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("config-2"))
        {
            return None;
        }
        match s.kind {
            "ext2" | "ext3" | "ext4" => Some("ext4"),
            "vfat" => Some("vfat"),
            "xfs" => Some("xfs"),
            "btrfs" => Some("btrfs"),
            _ => None,
        }
    })
}

/// The node of partition `number` of `disk` (kernel name) under `root`, waiting briefly for
/// devtmpfs when sysfs already shows the partition.
fn partition_node(root: &Path, disk: &str, number: u32) -> Option<PathBuf> {
    let dir = root.join("sys/class/block").join(disk);
    let name = std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("partition")).ok()?;
        (n.trim().parse::<u32>().ok()? == number).then(|| e.file_name())
    })?;
    let node = root.join("dev").join(name);
    let start = Instant::now();
    while start.elapsed() < NODE_WAIT {
        if node.exists() {
            return Some(node);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Reads `disk` (kernel name `name`, node `dev`, `size` bytes), mounts its filesystems under
/// `scratch` and finds the kernel with `kernel_args` appended.
pub fn inspect(
    sys: &dyn BootSystem,
    root: &Path,
    name: &str,
    dev: &Path,
    size: u64,
    scratch: &Path,
    kernel_args: Option<&str>,
) -> Result<Inspection, BootError> {
    let open_err = |source| BootError::Open {
        path: dev.to_path_buf(),
        source,
    };
    let mut notes = Vec::new();
    if let Err(e) = sys.reread_partitions(dev) {
        notes.push(format!("re-reading the partition table: {e}"));
    }
    let mut disk = std::fs::File::open(dev).map_err(open_err)?;
    // A regular file (tests, an image) has no logical block size: 512.
    let sector_size = crate::hw::block::logical_block_size(&disk).unwrap_or(512);
    let table = table::read(&mut disk, &dev.display().to_string(), size, sector_size)?;
    notes.extend(
        sys.load_modules(MODULES)
            .into_iter()
            .map(|m| format!("loading modules: {m}")),
    );
    let mut filesystems = Vec::new();
    let mut mounted = Vec::new();
    let mut esp = None;
    for p in table.partitions.iter().filter(|p| p.role != Role::Skip) {
        if filesystems.len() >= MAX_MOUNTS {
            notes.push(format!(
                "more than {MAX_MOUNTS} partitions: the rest not looked at"
            ));
            break;
        }
        let (offset, len) = (table.offset_bytes(p), table.size_bytes(p));
        let mut head = vec![0u8; fssig::HEAD_LEN.min(len as usize)];
        disk.seek(SeekFrom::Start(offset)).map_err(open_err)?;
        if disk.read_exact(&mut head).is_err() {
            notes.push(format!(
                "partition {} lies past the end of {}",
                p.number,
                dev.display()
            ));
            continue;
        }
        let Some(fstype) = mount_type(&fssig::detect_head(&head)) else {
            continue;
        };
        let source = match partition_node(root, name, p.number) {
            Some(node) => Source::Node(node),
            None => Source::Window {
                disk: dev.to_path_buf(),
                offset,
                len,
            },
        };
        let target = scratch.join(format!("p{}", p.number));
        match sys.mount_ro(&source, &target, fstype) {
            Ok(dir) => {
                mounted.push(target);
                if p.role == Role::Esp
                    || (esp.is_none() && fstype == "vfat" && dir.join("EFI").is_dir())
                {
                    esp = Some((p.number, dir.clone()));
                }
                filesystems.push(MountedFs {
                    partition: p.clone(),
                    fstype: fstype.to_owned(),
                    dir,
                });
            }
            Err(e) => notes.push(e.to_string()),
        }
    }
    let entry = discover::discover(&filesystems, kernel_args);
    Ok(Inspection {
        table,
        filesystems,
        entry,
        esp,
        notes,
        mounted,
    })
}

#[cfg(test)]
pub mod tests {
    use super::sys::fake::{Call, RecordingBoot};
    use super::*;
    use table::tests::gpt_image;

    /// An ext4 superblock's magic and an extents feature, enough for the signature probe.
    pub fn ext4_at(img: &mut [u8], offset: usize) {
        img[offset + 1024 + 0x38..][..2].copy_from_slice(&0xEF53u16.to_le_bytes());
        img[offset + 1024 + 0x60..][..4].copy_from_slice(&0x40u32.to_le_bytes());
    }

    /// A FAT32 boot sector.
    pub fn vfat_at(img: &mut [u8], offset: usize, label: &str) {
        img[offset] = 0xEB;
        img[offset + 11..][..2].copy_from_slice(&512u16.to_le_bytes());
        img[offset + 0x52..][..8].copy_from_slice(b"FAT32   ");
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        img[offset + 0x47..][..11].copy_from_slice(&l);
        img[offset + 510] = 0x55;
        img[offset + 511] = 0xAA;
    }

    pub const ROOT_UUID: &str = "6e3a1b2c-0d4e-4f5a-8b6c-7d8e9fa0b1c2";

    /// ESP (1), swap (2), ext4 root (3), config drive (4) on a 16 MiB GPT image.
    pub fn disk_image() -> Vec<u8> {
        let mut img = gpt_image(
            32768,
            &[
                (
                    0,
                    table::ESP_GUID,
                    "5f5b2a1c-8e0d-4c4e-9a3b-1d2e3f405162",
                    2048,
                    6143,
                ),
                (
                    1,
                    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
                    "11111111-0000-0000-0000-000000000002",
                    6144,
                    8191,
                ),
                (
                    2,
                    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
                    ROOT_UUID,
                    8192,
                    28671,
                ),
                (
                    3,
                    "0fc63daf-8483-4772-8e79-3d69d8477de4",
                    "11111111-0000-0000-0000-000000000004",
                    28672,
                    32734,
                ),
            ],
        );
        vfat_at(&mut img, 2048 * 512, "EFI");
        ext4_at(&mut img, 8192 * 512);
        vfat_at(&mut img, 28672 * 512, "config-2");
        img
    }

    #[test]
    fn inspect_mounts_the_esp_and_root_through_windows_and_finds_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("vda");
        std::fs::write(&dev, disk_image()).unwrap();
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/debian")).unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("boot")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("boot/vmlinuz-6.1.0"), "k").unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1.0", rootfs.join("boot/vmlinuz")).unwrap();
        let sys = RecordingBoot {
            trees: [(2048 * 512, esp.clone()), (8192 * 512, rootfs)].into(),
            ..RecordingBoot::default()
        };
        let scratch = dir.path().join("mnt");
        let mut got = inspect(
            &sys,
            dir.path(),
            "vda",
            &dev,
            16 << 20,
            &scratch,
            Some("console=ttyS0"),
        )
        .unwrap();
        let entry = got.entry.clone().unwrap();
        assert_eq!(entry.kernel.path, "/boot/vmlinuz-6.1.0");
        assert_eq!(
            entry.cmdline,
            format!("root=PARTUUID={ROOT_UUID} ro console=ttyS0")
        );
        assert_eq!(got.esp, Some((1, esp)));
        got.release(&sys);
        let window = |offset: u64, len: u64| Source::Window {
            disk: dev.clone(),
            offset,
            len,
        };
        assert_eq!(
            sys.calls(),
            vec![
                Call::Reread(dev.clone()),
                Call::LoadModules(MODULES.iter().map(|m| m.to_string()).collect()),
                Call::Mount {
                    source: window(2048 * 512, 4096 * 512),
                    target: scratch.join("p1"),
                    fstype: "vfat".into()
                },
                Call::Mount {
                    source: window(8192 * 512, 20480 * 512),
                    target: scratch.join("p3"),
                    fstype: "ext4".into()
                },
                Call::Umount(scratch.join("p3")),
                Call::Umount(scratch.join("p1")),
            ],
            "swap and the config drive are not mounted"
        );
    }

    #[test]
    fn a_disk_without_a_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("vdb");
        std::fs::write(&dev, vec![0u8; 1 << 20]).unwrap();
        let e = inspect(
            &RecordingBoot::default(),
            dir.path(),
            "vdb",
            &dev,
            1 << 20,
            dir.path(),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no partition table (neither GPT nor MBR): write the image first",
                dev.display()
            )
        );
    }

    /// Root, `/dev/loop-control` and `mkfs.ext4` (skipped otherwise, a failure under CI):
    /// a GPT disk image whose ext4 root `mkfs.ext4 -d` made is mounted for real through a
    /// read-only loop window, the kernel found on it, and everything unmounted again. Its
    /// journal is marked for recovery, as after a crash: without `noload` the kernel would
    /// replay it onto the disk (here: refuse to, on a read-only loop device).
    #[test]
    fn a_real_ext4_root_is_mounted_through_a_loop_window() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mkfs = std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_ok();
        if !(root && mkfs && Path::new("/dev/loop-control").exists()) {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("needs root, /dev/loop-control and mkfs.ext4 under CI");
            }
            eprintln!("skipping: needs root, /dev/loop-control and mkfs.ext4");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("boot/vmlinuz-6.1.0-13-amd64"), "not a kernel").unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1.0-13-amd64", tree.join("boot/vmlinuz")).unwrap();
        let fs_img = dir.path().join("root.ext4");
        std::fs::File::create(&fs_img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        for (tool, args) in [
            (
                "mkfs.ext4",
                vec![
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-d".as_ref(),
                    tree.as_os_str(),
                ],
            ),
            (
                "debugfs",
                vec![
                    "-w".as_ref(),
                    "-R".as_ref(),
                    "feature needs_recovery".as_ref(),
                ],
            ),
        ] {
            let out = std::process::Command::new(tool)
                .args(args)
                .arg(&fs_img)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{tool}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut img = gpt_image(
            2048 + 16384 + 34,
            &[(
                0,
                "0fc63daf-8483-4772-8e79-3d69d8477de4",
                ROOT_UUID,
                2048,
                2048 + 16383,
            )],
        );
        let fs_bytes = std::fs::read(&fs_img).unwrap();
        img[2048 * 512..2048 * 512 + fs_bytes.len()].copy_from_slice(&fs_bytes);
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, &img).unwrap();

        let sys = sys::LinuxBoot {
            root: PathBuf::from("/"),
            load_modules: false,
            config_drive: Box::new(|_, _, _| Err(sys::SysError::new("unsupported", "no"))),
            bmc: Box::new(|_| Ok(None)),
            written_on: Box::new(|_| None),
        };
        let scratch = dir.path().join("mnt");
        let mut got = inspect(
            &sys,
            Path::new("/"),
            "disk.img",
            &disk,
            img.len() as u64,
            &scratch,
            None,
        )
        .unwrap();
        let entry = got.entry.clone().unwrap();
        assert_eq!(entry.kernel.path, "/boot/vmlinuz-6.1.0-13-amd64");
        assert_eq!(std::fs::read(&disk).unwrap(), img, "the disk was written");
        assert_eq!(
            std::fs::read_to_string(&entry.kernel.host).unwrap(),
            "not a kernel"
        );
        assert_eq!(entry.cmdline, format!("root=PARTUUID={ROOT_UUID} ro"));
        let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounted().contains(&scratch.join("p1").display().to_string()));
        got.release(&sys);
        assert!(
            got.notes.iter().all(|n| !n.contains("unmounting")),
            "{:?}",
            got.notes
        );
        assert!(
            !mounted().contains(&scratch.display().to_string()),
            "still mounted"
        );
    }
}
