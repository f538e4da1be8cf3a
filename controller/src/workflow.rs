//! The lifecycle's durable workflows, driven by the controller on its own:
//!
//! - **discovery** (Discovery → Available, from Initial for a server enrolled by its BMC when
//!   the policy says to power it on): the inventory stored, the BMC's credentials reset
//!   in-band when the policy asks (unless the operator's verified ones work), the chassis
//!   model's QC spec checked (`decom.qc`) and its firmware baseline applied
//!   (`decom.firmware_secure`) when it has them. An enrolled server is first set to boot from
//!   the network and powered on through the request queue, then waited for in the ramdisk.
//! - **claim** (Available → Reserved): `standbye.prepare_image` writes the image,
//!   `standbye.run_image` writes the config drive and boots it; the server is Reserved once
//!   the deployed system starts (the task's completion is its last word before the kexec or
//!   reboot).
//! - **release** (Reserved → Cleanup → Available): next boot from the network and a power
//!   cycle through the request queue (in-band while an agent is connected, else over the
//!   BMC), the ramdisk's agent connecting with a new boot id, then `decom.disk_erase` with
//!   the release's erase policy (the expected disks from the stored inventory).
//!
//! Every step is a row (`store::workflows`) tied to its task (id `wf-{workflow}-{step}`,
//! stored before it is sent) or its request (source `wf-{workflow}-{step}`), so after a
//! restart a running step is found again instead of run twice: a stored task is waited for
//! (the agent reports it when it reconnects), a queued request is waited for, and only a
//! step that provably never started is started. A failure ends the workflow and takes the
//! server to Error with the step's reason.

use crate::fleet::Fleet;
use crate::lifecycle::Cause;
use crate::policy::Policy;
use crate::requests::Requests;
use crate::store::{
    NewRequest, Refs, RequestState, ServerState, StepRecord, StepState, TaskPhase, WorkflowError,
    WorkflowKind, WorkflowRecord,
};
use molar_protocol::bmc::SetCredentialsParams;
use molar_protocol::catalogue::{
    DiskErase, FirmwareSecure, PrepareImage, Qc, RunImage, TaskMethod,
};
use molar_protocol::erase::DiskEraseParams;
use molar_protocol::image::{ImageSpec, PrepareImageParamsWire};
use molar_protocol::run_image::RunImageParams;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The body of `POST /servers/{id}/claim`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimParams {
    /// The image to deploy (as `standbye.prepare_image` takes it); or `image_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// An image of the policy's catalogue, by id (resolved when the claim starts: the
    /// workflow stores the spec it deploys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The disk it is written to.
    pub device: String,
    /// More `standbye.run_image` params (`config_drive`, `config_drive_format`,
    /// `kernel_args`, ...); `image_id` and `device` are the claim's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub run: Map<String, Value>,
    /// The deployed system's name: its config drive's `name` and `hostname` (a meta data
    /// that gives them itself wins). A DNS name: labels of 1 to 63 letters, digits and
    /// hyphens, 253 characters at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why `name` is not a host name, or `None`.
pub fn hostname_problem(name: &str) -> Option<String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok)).then(|| {
        format!(
            "name {:?} is not a host name: dot-separated labels of 1 to 63 letters, digits and \
             hyphens (not at either end), 253 characters at most",
            name.escape_debug().to_string()
        )
    })
}

/// Puts the claim's `name` into its config drive's meta data (`name`, `hostname`) where
/// the meta data does not give them; a config drive is made for it when there is none.
fn name_config_drive(p: &mut ClaimParams) -> Result<(), StartError> {
    let Some(name) = p.name.clone() else {
        return Ok(());
    };
    if let Some(why) = hostname_problem(&name) {
        return Err(StartError::InvalidParams(why));
    }
    let drive = p
        .run
        .entry("config_drive")
        .or_insert_with(|| json!({"meta_data": {}}));
    let meta = drive
        .as_object_mut()
        .and_then(|d| d.get_mut("meta_data"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            StartError::InvalidParams(
                "name needs a config drive given by its contents (meta_data), not a ready image"
                    .into(),
            )
        })?;
    for key in ["name", "hostname"] {
        meta.entry(key).or_insert_with(|| json!(name));
    }
    Ok(())
}

/// The body of `POST /servers/{id}/release`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// The erase (`decom.disk_erase` params); absent: every disk, the strongest method each
    /// offers, verified. `expect` is filled from the stored inventory unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<DiskEraseParams>,
    /// The server is already in the ramdisk (its agent connected): no network boot and
    /// power cycle first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_ramdisk: bool,
}

pub const DISCOVERY_STEPS: &[&str] = &["store_inventory", "bmc_credentials", "qc", "firmware"];
pub const DISCOVERY_ENROLLED_STEPS: &[&str] = &[
    "boot_pxe",
    "power_on",
    "ramdisk",
    "store_inventory",
    "bmc_credentials",
    "qc",
    "firmware",
];
pub const CLAIM_STEPS: &[&str] = &["prepare_image", "run_image"];
pub const RELEASE_STEPS: &[&str] = &["boot_pxe", "power_cycle", "ramdisk", "erase"];
pub const RELEASE_IN_RAMDISK_STEPS: &[&str] = &["erase"];

/// How long a step may take before the workflow fails (a machine that never comes back).
const STEP_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How long a request step waits for a path to a server with no BMC address (its agent).
const PATH_WAIT: Duration = Duration::from_secs(120);
/// How long the agent gets for `bmc.set_credentials`.
const BMC_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the release waits for the ramdisk after the power cycle.
const RAMDISK_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// How an out-of-band request names a BMC's refusal of Set System Boot Options.
pub(crate) const BOOT_OPTIONS_REFUSED: &str = "set system boot options refused";

/// Why a claim or a release was refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    InvalidParams(String),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

/// The workflow service.
pub struct Workflows {
    fleet: Arc<Fleet>,
    requests: Arc<Requests>,
    policy: Arc<Policy>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    poll: Duration,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workflows")
    }
}

/// The tag tying a step to its task id or request source.
fn tag(workflow: i64, seq: u32) -> String {
    format!("wf-{workflow}-{seq}")
}

/// How a step ended: its message, or why it failed.
type Outcome = Result<String, String>;

impl Workflows {
    /// Resumes every workflow the previous run left running.
    pub async fn start(
        fleet: Arc<Fleet>,
        requests: Arc<Requests>,
        policy: Arc<Policy>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Workflows>, crate::store::StoreError> {
        let this = Arc::new(Workflows {
            fleet,
            requests,
            policy,
            shutdown,
            tracker: TaskTracker::new(),
            poll: Duration::from_millis(200),
        });
        for wf in this.fleet.store.running_workflows().await? {
            tracing::info!(workflow = wf.id, server = %wf.server_id, kind = wf.kind.as_str(), "resuming a workflow");
            this.spawn(wf);
        }
        // Servers whose agent connected in `discovery` are sent here by the listener.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        this.fleet.set_discovery_sink(tx);
        let me = this.clone();
        this.tracker.spawn(async move {
            loop {
                tokio::select! {
                    id = rx.recv() => match id {
                        Some(id) => me.discover(&id).await,
                        None => return,
                    },
                    _ = me.shutdown.cancelled() => return,
                }
            }
        });
        Ok(this)
    }

    /// The policy the workflows follow.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts the discovery of a server in `discovery` whose agent connected, unless one runs
    /// (an agent reconnecting during it) or the server moved on.
    pub async fn discover(self: &Arc<Self>, server: &str) {
        let started = self
            .fleet
            .store
            .create_workflow(
                server,
                WorkflowKind::Discovery,
                json!({}),
                DISCOVERY_STEPS.to_vec(),
                ServerState::Discovery,
                None,
                Cause::Discovered,
            )
            .await;
        match started {
            Ok(wf) => {
                tracing::info!(workflow = wf.id, server = %server, "discovery started");
                self.spawn(wf);
            }
            Err(WorkflowError::Busy { .. }) | Err(WorkflowError::Transition(_)) => {}
            Err(e) => tracing::error!(server = %server, error = %e, "starting discovery"),
        }
    }

    /// Initial → Discovery for a server enrolled by its BMC: boot from the network once,
    /// power on, wait for its ramdisk, then discover it.
    pub async fn discover_enrolled(
        self: &Arc<Self>,
        server: &str,
    ) -> Result<WorkflowRecord, StartError> {
        let wf = self
            .fleet
            .store
            .create_workflow(
                server,
                WorkflowKind::Discovery,
                json!({}),
                DISCOVERY_ENROLLED_STEPS.to_vec(),
                ServerState::Initial,
                Some((
                    Cause::Discover,
                    "enrolled: booting the ramdisk over the network",
                )),
                Cause::Discovered,
            )
            .await?;
        tracing::info!(workflow = wf.id, server = %server, "discovery of an enrolled server started");
        self.spawn(wf.clone());
        Ok(wf)
    }

    /// Waits for the shutdown token, then for the workflows to stop where they are.
    pub async fn join(&self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Starts a claim: checked against the params the agent will take, then stored (the
    /// server must be Available and run no other workflow).
    pub async fn claim(
        self: &Arc<Self>,
        server: &str,
        params: ClaimParams,
    ) -> Result<WorkflowRecord, StartError> {
        let mut params = params;
        params.image = Some(match (params.image.take(), params.image_id.take()) {
            (Some(spec), None) => spec,
            (None, Some(id)) => self.policy.image(&id).cloned().ok_or_else(|| {
                StartError::InvalidParams(format!(
                    "image_id {id:?} is not in the policy's image catalogue"
                ))
            })?,
            (Some(_), Some(_)) => {
                return Err(StartError::InvalidParams(
                    "give image or image_id, not both".into(),
                ));
            }
            (None, None) => {
                return Err(StartError::InvalidParams(
                    "give image (a spec) or image_id (from the policy's catalogue)".into(),
                ));
            }
        });
        name_config_drive(&mut params)?;
        prepare_params(&params)?;
        run_params(&params)?;
        let value =
            serde_json::to_value(&params).map_err(|e| StartError::InvalidParams(e.to_string()))?;
        let wf = self
            .fleet
            .store
            .create_workflow(
                server,
                WorkflowKind::Claim,
                value,
                CLAIM_STEPS.to_vec(),
                ServerState::Available,
                None,
                Cause::Claimed,
            )
            .await?;
        tracing::info!(workflow = wf.id, server = %server, image = %image_id(&params), "claim started");
        self.spawn(wf.clone());
        Ok(wf)
    }

    /// Retries the server's failed discovery or release from its failed step (the steps
    /// done before it are not run again); it ends error → available.
    pub async fn retry(self: &Arc<Self>, server: &str) -> Result<WorkflowRecord, StartError> {
        let wf = self.fleet.store.retry_workflow(server).await?;
        tracing::info!(workflow = wf.id, server = %server, retry_of = ?wf.retry_of, "retry started");
        self.spawn(wf.clone());
        Ok(wf)
    }

    /// Starts a release: Reserved → Cleanup at once, then the steps.
    pub async fn release(
        self: &Arc<Self>,
        server: &str,
        params: ReleaseParams,
    ) -> Result<WorkflowRecord, StartError> {
        let mut params = params;
        if params.erase.is_none() {
            // The chassis model's erase policy, decided now and stored with the workflow.
            let inv = self.fleet.stored_inventory(server).await;
            params.erase = Some(
                self.policy
                    .erase_for(inv.as_ref())
                    .map_err(|e| StartError::InvalidParams(format!("the erase policy: {e}")))?,
            );
        }
        let value =
            serde_json::to_value(&params).map_err(|e| StartError::InvalidParams(e.to_string()))?;
        let steps = if params.in_ramdisk {
            RELEASE_IN_RAMDISK_STEPS
        } else {
            RELEASE_STEPS
        };
        let wf = self
            .fleet
            .store
            .create_workflow(
                server,
                WorkflowKind::Release,
                value,
                steps.to_vec(),
                ServerState::Reserved,
                Some((Cause::Released, "released: cleaning starts")),
                Cause::Cleaned,
            )
            .await?;
        tracing::info!(workflow = wf.id, server = %server, "release started");
        self.spawn(wf.clone());
        Ok(wf)
    }

    fn spawn(self: &Arc<Self>, wf: WorkflowRecord) {
        let this = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = this.drive(wf) => {}
                // Left where it is: the next start resumes it.
                _ = this.shutdown.cancelled() => {}
            }
        });
    }

    /// Runs the steps not done yet, then ends the workflow with its transition.
    async fn drive(&self, wf: WorkflowRecord) {
        let mut last_task = None;
        for step in &wf.steps {
            if step.state == StepState::Done {
                last_task = step.task_id.clone().or(last_task);
                continue;
            }
            let outcome = if step.state == StepState::Failed {
                Err(step.message.clone().unwrap_or_else(|| "failed".into()))
            } else {
                self.step(&wf, step).await
            };
            let (ok, message) = match &outcome {
                Ok(m) => (true, m.clone()),
                Err(m) => (false, m.clone()),
            };
            if let Err(e) = self
                .fleet
                .store
                .step_finished(wf.id, step.seq, ok, message.clone())
                .await
            {
                tracing::error!(workflow = wf.id, error = %e, "storing a step's end; the next start resumes it");
                return;
            }
            tracing::info!(workflow = wf.id, server = %wf.server_id, step = %step.name, ok, "{message}");
            if !ok {
                let refs = Refs {
                    request_id: step.request_id,
                    task_id: match step.task_id.clone() {
                        Some(t) => Some(t),
                        None => self.stored_task(&wf, step).await,
                    },
                };
                let why = format!("{} failed at {}: {message}", wf.kind.as_str(), step.name);
                if wf.kind == WorkflowKind::Discovery
                    && step.name == "store_inventory"
                    && wf.retry_of.is_none()
                {
                    // An agent that gives no inventory (gone, not ready, too old) leaves the
                    // server in discovery: its next connection starts discovery again.
                    tracing::warn!(workflow = wf.id, server = %wf.server_id, "{why}; still in discovery");
                    if let Err(e) = self.fleet.store.abandon_workflow(wf.id, why).await {
                        tracing::error!(workflow = wf.id, error = %e, "ending a workflow");
                    }
                    return;
                }
                self.finish(&wf, false, why, Cause::Failed, refs).await;
                return;
            }
            if let Some(t) = self.stored_task(&wf, step).await {
                last_task = Some(t);
            }
        }
        let (cause, why) = match wf.kind {
            _ if wf.retry_of.is_some() => (Cause::Resolved, "retried: the failed step succeeded"),
            WorkflowKind::Discovery => (Cause::Discovered, "discovered: inventory stored"),
            WorkflowKind::Claim => (Cause::Claimed, "deployed: the image is booting"),
            WorkflowKind::Release => (Cause::Cleaned, "cleaned: disks erased"),
        };
        let refs = Refs {
            request_id: None,
            task_id: last_task,
        };
        self.finish(&wf, true, why.into(), cause, refs).await;
    }

    /// The task that carried out `step`, when it had one.
    async fn stored_task(&self, wf: &WorkflowRecord, step: &StepRecord) -> Option<String> {
        if !is_task(&step.name) {
            return None;
        }
        let id = tag(wf.id, step.seq);
        match self.fleet.store.get_task(&id).await {
            Ok(Some(_)) => Some(id),
            _ => None,
        }
    }

    async fn finish(&self, wf: &WorkflowRecord, ok: bool, why: String, cause: Cause, refs: Refs) {
        match self
            .fleet
            .store
            .finish_workflow(wf.id, ok, why.clone(), cause, refs)
            .await
        {
            Ok(()) => tracing::info!(workflow = wf.id, server = %wf.server_id, ok, "{why}"),
            Err(e) => {
                tracing::error!(workflow = wf.id, server = %wf.server_id, error = %e, "ending a workflow")
            }
        }
    }

    async fn step(&self, wf: &WorkflowRecord, step: &StepRecord) -> Outcome {
        match step.name.as_str() {
            "prepare_image" => {
                let p: ClaimParams = params(wf)?;
                let v = serde_json::to_value(prepare_params(&p).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                self.task::<PrepareImage>(wf, step, v).await
            }
            "run_image" => {
                let p: ClaimParams = params(wf)?;
                let v = serde_json::to_value(run_params(&p).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                self.task::<RunImage>(wf, step, v).await
            }
            "erase" => {
                let p: ReleaseParams = params(wf)?;
                let erase = self
                    .fleet
                    .expecting_disks(&wf.server_id, p.erase.unwrap_or_default())
                    .await;
                let v = serde_json::to_value(erase).map_err(|e| e.to_string())?;
                self.task::<DiskErase>(wf, step, v).await
            }
            "boot_pxe" => {
                match self
                    .request(wf, step, "set_next_boot_device", Some("pxe"))
                    .await
                {
                    // A BMC without boot overrides (ipmi_sim, some vendors' IPMI): the
                    // server's own boot order decides, and the ramdisk step fails clearly
                    // when that is not the network.
                    Err(m) if m.contains(BOOT_OPTIONS_REFUSED) => Ok(format!(
                        "the BMC refuses a boot override, its boot order decides: {m}"
                    )),
                    other => other,
                }
            }
            "power_cycle" => {
                // The boot it causes is the ramdisk's: it may replace the deployed system's
                // session and claim the server with an enrolment token.
                self.fleet
                    .expect_ramdisk(&wf.server_id, RAMDISK_DEADLINE, "released: cleaning")
                    .await
                    .map_err(|e| format!("expecting the ramdisk: {e}"))?;
                self.request(wf, step, "set_power_state", Some("cycle"))
                    .await
            }
            "ramdisk" => self.ramdisk(wf, step).await,
            "power_on" => self.request(wf, step, "set_power_state", Some("on")).await,
            "store_inventory" => self.inventory(wf, step).await,
            "bmc_credentials" => self.bmc_credentials(wf, step).await,
            "qc" => {
                let Some(spec) = self.chassis(wf).await.and_then(|c| c.qc.clone()) else {
                    return Ok("no QC spec for this server's chassis model".into());
                };
                self.task::<Qc>(wf, step, json!({ "spec": spec })).await
            }
            "firmware" => {
                let Some(fw) = self.chassis(wf).await.and_then(|c| c.firmware.clone()) else {
                    return Ok("no firmware baseline for this server's chassis model".into());
                };
                let v = serde_json::to_value(fw).map_err(|e| e.to_string())?;
                self.task::<FirmwareSecure>(wf, step, v).await
            }
            other => Err(format!(
                "unknown step {other:?} (stored by a newer controller?)"
            )),
        }
    }

    /// A task step: started once under its tag, then followed to its end.
    async fn task<M: TaskMethod>(
        &self,
        wf: &WorkflowRecord,
        step: &StepRecord,
        params: Value,
    ) -> Outcome {
        let id = tag(wf.id, step.seq);
        let store = &self.fleet.store;
        let stored = store.get_task(&id).await.map_err(|e| e.to_string())?;
        if stored.is_none() {
            store
                .step_running(wf.id, step.seq, Some(id.clone()), None)
                .await
                .map_err(|e| e.to_string())?;
            self.connected(&wf.server_id, STEP_DEADLINE).await?;
            match self
                .fleet
                .start_task_as(&wf.server_id, M::NAME, params, &id)
                .await
            {
                Ok(_) => {}
                // Refused by the agent: stored as failed, reported below.
                Err(e) if store.get_task(&id).await.ok().flatten().is_some() => {
                    tracing::warn!(workflow = wf.id, task = %id, error = %e, "starting a step's task")
                }
                Err(e) => return Err(format!("starting {}: {e}", M::NAME)),
            }
        }
        let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
        loop {
            let t = store
                .get_task(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("task {id} is gone from the store"))?;
            match t.state {
                TaskPhase::Complete => return Ok(format!("{} complete (task {id})", M::NAME)),
                TaskPhase::Error => {
                    return Err(format!(
                        "{} failed (task {id}): {}{}",
                        M::NAME,
                        t.msg.unwrap_or_default(),
                        t.code.map(|c| format!(" [{c}]")).unwrap_or_default()
                    ));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(format!(
                        "{} (task {id}) did not end in {STEP_DEADLINE:?}",
                        M::NAME
                    ));
                }
                _ => tokio::time::sleep(self.poll).await,
            }
        }
    }

    /// A request step: queued once (its source is the step's tag), then waited for; sent
    /// once more only when a controller restart interrupted it.
    async fn request(
        &self,
        wf: &WorkflowRecord,
        step: &StepRecord,
        action: &str,
        parameter: Option<&str>,
    ) -> Outcome {
        let store = &self.fleet.store;
        let source = tag(wf.id, step.seq);
        // This step's requests, newest first (found by their source, so one queued just
        // before a crash is found too).
        let mine: Vec<_> = store
            .server_requests(&wf.server_id, crate::store::REQUESTS_LISTED_MAX)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.source == source)
            .collect();
        // A request the controller's restart interrupted has an unknown outcome: it is sent
        // once more (a boot device set twice, or a second power cycle of a machine that is
        // being cleaned, is harmless; a lost step is not).
        let interrupted = mine.first().is_some_and(|r| {
            r.state == RequestState::Failed
                && r.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with(crate::requests::RESTARTED))
        });
        let id = match mine.first() {
            Some(r) if !(interrupted && mine.len() < 2) => r.id,
            _ => {
                if interrupted {
                    tracing::info!(workflow = wf.id, step = %step.name, "sending a request again: the controller restarted while it ran");
                }
                // Without a BMC address the request goes in-band: an agent reconnecting
                // after a controller restart is waited for rather than failing the step.
                let oob = store
                    .bmc_target(&wf.server_id)
                    .await
                    .map_err(|e| e.to_string())?;
                if oob.is_none() {
                    self.connected(&wf.server_id, PATH_WAIT).await?;
                }
                let rec = self
                    .requests
                    .submit(
                        &wf.server_id,
                        NewRequest {
                            action: action.to_owned(),
                            parameter: parameter.map(str::to_owned),
                            persistent: false,
                            efi: false,
                            source: source.clone(),
                        },
                    )
                    .await
                    .map_err(|e| format!("queueing {action}: {e}"))?;
                rec.id
            }
        };
        store
            .step_running(wf.id, step.seq, None, Some(id))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let r = store
                .request(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("request {id} is gone from the store"))?;
            let msg = r.message.clone().unwrap_or_default();
            match r.state {
                RequestState::Succeeded => return Ok(format!("request {id}: {msg}")),
                RequestState::Failed => return Err(format!("request {id} ({action}): {msg}")),
                _ => tokio::time::sleep(self.poll).await,
            }
        }
    }

    /// Waits for the ramdisk: the server's agent connected with another boot id than the
    /// one it had when the workflow started.
    async fn ramdisk(&self, wf: &WorkflowRecord, step: &StepRecord) -> Outcome {
        self.fleet
            .store
            .step_running(wf.id, step.seq, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + RAMDISK_DEADLINE;
        loop {
            let s = self
                .fleet
                .store
                .get_server(&wf.server_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the server is gone")?;
            if self.fleet.is_connected(&wf.server_id)
                && s.boot_id.is_some()
                && s.boot_id != wf.boot_id
            {
                return Ok(format!(
                    "the ramdisk's agent connected (boot {})",
                    s.boot_id.unwrap_or_default()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no agent connected from a new boot within {RAMDISK_DEADLINE:?} of the power cycle"
                ));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// The chassis model of the server's stored inventory.
    async fn chassis(&self, wf: &WorkflowRecord) -> Option<crate::policy::ChassisModel> {
        let inv = self.fleet.stored_inventory(&wf.server_id).await?;
        self.policy.chassis_of(&inv).cloned()
    }

    /// Takes and stores the inventory (a call: run again after a restart, it is harmless),
    /// asking again while the agent is not ready yet.
    async fn inventory(&self, wf: &WorkflowRecord, step: &StepRecord) -> Outcome {
        let store = &self.fleet.store;
        store
            .step_running(wf.id, step.seq, None, None)
            .await
            .map_err(|e| e.to_string())?;
        self.connected(&wf.server_id, RAMDISK_DEADLINE).await?;
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .fleet
                .refresh_inventory(&wf.server_id, crate::fleet::DISCOVERY_TIMEOUT)
                .await
            {
                Ok(_) => return Ok("inventory stored".into()),
                Err(e)
                    if (e.not_ready() || !self.fleet.is_connected(&wf.server_id))
                        && started.elapsed() + backoff < crate::fleet::DISCOVERY_TIMEOUT =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    self.connected(&wf.server_id, RAMDISK_DEADLINE).await?;
                }
                Err(e) => return Err(format!("taking the inventory: {e}")),
            }
        }
    }

    /// Resets the BMC's credentials in-band when the policy asks, unless the operator's
    /// stored credentials were verified (run again after a restart, it only sets a new
    /// password, which is stored when the agent reports it).
    async fn bmc_credentials(&self, wf: &WorkflowRecord, step: &StepRecord) -> Outcome {
        let Some(want) = &self.policy.discovery.bmc_credentials else {
            return Ok("the policy does not ask for BMC credentials".into());
        };
        let Some(inv) = self.fleet.stored_inventory(&wf.server_id).await else {
            return Err("no stored inventory".into());
        };
        if inv.bmc.is_none() {
            return Ok("the inventory shows no BMC".into());
        }
        let stored = self
            .fleet
            .store
            .bmc(&wf.server_id)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(b) = &stored
            && b.source == "operator"
            && b.verified_ms.is_some()
            && b.verify_error.is_none()
        {
            return Ok(format!(
                "the operator's credentials for {} work: kept",
                b.username
            ));
        }
        self.fleet
            .store
            .step_running(wf.id, step.seq, None, None)
            .await
            .map_err(|e| e.to_string())?;
        self.connected(&wf.server_id, RAMDISK_DEADLINE).await?;
        let params = SetCredentialsParams {
            username: want.username.clone(),
            password: None,
            user_id: None,
            channel: None,
            privilege: Default::default(),
        };
        self.fleet
            .set_bmc_credentials(&wf.server_id, &params, BMC_CREDENTIALS_TIMEOUT)
            .await
            .map_err(|e| format!("setting BMC credentials in-band: {e}"))?;
        Ok(format!(
            "BMC user {} set in-band, its password stored",
            want.username
        ))
    }

    /// Waits until the server has a live agent.
    async fn connected(&self, server: &str, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        while !self.fleet.is_connected(server) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no agent connected within {within:?}"));
            }
            tokio::time::sleep(self.poll).await;
        }
        Ok(())
    }
}

fn image_id(p: &ClaimParams) -> &str {
    p.image.as_ref().map_or("", |i| i.id.as_str())
}

fn is_task(step: &str) -> bool {
    matches!(
        step,
        "prepare_image" | "run_image" | "erase" | "qc" | "firmware"
    )
}

fn params<T: serde::de::DeserializeOwned>(wf: &WorkflowRecord) -> Result<T, String> {
    serde_json::from_value(wf.params.clone())
        .map_err(|e| format!("the stored params of workflow {} do not decode: {e}", wf.id))
}

/// The claim's `standbye.prepare_image` params.
fn prepare_params(p: &ClaimParams) -> Result<PrepareImageParamsWire, StartError> {
    let wire = PrepareImageParamsWire {
        image: p.image.clone(),
        image_id: None,
        device: p.device.clone(),
    };
    molar_protocol::image::PrepareImageParams::try_from(wire.clone())
        .map_err(|e| StartError::InvalidParams(format!("prepare_image: {e}")))?;
    Ok(wire)
}

/// The claim's `standbye.run_image` params, checked as the agent will check them.
fn run_params(p: &ClaimParams) -> Result<RunImageParams, StartError> {
    for own in ["image_id", "device", "task_id"] {
        if p.run.contains_key(own) {
            return Err(StartError::InvalidParams(format!(
                "run must not carry {own}: the claim sets it"
            )));
        }
    }
    let mut run = p.run.clone();
    run.insert("image_id".into(), json!(image_id(p)));
    run.insert("device".into(), json!(p.device));
    serde_json::from_value(Value::Object(run))
        .map_err(|e| StartError::InvalidParams(format!("run: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(v: Value) -> Result<ClaimParams, String> {
        let p: ClaimParams = serde_json::from_value(v).map_err(|e| e.to_string())?;
        prepare_params(&p).map_err(|e| e.to_string())?;
        run_params(&p).map_err(|e| e.to_string())?;
        Ok(p)
    }

    #[test]
    fn claims_are_checked_as_the_agent_checks_them() {
        let image = json!({"id": "debian", "urls": ["http://127.0.0.1:1/d.img"],
            "checksum": format!("sha256:{}", "0".repeat(64))});
        assert!(claim(json!({"image": image, "device": "/dev/vda"})).is_ok());
        let p = claim(json!({"image": image, "device": "/dev/vda",
            "run": {"kernel_args": "console=ttyS0"}}))
        .unwrap();
        let run = run_params(&p).unwrap();
        assert_eq!(
            (run.image_id.as_str(), run.device.as_str()),
            ("debian", "/dev/vda")
        );
        assert_eq!(run.kernel_args.as_deref(), Some("console=ttyS0"));
        for (bad, why) in [
            (json!({"image": image}), "device"),
            (
                json!({"image": image, "device": "/dev/vda", "force": true}),
                "unknown field",
            ),
            (
                json!({"image": image, "device": "/dev/vda", "run": {"image_id": "x"}}),
                "image_id",
            ),
            (
                json!({"image": image, "device": "/dev/vda", "run": {"reboot_now": 1}}),
                "unknown field",
            ),
            (
                json!({"image": {"id": "x", "urls": []}, "device": "/dev/vda"}),
                "",
            ),
            (json!({"image": image, "device": ""}), "device"),
        ] {
            let e = claim(bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_claims_name_goes_into_its_config_drive() {
        let image = json!({"id": "debian", "urls": ["http://127.0.0.1:1/d.img"],
            "checksum": format!("sha256:{}", "0".repeat(64))});
        let named = |run: Value, name: &str| {
            let mut p: ClaimParams = serde_json::from_value(
                json!({"image": image, "device": "vda", "run": run, "name": name}),
            )
            .unwrap();
            name_config_drive(&mut p).map(|()| p.run["config_drive"]["meta_data"].clone())
        };
        assert_eq!(
            named(json!({}), "web-1.example").unwrap(),
            json!({"name": "web-1.example", "hostname": "web-1.example"})
        );
        assert_eq!(
            named(
                json!({"config_drive": {"meta_data": {"hostname": "given", "uuid": "u"}}}),
                "web-1"
            )
            .unwrap(),
            json!({"name": "web-1", "hostname": "given", "uuid": "u"})
        );
        for bad in ["", "-web", "web_1", "a..b", &"x".repeat(64), "web 1", "wéb"] {
            let e = named(json!({}), bad).unwrap_err().to_string();
            assert!(e.contains("not a host name"), "{bad}: {e}");
        }
        let e = named(json!({"config_drive": "H4sIAAAA"}), "web-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("meta_data"), "{e}");
        // The run params still check as the agent's.
        let mut p: ClaimParams =
            serde_json::from_value(json!({"image": image, "device": "vda", "name": "web-1"}))
                .unwrap();
        name_config_drive(&mut p).unwrap();
        assert!(run_params(&p).is_ok());
    }

    #[test]
    fn releases_are_strict() {
        let p: ReleaseParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(p, ReleaseParams::default());
        let p: ReleaseParams =
            serde_json::from_value(json!({"erase": {"method": "metadata"}, "in_ramdisk": true}))
                .unwrap();
        assert!(p.in_ramdisk);
        assert!(serde_json::from_value::<ReleaseParams>(json!({"wipe": true})).is_err());
        assert!(
            serde_json::from_value::<ReleaseParams>(json!({"erase": {"method": "shred"}})).is_err()
        );
    }
}
