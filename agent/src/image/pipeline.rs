//! One image onto one disk, in one pass: fetch (and hash) → decompress → (qcow2 → raw) →
//! write, each stage on its own thread with bounded hand-offs: the fetch thread hashes and
//! queues at most [`fetch::QUEUE`] × [`fetch::PIECE`] bytes; this thread decompresses and
//! converts; the sink's writers keep [`crate::directio::REQUESTS_IN_FLIGHT`] 4 MiB writes in
//! flight from a fixed pool. Memory does not grow with the image.
//!
//! qcow2: with random access (a server that honours Range, or a local copy) and no outer
//! compression, the map is read first ([`qcow2::Layout::read`] through Range requests) and
//! the one sequential GET is placed by it ([`qcow2::Converter::new`]); otherwise the
//! converter learns the map as it streams ([`qcow2::Converter::streaming`]) and fails with a
//! reason when the file's order needs random access.

use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use molar_protocol::image::{Compression, Digest, DiskFormat, ImageSpec};
use tokio_util::sync::CancellationToken;

use super::ImageError;
use super::detect;
use super::fetch::{self, Counters, FetchOptions, Http, Origin};
use super::qcow2;
use super::sink::{DirectSink, DiskSink};

/// Bytes of out-of-order qcow2 data the streaming converter may hold (no Range support).
pub const QCOW2_STREAM_BUFFER: usize = 32 << 20;
/// Read-ahead of qcow2 metadata reads through Range requests.
const RANGE_READ_AHEAD: usize = 256 << 10;

/// What to write where.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: ImageSpec,
    pub origin: Origin,
    /// The digest the file must have; `None` only when the spec waives the check.
    pub digest: Option<Digest>,
    pub target: PathBuf,
    /// The target reads zeros everywhere: zero runs need not be written.
    pub skip_zeros: bool,
    /// For a regular file as the target (tests): its capacity, else its length.
    pub file_capacity: Option<u64>,
}

/// Live progress, read by the task's reporter.
#[derive(Debug, Default)]
pub struct Progress {
    pub fetch: Arc<Counters>,
    pub written: AtomicU64,
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub from: String,
    pub format: DiskFormat,
    pub compression: Compression,
    pub file_bytes: u64,
    pub disk_bytes: u64,
    pub bytes_written: u64,
    pub zeros_skipped: u64,
    pub seconds: f64,
    pub digest: Option<Digest>,
    pub resumed: u32,
    pub notes: Vec<String>,
}

/// The expected digest of `spec`'s file: its own, or its line in the sums file.
pub fn resolve_digest(
    spec: &ImageSpec,
    options: &FetchOptions,
) -> Result<Option<Digest>, ImageError> {
    use molar_protocol::image::Checksum;
    match &spec.checksum {
        None => Ok(None),
        Some(Checksum::Digest(d)) => Ok(Some(d.clone())),
        Some(Checksum::SumsUrl(url)) => {
            let first = spec.urls.first().map(String::as_str).unwrap_or("");
            let name = super::checksum::file_name(first).ok_or_else(|| {
                super::checksum::SumsError::NoName(molar_protocol::image::redact_url(first))
            })?;
            let text = Http::new(options)?.text(url)?;
            Ok(Some(super::checksum::lookup(&text, name, url)?))
        }
    }
}

/// Writes `job`. Blocking; cancelled through `cancel`.
pub fn write(
    job: &Job,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Outcome, ImageError> {
    let t0 = Instant::now();
    let p = progress.clone();
    let mut sink = DirectSink::open(
        &job.target,
        job.skip_zeros,
        job.file_capacity,
        Arc::new(move |n| {
            p.written.fetch_add(n, Ordering::Relaxed);
        }),
    )
    .map_err(|source| ImageError::Open {
        device: job.target.display().to_string(),
        source,
    })?;
    let mut notes = Vec::new();
    let (layout, probed) = random_access_layout(job, &mut notes)?;
    if let Some(l) = &layout {
        refuse_larger(job, "qcow2 virtual size", l.virtual_size(), sink.capacity())?;
    }
    let mut origin = job.origin.clone();
    // The map and the stream come from the same URL: the stream starts where the map was
    // read (the converter checks the map against the stream's bytes anyway).
    if let (Some(url), Origin::Http { urls, .. }) = (probed, &mut origin)
        && let Some(i) = urls.iter().position(|u| *u == url)
    {
        urls.rotate_left(i);
    }
    let mut source = fetch::start(
        origin,
        job.digest.as_ref().map(|d| d.algo),
        job.spec.size,
        progress.fetch.clone(),
        cancel.clone(),
    );
    let converted = convert(job, layout, &mut source, &progress.fetch, &mut sink, cancel);
    let tail = match &converted {
        Ok(_) => source.drain().unwrap_or(0),
        Err(_) => 0,
    };
    // A fetch failure explains a decompression or read error that it caused.
    let fetched = match (converted, source.take_outcome()) {
        (_, Some(Err(e))) => return Err(e.into()),
        (Err(e), _) => return Err(e),
        (Ok(_), None) => {
            return Err(ImageError::Internal(
                "the fetch ended without an outcome".into(),
            ));
        }
        (Ok(c), Some(Ok(f))) => (c, f),
    };
    let ((compression, format, disk_bytes), fetched) = fetched;
    if tail > 0 {
        notes.push(format!(
            "{tail} bytes after the end of the {} stream were ignored (hashed)",
            compression.as_str()
        ));
    }
    if let (Some(want), Some(got)) = (&job.digest, &fetched.digest)
        && want != got
    {
        return Err(ImageError::ChecksumMismatch {
            expected: want.to_string(),
            got: got.to_string(),
        });
    }
    let stats = sink.finish().map_err(|source| ImageError::Write {
        device: job.target.display().to_string(),
        source,
    })?;
    if let Some(note) = reread_partitions(&job.target) {
        notes.push(note);
    }
    Ok(Outcome {
        from: fetched.from,
        format,
        compression,
        file_bytes: fetched.bytes,
        disk_bytes,
        bytes_written: stats.written,
        zeros_skipped: stats.zeros_skipped,
        seconds: t0.elapsed().as_secs_f64(),
        digest: fetched.digest,
        resumed: fetched.resumed,
        notes,
    })
}

/// Asks the kernel to re-read the partition table of a block device; a note when it
/// could not (a regular file says nothing).
fn reread_partitions(target: &Path) -> Option<String> {
    let f = std::fs::File::open(target).ok()?;
    match crate::hw::block::reread_partitions(&f) {
        Ok(()) => None,
        Err(e) if e.errno() == Some(nix::Error::ENOTTY) => None,
        Err(e) => Some(format!(
            "re-reading the partition table of {}: {e}",
            target.display()
        )),
    }
}

/// Layout read first, and the URL it was read from.
type RandomAccess = (Option<qcow2::Layout>, Option<String>);

/// Refuses an image whose disk size is known to exceed the target, before any write.
fn refuse_larger(
    job: &Job,
    what: &'static str,
    size: u64,
    capacity: u64,
) -> Result<(), ImageError> {
    if size > capacity {
        return Err(ImageError::LargerThanTarget {
            what,
            size,
            device: job.target.display().to_string(),
            capacity,
        });
    }
    Ok(())
}

/// For an image that may be an uncompressed qcow2 file with random access to it: the
/// qcow2 map read first, and the URL that answered the probe (the stream starts there).
/// No layout when the file is not qcow2, is compressed, or the server does not serve
/// ranges (then the stream decides).
fn random_access_layout(job: &Job, notes: &mut Vec<String>) -> Result<RandomAccess, ImageError> {
    if job.spec.format == Some(DiskFormat::Raw)
        || job.spec.compression.is_some_and(|c| c != Compression::None)
    {
        return Ok((None, None));
    }
    match &job.origin {
        Origin::Local { path, offset, len } => {
            let f = std::fs::File::open(path).map_err(|source| ImageError::Read {
                what: path.display().to_string(),
                source,
            })?;
            let mut r = LocalRange {
                file: f,
                base: *offset,
                len: *len,
            };
            let mut head = [0u8; detect::MAGIC_LEN];
            if *len < head.len() as u64 || qcow2::RangeRead::read_at(&mut r, 0, &mut head).is_err()
            {
                return Ok((None, None));
            }
            if detect::format(&head) != DiskFormat::Qcow2 {
                return Ok((None, None));
            }
            Ok((Some(qcow2::Layout::read(&mut r, Some(*len))?), None))
        }
        Origin::Http { urls, options } => {
            let http = Http::new(options)?;
            let (url, total, ranges) = match http.probe(urls) {
                Ok(p) => p,
                Err(e) => {
                    // The stream has its own retries and its own clear error.
                    notes.push(format!(
                        "probing for byte ranges failed ({e}): the image is streamed"
                    ));
                    return Ok((None, None));
                }
            };
            if !ranges {
                notes.push(format!(
                    "{} does not serve byte ranges",
                    molar_protocol::image::redact_url(&url)
                ));
                return Ok((None, Some(url)));
            }
            let Some(total) = total else {
                return Ok((None, Some(url)));
            };
            if total < detect::MAGIC_LEN as u64 {
                return Ok((None, Some(url)));
            }
            let head = http.retry(|h| h.range(&url, 0, detect::MAGIC_LEN))?;
            if detect::compression(&head)? != Compression::None
                || detect::format(&head) != DiskFormat::Qcow2
            {
                return Ok((None, Some(url)));
            }
            let mut r = HttpRange {
                http,
                url: url.clone(),
                total,
                cached_at: 0,
                cached: Vec::new(),
                requests: 0,
            };
            let layout = qcow2::Layout::read(&mut r, Some(total))?;
            notes.push(format!(
                "qcow2 map read with {} range requests before the stream",
                r.requests
            ));
            Ok((Some(layout), Some(url)))
        }
    }
}

/// Random access to `len` bytes of a local file from `base` (the cache).
struct LocalRange {
    file: std::fs::File,
    base: u64,
    len: u64,
}

impl qcow2::RangeRead for LocalRange {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if offset + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the cached image",
            ));
        }
        self.file.read_exact_at(buf, self.base + offset)
    }
}

/// Random access through Range requests, with a small read-ahead (L2 tables are many and
/// small with 4 KiB clusters).
struct HttpRange {
    http: Http,
    url: String,
    total: u64,
    cached_at: u64,
    cached: Vec<u8>,
    requests: u32,
}

impl qcow2::RangeRead for HttpRange {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.total {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read to {end} past the end of {} ({} bytes)",
                    molar_protocol::image::redact_url(&self.url),
                    self.total
                ),
            ));
        }
        let cached_end = self.cached_at + self.cached.len() as u64;
        if offset < self.cached_at || end > cached_end {
            let want = buf.len().max(RANGE_READ_AHEAD) as u64;
            let n = want.min(self.total - offset) as usize;
            let url = &self.url;
            self.cached = self
                .http
                .retry(|h| h.range(url, offset, n))
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.cached_at = offset;
            self.requests += 1;
        }
        let from = (offset - self.cached_at) as usize;
        buf.copy_from_slice(&self.cached[from..from + buf.len()]);
        Ok(())
    }
}

/// Piece size read from the decompressor.
const READ: usize = 1 << 20;

/// Decompresses and places the stream: (compression, format, disk bytes).
fn convert(
    job: &Job,
    layout: Option<qcow2::Layout>,
    source: &mut fetch::Source,
    counters: &Counters,
    sink: &mut DirectSink,
    cancel: &CancellationToken,
) -> Result<(Compression, DiskFormat, u64), ImageError> {
    let read_err = |source: io::Error| ImageError::Read {
        what: "the image".into(),
        source,
    };
    let head = detect::peek(source, detect::MAGIC_LEN).map_err(read_err)?;
    let compression = detect::agree(
        "compression",
        job.spec.compression,
        detect::compression(&head)?,
        Compression::as_str,
    )?;
    let inner: Box<dyn Read + Send + '_> = Box::new(Cursor::new(head).chain(source));
    let mut reader =
        detect::decompressor(compression, inner).map_err(|source| ImageError::Decompress {
            compression: compression.as_str(),
            source,
        })?;
    let dec_err = |source: io::Error| ImageError::Decompress {
        compression: compression.as_str(),
        source,
    };
    let mut buf = vec![0u8; READ];
    let n = crate::directio::fill(&mut reader, &mut buf[..detect::MAGIC_LEN]).map_err(dec_err)?;
    let format = detect::agree(
        "format",
        job.spec.format,
        detect::format(&buf[..n]),
        DiskFormat::as_str,
    )?;
    let mut filled = n;
    let sink_err = |source: io::Error| ImageError::Write {
        device: job.target.display().to_string(),
        source,
    };
    match format {
        DiskFormat::Raw => {
            if compression == Compression::None {
                // The file is the disk: its declared size, else the served length (known
                // once the first bytes arrived).
                let served = counters.total.load(Ordering::Relaxed);
                let size = job.spec.size.or((served > 0).then_some(served));
                if let Some(size) = size {
                    refuse_larger(job, "raw", size, sink.capacity())?;
                }
            }
            let mut at = 0u64;
            loop {
                if cancel.is_cancelled() {
                    return Err(ImageError::Cancelled);
                }
                let k = crate::directio::fill(&mut reader, &mut buf[filled..]).map_err(dec_err)?;
                filled += k;
                if filled == 0 {
                    break;
                }
                sink.write_at(at, &buf[..filled]).map_err(sink_err)?;
                at += filled as u64;
                if k == 0 || filled < READ {
                    break;
                }
                filled = 0;
            }
            if at == 0 {
                return Err(ImageError::Empty);
            }
            Ok((compression, format, at))
        }
        DiskFormat::Qcow2 => {
            let mut conv = match layout {
                Some(l) if compression == Compression::None => qcow2::Converter::new(l),
                _ => qcow2::Converter::streaming(QCOW2_STREAM_BUFFER),
            }
            .with_capacity(sink.capacity());
            loop {
                if cancel.is_cancelled() {
                    return Err(ImageError::Cancelled);
                }
                if filled > 0 {
                    conv.feed(&buf[..filled], sink)?;
                }
                filled = crate::directio::fill(&mut reader, &mut buf).map_err(dec_err)?;
                if filled == 0 {
                    break;
                }
            }
            let stats = conv.finish(sink)?;
            Ok((compression, format, stats.virtual_size))
        }
    }
}
