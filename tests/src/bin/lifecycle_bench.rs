//! Lifecycle benchmark: N simulated servers (in-process agents over loopback TLS, with the
//! stand-in deploy and erase tasks of `molar_tests::standin`) walked at once through
//! Discovery → Available → Reserved (claim) → Cleanup → Available (release), with the
//! controller killed and restarted while every erase is running. Reports transitions per
//! second, step latency (p50/p99, from the stored steps), the process's RSS, and checks that
//! no workflow was lost or doubled (each stand-in ran exactly once per server).
//!
//! `lifecycle-bench [--servers 1000]`

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use molar_controller::client::Client;
use molar_controller::store::{ServerState, StepState, WorkflowRecord};
use molar_controller::workflow::{ClaimParams, ReleaseParams};
use molar_protocol::Method;
use molar_protocol::catalogue::{DiskErase, PrepareImage, RunImage};
use molar_tests::inproc::{Controller, machine_root};
use molar_tests::standin::{Machine, start_agent};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--servers")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1000), |s| s.parse())
        .context("usage: lifecycle-bench [--servers N]")?;
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(n))
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Waits until `want` servers are in `state`; returns how long it took.
async fn until_all(
    client: &Client,
    state: ServerState,
    want: usize,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let servers = client.servers().await?;
        let in_state = servers.iter().filter(|s| s.server.state == state).count();
        if in_state >= want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("only {in_state} of {want} servers {state} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `f` for every server, 64 at once; fails naming how many were refused.
async fn for_all<F, Fut>(ids: &[String], what: &str, f: F) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let refused = futures::stream::iter(ids.iter().cloned())
        .map(f)
        .buffer_unordered(64)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    if refused > 0 {
        bail!("{refused} {what} refused");
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize) -> Result<()> {
    println!(
        "lifecycle benchmark: {n} servers, controller and agents in one process, TLS on loopback, {} cores",
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    let mut ctl = Controller::start().await;
    let token = ctl.agent_token().await;
    let rss_before = rss_mib();
    let machines: Vec<Machine> = (0..n).map(|_| Machine::default()).collect();
    let started = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for (i, m) in machines.iter().enumerate() {
        let root = tempfile::tempdir()?;
        machine_root(
            root.path(),
            &format!("LB-{i:05}"),
            &format!(
                "52:54:01:{:02x}:{:02x}:{:02x}",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            ),
        );
        agents.push(start_agent(&ctl, &token, root, m));
    }
    let client = ctl.client();
    let discovery = until_all(&client, ServerState::Available, n, Duration::from_secs(600)).await?;
    let ids: Vec<String> = client
        .servers()
        .await?
        .into_iter()
        .map(|s| s.server.id)
        .collect();
    println!(
        "discovery: {n} servers initial → discovery → available in {:.1} s",
        discovery.as_secs_f64()
    );

    let claim: ClaimParams = serde_json::from_value(json!({
        "image": {"id": "bench", "urls": ["http://127.0.0.1:9/bench.img"],
            "checksum": format!("sha256:{}", "ab".repeat(32))},
        "device": "/dev/vda"}))?;
    let claim_started = Instant::now();
    for_all(&ids, "claims", |id| {
        let (client, claim) = (client.clone(), claim.clone());
        async move { client.claim(&id, &claim).await.is_ok() }
    })
    .await?;
    let claimed = until_all(&client, ServerState::Reserved, n, Duration::from_secs(600)).await?;
    println!(
        "claim: {n} servers available → reserved (prepare_image, run_image) in {:.1} s",
        claimed
            .as_secs_f64()
            .max(claim_started.elapsed().as_secs_f64())
    );

    let release_started = Instant::now();
    let release = ReleaseParams {
        in_ramdisk: true,
        ..Default::default()
    };
    for_all(&ids, "releases", |id| {
        let (client, release) = (client.clone(), release.clone());
        async move { client.release(&id, &release).await.is_ok() }
    })
    .await?;
    // Every erase is running on its agent: kill the controller half-way through the walk.
    let wait = Instant::now();
    while machines.iter().any(|m| m.calls(DiskErase::NAME).is_empty()) {
        if wait.elapsed() > Duration::from_secs(600) {
            bail!("not every erase started");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    ctl.restart().await;
    let client = ctl.client();
    let restart = killed.elapsed();
    for m in &machines {
        m.erase_gate.add_permits(1);
    }
    let released = until_all(&client, ServerState::Available, n, Duration::from_secs(600)).await?;
    println!(
        "release: {n} servers reserved → cleanup → available in {:.1} s, with a controller restart \
         mid-erase ({:.2} s to restart)",
        release_started.elapsed().as_secs_f64(),
        restart.as_secs_f64()
    );
    let _ = released;
    let total = started.elapsed();

    // Nothing lost or doubled: every stand-in ran once per server, every workflow done.
    let mut doubled = 0;
    let mut missing = 0;
    for m in &machines {
        for method in [PrepareImage::NAME, RunImage::NAME, DiskErase::NAME] {
            match m.calls(method).len() {
                1 => {}
                0 => missing += 1,
                _ => doubled += 1,
            }
        }
    }
    let mut latencies = Vec::new();
    let mut transitions = 0;
    let mut not_done = 0;
    for id in &ids {
        let wfs: Vec<WorkflowRecord> = client.workflows(id, 10).await?;
        not_done += wfs.iter().filter(|w| w.state != StepState::Done).count();
        not_done += 2usize.saturating_sub(wfs.len());
        for w in &wfs {
            for s in &w.steps {
                if let (Some(a), Some(b)) = (s.started_ms, s.finished_ms) {
                    latencies.push((b - a) as f64);
                }
            }
        }
        transitions += client.history(id, 0, 100).await?.transitions.len();
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "transitions: {transitions} in {:.1} s = {:.0}/s over the whole walk",
        total.as_secs_f64(),
        transitions as f64 / total.as_secs_f64()
    );
    println!(
        "step latency (start to end as stored, stand-in tasks finish at once; the erase waited \
         at its gate across the restart): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} steps",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len()
    );
    println!(
        "RSS: {:.0} MiB before the agents, {:.0} MiB with {n} in-process agents and their TLS \
         connections (controller and agents share the process)",
        rss_before,
        rss_mib()
    );
    println!(
        "workflows lost or unfinished: {not_done}; stand-in steps missing: {missing}, run twice: {doubled}"
    );
    if not_done + missing + doubled > 0 {
        bail!("workflows were lost or doubled");
    }
    for a in agents {
        a.stop().await;
    }
    Ok(())
}
