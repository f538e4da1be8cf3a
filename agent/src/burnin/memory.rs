//! Memory burn-in: patterns written over a locked region and read back.
//!
//! The region is one anonymous mapping, locked with `mlock` so that what is tested is RAM
//! and not swap (when locking is refused — `RLIMIT_MEMLOCK` on a host — the test runs
//! unlocked and says so). Each pattern is a pure function of the word's index in the
//! region (and a seed), so a word can be checked without a copy: address-in-address (a
//! word holds its own offset: catches address-line faults that constant patterns miss),
//! walking ones and walking zeros (data-line faults), checkerboard, and seeded random data
//! (pattern-sensitive cells). The region is processed in [`CHUNK_WORDS`] slices so
//! cancellation is checked every few milliseconds.

use molar_protocol::burnin::MemoryError;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Words processed between checks of the cancel token (16 MiB: a few milliseconds).
pub const CHUNK_WORDS: usize = 2 << 20;
/// Errors kept with their offset; the rest are only counted.
pub const MAX_KEPT_ERRORS: usize = 32;

/// One test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    AddressInAddress,
    WalkingOnes,
    WalkingZeros,
    Checkerboard,
    Random(u64),
}

impl Pattern {
    /// Every pattern of one pass; the random one seeded by the pass number.
    pub fn all(pass: u32) -> [Pattern; 5] {
        [
            Pattern::AddressInAddress,
            Pattern::WalkingOnes,
            Pattern::WalkingZeros,
            Pattern::Checkerboard,
            Pattern::Random(0x9E37_79B9_7F4A_7C15 ^ u64::from(pass)),
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pattern::AddressInAddress => "address_in_address",
            Pattern::WalkingOnes => "walking_ones",
            Pattern::WalkingZeros => "walking_zeros",
            Pattern::Checkerboard => "checkerboard",
            Pattern::Random(_) => "random",
        }
    }

    /// The word at index `i` of the region.
    #[inline(always)]
    pub fn word(&self, i: u64) -> u64 {
        match *self {
            Pattern::AddressInAddress => i.wrapping_mul(8),
            Pattern::WalkingOnes => 1u64 << (i % 64),
            Pattern::WalkingZeros => !(1u64 << (i % 64)),
            Pattern::Checkerboard => {
                if i & 1 == 0 {
                    0xAAAA_AAAA_AAAA_AAAA
                } else {
                    0x5555_5555_5555_5555
                }
            }
            Pattern::Random(seed) => splitmix(seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)),
        }
    }
}

/// SplitMix64's finaliser: a stateless, well-mixed function of the index.
#[inline(always)]
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `pattern` into `buf`, whose first word is word `base` of the region.
pub fn fill(pattern: Pattern, buf: &mut [u64], base: u64) {
    for (k, w) in buf.iter_mut().enumerate() {
        // Volatile: the writes must reach memory, not be folded into the verify.
        // SAFETY: `w` is a valid, exclusively borrowed u64.
        unsafe { std::ptr::write_volatile(w, pattern.word(base + k as u64)) };
    }
}

/// Counts the words of `buf` (word `base` onwards) that differ from `pattern`, keeping the
/// first ones in `kept` (up to [`MAX_KEPT_ERRORS`]).
pub fn verify(pattern: Pattern, buf: &[u64], base: u64, kept: &mut Vec<MemoryError>) -> u64 {
    let mut errors = 0;
    for (k, w) in buf.iter().enumerate() {
        let i = base + k as u64;
        // SAFETY: `w` is a valid u64 we borrow.
        let found = unsafe { std::ptr::read_volatile(w) };
        let expected = pattern.word(i);
        if found != expected {
            errors += 1;
            if kept.len() < MAX_KEPT_ERRORS {
                kept.push(MemoryError {
                    pattern: pattern.name().into(),
                    offset: i * 8,
                    expected,
                    found,
                });
            }
        }
    }
    errors
}

/// An anonymous, private mapping of whole pages, locked when the kernel allows it.
pub struct Region {
    ptr: *mut u64,
    words: usize,
    pub locked: bool,
    /// Why locking failed, when it did.
    pub lock_error: Option<String>,
}

// SAFETY: the mapping is owned by the Region alone; access goes through &/&mut self.
unsafe impl Send for Region {}

impl Region {
    /// Maps `bytes` (rounded down to whole pages, at least one) and tries to lock it.
    pub fn new(bytes: u64) -> std::io::Result<Region> {
        let len = usize::try_from(bytes)
            .map_err(|_| std::io::Error::other("region larger than the address space"))?
            .max(4096)
            & !4095;
        // SAFETY: a fresh anonymous private mapping; no file, no fixed address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: [ptr, ptr+len) is the mapping just made.
        let rc = unsafe { libc::mlock(ptr, len) };
        let lock_error = (rc != 0).then(|| std::io::Error::last_os_error().to_string());
        Ok(Region {
            ptr: ptr.cast(),
            words: len / 8,
            locked: rc == 0,
            lock_error,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.words as u64 * 8
    }

    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds `words` u64s, is page-aligned, readable and writable, and
        // is only reachable through this exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.words) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new` (munmap also unlocks it).
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
    }
}

/// When the run ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Passes(u32),
    /// Whole patterns keep starting until the deadline.
    Deadline(Instant),
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passes: u32,
    pub patterns: Vec<String>,
    pub errors: u64,
    pub kept: Vec<MemoryError>,
    /// Bytes written plus bytes read back.
    pub bytes_moved: u64,
    pub seconds: f64,
}

/// Runs patterns over `words` until `until`; `progress(fraction)` after each chunk. `None`
/// when cancelled.
pub fn run(
    words: &mut [u64],
    until: Until,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(f64),
) -> Option<Outcome> {
    let start = Instant::now();
    let mut out = Outcome::default();
    let total_steps = match until {
        Until::Passes(p) => u64::from(p) * 5 * 2,
        Until::Deadline(_) => 0,
    };
    let mut steps = 0u64;
    let mut pass = 0u32;
    let chunks = words.len().div_ceil(CHUNK_WORDS).max(1) as f64;
    let fraction = |steps: u64, done_chunks: usize| match until {
        Until::Passes(_) => (steps as f64 + done_chunks as f64 / chunks) / total_steps as f64,
        Until::Deadline(d) => {
            let total = d.saturating_duration_since(start).as_secs_f64();
            (start.elapsed().as_secs_f64() / total.max(1e-3)).min(0.99)
        }
    };
    'outer: loop {
        for pattern in Pattern::all(pass) {
            match until {
                Until::Passes(p) if pass >= p => break 'outer,
                Until::Deadline(d) if Instant::now() >= d && !out.patterns.is_empty() => {
                    break 'outer;
                }
                _ => {}
            }
            for verify_step in [false, true] {
                let mut base = 0u64;
                for (k, chunk) in words.chunks_mut(CHUNK_WORDS).enumerate() {
                    if cancel.is_cancelled() {
                        return None;
                    }
                    if verify_step {
                        out.errors += verify(pattern, chunk, base, &mut out.kept);
                    } else {
                        fill(pattern, chunk, base);
                    }
                    base += chunk.len() as u64;
                    out.bytes_moved += chunk.len() as u64 * 8;
                    // Progress within a step too: a step over a large region takes seconds.
                    if k % 16 == 15 {
                        progress(fraction(steps, k + 1));
                    }
                }
                steps += 1;
                progress(fraction(steps, 0));
            }
            if !out.patterns.iter().any(|p| p == pattern.name()) {
                out.patterns.push(pattern.name().into());
            }
        }
        pass += 1;
        out.passes = pass;
    }
    out.seconds = start.elapsed().as_secs_f64();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_what_they_say() {
        assert_eq!(Pattern::AddressInAddress.word(3), 24);
        assert_eq!(Pattern::WalkingOnes.word(0), 1);
        assert_eq!(Pattern::WalkingOnes.word(65), 2);
        assert_eq!(Pattern::WalkingZeros.word(63), !(1u64 << 63));
        assert_ne!(Pattern::Checkerboard.word(0), Pattern::Checkerboard.word(1));
        let r = Pattern::Random(1);
        assert_ne!(r.word(0), r.word(1));
        assert_eq!(r.word(7), Pattern::Random(1).word(7));
        assert_ne!(r.word(7), Pattern::Random(2).word(7));
        // Random words have about half their bits set.
        let ones: u32 = (0..1000).map(|i| r.word(i).count_ones()).sum();
        assert!((30_000..34_000).contains(&ones), "{ones}");
    }

    #[test]
    fn every_pattern_verifies_and_a_flipped_bit_is_found_at_its_offset() {
        let mut buf = vec![0u64; 1000];
        for p in Pattern::all(0) {
            // Chunked at an offset: the base index carries through.
            fill(p, &mut buf[..400], 0);
            fill(p, &mut buf[400..], 400);
            let mut kept = Vec::new();
            assert_eq!(verify(p, &buf, 0, &mut kept), 0, "{p:?}");
            buf[517] ^= 1 << 9;
            assert_eq!(verify(p, &buf[400..], 400, &mut kept), 1, "{p:?}");
            assert_eq!(kept[0].offset, 517 * 8);
            assert_eq!(kept[0].expected ^ kept[0].found, 1 << 9);
            assert_eq!(kept[0].pattern, p.name());
        }
    }

    #[test]
    fn a_stuck_address_line_is_caught_by_address_in_address() {
        // Words 0..8 alias 8..16 (address bit 3 stuck): constant patterns cannot see it.
        let mut mem = [0u64; 16];
        let p = Pattern::AddressInAddress;
        for i in 0..16u64 {
            mem[(i % 8) as usize] = p.word(i);
        }
        let mut kept = Vec::new();
        assert_eq!(verify(p, &mem[..8], 0, &mut kept), 8);
        let mut mem = [0u64; 16];
        for i in 0..16u64 {
            mem[(i % 8) as usize] = Pattern::Checkerboard.word(i);
        }
        assert_eq!(verify(Pattern::Checkerboard, &mem[..8], 0, &mut kept), 0);
    }

    #[test]
    fn kept_errors_are_bounded() {
        let buf = vec![7u64; 1000];
        let mut kept = Vec::new();
        assert_eq!(verify(Pattern::WalkingOnes, &buf, 0, &mut kept), 1000);
        assert_eq!(kept.len(), MAX_KEPT_ERRORS);
    }

    #[test]
    fn a_locked_region_runs_its_passes_and_stops_when_cancelled() {
        let mut region = Region::new(3 << 20).unwrap();
        assert_eq!(region.bytes(), 3 << 20);
        let cancel = CancellationToken::new();
        let mut last = 0.0;
        let out = run(region.words_mut(), Until::Passes(2), &cancel, &mut |f| {
            last = f
        })
        .unwrap();
        assert_eq!(out.passes, 2);
        assert_eq!(out.errors, 0);
        assert_eq!(out.patterns.len(), 5);
        assert_eq!(out.bytes_moved, 2 * 5 * 2 * (3 << 20));
        assert_eq!(last, 1.0);
        cancel.cancel();
        assert!(run(region.words_mut(), Until::Passes(1), &cancel, &mut |_| {}).is_none());
    }

    #[test]
    fn a_deadline_run_finishes_at_least_one_pattern() {
        let mut region = Region::new(1 << 20).unwrap();
        let out = run(
            region.words_mut(),
            Until::Deadline(Instant::now()),
            &CancellationToken::new(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.patterns, ["address_in_address"]);
        assert_eq!(out.errors, 0);
    }
}
