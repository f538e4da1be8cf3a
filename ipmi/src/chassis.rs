//! The chassis: Get Chassis Status (28.2), Chassis Control (28.3), Chassis Identify (28.5).

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call, call_once};

/// What the chassis restores to after AC power returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRestorePolicy {
    AlwaysOff,
    Previous,
    AlwaysOn,
    Unknown,
}

/// Get Chassis Status, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChassisStatus {
    pub power_on: bool,
    pub power_overload: bool,
    pub power_interlock: bool,
    pub power_fault: bool,
    pub power_control_fault: bool,
    pub restore_policy: PowerRestorePolicy,
    pub intrusion: bool,
    pub drive_fault: bool,
    pub cooling_fault: bool,
}

/// Decodes the three mandatory data bytes (current power state, last power event, misc.
/// chassis state); the optional front panel byte after them is not needed.
pub fn decode_chassis_status(d: &[u8; 3]) -> ChassisStatus {
    let [power, _last_event, misc] = *d;
    ChassisStatus {
        power_on: power & 0x01 != 0,
        power_overload: power & 0x02 != 0,
        power_interlock: power & 0x04 != 0,
        power_fault: power & 0x08 != 0,
        power_control_fault: power & 0x10 != 0,
        restore_policy: match (power >> 5) & 0x03 {
            0 => PowerRestorePolicy::AlwaysOff,
            1 => PowerRestorePolicy::Previous,
            2 => PowerRestorePolicy::AlwaysOn,
            _ => PowerRestorePolicy::Unknown,
        },
        intrusion: misc & 0x01 != 0,
        drive_fault: misc & 0x04 != 0,
        cooling_fault: misc & 0x08 != 0,
    }
}

pub fn get_chassis_status<T: Transport + ?Sized>(
    t: &mut T,
) -> Result<ChassisStatus, CommandError<T::Error>> {
    let r = call::<_, 3>(t, Command::GetChassisStatus, &[])?;
    Ok(decode_chassis_status(&r.data))
}

/// Chassis Control actions (table 28-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    PowerDown,
    PowerUp,
    PowerCycle,
    HardReset,
    DiagnosticInterrupt,
    /// ACPI soft shutdown: the operating system decides.
    SoftShutdown,
}

pub fn encode_chassis_control(control: Control) -> [u8; 1] {
    [match control {
        Control::PowerDown => 0x00,
        Control::PowerUp => 0x01,
        Control::PowerCycle => 0x02,
        Control::HardReset => 0x03,
        Control::DiagnosticInterrupt => 0x04,
        Control::SoftShutdown => 0x05,
    }]
}

/// Sends Chassis Control once: a resent power cycle whose first answer was lost would cycle
/// the machine twice.
pub fn chassis_control<T: Transport + ?Sized>(
    t: &mut T,
    control: Control,
) -> Result<(), CommandError<T::Error>> {
    call_once::<_, 0>(t, Command::ChassisControl, &encode_chassis_control(control))?;
    Ok(())
}

/// What the chassis identify light (or other indicator) should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identify {
    /// The BMC's default interval, 15 seconds.
    Default,
    /// On for this many seconds; 0 turns it off.
    Seconds(u8),
    /// On until turned off (the "force identify on" byte of IPMI 2.0).
    Indefinitely,
}

/// Chassis Identify request: byte 1 the interval, byte 2 bit 0 "force on". Both bytes are
/// optional; only the ones the request needs are sent, since IPMI 1.5 BMCs refuse byte 2.
pub fn encode_chassis_identify(identify: Identify) -> Vec<u8> {
    match identify {
        Identify::Default => vec![],
        Identify::Seconds(s) => vec![s],
        Identify::Indefinitely => vec![0x00, 0x01],
    }
}

pub fn chassis_identify<T: Transport + ?Sized>(
    t: &mut T,
    identify: Identify,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::ChassisIdentify,
        &encode_chassis_identify(identify),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn chassis_status_and_control() {
        // 28.2: power on, restore policy "previous" (01b in bits 6:5); last event 0; cooling
        // fault (bit 3) and intrusion (bit 0).
        let mut bmc =
            FakeBmc::new().expect(Command::GetChassisStatus, &[], &[0x00, 0x21, 0x00, 0x09]);
        let s = get_chassis_status(&mut bmc).unwrap();
        assert_eq!(
            s,
            ChassisStatus {
                power_on: true,
                power_overload: false,
                power_interlock: false,
                power_fault: false,
                power_control_fault: false,
                restore_policy: PowerRestorePolicy::Previous,
                intrusion: true,
                drive_fault: false,
                cooling_fault: true,
            }
        );
        // ipmi_sim's minimal answer: power off, nothing else.
        let s = decode_chassis_status(&[0x00, 0x00, 0x00]);
        assert!(!s.power_on);
        assert_eq!(s.restore_policy, PowerRestorePolicy::AlwaysOff);
        // Every fault bit and "always on" (10b); drive fault is bit 2 of byte 3.
        let s = decode_chassis_status(&[0x5E, 0x00, 0x04]);
        assert!(s.power_overload && s.power_interlock && s.power_fault && s.power_control_fault);
        assert_eq!(s.restore_policy, PowerRestorePolicy::AlwaysOn);
        assert!(s.drive_fault && !s.intrusion && !s.cooling_fault);
        assert_eq!(
            decode_chassis_status(&[0x60, 0, 0]).restore_policy,
            PowerRestorePolicy::Unknown
        );

        // 28.3: 0 down, 1 up, 2 cycle, 3 hard reset, 4 diagnostic interrupt, 5 soft shutdown.
        for (control, byte) in [
            (Control::PowerDown, 0u8),
            (Control::PowerUp, 1),
            (Control::PowerCycle, 2),
            (Control::HardReset, 3),
            (Control::DiagnosticInterrupt, 4),
            (Control::SoftShutdown, 5),
        ] {
            assert_eq!(encode_chassis_control(control), [byte]);
            let mut bmc = FakeBmc::new().expect(Command::ChassisControl, &[byte], &[0x00]);
            chassis_control(&mut bmc, control).unwrap();
            bmc.done();
            assert_eq!(
                bmc.once,
                vec![(0x00, 0x02)],
                "power control is never resent"
            );
        }
    }

    #[test]
    fn chassis_identify_sends_only_the_bytes_it_needs() {
        // 28.5: no data = the default 15 s; byte 1 = interval in seconds (0 = off); byte 2
        // bit 0 = force identify on, byte 1 then ignored.
        assert_eq!(encode_chassis_identify(Identify::Default), Vec::<u8>::new());
        assert_eq!(encode_chassis_identify(Identify::Seconds(0)), vec![0x00]);
        assert_eq!(encode_chassis_identify(Identify::Seconds(30)), vec![0x1E]);
        assert_eq!(
            encode_chassis_identify(Identify::Indefinitely),
            vec![0x00, 0x01]
        );

        let mut bmc = FakeBmc::new()
            .expect(Command::ChassisIdentify, &[0x1E], &[0x00])
            .expect(Command::ChassisIdentify, &[0x00, 0x01], &[0xCC]);
        chassis_identify(&mut bmc, Identify::Seconds(30)).unwrap();
        let err = chassis_identify(&mut bmc, Identify::Indefinitely).unwrap_err();
        bmc.done();
        assert_eq!(
            err.to_string(),
            "chassis identify: the BMC answered invalid data field in request (completion code \
             0xcc)"
        );
        assert_eq!(
            (
                Command::ChassisIdentify.netfn(),
                Command::ChassisIdentify.cmd()
            ),
            (0, 4)
        );
    }
}
