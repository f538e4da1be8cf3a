//! Wire types of `standbye.cache_images` and `standbye.prepare_image`: the image spec, the
//! params, the task results.
//!
//! An image is `{id, url | urls, checksum, size?, format?, compression?}`. The reference
//! agent's `image_info` spelling is accepted too (`os_hash_algo` + `os_hash_value`,
//! `disk_format`, `urls`, its legacy md5 `checksum`, `container_format: bare`), so a
//! controller of that family can drive molar. The checksum is mandatory: an image without one
//! is refused unless it carries `insecure_skip_checksum: true`, spelled out on purpose.
//!
//! Params deny unknown fields (the wire structs [`ImageSpecWire`], [`PrepareImageParamsWire`]
//! and [`CacheImagesParams`]): a mistyped `checksum` must not turn into an unchecked write.
//! Results tolerate fields a newer agent adds.

use serde::{Deserialize, Serialize};

/// Longest image id.
pub const MAX_ID: usize = 128;
/// Longest URL.
pub const MAX_URL: usize = 4096;
/// Most URLs per image.
pub const MAX_URLS: usize = 16;
/// Most images per `cache_images`.
pub const MAX_IMAGES: usize = 64;
/// Longest PEM text of a CA.
pub const MAX_CA_PEM: usize = 64 * 1024;

/// The on-disk format of an image (after any outer compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Compression around the whole image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgo {
    Sha256,
    Sha512,
}

impl HashAlgo {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
    fn parse(s: &str) -> Result<HashAlgo, SpecError> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            _ => Err(SpecError::UnknownAlgo(short(s))),
        }
    }
}

/// A digest: algorithm and bytes, shown as `sha256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algo: HashAlgo,
    pub bytes: Vec<u8>,
}

impl Digest {
    /// `HEX` of the given algorithm: exactly its length in hex digits.
    pub fn from_hex(algo: HashAlgo, hex: &str) -> Result<Digest, SpecError> {
        let hex = hex.trim();
        if hex.len() != algo.digest_len() * 2 {
            return Err(SpecError::DigestLength {
                algo: algo.as_str(),
                want: algo.digest_len() * 2,
                got: hex.len(),
            });
        }
        let bytes = hex::decode(hex).map_err(|_| SpecError::BadHex(algo.as_str()))?;
        Ok(Digest { algo, bytes })
    }

    /// `sha256:HEX` / `sha512:HEX`.
    pub fn parse(s: &str) -> Result<Digest, SpecError> {
        let (algo, hex) = s.split_once(':').ok_or(SpecError::ChecksumForm)?;
        Digest::from_hex(HashAlgo::parse(algo)?, hex)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algo.as_str(), hex::encode(&self.bytes))
    }
}

/// How an image's bytes are checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checksum {
    Digest(Digest),
    /// URL of a `SHA256SUMS`-style file (`HEX  NAME` or `SHA256 (NAME) = HEX` lines); the
    /// line whose name is the image URL's file name gives the digest.
    SumsUrl(String),
}

impl Checksum {
    /// `sha256:HEX`, `sha512:HEX`, or an `http(s)://` URL of a sums file.
    pub fn parse(s: &str) -> Result<Checksum, SpecError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            check_url("checksum", s)?;
            return Ok(Checksum::SumsUrl(s.to_owned()));
        }
        Digest::parse(s).map(Checksum::Digest)
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Digest(d) => d.fmt(f),
            Checksum::SumsUrl(u) => f.write_str(u),
        }
    }
}

/// Why an image spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("image id is empty")]
    EmptyId,
    #[error("image id is longer than {MAX_ID} bytes")]
    LongId,
    #[error("image id may hold only letters, digits and . _ - : (got {0:?})")]
    BadId(String),
    #[error("image has no url: give url or urls")]
    NoUrl,
    #[error("image gives both url and urls: give one")]
    UrlAndUrls,
    #[error("image has more than {MAX_URLS} urls")]
    TooManyUrls,
    #[error("{field}: {why}")]
    BadUrl { field: &'static str, why: String },
    #[error(
        "image has no checksum: give checksum (sha256:HEX, sha512:HEX or the url of a sums \
         file) or os_hash_algo and os_hash_value, or waive it with insecure_skip_checksum: true"
    )]
    NoChecksum,
    #[error("checksum must be sha256:HEX, sha512:HEX or an http(s) url of a sums file")]
    ChecksumForm,
    #[error("unknown hash algorithm {0:?} (sha256 or sha512)")]
    UnknownAlgo(String),
    #[error("{algo} digest must be {want} hex digits, got {got}")]
    DigestLength {
        algo: &'static str,
        want: usize,
        got: usize,
    },
    #[error("{0} digest is not hexadecimal")]
    BadHex(&'static str),
    #[error("checksum and os_hash_value disagree")]
    ChecksumConflict,
    #[error("os_hash_algo and os_hash_value go together")]
    HalfHash,
    #[error("insecure_skip_checksum: true with a checksum: give one or the other")]
    WaiverWithChecksum,
    #[error("format {format} and disk_format {disk_format} disagree")]
    FormatConflict {
        format: &'static str,
        disk_format: &'static str,
    },
    #[error("disk_format {0:?} is not supported (raw or qcow2)")]
    UnsupportedDiskFormat(String),
    #[error("container_format {0:?} is not supported (bare)")]
    UnsupportedContainer(String),
    #[error("ca_pem is longer than {MAX_CA_PEM} bytes")]
    LongCa,
}

/// At most 64 characters of a hostile string, for an error message.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `u` as it may be shown (errors, logs, task results): without userinfo (`user:pass@`,
/// basic auth to a mirror is legitimate but must never be printed), the query replaced by
/// `?…` (presigned URLs carry their signature there) and without the fragment.
pub fn redact_url(u: &str) -> String {
    let (scheme, rest) = match u.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, u),
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(cut);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let mut out = String::with_capacity(u.len().min(256));
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(&tail[..path_end]);
    if tail[path_end..].starts_with('?') {
        out.push_str("?…");
    }
    out
}

/// Userinfo (`user:pass@host`) is accepted, for basic auth to a mirror; [`redact_url`]
/// keeps it out of everything shown.
pub(crate) fn check_url(field: &'static str, u: &str) -> Result<(), SpecError> {
    let bad = |why: &str| SpecError::BadUrl {
        field,
        why: why.to_owned(),
    };
    if u.len() > MAX_URL {
        return Err(bad(&format!("longer than {MAX_URL} bytes")));
    }
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| bad("only http:// and https:// urls are fetched"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if u.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("contains spaces or control characters"));
    }
    Ok(())
}

/// An image, validated: at least one http(s) URL, a checksum or an explicit waiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ImageSpecWire", into = "ImageSpecWire")]
pub struct ImageSpec {
    pub id: String,
    /// Tried in order.
    pub urls: Vec<String>,
    /// `None` only with `insecure_skip_checksum`.
    pub checksum: Option<Checksum>,
    /// Bytes of the file as served, when known; a server reporting another length is refused.
    pub size: Option<u64>,
    pub format: Option<DiskFormat>,
    pub compression: Option<Compression>,
    /// PEM of a CA trusted (besides the public roots) for this image's https URLs.
    pub ca_pem: Option<String>,
}

/// The image spec as it travels: molar's spelling and the reference agent's `image_info`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpecWire {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// `sha256:HEX`, `sha512:HEX`, a sums-file URL; or, from the reference family, a bare
    /// hex digest (64 digits sha256, 128 sha512; a 32-digit md5 is ignored when
    /// `os_hash_value` is given, refused otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_hash_algo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_hash_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// The reference agent's streaming switch: molar always streams; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_raw_images: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_checksum: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TryFrom<ImageSpecWire> for ImageSpec {
    type Error = SpecError;
    fn try_from(w: ImageSpecWire) -> Result<ImageSpec, SpecError> {
        if w.id.is_empty() {
            return Err(SpecError::EmptyId);
        }
        if w.id.len() > MAX_ID {
            return Err(SpecError::LongId);
        }
        if !w
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return Err(SpecError::BadId(short(&w.id)));
        }
        let urls = match (w.url, w.urls) {
            (Some(_), Some(_)) => return Err(SpecError::UrlAndUrls),
            (Some(u), None) => vec![u],
            (None, Some(us)) => us,
            (None, None) => Vec::new(),
        };
        if urls.is_empty() {
            return Err(SpecError::NoUrl);
        }
        if urls.len() > MAX_URLS {
            return Err(SpecError::TooManyUrls);
        }
        for u in &urls {
            check_url("url", u)?;
        }
        let from_hash = match (&w.os_hash_algo, &w.os_hash_value) {
            (Some(a), Some(v)) => Some(Digest::from_hex(HashAlgo::parse(a)?, v)?),
            (None, None) => None,
            _ => return Err(SpecError::HalfHash),
        };
        let given = match w.checksum.as_deref() {
            None => None,
            // The reference family's legacy md5 beside os_hash_*: not a check molar makes.
            Some(c) if is_md5_hex(c) && from_hash.is_some() => None,
            Some(c) if c.len() == 64 && !c.contains(':') => {
                Some(Checksum::Digest(Digest::from_hex(HashAlgo::Sha256, c)?))
            }
            Some(c) if c.len() == 128 && !c.contains(':') => {
                Some(Checksum::Digest(Digest::from_hex(HashAlgo::Sha512, c)?))
            }
            Some(c) => Some(Checksum::parse(c)?),
        };
        let checksum = match (given, from_hash) {
            (Some(Checksum::Digest(a)), Some(b)) if a != b => {
                return Err(SpecError::ChecksumConflict);
            }
            (Some(c), _) => Some(c),
            (None, Some(d)) => Some(Checksum::Digest(d)),
            (None, None) => None,
        };
        match (&checksum, w.insecure_skip_checksum) {
            (None, false) => return Err(SpecError::NoChecksum),
            (Some(_), true) => return Err(SpecError::WaiverWithChecksum),
            _ => {}
        }
        let disk_format = match w.disk_format.as_deref() {
            None => None,
            Some("raw") => Some(DiskFormat::Raw),
            Some("qcow2") => Some(DiskFormat::Qcow2),
            Some(other) => return Err(SpecError::UnsupportedDiskFormat(short(other))),
        };
        let format = match (w.format, disk_format) {
            (Some(a), Some(b)) if a != b => {
                return Err(SpecError::FormatConflict {
                    format: a.as_str(),
                    disk_format: b.as_str(),
                });
            }
            (a, b) => a.or(b),
        };
        if let Some(c) = w.container_format.as_deref()
            && c != "bare"
        {
            return Err(SpecError::UnsupportedContainer(short(c)));
        }
        if w.ca_pem.as_ref().is_some_and(|p| p.len() > MAX_CA_PEM) {
            return Err(SpecError::LongCa);
        }
        Ok(ImageSpec {
            id: w.id,
            urls,
            checksum,
            size: w.size,
            format,
            compression: w.compression,
            ca_pem: w.ca_pem,
        })
    }
}

impl From<ImageSpec> for ImageSpecWire {
    fn from(s: ImageSpec) -> ImageSpecWire {
        let (url, urls) = if s.urls.len() == 1 {
            (s.urls.into_iter().next(), None)
        } else {
            (None, Some(s.urls))
        };
        ImageSpecWire {
            id: s.id,
            url,
            urls,
            insecure_skip_checksum: s.checksum.is_none(),
            checksum: s.checksum.map(|c| c.to_string()),
            size: s.size,
            format: s.format,
            compression: s.compression,
            ca_pem: s.ca_pem,
            ..ImageSpecWire::default()
        }
    }
}

/// Params of `standbye.prepare_image` (without the engine's `task_id`): the image itself or
/// the id of a cached one, and the target disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PrepareImageParamsWire", into = "PrepareImageParamsWire")]
pub struct PrepareImageParams {
    pub source: ImageSource,
    /// Runs of zeros are skipped only when the agent itself verified an erase or discard
    /// of the device in this boot: a caller's word is not taken for it (the previous
    /// tenant's data would stay under the image's zero ranges).
    pub device: String,
}

/// Where `prepare_image` takes the image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Fetched (or taken from the cache when an entry with the same id and checksum is there).
    Spec(Box<ImageSpec>),
    /// A cached image, by id.
    Cached(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareImageParamsWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub device: String,
}

/// Why `prepare_image` params were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareParamsError {
    #[error("give image or image_id, not both")]
    Both,
    #[error("give image (the spec) or image_id (a cached image)")]
    Neither,
    #[error("device is empty")]
    NoDevice,
    #[error("image_id: {0}")]
    Id(SpecError),
}

impl TryFrom<PrepareImageParamsWire> for PrepareImageParams {
    type Error = PrepareParamsError;
    fn try_from(w: PrepareImageParamsWire) -> Result<Self, Self::Error> {
        if w.device.is_empty() || w.device.len() > MAX_URL {
            return Err(PrepareParamsError::NoDevice);
        }
        let source = match (w.image, w.image_id) {
            (Some(_), Some(_)) => return Err(PrepareParamsError::Both),
            (None, None) => return Err(PrepareParamsError::Neither),
            (Some(s), None) => ImageSource::Spec(Box::new(s)),
            (None, Some(id)) => {
                // The same id rules as a spec's.
                let probe = ImageSpecWire {
                    id: id.clone(),
                    url: Some("http://x/".into()),
                    insecure_skip_checksum: true,
                    ..ImageSpecWire::default()
                };
                ImageSpec::try_from(probe).map_err(PrepareParamsError::Id)?;
                ImageSource::Cached(id)
            }
        };
        Ok(PrepareImageParams {
            source,
            device: w.device,
        })
    }
}

impl From<PrepareImageParams> for PrepareImageParamsWire {
    fn from(p: PrepareImageParams) -> Self {
        let (image, image_id) = match p.source {
            ImageSource::Spec(s) => (Some(*s), None),
            ImageSource::Cached(id) => (None, Some(id)),
        };
        PrepareImageParamsWire {
            image,
            image_id,
            device: p.device,
        }
    }
}

/// Outcome of `standbye.prepare_image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareImageResult {
    pub image_id: String,
    pub device: String,
    /// `cache` or the URL the bytes came from.
    pub source: String,
    pub format: DiskFormat,
    pub compression: Compression,
    /// Bytes of the image file as served (what the checksum covers).
    pub file_bytes: u64,
    /// Bytes of the disk the image describes (raw size or qcow2 virtual size).
    pub disk_bytes: u64,
    /// Bytes written to the device.
    pub bytes_written: u64,
    /// Bytes of zeros not written because the device reads zeros.
    pub zero_bytes_skipped: u64,
    pub seconds: f64,
    /// `disk_bytes / seconds`.
    pub throughput: f64,
    /// The digest the file matched; `None` when the check was waived.
    pub checksum: Option<String>,
    /// Times the download was resumed with a Range request after a dropped connection.
    pub resumed: u32,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Params of `standbye.cache_images` (without the engine's `task_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheImagesParams {
    /// In priority order: cached in this order while they fit.
    pub images: Vec<ImageSpec>,
    /// A whole disk that becomes molar's cache area (everything on it is lost, see
    /// ARCHITECTURE.md); absent: in memory, up to the agent's share of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Where a cached image lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheLocation {
    Memory,
    Disk,
}

/// One cached image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub id: String,
    pub bytes: u64,
    pub checksum: Option<String>,
    pub location: CacheLocation,
    /// The cache disk, for `disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Already cached before this task (re-verified).
    #[serde(default)]
    pub already: bool,
}

/// An image not cached, and why: `no_room`, `checksum_mismatch`, `unreachable`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedImage {
    pub id: String,
    pub code: String,
    pub reason: String,
}

/// Outcome of `standbye.cache_images`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CacheImagesResult {
    pub cached: Vec<CachedImage>,
    pub skipped: Vec<SkippedImage>,
    /// Ids of images dropped from the cache to make room for higher-priority ones (or because
    /// they are no longer asked for).
    pub evicted: Vec<String>,
    /// Bytes the cache may hold, and holds.
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const H256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn spec(v: Value) -> Result<ImageSpec, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn molar_spelling() {
        let s = spec(json!({"id": "deb-12", "url": "http://10.0.2.100/a.raw.zst",
            "checksum": format!("sha256:{H256}"), "format": "raw", "compression": "zstd",
            "size": 10}))
        .unwrap();
        assert_eq!(s.urls, ["http://10.0.2.100/a.raw.zst"]);
        assert_eq!(s.format, Some(DiskFormat::Raw));
        assert_eq!(s.compression, Some(Compression::Zstd));
        let Some(Checksum::Digest(d)) = &s.checksum else {
            panic!()
        };
        assert_eq!(d.algo, HashAlgo::Sha256);
        assert_eq!(d.to_string(), format!("sha256:{H256}"));
        // Round trip.
        let back: ImageSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let sums = spec(
            json!({"id": "x", "urls": ["https://a/x.img", "http://b/x.img"],
            "checksum": "https://a/SHA256SUMS"}),
        )
        .unwrap();
        assert_eq!(
            sums.checksum,
            Some(Checksum::SumsUrl("https://a/SHA256SUMS".into()))
        );
        assert_eq!(sums.urls.len(), 2);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert!(spec(json!({"id": "x", "url": "http://a/b", "checksum": sha512})).is_ok());
    }

    #[test]
    fn reference_spelling() {
        let s = spec(json!({"id": "3f1c", "urls": ["http://a/img.qcow2"],
            "os_hash_algo": "sha512", "os_hash_value": "cd".repeat(64),
            "checksum": "0123456789abcdef0123456789abcdef", "disk_format": "qcow2",
            "container_format": "bare", "stream_raw_images": true}))
        .unwrap();
        assert_eq!(s.format, Some(DiskFormat::Qcow2));
        assert_eq!(
            s.checksum.unwrap().to_string(),
            format!("sha512:{}", "cd".repeat(64))
        );
        let bare = spec(json!({"id": "x", "url": "http://a/b", "checksum": H256})).unwrap();
        assert_eq!(bare.checksum.unwrap().to_string(), format!("sha256:{H256}"));
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = |v: Value| spec(v).unwrap_err();
        let url = "http://a/b";
        let ck = format!("sha256:{H256}");
        assert!(e(json!({"id": "x", "url": url})).contains("no checksum"));
        assert!(
            e(json!({"id": "x", "url": url, "urls": [url], "checksum": ck})).contains("both url")
        );
        assert!(e(json!({"id": "x", "checksum": ck})).contains("no url"));
        assert!(
            e(json!({"id": "x", "url": url, "checksum": format!("sha256:{}", &H256[1..])}))
                .contains("64 hex digits, got 63")
        );
        assert!(
            e(json!({"id": "x", "url": url, "checksum": format!("sha256:{}g", &H256[1..])}))
                .contains("not hexadecimal")
        );
        assert!(
            e(json!({"id": "x", "url": url, "checksum": format!("md5:{H256}")}))
                .contains("unknown hash algorithm \"md5\"")
        );
        assert!(
            e(json!({"id": "x", "url": url, "checksum": "0123456789abcdef0123456789abcdef"}))
                .contains("checksum must be")
        );
        assert!(e(json!({"id": "x", "url": "ftp://a/b", "checksum": ck})).contains("only http"));
        assert!(e(json!({"id": "x", "url": "file:///etc", "checksum": ck})).contains("only http"));
        assert!(e(json!({"id": "../x", "url": url, "checksum": ck})).contains("image id"));
        assert!(
            e(json!({"id": "x", "url": url, "checksum": ck, "chekcsum": ck}))
                .contains("unknown field")
        );
        assert!(
            e(json!({"id": "x", "url": url, "checksum": ck, "insecure_skip_checksum": true}))
                .contains("one or the other")
        );
        assert!(
            e(
                json!({"id": "x", "url": url, "checksum": ck, "format": "raw",
            "disk_format": "qcow2"})
            )
            .contains("disagree")
        );
        assert!(
            e(json!({"id": "x", "url": url, "checksum": ck, "disk_format": "vmdk"}))
                .contains("vmdk")
        );
        assert!(
            e(
                json!({"id": "x", "url": url, "checksum": ck, "os_hash_algo": "sha256",
            "os_hash_value": "00".repeat(32)})
            )
            .contains("disagree")
        );
        assert!(
            e(json!({"id": "x", "url": url, "os_hash_algo": "sha256"})).contains("go together")
        );
        assert!(e(json!({"id": "x", "url": url, "checksum": ck, "format": "vhd"})).contains("vhd"));
        // The waiver, spelled out, is accepted.
        let w = spec(json!({"id": "x", "url": url, "insecure_skip_checksum": true})).unwrap();
        assert_eq!(w.checksum, None);
    }

    #[test]
    fn huge_strings_are_refused_with_a_short_message() {
        let big = "a".repeat(1 << 20);
        for v in [
            json!({"id": big, "url": "http://a/b", "insecure_skip_checksum": true}),
            json!({"id": "x", "url": format!("http://a/{big}"), "insecure_skip_checksum": true}),
            json!({"id": "x", "url": "http://a/b", "checksum": format!("sha256:{big}")}),
            json!({"id": "x", "url": "http://a/b", "checksum": format!("{big}:00")}),
            json!({"id": "x", "url": "http://a/b", "os_hash_algo": big, "os_hash_value": "00"}),
            json!({"id": "x", "url": "http://a/b", "checksum": format!("sha256:{H256}"),
                "disk_format": big}),
        ] {
            let e = spec(v).unwrap_err();
            assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..200]);
        }
        let many: Vec<String> = (0..17).map(|i| format!("http://a/{i}")).collect();
        let e = spec(json!({"id": "x", "urls": many, "insecure_skip_checksum": true}));
        assert!(e.unwrap_err().contains("more than 16"));
    }

    #[test]
    fn prepare_params() {
        let p =
            |v: Value| serde_json::from_value::<PrepareImageParams>(v).map_err(|e| e.to_string());
        let img = json!({"id": "x", "url": "http://a/b", "checksum": format!("sha256:{H256}")});
        let ok = p(json!({"image": img, "device": "/dev/nvme0n1"})).unwrap();
        assert!(matches!(ok.source, ImageSource::Spec(_)));
        let back: PrepareImageParams =
            serde_json::from_value(serde_json::to_value(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        let c = p(json!({"image_id": "x", "device": "sda"})).unwrap();
        assert_eq!(c.source, ImageSource::Cached("x".into()));
        // The caller cannot make the agent skip zero runs on its word.
        let e = p(json!({"image_id": "x", "device": "sda", "device_reads_zeros": true}));
        assert!(e.unwrap_err().contains("device_reads_zeros"));
        assert!(p(json!({"image": img, "image_id": "x", "device": "sda"})).is_err());
        assert!(
            p(json!({"device": "sda"}))
                .unwrap_err()
                .contains("image_id")
        );
        assert!(p(json!({"image_id": "x"})).is_err());
        assert!(p(json!({"image_id": "a/b", "device": "sda"})).is_err());
        assert!(
            p(json!({"image_id": "x", "device": "sda", "force": true}))
                .unwrap_err()
                .contains("unknown field")
        );
        let cache = serde_json::from_value::<CacheImagesParams>(
            json!({"images": [img], "device": "/dev/sdb"}),
        )
        .unwrap();
        assert_eq!(cache.images.len(), 1);
        assert!(
            serde_json::from_value::<CacheImagesParams>(json!({"images": [], "x": 1})).is_err()
        );
    }

    proptest! {
        /// Whatever the strings, parsing answers (never panics), and an accepted spec has a
        /// URL and a checksum or the waiver.
        #[test]
        fn any_strings_parse_or_are_refused(id in ".{0,200}", url in ".{0,300}",
            ck in ".{0,200}", algo in "[a-zA-Z0-9]{0,10}", val in "[0-9a-fA-F]{0,140}",
            waive in any::<bool>()) {
            let v = json!({"id": id, "url": url, "checksum": ck, "os_hash_algo": algo,
                "os_hash_value": val, "insecure_skip_checksum": waive});
            if let Ok(s) = serde_json::from_value::<ImageSpec>(v) {
                prop_assert!(!s.urls.is_empty());
                prop_assert!(s.checksum.is_some() != waive);
            }
            let _ = Checksum::parse(&ck);
            let _ = Digest::parse(&format!("{algo}:{val}"));
        }

        #[test]
        fn digests_round_trip(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let d = Digest { algo: HashAlgo::Sha256, bytes };
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn redact_url_drops_userinfo_query_and_fragment() {
        for (u, want) in [
            (
                "https://user:secret@mirror.example/img/disk.qcow2?X-Amz-Signature=secret&b=1",
                "https://mirror.example/img/disk.qcow2?…",
            ),
            ("http://a@b@h:8080/x#secret", "http://h:8080/x"),
            ("http://u:secret@h?secret", "http://h?…"),
            ("http://h/plain.raw", "http://h/plain.raw"),
            ("not a url?secret", "not a url?…"),
        ] {
            let got = super::redact_url(u);
            assert_eq!(got, want, "{u}");
            assert!(!got.contains("secret"));
        }
        // Still accepted.
        super::check_url("url", "https://user:secret@h/x?sig=1").unwrap();
    }
}
