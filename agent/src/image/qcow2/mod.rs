//! qcow2 → raw while streaming, memory bounded: the image is never held whole.
//!
//! Two ways in. With random access to the file (HTTP Range, a local file, the cache),
//! [`Layout::read`] reads the header, the L1 table and every L2 table first (about 128 KiB
//! of L2 per GiB of virtual size at 64 KiB clusters, adjacent tables in one read), and
//! [`Converter::new`] then places every cluster during one sequential pass over the file,
//! whatever order the file stores them in (compressed images made by `qemu-img convert -c`
//! store data up to ~24 MiB before the L2 table that maps it). Without random access,
//! [`Converter::streaming`] learns the tables as they pass and holds the data that comes
//! before its table, up to a bound; uncompressed `qemu-img` output (each L2 table just
//! before its data) converts in one pass holding almost nothing.
//!
//! Clusters are standard (copied), compressed (raw deflate, or zstd when the header's
//! compression type is 1; each inflates to exactly one cluster), zero-flagged (version 3) or
//! unallocated: the last two read as zeros and become [`DiskSink::zeros`] calls at the end,
//! one per maximal range. Backing files, external data files, encryption, extended L2 and
//! unknown incompatible features are refused. Internal snapshots are ignored: the active L1
//! table is the disk.
//!
//! Memory, independent of the file's size for a given virtual size:
//! - the map: 16 bytes per extent (a run of standard clusters contiguous in guest and file,
//!   or one compressed cluster), at most [`MAX_EXTENTS`]; plus 8 bytes per run of guest
//!   clusters written (for the zero ranges at the end), at most as many;
//! - one coalescing buffer of [`COALESCE`] (4 MiB) for writes to the sink;
//! - the compressed clusters in progress: their stored bytes (at most two clusters' worth,
//!   since only sector-rounded tails overlap) and one cluster of output, plus the decoder
//!   (zstd's window is capped at 4 MiB);
//! - once the map is complete, with N inflating threads (`parallel.rs`: the CPUs available,
//!   at most 4; one inflates inline, as above): at most 2N + 1 batches (2N outstanding, one
//!   being gathered; applied ones are reused), each at most 512 KiB of stored bytes plus one
//!   compressed cluster's (two clusters at most) and 512 KiB of output plus one cluster; plus
//!   per thread a decoder and one cluster of output. About 1.2 MiB per batch at 64 KiB
//!   clusters: 6 MiB at N = 2, 11 MiB at N = 4;
//! - [`Layout::read`]: the L1 table (8 bytes per 512 MiB at 64 KiB clusters) and one read of
//!   L2 tables (at most 4 MiB) at a time;
//! - streaming only: at most `max_buffer` bytes of allocation holding bytes not yet mapped
//!   (the header cluster, the refcount table and the L1 cluster's slack are never held, so a
//!   plain image holds one L2 table and its refcount blocks), the L1 table while it is read,
//!   and the list of L2 table offsets (16 bytes per table).

mod convert;
mod header;
mod held;
mod inflate;
mod layout;
mod map;
mod output;
mod parallel;
#[cfg(test)]
mod tests;
mod verify;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub use convert::Converter;
pub use header::{Compression, MAGIC, MAX_VIRTUAL_SIZE};
pub use layout::Layout;
pub use map::MAX_EXTENTS;
pub use output::COALESCE;

/// Random access to the qcow2 file: HTTP Range requests, a local file, the cache.
pub trait RangeRead {
    /// Fills `buf` from `offset` exactly; a short file is an `UnexpectedEof` error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl RangeRead for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl RangeRead for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            )),
        }
    }
}

/// The virtual disk being written (a device through O_DIRECT, a temp file in tests).
/// Offsets are multiples of 512; `write_at` data lengths are multiples of 512 except possibly
/// the last write ending at the virtual size.
pub trait DiskSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `offset..offset+len` must read as zeros afterwards (the sink decides whether it has to
    /// write them: a device known to read zeros after a verified erase/discard skips them).
    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()>;
}

/// A [`DiskSink`] over a regular file (tests, local conversions): data with `pwrite`; zero
/// ranges past the file's end only extend it (a hole), those inside it are written.
#[derive(Debug)]
pub struct FileSink {
    pub file: File,
}

impl DiskSink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        let file_len = self.file.metadata()?.len();
        let zeros = vec![0u8; (1 << 20).min(len) as usize];
        let mut at = offset;
        while at < end.min(file_len) {
            let n = (end.min(file_len) - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        if file_len < end {
            self.file.set_len(end)?;
        }
        Ok(())
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    /// Bytes of data written to the sink.
    pub data_bytes: u64,
    /// Bytes declared zero through [`DiskSink::zeros`].
    pub zero_bytes: u64,
    pub compressed_clusters: u64,
}

/// Every way a qcow2 file can be wrong or unsupported, naming the field or offset.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 image: the magic bytes at offset 0 are not QFI\\xfb")]
    BadMagic,
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("qcow2 header_length {0} is invalid (at least 104, a multiple of 8, within a cluster)")]
    HeaderLength(u32),
    #[error("qcow2 cluster_bits {0} is outside 9..=21")]
    ClusterBits(u32),
    #[error("qcow2 virtual size {size} is larger than {max} bytes")]
    VirtualSizeTooLarge { size: u64, max: u64 },
    #[error("qcow2 virtual size {0} is not a multiple of 512")]
    VirtualSizeUnaligned(u64),
    #[error(
        "qcow2 image has a backing file (named at header offset {offset:#x}): only standalone \
         images can be written; flatten it with qemu-img convert first"
    )]
    BackingFile { offset: u64 },
    #[error("qcow2 image is encrypted (crypt_method {0}): encrypted images are not supported")]
    Encrypted(u32),
    #[error("qcow2 image is marked corrupt (incompatible feature bit 1)")]
    MarkedCorrupt,
    #[error(
        "qcow2 image keeps its data in an external data file (incompatible feature bit 2): \
         not supported"
    )]
    ExternalDataFile,
    #[error("qcow2 image uses extended L2 entries (incompatible feature bit 4): not supported")]
    ExtendedL2,
    #[error("qcow2 image has unknown incompatible feature bits {0:#x}")]
    UnknownIncompatibleFeatures(u64),
    #[error("qcow2 compression type {0} is unknown (0 deflate, 1 zstd)")]
    CompressionType(u8),
    #[error("qcow2 compression type {0} disagrees with incompatible feature bit 3")]
    CompressionBit(u8),
    #[error(
        "qcow2 L1 table of {l1_size} entries is too small for a virtual size of {virtual_size} ({needed} needed)"
    )]
    L1TooSmall {
        l1_size: u64,
        needed: u64,
        virtual_size: u64,
    },
    #[error("qcow2 L1 table of {l1_size} entries is larger than {max}")]
    L1TooLarge { l1_size: u64, max: u64 },
    #[error("qcow2 {what} offset {offset:#x} is not aligned to a cluster")]
    Unaligned { what: &'static str, offset: u64 },
    #[error("qcow2 {what} offset is 0, inside the header")]
    InsideHeader { what: &'static str },
    #[error("qcow2 {what} offset {offset:#x} is beyond any file")]
    OffsetTooLarge { what: &'static str, offset: u64 },
    #[error(
        "qcow2 {what} at {offset:#x}..{end:#x} lies past the end of the file ({file_len} bytes)"
    )]
    PastEnd {
        what: &'static str,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("qcow2 L2 entry {entry:#018x} for guest offset {guest_offset:#x} is invalid")]
    BadL2Entry { guest_offset: u64, entry: u64 },
    #[error("qcow2 version 2 image has a zero-cluster entry for guest offset {guest_offset:#x}")]
    ZeroClusterInV2 { guest_offset: u64 },
    #[error("qcow2 map needs more than {max} extents: too fragmented to convert in bounded memory")]
    MapTooLarge { max: usize },
    #[error("qcow2 clusters stored at {offset:#x} and {other:#x} overlap in the file")]
    Overlap { offset: u64, other: u64 },
    #[error(
        "qcow2 compressed cluster for guest offset {guest_offset:#x} (stored at \
         {host_offset:#x}) is invalid: {reason}"
    )]
    Inflate {
        guest_offset: u64,
        host_offset: u64,
        reason: String,
    },
    #[error("qcow2 file ends at {file_len} bytes, but its {what} at {offset:#x} lies beyond")]
    Truncated {
        what: &'static str,
        offset: u64,
        file_len: u64,
    },
    #[error(
        "qcow2 file needs random access (Range requests or a local copy) at offset \
         {offset:#x}: {reason}"
    )]
    NeedsRandomAccess { offset: u64, reason: String },
    #[error("reading the qcow2 {what} at offset {offset:#x}: {source}")]
    Read {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("writing the virtual disk at offset {offset:#x}: {source}")]
    Sink {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "qcow2 {what} at {offset:#x} ({len} bytes) in the stream differs from the copy the \
         cluster map was read from: the file changed between the reads"
    )]
    MetadataChanged {
        what: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("qcow2 virtual size {virtual_size} is larger than the target's {capacity} bytes")]
    LargerThanTarget { virtual_size: u64, capacity: u64 },
    #[error("qcow2 converter made no progress at file offset {offset:#x} (a bug)")]
    Stalled { offset: u64 },
    #[error("qcow2 converter used after an error")]
    AfterError,
}
