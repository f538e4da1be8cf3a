//! Progress of an erase: per device (lock-free counters the erasing threads update) and the
//! byte-weighted whole that the task status and the CLI's progress bar show.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::MIB;

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

pub(super) struct DevState {
    pub(super) device: String,
    pub(super) done: AtomicU64,
    pub(super) total: AtomicU64,
    pub(super) phase: AtomicU8,
}

impl DevState {
    pub(super) fn set_phase(&self, p: Phase) {
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

pub(super) fn snapshot(states: &[DevState], start: Instant) -> EraseProgress {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
