//! The partition table of the written image, read only: GPT (512- or 4096-byte sectors,
//! primary header, else the backup at the end) or MBR (primary partitions, plus logical ones
//! in an extended partition). What boot needs of it: each partition's place, type and unique
//! id, to find the root and the ESP, say `root=PARTUUID=...` and build a UEFI `HD()` node.
//!
//! Every value of the table is the image's, so untrusted: offsets are computed with checked
//! arithmetic, and a table naming a partition (or entry array) past the end of the device
//! is refused, as `crate::partition` refuses it. MBR sectors are the device's logical sector.

use std::io::{self, Read, Seek, SeekFrom};

/// GPT type of the EFI system partition.
pub const ESP_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// GPT type of the extended boot loader partition (BLS `$BOOT`).
pub const XBOOTLDR_GUID: &str = "bc13c2ff-59e6-4262-a352-b275fd6f7172";
const BIOS_BOOT_GUID: &str = "21686148-6449-6e6f-744e-656564454649";
const SWAP_GUID: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";

/// Which table, with the disk's own identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Gpt { disk_guid: String },
    Mbr { signature: u32 },
}

/// What a partition is for, from its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Esp,
    Xbootldr,
    /// Not for files (BIOS boot, swap, extended): never mounted.
    Skip,
    /// Anything else: a root, `/boot` or data filesystem.
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// As the kernel numbers it (`sda2` is 2): GPT entry index + 1, MBR slot 1-4, logical 5+.
    pub number: u32,
    /// In sectors of the table's sector size.
    pub start_lba: u64,
    pub size_lba: u64,
    pub role: Role,
    /// `PARTUUID=` as the kernel spells it: the GPT unique GUID, lowercase, or for MBR the
    /// disk signature and the number (`a1b2c3d4-02`).
    pub partuuid: String,
    /// The unique GUID as stored on disk (mixed endian), for a UEFI `HD()` node.
    pub guid_bytes: Option<[u8; 16]>,
    /// The GPT partition name (empty on MBR).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub sector_size: u32,
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// Where `p` starts; [`read`] checked it lies inside the device.
    pub fn offset_bytes(&self, p: &Partition) -> u64 {
        p.start_lba.saturating_mul(u64::from(self.sector_size))
    }

    pub fn size_bytes(&self, p: &Partition) -> u64 {
        p.size_lba.saturating_mul(u64::from(self.sector_size))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT and no MBR partition table")]
    None,
    #[error("the GPT is damaged: {0}")]
    BadGpt(String),
    #[error("partition {number} ends past the end of the device ({size} bytes)")]
    BeyondEnd { number: u32, size: u64 },
}

/// A GUID as stored on disk (first three fields little endian), in its text form.
pub fn guid_text(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// `first + len` sectors of `sector` bytes, in bytes, when that ends inside `size` bytes.
fn span(first: u64, len: u64, sector: u32, size: u64) -> Option<(u64, u64)> {
    let ss = u64::from(sector);
    let start = first.checked_mul(ss)?;
    let bytes = len.checked_mul(ss)?;
    (start.checked_add(bytes)? <= size).then_some((start, bytes))
}

/// Reads the table of a disk (or disk image) of `size` bytes whose logical sector is
/// `sector_size` (512 for a file): a GPT at that sector size first, then at the other one
/// (an image made for 4096-byte sectors), else an MBR in the device's sectors.
pub fn read<R: Read + Seek>(
    r: &mut R,
    size: u64,
    sector_size: u32,
) -> Result<PartitionTable, TableError> {
    let mut gpt_error = None;
    let sector_size = if sector_size == 4096 { 4096 } else { 512 };
    let order = if sector_size == 4096 {
        [4096u32, 512]
    } else {
        [512u32, 4096]
    };
    for sector in order {
        if size < u64::from(sector) * 3 {
            continue;
        }
        let header = read_at(r, u64::from(sector), 92)?;
        if &header[..8] != b"EFI PART" {
            continue;
        }
        match read_gpt(r, sector, &header, size) {
            Ok(t) => return Ok(t),
            Err(TableError::BadGpt(why)) => {
                // The backup header, at the last sector.
                let last = size / u64::from(sector) - 1;
                let backup = read_at(r, last * u64::from(sector), 92)?;
                if &backup[..8] == b"EFI PART"
                    && let Ok(t) = read_gpt(r, sector, &backup, size)
                {
                    return Ok(t);
                }
                gpt_error = Some(why);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(why) = gpt_error {
        return Err(TableError::BadGpt(why));
    }
    read_mbr(r, size, sector_size)
}

fn read_gpt<R: Read + Seek>(
    r: &mut R,
    sector: u32,
    header: &[u8],
    size: u64,
) -> Result<PartitionTable, TableError> {
    let header_size = le32(header, 12) as usize;
    if !(92..=sector as usize).contains(&header_size) {
        return Err(TableError::BadGpt(format!("header size {header_size}")));
    }
    let full = {
        let lba = le64(header, 24);
        let (at, _) = span(lba, 1, sector, size)
            .ok_or_else(|| TableError::BadGpt(format!("header LBA {lba} past the device")))?;
        read_at(r, at, header_size)?
    };
    let mut for_crc = full.clone();
    for_crc[16..20].fill(0);
    if crc32fast::hash(&for_crc) != le32(&full, 16) {
        return Err(TableError::BadGpt("header checksum mismatch".into()));
    }
    let entries_lba = le64(&full, 72);
    let count = le32(&full, 80) as usize;
    let entry_size = le32(&full, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(TableError::BadGpt(format!(
            "{count} entries of {entry_size} bytes"
        )));
    }
    let array_sectors = ((count * entry_size) as u64).div_ceil(u64::from(sector));
    let (entries_at, _) = span(entries_lba, array_sectors, sector, size).ok_or_else(|| {
        TableError::BadGpt(format!(
            "the entry array at LBA {entries_lba} runs past the end of the device"
        ))
    })?;
    let entries = read_at(r, entries_at, count * entry_size)?;
    if crc32fast::hash(&entries) != le32(&full, 88) {
        return Err(TableError::BadGpt(
            "partition entries checksum mismatch".into(),
        ));
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&full[56..72]);
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[..16]);
        if type_guid == [0; 16] {
            continue;
        }
        let mut unique = [0u8; 16];
        unique.copy_from_slice(&e[16..32]);
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            continue;
        }
        let number = i as u32 + 1;
        // `last - first + 1` cannot overflow: `last` >= `first`, and a `last` of u64::MAX
        // is past every device.
        let len = (last - first).checked_add(1);
        if len.and_then(|len| span(first, len, sector, size)).is_none() {
            return Err(TableError::BeyondEnd { number, size });
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        let role = match guid_text(&type_guid).as_str() {
            ESP_GUID => Role::Esp,
            XBOOTLDR_GUID => Role::Xbootldr,
            BIOS_BOOT_GUID | SWAP_GUID => Role::Skip,
            _ => Role::Data,
        };
        partitions.push(Partition {
            number,
            start_lba: first,
            size_lba: last - first + 1,
            role,
            partuuid: guid_text(&unique),
            guid_bytes: Some(unique),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(PartitionTable {
        scheme: Scheme::Gpt {
            disk_guid: guid_text(&disk_guid),
        },
        sector_size: sector,
        partitions,
    })
}

fn mbr_role(kind: u8) -> Role {
    match kind {
        0xef => Role::Esp,
        0xea => Role::Xbootldr,
        0x05 | 0x0f | 0x85 | 0x82 | 0xee => Role::Skip,
        _ => Role::Data,
    }
}

fn read_mbr<R: Read + Seek>(
    r: &mut R,
    size: u64,
    sector: u32,
) -> Result<PartitionTable, TableError> {
    if size < 512 {
        return Err(TableError::None);
    }
    let mbr = read_at(r, 0, 512)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(TableError::None);
    }
    let signature = le32(&mbr, 440);
    let mut partitions = Vec::new();
    let entry = |p: &mut Vec<Partition>, number: u32, kind: u8, start: u64, len: u64| {
        // A protective 0xee entry may say 0xffffffff sectors; it is never mounted.
        if kind != 0xee && span(start, len, sector, size).is_none() {
            return Err(TableError::BeyondEnd { number, size });
        }
        p.push(Partition {
            number,
            start_lba: start,
            size_lba: len,
            role: mbr_role(kind),
            partuuid: format!("{signature:08x}-{number:02x}"),
            guid_bytes: None,
            name: String::new(),
        });
        Ok(())
    };
    let mut extended = None;
    for slot in 0..4u32 {
        let e = &mbr[446 + 16 * slot as usize..][..16];
        let (kind, start, len) = (e[4], u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if kind == 0 || len == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            extended = Some(start);
        }
        entry(&mut partitions, slot + 1, kind, start, len)?;
    }
    // Logical partitions: a chain of EBRs, each relative to the extended partition's start.
    if let Some(ext) = extended {
        let mut next = 0u64;
        for number in 5..64u32 {
            let Some((at, _)) = ext
                .checked_add(next)
                .and_then(|lba| span(lba, 1, sector, size))
            else {
                break;
            };
            let ebr = read_at(r, at, 512)?;
            if ebr[510..512] != [0x55, 0xaa] {
                break;
            }
            let (kind, rel, len) = (ebr[446 + 4], le32(&ebr, 446 + 8), le32(&ebr, 446 + 12));
            if kind != 0 && len != 0 {
                // Both u32 offsets added to a u32 start: no u64 overflow.
                entry(
                    &mut partitions,
                    number,
                    kind,
                    ext + next + u64::from(rel),
                    u64::from(len),
                )?;
            }
            let link = u64::from(le32(&ebr, 462 + 8));
            if ebr[462 + 4] == 0 || link == 0 || link <= next {
                break;
            }
            next = link;
        }
    }
    Ok(PartitionTable {
        scheme: Scheme::Mbr { signature },
        sector_size: sector,
        partitions,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Cursor;

    pub fn guid_bytes(text: &str) -> [u8; 16] {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let mut raw = [0u8; 16];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        // Text order → on-disk order: the first three fields are little endian.
        [
            raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9],
            raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]
    }

    /// A GPT disk image of `sectors` 512-byte sectors with `(type, unique, first, last)`
    /// entries at the given indices (the header and entries with correct checksums).
    pub fn gpt_image(sectors: u64, parts: &[(usize, &str, &str, u64, u64)]) -> Vec<u8> {
        let mut img = vec![0u8; sectors as usize * 512];
        let mut entries = vec![0u8; 128 * 128];
        for (i, t, u, first, last) in parts {
            let e = &mut entries[i * 128..][..128];
            e[..16].copy_from_slice(&guid_bytes(t));
            e[16..32].copy_from_slice(&guid_bytes(u));
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in "part".encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        img[1024..1024 + entries.len()].copy_from_slice(&entries);
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes("11111111-2222-3333-4444-555555555555"));
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        img[512..604].copy_from_slice(&h);
        img[510] = 0x55;
        img[511] = 0xaa;
        img[446 + 4] = 0xee;
        img
    }

    #[test]
    fn gpt_partitions_keep_their_numbers_types_and_guids() {
        let img = gpt_image(
            8192,
            &[
                (
                    0,
                    ESP_GUID,
                    "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    2048,
                    4095,
                ),
                (
                    2,
                    "0fc63daf-8483-4772-8e79-3d69d8477de4",
                    "0f0e0d0c-0b0a-0908-0706-050403020100",
                    4096,
                    8000,
                ),
            ],
        );
        let t = read(&mut Cursor::new(&img), img.len() as u64, 512).unwrap();
        assert_eq!(
            t.scheme,
            Scheme::Gpt {
                disk_guid: "11111111-2222-3333-4444-555555555555".into()
            }
        );
        assert_eq!(t.sector_size, 512);
        assert_eq!(t.partitions.len(), 2);
        let esp = &t.partitions[0];
        assert_eq!(
            (esp.number, esp.role, esp.start_lba, esp.size_lba),
            (1, Role::Esp, 2048, 2048)
        );
        assert_eq!(esp.partuuid, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(esp.name, "part");
        let root = t.partition(3).unwrap();
        assert_eq!(root.role, Role::Data);
        assert_eq!(root.partuuid, "0f0e0d0c-0b0a-0908-0706-050403020100");
        assert_eq!(
            root.guid_bytes.unwrap(),
            [12, 13, 14, 15, 10, 11, 8, 9, 7, 6, 5, 4, 3, 2, 1, 0]
        );
        assert_eq!(t.offset_bytes(root), 4096 * 512);
    }

    /// The image's numbers are not trusted: a partition past the device's end, an end LBA of
    /// u64::MAX, an entry array LBA whose byte offset overflows: clear errors, no panic.
    #[test]
    fn hostile_gpt_numbers_are_refused_without_overflow() {
        let data = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        for (first, last) in [(2048u64, 9000u64), (0, u64::MAX), (u64::MAX / 2, u64::MAX)] {
            let img = gpt_image(8192, &[(1, data, data, first, last)]);
            let e = read(&mut Cursor::new(&img), img.len() as u64, 512).unwrap_err();
            let boot = super::super::BootError::Table {
                device: "disk.img".into(),
                source: e,
            };
            assert_eq!(boot.code(), "partition_beyond_end");
            assert_eq!(
                boot.to_string(),
                format!(
                    "disk.img: partition 2 ends past the end of the device ({} bytes)",
                    img.len()
                ),
                "{first}..{last}"
            );
        }
        // The entry array at LBA 2^62: its byte offset overflows u64.
        let mut img = gpt_image(8192, &[(0, data, data, 2048, 4095)]);
        img[512 + 72..512 + 80].copy_from_slice(&(1u64 << 62).to_le_bytes());
        img[512 + 16..512 + 20].fill(0);
        let crc = crc32fast::hash(&img[512..604]);
        img[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        let e = read(&mut Cursor::new(&img), img.len() as u64, 512).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the GPT is damaged: the entry array at LBA 4611686018427387904 runs past the end of \
             the device"
        );
    }

    /// An MBR counts in the device's logical sectors (4096 on a 4Kn disk), and a partition
    /// past the device's end is refused.
    #[test]
    fn mbr_sectors_are_the_devices_and_end_inside_it() {
        let mut mbr = vec![0u8; 4 << 20];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&256u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&512u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let t = read(&mut Cursor::new(&mbr), mbr.len() as u64, 4096).unwrap();
        assert_eq!(t.sector_size, 4096);
        let p = &t.partitions[0];
        assert_eq!((t.offset_bytes(p), t.size_bytes(p)), (1 << 20, 2 << 20));
        let t = read(&mut Cursor::new(&mbr), mbr.len() as u64, 512).unwrap();
        assert_eq!(t.offset_bytes(&t.partitions[0]), 256 * 512);
        // 256 + 1024 sectors of 4096 bytes: 5 MiB, on a 4 MiB device.
        mbr[446 + 12..446 + 16].copy_from_slice(&1024u32.to_le_bytes());
        let e = read(&mut Cursor::new(&mbr), mbr.len() as u64, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition 1 ends past the end of the device (4194304 bytes)"
        );
    }

    #[test]
    fn a_damaged_primary_gpt_is_named_and_mbr_is_read() {
        let mut img = gpt_image(4096, &[(0, ESP_GUID, ESP_GUID, 2048, 4000)]);
        img[1024] ^= 0xff; // an entry byte: the entries' checksum no longer matches
        let e = read(&mut Cursor::new(&img), img.len() as u64, 512).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the GPT is damaged: partition entries checksum mismatch"
        );

        let mut mbr = vec![0u8; 2 << 20];
        mbr[440..444].copy_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&1000u32.to_le_bytes());
        mbr[446 + 16 + 4] = 0xef;
        mbr[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&100u32.to_le_bytes());
        mbr[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&100u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let t = read(&mut Cursor::new(&mbr), mbr.len() as u64, 512).unwrap();
        assert_eq!(
            t.scheme,
            Scheme::Mbr {
                signature: 0xa1b2c3d4
            }
        );
        assert_eq!(t.partitions[0].partuuid, "a1b2c3d4-01");
        assert_eq!(t.partitions[1].role, Role::Esp);
        assert_eq!(t.partitions[1].number, 2);

        let blank = vec![0u8; 1 << 16];
        let e = read(&mut Cursor::new(&blank), blank.len() as u64, 512).unwrap_err();
        assert_eq!(e.to_string(), "no GPT and no MBR partition table");
    }
}
