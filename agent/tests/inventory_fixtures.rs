//! The inventory collector on fixture trees: layouts captured from real machines
//! (`tests/fixtures/inventory/*`, made by `tests/fixtures/capture-inventory.sh`) and
//! synthetic ones (a thousand disks, unreadable files).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

use molar_agent::inventory::{CollectOptions, collect};
use molar_protocol::inventory::{BootMode, FirmwareKind, Inventory, Transport};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(name)
}

fn round_trip(inv: &Inventory) {
    let json = serde_json::to_string(inv).expect("serialize");
    let back: Inventory = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&back, inv);
}

/// This lab's own VM (a Firecracker guest): no SMBIOS at all, virtio everything.
#[test]
fn lab_vm_fixture() {
    let inv = collect(&fixture("lab-vm"), &CollectOptions::default());
    round_trip(&inv);

    assert_eq!(inv.kernel.release.as_deref(), Some("6.18.44-fc-v657"));
    assert_eq!(inv.boot.mode, BootMode::Bios);
    assert_eq!(inv.system, None);
    assert!(
        inv.notes
            .iter()
            .any(|n| n.path == "/sys/firmware/dmi/tables/DMI")
    );
    assert!(inv.notes.iter().any(|n| n.path == "/sys/class/dmi/id"));

    assert_eq!(inv.cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!(
        (inv.cpu.sockets, inv.cpu.cores, inv.cpu.threads),
        (Some(1), Some(2), Some(2))
    );
    assert!(inv.cpu.flags.iter().any(|f| f == "avx2"));
    assert_eq!(inv.numa_nodes.len(), 1);
    assert_eq!(inv.numa_nodes[0].cpus, vec![0, 1]);
    assert!(inv.memory.total_bytes.unwrap_or(0) > 1 << 30);

    let eth0 = inv.nics.iter().find(|n| n.name == "eth0").expect("eth0");
    assert_eq!(eth0.mac.as_deref(), Some("02:fc:00:00:00:01"));
    assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
    assert_eq!(eth0.pci_address.as_deref(), Some("0000:00:03.0"));
    assert_eq!(eth0.mtu, Some(1400));
    assert!(!eth0.virtual_device);
    assert!(
        eth0.addresses
            .iter()
            .any(|a| a.address == "192.0.2.2" && a.prefix_len == 24)
    );
    let lo = inv.nics.iter().find(|n| n.name == "lo").expect("lo");
    assert!(lo.virtual_device);
    assert!(lo.addresses.iter().any(|a| a.address == "127.0.0.1"));

    let vda = inv
        .block_devices
        .iter()
        .find(|d| d.name == "vda")
        .expect("vda");
    assert_eq!(vda.transport, Transport::Virtio);
    assert_eq!(vda.size_bytes, Some(256 << 30));
    assert_eq!(vda.mounts, vec!["/".to_string()]);
    assert!(vda.mounted && vda.boot_device);
    let loops = inv
        .block_devices
        .iter()
        .filter(|d| d.transport == Transport::Loop)
        .count();
    assert_eq!(loops, 8);

    assert_eq!(inv.pci_devices.len(), 6);
    let net = inv
        .pci_devices
        .iter()
        .find(|p| p.address == "0000:00:03.0")
        .expect("nic");
    assert_eq!((net.vendor_id, net.device_id), (Some(0x1af4), Some(0x1041)));
    assert_eq!(net.driver.as_deref(), Some("virtio-pci"));
    assert!(inv.gpus.is_empty());
}

/// A QEMU q35 guest captured by `capture-inventory-qemu.sh`: real SMBIOS tables, two NUMA
/// nodes, NVMe with two namespaces, a partitioned virtio disk.
#[test]
fn qemu_q35_fixture() {
    let inv = collect(&fixture("qemu-q35"), &CollectOptions::default());
    round_trip(&inv);

    let system = inv.system.as_ref().expect("smbios type 1");
    assert_eq!(system.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(system.product.as_deref(), Some("X1"));
    assert_eq!(system.serial.as_deref(), Some("S123"));
    assert_eq!(
        system.uuid.as_deref(),
        Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
    );
    assert_eq!(system.sku.as_deref(), Some("SKU-X1"));
    assert_eq!(system.family.as_deref(), Some("Servers"));
    let bios = inv.bios.as_ref().expect("smbios type 0");
    assert_eq!(bios.vendor.as_deref(), Some("AcmeBIOS"));
    assert_eq!(bios.release_date.as_deref(), Some("03/14/2026"));
    let chassis = inv.chassis.as_ref().expect("smbios type 3");
    assert_eq!(chassis.serial.as_deref(), Some("CH-42"));
    assert_eq!(chassis.asset_tag.as_deref(), Some("ASSET-7"));
    assert_eq!(
        inv.oem_strings,
        vec!["molar.controller=10.0.2.100:9000", "rack=R12-U07"]
    );
    assert_eq!(inv.dimms.len(), 1);
    let dimm = &inv.dimms[0];
    assert_eq!(dimm.size_bytes, Some(512 << 20));
    assert_eq!(dimm.speed_mts, Some(3200));
    assert_eq!(dimm.manufacturer.as_deref(), Some("Hynix"));
    assert_eq!(dimm.serial.as_deref(), Some("DS-0001"));
    assert_eq!(dimm.part_number.as_deref(), Some("HMA82GR7"));
    assert_eq!(inv.memory.installed_bytes, Some(512 << 20));

    assert_eq!(inv.cpu.sockets, Some(2));
    assert_eq!(inv.cpu.threads, Some(4));
    assert_eq!(inv.numa_nodes.len(), 2);
    assert_eq!(inv.numa_nodes[1].cpus, vec![2, 3]);

    let names: Vec<&str> = inv.block_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["nvme0n1", "nvme0n2", "vda"]);
    let ns1 = &inv.block_devices[0];
    assert_eq!(ns1.transport, Transport::Nvme);
    assert_eq!(ns1.serial.as_deref(), Some("deadbeef"));
    assert_eq!(ns1.signatures.len(), 1);
    assert_eq!(ns1.signatures[0].kind, "swap");
    assert_eq!(ns1.signatures[0].label.as_deref(), Some("nvswap"));
    let ctrl = ns1.nvme.as_ref().expect("nvme controller");
    assert_eq!(ctrl.name, "nvme0");
    assert_eq!(ctrl.model.as_deref(), Some("QEMU NVMe Ctrl"));
    assert_eq!(ctrl.firmware.as_deref(), Some("7.2.22"));
    assert_eq!(ctrl.namespaces.len(), 1);
    assert_eq!(ctrl.namespaces[0].nsid, 1);
    assert_eq!(ctrl.namespaces[0].size_blocks, Some(65536));
    // The fixture has no controller device node, so no Identify: noted once per controller.
    assert_eq!(ctrl.capabilities, None);
    let identify_notes: Vec<_> = inv
        .notes
        .iter()
        .filter(|n| n.path == "/dev/nvme0")
        .collect();
    assert_eq!(identify_notes.len(), 1, "{:#?}", inv.notes);
    let vda = &inv.block_devices[2];
    assert_eq!(vda.serial.as_deref(), Some("VB0001"));
    assert_eq!(vda.signatures[0].kind, "dos");
    let ext4 = &vda.partitions[0].signatures[0];
    assert_eq!(ext4.kind, "ext4");
    assert_eq!(ext4.label.as_deref(), Some("fixture"));
    assert_eq!(
        ext4.uuid.as_deref(),
        Some("0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9")
    );

    let eth0 = &inv.nics[0];
    assert_eq!(eth0.mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(eth0.pci_address.as_deref(), Some("0000:00:01.0"));
    assert!(eth0.addresses.iter().any(|a| a.address == "10.0.2.15"));
    let nvme_pci = inv
        .pci_devices
        .iter()
        .find(|p| p.address == "0000:00:03.0")
        .expect("pci");
    assert_eq!(nvme_pci.driver.as_deref(), Some("nvme"));
    assert_eq!(nvme_pci.class, Some(0x010802));

    // Firmware: the BIOS from SMBIOS, one NVMe controller for its two namespaces (without
    // Identify, so no slot details), the microcode; virtio disk and NIC have none.
    let fw: Vec<(FirmwareKind, &str, &str)> = inv
        .firmware
        .iter()
        .map(|c| (c.kind, c.name.as_str(), c.version.as_str()))
        .collect();
    assert_eq!(
        fw,
        vec![
            (FirmwareKind::Bios, "bios", "2.4.1"),
            (FirmwareKind::Nvme, "nvme0", "7.2.22"),
            (FirmwareKind::CpuMicrocode, "cpu", "0x1000065"),
        ]
    );
    assert_eq!(inv.firmware[0].release_date.as_deref(), Some("03/14/2026"));
    assert_eq!(inv.firmware[1].nvme, None);
}

/// The same guest inventoried live (as root, with Identify) by the collector itself: the
/// fixture reproduces it except for what only the devices can answer.
#[test]
fn qemu_q35_fixture_matches_the_live_guest() {
    let text = fs::read_to_string(fixture("qemu-q35.live.json")).expect("live json");
    let mut live: Inventory = serde_json::from_str(&text).expect("live inventory parses");
    assert!(
        live.notes.is_empty(),
        "live guest run had notes: {:#?}",
        live.notes
    );
    let caps = live.block_devices[0]
        .nvme
        .as_ref()
        .and_then(|c| c.capabilities);
    let caps = caps.expect("identify controller ran in the guest");
    // What QEMU 7.2 reports (LAB.md: oacs=0x10a, fna=0, sanicap=0).
    assert!(caps.format);
    assert!(!caps.format_crypto_erase && !caps.sanitize_crypto_erase && !caps.sanitize_block_erase);

    let mut fixture_inv = collect(&fixture("qemu-q35"), &CollectOptions::default());
    for d in &mut live.block_devices {
        if let Some(c) = d.nvme.as_mut() {
            c.capabilities = None;
        }
    }
    fixture_inv.notes.retain(|n| n.path != "/dev/nvme0");
    // The live capture predates the firmware section; the fixture's own section is
    // checked in `qemu_q35_fixture`.
    assert!(live.firmware.is_empty());
    fixture_inv.firmware.clear();
    fixture_inv.collected_at = live.collected_at.clone();
    fixture_inv.agent_version = live.agent_version.clone();
    assert_eq!(fixture_inv, live);
}

/// Kernel-style disk names: sda..sdz, sdaa..sdzz, ...
fn disk_name(mut i: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    letters.reverse();
    format!("sd{}", String::from_utf8(letters).expect("ascii"))
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, content).expect("write");
}

/// A minimal ext4 superblock image: magic, block size, extents feature.
fn ext4_image() -> Vec<u8> {
    let mut img = vec![0u8; 2048];
    img[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
    img[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x240u32.to_le_bytes());
    img[1024 + 0x78..1024 + 0x7C].copy_from_slice(b"data");
    img
}

/// One SATA disk with one ext4 partition, laid out like sysfs.
fn sata_disk(root: &Path, i: usize, ext4: &[u8]) {
    let name = disk_name(i);
    let dev = format!(
        "sys/devices/pci0000:00/0000:00:1f.2/ata{n}/host{i}/target{i}:0:0/{i}:0:0:0",
        n = i + 1
    );
    let blk = format!("{dev}/block/{name}");
    let major = 8 + (i / 16) as u32;
    let minor = (i % 16) * 16;
    for (attr, value) in [
        ("dev", format!("{major}:{minor}")),
        ("size", "7814037168".to_string()),
        ("removable", "0".to_string()),
        ("ro", "0".to_string()),
        ("queue/logical_block_size", "512".to_string()),
        ("queue/physical_block_size", "4096".to_string()),
        ("queue/rotational", "1".to_string()),
    ] {
        write(
            root,
            &format!("{blk}/{attr}"),
            format!("{value}\n").as_bytes(),
        );
    }
    for (attr, value) in [
        ("model", "ST4000NM0035-1V4"),
        ("vendor", "ATA"),
        ("rev", "TN05"),
        ("wwid", "naa.5000c500a1b2c3d4"),
    ] {
        write(
            root,
            &format!("{dev}/{attr}"),
            format!("{value}\n").as_bytes(),
        );
    }
    fs::create_dir_all(root.join(format!("{blk}/holders"))).expect("mkdir");
    symlink("../..", root.join(format!("{blk}/device"))).expect("symlink");
    let part = format!("{blk}/{name}1");
    write(root, &format!("{part}/partition"), b"1\n");
    write(root, &format!("{part}/start"), b"2048\n");
    write(root, &format!("{part}/size"), b"7814035087\n");
    write(
        root,
        &format!("{part}/dev"),
        format!("{major}:{}\n", minor + 1).as_bytes(),
    );
    fs::create_dir_all(root.join(format!("{part}/holders"))).expect("mkdir");
    let (blk, part) = (&blk["sys/".len()..], &part["sys/".len()..]);
    symlink(format!("../{blk}"), root.join(format!("sys/block/{name}"))).expect("symlink");
    symlink(
        format!("../../{blk}"),
        root.join(format!("sys/class/block/{name}")),
    )
    .expect("symlink");
    symlink(
        format!("../../{part}"),
        root.join(format!("sys/class/block/{name}1")),
    )
    .expect("symlink");
    write(root, &format!("dev/{name}1"), ext4);
}

/// A thousand disks: every one listed, in kernel order, each probed once.
#[test]
fn a_thousand_disks() {
    const DISKS: usize = 1000;
    // Some 30,000 files and links: on tmpfs when there is one, as a disk-backed /tmp makes
    // building the tree take longer than collecting it.
    let dir = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("sys/block")).expect("mkdir");
    fs::create_dir_all(root.join("sys/class/block")).expect("mkdir");
    write(root, "proc/self/mountinfo", b"");
    let ext4 = ext4_image();
    for i in 0..DISKS {
        sata_disk(root, i, &ext4);
    }

    let started = Instant::now();
    let inv = collect(root, &CollectOptions::default());
    let took = started.elapsed();
    eprintln!("{DISKS} disks inventoried in {took:?}");

    assert_eq!(inv.block_devices.len(), DISKS);
    let names: Vec<&str> = inv.block_devices.iter().map(|d| d.name.as_str()).collect();
    let expected: Vec<String> = (0..DISKS).map(disk_name).collect();
    assert_eq!(names, expected, "kernel order: sdz before sdaa");
    for d in &inv.block_devices {
        assert_eq!(d.transport, Transport::Sata, "{}", d.name);
        assert_eq!(d.size_bytes, Some(7_814_037_168 * 512));
        assert_eq!(d.model.as_deref(), Some("ST4000NM0035-1V4"));
        assert_eq!(d.partitions.len(), 1);
        let sig = &d.partitions[0].signatures;
        assert_eq!(sig.len(), 1, "{}: {sig:?}", d.name);
        assert_eq!(sig[0].kind, "ext4");
        assert_eq!(sig[0].label.as_deref(), Some("data"));
    }
    // The whole disks have no device node in the fixture: one note each, nothing more.
    let dev_notes = inv
        .notes
        .iter()
        .filter(|n| n.path.starts_with("/dev/sd"))
        .count();
    assert_eq!(dev_notes, DISKS);
    round_trip(&inv);
}

/// Unreadable files (here: directories where files belong, which fail with EISDIR even for
/// root) are notes; the rest of the document is still there.
#[test]
fn unreadable_files_become_notes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("proc/meminfo")).expect("mkdir");
    fs::create_dir_all(root.join("proc/sys/kernel/osrelease")).expect("mkdir");
    write(
        root,
        "proc/cpuinfo",
        b"processor\t: 0\nvendor_id\t: AuthenticAMD\n\n",
    );
    fs::create_dir_all(root.join("sys/firmware/dmi/tables/DMI")).expect("mkdir");
    write(root, "sys/class/dmi/id/sys_vendor", b"Acme\n");
    write(
        root,
        "sys/class/dmi/id/product_uuid",
        b"5E1F6C2A-8D3B-4B8E-9A51-0C2D3E4F5A6B\n",
    );
    write(root, "sys/class/dmi/id/chassis_type", b"23\n");
    fs::create_dir_all(root.join("sys/class/dmi/id/product_serial")).expect("mkdir");

    let inv = collect(root, &CollectOptions::default());
    round_trip(&inv);
    assert_eq!(inv.cpu.vendor.as_deref(), Some("AuthenticAMD"));
    assert_eq!(inv.memory.total_bytes, None);
    assert_eq!(inv.kernel.release, None);
    let system = inv.system.expect("fallback to /sys/class/dmi/id");
    assert_eq!(system.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(system.serial, None);
    assert_eq!(
        system.uuid.as_deref(),
        Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
    );
    let chassis = inv.chassis.expect("chassis from /sys/class/dmi/id");
    assert_eq!(chassis.kind.as_deref(), Some("Rack Mount Chassis"));
    assert!(inv.dimms.is_empty() && inv.oem_strings.is_empty());
    for path in [
        "/proc/meminfo",
        "/proc/sys/kernel/osrelease",
        "/sys/firmware/dmi/tables/DMI",
        "/sys/class/dmi/id/product_serial",
    ] {
        let note = inv.notes.iter().find(|n| n.path == path);
        assert!(note.is_some(), "no note for {path}: {:#?}", inv.notes);
    }
    let meminfo = inv
        .notes
        .iter()
        .find(|n| n.path == "/proc/meminfo")
        .expect("note");
    assert_eq!(meminfo.reason, "is a directory");
}

/// An empty root: every source missing, still a valid document.
#[test]
fn empty_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = collect(dir.path(), &CollectOptions::default());
    round_trip(&inv);
    assert!(inv.block_devices.is_empty() && inv.nics.is_empty() && inv.pci_devices.is_empty());
    assert!(inv.notes.len() >= 6, "{:#?}", inv.notes);
}
