//! The MBR (dos label) at byte 0: telling a protective MBR (GPT) from a dos table, reading
//! primary and logical partitions, and adding a primary partition in a free slot.
//!
//! Written by hand: sixteen bytes per slot, four slots at byte 446, `55 aa` at 510. A sector
//! 0 with the signature but impossible entries (a FAT boot sector on a whole disk, random
//! bytes) is no table at all, so a superfloppy is never taken for a partitioned disk.

use super::{
    ALIGN_BYTES, Content, DiskId, Geometry, Kind, Part, PartitionError, Region, Scheme, Table,
};
use std::io::{Read, Seek, SeekFrom, Write};

const SLOTS: usize = 4;
const TABLE_OFFSET: u64 = 446;
/// Logical partitions followed through the EBR chain before it is taken to be a loop.
const MAX_LOGICAL: u32 = 256;

/// What sector 0 says.
pub(super) enum Label {
    /// A GPT's protective (or hybrid) MBR: a slot of type 0xee.
    Protective,
    Dos(Table),
    None,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    boot: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

impl Entry {
    fn parse(b: &[u8]) -> Entry {
        let le = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
        Entry {
            boot: b[0],
            kind: b[4],
            start: le(8),
            sectors: le(12),
        }
    }
    fn used(&self) -> bool {
        self.kind != 0
    }
    fn extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }
}

fn read_sector0<F: Read + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
) -> Result<[u8; 512], PartitionError> {
    let mut s = [0u8; 512];
    if disk.len() < 512 {
        return Ok(s);
    }
    disk.seek(SeekFrom::Start(0)).map_err(geo.io())?;
    disk.read_exact(&mut s).map_err(geo.io())?;
    Ok(s)
}

/// A filesystem's boot sector on the whole disk (FAT, NTFS, exFAT) rather than an MBR: its
/// type name sits where the filesystem puts it.
fn is_boot_sector(s: &[u8; 512]) -> bool {
    let at = |o: usize, name: &[u8]| s[o..o + name.len()] == *name;
    at(0x36, b"FAT") || at(0x52, b"FAT32") || at(3, b"NTFS    ") || at(3, b"EXFAT   ")
}

fn slots(s: &[u8; 512]) -> [Entry; SLOTS] {
    std::array::from_fn(|i| {
        let o = TABLE_OFFSET as usize + 16 * i;
        Entry::parse(&s[o..o + 16])
    })
}

pub(super) fn read<F: Read + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
) -> Result<Label, PartitionError> {
    let s = read_sector0(disk, geo)?;
    if s[510..512] != [0x55, 0xaa] {
        return Ok(Label::None);
    }
    let entries = slots(&s);
    if entries.iter().any(|e| e.kind == 0xee) {
        return Ok(Label::Protective);
    }
    if is_boot_sector(&s) {
        return Ok(Label::None);
    }
    let dev_sectors = geo.size_bytes / geo.sector_size;
    let plausible = entries.iter().all(|e| {
        (e.boot == 0 || e.boot == 0x80) && (!e.used() || (e.start >= 1 && e.sectors >= 1))
    });
    if !plausible {
        return Ok(Label::None);
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !e.used() {
            continue;
        }
        let number = i as u32 + 1;
        check_end(geo, number, e.start, e.sectors, dev_sectors)?;
        if e.extended() {
            read_logical(disk, geo, e, &mut parts)?;
        } else {
            parts.push(part(geo, number, e.kind, e.start, e.sectors));
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(Label::Dos(Table {
        scheme: Scheme::Mbr,
        disk_id: DiskId::Mbr(u32::from_le_bytes([s[440], s[441], s[442], s[443]])),
        parts,
    }))
}

fn part(geo: &Geometry, number: u32, type_byte: u8, start: u64, sectors: u64) -> Part {
    Part {
        number,
        start_bytes: start * geo.sector_size,
        size_bytes: sectors * geo.sector_size,
        name: None,
        kind: Kind::Mbr { type_byte },
    }
}

fn check_end(
    geo: &Geometry,
    number: u32,
    start: u64,
    sectors: u64,
    dev_sectors: u64,
) -> Result<(), PartitionError> {
    if start + sectors > dev_sectors {
        return Err(PartitionError::BeyondEnd {
            device: geo.device.clone(),
            number,
            end: (start + sectors) * geo.sector_size,
            size: geo.size_bytes,
        });
    }
    Ok(())
}

/// Follows the EBR chain of an extended partition: logical partitions are 5, 6, ...
fn read_logical<F: Read + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
    ext: &Entry,
    parts: &mut Vec<Part>,
) -> Result<(), PartitionError> {
    let dev_sectors = geo.size_bytes / geo.sector_size;
    let mut ebr = ext.start;
    for n in 0..MAX_LOGICAL {
        let mut s = [0u8; 512];
        disk.seek(SeekFrom::Start(ebr * geo.sector_size))
            .map_err(geo.io())?;
        disk.read_exact(&mut s).map_err(geo.io())?;
        if s[510..512] != [0x55, 0xaa] {
            return Ok(());
        }
        let e = slots(&s);
        if e[0].used() {
            let number = 5 + n;
            check_end(geo, number, ebr + e[0].start, e[0].sectors, dev_sectors)?;
            parts.push(part(geo, number, e[0].kind, ebr + e[0].start, e[0].sectors));
        }
        if !e[1].used() || e[1].start == 0 {
            return Ok(());
        }
        ebr = ext.start + e[1].start;
    }
    Ok(())
}

/// CHS address in the 255-head, 63-sector geometry every tool assumes; past cylinder 1023
/// the conventional "LBA only" marker.
fn chs(lba: u64) -> [u8; 3] {
    let (c, h, s) = if lba >= 1024 * 255 * 63 {
        (1023, 254, 63)
    } else {
        (lba / (255 * 63), (lba / 63) % 255, lba % 63 + 1)
    };
    [h as u8, (s as u8 & 0x3f) | ((c >> 2) as u8 & 0xc0), c as u8]
}

pub(super) fn add_at_end<F: Read + Write + Seek>(
    disk: &mut Region<'_, F>,
    geo: &Geometry,
    _table: &Table,
    size_bytes: u64,
    content: Content,
) -> Result<Part, PartitionError> {
    let s = read_sector0(disk, geo)?;
    let entries = slots(&s);
    let Some(slot) = entries.iter().position(|e| !e.used()) else {
        return Err(PartitionError::NoFreeSlot {
            device: geo.device.clone(),
            slots: SLOTS as u32,
        });
    };
    let ss = geo.sector_size;
    let align = ALIGN_BYTES / ss;
    let wanted = size_bytes.div_ceil(ss);
    // Logical partitions lie inside their extended container, so the primaries bound all.
    let last_used = entries
        .iter()
        .filter(|e| e.used())
        .map(|e| e.start + e.sectors)
        .max()
        .unwrap_or(0)
        .max(align); // the first MiB holds the MBR and boot code
    let dev_sectors = geo.size_bytes / ss;
    let limit = dev_sectors.min(1 << 32);
    let free_from = last_used.div_ceil(align) * align;
    let start = limit
        .checked_sub(wanted)
        .map(|s| s / align * align)
        .filter(|s| *s >= free_from);
    let Some(start) = start else {
        if dev_sectors > limit && last_used + wanted > limit {
            return Err(PartitionError::MbrLimit {
                device: geo.device.clone(),
            });
        }
        return Err(PartitionError::NoRoom {
            device: geo.device.clone(),
            wanted: size_bytes,
            free: dev_sectors.saturating_sub(last_used) * ss,
        });
    };
    let mut e = [0u8; 16];
    e[1..4].copy_from_slice(&chs(start));
    let type_byte = match content {
        Content::Vfat => 0x0c,
        Content::Iso9660 => 0x83,
    };
    e[4] = type_byte;
    e[5..8].copy_from_slice(&chs(start + wanted - 1));
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(wanted as u32).to_le_bytes());
    disk.seek(SeekFrom::Start(TABLE_OFFSET + 16 * slot as u64))
        .map_err(geo.io())?;
    disk.write_all(&e).map_err(geo.io())?;
    Ok(part(geo, slot as u32 + 1, type_byte, start, wanted))
}

#[cfg(test)]
mod tests {
    use super::chs;

    #[test]
    fn chs_of_small_and_large_addresses() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(1 << 30), [254, 0xff, 0xff]);
    }
}
