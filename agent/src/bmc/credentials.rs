//! `bmc.set_credentials`: creates or updates a BMC user, grants it a privilege on the LAN
//! channels, enables its SOL payload and verifies all of it; a slot that was free is given
//! back when a later step fails. Also the username and password rules and the password
//! generator.

use molar_ipmi::user::{self, PasswordForm, PasswordOp};
use molar_ipmi::{channel, completion};
use molar_protocol::bmc::{Password, SetCredentialsParams, SetCredentialsResult};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::info::lan_channels;
use super::{BmcError, BmcTransport, CommandError, from_ipmi_privilege, to_ipmi_privilege};

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

/// `bmc.set_credentials`: creates or updates a BMC user and verifies it.
///
/// Sequence: find the LAN channel(s) (Get Channel Info), read the number of user slots (Get
/// User Access of user 1), pick the slot (the given id; else the one already named
/// `username`; else the first without a name, never user 1), set the name, set the password
/// (20-byte form, the 16-byte form if the BMC refuses it), enable the user, grant the
/// privilege with IPMI messaging and link authentication on each channel, enable the SOL
/// payload, then read the name and access back and have the BMC test the password.
pub fn set_credentials<T: BmcTransport + ?Sized>(
    t: &mut T,
    params: &SetCredentialsParams,
) -> Result<SetCredentialsResult, BmcError> {
    set_credentials_with_rng(t, params, &mut rand::rng())
}

/// [`set_credentials`] with the random source for generated passwords given.
pub fn set_credentials_with_rng<T: BmcTransport + ?Sized, R: Rng + ?Sized>(
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
    let slots = user::get_user_access(t, first_channel, 1)?;
    let max = slots.max_users;

    let (user_id, current_name) = match params.user_id {
        Some(id) => {
            if id > u32::from(max) {
                return Err(BmcError::UserIdOutOfRange { id, max });
            }
            let id = id as u8; // checked above: 2..=max, max < 64
            let current = match user::get_user_name(t, id) {
                Ok(name) => Some(name),
                Err(CommandError::Completion { .. }) => None,
                Err(e) => return Err(e.into()),
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
            if created && !matches!(e, BmcError::Ipmi(CommandError::Transport { .. })) {
                undo_new_user(t, user_id);
            }
            Err(e)
        }
    }
}

/// Best effort: disable the user and clear its name; failures are ignored (the original
/// error is what the caller needs to see).
fn undo_new_user<T: BmcTransport + ?Sized>(t: &mut T, user_id: u8) {
    let _ = user::set_user_password(
        t,
        user_id,
        PasswordOp::DisableUser,
        PasswordForm::Bytes16,
        None,
    );
    let _ = user::set_user_name(t, user_id, "");
}

/// The writing and verifying part of [`set_credentials`], once the slot is chosen.
fn write_user<T: BmcTransport + ?Sized, R: Rng + ?Sized>(
    t: &mut T,
    params: &SetCredentialsParams,
    user_id: u8,
    current_name: Option<&str>,
    channels: Vec<u8>,
    rng: &mut R,
) -> Result<SetCredentialsResult, BmcError> {
    let mut notes = Vec::new();
    if current_name != Some(params.username.as_str()) {
        user::set_user_name(t, user_id, &params.username)?;
    }

    let password = match &params.password {
        Some(p) => p.clone(),
        None => generate_password(rng),
    };
    let form = set_password(t, user_id, &password)?;

    user::set_user_password(t, user_id, PasswordOp::EnableUser, form, None)?;

    let privilege = to_ipmi_privilege(params.privilege);
    for &ch in &channels {
        match user::set_user_access(t, ch, user_id, privilege) {
            Ok(()) => {}
            Err(CommandError::Completion {
                code: completion::INVALID_DATA_FIELD,
                ..
            }) => {
                return Err(BmcError::InvalidPrivilege {
                    privilege: params.privilege,
                    channel: ch,
                    reason: "the BMC refused it (invalid data field)".to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }

    let mut sol_enabled = true;
    for &ch in &channels {
        match user::enable_sol_payload(t, ch, user_id) {
            Ok(()) => {}
            Err(
                e @ CommandError::Completion {
                    code:
                        completion::INVALID_COMMAND
                        | completion::NOT_SUPPORTED_IN_PRESENT_STATE
                        | completion::SUB_FUNCTION_UNAVAILABLE,
                    ..
                },
            ) => {
                sol_enabled = false;
                notes.push(format!("sol payload on channel {ch}: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Verification: read back what was written, then let the BMC check the password.
    let name = user::get_user_name(t, user_id)?;
    if name != params.username {
        return Err(BmcError::VerifyFailed {
            user_id,
            what: format!("the BMC reports name {name:?}, not {:?}", params.username),
        });
    }
    for &ch in &channels {
        let a = user::get_user_access(t, ch, user_id)?;
        let granted = a.privilege.map(from_ipmi_privilege);
        if granted != Some(params.privilege) || !a.ipmi_messaging {
            return Err(BmcError::VerifyFailed {
                user_id,
                what: format!(
                    "channel {ch} reports privilege {granted:?} with ipmi messaging {}, \
                     expected {:?} with ipmi messaging enabled",
                    if a.ipmi_messaging { "on" } else { "off" },
                    params.privilege
                ),
            });
        }
    }
    let password_verified = match user::set_user_password(
        t,
        user_id,
        PasswordOp::TestPassword,
        form,
        Some(password.expose().as_bytes()),
    ) {
        Ok(()) => true,
        Err(
            e @ CommandError::Completion {
                code: completion::PASSWORD_MISMATCH | completion::PASSWORD_WRONG_SIZE,
                ..
            },
        ) => {
            return Err(BmcError::VerifyFailed {
                user_id,
                what: e.to_string(),
            });
        }
        Err(e @ CommandError::Completion { .. }) => {
            notes.push(format!("password test: {e}"));
            false
        }
        Err(e) => return Err(e.into()),
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

fn check_lan_channel<T: BmcTransport + ?Sized>(t: &mut T, channel: u32) -> Result<u8, BmcError> {
    let ch = u8::try_from(channel)
        .ok()
        .filter(|c| channel::LAN_CHANNEL_RANGE.contains(c))
        .ok_or_else(|| BmcError::InvalidChannel {
            channel,
            reason: "LAN channels are numbered 1 to 11".to_owned(),
        })?;
    match channel::get_channel_info(t, ch) {
        Ok(info) if info.is_lan() => Ok(ch),
        Ok(info) => Err(BmcError::InvalidChannel {
            channel,
            reason: format!("it is not a LAN channel (medium type {:#04x})", info.medium),
        }),
        Err(e @ CommandError::Completion { .. }) => Err(BmcError::InvalidChannel {
            channel,
            reason: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The slot already named `username`, else the first slot without a name. Slots with fixed
/// names and user 1 (the anonymous user) are never picked.
fn pick_user_slot<T: BmcTransport + ?Sized>(
    t: &mut T,
    username: &str,
    fixed_names: u8,
    max: u8,
) -> Result<(u8, Option<String>), BmcError> {
    let first = fixed_names.saturating_add(1).max(2);
    let mut free = None;
    for id in first..=max {
        match user::get_user_name(t, id) {
            Ok(name) if name == username => return Ok((id, Some(name))),
            Ok(name) if name.is_empty() && free.is_none() => free = Some(id),
            Ok(_) | Err(CommandError::Completion { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    free.map(|id| (id, Some(String::new())))
        .ok_or(BmcError::NoFreeUserId { first, max })
}

/// Sets the password with the 20-byte form, falling back to the 16-byte form when the BMC
/// rejects the former (IPMI 1.5 BMCs and some 2.0 ones). Returns the form that worked.
fn set_password<T: BmcTransport + ?Sized>(
    t: &mut T,
    user_id: u8,
    password: &Password,
) -> Result<PasswordForm, BmcError> {
    let bytes = password.expose().as_bytes();
    let set = |t: &mut T, form| {
        user::set_user_password(t, user_id, PasswordOp::SetPassword, form, Some(bytes))
    };
    match set(t, PasswordForm::Bytes20) {
        Ok(()) => Ok(PasswordForm::Bytes20),
        Err(e)
            if matches!(
                e.completion(),
                Some(
                    completion::REQUEST_DATA_LENGTH_INVALID
                        | completion::REQUEST_DATA_FIELD_LENGTH_EXCEEDED
                        | completion::INVALID_DATA_FIELD
                )
            ) =>
        {
            if bytes.len() > 16 {
                return Err(BmcError::PasswordTooLongForBmc { len: bytes.len() });
            }
            set(t, PasswordForm::Bytes16)?;
            Ok(PasswordForm::Bytes16)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use molar_ipmi::Command;
    use molar_ipmi::user::encode_set_user_name;
    use molar_protocol::bmc::Privilege;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::fake::{FakeBmc, name16, scan_channels};
    use super::*;

    /// The request bytes for a password given as the protocol carries it.
    fn encode_set_user_password(
        user_id: u8,
        op: PasswordOp,
        form: PasswordForm,
        password: Option<&Password>,
    ) -> Vec<u8> {
        user::encode_set_user_password(user_id, op, form, password.map(|p| p.expose().as_bytes()))
    }

    /// The best-effort removal of a user that set_credentials created and then failed on.
    fn expect_undo(bmc: FakeBmc, id: u8) -> FakeBmc {
        bmc.expect(Command::SetUserPassword, &[id, 0x00], &[0x00])
            .expect(Command::SetUserName, &encode_set_user_name(id, ""), &[0x00])
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
