//! Loads every module of the initramfs, each after the modules it depends on, in the order
//! `modules.dep` gives (a module's dependency list read from its end loads bottom-up).
//! No soft dependencies: the guest carries NVMe and its dependencies only, and the CRC
//! helpers they pull in fall back to their generic code when no accelerated provider is
//! there.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// Loads everything; returns one line per problem (a missing module is not fatal: the
/// config drive search reports what it could not find).
pub fn load_all() -> Vec<String> {
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_owned(),
        Err(e) => return vec![format!("reading the kernel release: {e}")],
    };
    let dir = PathBuf::from("/lib/modules").join(release);
    let dep = dir.join("modules.dep");
    let text = match std::fs::read_to_string(&dep) {
        Ok(t) => t,
        Err(e) => return vec![format!("reading {}: {e}", dep.display())],
    };
    let mut loaded = BTreeSet::new();
    let mut problems = Vec::new();
    for path in load_order(&text) {
        if loaded.insert(path.clone())
            && let Err(e) = load(&dir.join(&path))
        {
            problems.push(e);
        }
    }
    problems
}

/// Module paths (relative to the modules directory) in an order that loads each one after
/// its dependencies; a path may repeat.
pub fn load_order(modules_dep: &str) -> Vec<String> {
    let mut order = Vec::new();
    for line in modules_dep.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim();
        if module.is_empty() || module.starts_with('#') {
            continue;
        }
        order.extend(deps.split_whitespace().rev().map(str::to_owned));
        order.push(module.to_owned());
    }
    order
}

fn load(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let no_params = CString::default();
    match finit_module(&file, &no_params, ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("loading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first() {
        let dep = "# comment\n\
                   kernel/nvme.ko: kernel/nvme-core.ko kernel/t10-pi.ko kernel/crc64-rocksoft.ko\n\
                   kernel/t10-pi.ko: kernel/crc64-rocksoft.ko\n\
                   kernel/crc64-rocksoft.ko:\n";
        assert_eq!(
            load_order(dep),
            [
                "kernel/crc64-rocksoft.ko",
                "kernel/t10-pi.ko",
                "kernel/nvme-core.ko",
                "kernel/nvme.ko",
                "kernel/crc64-rocksoft.ko",
                "kernel/t10-pi.ko",
                "kernel/crc64-rocksoft.ko",
            ]
        );
    }
}
