//! The console end to end against a real `ipmi_sim`: its SOL serial port is a loopback TCP
//! socket this test owns, so the test plays the host's serial port. Bytes written there show
//! on the chunked stream and on the WebSocket; bytes typed into the WebSocket arrive there;
//! a second interactive session is refused unless it forces a takeover, and the one taken
//! over is told; everything shown is in the bounded log; the BMC password shows nowhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt, StreamExt};
use molar_controller::console::attach;
use molar_controller::store::{BmcCredentials, Registration, SessionGrant};
use molar_protocol::Secret;
use molar_tests::inproc::Controller;
use molar_tests::lab::{BmcUser, Images, IpmiSimConfig, Lab, skip_or_fail, which};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "sol-pw-9f3a";

/// The serial port side: what ipmi_sim sends (typed input) is collected by a thread.
struct SerialPort {
    stream: TcpStream,
    received: Arc<Mutex<Vec<u8>>>,
}

impl SerialPort {
    fn accept(listener: &TcpListener) -> SerialPort {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(25);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "ipmi_sim did not connect to its SOL port"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut rd = stream.try_clone().unwrap();
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        SerialPort { stream, received }
    }

    fn write(&mut self, s: &str) {
        self.stream.write_all(s.as_bytes()).unwrap();
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// Collects a chunked stream's text in the background.
fn collect(resp: reqwest::Response) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    tokio::spawn(async move {
        let mut s = resp.bytes_stream();
        while let Some(Ok(b)) = s.next().await {
            t.lock().unwrap().push_str(&String::from_utf8_lossy(&b));
        }
    });
    text
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_streams_serial_output_and_types_into_it_through_ipmi_sim() {
    let test = "the_console_streams_serial_output_and_types_into_it_through_ipmi_sim";
    if which("ipmi_sim").is_none() {
        return skip_or_fail(test, "ipmi_sim is not in PATH").unwrap_or(());
    }
    let serial = TcpListener::bind("127.0.0.1:0").unwrap();
    let sol_port = serial.local_addr().unwrap().port();
    let lab = Lab::new(test, Images::in_dir(&Images::default_dir())).unwrap();
    let sim = lab
        .start_ipmi_sim(IpmiSimConfig {
            users: vec![BmcUser {
                id: 2,
                name: "ipmiusr".into(),
                password: PASSWORD.into(),
                privilege: "admin".into(),
            }],
            sol_port: Some(sol_port),
            ..IpmiSimConfig::default()
        })
        .unwrap();
    let mut port = tokio::task::spawn_blocking(move || SerialPort::accept(&serial))
        .await
        .unwrap();

    let c = Controller::start().await;
    let running = c.running();
    let store = &running.fleet.store;
    let (server, _) = store
        .register(
            Registration {
                identity_key: "sol-test".into(),
                system_uuid: None,
                serial: Some("SOL-1".into()),
                macs: vec![],
                hostname: None,
                agent_version: "0".into(),
                boot_id: "b".into(),
            },
            SessionGrant::default(),
            || "srv-sol".into(),
            "127.0.0.1:1",
        )
        .await
        .unwrap();
    let id = server.id;
    store
        .set_bmc(
            &id,
            BmcCredentials {
                mac: None,
                ip: None,
                username: "ipmiusr".into(),
                password: Secret::new(PASSWORD),
                user_id: Some(2),
                source: "test".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .set_bmc_endpoint(&id, "127.0.0.1", sim.lan_port())
            .await
            .unwrap()
    );

    // The chunked stream (admin token), read-only.
    let ca = std::fs::read(c.ca_pem()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/api/v1/servers/{id}/console", running.api_url))
        .bearer_auth(running.admin_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = collect(resp);
    until("the session to open", 20, || {
        let t = text.lock().unwrap();
        assert!(!t.contains("unavailable"), "{t}");
        t.contains("attached")
    })
    .await;

    // The host writes; the stream shows it (written again until it does: ipmi_sim may
    // drop what arrives before the session is fully up).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text.lock().unwrap().contains("boot: hello from ttyS0") {
        assert!(
            Instant::now() < deadline,
            "serial output never reached the stream: {}",
            text.lock().unwrap()
        );
        port.write("boot: hello from ttyS0\r\n");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // The WebSocket shares the same SOL session, holds it, and types into the host.
    let client = c.client();
    let ws = attach::connect(&client, &id, false).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let ws_text = Arc::new(Mutex::new(String::new()));
    let ws_sink = ws_text.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) => ws_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&b)),
                Message::Text(t) => ws_sink.lock().unwrap().push_str(t.as_str()),
                _ => {}
            }
        }
    });
    port.write("login: \r\n");
    until("output on the WebSocket", 20, || {
        ws_text.lock().unwrap().contains("login:")
    })
    .await;
    tx.send(Message::Binary(b"root\r".to_vec().into()))
        .await
        .unwrap();
    until("typed input at the serial port", 20, || {
        port.received().contains("root\r")
    })
    .await;
    tx.send(Message::Text(r#"{"break":true}"#.into()))
        .await
        .unwrap();
    // ipmi_sim's TCP serial port passes a break on as telnet's IAC BRK, written out with
    // the characters that follow it.
    tx.send(Message::Binary(b"\r".to_vec().into()))
        .await
        .unwrap();
    until("the break at the serial port", 20, || {
        port.received
            .lock()
            .unwrap()
            .windows(2)
            .any(|w| w == [0xFF, 0xF3])
    })
    .await;

    // One holder at a time: refused without --force, taken over with it.
    match attach::connect(&client, &id, false).await {
        Err(attach::AttachError::Refused { code, msg }) => {
            assert_eq!(code, "console_busy");
            assert!(msg.contains("--force"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let second = attach::connect(&client, &id, true).await.unwrap();
    until("the first holder to be told", 10, || {
        ws_text.lock().unwrap().contains("taken over")
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    drop(second);

    // `molar console` itself (stdin a pipe, so no raw mode): typed lines reach the host,
    // `~.` after a newline detaches with exit 0.
    let mut cli = tokio::process::Command::new(molar_tests::bins::bin("molar"))
        .arg("--state-dir")
        .arg(c.state.path())
        .args(["console", &id, "--force"])
        .env_remove("MOLAR_API")
        .env_remove("MOLAR_TOKEN_FILE")
        .env_remove("MOLAR_CA")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    use tokio::io::AsyncWriteExt;
    stdin.write_all(b"uname -a\r").await.unwrap();
    until("the CLI's input at the serial port", 20, || {
        port.received().contains("uname -a\r")
    })
    .await;
    port.write("Linux sol-host\r\n");
    stdin.write_all(b"\r~.").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), cli.wait_with_output())
        .await
        .expect("molar console detaches")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("detached"), "{stderr}");
    assert!(!port.received().contains("~."));

    // A token holder's stream ends once the token is revoked.
    let token = client.create_console_token(&id, Some(60)).await.unwrap();
    let resp = http
        .get(format!(
            "{}/api/v1/servers/{id}/console?token={}",
            running.api_url,
            token.token.expose()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let watched = collect(resp);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watched.lock().unwrap().contains("token holder sees this") {
        assert!(Instant::now() < deadline, "{}", watched.lock().unwrap());
        port.write("token holder sees this\r\n");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.revoke_console_tokens(&id).await.unwrap();
    // The host keeps writing: a console that never pauses still ends a revoked stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !watched
        .lock()
        .unwrap()
        .contains("console token revoked or expired")
    {
        assert!(Instant::now() < deadline, "{}", watched.lock().unwrap());
        port.write("chatter\r\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!watched.lock().unwrap().contains(token.token.expose()));

    // An idle console outlives a keepalive (Get Device ID in the SOL session, every 15 s)
    // and still carries output afterwards.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.lock().unwrap().contains("still here after idle") {
        assert!(Instant::now() < deadline, "{}", text.lock().unwrap());
        port.write("still here after idle\r\n");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !text.lock().unwrap().contains("[molar] console of"),
        "{}",
        text.lock().unwrap()
    );

    // The bounded log kept what scrolled by.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = String::from_utf8_lossy(&client.console_log(&id).await.unwrap()).into_owned();
    assert!(log.contains("boot: hello from ttyS0"), "{log}");
    assert!(log.contains("login:"), "{log}");

    eprintln!(
        "stream: {:?}\nlog: {log:?}\ntyped: {:02x?}",
        text.lock().unwrap(),
        port.received.lock().unwrap()
    );
    // No BMC password anywhere it could leak.
    for shown in [&*text.lock().unwrap(), &*ws_text.lock().unwrap(), &log] {
        assert!(!shown.contains(PASSWORD));
    }
    drop(sim);
}
