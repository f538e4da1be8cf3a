//! `chassis.boot_device`: sets the boot device override and reads it back.

use molar_ipmi::boot::{self, BootFlags};
use molar_protocol::bmc::{BootDevice, BootDeviceParams, BootDeviceResult};

use super::{BmcError, BmcTransport, CommandError};

fn to_ipmi(device: BootDevice) -> boot::BootDevice {
    match device {
        BootDevice::None => boot::BootDevice::NoOverride,
        BootDevice::Pxe => boot::BootDevice::Pxe,
        BootDevice::Disk => boot::BootDevice::Disk,
        BootDevice::Cdrom => boot::BootDevice::Cdrom,
        BootDevice::Bios => boot::BootDevice::BiosSetup,
    }
}

/// The protocol's name for a boot device; `None` for those it has no word for.
fn from_ipmi(device: boot::BootDevice) -> Option<BootDevice> {
    match device {
        boot::BootDevice::NoOverride => Some(BootDevice::None),
        boot::BootDevice::Pxe => Some(BootDevice::Pxe),
        boot::BootDevice::Disk => Some(BootDevice::Disk),
        boot::BootDevice::Cdrom => Some(BootDevice::Cdrom),
        boot::BootDevice::BiosSetup => Some(BootDevice::Bios),
        _ => None,
    }
}

fn describe_boot(device: Option<BootDevice>, selector: u8, persistent: bool, efi: bool) -> String {
    let device = match device {
        Some(d) => format!("{d:?}").to_lowercase(),
        None => format!("selector {selector:#x}"),
    };
    format!(
        "{device}, {}, {}",
        if persistent {
            "persistent"
        } else {
            "next boot only"
        },
        if efi { "efi" } else { "legacy bios" }
    )
}

/// Sets the boot device override and reads it back. "Set in progress" and the boot info
/// acknowledge are optional in the specification: refusals of those are ignored.
pub fn boot_device<T: BmcTransport + ?Sized>(
    t: &mut T,
    params: &BootDeviceParams,
) -> Result<BootDeviceResult, BmcError> {
    let locked = match boot::set_in_progress(t, true) {
        Ok(()) => true,
        Err(CommandError::Completion { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    // Boot info acknowledge: mark the new flags as not yet handled by the BIOS.
    match boot::set_boot_info_ack(t) {
        Ok(()) | Err(CommandError::Completion { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let asked = BootFlags::new(to_ipmi(params.device), params.persistent, params.efi);
    let set = boot::set_boot_flags(t, &asked);
    if locked {
        // Always release the lock, even when setting the flags failed.
        match boot::set_in_progress(t, false) {
            Ok(()) | Err(CommandError::Completion { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    set?;
    let got = boot::get_boot_flags(t)?;
    let device = got.device().and_then(from_ipmi);
    if !got.valid
        || device != Some(params.device)
        || got.persistent != params.persistent
        || got.efi != params.efi
    {
        return Err(BmcError::BootFlagsMismatch {
            asked: describe_boot(
                Some(params.device),
                asked.selector,
                params.persistent,
                params.efi,
            ),
            got: if got.valid {
                describe_boot(device, got.selector, got.persistent, got.efi)
            } else {
                "flags not valid".to_owned()
            },
        });
    }
    Ok(BootDeviceResult {
        device: params.device,
        persistent: got.persistent,
        efi: got.efi,
    })
}

#[cfg(test)]
mod tests {
    use molar_ipmi::Command;

    use super::super::fake::FakeBmc;
    use super::*;

    fn boot_script(bmc: FakeBmc, set: [u8; 6], readback: &[u8]) -> FakeBmc {
        bmc.expect(Command::SetBootOptions, &[0x00, 0x01], &[0x00])
            .expect(Command::SetBootOptions, &[0x04, 0x01, 0x01], &[0x00])
            .expect(Command::SetBootOptions, &set, &[0x00])
            .expect(Command::SetBootOptions, &[0x00, 0x00], &[0x00])
            .expect(Command::GetBootOptions, &[0x05, 0x00, 0x00], readback)
    }

    #[test]
    fn every_protocol_device_has_its_selector() {
        // Table 28-14, data 2 bits 5:2.
        for (device, selector) in [
            (BootDevice::None, 0x0),
            (BootDevice::Pxe, 0x1),
            (BootDevice::Disk, 0x2),
            (BootDevice::Cdrom, 0x5),
            (BootDevice::Bios, 0x6),
        ] {
            assert_eq!(to_ipmi(device).selector(), selector);
            assert_eq!(from_ipmi(to_ipmi(device)), Some(device));
        }
        assert_eq!(from_ipmi(boot::BootDevice::RemoteCdrom), None);
    }

    #[test]
    fn boot_device_sets_and_verifies() {
        let params = BootDeviceParams {
            device: BootDevice::Pxe,
            persistent: true,
            efi: true,
        };
        let mut bmc = boot_script(
            FakeBmc::new(),
            [0x05, 0xE0, 0x04, 0, 0, 0],
            &[0x00, 0x01, 0x05, 0xE0, 0x04, 0, 0, 0],
        );
        let r = boot_device(&mut bmc, &params).unwrap();
        bmc.done();
        assert_eq!(
            r,
            BootDeviceResult {
                device: BootDevice::Pxe,
                persistent: true,
                efi: true
            }
        );

        // The BMC ignored the EFI bit: reported, not silently accepted.
        let mut bmc = boot_script(
            FakeBmc::new(),
            [0x05, 0xE0, 0x04, 0, 0, 0],
            &[0x00, 0x01, 0x05, 0xC0, 0x04, 0, 0, 0],
        );
        let err = boot_device(&mut bmc, &params).unwrap_err();
        assert_eq!(err.code(), "bmc_verify_failed");
        assert_eq!(
            err.to_string(),
            "boot device was not applied: asked for pxe, persistent, efi, the BMC reports \
             pxe, persistent, legacy bios"
        );

        // A device the protocol has no word for is named by its selector.
        let mut bmc = boot_script(
            FakeBmc::new(),
            [0x05, 0xE0, 0x04, 0, 0, 0],
            &[0x00, 0x01, 0x05, 0xE0, 0x20, 0, 0, 0],
        );
        let err = boot_device(&mut bmc, &params).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("the BMC reports selector 0x8, persistent, efi"),
            "{err}"
        );
    }

    #[test]
    fn boot_device_tolerates_missing_optional_parameters_but_not_a_refused_flag() {
        // ipmi_sim without a chassis control program: set-in-progress and boot info ack are
        // refused (0xCC), and so is parameter 5 itself.
        let params = BootDeviceParams {
            device: BootDevice::Disk,
            persistent: false,
            efi: false,
        };
        let mut bmc = FakeBmc::new()
            .expect(Command::SetBootOptions, &[0x00, 0x01], &[0xCC])
            .expect(Command::SetBootOptions, &[0x04, 0x01, 0x01], &[0xCC])
            .expect(
                Command::SetBootOptions,
                &[0x05, 0x80, 0x08, 0, 0, 0],
                &[0xCC],
            );
        let err = boot_device(&mut bmc, &params).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_invalid_data_field");
        assert_eq!(
            err.to_string(),
            "set system boot options: the BMC answered invalid data field in request \
             (completion code 0xcc)"
        );

        // With set-in-progress supported, the lock is released even when the set fails.
        let mut bmc = FakeBmc::new()
            .expect(Command::SetBootOptions, &[0x00, 0x01], &[0x00])
            .expect(Command::SetBootOptions, &[0x04, 0x01, 0x01], &[0x80])
            .expect(
                Command::SetBootOptions,
                &[0x05, 0x80, 0x08, 0, 0, 0],
                &[0x81],
            )
            .expect(Command::SetBootOptions, &[0x00, 0x00], &[0x00]);
        let err = boot_device(&mut bmc, &params).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_set_in_progress");
    }
}
