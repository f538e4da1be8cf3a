//! Memory totals: what the kernel can use (`/proc/meminfo`) and what is installed (the
//! populated SMBIOS type 17 devices).

use molar_protocol::inventory::{Dimm, Memory};

use super::Ctx;
use super::cpu::parse_kib;

const MEMINFO: &str = "/proc/meminfo";

pub(crate) fn collect(ctx: &mut Ctx, dimms: &[Dimm]) -> Memory {
    let total_bytes = ctx.read_required(MEMINFO).and_then(|text| {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").map(str::to_string));
        match value.as_deref().and_then(parse_kib) {
            Some(bytes) => Some(bytes),
            None => {
                ctx.note(MEMINFO, "no parsable MemTotal line");
                None
            }
        }
    });
    let sizes: Vec<u64> = dimms.iter().filter_map(|d| d.size_bytes).collect();
    let installed_bytes = (!sizes.is_empty()).then(|| sizes.iter().sum());
    Memory {
        total_bytes,
        installed_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
        std::fs::write(
            dir.path().join("proc/meminfo"),
            "MemTotal:        8218836 kB\nMemFree:         3494612 kB\n",
        )
        .expect("write");
        let dimm = |size: Option<u64>| Dimm {
            populated: size.is_some(),
            size_bytes: size,
            ..Dimm::default()
        };
        let mut ctx = Ctx::new(dir.path());
        let m = collect(
            &mut ctx,
            &[dimm(Some(8 << 30)), dimm(None), dimm(Some(8 << 30))],
        );
        assert_eq!(m.total_bytes, Some(8_218_836 * 1024));
        assert_eq!(m.installed_bytes, Some(16 << 30));
        assert!(ctx.notes.is_empty());
    }

    #[test]
    fn garbage_meminfo_is_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
        std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: lots\n").expect("write");
        let mut ctx = Ctx::new(dir.path());
        let m = collect(&mut ctx, &[]);
        assert_eq!(m, Memory::default());
        assert_eq!(ctx.notes.len(), 1);
        assert_eq!(ctx.notes[0].path, MEMINFO);
    }
}
