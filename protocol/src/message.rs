//! The four kinds of v1 message and their strict decoding.
//!
//! Decoding goes through `serde_json::Value` rather than a derived enum so that every way a
//! line can be wrong gets its own [`DecodeError`] naming the problem, and so that a command
//! whose `id` is usable but whose `method` or `params` are not can still be answered with an
//! `error` response instead of killing the connection (DESIGN.md: "bad params gets an error
//! response and the connection stays up").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only protocol version this crate speaks.
pub const VERSION: &str = "v1";

/// Longest accepted message id or method name, in bytes. Ids are echoed back and used as map
/// keys, so a hostile peer must not be able to make them arbitrarily large.
pub const MAX_ID_LEN: usize = 128;

/// Stable, snake_case error codes carried in `error.code`. Programs match on these; the
/// accompanying `msg` is for people.
pub mod codes {
    /// The method is not known to the receiver.
    pub const UNKNOWN_METHOD: &str = "unknown_method";
    /// `params` is missing a field, has a field of the wrong type, or an unknown field.
    pub const INVALID_PARAMS: &str = "invalid_params";
    /// The command itself is malformed (e.g. `method` not a string) but has a usable id.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// A task id was reused with a different method or different params.
    pub const TASK_CONFLICT: &str = "task_conflict";
    /// No task with that id.
    pub const UNKNOWN_TASK: &str = "unknown_task";
    /// The receiver has too many commands in flight.
    pub const BUSY: &str = "busy";
    /// The handshake token was missing, wrong or revoked.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The server already has a live session and the handshake did not present that
    /// session's credential: refused, never superseding it. The agent retries soon (its
    /// backoff is reset), so a legitimate agent regains its server when the contest ends.
    pub const SESSION_CONFLICT: &str = "session_conflict";
    /// The first command of a connection must be `handshake`.
    pub const HANDSHAKE_REQUIRED: &str = "handshake_required";
    /// The agent serves no command until the controller accepted its handshake.
    pub const NOT_READY: &str = "not_ready";
    /// The hardware is not ready for the request yet (drivers loading, disks still
    /// appearing); retrying later may succeed.
    pub const HARDWARE_NOT_READY: &str = "hardware_not_ready";
    /// A disk the request expects (by serial or WWN) is not present.
    pub const EXPECTED_DISK_MISSING: &str = "expected_disk_missing";
    /// The server's lifecycle has no such transition from the state it is in.
    pub const ILLEGAL_TRANSITION: &str = "illegal_transition";
    /// The server changed state while the request was decided: nothing was done.
    pub const STATE_CHANGED: &str = "state_changed";
    /// The server already runs a lifecycle workflow (a claim or a release).
    pub const WORKFLOW_RUNNING: &str = "workflow_running";
    /// The server's latest workflow cannot be retried (it did not fail, or it was a claim).
    pub const NOT_RETRIABLE: &str = "not_retriable";
    /// No common protocol version.
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    /// The addressed server has no live agent connection.
    pub const NOT_CONNECTED: &str = "not_connected";
    /// The addressed object does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// The other side did not answer in time.
    pub const TIMEOUT: &str = "timeout";
    /// The action was refused by a safety rule.
    pub const REFUSED: &str = "refused";
    /// The task was cancelled.
    pub const CANCELLED: &str = "cancelled";
    /// The hardware or the platform does not support the request.
    pub const UNSUPPORTED: &str = "unsupported";
    /// A device or file operation failed.
    pub const IO: &str = "io_error";
    /// Anything else: a bug or an unexpected condition on the receiver.
    pub const INTERNAL: &str = "internal";
}

/// A command: `{"version","id","method","params"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub method: String,
    /// Always a JSON object (an absent `params` decodes as `{}`).
    pub params: Value,
}

/// A success response: `{"version","id","result"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    pub id: String,
    pub result: Value,
}

/// The body of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub msg: String,
    pub code: String,
}

impl ErrorBody {
    pub fn new(code: &str, msg: impl Into<String>) -> Self {
        ErrorBody {
            msg: msg.into(),
            code: code.to_owned(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.code)
    }
}

impl std::error::Error for ErrorBody {}

/// An error response: `{"version","id","error":{"msg","code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    pub id: String,
    pub error: ErrorBody,
}

/// A fatal error: `{"version","fatal_error"}`; the sender closes the connection after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fatal {
    pub fatal_error: String,
}

/// Any v1 message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Command(Command),
    Success(Success),
    Error(ErrorResponse),
    Fatal(Fatal),
}

/// Why a line is not a usable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("line is not valid JSON: {0}")]
    NotJson(String),
    #[error("message is not a JSON object but {0}")]
    NotObject(&'static str),
    #[error("message has no \"version\" field")]
    MissingVersion,
    #[error("unsupported protocol version {0:?}, only \"v1\" is spoken")]
    UnsupportedVersion(String),
    #[error("command has no usable \"id\": {0}")]
    MissingId(&'static str),
    #[error("response has no usable \"id\": {0}")]
    ResponseWithoutId(&'static str),
    #[error("\"fatal_error\" must be a string")]
    BadFatal,
    #[error("\"error\" must be an object with a string \"msg\"")]
    BadErrorBody,
    #[error("message is neither a command, a response nor a fatal error")]
    Unrecognised,
    /// A command with a usable id that is otherwise malformed: answered with an `error`
    /// response, the connection stays up.
    #[error("invalid command {id:?}: {reason}")]
    BadCommand { id: String, reason: String },
}

impl DecodeError {
    /// The id to answer with an `error` response instead of closing the connection.
    pub fn reply_id(&self) -> Option<&str> {
        match self {
            DecodeError::BadCommand { id, .. } => Some(id),
            _ => None,
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn usable_id(obj: &Map<String, Value>) -> Result<String, &'static str> {
    match obj.get("id") {
        None => Err("field is missing"),
        Some(Value::String(s)) if s.is_empty() => Err("it is empty"),
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => Err("it is longer than 128 bytes"),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("it is not a string"),
    }
}

impl Message {
    /// Decodes one line (without its `\n`).
    pub fn decode(line: &str) -> Result<Message, DecodeError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError::NotObject(kind_of(&value)));
        };
        match obj.get("version") {
            None => return Err(DecodeError::MissingVersion),
            Some(Value::String(v)) if v == VERSION => {}
            Some(Value::String(v)) => return Err(DecodeError::UnsupportedVersion(v.clone())),
            Some(other) => return Err(DecodeError::UnsupportedVersion(other.to_string())),
        }

        if let Some(fatal) = obj.remove("fatal_error") {
            return match fatal {
                Value::String(fatal_error) => Ok(Message::Fatal(Fatal { fatal_error })),
                _ => Err(DecodeError::BadFatal),
            };
        }
        if obj.contains_key("method") {
            let id = usable_id(&obj).map_err(DecodeError::MissingId)?;
            let bad = |reason: &str| DecodeError::BadCommand {
                id: id.clone(),
                reason: reason.to_owned(),
            };
            let method = match obj.remove("method") {
                Some(Value::String(m)) if m.is_empty() => return Err(bad("\"method\" is empty")),
                Some(Value::String(m)) if m.len() > MAX_ID_LEN => {
                    return Err(bad("\"method\" is longer than 128 bytes"));
                }
                Some(Value::String(m)) => m,
                Some(other) => {
                    return Err(bad(&format!(
                        "\"method\" must be a string, not {}",
                        kind_of(&other)
                    )));
                }
                None => unreachable!("checked by contains_key above"),
            };
            let params = match obj.remove("params") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(p @ Value::Object(_)) => p,
                Some(other) => {
                    return Err(bad(&format!(
                        "\"params\" must be an object, not {}",
                        kind_of(&other)
                    )));
                }
            };
            return Ok(Message::Command(Command { id, method, params }));
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            let id = usable_id(&obj).map_err(DecodeError::ResponseWithoutId)?;
            if let Some(result) = obj.remove("result") {
                return Ok(Message::Success(Success { id, result }));
            }
            let error = obj.remove("error").unwrap_or(Value::Null);
            let Value::Object(mut body) = error else {
                return Err(DecodeError::BadErrorBody);
            };
            let Some(Value::String(msg)) = body.remove("msg") else {
                return Err(DecodeError::BadErrorBody);
            };
            // `code` is ours, not the seed's: a peer that only sends `msg` still decodes.
            let code = match body.remove("code") {
                Some(Value::String(c)) => c,
                _ => codes::INTERNAL.to_owned(),
            };
            return Ok(Message::Error(ErrorResponse {
                id,
                error: ErrorBody { msg, code },
            }));
        }
        Err(DecodeError::Unrecognised)
    }

    /// Encodes to one line, without the trailing `\n`.
    pub fn encode(&self) -> String {
        let mut obj = Map::new();
        obj.insert("version".into(), Value::String(VERSION.into()));
        match self {
            Message::Command(c) => {
                obj.insert("id".into(), Value::String(c.id.clone()));
                obj.insert("method".into(), Value::String(c.method.clone()));
                obj.insert("params".into(), c.params.clone());
            }
            Message::Success(s) => {
                obj.insert("id".into(), Value::String(s.id.clone()));
                obj.insert("result".into(), s.result.clone());
            }
            Message::Error(e) => {
                obj.insert("id".into(), Value::String(e.id.clone()));
                let body = serde_json::json!({"msg": e.error.msg, "code": e.error.code});
                obj.insert("error".into(), body);
            }
            Message::Fatal(f) => {
                obj.insert("fatal_error".into(), Value::String(f.fatal_error.clone()));
            }
        }
        Value::Object(obj).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn dec(s: &str) -> Result<Message, DecodeError> {
        Message::decode(s)
    }

    #[test]
    fn seed_shaped_messages_decode() {
        let c = dec(r#"{"version":"v1","id":"1","method":"ping","params":{"a":1}}"#).unwrap();
        assert_eq!(
            c,
            Message::Command(Command {
                id: "1".into(),
                method: "ping".into(),
                params: json!({"a":1})
            })
        );
        let s = dec(r#"{"version":"v1","id":"1","result":{"a":1}}"#).unwrap();
        assert!(matches!(s, Message::Success(Success { ref id, .. }) if id == "1"));
        let e = dec(r#"{"version":"v1","id":"1","error":{"msg":"nope"}}"#).unwrap();
        assert_eq!(
            e,
            Message::Error(ErrorResponse {
                id: "1".into(),
                error: ErrorBody::new(codes::INTERNAL, "nope")
            })
        );
        let f = dec(r#"{"version":"v1","fatal_error":"bye"}"#).unwrap();
        assert_eq!(
            f,
            Message::Fatal(Fatal {
                fatal_error: "bye".into()
            })
        );
    }

    #[test]
    fn absent_or_null_params_are_an_empty_object() {
        for line in [
            r#"{"version":"v1","id":"1","method":"status"}"#,
            r#"{"version":"v1","id":"1","method":"status","params":null}"#,
        ] {
            let Message::Command(c) = dec(line).unwrap() else {
                panic!("not a command")
            };
            assert_eq!(c.params, json!({}));
        }
    }

    #[test]
    fn every_kind_of_bad_line_names_its_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "hello",
                "line is not valid JSON: expected value at line 1 column 1",
            ),
            ("[1,2]", "message is not a JSON object but an array"),
            ("42", "message is not a JSON object but a number"),
            (
                r#"{"id":"1","method":"ping"}"#,
                "message has no \"version\" field",
            ),
            (
                r#"{"version":"v2","id":"1","method":"ping"}"#,
                "unsupported protocol version \"v2\", only \"v1\" is spoken",
            ),
            (
                r#"{"version":"v1","method":"ping"}"#,
                "command has no usable \"id\": field is missing",
            ),
            (
                r#"{"version":"v1","id":7,"method":"ping"}"#,
                "command has no usable \"id\": it is not a string",
            ),
            (
                r#"{"version":"v1","id":"","method":"ping"}"#,
                "command has no usable \"id\": it is empty",
            ),
            (
                r#"{"version":"v1","result":{}}"#,
                "response has no usable \"id\": field is missing",
            ),
            (
                r#"{"version":"v1","fatal_error":3}"#,
                "\"fatal_error\" must be a string",
            ),
            (
                r#"{"version":"v1","id":"1","error":"x"}"#,
                "\"error\" must be an object with a string \"msg\"",
            ),
            (
                r#"{"version":"v1","id":"1"}"#,
                "message is neither a command, a response nor a fatal error",
            ),
        ];
        for (line, want) in cases {
            let err = dec(line).unwrap_err();
            assert_eq!(err.to_string(), *want, "for line {line}");
            assert_eq!(err.reply_id(), None, "for line {line}");
        }
    }

    #[test]
    fn malformed_command_with_usable_id_is_answerable() {
        let err = dec(r#"{"version":"v1","id":"x","method":"ping","params":[1]}"#).unwrap_err();
        assert_eq!(err.reply_id(), Some("x"));
        assert_eq!(
            err.to_string(),
            "invalid command \"x\": \"params\" must be an object, not an array"
        );
        let err = dec(r#"{"version":"v1","id":"y","method":5}"#).unwrap_err();
        assert_eq!(err.reply_id(), Some("y"));
        assert_eq!(
            err.to_string(),
            "invalid command \"y\": \"method\" must be a string, not a number"
        );
    }

    #[test]
    fn overlong_ids_are_refused() {
        let id = "i".repeat(MAX_ID_LEN + 1);
        let line = format!(r#"{{"version":"v1","id":"{id}","method":"ping"}}"#);
        assert_eq!(
            dec(&line).unwrap_err(),
            DecodeError::MissingId("it is longer than 128 bytes")
        );
    }

    /// serde_json's default float parsing is only approximately exact: this number decoded to
    /// a neighbour of itself, so `ping` did not echo it.
    #[test]
    fn a_number_that_used_to_drift_round_trips() {
        let line = r#"{"version":"v1","id":"1","result":1.0715660391465826e-75}"#;
        let m = Message::decode(line).unwrap();
        let Message::Success(s) = &m else {
            panic!("not a success")
        };
        assert_eq!(s.result.as_f64(), Some(1.0715660391465826e-75));
        assert!(
            m.encode().contains("1.0715660391465826e-75"),
            "{}",
            m.encode()
        );
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            // Every finite f64 bit pattern, not only the "nice" ones.
            any::<u64>()
                .prop_map(f64::from_bits)
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-z_]{1,6}", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let id = "[A-Za-z0-9._:-]{1,40}";
        prop_oneof![
            (id, "[a-z._]{1,24}", arb_object()).prop_map(|(id, method, params)| {
                Message::Command(Command { id, method, params })
            }),
            (id, arb_json()).prop_map(|(id, result)| Message::Success(Success { id, result })),
            (id, "\\PC{0,40}", "[a-z_]{1,20}").prop_map(|(id, msg, code)| {
                Message::Error(ErrorResponse {
                    id,
                    error: ErrorBody { msg, code },
                })
            }),
            "\\PC{0,60}".prop_map(|fatal_error| Message::Fatal(Fatal { fatal_error })),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in arb_message()) {
            // A null result is a legitimate result and must survive too.
            let line = m.encode();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(Message::decode(&line).unwrap(), m);
        }

        #[test]
        fn every_finite_number_round_trips_exactly(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            let m = Message::Success(Success { id: "1".into(), result: json!(f) });
            let Message::Success(back) = Message::decode(&m.encode()).unwrap() else {
                panic!("not a success");
            };
            prop_assert_eq!(back.result.as_f64().map(f64::to_bits), Some(bits));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = Message::decode(&s);
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = Message::decode(&v.to_string());
            let mut o = serde_json::Map::new();
            o.insert("version".into(), json!("v1"));
            o.insert("id".into(), v.clone());
            o.insert("method".into(), v.clone());
            o.insert("params".into(), v.clone());
            o.insert("result".into(), v.clone());
            o.insert("error".into(), v);
            let _ = Message::decode(&Value::Object(o).to_string());
        }
    }
}
