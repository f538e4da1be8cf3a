//! [`Verifier`]: the metadata a [`super::Layout`] was read from (header, L1, L2 tables,
//! through separate Range requests that nobody hashes) must be byte for byte what the
//! sequential, hashed stream carries at the same offsets. Otherwise a server, a mirror that
//! changed between the reads, or anyone on a plain http:// path could rearrange where the
//! clusters land while the file's checksum still matches.
//!
//! Each read is kept as (offset, length, sha256): about 32 bytes per read, whatever its size
//! (L2 tables total ~128 KiB per GiB of virtual size). The converter feeds every byte of the
//! stream through [`Verifier::feed`]; a range whose hash differs fails at its last byte, and
//! a range the stream never completed fails at [`Verifier::finish`].

use sha2::{Digest as _, Sha256};

use super::Qcow2Error;

/// One metadata read: where, how long, its digest.
#[derive(Debug, Clone)]
pub(crate) struct MetaRead {
    what: &'static str,
    offset: u64,
    len: u64,
    digest: [u8; 32],
}

impl MetaRead {
    pub(crate) fn new(what: &'static str, offset: u64, bytes: &[u8]) -> MetaRead {
        MetaRead {
            what,
            offset,
            len: bytes.len() as u64,
            digest: Sha256::digest(bytes).into(),
        }
    }

    fn end(&self) -> u64 {
        self.offset + self.len
    }

    fn error(&self) -> Qcow2Error {
        Qcow2Error::MetadataChanged {
            what: self.what,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Re-hashes the [`MetaRead`] ranges as the stream passes them.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    /// Sorted by offset; `next` is the first not yet started.
    reads: Vec<MetaRead>,
    next: usize,
    /// Started, not yet complete (reads may overlap).
    active: Vec<(MetaRead, Sha256)>,
}

impl Verifier {
    pub(crate) fn new(mut reads: Vec<MetaRead>) -> Verifier {
        reads.sort_by_key(|r| r.offset);
        Verifier {
            reads,
            next: 0,
            active: Vec::new(),
        }
    }

    /// `chunk` is the stream's bytes from file offset `pos`.
    pub(crate) fn feed(&mut self, pos: u64, chunk: &[u8]) -> Result<(), Qcow2Error> {
        let end = pos + chunk.len() as u64;
        while let Some(r) = self.reads.get(self.next) {
            if r.offset >= end {
                break;
            }
            if r.offset < pos {
                // Started before bytes we saw: cannot happen when fed from offset 0.
                return Err(r.error());
            }
            self.active.push((r.clone(), Sha256::new()));
            self.next += 1;
        }
        let mut i = 0;
        while i < self.active.len() {
            let (r, h) = &mut self.active[i];
            let from = r.offset.max(pos);
            let to = r.end().min(end);
            if to > from {
                h.update(&chunk[(from - pos) as usize..(to - pos) as usize]);
            }
            if r.end() <= end {
                let (r, h) = self.active.swap_remove(i);
                if <[u8; 32]>::from(h.finalize()) != r.digest {
                    return Err(r.error());
                }
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Every range was seen whole; `file_len` is where the stream ended.
    pub(crate) fn finish(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let missing = self
            .active
            .iter()
            .map(|(r, _)| r)
            .chain(&self.reads[self.next..])
            .min_by_key(|r| r.offset);
        match missing {
            None => Ok(()),
            Some(r) => Err(Qcow2Error::Truncated {
                what: r.what,
                offset: r.offset,
                file_len,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn verifier(f: &[u8]) -> Verifier {
        Verifier::new(vec![
            MetaRead::new("L2 table", 4096, &f[4096..8192]),
            MetaRead::new("header", 0, &f[..512]),
            MetaRead::new("L1 table", 300, &f[300..700]),
        ])
    }

    #[test]
    fn same_bytes_in_any_chunking_pass() {
        let f = file();
        for step in [1, 7, 512, 4096, 10_000] {
            let mut v = verifier(&f);
            for (k, c) in f.chunks(step).enumerate() {
                v.feed((k * step) as u64, c).unwrap();
            }
            v.finish(f.len() as u64).unwrap();
        }
    }

    #[test]
    fn one_changed_byte_fails_naming_the_table() {
        let f = file();
        let mut g = f.clone();
        g[5000] ^= 1;
        let mut v = verifier(&f);
        let e = v.feed(0, &g).unwrap_err();
        assert!(matches!(
            e,
            Qcow2Error::MetadataChanged {
                what: "L2 table",
                offset: 4096,
                len: 4096
            }
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_range_fails_at_finish() {
        let f = file();
        let mut v = verifier(&f);
        v.feed(0, &f[..6000]).unwrap();
        let e = v.finish(6000).unwrap_err();
        assert!(
            matches!(e, Qcow2Error::Truncated { offset: 4096, .. }),
            "{e}"
        );
    }
}
