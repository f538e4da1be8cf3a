//! What the controller adds to a disk erase it starts: the disks that must be present.
//!
//! An erase without `devices` means every disk. The agent can only erase what its kernel
//! sees, so a disk that failed to probe (a dead HBA, a missing driver) would silently stay
//! unerased. The stored inventory says which disks the machine had: the controller sends
//! their serials (else WWNs) as `expect`, and the agent fails the task, erasing nothing, when
//! one is missing.

use molar_protocol::inventory::{BlockDevice, Inventory, Transport};

/// The identifiers of the whole disks in `inv` that an erase of every disk would cover: the
/// agent's default set (real disks with media: not loop, ram, zram, dm or md devices), less
/// what it never erases (removable, boot or mounted devices) and what `exclude` names (`sda`
/// or `/dev/sda`).
///
/// A disk is named by its serial, else its WWN. The namespaces of one NVMe controller share
/// the controller's serial, so a serial that several disks share would let one stand for the
/// others: those disks are named by their WWN (unique per namespace) when they have one.
/// Disks with neither cannot be expected and are left out.
pub fn expected_disks(inv: &Inventory, exclude: &[String]) -> Vec<String> {
    let excluded = |d: &BlockDevice| {
        exclude.iter().any(|e| {
            let name = e.rsplit('/').next().unwrap_or(e);
            name == d.name || e == &d.path
        })
    };
    let covered: Vec<&BlockDevice> = inv
        .block_devices
        .iter()
        .filter(|d| !matches!(d.transport, Transport::Loop | Transport::Virtual))
        .filter(|d| d.size_bytes.is_some_and(|s| s > 0))
        .filter(|d| d.removable != Some(true) && !d.boot_device && !d.mounted)
        .filter(|d| !excluded(d))
        .collect();
    let shared_serial = |serial: &str| {
        inv.block_devices
            .iter()
            .filter(|d| identifier(&d.serial).as_deref() == Some(serial))
            .count()
            > 1
    };
    let mut ids: Vec<String> = covered
        .iter()
        .filter_map(|d| match (identifier(&d.serial), identifier(&d.wwn)) {
            (Some(serial), Some(wwn)) if shared_serial(&serial) => Some(wwn),
            (Some(serial), _) => Some(serial),
            (None, wwn) => wwn,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn identifier(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../protocol/tests/data/inventory-qemu-q35.json"
        ))
        .unwrap();
        let disk = |name: &str, transport: &str, serial: Option<&str>, extra: serde_json::Value| {
            let mut d = serde_json::json!({"name": name, "path": format!("/dev/{name}"),
                "size_bytes": 1_000_000, "transport": transport, "mounted": false});
            if let Some(s) = serial {
                d["serial"] = s.into();
            }
            for (k, x) in extra.as_object().unwrap() {
                d[k] = x.clone();
            }
            d
        };
        let devs = v["block_devices"].as_array_mut().unwrap();
        devs.push(disk("sda", "sata", Some("SATA-1"), serde_json::json!({})));
        devs.push(disk(
            "sdb",
            "usb",
            Some("USB-STICK"),
            serde_json::json!({"removable": true}),
        ));
        devs.push(disk(
            "sdc",
            "sata",
            Some("BOOT-1"),
            serde_json::json!({"boot_device": true}),
        ));
        devs.push(disk(
            "sdd",
            "sata",
            Some("MOUNTED-1"),
            serde_json::json!({"mounted": true}),
        ));
        devs.push(disk("loop0", "loop", Some("LOOP"), serde_json::json!({})));
        devs.push(disk("zram0", "virtual", None, serde_json::json!({})));
        devs.push(disk(
            "sde",
            "sas",
            None,
            serde_json::json!({"wwn": "0x5000c500a1b2c3d4"}),
        ));
        devs.push(disk("sdf", "sas", None, serde_json::json!({})));
        devs.push(disk(
            "sdg",
            "sata",
            Some("EMPTY"),
            serde_json::json!({"size_bytes": 0}),
        ));
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_disk_the_erase_covers_is_expected_by_serial_else_wwn() {
        assert_eq!(
            expected_disks(&inventory(), &[]),
            [
                "0x5000c500a1b2c3d4",
                "SATA-1",
                "VB0001",
                // Two namespaces of one NVMe controller: one serial, so their WWNs.
                "nvme.1b36-6465616462656566-51454d55204e564d65204374726c-00000001",
                "nvme.1b36-6465616462656566-51454d55204e564d65204374726c-00000002",
            ]
        );
    }

    #[test]
    fn excluded_disks_are_not_expected() {
        let ids = expected_disks(&inventory(), &["/dev/sda".into(), "vda".into()]);
        assert!(!ids.contains(&"SATA-1".to_owned()), "{ids:?}");
        assert!(!ids.contains(&"VB0001".to_owned()), "{ids:?}");
        assert_eq!(ids.len(), 3);
    }
}
