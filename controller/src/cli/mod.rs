//! The `molar` command line: `molar serve` runs the controller, every other command is a
//! client of its API ([`crate::client`]).
//!
//! This file holds the clap definitions and the dispatch; each command group has its own
//! file. Exit codes are part of the interface (scripts rely on them): see [`EXIT_CODES`].

/// `println!` through [`output::emit`]: evaluates to its `Result`. Defined before the
/// modules so that they all see it.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::emit(&format!($($arg)*))
    };
}

mod bmc;
mod console;
mod control;
mod lifecycle;
mod logs;
pub(crate) mod output;
mod policy;
mod serve;
mod servers;
mod tasks;
mod tokens;

pub use output::{CELL_MAX, format_time, sanitize};
pub use serve::ServeArgs;

use crate::client::{Client, ClientError};
use clap::{Parser, Subcommand};
use molar_protocol::codes;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Shown at the end of `molar --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (bad arguments, invalid JSON)
  3  not found (server, task or token)
  4  not connected (the server has no agent connection)
  5  task or request failed, or the agent returned an error
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
    /// Controller state directory [default: /var/lib/molar]: `serve` keeps everything there
    /// (its config file's `state-dir` may name another); clients read api.url, admin.token
    /// and ca.pem from it unless --api/--token-file/--ca say otherwise.
    #[arg(long, global = true, env = "MOLAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
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

/// The command line's definition, for its manual pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

impl Cli {
    /// The state directory clients read: --state-dir, MOLAR_STATE_DIR or the default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

/// Where the controller keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/molar";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Serve(ServeArgs),
    /// The controller's configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The BMC table (seed 004): where each server's BMC is, its user, how the
    /// credentials were set and when they last worked (never the password).
    Bmc {
        #[command(subcommand)]
        command: BmcCommand,
    },
    /// The fleet policy file (chassis models, image catalogue, defaults).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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
    /// Attach to a server's serial-over-LAN console through its BMC (~. detaches, ~B sends
    /// a break), or print its console log.
    Console {
        id: String,
        /// Take the console over from the session holding it (it is told and detached).
        #[arg(long)]
        force: bool,
        /// Print the bounded log of what the console showed, then exit.
        #[arg(long, conflicts_with = "force")]
        log: bool,
    },
    /// Make a console token for a viewer that is not the CLI (printed only this once), or
    /// revoke every console token of the server.
    ConsoleToken {
        id: String,
        /// Seconds the token is valid (default 3600).
        #[arg(long, conflicts_with = "revoke")]
        ttl: Option<u64>,
        #[arg(long)]
        revoke: bool,
    },
    /// Check a server's stored inventory against a QC spec (a JSON file) without touching
    /// the machine; exits 1 when a check fails.
    Qc {
        server: String,
        #[arg(long)]
        spec: PathBuf,
    },
    /// Print security events: refused handshakes, superseded sessions, revoked and rotated
    /// tokens, expected ramdisk boots; the audit of BMC passwords revealed and logins set.
    Events {
        /// Only this server's events.
        #[arg(long)]
        server: Option<String>,
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// Queue a power request: change the power state or read it (`status`).
    Power {
        server: String,
        #[arg(value_parser = ["on", "off", "soft", "cycle", "reset", "status"])]
        state: String,
        #[command(flatten)]
        wait: control::WaitFlags,
    },
    /// Queue a next-boot-device request. `cd --media URL` inserts the image at URL through
    /// Redfish virtual media and boots from it once (UEFI; Redfish BMCs only).
    Bootdev {
        server: String,
        #[arg(value_parser = ["pxe", "disk", "bios", "cdrom", "cd", "none"])]
        device: String,
        /// With `cd`: the http(s) URL of a bootable ISO for the BMC's virtual media.
        #[arg(long)]
        media: Option<String>,
        /// Every boot, not only the next one.
        #[arg(long)]
        persistent: bool,
        /// Boot in UEFI mode.
        #[arg(long)]
        efi: bool,
        #[command(flatten)]
        wait: control::WaitFlags,
    },
    /// Queue a BMC cold reset.
    BmcReset {
        server: String,
        #[command(flatten)]
        wait: control::WaitFlags,
    },
    /// Queue a chassis identify (the locator light) through the BMC.
    Identify {
        server: String,
        /// Seconds the light stays on (default: the BMC's own interval).
        #[arg(long, conflicts_with = "off")]
        seconds: Option<u8>,
        /// Turn the light off.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        wait: control::WaitFlags,
    },
    /// Print a server's state changes (seed 003's lifecycle): from, to, why, when, and the
    /// request or task each came from.
    History {
        server: String,
        /// Keep printing new changes.
        #[arg(long, short, visible_alias = "follow")]
        watch: bool,
    },
    /// Print every server's state changes, oldest first.
    Transitions {
        /// Keep printing new changes.
        #[arg(long, short, visible_alias = "follow")]
        watch: bool,
    },
    /// Take a server into maintenance (from available or error) or return it to available.
    Maintenance {
        server: String,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// With `on`: a decom.firmware_secure plan (a JSON file) run in maintenance.
        #[arg(long)]
        firmware: Option<PathBuf>,
        /// Why, kept in the server's history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deploy an image on an available server (the claim workflow): write it, boot it,
    /// and mark the server reserved once it boots.
    Claim {
        server: String,
        /// An image of the policy's catalogue (`molar serve --policy`), by id.
        #[arg(
            long,
            required_unless_present = "image_spec",
            conflicts_with = "image_spec"
        )]
        image: Option<String>,
        /// The image spec, a JSON file ({"id", "urls", "checksum", "format", ...}).
        #[arg(long)]
        image_spec: Option<PathBuf>,
        /// The disk the image is written to.
        #[arg(long)]
        device: String,
        /// The config drive, a JSON file (`run_image`'s `config_drive`).
        #[arg(long)]
        config_drive: Option<PathBuf>,
        /// Appended to the deployed kernel's command line (kexec only).
        #[arg(long)]
        kernel_args: Option<String>,
        /// The deployed system's host name (its config drive's `name` and `hostname`,
        /// unless the config drive's meta data gives them).
        #[arg(long)]
        name: Option<String>,
    },
    /// Release a reserved server (the release workflow): boot it into the ramdisk through
    /// its BMC, erase its disks, and return it to available.
    Release {
        server: String,
        /// auto (strongest each disk offers), metadata (express), overwrite, nvme_sanitize,
        /// nvme_format, ata_secure_erase or discard.
        #[arg(long)]
        erase_method: Option<String>,
        /// With overwrite: passes (the last writes zeros).
        #[arg(long)]
        passes: Option<u32>,
        /// A device to leave alone (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
        /// The server is already in the ramdisk: no network boot and power cycle.
        #[arg(long)]
        in_ramdisk: bool,
    },
    /// Re-run a server's failed discovery or release from the step that failed (the steps
    /// before it are not run again); it returns to available when it succeeds.
    Retry { server: String },
    /// List a server's workflows (discoveries, claims and releases) with their steps,
    /// newest first.
    Workflows {
        server: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List a server's control requests, newest first.
    Requests {
        server: String,
        /// Most requests shown.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Wait until none of them is pending or active.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Enrol a server by its BMC before it ever boots the ramdisk: the controller opens a
    /// session with the BMC (nothing is stored if that fails) and creates the server in
    /// `initial`; its agent, when it connects, is recognised as the same server.
    Add {
        /// The server's name (letters, digits, '.', '_', '-'), usable wherever an id is.
        name: String,
        /// The BMC: redfish://HOST[:PORT] (HTTPS, default port 443), ipmi://HOST[:PORT]
        /// (default port 623), or a bare HOST, HOST:PORT or [IPV6]:PORT, probed (a Redfish
        /// service root over HTTPS first, then IPMI).
        #[arg(long)]
        bmc: String,
        #[arg(long = "bmc-user")]
        bmc_user: String,
        /// A file holding the BMC password (one line; a trailing newline is ignored).
        #[arg(long = "bmc-password-file")]
        bmc_password_file: PathBuf,
        /// Allow IPMI 1.5 sessions (weak authentication) with this BMC.
        #[arg(long = "allow-ipmi15")]
        allow_ipmi15: bool,
        /// Redfish: trust the BMC's certificate when this CA (PEM file) signed it.
        #[arg(long = "bmc-ca", conflicts_with_all = ["bmc_fingerprint", "bmc_insecure"])]
        bmc_ca: Option<PathBuf>,
        /// Redfish: pin the BMC's certificate by its SHA-256 fingerprint (shown by a first
        /// `server add` without a trust option).
        #[arg(long = "bmc-fingerprint", conflicts_with = "bmc_insecure")]
        bmc_fingerprint: Option<String>,
        /// Redfish: do not check the BMC's certificate (labs only).
        #[arg(long = "bmc-insecure")]
        bmc_insecure: bool,
    },
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
pub enum ConfigCommand {
    /// Check a configuration file, layered under `serve`'s flags and MOLAR_* environment
    /// given here, and print the settings `molar serve` would run with (exit 2 when wrong).
    Check {
        file: PathBuf,
        #[command(flatten)]
        settings: Box<crate::config::Settings>,
    },
    /// Print every setting with its default, as a configuration file.
    Defaults,
}

#[derive(Debug, Subcommand)]
pub enum BmcCommand {
    /// List every BMC entry.
    List,
    /// Show one server's BMC entry.
    Show {
        server: String,
        /// Also print the stored password (and a rotation's unconfirmed one); every reveal
        /// is written to the audit log (`molar events`).
        #[arg(long)]
        reveal: bool,
    },
    /// Replace a server's BMC login; a session with it must work first when the BMC has an
    /// address (nothing is stored otherwise).
    Set {
        server: String,
        #[arg(long)]
        user: String,
        /// A file holding the password (its line ending is not part of it).
        #[arg(long)]
        password_file: PathBuf,
        /// Store it without the session check.
        #[arg(long)]
        no_verify: bool,
    },
    /// Set a new random password for the BMC's user: in-band when the server's agent is
    /// connected, else over IPMI LAN with the current one; stored once a session with it
    /// worked.
    Rotate { server: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Read and check a policy file as `molar serve --policy` would, and summarise it
    /// (exit 2 when wrong, naming the line).
    Check { file: PathBuf },
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
    pub(crate) fn new(code: u8, msg: impl Into<String>) -> Self {
        Failure {
            code,
            msg: msg.into(),
        }
    }

    /// Stdout was closed (`molar ... | head`): not an error, the command just ends.
    pub(crate) fn stdout_closed() -> Self {
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
    let dir = &cli.state_dir();
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

async fn run(cli: Cli) -> Result<(), Failure> {
    let cli = &cli;
    match &cli.command {
        Command::Serve(args) => serve::run(cli, args).await,
        Command::Config { command } => serve::config(cli, command),
        Command::Token { command } => tokens::run(cli, command).await,
        Command::Bmc { command } => bmc::run(cli, command).await,
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => policy::check(cli, file),
        Command::Servers => servers::list(cli).await,
        Command::Server {
            command:
                Some(ServerCommand::Add {
                    name,
                    bmc,
                    bmc_user,
                    bmc_password_file,
                    allow_ipmi15,
                    bmc_ca,
                    bmc_fingerprint,
                    bmc_insecure,
                }),
            ..
        } => {
            let trust = servers::AddTrust {
                ca: bmc_ca.as_deref(),
                fingerprint: bmc_fingerprint.as_deref(),
                insecure: *bmc_insecure,
            };
            servers::add(
                cli,
                name,
                bmc,
                bmc_user,
                bmc_password_file,
                *allow_ipmi15,
                trust,
            )
            .await
        }
        Command::Server {
            command: Some(ServerCommand::Remove { id }),
            ..
        } => servers::remove(cli, id).await,
        Command::Server {
            command: Some(ServerCommand::Reenrol { id, for_s }),
            ..
        } => servers::reenrol(cli, id, *for_s).await,
        Command::Server { id, inventory, .. } => {
            let Some(id) = id else {
                return Err(Failure::new(EXIT_USAGE, "molar server needs a server id"));
            };
            servers::show(cli, id, *inventory).await
        }
        Command::Call {
            id,
            method,
            params,
            timeout,
        } => tasks::call(cli, id, method, params.as_deref(), *timeout).await,
        Command::Task { command } => tasks::run(cli, command).await,
        Command::Tasks { id } => tasks::list(cli, id).await,
        Command::Logs { id, follow } => logs::logs(cli, id, *follow).await,
        Command::ConsoleToken { id, ttl, revoke } => console::token(cli, id, *ttl, *revoke).await,
        Command::Qc { server, spec } => tasks::qc_stored(cli, server, spec).await,
        Command::Console { id, force, log } => console::run(cli, id, *force, *log).await,
        Command::Events { server, follow } => logs::events(cli, server.as_deref(), *follow).await,
        Command::Power {
            server,
            state,
            wait,
        } => control::power(cli, server, state, wait).await,
        Command::Bootdev {
            server,
            device,
            media: Some(url),
            persistent,
            wait,
            ..
        } => {
            if !matches!(device.as_str(), "cd" | "cdrom") || *persistent {
                return Err(Failure::new(
                    EXIT_USAGE,
                    "--media goes with `cd` and boots from the image once (no --persistent)",
                ));
            }
            control::boot_media(cli, server, url, wait).await
        }
        Command::Bootdev {
            server,
            device,
            media: None,
            persistent,
            efi,
            wait,
        } => {
            let device = if device == "cd" { "cdrom" } else { device };
            control::bootdev(cli, server, device, *persistent, *efi, wait).await
        }
        Command::BmcReset { server, wait } => control::bmc_reset(cli, server, wait).await,
        Command::Identify {
            server,
            seconds,
            off,
            wait,
        } => {
            let seconds = if *off { Some(0) } else { *seconds };
            control::identify(cli, server, seconds, wait).await
        }
        Command::Requests {
            server,
            limit,
            wait,
        } => control::requests(cli, server, *limit, *wait).await,
        Command::Claim {
            server,
            image,
            image_spec,
            device,
            config_drive,
            kernel_args,
            name,
        } => {
            let a = lifecycle::ClaimArgs {
                image: image.as_deref(),
                image_spec: image_spec.as_deref(),
                device,
                config_drive: config_drive.as_deref(),
                kernel_args: kernel_args.as_deref(),
                name: name.as_deref(),
            };
            lifecycle::claim(cli, server, a).await
        }
        Command::Release {
            server,
            erase_method,
            passes,
            exclude,
            in_ramdisk,
        } => {
            let erase = match (erase_method, passes, exclude.is_empty()) {
                (None, None, true) => None,
                _ => Some(release_erase(erase_method.as_deref(), *passes, exclude)?),
            };
            lifecycle::release(cli, server, erase, *in_ramdisk).await
        }
        Command::Retry { server } => lifecycle::retry(cli, server).await,
        Command::Workflows { server, limit } => lifecycle::workflows(cli, server, *limit).await,
        Command::History { server, watch } => lifecycle::history(cli, server, *watch).await,
        Command::Transitions { watch } => lifecycle::transitions(cli, *watch).await,
        Command::Maintenance {
            server,
            mode,
            firmware,
            reason,
        } => {
            lifecycle::maintenance(
                cli,
                server,
                mode == "on",
                firmware.as_deref(),
                reason.as_deref(),
            )
            .await
        }
    }
}

/// The erase policy of `molar release`'s flags.
fn release_erase(
    method: Option<&str>,
    passes: Option<u32>,
    exclude: &[String],
) -> Result<molar_protocol::erase::DiskEraseParams, Failure> {
    let method = method
        .map(|m| {
            serde_json::from_value(serde_json::Value::String(m.to_owned())).map_err(|_| {
                Failure::new(
                    EXIT_USAGE,
                    format!("--erase-method: unknown method {m:?}: see `molar release --help`"),
                )
            })
        })
        .transpose()?;
    Ok(molar_protocol::erase::DiskEraseParams {
        method,
        passes,
        exclude: (!exclude.is_empty()).then(|| exclude.to_vec()),
        ..Default::default()
    })
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
        match parse(&[
            "molar",
            "server",
            "add",
            "rack1-07",
            "--bmc",
            "10.0.0.4:6230",
            "--bmc-user",
            "admin",
            "--bmc-password-file",
            "/run/pw",
        ])
        .unwrap()
        {
            Command::Server {
                command:
                    Some(ServerCommand::Add {
                        name,
                        bmc,
                        allow_ipmi15,
                        ..
                    }),
                ..
            } => assert_eq!(
                (name.as_str(), bmc.as_str(), allow_ipmi15),
                ("rack1-07", "10.0.0.4:6230", false)
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["molar", "server", "add", "x", "--bmc", "h"]).is_err());
        assert!(parse(&["molar", "server"]).is_err());
        assert!(parse(&["molar", "server", "remove"]).is_err());
    }

    #[test]
    fn control_commands_take_only_their_words() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        match parse(&["molar", "power", "srv-1", "off", "--wait"]).unwrap() {
            Command::Power {
                server,
                state,
                wait,
            } => assert_eq!(
                (server.as_str(), state.as_str(), wait.wait),
                ("srv-1", "off", true)
            ),
            other => panic!("{other:?}"),
        }
        match parse(&["molar", "bootdev", "n1", "pxe", "--persistent", "--efi"]).unwrap() {
            Command::Bootdev {
                device,
                persistent,
                efi,
                wait,
                ..
            } => assert_eq!(
                (device.as_str(), persistent, efi, wait.wait),
                ("pxe", true, true, false)
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["molar", "power", "srv-1", "OFF"]).is_err());
        assert!(parse(&["molar", "power", "srv-1"]).is_err());
        assert!(parse(&["molar", "bootdev", "srv-1", "floppy"]).is_err());
        assert!(parse(&["molar", "bmc-reset", "srv-1", "--wait"]).is_ok());
        assert!(parse(&["molar", "identify", "srv-1", "--seconds", "10", "--off"]).is_err());
        assert!(parse(&["molar", "identify", "srv-1", "--seconds", "300"]).is_err());
        assert!(parse(&["molar", "requests", "srv-1", "--wait"]).is_ok());
        assert!(parse(&["molar", "power", "s", "on", "--wait-timeout", "5"]).is_err());
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
    fn params_must_be_an_object() {
        assert_eq!(parse_params(None).unwrap(), serde_json::json!({}));
        assert_eq!(parse_params(Some("[1]")).unwrap_err().code, EXIT_USAGE);
        assert_eq!(parse_params(Some("{")).unwrap_err().code, EXIT_USAGE);
    }
}
