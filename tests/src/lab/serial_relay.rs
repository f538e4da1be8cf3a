//! The always-on TCP relay between a VM's serial port and `ipmi_sim`'s Serial-over-LAN port
//! (LAB.md): ipmi_sim connects to its `sol` address once at start and then only every 10 s,
//! dropping what the guest prints meanwhile, and QEMU's client socket reconnects each second.
//! The relay listens on both sides and copies bytes between whichever connections are up,
//! so the BMC sees the guest's console from its first byte, across power cycles.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

type Peer = Arc<Mutex<Option<TcpStream>>>;

/// A running relay; stops its threads when dropped.
#[derive(Debug)]
pub struct SerialRelay {
    bmc_port: u16,
    vm_port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl SerialRelay {
    /// Listens on two free loopback ports: [`SerialRelay::bmc_port`] for ipmi_sim's `sol`,
    /// [`SerialRelay::vm_port`] for QEMU's serial chardev.
    pub fn start() -> Result<SerialRelay> {
        let bmc = TcpListener::bind("127.0.0.1:0").context("binding the relay's BMC side")?;
        let vm = TcpListener::bind("127.0.0.1:0").context("binding the relay's VM side")?;
        let (bmc_port, vm_port) = (bmc.local_addr()?.port(), vm.local_addr()?.port());
        let stop = Arc::new(AtomicBool::new(false));
        let bmc_peer: Peer = Arc::default();
        let vm_peer: Peer = Arc::default();
        let threads = vec![
            accept_loop(bmc, bmc_peer.clone(), vm_peer.clone(), stop.clone())?,
            accept_loop(vm, vm_peer, bmc_peer, stop.clone())?,
        ];
        Ok(SerialRelay {
            bmc_port,
            vm_port,
            stop,
            threads,
        })
    }

    pub fn bmc_port(&self) -> u16 {
        self.bmc_port
    }

    pub fn vm_port(&self) -> u16 {
        self.vm_port
    }
}

impl Drop for SerialRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts connections on one side (the newest replaces the last) and copies what each
/// sends to the other side's current connection.
fn accept_loop(
    listener: TcpListener,
    mine: Peer,
    other: Peer,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        let mut readers: Vec<JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                    let Ok(writer) = conn.try_clone() else {
                        continue;
                    };
                    *mine.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
                    let (other, stop) = (other.clone(), stop.clone());
                    readers.push(std::thread::spawn(move || copy(conn, &other, &stop)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        for r in readers {
            let _ = r.join();
        }
    }))
}

/// Copies from `from` to the other side until `from` closes or the relay stops; bytes that
/// arrive while the other side is not connected are dropped, as on a real serial line.
fn copy(mut from: TcpStream, to: &Peer, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut peer = to.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(out) = peer.as_mut()
                    && out.write_all(&buf[..n]).is_err()
                {
                    *peer = None;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_in_both_directions_and_a_reconnect_takes_over() {
        let relay = SerialRelay::start().unwrap();
        let mut bmc = TcpStream::connect(("127.0.0.1", relay.bmc_port())).unwrap();
        let mut vm = TcpStream::connect(("127.0.0.1", relay.vm_port())).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        vm.write_all(b"boot log\n").unwrap();
        let mut got = [0u8; 9];
        bmc.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"boot log\n");
        bmc.write_all(b"typed").unwrap();
        let mut got = [0u8; 5];
        vm.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed");
        // The VM powers off and a new one connects: the BMC sees the new one.
        drop(vm);
        let mut vm2 = TcpStream::connect(("127.0.0.1", relay.vm_port())).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        vm2.write_all(b"again").unwrap();
        let mut got = [0u8; 5];
        bmc.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
    }
}
