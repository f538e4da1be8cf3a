//! The erase steps: overwrite (O_DIRECT, several requests in flight), discard / secure
//! discard / zero-out ioctls, NVMe format and sanitize, ATA security erase.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::plan::{AtaCaps, Capabilities, NvmeCaps, Step};
use super::{Ctx, EraseError, EraseRequest};
use crate::hw::{ata, block, nvme};

/// Size of one overwrite request.
pub const CHUNK: usize = 4 << 20;
/// Overwrite requests in flight per device.
pub const WRITERS_PER_DEVICE: usize = 4;
/// Bytes per discard / zero-out ioctl (a progress and cancellation point).
const IOCTL_CHUNK: u64 = 1 << 30;
/// Temporary ATA user password, set only for the duration of the erase.
const ATA_TEMP_PASSWORD: &[u8] = b"molar-erase";

/// A heap buffer whose usable part is aligned for `O_DIRECT`.
pub(super) struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;
    pub(super) fn zeroed(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + Self::ALIGN];
        let off = raw.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf { raw, off, len }
    }
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// One aligned `CHUNK` of zeroes shared by every writer of every device.
fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| AlignedBuf::zeroed(CHUNK)).as_slice()
}

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

#[cfg(test)]
mod tests {
    use super::*;
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
}
