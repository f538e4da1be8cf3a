//! The workspace's binaries as a user runs them: `molar` and `molar-agent`, found next to the
//! test executable (cargo builds every workspace binary before running tests).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Path of a workspace binary in the same target profile as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-HASH -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable lives in target/PROFILE/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through `cargo test --workspace`",
        path.display()
    );
    path
}

/// A child process killed (by its PID) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child this harness spawned and has not reaped yet,
        // so the PID cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
