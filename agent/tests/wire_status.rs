//! What the agent writes on the wire for a task, seen by a controller written from the
//! protocol text alone: the handshake, the immediate acceptance, then `task_status` commands
//! whose `running` ones always carry `percent` and `eta` (`null` while unknown).

use molar_agent::logfwd::LogBuffer;
use molar_agent::session::{Agent, AgentConfig, Methods};
use molar_agent::tasks::{Task, TaskContext, TaskFailure};
use molar_agent::tls::Trust;
use molar_protocol::Secret;
use molar_protocol::methods::Empty;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Reports some progress without an estimate, then finishes.
struct NoEstimate;

impl Task for NoEstimate {
    type Params = Empty;
    async fn run(&self, _: Empty, ctx: TaskContext) -> Result<Value, TaskFailure> {
        ctx.set_progress(10.0, None);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        ctx.set_progress(60.0, None);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Ok(json!({"done": true}))
    }
}

#[tokio::test]
async fn running_statuses_always_carry_percent_and_eta() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut methods = Methods::new();
    methods.task("test.no_estimate", NoEstimate);
    let agent = Agent::new(
        AgentConfig::new(addr, Trust::Insecure, Secret::new("t")),
        methods,
        LogBuffer::new(1),
    );
    let stop = CancellationToken::new();
    let session = tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.session(&stop).await }
    });
    let (sock, _) = listener.accept().await.unwrap();
    let (rd, mut wr) = sock.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the agent went quiet")
            .unwrap()
            .expect("the agent closed");
        serde_json::from_str(&line).unwrap()
    };
    let hello = next().await;
    assert_eq!(hello["method"], "handshake");
    let welcome = json!({"version": "v1", "id": hello["id"],
        "result": {"server_id": "srv-1", "protocol": "v1"}});
    wr.write_all(format!("{welcome}\n").as_bytes())
        .await
        .unwrap();
    let start = json!({"version": "v1", "id": "c1", "method": "test.no_estimate",
        "params": {"task_id": "t-1"}});
    wr.write_all(format!("{start}\n").as_bytes()).await.unwrap();

    let mut running = 0;
    loop {
        let m = next().await;
        if m["id"] == "c1" {
            assert_eq!(m["result"], json!({"task_id": "t-1", "state": "running"}));
            continue;
        }
        if m["method"] != "task_status" {
            continue;
        }
        let p = &m["params"];
        let ack = json!({"version": "v1", "id": m["id"], "result": {}});
        wr.write_all(format!("{ack}\n").as_bytes()).await.unwrap();
        if p["state"] == "running" {
            running += 1;
            assert!(p["percent"].is_number(), "running without percent: {p}");
            assert!(
                p.get("eta").is_some_and(|e| e.is_null() || e.is_u64()),
                "running without eta: {p}"
            );
            continue;
        }
        assert_eq!(p["state"], "complete", "{p}");
        assert_eq!(p["result"], json!({"done": true}));
        break;
    }
    assert!(running >= 1, "no running status was sent");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
}
