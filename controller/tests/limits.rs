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
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Whether the controller closes `s` within a second without a byte sent either way (a
/// socket it holds stays open until a timeout of several seconds).
async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Fills the agent port's pre-handshake budget with idle sockets; returns them once a new
/// idle socket is closed at once.
async fn hold_pre_handshake_budget(c: &Controller, budget: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..budget {
        held.push(TcpStream::connect(c.running.agent_addr).await.unwrap());
    }
    // A probe can win a permit from a held socket not yet accepted: then it is held too.
    for _ in 0..budget + 1 {
        let mut probe = TcpStream::connect(c.running.agent_addr).await.unwrap();
        if closed_at_once(&mut probe).await {
            return held;
        }
        held.push(probe);
    }
    panic!("no idle socket was refused with {} held", held.len());
}

/// A fake agent's handshake, retried while the controller closes the connection.
async fn agent_eventually(c: &Controller, n: u32) -> FakeAgent {
    for _ in 0..100 {
        let attempt = async {
            let tcp = TcpStream::connect(c.running.agent_addr).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let tls = tls_connector(&c.running.ca_pem_path)
                .connect(name, tcp)
                .await
                .ok()?;
            let (peer, task) = molar_protocol::Peer::spawn(
                tls,
                fake_handler(),
                molar_protocol::PeerConfig::default(),
            );
            let welcome = peer
                .call_method::<molar_protocol::catalogue::Handshake>(&hello(&c.agent_token, n))
                .await
                .ok()?;
            Some(FakeAgent {
                peer,
                task,
                welcome,
            })
        };
        if let Some(a) = attempt.await {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent {n} never got through");
}

#[tokio::test]
async fn idle_unauthenticated_sockets_cannot_crowd_agents_out_of_the_agent_port() {
    const BUDGET: usize = 4;
    let c = controller_with(|cfg| cfg.pre_handshake_connections = BUDGET).await;
    let good = fake_agent(&c, 1).await;

    let held = hold_pre_handshake_budget(&c, BUDGET).await;
    assert!(held.len() <= BUDGET + 1, "{} held", held.len());
    // A connected agent is not counted against the budget and keeps working.
    still_answers(&c, &good.welcome.server_id).await;
    // Nor is a new agent let in past a spent budget: its connection is closed at once.
    let mut late = TcpStream::connect(c.running.agent_addr).await.unwrap();
    assert!(closed_at_once(&mut late).await);

    // The budget frees as the idle sockets go, and a real agent then connects.
    drop(held);
    let agent = agent_eventually(&c, 2).await;
    still_answers(&c, &agent.welcome.server_id).await;
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_socket_that_never_starts_tls_is_closed_after_the_tls_timeout() {
    let c = controller_with(|cfg| {
        cfg.tls_handshake_timeout = Duration::from_millis(300);
        cfg.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    // Half a TLS ClientHello record header, then nothing.
    let mut s = TcpStream::connect(c.running.agent_addr).await.unwrap();
    s.write_all(&[0x16, 0x03]).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// Reads until EOF or error; `None` if the peer kept the connection open for `within`.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    {
        Ok(()) => Some(got),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_header_and_idle_api_connections_are_closed_after_the_header_timeout() {
    let c = controller_with(|cfg| cfg.api_header_timeout = Duration::from_millis(500)).await;
    let api = c.running.api_addr;

    // One header line every 200 ms, never the end of the head.
    let slow = tls_stream(api, &c.running.ca_pem_path).await;
    let (mut rd, mut wr) = tokio::io::split(slow);
    let writer = tokio::spawn(async move {
        let _ = wr
            .write_all(b"GET /api/v1/servers HTTP/1.1\r\nhost: x\r\n")
            .await;
        for i in 0..50 {
            if wr
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
            let _ = wr.flush().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        50
    });
    assert!(
        read_until_closed(&mut rd, Duration::from_secs(5))
            .await
            .is_some(),
        "a slow-header client was still served after 5 s"
    );
    writer.abort();

    // TLS done, then silence.
    let mut idle = tls_stream(api, &c.running.ca_pem_path).await;
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );

    // Idle after a request on a kept-alive connection.
    let mut kept = tls_stream(api, &c.running.ca_pem_path).await;
    let auth = admin(&c);
    kept.write_all(
        format!("GET /api/v1/servers HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut kept, Duration::from_secs(5))
        .await
        .expect("an idle kept-alive connection was still open after 5 s");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // The API still answers.
    c.client.servers().await.unwrap();
}

#[tokio::test]
async fn past_the_api_connection_cap_a_client_gets_503_busy_and_agents_still_connect() {
    // 16 places, and 16 / 8 = 2 answers of 503 at once: the client's own pooled connection
    // can push one held socket into the busy budget, the next still gets its 503.
    const CAP: usize = 16;
    let c = controller_with(|cfg| {
        cfg.api_max_connections = CAP;
        cfg.api_header_timeout = Duration::from_secs(60);
    })
    .await;
    let api = c.running.api_addr;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(tls_stream(api, &c.running.ca_pem_path).await);
    }

    let mut over = tls_stream(api, &c.running.ca_pem_path).await;
    over.write_all(b"GET /api/v1/servers HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the connection past the cap was left open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "busy");

    // The agent port is another budget.
    let agent = fake_agent(&c, 1).await;

    // Places free as connections go, and the API answers again.
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        if c.client.servers().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "the API never answered after the held connections closed"
    );
    still_answers(&c, &agent.welcome.server_id).await;
}

#[tokio::test]
async fn an_api_client_that_never_finishes_tls_is_closed_after_the_tls_timeout() {
    let c = controller_with(|cfg| {
        cfg.tls_handshake_timeout = Duration::from_millis(300);
        cfg.api_header_timeout = Duration::from_secs(60);
    })
    .await;
    for opening in [&[][..], &[0x16, 0x03][..]] {
        let mut s = TcpStream::connect(c.running.api_addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let t0 = std::time::Instant::now();
        assert!(
            read_until_closed(&mut s, Duration::from_secs(5))
                .await
                .is_some(),
            "a stalled TLS handshake was still open after 5 s"
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    c.client.servers().await.unwrap();
}
