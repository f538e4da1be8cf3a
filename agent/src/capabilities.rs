//! The protocol methods the agent offers beyond the built-ins, and the glue from each to the
//! module that does the work: BMC and chassis over in-band IPMI, hardware inventory, disk
//! erase. Hardware calls block, so they run on tokio's blocking pool; one lock serialises
//! everything that talks to the BMC so a credential change never interleaves with a read.

use crate::bmc;
use crate::erase::{self, EraseEnv, EraseRequest};
use crate::hw::ipmi::IpmiDevice;
use crate::ramdisk::sys::System;
use crate::safety::Authority;
use crate::session::Methods;
use crate::tasks::{Task, TaskContext, TaskFailure};
use molar_protocol::bmc::{
    BmcResetParams, BootDeviceParams, ChassisPowerParams, ChassisPowerResult, PowerAction,
    SetCredentialsParams,
};
use molar_protocol::erase::{DiskEraseParams, DiskEraseResult};
use molar_protocol::methods::{Empty, parse_params};
use molar_protocol::{ErrorBody, codes};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Resolves once the machine's drivers are loaded (the ramdisk's coldplug), so hardware
/// methods never look at a half-probed machine. Always ready outside the ramdisk.
#[derive(Debug, Clone, Default)]
pub struct HardwareReady(Option<tokio::sync::watch::Receiver<bool>>);

/// Longest a hardware method waits for drivers: a machine whose coldplug hangs is still
/// inventoried rather than never.
const READY_WAIT: Duration = Duration::from_secs(120);

impl HardwareReady {
    pub fn new(rx: tokio::sync::watch::Receiver<bool>) -> Self {
        HardwareReady(Some(rx))
    }

    pub async fn wait(&self) {
        if let Some(rx) = &self.0 {
            let mut rx = rx.clone();
            let _ = tokio::time::timeout(READY_WAIT, rx.wait_for(|ready| *ready)).await;
        }
    }
}

/// What the capabilities need to know about the machine they run on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Root under which /sys, /proc and /dev are read.
    pub root: PathBuf,
    /// Who may be erased: every local disk in the ramdisk, only named devices on a host.
    pub authority: Authority,
    /// Whether `chassis.power` (other than `status`) and `bmc.reset` may act: in the ramdisk,
    /// or on a host when its operator said so.
    pub power_allowed: bool,
    pub ready: HardwareReady,
}

impl Machine {
    /// The ramdisk, as its `/init` runs it: every local disk may be erased (subject to the
    /// other safety rules) and the BMC may power-cycle the machine.
    pub fn ramdisk(root: PathBuf) -> Machine {
        Machine {
            root,
            authority: Authority::Ramdisk,
            power_allowed: true,
            ready: HardwareReady::default(),
        }
    }

    /// Some host (`molar-agent run`): only the `allow_host` devices may be erased and power
    /// actions are refused. Whether the process is PID 1 does not matter (containers).
    pub fn host(root: PathBuf, allow_host: &[String]) -> Machine {
        Machine {
            root,
            authority: Authority::Host {
                allowed: allow_host.to_vec(),
            },
            power_allowed: false,
            ready: HardwareReady::default(),
        }
    }
}

/// `decom.disk_erase`: the erase engine as a task.
pub struct DiskErase {
    pub env: EraseEnv,
    pub ready: HardwareReady,
}

/// Turns an erase report into the task's outcome: complete only when every attempted device
/// was erased (and verified); otherwise an error that still carries the whole report.
pub fn erase_outcome(report: &DiskEraseResult) -> Result<Value, TaskFailure> {
    let value = serde_json::to_value(report).map_err(|e| {
        TaskFailure::new(codes::INTERNAL, format!("encoding the erase report: {e}"))
    })?;
    if report.devices.is_empty() {
        let why: Vec<String> = report
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.device, s.reason))
            .collect();
        let msg = if why.is_empty() {
            "no device to erase".to_owned()
        } else {
            format!("no device was erased: {}", why.join("; "))
        };
        return Err(TaskFailure::new(codes::REFUSED, msg).with_details(value));
    }
    match erase::failure_message(report) {
        None => Ok(value),
        Some(msg) if report.cancelled => {
            Err(TaskFailure::new(codes::CANCELLED, msg).with_details(value))
        }
        Some(msg) => Err(TaskFailure::new("erase_failed", msg).with_details(value)),
    }
}

impl Task for DiskErase {
    type Params = DiskEraseParams;

    async fn run(&self, params: DiskEraseParams, ctx: TaskContext) -> Result<Value, TaskFailure> {
        // Every disk's driver must be loaded before "every disk" means anything.
        self.ready.wait().await;
        let env = self.env.clone();
        let req = EraseRequest::from_params(&params);
        let cancel = ctx.cancel_token().clone();
        let progress_ctx = ctx.clone();
        let report = tokio::task::spawn_blocking(move || {
            erase::run(
                &req,
                &env,
                &|p| {
                    progress_ctx.set_progress(p.percent(), p.eta().map(|d| d.as_secs()));
                    progress_ctx.set_message(p.message());
                },
                &cancel,
            )
        })
        .await
        .map_err(|e| TaskFailure::new(codes::INTERNAL, format!("erase thread: {e}")))?
        .map_err(|e| TaskFailure::new(e.code(), e.to_string()))?;
        erase_outcome(&report)
    }
}

/// Runs blocking hardware work off the async runtime and turns its outcome into a reply.
async fn blocking<T, E, F>(f: F) -> Result<Value, ErrorBody>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Into<ErrorBody> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => serde_json::to_value(v)
            .map_err(|e| ErrorBody::new(codes::INTERNAL, format!("encoding result: {e}"))),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ErrorBody::new(
            codes::INTERNAL,
            format!("hardware call failed: {e}"),
        )),
    }
}

impl From<bmc::BmcError> for ErrorBody {
    fn from(e: bmc::BmcError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

impl From<crate::hw::ipmi::IpmiError> for ErrorBody {
    fn from(e: crate::hw::ipmi::IpmiError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

/// The BMC, opened per operation under one process-wide lock.
#[derive(Clone)]
struct Bmc {
    root: PathBuf,
    lock: Arc<Mutex<()>>,
    ready: HardwareReady,
    power_allowed: bool,
}

impl Bmc {
    /// Refuses an action that can take the machine (or its BMC) away, outside the ramdisk.
    fn may_act(&self, what: &str) -> Result<(), ErrorBody> {
        if self.power_allowed {
            return Ok(());
        }
        Err(ErrorBody::new(
            codes::REFUSED,
            format!(
                "{what} refused: not running as the ramdisk's init (on a host, start the agent \
                 with --allow-host-power)"
            ),
        ))
    }
}

impl Bmc {
    fn run<T, F>(&self, f: F) -> Result<T, ErrorBody>
    where
        F: FnOnce(&mut IpmiDevice) -> Result<T, bmc::BmcError>,
    {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut dev = IpmiDevice::open(&self.root)?;
        Ok(f(&mut dev)?)
    }
}

fn bmc_at(machine: &Machine) -> Bmc {
    Bmc {
        root: machine.root.clone(),
        lock: Arc::new(Mutex::new(())),
        ready: machine.ready.clone(),
        power_allowed: machine.power_allowed,
    }
}

/// Registers the BMC and chassis methods.
fn register_bmc(m: &mut Methods, dev: Bmc) {
    let d = dev.clone();
    m.call("bmc.info", move |params| {
        let d = d.clone();
        async move {
            parse_params::<Empty>("bmc.info", params)?;
            d.ready.wait().await;
            blocking(move || d.run(bmc::info)).await
        }
    });

    let d = dev.clone();
    m.call("bmc.set_credentials", move |params| {
        let d = d.clone();
        async move {
            let p: SetCredentialsParams = parse_params("bmc.set_credentials", params)?;
            d.ready.wait().await;
            // The result carries the password to the controller; it is never logged.
            let r = blocking(move || d.run(|t| bmc::set_credentials(t, &p))).await;
            match &r {
                Ok(v) => tracing::info!(user_id = %v["user_id"], username = %v["username"], "BMC credentials set"),
                Err(e) => tracing::warn!(error = %e, "setting BMC credentials failed"),
            }
            r
        }
    });

    let d = dev.clone();
    m.call("bmc.reset", move |params| {
        let d = d.clone();
        async move {
            let p: BmcResetParams = parse_params("bmc.reset", params)?;
            d.may_act("bmc.reset")?;
            d.ready.wait().await;
            blocking(move || d.run(|t| bmc::reset(t, p.kind))).await
        }
    });

    let d = dev.clone();
    m.call("chassis.boot_device", move |params| {
        let d = d.clone();
        async move {
            let p: BootDeviceParams = parse_params("chassis.boot_device", params)?;
            d.ready.wait().await;
            blocking(move || d.run(|t| bmc::boot_device(t, &p))).await
        }
    });

    m.call("chassis.power", move |params| {
        let d = dev.clone();
        async move {
            let p: ChassisPowerParams = parse_params("chassis.power", params)?;
            if p.action != PowerAction::Status {
                d.may_act(&format!("chassis.power {:?}", p.action).to_lowercase())?;
            }
            d.ready.wait().await;
            let action = p.action;
            // Reading the status first proves the BMC answers before we promise anything.
            let status = {
                let d = d.clone();
                blocking(move || d.run(bmc::chassis_status)).await?
            };
            let status = serde_json::from_value(status)
                .map_err(|e| ErrorBody::new(codes::INTERNAL, format!("chassis status: {e}")))?;
            if action != PowerAction::Status {
                // Answer first, then act: after a power action there may be nobody left to
                // send the answer.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tracing::warn!(?action, "chassis power action");
                    let r =
                        tokio::task::spawn_blocking(move || d.run(|t| bmc::power(t, action))).await;
                    if let Ok(Err(e)) = r {
                        tracing::error!(error = %e, "chassis power action failed");
                    }
                });
            }
            serde_json::to_value(ChassisPowerResult { action, status })
                .map_err(|e| ErrorBody::new(codes::INTERNAL, format!("encoding result: {e}")))
        }
    });
}

/// The whole hardware inventory, with the BMC section when a BMC answers.
pub fn inventory(root: &Path, bmc_lock: &Arc<Mutex<()>>) -> molar_protocol::inventory::Inventory {
    let mut inv = crate::inventory::collect(root, &crate::inventory::CollectOptions::default());
    let dev = Bmc {
        root: root.to_owned(),
        lock: bmc_lock.clone(),
        ready: HardwareReady::default(),
        power_allowed: false,
    };
    match dev.run(bmc::info) {
        Ok(info) => inv.bmc = Some(info),
        Err(e) if e.code == "ipmi_no_device" => {}
        Err(e) => inv.notes.push(molar_protocol::inventory::Note {
            path: "/dev/ipmi0".into(),
            reason: format!("BMC not inventoried: {}", e.msg),
        }),
    }
    inv
}

/// Registers `inventory`.
fn register_inventory(m: &mut Methods, machine: &Machine, bmc_lock: Arc<Mutex<()>>) {
    let root = machine.root.clone();
    let ready = machine.ready.clone();
    m.call("inventory", move |params| {
        let root = root.clone();
        let lock = bmc_lock.clone();
        let ready = ready.clone();
        async move {
            parse_params::<Empty>("inventory", params)?;
            ready.wait().await;
            blocking(move || Ok::<_, ErrorBody>(inventory(&root, &lock))).await
        }
    });
}

/// `reboot` and `poweroff`: sync, then reboot(2), only as PID 1 of the ramdisk. The refusal
/// is checked before answering; the action itself happens after the answer went out.
fn register_power(m: &mut Methods, sys: Arc<dyn System>) {
    for method in ["reboot", "poweroff"] {
        let sys = sys.clone();
        m.call(method, move |params| {
            let sys = sys.clone();
            async move {
                parse_params::<Empty>(method, params)?;
                let pid = sys.pid();
                if pid != 1 {
                    let refused = crate::ramdisk::RamdiskError::NotInit {
                        action: method,
                        pid,
                    };
                    return Err(ErrorBody::new(codes::REFUSED, refused.to_string()));
                }
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let r = tokio::task::spawn_blocking(move || match method {
                        "reboot" => crate::ramdisk::reboot(sys.as_ref()),
                        _ => crate::ramdisk::poweroff(sys.as_ref()),
                    })
                    .await;
                    if let Ok(Err(e)) = r {
                        tracing::error!(error = %e, "{method} failed");
                    }
                });
                Ok(serde_json::json!({ "action": method }))
            }
        });
    }
}

/// Every capability method, for an agent running on `machine`.
pub fn methods(machine: &Machine) -> Methods {
    methods_with_system(machine, Arc::new(crate::ramdisk::sys::LinuxSystem))
}

/// [`methods`] with the side effects of `reboot`/`poweroff` going through `sys`.
pub fn methods_with_system(machine: &Machine, sys: Arc<dyn System>) -> Methods {
    let mut m = Methods::new();
    let dev = bmc_at(machine);
    let lock = dev.lock.clone();
    register_bmc(&mut m, dev);
    register_inventory(&mut m, machine, lock);
    register_power(&mut m, sys);
    m.task(
        "decom.disk_erase",
        DiskErase {
            env: EraseEnv::new(machine.root.clone(), machine.authority.clone()),
            ready: machine.ready.clone(),
        },
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use serde_json::json;

    /// Without /dev/ipmi0 every BMC method answers with the device error, naming the fix.
    #[tokio::test]
    async fn bmc_methods_without_a_device_say_which_modules_to_load() {
        let root = tempfile::tempdir().unwrap();
        let m = methods(&Machine {
            root: root.path().to_owned(),
            authority: Authority::Host { allowed: vec![] },
            power_allowed: true,
            ready: HardwareReady::default(),
        });
        let mut cfg = AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default());
        cfg.root = root.path().to_owned();
        let agent = Agent::new(cfg, m, crate::logfwd::LogBuffer::new(1));
        for (method, params) in [
            ("bmc.info", json!({})),
            (
                "bmc.set_credentials",
                json!({"username": "molar", "privilege": "administrator"}),
            ),
            ("bmc.reset", json!({"kind": "cold"})),
            (
                "chassis.boot_device",
                json!({"device": "pxe", "persistent": false, "efi": false}),
            ),
            ("chassis.power", json!({"action": "status"})),
        ] {
            let err = agent
                .clone()
                .dispatch(method.to_owned(), params)
                .await
                .unwrap_err();
            assert_eq!(err.code, "ipmi_no_device", "{method}: {err}");
            assert!(
                err.msg
                    .contains("load the kernel modules ipmi_msghandler, ipmi_si and ipmi_devintf"),
                "{method}: {err}"
            );
        }
    }

    /// On a host (no --allow-host-power), power and BMC resets are refused before the BMC is
    /// touched; reading the power state is not.
    #[tokio::test]
    async fn power_actions_are_refused_on_a_host() {
        let root = tempfile::tempdir().unwrap();
        let m = methods(&Machine::host(root.path().to_owned(), &[]));
        let mut cfg = AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default());
        cfg.root = root.path().to_owned();
        let agent = Agent::new(cfg, m, crate::logfwd::LogBuffer::new(1));
        for (method, params, what) in [
            (
                "chassis.power",
                json!({"action": "off"}),
                "chassis.power off",
            ),
            (
                "chassis.power",
                json!({"action": "cycle"}),
                "chassis.power cycle",
            ),
            ("bmc.reset", json!({"kind": "cold"}), "bmc.reset"),
        ] {
            let err = agent
                .clone()
                .dispatch(method.into(), params)
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::REFUSED, "{method}: {err}");
            assert!(
                err.msg.starts_with(&format!(
                    "{what} refused: not running as the ramdisk's init"
                )),
                "{err}"
            );
        }
        let err = agent
            .dispatch("chassis.power".into(), json!({"action": "status"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "ipmi_no_device", "status is only a read: {err}");
    }

    #[tokio::test]
    async fn inventory_of_a_fixture_tree_and_its_bad_params() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        let m = methods(&Machine {
            root: fixture.clone(),
            authority: Authority::Host { allowed: vec![] },
            power_allowed: false,
            ready: HardwareReady::default(),
        });
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            m,
            crate::logfwd::LogBuffer::new(1),
        );
        let inv = agent
            .clone()
            .dispatch("inventory".into(), json!({}))
            .await
            .unwrap();
        assert_eq!(inv["system"]["serial"], "S123");
        assert!(inv["block_devices"].as_array().unwrap().len() >= 2);
        assert!(
            inv.get("bmc").is_none_or(|b| b.is_null()),
            "no /dev/ipmi0 in the fixture"
        );
        let err = agent
            .dispatch("inventory".into(), json!({"all": true}))
            .await
            .unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);
    }

    #[tokio::test]
    async fn reboot_and_poweroff_are_refused_outside_the_ramdisk_and_act_inside() {
        use crate::ramdisk::sys::{Call, RecordingSystem};
        let host = Arc::new(RecordingSystem {
            pid: 4242,
            ..RecordingSystem::default()
        });
        let machine = Machine {
            root: "/nonexistent".into(),
            authority: Authority::Host { allowed: vec![] },
            power_allowed: false,
            ready: HardwareReady::default(),
        };
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            methods_with_system(&machine, host.clone()),
            crate::logfwd::LogBuffer::new(1),
        );
        for method in ["reboot", "poweroff"] {
            let err = agent
                .clone()
                .dispatch(method.into(), json!({}))
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::REFUSED);
            assert!(
                err.msg
                    .contains(&format!("{method} refused: the agent is not pid 1")),
                "{err}"
            );
            let err = agent
                .clone()
                .dispatch(method.into(), json!({"now": 1}))
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::INVALID_PARAMS);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !host.calls().iter().any(|c| matches!(c, Call::Reboot(_))),
            "nothing happened on the host"
        );

        let pid1 = Arc::new(RecordingSystem::default());
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            methods_with_system(&machine, pid1.clone()),
            crate::logfwd::LogBuffer::new(1),
        );
        let answer = agent
            .clone()
            .dispatch("reboot".into(), json!({}))
            .await
            .unwrap();
        assert_eq!(answer, json!({"action": "reboot"}));
        assert!(pid1.calls().is_empty(), "answered before acting");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let calls = pid1.calls();
        let sync = calls
            .iter()
            .position(|c| matches!(c, Call::Sync))
            .expect("synced");
        let reboot = calls
            .iter()
            .position(|c| matches!(c, Call::Reboot(_)))
            .expect("rebooted");
        assert!(sync < reboot);
    }

    #[tokio::test]
    async fn bmc_methods_reject_hostile_params_before_touching_the_bmc() {
        let root = tempfile::tempdir().unwrap();
        let m = methods(&Machine {
            root: root.path().to_owned(),
            authority: Authority::Host { allowed: vec![] },
            power_allowed: false,
            ready: HardwareReady::default(),
        });
        let agent = Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            m,
            crate::logfwd::LogBuffer::new(1),
        );
        let cases = [
            ("bmc.info", json!({"x": 1}), "unknown field `x`"),
            (
                "bmc.set_credentials",
                json!({"username": 7}),
                "invalid type: integer `7`",
            ),
            (
                "bmc.set_credentials",
                json!({"username": "a", "privilege": "root"}),
                "unknown variant `root`",
            ),
            (
                "bmc.reset",
                json!({"kind": "hard"}),
                "unknown variant `hard`",
            ),
            (
                "chassis.power",
                json!({"action": "explode"}),
                "unknown variant `explode`",
            ),
            ("chassis.power", json!({}), "missing field `action`"),
            (
                "chassis.boot_device",
                json!({"device": "floppy"}),
                "unknown variant `floppy`",
            ),
        ];
        for (method, params, want) in cases {
            let err = agent
                .clone()
                .dispatch(method.to_owned(), params)
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::INVALID_PARAMS, "{method}: {err}");
            assert!(err.msg.contains(want), "{method}: {} lacks {want}", err.msg);
        }
    }
}
