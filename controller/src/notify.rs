//! systemd's readiness protocol (`sd_notify(3)`): a datagram of `KEY=VALUE` lines to the
//! unix socket named by `NOTIFY_SOCKET`, written by hand since it is one `sendto`. Without
//! that variable (not started by systemd with `Type=notify`) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells the service manager the controller is ready: both listeners are bound and the
/// store is open, so a unit ordered after `molar.service` finds the API answering.
pub fn ready() -> io::Result<bool> {
    send("READY=1")
}

/// Tells the service manager the controller is shutting down.
pub fn stopping() -> io::Result<bool> {
    send("STOPPING=1")
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when there is none.
pub fn send(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send_to(&path.to_string_lossy(), state).map(|()| true)
}

/// Sends `state` to the socket `path`: a filesystem path, or an abstract name spelt `@name`.
pub fn send_to(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {path:?} is neither a path nor an abstract name"),
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other("short write to NOTIFY_SOCKET"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("molar-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error_not_a_crash() {
        let e = send_to("relative/notify", "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(send_to("/nonexistent/molar/notify", "READY=1").is_err());
    }
}
