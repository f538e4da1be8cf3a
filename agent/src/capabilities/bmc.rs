//! The BMC and chassis methods (`bmc.*`, `chassis.*`) over in-band IPMI: the BMC is opened
//! per operation under one process-wide lock, so a credential change never interleaves with
//! a read. `chassis.power` (other than `status`) answers first and acts after
//! ([`answer_then_act`]); `bmc.reset` answers with what the BMC said to it.

use super::{Machine, answer_then_act, blocking};
use crate::authority::Action;
use crate::bmc;
use crate::hw::ipmi::IpmiDevice;
use crate::session::Methods;
use molar_protocol::ErrorBody;
use molar_protocol::bmc::{ChassisPowerResult, PowerAction};
use molar_protocol::catalogue::{
    BmcInfoGet, BmcReset, BmcSetCredentials, ChassisBootDevice, ChassisPower,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    root: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl Bmc {
    /// The BMC under `root` (`/dev/ipmi0`), with a lock of its own.
    pub(super) fn new(root: PathBuf) -> Bmc {
        Bmc {
            root,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Opens the BMC and runs `f` on it, holding the lock. Blocks: call on the blocking pool.
    pub(super) fn run<T, F>(&self, f: F) -> Result<T, ErrorBody>
    where
        F: FnOnce(&mut IpmiDevice) -> Result<T, bmc::BmcError>,
    {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut dev = IpmiDevice::open(&self.root)?;
        Ok(f(&mut dev)?)
    }
}

/// Registers the BMC and chassis methods.
pub(super) fn register(m: &mut Methods, machine: &Machine, dev: Bmc) {
    let ready = &machine.ready;
    let d = dev.clone();
    m.hardware::<BmcInfoGet, _, _>(ready, move |_| d.run(bmc::info));

    let d = dev.clone();
    m.hardware::<BmcSetCredentials, _, _>(ready, move |p| {
        // The result carries the password to the controller; it is never logged.
        let r = d.run(|t| bmc::set_credentials(t, &p));
        match &r {
            Ok(v) => {
                tracing::info!(user_id = v.user_id, username = %v.username, "BMC credentials set")
            }
            Err(e) => tracing::warn!(error = %e, "setting BMC credentials failed"),
        }
        r
    });

    let d = dev.clone();
    m.hardware::<ChassisBootDevice, _, _>(ready, move |p| d.run(|t| bmc::boot_device(t, &p)));

    let (d, r, authority) = (dev.clone(), ready.clone(), machine.authority.clone());
    m.handle::<BmcReset, _, _>(move |p| {
        let (d, ready, authority) = (d.clone(), r.clone(), authority.clone());
        async move {
            // Not answer-then-act: the BMC answers a reset before it goes (IPMI 2.0 §20.2),
            // and the host stays up, so the reply carries the BMC's own verdict (ipmi_sim, for
            // one, refuses a cold reset).
            authority.decide(&Action::BmcReset)?;
            ready.wait().await?;
            let kind = p.kind;
            blocking(move || d.run(|t| bmc::reset(t, kind))).await
        }
    });

    let (r, authority) = (ready.clone(), machine.authority.clone());
    m.handle::<ChassisPower, _, _>(move |p| {
        let (d, ready, authority) = (dev.clone(), r.clone(), authority.clone());
        async move {
            let action = p.action;
            // Reading the status first proves the BMC answers before we promise anything.
            let reader = d.clone();
            let answer = async move {
                ready.wait().await?;
                let status = blocking(move || reader.run(bmc::chassis_status)).await?;
                Ok(ChassisPowerResult { action, status })
            };
            if action == PowerAction::Status {
                return answer.await;
            }
            answer_then_act(
                &authority,
                Action::ChassisPower(action),
                answer,
                move || d.run(|t| bmc::power(t, action)),
            )
            .await
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::authority::Authority;
    use crate::capabilities::{Machine, methods};
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::{Secret, codes};
    use serde_json::json;

    /// Without /dev/ipmi0 every BMC method answers with the device error, naming the fix.
    #[tokio::test]
    async fn bmc_methods_without_a_device_say_which_modules_to_load() {
        let root = tempfile::tempdir().unwrap();
        // Power allowed: the refusal must not hide the missing device.
        let m = methods(&Machine::new(
            root.path().to_owned(),
            Authority::host(&[], true),
        ));
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
            ("chassis.power", json!({"action": "cycle"})),
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
        let m = methods(&Machine::host(root.path().to_owned(), &[]));
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
