//! A reproducible newc (`070701`) cpio writer for the initramfs.
//!
//! Entries are collected first and written sorted by path, so parents always precede their
//! children (a path sorts after each of its prefixes) and the output does not depend on the
//! order things were added. Owner, group and mtime are 0, inode numbers count up in that
//! order, so the same inputs give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use thiserror::Error;

/// What failed while assembling the archive.
#[derive(Debug, Error)]
pub enum CpioError {
    #[error("invalid archive path {0:?}: paths are relative, non-empty, without `.`/`..` or NUL")]
    BadPath(String),
    #[error("{0} is added twice with different contents")]
    Conflict(String),
    #[error("writing the cpio archive: {0}")]
    Write(#[from] io::Error),
}

impl CpioError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        match self {
            CpioError::BadPath(_) => "cpio_bad_path",
            CpioError::Conflict(_) => "cpio_conflict",
            CpioError::Write(_) => "cpio_write_failed",
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

impl Node {
    fn full_mode(&self) -> u32 {
        match self {
            Node::Dir { mode } => S_IFDIR | (mode & 0o7777),
            Node::File { mode, .. } => S_IFREG | (mode & 0o7777),
            Node::Symlink { .. } => S_IFLNK | 0o777,
            Node::CharDev { mode, .. } => S_IFCHR | (mode & 0o7777),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Node::File { data, .. } => data,
            Node::Symlink { target } => target.as_bytes(),
            Node::Dir { .. } | Node::CharDev { .. } => &[],
        }
    }
}

/// The archive being assembled: path (without leading `/`) → node.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::BadPath(path.to_string()))
    }
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node` at `path`, creating missing parent directories (mode 0755).
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), CpioError> {
        check_path(path)?;
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.entries.get(&prefix) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(CpioError::Conflict(prefix)),
                None => {
                    self.entries
                        .insert(prefix.clone(), Node::Dir { mode: 0o755 });
                }
            }
        }
        match self.entries.get(path) {
            Some(existing) if existing == &node => Ok(()),
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.entries.insert(path.to_string(), node);
                Ok(())
            }
            Some(_) => Err(CpioError::Conflict(path.to_string())),
            None => {
                self.entries.insert(path.to_string(), node);
                Ok(())
            }
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(path, Node::Dir { mode })
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.add(path, Node::File { mode, data })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, Node::CharDev { mode, major, minor })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total bytes of file contents.
    pub fn payload_size(&self) -> u64 {
        self.entries.values().map(|n| n.data().len() as u64).sum()
    }

    /// Writes the archive in newc format, ending with the `TRAILER!!!` entry.
    pub fn write<W: Write>(&self, mut out: W) -> Result<(), CpioError> {
        for (ino, (path, node)) in (1u32..).zip(&self.entries) {
            let (rmaj, rmin) = match node {
                Node::CharDev { major, minor, .. } => (*major, *minor),
                _ => (0, 0),
            };
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            write_entry(
                &mut out,
                ino,
                node.full_mode(),
                nlink,
                rmaj,
                rmin,
                path,
                node.data(),
            )?;
        }
        write_entry(&mut out, 0, 0, 1, 0, 0, "TRAILER!!!", &[])?;
        out.flush()?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)] // the fields of one newc header
fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev_major: u32,
    rdev_minor: u32,
    name: &str,
    data: &[u8],
) -> Result<(), CpioError> {
    let size = u32::try_from(data.len()).map_err(|_| {
        CpioError::Write(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than newc's 4 GiB limit"),
        ))
    })?;
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
         {dmaj:08X}{dmin:08X}{rdev_major:08X}{rdev_minor:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    let head_len = header.len() + namesize;
    out.write_all(&[0u8; 4][..1 + pad4(head_len)])?;
    out.write_all(data)?;
    out.write_all(&[0u8; 4][..pad4(data.len())])?;
    Ok(())
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed newc entry.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Parsed {
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub name: String,
        pub data: Vec<u8>,
    }

    /// A small, strict newc reader: what the kernel's unpacker would accept.
    pub fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let offset = total - b.len();
            assert_eq!(offset % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&b[..6], b"070701", "bad magic at {offset}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (namesize, filesize) = (field(11) as usize, field(6) as usize);
            let name_end = 110 + namesize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end + pad4(name_end);
            let data = b[data_start..data_start + filesize].to_vec();
            let p = Parsed {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                name,
                data,
            };
            let next = data_start + filesize + pad4(filesize);
            b = &b[next..];
            if p.name == "TRAILER!!!" {
                assert!(b.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push(p);
        }
    }

    #[test]
    fn writes_newc_that_reads_back() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!agent".to_vec()).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.char_dev("dev/null", 0o666, 1, 3).unwrap();
        a.file("lib/modules/6.1/modules.dep", 0o644, b"abc".to_vec())
            .unwrap();
        a.symlink("sbin/init", "/init").unwrap();
        a.dir("tmp", 0o1777).unwrap();
        let mut bytes = Vec::new();
        a.write(&mut bytes).unwrap();
        let parsed = parse(&bytes);
        let names: Vec<&str> = parsed.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "dev/null",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/modules.dep",
                "sbin",
                "sbin/init",
                "tmp"
            ]
        );
        let get = |n: &str| parsed.iter().find(|p| p.name == n).unwrap();
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("init").data, b"#!agent");
        assert_eq!(get("dev/console").mode, 0o020600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("sbin/init").mode, 0o120777);
        assert_eq!(get("sbin/init").data, b"/init");
        assert_eq!(get("tmp").mode, 0o041777);
        assert_eq!(get("dev").nlink, 2);
        for (i, p) in parsed.iter().enumerate() {
            assert_eq!(p.ino, i as u32 + 1);
            assert_eq!((p.uid, p.gid, p.mtime), (0, 0, 0));
        }
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes() {
        let mut a = Archive::new();
        a.file("b/x", 0o644, vec![1; 5]).unwrap();
        a.file("a", 0o644, vec![2; 7]).unwrap();
        let mut b = Archive::new();
        b.file("a", 0o644, vec![2; 7]).unwrap();
        b.file("b/x", 0o644, vec![1; 5]).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.write(&mut x).unwrap();
        b.write(&mut y).unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for bad in ["", "/init", "a/../b", "a//b", "a/", "./a", "a\0b"] {
            assert_eq!(
                a.file(bad, 0o644, vec![]).unwrap_err().code(),
                "cpio_bad_path",
                "{bad:?}"
            );
        }
        a.file("x", 0o644, vec![1]).unwrap();
        a.file("x", 0o644, vec![1]).unwrap();
        assert_eq!(
            a.file("x", 0o644, vec![2]).unwrap_err().code(),
            "cpio_conflict"
        );
        assert_eq!(
            a.file("x/y", 0o644, vec![2]).unwrap_err().code(),
            "cpio_conflict"
        );
    }
}
