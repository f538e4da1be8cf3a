//! Writing regions of a block device (or file) with `O_DIRECT` and several requests in
//! flight, from zeros, random data or any reader: the erase engine's overwrite and the
//! image writer's sink.
//!
//! Why this shape: with `O_DIRECT` each `pwrite` goes to the device and waits for it, so a
//! single writer leaves the device queue empty between requests. [`REQUESTS_IN_FLIGHT`]
//! threads each keep one [`CHUNK`] request outstanding, which keeps the queue fed without
//! the page cache (that is how molar's overwrite beats `dd bs=4M oflag=direct`, see
//! `agent/benches/erase_bench.rs`). Zero passes share one read-only buffer; random passes
//! fill a buffer per writer; a reader is read sequentially by the calling thread into a
//! small pool of buffers that the writers drain, so memory stays bounded
//! (`(REQUESTS_IN_FLIGHT + 1) × CHUNK`) whatever the size of the data.
//!
//! [`Writer`] is the same machinery for a caller that places data itself (the image
//! writer's `DiskSink`: qcow2 clusters land out of order, zero runs are skipped): it hands
//! out aligned buffers from a fixed pool, takes them back filled with a list of
//! (buffer offset, device offset, length) writes, and writes them on its own threads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

/// Size of one write request.
pub const CHUNK: usize = 4 << 20;
/// Write requests in flight per device.
pub const REQUESTS_IN_FLIGHT: usize = 4;
/// Alignment of buffers, and of the padded tail of reader data.
pub const ALIGN: usize = 4096;

/// Why a direct write failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectIoError {
    #[error("writing at offset {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading the data source at byte {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing: {0}")]
    Sync(#[source] io::Error),
    #[error("the data source is longer than the {capacity} bytes of the target")]
    SourceTooLong { capacity: u64 },
    #[error("cancelled after {done} bytes")]
    Cancelled { done: u64 },
}

/// What to write.
pub enum Source<'a> {
    Zeros,
    /// Fast non-cryptographic random data (overwrite passes before the final zeros).
    Random,
    /// Data read in order; it may end before the regions do. The last piece is padded with
    /// zeros to [`ALIGN`] (within the region), because `O_DIRECT` writes whole blocks.
    Reader(&'a mut (dyn Read + Send)),
}

/// A heap buffer whose usable part is aligned for `O_DIRECT`.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, off, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// One aligned `CHUNK` of zeroes shared by every writer of every device.
fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| AlignedBuf::zeroed(CHUNK)).as_slice()
}

/// Open a device (or file) read-only for direct I/O, without `O_EXCL` (reading a disk in use
/// is harmless); falls back to buffered reads where `O_DIRECT` is refused (`EINVAL`).
pub fn open_read(path: &Path) -> io::Result<File> {
    let open = |flags: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
}

/// Open a device read-write for direct I/O, exclusively: on a block device `O_EXCL` makes
/// the kernel refuse (`EBUSY`) if it is mounted, held by dm/md, or opened exclusively by
/// anyone else. Falls back to buffered I/O where `O_DIRECT` is refused (`EINVAL`: tmpfs
/// files in tests, some virtual devices).
pub fn open(path: &Path) -> io::Result<File> {
    let open = |direct: bool| {
        let mut flags = libc::O_EXCL | libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false),
        r => r,
    }
}

/// The `CHUNK`-sized pieces of a list of regions, by index.
struct ChunkList<'a> {
    regions: &'a [(u64, u64)],
    /// Index of the first chunk of each region, plus the total at the end.
    first: Vec<u64>,
}

impl<'a> ChunkList<'a> {
    fn new(regions: &'a [(u64, u64)]) -> ChunkList<'a> {
        let mut first = Vec::with_capacity(regions.len() + 1);
        let mut n = 0;
        for (_, len) in regions {
            first.push(n);
            n += len.div_ceil(CHUNK as u64);
        }
        first.push(n);
        ChunkList { regions, first }
    }
    fn len(&self) -> u64 {
        self.first.last().copied().unwrap_or(0)
    }
    /// (offset, length) of chunk `i`.
    fn get(&self, i: u64) -> Option<(u64, u64)> {
        if i >= self.len() {
            return None;
        }
        // The region whose first chunk is the last one ≤ i.
        let r = self.first.partition_point(|f| *f <= i) - 1;
        let (start, len) = *self.regions.get(r)?;
        let off = start + (i - self.first[r]) * CHUNK as u64;
        Some((off, (CHUNK as u64).min(start + len - off)))
    }
}

/// The first write error of a run; the lowest offset wins, as it says how far the device
/// got.
#[derive(Default)]
struct FirstError(Mutex<Option<(u64, io::Error)>>);

impl FirstError {
    fn set(&self, offset: u64, e: io::Error) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|(o, _)| offset < *o) {
            *g = Some((offset, e));
        }
    }
    fn take(self) -> Option<DirectIoError> {
        self.0
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(offset, source)| DirectIoError::Write { offset, source })
    }
}

/// Write `source` over `regions` ((offset, length) pairs) of `file`, then flush it.
/// `progress` is called from the writer threads with the bytes each request completed.
/// Returns the bytes of data written (for a reader, without the padding of its tail).
pub fn write_regions(
    file: &File,
    regions: &[(u64, u64)],
    source: Source<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<u64, DirectIoError> {
    let written = match source {
        Source::Zeros => generated(file, regions, false, progress, cancel)?,
        Source::Random => generated(file, regions, true, progress, cancel)?,
        Source::Reader(r) => from_reader(file, regions, r, progress, cancel)?,
    };
    file.sync_all().map_err(DirectIoError::Sync)?;
    Ok(written)
}

fn generated(
    file: &File,
    regions: &[(u64, u64)],
    random: bool,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<u64, DirectIoError> {
    // Work items are CHUNK pieces of the regions, numbered across regions and computed on
    // demand (a list of them would take 80 MB for a 20 TB disk).
    let items = ChunkList::new(regions);
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_err = FirstError::default();
    let writers = (REQUESTS_IN_FLIGHT as u64).min(items.len()).max(1) as usize;
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                // Zero passes share one read-only buffer for the whole process; only
                // random passes need a buffer per writer.
                let mut own = random.then(|| AlignedBuf::zeroed(CHUNK));
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                loop {
                    if stop.load(Ordering::Relaxed) || cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((off, len)) = items.get(i) else {
                        return;
                    };
                    let data: &[u8] = match own.as_mut() {
                        Some(buf) => {
                            let d = &mut buf.as_mut_slice()[..len as usize];
                            rng.fill_bytes(d);
                            d
                        }
                        None => &zeros()[..len as usize],
                    };
                    if let Err(e) = file.write_all_at(data, off) {
                        stop.store(true, Ordering::Relaxed);
                        first_err.set(off, e);
                        return;
                    }
                    done.fetch_add(len, Ordering::Relaxed);
                    progress(len);
                }
            });
        }
    });
    if let Some(e) = first_err.take() {
        return Err(e);
    }
    let done = done.into_inner();
    if cancel.is_cancelled() {
        return Err(DirectIoError::Cancelled { done });
    }
    Ok(done)
}

/// Read until `buf` is full or the reader ends; the bytes read.
pub(crate) fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn from_reader(
    file: &File,
    regions: &[(u64, u64)],
    reader: &mut (dyn Read + Send),
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<u64, DirectIoError> {
    let items = ChunkList::new(regions);
    let stop = AtomicBool::new(false);
    let first_err = FirstError::default();
    // Buffers go round: free → filled by this thread → written by a writer → free.
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..=REQUESTS_IN_FLIGHT {
        let _ = free_tx.send(AlignedBuf::zeroed(CHUNK));
    }
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, usize, AlignedBuf)>(REQUESTS_IN_FLIGHT);
    let work_rx = Mutex::new(work_rx);
    let mut read = 0u64;
    let mut ended = false;
    let produced: Result<(), DirectIoError> = std::thread::scope(|s| {
        for _ in 0..REQUESTS_IN_FLIGHT {
            let free_tx = free_tx.clone();
            let (work_rx, stop, first_err) = (&work_rx, &stop, &first_err);
            s.spawn(move || {
                loop {
                    let job = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((off, len, buf)) = job else {
                        return;
                    };
                    if !stop.load(Ordering::Relaxed) {
                        match file.write_all_at(&buf.as_slice()[..len], off) {
                            Ok(()) => progress(len as u64),
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                first_err.set(off, e);
                            }
                        }
                    }
                    let _ = free_tx.send(buf);
                }
            });
        }
        let mut i = 0;
        let r = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if cancel.is_cancelled() {
                break Err(DirectIoError::Cancelled { done: read });
            }
            let Some((off, room)) = items.get(i) else {
                break Ok(());
            };
            i += 1;
            let Ok(mut buf) = free_rx.recv() else {
                break Ok(());
            };
            let room = room as usize;
            let n = match fill(reader, &mut buf.as_mut_slice()[..room]) {
                Ok(n) => n,
                Err(source) => {
                    break Err(DirectIoError::Read {
                        offset: read,
                        source,
                    });
                }
            };
            read += n as u64;
            if n == 0 {
                ended = true;
                break Ok(());
            }
            let mut len = n;
            if n < room {
                // The data ended inside this chunk: pad to a whole block with zeros.
                ended = true;
                len = n.next_multiple_of(ALIGN).min(room);
                buf.as_mut_slice()[n..len].fill(0);
            }
            if work_tx.send((off, len, buf)).is_err() {
                break Ok(());
            }
            if ended {
                break Ok(());
            }
        };
        drop(work_tx);
        r
    });
    if let Some(e) = first_err.take() {
        return Err(e);
    }
    produced?;
    if !ended {
        let mut probe = [0u8; 1];
        match fill(reader, &mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(DirectIoError::SourceTooLong {
                    capacity: regions.iter().map(|r| r.1).sum(),
                });
            }
            Err(source) => {
                return Err(DirectIoError::Read {
                    offset: read,
                    source,
                });
            }
        }
    }
    Ok(read)
}

/// One filled buffer and the writes to make from it: (offset in the buffer, offset on the
/// device, length), each aligned for direct I/O by the caller.
struct Job {
    buf: AlignedBuf,
    writes: Vec<(usize, u64, usize)>,
}

/// Writer threads over a fixed pool of [`CHUNK`] buffers: memory is `buffers × CHUNK`
/// whatever is written, and [`REQUESTS_IN_FLIGHT`] writes are outstanding while the caller
/// fills the next buffer.
pub struct Writer {
    file: Arc<File>,
    jobs: Option<mpsc::SyncSender<Job>>,
    free: mpsc::Receiver<AlignedBuf>,
    spare: Vec<AlignedBuf>,
    buffers: usize,
    /// Buffers the caller holds (handed out, not yet submitted or given back).
    held: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    first_err: Arc<FirstError>,
    written: Arc<AtomicU64>,
}

impl Writer {
    /// `buffers` (at least `REQUESTS_IN_FLIGHT + 1`) buffers of [`CHUNK`] bytes; `progress`
    /// is called from the writer threads with the bytes each write completed.
    pub fn new(
        file: Arc<File>,
        buffers: usize,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Writer {
        let buffers = buffers.max(REQUESTS_IN_FLIGHT + 1);
        let (free_tx, free) = mpsc::channel::<AlignedBuf>();
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(REQUESTS_IN_FLIGHT);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let stop = Arc::new(AtomicBool::new(false));
        let first_err = Arc::new(FirstError::default());
        let written = Arc::new(AtomicU64::new(0));
        let threads = (0..REQUESTS_IN_FLIGHT)
            .map(|_| {
                let (file, jobs_rx, free_tx) = (file.clone(), jobs_rx.clone(), free_tx.clone());
                let (stop, first_err) = (stop.clone(), first_err.clone());
                let (written, progress) = (written.clone(), progress.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = jobs_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(Job { buf, writes }) = job else {
                            return;
                        };
                        for (at, off, len) in writes {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            match file.write_all_at(&buf.as_slice()[at..at + len], off) {
                                Ok(()) => {
                                    written.fetch_add(len as u64, Ordering::Relaxed);
                                    progress(len as u64);
                                }
                                Err(e) => {
                                    stop.store(true, Ordering::Relaxed);
                                    first_err.set(off, e);
                                }
                            }
                        }
                        let _ = free_tx.send(buf);
                    }
                })
            })
            .collect();
        Writer {
            file,
            jobs: Some(jobs_tx),
            free,
            spare: (0..buffers).map(|_| AlignedBuf::zeroed(CHUNK)).collect(),
            buffers,
            held: 0,
            threads,
            stop,
            first_err,
            written,
        }
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A free buffer (its content is whatever it held last), waiting for a write to finish
    /// when all are in use.
    pub fn buffer(&mut self) -> Result<AlignedBuf, DirectIoError> {
        self.check()?;
        let b = match self.spare.pop() {
            Some(b) => b,
            None => self.free.recv().map_err(|_| self.dead())?,
        };
        self.held += 1;
        Ok(b)
    }

    /// Gives a buffer back unused.
    pub fn give_back(&mut self, buf: AlignedBuf) {
        self.held = self.held.saturating_sub(1);
        self.spare.push(buf);
    }

    /// Queues the writes of `buf` (see [`Job`]); returns at once unless
    /// [`REQUESTS_IN_FLIGHT`] jobs are queued already.
    pub fn submit(
        &mut self,
        buf: AlignedBuf,
        writes: Vec<(usize, u64, usize)>,
    ) -> Result<(), DirectIoError> {
        self.check()?;
        self.held = self.held.saturating_sub(1);
        if writes.is_empty() {
            self.spare.push(buf);
            return Ok(());
        }
        let jobs = self.jobs.as_ref().ok_or_else(|| self.dead())?;
        jobs.send(Job { buf, writes }).map_err(|_| self.dead())
    }

    /// Waits until every queued write is done (every buffer the caller does not hold is
    /// back): what was written can be read back, or partly overwritten by a
    /// read-modify-write.
    pub fn drain(&mut self) -> Result<(), DirectIoError> {
        while self.spare.len() + self.held < self.buffers {
            match self.free.recv() {
                Ok(b) => self.spare.push(b),
                Err(_) => return Err(self.dead()),
            }
        }
        self.check()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits for every write, stops the threads and flushes the file; the bytes written.
    pub fn finish(mut self) -> Result<u64, DirectIoError> {
        let drained = self.drain();
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        drained?;
        self.file.sync_all().map_err(DirectIoError::Sync)?;
        Ok(self.written())
    }

    fn check(&self) -> Result<(), DirectIoError> {
        if !self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let g = self.first_err.0.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some((offset, e)) => Err(DirectIoError::Write {
                offset: *offset,
                source: io::Error::new(e.kind(), e.to_string()),
            }),
            None => Ok(()),
        }
    }

    fn dead(&self) -> DirectIoError {
        self.check().err().unwrap_or(DirectIoError::Write {
            offset: 0,
            source: io::Error::other("writer threads ended"),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn file_of(len: u64, byte: u8) -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), vec![byte; len as usize]).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        (t, f)
    }

    #[test]
    fn chunk_list_covers_regions_exactly() {
        let c = CHUNK as u64;
        let regions = [(0, 2 * c + 512), (10 * c, 0), (20 * c, c)];
        let l = ChunkList::new(&regions);
        assert_eq!(l.len(), 4);
        assert_eq!(l.get(0), Some((0, c)));
        assert_eq!(l.get(1), Some((c, c)));
        assert_eq!(l.get(2), Some((2 * c, 512)));
        assert_eq!(l.get(3), Some((20 * c, c)));
        assert_eq!(l.get(4), None);
        assert_eq!(ChunkList::new(&[]).get(0), None);
        let huge = [(0u64, 20u64 << 40)];
        let l = ChunkList::new(&huge);
        assert_eq!(l.len(), (20u64 << 40) / c);
        assert_eq!(l.get(l.len() - 1), Some(((20u64 << 40) - c, c)));
    }

    #[test]
    fn zeros_and_random_cover_exactly_the_regions() {
        let (t, f) = file_of(12 * MIB, 0xa5);
        let seen = AtomicU64::new(0);
        let regions = [(MIB, 5 * MIB + 512), (8 * MIB, MIB)];
        let cancel = CancellationToken::new();
        let n = write_regions(
            &f,
            &regions,
            Source::Random,
            &|k| {
                seen.fetch_add(k, Ordering::Relaxed);
            },
            &cancel,
        )
        .unwrap();
        assert_eq!(n, 6 * MIB + 512);
        assert_eq!(seen.load(Ordering::Relaxed), n);
        let d = std::fs::read(t.path()).unwrap();
        let m = MIB as usize;
        assert!(d[..m].iter().all(|b| *b == 0xa5));
        assert!(d[m..6 * m + 512].iter().any(|b| *b != 0xa5 && *b != 0));
        write_regions(&f, &regions, Source::Zeros, &|_| {}, &cancel).unwrap();
        let d = std::fs::read(t.path()).unwrap();
        assert!(d[m..6 * m + 512].iter().all(|b| *b == 0));
        assert!(d[6 * m + 512..8 * m].iter().all(|b| *b == 0xa5));
        assert!(d[8 * m..9 * m].iter().all(|b| *b == 0));
        assert!(d[9 * m..].iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn a_reader_is_written_in_order_and_its_tail_padded() {
        let (t, f) = file_of(16 * MIB, 0xa5);
        let data: Vec<u8> = (0..(9 * MIB + 100)).map(|i| (i % 251) as u8).collect();
        // A reader that returns short reads, like a decompressor.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.0.len()).min(70_001);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = Trickle(&data);
        let n = write_regions(
            &f,
            &[(0, 16 * MIB)],
            Source::Reader(&mut r),
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        let d = std::fs::read(t.path()).unwrap();
        assert_eq!(&d[..data.len()], &data[..]);
        let padded = data.len().next_multiple_of(ALIGN);
        assert!(d[data.len()..padded].iter().all(|b| *b == 0));
        assert!(d[padded..].iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn a_reader_longer_than_the_target_fails() {
        let (_t, f) = file_of(2 * MIB, 0);
        let mut r = io::repeat(1).take(2 * MIB + 1);
        let e = write_regions(
            &f,
            &[(0, 2 * MIB)],
            Source::Reader(&mut r),
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, DirectIoError::SourceTooLong { capacity } if capacity == 2 * MIB));
        // Exactly as long is fine.
        let mut r = io::repeat(1).take(2 * MIB);
        let src = Source::Reader(&mut r);
        write_regions(&f, &[(0, 2 * MIB)], src, &|_| {}, &CancellationToken::new()).unwrap();
    }

    #[test]
    fn write_errors_and_cancellation_are_reported() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let ro = File::open(t.path()).unwrap();
        let e = write_regions(
            &ro,
            &[(0, 3 * CHUNK as u64)],
            Source::Zeros,
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, DirectIoError::Write { offset: 0, .. }), "{e}");
        let mut r = io::repeat(0).take(MIB);
        let e = write_regions(
            &ro,
            &[(0, MIB)],
            Source::Reader(&mut r),
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, DirectIoError::Write { offset: 0, .. }), "{e}");
        let (t, f) = file_of(MIB, 0xa5);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = write_regions(&f, &[(0, MIB)], Source::Zeros, &|_| {}, &cancel).unwrap_err();
        assert!(matches!(e, DirectIoError::Cancelled { done: 0 }));
        assert!(std::fs::read(t.path()).unwrap().iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn the_writer_places_buffers_where_told_and_bounds_its_pool() {
        let (t, f) = file_of(16 * MIB, 0xa5);
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let mut w = Writer::new(
            Arc::new(f),
            0,
            Arc::new(move |n| {
                s.fetch_add(n, Ordering::Relaxed);
            }),
        );
        // More jobs than buffers: buffer() waits for writes to finish.
        for i in 0..12u64 {
            let mut b = w.buffer().unwrap();
            b.as_mut_slice()[..8192].fill(i as u8 + 1);
            // Two writes from one buffer, out of device order.
            w.submit(b, vec![(4096, i * MIB + 4096, 4096), (0, i * MIB, 4096)])
                .unwrap();
        }
        w.drain().unwrap();
        assert_eq!(w.written(), 12 * 8192);
        assert_eq!(w.finish().unwrap(), 12 * 8192);
        assert_eq!(seen.load(Ordering::Relaxed), 12 * 8192);
        let d = std::fs::read(t.path()).unwrap();
        for i in 0..12usize {
            let m = i * MIB as usize;
            assert!(d[m..m + 8192].iter().all(|b| *b == i as u8 + 1));
            assert!(d[m + 8192..m + 8192 + 10].iter().all(|b| *b == 0xa5));
        }
        // A write error is reported by the next call.
        let ro = File::open(t.path()).unwrap();
        let mut w = Writer::new(Arc::new(ro), 0, Arc::new(|_| {}));
        let b = w.buffer().unwrap();
        w.submit(b, vec![(0, 8192, 4096)]).unwrap();
        let e = w.drain().unwrap_err();
        assert!(
            matches!(e, DirectIoError::Write { offset: 8192, .. }),
            "{e}"
        );
        assert!(w.finish().is_err());
    }
}
