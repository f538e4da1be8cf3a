//! `molar-imagebuilder build`: from a kernel (package or unpacked tree) and the static agent
//! to the four PXE artefacts `vmlinuz`, `initramfs.img`, `boot.ipxe` and `manifest.json`, and
//! with `--iso` the virtual-media image `molar.iso` (see `iso` and `uki`).
//!
//! Reproducible by construction: the cpio is sorted with zeroed owners and times, the
//! compressors are single-threaded with fixed levels and no timestamps, and the manifest
//! holds no paths or dates. Same inputs, same bytes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::agent::{self, AgentError};
use crate::bzimage::{self, BzImageError};
use crate::cpio::{Archive, CpioError};
use crate::deb::{self, DebError};
use crate::ipxe::{ArgsError, KernelArgs};
use crate::kmod::{ModuleTree, ModulesError};
use crate::pe::PeError;
use crate::profile::Profile;

/// What failed during a build.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error("extracting vmlinux from {path}: {source}")]
    Vmlinux { path: PathBuf, source: BzImageError },
    #[error("creating a work directory: {0}")]
    WorkDir(io::Error),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("compressing the initramfs with {compression}: {source}")]
    Compress {
        compression: String,
        source: io::Error,
    },
    #[error(
        "the kernel {path} does not support {compression} initramfs (CONFIG_RD_{config} is not set)"
    )]
    CompressionUnsupported {
        path: PathBuf,
        compression: String,
        config: &'static str,
    },
    #[error("building the unified kernel image from the EFI stub {path}: {source}")]
    Uki { path: PathBuf, source: PeError },
    #[error("reading the EFI stub {path} (Debian package systemd-boot-efi): {source}")]
    EfiStub { path: PathBuf, source: io::Error },
    #[error("building the ESP image for the ISO: {0}")]
    Esp(io::Error),
    #[error("writing the ISO: {0}")]
    Iso(#[from] crate::iso::IsoError),
    #[error(
        "cannot tell the kernel version from the modules directory {0} (expected lib/modules/VERSION)"
    )]
    NoVersion(PathBuf),
}

impl BuildError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            BuildError::Deb(e) => e.code(),
            BuildError::Modules(e) => e.code(),
            BuildError::Agent(e) => e.code(),
            BuildError::Args(e) => e.code(),
            BuildError::Cpio(e) => e.code(),
            BuildError::Vmlinux { source, .. } => source.code(),
            BuildError::WorkDir(_) => "work_dir_failed",
            BuildError::Read { .. } => "read_failed",
            BuildError::Write { .. } => "write_failed",
            BuildError::Compress { .. } => "compress_failed",
            BuildError::CompressionUnsupported { .. } => "compression_unsupported",
            BuildError::NoVersion(_) => "kernel_version_unknown",
            BuildError::Uki { source, .. } => source.code(),
            BuildError::Esp(_) => "esp_image_failed",
            BuildError::EfiStub { .. } => "efi_stub_unreadable",
            BuildError::Iso(_) => "iso_failed",
        }
    }
}

/// Where the kernel and its modules come from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// A `linux-image-VERSION.deb`.
    Deb(PathBuf),
    /// An unpacked kernel image and its `lib/modules/VERSION` directory.
    Unpacked { vmlinuz: PathBuf, modules: PathBuf },
}

/// Where the agent comes from.
#[derive(Debug, Clone)]
pub enum AgentSource {
    Path(PathBuf),
    /// The workspace's musl release binary, built with cargo when absent.
    Workspace(PathBuf),
}

/// How the initramfs is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "level")]
pub enum Compression {
    Zstd(i32),
    Gzip(u32),
}

impl Compression {
    /// zstd -19: the kernel's decompressor handles its 8 MiB window and it is markedly
    /// smaller than gzip; level 19 of a ~40 MiB archive takes seconds, not minutes.
    pub const DEFAULT_ZSTD: Compression = Compression::Zstd(19);
    pub const DEFAULT_GZIP: Compression = Compression::Gzip(9);

    /// `zstd`, `zstd:LEVEL`, `gzip`, `gzip:LEVEL`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, level) = match s.split_once(':') {
            Some((k, l)) => (k, Some(l)),
            None => (s, None),
        };
        let bad = || format!("invalid compression {s:?} (zstd[:1-22] or gzip[:0-9])");
        match (kind, level) {
            ("zstd", None) => Ok(Self::DEFAULT_ZSTD),
            ("gzip", None) => Ok(Self::DEFAULT_GZIP),
            ("zstd", Some(l)) => match l.parse() {
                Ok(n) if (1..=22).contains(&n) => Ok(Compression::Zstd(n)),
                _ => Err(bad()),
            },
            ("gzip", Some(l)) => match l.parse() {
                Ok(n) if n <= 9 => Ok(Compression::Gzip(n)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn name(&self) -> String {
        match self {
            Compression::Zstd(l) => format!("zstd:{l}"),
            Compression::Gzip(l) => format!("gzip:{l}"),
        }
    }

    fn config_symbol(&self) -> &'static str {
        match self {
            Compression::Zstd(_) => "ZSTD",
            Compression::Gzip(_) => "GZIP",
        }
    }

    /// Compresses `data` deterministically.
    pub fn compress(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        match *self {
            Compression::Zstd(level) => {
                let mut e = zstd::stream::Encoder::new(Vec::new(), level)?;
                e.include_checksum(true)?;
                e.set_pledged_src_size(Some(data.len() as u64))?;
                e.write_all(data)?;
                e.finish()
            }
            Compression::Gzip(level) => {
                // GzBuilder writes mtime 0 and no file name: nothing varies between runs.
                let mut e =
                    flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(level));
                e.write_all(data)?;
                e.finish()
            }
        }
    }
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kernel: KernelSource,
    pub agent: AgentSource,
    /// Overrides what `molar-agent --version` prints.
    pub agent_version: Option<String>,
    pub profile: Profile,
    /// Modules on top of the profile.
    pub extra_modules: Vec<String>,
    pub out: PathBuf,
    pub kernel_args: KernelArgs,
    /// `None`: zstd when the kernel's config has `CONFIG_RD_ZSTD=y`, else gzip.
    pub compression: Option<Compression>,
    /// Also write `vmlinux`, the uncompressed kernel, for QEMU's faster PVH boot.
    pub vmlinux: bool,
    /// Also write `molar.iso`, a UEFI-bootable ISO of the ramdisk.
    pub iso: Option<IsoOptions>,
}

/// How `molar.iso` is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// systemd's EFI stub (`linuxx64.efi.stub`), the front of the unified kernel image.
    pub efi_stub: PathBuf,
}

impl Default for IsoOptions {
    fn default() -> Self {
        IsoOptions {
            efi_stub: crate::uki::EFI_STUB.into(),
        }
    }
}

/// One written file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artefact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The agent as it went into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: Option<String>,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub builder_version: String,
    pub kernel_version: String,
    pub profile: String,
    pub compression: Compression,
    /// The kernel command line of `boot.ipxe`, token redacted.
    pub cmdline: String,
    /// The command line inside `molar.iso`'s unified kernel image: `cmdline` without the
    /// token, which the ISO never carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_cmdline: Option<String>,
    pub agent: AgentInfo,
    /// `vmlinuz`, `initramfs.img`, `boot.ipxe` (and `vmlinux` when asked for).
    pub artefacts: Vec<Artefact>,
    /// Canonical names of the modules in the initramfs.
    pub modules: Vec<String>,
    /// Profile modules that this kernel has built in.
    pub builtin_modules: Vec<String>,
    /// Uncompressed size of the cpio archive.
    pub initramfs_uncompressed_size: u64,
}

impl Manifest {
    pub fn artefact(&self, name: &str) -> Option<&Artefact> {
        self.artefacts.iter().find(|a| a.name == name)
    }
}

pub const VMLINUZ: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs.img";
pub const BOOT_IPXE: &str = "boot.ipxe";
pub const MANIFEST: &str = "manifest.json";
pub const VMLINUX: &str = "vmlinux";
pub const ISO: &str = "molar.iso";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    // Written aside and renamed: a reader (TFTP, a running lab) never sees half a file.
    let tmp = path.with_extension("partial");
    let err = |source| BuildError::Write {
        path: path.to_path_buf(),
        source,
    };
    fs::write(&tmp, data).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Whether `config` (a kernel `.config`) enables the initramfs decompressor for `c`.
fn kernel_supports(config: &str, c: Compression) -> bool {
    let wanted = format!("CONFIG_RD_{}=y", c.config_symbol());
    config.lines().any(|l| l.trim() == wanted)
}

/// Looks for `config-VERSION` beside an unpacked kernel or in `ROOT/boot` of its module tree.
fn find_config(vmlinuz: &Path, modules: &Path, version: &str) -> Option<PathBuf> {
    let name = format!("config-{version}");
    let beside = vmlinuz.parent().map(|d| d.join(&name));
    let in_root = modules
        .ancestors()
        .nth(3)
        .map(|root| root.join("boot").join(&name));
    [beside, in_root]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// Builds the artefacts into `opts.out`, reporting progress through `progress`.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest, BuildError> {
    opts.kernel_args.validate()?;
    let boot_ipxe = opts.kernel_args.boot_ipxe(VMLINUZ, INITRAMFS)?;
    // The EFI stub before the slow steps: a missing package should not cost a compression.
    let efi_stub = match &opts.iso {
        None => None,
        Some(iso_opts) => {
            let path = &iso_opts.efi_stub;
            let stub = fs::read(path).map_err(|source| BuildError::EfiStub {
                path: path.clone(),
                source,
            })?;
            crate::pe::parse(&stub).map_err(|source| BuildError::Uki {
                path: path.clone(),
                source,
            })?;
            Some(stub)
        }
    };

    // The agent first: a non-static binary is the cheapest failure to report.
    let agent_path = match &opts.agent {
        AgentSource::Path(p) => p.clone(),
        AgentSource::Workspace(ws) => {
            let p = agent::default_agent_path(ws);
            if p.exists() {
                p
            } else {
                progress(&format!(
                    "building the agent: cargo build --release --target {} -p molar-agent",
                    agent::MUSL_TARGET
                ));
                agent::build_agent(ws)?
            }
        }
    };
    progress(&format!("agent {}", agent_path.display()));
    let agent_bytes = agent::load_agent(&agent_path)?;
    let agent_version = opts
        .agent_version
        .clone()
        .or_else(|| agent::agent_version(&agent_path));

    let work = tempfile::Builder::new()
        .prefix("molar-imagebuilder-")
        .tempdir()
        .map_err(BuildError::WorkDir)?;
    let (vmlinuz, modules_dir, version, config) = match &opts.kernel {
        KernelSource::Deb(path) => {
            progress(&format!("unpacking {}", path.display()));
            let k = deb::unpack_kernel_deb(path, work.path())?;
            (k.vmlinuz, k.modules, k.version, k.config)
        }
        KernelSource::Unpacked { vmlinuz, modules } => {
            let version = modules
                .file_name()
                .map(|v| v.to_string_lossy().into_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| BuildError::NoVersion(modules.clone()))?;
            let config = find_config(vmlinuz, modules, &version);
            (vmlinuz.clone(), modules.clone(), version, config)
        }
    };
    progress(&format!("kernel {version}"));

    let config_text = match &config {
        Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
        None => None,
    };
    let compression = match (opts.compression, &config_text) {
        (Some(c), Some(text)) if !kernel_supports(text, c) => {
            return Err(BuildError::CompressionUnsupported {
                path: config.clone().unwrap_or_default(),
                compression: c.name(),
                config: c.config_symbol(),
            });
        }
        (Some(c), _) => c,
        (None, Some(text)) if kernel_supports(text, Compression::DEFAULT_ZSTD) => {
            Compression::DEFAULT_ZSTD
        }
        (None, Some(_)) => Compression::DEFAULT_GZIP,
        (None, None) => {
            progress("no kernel config found: using gzip, which every kernel unpacks");
            Compression::DEFAULT_GZIP
        }
    };

    progress(&format!("reading modules in {}", modules_dir.display()));
    let tree = ModuleTree::scan(&modules_dir)?;
    let mut wanted: Vec<String> = opts.profile.modules.iter().map(|s| s.to_string()).collect();
    wanted.extend(opts.extra_modules.iter().cloned());
    let selection = tree.resolve(&wanted)?;
    progress(&format!(
        "{} modules ({} named by profile {:?}, {} built in)",
        selection.modules.len(),
        wanted.len(),
        opts.profile.name,
        selection.builtin.len()
    ));
    for s in &selection.unresolved_softdeps {
        progress(&format!("optional soft dependency not in the tree: {s}"));
    }

    let mut archive = Archive::new();
    for d in ["dev", "etc", "mnt", "proc", "run", "sys", "var"] {
        archive.dir(d, 0o755)?;
    }
    archive.dir("root", 0o700)?;
    archive.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    archive.char_dev("dev/console", 0o600, 5, 1)?;
    archive.char_dev("dev/null", 0o666, 1, 3)?;
    archive.file("init", 0o755, agent_bytes.clone())?;
    let mroot = format!("lib/modules/{version}");
    archive.dir(&mroot, 0o755)?;
    for m in &selection.modules {
        let dest = format!("{mroot}/{}", m.dest().to_string_lossy());
        archive.file(&dest, 0o644, m.read(&modules_dir)?)?;
    }
    archive.file(
        &format!("{mroot}/modules.dep"),
        0o644,
        selection.modules_dep().into_bytes(),
    )?;
    archive.file(
        &format!("{mroot}/modules.alias"),
        0o644,
        selection.modules_alias().into_bytes(),
    )?;
    archive.file(
        &format!("{mroot}/modules.softdep"),
        0o644,
        selection.modules_softdep().into_bytes(),
    )?;
    let builtin = modules_dir.join("modules.builtin");
    if builtin.is_file() {
        archive.file(&format!("{mroot}/modules.builtin"), 0o644, read(&builtin)?)?;
    }

    let mut cpio = Vec::with_capacity(archive.payload_size() as usize + (1 << 20));
    archive.write(&mut cpio)?;
    progress(&format!(
        "compressing {:.1} MiB of cpio with {}",
        mib(cpio.len() as u64),
        compression.name()
    ));
    let initramfs = compression
        .compress(&cpio)
        .map_err(|source| BuildError::Compress {
            compression: compression.name(),
            source,
        })?;

    let kernel_bytes = read(&vmlinuz)?;
    let vmlinux = if opts.vmlinux {
        progress("extracting vmlinux for PVH boot");
        Some(
            bzimage::extract_vmlinux(&kernel_bytes).map_err(|source| BuildError::Vmlinux {
                path: vmlinuz.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    let iso = match (&opts.iso, &efi_stub) {
        (Some(iso_opts), Some(stub)) => {
            // The ISO is served without our bearer token (BMCs cannot send one) and the kernel
            // prints its command line: the token stays out, the agent reads it from SMBIOS
            // OEM strings instead.
            let args = KernelArgs {
                token: None,
                ..opts.kernel_args.clone()
            };
            let cmdline = args.cmdline()?;
            if opts.kernel_args.token.is_some() {
                progress("molar.iso carries no token: give it as an SMBIOS OEM string");
            }
            let uki = crate::uki::build(
                stub,
                &crate::uki::UkiParts {
                    cmdline: &cmdline,
                    kernel_version: &version,
                    linux: &kernel_bytes,
                    initrd: &initramfs,
                },
            )
            .map_err(|source| BuildError::Uki {
                path: iso_opts.efi_stub.clone(),
                source,
            })?;
            progress(&format!(
                "writing {ISO}: {:.1} MiB unified kernel image on an EFI El Torito ESP",
                mib(uki.len() as u64)
            ));
            let esp = crate::iso::esp_image(&uki).map_err(BuildError::Esp)?;
            let image = crate::iso::write_iso("MOLAR", &esp)?;
            Some((image, cmdline))
        }
        _ => None,
    };
    fs::create_dir_all(&opts.out).map_err(|source| BuildError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let mut artefacts = Vec::new();
    let mut outputs = vec![
        (VMLINUZ, &kernel_bytes[..]),
        (INITRAMFS, &initramfs[..]),
        (BOOT_IPXE, boot_ipxe.as_bytes()),
    ];
    if let Some(v) = &vmlinux {
        outputs.push((VMLINUX, &v[..]));
    }
    if let Some((image, _)) = &iso {
        outputs.push((ISO, &image[..]));
    }
    for (name, data) in outputs {
        write(&opts.out.join(name), data)?;
        artefacts.push(Artefact {
            name: name.to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
        });
    }
    let manifest = Manifest {
        builder_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_version: version,
        profile: opts.profile.name.to_string(),
        compression,
        cmdline: opts.kernel_args.cmdline_redacted(),
        iso_cmdline: iso.as_ref().map(|(_, c)| c.clone()),
        agent: AgentInfo {
            version: agent_version,
            size: agent_bytes.len() as u64,
            sha256: sha256_hex(&agent_bytes),
        },
        artefacts,
        modules: selection.modules.iter().map(|m| m.name.clone()).collect(),
        builtin_modules: selection.builtin.clone(),
        initramfs_uncompressed_size: cpio.len() as u64,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Write {
        path: opts.out.join(MANIFEST),
        source: io::Error::other(e),
    })?;
    json.push(b'\n');
    write(&opts.out.join(MANIFEST), &json)?;
    Ok(manifest)
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// The size summary printed at the end of a build.
pub fn summary(m: &Manifest) -> String {
    let mut s = String::new();
    let size = |name: &str| m.artefact(name).map_or(0, |a| a.size);
    s.push_str(&format!(
        "kernel {}  profile {}  {} modules\n",
        m.kernel_version,
        m.profile,
        m.modules.len()
    ));
    s.push_str(&format!(
        "  agent          {:>8.2} MiB  (version {})\n",
        mib(m.agent.size),
        m.agent.version.as_deref().unwrap_or("unknown")
    ));
    s.push_str(&format!(
        "  vmlinuz        {:>8.2} MiB\n",
        mib(size(VMLINUZ))
    ));
    if m.artefact(VMLINUX).is_some() {
        s.push_str(&format!(
            "  vmlinux        {:>8.2} MiB  (PVH)\n",
            mib(size(VMLINUX))
        ));
    }
    s.push_str(&format!(
        "  initramfs.img  {:>8.2} MiB  ({} of {:.2} MiB cpio)\n",
        mib(size(INITRAMFS)),
        m.compression.name(),
        mib(m.initramfs_uncompressed_size)
    ));
    if let Some(a) = m.artefact(ISO) {
        s.push_str(&format!(
            "  molar.iso      {:>8.2} MiB  (UEFI)\n",
            mib(a.size)
        ));
    }
    if let Some(a) = m.artefact(INITRAMFS) {
        s.push_str(&format!("  initramfs sha256 {}\n", a.sha256));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse as parse_cpio;
    use crate::elf::synth;
    use crate::kmod::tests::fixture_tree;

    /// A kernel tree laid out like an unpacked package: ROOT/boot, ROOT/lib/modules/V.
    fn fixture_kernel(root: &Path, config: &str) -> KernelSource {
        let modules = root.join("lib/modules/6.1.0-test");
        fs::create_dir_all(&modules).unwrap();
        fixture_tree(&modules);
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(
            root.join("boot/vmlinuz-6.1.0-test"),
            crate::bzimage::tests::fake_bzimage(&synth::executable(false)),
        )
        .unwrap();
        fs::write(root.join("boot/config-6.1.0-test"), config).unwrap();
        KernelSource::Unpacked {
            vmlinuz: root.join("boot/vmlinuz-6.1.0-test"),
            modules,
        }
    }

    const TEST_PROFILE: Profile = Profile {
        name: "test",
        modules: &["nvme", "ipmi_si", "ext4", "loop"],
    };

    fn options(dir: &Path, kernel: KernelSource, out: &str) -> BuildOptions {
        let agent = dir.join("agent");
        fs::write(&agent, synth::executable(false)).unwrap();
        BuildOptions {
            kernel,
            agent: AgentSource::Path(agent),
            agent_version: Some("0.0.0-test".into()),
            profile: TEST_PROFILE,
            extra_modules: vec![],
            out: dir.join(out),
            kernel_args: KernelArgs {
                controller: Some("10.0.2.100:9000".into()),
                token: Some(crate::Token::new("tok")),
                ..KernelArgs::default()
            },
            compression: None,
            vmlinux: false,
            iso: None,
        }
    }

    fn unpack(initramfs: &[u8], c: Compression) -> Vec<u8> {
        match c {
            Compression::Zstd(_) => zstd::stream::decode_all(initramfs).unwrap(),
            Compression::Gzip(_) => {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut flate2::read::GzDecoder::new(initramfs), &mut v)
                    .unwrap();
                v
            }
        }
    }

    #[test]
    fn builds_a_uefi_iso_without_the_token_listed_in_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fixture_kernel(&dir.path().join("k"), "CONFIG_RD_GZIP=y\n");
        let real_stub = Path::new(crate::uki::EFI_STUB).is_file();
        let efi_stub = if real_stub {
            PathBuf::from(crate::uki::EFI_STUB)
        } else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} missing under CI (install systemd-boot-efi)",
                crate::uki::EFI_STUB
            );
            eprintln!("using a synthetic stub: systemd-boot-efi is not installed");
            let p = dir.path().join("stub.efi");
            fs::write(&p, crate::pe::tests::synthetic(0x400)).unwrap();
            p
        };
        let mut opts = options(dir.path(), kernel, "iso");
        opts.iso = Some(IsoOptions { efi_stub });
        let mut lines = Vec::new();
        let m = build(&opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(
            lines.iter().any(|l| l.contains("carries no token")),
            "{lines:?}"
        );
        let iso_path = opts.out.join(ISO);
        let iso = fs::read(&iso_path).unwrap();
        let a = m.artefact(ISO).unwrap();
        assert_eq!(
            (a.size, a.sha256.clone()),
            (iso.len() as u64, sha256_hex(&iso))
        );
        let on_disk: Manifest =
            serde_json::from_slice(&fs::read(opts.out.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(on_disk, m);
        let cmdline = m.iso_cmdline.clone().unwrap();
        assert_eq!(
            cmdline,
            "console=tty0 console=ttyS0,115200 molar.controller=10.0.2.100:9000"
        );
        assert!(!String::from_utf8_lossy(&iso).contains("molar.token"));

        // Pull the UKI back out of the ISO's ESP and check its sections.
        let lba = u32::from_le_bytes(iso[19 * 2048 + 40..19 * 2048 + 44].try_into().unwrap());
        let mut esp = io::Cursor::new(iso[lba as usize * 2048..].to_vec());
        let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).unwrap();
        let mut uki = Vec::new();
        io::Read::read_to_end(
            &mut fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap(),
            &mut uki,
        )
        .unwrap();
        let h = crate::pe::parse(&uki).unwrap();
        let section = |n| crate::pe::section_data(&uki, &h, n).unwrap();
        assert_eq!(section(".cmdline"), cmdline.as_bytes());
        assert_eq!(section(".uname"), b"6.1.0-test");
        assert_eq!(
            section(".linux"),
            &fs::read(opts.out.join(VMLINUZ)).unwrap()[..]
        );
        assert_eq!(
            section(".initrd"),
            &fs::read(opts.out.join(INITRAMFS)).unwrap()[..]
        );
        if crate::iso::tests::have_cross_check_tools() {
            crate::iso::tests::cross_check(&iso_path, uki.len());
        }

        // Reproducible, and a stub that is not PE fails naming it.
        let m2 = build(&opts, &mut |_| {}).unwrap();
        assert_eq!(m2.artefact(ISO), m.artefact(ISO));
        let bad = dir.path().join("bad.efi");
        fs::write(&bad, b"not a stub").unwrap();
        opts.iso = Some(IsoOptions { efi_stub: bad });
        let e = build(&opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.code(), "pe_malformed");
        assert!(e.to_string().contains("bad.efi"), "{e}");
        opts.iso = Some(IsoOptions {
            efi_stub: dir.path().join("absent.efi"),
        });
        let mut lines = Vec::new();
        let e = build(&opts, &mut |l| lines.push(l.to_string())).unwrap_err();
        assert_eq!(e.code(), "efi_stub_unreadable");
        assert!(e.to_string().contains("systemd-boot-efi"), "{e}");
        assert!(lines.is_empty(), "failed before any step: {lines:?}");
    }

    #[test]
    fn builds_all_artefacts_from_an_unpacked_tree_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fixture_kernel(&dir.path().join("k"), "CONFIG_RD_GZIP=y\n");
        let mut lines = Vec::new();
        let m1 = build(&options(dir.path(), kernel.clone(), "a"), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        let m2 = build(&options(dir.path(), kernel.clone(), "b"), &mut |_| {}).unwrap();
        assert_eq!(m1, m2);
        for name in [VMLINUZ, INITRAMFS, BOOT_IPXE, MANIFEST] {
            let a = fs::read(dir.path().join("a").join(name)).unwrap();
            let b = fs::read(dir.path().join("b").join(name)).unwrap();
            assert!(a == b, "{name} differs between two builds");
        }
        assert!(
            lines.iter().any(|l| l.contains("ext4: crypto-crc32c")),
            "{lines:?}"
        );

        // No zstd in this kernel's config: gzip.
        assert_eq!(m1.compression, Compression::Gzip(9));
        let img = fs::read(dir.path().join("a").join(INITRAMFS)).unwrap();
        assert_eq!(m1.artefact(INITRAMFS).unwrap().sha256, sha256_hex(&img));
        let entries = parse_cpio(&unpack(&img, m1.compression));
        let get = |n: &str| entries.iter().find(|e| e.name == n);
        assert_eq!(get("init").unwrap().data, synth::executable(false));
        assert_eq!(get("init").unwrap().mode, 0o100755);
        assert_eq!(get("dev/console").unwrap().rdev, (5, 1));
        assert_eq!(get("dev/null").unwrap().rdev, (1, 3));
        let dep = &get("lib/modules/6.1.0-test/modules.dep").unwrap().data;
        assert!(String::from_utf8_lossy(dep).contains("kernel/drivers/nvme/host/nvme.ko: "));
        assert!(get("lib/modules/6.1.0-test/modules.alias").is_some());
        assert!(get("lib/modules/6.1.0-test/modules.softdep").is_some());
        assert!(get("lib/modules/6.1.0-test/modules.builtin").is_some());
        // The compressed module is shipped decompressed, under its .ko name.
        let crc = get("lib/modules/6.1.0-test/kernel/lib/crc64-rocksoft.ko").unwrap();
        assert!(crate::elf::modinfo_section(&crc.data).unwrap().is_some());
        assert!(m1.modules.contains(&"ipmi_devintf".to_string()));
        assert_eq!(m1.builtin_modules, ["loop"]);

        let script = fs::read_to_string(dir.path().join("a").join(BOOT_IPXE)).unwrap();
        assert!(script.starts_with("#!ipxe\nkernel vmlinuz initrd=initramfs.img "));
        assert!(script.contains(" molar.token=tok"));
        let manifest = fs::read_to_string(dir.path().join("a").join(MANIFEST)).unwrap();
        assert!(
            !manifest.contains("tok\""),
            "the token leaked into the manifest"
        );
        let parsed: Manifest = serde_json::from_str(&manifest).unwrap();
        assert_eq!(parsed, m1);
        assert!(m1.artefact(VMLINUX).is_none());

        let mut opts = options(dir.path(), kernel, "c");
        opts.vmlinux = true;
        let m3 = build(&opts, &mut |_| {}).unwrap();
        let vmlinux = fs::read(dir.path().join("c").join(VMLINUX)).unwrap();
        assert_eq!(vmlinux, synth::executable(false));
        assert_eq!(m3.artefact(VMLINUX).unwrap().sha256, sha256_hex(&vmlinux));
    }

    #[test]
    fn builds_from_a_constructed_deb_with_zstd() {
        use crate::deb::tests::{ar, tar, xz};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mods = src.join("lib/modules/6.1.0-test");
        fs::create_dir_all(&mods).unwrap();
        fixture_tree(&mods);
        let mut files: Vec<(String, Vec<u8>)> = vec![
            ("./boot/vmlinuz-6.1.0-test".into(), b"bzImage".to_vec()),
            (
                "./boot/config-6.1.0-test".into(),
                b"CONFIG_RD_ZSTD=y\n".to_vec(),
            ),
        ];
        let mut stack = vec![mods.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(&src).unwrap().display().to_string();
                    files.push((format!("./{rel}"), fs::read(&p).unwrap()));
                }
            }
        }
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let deb = dir.path().join("linux-image-6.1.0-test.deb");
        fs::write(
            &deb,
            ar(&[
                ("debian-binary", b"2.0\n"),
                ("data.tar.xz", &xz(&tar(&refs))),
            ]),
        )
        .unwrap();
        let m = build(
            &options(dir.path(), KernelSource::Deb(deb), "out"),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(m.compression, Compression::DEFAULT_ZSTD);
        assert_eq!(m.kernel_version, "6.1.0-test");
        let img = fs::read(dir.path().join("out").join(INITRAMFS)).unwrap();
        let entries = parse_cpio(&unpack(&img, m.compression));
        assert!(
            entries
                .iter()
                .any(|e| e.name == "lib/modules/6.1.0-test/kernel/drivers/nvme/host/nvme.ko")
        );
        assert_eq!(
            fs::read(dir.path().join("out").join(VMLINUZ)).unwrap(),
            b"bzImage"
        );
    }

    #[test]
    fn refuses_a_dynamic_agent_a_missing_module_and_an_unsupported_compression() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fixture_kernel(&dir.path().join("k"), "CONFIG_RD_GZIP=y\n");

        let mut opts = options(dir.path(), kernel.clone(), "out");
        opts.agent = AgentSource::Path(std::env::current_exe().unwrap());
        let e = build(&opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.code(), "agent_not_static", "{e}");

        let mut opts = options(dir.path(), kernel.clone(), "out");
        opts.extra_modules = vec!["no_such_nic".into()];
        let e = build(&opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.code(), "no_such_module");
        assert!(e.to_string().contains("no_such_nic"), "{e}");

        let mut opts = options(dir.path(), kernel, "out");
        opts.compression = Some(Compression::Zstd(3));
        let e = build(&opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.code(), "compression_unsupported", "{e}");
        assert!(!dir.path().join("out").join(INITRAMFS).exists());
    }

    /// The real Debian kernel with the default profile: every module resolves and the image
    /// stays within the 25 MiB budget. Needs `scripts/fetch-kernel` to have run.
    #[test]
    fn default_profile_on_the_real_kernel_package() {
        // Where scripts/fetch-kernel puts it.
        let cache = match std::env::var_os("MOLAR_CACHE") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("kernel"),
            _ => agent::target_dir(&agent::default_workspace()).join("molar-cache/kernel"),
        };
        let deb = fs::read_dir(&cache).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        });
        let Some(deb) = deb else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "no kernel package in {}: run scripts/fetch-kernel",
                    cache.display()
                );
            }
            eprintln!(
                "skipped: no kernel package in {} (run scripts/fetch-kernel)",
                cache.display()
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), KernelSource::Deb(deb), "out");
        opts.profile = crate::profile::DEFAULT;
        opts.vmlinux = true;
        let m = build(&opts, &mut |l| eprintln!("{l}")).unwrap();
        eprint!("{}", summary(&m));
        for wanted in [
            "nvme",
            "virtio_net",
            "virtio_pci",
            "e1000",
            "ipmi_si",
            "ipmi_devintf",
            "t10_pi",
            "ext4",
            "mlx5_core",
            "capsule_loader",
        ] {
            assert!(
                m.modules.iter().any(|n| n == wanted),
                "{wanted} missing from {:?}",
                m.modules
            );
        }
        assert!(m.artefact(INITRAMFS).unwrap().size <= 25 << 20);
        let vmlinux = fs::read(dir.path().join("out").join(VMLINUX)).unwrap();
        assert!(vmlinux.starts_with(b"\x7fELF"));

        // Where the host has kmod's depmod, it must agree with what was computed from the
        // modules' own modinfo (as sets: the order within a line may differ, validly).
        let Some(depmod) = ["/usr/sbin/depmod", "/sbin/depmod"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
        else {
            eprintln!("depmod not installed: not cross-checking modules.dep");
            return;
        };
        let img = fs::read(dir.path().join("out").join(INITRAMFS)).unwrap();
        let root = dir.path().join("unpacked");
        for e in parse_cpio(&unpack(&img, m.compression)) {
            let path = root.join(&e.name);
            match e.mode & 0o170000 {
                0o040000 => fs::create_dir_all(&path).unwrap(),
                0o100000 => fs::write(&path, &e.data).unwrap(),
                _ => {}
            }
        }
        let mdir = root.join("lib/modules").join(&m.kernel_version);
        let ours_dep = fs::read_to_string(mdir.join("modules.dep")).unwrap();
        let ours_alias = fs::read_to_string(mdir.join("modules.alias")).unwrap();
        let status = std::process::Command::new(depmod)
            .arg("-b")
            .arg(&root)
            .arg(&m.kernel_version)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let as_sets = |text: &str| -> std::collections::BTreeMap<
            String,
            std::collections::BTreeSet<String>,
        > {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.split_whitespace().map(String::from).collect(),
                    )
                })
                .collect()
        };
        let theirs_dep = fs::read_to_string(mdir.join("modules.dep")).unwrap();
        assert_eq!(as_sets(&ours_dep), as_sets(&theirs_dep));
        let aliases = |text: &str| -> std::collections::BTreeSet<String> {
            text.lines()
                .filter(|l| l.starts_with("alias "))
                .map(String::from)
                .collect()
        };
        let theirs_alias = fs::read_to_string(mdir.join("modules.alias")).unwrap();
        assert_eq!(aliases(&ours_alias), aliases(&theirs_alias));
    }

    #[test]
    fn parses_compression_settings() {
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd(19)));
        assert_eq!(Compression::parse("gzip:6"), Ok(Compression::Gzip(6)));
        assert!(Compression::parse("zstd:0").is_err());
        assert!(Compression::parse("xz").is_err());
    }

    #[test]
    fn compression_is_deterministic_and_decodes() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::Zstd(3), Compression::Gzip(6)] {
            let a = c.compress(&data).unwrap();
            assert_eq!(a, c.compress(&data).unwrap());
            let back = match c {
                Compression::Zstd(_) => zstd::stream::decode_all(&a[..]).unwrap(),
                Compression::Gzip(_) => {
                    let mut v = Vec::new();
                    io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut v)
                        .unwrap();
                    v
                }
            };
            assert_eq!(back, data);
        }
    }

    #[test]
    fn reads_initramfs_support_from_the_kernel_config() {
        let cfg = "CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n";
        assert!(kernel_supports(cfg, Compression::Gzip(9)));
        assert!(!kernel_supports(cfg, Compression::Zstd(19)));
    }
}
