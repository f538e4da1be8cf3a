//! `molar serve` run the way a service manager runs it: settings from a configuration file
//! with `MOLAR_*` environment overrides, readiness told over `NOTIFY_SOCKET` once the API
//! answers, log lines as JSON objects, SIGHUP re-reading the file; `molar config check`
//! naming a wrong key's line; the packaged unit verified by systemd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::bins::{Proc, bin};
use molar_tests::inproc::free_port;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn molar(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("molar"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The test's own environment must not leak settings in.
    for (k, _) in std::env::vars() {
        if k.starts_with("MOLAR_") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("running molar")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn serve_runs_from_a_config_file_tells_systemd_it_is_ready_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (agent_port, api_port) = (free_port(), free_port());
    let config = dir.path().join("molar.toml");
    std::fs::write(
        &config,
        format!(
            "# written by the test\nlisten = \"127.0.0.1:{agent_port}\"\napi = \"127.0.0.1:{api_port}\"\n\
             state-dir = \"{}\"\nlog-format = \"json\"\nmax-connections = 3\n",
            state.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let stderr_path = dir.path().join("serve.err");
    let mut cmd = Command::new(bin("molar"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("MOLAR_RETAIN_LOGS_DAYS", "3")
        .env_remove("MOLAR_STATE_DIR")
        .env_remove("MOLAR_API")
        .stdout(std::fs::File::create(dir.path().join("serve.out")).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut serve = Proc::spawn(cmd, "molar serve --config");

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the API answers at once, from the state directory the file named.
    let servers = molar(
        &["--state-dir", state.to_str().unwrap(), "servers", "--json"],
        &[],
    );
    assert!(servers.status.success(), "{servers:?}");
    let api_url = std::fs::read_to_string(state.join("api.url")).unwrap();
    assert!(api_url.contains(&api_port.to_string()), "{api_url}");

    // SIGHUP: a changed retention limit applies, a restart-only key is named; a broken file
    // changes nothing and the controller keeps serving.
    let hup = |p: &Proc| {
        // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
        unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGHUP) };
    };
    let body = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        body.replace(
            "max-connections = 3",
            "max-connections = 4\nretain-task-events-days = 2",
        ),
    )
    .unwrap();
    hup(&serve);
    let logged = |what: &str| {
        let what = what.to_owned();
        let path = stderr_path.clone();
        move || {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .any(|l| l.contains(&what))
        }
    };
    wait_until(
        "the reload's log line",
        logged("\"retention_applied\":true"),
    );
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(log.contains("connection limits and timeouts"), "{log}");
    std::fs::write(&config, "listen = 12\n").unwrap();
    hup(&serve);
    wait_until("the refused reload", logged("configuration not reloaded"));
    let servers = molar(
        &["--state-dir", state.to_str().unwrap(), "servers", "--json"],
        &[],
    );
    assert!(servers.status.success(), "{servers:?}");

    serve.terminate();
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");

    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "serving"
            && l["api"]
                .as_str()
                .is_some_and(|a| a.contains(&api_port.to_string()))),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}

#[test]
fn config_check_prints_the_layered_settings_and_names_a_wrong_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "listen = \"0.0.0.0:7700\"\nretain-logs-days = 9\n").unwrap();
    let g = good.to_str().unwrap();

    let out = molar(&["config", "check", g], &[]);
    assert!(out.status.success(), "{out:?}");
    let shown = text(&out.stdout);
    assert!(shown.contains("listen = \"0.0.0.0:7700\""), "{shown}");
    assert!(shown.contains("retain-logs-days = 9"), "{shown}");
    assert!(shown.contains("max-connections = 20000"), "{shown}");

    // Environment over file, flag over environment.
    let out = molar(
        &["config", "check", g, "--retain-logs-days", "2"],
        &[
            ("MOLAR_RETAIN_LOGS_DAYS", "5"),
            ("MOLAR_MAX_CONNECTIONS", "7"),
        ],
    );
    let shown = text(&out.stdout);
    assert!(shown.contains("retain-logs-days = 2"), "{shown}");
    assert!(shown.contains("max-connections = 7"), "{shown}");

    let json = molar(&["--json", "config", "check", g], &[]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["retain-logs-days"], 9);

    for (body, wants) in [
        (
            "listen = \"0.0.0.0:7700\"\nretain-log-days = 3\n",
            ["line 2", "retain-log-days"],
        ),
        (
            "listen = \"0.0.0.0:7700\"\n\nmax-connections = \"lots\"\n",
            ["line 3", "max-connections"],
        ),
        (
            "listen = \"0.0.0.0:7700\"\nmax-connections = 0\n",
            ["(line 2)", "must be at least 1"],
        ),
        ("max-connections = 4\n", ["--listen", "MOLAR_LISTEN"]),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, body).unwrap();
        let out = molar(&["config", "check", bad.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = text(&out.stderr);
        for w in wants {
            assert!(err.contains(w), "{body:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = molar(&["config", "check", "/nonexistent/molar.toml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("/nonexistent/molar.toml"));

    // `serve` refuses the same file the same way, before binding anything.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"0.0.0.0:7700\"\nfrobnicate = true\n").unwrap();
    let out = molar(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("frobnicate"), "{out:?}");
}

#[test]
fn the_printed_defaults_are_a_file_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = molar(&["config", "defaults"], &[]);
    assert!(out.status.success(), "{out:?}");
    let defaults = text(&out.stdout);
    assert!(defaults.contains("log-format = \"text\""), "{defaults}");
    let file = dir.path().join("molar.toml");
    std::fs::write(&file, format!("listen = \"0.0.0.0:7700\"\n{defaults}")).unwrap();
    let out = molar(&["config", "check", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_packaged_file_checks(Path::new(env!("CARGO_MANIFEST_DIR")));
}

/// The configuration file the package installs is valid.
fn assert_packaged_file_checks(tests_dir: &Path) {
    let file = tests_dir.join("../packaging/molar.toml");
    let out = molar(&["config", "check", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}: {out:?}", file.display());
}

/// The unit file the package installs passes `systemd-analyze verify` (with the binary it
/// names replaced by the one built here) and its sandboxing keeps systemd's exposure score
/// at "OK" or better.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let test = "the_systemd_unit_verifies_and_is_hardened";
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        molar_tests::lab::skip_or_fail::<()>(test, "systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/molar.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/molar serve --config /etc/molar/molar.toml"));
    for hardening in [
        "Type=notify",
        "ProtectSystem=strict",
        "StateDirectory=molar",
        "NoNewPrivileges=yes",
        "User=molar",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("molar.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/molar", bin("molar").to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-analyze verify: {out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exposure above 2.0 (threshold 20 of 100): {}",
        text(&out.stdout)
    );
}
