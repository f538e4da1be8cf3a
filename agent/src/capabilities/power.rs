//! `reboot` and `poweroff`: answered, then sync and reboot(2) ([`answer_then_act`]), when the
//! agent's [`Authority`] allows it.

use super::answer_then_act;
use crate::authority::{Action, Authority};
use crate::ramdisk::RamdiskError;
use crate::ramdisk::sys::System;
use crate::session::Methods;
use molar_protocol::catalogue::{Method, Poweroff, Reboot};
use molar_protocol::methods::{Empty, PowerResult};
use std::sync::Arc;

/// Registers `reboot` and `poweroff`.
pub(super) fn register(m: &mut Methods, authority: &Authority, sys: Arc<dyn System>) {
    register_one::<Reboot>(
        m,
        authority,
        sys.clone(),
        Action::Reboot,
        crate::ramdisk::reboot,
    );
    register_one::<Poweroff>(
        m,
        authority,
        sys,
        Action::Poweroff,
        crate::ramdisk::poweroff,
    );
}

fn register_one<M>(
    m: &mut Methods,
    authority: &Authority,
    sys: Arc<dyn System>,
    action: Action<'static>,
    act: fn(&dyn System) -> Result<(), RamdiskError>,
) where
    M: Method<Params = Empty, Result = PowerResult>,
{
    let authority = authority.clone();
    m.handle::<M, _, _>(move |_| {
        let (authority, sys) = (authority.clone(), sys.clone());
        async move {
            let answer = async {
                Ok(PowerResult {
                    action: M::NAME.to_owned(),
                })
            };
            answer_then_act(&authority, action, answer, move || act(sys.as_ref())).await
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{ACT_AFTER, Machine, methods_with_system};
    use crate::ramdisk::sys::{Call, RebootMode, RecordingSystem};
    use crate::session::{Agent, AgentConfig};
    use crate::tls::Trust;
    use molar_protocol::{Secret, codes};
    use serde_json::json;
    use std::time::Duration;

    fn agent(authority: Authority, sys: Arc<RecordingSystem>) -> Arc<Agent> {
        let machine = Machine::new("/nonexistent".into(), authority);
        Agent::new(
            AgentConfig::new("127.0.0.1:1", Trust::Insecure, Secret::default()),
            methods_with_system(&machine, sys),
            crate::logfwd::LogBuffer::new(1),
        )
    }

    fn reboots(sys: &RecordingSystem) -> Vec<RebootMode> {
        sys.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Reboot(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Lets every task that can run, run, without moving the (paused) clock.
    async fn yields() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits until `sys` saw `n` calls: the action's blocking call runs on a real thread.
    async fn until_calls(sys: &RecordingSystem, n: usize) {
        for _ in 0..10_000 {
            if sys.calls().len() >= n {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("only {:?} happened", sys.calls());
    }

    /// Authority comes from how the agent was started, not from its pid: a host agent that
    /// happens to be PID 1 (a container) is refused, one given --allow-host-power is not.
    #[tokio::test(start_paused = true)]
    async fn reboot_and_poweroff_are_refused_on_a_host_whatever_its_pid() {
        let pid1 = Arc::new(RecordingSystem::default());
        let agent = agent(Authority::host(&["/dev/loop0".into()], false), pid1.clone());
        for method in [Reboot::NAME, Poweroff::NAME] {
            let err = agent
                .clone()
                .dispatch(method.into(), json!({}))
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::REFUSED);
            assert_eq!(
                err.msg,
                format!(
                    "{method} refused: not running as the ramdisk's init (on a host, start the \
                     agent with --allow-host-power)"
                )
            );
            let err = agent
                .clone()
                .dispatch(method.into(), json!({"now": 1}))
                .await
                .unwrap_err();
            assert_eq!(err.code, codes::INVALID_PARAMS);
        }
        tokio::time::sleep(ACT_AFTER * 10).await;
        yields().await;
        assert!(pid1.calls().is_empty(), "nothing happened on the host");
    }

    /// The answer goes out first; sync and reboot(2) follow once `ACT_AFTER` has passed.
    #[tokio::test(start_paused = true)]
    async fn reboot_and_poweroff_answer_then_act_with_authority() {
        for (authority, pid) in [(Authority::Ramdisk, 1), (Authority::host(&[], true), 4242)] {
            for (method, mode) in [
                (Reboot::NAME, RebootMode::Restart),
                (Poweroff::NAME, RebootMode::PowerOff),
            ] {
                let sys = Arc::new(RecordingSystem {
                    pid,
                    ..RecordingSystem::default()
                });
                let agent = agent(authority.clone(), sys.clone());
                let answer = agent.dispatch(method.into(), json!({})).await.unwrap();
                assert_eq!(answer, json!({ "action": method }));
                assert!(sys.calls().is_empty(), "{method}: answered before acting");
                tokio::time::advance(ACT_AFTER - Duration::from_millis(1)).await;
                yields().await;
                assert!(
                    sys.calls().is_empty(),
                    "{method}: acted before {ACT_AFTER:?}"
                );
                tokio::time::advance(Duration::from_millis(2)).await;
                until_calls(&sys, 2).await;
                assert_eq!(
                    sys.calls(),
                    vec![Call::Sync, Call::Reboot(mode)],
                    "{authority:?} {method}"
                );
                assert_eq!(reboots(&sys), [mode]);
            }
        }
    }
}
