//! Tests of the RMCP+ client: public RAKP 2 captures, both suites against an independent
//! implementation (Python's hmac, hashlib and `cryptography`, script below), the handshake
//! with refusals, lost, duplicated and reordered packets, and hostile bytes.
//!
//! The suite 3 and 17 vectors were computed at test-writing time with this script; the
//! inputs are the constants of this file:
//!
//! ```text
//! import hmac, hashlib, struct
//! from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
//! def H(alg, k, *p): return hmac.new(k, b''.join(p), alg).digest()
//! def cs(b): return (-sum(b)) & 0xff
//! def aes(k, iv, d):
//!     pad = (16 - (len(d)+1) % 16) % 16
//!     d = d + bytes(range(1, pad+1)) + bytes([pad])
//!     e = Cipher(algorithms.AES(k[:16]), modes.CBC(iv)).encryptor()
//!     return iv + e.update(d) + e.finalize()
//! def packet(alg, n, k1, k2, sid, seq, iv, msg):
//!     body = aes(k2, iv, msg)
//!     p = bytes([6, 0xC0]) + struct.pack('<IIH', sid, seq, len(body)) + body
//!     pad = (4 - (len(p)+2) % 4) % 4
//!     p += b'\xff'*pad + bytes([pad, 7])
//!     return bytes([6,0,0xff,7]) + p + H(alg, k1, p)[:n]
//! SIDm, SIDc = 0xa0a1a2a3, 0x0b0c0d0e
//! rm, rc, guid = bytes(range(0,16)), bytes(range(16,32)), bytes(range(32,48))
//! user, pw, role = b'ipmiusr', b'test', 0x14
//! req = bytes([0x20, 0x18]); req += bytes([cs(req)]); r2 = bytes([0x81, 0x04, 0x01])
//! req += r2 + bytes([cs(r2)])
//! rsp = bytes([0x81, 0x1c]); rsp += bytes([cs(rsp)])
//! r2 = bytes([0x20, 0x04, 0x01, 0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00,
//!             0x02, 0x0f]); rsp += r2 + bytes([cs(r2)])
//! for name, alg, icv in [('3', hashlib.sha1, 12), ('17', hashlib.sha256, 16)]:
//!     L = struct.pack('<I', SIDm); C = struct.pack('<I', SIDc)
//!     rakp2 = H(alg, pw, L, C, rm, rc, guid, bytes([role, len(user)]), user)
//!     rakp3 = H(alg, pw, rc, L, bytes([role, len(user)]), user)
//!     sik = H(alg, pw, rm, rc, bytes([role, len(user)]), user)
//!     # K1/K2 constants: 20 bytes for SHA-256 too, as ipmitool and BMCs use them.
//!     k1 = H(alg, sik, b'\x01'*20); k2 = H(alg, sik, b'\x02'*20)
//!     rakp4 = H(alg, sik, rm, C, guid)[:icv]
//!     out = packet(alg, icv, k1, k2, SIDc, 1, bytes(range(48,64)), req)
//!     inb = packet(alg, icv, k1, k2, SIDm, 5, bytes(range(64,80)), rsp)
//!     print(name, rakp2.hex(), rakp3.hex(), sik.hex(), k1.hex(), k2.hex(), rakp4.hex(),
//!           out.hex(), inb.hex())
//! ```

#![allow(clippy::unwrap_used)]

use super::crypto::{Suite, aes_decrypt, aes_encrypt};
use super::message::{decode_response, decode_sessionless, encode_request, encode_sessionless};
use super::session::{
    Handshake, Login, ReplayWindow, Session, Step, parse_frame, presession_packet, rakp2_auth_code,
};
use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn arr16(b: &[u8]) -> [u8; 16] {
    b.try_into().unwrap()
}

const SID_M: u32 = 0xa0a1a2a3;
const SID_C: u32 = 0x0b0c0d0e;

fn rm() -> [u8; 16] {
    std::array::from_fn(|i| i as u8)
}
fn rc() -> [u8; 16] {
    std::array::from_fn(|i| 16 + i as u8)
}
fn guid() -> [u8; 16] {
    std::array::from_fn(|i| 32 + i as u8)
}

fn login(password: &str) -> Login {
    Login {
        username: b"ipmiusr".to_vec(),
        password: password.as_bytes().to_vec(),
        privilege: 4,
    }
}

struct Vectors {
    rakp2: &'static str,
    rakp3: &'static str,
    sik: &'static str,
    k1: &'static str,
    k2: &'static str,
    rakp4: &'static str,
    out: &'static str,
    inbound: &'static str,
}

const SUITE3: Vectors = Vectors {
    rakp2: "8f3919014bb9c0b0824e66e55d3e745649ba7f4a",
    rakp3: "b83180480204bbc122094e090760f6efe735070c",
    sik: "1e89c900fd86d865502f7a38258c5f5406a09031",
    k1: "9674fdc72e1c8433c1ae65fc4849f914c55ffe2c",
    k2: "b08534d7245255d3af2d63ad7c733499f2d6c5a9",
    rakp4: "903b0705e965c9ae895c97bc",
    out: "0600ff0706c00e0d0c0b010000002000303132333435363738393a3b3c3d3e3f5b18f8b18191b9a820143e0b\
          d7fbbb9cffff0207e7af873919c0a8927d5bfe3a",
    inbound: "0600ff0706c0a3a2a1a0050000003000404142434445464748494a4b4c4d4e4f7607904c4d0839aae755\
              52a36c6d7f5fa13a6203f6a69350876e672c28e1984bffff02076846491282ed71d8ded4812f",
};

const SUITE17: Vectors = Vectors {
    rakp2: "69b372ce24f0d5259055176d381ce232f32e04ac756fac24a842a6b8d3b0d783",
    rakp3: "3760030fc45235bc94015055497fb2f7f3c057a23fc06e17d33007c10cb756a8",
    sik: "9b2503d70cf7300b4f7c1cfd1f39fa6f2e7181267aebacedbcedb5b17fe4816c",
    k1: "06ea4cfb04023b97ce93f957f11e18aae147a745a93f6ca1b903f48495afc175",
    k2: "58b4d750e942e7a553981a492dfce09b325daa5ce2cf83736a6d75586f1bac26",
    rakp4: "2dfbc7224a5d737e533d47c6b8319b94",
    out: "0600ff0706c00e0d0c0b010000002000303132333435363738393a3b3c3d3e3f2d966a6852410343082a5099\
          85b6ebc9ffff0207a058e3884e9e99010daa0ea3a9447b43",
    inbound: "0600ff0706c0a3a2a1a0050000003000404142434445464748494a4b4c4d4e4fe45c70820f962d06cf92b0\
              2ee7ff85eea979d54c55be52450921a3a3e3c6bbbfffff0207eaa127152f5e0b4e803041338b2849c4",
};

/// The Get Device ID response message of the vectors (completion code first in `data`).
const DEVICE_ID_DATA: [u8; 12] = [
    0x00, 0x20, 0x81, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f,
];

fn open_session_response(tag: u8, status: u8, suite: Suite) -> Vec<u8> {
    let mut b = vec![tag, status, 4, 0];
    b.extend_from_slice(&SID_M.to_le_bytes());
    b.extend_from_slice(&SID_C.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 8, suite.auth_alg(), 0, 0, 0]);
    b.extend_from_slice(&[1, 0, 0, 8, suite.integrity_alg(), 0, 0, 0]);
    b.extend_from_slice(&[2, 0, 0, 8, 1, 0, 0, 0]);
    presession_packet(payload::OPEN_SESSION_RESPONSE, &b)
}

fn rakp2(tag: u8, code: &[u8]) -> Vec<u8> {
    let mut b = vec![tag, 0, 0, 0];
    b.extend_from_slice(&SID_M.to_le_bytes());
    b.extend_from_slice(&rc());
    b.extend_from_slice(&guid());
    b.extend_from_slice(code);
    presession_packet(payload::RAKP2, &b)
}

fn rakp4(tag: u8, icv: &[u8]) -> Vec<u8> {
    let mut b = vec![tag, 0, 0, 0];
    b.extend_from_slice(&SID_M.to_le_bytes());
    b.extend_from_slice(icv);
    presession_packet(payload::RAKP4, &b)
}

fn expect_send(step: Step) -> Vec<u8> {
    match step {
        Step::Send(p) => p,
        other => panic!("expected a packet to send, got {other:?}"),
    }
}

/// Runs the whole handshake against the vectors; returns the session.
fn handshake(suite: Suite, v: &Vectors) -> Session {
    let (mut hs, open) = Handshake::start(suite, login("test"), SID_M, rm(), 7).unwrap();
    // Open Session Request (13.17): tag, privilege, console session id, three algorithms.
    let f = parse_frame(&open).unwrap();
    assert_eq!(f.payload_type, payload::OPEN_SESSION_REQUEST);
    assert_eq!(f.session_id, 0);
    assert_eq!(&f.payload[..8], &[7, 4, 0, 0, 0xa3, 0xa2, 0xa1, 0xa0]);
    assert_eq!(f.payload[12], suite.auth_alg());
    assert_eq!(f.payload[20], suite.integrity_alg());
    assert_eq!(f.payload[28], 1);

    let r1 = expect_send(hs.on_packet(&open_session_response(7, 0, suite)).unwrap());
    let f = parse_frame(&r1).unwrap();
    assert_eq!(f.payload_type, payload::RAKP1);
    assert_eq!(&f.payload[4..8], &SID_C.to_le_bytes());
    assert_eq!(&f.payload[8..24], &rm());
    assert_eq!(&f.payload[24..28], &[0x14, 0, 0, 7]);
    assert_eq!(&f.payload[28..], b"ipmiusr");
    // A duplicate of the open session response (the BMC answered a retransmission) is
    // ignored, as is a packet with another tag.
    assert!(matches!(
        hs.on_packet(&open_session_response(7, 0, suite)).unwrap(),
        Step::Ignore
    ));
    assert!(matches!(
        hs.on_packet(&rakp2(8, &unhex(v.rakp2))).unwrap(),
        Step::Ignore
    ));

    let r3 = expect_send(hs.on_packet(&rakp2(7, &unhex(v.rakp2))).unwrap());
    let f = parse_frame(&r3).unwrap();
    assert_eq!(f.payload_type, payload::RAKP3);
    assert_eq!(&f.payload[..4], &[7, 0, 0, 0]);
    assert_eq!(&f.payload[4..8], &SID_C.to_le_bytes());
    assert_eq!(f.payload[8..], unhex(v.rakp3));
    assert_eq!(hs.last_sent(), &r3[..]);

    match hs.on_packet(&rakp4(7, &unhex(v.rakp4))).unwrap() {
        Step::Established(s) => *s,
        other => panic!("expected the session, got {other:?}"),
    }
}

fn check_suite(suite: Suite, v: &Vectors) {
    let mut s = handshake(suite, v);
    assert_eq!(s.k1(), &unhex(v.k1)[..]);
    assert_eq!(s.k2(), &unhex(v.k2)[..]);
    assert_eq!(s.bmc_guid(), guid());
    let sik = Session::new(suite, SID_M, SID_C, &unhex(v.sik), guid());
    assert_eq!(sik.k1(), s.k1(), "SIK from the handshake");

    let msg = encode_request(0x06, 0x01, 1, &[]);
    let out = s.seal(
        payload::IPMI,
        &msg,
        arr16(&unhex("303132333435363738393a3b3c3d3e3f")),
    );
    assert_eq!(out.unwrap(), unhex(v.out));

    let (ptype, body) = s.open(&unhex(v.inbound)).unwrap();
    assert_eq!(ptype, payload::IPMI);
    let r = decode_response(&body).unwrap();
    assert_eq!((r.netfn, r.cmd, r.rq_seq), (0x07, 0x01, 1));
    assert_eq!(r.data, DEVICE_ID_DATA);
    // The same packet again is a replay.
    assert_eq!(s.open(&unhex(v.inbound)).unwrap_err(), RmcpError::Replay(5));
}

#[test]
fn suite_3_matches_an_independent_implementation() {
    check_suite(Suite::Three, &SUITE3);
}

#[test]
fn suite_17_matches_an_independent_implementation() {
    check_suite(Suite::Seventeen, &SUITE17);
}

/// RAKP 2 HMAC-SHA1 captures published with their passwords, in the `$rakp$salt$hash`
/// form of John the Ripper's and hashcat's (mode 7300) test vectors, where the salt is
/// SIDm, SIDc, Rm, Rc, GUIDc, RoleM, ULengthM, UNameM.
#[test]
fn rakp2_matches_public_sha1_captures() {
    let captures = [
        (
            "c358d2a72f0c00001135f9b254c274629208b22f1166d94d2eba47f21093e9734355a33593da16f2\
             000000000000000000000000000000001404726f6f74",
            "41fce60acf2885f87fcafdf658d6f97db12639a9",
            "calvin",
        ),
        (
            "b7c2d6f13a43dce2e44ad120a9cd8a13d0ca23f0414275c0bbe1070d2d1299b1c04da0f1a0f1e4e2\
             537300263a2200000000000000000000140768617368636174",
            "472bdabe2d5d4bffd6add7b3ba79a291d104a9ef",
            "hashcat",
        ),
    ];
    for (salt, hash, password) in captures {
        let s = unhex(salt);
        let sid_m = u32::from_le_bytes(s[0..4].try_into().unwrap());
        let sid_c = u32::from_le_bytes(s[4..8].try_into().unwrap());
        let role = s[56];
        let name = &s[58..58 + s[57] as usize];
        let code = rakp2_auth_code(
            Suite::Three,
            password.as_bytes(),
            sid_m,
            sid_c,
            &s[8..24],
            &s[24..40],
            &s[40..56],
            role,
            name,
        );
        assert_eq!(code, unhex(hash), "{password}");
    }
}

#[test]
fn refusals_and_wrong_answers_end_the_handshake_with_a_clear_error() {
    // The BMC has no such cipher suite.
    let (mut hs, _) = Handshake::start(Suite::Seventeen, login("test"), SID_M, rm(), 1).unwrap();
    let e = hs
        .on_packet(&open_session_response(1, 0x11, Suite::Seventeen))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "open session refused: no cipher suite match with proposed security algorithms \
         (status 0x11)"
    );
    // The BMC picked other algorithms than asked.
    let (mut hs, _) = Handshake::start(Suite::Seventeen, login("test"), SID_M, rm(), 1).unwrap();
    let e = hs
        .on_packet(&open_session_response(1, 0, Suite::Three))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RmcpError::Algorithm {
                what: "authentication",
                ..
            }
        ),
        "{e}"
    );

    // A wrong password: the BMC's RAKP 2 code was made with another key. The password
    // is nowhere in the error.
    let secret = "s3cr3t-Passw0rd";
    let (mut hs, _) = Handshake::start(Suite::Three, login(secret), SID_M, rm(), 1).unwrap();
    expect_send(
        hs.on_packet(&open_session_response(1, 0, Suite::Three))
            .unwrap(),
    );
    let e = hs.on_packet(&rakp2(1, &unhex(SUITE3.rakp2))).unwrap_err();
    assert_eq!(e, RmcpError::Rakp2AuthCode);
    // The RAKP 3 that tells the BMC: status 0x0f, the BMC's session id, no code.
    let abort = parse_frame(hs.abort_packet().unwrap()).unwrap();
    assert_eq!(abort.payload_type, payload::RAKP3);
    assert_eq!(abort.payload, &[1, 0x0F, 0, 0, 0x0e, 0x0d, 0x0c, 0x0b]);
    assert!(!e.to_string().contains(secret));
    assert!(!format!("{e:?}{hs:?}").contains(secret));
    assert!(matches!(
        hs.on_packet(&rakp2(1, &unhex(SUITE3.rakp2))).unwrap(),
        Step::Ignore
    ));

    // An unknown user: RAKP 2 carries status 0x0d.
    let (mut hs, _) = Handshake::start(Suite::Three, login("test"), SID_M, rm(), 1).unwrap();
    expect_send(
        hs.on_packet(&open_session_response(1, 0, Suite::Three))
            .unwrap(),
    );
    let mut p = rakp2(1, &unhex(SUITE3.rakp2));
    p[17] = 0x0D;
    assert_eq!(
        hs.on_packet(&p).unwrap_err().to_string(),
        "RAKP 2 refused: unauthorized name (status 0x0d)"
    );

    // RAKP 4 whose integrity check value is wrong: the BMC does not know the key.
    let (mut hs, _) = Handshake::start(Suite::Three, login("test"), SID_M, rm(), 7).unwrap();
    expect_send(
        hs.on_packet(&open_session_response(7, 0, Suite::Three))
            .unwrap(),
    );
    expect_send(hs.on_packet(&rakp2(7, &unhex(SUITE3.rakp2))).unwrap());
    let mut icv = unhex(SUITE3.rakp4);
    icv[0] ^= 1;
    assert_eq!(
        hs.on_packet(&rakp4(7, &icv)).unwrap_err(),
        RmcpError::Rakp4Icv
    );

    // Over-long names and passwords are refused before anything is sent.
    let mut l = login("test");
    l.username = vec![b'a'; 17];
    assert_eq!(
        Handshake::start(Suite::Three, l, 1, rm(), 1).unwrap_err(),
        RmcpError::UserNameLength(17)
    );
    assert_eq!(
        Handshake::start(Suite::Three, login(&"p".repeat(21)), 1, rm(), 1).unwrap_err(),
        RmcpError::PasswordLength(21)
    );
}

/// A BMC's side of the session of the vectors: it sends to the console's session id.
fn pair(suite: Suite, v: &Vectors) -> (Session, Session) {
    let sik = unhex(v.sik);
    (
        Session::new(suite, SID_M, SID_C, &sik, guid()),
        Session::new(suite, SID_C, SID_M, &sik, guid()),
    )
}

#[test]
fn lost_duplicated_and_reordered_packets() {
    let (mut console, mut bmc) = pair(Suite::Seventeen, &SUITE17);
    let iv = [9u8; 16];
    let p: Vec<Vec<u8>> = (0..50)
        .map(|i| bmc.seal(payload::SOL, &[i as u8; 3], iv).unwrap())
        .collect();
    // seq 1..=50. In order, then a duplicate.
    assert_eq!(console.open(&p[0]).unwrap(), (payload::SOL, vec![0; 3]));
    assert_eq!(console.open(&p[1]).unwrap().1, vec![1; 3]);
    assert_eq!(console.open(&p[1]).unwrap_err(), RmcpError::Replay(2));
    // Seq 3 lost, 5 before 4: both accepted once.
    assert_eq!(console.open(&p[4]).unwrap().1, vec![4; 3]);
    assert_eq!(console.open(&p[3]).unwrap().1, vec![3; 3]);
    assert_eq!(console.open(&p[3]).unwrap_err(), RmcpError::Replay(4));
    assert_eq!(console.open(&p[4]).unwrap_err(), RmcpError::Replay(5));
    // The late seq 3 is still inside the window.
    assert_eq!(console.open(&p[2]).unwrap().1, vec![2; 3]);
    // 38 is more than 32 ahead of 5: refused. A jump to 37 moves the window: 20 is now
    // too old, 36 is taken.
    assert_eq!(console.open(&p[37]).unwrap_err(), RmcpError::Replay(38));
    assert_eq!(console.open(&p[36]).unwrap().1, vec![36; 3]);
    assert_eq!(console.open(&p[19]).unwrap_err(), RmcpError::Replay(20));
    assert_eq!(console.open(&p[35]).unwrap().1, vec![35; 3]);
    assert_eq!(console.open(&p[37]).unwrap().1, vec![37; 3]);

    // The console's own packets reach the BMC side the same way, with rising numbers.
    let a = console.seal(payload::IPMI, b"abc", iv).unwrap();
    let b = console.seal(payload::IPMI, b"abc", iv).unwrap();
    assert_ne!(a, b, "a retransmission has a new sequence number");
    assert_eq!(bmc.open(&b).unwrap(), (payload::IPMI, b"abc".to_vec()));
    assert_eq!(bmc.open(&a).unwrap(), (payload::IPMI, b"abc".to_vec()));
    assert_eq!(bmc.open(&a).unwrap_err(), RmcpError::Replay(1));
}

#[test]
fn replay_window_bounds() {
    let mut w = ReplayWindow::default();
    assert!(w.accept(100));
    assert!(!w.accept(100));
    assert!(w.accept(85), "15 behind");
    assert!(!w.accept(84), "16 behind");
    assert!(w.accept(132), "32 ahead");
    assert!(!w.accept(165), "33 ahead");
    let mut w = ReplayWindow::default();
    assert!(w.accept(u32::MAX));
    assert!(w.accept(1), "the number wraps");
    assert!(!w.accept(u32::MAX));
}

#[test]
fn packets_of_other_sessions_or_without_integrity_are_refused() {
    let (mut console, mut bmc) = pair(Suite::Three, &SUITE3);
    let (_, mut other) = pair(Suite::Three, &SUITE17);
    let p = other.seal(payload::IPMI, b"x", [0; 16]).unwrap();
    assert_eq!(console.open(&p).unwrap_err(), RmcpError::Integrity);
    // Sealed to the BMC's id: not a packet for the console.
    let mut me = Session::new(Suite::Three, SID_M, SID_C, &unhex(SUITE3.sik), guid());
    let p = me.seal(payload::IPMI, b"x", [0; 16]).unwrap();
    assert!(matches!(
        console.open(&p).unwrap_err(),
        RmcpError::WrongSession { .. }
    ));
    // An unauthenticated packet with the right session id.
    let mut p = presession_packet(payload::SOL, b"hello");
    p[6..10].copy_from_slice(&SID_M.to_le_bytes());
    assert_eq!(console.open(&p).unwrap_err(), RmcpError::Unauthenticated);
    // A valid one still opens after all that.
    let p = bmc.seal(payload::SOL, b"ok", [3; 16]).unwrap();
    assert_eq!(console.open(&p).unwrap(), (payload::SOL, b"ok".to_vec()));
}

#[test]
fn every_mutation_and_truncation_of_a_packet_is_refused() {
    for (suite, v) in [(Suite::Three, &SUITE3), (Suite::Seventeen, &SUITE17)] {
        let good = unhex(v.inbound);
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let (mut console, _) = pair(suite, v);
                let mut p = good.clone();
                p[i] ^= bit;
                let r = console.open(&p);
                // RMCP header bytes 1 and 2 (reserved, RMCP sequence) are outside the
                // integrity data; everything else is covered.
                if i == 1 || i == 2 {
                    assert!(r.is_ok(), "byte {i}");
                } else {
                    assert!(r.is_err(), "byte {i} bit {bit:#x}: {r:?}");
                }
            }
        }
        for len in 0..good.len() {
            let (mut console, _) = pair(suite, v);
            assert!(console.open(&good[..len]).is_err(), "truncated to {len}");
        }
        let (mut console, _) = pair(suite, v);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(console.open(&long).unwrap_err(), RmcpError::Integrity);
    }
}

#[test]
fn aes_padding_round_trips_and_bad_padding_is_refused() {
    let k2 = [7u8; 20];
    let iv = [1u8; 16];
    for len in 0..50 {
        let data: Vec<u8> = (0..len as u8).collect();
        let ct = aes_encrypt(&k2, &iv, &data);
        assert_eq!(ct.len() % 16, 0);
        assert!(ct.len() - 16 - len - 1 < 16);
        assert_eq!(aes_decrypt(&k2, &ct).unwrap(), data);
    }
    // Wrong key: garbage whose padding does not follow 1, 2, 3, ... (or whose length byte
    // is too big) is refused.
    let ct = aes_encrypt(&k2, &iv, b"hello world");
    assert_eq!(
        aes_decrypt(&[8u8; 20], &ct).unwrap_err(),
        RmcpError::Padding
    );
    assert_eq!(
        aes_decrypt(&k2, &ct[..20]).unwrap_err(),
        RmcpError::CipherLength(20)
    );
    assert_eq!(
        aes_decrypt(&k2, &ct[..16]).unwrap_err(),
        RmcpError::CipherLength(16)
    );
}

#[test]
fn ipmi_messages_and_sessionless_frames() {
    let m = encode_request(0x06, 0x38, 5, &[0x8E, 0x04]);
    assert_eq!(m, [0x20, 0x18, 0xC8, 0x81, 0x14, 0x38, 0x8E, 0x04, 0xA1]);
    let p = encode_sessionless(&m);
    assert_eq!(&p[..5], &[0x06, 0x00, 0xFF, 0x07, 0x00]);
    assert_eq!(decode_sessionless(&p).unwrap(), &m[..]);
    let mut bad = p.clone();
    bad[13] = 200;
    assert!(matches!(
        decode_sessionless(&bad).unwrap_err(),
        RmcpError::Length { .. }
    ));

    let resp = [0x81, 0x1C, 0x63, 0x20, 0x14, 0x38, 0x00, 0x01, 0x02, 0x91];
    let r = decode_response(&resp).unwrap();
    assert_eq!(
        (r.netfn, r.cmd, r.rq_seq, &r.data[..]),
        (0x07, 0x38, 5, &[0, 1, 2][..])
    );
    let mut bad = resp;
    bad[2] ^= 1;
    assert_eq!(decode_response(&bad).unwrap_err(), RmcpError::Checksum("1"));
    let mut bad = resp;
    bad[7] ^= 1;
    assert_eq!(decode_response(&bad).unwrap_err(), RmcpError::Checksum("2"));
    assert!(matches!(
        decode_response(&resp[..7]).unwrap_err(),
        RmcpError::Truncated { .. }
    ));
}

#[test]
fn asf_ping_and_pong() {
    let ping = encode_asf_ping(3);
    assert_eq!(ping, [6, 0, 0xFF, 6, 0, 0, 0x11, 0xBE, 0x80, 3, 0, 0]);
    let pong = [
        6, 0, 0xFF, 6, 0, 0, 0x11, 0xBE, 0x40, 3, 0, 16, 0, 0, 0x11, 0xBE, 0, 0, 0, 0, 0x81, 0x20,
        0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(
        decode_asf_pong(&pong).unwrap(),
        Pong {
            tag: 3,
            ipmi: true,
            rmcp_plus: true
        }
    );
    for len in 0..pong.len() {
        assert!(decode_asf_pong(&pong[..len]).is_err());
    }
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes, and arbitrary bytes behind a valid RMCP+ header, never panic
        /// any decoder.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                ptype in any::<u8>(), len in any::<u16>()) {
            let mut framed = vec![6, 0, 0xFF, 7, 6, ptype];
            framed.extend_from_slice(&SID_M.to_le_bytes());
            framed.extend_from_slice(&[1, 0, 0, 0]);
            framed.extend_from_slice(&len.to_le_bytes());
            framed.extend_from_slice(&bytes);
            for b in [&bytes, &framed] {
                let _ = parse_frame(b);
                let _ = decode_response(b);
                let _ = decode_sessionless(b);
                let _ = decode_asf_pong(b);
                let _ = aes_decrypt(&[1; 20], b);
                for (suite, v) in [(Suite::Three, &SUITE3), (Suite::Seventeen, &SUITE17)] {
                    let (mut console, _) = pair(suite, v);
                    let _ = console.open(b);
                    let (mut hs, _) = Handshake::start(suite, login("test"), SID_M, rm(), 7).unwrap();
                    let _ = hs.on_packet(b);
                }
            }
        }

        /// Handshake answers with random fields in the right frame never panic either.
        #[test]
        fn handshake_answers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..80)) {
            for suite in [Suite::Three, Suite::Seventeen] {
                let (mut hs, _) = Handshake::start(suite, login("test"), SID_M, rm(), 7).unwrap();
                let _ = hs.on_packet(&presession_packet(payload::OPEN_SESSION_RESPONSE, &body));
                let (mut hs, _) = Handshake::start(suite, login("test"), SID_M, rm(), 7).unwrap();
                let _ = hs.on_packet(&open_session_response(7, 0, suite));
                let _ = hs.on_packet(&presession_packet(payload::RAKP2, &body));
                let _ = hs.on_packet(&presession_packet(payload::RAKP4, &body));
            }
        }
    }
}

/// RAKP 4 lost, RAKP 3 resent: ipmi_sim answers inside the now active session. That answer
/// establishes the session when it opens with the session's keys and its ICV is right; a
/// forged one (other keys) is ignored.
#[test]
fn a_rakp4_inside_the_session_completes_the_handshake() {
    for (suite, v) in [(Suite::Three, &SUITE3), (Suite::Seventeen, &SUITE17)] {
        let start = || {
            let (mut hs, _) = Handshake::start(suite, login("test"), SID_M, rm(), 7).unwrap();
            expect_send(hs.on_packet(&open_session_response(7, 0, suite)).unwrap());
            expect_send(hs.on_packet(&rakp2(7, &unhex(v.rakp2))).unwrap());
            hs
        };
        let mut body = vec![7, 0, 0, 0];
        body.extend_from_slice(&SID_M.to_le_bytes());
        body.extend_from_slice(&unhex(v.rakp4));
        let (_, mut bmc) = pair(suite, v);
        let sealed = bmc.seal(payload::RAKP4, &body, [5; 16]).unwrap();

        let mut hs = start();
        let (_, mut forger) = pair(
            suite,
            if suite == Suite::Three {
                &SUITE17
            } else {
                &SUITE3
            },
        );
        let forged = forger.seal(payload::RAKP4, &body, [5; 16]).unwrap();
        assert!(matches!(hs.on_packet(&forged).unwrap(), Step::Ignore));
        let Step::Established(mut s) = hs.on_packet(&sealed).unwrap() else {
            panic!("not established");
        };
        // The packet that established it is not taken again.
        assert_eq!(s.open(&sealed).unwrap_err(), RmcpError::Replay(1));

        let mut bad = body.clone();
        *bad.last_mut().unwrap() ^= 1;
        let sealed = bmc.seal(payload::RAKP4, &bad, [5; 16]).unwrap();
        assert_eq!(start().on_packet(&sealed).unwrap_err(), RmcpError::Rakp4Icv);
    }
}
