//! The BMC and chassis methods (`bmc.*`, `chassis.*`) over in-band IPMI: the BMC is opened
//! per operation under one process-wide lock, so a credential change never interleaves with
//! a read.

use super::{HardwareReady, Machine, blocking};
use crate::bmc;
use crate::hw::ipmi::IpmiDevice;
use crate::session::Methods;
use molar_protocol::bmc::{
    BmcResetParams, BootDeviceParams, ChassisPowerParams, ChassisPowerResult, PowerAction,
    SetCredentialsParams,
};
use molar_protocol::methods::{Empty, parse_params};
use molar_protocol::{ErrorBody, codes};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
pub(super) struct Bmc {
    pub(super) root: PathBuf,
    pub(super) lock: Arc<Mutex<()>>,
    pub(super) ready: HardwareReady,
    pub(super) power_allowed: bool,
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
    pub(super) fn run<T, F>(&self, f: F) -> Result<T, ErrorBody>
    where
        F: FnOnce(&mut IpmiDevice) -> Result<T, bmc::BmcError>,
    {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut dev = IpmiDevice::open(&self.root)?;
        Ok(f(&mut dev)?)
    }
}

pub(super) fn bmc_at(machine: &Machine) -> Bmc {
    Bmc {
        root: machine.root.clone(),
        lock: Arc::new(Mutex::new(())),
        ready: machine.ready.clone(),
        power_allowed: machine.power_allowed,
    }
}

/// Registers the BMC and chassis methods.
pub(super) fn register(m: &mut Methods, dev: Bmc) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{HardwareReady, Machine, methods};
    use crate::safety::Authority;
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
