//! The IPMI commands the agent sends to its local BMC, and the BMC operations built on them:
//! discovery (`bmc.info`), in-band credential setup (`bmc.set_credentials`), BMC reset,
//! chassis power and boot device.
//!
//! Everything is written against [`IpmiTransport`], a single "send request, get response
//! bytes" call, so that each command's encoding and each operation's exact sequence of
//! commands is unit-tested against a scripted BMC; [`IpmiDevice`] (the `/dev/ipmi0` driver
//! in `hw::ipmi`) is the real implementation. Byte layouts follow the IPMI 2.0
//! specification (rev. 1.1); the section of each command is named where it is encoded.
//!
//! Passwords are handled as [`Password`] and never appear in errors or `Debug` output.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use molar_protocol::bmc::{
    BmcInfo, BmcResetResult, BmcUser, BootDevice, BootDeviceParams, BootDeviceResult,
    ChassisStatus, IpSource, LanChannel, Password, PowerAction, PowerRestorePolicy, Privilege,
    ResetKind, SetCredentialsParams, SetCredentialsResult, UserChannelAccess,
};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::hw::ipmi::{IpmiDevice, IpmiError};

/// Sends IPMI requests to a BMC. `request` returns the response bytes with the completion
/// code first, exactly as the specification's response tables number them.
pub trait IpmiTransport {
    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError>;

    /// A request that must not be repeated if its answer is lost (its effect would double):
    /// power control and BMC resets. Transports without retries need not override it.
    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        self.request(netfn, cmd, data)
    }
}

impl IpmiTransport for IpmiDevice {
    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        IpmiDevice::request(self, netfn, cmd, data)
    }
    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
        IpmiDevice::request_once(self, netfn, cmd, data)
    }
}

/// Network functions (IPMI 2.0 table 5-1).
pub mod netfn {
    pub const CHASSIS: u8 = 0x00;
    pub const APP: u8 = 0x06;
    pub const TRANSPORT: u8 = 0x0C;
}

/// The IPMI commands this module sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    GetDeviceId,
    ColdReset,
    WarmReset,
    GetChannelInfo,
    SetUserAccess,
    GetUserAccess,
    SetUserName,
    GetUserName,
    SetUserPassword,
    SetUserPayloadAccess,
    GetLanConfig,
    GetChassisStatus,
    ChassisControl,
    SetBootOptions,
    GetBootOptions,
}

impl Command {
    pub fn netfn(self) -> u8 {
        match self {
            Command::GetChassisStatus
            | Command::ChassisControl
            | Command::SetBootOptions
            | Command::GetBootOptions => netfn::CHASSIS,
            Command::GetLanConfig => netfn::TRANSPORT,
            _ => netfn::APP,
        }
    }

    pub fn cmd(self) -> u8 {
        match self {
            Command::GetDeviceId => 0x01,
            Command::ColdReset => 0x02,
            Command::WarmReset => 0x03,
            Command::GetChannelInfo => 0x42,
            Command::SetUserAccess => 0x43,
            Command::GetUserAccess => 0x44,
            Command::SetUserName => 0x45,
            Command::GetUserName => 0x46,
            Command::SetUserPassword => 0x47,
            Command::SetUserPayloadAccess => 0x4C,
            Command::GetLanConfig => 0x02,
            Command::GetChassisStatus => 0x01,
            Command::ChassisControl => 0x02,
            Command::SetBootOptions => 0x08,
            Command::GetBootOptions => 0x09,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::GetDeviceId => "get device id",
            Command::ColdReset => "cold reset",
            Command::WarmReset => "warm reset",
            Command::GetChannelInfo => "get channel info",
            Command::SetUserAccess => "set user access",
            Command::GetUserAccess => "get user access",
            Command::SetUserName => "set user name",
            Command::GetUserName => "get user name",
            Command::SetUserPassword => "set user password",
            Command::SetUserPayloadAccess => "set user payload access",
            Command::GetLanConfig => "get lan configuration parameters",
            Command::GetChassisStatus => "get chassis status",
            Command::ChassisControl => "chassis control",
            Command::SetBootOptions => "set system boot options",
            Command::GetBootOptions => "get system boot options",
        }
    }

    /// Whether the command has its own meaning for completion codes 0x80..=0x82.
    fn is_parameter_command(self) -> bool {
        matches!(
            self,
            Command::GetLanConfig | Command::SetBootOptions | Command::GetBootOptions
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a completion code means for a command (IPMI 2.0 table 5-2 and the command-specific
/// codes of sections 22.30, 23.2 and 28.12/28.13).
pub fn completion_code_meaning(command: Command, code: u8) -> &'static str {
    match (command, code) {
        (Command::SetUserPassword, 0x80) => "password test failed: the password does not match",
        (Command::SetUserPassword, 0x81) => "password test failed: wrong password size",
        (c, 0x80) if c.is_parameter_command() => "parameter not supported",
        (c, 0x81) if c.is_parameter_command() => {
            "another client holds the parameters in 'set in progress'"
        }
        (c, 0x82) if c.is_parameter_command() => "parameter is read-only",
        (_, 0xC0) => "node busy",
        (_, 0xC1) => "invalid command (not supported by this BMC)",
        (_, 0xC2) => "command invalid for the given LUN",
        (_, 0xC3) => "timeout while processing the command",
        (_, 0xC4) => "out of space",
        (_, 0xC5) => "reservation canceled or invalid",
        (_, 0xC6) => "request data truncated",
        (_, 0xC7) => "request data length invalid",
        (_, 0xC8) => "request data field length limit exceeded",
        (_, 0xC9) => "parameter out of range",
        (_, 0xCA) => "cannot return the number of requested data bytes",
        (_, 0xCB) => "requested sensor, data or record not present",
        (_, 0xCC) => "invalid data field in request",
        (_, 0xCD) => "command illegal for the specified sensor or record type",
        (_, 0xCE) => "command response could not be provided",
        (_, 0xCF) => "cannot execute a duplicated request",
        (_, 0xD0) => "SDR repository in update mode",
        (_, 0xD1) => "device in firmware update mode",
        (_, 0xD2) => "BMC initialization in progress",
        (_, 0xD3) => "destination unavailable",
        (_, 0xD4) => "insufficient privilege level",
        (_, 0xD5) => "command not supported in the present state",
        (_, 0xD6) => "command sub-function disabled or unavailable",
        (_, 0xFF) => "unspecified error",
        (_, 0x01..=0x7E) => "device-specific (OEM) error",
        _ => "command-specific error",
    }
}

fn completion_code_word(command: Command, code: u8) -> &'static str {
    match (command, code) {
        (Command::SetUserPassword, 0x80) => "bmc_password_mismatch",
        (Command::SetUserPassword, 0x81) => "bmc_password_size",
        (c, 0x80) if c.is_parameter_command() => "bmc_parameter_not_supported",
        (c, 0x81) if c.is_parameter_command() => "bmc_set_in_progress",
        (c, 0x82) if c.is_parameter_command() => "bmc_read_only_parameter",
        (_, 0xC0) => "bmc_busy",
        (_, 0xC1) => "bmc_invalid_command",
        (_, 0xC3) => "bmc_timeout",
        (_, 0xC6..=0xC8) => "bmc_invalid_length",
        (_, 0xC9) => "bmc_parameter_out_of_range",
        (_, 0xCB) => "bmc_not_present",
        (_, 0xCC) => "bmc_invalid_data_field",
        (_, 0xD2) => "bmc_initializing",
        (_, 0xD4) => "bmc_insufficient_privilege",
        (_, 0xD5 | 0xD6) => "bmc_not_supported_now",
        _ => "bmc_error",
    }
}

/// Errors of BMC operations.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("{command}: {source}")]
    Transport {
        command: Command,
        #[source]
        source: IpmiError,
    },
    #[error(
        "{command}: the BMC answered {} (completion code {code:#04x})",
        completion_code_meaning(*command, *code)
    )]
    Completion { command: Command, code: u8 },
    #[error("{command}: response has {len} data bytes, expected at least {expected}")]
    ShortResponse {
        command: Command,
        len: usize,
        expected: usize,
    },
    #[error("user id {id} is out of range: this BMC has user ids 1 to {max}")]
    UserIdOutOfRange { id: u32, max: u8 },
    #[error("user id {id} is out of range: IPMI user ids are 1 to 63")]
    UserIdInvalid { id: u32 },
    #[error("user id 1 is the BMC's anonymous (null) user and cannot be named: use 2 or higher")]
    AnonymousUser,
    #[error("invalid username {name:?}: {reason}")]
    InvalidUsername { name: String, reason: &'static str },
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: String },
    #[error("the BMC accepts only 16-byte passwords and the given password has {len} bytes")]
    PasswordTooLongForBmc { len: usize },
    #[error("invalid channel {channel}: {reason}")]
    InvalidChannel { channel: u32, reason: String },
    #[error("the BMC reports no LAN channel (channels 1 to 11 probed)")]
    NoLanChannel,
    #[error("no free user slot on the BMC: user ids {first} to {max} all have names")]
    NoFreeUserId { first: u8, max: u8 },
    #[error("privilege {privilege:?} is not accepted on channel {channel}: {reason}")]
    InvalidPrivilege {
        privilege: Privilege,
        channel: u8,
        reason: String,
    },
    #[error("verifying user {user_id}: {what}")]
    VerifyFailed { user_id: u8, what: String },
    #[error("boot device was not applied: asked for {asked}, the BMC reports {got}")]
    BootFlagsMismatch { asked: String, got: String },
    #[error("the BMC did not answer again within {waited:?} after the {kind} reset: {last}")]
    NotBackAfterReset {
        kind: &'static str,
        waited: Duration,
        last: Box<BmcError>,
    },
}

impl BmcError {
    /// Stable protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            BmcError::Transport { source, .. } => source.code(),
            BmcError::Completion { command, code } => completion_code_word(*command, *code),
            BmcError::ShortResponse { .. } => "bmc_bad_response",
            BmcError::UserIdOutOfRange { .. }
            | BmcError::UserIdInvalid { .. }
            | BmcError::AnonymousUser => "invalid_user_id",
            BmcError::InvalidUsername { .. } => "invalid_username",
            BmcError::InvalidPassword { .. } | BmcError::PasswordTooLongForBmc { .. } => {
                "invalid_password"
            }
            BmcError::InvalidChannel { .. } => "invalid_channel",
            BmcError::NoLanChannel => "bmc_no_lan_channel",
            BmcError::NoFreeUserId { .. } => "bmc_no_free_user",
            BmcError::InvalidPrivilege { .. } => "invalid_privilege",
            BmcError::VerifyFailed { .. } | BmcError::BootFlagsMismatch { .. } => {
                "bmc_verify_failed"
            }
            BmcError::NotBackAfterReset { .. } => "bmc_not_back_after_reset",
        }
    }

    fn completion(&self) -> Option<u8> {
        match self {
            BmcError::Completion { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Sends `command` and returns the response data after a successful completion code.
fn call<T: IpmiTransport + ?Sized>(
    t: &mut T,
    command: Command,
    data: &[u8],
) -> Result<Vec<u8>, BmcError> {
    let resp = t
        .request(command.netfn(), command.cmd(), data)
        .map_err(|source| BmcError::Transport { command, source })?;
    check(command, resp)
}

fn call_once<T: IpmiTransport + ?Sized>(
    t: &mut T,
    command: Command,
    data: &[u8],
) -> Result<Vec<u8>, BmcError> {
    let resp = t
        .request_once(command.netfn(), command.cmd(), data)
        .map_err(|source| BmcError::Transport { command, source })?;
    check(command, resp)
}

fn check(command: Command, mut resp: Vec<u8>) -> Result<Vec<u8>, BmcError> {
    match resp.first() {
        None => Err(BmcError::ShortResponse {
            command,
            len: 0,
            expected: 0,
        }),
        Some(0) => {
            resp.remove(0);
            Ok(resp)
        }
        Some(&code) => Err(BmcError::Completion { command, code }),
    }
}

fn need(command: Command, data: &[u8], expected: usize) -> Result<(), BmcError> {
    if data.len() < expected {
        return Err(BmcError::ShortResponse {
            command,
            len: data.len(),
            expected,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Get Device ID (20.1)

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

/// Decodes Get Device ID response data (after the completion code).
pub fn decode_device_id(d: &[u8]) -> Result<DeviceId, BmcError> {
    need(Command::GetDeviceId, d, 11)?;
    Ok(DeviceId {
        device_id: d[0],
        device_revision: d[1] & 0x0F,
        provides_sdrs: d[1] & 0x80 != 0,
        firmware_major: d[2] & 0x7F,
        // Bit 7 set means "device firmware, SDR update or self-initialization in progress".
        device_available: d[2] & 0x80 == 0,
        firmware_minor: d[3],
        ipmi_version: d[4],
        additional_support: d[5],
        manufacturer_id: u32::from(d[6]) | u32::from(d[7]) << 8 | u32::from(d[8] & 0x0F) << 16,
        product_id: u16::from_le_bytes([d[9], d[10]]),
        aux_firmware: d.get(11..15).map(|a| [a[0], a[1], a[2], a[3]]),
    })
}

pub fn get_device_id<T: IpmiTransport + ?Sized>(t: &mut T) -> Result<DeviceId, BmcError> {
    decode_device_id(&call(t, Command::GetDeviceId, &[])?)
}

// ---------------------------------------------------------------------------------------
// Get Channel Info (22.24)

/// Channel medium type 802.3 LAN (table 6-3).
pub const MEDIUM_LAN_802_3: u8 = 0x04;
/// Channel medium type "other LAN".
pub const MEDIUM_OTHER_LAN: u8 = 0x06;
/// Channel numbers that may be LAN channels: 0 is the primary IPMB, 0x0C..=0x0F are reserved
/// or special (0x0E "this channel", 0x0F the system interface).
pub const LAN_CHANNEL_RANGE: std::ops::RangeInclusive<u8> = 1..=11;

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

pub fn decode_channel_info(d: &[u8]) -> Result<ChannelInfo, BmcError> {
    need(Command::GetChannelInfo, d, 4)?;
    Ok(ChannelInfo {
        channel: d[0] & 0x0F,
        medium: d[1] & 0x7F,
        protocol: d[2] & 0x1F,
        session_support: d[3] >> 6,
    })
}

pub fn get_channel_info<T: IpmiTransport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<ChannelInfo, BmcError> {
    decode_channel_info(&call(
        t,
        Command::GetChannelInfo,
        &encode_get_channel_info(channel),
    )?)
}

/// The BMC's LAN channels, probing channels 1 to 11. Channels the BMC says do not exist
/// (any completion code) are skipped; a BMC that does not answer is an error.
pub fn lan_channels<T: IpmiTransport + ?Sized>(t: &mut T) -> Result<Vec<u8>, BmcError> {
    let mut found = Vec::new();
    for channel in LAN_CHANNEL_RANGE {
        match get_channel_info(t, channel) {
            Ok(info) if info.is_lan() => found.push(channel),
            Ok(_) | Err(BmcError::Completion { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// Users: Set/Get User Access (22.26, 22.27), Set/Get User Name (22.28, 22.29),
// Set User Password (22.30), Set User Payload Access (24.6)

/// Privilege level numbers (table 6-4); 0x0F is "no access".
pub fn privilege_code(p: Privilege) -> u8 {
    match p {
        Privilege::Callback => 1,
        Privilege::User => 2,
        Privilege::Operator => 3,
        Privilege::Administrator => 4,
        Privilege::Oem => 5,
    }
}

pub fn privilege_from_code(code: u8) -> Option<Privilege> {
    match code & 0x0F {
        1 => Some(Privilege::Callback),
        2 => Some(Privilege::User),
        3 => Some(Privilege::Operator),
        4 => Some(Privilege::Administrator),
        5 => Some(Privilege::Oem),
        _ => None,
    }
}

/// Get User Access response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccess {
    pub max_users: u8,
    pub enabled_users: u8,
    /// Bits 7:6 of byte 3 (errata 3): `Some(true)` enabled, `Some(false)` disabled,
    /// `None` unspecified.
    pub enabled: Option<bool>,
    pub fixed_names: u8,
    pub callback_only: bool,
    pub link_auth: bool,
    pub ipmi_messaging: bool,
    pub privilege: Option<Privilege>,
}

pub fn encode_get_user_access(channel: u8, user_id: u8) -> [u8; 2] {
    [channel & 0x0F, user_id & 0x3F]
}

pub fn decode_user_access(d: &[u8]) -> Result<UserAccess, BmcError> {
    need(Command::GetUserAccess, d, 4)?;
    Ok(UserAccess {
        max_users: d[0] & 0x3F,
        enabled_users: d[1] & 0x3F,
        enabled: match d[1] >> 6 {
            0b01 => Some(true),
            0b10 => Some(false),
            _ => None,
        },
        fixed_names: d[2] & 0x3F,
        callback_only: d[3] & 0x40 != 0,
        link_auth: d[3] & 0x20 != 0,
        ipmi_messaging: d[3] & 0x10 != 0,
        privilege: privilege_from_code(d[3]),
    })
}

pub fn get_user_access<T: IpmiTransport + ?Sized>(
    t: &mut T,
    channel: u8,
    user_id: u8,
) -> Result<UserAccess, BmcError> {
    decode_user_access(&call(
        t,
        Command::GetUserAccess,
        &encode_get_user_access(channel, user_id),
    )?)
}

/// Set User Access granting `privilege` on `channel` with IPMI messaging and link
/// authentication enabled, not restricted to callback; session limit left unchanged.
pub fn encode_set_user_access(channel: u8, user_id: u8, privilege: Privilege) -> [u8; 3] {
    // Byte 1: bit 7 "change the bits below", bit 6 callback only (0), bit 5 link auth,
    // bit 4 IPMI messaging, bits 3:0 channel.
    [
        0x80 | 0x20 | 0x10 | (channel & 0x0F),
        user_id & 0x3F,
        privilege_code(privilege),
    ]
}

pub fn encode_set_user_name(user_id: u8, name: &str) -> [u8; 17] {
    let mut d = [0u8; 17];
    d[0] = user_id & 0x3F;
    let bytes = name.as_bytes();
    let n = bytes.len().min(16);
    d[1..1 + n].copy_from_slice(&bytes[..n]);
    d
}

pub fn encode_get_user_name(user_id: u8) -> [u8; 1] {
    [user_id & 0x3F]
}

/// The name up to the first NUL (names are NUL-padded to 16 bytes).
pub fn decode_user_name(d: &[u8]) -> Result<String, BmcError> {
    need(Command::GetUserName, d, 16)?;
    let raw = &d[..16];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
}

pub fn get_user_name<T: IpmiTransport + ?Sized>(
    t: &mut T,
    user_id: u8,
) -> Result<String, BmcError> {
    decode_user_name(&call(
        t,
        Command::GetUserName,
        &encode_get_user_name(user_id),
    )?)
}

/// Set User Password operation (byte 2, bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordOp {
    DisableUser = 0,
    EnableUser = 1,
    SetPassword = 2,
    TestPassword = 3,
}

/// Password field size of Set User Password (byte 1, bit 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordForm {
    Bytes16,
    Bytes20,
}

impl PasswordForm {
    pub fn size(self) -> usize {
        match self {
            PasswordForm::Bytes16 => 16,
            PasswordForm::Bytes20 => 20,
        }
    }
}

/// Set User Password request. The password is NUL-padded to the form's size and only sent
/// for the set and test operations.
pub fn encode_set_user_password(
    user_id: u8,
    op: PasswordOp,
    form: PasswordForm,
    password: Option<&Password>,
) -> Vec<u8> {
    let size_bit = if form == PasswordForm::Bytes20 {
        0x80
    } else {
        0x00
    };
    let mut d = vec![size_bit | (user_id & 0x3F), op as u8];
    if matches!(op, PasswordOp::SetPassword | PasswordOp::TestPassword) {
        let mut field = vec![0u8; form.size()];
        if let Some(p) = password {
            let bytes = p.expose().as_bytes();
            let n = bytes.len().min(field.len());
            field[..n].copy_from_slice(&bytes[..n]);
        }
        d.extend_from_slice(&field);
    }
    d
}

/// Set User Payload Access enabling the SOL payload (standard payload type 1) for the user.
pub fn encode_enable_sol_payload(channel: u8, user_id: u8) -> [u8; 6] {
    // Byte 2 bits 7:6 = 00 "enable the payloads set to 1 below"; byte 3 bit 1 = payload 1.
    [channel & 0x0F, user_id & 0x3F, 0x02, 0x00, 0x00, 0x00]
}

/// Username rules: 1 to 16 bytes of printable ASCII without spaces (the BMC stores 16
/// NUL-padded bytes; anything else would not survive ipmitool or the BMC's web UI).
pub fn validate_username(name: &str) -> Result<(), BmcError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 16 {
        Some("IPMI allows at most 16 bytes")
    } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
        Some("only printable ASCII characters without spaces are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BmcError::InvalidUsername {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Password rules: 1 to 20 bytes of printable ASCII. The message never contains the value.
pub fn validate_password(password: &Password) -> Result<(), BmcError> {
    let p = password.expose();
    let reason = if p.is_empty() {
        Some("it is empty".to_owned())
    } else if p.len() > 20 {
        Some(format!("IPMI allows at most 20 bytes, it has {}", p.len()))
    } else if !p.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Some("only printable ASCII characters are allowed".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BmcError::InvalidPassword { reason }),
        None => Ok(()),
    }
}

/// Length of generated passwords. 16 characters from a 66-symbol alphabet carry about 96 bits;
/// 16 also fits both password forms with the same meaning (RMCP+ pads the 16-byte password to
/// 20 with NULs), while a 20-character one would be silently cut by BMCs that store only 16
/// bytes but accept the 20-byte form (OpenIPMI's ipmi_sim does this).
pub const GENERATED_PASSWORD_LEN: usize = 16;

const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGITS: &[u8] = b"23456789";
/// No quotes, spaces, backslash or `$`/`!`: passwords end up in shell command lines.
const SYMBOLS: &[u8] = b"-_.:+=@%^";

/// A random password with at least one upper-case letter, lower-case letter, digit and symbol
/// (BMC password policies often require all four).
pub fn generate_password<R: Rng + ?Sized>(rng: &mut R) -> Password {
    let classes = [UPPER, LOWER, DIGITS, SYMBOLS];
    let all: Vec<u8> = classes.concat();
    let mut chars: Vec<u8> = classes
        .iter()
        .filter_map(|class| class.choose(rng).copied())
        .collect();
    while chars.len() < GENERATED_PASSWORD_LEN {
        if let Some(&c) = all.choose(rng) {
            chars.push(c);
        }
    }
    chars.shuffle(rng);
    Password::new(chars.into_iter().map(char::from).collect::<String>())
}

// ---------------------------------------------------------------------------------------
// Get LAN Configuration Parameters (23.2, parameters in table 23-4)

pub mod lan_param {
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

/// Returns the parameter data, without the leading parameter revision byte.
pub fn get_lan_config<T: IpmiTransport + ?Sized>(
    t: &mut T,
    channel: u8,
    parameter: u8,
    len: usize,
) -> Result<Vec<u8>, BmcError> {
    let d = call(
        t,
        Command::GetLanConfig,
        &encode_get_lan_config(channel, parameter),
    )?;
    need(Command::GetLanConfig, &d, 1 + len)?;
    Ok(d[1..1 + len].to_vec())
}

pub fn decode_mac(d: &[u8]) -> String {
    d.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn decode_ipv4(d: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(d[0], d[1], d[2], d[3])
}

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
pub fn decode_vlan(d: &[u8]) -> Option<u16> {
    let id = u16::from(d[0]) | u16::from(d[1] & 0x0F) << 8;
    (d[1] & 0x80 != 0).then_some(id)
}

/// Reads the LAN configuration of one channel; every parameter the BMC refuses is left
/// absent with a note, a BMC that does not answer is an error.
pub fn lan_channel_config<T: IpmiTransport + ?Sized>(
    t: &mut T,
    channel: u8,
) -> Result<LanChannel, BmcError> {
    let mut lan = LanChannel {
        channel,
        mac: None,
        ip: None,
        ip_source: None,
        netmask: None,
        gateway: None,
        vlan: None,
        notes: Vec::new(),
    };
    let read = |t: &mut T, param: u8, len: usize, what: &str, notes: &mut Vec<String>| {
        match get_lan_config(t, channel, param, len) {
            Ok(d) => Ok(Some(d)),
            Err(e @ (BmcError::Completion { .. } | BmcError::ShortResponse { .. })) => {
                notes.push(format!("{what}: {e}"));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let mut notes = Vec::new();
    lan.mac = read(t, lan_param::MAC_ADDRESS, 6, "mac", &mut notes)?.map(|d| decode_mac(&d));
    lan.ip = read(t, lan_param::IP_ADDRESS, 4, "ip", &mut notes)?.map(|d| decode_ipv4(&d));
    lan.ip_source =
        read(t, lan_param::IP_SOURCE, 1, "ip source", &mut notes)?.map(|d| decode_ip_source(d[0]));
    lan.netmask =
        read(t, lan_param::SUBNET_MASK, 4, "netmask", &mut notes)?.map(|d| decode_ipv4(&d));
    lan.gateway =
        read(t, lan_param::DEFAULT_GATEWAY, 4, "gateway", &mut notes)?.map(|d| decode_ipv4(&d));
    lan.vlan = read(t, lan_param::VLAN_ID, 2, "vlan", &mut notes)?.and_then(|d| decode_vlan(&d));
    lan.notes = notes;
    Ok(lan)
}

// ---------------------------------------------------------------------------------------
// bmc.info

/// `bmc.info`: device identity, LAN channels with their network configuration, and the user
/// list (names, enabled, privilege per LAN channel). Passwords cannot be read and are not.
pub fn info<T: IpmiTransport + ?Sized>(t: &mut T) -> Result<BmcInfo, BmcError> {
    let dev = get_device_id(t)?;
    let channels = lan_channels(t)?;
    let mut notes = Vec::new();
    let mut lan = Vec::with_capacity(channels.len());
    for &ch in &channels {
        lan.push(lan_channel_config(t, ch)?);
    }
    let (max_users, users) = match channels.first() {
        Some(_) => {
            let (max, users) = list_users(t, &channels, &mut notes)?;
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
        ipmi_version: dev.ipmi_version_string(),
        manufacturer_id: dev.manufacturer_id,
        product_id: dev.product_id,
        max_users,
        lan_channels: lan,
        users,
        notes,
    })
}

/// Users with a name, or enabled, or with access on any of `channels`.
fn list_users<T: IpmiTransport + ?Sized>(
    t: &mut T,
    channels: &[u8],
    notes: &mut Vec<String>,
) -> Result<(u8, Vec<BmcUser>), BmcError> {
    let first = get_user_access(t, channels[0], 1)?;
    let max = first.max_users;
    let mut users = Vec::new();
    // Some BMCs refuse the names of unused slots: one note for all of them, not one each.
    let mut unreadable_names: Vec<(u8, u8)> = Vec::new();
    for id in 1..=max {
        let name = match get_user_name(t, id) {
            Ok(name) => name,
            // Many BMCs (and ipmi_sim) refuse the name of user 1, the anonymous user.
            Err(BmcError::Completion { .. }) if id == 1 => String::new(),
            Err(BmcError::Completion { code, .. }) => {
                unreadable_names.push((id, code));
                String::new()
            }
            Err(e) => return Err(e),
        };
        let mut enabled = None;
        let mut access = Vec::with_capacity(channels.len());
        for &ch in channels {
            let a = match (id, ch == channels[0]) {
                (1, true) => first.clone(),
                _ => match get_user_access(t, ch, id) {
                    Ok(a) => a,
                    Err(e @ BmcError::Completion { .. }) => {
                        notes.push(format!("user {id} on channel {ch}: {e}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            enabled = enabled.or(a.enabled);
            access.push(UserChannelAccess {
                channel: ch,
                privilege: a.privilege,
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

// ---------------------------------------------------------------------------------------
// bmc.set_credentials

/// `bmc.set_credentials`: creates or updates a BMC user and verifies it.
///
/// Sequence: find the LAN channel(s) (Get Channel Info), read the number of user slots (Get
/// User Access of user 1), pick the slot (the given id; else the one already named
/// `username`; else the first without a name, never user 1), set the name, set the password
/// (20-byte form, the 16-byte form if the BMC refuses it), enable the user, grant the
/// privilege with IPMI messaging and link authentication on each channel, enable the SOL
/// payload, then read the name and access back and have the BMC test the password.
pub fn set_credentials<T: IpmiTransport + ?Sized>(
    t: &mut T,
    params: &SetCredentialsParams,
) -> Result<SetCredentialsResult, BmcError> {
    set_credentials_with_rng(t, params, &mut rand::rng())
}

/// [`set_credentials`] with the random source for generated passwords given.
pub fn set_credentials_with_rng<T: IpmiTransport + ?Sized, R: Rng + ?Sized>(
    t: &mut T,
    params: &SetCredentialsParams,
    rng: &mut R,
) -> Result<SetCredentialsResult, BmcError> {
    validate_username(&params.username)?;
    if let Some(p) = &params.password {
        validate_password(p)?;
    }
    if let Some(id) = params.user_id {
        if id == 1 {
            return Err(BmcError::AnonymousUser);
        }
        if id == 0 || id > 63 {
            return Err(BmcError::UserIdInvalid { id });
        }
    }

    let channels = match params.channel {
        Some(ch) => vec![check_lan_channel(t, ch)?],
        None => lan_channels(t)?,
    };
    let Some(&first_channel) = channels.first() else {
        return Err(BmcError::NoLanChannel);
    };
    let slots = get_user_access(t, first_channel, 1)?;
    let max = slots.max_users;

    let (user_id, current_name) = match params.user_id {
        Some(id) => {
            if id > u32::from(max) {
                return Err(BmcError::UserIdOutOfRange { id, max });
            }
            let id = id as u8; // checked above: 2..=max, max < 64
            let current = match get_user_name(t, id) {
                Ok(name) => Some(name),
                Err(BmcError::Completion { .. }) => None,
                Err(e) => return Err(e),
            };
            (id, current)
        }
        None => pick_user_slot(t, &params.username, slots.fixed_names, max)?,
    };

    // A slot that was free is given back if a later step fails, so that a refused request
    // does not leave a half-made user behind. An existing user cannot be restored (IPMI
    // cannot read passwords), so it is left as far as the sequence got.
    let created = current_name.as_deref() == Some("");
    match write_user(t, params, user_id, current_name.as_deref(), channels, rng) {
        Ok(result) => Ok(result),
        Err(e) => {
            if created && !matches!(e, BmcError::Transport { .. }) {
                undo_new_user(t, user_id);
            }
            Err(e)
        }
    }
}

/// Best effort: disable the user and clear its name; failures are ignored (the original
/// error is what the caller needs to see).
fn undo_new_user<T: IpmiTransport + ?Sized>(t: &mut T, user_id: u8) {
    let disable = encode_set_user_password(
        user_id,
        PasswordOp::DisableUser,
        PasswordForm::Bytes16,
        None,
    );
    let _ = call(t, Command::SetUserPassword, &disable);
    let _ = call(t, Command::SetUserName, &encode_set_user_name(user_id, ""));
}

/// The writing and verifying part of [`set_credentials`], once the slot is chosen.
fn write_user<T: IpmiTransport + ?Sized, R: Rng + ?Sized>(
    t: &mut T,
    params: &SetCredentialsParams,
    user_id: u8,
    current_name: Option<&str>,
    channels: Vec<u8>,
    rng: &mut R,
) -> Result<SetCredentialsResult, BmcError> {
    let mut notes = Vec::new();
    if current_name != Some(params.username.as_str()) {
        call(
            t,
            Command::SetUserName,
            &encode_set_user_name(user_id, &params.username),
        )?;
    }

    let password = match &params.password {
        Some(p) => p.clone(),
        None => generate_password(rng),
    };
    let form = set_password(t, user_id, &password)?;

    call(
        t,
        Command::SetUserPassword,
        &encode_set_user_password(user_id, PasswordOp::EnableUser, form, None),
    )?;

    for &ch in &channels {
        match call(
            t,
            Command::SetUserAccess,
            &encode_set_user_access(ch, user_id, params.privilege),
        ) {
            Ok(_) => {}
            Err(BmcError::Completion { code: 0xCC, .. }) => {
                return Err(BmcError::InvalidPrivilege {
                    privilege: params.privilege,
                    channel: ch,
                    reason: "the BMC refused it (invalid data field)".to_owned(),
                });
            }
            Err(e) => return Err(e),
        }
    }

    let mut sol_enabled = true;
    for &ch in &channels {
        match call(
            t,
            Command::SetUserPayloadAccess,
            &encode_enable_sol_payload(ch, user_id),
        ) {
            Ok(_) => {}
            Err(
                e @ BmcError::Completion {
                    code: 0xC1 | 0xD5 | 0xD6,
                    ..
                },
            ) => {
                sol_enabled = false;
                notes.push(format!("sol payload on channel {ch}: {e}"));
            }
            Err(e) => return Err(e),
        }
    }

    // Verification: read back what was written, then let the BMC check the password.
    let name = get_user_name(t, user_id)?;
    if name != params.username {
        return Err(BmcError::VerifyFailed {
            user_id,
            what: format!("the BMC reports name {name:?}, not {:?}", params.username),
        });
    }
    for &ch in &channels {
        let a = get_user_access(t, ch, user_id)?;
        if a.privilege != Some(params.privilege) || !a.ipmi_messaging {
            return Err(BmcError::VerifyFailed {
                user_id,
                what: format!(
                    "channel {ch} reports privilege {:?} with ipmi messaging {}, expected {:?} \
                     with ipmi messaging enabled",
                    a.privilege,
                    if a.ipmi_messaging { "on" } else { "off" },
                    params.privilege
                ),
            });
        }
    }
    let password_verified = match call(
        t,
        Command::SetUserPassword,
        &encode_set_user_password(user_id, PasswordOp::TestPassword, form, Some(&password)),
    ) {
        Ok(_) => true,
        Err(
            e @ BmcError::Completion {
                code: 0x80 | 0x81, ..
            },
        ) => {
            return Err(BmcError::VerifyFailed {
                user_id,
                what: e.to_string(),
            });
        }
        Err(e @ BmcError::Completion { .. }) => {
            notes.push(format!("password test: {e}"));
            false
        }
        Err(e) => return Err(e),
    };

    Ok(SetCredentialsResult {
        user_id,
        username: params.username.clone(),
        password,
        privilege: params.privilege,
        channels,
        sol_enabled,
        password_verified,
        notes,
    })
}

fn check_lan_channel<T: IpmiTransport + ?Sized>(t: &mut T, channel: u32) -> Result<u8, BmcError> {
    let ch = u8::try_from(channel)
        .ok()
        .filter(|c| LAN_CHANNEL_RANGE.contains(c))
        .ok_or_else(|| BmcError::InvalidChannel {
            channel,
            reason: "LAN channels are numbered 1 to 11".to_owned(),
        })?;
    match get_channel_info(t, ch) {
        Ok(info) if info.is_lan() => Ok(ch),
        Ok(info) => Err(BmcError::InvalidChannel {
            channel,
            reason: format!("it is not a LAN channel (medium type {:#04x})", info.medium),
        }),
        Err(e @ BmcError::Completion { .. }) => Err(BmcError::InvalidChannel {
            channel,
            reason: e.to_string(),
        }),
        Err(e) => Err(e),
    }
}

/// The slot already named `username`, else the first slot without a name. Slots with fixed
/// names and user 1 (the anonymous user) are never picked.
fn pick_user_slot<T: IpmiTransport + ?Sized>(
    t: &mut T,
    username: &str,
    fixed_names: u8,
    max: u8,
) -> Result<(u8, Option<String>), BmcError> {
    let first = fixed_names.saturating_add(1).max(2);
    let mut free = None;
    for id in first..=max {
        match get_user_name(t, id) {
            Ok(name) if name == username => return Ok((id, Some(name))),
            Ok(name) if name.is_empty() && free.is_none() => free = Some(id),
            Ok(_) | Err(BmcError::Completion { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    free.map(|id| (id, Some(String::new())))
        .ok_or(BmcError::NoFreeUserId { first, max })
}

/// Sets the password with the 20-byte form, falling back to the 16-byte form when the BMC
/// rejects the former (IPMI 1.5 BMCs and some 2.0 ones). Returns the form that worked.
fn set_password<T: IpmiTransport + ?Sized>(
    t: &mut T,
    user_id: u8,
    password: &Password,
) -> Result<PasswordForm, BmcError> {
    let twenty = encode_set_user_password(
        user_id,
        PasswordOp::SetPassword,
        PasswordForm::Bytes20,
        Some(password),
    );
    match call(t, Command::SetUserPassword, &twenty) {
        Ok(_) => Ok(PasswordForm::Bytes20),
        Err(e) if matches!(e.completion(), Some(0xC7 | 0xC8 | 0xCC)) => {
            let len = password.expose().len();
            if len > 16 {
                return Err(BmcError::PasswordTooLongForBmc { len });
            }
            let sixteen = encode_set_user_password(
                user_id,
                PasswordOp::SetPassword,
                PasswordForm::Bytes16,
                Some(password),
            );
            call(t, Command::SetUserPassword, &sixteen)?;
            Ok(PasswordForm::Bytes16)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------
// bmc.reset: Cold Reset (20.2), Warm Reset (20.3)

/// How long [`reset`] waits for the BMC to answer again, and how often it asks.
pub const RESET_WAIT: Duration = Duration::from_secs(90);
pub const RESET_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Resets the BMC and waits until it answers Get Device ID again. A lost answer to the reset
/// request itself is expected (the BMC may restart before replying) and is not an error.
pub fn reset<T: IpmiTransport + ?Sized>(
    t: &mut T,
    kind: ResetKind,
) -> Result<BmcResetResult, BmcError> {
    reset_and_wait(t, kind, RESET_WAIT, RESET_POLL_INTERVAL)
}

pub fn reset_and_wait<T: IpmiTransport + ?Sized>(
    t: &mut T,
    kind: ResetKind,
    wait: Duration,
    interval: Duration,
) -> Result<BmcResetResult, BmcError> {
    let (command, name) = match kind {
        ResetKind::Cold => (Command::ColdReset, "cold"),
        ResetKind::Warm => (Command::WarmReset, "warm"),
    };
    match call_once(t, command, &[]) {
        Ok(_) => {}
        Err(BmcError::Transport {
            source: IpmiError::Timeout { .. },
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let start = Instant::now();
    loop {
        match get_device_id(t) {
            Ok(_) => return Ok(BmcResetResult { kind }),
            Err(e @ (BmcError::Completion { .. } | BmcError::Transport { .. }))
                if start.elapsed() < wait =>
            {
                if matches!(&e, BmcError::Transport { source, .. }
                    if !matches!(source, IpmiError::Timeout { .. }))
                {
                    return Err(e);
                }
                std::thread::sleep(interval);
            }
            Err(e) => {
                return Err(BmcError::NotBackAfterReset {
                    kind: name,
                    waited: start.elapsed(),
                    last: Box::new(e),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// chassis.power: Get Chassis Status (28.2), Chassis Control (28.3)

pub fn decode_chassis_status(d: &[u8]) -> Result<ChassisStatus, BmcError> {
    need(Command::GetChassisStatus, d, 3)?;
    Ok(ChassisStatus {
        power_on: d[0] & 0x01 != 0,
        power_overload: d[0] & 0x02 != 0,
        power_interlock: d[0] & 0x04 != 0,
        power_fault: d[0] & 0x08 != 0,
        power_control_fault: d[0] & 0x10 != 0,
        restore_policy: match (d[0] >> 5) & 0x03 {
            0 => PowerRestorePolicy::AlwaysOff,
            1 => PowerRestorePolicy::Previous,
            2 => PowerRestorePolicy::AlwaysOn,
            _ => PowerRestorePolicy::Unknown,
        },
        intrusion: d[2] & 0x01 != 0,
        drive_fault: d[2] & 0x04 != 0,
        cooling_fault: d[2] & 0x08 != 0,
    })
}

pub fn chassis_status<T: IpmiTransport + ?Sized>(t: &mut T) -> Result<ChassisStatus, BmcError> {
    decode_chassis_status(&call(t, Command::GetChassisStatus, &[])?)
}

/// Chassis Control byte for an action; `None` for `status`, which changes nothing.
pub fn encode_chassis_control(action: PowerAction) -> Option<[u8; 1]> {
    let code = match action {
        PowerAction::Status => return None,
        PowerAction::Off => 0x00,
        PowerAction::On => 0x01,
        PowerAction::Cycle => 0x02,
        PowerAction::Reset => 0x03,
        PowerAction::Soft => 0x05,
    };
    Some([code])
}

/// Carries out a power action and returns once the BMC accepted it (for `status`, does
/// nothing). The protocol layer answers `chassis.power` first (with [`chassis_status`]),
/// then calls this: after `off`, `reset` or `cycle` the agent's machine may be gone.
pub fn power<T: IpmiTransport + ?Sized>(t: &mut T, action: PowerAction) -> Result<(), BmcError> {
    if let Some(data) = encode_chassis_control(action) {
        call_once(t, Command::ChassisControl, &data)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// chassis.boot_device: Set/Get System Boot Options (28.12, 28.13), parameter 5 (table 28-14)

pub mod boot_param {
    pub const SET_IN_PROGRESS: u8 = 0;
    pub const BOOT_INFO_ACK: u8 = 4;
    pub const BOOT_FLAGS: u8 = 5;
}

/// Boot flags as encoded in parameter 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFlags {
    pub valid: bool,
    pub persistent: bool,
    pub efi: bool,
    /// Boot device selector, data 2 bits 5:2.
    pub selector: u8,
}

pub fn boot_selector(device: BootDevice) -> u8 {
    match device {
        BootDevice::None => 0x0,
        BootDevice::Pxe => 0x1,
        BootDevice::Disk => 0x2,
        BootDevice::Cdrom => 0x5,
        BootDevice::Bios => 0x6,
    }
}

pub fn boot_device_from_selector(selector: u8) -> Option<BootDevice> {
    match selector {
        0x0 => Some(BootDevice::None),
        0x1 => Some(BootDevice::Pxe),
        0x2 => Some(BootDevice::Disk),
        0x5 => Some(BootDevice::Cdrom),
        0x6 => Some(BootDevice::Bios),
        _ => None,
    }
}

/// Set System Boot Options request for parameter 5.
pub fn encode_set_boot_flags(params: &BootDeviceParams) -> [u8; 6] {
    // Data 1: bit 7 flags valid, bit 6 persistent, bit 5 EFI. Data 2: bits 5:2 device.
    // Data 3..5 (console redirection, BIOS verbosity, device instance) left at defaults.
    let mut d1 = 0x80;
    if params.persistent {
        d1 |= 0x40;
    }
    if params.efi {
        d1 |= 0x20;
    }
    [
        boot_param::BOOT_FLAGS,
        d1,
        boot_selector(params.device) << 2,
        0x00,
        0x00,
        0x00,
    ]
}

pub fn encode_get_boot_option(parameter: u8) -> [u8; 3] {
    [parameter & 0x7F, 0x00, 0x00]
}

/// Decodes a Get System Boot Options response for parameter 5 (after the completion code:
/// parameter version, parameter selector, then the 5 data bytes).
pub fn decode_boot_flags(d: &[u8]) -> Result<BootFlags, BmcError> {
    need(Command::GetBootOptions, d, 4)?;
    let data = &d[2..];
    Ok(BootFlags {
        valid: data[0] & 0x80 != 0,
        persistent: data[0] & 0x40 != 0,
        efi: data[0] & 0x20 != 0,
        selector: (data[1] >> 2) & 0x0F,
    })
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
pub fn boot_device<T: IpmiTransport + ?Sized>(
    t: &mut T,
    params: &BootDeviceParams,
) -> Result<BootDeviceResult, BmcError> {
    let locked = call(
        t,
        Command::SetBootOptions,
        &[boot_param::SET_IN_PROGRESS, 0x01],
    );
    let locked = match locked {
        Ok(_) => true,
        Err(BmcError::Completion { .. }) => false,
        Err(e) => return Err(e),
    };
    // Boot info acknowledge: mark the new flags as not yet handled by the BIOS.
    match call(
        t,
        Command::SetBootOptions,
        &[boot_param::BOOT_INFO_ACK, 0x01, 0x01],
    ) {
        Ok(_) | Err(BmcError::Completion { .. }) => {}
        Err(e) => return Err(e),
    }
    let set = call(t, Command::SetBootOptions, &encode_set_boot_flags(params));
    if locked {
        // Always release the lock, even when setting the flags failed.
        match call(
            t,
            Command::SetBootOptions,
            &[boot_param::SET_IN_PROGRESS, 0x00],
        ) {
            Ok(_) | Err(BmcError::Completion { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    set?;
    let got = decode_boot_flags(&call(
        t,
        Command::GetBootOptions,
        &encode_get_boot_option(boot_param::BOOT_FLAGS),
    )?)?;
    let device = boot_device_from_selector(got.selector);
    if !got.valid
        || device != Some(params.device)
        || got.persistent != params.persistent
        || got.efi != params.efi
    {
        return Err(BmcError::BootFlagsMismatch {
            asked: describe_boot(
                Some(params.device),
                boot_selector(params.device),
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
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::VecDeque;
    use std::path::PathBuf;

    /// A scripted BMC: each expected request (netfn, cmd, exact data) is answered with the
    /// given response bytes (completion code first), in order.
    /// netfn, cmd, expected request data, response (or transport error).
    type Step = (u8, u8, Vec<u8>, Result<Vec<u8>, fn() -> IpmiError>);

    struct FakeBmc {
        script: VecDeque<Step>,
        once: Vec<(u8, u8)>,
    }

    impl FakeBmc {
        fn new() -> Self {
            Self {
                script: VecDeque::new(),
                once: vec![],
            }
        }
        fn expect(mut self, c: Command, data: &[u8], resp: &[u8]) -> Self {
            self.script
                .push_back((c.netfn(), c.cmd(), data.to_vec(), Ok(resp.to_vec())));
            self
        }
        fn expect_err(mut self, c: Command, data: &[u8], err: fn() -> IpmiError) -> Self {
            self.script
                .push_back((c.netfn(), c.cmd(), data.to_vec(), Err(err)));
            self
        }
        fn done(&self) {
            assert!(
                self.script.is_empty(),
                "requests not sent: {:02x?}",
                self.script
                    .iter()
                    .map(|s| (s.0, s.1, &s.2))
                    .collect::<Vec<_>>()
            );
        }
    }

    impl IpmiTransport for FakeBmc {
        fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
            let Some((n, c, d, resp)) = self.script.pop_front() else {
                panic!("unexpected request netfn {netfn:#04x} cmd {cmd:#04x} {data:02x?}");
            };
            assert_eq!(
                (netfn, cmd, data),
                (n, c, d.as_slice()),
                "request out of script"
            );
            resp.map_err(|f| f())
        }
        fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, IpmiError> {
            self.once.push((netfn, cmd));
            self.request(netfn, cmd, data)
        }
    }

    fn timeout() -> IpmiError {
        IpmiError::Timeout {
            path: PathBuf::from("/dev/ipmi0"),
            netfn: 0,
            cmd: 0,
            attempts: 3,
            timeout: Duration::from_secs(5),
        }
    }

    /// Get Channel Info answers: channel 1 is 802.3 LAN / IPMB-1.0 protocol / multi-session,
    /// IPMI enterprise number 0x001BF2; the others do not exist.
    fn scan_channels(mut bmc: FakeBmc, lan: &[u8]) -> FakeBmc {
        for ch in 1..=11u8 {
            bmc = if lan.contains(&ch) {
                bmc.expect(
                    Command::GetChannelInfo,
                    &[ch],
                    &[0x00, ch, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0x00, 0x00],
                )
            } else {
                bmc.expect(Command::GetChannelInfo, &[ch], &[0xCC])
            };
        }
        bmc
    }

    fn name16(name: &str) -> Vec<u8> {
        let mut v = vec![0x00];
        v.extend_from_slice(&encode_set_user_name(0, name)[1..]);
        v
    }

    /// The best-effort removal of a user that set_credentials created and then failed on.
    fn expect_undo(bmc: FakeBmc, id: u8) -> FakeBmc {
        bmc.expect(Command::SetUserPassword, &[id, 0x00], &[0x00])
            .expect(Command::SetUserName, &encode_set_user_name(id, ""), &[0x00])
    }

    // ------------------------------------------------------------ encodings and decodings

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
        let d = decode_device_id(&[0x01, 0x00, 0x82, 0x10, 0x51, 0x00, 0xA2, 0x02, 0x00, 0, 0])
            .unwrap();
        assert_eq!(d.ipmi_version_string(), "1.5");
        assert!(!d.device_available);
        assert_eq!(d.manufacturer_id, 0x2A2);
        assert_eq!(d.aux_firmware, None);
        let err = decode_device_id(&[0x20, 0x81]).unwrap_err();
        assert_eq!(err.code(), "bmc_bad_response");
        assert_eq!(
            err.to_string(),
            "get device id: response has 2 data bytes, expected at least 11"
        );
    }

    #[test]
    fn channel_info_finds_lan_channels() {
        assert_eq!(encode_get_channel_info(1), [0x01]);
        // Table 22-28: channel 1, medium 802.3 LAN, protocol IPMB-1.0, multi-session.
        let info = decode_channel_info(&[0x01, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0, 0]).unwrap();
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
        assert!(
            !decode_channel_info(&[0x00, 0x01, 0x01, 0x00])
                .unwrap()
                .is_lan()
        );

        let mut bmc = scan_channels(FakeBmc::new(), &[1, 8]);
        assert_eq!(lan_channels(&mut bmc).unwrap(), vec![1, 8]);
        bmc.done();

        // A BMC that stops answering is not "no LAN channels".
        let mut bmc = FakeBmc::new().expect_err(Command::GetChannelInfo, &[1], timeout);
        assert_eq!(lan_channels(&mut bmc).unwrap_err().code(), "bmc_timeout");
    }

    #[test]
    fn user_access_encodings() {
        // Get User Access (22.27): channel 1, user 2.
        assert_eq!(encode_get_user_access(1, 2), [0x01, 0x02]);
        // Response: max 16 users (0x10); 0x42 = enabled via Set User Password (01b) with 2
        // enabled users; 1 fixed name; 0x34 = link auth + IPMI messaging, administrator.
        let a = decode_user_access(&[0x10, 0x42, 0x01, 0x34]).unwrap();
        assert_eq!(
            a,
            UserAccess {
                max_users: 16,
                enabled_users: 2,
                enabled: Some(true),
                fixed_names: 1,
                callback_only: false,
                link_auth: true,
                ipmi_messaging: true,
                privilege: Some(Privilege::Administrator),
            }
        );
        // 0x8F: disabled (10b); 0x0F privilege = no access; 0x40 callback only.
        let a = decode_user_access(&[0x3F, 0x80, 0x00, 0x4F]).unwrap();
        assert_eq!(a.enabled, Some(false));
        assert_eq!(a.privilege, None);
        assert!(a.callback_only && !a.ipmi_messaging);
        assert_eq!(a.max_users, 63);

        // Set User Access (22.26): change bits, link auth, IPMI messaging, channel 1; user 3;
        // administrator (4).
        assert_eq!(
            encode_set_user_access(1, 3, Privilege::Administrator),
            [0xB1, 0x03, 0x04]
        );
        assert_eq!(
            encode_set_user_access(8, 5, Privilege::Operator),
            [0xB8, 0x05, 0x03]
        );
        assert_eq!(encode_set_user_access(1, 2, Privilege::Oem)[2], 0x05);
        assert_eq!(encode_set_user_access(1, 2, Privilege::Callback)[2], 0x01);
        assert_eq!(encode_set_user_access(1, 2, Privilege::User)[2], 0x02);
    }

    #[test]
    fn user_name_encodings() {
        let d = encode_set_user_name(3, "molar");
        assert_eq!(
            d,
            [
                0x03, b'm', b'o', b'l', b'a', b'r', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let full = encode_set_user_name(2, "sixteen-chars-ok");
        assert_eq!(&full[1..], b"sixteen-chars-ok");
        assert_eq!(encode_get_user_name(7), [0x07]);
        assert_eq!(decode_user_name(&name16("admin")[1..]).unwrap(), "admin");
        assert_eq!(decode_user_name(&[0; 16]).unwrap(), "");
        assert!(decode_user_name(&[b'a'; 10]).is_err());
    }

    #[test]
    fn set_user_password_encodings() {
        let pw = Password::new("PASSW0RD");
        // 22.30: byte 1 bit 7 = 20-byte form, user id 3; byte 2 = operation; then the
        // password NUL-padded to 20 (or 16) bytes.
        let d =
            encode_set_user_password(3, PasswordOp::SetPassword, PasswordForm::Bytes20, Some(&pw));
        let mut want = vec![0x83, 0x02];
        want.extend_from_slice(b"PASSW0RD");
        want.extend_from_slice(&[0; 12]);
        assert_eq!(d, want);
        let d = encode_set_user_password(
            3,
            PasswordOp::TestPassword,
            PasswordForm::Bytes16,
            Some(&pw),
        );
        let mut want = vec![0x03, 0x03];
        want.extend_from_slice(b"PASSW0RD");
        want.extend_from_slice(&[0; 8]);
        assert_eq!(d, want);
        assert_eq!(
            encode_set_user_password(3, PasswordOp::EnableUser, PasswordForm::Bytes20, None),
            vec![0x83, 0x01]
        );
        assert_eq!(
            encode_set_user_password(4, PasswordOp::DisableUser, PasswordForm::Bytes16, None),
            vec![0x04, 0x00]
        );
        // 24.6: channel 1, enable (00b) for user 3, standard payload 1 (SOL) = bit 1.
        assert_eq!(encode_enable_sol_payload(1, 3), [0x01, 0x03, 0x02, 0, 0, 0]);
    }

    #[test]
    fn lan_config_encodings_and_decodings() {
        // 23.2: channel 1, parameter 5 (MAC), set selector 0, block selector 0.
        assert_eq!(encode_get_lan_config(1, 5), [0x01, 0x05, 0x00, 0x00]);
        assert_eq!(
            decode_mac(&[0x52, 0x54, 0x00, 0xBE, 0xEF, 0x01]),
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
    fn info_reports_device_lan_and_users() {
        let mut bmc = FakeBmc::new().expect(
            Command::GetDeviceId,
            &[],
            &[
                0x00, 0x00, 0x23, 0x09, 0x08, 0x02, 0x9F, 0x91, 0x12, 0x00, 0x02, 0x0F,
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
    }

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
        let s = decode_chassis_status(&[0x00, 0x00, 0x00]).unwrap();
        assert!(!s.power_on);
        assert_eq!(s.restore_policy, PowerRestorePolicy::AlwaysOff);

        // 28.3: 0 down, 1 up, 2 cycle, 3 hard reset, 5 soft shutdown.
        for (action, byte) in [
            (PowerAction::Off, 0u8),
            (PowerAction::On, 1),
            (PowerAction::Cycle, 2),
            (PowerAction::Reset, 3),
            (PowerAction::Soft, 5),
        ] {
            assert_eq!(encode_chassis_control(action), Some([byte]));
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

    #[test]
    fn boot_flag_encodings() {
        let p = |device, persistent, efi| BootDeviceParams {
            device,
            persistent,
            efi,
        };
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
            encode_set_boot_flags(&p(BootDevice::Bios, true, false))[1..3],
            [0xC0, 0x18]
        );
        assert_eq!(
            encode_set_boot_flags(&p(BootDevice::None, false, false))[1..3],
            [0x80, 0x00]
        );
        assert_eq!(encode_get_boot_option(5), [0x05, 0x00, 0x00]);
        // 28.13 response: parameter version 1, parameter 5, data.
        assert_eq!(
            decode_boot_flags(&[0x01, 0x05, 0xE0, 0x08, 0x00, 0x00, 0x00]).unwrap(),
            BootFlags {
                valid: true,
                persistent: true,
                efi: true,
                selector: 2
            }
        );
    }

    fn boot_script(bmc: FakeBmc, set: [u8; 6], readback: &[u8]) -> FakeBmc {
        bmc.expect(Command::SetBootOptions, &[0x00, 0x01], &[0x00])
            .expect(Command::SetBootOptions, &[0x04, 0x01, 0x01], &[0x00])
            .expect(Command::SetBootOptions, &set, &[0x00])
            .expect(Command::SetBootOptions, &[0x00, 0x00], &[0x00])
            .expect(Command::GetBootOptions, &[0x05, 0x00, 0x00], readback)
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

    #[test]
    fn reset_waits_for_the_bmc_to_answer_again() {
        let dev_id = [
            0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0xBF, 0x91, 0x12, 0x00, 0x02, 0x0F,
        ];
        // Cold reset answered with a lost response (timeout), then the BMC is initializing
        // (0xD2), then it answers.
        let mut bmc = FakeBmc::new()
            .expect_err(Command::ColdReset, &[], timeout)
            .expect(Command::GetDeviceId, &[], &[0xD2])
            .expect(Command::GetDeviceId, &[], &dev_id);
        let r = reset_and_wait(
            &mut bmc,
            ResetKind::Cold,
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .unwrap();
        bmc.done();
        assert_eq!(r.kind, ResetKind::Cold);
        assert_eq!(bmc.once, vec![(0x06, 0x02)]);

        let mut bmc = FakeBmc::new()
            .expect(Command::WarmReset, &[], &[0x00])
            .expect(Command::GetDeviceId, &[], &dev_id);
        reset_and_wait(
            &mut bmc,
            ResetKind::Warm,
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .unwrap();
        bmc.done();

        // A BMC without warm reset says so.
        let mut bmc = FakeBmc::new().expect(Command::WarmReset, &[], &[0xC1]);
        let err = reset(&mut bmc, ResetKind::Warm).unwrap_err();
        assert_eq!(err.code(), "bmc_invalid_command");
        assert_eq!(
            err.to_string(),
            "warm reset: the BMC answered invalid command (not supported by this BMC) \
             (completion code 0xc1)"
        );

        // Never back.
        let mut bmc = FakeBmc::new()
            .expect(Command::ColdReset, &[], &[0x00])
            .expect(Command::GetDeviceId, &[], &[0xD2]);
        let err =
            reset_and_wait(&mut bmc, ResetKind::Cold, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert_eq!(err.code(), "bmc_not_back_after_reset");
    }

    #[test]
    fn completion_codes_map_to_clear_errors() {
        let cases = [
            (Command::GetDeviceId, 0xC0, "bmc_busy", "node busy"),
            (
                Command::GetDeviceId,
                0xC1,
                "bmc_invalid_command",
                "invalid command (not supported by this BMC)",
            ),
            (
                Command::GetDeviceId,
                0xC3,
                "bmc_timeout",
                "timeout while processing the command",
            ),
            (
                Command::SetUserAccess,
                0xC9,
                "bmc_parameter_out_of_range",
                "parameter out of range",
            ),
            (
                Command::SetUserName,
                0xCC,
                "bmc_invalid_data_field",
                "invalid data field in request",
            ),
            (
                Command::SetUserName,
                0xD4,
                "bmc_insufficient_privilege",
                "insufficient privilege level",
            ),
            (
                Command::SetUserPassword,
                0x80,
                "bmc_password_mismatch",
                "password test failed: the password does not match",
            ),
            (
                Command::SetUserPassword,
                0x81,
                "bmc_password_size",
                "password test failed: wrong password size",
            ),
            (
                Command::GetLanConfig,
                0x80,
                "bmc_parameter_not_supported",
                "parameter not supported",
            ),
            (
                Command::SetBootOptions,
                0x82,
                "bmc_read_only_parameter",
                "parameter is read-only",
            ),
            (
                Command::ChassisControl,
                0x80,
                "bmc_error",
                "command-specific error",
            ),
            (
                Command::ChassisControl,
                0xFF,
                "bmc_error",
                "unspecified error",
            ),
        ];
        for (command, code, word, meaning) in cases {
            let mut bmc = FakeBmc::new().expect(command, &[0x01], &[code]);
            let err = call(&mut bmc, command, &[0x01]).unwrap_err();
            assert_eq!(err.code(), word, "{command} {code:#04x}");
            assert_eq!(
                err.to_string(),
                format!("{command}: the BMC answered {meaning} (completion code {code:#04x})")
            );
        }
        let mut bmc = FakeBmc::new().expect(Command::GetDeviceId, &[], &[]);
        assert_eq!(
            call(&mut bmc, Command::GetDeviceId, &[])
                .unwrap_err()
                .code(),
            "bmc_bad_response"
        );
        let mut bmc = FakeBmc::new().expect_err(Command::GetDeviceId, &[], timeout);
        let err = call(&mut bmc, Command::GetDeviceId, &[]).unwrap_err();
        assert_eq!(err.code(), "bmc_timeout");
        assert!(
            err.to_string()
                .starts_with("get device id: the BMC did not answer"),
            "{err}"
        );
    }

    // ------------------------------------------------------------ validation

    fn params(username: &str) -> SetCredentialsParams {
        SetCredentialsParams {
            username: username.to_owned(),
            password: None,
            user_id: None,
            channel: None,
            privilege: Privilege::Administrator,
        }
    }

    #[test]
    fn bad_input_is_refused_before_touching_the_bmc() {
        let cases: Vec<(SetCredentialsParams, &str, &str)> = vec![
            (
                params(""),
                "invalid_username",
                "invalid username \"\": it is empty",
            ),
            (
                params("seventeen-chars-x"),
                "invalid_username",
                "invalid username \"seventeen-chars-x\": IPMI allows at most 16 bytes",
            ),
            (
                params("bad name"),
                "invalid_username",
                "invalid username \"bad name\": only printable ASCII characters without spaces are allowed",
            ),
            (
                params("café"),
                "invalid_username",
                "invalid username \"café\": only printable ASCII characters without spaces are allowed",
            ),
            (
                SetCredentialsParams {
                    password: Some(Password::new("x".repeat(21))),
                    ..params("molar")
                },
                "invalid_password",
                "invalid password: IPMI allows at most 20 bytes, it has 21",
            ),
            (
                SetCredentialsParams {
                    password: Some(Password::new("")),
                    ..params("molar")
                },
                "invalid_password",
                "invalid password: it is empty",
            ),
            (
                SetCredentialsParams {
                    password: Some(Password::new("tab\there")),
                    ..params("molar")
                },
                "invalid_password",
                "invalid password: only printable ASCII characters are allowed",
            ),
            (
                SetCredentialsParams {
                    user_id: Some(1),
                    ..params("molar")
                },
                "invalid_user_id",
                "user id 1 is the BMC's anonymous (null) user and cannot be named: use 2 or higher",
            ),
            (
                SetCredentialsParams {
                    user_id: Some(0),
                    ..params("molar")
                },
                "invalid_user_id",
                "user id 0 is out of range: IPMI user ids are 1 to 63",
            ),
            (
                SetCredentialsParams {
                    user_id: Some(4000),
                    ..params("molar")
                },
                "invalid_user_id",
                "user id 4000 is out of range: IPMI user ids are 1 to 63",
            ),
        ];
        for (p, code, msg) in cases {
            let mut bmc = FakeBmc::new();
            let err = set_credentials(&mut bmc, &p).unwrap_err();
            assert_eq!((err.code(), err.to_string().as_str()), (code, msg));
        }
    }

    #[test]
    fn bad_ids_and_channels_are_refused_with_the_bmc_limits() {
        // User id above this BMC's 10 slots.
        let mut bmc = scan_channels(FakeBmc::new(), &[1]).expect(
            Command::GetUserAccess,
            &[1, 1],
            &[0x00, 0x0A, 0x01, 0x01, 0x0F],
        );
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                user_id: Some(11),
                ..params("molar")
            },
        )
        .unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "invalid_user_id");
        assert_eq!(
            err.to_string(),
            "user id 11 is out of range: this BMC has user ids 1 to 10"
        );

        // Channel outside 1..=11, channel that is not LAN, channel that does not exist.
        let mut bmc = FakeBmc::new();
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                channel: Some(15),
                ..params("molar")
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_channel");
        assert_eq!(
            err.to_string(),
            "invalid channel 15: LAN channels are numbered 1 to 11"
        );

        let mut bmc = FakeBmc::new().expect(
            Command::GetChannelInfo,
            &[2],
            &[0x00, 0x02, 0x05, 0x05, 0x00, 0xF2, 0x1B, 0x00, 0, 0],
        );
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                channel: Some(2),
                ..params("molar")
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid channel 2: it is not a LAN channel (medium type 0x05)"
        );

        let mut bmc = FakeBmc::new().expect(Command::GetChannelInfo, &[3], &[0xCB]);
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                channel: Some(3),
                ..params("molar")
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_channel");

        // No LAN channel at all.
        let mut bmc = scan_channels(FakeBmc::new(), &[]);
        let err = set_credentials(&mut bmc, &params("molar")).unwrap_err();
        assert_eq!(err.code(), "bmc_no_lan_channel");
    }

    #[test]
    fn generated_passwords_are_strong_and_varied() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = generate_password(&mut rng);
        let b = generate_password(&mut rng);
        assert_ne!(a, b);
        for p in [&a, &b] {
            let s = p.expose();
            assert_eq!(s.len(), GENERATED_PASSWORD_LEN);
            assert!(s.bytes().any(|c| c.is_ascii_uppercase()));
            assert!(s.bytes().any(|c| c.is_ascii_lowercase()));
            assert!(s.bytes().any(|c| c.is_ascii_digit()));
            assert!(s.bytes().any(|c| SYMBOLS.contains(&c)));
            validate_password(p).unwrap();
        }
    }

    // ------------------------------------------------------------ set_credentials sequence

    const FIXED_PW: &str = "Gen3rated-Pass_1";

    /// The whole sequence on a BMC with LAN channel 1, 4 user slots, user 2 "admin" and
    /// user 3 free. `twenty_ok`: whether the BMC accepts the 20-byte password form.
    fn credentials_script(password: &Password, twenty_ok: bool) -> FakeBmc {
        let mut bmc = scan_channels(FakeBmc::new(), &[1])
            // max 4 users, 2 enabled, 1 fixed name (user 1), anonymous has no access.
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x04, 0x02, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[2], &name16("admin"))
            .expect(Command::GetUserName, &[3], &name16(""))
            .expect(Command::GetUserName, &[4], &name16(""))
            .expect(
                Command::SetUserName,
                &encode_set_user_name(3, "molar"),
                &[0x00],
            );
        let set20 = encode_set_user_password(
            3,
            PasswordOp::SetPassword,
            PasswordForm::Bytes20,
            Some(password),
        );
        let form = if twenty_ok {
            bmc = bmc.expect(Command::SetUserPassword, &set20, &[0x00]);
            PasswordForm::Bytes20
        } else {
            let set16 = encode_set_user_password(
                3,
                PasswordOp::SetPassword,
                PasswordForm::Bytes16,
                Some(password),
            );
            bmc = bmc
                .expect(Command::SetUserPassword, &set20, &[0xCC])
                .expect(Command::SetUserPassword, &set16, &[0x00]);
            PasswordForm::Bytes16
        };
        let enable = encode_set_user_password(3, PasswordOp::EnableUser, form, None);
        let test = encode_set_user_password(3, PasswordOp::TestPassword, form, Some(password));
        bmc.expect(Command::SetUserPassword, &enable, &[0x00])
            .expect(Command::SetUserAccess, &[0xB1, 0x03, 0x04], &[0x00])
            .expect(
                Command::SetUserPayloadAccess,
                &[0x01, 0x03, 0x02, 0, 0, 0],
                &[0x00],
            )
            .expect(Command::GetUserName, &[3], &name16("molar"))
            .expect(
                Command::GetUserAccess,
                &[1, 3],
                &[0x00, 0x04, 0x43, 0x01, 0x34],
            )
            .expect(Command::SetUserPassword, &test, &[0x00])
    }

    #[test]
    fn set_credentials_runs_the_exact_sequence_with_the_20_byte_form() {
        // The generated password is deterministic for a seeded rng: compute it first.
        let expected = generate_password(&mut StdRng::seed_from_u64(42));
        let mut bmc = credentials_script(&expected, true);
        let r =
            set_credentials_with_rng(&mut bmc, &params("molar"), &mut StdRng::seed_from_u64(42))
                .unwrap();
        bmc.done();
        assert_eq!(r.user_id, 3);
        assert_eq!(r.username, "molar");
        assert_eq!(r.password, expected);
        assert_eq!(r.channels, vec![1]);
        assert!(r.sol_enabled && r.password_verified);
        assert!(r.notes.is_empty());
        assert!(!format!("{r:?}").contains(expected.expose()));
    }

    #[test]
    fn set_credentials_falls_back_to_16_bytes_when_20_is_rejected() {
        let pw = Password::new(FIXED_PW);
        let mut bmc = credentials_script(&pw, false);
        let r = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                password: Some(pw.clone()),
                ..params("molar")
            },
        )
        .unwrap();
        bmc.done();
        assert_eq!(r.password, pw);
        assert!(r.password_verified);
    }

    #[test]
    fn a_long_password_on_a_16_byte_bmc_is_refused_clearly() {
        let pw = Password::new("a-20-byte-password-x");
        let mut bmc = scan_channels(FakeBmc::new(), &[1])
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x04, 0x02, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[3], &name16("molar"))
            .expect(
                Command::SetUserPassword,
                &encode_set_user_password(
                    3,
                    PasswordOp::SetPassword,
                    PasswordForm::Bytes20,
                    Some(&pw),
                ),
                &[0xCC],
            );
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                password: Some(pw),
                user_id: Some(3),
                ..params("molar")
            },
        )
        .unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "invalid_password");
        assert_eq!(
            err.to_string(),
            "the BMC accepts only 16-byte passwords and the given password has 20 bytes"
        );
        assert!(!err.to_string().contains("a-20-byte"));
    }

    #[test]
    fn set_credentials_reuses_the_slot_with_the_same_name_and_tolerates_no_sol() {
        // ipmi_sim's behaviour: Get User Name of user 1 is refused, Set User Payload Access
        // does not exist (0xC1), OEM privilege is not offered here.
        let pw = Password::new(FIXED_PW);
        let set20 =
            encode_set_user_password(2, PasswordOp::SetPassword, PasswordForm::Bytes20, Some(&pw));
        let enable =
            encode_set_user_password(2, PasswordOp::EnableUser, PasswordForm::Bytes20, None);
        let test = encode_set_user_password(
            2,
            PasswordOp::TestPassword,
            PasswordForm::Bytes20,
            Some(&pw),
        );
        let mut bmc = scan_channels(FakeBmc::new(), &[1])
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x3F, 0x02, 0x01, 0x12],
            )
            .expect(Command::GetUserName, &[2], &name16("ipmiusr"));
        // No Set User Name: the slot already has the name.
        bmc = bmc
            .expect(Command::SetUserPassword, &set20, &[0x00])
            .expect(Command::SetUserPassword, &enable, &[0x00])
            .expect(Command::SetUserAccess, &[0xB1, 0x02, 0x03], &[0x00])
            .expect(
                Command::SetUserPayloadAccess,
                &[0x01, 0x02, 0x02, 0, 0, 0],
                &[0xC1],
            )
            .expect(Command::GetUserName, &[2], &name16("ipmiusr"))
            .expect(
                Command::GetUserAccess,
                &[1, 2],
                &[0x00, 0x3F, 0x02, 0x01, 0x33],
            )
            .expect(Command::SetUserPassword, &test, &[0x00]);
        let r = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                password: Some(pw),
                privilege: Privilege::Operator,
                ..params("ipmiusr")
            },
        )
        .unwrap();
        bmc.done();
        assert_eq!(r.user_id, 2);
        assert!(!r.sol_enabled);
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].starts_with("sol payload on channel 1: set user payload access"));
    }

    #[test]
    fn set_credentials_detects_a_bmc_that_did_not_apply_the_changes() {
        let pw = Password::new(FIXED_PW);
        let set20 =
            encode_set_user_password(5, PasswordOp::SetPassword, PasswordForm::Bytes20, Some(&pw));
        let enable =
            encode_set_user_password(5, PasswordOp::EnableUser, PasswordForm::Bytes20, None);
        let test = encode_set_user_password(
            5,
            PasswordOp::TestPassword,
            PasswordForm::Bytes20,
            Some(&pw),
        );
        let prefix = |bmc: FakeBmc| {
            bmc.expect(
                Command::GetChannelInfo,
                &[1],
                &[0x00, 0x01, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0, 0],
            )
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x08, 0x02, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[5], &name16(""))
            .expect(
                Command::SetUserName,
                &encode_set_user_name(5, "molar"),
                &[0x00],
            )
            .expect(Command::SetUserPassword, &set20, &[0x00])
            .expect(Command::SetUserPassword, &enable, &[0x00])
            .expect(Command::SetUserAccess, &[0xB1, 0x05, 0x04], &[0x00])
            .expect(
                Command::SetUserPayloadAccess,
                &[0x01, 0x05, 0x02, 0, 0, 0],
                &[0x00],
            )
        };
        let p = SetCredentialsParams {
            password: Some(pw.clone()),
            user_id: Some(5),
            channel: Some(1),
            ..params("molar")
        };

        // The password test fails.
        let bmc = prefix(FakeBmc::new())
            .expect(Command::GetUserName, &[5], &name16("molar"))
            .expect(
                Command::GetUserAccess,
                &[1, 5],
                &[0x00, 0x08, 0x03, 0x01, 0x34],
            )
            .expect(Command::SetUserPassword, &test, &[0x80]);
        let mut bmc = expect_undo(bmc, 5);
        let err = set_credentials(&mut bmc, &p).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_verify_failed");
        assert_eq!(
            err.to_string(),
            "verifying user 5: set user password: the BMC answered password test failed: the \
             password does not match (completion code 0x80)"
        );
        assert!(!err.to_string().contains(FIXED_PW));

        // The privilege did not stick.
        let bmc = prefix(FakeBmc::new())
            .expect(Command::GetUserName, &[5], &name16("molar"))
            .expect(
                Command::GetUserAccess,
                &[1, 5],
                &[0x00, 0x08, 0x03, 0x01, 0x32],
            );
        let mut bmc = expect_undo(bmc, 5);
        let err = set_credentials(&mut bmc, &p).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_verify_failed");

        // The name did not stick.
        let bmc = prefix(FakeBmc::new()).expect(Command::GetUserName, &[5], &name16("other"));
        // The undo's own failures are ignored.
        let mut bmc = bmc
            .expect(Command::SetUserPassword, &[5, 0x00], &[0xCC])
            .expect(Command::SetUserName, &encode_set_user_name(5, ""), &[0xCC]);
        let err = set_credentials(&mut bmc, &p).unwrap_err();
        bmc.done();
        assert_eq!(
            err.to_string(),
            "verifying user 5: the BMC reports name \"other\", not \"molar\""
        );
    }

    #[test]
    fn set_credentials_reports_a_refused_privilege_and_a_full_bmc() {
        // OEM privilege refused by the BMC (ipmi_sim accepts 1..=4 only).
        let pw = Password::new(FIXED_PW);
        let set20 =
            encode_set_user_password(2, PasswordOp::SetPassword, PasswordForm::Bytes20, Some(&pw));
        let enable =
            encode_set_user_password(2, PasswordOp::EnableUser, PasswordForm::Bytes20, None);
        let bmc = FakeBmc::new()
            .expect(
                Command::GetChannelInfo,
                &[1],
                &[0x00, 0x01, 0x04, 0x01, 0x80, 0xF2, 0x1B, 0x00, 0, 0],
            )
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x02, 0x01, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[2], &name16(""))
            .expect(
                Command::SetUserName,
                &encode_set_user_name(2, "molar"),
                &[0x00],
            )
            .expect(Command::SetUserPassword, &set20, &[0x00])
            .expect(Command::SetUserPassword, &enable, &[0x00])
            .expect(Command::SetUserAccess, &[0xB1, 0x02, 0x05], &[0xCC]);
        let mut bmc = expect_undo(bmc, 2);
        let err = set_credentials(
            &mut bmc,
            &SetCredentialsParams {
                password: Some(pw),
                channel: Some(1),
                privilege: Privilege::Oem,
                ..params("molar")
            },
        )
        .unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "invalid_privilege");

        // Every slot taken.
        let mut bmc = scan_channels(FakeBmc::new(), &[1])
            .expect(
                Command::GetUserAccess,
                &[1, 1],
                &[0x00, 0x03, 0x03, 0x01, 0x0F],
            )
            .expect(Command::GetUserName, &[2], &name16("a"))
            .expect(Command::GetUserName, &[3], &name16("b"));
        let err = set_credentials(&mut bmc, &params("molar")).unwrap_err();
        bmc.done();
        assert_eq!(err.code(), "bmc_no_free_user");
        assert_eq!(
            err.to_string(),
            "no free user slot on the BMC: user ids 2 to 3 all have names"
        );
    }
}
