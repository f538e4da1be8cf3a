//! Partition edits on temp-file disks, tables made by `sfdisk` and checked afterwards by
//! `sfdisk --dump` and `sgdisk -v` (independent readers), and by this module's own reader.

use super::*;
use std::fs::File;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

/// A tool the test needs: present, or skipped with the reason (a failure under CI).
pub(crate) fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing (scripts/install-deps installs it)"
        );
        eprintln!("skipped: {tool} is not installed (scripts/install-deps)");
    }
    ok
}

/// A disk of `size` bytes with the table `sfdisk` makes from `script`. Partition lines are
/// `N : start=..., size=...` and get their numbers from N.
pub(crate) fn disk_with(size: u64, script: &str) -> tempfile::NamedTempFile {
    // Ends in a letter: sfdisk names the partitions of `x.img` `x.img1`, of `x7` `x7p1`.
    let img = tempfile::Builder::new().suffix(".img").tempfile().unwrap();
    img.as_file().set_len(size).unwrap();
    let path = img.path().display().to_string();
    let script: String = script
        .lines()
        .map(|l| match l.split_once(" : ") {
            Some((n, rest)) if n.trim().parse::<u32>().is_ok() => {
                format!("{path}{} : {rest}\n", n.trim())
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel", &path])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
    img
}

fn geo(size: u64) -> Geometry {
    Geometry {
        device: "disk.img".into(),
        size_bytes: size,
        sector_size: 512,
    }
}

/// `sfdisk --dump` partition lines as (number, start sector, size sectors, rest).
fn dump(img: &tempfile::NamedTempFile) -> Vec<(u32, u64, u64, String)> {
    let out = Command::new("sfdisk")
        .arg("--dump")
        .arg(img.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = img.path().display().to_string();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&path)?;
            let (n, fields) = rest.split_once(" : ")?;
            let n: u32 = n.trim().parse().ok()?;
            let field = |k: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|f| f.trim().strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            Some((n, field("start"), field("size"), fields.to_owned()))
        })
        .collect()
}

fn sgdisk_verify(img: &tempfile::NamedTempFile) -> String {
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(img.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn open(img: &tempfile::NamedTempFile) -> File {
    File::options()
        .read(true)
        .write(true)
        .open(img.path())
        .unwrap()
}

#[test]
fn gpt_from_a_smaller_image_moves_the_backup_header_and_keeps_sparse_numbers() {
    if !have("sfdisk") || !have("sgdisk") {
        return;
    }
    // A 32 MiB image with partitions 1 and 3, written to a 128 MiB disk.
    let img = disk_with(
        32 * MIB,
        "label: gpt\n1 : start=2048, size=8192, name=root\n3 : start=12288, size=4096, name=efi",
    );
    img.as_file().set_len(128 * MIB).unwrap();
    let before = dump(&img);
    assert!(sgdisk_verify(&img).contains("doesn't reside\nat the end"));
    let mut f = open(&img);
    let g = geo(128 * MIB);
    let p = add_at_end(&mut f, &g, 8 * MIB, "config-2", Content::Vfat).unwrap();
    // Lowest free number; the last 1 MiB-aligned place before the backup entries.
    assert_eq!(p.number, 2);
    assert_eq!(p.size_bytes, 8 * MIB);
    assert_eq!(p.start_bytes, 119 * MIB);
    assert_eq!(p.name.as_deref(), Some("config-2"));

    let v = sgdisk_verify(&img);
    assert!(v.contains("No problems found"), "{v}");
    let after = dump(&img);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[0], before[0], "partition 1 untouched");
    assert_eq!(after[2], before[1], "partition 3 untouched");
    assert_eq!(
        (after[1].0, after[1].1, after[1].2),
        (2, 119 * 2048, 8 * 2048)
    );
    assert!(after[1].3.contains("name=\"config-2\""), "{}", after[1].3);
    assert!(after[1].3.contains("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"));

    // The image's backup header (its last sector) is wiped, the new one is at the end.
    use std::io::{Read as _, Seek as _};
    let mut sector = [0u8; 512];
    f.seek(SeekFrom::Start(32 * MIB - 512)).unwrap();
    f.read_exact(&mut sector).unwrap();
    assert_eq!(sector, [0u8; 512]);
    f.seek(SeekFrom::Start(128 * MIB - 512)).unwrap();
    f.read_exact(&mut sector).unwrap();
    assert_eq!(&sector[..8], b"EFI PART");

    // Our reader agrees with sfdisk.
    let t = read(&mut f, &g).unwrap();
    assert_eq!(t.scheme, Scheme::Gpt);
    let numbers: Vec<u32> = t.parts.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(t.parts[1], p);
}

#[test]
fn gpt_claiming_a_larger_disk_is_fitted_to_the_device() {
    if !have("sfdisk") || !have("sgdisk") {
        return;
    }
    // Made for 256 MiB, written to a 64 MiB device: the backup header is missing and the
    // primary's last usable LBA lies past the end; the partitions themselves fit.
    let img = disk_with(
        256 * MIB,
        "label: gpt\n1 : start=2048, size=32768, name=root",
    );
    img.as_file().set_len(64 * MIB).unwrap();
    let mut f = open(&img);
    let p = add_at_end(
        &mut f,
        &geo(64 * MIB),
        4 * MIB,
        "config-2",
        Content::Iso9660,
    )
    .unwrap();
    assert_eq!((p.number, p.start_bytes), (2, 59 * MIB));
    let v = sgdisk_verify(&img);
    assert!(v.contains("No problems found"), "{v}");
    let after = dump(&img);
    assert!(after[1].3.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"));

    // A partition that runs past the device's end is an error naming it; nothing written.
    let img = disk_with(
        256 * MIB,
        "label: gpt\n1 : start=2048, size=204800, name=root",
    );
    img.as_file().set_len(64 * MIB).unwrap();
    let before = std::fs::read(img.path()).unwrap();
    let e = add_at_end(
        &mut open(&img),
        &geo(64 * MIB),
        MIB,
        "config-2",
        Content::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "partition_beyond_end");
    assert!(
        e.to_string()
            .starts_with("disk.img: partition 1 ends at byte 105906176, past the end"),
        "{e}"
    );
    assert_eq!(std::fs::read(img.path()).unwrap(), before);
}

#[test]
fn gpt_with_a_damaged_primary_is_read_from_its_backup() {
    if !have("sfdisk") || !have("sgdisk") {
        return;
    }
    let img = disk_with(64 * MIB, "label: gpt\n1 : start=2048, size=8192, name=root");
    {
        use std::io::{Seek as _, Write as _};
        let mut f = open(&img);
        f.seek(SeekFrom::Start(512)).unwrap();
        f.write_all(&[0u8; 512]).unwrap();
    }
    let mut f = open(&img);
    let p = add_at_end(&mut f, &geo(64 * MIB), 2 * MIB, "config-2", Content::Vfat).unwrap();
    assert_eq!(p.number, 2);
    let v = sgdisk_verify(&img);
    assert!(v.contains("No problems found"), "{v}");
    assert_eq!(dump(&img).len(), 2);
}

#[test]
fn no_room_at_the_end_is_a_clear_error() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(64 * MIB, "label: gpt\n1 : start=2048, size=120832");
    let e = add_at_end(
        &mut open(&img),
        &geo(64 * MIB),
        64 * MIB,
        "config-2",
        Content::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_room");
    assert!(
        e.to_string().starts_with(
            "disk.img: no room for a 67108864-byte partition at the end of the disk ("
        ),
        "{e}"
    );
    // A gap between partitions big enough is not the end of the disk.
    let img = disk_with(
        64 * MIB,
        "label: gpt\n1 : start=2048, size=2048\n2 : start=40960, size=81920",
    );
    let e = add_at_end(
        &mut open(&img),
        &geo(64 * MIB),
        8 * MIB,
        "config-2",
        Content::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_room");
    let img = disk_with(64 * MIB, "label: dos\n1 : start=2048, size=120832, type=83");
    let e = add_at_end(
        &mut open(&img),
        &geo(64 * MIB),
        64 * MIB,
        "config-2",
        Content::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_room");
    assert!(e.to_string().contains("4194304 bytes free"), "{e}");
}

#[test]
fn mbr_gets_a_primary_partition_in_the_lowest_free_slot() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(
        32 * MIB,
        "label: dos\n1 : start=2048, size=8192, type=83\n3 : start=10240, size=4096, type=82",
    );
    img.as_file().set_len(96 * MIB).unwrap();
    let mut f = open(&img);
    let g = geo(96 * MIB);
    let p = add_at_end(&mut f, &g, 8 * MIB, "config-2", Content::Vfat).unwrap();
    assert_eq!(
        (p.number, p.start_bytes, p.size_bytes),
        (2, 88 * MIB, 8 * MIB)
    );
    assert_eq!(p.name, None);
    let after = dump(&img);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(
        (after[1].0, after[1].1, after[1].2),
        (2, 88 * 2048, 8 * 2048)
    );
    assert!(after[1].3.contains("type=c"), "{}", after[1].3);
    let out = Command::new("sfdisk")
        .arg("--verify")
        .arg(img.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = read(&mut f, &g).unwrap();
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_eq!(
        t.parts.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn mbr_with_four_primaries_is_refused_and_logical_partitions_are_read() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(
        64 * MIB,
        "label: dos\n1 : start=2048, size=2048\n2 : start=4096, size=2048\n\
         3 : start=6144, size=2048\n4 : start=8192, size=2048",
    );
    let before = std::fs::read(img.path()).unwrap();
    let e = add_at_end(
        &mut open(&img),
        &geo(64 * MIB),
        MIB,
        "config-2",
        Content::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "disk.img: all 4 partition slots are used");
    assert_eq!(e.code(), "no_free_partition_slot");
    assert_eq!(std::fs::read(img.path()).unwrap(), before);

    let img = disk_with(
        64 * MIB,
        "label: dos\n1 : start=2048, size=40960, type=5\n5 : start=4096, size=4096\n\
         6 : start=10240, size=4096",
    );
    let mut f = open(&img);
    let g = geo(64 * MIB);
    let t = read(&mut f, &g).unwrap();
    let numbers: Vec<(u32, u64)> = t.parts.iter().map(|p| (p.number, p.start_bytes)).collect();
    assert_eq!(numbers, [(5, 4096 * 512), (6, 10240 * 512)]);
    let p = add_at_end(&mut f, &g, 4 * MIB, "config-2", Content::Vfat).unwrap();
    assert_eq!(p.number, 2);
    assert_eq!(dump(&img).len(), 4);
}

#[test]
fn no_table_and_a_whole_disk_filesystem_are_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(8 * MIB).unwrap();
    let e = read(&mut open(&f), &geo(8 * MIB)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "disk.img: no partition table (neither GPT nor MBR): write the image first"
    );
    // A FAT filesystem on the whole disk has the 55 aa signature but is no table.
    fatfs::format_volume(
        Region::new(&mut open(&f), 0, 8 * MIB),
        fatfs::FormatVolumeOptions::new(),
    )
    .unwrap();
    let e = add_at_end(&mut open(&f), &geo(8 * MIB), MIB, "config-2", Content::Vfat).unwrap_err();
    assert_eq!(e.code(), "no_partition_table");
    let g = Geometry {
        sector_size: 520,
        ..geo(8 * MIB)
    };
    assert_eq!(
        read(&mut open(&f), &g).unwrap_err().code(),
        "unsupported_sector_size"
    );
}

#[test]
fn a_region_is_a_bounded_stream_of_its_own() {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut c = std::io::Cursor::new(vec![0u8; 100]);
    let mut r = Region::new(&mut c, 10, 20);
    assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), 20);
    r.seek(SeekFrom::Start(15)).unwrap();
    assert_eq!(r.write(&[1; 10]).unwrap(), 5);
    assert!(r.write(&[1]).is_err());
    assert!(r.seek(SeekFrom::Current(-100)).is_err());
    r.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 20);
    r.zero().unwrap();
    let v = c.into_inner();
    assert_eq!(v.iter().filter(|b| **b == 1).count(), 0);
}

/// Rewrites one little-endian u32 field of the primary GPT header and fixes its CRC, so only
/// the field is wrong (what a hostile or buggy image tool could leave).
fn poke_header(img: &tempfile::NamedTempFile, offset: usize, value: u32) {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut f = open(img);
    let mut h = [0u8; 92];
    f.seek(SeekFrom::Start(512)).unwrap();
    f.read_exact(&mut h).unwrap();
    h[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    h[16..20].copy_from_slice(&[0; 4]);
    let mut crc = flate2::Crc::new();
    crc.update(&h);
    h[16..20].copy_from_slice(&crc.sum().to_le_bytes());
    f.seek(SeekFrom::Start(512)).unwrap();
    f.write_all(&h).unwrap();
}

#[test]
fn hostile_gpt_headers_are_refused_not_trusted() {
    if !have("sfdisk") {
        return;
    }
    for (offset, value, want) in [
        (
            80,
            u32::MAX,
            "4294967295 partition entries (1 to 16384 supported)",
        ),
        (80, 0, "0 partition entries"),
        (84, 256, "partition entries of 256 bytes (128 supported)"),
        (
            72,
            0xffff_ff00,
            "the entry array at LBA 4294967040 runs past the end",
        ),
    ] {
        let img = disk_with(64 * MIB, "label: gpt\n1 : start=2048, size=8192");
        poke_header(&img, offset, value);
        let e = read(&mut open(&img), &geo(64 * MIB)).unwrap_err();
        assert_eq!(e.code(), "bad_gpt");
        assert!(
            e.to_string().starts_with(&format!(
                "disk.img: the GPT cannot be read: header at LBA 1: {want}"
            )),
            "{e}"
        );
    }
}

/// A used entry starting at LBA 0 (which made `gptman`'s alignment guess panic) is refused.
#[test]
fn a_gpt_partition_at_lba_0_is_refused_not_a_panic() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(64 * MIB, "label: gpt\n1 : start=2048, size=8192");
    {
        use std::io::{Read as _, Seek as _, Write as _};
        let mut f = open(&img);
        let mut entries = vec![0u8; 128 * 128];
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut entries).unwrap();
        entries[32..40].copy_from_slice(&0u64.to_le_bytes());
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.write_all(&entries).unwrap();
        let crc = crc32fast::hash(&entries);
        drop(f);
        poke_header(&img, 88, crc);
    }
    let e = read(&mut open(&img), &geo(64 * MIB)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "disk.img: the GPT cannot be read: header at LBA 1: partition 1 starts at LBA 0"
    );
}

/// An image whose primary header says its backup is at LBA 2 (the primary entry array), or
/// inside the space of the new backup array: the new table is written and nothing of it (or
/// of a partition) is zeroed as the "old backup".
#[test]
fn a_hostile_old_backup_lba_never_wipes_the_new_table() {
    if !have("sfdisk") || !have("sgdisk") {
        return;
    }
    // LBA 2: the primary array; 128 MiB/512 - 2: the new backup array; 2048: partition 1.
    for stale in [2u32, (128 * MIB / 512 - 2) as u32, 2048] {
        let img = disk_with(32 * MIB, "label: gpt\n1 : start=2048, size=8192, name=root");
        img.as_file().set_len(128 * MIB).unwrap();
        poke_header(&img, 32, stale);
        let mut f = open(&img);
        let g = geo(128 * MIB);
        add_at_end(&mut f, &g, 8 * MIB, "config-2", Content::Vfat).unwrap();
        let v = sgdisk_verify(&img);
        assert!(
            v.contains("No problems found"),
            "old backup at {stale}: {v}"
        );
        let t = read(&mut f, &g).unwrap();
        assert_eq!(t.parts.len(), 2, "old backup at {stale}");
    }
}

/// Whatever sector 0 and the GPT headers hold, reading and adding fail cleanly or succeed.
#[test]
fn random_tables_never_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let base = {
        let mut c = std::io::Cursor::new(vec![0u8; (2 * MIB) as usize]);
        let mut gpt = gptman::GPT::new_from(&mut c, 512, [3; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 34,
            ending_lba: 1000,
            attribute_bits: 0,
            partition_name: "a".into(),
        };
        gpt.write_into(&mut c).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut c, 512).unwrap();
        c.into_inner()
    };
    runner
        .run(
            &(
                prop::collection::vec((0usize..2048, any::<u8>()), 1..16),
                any::<bool>(),
            ),
            |(pokes, fix_crc)| {
                let mut img = base.clone();
                for (at, v) in pokes {
                    img[at] = v;
                }
                if fix_crc {
                    img[512 + 16..512 + 20].copy_from_slice(&[0; 4]);
                    let mut crc = flate2::Crc::new();
                    crc.update(&img[512..512 + 92]);
                    img[512 + 16..512 + 20].copy_from_slice(&crc.sum().to_le_bytes());
                }
                let len = img.len() as u64;
                let mut c = std::io::Cursor::new(img);
                let _ = read(&mut c, &geo(len));
                let _ = add_at_end(&mut c, &geo(len), MIB / 2, "config-2", Content::Vfat);
                Ok(())
            },
        )
        .unwrap();
}
