//! Virtual-media boot in the lab: a UEFI QEMU server (Debian's OVMF) with `molar.iso` in its
//! CD drive, first in the boot order, as a BMC's virtual media presents it. The firmware
//! starts the ISO's El Torito EFI image, systemd's stub boots the kernel with the command
//! line baked into the unified kernel image, and the agent reaches the lab controller with
//! the token and CA pin from SMBIOS OEM strings (the ISO has no token). The same file as a
//! USB stick boots through its MBR's ESP partition instead.
//!
//! Needs `molar.iso` beside the lab images (`scripts/lab-images` builds it with `--iso`) and
//! the `ovmf` package. Skips with a reason outside CI, fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use molar_tests::inproc::{Controller, eventually};
use molar_tests::lab::{Boot, Firmware, Lab, OVMF_CODE, QemuConfig, skip_or_fail};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);

/// Boots `molar.iso` attached by `attach` and waits for its agent to register.
async fn boots_to_a_registered_agent(test: &str, attach: fn(std::path::PathBuf) -> Boot) {
    let Some(lab) = Lab::require(test) else {
        return;
    };
    let iso = lab.images().dir.join("molar.iso");
    if !iso.is_file() {
        return skip_or_fail(
            test,
            &format!("{} is missing (run scripts/lab-images)", iso.display()),
        )
        .unwrap_or(());
    }
    if !std::path::Path::new(OVMF_CODE).is_file() {
        return skip_or_fail(test, &format!("{OVMF_CODE} is missing (install ovmf)")).unwrap_or(());
    }
    let ctl = Controller::start_with_sans(vec!["10.0.2.100".into()]).await;
    let client = ctl.client();
    let token = ctl.agent_token().await;

    let mut server = QemuConfig::server(&lab);
    server.name = "uefi-media".into();
    server.firmware = Firmware::Uefi;
    server.boot = attach(iso);
    server.disks.clear();
    server.no_reboot = true;
    server.forward_as(9000, ctl.agent_port());
    server.oem_strings = vec![
        format!("molar.token={}", token.expose()),
        format!("molar.ca={}", ctl.running().ca_fingerprint),
    ];
    let started = Instant::now();
    let vm = tokio::task::block_in_place(|| lab.spawn_qemu(&server)).unwrap();
    let id = eventually(
        BOOT.as_secs(),
        "the ISO-booted agent to connect",
        || async {
            let servers = client.servers().await.ok()?;
            servers
                .into_iter()
                .find(|s| s.server.serial.as_deref() == Some("S123") && s.server.connected)
                .map(|s| s.server.id)
        },
    )
    .await;
    let took = started.elapsed();

    let console = vm.console();
    // The kernel ran with the UKI's command line: console, controller, no token.
    let cmdline = console
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no kernel command line on the console:\n{console}"));
    assert!(
        cmdline.contains("molar.controller=10.0.2.100:9000"),
        "{cmdline}"
    );
    assert!(!cmdline.contains("molar.token"), "{cmdline}");
    assert!(
        !console.contains(token.expose()),
        "the token reached the console"
    );
    assert!(console.contains("molar init starting"), "{console}");
    // Booted by the firmware through EFI (the stub), not a direct kernel boot.
    assert!(
        console.contains("efi: EFI v") || console.contains("efi: UEFI"),
        "no EFI boot in the kernel log"
    );
    let v = client.server(&id, false).await.unwrap();
    assert_eq!(v.server.serial.as_deref(), Some("S123"));
    eprintln!(
        "{test}: QEMU start -> agent connected in {:.1} s (UEFI, {:?})",
        took.as_secs_f64(),
        server.accel
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_server_boots_the_iso_from_its_cd_drive_and_registers() {
    boots_to_a_registered_agent(
        "a_uefi_server_boots_the_iso_from_its_cd_drive_and_registers",
        |iso| Boot::Cdrom { iso },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_server_boots_the_iso_as_a_usb_stick_and_registers() {
    boots_to_a_registered_agent(
        "a_uefi_server_boots_the_iso_as_a_usb_stick_and_registers",
        |image| Boot::UsbDisk { image },
    )
    .await;
}
