//! Channels: Get Channel Info (22.24), and Get Channel Authentication Capabilities (22.13),
//! the first request of every IPMI-over-LAN session.

use std::ops::RangeInclusive;

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};
use crate::user::Privilege;

/// Channel medium type 802.3 LAN (table 6-3).
pub const MEDIUM_LAN_802_3: u8 = 0x04;
/// Channel medium type "other LAN".
pub const MEDIUM_OTHER_LAN: u8 = 0x06;
/// Channel numbers that may be LAN channels: 0 is the primary IPMB, 0x0C..=0x0F are reserved
/// or special (0x0E "this channel", 0x0F the system interface).
pub const LAN_CHANNEL_RANGE: RangeInclusive<u8> = 1..=11;
/// "The channel this request arrives on" (table 6-1).
pub const CURRENT_CHANNEL: u8 = 0x0E;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub channel: u8,
    pub medium: u8,
    pub protocol: u8,
    pub session_support: u8,
}

impl ChannelInfo {
    pub fn is_lan(&self) -> bool {
        matches!(self.medium, MEDIUM_LAN_802_3 | MEDIUM_OTHER_LAN)
    }
}

pub fn encode_get_channel_info(channel: u8) -> [u8; 1] {
    [channel & 0x0F]
}

/// Decodes the first four bytes of Get Channel Info response data (table 22-28); the vendor
/// id and auxiliary bytes after them are not needed.
pub fn decode_channel_info(d: &[u8; 4]) -> ChannelInfo {
    let [channel, medium, protocol, session] = *d;
    ChannelInfo {
        channel: channel & 0x0F,
        medium: medium & 0x7F,
        protocol: protocol & 0x1F,
        session_support: session >> 6,
    }
}

pub fn get_channel_info<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<ChannelInfo, CommandError<T::Error>> {
    let r = call::<_, 4>(
        t,
        Command::GetChannelInfo,
        &encode_get_channel_info(channel),
    )?;
    Ok(decode_channel_info(&r.data))
}

/// IPMI 1.5 authentication types a channel accepts at the asked privilege (byte 2 of the
/// response). RMCP+ sessions (IPMI 2.0) negotiate their algorithms separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthTypes {
    pub none: bool,
    pub md2: bool,
    pub md5: bool,
    pub password: bool,
    pub oem: bool,
}

/// Get Channel Authentication Capabilities response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCapabilities {
    pub channel: u8,
    /// The BMC filled in the IPMI 2.0 fields (`kg_set`, `ipmi20`).
    pub extended: bool,
    pub auth_types: AuthTypes,
    /// RAKP only: the BMC key K_G is set to a non-zero value (two-key login).
    pub kg_set: bool,
    pub per_message_auth_disabled: bool,
    pub user_level_auth_disabled: bool,
    /// One or more enabled users have a non-null name.
    pub non_null_usernames: bool,
    /// One or more enabled users have a null name and a non-null password.
    pub null_usernames: bool,
    /// A user with a null name and a null password is enabled.
    pub anonymous_login: bool,
    pub ipmi15: bool,
    pub ipmi20: bool,
    /// IANA enterprise number of the OEM authentication type, 0 when there is none.
    pub oem_id: u32,
    pub oem_aux: u8,
}

/// Request for `channel` (or [`CURRENT_CHANNEL`]) at `privilege`, asking for the IPMI 2.0
/// extended data (byte 1 bit 7); IPMI 1.5 BMCs ignore the bit.
pub fn encode_get_channel_auth_capabilities(channel: u8, privilege: Privilege) -> [u8; 2] {
    [0x80 | (channel & 0x0F), privilege.code()]
}

/// Decodes the 8 data bytes of the response (table 22-15, after the completion code).
pub fn decode_channel_auth_capabilities(d: &[u8; 8]) -> AuthCapabilities {
    let [channel, types, status, ext, o0, o1, o2, oem_aux] = *d;
    let extended = types & 0x80 != 0;
    AuthCapabilities {
        channel: channel & 0x0F,
        extended,
        auth_types: AuthTypes {
            none: types & 0x01 != 0,
            md2: types & 0x02 != 0,
            md5: types & 0x04 != 0,
            password: types & 0x10 != 0,
            oem: types & 0x20 != 0,
        },
        kg_set: extended && status & 0x20 != 0,
        per_message_auth_disabled: status & 0x10 != 0,
        user_level_auth_disabled: status & 0x08 != 0,
        non_null_usernames: status & 0x04 != 0,
        null_usernames: status & 0x02 != 0,
        anonymous_login: status & 0x01 != 0,
        // Without the extended data the byte is reserved: the BMC speaks IPMI 1.5 only.
        ipmi15: !extended || ext & 0x01 != 0,
        ipmi20: extended && ext & 0x02 != 0,
        oem_id: u32::from_le_bytes([o0, o1, o2, 0]),
        oem_aux,
    }
}

pub fn get_channel_auth_capabilities<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
    privilege: Privilege,
) -> Result<AuthCapabilities, CommandError<T::Error>> {
    let r = call::<_, 8>(
        t,
        Command::GetChannelAuthCapabilities,
        &encode_get_channel_auth_capabilities(channel, privilege),
    )?;
    Ok(decode_channel_auth_capabilities(&r.data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    #[test]
    fn channel_info_encodings() {
        assert_eq!(encode_get_channel_info(1), [0x01]);
        // Table 22-28: channel 1, medium 802.3 LAN, protocol IPMB-1.0, multi-session.
        let mut bmc = FakeBmc::new().expect(
            Command::GetChannelInfo,
            &[1],
            &[0x00, 0x01, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0, 0],
        );
        let info = get_channel_info(&mut bmc, 1).unwrap();
        assert_eq!(
            info,
            ChannelInfo {
                channel: 1,
                medium: 4,
                protocol: 1,
                session_support: 2
            }
        );
        assert!(info.is_lan());
        // Channel 0: IPMB medium.
        assert!(!decode_channel_info(&[0x00, 0x01, 0x01, 0x00]).is_lan());
        // "Other LAN" counts too; the medium's reserved bit 7 is ignored.
        assert!(decode_channel_info(&[0x02, 0x86, 0x01, 0x00]).is_lan());
    }

    #[test]
    fn channel_auth_capabilities_follow_table_22_15() {
        // Request (table 22-14): bit 7 = IPMI 2.0 extended data, channel 0x0E (this one);
        // requested privilege administrator (4).
        assert_eq!(
            encode_get_channel_auth_capabilities(CURRENT_CHANNEL, Privilege::Administrator),
            [0x8E, 0x04]
        );
        assert_eq!(
            encode_get_channel_auth_capabilities(1, Privilege::User),
            [0x81, 0x02]
        );

        // An IPMI 2.0 BMC on channel 1: extended data (0x80) with MD5, MD2, straight password
        // and none (0x17); non-null usernames enabled (0x04); IPMI 1.5 and 2.0 connections
        // (0x03); no OEM authentication.
        let mut bmc = FakeBmc::new().expect(
            Command::GetChannelAuthCapabilities,
            &[0x8E, 0x04],
            &[0x00, 0x01, 0x97, 0x04, 0x03, 0x00, 0x00, 0x00, 0x00],
        );
        let caps =
            get_channel_auth_capabilities(&mut bmc, CURRENT_CHANNEL, Privilege::Administrator)
                .unwrap();
        bmc.done();
        assert_eq!(
            caps,
            AuthCapabilities {
                channel: 1,
                extended: true,
                auth_types: AuthTypes {
                    none: true,
                    md2: true,
                    md5: true,
                    password: true,
                    oem: false,
                },
                kg_set: false,
                per_message_auth_disabled: false,
                user_level_auth_disabled: false,
                non_null_usernames: true,
                null_usernames: false,
                anonymous_login: false,
                ipmi15: true,
                ipmi20: true,
                oem_id: 0,
                oem_aux: 0,
            }
        );

        // K_G set, per-message and user-level authentication disabled, anonymous login and
        // null usernames, RMCP+ only, OEM auth type of enterprise 0x001BF2 with aux 0x5A.
        let caps =
            decode_channel_auth_capabilities(&[0x02, 0xA0, 0x3B, 0x02, 0xF2, 0x1B, 0x00, 0x5A]);
        assert!(caps.extended && caps.auth_types.oem && !caps.auth_types.md5);
        assert!(caps.kg_set && caps.per_message_auth_disabled && caps.user_level_auth_disabled);
        assert!(caps.null_usernames && caps.anonymous_login && !caps.non_null_usernames);
        assert!(caps.ipmi20 && !caps.ipmi15);
        assert_eq!((caps.oem_id, caps.oem_aux), (0x1BF2, 0x5A));

        // An IPMI 1.5 BMC: no extended bit, so bytes 4 and 5 (K_G, connections) are reserved
        // and whatever they hold is not read as IPMI 2.0 support.
        let caps = decode_channel_auth_capabilities(&[0x01, 0x04, 0x24, 0x02, 0, 0, 0, 0]);
        assert!(!caps.extended && caps.auth_types.md5);
        assert!(!caps.kg_set && !caps.ipmi20 && caps.ipmi15);
        assert!(caps.non_null_usernames);

        let mut bmc = FakeBmc::new().expect(
            Command::GetChannelAuthCapabilities,
            &[0x81, 0x04],
            &[0x00, 0x01, 0x97, 0x04],
        );
        let err = get_channel_auth_capabilities(&mut bmc, 1, Privilege::Administrator).unwrap_err();
        assert_eq!(
            err.to_string(),
            "get channel authentication capabilities: response has 3 data bytes, expected at \
             least 8"
        );
    }
}
