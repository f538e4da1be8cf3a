//! [`DirectSink`]: the disk an image is written to, as a [`DiskSink`] over the shared
//! `O_DIRECT` writer ([`crate::directio::Writer`]).
//!
//! Writes arrive in any order (qcow2 clusters) or in sequence (raw images); contiguous ones
//! are gathered into 4 MiB aligned buffers, and the writer keeps several requests in flight
//! while the caller fills the next. Edges that are not aligned to the device's logical block
//! are read, merged and written back once the writes in flight are done (a qcow2 image with
//! 512-byte clusters on a 4 KiB-sector disk; a raw image whose size is not a whole number of
//! blocks is padded with zeros instead, up to the device's end).
//!
//! Zeros: when the device is known to read zeros (the agent's own verified erase or discard
//! in this boot, never a caller's word), [`DiskSink::zeros`] ranges and all-zero 64 KiB blocks of the data
//! are not written; otherwise they are written like any data.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub use super::qcow2::DiskSink;
use crate::directio::{self, AlignedBuf, CHUNK, DirectIoError, REQUESTS_IN_FLIGHT, Writer};

/// Granularity of zero-run skipping.
pub const ZERO_BLOCK: usize = 64 << 10;

/// What the sink did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Bytes written to the device.
    pub written: u64,
    /// Bytes of zeros not written (the device reads zeros).
    pub zeros_skipped: u64,
    /// One past the highest byte placed (data or zeros).
    pub end: u64,
}

/// Contiguous bytes being gathered: `buf[..len]` goes to `start` (aligned).
struct Pending {
    buf: AlignedBuf,
    start: u64,
    len: usize,
}

/// The image's target: a block device (or, in tests, a file) written with direct I/O.
pub struct DirectSink {
    writer: Writer,
    capacity: u64,
    align: u64,
    skip_zeros: bool,
    cur: Option<Pending>,
    stats: SinkStats,
}

fn too_large(offset: u64, len: u64, capacity: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "the image needs byte {} but the target has {capacity} bytes",
            offset + len
        ),
    )
}

fn io_err(e: DirectIoError) -> io::Error {
    io::Error::other(e.to_string())
}

impl DirectSink {
    /// A sink over `file` (opened by [`directio::open`]) of `capacity` bytes, aligned to
    /// `align` (its logical block size; at least 512).
    pub fn new(
        file: File,
        capacity: u64,
        align: u64,
        skip_zeros: bool,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> DirectSink {
        let align = align.clamp(512, directio::ALIGN as u64);
        DirectSink {
            writer: Writer::new(Arc::new(file), REQUESTS_IN_FLIGHT + 2, progress),
            capacity,
            align,
            skip_zeros,
            cur: None,
            stats: SinkStats::default(),
        }
    }

    /// Opens `path` exclusively for direct I/O and sizes it (a block device's size and logical
    /// block; a file's length, or `file_capacity` for a file that may grow, in tests).
    pub fn open(
        path: &std::path::Path,
        skip_zeros: bool,
        file_capacity: Option<u64>,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> io::Result<DirectSink> {
        let file = directio::open(path)?;
        let (capacity, align) = match crate::hw::block::size_bytes(&file) {
            Ok(size) => (
                size,
                crate::hw::block::logical_block_size(&file).map_or(512, u64::from),
            ),
            Err(_) => (file_capacity.unwrap_or(file.metadata()?.len()), 512),
        };
        Ok(DirectSink::new(file, capacity, align, skip_zeros, progress))
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The writes that carry the non-zero blocks of `buf[..len]` (all of it unless zeros may
    /// be skipped).
    fn writes_for(&mut self, buf: &AlignedBuf, start: u64, len: usize) -> Vec<(usize, u64, usize)> {
        if !self.skip_zeros {
            return vec![(0, start, len)];
        }
        let data = &buf.as_slice()[..len];
        let mut writes: Vec<(usize, u64, usize)> = Vec::new();
        let mut at = 0;
        while at < len {
            let n = ZERO_BLOCK.min(len - at);
            if is_zero(&data[at..at + n]) {
                self.stats.zeros_skipped += n as u64;
            } else {
                match writes.last_mut() {
                    Some((b, _, l)) if *b + *l == at => *l += n,
                    _ => writes.push((at, start + at as u64, n)),
                }
            }
            at += n;
        }
        writes
    }

    /// Reads the aligned block at `block` into `buf[at..at + align]` once nothing is in
    /// flight (the block may be part of a write not yet done).
    fn read_block(&mut self, buf: &mut AlignedBuf, at: usize, block: u64) -> io::Result<()> {
        self.writer.drain().map_err(io_err)?;
        let a = self.align as usize;
        let dst = &mut buf.as_mut_slice()[at..at + a];
        let mut bounce = AlignedBuf::zeroed(a);
        let mut got = 0;
        while got < a {
            match self
                .writer
                .file()
                .read_at(&mut bounce.as_mut_slice()[got..], block + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        bounce.as_mut_slice()[got..].fill(0);
        dst.copy_from_slice(bounce.as_slice());
        Ok(())
    }

    /// Hands the pending buffer to the writer, its tail completed to a whole block.
    fn flush(&mut self) -> io::Result<()> {
        let Some(Pending {
            mut buf,
            start,
            mut len,
        }) = self.cur.take()
        else {
            return Ok(());
        };
        let a = self.align as usize;
        if len % a != 0 {
            let tail = len - len % a;
            let end = start + len as u64;
            if end >= self.capacity {
                // Nothing of the device follows: pad.
                buf.as_mut_slice()[len..tail + a].fill(0);
            } else {
                let keep = buf.as_slice()[tail..len].to_vec();
                self.read_block(&mut buf, tail, start + tail as u64)?;
                buf.as_mut_slice()[tail..len].copy_from_slice(&keep);
            }
            len = tail + a;
        }
        let writes = self.writes_for(&buf, start, len);
        self.writer.submit(buf, writes).map_err(io_err)
    }

    /// Flushes, waits for every write and fsyncs.
    pub fn finish(mut self) -> io::Result<SinkStats> {
        self.flush()?;
        let written = self.writer.finish().map_err(io_err)?;
        self.stats.written = written;
        Ok(self.stats)
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            written: self.writer.written(),
            ..self.stats
        }
    }
}

fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    let zero = words
        .by_ref()
        .all(|c| <[u8; 16]>::try_from(c).is_ok_and(|a| u128::from_ne_bytes(a) == 0));
    zero && words.remainder().iter().all(|x| *x == 0)
}

impl DiskSink for DirectSink {
    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        if offset + data.len() as u64 > self.capacity {
            return Err(too_large(offset, data.len() as u64, self.capacity));
        }
        self.stats.end = self.stats.end.max(offset + data.len() as u64);
        while !data.is_empty() {
            let contiguous = self
                .cur
                .as_ref()
                .is_some_and(|p| p.start + p.len as u64 == offset && p.len < CHUNK);
            if !contiguous {
                self.flush()?;
                let mut buf = self.writer.buffer().map_err(io_err)?;
                let head = offset % self.align;
                let start = offset - head;
                if head != 0 {
                    // Part of this block may hold an earlier write: read it even when the
                    // device reads zeros.
                    self.read_block(&mut buf, 0, start)?;
                }
                self.cur = Some(Pending {
                    buf,
                    start,
                    len: head as usize,
                });
            }
            let Some(p) = self.cur.as_mut() else {
                continue;
            };
            let n = (CHUNK - p.len).min(data.len());
            p.buf.as_mut_slice()[p.len..p.len + n].copy_from_slice(&data[..n]);
            p.len += n;
            offset += n as u64;
            data = &data[n..];
            if p.len == CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if offset + len > self.capacity {
            return Err(too_large(offset, len, self.capacity));
        }
        if self.skip_zeros {
            self.stats.zeros_skipped += len;
            self.stats.end = self.stats.end.max(offset + len);
            return Ok(());
        }
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZEROS.len() as u64) as usize;
            self.write_at(at, &ZEROS[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw image of 4096·k + 512 bytes on a 4 KiB-block device, ending before the device's
    /// end: the last partial block is read, merged and written back. This deadlocked while
    /// the writer did not count the buffers the sink held; it must finish, and keep the
    /// device's bytes after the image.
    #[test]
    fn a_raw_tail_inside_a_4k_block_is_merged_without_deadlock() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("disk");
        let capacity = 64u64 << 20;
        std::fs::write(&path, vec![0xa5u8; capacity as usize]).unwrap();
        let len = 4096 * 10_000 + 512;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let d = data.clone();
        std::thread::spawn(move || {
            let r = (|| {
                let file = directio::open(&p)?;
                let mut sink = DirectSink::new(file, capacity, 4096, false, Arc::new(|_| {}));
                let mut at = 0u64;
                for piece in d.chunks(1 << 20) {
                    sink.write_at(at, piece)?;
                    at += piece.len() as u64;
                }
                sink.finish()
            })();
            let _ = tx.send(r);
        });
        let stats = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the sink deadlocked")
            .unwrap();
        assert_eq!(stats.written, 4096 * 10_001);
        let got = std::fs::read(&path).unwrap();
        assert!(got[..len] == data[..], "the image's bytes");
        assert!(
            got[len..].iter().all(|&b| b == 0xa5),
            "the device after the image"
        );
    }
}
