//! The qcow2 header (versions 2 and 3): parsed from the first bytes of the file and checked
//! before anything else is believed, refusing what molar cannot write faithfully.
//!
//! Layout (big-endian): magic, version, backing file offset/size, cluster_bits, virtual size,
//! crypt_method, L1 size and offset, refcount table offset/clusters, snapshot count/offset;
//! version 3 adds incompatible/compatible/autoclear feature bits, refcount_order,
//! header_length and (when header_length > 104) the compression type byte at 104.

use super::Qcow2Error;

/// `QFI\xfb`: the first four bytes of every qcow2 file.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Length of the version 2 header, and the least a version 3 header may be.
const V2_LEN: usize = 72;
const V3_MIN_LEN: usize = 104;
/// The header's length as read before `header_length` is known.
pub(crate) const PROBE_LEN: usize = V2_LEN;

/// Largest virtual size accepted: far beyond any disk molar writes, small enough that sizes
/// and offsets computed from it never overflow.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 46; // 64 TiB

/// Largest L1 table qemu itself opens (`QCOW_MAX_L1_SIZE`, 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;

/// Incompatible feature bits (qcow2 spec, version 3).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// How compressed clusters are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), qemu's default.
    Deflate,
    /// One zstd frame per cluster (`compression_type=zstd`).
    Zstd,
}

/// The fields of a checked header that the reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_size: u32,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub header_length: u32,
    pub compression: Compression,
    /// The dirty bit: refcounts may be stale, which does not matter to a reader of L1/L2.
    pub dirty: bool,
}

/// What parsing a prefix of the file gave.
#[derive(Debug)]
pub(crate) enum Parsed {
    Header(Header),
    /// The header is longer than the bytes given: call again with at least this many.
    NeedBytes(usize),
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one L2 table (8 bytes each; extended L2 is refused).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Guest clusters in the virtual disk (the last one may be partial).
    pub fn guest_clusters(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size())
    }

    /// L1 entries that map the virtual disk (the table may be longer, e.g. after a shrink).
    pub fn l1_needed(&self) -> u64 {
        self.guest_clusters().div_ceil(self.l2_entries())
    }

    pub fn l1_bytes(&self) -> u64 {
        self.l1_needed() * 8
    }

    /// Parses and checks the header from the file's first bytes. `file_len`, when known,
    /// bounds the offsets it names.
    pub(crate) fn parse(b: &[u8], file_len: Option<u64>) -> Result<Parsed, Qcow2Error> {
        if b.len() < PROBE_LEN {
            return Ok(Parsed::NeedBytes(PROBE_LEN));
        }
        if b[0..4] != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        let mut header_length = V2_LEN as u32;
        let mut incompatible = 0;
        let mut compression_type = 0u8;
        if version == 3 {
            if b.len() < V3_MIN_LEN {
                return Ok(Parsed::NeedBytes(V3_MIN_LEN));
            }
            header_length = be32(b, 100);
            if (header_length as usize) < V3_MIN_LEN || !header_length.is_multiple_of(8) {
                return Err(Qcow2Error::HeaderLength(header_length));
            }
            // Bounded below by the cluster size check; a huge value must not make the
            // caller buffer it first.
            if header_length > 1 << 21 {
                return Err(Qcow2Error::HeaderLength(header_length));
            }
            if b.len() < header_length as usize {
                return Ok(Parsed::NeedBytes(header_length as usize));
            }
            incompatible = be64(b, 72);
            if header_length > 104 {
                compression_type = b[104];
            }
        }
        let cluster_bits = be32(b, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::ClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;
        if u64::from(header_length) > cluster_size {
            return Err(Qcow2Error::HeaderLength(header_length));
        }
        let backing_file_offset = be64(b, 8);
        if backing_file_offset != 0 {
            return Err(Qcow2Error::BackingFile {
                offset: backing_file_offset,
            });
        }
        let crypt_method = be32(b, 32);
        if crypt_method != 0 {
            return Err(Qcow2Error::Encrypted(crypt_method));
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::MarkedCorrupt);
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::ExternalDataFile);
        }
        if incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(Qcow2Error::ExtendedL2);
        }
        if incompatible & !INCOMPAT_KNOWN != 0 {
            return Err(Qcow2Error::UnknownIncompatibleFeatures(
                incompatible & !INCOMPAT_KNOWN,
            ));
        }
        let compression = match compression_type {
            0 => Compression::Deflate,
            1 => Compression::Zstd,
            other => return Err(Qcow2Error::CompressionType(other)),
        };
        // The spec ties the bit to a non-default compression type.
        if (incompatible & INCOMPAT_COMPRESSION != 0) != (compression_type != 0) {
            return Err(Qcow2Error::CompressionBit(compression_type));
        }
        let virtual_size = be64(b, 24);
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::VirtualSizeTooLarge {
                size: virtual_size,
                max: MAX_VIRTUAL_SIZE,
            });
        }
        if !virtual_size.is_multiple_of(512) {
            return Err(Qcow2Error::VirtualSizeUnaligned(virtual_size));
        }
        if virtual_size.div_ceil(cluster_size) > u64::from(u32::MAX) {
            return Err(Qcow2Error::VirtualSizeTooLarge {
                size: virtual_size,
                max: u64::from(u32::MAX) << cluster_bits,
            });
        }
        let header = Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size: be32(b, 36),
            l1_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            header_length,
            compression,
            dirty: incompatible & INCOMPAT_DIRTY != 0,
        };
        header.check_l1(file_len)?;
        Ok(Parsed::Header(header))
    }

    fn check_l1(&self, file_len: Option<u64>) -> Result<(), Qcow2Error> {
        let needed = self.l1_needed();
        let l1_size = u64::from(self.l1_size);
        if l1_size < needed {
            return Err(Qcow2Error::L1TooSmall {
                l1_size,
                needed,
                virtual_size: self.virtual_size,
            });
        }
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Qcow2Error::L1TooLarge {
                l1_size,
                max: MAX_L1_BYTES / 8,
            });
        }
        if needed == 0 {
            return Ok(());
        }
        if self.l1_offset == 0 {
            return Err(Qcow2Error::InsideHeader { what: "L1 table" });
        }
        if !self.l1_offset.is_multiple_of(self.cluster_size()) {
            return Err(Qcow2Error::Unaligned {
                what: "L1 table",
                offset: self.l1_offset,
            });
        }
        // The spec bounds offsets to 56 bits; past that the sum could overflow.
        if self.l1_offset >= 1 << 56 {
            return Err(Qcow2Error::OffsetTooLarge {
                what: "L1 table",
                offset: self.l1_offset,
            });
        }
        if let Some(len) = file_len {
            let end = self.l1_offset + self.l1_bytes();
            if end > len {
                return Err(Qcow2Error::PastEnd {
                    what: "L1 table",
                    offset: self.l1_offset,
                    end,
                    file_len: len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A version 3 header for a 1 GiB disk with 64 KiB clusters, L1 at 0x30000.
    pub(crate) fn v3() -> Vec<u8> {
        let mut b = vec![0u8; 112];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    fn parse(b: &[u8]) -> Result<Header, Qcow2Error> {
        match Header::parse(b, None)? {
            Parsed::Header(h) => Ok(h),
            Parsed::NeedBytes(n) => panic!("needs {n} bytes"),
        }
    }

    #[test]
    fn parses_a_v3_header() {
        let h = parse(&v3()).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l1_needed(), 2);
        assert_eq!(h.compression, Compression::Deflate);
    }

    #[test]
    fn asks_for_more_bytes_until_the_header_is_complete() {
        let b = v3();
        assert!(matches!(
            Header::parse(&b[..10], None),
            Ok(Parsed::NeedBytes(72))
        ));
        assert!(matches!(
            Header::parse(&b[..80], None),
            Ok(Parsed::NeedBytes(104))
        ));
        assert!(matches!(
            Header::parse(&b[..104], None),
            Ok(Parsed::NeedBytes(112))
        ));
    }

    #[test]
    fn refuses_what_it_cannot_write() {
        // (offset, bytes written there, what the error must say)
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (0, vec![b'X'], "not a qcow2"),
            (4, 4u32.to_be_bytes().to_vec(), "version 4"),
            (8, 0x200u64.to_be_bytes().to_vec(), "backing file"),
            (32, 2u32.to_be_bytes().to_vec(), "encrypted"),
            (79, vec![1 << 1], "corrupt"),
            (79, vec![1 << 2], "external data file"),
            (79, vec![1 << 4], "extended L2"),
            (79, vec![1 << 5], "unknown incompatible"),
            (79, vec![1 << 3], "feature bit 3"),
            (104, vec![7], "compression type 7"),
            (20, 22u32.to_be_bytes().to_vec(), "cluster_bits 22"),
            (20, 8u32.to_be_bytes().to_vec(), "cluster_bits 8"),
            (36, 1u32.to_be_bytes().to_vec(), "L1 table of 1"),
            (24, u64::MAX.to_be_bytes().to_vec(), "virtual size"),
            (24, 1000u64.to_be_bytes().to_vec(), "multiple of 512"),
            (40, 0x30001u64.to_be_bytes().to_vec(), "not aligned"),
            (40, 0u64.to_be_bytes().to_vec(), "inside the header"),
            (100, 100u32.to_be_bytes().to_vec(), "header_length"),
        ];
        for (at, bytes, want) in cases {
            let mut b = v3();
            b[at..at + bytes.len()].copy_from_slice(&bytes);
            let err = parse(&b).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn dirty_images_are_read() {
        let mut b = v3();
        b[79] = 1;
        assert!(parse(&b).unwrap().dirty);
    }

    #[test]
    fn zstd_needs_its_bit() {
        let mut b = v3();
        b[79] = 1 << 3;
        b[104] = 1;
        assert_eq!(parse(&b).unwrap().compression, Compression::Zstd);
    }

    #[test]
    fn l1_past_the_end_of_the_file_is_refused() {
        let err = Header::parse(&v3(), Some(0x30008)).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
    }
}
