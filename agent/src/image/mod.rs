//! Putting an OS image on a disk: the pipeline behind `standbye.prepare_image`,
//! `standbye.cache_images` and `molar-agent image write`.
//!
//! A stack of small adapters (STYLE.md 8), each in its file: `fetch` (HTTP(S) with retries,
//! resume by Range and a stall timeout, or a local file; hashes as it goes), `checksum`
//! (SHA-256/512, sums files), `detect` (magic bytes, decompressors), `qcow2` (qcow2 → raw
//! while streaming), `sink` (the disk through the shared `O_DIRECT` writer, zero runs
//! skipped only on a device known to read zeros), `pipeline` (one image onto one disk, the
//! stages on their own threads), `cache` (images kept on a cache disk or in memory).
//!
//! What `prepare_image` last wrote to each device is remembered ([`written_on`]) so
//! `run_image` can refuse a device that does not hold the image it names.

pub mod cache;
pub mod checksum;
pub mod detect;
pub mod fetch;
pub mod pipeline;
pub mod qcow2;
pub mod sink;

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

pub use fetch::{FetchError, FetchOptions};
pub use pipeline::{Job, Outcome, Progress};

/// Why an image was not written (or cached).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Sums(#[from] checksum::SumsError),
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
    #[error(transparent)]
    Qcow2(#[from] qcow2::Qcow2Error),
    #[error("opening {device}: {source}")]
    Open {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("decompressing the {compression} stream: {source}")]
    Decompress {
        compression: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing {device}: {source}")]
    Write {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "checksum mismatch: the image's file has {got}, expected {expected}; the device does \
         not hold the image"
    )]
    ChecksumMismatch { expected: String, got: String },
    #[error("the image is empty")]
    Empty,
    #[error("the image is {size} bytes ({what}), larger than {device} ({capacity} bytes)")]
    LargerThanTarget {
        what: &'static str,
        size: u64,
        device: String,
        capacity: u64,
    },
    #[error("no cached image {0}")]
    NotCached(String),
    #[error("{device} holds the image cache; name another disk or drop the cache first")]
    CacheOnTarget { device: String },
    #[error("cache: {0}")]
    Cache(String),
    #[error("no room in the cache: {needed} bytes needed, {free} free of {capacity}")]
    NoRoom {
        needed: u64,
        free: u64,
        capacity: u64,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// Stable protocol code.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Fetch(e) => e.code(),
            ImageError::Sums(_) => "checksum_unavailable",
            ImageError::Detect(detect::DetectError::Mismatch { .. }) => "format_mismatch",
            ImageError::Detect(_) => "unsupported_format",
            ImageError::Qcow2(qcow2::Qcow2Error::NeedsRandomAccess { .. }) => "needs_random_access",
            ImageError::Qcow2(qcow2::Qcow2Error::LargerThanTarget { .. })
            | ImageError::LargerThanTarget { .. } => "image_too_large",
            ImageError::Qcow2(_) => "qcow2_invalid",
            ImageError::Open { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                "device_busy"
            }
            ImageError::Open { .. } => "device_open_failed",
            ImageError::Read { .. } => "read_failed",
            ImageError::Decompress { .. } => "decompress_failed",
            ImageError::Write { .. } => "write_failed",
            ImageError::ChecksumMismatch { .. } => "checksum_mismatch",
            ImageError::Empty => "image_empty",
            ImageError::NotCached(_) => "not_cached",
            ImageError::CacheOnTarget { .. } => molar_protocol::codes::REFUSED,
            ImageError::Cache(_) => "cache_failed",
            ImageError::NoRoom { .. } => "no_room",
            ImageError::Cancelled => molar_protocol::codes::CANCELLED,
            ImageError::Internal(_) => molar_protocol::codes::INTERNAL,
        }
    }
}

/// What `prepare_image` wrote to a device, for `run_image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub image_id: String,
    /// Kernel name of the device (`nvme0n1`).
    pub device: String,
    /// Bytes of the disk image written (raw size or qcow2 virtual size).
    pub bytes: u64,
    /// `sha256:HEX` of the image's file, `None` when the check was waived.
    pub checksum: Option<String>,
}

static WRITTEN: Mutex<BTreeMap<String, Written>> = Mutex::new(BTreeMap::new());

fn written() -> std::sync::MutexGuard<'static, BTreeMap<String, Written>> {
    WRITTEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// What was last written to `device` (kernel name or `/dev/` path) in this agent's life.
pub fn written_on(device: &str) -> Option<Written> {
    let name = device.rsplit('/').next().unwrap_or(device);
    written().get(name).cloned()
}

/// Records a finished write (`w.device` is the kernel name).
pub fn record_written(w: Written) {
    written().insert(w.device.clone(), w);
}

/// A write to `device` began: whatever it held is gone.
pub fn forget_written(device: &str) {
    written().remove(device);
}

#[cfg(test)]
mod tests;
