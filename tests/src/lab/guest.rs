//! The system the lab deploys: a small bootable disk image built in the test, the way a
//! distribution's cloud image is laid out, for `standbye.prepare_image` to write and
//! `standbye.run_image` to kexec into.
//!
//! - [`GuestKit`]: the Debian kernel the lab already boots and a guest initramfs, built by
//!   `molar-imagebuilder` (library) from the kernel package with `molar-lab-guest-init`
//!   (`tests/guest/`, static musl, built by `scripts/lab-images`) as `/init` and NVMe's
//!   modules. That init prints [`MARKER`] with its boot id, then the config drive's
//!   `meta_data.json` after [`META_DATA`], then powers off.
//! - [`build_disk`]: GPT (`sfdisk` on a plain file) with an ext4 root partition made by
//!   `mkfs.ext4 -d` and copied in at its offset (no loop device), holding Debian's
//!   `/boot/vmlinuz` and `/boot/initrd.img` symlinks to the versioned files, which is the
//!   layout kexec discovery falls back to with the root taken from the partition table; or
//!   no kernel at all, the image for which kexec is not viable; and optionally a second
//!   partition holding a ready config drive (for booting the guest directly).
//! - [`vfat_config_drive`]: a `config-2` FAT image made with `mkfs.vfat` and `mcopy`.
//! - [`publish_qcow2`]: `qemu-img convert -c -O qcow2` (compressed, like distribution
//!   images) into a directory [`super::HttpFiles`] serves, with the file's sha256.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use super::{Lab, kernel_package, skip_or_fail, target_dir, which};

/// What the guest prints once its kernel runs its init: `MOLAR-GUEST-BOOTED <boot id>`.
pub const MARKER: &str = "MOLAR-GUEST-BOOTED";
/// Prefix of the config drive's meta data line.
pub const META_DATA: &str = "MOLAR-GUEST-META-DATA";
/// Prefix of the guest's kernel command line.
pub const CMDLINE: &str = "MOLAR-GUEST-CMDLINE";
/// Prefix of what went wrong in the guest (no config drive, a module that did not load).
pub const ERROR: &str = "MOLAR-GUEST-ERROR";
/// The guest's last line before it powers off.
pub const POWEROFF: &str = "MOLAR-GUEST-POWEROFF";

/// The programs the disk image builder runs.
pub const TOOLS: &[&str] = &[
    "sfdisk",
    "mkfs.ext4",
    "debugfs",
    "qemu-img",
    "mkfs.vfat",
    "mcopy",
    "mmd",
];

/// GPT type of a Linux filesystem partition.
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// GPT type "Microsoft basic data", what a FAT config drive partition carries.
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const MIB: u64 = 1 << 20;

/// The guest's kernel and initramfs.
#[derive(Debug, Clone)]
pub struct GuestKit {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
}

/// `molar-lab-guest-init` as `scripts/lab-images` builds it.
pub fn guest_init_path() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-musl/release/molar-lab-guest-init")
}

/// Builds happen once per process (both tests of a binary share them).
static KIT: Mutex<Option<GuestKit>> = Mutex::new(None);

impl GuestKit {
    /// Checks the disk image tools, the guest init and the kernel package, then builds the
    /// kit (once per process). Missing prerequisites skip the test with the reason outside
    /// CI and fail it with `CI=true`, like [`Lab::require`].
    pub fn require(lab: &Lab) -> Option<GuestKit> {
        let mut missing: Vec<String> = TOOLS
            .iter()
            .filter(|t| which(t).is_none())
            .map(|t| format!("{t} (not in PATH; scripts/install-deps)"))
            .collect();
        let init = guest_init_path();
        if !init.is_file() {
            missing.push(format!("{} (run scripts/lab-images)", init.display()));
        }
        let deb = kernel_package();
        if deb.is_none() {
            missing.push("the kernel package (run scripts/fetch-kernel)".into());
        }
        if !missing.is_empty() {
            return skip_or_fail(
                lab.test_name(),
                &format!("guest image prerequisites missing: {}", missing.join("; ")),
            );
        }
        let deb = deb?;
        let mut kit = KIT.lock().unwrap_or_else(|p| p.into_inner());
        if kit.is_none() {
            let out = target_dir().join("lab/guest");
            match GuestKit::build(&deb, &init, &out) {
                Ok(k) => *kit = Some(k),
                Err(e) => panic!("{}: building the guest kit: {e:#}", lab.test_name()),
            }
        }
        kit.clone()
    }

    /// Builds the guest's kernel and initramfs into `out` from the kernel package `deb`,
    /// with `init` as `/init` and the NVMe driver and its dependencies as modules.
    pub fn build(deb: &Path, init: &Path, out: &Path) -> Result<GuestKit> {
        use molar_imagebuilder::{AgentSource, BuildOptions, KernelArgs, KernelSource, Profile};
        let opts = BuildOptions {
            kernel: KernelSource::Deb(deb.to_path_buf()),
            agent: AgentSource::Path(init.to_path_buf()),
            agent_version: Some("molar-lab-guest".into()),
            profile: Profile {
                name: "lab-guest",
                modules: &["nvme"],
            },
            extra_modules: Vec::new(),
            out: out.to_path_buf(),
            kernel_args: KernelArgs::default(),
            compression: None,
            vmlinux: false,
            iso: None,
        };
        let manifest = molar_imagebuilder::build(&opts, &mut |_| {})
            .with_context(|| format!("molar-imagebuilder build into {}", out.display()))?;
        Ok(GuestKit {
            kernel: out.join(molar_imagebuilder::image::VMLINUZ),
            initrd: out.join(molar_imagebuilder::image::INITRAMFS),
            kernel_version: manifest.kernel_version,
        })
    }
}

/// What goes on the disk image.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The image's (virtual) size; the root partition takes what the others leave.
    pub size_bytes: u64,
    /// `/boot` holds the kit's kernel and initrd; `false` makes an image kexec cannot boot.
    pub kernel: bool,
    /// A ready config drive image for a second partition at the end.
    pub config_drive: Option<PathBuf>,
}

/// A built raw disk image.
#[derive(Debug, Clone)]
pub struct GuestDisk {
    pub raw: PathBuf,
    pub disk_guid: String,
    /// The root partition's GPT unique GUID (`root=PARTUUID=...`).
    pub root_partuuid: String,
    /// The root filesystem's UUID (`root=UUID=...`).
    pub root_fs_uuid: String,
    /// Byte offset and length of the root partition.
    pub root: (u64, u64),
}

/// The GUIDs of the test image: fixed, so a test can check what the discovery reports.
pub const DISK_GUID: &str = "6D6F6C61-722D-4C41-4200-000000000001";
pub const ROOT_PARTUUID: &str = "6D6F6C61-722D-4C41-4200-000000000002";
pub const ROOT_FS_UUID: &str = "6d6f6c61-722d-4c41-4200-000000000003";

/// Builds `dir/NAME.raw` from `spec`, booting `kit` (whose files are only read when
/// `spec.kernel` is set).
pub fn build_disk(kit: &GuestKit, spec: &DiskSpec, dir: &Path, name: &str) -> Result<GuestDisk> {
    ensure!(
        spec.size_bytes >= 8 * MIB && spec.size_bytes.is_multiple_of(MIB),
        "a disk image of {} bytes: give a whole number of MiB, at least 8",
        spec.size_bytes
    );
    let start = MIB;
    // The backup GPT takes the last 33 sectors: keep the last MiB free.
    let end = spec.size_bytes - MIB;
    let cd = match &spec.config_drive {
        Some(p) => {
            let len = fs::metadata(p)
                .with_context(|| format!("reading {}", p.display()))?
                .len();
            Some((p.clone(), len.div_ceil(MIB) * MIB))
        }
        None => None,
    };
    let root_len = end - start - cd.as_ref().map_or(0, |(_, l)| *l);
    ensure!(
        root_len >= 4 * MIB,
        "no room for a root partition in {name}"
    );

    // The root filesystem.
    let tree = dir.join(format!("{name}.root"));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    populate_root(kit, spec.kernel, &tree)?;
    let fs_img = dir.join(format!("{name}.ext4"));
    let _ = fs::remove_file(&fs_img);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-U", ROOT_FS_UUID])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&fs_img)
        .arg(format!("{}k", root_len / 1024)))?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;

    // The partition table, on a sparse file of the full size.
    let raw = dir.join(format!("{name}.raw"));
    let file = File::create(&raw).with_context(|| format!("creating {}", raw.display()))?;
    file.set_len(spec.size_bytes)?;
    drop(file);
    let mut script = format!(
        "label: gpt\nlabel-id: {DISK_GUID}\nunit: sectors\nfirst-lba: 2048\n\n\
         start={}, size={}, type={LINUX_FS}, uuid={ROOT_PARTUUID}, name=\"root\"\n",
        start / 512,
        root_len / 512
    );
    if let Some((_, len)) = &cd {
        script.push_str(&format!(
            "start={}, size={}, type={BASIC_DATA}, name=\"config-2\"\n",
            (start + root_len) / 512,
            len / 512
        ));
    }
    run_with_input(
        Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&raw),
        &script,
    )?;
    copy_into(&fs_img, &raw, start)?;
    fs::remove_file(&fs_img).with_context(|| format!("removing {}", fs_img.display()))?;
    if let Some((p, _)) = &cd {
        copy_into(p, &raw, start + root_len)?;
    }
    Ok(GuestDisk {
        raw,
        disk_guid: DISK_GUID.into(),
        root_partuuid: ROOT_PARTUUID.into(),
        root_fs_uuid: ROOT_FS_UUID.into(),
        root: (start, root_len),
    })
}

/// Debian's layout: versioned files in /boot, `vmlinuz`/`initrd.img` symlinks beside them
/// and at the root.
fn populate_root(kit: &GuestKit, kernel: bool, tree: &Path) -> Result<()> {
    for d in ["boot", "etc", "dev", "proc", "sys", "sbin"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::write(
        tree.join("etc/os-release"),
        "NAME=\"molar lab guest\"\nID=molar-lab-guest\n",
    )?;
    fs::write(
        tree.join("etc/fstab"),
        format!("UUID={ROOT_FS_UUID} / ext4 ro 0 1\n"),
    )?;
    if kernel {
        let v = &kit.kernel_version;
        let (vmlinuz, initrd) = (format!("vmlinuz-{v}"), format!("initrd.img-{v}"));
        fs::copy(&kit.kernel, tree.join("boot").join(&vmlinuz))
            .with_context(|| format!("copying {}", kit.kernel.display()))?;
        fs::copy(&kit.initrd, tree.join("boot").join(&initrd))
            .with_context(|| format!("copying {}", kit.initrd.display()))?;
        std::os::unix::fs::symlink(&vmlinuz, tree.join("boot/vmlinuz"))?;
        std::os::unix::fs::symlink(&initrd, tree.join("boot/initrd.img"))?;
        std::os::unix::fs::symlink(format!("boot/{vmlinuz}"), tree.join("vmlinuz"))?;
        std::os::unix::fs::symlink(format!("boot/{initrd}"), tree.join("initrd.img"))?;
    }
    Ok(())
}

/// Copies `src` into `dst` at byte `offset`, leaving holes where `src` reads zeros.
fn copy_into(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut to = OpenOptions::new()
        .write(true)
        .open(dst)
        .with_context(|| format!("opening {}", dst.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = offset;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            to.seek(SeekFrom::Start(at))?;
            to.write_all(&buf[..n])
                .with_context(|| format!("writing {}", dst.display()))?;
        }
        at += n as u64;
    }
}

/// A FAT config drive labelled `config-2` with `openstack/latest/meta_data.json` (made by
/// `mkfs.vfat` and `mcopy`, the tools' own form, independent of molar's writer).
pub fn vfat_config_drive(dir: &Path, meta_data: &serde_json::Value) -> Result<PathBuf> {
    let img = dir.join("config-drive.vfat");
    let _ = fs::remove_file(&img);
    run(Command::new("mkfs.vfat")
        .args(["-n", "config-2", "-C"])
        .arg(&img)
        .arg("8192"))?;
    let json = dir.join("meta_data.json");
    fs::write(&json, serde_json::to_vec_pretty(meta_data)?)?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(&img)
        .args(["::openstack", "::openstack/latest"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&json)
        .arg("::openstack/latest/meta_data.json"))?;
    Ok(img)
}

/// An image file ready to be served.
#[derive(Debug, Clone)]
pub struct Published {
    pub path: PathBuf,
    /// The path under the served directory (`NAME.qcow2`).
    pub url_path: String,
    pub size: u64,
    /// `sha256:HEX` of the file as served.
    pub checksum: String,
}

/// Converts `raw` to compressed qcow2 `serve_dir/NAME.qcow2`.
pub fn publish_qcow2(raw: &Path, serve_dir: &Path, name: &str) -> Result<Published> {
    fs::create_dir_all(serve_dir)?;
    let file = format!("{name}.qcow2");
    let path = serve_dir.join(&file);
    let _ = fs::remove_file(&path);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&path))?;
    Ok(Published {
        size: fs::metadata(&path)?.len(),
        checksum: format!("sha256:{}", sha256_file(&path)?),
        path,
        url_path: file,
    })
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_prefix(path, u64::MAX)
}

/// Hex sha256 of the first `len` bytes of a file (all of it when shorter): what a disk that
/// had an image written to it holds in the image's place.
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut f = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Lines of the guest on a console log: the boot id of each [`MARKER`] line and the meta
/// data (parsed) of each [`META_DATA`] line, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GuestReport {
    pub boot_ids: Vec<String>,
    pub meta_data: Vec<serde_json::Value>,
    pub cmdlines: Vec<String>,
    pub errors: Vec<String>,
}

impl GuestReport {
    pub fn parse(console: &str) -> GuestReport {
        let mut r = GuestReport::default();
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            let field = |prefix: &str| {
                line.find(prefix)
                    .map(|i| line[i + prefix.len()..].trim().to_owned())
            };
            if let Some(id) = field(MARKER) {
                r.boot_ids.push(id);
            } else if let Some(json) = field(META_DATA) {
                r.meta_data.push(
                    serde_json::from_str(&json)
                        .unwrap_or_else(|e| serde_json::Value::String(format!("{e}: {json}"))),
                );
            } else if let Some(c) = field(CMDLINE) {
                r.cmdlines.push(c);
            } else if let Some(e) = field(ERROR) {
                r.errors.push(e);
            }
        }
        r
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    child
        .stdin
        .take()
        .context("the child's stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_or_skip(test: &str) -> bool {
        let missing: Vec<&str> = TOOLS
            .iter()
            .copied()
            .filter(|t| which(t).is_none())
            .collect();
        if missing.is_empty() {
            return true;
        }
        skip_or_fail::<()>(test, &format!("missing {}", missing.join(", ")));
        false
    }

    /// A kit of stand-in files: the image builder only copies them.
    fn fake_kit(dir: &Path) -> GuestKit {
        fs::write(dir.join("k"), b"not a kernel\n").unwrap();
        fs::write(dir.join("i"), vec![7u8; 300_000]).unwrap();
        GuestKit {
            kernel: dir.join("k"),
            initrd: dir.join("i"),
            kernel_version: "6.1.0-test".into(),
        }
    }

    #[test]
    fn builds_a_gpt_image_with_an_ext4_root_and_its_qcow2() {
        if !tools_or_skip("builds_a_gpt_image_with_an_ext4_root_and_its_qcow2") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kit = fake_kit(dir.path());
        let cd = vfat_config_drive(dir.path(), &serde_json::json!({"uuid": "u-1"})).unwrap();
        let spec = DiskSpec {
            size_bytes: 32 * MIB,
            kernel: true,
            config_drive: Some(cd),
        };
        let disk = build_disk(&kit, &spec, dir.path(), "g").unwrap();
        assert_eq!(fs::metadata(&disk.raw).unwrap().len(), 32 * MIB);

        let dump = run(Command::new("sfdisk").arg("--dump").arg(&disk.raw)).unwrap();
        assert!(dump.contains("label: gpt"), "{dump}");
        assert!(dump.contains(&format!("label-id: {DISK_GUID}")), "{dump}");
        let root = format!(
            "start=        2048, size=       {}, type={LINUX_FS}, uuid={ROOT_PARTUUID}, name=\"root\"",
            (32 - 2 - 8) * 2048
        );
        assert!(dump.contains(&root), "{dump}\nwanted {root}");
        assert!(dump.contains("name=\"config-2\""), "{dump}");

        // The root filesystem at its offset: the Debian symlinks and the files they name.
        let at = format!("{}?offset={}", disk.raw.display(), disk.root.0);
        let ls = run(Command::new("debugfs").args(["-R", "ls -l /boot"]).arg(&at)).unwrap();
        assert!(ls.contains("vmlinuz-6.1.0-test"), "{ls}");
        let link = run(Command::new("debugfs")
            .args(["-R", "stat /boot/initrd.img"])
            .arg(&at))
        .unwrap();
        assert!(
            link.contains("Fast link dest: \"initrd.img-6.1.0-test\""),
            "{link}"
        );
        let out = dir.path().join("initrd.out");
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!(
                "dump /boot/initrd.img-6.1.0-test {}",
                out.display()
            ))
            .arg(&at))
        .unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&kit.initrd).unwrap());

        let serve = dir.path().join("www");
        let p = publish_qcow2(&disk.raw, &serve, "guest").unwrap();
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&p.path))
        .unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], 32 * MIB);
        assert!(p.size < 4 * MIB, "compressed qcow2 of {} bytes", p.size);
        assert_eq!(
            p.checksum,
            format!("sha256:{}", sha256_file(&p.path).unwrap())
        );
        let back = dir.path().join("back.raw");
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&p.path)
            .arg(&back))
        .unwrap();
        assert_eq!(sha256_file(&back).unwrap(), sha256_file(&disk.raw).unwrap());
    }

    #[test]
    fn an_image_without_a_kernel_has_an_empty_boot() {
        if !tools_or_skip("an_image_without_a_kernel_has_an_empty_boot") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kit = fake_kit(dir.path());
        let spec = DiskSpec {
            size_bytes: 16 * MIB,
            kernel: false,
            config_drive: None,
        };
        let disk = build_disk(&kit, &spec, dir.path(), "nk").unwrap();
        let at = format!("{}?offset={}", disk.raw.display(), disk.root.0);
        let ls = run(Command::new("debugfs").args(["-R", "ls /boot"]).arg(&at)).unwrap();
        assert!(!ls.contains("vmlinuz"), "{ls}");
        let dump = run(Command::new("sfdisk").arg("--dump").arg(&disk.raw)).unwrap();
        assert!(!dump.contains("config-2"), "{dump}");
        assert!(
            build_disk(
                &kit,
                &DiskSpec {
                    size_bytes: 3 * MIB,
                    ..spec
                },
                dir.path(),
                "tiny"
            )
            .is_err()
        );
    }

    #[test]
    fn parses_the_guest_lines() {
        let console = "noise\r\n[ 1.0] x\nMOLAR-GUEST-BOOTED 1234-abcd\r\n\
                       MOLAR-GUEST-CMDLINE root=PARTUUID=x console=ttyS0\n\
                       MOLAR-GUEST-META-DATA {   \"uuid\": \"u-1\" }\n\
                       MOLAR-GUEST-ERROR loading x: ENOENT\n";
        let r = GuestReport::parse(console);
        assert_eq!(r.boot_ids, ["1234-abcd"]);
        assert_eq!(r.meta_data, [serde_json::json!({"uuid": "u-1"})]);
        assert_eq!(r.cmdlines, ["root=PARTUUID=x console=ttyS0"]);
        assert_eq!(r.errors, ["loading x: ENOENT"]);
    }
}
