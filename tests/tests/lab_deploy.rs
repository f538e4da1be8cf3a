//! The lab deploys an operating system: a small bootable disk image built in the test
//! (`molar_tests::lab::guest`: GPT, ext4 root made by `mkfs.ext4 -d` with the Debian kernel
//! and a guest initramfs), converted to compressed qcow2 and served from loopback.
//!
//! - `the_guest_boots_and_reads_its_config_drive`: the guest image itself, booted directly
//!   (`-kernel/-initrd`) with a config drive made by `mkfs.vfat` + `mcopy`, prints its marker
//!   and the meta data: proof of the guest, independent of molar's writers.
//! - `a_server_deploys_a_qcow2_image_and_kexecs_into_it`: one VM booted from the ramdisk with
//!   `ipmi_sim` as its BMC, against a real controller: `standbye.cache_images` (on the virtio
//!   disk) → `standbye.prepare_image` on the NVMe disk → `standbye.run_image` with a config
//!   drive → the guest's marker and meta data on the serial console after kexec. Then the
//!   reboot path in the same VM: it powers itself off, the BMC powers it on again into the
//!   ramdisk, an image without a kernel is written straight from its URL and run, the task
//!   reports a reboot with the reason, and the agent comes back with a new boot id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use molar_tests::lab::guest::{self, DiskSpec, GuestKit, GuestReport};
use molar_tests::lab::{Boot, Disk, DiskKind, Lab, QemuConfig};
use serde_json::json;

#[test]
fn the_guest_boots_and_reads_its_config_drive() {
    let Some(lab) = Lab::require("the_guest_boots_and_reads_its_config_drive") else {
        return;
    };
    let Some(kit) = GuestKit::require(&lab) else {
        return;
    };
    let meta = json!({
        "uuid": "0b6f1b0e-5c7e-4f39-9d1b-6c0f3f1e2a11",
        "hostname": "guest-direct",
        "name": "guest-direct",
        "launch_index": 0
    });
    let cd = guest::vfat_config_drive(lab.dir(), &meta).unwrap();
    let spec = DiskSpec {
        size_bytes: 64 << 20,
        kernel: true,
        config_drive: Some(cd),
    };
    let disk = guest::build_disk(&kit, &spec, lab.dir(), "guest").unwrap();

    let mut cfg = QemuConfig::server(&lab);
    cfg.name = "guest".into();
    cfg.boot = Boot::Kernel {
        kernel: kit.kernel.clone(),
        initrd: kit.initrd.clone(),
    };
    cfg.append = vec!["console=ttyS0".into(), "panic=-1".into()];
    cfg.disks = vec![Disk {
        kind: DiskKind::Nvme {
            serial: "guest0".into(),
        },
        size_bytes: spec.size_bytes,
    }];
    cfg.no_reboot = true;
    std::fs::rename(&disk.raw, cfg.disk_path(lab.dir(), 0)).unwrap();
    let mut vm = lab.spawn_qemu(&cfg).unwrap();
    vm.wait_for_console(guest::POWEROFF, Duration::from_secs(120))
        .unwrap();
    assert!(
        vm.wait_exit(Duration::from_secs(30)),
        "the guest powered off"
    );
    let report = GuestReport::parse(&vm.console());
    assert_eq!(report.boot_ids.len(), 1, "{report:?}");
    assert_eq!(report.meta_data, [meta], "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
}

mod deploy {
    use super::*;
    use molar_controller::client::Client;
    use molar_controller::store::{TaskEvent, TaskPhase};
    use molar_tests::inproc::{Controller, eventually};
    use molar_tests::lab::{HttpFiles, IpmiSim, IpmiSimConfig, Qemu};
    use serde_json::Value;
    use std::time::Instant;

    const BOOT: Duration = Duration::from_secs(180);
    /// The guest's port for the image server (QEMU guestfwd to the host's `HttpFiles`).
    const IMAGES_PORT: u16 = 8080;
    const NVME: &str = "nvme0n1";

    fn block<T>(f: impl FnOnce() -> T) -> T {
        tokio::task::block_in_place(f)
    }

    /// Starts `method` on the server and follows it to its end; returns the last event.
    async fn run_task(c: &Client, id: &str, method: &str, params: Value, secs: u64) -> TaskEvent {
        let t = c
            .start_task(id, method, params)
            .await
            .unwrap_or_else(|e| panic!("starting {method}: {e}"));
        let mut events = c.task_events(&t.task_id).await.unwrap();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(ev)) => last = Some(ev.unwrap()),
                Ok(None) => break,
                Err(_) => {
                    dump_logs(c, id).await;
                    panic!("{method} did not end within {secs} s; last event {last:?}");
                }
            }
        }
        let last = last.unwrap_or_else(|| panic!("{method}: no events"));
        if last.state != TaskPhase::Complete {
            dump_logs(c, id).await;
        }
        eprintln!(
            "lab: {method}: {} {}",
            last.state.as_str(),
            last.result
                .as_ref()
                .map(Value::to_string)
                .or(last.msg.clone())
                .unwrap_or_default()
        );
        last
    }

    /// The agent's last log records, for a failed step.
    async fn dump_logs(c: &Client, id: &str) {
        match c.logs(id, 0, 10_000).await {
            Ok(page) => {
                for l in page.logs.iter().rev().take(60).rev() {
                    let fields = l.fields.as_ref().map(Value::to_string).unwrap_or_default();
                    eprintln!("agent log: {} {} {} {fields}", l.level, l.target, l.msg);
                }
            }
            Err(e) => eprintln!("agent logs unavailable: {e}"),
        }
    }

    fn complete(ev: &TaskEvent, what: &str) -> Value {
        assert_eq!(ev.state, TaskPhase::Complete, "{what}: {ev:?}");
        ev.result
            .clone()
            .unwrap_or_else(|| panic!("{what}: no result"))
    }

    /// The server's agent, connected with a boot id other than `old`.
    async fn connected(c: &Client, old: Option<&str>) -> (String, String) {
        eventually(BOOT.as_secs(), "the agent to (re)connect", || async {
            let servers = c.servers().await.ok()?;
            let s = servers
                .into_iter()
                .find(|s| s.server.serial.as_deref() == Some("S123") && s.server.connected)?;
            let boot = s.server.boot_id.clone()?;
            (Some(boot.as_str()) != old).then_some((s.server.id, boot))
        })
        .await
    }

    fn vm(sim: &IpmiSim) -> &Qemu {
        sim.vm().expect("the BMC's VM")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_server_deploys_a_qcow2_image_and_kexecs_into_it() {
        let Some(lab) = Lab::require("a_server_deploys_a_qcow2_image_and_kexecs_into_it") else {
            return;
        };
        let Some(kit) = block(|| GuestKit::require(&lab)) else {
            return;
        };
        // Two images: the guest, and the same layout without a kernel (kexec not viable).
        let www = lab.dir().join("www");
        let (guest_img, nokernel_img) = block(|| {
            let g = guest::build_disk(&kit, &with_kernel(true), lab.dir(), "guest").unwrap();
            let n = guest::build_disk(&kit, &with_kernel(false), lab.dir(), "nokernel").unwrap();
            (
                (guest::publish_qcow2(&g.raw, &www, "guest").unwrap(), g),
                (guest::publish_qcow2(&n.raw, &www, "nokernel").unwrap(), n),
            )
        });
        let http = HttpFiles::serve(&www).unwrap();
        let image = |p: &guest::Published, id: &str| {
            json!({
                "id": id,
                "url": format!("http://10.0.2.100:{IMAGES_PORT}/{}", p.url_path),
                "checksum": p.checksum,
                "format": "qcow2",
            })
        };

        let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
        let client = ctl.client();
        let token = ctl.agent_token().await;
        let ctl_port = ctl.agent_port();
        let mut server = QemuConfig::server(&lab);
        // The NVMe disk takes the image and a config drive after it; the virtio disk the cache.
        server.disks[0].size_bytes = 256 << 20;
        server.disks[1].size_bytes = 128 << 20;
        server.forward_as(9000, ctl_port);
        server.forward_as(IMAGES_PORT, http.port());
        server.append.extend([
            "molar.controller=10.0.2.100:9000".to_owned(),
            "panic=10".to_owned(),
        ]);
        server.oem_strings = vec![
            format!("molar.token={}", token.expose()),
            format!("molar.ca={}", ctl.running().ca_fingerprint),
        ];
        let started = Instant::now();
        let sim = block(|| {
            lab.start_ipmi_sim(IpmiSimConfig {
                power: Some(server.clone()),
                ..IpmiSimConfig::default()
            })
        })
        .unwrap();
        let nvme_file = server.disk_path(lab.dir(), 0);
        let (id, boot1) = connected(&client, None).await;
        eprintln!(
            "lab: QEMU start -> handshake in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // Cache both images on the virtio disk, in priority order.
        let cache = complete(
            &run_task(
                &client,
                &id,
                "standbye.cache_images",
                json!({
                    "images": [image(&guest_img.0, "guest"), image(&nokernel_img.0, "nokernel")],
                    "device": "vda",
                }),
                300,
            )
            .await,
            "cache_images",
        );
        let cached: Vec<&str> = cache["cached"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert_eq!(cached, ["guest", "nokernel"], "{cache}");
        let served_once = http.requests().len();

        // Write the guest from the cache: the NVMe disk then holds the image byte for byte.
        let prep = complete(
            &run_task(
                &client,
                &id,
                "standbye.prepare_image",
                json!({"image_id": "guest", "device": NVME}),
                300,
            )
            .await,
            "prepare_image",
        );
        assert_eq!(prep["format"], "qcow2", "{prep}");
        assert_eq!(prep["source"], "cache", "{prep}");
        assert_eq!(prep["checksum"], guest_img.0.checksum.as_str(), "{prep}");
        assert_eq!(
            http.requests().len(),
            served_once,
            "prepare_image fetched again instead of using the cache: {:?}",
            http.requests()
        );
        let len = std::fs::metadata(&guest_img.1.raw).unwrap().len();
        assert_eq!(
            block(|| guest::sha256_prefix(&nvme_file, len).unwrap()),
            guest::sha256_file(&guest_img.1.raw).unwrap(),
            "the NVMe disk does not hold the image"
        );

        // Run it with a config drive: kexec into the guest, which prints its meta data.
        let meta = json!({
            "uuid": "3c9ad4c4-5a8e-4d0b-9b43-1f0e5b7d2c61",
            "hostname": "deployed-by-molar",
            "name": "deployed-by-molar",
        });
        let console_from = vm(&sim).console().len();
        let run = complete(
            &run_task(
                &client,
                &id,
                "standbye.run_image",
                json!({
                    "image_id": "guest",
                    "device": NVME,
                    "config_drive": {"meta_data": meta},
                    "kernel_args": "console=ttyS0 panic=-1",
                }),
                300,
            )
            .await,
            "run_image",
        );
        assert_eq!(run["boot"], "kexec", "{run}");
        assert_eq!(run["entry_source"], "symlinks", "{run}");
        let cmdline = run["cmdline"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            cmdline.contains(&guest::ROOT_PARTUUID.to_lowercase())
                || cmdline.contains(guest::ROOT_FS_UUID),
            "the root comes from the partition table: {run}"
        );
        assert_eq!(run["config_drive"]["format"], "vfat", "{run}");
        let kexec_at = Instant::now();
        block(|| {
            vm(&sim)
                .wait_for_console_from(console_from, guest::POWEROFF, BOOT)
                .unwrap()
        });
        eprintln!(
            "lab: run_image complete -> guest powered off in {:.1} s",
            kexec_at.elapsed().as_secs_f64()
        );
        let guest_report = GuestReport::parse(&vm(&sim).console()[console_from..]);
        assert_eq!(guest_report.boot_ids.len(), 1, "{guest_report:?}");
        assert_ne!(guest_report.boot_ids[0], boot1, "a new kernel runs");
        assert!(guest_report.errors.is_empty(), "{guest_report:?}");
        let seen = &guest_report.meta_data[0];
        assert_eq!(seen["uuid"], meta["uuid"], "{guest_report:?}");
        assert_eq!(seen["hostname"], meta["hostname"], "{guest_report:?}");
        assert!(
            guest_report.cmdlines[0].contains("console=ttyS0 panic=-1"),
            "{guest_report:?}"
        );

        // The guest powered the machine off; the BMC powers it on into the ramdisk again.
        block(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while vm(&sim).pid().is_some() {
                assert!(
                    Instant::now() < deadline,
                    "the guest's poweroff left QEMU running"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            sim.ipmitool_ok("ipmiusr", "test", &["chassis", "power", "on"])
                .unwrap();
        });
        let (_, boot2) = connected(&client, Some(&boot1)).await;

        // The reboot path: an image without a kernel cannot be kexec'd. This boot's agent
        // has no cache in memory: the image comes straight from its URL.
        let prep = complete(
            &run_task(
                &client,
                &id,
                "standbye.prepare_image",
                json!({"image": image(&nokernel_img.0, "nokernel"), "device": NVME}),
                300,
            )
            .await,
            "prepare_image nokernel",
        );
        assert!(
            prep["source"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/nokernel.qcow2"),
            "{prep}"
        );
        assert_eq!(prep["checksum"], nokernel_img.0.checksum.as_str(), "{prep}");
        let console_from = vm(&sim).console().len();
        let run = complete(
            &run_task(
                &client,
                &id,
                "standbye.run_image",
                json!({"image_id": "nokernel", "device": NVME, "boot": "auto"}),
                300,
            )
            .await,
            "run_image nokernel",
        );
        assert_eq!(run["boot"], "reboot", "{run}");
        let reason = run["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("no kernel found"),
            "the reason names the missing kernel: {run}"
        );
        let (_, boot3) = connected(&client, Some(&boot2)).await;
        assert_ne!(boot3, boot2);
        let after = vm(&sim).console()[console_from..].to_string();
        assert!(
            !after.contains(guest::MARKER),
            "the reboot path started the guest: {after}"
        );

        // Power off: QEMU ends.
        let _ = client
            .call(&id, "poweroff", json!({}), Some(Duration::from_secs(60)))
            .await;
        block(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while vm(&sim).pid().is_some() {
                assert!(Instant::now() < deadline, "poweroff left QEMU running");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    fn with_kernel(kernel: bool) -> DiskSpec {
        DiskSpec {
            size_bytes: 64 << 20,
            kernel,
            config_drive: None,
        }
    }
}
