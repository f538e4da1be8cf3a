//! Typed params and results of the core methods: the connection (`handshake`, `ping`), the
//! agent's own reporting (`status`, `log`, `task_status`) and task control (`task.list`,
//! `task.cancel`). Capability methods (erase, BMC, inventory, ...) define their types in
//! modules of their own.
//!
//! The method names and which types go with them are in [`crate::catalogue`].
//!
//! Params of commands the agent acts on deny unknown fields: a typo in a hostile or careless
//! command is an `invalid_params` error, never silently ignored. What the other side reports
//! (results, `handshake`, `task_status`, `log`) tolerates unknown fields, so a peer one release
//! newer is still understood (DESIGN.md, "Versioning").

use crate::Secret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// No params: `{}` (unknown fields refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// An empty result: `{}`, and whatever a newer peer adds to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {}

/// `reboot` and `poweroff` result: the action that will follow the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerResult {
    pub action: String,
}

/// Who the agent is: read from SMBIOS and the network interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// MAC addresses of the physical NICs, lowercase `aa:bb:cc:dd:ee:ff`, sorted.
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeParams {
    pub agent_version: String,
    /// Protocol versions the agent speaks; the controller picks one.
    pub protocols: Vec<String>,
    /// `/proc/sys/kernel/random/boot_id`: tells a reboot from a reconnect.
    pub boot_id: String,
    pub node: NodeIdentity,
    pub token: Secret,
    /// The session credential the controller gave this agent earlier in the same boot
    /// ([`HandshakeResult::session`]); absent on the first handshake of a boot. With it, a
    /// reconnect supersedes the server's old (dead) connection; without it, a server that
    /// has a live session is refused ([`crate::codes::SESSION_CONFLICT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResult {
    /// The controller's id for this server, stable across reboots.
    pub server_id: String,
    /// The protocol version chosen.
    pub protocol: String,
    /// Task ids whose terminal status the controller already holds: the agent stops resending.
    #[serde(default)]
    pub acknowledged_tasks: Vec<String>,
    /// A session credential bound to (this server, this boot), given after the first
    /// handshake of a boot: the agent keeps it in memory and presents it
    /// ([`HandshakeParams::session`]) on every reconnect until it reboots. Absent when the
    /// agent presented a valid one (it keeps using it) or the controller predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Secret>,
}

/// The fatal message a connection gets when a reconnect of the same agent (presenting its
/// session credential) takes its place. The agent retries without backing off further: a
/// legitimate agent is never starved by a contest for its session.
pub const SUPERSEDED: &str = "superseded by a new connection";

/// The state of a task (the seed's three, lowercase on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Complete,
    Error,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        match s {
            "running" => Some(TaskState::Running),
            "complete" => Some(TaskState::Complete),
            "error" => Some(TaskState::Error),
            _ => None,
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `task_status` params: `running` carries `percent` and `eta`; `error` carries `msg` (and a
/// `code`); `complete` carries `result`. Nothing follows a terminal status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: TaskState,
    /// 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Seconds of work estimated to remain; `null` while unknown, never absent (the seed:
    /// running "will additionally contain .eta and .percent").
    #[serde(default)]
    pub eta: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Per-task sequence number, increasing with every status the agent produces. Lets the
    /// controller ignore a stale `running` that arrives after a newer one.
    #[serde(default)]
    pub seq: u64,
}

/// The immediate answer to a task command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccepted {
    pub task_id: String,
    pub state: TaskState,
}

/// `task.cancel` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    pub task_id: String,
}

/// One task as the agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task_id: String,
    pub method: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Whether a cancellation was requested.
    #[serde(default)]
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskListResult {
    pub tasks: Vec<TaskInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    pub agent_version: String,
    pub uptime_s: u64,
    pub boot_id: String,
    /// Whether the agent runs as PID 1 of the ramdisk.
    pub ramdisk: bool,
    pub tasks: Vec<TaskInfo>,
    /// Log records dropped while disconnected (the buffer is bounded).
    pub logs_dropped: u64,
    /// Kernel modules the ramdisk loaded and failed to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<ModuleReport>,
    /// The agent's resident memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// What the ramdisk's coldplug loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleReport {
    pub loaded: Vec<String>,
    /// `(module, reason)`.
    pub failed: Vec<(String, String)>,
    /// Device modaliases no module matched.
    #[serde(default)]
    pub unmatched_aliases: usize,
}

/// One structured log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    /// error, warn, info, debug or trace.
    pub level: String,
    pub target: String,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogParams {
    pub records: Vec<LogRecord>,
    /// Records dropped since the previous batch because the buffer was full.
    #[serde(default)]
    pub dropped: u64,
}

/// Decodes `params` into `M::Params`, with an `invalid_params` error naming the problem.
pub fn parse_params<T: DeserializeOwned>(
    method: &str,
    params: Value,
) -> Result<T, crate::ErrorBody> {
    serde_json::from_value(params).map_err(|e| {
        crate::ErrorBody::new(
            crate::codes::INVALID_PARAMS,
            format!("invalid params for {method}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_round_trips_and_hides_token_in_debug() {
        let p = HandshakeParams {
            agent_version: "0.1.0".into(),
            protocols: vec!["v1".into()],
            boot_id: "b".into(),
            node: NodeIdentity {
                system_uuid: Some("u".into()),
                serial: None,
                macs: vec!["52:54:00:12:34:56".into()],
                hostname: None,
            },
            token: Secret::new("tok-secret"),
            session: Some(Secret::new("sess-secret")),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["token"], json!("tok-secret"));
        assert_eq!(serde_json::from_value::<HandshakeParams>(v).unwrap(), p);
        assert!(!format!("{p:?}").contains("tok-secret"));
        assert!(!format!("{p:?}").contains("sess-secret"));
        // An older agent sends no session; an older controller answers none.
        let mut old = serde_json::to_value(&p).unwrap();
        old.as_object_mut().unwrap().remove("session");
        let p: HandshakeParams = serde_json::from_value(old).unwrap();
        assert_eq!(p.session, None);
        let r: HandshakeResult = serde_json::from_value(
            json!({"server_id": "srv-1", "protocol": "v1", "later_field": true}),
        )
        .unwrap();
        assert_eq!(r.session, None);
        assert!(r.acknowledged_tasks.is_empty());
    }

    #[test]
    fn params_with_unknown_or_mistyped_fields_are_named() {
        let e = parse_params::<TaskRef>("task.cancel", json!({"task_id": 3})).unwrap_err();
        assert_eq!(e.code, crate::codes::INVALID_PARAMS);
        assert_eq!(
            e.msg,
            "invalid params for task.cancel: invalid type: integer `3`, expected a string"
        );
        let e =
            parse_params::<TaskRef>("task.cancel", json!({"task_id": "a", "x": 1})).unwrap_err();
        assert_eq!(
            e.msg,
            "invalid params for task.cancel: unknown field `x`, expected `task_id`"
        );
        let e = parse_params::<Empty>("status", json!({"x": 1})).unwrap_err();
        assert!(
            e.msg
                .starts_with("invalid params for status: unknown field `x`")
        );
    }

    /// The first status of an erase had no `eta` at all; the seed says a running status
    /// carries it, so an unknown one is `null`, never absent.
    #[test]
    fn a_running_status_without_an_estimate_says_eta_null() {
        let s = TaskStatus {
            task_id: "t".into(),
            state: TaskState::Running,
            percent: Some(0.0),
            eta: None,
            msg: None,
            code: None,
            result: None,
            seq: 1,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v.get("eta"), Some(&Value::Null), "{v}");
        assert_eq!(serde_json::from_value::<TaskStatus>(v).unwrap(), s);
    }

    #[test]
    fn task_state_is_lowercase_on_the_wire() {
        let s = TaskStatus {
            task_id: "t".into(),
            state: TaskState::Running,
            percent: Some(12.5),
            eta: Some(30),
            msg: None,
            code: None,
            result: None,
            seq: 1,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"task_id":"t","state":"running","percent":12.5,"eta":30,"seq":1})
        );
    }
}
