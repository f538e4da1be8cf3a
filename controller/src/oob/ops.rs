//! The out-of-band operations: one [`OobAction`] run over any `molar_ipmi::Transport` whose
//! errors are [`OobError`] (a [`super::LanSession`] in production), with the operator's
//! one-line messages in seed 000's style ("server power state set successful: off").

use molar_ipmi::boot::{self, BootDevice, BootFlags};
use molar_ipmi::chassis::{self, Control, Identify};
use molar_ipmi::{CommandError, Transport, completion, device};

use super::{BmcIdentity, BootTarget, OobAction, OobError, OobOutcome, PowerChange};

/// Turns a command's error into the operation's: a completion code becomes a refusal naming
/// the command and the code's meaning, e.g. "set system boot options refused: invalid data
/// field in request (0xcc)".
pub fn command_error(addr: &str, e: CommandError<OobError>) -> OobError {
    match e {
        CommandError::Transport { source, .. } => source,
        CommandError::Completion { command, code } => OobError::Refused {
            addr: addr.to_string(),
            command: command.name().to_string(),
            completion: format!("{} ({code:#04x})", completion::meaning(command, code)),
        },
        other => OobError::Protocol {
            addr: addr.to_string(),
            detail: other.to_string(),
        },
    }
}

fn outcome(message: String, power_on: Option<bool>) -> OobOutcome {
    OobOutcome { message, power_on }
}

fn boot_name(device: BootTarget) -> &'static str {
    match device {
        BootTarget::None => "none",
        BootTarget::Pxe => "pxe",
        BootTarget::Disk => "disk",
        BootTarget::Bios => "bios",
        BootTarget::Cdrom => "cdrom",
    }
}

fn power_name(change: PowerChange) -> &'static str {
    match change {
        PowerChange::On => "on",
        PowerChange::Off => "off",
        PowerChange::Soft => "soft",
        PowerChange::Cycle => "cycle",
        PowerChange::Reset => "reset",
    }
}

/// Runs one action. `addr` names the BMC in errors.
pub fn run<T: Transport<Error = OobError> + ?Sized>(
    t: &mut T,
    addr: &str,
    action: &OobAction,
) -> Result<OobOutcome, OobError> {
    let err = |e| command_error(addr, e);
    match *action {
        OobAction::PowerStatus => {
            let on = chassis::get_chassis_status(t).map_err(err)?.power_on;
            Ok(outcome(
                format!("server power state: {}", if on { "on" } else { "off" }),
                Some(on),
            ))
        }
        OobAction::Power(change) => {
            let control = match change {
                PowerChange::On => Control::PowerUp,
                PowerChange::Off => Control::PowerDown,
                PowerChange::Soft => Control::SoftShutdown,
                PowerChange::Reset => Control::HardReset,
                PowerChange::Cycle => {
                    // A power cycle of a chassis that is off is refused by many BMCs
                    // (0xd5): the operator wants the server running, so it is powered on.
                    let on = chassis::get_chassis_status(t).map_err(err)?.power_on;
                    if !on {
                        chassis::chassis_control(t, Control::PowerUp).map_err(err)?;
                        return Ok(outcome(
                            "server power state set successful: on (the chassis was off, so \
                             the cycle powered it on)"
                                .into(),
                            Some(true),
                        ));
                    }
                    Control::PowerCycle
                }
            };
            chassis::chassis_control(t, control).map_err(err)?;
            let power_on = match change {
                PowerChange::On | PowerChange::Cycle | PowerChange::Reset => Some(true),
                PowerChange::Off => Some(false),
                // The operating system decides whether and when it shuts down.
                PowerChange::Soft => None,
            };
            Ok(outcome(
                format!("server power state set successful: {}", power_name(change)),
                power_on,
            ))
        }
        OobAction::BootDevice {
            device,
            persistent,
            efi,
        } => {
            let dev = match device {
                BootTarget::None => BootDevice::NoOverride,
                BootTarget::Pxe => BootDevice::Pxe,
                BootTarget::Disk => BootDevice::Disk,
                BootTarget::Bios => BootDevice::BiosSetup,
                BootTarget::Cdrom => BootDevice::Cdrom,
            };
            let flags = BootFlags::new(dev, persistent, efi);
            // Set In Progress brackets the write (28.12); BMCs without the lock answer
            // "parameter not supported", which does not stop the write itself.
            let locked = match boot::set_in_progress(t, true) {
                Ok(()) => true,
                Err(CommandError::Completion { code: 0x80, .. }) => false,
                Err(e) => return Err(err(e)),
            };
            let r = boot::set_boot_flags(t, &flags).map_err(err);
            if locked {
                let _ = boot::set_in_progress(t, false);
            }
            r?;
            Ok(outcome(
                format!(
                    "next boot device set successful: {} ({}, {})",
                    boot_name(device),
                    if persistent { "persistent" } else { "one-time" },
                    if efi { "efi" } else { "legacy" }
                ),
                None,
            ))
        }
        OobAction::BmcReset => {
            device::cold_reset(t).map_err(err)?;
            Ok(outcome("bmc reset successful".into(), None))
        }
        OobAction::Identify { seconds } => {
            let (identify, what) = match seconds {
                None => (Identify::Default, "default interval".to_string()),
                Some(0) => (Identify::Seconds(0), "off".to_string()),
                Some(s) => (Identify::Seconds(s), format!("{s} s")),
            };
            chassis::chassis_identify(t, identify).map_err(err)?;
            Ok(outcome(
                format!("chassis identify set successful: {what}"),
                None,
            ))
        }
    }
}

/// Reads who the BMC is: Get Device ID, and Get System GUID where the BMC offers it.
pub fn identify_bmc<T: Transport<Error = OobError> + ?Sized>(
    t: &mut T,
    addr: &str,
    cipher_suite: u8,
) -> Result<BmcIdentity, OobError> {
    let id = device::get_device_id(t).map_err(|e| command_error(addr, e))?;
    let system_guid = match device::get_system_guid(t) {
        Ok(g) => Some(device::format_guid(&g)),
        // Optional command (22.14): a BMC without it still has an identity.
        Err(CommandError::Completion { .. }) => None,
        Err(e) => return Err(command_error(addr, e)),
    };
    // The MAC of the LAN channel the session came in on (0x0e: "this channel"), else of
    // channel 1, the usual LAN channel; a BMC that answers neither still has an identity.
    let mac = [0x0e, 1]
        .into_iter()
        .find_map(|ch| molar_ipmi::lan::get_mac_address(t, ch).ok())
        .map(|m| m.to_string());
    Ok(BmcIdentity {
        cipher_suite,
        system_guid,
        firmware_version: Some(id.firmware_version()),
        mac,
    })
}
