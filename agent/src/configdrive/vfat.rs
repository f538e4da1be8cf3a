//! The FAT flavour of a config drive, built with `fatfs` straight onto the partition (no
//! image in memory): format with the label `config-2` (in the boot sector and as the root
//! directory's volume label entry, both of which `blkid` reads), then `openstack/VERSION/`
//! with every document under each version. FAT cannot share clusters between two names, so
//! each document is stored once per version.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Space-padded to the 11 bytes of a FAT label.
const LABEL: [u8; 11] = *b"config-2   ";

/// Formats `disk` (the whole filesystem region, positioned anywhere) with sectors of
/// `sector_size` bytes and writes the files.
pub(super) fn build<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u16,
    versions: &[&str],
    files: &[(&str, Vec<u8>)],
) -> io::Result<()> {
    disk.seek(SeekFrom::Start(0))?;
    fatfs::format_volume(
        &mut *disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(LABEL)
            .bytes_per_sector(sector_size),
    )?;
    disk.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut *disk, fatfs::FsOptions::new())?;
    {
        let openstack = fs.root_dir().create_dir("openstack")?;
        for version in versions {
            let dir = openstack.create_dir(version)?;
            for (name, data) in files {
                let mut f = dir.create_file(name)?;
                f.truncate()?;
                f.write_all(data)?;
                f.flush()?;
            }
        }
    }
    fs.unmount()?;
    drop_dot_long_names(disk)
}

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
/// creates. Linux skips it, but `fsck.vfat` calls the directory damaged and other readers
/// may stumble, so the long names of dot entries are removed again, the rest of each
/// directory moved up. Only FAT12/16 (every size this module formats) and directories of
/// one cluster (a config drive's few entries) are handled; anything else is an error.
fn drop_dot_long_names<D: Read + Write + Seek>(disk: &mut D) -> io::Result<()> {
    let mut bs = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut bs)?;
    let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
    let (bps, spc, reserved, fats) = (u16_at(11), bs[13] as u64, u16_at(14), bs[16] as u64);
    let (root_entries, sectors_per_fat) = (u16_at(17), u16_at(22));
    if sectors_per_fat == 0 {
        return Err(io::Error::other(
            "vfat: FAT32 directories are not rewritten",
        ));
    }
    let root_off = (reserved + fats * sectors_per_fat) * bps;
    let root_len = root_entries * 32;
    let cluster_len = spc * bps;
    let data_off = root_off + root_len.div_ceil(bps) * bps;
    let mut dirs = subdirectories(&read_at(disk, root_off, root_len)?);
    // Directories found, breadth first; a config drive is two levels deep.
    let mut seen = 0;
    while let Some(cluster) = dirs.pop() {
        seen += 1;
        if cluster < 2 || seen > 64 {
            return Err(io::Error::other("vfat: unexpected directory tree"));
        }
        let off = data_off + (cluster - 2) * cluster_len;
        let entries = read_at(disk, off, cluster_len)?;
        let mut out = Vec::with_capacity(entries.len());
        let mut long_name = Vec::new();
        let mut ended = false;
        for e in entries.chunks_exact(32) {
            if e[0] == 0 {
                ended = true;
                break;
            }
            if e[11] == 0x0f {
                long_name.extend_from_slice(e);
                continue;
            }
            let dot = &e[..11] == b".          " || &e[..11] == b"..         ";
            if !dot {
                out.append(&mut long_name);
            }
            long_name.clear();
            out.extend_from_slice(e);
        }
        if !ended {
            return Err(io::Error::other("vfat: a directory outgrew its cluster"));
        }
        dirs.extend(subdirectories(&out));
        out.resize(cluster_len as usize, 0);
        disk.seek(SeekFrom::Start(off))?;
        disk.write_all(&out)?;
    }
    Ok(())
}

fn read_at<D: Read + Seek>(disk: &mut D, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len as usize];
    disk.seek(SeekFrom::Start(off))?;
    disk.read_exact(&mut b)?;
    Ok(b)
}

/// First clusters of the subdirectories listed in a directory's entries (not `.`, `..`,
/// long names, deleted entries or the volume label).
fn subdirectories(entries: &[u8]) -> Vec<u64> {
    entries
        .chunks_exact(32)
        .take_while(|e| e[0] != 0)
        .filter(|e| e[0] != 0xe5 && e[0] != b'.' && e[11] != 0x0f && e[11] & 0x10 != 0)
        .map(|e| u16::from_le_bytes([e[26], e[27]]) as u64)
        .collect()
}

/// Reads one file back (`openstack/latest/meta_data.json`), the writer's own check.
pub(super) fn read_file<D: Read + Write + Seek>(disk: &mut D, path: &str) -> io::Result<Vec<u8>> {
    disk.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut *disk, fatfs::FsOptions::new())?;
    let mut out = Vec::new();
    fs.root_dir().open_file(path)?.read_to_end(&mut out)?;
    Ok(out)
}

/// Bytes a FAT filesystem needs for `files` under each of `versions`: clusters of 4 KiB at
/// most for the sizes chosen here, directories, both FATs and a margin, rounded to MiB.
pub(super) fn size_for(versions: &[&str], files: &[(&str, Vec<u8>)]) -> u64 {
    const CLUSTER: u64 = 4096;
    let data: u64 = files
        .iter()
        .map(|(_, d)| (d.len() as u64).div_ceil(CLUSTER).max(1) * CLUSTER)
        .sum::<u64>()
        * versions.len() as u64;
    let raw = data + data / 4 + (1 << 20);
    raw.div_ceil(1 << 20) << 20
}
