//! Filesystem, volume-manager and partition-table signatures: a small `blkid`.
//!
//! Knows the formats a provisioning agent meets on a server's disks: ext2/3/4, xfs, btrfs,
//! vfat, ntfs, swap, LVM2 physical volumes, Linux md RAID members (all superblock
//! versions), iso9660, and GPT/MBR partition tables. It reads the first [`HEAD_LEN`] bytes of
//! a device, plus the two places near the end where md 0.90/1.0 keep their superblock: a
//! handful of reads per device, whatever its size. Each hit reports where its magic is
//! (`offset`, `magic_len`), so a metadata wipe can clear exactly those bytes.

use std::io::{self, Read, Seek, SeekFrom};

use molar_protocol::inventory::FsSignature;

use super::smbios::format_uuid;

/// Bytes read from the start of a device: covers the btrfs superblock at 64 KiB and the swap
/// signature of 64 KiB pages.
pub const HEAD_LEN: usize = 0x11000;

const MD_MAGIC: u32 = 0xa92b_4efc;

/// One signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `blkid`'s name for the format, e.g. "ext4", "LVM2_member".
    pub kind: &'static str,
    /// Byte offset of the magic on the device.
    pub offset: u64,
    /// Length of the magic in bytes.
    pub magic_len: usize,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub version: Option<String>,
}

impl Signature {
    fn new(kind: &'static str, offset: u64, magic_len: usize) -> Self {
        Self {
            kind,
            offset,
            magic_len,
            uuid: None,
            label: None,
            version: None,
        }
    }
}

impl From<Signature> for FsSignature {
    fn from(s: Signature) -> Self {
        FsSignature {
            kind: s.kind.to_string(),
            offset: s.offset,
            uuid: s.uuid,
            label: s.label,
            version: s.version,
        }
    }
}

fn slice(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    slice(b, off, 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    slice(b, off, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn has(b: &[u8], off: usize, magic: &[u8]) -> bool {
    slice(b, off, magic.len()) == Some(magic)
}

/// A NUL- or space-padded text field; `None` when empty.
fn label(b: &[u8], off: usize, len: usize) -> Option<String> {
    let raw = slice(b, off, len)?;
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    super::trimmed(&raw[..end])
}

/// A UUID stored in big-endian (RFC 4122) byte order.
fn uuid_be(b: &[u8], off: usize) -> Option<String> {
    format_uuid(slice(b, off, 16)?, false)
}

/// Everything recognisable in the first bytes of a device.
pub fn detect_head(head: &[u8]) -> Vec<Signature> {
    let mut out = Vec::new();
    ext(head, &mut out);
    xfs(head, &mut out);
    btrfs(head, &mut out);
    let boot_sector_fs = vfat(head, &mut out) | ntfs(head, &mut out);
    swap(head, &mut out);
    lvm2(head, &mut out);
    for off in [0usize, 4096] {
        md_v1(head, off, off as u64, &mut out);
    }
    iso9660(head, &mut out);
    let gpt = gpt(head, &mut out);
    if !boot_sector_fs && !gpt {
        dos(head, &mut out);
    }
    out
}

fn ext(b: &[u8], out: &mut Vec<Signature>) {
    const SB: usize = 1024;
    if le16(b, SB + 0x38) != Some(0xEF53) {
        return;
    }
    // s_log_block_size beyond 64 KiB blocks is not an ext superblock.
    if le32(b, SB + 0x18).is_none_or(|v| v > 6) {
        return;
    }
    let compat = le32(b, SB + 0x5C).unwrap_or(0);
    let incompat = le32(b, SB + 0x60).unwrap_or(0);
    const HAS_JOURNAL: u32 = 0x4;
    // incompat features ext3 also has: filetype, recover, journal_dev, meta_bg.
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x8 | 0x10;
    let kind = if incompat & !EXT3_INCOMPAT != 0 {
        "ext4"
    } else if compat & HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let mut s = Signature::new(kind, (SB + 0x38) as u64, 2);
    s.uuid = uuid_be(b, SB + 0x68);
    s.label = label(b, SB + 0x78, 16);
    s.version = le32(b, SB + 0x4C).map(|r| format!("1.{r}"));
    out.push(s);
}

fn xfs(b: &[u8], out: &mut Vec<Signature>) {
    if !has(b, 0, b"XFSB") {
        return;
    }
    let mut s = Signature::new("xfs", 0, 4);
    s.uuid = uuid_be(b, 32);
    s.label = label(b, 108, 12);
    out.push(s);
}

fn btrfs(b: &[u8], out: &mut Vec<Signature>) {
    const SB: usize = 0x10000;
    if !has(b, SB + 0x40, b"_BHRfS_M") {
        return;
    }
    let mut s = Signature::new("btrfs", (SB + 0x40) as u64, 8);
    s.uuid = uuid_be(b, SB + 0x20);
    s.label = label(b, SB + 0x12B, 256);
    out.push(s);
}

/// FAT boot sector: jump instruction, power-of-two sector size, 0x55AA and a FAT type string.
fn vfat(b: &[u8], out: &mut Vec<Signature>) -> bool {
    if !has(b, 510, &[0x55, 0xAA]) {
        return false;
    }
    let sector = le16(b, 11).unwrap_or(0);
    if !matches!(sector, 512 | 1024 | 2048 | 4096) || !matches!(b.first(), Some(0xEB | 0xE9)) {
        return false;
    }
    let (magic_off, id_off, label_off, version) = if has(b, 0x52, b"FAT32   ") {
        (0x52, 0x43, 0x47, "FAT32")
    } else if has(b, 0x36, b"FAT16   ") {
        (0x36, 0x27, 0x2B, "FAT16")
    } else if has(b, 0x36, b"FAT12   ") {
        (0x36, 0x27, 0x2B, "FAT12")
    } else if has(b, 0x36, b"FAT     ") {
        (0x36, 0x27, 0x2B, "FAT")
    } else {
        return false;
    };
    let mut s = Signature::new("vfat", magic_off as u64, 8);
    s.version = Some(version.to_string());
    s.uuid = le32(b, id_off).map(|id| format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF));
    s.label = label(b, label_off, 11).filter(|l| l != "NO NAME");
    out.push(s);
    true
}

fn ntfs(b: &[u8], out: &mut Vec<Signature>) -> bool {
    if !has(b, 3, b"NTFS    ") {
        return false;
    }
    let mut s = Signature::new("ntfs", 3, 8);
    s.uuid = slice(b, 0x48, 8).map(|v| {
        let serial = u64::from_le_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]);
        format!("{serial:016X}")
    });
    out.push(s);
    true
}

fn swap(b: &[u8], out: &mut Vec<Signature>) {
    for page in [4096usize, 8192, 16384, 65536] {
        let off = page - 10;
        let version = if has(b, off, b"SWAPSPACE2") {
            "1"
        } else if has(b, off, b"SWAP-SPACE") {
            "0"
        } else {
            continue;
        };
        let mut s = Signature::new("swap", off as u64, 10);
        s.version = Some(version.to_string());
        if version == "1" {
            s.uuid = uuid_be(b, 1024 + 12);
            s.label = label(b, 1024 + 28, 16);
        }
        out.push(s);
        return;
    }
}

fn lvm2(b: &[u8], out: &mut Vec<Signature>) {
    for sector in 0..4usize {
        let off = sector * 512;
        if !has(b, off, b"LABELONE") || !has(b, off + 24, b"LVM2 001") {
            continue;
        }
        let mut s = Signature::new("LVM2_member", off as u64, 8);
        s.version = Some("LVM2 001".to_string());
        // The PV UUID is 32 characters, shown in 6-4-4-4-4-4-6 groups.
        s.uuid = slice(b, off + 32, 32).and_then(|raw| {
            let text = std::str::from_utf8(raw).ok()?;
            if !text.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
            let cuts = [6, 4, 4, 4, 4, 4, 6];
            let mut parts = Vec::new();
            let mut at = 0;
            for n in cuts {
                parts.push(&text[at..at + n]);
                at += n;
            }
            Some(parts.join("-"))
        });
        out.push(s);
        return;
    }
}

/// md superblock 1.x at `off` within `b` (which starts at device offset `dev_off - off`).
fn md_v1(b: &[u8], off: usize, dev_off: u64, out: &mut Vec<Signature>) {
    if le32(b, off) != Some(MD_MAGIC) || le32(b, off + 4) != Some(1) {
        return;
    }
    let minor = match dev_off {
        0 => "1.1",
        4096 => "1.2",
        _ => "1.0",
    };
    let mut s = Signature::new("linux_raid_member", dev_off, 4);
    s.version = Some(minor.to_string());
    s.uuid = uuid_be(b, off + 16);
    s.label = label(b, off + 32, 32);
    out.push(s);
}

/// md superblock 0.90 (host-endian; little-endian on every target molar builds for).
fn md_v090(b: &[u8], dev_off: u64, out: &mut Vec<Signature>) {
    if le32(b, 0) != Some(MD_MAGIC) || le32(b, 4) != Some(0) {
        return;
    }
    let mut s = Signature::new("linux_raid_member", dev_off, 4);
    s.version = Some("0.90.0".to_string());
    out.push(s);
}

fn iso9660(b: &[u8], out: &mut Vec<Signature>) {
    const PVD: usize = 0x8000;
    if !has(b, PVD + 1, b"CD001") {
        return;
    }
    let mut s = Signature::new("iso9660", (PVD + 1) as u64, 5);
    s.label = label(b, PVD + 40, 32);
    out.push(s);
}

fn gpt(b: &[u8], out: &mut Vec<Signature>) -> bool {
    for lba_size in [512usize, 4096] {
        if has(b, lba_size, b"EFI PART") {
            let mut s = Signature::new("gpt", lba_size as u64, 8);
            s.uuid = slice(b, lba_size + 56, 16).and_then(|g| format_uuid(g, true));
            out.push(s);
            return true;
        }
    }
    false
}

/// An MBR partition table: 0x55AA and four entries whose boot flags are 0x00 or 0x80.
fn dos(b: &[u8], out: &mut Vec<Signature>) {
    if !has(b, 510, &[0x55, 0xAA]) {
        return;
    }
    let plausible = (0..4).all(|i| matches!(b.get(446 + 16 * i), Some(0x00 | 0x80)));
    if plausible {
        let mut s = Signature::new("dos", 510, 2);
        s.uuid = le32(b, 440)
            .filter(|id| *id != 0)
            .map(|id| format!("{id:08x}"));
        out.push(s);
    }
}

/// Reads up to `buf.len()` bytes at `offset`; a device shorter than that gives fewer.
fn read_at<R: Read + Seek>(dev: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    dev.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < buf.len() {
        match dev.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Probes a device (or partition, or image) of `size` bytes for every known signature.
pub fn probe<R: Read + Seek>(dev: &mut R, size: u64) -> io::Result<Vec<Signature>> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_at(dev, 0, &mut head)?;
    head.truncate(n);
    let mut out = detect_head(&head);
    // md 1.0 sits 8..16 KiB before the end, 4 KiB aligned; 0.90 in the last 64 KiB-aligned
    // 64 KiB block. Both only on devices big enough to hold them beside the head.
    let sectors = size / 512;
    if sectors >= 128 + 16 {
        let v10 = ((sectors - 16) & !7) * 512;
        let mut block = [0u8; 512];
        if read_at(dev, v10, &mut block)? == block.len() {
            md_v1(&block, 0, v10, &mut out);
        }
        let v090 = ((sectors & !127) - 128) * 512;
        if read_at(dev, v090, &mut block)? == block.len() {
            md_v090(&block, v090, &mut out);
        }
    }
    Ok(out)
}

/// Byte images of each format for tests (here and in the fixture and host tests).
#[cfg(test)]
pub(crate) mod build {
    pub(crate) fn put(img: &mut [u8], off: usize, bytes: &[u8]) {
        img[off..off + bytes.len()].copy_from_slice(bytes);
    }

    pub(crate) const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    pub(crate) fn ext4(size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        put(&mut img, 1024 + 0x38, &0xEF53u16.to_le_bytes());
        put(&mut img, 1024 + 0x18, &2u32.to_le_bytes());
        put(&mut img, 1024 + 0x4C, &1u32.to_le_bytes());
        put(&mut img, 1024 + 0x5C, &0x4u32.to_le_bytes());
        put(
            &mut img,
            1024 + 0x60,
            &(0x2u32 | 0x40 | 0x200).to_le_bytes(),
        );
        put(&mut img, 1024 + 0x68, &UUID);
        put(&mut img, 1024 + 0x78, b"rootfs\0");
        img
    }

    pub(crate) fn swap(size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        put(&mut img, 4086, b"SWAPSPACE2");
        put(&mut img, 1024, &1u32.to_le_bytes());
        put(&mut img, 1036, &UUID);
        put(&mut img, 1052, b"swap0");
        img
    }

    pub(crate) fn gpt_with_protective_mbr(size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        put(&mut img, 446 + 4, &[0xEE]);
        put(&mut img, 510, &[0x55, 0xAA]);
        put(&mut img, 512, b"EFI PART");
        put(&mut img, 512 + 56, &UUID);
        img
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn kinds(v: &[Signature]) -> Vec<&'static str> {
        v.iter().map(|s| s.kind).collect()
    }

    #[test]
    fn ext_family() {
        let img = ext4(8192);
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["ext4"]);
        assert_eq!(sigs[0].offset, 1080);
        assert_eq!(
            sigs[0].uuid.as_deref(),
            Some("01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(sigs[0].label.as_deref(), Some("rootfs"));

        let mut ext3 = img.clone();
        put(&mut ext3, 1024 + 0x60, &0x2u32.to_le_bytes());
        assert_eq!(kinds(&detect_head(&ext3)), vec!["ext3"]);
        let mut ext2 = ext3.clone();
        put(&mut ext2, 1024 + 0x5C, &0u32.to_le_bytes());
        assert_eq!(kinds(&detect_head(&ext2)), vec!["ext2"]);
    }

    #[test]
    fn xfs_and_btrfs() {
        let mut img = vec![0u8; HEAD_LEN];
        put(&mut img, 0, b"XFSB");
        put(&mut img, 32, &UUID);
        put(&mut img, 108, b"data");
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["xfs"]);
        assert_eq!(sigs[0].label.as_deref(), Some("data"));

        let mut img = vec![0u8; HEAD_LEN];
        put(&mut img, 0x10040, b"_BHRfS_M");
        put(&mut img, 0x10020, &UUID);
        put(&mut img, 0x1012B, b"pool");
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["btrfs"]);
        assert_eq!(sigs[0].offset, 0x10040);
        assert_eq!(sigs[0].label.as_deref(), Some("pool"));
        // A head cut short of the btrfs superblock simply finds nothing.
        assert!(detect_head(&img[..0x10000]).is_empty());
    }

    #[test]
    fn vfat_not_mistaken_for_mbr() {
        let mut img = vec![0u8; 4096];
        put(&mut img, 0, &[0xEB, 0x58, 0x90]);
        put(&mut img, 11, &512u16.to_le_bytes());
        put(&mut img, 0x43, &0x1234_ABCDu32.to_le_bytes());
        put(&mut img, 0x47, b"EFI        ");
        put(&mut img, 0x52, b"FAT32   ");
        put(&mut img, 510, &[0x55, 0xAA]);
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["vfat"]);
        assert_eq!(sigs[0].uuid.as_deref(), Some("1234-ABCD"));
        assert_eq!(sigs[0].label.as_deref(), Some("EFI"));
        assert_eq!(sigs[0].version.as_deref(), Some("FAT32"));
    }

    #[test]
    fn swap_lvm_md_iso() {
        let sigs = detect_head(&build::swap(8192));
        assert_eq!(kinds(&sigs), vec!["swap"]);
        assert_eq!(sigs[0].offset, 4086);
        assert_eq!(sigs[0].label.as_deref(), Some("swap0"));

        let mut img = vec![0u8; 4096];
        put(&mut img, 512, b"LABELONE");
        put(&mut img, 512 + 24, b"LVM2 001");
        put(&mut img, 512 + 32, b"abcdefghijklmnopqrstuvwxyzABCDEF");
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["LVM2_member"]);
        assert_eq!(
            sigs[0].uuid.as_deref(),
            Some("abcdef-ghij-klmn-opqr-stuv-wxyz-ABCDEF")
        );

        let mut img = vec![0u8; 8192];
        put(&mut img, 4096, &MD_MAGIC.to_le_bytes());
        put(&mut img, 4100, &1u32.to_le_bytes());
        put(&mut img, 4096 + 16, &UUID);
        put(&mut img, 4096 + 32, b"host:0");
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["linux_raid_member"]);
        assert_eq!(sigs[0].version.as_deref(), Some("1.2"));
        assert_eq!(sigs[0].label.as_deref(), Some("host:0"));

        let mut img = vec![0u8; 0x9000];
        put(&mut img, 0x8001, b"CD001");
        put(&mut img, 0x8000 + 40, b"DEBIAN_12                       ");
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["iso9660"]);
        assert_eq!(sigs[0].label.as_deref(), Some("DEBIAN_12"));
    }

    #[test]
    fn partition_tables() {
        let sigs = detect_head(&gpt_with_protective_mbr(4096));
        assert_eq!(
            kinds(&sigs),
            vec!["gpt"],
            "protective MBR not reported as dos"
        );
        assert_eq!(
            sigs[0].uuid.as_deref(),
            Some("67452301-ab89-efcd-0123-456789abcdef")
        );

        let mut img = vec![0u8; 1024];
        put(&mut img, 440, &0xdead_beefu32.to_le_bytes());
        put(&mut img, 446, &[0x80]);
        put(&mut img, 510, &[0x55, 0xAA]);
        let sigs = detect_head(&img);
        assert_eq!(kinds(&sigs), vec!["dos"]);
        assert_eq!(sigs[0].uuid.as_deref(), Some("deadbeef"));
        put(&mut img, 446, &[0x17]);
        assert!(detect_head(&img).is_empty(), "implausible boot flag");
    }

    #[test]
    fn md_superblocks_at_the_end() {
        let size = 4u64 << 20;
        let sectors = size / 512;
        let mut img = vec![0u8; size as usize];
        let v10 = (((sectors - 16) & !7) * 512) as usize;
        put(&mut img, v10, &MD_MAGIC.to_le_bytes());
        put(&mut img, v10 + 4, &1u32.to_le_bytes());
        let sigs = probe(&mut Cursor::new(&img), size).expect("probe");
        assert_eq!(kinds(&sigs), vec!["linux_raid_member"]);
        assert_eq!(sigs[0].version.as_deref(), Some("1.0"));
        assert_eq!(sigs[0].offset, v10 as u64);

        let mut img = vec![0u8; size as usize];
        let v090 = (((sectors & !127) - 128) * 512) as usize;
        put(&mut img, v090, &MD_MAGIC.to_le_bytes());
        let sigs = probe(&mut Cursor::new(&img), size).expect("probe");
        assert_eq!(kinds(&sigs), vec!["linux_raid_member"]);
        assert_eq!(sigs[0].version.as_deref(), Some("0.90.0"));
    }

    #[test]
    fn empty_and_tiny_devices() {
        assert!(
            probe(&mut Cursor::new(Vec::<u8>::new()), 0)
                .expect("probe")
                .is_empty()
        );
        assert!(
            probe(&mut Cursor::new(vec![0u8; 100]), 100)
                .expect("probe")
                .is_empty()
        );
        // A blank 1 MiB device.
        assert!(
            probe(&mut Cursor::new(vec![0u8; 1 << 20]), 1 << 20)
                .expect("probe")
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..HEAD_LEN + 16)) {
            let _ = detect_head(&data);
            let size = data.len() as u64;
            let _ = probe(&mut Cursor::new(data), size);
        }

        #[test]
        fn claimed_size_beyond_data_never_panics(len in 0usize..4096, size in any::<u64>()) {
            let _ = probe(&mut Cursor::new(vec![0u8; len]), size);
        }
    }
}
