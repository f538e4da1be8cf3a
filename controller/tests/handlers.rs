//! What the controller keeps of agents' answers, and only through its explicit handlers: the
//! inventory, the BMC table, the disks an erase must find; and the catalogue check of every
//! method name an operator sends.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_controller::client::ClientError;
use molar_protocol::Method;
use molar_protocol::catalogue::{BmcSetCredentials, DiskErase, InventoryGet};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn api_code(e: ClientError) -> (String, String) {
    match e {
        ClientError::Api(b) => (b.code, b.msg),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn only_the_inventory_handler_stores_an_inventory() {
    let c = controller().await;
    // Discovery asks at once and gets no inventory: nothing stored, still in discovery.
    let answers = Arc::new(AtomicBool::new(false));
    let a = fake_agent_with(&c, 1, fake_handler_with(answers.clone())).await;
    let sid = a.welcome.server_id.clone();
    still_answers(&c, &sid).await;
    answers.store(true, Ordering::SeqCst);

    // A generic call returns the inventory and stores nothing.
    let fleet = c.running.fleet.clone();
    let raw = fleet
        .call(&sid, InventoryGet::NAME, json!({}), T)
        .await
        .unwrap();
    assert_eq!(raw, inventory_sample());
    let v = c.client.server(&sid, true).await.unwrap();
    assert_eq!(v.inventory.unwrap_or(Value::Null), Value::Null);

    // `molar call SRV inventory` goes to the explicit handler: returned as sent, and stored.
    let got = c
        .client
        .call(&sid, InventoryGet::NAME, json!({}), None)
        .await
        .unwrap();
    assert_eq!(got, inventory_sample());
    let v = c.client.server(&sid, true).await.unwrap();
    assert_eq!(v.inventory, Some(inventory_sample()));
    // Its params are checked by the controller.
    let (code, _) = api_code(
        c.client
            .call(&sid, InventoryGet::NAME, json!({"x": 1}), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "invalid_params");
}

#[tokio::test]
async fn set_credentials_fills_the_bmc_table_from_the_decoded_bmc_info() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let fleet = c.running.fleet.clone();

    // A generic call of the same method stores nothing.
    fleet
        .call(
            &sid,
            BmcSetCredentials::NAME,
            json!({"username": "other"}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(c.client.server(&sid, false).await.unwrap().bmc, None);

    let result = c
        .client
        .call(
            &sid,
            BmcSetCredentials::NAME,
            json!({"username": "molar"}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(result["username"], "molar");
    let bmc = c.client.server(&sid, false).await.unwrap().bmc.unwrap();
    assert_eq!(bmc.username, "molar");
    assert_eq!(bmc.mac.as_deref(), Some("52:54:00:be:ef:01"));
    assert_eq!(bmc.ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(bmc.user_id, Some(3));
    assert_eq!(
        fleet
            .store
            .bmc_password(&sid)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "Zq8-fake-pw"
    );
    // Strict params, checked before anything is sent.
    let (code, msg) = api_code(
        c.client
            .call(&sid, BmcSetCredentials::NAME, json!({"user": "x"}), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "invalid_params");
    assert!(msg.contains("unknown field `user`"), "{msg}");
}

#[tokio::test]
async fn an_erase_of_every_disk_expects_the_inventoried_disks() {
    let c = controller().await;
    let a = fake_agent_with(&c, 1, fake_handler_with(Arc::new(AtomicBool::new(true)))).await;
    let sid = a.welcome.server_id.clone();
    let client = c.client.clone();
    for _ in 0..500 {
        if client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .state
            .as_str()
            == "available"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = |params: Value| {
        let client = client.clone();
        let sid = sid.clone();
        async move {
            let t = client
                .start_task(&sid, DiskErase::NAME, params)
                .await
                .unwrap();
            client.task(&t.task_id).await.unwrap().params
        }
    };
    let ns1 = "nvme.1b36-6465616462656566-51454d55204e564d65204374726c-00000001";
    let ns2 = "nvme.1b36-6465616462656566-51454d55204e564d65204374726c-00000002";
    // Every disk: the inventory's disks must all be there (namespaces sharing a serial by
    // WWN), and the stored params are what was sent.
    assert_eq!(
        start(json!({})).await,
        json!({"expect": ["VB0001", ns1, ns2]})
    );
    assert_eq!(
        start(json!({"exclude": ["/dev/vda"], "verify": false})).await,
        json!({"expect": [ns1, ns2], "exclude": ["/dev/vda"], "verify": false})
    );
    // Named devices, or the operator's own expect, are left alone.
    assert_eq!(
        start(json!({"devices": ["vda"]})).await,
        json!({"devices": ["vda"]})
    );
    assert_eq!(
        start(json!({"expect": ["S1"]})).await,
        json!({"expect": ["S1"]})
    );
    // Strict params: a typo is refused before anything is stored or sent.
    let (code, msg) = api_code(
        c.client
            .start_task(&sid, DiskErase::NAME, json!({"exlude": ["vda"]}))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "invalid_params");
    assert!(msg.contains("unknown field `exlude`"), "{msg}");
    let (code, _) = api_code(
        c.client
            .start_task(&sid, DiskErase::NAME, json!({"task_id": "t-mine"}))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "invalid_params");
    assert_eq!(c.client.server_tasks(&sid).await.unwrap().len(), 4);
}

#[tokio::test]
async fn an_erase_without_a_stored_inventory_expects_nothing() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let t = c
        .client
        .start_task(&sid, DiskErase::NAME, json!({}))
        .await
        .unwrap();
    assert_eq!(c.client.task(&t.task_id).await.unwrap().params, json!({}));
}

#[tokio::test]
async fn method_names_are_checked_against_the_catalogue() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let call = |m: String| {
        let client = c.client.clone();
        let sid = sid.clone();
        async move { api_code(client.call(&sid, &m, json!({}), None).await.unwrap_err()) }
    };
    let task = |m: String| {
        let client = c.client.clone();
        let sid = sid.clone();
        async move { api_code(client.start_task(&sid, &m, json!({})).await.unwrap_err()) }
    };
    // Unknown, or sent by agents only: unknown_method, without reaching the agent.
    for m in ["no.such", "log", "task_status", "handshake", ""] {
        assert_eq!(call(m.into()).await.0, "unknown_method", "{m}");
        assert_eq!(task(m.into()).await.0, "unknown_method", "{m}");
    }
    // A task is not a call and a call is not a task.
    let (code, msg) = call(DiskErase::NAME.into()).await;
    assert_eq!(code, "invalid_request");
    assert!(msg.contains("is a task"), "{msg}");
    let (code, msg) = task("ping".into()).await;
    assert_eq!(code, "invalid_request");
    assert!(msg.contains("is not a task"), "{msg}");
    // A hostile name is not echoed whole.
    let long = "x".repeat(100_000);
    let (code, msg) = call(long).await;
    assert_eq!(code, "unknown_method");
    assert!(msg.len() < 200, "{} bytes", msg.len());
    // Nothing of this was stored.
    assert!(c.client.server_tasks(&sid).await.unwrap().is_empty());
    still_answers(&c, &sid).await;
}

#[tokio::test]
async fn discovery_asks_again_while_the_agent_is_not_ready() {
    use futures::FutureExt;
    use std::sync::atomic::AtomicU32;
    let c = controller().await;
    // The agent answers not_ready twice (it has not taken in the handshake's answer yet).
    let asked = Arc::new(AtomicU32::new(0));
    let n = asked.clone();
    let handler: Arc<dyn molar_protocol::Handler> = Arc::new(
        move |_: &molar_protocol::PeerHandle, method: String, _params: Value| {
            let n = n.clone();
            async move {
                if method != InventoryGet::NAME {
                    return Err(molar_protocol::ErrorBody::new("unknown_method", "no"));
                }
                if n.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(molar_protocol::ErrorBody::new("not_ready", "not yet"));
                }
                Ok(inventory_sample())
            }
            .boxed()
        },
    );
    let a = fake_agent_with(&c, 1, handler).await;
    let sid = a.welcome.server_id.clone();
    let client = c.client.clone();
    let mut state = String::new();
    for _ in 0..500 {
        state = client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .state
            .as_str()
            .to_owned();
        if state == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "available");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    let v = client.server(&sid, true).await.unwrap();
    assert_eq!(v.inventory, Some(inventory_sample()));
}
