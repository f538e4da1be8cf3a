//! The cluster map: where each allocated guest cluster's bytes lie in the file.
//!
//! Only clusters with data are stored (zero-flagged and unallocated clusters read as zeros
//! and are whatever the map does not cover), as 16-byte [`Extent`]s: a run of standard
//! clusters contiguous in both guest and host space is one extent, a compressed cluster is
//! one extent of its own. Sorted by host offset, they are the order in which a sequential
//! read of the file meets the data.

use super::Qcow2Error;
use super::header::Header;

/// L1 and standard L2 entries: host offset bits 9..=55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1 << 0;
/// `meta` with this bit set is a compressed cluster whose low bits are its stored length.
const COMPRESSED_FLAG: u32 = 1 << 31;

/// Most extents one map may hold (16 bytes each: 64 MiB). A 4 GiB image of compressed
/// 4 KiB clusters needs a million; images with 64 KiB clusters need 16 times fewer.
pub const MAX_EXTENTS: usize = 1 << 22;

/// Data of guest clusters `guest..` stored at `host` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Extent {
    /// File offset of the first byte.
    pub host: u64,
    /// First guest cluster index.
    pub guest: u32,
    /// Standard: the number of clusters. Compressed: `COMPRESSED_FLAG | stored length`.
    meta: u32,
}

/// What one extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `clusters` clusters stored as they are.
    Standard { clusters: u32 },
    /// One cluster compressed into at most `len` bytes (the descriptor counts 512-byte
    /// sectors, so the end may run into the next compressed cluster).
    Compressed { len: u32 },
}

impl Extent {
    pub fn kind(&self) -> Kind {
        if self.meta & COMPRESSED_FLAG != 0 {
            Kind::Compressed {
                len: self.meta & !COMPRESSED_FLAG,
            }
        } else {
            Kind::Standard {
                clusters: self.meta,
            }
        }
    }

    /// Bytes of the file this extent reads.
    pub fn host_len(&self, cluster_bits: u32) -> u64 {
        match self.kind() {
            Kind::Standard { clusters } => u64::from(clusters) << cluster_bits,
            Kind::Compressed { len } => u64::from(len),
        }
    }

    pub fn host_end(&self, cluster_bits: u32) -> u64 {
        self.host + self.host_len(cluster_bits)
    }

    pub fn guest_clusters(&self) -> u32 {
        match self.kind() {
            Kind::Standard { clusters } => clusters,
            Kind::Compressed { .. } => 1,
        }
    }
}

/// Extents as they are found, merging runs; sorted and merged again by [`Builder::finish`].
#[derive(Debug)]
pub(crate) struct Builder {
    cluster_bits: u32,
    extents: Vec<Extent>,
    /// Extents pushed over the builder's life, taken ones included: the bound applies to
    /// the whole map.
    total: usize,
}

/// The L2 table offsets named by an L1 table, as `(l1 index, offset)`, zero entries left out.
pub(crate) fn l2_offsets(
    header: &Header,
    l1: &[u8],
    file_len: Option<u64>,
) -> Result<Vec<(u32, u64)>, Qcow2Error> {
    let mut out = Vec::new();
    let cs = header.cluster_size();
    for (i, e) in l1
        .chunks_exact(8)
        .take(header.l1_needed() as usize)
        .enumerate()
    {
        let mut a = [0u8; 8];
        a.copy_from_slice(e);
        let offset = u64::from_be_bytes(a) & OFFSET_MASK;
        if offset == 0 {
            continue;
        }
        if !offset.is_multiple_of(cs) {
            return Err(Qcow2Error::Unaligned {
                what: "L2 table",
                offset,
            });
        }
        if let Some(len) = file_len
            && offset + cs > len
        {
            return Err(Qcow2Error::PastEnd {
                what: "L2 table",
                offset,
                end: offset + cs,
                file_len: len,
            });
        }
        out.push((i as u32, offset));
    }
    Ok(out)
}

impl Builder {
    pub fn new(cluster_bits: u32) -> Builder {
        Builder {
            cluster_bits,
            extents: Vec::new(),
            total: 0,
        }
    }

    /// Adds the data clusters of the L2 table at L1 index `l1_index`.
    pub fn add_l2(
        &mut self,
        header: &Header,
        l1_index: u32,
        table: &[u8],
        file_len: Option<u64>,
    ) -> Result<(), Qcow2Error> {
        let start = u64::from(l1_index) * header.l2_entries();
        let clusters = header.guest_clusters();
        let cb = header.cluster_bits;
        let cs = header.cluster_size();
        // Compressed descriptor: offset in bits 0..x, additional sectors in x..62.
        let x = 62 - (cb - 8);
        for (i, e) in table.chunks_exact(8).enumerate() {
            let guest = start + i as u64;
            if guest >= clusters {
                break;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(e);
            let entry = u64::from_be_bytes(a);
            let guest_offset = guest << cb;
            let extent = if entry & L2_COMPRESSED != 0 {
                let descriptor = entry & (L2_COMPRESSED - 1);
                let host = descriptor & ((1 << x) - 1);
                let sectors = (descriptor >> x) + 1;
                let len = sectors * 512 - (host & 511);
                // Inside the header cluster: no image stores data there.
                if host < cs {
                    return Err(Qcow2Error::BadL2Entry {
                        guest_offset,
                        entry,
                    });
                }
                if let Some(file_len) = file_len
                    && host >= file_len
                {
                    return Err(Qcow2Error::PastEnd {
                        what: "compressed cluster",
                        offset: host,
                        end: host + len,
                        file_len,
                    });
                }
                // len <= 2 * cluster size <= 4 MiB: fits the 31 bits.
                Extent {
                    host,
                    guest: guest as u32,
                    meta: COMPRESSED_FLAG | len as u32,
                }
            } else if entry & L2_ZERO != 0 {
                if header.version < 3 {
                    return Err(Qcow2Error::ZeroClusterInV2 { guest_offset });
                }
                continue;
            } else {
                let host = entry & OFFSET_MASK;
                if host == 0 {
                    continue; // unallocated: no backing file, so zeros
                }
                if !host.is_multiple_of(cs) {
                    return Err(Qcow2Error::Unaligned {
                        what: "data cluster",
                        offset: host,
                    });
                }
                if let Some(file_len) = file_len
                    && host + cs > file_len
                {
                    return Err(Qcow2Error::PastEnd {
                        what: "data cluster",
                        offset: host,
                        end: host + cs,
                        file_len,
                    });
                }
                Extent {
                    host,
                    guest: guest as u32,
                    meta: 1,
                }
            };
            self.push(extent)?;
        }
        Ok(())
    }

    fn push(&mut self, e: Extent) -> Result<(), Qcow2Error> {
        if let Some(last) = self.extents.last_mut()
            && merges(last, &e, self.cluster_bits)
        {
            last.meta += e.meta;
            return Ok(());
        }
        if self.total >= MAX_EXTENTS {
            return Err(Qcow2Error::MapTooLarge { max: MAX_EXTENTS });
        }
        self.total += 1;
        self.extents.push(e);
        Ok(())
    }

    /// Takes the extents found since the last call (streaming: one L2 table's worth).
    pub fn take(&mut self) -> Vec<Extent> {
        std::mem::take(&mut self.extents)
    }

    /// The extents sorted by host offset, runs merged.
    pub fn finish(mut self) -> Vec<Extent> {
        let cluster_bits = self.cluster_bits;
        self.extents.sort_unstable();
        let mut out: Vec<Extent> = Vec::with_capacity(self.extents.len());
        for e in self.extents {
            if let Some(last) = out.last_mut()
                && merges(last, &e, cluster_bits)
            {
                last.meta += e.meta;
                continue;
            }
            out.push(e);
        }
        out.shrink_to_fit();
        out
    }
}

/// Whether standard extent `b` continues `a` in both guest and host space.
fn merges(a: &Extent, b: &Extent, cluster_bits: u32) -> bool {
    let (Kind::Standard { clusters: n }, Kind::Standard { clusters: m }) = (a.kind(), b.kind())
    else {
        return false;
    };
    // Bounded so a merged run stays well inside the 31 bits of `meta`.
    u64::from(n) + u64::from(m) < u64::from(COMPRESSED_FLAG)
        && u64::from(a.guest) + u64::from(n) == u64::from(b.guest)
        && a.host + (u64::from(n) << cluster_bits) == b.host
}
