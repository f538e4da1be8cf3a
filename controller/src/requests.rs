//! Queued control requests (seed 000's `serverControl`): power, next boot device, BMC reset
//! and identify, each stored in the `requests` table as `pending`, run one at a time per
//! server in the order they were queued (servers in parallel), and finished `succeeded` or
//! `failed` with a message.
//!
//! The table is the queue: a server's worker takes its oldest pending request, so nothing
//! queued lives only in memory and a restart loses nothing. At start ([`Requests::start`])
//! a request left `active` by the previous run is run again when it only reads (a power
//! status), else failed with [`RESTARTED`]: whether a power change or a BMC reset took
//! effect cannot be known, and repeating one is not safe. Pending requests then run.
//!
//! Path: in-band through the connected agent when it can do the action (`chassis.power`,
//! `chassis.boot_device`, `bmc.reset`), else out-of-band through the BMC
//! ([`crate::oob::perform`]), also when the agent could not act (no local IPMI device,
//! refused: `did_not_act`). Powering on goes out-of-band first (a server that is off has
//! no agent), identify only out-of-band (the agent has no such method). The path taken is
//! recorded on the request.

use crate::fleet::{Fleet, FleetError};
use crate::oob::{BootTarget, OobAction, PowerChange};
use crate::store::{NewRequest, RequestPath, RequestRecord, RequestState, StoreError};
use molar_protocol::bmc::{
    BmcResetParams, BootDevice, BootDeviceParams, ChassisPowerParams, PowerAction, ResetKind,
};
use molar_protocol::catalogue::{BmcReset, ChassisBootDevice, ChassisPower};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The message of a request that was active when the controller stopped.
pub const RESTARTED: &str = "controller restarted while the request was active";

/// How long an agent gets to answer an in-band request.
pub const IN_BAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Most requests one server may have pending or active: a script gone wrong cannot queue
/// hours of power cycles.
pub const OPEN_PER_SERVER_MAX: u64 = 64;

/// How long re-checking a power change after a restart may take.
pub const RECHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The power state a change leaves the server in, when it can be read back: on, off, or
/// off after a soft shutdown; `None` for a cycle or reset (on before and after).
fn expected_power(change: PowerChange) -> Option<bool> {
    match change {
        PowerChange::On => Some(true),
        PowerChange::Off | PowerChange::Soft => Some(false),
        PowerChange::Cycle | PowerChange::Reset => None,
    }
}

/// The actions a request may name.
pub const ACTIONS: &str = "set_power_state, power_cycle, set_next_boot_device, bmc_reset, identify, \
     boot_from_media, eject_media";

/// The longest virtual-media URL accepted.
pub const MEDIA_URL_MAX: usize = 1024;

/// A virtual-media image URL: `http://` or `https://`, printable ASCII without spaces.
pub fn check_media_url(url: &str) -> Result<(), String> {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let host_ok = url
        .split_once("://")
        .map(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
        .unwrap_or(false);
    if url.len() > MEDIA_URL_MAX
        || !scheme_ok
        || !host_ok
        || !url.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(format!(
            "the media URL must be http:// or https://HOST/..., printable, at most \
             {MEDIA_URL_MAX} characters, not {}",
            shown(url)
        ));
    }
    Ok(())
}

/// Why a request was refused before it was queued.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("server {0} not found")]
    ServerNotFound(String),
    #[error("server {server} has {open} requests waiting or running: wait for them to finish")]
    QueueFull { server: String, open: u64 },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The action a request names, checked strictly: `action` one of [`ACTIONS`], `parameter`
/// one the action takes, `persistent` and `efi` only for `set_next_boot_device`.
pub fn parse_action(
    action: &str,
    parameter: Option<&str>,
    persistent: bool,
    efi: bool,
) -> Result<OobAction, RequestError> {
    let bad = |m: String| Err(RequestError::Invalid(m));
    if (persistent || efi) && action != "set_next_boot_device" {
        return bad(format!(
            "persistent and efi apply only to set_next_boot_device, not to {}",
            shown(action)
        ));
    }
    let no_parameter = |what: OobAction| match parameter {
        None | Some("") => Ok(what),
        Some(p) => bad(format!("{action} takes no parameter, got {}", shown(p))),
    };
    match action {
        "set_power_state" => Ok(match parameter {
            Some("status") => OobAction::PowerStatus,
            Some("on") => OobAction::Power(PowerChange::On),
            Some("off") => OobAction::Power(PowerChange::Off),
            Some("soft") => OobAction::Power(PowerChange::Soft),
            Some("cycle") => OobAction::Power(PowerChange::Cycle),
            Some("reset") => OobAction::Power(PowerChange::Reset),
            Some(p) => {
                return bad(format!(
                    "set_power_state parameter must be one of on, off, soft, cycle, reset, \
                     status, not {}",
                    shown(p)
                ));
            }
            None => {
                return bad(
                    "set_power_state needs a parameter: on, off, soft, cycle, reset or status"
                        .into(),
                );
            }
        }),
        "power_cycle" => no_parameter(OobAction::Power(PowerChange::Cycle)),
        "set_next_boot_device" => {
            let device = match parameter {
                Some("pxe") => BootTarget::Pxe,
                Some("disk") => BootTarget::Disk,
                Some("bios") => BootTarget::Bios,
                Some("cdrom") => BootTarget::Cdrom,
                Some("none") => BootTarget::None,
                Some(p) => {
                    return bad(format!(
                        "set_next_boot_device parameter must be one of pxe, disk, bios, cdrom, \
                         none, not {}",
                        shown(p)
                    ));
                }
                None => {
                    return bad(
                        "set_next_boot_device needs a parameter: pxe, disk, bios, cdrom or none"
                            .into(),
                    );
                }
            };
            Ok(OobAction::BootDevice {
                device,
                persistent,
                efi,
            })
        }
        "bmc_reset" => match parameter {
            None | Some("") | Some("cold") => Ok(OobAction::BmcReset),
            Some(p) => bad(format!(
                "bmc_reset parameter may only be cold, not {}",
                shown(p)
            )),
        },
        "identify" => match parameter {
            None | Some("") => Ok(OobAction::Identify { seconds: None }),
            Some("off") => Ok(OobAction::Identify { seconds: Some(0) }),
            Some(p) => match p.parse::<u8>() {
                Ok(s) if p.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(OobAction::Identify { seconds: Some(s) })
                }
                _ => bad(format!(
                    "identify parameter must be a number of seconds from 0 to 255 or off, \
                     not {}",
                    shown(p)
                )),
            },
        },
        "boot_from_media" => match parameter {
            Some(url) => {
                check_media_url(url).map_err(RequestError::Invalid)?;
                Ok(OobAction::BootFromMedia {
                    url: url.to_owned(),
                })
            }
            None => bad("boot_from_media needs a parameter: the image URL".into()),
        },
        "eject_media" => no_parameter(OobAction::EjectMedia),
        other => bad(format!(
            "unknown action {}: expected one of {ACTIONS}",
            shown(other)
        )),
    }
}

/// Most characters of a rejected value repeated in an error.
const SHOWN_MAX: usize = 64;

/// A value from a request, quoted and cut for an error message.
pub fn shown(s: &str) -> String {
    let mut cut: String = s.chars().take(SHOWN_MAX).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// The queue service: per-server workers over the `requests` table.
pub struct Requests {
    fleet: Arc<Fleet>,
    /// Servers with a running worker, and whether it must look at the table again before
    /// it ends (a request was queued while it was deciding to stop).
    workers: Mutex<HashMap<String, bool>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests")
    }
}

impl Requests {
    /// Recovers what the previous run left open (see the module docs) and starts the
    /// workers of servers with pending requests. Workers stop at `shutdown`, leaving an
    /// interrupted request `active` for the next start to recover.
    pub async fn start(
        fleet: Arc<Fleet>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Requests>, StoreError> {
        let this = Arc::new(Requests {
            fleet,
            workers: Mutex::new(HashMap::new()),
            shutdown,
            tracker: TaskTracker::new(),
        });
        let open = this.fleet.store.open_requests().await?;
        let mut servers = Vec::new();
        let mut rechecks = Vec::new();
        for r in open {
            if r.state == RequestState::Active {
                match parse_action(&r.action, r.parameter.as_deref(), r.persistent, r.efi) {
                    Ok(OobAction::PowerStatus) => {
                        this.fleet
                            .store
                            .requeue_request(
                                r.id,
                                "run again: the controller restarted while it was active",
                            )
                            .await?;
                    }
                    Ok(OobAction::Power(change)) if expected_power(change).is_some() => {
                        rechecks.push(r);
                        continue;
                    }
                    _ => {
                        tracing::warn!(request = r.id, server = %r.server_id, action = %r.action, "{RESTARTED}");
                        this.fleet
                            .store
                            .finish_request(r.id, RequestState::Failed, RESTARTED)
                            .await?;
                    }
                }
            }
            if !servers.contains(&r.server_id) {
                servers.push(r.server_id);
            }
        }
        // A server with a re-check is kicked when it is done.
        servers.retain(|s| !rechecks.iter().any(|c| &c.server_id == s));
        for s in servers {
            this.kick(&s);
        }
        // A power change left active is checked against the power state before the
        // server's next request runs (its worker finds the request active until then).
        for r in rechecks {
            let this2 = this.clone();
            this.tracker.spawn(async move {
                tokio::select! {
                    _ = this2.recheck(&r) => this2.kick(&r.server_id),
                    // Left active: the next start checks again.
                    _ = this2.shutdown.cancelled() => {}
                }
            });
        }
        Ok(this)
    }

    /// Queues a request for an existing server and makes sure its worker runs.
    pub async fn submit(
        self: &Arc<Self>,
        server_id: &str,
        request: NewRequest,
    ) -> Result<RequestRecord, RequestError> {
        parse_action(
            &request.action,
            request.parameter.as_deref(),
            request.persistent,
            request.efi,
        )?;
        if self.fleet.store.get_server(server_id).await?.is_none() {
            return Err(RequestError::ServerNotFound(server_id.to_owned()));
        }
        let open = self.fleet.store.open_request_count(server_id).await?;
        if open >= OPEN_PER_SERVER_MAX {
            return Err(RequestError::QueueFull {
                server: server_id.to_owned(),
                open,
            });
        }
        let rec = self.fleet.store.add_request(server_id, request).await?;
        tracing::info!(request = rec.id, server = %server_id, action = %rec.action, parameter = ?rec.parameter, "request queued");
        self.kick(server_id);
        Ok(rec)
    }

    /// A power change that was active when the controller stopped: succeeded when the power
    /// state read now over the BMC is the one it asked for, else failed with
    /// [`RESTARTED`] and what was found.
    async fn recheck(&self, r: &RequestRecord) {
        let want = match parse_action(&r.action, r.parameter.as_deref(), r.persistent, r.efi) {
            Ok(OobAction::Power(change)) => expected_power(change),
            _ => None,
        };
        let Some(want) = want else {
            self.finish(r, RequestState::Failed, RESTARTED.into()).await;
            return;
        };
        let found = match self.fleet.store.bmc_target(&r.server_id).await {
            Err(e) => Err(format!("reading the BMC entry: {e}")),
            Ok(None) => Err("no BMC address is known to read the power state".into()),
            Ok(Some(target)) => {
                self.record_path(r.id, RequestPath::OutOfBand).await;
                match tokio::time::timeout(
                    RECHECK_TIMEOUT,
                    crate::oob::perform(&target, &OobAction::PowerStatus),
                )
                .await
                {
                    Ok(Ok(o)) => o.power_on.ok_or_else(|| "the BMC did not say".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the BMC did not answer in time".into()),
                }
            }
        };
        let word = |on: bool| if on { "on" } else { "off" };
        let (state, message) = match found {
            Ok(on) if on == want => (
                RequestState::Succeeded,
                format!(
                    "server power state set successful: {} (confirmed by a power state read \
                     after a controller restart)",
                    r.parameter.as_deref().unwrap_or(word(want))
                ),
            ),
            Ok(on) => (
                RequestState::Failed,
                format!(
                    "{RESTARTED}; the power is {} now, not {}",
                    word(on),
                    word(want)
                ),
            ),
            Err(why) => (
                RequestState::Failed,
                format!("{RESTARTED}; the power state could not be re-checked: {why}"),
            ),
        };
        tracing::info!(request = r.id, server = %r.server_id, "re-checked after a restart");
        self.finish(r, state, message).await;
    }

    /// Waits for the shutdown token, then for the workers to stop.
    pub async fn join(&self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Starts the server's worker, or tells the running one to look again.
    fn kick(self: &Arc<Self>, server_id: &str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(again) = workers.get_mut(server_id) {
            *again = true;
            return;
        }
        workers.insert(server_id.to_owned(), false);
        let this = self.clone();
        let id = server_id.to_owned();
        self.tracker.spawn(async move { this.work(id).await });
    }

    /// A server's worker: runs its pending requests in order until none is left.
    async fn work(self: Arc<Self>, server_id: String) {
        loop {
            self.set_again(&server_id, false);
            let next = tokio::select! {
                r = self.fleet.store.next_request(&server_id) => r,
                _ = self.shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(r)) => {
                    tokio::select! {
                        _ = self.run(&r) => {}
                        // Left active: the next start recovers it.
                        _ = self.shutdown.cancelled() => return,
                    }
                }
                Ok(None) => {
                    let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                    if workers.get(&server_id).copied().unwrap_or(false) {
                        continue;
                    }
                    workers.remove(&server_id);
                    return;
                }
                Err(e) => {
                    tracing::error!(server = %server_id, error = %e, "taking the next request");
                    let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                    workers.remove(&server_id);
                    return;
                }
            }
        }
    }

    fn set_again(&self, server_id: &str, again: bool) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = workers.get_mut(server_id) {
            *a = again;
        }
    }

    /// Runs one active request to its end and stores the outcome.
    async fn run(&self, r: &RequestRecord) {
        let (state, message) = match self.execute(r).await {
            Ok(msg) => (RequestState::Succeeded, msg),
            // The controller stopping closed the agent's connection under the call: its
            // outcome is unknown, so it stays active for the next start to recover (as a
            // request interrupted any other way), not failed by the shutdown itself.
            Err(msg) if self.shutdown.is_cancelled() => {
                tracing::info!(request = r.id, server = %r.server_id, error = %msg, "left active: the controller is stopping");
                return;
            }
            Err(msg) => (RequestState::Failed, msg),
        };
        self.finish(r, state, message).await;
    }

    /// Stores a request's outcome.
    async fn finish(&self, r: &RequestRecord, state: RequestState, message: String) {
        tracing::info!(request = r.id, server = %r.server_id, state = state.as_str(), message = %message, "request finished");
        if let Err(e) = self.fleet.store.finish_request(r.id, state, &message).await {
            tracing::error!(request = r.id, error = %e, "storing a request's outcome");
        }
    }

    /// The request's message on success, or why it failed.
    async fn execute(&self, r: &RequestRecord) -> Result<String, String> {
        let action = parse_action(&r.action, r.parameter.as_deref(), r.persistent, r.efi)
            .map_err(|e| format!("stored request is not valid: {e}"))?;
        let server = &r.server_id;
        let connected = self.fleet.is_connected(server);
        let in_band_able = !matches!(
            action,
            OobAction::Identify { .. } | OobAction::BootFromMedia { .. } | OobAction::EjectMedia
        );
        // Power goes to the BMC whenever one is known: it owns the power, its answer is the
        // truth also while the machine is off, and a change made in-band takes away the
        // agent that would have answered. The rest prefers the agent while it is there.
        let prefer_oob = matches!(action, OobAction::Power(_) | OobAction::PowerStatus);
        let target = self
            .fleet
            .store
            .bmc_target(server)
            .await
            .map_err(|e| format!("reading the BMC entry: {e}"))?;
        let try_in_band = connected && in_band_able && !(prefer_oob && target.is_some());
        let mut in_band_failure = None;
        if try_in_band {
            self.record_path(r.id, RequestPath::InBand).await;
            match self.in_band(server, &action).await {
                Ok(msg) => return Ok(msg),
                // The agent could not act (gone, no local BMC device, refusing): the BMC
                // may still be reached over the network. Any other failure may have acted
                // and is not repeated another way.
                Err(e) if target.is_some() && did_not_act(&e) => {
                    in_band_failure = Some(e.to_body().msg);
                }
                Err(e) => return Err(format!("in-band: {}", e.to_body().msg)),
            }
        }
        let Some(target) = target else {
            let why = match (connected, in_band_able) {
                (false, _) => "no agent is connected and no BMC address is known",
                (true, false) => "the agent cannot do this and no BMC address is known",
                (true, true) => "the agent connection closed and no BMC address is known",
            };
            return Err(format!("no path to server {server}: {why}"));
        };
        self.record_path(r.id, RequestPath::OutOfBand).await;
        let first = in_band_failure
            .map(|m| format!(" (in-band first: {m})"))
            .unwrap_or_default();
        let outcome = crate::oob::perform(&target, &action)
            .await
            .map_err(|e| format!("out-of-band: {e}{first}"))?;
        if let OobAction::Power(change) = action {
            // The server's next boot is one the controller asked for: its new agent may
            // take the place of the old session (as after an in-band power action).
            let why =
                format!("after an out-of-band power {change:?} the admin asked for").to_lowercase();
            if let Err(e) = self
                .fleet
                .expect_ramdisk(server, crate::fleet::REBOOT_EXPECTATION, &why)
                .await
            {
                tracing::error!(server = %server, error = %e, "recording the expected boot");
            }
        }
        Ok(outcome.message)
    }

    async fn record_path(&self, id: i64, path: RequestPath) {
        if let Err(e) = self.fleet.store.set_request_path(id, path).await {
            tracing::error!(request = id, error = %e, "recording a request's path");
        }
    }

    /// The action through the server's agent, as seed 000's messages say it.
    async fn in_band(&self, server: &str, action: &OobAction) -> Result<String, FleetError> {
        let f = &self.fleet;
        match action {
            OobAction::PowerStatus => {
                let p = ChassisPowerParams {
                    action: PowerAction::Status,
                };
                let r = f
                    .call_method::<ChassisPower>(server, &p, IN_BAND_TIMEOUT)
                    .await?;
                Ok(format!(
                    "server power state: {}",
                    if r.status.power_on { "on" } else { "off" }
                ))
            }
            OobAction::Power(change) => {
                let (action, word) = match change {
                    PowerChange::On => (PowerAction::On, "on"),
                    PowerChange::Off => (PowerAction::Off, "off"),
                    PowerChange::Soft => (PowerAction::Soft, "soft"),
                    PowerChange::Cycle => (PowerAction::Cycle, "cycle"),
                    PowerChange::Reset => (PowerAction::Reset, "reset"),
                };
                f.call_method::<ChassisPower>(
                    server,
                    &ChassisPowerParams { action },
                    IN_BAND_TIMEOUT,
                )
                .await?;
                Ok(format!("server power state set successful: {word}"))
            }
            OobAction::BootDevice {
                device,
                persistent,
                efi,
            } => {
                let device = match device {
                    BootTarget::None => BootDevice::None,
                    BootTarget::Pxe => BootDevice::Pxe,
                    BootTarget::Disk => BootDevice::Disk,
                    BootTarget::Bios => BootDevice::Bios,
                    BootTarget::Cdrom => BootDevice::Cdrom,
                };
                let p = BootDeviceParams {
                    device,
                    persistent: *persistent,
                    efi: *efi,
                };
                let r = f
                    .call_method::<ChassisBootDevice>(server, &p, IN_BAND_TIMEOUT)
                    .await?;
                Ok(boot_message(&r))
            }
            OobAction::BmcReset => {
                let p = BmcResetParams {
                    kind: ResetKind::Cold,
                };
                f.call_method::<BmcReset>(server, &p, IN_BAND_TIMEOUT)
                    .await?;
                Ok("bmc reset successful: cold".into())
            }
            OobAction::Identify { .. } => Err(FleetError::InvalidParams(
                "identify is done out-of-band only: the agent has no such method".into(),
            )),
            OobAction::BootFromMedia { .. } | OobAction::EjectMedia => {
                Err(FleetError::InvalidParams(
                    "virtual media is done out-of-band (Redfish) only".into(),
                ))
            }
        }
    }
}

/// Whether an in-band failure says the agent did not act: its connection was gone, it has
/// no local BMC device, or it refused or could not take the method.
fn did_not_act(e: &FleetError) -> bool {
    use molar_protocol::codes;
    if matches!(e, FleetError::NotConnected(_)) {
        return true;
    }
    let code = e.to_body().code;
    code == codes::NOT_CONNECTED
        || code == codes::REFUSED
        || code == codes::UNKNOWN_METHOD
        || code == codes::NOT_READY
        || code == codes::HARDWARE_NOT_READY
        || code == IPMI_NO_DEVICE
}

/// The agent's error code for a machine without a local IPMI device.
const IPMI_NO_DEVICE: &str = "ipmi_no_device";

/// "server next boot device set successful: pxe (persistent, efi)", from what the BMC read
/// back.
fn boot_message(r: &molar_protocol::bmc::BootDeviceResult) -> String {
    let device = serde_json::to_value(r.device)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut flags = Vec::new();
    if r.persistent {
        flags.push("persistent");
    }
    if r.efi {
        flags.push("efi");
    }
    if flags.is_empty() {
        format!("server next boot device set successful: {device}")
    } else {
        format!(
            "server next boot device set successful: {device} ({})",
            flags.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_parameters_are_checked_strictly() {
        let ok =
            |a: &str, p: Option<&str>, pe: bool, efi: bool| parse_action(a, p, pe, efi).unwrap();
        assert_eq!(
            ok("set_power_state", Some("status"), false, false),
            OobAction::PowerStatus
        );
        assert_eq!(
            ok("set_power_state", Some("soft"), false, false),
            OobAction::Power(PowerChange::Soft)
        );
        assert_eq!(
            ok("power_cycle", None, false, false),
            OobAction::Power(PowerChange::Cycle)
        );
        assert_eq!(
            ok("set_next_boot_device", Some("pxe"), true, true),
            OobAction::BootDevice {
                device: BootTarget::Pxe,
                persistent: true,
                efi: true
            }
        );
        assert_eq!(ok("bmc_reset", None, false, false), OobAction::BmcReset);
        assert_eq!(
            ok("identify", Some("off"), false, false),
            OobAction::Identify { seconds: Some(0) }
        );
        assert_eq!(
            ok("identify", Some("15"), false, false),
            OobAction::Identify { seconds: Some(15) }
        );
        for (a, p, pe) in [
            ("set_power_state", Some("ON"), false),
            ("set_power_state", None, false),
            ("set_power_state", Some("on"), true),
            ("power_cycle", Some("now"), false),
            ("set_next_boot_device", Some("floppy"), false),
            ("set_next_boot_device", None, false),
            ("bmc_reset", Some("warm"), false),
            ("identify", Some("256"), false),
            ("identify", Some("+5"), false),
            ("format_disks", None, false),
            ("", None, false),
        ] {
            let e = parse_action(a, p, pe, false).unwrap_err().to_string();
            assert!(!e.is_empty());
        }
        let e = parse_action(&"x\u{1b}".repeat(1000), None, false, false)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400 && !e.contains('\u{1b}'), "{e}");
    }
}
