//! UEFI boot entries: the image's loader on its ESP, an `EFI_LOAD_OPTION` pointing at it
//! (UEFI 2.10 §3.1.3), written as a `Boot####` variable through efivarfs and put first in
//! `BootOrder` (§3.3).
//!
//! The device path is the short form firmware and efibootmgr use: a hard drive media node
//! (type 4, subtype 1: partition number, start and size in logical blocks, the partition's
//! GUID with MBR type 2 and signature type 2 on GPT, or the disk signature with 1 and 1 on
//! MBR), a file path node (type 4, subtype 4, UCS-2, NUL-terminated), and the end node
//! (0x7f, 0xff). Every efivarfs file is the variable's 4-byte attributes, then its data.
//!
//! The efivarfs directory is a parameter: tests write to temp dirs, never to a machine's.

use super::table::{PartitionTable, Scheme};
use std::path::{Path, PathBuf};

/// The EFI global variable vendor GUID (`Boot####`, `BootOrder`).
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTRIBUTES: u32 = 0x7;
/// LOAD_OPTION_ACTIVE.
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;

#[derive(Debug, thiserror::Error)]
pub enum EfiError {
    #[error("load option {name}: {why}")]
    Decode { name: String, why: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Immutable(#[from] crate::hw::inode_flags::InodeFlagsError),
    #[error("every Boot#### number is taken")]
    Full,
    #[error("no UEFI loader on the ESP (looked for \\EFI\\*\\shim{arch}.efi, grub{arch}.efi and \\EFI\\BOOT\\BOOT{upper}.EFI)", upper = .arch.to_uppercase())]
    NoLoader { arch: String },
}

impl EfiError {
    pub fn code(&self) -> &'static str {
        match self {
            EfiError::NoLoader { .. } => "efi_no_loader",
            EfiError::Full => "efi_boot_entries_full",
            _ => "efi_variable_failed",
        }
    }
}

/// One node of a device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePathNode {
    HardDrive {
        partition: u32,
        start_lba: u64,
        size_lba: u64,
        signature: [u8; 16],
        /// 1 MBR, 2 GPT.
        mbr_type: u8,
        /// 1 32-bit MBR signature, 2 GUID.
        signature_type: u8,
    },
    /// `\EFI\debian\shimx64.efi`.
    FilePath(String),
    Other {
        kind: u8,
        subtype: u8,
        data: Vec<u8>,
    },
}

/// An `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub attributes: u32,
    pub description: String,
    /// The first device path instance, without its end node.
    pub path: Vec<DevicePathNode>,
    pub optional_data: Vec<u8>,
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn node(out: &mut Vec<u8>, kind: u8, subtype: u8, data: &[u8]) {
    out.push(kind);
    out.push(subtype);
    out.extend_from_slice(&((4 + data.len()) as u16).to_le_bytes());
    out.extend_from_slice(data);
}

impl LoadOption {
    pub fn encode(&self) -> Vec<u8> {
        let mut path = Vec::new();
        for n in &self.path {
            match n {
                DevicePathNode::HardDrive {
                    partition,
                    start_lba,
                    size_lba,
                    signature,
                    mbr_type,
                    signature_type,
                } => {
                    let mut d = Vec::with_capacity(38);
                    d.extend_from_slice(&partition.to_le_bytes());
                    d.extend_from_slice(&start_lba.to_le_bytes());
                    d.extend_from_slice(&size_lba.to_le_bytes());
                    d.extend_from_slice(signature);
                    d.push(*mbr_type);
                    d.push(*signature_type);
                    node(&mut path, 4, 1, &d);
                }
                DevicePathNode::FilePath(p) => node(&mut path, 4, 4, &ucs2(p)),
                DevicePathNode::Other {
                    kind,
                    subtype,
                    data,
                } => node(&mut path, *kind, *subtype, data),
            }
        }
        node(&mut path, 0x7f, 0xff, &[]);
        let mut out = Vec::new();
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(&ucs2(&self.description));
        out.extend_from_slice(&path);
        out.extend_from_slice(&self.optional_data);
        out
    }

    /// Decodes variable data (without the efivarfs attributes prefix); `name` is for errors.
    pub fn decode(name: &str, b: &[u8]) -> Result<LoadOption, EfiError> {
        let bad = |why: &str| EfiError::Decode {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        if b.len() < 6 {
            return Err(bad("shorter than its header"));
        }
        let attributes = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let path_len = usize::from(u16::from_le_bytes([b[4], b[5]]));
        let mut i = 6;
        let mut desc = Vec::new();
        loop {
            let c = b
                .get(i..i + 2)
                .ok_or_else(|| bad("description not terminated"))?;
            i += 2;
            let c = u16::from_le_bytes([c[0], c[1]]);
            if c == 0 {
                break;
            }
            desc.push(c);
        }
        let path_bytes = b
            .get(i..i + path_len)
            .ok_or_else(|| bad("file path list runs past the end"))?;
        let optional_data = b[i + path_len..].to_vec();
        let mut path = Vec::new();
        let mut j = 0;
        loop {
            let h = path_bytes
                .get(j..j + 4)
                .ok_or_else(|| bad("device path without an end node"))?;
            let (kind, subtype) = (h[0], h[1]);
            let len = usize::from(u16::from_le_bytes([h[2], h[3]]));
            if len < 4 {
                return Err(bad("device path node shorter than 4 bytes"));
            }
            let data = path_bytes
                .get(j + 4..j + len)
                .ok_or_else(|| bad("device path node runs past the list"))?;
            j += len;
            match (kind, subtype) {
                (0x7f, 0xff) | (0x7f, 0x01) => break,
                (4, 1) if data.len() == 38 => {
                    let mut signature = [0u8; 16];
                    signature.copy_from_slice(&data[20..36]);
                    path.push(DevicePathNode::HardDrive {
                        partition: u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                        start_lba: u64::from_le_bytes(data[4..12].try_into().unwrap_or([0; 8])),
                        size_lba: u64::from_le_bytes(data[12..20].try_into().unwrap_or([0; 8])),
                        signature,
                        mbr_type: data[36],
                        signature_type: data[37],
                    });
                }
                (4, 4) => {
                    let units: Vec<u16> = data
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .take_while(|c| *c != 0)
                        .collect();
                    path.push(DevicePathNode::FilePath(String::from_utf16_lossy(&units)));
                }
                _ => path.push(DevicePathNode::Other {
                    kind,
                    subtype,
                    data: data.to_vec(),
                }),
            }
        }
        Ok(LoadOption {
            attributes,
            description: String::from_utf16_lossy(&desc),
            path,
            optional_data,
        })
    }

    /// The partition signature and file path this option boots, for matching entries.
    fn target(&self) -> Option<([u8; 16], String)> {
        let sig = self.path.iter().find_map(|n| match n {
            DevicePathNode::HardDrive { signature, .. } => Some(*signature),
            _ => None,
        })?;
        let file = self.path.iter().find_map(|n| match n {
            DevicePathNode::FilePath(p) => Some(p.to_lowercase()),
            _ => None,
        })?;
        Some((sig, file))
    }
}

/// The hard drive node of partition `number` of `table`.
pub fn hard_drive_node(table: &PartitionTable, number: u32) -> Option<DevicePathNode> {
    let p = table.partition(number)?;
    let (signature, mbr_type, signature_type) = match &table.scheme {
        Scheme::Gpt { .. } => (p.guid_bytes?, 2, 2),
        Scheme::Mbr { signature } => {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&signature.to_le_bytes());
            (s, 1, 1)
        }
    };
    Some(DevicePathNode::HardDrive {
        partition: number,
        start_lba: p.start_lba,
        size_lba: p.size_lba,
        signature,
        mbr_type,
        signature_type,
    })
}

/// The firmware architecture suffix of loader names (`x64`, `aa64`).
pub fn arch_suffix() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aa64"
    } else {
        "x64"
    }
}

/// A directory entry of `dir` matching `name` case-insensitively (FAT is).
fn entry_ci(dir: &Path, name: &str) -> Option<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    v.sort_by_key(|e| e.file_name());
    v.into_iter().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.eq_ignore_ascii_case(name).then(|| (n, e.path()))
    })
}

/// The image's loader on the ESP mounted at `esp`, as firmware spells it, with a
/// description: a vendor's shim, else its GRUB or systemd-boot, else the removable-media
/// fallback `\EFI\BOOT\BOOT<ARCH>.EFI`.
pub fn find_loader(esp: &Path, arch: &str) -> Result<(String, String), EfiError> {
    let no = || EfiError::NoLoader {
        arch: arch.to_owned(),
    };
    let (efi_name, efi_dir) = entry_ci(esp, "EFI").ok_or_else(no)?;
    let mut vendors: Vec<(String, PathBuf)> = std::fs::read_dir(&efi_dir)
        .map_err(|_| no())?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| !["boot", "linux", "microsoft"].contains(&n.to_lowercase().as_str()))
        .collect();
    vendors.sort();
    for loader in [
        format!("shim{arch}.efi"),
        format!("grub{arch}.efi"),
        format!("systemd-boot{arch}.efi"),
    ] {
        for (vendor, dir) in &vendors {
            if let Some((file, _)) = entry_ci(dir, &loader) {
                return Ok((format!("\\{efi_name}\\{vendor}\\{file}"), vendor.clone()));
            }
        }
    }
    let (boot_name, boot_dir) = entry_ci(&efi_dir, "BOOT").ok_or_else(no)?;
    let (file, _) =
        entry_ci(&boot_dir, &format!("BOOT{}.EFI", arch.to_uppercase())).ok_or_else(no)?;
    Ok((
        format!("\\{efi_name}\\{boot_name}\\{file}"),
        "UEFI OS".to_owned(),
    ))
}

fn var_path(efivars: &Path, name: &str) -> PathBuf {
    efivars.join(format!("{name}-{GLOBAL_GUID}"))
}

fn read_var(efivars: &Path, name: &str) -> Result<Option<Vec<u8>>, EfiError> {
    let path = var_path(efivars, name);
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EfiError::Read { path, source }),
    }
}

/// Writes a variable the way efivarfs takes it: one `write(2)` of attributes and data,
/// after clearing the immutable flag efivarfs sets on every variable file.
fn write_var(efivars: &Path, name: &str, data: &[u8]) -> Result<(), EfiError> {
    use std::io::Write;
    let path = var_path(efivars, name);
    if path.exists() {
        crate::hw::inode_flags::clear_immutable(&path)?;
    }
    let mut buf = ATTRIBUTES.to_le_bytes().to_vec();
    buf.extend_from_slice(data);
    let werr = |source| EfiError::Write {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(werr)?;
    let n = f.write(&buf).map_err(werr)?;
    if n != buf.len() {
        return Err(werr(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            buf.len()
        ))));
    }
    // efivarfs replaced the variable; a plain file (a test's) may hold a longer old value.
    if f.metadata().is_ok_and(|m| m.len() > buf.len() as u64) {
        f.set_len(buf.len() as u64).map_err(werr)?;
    }
    Ok(())
}

/// The result of [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub number: u16,
    pub updated: bool,
    pub boot_order: Vec<u16>,
    /// Entries that could not be read and were left alone.
    pub notes: Vec<String>,
}

/// Creates `option` as a `Boot####` (reusing the number of an entry that boots the same
/// partition and file) and puts it first in `BootOrder`, in the efivarfs at `efivars`.
pub fn install(efivars: &Path, option: &LoadOption) -> Result<Installed, EfiError> {
    let target = option.target();
    let mut taken = std::collections::BTreeSet::new();
    let mut same = None;
    let mut notes = Vec::new();
    let entries = std::fs::read_dir(efivars).map_err(|source| EfiError::Read {
        path: efivars.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for file in names {
        let Some(name) = file.strip_suffix(&format!("-{GLOBAL_GUID}")) else {
            continue;
        };
        let Some(hex) = name.strip_prefix("Boot") else {
            continue;
        };
        if hex.len() != 4
            || !hex
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        {
            continue;
        }
        let Ok(number) = u16::from_str_radix(hex, 16) else {
            continue;
        };
        taken.insert(number);
        match read_var(efivars, name)
            .and_then(|d| d.map(|d| LoadOption::decode(name, &d)).transpose())
        {
            Ok(Some(existing)) => {
                if same.is_none() && target.is_some() && existing.target() == target {
                    same = Some(number);
                }
            }
            Ok(None) => {}
            Err(e) => notes.push(e.to_string()),
        }
    }
    let (number, updated) = match same {
        Some(n) => (n, true),
        None => (
            (0..=u16::MAX)
                .find(|n| !taken.contains(n))
                .ok_or(EfiError::Full)?,
            false,
        ),
    };
    write_var(efivars, &format!("Boot{number:04X}"), &option.encode())?;
    let mut order: Vec<u16> = read_var(efivars, "BootOrder")?
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .filter(|n| *n != number)
        .collect();
    order.insert(0, number);
    let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
    write_var(efivars, "BootOrder", &bytes)?;
    Ok(Installed {
        number,
        updated,
        boot_order: order,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::table::tests::{gpt_image, guid_bytes};
    use crate::boot::table::{self, ESP_GUID};

    const ESP_UNIQUE: &str = "5f5b2a1c-8e0d-4c4e-9a3b-1d2e3f405162";

    fn option() -> LoadOption {
        let img = gpt_image(8192, &[(0, ESP_GUID, ESP_UNIQUE, 2048, 4095)]);
        let t = table::read(
            &mut std::io::Cursor::new(&img),
            "disk.img",
            img.len() as u64,
            512,
        )
        .unwrap();
        LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: "debian".into(),
            path: vec![
                hard_drive_node(&t, 1).unwrap(),
                DevicePathNode::FilePath("\\EFI\\debian\\shimx64.efi".into()),
            ],
            optional_data: vec![],
        }
    }

    /// The bytes, put together by hand from UEFI 2.10 §3.1.3 and §10.3.5.1/§10.3.5.4.
    #[test]
    fn a_load_option_encodes_to_the_bytes_the_specification_gives() {
        let mut want: Vec<u8> = vec![1, 0, 0, 0]; // LOAD_OPTION_ACTIVE
        let file = "\\EFI\\debian\\shimx64.efi"; // 23 characters
        let path_len: u16 = 42 + (4 + 2 * 24) + 4;
        want.extend_from_slice(&path_len.to_le_bytes());
        for c in "debian".encode_utf16().chain([0]) {
            want.extend_from_slice(&c.to_le_bytes());
        }
        want.extend_from_slice(&[4, 1, 42, 0]); // media, hard drive, 42 bytes
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&2048u64.to_le_bytes());
        want.extend_from_slice(&2048u64.to_le_bytes());
        // The GUID 5f5b2a1c-8e0d-4c4e-9a3b-1d2e3f405162 as GPT stores it.
        want.extend_from_slice(&[
            0x1c, 0x2a, 0x5b, 0x5f, 0x0d, 0x8e, 0x4e, 0x4c, 0x9a, 0x3b, 0x1d, 0x2e, 0x3f, 0x40,
            0x51, 0x62,
        ]);
        want.extend_from_slice(&[2, 2]); // GPT, GUID signature
        want.extend_from_slice(&[4, 4, 52, 0]); // media, file path, 4 + 48 bytes
        for c in file.encode_utf16().chain([0]) {
            want.extend_from_slice(&c.to_le_bytes());
        }
        want.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let got = option().encode();
        assert_eq!(got, want);
        assert_eq!(guid_bytes(ESP_UNIQUE)[..4], [0x1c, 0x2a, 0x5b, 0x5f]);
        assert_eq!(LoadOption::decode("Boot0000", &got).unwrap(), option());
    }

    #[test]
    fn an_mbr_partition_is_named_by_the_disk_signature() {
        let mut mbr = vec![0u8; 2 << 20];
        mbr[440..444].copy_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        mbr[446 + 4] = 0xef;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&1024u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let t = table::read(
            &mut std::io::Cursor::new(&mbr),
            "disk.img",
            mbr.len() as u64,
            512,
        )
        .unwrap();
        let mut signature = [0u8; 16];
        signature[..4].copy_from_slice(&[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(
            hard_drive_node(&t, 1),
            Some(DevicePathNode::HardDrive {
                partition: 1,
                start_lba: 2048,
                size_lba: 1024,
                signature,
                mbr_type: 1,
                signature_type: 1,
            })
        );
        assert_eq!(hard_drive_node(&t, 2), None);
    }

    #[test]
    fn decoding_keeps_unknown_nodes_and_refuses_truncation() {
        let mut o = option();
        o.path.insert(
            0,
            DevicePathNode::Other {
                kind: 2,
                subtype: 1,
                data: vec![0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0],
            },
        );
        o.optional_data = b"RC".to_vec();
        let bytes = o.encode();
        assert_eq!(LoadOption::decode("Boot0001", &bytes).unwrap(), o);
        for cut in [0, 5, 10, 20, 60, bytes.len() - 3] {
            let e = LoadOption::decode("Boot0001", &bytes[..cut]);
            assert!(e.is_err(), "cut at {cut}: {e:?}");
        }
        let e = LoadOption::decode("Boot0001", &[1, 0, 0, 0, 200, 0, 0x41, 0, 0, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "load option Boot0001: file path list runs past the end"
        );
    }

    #[test]
    fn install_adds_an_entry_first_in_boot_order_then_updates_it_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let ev = dir.path();
        // Firmware's own entries: Boot0000 (a PXE entry, some other device path) and Boot0002.
        let pxe = LoadOption {
            attributes: 1,
            description: "UEFI PXEv4".into(),
            path: vec![DevicePathNode::Other {
                kind: 1,
                subtype: 1,
                data: vec![0, 3],
            }],
            optional_data: vec![],
        };
        write_var(ev, "Boot0000", &pxe.encode()).unwrap();
        write_var(ev, "Boot0002", &pxe.encode()).unwrap();
        write_var(ev, "BootOrder", &[0, 0, 2, 0]).unwrap();
        std::fs::write(var_path(ev, "Boot0003"), [7, 0, 0, 0, 1]).unwrap(); // damaged

        let first = install(ev, &option()).unwrap();
        assert_eq!(first.number, 1);
        assert!(!first.updated);
        assert_eq!(first.boot_order, [1, 0, 2]);
        assert_eq!(
            first.notes,
            ["load option Boot0003: shorter than its header"]
        );
        let raw = std::fs::read(var_path(ev, "Boot0001")).unwrap();
        assert_eq!(raw[..4], [7, 0, 0, 0]);
        assert_eq!(raw[4..], option().encode());
        assert_eq!(
            std::fs::read(var_path(ev, "BootOrder")).unwrap(),
            [7, 0, 0, 0, 1, 0, 0, 0, 2, 0]
        );

        // Again, with a new description: the same entry, rewritten, still first.
        write_var(ev, "BootOrder", &[0, 0, 1, 0, 2, 0]).unwrap();
        let mut renamed = option();
        renamed.description = "d".into();
        renamed.path[1] = DevicePathNode::FilePath("\\efi\\DEBIAN\\SHIMX64.EFI".into());
        let again = install(ev, &renamed).unwrap();
        assert_eq!((again.number, again.updated), (1, true));
        assert_eq!(again.boot_order, [1, 0, 2]);
        let raw = std::fs::read(var_path(ev, "Boot0001")).unwrap();
        assert_eq!(raw[4..], renamed.encode(), "shorter value, no stale tail");
    }

    #[test]
    fn the_loader_is_found_case_insensitively_shim_first() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        let mk = |p: &str| {
            let p = esp.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "MZ").unwrap();
        };
        assert!(matches!(
            find_loader(esp, "x64"),
            Err(EfiError::NoLoader { .. })
        ));
        mk("EFI/BOOT/BOOTX64.EFI");
        assert_eq!(
            find_loader(esp, "x64").unwrap(),
            ("\\EFI\\BOOT\\BOOTX64.EFI".to_owned(), "UEFI OS".to_owned())
        );
        mk("EFI/debian/grubx64.efi");
        assert_eq!(
            find_loader(esp, "x64").unwrap().0,
            "\\EFI\\debian\\grubx64.efi"
        );
        mk("EFI/debian/shimx64.efi");
        mk("EFI/Microsoft/Boot/bootmgfw.efi");
        assert_eq!(
            find_loader(esp, "x64").unwrap(),
            ("\\EFI\\debian\\shimx64.efi".to_owned(), "debian".to_owned())
        );
        let e = find_loader(dir.path().join("nope").as_path(), "x64").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no UEFI loader on the ESP (looked for \\EFI\\*\\shimx64.efi, grubx64.efi and \
             \\EFI\\BOOT\\BOOTX64.EFI)"
        );
    }
}
