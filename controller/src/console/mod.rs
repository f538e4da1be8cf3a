//! The console service: each server's serial-over-LAN console, shared by everyone watching.
//!
//! Per server there is at most one SOL session (a BMC refuses a second one), owned by a
//! blocking pump thread: it moves what the BMC sends to every attached viewer (a broadcast
//! channel) and into the bounded console log, and what the interactive holder types to the
//! BMC. Read-only viewers (token holders, the `curl` stream) only receive. There is one
//! interactive holder at a time; another takes over only with `force`, and the previous one
//! is told and detached. The session ends when the last attachment goes (unless capture is
//! kept on with [`ConsoleService::keep`]), when the server is removed, or when the BMC ends
//! it; a later attachment opens a new one.

pub mod attach;
pub mod capture;
mod lan;
mod pump;

pub use lan::lan_opener;

use crate::store::Store;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

pub use pump::{OpenError, OpenedSol, SolLink, SolOpener, unavailable_opener};

/// Messages buffered per viewer before a slow one misses output (it is told how much).
const VIEWER_BUFFER: usize = 1024;
/// Most bytes of typed input waiting for the pump.
const INPUT_QUEUE: usize = 256;

/// What a viewer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMsg {
    /// Bytes the host wrote to its serial port.
    Data(Bytes),
    /// A line from molar itself (session opened, output skipped, ...).
    Notice(String),
    /// The session ended (BMC error, deactivated, server removed): the last message.
    Ended(String),
}

/// Typed input for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleInput {
    Data(Vec<u8>),
    Break,
}

/// Why a console cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    #[error("console of {0} is held by another session (use --force to take it over)")]
    Busy(String),
    #[error("console of {0} is closed")]
    Closed(String),
}

struct Hub {
    server_id: String,
    out: broadcast::Sender<ConsoleMsg>,
    input: tokio::sync::mpsc::Sender<ConsoleInput>,
    /// Attachments (viewers and the holder) plus one while capture is kept on.
    attached: AtomicUsize,
    keep: AtomicBool,
    /// Generation of the interactive holder; 0 for none.
    holder: watch::Sender<u64>,
    next_holder: AtomicU64,
    /// Set when the pump should stop (no attachments, server removed).
    stop: Arc<AtomicBool>,
    /// Set by the pump when it has ended: a new attachment then starts another hub.
    ended: Arc<AtomicBool>,
    /// Held while the count and `stop` change together, so a last detach and a new
    /// attachment cannot interleave (the new one would get a stopping session).
    gate: Mutex<()>,
}

impl Hub {
    fn detach(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.attached.fetch_sub(1, Ordering::SeqCst) == 1 && !self.keep.load(Ordering::SeqCst) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// The console service; one per controller (see [`crate::fleet::Fleet::console`]).
pub struct ConsoleService {
    store: Arc<Store>,
    opener: Mutex<SolOpener>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    /// Per server, held by the pump whose SOL session is open.
    session_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Wakes [`capture::run`] before its next pass (a BMC entry appeared or changed).
    capture_wake: tokio::sync::Notify,
}

impl std::fmt::Debug for ConsoleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleService")
            .field("sessions", &self.hubs().len())
            .finish()
    }
}

/// A read-only attachment: receives what the console shows until dropped.
pub struct Viewer {
    pub rx: broadcast::Receiver<ConsoleMsg>,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("server", &self.hub.server_id)
            .finish()
    }
}

impl Viewer {
    /// The next message; `None` once the console session has ended. A viewer that fell
    /// behind is told how many messages it missed rather than cut off.
    pub async fn recv(&mut self) -> Option<ConsoleMsg> {
        match self.rx.recv().await {
            Ok(m) => Some(m),
            Err(broadcast::error::RecvError::Lagged(_))
                if self.hub.ended.load(Ordering::SeqCst) =>
            {
                Some(ConsoleMsg::Ended("console session ended".into()))
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Some(ConsoleMsg::Notice(format!(
                "{n} console messages skipped (this viewer fell behind)"
            ))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.hub.detach();
    }
}

/// The interactive attachment: a viewer that can also type, until taken over.
#[derive(Debug)]
pub struct Holder {
    pub viewer: Viewer,
    pub control: HolderControl,
}

/// The typing side of the interactive holder; dropping it frees the console for another.
pub struct HolderControl {
    hub: Arc<Hub>,
    generation: u64,
    holder: watch::Receiver<u64>,
}

impl std::fmt::Debug for HolderControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HolderControl")
            .field("server", &self.hub.server_id)
            .field("generation", &self.generation)
            .finish()
    }
}

impl HolderControl {
    /// Sends typed input; false when this holder was taken over or the session ended.
    pub async fn send(&self, input: ConsoleInput) -> bool {
        if *self.holder.borrow() != self.generation {
            return false;
        }
        self.hub.input.send(input).await.is_ok()
    }

    /// Resolves when another session takes the console over.
    pub async fn taken_over(&mut self) {
        let generation = self.generation;
        let _ = self.holder.wait_for(|g| *g != generation).await;
    }
}

impl Drop for HolderControl {
    fn drop(&mut self) {
        let generation = self.generation;
        self.hub.holder.send_if_modified(|g| {
            let mine = *g == generation;
            if mine {
                *g = 0;
            }
            mine
        });
    }
}

impl ConsoleService {
    /// A service opening SOL sessions with `opener`.
    pub fn new(store: Arc<Store>, opener: SolOpener) -> Arc<ConsoleService> {
        Arc::new(ConsoleService {
            store,
            opener: Mutex::new(opener),
            hubs: Mutex::new(HashMap::new()),
            session_locks: Mutex::new(HashMap::new()),
            capture_wake: tokio::sync::Notify::new(),
        })
    }

    /// A server's BMC entry appeared or changed: the capture looks at it now rather than at
    /// its next pass.
    pub fn wake_capture(&self) {
        self.capture_wake.notify_one();
    }

    /// Resolves at the next [`ConsoleService::wake_capture`].
    pub(crate) async fn capture_woken(&self) {
        self.capture_wake.notified().await;
    }

    /// Replaces how sessions are opened (sessions already open keep theirs).
    pub fn set_opener(&self, opener: SolOpener) {
        *self.opener.lock().unwrap_or_else(|p| p.into_inner()) = opener;
    }

    fn hubs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live hub of a server, started if there is none; counted as one attachment.
    fn hub(&self, server_id: &str) -> Arc<Hub> {
        let mut hubs = self.hubs();
        if let Some(h) = hubs.get(server_id) {
            let _gate = h.gate.lock().unwrap_or_else(|p| p.into_inner());
            if !h.ended.load(Ordering::SeqCst) && !h.stop.load(Ordering::SeqCst) {
                h.attached.fetch_add(1, Ordering::SeqCst);
                return h.clone();
            }
        }
        let (out, _) = broadcast::channel(VIEWER_BUFFER);
        let (input, input_rx) = tokio::sync::mpsc::channel(INPUT_QUEUE);
        let hub = Arc::new(Hub {
            server_id: server_id.to_owned(),
            out,
            input,
            attached: AtomicUsize::new(1),
            keep: AtomicBool::new(false),
            holder: watch::Sender::new(0),
            next_holder: AtomicU64::new(1),
            stop: Arc::new(AtomicBool::new(false)),
            ended: Arc::new(AtomicBool::new(false)),
            gate: Mutex::new(()),
        });
        hubs.insert(server_id.to_owned(), hub.clone());
        let session_lock = self
            .session_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server_id.to_owned())
            .or_default()
            .clone();
        let opener = self
            .opener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        pump::start(pump::PumpArgs {
            server_id: server_id.to_owned(),
            store: self.store.clone(),
            opener,
            out: hub.out.clone(),
            input: input_rx,
            stop: hub.stop.clone(),
            ended: hub.ended.clone(),
            session_lock,
        });
        hub
    }

    /// Attaches a read-only viewer (a token holder, the chunked stream, seed 001's
    /// `/obmd/node/{id}/console`). The caller checks the server exists and who may watch.
    pub fn attach_viewer(&self, server_id: &str) -> Viewer {
        let hub = self.hub(server_id);
        Viewer {
            rx: hub.out.subscribe(),
            hub,
        }
    }

    /// Attaches the interactive holder. With `force` an existing holder is told and
    /// detached; without, it is [`ConsoleError::Busy`].
    pub fn attach_interactive(&self, server_id: &str, force: bool) -> Result<Holder, ConsoleError> {
        let viewer = self.attach_viewer(server_id);
        let hub = viewer.hub.clone();
        let generation = hub.next_holder.fetch_add(1, Ordering::SeqCst);
        let mut refused = false;
        hub.holder.send_if_modified(|g| {
            if *g != 0 && !force {
                refused = true;
                return false;
            }
            *g = generation;
            true
        });
        if refused {
            return Err(ConsoleError::Busy(server_id.to_owned()));
        }
        Ok(Holder {
            viewer,
            control: HolderControl {
                hub: hub.clone(),
                generation,
                holder: hub.holder.subscribe(),
            },
        })
    }

    /// Keeps the server's SOL session open (capturing into the console log) with no one
    /// attached, or lets it end with the last attachment again.
    pub fn keep(&self, server_id: &str, on: bool) {
        let hub = if on {
            self.hub(server_id)
        } else {
            match self.hubs().get(server_id) {
                Some(h) => h.clone(),
                None => return,
            }
        };
        let was = hub.keep.swap(on, Ordering::SeqCst);
        match (on, was) {
            // The attachment `hub()` counted stays as the capture's own.
            (true, false) => {}
            (true, true) => hub.detach(),
            (false, true) => hub.detach(),
            (false, false) => {}
        }
    }

    /// Ends the server's console session and detaches everyone (server removed).
    pub fn close(&self, server_id: &str) {
        self.session_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(server_id);
        if let Some(h) = self.hubs().remove(server_id) {
            let _ = h
                .out
                .send(ConsoleMsg::Ended("the server was removed".into()));
            h.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Whether a SOL session of the server is open or opening.
    pub fn is_active(&self, server_id: &str) -> bool {
        self.hubs()
            .get(server_id)
            .is_some_and(|h| !h.ended.load(Ordering::SeqCst))
    }
}

/// How long a viewer stream waits between re-checks of its token (revoked, expired, server
/// removed): the longest a revoked token keeps watching.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(2);
