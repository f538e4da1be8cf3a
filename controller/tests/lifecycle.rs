//! The controller's happy paths with fake agents (real protocol peers over TLS): tasks and
//! their event stream, superseded connections, logs, a restart on the same state dir, and the
//! `molar` binary's output and exit codes.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_controller::{ServeConfig, start};
use molar_protocol::CloseReason;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_task_streams_its_progress_and_ends_once() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let v = c.client.server(&sid, false).await.unwrap();
    assert_eq!(v.server.state.as_str(), "discovery");
    assert!(v.server.connected);
    assert_eq!(v.server.boot_id.as_deref(), Some("boot-1"));

    let started = c
        .client
        .start_task(&sid, TASK, json!({"steps": 3}))
        .await
        .unwrap();
    assert!(started.task_id.starts_with("t-"));
    let mut events = c.client.task_events(&started.task_id).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = events.next().await {
        seen.push(ev.unwrap());
    }
    let states: Vec<&str> = seen.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["running", "running", "running", "complete"]);
    let percents: Vec<f64> = seen.iter().filter_map(|e| e.percent).collect();
    assert_eq!(percents, [25.0, 50.0, 75.0]);
    assert_eq!(seen[0].eta, Some(3));
    let t = c.client.task(&started.task_id).await.unwrap();
    assert_eq!(t.state.as_str(), "complete");
    assert_eq!(t.result, Some(json!({"ok": true})));
    assert_eq!(t.method, TASK);
    assert_eq!(t.params, json!({"steps": 3}));
    assert!(t.finished_ms.is_some());
    // A finished task's stream replays what is stored and ends.
    let mut again = c.client.task_events(&started.task_id).await.unwrap();
    let mut n = 0;
    while let Some(ev) = again.next().await {
        ev.unwrap();
        n += 1;
    }
    assert_eq!(n, 4);

    // A task the agent refuses ends in error with the agent's message, relayed as is.
    let err = c
        .client
        .start_task(&sid, REFUSED_TASK, json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the fake agent refuses (refused)");
    let tasks = c.client.server_tasks(&sid).await.unwrap();
    assert_eq!(tasks.len(), 2);
    let failed = tasks.iter().find(|t| t.method == REFUSED_TASK).unwrap();
    assert_eq!(failed.state.as_str(), "error");
    assert_eq!(failed.code.as_deref(), Some("refused"));
}

#[tokio::test]
async fn a_reconnect_with_the_session_credential_supersedes_the_first_connection() {
    let c = controller().await;
    let first = fake_agent(&c, 7).await;
    let credential = first.welcome.session.clone().expect("a session credential");
    let mut again = hello(&c.agent_token, 7);
    again.session = Some(credential);
    let second = fake_agent_as(&c, &again).await.unwrap();
    assert_eq!(first.welcome.server_id, second.welcome.server_id);
    // The agent keeps using its credential: none is issued again.
    assert_eq!(second.welcome.session, None);
    assert_eq!(
        first.task.await.unwrap(),
        CloseReason::RemoteFatal("superseded by a new connection".into())
    );
    still_answers(&c, &second.welcome.server_id).await;
    assert_eq!(c.client.servers().await.unwrap().len(), 1);
    assert!(c.running.fleet.is_connected(&second.welcome.server_id));
}

#[tokio::test]
async fn logs_are_stored_in_order_and_paged() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let records: Vec<_> = (0..5)
        .map(|i| {
            json!({"ts_ms": 1000 + i, "level": "info", "target": "t", "msg": format!("m{i}"),
            "fields": {"i": i}})
        })
        .collect();
    a.peer
        .call("log", json!({"records": records, "dropped": 2}))
        .await
        .unwrap();
    let page = c.client.logs(&sid, 0, 3).await.unwrap();
    assert_eq!(
        page.logs.iter().map(|l| l.msg.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    assert_eq!(page.logs[1].fields, Some(json!({"i": 1})));
    let rest = c.client.logs(&sid, page.next_after, 100).await.unwrap();
    assert_eq!(rest.logs.len(), 2);
    assert_eq!(
        c.client
            .server(&sid, false)
            .await
            .unwrap()
            .server
            .logs_dropped,
        2
    );
}

#[tokio::test]
async fn a_restart_on_the_same_state_dir_keeps_everything() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    // A task the agent will finish while the controller is away.
    let started = c
        .client
        .start_task(&sid, TASK, json!({"steps": 0}))
        .await
        .unwrap();
    let fingerprint = c.running.ca_fingerprint.clone();
    c.shutdown.cancel();
    let Controller {
        dir,
        running,
        agent_token,
        ..
    } = c;
    running.join().await;
    assert!(matches!(
        a.task.await.unwrap(),
        CloseReason::RemoteFatal(_) | CloseReason::Eof
    ));

    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::loopback(dir.path()), shutdown.clone())
        .await
        .unwrap();
    assert!(!running.created_ca);
    assert_eq!(running.ca_fingerprint, fingerprint);
    let client = running.client().unwrap();
    let c = Controller {
        dir,
        running,
        shutdown,
        client,
        agent_token,
    };
    // Nobody is connected after a restart; the agent token still works.
    assert!(!c.client.server(&sid, false).await.unwrap().server.connected);
    let b = fake_agent(&c, 1).await;
    assert_eq!(b.welcome.server_id, sid);
    let t = c.client.task(&started.task_id).await.unwrap();
    // The status sent while the controller was down was lost with the connection: the agent
    // resends it after reconnecting, and it is stored once.
    if t.state.as_str() != "complete" {
        for _ in 0..2 {
            b.peer
                .call(
                    "task_status",
                    json!({"task_id": started.task_id, "state": "complete", "result": {"ok": true}, "seq": 1}),
                )
                .await
                .unwrap();
        }
    }
    let t = c.client.task(&started.task_id).await.unwrap();
    assert_eq!(t.state.as_str(), "complete");
    let mut evs = c.client.task_events(&started.task_id).await.unwrap();
    let mut terminal = 0;
    while let Some(ev) = evs.next().await {
        if ev.unwrap().state.is_terminal() {
            terminal += 1;
        }
    }
    assert_eq!(terminal, 1);
    // The next boot, once this connection is gone, hears which tasks are done.
    b.peer.close(None).await;
    let _ = b.task.await;
    let fleet = c.running.fleet.clone();
    eventually("the connection to be gone", || !fleet.is_connected(&sid)).await;
    let again = fake_agent(&c, 1).await;
    assert_eq!(again.welcome.acknowledged_tasks, vec![started.task_id]);
}

#[tokio::test]
async fn the_cli_prints_what_scripts_need_and_exits_with_documented_codes() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    assert_eq!(
        molar(&c, &["call", &sid, "ping", r#"{"x":1}"#]).await,
        (0, "{\"x\":1}\n".into(), String::new())
    );
    let (code, out, _) = molar(&c, &["servers"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&sid) && out.contains("discovery"), "{out}");
    let (code, out, _) = molar(&c, &["task", "start", &sid, TASK, "--wait"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("task t-") && out.contains(" complete in "),
        "{out}"
    );
    let (code, _, err) = molar(&c, &["task", "start", &sid, REFUSED_TASK]).await;
    assert_eq!(
        (code, err.as_str()),
        (5, "molar: the fake agent refuses (refused)\n")
    );
    let (code, _, err) = molar(&c, &["call", "srv-00000000", "ping"]).await;
    assert_eq!(
        (code, err.as_str()),
        (3, "molar: server srv-00000000 not found (not_found)\n")
    );
    let (code, _, _) = molar(&c, &["call", &sid, "ping", "[1]"]).await;
    assert_eq!(code, 2);
    let (code, _, _) = molar(&c, &["frobnicate"]).await;
    assert_eq!(code, 2);
    let (code, tok, _) = molar(&c, &["token", "create", "cli"]).await;
    assert_eq!(code, 0);
    assert_eq!(tok.trim().len(), 64);
    let bad = c.dir.path().join("bad.token");
    std::fs::write(&bad, "nope\n").unwrap();
    let (code, _, err) = molar(&c, &["--token-file", bad.to_str().unwrap(), "servers"]).await;
    assert_eq!(
        (code, err.as_str()),
        (6, "molar: invalid admin token (unauthorized)\n")
    );
    a.peer.close(None).await;
    let fleet = c.running.fleet.clone();
    eventually("the agent to leave", || !fleet.is_connected(&sid)).await;
    let (code, _, _) = molar(&c, &["call", &sid, "ping"]).await;
    assert_eq!(code, 4);
}

#[tokio::test]
async fn plaintext_agents_are_served_only_when_allowed_and_shutdown_tells_agents() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut cfg = ServeConfig::loopback(dir.path());
    cfg.allow_plaintext_agents = true;
    let running = start(cfg, shutdown.clone()).await.unwrap();
    let client = running.client().unwrap();
    let token = client.create_token("lab").await.unwrap().token;
    let tcp = tokio::net::TcpStream::connect(running.agent_addr)
        .await
        .unwrap();
    let (peer, task) =
        molar_protocol::Peer::spawn(tcp, fake_handler(), molar_protocol::PeerConfig::default());
    let welcome = peer
        .call_method::<molar_protocol::catalogue::Handshake>(&hello(token.expose(), 9))
        .await
        .unwrap();
    assert_eq!(
        client
            .call(&welcome.server_id, "ping", json!({"plain": 1}), None)
            .await
            .unwrap(),
        json!({"plain": 1})
    );
    // TLS agents are still served on the same port.
    let tls = tls_stream(running.agent_addr, &running.ca_pem_path).await;
    let (tls_peer, _t) =
        molar_protocol::Peer::spawn(tls, fake_handler(), molar_protocol::PeerConfig::default());
    tls_peer
        .call_method::<molar_protocol::catalogue::Handshake>(&hello(token.expose(), 10))
        .await
        .unwrap();

    shutdown.cancel();
    running.join().await;
    assert_eq!(
        task.await.unwrap(),
        CloseReason::RemoteFatal("controller shutting down".into())
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect_agent(
    agent_addr: std::net::SocketAddr,
    ca: &std::path::Path,
    token: &str,
    handler: std::sync::Arc<dyn molar_protocol::Handler>,
) -> molar_protocol::PeerHandle {
    let tls = tls_stream(agent_addr, ca).await;
    let (peer, _task) =
        molar_protocol::Peer::spawn(tls, handler, molar_protocol::PeerConfig::default());
    peer.call_method::<molar_protocol::catalogue::Handshake>(&hello(token, 1))
        .await
        .unwrap();
    peer
}

#[tokio::test]
async fn task_start_wait_survives_a_controller_restart() {
    use futures::FutureExt;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::new(listen, api, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let client = running.client().unwrap();
    let token = client.create_token("t").await.unwrap().token;
    // The agent only accepts the task and remembers its id; the test sends the statuses.
    let accepted: Arc<Mutex<Option<String>>> = Arc::default();
    let slot = accepted.clone();
    let handler: Arc<dyn molar_protocol::Handler> = Arc::new(
        move |_: &molar_protocol::PeerHandle, _m: String, params: serde_json::Value| {
            // Discovery asks a new server for its inventory first; this agent has none.
            let Some(id) = params["task_id"].as_str().map(str::to_owned) else {
                return async {
                    Err(molar_protocol::ErrorBody::new(
                        "unknown_method",
                        "no inventory here",
                    ))
                }
                .boxed();
            };
            *slot.lock().unwrap() = Some(id.clone());
            async move { Ok(json!({"task_id": id, "state": "running"})) }.boxed()
        },
    );
    let peer = connect_agent(
        listen,
        &running.ca_pem_path,
        token.expose(),
        handler.clone(),
    )
    .await;
    let sid = client.servers().await.unwrap()[0].server.id.clone();

    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["task", "start", &sid, TASK, "--wait"])
        .env_remove("MOLAR_API")
        .env_remove("MOLAR_TOKEN_FILE")
        .env_remove("MOLAR_CA")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let acc = accepted.clone();
    eventually("the agent to get the task", || {
        acc.lock().unwrap().is_some()
    })
    .await;
    let task_id = accepted.lock().unwrap().clone().unwrap();
    let status = |state: &str, seq: u64| {
        json!({"task_id": task_id, "state": state, "percent": 50.0, "eta": 1, "seq": seq,
            "result": if state == "complete" { json!({"ok": true}) } else { json!(null) }})
    };
    peer.call("task_status", status("running", 1))
        .await
        .unwrap();

    // Restart the controller on the same state dir and ports, mid-task.
    shutdown.cancel();
    running.join().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::new(listen, api, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let peer = connect_agent(listen, &running.ca_pem_path, token.expose(), handler).await;
    peer.call("task_status", status("running", 2))
        .await
        .unwrap();
    let mut done = status("complete", 3);
    done.as_object_mut().unwrap().remove("percent");
    done.as_object_mut().unwrap().remove("eta");
    peer.call("task_status", done).await.unwrap();

    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cli.wait_with_output())
        .await
        .expect("the CLI ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(&format!("task {task_id} complete in ")),
        "{stdout}"
    );
    shutdown.cancel();
    running.join().await;
}

#[tokio::test]
async fn a_removed_server_loses_its_connection_tasks_and_logs() {
    use molar_protocol::catalogue::TaskStatusUpdate;
    use molar_protocol::methods::{TaskState, TaskStatus};
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let other = fake_agent(&c, 2).await;
    let sid = a.welcome.server_id.clone();
    a.peer
        .call(
            "log",
            json!({"records": [{"ts_ms": 1, "level": "info", "target": "t", "msg": "m"}]}),
        )
        .await
        .unwrap();
    let running = TaskStatus {
        task_id: "t-agent-own".into(),
        state: TaskState::Running,
        percent: Some(10.0),
        eta: None,
        msg: None,
        code: None,
        result: None,
        seq: 1,
    };
    a.peer
        .call_method::<TaskStatusUpdate>(&running)
        .await
        .unwrap();
    assert_eq!(c.client.server_tasks(&sid).await.unwrap().len(), 1);

    // Not without the admin token.
    let (status, _) = raw_api(
        &c,
        reqwest::Method::DELETE,
        &format!("/servers/{sid}"),
        Some("Bearer wrong"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(c.client.server(&sid, false).await.is_ok());

    let removed = c.client.remove_server(&sid).await.unwrap();
    assert_eq!(removed.id, sid);
    assert!(removed.removed);
    assert_eq!(
        (removed.deleted.tasks, removed.deleted.logs),
        (1, 1),
        "{removed:?}"
    );
    assert_eq!(
        a.task.await.unwrap(),
        CloseReason::RemoteFatal("server removed by the admin".into())
    );
    for gone in [
        c.client.server(&sid, false).await.err(),
        c.client.server_tasks(&sid).await.err(),
        c.client.logs(&sid, 0, 10).await.err(),
        c.client.task("t-agent-own").await.err(),
        c.client.remove_server(&sid).await.err(),
    ] {
        assert_eq!(gone.expect("an error").code(), "not_found");
    }
    assert!(
        !c.client
            .servers()
            .await
            .unwrap()
            .iter()
            .any(|s| s.server.id == sid)
    );
    still_answers(&c, &other.welcome.server_id).await;
}

#[tokio::test]
async fn the_cli_escapes_what_a_hostile_agent_reports() {
    use molar_protocol::catalogue::Handshake;
    use molar_protocol::{Peer, PeerConfig};
    let c = controller().await;
    // Control characters in a hostname are refused at the handshake (`limits.rs`); what
    // passes those bounds, like a bidi override, must still not reach the terminal raw. The
    // log record carries the C0/C1 escapes.
    let hostile = "evil\u{202e}forged";
    let tls = tls_stream(c.running.agent_addr, &c.running.ca_pem_path).await;
    let (peer, _task) = Peer::spawn(
        tls,
        fake_handler(),
        PeerConfig {
            name: "hostile agent".into(),
            id_prefix: "a".into(),
            ..PeerConfig::default()
        },
    );
    let mut params = hello(&c.agent_token, 1);
    params.node.hostname = Some(hostile.into());
    let welcome = peer.call_method::<Handshake>(&params).await.unwrap();
    let sid = welcome.server_id;
    peer.call(
        "log",
        json!({"records": [{"ts_ms": 1, "level": "info", "target": "t\x1b[2J",
            "msg": "ok\r\n1970-01-01 00:00:00 ERROR agent: forged\x1b]0;t\x07",
            "fields": {"k": "\u{9b}31m"}}]}),
    )
    .await
    .unwrap();
    let raw = |s: &str| {
        s.chars()
            .any(|c| c == '\x1b' || c == '\r' || c == '\x07' || c == '\u{9b}' || c == '\u{202e}')
    };
    let escaped = r"evil\u{202e}forged";
    for args in [vec!["servers"], vec!["server", &sid], vec!["logs", &sid]] {
        let (code, out, err) = molar(&c, &args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            !raw(&out),
            "{args:?} printed a raw control character: {out:?}"
        );
        if args[0] != "logs" {
            assert!(out.contains(escaped), "{args:?}: {out}");
        }
    }
    let (_, logs, _) = molar(&c, &["logs", &sid]).await;
    assert_eq!(logs.lines().count(), 1, "{logs}");
    // The record's CR (a control character) was scrubbed before it was stored, its LF kept
    // and escaped when printed.
    assert!(logs.contains("ok\u{fffd}\\n1970-01-01"), "{logs}");
    // --json keeps every value whole and still parses.
    let (code, out, _) = molar(&c, &["--json", "servers"]).await;
    assert_eq!(code, 0);
    assert!(!raw(&out), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["hostname"], hostile);
}

#[tokio::test]
async fn molar_server_remove_prints_what_it_deleted_and_exits_3_for_an_unknown_server() {
    let c = controller().await;
    let a = fake_agent(&c, 1).await;
    let b = fake_agent(&c, 2).await;
    let (code, out, err) = molar(&c, &["server", "remove", &a.welcome.server_id]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "server {} removed (0 tasks, 0 task events, 0 log records, 1 connections)",
            a.welcome.server_id
        )
    );
    let (code, out, err) = molar(&c, &["--json", "server", "remove", &b.welcome.server_id]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], b.welcome.server_id.as_str());
    assert_eq!(v["removed"], true);
    assert_eq!(v["connections"], 1);
    let (code, _, err) = molar(&c, &["server", "remove", &a.welcome.server_id]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("not found") || err.contains("no server"),
        "{err}"
    );
    assert!(c.client.servers().await.unwrap().is_empty());
}
