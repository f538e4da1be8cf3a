//! The lifecycle's durable workflows, driven by the controller on its own:
//!
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
use crate::requests::Requests;
use crate::store::{
    NewRequest, Refs, RequestState, ServerState, StepRecord, StepState, TaskPhase, WorkflowError,
    WorkflowKind, WorkflowRecord,
};
use molar_protocol::catalogue::{DiskErase, PrepareImage, RunImage, TaskMethod};
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
    /// The image to deploy (as `standbye.prepare_image` takes it).
    pub image: ImageSpec,
    /// The disk it is written to.
    pub device: String,
    /// More `standbye.run_image` params (`config_drive`, `config_drive_format`,
    /// `kernel_args`, ...); `image_id` and `device` are the claim's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub run: Map<String, Value>,
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

pub const CLAIM_STEPS: &[&str] = &["prepare_image", "run_image"];
pub const RELEASE_STEPS: &[&str] = &["boot_pxe", "power_cycle", "ramdisk", "erase"];
pub const RELEASE_IN_RAMDISK_STEPS: &[&str] = &["erase"];

/// How long a step may take before the workflow fails (a machine that never comes back).
const STEP_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How long the release waits for the ramdisk after the power cycle.
const RAMDISK_DEADLINE: Duration = Duration::from_secs(30 * 60);

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
        shutdown: CancellationToken,
    ) -> Result<Arc<Workflows>, crate::store::StoreError> {
        let this = Arc::new(Workflows {
            fleet,
            requests,
            shutdown,
            tracker: TaskTracker::new(),
            poll: Duration::from_millis(200),
        });
        for wf in this.fleet.store.running_workflows().await? {
            tracing::info!(workflow = wf.id, server = %wf.server_id, kind = wf.kind.as_str(), "resuming a workflow");
            this.spawn(wf);
        }
        Ok(this)
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
                CLAIM_STEPS,
                ServerState::Available,
                None,
            )
            .await?;
        tracing::info!(workflow = wf.id, server = %server, image = %params.image.id, "claim started");
        self.spawn(wf.clone());
        Ok(wf)
    }

    /// Starts a release: Reserved → Cleanup at once, then the steps.
    pub async fn release(
        self: &Arc<Self>,
        server: &str,
        params: ReleaseParams,
    ) -> Result<WorkflowRecord, StartError> {
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
                steps,
                ServerState::Reserved,
                Some((Cause::Released, "released: cleaning starts")),
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
                    task_id: step.task_id.clone().or_else(|| self.stored_task(&wf, step)),
                };
                let why = format!("{} failed at {}: {message}", wf.kind.as_str(), step.name);
                self.finish(&wf, false, why, Cause::Failed, refs).await;
                return;
            }
            last_task = Some(tag(wf.id, step.seq))
                .filter(|_| is_task(&step.name))
                .or(last_task);
        }
        let (cause, why) = match wf.kind {
            WorkflowKind::Claim => (Cause::Claimed, "deployed: the image is booting"),
            WorkflowKind::Release => (Cause::Cleaned, "cleaned: disks erased"),
        };
        let refs = Refs {
            request_id: None,
            task_id: last_task,
        };
        self.finish(&wf, true, why.into(), cause, refs).await;
    }

    fn stored_task(&self, wf: &WorkflowRecord, step: &StepRecord) -> Option<String> {
        is_task(&step.name).then(|| tag(wf.id, step.seq))
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
                self.request(wf, step, "set_next_boot_device", Some("pxe"))
                    .await
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

    /// A request step: queued once (its source is the step's tag), then waited for.
    async fn request(
        &self,
        wf: &WorkflowRecord,
        step: &StepRecord,
        action: &str,
        parameter: Option<&str>,
    ) -> Outcome {
        let store = &self.fleet.store;
        let source = tag(wf.id, step.seq);
        let queued = match step.request_id {
            Some(id) => Some(id),
            None => store
                .server_requests(&wf.server_id, crate::store::REQUESTS_LISTED_MAX)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|r| r.source == source)
                .map(|r| r.id),
        };
        let id = match queued {
            Some(id) => id,
            None => {
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

fn is_task(step: &str) -> bool {
    matches!(step, "prepare_image" | "run_image" | "erase")
}

fn params<T: serde::de::DeserializeOwned>(wf: &WorkflowRecord) -> Result<T, String> {
    serde_json::from_value(wf.params.clone())
        .map_err(|e| format!("the stored params of workflow {} do not decode: {e}", wf.id))
}

/// The claim's `standbye.prepare_image` params.
fn prepare_params(p: &ClaimParams) -> Result<PrepareImageParamsWire, StartError> {
    let wire = PrepareImageParamsWire {
        image: Some(p.image.clone()),
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
    run.insert("image_id".into(), json!(p.image.id));
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
