//! Loop devices (`<linux/loop.h>`): a read-only window of a disk (one partition, by byte
//! offset and size) as a block device of its own, so a filesystem inside it can be mounted
//! without a partition node. The kernel on the build host makes no `/dev/loopNpM` nodes and
//! a ramdisk without udev may lack them too; this works on both.
//!
//! `LOOP_CONFIGURE` (Linux 5.8) sets everything in one call; older kernels get
//! `LOOP_SET_FD` + `LOOP_SET_STATUS64`. The device is created auto-clearing: it detaches when
//! the last user (the mount) goes, and [`LoopWindow`]'s drop detaches it otherwise.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} on {path}: {source}")]
    Ioctl {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl LoopError {
    pub fn code(&self) -> &'static str {
        "loop_device_failed"
    }
}

mod ioctl {
    /// `struct loop_info64`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LoopInfo64 {
        pub lo_device: u64,
        pub lo_inode: u64,
        pub lo_rdevice: u64,
        pub lo_offset: u64,
        pub lo_sizelimit: u64,
        pub lo_number: u32,
        pub lo_encrypt_type: u32,
        pub lo_encrypt_key_size: u32,
        pub lo_flags: u32,
        pub lo_file_name: [u8; 64],
        pub lo_crypt_name: [u8; 64],
        pub lo_encrypt_key: [u8; 32],
        pub lo_init: [u64; 2],
    }

    /// `struct loop_config`.
    #[repr(C)]
    pub struct LoopConfig {
        pub fd: u32,
        pub block_size: u32,
        pub info: LoopInfo64,
        pub reserved: [u64; 8],
    }

    pub const LO_FLAGS_READ_ONLY: u32 = 1;
    pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

    // Declared with plain numbers in <linux/loop.h>, not _IO() codes.
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
}

/// A read-only loop device over a byte range of a file or disk; detached on drop.
#[derive(Debug)]
pub struct LoopWindow {
    dev: PathBuf,
    file: File,
}

impl LoopWindow {
    /// Maps `len` bytes of `backing` from `offset` (both multiples of 512) read-only on a free
    /// loop device found through `dev_dir/loop-control`.
    pub fn map(dev_dir: &Path, backing: &Path, offset: u64, len: u64) -> Result<Self, LoopError> {
        let open = |path: &Path, write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(|source| LoopError::Open {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let ctl_path = dev_dir.join("loop-control");
        let ctl = open(&ctl_path, true)?;
        let ioctl_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| LoopError::Ioctl { what, path, source }
        };
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { ioctl::loop_ctl_get_free(ctl.as_raw_fd()) }
            .map_err(ioctl_err("LOOP_CTL_GET_FREE", &ctl_path))?;
        let dev = dev_dir.join(format!("loop{n}"));
        let file = open(&dev, false)?;
        let backing_file = open(backing, false)?;
        let mut info = ioctl::LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: len,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: ioctl::LO_FLAGS_READ_ONLY | ioctl::LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = backing.as_os_str().as_encoded_bytes();
        let n_name = name.len().min(63);
        info.lo_file_name[..n_name].copy_from_slice(&name[..n_name]);
        let config = ioctl::LoopConfig {
            fd: backing_file.as_raw_fd() as u32,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is, laid out
        // as <linux/loop.h> declares it; the descriptor in it stays open for the call.
        match unsafe { ioctl::loop_configure(file.as_raw_fd(), &config) } {
            Ok(_) => {}
            Err(nix::Error::EINVAL | nix::Error::ENOTTY) => {
                // Before Linux 5.8: attach, then set the window and flags.
                // SAFETY: LOOP_SET_FD takes the backing descriptor by value, open for the call.
                unsafe { ioctl::loop_set_fd(file.as_raw_fd(), backing_file.as_raw_fd()) }
                    .map_err(ioctl_err("LOOP_SET_FD", &dev))?;
                // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`, which `info` is.
                if let Err(e) = unsafe { ioctl::loop_set_status64(file.as_raw_fd(), &info) } {
                    // SAFETY: LOOP_CLR_FD takes no argument.
                    let _ = unsafe { ioctl::loop_clr_fd(file.as_raw_fd()) };
                    return Err(ioctl_err("LOOP_SET_STATUS64", &dev)(e));
                }
            }
            Err(e) => return Err(ioctl_err("LOOP_CONFIGURE", &dev)(e)),
        }
        Ok(LoopWindow { dev, file })
    }

    /// The loop device's node (`/dev/loop7`).
    pub fn device(&self) -> &Path {
        &self.dev
    }
}

impl Drop for LoopWindow {
    fn drop(&mut self) {
        // Still mounted: the kernel marks it auto-clearing and detaches it at umount.
        // SAFETY: LOOP_CLR_FD takes no argument.
        let _ = unsafe { ioctl::loop_clr_fd(self.file.as_raw_fd()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn struct_layouts_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<ioctl::LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<ioctl::LoopConfig>(), 304);
    }

    #[test]
    fn no_loop_control_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = LoopWindow::map(dir.path(), Path::new("/nonexistent"), 0, 512).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "opening {}",
                dir.path().join("loop-control").display()
            )),
            "{err}"
        );
    }

    /// Root only (skipped otherwise): a window over a temp file reads exactly those bytes
    /// and refuses writes.
    #[test]
    fn a_window_reads_its_range_of_the_backing_file() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/loop-control").exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("needs root and /dev/loop-control under CI");
            }
            eprintln!("skipping: needs root and /dev/loop-control");
            return;
        }
        let mut backing = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 3 * 4096];
        data[4096..8192].fill(0x5a);
        backing.write_all(&data).unwrap();
        backing.flush().unwrap();
        let w = LoopWindow::map(Path::new("/dev"), backing.path(), 4096, 4096).unwrap();
        let mut got = Vec::new();
        File::open(w.device())
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, vec![0x5a; 4096]);
        let written = OpenOptions::new()
            .write(true)
            .open(w.device())
            .and_then(|mut f| f.write_all(&[0u8; 512]));
        assert!(written.is_err(), "a read-only window took a write");
    }
}
