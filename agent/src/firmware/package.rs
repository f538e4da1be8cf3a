//! Getting an update package: fetched with the image fetcher (retries, resume, its client
//! and CA handling), hashed while it streams, written to a file in the task's private
//! directory, and refused unless its digest (or its line in a sums file) matches.

use super::UpdateError;
use crate::image::checksum;
use crate::image::fetch::{self, Counters, FetchOptions, Http, Origin};
use molar_protocol::firmware::Package;
use molar_protocol::image::{Checksum, Digest};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Largest package accepted.
pub const MAX_PACKAGE: u64 = 2 << 30;

/// Fetches `pkg` into `dest` and verifies it; returns its size. `dest` is removed again
/// when the bytes do not verify.
pub fn fetch_verified(
    pkg: &Package,
    options: &FetchOptions,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<u64, UpdateError> {
    let shown = pkg.shown_url();
    let fetch_err =
        |e: fetch::FetchError| UpdateError::new(e.code(), format!("package {shown}: {e}"));
    let mut options = options.clone();
    if pkg.ca_pem.is_some() {
        options.ca_pem = pkg.ca_pem.clone();
    }
    let want: Digest = match &pkg.checksum {
        Checksum::Digest(d) => d.clone(),
        Checksum::SumsUrl(sums) => {
            let http = Http::new(&options).map_err(fetch_err)?;
            let name = checksum::file_name(&pkg.url).unwrap_or(&pkg.url);
            let text = http.text(sums).map_err(fetch_err)?;
            checksum::lookup(&text, name, sums)
                .map_err(|e| UpdateError::new("checksum_mismatch", format!("package: {e}")))?
        }
    };
    let mut source = fetch::start(
        Origin::Http {
            urls: vec![pkg.url.clone()],
            options,
        },
        Some(want.algo),
        None,
        Arc::new(Counters::default()),
        cancel.clone(),
    );
    let write_err = |e: std::io::Error| {
        UpdateError::new("write_failed", format!("writing {}: {e}", dest.display()))
    };
    let mut out = std::fs::File::create(dest).map_err(write_err)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let copied = loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        total += n as u64;
        if total > MAX_PACKAGE {
            drop(out);
            let _ = std::fs::remove_file(dest);
            return Err(UpdateError::new(
                "package_too_large",
                format!("package {shown} is larger than {MAX_PACKAGE} bytes"),
            ));
        }
        out.write_all(&buf[..n]).map_err(write_err)?;
    };
    let outcome = source.take_outcome();
    let fetched = match (copied, outcome) {
        (_, Some(Err(e))) => Err(fetch_err(e)),
        (Ok(()), Some(Ok(f))) => Ok(f),
        (Err(e), _) => Err(UpdateError::new(
            "fetch_failed",
            format!("package {shown}: {e}"),
        )),
        (Ok(()), None) => Err(UpdateError::new(
            "fetch_failed",
            format!("package {shown}: the fetch ended without an outcome"),
        )),
    };
    let verified = fetched.and_then(|f| match f.digest {
        Some(got) if got == want => Ok(f.bytes),
        got => Err(UpdateError::new(
            "checksum_mismatch",
            format!(
                "package {shown} has {}, expected {want}",
                got.map_or_else(|| "no digest".to_owned(), |d| d.to_string())
            ),
        )),
    });
    match verified {
        Ok(n) => {
            out.sync_all().map_err(write_err)?;
            Ok(n)
        }
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(dest);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::checksum::Hasher;
    use molar_protocol::image::HashAlgo;
    use std::io::BufRead;
    use std::time::Duration;

    /// Serves `files` (path → body) on 127.0.0.1 until the test ends; 404 for anything else.
    pub(crate) fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                }
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let body = files
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone());
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                if method != "HEAD" {
                    let _ = conn.write_all(&body);
                }
            }
        });
        format!("http://{addr}")
    }

    fn options() -> FetchOptions {
        FetchOptions {
            attempts: 1,
            backoff: Duration::from_millis(10),
            stall: Duration::from_secs(5),
            ..FetchOptions::default()
        }
    }

    fn sha256(b: &[u8]) -> Digest {
        let mut h = Hasher::new(HashAlgo::Sha256);
        h.update(b);
        h.finish()
    }

    fn package(url: String, checksum: String) -> Package {
        serde_json::from_value(serde_json::json!({"url": url, "checksum": checksum})).unwrap()
    }

    #[test]
    fn a_package_is_fetched_and_verified_or_refused_and_removed() {
        let body = b"firmware bytes".repeat(1000);
        let base = serve(vec![
            ("/fw.bin", body.clone()),
            (
                "/SHA256SUMS",
                format!("{}  fw.bin\n", hex::encode(sha256(&body).bytes)).into_bytes(),
            ),
            ("/OTHERSUMS", b"00  other.bin\n".to_vec()),
        ]);
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("package");
        let cancel = CancellationToken::new();
        let ok = package(format!("{base}/fw.bin"), sha256(&body).to_string());
        assert_eq!(
            fetch_verified(&ok, &options(), &dest, &cancel).unwrap(),
            body.len() as u64
        );
        assert_eq!(std::fs::read(&dest).unwrap(), body);

        let sums = package(format!("{base}/fw.bin"), format!("{base}/SHA256SUMS"));
        fetch_verified(&sums, &options(), &dest, &cancel).unwrap();

        let wrong = package(format!("{base}/fw.bin"), sha256(b"other").to_string());
        let e = fetch_verified(&wrong, &options(), &dest, &cancel).unwrap_err();
        assert_eq!(e.code, "checksum_mismatch", "{}", e.msg);
        assert!(!dest.exists(), "a package that does not verify is removed");

        let unlisted = package(format!("{base}/fw.bin"), format!("{base}/OTHERSUMS"));
        let e = fetch_verified(&unlisted, &options(), &dest, &cancel).unwrap_err();
        assert_eq!(e.code, "checksum_mismatch", "{}", e.msg);

        let missing = package(format!("{base}/nope.bin"), sha256(&body).to_string());
        let e = fetch_verified(&missing, &options(), &dest, &cancel).unwrap_err();
        assert!(e.msg.contains("404"), "{}", e.msg);

        // Credentials in the URL never reach an error.
        let authed = base.replace("http://", "http://user:s3cret@");
        let creds = package(
            format!("{authed}/nope.bin?sig=t0ken"),
            sha256(&body).to_string(),
        );
        let e = fetch_verified(&creds, &options(), &dest, &cancel).unwrap_err();
        assert!(
            !e.msg.contains("s3cret") && !e.msg.contains("t0ken"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn a_served_payload_runs_and_its_output_is_seen() {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let script = b"#!/bin/sh\necho \"updating to $1\"\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(script.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "update.sh", &script[..]).unwrap();
        let archive = b.into_inner().unwrap().finish().unwrap();
        let base = serve(vec![("/p.tar.gz", archive.clone())]);
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("package");
        let pkg = package(format!("{base}/p.tar.gz"), sha256(&archive).to_string());
        fetch_verified(&pkg, &options(), &dest, &CancellationToken::new()).unwrap();
        let work = d.path().join("root");
        std::fs::create_dir(&work).unwrap();
        super::super::payload::unpack(&dest, &work).unwrap();
        let mut lines = Vec::new();
        super::super::payload::run(
            &work,
            "update.sh",
            &["2.0".into()],
            Duration::from_secs(10),
            &CancellationToken::new(),
            |_, l| lines.push(l.to_owned()),
        )
        .unwrap();
        assert_eq!(lines, ["updating to 2.0"]);
    }
}
