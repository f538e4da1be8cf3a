//! The lab proves itself on the images `molar-imagebuilder` built: the kernel reaches the
//! agent as `/init` when booted directly, when booted by real PXE through the generated
//! `boot.ipxe`, and when `ipmi_sim` owns the server's power.
//!
//! Images come from `$MOLAR_LAB_OUT` or `target/lab/images` (`scripts/lab-images` builds
//! them). Outside CI a missing prerequisite skips with a printed reason; under `CI=true` it
//! fails.

use std::time::{Duration, Instant};

use molar_tests::lab::{IpmiSimConfig, Lab, QemuConfig};

fn alive(pid: u32) -> bool {
    // Gone, or a zombie about to be reaped: either way no longer running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The kernel's last word before running the initramfs's `/init`.
const RUN_INIT: &str = "Run /init as init process";
/// Proof that `/init` runs: the agent announces itself as PID 1 and gets as far as a
/// configured network. A kernel panic ("Attempted to kill init") is a failure, not proof.
const INIT_RUNS: &str = "network configured";
const INIT_DIED: &[&str] = &["Attempted to kill init", "Kernel panic"];

/// Waits until the console proves `/init` is the agent and alive; fails on a kernel panic.
fn assert_init_runs(vm: &molar_tests::lab::Qemu, from: usize) -> String {
    let waited = vm.wait_for_any_from(
        from,
        &[&[INIT_RUNS], INIT_DIED].concat(),
        Duration::from_secs(60),
    );
    let line = match waited {
        Ok(line) => line,
        Err(e) => panic!("/init never got the network up: {e}"),
    };
    let console = vm.console();
    let tail = console.get(from..).unwrap_or("");
    assert!(
        !INIT_DIED.iter().any(|p| tail.contains(p)),
        "the kernel panicked instead of running the agent: {line}"
    );
    assert!(
        tail.contains("molar init starting"),
        "/init is not the molar agent"
    );
    line
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn kernel_boot_reaches_init() {
    let Some(lab) = Lab::require("kernel_boot_reaches_init") else {
        return;
    };
    let mut cfg = QemuConfig::server(&lab);
    cfg.no_reboot = true;
    cfg.append.push("panic=-1".into());
    let started = Instant::now();
    let vm = lab.spawn_qemu(&cfg).unwrap();
    vm.wait_for_console(RUN_INIT, BOOT_TIMEOUT).unwrap();
    let to_init = started.elapsed();
    let line = assert_init_runs(&vm, 0);
    eprintln!(
        "kernel boot: QEMU start -> /init in {:.1} s ({line})",
        to_init.as_secs_f64()
    );
}

#[test]
fn pxe_boot_script_reaches_init() {
    let Some(lab) = Lab::require("pxe_boot_script_reaches_init") else {
        return;
    };
    let images = lab.images().dir.clone();
    let mut cfg = QemuConfig::pxe(&lab, &images, "boot.ipxe");
    cfg.no_reboot = true;
    let started = Instant::now();
    let vm = lab.spawn_qemu(&cfg).unwrap();
    // iPXE talks on the VGA console only; the kernel's own lines prove it fetched both files.
    vm.wait_for_console(RUN_INIT, BOOT_TIMEOUT).unwrap();
    let to_init = started.elapsed();
    let console = vm.console();
    assert!(
        console.contains("molar.controller="),
        "the kernel did not get boot.ipxe's command line"
    );
    assert_init_runs(&vm, 0);
    eprintln!(
        "PXE boot: QEMU start -> /init in {:.1} s",
        to_init.as_secs_f64()
    );
}

#[test]
fn bmc_owns_the_servers_power() {
    let Some(lab) = Lab::require("bmc_owns_the_servers_power") else {
        return;
    };
    let mut server = QemuConfig::server(&lab);
    // Should the kernel panic, stay halted there rather than reboot-loop.
    server.append.push("panic=0".into());
    let sim = lab
        .start_ipmi_sim(IpmiSimConfig {
            power: Some(server),
            ..IpmiSimConfig::default()
        })
        .unwrap();
    let vm = sim.vm().unwrap();
    vm.wait_for_console(RUN_INIT, BOOT_TIMEOUT).unwrap();
    assert_init_runs(vm, 0);
    let status = sim
        .ipmitool_ok("ipmiusr", "test", &["chassis", "power", "status"])
        .unwrap();
    assert!(status.contains("Chassis Power is on"), "{status}");
    let lan = sim
        .ipmitool_ok("ipmiusr", "test", &["lan", "print", "1"])
        .unwrap();
    assert!(lan.contains(molar_tests::lab::BMC_MAC), "{lan}");
    let wrong = sim
        .ipmitool("ipmiusr", "wrong", &["chassis", "power", "status"])
        .unwrap();
    assert!(!wrong.status.success(), "a wrong password was accepted");

    sim.ipmitool_ok("ipmiusr", "test", &["chassis", "power", "off"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm.pid().is_some() {
        assert!(Instant::now() < deadline, "power off left QEMU running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = sim
        .ipmitool_ok("ipmiusr", "test", &["chassis", "power", "status"])
        .unwrap();
    assert!(status.contains("Chassis Power is off"), "{status}");

    // Power on boots the server again: a second kernel start in the appended console log.
    let before = vm.console().len();
    sim.ipmitool_ok("ipmiusr", "test", &["chassis", "power", "on"])
        .unwrap();
    vm.wait_for_console_from(before, RUN_INIT, BOOT_TIMEOUT)
        .unwrap();
}

/// The harness's own promise: a test that panics with a BMC-owned VM and a second VM running
/// leaves no process behind and keeps its console logs.
#[test]
fn a_panicking_test_leaves_no_process_and_keeps_its_logs() {
    let Some(lab) = Lab::require("a_panicking_test_leaves_no_process") else {
        return;
    };
    let log_dir = lab.log_dir();
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = lab;
        let sim = lab
            .start_ipmi_sim(IpmiSimConfig {
                power: Some(QemuConfig::server(&lab)),
                ..IpmiSimConfig::default()
            })
            .unwrap();
        let mut second = QemuConfig::server(&lab);
        second.name = "second".into();
        let vm2 = lab.spawn_qemu(&second).unwrap();
        let vm = sim.vm().unwrap();
        vm.wait_for_console(RUN_INIT, BOOT_TIMEOUT).unwrap();
        let mut p = pids.lock().unwrap();
        p.extend(sim.pid());
        p.extend(vm.pid().map(|p| p as u32));
        p.extend(vm2.pid().map(|p| p as u32));
        drop(p);
        panic!("deliberate failure with everything running");
    }));
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(
        pids.len(),
        3,
        "not all processes were seen running: {pids:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "processes survived the panic: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = std::fs::read_to_string(log_dir.join("server-console.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&log_dir);
    assert!(kept.contains(RUN_INIT), "the console log was not kept");
}
