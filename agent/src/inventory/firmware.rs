//! The firmware section of the inventory: one [`FirmwareComponent`] per thing that runs
//! firmware, so a decommissioning or QC step can compare versions without knowing where each
//! one is read from.
//!
//! Most versions are already in other sections (SMBIOS type 0, the NVMe controller and disk
//! revisions, the NIC ethtool answer, the CPU microcode) and are copied from there rather than
//! read twice. What only this section has: the EFI System Resource Table, and the NVMe
//! controllers' FRMW byte and Firmware Slot Information log. The BMC component is added by
//! the caller that talks to the BMC ([`add_bmc`]). A source that is missing simply yields no
//! component; one that is present but unreadable also leaves a note.

use std::collections::BTreeSet;
use std::fs::File;

use molar_protocol::bmc::BmcInfo;
use molar_protocol::inventory::{
    Bios, BlockDevice, Cpu, EsrtEntry, FirmwareComponent, FirmwareKind, Inventory, Nic,
    NvmeFirmware, NvmeFirmwareSlot, PciIds, Transport,
};

use super::{CollectOptions, Ctx, InventoryError};
use crate::hw::nvme;

const ESRT_ENTRIES: &str = "/sys/firmware/efi/esrt/entries";
const MICROCODE_SYSFS: &str = "/sys/devices/system/cpu/cpu0/microcode/version";

/// The firmware components found in the rest of the inventory and under the root, in the
/// order bios, ESRT entries, NVMe controllers, disks, NICs, CPU microcode.
pub(crate) fn collect(
    ctx: &mut Ctx,
    opts: &CollectOptions,
    bios: Option<&Bios>,
    cpu: &Cpu,
    block_devices: &[BlockDevice],
    nics: &[Nic],
) -> Vec<FirmwareComponent> {
    let mut out = Vec::new();
    if let Some(b) = bios
        && let Some(version) = b.version.clone()
    {
        out.push(FirmwareComponent {
            vendor: b.vendor.clone(),
            release_date: b.release_date.clone(),
            ..component(FirmwareKind::Bios, "bios", version)
        });
    }
    esrt(ctx, &mut out);
    nvme_controllers(ctx, opts, block_devices, &mut out);
    for d in block_devices {
        if d.nvme.is_some()
            || !matches!(
                d.transport,
                Transport::Sata | Transport::Sas | Transport::Scsi
            )
        {
            continue;
        }
        if let Some(version) = d.firmware.clone() {
            out.push(FirmwareComponent {
                vendor: d.vendor.clone(),
                model: d.model.clone(),
                ..component(FirmwareKind::Disk, &d.name, version)
            });
        }
    }
    for n in nics {
        if let Some(version) = n.firmware_version.clone().filter(|v| !is_placeholder(v)) {
            out.push(FirmwareComponent {
                driver: n.driver.clone(),
                pci: pci_ids(ctx, "net", &n.name),
                ..component(FirmwareKind::Nic, &n.name, version)
            });
        }
    }
    // /proc/cpuinfo is what the cpu section parsed; the sysfs file is the fallback for
    // kernels or architectures whose cpuinfo has no microcode line.
    let microcode = cpu
        .microcode
        .clone()
        .or_else(|| ctx.read_attr(MICROCODE_SYSFS));
    if let Some(version) = microcode {
        out.push(FirmwareComponent {
            vendor: cpu.vendor.clone(),
            model: cpu.model.clone(),
            ..component(FirmwareKind::CpuMicrocode, "cpu", version)
        });
    }
    out
}

/// Adds the BMC component from the inventory's BMC section, after the platform firmware
/// (BIOS and ESRT) so the section keeps its order.
pub fn add_bmc(inv: &mut Inventory) {
    let Some(bmc) = inv.bmc.as_ref() else {
        return;
    };
    let c = bmc_component(bmc);
    let at = inv
        .firmware
        .iter()
        .position(|c| !matches!(c.kind, FirmwareKind::Bios | FirmwareKind::UefiEsrt))
        .unwrap_or(inv.firmware.len());
    inv.firmware.insert(at, c);
}

fn bmc_component(bmc: &BmcInfo) -> FirmwareComponent {
    FirmwareComponent {
        vendor: Some(format!("iana:{}", bmc.manufacturer_id)),
        model: Some(format!("product 0x{:04x}", bmc.product_id)),
        aux_revision: bmc.aux_firmware_revision.clone(),
        ..component(FirmwareKind::Bmc, "bmc", bmc.firmware_version.clone())
    }
}

fn component(kind: FirmwareKind, name: &str, version: String) -> FirmwareComponent {
    FirmwareComponent {
        kind,
        name: name.to_string(),
        vendor: None,
        model: None,
        version,
        release_date: None,
        aux_revision: None,
        driver: None,
        esrt: None,
        nvme: None,
        pci: None,
    }
}

/// The PCI ids of the function behind `/sys/class/CLASS/NAME/device`, when it is one (a
/// virtual NIC has no `device`, a non-PCI one no `vendor`).
fn pci_ids(ctx: &mut Ctx, class: &str, name: &str) -> Option<PciIds> {
    let dir = format!("/sys/class/{class}/{name}/device");
    let mut id = |attr: &str| {
        ctx.hex_attr(&format!("{dir}/{attr}"))
            .and_then(|v| u16::try_from(v).ok())
    };
    let (vendor_id, device_id) = (id("vendor")?, id("device")?);
    Some(PciIds {
        vendor_id,
        device_id,
        subsystem_vendor_id: id("subsystem_vendor"),
        subsystem_device_id: id("subsystem_device"),
    })
}

/// What drivers without firmware (virtio, loopback) answer: not a version.
fn is_placeholder(v: &str) -> bool {
    matches!(v.trim(), "" | "N/A" | "n/a")
}

/// Every ESRT entry. No ESRT directory (BIOS boot, firmware without ESRT, kernel without
/// `CONFIG_EFI_ESRT`) is not worth a note; an entry without its GUID or version is.
fn esrt(ctx: &mut Ctx, out: &mut Vec<FirmwareComponent>) {
    for name in ctx.list_dir(ESRT_ENTRIES, false) {
        if !name.starts_with("entry") {
            continue;
        }
        let dir = format!("{ESRT_ENTRIES}/{name}");
        let Some(entry) = esrt_entry(ctx, &dir) else {
            continue;
        };
        let Some(version) = entry.fw_version.map(|v| v.to_string()) else {
            ctx.note(&format!("{dir}/fw_version"), "esrt entry without a version");
            continue;
        };
        out.push(FirmwareComponent {
            esrt: Some(entry),
            ..component(FirmwareKind::UefiEsrt, &name, version)
        });
    }
}

/// One entry directory; `None` (noted) without a valid `fw_class` GUID.
fn esrt_entry(ctx: &mut Ctx, dir: &str) -> Option<EsrtEntry> {
    let class_path = format!("{dir}/fw_class");
    let Some(raw) = ctx.read_attr(&class_path) else {
        ctx.note(&class_path, "esrt entry without a firmware class");
        return None;
    };
    let Some(guid) = parse_guid(&raw) else {
        ctx.error(InventoryError::Parse {
            path: class_path,
            what: "not a guid".into(),
        });
        return None;
    };
    let mut num = |file: &str| -> Option<u32> {
        let path = format!("{dir}/{file}");
        let text = ctx.read_attr(&path)?;
        let v = parse_u32(&text);
        if v.is_none() {
            ctx.error(InventoryError::Parse {
                path,
                what: "not a 32-bit number".into(),
            });
        }
        v
    };
    Some(EsrtEntry {
        guid,
        fw_type: num("fw_type"),
        fw_version: num("fw_version"),
        lowest_supported_fw_version: num("lowest_supported_fw_version"),
        capsule_flags: num("capsule_flags"),
        last_attempt_status: num("last_attempt_status"),
        last_attempt_version: num("last_attempt_version"),
    })
}

/// A GUID in its 8-4-4-4-12 text form, lowercased; anything else is `None`.
pub(crate) fn parse_guid(text: &str) -> Option<String> {
    let t = text.trim();
    let groups: Vec<&str> = t.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != lens.len()
        || groups
            .iter()
            .zip(lens)
            .any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(t.to_ascii_lowercase())
}

/// Decimal, or hexadecimal with `0x` (sysfs prints `capsule_flags` that way).
pub(crate) fn parse_u32(text: &str) -> Option<u32> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// One component per NVMe controller (several namespaces share one), with FRMW and the slot
/// log when the controller answers admin commands.
fn nvme_controllers(
    ctx: &mut Ctx,
    opts: &CollectOptions,
    block_devices: &[BlockDevice],
    out: &mut Vec<FirmwareComponent>,
) {
    let mut seen = BTreeSet::new();
    for c in block_devices.iter().filter_map(|d| d.nvme.as_ref()) {
        if !seen.insert(c.name.clone()) {
            continue;
        }
        let details = if opts.nvme_identify {
            nvme_details(ctx, &c.name)
        } else {
            None
        };
        // The active slot's revision is the running firmware when Identify had no FR.
        let version = c.firmware.clone().or_else(|| {
            let d = details.as_ref()?;
            let active = d.active_slot?;
            d.slot_revisions
                .iter()
                .find(|s| s.slot == active)
                .map(|s| s.revision.clone())
        });
        let Some(version) = version else {
            continue;
        };
        out.push(FirmwareComponent {
            model: c.model.clone(),
            nvme: details,
            pci: pci_ids(ctx, "nvme", &c.name),
            ..component(FirmwareKind::Nvme, &c.name, version)
        });
    }
}

/// FRMW and the slot log of `/dev/NAME`. A controller that cannot be opened or identified
/// was already noted by the NVMe section, so only a failing log page adds a note here.
fn nvme_details(ctx: &mut Ctx, name: &str) -> Option<NvmeFirmware> {
    let path = format!("/dev/{name}");
    let file = File::open(ctx.path(&path)).ok()?;
    let id = nvme::identify_controller(&file).ok()?;
    let frmw = nvme::Frmw::decode(id.frmw);
    let mut fw = NvmeFirmware {
        slots: Some(frmw.slots),
        slot1_read_only: Some(frmw.slot1_read_only),
        activation_without_reset: Some(frmw.activation_without_reset),
        ..NvmeFirmware::default()
    };
    match nvme::firmware_slot_log(&file) {
        Ok(log) => apply_slot_log(&mut fw, &log),
        Err(e) => ctx.error(InventoryError::NvmeIdentify {
            path,
            reason: e.to_string(),
        }),
    }
    Some(fw)
}

/// Copies the decoded slot log into the wire form.
pub(crate) fn apply_slot_log(fw: &mut NvmeFirmware, log: &nvme::FirmwareSlotLog) {
    fw.active_slot = (log.active_slot != 0).then_some(log.active_slot);
    fw.next_reset_slot = log.next_reset_slot;
    fw.slot_revisions = log
        .revisions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Some(NvmeFirmwareSlot {
                slot: i as u8 + 1,
                revision: r.clone()?,
            })
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use molar_protocol::inventory::NvmeController;
    use std::fs;
    use std::path::Path;

    fn write(root: &Path, rel: &str, value: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, value).expect("write");
    }

    fn entry(root: &Path, name: &str, files: &[(&str, &[u8])]) {
        for (f, v) in files {
            write(
                root,
                &format!("sys/firmware/efi/esrt/entries/{name}/{f}"),
                v,
            );
        }
    }

    #[test]
    fn esrt_from_a_fixture_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // As the kernel's esrt.c prints them: decimal, capsule_flags in hex.
        entry(
            root,
            "entry0",
            &[
                ("fw_class", b"DDC0EE61-E7F0-4E7D-ACC5-C070A398838E\n"),
                ("fw_type", b"1\n"),
                ("fw_version", b"65586\n"),
                ("lowest_supported_fw_version", b"65536\n"),
                ("capsule_flags", b"0x8010\n"),
                ("last_attempt_status", b"0\n"),
                ("last_attempt_version", b"65586\n"),
            ],
        );
        // Hostile entries: a broken GUID, non-UTF-8 numbers, no version at all.
        entry(
            root,
            "entry1",
            &[("fw_class", b"not-a-guid\n"), ("fw_version", b"1\n")],
        );
        entry(
            root,
            "entry2",
            &[
                ("fw_class", b"5b2b3f1a-0000-4000-8000-00000000000a"),
                ("fw_version", b"7"),
                ("fw_type", b"\xff\xfe\x00garbage"),
                ("last_attempt_status", b"99999999999999999999"),
            ],
        );
        entry(
            root,
            "entry3",
            &[("fw_class", b"5b2b3f1a-0000-4000-8000-00000000000b")],
        );
        // Not an entry directory: ignored.
        write(root, "sys/firmware/efi/esrt/entries/README", b"x");

        let mut ctx = Ctx::new(root);
        let mut out = Vec::new();
        esrt(&mut ctx, &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].kind, FirmwareKind::UefiEsrt);
        assert_eq!(out[0].name, "entry0");
        assert_eq!(out[0].version, "65586");
        assert_eq!(
            out[0].esrt,
            Some(EsrtEntry {
                guid: "ddc0ee61-e7f0-4e7d-acc5-c070a398838e".into(),
                fw_type: Some(1),
                fw_version: Some(65586),
                lowest_supported_fw_version: Some(65536),
                capsule_flags: Some(0x8010),
                last_attempt_status: Some(0),
                last_attempt_version: Some(65586),
            })
        );
        let e2 = out[1].esrt.as_ref().expect("entry2");
        assert_eq!((e2.fw_type, e2.last_attempt_status), (None, None));
        assert_eq!(out[1].version, "7");

        let paths: Vec<&str> = ctx.notes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/sys/firmware/efi/esrt/entries/entry1/fw_class",
                "/sys/firmware/efi/esrt/entries/entry2/fw_type",
                "/sys/firmware/efi/esrt/entries/entry2/last_attempt_status",
                "/sys/firmware/efi/esrt/entries/entry3/fw_version",
            ],
            "{:#?}",
            ctx.notes
        );

        // No ESRT at all: nothing, and no note.
        let empty = tempfile::tempdir().expect("tempdir");
        let mut ctx = Ctx::new(empty.path());
        let mut out = Vec::new();
        esrt(&mut ctx, &mut out);
        assert!(out.is_empty() && ctx.notes.is_empty());
    }

    #[test]
    fn guids_and_numbers() {
        assert_eq!(
            parse_guid(" 00000000-0000-0000-0000-00000000000A\n").as_deref(),
            Some("00000000-0000-0000-0000-00000000000a")
        );
        for bad in [
            "",
            "0000000-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-00000000000g",
            "00000000-0000-0000-0000-000000000000-0",
            "ééééééé-0000-0000-0000-000000000000",
        ] {
            assert_eq!(parse_guid(bad), None, "{bad:?}");
        }
        assert_eq!(parse_u32("42\n"), Some(42));
        assert_eq!(parse_u32("0xFFFFFFFF"), Some(u32::MAX));
        assert_eq!(parse_u32("0x100000000"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32("0x"), None);
    }

    fn disk(name: &str, transport: Transport, firmware: Option<&str>) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            path: format!("/dev/{name}"),
            size_bytes: None,
            logical_sector_size: None,
            physical_sector_size: None,
            rotational: None,
            removable: None,
            read_only: None,
            model: Some("ST4000NM0035".into()),
            vendor: Some("ATA".into()),
            serial: None,
            wwn: None,
            firmware: firmware.map(String::from),
            transport,
            by_path: None,
            signatures: Vec::new(),
            partitions: Vec::new(),
            holders: Vec::new(),
            mounts: Vec::new(),
            mounted: false,
            boot_device: false,
            nvme: None,
        }
    }

    fn nic(name: &str, fw: Option<&str>) -> Nic {
        Nic {
            name: name.into(),
            mac: None,
            driver: Some("ixgbe".into()),
            firmware_version: fw.map(String::from),
            pci_address: None,
            speed_mbps: None,
            carrier: None,
            mtu: None,
            operstate: None,
            virtual_device: false,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn components_from_the_other_sections_and_the_bmc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // No microcode line in cpuinfo: the sysfs file stands in.
        write(
            root,
            "sys/devices/system/cpu/cpu0/microcode/version",
            b"0x2b000603\n",
        );
        let disks = [
            disk("sda", Transport::Sata, Some("SN05")),
            disk("sdb", Transport::Sas, None),
            disk("vda", Transport::Virtio, Some("ignored")),
        ];
        let nics = [nic("eth0", Some("0x800003e7")), nic("eth1", Some("N/A"))];
        // eth0's PCI function, through the class link as sysfs has it.
        let fun = "sys/devices/pci0000:00/0000:00:03.0";
        for (attr, v) in [
            ("vendor", "0x8086\n"),
            ("device", "0x10fb\n"),
            ("subsystem_vendor", "0x15d9\n"),
            ("subsystem_device", "0x0611\n"),
        ] {
            write(root, &format!("{fun}/{attr}"), v.as_bytes());
        }
        std::fs::create_dir_all(root.join("sys/class/net/eth0")).unwrap();
        std::os::unix::fs::symlink(root.join(fun), root.join("sys/class/net/eth0/device")).unwrap();
        let mut ctx = Ctx::new(root);
        let firmware = collect(
            &mut ctx,
            &CollectOptions::default(),
            Some(&Bios {
                vendor: Some("Acme".into()),
                version: Some("1.2".into()),
                ..Bios::default()
            }),
            &Cpu::default(),
            &disks,
            &nics,
        );
        assert!(ctx.notes.is_empty(), "{:?}", ctx.notes);
        let got: Vec<(FirmwareKind, &str, &str)> = firmware
            .iter()
            .map(|c| (c.kind, c.name.as_str(), c.version.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (FirmwareKind::Bios, "bios", "1.2"),
                (FirmwareKind::Disk, "sda", "SN05"),
                (FirmwareKind::Nic, "eth0", "0x800003e7"),
                (FirmwareKind::CpuMicrocode, "cpu", "0x2b000603"),
            ]
        );
        assert_eq!(firmware[1].model.as_deref(), Some("ST4000NM0035"));
        assert_eq!(firmware[2].driver.as_deref(), Some("ixgbe"));
        assert_eq!(
            firmware[2].pci.map(|p| p.to_string()).as_deref(),
            Some("8086:10fb:15d9:0611")
        );
        assert_eq!(firmware[1].pci, None, "disks carry no PCI ids");

        // The BMC goes after the platform firmware.
        let mut inv: Inventory = serde_json::from_str(include_str!(
            "../../../protocol/tests/data/inventory-qemu-q35.json"
        ))
        .expect("inventory");
        inv.firmware = firmware;
        add_bmc(&mut inv);
        assert_eq!(inv.firmware.len(), 4, "no bmc section, no component");
        inv.bmc = Some(BmcInfo {
            device_id: 0x20,
            device_revision: 1,
            firmware_version: "9.08".into(),
            aux_firmware_revision: Some("01020304".into()),
            ipmi_version: "2.0".into(),
            manufacturer_id: 0x1291,
            product_id: 0x0f02,
            max_users: None,
            lan_channels: Vec::new(),
            users: Vec::new(),
            notes: Vec::new(),
        });
        add_bmc(&mut inv);
        let bmc = &inv.firmware[1];
        assert_eq!(
            (bmc.kind, bmc.version.as_str()),
            (FirmwareKind::Bmc, "9.08")
        );
        assert_eq!(bmc.aux_revision.as_deref(), Some("01020304"));
        assert_eq!(bmc.vendor.as_deref(), Some("iana:4753"));
    }

    #[test]
    fn nvme_without_admin_commands_keeps_the_sysfs_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // A regular file where the character device belongs: Identify fails with ENOTTY,
        // which the NVMe section already notes; here it only means no slot details.
        write(root, "dev/nvme0", b"");
        let ctrl = |name: &str, fw: Option<&str>| NvmeController {
            name: name.into(),
            model: Some("QEMU NVMe Ctrl".into()),
            serial: None,
            firmware: fw.map(String::from),
            capabilities: None,
            namespaces: Vec::new(),
        };
        let mut disks = vec![
            disk("nvme0n1", Transport::Nvme, None),
            disk("nvme0n2", Transport::Nvme, None),
            disk("nvme1n1", Transport::Nvme, None),
        ];
        disks[0].nvme = Some(ctrl("nvme0", Some("7.2.22")));
        disks[1].nvme = Some(ctrl("nvme0", Some("7.2.22")));
        // No revision from sysfs and no device to ask: no component, no crash.
        disks[2].nvme = Some(ctrl("nvme1", None));
        let mut ctx = Ctx::new(root);
        let mut out = Vec::new();
        nvme_controllers(&mut ctx, &CollectOptions::default(), &disks, &mut out);
        assert!(ctx.notes.is_empty(), "{:?}", ctx.notes);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(
            (out[0].name.as_str(), out[0].version.as_str()),
            ("nvme0", "7.2.22")
        );
        assert_eq!(out[0].nvme, None);
        assert_eq!(out[0].pci, None, "no sysfs device, no PCI ids");
    }

    #[test]
    fn slot_log_into_the_wire_form() {
        let mut d = vec![0u8; 512];
        d[0] = 0x12; // running from slot 2, slot 1 at the next reset
        d[8..16].copy_from_slice(b"GOLDEN  ");
        d[16..24].copy_from_slice(b"2.0.1   ");
        let log = nvme::FirmwareSlotLog::parse(&d).expect("parse");
        let mut fw = NvmeFirmware::default();
        apply_slot_log(&mut fw, &log);
        assert_eq!(fw.active_slot, Some(2));
        assert_eq!(fw.next_reset_slot, Some(1));
        assert_eq!(
            fw.slot_revisions,
            vec![
                NvmeFirmwareSlot {
                    slot: 1,
                    revision: "GOLDEN".into()
                },
                NvmeFirmwareSlot {
                    slot: 2,
                    revision: "2.0.1".into()
                },
            ]
        );
    }
}
