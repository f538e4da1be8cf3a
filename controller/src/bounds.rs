//! Input bounds: length and character limits on the strings agents send, checked at the edge
//! before anything is stored or logged (issue #9).
//!
//! An agent is authenticated by a shared token, so a handshake or an inventory is still
//! untrusted input: a 200 KB `agent_version` would be stored and logged as one huge line, a
//! newline in a hostname would forge log lines. Every refusal names the field and the limit
//! and never the value, so an error or a log line stays bounded whatever was sent. Log
//! records are the exception: they are cut and scrubbed ([`clamp_logs`]), not refused.

use molar_protocol::catalogue::{InventoryGet, Method};
use molar_protocol::methods::HandshakeParams;
use serde_json::Value;

/// Longest `agent_version`, in bytes.
pub const AGENT_VERSION_MAX: usize = 64;
/// Longest `boot_id` (a UUID is 36).
pub const BOOT_ID_MAX: usize = 64;
/// Longest `node.system_uuid` and `node.serial`.
pub const IDENTITY_FIELD_MAX: usize = 128;
/// Longest `node.hostname` (a DNS name).
pub const HOSTNAME_MAX: usize = 253;
/// Most MAC addresses in `node.macs`.
pub const MACS_MAX: usize = 64;
/// Most entries in `protocols`, and the longest entry.
pub const PROTOCOLS_MAX: usize = 8;
pub const PROTOCOL_NAME_MAX: usize = 16;
/// Longest `token` and `session` credential (the controller's are 64 hex digits).
pub const CREDENTIAL_MAX: usize = 128;
/// Longest string (or object key) in an inventory.
pub const INVENTORY_STRING_MAX: usize = 4096;
/// Largest inventory, serialized. The line limit already bounds what an agent can send; this
/// states the bound where the inventory is stored, whatever the line limit is set to.
pub const INVENTORY_MAX: usize = 4 << 20;
/// Longest field path an inventory refusal shows.
const PATH_SHOWN_MAX: usize = 128;

/// Why agent input was refused. The message names the field and the limit, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: String, max: usize },
    #[error("{field} contains a control character")]
    Control { field: String },
    #[error("{field} has more than {max} entries")]
    TooMany { field: String, max: usize },
    #[error("{field} is not a mac address like aa:bb:cc:dd:ee:ff")]
    NotMac { field: String },
    #[error("the inventory is larger than {max} bytes")]
    TooLarge { max: usize },
}

/// Checks a string: at most `max` bytes, no control character (`\t` too when `tab` is false).
fn text(field: impl FnOnce() -> String, s: &str, max: usize, tab: bool) -> Result<(), BoundsError> {
    if s.len() > max {
        return Err(BoundsError::TooLong {
            field: field(),
            max,
        });
    }
    if s.chars().any(|c| c.is_control() && !(tab && c == '\t')) {
        return Err(BoundsError::Control { field: field() });
    }
    Ok(())
}

/// Whether `s` is `aa:bb:cc:dd:ee:ff` (either case: the identity key lowercases it).
pub fn is_mac(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == b':'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Checks every string of a handshake against its limit. The token and the session
/// credential are only hashed and compared, never stored nor shown: they are bounded in
/// length only, and a refusal names them without a hint of their value.
pub fn check_handshake(h: &HandshakeParams) -> Result<(), BoundsError> {
    if h.token.expose().len() > CREDENTIAL_MAX {
        return Err(BoundsError::TooLong {
            field: "token".into(),
            max: CREDENTIAL_MAX,
        });
    }
    if h.session
        .as_ref()
        .is_some_and(|s| s.expose().len() > CREDENTIAL_MAX)
    {
        return Err(BoundsError::TooLong {
            field: "session".into(),
            max: CREDENTIAL_MAX,
        });
    }
    text(
        || "agent_version".into(),
        &h.agent_version,
        AGENT_VERSION_MAX,
        false,
    )?;
    text(|| "boot_id".into(), &h.boot_id, BOOT_ID_MAX, false)?;
    if h.protocols.len() > PROTOCOLS_MAX {
        return Err(BoundsError::TooMany {
            field: "protocols".into(),
            max: PROTOCOLS_MAX,
        });
    }
    for (i, p) in h.protocols.iter().enumerate() {
        text(|| format!("protocols[{i}]"), p, PROTOCOL_NAME_MAX, false)?;
    }
    let node = &h.node;
    if let Some(u) = &node.system_uuid {
        text(|| "node.system_uuid".into(), u, IDENTITY_FIELD_MAX, false)?;
    }
    if let Some(s) = &node.serial {
        text(|| "node.serial".into(), s, IDENTITY_FIELD_MAX, false)?;
    }
    if let Some(n) = &node.hostname {
        text(|| "node.hostname".into(), n, HOSTNAME_MAX, false)?;
    }
    if node.macs.len() > MACS_MAX {
        return Err(BoundsError::TooMany {
            field: "node.macs".into(),
            max: MACS_MAX,
        });
    }
    for (i, m) in node.macs.iter().enumerate() {
        if !is_mac(m) {
            return Err(BoundsError::NotMac {
                field: format!("node.macs[{i}]"),
            });
        }
    }
    Ok(())
}

/// Checks an inventory before it is stored: its size, and every string and object key at
/// most [`INVENTORY_STRING_MAX`] bytes with no control character but `\t`.
pub fn check_inventory(v: &Value) -> Result<(), BoundsError> {
    // Serializing into a sink counts the bytes without holding a second copy.
    let mut size = Counter(0);
    if serde_json::to_writer(&mut size, v).is_err() || size.0 > INVENTORY_MAX {
        return Err(BoundsError::TooLarge { max: INVENTORY_MAX });
    }
    walk(v, &mut String::from(InventoryGet::NAME))
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The path shown in a refusal: cut at [`PATH_SHOWN_MAX`] (keys are agent input too).
fn shown(path: &str) -> String {
    if path.len() <= PATH_SHOWN_MAX {
        return path.to_owned();
    }
    let mut end = PATH_SHOWN_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

fn walk(v: &Value, path: &mut String) -> Result<(), BoundsError> {
    match v {
        Value::String(s) => text(|| shown(path), s, INVENTORY_STRING_MAX, true),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                // A key is named by where it is: it is the untrusted part.
                text(
                    || format!("a key in {}", shown(path)),
                    k,
                    INVENTORY_STRING_MAX,
                    true,
                )?;
                let len = path.len();
                path.push('.');
                path.push_str(k);
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Longest log record `msg`, in bytes; longer ones are cut.
pub const LOG_MSG_MAX: usize = 8192;
/// Longest log record `level` and `target`.
pub const LOG_LEVEL_MAX: usize = 16;
pub const LOG_TARGET_MAX: usize = 128;
/// Largest log record `fields`, serialized; larger ones are replaced by a note.
pub const LOG_FIELDS_MAX: usize = 8192;

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Control characters replaced by U+FFFD, keeping `\n` and `\t` when `lines` holds.
fn scrub(s: &mut String, lines: bool) {
    if s.chars()
        .any(|c| c.is_control() && !(lines && (c == '\n' || c == '\t')))
    {
        *s = s
            .chars()
            .map(|c| {
                if c.is_control() && !(lines && (c == '\n' || c == '\t')) {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
    }
}

/// Bounds a batch of log records before it is stored, in place: records are an agent's
/// running commentary, so a bad one is cut rather than refused (refusing would drop the
/// batch). `level` and `target` lose control characters and are cut to
/// [`LOG_LEVEL_MAX`]/[`LOG_TARGET_MAX`]; `msg` keeps newlines and tabs (a multi-line error
/// is legitimate; the CLI escapes them) but no other control character, cut at
/// [`LOG_MSG_MAX`]; `fields` larger than [`LOG_FIELDS_MAX`] become
/// `{"fields_cut_bytes": N}`. Returns how many records were changed.
pub fn clamp_logs(records: &mut [molar_protocol::methods::LogRecord]) -> usize {
    let mut changed = 0;
    for r in records {
        let before = (r.level.len(), r.target.len(), r.msg.len());
        let (level, target, msg) = (r.level.clone(), r.target.clone(), r.msg.clone());
        scrub(&mut r.level, false);
        cut(&mut r.level, LOG_LEVEL_MAX);
        scrub(&mut r.target, false);
        cut(&mut r.target, LOG_TARGET_MAX);
        scrub(&mut r.msg, true);
        cut(&mut r.msg, LOG_MSG_MAX);
        let mut size = Counter(0);
        let fields_ok =
            serde_json::to_writer(&mut size, &r.fields).is_ok() && size.0 <= LOG_FIELDS_MAX;
        if !fields_ok {
            let mut note = serde_json::Map::new();
            note.insert("fields_cut_bytes".into(), Value::from(size.0 as u64));
            r.fields = note;
        }
        if !fields_ok
            || before != (r.level.len(), r.target.len(), r.msg.len())
            || level != r.level
            || target != r.target
            || msg != r.msg
        {
            changed += 1;
        }
    }
    changed
}

/// `s` if it is short and printable, else a description of it: for messages that name what
/// a peer sent (a method name, say) without echoing unbounded input.
pub fn echo(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX && !s.chars().any(char::is_control) {
        s.to_owned()
    } else {
        format!("a name of {} bytes", s.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use molar_protocol::Secret;
    use molar_protocol::methods::NodeIdentity;
    use serde_json::json;

    type Change = Box<dyn Fn(&mut HandshakeParams)>;

    fn hello() -> HandshakeParams {
        HandshakeParams {
            agent_version: "0.1.0".into(),
            protocols: vec!["v1".into()],
            boot_id: "6f1e2d3c-0000-4000-8000-000000000001".into(),
            node: NodeIdentity {
                system_uuid: Some("4c4c4544-0000-4000-8000-000000000001".into()),
                serial: Some("SN1".into()),
                macs: vec!["52:54:00:00:00:01".into()],
                hostname: Some("node1.example.com".into()),
            },
            token: Secret::new("t"),
            session: None,
        }
    }

    #[test]
    fn a_usual_handshake_passes() {
        assert_eq!(check_handshake(&hello()), Ok(()));
    }

    #[test]
    fn each_handshake_field_has_its_limit() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|h| h.agent_version = "x".repeat(65)),
                "agent_version is longer than 64 bytes",
            ),
            (
                Box::new(|h| h.agent_version = "1.0\n2026-01-01 INFO forged".into()),
                "agent_version contains a control character",
            ),
            (
                Box::new(|h| h.boot_id = "b".repeat(65)),
                "boot_id is longer than 64 bytes",
            ),
            (
                Box::new(|h| h.node.system_uuid = Some("u".repeat(129))),
                "node.system_uuid is longer than 128 bytes",
            ),
            (
                Box::new(|h| h.node.serial = Some("s\u{7f}".into())),
                "node.serial contains a control character",
            ),
            (
                Box::new(|h| h.node.hostname = Some("h".repeat(254))),
                "node.hostname is longer than 253 bytes",
            ),
            (
                Box::new(|h| h.node.macs = vec!["52:54:00:00:00:01".into(), "zz".into()]),
                "node.macs[1] is not a mac address like aa:bb:cc:dd:ee:ff",
            ),
            (
                Box::new(|h| h.node.macs = vec!["52:54:00:00:00:01".into(); 65]),
                "node.macs has more than 64 entries",
            ),
            (
                Box::new(|h| h.protocols = vec!["v1".into(); 9]),
                "protocols has more than 8 entries",
            ),
            (
                Box::new(|h| h.protocols = vec!["v1".into(), "v".repeat(17)]),
                "protocols[1] is longer than 16 bytes",
            ),
            (
                Box::new(|h| h.token = Secret::new("t".repeat(129))),
                "token is longer than 128 bytes",
            ),
            (
                Box::new(|h| h.session = Some(Secret::new("s".repeat(100_000)))),
                "session is longer than 128 bytes",
            ),
        ];
        for (change, want) in cases {
            let mut h = hello();
            change(&mut h);
            assert_eq!(check_handshake(&h).unwrap_err().to_string(), want);
        }
        // At the limit is fine.
        let mut h = hello();
        h.agent_version = "x".repeat(64);
        h.node.hostname = Some("h".repeat(253));
        h.node.macs = vec!["aa:bb:cc:dd:ee:ff".into(); 64];
        assert_eq!(check_handshake(&h), Ok(()));
    }

    #[test]
    fn macs_are_six_colon_separated_hex_pairs() {
        assert!(is_mac("00:1a:2b:3c:4d:5e"));
        assert!(is_mac("00:1A:2B:3C:4D:5E"));
        for bad in [
            "00-1a-2b-3c-4d-5e",
            "001a2b3c4d5e",
            "00:1a:2b:3c:4d:5e:",
            "00:1a:2b:3c:4d:5g",
            "",
        ] {
            assert!(!is_mac(bad), "{bad}");
        }
    }

    #[test]
    fn inventory_strings_are_bounded_and_named_by_path() {
        let sample: Value = serde_json::from_str(include_str!(
            "../../protocol/tests/data/inventory-qemu-q35.json"
        ))
        .unwrap();
        assert_eq!(check_inventory(&sample), Ok(()));
        assert_eq!(
            check_inventory(&json!({"disks": [{"model": "ok\tfine"}]})),
            Ok(())
        );

        let long = json!({"disks": [{"model": "ok"}, {"model": "m".repeat(4097)}]});
        assert_eq!(
            check_inventory(&long).unwrap_err().to_string(),
            "inventory.disks[1].model is longer than 4096 bytes"
        );
        let ctl = json!({"system": {"vendor": "a\u{1b}[2Jb"}});
        assert_eq!(
            check_inventory(&ctl).unwrap_err().to_string(),
            "inventory.system.vendor contains a control character"
        );
        let key = json!({"system": {"k".repeat(5000): 1}});
        assert_eq!(
            check_inventory(&key).unwrap_err().to_string(),
            "a key in inventory.system is longer than 4096 bytes"
        );
        let many: Vec<String> = (0..2000).map(|_| "x".repeat(4000)).collect();
        assert_eq!(
            check_inventory(&json!({ "many": many })).unwrap_err(),
            BoundsError::TooLarge { max: INVENTORY_MAX }
        );
        // A refusal under long keys shows a bounded path.
        let deep = json!({"a".repeat(4000): {"b": "\n"}});
        let msg = check_inventory(&deep).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn log_records_are_cut_and_scrubbed_not_refused() {
        use molar_protocol::methods::LogRecord;
        let mut fields = serde_json::Map::new();
        fields.insert("big".into(), json!("f".repeat(10_000)));
        let mut records = vec![
            LogRecord {
                ts_ms: 1,
                level: "info".into(),
                target: "molar_agent::session".into(),
                msg: "line one\n\tline two".into(),
                fields: serde_json::Map::new(),
            },
            LogRecord {
                ts_ms: 2,
                level: "info\u{1b}[31m".repeat(10),
                target: "t\r\n2026-01-01 ERROR forged".into(),
                msg: format!("{}\u{1b}]0;title\u{7}", "é".repeat(10_000)),
                fields,
            },
        ];
        let first = records[0].clone();
        assert_eq!(clamp_logs(&mut records), 1);
        assert_eq!(records[0], first, "a usual record is stored as sent");
        let r = &records[1];
        assert!(
            r.level.len() <= LOG_LEVEL_MAX && !r.level.contains('\u{1b}'),
            "{:?}",
            r.level
        );
        assert!(!r.target.contains(['\r', '\n']), "{:?}", r.target);
        assert!(r.msg.len() <= LOG_MSG_MAX && r.msg.ends_with('…'));
        assert!(!r.msg.chars().any(|c| c.is_control()));
        assert_eq!(r.fields.get("fields_cut_bytes"), Some(&json!(10_010)));
    }

    #[test]
    fn echo_never_repeats_unbounded_input() {
        assert_eq!(echo("inventory"), "inventory");
        assert_eq!(echo(&"m".repeat(10_000)), "a name of 10000 bytes");
        assert_eq!(echo("a\nb"), "a name of 3 bytes");
    }
}
