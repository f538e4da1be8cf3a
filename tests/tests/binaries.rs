//! The Foundation issue's "done when", with the real binaries as an operator runs them:
//! `molar serve`, `molar token create`, `molar-agent run --controller ... --ca ...`, then the
//! server shows in `molar servers` and `molar call ID ping '{"x":1}'` prints `{"x":1}`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::bins::{Proc, bin};
use molar_tests::inproc::free_port;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn molar(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin("molar"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("running molar")
}

/// Runs molar with its stdout a pipe whose reader is already gone (`molar ... | head` after
/// head exited): every write fails with EPIPE.
fn molar_closed_stdout(state: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new(bin("molar"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running molar");
    drop(child.stdout.take());
    child.wait_with_output().expect("waiting for molar")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_token_agent_servers_call() {
    let state = tempfile::tempdir().unwrap();
    let agent_port = free_port();
    let api_port = free_port();
    let mut serve_cmd = Command::new(bin("molar"));
    serve_cmd
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--api")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--state-dir")
        .arg(state.path());
    let logs = tempfile::tempdir().unwrap();
    let serve_log = logs.path().join("serve.log");
    let agent_log = logs.path().join("agent.log");
    let to_file = |p: &std::path::Path| std::fs::File::create(p).unwrap();
    serve_cmd
        .stdout(to_file(&serve_log))
        .stderr(to_file(&serve_log.with_extension("err")));
    let mut serve = Proc::spawn(serve_cmd, "molar serve");
    wait_for("the controller's api.url", 20, || {
        state.path().join("api.url").exists()
    });
    wait_for("the API to answer", 20, || {
        molar(state.path(), &["servers"]).status.success()
    });

    let created = molar(state.path(), &["token", "create", "lab"]);
    assert!(created.status.success(), "{created:?}");
    let token_file = state.path().join("agent.token");
    std::fs::write(&token_file, stdout(&created)).unwrap();

    let mut agent_cmd = Command::new(bin("molar-agent"));
    agent_cmd
        .arg("run")
        .arg("--controller")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--ca")
        .arg(state.path().join("ca.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .stdout(to_file(&agent_log))
        .stderr(to_file(&agent_log.with_extension("err")));
    let mut agent = Proc::spawn(agent_cmd, "molar-agent run");

    let mut id = String::new();
    wait_for("the agent to register", 20, || {
        let out = molar(state.path(), &["servers", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let connected = v
            .as_array()
            .or_else(|| v["servers"].as_array())
            .and_then(|a| a.iter().find(|s| s["connected"] == true).cloned());
        if let Some(s) = connected {
            id = s["id"].as_str().unwrap().to_owned();
            true
        } else {
            false
        }
    });
    let table = molar(state.path(), &["servers"]);
    assert!(stdout(&table).contains(&id), "{}", stdout(&table));

    let ping = molar(state.path(), &["call", &id, "ping", r#"{"x":1}"#]);
    assert!(ping.status.success(), "{ping:?}");
    assert_eq!(stdout(&ping), r#"{"x":1}"#);

    // A closed stdout ends every printing command quietly, with its usual exit status.
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(100_000));
    for args in [
        vec!["call", &id, "ping", &big],
        vec!["servers"],
        vec!["--json", "servers"],
        vec!["server", &id, "--inventory"],
        vec!["logs", &id],
        vec!["token", "list"],
    ] {
        let out = molar_closed_stdout(state.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "molar {}: {err}", args[0]);
        assert_eq!(out.status.code(), Some(0), "molar {}: {err}", args[0]);
    }
    let missing = molar_closed_stdout(state.path(), &["server", "srv-nope"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");

    // Exit codes scripts can trust: unknown server, unknown method.
    let missing = molar(state.path(), &["call", "srv-nope", "ping"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    let unknown = molar(state.path(), &["call", &id, "frobnicate"]);
    assert_eq!(unknown.status.code(), Some(5), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown method frobnicate"));

    // Nothing secret in what the agent or the controller printed.
    agent.terminate();
    serve.terminate();
    let token = stdout(&created);
    let admin = std::fs::read_to_string(state.path().join("admin.token")).unwrap();
    assert!(token.len() >= 16 && admin.trim().len() >= 16);
    for log in [&serve_log, &agent_log] {
        for f in [log.clone(), log.with_extension("err")] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                !text.contains(&token),
                "agent token leaked into {}",
                f.display()
            );
            assert!(
                !text.contains(admin.trim()),
                "admin token leaked into {}",
                f.display()
            );
        }
    }
    let agent_err = std::fs::read_to_string(agent_log.with_extension("err")).unwrap();
    assert!(
        agent_err.contains("connected to the controller"),
        "{agent_err}"
    );
}
