//! The partition table of the written image, read only, as boot sees it: read by
//! [`crate::partition::read`] (GPT through `gptman` with the backup header when the primary is
//! damaged, MBR with logical partitions; every partition inside the device, in the device's
//! logical sectors), then given what boot needs of each partition: its role from its type, its
//! `PARTUUID`, the unique GUID bytes for a UEFI `HD()` node.

use crate::partition::{self, DiskId, Geometry, Kind, PartitionError};
use std::io::{Read, Seek};

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
    /// Not for files (BIOS boot, swap): never mounted.
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

    /// Where `p` starts; [`read`] took it from a table whose partitions lie inside the device.
    pub fn offset_bytes(&self, p: &Partition) -> u64 {
        p.start_lba.saturating_mul(u64::from(self.sector_size))
    }

    pub fn size_bytes(&self, p: &Partition) -> u64 {
        p.size_lba.saturating_mul(u64::from(self.sector_size))
    }
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

fn gpt_role(type_guid: &[u8; 16]) -> Role {
    match guid_text(type_guid).as_str() {
        ESP_GUID => Role::Esp,
        XBOOTLDR_GUID => Role::Xbootldr,
        BIOS_BOOT_GUID | SWAP_GUID => Role::Skip,
        _ => Role::Data,
    }
}

fn mbr_role(type_byte: u8) -> Role {
    match type_byte {
        0xef => Role::Esp,
        0xea => Role::Xbootldr,
        0x82 => Role::Skip,
        _ => Role::Data,
    }
}

/// Reads the table of `device` (named so in errors), `size` bytes whose logical sector is
/// `sector_size` (512 for a file).
pub fn read<R: Read + Seek>(
    r: &mut R,
    device: &str,
    size: u64,
    sector_size: u32,
) -> Result<PartitionTable, PartitionError> {
    let geo = Geometry {
        device: device.to_owned(),
        size_bytes: size,
        sector_size: u64::from(sector_size),
    };
    let table = partition::read(r, &geo)?;
    let scheme = match table.disk_id {
        DiskId::Gpt(g) => Scheme::Gpt {
            disk_guid: guid_text(&g),
        },
        DiskId::Mbr(signature) => Scheme::Mbr { signature },
    };
    let partitions = table
        .parts
        .into_iter()
        .map(|p| {
            let (role, partuuid, guid_bytes) = match p.kind {
                Kind::Gpt {
                    type_guid,
                    unique_guid,
                } => (
                    gpt_role(&type_guid),
                    guid_text(&unique_guid),
                    Some(unique_guid),
                ),
                Kind::Mbr { type_byte } => {
                    let signature = match scheme {
                        Scheme::Mbr { signature } => signature,
                        Scheme::Gpt { .. } => 0,
                    };
                    (
                        mbr_role(type_byte),
                        format!("{signature:08x}-{:02x}", p.number),
                        None,
                    )
                }
            };
            Partition {
                number: p.number,
                start_lba: p.start_bytes / geo.sector_size,
                size_lba: p.size_bytes / geo.sector_size,
                role,
                partuuid,
                guid_bytes,
                name: p.name.unwrap_or_default(),
            }
        })
        .collect();
    Ok(PartitionTable {
        scheme,
        sector_size,
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
        let t = read(&mut Cursor::new(&img), "disk.img", img.len() as u64, 512).unwrap();
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
        for (first, last, code, want) in [
            (
                2048u64,
                9000u64,
                "partition_beyond_end",
                "partition 2 ends at byte 4608512, past",
            ),
            (
                u64::MAX / 2,
                u64::MAX,
                "partition_beyond_end",
                "partition 2 ends at byte",
            ),
            (
                0,
                u64::MAX,
                "bad_gpt",
                "the GPT cannot be read: header at LBA 1: partition 2 starts at LBA 0",
            ),
        ] {
            let img = gpt_image(8192, &[(1, data, data, first, last)]);
            let e = read(&mut Cursor::new(&img), "disk.img", img.len() as u64, 512).unwrap_err();
            let boot = super::super::BootError::from(e);
            assert_eq!(boot.code(), code, "{first}..{last}: {boot}");
            assert!(
                boot.to_string().starts_with(&format!("disk.img: {want}")),
                "{first}..{last}: {boot}"
            );
        }
        // The entry array at LBA 2^62: its byte offset overflows u64.
        let mut img = gpt_image(8192, &[(0, data, data, 2048, 4095)]);
        img[512 + 72..512 + 80].copy_from_slice(&(1u64 << 62).to_le_bytes());
        img[512 + 16..512 + 20].fill(0);
        let crc = crc32fast::hash(&img[512..604]);
        img[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        let e = read(&mut Cursor::new(&img), "disk.img", img.len() as u64, 512).unwrap_err();
        assert_eq!(e.code(), "bad_gpt");
        assert_eq!(
            e.to_string(),
            "disk.img: the GPT cannot be read: header at LBA 1: the entry array at LBA \
             4611686018427387904 runs past the end of the device"
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
        let t = read(&mut Cursor::new(&mbr), "disk.img", mbr.len() as u64, 4096).unwrap();
        assert_eq!(t.sector_size, 4096);
        let p = &t.partitions[0];
        assert_eq!((t.offset_bytes(p), t.size_bytes(p)), (1 << 20, 2 << 20));
        let t = read(&mut Cursor::new(&mbr), "disk.img", mbr.len() as u64, 512).unwrap();
        assert_eq!(t.offset_bytes(&t.partitions[0]), 256 * 512);
        // 256 + 1024 sectors of 4096 bytes: 5 MiB, on a 4 MiB device.
        mbr[446 + 12..446 + 16].copy_from_slice(&1024u32.to_le_bytes());
        let e = read(&mut Cursor::new(&mbr), "disk.img", mbr.len() as u64, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk.img: partition 1 ends at byte 5242880, past the end of the device (4194304 \
             bytes)"
        );
    }

    #[test]
    fn a_damaged_primary_gpt_is_named_and_mbr_is_read() {
        let mut img = gpt_image(4096, &[(0, ESP_GUID, ESP_GUID, 2048, 4000)]);
        img[1024] ^= 0xff; // an entry byte: the entries' checksum no longer matches
        let e = read(&mut Cursor::new(&img), "disk.img", img.len() as u64, 512).unwrap_err();
        assert_eq!(e.code(), "bad_gpt");
        assert!(
            e.to_string()
                .contains("corrupted partition entry array CRC32 checksum"),
            "{e}"
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
        let t = read(&mut Cursor::new(&mbr), "disk.img", mbr.len() as u64, 512).unwrap();
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
        let e = read(
            &mut Cursor::new(&blank),
            "disk.img",
            blank.len() as u64,
            512,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk.img: no partition table (neither GPT nor MBR): write the image first"
        );
    }
}
