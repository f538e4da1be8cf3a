//! IPMI 1.5 sessions over LAN with MD5 authentication (spec 6.12, 13.6, 22.15-22.17), for
//! BMCs without RMCP+ and only where the operator allowed it: the password is the MD5 key of
//! every packet's AuthCode, and messages travel unencrypted.

use md5::{Digest, Md5};

use super::session::ReplayWindow;
use super::{CLASS_IPMI, RMCP_VERSION, RmcpError, need, split_rmcp, u32_at};

pub const AUTH_MD5: u8 = 0x02;

/// The password as the 16-byte key IPMI 1.5 uses, zero padded.
pub fn password_key(password: &[u8]) -> Result<[u8; 16], RmcpError> {
    if password.len() > 16 {
        return Err(RmcpError::PasswordLength(password.len()));
    }
    let mut k = [0u8; 16];
    k[..password.len()].copy_from_slice(password);
    Ok(k)
}

/// Get Session Challenge request (22.16): authentication type, user name (16 bytes).
pub fn encode_get_session_challenge(username: &[u8]) -> Result<[u8; 17], RmcpError> {
    if username.len() > 16 {
        return Err(RmcpError::UserNameLength(username.len()));
    }
    let mut r = [0u8; 17];
    r[0] = AUTH_MD5;
    r[1..1 + username.len()].copy_from_slice(username);
    Ok(r)
}

/// Get Session Challenge response data: temporary session id, challenge string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub temp_session_id: u32,
    pub challenge: [u8; 16],
}

pub fn decode_get_session_challenge(d: &[u8; 20]) -> Challenge {
    let mut challenge = [0u8; 16];
    challenge.copy_from_slice(&d[4..20]);
    Challenge {
        temp_session_id: u32_at(d, 0),
        challenge,
    }
}

/// Activate Session request (22.17): authentication type, privilege, the challenge, and the
/// sequence number the BMC's packets start at (non-zero, random).
pub fn encode_activate_session(challenge: &[u8; 16], privilege: u8, bmc_seq: u32) -> [u8; 22] {
    let mut r = [0u8; 22];
    r[0] = AUTH_MD5;
    r[1] = privilege & 0x0F;
    r[2..18].copy_from_slice(challenge);
    r[18..22].copy_from_slice(&bmc_seq.max(1).to_le_bytes());
    r
}

/// Activate Session response data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    pub auth_type: u8,
    pub session_id: u32,
    /// The sequence number the console's packets start at.
    pub console_seq: u32,
    pub max_privilege: u8,
}

pub fn decode_activate_session(d: &[u8; 10]) -> Activated {
    Activated {
        auth_type: d[0] & 0x0F,
        session_id: u32_at(d, 1),
        console_seq: u32_at(d, 5),
        max_privilege: d[9] & 0x0F,
    }
}

/// The MD5 AuthCode (22.17.1): MD5(password, session id, message, sequence, password).
pub fn md5_auth_code(key: &[u8; 16], session_id: u32, message: &[u8], seq: u32) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(key);
    h.update(session_id.to_le_bytes());
    h.update(message);
    h.update(seq.to_le_bytes());
    h.update(key);
    h.finalize().into()
}

/// An IPMI 1.5 session with MD5 AuthCodes.
pub struct Session15 {
    key: [u8; 16],
    session_id: u32,
    out_seq: u32,
    window: ReplayWindow,
    /// Until Activate Session is answered: its answer may carry the new session id already.
    activating: bool,
}

impl std::fmt::Debug for Session15 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session15")
            .field("session_id", &format_args!("{:#010x}", self.session_id))
            .field("out_seq", &self.out_seq)
            .finish_non_exhaustive()
    }
}

impl Session15 {
    /// The session under the temporary id of Get Session Challenge: it seals the Activate
    /// Session request (sequence 0).
    pub fn new(password: &[u8], temp_session_id: u32) -> Result<Session15, RmcpError> {
        Ok(Session15 {
            key: password_key(password)?,
            session_id: temp_session_id,
            out_seq: 0,
            window: ReplayWindow::default(),
            activating: true,
        })
    }

    /// Switches to the id and sequence numbers Activate Session returned.
    pub fn activated(&mut self, a: &Activated) {
        self.session_id = a.session_id;
        self.out_seq = a.console_seq.max(1);
        self.activating = false;
    }

    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// Seals an IPMI message: the sequence number is taken, then advanced (0 is skipped).
    pub fn seal(&mut self, message: &[u8]) -> Result<Vec<u8>, RmcpError> {
        let len = u8::try_from(message.len()).map_err(|_| RmcpError::TooLong(message.len()))?;
        let seq = self.out_seq;
        if seq != 0 {
            self.out_seq = seq.wrapping_add(1).max(1);
        }
        let mut p = vec![RMCP_VERSION, 0x00, 0xFF, CLASS_IPMI, AUTH_MD5];
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&self.session_id.to_le_bytes());
        p.extend_from_slice(&md5_auth_code(&self.key, self.session_id, message, seq));
        p.push(len);
        p.extend_from_slice(message);
        Ok(p)
    }

    /// Opens an inbound packet of this session: session id, MD5 AuthCode, sequence window.
    pub fn open(&mut self, packet: &[u8]) -> Result<Vec<u8>, RmcpError> {
        let (class, rest) = split_rmcp(packet)?;
        if class != CLASS_IPMI {
            return Err(RmcpError::NotRmcp {
                version: packet[0],
                class,
            });
        }
        need("IPMI 1.5 session header", rest, 9)?;
        if rest[0] != AUTH_MD5 {
            return Err(RmcpError::AuthType(rest[0]));
        }
        let seq = u32_at(rest, 1);
        let sid = u32_at(rest, 5);
        if sid != self.session_id && !self.activating {
            return Err(RmcpError::WrongSession {
                expected: self.session_id,
                got: sid,
            });
        }
        need("IPMI 1.5 AuthCode", rest, 26)?;
        let code = &rest[9..25];
        let len = rest[25] as usize;
        let msg = &rest[26..];
        if msg.len() != len {
            return Err(RmcpError::Length {
                what: "IPMI 1.5 message",
                declared: len,
                got: msg.len(),
            });
        }
        if md5_auth_code(&self.key, sid, msg, seq) != code {
            return Err(RmcpError::Integrity);
        }
        // The Activate Session answer comes with sequence 0, before the window starts.
        if seq != 0 && !self.window.accept(seq) {
            return Err(RmcpError::Replay(seq));
        }
        Ok(msg.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_auth_code_is_the_specs_md5_sandwich() {
        // MD5("pw\0..." + id + msg + seq + "pw\0..."), computed with Python's hashlib:
        // hashlib.md5(k + struct.pack('<I', 0x11223344) + bytes([0x20, 0x18, 0xc8])
        //             + struct.pack('<I', 5) + k).hexdigest(), k = b'pw'.ljust(16, b'\0')
        let k = password_key(b"pw").unwrap();
        let code = md5_auth_code(&k, 0x11223344, &[0x20, 0x18, 0xC8], 5);
        let hex: String = code.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8156c4d696fca23a67f9fc3c882258f7");
    }

    #[test]
    fn sealed_packets_open_and_tampering_is_refused() {
        let mut a = Session15::new(b"secret", 7).unwrap();
        let mut b = Session15::new(b"secret", 7).unwrap();
        a.activated(&Activated {
            auth_type: AUTH_MD5,
            session_id: 9,
            console_seq: 100,
            max_privilege: 4,
        });
        b.session_id = 9;
        b.activating = false;
        let p = a.seal(b"hello").unwrap();
        assert_eq!(&p[5..9], &100u32.to_le_bytes());
        assert_eq!(b.open(&p).unwrap(), b"hello");
        assert_eq!(b.open(&p).unwrap_err(), RmcpError::Replay(100));
        let p = a.seal(b"again").unwrap();
        for i in 0..p.len() {
            if i == 1 || i == 2 {
                continue;
            }
            let mut m = p.clone();
            m[i] ^= 0x04;
            assert!(b.open(&m).is_err(), "byte {i}");
        }
        for len in 0..p.len() {
            assert!(b.open(&p[..len]).is_err());
        }
        assert_eq!(b.open(&p).unwrap(), b"again");
        assert_eq!(
            Session15::new(&[b'x'; 17], 1).unwrap_err(),
            RmcpError::PasswordLength(17)
        );
        assert_eq!(
            encode_get_session_challenge(&[b'u'; 17]).unwrap_err(),
            RmcpError::UserNameLength(17)
        );
    }
}
