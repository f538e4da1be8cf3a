//! Who this machine is, as told to the controller in the handshake: SMBIOS system UUID and
//! serial, the MACs of the physical NICs, the hostname and the kernel's boot id.
//!
//! Everything is read under a root path so tests run on fixture trees. Unreadable values are
//! absent, never an error: a machine without DMI (or an agent without root, which cannot read
//! `product_serial`) still registers, by its MACs.

use molar_protocol::methods::NodeIdentity;
use std::path::Path;

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Values firmware vendors put in DMI fields they did not fill in.
fn is_placeholder(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    matches!(
        l.as_str(),
        "none"
            | "n/a"
            | "na"
            | "not specified"
            | "not applicable"
            | "to be filled by o.e.m."
            | "default string"
            | "system serial number"
            | "0123456789"
            | "00000000-0000-0000-0000-000000000000"
            | "ffffffff-ffff-ffff-ffff-ffffffffffff"
            | "03000200-0400-0500-0006-000700080009"
    )
}

fn dmi(root: &Path, name: &str) -> Option<String> {
    read_trimmed(&root.join("sys/class/dmi/id").join(name)).filter(|s| !is_placeholder(s))
}

/// MACs of NICs backed by a device (physical or virtio), lowercase and sorted. Loopback,
/// bridges, bonds and other virtual interfaces have no `device` link and are left out.
pub fn physical_macs(root: &Path) -> Vec<String> {
    let net = root.join("sys/class/net");
    let Ok(entries) = std::fs::read_dir(&net) else {
        return Vec::new();
    };
    let mut macs: Vec<String> = entries
        .flatten()
        .filter(|e| net.join(e.file_name()).join("device").exists())
        .filter_map(|e| read_trimmed(&net.join(e.file_name()).join("address")))
        .map(|m| m.to_ascii_lowercase())
        .filter(|m| m.len() == 17 && m != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// The kernel's boot id, new at every boot; a fresh random id when it cannot be read.
pub fn boot_id(root: &Path) -> String {
    read_trimmed(&root.join("proc/sys/kernel/random/boot_id")).unwrap_or_else(|| {
        let n: u128 = rand::random();
        format!("{n:032x}")
    })
}

/// The node identity for the handshake.
pub fn node_identity(root: &Path) -> NodeIdentity {
    NodeIdentity {
        system_uuid: dmi(root, "product_uuid").map(|u| u.to_ascii_lowercase()),
        serial: dmi(root, "product_serial"),
        macs: physical_macs(root),
        hostname: read_trimmed(&root.join("proc/sys/kernel/hostname")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn reads_identity_from_a_fixture_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            "sys/class/dmi/id/product_uuid",
            "5E1F6C2A-8D3B-4B8E-9A51-0C2D3E4F5A6B\n",
        );
        write(r, "sys/class/dmi/id/product_serial", "S123\n");
        write(r, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        fs::create_dir_all(r.join("sys/class/net/eth0/device")).unwrap();
        write(r, "sys/class/net/eth1/address", "52:54:00:AA:BB:CC\n");
        fs::create_dir_all(r.join("sys/class/net/eth1/device")).unwrap();
        write(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write(r, "sys/class/net/br0/address", "52:54:00:00:00:01\n");
        write(r, "proc/sys/kernel/random/boot_id", "b-1\n");
        write(r, "proc/sys/kernel/hostname", "node1\n");
        let id = node_identity(r);
        assert_eq!(
            id.system_uuid.as_deref(),
            Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
        );
        assert_eq!(id.serial.as_deref(), Some("S123"));
        assert_eq!(id.macs, vec!["52:54:00:12:34:56", "52:54:00:aa:bb:cc"]);
        assert_eq!(id.hostname.as_deref(), Some("node1"));
        assert_eq!(boot_id(r), "b-1");
    }

    #[test]
    fn placeholders_and_missing_files_are_absent() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            "sys/class/dmi/id/product_serial",
            "To Be Filled By O.E.M.\n",
        );
        write(
            r,
            "sys/class/dmi/id/product_uuid",
            "03000200-0400-0500-0006-000700080009",
        );
        let id = node_identity(r);
        assert_eq!(id, NodeIdentity::default());
        assert_eq!(boot_id(r).len(), 32);
    }
}
