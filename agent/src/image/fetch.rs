//! Getting an image's bytes, in file order, onto a bounded channel: over HTTP(S) from its
//! URLs (tried in order, retried with backoff, resumed with `Range: bytes=N-` after a dropped
//! connection or a stall, the digest continuing where it was), or from a local file (the
//! cache). The bytes are hashed here, on the fetch thread, so hashing overlaps decompression
//! and writing.
//!
//! Memory: at most [`QUEUE`] pieces of at most [`PIECE`] bytes wait on the channel, plus the
//! piece being filled. A server that answers a resume with `200` (the whole file again)
//! instead of `206` is refused: the bytes before the drop are already decompressed and
//! written, so the only honest continuation is from where it stopped.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use molar_protocol::image::{Digest, HashAlgo, redact_url};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::checksum::Hasher;

/// Bytes per piece handed to the consumer.
pub const PIECE: usize = 1 << 20;
/// Pieces waiting on the channel at most.
pub const QUEUE: usize = 8;
/// Largest sums file read.
const MAX_SUMS: usize = 1 << 20;

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// No byte for this long: the connection is dropped and the download resumed.
    pub stall: Duration,
    pub connect_timeout: Duration,
    /// Consecutive failed attempts (without a byte of progress) per URL before the next.
    pub attempts: u32,
    /// First retry delay, doubled each time up to 8 s.
    pub backoff: Duration,
    /// PEM of a CA trusted besides the public roots.
    pub ca_pem: Option<String>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            stall: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            attempts: 5,
            backoff: Duration::from_millis(500),
            ca_pem: None,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("building the http client: {0}")]
    Client(String),
    #[error("ca_pem holds no usable certificate: {0}")]
    Ca(String),
    #[error("every url failed; last: {last}")]
    Unreachable { last: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} serves {served} bytes, the image spec says {declared}")]
    SizeMismatch {
        url: String,
        served: u64,
        declared: u64,
    },
    #[error(
        "{url} ignored the range request resuming at byte {at} (answered 200, the whole file): \
         the download cannot continue where it stopped"
    )]
    RangeIgnored { url: String, at: u64 },
    #[error("{url}: resumed at byte {at} but the server sent {got}")]
    BadResume { url: String, at: u64, got: String },
    #[error("{url}: sums file is larger than {MAX_SUMS} bytes")]
    SumsTooLarge { url: String },
    #[error("reading {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

impl FetchError {
    /// Worth another try: no answer, a dropped connection, a 5xx or 429.
    pub fn transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Stable protocol code.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Unreachable { .. } | FetchError::Status { .. } => "unreachable",
            FetchError::SizeMismatch { .. } => "size_mismatch",
            FetchError::RangeIgnored { .. } | FetchError::BadResume { .. } => "resume_refused",
            FetchError::Cancelled => "cancelled",
            _ => "fetch_failed",
        }
    }
}

/// What a finished fetch saw.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The URL (or path) the last byte came from.
    pub from: String,
    pub bytes: u64,
    /// `None` when no digest was asked for.
    pub digest: Option<Digest>,
    pub resumed: u32,
}

/// Messages on the channel.
pub enum Msg {
    Data(Bytes),
    End(Result<Fetched, FetchError>),
}

/// Bytes seen so far and the expected total (0 when unknown), for progress.
#[derive(Debug, Default)]
pub struct Counters {
    pub fetched: AtomicU64,
    pub total: AtomicU64,
}

/// Where the bytes come from.
#[derive(Debug, Clone)]
pub enum Origin {
    Http {
        urls: Vec<String>,
        options: FetchOptions,
    },
    /// `len` bytes of a local file or device from `offset`.
    Local {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

/// An HTTP client with its own small runtime, for blocking callers (the fetch thread, the
/// qcow2 metadata reads).
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    options: FetchOptions,
}

impl Http {
    pub fn new(options: &FetchOptions) -> Result<Http, FetchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &options.ca_pem {
            let mut n = 0;
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
                let cert: rustls_pki_types::CertificateDer<'static> =
                    cert.map_err(|e| FetchError::Ca(e.to_string()))?;
                roots.add(cert).map_err(|e| FetchError::Ca(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(FetchError::Ca("no PEM certificate in it".into()));
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .no_proxy()
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Http {
            rt,
            client,
            options: options.clone(),
        })
    }

    /// `len` bytes of `url` from `offset`, by one Range request (`206` required). The body
    /// is read in chunks and refused as soon as it passes `len` bytes: a server answering
    /// with gigabytes does not make the agent hold them.
    pub fn range(&self, url: &str, offset: u64, len: usize) -> Result<Vec<u8>, FetchError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let stall = self.options.stall;
        self.rt.block_on(async {
            let last = offset + len as u64 - 1;
            let req = self
                .client
                .get(url)
                .header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
            let mut resp = tokio::time::timeout(stall, req.send())
                .await
                .map_err(|_| unreachable(url, "no answer"))?
                .map_err(|e| unreachable(url, &error_chain(&e.without_url())))?;
            if resp.status() != StatusCode::PARTIAL_CONTENT {
                return Err(FetchError::Status {
                    url: redact_url(url),
                    status: resp.status().as_u16(),
                });
            }
            let wrong = |got: String| FetchError::BadResume {
                url: redact_url(url),
                at: offset,
                got,
            };
            if let Some(n) = resp.content_length()
                && n != len as u64
            {
                return Err(wrong(format!("{n} bytes instead of {len}")));
            }
            let mut body = Vec::with_capacity(len);
            while let Some(c) = tokio::time::timeout(stall, resp.chunk())
                .await
                .map_err(|_| unreachable(url, "stalled"))?
                .map_err(|e| unreachable(url, &error_chain(&e.without_url())))?
            {
                if body.len() + c.len() > len {
                    return Err(wrong(format!("more than {len} bytes")));
                }
                body.extend_from_slice(&c);
            }
            if body.len() != len {
                return Err(wrong(format!("{} bytes instead of {len}", body.len())));
            }
            Ok(body)
        })
    }

    /// `f`, retried on a transient failure (no answer, a dropped connection, 5xx, 429) up to
    /// [`FetchOptions::attempts`] times with the download's backoff: the metadata reads and
    /// the probe before the stream are no more fragile than the stream itself.
    pub fn retry<T>(
        &self,
        mut f: impl FnMut(&Http) -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut delay = self.options.backoff;
        let mut failures = 1u32;
        loop {
            match f(self) {
                Err(e) if e.transient() && failures < self.options.attempts => {
                    tracing::warn!(error = %e, "image request failed, retrying");
                    failures += 1;
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
                r => return r,
            }
        }
    }

    /// The file's length and whether the server serves byte ranges (a 1-byte Range GET:
    /// `206` with a `Content-Range` total), trying `urls` in order, each with [`Http::retry`];
    /// the URL that answered.
    pub fn probe(&self, urls: &[String]) -> Result<(String, Option<u64>, bool), FetchError> {
        let mut last = FetchError::Unreachable {
            last: "no url".into(),
        };
        for url in urls {
            match self.retry(|h| h.probe_one(url)) {
                Ok((total, ranges)) => return Ok((url.clone(), total, ranges)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn probe_one(&self, url: &str) -> Result<(Option<u64>, bool), FetchError> {
        self.rt.block_on(async {
            let req = self
                .client
                .get(url)
                .header(reqwest::header::RANGE, "bytes=0-0");
            let resp = tokio::time::timeout(self.options.stall, req.send())
                .await
                .map_err(|_| unreachable(url, "no answer"))?
                .map_err(|e| unreachable(url, &error_chain(&e.without_url())))?;
            if resp.status() == StatusCode::PARTIAL_CONTENT {
                let total = content_range(&resp).map(|(_, t)| t);
                Ok((total, total.is_some()))
            } else if resp.status().is_success() {
                Ok((resp.content_length(), false))
            } else {
                Err(FetchError::Status {
                    url: redact_url(url),
                    status: resp.status().as_u16(),
                })
            }
        })
    }

    /// A small text file (a sums file), whole.
    pub fn text(&self, url: &str) -> Result<String, FetchError> {
        self.rt.block_on(async {
            let resp = tokio::time::timeout(self.options.stall, self.client.get(url).send())
                .await
                .map_err(|_| unreachable(url, "no answer"))?
                .map_err(|e| unreachable(url, &error_chain(&e.without_url())))?;
            if !resp.status().is_success() {
                return Err(FetchError::Status {
                    url: redact_url(url),
                    status: resp.status().as_u16(),
                });
            }
            let mut resp = resp;
            let mut out = Vec::new();
            while let Some(c) = tokio::time::timeout(self.options.stall, resp.chunk())
                .await
                .map_err(|_| unreachable(url, "stalled"))?
                .map_err(|e| unreachable(url, &error_chain(&e.without_url())))?
            {
                out.extend_from_slice(&c);
                if out.len() > MAX_SUMS {
                    return Err(FetchError::SumsTooLarge {
                        url: redact_url(url),
                    });
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    }
}

fn unreachable(url: &str, why: &str) -> FetchError {
    FetchError::Unreachable {
        last: format!("{}: {why}", redact_url(url)),
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Content-Range: bytes A-B/TOTAL` → (A, TOTAL).
fn content_range(resp: &reqwest::Response) -> Option<(u64, u64)> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Starts fetching `origin` on a thread of its own; the consumer reads [`Source`].
/// `declared` is the spec's size (a server serving another length is refused).
pub fn start(
    origin: Origin,
    algo: Option<HashAlgo>,
    declared: Option<u64>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Source {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let thread = std::thread::Builder::new()
        .name("image-fetch".into())
        .spawn(move || {
            let hasher = algo.map(Hasher::new);
            let r = match origin {
                Origin::Http { urls, options } => {
                    http_fetch(&urls, &options, hasher, declared, &counters, &tx, &cancel)
                }
                Origin::Local { path, offset, len } => {
                    local_fetch(&path, offset, len, hasher, &counters, &tx, &cancel)
                }
            };
            let _ = tx.send(Msg::End(r));
        });
    let (rx, error) = match thread {
        Ok(_) => (Some(rx), None),
        Err(e) => (
            None,
            Some(FetchError::Client(format!(
                "starting the fetch thread: {e}"
            ))),
        ),
    };
    Source {
        rx,
        cur: Bytes::new(),
        outcome: error.map(Err),
    }
}

/// Sends `piece` unless the consumer is gone (then the fetch ends quietly).
fn send(tx: &mpsc::SyncSender<Msg>, piece: &mut BytesMut) -> bool {
    if piece.is_empty() {
        return true;
    }
    let out = piece.split().freeze();
    tx.send(Msg::Data(out)).is_ok()
}

/// The consumer went away: what the fetch reports (nobody reads it).
fn gone() -> FetchError {
    FetchError::Cancelled
}

fn local_fetch(
    path: &std::path::Path,
    offset: u64,
    len: u64,
    mut hasher: Option<Hasher>,
    counters: &Counters,
    tx: &mpsc::SyncSender<Msg>,
    cancel: &CancellationToken,
) -> Result<Fetched, FetchError> {
    use std::os::unix::fs::FileExt;
    let local = |source| FetchError::Local {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(local)?;
    counters.total.store(len, Ordering::Relaxed);
    let mut pos = 0u64;
    while pos < len {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        let n = (len - pos).min(PIECE as u64) as usize;
        let mut piece = BytesMut::zeroed(n);
        f.read_exact_at(&mut piece, offset + pos).map_err(local)?;
        if let Some(h) = hasher.as_mut() {
            h.update(&piece);
        }
        pos += n as u64;
        counters.fetched.store(pos, Ordering::Relaxed);
        if !send(tx, &mut piece) {
            return Err(gone());
        }
    }
    Ok(Fetched {
        from: path.display().to_string(),
        bytes: pos,
        digest: hasher.map(Hasher::finish),
        resumed: 0,
    })
}

/// Why one attempt ended.
enum Attempt {
    /// Worth another try (connection refused or dropped, stall, 5xx).
    Transient(String),
    /// Not this URL (404, 403...): the next one.
    NextUrl(String),
    Fatal(FetchError),
}

#[allow(clippy::too_many_arguments)]
fn http_fetch(
    urls: &[String],
    options: &FetchOptions,
    mut hasher: Option<Hasher>,
    declared: Option<u64>,
    counters: &Counters,
    tx: &mpsc::SyncSender<Msg>,
    cancel: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let http = Http::new(options)?;
    let mut pos = 0u64;
    let mut total = declared;
    let mut resumed = 0u32;
    let mut last = String::from("no url");
    if let Some(t) = total {
        counters.total.store(t, Ordering::Relaxed);
    }
    for url in urls {
        let mut failures = 0u32;
        let mut delay = options.backoff;
        loop {
            if cancel.is_cancelled() {
                return Err(FetchError::Cancelled);
            }
            let before = pos;
            let r = http.rt.block_on(attempt(
                &http,
                url,
                &mut pos,
                &mut total,
                &mut hasher,
                counters,
                tx,
                cancel,
            ));
            if pos > before && before > 0 {
                resumed += 1;
            }
            match r {
                Ok(()) => {
                    return Ok(Fetched {
                        from: redact_url(url),
                        bytes: pos,
                        digest: hasher.map(Hasher::finish),
                        resumed,
                    });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::NextUrl(why)) => {
                    last = why;
                    break;
                }
                Err(Attempt::Transient(why)) => {
                    tracing::warn!(url = %redact_url(url), at = pos, error = %why, "image download interrupted");
                    last = why;
                    if pos > before {
                        failures = 0;
                        delay = options.backoff;
                    }
                    failures += 1;
                    if failures >= options.attempts {
                        break;
                    }
                    let sleep = http.rt.block_on(async {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => true,
                            _ = cancel.cancelled() => false,
                        }
                    });
                    if !sleep {
                        return Err(FetchError::Cancelled);
                    }
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
            }
        }
    }
    Err(FetchError::Unreachable { last })
}

/// One GET from `*pos` to the end (a Range request when resuming), forwarding the bytes.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    http: &Http,
    url: &str,
    pos: &mut u64,
    total: &mut Option<u64>,
    hasher: &mut Option<Hasher>,
    counters: &Counters,
    tx: &mpsc::SyncSender<Msg>,
    cancel: &CancellationToken,
) -> Result<(), Attempt> {
    let stall = http.options.stall;
    let mut req = http.client.get(url);
    if *pos > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={}-", *pos));
    }
    let resp = tokio::select! {
        r = tokio::time::timeout(stall, req.send()) => r,
        _ = cancel.cancelled() => return Err(Attempt::Fatal(FetchError::Cancelled)),
    };
    let mut resp = match resp {
        Err(_) => {
            return Err(Attempt::Transient(format!(
                "{}: no answer in {stall:?}",
                redact_url(url)
            )));
        }
        Ok(Err(e)) => {
            return Err(Attempt::Transient(format!(
                "{}: {}",
                redact_url(url),
                error_chain(&e.without_url())
            )));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let served = if *pos == 0 {
        if status != StatusCode::OK {
            return Err(status_failure(url, status));
        }
        resp.content_length()
    } else {
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                return Err(Attempt::Fatal(FetchError::RangeIgnored {
                    url: redact_url(url),
                    at: *pos,
                }));
            }
            s => return Err(status_failure(url, s)),
        }
        match content_range(&resp) {
            Some((start, t)) if start == *pos => Some(t),
            other => {
                return Err(Attempt::Fatal(FetchError::BadResume {
                    url: redact_url(url),
                    at: *pos,
                    got: match other {
                        Some((start, t)) => format!("bytes from {start} of {t}"),
                        None => "no usable Content-Range".into(),
                    },
                }));
            }
        }
    };
    match (served, *total) {
        (Some(s), Some(t)) if s != t => {
            return Err(Attempt::Fatal(FetchError::SizeMismatch {
                url: redact_url(url),
                served: s,
                declared: t,
            }));
        }
        (Some(s), None) => {
            *total = Some(s);
            counters.total.store(s, Ordering::Relaxed);
        }
        _ => {}
    }
    let mut piece = BytesMut::with_capacity(PIECE);
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(stall, resp.chunk()) => r,
            _ = cancel.cancelled() => return Err(Attempt::Fatal(FetchError::Cancelled)),
        };
        let chunk = match next {
            Err(_) => {
                let _ = send(tx, &mut piece);
                return Err(Attempt::Transient(format!(
                    "{}: no byte for {stall:?} at byte {}",
                    redact_url(url),
                    *pos
                )));
            }
            Ok(Err(e)) => {
                // Forward what did arrive: the resume continues after it.
                if !send(tx, &mut piece) {
                    return Err(Attempt::Fatal(gone()));
                }
                return Err(Attempt::Transient(format!(
                    "{}: at byte {}: {}",
                    redact_url(url),
                    *pos,
                    error_chain(&e.without_url())
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if let Some(t) = *total
            && *pos + chunk.len() as u64 > t
        {
            return Err(Attempt::Fatal(FetchError::SizeMismatch {
                url: redact_url(url),
                served: *pos + chunk.len() as u64,
                declared: t,
            }));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        *pos += chunk.len() as u64;
        counters.fetched.store(*pos, Ordering::Relaxed);
        piece.extend_from_slice(&chunk);
        if piece.len() >= PIECE && !send(tx, &mut piece) {
            return Err(Attempt::Fatal(gone()));
        }
    }
    if !send(tx, &mut piece) {
        return Err(Attempt::Fatal(gone()));
    }
    match *total {
        Some(t) if *pos < t => Err(Attempt::Transient(format!(
            "{}: connection closed at byte {} of {t}",
            redact_url(url),
            *pos
        ))),
        _ => Ok(()),
    }
}

fn status_failure(url: &str, status: StatusCode) -> Attempt {
    let why = format!("{} answered {}", redact_url(url), status.as_u16());
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Attempt::Transient(why)
    } else {
        Attempt::NextUrl(why)
    }
}

/// The consumer's end: the image file's bytes in order as a [`Read`]; at the end,
/// [`Source::outcome`] says how the fetch went.
pub struct Source {
    rx: Option<mpsc::Receiver<Msg>>,
    cur: Bytes,
    outcome: Option<Result<Fetched, FetchError>>,
}

impl Source {
    /// How the fetch ended, once the reader has seen its end (or its error).
    pub fn take_outcome(&mut self) -> Option<Result<Fetched, FetchError>> {
        self.outcome.take()
    }

    /// Reads everything left (the tail after a compressed stream's end), counting it.
    pub fn drain(&mut self) -> io::Result<u64> {
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.cur.is_empty() {
                let n = buf.len().min(self.cur.len());
                buf[..n].copy_from_slice(&self.cur[..n]);
                let _ = self.cur.split_to(n);
                return Ok(n);
            }
            let Some(rx) = &self.rx else {
                return match &self.outcome {
                    Some(Err(e)) => Err(io::Error::other(e.to_string())),
                    _ => Ok(0),
                };
            };
            match rx.recv() {
                Ok(Msg::Data(b)) => self.cur = b,
                Ok(Msg::End(r)) => {
                    self.rx = None;
                    self.outcome = Some(r);
                }
                Err(_) => {
                    self.rx = None;
                    self.outcome = Some(Err(FetchError::Client("the fetch thread died".into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A one-connection-at-a-time server on 127.0.0.1 that answers every request with
    /// `head` and then `body_len` bytes (written in 64 KiB pieces until the client goes).
    fn server(head: String, body_len: u64) -> (String, Arc<AtomicU64>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/disk.qcow2", l.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut req = [0u8; 4096];
                let _ = c.read(&mut req);
                if c.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                let piece = vec![7u8; 64 << 10];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(piece.len() as u64) as usize;
                    if c.write_all(&piece[..n]).is_err() {
                        break;
                    }
                    s.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n as u64;
                }
            }
        });
        (url, sent)
    }

    /// Answers the n-th connection with `answers[n]` (the last one from then on).
    fn server_seq(answers: Vec<String>) -> (String, Arc<AtomicU64>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/disk.qcow2", l.local_addr().unwrap());
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut req = [0u8; 4096];
                let _ = c.read(&mut req);
                let n = s.fetch_add(1, Ordering::Relaxed) as usize;
                let _ = c.write_all(answers[n.min(answers.len() - 1)].as_bytes());
            }
        });
        (url, seen)
    }

    #[test]
    fn probe_and_range_retry_transient_failures() {
        let busy =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let h = Http::new(&FetchOptions {
            stall: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(1),
            ..FetchOptions::default()
        })
        .unwrap();
        let (url, seen) = server_seq(vec![
            busy.into(),
            busy.into(),
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1000\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nQ"
                .into(),
        ]);
        let (at, total, ranges) = h.probe(std::slice::from_ref(&url)).unwrap();
        assert_eq!((at, total, ranges), (url, Some(1000), true));
        assert_eq!(seen.load(Ordering::Relaxed), 3);
        let (url, _) = server_seq(vec![
            busy.into(),
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/1000\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\nQFI\u{fb}"
                .into(),
        ]);
        assert_eq!(h.retry(|h| h.range(&url, 0, 4)).unwrap().len(), 4);
        // A 404 is not retried, and the next url is tried.
        let (missing, seen) = server_seq(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
        ]);
        let (ok, _) = server_seq(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nabcdefg".into(),
        ]);
        let (at, total, ranges) = h.probe(&[missing, ok.clone()]).unwrap();
        assert_eq!((at, total, ranges), (ok, Some(7), false));
        assert_eq!(seen.load(Ordering::Relaxed), 1);
    }

    fn http() -> Http {
        Http::new(&FetchOptions {
            stall: Duration::from_secs(5),
            ..FetchOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn range_refuses_an_oversized_answer_without_reading_it_all() {
        // 206 without a Content-Length (close-delimited), streaming 1 GiB.
        let (url, sent) = server(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000\r\n\
             Connection: close\r\n\r\n"
                .into(),
            1 << 30,
        );
        let e = http().range(&url, 0, 100).unwrap_err();
        assert!(e.to_string().contains("more than 100 bytes"), "{e}");
        assert!(
            sent.load(Ordering::Relaxed) < 64 << 20,
            "read far past the range"
        );
        // A declared length other than the range is refused before the body.
        let (url, _) = server(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: 5000000000\r\n\r\n".into(),
            0,
        );
        let e = http().range(&url, 0, 100).unwrap_err();
        assert!(
            e.to_string().contains("5000000000 bytes instead of 100"),
            "{e}"
        );
    }

    #[test]
    fn range_of_zero_bytes_is_empty_without_a_request() {
        // Offset 0, length 0 used to compute `0 + 0 - 1`.
        let h = http();
        assert!(h.range("http://127.0.0.1:9/x", 0, 0).unwrap().is_empty());
    }

    /// Captures log lines (every field) for the secret test.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn with_secret(url: &str) -> String {
        url.replacen("http://", "http://user:secret@", 1) + "?X-Amz-Signature=secret"
    }

    fn fetch(urls: Vec<String>) -> Result<Fetched, FetchError> {
        let options = FetchOptions {
            stall: Duration::from_secs(5),
            attempts: 2,
            backoff: Duration::from_millis(1),
            ..FetchOptions::default()
        };
        let mut src = start(
            Origin::Http { urls, options },
            Some(HashAlgo::Sha256),
            None,
            Arc::default(),
            CancellationToken::new(),
        );
        let _ = src.drain();
        src.take_outcome().unwrap()
    }

    #[test]
    fn secrets_in_urls_appear_in_no_error_result_or_log() {
        let log = Captured::default();
        let w = log.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        let mut shown = Vec::new();
        // Refused connection (transient, logged), then 404, then 503 twice.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("http://{}/disk.raw", gone.local_addr().unwrap());
        drop(gone);
        let (missing, _) = server(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            0,
        );
        let (busy, _) = server(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into(),
            0,
        );
        // On this thread, so that the subscriber sees the log lines.
        let (tx, _rx) = mpsc::sync_channel(QUEUE);
        let options = FetchOptions {
            stall: Duration::from_secs(5),
            attempts: 2,
            backoff: Duration::from_millis(1),
            ..FetchOptions::default()
        };
        let urls = [&refused, &missing, &busy].map(|u| with_secret(u));
        let e = http_fetch(
            &urls,
            &options,
            None,
            None,
            &Counters::default(),
            &tx,
            &CancellationToken::new(),
        )
        .unwrap_err();
        shown.push(e.to_string());
        let h = http();
        shown.push(h.probe(&[with_secret(&missing)]).unwrap_err().to_string());
        shown.push(
            h.range(&with_secret(&missing), 0, 10)
                .unwrap_err()
                .to_string(),
        );
        shown.push(
            h.range(&with_secret(&refused), 0, 10)
                .unwrap_err()
                .to_string(),
        );
        shown.push(h.text(&with_secret(&busy)).unwrap_err().to_string());
        // A served file: the result names the URL it came from, redacted.
        let (ok, _) = server("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".into(), 10);
        let f = fetch(vec![with_secret(&ok)]).unwrap();
        assert!(f.from.ends_with("/disk.qcow2?…"), "{}", f.from);
        shown.push(f.from);
        drop(_guard);
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("image download interrupted"), "{log}");
        shown.push(log);
        for s in &shown {
            assert!(!s.contains("secret"), "a secret is shown: {s}");
        }
        assert!(shown[0].contains("503"), "{}", shown[0]);
    }
}
