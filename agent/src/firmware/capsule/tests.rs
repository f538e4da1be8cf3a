//! The delivery choice, capsule on disk into a GPT disk image (read back with fatfs and
//! cross-checked with mtools), and the whole staging against fixture roots: a disk with an
//! ESP and an efivarfs directory, or a capsule loader stand-in.

use super::header::tests::{capsule, fmp_body};
use super::header::{FLAG_PERSIST_ACROSS_RESET, FMP_CAPSULE_GUID};
use super::*;
use crate::boot::table::ESP_GUID;
use crate::boot::table::tests::gpt_image;
use crate::disks::tests::Fixture;
use crate::partition::Region;
use molar_protocol::firmware::EFI_GLOBAL_GUID;
use std::io::{Cursor, Read};

const CLASS: &str = "aabbccdd-0000-1111-2222-333344445555";
/// The ESP of [`disk`]: sectors 2048 to 32734 of a 16 MiB image.
const ESP_START: u64 = 2048 * 512;
const ESP_LEN: u64 = (32734 - 2048 + 1) * 512;

/// A 16 MiB GPT image whose first partition is an ESP with an empty FAT filesystem.
fn disk() -> Vec<u8> {
    let mut img = gpt_image(
        32768,
        &[(
            0,
            ESP_GUID,
            "5f5b2a1c-8e0d-4c4e-9a3b-1d2e3f405162",
            2048,
            32734,
        )],
    );
    let mut c = Cursor::new(&mut img);
    let mut r = Region::new(&mut c, ESP_START, ESP_LEN);
    fatfs::format_volume(&mut r, fatfs::FormatVolumeOptions::new()).unwrap();
    img
}

fn read_back(img: &mut Vec<u8>, path: &str) -> Vec<u8> {
    let mut c = Cursor::new(img);
    let mut r = Region::new(&mut c, ESP_START, ESP_LEN);
    let fs = fatfs::FileSystem::new(&mut r, fatfs::FsOptions::new()).unwrap();
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(path)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn the_delivery_follows_os_indications_supported_and_the_loader() {
    let o = |supported, esps, loader| Offer {
        supported,
        esps,
        loader,
    };
    let pick = |offer| choose(offer).map(|(d, _)| d);
    assert_eq!(pick(o(Some(0x4), 1, false)), Ok(Delivery::OnDisk));
    assert_eq!(pick(o(Some(0x4 | 0x40), 2, true)), Ok(Delivery::OnDisk));
    // Bit 0x4 absent (0x1 boot to firmware UI, 0x40 timestamp revocation): the loader.
    assert_eq!(pick(o(Some(0x41), 1, true)), Ok(Delivery::Loader));
    assert_eq!(pick(o(None, 1, true)), Ok(Delivery::Loader));
    // Capsule on disk allowed but nowhere to put it: the loader if there is one.
    let (d, why) = choose(o(Some(0x4), 0, true)).unwrap();
    assert_eq!(d, Delivery::Loader);
    assert!(why.contains("no ESP"), "{why}");
    let e = choose(o(Some(0x1), 3, false)).unwrap_err();
    assert_eq!(
        e,
        "OsIndicationsSupported is 0x1 (no file capsule delivery) and there is no \
         /dev/efi_capsule_loader (module capsule_loader not loaded, or no UEFI runtime \
         services)"
    );
    let e = choose(o(Some(0x4), 0, false)).unwrap_err();
    assert!(e.contains("no writable ESP"), "{e}");
    assert!(
        choose(o(None, 0, false))
            .unwrap_err()
            .contains("not readable")
    );
}

#[test]
fn the_capsule_lands_in_update_capsule_on_the_esp() {
    let mut img = disk();
    let cap = capsule(CLASS, 28, FLAG_PERSIST_ACROSS_RESET, &[0x5a; 70_000]);
    let mut c = Cursor::new(&mut img);
    esp::write_on(&mut c, ESP_START, ESP_LEN, "entry0.cap", &cap).unwrap();
    // Again, with a shorter file: replaced, not appended to.
    let cap2 = capsule(CLASS, 28, 0, b"v2");
    let mut c = Cursor::new(&mut img);
    esp::write_on(&mut c, ESP_START, ESP_LEN, "entry0.cap", &cap2).unwrap();
    assert_eq!(read_back(&mut img, "EFI/UpdateCapsule/entry0.cap"), cap2);
    let mut c = Cursor::new(&mut img);
    esp::write_on(&mut c, ESP_START, ESP_LEN, "other.cap", &cap).unwrap();
    assert_eq!(read_back(&mut img, "efi/updatecapsule/OTHER.CAP"), cap);
    // Outside the ESP nothing changed: the table and the space after the partition.
    let fresh = disk();
    assert_eq!(img[..ESP_START as usize], fresh[..ESP_START as usize]);
    assert_eq!(
        img[(ESP_START + ESP_LEN) as usize..],
        fresh[(ESP_START + ESP_LEN) as usize..]
    );
    // An existing EFI directory in another case is used, not doubled.
    let mut img = disk();
    {
        let mut c = Cursor::new(&mut img);
        let mut r = Region::new(&mut c, ESP_START, ESP_LEN);
        let fs = fatfs::FileSystem::new(&mut r, fatfs::FsOptions::new()).unwrap();
        fs.root_dir()
            .create_dir("efi")
            .unwrap()
            .create_dir("debian")
            .unwrap();
        fs.unmount().unwrap();
    }
    let mut c = Cursor::new(&mut img);
    esp::write_on(&mut c, ESP_START, ESP_LEN, "entry0.cap", &cap).unwrap();
    let mut c = Cursor::new(&mut img);
    let mut r = Region::new(&mut c, ESP_START, ESP_LEN);
    let fs = fatfs::FileSystem::new(&mut r, fatfs::FsOptions::new()).unwrap();
    let top: Vec<String> = fs
        .root_dir()
        .iter()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["efi"]);
    let efi: Vec<String> = fs
        .root_dir()
        .open_dir("efi")
        .unwrap()
        .iter()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(efi, ["debian", "UpdateCapsule"]);
}

#[test]
fn staging_refuses_what_is_not_a_fat_esp() {
    let mut img = gpt_image(4096, &[(0, ESP_GUID, ESP_GUID, 2048, 4000)]);
    let mut c = Cursor::new(&mut img);
    let e = esp::write_on(&mut c, ESP_START, 1953 * 512, "x.cap", b"cap").unwrap_err();
    assert!(e.to_string().contains("not a FAT filesystem"), "{e}");
    let mut img = disk();
    for bad in ["", "a/b", "..\\x"] {
        let mut c = Cursor::new(&mut img);
        assert!(esp::write_on(&mut c, ESP_START, ESP_LEN, bad, b"cap").is_err());
    }
    // Larger than the filesystem: an error, not a truncated file.
    let big = vec![1u8; ESP_LEN as usize];
    let mut c = Cursor::new(&mut img);
    assert!(esp::write_on(&mut c, ESP_START, ESP_LEN, "big.cap", &big).is_err());
}

/// A GPT image of `sectors` whose first partition, an ESP from sector 2048 to 34 before the
/// end, holds an empty FAT of `fat` (with 512-byte clusters for FAT32, to stay small).
fn disk_with(sectors: u64, fat: fatfs::FatType) -> (Vec<u8>, u64) {
    let last = sectors - 34;
    let mut img = gpt_image(
        sectors,
        &[(
            0,
            ESP_GUID,
            "5f5b2a1c-8e0d-4c4e-9a3b-1d2e3f405162",
            2048,
            last,
        )],
    );
    let len = (last - 2048 + 1) * 512;
    let mut c = Cursor::new(&mut img);
    let mut r = Region::new(&mut c, ESP_START, len);
    let mut o = fatfs::FormatVolumeOptions::new().fat_type(fat);
    if fat == fatfs::FatType::Fat32 {
        o = o.bytes_per_cluster(512);
    }
    fatfs::format_volume(&mut r, o).unwrap();
    (img, len)
}

/// mtools reads what fatfs wrote, at the partition's offset in the image file, and
/// fsck.fat finds nothing to repair (the `.`/`..` entries come first), on FAT16 and FAT32.
#[test]
fn mtools_reads_the_staged_capsule_and_fsck_finds_it_clean() {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
    };
    if !have("mtype") || !have("fsck.fat") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mtools (mtype, mdir) and fsck.fat (dosfstools) are needed under CI"
        );
        eprintln!("skipped: mtools (mtype, mdir) or fsck.fat (dosfstools) not installed");
        return;
    }
    for (sectors, fat) in [
        (32768, fatfs::FatType::Fat16),
        (70000, fatfs::FatType::Fat12),
        (140_000, fatfs::FatType::Fat32),
    ] {
        let (mut img, len) = disk_with(sectors, fat);
        let cap = capsule(FMP_CAPSULE_GUID, 32, 0, &fmp_body(CLASS));
        let mut c = Cursor::new(&mut img);
        esp::write_on(&mut c, ESP_START, len, "molar-entry0.cap", &cap).unwrap();
        let mut c = Cursor::new(&mut img);
        esp::write_on(&mut c, ESP_START, len, "second.cap", b"second").unwrap();
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("disk.img");
        std::fs::write(&file, &img).unwrap();
        let at = format!("{}@@{ESP_START}", file.display());
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(["-i", &at])
                .args(&args[1..])
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "{fat:?} {args:?}: {out:?}");
            out.stdout
        };
        let listing = String::from_utf8(run(&["mdir", "-b", "::/EFI/UpdateCapsule"])).unwrap();
        assert!(listing.contains("molar-entry0.cap"), "{listing}");
        assert_eq!(
            run(&["mtype", "::/EFI/UpdateCapsule/molar-entry0.cap"]),
            cap
        );
        let part = d.path().join("esp.img");
        std::fs::write(&part, &img[ESP_START as usize..(ESP_START + len) as usize]).unwrap();
        let out = std::process::Command::new("fsck.fat")
            .args(["-n", "-v"])
            .arg(&part)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{fat:?} fsck.fat: {text}");
        assert!(
            !text.contains("Expected a valid"),
            "{fat:?} fsck.fat: {text}"
        );
    }
}

/// A UEFI machine's fixture root: efivarfs with OsIndicationsSupported, disk `vda` with an
/// ESP when `with_disk`, and a loader stand-in (a plain file) when `loader`.
fn machine(supported: u64, with_disk: bool, loader: bool) -> Fixture {
    let f = Fixture::new();
    let vars = settings::efivars(f.root());
    std::fs::create_dir_all(&vars).unwrap();
    let mut v = 7u32.to_le_bytes().to_vec();
    v.extend_from_slice(&supported.to_le_bytes());
    std::fs::write(
        vars.join(format!("OsIndicationsSupported-{EFI_GLOBAL_GUID}")),
        v,
    )
    .unwrap();
    if with_disk {
        f.disk("pci0000:00/0000:00:04.0/virtio1", "vda", "254:0", 32768);
        std::fs::write(f.root().join("dev/vda"), disk()).unwrap();
    }
    if loader {
        std::fs::write(f.root().join(LOADER), b"").unwrap();
    }
    f
}

fn component(guid: Option<&str>) -> FirmwareComponent {
    let mut c = serde_json::json!({"kind": "uefi_esrt", "name": "entry0", "version": "1"});
    if let Some(g) = guid {
        c["esrt"] = serde_json::json!({"guid": g});
    }
    serde_json::from_value(c).unwrap()
}

fn package(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("package");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn capsule_on_disk_writes_the_esp_os_indications_and_the_marker() {
    let f = machine(0x4, true, true);
    let cap = capsule(FMP_CAPSULE_GUID, 32, 0, &fmp_body(CLASS));
    let d = tempfile::tempdir().unwrap();
    let pkg = package(d.path(), &cap);
    let (ok, plan) = plan_message(f.root(), &Authority::Ramdisk);
    assert!(ok);
    assert!(plan.starts_with("would stage by capsule_on_disk"), "{plan}");
    let a = stage(
        f.root(),
        &Authority::Ramdisk,
        &component(Some(CLASS)),
        &pkg,
        "entry0.cap",
    )
    .unwrap();
    assert!(a.reboot && !a.power_cycle);
    let msg = a.message.unwrap();
    assert!(msg.starts_with("staged by capsule_on_disk"), "{msg}");
    assert!(
        msg.contains("partition 1:\\EFI\\UpdateCapsule\\entry0.cap"),
        "{msg}"
    );
    let mut img = std::fs::read(f.root().join("dev/vda")).unwrap();
    assert_eq!(read_back(&mut img, "EFI/UpdateCapsule/entry0.cap"), cap);
    let ind =
        std::fs::read(settings::efivars(f.root()).join(format!("OsIndications-{EFI_GLOBAL_GUID}")))
            .unwrap();
    assert_eq!(ind, [7, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    let marker = std::fs::read_to_string(f.root().join(CAPSULE_MARKER)).unwrap();
    assert!(marker.starts_with("capsule_on_disk entry0"), "{marker}");
}

#[test]
fn without_file_delivery_the_loader_gets_the_whole_capsule() {
    let f = machine(0x1, true, true);
    let cap = capsule(CLASS, 28, FLAG_PERSIST_ACROSS_RESET, &[7u8; 10_000]);
    let d = tempfile::tempdir().unwrap();
    let pkg = package(d.path(), &cap);
    let (ok, plan) = plan_message(f.root(), &Authority::Ramdisk);
    assert!(ok);
    assert!(plan.starts_with("would stage by capsule_loader"), "{plan}");
    let a = stage(
        f.root(),
        &Authority::Ramdisk,
        &component(Some(CLASS)),
        &pkg,
        "entry0.cap",
    )
    .unwrap();
    assert!(a.reboot);
    assert_eq!(std::fs::read(f.root().join(LOADER)).unwrap(), cap);
    assert!(f.root().join(CAPSULE_MARKER).exists());
    // The ESP and OsIndications are untouched.
    assert_eq!(std::fs::read(f.root().join("dev/vda")).unwrap(), disk());
    assert!(
        !settings::efivars(f.root())
            .join(format!("OsIndications-{EFI_GLOBAL_GUID}"))
            .exists()
    );
}

#[test]
fn refusals_stage_nothing() {
    let d = tempfile::tempdir().unwrap();
    let none = machine(0x0, true, false);
    let cap = capsule(CLASS, 28, 0, b"x");
    let pkg = package(d.path(), &cap);
    let e = stage(
        none.root(),
        &Authority::Ramdisk,
        &component(None),
        &pkg,
        "a.cap",
    )
    .unwrap_err();
    assert_eq!(e.code, "capsule_not_deliverable", "{}", e.msg);
    assert!(!none.root().join(CAPSULE_MARKER).exists());
    let (ok, plan) = plan_message(none.root(), &Authority::Ramdisk);
    assert!(!ok && plan.starts_with("no capsule delivery"), "{plan}");

    let ok = machine(0x4, true, true);
    // Addressed to another firmware class, plain and FMP.
    let other = "11111111-2222-3333-4444-555555555555";
    for bytes in [
        capsule(other, 28, 0, b"x"),
        capsule(FMP_CAPSULE_GUID, 28, 0, &fmp_body(other)),
    ] {
        let pkg = package(d.path(), &bytes);
        let e = stage(
            ok.root(),
            &Authority::Ramdisk,
            &component(Some(CLASS)),
            &pkg,
            "a.cap",
        )
        .unwrap_err();
        assert_eq!(e.code, "capsule_mismatch", "{}", e.msg);
        assert!(e.msg.contains(other), "{}", e.msg);
    }
    // Not a capsule at all.
    let pkg = package(d.path(), b"<html><body>404 not found</body></html>");
    let e = stage(
        ok.root(),
        &Authority::Ramdisk,
        &component(Some(CLASS)),
        &pkg,
        "a.cap",
    )
    .unwrap_err();
    assert_eq!(e.code, "bad_package");
    assert!(e.msg.starts_with("capsule: CapsuleImageSize"), "{}", e.msg);
    // On a host, the ESP's disk must be named: with none named, no ESP, no loader → refused.
    let host = machine(0x4, true, false);
    let pkg = package(d.path(), &cap);
    let e = stage(
        host.root(),
        &Authority::host(&[], true),
        &component(None),
        &pkg,
        "a.cap",
    )
    .unwrap_err();
    assert_eq!(e.code, "capsule_not_deliverable", "{}", e.msg);
    assert_eq!(std::fs::read(host.root().join("dev/vda")).unwrap(), disk());
    assert!(!ok.root().join(CAPSULE_MARKER).exists());
    assert!(!host.root().join(CAPSULE_MARKER).exists());
}
