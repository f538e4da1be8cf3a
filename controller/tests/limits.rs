//! Issue #9: input bounds on what agents send and resource limits on both listeners. Each
//! test speaks raw bytes or TLS to a controller on 127.0.0.1:0 and asserts the refusal, that
//! nothing was stored, and that a connected agent still answers.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_protocol::{ErrorBody, PeerHandle};
use serde_json::{Value, json};
use std::sync::Arc;

type Change<'a> = Box<dyn Fn(&mut molar_protocol::methods::HandshakeParams) + 'a>;

fn handshake_line(params: &molar_protocol::methods::HandshakeParams) -> String {
    json!({"version":"v1","id":"h1","method":"handshake","params": params}).to_string()
}

#[tokio::test]
async fn an_oversized_or_forged_handshake_field_is_refused_and_not_stored() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let before = c.client.servers().await.unwrap();

    let long = "7".repeat(200_000);
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|h| h.agent_version = long.clone()),
            "agent_version is longer than 64 bytes",
        ),
        (
            Box::new(|h| h.node.hostname = Some("node2\n2026-12-01T00:00:00Z INFO forged".into())),
            "node.hostname contains a control character",
        ),
        (
            Box::new(|h| h.node.macs = vec!["not-a-mac".into()]),
            "node.macs[0] is not a mac address like aa:bb:cc:dd:ee:ff",
        ),
        (
            Box::new(|h| h.protocols = vec!["v1".into(); 9]),
            "protocols has more than 8 entries",
        ),
    ];
    for (change, why) in cases {
        let mut h = hello(&c.agent_token, 2);
        change(&mut h);
        let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
        raw.send(&handshake_line(&h)).await;
        let msg = format!("invalid params for handshake: {why}");
        assert_eq!(
            raw.recv_json().await,
            json!({"version":"v1","id":"h1","error":{"code":"invalid_params","msg": msg}})
        );
        assert_eq!(
            raw.recv_json().await,
            json!({"version":"v1","fatal_error": format!("handshake failed: {msg}")})
        );
        assert_eq!(raw.recv().await, None);
    }
    assert_eq!(c.client.servers().await.unwrap(), before);
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_forged_method_name_before_the_handshake_is_not_echoed() {
    let c = controller().await;
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    // The protocol bounds a method name at 128 bytes; the control characters are the risk.
    let method = "ping\n2026-12-01T00:00:00Z INFO forged\u{1b}[2J";
    raw.send(&json!({"version":"v1","id":"p1","method": method,"params":{}}).to_string())
        .await;
    let reply = raw.recv().await.unwrap();
    assert!(reply.len() < 300, "{} bytes", reply.len());
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["error"]["msg"],
        format!(
            "the first command must be handshake, not a name of {} bytes",
            method.len()
        )
    );
}

/// A fake agent whose inventory is the sample with `system.product` replaced.
fn inventory_agent(product: String) -> Arc<dyn molar_protocol::Handler> {
    Arc::new(move |_: &PeerHandle, method: String, _: Value| {
        let product = product.clone();
        Box::pin(async move {
            match method.as_str() {
                "inventory" => {
                    let mut inv = inventory_sample();
                    inv["system"]["product"] = Value::String(product);
                    Ok(inv)
                }
                "ping" => Ok(json!({})),
                _ => Err(ErrorBody::new("unknown_method", "no")),
            }
        }) as futures::future::BoxFuture<'static, Result<Value, ErrorBody>>
    })
}

#[tokio::test]
async fn an_inventory_with_an_oversized_or_control_string_is_refused_and_not_stored() {
    let c = controller().await;
    for (n, product, why) in [
        (
            1,
            "p".repeat(5000),
            "inventory.system.product is longer than 4096 bytes",
        ),
        (
            2,
            "X1\u{1b}[2J".to_owned(),
            "inventory.system.product contains a control character",
        ),
    ] {
        let agent = fake_agent_with(&c, n, inventory_agent(product)).await;
        let id = agent.welcome.server_id.clone();
        let err = c
            .client
            .call(&id, "inventory", json!({}), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
        assert!(err.len() < 400, "{err}");
        let v = c.client.server(&id, true).await.unwrap();
        assert_eq!(v.inventory.unwrap_or(Value::Null), Value::Null);
    }
    // A tab is allowed (and the sample itself passes).
    let agent = fake_agent_with(&c, 3, inventory_agent("X1\trev2".into())).await;
    let id = agent.welcome.server_id.clone();
    c.client
        .call(&id, "inventory", json!({}), None)
        .await
        .unwrap();
    let v = c.client.server(&id, true).await.unwrap();
    assert_eq!(v.inventory.unwrap()["system"]["product"], "X1\trev2");
}
