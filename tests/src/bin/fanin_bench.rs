//! Controller fan-in benchmark: N simulated agents hold TLS connections to one controller on
//! loopback; reports connections held, controller memory per connection, handshake rate and
//! the controller → agent command round trip (p50/p99).
//!
//! `fanin-bench --agents 1000,10000 [--samples 3000]`
//!
//! Shape: each N runs in a fresh process (the bench re-executes itself with `--run N`) so one
//! run's heap does not pollute the next one's baseline. In that process the controller runs
//! in-process and the agents run in a child process (`--child`), so the RSS delta measured
//! is the controller's alone. Agents are real protocol `Peer`s over tokio-rustls that
//! handshake like the agent does and answer pings. Round trips go through
//! `Fleet::call`, the path `POST /api/v1/servers/{id}/call` takes, over random agents:
//! sequential (latency when idle) and 64 in flight (latency under load); a smaller sample
//! goes through the HTTPS API itself with the typed client.
//!
//! `--plaintext` runs the same benchmark with the controller's lab-only plaintext agent
//! listener, to show what TLS costs per connection.

use anyhow::{Context, Result, bail};
use futures::FutureExt;
use molar_controller::{ServeConfig, start};
use molar_protocol::catalogue::Handshake;
use molar_protocol::methods::{HandshakeParams, NodeIdentity};
use molar_protocol::{ErrorBody, Handler, Peer, PeerConfig, PeerHandle, Secret};
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: fanin-bench [--agents N[,N...]] [--samples S] [--plaintext]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    raise_fd_limit();
    let plaintext = args.iter().any(|a| a == "--plaintext");
    if args.iter().any(|a| a == "--child") {
        let addr: SocketAddr = flag("--addr").context("--addr")?.parse()?;
        let ca = PathBuf::from(flag("--ca").context("--ca")?);
        let token = flag("--token").context("--token")?;
        let n: usize = flag("--agents").context("--agents")?.parse()?;
        let tls = if plaintext {
            None
        } else {
            Some(tls_connector(&ca)?)
        };
        return runtime()?.block_on(child(addr, tls, &token, n));
    }
    let samples: usize = flag("--samples").map_or(Ok(3000), |s| s.parse())?;
    if let Some(n) = flag("--run") {
        let n: usize = n.parse()?;
        return runtime()?.block_on(run(n, samples, plaintext));
    }
    let list = flag("--agents").unwrap_or_else(|| "1000,10000".into());
    let counts = list
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .context(USAGE)?;
    println!(
        "fan-in benchmark: controller in-process, agents in a child process, {} on loopback, {} cores",
        if plaintext {
            "plaintext (lab mode)"
        } else {
            "TLS 1.3"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>7} {:>7} {:>12} {:>10} {:>11} {:>19} {:>23} {:>19}",
        "agents",
        "held",
        "handshake/s",
        "KiB/conn",
        "heap KiB/c",
        "call p50/p99 ms",
        "64-in-flight p50/p99",
        "API p50/p99 ms"
    );
    let exe = std::env::current_exe()?;
    for n in counts {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--run", &n.to_string(), "--samples", &samples.to_string()]);
        if plaintext {
            cmd.arg("--plaintext");
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!("the run with {n} agents failed: {status}");
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Raises the soft open-files limit to the hard one: 10,000 connections need 10,000 fds in
/// each process.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes in use in the malloc heap (glibc), to tell live allocations from allocator overhead
/// in the RSS figure.
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as u64
}

/// xorshift64*: enough randomness to pick agents, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort();
    let at = |p: f64| {
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

async fn run(n: usize, samples: usize, plaintext: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut cfg = ServeConfig::loopback(dir.path());
    cfg.max_connections = n.max(20_000);
    cfg.allow_plaintext_agents = plaintext;
    let running = start(cfg, shutdown.clone()).await?;
    let fleet = running.fleet.clone();
    let (_, token) = fleet.create_token("bench").await?;
    let client = running.client()?;
    // Warm up the API path and the allocator before the baseline.
    let _ = client.servers().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss = rss_kib();
    let base_heap = heap_bytes();

    let mut child = tokio::process::Command::new(std::env::current_exe()?);
    if plaintext {
        child.arg("--plaintext");
    }
    let mut child = child
        .args([
            "--child",
            "--addr",
            &running.agent_addr.to_string(),
            "--ca",
            &running.ca_pem_path.to_string_lossy(),
            "--token",
            token.expose(),
            "--agents",
            &n.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .context("agents not connected within 600 s")??
        .context("the agent process ended early")?;
    // "ready CONNECTED SECONDS"
    let parts: Vec<&str> = ready.split_whitespace().collect();
    let (connected, secs): (usize, f64) = match parts.as_slice() {
        ["ready", c, s] => (c.parse()?, s.parse()?),
        _ => bail!("unexpected line from the agent process: {ready}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.connected_count() < connected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = fleet.connected_count();
    let rss = rss_kib();
    let per_conn = (rss.saturating_sub(base_rss)) as f64 / held.max(1) as f64;
    let heap_per_conn = heap_bytes().saturating_sub(base_heap) as f64 / 1024.0 / held.max(1) as f64;

    let ids = fleet.connected_ids();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let timeout = Duration::from_secs(10);
    // Sequential: one command at a time.
    let mut seq = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = &ids[(rng.next() % ids.len() as u64) as usize];
        let t = Instant::now();
        fleet.call(id, "ping", json!({"i": i}), timeout).await?;
        seq.push(t.elapsed());
    }
    // 64 in flight over random agents.
    let gate = Arc::new(Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..samples {
        let id = ids[(rng.next() % ids.len() as u64) as usize].clone();
        let fleet = fleet.clone();
        let permit = gate.clone().acquire_owned().await?;
        set.spawn(async move {
            let t = Instant::now();
            let r = fleet.call(&id, "ping", json!({"i": i}), timeout).await;
            drop(permit);
            r.map(|_| t.elapsed())
        });
    }
    let mut loaded = Vec::with_capacity(samples);
    while let Some(r) = set.join_next().await {
        loaded.push(r??);
    }
    // Through the HTTPS API (one keep-alive connection).
    let mut api = Vec::new();
    for i in 0..(samples / 6).max(100) {
        let id = &ids[(rng.next() % ids.len() as u64) as usize];
        let t = Instant::now();
        client.call(id, "ping", json!({"i": i}), None).await?;
        api.push(t.elapsed());
    }
    let held_after = fleet.connected_count();

    let (s50, s99) = percentiles(seq);
    let (l50, l99) = percentiles(loaded);
    let (a50, a99) = percentiles(api);
    println!(
        "{:>7} {:>7} {:>12.0} {:>10.1} {:>11.1} {:>9.2} / {:<7.2} {:>11.2} / {:<9.2} {:>9.2} / {:<7.2}",
        n,
        held.min(held_after),
        connected as f64 / secs.max(1e-9),
        per_conn,
        heap_per_conn,
        s50,
        s99,
        l50,
        l99,
        a50,
        a99
    );
    std::io::stdout().flush()?;

    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.join()).await;
    Ok(())
}

fn tls_connector(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

async fn one_agent(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    handler: Arc<dyn Handler>,
    token: &str,
    i: usize,
) -> Result<PeerHandle> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let cfg = PeerConfig {
        name: format!("bench agent {i}"),
        id_prefix: "a".into(),
        ..PeerConfig::default()
    };
    let (peer, _task) = match tls {
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
            Peer::spawn(tls.connect(name, tcp).await?, handler, cfg)
        }
        None => Peer::spawn(tcp, handler, cfg),
    };
    let hello = HandshakeParams {
        agent_version: "fanin-bench".into(),
        protocols: vec!["v1".into()],
        boot_id: format!("boot-{i}"),
        node: NodeIdentity {
            system_uuid: Some(format!("4c4c4544-0000-4000-8000-{i:012x}")),
            serial: None,
            macs: vec![format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                i >> 16 & 0xff,
                i >> 8 & 0xff,
                i & 0xff
            )],
            hostname: None,
        },
        token: Secret::new(token),
        session: None,
    };
    peer.call_method::<Handshake>(&hello).await?;
    Ok(peer)
}

/// The agent side: connect `n` agents (at most 256 handshakes in flight), report, then hold
/// them until stdin closes.
async fn child(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    token: &str,
    n: usize,
) -> Result<()> {
    // Agents answer only ping (the peer does); anything else is an error.
    let handler: Arc<dyn Handler> = Arc::new(|_: &PeerHandle, method: String, _: Value| {
        async move {
            Err::<Value, _>(ErrorBody::new(
                "unknown_method",
                format!("unknown method {method}"),
            ))
        }
        .boxed()
    });
    let gate = Arc::new(Semaphore::new(256));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let tls = tls.clone();
        let handler = handler.clone();
        let token = token.to_owned();
        set.spawn(async move {
            let mut last = None;
            for _ in 0..3 {
                match one_agent(addr, tls.as_ref(), handler.clone(), &token, i).await {
                    Ok(p) => {
                        drop(permit);
                        return Ok(p);
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            drop(permit);
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        });
    }
    let mut peers = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(p) => peers.push(p),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("fanin-bench: an agent failed to connect: {e:#}");
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("ready {} {secs:.3}", peers.len());
    std::io::stdout().flush()?;
    // Hold the connections until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        let mut line = String::new();
        while stdin
            .lock()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            line.clear();
        }
    })
    .await?;
    drop(peers);
    Ok(())
}
