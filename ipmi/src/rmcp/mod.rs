//! RMCP and RMCP+ (IPMI v2.0 over LAN, spec sections 13 and 22), as bytes in and bytes out.
//!
//! The caller owns the socket, the clock and the randomness: [`session::Handshake`] turns the
//! BMC's answers into the next packet to send, and [`session::Session`] seals and opens
//! packets of an active session (any payload type: IPMI messages, SOL). Random values (the
//! console's session id, Rm, the AES IVs) come in as arguments so tests are deterministic and
//! this crate keeps its invariant: no I/O, no async runtime.
//!
//! Every decoder here takes bytes from the network: it checks each length before reading and
//! returns an [`RmcpError`] naming what is wrong, never panics.

pub mod crypto;
pub mod message;
pub mod session;
pub mod v15;

#[cfg(test)]
mod tests;

/// RMCP header (13.1.3): version 6, reserved, sequence 0xFF (no RMCP ACK), class.
pub const RMCP_VERSION: u8 = 0x06;
pub const CLASS_ASF: u8 = 0x06;
pub const CLASS_IPMI: u8 = 0x07;

/// Session header authentication types (13.6): 0x06 marks an RMCP+ (IPMI 2.0) packet.
pub const AUTH_NONE: u8 = 0x00;
pub const AUTH_RMCP_PLUS: u8 = 0x06;

/// Payload types (13.27.3).
pub mod payload {
    pub const IPMI: u8 = 0x00;
    pub const SOL: u8 = 0x01;
    pub const OPEN_SESSION_REQUEST: u8 = 0x10;
    pub const OPEN_SESSION_RESPONSE: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
}

/// Why bytes from a BMC are not a packet this client can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RmcpError {
    #[error("packet truncated: {what} needs {needed} bytes, {got} present")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("not an RMCP packet (version {version:#04x}, class {class:#04x})")]
    NotRmcp { version: u8, class: u8 },
    #[error("unexpected session authentication type {0:#04x}")]
    AuthType(u8),
    #[error("{what}: length field says {declared} bytes, {got} present")]
    Length {
        what: &'static str,
        declared: usize,
        got: usize,
    },
    #[error("integrity check failed: the packet's authentication code does not match")]
    Integrity,
    #[error("packet for session {got:#010x}, this session is {expected:#010x}")]
    WrongSession { expected: u32, got: u32 },
    #[error("unauthenticated packet inside an authenticated session")]
    Unauthenticated,
    #[error("bad confidentiality padding")]
    Padding,
    #[error("encrypted payload of {0} bytes is not a whole number of AES blocks")]
    CipherLength(usize),
    #[error("session sequence number {0} replayed or outside the acceptance window")]
    Replay(u32),
    #[error("unexpected payload type {got:#04x}, expected {expected:#04x}")]
    PayloadType { expected: u8, got: u8 },
    #[error("message tag {got} does not answer request tag {expected}")]
    MessageTag { expected: u8, got: u8 },
    #[error("{step} refused: {} (status {code:#04x})", status_meaning(*code))]
    Status { step: &'static str, code: u8 },
    #[error("the BMC's session id in {0} does not match")]
    SessionId(&'static str),
    #[error(
        "login failed: the BMC's RAKP 2 key exchange code does not match (wrong password, or \
         a BMC key K_G is set)"
    )]
    Rakp2AuthCode,
    #[error("the BMC's RAKP 4 integrity check value does not match")]
    Rakp4Icv,
    #[error("the BMC chose {what} algorithm {got:#04x}, not the requested {expected:#04x}")]
    Algorithm {
        what: &'static str,
        expected: u8,
        got: u8,
    },
    #[error("unsupported cipher suite {0} (supported: 17, 3)")]
    CipherSuite(u8),
    #[error("user name of {0} bytes is longer than 16")]
    UserNameLength(usize),
    #[error("password of {0} bytes is longer than 20")]
    PasswordLength(usize),
    #[error("IPMI message checksum {0} is wrong")]
    Checksum(&'static str),
    #[error("payload of {0} bytes does not fit an RMCP+ packet")]
    TooLong(usize),
}

/// RMCP+ and RAKP message status codes (table 13-15).
pub fn status_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "no errors",
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session id",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session id",
        0x09 => "invalid role",
        0x0A => "unauthorized role or privilege level requested",
        0x0B => "insufficient resources to create a session at the requested role",
        0x0C => "invalid name length",
        0x0D => "unauthorized name",
        0x0E => "unauthorized GUID",
        0x0F => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "reserved status code",
    }
}

pub(crate) fn need(what: &'static str, b: &[u8], needed: usize) -> Result<(), RmcpError> {
    if b.len() < needed {
        Err(RmcpError::Truncated {
            what,
            needed,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks the RMCP header and returns its class and the bytes after it.
pub fn split_rmcp(b: &[u8]) -> Result<(u8, &[u8]), RmcpError> {
    need("RMCP header", b, 4)?;
    if b[0] != RMCP_VERSION {
        return Err(RmcpError::NotRmcp {
            version: b[0],
            class: b[3],
        });
    }
    // Bit 7 would make it an RMCP ACK, bits 6:5 are reserved: only plain messages are taken.
    let class = b[3];
    if class != CLASS_ASF && class != CLASS_IPMI {
        return Err(RmcpError::NotRmcp {
            version: b[0],
            class: b[3],
        });
    }
    Ok((class, &b[4..]))
}

/// The RMCP/ASF presence ping (13.2.3): answers whether anything speaks RMCP on the port.
pub fn encode_asf_ping(tag: u8) -> Vec<u8> {
    vec![
        RMCP_VERSION,
        0x00,
        0xFF,
        CLASS_ASF,
        0x00,
        0x00,
        0x11,
        0xBE, // ASF IANA 4542
        0x80, // presence ping
        tag,
        0x00,
        0x00,
    ]
}

/// What an ASF presence pong says (13.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub tag: u8,
    /// The entities support IPMI (supported entities bit 7).
    pub ipmi: bool,
    /// RMCP security extensions, i.e. RMCP+ (supported interactions bit 5).
    pub rmcp_plus: bool,
}

pub fn decode_asf_pong(b: &[u8]) -> Result<Pong, RmcpError> {
    let (class, rest) = split_rmcp(b)?;
    if class != CLASS_ASF {
        return Err(RmcpError::NotRmcp {
            version: b[0],
            class,
        });
    }
    need("ASF pong", rest, 8)?;
    if rest[4] != 0x40 {
        return Err(RmcpError::PayloadType {
            expected: 0x40,
            got: rest[4],
        });
    }
    let tag = rest[5];
    let len = rest[7] as usize;
    let data = &rest[8..];
    if data.len() < len || len < 10 {
        return Err(RmcpError::Length {
            what: "ASF pong",
            declared: len,
            got: data.len(),
        });
    }
    Ok(Pong {
        tag,
        ipmi: data[8] & 0x80 != 0,
        rmcp_plus: data[9] & 0x20 != 0,
    })
}
