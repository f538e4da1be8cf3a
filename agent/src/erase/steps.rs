//! The erase steps: overwrite (through [`crate::directio`]), discard / secure discard /
//! zero-out, NVMe format and sanitize (polled with an overall bound), ATA security erase.
//! Device commands go through [`super::hardware::EraseHardware`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::hardware::RangeOp;
use super::plan::{AtaCaps, Capabilities, NvmeCaps, Step};
use super::{Ctx, EraseError, EraseRequest};
use crate::directio;
use crate::hw::{ata, nvme};

/// Size of one overwrite request.
pub use crate::directio::CHUNK;
/// Overwrite requests in flight per device.
pub use crate::directio::REQUESTS_IN_FLIGHT as WRITERS_PER_DEVICE;
/// Bytes per discard / zero-out ioctl (a progress and cancellation point).
const IOCTL_CHUNK: u64 = 1 << 30;
/// Temporary ATA user password, set only for the duration of the erase.
const ATA_TEMP_PASSWORD: &[u8] = b"molar-erase";

/// Overwrite `regions` with zeros (last pass) or random data, through the shared direct
/// writer.
fn write_regions(ctx: &Ctx<'_>, regions: &[(u64, u64)], random: bool) -> Result<(), EraseError> {
    let source = if random {
        directio::Source::Random
    } else {
        directio::Source::Zeros
    };
    let progress = |n: u64| {
        ctx.st.done.fetch_add(n, Ordering::Relaxed);
    };
    match directio::write_regions(ctx.file, regions, source, &progress, ctx.cancel) {
        Ok(_) => Ok(()),
        Err(directio::DirectIoError::Cancelled { .. }) => Err(ctx.cancelled()),
        Err(directio::DirectIoError::Write { offset, source }) => Err(EraseError::Write {
            device: ctx.device.clone(),
            offset,
            source,
        }),
        Err(directio::DirectIoError::Sync(source)) => Err(EraseError::Sync {
            device: ctx.device.clone(),
            source,
        }),
        Err(e) => Err(EraseError::Internal {
            device: ctx.device.clone(),
            msg: e.to_string(),
        }),
    }
}

fn step_overwrite(ctx: &Ctx<'_>, passes: u32) -> Result<(), EraseError> {
    for pass in 1..=passes {
        write_regions(ctx, &[(0, ctx.size)], pass < passes)?;
    }
    Ok(())
}

/// Discard, secure discard or zero-out in `IOCTL_CHUNK` pieces.
fn step_range_ioctl(ctx: &Ctx<'_>, op: RangeOp) -> Result<(), EraseError> {
    let chunk = IOCTL_CHUNK / ctx.lbs * ctx.lbs;
    let mut off = 0;
    while off < ctx.size {
        if ctx.cancel.is_cancelled() {
            return Err(ctx.cancelled());
        }
        let len = chunk.min(ctx.size - off);
        ctx.hw.block_range(op, off, len).map_err(ctx.block_err())?;
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
    ctx.hw
        .nvme_format(caps.nsid, caps.lbaf, ses)
        .map_err(ctx.nvme_err())?;
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

/// Time between two reads of the sanitize status log.
const SANITIZE_POLL: Duration = Duration::from_millis(500);
/// How long the sanitize status log may still show no sanitize after the command.
const SANITIZE_LOG_LAG: Duration = Duration::from_secs(30);
/// Overall bound on a sanitize whose drive gives no estimate.
const SANITIZE_NO_ESTIMATE: Duration = Duration::from_secs(24 * 3600);

/// How long to wait for a sanitize: twice the drive's own estimate for the action plus
/// half an hour, or a day when it gives none (`0xffffffff`, or 0).
fn sanitize_bound(s: &nvme::SanitizeStatus, action: nvme::SanitizeAction) -> Duration {
    use nvme::SanitizeAction as A;
    let est = match action {
        A::CryptoErase => s.est_crypto,
        A::BlockErase => s.est_block,
        A::Overwrite => s.est_overwrite,
        A::ExitFailureMode => u32::MAX,
    };
    if est == 0 || est == u32::MAX {
        SANITIZE_NO_ESTIMATE
    } else {
        Duration::from_secs(est as u64) * 2 + Duration::from_secs(1800)
    }
}

fn step_nvme_sanitize(ctx: &Ctx<'_>, action: nvme::SanitizeAction) -> Result<(), EraseError> {
    use nvme::SanitizeState as S;
    let timeout = |started: Duration, s: &nvme::SanitizeStatus| {
        let waited = ctx.clock.now().saturating_sub(started);
        (waited >= sanitize_bound(s, action)).then(|| EraseError::SanitizeTimeout {
            device: ctx.device.clone(),
            waited,
            percent: (s.sprog as f64 / 65536.0 * 100.0).round() as u32,
        })
    };
    // Let a sanitize from an earlier attempt finish first: a new one would be refused.
    let started = ctx.clock.now();
    while let Ok(s) = ctx.hw.nvme_sanitize_status()
        && s.state == S::InProgress
    {
        if ctx.cancel.is_cancelled() {
            return Err(ctx.cancelled());
        }
        if let Some(e) = timeout(started, &s) {
            return Err(e);
        }
        ctx.clock.sleep(SANITIZE_POLL);
    }
    ctx.hw.nvme_sanitize(action, true).map_err(ctx.nvme_err())?;
    let started = ctx.clock.now();
    loop {
        if ctx.cancel.is_cancelled() {
            // A sanitize cannot be aborted: the controller finishes it on its own.
            return Err(ctx.cancelled());
        }
        let s = ctx.hw.nvme_sanitize_status().map_err(ctx.nvme_err())?;
        let lagging = ctx.clock.now().saturating_sub(started) < SANITIZE_LOG_LAG;
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
            S::NeverSanitized | S::Reserved(_) if lagging => {}
            _ => {
                return Err(EraseError::SanitizeFailed {
                    device: ctx.device.clone(),
                });
            }
        }
        if let Some(e) = timeout(started, &s) {
            return Err(e);
        }
        ctx.clock.sleep(SANITIZE_POLL);
    }
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

/// ATA security erase: identify (refuse frozen, locked, expired), set a temporary user
/// password, erase prepare + erase unit, then re-read the security state and, if the
/// password is still set (the erase failed or was interrupted), unlock and disable it, so
/// the drive is never left locked with a password nobody knows.
fn step_ata_secure_erase(ctx: &Ctx<'_>, caps: &AtaCaps, enhanced: bool) -> Result<(), EraseError> {
    let device = ctx.device.clone();
    let id = ctx.hw.ata_identify().map_err(ctx.ata_err())?;
    if id.security_frozen {
        return Err(EraseError::AtaFrozen { device });
    }
    if id.security_locked || id.security_enabled {
        return Err(EraseError::AtaLocked { device });
    }
    if id.security_count_expired {
        return Err(EraseError::AtaCountExpired { device });
    }
    if ctx.cancel.is_cancelled() {
        return Err(ctx.cancelled());
    }
    let pw = ata::Password::new(ATA_TEMP_PASSWORD);
    ctx.hw.ata_set_password(&pw).map_err(ctx.ata_err())?;
    let estimate = if enhanced {
        caps.enhanced_erase_time
    } else {
        caps.erase_time
    };
    let timeout = estimate.map_or(Duration::from_secs(24 * 3600), |e| {
        e * 2 + Duration::from_secs(1800)
    });
    // Once the password is set the sequence runs to its end: a cancellation now would
    // leave the drive with security enabled.
    let erase = (|| {
        ctx.hw.ata_erase_prepare().map_err(ctx.ata_err())?;
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
            let r = ctx
                .hw
                .ata_erase_unit(&pw, enhanced, timeout)
                .map_err(ctx.ata_err());
            finished.store(true, Ordering::Relaxed);
            r
        })
    })();
    // ERASE UNIT clears the password on success; make sure it is gone in any case so the
    // drive is never left locked with our temporary password.
    let disabled = || matches!(ctx.hw.ata_identify().map(|i| i.security_enabled), Ok(false));
    if !disabled() {
        let _ = ctx.hw.ata_unlock(&pw);
        let _ = ctx.hw.ata_disable_password(&pw);
        if !disabled() {
            return Err(erase.err().unwrap_or(EraseError::AtaSecurityStillEnabled {
                device: ctx.device.clone(),
            }));
        }
    }
    erase?;
    ctx.st.done.store(ctx.size, Ordering::Relaxed);
    Ok(())
}

pub(super) fn run_step(
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
        Step::Discard => step_range_ioctl(ctx, RangeOp::Discard),
        Step::SecureDiscard => step_range_ioctl(ctx, RangeOp::SecureDiscard),
        Step::ZeroOut => step_range_ioctl(ctx, RangeOp::ZeroOut),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use crate::erase::DevState;
    use crate::erase::hardware::fake::{self, Call, Recording};
    use nvme::{SanitizeAction as A, SanitizeState as SS, SecureEraseSetting as SES};
    use std::sync::atomic::{AtomicU8, AtomicU64};
    use tokio_util::sync::CancellationToken;

    const SIZE: u64 = 1 << 20;

    /// Run `f` on a context over a temp file, the given fake hardware and clock.
    fn with_ctx<R>(hw: &Recording, clock: &dyn Clock, f: impl FnOnce(&Ctx<'_>) -> R) -> R {
        let file = tempfile::tempfile().unwrap();
        file.set_len(SIZE).unwrap();
        let st = DevState {
            device: "/dev/fake".into(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(SIZE),
            phase: AtomicU8::new(0),
        };
        let cancel = CancellationToken::new();
        let ctx = Ctx {
            device: st.device.clone(),
            file: &file,
            hw,
            clock,
            size: SIZE,
            lbs: 512,
            st: &st,
            cancel: &cancel,
        };
        f(&ctx)
    }

    fn ata_hw(identify: &[bool]) -> Recording {
        let hw = Recording::default();
        *hw.identify.lock().unwrap() = identify.iter().map(|e| fake::ata_identify(*e)).collect();
        hw
    }

    fn ata_erase(hw: &Recording, enhanced: bool) -> Result<(), EraseError> {
        with_ctx(hw, &FakeClock::new(), |ctx| {
            let r = step_ata_secure_erase(ctx, &AtaCaps::default(), enhanced);
            if r.is_ok() {
                assert_eq!(ctx.st.done.load(Ordering::Relaxed), SIZE);
            }
            r
        })
    }

    #[test]
    fn ata_erase_sets_a_password_erases_and_checks_it_is_gone() {
        let hw = ata_hw(&[false, false]);
        ata_erase(&hw, true).unwrap();
        assert_eq!(
            hw.calls(),
            [
                Call::AtaIdentify,
                Call::AtaSetPassword,
                Call::AtaErasePrepare,
                Call::AtaEraseUnit { enhanced: true },
                Call::AtaIdentify,
            ]
        );
    }

    #[test]
    fn a_failed_ata_erase_still_removes_the_password() {
        for failing in [
            Call::AtaErasePrepare,
            Call::AtaEraseUnit { enhanced: false },
        ] {
            let mut hw = ata_hw(&[false, true, false]);
            hw.fail = vec![failing];
            let e = ata_erase(&hw, false).unwrap_err();
            assert_eq!(e.code(), "ata_command_aborted", "{e}");
            let calls = hw.calls();
            assert_eq!(calls[..2], [Call::AtaIdentify, Call::AtaSetPassword]);
            assert_eq!(
                calls[calls.len() - 4..],
                [
                    Call::AtaIdentify,
                    Call::AtaUnlock,
                    Call::AtaDisablePassword,
                    Call::AtaIdentify
                ],
                "{failing:?}"
            );
        }
    }

    #[test]
    fn a_password_that_stays_set_fails_the_erase() {
        // The erase "succeeded" but the drive still reports security enabled.
        let hw = ata_hw(&[false, true]);
        let e = ata_erase(&hw, false).unwrap_err();
        assert_eq!(e.code(), "ata_security_still_enabled");
        assert_eq!(hw.calls().last(), Some(&Call::AtaIdentify));
        assert!(hw.calls().contains(&Call::AtaDisablePassword));
    }

    #[test]
    fn a_frozen_or_locked_drive_is_refused_before_any_password_is_set() {
        let hw = Recording::default();
        let mut id = fake::ata_identify(false);
        id.security_frozen = true;
        hw.identify.lock().unwrap().push_back(id);
        assert_eq!(ata_erase(&hw, false).unwrap_err().code(), "ata_frozen");
        assert_eq!(hw.calls(), [Call::AtaIdentify]);
        let hw = ata_hw(&[true]);
        assert_eq!(ata_erase(&hw, false).unwrap_err().code(), "ata_locked");
        assert_eq!(hw.calls(), [Call::AtaIdentify]);
    }

    fn sanitize_hw(states: &[(SS, u16, u32)]) -> Recording {
        let hw = Recording::default();
        *hw.status.lock().unwrap() = states
            .iter()
            .map(|(s, p, e)| fake::sanitize_status(*s, *p, *e))
            .collect();
        hw
    }

    #[test]
    fn sanitize_polls_until_the_log_reports_completion() {
        let hw = sanitize_hw(&[
            (SS::NeverSanitized, 0, u32::MAX),
            (SS::InProgress, 16384, 10),
            (SS::InProgress, 32768, 10),
            (SS::Completed, 0, 10),
        ]);
        let clock = FakeClock::new();
        let done = with_ctx(&hw, &clock, |ctx| {
            step_nvme_sanitize(ctx, A::CryptoErase).unwrap();
            ctx.st.done.load(Ordering::Relaxed)
        });
        assert_eq!(done, SIZE);
        assert_eq!(
            hw.calls(),
            [
                Call::SanitizeStatus,
                Call::NvmeSanitize(A::CryptoErase),
                Call::SanitizeStatus,
                Call::SanitizeStatus,
                Call::SanitizeStatus,
            ]
        );
        assert_eq!(clock.now(), SANITIZE_POLL * 2);
    }

    #[test]
    fn sanitize_reports_a_failure_status() {
        let hw = sanitize_hw(&[
            (SS::NeverSanitized, 0, u32::MAX),
            (SS::InProgress, 100, 10),
            (SS::Failed, 0, 10),
        ]);
        let e = with_ctx(&hw, &FakeClock::new(), |ctx| {
            step_nvme_sanitize(ctx, A::BlockErase).unwrap_err()
        });
        assert_eq!(e.code(), "nvme_sanitize_failed");
        assert_eq!(
            e.to_string(),
            "/dev/fake: nvme sanitize failed (sanitize status log reports failure)"
        );
    }

    #[test]
    fn sanitize_gives_up_after_its_overall_bound() {
        // The drive estimates 10 s and then never finishes: the bound is 2 × 10 s + 30 min.
        let hw = sanitize_hw(&[
            (SS::NeverSanitized, 0, u32::MAX),
            (SS::InProgress, 32768, 10),
        ]);
        let clock = FakeClock::new();
        let e = with_ctx(&hw, &clock, |ctx| {
            step_nvme_sanitize(ctx, A::BlockErase).unwrap_err()
        });
        assert_eq!(e.code(), "nvme_sanitize_timeout");
        assert!(
            e.to_string()
                .starts_with("/dev/fake: nvme sanitize still in progress after 1820 s (50% done)"),
            "{e}"
        );
        assert_eq!(clock.now(), Duration::from_secs(1820));
        // Without an estimate the bound is a day.
        let s = fake::sanitize_status(SS::InProgress, 0, u32::MAX);
        assert_eq!(sanitize_bound(&s, A::CryptoErase), SANITIZE_NO_ESTIMATE);
    }

    #[test]
    fn sanitize_stops_polling_when_cancelled() {
        let mut hw = sanitize_hw(&[(SS::NeverSanitized, 0, u32::MAX), (SS::InProgress, 1, 10)]);
        let cancel = std::sync::Arc::new(CancellationToken::new());
        let c = cancel.clone();
        hw.on_call = Some(Box::new(move |call| {
            if call == Call::NvmeSanitize(A::CryptoErase) {
                c.cancel();
            }
        }));
        let e = with_ctx(&hw, &FakeClock::new(), |ctx| {
            let ctx = Ctx {
                cancel: &cancel,
                device: ctx.device.clone(),
                ..*ctx
            };
            step_nvme_sanitize(&ctx, A::CryptoErase).unwrap_err()
        });
        assert_eq!(e.code(), "cancelled");
        assert_eq!(hw.calls().last(), Some(&Call::NvmeSanitize(A::CryptoErase)));
    }

    #[test]
    fn range_ioctls_and_format_go_to_the_device() {
        let hw = Recording::default();
        with_ctx(&hw, &FakeClock::new(), |ctx| {
            step_range_ioctl(ctx, RangeOp::SecureDiscard).unwrap();
            let n = NvmeCaps::default();
            step_nvme_format(ctx, &n, SES::UserData).unwrap();
        });
        assert_eq!(
            hw.calls(),
            [
                Call::Range(RangeOp::SecureDiscard),
                Call::NvmeFormat(SES::UserData)
            ]
        );
    }
}
