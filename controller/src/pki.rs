//! The controller's state directory on disk: its CA, server certificate, admin token and the
//! API address the CLI reads.
//!
//! Layout of `--state-dir` (keys and the admin token are created mode 0600):
//! `ca.pem`, `ca.key`, `ca.sha256` (the fingerprint agents pin), `server.pem` (leaf then CA, so
//! an agent that pins the CA by fingerprint finds it in the chain), `server.key`,
//! `server.sans` (the names the leaf was issued for: a new `--san` reissues it),
//! `server.expires` (the leaf's end of validity, Unix seconds: a leaf within
//! [`RENEW_BEFORE`] of it, or without the file, is reissued at start),
//! `admin.token`, `api.url`, and `molar.db` (see [`crate::store`]).

use molar_protocol::Secret;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why preparing the state directory or the TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("parsing {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl PkiError {
    pub fn code(&self) -> &'static str {
        molar_protocol::codes::INTERNAL
    }
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// The CA and server certificate, loaded or created.
#[derive(Debug)]
pub struct Pki {
    pub ca_pem_path: PathBuf,
    /// `sha256:` + lowercase hex of the CA certificate's DER.
    pub ca_fingerprint: String,
    /// Whether the CA was created by this call (first start).
    pub created: bool,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

/// `sha256:` + lowercase hex of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file atomically (temp file then rename) with the given mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// How long a new CA certificate is valid (10 years). The CA is pinned by agents, so it is
/// never renewed automatically.
pub const CA_VALIDITY: Duration = Duration::from_secs(3652 * 86_400);
/// How long a new server certificate is valid (1 year).
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// A server certificate this close to its end is reissued at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Certificates start this long before they are made: a ramdisk's clock comes from the RTC,
/// which may be behind (or kept in local time).
pub const CLOCK_SKEW: Duration = Duration::from_secs(86_400);

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Valid from `now` less [`CLOCK_SKEW`] for `lasting`; returns the end, Unix seconds.
fn set_validity(p: &mut CertificateParams, now: SystemTime, lasting: Duration) -> u64 {
    let start = unix_secs(now).saturating_sub(CLOCK_SKEW.as_secs());
    let end = unix_secs(now) + lasting.as_secs();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(start);
    p.not_after = epoch + Duration::from_secs(end);
    end
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "molar");
    dn.push(DnType::CommonName, "molar controller CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The names the server certificate is issued for: loopback, the machine's hostname and
/// every `--san`, sorted and deduplicated.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            sans.push(h.to_owned());
        }
    }
    sans.extend(extra.iter().map(|s| s.trim().to_owned()));
    sans.sort();
    sans.dedup();
    sans
}

fn parse_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let data = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PkiError::Parse {
            path: path.to_owned(),
            msg: "no certificate in the file".into(),
        });
    }
    Ok(chain)
}

/// Loads the CA and server certificate from `dir`, creating what is missing. The server
/// certificate is reissued (by the same CA) when the requested names changed.
pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki> {
    load_or_create_at(dir, extra_sans, SystemTime::now())
}

/// [`load_or_create`] with the time taken as `now`.
fn load_or_create_at(dir: &Path, extra_sans: &[String], now: SystemTime) -> Result<Pki> {
    // The directory holds private keys and the admin token: only its owner may list it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    // An existing directory (a packaged /var/lib/molar at 0755) is tightened too.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(
        |source| PkiError::CreateDir {
            path: dir.to_owned(),
            source,
        },
    )?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let created = !ca_pem_path.exists() || !ca_key_path.exists();
    let ca_key = if created {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            PkiError::Generate {
                what: "the CA key",
                source,
            }
        })?;
        let mut params = ca_params();
        set_validity(&mut params, now, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: "the CA certificate",
                source,
            })?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_pem_path, cert.pem().as_bytes(), 0o644)?;
        // Force a new server certificate under the new CA.
        let _ = std::fs::remove_file(dir.join("server.sans"));
        key
    } else {
        let pem = String::from_utf8_lossy(&read(&ca_key_path)?).into_owned();
        KeyPair::from_pem(&pem).map_err(|e| PkiError::Parse {
            path: ca_key_path.clone(),
            msg: e.to_string(),
        })?
    };
    let ca_chain = parse_chain(&ca_pem_path)?;
    let ca_der = ca_chain[0].clone();
    let ca_fingerprint = fingerprint(&ca_der);
    write_file(
        &dir.join("ca.sha256"),
        format!("{ca_fingerprint}\n").as_bytes(),
        0o644,
    )?;

    let sans = server_sans(extra_sans);
    let sans_path = dir.join("server.sans");
    let server_pem = dir.join("server.pem");
    let server_key_path = dir.join("server.key");
    let recorded: Option<Vec<String>> = std::fs::read(&sans_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let expires_path = dir.join("server.expires");
    let expires: Option<u64> = std::fs::read_to_string(&expires_path)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let expiring = expires.is_none_or(|e| e <= unix_secs(now) + RENEW_BEFORE.as_secs());
    if expiring && expires.is_some() {
        tracing::info!("the server certificate expires within 30 days: reissuing it");
    }
    if expiring
        || recorded.as_ref() != Some(&sans)
        || !server_pem.exists()
        || !server_key_path.exists()
    {
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            PkiError::Generate {
                what: "the server key",
                source,
            }
        })?;
        let mut params =
            CertificateParams::new(sans.clone()).map_err(|source| PkiError::Generate {
                what: "the server certificate names",
                source,
            })?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "molar");
        dn.push(DnType::CommonName, "molar controller");
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let end = set_validity(&mut params, now, SERVER_VALIDITY);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| PkiError::Generate {
                what: "the server certificate",
                source,
            })?;
        let ca_pem = String::from_utf8_lossy(&read(&ca_pem_path)?).into_owned();
        write_file(&server_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(
            &server_pem,
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
            0o644,
        )?;
        let list = serde_json::to_vec(&sans).unwrap_or_default();
        write_file(&sans_path, &list, 0o644)?;
        write_file(&expires_path, format!("{end}\n").as_bytes(), 0o644)?;
    }
    let server_chain = parse_chain(&server_pem)?;
    let key_data = read(&server_key_path)?;
    let server_key = PrivateKeyDer::from_pem_slice(&key_data).map_err(|e| PkiError::Parse {
        path: server_key_path.clone(),
        msg: e.to_string(),
    })?;
    Ok(Pki {
        ca_pem_path,
        ca_fingerprint,
        created,
        server_chain,
        server_key,
    })
}

/// The rustls provider every TLS endpoint of the controller uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider (reqwest needs one); idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS server configuration for the agent listener and the API.
pub fn server_config(pki: &Pki, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Reads `admin.token`, creating it (32 random bytes, hex, mode 0600) on first start.
pub fn load_or_create_admin_token(dir: &Path) -> Result<Secret> {
    let path = dir.join("admin.token");
    if path.exists() {
        let text = String::from_utf8_lossy(&read(&path)?).trim().to_owned();
        if !text.is_empty() {
            return Ok(Secret::new(text));
        }
    }
    let token = random_hex(32);
    write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(Secret::new(token))
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_later_starts_reuse() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        load_or_create(&dir, &[]).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let dir = tempfile::TempDir::new_in(parent.path()).unwrap();
        let a = load_or_create(dir.path(), &[]).unwrap();
        assert!(a.created);
        assert!(a.ca_fingerprint.starts_with("sha256:"));
        assert_eq!(a.ca_fingerprint.len(), 7 + 64);
        assert_eq!(a.server_chain.len(), 2);
        assert_eq!(a.ca_fingerprint, fingerprint(&a.server_chain[1]));
        for f in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let leaf = a.server_chain[0].clone();
        let b = load_or_create(dir.path(), &[]).unwrap();
        assert!(!b.created);
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        assert_eq!(leaf, b.server_chain[0]);
        // A new name reissues the leaf under the same CA.
        let c = load_or_create(dir.path(), &["molar.example".into()]).unwrap();
        assert_eq!(a.ca_fingerprint, c.ca_fingerprint);
        assert_ne!(leaf, c.server_chain[0]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.sha256")).unwrap(),
            format!("{}\n", a.ca_fingerprint)
        );
        let t1 = load_or_create_admin_token(dir.path()).unwrap();
        let t2 = load_or_create_admin_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.expose().len(), 64);
    }

    /// notBefore and notAfter of a DER certificate, Unix seconds: the first two UTCTimes
    /// (`YYMMDDHHMMSSZ`, years before 2050), which are the TBS validity.
    fn validity(der: &[u8]) -> (u64, u64) {
        let times: Vec<u64> = der
            .windows(15)
            .filter(|w| w[0] == 0x17 && w[1] == 13 && w[14] == b'Z')
            .filter_map(|w| {
                let d = std::str::from_utf8(&w[2..14]).ok()?;
                let n = |i: usize| d[i..i + 2].parse::<i64>().ok();
                let (y, m, day) = (2000 + n(0)?, n(2)?, n(4)?);
                // Days from civil (Howard Hinnant), as in cli::format_time the other way.
                let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
                let era = y.div_euclid(400);
                let yoe = y - era * 400;
                let doy = (153 * m + 2) / 5 + day - 1;
                let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
                let days = era * 146_097 + doe - 719_468;
                Some((days * 86_400 + n(6)? * 3600 + n(8)? * 60 + n(10)?) as u64)
            })
            .collect();
        (times[0], times[1])
    }

    #[test]
    fn certificates_have_sane_validity_and_the_server_one_is_renewed_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_764_547_200); // 2025-12-01
        let a = load_or_create_at(dir.path(), &[], t0).unwrap();
        let now = unix_secs(t0);
        assert_eq!(
            validity(&a.server_chain[1]),
            (now - day, now + 3652 * day),
            "the CA"
        );
        assert_eq!(
            validity(&a.server_chain[0]),
            (now - day, now + 365 * day),
            "the server certificate"
        );
        let expires = std::fs::read_to_string(dir.path().join("server.expires")).unwrap();
        assert_eq!(expires.trim(), (now + 365 * day).to_string());
        // Well before the end: kept.
        let later = t0 + Duration::from_secs(300 * day);
        let b = load_or_create_at(dir.path(), &[], later).unwrap();
        assert_eq!(a.server_chain[0], b.server_chain[0]);
        // Within 30 days of the end: reissued under the same CA, valid from then.
        let late = t0 + Duration::from_secs(340 * day);
        let c = load_or_create_at(dir.path(), &[], late).unwrap();
        assert_ne!(a.server_chain[0], c.server_chain[0]);
        assert_eq!(a.ca_fingerprint, c.ca_fingerprint);
        let late = unix_secs(late);
        assert_eq!(validity(&c.server_chain[0]), (late - day, late + 365 * day));
        // A leaf issued before the expiry was recorded (no server.expires) is reissued too.
        std::fs::remove_file(dir.path().join("server.expires")).unwrap();
        let d = load_or_create_at(dir.path(), &[], UNIX_EPOCH + Duration::from_secs(late)).unwrap();
        assert_ne!(c.server_chain[0], d.server_chain[0]);
    }
}
