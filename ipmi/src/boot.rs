//! System boot options: Set/Get System Boot Options (28.12, 28.13) for the boot flags
//! (parameter 5, table 28-14), the set-in-progress lock (parameter 0) and the boot info
//! acknowledge (parameter 4).

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};

/// Parameter selectors (table 28-14).
pub mod param {
    pub const SET_IN_PROGRESS: u8 = 0;
    pub const BOOT_INFO_ACK: u8 = 4;
    pub const BOOT_FLAGS: u8 = 5;
}

/// Boot device selectors of boot flags data 2, bits 5:2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// No override: the firmware's own boot order.
    NoOverride,
    Pxe,
    Disk,
    DiskSafeMode,
    DiagnosticPartition,
    Cdrom,
    /// Firmware setup.
    BiosSetup,
    RemoteFloppy,
    RemoteCdrom,
    RemoteMedia,
    RemoteDisk,
    Floppy,
}

impl BootDevice {
    pub fn selector(self) -> u8 {
        match self {
            BootDevice::NoOverride => 0x0,
            BootDevice::Pxe => 0x1,
            BootDevice::Disk => 0x2,
            BootDevice::DiskSafeMode => 0x3,
            BootDevice::DiagnosticPartition => 0x4,
            BootDevice::Cdrom => 0x5,
            BootDevice::BiosSetup => 0x6,
            BootDevice::RemoteFloppy => 0x7,
            BootDevice::RemoteCdrom => 0x8,
            BootDevice::RemoteMedia => 0x9,
            BootDevice::RemoteDisk => 0xB,
            BootDevice::Floppy => 0xF,
        }
    }

    pub fn from_selector(selector: u8) -> Option<BootDevice> {
        Some(match selector {
            0x0 => BootDevice::NoOverride,
            0x1 => BootDevice::Pxe,
            0x2 => BootDevice::Disk,
            0x3 => BootDevice::DiskSafeMode,
            0x4 => BootDevice::DiagnosticPartition,
            0x5 => BootDevice::Cdrom,
            0x6 => BootDevice::BiosSetup,
            0x7 => BootDevice::RemoteFloppy,
            0x8 => BootDevice::RemoteCdrom,
            0x9 => BootDevice::RemoteMedia,
            0xB => BootDevice::RemoteDisk,
            0xF => BootDevice::Floppy,
            _ => return None,
        })
    }
}

/// Boot flags as encoded in parameter 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFlags {
    pub valid: bool,
    pub persistent: bool,
    pub efi: bool,
    /// Boot device selector, data 2 bits 5:2 (see [`BootDevice`]).
    pub selector: u8,
}

impl BootFlags {
    /// Valid flags overriding the boot device.
    pub fn new(device: BootDevice, persistent: bool, efi: bool) -> Self {
        Self {
            valid: true,
            persistent,
            efi,
            selector: device.selector(),
        }
    }

    pub fn device(&self) -> Option<BootDevice> {
        BootDevice::from_selector(self.selector)
    }
}

/// Set System Boot Options request for parameter 5.
pub fn encode_set_boot_flags(flags: &BootFlags) -> [u8; 6] {
    // Data 1: bit 7 flags valid, bit 6 persistent, bit 5 EFI. Data 2: bits 5:2 device.
    // Data 3..5 (console redirection, BIOS verbosity, device instance) left at defaults.
    let mut d1 = 0x00;
    if flags.valid {
        d1 |= 0x80;
    }
    if flags.persistent {
        d1 |= 0x40;
    }
    if flags.efi {
        d1 |= 0x20;
    }
    [
        param::BOOT_FLAGS,
        d1,
        (flags.selector & 0x0F) << 2,
        0x00,
        0x00,
        0x00,
    ]
}

/// Parameter 0: take (`true`) or release the set-in-progress lock.
pub fn encode_set_in_progress(in_progress: bool) -> [u8; 2] {
    [param::SET_IN_PROGRESS, u8::from(in_progress)]
}

/// Parameter 4: mark the boot flags as not yet handled by the BIOS (write mask bit 0, then
/// clear "BIOS/POST handled" bit 0).
pub fn encode_boot_info_ack() -> [u8; 3] {
    [param::BOOT_INFO_ACK, 0x01, 0x01]
}

pub fn encode_get_boot_option(parameter: u8) -> [u8; 3] {
    [parameter & 0x7F, 0x00, 0x00]
}

/// Decodes the start of a Get System Boot Options response for parameter 5 (after the
/// completion code: parameter version, parameter selector, boot flags data 1 and 2; data
/// 3 to 5 are not needed).
pub fn decode_boot_flags(d: &[u8; 4]) -> BootFlags {
    let [_version, _selector, d1, d2] = *d;
    BootFlags {
        valid: d1 & 0x80 != 0,
        persistent: d1 & 0x40 != 0,
        efi: d1 & 0x20 != 0,
        selector: (d2 >> 2) & 0x0F,
    }
}

pub fn set_in_progress<T: Transport + ?Sized>(
    t: &mut T,
    in_progress: bool,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::SetBootOptions,
        &encode_set_in_progress(in_progress),
    )?;
    Ok(())
}

pub fn set_boot_info_ack<T: Transport + ?Sized>(t: &mut T) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(t, Command::SetBootOptions, &encode_boot_info_ack())?;
    Ok(())
}

pub fn set_boot_flags<T: Transport + ?Sized>(
    t: &mut T,
    flags: &BootFlags,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(t, Command::SetBootOptions, &encode_set_boot_flags(flags))?;
    Ok(())
}

pub fn get_boot_flags<T: Transport + ?Sized>(
    t: &mut T,
) -> Result<BootFlags, CommandError<T::Error>> {
    let r = call::<_, 4>(
        t,
        Command::GetBootOptions,
        &encode_get_boot_option(param::BOOT_FLAGS),
    )?;
    Ok(decode_boot_flags(&r.data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn boot_flag_encodings() {
        let p = BootFlags::new;
        // Table 28-14, parameter 5: data 1 = valid | persistent | EFI; data 2 bits 5:2.
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::Pxe, false, false)),
            [0x05, 0x80, 0x04, 0, 0, 0]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::Disk, true, true)),
            [0x05, 0xE0, 0x08, 0, 0, 0]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::Cdrom, false, true))[1..3],
            [0xA0, 0x14]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::BiosSetup, true, false))[1..3],
            [0xC0, 0x18]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::NoOverride, false, false))[1..3],
            [0x80, 0x00]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::Floppy, false, false))[1..3],
            [0x80, 0x3C]
        );
        assert_eq!(encode_get_boot_option(5), [0x05, 0x00, 0x00]);
        assert_eq!(encode_set_in_progress(true), [0x00, 0x01]);
        assert_eq!(encode_set_in_progress(false), [0x00, 0x00]);
        assert_eq!(encode_boot_info_ack(), [0x04, 0x01, 0x01]);
        // 28.13 response: parameter version 1, parameter 5, data.
        let mut bmc = FakeBmc::new().expect(
            Command::GetBootOptions,
            &[0x05, 0x00, 0x00],
            &[0x00, 0x01, 0x05, 0xE0, 0x08, 0x00, 0x00, 0x00],
        );
        let flags = get_boot_flags(&mut bmc).unwrap();
        bmc.done();
        assert_eq!(
            flags,
            BootFlags {
                valid: true,
                persistent: true,
                efi: true,
                selector: 2
            }
        );
        assert_eq!(flags.device(), Some(BootDevice::Disk));
        assert_eq!(decode_boot_flags(&[0x01, 0x05, 0x00, 0x28]).device(), None);
    }

    #[test]
    fn selectors_round_trip() {
        for s in 0..16u8 {
            if let Some(d) = BootDevice::from_selector(s) {
                assert_eq!(d.selector(), s);
            }
        }
        assert_eq!(BootDevice::from_selector(0xA), None);
    }
}
