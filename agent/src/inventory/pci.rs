//! PCI functions from `/sys/bus/pci/devices`: class, vendor/device and subsystem ids,
//! revision, bound driver and NUMA node. Names of vendors and devices are left to the
//! controller (no pci.ids database in the ramdisk).

use molar_protocol::inventory::PciDevice;

use super::Ctx;

const PCI_DIR: &str = "/sys/bus/pci/devices";

/// Names of the PCI base classes (PCI Code and ID Assignment Specification).
fn class_name(base: u32) -> Option<&'static str> {
    Some(match base {
        0x00 => "unclassified device",
        0x01 => "mass storage controller",
        0x02 => "network controller",
        0x03 => "display controller",
        0x04 => "multimedia controller",
        0x05 => "memory controller",
        0x06 => "bridge",
        0x07 => "communication controller",
        0x08 => "generic system peripheral",
        0x09 => "input device controller",
        0x0a => "docking station",
        0x0b => "processor",
        0x0c => "serial bus controller",
        0x0d => "wireless controller",
        0x0e => "intelligent controller",
        0x0f => "satellite communications controller",
        0x10 => "encryption controller",
        0x11 => "signal processing controller",
        0x12 => "processing accelerator",
        0x13 => "non-essential instrumentation",
        0x40 => "coprocessor",
        0xff => "unassigned class",
        _ => return None,
    })
}

pub(crate) fn collect(ctx: &mut Ctx) -> Vec<PciDevice> {
    let mut out = Vec::new();
    // Fixed-width hexadecimal addresses: plain byte order is bus order.
    let mut addresses = ctx.list_dir(PCI_DIR, true);
    addresses.sort();
    for address in addresses {
        let dir = format!("{PCI_DIR}/{address}");
        let class = ctx.hex_attr(&format!("{dir}/class"));
        let id16 = |v: Option<u32>| v.and_then(|v| u16::try_from(v).ok());
        out.push(PciDevice {
            class,
            class_name: class.and_then(|c| class_name(c >> 16)).map(str::to_string),
            vendor_id: id16(ctx.hex_attr(&format!("{dir}/vendor"))),
            device_id: id16(ctx.hex_attr(&format!("{dir}/device"))),
            subsystem_vendor_id: id16(ctx.hex_attr(&format!("{dir}/subsystem_vendor"))),
            subsystem_device_id: id16(ctx.hex_attr(&format!("{dir}/subsystem_device"))),
            revision: ctx
                .hex_attr(&format!("{dir}/revision"))
                .and_then(|v| u8::try_from(v).ok()),
            driver: ctx.link_name(&format!("{dir}/driver")),
            // -1 means "no NUMA affinity".
            numa_node: ctx
                .parse_attr::<i64>(&format!("{dir}/numa_node"))
                .and_then(|n| u32::try_from(n).ok()),
            address,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn devices_and_drivers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let dev = |addr: &str, class: &str, vendor: &str, device: &str| {
            let d = root.join(format!("sys/devices/pci0000:00/{addr}"));
            fs::create_dir_all(&d).expect("mkdir");
            for (name, value) in [
                ("class", class),
                ("vendor", vendor),
                ("device", device),
                ("subsystem_vendor", "0x1af4"),
                ("subsystem_device", "0x1100"),
                ("revision", "0x01"),
                ("numa_node", "-1"),
            ] {
                fs::write(d.join(name), format!("{value}\n")).expect("write");
            }
            let link_dir = root.join("sys/bus/pci/devices");
            fs::create_dir_all(&link_dir).expect("mkdir");
            symlink(
                format!("../../../devices/pci0000:00/{addr}"),
                link_dir.join(addr),
            )
            .expect("symlink");
            d
        };
        let gpu = dev("0000:00:02.0", "0x030000", "0x1234", "0x1111");
        dev("0000:00:1f.2", "0x010601", "0x8086", "0x2922");
        fs::create_dir_all(root.join("sys/bus/pci/drivers/bochs-drm")).expect("mkdir");
        symlink("../../../bus/pci/drivers/bochs-drm", gpu.join("driver")).expect("symlink");

        let mut ctx = Ctx::new(root);
        let devices = collect(&mut ctx);
        assert!(ctx.notes.is_empty(), "{:?}", ctx.notes);
        assert_eq!(devices.len(), 2);
        assert_eq!(
            devices[0],
            PciDevice {
                address: "0000:00:02.0".into(),
                class: Some(0x030000),
                class_name: Some("display controller".into()),
                vendor_id: Some(0x1234),
                device_id: Some(0x1111),
                subsystem_vendor_id: Some(0x1af4),
                subsystem_device_id: Some(0x1100),
                revision: Some(1),
                driver: Some("bochs-drm".into()),
                numa_node: None,
            }
        );
        assert_eq!(
            devices[1].class_name.as_deref(),
            Some("mass storage controller")
        );
        assert_eq!(devices[1].driver, None);
    }

    #[test]
    fn garbage_ids_are_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("sys/bus/pci/devices/0000:00:00.0");
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("vendor"), "zzz\n").expect("write");
        let mut ctx = Ctx::new(dir.path());
        let devices = collect(&mut ctx);
        assert_eq!(devices[0].vendor_id, None);
        assert_eq!(ctx.notes.len(), 1);
        assert!(ctx.notes[0].path.ends_with("/vendor"));
    }
}
