//! Just enough ELF64 reading for the image builder: the `.modinfo` section of a kernel
//! module (dependencies and aliases come from the modules themselves, no depmod needed) and
//! the program headers and dynamic section of the agent (it is `/init`, so it must be static).
//!
//! Hand-written rather than a crate: the two questions asked are small, and the parser only
//! reads bounds-checked slices of bytes that are already in memory, so bad input is an error,
//! never a panic.

use thiserror::Error;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// Why a byte string is not the ELF file that was expected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF flavour: only 64-bit little-endian files are read")]
    Unsupported,
    #[error("truncated or malformed ELF file: {0}")]
    Malformed(&'static str),
    #[error("not an x86_64 executable (e_machine {machine}, e_type {kind})")]
    NotX86Executable { machine: u16, kind: u16 },
    #[error("dynamically linked: it asks for the program interpreter {0}")]
    HasInterpreter(String),
    #[error("dynamically linked: it needs shared libraries")]
    NeedsLibraries,
}

impl ElfError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            ElfError::NotElf => "not_elf",
            ElfError::Unsupported => "elf_unsupported",
            ElfError::Malformed(_) => "elf_malformed",
            ElfError::NotX86Executable { .. } => "not_x86_64_executable",
            ElfError::HasInterpreter(_) | ElfError::NeedsLibraries => "not_static",
        }
    }
}

fn slice<'a>(data: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(off).map_err(|_| ElfError::Malformed(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::Malformed(what))?;
    let end = start.checked_add(len).ok_or(ElfError::Malformed(what))?;
    data.get(start..end).ok_or(ElfError::Malformed(what))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    // Callers index inside slices whose length they checked; a short slice reads as zero.
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// A parsed ELF64 little-endian header over borrowed bytes.
struct Elf<'a> {
    data: &'a [u8],
    e_type: u16,
    machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

struct Section {
    name: u32,
    offset: u64,
    size: u64,
    kind: u32,
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if data.len() < 4 || &data[..4] != ELF_MAGIC {
            return Err(ElfError::NotElf);
        }
        if data.len() < 64 {
            return Err(ElfError::Malformed("header"));
        }
        if data[4] != ELFCLASS64 || data[5] != ELFDATA2LSB {
            return Err(ElfError::Unsupported);
        }
        Ok(Elf {
            data,
            e_type: u16_at(data, 0x10),
            machine: u16_at(data, 0x12),
            phoff: u64_at(data, 0x20),
            shoff: u64_at(data, 0x28),
            phentsize: u16_at(data, 0x36),
            phnum: u16_at(data, 0x38),
            shentsize: u16_at(data, 0x3a),
            shnum: u16_at(data, 0x3c),
            shstrndx: u16_at(data, 0x3e),
        })
    }

    fn sections(&self) -> Result<Vec<Section>, ElfError> {
        if self.shnum == 0 {
            return Ok(Vec::new());
        }
        if self.shentsize < 64 {
            return Err(ElfError::Malformed("section header size"));
        }
        let table = slice(
            self.data,
            self.shoff,
            u64::from(self.shentsize) * u64::from(self.shnum),
            "section header table",
        )?;
        Ok(table
            .chunks_exact(usize::from(self.shentsize))
            .map(|s| Section {
                name: u32_at(s, 0),
                kind: u32_at(s, 4),
                offset: u64_at(s, 24),
                size: u64_at(s, 32),
            })
            .collect())
    }

    fn section_by_name(&self, wanted: &str) -> Result<Option<&'a [u8]>, ElfError> {
        let sections = self.sections()?;
        let Some(strtab) = sections.get(usize::from(self.shstrndx)) else {
            return Ok(None);
        };
        let names = slice(self.data, strtab.offset, strtab.size, "section name table")?;
        for s in &sections {
            let start = usize::try_from(s.name).map_err(|_| ElfError::Malformed("name"))?;
            let Some(rest) = names.get(start..) else {
                return Err(ElfError::Malformed("section name offset"));
            };
            let name = rest.split(|&b| b == 0).next().unwrap_or_default();
            if name == wanted.as_bytes() {
                // SHT_NOBITS (8) has no bytes in the file.
                if s.kind == 8 {
                    return Ok(Some(&[]));
                }
                return slice(self.data, s.offset, s.size, "section contents").map(Some);
            }
        }
        Ok(None)
    }
}

/// The raw contents of a relocatable object's `.modinfo` section (NUL-separated
/// `key=value` strings), or `None` when it has none.
pub fn modinfo_section(data: &[u8]) -> Result<Option<&[u8]>, ElfError> {
    Elf::parse(data)?.section_by_name(".modinfo")
}

/// Checks that `data` is an x86_64 executable the kernel can run as `/init` without a
/// dynamic loader: no `PT_INTERP` and no `DT_NEEDED` (a static-pie binary has a dynamic
/// section for its own relocations, which is fine).
pub fn check_static_executable(data: &[u8]) -> Result<(), ElfError> {
    let elf = Elf::parse(data)?;
    if elf.machine != EM_X86_64 || !(elf.e_type == ET_EXEC || elf.e_type == ET_DYN) {
        return Err(ElfError::NotX86Executable {
            machine: elf.machine,
            kind: elf.e_type,
        });
    }
    if elf.phnum == 0 {
        return Err(ElfError::Malformed("no program headers"));
    }
    if elf.phentsize < 56 {
        return Err(ElfError::Malformed("program header size"));
    }
    let table = slice(
        data,
        elf.phoff,
        u64::from(elf.phentsize) * u64::from(elf.phnum),
        "program header table",
    )?;
    for ph in table.chunks_exact(usize::from(elf.phentsize)) {
        let kind = u32_at(ph, 0);
        let offset = u64_at(ph, 8);
        let filesz = u64_at(ph, 32);
        match kind {
            PT_INTERP => {
                let raw = slice(data, offset, filesz, "interpreter path")?;
                let path = raw.split(|&b| b == 0).next().unwrap_or_default();
                return Err(ElfError::HasInterpreter(
                    String::from_utf8_lossy(path).into_owned(),
                ));
            }
            PT_DYNAMIC => {
                let dynamic = slice(data, offset, filesz, "dynamic section")?;
                for entry in dynamic.chunks_exact(16) {
                    match u64_at(entry, 0) {
                        DT_NULL => break,
                        DT_NEEDED => return Err(ElfError::NeedsLibraries),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Builders of tiny synthetic ELF files, shared by this crate's tests.
#[cfg(test)]
pub(crate) mod synth {
    /// A relocatable object (like a `.ko`) with one `.modinfo` section holding `modinfo`.
    pub fn module(modinfo: &[u8]) -> Vec<u8> {
        // Layout: header (64) | .modinfo | .shstrtab | section headers (3 x 64).
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let modinfo_off = 64u64;
        let shstr_off = modinfo_off + modinfo.len() as u64;
        let mut shoff = shstr_off + shstrtab.len() as u64;
        shoff = shoff.div_ceil(8) * 8;
        let mut out = header(1, shoff, 3, 2, 0, 0);
        out.extend_from_slice(modinfo);
        out.extend_from_slice(shstrtab);
        out.resize(shoff as usize, 0);
        out.extend_from_slice(&[0u8; 64]); // null section
        out.extend_from_slice(&section(1, 1, modinfo_off, modinfo.len() as u64));
        out.extend_from_slice(&section(10, 3, shstr_off, shstrtab.len() as u64));
        out
    }

    /// An executable with one `PT_LOAD`, plus `PT_INTERP` and a `DT_NEEDED` when `dynamic`.
    pub fn executable(dynamic: bool) -> Vec<u8> {
        let phnum: u16 = if dynamic { 3 } else { 1 };
        let phoff = 64u64;
        let data_off = phoff + 56 * u64::from(phnum);
        let mut out = header(2, 0, 0, 0, phoff, phnum);
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let interp_off = data_off;
        let dyn_off = interp_off + interp.len() as u64;
        let mut dynamic_bytes = Vec::new();
        for (tag, val) in [(1u64, 1u64), (0, 0)] {
            dynamic_bytes.extend_from_slice(&tag.to_le_bytes());
            dynamic_bytes.extend_from_slice(&val.to_le_bytes());
        }
        out.extend_from_slice(&program(1, 0, data_off + 64));
        if dynamic {
            out.extend_from_slice(&program(3, interp_off, interp.len() as u64));
            out.extend_from_slice(&program(2, dyn_off, dynamic_bytes.len() as u64));
            out.extend_from_slice(interp);
            out.extend_from_slice(&dynamic_bytes);
        }
        out
    }

    fn header(kind: u16, shoff: u64, shnum: u16, shstrndx: u16, phoff: u64, phnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[0x10..0x12].copy_from_slice(&kind.to_le_bytes());
        h[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        h[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        h[0x3e..0x40].copy_from_slice(&shstrndx.to_le_bytes());
        h
    }

    fn section(name: u32, kind: u32, offset: u64, size: u64) -> [u8; 64] {
        let mut s = [0u8; 64];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&kind.to_le_bytes());
        s[24..32].copy_from_slice(&offset.to_le_bytes());
        s[32..40].copy_from_slice(&size.to_le_bytes());
        s[48..56].copy_from_slice(&1u64.to_le_bytes());
        s
    }

    fn program(kind: u32, offset: u64, size: u64) -> [u8; 56] {
        let mut p = [0u8; 56];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_modinfo_of_a_synthetic_module() {
        let ko = synth::module(b"name=foo\0depends=bar\0");
        assert_eq!(
            modinfo_section(&ko).unwrap(),
            Some(&b"name=foo\0depends=bar\0"[..])
        );
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        assert_eq!(check_static_executable(&synth::executable(false)), Ok(()));
        assert_eq!(
            check_static_executable(&synth::executable(true)),
            Err(ElfError::HasInterpreter(
                "/lib64/ld-linux-x86-64.so.2".into()
            ))
        );
    }

    #[test]
    fn this_test_binary_is_dynamic() {
        // Tests run on the gnu target: the test binary itself is a real dynamic executable.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_static_executable(&exe).unwrap_err();
        assert_eq!(err.code(), "not_static", "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            check_static_executable(b"#!/bin/sh\n"),
            Err(ElfError::NotElf)
        );
        let mut truncated = synth::module(b"name=x\0");
        truncated.truncate(100);
        assert!(modinfo_section(&truncated).is_err());
        let mut short = synth::executable(false);
        short.truncate(70);
        assert!(check_static_executable(&short).is_err());
    }
}
