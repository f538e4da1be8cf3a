//! LAN configuration: Get LAN Configuration Parameters (23.2) for the parameters of table
//! 23-4 that describe a channel's network address.

use std::fmt;
use std::net::Ipv4Addr;

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};

/// Parameter selectors (table 23-4).
pub mod param {
    pub const IP_ADDRESS: u8 = 3;
    pub const IP_SOURCE: u8 = 4;
    pub const MAC_ADDRESS: u8 = 5;
    pub const SUBNET_MASK: u8 = 6;
    pub const DEFAULT_GATEWAY: u8 = 12;
    pub const VLAN_ID: u8 = 20;
}

pub fn encode_get_lan_config(channel: u8, parameter: u8) -> [u8; 4] {
    // Byte 1 bit 7 = 0: get the parameter, not only its revision; set and block selector 0.
    [channel & 0x0F, parameter, 0x00, 0x00]
}

/// A MAC address; displays as `aa:bb:cc:dd:ee:ff`, lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// How a LAN channel gets its IP address (parameter 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    Unspecified,
    Static,
    Dhcp,
    Bios,
    Other,
}

/// Parameter 5.
pub fn decode_mac(d: &[u8; 6]) -> MacAddress {
    MacAddress(*d)
}

/// Parameters 3, 6 and 12.
pub fn decode_ipv4(d: &[u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(*d)
}

/// Parameter 4, bits 3:0.
pub fn decode_ip_source(b: u8) -> IpSource {
    match b & 0x0F {
        1 => IpSource::Static,
        2 => IpSource::Dhcp,
        3 => IpSource::Bios,
        4 => IpSource::Other,
        _ => IpSource::Unspecified,
    }
}

/// Parameter 20: bits 11:0 VLAN id, byte 2 bit 7 "VLAN enabled". `None` when disabled.
pub fn decode_vlan(d: &[u8; 2]) -> Option<u16> {
    let [lo, hi] = *d;
    let id = u16::from(lo) | u16::from(hi & 0x0F) << 8;
    (hi & 0x80 != 0).then_some(id)
}

/// Reads one parameter: `N` is the parameter revision byte plus the parameter's data.
fn parameter<T: Transport + ?Sized, const N: usize>(
    t: &mut T,
    channel: u8,
    selector: u8,
) -> Result<[u8; N], CommandError<T::Error>> {
    let r = call::<_, N>(
        t,
        Command::GetLanConfig,
        &encode_get_lan_config(channel, selector),
    )?;
    Ok(r.data)
}

pub fn get_mac_address<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<MacAddress, CommandError<T::Error>> {
    let [_revision, mac @ ..] = parameter::<_, 7>(t, channel, param::MAC_ADDRESS)?;
    Ok(decode_mac(&mac))
}

pub fn get_ip_address<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<Ipv4Addr, CommandError<T::Error>> {
    let [_revision, ip @ ..] = parameter::<_, 5>(t, channel, param::IP_ADDRESS)?;
    Ok(decode_ipv4(&ip))
}

pub fn get_ip_source<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<IpSource, CommandError<T::Error>> {
    let [_revision, source] = parameter::<_, 2>(t, channel, param::IP_SOURCE)?;
    Ok(decode_ip_source(source))
}

pub fn get_subnet_mask<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<Ipv4Addr, CommandError<T::Error>> {
    let [_revision, mask @ ..] = parameter::<_, 5>(t, channel, param::SUBNET_MASK)?;
    Ok(decode_ipv4(&mask))
}

pub fn get_default_gateway<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<Ipv4Addr, CommandError<T::Error>> {
    let [_revision, gw @ ..] = parameter::<_, 5>(t, channel, param::DEFAULT_GATEWAY)?;
    Ok(decode_ipv4(&gw))
}

/// The 802.1q VLAN id; `None` when VLAN tagging is disabled.
pub fn get_vlan_id<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<Option<u16>, CommandError<T::Error>> {
    let [_revision, vlan @ ..] = parameter::<_, 3>(t, channel, param::VLAN_ID)?;
    Ok(decode_vlan(&vlan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn lan_config_encodings_and_decodings() {
        // 23.2: channel 1, parameter 5 (MAC), set selector 0, block selector 0.
        assert_eq!(encode_get_lan_config(1, 5), [0x01, 0x05, 0x00, 0x00]);
        assert_eq!(
            decode_mac(&[0x52, 0x54, 0x00, 0xBE, 0xEF, 0x01]).to_string(),
            "52:54:00:be:ef:01"
        );
        assert_eq!(decode_ipv4(&[192, 0, 2, 10]), Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(decode_ip_source(0x01), IpSource::Static);
        assert_eq!(decode_ip_source(0x02), IpSource::Dhcp);
        assert_eq!(decode_ip_source(0x03), IpSource::Bios);
        assert_eq!(decode_ip_source(0x04), IpSource::Other);
        assert_eq!(decode_ip_source(0x00), IpSource::Unspecified);
        // Parameter 20: VLAN 0x123 enabled = [0x23, 0x81]; disabled = bit 7 clear.
        assert_eq!(decode_vlan(&[0x23, 0x81]), Some(0x123));
        assert_eq!(decode_vlan(&[0x23, 0x01]), None);
    }

    #[test]
    fn each_parameter_skips_the_revision_byte() {
        // Responses: completion code, parameter revision 0x11, data.
        let mut bmc = FakeBmc::new()
            .expect(
                Command::GetLanConfig,
                &[1, 5, 0, 0],
                &[0x00, 0x11, 0x52, 0x54, 0x00, 0xBE, 0xEF, 0x01],
            )
            .expect(
                Command::GetLanConfig,
                &[1, 3, 0, 0],
                &[0x00, 0x11, 192, 0, 2, 10],
            )
            .expect(Command::GetLanConfig, &[1, 4, 0, 0], &[0x00, 0x11, 0x02])
            .expect(
                Command::GetLanConfig,
                &[1, 6, 0, 0],
                &[0x00, 0x11, 255, 255, 255, 0],
            )
            .expect(
                Command::GetLanConfig,
                &[1, 12, 0, 0],
                &[0x00, 0x11, 192, 0, 2, 1],
            )
            .expect(
                Command::GetLanConfig,
                &[1, 20, 0, 0],
                &[0x00, 0x11, 0x23, 0x81],
            )
            .expect(Command::GetLanConfig, &[1, 3, 0, 0], &[0x00, 0x11, 192, 0]);
        assert_eq!(
            get_mac_address(&mut bmc, 1).unwrap().to_string(),
            "52:54:00:be:ef:01"
        );
        assert_eq!(
            get_ip_address(&mut bmc, 1).unwrap(),
            Ipv4Addr::new(192, 0, 2, 10)
        );
        assert_eq!(get_ip_source(&mut bmc, 1).unwrap(), IpSource::Dhcp);
        assert_eq!(
            get_subnet_mask(&mut bmc, 1).unwrap(),
            Ipv4Addr::new(255, 255, 255, 0)
        );
        assert_eq!(
            get_default_gateway(&mut bmc, 1).unwrap(),
            Ipv4Addr::new(192, 0, 2, 1)
        );
        assert_eq!(get_vlan_id(&mut bmc, 1).unwrap(), Some(0x123));
        let err = get_ip_address(&mut bmc, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "get lan configuration parameters: response has 3 data bytes, expected at least 5"
        );
        bmc.done();
    }
}
