//! Redfish out-of-band control against the `sushy-tools` emulator (`sushy-emulator --fake`)
//! on 127.0.0.1, over HTTPS with a certificate made here and pinned by fingerprint, with
//! basic-auth users from an htpasswd file: enrolment (untrusted certificate refused showing
//! the fingerprint, wrong password refused with nothing stored), power on/off/cycle observed
//! in the emulator's own System resource, boot override, virtual media inserted and ejected,
//! out-of-band inventory stored. The virtual media is a real `molar.iso` (imagebuilder's ISO
//! writer over systemd's EFI stub) served by a molar controller's `/media/` listener, which
//! the emulator downloads on InsertMedia; `molar bootdev SERVER cd --media URL` drives it
//! through the controller's queue. Skips without sushy-emulator (fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_controller::api::{AddBmc, AddServer};
use molar_controller::enrol::{EnrolError, EnrolRequest, enrol};
use molar_controller::oob::{
    self, BmcProtocol, BmcTrust, BootTarget, OobAction, OobError, PowerChange,
};
use molar_controller::store::Store;
use molar_protocol::Secret;
use molar_tests::bins::bin;
use molar_tests::inproc::Controller;
use molar_tests::lab::{skip_or_fail, which};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const USER: &str = "molar-op";
const PASSWORD: &str = "Rf-0perator-pw";

/// A process this test started, killed by its own handle when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_tcp(port: u16, what: &str, child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

struct Emulator {
    port: u16,
    fingerprint: String,
    /// `molar.iso` on the controller's plain-HTTP media listener.
    media_url: String,
    iso: Vec<u8>,
    controller: Controller,
    _emu: Proc,
    dir: tempfile::TempDir,
}

/// A small but real `molar.iso`: the EFI stub (when installed) with stand-in kernel and
/// initramfs, on an El Torito ESP.
fn small_iso() -> Vec<u8> {
    use molar_imagebuilder::{iso, uki};
    let uki = match std::fs::read(uki::EFI_STUB) {
        Ok(stub) => uki::build(
            &stub,
            &uki::UkiParts {
                cmdline: "console=ttyS0 molar.controller=10.0.2.100:9000",
                kernel_version: "6.1.0-test",
                linux: &[0x4d; 4096],
                initrd: &[0x07; 4096],
            },
        )
        .unwrap(),
        Err(_) => b"MZ stand-in for the unified kernel image".repeat(100),
    };
    iso::write_iso("MOLAR", &iso::esp_image(&uki).unwrap()).unwrap()
}

async fn emulator(test: &str) -> Option<Emulator> {
    if which("sushy-emulator").is_none() {
        return skip_or_fail(
            test,
            "sushy-emulator is not in PATH (scripts/install-deps: pip install sushy-tools)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let fingerprint = molar_controller::pki::fingerprint(cert.der());
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    // sushy-tools checks basic auth against an htpasswd file (bcrypt, which it depends on).
    let hash = Command::new("python3")
        .args([
            "-c",
            "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())",
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(
        hash.status.success(),
        "bcrypt: {}",
        String::from_utf8_lossy(&hash.stderr)
    );
    let hash = String::from_utf8(hash.stdout).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("{USER}:{}\n", hash.trim()),
    )
    .unwrap();
    let cfg = dir.path().join("emulator.conf");
    std::fs::write(
        &cfg,
        format!(
            "SUSHY_EMULATOR_AUTH_FILE = {:?}\n",
            dir.path().join("htpasswd").display().to_string()
        ),
    )
    .unwrap();
    // The image the virtual media fetches, served by a controller on loopback.
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let iso = small_iso();
    std::fs::write(media.join("molar.iso"), &iso).unwrap();
    let controller = Controller::start_with_media(&media).await;
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
    let mut emu = Command::new("sushy-emulator")
        .arg("--config")
        .arg(&cfg)
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "--fake"])
        .arg("--ssl-certificate")
        .arg(dir.path().join("cert.pem"))
        .arg("--ssl-key")
        .arg(dir.path().join("key.pem"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_tcp(port, "sushy-emulator", &mut emu);
    Some(Emulator {
        port,
        fingerprint,
        media_url: controller.media_url("molar.iso"),
        iso,
        controller,
        _emu: Proc(emu),
        dir,
    })
}

/// The emulator's own view of a resource, read directly (not through molar's client).
async fn direct(e: &Emulator, path: &str) -> Value {
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    c.get(format!("https://127.0.0.1:{}{path}", e.port))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn system(e: &Emulator) -> Value {
    let col = direct(e, "/redfish/v1/Systems").await;
    let path = col["Members"][0]["@odata.id"].as_str().unwrap().to_owned();
    direct(e, &path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redfish_bmc_is_enrolled_powered_booted_and_inventoried() {
    let Some(e) = emulator("redfish_oob").await else {
        return;
    };
    molar_controller::pki::install_default_provider();
    let store = Store::open_in_memory().unwrap();
    let req = |password: &str, trust: Option<BmcTrust>| EnrolRequest {
        name: "rf-01".into(),
        host: "127.0.0.1".into(),
        port: Some(e.port),
        username: USER.into(),
        password: Secret::new(password),
        allow_ipmi15: false,
        protocol: Some(BmcProtocol::Redfish),
        trust,
    };
    // Without a trust option the self-signed certificate is refused, showing its fingerprint.
    let err = enrol(&store, req(PASSWORD, None)).await.unwrap_err();
    assert!(err.to_string().contains(&e.fingerprint), "{err}");
    assert!(store.resolve_server("rf-01").await.unwrap().is_none());
    // A wrong password: refused, nothing stored, not repeated.
    let pin = || Some(BmcTrust::Fingerprint(e.fingerprint.clone()));
    let wrong = "Wr0ng-rf-pass";
    let err = enrol(&store, req(wrong, pin())).await.unwrap_err();
    assert!(
        matches!(err, EnrolError::Bmc(OobError::Auth { .. })),
        "{err}"
    );
    assert!(!err.to_string().contains(wrong), "{err}");
    assert!(store.resolve_server("rf-01").await.unwrap().is_none());
    // Pinned: enrolled, with the out-of-band inventory stored.
    let server = enrol(&store, req(PASSWORD, pin())).await.unwrap();
    let rec = store.bmc(&server.id).await.unwrap().unwrap();
    assert_eq!(rec.protocol, "redfish");
    let sys = system(&e).await;
    let uuid = sys["UUID"].as_str().unwrap().to_ascii_lowercase();
    assert_eq!(rec.system_guid.as_deref(), Some(uuid.as_str()));
    let inv = rec
        .oob_inventory
        .clone()
        .expect("out-of-band inventory stored");
    assert_eq!(inv["source"], "redfish");
    assert_eq!(inv["system_uuid"], uuid.as_str());
    assert!(!serde_json::to_string(&rec).unwrap().contains(PASSWORD));

    let t = store.bmc_target(&server.id).await.unwrap().unwrap();
    for (change, want) in [
        (PowerChange::On, "On"),
        (PowerChange::Off, "Off"),
        (PowerChange::On, "On"),
        (PowerChange::Cycle, "On"),
    ] {
        let out = oob::perform(&t, &OobAction::Power(change)).await;
        match out {
            Ok(o) => assert!(o.message.contains("successful"), "{}", o.message),
            // The fake system may not advertise PowerCycle: refused clearly, not emulated.
            Err(err) if change == PowerChange::Cycle => {
                assert!(err.to_string().contains("PowerCycle"), "{err}");
                continue;
            }
            Err(err) => panic!("{change:?}: {err}"),
        }
        // The emulator's system may pass through a transition state first.
        let until = Instant::now() + Duration::from_secs(20);
        let mut seen = system(&e).await["PowerState"].clone();
        while seen != want && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = system(&e).await["PowerState"].clone();
        }
        assert_eq!(seen, want, "{change:?}");
    }
    let st = oob::perform(&t, &OobAction::PowerStatus).await.unwrap();
    assert_eq!(st.power_on, Some(true));

    oob::perform(
        &t,
        &OobAction::BootDevice {
            device: BootTarget::Pxe,
            persistent: false,
            efi: true,
        },
    )
    .await
    .unwrap();
    let boot = &system(&e).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    // The fake driver stores the target and mode; it reports every override as Continuous
    // (the Once sent is checked against the DMTF-shaped service in the controller's tests).
    assert_ne!(boot["BootSourceOverrideEnabled"], "Disabled", "{boot}");

    let out = oob::perform(
        &t,
        &OobAction::BootFromMedia {
            url: e.media_url.clone(),
        },
    )
    .await
    .unwrap();
    assert!(
        out.message.contains("virtual media inserted"),
        "{}",
        out.message
    );
    let boot = &system(&e).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Cd", "{boot}");
    let mgr = direct(&e, "/redfish/v1/Managers").await;
    let mpath = mgr["Members"][0]["@odata.id"].as_str().unwrap().to_owned();
    let manager = direct(&e, &mpath).await;
    let vm_path = manager["VirtualMedia"]["@odata.id"]
        .as_str()
        .unwrap()
        .to_owned();
    let vms = direct(&e, &vm_path).await;
    let mut cd = None;
    for m in vms["Members"].as_array().expect("virtual media members") {
        let vm = direct(&e, m["@odata.id"].as_str().unwrap()).await;
        if vm["MediaTypes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "CD")
        {
            cd = Some(m["@odata.id"].as_str().unwrap().to_owned());
            assert_eq!(vm["Inserted"], true, "{vm}");
            assert_eq!(vm["Image"], e.media_url.as_str(), "{vm}");
        }
    }
    let cd = cd.expect("a CD virtual media device");
    oob::perform(&t, &OobAction::EjectMedia).await.unwrap();
    let vm = direct(&e, &cd).await;
    assert_ne!(vm["Inserted"], true, "{vm}");
}

/// The emulator's CD virtual media device: (its path, its resource).
async fn cd_media(e: &Emulator) -> (String, Value) {
    let mgr = direct(e, "/redfish/v1/Managers").await;
    let mpath = mgr["Members"][0]["@odata.id"].as_str().unwrap().to_owned();
    let manager = direct(e, &mpath).await;
    let vms = direct(e, manager["VirtualMedia"]["@odata.id"].as_str().unwrap()).await;
    for m in vms["Members"].as_array().expect("virtual media members") {
        let path = m["@odata.id"].as_str().unwrap().to_owned();
        let vm = direct(e, &path).await;
        if vm["MediaTypes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "CD")
        {
            return (path, vm);
        }
    }
    panic!("no CD virtual media device in {vms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn molar_bootdev_cd_media_inserts_the_iso_the_controller_serves() {
    let Some(e) = emulator("redfish_oob_media").await else {
        return;
    };
    let ctl = &e.controller;
    let client = ctl.client();
    client
        .add_server(&AddServer {
            name: "rf-iso".into(),
            bmc: AddBmc {
                host: "127.0.0.1".into(),
                port: Some(e.port),
                username: USER.into(),
                password: Secret::new(PASSWORD),
                allow_ipmi15: false,
                protocol: Some(BmcProtocol::Redfish),
                tls_ca_pem: None,
                tls_fingerprint: Some(e.fingerprint.clone()),
                tls_insecure: false,
            },
        })
        .await
        .unwrap();

    // What the BMC will fetch: the whole ISO, and ranges of it.
    let http = reqwest::Client::new();
    let r = http.head(&e.media_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        e.iso.len().to_string()
    );
    let r = http
        .get(&e.media_url)
        .header("range", "bytes=32768-34815")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &e.iso[32768..34816]);

    let state = ctl.ca_pem().parent().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new(bin("molar"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&[
        "bootdev",
        "rf-iso",
        "cd",
        "--media",
        &e.media_url,
        "--wait",
        "--wait-timeout",
        "120",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    // The emulator downloaded the image from the controller (InsertMedia fails otherwise)
    // and shows it inserted, with a one-time boot from CD.
    let (cd, vm) = cd_media(&e).await;
    assert_eq!(vm["Inserted"], true, "{vm}");
    assert_eq!(vm["Image"], e.media_url.as_str(), "{vm}");
    assert_eq!(system(&e).await["Boot"]["BootSourceOverrideTarget"], "Cd");

    // A URL the controller does not serve: the BMC's fetch fails and the request says so.
    let missing = e.media_url.replace("molar.iso", "missing.iso");
    let (code, out) = run(&["bootdev", "rf-iso", "cd", "--media", &missing, "--wait"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("InsertMedia refused: HTTP 400"), "{out}");
    // ... because its download got the controller's 404.
    let log = std::fs::read_to_string(e.dir.path().join("emulator.log")).unwrap();
    assert!(
        log.contains(&format!("Failed fetching image from URL {missing}")) && log.contains("404"),
        "{log}"
    );
    let vm = direct(&e, &cd).await;
    assert_ne!(vm["Image"], missing.as_str(), "{vm}");
}
