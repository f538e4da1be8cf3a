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
    {
        let mut region = Region::new(&mut *dev, start, len);
        dot_entries_first(&mut region)?;
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

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
/// creates; `fsck.fat` then calls the directory damaged (and would "repair" it by deleting
/// entries), since `.` and `..` must be its first two slots. For every directory one and two
/// levels down (`EFI`, `EFI\UpdateCapsule`) whose first cluster starts that way, `.` and `..`
/// are moved to slots 0 and 1 and slots 2 and 3 marked deleted, so no other entry moves.
/// FAT12, FAT16 and FAT32. (The config drive's FAT has its own pass in `configdrive::vfat`,
/// FAT12/16 only.)
fn dot_entries_first<D: Read + Write + Seek>(disk: &mut D) -> io::Result<()> {
    let fat = Fat::read(disk)?;
    let top = fat.subdirectories(disk, fat.root)?;
    for dir in top.iter().take(MAX_DIRS) {
        fat.fix_dots(disk, *dir, true)?;
        for sub in fat.subdirectories(disk, Some(*dir))?.iter().take(MAX_DIRS) {
            fat.fix_dots(disk, *sub, false)?;
        }
    }
    Ok(())
}

/// Directories looked at per level.
const MAX_DIRS: usize = 256;
/// Clusters of one directory followed at most, and its bytes read at most (a looping or
/// hostile chain of large clusters stops there).
const MAX_DIR_CLUSTERS: usize = 4096;
const MAX_DIR_BYTES: usize = 4 << 20;

/// What [`dot_entries_first`] needs of a FAT boot sector.
struct Fat {
    cluster: u64,
    fat_off: u64,
    /// `None`: FAT12/16's fixed root region at `root_off`, `root_len` bytes.
    root: Option<u32>,
    root_off: u64,
    root_len: u64,
    data_off: u64,
    bits: u8,
    clusters: u32,
}

fn bad_fat(why: &str) -> io::Error {
    io::Error::other(format!("FAT: {why}"))
}

impl Fat {
    fn read<D: Read + Seek>(disk: &mut D) -> io::Result<Fat> {
        let bs = read_at(disk, 0, 512)?;
        let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
        let (bps, spc) = (u16_at(11), bs[13] as u64);
        let (reserved, fats, root_entries) = (u16_at(14), bs[16] as u64, u16_at(17));
        let total = if u16_at(19) != 0 {
            u16_at(19)
        } else {
            u32_at(32)
        };
        let fat_size = if u16_at(22) != 0 {
            u16_at(22)
        } else {
            u32_at(36)
        };
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) || spc == 0 || fats == 0 {
            return Err(bad_fat("implausible boot sector"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let first_data = reserved + fats * fat_size + root_sectors;
        let clusters = total
            .checked_sub(first_data)
            .ok_or_else(|| bad_fat("no data area"))?
            / spc;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        Ok(Fat {
            cluster: spc * bps,
            fat_off: reserved * bps,
            root: (bits == 32).then_some(u32_at(44) as u32),
            root_off: (reserved + fats * fat_size) * bps,
            root_len: root_entries * 32,
            data_off: first_data * bps,
            bits,
            clusters: clusters.min(u32::MAX as u64) as u32,
        })
    }

    fn cluster_off(&self, c: u32) -> io::Result<u64> {
        if c < 2 || c - 2 >= self.clusters {
            return Err(bad_fat(&format!("cluster {c} outside the data area")));
        }
        Ok(self.data_off + u64::from(c - 2) * self.cluster)
    }

    fn next<D: Read + Seek>(&self, disk: &mut D, c: u32) -> io::Result<Option<u32>> {
        let c64 = u64::from(c);
        let (v, end) = match self.bits {
            12 => {
                let b = read_at(disk, self.fat_off + c64 + c64 / 2, 2)?;
                let raw = u16::from_le_bytes([b[0], b[1]]);
                let v = if c.is_multiple_of(2) {
                    raw & 0xfff
                } else {
                    raw >> 4
                };
                (u32::from(v), 0xff8)
            }
            16 => {
                let b = read_at(disk, self.fat_off + c64 * 2, 2)?;
                (u32::from(u16::from_le_bytes([b[0], b[1]])), 0xfff8)
            }
            _ => {
                let b = read_at(disk, self.fat_off + c64 * 4, 4)?;
                (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0fff_ffff,
                    0x0fff_fff8,
                )
            }
        };
        Ok((v >= 2 && v < end).then_some(v))
    }

    /// The raw entries of a directory (`None`: the FAT12/16 root).
    fn entries<D: Read + Seek>(&self, disk: &mut D, dir: Option<u32>) -> io::Result<Vec<u8>> {
        let Some(mut c) = dir else {
            return read_at(disk, self.root_off, self.root_len);
        };
        let mut out = Vec::new();
        for _ in 0..MAX_DIR_CLUSTERS {
            out.extend(read_at(disk, self.cluster_off(c)?, self.cluster)?);
            if out.len() >= MAX_DIR_BYTES || out.chunks_exact(32).any(|e| e[0] == 0) {
                break;
            }
            match self.next(disk, c)? {
                Some(n) => c = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// First clusters of the subdirectories of `dir` (not `.`, `..`, deleted entries, long
    /// names or the volume label).
    fn subdirectories<D: Read + Seek>(
        &self,
        disk: &mut D,
        dir: Option<u32>,
    ) -> io::Result<Vec<u32>> {
        let entries = self.entries(disk, dir)?;
        Ok(entries
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .filter(|e| e[0] != 0xe5 && e[0] != b'.' && e[11] != 0x0f)
            .filter(|e| e[11] & 0x10 != 0 && e[11] & 0x08 == 0)
            .map(|e| {
                let hi = if self.bits == 32 {
                    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
                } else {
                    0
                };
                hi | u32::from(u16::from_le_bytes([e[26], e[27]]))
            })
            .filter(|c| *c >= 2)
            .collect())
    }

    /// Moves `.` and `..` to the first two slots of `dir` when a long name precedes each;
    /// in a directory of the root (`in_root`), `..` then points at cluster 0 as the spec
    /// says (fatfs puts FAT32's root cluster there).
    fn fix_dots<D: Read + Write + Seek>(
        &self,
        disk: &mut D,
        dir: u32,
        in_root: bool,
    ) -> io::Result<()> {
        let off = self.cluster_off(dir)?;
        if self.cluster < 128 {
            return Ok(());
        }
        let e = read_at(disk, off, 128)?;
        let lfn = |i: usize| e[i * 32 + 11] == 0x0f;
        let name = |i: usize| &e[i * 32..i * 32 + 11];
        if !(lfn(0) && name(1) == b".          " && lfn(2) && name(3) == b"..         ") {
            return Ok(());
        }
        let mut fixed = Vec::with_capacity(128);
        fixed.extend_from_slice(&e[32..64]);
        fixed.extend_from_slice(&e[96..128]);
        if in_root {
            fixed[32 + 20..32 + 22].fill(0);
            fixed[32 + 26..32 + 28].fill(0);
        }
        for _ in 0..2 {
            let mut deleted = [0u8; 32];
            deleted[0] = 0xe5;
            fixed.extend_from_slice(&deleted);
        }
        disk.seek(SeekFrom::Start(off))?;
        disk.write_all(&fixed)?;
        Ok(())
    }
}

fn read_at<D: Read + Seek>(disk: &mut D, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len as usize];
    disk.seek(SeekFrom::Start(off))?;
    disk.read_exact(&mut b)?;
    Ok(b)
}
