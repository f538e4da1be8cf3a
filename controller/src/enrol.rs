//! Enrolling a server by its BMC (`molar server add`, OBMd's "register a node"): the
//! operator's name and BMC credentials are checked strictly, a session with the BMC proves
//! them, and only then are the server (state `initial`) and its BMC entry stored, together.
//! When its agent later connects, the store recognises the machine (system GUID, BMC MAC;
//! see `store::enrolled`).

use crate::oob::{self, BmcTarget, IPMI_LAN_PORT, OobError};
use crate::store::{EnrolRefusal, Enrolment, ServerRecord, Store, StoreError};
use molar_protocol::Secret;

/// The longest server name.
pub const NAME_MAX: usize = 64;
/// IPMI 2.0 limits: user names 16 bytes, passwords 20 bytes (printable ASCII here).
pub const BMC_USER_MAX: usize = 16;
pub const BMC_PASSWORD_MAX: usize = 20;
const HOST_MAX: usize = 253;

/// What an operator asks to enrol.
#[derive(Debug, Clone)]
pub struct EnrolRequest {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub username: String,
    pub password: Secret,
    pub allow_ipmi15: bool,
}

/// Why an enrolment failed. Nothing is stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(EnrolRefusal),
    #[error("verifying the BMC: {0}")]
    Bmc(OobError),
    #[error(transparent)]
    Store(StoreError),
}

/// A server name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit. Names
/// appear in URLs and shells; anything else would need quoting everywhere.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(format!(
            "a server name has 1 to {NAME_MAX} characters, not {}",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "server name {name:?} must start with a letter or a digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "server name {:?} has {c:?}: use letters, digits, '.', '_' and '-'",
            name.escape_debug().to_string()
        ));
    }
    Ok(())
}

/// A BMC host: an IPv4 or IPv6 address or a DNS name.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= HOST_MAX
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "BMC host {:?} is neither an IP address nor a DNS name",
            host.escape_debug().to_string()
        ))
    }
}

/// `HOST[:PORT]`, `[V6]:PORT` or a bare IPv6 address, as `molar server add --bmc` takes it.
pub fn parse_bmc_address(text: &str) -> Result<(String, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("BMC port {p:?} is not a number from 1 to 65535"))
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("BMC address {text:?} has '[' without ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (host.to_owned(), Some(port_of(p)?)),
            None if after.is_empty() => (host.to_owned(), None),
            None => return Err(format!("BMC address {text:?}: unexpected {after:?}")),
        }
    } else if text.matches(':').count() > 1 {
        (text.to_owned(), None)
    } else if let Some((host, p)) = text.split_once(':') {
        (host.to_owned(), Some(port_of(p)?))
    } else {
        (text.to_owned(), None)
    };
    check_host(&host)?;
    Ok((host, port))
}

fn check_printable(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("the {what} has 1 to {max} characters"));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("the {what} must be printable ASCII"));
    }
    Ok(())
}

impl EnrolRequest {
    /// Every check that needs no BMC. Messages never repeat the password.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_host(&self.host)?;
        if self.port == Some(0) {
            return Err("BMC port 0 is not a port".into());
        }
        check_printable("BMC user name", &self.username, BMC_USER_MAX)?;
        check_printable("BMC password", self.password.expose(), BMC_PASSWORD_MAX)?;
        Ok(())
    }

    fn target(&self) -> BmcTarget {
        BmcTarget {
            host: self.host.clone(),
            port: self.port.unwrap_or(IPMI_LAN_PORT),
            username: self.username.clone(),
            password: self.password.clone(),
            allow_ipmi15: self.allow_ipmi15,
        }
    }
}

/// Checks the request, opens a session with the BMC and stores the server with its BMC.
pub async fn enrol(store: &Store, req: EnrolRequest) -> Result<ServerRecord, EnrolError> {
    req.check().map_err(EnrolError::Invalid)?;
    // A name already taken is refused before the BMC is bothered; the store checks again
    // inside its transaction, where two concurrent enrolments are decided.
    if store
        .resolve_server(&req.name)
        .await
        .map_err(EnrolError::Store)?
        .is_some()
    {
        return Err(EnrolError::Refused(EnrolRefusal::NameTaken(req.name)));
    }
    let target = req.target();
    let identity = oob::verify(&target).await.map_err(EnrolError::Bmc)?;
    let e = Enrolment {
        name: req.name,
        host: target.host,
        port: target.port,
        protocol: "ipmi".into(),
        username: target.username,
        password: target.password,
        allow_ipmi15: target.allow_ipmi15,
        cipher_suite: Some(identity.cipher_suite),
        system_guid: identity.system_guid,
        bmc_mac: identity.mac,
    };
    let new_id = || format!("srv-{}", crate::pki::random_hex(4));
    match store.enrol_server(e, new_id).await {
        Ok(Ok(server)) => {
            tracing::info!(server = %server.id, name = ?server.name, "server enrolled by its BMC");
            Ok(server)
        }
        Ok(Err(refusal)) => Err(EnrolError::Refused(refusal)),
        Err(e) => Err(EnrolError::Store(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["rack1-07", "a", "node.12_b", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a/b",
            "ä",
            "x\u{1b}[2J",
            &"x".repeat(65),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    #[test]
    fn bmc_addresses_parse() {
        assert_eq!(
            parse_bmc_address("10.0.0.4").unwrap(),
            ("10.0.0.4".into(), None)
        );
        assert_eq!(
            parse_bmc_address("127.0.0.1:9001").unwrap(),
            ("127.0.0.1".into(), Some(9001))
        );
        assert_eq!(
            parse_bmc_address("[::1]:623").unwrap(),
            ("::1".into(), Some(623))
        );
        assert_eq!(
            parse_bmc_address("fe80::1").unwrap(),
            ("fe80::1".into(), None)
        );
        assert_eq!(
            parse_bmc_address("bmc-7.rack1.example").unwrap(),
            ("bmc-7.rack1.example".into(), None)
        );
        for bad in [
            "", ":623", "h:0", "h:65536", "h:x", "[::1", "[::1]x", "a..b", "-a", "a b", "a_b",
        ] {
            assert!(parse_bmc_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_checked_without_repeating_the_password() {
        let req = |user: &str, pass: &str| EnrolRequest {
            name: "n".into(),
            host: "127.0.0.1".into(),
            port: None,
            username: user.into(),
            password: Secret::new(pass),
            allow_ipmi15: false,
        };
        assert!(req("admin", "pw").check().is_ok());
        for (u, p) in [
            ("", "pw"),
            (&"u".repeat(17), "pw"),
            ("admin", ""),
            ("admin", "012345678901234567890-sekrit"),
            ("admin", "pw\nsekrit"),
            ("ad\tmin", "pw"),
        ] {
            let e = req(u, p).check().unwrap_err();
            assert!(!e.contains("sekrit"), "{e}");
        }
    }
}
