//! The ramdisk's kernel command line and the iPXE script that boots it.
//!
//! Every value is validated instead of quoted: the kernel splits its command line on
//! whitespace and iPXE expands `${...}` in scripts, so a value with a space, a quote, a `$`,
//! a backslash or a control character is rejected with the name of the offending setting.

use std::fmt;

use thiserror::Error;

/// A kernel command line value that failed validation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("{name}: {why}")]
    Invalid { name: &'static str, why: String },
}

impl ArgsError {
    /// Stable snake_case code for programs.
    pub fn code(&self) -> &'static str {
        "invalid_kernel_argument"
    }
}

/// The agent's enrolment token: never shown by `Debug` or in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Settings that go on the ramdisk's kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `molar.controller=HOST:PORT`.
    pub controller: Option<String>,
    /// `molar.ca=sha256:HEX` (the CA certificate's fingerprint).
    pub ca_fingerprint: Option<String>,
    /// `molar.token=...`.
    pub token: Option<Token>,
    /// `molar.insecure=1`: plaintext to the controller (lab only).
    pub insecure: bool,
    /// Anything else, each one word (`panic=-1`, `molar.log=debug`).
    pub extra: Vec<String>,
}

/// The console arguments every molar ramdisk boots with: the last `console=` becomes
/// `/dev/console`, so the serial port gets the agent's output.
pub const CONSOLE_ARGS: [&str; 2] = ["console=tty0", "console=ttyS0,115200"];

fn check_word(name: &'static str, value: &str) -> Result<(), ArgsError> {
    let invalid = |why: &str| ArgsError::Invalid {
        name,
        why: why.to_string(),
    };
    if value.is_empty() {
        return Err(invalid("empty value"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (no spaces, newlines or non-ASCII)"
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`'))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (no quotes, `\\` or `$`)"
        )));
    }
    Ok(())
}

impl KernelArgs {
    /// Checks every value; see the module comment for the rules.
    pub fn validate(&self) -> Result<(), ArgsError> {
        if let Some(c) = &self.controller {
            check_word("--controller", c)?;
            let bad = |why: &str| ArgsError::Invalid {
                name: "--controller",
                why: why.to_string(),
            };
            let (host, port) = c
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT"))?;
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(bad("port must be 1-65535")),
            }
        }
        if let Some(ca) = &self.ca_fingerprint {
            let hex = ca.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ArgsError::Invalid {
                    name: "--ca-fingerprint",
                    why: "expected sha256: followed by 64 hex digits".into(),
                });
            }
        }
        if let Some(t) = &self.token {
            // The value itself stays out of the message.
            check_word("--token", t.expose()).map_err(|_| ArgsError::Invalid {
                name: "--token",
                why: "must be one word of printable ASCII without quotes, `\\` or `$`".into(),
            })?;
        }
        for e in &self.extra {
            check_word("--cmdline-extra", e)?;
        }
        Ok(())
    }

    fn words(&self, redact: bool) -> Vec<String> {
        let mut w: Vec<String> = CONSOLE_ARGS.iter().map(|s| s.to_string()).collect();
        if let Some(c) = &self.controller {
            w.push(format!("molar.controller={c}"));
        }
        if let Some(ca) = &self.ca_fingerprint {
            w.push(format!("molar.ca={ca}"));
        }
        if let Some(t) = &self.token {
            let shown = if redact { "<redacted>" } else { t.expose() };
            w.push(format!("molar.token={shown}"));
        }
        if self.insecure {
            w.push("molar.insecure=1".into());
        }
        w.extend(self.extra.iter().cloned());
        w
    }

    /// The command line, token included: for the boot script only.
    pub fn cmdline(&self) -> Result<String, ArgsError> {
        self.validate()?;
        Ok(self.words(false).join(" "))
    }

    /// The command line with the token replaced by `<redacted>`: for logs and the manifest.
    pub fn cmdline_redacted(&self) -> String {
        self.words(true).join(" ")
    }

    /// The iPXE script: kernel and initrd are fetched relative to the script's own URI.
    pub fn boot_ipxe(&self, kernel: &str, initrd: &str) -> Result<String, ArgsError> {
        check_word("kernel file name", kernel)?;
        check_word("initrd file name", initrd)?;
        Ok(format!(
            "#!ipxe\nkernel {kernel} initrd={initrd} {}\ninitrd {initrd}\nboot\n",
            self.cmdline()?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> KernelArgs {
        KernelArgs {
            controller: Some("10.0.2.100:9000".into()),
            ca_fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
            token: Some(Token::new("s3cret-token")),
            insecure: false,
            extra: vec!["panic=-1".into()],
        }
    }

    #[test]
    fn writes_the_boot_script() {
        let script = full().boot_ipxe("vmlinuz", "initramfs.img").unwrap();
        assert_eq!(
            script,
            format!(
                "#!ipxe\nkernel vmlinuz initrd=initramfs.img console=tty0 console=ttyS0,115200 \
                 molar.controller=10.0.2.100:9000 molar.ca=sha256:{} molar.token=s3cret-token \
                 panic=-1\ninitrd initramfs.img\nboot\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_or_the_redacted_line() {
        let a = full();
        assert!(!format!("{a:?}").contains("s3cret"));
        assert!(!a.cmdline_redacted().contains("s3cret"));
        assert!(a.cmdline_redacted().contains("molar.token=<redacted>"));
    }

    #[test]
    fn rejects_values_that_would_split_or_expand() {
        let cases: Vec<(KernelArgs, &str)> = vec![
            (
                KernelArgs {
                    controller: Some("h:1 x".into()),
                    ..full()
                },
                "--controller",
            ),
            (
                KernelArgs {
                    controller: Some("h".into()),
                    ..full()
                },
                "--controller",
            ),
            (
                KernelArgs {
                    controller: Some("h:0".into()),
                    ..full()
                },
                "--controller",
            ),
            (
                KernelArgs {
                    controller: Some(":80".into()),
                    ..full()
                },
                "--controller",
            ),
            (
                KernelArgs {
                    ca_fingerprint: Some("sha256:zz".into()),
                    ..full()
                },
                "--ca-fingerprint",
            ),
            (
                KernelArgs {
                    ca_fingerprint: Some("ab".repeat(32)),
                    ..full()
                },
                "--ca-fingerprint",
            ),
            (
                KernelArgs {
                    token: Some(Token::new("a\nb")),
                    ..full()
                },
                "--token",
            ),
            (
                KernelArgs {
                    token: Some(Token::new("${x}")),
                    ..full()
                },
                "--token",
            ),
            (
                KernelArgs {
                    extra: vec!["a b".into()],
                    ..full()
                },
                "--cmdline-extra",
            ),
            (
                KernelArgs {
                    extra: vec!["x=\"y\"".into()],
                    ..full()
                },
                "--cmdline-extra",
            ),
            (
                KernelArgs {
                    extra: vec![String::new()],
                    ..full()
                },
                "--cmdline-extra",
            ),
        ];
        for (args, name) in cases {
            let e = args.cmdline().unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
            assert!(!e.to_string().contains("${x}"));
        }
    }

    #[test]
    fn minimal_arguments_are_just_the_console() {
        assert_eq!(
            KernelArgs::default().cmdline().unwrap(),
            "console=tty0 console=ttyS0,115200"
        );
    }
}
