//! Issue #9's fd-limit row: `molar serve` with its descriptor limit lowered to 128 and both
//! ports flooded with idle unauthenticated connections never runs out of descriptors, a
//! connected `molar-agent` keeps answering through the API, and a new agent still connects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::bins::{Proc, bin};
use molar_tests::inproc::free_port;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NOFILE: u64 = 128;
/// Idle sockets opened to each port: more than the controller's whole descriptor limit.
const FLOOD: usize = 150;

fn molar(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin("molar"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("running molar")
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of the connected servers, as `molar servers --json` lists them (empty while the API
/// is busy).
fn connected(state: &std::path::Path) -> Vec<String> {
    let out = molar(state, &["servers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .or_else(|| v["servers"].as_array())
        .map(|a| {
            a.iter()
                .filter(|s| s["connected"] == true)
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn agent(
    port: u16,
    state: &std::path::Path,
    token: &std::path::Path,
    log: &std::path::Path,
) -> Proc {
    let mut cmd = Command::new(bin("molar-agent"));
    cmd.arg("run")
        .arg("--controller")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--ca")
        .arg(state.join("ca.pem"))
        .arg("--token-file")
        .arg(token)
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    Proc::spawn(cmd, "molar-agent run")
}

#[test]
fn idle_connections_at_a_low_fd_limit_lock_no_agent_out() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let agent_port = free_port();
    let api_port = free_port();
    let serve_log = logs.path().join("serve.log");
    let mut cmd = Command::new(bin("molar"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--api")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["--max-pre-handshake", "16", "--api-max-connections", "16"])
        .args([
            "--tls-handshake-timeout-s",
            "2",
            "--api-header-timeout-s",
            "2",
        ])
        .stdout(std::fs::File::create(&serve_log).unwrap())
        .stderr(std::fs::File::create(serve_log.with_extension("err")).unwrap());
    // SAFETY: runs in the forked child before exec; setrlimit(2) is async-signal-safe and
    // touches only the child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut serve = Proc::spawn(cmd, "molar serve");
    wait_for("the API to answer", 20, || {
        molar(state.path(), &["servers"]).status.success()
    });
    let created = molar(state.path(), &["token", "create", "fd"]);
    assert!(created.status.success(), "{created:?}");
    let token = state.path().join("agent.token");
    std::fs::write(&token, String::from_utf8_lossy(&created.stdout).trim()).unwrap();

    let mut first = agent(
        agent_port,
        state.path(),
        &token,
        &logs.path().join("a1.log"),
    );
    let mut ids = Vec::new();
    wait_for("the first agent to register", 20, || {
        ids = connected(state.path());
        !ids.is_empty()
    });
    let id = ids[0].clone();

    // The flood: idle sockets on both ports, more than the controller has descriptors.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(("127.0.0.1", agent_port)).unwrap());
        flood.push(TcpStream::connect(("127.0.0.1", api_port)).unwrap());
    }

    // Held open on this side, the flood still cannot keep the connected agent from
    // answering through the API (once a place frees, within the 2 s timeouts).
    let t0 = Instant::now();
    wait_for("a ping through the API during the flood", 15, || {
        let ping = molar(state.path(), &["call", &id, "ping", r#"{"x":1}"#]);
        ping.status.success() && String::from_utf8_lossy(&ping.stdout).trim() == r#"{"x":1}"#
    });
    assert!(t0.elapsed() < Duration::from_secs(15));

    // A second agent (another machine identity is not needed: a second session of the same
    // server without the first one's credential is refused as a session conflict, which
    // proves the handshake got through and was judged).
    let mut second = agent(
        agent_port,
        state.path(),
        &token,
        &logs.path().join("a2.log"),
    );
    wait_for("the second agent's connection", 20, || {
        let text = std::fs::read_to_string(serve_log.with_extension("err")).unwrap_or_default()
            + &std::fs::read_to_string(&serve_log).unwrap_or_default();
        text.contains("handshake refused (session_conflict)")
    });
    drop(flood);

    second.terminate();
    first.terminate();
    serve.terminate();
    let text = std::fs::read_to_string(serve_log.with_extension("err")).unwrap()
        + &std::fs::read_to_string(&serve_log).unwrap();
    assert!(
        !text.contains("Too many open files"),
        "the controller ran out of descriptors:\n{text}"
    );
}
