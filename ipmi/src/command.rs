//! The commands this crate encodes: their network function, command number (IPMI 2.0
//! appendix G) and the name errors call them by.

use std::fmt;

/// Network functions (table 5-1). Requests use the even value; the BMC answers on the odd one.
pub mod netfn {
    pub const CHASSIS: u8 = 0x00;
    pub const APP: u8 = 0x06;
    pub const TRANSPORT: u8 = 0x0C;
}

/// The IPMI commands this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    GetDeviceId,
    ColdReset,
    WarmReset,
    GetSystemGuid,
    GetChannelAuthCapabilities,
    GetSessionChallenge,
    ActivateSession,
    SetSessionPrivilege,
    CloseSession,
    GetChannelInfo,
    SetUserAccess,
    GetUserAccess,
    SetUserName,
    GetUserName,
    SetUserPassword,
    ActivatePayload,
    DeactivatePayload,
    SetUserPayloadAccess,
    GetLanConfig,
    GetChassisStatus,
    ChassisControl,
    ChassisIdentify,
    SetBootOptions,
    GetBootOptions,
}

impl Command {
    pub fn netfn(self) -> u8 {
        match self {
            Command::GetChassisStatus
            | Command::ChassisControl
            | Command::ChassisIdentify
            | Command::SetBootOptions
            | Command::GetBootOptions => netfn::CHASSIS,
            Command::GetLanConfig => netfn::TRANSPORT,
            Command::GetDeviceId
            | Command::ColdReset
            | Command::WarmReset
            | Command::GetSystemGuid
            | Command::GetChannelAuthCapabilities
            | Command::GetSessionChallenge
            | Command::ActivateSession
            | Command::SetSessionPrivilege
            | Command::CloseSession
            | Command::GetChannelInfo
            | Command::SetUserAccess
            | Command::GetUserAccess
            | Command::SetUserName
            | Command::GetUserName
            | Command::SetUserPassword
            | Command::ActivatePayload
            | Command::DeactivatePayload
            | Command::SetUserPayloadAccess => netfn::APP,
        }
    }

    pub fn cmd(self) -> u8 {
        match self {
            Command::GetDeviceId => 0x01,
            Command::ColdReset => 0x02,
            Command::WarmReset => 0x03,
            Command::GetSystemGuid => 0x37,
            Command::GetChannelAuthCapabilities => 0x38,
            Command::GetSessionChallenge => 0x39,
            Command::ActivateSession => 0x3A,
            Command::SetSessionPrivilege => 0x3B,
            Command::CloseSession => 0x3C,
            Command::GetChannelInfo => 0x42,
            Command::SetUserAccess => 0x43,
            Command::GetUserAccess => 0x44,
            Command::SetUserName => 0x45,
            Command::GetUserName => 0x46,
            Command::SetUserPassword => 0x47,
            Command::ActivatePayload => 0x48,
            Command::DeactivatePayload => 0x49,
            Command::SetUserPayloadAccess => 0x4C,
            Command::GetLanConfig => 0x02,
            Command::GetChassisStatus => 0x01,
            Command::ChassisControl => 0x02,
            Command::ChassisIdentify => 0x04,
            Command::SetBootOptions => 0x08,
            Command::GetBootOptions => 0x09,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::GetDeviceId => "get device id",
            Command::ColdReset => "cold reset",
            Command::WarmReset => "warm reset",
            Command::GetSystemGuid => "get system guid",
            Command::GetChannelAuthCapabilities => "get channel authentication capabilities",
            Command::GetSessionChallenge => "get session challenge",
            Command::ActivateSession => "activate session",
            Command::SetSessionPrivilege => "set session privilege level",
            Command::CloseSession => "close session",
            Command::GetChannelInfo => "get channel info",
            Command::SetUserAccess => "set user access",
            Command::GetUserAccess => "get user access",
            Command::SetUserName => "set user name",
            Command::GetUserName => "get user name",
            Command::SetUserPassword => "set user password",
            Command::ActivatePayload => "activate payload",
            Command::DeactivatePayload => "deactivate payload",
            Command::SetUserPayloadAccess => "set user payload access",
            Command::GetLanConfig => "get lan configuration parameters",
            Command::GetChassisStatus => "get chassis status",
            Command::ChassisControl => "chassis control",
            Command::ChassisIdentify => "chassis identify",
            Command::SetBootOptions => "set system boot options",
            Command::GetBootOptions => "get system boot options",
        }
    }

    /// Whether the command reads or writes configuration parameters, whose completion codes
    /// 0x80..=0x82 mean "not supported", "set in progress" and "read-only".
    pub fn has_parameter_codes(self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_appendix_g() {
        let table = [
            (Command::GetDeviceId, 0x06, 0x01),
            (Command::ColdReset, 0x06, 0x02),
            (Command::WarmReset, 0x06, 0x03),
            (Command::GetSystemGuid, 0x06, 0x37),
            (Command::GetChannelAuthCapabilities, 0x06, 0x38),
            (Command::GetSessionChallenge, 0x06, 0x39),
            (Command::ActivateSession, 0x06, 0x3A),
            (Command::SetSessionPrivilege, 0x06, 0x3B),
            (Command::CloseSession, 0x06, 0x3C),
            (Command::GetChannelInfo, 0x06, 0x42),
            (Command::SetUserAccess, 0x06, 0x43),
            (Command::GetUserAccess, 0x06, 0x44),
            (Command::SetUserName, 0x06, 0x45),
            (Command::GetUserName, 0x06, 0x46),
            (Command::SetUserPassword, 0x06, 0x47),
            (Command::ActivatePayload, 0x06, 0x48),
            (Command::DeactivatePayload, 0x06, 0x49),
            (Command::SetUserPayloadAccess, 0x06, 0x4C),
            (Command::GetLanConfig, 0x0C, 0x02),
            (Command::GetChassisStatus, 0x00, 0x01),
            (Command::ChassisControl, 0x00, 0x02),
            (Command::ChassisIdentify, 0x00, 0x04),
            (Command::SetBootOptions, 0x00, 0x08),
            (Command::GetBootOptions, 0x00, 0x09),
        ];
        for (c, netfn, cmd) in table {
            assert_eq!((c.netfn(), c.cmd()), (netfn, cmd), "{c}");
        }
        assert_eq!(
            Command::GetLanConfig.to_string(),
            "get lan configuration parameters"
        );
    }
}
