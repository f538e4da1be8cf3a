//! Prerequisites of tests that need root and loop devices: outside CI they skip with a
//! printed reason; with `CI=true` a missing prerequisite fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the test may run; prints why not, and panics under CI.
pub fn require_root_and_losetup(test: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let losetup = Command::new("losetup").arg("--version").output().is_ok();
    let missing = match (root, losetup) {
        (true, true) => return true,
        (false, _) => "root",
        (true, false) => "losetup",
    };
    if ci {
        panic!("{test}: needs {missing}, and CI=true makes a missing prerequisite a failure");
    }
    eprintln!("skipping {test}: needs {missing}");
    false
}

/// A loop device over a temp file, detached on drop (panics included).
pub struct LoopDevice {
    pub dev: PathBuf,
    pub backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    /// A `size`-byte loop device filled with non-zero data, with direct I/O.
    pub fn new(size: u64) -> LoopDevice {
        let backing = tempfile::NamedTempFile::new().expect("temp file");
        let chunk = vec![0xa5u8; 1 << 20];
        {
            use std::io::Write;
            let mut f = backing.as_file();
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n]).expect("filling the backing file");
                left -= n as u64;
            }
            f.sync_all().expect("sync");
        }
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(backing.path())
            .output()
            .expect("running losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        LoopDevice { dev, backing }
    }

    /// A `size`-byte loop device over a sparse file with data only at its start, middle and
    /// end: big devices without writing them whole first.
    pub fn sparse(size: u64) -> LoopDevice {
        use std::io::{Seek, SeekFrom, Write};
        let backing = tempfile::NamedTempFile::new().expect("temp file");
        {
            let mut f = backing.as_file();
            f.set_len(size).expect("sizing the backing file");
            let chunk = vec![0xa5u8; 1 << 20];
            for off in [0, size / 2, size - (1 << 20)] {
                f.seek(SeekFrom::Start(off)).expect("seek");
                f.write_all(&chunk).expect("writing the pattern");
            }
            f.sync_all().expect("sync");
        }
        Self::attach(backing)
    }

    fn attach(backing: tempfile::NamedTempFile) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(backing.path())
            .output()
            .expect("running losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        LoopDevice { dev, backing }
    }

    pub fn name(&self) -> String {
        self.dev.display().to_string()
    }

    /// Whether the backing file holds only zeros.
    pub fn backing_is_zero(&self) -> bool {
        is_all_zero(self.backing.path())
    }
}

/// Writes a recognisable pattern at the start, middle and end of a disk image, in place: its
/// size never changes, so a VM that has it open (or is opening it right now) sees the whole
/// disk. Truncating and rewriting it raced QEMU reading the size, which then saw a smaller
/// disk whose tail an erase never reached.
pub fn fill_pattern(path: &Path) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    let chunk = vec![0x5au8; 1 << 20];
    for off in [0, len / 2, len.saturating_sub(1 << 20)] {
        f.seek(SeekFrom::Start(off))?;
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

pub fn is_all_zero(path: &Path) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("opening backing file");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("reading backing file");
        if n == 0 {
            return true;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}
