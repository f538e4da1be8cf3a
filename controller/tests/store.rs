//! The store under pressure, through the running controller: a database lock held by another
//! connection delays writes (which then succeed) but never the agents' protocol work, and
//! old logs and task events are pruned.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Held longer than the pings below take, well within the store's busy timeout.
const LOCK_HELD: Duration = Duration::from_secs(3);
/// A ping round trip on loopback takes a millisecond; this is the bound under load.
const PING_BOUND: Duration = Duration::from_millis(500);

// Two workers: with SQLite on the async workers, two blocked writes would stall everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_delays_writes_but_not_pings() {
    let c = controller().await;
    let mut agents = Vec::new();
    for n in 1..=4 {
        agents.push(fake_agent(&c, n).await);
    }

    // Another connection to the same file takes the write lock and holds it.
    let db = c.dir.path().join("molar.db");
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(LOCK_HELD);
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.await.unwrap();
    let locked_at = Instant::now();

    // Every agent sends a log batch: a write that has to wait for the lock.
    let writes: Vec<_> = agents
        .iter()
        .map(|a| {
            let peer = a.peer.clone();
            tokio::spawn(async move {
                let rec =
                    json!({"ts_ms": 1, "level": "info", "target": "t", "msg": "while locked"});
                peer.call("log", json!({"records": [rec], "dropped": 0}))
                    .await
            })
        })
        .collect();

    // Meanwhile pings both ways, and API reads, answer promptly.
    for _ in 0..5 {
        for a in &agents {
            let t = Instant::now();
            still_answers(&c, &a.welcome.server_id).await;
            a.peer.call("ping", json!({"n": 1})).await.unwrap();
            assert!(t.elapsed() < PING_BOUND, "ping took {:?}", t.elapsed());
        }
        let t = Instant::now();
        assert_eq!(c.client.servers().await.unwrap().len(), 4);
        assert!(t.elapsed() < PING_BOUND, "listing took {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        locked_at.elapsed() < LOCK_HELD && !holder.is_finished(),
        "the pings must have run while the lock was held"
    );
    assert!(
        writes.iter().all(|w| !w.is_finished()),
        "the log writes wait for the lock"
    );

    // Once the lock is released every write lands: they waited, they did not fail.
    for w in writes {
        assert_eq!(w.await.unwrap().unwrap(), json!({}));
    }
    assert!(locked_at.elapsed() >= LOCK_HELD - Duration::from_millis(100));
    holder.join().unwrap();
    for a in &agents {
        let page = c.client.logs(&a.welcome.server_id, 0, 10).await.unwrap();
        assert_eq!(page.logs.len(), 1);
        assert_eq!(page.logs[0].msg, "while locked");
    }
}

#[tokio::test]
async fn the_controller_prunes_logs_beyond_the_configured_count() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut cfg = molar_controller::ServeConfig::loopback(dir.path());
    cfg.retention.logs_per_server = Some(3);
    cfg.retention.interval = Duration::from_secs(1);
    let running = molar_controller::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let client = running.client().unwrap();
    let token = client.create_token("t").await.unwrap().token;
    let c = Controller {
        dir,
        running,
        shutdown,
        client,
        agent_token: token.expose().to_owned(),
    };
    let a = fake_agent(&c, 1).await;
    let sid = a.welcome.server_id.clone();
    let records: Vec<_> = (0..10)
        .map(|i| json!({"ts_ms": 1, "level": "info", "target": "t", "msg": format!("m{i}")}))
        .collect();
    a.peer
        .call("log", json!({"records": records, "dropped": 0}))
        .await
        .unwrap();
    assert_eq!(c.client.logs(&sid, 0, 100).await.unwrap().logs.len(), 10);
    let mut kept = Vec::new();
    for _ in 0..50 {
        kept = c.client.logs(&sid, 0, 100).await.unwrap().logs;
        if kept.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs: Vec<&str> = kept.iter().map(|l| l.msg.as_str()).collect();
    assert_eq!(msgs, ["m7", "m8", "m9"]);
    c.shutdown.cancel();
}
