//! A minimal ISO 9660 writer for config drives: volume id `config-2`, Rock Ridge names (the
//! `NM` and `PX` entries of RRIP 1.09, announced by `SP` and `ER` in the root) and a Joliet
//! tree, so `meta_data.json` keeps its lowercase long name whichever extension a reader
//! uses (Linux isofs prefers Rock Ridge, Windows readers take Joliet).
//!
//! Hand-written because the tree is fixed and tiny (`openstack/`, two version directories,
//! four files), which keeps every directory in one 2048-byte sector and lets both version
//! directories and both trees point at the same file extents. Layout, in sectors: 0–15
//! system area, 16 primary descriptor, 17 Joliet supplementary descriptor, 18 terminator,
//! 19–22 path tables (primary L, M, Joliet L, M), then the primary directories, the Joliet
//! directories, and the file data. Dates are the dated version's (2018-08-27), so the same
//! documents always give the same bytes.

use std::io::{self, Write};

const SECTOR: usize = 2048;
/// 2018-08-27 00:00:00 UTC as a directory record date.
const DATE7: [u8; 7] = [118, 8, 27, 0, 0, 0, 0];
const DATE17: &[u8; 16] = b"2018082700000000";
const VOLUME_ID: &str = "config-2";

/// The ISO image of a config drive, laid out and ready to be written.
pub(super) struct Iso<'a> {
    versions: &'a [&'a str],
    files: &'a [(&'a str, Vec<u8>)],
    /// First sector of each file's data.
    file_lba: Vec<u32>,
    primary: Tree,
    joliet: Tree,
    total_sectors: u32,
}

/// The directories of one tree (primary or Joliet) in path table order: root, openstack,
/// then the versions sorted by their identifier.
struct Tree {
    joliet: bool,
    first_lba: u32,
    /// Version indices in this tree's order.
    order: Vec<usize>,
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|c| c.to_be_bytes()).collect()
}

/// d-characters: uppercase letters, digits, underscore.
fn d_chars(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9') => c,
            _ => '_',
        })
        .collect()
}

fn dir_id(name: &str, joliet: bool) -> Vec<u8> {
    if joliet {
        ucs2(name)
    } else {
        d_chars(name).into_bytes()
    }
}

fn file_id(name: &str, joliet: bool) -> Vec<u8> {
    if joliet {
        return ucs2(name);
    }
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    format!("{}.{};1", d_chars(base), d_chars(ext)).into_bytes()
}

/// Rock Ridge entries of a named record: `PX` (mode, one link, root:root) and `NM`.
fn rock_ridge(name: Option<&str>, dir: bool) -> Vec<u8> {
    let mut su = vec![b'P', b'X', 36, 1];
    let mode: u32 = if dir { 0o040555 } else { 0o100444 };
    for v in [mode, if dir { 2 } else { 1 }, 0, 0] {
        su.extend_from_slice(&both32(v));
    }
    if let Some(name) = name {
        su.extend_from_slice(&[b'N', b'M', 5 + name.len() as u8, 1, 0]);
        su.extend_from_slice(name.as_bytes());
    }
    su
}

/// `SP` and `ER`: the root's "." record announces SUSP and RRIP to readers.
fn rock_ridge_root() -> Vec<u8> {
    let (id, des, src) = (
        b"RRIP_1991A".as_slice(),
        b"ROCK RIDGE 1.09".as_slice(),
        b"SEE RRIP".as_slice(),
    );
    let mut su = vec![b'S', b'P', 7, 1, 0xbe, 0xef, 0];
    su.extend_from_slice(&[
        b'E',
        b'R',
        (8 + id.len() + des.len() + src.len()) as u8,
        1,
        id.len() as u8,
        des.len() as u8,
        src.len() as u8,
        1,
    ]);
    su.extend_from_slice(id);
    su.extend_from_slice(des);
    su.extend_from_slice(src);
    su
}

fn record(id: &[u8], lba: u32, len: u32, dir: bool, su: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&DATE7);
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if id.len().is_multiple_of(2) {
        r.push(0);
    }
    r.extend_from_slice(su);
    if !r.len().is_multiple_of(2) {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

impl Tree {
    fn new(joliet: bool, first_lba: u32, versions: &[&str]) -> Tree {
        let mut order: Vec<usize> = (0..versions.len()).collect();
        order.sort_by_key(|&i| dir_id(versions[i], joliet));
        Tree {
            joliet,
            first_lba,
            order,
        }
    }
    fn dirs(&self) -> u32 {
        2 + self.order.len() as u32
    }
    fn root_lba(&self) -> u32 {
        self.first_lba
    }
    fn openstack_lba(&self) -> u32 {
        self.first_lba + 1
    }
    fn version_lba(&self, version: usize) -> u32 {
        let pos = self.order.iter().position(|&v| v == version).unwrap_or(0);
        self.first_lba + 2 + pos as u32
    }

    fn path_table(&self, versions: &[&str], big_endian: bool) -> Vec<u8> {
        let mut t = Vec::new();
        let mut entry = |id: &[u8], lba: u32, parent: u16| {
            t.push(id.len() as u8);
            t.push(0);
            if big_endian {
                t.extend_from_slice(&lba.to_be_bytes());
                t.extend_from_slice(&parent.to_be_bytes());
            } else {
                t.extend_from_slice(&lba.to_le_bytes());
                t.extend_from_slice(&parent.to_le_bytes());
            }
            t.extend_from_slice(id);
            if !id.len().is_multiple_of(2) {
                t.push(0);
            }
        };
        entry(&[0], self.root_lba(), 1);
        entry(&dir_id("openstack", self.joliet), self.openstack_lba(), 1);
        for &v in &self.order {
            entry(&dir_id(versions[v], self.joliet), self.version_lba(v), 2);
        }
        t
    }
}

impl<'a> Iso<'a> {
    /// Lays out `openstack/VERSION/FILE` for every version and file. Names are ASCII.
    pub(super) fn new(versions: &'a [&'a str], files: &'a [(&'a str, Vec<u8>)]) -> Iso<'a> {
        let tree_lba = 19 + 4;
        let primary = Tree::new(false, tree_lba, versions);
        let joliet = Tree::new(true, tree_lba + primary.dirs(), versions);
        let mut next = joliet.first_lba + joliet.dirs();
        let mut file_lba = Vec::new();
        for (_, data) in files {
            file_lba.push(next);
            next += data.len().div_ceil(SECTOR) as u32;
        }
        Iso {
            versions,
            files,
            file_lba,
            primary,
            joliet,
            total_sectors: next,
        }
    }

    /// Bytes of the whole image.
    pub(super) fn size(&self) -> u64 {
        self.total_sectors as u64 * SECTOR as u64
    }

    fn descriptor(&self, tree: &Tree) -> Vec<u8> {
        let mut d = vec![0u8; SECTOR];
        d[0] = if tree.joliet { 2 } else { 1 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        let text = |d: &mut [u8], off: usize, len: usize, s: &str| {
            let bytes = if tree.joliet {
                ucs2(s)
            } else {
                s.as_bytes().to_vec()
            };
            for (i, slot) in d[off..off + len].iter_mut().enumerate() {
                *slot = match bytes.get(i) {
                    Some(b) => *b,
                    // Joliet pads with UCS-2 spaces (00 20), the primary with spaces.
                    None if tree.joliet && i.is_multiple_of(2) => 0,
                    None => b' ',
                };
            }
        };
        text(&mut d, 8, 32, "LINUX");
        text(&mut d, 40, 32, VOLUME_ID);
        d[80..88].copy_from_slice(&both32(self.total_sectors));
        if tree.joliet {
            d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        d[120..124].copy_from_slice(&both16(1));
        d[124..128].copy_from_slice(&both16(1));
        d[128..132].copy_from_slice(&both16(SECTOR as u16));
        let table_len = tree.path_table(self.versions, false).len() as u32;
        d[132..140].copy_from_slice(&both32(table_len));
        let (l, m) = if tree.joliet {
            (21u32, 22u32)
        } else {
            (19, 20)
        };
        d[140..144].copy_from_slice(&l.to_le_bytes());
        d[148..152].copy_from_slice(&m.to_be_bytes());
        let root = record(&[0], tree.root_lba(), SECTOR as u32, true, &[]);
        d[156..156 + root.len()].copy_from_slice(&root);
        for (off, len) in [(190, 128), (318, 128), (446, 128), (574, 128)] {
            text(&mut d, off, len, "");
        }
        text(&mut d, 574, 128, "MOLAR");
        for (off, len) in [(702, 37), (739, 37), (776, 37)] {
            text(&mut d, off, len, "");
        }
        for (off, date) in [
            (813, DATE17),
            (830, DATE17),
            (847, b"0000000000000000"),
            (864, b"0000000000000000"),
        ] {
            d[off..off + 16].copy_from_slice(date);
        }
        d[881] = 1;
        d
    }

    /// The sectors of one tree's directories, in path table order.
    fn directories(&self, tree: &Tree) -> io::Result<Vec<u8>> {
        let rr = !tree.joliet;
        let su = |name: Option<&str>, dir: bool| if rr { rock_ridge(name, dir) } else { vec![] };
        let sector = SECTOR as u32;
        let mut out = Vec::new();
        let mut dir = |records: Vec<Vec<u8>>| -> io::Result<()> {
            let mut s: Vec<u8> = records.concat();
            if s.len() > SECTOR {
                return Err(io::Error::other("iso9660: a directory outgrew its sector"));
            }
            s.resize(SECTOR, 0);
            out.extend_from_slice(&s);
            Ok(())
        };
        let mut root_dot_su = if rr { rock_ridge_root() } else { vec![] };
        root_dot_su.extend(su(None, true));
        dir(vec![
            record(&[0], tree.root_lba(), sector, true, &root_dot_su),
            record(&[1], tree.root_lba(), sector, true, &su(None, true)),
            record(
                &dir_id("openstack", tree.joliet),
                tree.openstack_lba(),
                sector,
                true,
                &su(Some("openstack"), true),
            ),
        ])?;
        let mut os = vec![
            record(&[0], tree.openstack_lba(), sector, true, &su(None, true)),
            record(&[1], tree.root_lba(), sector, true, &su(None, true)),
        ];
        for &v in &tree.order {
            let name = self.versions[v];
            os.push(record(
                &dir_id(name, tree.joliet),
                tree.version_lba(v),
                sector,
                true,
                &su(Some(name), true),
            ));
        }
        dir(os)?;
        let mut files: Vec<usize> = (0..self.files.len()).collect();
        files.sort_by_key(|&i| file_id(self.files[i].0, tree.joliet));
        for &v in &tree.order {
            let mut recs = vec![
                record(&[0], tree.version_lba(v), sector, true, &su(None, true)),
                record(&[1], tree.openstack_lba(), sector, true, &su(None, true)),
            ];
            for &f in &files {
                let (name, data) = &self.files[f];
                recs.push(record(
                    &file_id(name, tree.joliet),
                    self.file_lba[f],
                    data.len() as u32,
                    false,
                    &su(Some(name), false),
                ));
            }
            dir(recs)?;
        }
        Ok(out)
    }

    /// Writes the whole image, front to back.
    pub(super) fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&vec![0u8; 16 * SECTOR])?;
        out.write_all(&self.descriptor(&self.primary))?;
        out.write_all(&self.descriptor(&self.joliet))?;
        let mut term = vec![0u8; SECTOR];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        out.write_all(&term)?;
        for tree in [&self.primary, &self.joliet] {
            for big in [false, true] {
                let mut t = tree.path_table(self.versions, big);
                t.resize(SECTOR, 0);
                out.write_all(&t)?;
            }
        }
        out.write_all(&self.directories(&self.primary)?)?;
        out.write_all(&self.directories(&self.joliet)?)?;
        for (_, data) in self.files {
            out.write_all(data)?;
            let pad = data.len().div_ceil(SECTOR) * SECTOR - data.len();
            out.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    }
}
