//! How the controller trusts a Redfish BMC's certificate: a CA file, a pinned SHA-256
//! fingerprint of the BMC's own certificate, or explicitly nothing (`insecure`, labs). BMCs
//! ship self-signed certificates, so without any of these the handshake is refused and the
//! error carries the fingerprint the BMC presented, for the operator to confirm.

use crate::oob::BmcTrust;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex};

/// `sha256:` + 64 lowercase hex digits from what an operator typed: with or without the
/// prefix, upper or lower case, with or without `:` between bytes.
pub fn normalise_fingerprint(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "BMC fingerprint {:?} is not a SHA-256 fingerprint (64 hex digits, optionally \
             prefixed sha256: and separated by ':')",
            text.escape_debug().to_string()
        ));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Checks a CA file's PEM: at least one certificate.
pub fn check_ca_pem(pem: &str) -> Result<(), String> {
    let n = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the BMC CA file is not PEM certificates: {e}"))?
        .len();
    if n == 0 {
        return Err("the BMC CA file holds no certificate".into());
    }
    Ok(())
}

/// The verifier for one BMC, and where it records the fingerprint it saw.
pub struct Verifier {
    provider: Arc<CryptoProvider>,
    mode: Mode,
    /// The fingerprint of the last certificate this verifier refused.
    pub refused: Refused,
}

enum Mode {
    Pinned(String),
    Insecure,
    Ca(Arc<rustls::client::WebPkiServerVerifier>),
    /// No trust configured: every certificate is refused (its fingerprint recorded).
    Unset,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redfish::Verifier")
    }
}

impl Verifier {
    pub fn new(trust: Option<&BmcTrust>) -> Result<Verifier, String> {
        let provider = crate::pki::provider();
        let mode = match trust {
            None => Mode::Unset,
            Some(BmcTrust::Insecure) => Mode::Insecure,
            Some(BmcTrust::Fingerprint(f)) => Mode::Pinned(normalise_fingerprint(f)?),
            Some(BmcTrust::Ca(pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let c = c.map_err(|e| format!("the BMC CA is not PEM: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("the BMC CA certificate is unusable: {e}"))?;
                }
                let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("the BMC CA is unusable: {e}"))?;
                Mode::Ca(v)
            }
        };
        Ok(Verifier {
            provider,
            mode,
            refused: Arc::new(Mutex::new(None)),
        })
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = crate::pki::fingerprint(end_entity);
        let r = match &self.mode {
            Mode::Insecure => Ok(ServerCertVerified::assertion()),
            Mode::Pinned(want) if *want == fp => Ok(ServerCertVerified::assertion()),
            Mode::Pinned(_) | Mode::Unset => Err(rustls::Error::General(format!(
                "certificate {fp} is not trusted"
            ))),
            Mode::Ca(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
        };
        if r.is_err()
            && let Ok(mut s) = self.refused.lock()
        {
            *s = Some(fp);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where a verifier records the fingerprint of a certificate it refused.
pub type Refused = Arc<Mutex<Option<String>>>;

/// A rustls client configuration that trusts the BMC the way `trust` says.
pub fn client_config(trust: Option<&BmcTrust>) -> Result<(rustls::ClientConfig, Refused), String> {
    let v = Verifier::new(trust)?;
    let seen = v.refused.clone();
    let cfg = rustls::ClientConfig::builder_with_provider(crate::pki::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_no_client_auth();
    Ok((cfg, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let hex = "AB".repeat(32);
        let want = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(normalise_fingerprint(&hex).unwrap(), want);
        assert_eq!(
            normalise_fingerprint(&format!("sha256:{}", "ab".repeat(32))).unwrap(),
            want
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalise_fingerprint(&colons).unwrap(), want);
        for bad in ["", "sha256:", &"ab".repeat(31), &"zz".repeat(32), "md5:00"] {
            assert!(normalise_fingerprint(bad).is_err(), "{bad}");
        }
        assert!(check_ca_pem("not pem").is_err());
    }
}
