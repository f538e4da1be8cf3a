//! Completion codes: the first byte of every response, and what each means for a command
//! (IPMI 2.0 table 5-2 and the command-specific codes of sections 22.30, 23.2, 24.1, 24.2,
//! 28.12 and 28.13).

use crate::command::Command;

pub const OK: u8 = 0x00;
pub const NODE_BUSY: u8 = 0xC0;
pub const INVALID_COMMAND: u8 = 0xC1;
pub const TIMEOUT: u8 = 0xC3;
pub const REQUEST_DATA_LENGTH_INVALID: u8 = 0xC7;
pub const REQUEST_DATA_FIELD_LENGTH_EXCEEDED: u8 = 0xC8;
pub const PARAMETER_OUT_OF_RANGE: u8 = 0xC9;
pub const NOT_PRESENT: u8 = 0xCB;
pub const INVALID_DATA_FIELD: u8 = 0xCC;
pub const INITIALIZING: u8 = 0xD2;
pub const INSUFFICIENT_PRIVILEGE: u8 = 0xD4;
pub const NOT_SUPPORTED_IN_PRESENT_STATE: u8 = 0xD5;
pub const SUB_FUNCTION_UNAVAILABLE: u8 = 0xD6;

/// Set User Password (22.30): the test-password operation found another password.
pub const PASSWORD_MISMATCH: u8 = 0x80;
/// Set User Password (22.30): the password does not have the stored password's size.
pub const PASSWORD_WRONG_SIZE: u8 = 0x81;

/// What a completion code means for a command.
pub fn meaning(command: Command, code: u8) -> &'static str {
    match (command, code) {
        (_, OK) => "success",
        (Command::SetUserPassword, PASSWORD_MISMATCH) => {
            "password test failed: the password does not match"
        }
        (Command::SetUserPassword, PASSWORD_WRONG_SIZE) => {
            "password test failed: wrong password size"
        }
        (Command::ActivatePayload, 0x80) => "payload already active on another session",
        (Command::ActivatePayload, 0x81) => "payload type is disabled",
        (Command::ActivatePayload, 0x82) => "payload activation limit reached",
        (Command::ActivatePayload, 0x83) => "cannot activate the payload with encryption",
        (Command::ActivatePayload, 0x84) => "cannot activate the payload without encryption",
        (Command::DeactivatePayload, 0x80) => "payload already deactivated",
        (Command::DeactivatePayload, 0x81) => "payload type is disabled",
        (c, 0x80) if c.has_parameter_codes() => "parameter not supported",
        (c, 0x81) if c.has_parameter_codes() => {
            "another client holds the parameters in 'set in progress'"
        }
        (c, 0x82) if c.has_parameter_codes() => "parameter is read-only",
        (_, NODE_BUSY) => "node busy",
        (_, INVALID_COMMAND) => "invalid command (not supported by this BMC)",
        (_, 0xC2) => "command invalid for the given LUN",
        (_, TIMEOUT) => "timeout while processing the command",
        (_, 0xC4) => "out of space",
        (_, 0xC5) => "reservation canceled or invalid",
        (_, 0xC6) => "request data truncated",
        (_, REQUEST_DATA_LENGTH_INVALID) => "request data length invalid",
        (_, REQUEST_DATA_FIELD_LENGTH_EXCEEDED) => "request data field length limit exceeded",
        (_, PARAMETER_OUT_OF_RANGE) => "parameter out of range",
        (_, 0xCA) => "cannot return the number of requested data bytes",
        (_, NOT_PRESENT) => "requested sensor, data or record not present",
        (_, INVALID_DATA_FIELD) => "invalid data field in request",
        (_, 0xCD) => "command illegal for the specified sensor or record type",
        (_, 0xCE) => "command response could not be provided",
        (_, 0xCF) => "cannot execute a duplicated request",
        (_, 0xD0) => "SDR repository in update mode",
        (_, 0xD1) => "device in firmware update mode",
        (_, INITIALIZING) => "BMC initialization in progress",
        (_, 0xD3) => "destination unavailable",
        (_, INSUFFICIENT_PRIVILEGE) => "insufficient privilege level",
        (_, NOT_SUPPORTED_IN_PRESENT_STATE) => "command not supported in the present state",
        (_, SUB_FUNCTION_UNAVAILABLE) => "command sub-function disabled or unavailable",
        (_, 0xFF) => "unspecified error",
        (_, 0x01..=0x7E) => "device-specific (OEM) error",
        _ => "command-specific error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_and_command_specific_meanings() {
        let cases = [
            (Command::GetDeviceId, 0xC0, "node busy"),
            (
                Command::GetDeviceId,
                0xC1,
                "invalid command (not supported by this BMC)",
            ),
            (
                Command::GetDeviceId,
                0xC3,
                "timeout while processing the command",
            ),
            (Command::SetUserAccess, 0xC9, "parameter out of range"),
            (Command::SetUserName, 0xCC, "invalid data field in request"),
            (Command::SetUserName, 0xD4, "insufficient privilege level"),
            (
                Command::SetUserPassword,
                0x80,
                "password test failed: the password does not match",
            ),
            (
                Command::SetUserPassword,
                0x81,
                "password test failed: wrong password size",
            ),
            (Command::GetLanConfig, 0x80, "parameter not supported"),
            (Command::SetBootOptions, 0x82, "parameter is read-only"),
            (
                Command::GetBootOptions,
                0x81,
                "another client holds the parameters in 'set in progress'",
            ),
            (
                Command::ActivatePayload,
                0x80,
                "payload already active on another session",
            ),
            (Command::ActivatePayload, 0x81, "payload type is disabled"),
            (
                Command::ActivatePayload,
                0x82,
                "payload activation limit reached",
            ),
            (
                Command::ActivatePayload,
                0x83,
                "cannot activate the payload with encryption",
            ),
            (
                Command::ActivatePayload,
                0x84,
                "cannot activate the payload without encryption",
            ),
            (
                Command::DeactivatePayload,
                0x80,
                "payload already deactivated",
            ),
            (Command::ChassisControl, 0x80, "command-specific error"),
            (Command::ChassisControl, 0xFF, "unspecified error"),
            (Command::ChassisControl, 0x42, "device-specific (OEM) error"),
        ];
        for (command, code, want) in cases {
            assert_eq!(meaning(command, code), want, "{command} {code:#04x}");
        }
    }
}
