//! `/media/NAME`: boot media served token-less, read-only, with byte ranges and HEAD, on the
//! plain-HTTP media listener (spoken to in raw bytes, so hostile paths reach the server as
//! written) and on the HTTPS API; nothing outside the media directory is reachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::inproc::Controller;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` (a full HTTP/1.1 request head) and reads the reply to the close.
async fn raw(addr: &str, request: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the reply within 10 s")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

async fn get(addr: &str, path: &str, extra: &str) -> Reply {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_served_with_ranges_and_head_and_nothing_else() {
    let media = tempfile::tempdir().unwrap();
    let iso: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(media.path().join("molar.iso"), &iso).unwrap();
    std::fs::write(media.path().join(".hidden"), b"hidden").unwrap();
    std::fs::create_dir(media.path().join("sub")).unwrap();
    std::fs::write(media.path().join("sub/inner.iso"), b"inner").unwrap();
    let c = Controller::start_with_media(media.path()).await;
    // A symlink out of the directory, to the controller's own state.
    std::os::unix::fs::symlink(
        c.state.path().join("api.url"),
        media.path().join("link.iso"),
    )
    .unwrap();
    let url = c.media_url("molar.iso");
    let addr = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    let whole = get(&addr, "/media/molar.iso", "").await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, iso);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("content-length"), Some("300000"));
    assert_eq!(
        whole.header("content-type"),
        Some("application/x-iso9660-image")
    );

    let head = raw(
        &addr,
        "HEAD /media/molar.iso HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert!(head.body.is_empty());

    for (range, start, end) in [
        ("bytes=0-2047", 0usize, 2047usize),
        ("bytes=299990-", 299_990, 299_999),
        ("bytes=-10", 299_990, 299_999),
        ("bytes=100000-100000", 100_000, 100_000),
        ("bytes=299000-999999", 299_000, 299_999),
    ] {
        let r = get(&addr, "/media/molar.iso", &format!("Range: {range}\r\n")).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &iso[start..=end], "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/300000").as_str()),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
    }
    for range in ["bytes=300000-", "bytes=400000-500000", "bytes=-0"] {
        let r = get(&addr, "/media/molar.iso", &format!("Range: {range}\r\n")).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */300000"));
    }
    // Ranges it does not do are ignored: the whole file.
    for range in ["bytes=0-1,5-6", "lines=1-2", "bytes=x-y", "bytes=9-2"] {
        let r = get(&addr, "/media/molar.iso", &format!("Range: {range}\r\n")).await;
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body.len(), iso.len(), "{range}");
    }

    // Hostile and missing names: 404 without content from anywhere else.
    for path in [
        "/media/",
        "/media",
        "/media/..",
        "/media/../api.url",
        "/media/..%2Fapi.url",
        "/media/%2e%2e%2fapi.url",
        "/media/%2e%2e",
        "/media/.hidden",
        "/media/sub",
        "/media/sub/inner.iso",
        "/media/sub%2Finner.iso",
        "/media/link.iso",
        "/media/missing.iso",
        "/media/molar.iso%00",
        "/api/v1/servers",
        "/metrics",
        "/",
    ] {
        let r = get(&addr, path, "").await;
        assert_eq!(r.status, 404, "{path}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("https://"), "{path}: {text}");
        assert!(
            !text.contains("hidden") || text.contains("no such"),
            "{path}"
        );
    }
    // A name that is not UTF-8 is refused before it is looked at.
    assert_eq!(get(&addr, "/media/%ff", "").await.status, 400);
    // Read-only.
    for method in ["PUT", "POST", "DELETE"] {
        let r = raw(
            &addr,
            &format!(
                "{method} /media/molar.iso HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(r.status, 405, "{method}");
    }
    assert_eq!(std::fs::read(media.path().join("molar.iso")).unwrap(), iso);

    // The API serves it too, over HTTPS and without the admin token; the rest of the API
    // still wants the token.
    let https = c.https();
    let api = &c.running().api_url;
    let r = https
        .get(format!("{api}/media/molar.iso"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &iso[10..20]);
    let r = https
        .get(format!("{api}/media/..%2Fapi.url"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = https
        .get(format!("{api}/api/v1/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_media_directory_media_is_not_found() {
    let c = Controller::start().await;
    let r = c
        .https()
        .get(format!("{}/media/molar.iso", c.running().api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("no media directory"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_media_listener_caps_its_connections() {
    let media = tempfile::tempdir().unwrap();
    std::fs::write(media.path().join("molar.iso"), b"iso").unwrap();
    let c = Controller::start_with_media(media.path()).await;
    let url = c.media_url("molar.iso");
    let addr = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Idle connections up to the cap are held ...
    let mut idle = Vec::new();
    for _ in 0..molar_controller::media::MAX_CONNECTIONS {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // ... so give the listener a moment to take them all, then one more is closed unanswered.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /media/molar.iso HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        extra.read_to_end(&mut buf),
    )
    .await
    .expect("closed at once");
    assert!(
        n.is_err() || buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Freed places serve again.
    drop(idle);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // Raw, as a refused connection has no reply to parse.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s
            .write_all(b"GET /media/molar.iso HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
        if reply.starts_with(b"HTTP/1.1 200") {
            assert!(reply.ends_with(b"\r\n\r\niso"));
            break;
        }
        assert!(std::time::Instant::now() < until, "never served again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
