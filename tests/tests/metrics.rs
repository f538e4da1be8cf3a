//! `/metrics` as Prometheus scrapes it: behind the admin token on the API, and without one on
//! `--metrics-listen`; parsed by the reference parser of the format (the Prometheus project's
//! `prometheus_client` for Python, its OpenMetrics parser), not by string matching alone.
//! After an agent connects, a handshake is refused and a task finishes (the harness's
//! counting task, registered as `decom.qc`), the numbers say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_agent::tls::Trust;
use molar_protocol::catalogue::Qc;
use molar_protocol::{Method, Secret};
use molar_tests::inproc::{Controller, TestAgent, connected_server, eventually};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// Parses exposition `text` with the reference parser and returns its samples as
/// `[{name, labels, value}]`, or `None` (after saying why) where the parser is not installed
/// outside CI.
fn parse(text: &str) -> Option<Vec<Value>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "unit": fam.unit,
                    "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return molar_tests::lab::skip_or_fail(
            "metrics",
            "python3 with prometheus_client (scripts/install-deps installs it) is missing",
        );
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn sample<'a>(samples: &'a [Value], name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))["value"]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_agents_handshakes_tasks_and_api_requests() {
    let c = Controller::start_with_metrics_listener().await;
    let https = c.https();
    let api = &c.running().api_url;
    let token = c.running().admin_token.expose().to_owned();

    // Without the token the API's /metrics is refused like every route.
    let r = https.get(format!("{api}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let agent = TestAgent::start(
        &c.agent_addr(),
        Trust::CaFile(c.ca_pem()),
        c.agent_token().await,
        "SN-METRICS",
    );
    let client = c.client();
    let id = connected_server(&client, "SN-METRICS").await;
    // A refused handshake: a token the controller never issued.
    let intruder = TestAgent::start(
        &c.agent_addr(),
        Trust::CaFile(c.ca_pem()),
        Secret::new("molar_not_a_real_token_000000000000"),
        "SN-INTRUDER",
    );
    let started = client
        .start_task(&id, Qc::NAME, json!({"steps": 2, "step_ms": 10}))
        .await
        .unwrap();
    eventually(20, "the task to finish", || async {
        let t = client.task(&started.task_id).await.unwrap();
        t.state.is_terminal().then_some(())
    })
    .await;
    client.server(&id, false).await.unwrap();

    let scrape = |with_token: bool| {
        let (https, api, token) = (https.clone(), api.clone(), token.clone());
        async move {
            let mut req = https.get(format!("{api}/metrics"));
            if with_token {
                req = req.bearer_auth(token);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
            r.text().await.unwrap()
        }
    };
    let text = eventually(20, "the refused handshake to be counted", || async {
        let text = scrape(true).await;
        text.contains("molar_handshakes_total{result=\"refused\",reason=\"unauthorized\"}")
            .then_some(text)
    })
    .await;
    let Some(samples) = parse(&text) else {
        return;
    };
    assert_eq!(value(&samples, "molar_agents_connected", &[]), 1.0);
    assert!(
        value(
            &samples,
            "molar_handshakes_total",
            &[("result", "accepted")]
        ) >= 1.0
    );
    assert!(
        value(
            &samples,
            "molar_handshakes_total",
            &[("result", "refused"), ("reason", "unauthorized")]
        ) >= 1.0
    );
    let servers: f64 = samples
        .iter()
        .filter(|s| s["name"] == "molar_servers")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(servers, 1.0, "only the admitted agent's server is stored");
    assert_eq!(
        value(
            &samples,
            "molar_tasks",
            &[("method", Qc::NAME), ("state", "complete")]
        ),
        1.0
    );
    assert!(
        value(
            &samples,
            "molar_task_duration_seconds_count",
            &[("method", Qc::NAME), ("state", "complete")]
        ) >= 1.0
    );
    // Requests are labelled by route pattern, never by a server id.
    assert!(
        value(
            &samples,
            "molar_api_requests_total",
            &[
                ("route", "/api/v1/servers/{id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        value(
            &samples,
            "molar_api_requests_total",
            &[("route", "unmatched"), ("status", "401")]
        ) >= 1.0
    );
    assert!(!text.contains(&id), "a server id became a label");
    assert!(
        value(
            &samples,
            "molar_store_query_duration_seconds_count",
            &[("connection", "write")]
        ) >= 1.0
    );
    let fam = samples
        .iter()
        .find(|s| s["family"] == "molar_task_duration_seconds")
        .unwrap();
    assert_eq!(fam["type"], "histogram");
    assert_eq!(fam["unit"], "seconds");
    // No secret in the exposition.
    assert!(!text.contains(&token));

    // The token-less listener serves the same families over plain HTTP, and nothing else.
    let plain = format!("http://{}", c.metrics.unwrap());
    let r = reqwest::get(format!("{plain}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let samples = parse(&text).unwrap();
    assert_eq!(value(&samples, "molar_agents_connected", &[]), 1.0);
    let r = reqwest::get(format!("{plain}/api/v1/servers"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Hostile requests get an answer, not a crash.
    let r = reqwest::Client::new()
        .post(format!("{plain}/metrics"))
        .body(vec![0u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    intruder.stop().await;
    agent.stop().await;
}
