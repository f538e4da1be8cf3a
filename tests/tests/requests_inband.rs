//! Queued control requests in-band, with a real controller and a real agent in one process:
//! the request goes to the agent's own `chassis.power` handler (the path recorded
//! `in_band`) and the agent's answer becomes the request's outcome. The agent's machine
//! root has no IPMI device, so the agent refuses, and the request fails with the agent's
//! own message rather than a guess.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::tls::Trust;
use molar_controller::api::ControlRequest;
use molar_controller::store::{RequestPath, RequestState};
use molar_tests::inproc::{Controller, TestAgent, connected_server};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_in_band_to_a_connected_agent_and_keeps_its_answer() {
    let ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let _agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S300",
    );
    let client = ctl.client();
    let id = connected_server(&client, "S300").await;
    let mut done = Vec::new();
    for (action, parameter) in [
        ("set_power_state", Some("status")),
        ("set_next_boot_device", Some("pxe")),
        ("bmc_reset", None),
    ] {
        let q = client
            .control(
                &id,
                &ControlRequest {
                    action: action.into(),
                    parameter: parameter.map(str::to_owned),
                    persistent: false,
                    efi: false,
                },
            )
            .await
            .unwrap();
        done.push(q.id);
    }
    let mut last_finished = 0;
    for rid in done {
        let r = client
            .wait_request(rid, Duration::from_secs(60))
            .await
            .unwrap();
        eprintln!("{r:?}");
        assert_eq!(r.path, Some(RequestPath::InBand), "{r:?}");
        // No /dev/ipmi0 under the agent's root: the agent's refusal, relayed.
        assert_eq!(r.state, RequestState::Failed, "{r:?}");
        let msg = r.message.as_deref().unwrap();
        assert!(msg.starts_with("in-band: "), "{msg}");
        assert!(msg.len() > "in-band: ".len(), "{msg}");
        assert!(r.started_ms.unwrap() >= last_finished);
        last_finished = r.finished_ms.unwrap();
    }
}
