//! GPT edits with `gptman`: the sequence coreos-installer uses. Read the table (the backup
//! header when the primary is damaged), move the backup header to the real end of the
//! device (`update_from`, like `sgdisk -e`), add the partition in the last free space
//! (`find_last_place`) under the lowest free number, write both headers and entry arrays,
//! refresh the protective MBR, and wipe the stale backup header the image left mid-disk.
//!
//! `gptman` keeps entries at their index (the `gpt` crate packs used entries on write and so
//! renumbers partitions, which would break an image's `root=/dev/sda3`).

use super::{
    ALIGN_BYTES, Content, DiskId, Geometry, Kind, Part, PartitionError, Region, Scheme, Table,
};
use gptman::{GPT, GPTHeader, GPTPartitionEntry};
use std::io::{Read, Seek, SeekFrom, Write};

/// Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4 (what `sgdisk` gives a new
/// partition by default, so what the reference family's config drive partition has).
const LINUX_DATA: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];
/// Microsoft basic data, EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 (what a FAT partition is).
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

fn bad(geo: &Geometry) -> impl Fn(gptman::Error) -> PartitionError + '_ {
    move |e| PartitionError::BadGpt {
        device: geo.device.clone(),
        reason: e.to_string(),
    }
}

/// Most entries a table may declare: 128 is the standard, a few tools make a few hundred.
const MAX_ENTRIES: u32 = 16384;

/// Refuses a header `gptman` would accept (signature, revision and CRC valid) but whose
/// fields it would trust too far: an entry count that sizes an allocation, an entry array
/// past the end of the device, entries of a size it does not read, a device too small for
/// the arrays its own arithmetic subtracts. The disk holds what the image made: bad input.
fn check_headers<F: Read + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
) -> Result<(), PartitionError> {
    let ss = geo.sector_size;
    let dev_sectors = geo.size_bytes / ss;
    for lba in [1, dev_sectors.saturating_sub(1)] {
        disk.seek(SeekFrom::Start(lba * ss)).map_err(geo.io())?;
        let Ok(h) = GPTHeader::read_from(disk) else {
            continue;
        };
        let reason = |why: String| PartitionError::BadGpt {
            device: geo.device.clone(),
            reason: format!("header at LBA {lba}: {why}"),
        };
        if h.number_of_partition_entries == 0 || h.number_of_partition_entries > MAX_ENTRIES {
            return Err(reason(format!(
                "{} partition entries (1 to {MAX_ENTRIES} supported)",
                h.number_of_partition_entries
            )));
        }
        if h.size_of_partition_entry != 128 {
            return Err(reason(format!(
                "partition entries of {} bytes (128 supported)",
                h.size_of_partition_entry
            )));
        }
        let array_sectors = (h.number_of_partition_entries as u64 * 128).div_ceil(ss);
        let array_end = h
            .partition_entry_lba
            .checked_add(array_sectors)
            .filter(|end| *end <= dev_sectors);
        if array_end.is_none() {
            return Err(reason(format!(
                "the entry array at LBA {} runs past the end of the device",
                h.partition_entry_lba
            )));
        }
        if dev_sectors < 2 * (array_sectors + 1) + 3 {
            return Err(reason(format!(
                "the device ({} bytes) is too small for its entry arrays",
                geo.size_bytes
            )));
        }
        // gptman's alignment guess panics when every partition starts at LBA 0 (and one
        // there overlaps the MBR anyway).
        disk.seek(SeekFrom::Start(h.partition_entry_lba * ss))
            .map_err(geo.io())?;
        let mut entries = vec![0u8; h.number_of_partition_entries as usize * 128];
        disk.read_exact(&mut entries).map_err(geo.io())?;
        for (i, e) in entries.chunks_exact(128).enumerate() {
            if e[..16] != [0; 16] && e[32..40] == [0; 8] {
                return Err(reason(format!("partition {} starts at LBA 0", i + 1)));
            }
        }
    }
    Ok(())
}

fn load<F: Read + Seek>(disk: &mut Region<'_, F>, geo: &Geometry) -> Result<GPT, PartitionError> {
    check_headers(disk, geo)?;
    let gpt = GPT::read_from(disk, geo.sector_size).map_err(bad(geo))?;
    let dev_sectors = geo.size_bytes / geo.sector_size;
    for (number, e) in gpt.iter().filter(|(_, e)| e.is_used()) {
        if e.ending_lba >= dev_sectors || e.ending_lba < e.starting_lba {
            return Err(PartitionError::BeyondEnd {
                device: geo.device.clone(),
                number,
                end: e
                    .ending_lba
                    .saturating_add(1)
                    .saturating_mul(geo.sector_size),
                size: geo.size_bytes,
            });
        }
    }
    Ok(gpt)
}

fn to_part(geo: &Geometry, number: u32, e: &GPTPartitionEntry) -> Part {
    Part {
        number,
        start_bytes: e.starting_lba * geo.sector_size,
        size_bytes: (e.ending_lba + 1 - e.starting_lba) * geo.sector_size,
        name: Some(e.partition_name.as_str().to_owned()),
        kind: Kind::Gpt {
            type_guid: e.partition_type_guid,
            unique_guid: e.unique_partition_guid,
        },
    }
}

pub(super) fn read<F: Read + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
) -> Result<Table, PartitionError> {
    let gpt = load(disk, geo)?;
    Ok(Table {
        scheme: Scheme::Gpt,
        disk_id: DiskId::Gpt(gpt.header.disk_guid),
        parts: gpt
            .iter()
            .filter(|(_, e)| e.is_used())
            .map(|(n, e)| to_part(geo, n, e))
            .collect(),
    })
}

/// A random (version 4) GUID in the GPT's mixed-endian byte order.
fn random_guid() -> [u8; 16] {
    let mut g: [u8; 16] = rand::random();
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

pub(super) fn add_at_end<F: Read + Write + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
    size_bytes: u64,
    name: &str,
    content: Content,
) -> Result<Part, PartitionError> {
    let ss = geo.sector_size;
    let mut gpt = load(disk, geo)?;
    // Where the image's own backup header was (the primary's view of it), to wipe it once the
    // new one is at the end of the device.
    let stale_backup = gpt.header.is_primary().then_some(gpt.header.backup_lba);
    gpt.header.update_from(disk, ss).map_err(bad(geo))?;
    if let Some((number, e)) = gpt
        .iter()
        .filter(|(_, e)| e.is_used())
        .find(|(_, e)| e.ending_lba > gpt.header.last_usable_lba)
    {
        return Err(PartitionError::BeyondEnd {
            device: geo.device.clone(),
            number,
            end: (e.ending_lba + 1) * ss,
            size: (gpt.header.last_usable_lba + 1) * ss,
        });
    }
    gpt.align = (ALIGN_BYTES / ss).max(1);
    let sectors = size_bytes.div_ceil(ss);
    let last_end = gpt
        .iter()
        .filter(|(_, e)| e.is_used())
        .map(|(_, e)| e.ending_lba + 1)
        .max()
        .unwrap_or(gpt.header.first_usable_lba);
    // The last free place big enough, but only after every partition: a gap between two
    // partitions is not the end of the disk.
    let start = gpt
        .find_last_place(sectors)
        .filter(|start| *start >= last_end);
    let Some(start) = start else {
        return Err(PartitionError::NoRoom {
            device: geo.device.clone(),
            wanted: size_bytes,
            free: (gpt.header.last_usable_lba + 1).saturating_sub(last_end) * ss,
        });
    };
    let Some((number, _)) = gpt.iter().find(|(_, e)| e.is_unused()) else {
        return Err(PartitionError::NoFreeSlot {
            device: geo.device.clone(),
            slots: gpt.header.number_of_partition_entries,
        });
    };
    gpt[number] = GPTPartitionEntry {
        partition_type_guid: match content {
            Content::Vfat => BASIC_DATA,
            Content::Iso9660 => LINUX_DATA,
        },
        unique_partition_guid: random_guid(),
        starting_lba: start,
        ending_lba: start + sectors - 1,
        attribute_bits: 0,
        partition_name: name.into(),
    };
    let write_err = |e: gptman::Error| PartitionError::GptWrite {
        device: geo.device.clone(),
        reason: e.to_string(),
    };
    gpt.write_into(disk).map_err(write_err)?;
    refresh_protective_mbr(disk, geo).map_err(write_err)?;
    if let Some(lba) = stale_backup.filter(|lba| wipeable(&gpt.header, last_end, ss, *lba)) {
        disk.seek(SeekFrom::Start(lba * ss)).map_err(geo.io())?;
        disk.write_all(&vec![0u8; ss as usize]).map_err(geo.io())?;
    }
    Ok(to_part(geo, number, &gpt[number]))
}

/// Whether the image's old backup header at `lba` (a value of the image's own primary header,
/// so not trusted) may be zeroed once the new table is written: only in the free space past
/// every old partition (`last_end`, their first free LBA) and the primary entry array, and
/// before the new backup entry array. Anything else there is a partition, an entry array or
/// a header.
fn wipeable(new: &GPTHeader, last_end: u64, ss: u64, lba: u64) -> bool {
    let array_sectors = (u64::from(new.number_of_partition_entries)
        * u64::from(new.size_of_partition_entry))
    .div_ceil(ss);
    let primary_array_end = new.partition_entry_lba.saturating_add(array_sectors);
    let backup_array_start = new.backup_lba.saturating_sub(array_sectors);
    lba >= last_end
        && lba >= primary_array_end
        && lba >= new.first_usable_lba
        && lba < backup_array_start
}

/// Rewrites a plain protective MBR to cover the whole device, keeping its boot flag. A
/// hybrid MBR (more slots in use) is left as the image made it.
fn refresh_protective_mbr<F: Read + Write + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
) -> Result<(), gptman::Error> {
    let mut s = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut s)?;
    let kinds: Vec<u8> = (0..4).map(|i| s[446 + 16 * i + 4]).collect();
    if kinds[0] != 0xee || kinds[1..].iter().any(|k| *k != 0) {
        return Ok(());
    }
    if s[446] == 0x80 {
        GPT::write_bootable_protective_mbr_into(disk, geo.sector_size)
    } else {
        GPT::write_protective_mbr_into(disk, geo.sector_size)
    }
}
