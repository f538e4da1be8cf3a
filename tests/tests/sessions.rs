//! Issue #9 end to end, with real agents in this process: an impostor agent running on the
//! same machine (same SMBIOS, MACs and boot) with another agent token never takes the real
//! agent's session, and keeps retrying at the minimum delay; the real agent's session
//! credential reconnects it after a controller restart without a new one being issued; a
//! revoked token's agent is cut off at once.

use molar_agent::logfwd::LogBuffer;
use molar_agent::tls::Trust;
use molar_tests::inproc::{Controller, TestAgent, connected_server, eventually};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_on_the_same_machine_is_refused_and_the_real_agent_keeps_its_server() {
    let ctl = Controller::start().await;
    let client = ctl.client();
    let real_token = ctl.agent_token().await;
    let real = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        real_token,
        "S900",
    );
    let id = connected_server(&client, "S900").await;
    let credential = eventually(10, "the session credential", || async {
        real.agent.session_credential()
    })
    .await;

    // Another token, the very same machine: same SMBIOS uuid and serial, MACs, boot id.
    let other = client.create_token("impostor").await.unwrap();
    let cfg = TestAgent::config(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        other.token.clone(),
        real.root.path(),
    );
    let impostor = TestAgent::start_with(cfg, tempfile::tempdir().unwrap(), LogBuffer::new(10));
    // Refused again and again, at the minimum delay (100 ms here): over 2 s it tries many
    // times, and every time the real session stays.
    let refusals = eventually(15, "ten refusals of the impostor", || async {
        let evs = client.events(Some(&id), 0, 1000).await.ok()?.events;
        let n = evs
            .iter()
            .filter(|e| {
                e.event.kind == "handshake_refused"
                    && e.event.token_id.as_deref() == Some(other.id.as_str())
                    && e.event.msg.contains("session_conflict")
            })
            .count();
        (n >= 10).then_some(n)
    })
    .await;
    assert!(refusals >= 10);
    assert!(
        impostor.agent.server_id().is_none(),
        "the impostor got a session"
    );
    assert_eq!(
        client
            .call(&id, "ping", json!({"real": true}), None)
            .await
            .unwrap(),
        json!({"real": true})
    );
    assert_eq!(real.agent.session_credential(), Some(credential));
    assert_eq!(client.servers().await.unwrap().len(), 1);
    impostor.stop().await;
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_credential_reconnects_after_a_controller_restart() {
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "S910",
    );
    let id = connected_server(&ctl.client(), "S910").await;
    let credential = eventually(10, "the session credential", || async {
        agent.agent.session_credential()
    })
    .await;
    ctl.restart().await;
    let client = ctl.client();
    let again = connected_server(&client, "S910").await;
    assert_eq!(again, id);
    // Admitted by its credential: no new one was issued (a token admission issues one).
    assert_eq!(agent.agent.session_credential(), Some(credential));
    assert_eq!(
        client
            .call(&id, "ping", json!({"n": 1}), None)
            .await
            .unwrap(),
        json!({"n": 1})
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agents_token_cuts_it_off_at_once() {
    let ctl = Controller::start().await;
    let client = ctl.client();
    let t = client.create_token("rack-1").await.unwrap();
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        t.token.clone(),
        "S920",
    );
    let id = connected_server(&client, "S920").await;
    client.revoke_token(&t.id).await.unwrap();
    eventually(5, "the server to be disconnected", || async {
        let v = client.server(&id, false).await.ok()?;
        (!v.server.connected).then_some(())
    })
    .await;
    // It keeps trying and keeps being refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = client.call(&id, "ping", json!({}), None).await.unwrap_err();
    assert_eq!(err.code(), "not_connected");
    agent.stop().await;
}
