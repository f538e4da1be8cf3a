//! The settings of `molar serve`: one struct that is both the flags (with their `MOLAR_*`
//! environment variables) and the keys of the configuration file, so a flag and its key
//! cannot drift apart. Every field is optional; [`Settings::layered`] takes the first of
//! flag, environment, file, and [`Settings::resolve`] fills in the defaults and checks what
//! the types alone do not.
//!
//! The file is TOML, one key per flag with the flag's own spelling (`retain-logs-days = 30`).
//! An unknown key, a value of the wrong type and a value out of range are errors that name
//! the key and its line; nothing is ignored, since a misspelt limit that silently fell back to
//! its default is worse than a refusal to start.

use crate::store::Retention;
use crate::{DEFAULT_PRE_HANDSHAKE, ServeConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `molar serve --config` is looked for when the unit file names none.
pub const DEFAULT_PATH: &str = "/etc/molar/molar.toml";

/// Largest configuration file read (a config file, not a data file).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// How the controller writes its log lines (stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line with the tracing event's fields, for log shippers.
    Json,
}

/// Every setting of `molar serve`, as flags, environment variables and file keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Agent listener address, e.g. 0.0.0.0:7700 (required: here, in the environment or in
    /// the file).
    #[arg(long, env = "MOLAR_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address the API listens on [default: 127.0.0.1:7701]. The global --api / MOLAR_API
    /// (a URL's `https://` is tolerated) sets it too.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<SocketAddr>,
    /// Controller state directory (the global --state-dir / MOLAR_STATE_DIR sets it too)
    /// [default: /var/lib/molar].
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Extra DNS name or IP address for the server certificate (repeatable; in the file a
    /// list; MOLAR_SAN is comma-separated).
    #[arg(long = "san", env = "MOLAR_SAN", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub san: Option<Vec<String>>,
    /// Also serve agents that connect without TLS (lab only).
    #[arg(long, env = "MOLAR_ALLOW_PLAINTEXT_AGENTS", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_plaintext_agents: Option<bool>,
    /// Agent connections held at once [default: 20000].
    #[arg(long, env = "MOLAR_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Agent-port connections held at once before their handshake is answered; more are
    /// closed at once (bounds concurrent handshakes, not connected agents) [default: 1024].
    #[arg(long, env = "MOLAR_MAX_PRE_HANDSHAKE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pre_handshake: Option<usize>,
    /// API connections served at once; past it a client gets 503 busy [default: 512].
    #[arg(long, env = "MOLAR_API_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_max_connections: Option<usize>,
    /// Seconds a client of either port gets for its TLS handshake [default: 10].
    #[arg(long, env = "MOLAR_TLS_HANDSHAKE_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout_s: Option<u64>,
    /// Seconds an agent gets for its handshake command once TLS is up [default: 10].
    #[arg(long, env = "MOLAR_HANDSHAKE_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_s: Option<u64>,
    /// Seconds an API client gets to send a request's headers; also how long an idle
    /// kept-alive API connection stays open [default: 10].
    #[arg(long, env = "MOLAR_API_HEADER_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_header_timeout_s: Option<u64>,
    /// Days agents' log records are kept (0: forever) [default: 30].
    #[arg(long, env = "MOLAR_RETAIN_LOGS_DAYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_logs_days: Option<u64>,
    /// Most log records kept per server, the newest (0: no limit) [default: 100000].
    #[arg(long, env = "MOLAR_RETAIN_LOGS_PER_SERVER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_logs_per_server: Option<u64>,
    /// Days task events are kept; a task's latest and final events always are (0: forever)
    /// [default: 30].
    #[arg(long, env = "MOLAR_RETAIN_TASK_EVENTS_DAYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_task_events_days: Option<u64>,
    /// Most events kept per task, the newest (0: no limit) [default: 10000].
    #[arg(long, env = "MOLAR_RETAIN_TASK_EVENTS_PER_TASK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_task_events_per_task: Option<u64>,
    /// Seconds between checks that every server with an operator-given BMC address has its
    /// console captured into the console log (0: capture only while someone watches)
    /// [default: 30].
    #[arg(long, env = "MOLAR_CONSOLE_CAPTURE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_capture_s: Option<u64>,
    /// Seconds between session checks of each BMC with an operator-given address, with the
    /// stored credentials (0: no periodic checks) [default: 3600].
    #[arg(long, env = "MOLAR_BMC_CHECK_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmc_check_s: Option<u64>,
    /// Most BMC check sessions opened a minute, fleet-wide [default: 60].
    #[arg(long, env = "MOLAR_BMC_CHECKS_PER_MINUTE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmc_checks_per_minute: Option<u32>,
    /// Also serve `/metrics` without the admin token, over plain HTTP, on this address (for
    /// a Prometheus scraper on a management network) [default: only on the API, behind the
    /// admin token].
    #[arg(long, env = "MOLAR_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The fleet policy (chassis models with their QC spec, firmware baseline and erase
    /// policy; the image catalogue), a TOML file checked at start (`molar policy check`)
    /// [default: none: every release erases with `auto`, claims name their image].
    #[arg(long, env = "MOLAR_POLICY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Serve this directory's files at `/media/NAME` without the admin token (boot media a
    /// BMC fetches, e.g. molar-imagebuilder's molar.iso; everything in it is public), on the
    /// API listener and on --media-listen [default: no media].
    #[arg(long, env = "MOLAR_MEDIA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_dir: Option<PathBuf>,
    /// Also serve `/media/NAME` over plain HTTP on this address, for BMCs that do not fetch
    /// virtual media over HTTPS from a private CA (needs --media-dir) [default: only on the
    /// API listener].
    #[arg(long, env = "MOLAR_MEDIA_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_listen: Option<SocketAddr>,
    /// Log line format on stderr [default: text].
    #[arg(long, env = "MOLAR_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A configuration that cannot be used, naming the file, the key and its line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("reading {path}: {msg}")]
    Read { path: String, msg: String },
    /// A TOML syntax error, an unknown key or a value of the wrong type, as the parser
    /// words it (it names the line, column and key).
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{origin}: `{key}`{line}: {msg}")]
    Invalid {
        origin: String,
        key: &'static str,
        /// " (line N)" when the value came from the file.
        line: String,
        msg: String,
    },
    #[error(
        "no agent listener address: give --listen, MOLAR_LISTEN or `listen` in the config file"
    )]
    NoListen,
}

/// A file's settings with its text, kept to find the line a semantically wrong key is on.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: String,
    text: String,
    pub settings: Settings,
}

impl ConfigFile {
    /// Reads and parses `path` (bounded, strict).
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_err = |msg: String| ConfigError::Read {
            path: shown.clone(),
            msg,
        };
        let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| read_err(e.to_string()))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(read_err(format!(
                "larger than {MAX_FILE_BYTES} bytes: not a configuration file"
            )));
        }
        ConfigFile::parse(&shown, &text)
    }

    /// Parses `text`, named `path` in errors.
    pub fn parse(path: &str, text: &str) -> Result<ConfigFile, ConfigError> {
        let settings: Settings = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            msg: e.to_string().trim_end().to_owned(),
        })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            text: text.to_owned(),
            settings,
        })
    }

    /// The 1-based line `key` is set on, if it is a plain top-level key of the file.
    fn line_of(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|i| i + 1)
    }
}

/// What `molar serve` runs with, defaults filled in.
#[derive(Debug)]
pub struct Resolved {
    pub config: ServeConfig,
    pub log_format: LogFormat,
}

macro_rules! layer {
    ($hi:expr, $lo:expr, $($field:ident),* $(,)?) => {
        Settings { $($field: $hi.$field.or($lo.$field),)* }
    };
}

impl Settings {
    /// Each setting from `self` (flags and environment) when given there, else from `file`.
    pub fn layered(self, file: Settings) -> Settings {
        layer!(
            self,
            file,
            listen,
            api,
            state_dir,
            san,
            allow_plaintext_agents,
            max_connections,
            max_pre_handshake,
            api_max_connections,
            tls_handshake_timeout_s,
            handshake_timeout_s,
            api_header_timeout_s,
            retain_logs_days,
            retain_logs_per_server,
            retain_task_events_days,
            retain_task_events_per_task,
            console_capture_s,
            bmc_check_s,
            bmc_checks_per_minute,
            metrics_listen,
            policy,
            media_dir,
            media_listen,
            log_format,
        )
    }

    /// The settings with every default written out (what `molar config check` prints).
    pub fn with_defaults(&self) -> Settings {
        let d = ServeConfig::new(
            SocketAddr::from(([0, 0, 0, 0], 7700)),
            default_api(),
            "/var/lib/molar",
        );
        let r = Retention::default();
        let days = |d: Option<Duration>| d.map_or(0, |d| d.as_secs() / 86_400);
        self.clone().layered(Settings {
            listen: None,
            api: Some(d.api),
            state_dir: Some(d.state_dir),
            san: Some(Vec::new()),
            allow_plaintext_agents: Some(false),
            max_connections: Some(d.max_connections),
            max_pre_handshake: Some(DEFAULT_PRE_HANDSHAKE),
            api_max_connections: Some(d.api_max_connections),
            tls_handshake_timeout_s: Some(d.tls_handshake_timeout.as_secs()),
            handshake_timeout_s: Some(d.handshake_timeout.as_secs()),
            api_header_timeout_s: Some(d.api_header_timeout.as_secs()),
            retain_logs_days: Some(days(r.logs_max_age)),
            retain_logs_per_server: Some(r.logs_per_server.unwrap_or(0)),
            retain_task_events_days: Some(days(r.task_events_max_age)),
            retain_task_events_per_task: Some(r.task_events_per_task.unwrap_or(0)),
            console_capture_s: Some(d.console_capture.map_or(0, |c| c.as_secs())),
            bmc_check_s: Some(d.bmc_checks.map_or(0, |c| c.interval.as_secs())),
            bmc_checks_per_minute: Some(
                d.bmc_checks
                    .map_or(crate::bmc::CheckPolicy::default().per_minute, |c| {
                        c.per_minute
                    }),
            ),
            metrics_listen: None,
            policy: None,
            media_dir: None,
            media_listen: None,
            log_format: Some(LogFormat::Text),
        })
    }

    /// The settings `given` by flags and environment layered over `file`'s, checked and
    /// turned into the controller's configuration. A wrong value is blamed on where it came
    /// from: the file (with its line) or the flags and environment.
    pub fn resolve(given: &Settings, file: Option<&ConfigFile>) -> Result<Resolved, ConfigError> {
        let s = given
            .clone()
            .layered(file.map(|f| f.settings.clone()).unwrap_or_default())
            .with_defaults();
        let this = given;
        let invalid = |key: &'static str, from_file: bool, msg: String| {
            let (origin, line) = match file.filter(|_| from_file) {
                Some(f) => (
                    f.path.clone(),
                    f.line_of(key)
                        .map(|n| format!(" (line {n})"))
                        .unwrap_or_default(),
                ),
                None => ("flag or environment".to_owned(), String::new()),
            };
            ConfigError::Invalid {
                origin,
                key,
                line,
                msg,
            }
        };
        // Whether a value came from the file: not given by flag or environment.
        let from_file = |given: bool| !given && file.is_some();
        let listen = s.listen.ok_or(ConfigError::NoListen)?;
        let mut cfg = ServeConfig::new(
            listen,
            s.api.unwrap_or_else(default_api),
            s.state_dir.clone().unwrap_or_default(),
        );
        if cfg.state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state-dir",
                from_file(this.state_dir.is_some()),
                "must not be empty".into(),
            ));
        }
        for name in s.san.iter().flatten() {
            if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(
                    "san",
                    from_file(this.san.is_some()),
                    format!("{name:?} is not a DNS name or an IP address"),
                ));
            }
        }
        cfg.sans = s.san.clone().unwrap_or_default();
        cfg.allow_plaintext_agents = s.allow_plaintext_agents.unwrap_or(false);
        let at_least_one = |key: &'static str, given: bool, v: usize| {
            if v == 0 {
                Err(invalid(key, from_file(given), "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        cfg.max_connections = at_least_one(
            "max-connections",
            this.max_connections.is_some(),
            s.max_connections.unwrap_or(1),
        )?;
        cfg.pre_handshake_connections = at_least_one(
            "max-pre-handshake",
            this.max_pre_handshake.is_some(),
            s.max_pre_handshake.unwrap_or(1),
        )?;
        cfg.api_max_connections = at_least_one(
            "api-max-connections",
            this.api_max_connections.is_some(),
            s.api_max_connections.unwrap_or(1),
        )?;
        let seconds = |key: &'static str, given: bool, v: Option<u64>| {
            let v = v.unwrap_or(1);
            if v > 86_400 {
                Err(invalid(
                    key,
                    from_file(given),
                    format!("{v} seconds is more than a day"),
                ))
            } else {
                // A zero timeout is taken as one second.
                Ok(Duration::from_secs(v.max(1)))
            }
        };
        cfg.tls_handshake_timeout = seconds(
            "tls-handshake-timeout-s",
            this.tls_handshake_timeout_s.is_some(),
            s.tls_handshake_timeout_s,
        )?;
        cfg.handshake_timeout = seconds(
            "handshake-timeout-s",
            this.handshake_timeout_s.is_some(),
            s.handshake_timeout_s,
        )?;
        cfg.api_header_timeout = seconds(
            "api-header-timeout-s",
            this.api_header_timeout_s.is_some(),
            s.api_header_timeout_s,
        )?;
        cfg.retention = Retention {
            logs_max_age: Retention::days(s.retain_logs_days.unwrap_or(0)),
            logs_per_server: Retention::count(s.retain_logs_per_server.unwrap_or(0)),
            task_events_max_age: Retention::days(s.retain_task_events_days.unwrap_or(0)),
            task_events_per_task: Retention::count(s.retain_task_events_per_task.unwrap_or(0)),
            ..Retention::default()
        };
        let capture = s.console_capture_s.unwrap_or(0);
        if capture > 86_400 {
            return Err(invalid(
                "console-capture-s",
                from_file(this.console_capture_s.is_some()),
                format!("{capture} seconds is more than a day"),
            ));
        }
        cfg.console_capture = (capture > 0).then(|| Duration::from_secs(capture));
        let per_minute = s.bmc_checks_per_minute.unwrap_or(1);
        if !(1..=6000).contains(&per_minute) {
            return Err(invalid(
                "bmc-checks-per-minute",
                from_file(this.bmc_checks_per_minute.is_some()),
                format!("{per_minute} is not from 1 to 6000"),
            ));
        }
        let check = s.bmc_check_s.unwrap_or(0);
        if check > 30 * 86_400 {
            return Err(invalid(
                "bmc-check-s",
                from_file(this.bmc_check_s.is_some()),
                format!("{check} seconds is more than 30 days"),
            ));
        }
        cfg.bmc_checks = (check > 0).then(|| crate::bmc::CheckPolicy {
            interval: Duration::from_secs(check),
            per_minute,
        });
        cfg.metrics_listen = s.metrics_listen;
        cfg.policy = s.policy.clone();
        if s.media_listen.is_some() && s.media_dir.is_none() {
            return Err(invalid(
                "media-listen",
                from_file(this.media_listen.is_some()),
                "a media listener needs a media directory (media-dir)".into(),
            ));
        }
        if let Some(d) = &s.media_dir
            && !d.is_dir()
        {
            return Err(invalid(
                "media-dir",
                from_file(this.media_dir.is_some()),
                format!("{} is not a directory", d.display()),
            ));
        }
        cfg.media_dir = s.media_dir.clone();
        cfg.media_listen = s.media_listen;
        Ok(Resolved {
            config: cfg,
            log_format: s.log_format.unwrap_or_default(),
        })
    }

    /// The settings as a configuration file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7701))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse("/etc/molar/molar.toml", text)
    }

    #[test]
    fn a_complete_file_parses_and_resolves() {
        let f = file(
            r#"
# the lab controller
listen = "0.0.0.0:7700"
api = "127.0.0.1:7801"
state-dir = "/srv/molar"
san = ["10.0.0.5", "molar.lab"]
allow-plaintext-agents = false
max-connections = 500
retain-logs-days = 0
console-capture-s = 0
log-format = "json"
"#,
        )
        .unwrap();
        let r = Settings::resolve(&Settings::default(), Some(&f)).unwrap();
        assert_eq!(r.config.listen, "0.0.0.0:7700".parse().unwrap());
        assert_eq!(r.config.api, "127.0.0.1:7801".parse().unwrap());
        assert_eq!(r.config.state_dir, PathBuf::from("/srv/molar"));
        assert_eq!(r.config.sans, ["10.0.0.5", "molar.lab"]);
        assert_eq!(r.config.max_connections, 500);
        assert_eq!(r.config.retention.logs_max_age, None);
        assert_eq!(
            r.config.retention.task_events_max_age,
            Retention::default().task_events_max_age
        );
        assert_eq!(r.config.console_capture, None);
        assert_eq!(r.log_format, LogFormat::Json);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let f =
            file("listen = \"0.0.0.0:7700\"\nmax-connections = 5\nretain-logs-days = 7\n").unwrap();
        let flags = Settings {
            max_connections: Some(9),
            ..Settings::default()
        };
        let r = Settings::resolve(&flags, Some(&f)).unwrap();
        assert_eq!(r.config.max_connections, 9);
        assert_eq!(
            r.config.retention.logs_max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(r.config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(r.log_format, LogFormat::Text);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_the_line() {
        let e = file("listen = \"0.0.0.0:7700\"\nretain-log-days = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("retain-log-days"), "{msg}");
        let e = file("listen = \"0.0.0.0:7700\"\n\nmax-connections = \"many\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line 3") && msg.contains("max-connections"),
            "{msg}"
        );
        let e = file("listen = \"not an address\"\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = file("listen = \n").unwrap_err();
        assert!(e.to_string().starts_with("/etc/molar/molar.toml: "), "{e}");
        let e = file("max-connections = -1\n").unwrap_err();
        assert!(e.to_string().contains("max-connections"), "{e}");
        // Sections are not keys of molar's.
        let e = file("[serve]\nlisten = \"0.0.0.0:7700\"\n").unwrap_err();
        assert!(e.to_string().contains("serve"), "{e}");
    }

    #[test]
    fn values_out_of_range_name_their_origin_key_and_line() {
        let f = file("listen = \"0.0.0.0:7700\"\n\n  max-connections = 0\n").unwrap();
        let e = Settings::resolve(&Settings::default(), Some(&f)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/molar/molar.toml: `max-connections` (line 3): must be at least 1"
        );
        let f = file("listen = \"0.0.0.0:7700\"\nhandshake-timeout-s = 5\n").unwrap();
        let flags = Settings {
            handshake_timeout_s: Some(100_000),
            ..Settings::default()
        };
        let e = Settings::resolve(&flags, Some(&f)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag or environment: `handshake-timeout-s`: 100000 seconds is more than a day"
        );
        let f = file("listen = \"0.0.0.0:7700\"\nsan = [\"a b\"]\n").unwrap();
        let e = Settings::resolve(&Settings::default(), Some(&f)).unwrap_err();
        assert!(e.to_string().contains("`san` (line 2)"), "{e}");
    }

    #[test]
    fn media_needs_an_existing_directory() {
        let f = file("listen = \"0.0.0.0:7700\"\nmedia-listen = \"0.0.0.0:8080\"\n").unwrap();
        let e = Settings::resolve(&Settings::default(), Some(&f)).unwrap_err();
        assert!(e.to_string().contains("`media-listen` (line 2)"), "{e}");
        let f =
            file("listen = \"0.0.0.0:7700\"\nmedia-dir = \"/nonexistent/molar-media\"\n").unwrap();
        let e = Settings::resolve(&Settings::default(), Some(&f)).unwrap_err();
        assert!(
            e.to_string()
                .contains("`media-dir` (line 2): /nonexistent/molar-media is not a directory"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let flags = Settings {
            media_dir: Some(dir.path().to_path_buf()),
            media_listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..Settings::default()
        };
        let c = Settings::resolve(&flags, Some(&file("listen = \"0.0.0.0:7700\"\n").unwrap()))
            .unwrap()
            .config;
        assert_eq!(c.media_dir.as_deref(), Some(dir.path()));
        assert_eq!(c.media_listen, Some("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn listen_is_required_somewhere() {
        let e = Settings::resolve(&Settings::default(), None).unwrap_err();
        assert_eq!(e, ConfigError::NoListen);
    }

    #[test]
    fn the_written_out_defaults_are_a_valid_file_that_resolves_like_the_defaults() {
        let s = Settings {
            listen: Some("0.0.0.0:7700".parse().unwrap()),
            ..Settings::default()
        };
        let full = s.with_defaults();
        let text = full.to_toml();
        assert!(text.contains("retain-logs-days = 30"), "{text}");
        let f = file(&text).unwrap();
        assert_eq!(f.settings, full);
        let a = Settings::resolve(&s, None).unwrap().config;
        let b = Settings::resolve(&Settings::default(), Some(&f))
            .unwrap()
            .config;
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn an_oversized_or_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.toml");
        std::fs::write(&p, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let e = ConfigFile::load(&p).unwrap_err();
        assert!(e.to_string().contains("not a configuration file"), "{e}");
        let e = ConfigFile::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
