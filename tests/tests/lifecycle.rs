//! The lifecycle through the API: an agent that connects for the first time walks
//! initial → discovery → available on its own, with a history that says why; the operator's
//! maintenance transitions are compare-and-sets refused from the wrong state; hostile input
//! to every lifecycle route gets a clear error and changes nothing; the state-change stream
//! follows live and resumes by `Last-Event-ID`; the history survives a controller restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use molar_agent::tls::Trust;
use molar_controller::lifecycle::Cause;
use molar_controller::store::{ServerState, Transition};
use molar_tests::inproc::{Controller, TestAgent, connected_server, eventually};
use serde_json::Value;
use std::time::Duration;

type S = ServerState;

fn walk(h: &[Transition]) -> Vec<(Option<S>, S, Option<Cause>)> {
    h.iter().map(|t| (t.from, t.to, t.cause)).collect()
}

/// Reads SSE `transition` events from `resp` until `n` were seen (or 10 s passed).
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(i64, Transition)> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive within 10 s")
            .expect("the stream stays open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut data, mut event) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                assert_eq!(event.as_deref(), Some("transition"));
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_walk_the_lifecycle_with_a_history_and_refuse_what_the_table_refuses() {
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let agent = TestAgent::start(
        &ctl.agent_addr(),
        Trust::CaFile(ctl.ca_pem()),
        token,
        "LC-1",
    );
    let client = ctl.client();
    let id = connected_server(&client, "LC-1").await;

    // Discovery runs on its own: inventory stored → available.
    eventually(20, "discovery to make the server available", || async {
        let v = client.server(&id, false).await.ok()?;
        (v.server.state == S::Available).then_some(())
    })
    .await;
    let h = client.history(&id, 0, 100).await.unwrap();
    assert_eq!(
        walk(&h.transitions),
        [
            (None, S::Initial, None),
            (Some(S::Initial), S::Discovery, Some(Cause::Discover)),
            (Some(S::Discovery), S::Available, Some(Cause::Discovered)),
        ]
    );
    assert_eq!(h.transitions[2].reason, "discovered: inventory stored");
    assert_eq!(h.next_after, h.transitions[2].id);

    // Follow the fleet's stream from the start, and take the server into maintenance.
    let https = ctl.https();
    let api = ctl.running().api_url.clone();
    let admin = ctl.running().admin_token.expose().to_owned();
    let stream = https
        .get(format!("{api}/api/v1/transitions/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let t = client
        .maintenance(&id, true, Some("fan replaced"))
        .await
        .unwrap();
    assert_eq!((t.from, t.to), (Some(S::Available), S::Maintenance));
    let seen = read_events(stream, 4).await;
    assert_eq!(
        seen.iter().map(|(_, t)| t.to).collect::<Vec<_>>(),
        [S::Initial, S::Discovery, S::Available, S::Maintenance],
        "the stream replays the history and then follows"
    );
    assert!(seen.iter().all(|(id, t)| *id == t.id));
    assert_eq!(seen[3].1.reason, "fan replaced");

    // The table refuses what the diagram has no edge for, and nothing is recorded.
    let e = client.maintenance(&id, true, None).await.unwrap_err();
    assert_eq!(e.code(), "illegal_transition", "{e}");
    assert!(
        e.to_string()
            .contains("a server in state maintenance cannot be maintenance_on"),
        "{e}"
    );
    assert_eq!(
        client.history(&id, 0, 100).await.unwrap().transitions.len(),
        4
    );

    // Resuming by Last-Event-ID gives exactly what came after it.
    let t = client.maintenance(&id, false, None).await.unwrap();
    assert_eq!((t.to, t.reason.as_str()), (S::Available, "operator"));
    let resumed = https
        .get(format!("{api}/api/v1/transitions/stream"))
        .bearer_auth(&admin)
        .header("Last-Event-ID", seen[3].0.to_string())
        .send()
        .await
        .unwrap();
    let more = read_events(resumed, 1).await;
    assert_eq!(more[0].1, t);

    // Hostile input: a clear error naming the problem, and nothing changes.
    let post = |path: String, body: &'static str| {
        let (https, admin) = (https.clone(), admin.clone());
        async move {
            let r = https
                .post(path)
                .bearer_auth(admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
                body,
            )
        }
    };
    let m = format!("{api}/api/v1/servers/{id}/maintenance");
    for (body, status, code) in [
        ("{", 400, "invalid_request"),
        ("[]", 400, "invalid_params"),
        (r#"{"on":"yes"}"#, 400, "invalid_params"),
        (r#"{"on":true,"force":true}"#, 400, "invalid_params"),
        (r#"{"reason":"x"}"#, 400, "invalid_params"),
        (r#"{"on":true,"reason":"a\nforged"}"#, 400, "invalid_params"),
        (r#"{"on":true,"reason":"   "}"#, 400, "invalid_params"),
    ] {
        let (s, c, b) = post(m.clone(), body).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}: {b}");
    }
    for (body, code) in [
        (
            r#"{"on":false,"firmware":{"components":[]}}"#,
            "invalid_params",
        ),
        (
            r#"{"on":true,"firmware":{"components":[],"yolo":1}}"#,
            "invalid_params",
        ),
        (r#"{"on":true,"firmware":"all"}"#, "invalid_params"),
    ] {
        let (s, c, b) = post(m.clone(), body).await;
        assert_eq!((s, c.as_str()), (400, code), "{body}: {b}");
    }
    // A plan is run in maintenance: the answer names its task.
    let req = molar_controller::api::MaintenanceRequest {
        on: true,
        reason: Some("firmware baseline".into()),
        firmware: Some(
            serde_json::from_value(serde_json::json!({"components": [], "dry_run": true})).unwrap(),
        ),
    };
    let a = client.maintenance_with(&id, &req).await.unwrap();
    assert_eq!(a.transition.to, S::Maintenance);
    let task = client
        .task(a.firmware_task.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(task.method, "decom.firmware_secure");
    client.maintenance(&id, false, None).await.unwrap();
    let long = format!(r#"{{"on":true,"reason":"{}"}}"#, "x".repeat(5000));
    let r = https
        .post(&m)
        .bearer_auth(&admin)
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, c, _) = post(
        format!("{api}/api/v1/servers/srv-nope/maintenance"),
        r#"{"on":true}"#,
    )
    .await;
    assert_eq!((s, c.as_str()), (404, "not_found"));
    let long_id = format!("server={}", "s".repeat(200));
    for q in ["after=-1", "after=x", "limit=y", "server=", &long_id] {
        let r = https
            .get(format!("{api}/api/v1/transitions?{q}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let r = https
            .get(format!("{api}/api/v1/transitions/stream?{q}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "stream {q}");
    }
    let r = https
        .get(format!("{api}/api/v1/transitions/stream"))
        .bearer_auth(&admin)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = https
        .get(format!("{api}/api/v1/servers/srv-nope/history"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = https
        .get(format!("{api}/api/v1/transitions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the admin token is needed");
    // Limits clamp rather than fail.
    let p = client.transitions(Some(&id), 0, 0).await.unwrap();
    assert_eq!(p.transitions.len(), 1);
    assert_eq!(
        client.history(&id, 0, 100).await.unwrap().transitions.len(),
        7
    );

    // The history is the store's: a restart keeps it, and a reconnection adds nothing.
    drop(agent);
    ctl.restart().await;
    let client = ctl.client();
    let h = client.history(&id, 0, 100).await.unwrap();
    assert_eq!(h.transitions.len(), 7);
    assert_eq!(
        client.server(&id, false).await.unwrap().server.state,
        S::Available
    );
}
