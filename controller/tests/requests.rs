//! Queued control requests: one at a time per server in queue order, servers in parallel,
//! states, paths and messages persisted, a restart mid-request, seed 000's shapes byte for
//! byte, the CLI, and malformed and hostile input on every route.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::FutureExt;
use molar_controller::api::ControlRequest;
use molar_controller::store::{RequestRecord, RequestState};
use molar_controller::{ServeConfig, start};
use molar_protocol::{ErrorBody, Handler, PeerHandle};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the gated agent was asked, in order.
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// An agent whose BMC methods answer only when the test adds a permit to `gate`, recording
/// each call as it arrives; everything else as [`fake_handler`].
fn gated_handler(gate: Arc<Semaphore>, calls: Calls) -> Arc<dyn Handler> {
    let fallback = fake_handler();
    Arc::new(move |peer: &PeerHandle, method: String, params: Value| {
        let gate = gate.clone();
        let calls = calls.clone();
        let fallback = fallback.clone();
        let peer = peer.clone();
        async move {
            let answer = match method.as_str() {
                "chassis.power" => {
                    let action = params["action"].clone();
                    json!({"action": action, "status": {"power_on": true,
                        "power_overload": false, "power_interlock": false, "power_fault": false,
                        "power_control_fault": false, "restore_policy": "previous",
                        "intrusion": false, "drive_fault": false, "cooling_fault": false}})
                }
                "chassis.boot_device" => json!({"device": params["device"],
                    "persistent": params["persistent"], "efi": params["efi"]}),
                "bmc.reset" => json!({"kind": "cold"}),
                _ => return fallback.handle(&peer, method, params).await,
            };
            calls.lock().unwrap().push((method, params));
            let permit = gate
                .acquire()
                .await
                .map_err(|_| ErrorBody::new("busy", "closed"))?;
            permit.forget();
            Ok(answer)
        }
        .boxed()
    })
}

async fn queue(c: &Controller, sid: &str, action: &str, parameter: Option<&str>) -> RequestRecord {
    let req = ControlRequest {
        action: action.into(),
        parameter: parameter.map(str::to_owned),
        persistent: false,
        efi: false,
    };
    let q = c.client.control(sid, &req).await.unwrap();
    assert_eq!(q.id, q.request.id);
    assert_eq!(q.request.state, RequestState::Pending);
    q.request
}

async fn state_of(c: &Controller, id: i64) -> RequestState {
    c.client.request(id).await.unwrap().state
}

/// Polls until request `id` is in `state`, panicking after 10 s.
async fn until_state(c: &Controller, id: i64, state: RequestState) -> RequestRecord {
    for _ in 0..500 {
        let r = c.client.request(id).await.unwrap();
        if r.state == state {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("request {id} never became {}", state.as_str());
}

#[tokio::test]
async fn requests_run_one_at_a_time_per_server_in_queue_order() {
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(0));
    let calls: Calls = Arc::default();
    let a = fake_agent_with(&c, 1, gated_handler(gate.clone(), calls.clone())).await;
    let b = fake_agent_with(&c, 2, gated_handler(gate.clone(), calls.clone())).await;
    let (sa, sb) = (a.welcome.server_id.clone(), b.welcome.server_id.clone());

    let r1 = queue(&c, &sa, "set_power_state", Some("status")).await;
    let r2 = queue(&c, &sa, "set_power_state", Some("off")).await;
    let r3 = queue(&c, &sa, "set_next_boot_device", Some("pxe")).await;
    until_state(&c, r1.id, RequestState::Active).await;
    // The others wait while the first runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&c, r2.id).await, RequestState::Pending);
    assert_eq!(state_of(&c, r3.id).await, RequestState::Pending);
    assert_eq!(calls.lock().unwrap().len(), 1);

    // Another server's request runs beside them.
    let rb = queue(&c, &sb, "bmc_reset", None).await;
    until_state(&c, rb.id, RequestState::Active).await;
    eventually("the second server's call", || {
        calls.lock().unwrap().len() == 2
    })
    .await;

    gate.add_permits(4);
    let done = until_state(&c, r3.id, RequestState::Succeeded).await;
    assert_eq!(
        done.message.as_deref(),
        Some("server next boot device set successful: pxe")
    );
    let d1 = until_state(&c, r1.id, RequestState::Succeeded).await;
    let d2 = until_state(&c, r2.id, RequestState::Succeeded).await;
    until_state(&c, rb.id, RequestState::Succeeded).await;
    assert_eq!(d1.message.as_deref(), Some("server power state: on"));
    assert_eq!(
        d2.message.as_deref(),
        Some("server power state set successful: off")
    );
    for r in [&d1, &d2, &done] {
        assert_eq!(r.path, Some(molar_controller::store::RequestPath::InBand));
        assert!(r.started_ms.is_some() && r.finished_ms.is_some());
    }
    // In queue order: each started after the one before finished.
    assert!(d1.finished_ms.unwrap() <= d2.started_ms.unwrap());
    assert!(d2.finished_ms.unwrap() <= done.started_ms.unwrap());
    let seen: Vec<(String, Value)> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m != "bmc.reset")
        .cloned()
        .collect();
    assert_eq!(
        seen,
        vec![
            ("chassis.power".into(), json!({"action": "status"})),
            ("chassis.power".into(), json!({"action": "off"})),
            (
                "chassis.boot_device".into(),
                json!({"device": "pxe", "persistent": false, "efi": false})
            ),
        ]
    );
    // Newest first, and bounded by the limit.
    let listed = c.client.requests(&sa, 100).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![r3.id, r2.id, r1.id]
    );
    assert_eq!(c.client.requests(&sa, 1).await.unwrap().len(), 1);

    // The agent's own error fails the request with its message.
    let fail = queue(&c, &sb, "identify", Some("5")).await;
    let f = until_state(&c, fail.id, RequestState::Failed).await;
    assert_eq!(
        f.message.as_deref(),
        Some(&*format!(
            "no path to server {sb}: the agent cannot do this and no BMC address is known"
        ))
    );
    drop((a, b));
    c.shutdown.cancel();
    c.running.join().await;
}

#[tokio::test]
async fn a_server_without_agent_or_bmc_fails_with_the_reason() {
    let c = controller().await;
    let a = fake_agent(&c, 3).await;
    let sid = a.welcome.server_id.clone();
    a.peer.close(None).await;
    let _ = a.task.await;
    eventually("the agent to be gone", || {
        !c.running.fleet.is_connected(&sid)
    })
    .await;
    let r = queue(&c, &sid, "set_power_state", Some("on")).await;
    let r = until_state(&c, r.id, RequestState::Failed).await;
    assert_eq!(
        r.message.as_deref(),
        Some(&*format!(
            "no path to server {sid}: no agent is connected and no BMC address is known"
        ))
    );
    assert_eq!(r.path, None);
}

/// A controller on `dir` (the state of an earlier one).
async fn restart(dir: &std::path::Path) -> (molar_controller::Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = start(ServeConfig::loopback(dir), shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

#[tokio::test]
async fn a_restart_mid_request_fails_the_active_one_and_runs_the_pending_ones() {
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(0));
    let calls: Calls = Arc::default();
    let a = fake_agent_with(&c, 4, gated_handler(gate.clone(), calls.clone())).await;
    let sid = a.welcome.server_id.clone();
    let off = queue(&c, &sid, "set_power_state", Some("off")).await;
    let status = queue(&c, &sid, "set_power_state", Some("status")).await;
    let reset = queue(&c, &sid, "bmc_reset", None).await;
    let pxe = queue(&c, &sid, "set_next_boot_device", Some("pxe")).await;
    until_state(&c, off.id, RequestState::Active).await;

    // Stopped with `off` active (the agent never answered) and two pending.
    c.shutdown.cancel();
    let dir = c.dir;
    c.running.join().await;
    drop(a);

    let (running, shutdown) = restart(dir.path()).await;
    let client = running.client().unwrap();
    let wait_final = |id: i64| {
        let client = &client;
        async move {
            for _ in 0..500 {
                let r = client.request(id).await.unwrap();
                if r.state.is_final() {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("request {id} never finished");
        }
    };
    let off = wait_final(off.id).await;
    assert_eq!(off.state, RequestState::Failed);
    // A power change is re-checked; with no BMC to read it from, it fails saying so.
    assert_eq!(
        off.message.as_deref(),
        Some(
            "controller restarted while the request was active; the power state could not be \
             re-checked: no BMC address is known to read the power state"
        )
    );
    // The pending ones ran, in order (no agent and no BMC now: failed, saying why).
    let status = wait_final(status.id).await;
    let reset = wait_final(reset.id).await;
    let pxe = wait_final(pxe.id).await;
    for r in [&status, &reset, &pxe] {
        assert_eq!(r.state, RequestState::Failed);
        assert!(
            r.message
                .as_deref()
                .unwrap()
                .starts_with("no path to server"),
            "{r:?}"
        );
    }
    assert!(status.finished_ms.unwrap() <= pxe.started_ms.unwrap());
    shutdown.cancel();
    running.join().await;

    // An active read is run again after a restart rather than failed.
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(0));
    let a = fake_agent_with(&c, 5, gated_handler(gate.clone(), Arc::default())).await;
    let sid = a.welcome.server_id.clone();
    let read = queue(&c, &sid, "set_power_state", Some("status")).await;
    until_state(&c, read.id, RequestState::Active).await;
    c.shutdown.cancel();
    let dir = c.dir;
    c.running.join().await;
    drop(a);
    let (running, shutdown) = restart(dir.path()).await;
    let client = running.client().unwrap();
    let mut r = client.request(read.id).await.unwrap();
    for _ in 0..500 {
        if r.state.is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = client.request(read.id).await.unwrap();
    }
    assert_eq!(r.state, RequestState::Failed);
    assert!(
        r.message
            .as_deref()
            .unwrap()
            .starts_with("no path to server"),
        "ran again rather than failed for the restart: {r:?}"
    );
    shutdown.cancel();
    running.join().await;

    // A BMC reset left active (as by a controller killed mid-request) is failed, never
    // repeated.
    let reset = {
        let mut db = molar_controller::store::Db::open(dir.path()).unwrap();
        let r = db
            .add_request(
                &sid,
                &molar_controller::store::NewRequest {
                    action: "bmc_reset".into(),
                    parameter: None,
                    persistent: false,
                    efi: false,
                    source: "api".into(),
                },
            )
            .unwrap();
        assert_eq!(db.next_request(&sid).unwrap().unwrap().id, r.id);
        r
    };
    let (running, shutdown) = restart(dir.path()).await;
    let client = running.client().unwrap();
    let r = client.request(reset.id).await.unwrap();
    assert_eq!(r.state, RequestState::Failed);
    assert_eq!(
        r.message.as_deref(),
        Some("controller restarted while the request was active")
    );
    shutdown.cancel();
    running.join().await;
}

/// One request with the raw answer text (the seed's shapes are compared byte for byte).
async fn raw_text(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let http = https(c);
    let mut req = http
        .request(method, format!("{}/api/v1{path}", c.running.api_url))
        .header("authorization", admin(c));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn seed_000_shapes_are_answered_as_the_seed_shows_them() {
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(0));
    let a = fake_agent_with(&c, 6, gated_handler(gate.clone(), Arc::default())).await;
    let sid = a.welcome.server_id.clone();
    let payload = format!(
        r#"{{
  "exclusive": true,
  "parameters": {{
      "asset_id": "{sid}",
      "action": "set_power_state",
      "action_parameter": "on"
  }}
}}"#
    );
    let path = format!("/servers/{sid}/condition/serverControl");
    let (status, text) = raw_text(&c, reqwest::Method::POST, &path, Some(&payload)).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = v["records"]["conditions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = v["records"]["conditions"][0]["createdAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        text,
        format!(
            r#"{{"message":"condition set","records":{{"serverID":"{sid}","conditions":[{{"version":"1.1","client":"","id":"{id}","kind":"serverControl","parameters":{{"asset_id":"{sid}","action":"set_power_state","action_parameter":"on"}},"state":"pending","updatedAt":"0001-01-01T00:00:00Z","createdAt":"{created}"}}]}}}}"#
        )
    );
    assert!(
        created.starts_with("20") && created.ends_with('Z'),
        "{created}"
    );

    // While it runs, the status says active.
    let rid: i64 = id.parse().unwrap();
    until_state(&c, rid, RequestState::Active).await;
    let (_, text) = raw_text(
        &c,
        reqwest::Method::GET,
        &format!("/servers/{sid}/status"),
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["records"]["state"], "active", "{text}");
    assert_eq!(v["records"]["conditions"][0].get("status"), None);

    gate.add_permits(1);
    until_state(&c, rid, RequestState::Succeeded).await;
    let (status, text) = raw_text(
        &c,
        reqwest::Method::GET,
        &format!("/servers/{sid}/status"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    let updated = v["records"]["conditions"][0]["updatedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        text,
        format!(
            r#"{{"records":{{"serverID":"{sid}","state":"succeeded","conditions":[{{"version":"1.1","client":"","id":"{id}","kind":"serverControl","parameters":{{"asset_id":"{sid}","action":"set_power_state","action_parameter":"on"}},"state":"succeeded","status":{{"msg":"server power state set successful: on"}},"updatedAt":"{updated}","createdAt":"{created}"}}]}}}}"#
        )
    );
    // RFC3339Nano drops trailing zeros ("45.56Z" is 45.560): compare with the fraction
    // padded to nine digits.
    let sortable = |t: &str| {
        let t = t.trim_end_matches('Z');
        let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
        format!("{secs}.{frac:0<9}")
    };
    assert!(
        sortable(&updated) >= sortable(&created),
        "{updated} < {created}"
    );
    // The same request through molar's own API.
    let r = c.client.request(rid).await.unwrap();
    assert_eq!(r.source, "condition");
    assert_eq!(r.action, "set_power_state");
}

#[tokio::test]
async fn the_cli_queues_waits_and_fails_with_the_request() {
    let c = controller().await;
    // The fake agent answers chassis.power with an error, bmc.reset too.
    let a = fake_agent(&c, 7).await;
    let sid = a.welcome.server_id.clone();
    let (code, out, err) = molar(&c, &["power", &sid, "status", "--wait"]).await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(
        out.contains("failed (in_band): in-band: the BMC refused"),
        "{out}"
    );

    let gate = Arc::new(Semaphore::new(10));
    let b = fake_agent_with(&c, 8, gated_handler(gate, Arc::default())).await;
    let sb = b.welcome.server_id.clone();
    let (code, out, err) = molar(
        &c,
        &["bootdev", &sb, "disk", "--persistent", "--efi", "--wait"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "succeeded (in_band): server next boot device set successful: disk (persistent, efi)"
        ),
        "{out}"
    );
    let (code, out, _) = molar(&c, &["power", &sb, "off"]).await;
    assert_eq!(code, 0);
    let id: i64 = out.trim().parse().unwrap();
    let (code, out, _) = molar(&c, &["--json", "requests", &sb, "--wait"]).await;
    assert_eq!(code, 0);
    let listed: Vec<RequestRecord> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].state, RequestState::Succeeded);
    let (code, out, _) = molar(&c, &["requests", &sb]).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(out.contains("server power state set successful: off"));
    let (code, _, err) = molar(&c, &["bmc-reset", "no-such-server", "--wait"]).await;
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = molar(&c, &["identify", &sb, "--off", "--wait"]).await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("no BMC address is known"), "{out}");
}

#[tokio::test]
async fn malformed_and_hostile_input_is_refused_on_every_route() {
    let c = controller().await;
    let a = fake_agent(&c, 9).await;
    let sid = a.welcome.server_id.clone();
    let auth = admin(&c);
    let post = |path: String, body: String| {
        let auth = auth.clone();
        let c = &c;
        async move { raw_api(c, reqwest::Method::POST, &path, Some(&auth), Some(&body)).await }
    };
    let control = format!("/servers/{sid}/control");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad json", "{".into(), 400, "not valid JSON"),
        ("not an object", "[1]".into(), 400, "invalid request body"),
        ("empty", "".into(), 400, "not valid JSON"),
        (
            "unknown action",
            r#"{"action":"format_disks"}"#.into(),
            400,
            "unknown action \"format_disks\"",
        ),
        (
            "wrong parameter",
            r#"{"action":"set_power_state","parameter":"explode"}"#.into(),
            400,
            "not \"explode\"",
        ),
        (
            "missing parameter",
            r#"{"action":"set_next_boot_device"}"#.into(),
            400,
            "needs a parameter",
        ),
        (
            "unknown field",
            r#"{"action":"bmc_reset","force":true}"#.into(),
            400,
            "unknown field `force`",
        ),
        (
            "wrong type",
            r#"{"action":"set_power_state","parameter":1}"#.into(),
            400,
            "invalid type",
        ),
        (
            "wrong flag type",
            r#"{"action":"set_next_boot_device","parameter":"pxe","efi":"yes"}"#.into(),
            400,
            "invalid type",
        ),
        (
            "flag on another action",
            r#"{"action":"set_power_state","parameter":"on","persistent":true}"#.into(),
            400,
            "only to set_next_boot_device",
        ),
        (
            "control characters",
            "{\"action\":\"\\u001b[2J\\r\\nx\"}".into(),
            400,
            "unknown action",
        ),
        (
            "huge",
            format!(r#"{{"action":"{}"}}"#, "x".repeat(3 << 20)),
            413,
            "",
        ),
    ];
    for (what, body, status, needle) in cases {
        let (got, v) = post(control.clone(), body).await;
        assert_eq!(got, status, "{what}: {v}");
        let msg = v["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            msg.len() < 1000,
            "{what}: an error repeats at most a bounded part"
        );
        assert!(!msg.contains('\u{1b}'), "{what}: {msg}");
    }
    // A huge action name is cut in the error.
    let (got, v) = post(
        control.clone(),
        format!(r#"{{"action":"{}"}}"#, "y".repeat(100_000)),
    )
    .await;
    assert_eq!(got, 400);
    assert!(v["error"]["msg"].as_str().unwrap().len() < 300, "{v}");

    // Unknown servers, odd names: 404, nothing queued anywhere.
    for name in [
        "no-such",
        "a%20b",
        "%2e%2e",
        "%1b%5b2J",
        "%E2%80%AE",
        "x%3Fy",
        &"n".repeat(5000),
    ] {
        let body = r#"{"action":"bmc_reset"}"#.to_owned();
        let (got, v) = post(format!("/servers/{name}/control"), body).await;
        assert_eq!(got, 404, "{name}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
        assert!(v["error"]["msg"].as_str().unwrap().len() < 300);
        let (got, _) = raw_api(
            &c,
            reqwest::Method::GET,
            &format!("/servers/{name}/requests"),
            Some(&auth),
            None,
        )
        .await;
        assert_eq!(got, 404, "{name}");
        let (got, _) = raw_api(
            &c,
            reqwest::Method::GET,
            &format!("/servers/{name}/status"),
            Some(&auth),
            None,
        )
        .await;
        assert_eq!(got, 404, "{name}");
        let cond =
            r#"{"exclusive":true,"parameters":{"asset_id":"x","action":"bmc_reset"}}"#.to_owned();
        let (got, _) = post(format!("/servers/{name}/condition/serverControl"), cond).await;
        assert_eq!(got, 404, "{name}");
    }
    // A client's odd names are one path segment.
    let e = c.client.bmc_reset("a/../../tokens").await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(c.client.requests(&sid, 10).await.unwrap().is_empty());

    // Listing: limits checked.
    for q in ["limit=abc", "limit=0", "limit=100000", "limit=-1"] {
        let (got, v) = raw_api(
            &c,
            reqwest::Method::GET,
            &format!("/servers/{sid}/requests?{q}"),
            Some(&auth),
            None,
        )
        .await;
        assert_eq!(got, 400, "{q}: {v}");
    }
    // One request: unknown or malformed ids are not found.
    for rid in ["999999", "-1", "abc", "99999999999999999999999", "%00"] {
        let (got, v) = raw_api(
            &c,
            reqwest::Method::GET,
            &format!("/requests/{rid}"),
            Some(&auth),
            None,
        )
        .await;
        assert_eq!(got, 404, "{rid}: {v}");
    }
    // Seed status without any request: not found.
    let (got, v) = raw_api(
        &c,
        reqwest::Method::GET,
        &format!("/servers/{sid}/status"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(got, 404, "{v}");

    // Seed condition create: strict too.
    let cond = format!("/servers/{sid}/condition/serverControl");
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad json", "{\"exclusive\":".into(), "not valid JSON"),
        (
            "no parameters",
            r#"{"exclusive":true}"#.into(),
            "missing field `parameters`",
        ),
        (
            "another asset",
            r#"{"exclusive":true,"parameters":{"asset_id":"other","action":"bmc_reset"}}"#.into(),
            "is not the server of the path",
        ),
        (
            "unknown action",
            format!(r#"{{"parameters":{{"asset_id":"{sid}","action":"reboot_now"}}}}"#),
            "unknown action",
        ),
        (
            "bad parameter",
            format!(
                r#"{{"parameters":{{"asset_id":"{sid}","action":"set_power_state","action_parameter":"sideways"}}}}"#
            ),
            "not \"sideways\"",
        ),
        (
            "unknown field",
            format!(r#"{{"parameters":{{"asset_id":"{sid}","action":"bmc_reset","fault":1}}}}"#),
            "unknown field `fault`",
        ),
        (
            "exclusive not a bool",
            format!(
                r#"{{"exclusive":"yes","parameters":{{"asset_id":"{sid}","action":"bmc_reset"}}}}"#
            ),
            "invalid type",
        ),
    ];
    for (what, body, needle) in cases {
        let (got, v) = post(cond.clone(), body).await;
        assert_eq!(got, 400, "{what}: {v}");
        assert!(
            v["error"]["msg"].as_str().unwrap().contains(needle),
            "{what}: {v}"
        );
    }
    // Nothing was queued by any of it, and the controller still answers.
    assert!(c.client.requests(&sid, 10).await.unwrap().is_empty());
    // Without the admin token: refused.
    let (got, _) = raw_api(
        &c,
        reqwest::Method::POST,
        &control,
        None,
        Some(r#"{"action":"bmc_reset"}"#),
    )
    .await;
    assert_eq!(got, 401);
    still_answers(&c, &sid).await;
}

#[tokio::test]
async fn a_server_queue_is_bounded() {
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(0));
    let a = fake_agent_with(&c, 10, gated_handler(gate.clone(), Arc::default())).await;
    let sid = a.welcome.server_id.clone();
    let max = molar_controller::requests::OPEN_PER_SERVER_MAX;
    for _ in 0..max {
        queue(&c, &sid, "set_power_state", Some("status")).await;
    }
    let body = r#"{"action":"set_power_state","parameter":"status"}"#;
    let (status, v) = raw_api(
        &c,
        reqwest::Method::POST,
        &format!("/servers/{sid}/control"),
        Some(&admin(&c)),
        Some(body),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "busy");
    assert!(
        v["error"]["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("has {max} requests waiting or running")),
        "{v}"
    );
    // Once they ran, the server takes requests again.
    gate.add_permits(max as usize);
    let last = c.client.requests(&sid, 1).await.unwrap()[0].id;
    until_state(&c, last, RequestState::Succeeded).await;
    queue(&c, &sid, "set_power_state", Some("status")).await;
}

#[tokio::test]
async fn a_server_is_named_by_its_id_or_its_name_even_an_odd_one() {
    let c = controller().await;
    let gate = Arc::new(Semaphore::new(100));
    let a = fake_agent_with(&c, 11, gated_handler(gate, Arc::default())).await;
    let sid = a.welcome.server_id.clone();
    // A name as an operator's `server add` gives it, with characters that mean something
    // in a URL.
    let name = "rack a/node 1?x#☃";
    let db = rusqlite::Connection::open(c.dir.path().join("molar.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE servers SET name = ?1 WHERE id = ?2",
        rusqlite::params![name, sid],
    )
    .unwrap();
    let r = queue(&c, name, "set_power_state", Some("status")).await;
    assert_eq!(r.server_id, sid);
    until_state(&c, r.id, RequestState::Succeeded).await;
    assert_eq!(c.client.requests(name, 10).await.unwrap()[0].id, r.id);
    // The seed's shapes take the name too, in the path and as asset_id.
    let body = json!({"exclusive": true, "parameters": {"asset_id": name,
        "action": "set_next_boot_device", "action_parameter": "disk"}});
    let set = c
        .client
        .condition_server_control(name, &body)
        .await
        .unwrap();
    assert_eq!(set.records.server_id, sid);
    assert_eq!(set.records.conditions[0].parameters.asset_id, sid);
    let rid: i64 = set.records.conditions[0].id.parse().unwrap();
    until_state(&c, rid, RequestState::Succeeded).await;
    let status = c.client.condition_status(name).await.unwrap();
    assert_eq!(status.records.state.as_deref(), Some("succeeded"));
    // A prefix of the name, or the name with another case, is no server.
    for other in ["rack a", "RACK A/NODE 1?X#☃"] {
        let e = c.client.bmc_reset(other).await.unwrap_err();
        assert_eq!(e.code(), "not_found", "{other}: {e}");
    }
}
