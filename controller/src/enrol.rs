//! Enrolling a server by its BMC (`molar server add`, OBMd's "register a node"): the
//! operator's name and BMC credentials are checked strictly, a session with the BMC proves
//! them, and only then are the server (state `initial`) and its BMC entry stored, together.
//! When its agent later connects, the store recognises the machine (system GUID, BMC MAC;
//! see `store::enrolled`).

use crate::oob::{self, BmcProtocol, BmcTarget, BmcTrust, OobError};
use crate::store::{EnrolRefusal, Enrolment, ServerRecord, Store, StoreError};
use molar_protocol::Secret;

/// The longest server name.
pub const NAME_MAX: usize = 64;
/// IPMI 2.0 limits: user names 16 bytes, passwords 20 bytes (printable ASCII here).
pub const BMC_USER_MAX: usize = 16;
pub const BMC_PASSWORD_MAX: usize = 20;
/// Redfish has no such limits; these bound what is stored and sent.
pub const REDFISH_USER_MAX: usize = 64;
pub const REDFISH_PASSWORD_MAX: usize = 128;
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
    /// `None`: probe (a Redfish service root over HTTPS first, then IPMI).
    pub protocol: Option<BmcProtocol>,
    /// Redfish only: how the BMC's certificate is trusted.
    pub trust: Option<BmcTrust>,
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

/// `redfish://ADDRESS`, `ipmi://ADDRESS` or a bare ADDRESS (protocol `None`: probed), where
/// ADDRESS is what [`parse_bmc_address`] takes.
pub fn parse_bmc_url(text: &str) -> Result<(Option<BmcProtocol>, String, Option<u16>), String> {
    let (protocol, rest) = match text.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "redfish" | "https" => (Some(BmcProtocol::Redfish), rest),
            "ipmi" => (Some(BmcProtocol::Ipmi), rest),
            _ => {
                return Err(format!(
                    "BMC scheme {:?} is not redfish:// or ipmi://",
                    scheme.escape_debug().to_string()
                ));
            }
        },
        None => (None, text),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = parse_bmc_address(rest)?;
    Ok((protocol, host, port))
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

pub(crate) fn check_printable(what: &str, value: &str, max: usize) -> Result<(), String> {
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
        // A bare host may turn out to be IPMI: its limits apply until `redfish://` is said.
        let (user_max, password_max) = match self.protocol {
            Some(BmcProtocol::Redfish) => (REDFISH_USER_MAX, REDFISH_PASSWORD_MAX),
            _ => (BMC_USER_MAX, BMC_PASSWORD_MAX),
        };
        check_printable("BMC user name", &self.username, user_max)?;
        check_printable("BMC password", self.password.expose(), password_max)?;
        if self.protocol == Some(BmcProtocol::Ipmi) && self.trust.is_some() {
            return Err(
                "--bmc-ca, --bmc-fingerprint and --bmc-insecure are for Redfish BMCs; \
                 this one is ipmi://"
                    .into(),
            );
        }
        if self.protocol == Some(BmcProtocol::Redfish) && self.allow_ipmi15 {
            return Err("--allow-ipmi15 is for IPMI BMCs; this one is redfish://".into());
        }
        match &self.trust {
            Some(BmcTrust::Fingerprint(f)) => {
                oob::redfish::trust::normalise_fingerprint(f)?;
            }
            Some(BmcTrust::Ca(pem)) => oob::redfish::trust::check_ca_pem(pem)?,
            _ => {}
        }
        Ok(())
    }

    fn target(&self, protocol: BmcProtocol) -> BmcTarget {
        BmcTarget {
            host: self.host.clone(),
            port: self.port.unwrap_or(protocol.default_port()),
            username: self.username.clone(),
            password: self.password.clone(),
            allow_ipmi15: self.allow_ipmi15,
            protocol,
            trust: match &self.trust {
                Some(BmcTrust::Fingerprint(f)) => Some(BmcTrust::Fingerprint(
                    oob::redfish::trust::normalise_fingerprint(f).unwrap_or_else(|_| f.clone()),
                )),
                t => t.clone(),
            },
        }
    }

    /// The protocol given, or the one a probe finds: a Redfish service root over HTTPS,
    /// else IPMI. A certificate that is not trusted while no trust option was given also
    /// means IPMI is tried (many IPMI BMCs serve a web UI over HTTPS); the returned error is
    /// reported if IPMI does not answer either, showing the fingerprint to pin.
    async fn protocol(&self) -> Result<(BmcProtocol, Option<OobError>), OobError> {
        if let Some(p) = self.protocol {
            return Ok((p, None));
        }
        match oob::redfish::probe(&self.target(BmcProtocol::Redfish)).await {
            Ok(true) => Ok((BmcProtocol::Redfish, None)),
            Ok(false) => Ok((BmcProtocol::Ipmi, None)),
            Err(e @ OobError::Untrusted { .. }) if self.trust.is_none() => {
                Ok((BmcProtocol::Ipmi, Some(e)))
            }
            Err(e) => Err(e),
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
    let (protocol, untrusted) = req.protocol().await.map_err(EnrolError::Bmc)?;
    if protocol == BmcProtocol::Ipmi && req.trust.is_some() {
        return Err(EnrolError::Invalid(
            "--bmc-ca, --bmc-fingerprint and --bmc-insecure are for Redfish BMCs; no Redfish \
             service answers there"
                .into(),
        ));
    }
    let target = req.target(protocol);
    let identity = match (oob::verify(&target).await, untrusted) {
        (Ok(id), _) => id,
        // No IPMI there either: the HTTPS service was the BMC, and its certificate is what
        // the operator must confirm.
        (Err(OobError::Unreachable { .. }), Some(u)) => return Err(EnrolError::Bmc(u)),
        (Err(e), _) => return Err(EnrolError::Bmc(e)),
    };
    // The hardware details a Redfish BMC knows, before the server ever boots. A BMC that
    // fails to tell them is still enrolled (its power and boot work); the reason is logged.
    let oob_inventory = if protocol == BmcProtocol::Redfish {
        match oob::redfish::inventory(&target).await {
            Ok(inv) => Some(inv),
            Err(e) => {
                tracing::warn!(bmc = %target.addr(), error = %e, "reading the out-of-band inventory");
                None
            }
        }
    } else {
        None
    };
    let e = Enrolment {
        name: req.name,
        host: target.host,
        port: target.port,
        protocol: protocol.as_str().into(),
        username: target.username,
        password: target.password,
        allow_ipmi15: target.allow_ipmi15,
        cipher_suite: identity.cipher_suite,
        system_guid: identity.system_guid,
        bmc_mac: identity.mac,
        trust: target.trust,
        oob_inventory,
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
    fn bmc_urls_name_the_protocol() {
        assert_eq!(
            parse_bmc_url("redfish://10.0.0.4").unwrap(),
            (Some(BmcProtocol::Redfish), "10.0.0.4".into(), None)
        );
        assert_eq!(
            parse_bmc_url("REDFISH://[::1]:8443/").unwrap(),
            (Some(BmcProtocol::Redfish), "::1".into(), Some(8443))
        );
        assert_eq!(
            parse_bmc_url("ipmi://bmc-7.rack1:6230").unwrap(),
            (Some(BmcProtocol::Ipmi), "bmc-7.rack1".into(), Some(6230))
        );
        assert_eq!(
            parse_bmc_url("10.0.0.4:623").unwrap(),
            (None, "10.0.0.4".into(), Some(623))
        );
        for bad in [
            "ftp://h",
            "redfish://",
            "redfish://h/redfish/v1",
            "redfish://u:p@h",
            "://h",
            "redfish://h:0",
            "x\u{1b}[2J://h",
        ] {
            let e = parse_bmc_url(bad).unwrap_err();
            assert!(!e.contains('\u{1b}'), "{e}");
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
            protocol: None,
            trust: None,
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
