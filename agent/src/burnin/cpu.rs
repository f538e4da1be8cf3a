//! CPU burn-in: one thread per online CPU, pinned to it, repeating a work unit whose
//! result is known in advance; a wrong result is a CPU (or its cache) computing wrongly.
//!
//! The work unit mixes 64-bit multiply/xor-shift chains (integer units) with a
//! floating-point recurrence (FPU), over a small table rewritten as it goes (L1 traffic).
//! Its expected result is computed once before the threads start; [`std::hint::black_box`]
//! keeps the compiler from folding the repeats. Threads check the stop flag after every
//! unit (well under a millisecond), so cancellation is prompt.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Iterations of one work unit.
const UNIT: u32 = 4096;

/// One work unit from `seed`: deterministic, so every run from the same seed gives the same
/// answer on a working CPU.
pub fn work_unit(seed: u64) -> u64 {
    let mut table = [0u64; 64];
    let mut x = seed;
    let mut f = 1.000_000_1f64 + (seed & 0xff) as f64;
    for i in 0..UNIT {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (x as usize) & 63;
        table[slot] = table[slot]
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add(x);
        f = (f * 1.000_001 + f64::from(i & 7)).sqrt() + 1.0;
    }
    table.iter().fold(x, |a, &t| a.rotate_left(5) ^ t) ^ f.to_bits()
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// What the threads did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub rounds: u64,
    pub wrong: u64,
    pub unpinned: u32,
}

/// Keeps every CPU of `cpus` busy for `duration`; `progress(fraction)` about every 100 ms.
/// `None` when cancelled (the threads are stopped and joined first).
pub fn run(
    cpus: &[usize],
    duration: Duration,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(f64),
) -> Option<Outcome> {
    const SEED: u64 = 0x0123_4567_89AB_CDEF;
    let expected = work_unit(SEED);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let unpinned = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let (stop, rounds, wrong, unpinned) = (
                stop.clone(),
                rounds.clone(),
                wrong.clone(),
                unpinned.clone(),
            );
            std::thread::Builder::new()
                .name(format!("burnin-cpu{cpu}"))
                .spawn(move || {
                    if !pin(cpu) {
                        unpinned.fetch_add(1, Ordering::Relaxed);
                    }
                    let (mut n, mut bad) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        if work_unit(black_box(SEED)) != expected {
                            bad += 1;
                        }
                        n += 1;
                    }
                    rounds.fetch_add(n, Ordering::Relaxed);
                    wrong.fetch_add(bad, Ordering::Relaxed);
                })
        })
        .collect();
    let mut cancelled = false;
    loop {
        let elapsed = start.elapsed();
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        if elapsed >= duration {
            break;
        }
        progress(elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-3));
        std::thread::sleep((duration - elapsed).min(Duration::from_millis(100)));
    }
    stop.store(true, Ordering::Relaxed);
    let mut spawn_failed = 0;
    for t in threads {
        match t {
            Ok(h) => {
                let _ = h.join();
            }
            Err(_) => spawn_failed += 1,
        }
    }
    if cancelled {
        return None;
    }
    progress(1.0);
    Some(Outcome {
        rounds: rounds.load(Ordering::Relaxed),
        // A thread that could not start is a CPU not exercised: counted as wrong.
        wrong: wrong.load(Ordering::Relaxed) + spawn_failed,
        unpinned: unpinned.load(Ordering::Relaxed) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_unit_is_deterministic_and_depends_on_its_seed() {
        assert_eq!(work_unit(1), work_unit(1));
        assert_ne!(work_unit(1), work_unit(2));
    }

    #[test]
    fn every_cpu_works_for_the_duration_and_cancellation_is_prompt() {
        let cpus = super::super::counters::online_cpus(std::path::Path::new("/"))
            .unwrap_or_else(|| vec![0]);
        let cancel = CancellationToken::new();
        let t = Instant::now();
        let out = run(&cpus, Duration::from_millis(300), &cancel, &mut |_| {}).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(out.rounds > 0);
        assert_eq!(out.wrong, 0);
        let c2 = cancel.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c2.cancel();
        });
        let t = Instant::now();
        assert!(run(&cpus, Duration::from_secs(60), &cancel, &mut |_| {}).is_none());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        stopper.join().unwrap();
    }
}
