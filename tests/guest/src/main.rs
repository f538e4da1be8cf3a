//! `molar-lab-guest-init`: PID 1 of the small system the lab deploys (`molar_tests::lab::guest`
//! builds the disk image around it). What it prints on the console is what the lab's deploy
//! test and the demo wait for after `standbye.run_image` kexecs into the written image:
//!
//! ```text
//! MOLAR-GUEST-BOOTED <boot id>
//! MOLAR-GUEST-CMDLINE <kernel command line>
//! MOLAR-GUEST-META-DATA <the config drive's openstack/latest/meta_data.json, on one line>
//! MOLAR-GUEST-POWEROFF
//! ```
//!
//! or `MOLAR-GUEST-ERROR <why>` in place of the meta data. It mounts proc, sys and devtmpfs,
//! loads the kernel modules of its initramfs (NVMe and what it depends on) in `modules.dep`
//! order, finds the partition whose FAT volume label is `config-2` by reading every disk's
//! partitions at their offsets, reads the meta data in user space (the `fatfs` crate: no vfat
//! module, no mount), then powers the machine off so a test ends cleanly.

mod configdrive;
mod modules;

use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};

/// How long the disks have to show a config drive (NVMe probes asynchronously).
const CONFIG_DRIVE_WAIT: Duration = Duration::from_secs(30);

fn main() {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        if let Err(e) = mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            println!("MOLAR-GUEST-ERROR mounting {fstype} on {target}: {e}");
        }
    }
    for problem in modules::load_all() {
        println!("MOLAR-GUEST-ERROR {problem}");
    }
    let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
    println!("MOLAR-GUEST-BOOTED {boot_id}");
    println!("MOLAR-GUEST-CMDLINE {}", read_trimmed("/proc/cmdline"));
    match configdrive::wait_for_meta_data(CONFIG_DRIVE_WAIT) {
        Ok(found) => {
            println!("MOLAR-GUEST-CONFIG-DRIVE {}", found.location);
            println!("MOLAR-GUEST-META-DATA {}", one_line(&found.meta_data));
        }
        Err(e) => println!("MOLAR-GUEST-ERROR {e}"),
    }
    println!("MOLAR-GUEST-POWEROFF");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    println!("MOLAR-GUEST-ERROR powering off: {e}");
    // PID 1 must not exit (the kernel panics): wait for the power to go.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("(unreadable {path}: {e})"))
}

/// JSON on one console line: JSON strings cannot hold raw newlines, so replacing line
/// breaks with spaces keeps the document valid.
fn one_line(text: &str) -> String {
    text.trim().replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stays_valid_on_one_line() {
        assert_eq!(
            one_line("{\n  \"uuid\": \"a\\nb\",\r\n  \"x\": 1\n}\n"),
            "{   \"uuid\": \"a\\nb\",    \"x\": 1 }"
        );
    }
}
