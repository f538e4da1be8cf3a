//! Wire types of the BMC methods (`bmc.info`, `bmc.set_credentials`, `bmc.reset`,
//! `chassis.power`, `chassis.boot_device`).
//!
//! The agent speaks IPMI to its local BMC and converts the answers into these types at the
//! edge; the controller stores them (the BMC table of seed 004) and uses the credentials for
//! out-of-band control. Passwords travel in [`Password`], which serializes as a plain string
//! (the controller must receive it) but never shows in `Debug` output.

use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A BMC user's password: the protocol's [`Secret`](crate::secret::Secret), plain on the wire
/// (the controller must receive it), `<redacted>` in `Debug` and `Display`.
pub type Password = crate::secret::Secret;

/// An IPMI privilege level (IPMI 2.0 table 6-4), as granted to a user on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    Callback,
    User,
    Operator,
    #[default]
    #[serde(alias = "admin")]
    Administrator,
    Oem,
}

/// How a BMC LAN channel gets its IP address (LAN configuration parameter 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpSource {
    Unspecified,
    Static,
    Dhcp,
    Bios,
    Other,
}

/// `bmc.info` result: what the local BMC says about itself. Attributes the BMC refused to
/// report are absent, with a line in `notes` saying why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcInfo {
    pub device_id: u8,
    pub device_revision: u8,
    /// `major.minor`, minor as the two BCD digits the BMC reports (e.g. `"9.08"`).
    pub firmware_version: String,
    /// Auxiliary Firmware Revision Information of Get Device ID, four bytes as lowercase hex,
    /// when the BMC sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_firmware_revision: Option<String>,
    /// IPMI specification version, e.g. `"2.0"`.
    pub ipmi_version: String,
    /// IANA enterprise number of the manufacturer (20 bits).
    pub manufacturer_id: u32,
    pub product_id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_users: Option<u8>,
    pub lan_channels: Vec<LanChannel>,
    pub users: Vec<BmcUser>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One LAN channel of the BMC and its network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanChannel {
    pub channel: u8,
    /// `aa:bb:cc:dd:ee:ff`, lowercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_source: Option<IpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// 802.1q VLAN id; absent when VLAN tagging is disabled or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A user slot of the BMC. Passwords are never read (IPMI cannot) nor reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcUser {
    pub id: u8,
    pub name: String,
    /// From Get User Access (IPMI 2.0 errata 3); absent when the BMC does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    pub channels: Vec<UserChannelAccess>,
}

/// A user's access on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserChannelAccess {
    pub channel: u8,
    /// Absent means "no access" on this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privilege: Option<Privilege>,
    pub ipmi_messaging: bool,
    pub link_auth: bool,
    pub callback_only: bool,
}

/// `bmc.set_credentials` params: create or update a BMC user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCredentialsParams {
    /// 1 to 16 printable ASCII characters.
    pub username: String,
    /// Up to 20 printable ASCII characters; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// The user slot to write (2..=max); when absent, the slot that already has this
    /// username, else the first free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u32>,
    /// The LAN channel to grant access on; when absent, every LAN channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
    #[serde(default)]
    pub privilege: Privilege,
}

/// `bmc.set_credentials` result. Contains the password: it goes to the controller only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetCredentialsResult {
    pub user_id: u8,
    pub username: String,
    pub password: Password,
    pub privilege: Privilege,
    /// LAN channels the user was granted access on.
    pub channels: Vec<u8>,
    /// Whether the Serial-over-LAN payload was enabled for the user (false when the BMC
    /// has no payload access command, e.g. an IPMI 1.5 BMC).
    pub sol_enabled: bool,
    /// Whether the BMC confirmed the password with its "test password" operation.
    pub password_verified: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Which BMC reset to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetKind {
    Cold,
    Warm,
}

/// `bmc.reset` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcResetParams {
    pub kind: ResetKind,
}

/// `bmc.reset` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmcResetResult {
    pub kind: ResetKind,
}

/// A chassis power action (Chassis Control), or `status` to only read the power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Status,
    On,
    Off,
    /// ACPI soft shutdown (the OS decides).
    Soft,
    Reset,
    Cycle,
}

/// `chassis.power` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChassisPowerParams {
    pub action: PowerAction,
}

/// `chassis.power` result: sent before the action is carried out (the machine may be gone
/// after it), so `status` is the state read just before acting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChassisPowerResult {
    pub action: PowerAction,
    pub status: ChassisStatus,
}

/// What the chassis restores to after AC power returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerRestorePolicy {
    AlwaysOff,
    Previous,
    AlwaysOn,
    Unknown,
}

/// Get Chassis Status, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Boot device override (System Boot Options parameter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    /// No override: the firmware's own boot order.
    None,
    Pxe,
    Disk,
    /// Firmware setup.
    Bios,
    Cdrom,
}

/// `chassis.boot_device` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDeviceParams {
    pub device: BootDevice,
    /// Apply to every boot, not only the next one.
    #[serde(default)]
    pub persistent: bool,
    /// Boot in UEFI mode rather than legacy BIOS mode.
    #[serde(default)]
    pub efi: bool,
}

/// `chassis.boot_device` result: the boot flags as read back from the BMC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootDeviceResult {
    pub device: BootDevice,
    pub persistent: bool,
    pub efi: bool,
}

/// A value given on a command line that is not one of the accepted words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected one of {expected}")]
pub struct ParseWordError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! word_enum {
    ($ty:ty, $what:literal, $expected:literal, { $($word:literal => $variant:expr),+ $(,)? }) => {
        impl FromStr for $ty {
            type Err = ParseWordError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($variant),)+
                    _ => Err(ParseWordError { what: $what, value: s.to_owned(), expected: $expected }),
                }
            }
        }
    };
}

word_enum!(Privilege, "privilege level", "callback, user, operator, administrator, oem", {
    "callback" => Privilege::Callback,
    "user" => Privilege::User,
    "operator" => Privilege::Operator,
    "administrator" => Privilege::Administrator,
    "admin" => Privilege::Administrator,
    "oem" => Privilege::Oem,
});
word_enum!(ResetKind, "reset kind", "cold, warm", {
    "cold" => ResetKind::Cold,
    "warm" => ResetKind::Warm,
});
word_enum!(PowerAction, "power action", "status, on, off, soft, reset, cycle", {
    "status" => PowerAction::Status,
    "on" => PowerAction::On,
    "off" => PowerAction::Off,
    "soft" => PowerAction::Soft,
    "reset" => PowerAction::Reset,
    "cycle" => PowerAction::Cycle,
});
word_enum!(BootDevice, "boot device", "pxe, disk, bios, cdrom, none", {
    "none" => BootDevice::None,
    "pxe" => BootDevice::Pxe,
    "disk" => BootDevice::Disk,
    "bios" => BootDevice::Bios,
    "cdrom" => BootDevice::Cdrom,
});

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn password_is_redacted_in_debug_but_plain_on_the_wire() {
        let result = SetCredentialsResult {
            user_id: 3,
            username: "molar".into(),
            password: Password::new("s3cret-Passw0rd"),
            privilege: Privilege::Administrator,
            channels: vec![1],
            sol_enabled: true,
            password_verified: true,
            notes: vec![],
        };
        let debug = format!("{result:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let wire = serde_json::to_value(&result).unwrap();
        assert_eq!(wire["password"], json!("s3cret-Passw0rd"));
        let back: SetCredentialsResult = serde_json::from_value(wire).unwrap();
        assert_eq!(back, result);
    }

    #[test]
    fn set_credentials_params_defaults_and_rejections() {
        let p: SetCredentialsParams = serde_json::from_value(json!({"username": "molar"})).unwrap();
        assert_eq!(p.privilege, Privilege::Administrator);
        assert!(p.password.is_none() && p.user_id.is_none() && p.channel.is_none());

        let p: SetCredentialsParams =
            serde_json::from_value(json!({"username": "u", "privilege": "admin", "user_id": 4}))
                .unwrap();
        assert_eq!(p.privilege, Privilege::Administrator);
        assert_eq!(p.user_id, Some(4));

        let err = serde_json::from_value::<SetCredentialsParams>(
            json!({"username": "u", "privilege": "root"}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `root`"), "{err}");

        let err =
            serde_json::from_value::<SetCredentialsParams>(json!({"username": "u", "sudo": true}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `sudo`"), "{err}");
    }

    #[test]
    fn enums_use_snake_case_words() {
        assert_eq!(
            serde_json::to_value(PowerAction::Cycle).unwrap(),
            json!("cycle")
        );
        assert_eq!(
            serde_json::to_value(BootDevice::Cdrom).unwrap(),
            json!("cdrom")
        );
        assert_eq!(serde_json::to_value(IpSource::Dhcp).unwrap(), json!("dhcp"));
        let p: BootDeviceParams = serde_json::from_value(json!({"device": "pxe"})).unwrap();
        assert_eq!(
            p,
            BootDeviceParams {
                device: BootDevice::Pxe,
                persistent: false,
                efi: false
            }
        );
        assert!(serde_json::from_value::<BmcResetParams>(json!({"kind": "hot"})).is_err());
        assert!(
            serde_json::from_value::<ChassisPowerParams>(json!({"action": "explode"})).is_err()
        );
    }

    #[test]
    fn words_parse_for_the_command_line() {
        assert_eq!("oem".parse::<Privilege>(), Ok(Privilege::Oem));
        assert_eq!("admin".parse::<Privilege>(), Ok(Privilege::Administrator));
        let err = "root".parse::<Privilege>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid privilege level \"root\": expected one of callback, user, operator, administrator, oem"
        );
        assert_eq!("warm".parse::<ResetKind>(), Ok(ResetKind::Warm));
        assert_eq!("soft".parse::<PowerAction>(), Ok(PowerAction::Soft));
        assert_eq!("bios".parse::<BootDevice>(), Ok(BootDevice::Bios));
        assert!("floppy".parse::<BootDevice>().is_err());
    }

    #[test]
    fn info_omits_absent_fields() {
        let ch = LanChannel {
            channel: 1,
            mac: Some("52:54:00:be:ef:01".into()),
            ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
            ip_source: Some(IpSource::Static),
            netmask: None,
            gateway: None,
            vlan: None,
            notes: vec![],
        };
        let v = serde_json::to_value(&ch).unwrap();
        assert_eq!(
            v,
            json!({"channel": 1, "mac": "52:54:00:be:ef:01", "ip": "192.0.2.10", "ip_source": "static"})
        );
    }
}
