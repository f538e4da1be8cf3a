//! Dialing the controller: TCP with keepalive and NODELAY, then TLS verified against the
//! controller's CA, given either as a PEM file (`--ca`) or pinned by the SHA-256 fingerprint of
//! its certificate (`molar.ca=sha256:...` on the ramdisk's kernel command line). Plaintext only
//! with the explicit insecure flag.
//!
//! Fingerprint pinning: the controller sends its chain (leaf, then CA). The verifier looks for
//! the certificate whose fingerprint was pinned and then verifies the leaf against it with
//! webpki as if it were the only trusted root, so name and validity checks still apply.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How the agent trusts the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Verify against the CA certificate(s) in this PEM file.
    CaFile(PathBuf),
    /// Verify against the CA certificate with this SHA-256 fingerprint, found in the chain.
    Fingerprint([u8; 32]),
    /// No TLS at all (lab only).
    Insecure,
}

impl Trust {
    /// Parses `sha256:HEX64` (colons between bytes tolerated).
    pub fn parse_fingerprint(s: &str) -> Result<Trust, TlsError> {
        let hex_part = s.strip_prefix("sha256:").ok_or_else(|| {
            TlsError::BadFingerprint(format!("{s:?} does not start with \"sha256:\""))
        })?;
        let clean: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&clean)
            .map_err(|e| TlsError::BadFingerprint(format!("{s:?} is not hex: {e}")))?;
        let fp: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            TlsError::BadFingerprint(format!("{s:?} has {} bytes, a SHA-256 has 32", b.len()))
        })?;
        Ok(Trust::Fingerprint(fp))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid CA fingerprint: {0}")]
    BadFingerprint(String),
    #[error("reading CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    EmptyCa(PathBuf),
    #[error("invalid controller address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("resolving {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("building TLS configuration: {0}")]
    Config(String),
}

/// A connected stream, TLS or plaintext.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration once per session attempt.
pub fn client_config(trust: &Trust) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match trust {
        Trust::Insecure => return Ok(None),
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
                path: path.clone(),
                source,
            })?;
            let mut roots = RootCertStore::empty();
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: CertificateDer<'static> = match cert {
                    Ok(c) => c,
                    Err(_) => return Err(TlsError::EmptyCa(path.clone())),
                };
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::EmptyCa(path.clone()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint: *fp,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// Splits `HOST:PORT` (or `[V6]:PORT`) into the host used for TLS name checks and the port.
pub fn split_addr(addr: &str) -> Result<(String, u16), TlsError> {
    let bad = || TlsError::BadAddress(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn set_keepalive(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Best effort: a connection without keepalive still works, it only notices a dead
    // controller later (the 60 s protocol idle timeout covers it).
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

/// Dials the controller at `addr` and performs the TLS handshake when `config` is given.
pub async fn connect(
    addr: &str,
    config: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Box<dyn Io>, TlsError> {
    let (host, port) = split_addr(addr)?;
    let dial = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| TlsError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(TlsError::Connect {
            addr: addr.to_owned(),
            source: last.unwrap_or_else(|| std::io::Error::other("no address")),
        })
    };
    let tcp = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| TlsError::ConnectTimeout(addr.to_owned()))??;
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    let Some(config) = config else {
        return Ok(Box::new(tcp));
    };
    let name =
        ServerName::try_from(host.clone()).map_err(|_| TlsError::BadAddress(addr.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| TlsError::ConnectTimeout(addr.to_owned()))?
        .map_err(|source| TlsError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(Box::new(tls))
}

/// Verifies the server against the CA whose fingerprint was pinned.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    /// Built once, not at every handshake.
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the controller's chain holds no certificate with the pinned fingerprint"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA is not usable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| sha256(c) != self.fingerprint)
            .cloned()
            .collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_or_say_why_not() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            Trust::parse_fingerprint(&format!("sha256:{hex64}")).unwrap(),
            Trust::Fingerprint([0xab; 32])
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            Trust::parse_fingerprint(&format!("sha256:{colons}")).unwrap(),
            Trust::Fingerprint([0xab; 32])
        );
        assert_eq!(
            Trust::parse_fingerprint("md5:00").unwrap_err().to_string(),
            "invalid CA fingerprint: \"md5:00\" does not start with \"sha256:\""
        );
        assert_eq!(
            Trust::parse_fingerprint("sha256:abcd")
                .unwrap_err()
                .to_string(),
            "invalid CA fingerprint: \"sha256:abcd\" has 2 bytes, a SHA-256 has 32"
        );
        assert!(Trust::parse_fingerprint("sha256:zz").is_err());
    }

    #[test]
    fn addresses_split_or_say_why_not() {
        assert_eq!(
            split_addr("127.0.0.1:9000").unwrap(),
            ("127.0.0.1".into(), 9000)
        );
        assert_eq!(split_addr("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(
            split_addr("ctl.example:1").unwrap(),
            ("ctl.example".into(), 1)
        );
        for bad in ["", "host", "host:", ":9000", "host:0", "host:99999"] {
            assert_eq!(
                split_addr(bad).unwrap_err().to_string(),
                format!("invalid controller address {bad:?}: expected HOST:PORT")
            );
        }
    }

    #[test]
    fn missing_or_empty_ca_file_is_named() {
        let err = client_config(&Trust::CaFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading CA file /nonexistent/ca.pem: ")
        );
        let t = tempfile::NamedTempFile::new().unwrap();
        let err = client_config(&Trust::CaFile(t.path().into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CA file {} holds no usable certificate", t.path().display())
        );
    }
}
