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
    fs.unmount()
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
