//! Boot media for BMCs: `GET`/`HEAD /media/NAME` serves the regular file NAME of the
//! `--media-dir` directory (e.g. `molar-imagebuilder --iso`'s `molar.iso`), read-only, with
//! single byte ranges (BMCs fetch virtual media in pieces) and no listing.
//!
//! No token: a BMC's `InsertMedia` takes only a URL, so whatever is in the directory is public
//! to whoever reaches the listener (`molar.iso` carries no secret: imagebuilder keeps the
//! agent's token out of it). The route is on the API listener (HTTPS, the controller's CA) and,
//! with `--media-listen`, on a plain-HTTP listener of its own, for BMCs that do not speak
//! HTTPS to a private CA.
//!
//! Names are one path segment of `[A-Za-z0-9._-]`, not starting with a dot, checked after
//! percent-decoding; only regular files are served (a symlink is refused, not followed), so a
//! request cannot leave the directory.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Longest file name served.
pub const MAX_NAME: usize = 255;
/// Bytes read per body chunk.
const CHUNK: usize = 256 << 10;

/// The directory served under `/media/`.
#[derive(Debug, Clone)]
pub struct MediaDir {
    root: PathBuf,
}

impl MediaDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        MediaDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Why a name is not served; the message is the reason.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("a media name has 1-255 characters");
    }
    if name.starts_with('.') {
        return Err("a media name does not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a media name has only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// A `Range` header's outcome for a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No range, or one this server ignores (several ranges, another unit, bad syntax): the
    /// whole file with 200, as RFC 9110 allows.
    Whole,
    /// Bytes `start..=end`, with 206.
    Part { start: u64, end: u64 },
    /// A well-formed range that lies past the end: 416.
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` against a file of `len` bytes.
pub fn parse_range(value: Option<&str>, len: u64) -> Range {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if b.trim().is_empty() || end.is_some() => {
            if start >= len {
                return Range::Unsatisfiable;
            }
            match end {
                Some(e) if e < start => Range::Whole,
                Some(e) => Range::Part {
                    start,
                    end: e.min(len - 1),
                },
                None => Range::Part {
                    start,
                    end: len - 1,
                },
            }
        }
        _ => Range::Whole,
    }
}

fn error(status: StatusCode, code: &str, msg: String) -> Response {
    (status, Json(json!({"error": {"msg": msg, "code": code}}))).into_response()
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".iso") {
        "application/x-iso9660-image"
    } else {
        "application/octet-stream"
    }
}

/// `GET`/`HEAD /media/{name}` (axum answers HEAD with GET's headers and no body).
pub async fn serve_file(
    media: Option<Arc<MediaDir>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(media) = media else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no media directory is configured (molar serve --media-dir DIR)".into(),
        );
    };
    if let Err(why) = check_name(&name) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such media: {why}"),
        );
    }
    let path = media.root.join(&name);
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such media: {name}"),
        )
    };
    // lstat: a symlink is not followed out of the directory.
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if m.file_type().is_file() => {}
        _ => return not_found(),
    }
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return not_found(),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return not_found(),
    };
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, count) = match range {
        Range::Whole => (StatusCode::OK, 0, len),
        Range::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Range::Unsatisfiable => {
            let mut resp = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the range is outside {name}'s {len} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("seeking in {name}"),
        );
    }
    let body = futures::stream::unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            // The file shrank under us: end the body short rather than pad it.
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                    (file, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&name)),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// Connections the plain-HTTP media listener serves at once; more are closed at once. A few
/// BMCs fetch at a time, each on one or two connections.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client of the media listener gets to send a request's headers (also how long an
/// idle kept-alive connection stays open).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The plain-HTTP media listener (`--media-listen`): `/media/NAME` only (the API's router
/// declares the same route, behind no token), with a connection cap and a header timeout
/// like the API's; until `shutdown`, then open transfers get a few seconds to finish.
pub async fn serve(listener: TcpListener, media: Arc<MediaDir>, shutdown: CancellationToken) {
    let media = Some(media);
    let app = Router::new()
        .route(
            "/media/{name}",
            get(move |name, headers| serve_file(media.clone(), name, headers)),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "only /media/NAME is served here".into(),
            )
        });
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a media connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "media listener full; connection closed");
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tracker.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "media connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_segment() {
        for ok in ["molar.iso", "a", "x-1_2.img", &"a".repeat(255)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a\0b",
            "é.iso",
            "a b",
            "%2e%2e",
            &"a".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_single_byte_ranges() {
        let p = |v: &str| parse_range(Some(v), 100);
        assert_eq!(parse_range(None, 100), Range::Whole);
        assert_eq!(p("bytes=0-9"), Range::Part { start: 0, end: 9 });
        assert_eq!(p("bytes=90-"), Range::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=90-1000"), Range::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=-10"), Range::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=-1000"), Range::Part { start: 0, end: 99 });
        assert_eq!(p("bytes=100-"), Range::Unsatisfiable);
        assert_eq!(p("bytes=100-200"), Range::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Range::Unsatisfiable);
        // Ignored, so the whole file: several ranges, other units, garbage, reversed.
        for v in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=5",
            "bytes=-",
            "bytes=9-2",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(p(v), Range::Whole, "{v:?}");
        }
    }
}
