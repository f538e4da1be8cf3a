//! The kernel module tree: reads every module's own `.modinfo` (name, `depends=`,
//! `softdep=`, `alias=`), resolves a profile's module names to the closure the ramdisk needs,
//! and writes `modules.dep`, `modules.alias` and `modules.softdep` for exactly those modules
//! in depmod's formats, so neither depmod nor the host's kmod is needed.
//!
//! Names are compared in their canonical form (`-` → `_`), as the kernel and kmod do.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::elf::{self, ElfError};

/// What failed while reading a module tree or resolving module names.
#[derive(Debug, Error)]
pub enum ModulesError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("reading module {path}: {source}")]
    Elf { path: PathBuf, source: ElfError },
    #[error("decompressing module {path}: {source}")]
    Decompress { path: PathBuf, source: io::Error },
    #[error("module {name} is neither in {tree} nor built into the kernel")]
    NoSuchModule { name: String, tree: PathBuf },
    #[error("module {module} depends on {dependency}, which is not in the module tree")]
    MissingDependency { module: String, dependency: String },
}

impl ModulesError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            ModulesError::Read { .. } => "modules_read_failed",
            ModulesError::Elf { .. } => "module_malformed",
            ModulesError::Decompress { .. } => "module_decompress_failed",
            ModulesError::NoSuchModule { .. } => "no_such_module",
            ModulesError::MissingDependency { .. } => "module_dependency_missing",
        }
    }
}

/// The canonical spelling of a module name (`crc-t10dif` → `crc_t10dif`).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// How a module file is stored in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
}

/// A module as the tree describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name.
    pub name: String,
    /// Path of the file in the tree, relative to `lib/modules/VERSION`.
    pub source: PathBuf,
    pub compression: Compression,
    /// Canonical names of hard dependencies.
    pub depends: Vec<String>,
    /// Soft dependencies as written (module names or aliases).
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
    pub aliases: Vec<String>,
}

impl Module {
    /// Where the module lives in the ramdisk, relative to `lib/modules/VERSION`: compressed
    /// modules are stored decompressed (the initramfs is compressed as a whole and
    /// `finit_module` then needs no in-kernel decompressor).
    pub fn dest(&self) -> PathBuf {
        match self.compression {
            Compression::None => self.source.clone(),
            Compression::Xz | Compression::Zstd => self.source.with_extension(""),
        }
    }

    /// The uncompressed module bytes from the tree rooted at `root`.
    pub fn read(&self, root: &Path) -> Result<Vec<u8>, ModulesError> {
        read_module(&root.join(&self.source), self.compression)
    }
}

fn read_module(path: &Path, compression: Compression) -> Result<Vec<u8>, ModulesError> {
    let raw = fs::read(path).map_err(|source| ModulesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let decompress_err = |source| ModulesError::Decompress {
        path: path.to_path_buf(),
        source,
    };
    match compression {
        Compression::None => Ok(raw),
        Compression::Xz => {
            let mut out = Vec::new();
            xz2::read::XzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(decompress_err)?;
            Ok(out)
        }
        Compression::Zstd => zstd::stream::decode_all(&raw[..]).map_err(decompress_err),
    }
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section into a module.
pub fn parse_modinfo(modinfo: &[u8], source: PathBuf, compression: Compression) -> Module {
    let file_stem = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file_stem = file_stem.split('.').next().unwrap_or_default().to_string();
    let mut m = Module {
        name: canonical(&file_stem),
        source,
        compression,
        depends: Vec::new(),
        softdep_pre: Vec::new(),
        softdep_post: Vec::new(),
        aliases: Vec::new(),
    };
    for entry in modinfo.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" if !value.is_empty() => m.name = canonical(value),
            "depends" => m.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(canonical),
            ),
            "alias" => m.aliases.push(value.to_string()),
            "softdep" => {
                // "pre: a b post: c"
                let mut post = false;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => post = false,
                        "post:" => post = true,
                        w if post => m.softdep_post.push(w.to_string()),
                        w => m.softdep_pre.push(w.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    m
}

/// All modules of one kernel, by canonical name.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    /// `lib/modules/VERSION`.
    pub root: PathBuf,
    pub modules: BTreeMap<String, Module>,
    /// Canonical names of modules built into the kernel (`modules.builtin`).
    pub builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Reads every `*.ko`, `*.ko.xz` and `*.ko.zst` under `root` (a `lib/modules/VERSION`
    /// directory) and `root/modules.builtin` when present.
    pub fn scan(root: &Path) -> Result<Self, ModulesError> {
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        files.sort();
        let mut modules = BTreeMap::new();
        for rel in files {
            let name = rel.to_string_lossy();
            let compression = if name.ends_with(".ko") {
                Compression::None
            } else if name.ends_with(".ko.xz") {
                Compression::Xz
            } else if name.ends_with(".ko.zst") {
                Compression::Zstd
            } else {
                continue;
            };
            let path = root.join(&rel);
            let bytes = read_module(&path, compression)?;
            let info = elf::modinfo_section(&bytes)
                .map_err(|source| ModulesError::Elf {
                    path: path.clone(),
                    source,
                })?
                .unwrap_or_default();
            let module = parse_modinfo(info, rel, compression);
            // The first file wins for a duplicated name, like depmod's search order would
            // pick one; the sort above makes that deterministic.
            modules.entry(module.name.clone()).or_insert(module);
        }
        let builtin = match fs::read_to_string(root.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .map(|f| canonical(f.trim_end_matches(".ko")))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(ModulesError::Read {
                    path: root.join("modules.builtin"),
                    source,
                });
            }
        };
        Ok(ModuleTree {
            root: root.to_path_buf(),
            modules,
            builtin,
        })
    }

    /// The modules whose aliases match `name` (a softdep may name an alias such as
    /// `crypto-crc32c`), in name order.
    fn by_alias(&self, name: &str) -> Vec<&Module> {
        self.modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| glob_match(a, name)))
            .collect()
    }

    /// Resolves `wanted` names to the modules to ship: each one with its hard dependencies
    /// and, where the tree has them, its soft dependencies (and theirs).
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Selection, ModulesError> {
        let mut selected: BTreeSet<String> = BTreeSet::new();
        let mut builtin = BTreeSet::new();
        let mut unresolved_softdeps = BTreeSet::new();
        let mut queue: Vec<String> = Vec::new();
        for w in wanted {
            let name = canonical(w.as_ref());
            if self.modules.contains_key(&name) {
                queue.push(name);
            } else if self.builtin.contains(&name) {
                builtin.insert(name);
            } else {
                return Err(ModulesError::NoSuchModule {
                    name: w.as_ref().to_string(),
                    tree: self.root.clone(),
                });
            }
        }
        while let Some(name) = queue.pop() {
            if !selected.insert(name.clone()) {
                continue;
            }
            let Some(m) = self.modules.get(&name) else {
                continue;
            };
            for dep in &m.depends {
                if self.modules.contains_key(dep) {
                    queue.push(dep.clone());
                } else if !self.builtin.contains(dep) {
                    return Err(ModulesError::MissingDependency {
                        module: name.clone(),
                        dependency: dep.clone(),
                    });
                }
            }
            for soft in m.softdep_pre.iter().chain(&m.softdep_post) {
                let c = canonical(soft);
                if self.modules.contains_key(&c) {
                    queue.push(c);
                    continue;
                }
                let providers = self.by_alias(soft);
                if providers.is_empty() && !self.builtin.contains(&c) {
                    unresolved_softdeps.insert(format!("{name}: {soft}"));
                }
                queue.extend(providers.into_iter().map(|p| p.name.clone()));
            }
        }
        Ok(Selection {
            modules: selected
                .iter()
                .filter_map(|n| self.modules.get(n).cloned())
                .collect(),
            builtin: builtin.into_iter().collect(),
            unresolved_softdeps: unresolved_softdeps.into_iter().collect(),
        })
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModulesError> {
    let read_err = |source| ModulesError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let kind = entry.file_type().map_err(read_err)?;
        let path = entry.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// The modules chosen for an image, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub modules: Vec<Module>,
    /// Names the profile asked for that are built into this kernel.
    pub builtin: Vec<String>,
    /// `module: softdep` pairs that no module in the tree provides (they are optional).
    pub unresolved_softdeps: Vec<String>,
}

impl Selection {
    fn get(&self, name: &str) -> Option<&Module> {
        self.modules
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.modules.get(i))
    }

    /// The transitive hard dependencies of `m`, in depmod's order: a module appears before
    /// the modules it depends on, so loading the list from its end to its start works.
    fn dependency_order<'a>(&'a self, m: &'a Module) -> Vec<&'a Module> {
        fn visit<'a>(
            sel: &'a Selection,
            m: &'a Module,
            seen: &mut BTreeSet<&'a str>,
            post: &mut Vec<&'a Module>,
        ) {
            let mut deps: Vec<&String> = m.depends.iter().collect();
            deps.sort();
            for d in deps {
                if let Some(dm) = sel.get(d)
                    && seen.insert(dm.name.as_str())
                {
                    visit(sel, dm, seen, post);
                    post.push(dm);
                }
            }
        }
        let mut seen = BTreeSet::new();
        seen.insert(m.name.as_str());
        let mut post = Vec::new();
        visit(self, m, &mut seen, &mut post);
        post.reverse();
        post
    }

    /// `modules.dep`: `kernel/x.ko: kernel/dep1.ko kernel/dep2.ko` per module.
    pub fn modules_dep(&self) -> String {
        let mut out = String::new();
        for m in &self.modules {
            out.push_str(&m.dest().to_string_lossy());
            out.push(':');
            for d in self.dependency_order(m) {
                out.push(' ');
                out.push_str(&d.dest().to_string_lossy());
            }
            out.push('\n');
        }
        out
    }

    /// `modules.alias`: `alias PATTERN MODULE` for every alias of the included modules.
    pub fn modules_alias(&self) -> String {
        let mut lines: Vec<String> = self
            .modules
            .iter()
            .flat_map(|m| {
                m.aliases
                    .iter()
                    .map(move |a| format!("alias {a} {}", m.name))
            })
            .collect();
        lines.sort();
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// `modules.softdep`: `softdep MODULE pre: a b post: c`.
    pub fn modules_softdep(&self) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in &self.modules {
            if m.softdep_pre.is_empty() && m.softdep_post.is_empty() {
                continue;
            }
            out.push_str("softdep ");
            out.push_str(&m.name);
            if !m.softdep_pre.is_empty() {
                out.push_str(" pre: ");
                out.push_str(&m.softdep_pre.join(" "));
            }
            if !m.softdep_post.is_empty() {
                out.push_str(" post: ");
                out.push_str(&m.softdep_post.join(" "));
            }
            out.push('\n');
        }
        out
    }
}

/// fnmatch-style matching of a module alias pattern (`*`, `?`, `[...]`) against a name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((b'?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((b'[', rest)) => {
                let Some(close) = rest.iter().skip(1).position(|&c| c == b']') else {
                    return n.first() == Some(&b'[') && go(rest, &n[1..]);
                };
                let class = &rest[..close + 1];
                let Some((&c, n_rest)) = n.split_first() else {
                    return false;
                };
                let (negate, class) = match class.split_first() {
                    Some((b'!' | b'^', tail)) => (true, tail),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&rest[close + 2..], n_rest)
            }
            Some((&c, rest)) => n.first() == Some(&c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::synth;

    /// Writes a module file with the given modinfo strings into `root/rel`.
    pub fn write_module(root: &Path, rel: &str, info: &[&str]) {
        let mut modinfo = Vec::new();
        for i in info {
            modinfo.extend_from_slice(i.as_bytes());
            modinfo.push(0);
        }
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let ko = synth::module(&modinfo);
        let bytes = if rel.ends_with(".zst") {
            zstd::stream::encode_all(&ko[..], 3).unwrap()
        } else {
            ko
        };
        fs::write(path, bytes).unwrap();
    }

    /// The nvme and ext4 corner of Debian 6.1's tree, in miniature.
    pub fn fixture_tree(root: &Path) {
        write_module(
            root,
            "kernel/drivers/nvme/host/nvme.ko",
            &[
                "alias=pci:v*d*sv*sd*bc01sc08i02*",
                "depends=nvme-core",
                "name=nvme",
            ],
        );
        write_module(
            root,
            "kernel/drivers/nvme/host/nvme-core.ko",
            &["depends=t10-pi", "name=nvme_core"],
        );
        write_module(
            root,
            "kernel/block/t10-pi.ko",
            &["depends=crc-t10dif,crc64-rocksoft", "name=t10_pi"],
        );
        write_module(
            root,
            "kernel/lib/crc-t10dif.ko",
            &[
                "softdep=pre: crct10dif",
                "depends=crct10dif_common",
                "name=crc_t10dif",
            ],
        );
        write_module(
            root,
            "kernel/crypto/crct10dif_common.ko",
            &["depends=", "name=crct10dif_common"],
        );
        write_module(
            root,
            "kernel/crypto/crct10dif_generic.ko",
            &[
                "alias=crct10dif",
                "alias=crypto-crct10dif",
                "depends=crct10dif_common",
                "name=crct10dif_generic",
            ],
        );
        write_module(
            root,
            "kernel/lib/crc64-rocksoft.ko.zst",
            &["softdep=pre: crc64", "depends=crc64", "name=crc64_rocksoft"],
        );
        write_module(root, "kernel/lib/crc64.ko", &["depends=", "name=crc64"]);
        write_module(
            root,
            "kernel/fs/ext4/ext4.ko",
            &[
                "softdep=pre: crypto-crc32c",
                "alias=fs-ext4",
                "depends=jbd2,crc16",
                "name=ext4",
            ],
        );
        write_module(root, "kernel/fs/jbd2/jbd2.ko", &["depends=", "name=jbd2"]);
        write_module(
            root,
            "kernel/drivers/char/ipmi/ipmi_msghandler.ko",
            &[
                "softdep=post: ipmi_devintf",
                "depends=",
                "name=ipmi_msghandler",
            ],
        );
        write_module(
            root,
            "kernel/drivers/char/ipmi/ipmi_devintf.ko",
            &["depends=ipmi_msghandler", "name=ipmi_devintf"],
        );
        write_module(
            root,
            "kernel/drivers/char/ipmi/ipmi_si.ko",
            &[
                "alias=acpi*:IPI0001:*",
                "depends=ipmi_msghandler",
                "name=ipmi_si",
            ],
        );
        fs::write(
            root.join("modules.builtin"),
            "kernel/lib/crc16.ko\nkernel/drivers/block/loop.ko\n",
        )
        .unwrap();
    }

    fn names(sel: &Selection) -> Vec<&str> {
        sel.modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn resolves_hard_and_soft_dependencies_from_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        fixture_tree(dir.path());
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let sel = tree.resolve(&["nvme", "ext4", "ipmi_si", "loop"]).unwrap();
        assert_eq!(
            names(&sel),
            [
                "crc64",
                "crc64_rocksoft",
                "crc_t10dif",
                "crct10dif_common",
                "crct10dif_generic",
                "ext4",
                "ipmi_devintf",
                "ipmi_msghandler",
                "ipmi_si",
                "jbd2",
                "nvme",
                "nvme_core",
                "t10_pi",
            ]
        );
        assert_eq!(sel.builtin, ["loop"]);
        assert_eq!(sel.unresolved_softdeps, ["ext4: crypto-crc32c"]);

        let dep = sel.modules_dep();
        assert!(
            dep.contains(
                "kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko \
                 kernel/block/t10-pi.ko kernel/lib/crc-t10dif.ko \
                 kernel/crypto/crct10dif_common.ko kernel/lib/crc64-rocksoft.ko \
                 kernel/lib/crc64.ko\n"
            ),
            "{dep}"
        );
        assert!(dep.contains("kernel/lib/crc64.ko:\n"), "{dep}");
        assert!(dep.contains("kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n"));

        let alias = sel.modules_alias();
        assert!(alias.starts_with("# Aliases extracted from modules themselves.\n"));
        assert!(alias.contains("alias pci:v*d*sv*sd*bc01sc08i02* nvme\n"));
        assert!(alias.contains("alias acpi*:IPI0001:* ipmi_si\n"));

        let soft = sel.modules_softdep();
        assert!(soft.contains("softdep ipmi_msghandler post: ipmi_devintf\n"));
        assert!(soft.contains("softdep crc_t10dif pre: crct10dif\n"));
    }

    #[test]
    fn dependency_order_loads_from_the_end() {
        // Every module appears before all of its own dependencies in each line.
        let dir = tempfile::tempdir().unwrap();
        fixture_tree(dir.path());
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let sel = tree.resolve(&["nvme"]).unwrap();
        for m in &sel.modules {
            let order: Vec<&str> = sel
                .dependency_order(m)
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            for (i, name) in order.iter().enumerate() {
                for dep in &sel.get(name).unwrap().depends {
                    let j = order.iter().position(|o| o == dep).unwrap();
                    assert!(j > i, "{name} before its dependency {dep} in {order:?}");
                }
            }
        }
    }

    #[test]
    fn compressed_modules_are_read_and_shipped_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        fixture_tree(dir.path());
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let m = &tree.modules["crc64_rocksoft"];
        assert_eq!(m.compression, Compression::Zstd);
        assert_eq!(m.dest(), Path::new("kernel/lib/crc64-rocksoft.ko"));
        assert!(elf::modinfo_section(&m.read(dir.path()).unwrap()).is_ok());
    }

    #[test]
    fn a_missing_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fixture_tree(dir.path());
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let e = tree.resolve(&["nvme", "no_such_driver"]).unwrap_err();
        assert_eq!(e.code(), "no_such_module");
        assert!(e.to_string().contains("no_such_driver"), "{e}");

        write_module(dir.path(), "kernel/x.ko", &["depends=gone", "name=x"]);
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let e = tree.resolve(&["x"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "module x depends on gone, which is not in the module tree"
        );
    }

    #[test]
    fn a_module_that_is_not_elf_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kernel")).unwrap();
        fs::write(dir.path().join("kernel/bad.ko"), b"garbage").unwrap();
        let e = ModuleTree::scan(dir.path()).unwrap_err();
        assert_eq!(e.code(), "module_malformed");
        assert!(e.to_string().contains("bad.ko"));
    }

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob_match(
            "pci:v*d*sv*sd*bc01sc08i02*",
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"
        ));
        assert!(glob_match("crc32c", "crc32c"));
        assert!(!glob_match("crc32c", "crc32c_intel"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("dmi*:rvn[Aa]cme*", "dmi:bvn:rvnacme:"));
    }
}
