//! The disk erase engine behind `decom.disk_erase` and `molar-agent erase`.
//!
//! One call, [`run`], waits for the block devices to settle when asked for every disk,
//! enumerates them, lets [`crate::safety`] decide which ones may be destroyed, checks that
//! every disk the controller expects is among them, then erases the cleared ones in
//! parallel (each on its own thread), verifies them by reading back, and returns the
//! per-device report. It is blocking: the task engine runs it on a blocking thread and
//! cancels it through the [`CancellationToken`].
//!
//! The engine is split along its seams: `plan` chooses the steps (a pure function of probed
//! capabilities, unit-tested on capability fixtures), `probe` reads those capabilities from
//! a device, `steps` runs one erase step and sends its commands through the
//! `hardware::EraseHardware` trait (over `crate::hw`, or a recording fake in tests),
//! `expect` checks the expected disks, `verify` reads back, `progress` tracks bytes per
//! device. This module owns the request, the errors and the per-device orchestration.
//!
//! Overwrite speed: [`crate::directio`] writes 4 MiB aligned `O_DIRECT` requests,
//! [`WRITERS_PER_DEVICE`] in flight, so the device queue never drains between requests.

mod expect;
mod hardware;
mod plan;
mod probe;
mod progress;
mod steps;
mod verify;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::disks::settle::{self, SettleError, SettleRule};
use crate::disks::{self, DiskError};
use crate::hw::{ata, block, nvme};
use crate::safety::{self, Authority, ClearedTarget};

pub use molar_protocol::erase::{
    DeviceEraseResult, DeviceOutcome, DiskEraseParams, DiskEraseResult, EraseErrorInfo,
    EraseMethod, ErasedWith, SkippedDevice, Verification,
};

pub use plan::{AtaCaps, Capabilities, NvmeCaps, Plan, PlanError, Step, metadata_regions, plan};
pub use progress::{DeviceProgress, EraseProgress, Phase};
pub use steps::{CHUNK, WRITERS_PER_DEVICE};

use hardware::EraseHardware;
use probe::probe;
use progress::{DevState, snapshot};
use steps::run_step;
use verify::verify;

/// The task result.
pub type EraseReport = DiskEraseResult;

const MIB: u64 = 1 << 20;

/// What to erase and how (the params, with defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseRequest {
    /// `None`: every whole disk, once the block devices have settled.
    pub devices: Option<Vec<String>>,
    /// Serials or WWNs of disks that must be present and erased, or nothing is.
    pub expect: Vec<String>,
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
            expect: Vec::new(),
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
            expect: p.expect.clone().unwrap_or_default(),
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
    /// How long "every disk" waits for the block devices to settle first.
    pub settle: SettleRule,
}

impl EraseEnv {
    pub fn new(root: impl Into<PathBuf>, authority: Authority) -> EraseEnv {
        EraseEnv {
            root: root.into(),
            authority,
            verify_samples: 256,
            progress_interval: Duration::from_millis(250),
            settle: SettleRule::default(),
        }
    }
}

/// Why a device (or the whole run) failed.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("enumerating block devices: {0}")]
    Enumerate(#[from] DiskError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error(
        "expected disks are missing, so nothing was erased: {} (the serial or wwn of none of \
         the {present} block devices present)",
        missing.join(", ")
    )]
    ExpectedMissing {
        missing: Vec<String>,
        present: usize,
    },
    #[error("expected disks would not be erased, so nothing was: {}", disks.join("; "))]
    ExpectedNotErased { disks: Vec<String> },
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
    #[error(
        "{device}: nvme sanitize still in progress after {} s ({percent}% done), well past \
         the drive's own estimate; the controller finishes it on its own: read its sanitize \
         status log before retrying",
        waited.as_secs()
    )]
    SanitizeTimeout {
        device: String,
        waited: Duration,
        percent: u32,
    },
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
            EraseError::Settle(e) => e.code(),
            EraseError::ExpectedMissing { .. } => molar_protocol::codes::EXPECTED_DISK_MISSING,
            EraseError::ExpectedNotErased { .. } => molar_protocol::codes::REFUSED,
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
            EraseError::SanitizeTimeout { .. } => "nvme_sanitize_timeout",
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

/// One device being erased: where to write and read, how to send it commands, and the
/// clock that bounds its polls.
struct Ctx<'a> {
    device: String,
    file: &'a File,
    hw: &'a dyn EraseHardware,
    clock: &'a dyn Clock,
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
    let file = match crate::directio::open(t.dev_path()) {
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
    let hw = hardware::Device(&file);
    let clock = SystemClock::new();
    let ctx = Ctx {
        device: device.clone(),
        file: &file,
        hw: &hw,
        clock: &clock,
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
    disks::zeroed::forget(t.name());
    run_plan(
        &ctx,
        plan.steps,
        &caps,
        req,
        env.verify_samples,
        &regions,
        &mut out,
    );
    // A whole-device erase that read back as zeros: an image written next may skip its
    // zero runs.
    if out.error.is_none()
        && req.method != EraseMethod::Metadata
        && out.verification.as_ref().is_some_and(|v| v.passed)
    {
        disks::zeroed::record(t.name());
    }
    out
}

/// Try `steps` in order until one erases (and, when asked, verifies) the device; record
/// the outcome in `out`. Cancellation is checked before every step.
fn run_plan(
    ctx: &Ctx<'_>,
    mut steps: Vec<Step>,
    caps: &Capabilities,
    req: &EraseRequest,
    verify_samples: usize,
    regions: &[(u64, u64)],
    out: &mut Outcome,
) {
    let device = &ctx.device;
    let st = ctx.st;
    let t0 = Instant::now();
    let mut i = 0;
    while i < steps.len() {
        let step = steps[i];
        i += 1;
        if ctx.cancel.is_cancelled() {
            out.error = Some(ctx.cancelled());
            break;
        }
        st.set_phase(Phase::Erasing);
        match run_step(ctx, step, caps, req, regions) {
            Ok(()) => {
                out.method = Some(step.erased_with());
                out.error = None;
            }
            Err(e @ EraseError::Cancelled { .. }) => {
                out.error = Some(e);
                break;
            }
            // The next iteration stops there if the run was cancelled meanwhile.
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
        let regions_opt = (step == Step::Metadata).then_some(regions);
        match verify(ctx, verify_samples, regions_opt) {
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
/// Without `req.devices` ("every disk"), first waits for the block devices to settle
/// ([`disks::settle`]) and fails with `hardware_not_ready` if they do not. Every disk in
/// `req.expect` must then be present and cleared by the safety rules, or the run fails
/// with `expected_disk_missing` (or `refused`) before erasing anything.
///
/// `progress` is called from this thread every `env.progress_interval` and once at the
/// end. Fails as a whole only on those checks or if the disks cannot be enumerated;
/// everything else is reported per device.
pub fn run(
    req: &EraseRequest,
    env: &EraseEnv,
    progress: &(dyn Fn(&EraseProgress) + Sync),
    cancel: &CancellationToken,
) -> Result<EraseReport, EraseError> {
    let start = Instant::now();
    if req.devices.is_none() {
        let s = settle::wait(&env.root, &env.settle, cancel)?;
        tracing::info!(
            waited_ms = s.waited.as_millis() as u64,
            block_devices = s.block_devices,
            "block devices settled"
        );
    }
    let all = disks::enumerate(&env.root)?;
    let (targets, skipped) = safety::select_targets(
        &env.root,
        &all,
        &env.authority,
        req.devices.as_deref(),
        &req.exclude,
    );
    match expect::check(&env.root, &all, &targets, &skipped, &req.expect) {
        None => {}
        Some(expect::ExpectProblem::Missing(missing)) => {
            return Err(EraseError::ExpectedMissing {
                missing,
                present: all.len(),
            });
        }
        Some(expect::ExpectProblem::NotErased(disks)) => {
            return Err(EraseError::ExpectedNotErased { disks });
        }
    }
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

    /// The settle rule in milliseconds, so "every disk" runs do not wait seconds.
    fn fast_settle(mut env: EraseEnv) -> EraseEnv {
        env.settle = SettleRule {
            quiet: Duration::from_millis(5),
            timeout: Duration::from_millis(200),
            poll: Duration::from_millis(1),
        };
        env
    }

    #[test]
    fn cancellation_between_steps_tries_no_further_step() {
        use hardware::fake::{Call, Recording};
        use nvme::SecureEraseSetting as S;
        let file = tempfile::tempfile().unwrap();
        file.set_len(MIB).unwrap();
        let cancel = std::sync::Arc::new(CancellationToken::new());
        let c = cancel.clone();
        // The format fails, and the operator cancels while it runs.
        let hw = Recording {
            fail: vec![Call::NvmeFormat(S::UserData)],
            on_call: Some(Box::new(move |_| c.cancel())),
            ..Default::default()
        };
        let st = DevState {
            device: "/dev/fake".into(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(MIB),
            phase: AtomicU8::new(0),
        };
        let clock = crate::clock::FakeClock::new();
        let ctx = Ctx {
            device: st.device.clone(),
            file: &file,
            hw: &hw,
            clock: &clock,
            size: MIB,
            lbs: 512,
            st: &st,
            cancel: &cancel,
        };
        let caps = Capabilities {
            nvme: Some(NvmeCaps {
                format: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut out = Outcome {
            method: None,
            verification: None,
            error: None,
            notes: Vec::new(),
            erase_time: Duration::ZERO,
        };
        let steps = vec![
            Step::NvmeFormat(S::UserData),
            Step::SecureDiscard,
            Step::Overwrite,
        ];
        run_plan(
            &ctx,
            steps,
            &caps,
            &EraseRequest::default(),
            0,
            &[],
            &mut out,
        );
        assert_eq!(hw.calls(), [Call::NvmeFormat(S::UserData)]);
        assert_eq!(out.error.as_ref().map(EraseError::code), Some("cancelled"));
        assert_eq!(out.method, None);
        // Nothing was written by the overwrite that never ran.
        assert_eq!(st.done.load(Ordering::Relaxed), 0);
    }

    fn untouched(dev: &std::path::Path) -> bool {
        std::fs::read(dev).unwrap().iter().all(|b| *b == 0xa5)
    }

    #[test]
    fn every_disk_fails_hardware_not_ready_and_erases_nothing_when_nvme_is_not_live() {
        let (f, dev) = fixture_with_file_disk(MIB);
        f.write("sys/class/nvme/nvme1/state", "connecting\n");
        let env = fast_settle(EraseEnv::new(f.root(), Authority::Ramdisk));
        let e = run(
            &EraseRequest::default(),
            &env,
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "hardware_not_ready");
        assert!(e.to_string().contains("nvme1 is connecting"), "{e}");
        assert!(untouched(&dev));
        // Named devices need no settling: the same tree erases vda.
        let r = run(
            &vda_request(EraseMethod::Overwrite),
            &env,
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(r.erased, 1, "{r:#?}");
    }

    #[test]
    fn a_missing_expected_disk_fails_the_run_and_erases_nothing() {
        let (f, dev) = fixture_with_file_disk(MIB);
        let env = fast_settle(EraseEnv::new(f.root(), Authority::Ramdisk));
        let req = EraseRequest {
            expect: vec!["vblk1".into(), "S9GONE".into()],
            method: EraseMethod::Overwrite,
            ..Default::default()
        };
        let e = run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap_err();
        assert_eq!(e.code(), "expected_disk_missing");
        assert!(e.to_string().contains(": S9GONE (the serial"), "{e}");
        assert!(untouched(&dev));
    }

    #[test]
    fn an_expected_disk_refused_by_safety_fails_the_run_and_erases_nothing() {
        let (f, dev) = fixture_with_file_disk(MIB);
        let env = fast_settle(EraseEnv::new(f.root(), Authority::Ramdisk));
        // sda (serial S5Y1NX) holds the root filesystem.
        let req = EraseRequest {
            expect: vec!["vblk1".into(), "S5Y1NX".into()],
            method: EraseMethod::Overwrite,
            ..Default::default()
        };
        let e = run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap_err();
        assert_eq!(e.code(), "refused");
        assert!(
            e.to_string().contains("S5Y1NX (/dev/sda): skipped: "),
            "{e}"
        );
        assert!(untouched(&dev));
    }

    #[test]
    fn expected_disks_that_are_present_are_erased() {
        let (f, dev) = fixture_with_file_disk(MIB);
        let env = fast_settle(EraseEnv::new(f.root(), Authority::Ramdisk));
        let mut req = vda_request(EraseMethod::Overwrite);
        req.expect = vec!["vblk1".into()];
        let r = run(&req, &env, &|_| {}, &CancellationToken::new()).unwrap();
        assert_eq!(r.erased, 1, "{r:#?}");
        assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn request_from_params_applies_defaults() {
        let r = EraseRequest::from_params(&DiskEraseParams::default());
        assert_eq!(r, EraseRequest::default());
        let r = EraseRequest::from_params(&DiskEraseParams {
            passes: Some(0),
            verify: Some(false),
            concurrency: Some(2),
            expect: Some(vec!["S5Y1NX".into()]),
            ..Default::default()
        });
        assert_eq!((r.passes, r.verify, r.concurrency), (1, false, 2));
        assert_eq!(r.expect, ["S5Y1NX"]);
    }

    #[test]
    fn run_on_fixture_skips_everything_on_host_without_allow_list() {
        let f = crate::disks::tests::sample();
        let env = fast_settle(EraseEnv::new(f.root(), Authority::Host { allowed: vec![] }));
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
    pub(crate) fn fixture_with_file_disk(size: u64) -> (crate::disks::tests::Fixture, PathBuf) {
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
        let env = fast_settle(EraseEnv::new(dir.path(), Authority::Ramdisk));
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
