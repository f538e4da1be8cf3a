//! `molar.iso`: an ISO 9660 image that UEFI firmware boots through El Torito.
//!
//! The boot catalog's only entry (platform 0xEF, EFI; no emulation) points at an EFI System
//! Partition image, a FAT volume holding the unified kernel image as
//! `\EFI\BOOT\BOOTX64.EFI`, the path firmware starts on removable media. The ISO's root
//! directory holds that image as `EFIBOOT.IMG` too, so the volume is also readable as a plain
//! CD. There is no BIOS entry: legacy boot would need isolinux, which molar does not ship.
//!
//! The system area's MBR has one partition, type 0xEF, over the ESP image: the same file also
//! boots as a disk (a BMC presenting virtual media as a USB stick, or the ISO written to one),
//! where firmware finds the ESP through the MBR instead of El Torito.
//!
//! Layout (2048-byte sectors): 0-15 system area, 16 primary volume descriptor, 17 El Torito
//! boot record, 18 terminator, 19 boot catalog, 20/21 little/big-endian path tables, 22 root
//! directory, then the ESP image, last, so firmware that reads a short El Torito sector count
//! as "to the end of the volume" (EDK2) still sees all of it. No dates are recorded (the
//! "not specified" form): same inputs, same bytes.

use std::io::{self, Cursor, Write};

/// ISO 9660 logical sector size.
pub const SECTOR: usize = 2048;
/// The ESP image's name in the ISO's root directory.
pub const ESP_NAME: &str = "EFIBOOT.IMG";
/// Where firmware looks for a bootloader on removable media (x86-64).
pub const EFI_BOOT_PATH: [&str; 3] = ["EFI", "BOOT", "BOOTX64.EFI"];

const PVD: usize = 16;
const BOOT_RECORD: usize = 17;
const TERMINATOR: usize = 18;
const CATALOG: usize = 19;
const L_PATH: usize = 20;
const M_PATH: usize = 21;
const ROOT: usize = 22;
const ESP: usize = 23;

/// A FAT ESP image holding `uki` as `\EFI\BOOT\BOOTX64.EFI`, sized to fit with a little slack
/// and rounded to whole ISO sectors.
pub fn esp_image(uki: &[u8]) -> io::Result<Vec<u8>> {
    // FAT overhead (two FATs, root directory, cluster rounding) stays well under 1/32 of the
    // volume plus 512 KiB for the sizes a ramdisk has.
    let size = (uki.len() + uki.len() / 32 + (512 << 10)).div_ceil(SECTOR) * SECTOR;
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"MOLAR-ESP  ")
            .volume_id(0x4d4f_4c52),
    )?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        {
            let efi = fs.root_dir().create_dir(EFI_BOOT_PATH[0])?;
            let boot = efi.create_dir(EFI_BOOT_PATH[1])?;
            let mut f = boot.create_file(EFI_BOOT_PATH[2])?;
            f.truncate()?;
            f.write_all(uki)?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both_u32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// A directory record (ECMA-119 9.1) with a fixed recording date (1980-01-01 00:00 UTC).
fn dir_record(name: &[u8], lba: u32, len: u32, directory: bool) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both_u32(lba));
    r[10..18].copy_from_slice(&both_u32(len));
    r[18..25].copy_from_slice(&[80, 1, 1, 0, 0, 0, 0]);
    r[25] = if directory { 2 } else { 0 };
    r[28..32].copy_from_slice(&both_u16(1));
    r[32] = name.len() as u8;
    r.extend_from_slice(name);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// A-/d-characters padded with spaces to `n` bytes (callers pass upper-case ASCII).
fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(n).collect();
    v.resize(n, b' ');
    v
}

/// The "not specified" date of a volume descriptor: sixteen '0' digits and a zero offset.
const NO_DATE: [u8; 17] = [
    b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
    0,
];

/// Why an ISO could not be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("volume id {0:?}: 1-32 characters of A-Z, 0-9 and _")]
    BadVolumeId(String),
    #[error("the ESP image is {0} bytes: ISO 9660 files end below 4 GiB")]
    TooLarge(usize),
}

/// Writes the ISO around `esp` (a FAT image, see [`esp_image`]), labelled `volume_id`.
pub fn write_iso(volume_id: &str, esp: &[u8]) -> Result<Vec<u8>, IsoError> {
    if volume_id.is_empty()
        || volume_id.len() > 32
        || !volume_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(IsoError::BadVolumeId(volume_id.to_string()));
    }
    if u32::try_from(esp.len() + (ESP + 1) * SECTOR).is_err() {
        return Err(IsoError::TooLarge(esp.len()));
    }
    let esp_sectors = esp.len().div_ceil(SECTOR);
    let total = ESP + esp_sectors;
    let mut iso = vec![0u8; total * SECTOR];
    let sector = |n: usize| n * SECTOR..(n + 1) * SECTOR;

    // Root directory: ".", "..", EFIBOOT.IMG;1.
    let mut root = dir_record(&[0], ROOT as u32, SECTOR as u32, true);
    root.extend(dir_record(&[1], ROOT as u32, SECTOR as u32, true));
    root.extend(dir_record(
        format!("{ESP_NAME};1").as_bytes(),
        ESP as u32,
        esp.len() as u32,
        false,
    ));
    iso[ROOT * SECTOR..ROOT * SECTOR + root.len()].copy_from_slice(&root);

    // Path tables: the root only (name length 1, name 0, parent 1, padded to even).
    let path = |lba: [u8; 4], parent: [u8; 2]| {
        let mut p = vec![1u8, 0];
        p.extend_from_slice(&lba);
        p.extend_from_slice(&parent);
        p.extend_from_slice(&[0, 0]);
        p
    };
    let l = path((ROOT as u32).to_le_bytes(), 1u16.to_le_bytes());
    let m = path((ROOT as u32).to_be_bytes(), 1u16.to_be_bytes());
    iso[L_PATH * SECTOR..L_PATH * SECTOR + l.len()].copy_from_slice(&l);
    iso[M_PATH * SECTOR..M_PATH * SECTOR + m.len()].copy_from_slice(&m);

    // Primary volume descriptor (ECMA-119 8.4).
    let pvd = &mut iso[sector(PVD)];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded("", 32));
    pvd[40..72].copy_from_slice(&padded(volume_id, 32));
    pvd[80..88].copy_from_slice(&both_u32(total as u32));
    pvd[120..124].copy_from_slice(&both_u16(1));
    pvd[124..128].copy_from_slice(&both_u16(1));
    pvd[128..132].copy_from_slice(&both_u16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both_u32(l.len() as u32));
    pvd[140..144].copy_from_slice(&(L_PATH as u32).to_le_bytes());
    pvd[148..152].copy_from_slice(&(M_PATH as u32).to_be_bytes());
    pvd[156..190].copy_from_slice(&dir_record(&[0], ROOT as u32, SECTOR as u32, true));
    pvd[190..318].copy_from_slice(&padded("", 128));
    pvd[318..446].copy_from_slice(&padded("", 128));
    pvd[446..574].copy_from_slice(&padded("", 128));
    pvd[574..702].copy_from_slice(&padded("MOLAR-IMAGEBUILDER", 128));
    pvd[702..813].copy_from_slice(&padded("", 111));
    for at in [813, 830, 847, 864] {
        pvd[at..at + 17].copy_from_slice(&NO_DATE);
    }
    pvd[881] = 1;

    // El Torito boot record volume descriptor: points at the catalog.
    let br = &mut iso[sector(BOOT_RECORD)];
    br[0] = 0;
    br[1..6].copy_from_slice(b"CD001");
    br[6] = 1;
    br[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
    br[0x47..0x4b].copy_from_slice(&(CATALOG as u32).to_le_bytes());

    let term = &mut iso[sector(TERMINATOR)];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;

    // Boot catalog: validation entry (platform EFI) and the default entry, the ESP.
    let cat = &mut iso[sector(CATALOG)];
    cat[0] = 1;
    cat[1] = 0xef;
    cat[4..4 + 5].copy_from_slice(b"MOLAR");
    cat[30] = 0x55;
    cat[31] = 0xaa;
    let sum = (0..16).fold(0u16, |s, i| {
        s.wrapping_add(u16::from_le_bytes([cat[2 * i], cat[2 * i + 1]]))
    });
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    let entry = &mut cat[32..64];
    entry[0] = 0x88; // bootable
    entry[1] = 0; // no emulation
    // Sector count in 512-byte units; an ESP over 32 MiB does not fit in 16 bits, and 1 then
    // means "the rest of the volume" to EDK2 (the ESP is the last thing on it).
    let count = u16::try_from(esp.len().div_ceil(512)).unwrap_or(1);
    entry[6..8].copy_from_slice(&count.to_le_bytes());
    entry[8..12].copy_from_slice(&(ESP as u32).to_le_bytes());

    iso[ESP * SECTOR..ESP * SECTOR + esp.len()].copy_from_slice(esp);

    // MBR partition 1: the ESP, in 512-byte sectors; CHS fields at their "use LBA" maximum.
    let mbr = &mut iso[..512];
    let part = &mut mbr[446..462];
    part[0] = 0; // not active
    part[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    part[4] = 0xef;
    part[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    part[8..12].copy_from_slice(&((ESP * SECTOR / 512) as u32).to_le_bytes());
    part[12..16].copy_from_slice(&(esp.len().div_ceil(512) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    Ok(iso)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    fn read_u32(d: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn lays_out_descriptors_catalog_and_the_esp() {
        let uki = b"MZ pretend this is a unified kernel image".repeat(1000);
        let esp = esp_image(&uki).unwrap();
        assert_eq!(esp.len() % SECTOR, 0);
        let iso = write_iso("MOLAR", &esp).unwrap();
        assert_eq!(&iso[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(iso[16 * SECTOR], 1);
        assert_eq!(
            read_u32(&iso, 16 * SECTOR + 80) as usize * SECTOR,
            iso.len()
        );
        assert_eq!(&iso[16 * SECTOR + 40..16 * SECTOR + 45], b"MOLAR");
        assert_eq!(
            &iso[17 * SECTOR + 7..17 * SECTOR + 30],
            b"EL TORITO SPECIFICATION"
        );
        assert_eq!(read_u32(&iso, 17 * SECTOR + 0x47), 19);
        assert_eq!(iso[18 * SECTOR], 255);
        let cat = &iso[19 * SECTOR..19 * SECTOR + 64];
        assert_eq!((cat[0], cat[1], cat[30], cat[31]), (1, 0xef, 0x55, 0xaa));
        let sum = (0..16).fold(0u16, |s, i| {
            s.wrapping_add(u16::from_le_bytes([cat[2 * i], cat[2 * i + 1]]))
        });
        assert_eq!(sum, 0, "validation entry checksum");
        assert_eq!((cat[32], cat[33]), (0x88, 0));
        let lba = read_u32(cat, 40) as usize;
        let count = u16::from_le_bytes([cat[38], cat[39]]) as usize;
        assert_eq!(count * 512, esp.len());
        assert_eq!(&iso[lba * SECTOR..lba * SECTOR + esp.len()], &esp[..]);
        assert_eq!(lba * SECTOR + esp.len(), iso.len(), "the ESP is last");
        // As a disk: the MBR's one partition is the same ESP.
        assert_eq!((iso[510], iso[511], iso[446 + 4]), (0x55, 0xaa, 0xef));
        assert_eq!(read_u32(&iso, 446 + 8) as usize * 512, lba * SECTOR);
        assert_eq!(read_u32(&iso, 446 + 12) as usize * 512, esp.len());
        assert!(iso[446 + 16..510].iter().all(|&b| b == 0), "one partition");

        // The ESP holds the UKI at the removable-media path.
        let mut disk = Cursor::new(esp.clone());
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, uki);

        assert_eq!(esp_image(&uki).unwrap(), esp, "reproducible");
        assert!(write_iso("molar", &esp).is_err());
        assert!(write_iso("", &esp).is_err());
        assert!(write_iso(&"A".repeat(33), &esp).is_err());
    }

    /// `xorriso -report_el_torito plain` and `mdir` on a built ISO: independent readers
    /// agree it has an EFI El Torito entry whose FAT image holds `\EFI\BOOT\BOOTX64.EFI`.
    pub fn cross_check(iso_path: &std::path::Path, uki_len: usize) {
        let xorriso = Command::new("xorriso")
            .args(["-indev"])
            .arg(iso_path)
            .args(["-report_el_torito", "plain", "-report_system_area", "plain"])
            .output()
            .expect("running xorriso");
        let out = String::from_utf8_lossy(&xorriso.stdout).into_owned()
            + &String::from_utf8_lossy(&xorriso.stderr);
        assert!(xorriso.status.success(), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("El Torito boot img :"))
            .unwrap_or_else(|| panic!("no boot image in:\n{out}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        // El Torito boot img :   1  UEFI  y   none  0x0000  0x00  COUNT  LBA
        assert_eq!(&words[6..10], ["UEFI", "y", "none", "0x0000"], "{line}");
        assert_eq!(
            words.last(),
            Some(&"23"),
            "the ESP follows the root directory: {line}"
        );
        assert!(out.contains("El Torito catalog  : 19"), "{out}");
        // The MBR's one partition is the ESP file, for booting the image as a disk.
        let part = out
            .lines()
            .find(|l| l.starts_with("MBR partition      :"))
            .unwrap_or_else(|| panic!("no MBR partition in:\n{out}"));
        let p: Vec<&str> = part.split_whitespace().collect();
        assert_eq!(&p[3..6], ["1", "0x00", "0xef"], "{part}");
        assert_eq!(
            p.get(6),
            Some(&"92"),
            "the ESP starts at ISO sector 23: {part}"
        );
        assert!(
            out.contains("MBR partition path :   1  /EFIBOOT.IMG"),
            "{out}"
        );

        let iso = std::fs::read(iso_path).unwrap();
        let cat = &iso[19 * SECTOR..];
        let lba = read_u32(cat, 40) as usize;
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        std::fs::write(&esp, &iso[lba * SECTOR..]).unwrap();
        let mdir = Command::new("mdir")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("running mdir");
        let listing = String::from_utf8_lossy(&mdir.stdout);
        assert!(
            mdir.status.success(),
            "{listing}{}",
            String::from_utf8_lossy(&mdir.stderr)
        );
        let entry = listing
            .lines()
            .find(|l| l.starts_with("BOOTX64  EFI"))
            .unwrap_or_else(|| panic!("no BOOTX64.EFI in:\n{listing}"));
        let size: usize = entry
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no size in {entry:?}"));
        assert_eq!(size, uki_len, "{entry}");
    }

    /// Skips (or fails under CI=true) without xorriso and mtools.
    pub fn have_cross_check_tools() -> bool {
        let ok = ["xorriso", "mdir"].iter().all(|t| {
            Command::new(t)
                .arg("-version")
                .output()
                .map(|_| true)
                .unwrap_or(false)
        });
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "xorriso and mtools are required under CI"
            );
            eprintln!("skipping the cross-check: xorriso or mdir (mtools) not installed");
        }
        ok
    }

    #[test]
    fn xorriso_and_mtools_read_it() {
        if !have_cross_check_tools() {
            return;
        }
        let uki = vec![0x5au8; 300_000];
        let iso = write_iso("MOLAR", &esp_image(&uki).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("molar.iso");
        std::fs::write(&p, iso).unwrap();
        cross_check(&p, uki.len());
    }
}
