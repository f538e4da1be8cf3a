//! The ramdisk's settings: `molar.*` parameters from the kernel command line
//! (`ROOT/proc/cmdline`), with SMBIOS type 11 OEM strings of the same `key=value` form as the
//! fallback for each key (read from the raw table `ROOT/sys/firmware/dmi/tables/DMI` with the
//! inventory's SMBIOS structure walk). Problems are collected per key, so the console can name
//! every missing or malformed key at once; the token never appears in Debug output or in an
//! error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use molar_protocol::Secret;

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cmdline,
    Smbios,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmdline => "kernel command line",
            Source::Smbios => "smbios oem strings",
        })
    }
}

/// `HOST:PORT` of the controller (`[v6]:PORT` accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything the ramdisk reads from its command line (or SMBIOS OEM strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub controller: ControllerAddr,
    /// The controller's enrolment token, as the handshake carries it (redacted in Debug).
    pub token: Secret,
    /// SHA-256 of the controller CA certificate (DER), from `molar.ca=sha256:HEX64`.
    pub ca_sha256: Option<[u8; 32]>,
    /// `molar.insecure=1`: plaintext to the controller (lab only).
    pub insecure: bool,
    /// `molar.log=LEVEL` (error, warn, info, debug, trace).
    pub log: Option<String>,
    /// `molar.hostname=`; otherwise derived from the first MAC.
    pub hostname: Option<String>,
    /// `molar.modules=a,b`: modules loaded on top of the coldplugged ones.
    pub modules: Vec<String>,
}

/// One missing or malformed setting. Never carries a token's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting {key}: {problem}")]
pub struct SettingError {
    pub key: &'static str,
    pub problem: String,
}

impl SettingError {
    pub fn code(&self) -> &'static str {
        "invalid_setting"
    }
}

pub const KEY_CONTROLLER: &str = "molar.controller";
pub const KEY_TOKEN: &str = "molar.token";
pub const KEY_CA: &str = "molar.ca";
pub const KEY_INSECURE: &str = "molar.insecure";
pub const KEY_LOG: &str = "molar.log";
pub const KEY_HOSTNAME: &str = "molar.hostname";
pub const KEY_MODULES: &str = "molar.modules";
const KEYS: [&str; 7] = [
    KEY_CONTROLLER,
    KEY_TOKEN,
    KEY_CA,
    KEY_INSECURE,
    KEY_LOG,
    KEY_HOSTNAME,
    KEY_MODULES,
];

/// Splits a kernel command line like the kernel does: whitespace separates parameters, double
/// quotes group (and are removed), so `molar.x="a b"` gives `("molar.x", "a b")`.
pub fn split_cmdline(line: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut has_token = false;
    let mut flush = |current: &mut String, has_token: &mut bool| {
        if *has_token {
            let param = std::mem::take(current);
            match param.split_once('=') {
                Some((k, v)) => params.push((k.to_string(), Some(v.to_string()))),
                None => params.push((param, None)),
            }
        }
        *has_token = false;
    };
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quote => flush(&mut current, &mut has_token),
            c => {
                current.push(c);
                has_token = true;
            }
        }
    }
    flush(&mut current, &mut has_token);
    params
}

/// The `molar.*` values found in one source; the last occurrence of a key wins, as in the kernel.
pub fn molar_params(
    pairs: impl IntoIterator<Item = (String, Option<String>)>,
) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        if let Some(known) = KEYS.iter().find(|k| **k == key) {
            out.insert(*known, value.unwrap_or_default());
        }
    }
    out
}

/// The OEM strings (SMBIOS structure type 11) of a raw SMBIOS table, in order. The walk is
/// the inventory's; a malformed table yields the strings before the damage.
pub fn smbios_oem_strings(table: &[u8]) -> Vec<String> {
    let (structures, _damage) = crate::inventory::smbios::walk(table, None);
    structures
        .iter()
        .filter(|s| s.kind == 11)
        .flat_map(|s| {
            let count = s.formatted.get(4).copied().map_or(0, usize::from);
            s.strings
                .iter()
                .take(count)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect()
}

/// Reads both sources under `root`: the command line's `molar.*` values, then the SMBIOS ones.
/// A missing file is an empty source (no DMI table in a container, for instance).
pub fn read_sources(
    root: &Path,
) -> (
    BTreeMap<&'static str, String>,
    BTreeMap<&'static str, String>,
) {
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let smbios = std::fs::read(root.join("sys/firmware/dmi/tables/DMI"))
        .map(|t| smbios_oem_strings(&t))
        .unwrap_or_default();
    (
        molar_params(split_cmdline(&cmdline)),
        molar_params(smbios.iter().flat_map(|s| split_cmdline(s))),
    )
}

/// The value of `key`: the command line's, else SMBIOS's.
fn pick<'a>(
    key: &'static str,
    cmdline: &'a BTreeMap<&'static str, String>,
    smbios: &'a BTreeMap<&'static str, String>,
) -> Option<(&'a str, Source)> {
    cmdline
        .get(key)
        .map(|v| (v.as_str(), Source::Cmdline))
        .or_else(|| smbios.get(key).map(|v| (v.as_str(), Source::Smbios)))
}

/// Builds [`Settings`] from the two sources, or every problem found.
pub fn parse_settings(
    cmdline: &BTreeMap<&'static str, String>,
    smbios: &BTreeMap<&'static str, String>,
) -> Result<Settings, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut bad = |key: &'static str, src: Option<Source>, problem: String| {
        let problem = match src {
            Some(src) => format!("{problem} (from the {src})"),
            None => problem,
        };
        errors.push(SettingError { key, problem });
    };

    let controller = match pick(KEY_CONTROLLER, cmdline, smbios) {
        None => {
            bad(KEY_CONTROLLER, None, missing("HOST:PORT"));
            None
        }
        Some((v, src)) => match parse_controller(v) {
            Ok(c) => Some(c),
            Err(p) => {
                bad(KEY_CONTROLLER, Some(src), p);
                None
            }
        },
    };
    let token = match pick(KEY_TOKEN, cmdline, smbios) {
        None => {
            bad(KEY_TOKEN, None, missing("the controller's enrolment token"));
            None
        }
        Some((v, src)) => {
            if v.is_empty() {
                bad(KEY_TOKEN, Some(src), "is empty".into());
                None
            } else if v.chars().any(|c| c.is_control()) {
                bad(KEY_TOKEN, Some(src), "contains control characters".into());
                None
            } else {
                Some(Secret::new(v))
            }
        }
    };
    let ca_sha256 = match pick(KEY_CA, cmdline, smbios) {
        None => None,
        Some((v, src)) => match parse_ca(v) {
            Ok(ca) => Some(ca),
            Err(p) => {
                bad(KEY_CA, Some(src), p);
                None
            }
        },
    };
    let insecure = match pick(KEY_INSECURE, cmdline, smbios) {
        None => false,
        Some((v, src)) => match v {
            "" | "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            other => {
                bad(KEY_INSECURE, Some(src), format!("{other:?} is not 1 or 0"));
                false
            }
        },
    };
    let log = match pick(KEY_LOG, cmdline, smbios) {
        None => None,
        Some((v, src)) => {
            let v = v.to_ascii_lowercase();
            if ["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                Some(v)
            } else {
                bad(
                    KEY_LOG,
                    Some(src),
                    format!("{v:?} is not one of error, warn, info, debug, trace"),
                );
                None
            }
        }
    };
    let hostname = match pick(KEY_HOSTNAME, cmdline, smbios) {
        None => None,
        Some((v, src)) => match valid_hostname(v) {
            Ok(()) => Some(v.to_string()),
            Err(p) => {
                bad(KEY_HOSTNAME, Some(src), p);
                None
            }
        },
    };
    let modules = match pick(KEY_MODULES, cmdline, smbios) {
        None => Vec::new(),
        Some((v, src)) => match parse_modules(v) {
            Ok(m) => m,
            Err(p) => {
                bad(KEY_MODULES, Some(src), p);
                Vec::new()
            }
        },
    };

    match (controller, token) {
        (Some(controller), Some(token)) if errors.is_empty() => Ok(Settings {
            controller,
            token,
            ca_sha256,
            insecure,
            log,
            hostname,
            modules,
        }),
        _ => Err(errors),
    }
}

fn missing(what: &str) -> String {
    format!("is missing: give {what} on the kernel command line or in an smbios oem string")
}

/// Parses `HOST:PORT` or `[V6]:PORT`.
pub fn parse_controller(v: &str) -> Result<ControllerAddr, String> {
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (host, rest) = rest
            .split_once(']')
            .ok_or_else(|| format!("{v:?} has no closing ]"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("{v:?} has no :PORT"))?;
        (host, port)
    } else {
        v.rsplit_once(':')
            .ok_or_else(|| format!("{v:?} is not HOST:PORT"))?
    };
    if host.is_empty() {
        return Err(format!("{v:?} has an empty host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("{v:?} has an invalid host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{v:?} has an invalid port {port:?}"))?;
    if port == 0 {
        return Err(format!("{v:?} has port 0"));
    }
    Ok(ControllerAddr {
        host: host.to_string(),
        port,
    })
}

/// Parses `sha256:` followed by 64 hex digits (colons between bytes tolerated).
pub fn parse_ca(v: &str) -> Result<[u8; 32], String> {
    let hex_part = v
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{v:?} does not start with sha256:"))?;
    let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
    let bytes =
        hex::decode(&digits).map_err(|_| "is not sha256: followed by hex digits".to_string())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("has {} bytes, a sha256 has 32", b.len()))
}

fn valid_hostname(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 {
        return Err(format!("{v:?} must be 1 to 64 characters"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if v.split('.').all(ok_label) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid host name (letters, digits, - and .)"
        ))
    }
}

fn parse_modules(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("{name:?} is not a module name"));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Reads and parses the settings under `root`.
pub fn read_settings(root: &Path) -> Result<Settings, Vec<SettingError>> {
    let (cmdline, smbios) = read_sources(root);
    parse_settings(&cmdline, &smbios)
}

/// The settings that must be known before the required ones are (hostname, extra modules,
/// log level), read leniently: a malformed value is ignored here and reported by
/// [`read_settings`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EarlySettings {
    pub hostname: Option<String>,
    pub modules: Vec<String>,
    pub log: Option<String>,
}

pub fn read_early(root: &Path) -> EarlySettings {
    let (cmdline, smbios) = read_sources(root);
    EarlySettings {
        hostname: pick(KEY_HOSTNAME, &cmdline, &smbios)
            .filter(|(v, _)| valid_hostname(v).is_ok())
            .map(|(v, _)| v.to_string()),
        modules: pick(KEY_MODULES, &cmdline, &smbios)
            .and_then(|(v, _)| parse_modules(v).ok())
            .unwrap_or_default(),
        log: pick(KEY_LOG, &cmdline, &smbios).map(|(v, _)| v.to_ascii_lowercase()),
    }
}

/// Module parameters from the kernel command line, `MODULE.PARAM=VALUE` (what modprobe
/// passes on; the kernel applies them only to built-in code): module name (with `_`) → the
/// parameter string for finit_module, e.g. `ipmi_si.type=kcs ipmi_si.ports=0xca2` →
/// `ipmi_si` → `type=kcs ports=0xca2`. Values with spaces are quoted again.
pub fn module_params(line: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in split_cmdline(line) {
        let Some((module, param)) = key.split_once('.') else {
            continue;
        };
        if module.is_empty() || param.is_empty() || module == "molar" {
            continue;
        }
        let param = match value {
            Some(v) if v.chars().any(char::is_whitespace) => format!("{param}=\"{v}\""),
            Some(v) => format!("{param}={v}"),
            None => param.to_string(),
        };
        let entry = out.entry(module.replace('-', "_")).or_default();
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push_str(&param);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(line: &str) -> BTreeMap<&'static str, String> {
        molar_params(split_cmdline(line))
    }

    const CA: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn splits_like_the_kernel() {
        let p = split_cmdline("console=ttyS0 quiet molar.hostname=\"a b\" \"x=y z\" k=\"\"  ro\n");
        assert_eq!(
            p,
            vec![
                ("console".into(), Some("ttyS0".into())),
                ("quiet".into(), None),
                ("molar.hostname".into(), Some("a b".into())),
                ("x".into(), Some("y z".into())),
                ("k".into(), Some("".into())),
                ("ro".into(), None),
            ]
        );
    }

    #[test]
    fn module_parameters_for_finit_module() {
        let p = module_params(
            "console=ttyS0 ipmi_si.type=kcs ipmi-si.ports=0xca2 molar.token=x e1000e.debug \
             mlx5_core.prof_sel=\"2 3\" .bad=1 bad.=1",
        );
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            vec![
                ("e1000e".to_string(), "debug".to_string()),
                ("ipmi_si".to_string(), "type=kcs ports=0xca2".to_string()),
                ("mlx5_core".to_string(), "prof_sel=\"2 3\"".to_string()),
            ]
        );
    }

    #[test]
    fn full_settings_from_cmdline() {
        let c = params(&format!(
            "console=ttyS0 molar.controller=10.0.2.100:9000 molar.token=s3cret molar.ca={CA} \
             molar.insecure=0 molar.log=DEBUG molar.hostname=node-1 molar.modules=e1000e,ipmi_ssif"
        ));
        let s = parse_settings(&c, &BTreeMap::new()).unwrap();
        assert_eq!(
            s.controller,
            ControllerAddr {
                host: "10.0.2.100".into(),
                port: 9000
            }
        );
        assert_eq!(s.token.expose(), "s3cret");
        assert_eq!(s.ca_sha256.unwrap()[1], 0x11);
        assert!(!s.insecure);
        assert_eq!(s.log.as_deref(), Some("debug"));
        assert_eq!(s.hostname.as_deref(), Some("node-1"));
        assert_eq!(s.modules, vec!["e1000e", "ipmi_ssif"]);
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn smbios_is_the_fallback_per_key() {
        let c = params("molar.controller=ctl.example:443");
        let s = params("molar.controller=other:1 molar.token=fromsmbios molar.insecure");
        let set = parse_settings(&c, &s).unwrap();
        assert_eq!(set.controller.host, "ctl.example");
        assert_eq!(set.token.expose(), "fromsmbios");
        assert!(set.insecure);
    }

    #[test]
    fn missing_and_malformed_are_all_named_without_the_token() {
        let c = params(
            "molar.controller=nohost molar.ca=sha256:abcd molar.log=loud molar.insecure=maybe",
        );
        let errs = parse_settings(&c, &BTreeMap::new()).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            vec![KEY_CONTROLLER, KEY_TOKEN, KEY_CA, KEY_INSECURE, KEY_LOG]
        );
        assert!(errs[1].to_string().contains("missing"), "{}", errs[1]);
        assert!(errs[2].to_string().contains("2 bytes"), "{}", errs[2]);

        let c = params("molar.controller=[::1]:70000 molar.token=");
        let errs = parse_settings(&c, &BTreeMap::new()).unwrap_err();
        assert!(errs[0].to_string().contains("invalid port"), "{}", errs[0]);
        assert_eq!(
            errs[1].to_string(),
            "setting molar.token: is empty (from the kernel command line)"
        );

        let c = params("molar.controller=a:1 molar.token=\"sec\tret\" molar.hostname=-bad");
        let errs = parse_settings(&c, &BTreeMap::new()).unwrap_err();
        for e in &errs {
            assert!(!e.to_string().contains("sec"), "{e}");
        }
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn controller_forms() {
        assert_eq!(
            parse_controller("[fd00::1]:9000").unwrap().to_string(),
            "[fd00::1]:9000"
        );
        assert!(parse_controller("host:0").is_err());
        assert!(parse_controller(":80").is_err());
        assert!(parse_controller("host").is_err());
        assert!(parse_ca(&CA.replace("sha256:", "md5:")).is_err());
        assert!(parse_ca("sha256:zz").is_err());
    }

    /// A DMI table as QEMU builds it for `-smbios type=11,value=...`: a type 1 structure with
    /// strings, a type 11 with two strings, then the end-of-table structure.
    pub(crate) fn dmi_table(oem: &[&str]) -> Vec<u8> {
        let mut t = vec![1, 8, 0, 1, 1, 2, 0, 0];
        t.extend_from_slice(b"Acme\0X1\0\0");
        t.extend_from_slice(&[11, 5, 1, 0, oem.len() as u8]);
        for s in oem {
            t.extend_from_slice(s.as_bytes());
            t.push(0);
        }
        if oem.is_empty() {
            t.push(0);
        }
        t.push(0);
        t.extend_from_slice(&[127, 4, 2, 0, 0, 0]);
        t
    }

    #[test]
    fn smbios_type_11_strings() {
        let t = dmi_table(&["molar.controller=10.0.2.100:9000", "molar.token=\"x y\""]);
        assert_eq!(
            smbios_oem_strings(&t),
            vec!["molar.controller=10.0.2.100:9000", "molar.token=\"x y\""]
        );
        assert!(smbios_oem_strings(&dmi_table(&[])).is_empty());
        // Truncated and garbage tables never panic.
        for n in 0..t.len() {
            let _ = smbios_oem_strings(&t[..n]);
        }
        assert!(smbios_oem_strings(&[11, 200, 0]).is_empty());
    }

    #[test]
    fn reads_both_sources_under_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/firmware/dmi/tables")).unwrap();
        std::fs::write(
            dir.path().join("proc/cmdline"),
            "console=ttyS0 molar.hostname=n1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sys/firmware/dmi/tables/DMI"),
            dmi_table(&[
                "molar.controller=c:1",
                "molar.token=t",
                "molar.modules=loop",
            ]),
        )
        .unwrap();
        let s = read_settings(dir.path()).unwrap();
        assert_eq!(s.controller.to_string(), "c:1");
        assert_eq!(s.hostname.as_deref(), Some("n1"));
        let early = read_early(dir.path());
        assert_eq!(early.modules, vec!["loop"]);
        // Nothing at all: both required keys are reported, no panic.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(read_settings(empty.path()).unwrap_err().len(), 2);
    }
}
