//! The BMC operations the agent offers on its local BMC: discovery (`bmc.info`), in-band
//! credential setup (`bmc.set_credentials`), BMC reset, chassis power and boot device.
//!
//! Every byte comes from the `molar-ipmi` crate; this module decides which commands to send
//! in which order, what a refusal means for the operation, and converts the answers into
//! the protocol's `molar_protocol::bmc` types. The operations run on any [`BmcTransport`]:
//! [`IpmiDevice`](crate::hw::ipmi::IpmiDevice) (the `/dev/ipmi0` driver) in the product, a
//! scripted BMC in the tests, so each operation's exact sequence of commands is unit-tested.
//!
//! Passwords are handled as [`Password`](molar_protocol::bmc::Password) and never appear in
//! errors or `Debug` output.

mod boot;
mod chassis;
mod credentials;
mod info;
mod reset;

#[cfg(test)]
mod fake;

use std::time::Duration;

use molar_ipmi::Command;
use molar_protocol::bmc::Privilege;

use crate::hw::ipmi::IpmiError;

pub use boot::boot_device;
pub use chassis::{chassis_status, power};
pub use credentials::{
    GENERATED_PASSWORD_LEN, generate_password, set_credentials, set_credentials_with_rng,
    validate_password, validate_username,
};
pub use info::info;
pub use reset::{RESET_POLL_INTERVAL, RESET_WAIT, reset, reset_and_wait};

/// The error of one IPMI command on the agent's transport.
pub type CommandError = molar_ipmi::CommandError<IpmiError>;

/// What the operations run on: a [`molar_ipmi::Transport`] failing with the device's
/// [`IpmiError`] (whose timeouts the reset logic tells apart).
pub trait BmcTransport: molar_ipmi::Transport<Error = IpmiError> {}

impl<T: molar_ipmi::Transport<Error = IpmiError> + ?Sized> BmcTransport for T {}

/// Stable protocol error code of a completion code.
fn completion_code_word(command: Command, code: u8) -> &'static str {
    match (command, code) {
        (Command::SetUserPassword, 0x80) => "bmc_password_mismatch",
        (Command::SetUserPassword, 0x81) => "bmc_password_size",
        (c, 0x80) if c.has_parameter_codes() => "bmc_parameter_not_supported",
        (c, 0x81) if c.has_parameter_codes() => "bmc_set_in_progress",
        (c, 0x82) if c.has_parameter_codes() => "bmc_read_only_parameter",
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
    /// One command failed: transport, completion code or malformed response.
    #[error(transparent)]
    Ipmi(#[from] CommandError),
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
            BmcError::Ipmi(CommandError::Transport { source, .. }) => source.code(),
            BmcError::Ipmi(CommandError::Completion { command, code }) => {
                completion_code_word(*command, *code)
            }
            BmcError::Ipmi(
                CommandError::EmptyResponse { .. }
                | CommandError::ShortResponse { .. }
                | CommandError::LongResponse { .. },
            ) => "bmc_bad_response",
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
}

/// The protocol's privilege as IPMI encodes it.
fn to_ipmi_privilege(p: Privilege) -> molar_ipmi::Privilege {
    match p {
        Privilege::Callback => molar_ipmi::Privilege::Callback,
        Privilege::User => molar_ipmi::Privilege::User,
        Privilege::Operator => molar_ipmi::Privilege::Operator,
        Privilege::Administrator => molar_ipmi::Privilege::Administrator,
        Privilege::Oem => molar_ipmi::Privilege::Oem,
    }
}

fn from_ipmi_privilege(p: molar_ipmi::Privilege) -> Privilege {
    match p {
        molar_ipmi::Privilege::Callback => Privilege::Callback,
        molar_ipmi::Privilege::User => Privilege::User,
        molar_ipmi::Privilege::Operator => Privilege::Operator,
        molar_ipmi::Privilege::Administrator => Privilege::Administrator,
        molar_ipmi::Privilege::Oem => Privilege::Oem,
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeBmc, timeout};
    use super::*;

    fn call(bmc: &mut FakeBmc, command: Command, data: &[u8]) -> Result<(), BmcError> {
        molar_ipmi::call::<_, 0>(bmc, command, data)?;
        Ok(())
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

    #[test]
    fn malformed_responses_are_bad_responses() {
        let mut bmc = FakeBmc::new().expect(Command::GetDeviceId, &[], &[0x00, 0x20, 0x81]);
        let err = BmcError::from(molar_ipmi::device::get_device_id(&mut bmc).unwrap_err());
        assert_eq!(err.code(), "bmc_bad_response");
        assert_eq!(
            err.to_string(),
            "get device id: response has 2 data bytes, expected at least 11"
        );
        let err = BmcError::from(CommandError::LongResponse {
            command: Command::ActivatePayload,
            len: 13,
            expected: 12,
        });
        assert_eq!(err.code(), "bmc_bad_response");
    }

    #[test]
    fn privileges_convert_both_ways() {
        for p in [
            Privilege::Callback,
            Privilege::User,
            Privilege::Operator,
            Privilege::Administrator,
            Privilege::Oem,
        ] {
            assert_eq!(from_ipmi_privilege(to_ipmi_privilege(p)), p);
        }
        assert_eq!(to_ipmi_privilege(Privilege::Administrator).code(), 4);
    }
}
