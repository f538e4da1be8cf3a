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
        OobAction::BmcReset => match device::cold_reset(t) {
            Ok(()) => Ok(outcome("bmc reset successful".into(), None)),
            // The session answered a moment ago: a BMC that restarts before its answer
            // leaves the request unanswered (ipmitool reports the same as "sent").
            Err(CommandError::Transport {
                source: OobError::Unreachable { .. },
                ..
            }) => Ok(outcome(
                "bmc reset sent: no answer (the BMC may have restarted before answering)".into(),
                None,
            )),
            Err(e) => Err(err(e)),
        },
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
        OobAction::BootFromMedia { .. } | OobAction::EjectMedia => Err(OobError::RedfishOnly {
            addr: addr.to_owned(),
            what: "virtual media".into(),
        }),
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
        cipher_suite: Some(cipher_suite),
        system_guid,
        firmware_version: Some(id.firmware_version()),
        mac,
    })
}

/// Longest password [`set_own_password`] sets: the 16-byte form works for IPMI 1.5 and 2.0.
pub const LAN_PASSWORD_MAX: usize = 16;

/// Sets a new password for the session's own user (Set User Password, 22.30): a rotation
/// over LAN with the current credentials. The user is `user_id` when the BMC table knows it
/// and its name is `username`, else the slot named `username`. Returns the user id.
pub fn set_own_password<T: Transport<Error = OobError> + ?Sized>(
    t: &mut T,
    addr: &str,
    username: &str,
    user_id: Option<u8>,
    password: &[u8],
) -> Result<u8, OobError> {
    use molar_ipmi::user::{self, PasswordForm, PasswordOp};
    let err = |e| command_error(addr, e);
    if password.is_empty() || password.len() > LAN_PASSWORD_MAX {
        return Err(OobError::Protocol {
            addr: addr.to_owned(),
            detail: format!("a new password must be 1 to {LAN_PASSWORD_MAX} bytes"),
        });
    }
    let named = |t: &mut T, id: u8| -> Result<bool, OobError> {
        match user::get_user_name(t, id) {
            Ok(name) => Ok(name == username),
            // An empty or reserved slot.
            Err(CommandError::Completion { .. }) => Ok(false),
            Err(e) => Err(err(e)),
        }
    };
    let id = match user_id {
        Some(id) if (1..=63).contains(&id) && named(t, id)? => id,
        _ => {
            // Get User Access on this channel says how many slots there are.
            let max = user::get_user_access(t, 0x0e, 1)
                .map(|a| a.max_users)
                .unwrap_or(15)
                .clamp(1, 63);
            let mut found = None;
            for id in 1..=max {
                if named(t, id)? {
                    found = Some(id);
                    break;
                }
            }
            found.ok_or_else(|| OobError::Protocol {
                addr: addr.to_owned(),
                detail: format!("no user slot is named {username:?}"),
            })?
        }
    };
    user::set_user_password(
        t,
        id,
        PasswordOp::SetPassword,
        PasswordForm::Bytes16,
        Some(password),
    )
    .map_err(err)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    //! The operations' messages and command sequences over a scripted transport: the BMC
    //! answers that ipmi_sim cannot give (a chassis that is on, boot options accepted).

    use super::*;
    use std::collections::VecDeque;

    /// An expected request `(netfn, cmd, data)`.
    type Request = (u8, u8, Vec<u8>);
    type Step<'a> = ((u8, u8, &'a [u8]), &'a [u8]);

    /// Expected requests and the response bytes each gets.
    struct Script(VecDeque<(Request, Vec<u8>)>);

    impl Script {
        fn new(steps: &[Step<'_>]) -> Script {
            Script(
                steps
                    .iter()
                    .map(|((n, c, d), r)| ((*n, *c, d.to_vec()), r.to_vec()))
                    .collect(),
            )
        }
        fn done(&self) {
            assert!(self.0.is_empty(), "requests not made: {:?}", self.0);
        }
    }

    impl Transport for Script {
        type Error = OobError;
        fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, OobError> {
            let Some((want, resp)) = self.0.pop_front() else {
                panic!("unexpected request {netfn:#x} {cmd:#x} {data:?}");
            };
            assert_eq!(want, (netfn, cmd, data.to_vec()));
            Ok(resp)
        }
    }

    const ADDR: &str = "192.0.2.1:623";
    const STATUS_ON: &[u8] = &[0x00, 0x01, 0x00, 0x00];
    const STATUS_OFF: &[u8] = &[0x00, 0x00, 0x00, 0x00];

    #[test]
    fn power_status_and_changes() {
        let mut t = Script::new(&[((0x00, 0x01, &[]), STATUS_ON)]);
        let o = run(&mut t, ADDR, &OobAction::PowerStatus).unwrap();
        assert_eq!(o.message, "server power state: on");
        assert_eq!(o.power_on, Some(true));
        t.done();

        // A cycle of a chassis that is on is a cycle; of one that is off, a power on.
        let mut t = Script::new(&[
            ((0x00, 0x01, &[]), STATUS_ON),
            ((0x00, 0x02, &[0x02]), &[0x00]),
        ]);
        let o = run(&mut t, ADDR, &OobAction::Power(PowerChange::Cycle)).unwrap();
        assert_eq!(o.message, "server power state set successful: cycle");
        t.done();
        let mut t = Script::new(&[
            ((0x00, 0x01, &[]), STATUS_OFF),
            ((0x00, 0x02, &[0x01]), &[0x00]),
        ]);
        let o = run(&mut t, ADDR, &OobAction::Power(PowerChange::Cycle)).unwrap();
        assert!(
            o.message
                .starts_with("server power state set successful: on")
        );
        t.done();

        for (change, byte, word) in [
            (PowerChange::On, 0x01, "on"),
            (PowerChange::Off, 0x00, "off"),
            (PowerChange::Soft, 0x05, "soft"),
            (PowerChange::Reset, 0x03, "reset"),
        ] {
            let mut t = Script::new(&[((0x00, 0x02, &[byte]), &[0x00])]);
            let o = run(&mut t, ADDR, &OobAction::Power(change)).unwrap();
            assert_eq!(
                o.message,
                format!("server power state set successful: {word}")
            );
            t.done();
        }
        let mut t = Script::new(&[((0x00, 0x02, &[0x00]), &[0xD5])]);
        let e = run(&mut t, ADDR, &OobAction::Power(PowerChange::Off)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BMC 192.0.2.1:623: chassis control refused: command not supported in the present \
             state (0xd5)"
        );
    }

    #[test]
    fn boot_device_sequences_and_refusals() {
        let mut t = Script::new(&[
            ((0x00, 0x08, &[0x00, 0x01]), &[0x00]),
            ((0x00, 0x08, &[0x05, 0xA0, 0x04, 0, 0, 0]), &[0x00]),
            ((0x00, 0x08, &[0x00, 0x00]), &[0x00]),
        ]);
        let a = OobAction::BootDevice {
            device: BootTarget::Pxe,
            persistent: false,
            efi: true,
        };
        let o = run(&mut t, ADDR, &a).unwrap();
        assert_eq!(
            o.message,
            "next boot device set successful: pxe (one-time, efi)"
        );
        t.done();

        // No set-in-progress lock on this BMC (0x80): the flags are written all the same.
        let mut t = Script::new(&[
            ((0x00, 0x08, &[0x00, 0x01]), &[0x80]),
            ((0x00, 0x08, &[0x05, 0xC0, 0x08, 0, 0, 0]), &[0x00]),
        ]);
        let a = OobAction::BootDevice {
            device: BootTarget::Disk,
            persistent: true,
            efi: false,
        };
        let o = run(&mut t, ADDR, &a).unwrap();
        assert_eq!(
            o.message,
            "next boot device set successful: disk (persistent, legacy)"
        );
        t.done();

        // Refused flags: the lock is released and the code named.
        let mut t = Script::new(&[
            ((0x00, 0x08, &[0x00, 0x01]), &[0x00]),
            ((0x00, 0x08, &[0x05, 0xA0, 0x18, 0, 0, 0]), &[0xCC]),
            ((0x00, 0x08, &[0x00, 0x00]), &[0x00]),
        ]);
        let a = OobAction::BootDevice {
            device: BootTarget::Bios,
            persistent: false,
            efi: true,
        };
        let e = run(&mut t, ADDR, &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BMC 192.0.2.1:623: set system boot options refused: invalid data field in request \
             (0xcc)"
        );
        // The workflows' boot_pxe step recognises this refusal by its words.
        assert!(
            e.to_string()
                .contains(crate::workflow::BOOT_OPTIONS_REFUSED)
        );
        t.done();
    }

    #[test]
    fn identify_reset_and_identity() {
        for (seconds, data, what) in [
            (None, &[][..], "default interval"),
            (Some(0), &[0][..], "off"),
            (Some(15), &[15][..], "15 s"),
        ] {
            let mut t = Script::new(&[((0x00, 0x04, data), &[0x00])]);
            let o = run(&mut t, ADDR, &OobAction::Identify { seconds }).unwrap();
            assert_eq!(
                o.message,
                format!("chassis identify set successful: {what}")
            );
            t.done();
        }
        let mut t = Script::new(&[((0x06, 0x02, &[]), &[0x00])]);
        let o = run(&mut t, ADDR, &OobAction::BmcReset).unwrap();
        assert_eq!(o.message, "bmc reset successful");
        struct Gone;
        impl Transport for Gone {
            type Error = OobError;
            fn request(&mut self, _: u8, _: u8, _: &[u8]) -> Result<Vec<u8>, OobError> {
                Err(OobError::Unreachable {
                    addr: ADDR.into(),
                    attempts: 1,
                })
            }
        }
        let o = run(&mut Gone, ADDR, &OobAction::BmcReset).unwrap();
        assert!(
            o.message.starts_with("bmc reset sent: no answer"),
            "{}",
            o.message
        );
        let e = run(&mut Gone, ADDR, &OobAction::PowerStatus).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BMC 192.0.2.1:623: no answer after 1 attempts"
        );

        // Get System GUID is optional: a BMC without it still has an identity.
        let mut t = Script::new(&[
            (
                (0x06, 0x01, &[]),
                &[
                    0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f,
                ],
            ),
            ((0x06, 0x37, &[]), &[0xC1]),
            // The MAC: "this channel" refused, channel 1 answers.
            ((0x0c, 0x02, &[0x0e, 0x05, 0x00, 0x00]), &[0xCC]),
            (
                (0x0c, 0x02, &[0x01, 0x05, 0x00, 0x00]),
                &[0x00, 0x11, 0x52, 0x54, 0x00, 0xbe, 0xef, 0x01],
            ),
        ]);
        let id = identify_bmc(&mut t, ADDR, 17).unwrap();
        assert_eq!(
            id,
            BmcIdentity {
                cipher_suite: Some(17),
                system_guid: None,
                firmware_version: Some("9.08".into()),
                mac: Some("52:54:00:be:ef:01".into()),
            }
        );
        t.done();
        // A short GUID is a protocol error, not an identity.
        let mut t = Script::new(&[
            (
                (0x06, 0x01, &[]),
                &[
                    0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f,
                ],
            ),
            ((0x06, 0x37, &[]), &[0x00, 1, 2, 3]),
        ]);
        let e = identify_bmc(&mut t, ADDR, 3).unwrap_err();
        assert!(matches!(e, OobError::Protocol { .. }), "{e}");
    }

    fn name(n: &str) -> Vec<u8> {
        let mut r = vec![0x00];
        r.extend(molar_ipmi::user::encode_set_user_name(0, n)[1..].iter());
        r
    }

    fn set_pw(id: u8, pw: &[u8]) -> Vec<u8> {
        let mut d = vec![id, 0x02];
        let mut field = [0u8; 16];
        field[..pw.len()].copy_from_slice(pw);
        d.extend_from_slice(&field);
        d
    }

    #[test]
    fn a_password_is_set_for_the_session_users_own_slot() {
        // The stored user id, checked by its name.
        let mut t = Script::new(&[
            ((0x06, 0x46, &[3]), &name("molar")),
            ((0x06, 0x47, &set_pw(3, b"N3w-pass")), &[0x00]),
        ]);
        assert_eq!(
            set_own_password(&mut t, ADDR, "molar", Some(3), b"N3w-pass").unwrap(),
            3
        );
        t.done();
        // A stale id: the slots are searched; an empty slot's refusal is skipped.
        let mut t = Script::new(&[
            ((0x06, 0x46, &[2]), &name("admin")),
            ((0x06, 0x44, &[0x0e, 1]), &[0x00, 4, 2, 0, 0x14]),
            ((0x06, 0x46, &[1]), &name("")),
            ((0x06, 0x46, &[2]), &name("admin")),
            ((0x06, 0x46, &[3]), &[0xcc]),
            ((0x06, 0x46, &[4]), &name("molar")),
            ((0x06, 0x47, &set_pw(4, b"N3w-pass")), &[0x00]),
        ]);
        assert_eq!(
            set_own_password(&mut t, ADDR, "molar", Some(2), b"N3w-pass").unwrap(),
            4
        );
        t.done();
        // No slot of that name; a refused set names the command; bad lengths never send.
        let mut t = Script::new(&[
            ((0x06, 0x44, &[0x0e, 1]), &[0x00, 1, 1, 0, 0x14]),
            ((0x06, 0x46, &[1]), &name("admin")),
        ]);
        let e = set_own_password(&mut t, ADDR, "molar", None, b"pw").unwrap_err();
        assert!(
            e.to_string().contains("no user slot is named \"molar\""),
            "{e}"
        );
        let mut t = Script::new(&[
            ((0x06, 0x46, &[3]), &name("molar")),
            ((0x06, 0x47, &set_pw(3, b"pw")), &[0xd4]),
        ]);
        let e = set_own_password(&mut t, ADDR, "molar", Some(3), b"pw").unwrap_err();
        assert!(e.to_string().contains("set user password refused"), "{e}");
        let mut t = Script::new(&[]);
        for bad in [&b""[..], &[b'x'; 17][..]] {
            let e = set_own_password(&mut t, ADDR, "molar", Some(3), bad).unwrap_err();
            assert!(e.to_string().contains("1 to 16 bytes"), "{e}");
        }
    }
}
