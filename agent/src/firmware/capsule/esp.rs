//! Capsule on disk: the EFI system partitions of the disks the agent may write (found by
//! GPT type, or MBR type 0xef, through [`crate::boot::table`]), and the capsule written to
//! `\EFI\UpdateCapsule\NAME` on one with `fatfs` over the partition's byte range — no mount
//! (the ramdisk's kernel need not have vfat). The disks are chosen by
//! [`crate::safety::select_targets_for`] for [`Action::EditPartitions`], as a config drive's
//! are: in the ramdisk every real disk that is not mounted or held, on a host only the disks
//! named with `--allow-host`.

use super::UpdateError;
use crate::authority::{Action, Authority};
use crate::boot::table::{self, Role};
use crate::hw::block;
use crate::partition::Region;
use crate::safety;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The directory of UEFI 8.5.5, below the ESP's root.
pub const CAPSULE_DIR: [&str; 2] = ["EFI", "UpdateCapsule"];

/// One ESP found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Esp {
    /// The whole disk's node.
    pub dev_path: PathBuf,
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
}

impl Esp {
    fn label(&self) -> String {
        format!("{} partition {}", self.dev_path.display(), self.number)
    }
}

/// Size and logical sector of an open device (a regular file counts as 512-byte sectors).
fn geometry(f: &std::fs::File) -> io::Result<(u64, u32)> {
    let meta = f.metadata()?;
    if meta.is_file() {
        return Ok((meta.len(), 512));
    }
    let size = block::size_bytes(f).map_err(io::Error::other)?;
    let sector = block::logical_block_size(f).map_err(io::Error::other)?;
    Ok((size, sector))
}

/// The ESPs of the disks `authority` lets the agent edit, with notes on what was passed over.
pub fn find(root: &Path, authority: &Authority) -> (Vec<Esp>, Vec<String>) {
    let mut notes = Vec::new();
    let disks = match crate::disks::enumerate(root) {
        Ok(d) => d,
        Err(e) => return (Vec::new(), vec![format!("disks: {e}")]),
    };
    let named = authority.named_devices().to_vec();
    let devices = (*authority != Authority::Ramdisk).then_some(&named[..]);
    #[allow(clippy::redundant_closure)] // see safety::DeviceAction
    let (targets, skipped) = safety::select_targets_for(
        root,
        &disks,
        authority,
        |d| Action::EditPartitions(d),
        devices,
        &[],
    );
    for s in skipped {
        notes.push(format!("{} not used: {}", s.device, s.reason()));
    }
    let mut out = Vec::new();
    for t in targets.iter().filter(|t| !t.is_partition()) {
        let path = t.dev_path().to_path_buf();
        let read = || -> Result<Vec<Esp>, String> {
            let mut f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let (size, sector) = geometry(&f).map_err(|e| e.to_string())?;
            let t = table::read(&mut f, &path.display().to_string(), size, sector)
                .map_err(|e| e.to_string())?;
            Ok(t.partitions
                .iter()
                .filter(|p| p.role == Role::Esp)
                .map(|p| Esp {
                    dev_path: path.clone(),
                    number: p.number,
                    start_bytes: t.offset_bytes(p),
                    size_bytes: t.size_bytes(p),
                })
                .collect())
        };
        match read() {
            Ok(found) => out.extend(found),
            Err(e) => notes.push(format!("{}: no partition table read: {e}", path.display())),
        }
    }
    (out, notes)
}

/// Writes the capsule to `esp` (the disk opened exclusively, flushed and synced) and returns
/// where it went.
pub fn stage(esp: &Esp, name: &str, bytes: &[u8]) -> Result<String, UpdateError> {
    let fail = |e: io::Error| {
        UpdateError::new(
            "write_failed",
            format!("ESP {}: staging the capsule: {e}", esp.label()),
        )
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(&esp.dev_path)
        .map_err(fail)?;
    write_on(&mut f, esp.start_bytes, esp.size_bytes, name, bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    Ok(format!(
        "{}:\\{}\\{name}",
        esp.label(),
        CAPSULE_DIR.join("\\")
    ))
}

/// A directory of `parent` named `name` in any case, created when missing.
fn subdir<'a, T: fatfs::ReadWriteSeek>(
    parent: &fatfs::Dir<'a, T>,
    name: &str,
) -> io::Result<fatfs::Dir<'a, T>> {
    for e in parent.iter() {
        let e = e?;
        if e.file_name().eq_ignore_ascii_case(name) {
            if e.is_dir() {
                return Ok(e.to_dir());
            }
            return Err(io::Error::other(format!(
                "{name} exists and is not a directory"
            )));
        }
    }
    parent.create_dir(name)
}

/// Writes `bytes` as `\EFI\UpdateCapsule\name` into the FAT filesystem at `start..start+len`
/// of `dev` (directories created when missing, an older file of that name replaced), then
/// reads it back through a fresh mount of the filesystem and compares.
pub fn write_on<F: Read + Write + Seek>(
    dev: &mut F,
    start: u64,
    len: u64,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(io::Error::other(format!("bad capsule file name {name:?}")));
    }
    {
        let mut region = Region::new(&mut *dev, start, len);
        region.seek(SeekFrom::Start(0))?;
        let fs = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new())
            .map_err(|e| io::Error::other(format!("not a FAT filesystem: {e}")))?;
        {
            let mut dir = fs.root_dir();
            for d in CAPSULE_DIR {
                dir = subdir(&dir, d)?;
            }
            let mut f = dir.create_file(name)?;
            f.truncate()?;
            f.write_all(bytes)?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    let mut region = Region::new(&mut *dev, start, len);
    region.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new())?;
    let path = format!("{}/{name}", CAPSULE_DIR.join("/"));
    let mut back = Vec::with_capacity(bytes.len());
    fs.root_dir().open_file(&path)?.read_to_end(&mut back)?;
    if back != bytes {
        return Err(io::Error::other(format!(
            "{path} reads back differently ({} bytes, {} written)",
            back.len(),
            bytes.len()
        )));
    }
    Ok(())
}
