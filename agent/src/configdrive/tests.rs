//! Config drives written onto temp-file disks and read back by independent readers: `fatfs`
//! and mtools (`mdir`, `mtype`, `mlabel`) for FAT, `isoinfo` (Rock Ridge and Joliet) and
//! `xorriso` for ISO 9660; tables checked by `sfdisk`/`sgdisk`. Hostile ready images.

use super::*;
use crate::partition::tests::{disk_with, have};
use molar_protocol::configdrive::UserData;
use serde_json::json;
use std::fs::File;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn contents() -> ConfigDrive {
    serde_json::from_value(json!({
        "meta_data": {"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "node-1",
                      "public_keys": {"default": "ssh-ed25519 AAAA test"}},
        "network_data": {"links": [{"id": "eth0", "type": "phy"}], "networks": []},
        "user_data": "#cloud-config\nhostname: node-1\n",
        "vendor_data": {"molar": true},
    }))
    .unwrap()
}

fn geo(size: u64) -> Geometry {
    Geometry {
        device: "disk.img".into(),
        size_bytes: size,
        sector_size: 512,
    }
}

fn open(img: &tempfile::NamedTempFile) -> File {
    File::options()
        .read(true)
        .write(true)
        .open(img.path())
        .unwrap()
}

fn gpt_disk() -> tempfile::NamedTempFile {
    let img = disk_with(
        32 * MIB,
        "label: gpt\n1 : start=2048, size=8192, name=root\n3 : start=12288, size=4096, name=efi",
    );
    img.as_file().set_len(256 * MIB).unwrap();
    img
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `blkid -p` on the partition's bytes copied to a file of their own: what cloud-init's
/// ConfigDrive datasource asks (`blkid -t TYPE=vfat`, `LABEL=config-2`).
fn blkid_of(f: &mut File, start: u64, len: u64) -> Option<String> {
    if !have("blkid") {
        return None;
    }
    let copy = tempfile::NamedTempFile::new().unwrap();
    let mut bytes = Vec::new();
    Region::new(f, start, len).read_to_end(&mut bytes).unwrap();
    std::fs::write(copy.path(), &bytes).unwrap();
    Some(run(Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(copy.path())))
}

fn expected_files() -> Vec<(&'static str, Vec<u8>)> {
    let ConfigDrive::Contents(c) = contents() else {
        unreachable!()
    };
    c.files()
}

#[test]
fn vfat_documents_on_gpt_read_back_with_fatfs_and_mtools() {
    if !have("sfdisk") || !have("sgdisk") || !have("mtype") {
        return;
    }
    let img = gpt_disk();
    let mut f = open(&img);
    let o = write_on(
        &mut f,
        &geo(256 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap();
    assert_eq!(o.partition_number, 2);
    assert_eq!(o.format, ConfigDriveFormat::Vfat);
    assert!(!o.reused);
    assert_eq!(o.size_bytes, MIN_VFAT_BYTES);
    assert_eq!(o.start_bytes, 256 * MIB - MIB - MIN_VFAT_BYTES);
    let v = run(Command::new("sgdisk").arg("-v").arg(img.path()));
    assert!(v.contains("No problems found"), "{v}");

    // fatfs, through the partition's region.
    let mut region = Region::new(&mut f, o.start_bytes, o.size_bytes);
    let fs = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label(), "config-2");
    for version in VERSIONS {
        for (name, data) in expected_files() {
            let mut got = Vec::new();
            fs.root_dir()
                .open_file(&format!("openstack/{version}/{name}"))
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, data, "{version}/{name}");
        }
    }
    drop(fs);

    // mtools, by offset on the whole image.
    let at = format!("{}@@{}", img.path().display(), o.start_bytes);
    let listing = run(Command::new("mdir").args(["-i", &at, "-b", "::/openstack/latest"]));
    for name in [
        "meta_data.json",
        "network_data.json",
        "vendor_data2.json",
        "user_data",
    ] {
        assert!(listing.contains(name), "{name} missing from {listing}");
    }
    let meta =
        run(Command::new("mtype").args(["-i", &at, "::/openstack/2018-08-27/meta_data.json"]));
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["hostname"], "node-1");
    let user = run(Command::new("mtype").args(["-i", &at, "::/openstack/latest/user_data"]));
    assert_eq!(user, "#cloud-config\nhostname: node-1\n");
    let label = run(Command::new("mlabel").args(["-i", &at, "-s", "::"]));
    assert!(label.to_lowercase().contains("config-2"), "{label}");
    let dump = run(Command::new("sfdisk").arg("--dump").arg(img.path()));
    assert!(dump.contains("name=\"config-2\""), "{dump}");
    if let Some(b) = blkid_of(&mut f, o.start_bytes, o.size_bytes) {
        assert!(
            b.contains("\nLABEL=config-2\n") && b.contains("\nTYPE=vfat\n"),
            "{b}"
        );
    }
    // dosfstools' checker, read-only, finds nothing to fix.
    if have("fsck.vfat") {
        let copy = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = Vec::new();
        Region::new(&mut f, o.start_bytes, o.size_bytes)
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::write(copy.path(), &bytes).unwrap();
        let out = Command::new("fsck.vfat")
            .arg("-n")
            .arg(copy.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn iso9660_documents_read_back_with_isoinfo_and_xorriso() {
    if !have("sfdisk") || !have("isoinfo") || !have("xorriso") {
        return;
    }
    let img = gpt_disk();
    let mut f = open(&img);
    let o = write_on(
        &mut f,
        &geo(256 * MIB),
        &contents(),
        ConfigDriveFormat::Iso9660,
    )
    .unwrap();
    assert_eq!(
        (o.partition_number, o.format),
        (2, ConfigDriveFormat::Iso9660)
    );
    assert_eq!(o.size_bytes, MIB);
    // The partition's bytes as an ISO file of their own.
    let iso = tempfile::Builder::new().suffix(".iso").tempfile().unwrap();
    let mut region = Region::new(&mut f, o.start_bytes, o.size_bytes);
    let mut bytes = Vec::new();
    region.read_to_end(&mut bytes).unwrap();
    std::fs::write(iso.path(), &bytes).unwrap();
    let p = iso.path().to_str().unwrap();

    if let Some(b) = blkid_of(&mut f, o.start_bytes, o.size_bytes) {
        assert!(
            b.contains("\nLABEL=config-2\n") && b.contains("\nTYPE=iso9660\n"),
            "{b}"
        );
    }
    let d = run(Command::new("isoinfo").args(["-d", "-i", p]));
    assert!(d.contains("Volume id: config-2"), "{d}");
    assert!(d.contains("Rock Ridge signatures version 1 found"), "{d}");
    assert!(d.contains("Joliet with UCS level 3 found"), "{d}");
    for (flag, version) in [("-R", "latest"), ("-J", "2018-08-27"), ("-R", "2018-08-27")] {
        for (name, data) in expected_files() {
            let path = format!("/openstack/{version}/{name}");
            let out = Command::new("isoinfo")
                .args([flag, "-i", p, "-x", &path])
                .output()
                .unwrap();
            assert_eq!(out.stdout, data, "isoinfo {flag} {path}");
        }
    }
    let found = run(Command::new("xorriso").args(["-indev", p, "-find", "/", "-type", "f"]));
    for version in VERSIONS {
        for (name, _) in expected_files() {
            let path = format!("'/openstack/{version}/{name}'");
            assert!(found.contains(&path), "{path} missing from {found}");
        }
    }
    // xorriso's own check of the image finds nothing to complain about.
    let out = Command::new("xorriso")
        .args(["-abort_on", "WARNING", "-indev", p, "-check_media", "--"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_existing_config_drive_is_reused_by_name_or_label() {
    if !have("sfdisk") {
        return;
    }
    // GPT: the second write finds the partition it named.
    let img = gpt_disk();
    let mut f = open(&img);
    let first = write_on(
        &mut f,
        &geo(256 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap();
    let second = write_on(
        &mut f,
        &geo(256 * MIB),
        &contents(),
        ConfigDriveFormat::Iso9660,
    )
    .unwrap();
    assert!(second.reused);
    assert_eq!(
        (
            second.partition_number,
            second.start_bytes,
            second.size_bytes
        ),
        (first.partition_number, first.start_bytes, first.size_bytes)
    );
    // The zeroed region leaves no FAT behind the ISO.
    let mut region = Region::new(&mut f, second.start_bytes, second.size_bytes);
    let sigs = crate::inventory::fssig::probe(&mut region, second.size_bytes).unwrap();
    let kinds: Vec<&str> = sigs.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["iso9660"]);

    // MBR: no names, found by its filesystem label.
    let img = disk_with(32 * MIB, "label: dos\n1 : start=2048, size=8192, type=83");
    img.as_file().set_len(128 * MIB).unwrap();
    let mut f = open(&img);
    let first = write_on(
        &mut f,
        &geo(128 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap();
    assert_eq!((first.partition_number, first.reused), (2, false));
    let second = write_on(
        &mut f,
        &geo(128 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap();
    assert_eq!((second.partition_number, second.reused), (2, true));
    let dump = run(Command::new("sfdisk").arg("--dump").arg(img.path()));
    assert_eq!(dump.matches(" : start=").count(), 2, "{dump}");
}

#[test]
fn an_existing_config_2_partition_too_small_is_an_error() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(
        64 * MIB,
        "label: gpt\n1 : start=2048, size=8192\n2 : start=10240, size=2048, name=config-2",
    );
    let e = write_on(
        &mut open(&img),
        &geo(64 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_room");
    assert_eq!(
        e.to_string(),
        "config drive on disk.img: the existing config-2 partition 2 has 1048576 bytes, the \
         config drive needs 8388608"
    );
    // The ISO of the same documents fits in it.
    let o = write_on(
        &mut open(&img),
        &geo(64 * MIB),
        &contents(),
        ConfigDriveFormat::Iso9660,
    )
    .unwrap();
    assert_eq!((o.partition_number, o.reused), (2, true));
}

#[test]
fn a_disk_without_room_at_the_end_is_refused_untouched() {
    if !have("sfdisk") {
        return;
    }
    let img = disk_with(64 * MIB, "label: gpt\n1 : start=2048, size=126976");
    let before = std::fs::read(img.path()).unwrap();
    let e = write_on(
        &mut open(&img),
        &geo(64 * MIB),
        &contents(),
        ConfigDriveFormat::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "no_room");
    assert!(
        e.to_string()
            .starts_with("config drive: disk.img: no room for a 8388608-byte partition"),
        "{e}"
    );
    assert_eq!(std::fs::read(img.path()).unwrap(), before);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn a_ready_image_made_by_genisoimage_is_written_as_is() {
    if !have("sfdisk") || !have("genisoimage") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("openstack/latest")).unwrap();
    std::fs::write(
        src.path().join("openstack/latest/meta_data.json"),
        b"{\"uuid\":\"x\"}",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let iso = out.path().join("cd.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "config-2", "-o"])
        .arg(&iso)
        .arg(src.path()));
    let bytes = std::fs::read(&iso).unwrap();
    let spec = ConfigDrive::Image(b64(&gzip(&bytes)));
    let img = gpt_disk();
    let mut f = open(&img);
    // The format asked for documents does not apply: the image's own is reported.
    let o = write_on(&mut f, &geo(256 * MIB), &spec, ConfigDriveFormat::Vfat).unwrap();
    assert_eq!(o.format, ConfigDriveFormat::Iso9660);
    assert_eq!(o.size_bytes, (bytes.len() as u64).div_ceil(MIB) * MIB);
    let mut region = Region::new(&mut f, o.start_bytes, bytes.len() as u64);
    let mut got = Vec::new();
    region.read_to_end(&mut got).unwrap();
    assert_eq!(got, bytes);

    // Not gzipped, and wrapped at 76 columns like `base64` prints it: accepted too.
    let wrapped: String = b64(&bytes)
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let img = gpt_disk();
    let o = write_on(
        &mut open(&img),
        &geo(256 * MIB),
        &ConfigDrive::Image(wrapped),
        ConfigDriveFormat::Vfat,
    )
    .unwrap();
    assert_eq!(o.format, ConfigDriveFormat::Iso9660);
}

#[test]
fn hostile_ready_images_are_refused_before_the_disk_is_touched() {
    if !have("sfdisk") {
        return;
    }
    let img = gpt_disk();
    let before = std::fs::read(img.path()).unwrap();
    let attempt = |spec: ConfigDrive| {
        write_on(
            &mut open(&img),
            &geo(256 * MIB),
            &spec,
            ConfigDriveFormat::Vfat,
        )
        .unwrap_err()
    };
    let e = attempt(ConfigDrive::Image("not base64 at all!".into()));
    assert!(
        e.to_string()
            .starts_with("config_drive image: not base64: "),
        "{e}"
    );
    assert_eq!(e.code(), "invalid_params");
    // A gzip bomb: 65 MiB of zeros in about 65 KiB; decoding stops one byte past the bound.
    let bomb = gzip(&vec![0u8; 65 << 20]);
    assert!(bomb.len() < 1 << 20);
    let e = attempt(ConfigDrive::Image(b64(&bomb)));
    assert_eq!(
        e.to_string(),
        "config_drive image: decompresses to more than the 67108864 bytes allowed"
    );
    let e = attempt(ConfigDrive::Image(b64(&gzip(b"hello"))));
    assert_eq!(
        e.to_string(),
        "config_drive image: not a vfat or iso9660 filesystem labelled config-2"
    );
    let e = attempt(ConfigDrive::Image(b64(&bomb[..bomb.len() / 2])));
    assert!(
        e.to_string().starts_with("config_drive image: gzip: "),
        "{e}"
    );
    // A FAT image with another label.
    let mut fat = std::io::Cursor::new(vec![0u8; 4 << 20]);
    fatfs::format_volume(
        &mut fat,
        fatfs::FormatVolumeOptions::new().volume_label(*b"OTHER      "),
    )
    .unwrap();
    let e = attempt(ConfigDrive::Image(b64(&gzip(fat.get_ref()))));
    assert!(e.to_string().contains("labelled config-2"), "{e}");
    let e = attempt(ConfigDrive::Fetch {
        url: "http://127.0.0.1:1/cd.img".into(),
        checksum: "sha256:00".into(),
        ca_pem: None,
    });
    assert_eq!(
        e.to_string(),
        "config_drive url: not supported yet (give the documents or an inline image)"
    );
    assert_eq!(std::fs::read(img.path()).unwrap(), before);
}

#[test]
fn documents_too_large_for_a_config_drive_are_refused() {
    let ConfigDrive::Contents(mut c) = contents() else {
        unreachable!()
    };
    // Past the protocol's bound only a caller building the value itself can go.
    c.user_data = Some(UserData::Text("x".repeat(40 << 20)));
    let e = write_on(
        &mut std::io::Cursor::new(vec![0u8; 1 << 20]),
        &geo(1 << 20),
        &ConfigDrive::Contents(c),
        ConfigDriveFormat::Vfat,
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_params");
    assert!(e.to_string().contains("more than the 67108864"), "{e}");
}

#[test]
fn the_gate_refuses_devices_not_named_on_a_host_and_partitions() {
    let f = crate::disks::tests::sample();
    let host = Authority::host(&[], false);
    let e = write(f.root(), "vda", &contents(), ConfigDriveFormat::Vfat, &host).unwrap_err();
    assert_eq!(e.code(), "refused");
    assert_eq!(
        e.to_string(),
        "config drive on vda refused: not running as the ramdisk's init and the device was not \
         named with --allow-host"
    );
    let e = write(
        f.root(),
        "nope",
        &contents(),
        ConfigDriveFormat::Vfat,
        &Authority::Ramdisk,
    )
    .unwrap_err();
    assert_eq!(e.code(), "not_found");
    let e = write(
        f.root(),
        "sda",
        &contents(),
        ConfigDriveFormat::Vfat,
        &Authority::Ramdisk,
    )
    .unwrap_err();
    assert_eq!(e.code(), "boot_device");
    // Bad params fail before the devices are looked at (this root has no /sys).
    let e = write(
        Path::new("/nonexistent"),
        "vda",
        &ConfigDrive::Image("!".into()),
        ConfigDriveFormat::Vfat,
        &Authority::Ramdisk,
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_params");
}

#[test]
fn the_iso_of_the_same_documents_is_the_same_bytes() {
    let files = expected_files();
    let iso = iso::Iso::new(&VERSIONS, &files);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    iso.write_to(&mut a).unwrap();
    iso::Iso::new(&VERSIONS, &files).write_to(&mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len() as u64, iso.size());
    let mut cur = std::io::Cursor::new(a.as_slice());
    assert_eq!(
        image::config_drive_format(&mut cur, a.len() as u64).unwrap(),
        Some(ConfigDriveFormat::Iso9660)
    );
}

#[test]
fn a_4k_sector_disk_gets_fat_with_4k_sectors_and_no_iso() {
    // gptman makes the table here: sfdisk cannot be told a file has 4096-byte sectors.
    let size = 256 * MIB;
    let mut disk = std::io::Cursor::new(vec![0u8; size as usize]);
    let mut gpt = gptman::GPT::new_from(&mut disk, 4096, [7; 16]).unwrap();
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: [1; 16],
        unique_partition_guid: [2; 16],
        starting_lba: 256,
        ending_lba: 256 + 2559,
        attribute_bits: 0,
        partition_name: "root".into(),
    };
    gpt.write_into(&mut disk).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut disk, 4096).unwrap();
    let g = Geometry {
        sector_size: 4096,
        ..geo(size)
    };
    let e = write_on(&mut disk, &g, &contents(), ConfigDriveFormat::Iso9660).unwrap_err();
    assert!(e.to_string().contains("4096-byte sectors"), "{e}");
    let o = write_on(&mut disk, &g, &contents(), ConfigDriveFormat::Vfat).unwrap();
    assert_eq!((o.partition_number, o.size_bytes), (2, MIN_VFAT_BYTES));
    let mut region = Region::new(&mut disk, o.start_bytes, o.size_bytes);
    let mut boot = [0u8; 13];
    region.read_exact(&mut boot).unwrap();
    assert_eq!(u16::from_le_bytes([boot[11], boot[12]]), 4096);
}

#[test]
fn fetched_bytes_are_checked_like_an_inline_image() {
    let e = write_fetched(
        Path::new("/nonexistent"),
        "vda",
        gzip(b"not a filesystem"),
        &Authority::Ramdisk,
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_params");
    assert!(e.to_string().contains("labelled config-2"), "{e}");
}
