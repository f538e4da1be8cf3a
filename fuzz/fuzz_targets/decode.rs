//! Fuzzes the bytes-to-message path an agent or controller runs on every inbound line: the
//! bounded line codec, then `Message::decode`. Nothing may panic, and every message that
//! decodes must survive encode → decode unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use molar_protocol::{LineCodec, Message};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = LineCodec::new(4096);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(line)) => {
                if let Ok(m) = Message::decode(&line) {
                    let again = Message::decode(&m.encode());
                    assert_eq!(again.as_ref(), Ok(&m), "round trip of {line:?}");
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
