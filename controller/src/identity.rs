//! Which stored server an agent is: the identity key derived from what the handshake reports.
//!
//! SMBIOS fields are often filled with vendor placeholders ("To Be Filled By O.E.M.", an
//! all-zero UUID, the well-known `03000200-0400-0500-0006-000700080009`), and many machines
//! share them, so a placeholder must never identify a server. The order of trust is the
//! system UUID, then the serial number, then the sorted set of MAC addresses.

use molar_protocol::methods::NodeIdentity;

/// SMBIOS UUIDs that vendors ship unset or shared across models.
const BOGUS_UUIDS: &[&str] = &[
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    "12345678-1234-5678-90ab-cddeefaabbcc",
];

/// Serial numbers that are placeholders, compared case-insensitively after trimming.
const BOGUS_SERIALS: &[&str] = &[
    "",
    "0",
    "none",
    "n/a",
    "na",
    "not specified",
    "not applicable",
    "not available",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "chassis serial number",
    "0123456789",
    "123456789",
    "serial",
    "unknown",
];

/// Whether a system UUID identifies a machine (not empty, not all zeroes or all F, not a
/// known placeholder).
pub fn usable_uuid(uuid: &str) -> bool {
    let u = uuid.trim().to_ascii_lowercase();
    let hex: String = u.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    if hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f') {
        return false;
    }
    !BOGUS_UUIDS.contains(&u.as_str())
}

/// Whether a serial number identifies a machine.
pub fn usable_serial(serial: &str) -> bool {
    let s = serial.trim().to_ascii_lowercase();
    if BOGUS_SERIALS.contains(&s.as_str()) {
        return false;
    }
    // "xxxxxxxx", "00000000", "........": a repeated character is a placeholder.
    let mut chars = s.chars();
    let first = chars.next();
    !chars.all(|c| Some(c) == first)
}

/// The stored identity key of a node: `uuid:…`, `serial:…` or `macs:…`; `None` when the node
/// reports nothing usable.
pub fn identity_key(node: &NodeIdentity) -> Option<String> {
    if let Some(u) = node.system_uuid.as_deref().filter(|u| usable_uuid(u)) {
        return Some(format!("uuid:{}", u.trim().to_ascii_lowercase()));
    }
    if let Some(s) = node.serial.as_deref().filter(|s| usable_serial(s)) {
        return Some(format!("serial:{}", s.trim()));
    }
    let mut macs: Vec<String> = node
        .macs
        .iter()
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.dedup();
    (!macs.is_empty()).then(|| format!("macs:{}", macs.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uuid: Option<&str>, serial: Option<&str>, macs: &[&str]) -> NodeIdentity {
        NodeIdentity {
            system_uuid: uuid.map(Into::into),
            serial: serial.map(Into::into),
            macs: macs.iter().map(|m| m.to_string()).collect(),
            hostname: None,
        }
    }

    #[test]
    fn placeholders_fall_through_to_the_next_field() {
        let good = "4C4C4544-0042-3510-8051-B4C04F565931";
        assert_eq!(
            identity_key(&node(Some(good), Some("ABC"), &[])).unwrap(),
            "uuid:4c4c4544-0042-3510-8051-b4c04f565931"
        );
        for bad in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "not-a-uuid",
        ] {
            assert_eq!(
                identity_key(&node(Some(bad), Some("SN123"), &[])).unwrap(),
                "serial:SN123"
            );
        }
        for bad in ["To Be Filled By O.E.M.", "Default string", "0000000", " "] {
            assert_eq!(
                identity_key(&node(
                    None,
                    Some(bad),
                    &["BB:00:00:00:00:02", "aa:00:00:00:00:01"]
                ))
                .unwrap(),
                "macs:aa:00:00:00:00:01,bb:00:00:00:00:02"
            );
        }
        assert_eq!(identity_key(&node(None, None, &[])), None);
    }
}
