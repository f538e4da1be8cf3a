//! The controller-side rows of the "bad input" table (issue 2), each asserting the exact
//! reply, that nothing stored changed, and that another connected agent still answers.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_controller::PLAINTEXT_REFUSAL;
use molar_protocol::catalogue::TaskStatusUpdate;
use molar_protocol::methods::{TaskState, TaskStatus};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn handshake_line(token: &str, n: u32) -> String {
    json!({"version":"v1","id":"h1","method":"handshake","params": hello(token, n)}).to_string()
}

#[tokio::test]
async fn handshake_with_a_wrong_token_is_refused_and_changes_nothing() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let before = c.client.servers().await.unwrap();

    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    raw.send(&handshake_line("not-the-token", 2)).await;
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","id":"h1","error":{"msg":"invalid agent token","code":"unauthorized"}})
    );
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","fatal_error":"handshake failed: invalid agent token"})
    );
    assert_eq!(raw.recv().await, None);

    // A missing token is the same refusal (and the token is never echoed).
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    let mut line: Value = serde_json::from_str(&handshake_line("", 3)).unwrap();
    line["params"].as_object_mut().unwrap().remove("token");
    raw.send(&line.to_string()).await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["error"]["code"], "invalid_params");
    assert_eq!(
        reply["error"]["msg"],
        "invalid params for handshake: missing field `token`"
    );
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","fatal_error":"handshake failed: invalid params for handshake: missing field `token`"})
    );

    // A revoked token is refused too.
    let spare = c.client.create_token("spare").await.unwrap();
    c.client.revoke_token(&spare.id).await.unwrap();
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    raw.send(&handshake_line(spare.token.expose(), 4)).await;
    assert_eq!(raw.recv_json().await["error"]["code"], "unauthorized");

    assert_eq!(c.client.servers().await.unwrap(), before);
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_command_before_the_handshake_is_refused() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    raw.send(r#"{"version":"v1","id":"p1","method":"ping","params":{}}"#)
        .await;
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","id":"p1","error":{"msg":"the first command must be handshake, not ping","code":"handshake_required"}})
    );
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","fatal_error":"handshake required"})
    );
    assert_eq!(raw.recv().await, None);

    // Not JSON at all: a fatal error naming the problem.
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    raw.send("hello").await;
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","fatal_error":"line is not valid JSON: expected value at line 1 column 1"})
    );
    assert_eq!(raw.recv().await, None);

    // An agent speaking only another protocol version.
    let mut raw = Raw::new(tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await);
    let mut line: Value = serde_json::from_str(&handshake_line(&c.agent_token, 5)).unwrap();
    line["params"]["protocols"] = json!(["v2"]);
    raw.send(&line.to_string()).await;
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","id":"h1","error":{"code":"unsupported_protocol",
            "msg":"no common protocol version: the agent speaks [\"v2\"], the controller speaks [\"v1\"]"}})
    );
    assert_eq!(
        raw.recv_json().await["fatal_error"],
        "handshake failed: no common protocol version: the agent speaks [\"v2\"], the controller speaks [\"v1\"]"
    );

    assert_eq!(c.client.servers().await.unwrap().len(), 1);
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_plaintext_client_on_the_tls_listener_gets_one_plaintext_line() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let mut tcp = TcpStream::connect(c.running.agent_addr).await.unwrap();
    tcp.write_all(format!("{}\n", handshake_line(&c.agent_token, 2)).as_bytes())
        .await
        .unwrap();
    let mut got = String::new();
    tcp.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, format!("{PLAINTEXT_REFUSAL}\n"));
    assert_eq!(
        got.trim_end(),
        r#"{"version":"v1","fatal_error":"this listener requires TLS; connect with TLS or start the controller with --allow-plaintext-agents"}"#
    );

    // Garbage that is neither TLS nor JSON just fails the TLS handshake.
    let mut tcp = TcpStream::connect(c.running.agent_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("fatal_error"));

    assert_eq!(c.client.servers().await.unwrap().len(), 1);
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_repeated_terminal_task_status_is_stored_once() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let other = fake_agent(&c, 2).await;
    let sid = a.welcome.server_id.clone();
    let done = TaskStatus {
        task_id: "t-agent-own".into(),
        state: TaskState::Complete,
        percent: None,
        eta: None,
        msg: None,
        code: None,
        result: Some(json!({"n": 1})),
        seq: 7,
    };
    for _ in 0..3 {
        // Every copy is acknowledged (so the agent stops resending) ...
        let ack = a.peer.call_method::<TaskStatusUpdate>(&done).await.unwrap();
        assert_eq!(serde_json::to_value(ack).unwrap(), json!({}));
    }
    // ... an error after complete too, and it changes nothing.
    let late_error = TaskStatus {
        state: TaskState::Error,
        msg: Some("late".into()),
        result: None,
        ..done.clone()
    };
    a.peer
        .call_method::<TaskStatusUpdate>(&late_error)
        .await
        .unwrap();
    let task = c.client.task("t-agent-own").await.unwrap();
    assert_eq!(task.state.as_str(), "complete");
    assert_eq!(task.server_id, sid);
    assert_eq!(task.result, Some(json!({"n": 1})));
    let mut events = c.client.task_events("t-agent-own").await.unwrap();
    let ev = events.next().await.unwrap().unwrap();
    assert_eq!(ev.state.as_str(), "complete");
    assert!(events.next().await.is_none(), "stored exactly once");

    // Bad params of task_status are an error response; the connection stays up.
    let err = a
        .peer
        .call("task_status", json!({"task_id": 3}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_body(),
        molar_protocol::ErrorBody::new(
            "invalid_params",
            "invalid params for task_status: invalid type: integer `3`, expected a string"
        )
    );
    let err = a.peer.call("frobnicate", json!({})).await.unwrap_err();
    assert_eq!(
        err.to_body(),
        molar_protocol::ErrorBody::new("unknown_method", "unknown method frobnicate")
    );
    // The acknowledged task is announced at the next handshake (of the next boot, once
    // this connection is gone: without its session credential nothing replaces it).
    a.peer.close(None).await;
    let _ = a.task.await;
    let fleet = c.running.fleet.clone();
    eventually("the first connection to be gone", || {
        !fleet.is_connected(&sid)
    })
    .await;
    still_answers(&c, &other.welcome.server_id).await;
    let again = fake_agent(&c, 1).await;
    assert_eq!(again.welcome.server_id, sid);
    assert_eq!(again.welcome.acknowledged_tasks, vec!["t-agent-own"]);
}

#[tokio::test]
async fn api_calls_without_or_with_a_wrong_admin_token_are_refused() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let before = c.client.servers().await.unwrap();
    for path in ["/servers", "/tokens", "/nope"] {
        assert_eq!(
            raw_api(&c, reqwest::Method::GET, path, None, None).await,
            (
                401,
                json!({"error":{"msg":"missing admin token","code":"unauthorized"}})
            )
        );
        assert_eq!(
            raw_api(&c, reqwest::Method::GET, path, Some("Bearer wrong"), None).await,
            (
                401,
                json!({"error":{"msg":"invalid admin token","code":"unauthorized"}})
            )
        );
    }
    let auth = format!("Bearer {}", c.running.admin_token.expose());
    assert_eq!(
        raw_api(&c, reqwest::Method::PUT, "/servers", Some(&auth), None).await,
        (
            405,
            json!({"error":{"msg":"method PUT is not allowed on /api/v1/servers","code":"invalid_request"}})
        )
    );
    assert_eq!(
        raw_api(&c, reqwest::Method::GET, "/nope", Some(&auth), None).await,
        (
            404,
            json!({"error":{"msg":"no such endpoint: GET /api/v1/nope","code":"not_found"}})
        )
    );
    // Creating a token without the admin token creates nothing.
    let (status, _) = raw_api(
        &c,
        reqwest::Method::POST,
        "/tokens",
        Some("Bearer wrong"),
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(c.client.tokens().await.unwrap().len(), 1);
    assert_eq!(c.client.servers().await.unwrap(), before);
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn a_call_to_a_server_without_an_agent_is_not_connected() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let gone = fake_agent(&c, 2).await;
    let gone_id = gone.welcome.server_id.clone();
    gone.peer.close(None).await;
    let _ = gone.task.await;
    let fleet = c.running.fleet.clone();
    eventually("the agent to be disconnected", || {
        !fleet.is_connected(&gone_id)
    })
    .await;
    let auth = format!("Bearer {}", c.running.admin_token.expose());
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &format!("/servers/{gone_id}/call"),
            Some(&auth),
            Some(r#"{"method":"ping","params":{}}"#)
        )
        .await,
        (
            409,
            json!({"error":{"msg": format!("server {gone_id} has no agent connection"),"code":"not_connected"}})
        )
    );
    // A huge timeout is clamped, not a panic; a negative one is named.
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &format!("/servers/{gone_id}/call"),
            Some(&auth),
            Some(r#"{"method":"ping","timeout_s":1e300}"#)
        )
        .await
        .0,
        409
    );
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &format!("/servers/{gone_id}/call"),
            Some(&auth),
            Some(r#"{"method":"ping","timeout_s":-1}"#)
        )
        .await,
        (
            400,
            json!({"error":{"msg":"timeout_s must be a positive number of seconds, not -1","code":"invalid_params"}})
        )
    );
    // A server that never existed is not found.
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            "/servers/srv-00000000/call",
            Some(&auth),
            Some(r#"{"method":"ping"}"#)
        )
        .await,
        (
            404,
            json!({"error":{"msg":"server srv-00000000 not found","code":"not_found"}})
        )
    );
    // The disconnected server is still stored, with its closed connection.
    let v = c.client.server(&gone_id, false).await.unwrap();
    assert!(!v.server.connected);
    assert_eq!(
        v.connection.unwrap().close_reason.as_deref(),
        Some("closed by the other side")
    );
    still_answers(&c, &good.welcome.server_id).await;
}

#[tokio::test]
async fn an_invalid_json_body_is_a_bad_request() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let sid = good.welcome.server_id.clone();
    let auth = format!("Bearer {}", c.running.admin_token.expose());
    let path = format!("/servers/{sid}/call");
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &path,
            Some(&auth),
            Some("{not json")
        )
        .await,
        (
            400,
            json!({"error":{"msg":"request body is not valid JSON: key must be a string at line 1 column 2","code":"invalid_request"}})
        )
    );
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &path,
            Some(&auth),
            Some(r#"{"method":1}"#)
        )
        .await,
        (
            400,
            json!({"error":{"msg":"invalid request body: invalid type: integer `1`, expected a string at line 1 column 11","code":"invalid_params"}})
        )
    );
    assert_eq!(
        raw_api(
            &c,
            reqwest::Method::POST,
            &format!("/servers/{sid}/tasks"),
            Some(&auth),
            Some(&format!(r#"{{"method":"{TASK}","params":[1]}}"#))
        )
        .await,
        (
            400,
            json!({"error":{"msg":"task params must be a JSON object","code":"invalid_params"}})
        )
    );
    assert!(c.client.server_tasks(&sid).await.unwrap().is_empty());
    still_answers(&c, &sid).await;
}

#[tokio::test]
async fn a_client_that_never_sends_its_handshake_is_closed() {
    // The listener on its own, mini-redis style: run(listener, shutdown) with a short
    // handshake timeout.
    let dir = tempfile::tempdir().unwrap();
    let pki = molar_controller::pki::load_or_create(dir.path(), &[]).unwrap();
    let store = std::sync::Arc::new(molar_controller::store::Store::open_in_memory().unwrap());
    let fleet = molar_controller::Fleet::new(store);
    let mut cfg = molar_controller::ListenerConfig::new(
        molar_controller::pki::server_config(&pki, &[]).unwrap(),
    );
    cfg.handshake_timeout = std::time::Duration::from_millis(200);
    cfg.tls_handshake_timeout = std::time::Duration::from_millis(200);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(molar_controller::listener::run(
        listener,
        fleet.clone(),
        cfg,
        shutdown.clone(),
    ));

    // TLS done, then silence: one fatal line naming the problem, then the close.
    let mut raw = Raw::new(tls_stream(addr, &pki.ca_pem_path).await);
    assert_eq!(
        raw.recv_json().await,
        json!({"version":"v1","fatal_error":"no handshake within 0.2 s"})
    );
    assert_eq!(raw.recv().await, None);
    // Not even the first byte: closed without a word.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty());

    assert_eq!(fleet.store.list_servers().await.unwrap(), vec![]);
    shutdown.cancel();
    server.await.unwrap();
}

#[tokio::test]
async fn an_event_stream_that_never_ends_its_line_is_abandoned_at_the_cap() {
    use molar_controller::client::{Client, ClientError, MAX_EVENT};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // An HTTPS server with the controller's certificate answering any request with an event
    // stream whose first line never ends.
    let dir = tempfile::tempdir().unwrap();
    let pki = molar_controller::pki::load_or_create(dir.path(), &[]).unwrap();
    let tls = molar_controller::pki::server_config(&pki, &[b"http/1.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .unwrap();
        let mut req = vec![0u8; 4096];
        let _ = s.read(&mut req).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ")
            .await
            .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        // Until the client hangs up (or far past the cap, which would be the bug).
        while counter.load(Ordering::SeqCst) < 64 * MAX_EVENT {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let ca = std::fs::read(&pki.ca_pem_path).unwrap();
    let client = Client::new(
        &format!("https://{addr}"),
        molar_protocol::Secret::new("x"),
        &ca,
    )
    .unwrap();
    let mut events = client.task_events("t-1").await.unwrap();
    let err = events.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::EventTooLong { max, .. } if max == MAX_EVENT),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds 1048576 bytes"), "{err}");
    assert!(events.next().await.is_none());
    drop(events);
    server.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) < 64 * MAX_EVENT);
}

#[tokio::test]
async fn every_api_rejection_has_the_json_error_shape() {
    let c = controller().await;
    let good = fake_agent(&c, 1).await;
    let sid = good.welcome.server_id.clone();
    let auth = admin(&c);
    // A body over the limit (axum's 2 MiB) is refused before it is parsed.
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(3 << 20));
    let (status, body) = raw_api(
        &c,
        reqwest::Method::POST,
        "/tokens",
        Some(&auth),
        Some(&huge),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["msg"]
            .as_str()
            .unwrap()
            .contains("length limit")
    );
    // A path segment that is not UTF-8 once decoded.
    for path in ["/servers/%FF", "/servers/%FF/logs", "/tasks/%C3%28"] {
        let (status, body) = raw_api(&c, reqwest::Method::GET, path, Some(&auth), None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
        assert!(body["error"]["msg"].is_string(), "{path}: {body}");
    }
    // The bearer scheme is case-insensitive and may be followed by several spaces.
    let token = c.running.admin_token.expose();
    for a in [
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer    {token}"),
    ] {
        let (status, body) = raw_api(&c, reqwest::Method::GET, "/servers", Some(&a), None).await;
        assert_eq!(status, 200, "{body}");
    }
    for a in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        token.to_owned(),
    ] {
        let (status, body) = raw_api(&c, reqwest::Method::GET, "/servers", Some(&a), None).await;
        assert_eq!(
            (status, body),
            (
                401,
                json!({"error":{"msg":"invalid admin token","code":"unauthorized"}})
            )
        );
    }
    assert_eq!(c.client.tokens().await.unwrap().len(), 1);
    still_answers(&c, &sid).await;
}

/// What hyper refuses before the router sees the request (a request line it cannot parse,
/// a path over its limit, too many or too large headers) is answered in the JSON shape too.
#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = controller().await;
    let headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        ("GARBAGE\r\n\r\n".to_owned(), 400),
        (
            format!(
                "GET /api/v1/{} HTTP/1.1\r\nhost: x\r\n\r\n",
                "p".repeat(70_000)
            ),
            414,
        ),
        (
            format!("GET /api/v1/servers HTTP/1.1\r\nhost: x\r\n{headers}\r\n"),
            431,
        ),
    ];
    for (request, status) in cases {
        let mut tls = tls_stream(c.running.api_addr, &c.running.ca_pem_path).await;
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut answer),
        )
        .await
        .expect("the answer within 10 s");
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{body}");
        assert!(v["error"]["msg"].is_string());
    }
    // Ordinary requests on the same listener are unchanged.
    assert_eq!(c.client.servers().await.unwrap().len(), 0);
}
