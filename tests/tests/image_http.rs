//! The image pipeline over loopback HTTP (`lab::http::HttpFiles`) into temp files: a dropped
//! connection resumed with Range (the hash continuing, bytes served counted), a server that
//! ignores Range on resume, URLs tried in order, SHA256SUMS files, qcow2 whose map is read
//! with Range requests, and qcow2 streamed from a server without Range.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use molar_agent::image::fetch::{FetchOptions, Origin};
use molar_agent::image::{Job, Progress, pipeline};
use molar_protocol::image::{Checksum, DiskFormat, ImageSpec};
use molar_tests::lab::{Faults, HttpFiles};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn disk(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, b) in v.iter_mut().enumerate() {
        if (i / MIB) % 4 == 3 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 59) as u8;
    }
    v
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn options() -> FetchOptions {
    FetchOptions {
        stall: Duration::from_secs(5),
        backoff: Duration::from_millis(50),
        ..FetchOptions::default()
    }
}

fn spec(urls: Vec<String>, checksum: Option<String>) -> ImageSpec {
    ImageSpec {
        id: "img".into(),
        urls,
        checksum: checksum.map(|c| Checksum::parse(&c).unwrap()),
        size: None,
        format: None,
        compression: None,
        ca_pem: None,
    }
}

/// Writes `spec` into a fresh `len`-byte file; the outcome and the file's bytes.
fn write(
    spec: &ImageSpec,
    len: usize,
) -> (
    Result<pipeline::Outcome, molar_agent::image::ImageError>,
    Vec<u8>,
) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk");
    std::fs::write(&target, vec![0xa5u8; len]).unwrap();
    let digest = match pipeline::resolve_digest(spec, &options()) {
        Ok(d) => d,
        Err(e) => return (Err(e), Vec::new()),
    };
    let job = Job {
        spec: spec.clone(),
        origin: Origin::Http {
            urls: spec.urls.clone(),
            options: options(),
        },
        digest,
        target: target.clone(),
        skip_zeros: false,
        file_capacity: None,
    };
    let r = pipeline::write(
        &job,
        &Arc::new(Progress::default()),
        &CancellationToken::new(),
    );
    (r, std::fs::read(&target).unwrap())
}

fn serve(files: &[(&str, &[u8])], faults: Faults) -> (tempfile::TempDir, HttpFiles) {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let http = HttpFiles::serve_with(dir.path(), faults).unwrap();
    (dir, http)
}

#[test]
fn a_dropped_download_resumes_where_it_stopped() {
    let data = disk(12 * MIB);
    let file = zstd::encode_all(&data[..], 1).unwrap();
    let drop_at = file.len() as u64 * 2 / 5;
    let faults = Faults {
        drop_after: Some(drop_at),
        ..Faults::default()
    };
    let (_d, http) = serve(&[("a.raw.zst", &file)], faults);
    let s = spec(vec![http.url("a.raw.zst")], Some(sha256(&file)));
    let (r, got) = write(&s, 16 * MIB);
    let out = r.unwrap();
    assert!(http.dropped());
    assert_eq!(out.resumed, 1, "{:?}", http.requests());
    assert_eq!(&got[..data.len()], &data[..]);
    let served = http.bytes_served();
    assert!(
        (served as f64) < 1.1 * file.len() as f64,
        "served {served} bytes for a {}-byte file",
        file.len()
    );
    assert!(
        http.requests().iter().any(|r| r.ends_with(" 206")),
        "{:?}",
        http.requests()
    );
    assert_eq!(out.digest.unwrap().to_string(), sha256(&file));
}

#[test]
fn a_stalled_download_is_dropped_and_resumed() {
    let data = disk(6 * MIB);
    let faults = Faults {
        stall_after: Some(2 * MIB as u64 + 3),
        ..Faults::default()
    };
    let (_d, http) = serve(&[("a.raw", &data)], faults);
    let mut s = spec(vec![http.url("a.raw")], Some(sha256(&data)));
    s.format = Some(DiskFormat::Raw);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk");
    std::fs::write(&target, vec![0xa5u8; 8 * MIB]).unwrap();
    let mut o = options();
    o.stall = Duration::from_millis(500);
    let job = Job {
        digest: pipeline::resolve_digest(&s, &o).unwrap(),
        origin: Origin::Http {
            urls: s.urls.clone(),
            options: o,
        },
        spec: s,
        target: target.clone(),
        skip_zeros: false,
        file_capacity: None,
    };
    let t0 = std::time::Instant::now();
    let out = pipeline::write(
        &job,
        &Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(out.resumed, 1);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(&std::fs::read(&target).unwrap()[..data.len()], &data[..]);
    assert!((http.bytes_served() as f64) < 1.1 * data.len() as f64);
}

#[test]
fn a_server_ignoring_range_on_resume_is_refused() {
    let data = disk(4 * MIB);
    let faults = Faults {
        drop_after: Some(MIB as u64 + 7),
        ignore_ranges: true,
        ..Faults::default()
    };
    let (_d, http) = serve(&[("a.raw", &data)], faults);
    // Declared raw: no qcow2 probe request comes first (it would take the drop).
    let mut s = spec(vec![http.url("a.raw")], Some(sha256(&data)));
    s.format = Some(DiskFormat::Raw);
    let (r, _) = write(&s, 8 * MIB);
    let e = r.unwrap_err();
    assert_eq!(e.code(), "resume_refused", "{e}");
    assert!(
        e.to_string()
            .contains("ignored the range request resuming at byte"),
        "{e}"
    );
}

#[test]
fn urls_are_tried_in_order_and_sums_files_give_the_digest() {
    let data = disk(3 * MIB);
    let sums = format!(
        "{}  other.raw\n{} *a.raw\n",
        "0".repeat(64),
        &sha256(&data)["sha256:".len()..]
    );
    let (_d, http) = serve(
        &[("a.raw", &data), ("SHA256SUMS", sums.as_bytes())],
        Faults::default(),
    );
    // The first URL is a 404 at the same file name; the second serves it.
    let urls = vec![http.url("missing/a.raw"), http.url("a.raw")];
    let (r, got) = write(&spec(urls, Some(http.url("SHA256SUMS"))), 4 * MIB);
    let out = r.unwrap();
    assert!(out.from.ends_with("/a.raw") && !out.from.contains("missing"));
    assert_eq!(&got[..data.len()], &data[..]);
    // No line for the file: refused before anything is written.
    let urls = vec![http.url("nothere.raw")];
    let (r, _) = write(&spec(urls, Some(http.url("SHA256SUMS"))), 4 * MIB);
    let e = r.unwrap_err();
    assert_eq!(e.code(), "checksum_unavailable");
    assert!(
        e.to_string().ends_with("has no line for nothere.raw"),
        "{e}"
    );
    // Every URL unreachable.
    let (r, _) = write(
        &spec(vec!["http://127.0.0.1:9/a.raw".into()], Some(sha256(&data))),
        MIB,
    );
    assert_eq!(r.unwrap_err().code(), "unreachable");
}

fn qemu_img(raw: &[u8], dir: &Path, extra: &[&str]) -> Vec<u8> {
    std::fs::write(dir.join("in.raw"), raw).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .args(extra)
        .arg(dir.join("in.raw"))
        .arg(dir.join("out.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(dir.join("out.qcow2")).unwrap()
}

fn have_qemu_img(test: &str) -> bool {
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: qemu-img missing under CI=true"
    );
    eprintln!("skipping {test}: qemu-img not found (install qemu-utils)");
    false
}

#[test]
fn compressed_qcow2_by_range_map_then_one_stream_with_a_drop() {
    if !have_qemu_img("compressed_qcow2_by_range_map_then_one_stream_with_a_drop") {
        return;
    }
    let data = disk(10 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    let q = qemu_img(&data, tmp.path(), &["-c"]);
    let faults = Faults {
        drop_after: Some(q.len() as u64 / 2),
        ..Faults::default()
    };
    let (_d, http) = serve(&[("a.qcow2", &q)], faults);
    let (r, got) = write(&spec(vec![http.url("a.qcow2")], Some(sha256(&q))), 12 * MIB);
    let out = r.unwrap();
    assert_eq!(out.format, DiskFormat::Qcow2);
    assert_eq!(out.disk_bytes, data.len() as u64);
    assert!(got[..data.len()] == data[..]);
    assert!(
        out.notes.iter().any(|n| n.contains("range requests")),
        "{:?}",
        out.notes
    );
    assert_eq!(out.resumed, 1);
}

#[test]
fn plain_qcow2_streams_from_a_server_without_range() {
    if !have_qemu_img("plain_qcow2_streams_from_a_server_without_range") {
        return;
    }
    let data = disk(6 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    let q = qemu_img(&data, tmp.path(), &[]);
    let faults = Faults {
        ignore_ranges: true,
        ..Faults::default()
    };
    let (_d, http) = serve(&[("a.qcow2", &q)], faults);
    let (r, got) = write(&spec(vec![http.url("a.qcow2")], Some(sha256(&q))), 8 * MIB);
    let out = r.unwrap();
    assert_eq!(out.format, DiskFormat::Qcow2);
    assert!(got[..data.len()] == data[..]);
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("does not serve byte ranges"))
    );
}

/// A mirror that answers its first `busy` connections with 503, then `body` (200, whole).
fn flaky_mirror(busy: usize, body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/a.qcow2", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { return };
            let mut req = [0u8; 4096];
            let _ = c.read(&mut req);
            let _ = if n < busy {
                c.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            } else {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                c.write_all(head.as_bytes())
                    .and_then(|()| c.write_all(&body))
            };
        }
    });
    url
}

/// The qcow2 map and the stream come from the same URL: the first mirror fails the probe
/// (then recovers, serving another image); the map is read from the second, and the stream
/// must come from there too.
#[test]
fn the_qcow2_stream_comes_from_the_url_the_map_was_read_from() {
    if !have_qemu_img("the_qcow2_stream_comes_from_the_url_the_map_was_read_from") {
        return;
    }
    let data = disk(4 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    let q = qemu_img(&data, tmp.path(), &[]);
    let other = qemu_img(&disk(2 * MIB), tmp.path(), &[]);
    // options(): 5 attempts per URL, so the probe gives up on the mirror after 5 answers.
    let mirror = flaky_mirror(5, other);
    let (_d, http) = serve(&[("a.qcow2", &q)], Faults::default());
    let (r, got) = write(
        &spec(vec![mirror, http.url("a.qcow2")], Some(sha256(&q))),
        6 * MIB,
    );
    let out = r.unwrap();
    assert_eq!(out.from, http.url("a.qcow2"));
    assert!(got[..data.len()] == data[..]);
}
