//! Seed 001's OBMd API against a real `ipmi_sim` on loopback, as OBMd's clients call it:
//! register a node (the BMC session proves the credentials; a second registration is a
//! conflict), get a node token, power on / cycle / status and the boot device with it,
//! malformed bodies refused with a valid token, a new token replaces the last, and
//! unregistering the node invalidates its token. No password or token in any answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::inproc::Controller;
use molar_tests::lab::{Images, IpmiSimConfig, Lab, skip_or_fail, which};
use reqwest::Method;

const NODE: &str = "hil-node-7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obmd_clients_register_and_drive_a_node() {
    let test = "obmd_clients_register_and_drive_a_node";
    if which("ipmi_sim").is_none() {
        return skip_or_fail(test, "ipmi_sim is not in PATH").unwrap_or(());
    }
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let sim = lab.start_ipmi_sim(IpmiSimConfig::default()).unwrap();
    let ctl = Controller::start().await;
    let http = ctl.https();
    let admin_token = ctl.running().admin_token.expose().to_owned();
    let base = format!("{}/obmd/node/{NODE}", ctl.running().api_url);
    let send = |method: Method, path: &str, token: Option<&str>, body: Option<&str>| {
        let mut url = format!("{base}{path}");
        if let Some(t) = token {
            url.push_str(&format!("?token={t}"));
        }
        let mut req = http.request(method, url);
        if token.is_none() {
            req = req.basic_auth("admin", Some(admin_token.clone()));
        }
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let node = format!(
        r#"{{"type":"ipmi","info":{{"addr":"127.0.0.1:{}","user":"ipmiusr","pass":"test"}}}}"#,
        sim.lan_port()
    );

    // A wrong password: refused by the BMC, nothing registered.
    let wrong = node.replace(r#""pass":"test""#, r#""pass":"wrong-sekrit""#);
    let (status, text) = send(Method::PUT, "", None, Some(&wrong)).await;
    assert_eq!(status, 403, "{text}");
    assert!(!text.contains("sekrit"), "{text}");
    // Registered; a second registration of the node is a conflict.
    let (status, text) = send(Method::PUT, "", None, Some(&node)).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send(Method::PUT, "", None, Some(&node)).await;
    assert_eq!(status, 409, "{text}");
    let v = ctl.client().server(NODE, false).await.unwrap();
    assert_eq!(v.server.state.as_str(), "initial");

    // A node token: 32 hex characters.
    let (status, text) = send(Method::POST, "/token", None, None).await;
    assert_eq!(status, 200, "{text}");
    let token: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    assert!(
        token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let t = Some(token.as_str());

    // ipmi_sim without a VM accepts power control; a cycle of a node that is off powers it on.
    let (status, text) = send(Method::GET, "/power_status", t, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text == r#"{"power_status":"off"}"# || text == r#"{"power_status":"on"}"#,
        "{text}"
    );
    let (status, text) = send(Method::POST, "/power_on", t, None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send(Method::POST, "/power_cycle", t, Some(r#"{"force":true}"#)).await;
    assert_eq!(status, 200, "{text}");
    // ipmi_sim refuses boot options: the BMC's completion code, as a bad gateway.
    let (status, text) = send(Method::PUT, "/boot_device", t, Some(r#"{"bootdev":"pxe"}"#)).await;
    assert!(status == 200 || status == 502, "{status} {text}");
    if status == 502 {
        assert!(text.contains("0xcc"), "{text}");
    }
    // Malformed bodies with a valid token.
    for (method, path, body, expect) in [
        (
            Method::PUT,
            "/boot_device",
            r#"{"bootdev":"floppy"}"#,
            "not one of",
        ),
        (
            Method::PUT,
            "/boot_device",
            r#"{}"#,
            "missing field `bootdev`",
        ),
        (
            Method::PUT,
            "/boot_device",
            r#"{"bootdev":"pxe","x":1}"#,
            "unknown field `x`",
        ),
        (
            Method::POST,
            "/power_cycle",
            r#"{"force":"yes"}"#,
            "invalid type",
        ),
        (
            Method::POST,
            "/power_cycle",
            r#"{"force":true"#,
            "not valid JSON",
        ),
    ] {
        let (status, text) = send(method.clone(), path, t, Some(body)).await;
        assert_eq!(status, 400, "{method} {path} {body}: {text}");
        assert!(text.contains(expect), "{body}: {text}");
    }
    // Every operation went through the request queue, in order.
    let requests = ctl.client().requests(NODE, 50).await.unwrap();
    assert!(requests.iter().all(|r| r.source == "obmd"), "{requests:?}");
    assert!(requests.len() >= 2, "{requests:?}");

    // A new token replaces the last.
    let (_, text) = send(Method::POST, "/token", None, None).await;
    let newer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let newer = newer["token"].as_str().unwrap().to_owned();
    let (status, _) = send(Method::GET, "/power_status", t, None).await;
    assert_eq!(status, 401);
    let (status, _) = send(Method::GET, "/power_status", Some(&newer), None).await;
    assert_eq!(status, 200);

    // Unregistered: the node and its token are gone.
    let (status, text) = send(Method::DELETE, "", None, None).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = send(Method::GET, "/power_status", Some(&newer), None).await;
    assert_eq!(status, 401);
    let (status, _) = send(Method::DELETE, "", None, None).await;
    assert_eq!(status, 404);
    assert!(ctl.client().servers().await.unwrap().is_empty());
}
