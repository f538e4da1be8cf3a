//! Ownership of the lab's processes: whatever a test does (returns, fails, panics), every
//! process it started is killed by PID and waited for when its guard drops.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        ChildGuard {
            name: name.into(),
            child: Some(child),
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The PID in `pidfile` if that process is alive (not a zombie) and its command line
/// contains `marker`, so a recycled PID is never mistaken for ours.
pub fn live_pid_from_file(pidfile: &Path, marker: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains(marker) || is_zombie(pid) {
        return None;
    }
    Some(pid)
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| !is_zombie(p))
}

fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat: "PID (comm) STATE ..."; comm may hold spaces, so split after ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

/// Kills (SIGKILL) the process named by `pidfile` when it is still ours, and waits up to
/// `wait` for it to be gone. Used for QEMU when `ipmi_sim` started it.
pub fn kill_pidfile(pidfile: &Path, marker: &str, wait: Duration) {
    let Some(pid) = live_pid_from_file(pidfile, marker) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the PID was
    // checked just above to belong to the process this lab started (its command line
    // carries the lab's unique marker).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + wait;
    while live_pid_from_file(pidfile, marker).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
