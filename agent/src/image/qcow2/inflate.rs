//! Decompression of one compressed cluster: raw deflate (qemu's default) or a zstd frame.
//!
//! The stored range of a compressed cluster is rounded up to 512-byte sectors, so the input
//! may carry bytes of the next cluster after the end of the stream; the decoder stops at the
//! stream's end and says how much input it used. The output must be exactly one cluster, or
//! at least the part inside the virtual disk for the last cluster; a stream that produces
//! more than a cluster is refused (qemu would cut it short silently).

use flate2::{Decompress, FlushDecompress};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::header::Compression;

/// zstd frames of qcow2 clusters need at most a 2 MiB window; a hostile frame must not make
/// the decoder allocate more than this.
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

/// Decoder state and one cluster of output, reused for every cluster.
pub(crate) struct Inflater {
    deflate: Decompress,
    zstd: Option<Decoder<'static>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

/// A decompressed cluster.
pub(crate) struct Inflated<'a> {
    /// The first `want` bytes of the cluster.
    pub data: &'a [u8],
    /// Input bytes the stream used.
    pub consumed: usize,
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            deflate: Decompress::new(false),
            zstd: None,
            out: Vec::new(),
        }
    }

    /// Decompresses one cluster of `cluster_size` bytes from `input`; `want` (at most the
    /// cluster size) is how much of it lies inside the virtual disk. The error says what
    /// was wrong, for the caller to name the cluster.
    pub fn cluster(
        &mut self,
        compression: Compression,
        input: &[u8],
        cluster_size: usize,
        want: usize,
    ) -> Result<Inflated<'_>, String> {
        // One byte more than a cluster shows a stream that does not stop at one cluster.
        self.out.resize(cluster_size + 1, 0);
        let (produced, consumed) = match compression {
            Compression::Deflate => self.deflate(input)?,
            Compression::Zstd => self.zstd(input, want)?,
        };
        if produced > cluster_size {
            return Err(format!(
                "it inflates to more than one cluster ({cluster_size} bytes)"
            ));
        }
        if produced < want {
            return Err(format!(
                "it inflates to {produced} bytes, short of the cluster's {want}"
            ));
        }
        Ok(Inflated {
            data: &self.out[..want],
            consumed,
        })
    }

    fn deflate(&mut self, input: &[u8]) -> Result<(usize, usize), String> {
        self.deflate.reset(false);
        // Without the end of the stream, the output is what the input gave before it ran
        // out: accepted only if it fills the cluster (the caller's checks), as qemu does.
        self.deflate
            .decompress(input, &mut self.out, FlushDecompress::Finish)
            .map_err(|e| format!("bad deflate data: {e}"))?;
        Ok((
            self.deflate.total_out() as usize,
            self.deflate.total_in() as usize,
        ))
    }

    fn zstd(&mut self, input: &[u8], want: usize) -> Result<(usize, usize), String> {
        let decoder = match &mut self.zstd {
            Some(d) => {
                d.reinit()
                    .map_err(|e| format!("resetting the zstd decoder: {e}"))?;
                d
            }
            None => {
                let mut d = Decoder::new().map_err(|e| format!("creating a zstd decoder: {e}"))?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|e| format!("configuring the zstd decoder: {e}"))?;
                self.zstd.insert(d)
            }
        };
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(&mut self.out[..]);
        loop {
            let (in_before, out_before) = (inb.pos(), outb.pos());
            let hint = decoder
                .run(&mut inb, &mut outb)
                .map_err(|e| format!("bad zstd data: {e}"))?;
            if hint == 0 && outb.pos() >= want {
                break; // a frame ended with the cluster complete
            }
            if outb.pos() == outb.capacity() || (inb.pos() == in_before && outb.pos() == out_before)
            {
                break;
            }
        }
        Ok((outb.pos(), inb.pos()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;

    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_one_cluster_and_says_how_much_input_it_used() {
        let cluster: Vec<u8> = (0..4096u32).map(|i| (i / 7) as u8).collect();
        let mut input = deflated(&cluster);
        let len = input.len();
        input.extend_from_slice(&[0xaa; 300]); // the next cluster's bytes
        let mut inf = Inflater::new();
        let out = inf
            .cluster(Compression::Deflate, &input, 4096, 4096)
            .unwrap();
        assert_eq!(out.data, &cluster[..]);
        assert_eq!(out.consumed, len);
        let z = zstd::bulk::compress(&cluster, 3).unwrap();
        let zlen = z.len();
        let mut input = z;
        input.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]);
        let out = inf.cluster(Compression::Zstd, &input, 4096, 4096).unwrap();
        assert_eq!(out.data, &cluster[..]);
        assert_eq!(out.consumed, zlen);
    }

    #[test]
    fn refuses_streams_of_the_wrong_length() {
        let mut inf = Inflater::new();
        let long = deflated(&[1u8; 5000]);
        let err = inf
            .cluster(Compression::Deflate, &long, 4096, 4096)
            .err()
            .unwrap();
        assert!(err.contains("more than one cluster"), "{err}");
        let short = deflated(&[1u8; 3000]);
        let err = inf
            .cluster(Compression::Deflate, &short, 4096, 4096)
            .err()
            .unwrap();
        assert!(err.contains("short"), "{err}");
        // The last cluster of a disk may be cut at the virtual size.
        assert!(
            inf.cluster(Compression::Deflate, &short, 4096, 2560)
                .is_ok()
        );
        let err = inf
            .cluster(Compression::Deflate, &[0xff; 64], 4096, 4096)
            .err()
            .unwrap();
        assert!(err.contains("bad deflate"), "{err}");
        let err = inf
            .cluster(Compression::Zstd, &[0xff; 64], 4096, 4096)
            .err()
            .unwrap();
        assert!(err.contains("bad zstd"), "{err}");
        let z = zstd::bulk::compress(&[3u8; 5000], 3).unwrap();
        let err = inf
            .cluster(Compression::Zstd, &z, 4096, 4096)
            .err()
            .unwrap();
        assert!(err.contains("more than one cluster"), "{err}");
    }
}
