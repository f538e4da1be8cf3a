//! Enrolling a server by its BMC against a real `ipmi_sim` on loopback: `molar server add`
//! opens a session before anything is stored (a wrong password or a BMC that does not answer
//! stores nothing and never shows the password), the server is `initial` with the operator's
//! BMC entry and the MAC and cipher suite the session found, names work wherever an id does,
//! a second enrolment of the name or the BMC is a conflict, and `molar server remove NAME`
//! removes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::api::{AddBmc, AddServer};
use molar_protocol::Secret;
use molar_tests::inproc::Controller;
use molar_tests::lab::{BMC_MAC, BmcUser, Images, IpmiSimConfig, Lab, skip_or_fail, which};

const USER: &str = "molar-op";
const PASSWORD: &str = "Op3rator-sekrit";

fn add(name: &str, port: u16, password: &str) -> AddServer {
    AddServer {
        name: name.into(),
        bmc: AddBmc {
            host: "127.0.0.1".into(),
            port: Some(port),
            username: USER.into(),
            password: Secret::new(password),
            allow_ipmi15: false,
            // A bare address: probed (no HTTPS there), so IPMI.
            protocol: None,
            tls_ca_pem: None,
            tls_fingerprint: None,
            tls_insecure: false,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_enrolled_by_its_bmc_verified_first() {
    let test = "a_server_is_enrolled_by_its_bmc_verified_first";
    if which("ipmi_sim").is_none() {
        return skip_or_fail(test, "ipmi_sim is not in PATH").unwrap_or(());
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
    let ctl = Controller::start().await;
    let client = ctl.client();

    // A wrong password: refused by the BMC, nothing stored, the password nowhere.
    let e = client
        .add_server(&add("rack1-07", sim.lan_port(), "wrong-sekrit"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("login refused"), "{e}");
    assert!(!e.contains("sekrit"), "{e}");
    assert!(client.servers().await.unwrap().is_empty());

    // The right one, through the CLI as an operator types it.
    let pw = lab.dir().join("bmc-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let bmc = format!("127.0.0.1:{}", sim.lan_port());
    let (code, out, err) = ctl.molar(&[
        "server",
        "add",
        "rack1-07",
        "--bmc",
        &bmc,
        "--bmc-user",
        USER,
        "--bmc-password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("enrolled as srv-"), "{out}");
    assert!(!format!("{out}{err}").contains("sekrit"));

    let v = client.server("rack1-07", false).await.unwrap();
    assert_eq!(v.server.name.as_deref(), Some("rack1-07"));
    assert_eq!(v.server.state.as_str(), "initial");
    assert!(!v.server.connected);
    let b = v.bmc.clone().expect("a BMC entry");
    assert_eq!(b.source, "operator");
    assert_eq!(b.username, USER);
    assert_eq!(
        (b.host.as_deref(), b.port),
        (Some("127.0.0.1"), Some(sim.lan_port()))
    );
    assert_eq!(
        b.cipher_suite,
        Some(3),
        "ipmi_sim has no suite 17: the fallback"
    );
    assert_eq!(b.mac.as_deref(), Some(BMC_MAC));
    assert!(b.verified_ms.is_some());
    let shown = serde_json::to_string(&v).unwrap();
    assert!(!shown.contains("sekrit"), "{shown}");
    let (code, out, _) = ctl.molar(&["server", "rack1-07"]);
    assert_eq!(code, 0);
    assert!(out.contains("bmc address:   127.0.0.1:"), "{out}");
    assert!(!out.contains("sekrit"));
    // The BMC table (seed 004): listed and shown, never with the password.
    let listed = client.bmcs().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source, "operator");
    assert_eq!(client.bmc("rack1-07").await.unwrap(), listed[0]);
    let (code, out, _) = ctl.molar(&["bmc", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("rack1-07") || out.contains(&listed[0].server_id),
        "{out}"
    );
    assert!(out.contains("operator") && out.contains(BMC_MAC), "{out}");
    assert!(!out.contains("sekrit"));
    let (code, out, _) = ctl.molar(&["--json", "bmc", "show", "rack1-07"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains("sekrit") && out.contains("\"username\""),
        "{out}"
    );
    let (code, _, err) = ctl.molar(&["bmc", "show", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");

    // The name and the BMC are taken now.
    let e = client
        .add_server(&add("rack1-07", sim.lan_port(), PASSWORD))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("a server named \"rack1-07\" exists"), "{e}");
    let e = client
        .add_server(&add("rack1-08", sim.lan_port(), PASSWORD))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is already enrolled as server srv-"), "{e}");
    assert_eq!(client.servers().await.unwrap().len(), 1);

    // Removed by its name.
    let (code, out, err) = ctl.molar(&["server", "remove", "rack1-07"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(client.servers().await.unwrap().is_empty());
}
