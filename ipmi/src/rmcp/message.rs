//! The IPMI message inside a LAN packet (13.8): addresses, network function, sequence,
//! checksums; and the IPMI 1.5 session-less frame pre-session commands travel in.

use super::{AUTH_NONE, CLASS_IPMI, RMCP_VERSION, RmcpError, need, split_rmcp, u32_at};

/// The BMC's slave address and the remote console's software id (table 5-4).
pub const BMC_ADDR: u8 = 0x20;
pub const CONSOLE_SWID: u8 = 0x81;

fn checksum(b: &[u8]) -> u8 {
    (!b.iter().fold(0u8, |a, &x| a.wrapping_add(x))).wrapping_add(1)
}

/// A request message: `rq_seq` (6 bits) lets the BMC tell a retransmission from a new request
/// and lets the console match the answer.
pub fn encode_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(7 + data.len());
    m.push(BMC_ADDR);
    m.push(netfn << 2);
    m.push(checksum(&m[0..2]));
    m.push(CONSOLE_SWID);
    m.push((rq_seq & 0x3F) << 2);
    m.push(cmd);
    m.extend_from_slice(data);
    let c = checksum(&m[3..]);
    m.push(c);
    m
}

/// A decoded response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response network function (the request's plus one).
    pub netfn: u8,
    pub cmd: u8,
    pub rq_seq: u8,
    /// Completion code first, then the data: what [`crate::Transport::request`] returns.
    pub data: Vec<u8>,
}

pub fn decode_response(m: &[u8]) -> Result<Response, RmcpError> {
    // rqAddr, netFn/LUN, checksum, rsAddr, rqSeq/LUN, cmd, completion code, checksum.
    need("IPMI response message", m, 8)?;
    if checksum(&m[0..2]) != m[2] {
        return Err(RmcpError::Checksum("1"));
    }
    let last = m.len() - 1;
    if checksum(&m[3..last]) != m[last] {
        return Err(RmcpError::Checksum("2"));
    }
    Ok(Response {
        netfn: m[1] >> 2,
        cmd: m[5],
        rq_seq: m[4] >> 2,
        data: m[6..last].to_vec(),
    })
}

/// An IPMI 1.5 packet without a session (authentication type none, session id 0), the way
/// Get Channel Authentication Capabilities is sent before any session exists.
pub fn encode_sessionless(message: &[u8]) -> Vec<u8> {
    let mut p = vec![RMCP_VERSION, 0x00, 0xFF, CLASS_IPMI, AUTH_NONE];
    p.extend_from_slice(&[0; 8]); // sequence number, session id
    p.push(message.len() as u8);
    p.extend_from_slice(message);
    p
}

/// The message of an IPMI 1.5 session-less packet (authentication type none).
pub fn decode_sessionless(b: &[u8]) -> Result<&[u8], RmcpError> {
    let (class, rest) = split_rmcp(b)?;
    if class != CLASS_IPMI {
        return Err(RmcpError::NotRmcp {
            version: b[0],
            class,
        });
    }
    need("IPMI 1.5 session header", rest, 10)?;
    if rest[0] != AUTH_NONE {
        return Err(RmcpError::AuthType(rest[0]));
    }
    let session = u32_at(rest, 5);
    if session != 0 {
        return Err(RmcpError::WrongSession {
            expected: 0,
            got: session,
        });
    }
    let len = rest[9] as usize;
    let msg = &rest[10..];
    if msg.len() < len {
        return Err(RmcpError::Length {
            what: "IPMI 1.5 message",
            declared: len,
            got: msg.len(),
        });
    }
    Ok(&msg[..len])
}
