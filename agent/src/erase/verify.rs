//! Verification: read back and check zeroes after an erase.

use std::os::unix::fs::FileExt;

use rand::Rng;

use super::{Ctx, EraseError, MIB, Verification};
use crate::directio::AlignedBuf;

/// Read size of verification.
const VERIFY_CHUNK: usize = 1 << 20;

/// Read back and check zeroes: the first and last MiB and `samples` random aligned blocks,
/// or exactly `regions` when given (metadata wipe).
pub(super) fn verify(
    ctx: &Ctx<'_>,
    samples: usize,
    regions: Option<&[(u64, u64)]>,
) -> Result<Verification, EraseError> {
    // Reads after a hardware erase must come from the device, not stale cache.
    let _ = ctx.hw.flush_buffers();
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
            let data = &mut buf.as_mut_slice()[..n];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erase::DevState;
    use std::sync::atomic::{AtomicU8, AtomicU64};
    use tokio_util::sync::CancellationToken;
    #[test]
    fn verification_names_the_first_nonzero_offset() {
        let (f, dev) = crate::erase::tests::fixture_with_file_disk(4 * MIB);
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
            hw: &crate::erase::hardware::Device(&file),
            clock: &crate::clock::SystemClock::new(),
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
}
