//! Generic block device ioctls (`<linux/fs.h>`): geometry, discard, secure discard,
//! zero-out, buffer flush, partition table re-read.
//!
//! The erase engine uses these on whole disks; they work on any block device (SATA, SAS,
//! NVMe namespaces, virtio, loop). On a plain file they fail with `ENOTTY`, which the tests
//! check.

use std::fs::File;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{what}: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("fsync: {0}")]
    Sync(#[source] std::io::Error),
}

impl BlockError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            BlockError::Ioctl { .. } => "block_ioctl_failed",
            BlockError::Sync(_) => "block_sync_failed",
        }
    }

    /// The errno of a failed ioctl.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            BlockError::Ioctl { source, .. } => Some(*source),
            BlockError::Sync(e) => e.raw_os_error().map(nix::Error::from_raw),
        }
    }

    /// True when the device (or the file) does not support the request at all.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.errno(),
            Some(nix::Error::EOPNOTSUPP | nix::Error::ENOTTY | nix::Error::EINVAL)
        )
    }
}

mod ioctl {
    use libc::{c_int, c_uint};

    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    // The following are declared with _IO() in <linux/fs.h> but take a pointer argument.
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), c_uint);
    nix::ioctl_read_bad!(blkroget, nix::request_code_none!(0x12, 94), c_int);
    nix::ioctl_read_bad!(blkdiscardzeroes, nix::request_code_none!(0x12, 124), c_uint);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blksecdiscard, nix::request_code_none!(0x12, 125), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
}

fn err(what: &'static str) -> impl FnOnce(nix::Error) -> BlockError {
    move |source| BlockError::Ioctl { what, source }
}

/// Makes the kernel read the partition table again (`BLKRRPART`); `EBUSY` while a
/// partition of the disk is in use.
pub fn reread_partitions(file: &File) -> Result<(), BlockError> {
    // SAFETY: BLKRRPART takes no argument.
    unsafe { ioctl::blkrrpart(file.as_raw_fd()) }.map_err(err("BLKRRPART"))?;
    Ok(())
}

/// Size of the device in bytes (`BLKGETSIZE64`).
pub fn size_bytes(file: &File) -> Result<u64, BlockError> {
    let mut v: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `v`.
    unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut v) }.map_err(err("BLKGETSIZE64"))?;
    Ok(v)
}

/// Logical block size in bytes (`BLKSSZGET`).
pub fn logical_block_size(file: &File) -> Result<u32, BlockError> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to `v`.
    unsafe { ioctl::blksszget(file.as_raw_fd(), &mut v) }.map_err(err("BLKSSZGET"))?;
    Ok(v as u32)
}

/// Physical block size in bytes (`BLKPBSZGET`).
pub fn physical_block_size(file: &File) -> Result<u32, BlockError> {
    let mut v: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, which points to `v`.
    unsafe { ioctl::blkpbszget(file.as_raw_fd(), &mut v) }.map_err(err("BLKPBSZGET"))?;
    Ok(v)
}

/// Whether the kernel marks the device read-only (`BLKROGET`).
pub fn read_only(file: &File) -> Result<bool, BlockError> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points to `v`.
    unsafe { ioctl::blkroget(file.as_raw_fd(), &mut v) }.map_err(err("BLKROGET"))?;
    Ok(v != 0)
}

/// Whether discarded blocks are guaranteed to read back as zeroes (`BLKDISCARDZEROES`).
/// Kernels since 4.12 always answer no; molar verifies by reading instead.
pub fn discard_zeroes_data(file: &File) -> Result<bool, BlockError> {
    let mut v: libc::c_uint = 0;
    // SAFETY: BLKDISCARDZEROES writes one unsigned int through the pointer, to `v`.
    unsafe { ioctl::blkdiscardzeroes(file.as_raw_fd(), &mut v) }
        .map_err(err("BLKDISCARDZEROES"))?;
    Ok(v != 0)
}

/// Discard (TRIM/UNMAP/deallocate) `len` bytes at `offset` (`BLKDISCARD`).
pub fn discard(file: &File, offset: u64, len: u64) -> Result<(), BlockError> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer, which points to
    // `range`, alive for the call.
    unsafe { ioctl::blkdiscard(file.as_raw_fd(), &range) }.map_err(err("BLKDISCARD"))?;
    Ok(())
}

/// Secure discard `len` bytes at `offset` (`BLKSECDISCARD`).
pub fn secure_discard(file: &File, offset: u64, len: u64) -> Result<(), BlockError> {
    let range = [offset, len];
    // SAFETY: BLKSECDISCARD reads two u64 from the pointer, which points to `range`.
    unsafe { ioctl::blksecdiscard(file.as_raw_fd(), &range) }.map_err(err("BLKSECDISCARD"))?;
    Ok(())
}

/// Write zeroes to `len` bytes at `offset` (`BLKZEROOUT`), offloaded to the device when it
/// supports WRITE ZEROES / WRITE SAME, else emulated by the kernel.
pub fn zero_out(file: &File, offset: u64, len: u64) -> Result<(), BlockError> {
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 from the pointer, which points to `range`.
    unsafe { ioctl::blkzeroout(file.as_raw_fd(), &range) }.map_err(err("BLKZEROOUT"))?;
    Ok(())
}

/// Drop the kernel's buffer cache for the device (`BLKFLSBUF`), so reads after an erase come
/// from the device.
pub fn flush_buffers(file: &File) -> Result<(), BlockError> {
    // SAFETY: BLKFLSBUF takes no argument.
    unsafe { ioctl::blkflsbuf(file.as_raw_fd()) }.map_err(err("BLKFLSBUF"))?;
    Ok(())
}

/// fsync: flush written data and the device's volatile cache.
pub fn sync(file: &File) -> Result<(), BlockError> {
    file.sync_all().map_err(BlockError::Sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctls_on_a_plain_file_fail_with_enotty() {
        let f = tempfile::tempfile().unwrap();
        for (e, what) in [
            (size_bytes(&f).unwrap_err(), "BLKGETSIZE64"),
            (logical_block_size(&f).unwrap_err(), "BLKSSZGET"),
            (physical_block_size(&f).unwrap_err(), "BLKPBSZGET"),
            (reread_partitions(&f).unwrap_err(), "BLKRRPART"),
            (read_only(&f).unwrap_err(), "BLKROGET"),
            (discard_zeroes_data(&f).unwrap_err(), "BLKDISCARDZEROES"),
            (discard(&f, 0, 4096).unwrap_err(), "BLKDISCARD"),
            (secure_discard(&f, 0, 4096).unwrap_err(), "BLKSECDISCARD"),
            (zero_out(&f, 0, 4096).unwrap_err(), "BLKZEROOUT"),
            (flush_buffers(&f).unwrap_err(), "BLKFLSBUF"),
            (reread_partitions(&f).unwrap_err(), "BLKRRPART"),
        ] {
            assert_eq!(e.errno(), Some(nix::Error::ENOTTY), "{what}");
            assert!(e.to_string().starts_with(what), "{e}");
            assert!(e.is_unsupported());
            assert_eq!(e.code(), "block_ioctl_failed");
        }
        sync(&f).unwrap();
    }

    #[test]
    fn request_codes_match_linux_fs_h() {
        assert_eq!(nix::request_code_read!(0x12, 114, 8), 0x8008_1272);
        assert_eq!(nix::request_code_none!(0x12, 119), 0x1277);
        assert_eq!(nix::request_code_none!(0x12, 125), 0x127d);
        assert_eq!(nix::request_code_none!(0x12, 127), 0x127f);
        assert_eq!(nix::request_code_none!(0x12, 97), 0x1261);
        assert_eq!(nix::request_code_none!(0x12, 95), 0x125f);
    }
}
