//! Inode flags (`FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS`, `<linux/fs.h>`): efivarfs creates every
//! variable file immutable, so rewriting `BootOrder` or a `Boot####` entry first clears
//! `FS_IMMUTABLE_FL` on it (what efibootmgr's libefivar does).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const FS_IMMUTABLE_FL: libc::c_int = 0x10;

mod ioctl {
    use libc::{c_int, c_long};
    // _IOR('f', 1, long) / _IOW('f', 2, long); the kernel reads and writes an int.
    nix::ioctl_read_bad!(
        fs_ioc_getflags,
        nix::request_code_read!(b'f', 1, std::mem::size_of::<c_long>()),
        c_int
    );
    nix::ioctl_write_ptr_bad!(
        fs_ioc_setflags,
        nix::request_code_write!(b'f', 2, std::mem::size_of::<c_long>()),
        c_int
    );
}

#[derive(Debug, thiserror::Error)]
#[error("clearing the immutable flag of {path}: {source}")]
pub struct InodeFlagsError {
    pub path: PathBuf,
    #[source]
    pub source: nix::Error,
}

/// Clears `FS_IMMUTABLE_FL` on `path` when it is set. A filesystem without inode flags
/// (`ENOTTY`, `EOPNOTSUPP`: a test's temp dir) has nothing to clear.
pub fn clear_immutable(path: &Path) -> Result<(), InodeFlagsError> {
    let err = |source| InodeFlagsError {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path)
        .map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which points to `flags`.
    match unsafe { ioctl::fs_ioc_getflags(file.as_raw_fd(), &mut flags) } {
        Ok(_) => {}
        Err(nix::Error::ENOTTY | nix::Error::EOPNOTSUPP | nix::Error::EINVAL) => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    let cleared = flags & !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which points to `cleared`.
    unsafe { ioctl::fs_ioc_setflags(file.as_raw_fd(), &cleared) }.map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_left_writable_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir
            .path()
            .join("BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c");
        std::fs::write(&f, [7, 0, 0, 0, 1, 0]).unwrap();
        clear_immutable(&f).unwrap();
        std::fs::write(&f, [7, 0, 0, 0, 2, 0]).unwrap();
        let err = clear_immutable(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope: "), "{err}");
    }
}
