//! A PE/COFF section appender: what `objcopy --add-section NAME=FILE --change-section-vma`
//! does to an EFI stub, without binutils. New sections go after the image's last one, at
//! virtual addresses aligned to a page (and so to any `SectionAlignment` up to 4 KiB) and
//! file offsets aligned to `FileAlignment`; `NumberOfSections`, `SizeOfImage` and
//! `SizeOfInitializedData` are updated and the (unchecked for EFI) checksum is zeroed.
//!
//! Only PE32+ is accepted, and only a stub whose headers have room for the new section
//! headers: moving the sections to make room would break their file offsets. A signed stub
//! is refused, since appending invalidates the signature anyway.

use thiserror::Error;

/// Why a PE image could not be read or extended.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    Malformed(&'static str),
    #[error("unsupported PE image: {0}")]
    Unsupported(String),
    #[error("no room for {wanted} more section headers in the stub's headers (room for {room})")]
    NoHeaderRoom { wanted: usize, room: usize },
    #[error("section name {0:?} is longer than 8 bytes or empty")]
    BadName(String),
    #[error("section {0} is too large for a PE image")]
    TooLarge(String),
}

impl PeError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            PeError::Malformed(_) => "pe_malformed",
            PeError::Unsupported(_) => "pe_unsupported",
            PeError::NoHeaderRoom { .. } => "pe_no_header_room",
            PeError::BadName(_) => "pe_bad_section_name",
            PeError::TooLarge(_) => "pe_too_large",
        }
    }
}

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: what ukify gives its sections.
pub const READ_ONLY_DATA: u32 = 0x4000_0040;
const SECTION_HEADER: usize = 40;
const PE32_PLUS: u16 = 0x20b;
/// Virtual addresses of added sections are page aligned, as ukify does.
const VMA_ALIGN: u64 = 4096;

/// One section header, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

/// The parts of the headers the appender reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// File offset of the COFF header (after `PE\0\0`).
    coff: usize,
    /// File offset of the optional header.
    optional: usize,
    size_of_optional: u16,
    pub machine: u16,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub sections: Vec<Section>,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16, PeError> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(PeError::Malformed("truncated headers"))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, PeError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PeError::Malformed("truncated headers"))
}

fn put_u16(d: &mut [u8], off: usize, v: u16) {
    d[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Headers {
    /// File offset of the section table.
    fn table(&self) -> usize {
        self.optional + self.size_of_optional as usize
    }
}

/// Parses the DOS stub, PE signature, COFF and optional headers and the section table.
pub fn parse(d: &[u8]) -> Result<Headers, PeError> {
    if d.get(..2) != Some(b"MZ") {
        return Err(PeError::Malformed("no MZ signature"));
    }
    let pe = u32_at(d, 0x3c)? as usize;
    if d.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::Malformed("no PE signature at e_lfanew"));
    }
    let coff = pe + 4;
    let machine = u16_at(d, coff)?;
    let nsections = u16_at(d, coff + 2)? as usize;
    let size_of_optional = u16_at(d, coff + 16)?;
    // The fixed part of a PE32+ optional header ends at NumberOfRvaAndSizes (112 bytes).
    if size_of_optional < 112 {
        return Err(PeError::Malformed("optional header too short for PE32+"));
    }
    let optional = coff + 20;
    let magic = u16_at(d, optional)?;
    if magic != PE32_PLUS {
        return Err(PeError::Unsupported(format!(
            "optional header magic {magic:#x} (only PE32+, 0x20b)"
        )));
    }
    let section_alignment = u32_at(d, optional + 32)?;
    let file_alignment = u32_at(d, optional + 36)?;
    if !file_alignment.is_power_of_two()
        || !section_alignment.is_power_of_two()
        || file_alignment > section_alignment
    {
        return Err(PeError::Malformed("bad section or file alignment"));
    }
    if section_alignment as u64 > VMA_ALIGN {
        return Err(PeError::Unsupported(format!(
            "section alignment {section_alignment:#x} above 4 KiB"
        )));
    }
    let size_of_image = u32_at(d, optional + 56)?;
    let size_of_headers = u32_at(d, optional + 60)?;
    let table = optional + size_of_optional as usize;
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let s = table + i * SECTION_HEADER;
        let raw = d
            .get(s..s + SECTION_HEADER)
            .ok_or(PeError::Malformed("truncated section table"))?;
        let name_bytes = &raw[..8];
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(8);
        sections.push(Section {
            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
            virtual_size: u32_at(raw, 8)?,
            virtual_address: u32_at(raw, 12)?,
            raw_size: u32_at(raw, 16)?,
            raw_offset: u32_at(raw, 20)?,
            characteristics: u32_at(raw, 36)?,
        });
    }
    Ok(Headers {
        coff,
        optional,
        machine,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        sections,
        size_of_optional,
    })
}

/// The bytes of section `name` in the file (its raw data, cut to its virtual size).
pub fn section_data<'a>(d: &'a [u8], h: &Headers, name: &str) -> Option<&'a [u8]> {
    let s = h.sections.iter().find(|s| s.name == name)?;
    let len = s.virtual_size.min(s.raw_size) as usize;
    d.get(s.raw_offset as usize..s.raw_offset as usize + len)
}

/// Returns `stub` with `sections` (name, data) appended, in order.
pub fn append_sections(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, PeError> {
    let h = parse(stub)?;
    // The certificate table is data directory 4 (8 bytes each, from offset 112 in PE32+).
    let dirs = u32_at(stub, h.optional + 108)?;
    let has_cert_dir = dirs > 4 && h.size_of_optional as usize >= 112 + 5 * 8;
    if has_cert_dir && u32_at(stub, h.optional + 112 + 4 * 8 + 4)? != 0 {
        return Err(PeError::Unsupported(
            "the stub is signed (it has a certificate table)".into(),
        ));
    }
    for (name, _) in sections {
        if name.is_empty() || name.len() > 8 || !name.is_ascii() {
            return Err(PeError::BadName(name.to_string()));
        }
    }
    let table = h.table();
    let table_end = table + h.sections.len() * SECTION_HEADER;
    // The first section's data bounds the headers too, whatever SizeOfHeaders says.
    let first_raw = h
        .sections
        .iter()
        .map(|s| s.raw_offset)
        .filter(|&o| o > 0)
        .min()
        .unwrap_or(h.size_of_headers)
        .min(h.size_of_headers) as usize;
    let room = first_raw.saturating_sub(table_end) / SECTION_HEADER;
    if room < sections.len() {
        return Err(PeError::NoHeaderRoom {
            wanted: sections.len(),
            room,
        });
    }
    if stub.len() < first_raw {
        return Err(PeError::Malformed("file shorter than its headers"));
    }

    let mut out = stub.to_vec();
    let fa = h.file_alignment as u64;
    let mut vma = align_up(
        h.sections
            .iter()
            .map(|s| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64)
            .max()
            .unwrap_or(h.size_of_image as u64)
            .max(h.size_of_image as u64),
        VMA_ALIGN,
    );
    let mut initialized = u32_at(stub, h.optional + 8)? as u64;
    for (i, (name, data)) in sections.iter().enumerate() {
        let too_large = || PeError::TooLarge(name.to_string());
        let offset = align_up(out.len() as u64, fa);
        let raw_size = align_up(data.len() as u64, fa);
        let vsize = u32::try_from(data.len()).map_err(|_| too_large())?;
        let va = u32::try_from(vma).map_err(|_| too_large())?;
        out.resize(offset as usize, 0);
        out.extend_from_slice(data);
        out.resize((offset + raw_size) as usize, 0);

        let s = table_end + i * SECTION_HEADER;
        let hdr = &mut out[s..s + SECTION_HEADER];
        hdr.fill(0);
        hdr[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(hdr, 8, vsize);
        put_u32(hdr, 12, va);
        put_u32(hdr, 16, u32::try_from(raw_size).map_err(|_| too_large())?);
        put_u32(hdr, 20, u32::try_from(offset).map_err(|_| too_large())?);
        put_u32(hdr, 36, READ_ONLY_DATA);
        initialized += raw_size;
        vma = align_up(vma + data.len().max(1) as u64, VMA_ALIGN);
    }
    let count = u16::try_from(h.sections.len() + sections.len())
        .map_err(|_| PeError::Unsupported("too many sections".into()))?;
    put_u16(&mut out, h.coff + 2, count);
    let size_of_image = u32::try_from(align_up(vma, h.section_alignment as u64))
        .map_err(|_| PeError::TooLarge("the image".into()))?;
    put_u32(&mut out, h.optional + 56, size_of_image);
    put_u32(
        &mut out,
        h.optional + 8,
        u32::try_from(initialized).unwrap_or(u32::MAX),
    );
    // CheckSum: EFI loaders do not check it, and a stale one is worse than none.
    put_u32(&mut out, h.optional + 64, 0);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    /// A minimal PE32+ image: headers of `header_size` bytes, one `.text` section.
    pub fn synthetic(header_size: u32) -> Vec<u8> {
        let mut d = vec![0u8; header_size as usize + 0x200];
        d[..2].copy_from_slice(b"MZ");
        put_u32(&mut d, 0x3c, 0x40);
        d[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        put_u16(&mut d, coff, 0x8664);
        put_u16(&mut d, coff + 2, 1);
        put_u16(&mut d, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut d, opt, PE32_PLUS);
        put_u32(&mut d, opt + 32, 0x1000);
        put_u32(&mut d, opt + 36, 0x200);
        put_u32(&mut d, opt + 56, 0x2000);
        put_u32(&mut d, opt + 60, header_size);
        put_u32(&mut d, opt + 108, 16);
        let s = opt + 240;
        d[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut d, s + 8, 0x10);
        put_u32(&mut d, s + 12, 0x1000);
        put_u32(&mut d, s + 16, 0x200);
        put_u32(&mut d, s + 20, header_size);
        put_u32(&mut d, s + 36, 0x6000_0020);
        d
    }

    #[test]
    fn appends_sections_to_the_real_systemd_stub_and_reads_them_back() {
        let Ok(stub) = std::fs::read(STUB) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{STUB} missing under CI (install systemd-boot-efi)"
            );
            eprintln!("skipping: {STUB} not installed (systemd-boot-efi)");
            return;
        };
        let before = parse(&stub).unwrap();
        let linux = vec![0xabu8; 100_001];
        let initrd = vec![0xcdu8; 3_000];
        let out = append_sections(
            &stub,
            &[
                (".osrel", b"ID=molar\n"),
                (".cmdline", b"console=ttyS0"),
                (".linux", &linux),
                (".initrd", &initrd),
            ],
        )
        .unwrap();
        let after = parse(&out).unwrap();
        assert_eq!(after.sections.len(), before.sections.len() + 4);
        assert_eq!(after.sections[..before.sections.len()], before.sections[..]);
        assert_eq!(section_data(&out, &after, ".osrel").unwrap(), b"ID=molar\n");
        assert_eq!(
            section_data(&out, &after, ".cmdline").unwrap(),
            b"console=ttyS0"
        );
        assert_eq!(section_data(&out, &after, ".linux").unwrap(), &linux[..]);
        assert_eq!(section_data(&out, &after, ".initrd").unwrap(), &initrd[..]);
        // Sections ascend without overlap, page aligned, file aligned, inside SizeOfImage.
        let mut end = 0u64;
        for s in &after.sections {
            assert!(s.virtual_address as u64 >= end, "{s:?} overlaps");
            end = s.virtual_address as u64 + s.virtual_size as u64;
            assert_eq!(s.raw_offset % after.file_alignment, 0);
            assert_eq!(s.raw_size % after.file_alignment, 0);
        }
        for s in &after.sections[before.sections.len()..] {
            assert_eq!(s.virtual_address % 4096, 0);
            assert_eq!(s.characteristics, READ_ONLY_DATA);
        }
        assert!(after.size_of_image as u64 >= end);
        assert_eq!(after.size_of_image % after.section_alignment, 0);
    }

    #[test]
    fn refuses_what_it_cannot_extend() {
        assert_eq!(
            parse(b"not a pe").unwrap_err(),
            PeError::Malformed("no MZ signature")
        );
        // Headers full: a section table ending exactly where the first section starts.
        let full = synthetic(0x40 + 4 + 20 + 240 + 40);
        assert!(matches!(
            append_sections(&full, &[(".linux", b"x")]),
            Err(PeError::NoHeaderRoom { wanted: 1, room: 0 })
        ));
        let roomy = synthetic(0x400);
        assert!(matches!(
            append_sections(&roomy, &[(".toolongname", b"x")]),
            Err(PeError::BadName(_))
        ));
        let out = append_sections(&roomy, &[(".linux", b"kernel")]).unwrap();
        let h = parse(&out).unwrap();
        assert_eq!(h.sections[1].virtual_address, 0x2000);
        assert_eq!(h.size_of_image, 0x3000);
        let mut pe32 = roomy.clone();
        put_u16(&mut pe32, 0x44 + 20, 0x10b);
        assert!(matches!(parse(&pe32), Err(PeError::Unsupported(_))));
        let mut signed = roomy.clone();
        put_u32(&mut signed, 0x44 + 20 + 112 + 32 + 4, 0x100);
        assert!(matches!(
            append_sections(&signed, &[(".linux", b"x")]),
            Err(PeError::Unsupported(_))
        ));
        for n in 0..roomy.len().min(0x200) {
            let _ = parse(&roomy[..n]);
        }
    }

    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        let good = synthetic(0x400);
        // Every header byte set to 0x00, 0xff and 0x7f in turn, then truncations.
        for at in 0..0x2c8 {
            for v in [0x00u8, 0xff, 0x7f] {
                let mut d = good.clone();
                d[at] = v;
                if let Ok(out) = append_sections(&d, &[(".linux", b"kernel"), (".initrd", b"")]) {
                    parse(&out).expect("what was written parses back");
                }
            }
        }
        for n in 0..good.len() {
            let _ = append_sections(&good[..n], &[(".linux", b"k")]);
        }
    }
}
