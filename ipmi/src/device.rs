//! The BMC as a device: Get Device ID (20.1), Cold Reset (20.2), Warm Reset (20.3).

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call, call_once};

/// Get Device ID response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    pub device_id: u8,
    pub device_revision: u8,
    pub provides_sdrs: bool,
    pub firmware_major: u8,
    /// BCD, as reported (0x08 means ".08").
    pub firmware_minor: u8,
    pub device_available: bool,
    /// BCD with the digits swapped: 0x02 is 2.0, 0x51 is 1.5.
    pub ipmi_version: u8,
    pub additional_support: u8,
    pub manufacturer_id: u32,
    pub product_id: u16,
    pub aux_firmware: Option<[u8; 4]>,
}

impl DeviceId {
    pub fn firmware_version(&self) -> String {
        format!("{}.{:02x}", self.firmware_major, self.firmware_minor)
    }
    pub fn ipmi_version_string(&self) -> String {
        format!("{}.{}", self.ipmi_version & 0x0F, self.ipmi_version >> 4)
    }
}

/// Decodes Get Device ID response data (table 20-2, after the completion code): the 11 bytes
/// every BMC sends, and the auxiliary firmware revision that is optional.
pub fn decode_device_id(d: &[u8; 11], aux: Option<&[u8; 4]>) -> DeviceId {
    let [
        id,
        rev,
        fw_major,
        fw_minor,
        ipmi,
        support,
        m0,
        m1,
        m2,
        p0,
        p1,
    ] = *d;
    DeviceId {
        device_id: id,
        device_revision: rev & 0x0F,
        provides_sdrs: rev & 0x80 != 0,
        firmware_major: fw_major & 0x7F,
        // Bit 7 set means "device firmware, SDR update or self-initialization in progress".
        device_available: fw_major & 0x80 == 0,
        firmware_minor: fw_minor,
        ipmi_version: ipmi,
        additional_support: support,
        manufacturer_id: u32::from(m0) | u32::from(m1) << 8 | u32::from(m2 & 0x0F) << 16,
        product_id: u16::from_le_bytes([p0, p1]),
        aux_firmware: aux.copied(),
    }
}

pub fn get_device_id<T: Transport + ?Sized>(t: &mut T) -> Result<DeviceId, CommandError<T::Error>> {
    let r = call::<_, 11>(t, Command::GetDeviceId, &[])?;
    Ok(decode_device_id(&r.data, r.rest.first_chunk::<4>()))
}

/// Cold Reset: the BMC restarts and may not answer first; sent once, never resent.
pub fn cold_reset<T: Transport + ?Sized>(t: &mut T) -> Result<(), CommandError<T::Error>> {
    call_once::<_, 0>(t, Command::ColdReset, &[])?;
    Ok(())
}

/// Get System GUID (22.14): the 16 bytes as the BMC sends them.
pub fn get_system_guid<T: Transport + ?Sized>(
    t: &mut T,
) -> Result<[u8; 16], CommandError<T::Error>> {
    call::<_, 16>(t, Command::GetSystemGuid, &[])?.exact(Command::GetSystemGuid)
}

/// A system GUID as a lowercase hyphenated UUID. IPMI sends the GUID least significant
/// byte first (the spec's byte 1 is the last byte of the node field), so the whole
/// 16 bytes are reversed into RFC 4122 order, the way `ipmitool mc guid` prints it.
pub fn format_guid(g: &[u8; 16]) -> String {
    let mut b = *g;
    b.reverse();
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Warm Reset: sent once, never resent.
pub fn warm_reset<T: Transport + ?Sized>(t: &mut T) -> Result<(), CommandError<T::Error>> {
    call_once::<_, 0>(t, Command::WarmReset, &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn system_guid_is_read_and_printed_like_ipmitool() {
        // ipmi_sim's lan.conf guid a123456789abcdefa123456789abcdef arrives in that byte
        // order; `ipmitool mc guid` prints efcdab89-6745-23a1-efcd-ab89674523a1.
        let g = [
            0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xa1, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_guid(&g), "efcdab89-6745-23a1-efcd-ab89674523a1");
        let mut resp = vec![0x00];
        resp.extend_from_slice(&g);
        let mut bmc = FakeBmc::new().expect(Command::GetSystemGuid, &[], &resp);
        assert_eq!(get_system_guid(&mut bmc).unwrap(), g);
        bmc.done();
    }

    #[test]
    fn get_device_id_decodes_the_spec_layout() {
        // Table 20-2: device id 0x20; device revision 1 with SDRs; firmware 9 (available) .08
        // (BCD); IPMI version 0x02 = 2.0; additional support 0xBF; manufacturer 0x001291 (LS
        // byte first, 20 bits); product 0x0F02; auxiliary firmware revision 01 02 03 04.
        let resp = [
            0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0xBF, 0x91, 0x12, 0x00, 0x02, 0x0F, 0x01, 0x02,
            0x03, 0x04,
        ];
        let mut bmc = FakeBmc::new().expect(Command::GetDeviceId, &[], &resp);
        let dev = get_device_id(&mut bmc).unwrap();
        bmc.done();
        assert_eq!(
            dev,
            DeviceId {
                device_id: 0x20,
                device_revision: 1,
                provides_sdrs: true,
                firmware_major: 9,
                firmware_minor: 0x08,
                device_available: true,
                ipmi_version: 0x02,
                additional_support: 0xBF,
                manufacturer_id: 0x1291,
                product_id: 0x0F02,
                aux_firmware: Some([1, 2, 3, 4]),
            }
        );
        assert_eq!(dev.firmware_version(), "9.08");
        assert_eq!(dev.ipmi_version_string(), "2.0");
        // 0x51 is IPMI 1.5 (low nibble is the major digit); no aux firmware bytes.
        let d = decode_device_id(
            &[0x01, 0x00, 0x82, 0x10, 0x51, 0x00, 0xA2, 0x02, 0x00, 0, 0],
            None,
        );
        assert_eq!(d.ipmi_version_string(), "1.5");
        assert!(!d.device_available);
        assert_eq!(d.manufacturer_id, 0x2A2);
        assert_eq!(d.aux_firmware, None);
        // An incomplete auxiliary revision is ignored, not misread.
        let mut bmc = FakeBmc::new().expect(
            Command::GetDeviceId,
            &[],
            &[
                0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0xBF, 0x91, 0x12, 0x00, 0x02, 0x0F, 0x01,
            ],
        );
        assert_eq!(get_device_id(&mut bmc).unwrap().aux_firmware, None);

        let mut bmc = FakeBmc::new().expect(Command::GetDeviceId, &[], &[0x00, 0x20, 0x81]);
        let err = get_device_id(&mut bmc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "get device id: response has 2 data bytes, expected at least 11"
        );
    }

    #[test]
    fn resets_are_sent_once() {
        let mut bmc = FakeBmc::new()
            .expect(Command::ColdReset, &[], &[0x00])
            .expect(Command::WarmReset, &[], &[0x00]);
        cold_reset(&mut bmc).unwrap();
        warm_reset(&mut bmc).unwrap();
        bmc.done();
        assert_eq!(bmc.once, vec![(0x06, 0x02), (0x06, 0x03)]);
    }
}
