//! `chassis.power`: the chassis status as the protocol reports it, and power actions.

use molar_ipmi::chassis::{self, Control};
use molar_protocol::bmc::{ChassisStatus, PowerAction, PowerRestorePolicy};

use super::{BmcError, BmcTransport};

fn status(s: chassis::ChassisStatus) -> ChassisStatus {
    ChassisStatus {
        power_on: s.power_on,
        power_overload: s.power_overload,
        power_interlock: s.power_interlock,
        power_fault: s.power_fault,
        power_control_fault: s.power_control_fault,
        restore_policy: match s.restore_policy {
            chassis::PowerRestorePolicy::AlwaysOff => PowerRestorePolicy::AlwaysOff,
            chassis::PowerRestorePolicy::Previous => PowerRestorePolicy::Previous,
            chassis::PowerRestorePolicy::AlwaysOn => PowerRestorePolicy::AlwaysOn,
            chassis::PowerRestorePolicy::Unknown => PowerRestorePolicy::Unknown,
        },
        intrusion: s.intrusion,
        drive_fault: s.drive_fault,
        cooling_fault: s.cooling_fault,
    }
}

pub fn chassis_status<T: BmcTransport + ?Sized>(t: &mut T) -> Result<ChassisStatus, BmcError> {
    Ok(status(chassis::get_chassis_status(t)?))
}

/// The Chassis Control action of a power action; `None` for `status`, which changes nothing.
fn control(action: PowerAction) -> Option<Control> {
    match action {
        PowerAction::Status => None,
        PowerAction::Off => Some(Control::PowerDown),
        PowerAction::On => Some(Control::PowerUp),
        PowerAction::Cycle => Some(Control::PowerCycle),
        PowerAction::Reset => Some(Control::HardReset),
        PowerAction::Soft => Some(Control::SoftShutdown),
    }
}

/// Carries out a power action and returns once the BMC accepted it (for `status`, does
/// nothing). The protocol layer answers `chassis.power` first (with [`chassis_status`]),
/// then calls this: after `off`, `reset` or `cycle` the agent's machine may be gone.
pub fn power<T: BmcTransport + ?Sized>(t: &mut T, action: PowerAction) -> Result<(), BmcError> {
    if let Some(c) = control(action) {
        chassis::chassis_control(t, c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use molar_ipmi::Command;

    use super::super::fake::FakeBmc;
    use super::*;

    #[test]
    fn chassis_status_and_control() {
        // 28.2: power on, restore policy "previous" (01b in bits 6:5); last event 0; cooling
        // fault (bit 3) and intrusion (bit 0).
        let mut bmc =
            FakeBmc::new().expect(Command::GetChassisStatus, &[], &[0x00, 0x21, 0x00, 0x09]);
        let s = chassis_status(&mut bmc).unwrap();
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
        let mut bmc =
            FakeBmc::new().expect(Command::GetChassisStatus, &[], &[0x00, 0x00, 0x00, 0x00]);
        let s = chassis_status(&mut bmc).unwrap();
        assert!(!s.power_on);
        assert_eq!(s.restore_policy, PowerRestorePolicy::AlwaysOff);
        let mut bmc =
            FakeBmc::new().expect(Command::GetChassisStatus, &[], &[0x00, 0x5E, 0x00, 0x04]);
        let s = chassis_status(&mut bmc).unwrap();
        assert!(s.power_overload && s.power_interlock && s.power_fault && s.power_control_fault);
        assert!(s.drive_fault);
        assert_eq!(s.restore_policy, PowerRestorePolicy::AlwaysOn);

        // 28.3: 0 down, 1 up, 2 cycle, 3 hard reset, 5 soft shutdown.
        for (action, byte) in [
            (PowerAction::Off, 0u8),
            (PowerAction::On, 1),
            (PowerAction::Cycle, 2),
            (PowerAction::Reset, 3),
            (PowerAction::Soft, 5),
        ] {
            let mut bmc = FakeBmc::new().expect(Command::ChassisControl, &[byte], &[0x00]);
            power(&mut bmc, action).unwrap();
            bmc.done();
            assert_eq!(
                bmc.once,
                vec![(0x00, 0x02)],
                "power control is never resent"
            );
        }
        let mut bmc = FakeBmc::new();
        power(&mut bmc, PowerAction::Status).unwrap();
        assert!(bmc.once.is_empty());

        let mut bmc = FakeBmc::new().expect(Command::ChassisControl, &[5], &[0xCC]);
        let err = power(&mut bmc, PowerAction::Soft).unwrap_err();
        assert_eq!(err.code(), "bmc_invalid_data_field");
    }
}
