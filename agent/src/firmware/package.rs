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
