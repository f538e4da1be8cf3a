//! A tiny static HTTP/1.1 file server on 127.0.0.1 for OS images: `GET` and `HEAD` with
//! `Content-Length`, single byte ranges (`Range: bytes=A-B`), one request per connection.
//! It runs on its own thread and runtime so synchronous tests can use it, and stops on drop.
//!
//! For the image writer's tests it counts the body bytes it serves, and can misbehave on
//! purpose ([`Faults`]): drop the first connection after N body bytes (a resume must follow),
//! or ignore `Range` (answer `200` with the whole file, as some servers do).

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Ways the server misbehaves on purpose.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Close the first `GET` connection whose body passes this many bytes, at that byte.
    pub drop_after: Option<u64>,
    /// Answer every `GET` with `200` and the whole file, `Range` or not.
    pub ignore_ranges: bool,
    /// Stop sending, connection open, on the first `GET` whose body passes this many bytes.
    pub stall_after: Option<u64>,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Faults,
    dropped: AtomicBool,
    stalled: AtomicBool,
    served: AtomicU64,
}

/// A running file server.
#[derive(Debug)]
pub struct HttpFiles {
    addr: SocketAddr,
    shared: Arc<Shared>,
    requests: Arc<Mutex<Vec<String>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpFiles {
    /// Serves the files under `root` on a free port of 127.0.0.1.
    pub fn serve(root: &Path) -> Result<HttpFiles> {
        Self::serve_with(root, Faults::default())
    }

    /// [`HttpFiles::serve`], misbehaving as `faults` says.
    pub fn serve_with(root: &Path, faults: Faults) -> Result<HttpFiles> {
        let shared = Arc::new(Shared {
            faults,
            ..Shared::default()
        });
        let sh = Arc::clone(&shared);
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let root = root.to_path_buf();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let log = Arc::clone(&requests);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the HTTP server's runtime")?;
        let thread = std::thread::Builder::new()
            .name("lab-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let mut rx = rx;
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    let root = root.clone();
                                    let log = Arc::clone(&log);
                                    let sh = Arc::clone(&sh);
                                    tokio::spawn(async move {
                                        let _ = serve_one(stream, &root, &log, &sh).await;
                                    });
                                }
                            }
                        }
                    }
                });
            })
            .context("starting the HTTP server thread")?;
        Ok(HttpFiles {
            addr,
            shared,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/path` for the host side.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Body bytes sent so far, over every request.
    pub fn bytes_served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Whether the fault `drop_after` has happened.
    pub fn dropped(&self) -> bool {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// `METHOD PATH STATUS` of every request served so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for HttpFiles {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `/a/b` → `root/a/b`, refusing anything that would leave `root`.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `bytes=A-B` / `bytes=A-` / `bytes=-N` against a file of `len` bytes → inclusive range.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().ok()?, len - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

async fn serve_one(
    mut stream: TcpStream,
    root: &Path,
    log: &Mutex<Vec<String>>,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.to_string())
        .filter(|_| !shared.faults.ignore_ranges);

    let respond = |status: &str| {
        if let Ok(mut l) = log.lock() {
            l.push(format!("{method} {target} {status}"));
        }
    };
    if method != "GET" && method != "HEAD" {
        respond("405");
        return stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    }
    let file = match resolve(root, target) {
        Some(p) => tokio::fs::File::open(&p).await.ok().filter(|_| p.is_file()),
        None => None,
    };
    let Some(mut file) = file else {
        respond("404");
        return stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    };
    let len = file.metadata().await?.len();
    let (status, start, count, extra) = match range.as_deref().map(|r| parse_range(r, len)) {
        Some(Some((a, b))) => (
            "206 Partial Content",
            a,
            b - a + 1,
            format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
        ),
        Some(None) => {
            respond("416");
            let msg = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return stream.write_all(msg.as_bytes()).await;
        }
        None => ("200 OK", 0, len, String::new()),
    };
    respond(&status[..3]);
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {count}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n"
    );
    stream.write_all(header.as_bytes()).await?;
    if method == "GET" {
        file.seek(std::io::SeekFrom::Start(start)).await?;
        // The first body to pass `drop_after` bytes is cut there.
        let cut = shared
            .faults
            .drop_after
            .filter(|n| *n < count && !shared.dropped.swap(true, Ordering::Relaxed));
        let stall = shared
            .faults
            .stall_after
            .filter(|n| *n < count && !shared.stalled.swap(true, Ordering::Relaxed));
        let mut left = cut.or(stall).unwrap_or(count);
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n]).await?;
            stream.write_all(&buf[..n]).await?;
            shared.served.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
        if cut.is_some() {
            // An abrupt close, as a dropped connection looks to the client.
            return Ok(());
        }
        if stall.is_some() {
            // Silence with the connection open, until the client gives up (or the server
            // stops).
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return Ok(());
        }
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(port: u16, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_ranges_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        std::fs::write(dir.path().join("img/a.raw"), b"0123456789").unwrap();
        let http = HttpFiles::serve(dir.path()).unwrap();
        let r = get(http.port(), "GET /img/a.raw HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"));
        assert!(r.ends_with("\r\n\r\n0123456789"));
        let r = get(
            http.port(),
            "GET /img/a.raw HTTP/1.1\r\nRange: bytes=2-4\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 206"), "{r}");
        assert!(r.contains("Content-Range: bytes 2-4/10\r\n"));
        assert!(r.ends_with("\r\n\r\n234"));
        let r = get(http.port(), "HEAD /img/a.raw HTTP/1.1\r\n\r\n");
        assert!(r.contains("Content-Length: 10\r\n") && r.ends_with("\r\n\r\n"));
        assert!(
            get(http.port(), "GET /../etc/passwd HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404")
        );
        assert!(get(http.port(), "GET /img HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(http.port(), "POST /img/a.raw HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(
            get(
                http.port(),
                "GET /img/a.raw HTTP/1.1\r\nRange: bytes=20-\r\n\r\n"
            )
            .starts_with("HTTP/1.1 416")
        );
        assert_eq!(http.requests().len(), 7);
        assert_eq!(http.bytes_served(), 13);
        assert!(http.url("/img/a.raw").ends_with("/img/a.raw"));
    }

    #[test]
    fn faults_drop_once_and_ignore_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"0123456789").unwrap();
        let faults = Faults {
            drop_after: Some(4),
            ignore_ranges: true,
            ..Faults::default()
        };
        let http = HttpFiles::serve_with(dir.path(), faults).unwrap();
        let r = get(http.port(), "GET /a HTTP/1.1\r\n\r\n");
        assert!(r.ends_with("\r\n\r\n0123"), "{r}");
        assert!(http.dropped());
        let r = get(http.port(), "GET /a HTTP/1.1\r\nRange: bytes=4-\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("0123456789"),
            "{r}"
        );
        assert_eq!(http.bytes_served(), 14);
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=5-100", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=9-5", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}
