//! `GET /api/v1/openapi.json` describes the API the router serves, in both directions: every
//! route the code declares (`.route(...)` under `controller/src/api/`) is in the document
//! with each of its methods, and every operation the document describes reaches a handler
//! (not the "no such endpoint" fallback, not 405) when called with the admin token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::inproc::Controller;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// `(METHOD, path)` of every route declared in the API's source, with the prefix it is
/// mounted under (`/api/v1` except the top-level `/metrics`, `/media/` and seed 001's `/obmd`).
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/src/api");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        // `.route(\n "PATH",\n get(a).post(b),\n)`: whitespace-insensitive.
        let flat: String = src.split_whitespace().collect::<Vec<_>>().join("");
        for chunk in flat.split(".route(\"").skip(1) {
            let (route, rest) = chunk.split_once('"').unwrap();
            let handlers = rest.trim_start_matches(',');
            let prefix = if route == "/metrics"
                || route.starts_with("/obmd")
                || route.starts_with("/media/")
            {
                ""
            } else {
                "/api/v1"
            };
            // The handler chain ends at the route call's closing parenthesis: count them.
            let mut depth = 1i32;
            let mut end = handlers.len();
            for (i, c) in handlers.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let chain = &handlers[..end];
            for m in ["get", "post", "put", "delete", "patch"] {
                let called = chain.starts_with(&format!("{m}("))
                    || chain.contains(&format!(".{m}("))
                    || chain.contains(&format!("::{m}("));
                if called {
                    out.insert((m.to_uppercase(), format!("{prefix}{route}")));
                }
            }
        }
    }
    out
}

fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            out.insert((m.to_uppercase(), path.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_router_describe_the_same_routes() {
    let c = Controller::start().await;
    let https = c.https();
    let api = c.running().api_url.clone();
    let token = c.running().admin_token.expose().to_owned();

    let r = https
        .get(format!("{api}/api/v1/openapi.json"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every operation answers with something, and every error with the documented shape.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{m} {path} has no summary");
            assert!(
                op["responses"]["default"].is_object(),
                "{m} {path}: no error response"
            );
        }
    }

    let declared = declared_routes();
    assert!(
        declared.len() > 30,
        "the source scan found only {declared:?}"
    );
    let described = described(&doc);
    let undocumented: Vec<_> = declared.difference(&described).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );

    for (method, path) in &described {
        let url = format!(
            "{api}{}",
            path.replace("{id}", "srv-nope")
                .replace("{task_id}", "t-nope")
                .replace("{rid}", "999999")
                .replace("{node_id}", "node-nope")
        );
        let req = https
            .request(method.parse().unwrap(), &url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}");
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let streaming = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            // A live stream (the fleet's state changes) answers and never ends: routed.
            assert_eq!(status, 200, "{method} {path}");
            continue;
        }
        let body = r.text().await.unwrap_or_default();
        assert_ne!(
            status, 405,
            "{method} {path} is described but not routed: {body}"
        );
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} is described but not routed: {body}"
        );
    }
}

/// Which `molar` command drives each API route (seed 004: a CLI that covers the API, not
/// roughly). A route no command drives says who it is for instead, after `-`.
const CLI: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/servers", "servers"),
    ("POST", "/api/v1/servers", "server add"),
    ("GET", "/api/v1/servers/{id}", "server"),
    ("DELETE", "/api/v1/servers/{id}", "server remove"),
    ("POST", "/api/v1/servers/{id}/call", "call"),
    ("POST", "/api/v1/servers/{id}/tasks", "task start"),
    ("GET", "/api/v1/servers/{id}/tasks", "tasks"),
    ("GET", "/api/v1/servers/{id}/logs", "logs"),
    ("POST", "/api/v1/servers/{id}/reenrol", "server reenrol"),
    ("POST", "/api/v1/servers/{id}/qc", "qc"),
    ("POST", "/api/v1/servers/{id}/control", "power"),
    ("GET", "/api/v1/servers/{id}/requests", "requests"),
    ("GET", "/api/v1/requests/{rid}", "power"),
    (
        "POST",
        "/api/v1/servers/{id}/condition/serverControl",
        "- seed 000's clients",
    ),
    ("GET", "/api/v1/servers/{id}/status", "- seed 000's clients"),
    (
        "POST",
        "/api/v1/servers/{id}/console/token",
        "console-token",
    ),
    (
        "DELETE",
        "/api/v1/servers/{id}/console/token",
        "console-token",
    ),
    ("GET", "/api/v1/servers/{id}/console/log", "console"),
    ("GET", "/api/v1/servers/{id}/console", "console"),
    ("GET", "/api/v1/servers/{id}/history", "history"),
    ("POST", "/api/v1/servers/{id}/maintenance", "maintenance"),
    ("POST", "/api/v1/servers/{id}/claim", "claim"),
    ("POST", "/api/v1/servers/{id}/release", "release"),
    ("GET", "/api/v1/servers/{id}/workflows", "workflows"),
    ("POST", "/api/v1/servers/{id}/retry", "retry"),
    ("GET", "/api/v1/bmcs", "bmc list"),
    ("GET", "/api/v1/servers/{id}/bmc", "bmc show"),
    ("PUT", "/api/v1/servers/{id}/bmc", "bmc set"),
    (
        "POST",
        "/api/v1/servers/{id}/bmc/reveal",
        "bmc show --reveal",
    ),
    ("POST", "/api/v1/servers/{id}/bmc/rotate", "bmc rotate"),
    ("GET", "/api/v1/transitions", "transitions"),
    (
        "GET",
        "/api/v1/transitions/stream",
        "- SSE followers (the CLI's --watch pages)",
    ),
    ("GET", "/api/v1/events", "events"),
    ("GET", "/api/v1/tasks/{task_id}", "task show"),
    ("GET", "/api/v1/tasks/{task_id}/events", "task start"),
    ("POST", "/api/v1/tokens", "token create"),
    ("GET", "/api/v1/tokens", "token list"),
    ("DELETE", "/api/v1/tokens/{id}", "token revoke"),
    ("POST", "/api/v1/tokens/{id}/rotate", "token rotate"),
    (
        "GET",
        "/api/v1/openapi.json",
        "- API clients (this document)",
    ),
    ("GET", "/metrics", "- Prometheus"),
    (
        "GET",
        "/media/{name}",
        "- BMCs' virtual media (molar bootdev SERVER cd --media URL)",
    ),
    ("PUT", "/obmd/node/{node_id}", "- seed 001's clients"),
    ("DELETE", "/obmd/node/{node_id}", "- seed 001's clients"),
    ("POST", "/obmd/node/{node_id}/token", "- seed 001's clients"),
    (
        "DELETE",
        "/obmd/node/{node_id}/token",
        "- seed 001's clients",
    ),
    (
        "GET",
        "/obmd/node/{node_id}/console",
        "- seed 001's clients",
    ),
    (
        "POST",
        "/obmd/node/{node_id}/power_cycle",
        "- seed 001's clients",
    ),
    (
        "POST",
        "/obmd/node/{node_id}/power_on",
        "- seed 001's clients",
    ),
    (
        "POST",
        "/obmd/node/{node_id}/power_off",
        "- seed 001's clients",
    ),
    (
        "PUT",
        "/obmd/node/{node_id}/boot_device",
        "- seed 001's clients",
    ),
    (
        "GET",
        "/obmd/node/{node_id}/power_status",
        "- seed 001's clients",
    ),
];

#[test]
fn the_cli_covers_every_route() {
    let declared = declared_routes();
    let mapped: BTreeSet<(String, String)> = CLI
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(mapped.len(), CLI.len(), "a route is mapped twice");
    let unmapped: Vec<_> = declared.difference(&mapped).collect();
    assert!(
        unmapped.is_empty(),
        "routes no molar command drives (add one, or say who the route is for): {unmapped:?}"
    );
    let gone: Vec<_> = mapped.difference(&declared).collect();
    assert!(gone.is_empty(), "mapped routes the router lacks: {gone:?}");
    let molar = molar_tests::bins::bin("molar");
    for (m, p, cmd) in CLI {
        if let Some(who) = cmd.strip_prefix("- ") {
            assert!(!who.is_empty(), "{m} {p}: say who it is for");
            continue;
        }
        let out = std::process::Command::new(&molar)
            .args(cmd.split(' '))
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{m} {p}: `molar {cmd} --help` fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
