//! Users: privilege levels (table 6-4), Set/Get User Access (22.26, 22.27), Set/Get User
//! Name (22.28, 22.29), Set User Password (22.30), Set User Payload Access (24.6).

use crate::command::Command;
use crate::error::CommandError;
use crate::transport::{Transport, call};

/// A privilege level a user can hold on a channel or a session can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    Callback,
    User,
    Operator,
    Administrator,
    Oem,
}

/// Privilege code 0x0F: "no access".
pub const NO_ACCESS: u8 = 0x0F;

impl Privilege {
    pub fn code(self) -> u8 {
        match self {
            Privilege::Callback => 1,
            Privilege::User => 2,
            Privilege::Operator => 3,
            Privilege::Administrator => 4,
            Privilege::Oem => 5,
        }
    }

    /// The privilege of the low nibble of `code`; `None` for "no access" and reserved values.
    pub fn from_code(code: u8) -> Option<Privilege> {
        match code & 0x0F {
            1 => Some(Privilege::Callback),
            2 => Some(Privilege::User),
            3 => Some(Privilege::Operator),
            4 => Some(Privilege::Administrator),
            5 => Some(Privilege::Oem),
            _ => None,
        }
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

pub fn decode_user_access(d: &[u8; 4]) -> UserAccess {
    let [max, enabled, fixed, access] = *d;
    UserAccess {
        max_users: max & 0x3F,
        enabled_users: enabled & 0x3F,
        enabled: match enabled >> 6 {
            0b01 => Some(true),
            0b10 => Some(false),
            _ => None,
        },
        fixed_names: fixed & 0x3F,
        callback_only: access & 0x40 != 0,
        link_auth: access & 0x20 != 0,
        ipmi_messaging: access & 0x10 != 0,
        privilege: Privilege::from_code(access),
    }
}

pub fn get_user_access<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
    user_id: u8,
) -> Result<UserAccess, CommandError<T::Error>> {
    let r = call::<_, 4>(
        t,
        Command::GetUserAccess,
        &encode_get_user_access(channel, user_id),
    )?;
    Ok(decode_user_access(&r.data))
}

/// Set User Access granting `privilege` on `channel` with IPMI messaging and link
/// authentication enabled, not restricted to callback; session limit left unchanged.
pub fn encode_set_user_access(channel: u8, user_id: u8, privilege: Privilege) -> [u8; 3] {
    // Byte 1: bit 7 "change the bits below", bit 6 callback only (0), bit 5 link auth,
    // bit 4 IPMI messaging, bits 3:0 channel.
    [
        0x80 | 0x20 | 0x10 | (channel & 0x0F),
        user_id & 0x3F,
        privilege.code(),
    ]
}

pub fn set_user_access<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
    user_id: u8,
    privilege: Privilege,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::SetUserAccess,
        &encode_set_user_access(channel, user_id, privilege),
    )?;
    Ok(())
}

/// Set User Name: the name NUL-padded to 16 bytes (longer names are cut; callers validate).
pub fn encode_set_user_name(user_id: u8, name: &str) -> [u8; 17] {
    let mut d = [0u8; 17];
    d[0] = user_id & 0x3F;
    for (slot, b) in d[1..].iter_mut().zip(name.bytes()) {
        *slot = b;
    }
    d
}

pub fn set_user_name<T: Transport + ?Sized>(
    t: &mut T,
    user_id: u8,
    name: &str,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::SetUserName,
        &encode_set_user_name(user_id, name),
    )?;
    Ok(())
}

pub fn encode_get_user_name(user_id: u8) -> [u8; 1] {
    [user_id & 0x3F]
}

/// The name up to the first NUL (names are NUL-padded to 16 bytes).
pub fn decode_user_name(d: &[u8; 16]) -> String {
    let name = d.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

pub fn get_user_name<T: Transport + ?Sized>(
    t: &mut T,
    user_id: u8,
) -> Result<String, CommandError<T::Error>> {
    let r = call::<_, 16>(t, Command::GetUserName, &encode_get_user_name(user_id))?;
    Ok(decode_user_name(&r.data))
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

/// Set User Password request. The password is NUL-padded to the form's size (longer ones
/// are cut; callers validate) and only sent for the set and test operations. The result
/// holds the password: never log it.
pub fn encode_set_user_password(
    user_id: u8,
    op: PasswordOp,
    form: PasswordForm,
    password: Option<&[u8]>,
) -> Vec<u8> {
    let size_bit = match form {
        PasswordForm::Bytes20 => 0x80,
        PasswordForm::Bytes16 => 0x00,
    };
    let mut d = vec![size_bit | (user_id & 0x3F), op as u8];
    if matches!(op, PasswordOp::SetPassword | PasswordOp::TestPassword) {
        let mut field = vec![0u8; form.size()];
        for (slot, &b) in field.iter_mut().zip(password.unwrap_or_default()) {
            *slot = b;
        }
        d.extend_from_slice(&field);
    }
    d
}

pub fn set_user_password<T: Transport + ?Sized>(
    t: &mut T,
    user_id: u8,
    op: PasswordOp,
    form: PasswordForm,
    password: Option<&[u8]>,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::SetUserPassword,
        &encode_set_user_password(user_id, op, form, password),
    )?;
    Ok(())
}

/// Set User Payload Access enabling the SOL payload (standard payload type 1) for the user.
pub fn encode_enable_sol_payload(channel: u8, user_id: u8) -> [u8; 6] {
    // Byte 2 bits 7:6 = 00 "enable the payloads set to 1 below"; byte 3 bit 1 = payload 1.
    [channel & 0x0F, user_id & 0x3F, 0x02, 0x00, 0x00, 0x00]
}

pub fn enable_sol_payload<T: Transport + ?Sized>(
    t: &mut T,
    channel: u8,
    user_id: u8,
) -> Result<(), CommandError<T::Error>> {
    call::<_, 0>(
        t,
        Command::SetUserPayloadAccess,
        &encode_enable_sol_payload(channel, user_id),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBmc;

    fn name16(name: &str) -> [u8; 16] {
        let mut d = [0u8; 16];
        d.copy_from_slice(&encode_set_user_name(0, name)[1..]);
        d
    }

    #[test]
    fn privilege_codes_follow_table_6_4() {
        for (p, code) in [
            (Privilege::Callback, 1),
            (Privilege::User, 2),
            (Privilege::Operator, 3),
            (Privilege::Administrator, 4),
            (Privilege::Oem, 5),
        ] {
            assert_eq!(p.code(), code);
            assert_eq!(Privilege::from_code(code), Some(p));
            assert_eq!(Privilege::from_code(0x30 | code), Some(p));
        }
        assert_eq!(Privilege::from_code(NO_ACCESS), None);
        assert_eq!(Privilege::from_code(0), None);
    }

    #[test]
    fn user_access_encodings() {
        // Get User Access (22.27): channel 1, user 2.
        assert_eq!(encode_get_user_access(1, 2), [0x01, 0x02]);
        // Response: max 16 users (0x10); 0x42 = enabled via Set User Password (01b) with 2
        // enabled users; 1 fixed name; 0x34 = link auth + IPMI messaging, administrator.
        let a = decode_user_access(&[0x10, 0x42, 0x01, 0x34]);
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
        let a = decode_user_access(&[0x3F, 0x80, 0x00, 0x4F]);
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

        let mut bmc = FakeBmc::new()
            .expect(
                Command::GetUserAccess,
                &[1, 2],
                &[0x00, 0x10, 0x42, 0x01, 0x34],
            )
            .expect(Command::SetUserAccess, &[0xB1, 0x03, 0x04], &[0x00]);
        assert_eq!(get_user_access(&mut bmc, 1, 2).unwrap().max_users, 16);
        set_user_access(&mut bmc, 1, 3, Privilege::Administrator).unwrap();
        bmc.done();
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
        assert_eq!(decode_user_name(&name16("admin")), "admin");
        assert_eq!(decode_user_name(&[0; 16]), "");
        assert_eq!(decode_user_name(&[b'a'; 16]), "a".repeat(16));

        // A name response shorter than 16 bytes is refused, not read as a short name.
        let mut resp = vec![0x00];
        resp.extend_from_slice(&[b'a'; 10]);
        let mut bmc = FakeBmc::new().expect(Command::GetUserName, &[2], &resp);
        let err = get_user_name(&mut bmc, 2).unwrap_err();
        assert!(matches!(
            err,
            CommandError::ShortResponse {
                len: 10,
                expected: 16,
                ..
            }
        ));
    }

    #[test]
    fn set_user_password_encodings() {
        let pw = b"PASSW0RD".as_slice();
        // 22.30: byte 1 bit 7 = 20-byte form, user id 3; byte 2 = operation; then the
        // password NUL-padded to 20 (or 16) bytes.
        let d =
            encode_set_user_password(3, PasswordOp::SetPassword, PasswordForm::Bytes20, Some(pw));
        let mut want = vec![0x83, 0x02];
        want.extend_from_slice(b"PASSW0RD");
        want.extend_from_slice(&[0; 12]);
        assert_eq!(d, want);
        let d =
            encode_set_user_password(3, PasswordOp::TestPassword, PasswordForm::Bytes16, Some(pw));
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
}
