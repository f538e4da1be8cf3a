//! Who may change this machine: one policy for every action that destroys data or takes the
//! machine (or its BMC) away, decided from how the agent was started — never from its pid,
//! which a container's process shares with the ramdisk's init.
//!
//! | started as                          | device actions          | reboot, poweroff, kexec, chassis.power, bmc.reset, boot entries |
//! |-------------------------------------|-------------------------|------------------------------------------------------------------|
//! | the ramdisk's `/init` (or `init`)   | every device            | allowed                                                          |
//! | `run --allow-host DEV...`           | only the devices named  | refused                                                          |
//! | `run --allow-host-power`            | only the devices named  | allowed                                                          |
//!
//! Firmware updates ([`Action::FirmwareUpdate`]) follow the power column: a host's own
//! firmware changes only with `--allow-host-power`.
//!
//! "Boot entries" ([`Action::SetBootEntry`]) is `standbye.run_image` changing what the machine
//! boots next: the EFI `Boot####`/`BootOrder` variables and the BMC's boot device. On a host
//! that takes the machine's own boot away as surely as a reboot into something else, so it
//! needs the same `--allow-host-power`.
//!
//! [`Authority::decide`] is the one function that applies the table. Device actions that it
//! allows still go through the device checks of [`crate::safety::select_targets`] (mounted,
//! held, boot device, ...), which asks this policy first. Reading the power state and other
//! reads are not actions. Setting BMC credentials and the next boot device through
//! `bmc.boot_device` are not actions of this policy either: they take nothing away and the
//! controller needs them on any machine.

use crate::safety::device_name;
use molar_protocol::bmc::PowerAction;
use molar_protocol::catalogue::{BmcReset, ChassisPower, Method, Poweroff, Reboot};
use molar_protocol::{ErrorBody, codes};
use std::path::Path;

/// How the agent was started, as far as changing the machine goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The ramdisk's init: the machine is being provisioned, everything on it is fair game
    /// (devices subject to the checks of [`crate::safety`]).
    Ramdisk,
    /// Some host: only the devices named explicitly with `--allow-host`, by kernel name or
    /// path (`loop3`, `/dev/loop3`, `/dev/disk/by-id/…`); no power action.
    Host { allowed: Vec<String> },
    /// Some host whose operator also gave `--allow-host-power`: the named devices, and the
    /// machine may be rebooted, powered off or power-cycled and its BMC reset.
    HostWithPower { allowed: Vec<String> },
}

/// A block device an action names: its kernel name, and the root under which the names the
/// operator gave (`/dev/disk/by-id/…` links) are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device<'a> {
    pub root: &'a Path,
    pub name: &'a str,
}

/// Everything that changes the machine, as [`Authority::decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Erase(Device<'a>),
    WriteImage(Device<'a>),
    EditPartitions(Device<'a>),
    /// The burn-in's reads of a disk: harmless to the data, but they load a disk that a
    /// host may be using, so on a host only a named device is read.
    BurninRead(Device<'a>),
    Reboot,
    Poweroff,
    Kexec,
    /// `status` is only a read and always allowed.
    ChassisPower(PowerAction),
    BmcReset,
    /// Writing the firmware's boot entries (EFI `Boot####`, `BootOrder`) and the BMC's next
    /// boot device for the written image.
    SetBootEntry,
    /// `decom.firmware_secure` flashing a component, staging a capsule, running a vendor
    /// tool or writing a UEFI variable: a host's own firmware is never changed without
    /// `--allow-host-power`.
    FirmwareUpdate,
}

/// The word for a power action, as the wire spells it (`off`, `cycle`).
fn power_word(action: PowerAction) -> String {
    match serde_json::to_value(action) {
        Ok(serde_json::Value::String(word)) => word,
        _ => format!("{action:?}").to_lowercase(),
    }
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Erase(d) => write!(f, "erasing {}", d.name),
            Action::WriteImage(d) => write!(f, "writing an image to {}", d.name),
            Action::EditPartitions(d) => write!(f, "editing the partitions of {}", d.name),
            Action::BurninRead(d) => write!(f, "burn-in reads of {}", d.name),
            Action::Reboot => f.write_str(Reboot::NAME),
            Action::Poweroff => f.write_str(Poweroff::NAME),
            Action::Kexec => f.write_str("kexec"),
            Action::ChassisPower(a) => write!(f, "{} {}", ChassisPower::NAME, power_word(*a)),
            Action::BmcReset => f.write_str(BmcReset::NAME),
            Action::SetBootEntry => f.write_str("setting the machine's boot entries"),
            Action::FirmwareUpdate => f.write_str("updating the machine's firmware"),
        }
    }
}

/// Why [`Authority::decide`] said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{action} refused: not running as the ramdisk's init and the device was not named \
         with --allow-host"
    )]
    DeviceNotNamed { action: String },
    #[error(
        "{action} refused: not running as the ramdisk's init (on a host, start the agent with \
         --allow-host-power)"
    )]
    PowerNotAllowed { action: String },
}

impl From<Refused> for ErrorBody {
    fn from(r: Refused) -> Self {
        ErrorBody::new(codes::REFUSED, r.to_string())
    }
}

impl Authority {
    /// A host agent (`molar-agent run`): `allowed` from `--allow-host`, `power` from
    /// `--allow-host-power`.
    pub fn host(allowed: &[String], power: bool) -> Authority {
        let allowed = allowed.to_vec();
        if power {
            Authority::HostWithPower { allowed }
        } else {
            Authority::Host { allowed }
        }
    }

    /// The devices named with `--allow-host` (none in the ramdisk, where every device is).
    pub fn named_devices(&self) -> &[String] {
        match self {
            Authority::Ramdisk => &[],
            Authority::Host { allowed } | Authority::HostWithPower { allowed } => allowed,
        }
    }

    /// Whether `action` may happen on this machine: the table of the module documentation.
    pub fn decide(&self, action: &Action<'_>) -> Result<(), Refused> {
        let host_power = match self {
            Authority::Ramdisk => return Ok(()),
            Authority::Host { .. } => false,
            Authority::HostWithPower { .. } => true,
        };
        match action {
            Action::Erase(d)
            | Action::WriteImage(d)
            | Action::EditPartitions(d)
            | Action::BurninRead(d) => {
                let named = self
                    .named_devices()
                    .iter()
                    .any(|spec| device_name(d.root, spec) == d.name);
                if named {
                    Ok(())
                } else {
                    Err(Refused::DeviceNotNamed {
                        action: action.to_string(),
                    })
                }
            }
            Action::ChassisPower(PowerAction::Status) => Ok(()),
            Action::Reboot
            | Action::Poweroff
            | Action::Kexec
            | Action::ChassisPower(_)
            | Action::BmcReset
            | Action::SetBootEntry
            | Action::FirmwareUpdate => {
                if host_power {
                    Ok(())
                } else {
                    Err(Refused::PowerNotAllowed {
                        action: action.to_string(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (start mode × action) pair, against the table of the module documentation.
    #[test]
    fn one_table_decides_every_action_for_every_start_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dev/disk/by-id")).unwrap();
        std::fs::write(root.join("dev/loop3"), "").unwrap();
        std::os::unix::fs::symlink("../../loop3", root.join("dev/disk/by-id/loop-three")).unwrap();
        let named = Device {
            root,
            name: "loop3",
        };
        let other = Device {
            root,
            name: "nvme0n1",
        };
        let ramdisk = Authority::Ramdisk;
        // Named through a by-id link: resolved under the root to the kernel name.
        let host = Authority::host(&["/dev/disk/by-id/loop-three".into()], false);
        let host_power = Authority::host(&["/dev/loop3".into()], true);
        let nothing = Authority::host(&[], false);
        let power_only = Authority::host(&[], true);
        assert_eq!(
            host,
            Authority::Host {
                allowed: vec!["/dev/disk/by-id/loop-three".into()]
            }
        );
        assert_eq!(power_only, Authority::HostWithPower { allowed: vec![] });

        use PowerAction::*;
        let mut actions = Vec::new();
        for d in [named, other] {
            actions.extend([
                Action::Erase(d),
                Action::WriteImage(d),
                Action::EditPartitions(d),
                Action::BurninRead(d),
            ]);
        }
        actions.extend([
            Action::Reboot,
            Action::Poweroff,
            Action::Kexec,
            Action::BmcReset,
            Action::SetBootEntry,
            Action::FirmwareUpdate,
        ]);
        actions.extend([On, Off, Soft, Reset, Cycle, Status].map(Action::ChassisPower));

        // (mode, allowed on the named device, allowed on another device, power allowed)
        let table = [
            ("ramdisk", &ramdisk, true, true, true),
            ("host --allow-host loop3", &host, true, false, false),
            (
                "host --allow-host loop3 --allow-host-power",
                &host_power,
                true,
                false,
                true,
            ),
            ("host", &nothing, false, false, false),
            ("host --allow-host-power", &power_only, false, false, true),
        ];
        let mut checked = 0;
        for (mode, authority, on_named, on_other, power) in table {
            for action in &actions {
                let want = match action {
                    Action::Erase(d)
                    | Action::WriteImage(d)
                    | Action::EditPartitions(d)
                    | Action::BurninRead(d) => {
                        if d.name == "loop3" {
                            on_named
                        } else {
                            on_other
                        }
                    }
                    Action::ChassisPower(Status) => true,
                    _ => power,
                };
                let got = authority.decide(action);
                assert_eq!(got.is_ok(), want, "{mode}: {action}: {got:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 5 * 20);
    }

    #[test]
    fn refusals_say_what_was_refused_and_how_to_allow_it() {
        let host = Authority::host(&[], false);
        let e = host
            .decide(&Action::ChassisPower(PowerAction::Off))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "chassis.power off refused: not running as the ramdisk's init (on a host, start \
             the agent with --allow-host-power)"
        );
        let e = host.decide(&Action::Reboot).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reboot refused: not running as the ramdisk's init")
        );
        assert!(
            host.decide(&Action::BmcReset)
                .unwrap_err()
                .to_string()
                .starts_with("bmc.reset refused")
        );
        assert_eq!(
            host.decide(&Action::SetBootEntry).unwrap_err().to_string(),
            "setting the machine's boot entries refused: not running as the ramdisk's init (on a \
             host, start the agent with --allow-host-power)"
        );
        assert!(
            Authority::host(&[], true)
                .decide(&Action::SetBootEntry)
                .is_ok()
        );
        let root = Path::new("/nonexistent");
        let e = host
            .decide(&Action::WriteImage(Device { root, name: "sda" }))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "writing an image to sda refused: not running as the ramdisk's init and the device \
             was not named with --allow-host"
        );
        let body = ErrorBody::from(e);
        assert_eq!(body.code, codes::REFUSED);
    }
}
