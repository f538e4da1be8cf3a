//! Seed 004's BMC table against a real `ipmi_sim` on loopback, through the `molar` CLI:
//! `bmc rotate` with no agent connected sets a new password over IPMI LAN (the new one opens
//! a session from the host with ipmitool, the old one no longer does), `bmc show --reveal`
//! shows it and is written to the audit log, `bmc set` stores nothing when the BMC refuses the
//! login and stores a login that works, and the periodic check notices credentials changed
//! behind the controller's back (`bmc list` says FAILING, `molar_bmcs_failing` counts it)
//! until an operator sets the working ones. No password reaches a test's output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::bmc::CheckPolicy;
use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::{BmcUser, Images, IpmiSimConfig, Lab, skip_or_fail, which};
use std::time::Duration;

const NAME: &str = "rack3-11";
const USER: &str = "molar-op";
const PASSWORD: &str = "Op3rator-sekrit";

/// The stored password, through `molar --json bmc show --reveal` (never printed).
fn revealed(ctl: &Controller) -> (String, Option<String>) {
    let (code, out, err) = ctl.molar(&["--json", "bmc", "show", NAME, "--reveal"]);
    assert_eq!(code, 0, "bmc show --reveal failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let c = &v["credentials"];
    assert_eq!(c["username"], USER, "{}", v["bmc"]);
    (
        c["password"].as_str().expect("a password").to_owned(),
        c["pending_password"].as_str().map(str::to_owned),
    )
}

/// `molar bmc set NAME --user USER --password-file FILE`.
fn bmc_set(ctl: &Controller, file: &std::path::Path) -> (i32, String, String) {
    let file = file.to_str().unwrap();
    ctl.molar(&["bmc", "set", NAME, "--user", USER, "--password-file", file])
}

/// Whether ipmitool opens a session with `password` (its output never shown).
fn works(sim: &molar_tests::lab::IpmiSim, password: &str) -> bool {
    tokio::task::block_in_place(|| {
        sim.ipmitool(USER, password, &["chassis", "power", "status"])
            .unwrap()
            .status
            .success()
    })
}

/// `/metrics` on the API, with the admin token.
async fn scrape(ctl: &Controller) -> String {
    let api = &ctl.running().api_url;
    ctl.https()
        .get(format!("{api}/metrics"))
        .bearer_auth(ctl.running().admin_token.expose())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_credentials_are_rotated_revealed_set_and_checked() {
    let test = "bmc_credentials_are_rotated_revealed_set_and_checked";
    if which("ipmi_sim").is_none() || which("ipmitool").is_none() {
        return skip_or_fail(test, "ipmi_sim or ipmitool is not in PATH").unwrap_or(());
    }
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let mut cfg = IpmiSimConfig::default();
    cfg.users.push(BmcUser {
        id: 3,
        name: USER.into(),
        password: PASSWORD.into(),
        privilege: "admin".into(),
    });
    let sim = lab.start_ipmi_sim(cfg).unwrap();
    let mut ctl = Controller::start().await;
    ctl.bmc_checks = Some(CheckPolicy {
        interval: Duration::from_secs(1),
        per_minute: 600,
    });
    ctl.restart().await;
    let client = ctl.client();
    let pw = lab.dir().join("bmc-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let bmc = format!("127.0.0.1:{}", sim.lan_port());
    let (code, out, err) = ctl.molar(&[
        "server",
        "add",
        NAME,
        "--bmc",
        &bmc,
        "--bmc-user",
        USER,
        "--bmc-password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // Rotation with no agent: over LAN, with the current password.
    let (code, out, err) = ctl.molar(&["bmc", "rotate", NAME]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("new password set over LAN; a session with it worked: stored"),
        "{out}"
    );
    let (new, pending) = revealed(&ctl);
    assert!(pending.is_none(), "the rotation is confirmed");
    assert_ne!(new, PASSWORD, "a new password");
    assert_eq!(new.len(), 16);
    assert!(
        !out.contains(&new) && !err.contains(&new),
        "rotate prints no password"
    );
    assert!(works(&sim, &new), "the new password opens a session");
    assert!(!works(&sim, PASSWORD), "the old one no longer does");
    let b = client.bmc(NAME).await.unwrap();
    assert_eq!(b.source, "rotated");
    assert!(b.verified_ms.is_some() && b.verify_error.is_none() && !b.rotation_pending);
    // The stored password is what out-of-band control uses now.
    let (code, out, err) = ctl.molar(&["power", NAME, "status", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");

    // Each reveal is in the audit log, with where it came from; never the password.
    let events = client.events(Some(&b.server_id), 0, 100).await.unwrap();
    let reveals: Vec<_> = events
        .events
        .iter()
        .filter(|e| e.event.kind == "bmc_password_revealed")
        .collect();
    assert_eq!(reveals.len(), 1, "{reveals:?}");
    assert!(
        reveals[0]
            .event
            .peer_addr
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{reveals:?}"
    );
    let (code, out, _) = ctl.molar(&["events", "--server", &b.server_id]);
    assert_eq!(code, 0);
    assert!(out.contains("bmc_password_revealed"), "{out}");
    assert!(!out.contains(&new) && !out.contains(PASSWORD));
    // Listing and showing never carry it.
    for args in [&["bmc", "list"][..], &["--json", "bmc", "show", NAME]] {
        let (code, out, _) = ctl.molar(args);
        assert_eq!(code, 0);
        assert!(!out.contains(&new), "{args:?} shows the password");
    }

    // A login the BMC refuses is not stored.
    let wrong = lab.dir().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let (code, out, err) = bmc_set(&ctl, &wrong);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    assert_eq!(revealed(&ctl).0, new, "the stored password is unchanged");

    // Changed behind the controller's back: the periodic check notices.
    let changed = "Ch4nged-behind";
    tokio::task::block_in_place(|| {
        sim.ipmitool_ok(USER, &new, &["user", "set", "password", "3", changed])
            .unwrap()
    });
    eventually(30, "the check to fail", || async {
        let b = client.bmc(NAME).await.ok()?;
        b.verify_error.is_some().then_some(())
    })
    .await;
    let (code, out, _) = ctl.molar(&["bmc", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("FAILING: BMC 127.0.0.1:"), "{out}");
    let metrics = scrape(&ctl).await;
    assert!(
        metrics.lines().any(|l| l == "molar_bmcs_failing 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("molar_bmc_checks_total{result=\"failed\"} ")),
        "{metrics}"
    );

    // The operator gives the working password: checked, stored, the check passes again.
    std::fs::write(&pw, changed).unwrap();
    let (code, out, err) = bmc_set(&ctl, &pw);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("a session with 127.0.0.1:"), "{out}");
    assert_eq!(revealed(&ctl).0, changed);
    let b = client.bmc(NAME).await.unwrap();
    assert_eq!((b.source.as_str(), b.verify_error), ("operator", None));
    let checked = b.checked_ms.unwrap();
    eventually(30, "the next check to pass", || async {
        let b = client.bmc(NAME).await.ok()?;
        (b.checked_ms > Some(checked) && b.verify_error.is_none()).then_some(())
    })
    .await;
    let metrics = scrape(&ctl).await;
    assert!(
        metrics.lines().any(|l| l == "molar_bmcs_failing 0"),
        "{metrics}"
    );

    // Hostile input: unknown fields, bad names, servers and passwords that do not exist.
    let (code, _, err) = ctl.molar(&["bmc", "rotate", "no-such-server"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-server"), "{err}");
    let https = ctl.https();
    let api = &ctl.running().api_url;
    let token = ctl.running().admin_token.expose().to_owned();
    for (body, want) in [
        (r#"{"username":"u"}"#, "password"),
        (
            r#"{"username":"u","password":"p","admin":true}"#,
            "unknown field",
        ),
        (r#"{"username":"","password":"p"}"#, "user name"),
        (r#"{"username":"u","password":"p\u0007"}"#, "printable"),
        (
            r#"{"username":"u","password":"123456789012345678901"}"#,
            "20",
        ),
        ("not json", "JSON"),
    ] {
        let r = https
            .put(format!("{api}/api/v1/servers/{NAME}/bmc"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(want), "{body}: {text}");
    }
    let r = https
        .post(format!("{api}/api/v1/servers/{NAME}/bmc/reveal"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "reveal needs the admin token");
    assert_eq!(revealed(&ctl).0, changed, "nothing changed");
}
