//! Time as a dependency: code that polls hardware with an overall bound (the block device
//! settle rule, the NVMe sanitize poll) takes a [`Clock`], so its tests run the bound on
//! virtual time instead of sleeping through it.

use std::time::{Duration, Instant};

/// A monotonic clock that can also wait.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin; only differences mean anything.
    fn now(&self) -> Duration;
    /// Block the calling thread for `d`.
    fn sleep(&self, d: Duration);
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Virtual time for tests: `sleep` returns at once after advancing `now`, then runs the
/// hook (which may change the world the code under test polls, at a chosen virtual time).
#[cfg(test)]
pub(crate) struct FakeClock {
    now: std::sync::Mutex<Duration>,
    #[allow(clippy::type_complexity)]
    hook: std::sync::Mutex<Option<Box<dyn FnMut(Duration) + Send>>>,
}

#[cfg(test)]
impl FakeClock {
    pub(crate) fn new() -> FakeClock {
        FakeClock {
            now: std::sync::Mutex::new(Duration::ZERO),
            hook: std::sync::Mutex::new(None),
        }
    }
    /// Run `f(now)` after every sleep.
    pub(crate) fn on_sleep(self, f: impl FnMut(Duration) + Send + 'static) -> FakeClock {
        *self.hook.lock().unwrap() = Some(Box::new(f));
        self
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        let now = {
            let mut n = self.now.lock().unwrap();
            *n += d;
            *n
        };
        if let Some(h) = self.hook.lock().unwrap().as_mut() {
            h(now);
        }
    }
}
