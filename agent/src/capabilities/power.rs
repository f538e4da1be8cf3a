//! `reboot` and `poweroff`: sync, then reboot(2).

use crate::ramdisk::sys::System;
use crate::session::Methods;
use molar_protocol::methods::{Empty, parse_params};
use molar_protocol::{ErrorBody, codes};
use std::sync::Arc;
use std::time::Duration;

/// `reboot` and `poweroff`: sync, then reboot(2), only as PID 1 of the ramdisk. The refusal
/// is checked before answering; the action itself happens after the answer went out.
pub(super) fn register(m: &mut Methods, sys: Arc<dyn System>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{HardwareReady, Machine, methods_with_system};
    use crate::safety::Authority;
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::Secret;
    use serde_json::json;

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
}
