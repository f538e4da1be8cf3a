//! The ethtool ioctl (`SIOCETHTOOL`): driver and firmware version of a network interface.
//!
//! sysfs names a NIC's driver but not its firmware; `ETHTOOL_GDRVINFO` has both, and needs no
//! privilege. It acts on an interface by name through any socket, so it only describes the
//! machine the agent runs on (never a fixture tree).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Why asking a NIC for its driver info failed.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("opening a control socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("interface name {0:?} is not a valid interface name")]
    BadName(String),
    #[error("ethtool driver info of {name}: {source}")]
    Ioctl {
        name: String,
        #[source]
        source: nix::Error,
    },
}

impl EthtoolError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Socket(_) => "ethtool_socket_failed",
            Self::BadName(_) => "ethtool_bad_interface_name",
            Self::Ioctl { .. } => "ethtool_ioctl_failed",
        }
    }
}

/// What `ETHTOOL_GDRVINFO` reports. Empty strings are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    pub driver: Option<String>,
    pub version: Option<String>,
    pub firmware_version: Option<String>,
    pub bus_info: Option<String>,
    pub expansion_rom_version: Option<String>,
}

mod ioctl {
    /// `ETHTOOL_GDRVINFO` from `<linux/ethtool.h>`.
    pub(super) const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

    /// `struct ethtool_drvinfo` from `<linux/ethtool.h>`.
    #[repr(C)]
    pub(super) struct EthtoolDrvinfo {
        pub cmd: u32,
        pub driver: [u8; 32],
        pub version: [u8; 32],
        pub fw_version: [u8; 32],
        pub bus_info: [u8; 32],
        pub erom_version: [u8; 32],
        pub reserved2: [u8; 12],
        pub n_priv_flags: u32,
        pub n_stats: u32,
        pub testinfo_len: u32,
        pub eedump_len: u32,
        pub regdump_len: u32,
    }

    nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);
}

/// A socket to address ethtool requests through (any family works; this is IPv4 datagram).
pub fn control_socket() -> Result<OwnedFd, EthtoolError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(EthtoolError::Socket)
}

fn text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Driver and firmware version of interface `name`, asked through `sock`.
pub fn driver_info(sock: BorrowedFd<'_>, name: &str) -> Result<DriverInfo, EthtoolError> {
    let bytes = name.as_bytes();
    // IFNAMSIZ includes the terminating NUL.
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(EthtoolError::BadName(name.to_string()));
    }
    let mut info = ioctl::EthtoolDrvinfo {
        cmd: ioctl::ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    // SAFETY: ifreq is a plain C struct (a name array and a union of plain fields and
    // pointers) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast::<libc::c_char>();
    // SAFETY: `req` is a valid, NUL-terminated ifreq whose data pointer refers to `info`, a
    // correctly sized and initialised ethtool_drvinfo that outlives the call; the kernel
    // writes at most size_of::<EthtoolDrvinfo>() bytes there. `sock` is an open socket.
    unsafe { ioctl::siocethtool(sock.as_raw_fd(), &mut req) }.map_err(|source| {
        EthtoolError::Ioctl {
            name: name.to_string(),
            source,
        }
    })?;
    Ok(DriverInfo {
        driver: text(&info.driver),
        version: text(&info.version),
        firmware_version: text(&info.fw_version),
        bus_info: text(&info.bus_info),
        expansion_rom_version: text(&info.erom_version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn struct_size_matches_the_kernel() {
        // sizeof(struct ethtool_drvinfo) on every Linux architecture.
        assert_eq!(std::mem::size_of::<ioctl::EthtoolDrvinfo>(), 196);
    }

    #[test]
    fn loopback_has_no_driver_info_or_a_plain_one() {
        let sock = control_socket().expect("socket");
        // Loopback answers EOPNOTSUPP on most kernels; either way no panic and a typed
        // answer.
        match driver_info(sock.as_fd(), "lo") {
            Ok(info) => assert!(info.firmware_version.is_none() || info.driver.is_some()),
            Err(e) => assert_eq!(e.code(), "ethtool_ioctl_failed"),
        }
    }

    #[test]
    fn unknown_interface_is_enodev() {
        let sock = control_socket().expect("socket");
        let err = driver_info(sock.as_fd(), "molar-nope0").expect_err("no such interface");
        assert!(
            matches!(
                err,
                EthtoolError::Ioctl {
                    source: nix::Error::ENODEV,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_names_are_refused_before_the_ioctl() {
        let sock = control_socket().expect("socket");
        for name in ["", "a-name-longer-than-15", "nul\0inside"] {
            let err = driver_info(sock.as_fd(), name).expect_err("bad name");
            assert_eq!(err.code(), "ethtool_bad_interface_name");
        }
    }

    #[test]
    fn a_plain_file_is_not_a_socket() {
        let file = tempfile::tempfile().expect("tempfile");
        let err = driver_info(file.as_fd(), "lo").expect_err("not a socket");
        assert!(
            matches!(
                err,
                EthtoolError::Ioctl {
                    source: nix::Error::ENOTTY,
                    ..
                }
            ),
            "{err}"
        );
    }
}
