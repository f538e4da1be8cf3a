//! The protocol methods the agent offers beyond the built-ins, one file per capability, and
//! the glue from each to the module that does the work: [`bmc`] (BMC and chassis over
//! in-band IPMI), [`inventory`], [`power`] (reboot, poweroff), [`erase`] (disk erase),
//! [`image`] (image cache and writes), [`run_image`] (config drive, boot setup, kexec or
//! reboot into the written image).
//!
//! Two helpers carry what every capability would otherwise repeat: [`Methods::hardware`]
//! (decode the params, wait for the drivers, run the blocking hardware call on the blocking
//! pool, encode the typed result) and [`answer_then_act`] (for actions after which nobody may
//! be left to answer: ask the [`Authority`], answer, then act).

mod bmc;
mod erase;
pub mod firmware;
pub mod image;
mod inventory;
mod power;
pub mod qc;
pub mod run_image;

pub use erase::{DiskErase, erase_outcome};

use crate::authority::{Action, Authority};
use crate::erase::EraseEnv;
use crate::ramdisk::sys::System;
use crate::session::Methods;
use molar_protocol::catalogue::{self, Method};
use molar_protocol::{ErrorBody, codes};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Resolves once the machine's drivers are loaded (the ramdisk's coldplug), so hardware
/// methods never look at a half-probed machine. Always ready outside the ramdisk.
#[derive(Debug, Clone, Default)]
pub struct HardwareReady(Option<tokio::sync::watch::Receiver<bool>>);

/// Longest a hardware method waits for drivers. After it the method fails with
/// `hardware_not_ready` rather than look at a machine whose coldplug hangs: the controller
/// sees why, and asks again later.
const READY_WAIT: Duration = Duration::from_secs(120);

impl HardwareReady {
    pub fn new(rx: tokio::sync::watch::Receiver<bool>) -> Self {
        HardwareReady(Some(rx))
    }

    /// Waits until the drivers are loaded, at most [`READY_WAIT`].
    pub async fn wait(&self) -> Result<(), ErrorBody> {
        let Some(rx) = &self.0 else {
            return Ok(());
        };
        let mut rx = rx.clone();
        match tokio::time::timeout(READY_WAIT, rx.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ErrorBody::new(
                codes::HARDWARE_NOT_READY,
                "kernel module loading ended without reporting",
            )),
            Err(_) => Err(ErrorBody::new(
                codes::HARDWARE_NOT_READY,
                format!(
                    "kernel modules still loading after {} s",
                    READY_WAIT.as_secs()
                ),
            )),
        }
    }
}

/// What the capabilities need to know about the machine they run on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Root under which /sys, /proc and /dev are read.
    pub root: PathBuf,
    /// What may be changed here: decided from how the agent was started.
    pub authority: Authority,
    pub ready: HardwareReady,
}

impl Machine {
    pub fn new(root: PathBuf, authority: Authority) -> Machine {
        Machine {
            root,
            authority,
            ready: HardwareReady::default(),
        }
    }

    /// The ramdisk, as its `/init` runs it: every local disk may be erased (subject to the
    /// other safety rules) and the machine may be rebooted and power-cycled.
    pub fn ramdisk(root: PathBuf) -> Machine {
        Machine::new(root, Authority::Ramdisk)
    }

    /// Some host (`molar-agent run` without `--allow-host-power`): only the `allow_host`
    /// devices may be erased and power actions are refused. Whether the process is PID 1
    /// does not matter (containers).
    pub fn host(root: PathBuf, allow_host: &[String]) -> Machine {
        Machine::new(root, Authority::host(allow_host, false))
    }
}

/// Runs blocking hardware work off the async runtime.
async fn blocking<T, E, F>(f: F) -> Result<T, ErrorBody>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ErrorBody> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(ErrorBody::new(
            codes::INTERNAL,
            format!("hardware call failed: {e}"),
        )),
    }
}

impl Methods {
    /// Registers catalogue method `M` as a blocking hardware call: params decoded as
    /// `M::Params` (`invalid_params` before anything else), then a wait for the drivers
    /// (`hardware_not_ready` after [`READY_WAIT`]), then `f` on the blocking pool.
    pub fn hardware<M, F, E>(&mut self, ready: &HardwareReady, f: F) -> &mut Self
    where
        M: Method,
        F: Fn(M::Params) -> Result<M::Result, E> + Send + Sync + 'static,
        E: Into<ErrorBody> + Send + 'static,
    {
        let f = Arc::new(f);
        let ready = ready.clone();
        self.handle::<M, _, _>(move |params| {
            let (f, ready) = (f.clone(), ready.clone());
            async move {
                ready.wait().await?;
                blocking(move || f(params)).await
            }
        })
    }
}

/// How long an action waits after its answer was handed to the connection. The peer writes
/// responses in order on its own task; this is ample for the line to leave, and short enough
/// that the controller sees the machine go soon after it heard it would.
pub const ACT_AFTER: Duration = Duration::from_millis(300);

/// For a method whose action may leave nobody to answer (reboot, poweroff, chassis power, a
/// BMC reset, kexec): asks `authority` about `action` first, then computes `answer` (which
/// may still fail, e.g. when the BMC does not respond), and only once the answer is out
/// runs `act` on the blocking pool. What `act` returns is logged; the controller learns the
/// outcome from what the machine does next.
pub async fn answer_then_act<T, Fut, A, E>(
    authority: &Authority,
    action: Action<'_>,
    answer: Fut,
    act: A,
) -> Result<T, ErrorBody>
where
    Fut: Future<Output = Result<T, ErrorBody>>,
    A: FnOnce() -> Result<(), E> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    authority.decide(&action)?;
    let answer = answer.await?;
    let what = action.to_string();
    let at = tokio::time::Instant::now() + ACT_AFTER;
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        tracing::warn!(action = %what, "acting after the answer");
        match tokio::task::spawn_blocking(act).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(action = %what, error = %e, "action failed"),
            Err(e) => tracing::error!(action = %what, error = %e, "action panicked"),
        }
    });
    Ok(answer)
}

/// Every capability method, for an agent running on `machine`.
pub fn methods(machine: &Machine) -> Methods {
    methods_with_system(machine, Arc::new(crate::ramdisk::sys::LinuxSystem))
}

/// [`methods`] with the side effects of `reboot`/`poweroff` going through `sys`.
pub fn methods_with_system(machine: &Machine, sys: Arc<dyn System>) -> Methods {
    let mut m = Methods::new();
    let dev = bmc::Bmc::new(machine.root.clone());
    let bmc_dev = dev.clone();
    bmc::register(&mut m, machine, dev.clone());
    inventory::register(&mut m, machine, dev);
    power::register(&mut m, &machine.authority, sys);
    m.task_method::<catalogue::Qc, _>(qc::Qc {
        root: machine.root.clone(),
        dev: bmc_dev.clone(),
        ready: machine.ready.clone(),
        authority: machine.authority.clone(),
    });
    m.task_method::<catalogue::DiskErase, _>(DiskErase {
        env: EraseEnv::new(machine.root.clone(), machine.authority.clone()),
        ready: machine.ready.clone(),
    });
    let images = image::ImageEnv::new(
        machine.root.clone(),
        machine.authority.clone(),
        machine.ready.clone(),
    );
    m.task_method::<catalogue::PrepareImage, _>(image::PrepareImage(images.clone()));
    let fetch = images.fetch.clone();
    let boot: Arc<dyn crate::boot::sys::BootSystem> =
        Arc::new(linux_boot(machine, bmc_dev.clone(), fetch.clone()));
    m.task_method::<catalogue::FirmwareSecure, _>(firmware::FirmwareSecure {
        root: machine.root.clone(),
        authority: machine.authority.clone(),
        dev: bmc_dev.clone(),
        ready: machine.ready.clone(),
        fetch: fetch.clone(),
        boot: boot.clone(),
        running: Arc::default(),
    });
    m.task_method::<catalogue::CacheImages, _>(image::CacheImages(images));
    m.task_method::<catalogue::RunImage, _>(run_image::RunImage {
        root: machine.root.clone(),
        authority: machine.authority.clone(),
        ready: machine.ready.clone(),
        sys: boot,
        scratch: machine.root.join("run/molar/boot"),
        running: Arc::default(),
    });
    m
}

/// The real side effects of `standbye.run_image`, with the BMC and the modules that own the
/// config drive and the written-image record.
fn linux_boot(
    machine: &Machine,
    bmc_dev: bmc::Bmc,
    fetch: crate::image::FetchOptions,
) -> crate::boot::sys::LinuxBoot {
    use crate::boot::sys::SysError;
    use molar_protocol::bmc::{BootDevice, BootDeviceParams};
    let (root, authority) = (machine.root.clone(), machine.authority.clone());
    crate::boot::sys::LinuxBoot {
        root: machine.root.clone(),
        load_modules: machine.authority == Authority::Ramdisk,
        config_drive: Box::new(move |device, spec, format| {
            use molar_protocol::configdrive::ConfigDrive;
            let name = device.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_else(|| device.display().to_string());
            let written = match spec {
                ConfigDrive::Fetch {
                    url,
                    checksum,
                    ca_pem,
                } => {
                    let mut options = fetch.clone();
                    options.ca_pem = ca_pem.clone();
                    let raw = run_image::fetch_config_drive(url, checksum, &options)?;
                    crate::configdrive::write_fetched(&root, &name, raw, &authority)
                }
                _ => crate::configdrive::write(&root, &name, spec, format, &authority),
            };
            written.map_err(|e| SysError::new(e.code(), e.to_string()))
        }),
        bmc: Box::new(move |efi| {
            let params = BootDeviceParams {
                device: BootDevice::Disk,
                persistent: false,
                efi,
            };
            match bmc_dev.run(|t| crate::bmc::boot_device(t, &params)) {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.code == "ipmi_no_device" => Ok(None),
                Err(e) => Err(SysError::new(&e.code, e.msg)),
            }
        }),
        written_on: Box::new(|device| {
            crate::image::written_on(&device.to_string_lossy()).map(|w| w.image_id)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use molar_protocol::catalogue::InventoryGet;
    use serde_json::json;
    use std::path::Path;

    fn agent_on_fixture(ready: HardwareReady) -> Arc<Agent> {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory/qemu-q35");
        let mut machine = Machine::host(fixture, &[]);
        machine.ready = ready;
        Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            methods(&machine),
            crate::logfwd::LogBuffer::new(1),
        )
    }

    /// A coldplug that never finishes: hardware methods wait [`READY_WAIT`], then answer
    /// `hardware_not_ready` naming what did not finish, instead of looking at a half-probed
    /// machine. Bad params are answered at once.
    #[tokio::test(start_paused = true)]
    async fn hardware_methods_fail_when_drivers_never_finish_loading() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let agent = agent_on_fixture(HardwareReady::new(rx));
        let err = agent
            .clone()
            .dispatch(InventoryGet::NAME.into(), json!({"all": true}))
            .await
            .unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);

        let call = tokio::spawn(agent.clone().dispatch(InventoryGet::NAME.into(), json!({})));
        tokio::time::sleep(READY_WAIT - Duration::from_secs(1)).await;
        assert!(!call.is_finished(), "gave up before {READY_WAIT:?}");
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code, codes::HARDWARE_NOT_READY);
        assert_eq!(err.msg, "kernel modules still loading after 120 s");

        // Drivers loaded while a call waits: it proceeds.
        let call = tokio::spawn(agent.clone().dispatch(InventoryGet::NAME.into(), json!({})));
        tokio::time::sleep(Duration::from_secs(30)).await;
        tx.send(true).unwrap();
        let inv = call.await.unwrap().unwrap();
        assert_eq!(inv["system"]["serial"], "S123");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_dropped_without_ready_is_an_error_not_a_hang() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        drop(tx);
        let err = HardwareReady::new(rx).wait().await.unwrap_err();
        assert_eq!(err.code, codes::HARDWARE_NOT_READY);
        assert!(HardwareReady::default().wait().await.is_ok());
        let (tx, rx) = tokio::sync::watch::channel(true);
        drop(tx);
        assert!(
            HardwareReady::new(rx).wait().await.is_ok(),
            "ready, then closed"
        );
    }
}
