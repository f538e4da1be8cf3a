//! Channels: Get Channel Info (22.24).

use std::ops::RangeInclusive;

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};

/// Channel medium type 802.3 LAN (table 6-3).
pub const MEDIUM_LAN_802_3: u8 = 0x04;
/// Channel medium type "other LAN".
pub const MEDIUM_OTHER_LAN: u8 = 0x06;
/// Channel numbers that may be LAN channels: 0 is the primary IPMB, 0x0C..=0x0F are reserved
/// or special (0x0E "this channel", 0x0F the system interface).
pub const LAN_CHANNEL_RANGE: RangeInclusive<u8> = 1..=11;

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
}
