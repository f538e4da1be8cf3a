//! The pump thread of one SOL session: BMC to viewers and the console log, holder to BMC.
//! It blocks on the session's socket, so it runs on its own thread, never on an async
//! worker; the flow (acks, retransmits) is `molar_ipmi::sol_payload`'s.

use super::{ConsoleInput, ConsoleMsg};
use crate::oob::OobError;
use crate::store::Store;
use bytes::Bytes;
use molar_ipmi::sol_payload::{SolConfig, SolEvent, SolPacket, SolSession};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// An activated SOL payload on an open session.
pub trait SolLink: Send {
    /// Sends one SOL payload packet.
    fn send_sol(&mut self, packet: &[u8]) -> Result<(), OobError>;
    /// The next SOL payload packet from the BMC, waiting at most `timeout`.
    fn recv_sol(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, OobError>;
    /// Keeps the session from timing out while the console is idle (an IPMI request the
    /// BMC answers).
    fn keepalive(&mut self) -> Result<(), OobError>;
    /// Deactivates the payload and closes the session (best effort: the BMC may be gone).
    fn close(&mut self);
}

/// An activated SOL session and the most character data one packet to the BMC may carry.
pub struct OpenedSol {
    pub link: Box<dyn SolLink>,
    pub max_data: usize,
}

impl std::fmt::Debug for OpenedSol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSol")
            .field("max_data", &self.max_data)
            .finish()
    }
}

/// Opens and activates the SOL session of a server (by id); called on the pump thread.
pub type SolOpener = Arc<dyn Fn(&str) -> Result<OpenedSol, OpenError> + Send + Sync>;

/// Why a console session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("server {0} has no BMC on record")]
    NoBmc(String),
    #[error(transparent)]
    Oob(#[from] OobError),
    #[error("reading the BMC of {server}: {msg}")]
    Store { server: String, msg: String },
}

/// How long one receive waits: the bound on typed-input latency.
const POLL: Duration = Duration::from_millis(20);
/// Console output is written to the store in batches of at most this age or size.
const LOG_FLUSH_AGE: Duration = Duration::from_millis(250);
const LOG_FLUSH_BYTES: usize = 8192;
/// How often an idle session is kept alive: well inside the usual 60 s session timeout
/// (ipmitool's SOL client uses 15 s too).
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) struct PumpArgs {
    pub server_id: String,
    pub store: Arc<Store>,
    pub opener: SolOpener,
    pub out: broadcast::Sender<ConsoleMsg>,
    pub input: mpsc::Receiver<ConsoleInput>,
    pub stop: Arc<AtomicBool>,
    pub ended: Arc<AtomicBool>,
    /// Held while this pump's session is open: the next pump of the same server waits for
    /// it, because a BMC refuses a second SOL session.
    pub session_lock: Arc<std::sync::Mutex<()>>,
}

pub(super) fn start(a: PumpArgs) {
    let handle = tokio::runtime::Handle::try_current().ok();
    let name = format!("console {}", a.server_id);
    let ended = a.ended.clone();
    let out = a.out.clone();
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(a, handle));
    if let Err(e) = spawned {
        ended.store(true, Ordering::SeqCst);
        let _ = out.send(ConsoleMsg::Ended(format!(
            "cannot start a console thread: {e}"
        )));
    }
}

fn run(mut a: PumpArgs, handle: Option<tokio::runtime::Handle>) {
    let lock = a.session_lock.clone();
    let _session = lock.lock().unwrap_or_else(|p| p.into_inner());
    let reason = match (a.opener)(&a.server_id) {
        Err(e) => format!("console of {} unavailable: {e}", a.server_id),
        Ok(opened) => {
            tracing::info!(server = %a.server_id, "serial-over-LAN session open");
            let _ = a.out.send(ConsoleMsg::Notice(format!(
                "serial-over-LAN console of {} attached",
                a.server_id
            )));
            let mut link = opened.link;
            let reason = pump(&mut a, &mut *link, opened.max_data, handle.as_ref());
            link.close();
            tracing::info!(server = %a.server_id, %reason, "serial-over-LAN session closed");
            reason
        }
    };
    a.ended.store(true, Ordering::SeqCst);
    let _ = a.out.send(ConsoleMsg::Ended(reason));
}

fn flush(a: &PumpArgs, handle: Option<&tokio::runtime::Handle>, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let data = std::mem::take(buf);
    if let Some(h) = handle
        && let Err(e) = h.block_on(a.store.append_console_log(&a.server_id, data))
    {
        tracing::warn!(server = %a.server_id, error = %e, "console log not stored");
    }
}

/// Runs the session until it ends; why it ended.
fn pump(
    a: &mut PumpArgs,
    link: &mut dyn SolLink,
    max_data: usize,
    handle: Option<&tokio::runtime::Handle>,
) -> String {
    let mut sol = SolSession::new(SolConfig {
        max_data: max_data.max(1),
        ..SolConfig::default()
    });
    // ipmi_sim drops a new session's first packet (LAB.md): a throwaway CR goes first.
    sol.queue(b"\r");
    let mut log = Vec::new();
    let mut flushed = Instant::now();
    let mut kept_alive = Instant::now();
    let reason = loop {
        if a.stop.load(Ordering::SeqCst) {
            break "console detached".to_owned();
        }
        match link.recv_sol(POLL) {
            Err(e) => break e.to_string(),
            Ok(None) => {}
            Ok(Some(bytes)) => match SolPacket::decode(&bytes) {
                Err(e) => tracing::debug!(server = %a.server_id, error = %e, "SOL packet ignored"),
                Ok(p) => {
                    let mut deactivated = false;
                    for ev in sol.receive(&p, Instant::now()) {
                        match ev {
                            SolEvent::Data(d) => {
                                log.extend_from_slice(&d);
                                let _ = a.out.send(ConsoleMsg::Data(Bytes::from(d)));
                            }
                            SolEvent::BreakDetected => {
                                let _ = a.out.send(ConsoleMsg::Notice("break detected".into()));
                            }
                            SolEvent::Overrun => {
                                let _ = a.out.send(ConsoleMsg::Notice(
                                    "the BMC dropped console characters (overrun)".into(),
                                ));
                            }
                            SolEvent::Deactivating => deactivated = true,
                        }
                    }
                    if deactivated {
                        break "the BMC ended the serial-over-LAN session".to_owned();
                    }
                }
            },
        }
        while let Ok(i) = a.input.try_recv() {
            match i {
                ConsoleInput::Data(d) => {
                    if !sol.queue(&d) {
                        let _ = a.out.send(ConsoleMsg::Notice(
                            "typed input dropped: the BMC is not taking it".into(),
                        ));
                    }
                }
                ConsoleInput::Break => sol.send_break(),
            }
        }
        let mut failed = None;
        loop {
            match sol.poll_transmit(Instant::now()) {
                Ok(None) => break,
                Ok(Some(p)) => {
                    if let Err(e) = link.send_sol(&p.encode()) {
                        failed = Some(e.to_string());
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(f) = failed {
            break f;
        }
        if kept_alive.elapsed() >= KEEPALIVE {
            if let Err(e) = link.keepalive() {
                break e.to_string();
            }
            kept_alive = Instant::now();
        }
        if log.len() >= LOG_FLUSH_BYTES || (!log.is_empty() && flushed.elapsed() >= LOG_FLUSH_AGE) {
            flush(a, handle, &mut log);
            flushed = Instant::now();
        }
    };
    flush(a, handle, &mut log);
    reason
}

/// The opener of a service made without a runtime (no way to read the BMC table): every
/// open fails, saying why.
pub fn unavailable_opener() -> SolOpener {
    Arc::new(|server_id: &str| {
        Err(OpenError::Store {
            server: server_id.to_owned(),
            msg: "the console service was built outside the controller's runtime".into(),
        })
    })
}
