//! The algorithms of the two cipher suites this client speaks (table 22-20): suite 3
//! (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) and suite 17 (RAKP-HMAC-SHA256,
//! HMAC-SHA256-128, AES-CBC-128). Both encrypt with AES-CBC-128 (13.29).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, Mac};

use super::RmcpError;

/// A cipher suite this client can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// Suite 3: SHA-1 RAKP, HMAC-SHA1-96 integrity, AES-CBC-128.
    Three,
    /// Suite 17: SHA-256 RAKP, HMAC-SHA256-128 integrity, AES-CBC-128.
    Seventeen,
}

/// Algorithm numbers of the Open Session payloads (13.28).
pub const AUTH_RAKP_HMAC_SHA1: u8 = 0x01;
pub const AUTH_RAKP_HMAC_SHA256: u8 = 0x03;
pub const INTEGRITY_HMAC_SHA1_96: u8 = 0x01;
pub const INTEGRITY_HMAC_SHA256_128: u8 = 0x04;
pub const CONFIDENTIALITY_AES_CBC_128: u8 = 0x01;

impl Suite {
    pub fn id(self) -> u8 {
        match self {
            Suite::Three => 3,
            Suite::Seventeen => 17,
        }
    }

    pub fn from_id(id: u8) -> Result<Suite, RmcpError> {
        match id {
            3 => Ok(Suite::Three),
            17 => Ok(Suite::Seventeen),
            other => Err(RmcpError::CipherSuite(other)),
        }
    }

    pub fn auth_alg(self) -> u8 {
        match self {
            Suite::Three => AUTH_RAKP_HMAC_SHA1,
            Suite::Seventeen => AUTH_RAKP_HMAC_SHA256,
        }
    }

    pub fn integrity_alg(self) -> u8 {
        match self {
            Suite::Three => INTEGRITY_HMAC_SHA1_96,
            Suite::Seventeen => INTEGRITY_HMAC_SHA256_128,
        }
    }

    /// The HMAC of the suite's RAKP algorithm (RAKP 2/3 codes, SIK, K1, K2).
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Suite::Three => hmac_sha1(key, parts),
            Suite::Seventeen => hmac_sha256(key, parts),
        }
    }

    /// Length of the HMAC output: of the RAKP 2/3 codes and of SIK, K1, K2.
    pub fn hmac_len(self) -> usize {
        match self {
            Suite::Three => 20,
            Suite::Seventeen => 32,
        }
    }

    /// RAKP 4's integrity check value: the HMAC truncated to 96 or 128 bits (13.28.1b/4).
    pub fn icv_len(self) -> usize {
        match self {
            Suite::Three => 12,
            Suite::Seventeen => 16,
        }
    }

    /// Length of a packet's AuthCode: HMAC-SHA1-96 and HMAC-SHA256-128.
    pub fn auth_code_len(self) -> usize {
        self.icv_len()
    }
}

pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = match Hmac::<sha1::Sha1>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("hmac accepts any key length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("hmac accepts any key length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

type Enc = cbc::Encryptor<aes::Aes128>;
type Dec = cbc::Decryptor<aes::Aes128>;

/// AES-CBC-128 with the spec's padding (13.29): pad bytes 1, 2, 3, ... then the pad length,
/// so that data, pad and pad length fill whole blocks. Returns IV then ciphertext.
pub fn aes_encrypt(k2: &[u8], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let pad = (16 - (data.len() + 1) % 16) % 16;
    let mut buf = Vec::with_capacity(16 + data.len() + pad + 1);
    buf.extend_from_slice(data);
    for i in 1..=pad {
        buf.push(i as u8);
    }
    buf.push(pad as u8);
    let key: [u8; 16] = first16(k2);
    let len = buf.len();
    let enc = Enc::new(&key.into(), iv.into());
    // The buffer is a whole number of blocks by construction.
    let ct = match enc.encrypt_padded_mut::<NoPadding>(&mut buf, len) {
        Ok(ct) => ct.to_vec(),
        Err(_) => unreachable!("buffer is block aligned"),
    };
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// Reverses [`aes_encrypt`]: `payload` is IV then ciphertext.
pub fn aes_decrypt(k2: &[u8], payload: &[u8]) -> Result<Vec<u8>, RmcpError> {
    if payload.len() < 32 || !payload.len().is_multiple_of(16) {
        return Err(RmcpError::CipherLength(payload.len()));
    }
    let (iv, ct) = payload.split_at(16);
    let key: [u8; 16] = first16(k2);
    let iv: [u8; 16] = first16(iv);
    let mut buf = ct.to_vec();
    let dec = Dec::new(&key.into(), &iv.into());
    let len = dec
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| RmcpError::CipherLength(payload.len()))?
        .len();
    buf.truncate(len);
    let Some(&pad) = buf.last() else {
        return Err(RmcpError::Padding);
    };
    let pad = pad as usize;
    if pad > 15 || pad + 1 > buf.len() {
        return Err(RmcpError::Padding);
    }
    let data_len = buf.len() - pad - 1;
    // The spec's pad bytes are 1, 2, 3, ...; a BMC that pads otherwise is refused rather
    // than guessed at, since the bytes are under the integrity code anyway.
    if buf[data_len..data_len + pad]
        .iter()
        .enumerate()
        .any(|(i, &b)| b as usize != i + 1)
    {
        return Err(RmcpError::Padding);
    }
    buf.truncate(data_len);
    Ok(buf)
}

fn first16(b: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 16];
    let n = b.len().min(16);
    k[..n].copy_from_slice(&b[..n]);
    k
}
