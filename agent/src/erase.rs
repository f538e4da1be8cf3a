//! The disk erase engine behind `decom.disk_erase` and `molar-agent erase`.
//!
//! One call, [`run`], enumerates the disks, lets [`crate::safety`] decide which ones may be
//! destroyed, then erases the cleared ones in parallel (each on its own thread, overwrites
//! with a few writer threads per disk), verifies them by reading back, and returns the
//! per-device report. It is blocking: the task engine runs it on a blocking thread and
//! cancels it through the [`CancellationToken`].
//!
//! Method choice is a pure function of probed capabilities ([`plan`]), so it is unit-tested
//! on capability fixtures; hardware access goes through `crate::hw`.
//!
//! Overwrite speed: the device is opened with `O_DIRECT`; writes are 4 MiB aligned buffers,
//! [`WRITERS_PER_DEVICE`] in flight, so the device queue never drains between requests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::disks::{self, DiskError, Transport};
use crate::hw::{ata, block, nvme};
use crate::safety::{self, Authority, ClearedTarget};

pub use molar_protocol::erase::{
    DeviceEraseResult, DeviceOutcome, DiskEraseParams, DiskEraseResult, EraseErrorInfo,
    EraseMethod, ErasedWith, SkippedDevice, Verification,
};

/// The task result.
pub type EraseReport = DiskEraseResult;

/// Size of one overwrite request.
pub const CHUNK: usize = 4 << 20;
/// Overwrite requests in flight per device.
pub const WRITERS_PER_DEVICE: usize = 4;
/// Read size of verification.
const VERIFY_CHUNK: usize = 1 << 20;
/// Bytes per discard / zero-out ioctl (a progress and cancellation point).
const IOCTL_CHUNK: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Temporary ATA user password, set only for the duration of the erase.
const ATA_TEMP_PASSWORD: &[u8] = b"molar-erase";

/// What to erase and how (the params, with defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseRequest {
    /// `None`: every whole disk.
    pub devices: Option<Vec<String>>,
    pub exclude: Vec<String>,
    pub method: EraseMethod,
    pub verify: bool,
    /// 0: all devices at once.
    pub concurrency: usize,
    /// Overwrite passes (≥ 1): all but the last random, the last zeros.
    pub passes: u32,
}

impl Default for EraseRequest {
    fn default() -> Self {
        EraseRequest {
            devices: None,
            exclude: Vec::new(),
            method: EraseMethod::Auto,
            verify: true,
            concurrency: 0,
            passes: 1,
        }
    }
}

impl EraseRequest {
    pub fn from_params(p: &DiskEraseParams) -> EraseRequest {
        EraseRequest {
            devices: p.devices.clone(),
            exclude: p.exclude.clone().unwrap_or_default(),
            method: p.method.unwrap_or_default(),
            verify: p.verify.unwrap_or(true),
            concurrency: p.concurrency.unwrap_or(0) as usize,
            passes: p.passes.unwrap_or(1).clamp(1, 35),
        }
    }
}

/// Where and under which authority to erase.
#[derive(Debug, Clone)]
pub struct EraseEnv {
    /// Root of `/sys`, `/proc`, `/dev` (`/` in production).
    pub root: PathBuf,
    pub authority: Authority,
    /// Random blocks read back by verification (besides the first and last MiB).
    pub verify_samples: usize,
    /// How often the progress callback is called.
    pub progress_interval: Duration,
}

impl EraseEnv {
    pub fn new(root: impl Into<PathBuf>, authority: Authority) -> EraseEnv {
        EraseEnv {
            root: root.into(),
            authority,
            verify_samples: 256,
            progress_interval: Duration::from_millis(250),
        }
    }
}

/// Where one device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Erasing,
    Verifying,
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Erasing,
            2 => Phase::Verifying,
            3 => Phase::Done,
            4 => Phase::Failed,
            5 => Phase::Cancelled,
            _ => Phase::Queued,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Erasing => "erasing",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
}

/// Progress of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    pub device: String,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Progress of the whole erase: per device, and the byte-weighted total.
#[derive(Debug, Clone, PartialEq)]
pub struct EraseProgress {
    pub devices: Vec<DeviceProgress>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub elapsed: Duration,
}

impl EraseProgress {
    /// 0.0 – 1.0, weighted by bytes.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            return if self.devices.iter().all(|d| d.phase == Phase::Queued) {
                0.0
            } else {
                1.0
            };
        }
        (self.bytes_done as f64 / self.bytes_total as f64).clamp(0.0, 1.0)
    }
    /// 0 – 100.
    pub fn percent(&self) -> f64 {
        self.fraction() * 100.0
    }
    /// Time left, extrapolated from the work done so far.
    pub fn eta(&self) -> Option<Duration> {
        let f = self.fraction();
        if f <= 0.0 || f >= 1.0 {
            return (f >= 1.0).then_some(Duration::ZERO);
        }
        Some(self.elapsed.mul_f64((1.0 - f) / f))
    }
    /// One line for a task status message or a progress bar.
    pub fn message(&self) -> String {
        let active = self
            .devices
            .iter()
            .filter(|d| matches!(d.phase, Phase::Erasing | Phase::Verifying))
            .count();
        let done = self
            .devices
            .iter()
            .filter(|d| matches!(d.phase, Phase::Done))
            .count();
        let failed = self
            .devices
            .iter()
            .filter(|d| matches!(d.phase, Phase::Failed))
            .count();
        let mut s = format!(
            "{done}/{} devices erased, {active} in progress, {} of {} MiB",
            self.devices.len(),
            self.bytes_done / MIB,
            self.bytes_total / MIB
        );
        if failed > 0 {
            s.push_str(&format!(", {failed} failed"));
        }
        s
    }
}

/// Why a device (or the whole run) failed.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("enumerating block devices: {0}")]
    Enumerate(#[from] DiskError),
    #[error(
        "opening {device}: device is busy (mounted, held by dm/md, or opened exclusively by \
         another program)"
    )]
    Busy { device: String },
    #[error("opening {device}: {source}")]
    Open {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {source}")]
    Block {
        device: String,
        #[source]
        source: block::BlockError,
    },
    #[error("{device}: {source}")]
    Nvme {
        device: String,
        #[source]
        source: nvme::NvmeError,
    },
    #[error("{device}: {source}")]
    Ata {
        device: String,
        #[source]
        source: ata::AtaError,
    },
    #[error("{device}: {method} is not supported: {why}")]
    Unsupported {
        device: String,
        method: &'static str,
        why: String,
    },
    #[error(
        "{device}: ata security is frozen (the firmware froze it at boot), so the drive refuses \
         secure erase; suspend and resume the machine (e.g. rtcwake -m mem -s 5) or hot-plug the \
         drive, then retry, or use method overwrite"
    )]
    AtaFrozen { device: String },
    #[error(
        "{device}: ata security is locked or enabled with a password molar does not know; \
         unlock or disable it with the owner's password or the master password, then retry"
    )]
    AtaLocked { device: String },
    #[error(
        "{device}: ata security erase attempt counter expired; power-cycle the drive, then retry"
    )]
    AtaCountExpired { device: String },
    #[error("{device}: ata security is still enabled after the erase and could not be disabled")]
    AtaSecurityStillEnabled { device: String },
    #[error("{device}: nvme sanitize failed (sanitize status log reports failure)")]
    SanitizeFailed { device: String },
    #[error("writing {device} at offset {offset}: {source}")]
    Write {
        device: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading {device} at offset {offset}: {source}")]
    Read {
        device: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {device}: {source}")]
    Sync {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("verifying {device}: non-zero data at offset {offset}")]
    NonZero { device: String, offset: u64 },
    #[error("{device}: cancelled after {done} of {total} bytes")]
    Cancelled {
        device: String,
        done: u64,
        total: u64,
    },
    #[error("{device}: internal error: {msg}")]
    Internal { device: String, msg: String },
}

impl EraseError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            EraseError::Enumerate(e) => e.code(),
            EraseError::Busy { .. } => "device_busy",
            EraseError::Open { .. } => "device_open_failed",
            EraseError::Block { source, .. } => source.code(),
            EraseError::Nvme { source, .. } => source.code(),
            EraseError::Ata { source, .. } => source.code(),
            EraseError::Unsupported { .. } => "method_unsupported",
            EraseError::AtaFrozen { .. } => "ata_frozen",
            EraseError::AtaLocked { .. } => "ata_locked",
            EraseError::AtaCountExpired { .. } => "ata_count_expired",
            EraseError::AtaSecurityStillEnabled { .. } => "ata_security_still_enabled",
            EraseError::SanitizeFailed { .. } => "nvme_sanitize_failed",
            EraseError::Write { .. } => "write_failed",
            EraseError::Read { .. } => "read_failed",
            EraseError::Sync { .. } => "sync_failed",
            EraseError::NonZero { .. } => "verify_nonzero",
            EraseError::Cancelled { .. } => "cancelled",
            EraseError::Internal { .. } => "internal_error",
        }
    }

    fn info(&self) -> EraseErrorInfo {
        EraseErrorInfo {
            code: self.code().to_owned(),
            msg: self.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Method selection (pure).

/// NVMe capabilities that matter for erasing one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvmeCaps {
    pub sanitize_crypto: bool,
    pub sanitize_block: bool,
    pub format: bool,
    /// FNA bit 2.
    pub format_crypto: bool,
    /// FNA bit 0 or 1: a (secure) format touches every namespace.
    pub format_scope_all: bool,
    /// Every namespace of the controller is being erased too.
    pub owns_controller: bool,
    pub nsid: u32,
    pub lbaf: u8,
}

/// ATA security state that matters for secure erase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtaCaps {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    pub count_expired: bool,
    pub enhanced: bool,
    pub erase_time: Option<Duration>,
    pub enhanced_erase_time: Option<Duration>,
}

/// Everything method selection looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub nvme: Option<NvmeCaps>,
    pub ata: Option<AtaCaps>,
    pub is_partition: bool,
    /// The device accepts discard at all.
    pub discard: bool,
    /// Discarded blocks are guaranteed to read back as zeroes.
    pub discard_zeroes: bool,
    /// The device offloads write-zeroes (WRITE ZEROES / WRITE SAME).
    pub write_zeroes_offload: bool,
}

/// One way of erasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    NvmeSanitize(nvme::SanitizeAction),
    NvmeFormat(nvme::SecureEraseSetting),
    AtaSecureErase { enhanced: bool },
    SecureDiscard,
    Discard,
    ZeroOut,
    Overwrite,
    Metadata,
}

impl Step {
    pub fn erased_with(self) -> ErasedWith {
        match self {
            Step::NvmeSanitize(nvme::SanitizeAction::CryptoErase) => ErasedWith::NvmeSanitizeCrypto,
            Step::NvmeSanitize(_) => ErasedWith::NvmeSanitizeBlock,
            Step::NvmeFormat(nvme::SecureEraseSetting::Cryptographic) => {
                ErasedWith::NvmeFormatCrypto
            }
            Step::NvmeFormat(_) => ErasedWith::NvmeFormatUserData,
            Step::AtaSecureErase { enhanced: true } => ErasedWith::AtaSecureEraseEnhanced,
            Step::AtaSecureErase { enhanced: false } => ErasedWith::AtaSecureErase,
            Step::SecureDiscard => ErasedWith::SecureDiscard,
            Step::Discard => ErasedWith::Discard,
            Step::ZeroOut => ErasedWith::ZeroOut,
            Step::Overwrite => ErasedWith::Overwrite,
            Step::Metadata => ErasedWith::Metadata,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Step::NvmeSanitize(nvme::SanitizeAction::CryptoErase) => "nvme sanitize crypto erase",
            Step::NvmeSanitize(_) => "nvme sanitize block erase",
            Step::NvmeFormat(nvme::SecureEraseSetting::Cryptographic) => "nvme format (crypto)",
            Step::NvmeFormat(_) => "nvme format (user data erase)",
            Step::AtaSecureErase { enhanced: true } => "ata enhanced security erase",
            Step::AtaSecureErase { enhanced: false } => "ata security erase",
            Step::SecureDiscard => "secure discard",
            Step::Discard => "discard",
            Step::ZeroOut => "zero-out",
            Step::Overwrite => "overwrite",
            Step::Metadata => "metadata wipe",
        }
    }
}

/// The steps to try in order (the first that succeeds wins), and notes on what was ruled
/// out and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

/// Why an explicit method cannot run on a device (before touching it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Unsupported { method: &'static str, why: String },
    AtaFrozen,
    AtaLocked,
    AtaCountExpired,
}

const FROZEN_NOTE: &str = "ata security erase skipped: the drive is frozen; suspend/resume the \
    machine or hot-plug the drive to unfreeze it for a hardware erase";

fn nvme_steps(n: &NvmeCaps, is_partition: bool, notes: &mut Vec<String>) -> Vec<Step> {
    use nvme::{SanitizeAction as A, SecureEraseSetting as S};
    let mut steps = Vec::new();
    if is_partition {
        return steps;
    }
    if n.sanitize_crypto || n.sanitize_block {
        if n.owns_controller {
            if n.sanitize_crypto {
                steps.push(Step::NvmeSanitize(A::CryptoErase));
            }
            if n.sanitize_block {
                steps.push(Step::NvmeSanitize(A::BlockErase));
            }
        } else {
            notes.push(
                "nvme sanitize skipped: it erases the whole controller and other namespaces \
                 are not being erased"
                    .into(),
            );
        }
    }
    if n.format {
        if !n.format_scope_all || n.owns_controller {
            if n.format_crypto {
                steps.push(Step::NvmeFormat(S::Cryptographic));
            }
            steps.push(Step::NvmeFormat(S::UserData));
        } else {
            notes.push(
                "nvme format skipped: the controller formats all namespaces at once and \
                 other namespaces are not being erased"
                    .into(),
            );
        }
    }
    steps
}

/// Choose the steps for `method` on a device with `caps`.
pub fn plan(method: EraseMethod, caps: &Capabilities) -> Result<Plan, PlanError> {
    let mut notes = Vec::new();
    let steps = match method {
        EraseMethod::Auto => {
            let mut steps = Vec::new();
            if let Some(n) = &caps.nvme {
                steps.extend(nvme_steps(n, caps.is_partition, &mut notes));
            }
            if let Some(a) = &caps.ata
                && a.supported
                && !caps.is_partition
            {
                if a.frozen {
                    notes.push(FROZEN_NOTE.into());
                } else if a.locked || a.enabled {
                    notes.push(
                        "ata security erase skipped: security is enabled with an unknown password"
                            .into(),
                    );
                } else if a.count_expired {
                    notes.push("ata security erase skipped: attempt counter expired".into());
                } else {
                    if a.enhanced {
                        steps.push(Step::AtaSecureErase { enhanced: true });
                    }
                    steps.push(Step::AtaSecureErase { enhanced: false });
                }
            }
            if caps.discard {
                steps.push(Step::SecureDiscard);
                if caps.discard_zeroes {
                    steps.push(Step::Discard);
                }
            }
            if caps.write_zeroes_offload {
                steps.push(Step::ZeroOut);
            }
            steps.push(Step::Overwrite);
            steps
        }
        EraseMethod::NvmeSanitize | EraseMethod::NvmeFormat => {
            let name = method.as_str();
            let Some(n) = &caps.nvme else {
                return Err(PlanError::Unsupported {
                    method: name,
                    why: "not an nvme namespace".into(),
                });
            };
            if caps.is_partition {
                return Err(PlanError::Unsupported {
                    method: name,
                    why: "it acts on whole namespaces, not partitions".into(),
                });
            }
            let all = nvme_steps(n, false, &mut notes);
            let steps: Vec<Step> = all
                .into_iter()
                .filter(|s| {
                    matches!(
                        (method, s),
                        (EraseMethod::NvmeSanitize, Step::NvmeSanitize(_))
                            | (EraseMethod::NvmeFormat, Step::NvmeFormat(_))
                    )
                })
                .collect();
            if steps.is_empty() {
                let why = notes.pop().unwrap_or_else(|| {
                    if method == EraseMethod::NvmeSanitize {
                        "the controller reports no sanitize capability (SANICAP)".into()
                    } else {
                        "the controller does not support Format NVM (OACS)".into()
                    }
                });
                return Err(PlanError::Unsupported { method: name, why });
            }
            steps
        }
        EraseMethod::AtaSecureErase => {
            let name = method.as_str();
            let a = match &caps.ata {
                Some(a) if a.supported && !caps.is_partition => a,
                _ => {
                    return Err(PlanError::Unsupported {
                        method: name,
                        why: "not an ata drive with the security feature set".into(),
                    });
                }
            };
            if a.frozen {
                return Err(PlanError::AtaFrozen);
            }
            if a.locked || a.enabled {
                return Err(PlanError::AtaLocked);
            }
            if a.count_expired {
                return Err(PlanError::AtaCountExpired);
            }
            let mut steps = Vec::new();
            if a.enhanced {
                steps.push(Step::AtaSecureErase { enhanced: true });
            }
            steps.push(Step::AtaSecureErase { enhanced: false });
            steps
        }
        EraseMethod::Discard => vec![Step::Discard],
        EraseMethod::Overwrite => vec![Step::Overwrite],
        EraseMethod::Metadata => vec![Step::Metadata],
    };
    Ok(Plan { steps, notes })
}

/// Byte ranges (offset, length) the metadata wipe zeroes on a device of `size` bytes with
/// the given partitions (offset, length): the first 16 MiB and last 2 MiB of the disk and
/// of each partition, and the btrfs superblock mirrors. That covers MBR and both GPT copies,
/// ext2/3/4, xfs, btrfs, vfat, swap, LVM2, mdraid 0.90/1.0/1.1/1.2, bcache, LUKS1/2
/// headers and key slots, and the four ZFS labels. Ranges are aligned to `align`, merged and
/// sorted.
pub fn metadata_regions(size: u64, align: u64, partitions: &[(u64, u64)]) -> Vec<(u64, u64)> {
    const HEAD: u64 = 16 * MIB;
    const TAIL: u64 = 2 * MIB;
    const BTRFS_MIRRORS: [u64; 3] = [64 * MIB, 256 << 30, 1 << 50];
    let align = align.max(512);
    let mut r: Vec<(u64, u64)> = Vec::new();
    let mut add_area = |start: u64, len: u64| {
        let end = start.saturating_add(len).min(size);
        if start >= end {
            return;
        }
        let len = end - start;
        r.push((start, start + len.min(HEAD)));
        r.push((end - len.min(TAIL), end));
        for m in BTRFS_MIRRORS {
            if m + 64 * 1024 <= len {
                r.push((start + m, start + m + 64 * 1024));
            }
        }
    };
    add_area(0, size);
    for (s, l) in partitions {
        add_area(*s, *l);
    }
    let mut r: Vec<(u64, u64)> = r
        .into_iter()
        .map(|(s, e)| {
            let s = s / align * align;
            let e = e.div_ceil(align).saturating_mul(align).min(size);
            (s, e)
        })
        .filter(|(s, e)| s < e)
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

// ---------------------------------------------------------------------------------------------
// Shared per-device state.

struct DevState {
    device: String,
    done: AtomicU64,
    total: AtomicU64,
    phase: AtomicU8,
}

impl DevState {
    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }
    fn snapshot(&self) -> DeviceProgress {
        DeviceProgress {
            device: self.device.clone(),
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            bytes_done: self.done.load(Ordering::Relaxed),
            bytes_total: self.total.load(Ordering::Relaxed),
        }
    }
}

fn snapshot(states: &[DevState], start: Instant) -> EraseProgress {
    let devices: Vec<DeviceProgress> = states.iter().map(DevState::snapshot).collect();
    let mut done = 0u64;
    let mut total = 0u64;
    for d in &devices {
        total += d.bytes_total;
        // A failed or cancelled device counts as finished for the weighted whole.
        done += match d.phase {
            Phase::Done | Phase::Failed | Phase::Cancelled => d.bytes_total,
            _ => d.bytes_done.min(d.bytes_total),
        };
    }
    EraseProgress {
        devices,
        bytes_done: done,
        bytes_total: total,
        elapsed: start.elapsed(),
    }
}

/// A heap buffer whose usable part is aligned for `O_DIRECT`.
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;
    fn zeroed(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + Self::ALIGN];
        let off = raw.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf { raw, off, len }
    }
    fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// One aligned `CHUNK` of zeroes shared by every writer of every device.
fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| AlignedBuf::zeroed(CHUNK)).as_slice()
}

struct Ctx<'a> {
    device: String,
    file: &'a File,
    size: u64,
    lbs: u64,
    st: &'a DevState,
    cancel: &'a CancellationToken,
}

impl Ctx<'_> {
    fn cancelled(&self) -> EraseError {
        EraseError::Cancelled {
            device: self.device.clone(),
            done: self.st.done.load(Ordering::Relaxed),
            total: self.st.total.load(Ordering::Relaxed),
        }
    }
    fn block_err(&self) -> impl Fn(block::BlockError) -> EraseError + '_ {
        |source| EraseError::Block {
            device: self.device.clone(),
            source,
        }
    }
    fn nvme_err(&self) -> impl Fn(nvme::NvmeError) -> EraseError + '_ {
        |source| EraseError::Nvme {
            device: self.device.clone(),
            source,
        }
    }
    fn ata_err(&self) -> impl Fn(ata::AtaError) -> EraseError + '_ {
        |source| EraseError::Ata {
            device: self.device.clone(),
            source,
        }
    }
    fn sync(&self) -> Result<(), EraseError> {
        self.file.sync_all().map_err(|source| EraseError::Sync {
            device: self.device.clone(),
            source,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Steps.

/// The `CHUNK`-sized pieces of a list of regions, by index.
struct ChunkList<'a> {
    regions: &'a [(u64, u64)],
    /// Index of the first chunk of each region, plus the total at the end.
    first: Vec<u64>,
}

impl<'a> ChunkList<'a> {
    fn new(regions: &'a [(u64, u64)]) -> ChunkList<'a> {
        let mut first = Vec::with_capacity(regions.len() + 1);
        let mut n = 0;
        for (_, len) in regions {
            first.push(n);
            n += len.div_ceil(CHUNK as u64);
        }
        first.push(n);
        ChunkList { regions, first }
    }
    fn len(&self) -> u64 {
        self.first.last().copied().unwrap_or(0)
    }
    /// (offset, length) of chunk `i`.
    fn get(&self, i: u64) -> Option<(u64, u64)> {
        if i >= self.len() {
            return None;
        }
        // The region whose first chunk is the last one ≤ i.
        let r = self.first.partition_point(|f| *f <= i) - 1;
        let (start, len) = *self.regions.get(r)?;
        let off = start + (i - self.first[r]) * CHUNK as u64;
        Some((off, (CHUNK as u64).min(start + len - off)))
    }
}

/// Overwrite `regions` with zeros (last pass) or random data, `WRITERS_PER_DEVICE` requests
/// in flight. `done_base` is the progress already accounted before this pass.
fn write_regions(ctx: &Ctx<'_>, regions: &[(u64, u64)], random: bool) -> Result<(), EraseError> {
    // Work items are CHUNK pieces of the regions, numbered across regions and computed on
    // demand (a list of them would take 80 MB for a 20 TB disk).
    let items = ChunkList::new(regions);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<EraseError>> = Mutex::new(None);
    let writers = (WRITERS_PER_DEVICE as u64).min(items.len()).max(1) as usize;
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                // Zero passes share one read-only buffer for the whole process; only
                // random passes need a buffer per writer.
                let mut own = random.then(|| AlignedBuf::zeroed(CHUNK));
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                loop {
                    if stop.load(Ordering::Relaxed) || ctx.cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((off, len)) = items.get(i) else {
                        return;
                    };
                    let data: &[u8] = match own.as_mut() {
                        Some(buf) => {
                            let d = &mut buf.as_mut()[..len as usize];
                            rng.fill_bytes(d);
                            d
                        }
                        None => &zeros()[..len as usize],
                    };
                    if let Err(source) = ctx.file.write_all_at(data, off) {
                        stop.store(true, Ordering::Relaxed);
                        let mut e = first_err.lock().unwrap_or_else(|p| p.into_inner());
                        // Keep the lowest failing offset: it says how far the device got.
                        let replace = match &*e {
                            Some(EraseError::Write { offset, .. }) => off < *offset,
                            _ => true,
                        };
                        if replace {
                            *e = Some(EraseError::Write {
                                device: ctx.device.clone(),
                                offset: off,
                                source,
                            });
                        }
                        return;
                    }
                    ctx.st.done.fetch_add(len, Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if ctx.cancel.is_cancelled() {
        return Err(ctx.cancelled());
    }
    ctx.sync()
}

fn step_overwrite(ctx: &Ctx<'_>, passes: u32) -> Result<(), EraseError> {
    for pass in 1..=passes {
        write_regions(ctx, &[(0, ctx.size)], pass < passes)?;
    }
    Ok(())
}

/// Discard, secure discard or zero-out in `IOCTL_CHUNK` pieces.
fn step_range_ioctl(
    ctx: &Ctx<'_>,
    op: fn(&File, u64, u64) -> Result<(), block::BlockError>,
) -> Result<(), EraseError> {
    let chunk = IOCTL_CHUNK / ctx.lbs * ctx.lbs;
    let mut off = 0;
    while off < ctx.size {
        if ctx.cancel.is_cancelled() {
            return Err(ctx.cancelled());
        }
        let len = chunk.min(ctx.size - off);
        op(ctx.file, off, len).map_err(ctx.block_err())?;
        off += len;
        ctx.st.done.store(off, Ordering::Relaxed);
    }
    ctx.sync()
}

fn step_nvme_format(
    ctx: &Ctx<'_>,
    caps: &NvmeCaps,
    ses: nvme::SecureEraseSetting,
) -> Result<(), EraseError> {
    nvme::format_nvm(ctx.file, caps.nsid, caps.lbaf, ses).map_err(ctx.nvme_err())?;
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

fn step_nvme_sanitize(ctx: &Ctx<'_>, action: nvme::SanitizeAction) -> Result<(), EraseError> {
    use nvme::SanitizeState as S;
    let poll = Duration::from_millis(500);
    // Let a sanitize from an earlier attempt finish first: a new one would be refused.
    while let Ok(s) = nvme::sanitize_status(ctx.file)
        && s.state == S::InProgress
    {
        if ctx.cancel.is_cancelled() {
            return Err(ctx.cancelled());
        }
        std::thread::sleep(poll);
    }
    nvme::sanitize(ctx.file, action, true).map_err(ctx.nvme_err())?;
    let started = Instant::now();
    loop {
        if ctx.cancel.is_cancelled() {
            // A sanitize cannot be aborted: the controller finishes it on its own.
            return Err(ctx.cancelled());
        }
        let s = nvme::sanitize_status(ctx.file).map_err(ctx.nvme_err())?;
        match s.state {
            S::InProgress => {
                ctx.st
                    .done
                    .store((ctx.size as f64 * s.fraction()) as u64, Ordering::Relaxed);
            }
            S::Completed | S::CompletedNoDeallocate => break,
            S::Failed => {
                return Err(EraseError::SanitizeFailed {
                    device: ctx.device.clone(),
                });
            }
            // The log may lag the command for a moment.
            S::NeverSanitized | S::Reserved(_) if started.elapsed() < Duration::from_secs(30) => {}
            _ => {
                return Err(EraseError::SanitizeFailed {
                    device: ctx.device.clone(),
                });
            }
        }
        std::thread::sleep(poll);
    }
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

fn step_ata_secure_erase(ctx: &Ctx<'_>, caps: &AtaCaps, enhanced: bool) -> Result<(), EraseError> {
    let device = ctx.device.clone();
    let id = ata::identify(ctx.file).map_err(ctx.ata_err())?;
    if id.security_frozen {
        return Err(EraseError::AtaFrozen { device });
    }
    if id.security_locked || id.security_enabled {
        return Err(EraseError::AtaLocked { device });
    }
    if id.security_count_expired {
        return Err(EraseError::AtaCountExpired { device });
    }
    let pw = ata::Password::new(ATA_TEMP_PASSWORD);
    ata::security_set_password(ctx.file, &pw).map_err(ctx.ata_err())?;
    let estimate = if enhanced {
        caps.enhanced_erase_time
    } else {
        caps.erase_time
    };
    let timeout = estimate.map_or(Duration::from_secs(24 * 3600), |e| {
        e * 2 + Duration::from_secs(1800)
    });
    let erase = (|| {
        ata::security_erase_prepare(ctx.file).map_err(ctx.ata_err())?;
        // The erase blocks in the kernel; advance progress by the drive's own estimate.
        let finished = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Some(est) = estimate {
                let finished = &finished;
                s.spawn(move || {
                    let t0 = Instant::now();
                    while !finished.load(Ordering::Relaxed) {
                        let f = (t0.elapsed().as_secs_f64() / est.as_secs_f64()).min(0.99);
                        ctx.st
                            .done
                            .store((ctx.size as f64 * f) as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                });
            }
            let r =
                ata::security_erase_unit(ctx.file, &pw, enhanced, timeout).map_err(ctx.ata_err());
            finished.store(true, Ordering::Relaxed);
            r
        })
    })();
    // ERASE UNIT clears the password on success; make sure it is gone in any case so the
    // drive is never left locked with our temporary password.
    let still_enabled = |f: &File| ata::identify(f).map(|i| i.security_enabled);
    if !matches!(still_enabled(ctx.file), Ok(false)) {
        let _ = ata::security_unlock(ctx.file, &pw);
        let _ = ata::security_disable_password(ctx.file, &pw);
        if !matches!(still_enabled(ctx.file), Ok(false)) {
            return Err(erase.err().unwrap_or(EraseError::AtaSecurityStillEnabled {
                device: ctx.device.clone(),
            }));
        }
    }
    erase?;
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

fn run_step(
    ctx: &Ctx<'_>,
    step: Step,
    caps: &Capabilities,
    req: &EraseRequest,
    regions: &[(u64, u64)],
) -> Result<(), EraseError> {
    ctx.st.done.store(0, Ordering::Relaxed);
    let unsupported = |why: &str| EraseError::Unsupported {
        device: ctx.device.clone(),
        method: step.name(),
        why: why.to_owned(),
    };
    match step {
        Step::Overwrite => {
            ctx.st
                .total
                .store(ctx.size * req.passes.max(1) as u64, Ordering::Relaxed);
            step_overwrite(ctx, req.passes.max(1))
        }
        Step::Metadata => {
            ctx.st
                .total
                .store(regions.iter().map(|r| r.1).sum(), Ordering::Relaxed);
            write_regions(ctx, regions, false)
        }
        Step::Discard => step_range_ioctl(ctx, block::discard),
        Step::SecureDiscard => step_range_ioctl(ctx, block::secure_discard),
        Step::ZeroOut => step_range_ioctl(ctx, block::zero_out),
        Step::NvmeFormat(ses) => match &caps.nvme {
            Some(n) => step_nvme_format(ctx, n, ses),
            None => Err(unsupported("not an nvme namespace")),
        },
        Step::NvmeSanitize(a) => step_nvme_sanitize(ctx, a),
        Step::AtaSecureErase { enhanced } => match &caps.ata {
            Some(a) => step_ata_secure_erase(ctx, a, enhanced),
            None => Err(unsupported("not an ata drive")),
        },
    }
}

/// Read back and check zeroes: the first and last MiB and `samples` random aligned blocks,
/// or exactly `regions` when given (metadata wipe).
fn verify(
    ctx: &Ctx<'_>,
    samples: usize,
    regions: Option<&[(u64, u64)]>,
) -> Result<Verification, EraseError> {
    // Reads after a hardware erase must come from the device, not stale cache.
    let _ = block::flush_buffers(ctx.file);
    let blk = ctx.lbs.max(4096);
    let mut ranges: Vec<(u64, u64)> = match regions {
        Some(r) => r.to_vec(),
        None => {
            let head = MIB.min(ctx.size);
            let mut v = vec![(0, head), (ctx.size - head, head)];
            if ctx.size >= blk {
                let mut rng = rand::rng();
                let nblocks = ctx.size / blk;
                for _ in 0..samples {
                    v.push((rng.random_range(0..nblocks) * blk, blk));
                }
            }
            v
        }
    };
    ranges.sort_unstable();
    let mut buf = AlignedBuf::zeroed(VERIFY_CHUNK);
    let mut checked = 0u64;
    let mut blocks = 0u64;
    for (start, len) in ranges {
        let mut off = start;
        while off < start + len {
            if ctx.cancel.is_cancelled() {
                return Err(ctx.cancelled());
            }
            let n = (VERIFY_CHUNK as u64).min(start + len - off) as usize;
            let data = &mut buf.as_mut()[..n];
            ctx.file
                .read_exact_at(data, off)
                .map_err(|source| EraseError::Read {
                    device: ctx.device.clone(),
                    offset: off,
                    source,
                })?;
            if let Some(i) = data.iter().position(|b| *b != 0) {
                return Ok(Verification {
                    passed: false,
                    blocks_checked: blocks,
                    bytes_checked: checked,
                    nonzero_offset: Some(off + i as u64),
                });
            }
            checked += n as u64;
            blocks += (n as u64).div_ceil(blk);
            off += n as u64;
        }
    }
    Ok(Verification {
        passed: true,
        blocks_checked: blocks,
        bytes_checked: checked,
        nonzero_offset: None,
    })
}

/// Probe what the device can do.
fn probe(t: &ClearedTarget, file: &File) -> (Capabilities, Vec<String>) {
    let d = t.disk();
    let mut notes = Vec::new();
    let mut caps = Capabilities {
        is_partition: t.is_partition(),
        discard: d.discard_max_bytes.unwrap_or(0) > 0,
        discard_zeroes: d.discard_zeroes_data == Some(true)
            || block::discard_zeroes_data(file).unwrap_or(false),
        write_zeroes_offload: d.write_zeroes_max_bytes.unwrap_or(0) > 0,
        ..Default::default()
    };
    if d.transport == Transport::Nvme && !t.is_partition() {
        match nvme::identify_controller(file) {
            Ok(c) => {
                let nsid = d
                    .nsid
                    .or_else(|| nvme::namespace_id(file).ok())
                    .unwrap_or(1);
                let ns = nvme::identify_namespace(file, nsid);
                if let Ok(ns) = &ns
                    && ns.deallocated_reads_zero()
                {
                    caps.discard_zeroes = true;
                }
                caps.nvme = Some(NvmeCaps {
                    sanitize_crypto: c.sanitize_crypto(),
                    sanitize_block: c.sanitize_block(),
                    format: c.supports_format() && ns.is_ok(),
                    format_crypto: c.crypto_erase_supported(),
                    format_scope_all: c.format_applies_to_all() || c.secure_erase_applies_to_all(),
                    owns_controller: t.owns_nvme_controller(),
                    nsid,
                    lbaf: ns.as_ref().map_or(0, |n| n.current_lbaf()),
                });
            }
            Err(e) => notes.push(format!("nvme identify failed, using generic methods: {e}")),
        }
    }
    let ata_like = d.transport == Transport::Sata
        || (matches!(d.transport, Transport::Sas | Transport::Scsi)
            && d.vendor.as_deref() == Some("ATA"));
    if ata_like && !t.is_partition() {
        match ata::identify(file) {
            Ok(id) => {
                caps.ata = Some(AtaCaps {
                    supported: id.security_supported,
                    enabled: id.security_enabled,
                    locked: id.security_locked,
                    frozen: id.security_frozen,
                    count_expired: id.security_count_expired,
                    enhanced: id.enhanced_erase_supported,
                    erase_time: id.erase_time,
                    enhanced_erase_time: id.enhanced_erase_time,
                })
            }
            Err(e) => notes.push(format!("ata identify failed, using generic methods: {e}")),
        }
    }
    (caps, notes)
}

fn open_device(path: &Path) -> io::Result<File> {
    // O_EXCL on a block device: the kernel refuses (EBUSY) if it is mounted, held by
    // dm/md, or opened exclusively by anyone else — the safety rules, enforced again.
    let open = |direct: bool| {
        let mut flags = libc::O_EXCL | libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false),
        r => r,
    }
}

struct Outcome {
    method: Option<ErasedWith>,
    verification: Option<Verification>,
    error: Option<EraseError>,
    notes: Vec<String>,
    erase_time: Duration,
}

fn erase_one(
    t: &ClearedTarget,
    req: &EraseRequest,
    env: &EraseEnv,
    st: &DevState,
    cancel: &CancellationToken,
) -> Outcome {
    let device = t.dev_path().display().to_string();
    let mut out = Outcome {
        method: None,
        verification: None,
        error: None,
        notes: Vec::new(),
        erase_time: Duration::ZERO,
    };
    if cancel.is_cancelled() {
        out.error = Some(EraseError::Cancelled {
            device,
            done: 0,
            total: st.total.load(Ordering::Relaxed),
        });
        return out;
    }
    st.set_phase(Phase::Erasing);
    let file = match open_device(t.dev_path()) {
        Ok(f) => f,
        Err(source) if source.raw_os_error() == Some(libc::EBUSY) => {
            out.error = Some(EraseError::Busy { device });
            return out;
        }
        Err(source) => {
            out.error = Some(EraseError::Open { device, source });
            return out;
        }
    };
    let size = block::size_bytes(&file).unwrap_or(t.size_bytes());
    let lbs = block::logical_block_size(&file)
        .map(u64::from)
        .unwrap_or(t.disk().logical_block_size_or_default() as u64)
        .max(512);
    let ctx = Ctx {
        device: device.clone(),
        file: &file,
        size,
        lbs,
        st,
        cancel,
    };
    let (caps, probe_notes) = probe(t, &file);
    out.notes.extend(probe_notes);
    let plan = match plan(req.method, &caps) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(match e {
                PlanError::Unsupported { method, why } => EraseError::Unsupported {
                    device,
                    method,
                    why,
                },
                PlanError::AtaFrozen => EraseError::AtaFrozen { device },
                PlanError::AtaLocked => EraseError::AtaLocked { device },
                PlanError::AtaCountExpired => EraseError::AtaCountExpired { device },
            });
            return out;
        }
    };
    out.notes.extend(plan.notes);
    let regions = if req.method == EraseMethod::Metadata {
        let parts: Vec<(u64, u64)> = t
            .disk()
            .partitions
            .iter()
            .filter(|_| !t.is_partition())
            .filter_map(|p| Some((p.start_bytes?, p.size_bytes)))
            .collect();
        metadata_regions(size, lbs, &parts)
    } else {
        Vec::new()
    };

    let t0 = Instant::now();
    let mut steps = plan.steps.clone();
    let mut i = 0;
    while i < steps.len() {
        let step = steps[i];
        i += 1;
        st.set_phase(Phase::Erasing);
        match run_step(&ctx, step, &caps, req, &regions) {
            Ok(()) => {
                out.method = Some(step.erased_with());
                out.error = None;
            }
            Err(e @ EraseError::Cancelled { .. }) => {
                out.error = Some(e);
                break;
            }
            Err(e) if i < steps.len() => {
                out.notes.push(format!(
                    "{} failed, trying the next method: {e}",
                    step.name()
                ));
                out.error = Some(e);
                continue;
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
        out.erase_time = t0.elapsed();
        if !req.verify {
            break;
        }
        st.set_phase(Phase::Verifying);
        let regions_opt = (step == Step::Metadata).then_some(regions.as_slice());
        match verify(&ctx, env.verify_samples, regions_opt) {
            Ok(v) if v.passed => {
                out.verification = Some(v);
                out.error = None;
                break;
            }
            Ok(v) => {
                let offset = v.nonzero_offset.unwrap_or(0);
                out.verification = Some(v);
                out.error = Some(EraseError::NonZero {
                    device: device.clone(),
                    offset,
                });
                // Auto: a method that does not read back as zeroes is followed by an
                // overwrite, so the device still ends up erased.
                if req.method == EraseMethod::Auto && !matches!(step, Step::Overwrite) {
                    out.notes.push(format!(
                        "{} left non-zero data at offset {offset}; overwriting",
                        step.name()
                    ));
                    steps.truncate(i);
                    steps.push(Step::Overwrite);
                    continue;
                }
                break;
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    if out.erase_time.is_zero() {
        out.erase_time = t0.elapsed();
    }
    out
}

/// `None` when every attempted device was erased (skipped devices are not failures); else
/// a one-line message for a task `error` status naming each failed or cancelled device.
pub fn failure_message(r: &EraseReport) -> Option<String> {
    let bad: Vec<String> = r
        .devices
        .iter()
        .filter(|d| d.outcome != DeviceOutcome::Erased)
        .map(|d| match &d.error {
            Some(e) => e.msg.clone(),
            None => format!("{}: {:?}", d.device, d.outcome),
        })
        .collect();
    if bad.is_empty() {
        return None;
    }
    let what = if r.cancelled { "cancelled" } else { "failed" };
    Some(format!(
        "{} of {} devices {what}: {}",
        bad.len(),
        r.devices.len(),
        bad.join("; ")
    ))
}

/// Erase the devices `req` asks for. Blocking; run it on a blocking thread.
///
/// `progress` is called from this thread every `env.progress_interval` and once at the
/// end. Fails as a whole only if the disks cannot be enumerated; everything else is
/// reported per device.
pub fn run(
    req: &EraseRequest,
    env: &EraseEnv,
    progress: &(dyn Fn(&EraseProgress) + Sync),
    cancel: &CancellationToken,
) -> Result<EraseReport, EraseError> {
    let start = Instant::now();
    let all = disks::enumerate(&env.root)?;
    let (targets, skipped) = safety::select_targets(
        &env.root,
        &all,
        &env.authority,
        req.devices.as_deref(),
        &req.exclude,
    );
    let states: Vec<DevState> = targets
        .iter()
        .map(|t| {
            let size = t.size_bytes();
            let total = match req.method {
                EraseMethod::Overwrite => size * req.passes.max(1) as u64,
                _ => size,
            };
            DevState {
                device: t.dev_path().display().to_string(),
                done: AtomicU64::new(0),
                total: AtomicU64::new(total),
                phase: AtomicU8::new(Phase::Queued as u8),
            }
        })
        .collect();
    let n = targets.len();
    let concurrency = if req.concurrency == 0 {
        n
    } else {
        req.concurrency.min(n)
    };
    let next = AtomicU64::new(0);
    let remaining = AtomicU64::new(n as u64);
    let outcomes: Mutex<Vec<Option<(Outcome, Duration)>>> =
        Mutex::new((0..n).map(|_| None).collect());

    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return;
                    }
                    let t0 = Instant::now();
                    let st = &states[i];
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        erase_one(&targets[i], req, env, st, cancel)
                    }));
                    let o = r.unwrap_or_else(|p| Outcome {
                        method: None,
                        verification: None,
                        error: Some(EraseError::Internal {
                            device: st.device.clone(),
                            msg: p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "panic".into()),
                        }),
                        notes: Vec::new(),
                        erase_time: t0.elapsed(),
                    });
                    st.set_phase(match &o.error {
                        None => Phase::Done,
                        Some(EraseError::Cancelled { .. }) => Phase::Cancelled,
                        Some(_) => Phase::Failed,
                    });
                    outcomes.lock().unwrap_or_else(|p| p.into_inner())[i] = Some((o, t0.elapsed()));
                    remaining.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
        let mut last = Instant::now();
        progress(&snapshot(&states, start));
        while remaining.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(20).min(env.progress_interval));
            if last.elapsed() >= env.progress_interval {
                progress(&snapshot(&states, start));
                last = Instant::now();
            }
        }
    });
    progress(&snapshot(&states, start));

    let outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut devices = Vec::with_capacity(n);
    for ((t, st), o) in targets.iter().zip(&states).zip(outcomes) {
        let (o, elapsed) = o.unwrap_or_else(|| {
            (
                Outcome {
                    method: None,
                    verification: None,
                    error: Some(EraseError::Internal {
                        device: st.device.clone(),
                        msg: "device was never processed".into(),
                    }),
                    notes: Vec::new(),
                    erase_time: Duration::ZERO,
                },
                Duration::ZERO,
            )
        });
        let done = st.done.load(Ordering::Relaxed);
        let outcome = match &o.error {
            None => DeviceOutcome::Erased,
            Some(EraseError::Cancelled { .. }) => DeviceOutcome::Cancelled,
            Some(_) => DeviceOutcome::Failed,
        };
        let secs = o.erase_time.as_secs_f64();
        devices.push(DeviceEraseResult {
            device: st.device.clone(),
            model: t.disk().model.clone(),
            serial: t.disk().serial.clone(),
            outcome,
            method: o.method,
            size_bytes: t.size_bytes(),
            bytes_done: done,
            seconds: elapsed.as_secs_f64(),
            throughput: if secs > 0.0 { done as f64 / secs } else { 0.0 },
            verification: o.verification,
            error: o.error.as_ref().map(EraseError::info),
            notes: o.notes,
        });
    }
    let skipped = skipped
        .into_iter()
        .map(|s| SkippedDevice {
            reason: s.reason(),
            code: s.refusal.code().to_owned(),
            device: s.device,
        })
        .collect();
    Ok(DiskEraseResult {
        erased: devices
            .iter()
            .filter(|d| d.outcome == DeviceOutcome::Erased)
            .count() as u32,
        failed: devices
            .iter()
            .filter(|d| d.outcome == DeviceOutcome::Failed)
            .count() as u32,
        cancelled: cancel.is_cancelled(),
        bytes: devices.iter().map(|d| d.bytes_done).sum(),
        seconds: start.elapsed().as_secs_f64(),
        devices,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme::{SanitizeAction as A, SecureEraseSetting as S};

    fn nvme_caps() -> NvmeCaps {
        NvmeCaps {
            format: true,
            owns_controller: true,
            nsid: 1,
            ..Default::default()
        }
    }

    fn steps(method: EraseMethod, caps: &Capabilities) -> Vec<Step> {
        plan(method, caps).unwrap().steps
    }

    #[test]
    fn auto_on_qemu_nvme_uses_format_user_data() {
        // QEMU 7.2: oacs=0x10a (format), fna=0, sanicap=0.
        let caps = Capabilities {
            nvme: Some(nvme_caps()),
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [Step::NvmeFormat(S::UserData), Step::Overwrite]
        );
    }

    #[test]
    fn auto_on_nvme_prefers_sanitize_crypto_then_block_then_format_crypto() {
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                sanitize_block: true,
                format_crypto: true,
                ..nvme_caps()
            }),
            discard: true,
            discard_zeroes: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [
                Step::NvmeSanitize(A::CryptoErase),
                Step::NvmeSanitize(A::BlockErase),
                Step::NvmeFormat(S::Cryptographic),
                Step::NvmeFormat(S::UserData),
                Step::SecureDiscard,
                Step::Discard,
                Step::Overwrite
            ]
        );
        assert_eq!(
            steps(EraseMethod::NvmeSanitize, &caps),
            [
                Step::NvmeSanitize(A::CryptoErase),
                Step::NvmeSanitize(A::BlockErase)
            ]
        );
        assert_eq!(
            steps(EraseMethod::NvmeFormat, &caps),
            [
                Step::NvmeFormat(S::Cryptographic),
                Step::NvmeFormat(S::UserData)
            ]
        );
    }

    #[test]
    fn controller_wide_operations_need_every_namespace() {
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                format_scope_all: true,
                owns_controller: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        let p = plan(EraseMethod::Auto, &caps).unwrap();
        assert_eq!(p.steps, [Step::Overwrite]);
        assert_eq!(p.notes.len(), 2);
        match plan(EraseMethod::NvmeSanitize, &caps) {
            Err(PlanError::Unsupported { why, .. }) => assert!(why.contains("other namespaces")),
            other => panic!("{other:?}"),
        }
        // Per-namespace format is fine without owning the controller.
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                owns_controller: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::NvmeFormat, &caps),
            [Step::NvmeFormat(S::UserData)]
        );
        let none = Capabilities {
            nvme: Some(NvmeCaps {
                format: false,
                ..nvme_caps()
            }),
            ..Default::default()
        };
        assert!(matches!(
            plan(EraseMethod::NvmeSanitize, &none),
            Err(PlanError::Unsupported { .. })
        ));
        assert!(matches!(
            plan(EraseMethod::NvmeFormat, &Capabilities::default()),
            Err(PlanError::Unsupported { .. })
        ));
    }

    #[test]
    fn ata_selection_and_frozen_drives() {
        let ok = AtaCaps {
            supported: true,
            enhanced: true,
            ..Default::default()
        };
        let caps = Capabilities {
            ata: Some(ok),
            discard: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &caps),
            [
                Step::AtaSecureErase { enhanced: true },
                Step::AtaSecureErase { enhanced: false },
                Step::SecureDiscard,
                Step::Overwrite
            ]
        );
        let frozen = Capabilities {
            ata: Some(AtaCaps { frozen: true, ..ok }),
            ..Default::default()
        };
        let p = plan(EraseMethod::Auto, &frozen).unwrap();
        assert_eq!(p.steps, [Step::Overwrite]);
        assert!(p.notes[0].contains("frozen") && p.notes[0].contains("suspend/resume"));
        assert_eq!(
            plan(EraseMethod::AtaSecureErase, &frozen),
            Err(PlanError::AtaFrozen)
        );
        let e = EraseError::AtaFrozen {
            device: "/dev/sda".into(),
        };
        assert_eq!(e.code(), "ata_frozen");
        assert!(e.to_string().contains("suspend and resume"));
        let locked = Capabilities {
            ata: Some(AtaCaps { locked: true, ..ok }),
            ..Default::default()
        };
        assert_eq!(
            plan(EraseMethod::AtaSecureErase, &locked),
            Err(PlanError::AtaLocked)
        );
        assert!(matches!(
            plan(EraseMethod::AtaSecureErase, &Capabilities::default()),
            Err(PlanError::Unsupported { .. })
        ));
    }

    #[test]
    fn generic_devices_and_partitions() {
        // A loop device: discard without a zero guarantee, no write-zeroes offload.
        let lp = Capabilities {
            discard: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &lp),
            [Step::SecureDiscard, Step::Overwrite]
        );
        let zeroing = Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes_offload: true,
            ..Default::default()
        };
        assert_eq!(
            steps(EraseMethod::Auto, &zeroing),
            [
                Step::SecureDiscard,
                Step::Discard,
                Step::ZeroOut,
                Step::Overwrite
            ]
        );
        // Partitions never get whole-device hardware erases.
        let part = Capabilities {
            nvme: Some(NvmeCaps {
                sanitize_crypto: true,
                ..nvme_caps()
            }),
            is_partition: true,
            ..Default::default()
        };
        assert_eq!(steps(EraseMethod::Auto, &part), [Step::Overwrite]);
        assert!(plan(EraseMethod::NvmeFormat, &part).is_err());
        for (m, s) in [
            (EraseMethod::Discard, Step::Discard),
            (EraseMethod::Overwrite, Step::Overwrite),
            (EraseMethod::Metadata, Step::Metadata),
        ] {
            assert_eq!(steps(m, &part), [s]);
        }
    }

    #[test]
    fn metadata_regions_cover_both_ends_partitions_and_btrfs_mirrors() {
        let g = 1u64 << 30;
        let r = metadata_regions(
            10 * g,
            512,
            &[(MIB, 100 * MIB), (101 * MIB, 10 * g - 102 * MIB)],
        );
        // Disk head (16 MiB, swallowing the first partition's head), p1 tail, p1 btrfs
        // mirror at +64 MiB, disk btrfs mirror at 64 MiB, ...
        assert_eq!(r[0], (0, 17 * MIB));
        assert!(r.contains(&(64 * MIB, 64 * 1024)));
        assert!(r.contains(&(65 * MIB, 64 * 1024)));
        assert!(r.contains(&(99 * MIB, 18 * MIB)), "{r:?}");
        let last = r.last().unwrap();
        assert_eq!(last.0 + last.1, 10 * g);
        assert!(last.1 >= 2 * MIB);
        // Sorted, non-overlapping, aligned.
        for w in r.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0);
        }
        assert!(r.iter().all(|(s, l)| s % 512 == 0 && l % 512 == 0));
        // A tiny device is covered whole.
        assert_eq!(metadata_regions(3 * MIB, 4096, &[]), [(0, 3 * MIB)]);
        assert!(metadata_regions(0, 512, &[]).is_empty());
        // Past 256 GiB the second btrfs mirror appears.
        let r = metadata_regions(300 * g, 4096, &[]);
        assert!(r.contains(&(256 * g, 64 * 1024)));
    }

    #[test]
    fn chunk_list_covers_regions_exactly() {
        let c = CHUNK as u64;
        let regions = [(0, 2 * c + 512), (10 * c, 0), (20 * c, c)];
        let l = ChunkList::new(&regions);
        assert_eq!(l.len(), 4);
        assert_eq!(l.get(0), Some((0, c)));
        assert_eq!(l.get(1), Some((c, c)));
        assert_eq!(l.get(2), Some((2 * c, 512)));
        assert_eq!(l.get(3), Some((20 * c, c)));
        assert_eq!(l.get(4), None);
        assert_eq!(ChunkList::new(&[]).get(0), None);
        let huge = [(0u64, 20u64 << 40)];
        let l = ChunkList::new(&huge);
        assert_eq!(l.len(), (20u64 << 40) / c);
        assert_eq!(l.get(l.len() - 1), Some(((20u64 << 40) - c, c)));
    }

    #[test]
    fn progress_is_byte_weighted() {
        let p = EraseProgress {
            devices: vec![
                DeviceProgress {
                    device: "a".into(),
                    phase: Phase::Erasing,
                    bytes_done: 50,
                    bytes_total: 100,
                },
                DeviceProgress {
                    device: "b".into(),
                    phase: Phase::Done,
                    bytes_done: 300,
                    bytes_total: 300,
                },
            ],
            bytes_done: 350,
            bytes_total: 400,
            elapsed: Duration::from_secs(7),
        };
        assert_eq!(p.percent(), 87.5);
        assert_eq!(p.eta(), Some(Duration::from_secs(1)));
        assert_eq!(p.message(), "1/2 devices erased, 1 in progress, 0 of 0 MiB");
    }

    #[test]
    fn request_from_params_applies_defaults() {
        let r = EraseRequest::from_params(&DiskEraseParams::default());
        assert_eq!(r, EraseRequest::default());
        let r = EraseRequest::from_params(&DiskEraseParams {
            passes: Some(0),
            verify: Some(false),
            concurrency: Some(2),
            ..Default::default()
        });
        assert_eq!((r.passes, r.verify, r.concurrency), (1, false, 2));
    }

    #[test]
    fn run_on_fixture_skips_everything_on_host_without_allow_list() {
        let f = crate::disks::tests::sample();
        let env = EraseEnv::new(f.root(), Authority::Host { allowed: vec![] });
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = run(
            &EraseRequest::default(),
            &env,
            &|_| {
                calls.fetch_add(1, Ordering::Relaxed);
            },
            &CancellationToken::new(),
        )
        .unwrap();
        assert!(r.devices.is_empty());
        assert_eq!(r.erased, 0);
        assert!(r.skipped.iter().any(|s| s.code == "not_allowed_on_host"));
        assert!(r.skipped.iter().all(|s| s.reason.starts_with("skipped: ")));
        assert!(calls.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn failure_message_names_each_failed_device() {
        let f = crate::disks::tests::sample();
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        let req = EraseRequest {
            devices: Some(vec!["vda".into(), "sda".into()]),
            ..Default::default()
        };
        let r = run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap();
        let m = failure_message(&r).unwrap();
        assert!(m.starts_with("1 of 1 devices failed: opening "), "{m}");
        let mut ok = r.clone();
        ok.devices.clear();
        assert_eq!(failure_message(&ok), None);
    }

    /// The fixture tree with `dev/vda` as a regular file of `size` bytes of 0xa5: the
    /// engine's write, verify and cancel paths run unprivileged (block ioctls fail with
    /// ENOTTY on a file and the engine falls back to the sysfs size).
    fn fixture_with_file_disk(size: u64) -> (crate::disks::tests::Fixture, PathBuf) {
        let f = crate::disks::tests::sample();
        let vda = f
            .root()
            .join("sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
        std::fs::write(vda.join("size"), format!("{}\n", size / 512)).unwrap();
        let dev = f.root().join("dev/vda");
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        std::fs::write(&dev, vec![0xa5u8; size as usize]).unwrap();
        (f, dev)
    }

    fn vda_request(method: EraseMethod) -> EraseRequest {
        EraseRequest {
            devices: Some(vec!["vda".into()]),
            method,
            ..Default::default()
        }
    }

    #[test]
    fn overwrite_with_random_passes_ends_in_zeros_on_a_file_device() {
        let (f, dev) = fixture_with_file_disk(9 * MIB);
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        let mut req = vda_request(EraseMethod::Overwrite);
        req.passes = 3;
        let seen = std::sync::Mutex::new(Vec::new());
        let r = run(
            &req,
            &env,
            &|p| seen.lock().unwrap().push(p.bytes_done),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(r.erased, 1, "{r:#?}");
        let d = &r.devices[0];
        assert_eq!(d.method, Some(ErasedWith::Overwrite));
        assert_eq!(d.bytes_done, 3 * 9 * MIB);
        assert!(d.verification.as_ref().unwrap().passed);
        assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0));
        let seen = seen.lock().unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 3 * 9 * MIB);
        assert!(failure_message(&r).is_none());
    }

    #[test]
    fn metadata_wipe_zeroes_only_its_regions() {
        let (f, dev) = fixture_with_file_disk(40 * MIB);
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        let r = run(
            &vda_request(EraseMethod::Metadata),
            &env,
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(r.erased, 1, "{r:#?}");
        assert_eq!(r.devices[0].bytes_done, 18 * MIB);
        let data = std::fs::read(&dev).unwrap();
        let m = MIB as usize;
        assert!(data[..16 * m].iter().all(|b| *b == 0));
        assert!(data[16 * m..38 * m].iter().all(|b| *b == 0xa5));
        assert!(data[38 * m..].iter().all(|b| *b == 0));
    }

    #[test]
    fn verification_names_the_first_nonzero_offset() {
        let (f, dev) = fixture_with_file_disk(4 * MIB);
        let mut data = vec![0u8; 4 * MIB as usize];
        data[4097] = 1;
        std::fs::write(&dev, &data).unwrap();
        let file = std::fs::File::open(&dev).unwrap();
        let st = DevState {
            device: dev.display().to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            phase: AtomicU8::new(0),
        };
        let cancel = CancellationToken::new();
        let ctx = Ctx {
            device: st.device.clone(),
            file: &file,
            size: 4 * MIB,
            lbs: 512,
            st: &st,
            cancel: &cancel,
        };
        let v = verify(&ctx, 16, None).unwrap();
        assert!(!v.passed);
        assert_eq!(v.nonzero_offset, Some(4097));
        data[4097] = 0;
        std::fs::write(&dev, &data).unwrap();
        let v = verify(&ctx, 16, None).unwrap();
        assert!(v.passed);
        assert!(v.bytes_checked >= 2 * MIB);
        drop(f);
    }

    #[test]
    fn cancelled_before_start_touches_nothing() {
        let (f, dev) = fixture_with_file_disk(MIB);
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = run(&vda_request(EraseMethod::Overwrite), &env, &|_| {}, &cancel).unwrap();
        assert!(r.cancelled);
        assert_eq!(r.devices[0].outcome, DeviceOutcome::Cancelled);
        assert_eq!(r.devices[0].bytes_done, 0);
        assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0xa5));
        let m = failure_message(&r).unwrap();
        assert!(m.starts_with("1 of 1 devices cancelled: "), "{m}");
    }

    #[test]
    fn explicit_hardware_methods_fail_clearly_on_a_plain_device() {
        let (f, dev) = fixture_with_file_disk(MIB);
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        for (m, code) in [
            (EraseMethod::NvmeFormat, "method_unsupported"),
            (EraseMethod::NvmeSanitize, "method_unsupported"),
            (EraseMethod::AtaSecureErase, "method_unsupported"),
            (EraseMethod::Discard, "block_ioctl_failed"),
        ] {
            let r = run(&vda_request(m), &env, &|_| {}, &CancellationToken::new()).unwrap();
            let e = r.devices[0].error.as_ref().unwrap();
            assert_eq!(e.code, code, "{m:?}: {}", e.msg);
        }
        assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn run_fails_whole_when_enumeration_fails() {
        let dir = tempfile::tempdir().unwrap();
        let env = EraseEnv::new(dir.path(), Authority::Ramdisk);
        let e = run(
            &EraseRequest::default(),
            &env,
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "disk_list_failed");
    }

    #[test]
    fn fixture_device_that_cannot_be_opened_fails_with_a_clear_message() {
        // The fixture's /dev/vda does not exist: the device fails, nothing else happens.
        let f = crate::disks::tests::sample();
        let env = EraseEnv::new(f.root(), Authority::Ramdisk);
        let req = EraseRequest {
            devices: Some(vec!["vda".into()]),
            ..Default::default()
        };
        let r = run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap();
        assert_eq!(r.failed, 1);
        let e = r.devices[0].error.as_ref().unwrap();
        assert_eq!(e.code, "device_open_failed");
        assert!(e.msg.starts_with("opening ") && e.msg.contains("No such file"));
    }
}
