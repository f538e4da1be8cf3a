//! SMBIOS (DMI) tables: what the firmware says about the system, board, chassis and DIMMs.
//!
//! Parses the raw tables the kernel exports in `/sys/firmware/dmi/tables/{smbios_entry_point,
//! DMI}` (root only) per DMTF DSP0134: the 2.x (`_SM_`) and 3.x (`_SM3_`) entry points, the
//! structure walk with its string sets, and types 0, 1, 2, 3, 11 and 17. Non-root agents fall
//! back to the world-readable subset in `/sys/class/dmi/id`. Every read is bounds-checked:
//! a truncated or malformed table yields what could be read plus errors, never a panic.

use molar_protocol::inventory::{Baseboard, Bios, Chassis, Dimm, System};

use super::{Ctx, InventoryError};

const ENTRY_POINT: &str = "/sys/firmware/dmi/tables/smbios_entry_point";
const TABLE: &str = "/sys/firmware/dmi/tables/DMI";
const DMI_ID: &str = "/sys/class/dmi/id";

/// What is wrong with an SMBIOS entry point or table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmbiosError {
    #[error("entry point has no _SM_ or _SM3_ anchor")]
    NoAnchor,
    #[error("entry point is {len} bytes, shorter than its format needs ({need})")]
    EntryPointTruncated { len: usize, need: usize },
    #[error("entry point checksum mismatch")]
    EntryPointChecksum,
    #[error("structure at offset {offset} has length {len}, below the 4-byte header")]
    BadStructureLength { offset: usize, len: u8 },
    #[error("structure at offset {offset} (type {kind}) runs past the end of the table")]
    StructureTruncated { offset: usize, kind: u8 },
    #[error("string set of structure at offset {offset} (type {kind}) is not terminated")]
    StringsUnterminated { offset: usize, kind: u8 },
    #[error("table ends without an end-of-table (type 127) structure")]
    NoEndOfTable,
}

impl SmbiosError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoAnchor => "smbios_no_anchor",
            Self::EntryPointTruncated { .. } => "smbios_entry_point_truncated",
            Self::EntryPointChecksum => "smbios_entry_point_checksum",
            Self::BadStructureLength { .. } => "smbios_bad_structure_length",
            Self::StructureTruncated { .. } => "smbios_structure_truncated",
            Self::StringsUnterminated { .. } => "smbios_strings_unterminated",
            Self::NoEndOfTable => "smbios_no_end_of_table",
        }
    }
}

/// SMBIOS version from the entry point (major, minor, docrev).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub docrev: u8,
}

impl Version {
    /// The first version whose UUID has its first three fields little-endian.
    const UUID_LE: Version = Version {
        major: 2,
        minor: 6,
        docrev: 0,
    };
}

/// A parsed entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoint {
    pub version: Version,
    /// Table length (2.x) or maximum table size (3.x).
    pub table_len: u32,
    /// Number of structures (2.x only).
    pub structure_count: Option<u16>,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

/// Parses an SMBIOS 2.x or 3.x entry point. A checksum mismatch is reported as the error
/// alongside the parsed value (firmware with bad checksums exists, and the version is still
/// what the table was written for).
pub fn parse_entry_point(bytes: &[u8]) -> Result<(EntryPoint, Option<SmbiosError>), SmbiosError> {
    if bytes.starts_with(b"_SM3_") {
        const NEED: usize = 0x18;
        if bytes.len() < NEED {
            return Err(SmbiosError::EntryPointTruncated {
                len: bytes.len(),
                need: NEED,
            });
        }
        let len = usize::from(bytes[6]).clamp(NEED, bytes.len());
        let bad = (!checksum_ok(&bytes[..len])).then_some(SmbiosError::EntryPointChecksum);
        let ep = EntryPoint {
            version: Version {
                major: bytes[7],
                minor: bytes[8],
                docrev: bytes[9],
            },
            table_len: u32::from_le_bytes([bytes[0x0C], bytes[0x0D], bytes[0x0E], bytes[0x0F]]),
            structure_count: None,
        };
        Ok((ep, bad))
    } else if bytes.starts_with(b"_SM_") {
        const NEED: usize = 0x1F;
        if bytes.len() < NEED {
            return Err(SmbiosError::EntryPointTruncated {
                len: bytes.len(),
                need: NEED,
            });
        }
        let len = usize::from(bytes[5]).clamp(NEED, bytes.len());
        let intermediate_ok = &bytes[0x10..0x15] == b"_DMI_" && checksum_ok(&bytes[0x10..NEED]);
        let bad = (!checksum_ok(&bytes[..len]) || !intermediate_ok)
            .then_some(SmbiosError::EntryPointChecksum);
        let mut version = Version {
            major: bytes[6],
            minor: bytes[7],
            docrev: 0,
        };
        // Some firmware writes 2.51 as minor 0x33 ('3'); the kernel and dmidecode read the
        // BCD revision at 0x1E instead in that case.
        if version.major == 2 && version.minor == 0x33 {
            version.minor = 6;
        }
        let ep = EntryPoint {
            version,
            table_len: u32::from(u16::from_le_bytes([bytes[0x16], bytes[0x17]])),
            structure_count: Some(u16::from_le_bytes([bytes[0x1C], bytes[0x1D]])),
        };
        Ok((ep, bad))
    } else {
        Err(SmbiosError::NoAnchor)
    }
}

/// One SMBIOS structure: its formatted area and its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure<'a> {
    pub kind: u8,
    pub handle: u16,
    /// The formatted area including the 4-byte header.
    pub formatted: &'a [u8],
    /// The string set, in order (string number 1 is index 0).
    pub strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, off: usize) -> Option<u8> {
        self.formatted.get(off).copied()
    }

    fn word(&self, off: usize) -> Option<u16> {
        let b = self.formatted.get(off..off + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn dword(&self, off: usize) -> Option<u32> {
        let b = self.formatted.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The string whose number sits at `off`; 0 (no string) and bad numbers are `None`.
    fn string(&self, off: usize) -> Option<String> {
        let n = usize::from(self.byte(off)?);
        let raw = self.strings.get(n.checked_sub(1)?)?;
        super::trimmed(raw)
    }
}

/// Walks a structure table. Stops at the end-of-table structure, at `max_count` structures
/// (2.x), or at the first malformed structure, which is returned as the error.
pub fn walk(table: &[u8], max_count: Option<u16>) -> (Vec<Structure<'_>>, Option<SmbiosError>) {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        if max_count.is_some_and(|n| out.len() >= usize::from(n)) {
            return (out, None);
        }
        if off + 4 > table.len() {
            let err = if off >= table.len() {
                SmbiosError::NoEndOfTable
            } else {
                SmbiosError::StructureTruncated {
                    offset: off,
                    kind: table[off],
                }
            };
            return (out, Some(err));
        }
        let kind = table[off];
        let len = table[off + 1];
        if len < 4 {
            return (
                out,
                Some(SmbiosError::BadStructureLength { offset: off, len }),
            );
        }
        let strings_start = off + usize::from(len);
        if strings_start > table.len() {
            return (
                out,
                Some(SmbiosError::StructureTruncated { offset: off, kind }),
            );
        }
        // The string set ends with two NUL bytes; a structure without strings has just the
        // two NULs.
        let Some(rel_end) = table[strings_start..].windows(2).position(|w| w == [0, 0]) else {
            return (
                out,
                Some(SmbiosError::StringsUnterminated { offset: off, kind }),
            );
        };
        let area = &table[strings_start..strings_start + rel_end];
        let strings = if area.is_empty() {
            Vec::new()
        } else {
            area.split(|b| *b == 0).collect()
        };
        out.push(Structure {
            kind,
            handle: u16::from_le_bytes([table[off + 2], table[off + 3]]),
            formatted: &table[off..strings_start],
            strings,
        });
        if kind == 127 {
            return (out, None);
        }
        off = strings_start + rel_end + 2;
    }
}

/// What the SMBIOS tables (or their sysfs fallback) tell the inventory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Smbios {
    pub version: Option<Version>,
    pub bios: Option<Bios>,
    pub system: Option<System>,
    pub baseboard: Option<Baseboard>,
    pub chassis: Option<Chassis>,
    pub oem_strings: Vec<String>,
    pub dimms: Vec<Dimm>,
}

/// Decodes types 0, 1, 2, 3, 11 and 17 from a table. The first structure of types 0–3 wins
/// (multi-board systems list the main board first). `version` decides the UUID byte order
/// and defaults to 2.6+ when unknown, as the kernel does for tables without an entry point.
pub fn decode(table: &[u8], ep: Option<&EntryPoint>) -> (Smbios, Option<SmbiosError>) {
    let version = ep.map(|e| e.version);
    let (structures, err) = walk(table, ep.and_then(|e| e.structure_count));
    let mut s = Smbios {
        version,
        ..Smbios::default()
    };
    let uuid_le = version.is_none_or(|v| v >= Version::UUID_LE);
    for st in &structures {
        match st.kind {
            0 if s.bios.is_none() => s.bios = Some(bios(st)),
            1 if s.system.is_none() => s.system = Some(system(st, uuid_le)),
            2 if s.baseboard.is_none() => s.baseboard = Some(baseboard(st)),
            3 if s.chassis.is_none() => s.chassis = Some(chassis(st)),
            11 => {
                let count = usize::from(st.byte(4).unwrap_or(0));
                s.oem_strings.extend(
                    st.strings
                        .iter()
                        .take(count)
                        .map(|raw| redact_secrets(&String::from_utf8_lossy(raw))),
                );
            }
            17 => s.dimms.push(dimm(st)),
            _ => {}
        }
    }
    (s, err)
}

fn bios(st: &Structure) -> Bios {
    let revision = match (st.byte(0x14), st.byte(0x15)) {
        (Some(major), Some(minor)) if major != 0xFF && minor != 0xFF => {
            Some(format!("{major}.{minor}"))
        }
        _ => None,
    };
    Bios {
        vendor: st.string(0x04),
        version: st.string(0x05),
        release_date: st.string(0x08),
        revision,
    }
}

fn system(st: &Structure, uuid_le: bool) -> System {
    System {
        manufacturer: st.string(0x04),
        product: st.string(0x05),
        version: st.string(0x06),
        serial: st.string(0x07),
        uuid: st
            .formatted
            .get(0x08..0x18)
            .and_then(|b| format_uuid(b, uuid_le)),
        sku: st.string(0x19),
        family: st.string(0x1A),
    }
}

/// Formats a 16-byte SMBIOS UUID; all-zero ("not set") and all-0xFF ("not present") are
/// `None`.
pub fn format_uuid(b: &[u8], first_fields_le: bool) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    if b.iter().all(|x| *x == 0) || b.iter().all(|x| *x == 0xFF) {
        return None;
    }
    let mut o = *b;
    if first_fields_le {
        o[0..4].reverse();
        o[4..6].reverse();
        o[6..8].reverse();
    }
    let hex: Vec<String> = o.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}

fn baseboard(st: &Structure) -> Baseboard {
    Baseboard {
        manufacturer: st.string(0x04),
        product: st.string(0x05),
        version: st.string(0x06),
        serial: st.string(0x07),
        asset_tag: st.string(0x08),
    }
}

fn chassis(st: &Structure) -> Chassis {
    Chassis {
        manufacturer: st.string(0x04),
        kind: st.byte(0x05).and_then(|t| chassis_type_name(t & 0x7F)),
        version: st.string(0x06),
        serial: st.string(0x07),
        asset_tag: st.string(0x08),
    }
}

/// DSP0134 7.4.1 chassis types.
pub fn chassis_type_name(t: u8) -> Option<String> {
    const NAMES: [&str; 36] = [
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    let name = NAMES.get(usize::from(t).checked_sub(1)?)?;
    Some((*name).to_string())
}

/// DSP0134 7.18.2 memory types.
fn memory_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "Other",
        0x02 => "Unknown",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0A => "EEPROM",
        0x0B => "FEPROM",
        0x0C => "EPROM",
        0x0D => "CDRAM",
        0x0E => "3DRAM",
        0x0F => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return None,
    })
}

/// DSP0134 7.18.1 form factors.
fn form_factor_name(t: u8) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "Other",
        "Unknown",
        "SIMM",
        "SIP",
        "Chip",
        "DIP",
        "ZIP",
        "Proprietary Card",
        "DIMM",
        "TSOP",
        "Row of chips",
        "RIMM",
        "SODIMM",
        "SRIMM",
        "FB-DIMM",
        "Die",
        "CAMM",
    ];
    NAMES.get(usize::from(t).checked_sub(1)?).copied()
}

/// Size of a type 17 device: (populated, bytes).
fn dimm_size(st: &Structure) -> (bool, Option<u64>) {
    match st.word(0x0C) {
        None => (false, None),
        Some(0) => (false, None),
        Some(0xFFFF) => (true, None),
        Some(0x7FFF) => {
            // Extended Size (2.7+): bits 30:0 in MiB.
            let mib = st.dword(0x1C).map(|v| u64::from(v & 0x7FFF_FFFF));
            (true, mib.filter(|m| *m > 0).map(|m| m << 20))
        }
        Some(v) if v & 0x8000 != 0 => (true, Some(u64::from(v & 0x7FFF) << 10)),
        Some(v) => (true, Some(u64::from(v) << 20)),
    }
}

/// A speed word, with its 3.3+ extended dword when the word is 0xFFFF.
fn dimm_speed(st: &Structure, word_off: usize, ext_off: usize) -> Option<u32> {
    match st.word(word_off)? {
        0 => None,
        0xFFFF => st
            .dword(ext_off)
            .map(|v| v & 0x7FFF_FFFF)
            .filter(|v| *v > 0),
        v => Some(u32::from(v)),
    }
}

fn dimm(st: &Structure) -> Dimm {
    let (populated, size_bytes) = dimm_size(st);
    Dimm {
        locator: st.string(0x10),
        bank: st.string(0x11),
        populated,
        size_bytes,
        kind: st.byte(0x12).and_then(memory_type_name).map(str::to_string),
        form_factor: st.byte(0x0E).and_then(form_factor_name).map(str::to_string),
        speed_mts: dimm_speed(st, 0x15, 0x54),
        configured_speed_mts: dimm_speed(st, 0x20, 0x58),
        manufacturer: st.string(0x17),
        serial: st.string(0x18),
        part_number: st.string(0x1A),
    }
}

/// Replaces the values of secret-looking `key=value` items (the ramdisk reads
/// `molar.token=...` from OEM strings) so they never reach the controller's store or screen.
pub fn redact_secrets(s: &str) -> String {
    const SECRET_KEYS: [&str; 5] = ["token", "password", "passwd", "secret", "key"];
    s.split(' ')
        .map(|item| match item.split_once('=') {
            Some((k, _))
                if SECRET_KEYS
                    .iter()
                    .any(|w| k.to_ascii_lowercase().contains(w)) =>
            {
                format!("{k}=<redacted>")
            }
            _ => item.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// Reads the tables under the context's root, falling back to `/sys/class/dmi/id`.
pub(crate) fn collect(ctx: &mut Ctx) -> Smbios {
    let table = ctx.read_bytes_required(TABLE);
    let Some(table) = table else {
        return from_dmi_id(ctx);
    };
    let ep = match ctx.read_bytes_required(ENTRY_POINT) {
        Some(bytes) => match parse_entry_point(&bytes) {
            Ok((ep, warning)) => {
                if let Some(source) = warning {
                    smbios_note(ctx, ENTRY_POINT, source);
                }
                Some(ep)
            }
            Err(source) => {
                smbios_note(ctx, ENTRY_POINT, source);
                None
            }
        },
        None => None,
    };
    let (s, err) = decode(&table, ep.as_ref());
    if let Some(source) = err {
        smbios_note(ctx, TABLE, source);
    }
    s
}

fn smbios_note(ctx: &mut Ctx, path: &str, source: SmbiosError) {
    ctx.error(InventoryError::Smbios {
        path: path.to_string(),
        source,
    });
}

/// The world-readable subset the kernel decodes itself. Serials and the UUID are root-only
/// there too; OEM strings and DIMMs are not exported at all.
fn from_dmi_id(ctx: &mut Ctx) -> Smbios {
    if !ctx.exists(DMI_ID) {
        ctx.note(DMI_ID, "no such file or directory");
        return Smbios::default();
    }
    let mut attr = |name: &str| ctx.read_attr(&format!("{DMI_ID}/{name}"));
    let bios = Bios {
        vendor: attr("bios_vendor"),
        version: attr("bios_version"),
        release_date: attr("bios_date"),
        revision: attr("bios_release"),
    };
    let system = System {
        manufacturer: attr("sys_vendor"),
        product: attr("product_name"),
        version: attr("product_version"),
        serial: attr("product_serial"),
        uuid: attr("product_uuid").map(|u| u.to_ascii_lowercase()),
        sku: attr("product_sku"),
        family: attr("product_family"),
    };
    let baseboard = Baseboard {
        manufacturer: attr("board_vendor"),
        product: attr("board_name"),
        version: attr("board_version"),
        serial: attr("board_serial"),
        asset_tag: attr("board_asset_tag"),
    };
    let chassis_type = attr("chassis_type");
    let chassis = Chassis {
        manufacturer: attr("chassis_vendor"),
        kind: chassis_type
            .and_then(|t| t.parse::<u8>().ok())
            .and_then(chassis_type_name),
        version: attr("chassis_version"),
        serial: attr("chassis_serial"),
        asset_tag: attr("chassis_asset_tag"),
    };
    ctx.note(
        TABLE,
        "raw tables unreadable: oem strings and dimms unavailable, identity from /sys/class/dmi/id",
    );
    Smbios {
        version: None,
        bios: Some(bios).filter(|b| *b != Bios::default()),
        system: Some(system).filter(|s| *s != System::default()),
        baseboard: Some(baseboard).filter(|b| *b != Baseboard::default()),
        chassis: Some(chassis).filter(|c| *c != Chassis::default()),
        oem_strings: Vec::new(),
        dimms: Vec::new(),
    }
}

/// Builders of SMBIOS bytes for tests (here and in the fixture tests).
#[cfg(test)]
pub(crate) mod build {
    /// One structure: formatted area after the 4-byte header, and its strings.
    pub(crate) fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut out = vec![kind, (body.len() + 4) as u8];
        out.extend_from_slice(&handle.to_le_bytes());
        out.extend_from_slice(body);
        if strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }

    pub(crate) fn end_of_table() -> Vec<u8> {
        structure(127, 0xFEFF, &[], &[])
    }

    fn fix_checksum(bytes: &mut [u8], range: std::ops::Range<usize>, at: usize) {
        bytes[at] = 0;
        let sum = bytes[range].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    pub(crate) fn entry_point_3(major: u8, minor: u8, table_len: u32) -> Vec<u8> {
        let mut ep = vec![0u8; 0x18];
        ep[..5].copy_from_slice(b"_SM3_");
        ep[6] = 0x18;
        ep[7] = major;
        ep[8] = minor;
        ep[0x0A] = 1;
        ep[0x0C..0x10].copy_from_slice(&table_len.to_le_bytes());
        ep[0x10..0x18].copy_from_slice(&0x000F_0000u64.to_le_bytes());
        fix_checksum(&mut ep, 0..0x18, 5);
        ep
    }

    pub(crate) fn entry_point_2(major: u8, minor: u8, table_len: u16, count: u16) -> Vec<u8> {
        let mut ep = vec![0u8; 0x1F];
        ep[..4].copy_from_slice(b"_SM_");
        ep[5] = 0x1F;
        ep[6] = major;
        ep[7] = minor;
        ep[0x10..0x15].copy_from_slice(b"_DMI_");
        ep[0x16..0x18].copy_from_slice(&table_len.to_le_bytes());
        ep[0x18..0x1C].copy_from_slice(&0x000F_0000u32.to_le_bytes());
        ep[0x1C..0x1E].copy_from_slice(&count.to_le_bytes());
        ep[0x1E] = (major << 4) | minor;
        fix_checksum(&mut ep, 0x10..0x1F, 0x15);
        fix_checksum(&mut ep, 0..0x1F, 4);
        ep
    }

    /// Type 1 body with strings 1..=4 for manufacturer/product/version/serial, 5 SKU,
    /// 6 family.
    pub(crate) fn system_body(uuid: [u8; 16]) -> Vec<u8> {
        let mut b = vec![1, 2, 3, 4];
        b.extend_from_slice(&uuid);
        b.push(6); // wake-up type: power switch
        b.push(5);
        b.push(6);
        b
    }

    /// Type 17 body (SMBIOS 3.3 layout, 0x5C bytes with header).
    pub(crate) fn dimm_body(size: u16, ext_size_mib: u32, speed: u16, conf_speed: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x5C - 4];
        let mut put =
            |off: usize, bytes: &[u8]| b[off - 4..off - 4 + bytes.len()].copy_from_slice(bytes);
        put(0x04, &0x1000u16.to_le_bytes());
        put(0x06, &0xFFFEu16.to_le_bytes());
        put(0x08, &72u16.to_le_bytes());
        put(0x0A, &64u16.to_le_bytes());
        put(0x0C, &size.to_le_bytes());
        put(0x0E, &[0x09]); // DIMM
        put(0x10, &[1, 2, 0x1A]); // locator, bank, DDR4
        put(0x15, &speed.to_le_bytes());
        put(0x17, &[3, 4, 0, 5]); // manufacturer, serial, asset tag none, part number
        put(0x1C, &ext_size_mib.to_le_bytes());
        put(0x20, &conf_speed.to_le_bytes());
        put(0x54, &6400u32.to_le_bytes());
        put(0x58, &5600u32.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use proptest::prelude::*;

    const UUID_BYTES: [u8; 16] = [
        0x2a, 0x6c, 0x1f, 0x5e, 0x3b, 0x8d, 0x8e, 0x4b, 0x9a, 0x51, 0x0c, 0x2d, 0x3e, 0x4f, 0x5a,
        0x6b,
    ];

    fn sample_table() -> Vec<u8> {
        let mut t = Vec::new();
        let mut bios_body = vec![1, 2, 0, 0, 3, 0];
        bios_body.extend_from_slice(&[0; 8]); // characteristics
        bios_body.extend_from_slice(&[0, 0, 1, 16, 0xFF, 0xFF]); // ext, release 1.16, ec none
        t.extend(structure(
            0,
            0,
            &bios_body,
            &["SeaBIOS", "1.16.2-debian", "04/01/2014"],
        ));
        t.extend(structure(
            1,
            0x100,
            &system_body(UUID_BYTES),
            &["Acme", "X1", "1.0", "S123", "SKU-9", "Servers"],
        ));
        t.extend(structure(
            2,
            0x200,
            &[1, 2, 3, 4, 5, 0, 0, 0, 0x0A, 0],
            &["Acme", "MB-1", "rev A", "BSN1", "ATAG"],
        ));
        t.extend(structure(
            3,
            0x300,
            &[1, 0x17, 2, 3, 4],
            &["Acme", "v2", "CSN1", "CTAG"],
        ));
        t.extend(structure(
            11,
            0xB00,
            &[2],
            &[
                "molar.controller=10.0.2.100:9000 molar.token=hunter2",
                "plain",
            ],
        ));
        t.extend(structure(
            17,
            0x1100,
            &dimm_body(0x7FFF, 65536, 0xFFFF, 4800),
            &["DIMM_A1", "BANK 0", "Samsung", "S0001", "M393A8G40AB2"],
        ));
        t.extend(structure(
            17,
            0x1101,
            &dimm_body(0, 0, 0, 0),
            &["DIMM_A2", "BANK 1"],
        ));
        t.extend(structure(
            17,
            0x1102,
            &dimm_body(0x8000 | 512, 0, 2400, 0),
            &["DIMM_B1", "BANK 2", "Hynix", "S2", "P2"],
        ));
        t.extend(end_of_table());
        t
    }

    #[test]
    fn smbios3_table_decodes_all_types() {
        let table = sample_table();
        let ep_bytes = entry_point_3(3, 3, table.len() as u32);
        let (ep, warning) = parse_entry_point(&ep_bytes).expect("valid entry point");
        assert_eq!(warning, None);
        assert_eq!(
            ep.version,
            Version {
                major: 3,
                minor: 3,
                docrev: 0
            }
        );
        let (s, err) = decode(&table, Some(&ep));
        assert_eq!(err, None);

        let bios = s.bios.expect("bios");
        assert_eq!(bios.vendor.as_deref(), Some("SeaBIOS"));
        assert_eq!(bios.version.as_deref(), Some("1.16.2-debian"));
        assert_eq!(bios.release_date.as_deref(), Some("04/01/2014"));
        assert_eq!(bios.revision.as_deref(), Some("1.16"));

        let sys = s.system.expect("system");
        assert_eq!(sys.manufacturer.as_deref(), Some("Acme"));
        assert_eq!(sys.serial.as_deref(), Some("S123"));
        assert_eq!(sys.sku.as_deref(), Some("SKU-9"));
        assert_eq!(sys.family.as_deref(), Some("Servers"));
        // The UUID QEMU was given on its command line, byte-swapped per SMBIOS 2.6+.
        assert_eq!(
            sys.uuid.as_deref(),
            Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
        );

        let board = s.baseboard.expect("baseboard");
        assert_eq!(board.product.as_deref(), Some("MB-1"));
        assert_eq!(board.asset_tag.as_deref(), Some("ATAG"));
        let chassis = s.chassis.expect("chassis");
        assert_eq!(chassis.kind.as_deref(), Some("Rack Mount Chassis"));
        assert_eq!(chassis.serial.as_deref(), Some("CSN1"));

        assert_eq!(
            s.oem_strings,
            vec![
                "molar.controller=10.0.2.100:9000 molar.token=<redacted>".to_string(),
                "plain".to_string()
            ]
        );

        assert_eq!(s.dimms.len(), 3);
        let a1 = &s.dimms[0];
        assert!(a1.populated);
        assert_eq!(a1.size_bytes, Some(64 << 30), "extended size 65536 MiB");
        assert_eq!(a1.speed_mts, Some(6400), "extended speed");
        assert_eq!(a1.configured_speed_mts, Some(4800));
        assert_eq!(a1.kind.as_deref(), Some("DDR4"));
        assert_eq!(a1.form_factor.as_deref(), Some("DIMM"));
        assert_eq!(a1.locator.as_deref(), Some("DIMM_A1"));
        assert_eq!(a1.bank.as_deref(), Some("BANK 0"));
        assert_eq!(a1.manufacturer.as_deref(), Some("Samsung"));
        assert_eq!(a1.serial.as_deref(), Some("S0001"));
        assert_eq!(a1.part_number.as_deref(), Some("M393A8G40AB2"));
        let a2 = &s.dimms[1];
        assert!(!a2.populated);
        assert_eq!(a2.size_bytes, None);
        assert_eq!(a2.manufacturer, None);
        let b1 = &s.dimms[2];
        assert_eq!(b1.size_bytes, Some(512 << 10), "size in KiB granularity");
        assert_eq!(b1.speed_mts, Some(2400));
        assert_eq!(b1.configured_speed_mts, None);
    }

    #[test]
    fn smbios2_entry_point_and_old_uuid_order() {
        let mut t = structure(1, 1, &system_body(UUID_BYTES), &["A", "B", "C", "D"]);
        t.extend(end_of_table());
        let ep_bytes = entry_point_2(2, 5, t.len() as u16, 2);
        let (ep, warning) = parse_entry_point(&ep_bytes).expect("valid");
        assert_eq!(warning, None);
        assert_eq!(
            ep.version,
            Version {
                major: 2,
                minor: 5,
                docrev: 0
            }
        );
        assert_eq!(ep.structure_count, Some(2));
        assert_eq!(ep.table_len, t.len() as u32);
        let (s, err) = decode(&t, Some(&ep));
        assert_eq!(err, None);
        // Before 2.6 the UUID is printed in wire order.
        assert_eq!(
            s.system.and_then(|s| s.uuid).as_deref(),
            Some("2a6c1f5e-3b8d-8e4b-9a51-0c2d3e4f5a6b")
        );

        let ep26 = entry_point_2(2, 8, t.len() as u16, 2);
        let (ep, _) = parse_entry_point(&ep26).expect("valid");
        let (s, _) = decode(&t, Some(&ep));
        assert_eq!(
            s.system.and_then(|s| s.uuid).as_deref(),
            Some("5e1f6c2a-8d3b-4b8e-9a51-0c2d3e4f5a6b")
        );
    }

    #[test]
    fn structure_count_limits_a_2x_walk() {
        let mut t = structure(1, 1, &system_body(UUID_BYTES), &["A"]);
        t.extend(structure(2, 2, &[1, 0, 0, 0, 0], &["Board"]));
        // No end-of-table: the 2.x count says where to stop.
        let (structures, err) = walk(&t, Some(2));
        assert_eq!(structures.len(), 2);
        assert_eq!(err, None);
    }

    #[test]
    fn bad_checksum_is_a_warning_not_a_failure() {
        let mut ep = entry_point_3(3, 0, 100);
        ep[0x0C] ^= 1;
        let (ep, warning) = parse_entry_point(&ep).expect("still parsed");
        assert_eq!(warning, Some(SmbiosError::EntryPointChecksum));
        assert_eq!(ep.version.major, 3);
    }

    #[test]
    fn entry_point_errors() {
        assert_eq!(parse_entry_point(b"garbage"), Err(SmbiosError::NoAnchor));
        assert_eq!(
            parse_entry_point(b"_SM3_\0\0"),
            Err(SmbiosError::EntryPointTruncated { len: 7, need: 0x18 })
        );
        assert_eq!(
            parse_entry_point(b"_SM_"),
            Err(SmbiosError::EntryPointTruncated { len: 4, need: 0x1F })
        );
    }

    #[test]
    fn truncated_table_keeps_what_was_read() {
        let table = sample_table();
        // Cut in the middle of the first type 17's formatted area.
        let cut = table
            .windows(2)
            .position(|w| w == [17, 0x5C])
            .expect("type 17 present")
            + 10;
        let (s, err) = decode(&table[..cut], None);
        assert!(matches!(
            err,
            Some(SmbiosError::StructureTruncated { kind: 17, .. })
        ));
        assert_eq!(s.system.and_then(|s| s.serial).as_deref(), Some("S123"));
        assert!(s.dimms.is_empty());
    }

    #[test]
    fn malformed_structures() {
        let (_, err) = walk(&[1, 2, 0, 0, 0, 0], None);
        assert_eq!(
            err,
            Some(SmbiosError::BadStructureLength { offset: 0, len: 2 })
        );
        let (_, err) = walk(&[1, 4, 0, 0, b'a', 0], None);
        assert_eq!(
            err,
            Some(SmbiosError::StringsUnterminated { offset: 0, kind: 1 })
        );
        let (v, err) = walk(&[], None);
        assert!(v.is_empty());
        assert_eq!(err, Some(SmbiosError::NoEndOfTable));
    }

    #[test]
    fn string_numbers_out_of_range_are_absent() {
        // Type 1 pointing at strings 1..6 with only one string present.
        let mut t = structure(1, 1, &system_body([0; 16]), &["Only"]);
        t.extend(end_of_table());
        let (s, err) = decode(&t, None);
        assert_eq!(err, None);
        let sys = s.system.expect("system");
        assert_eq!(sys.manufacturer.as_deref(), Some("Only"));
        assert_eq!(sys.product, None);
        assert_eq!(sys.uuid, None, "all-zero uuid means not set");
    }

    #[test]
    fn short_structures_of_old_versions() {
        // A 2.0-era type 1 of 8 bytes: no uuid, sku or family fields.
        let mut t = structure(1, 1, &[1, 2, 3, 4], &["M", "P", "V", "S"]);
        t.extend(structure(17, 2, &[0; 0x11], &[]));
        t.extend(end_of_table());
        let (s, err) = decode(&t, None);
        assert_eq!(err, None);
        let sys = s.system.expect("system");
        assert_eq!(sys.serial.as_deref(), Some("S"));
        assert_eq!(sys.uuid, None);
        assert_eq!(sys.family, None);
        assert_eq!(s.dimms.len(), 1);
        assert!(!s.dimms[0].populated);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_secrets("molar.token=abc"), "molar.token=<redacted>");
        assert_eq!(
            redact_secrets("bmc_password=x y=1"),
            "bmc_password=<redacted> y=1"
        );
        assert_eq!(redact_secrets("Default string"), "Default string");
    }

    proptest! {
        #[test]
        fn arbitrary_tables_never_panic(table in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&table, None);
        }

        #[test]
        fn arbitrary_entry_points_never_panic(ep in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_entry_point(&ep);
            let mut with_anchor = b"_SM3_".to_vec();
            with_anchor.extend_from_slice(&ep);
            let _ = parse_entry_point(&with_anchor);
            let mut with_anchor = b"_SM_".to_vec();
            with_anchor.extend_from_slice(&ep);
            let _ = parse_entry_point(&with_anchor);
        }

        #[test]
        fn mutated_valid_tables_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16)
        ) {
            let mut table = sample_table();
            let len = table.len();
            for (i, v) in flips {
                table[i.index(len)] = v;
            }
            let _ = decode(&table, None);
        }
    }
}
