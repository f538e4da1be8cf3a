//! Unpacks a Debian kernel package (`linux-image-VERSION.deb` as `apt-get download` leaves
//! it) without dpkg: the `ar` archive is read by hand, its `data.tar.{xz,zst,gz}` member is
//! decompressed as a stream and only `/boot/vmlinuz-*`, `/boot/config-*` and
//! `/lib/modules/VERSION/` are written out.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";

/// What failed while unpacking a kernel package.
#[derive(Debug, Error)]
pub enum DebError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a Debian package: {why}")]
    NotDeb { path: PathBuf, why: String },
    #[error("{path} has no data.tar member")]
    NoData { path: PathBuf },
    #[error("{path}: unsupported data member {member} (expected data.tar.xz, .zst or .gz)")]
    UnsupportedCompression { path: PathBuf, member: String },
    #[error("unpacking {member} of {path}: {source}")]
    Unpack {
        path: PathBuf,
        member: String,
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} holds no /boot/vmlinuz-* (is it a linux-image package?)")]
    NoKernel { path: PathBuf },
    #[error("{path} holds no /lib/modules/{version}/ matching its kernel")]
    NoModules { path: PathBuf, version: String },
}

impl DebError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            DebError::Read { .. } => "deb_read_failed",
            DebError::NotDeb { .. } => "not_a_deb",
            DebError::NoData { .. } => "deb_without_data",
            DebError::UnsupportedCompression { .. } => "deb_compression_unsupported",
            DebError::Unpack { .. } => "deb_unpack_failed",
            DebError::Write { .. } => "write_failed",
            DebError::NoKernel { .. } => "deb_without_kernel",
            DebError::NoModules { .. } => "deb_without_modules",
        }
    }
}

/// One member of an `ar` archive: its name and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of a System V / GNU `ar` archive (the container of a .deb).
pub fn ar_members<R: Read + Seek>(mut r: R) -> Result<Vec<ArMember>, String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| "shorter than the ar magic".to_string())?;
    if &magic != AR_MAGIC {
        return Err("no ar magic".into());
    }
    let mut members = Vec::new();
    let mut pos = 8u64;
    loop {
        let mut header = [0u8; 60];
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading member header: {e}")),
        }
        if &header[58..60] != b"`\n" {
            return Err(format!("bad member header at offset {pos}"));
        }
        let name = String::from_utf8_lossy(&header[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("bad size in member header at offset {pos}"))?;
        let offset = pos + 60;
        members.push(ArMember { name, offset, size });
        // Members are 2-byte aligned.
        pos = offset + size + (size % 2);
        r.seek(SeekFrom::Start(pos))
            .map_err(|e| format!("seeking past member: {e}"))?;
    }
    if members.is_empty() {
        return Err("empty ar archive".into());
    }
    Ok(members)
}

/// The pieces of a kernel package that an image needs, unpacked under a directory.
#[derive(Debug, Clone)]
pub struct UnpackedKernel {
    /// `ROOT/boot/vmlinuz-VERSION`.
    pub vmlinuz: PathBuf,
    /// `ROOT/boot/config-VERSION`, when the package ships it.
    pub config: Option<PathBuf>,
    /// `ROOT/lib/modules/VERSION`.
    pub modules: PathBuf,
    pub version: String,
}

/// Unpacks the kernel, its config and its module tree from the package at `deb` into `root`.
pub fn unpack_kernel_deb(deb: &Path, root: &Path) -> Result<UnpackedKernel, DebError> {
    let read_err = |source| DebError::Read {
        path: deb.to_path_buf(),
        source,
    };
    let mut file = File::open(deb).map_err(read_err)?;
    let members = ar_members(&mut file).map_err(|why| DebError::NotDeb {
        path: deb.to_path_buf(),
        why,
    })?;
    if members.first().map(|m| m.name.as_str()) != Some("debian-binary") {
        return Err(DebError::NotDeb {
            path: deb.to_path_buf(),
            why: "first member is not debian-binary".into(),
        });
    }
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| DebError::NoData {
            path: deb.to_path_buf(),
        })?;
    file.seek(SeekFrom::Start(data.offset)).map_err(read_err)?;
    let raw = BufReader::with_capacity(1 << 20, file.take(data.size));
    let stream: Box<dyn Read> = match data.name.as_str() {
        "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(raw)),
        "data.tar.zst" => Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(
            |source| DebError::Unpack {
                path: deb.to_path_buf(),
                member: data.name.clone(),
                source,
            },
        )?),
        "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(raw)),
        "data.tar" => Box::new(raw),
        other => {
            return Err(DebError::UnsupportedCompression {
                path: deb.to_path_buf(),
                member: other.to_string(),
            });
        }
    };
    let unpack_err = |source| DebError::Unpack {
        path: deb.to_path_buf(),
        member: data.name.clone(),
        source,
    };

    let mut archive = tar::Archive::new(stream);
    let mut vmlinuz: Option<(String, PathBuf)> = None;
    let mut config: Option<(String, PathBuf)> = None;
    let mut module_versions: Vec<String> = Vec::new();
    for entry in archive.entries().map_err(unpack_err)? {
        let mut entry = entry.map_err(unpack_err)?;
        let path = entry.path().map_err(unpack_err)?.into_owned();
        let Some(rel) = clean_relative(&path) else {
            continue;
        };
        let wanted = if let Ok(boot) = rel.strip_prefix("boot") {
            let name = boot.to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                vmlinuz = Some((v.to_string(), root.join(&rel)));
                true
            } else if let Some(v) = name.strip_prefix("config-") {
                config = Some((v.to_string(), root.join(&rel)));
                true
            } else {
                false
            }
        } else if let Ok(m) = rel.strip_prefix("lib/modules") {
            if let Some(Component::Normal(v)) = m.components().next() {
                let v = v.to_string_lossy().into_owned();
                if !module_versions.contains(&v) {
                    module_versions.push(v);
                }
            }
            true
        } else {
            false
        };
        if !wanted {
            continue;
        }
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        let write_err = |source| DebError::Write {
            path: dest.clone(),
            source,
        };
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(write_err)?;
        } else if kind.is_file() {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(write_err)?;
            }
            let mut out = File::create(&dest).map_err(write_err)?;
            io::copy(&mut entry, &mut out).map_err(unpack_err)?;
        } else if kind.is_symlink() {
            // Debian's module tree has build/source symlinks into the headers package:
            // nothing an initramfs needs.
            continue;
        }
    }
    let (version, vmlinuz) = vmlinuz.ok_or_else(|| DebError::NoKernel {
        path: deb.to_path_buf(),
    })?;
    if !module_versions.contains(&version) {
        return Err(DebError::NoModules {
            path: deb.to_path_buf(),
            version,
        });
    }
    Ok(UnpackedKernel {
        vmlinuz,
        config: config.filter(|(v, _)| *v == version).map(|(_, p)| p),
        modules: root.join("lib/modules").join(&version),
        version,
    })
}

/// `./lib/modules/x` → `lib/modules/x`; `None` for anything escaping the root.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir | Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// Builds an `ar` archive from (name, bytes) members, as dpkg-deb does.
    pub fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            let header = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                "100644",
                data.len()
            );
            assert_eq!(header.len(), 60);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    /// A tar with the given regular files (paths as dpkg writes them, with `./`).
    pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn lists_ar_members_with_odd_sizes() {
        let bytes = ar(&[("debian-binary", b"2.0\n"), ("odd", b"abc"), ("x", b"yz")]);
        let m = ar_members(Cursor::new(&bytes)).unwrap();
        assert_eq!(
            m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["debian-binary", "odd", "x"]
        );
        let x = &m[2];
        assert_eq!(
            &bytes[x.offset as usize..(x.offset + x.size) as usize],
            b"yz"
        );
    }

    #[test]
    fn rejects_what_is_not_an_ar_archive() {
        assert!(ar_members(Cursor::new(b"PK\x03\x04 zip")).is_err());
        let mut bad = ar(&[("debian-binary", b"2.0\n")]);
        bad[8 + 58] = b'X';
        assert!(ar_members(Cursor::new(&bad)).is_err());
    }

    #[test]
    fn unpacks_only_kernel_config_and_modules_from_a_constructed_deb() {
        let data = tar(&[
            ("./boot/vmlinuz-6.1.0-test", b"KERNEL"),
            ("./boot/config-6.1.0-test", b"CONFIG_RD_ZSTD=y\n"),
            ("./boot/System.map-6.1.0-test", b"map"),
            ("./lib/modules/6.1.0-test/kernel/a.ko", b"ko"),
            ("./usr/share/doc/linux-image/changelog.gz", b"doc"),
        ]);
        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            (
                "control.tar.xz",
                &xz(&tar(&[("./control", b"Package: x\n")])),
            ),
            ("data.tar.xz", &xz(&data)),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let debpath = dir.path().join("linux-image.deb");
        fs::write(&debpath, &deb).unwrap();
        let root = dir.path().join("root");
        let k = unpack_kernel_deb(&debpath, &root).unwrap();
        assert_eq!(k.version, "6.1.0-test");
        assert_eq!(fs::read(&k.vmlinuz).unwrap(), b"KERNEL");
        assert!(k.config.is_some());
        assert_eq!(fs::read(k.modules.join("kernel/a.ko")).unwrap(), b"ko");
        assert!(!root.join("usr").exists());
        assert!(!root.join("boot/System.map-6.1.0-test").exists());
    }

    #[test]
    fn a_bad_package_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        fs::write(&p, b"not a package").unwrap();
        let e = unpack_kernel_deb(&p, dir.path()).unwrap_err();
        assert_eq!(e.code(), "not_a_deb", "{e}");
        assert!(e.to_string().contains("x.deb"));

        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            ("data.tar.xz", &xz(&tar(&[("./usr/bin/ls", b"x")]))),
        ]);
        fs::write(&p, deb).unwrap();
        let e = unpack_kernel_deb(&p, &dir.path().join("r")).unwrap_err();
        assert_eq!(e.code(), "deb_without_kernel", "{e}");

        let deb = ar(&[("debian-binary", b"2.0\n"), ("data.tar.lz", b"x")]);
        fs::write(&p, deb).unwrap();
        let e = unpack_kernel_deb(&p, &dir.path().join("r")).unwrap_err();
        assert_eq!(e.code(), "deb_compression_unsupported", "{e}");
    }
}
