//! The protocol methods the agent offers beyond the built-ins, one file per capability, and
//! the glue from each to the module that does the work: [`bmc`] (BMC and chassis over
//! in-band IPMI), [`inventory`], [`power`] (reboot, poweroff), [`erase`] (disk erase). Hardware
//! calls block, so they run on tokio's blocking pool.

mod bmc;
mod erase;
mod inventory;
mod power;

pub use erase::{DiskErase, erase_outcome};
pub use inventory::inventory;

use crate::erase::EraseEnv;
use crate::ramdisk::sys::System;
use crate::safety::Authority;
use crate::session::Methods;
use molar_protocol::{ErrorBody, codes};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
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

/// Runs blocking hardware work off the async runtime and turns its outcome into a reply.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<Value, ErrorBody>
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

/// Every capability method, for an agent running on `machine`.
pub fn methods(machine: &Machine) -> Methods {
    methods_with_system(machine, Arc::new(crate::ramdisk::sys::LinuxSystem))
}

/// [`methods`] with the side effects of `reboot`/`poweroff` going through `sys`.
pub fn methods_with_system(machine: &Machine, sys: Arc<dyn System>) -> Methods {
    let mut m = Methods::new();
    let dev = bmc::bmc_at(machine);
    let lock = dev.lock.clone();
    bmc::register(&mut m, dev);
    inventory::register(&mut m, machine, lock);
    power::register(&mut m, sys);
    m.task(
        "decom.disk_erase",
        DiskErase {
            env: EraseEnv::new(machine.root.clone(), machine.authority.clone()),
            ready: machine.ready.clone(),
        },
    );
    m
}
