//! The image's digest: a running SHA-256 or SHA-512 over the file's bytes as served, and the
//! lookup of an image's line in a `SHA256SUMS`-style file.

use molar_protocol::image::{Digest, HashAlgo};
use sha2::Digest as _;

/// A digest being computed.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algo: HashAlgo::Sha256,
                bytes: h.finalize().to_vec(),
            },
            Hasher::Sha512(h) => Digest {
                algo: HashAlgo::Sha512,
                bytes: h.finalize().to_vec(),
            },
        }
    }
}

/// Why a sums file gave no digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    #[error("{sums_url} has no line for {name}")]
    NoLine { sums_url: String, name: String },
    #[error("{sums_url}: the line for {name} holds no sha256 or sha512 digest")]
    BadLine { sums_url: String, name: String },
    #[error("{sums_url} lists {name} more than once with different digests")]
    Ambiguous { sums_url: String, name: String },
    #[error("image url {0} has no file name to look up in a sums file")]
    NoName(String),
}

/// The last path segment of a URL, without query or fragment: what a sums file names.
pub fn file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let after_host = path.split_once("://").map_or(path, |(_, r)| r);
    let (_, path) = after_host.split_once('/')?;
    path.rsplit('/').next().filter(|n| !n.is_empty())
}

/// The digest for `name` in a sums file: GNU lines (`HEX  NAME`, `HEX *NAME`, the name
/// possibly with a directory) and BSD lines (`SHA256 (NAME) = HEX`); the algorithm follows
/// from the digest's length.
pub fn lookup(text: &str, name: &str, sums_url: &str) -> Result<Digest, SumsError> {
    let matches = |n: &str| {
        let n = n.trim().trim_start_matches('*');
        n == name || n.strip_prefix("./") == Some(name) || n.rsplit('/').next() == Some(name)
    };
    let parse = |hex: &str| {
        let hex = hex.trim();
        let algo = match hex.len() {
            64 => HashAlgo::Sha256,
            128 => HashAlgo::Sha512,
            _ => return None,
        };
        Digest::from_hex(algo, hex).ok()
    };
    let mut first: Option<Digest> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (found, hex) = if let Some(rest) = line
            .strip_prefix("SHA256 (")
            .or_else(|| line.strip_prefix("SHA512 ("))
        {
            match rest.rsplit_once(") = ") {
                Some((n, hex)) => (matches(n), hex),
                None => continue,
            }
        } else {
            match line.split_once(char::is_whitespace) {
                Some((hex, n)) => (matches(n), hex),
                None => continue,
            }
        };
        if found {
            let d = parse(hex).ok_or_else(|| SumsError::BadLine {
                sums_url: molar_protocol::image::redact_url(sums_url),
                name: name.to_owned(),
            })?;
            // The same name twice (another directory, an edited file) with another digest
            // of the same algorithm: which one is meant cannot be told.
            match &first {
                None => first = Some(d),
                Some(f) if f.algo == d.algo && *f != d => {
                    return Err(SumsError::Ambiguous {
                        sums_url: molar_protocol::image::redact_url(sums_url),
                        name: name.to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
    }
    first.ok_or_else(|| SumsError::NoLine {
        sums_url: molar_protocol::image::redact_url(sums_url),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_vectors() {
        let mut h = Hasher::new(HashAlgo::Sha256);
        h.update(b"te");
        h.update(b"st");
        assert_eq!(
            h.finish().to_string(),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let h = Hasher::new(HashAlgo::Sha512);
        assert!(
            h.finish()
                .to_string()
                .starts_with("sha512:cf83e1357eefb8bdf1542850d66d8007")
        );
    }

    #[test]
    fn sums_files_in_both_styles() {
        let a = "a".repeat(64);
        let b = "b".repeat(128);
        let text = format!(
            "# comment\n{a}  other.img\n{a} *./debian-12.raw\nSHA512 (x.qcow2) = {b}\n\
             {}  short.img\n",
            "c".repeat(10)
        );
        let u = "http://h/SHA256SUMS";
        assert_eq!(
            lookup(&text, "debian-12.raw", u).unwrap().to_string(),
            format!("sha256:{a}")
        );
        let d = lookup(&text, "x.qcow2", u).unwrap();
        assert_eq!(d.algo, HashAlgo::Sha512);
        assert!(matches!(
            lookup(&text, "short.img", u),
            Err(SumsError::BadLine { .. })
        ));
        let e = lookup(&text, "missing.img", u).unwrap_err();
        assert_eq!(
            e.to_string(),
            "http://h/SHA256SUMS has no line for missing.img"
        );
        // Listed twice: the same digest is fine, another one is ambiguous.
        let twice = format!("{a}  disk.img\n{a}  ./disk.img\n");
        assert!(lookup(&twice, "disk.img", u).is_ok());
        let c = "c".repeat(64);
        let clash = format!("{a}  v1/disk.img\n{c}  v2/disk.img\n");
        assert!(matches!(
            lookup(&clash, "disk.img", u),
            Err(SumsError::Ambiguous { .. })
        ));
        assert_eq!(file_name("http://h/a/b/img.raw?x=1"), Some("img.raw"));
        assert_eq!(file_name("https://h/img.raw"), Some("img.raw"));
        assert_eq!(file_name("https://h/"), None);
        assert_eq!(file_name("https://h"), None);
    }
}
