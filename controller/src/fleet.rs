//! The live side of the controller: which agents are connected right now, routing commands
//! and tasks to them, and the broadcast of task events to watchers (agent tokens, session
//! claims and security events are in [`crate::credentials`]).
//!
//! Both the agent listener and the HTTP API hold an `Arc<Fleet>`; the API's `call` and the
//! fan-in benchmark go through [`Fleet::call`], so the benchmark measures the API's path.
//!
//! Architecture invariant: nothing here writes an inventory or a BMC entry except the
//! explicit handlers [`Fleet::refresh_inventory`] and [`Fleet::set_bmc_credentials`]; a
//! generic call stores nothing, whatever its method.

use crate::store::{Removed, ServerState, StatusOutcome, Store, StoreError, TaskEvent, TaskRecord};
use molar_protocol::bmc::{ChassisPowerParams, PowerAction, SetCredentialsParams};
use molar_protocol::catalogue::{
    BmcInfoGet, BmcSetCredentials, ChassisPower, DiskErase, InventoryGet, Method, Poweroff, Reboot,
    TaskCommand, TaskMethod,
};
use molar_protocol::erase::DiskEraseParams;
use molar_protocol::inventory::Inventory;
use molar_protocol::methods::{Empty, TaskAccepted, TaskStatus};
use molar_protocol::{CallError, ErrorBody, PeerHandle, codes};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How long discovery waits for an agent's inventory (slow disks, many DIMMs).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long reading the BMC's address may take after its credentials were set.
pub const BMC_INFO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a task command may take to be accepted by the agent.
pub const TASK_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a fleet operation failed. Each maps to a stable code (and through it an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("server {0} not found")]
    ServerNotFound(String),
    #[error("server {0} has no agent connection")]
    NotConnected(String),
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("token {0} not found")]
    TokenNotFound(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error("calling {method} on {server}: {source}")]
    Call {
        server: String,
        method: String,
        source: CallError,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl FleetError {
    pub fn code(&self) -> String {
        match self {
            FleetError::ServerNotFound(_)
            | FleetError::TaskNotFound(_)
            | FleetError::TokenNotFound(_) => codes::NOT_FOUND.into(),
            FleetError::NotConnected(_) => codes::NOT_CONNECTED.into(),
            FleetError::InvalidParams(_) => codes::INVALID_PARAMS.into(),
            FleetError::Call { source, .. } => source.to_body().code,
            FleetError::Store(e) => e.code().into(),
        }
    }

    /// Whether the agent answered that it is not ready yet: asking again later may work.
    pub fn not_ready(&self) -> bool {
        matches!(
            self,
            FleetError::Call {
                source: CallError::Remote(b),
                ..
            } if b.code == codes::NOT_READY || b.code == codes::HARDWARE_NOT_READY
        )
    }

    /// Whether the agent itself answered this error (or answered something unreadable),
    /// as opposed to the controller failing or the connection failing.
    pub fn from_agent(&self) -> bool {
        matches!(
            self,
            FleetError::Call {
                source: CallError::Remote(_) | CallError::BadResult { .. },
                ..
            }
        )
    }

    /// The error as a wire body. An agent's own error is relayed exactly as it sent it.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            FleetError::Call {
                source: CallError::Remote(body),
                ..
            } => body.clone(),
            FleetError::Call {
                server,
                source: CallError::Closed,
                ..
            } => ErrorBody::new(
                codes::NOT_CONNECTED,
                format!("server {server} has no agent connection (it closed during the call)"),
            ),
            other => ErrorBody::new(&other.code(), other.to_string()),
        }
    }
}

/// The fatal error a removed server's agent connection is closed with.
pub const SERVER_REMOVED: &str = "server removed by the admin";

/// The fatal error the sessions of a revoked (or rotated) token are closed with.
pub const TOKEN_REVOKED: &str = "agent token revoked";

/// How long the controller expects a server to boot the ramdisk after a `reboot`, a
/// `poweroff` or a `chassis.power` reset, cycle or off it asked for (see
/// [`crate::admission`]).
pub const REBOOT_EXPECTATION: Duration = Duration::from_secs(15 * 60);

/// Whether a call, once answered, takes the machine down (its next boot is one the
/// controller asked for): `reboot`, `poweroff`, and `chassis.power` other than `status`
/// and `on`.
fn takes_the_machine_away(method: &str, params: &Value) -> bool {
    match method {
        m if m == Reboot::NAME || m == Poweroff::NAME => true,
        m if m == ChassisPower::NAME => {
            serde_json::from_value::<ChassisPowerParams>(params.clone())
                .is_ok_and(|p| !matches!(p.action, PowerAction::Status | PowerAction::On))
        }
        _ => false,
    }
}

/// A live agent connection and the credentials it was admitted with.
pub struct LiveAgent {
    pub conn_id: i64,
    pub peer: PeerHandle,
    /// The agent token of its handshake.
    pub token_id: String,
    /// The boot its handshake reported.
    pub boot_id: String,
}

/// Connected agents, the store and the task event bus.
pub struct Fleet {
    pub store: Arc<Store>,
    agents: Mutex<HashMap<String, LiveAgent>>,
    events: broadcast::Sender<TaskEvent>,
    /// Identity keys with a handshake being decided (see [`crate::credentials`]).
    pub(crate) claims: Mutex<std::collections::HashSet<String>>,
    pub(crate) event_budget: Mutex<crate::credentials::EventBudget>,
    /// Counts token revocations, so a handshake can tell whether one raced it.
    pub(crate) revocations: std::sync::atomic::AtomicU64,
    /// Serial-over-LAN consoles (see [`crate::console`]).
    pub console: Arc<crate::console::ConsoleService>,
    /// Where servers needing discovery are sent: the workflow service, once started.
    discovery: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("connected", &self.connected_count())
            .finish()
    }
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Fleet {
    pub fn new(store: Arc<Store>) -> Arc<Fleet> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Fleet {
            console: crate::console::ConsoleService::new(
                store.clone(),
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => crate::console::lan_opener(store.clone(), h),
                    Err(_) => crate::console::unavailable_opener(),
                },
            ),
            store,
            agents: Mutex::new(HashMap::new()),
            events,
            claims: Mutex::new(Default::default()),
            event_budget: Mutex::new(Default::default()),
            revocations: Default::default(),
            discovery: std::sync::OnceLock::new(),
        })
    }

    /// Makes `tx` receive the servers that need discovery (see [`Fleet::request_discovery`]).
    pub fn set_discovery_sink(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        let _ = self.discovery.set(tx);
    }

    /// A server in `discovery` has a live agent: its discovery runs as a workflow when the
    /// workflow service is up ([`crate::workflow`]), else here ([`Fleet::discover`]).
    pub fn request_discovery(self: &Arc<Self>, server_id: &str) {
        if let Some(tx) = self.discovery.get()
            && tx.send(server_id.to_owned()).is_ok()
        {
            return;
        }
        let (fleet, id) = (self.clone(), server_id.to_owned());
        tokio::spawn(async move { fleet.discover(&id).await });
    }

    pub(crate) fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveAgent>> {
        // Poisoning only means a panic elsewhere; every operation on the map is a single
        // insert/remove/get, so it is consistent.
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- servers ----

    /// Removes a server (admin): closes its live agent connection, if any, then deletes it
    /// with its connections, tasks, task events, logs and BMC entry. An agent still running
    /// there registers again as a new server when it reconnects.
    pub async fn remove_server(&self, server_id: &str) -> Result<Removed, FleetError> {
        let live = self.agents().remove(server_id);
        if let Some(live) = live {
            tracing::info!(server = %server_id, "closing the connection of a removed server");
            live.peer.close(Some(SERVER_REMOVED.into())).await;
        }
        self.console.close(server_id);
        self.store
            .remove_server(server_id)
            .await?
            .ok_or_else(|| FleetError::ServerNotFound(server_id.to_owned()))
    }

    // ---- live connections ----

    /// Registers the live connection of a server; returns the one it supersedes.
    pub fn attach(&self, server_id: &str, live: LiveAgent) -> Option<PeerHandle> {
        self.agents()
            .insert(server_id.to_owned(), live)
            .map(|old| old.peer)
    }

    /// The live session of a server (its connection not known to be closed), if any.
    pub fn live_session(&self, server_id: &str) -> Option<crate::admission::LiveSession> {
        self.agents()
            .get(server_id)
            .filter(|a| !a.peer.is_closed())
            .map(|a| crate::admission::LiveSession {
                boot_id: a.boot_id.clone(),
                token_id: a.token_id.clone(),
            })
    }

    /// Closes (with `why` as the fatal message) every live connection admitted with the
    /// token `token_id`; returns the servers whose session was closed.
    pub async fn close_sessions_of_token(&self, token_id: &str, why: &str) -> Vec<String> {
        let closed: Vec<(String, PeerHandle)> = {
            let mut agents = self.agents();
            let ids: Vec<String> = agents
                .iter()
                .filter(|(_, a)| a.token_id == token_id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| agents.remove(&id).map(|a| (id, a.peer)))
                .collect()
        };
        for (_, peer) in &closed {
            peer.close(Some(why.to_owned())).await;
        }
        closed.into_iter().map(|(id, _)| id).collect()
    }

    /// Forgets a connection that ended; returns whether the server still has another one.
    pub fn detach(&self, server_id: &str, conn_id: i64) -> bool {
        let mut agents = self.agents();
        match agents.get(server_id) {
            Some(live) if live.conn_id == conn_id => {
                agents.remove(server_id);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    pub fn is_connected(&self, server_id: &str) -> bool {
        self.agents()
            .get(server_id)
            .is_some_and(|a| !a.peer.is_closed())
    }

    pub fn connected_count(&self) -> usize {
        self.agents().len()
    }

    /// Ids of the servers with a live connection.
    pub fn connected_ids(&self) -> Vec<String> {
        self.agents().keys().cloned().collect()
    }

    /// The live connection of a server, if it has one.
    fn live_peer(&self, server_id: &str) -> Option<PeerHandle> {
        self.agents()
            .get(server_id)
            .filter(|a| !a.peer.is_closed())
            .map(|a| a.peer.clone())
    }

    /// The live connection of a server, or why there is none.
    pub async fn peer(&self, server_id: &str) -> Result<PeerHandle, FleetError> {
        if let Some(peer) = self.live_peer(server_id) {
            return Ok(peer);
        }
        match self.store.get_server(server_id).await? {
            Some(_) => Err(FleetError::NotConnected(server_id.to_owned())),
            None => Err(FleetError::ServerNotFound(server_id.to_owned())),
        }
    }

    /// Calls `method` on the agent of `server_id` and returns its result, as the agent sent
    /// it. Nothing is stored: what a result means for the controller's tables is decided by
    /// the explicit handlers ([`Fleet::refresh_inventory`], [`Fleet::set_bmc_credentials`]).
    pub async fn call(
        &self,
        server_id: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let peer = self.peer(server_id).await?;
        let restarts = takes_the_machine_away(method, &params);
        let result = peer
            .call_timeout(method, params, timeout)
            .await
            .map_err(|source| FleetError::Call {
                server: server_id.to_owned(),
                method: method.to_owned(),
                source,
            })?;
        if restarts {
            // The machine is going away and its next boot is the one the controller asked
            // for: it may take the place of this session (see `crate::admission`).
            if let Err(e) = self
                .expect_ramdisk(
                    server_id,
                    REBOOT_EXPECTATION,
                    &format!("after a {method} the admin asked for"),
                )
                .await
            {
                tracing::error!(server = %server_id, error = %e, "recording the expected reboot");
            }
        }
        Ok(result)
    }

    /// A typed call of a catalogue method: its result decoded, and the result as sent.
    async fn call_decoded<M: Method>(
        &self,
        server_id: &str,
        params: &M::Params,
        timeout: Duration,
    ) -> Result<(M::Result, Value), FleetError> {
        let err = |source| FleetError::Call {
            server: server_id.to_owned(),
            method: M::NAME.to_owned(),
            source,
        };
        let params = serde_json::to_value(params).map_err(|e| {
            err(CallError::Encode {
                method: M::NAME.to_owned(),
                msg: e.to_string(),
            })
        })?;
        let raw = self.call(server_id, M::NAME, params, timeout).await?;
        let typed = serde_json::from_value(raw.clone()).map_err(|e| {
            err(CallError::BadResult {
                method: M::NAME.to_owned(),
                msg: e.to_string(),
            })
        })?;
        Ok((typed, raw))
    }

    /// Calls the catalogue method `M` on the agent of `server_id`; its result decoded.
    pub async fn call_method<M: Method>(
        &self,
        server_id: &str,
        params: &M::Params,
        timeout: Duration,
    ) -> Result<M::Result, FleetError> {
        Ok(self.call_decoded::<M>(server_id, params, timeout).await?.0)
    }

    /// Takes the server's inventory and stores it: the latest inventory is what
    /// `molar server ID --inventory` shows and what an erase expects to find. Returns it as
    /// the agent sent it (checked to be an inventory; stored whole, fields this release does
    /// not know included).
    pub async fn refresh_inventory(
        &self,
        server_id: &str,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let (_, raw) = self
            .call_decoded::<InventoryGet>(server_id, &Empty {}, timeout)
            .await?;
        crate::bounds::check_inventory(&raw).map_err(|e| FleetError::Call {
            server: server_id.to_owned(),
            method: InventoryGet::NAME.to_owned(),
            source: CallError::BadResult {
                method: InventoryGet::NAME.to_owned(),
                msg: e.to_string(),
            },
        })?;
        self.store
            .set_server_inventory(server_id, raw.clone())
            .await?;
        let bmc_macs = serde_json::from_value::<Inventory>(raw.clone())
            .ok()
            .and_then(|i| i.bmc)
            .map(|b| b.lan_channels)
            .unwrap_or_default();
        if let Some(mac) = bmc_macs.iter().find_map(|c| c.mac.as_deref()) {
            self.merge_enrolled(server_id, mac).await;
        }
        Ok(raw)
    }

    /// A server an operator enrolled by its BMC (`molar server add`) whose BMC turns out to
    /// be this agent's (same MAC) is this server: it is folded into it, so the machine has
    /// one record with the operator's name. Failing to merge loses nothing (both stay).
    async fn merge_enrolled(&self, server_id: &str, bmc_mac: &str) {
        match self
            .store
            .merge_enrolled_by_bmc_mac(server_id, bmc_mac)
            .await
        {
            Ok(Some(enrolled)) => {
                tracing::info!(server = %server_id, enrolled = %enrolled, bmc_mac, "agent matched to a server enrolled by its BMC; merged")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(server = %server_id, error = %e, "merging a server enrolled by its BMC")
            }
        }
    }

    /// Seed 004's BMC table: sets credentials on the server's BMC in-band and stores them
    /// with the BMC's MAC and IP (read fresh with `bmc.info`, else from the stored
    /// inventory), so the controller can manage the machine out-of-band later. Returns the
    /// agent's result as sent. The password is never logged.
    pub async fn set_bmc_credentials(
        &self,
        server_id: &str,
        params: &SetCredentialsParams,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let (creds, raw) = self
            .call_decoded::<BmcSetCredentials>(server_id, params, timeout)
            .await?;
        let info = match self
            .call_method::<BmcInfoGet>(server_id, &Empty {}, BMC_INFO_TIMEOUT)
            .await
        {
            Ok(info) => Some(info),
            Err(e) => {
                tracing::warn!(server = %server_id, error = %e, "reading the BMC's address after setting credentials; using the stored inventory");
                self.stored_inventory(server_id).await.and_then(|i| i.bmc)
            }
        };
        let channels = info.map(|i| i.lan_channels).unwrap_or_default();
        let lan = channels
            .iter()
            .find(|c| creds.channels.contains(&c.channel))
            .or(channels.first());
        let mac = lan.and_then(|c| c.mac.clone());
        let ip = lan.and_then(|c| c.ip).map(|ip| ip.to_string());
        if let Some(mac) = &mac {
            self.merge_enrolled(server_id, mac).await;
        }
        let stored = self
            .store
            .set_bmc(
                server_id,
                crate::store::BmcCredentials {
                    mac: mac.clone(),
                    ip: ip.clone(),
                    username: creds.username.clone(),
                    password: creds.password.clone(),
                    user_id: Some(i64::from(creds.user_id)),
                    source: "in_band".into(),
                },
            )
            .await;
        // The BMC has the new password now: failing here would lose the caller's only copy.
        match stored {
            Ok(()) => {
                tracing::info!(server = %server_id, username = %creds.username, mac = ?mac, ip = ?ip, "BMC credentials stored");
                self.console.wake_capture();
            }
            Err(e) => tracing::error!(server = %server_id, error = %e, "storing BMC credentials"),
        }
        Ok(raw)
    }

    /// The stored inventory, decoded; `None` when there is none or it cannot be read (an
    /// older or newer shape is logged and treated as absent).
    pub async fn stored_inventory(&self, server_id: &str) -> Option<Inventory> {
        let raw = match self.store.server_inventory(server_id).await {
            Ok(raw) => raw?,
            Err(e) => {
                tracing::error!(server = %server_id, error = %e, "reading the stored inventory");
                return None;
            }
        };
        serde_json::from_value(raw)
            .inspect_err(|e| tracing::warn!(server = %server_id, error = %e, "the stored inventory does not decode"))
            .ok()
    }

    /// In-band discovery of a server in the `discovery` state: takes its inventory and, once
    /// stored, makes it `available` (seed 003's Discovery → Available). An agent not ready
    /// yet (it has not taken in the handshake's answer, or its drivers are still loading) is
    /// asked again, backing off, for up to [`DISCOVERY_TIMEOUT`]. Another failure leaves it
    /// in `discovery`; the next connection tries again.
    pub async fn discover(&self, server_id: &str) {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let outcome = loop {
            match self.refresh_inventory(server_id, DISCOVERY_TIMEOUT).await {
                Err(e) if e.not_ready() && started.elapsed() + backoff < DISCOVERY_TIMEOUT => {
                    tracing::debug!(server = %server_id, error = %e, "agent not ready for discovery; asking again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(_) => match self
                .store
                .transition(
                    server_id,
                    ServerState::Discovery,
                    crate::lifecycle::Cause::Discovered,
                    "inventory stored",
                    Default::default(),
                )
                .await
            {
                Ok(_) => tracing::info!(server = %server_id, "discovery complete: available"),
                // An operator moved it meanwhile (maintenance): theirs is the last word.
                Err(crate::store::TransitionError::Conflict { actual, .. }) => {
                    tracing::info!(server = %server_id, state = %actual, "discovery complete; the server changed state meanwhile")
                }
                Err(e) => tracing::error!(server = %server_id, error = %e, "storing the state"),
            },
            Err(e) => tracing::warn!(server = %server_id, error = %e, "discovery failed"),
        }
    }

    /// Starts the catalogue task `M` with typed params (see [`Fleet::start_task`]).
    pub async fn start_task_method<M: TaskMethod>(
        &self,
        server_id: &str,
        params: &M::Params,
    ) -> Result<TaskRecord, FleetError> {
        let params = serde_json::to_value(params).map_err(|e| FleetError::Call {
            server: server_id.to_owned(),
            method: M::NAME.to_owned(),
            source: CallError::Encode {
                method: M::NAME.to_owned(),
                msg: e.to_string(),
            },
        })?;
        self.start_task(server_id, M::NAME, params).await
    }

    /// Starts `decom.disk_erase`. When the operator names neither `devices` nor `expect`,
    /// `expect` is filled from the stored inventory ([`crate::erase::expected_disks`]), so
    /// "every disk" fails instead of skipping a disk the agent does not see. The params are
    /// stored as sent.
    pub async fn erase_disks(
        &self,
        server_id: &str,
        params: DiskEraseParams,
    ) -> Result<TaskRecord, FleetError> {
        let params = self.expecting_disks(server_id, params).await;
        self.start_task_method::<DiskErase>(server_id, &params)
            .await
    }

    /// `params` with `expect` filled from the stored inventory when they name neither
    /// `devices` nor `expect` (see [`Fleet::erase_disks`]).
    pub async fn expecting_disks(
        &self,
        server_id: &str,
        mut params: DiskEraseParams,
    ) -> DiskEraseParams {
        if params.devices.is_none() && params.expect.is_none() {
            match self.stored_inventory(server_id).await {
                Some(inv) => {
                    let exclude = params.exclude.as_deref().unwrap_or_default();
                    let ids = crate::erase::expected_disks(&inv, exclude);
                    if !ids.is_empty() {
                        params.expect = Some(ids);
                    }
                }
                None => {
                    tracing::warn!(server = %server_id, "no stored inventory: the erase cannot check that every disk is present")
                }
            }
        }
        params
    }

    /// The params of a task as an operator gives them: an object without `task_id`.
    pub fn task_params(params: Value) -> Result<serde_json::Map<String, Value>, FleetError> {
        let Value::Object(params) = params else {
            return Err(FleetError::InvalidParams(
                "task params must be a JSON object".into(),
            ));
        };
        if params.contains_key("task_id") {
            return Err(FleetError::InvalidParams(
                "task params must not carry task_id: the controller chooses it".into(),
            ));
        }
        Ok(params)
    }

    /// Starts a task: stores it `pending` with `params` as given, sends `method` with a fresh
    /// `task_id` beside them, and records the agent's answer. Returns the stored task.
    pub async fn start_task(
        &self,
        server_id: &str,
        method: &str,
        params: Value,
    ) -> Result<TaskRecord, FleetError> {
        let task_id = format!("t-{}", crate::pki::random_hex(8));
        self.start_task_as(server_id, method, params, &task_id)
            .await
    }

    /// [`Fleet::start_task`] under a task id the caller chose (a workflow step's, so a
    /// restart can find the task again). The id must not be stored yet.
    pub async fn start_task_as(
        &self,
        server_id: &str,
        method: &str,
        params: Value,
        task_id: &str,
    ) -> Result<TaskRecord, FleetError> {
        let params = Self::task_params(params)?;
        let peer = self.peer(server_id).await?;
        let task_id = task_id.to_owned();
        let command = TaskCommand {
            task_id: &task_id,
            params: &params,
        };
        let command = serde_json::to_value(command).map_err(|e| FleetError::Call {
            server: server_id.to_owned(),
            method: method.to_owned(),
            source: CallError::Encode {
                method: method.to_owned(),
                msg: e.to_string(),
            },
        })?;
        self.store
            .create_task(&task_id, server_id, method, Value::Object(params))
            .await?;
        match peer
            .call_timeout(method, command, TASK_ACCEPT_TIMEOUT)
            .await
        {
            Ok(v) => {
                let accepted: Option<TaskAccepted> = serde_json::from_value(v).ok();
                if accepted.as_ref().is_some_and(|a| a.task_id != task_id) {
                    tracing::warn!(server = server_id, task = %task_id, "agent accepted the task under another id");
                }
                self.store.task_accepted(&task_id).await?;
            }
            Err(CallError::Remote(body)) => {
                if let Some(ev) = self
                    .store
                    .task_refused(&task_id, &body.msg, &body.code)
                    .await?
                {
                    self.publish(ev);
                }
                return Err(FleetError::Call {
                    server: server_id.to_owned(),
                    method: method.to_owned(),
                    source: CallError::Remote(body),
                });
            }
            // Timed out or connection lost: the agent may hold the task and report it after
            // reconnecting, so it stays pending.
            Err(source) => {
                return Err(FleetError::Call {
                    server: server_id.to_owned(),
                    method: method.to_owned(),
                    source,
                });
            }
        }
        self.store
            .get_task(&task_id)
            .await?
            .ok_or(FleetError::TaskNotFound(task_id))
    }

    /// Stores a `task_status` from the agent of `server_id` and tells watchers.
    pub async fn task_status(
        &self,
        server_id: &str,
        st: TaskStatus,
    ) -> Result<StatusOutcome, StoreError> {
        let outcome = self.store.apply_task_status(server_id, st).await?;
        if let StatusOutcome::Stored(ev) = &outcome {
            self.publish(ev.clone());
            if ev.state.is_terminal() {
                self.observe_finished(&ev.task_id).await;
            }
        }
        Ok(outcome)
    }

    /// Records a finished task's duration in the metrics (a failed read only loses the sample).
    async fn observe_finished(&self, task_id: &str) {
        if let Ok(Some(t)) = self.store.get_task(task_id).await {
            let took = t
                .finished_ms
                .unwrap_or(t.updated_ms)
                .saturating_sub(t.created_ms);
            crate::metrics::get().task_finished(
                &t.method,
                t.state.as_str(),
                std::time::Duration::from_millis(took.max(0) as u64),
            );
        }
    }

    fn publish(&self, ev: TaskEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(ev);
    }

    /// Live task events (all tasks); watchers filter by task id.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }
}
