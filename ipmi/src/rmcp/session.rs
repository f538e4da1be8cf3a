//! The RMCP+ session: the four-message handshake (Open Session, RAKP 1-4, 13.17-13.23) as a
//! state machine the caller feeds with received packets, and the active [`Session`] that
//! seals and opens packets of any payload type, with integrity, AES-CBC-128 and the
//! sequence-number replay window (6.12.13).

use super::crypto::{CONFIDENTIALITY_AES_CBC_128, Suite, aes_decrypt, aes_encrypt};
use super::{
    AUTH_RMCP_PLUS, CLASS_IPMI, RMCP_VERSION, RmcpError, need, payload, split_rmcp, u32_at,
};

/// Byte 5 of the session header: bit 7 encrypted, bit 6 authenticated, bits 5:0 the type.
const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;
/// The "next header" byte after the integrity pad (13.6): always 0x07.
const NEXT_HEADER: u8 = 0x07;
/// RAKP 1 role byte bit 4: look the user up by name only, not by name and privilege, as
/// ipmitool does by default; BMCs then grant up to the user's own privilege.
const NAME_ONLY_LOOKUP: u8 = 0x10;

/// An RMCP+ packet's session header and payload, integrity not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub encrypted: bool,
    pub authenticated: bool,
    pub payload_type: u8,
    pub session_id: u32,
    pub seq: u32,
    pub payload: &'a [u8],
    /// Authentication type through the next-header byte: what the AuthCode covers.
    pub integrity_data: &'a [u8],
    /// Bytes after the next-header byte (the AuthCode), empty when not authenticated.
    pub auth_code: &'a [u8],
}

/// Splits an RMCP+ packet (authentication type 0x06) into its parts.
pub fn parse_frame(b: &[u8]) -> Result<Frame<'_>, RmcpError> {
    let (class, rest) = split_rmcp(b)?;
    if class != CLASS_IPMI {
        return Err(RmcpError::NotRmcp {
            version: b[0],
            class,
        });
    }
    need("RMCP+ session header", rest, 12)?;
    if rest[0] != AUTH_RMCP_PLUS {
        return Err(RmcpError::AuthType(rest[0]));
    }
    let ptype = rest[1];
    let payload_type = ptype & 0x3F;
    // OEM explicit payloads (type 2) carry 6 more header bytes; no BMC this client talks to
    // sends them to a console, so they are refused rather than misparsed.
    if payload_type == 0x02 {
        return Err(RmcpError::PayloadType {
            expected: payload::IPMI,
            got: payload_type,
        });
    }
    let session_id = u32_at(rest, 2);
    let seq = u32_at(rest, 6);
    let len = u16::from_le_bytes([rest[10], rest[11]]) as usize;
    let body = &rest[12..];
    if body.len() < len {
        return Err(RmcpError::Length {
            what: "RMCP+ payload",
            declared: len,
            got: body.len(),
        });
    }
    let payload = &body[..len];
    let authenticated = ptype & AUTHENTICATED != 0;
    let (integrity_data, auth_code) = if authenticated {
        // Trailer: pad (0xFF), pad length, next header, AuthCode. The pad makes the
        // integrity data a multiple of 4 bytes, so its length follows from the payload's.
        let covered = 12 + len;
        let pad = (4 - (covered + 2) % 4) % 4;
        let end = covered + pad + 2;
        need("RMCP+ integrity trailer", rest, end)?;
        if rest[end - 2] as usize != pad || rest[end - 1] != NEXT_HEADER {
            return Err(RmcpError::Padding);
        }
        (&rest[..end], &rest[end..])
    } else {
        (&rest[..12 + len], &rest[12 + len..12 + len])
    };
    Ok(Frame {
        encrypted: ptype & ENCRYPTED != 0,
        authenticated,
        payload_type,
        session_id,
        seq,
        payload,
        integrity_data,
        auth_code,
    })
}

/// A packet outside a session (session id and sequence 0, no integrity): the handshake's.
pub fn presession_packet(payload_type: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![
        RMCP_VERSION,
        0x00,
        0xFF,
        CLASS_IPMI,
        AUTH_RMCP_PLUS,
        payload_type,
    ];
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.extend_from_slice(body);
    p
}

/// What a login uses. The password is only ever a key: it is in no packet and no error.
#[derive(Clone)]
pub struct Login {
    pub username: Vec<u8>,
    pub password: Vec<u8>,
    /// The privilege level asked for (`Privilege::code`).
    pub privilege: u8,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .field("privilege", &self.privilege)
            .finish()
    }
}

#[derive(Debug, Clone)]
enum State {
    OpenSent,
    Rakp1Sent {
        managed_sid: u32,
    },
    Rakp3Sent {
        managed_sid: u32,
        sik: Vec<u8>,
        guid: [u8; 16],
    },
    Done,
}

/// The outcome of feeding the handshake one packet.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes next (and resend them if no answer comes).
    Send(Vec<u8>),
    /// The packet answers nothing outstanding (a late duplicate): wait for the next one.
    Ignore,
    /// The session is active.
    Established(Box<Session>),
}

/// The RMCP+ handshake for one cipher suite.
#[derive(Debug)]
pub struct Handshake {
    suite: Suite,
    login: Login,
    role: u8,
    console_sid: u32,
    rm: [u8; 16],
    tag: u8,
    state: State,
    last_sent: Vec<u8>,
    abort: Option<Vec<u8>>,
}

impl Handshake {
    /// Starts a handshake: returns it and the Open Session Request to send. `console_sid`
    /// (non-zero) and `rm` must be random; `tag` is any byte, echoed by the BMC.
    pub fn start(
        suite: Suite,
        login: Login,
        console_sid: u32,
        rm: [u8; 16],
        tag: u8,
    ) -> Result<(Handshake, Vec<u8>), RmcpError> {
        if login.username.len() > 16 {
            return Err(RmcpError::UserNameLength(login.username.len()));
        }
        if login.password.len() > 20 {
            return Err(RmcpError::PasswordLength(login.password.len()));
        }
        let mut body = vec![tag, login.privilege & 0x0F, 0, 0];
        body.extend_from_slice(&console_sid.to_le_bytes());
        for (kind, alg) in [
            (0x00, suite.auth_alg()),
            (0x01, suite.integrity_alg()),
            (0x02, CONFIDENTIALITY_AES_CBC_128),
        ] {
            body.extend_from_slice(&[kind, 0, 0, 0x08, alg, 0, 0, 0]);
        }
        let packet = presession_packet(payload::OPEN_SESSION_REQUEST, &body);
        let role = (login.privilege & 0x0F) | NAME_ONLY_LOOKUP;
        Ok((
            Handshake {
                suite,
                login,
                role,
                console_sid,
                rm,
                tag,
                state: State::OpenSent,
                last_sent: packet.clone(),
                abort: None,
            },
            packet,
        ))
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The last packet sent, for a retransmission when its answer is late.
    /// After a RAKP 2 that failed the check: the RAKP 3 with an error status to send so
    /// that the BMC drops the session (best effort; nothing answers it).
    pub fn abort_packet(&self) -> Option<&[u8]> {
        self.abort.as_deref()
    }

    pub fn last_sent(&self) -> &[u8] {
        &self.last_sent
    }

    /// Feeds one received packet. Errors are final for this handshake: a refusal by the
    /// BMC, or an answer that proves the login wrong. Packets that answer nothing
    /// outstanding give [`Step::Ignore`].
    pub fn on_packet(&mut self, packet: &[u8]) -> Result<Step, RmcpError> {
        let frame = match parse_frame(packet) {
            Ok(f) => f,
            // Not an RMCP+ packet (e.g. a stray IPMI 1.5 answer): nothing to do with it.
            Err(_) => return Ok(Step::Ignore),
        };
        if frame.authenticated {
            return self.in_session_rakp4(&frame, packet);
        }
        if frame.session_id != 0 || frame.encrypted {
            return Ok(Step::Ignore);
        }
        let p = frame.payload;
        let expected = match self.state {
            State::OpenSent => payload::OPEN_SESSION_RESPONSE,
            State::Rakp1Sent { .. } => payload::RAKP2,
            State::Rakp3Sent { .. } => payload::RAKP4,
            State::Done => return Ok(Step::Ignore),
        };
        if frame.payload_type != expected {
            return Ok(Step::Ignore);
        }
        need("RMCP+ handshake message", p, 2)?;
        if p[0] != self.tag {
            return Ok(Step::Ignore);
        }
        let step_name = match expected {
            payload::OPEN_SESSION_RESPONSE => "open session",
            payload::RAKP2 => "RAKP 2",
            _ => "RAKP 4",
        };
        if p[1] != 0 {
            self.state = State::Done;
            return Err(RmcpError::Status {
                step: step_name,
                code: p[1],
            });
        }
        match self.state.clone() {
            State::OpenSent => self.open_session_response(p),
            State::Rakp1Sent { managed_sid } => self.rakp2(p, managed_sid),
            State::Rakp3Sent {
                managed_sid,
                sik,
                guid,
            } => self.rakp4(p, managed_sid, sik, guid),
            State::Done => Ok(Step::Ignore),
        }
    }

    fn open_session_response(&mut self, p: &[u8]) -> Result<Step, RmcpError> {
        need("open session response", p, 36)?;
        if u32_at(p, 4) != self.console_sid {
            return Err(RmcpError::SessionId("the open session response"));
        }
        let managed_sid = u32_at(p, 8);
        for (at, what, expected) in [
            (12, "authentication", self.suite.auth_alg()),
            (20, "integrity", self.suite.integrity_alg()),
            (28, "confidentiality", CONFIDENTIALITY_AES_CBC_128),
        ] {
            let got = p[at + 4] & 0x3F;
            if got != expected {
                return Err(RmcpError::Algorithm {
                    what,
                    expected,
                    got,
                });
            }
        }
        let mut body = vec![self.tag, 0, 0, 0];
        body.extend_from_slice(&managed_sid.to_le_bytes());
        body.extend_from_slice(&self.rm);
        body.extend_from_slice(&[self.role, 0, 0, self.login.username.len() as u8]);
        body.extend_from_slice(&self.login.username);
        let packet = presession_packet(payload::RAKP1, &body);
        self.state = State::Rakp1Sent { managed_sid };
        self.last_sent = packet.clone();
        Ok(Step::Send(packet))
    }

    fn rakp2(&mut self, p: &[u8], managed_sid: u32) -> Result<Step, RmcpError> {
        let n = self.suite.hmac_len();
        need("RAKP 2", p, 40 + n)?;
        if u32_at(p, 4) != self.console_sid {
            return Err(RmcpError::SessionId("RAKP 2"));
        }
        let rc = &p[8..24];
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&p[24..40]);
        let code = &p[40..40 + n];
        let name = &self.login.username;
        let ulen = [name.len() as u8];
        let expected = rakp2_auth_code(
            self.suite,
            &self.login.password,
            self.console_sid,
            managed_sid,
            &self.rm,
            rc,
            &guid,
            self.role,
            name,
        );
        if !ct_eq(&expected, code) {
            self.state = State::Done;
            // RAKP 3's status reports the console's verdict on RAKP 2 (13.22): with an
            // error the BMC frees the half-open session at once instead of at its timeout.
            let mut body = vec![self.tag, 0x0F, 0, 0];
            body.extend_from_slice(&managed_sid.to_le_bytes());
            self.abort = Some(presession_packet(payload::RAKP3, &body));
            return Err(RmcpError::Rakp2AuthCode);
        }
        let kuid = &self.login.password;
        let sik = self
            .suite
            .hmac(kuid, &[&self.rm, rc, &[self.role], &ulen, name]);
        let rakp3_code = self.suite.hmac(
            kuid,
            &[
                rc,
                &self.console_sid.to_le_bytes(),
                &[self.role],
                &ulen,
                name,
            ],
        );
        let mut body = vec![self.tag, 0, 0, 0];
        body.extend_from_slice(&managed_sid.to_le_bytes());
        body.extend_from_slice(&rakp3_code);
        let packet = presession_packet(payload::RAKP3, &body);
        self.state = State::Rakp3Sent {
            managed_sid,
            sik,
            guid,
        };
        self.last_sent = packet.clone();
        Ok(Step::Send(packet))
    }

    /// A lost RAKP 4 and a retransmitted RAKP 3: the BMC has activated the session, and
    /// some (ipmi_sim) answer the repeat with RAKP 4 inside the session, authenticated and
    /// encrypted. Opening it with the session's keys proves the BMC holds them; its ICV is
    /// checked as a plain RAKP 4's would be.
    fn in_session_rakp4(&mut self, frame: &Frame<'_>, packet: &[u8]) -> Result<Step, RmcpError> {
        let State::Rakp3Sent {
            managed_sid,
            sik,
            guid,
        } = self.state.clone()
        else {
            return Ok(Step::Ignore);
        };
        if frame.session_id != self.console_sid {
            return Ok(Step::Ignore);
        }
        let mut session = Session::new(self.suite, self.console_sid, managed_sid, &sik, guid);
        let Ok((ptype, body)) = session.open(packet) else {
            return Ok(Step::Ignore);
        };
        if ptype != payload::RAKP4 || body.len() < 2 || body[0] != self.tag {
            return Ok(Step::Ignore);
        }
        if body[1] != 0 {
            self.state = State::Done;
            return Err(RmcpError::Status {
                step: "RAKP 4",
                code: body[1],
            });
        }
        self.check_rakp4(&body, managed_sid, &sik, &guid)?;
        self.state = State::Done;
        Ok(Step::Established(Box::new(session)))
    }

    fn check_rakp4(
        &mut self,
        p: &[u8],
        managed_sid: u32,
        sik: &[u8],
        guid: &[u8; 16],
    ) -> Result<(), RmcpError> {
        let n = self.suite.icv_len();
        need("RAKP 4", p, 8 + n)?;
        if u32_at(p, 4) != self.console_sid {
            return Err(RmcpError::SessionId("RAKP 4"));
        }
        let icv = self
            .suite
            .hmac(sik, &[&self.rm, &managed_sid.to_le_bytes(), guid]);
        if !ct_eq(&icv[..n], &p[8..8 + n]) {
            self.state = State::Done;
            return Err(RmcpError::Rakp4Icv);
        }
        Ok(())
    }

    fn rakp4(
        &mut self,
        p: &[u8],
        managed_sid: u32,
        sik: Vec<u8>,
        guid: [u8; 16],
    ) -> Result<Step, RmcpError> {
        self.check_rakp4(p, managed_sid, &sik, &guid)?;
        self.state = State::Done;
        Ok(Step::Established(Box::new(Session::new(
            self.suite,
            self.console_sid,
            managed_sid,
            &sik,
            guid,
        ))))
    }
}

/// The RAKP 2 key exchange authentication code (13.31): HMAC over SIDm, SIDc, Rm, Rc,
/// GUIDc, RoleM, ULengthM, UNameM, keyed with the user's password.
#[allow(clippy::too_many_arguments)]
pub fn rakp2_auth_code(
    suite: Suite,
    password: &[u8],
    console_sid: u32,
    managed_sid: u32,
    rm: &[u8],
    rc: &[u8],
    guid: &[u8],
    role: u8,
    username: &[u8],
) -> Vec<u8> {
    suite.hmac(
        password,
        &[
            &console_sid.to_le_bytes(),
            &managed_sid.to_le_bytes(),
            rm,
            rc,
            guid,
            &[role],
            &[username.len() as u8],
            username,
        ],
    )
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which inbound session sequence numbers are fresh (6.12.13): numbers up to 32 ahead of
/// the highest seen move the window; up to 15 behind it are taken once each (reordered
/// packets); everything else, and any number seen before, is a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u32>,
    /// Bit i: `highest - i` was received.
    seen: u32,
}

impl ReplayWindow {
    const AHEAD: u32 = 32;
    const BEHIND: u32 = 15;

    /// Records `seq` and says whether it is fresh.
    pub fn accept(&mut self, seq: u32) -> bool {
        let Some(h) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq == h {
            return false;
        }
        let ahead = seq.wrapping_sub(h);
        if ahead <= Self::AHEAD {
            self.seen = if ahead >= 32 { 0 } else { self.seen << ahead } | 1;
            self.highest = Some(seq);
            return true;
        }
        let behind = h.wrapping_sub(seq);
        if behind <= Self::BEHIND {
            let bit = 1u32 << behind;
            if self.seen & bit != 0 {
                return false;
            }
            self.seen |= bit;
            return true;
        }
        false
    }
}

/// An active RMCP+ session: seals outbound payloads and opens inbound ones.
pub struct Session {
    suite: Suite,
    console_sid: u32,
    managed_sid: u32,
    k1: Vec<u8>,
    k2: Vec<u8>,
    guid: [u8; 16],
    out_seq: u32,
    window: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite)
            .field("console_sid", &format_args!("{:#010x}", self.console_sid))
            .field("managed_sid", &format_args!("{:#010x}", self.managed_sid))
            .field("out_seq", &self.out_seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// K1 and K2 derive from the session integrity key (13.32): HMAC_SIK of a block of
    /// 0x01 or 0x02 bytes as long as the HMAC.
    pub fn new(
        suite: Suite,
        console_sid: u32,
        managed_sid: u32,
        sik: &[u8],
        guid: [u8; 16],
    ) -> Session {
        // The constants are 20 bytes for every suite (IPMI 2.0 13.32 was written for SHA-1;
        // ipmitool and BMCs keep 20 bytes for SHA-256 too), not the HMAC's length.
        let k1 = suite.hmac(sik, &[&[0x01; 20]]);
        let k2 = suite.hmac(sik, &[&[0x02; 20]]);
        Session {
            suite,
            console_sid,
            managed_sid,
            k1,
            k2,
            guid,
            out_seq: 0,
            window: ReplayWindow::default(),
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The BMC's id of this session (what outbound packets carry).
    pub fn managed_session_id(&self) -> u32 {
        self.managed_sid
    }

    pub fn console_session_id(&self) -> u32 {
        self.console_sid
    }

    /// The BMC's GUID from RAKP 2.
    pub fn bmc_guid(&self) -> [u8; 16] {
        self.guid
    }

    pub fn k1(&self) -> &[u8] {
        &self.k1
    }

    pub fn k2(&self) -> &[u8] {
        &self.k2
    }

    /// Seals a payload into an encrypted, authenticated packet with the next session
    /// sequence number. Every packet, a retransmission too, takes a new number (6.12.13);
    /// a retried IPMI request keeps its message `rq_seq` so the BMC sees the repeat.
    pub fn seal(
        &mut self,
        payload_type: u8,
        data: &[u8],
        iv: [u8; 16],
    ) -> Result<Vec<u8>, RmcpError> {
        let body = aes_encrypt(&self.k2, &iv, data);
        if body.len() > u16::MAX as usize - 64 {
            return Err(RmcpError::TooLong(data.len()));
        }
        // Sequence numbers start at 1 and skip 0 when they wrap (0 means "no session").
        self.out_seq = self.out_seq.wrapping_add(1).max(1);
        let mut p = vec![
            RMCP_VERSION,
            0x00,
            0xFF,
            CLASS_IPMI,
            AUTH_RMCP_PLUS,
            ENCRYPTED | AUTHENTICATED | (payload_type & 0x3F),
        ];
        p.extend_from_slice(&self.managed_sid.to_le_bytes());
        p.extend_from_slice(&self.out_seq.to_le_bytes());
        p.extend_from_slice(&(body.len() as u16).to_le_bytes());
        p.extend_from_slice(&body);
        let covered = p.len() - 4;
        let pad = (4 - (covered + 2) % 4) % 4;
        p.extend(std::iter::repeat_n(0xFF, pad));
        p.push(pad as u8);
        p.push(NEXT_HEADER);
        let code = self.suite.hmac(&self.k1, &[&p[4..]]);
        p.extend_from_slice(&code[..self.suite.auth_code_len()]);
        Ok(p)
    }

    /// Opens an inbound packet of this session: checks the session id, the integrity code,
    /// the sequence number and decrypts. Returns the payload type and the plain payload.
    pub fn open(&mut self, packet: &[u8]) -> Result<(u8, Vec<u8>), RmcpError> {
        let f = parse_frame(packet)?;
        if f.session_id != self.console_sid {
            return Err(RmcpError::WrongSession {
                expected: self.console_sid,
                got: f.session_id,
            });
        }
        if !f.authenticated {
            return Err(RmcpError::Unauthenticated);
        }
        let n = self.suite.auth_code_len();
        if f.auth_code.len() != n {
            return Err(RmcpError::Integrity);
        }
        let code = self.suite.hmac(&self.k1, &[f.integrity_data]);
        if !ct_eq(&code[..n], f.auth_code) {
            return Err(RmcpError::Integrity);
        }
        // Only after the integrity check: a forged packet must not move the window.
        if !self.window.accept(f.seq) {
            return Err(RmcpError::Replay(f.seq));
        }
        let data = if f.encrypted {
            aes_decrypt(&self.k2, f.payload)?
        } else {
            f.payload.to_vec()
        };
        Ok((f.payload_type, data))
    }
}
