//! Every command of the crate, answered with responses of every length from 0 to 40 bytes and
//! several fillings: nothing panics, a response is accepted exactly when its completion code
//! is success and it has at least the bytes the command needs, and a refused one says why.

use molar_ipmi::chassis::Identify;
use molar_ipmi::sol::SolActivation;
use molar_ipmi::user::{PasswordForm, PasswordOp};
use molar_ipmi::{
    CommandError, Privilege, Transport, boot, channel, chassis, device, lan, sol, user,
};

#[derive(Debug, thiserror::Error)]
#[error("unused")]
struct Never;

/// Answers every request with the same bytes.
struct Canned(Vec<u8>);

impl Transport for Canned {
    type Error = Never;
    fn request(&mut self, _netfn: u8, _cmd: u8, _data: &[u8]) -> Result<Vec<u8>, Never> {
        Ok(self.0.clone())
    }
}

type Outcome = Result<(), CommandError<Never>>;

/// Runs every command against `t`: (name, data bytes needed, exact length or not, outcome).
fn every_command(t: &mut Canned) -> Vec<(&'static str, usize, bool, Outcome)> {
    fn unit<V>(r: Result<V, CommandError<Never>>) -> Outcome {
        r.map(|_| ())
    }
    vec![
        ("get device id", 11, false, unit(device::get_device_id(t))),
        ("cold reset", 0, false, unit(device::cold_reset(t))),
        (
            "get channel info",
            4,
            false,
            unit(channel::get_channel_info(t, 1)),
        ),
        (
            "auth caps",
            8,
            false,
            unit(channel::get_channel_auth_capabilities(
                t,
                1,
                Privilege::User,
            )),
        ),
        (
            "get user access",
            4,
            false,
            unit(user::get_user_access(t, 1, 2)),
        ),
        ("get user name", 16, false, unit(user::get_user_name(t, 2))),
        (
            "set user password",
            0,
            false,
            unit(user::set_user_password(
                t,
                2,
                PasswordOp::TestPassword,
                PasswordForm::Bytes20,
                Some(b"x"),
            )),
        ),
        ("mac", 7, false, unit(lan::get_mac_address(t, 1))),
        ("ip", 5, false, unit(lan::get_ip_address(t, 1))),
        ("ip source", 2, false, unit(lan::get_ip_source(t, 1))),
        ("vlan", 3, false, unit(lan::get_vlan_id(t, 1))),
        (
            "chassis status",
            3,
            false,
            unit(chassis::get_chassis_status(t)),
        ),
        (
            "identify",
            0,
            false,
            unit(chassis::chassis_identify(t, Identify::Indefinitely)),
        ),
        ("boot flags", 4, false, unit(boot::get_boot_flags(t))),
        (
            "activate sol",
            12,
            true,
            unit(sol::activate_sol(t, 1, &SolActivation::default())),
        ),
        ("deactivate sol", 0, false, unit(sol::deactivate_sol(t, 1))),
    ]
}

#[test]
fn any_response_is_decoded_or_refused_without_panicking() {
    let fillings: [fn(usize) -> u8; 3] = [|_| 0x00, |_| 0xFF, |i| (i as u8).wrapping_mul(37)];
    for len in 0..=40usize {
        for (f, fill) in fillings.iter().enumerate() {
            for cc in [0x00u8, 0x80, 0xC1, 0xFF] {
                let mut resp: Vec<u8> = (0..len).map(fill).collect();
                if let Some(first) = resp.first_mut() {
                    *first = cc;
                }
                let data = len.saturating_sub(1);
                for (name, needed, exact, outcome) in every_command(&mut Canned(resp.clone())) {
                    let ok = len > 0 && cc == 0 && data >= needed && (!exact || data == needed);
                    match outcome {
                        Ok(()) => assert!(ok, "{name} accepted {resp:02x?}"),
                        Err(e) => {
                            assert!(!ok, "{name} refused {resp:02x?} (filling {f}): {e}");
                            let expected = match e {
                                CommandError::EmptyResponse { .. } => len == 0,
                                CommandError::Completion { code, .. } => code == cc && cc != 0,
                                CommandError::ShortResponse { len: l, .. } => {
                                    l == data && data < needed
                                }
                                CommandError::LongResponse { len: l, .. } => {
                                    exact && l == data && data > needed
                                }
                                CommandError::Transport { .. } => false,
                            };
                            assert!(expected, "{name} on {resp:02x?}: {e}");
                        }
                    }
                }
            }
        }
    }
}
