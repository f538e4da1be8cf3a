//! kexec without kexec-tools: `kexec_file_load(2)` loads a kernel (and its initrd) from file
//! descriptors, the kernel itself parses the image and checks its signature when the policy
//! asks for one; `reboot(LINUX_REBOOT_CMD_KEXEC)` then jumps into it.
//!
//! Loading arms the jump: whatever runs `reboot(2)` with `RB_KEXEC` afterwards starts that
//! kernel instead of the firmware. So tests call these only with files that are no kernel
//! (the call fails before anything is armed) and never call [`execute`].

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why a kexec could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the initrds into one: {0}")]
    Initrd(#[source] std::io::Error),
    #[error(
        "the initrds together exceed {limit} bytes (at most {MAX_JOINED_INITRD} bytes and \
         half of MemAvailable are joined in memory)"
    )]
    InitrdTooLarge { limit: u64 },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(
        "the kernel command line is {len} bytes; the kernel takes at most {} with its NUL",
        molar_protocol::run_image::COMMAND_LINE_SIZE
    )]
    CmdlineTooLong { len: usize },
    #[error(
        "kexec_file_load of {kernel}: not permitted (needs CAP_SYS_BOOT, and \
         kernel.kexec_load_disabled must be 0)"
    )]
    NotPermitted { kernel: PathBuf },
    #[error("kexec_file_load of {kernel}: not a bootable kernel for this machine")]
    NotAKernel { kernel: PathBuf },
    #[error(
        "kexec_file_load of {kernel}: signature rejected (lockdown or secure boot requires a \
         kernel signed with a trusted key)"
    )]
    SignatureRejected { kernel: PathBuf },
    #[error("kexec_file_load of {kernel}: the kernel does not support kexec_file_load")]
    Unsupported { kernel: PathBuf },
    #[error("kexec_file_load of {kernel}: {source}")]
    Load {
        kernel: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unloading the kexec kernel: {0}")]
    Unload(#[source] nix::Error),
    #[error("reboot(LINUX_REBOOT_CMD_KEXEC): {0}")]
    Execute(#[source] nix::Error),
}

impl KexecError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            KexecError::Open { .. } | KexecError::Initrd(_) => "kexec_file_unreadable",
            KexecError::InitrdTooLarge { .. } => "kexec_initrd_too_large",
            KexecError::CmdlineNul | KexecError::CmdlineTooLong { .. } => "invalid_params",
            KexecError::NotPermitted { .. } => "kexec_not_permitted",
            KexecError::NotAKernel { .. } => "kexec_not_a_kernel",
            KexecError::SignatureRejected { .. } => "kexec_signature_rejected",
            KexecError::Unsupported { .. } => "kexec_unsupported",
            KexecError::Load { .. } | KexecError::Unload(_) => "kexec_load_failed",
            KexecError::Execute(_) => "kexec_failed",
        }
    }
}

fn open(path: &Path) -> Result<File, KexecError> {
    File::open(path).map_err(|source| KexecError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// The most bytes of initrds joined into a memory file, whatever memory is free: real
/// microcode + initramfs pairs are tens of MiB.
pub const MAX_JOINED_INITRD: u64 = 1 << 30;

/// How many bytes of initrds may be joined in memory now: [`MAX_JOINED_INITRD`], or half of
/// `MemAvailable` when that is less (the memory file lives in RAM, beside the ramdisk).
fn joined_initrd_limit() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib.saturating_mul(1024) / 2);
    available.map_or(MAX_JOINED_INITRD, |a| a.min(MAX_JOINED_INITRD))
}

/// One initrd file descriptor for several initrd files (microcode first, then the
/// initramfs, as GRUB loads them): the kernel unpacks concatenated cpio archives, each
/// starting on a 4-byte boundary, so they are joined into a memory file with that padding,
/// of at most `limit` bytes.
fn initrd_fd(initrds: &[PathBuf], limit: u64) -> Result<Option<OwnedFd>, KexecError> {
    match initrds {
        [] => Ok(None),
        [one] => Ok(Some(open(one)?.into())),
        many => {
            let fd = nix::sys::memfd::memfd_create(
                "molar-initrd",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(|e| KexecError::Initrd(e.into()))?;
            let mut out = File::from(fd);
            let mut written: u64 = 0;
            let mut buf = vec![0u8; 1 << 20];
            for path in many {
                let pad = (4 - written % 4) % 4;
                out.write_all(&[0u8; 3][..pad as usize])
                    .map_err(KexecError::Initrd)?;
                written += pad;
                let mut f = open(path)?;
                loop {
                    let n = f.read(&mut buf).map_err(KexecError::Initrd)?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if written > limit {
                        return Err(KexecError::InitrdTooLarge { limit });
                    }
                    out.write_all(&buf[..n]).map_err(KexecError::Initrd)?;
                }
            }
            Ok(Some(out.into()))
        }
    }
}

/// Loads `kernel` with `initrds` (joined when several) and `cmdline` for the next
/// [`execute`]. The command line's length passed to the kernel includes its NUL.
pub fn load(kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError> {
    let cmdline = CString::new(cmdline).map_err(|_| KexecError::CmdlineNul)?;
    let len = cmdline.as_bytes_with_nul().len();
    if len > molar_protocol::run_image::COMMAND_LINE_SIZE {
        return Err(KexecError::CmdlineTooLong { len: len - 1 });
    }
    let kernel_file = open(kernel)?;
    let initrd = initrd_fd(initrds, joined_initrd_limit())?;
    let (initrd_raw, flags) = match &initrd {
        Some(fd) => (fd.as_raw_fd(), 0),
        None => (-1, libc::KEXEC_FILE_NO_INITRAMFS),
    };
    let bytes = cmdline.as_bytes_with_nul();
    // SAFETY: kexec_file_load reads two file descriptors that stay open for the call
    // (`kernel_file`, `initrd`, or -1 with KEXEC_FILE_NO_INITRAMFS), and `bytes.len()` bytes
    // at `bytes.as_ptr()`, a live NUL-terminated buffer; it writes no user memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel_file.as_raw_fd(),
            initrd_raw,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let kernel = kernel.to_path_buf();
    Err(match nix::Error::last() {
        nix::Error::EPERM => KexecError::NotPermitted { kernel },
        nix::Error::ENOEXEC => KexecError::NotAKernel { kernel },
        nix::Error::EKEYREJECTED | nix::Error::EBADMSG => KexecError::SignatureRejected { kernel },
        nix::Error::ENOSYS => KexecError::Unsupported { kernel },
        source => KexecError::Load { kernel, source },
    })
}

/// Forgets a loaded kexec kernel, so a later reboot goes through the firmware.
pub fn unload() -> Result<(), KexecError> {
    // SAFETY: with KEXEC_FILE_UNLOAD the kernel ignores the descriptors and the command
    // line (length 0, null pointer) and reads no user memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1 as libc::c_int,
            -1 as libc::c_int,
            0 as libc::c_ulong,
            std::ptr::null::<u8>(),
            libc::KEXEC_FILE_UNLOAD as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(KexecError::Unload(nix::Error::last()))
    }
}

/// Jumps into the loaded kernel. Returns only on failure. Sync first: nothing is written back
/// after this.
pub fn execute() -> Result<std::convert::Infallible, KexecError> {
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC).map_err(KexecError::Execute)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is no kernel fails before anything is armed: `ENOEXEC` as root with
    /// CAP_SYS_BOOT, `EPERM` without it (or with kexec disabled), `ENOSYS` in a sandbox
    /// without the call (this build host). Never a real kernel here: it would arm a kexec of
    /// this host.
    #[test]
    fn a_file_that_is_no_kernel_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"#!/bin/sh\necho this is no kernel\n").unwrap();
        let err = load(&kernel, &[], "root=/dev/sda1 ro").unwrap_err();
        match &err {
            KexecError::NotAKernel { kernel: k }
            | KexecError::NotPermitted { kernel: k }
            | KexecError::Unsupported { kernel: k } => assert_eq!(k, &kernel),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("kexec_file_load of {}: ", kernel.display()))
        );
        assert!(
            [
                "kexec_not_a_kernel",
                "kexec_not_permitted",
                "kexec_unsupported"
            ]
            .contains(&err.code())
        );
    }

    #[test]
    fn missing_files_and_bad_command_lines_fail_before_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let err = load(&kernel, &[], "").unwrap_err();
        assert!(matches!(err, KexecError::Open { .. }), "{err:?}");
        assert_eq!(err.code(), "kexec_file_unreadable");
        std::fs::write(&kernel, b"x").unwrap();
        let err = load(&kernel, &[dir.path().join("initrd.img")], "").unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "opening {}",
                dir.path().join("initrd.img").display()
            )),
            "{err}"
        );
        let err = load(&kernel, &[], &"a".repeat(2048)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel command line is 2048 bytes; the kernel takes at most 2048 with its NUL"
        );
        let err = load(&kernel, &[], "a\0b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel command line contains a NUL byte"
        );
    }

    #[test]
    fn several_initrds_are_joined_on_four_byte_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("ucode.img"), dir.path().join("initrd.img"));
        std::fs::write(&a, b"12345").unwrap();
        std::fs::write(&b, b"abc").unwrap();
        let fd = initrd_fd(&[a.clone(), b.clone()], 1 << 20)
            .unwrap()
            .unwrap();
        let mut joined = Vec::new();
        let mut f = File::from(fd);
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_end(&mut joined).unwrap();
        assert_eq!(joined, b"12345\0\0\0abc");
        assert!(initrd_fd(&[], 1).unwrap().is_none());
        assert!(initrd_fd(std::slice::from_ref(&a), 1).unwrap().is_some());
        // 5 + 3 bytes of padding + 3: 11 fit in 11, not in 10.
        assert!(initrd_fd(&[a.clone(), b.clone()], 11).is_ok());
        let err = initrd_fd(&[a, b], 10).unwrap_err();
        assert_eq!(err.code(), "kexec_initrd_too_large");
        assert!(
            err.to_string()
                .starts_with("the initrds together exceed 10 bytes"),
            "{err}"
        );
        let limit = joined_initrd_limit();
        assert!(limit > 0 && limit <= MAX_JOINED_INITRD, "{limit}");
    }
}
