//! [`LanSession`]: an RMCP+ (IPMI v2.0 over LAN) session on a blocking UDP socket. The
//! bytes come from `molar_ipmi::rmcp` (sans-I/O); this file owns the socket, the clock,
//! the randomness and the retries. Every `molar_ipmi` command module runs over it through
//! [`molar_ipmi::Transport`], and the console sends and receives SOL payloads with
//! [`LanSession::send_payload`] and [`LanSession::recv_payload`].
//!
//! Cipher suite 17 (SHA-256) is tried first and suite 3 (SHA-1) when the BMC refuses it.
//! A lost request is resent with a new session sequence number and the same IPMI `rq_seq`
//! (6.12.13), except requests that must not repeat (power control, BMC reset), which are
//! sent once and waited for longer.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use molar_ipmi::Privilege;
use molar_ipmi::channel::{decode_channel_auth_capabilities, encode_get_channel_auth_capabilities};
use molar_ipmi::command::netfn;
use molar_ipmi::rmcp::crypto::Suite;
use molar_ipmi::rmcp::message::{
    Response, decode_response, decode_sessionless, encode_request, encode_sessionless,
};
use molar_ipmi::rmcp::session::{Handshake, Login, Session, Step};
use molar_ipmi::rmcp::v15::{
    Session15, decode_activate_session, decode_get_session_challenge, encode_activate_session,
    encode_get_session_challenge,
};
use molar_ipmi::rmcp::{RmcpError, payload};

use super::{BmcTarget, OobError};

/// Timeouts and retries of a LAN session.
#[derive(Debug, Clone, Copy)]
pub struct LanOptions {
    /// How long one attempt waits for its answer.
    pub timeout: Duration,
    /// Attempts per request (the first send included).
    pub attempts: u32,
}

impl Default for LanOptions {
    fn default() -> Self {
        LanOptions {
            timeout: Duration::from_secs(1),
            attempts: 4,
        }
    }
}

/// Cipher suites in the order they are tried.
const SUITES: [Suite; 2] = [Suite::Seventeen, Suite::Three];
/// Session privileges in the order they are asked for: power control needs operator, a
/// BMC reset and user administration need administrator.
const PRIVILEGES: [Privilege; 2] = [Privilege::Administrator, Privilege::Operator];
/// Set Session Privilege Level (22.18) and Close Session (22.19), App netfn.
const SET_SESSION_PRIVILEGE: u8 = 0x3B;
const CLOSE_SESSION: u8 = 0x3C;
const CURRENT_CHANNEL: u8 = 0x0E;

/// An active RMCP+ session with one BMC.
/// The session a [`LanSession`] runs: RMCP+, or IPMI 1.5 where the operator allowed it.
#[derive(Debug)]
enum Active {
    V2(Box<Session>),
    V15(Session15),
}

pub struct LanSession {
    sock: UdpSocket,
    addr: String,
    session: Option<Active>,
    rq_seq: u8,
    opts: LanOptions,
    /// Authenticated inbound payloads that were not the answer waited for (e.g. SOL data
    /// that arrived during a request), in arrival order, for [`LanSession::recv_payload`].
    pending: VecDeque<(u8, Vec<u8>)>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LanSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanSession")
            .field("addr", &self.addr)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn io(addr: &str, source: std::io::Error) -> OobError {
    OobError::Io {
        addr: addr.to_string(),
        source,
    }
}

fn protocol(addr: &str, detail: impl std::fmt::Display) -> OobError {
    OobError::Protocol {
        addr: addr.to_string(),
        detail: detail.to_string(),
    }
}

fn auth(addr: &str, reason: impl std::fmt::Display) -> OobError {
    OobError::Auth {
        addr: addr.to_string(),
        reason: reason.to_string(),
    }
}

/// Open Session refusals that mean "not this cipher suite": the next suite is tried.
fn suite_refused(e: &RmcpError) -> bool {
    match e {
        RmcpError::Status { step, code } => {
            *step == "open session" && matches!(code, 0x03..=0x07 | 0x10 | 0x11 | 0x12)
        }
        RmcpError::Algorithm { .. } => true,
        _ => false,
    }
}

/// RAKP refusals that mean "not at this privilege": a lower one is asked for.
fn role_refused(e: &RmcpError) -> bool {
    matches!(
        e,
        RmcpError::Status {
            code: 0x09..=0x0B,
            ..
        }
    )
}

fn privilege_name(p: Privilege) -> &'static str {
    match p {
        Privilege::Administrator => "administrator",
        Privilege::Operator => "operator",
        Privilege::User => "user",
        Privilege::Callback => "callback",
        Privilege::Oem => "oem",
    }
}

fn resolve(target: &BmcTarget) -> Result<SocketAddr, OobError> {
    let addr = target.addr();
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| io(&addr, e))?
        .next()
        .ok_or_else(|| protocol(&addr, "the host name resolves to no address"))
}

impl LanSession {
    /// Logs in to the BMC: Get Channel Authentication Capabilities, then an RMCP+ session
    /// with suite 17 or else 3, at administrator privilege (operator when administrator is
    /// refused). A BMC without IPMI 2.0 gets an IPMI 1.5 MD5 session only when the target's
    /// `allow_ipmi15` is set.
    pub fn open(target: &BmcTarget, opts: LanOptions) -> Result<LanSession, OobError> {
        let mut s = LanSession::connect(target, opts)?;
        if !s.check_ipmi20(target)? {
            s.login_ipmi15(target)?;
            return Ok(s);
        }
        s.login_rmcp_plus(target)?;
        Ok(s)
    }

    fn connect(target: &BmcTarget, opts: LanOptions) -> Result<LanSession, OobError> {
        let addr = target.addr();
        let peer = resolve(target)?;
        let local: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| protocol(&addr, "bad local address"))?;
        let sock = UdpSocket::bind(local).map_err(|e| io(&addr, e))?;
        sock.connect(peer).map_err(|e| io(&addr, e))?;
        Ok(LanSession {
            sock,
            addr,
            session: None,
            rq_seq: 0,
            opts: LanOptions {
                attempts: opts.attempts.max(1),
                ..opts
            },
            pending: VecDeque::new(),
            buf: vec![0; 65536],
        })
    }

    fn login_rmcp_plus(&mut self, target: &BmcTarget) -> Result<(), OobError> {
        let s = self;
        let mut last_refusal = None;
        for suite in SUITES {
            for (i, privilege) in PRIVILEGES.into_iter().enumerate() {
                let login = Login {
                    username: target.username.as_bytes().to_vec(),
                    password: target.password.expose().as_bytes().to_vec(),
                    privilege: privilege.code(),
                };
                match s.handshake(suite, login) {
                    Ok(session) => {
                        s.session = Some(Active::V2(Box::new(session)));
                        return s.raise_privilege(privilege);
                    }
                    // A user below administrator: operator still controls power.
                    Err(Some(e)) if role_refused(&e) && i + 1 < PRIVILEGES.len() => continue,
                    Err(Some(e)) if suite_refused(&e) => {
                        last_refusal = Some(e);
                        break;
                    }
                    Err(Some(e)) => return Err(auth(&s.addr, e)),
                    // No answer to suite 17 at all: BMCs that do not know an algorithm may
                    // drop the request instead of refusing it; suite 3 gets its own attempts.
                    Err(None) if suite == Suite::Seventeen => break,
                    Err(None) => {
                        return Err(OobError::Unreachable {
                            addr: s.addr.clone(),
                            attempts: s.opts.attempts,
                        });
                    }
                }
            }
        }
        Err(auth(
            &s.addr,
            match last_refusal {
                Some(e) => format!("no cipher suite accepted (17, 3): {e}"),
                None => "no cipher suite accepted (17, 3)".into(),
            },
        ))
    }

    /// The cipher suite of the session (17 or 3); 0 for IPMI 1.5.
    pub fn cipher_suite(&self) -> u8 {
        match &self.session {
            Some(Active::V2(s)) => s.suite().id(),
            _ => 0,
        }
    }

    /// The BMC's address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The BMC's GUID from RAKP 2, as the BMC sent it (16 bytes, least significant first).
    pub fn bmc_guid(&self) -> Option<[u8; 16]> {
        match &self.session {
            Some(Active::V2(s)) => Some(s.bmc_guid()),
            _ => None,
        }
    }

    /// Get Channel Authentication Capabilities: `true` when the BMC speaks IPMI 2.0; `false`
    /// when only IPMI 1.5 with MD5 is there and the target allows it.
    fn check_ipmi20(&mut self, target: &BmcTarget) -> Result<bool, OobError> {
        let seq = self.next_rq_seq();
        let req = encode_get_channel_auth_capabilities(CURRENT_CHANNEL, Privilege::Administrator);
        let cmd = molar_ipmi::Command::GetChannelAuthCapabilities;
        let packet = encode_sessionless(&encode_request(cmd.netfn(), cmd.cmd(), seq, &req));
        let resp = self.exchange_raw(&packet, self.opts.attempts, |b| {
            let m = decode_sessionless(b).ok()?;
            let r = decode_response(m).ok()?;
            (r.rq_seq == seq && r.cmd == cmd.cmd()).then_some(r.data)
        })?;
        let r =
            molar_ipmi::reply::<8, OobError>(cmd, &resp).map_err(|e| protocol(&self.addr, e))?;
        let caps = decode_channel_auth_capabilities(&r.data);
        if caps.ipmi20 {
            return Ok(true);
        }
        if !target.allow_ipmi15 {
            return Err(auth(
                &self.addr,
                "the BMC offers only IPMI 1.5, and IPMI 1.5 is not allowed for this BMC",
            ));
        }
        if !caps.auth_types.md5 {
            return Err(auth(
                &self.addr,
                "the BMC offers only IPMI 1.5 without MD5 authentication, which is not supported",
            ));
        }
        Ok(false)
    }

    /// An IPMI 1.5 session with MD5 AuthCodes (Get Session Challenge, Activate Session),
    /// for BMCs without RMCP+. Refused unless the target's `allow_ipmi15` is set; public so
    /// that tests can open one against a BMC that also speaks IPMI 2.0.
    pub fn open_ipmi15(target: &BmcTarget, opts: LanOptions) -> Result<LanSession, OobError> {
        let mut s = LanSession::connect(target, opts)?;
        s.login_ipmi15(target)?;
        Ok(s)
    }

    fn login_ipmi15(&mut self, target: &BmcTarget) -> Result<(), OobError> {
        if !target.allow_ipmi15 {
            return Err(auth(&self.addr, "IPMI 1.5 is not allowed for this BMC"));
        }
        let challenge_req = encode_get_session_challenge(target.username.as_bytes())
            .map_err(|e| auth(&self.addr, e))?;
        let cmd = molar_ipmi::Command::GetSessionChallenge;
        let seq = self.next_rq_seq();
        let packet =
            encode_sessionless(&encode_request(cmd.netfn(), cmd.cmd(), seq, &challenge_req));
        let resp = self.exchange_raw(&packet, self.opts.attempts, |b| {
            let m = decode_sessionless(b).ok()?;
            let r = decode_response(m).ok()?;
            (r.rq_seq == seq && r.cmd == cmd.cmd()).then_some(r.data)
        })?;
        let challenge = match molar_ipmi::reply::<20, OobError>(cmd, &resp) {
            Ok(r) => decode_get_session_challenge(&r.data),
            Err(molar_ipmi::CommandError::Completion { code: 0x81, .. }) => {
                return Err(auth(&self.addr, "IPMI 1.5 login: unknown user name"));
            }
            Err(e) => return Err(auth(&self.addr, format!("IPMI 1.5 login: {e}"))),
        };
        let s15 = Session15::new(
            target.password.expose().as_bytes(),
            challenge.temp_session_id,
        )
        .map_err(|e| auth(&self.addr, e))?;
        self.session = Some(Active::V15(s15));
        for privilege in PRIVILEGES {
            let req =
                encode_activate_session(&challenge.challenge, privilege.code(), rand::random());
            let resp = match self.request_inner(
                netfn::APP,
                molar_ipmi::Command::ActivateSession.cmd(),
                &req,
                self.opts.attempts,
            ) {
                Ok(r) => r,
                // A BMC drops a packet whose AuthCode is wrong: no answer means a wrong
                // password as often as a lost BMC.
                Err(OobError::Unreachable { .. }) => {
                    self.session = None;
                    return Err(auth(
                        &self.addr,
                        "IPMI 1.5 login: no answer to activate session (wrong password?)",
                    ));
                }
                Err(e) => {
                    self.session = None;
                    return Err(e);
                }
            };
            let activated = match molar_ipmi::reply::<10, OobError>(
                molar_ipmi::Command::ActivateSession,
                &resp,
            ) {
                Ok(r) => decode_activate_session(&r.data),
                // 0x86: the privilege exceeds the user's limit; operator is tried next.
                Err(molar_ipmi::CommandError::Completion { code: 0x86, .. })
                    if privilege != Privilege::Operator =>
                {
                    continue;
                }
                Err(e) => {
                    self.session = None;
                    return Err(auth(&self.addr, format!("IPMI 1.5 login: {e}")));
                }
            };
            if let Some(Active::V15(s)) = self.session.as_mut() {
                s.activated(&activated);
            }
            return self.raise_privilege(privilege);
        }
        self.session = None;
        Err(auth(
            &self.addr,
            "IPMI 1.5 login: no privilege level granted",
        ))
    }

    /// One handshake. `Err(None)`: no answer after all attempts.
    fn handshake(&mut self, suite: Suite, login: Login) -> Result<Session, Option<RmcpError>> {
        let console_sid = rand::random::<u32>().max(1);
        let (mut hs, mut packet) =
            Handshake::start(suite, login, console_sid, rand::random(), rand::random())
                .map_err(Some)?;
        loop {
            let mut outcome = None;
            for _ in 0..self.opts.attempts {
                if self.sock.send(&packet).is_err() {
                    continue;
                }
                let deadline = Instant::now() + self.opts.timeout;
                while let Some(n) = self.recv_until(deadline).map_err(|_| None)? {
                    let step = hs.on_packet(&self.buf[..n]);
                    if let Some(abort) = hs.abort_packet() {
                        let _ = self.sock.send(abort);
                    }
                    match step.map_err(Some)? {
                        Step::Ignore => continue,
                        step => {
                            outcome = Some(step);
                            break;
                        }
                    }
                }
                if outcome.is_some() {
                    break;
                }
            }
            match outcome {
                Some(Step::Send(next)) => packet = next,
                Some(Step::Established(session)) => return Ok(*session),
                Some(Step::Ignore) | None => return Err(None),
            }
        }
    }

    /// Set Session Privilege Level: sessions start at user level (13.21) until raised.
    fn raise_privilege(&mut self, privilege: Privilege) -> Result<(), OobError> {
        let resp = self.request_inner(
            netfn::APP,
            SET_SESSION_PRIVILEGE,
            &[privilege.code()],
            self.opts.attempts,
        )?;
        match resp.first() {
            Some(0) => Ok(()),
            Some(&code) => Err(auth(
                &self.addr,
                format!(
                    "set session privilege level to {} refused (completion code {code:#04x})",
                    privilege_name(privilege)
                ),
            )),
            None => Err(protocol(&self.addr, "empty set session privilege response")),
        }
    }

    fn next_rq_seq(&mut self) -> u8 {
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        self.rq_seq
    }

    /// Receives one datagram until `deadline`; `None` when it passed.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<usize>, OobError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some(deadline - now))
                .map_err(|e| io(&self.addr, e))?;
            match self.sock.recv(&mut self.buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                // An ICMP port unreachable from an earlier send: keep waiting, the
                // attempt's timeout decides.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(&self.addr, e)),
            }
        }
    }

    /// Sends a session-less packet and waits for the datagram `pick` accepts.
    fn exchange_raw(
        &mut self,
        packet: &[u8],
        attempts: u32,
        pick: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Vec<u8>, OobError> {
        for _ in 0..attempts {
            if let Err(e) = self.sock.send(packet) {
                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                    return Err(io(&self.addr, e));
                }
                continue;
            }
            let deadline = Instant::now() + self.opts.timeout;
            while let Some(n) = self.recv_until(deadline)? {
                if let Some(r) = pick(&self.buf[..n]) {
                    return Ok(r);
                }
            }
        }
        Err(OobError::Unreachable {
            addr: self.addr.clone(),
            attempts,
        })
    }

    fn seal(&mut self, payload_type: u8, data: &[u8]) -> Result<Vec<u8>, OobError> {
        let addr = self.addr.clone();
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| protocol(&addr, "the session is closed"))?;
        match session {
            Active::V2(s) => s.seal(payload_type, data, rand::random()),
            Active::V15(s) if payload_type == payload::IPMI => s.seal(data),
            Active::V15(_) => {
                return Err(protocol(
                    &addr,
                    format!(
                        "payload type {payload_type:#04x} needs an IPMI 2.0 (RMCP+) session, \
                         this one is IPMI 1.5"
                    ),
                ));
            }
        }
        .map_err(|e| protocol(&addr, e))
    }

    /// Opens one received datagram of this session; packets that fail integrity, replay or
    /// decoding checks are dropped (a forged or stale packet must not end the session).
    fn open_received(&mut self, n: usize) -> Option<(u8, Vec<u8>)> {
        let opened = match self.session.as_mut()? {
            Active::V2(s) => s.open(&self.buf[..n]),
            Active::V15(s) => s.open(&self.buf[..n]).map(|m| (payload::IPMI, m)),
        };
        match opened {
            // Late handshake answers (a repeated RAKP 4 inside the session) carry nothing.
            Ok((ptype, _)) if (payload::OPEN_SESSION_REQUEST..=payload::RAKP4).contains(&ptype) => {
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(bmc = %self.addr, error = %e, "dropped an inbound packet");
                None
            }
        }
    }

    fn request_inner(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        attempts: u32,
    ) -> Result<Vec<u8>, OobError> {
        let seq = self.next_rq_seq();
        let message = encode_request(netfn, cmd, seq, data);
        // A request sent once waits as long as all attempts of a retried one would.
        let wait = if attempts == 1 {
            self.opts.timeout * self.opts.attempts
        } else {
            self.opts.timeout
        };
        for _ in 0..attempts {
            let packet = self.seal(payload::IPMI, &message)?;
            if let Err(e) = self.sock.send(&packet) {
                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                    return Err(io(&self.addr, e));
                }
                continue;
            }
            let deadline = Instant::now() + wait;
            while let Some(n) = self.recv_until(deadline)? {
                let Some((ptype, body)) = self.open_received(n) else {
                    continue;
                };
                if ptype != payload::IPMI {
                    self.pending.push_back((ptype, body));
                    continue;
                }
                match decode_response(&body) {
                    Ok(Response {
                        netfn: rnetfn,
                        cmd: rcmd,
                        rq_seq,
                        data,
                    }) if rq_seq == seq && rcmd == cmd && rnetfn == netfn | 1 => {
                        return Ok(data);
                    }
                    // A late answer to an earlier request: not this one.
                    _ => continue,
                }
            }
        }
        Err(OobError::Unreachable {
            addr: self.addr.clone(),
            attempts,
        })
    }

    /// Sends one payload of any type (SOL: 0x01) in the session, without waiting.
    pub fn send_payload(&mut self, payload_type: u8, data: &[u8]) -> Result<(), OobError> {
        let packet = self.seal(payload_type, data)?;
        match self.sock.send(&packet) {
            Ok(_) => Ok(()),
            Err(e) => Err(io(&self.addr, e)),
        }
    }

    /// The next authenticated, decrypted inbound payload that is not the answer to an IPMI
    /// request (e.g. SOL data), or `None` when `timeout` passes without one.
    pub fn recv_payload(&mut self, timeout: Duration) -> Result<Option<(u8, Vec<u8>)>, OobError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        if self.session.is_none() {
            return Err(protocol(&self.addr, "the session is closed"));
        }
        let deadline = Instant::now() + timeout;
        while let Some(n) = self.recv_until(deadline)? {
            match self.open_received(n) {
                // IPMI messages here answer no outstanding request (late duplicates).
                Some((ptype, _)) if ptype == payload::IPMI => continue,
                Some(p) => return Ok(Some(p)),
                None => continue,
            }
        }
        Ok(None)
    }

    /// Forgets the session without closing it (after a BMC cold reset, which ends every
    /// session): nothing more is sent.
    pub fn abandon(&mut self) {
        self.session = None;
    }

    /// Closes the session (Close Session, 22.19). The BMC's answer is waited for once;
    /// a session the BMC already dropped is closed all the same.
    pub fn close(&mut self) -> Result<(), OobError> {
        let id = match &self.session {
            Some(Active::V2(s)) => s.managed_session_id(),
            Some(Active::V15(s)) => s.session_id(),
            None => return Ok(()),
        };
        let saved = self.opts;
        self.opts.attempts = 1;
        let r = self.request_inner(netfn::APP, CLOSE_SESSION, &id.to_le_bytes(), 1);
        self.opts = saved;
        self.session = None;
        match r {
            Ok(resp) => match resp.first() {
                Some(0) | Some(0x87) | Some(0x88) => Ok(()),
                Some(&code) => Err(OobError::Refused {
                    addr: self.addr.clone(),
                    command: "close session".into(),
                    completion: format!("completion code {code:#04x}"),
                }),
                None => Ok(()),
            },
            Err(e) => Err(e),
        }
    }
}

impl Drop for LanSession {
    fn drop(&mut self) {
        if self.session.is_some() {
            // Best effort, short: a BMC has few session slots, but a drop must not hang.
            self.opts.timeout = self.opts.timeout.min(Duration::from_millis(300));
            let _ = self.close();
        }
    }
}

// The console moves a session into its own thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<LanSession>();
};

impl molar_ipmi::Transport for LanSession {
    type Error = OobError;

    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, OobError> {
        self.request_inner(netfn, cmd, data, self.opts.attempts)
    }

    fn request_once(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, OobError> {
        self.request_inner(netfn, cmd, data, 1)
    }
}
