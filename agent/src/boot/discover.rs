//! Which kernel, initrd and command line the written image boots, found on its mounted
//! filesystems: a pure function of directory trees, so it is tested on fixtures.
//!
//! In order, the first that yields a kernel file wins:
//! 1. Boot Loader Specification entries (`loader/entries/*.conf` at the top of a filesystem,
//!    the ESP or XBOOTLDR, or `boot/loader/entries` on the root), in the specification's order;
//! 2. the default entry of a GRUB configuration (`boot/grub/grub.cfg`, `grub/grub.cfg` on a
//!    separate `/boot`, the `grub2` spellings, `EFI/*/grub.cfg` on the ESP);
//! 3. Debian's symlinks, `boot/vmlinuz` + `boot/initrd.img` (or at `/`), with
//!    `root=PARTUUID=` of the filesystem that holds `/etc`;
//! 4. the newest `boot/vmlinuz-VERSION` with its `initrd.img-VERSION`/`initramfs-VERSION.img`.
//!
//! Paths are resolved inside the filesystem that holds them: an absolute symlink
//! (`/boot/vmlinuz-6.1.0`) means that filesystem's root, never the agent's.

use super::bls::{self, BlsEntry};
use super::grub;
use super::table::{Partition, Role};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A filesystem of the image, mounted (read only) at `dir`.
#[derive(Debug, Clone)]
pub struct MountedFs {
    pub partition: Partition,
    pub fstype: String,
    pub dir: PathBuf,
}

/// A file on one of the image's filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Partition number of the filesystem.
    pub partition: u32,
    /// The path on that filesystem, symlinks resolved (`/boot/vmlinuz-6.1.0-13-amd64`).
    pub path: String,
    /// Where the agent reads it now.
    pub host: PathBuf,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on partition {}", self.path, self.partition)
    }
}

/// Which configuration named the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    Bls,
    Grub,
    Symlinks,
    Versioned,
}

impl EntrySource {
    pub fn as_str(self) -> &'static str {
        match self {
            EntrySource::Bls => "bls",
            EntrySource::Grub => "grub",
            EntrySource::Symlinks => "symlinks",
            EntrySource::Versioned => "versioned",
        }
    }
}

/// The kernel to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEntry {
    pub source: EntrySource,
    pub title: String,
    pub kernel: Located,
    pub initrds: Vec<Located>,
    /// The image's command line with `kernel_args` appended.
    pub cmdline: String,
}

/// No kernel: what was looked at, for the reboot reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no kernel found in the image ({})", .tried.join("; "))]
pub struct NotFound {
    pub tried: Vec<String>,
}

const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside `root` as if `root` were `/`: `..` stops at it, absolute symlink
/// targets restart from it. `Some((host path, path on the filesystem))` of whatever is there
/// (file, directory, device node); the host path holds no symlink.
fn resolve_any_in(root: &Path, path: &str) -> Option<(PathBuf, String, std::fs::Metadata)> {
    let mut queue: VecDeque<OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&cur);
        candidate.push(&c);
        let meta = std::fs::symlink_metadata(&candidate).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return None;
            }
            let target = std::fs::read_link(&candidate).ok()?;
            if target.is_absolute() {
                cur.clear();
            }
            for part in target.components().rev() {
                match part {
                    std::path::Component::Normal(n) => queue.push_front(n.to_owned()),
                    std::path::Component::ParentDir => queue.push_front("..".into()),
                    _ => {}
                }
            }
        } else {
            cur.push(c);
        }
    }
    let mut host = root.to_path_buf();
    host.extend(&cur);
    let meta = std::fs::symlink_metadata(&host).ok()?;
    let on_fs = format!(
        "/{}",
        cur.iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    );
    Some((host, on_fs, meta))
}

/// [`resolve_any_in`] for a regular file: `Some((host path, path on the filesystem))`.
pub fn resolve_in(root: &Path, path: &str) -> Option<(PathBuf, String)> {
    let (host, on_fs, meta) = resolve_any_in(root, path)?;
    meta.is_file().then_some((host, on_fs))
}

/// The most of a configuration file (BLS entry, grub.cfg, grubenv) that is read: real ones
/// are a few KiB, and a hostile image must not fill the agent's memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of the regular file at `path` inside `root` ([`resolve_in`]), opened without
/// following a last symlink and read up to [`MAX_CONFIG_BYTES`]; `None` for anything else
/// (missing, a device, a directory, too large, not UTF-8).
pub fn read_config_in(root: &Path, path: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let (host, _) = resolve_in(root, path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&host)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The directory at `path` inside `root`, resolved there ([`resolve_any_in`]).
fn dir_in(root: &Path, path: &str) -> Option<PathBuf> {
    let (host, _, meta) = resolve_any_in(root, path)?;
    meta.is_dir().then_some(host)
}

fn locate_on(fs: &MountedFs, bases: &[&str], path: &str) -> Option<Located> {
    bases.iter().find_map(|base| {
        let joined = format!("{base}/{}", path.trim_start_matches('/'));
        resolve_in(&fs.dir, &joined).map(|(host, path)| Located {
            partition: fs.partition.number,
            path,
            host,
        })
    })
}

/// `path` on `first` (relative to one of `bases`), else on any other filesystem that can hold
/// kernels (a separate `/boot`, the root).
fn locate(all: &[MountedFs], first: usize, bases: &[&str], path: &str) -> Option<Located> {
    locate_on(&all[first], bases, path).or_else(|| {
        all.iter()
            .enumerate()
            .filter(|(i, fs)| *i != first && fs.partition.role != Role::Skip)
            .find_map(|(_, fs)| locate_on(fs, &["", "/boot"], path))
    })
}

fn with_args(cmdline: &str, kernel_args: Option<&str>) -> String {
    let mut out: Vec<&str> = cmdline.split_whitespace().collect();
    if let Some(extra) = kernel_args {
        out.extend(extra.split_whitespace());
    }
    out.join(" ")
}

/// The names in directory `dir` of the filesystem at `root`, sorted; the directory is
/// resolved inside it ([`dir_in`]).
fn read_dir_sorted(root: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = dir_in(root, dir)
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The filesystem holding `/etc`: the root the kernel should mount.
fn root_fs(all: &[MountedFs], prefer: usize) -> &MountedFs {
    let has_etc = |fs: &MountedFs| dir_in(&fs.dir, "etc").is_some();
    if has_etc(&all[prefer]) {
        return &all[prefer];
    }
    all.iter()
        .find(|fs| fs.partition.role == Role::Data && has_etc(fs))
        .unwrap_or(&all[prefer])
}

/// BLS options as GRUB's `blscfg` passes them: `$kernelopts` and the like (RHEL 8, Fedora
/// before 33) come from the `grubenv` beside the configuration; a variable nobody set is
/// left out rather than handed to the kernel as text.
fn expand_options(options: &str, fs: &MountedFs) -> String {
    if !options.contains('$') {
        return options.to_owned();
    }
    let env = [
        "grub2/grubenv",
        "boot/grub2/grubenv",
        "grub/grubenv",
        "boot/grub/grubenv",
    ]
    .iter()
    .find_map(|p| read_config_in(&fs.dir, p))
    .map(|t| grub::parse_env(&t))
    .unwrap_or_default();
    options
        .split_whitespace()
        .flat_map(|word| {
            match word.strip_prefix('$') {
                Some(name) => {
                    let name = name.trim_start_matches('{').trim_end_matches('}');
                    env.get(name).cloned().unwrap_or_default()
                }
                None => word.to_owned(),
            }
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn from_bls(
    all: &[MountedFs],
    kernel_args: Option<&str>,
    tried: &mut Vec<String>,
) -> Option<KernelEntry> {
    // (entry, filesystem index, base of its paths)
    let mut entries: Vec<(BlsEntry, usize, &'static str)> = Vec::new();
    for (i, fs) in all.iter().enumerate() {
        for (dir, base) in [("loader/entries", ""), ("boot/loader/entries", "/boot")] {
            for name in read_dir_sorted(&fs.dir, dir) {
                if !name.ends_with(".conf") {
                    continue;
                }
                if let Some(text) = read_config_in(&fs.dir, &format!("{dir}/{name}")) {
                    entries.push((bls::parse(&name, &text), i, base));
                }
            }
        }
    }
    if entries.is_empty() {
        tried.push("no boot loader specification entries".into());
        return None;
    }
    entries.sort_by(|a, b| bls::order(&a.0, &b.0));
    for (e, i, base) in &entries {
        let Some(linux) = &e.linux else {
            tried.push(format!(
                "entry {} has no linux line{}",
                e.id,
                if e.efi.is_some() {
                    " (a unified kernel image)"
                } else {
                    ""
                }
            ));
            continue;
        };
        let bases: &[&str] = if base.is_empty() { &[""] } else { &[base, ""] };
        let Some(kernel) = locate(all, *i, bases, linux) else {
            tried.push(format!("entry {}: kernel {linux} not found", e.id));
            continue;
        };
        let mut initrds = Vec::new();
        let mut missing = None;
        for initrd in &e.initrd {
            match locate(all, *i, bases, initrd) {
                Some(l) => initrds.push(l),
                None => missing = Some(initrd.clone()),
            }
        }
        if let Some(m) = missing {
            tried.push(format!("entry {}: initrd {m} not found", e.id));
            continue;
        }
        return Some(KernelEntry {
            source: EntrySource::Bls,
            title: e.title.clone().unwrap_or_else(|| e.id.clone()),
            kernel,
            initrds,
            cmdline: with_args(&expand_options(&e.options, &all[*i]), kernel_args),
        });
    }
    None
}

/// Where GRUB configurations live: (path on the filesystem, base of the paths in it).
const GRUB_CONFIGS: &[(&str, &str)] = &[
    ("boot/grub/grub.cfg", ""),
    ("boot/grub2/grub.cfg", ""),
    ("grub/grub.cfg", ""),
    ("grub2/grub.cfg", ""),
];

fn from_grub(
    all: &[MountedFs],
    kernel_args: Option<&str>,
    tried: &mut Vec<String>,
) -> Option<KernelEntry> {
    // (filesystem index, path of grub.cfg on it)
    let mut configs: Vec<(usize, String)> = Vec::new();
    for (i, fs) in all.iter().enumerate() {
        for (rel, _) in GRUB_CONFIGS {
            if resolve_in(&fs.dir, rel).is_some() {
                configs.push((i, (*rel).to_owned()));
            }
        }
        if fs.partition.role == Role::Esp {
            for vendor in read_dir_sorted(&fs.dir, "EFI") {
                let rel = format!("EFI/{vendor}/grub.cfg");
                if resolve_in(&fs.dir, &rel).is_some() {
                    configs.push((i, rel));
                }
            }
        }
    }
    if configs.is_empty() {
        tried.push("no grub.cfg".into());
        return None;
    }
    for (i, rel) in configs {
        let Some(text) = read_config_in(&all[i].dir, &rel) else {
            tried.push(format!(
                "{rel} unreadable (or larger than {MAX_CONFIG_BYTES} bytes)"
            ));
            continue;
        };
        let env_path = match rel.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/grubenv"),
            None => "grubenv".to_owned(),
        };
        let env = read_config_in(&all[i].dir, &env_path)
            .map(|t| grub::parse_env(&t))
            .unwrap_or_default();
        let menu = grub::parse(&text, &env);
        let Some(entry) = menu.default_entry() else {
            tried.push(format!(
                "{rel} on partition {} has no menu entry",
                all[i].partition.number
            ));
            continue;
        };
        let Some(linux) = &entry.linux else {
            tried.push(format!("{rel}: entry '{}' has no linux line", entry.title));
            continue;
        };
        let Some(kernel) = locate(all, i, &["", "/boot"], linux) else {
            tried.push(format!(
                "{rel}: entry '{}': kernel {linux} not found",
                entry.title
            ));
            continue;
        };
        let mut initrds = Vec::new();
        for initrd in &entry.initrd {
            match locate(all, i, &["", "/boot"], initrd) {
                Some(l) => initrds.push(l),
                None => tried.push(format!("{rel}: initrd {initrd} not found, left out")),
            }
        }
        return Some(KernelEntry {
            source: EntrySource::Grub,
            title: entry.title.clone(),
            kernel,
            initrds,
            cmdline: with_args(&entry.args, kernel_args),
        });
    }
    None
}

fn root_cmdline(all: &[MountedFs], on: usize, kernel_args: Option<&str>) -> String {
    let root = root_fs(all, on);
    with_args(
        &format!("root=PARTUUID={} ro", root.partition.partuuid),
        kernel_args,
    )
}

fn from_symlinks(
    all: &[MountedFs],
    kernel_args: Option<&str>,
    tried: &mut Vec<String>,
) -> Option<KernelEntry> {
    for (i, fs) in all.iter().enumerate() {
        if fs.partition.role != Role::Data {
            continue;
        }
        for (kernel, initrd) in [
            ("boot/vmlinuz", "boot/initrd.img"),
            ("vmlinuz", "initrd.img"),
        ] {
            let Some(kernel) = locate_on(fs, &[""], kernel) else {
                continue;
            };
            let initrds = locate_on(fs, &[""], initrd).into_iter().collect();
            return Some(KernelEntry {
                source: EntrySource::Symlinks,
                title: "vmlinuz".into(),
                kernel,
                initrds,
                cmdline: root_cmdline(all, i, kernel_args),
            });
        }
    }
    tried.push("no /boot/vmlinuz or /vmlinuz".into());
    None
}

fn from_versioned(
    all: &[MountedFs],
    kernel_args: Option<&str>,
    tried: &mut Vec<String>,
) -> Option<KernelEntry> {
    let mut best: Option<(String, usize, &str)> = None;
    for (i, fs) in all.iter().enumerate() {
        if fs.partition.role == Role::Skip || fs.partition.role == Role::Esp {
            continue;
        }
        for base in ["boot", ""] {
            for name in read_dir_sorted(&fs.dir, base) {
                let Some(version) = name.strip_prefix("vmlinuz-") else {
                    continue;
                };
                if best
                    .as_ref()
                    .is_none_or(|(v, _, _)| bls::version_cmp(version, v).is_gt())
                {
                    best = Some((version.to_owned(), i, base));
                }
            }
        }
    }
    let Some((version, i, base)) = best else {
        tried.push("no vmlinuz-VERSION".into());
        return None;
    };
    let fs = &all[i];
    let kernel = locate_on(fs, &[base], &format!("vmlinuz-{version}"))?;
    let initrds = [
        format!("initrd.img-{version}"),
        format!("initramfs-{version}.img"),
        format!("initrd-{version}"),
    ]
    .iter()
    .find_map(|n| locate_on(fs, &[base], n))
    .into_iter()
    .collect();
    Some(KernelEntry {
        source: EntrySource::Versioned,
        title: format!("vmlinuz-{version}"),
        kernel,
        initrds,
        cmdline: root_cmdline(all, i, kernel_args),
    })
}

/// The kernel the image boots, from its mounted filesystems.
pub fn discover(all: &[MountedFs], kernel_args: Option<&str>) -> Result<KernelEntry, NotFound> {
    let mut tried = Vec::new();
    if all.is_empty() {
        return Err(NotFound {
            tried: vec!["no filesystem the agent can mount".into()],
        });
    }
    from_bls(all, kernel_args, &mut tried)
        .or_else(|| from_grub(all, kernel_args, &mut tried))
        .or_else(|| from_symlinks(all, kernel_args, &mut tried))
        .or_else(|| from_versioned(all, kernel_args, &mut tried))
        .ok_or(NotFound { tried })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn part(number: u32, role: Role, partuuid: &str) -> Partition {
        Partition {
            number,
            start_lba: 2048 * u64::from(number),
            size_lba: 2048,
            role,
            partuuid: partuuid.into(),
            guid_bytes: None,
            name: String::new(),
        }
    }

    struct Tree {
        _dir: tempfile::TempDir,
        fss: Vec<MountedFs>,
    }

    /// Filesystems `(number, role, files)`; a file whose content starts with `->` is a
    /// symlink to the rest.
    /// `(partition number, role, (path, content) files)`.
    type Spec<'a> = (u32, Role, &'a [(&'a str, &'a str)]);

    fn tree(spec: &[Spec<'_>]) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let mut fss = Vec::new();
        for (number, role, files) in spec {
            let root = dir.path().join(format!("p{number}"));
            fs::create_dir_all(&root).unwrap();
            for (path, content) in *files {
                let p = root.join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                match content.strip_prefix("->") {
                    Some(target) => symlink(target, &p).unwrap(),
                    None => fs::write(&p, content).unwrap(),
                }
            }
            fss.push(MountedFs {
                partition: part(
                    *number,
                    *role,
                    &format!("0000000{number}-aaaa-bbbb-cccc-dddddddddddd"),
                ),
                fstype: "ext4".into(),
                dir: root,
            });
        }
        Tree { _dir: dir, fss }
    }

    #[test]
    fn debian_symlinks_resolve_inside_the_image_with_root_from_the_partition_table() {
        // Absolute and relative links, as Debian's linux-base writes them.
        let t = tree(&[
            (1, Role::Skip, &[]),
            (
                2,
                Role::Data,
                &[
                    ("etc/os-release", "ID=debian"),
                    ("boot/vmlinuz-6.1.0-13-amd64", "kernel"),
                    ("boot/initrd.img-6.1.0-13-amd64", "initrd"),
                    ("vmlinuz", "->/boot/vmlinuz-6.1.0-13-amd64"),
                    ("initrd.img", "->boot/initrd.img-6.1.0-13-amd64"),
                ],
            ),
        ]);
        let e = discover(&t.fss, Some("console=ttyS0  molar.marker=1")).unwrap();
        assert_eq!(e.source, EntrySource::Symlinks);
        assert_eq!(e.kernel.path, "/boot/vmlinuz-6.1.0-13-amd64");
        assert_eq!(e.kernel.partition, 2);
        assert_eq!(fs::read_to_string(&e.kernel.host).unwrap(), "kernel");
        assert_eq!(e.initrds[0].path, "/boot/initrd.img-6.1.0-13-amd64");
        assert_eq!(
            e.cmdline,
            "root=PARTUUID=00000002-aaaa-bbbb-cccc-dddddddddddd ro console=ttyS0 molar.marker=1"
        );
    }

    #[test]
    fn a_symlink_cannot_leave_the_image() {
        let t = tree(&[(
            1,
            Role::Data,
            &[
                ("boot/vmlinuz", "->../../../../../../etc/hostname"),
                ("etc/hostname", "image"),
            ],
        )]);
        // `..` stops at the image's root: this is the image's /etc/hostname, not the agent's.
        let (host, path) = resolve_in(&t.fss[0].dir, "/boot/vmlinuz").unwrap();
        assert_eq!(path, "/etc/hostname");
        assert!(host.starts_with(&t.fss[0].dir));
        let t = tree(&[(1, Role::Data, &[("a", "->b"), ("b", "->a")])]);
        assert_eq!(resolve_in(&t.fss[0].dir, "a"), None, "a loop is not a file");
    }

    #[test]
    fn bls_entries_on_the_esp_win_in_specification_order() {
        let t = tree(&[
            (
                1,
                Role::Esp,
                &[
                    (
                        "loader/entries/fedora-6.5.6.conf",
                        "title Fedora 6.5.6\nversion 6.5.6\nsort-key fedora\nlinux /vmlinuz-6.5.6\ninitrd /initramfs-6.5.6.img\noptions root=UUID=r ro\n",
                    ),
                    (
                        "loader/entries/fedora-6.10.1.conf",
                        "title Fedora 6.10.1\nversion 6.10.1\nsort-key fedora\nlinux /vmlinuz-6.10.1\ninitrd /initramfs-6.10.1.img\noptions root=UUID=r ro quiet\n",
                    ),
                    (
                        "loader/entries/uki.conf",
                        "efi /EFI/Linux/x.efi\nsort-key a\n",
                    ),
                    ("vmlinuz-6.5.6", "old"),
                    ("vmlinuz-6.10.1", "new"),
                    ("initramfs-6.10.1.img", "i"),
                    ("initramfs-6.5.6.img", "i"),
                ],
            ),
            (
                2,
                Role::Data,
                &[
                    ("boot/grub/grub.cfg", "menuentry x { linux /nope }"),
                    ("boot/vmlinuz", "k"),
                ],
            ),
        ]);
        let e = discover(&t.fss, None).unwrap();
        assert_eq!(e.source, EntrySource::Bls);
        assert_eq!(e.title, "Fedora 6.10.1");
        assert_eq!(e.kernel.path, "/vmlinuz-6.10.1");
        assert_eq!(e.kernel.partition, 1);
        assert_eq!(e.initrds.len(), 1);
        assert_eq!(e.cmdline, "root=UUID=r ro quiet");
    }

    /// A hostile image's configuration files: a link out of its tree (the agent's own files,
    /// `/dev/zero`), a FIFO, a file larger than [`MAX_CONFIG_BYTES`]: none is read, the
    /// honest entry beside them wins.
    #[test]
    fn configuration_files_are_read_inside_the_image_bounded_and_regular_only() {
        let outside = tempfile::tempdir().unwrap();
        let evil = outside.path().join("evil.conf");
        fs::write(
            &evil,
            "title evil\nlinux /vmlinuz-9\noptions evil\nsort-key 0\n",
        )
        .unwrap();
        let big = format!(
            "title big\nlinux /vmlinuz-9\noptions big\nsort-key 0\n#{}\n",
            "x".repeat(MAX_CONFIG_BYTES as usize)
        );
        let evil_link = format!("->{}", evil.display());
        let t = tree(&[(
            1,
            Role::Esp,
            &[
                ("loader/entries/a-out.conf", &evil_link),
                ("loader/entries/a-zero.conf", "->/dev/zero"),
                ("loader/entries/a-big.conf", &big),
                (
                    "loader/entries/z.conf",
                    "title honest\nlinux /vmlinuz-1\noptions ok\n",
                ),
                ("vmlinuz-9", "9"),
                ("vmlinuz-1", "1"),
            ],
        )]);
        nix::unistd::mkfifo(
            &t.fss[0].dir.join("loader/entries/a-fifo.conf"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let e = discover(&t.fss, None).unwrap();
        assert_eq!((e.title.as_str(), e.cmdline.as_str()), ("honest", "ok"));
        let root = &t.fss[0].dir;
        assert_eq!(read_config_in(root, "loader/entries/a-out.conf"), None);
        assert_eq!(read_config_in(root, "loader/entries/a-fifo.conf"), None);
        assert_eq!(read_config_in(root, "loader/entries/a-big.conf"), None);
        assert!(read_config_in(root, "loader/entries/z.conf").is_some());
        // A directory out of the tree is not listed either.
        let t = tree(&[(1, Role::Esp, &[("vmlinuz-9", "9")])]);
        fs::create_dir_all(outside.path().join("entries")).unwrap();
        fs::copy(&evil, outside.path().join("entries/evil.conf")).unwrap();
        fs::create_dir_all(t.fss[0].dir.join("loader")).unwrap();
        symlink(
            outside.path().join("entries"),
            t.fss[0].dir.join("loader/entries"),
        )
        .unwrap();
        assert!(discover(&t.fss, None).is_err());
    }

    #[test]
    fn bls_on_the_root_filesystem_uses_boot_relative_or_absolute_paths() {
        let t = tree(&[(
            2,
            Role::Data,
            &[
                (
                    "boot/loader/entries/a.conf",
                    "linux /vmlinuz-1\noptions x\n",
                ),
                (
                    "boot/loader/entries/b.conf",
                    "linux /boot/vmlinuz-2\noptions y\n",
                ),
                ("boot/vmlinuz-1", "1"),
                ("boot/vmlinuz-2", "2"),
            ],
        )]);
        // No sort-key: by file name, decreasing: b first.
        let e = discover(&t.fss, None).unwrap();
        assert_eq!(
            (e.kernel.path.as_str(), e.cmdline.as_str()),
            ("/boot/vmlinuz-2", "y")
        );
    }

    #[test]
    fn bls_options_take_kernelopts_from_grubenv() {
        let t = tree(&[(
            1,
            Role::Xbootldr,
            &[
                (
                    "loader/entries/r.conf",
                    "linux /vmlinuz-4.18\noptions $kernelopts $tuned_params x=1\n",
                ),
                (
                    "grub2/grubenv",
                    "# GRUB Environment Block\nkernelopts=root=/dev/mapper/rhel-root ro crashkernel=auto\n###",
                ),
                ("vmlinuz-4.18", "k"),
            ],
        )]);
        let e = discover(&t.fss, None).unwrap();
        assert_eq!(
            e.cmdline,
            "root=/dev/mapper/rhel-root ro crashkernel=auto x=1"
        );
    }

    #[test]
    fn grub_default_entry_on_a_separate_boot_partition() {
        let t = tree(&[
            (
                1,
                Role::Data,
                &[
                    (
                        "grub/grub.cfg",
                        "set default=1\nmenuentry a { linux /vmlinuz-a root=/dev/sda2 }\nmenuentry b {\n linux /vmlinuz-b root=/dev/sda2 ro\n initrd /initrd-b /missing\n}\n",
                    ),
                    ("vmlinuz-a", "a"),
                    ("vmlinuz-b", "b"),
                    ("initrd-b", "ib"),
                ],
            ),
            (2, Role::Data, &[("etc/fstab", ""), ("boot/.keep", "")]),
        ]);
        let e = discover(&t.fss, Some("console=ttyS0")).unwrap();
        assert_eq!(e.source, EntrySource::Grub);
        assert_eq!(e.title, "b");
        assert_eq!(e.kernel.path, "/vmlinuz-b");
        assert_eq!(e.initrds.len(), 1, "a missing initrd is left out");
        assert_eq!(e.cmdline, "root=/dev/sda2 ro console=ttyS0");
    }

    #[test]
    fn grub_stub_on_the_esp_is_passed_over_for_the_real_config() {
        let t = tree(&[
            (
                1,
                Role::Esp,
                &[(
                    "EFI/ubuntu/grub.cfg",
                    "search.fs_uuid x root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n",
                )],
            ),
            (
                2,
                Role::Data,
                &[
                    (
                        "boot/grub/grub.cfg",
                        include_str!("testdata/debian-grub.cfg"),
                    ),
                    ("boot/vmlinuz-6.1.0-13-amd64", "k"),
                    ("boot/initrd.img-6.1.0-13-amd64", "i"),
                ],
            ),
        ]);
        let e = discover(&t.fss, None).unwrap();
        assert_eq!(e.source, EntrySource::Grub);
        assert_eq!(e.kernel.path, "/boot/vmlinuz-6.1.0-13-amd64");
        assert_eq!(e.cmdline, "root=UUID=2f1a ro console=ttyS0 quiet");
    }

    #[test]
    fn newest_versioned_kernel_when_nothing_names_one() {
        let t = tree(&[(
            3,
            Role::Data,
            &[
                ("etc/os-release", ""),
                ("boot/vmlinuz-5.14.0-70.el9.x86_64", "old"),
                ("boot/vmlinuz-5.14.0-162.el9.x86_64", "new"),
                ("boot/initramfs-5.14.0-162.el9.x86_64.img", "i"),
            ],
        )]);
        let e = discover(&t.fss, None).unwrap();
        assert_eq!(e.source, EntrySource::Versioned);
        assert_eq!(e.kernel.path, "/boot/vmlinuz-5.14.0-162.el9.x86_64");
        assert_eq!(
            e.initrds[0].path,
            "/boot/initramfs-5.14.0-162.el9.x86_64.img"
        );
        assert!(e.cmdline.starts_with("root=PARTUUID=00000003-"));
    }

    #[test]
    fn nothing_found_says_what_was_tried() {
        let t = tree(&[
            (1, Role::Esp, &[("EFI/BOOT/BOOTX64.EFI", "x")]),
            (
                2,
                Role::Data,
                &[
                    ("etc/os-release", ""),
                    (
                        "boot/grub/grub.cfg",
                        "menuentry a { linux /boot/vmlinuz-gone }",
                    ),
                ],
            ),
        ]);
        let e = discover(&t.fss, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no kernel found in the image (no boot loader specification entries; \
             boot/grub/grub.cfg: entry 'a': kernel /boot/vmlinuz-gone not found; \
             no /boot/vmlinuz or /vmlinuz; no vmlinuz-VERSION)"
        );
        assert_eq!(
            discover(&[], None).unwrap_err().to_string(),
            "no kernel found in the image (no filesystem the agent can mount)"
        );
    }
}
