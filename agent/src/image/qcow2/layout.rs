//! [`Layout::read`]: the header, the L1 table and every L2 table, read up front through
//! [`RangeRead`] (HTTP Range requests on the deploy path), so that one sequential pass over
//! the file can then place every cluster, in whatever order the file stores them.

use std::io;

use super::header::{Compression, Header, PROBE_LEN, Parsed};
use super::map::{self, Builder, Extent, Kind};
use super::verify::MetaRead;
use super::{Qcow2Error, RangeRead};

/// L2 tables this close together are fetched in one read (the gap is read and dropped):
/// compressed images interleave small tables with data, and a request costs a round trip.
const L2_GAP: u64 = 64 << 10;
/// The first read of the header.
const HEADER_READ: usize = 512;
/// Largest single read of L2 tables.
const L2_READ: u64 = 4 << 20;

/// The checked header and the cluster map of a qcow2 file.
#[derive(Debug)]
pub struct Layout {
    pub(crate) header: Header,
    /// Sorted by host offset, standard runs merged.
    pub(crate) extents: Vec<Extent>,
    metadata_read: u64,
    reads: u64,
    /// Every range the map was built from, with its digest: the converter re-hashes them
    /// as the (hashed) stream passes, so the map is covered by the file's checksum.
    pub(crate) checks: Vec<MetaRead>,
}

fn read(
    src: &mut dyn RangeRead,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Qcow2Error> {
    src.read_at(offset, buf).map_err(|source| Qcow2Error::Read {
        what,
        offset,
        source,
    })
}

impl Layout {
    /// Reads the header, L1 and every L2 table through `src`; refuses backing files,
    /// external data files, encryption, extended L2, unknown incompatible bits, clearly.
    /// `file_len`, when known, bounds every offset the tables name.
    pub fn read(src: &mut dyn RangeRead, file_len: Option<u64>) -> Result<Layout, Qcow2Error> {
        let mut metadata_read = 0u64;
        let mut reads = 0u64;
        let mut checks = Vec::new();
        if file_len.is_some_and(|l| l < PROBE_LEN as u64) {
            return Err(Qcow2Error::Truncated {
                what: "header",
                offset: 0,
                file_len: file_len.unwrap_or(0),
            });
        }
        // One sector holds every header qemu writes; the parser asks for more if not.
        let mut buf =
            vec![0u8; file_len.map_or(HEADER_READ, |l| l.min(HEADER_READ as u64) as usize)];
        let mut first = true;
        let header = loop {
            match src.read_at(0, &mut buf) {
                Ok(()) => {}
                // A file of unknown length shorter than a sector: the parser says how much
                // it needs from there.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && first => {
                    first = false;
                    buf.truncate(PROBE_LEN);
                    continue;
                }
                Err(source) => {
                    return Err(Qcow2Error::Read {
                        what: "header",
                        offset: 0,
                        source,
                    });
                }
            }
            first = false;
            metadata_read += buf.len() as u64;
            reads += 1;
            match Header::parse(&buf, file_len)? {
                Parsed::Header(h) => {
                    checks.push(MetaRead::new("header", 0, &buf));
                    break h;
                }
                Parsed::NeedBytes(n) => buf.resize(n, 0),
            }
        };
        let mut l1 = vec![0u8; header.l1_bytes() as usize];
        if !l1.is_empty() {
            read(src, "L1 table", header.l1_offset, &mut l1)?;
            checks.push(MetaRead::new("L1 table", header.l1_offset, &l1));
            metadata_read += l1.len() as u64;
            reads += 1;
        }
        let mut tables = map::l2_offsets(&header, &l1, file_len)?;
        drop(l1);
        tables.sort_unstable_by_key(|&(_, offset)| offset);
        let cs = header.cluster_size();
        let mut builder = Builder::new(header.cluster_bits);
        let mut group = Vec::new();
        let mut i = 0;
        while i < tables.len() {
            // Tables [i, j) are read at once: [start, end).
            let start = tables[i].1;
            let mut end = start + cs;
            let mut j = i + 1;
            while j < tables.len() {
                let next = tables[j].1;
                let next_end = (next + cs).max(end);
                if next > end + L2_GAP || next_end - start > L2_READ {
                    break;
                }
                end = next_end;
                j += 1;
            }
            group.resize((end - start) as usize, 0);
            read(src, "L2 table", start, &mut group)?;
            checks.push(MetaRead::new("L2 table", start, &group));
            metadata_read += group.len() as u64;
            reads += 1;
            for &(l1_index, offset) in &tables[i..j] {
                let at = (offset - start) as usize;
                builder.add_l2(&header, l1_index, &group[at..at + cs as usize], file_len)?;
            }
            i = j;
        }
        let extents = builder.finish();
        Ok(Layout {
            header,
            extents,
            metadata_read,
            reads,
            checks,
        })
    }

    /// Size of the virtual disk in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn compression(&self) -> Compression {
        self.header.compression
    }

    /// Bytes of the virtual disk that hold data (the rest reads as zeros).
    pub fn allocated_bytes(&self) -> u64 {
        let cb = self.header.cluster_bits;
        let clusters: u64 = self
            .extents
            .iter()
            .map(|e| u64::from(e.guest_clusters()))
            .sum();
        (clusters << cb).min(self.header.virtual_size)
    }

    /// Compressed clusters in the map.
    pub fn compressed_clusters(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| matches!(e.kind(), Kind::Compressed { .. }))
            .count() as u64
    }

    /// Entries in the map (its memory is 16 bytes each).
    pub fn extents(&self) -> usize {
        self.extents.len()
    }

    /// Bytes fetched through [`RangeRead`] to read the metadata, and in how many reads.
    pub fn metadata_read(&self) -> (u64, u64) {
        (self.metadata_read, self.reads)
    }
}
