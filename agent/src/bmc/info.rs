//! `bmc.info`: the BMC's identity, its LAN channels with their network configuration, and
//! its users. Anything the BMC refuses to tell becomes a note; only a BMC that does not
//! answer at all fails the operation.

use molar_ipmi::{channel, device, lan, user};
use molar_protocol::bmc::{BmcInfo, BmcUser, IpSource, LanChannel, UserChannelAccess};

use super::{BmcError, BmcTransport, CommandError, from_ipmi_privilege};

/// `bmc.info`: device identity, LAN channels with their network configuration, and the user
/// list (names, enabled, privilege per LAN channel). Passwords cannot be read and are not.
pub fn info<T: BmcTransport + ?Sized>(t: &mut T) -> Result<BmcInfo, BmcError> {
    let dev = device::get_device_id(t)?;
    let channels = lan_channels(t)?;
    let mut notes = Vec::new();
    let mut lan = Vec::with_capacity(channels.len());
    for &ch in &channels {
        lan.push(lan_channel_config(t, ch)?);
    }
    let (max_users, users) = match channels.first() {
        Some(&first) => {
            let (max, users) = list_users(t, first, &channels, &mut notes)?;
            (Some(max), users)
        }
        None => {
            notes.push("users: not listed, the BMC has no LAN channel".to_owned());
            (None, Vec::new())
        }
    };
    Ok(BmcInfo {
        device_id: dev.device_id,
        device_revision: dev.device_revision,
        firmware_version: dev.firmware_version(),
        aux_firmware_revision: dev
            .aux_firmware
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
        ipmi_version: dev.ipmi_version_string(),
        manufacturer_id: dev.manufacturer_id,
        product_id: dev.product_id,
        max_users,
        lan_channels: lan,
        users,
        notes,
    })
}

/// The BMC's LAN channels, probing channels 1 to 11. Channels the BMC says do not exist
/// (any completion code) are skipped; a BMC that does not answer is an error.
pub(super) fn lan_channels<T: BmcTransport + ?Sized>(t: &mut T) -> Result<Vec<u8>, BmcError> {
    let mut found = Vec::new();
    for ch in channel::LAN_CHANNEL_RANGE {
        match channel::get_channel_info(t, ch) {
            Ok(info) if info.is_lan() => found.push(ch),
            Ok(_) | Err(CommandError::Completion { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found)
}

/// A parameter the BMC refuses or answers oddly becomes a note; a transport failure is an
/// error.
fn noted<V>(
    r: Result<V, CommandError>,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<Option<V>, BmcError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e @ CommandError::Transport { .. }) => Err(e.into()),
        Err(e) => {
            notes.push(format!("{what}: {e}"));
            Ok(None)
        }
    }
}

fn ip_source(s: lan::IpSource) -> IpSource {
    match s {
        lan::IpSource::Unspecified => IpSource::Unspecified,
        lan::IpSource::Static => IpSource::Static,
        lan::IpSource::Dhcp => IpSource::Dhcp,
        lan::IpSource::Bios => IpSource::Bios,
        lan::IpSource::Other => IpSource::Other,
    }
}

/// Reads the LAN configuration of one channel; every parameter the BMC refuses is left
/// absent with a note, a BMC that does not answer is an error.
fn lan_channel_config<T: BmcTransport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<LanChannel, BmcError> {
    let mut notes = Vec::new();
    let n = &mut notes;
    let mac = noted(lan::get_mac_address(t, channel), "mac", n)?;
    let ip = noted(lan::get_ip_address(t, channel), "ip", n)?;
    let source = noted(lan::get_ip_source(t, channel), "ip source", n)?;
    let netmask = noted(lan::get_subnet_mask(t, channel), "netmask", n)?;
    let gateway = noted(lan::get_default_gateway(t, channel), "gateway", n)?;
    let vlan = noted(lan::get_vlan_id(t, channel), "vlan", n)?;
    Ok(LanChannel {
        channel,
        mac: mac.map(|m| m.to_string()),
        ip,
        ip_source: source.map(ip_source),
        netmask,
        gateway,
        vlan: vlan.flatten(),
        notes,
    })
}

/// Users with a name, or enabled, or with access on any of `channels` (`first` among them).
fn list_users<T: BmcTransport + ?Sized>(
    t: &mut T,
    first: u8,
    channels: &[u8],
    notes: &mut Vec<String>,
) -> Result<(u8, Vec<BmcUser>), BmcError> {
    let slots = user::get_user_access(t, first, 1)?;
    let max = slots.max_users;
    let mut users = Vec::new();
    // Some BMCs refuse the names of unused slots: one note for all of them, not one each.
    let mut unreadable_names: Vec<(u8, u8)> = Vec::new();
    for id in 1..=max {
        let name = match user::get_user_name(t, id) {
            Ok(name) => name,
            // Many BMCs (and ipmi_sim) refuse the name of user 1, the anonymous user.
            Err(CommandError::Completion { .. }) if id == 1 => String::new(),
            Err(CommandError::Completion { code, .. }) => {
                unreadable_names.push((id, code));
                String::new()
            }
            Err(e) => return Err(e.into()),
        };
        let mut enabled = None;
        let mut access = Vec::with_capacity(channels.len());
        for &ch in channels {
            let a = match (id, ch == first) {
                (1, true) => slots.clone(),
                _ => match user::get_user_access(t, ch, id) {
                    Ok(a) => a,
                    Err(e @ CommandError::Completion { .. }) => {
                        notes.push(format!("user {id} on channel {ch}: {e}"));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            enabled = enabled.or(a.enabled);
            access.push(UserChannelAccess {
                channel: ch,
                privilege: a.privilege.map(from_ipmi_privilege),
                ipmi_messaging: a.ipmi_messaging,
                link_auth: a.link_auth,
                callback_only: a.callback_only,
            });
        }
        let has_access = access.iter().any(|a| a.privilege.is_some());
        if !name.is_empty() || enabled == Some(true) || has_access {
            users.push(BmcUser {
                id,
                name,
                enabled,
                channels: access,
            });
        }
    }
    if !unreadable_names.is_empty() {
        let list: Vec<String> = unreadable_names
            .iter()
            .map(|(id, code)| format!("{id} ({code:#04x})"))
            .collect();
        notes.push(format!(
            "users: the BMC refused the names of user ids {} (completion codes in brackets)",
            list.join(", ")
        ));
    }
    Ok((max, users))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use molar_ipmi::Command;
    use molar_protocol::bmc::Privilege;

    use super::super::fake::{FakeBmc, name16, scan_channels, timeout};
    use super::*;

    #[test]
    fn lan_channels_are_found_and_a_silent_bmc_is_an_error() {
        let mut bmc = scan_channels(FakeBmc::new(), &[1, 8]);
        assert_eq!(lan_channels(&mut bmc).unwrap(), vec![1, 8]);
        bmc.done();

        // A BMC that stops answering is not "no LAN channels".
        let mut bmc = FakeBmc::new().expect_err(Command::GetChannelInfo, &[1], timeout);
        assert_eq!(lan_channels(&mut bmc).unwrap_err().code(), "bmc_timeout");
    }

    fn lan_script(bmc: FakeBmc, ch: u8) -> FakeBmc {
        // Responses: completion code, parameter revision 0x11, data.
        bmc.expect(
            Command::GetLanConfig,
            &[ch, 5, 0, 0],
            &[0x00, 0x11, 0x52, 0x54, 0x00, 0xBE, 0xEF, 0x01],
        )
        .expect(
            Command::GetLanConfig,
            &[ch, 3, 0, 0],
            &[0x00, 0x11, 192, 0, 2, 10],
        )
        .expect(Command::GetLanConfig, &[ch, 4, 0, 0], &[0x00, 0x11, 0x01])
        .expect(
            Command::GetLanConfig,
            &[ch, 6, 0, 0],
            &[0x00, 0x11, 255, 255, 255, 0],
        )
        .expect(
            Command::GetLanConfig,
            &[ch, 12, 0, 0],
            &[0x00, 0x11, 192, 0, 2, 1],
        )
        .expect(Command::GetLanConfig, &[ch, 20, 0, 0], &[0x80])
    }

    #[test]
    fn lan_channel_config_reads_each_parameter_and_notes_refusals() {
        let mut bmc = lan_script(FakeBmc::new(), 1);
        let lan = lan_channel_config(&mut bmc, 1).unwrap();
        bmc.done();
        assert_eq!(lan.mac.as_deref(), Some("52:54:00:be:ef:01"));
        assert_eq!(lan.ip, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(lan.ip_source, Some(IpSource::Static));
        assert_eq!(lan.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(lan.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(lan.vlan, None);
        assert_eq!(
            lan.notes,
            vec![
                "vlan: get lan configuration parameters: the BMC answered parameter not \
                 supported (completion code 0x80)"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn lan_channel_config_notes_short_answers_but_fails_on_a_silent_bmc() {
        let mut bmc = FakeBmc::new()
            .expect(Command::GetLanConfig, &[1, 5, 0, 0], &[0x00, 0x11, 0x52])
            .expect_err(Command::GetLanConfig, &[1, 3, 0, 0], timeout);
        let err = lan_channel_config(&mut bmc, 1).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_timeout");

        let mut bmc = FakeBmc::new()
            .expect(Command::GetLanConfig, &[1, 5, 0, 0], &[0x00, 0x11, 0x52])
            .expect(Command::GetLanConfig, &[1, 3, 0, 0], &[0xCB])
            .expect(Command::GetLanConfig, &[1, 4, 0, 0], &[0xCB])
            .expect(Command::GetLanConfig, &[1, 6, 0, 0], &[0xCB])
            .expect(Command::GetLanConfig, &[1, 12, 0, 0], &[0xCB])
            .expect(
                Command::GetLanConfig,
                &[1, 20, 0, 0],
                &[0x00, 0x11, 0x23, 0x81],
            );
        let lan = lan_channel_config(&mut bmc, 1).unwrap();
        bmc.done();
        assert_eq!((lan.mac, lan.vlan), (None, Some(0x123)));
        assert_eq!(
            lan.notes[0],
            "mac: get lan configuration parameters: response has 2 data bytes, expected at \
             least 7"
        );
        assert_eq!(lan.notes.len(), 5);
    }

    #[test]
    fn info_reports_device_lan_and_users() {
        let mut bmc = FakeBmc::new().expect(
            Command::GetDeviceId,
            &[],
            &[
                0x00, 0x00, 0x23, 0x09, 0x08, 0x02, 0x9F, 0x91, 0x12, 0x00, 0x02, 0x0F, 0x01, 0x02,
                0x03, 0xAB,
            ],
        );
        bmc = scan_channels(bmc, &[1]);
        bmc = lan_script(bmc, 1);
        // 3 user slots: user 1 anonymous (name refused, no access), user 2 "admin" admin,
        // user 3 unused (and its name refused, as some BMCs do).
        bmc = bmc
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x03, 0x01, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[1], &[0xCC])
            .expect(Command::GetUserName, &[2], &name16("admin"))
            .expect(
                Command::GetUserAccess,
                &[1, 2],
                &[0x00, 0x03, 0x41, 0x01, 0x34],
            )
            .expect(Command::GetUserName, &[3], &[0xCB])
            .expect(
                Command::GetUserAccess,
                &[1, 3],
                &[0x00, 0x03, 0x01, 0x01, 0x0F],
            );
        let info = info(&mut bmc).unwrap();
        bmc.done();
        assert_eq!(info.device_id, 0);
        assert_eq!(info.device_revision, 3);
        assert_eq!(info.firmware_version, "9.08");
        assert_eq!(info.aux_firmware_revision.as_deref(), Some("010203ab"));
        assert_eq!(info.ipmi_version, "2.0");
        assert_eq!(info.manufacturer_id, 0x1291);
        assert_eq!(info.product_id, 0x0F02);
        assert_eq!(info.max_users, Some(3));
        assert_eq!(info.lan_channels.len(), 1);
        assert_eq!(
            info.notes,
            vec![
                "users: the BMC refused the names of user ids 3 (0xcb) (completion codes in \
                 brackets)"
                    .to_owned()
            ]
        );
        assert_eq!(
            info.users,
            vec![BmcUser {
                id: 2,
                name: "admin".into(),
                enabled: Some(true),
                channels: vec![UserChannelAccess {
                    channel: 1,
                    privilege: Some(Privilege::Administrator),
                    ipmi_messaging: true,
                    link_auth: true,
                    callback_only: false,
                }],
            }]
        );
    }

    #[test]
    fn info_without_lan_channels_still_reports_the_device() {
        let mut bmc = FakeBmc::new().expect(
            Command::GetDeviceId,
            &[],
            &[
                0x00, 0x00, 0x23, 0x09, 0x08, 0x02, 0x9F, 0x91, 0x12, 0x00, 0x02, 0x0F,
            ],
        );
        bmc = scan_channels(bmc, &[]);
        let info = info(&mut bmc).unwrap();
        bmc.done();
        assert!(info.lan_channels.is_empty() && info.users.is_empty());
        assert_eq!(info.notes.len(), 1);
        // No auxiliary revision bytes in the answer: absent, not zeros.
        assert_eq!(info.aux_firmware_revision, None);
    }
}
