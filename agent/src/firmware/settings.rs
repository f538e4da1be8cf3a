//! UEFI settings through efivarfs (`sys/firmware/efi/efivars` under the root): Secure Boot
//! and Setup Mode, BootOrder, BootCurrent, whether capsules can be delivered on disk, the
//! list of variables; and writes of variables, clearing the immutable inode flag efivarfs
//! puts on existing variables first. Each file is the 4-byte attribute word then the data.

use super::UpdateError;
use crate::hw::inode_flags;
use molar_protocol::firmware::{EFI_GLOBAL_GUID, SettingsReport, VariableWrite};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Variables listed at most.
pub const MAX_LISTED: usize = 512;
/// OsIndicationsSupported bit: EFI_OS_INDICATIONS_FILE_CAPSULE_DELIVERY_SUPPORTED.
pub const FILE_CAPSULE_DELIVERY: u64 = 1 << 2;

pub fn efivars(root: &Path) -> PathBuf {
    root.join("sys/firmware/efi/efivars")
}

/// The data of a global variable (without its attribute word), when readable.
fn global(root: &Path, name: &str) -> Option<Vec<u8>> {
    let raw = std::fs::read(efivars(root).join(format!("{name}-{EFI_GLOBAL_GUID}"))).ok()?;
    (raw.len() > 4).then(|| raw[4..].to_vec())
}

/// Reads the settings report; nothing here fails, what cannot be read is a note.
pub fn report(root: &Path) -> SettingsReport {
    let mut r = SettingsReport::default();
    let dir = efivars(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            r.notes
                .push(format!("{}: {e} (not booted through UEFI?)", dir.display()));
            return r;
        }
    };
    r.uefi = true;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.len() > MAX_LISTED {
        r.notes.push(format!(
            "{} variables, the first {MAX_LISTED} listed",
            names.len()
        ));
        names.truncate(MAX_LISTED);
    }
    r.variables = names;
    r.secure_boot = global(root, "SecureBoot").map(|d| d[0] == 1);
    r.setup_mode = global(root, "SetupMode").map(|d| d[0] == 1);
    if let Some(d) = global(root, "BootOrder") {
        r.boot_order = d
            .chunks_exact(2)
            .map(|c| format!("Boot{:04X}", u16::from_le_bytes([c[0], c[1]])))
            .collect();
    }
    r.boot_current = global(root, "BootCurrent")
        .filter(|d| d.len() >= 2)
        .map(|d| format!("Boot{:04X}", u16::from_le_bytes([d[0], d[1]])));
    r.capsule_on_disk_supported = global(root, "OsIndicationsSupported")
        .filter(|d| d.len() >= 8)
        .map(|d| {
            u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8])) & FILE_CAPSULE_DELIVERY != 0
        });
    if r.secure_boot.is_none() {
        r.notes.push("SecureBoot is not readable".into());
    }
    r
}

/// Writes one variable: attributes and data in one `write` (efivarfs takes a variable in
/// one piece), after clearing the immutable flag of an existing one. Returns `Name-guid`.
pub fn write(root: &Path, w: &VariableWrite) -> Result<String, UpdateError> {
    let name = format!("{}-{}", w.name, w.guid().to_ascii_lowercase());
    write_raw(root, &name, w.attributes.unwrap_or(7), &w.data())?;
    Ok(name)
}

/// [`write`] of `Name-guid` with `attributes` and `data`.
fn write_raw(root: &Path, name: &str, attributes: u32, data: &[u8]) -> Result<(), UpdateError> {
    let path = efivars(root).join(name);
    let fail = |e: String| UpdateError::new("efivar_write_failed", format!("{name}: {e}"));
    if path.exists() {
        inode_flags::clear_immutable(&path).map_err(|e| fail(e.to_string()))?;
    }
    let mut buf = attributes.to_le_bytes().to_vec();
    buf.extend_from_slice(data);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(format!("opening: {e}")))?;
    let n = f.write(&buf).map_err(|e| fail(format!("writing: {e}")))?;
    if n != buf.len() {
        return Err(fail(format!("short write: {n} of {} bytes", buf.len())));
    }
    Ok(())
}

/// A global UINT64 variable (OsIndications, OsIndicationsSupported): `None` when missing,
/// an error when present but not 8 bytes of data.
fn global_u64(root: &Path, name: &str) -> Result<Option<u64>, String> {
    let path = efivars(root).join(format!("{name}-{EFI_GLOBAL_GUID}"));
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    match raw.get(4..) {
        Some(d) if d.len() == 8 => Ok(Some(u64::from_le_bytes(d.try_into().unwrap_or([0; 8])))),
        _ => Err(format!(
            "{name} has {} bytes, expected 4 of attributes and 8 of data",
            raw.len()
        )),
    }
}

/// OsIndicationsSupported, when readable.
pub fn os_indications_supported(root: &Path) -> Option<u64> {
    global_u64(root, "OsIndicationsSupported").ok().flatten()
}

/// Sets `bits` in OsIndications, keeping the bits already set (read-modify-write, NV|BS|RT),
/// and reads the variable back; returns its new value.
pub fn request_os_indications(root: &Path, bits: u64) -> Result<u64, UpdateError> {
    let fail = |e: String| UpdateError::new("efivar_write_failed", e);
    let before = global_u64(root, "OsIndications").map_err(fail)?;
    let want = before.unwrap_or(0) | bits;
    if before != Some(want) {
        let name = format!("OsIndications-{EFI_GLOBAL_GUID}");
        write_raw(root, &name, 7, &want.to_le_bytes())?;
    }
    match global_u64(root, "OsIndications").map_err(fail)? {
        Some(v) if v & bits == bits => Ok(v),
        got => Err(fail(format!(
            "OsIndications reads back as {got:#x?} after setting {bits:#x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(root: &Path, name: &str, data: &[u8]) {
        let dir = efivars(root);
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = 7u32.to_le_bytes().to_vec();
        v.extend_from_slice(data);
        std::fs::write(dir.join(format!("{name}-{EFI_GLOBAL_GUID}")), v).unwrap();
    }

    #[test]
    fn report_from_a_fixture_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = report(d.path());
        assert!(!r.uefi);
        assert!(r.notes[0].contains("not booted through UEFI"));
        var(d.path(), "SecureBoot", &[1]);
        var(d.path(), "SetupMode", &[0]);
        var(d.path(), "BootOrder", &[0x01, 0x00, 0x0a, 0x00, 0x00, 0x10]);
        var(d.path(), "BootCurrent", &[0x0a, 0x00]);
        var(
            d.path(),
            "OsIndicationsSupported",
            &[0x44, 0, 0, 0, 0, 0, 0, 0],
        );
        let r = report(d.path());
        assert!(r.uefi);
        assert_eq!(r.secure_boot, Some(true));
        assert_eq!(r.setup_mode, Some(false));
        assert_eq!(r.boot_order, ["Boot0001", "Boot000A", "Boot1000"]);
        assert_eq!(r.boot_current.as_deref(), Some("Boot000A"));
        assert_eq!(r.capsule_on_disk_supported, Some(true));
        assert_eq!(r.variables.len(), 5);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn writes_put_attributes_before_the_data() {
        let d = tempfile::tempdir().unwrap();
        var(d.path(), "BootOrder", &[0x01, 0x00]);
        let w: VariableWrite = serde_json::from_value(serde_json::json!({
            "name": "BootOrder", "data_hex": "0a000100"}))
        .unwrap();
        let name = write(d.path(), &w).unwrap();
        assert_eq!(name, format!("BootOrder-{EFI_GLOBAL_GUID}"));
        let raw = std::fs::read(efivars(d.path()).join(&name)).unwrap();
        assert_eq!(raw, [7, 0, 0, 0, 0x0a, 0x00, 0x01, 0x00]);
        assert_eq!(report(d.path()).boot_order, ["Boot000A", "Boot0001"]);
    }

    #[test]
    fn os_indications_are_read_modified_and_written() {
        let d = tempfile::tempdir().unwrap();
        let path = efivars(d.path()).join(format!("OsIndications-{EFI_GLOBAL_GUID}"));
        std::fs::create_dir_all(efivars(d.path())).unwrap();
        assert_eq!(os_indications_supported(d.path()), None);
        // Missing: created with NV|BS|RT and only the bit asked for.
        assert_eq!(
            request_os_indications(d.path(), FILE_CAPSULE_DELIVERY).unwrap(),
            4
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [7, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]
        );
        // Present with other bits (boot to firmware UI, 0x1): they are kept.
        var(d.path(), "OsIndications", &0x1u64.to_le_bytes());
        assert_eq!(
            request_os_indications(d.path(), FILE_CAPSULE_DELIVERY).unwrap(),
            5
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [7, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]
        );
        // Already set: nothing to write, the value stands.
        assert_eq!(
            request_os_indications(d.path(), FILE_CAPSULE_DELIVERY).unwrap(),
            5
        );
        // A variable of the wrong size is not overwritten blindly.
        var(d.path(), "OsIndications", &[1, 2]);
        let e = request_os_indications(d.path(), FILE_CAPSULE_DELIVERY).unwrap_err();
        assert!(e.msg.contains("has 6 bytes"), "{}", e.msg);
        assert_eq!(std::fs::read(&path).unwrap(), [7, 0, 0, 0, 1, 2]);
        var(d.path(), "OsIndicationsSupported", &0x44u64.to_le_bytes());
        assert_eq!(os_indications_supported(d.path()), Some(0x44));
    }
}
