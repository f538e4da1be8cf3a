//! Fuzzes what the controller runs on every UDP datagram a BMC (or anyone on the
//! management network) sends it: RMCP/IPMI 2.0 and 1.5 framing, a handshake waiting for the
//! BMC's Open Session Response or RAKP message, an established session opening a packet, LAN
//! message decoding and SOL packets. Nothing may panic; a packet the session sealed itself
//! must open back to the same payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use molar_ipmi::rmcp::crypto::Suite;
use molar_ipmi::rmcp::message::{decode_response, decode_sessionless};
use molar_ipmi::rmcp::session::{Handshake, Login, Session, parse_frame};
use molar_ipmi::rmcp::v15::Session15;
use molar_ipmi::sol_payload::SolPacket;

fuzz_target!(|data: &[u8]| {
    let _ = parse_frame(data);
    let _ = decode_sessionless(data);
    let _ = decode_response(data);
    let _ = SolPacket::decode(data);

    let suite = if data.first().is_some_and(|b| b & 1 == 1) {
        Suite::Seventeen
    } else {
        Suite::Three
    };
    let login = Login {
        username: b"molar".to_vec(),
        password: b"fuzz-password".to_vec(),
        privilege: 4,
    };
    if let Ok((mut hs, _)) = Handshake::start(suite, login, 0x1122_3344, [7; 16], 1) {
        // Each datagram is fed to the handshake in turn, as the BMC's replies would be.
        for packet in data.split(|b| *b == 0xA5).take(4) {
            if hs.on_packet(packet).is_err() {
                break;
            }
        }
    }

    let mut s = Session::new(suite, 0x1122_3344, 0x5566_7788, &[9; 20], [3; 16]);
    let _ = s.open(data);
    if let Ok(sealed) = s.seal(0x00, data, [5; 16]) {
        // The sealing side's ids are the other way round.
        let mut peer = Session::new(suite, 0x5566_7788, 0x1122_3344, &[9; 20], [3; 16]);
        let opened = peer.open(&sealed).expect("a sealed packet opens");
        assert_eq!(opened, (0x00, data.to_vec()));
    }

    if let Ok(mut v15) = Session15::new(b"fuzz-password", 0x0102_0304) {
        let _ = v15.open(data);
    }
});
