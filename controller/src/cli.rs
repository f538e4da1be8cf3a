//! The `molar` command line: `molar serve` runs the controller, every other command is a
//! client of its API ([`crate::client`]).
//!
//! Exit codes are part of the interface (scripts rely on them): see [`EXIT_CODES`].

use crate::client::{Client, ClientError};
use crate::store::{Retention, TaskEvent, TaskPhase, TokenScope};
use crate::{ServeConfig, start};
use clap::{Parser, Subcommand};
use molar_protocol::codes;
use serde::Serialize;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Shown at the end of `molar --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (bad arguments, invalid JSON)
  3  not found (server, task or token)
  4  not connected (the server has no agent connection)
  5  task failed, or the agent returned an error
  6  unauthorized (admin token missing or wrong)
  7  timeout";

pub const EXIT_OTHER: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_NOT_CONNECTED: u8 = 4;
pub const EXIT_FAILED: u8 = 5;
pub const EXIT_UNAUTHORIZED: u8 = 6;
pub const EXIT_TIMEOUT: u8 = 7;

#[derive(Debug, Parser)]
#[command(
    name = "molar",
    version,
    about = "molar controller (`molar serve`) and its command line client",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Controller state directory: `serve` keeps everything there; clients read api.url,
    /// admin.token and ca.pem from it unless --api/--token-file/--ca say otherwise.
    #[arg(
        long,
        global = true,
        env = "MOLAR_STATE_DIR",
        default_value = "/var/lib/molar"
    )]
    pub state_dir: PathBuf,
    /// API URL, e.g. https://127.0.0.1:7701. For `serve`: the address the API listens on
    /// (default 127.0.0.1:7701).
    #[arg(long, global = true, env = "MOLAR_API")]
    pub api: Option<String>,
    /// File holding the admin token.
    #[arg(long, global = true, env = "MOLAR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the API's certificate is checked against.
    #[arg(long, global = true, env = "MOLAR_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of tables and text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Serve {
        /// Agent listener address, e.g. 0.0.0.0:7700.
        #[arg(long)]
        listen: SocketAddr,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Also serve agents that connect without TLS (lab only).
        #[arg(long)]
        allow_plaintext_agents: bool,
        /// Agent connections held at once.
        #[arg(long, default_value_t = 20_000)]
        max_connections: usize,
        #[command(flatten)]
        limits: crate::LimitFlags,
        /// Days agents' log records are kept (0: forever).
        #[arg(long, default_value_t = 30)]
        retain_logs_days: u64,
        /// Most log records kept per server, the newest (0: no limit).
        #[arg(long, default_value_t = 100_000)]
        retain_logs_per_server: u64,
        /// Days task events are kept; a task's latest and final events always are (0: forever).
        #[arg(long, default_value_t = 30)]
        retain_task_events_days: u64,
        /// Most events kept per task, the newest (0: no limit).
        #[arg(long, default_value_t = 10_000)]
        retain_task_events_per_task: u64,
    },
    /// Agent tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List servers.
    Servers,
    /// Show one server (`molar server ID`), remove one (`molar server remove ID`) or expect
    /// it to enrol again (`molar server reenrol ID`).
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Server {
        #[arg(required = true)]
        id: Option<String>,
        /// Include the stored inventory.
        #[arg(long)]
        inventory: bool,
        #[command(subcommand)]
        command: Option<ServerCommand>,
    },
    /// Call a method on a server's agent and print its result as one line of JSON.
    Call {
        id: String,
        method: String,
        /// Params, a JSON object (default {}).
        params: Option<String>,
        /// Seconds to wait for the agent's answer.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Tasks.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// List a server's tasks.
    Tasks { id: String },
    /// Print a server's logs.
    Logs {
        id: String,
        /// Keep printing new records.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print security events: refused handshakes, superseded sessions, revoked and rotated
    /// tokens, expected ramdisk boots.
    Events {
        /// Only this server's events.
        #[arg(long)]
        server: Option<String>,
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Remove a server with its connections, tasks, task events, logs and BMC entry, closing
    /// its agent connection (an agent still running there registers again as a new server).
    Remove { id: String },
    /// Expect the server to boot the ramdisk again: until then an enrolment (or set) token
    /// may claim it, and its new boot may replace its session.
    Reenrol {
        id: String,
        /// Seconds the expectation lasts (default 3600).
        #[arg(long = "for-s")]
        for_s: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an agent token and print it (only this once). Without a scope it may be any
    /// server, enrolled or new (what every token meant before scopes).
    Create {
        name: String,
        /// Only this enrolled server.
        #[arg(long, group = "scope")]
        server: Option<String>,
        /// Servers with this label (e.g. a rack); servers it enrols get the label.
        #[arg(long, group = "scope", value_name = "LABEL")]
        set: Option<String>,
        /// Only the enrolment of new servers (or of one being re-enrolled).
        #[arg(long, group = "scope")]
        enrol: bool,
    },
    /// List agent tokens.
    List,
    /// Revoke an agent token; its agents' sessions are closed at once.
    Revoke { id: String },
    /// Replace an agent token by a new secret with the same scope and print it; the old one
    /// is revoked and its sessions are closed at once.
    Rotate { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Start a task on a server.
    Start {
        id: String,
        method: String,
        /// Params, a JSON object (default {}).
        params: Option<String>,
        /// Follow the task's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Show a task.
    Show { task: String },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub msg: String,
}

impl Failure {
    fn new(code: u8, msg: impl Into<String>) -> Self {
        Failure {
            code,
            msg: msg.into(),
        }
    }

    /// Stdout was closed (`molar ... | head`): not an error, the command just ends.
    fn stdout_closed() -> Self {
        Failure::new(0, "")
    }
}

/// Exit code for an API error; `agent_call` marks commands whose other errors come from the
/// agent (exit 5).
fn exit_for(e: &ClientError, agent_call: bool) -> u8 {
    match e.code() {
        codes::NOT_FOUND => EXIT_NOT_FOUND,
        codes::NOT_CONNECTED => EXIT_NOT_CONNECTED,
        codes::UNAUTHORIZED => EXIT_UNAUTHORIZED,
        codes::TIMEOUT => EXIT_TIMEOUT,
        _ if matches!(e, ClientError::Api(_)) && agent_call => EXIT_FAILED,
        codes::INVALID_PARAMS | codes::INVALID_REQUEST => EXIT_USAGE,
        _ => EXIT_OTHER,
    }
}

fn api_err(agent_call: bool) -> impl Fn(ClientError) -> Failure {
    move |e| Failure::new(exit_for(&e, agent_call), e.to_string())
}

/// Runs a parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("molar: starting the async runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.code == 0 => ExitCode::SUCCESS,
        Err(f) => {
            // Errors carry agents' messages: escaped like everything else they send.
            eprintln!("molar: {}", sanitize(&f.msg));
            ExitCode::from(f.code)
        }
    }
}

fn client(cli: &Cli) -> Result<Client, Failure> {
    let dir = &cli.state_dir;
    let url = match &cli.api {
        Some(u) => u.clone(),
        None => std::fs::read_to_string(dir.join("api.url"))
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                Failure::new(
                    EXIT_USAGE,
                    format!(
                        "reading {}: {e} (pass --state-dir of a controller, or --api)",
                        dir.join("api.url").display()
                    ),
                )
            })?,
    };
    let token = cli
        .token_file
        .clone()
        .unwrap_or_else(|| dir.join("admin.token"));
    let ca = cli.ca.clone().unwrap_or_else(|| dir.join("ca.pem"));
    Client::from_files(&url, &token, &ca).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))
}

/// The API listen address of `serve`: `--api ADDR` (a URL's `https://` is tolerated, so one
/// `MOLAR_API` serves the daemon and its clients).
fn api_listen_addr(api: Option<&str>) -> Result<SocketAddr, Failure> {
    let Some(api) = api else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 7701)));
    };
    let addr = api
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    addr.parse().map_err(|_| {
        Failure::new(
            EXIT_USAGE,
            format!("--api must be an address such as 127.0.0.1:7701, not {api:?}"),
        )
    })
}

fn parse_params(text: Option<&str>) -> Result<Value, Failure> {
    let Some(text) = text else {
        return Ok(Value::Object(Default::default()));
    };
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("params are not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Failure::new(EXIT_USAGE, "params must be a JSON object"));
    }
    Ok(v)
}

fn print_json<T: Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    emit(&json_for_terminal(&text))
}

/// Writes one line to stdout. A closed stdout (`molar ... | head`) is [`Failure::stdout_closed`]:
/// the command ends quietly instead of panicking like `println!`.
fn emit(line: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::stdout_closed()),
        Err(e) => Err(Failure::new(EXIT_OTHER, format!("writing to stdout: {e}"))),
    }
}

/// `println!` through [`emit`]: evaluates to its `Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(&format!($($arg)*))
    };
}

/// Whether a character can steer a terminal or reorder what is shown: C0 controls (CR, LF,
/// ESC, ...), DEL, C1 controls (U+0080..U+009F, CSI among them) and the Unicode bidi
/// embeddings, overrides and isolates.
fn is_unsafe_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A string that came from an agent or a BMC, made safe to print on the operator's terminal:
/// every [`is_unsafe_char`] becomes a visible escape (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{202e}`), so a hostile hostname or log record can neither forge lines nor send escape
/// sequences.
pub fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text made safe for a terminal and still the same JSON: serde_json escapes C0 controls
/// in strings (raw ones are only the pretty printer's newlines) but writes DEL, C1 controls and
/// bidi controls raw; those can only occur inside strings, so `\uXXXX` escapes them without
/// changing the value.
fn json_for_terminal(json: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_in_json = |c: char| is_unsafe_char(c) && c >= '\u{7f}';
    if !json.chars().any(unsafe_in_json) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if unsafe_in_json(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Most characters of a table cell; longer values end in `…` (`--json` has them whole).
pub const CELL_MAX: usize = 64;

/// A table cell: [`sanitize`]d, then cut to [`CELL_MAX`] characters.
fn cell(s: &str) -> String {
    let s = sanitize(s);
    if s.chars().count() <= CELL_MAX {
        return s.into_owned();
    }
    let mut cut: String = s.chars().take(CELL_MAX - 1).collect();
    cut.push('…');
    cut
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A table with a header, columns two spaces apart; every cell goes through [`cell`].
/// Padding is done by hand: a `{:w$}` width over `u16::MAX` panics ("Formatting argument out
/// of range").
fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(
            rows.into_iter()
                .map(|r| r.iter().map(|c| cell(c)).collect()),
        )
        .collect();
    let mut widths: Vec<usize> = vec![0; header.len()];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    rows.into_iter()
        .map(|cells| {
            let mut s = String::new();
            let n = cells.len();
            for (i, c) in cells.into_iter().enumerate() {
                let pad = widths.get(i).copied().unwrap_or(0);
                let len = c.chars().count();
                s.push_str(&c);
                if i + 1 < n {
                    s.extend(std::iter::repeat_n(' ', pad.saturating_sub(len) + 2));
                }
            }
            s.trim_end().to_owned()
        })
        .collect()
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    for line in render_table(header, rows) {
        emit(&line)?;
    }
    Ok(())
}

/// An optional agent-reported value for text output, [`sanitize`]d; `-` when absent.
fn opt(s: &Option<String>) -> String {
    s.as_deref()
        .map_or_else(|| "-".into(), |s| sanitize(s).into_owned())
}

/// The table of `molar servers`.
fn servers_table(servers: Vec<crate::api::ServerView>) -> Vec<String> {
    let rows = servers
        .into_iter()
        .map(|v| {
            let s = v.server;
            vec![
                s.id,
                s.state.as_str().into(),
                if s.connected { "yes" } else { "no" }.into(),
                opt(&s.hostname),
                opt(&s.agent_version),
                format_time(s.last_seen_ms),
                s.system_uuid
                    .or(s.serial)
                    .unwrap_or_else(|| s.macs.join(",")),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "STATE",
            "CONNECTED",
            "HOSTNAME",
            "AGENT",
            "LAST SEEN",
            "IDENTITY",
        ],
        rows,
    )
}

/// The text of `molar server`: every agent- or BMC-reported value [`sanitize`]d, in full.
fn server_text(v: &crate::api::ServerView) -> Vec<String> {
    let s = &v.server;
    let mut out = vec![
        format!("id:            {}", sanitize(&s.id)),
        format!("state:         {}", s.state.as_str()),
        format!("connected:     {}", if s.connected { "yes" } else { "no" }),
        format!("hostname:      {}", opt(&s.hostname)),
        format!("system uuid:   {}", opt(&s.system_uuid)),
        format!("serial:        {}", opt(&s.serial)),
        format!("macs:          {}", sanitize(&s.macs.join(", "))),
        format!("agent version: {}", opt(&s.agent_version)),
        format!("boot id:       {}", opt(&s.boot_id)),
        format!("first seen:    {}", format_time(s.first_seen_ms)),
        format!("last seen:     {}", format_time(s.last_seen_ms)),
        format!("logs dropped:  {}", s.logs_dropped),
    ];
    if !s.labels.is_empty() {
        out.push(format!("labels:        {}", sanitize(&s.labels.join(", "))));
    }
    if let Some(until) = s.expect_ramdisk_until_ms {
        out.push(format!("reenrol until: {}", format_time(until)));
    }
    if let Some(conn) = &v.connection {
        out.push(format!("peer address:  {}", sanitize(&conn.peer_addr)));
        out.push(format!("connected at:  {}", format_time(conn.opened_ms)));
        if let (Some(at), Some(why)) = (conn.closed_ms, &conn.close_reason) {
            out.push(format!(
                "closed at:     {} ({})",
                format_time(at),
                sanitize(why)
            ));
        }
    }
    if let Some(b) = &v.bmc {
        out.push(format!(
            "bmc:           {} {} user {} ({}, {})",
            opt(&b.mac),
            opt(&b.ip),
            sanitize(&b.username),
            sanitize(&b.source),
            format_time(b.updated_ms)
        ));
    }
    if let Some(inv) = &v.inventory {
        out.push("inventory:".into());
        let text = serde_json::to_string_pretty(inv).unwrap_or_default();
        out.push(json_for_terminal(&text).into_owned());
    }
    out
}

/// One line of `molar logs`: level, target, message and fields as the agent sent them,
/// [`sanitize`]d (a record's CR/LF cannot forge further lines).
fn log_line(l: &crate::store::LogEntry) -> String {
    let fields = l
        .fields
        .as_ref()
        .map(|f| format!(" {}", sanitize(&f.to_string())))
        .unwrap_or_default();
    format!(
        "{} {:>5} {}: {}{fields}",
        format_time(l.ts_ms),
        sanitize(&l.level.to_uppercase()),
        sanitize(&l.target),
        sanitize(&l.msg)
    )
}

/// One line of `molar events`: time, kind, server, token, peer and message, [`sanitize`]d
/// (a message can name what a peer sent).
fn event_line(e: &crate::store::EventRecord) -> String {
    let ev = &e.event;
    let or_dash = |s: &Option<String>| opt(s);
    format!(
        "{} {} server={} token={} peer={}: {}",
        format_time(e.at_ms),
        sanitize(&ev.kind),
        or_dash(&ev.server_id),
        or_dash(&ev.token_id),
        or_dash(&ev.peer_addr),
        sanitize(&ev.msg)
    )
}

/// The answer to `token create` and `token rotate`: the token alone (scripts capture it),
/// or everything as JSON.
fn print_created(t: &crate::api::CreatedToken, json: bool) -> Result<(), Failure> {
    if json {
        print_json(&serde_json::json!({
            "id": t.id,
            "name": t.name,
            "token": t.token.expose(),
            "scope": t.scope,
            "rotated_from": t.rotated_from,
        }))
    } else {
        outln!("{}", t.token.expose())
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve {
            listen,
            sans,
            allow_plaintext_agents,
            max_connections,
            limits,
            retain_logs_days,
            retain_logs_per_server,
            retain_task_events_days,
            retain_task_events_per_task,
        } => {
            let mut cfg = ServeConfig::new(
                *listen,
                api_listen_addr(cli.api.as_deref())?,
                &cli.state_dir,
            );
            cfg.sans = sans.clone();
            cfg.allow_plaintext_agents = *allow_plaintext_agents;
            cfg.max_connections = *max_connections;
            limits.apply(&mut cfg);
            cfg.retention = Retention {
                logs_max_age: Retention::days(*retain_logs_days),
                logs_per_server: Retention::count(*retain_logs_per_server),
                task_events_max_age: Retention::days(*retain_task_events_days),
                task_events_per_task: Retention::count(*retain_task_events_per_task),
                ..Retention::default()
            };
            serve(cfg).await
        }
        Command::Token { command } => {
            let c = client(&cli)?;
            match command {
                TokenCommand::Create {
                    name,
                    server,
                    set,
                    enrol,
                } => {
                    let scope = match (server, set, enrol) {
                        (Some(id), _, _) => TokenScope::Server {
                            server_id: id.clone(),
                        },
                        (_, Some(label), _) => TokenScope::Set {
                            label: label.clone(),
                        },
                        (_, _, true) => TokenScope::Enrol,
                        _ => TokenScope::Any,
                    };
                    let t = c
                        .create_scoped_token(name, &scope)
                        .await
                        .map_err(api_err(false))?;
                    print_created(&t, cli.json)?;
                }
                TokenCommand::Rotate { id } => {
                    let t = c.rotate_token(id).await.map_err(api_err(false))?;
                    print_created(&t, cli.json)?;
                }
                TokenCommand::List => {
                    let ts = c.tokens().await.map_err(api_err(false))?;
                    if cli.json {
                        print_json(&ts)?;
                    } else {
                        let rows = ts
                            .into_iter()
                            .map(|t| {
                                vec![
                                    t.id,
                                    t.name,
                                    t.scope.describe(),
                                    format_time(t.created_ms),
                                    t.revoked_ms.map_or("-".into(), format_time),
                                ]
                            })
                            .collect();
                        table(&["ID", "NAME", "SCOPE", "CREATED", "REVOKED"], rows)?;
                    }
                }
                TokenCommand::Revoke { id } => {
                    c.revoke_token(id).await.map_err(api_err(false))?;
                    if cli.json {
                        print_json(&serde_json::json!({"id": id, "revoked": true}))?;
                    } else {
                        outln!("token {id} revoked")?;
                    }
                }
            }
            Ok(())
        }
        Command::Servers => {
            let c = client(&cli)?;
            let servers = c.servers().await.map_err(api_err(false))?;
            if cli.json {
                print_json(&servers)?;
            } else {
                for line in servers_table(servers) {
                    emit(&line)?;
                }
            }
            Ok(())
        }
        Command::Server {
            command: Some(ServerCommand::Remove { id }),
            ..
        } => {
            let c = client(&cli)?;
            let r = c.remove_server(id).await.map_err(api_err(false))?;
            if cli.json {
                print_json(&r)?;
            } else {
                let d = r.deleted;
                outln!(
                    "server {} removed ({} tasks, {} task events, {} log records, {} connections)",
                    sanitize(id),
                    d.tasks,
                    d.task_events,
                    d.logs,
                    d.connections
                )?;
            }
            Ok(())
        }
        Command::Server {
            command: Some(ServerCommand::Reenrol { id, for_s }),
            ..
        } => {
            let c = client(&cli)?;
            let r = c
                .reenrol_server(id, for_s.map(Duration::from_secs))
                .await
                .map_err(api_err(false))?;
            if cli.json {
                print_json(&r)?;
            } else {
                outln!(
                    "server {} may boot the ramdisk and enrol again until {}",
                    sanitize(id),
                    format_time(r.expect_ramdisk_until_ms)
                )?;
            }
            Ok(())
        }
        Command::Events { server, follow } => {
            let c = client(&cli)?;
            let mut after = 0;
            loop {
                let page = c
                    .events(server.as_deref(), after, 1000)
                    .await
                    .map_err(api_err(false))?;
                for e in &page.events {
                    if cli.json {
                        let line = serde_json::to_string(e).unwrap_or_default();
                        emit(&json_for_terminal(&line))?;
                    } else {
                        emit(&event_line(e))?;
                    }
                }
                after = page.next_after;
                if page.events.len() < 1000 {
                    if !*follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Command::Server { id, inventory, .. } => {
            let Some(id) = id else {
                return Err(Failure::new(EXIT_USAGE, "molar server needs a server id"));
            };
            let c = client(&cli)?;
            let v = c.server(id, *inventory).await.map_err(api_err(false))?;
            if cli.json {
                print_json(&v)?;
                return Ok(());
            }
            for line in server_text(&v) {
                emit(&line)?;
            }
            Ok(())
        }
        Command::Call {
            id,
            method,
            params,
            timeout,
        } => {
            let params = parse_params(params.as_deref())?;
            let timeout = match timeout {
                Some(t) if t.is_finite() && *t > 0.0 => {
                    Some(Duration::from_secs_f64(t.min(86_400.0)))
                }
                Some(t) => {
                    return Err(Failure::new(
                        EXIT_USAGE,
                        format!("--timeout must be a positive number of seconds, not {t}"),
                    ));
                }
                None => None,
            };
            let c = client(&cli)?;
            let result = c
                .call(id, method, params, timeout)
                .await
                .map_err(api_err(true))?;
            if cli.json {
                print_json(&result)?;
            } else {
                emit(&json_for_terminal(&result.to_string()))?;
            }
            Ok(())
        }
        Command::Task { command } => match command {
            TaskCommand::Start {
                id,
                method,
                params,
                wait,
            } => {
                let params = parse_params(params.as_deref())?;
                let c = client(&cli)?;
                let started = c
                    .start_task(id, method, params)
                    .await
                    .map_err(api_err(true))?;
                if !*wait {
                    if cli.json {
                        print_json(&started)?;
                    } else {
                        outln!("{}", sanitize(&started.task_id))?;
                    }
                    return Ok(());
                }
                follow_task(&c, &started.task_id, cli.json).await
            }
            TaskCommand::Show { task } => {
                let c = client(&cli)?;
                let t = c.task(task).await.map_err(api_err(false))?;
                if cli.json {
                    print_json(&t)?;
                    return Ok(());
                }
                outln!("task:     {}", sanitize(&t.task_id))?;
                outln!("server:   {}", sanitize(&t.server_id))?;
                outln!("method:   {}", sanitize(&t.method))?;
                outln!("state:    {}", t.state.as_str())?;
                if let Some(p) = t.percent {
                    outln!("percent:  {p:.1}")?;
                }
                if let Some(e) = t.eta {
                    outln!("eta:      {e} s")?;
                }
                if let Some(m) = &t.msg {
                    outln!("msg:      {}", sanitize(m))?;
                }
                if let Some(code) = &t.code {
                    outln!("code:     {}", sanitize(code))?;
                }
                outln!("created:  {}", format_time(t.created_ms))?;
                if let Some(f) = t.finished_ms {
                    outln!("finished: {}", format_time(f))?;
                }
                if let Some(r) = &t.result {
                    outln!("result:   {}", sanitize(&r.to_string()))?;
                }
                Ok(())
            }
        },
        Command::Tasks { id } => {
            let c = client(&cli)?;
            let tasks = c.server_tasks(id).await.map_err(api_err(false))?;
            if cli.json {
                print_json(&tasks)?;
            } else {
                let rows = tasks
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.task_id,
                            t.method,
                            t.state.as_str().into(),
                            t.percent.map_or("-".into(), |p| format!("{p:.0}%")),
                            format_time(t.created_ms),
                            t.msg.unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &["TASK", "METHOD", "STATE", "PERCENT", "CREATED", "MSG"],
                    rows,
                )?;
            }
            Ok(())
        }
        Command::Logs { id, follow } => {
            let c = client(&cli)?;
            let mut after = 0;
            loop {
                let page = c.logs(id, after, 1000).await.map_err(api_err(false))?;
                for l in &page.logs {
                    if cli.json {
                        let line = serde_json::to_string(l).unwrap_or_default();
                        emit(&json_for_terminal(&line))?;
                    } else {
                        emit(&log_line(l))?;
                    }
                }
                after = page.next_after;
                if page.logs.len() < 1000 {
                    if !*follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Consecutive failed attempts to follow a task's events before `--wait` gives up (about a
/// minute: long enough for a controller restart).
const FOLLOW_RETRIES: u32 = 60;

async fn follow_task(c: &Client, task_id: &str, json: bool) -> Result<(), Failure> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(task_id.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last: Option<TaskEvent> = None;
    // The stream replays stored events, so after a lost connection (e.g. the controller
    // restarting mid-task) following again from the start loses nothing.
    let mut failures = 0;
    'follow: loop {
        let opened = c.task_events(task_id).await;
        let mut events = match opened {
            Ok(ev) => ev,
            Err(e) if matches!(e, ClientError::Api(_)) => return Err(api_err(false)(e)),
            Err(e) => {
                failures += 1;
                if failures > FOLLOW_RETRIES {
                    return Err(api_err(false)(e));
                }
                bar.set_message(format!(
                    "{task_id} (reconnecting: {})",
                    sanitize(&e.to_string())
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            failures = 0;
            if let Some(p) = ev.percent {
                bar.set_position(p.clamp(0.0, 100.0) as u64);
            }
            let eta = ev.eta.map(|e| format!("eta {e} s")).unwrap_or_default();
            bar.set_message(format!("{task_id} {eta}"));
            let terminal = ev.state.is_terminal();
            last = Some(ev);
            if terminal {
                break 'follow;
            }
        }
        if c.task(task_id).await.is_ok_and(|t| t.state.is_terminal()) {
            break;
        }
        failures += 1;
        if failures > FOLLOW_RETRIES {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bar.finish_and_clear();
    let task = c.task(task_id).await.map_err(api_err(false))?;
    if json {
        print_json(&task)?;
    }
    let finished = last
        .as_ref()
        .filter(|e| e.state.is_terminal())
        .map(|e| e.at_ms)
        .or(task.finished_ms);
    let took = finished
        .map(|f| (f - task.created_ms).max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    match task.state {
        TaskPhase::Complete => {
            if !json {
                outln!("task {task_id} complete in {took:.1} s")?;
            }
            Ok(())
        }
        TaskPhase::Error => {
            let msg = task.msg.unwrap_or_else(|| "no message".into());
            let code = task.code.unwrap_or_else(|| codes::INTERNAL.into());
            let (msg, code) = (sanitize(&msg), sanitize(&code));
            if !json {
                // The task's failure decides the exit code, even if stdout is gone.
                let _ = outln!("task {task_id} failed: {msg} ({code})");
            }
            Err(Failure::new(
                EXIT_FAILED,
                format!("task {task_id} failed: {msg} ({code})"),
            ))
        }
        other => Err(Failure::new(
            EXIT_OTHER,
            format!(
                "the event stream of task {task_id} ended while it is {}",
                other.as_str()
            ),
        )),
    }
}

async fn serve(cfg: ServeConfig) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let shutdown = CancellationToken::new();
    let running = start(cfg, shutdown.clone())
        .await
        .map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;
    // The fingerprint alone on stdout: agents pin it (`molar.ca=sha256:...`).
    // A closed stdout must not take the controller down with it.
    if emit(&running.ca_fingerprint).is_err() {
        tracing::warn!(fingerprint = %running.ca_fingerprint, "could not print the CA fingerprint to stdout");
    }
    tracing::info!(
        agents = %running.agent_addr,
        api = %running.api_url,
        ca = %running.ca_pem_path.display(),
        "serving"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    running.join().await;
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent_and_documents_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("7  timeout"));
    }

    #[test]
    fn server_shows_a_server_or_removes_one() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        match parse(&["molar", "server", "srv-1", "--inventory"]).unwrap() {
            Command::Server {
                id,
                inventory,
                command: None,
            } => assert_eq!((id.as_deref(), inventory), (Some("srv-1"), true)),
            other => panic!("{other:?}"),
        }
        match parse(&["molar", "--json", "server", "remove", "srv-1"]).unwrap() {
            Command::Server {
                id: None,
                command: Some(ServerCommand::Remove { id }),
                ..
            } => assert_eq!(id, "srv-1"),
            other => panic!("{other:?}"),
        }
        match parse(&["molar", "server", "reenrol", "srv-1", "--for-s", "60"]).unwrap() {
            Command::Server {
                command: Some(ServerCommand::Reenrol { id, for_s }),
                ..
            } => assert_eq!((id.as_str(), for_s), ("srv-1", Some(60))),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["molar", "server"]).is_err());
        assert!(parse(&["molar", "server", "remove"]).is_err());
    }

    #[test]
    fn a_token_has_at_most_one_scope() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        match parse(&["molar", "token", "create", "rack", "--set", "rack-a"]).unwrap() {
            Command::Token {
                command:
                    TokenCommand::Create {
                        set, enrol, server, ..
                    },
            } => assert_eq!(
                (set.as_deref(), enrol, server),
                (Some("rack-a"), false, None)
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["molar", "token", "create", "plain"]).is_ok());
        assert!(parse(&["molar", "token", "create", "x", "--enrol", "--set", "a"]).is_err());
        assert!(parse(&["molar", "token", "create", "x", "--server", "s", "--enrol"]).is_err());
        assert!(parse(&["molar", "token", "rotate", "tok-1"]).is_ok());
    }

    #[test]
    fn event_lines_escape_what_peers_sent() {
        let e = crate::store::EventRecord {
            id: 1,
            at_ms: 0,
            event: crate::store::NewEvent {
                kind: "handshake_refused".into(),
                server_id: Some("srv-1".into()),
                token_id: None,
                peer_addr: Some("127.0.0.1:9".into()),
                msg: "refused\r\nforged\x1b[2J".into(),
            },
        };
        let line = event_line(&e);
        assert_printable(&line);
        assert_eq!(
            line,
            r"1970-01-01 00:00:00 handshake_refused server=srv-1 token=- peer=127.0.0.1:9: refused\r\nforged\x1b[2J"
        );
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_763_751_600_000), "2025-11-21 19:00:00");
    }

    #[test]
    fn params_must_be_an_object() {
        assert_eq!(parse_params(None).unwrap(), serde_json::json!({}));
        assert_eq!(parse_params(Some("[1]")).unwrap_err().code, EXIT_USAGE);
        assert_eq!(parse_params(Some("{")).unwrap_err().code, EXIT_USAGE);
    }

    const HOSTILE: &str = "evil\x1b]0;pwned\x07\r\nforged";

    fn server(hostname: &str, agent_version: String) -> crate::api::ServerView {
        crate::api::ServerView {
            server: crate::store::ServerRecord {
                name: None,
                id: "srv-1".into(),
                system_uuid: Some("uuid\u{202e}1".into()),
                serial: None,
                macs: vec!["52:54:00:00:00:01".into()],
                hostname: Some(hostname.into()),
                state: crate::store::ServerState::Available,
                agent_version: Some(agent_version),
                boot_id: None,
                first_seen_ms: 0,
                last_seen_ms: 0,
                connected: true,
                logs_dropped: 0,
                labels: vec![],
                expect_ramdisk_until_ms: None,
            },
            connection: None,
            inventory: None,
            bmc: Some(crate::store::BmcRecord {
                server_id: "srv-1".into(),
                mac: None,
                ip: Some("10.0.0.1\u{9b}2J".into()),
                username: "admin\x1b[2J".into(),
                user_id: None,
                source: "in_band".into(),
                updated_ms: 0,
                host: Some("bmc\x1b[2J".into()),
                port: None,
                protocol: "ipmi".into(),
                allow_ipmi15: false,
                cipher_suite: None,
                system_guid: None,
                verified_ms: None,
                verify_error: Some("refused\x1b[2J".into()),
            }),
        }
    }

    fn assert_printable(text: &str) {
        assert!(
            !text.chars().any(is_unsafe_char),
            "raw control character in {text:?}"
        );
    }

    #[test]
    fn control_characters_are_escaped_visibly() {
        assert_eq!(sanitize("plain host-1"), "plain host-1");
        assert_eq!(sanitize(HOSTILE), r"evil\x1b]0;pwned\x07\r\nforged");
        assert_eq!(
            sanitize("a\tb\x7fc\u{85}d\u{202e}e\u{2069}f\0"),
            r"a\tb\x7fc\u{85}d\u{202e}e\u{2069}f\x00"
        );
        // Text beyond ASCII that steers nothing is left alone.
        assert_eq!(sanitize("höst-ü→"), "höst-ü→");
    }

    #[test]
    fn json_for_the_terminal_is_the_same_json() {
        let v = serde_json::json!({"h": "a\u{9b}b\u{202e}c\x7f\x1b\n"});
        let text = json_for_terminal(&serde_json::to_string_pretty(&v).unwrap()).into_owned();
        assert_printable(&text.replace('\n', ""));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn server_tables_escape_and_cut_hostile_cells_without_panicking() {
        let huge = "v".repeat(200_000);
        let lines = servers_table(vec![server(HOSTILE, huge), server("h2", "0.1".into())]);
        assert_eq!(lines.len(), 3, "{lines:?}");
        for l in &lines {
            assert_printable(l);
            assert!(l.chars().count() < 7 * (CELL_MAX + 2), "{l}");
        }
        assert!(lines[1].contains(r"uuid\u{202e}1"), "{}", lines[1]);
        assert!(lines[1].contains(r"evil\x1b]0;pwned\x07\r\nforged"));
        assert!(lines[1].contains(&format!("{}…", "v".repeat(CELL_MAX - 1))));
        // The header lines up with the cut cells.
        let agent_col = lines[0].find("AGENT").unwrap();
        assert_eq!(lines[1].chars().nth(agent_col), Some('v'));
        assert_eq!(lines[2].chars().nth(agent_col), Some('0'));
    }

    #[test]
    fn server_text_escapes_every_reported_value() {
        let text = server_text(&server(HOSTILE, "1.0\r\nstate:         error".into()));
        for l in &text {
            assert_printable(l);
        }
        let text = text.join("\n");
        assert!(text.contains(r"hostname:      evil\x1b]0;pwned\x07\r\nforged"));
        assert!(text.contains(r"agent version: 1.0\r\nstate:         error"));
        assert!(text.contains(r"user admin\x1b[2J"));
        assert!(text.contains(r"10.0.0.1\u{9b}2J"));
        assert!(text.contains(r"uuid\u{202e}1"));
        // A 200 KB agent version prints in full, escaped, without panicking.
        let big = server_text(&server("h", "\x1b".repeat(200_000)));
        assert!(big.iter().any(|l| l.len() > 800_000));
    }

    #[test]
    fn log_lines_cannot_forge_lines_or_send_escapes() {
        let l = crate::store::LogEntry {
            id: 1,
            ts_ms: 0,
            level: "info\x1b".into(),
            target: "agent\r".into(),
            msg: "done\r\n1970-01-01 00:00:00 ERROR agent: forged\x1b]0;t\x07".into(),
            fields: Some(serde_json::json!({"k": "\u{9b}31m\u{202e}"})),
        };
        let line = log_line(&l);
        assert_printable(&line);
        assert!(!line.contains('\n'));
        assert!(line.contains(r"done\r\n1970-01-01"), "{line}");
    }
}
