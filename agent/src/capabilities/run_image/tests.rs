//! Tests of `standbye.run_image` against the recording fake of `boot::sys` (order of events,
//! refusals, the way out) and a local HTTP server (the fetched config drive).

use super::*;
use crate::boot::sys::fake::{Call, RecordingBoot};
use crate::boot::tests::{ROOT_UUID, disk_image};
use crate::disks::tests::Fixture;
use crate::hw::kexec::KexecError;
use crate::tasks::{TaskEngine, TaskRegistry};
use futures::FutureExt;
use molar_protocol::bmc::{BootDevice, BootDeviceResult};
use molar_protocol::catalogue::{Method, RunImage as RunImageMethod};
use molar_protocol::methods::{TaskState, TaskStatus};
use molar_protocol::{Handler, Peer, PeerConfig, PeerHandle};
use serde_json::json;
use std::sync::Mutex;

struct World {
    fixture: Fixture,
    dev: PathBuf,
    esp: PathBuf,
    rootfs: PathBuf,
}

/// A virtio disk `vda` holding [`disk_image`], its ESP and root as fixture trees, and a
/// UEFI machine's (temp) efivarfs with one firmware entry.
fn world() -> World {
    let fixture = Fixture::new();
    fixture.disk("pci0000:00/0000:00:04.0/virtio1", "vda", "254:0", 32768);
    let dev = fixture.root().join("dev/vda");
    std::fs::write(&dev, disk_image()).unwrap();
    let esp = fixture.root().join("trees/esp");
    std::fs::create_dir_all(esp.join("EFI/debian")).unwrap();
    std::fs::write(esp.join("EFI/debian/shimx64.efi"), "MZ").unwrap();
    let rootfs = fixture.root().join("trees/root");
    for d in ["etc", "boot"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("boot/vmlinuz-6.1.0-13-amd64"), "kernel").unwrap();
    std::fs::write(rootfs.join("boot/initrd.img-6.1.0-13-amd64"), "initrd").unwrap();
    std::os::unix::fs::symlink("vmlinuz-6.1.0-13-amd64", rootfs.join("boot/vmlinuz")).unwrap();
    std::os::unix::fs::symlink("initrd.img-6.1.0-13-amd64", rootfs.join("boot/initrd.img"))
        .unwrap();
    let efivars = fixture.root().join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&efivars).unwrap();
    std::fs::write(
        efivars.join(format!("BootOrder-{}", efi::GLOBAL_GUID)),
        [7, 0, 0, 0, 5, 0],
    )
    .unwrap();
    World {
        fixture,
        dev,
        esp,
        rootfs,
    }
}

fn fake(w: &World) -> RecordingBoot {
    RecordingBoot {
        trees: [(2048 * 512, w.esp.clone()), (8192 * 512, w.rootfs.clone())].into(),
        written: [(w.dev.clone(), "debian-12".to_owned())].into(),
        bmc: Some(BootDeviceResult {
            device: BootDevice::Disk,
            persistent: false,
            efi: true,
        }),
        ..RecordingBoot::default()
    }
}

/// Runs one `standbye.run_image` against a controller stand-in that stores terminal
/// statuses (recording `Stored` into the fake's record) after `ack_delay`. Returns the
/// terminal status once the fake saw a jump, or after `wait`.
async fn run(
    w: &World,
    sys: Arc<RecordingBoot>,
    authority: Authority,
    params: Value,
    ack_delay: Duration,
    wait: Duration,
) -> TaskStatus {
    let mut r = TaskRegistry::new();
    r.register(
        RunImageMethod::NAME,
        RunImage {
            root: w.fixture.root().to_path_buf(),
            authority,
            ready: HardwareReady::default(),
            sys: sys.clone(),
            scratch: w.fixture.root().join("run/molar/boot"),
            running: Arc::default(),
        },
    );
    let engine = TaskEngine::new(r);
    let (a, b) = tokio::io::duplex(1 << 20);
    let noop = Arc::new(|_: &PeerHandle, _: String, _: Value| async { Ok(json!({})) }.boxed());
    let (agent, _) = Peer::spawn(a, noop, PeerConfig::default());
    let terminal = Arc::new(Mutex::new(None));
    let ctl: Arc<dyn Handler> = {
        let (calls, terminal) = (sys.calls.clone(), terminal.clone());
        Arc::new(move |_: &PeerHandle, _: String, params: Value| {
            let (calls, terminal) = (calls.clone(), terminal.clone());
            async move {
                let s: TaskStatus = serde_json::from_value(params).unwrap();
                if s.state.is_terminal() {
                    tokio::time::sleep(ack_delay).await;
                    calls
                        .lock()
                        .unwrap()
                        .push(Call::Stored(s.state.to_string()));
                    *terminal.lock().unwrap() = Some(s);
                }
                Ok(json!({}))
            }
            .boxed()
        })
    };
    let (_ctl, _) = Peer::spawn(b, ctl, PeerConfig::default());
    tokio::spawn({
        let e = engine.clone();
        async move { e.pump(agent).await }
    });
    let mut params = params;
    params["task_id"] = json!("run-1");
    engine.submit(RunImageMethod::NAME, params).unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < wait {
        if sys.calls().iter().any(|c| matches!(c, Call::Jump(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = engine.get("run-1").unwrap();
    assert!(info.state.is_terminal(), "{info:?}");
    terminal
        .lock()
        .unwrap()
        .clone()
        .expect("the controller got the terminal status")
}

fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("not in {calls:#?}"))
}

/// The whole way on a UEFI machine with a BMC: config drive, the kernel from Debian's
/// symlinks, `Boot0000` first in `BootOrder`, next boot from disk, kexec loaded with the
/// PARTUUID root and the operator's arguments, the filesystems released, and the jump
/// only after the controller stored the result.
#[tokio::test]
async fn config_drive_boot_entry_bmc_then_kexec_after_the_result_is_stored() {
    let w = world();
    let sys = Arc::new(fake(&w));
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        json!({"image_id": "debian-12", "device": "/dev/vda",
            "config_drive": {"meta_data": {"uuid": "u-1", "hostname": "h"}},
            "kernel_args": "console=ttyS0 molar.marker=1"}),
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status.state, TaskState::Complete, "{status:?}");
    let r: RunImageResult = serde_json::from_value(status.result.unwrap()).unwrap();
    assert_eq!(r.boot, BootMethod::Kexec);
    assert_eq!(r.reason, None);
    assert_eq!(
        r.kernel.as_deref(),
        Some("/boot/vmlinuz-6.1.0-13-amd64 on partition 3")
    );
    assert_eq!(
        r.cmdline.as_deref(),
        Some(format!("root=PARTUUID={ROOT_UUID} ro console=ttyS0 molar.marker=1").as_str())
    );
    assert_eq!(r.entry_source.as_deref(), Some("symlinks"));
    assert_eq!(r.config_drive.unwrap().partition_number, 3);
    let entry = r.boot_entry.unwrap();
    assert_eq!(
        (entry.name.as_str(), entry.loader.as_str(), entry.partition),
        ("Boot0000", "\\EFI\\debian\\shimx64.efi", 1)
    );
    assert_eq!(entry.boot_order, ["0000", "0005"]);
    assert_eq!(r.bmc_next_boot.unwrap().device, BootDevice::Disk);
    let efivars = w.fixture.root().join("sys/firmware/efi/efivars");
    let boot0000 = std::fs::read(efivars.join(format!("Boot0000-{}", efi::GLOBAL_GUID))).unwrap();
    let option = efi::LoadOption::decode("Boot0000", &boot0000[4..]).unwrap();
    assert_eq!(option.description, "debian");

    let calls = sys.calls();
    let cd = position(&calls, |c| matches!(c, Call::ConfigDrive { .. }));
    let mount = position(&calls, |c| matches!(c, Call::Mount { .. }));
    let load = position(&calls, |c| matches!(c, Call::KexecLoad { .. }));
    let bmc = position(&calls, |c| *c == Call::BmcDisk { efi: true });
    let umount = position(&calls, |c| matches!(c, Call::Umount(_)));
    let stored = position(&calls, |c| *c == Call::Stored("complete".into()));
    let jump = position(&calls, |c| *c == Call::Jump(Jump::Kexec));
    assert!(
        cd < mount && mount < bmc && bmc < load && load < umount,
        "{calls:#?}"
    );
    assert!(
        umount < stored && stored < jump,
        "the jump waited for the controller: {calls:#?}"
    );
    match &calls[load] {
        Call::KexecLoad {
            kernel, initrds, ..
        } => {
            assert_eq!(kernel, &w.rootfs.join("boot/vmlinuz-6.1.0-13-amd64"));
            assert_eq!(initrds, &[w.rootfs.join("boot/initrd.img-6.1.0-13-amd64")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !calls.iter().any(|c| matches!(c, Call::MountEfivarfs(_))),
        "already mounted"
    );
}

/// No kernel in the image: `auto` reboots and says why; `kexec` fails and stays up.
#[tokio::test]
async fn without_a_kernel_auto_reboots_with_the_reason_and_kexec_fails() {
    let w = world();
    for f in ["boot/vmlinuz", "boot/vmlinuz-6.1.0-13-amd64"] {
        std::fs::remove_file(w.rootfs.join(f)).unwrap();
    }
    std::fs::remove_dir_all(w.fixture.root().join("sys/firmware")).unwrap();
    let sys = Arc::new(fake(&w));
    let params = json!({"image_id": "debian-12", "device": "vda"});
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        params.clone(),
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    let r: RunImageResult = serde_json::from_value(status.result.unwrap()).unwrap();
    assert_eq!(r.boot, BootMethod::Reboot);
    assert!(
        r.reason.as_deref().unwrap().starts_with(
            "no kernel found in the image (no boot loader specification entries; no grub.cfg; "
        ),
        "{:?}",
        r.reason
    );
    assert_eq!(r.boot_entry, None, "BIOS: the image's own loader");
    let calls = sys.calls();
    assert!(calls.contains(&Call::BmcDisk { efi: false }));
    assert!(!calls.iter().any(|c| matches!(c, Call::KexecLoad { .. })));
    let stored = position(&calls, |c| *c == Call::Stored("complete".into()));
    let jump = position(&calls, |c| *c == Call::Jump(Jump::Reboot));
    assert!(stored < jump);

    let sys = Arc::new(fake(&w));
    let mut forced = params;
    forced["boot"] = json!("kexec");
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        forced,
        Duration::ZERO,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status.state, TaskState::Error);
    assert_eq!(status.code.as_deref(), Some("kexec_not_viable"));
    assert!(
        status
            .msg
            .unwrap()
            .starts_with("kexec asked for but not viable: no kernel found")
    );
    assert!(
        !sys.calls().iter().any(|c| matches!(c, Call::Jump(_))),
        "stays up"
    );
}

/// A kernel the running kernel refuses (lockdown): `auto` reboots with that reason, and
/// `reboot` never tries kexec at all.
#[tokio::test]
async fn a_refused_kexec_load_becomes_the_reboot_reason() {
    let w = world();
    let mut f = fake(&w);
    f.kexec_error = Some(|| KexecError::SignatureRejected {
        kernel: "/k".into(),
    });
    let sys = Arc::new(f);
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        json!({"image_id": "debian-12", "device": "/dev/vda"}),
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    let r: RunImageResult = serde_json::from_value(status.result.unwrap()).unwrap();
    assert_eq!(r.boot, BootMethod::Reboot);
    assert!(r.reason.unwrap().contains("signature rejected"));
    assert!(sys.calls().contains(&Call::Jump(Jump::Reboot)));

    let sys = Arc::new(fake(&w));
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        json!({"image_id": "debian-12", "device": "/dev/vda", "boot": "reboot"}),
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    let r: RunImageResult = serde_json::from_value(status.result.unwrap()).unwrap();
    assert_eq!(
        (r.boot, r.reason.as_deref()),
        (BootMethod::Reboot, Some("reboot requested"))
    );
    assert!(r.kernel.is_some(), "the kernel is still reported");
    assert!(
        !sys.calls()
            .iter()
            .any(|c| matches!(c, Call::KexecLoad { .. }))
    );
}

/// Serves `body` for every request on 127.0.0.1, honouring `Range: bytes=A-B`.
fn serve(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                }
            }
            let mut w = conn;
            let (a, b) = range.unwrap_or((0, body.len() - 1));
            let part = &body[a..=b.min(body.len() - 1)];
            let _ = write!(
                w,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{}/{}\r\nConnection: close\r\n\r\n",
                part.len(),
                a + part.len() - 1,
                body.len()
            );
            let _ = w.write_all(part);
        }
    });
    format!("http://{addr}/cd.img")
}

#[test]
fn a_fetched_config_drive_is_checked_before_use() {
    let body = b"a config drive image".to_vec();
    let url = serve(body.clone());
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let options = crate::image::FetchOptions::default();
    assert_eq!(
        fetch_config_drive(&url, &format!("sha256:{digest}"), &options).unwrap(),
        body
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    let e = fetch_config_drive(&url, &wrong, &options).unwrap_err();
    assert_eq!(e.code, "checksum_mismatch");
    assert_eq!(
        e.msg,
        format!("config_drive url: {url} has sha256:{digest}, expected {wrong}")
    );
    // Userinfo and a presigned query never reach the message.
    let secret_url = format!(
        "{}?X-Amz-Signature=s3cr3t",
        url.replacen("http://", "http://molar:s3cr3t@", 1)
    );
    let e = fetch_config_drive(&secret_url, &wrong, &options).unwrap_err();
    assert_eq!(e.code, "checksum_mismatch");
    assert!(!e.msg.contains("s3cr3t"), "{e:?}");
    let e = fetch_config_drive(&url, "md5:abc", &options).unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMS);
    // The config drive's own CA is what the client trusts: one that is no certificate
    // stops the fetch before a request.
    let options = crate::image::FetchOptions {
        ca_pem: Some("not a certificate".into()),
        ..options
    };
    let e = fetch_config_drive(&url, &format!("sha256:{digest}"), &options).unwrap_err();
    assert!(
        e.msg
            .starts_with("config_drive url: ca_pem holds no usable certificate"),
        "{e:?}"
    );
}

/// Refusals come before anything is written: a host without --allow-host-power, a
/// device holding another image (or none), a device that does not exist.
#[tokio::test]
async fn refusals_touch_nothing() {
    let w = world();
    let cases = [
        (
            Authority::host(&["/dev/vda".into()], false),
            json!({"image_id": "debian-12", "device": "/dev/vda"}),
            "refused",
            "kexec refused: not running as the ramdisk's init".to_owned(),
        ),
        (
            Authority::Ramdisk,
            json!({"image_id": "ubuntu", "device": "/dev/vda"}),
            "image_mismatch",
            format!("{} holds image debian-12, not ubuntu", w.dev.display()),
        ),
        (
            Authority::Ramdisk,
            json!({"image_id": "debian-12", "device": "/dev/vdz"}),
            "not_found",
            "/dev/vdz: no such block device".to_owned(),
        ),
        (
            Authority::host(&[], true),
            json!({"image_id": "debian-12", "device": "/dev/vda"}),
            "not_allowed_on_host",
            "/dev/vda: not running as the ramdisk's init".to_owned(),
        ),
    ];
    for (authority, params, code, msg) in cases {
        let sys = Arc::new(fake(&w));
        let status = run(
            &w,
            sys.clone(),
            authority,
            params,
            Duration::ZERO,
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(status.state, TaskState::Error);
        assert_eq!(status.code.as_deref(), Some(code));
        assert!(
            status.msg.as_deref().unwrap().starts_with(&msg),
            "{status:?}"
        );
        let changed: Vec<_> = sys
            .calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::Stored(_)))
            .collect();
        assert!(changed.is_empty(), "{code}: {changed:?}");
    }
}

/// A staged capsule (the marker `decom.firmware_secure` leaves): `kexec` is refused with the
/// reason, `auto` reboots through the firmware for it, and kexec is never loaded.
#[tokio::test]
async fn a_staged_capsule_refuses_kexec() {
    let w = world();
    let marker = w.fixture.root().join(CAPSULE_MARKER);
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "capsule_on_disk entry0\n").unwrap();
    let sys = Arc::new(fake(&w));
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        json!({"image_id": "debian-12", "device": "/dev/vda", "boot": "kexec"}),
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status.code.as_deref(), Some("kexec_not_viable"));
    let msg = status.msg.unwrap_or_default();
    assert!(msg.contains("a firmware capsule is staged"), "{msg}");
    let sys = Arc::new(fake(&w));
    let status = run(
        &w,
        sys.clone(),
        Authority::Ramdisk,
        json!({"image_id": "debian-12", "device": "/dev/vda"}),
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    let r: RunImageResult = serde_json::from_value(status.result.unwrap()).unwrap();
    assert_eq!(r.boot, BootMethod::Reboot);
    assert!(r.reason.unwrap().contains("capsule"));
    assert!(sys.calls().contains(&Call::Jump(Jump::Reboot)));
    assert!(
        !sys.calls()
            .iter()
            .any(|c| matches!(c, Call::KexecLoad { .. }))
    );
}
