//! `molar console SERVER`: the terminal side. It opens the console's WebSocket through the
//! API (the admin token is all it needs), puts the terminal in raw mode (restored by a guard
//! whatever happens: detach, error, signal, panic), and copies bytes both ways. After a
//! newline, `~.` detaches, `~B` sends a break and `~~` types one `~` (ssh's convention).

use crate::client::{Client, segment};
use futures::{SinkExt, StreamExt};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Why attaching failed or the console ended.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("invalid API URL {0}")]
    Url(String),
    #[error("reading the CA certificate: {0}")]
    Ca(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("console WebSocket: {0}")]
    WebSocket(String),
    /// The controller refused, with its own error body.
    #[error("{msg}")]
    Refused { code: String, msg: String },
    #[error("the console ended: {0}")]
    Ended(String),
    #[error("terminal: {0}")]
    Terminal(String),
}

/// What typed input means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    Send(Vec<u8>),
    Break,
    Detach,
}

/// The `~` escape recogniser; it remembers across reads whether a line just started.
#[derive(Debug, Clone)]
pub struct Escapes {
    line_start: bool,
    tilde: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            line_start: true,
            tilde: false,
        }
    }
}

impl Escapes {
    /// Splits typed bytes into what to send and the escapes among them.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Typed> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => {
                        flush(&mut out, &mut buf);
                        out.push(Typed::Detach);
                        return out;
                    }
                    b'B' => {
                        flush(&mut out, &mut buf);
                        out.push(Typed::Break);
                        self.line_start = false;
                        continue;
                    }
                    b'~' => {
                        buf.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => buf.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            buf.push(b);
            self.line_start = matches!(b, b'\r' | b'\n');
        }
        flush(&mut out, &mut buf);
        out
    }
}

fn flush(out: &mut Vec<Typed>, buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        out.push(Typed::Send(std::mem::take(buf)));
    }
}

/// Raw mode on a terminal, the previous settings restored on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal (input piped in): nothing to change.
    fn enter() -> Result<Option<RawMode>, AttachError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return Ok(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| AttachError::Terminal(e.to_string()))?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the console WebSocket of `server` with the client's admin token and CA.
pub async fn connect(client: &Client, server: &str, force: bool) -> Result<Ws, AttachError> {
    let (base, token, ca_pem) = client.console_endpoint();
    let rest = base
        .strip_prefix("https://")
        .ok_or_else(|| AttachError::Url(base.to_owned()))?;
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| AttachError::Url(base.to_owned()))?,
        ),
        None => (authority, 443),
    };
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| AttachError::Ca(e.to_string()))?;
        roots.add(c).map_err(|e| AttachError::Ca(e.to_string()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(crate::pki::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AttachError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| AttachError::Url(base.to_owned()))?;
    let addr = authority.to_owned();
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| AttachError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|source| AttachError::Connect { addr, source })?;
    let url = format!(
        "wss://{authority}/api/v1/servers/{}/console?exclusive=true&force={force}",
        segment(server)
    );
    let mut req = url
        .into_client_request()
        .map_err(|e| AttachError::WebSocket(e.to_string()))?;
    let bearer = format!("Bearer {}", token.expose());
    req.headers_mut().insert(
        "authorization",
        bearer
            .parse()
            .map_err(|_| AttachError::WebSocket("admin token is not a valid header".into()))?,
    );
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            Err(AttachError::Refused {
                code: v["error"]["code"].as_str().unwrap_or("").to_owned(),
                msg: v["error"]["msg"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {}", resp.status())),
            })
        }
        Err(e) => Err(AttachError::WebSocket(e.to_string())),
    }
}

/// Reads stdin on a thread of its own: a blocking read cannot be cancelled, and the
/// thread must not keep the process (or the runtime's shutdown) waiting for a keypress.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let _ = std::thread::Builder::new()
        .name("console stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    rx
}

/// A molar message on the console (a text frame): `(text, last)`.
fn molar_message(text: &str) -> (String, bool) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(e) = v["ended"].as_str() {
        (crate::cli::sanitize(e).into_owned(), true)
    } else if let Some(n) = v["notice"].as_str() {
        (crate::cli::sanitize(n).into_owned(), false)
    } else {
        (crate::cli::sanitize(text).into_owned(), false)
    }
}

/// Attaches the terminal to the console until `~.`, the console ending, or a signal.
/// `Ok(())` for a detach by the user; the console ending otherwise is an error.
pub async fn attach(client: &Client, server: &str, force: bool) -> Result<(), AttachError> {
    let ws = connect(client, server, force).await?;
    let (mut tx, mut rx) = ws.split();
    eprint!("[molar] console of {server}; ~. detaches, ~B sends a break\r\n");
    let raw = RawMode::enter()?;
    let mut stdin = stdin_reader();
    let mut stdout = std::io::stdout();
    let mut escapes = Escapes::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AttachError::Terminal(e.to_string()))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| AttachError::Terminal(e.to_string()))?;
    let mut stdin_open = true;
    let result = loop {
        tokio::select! {
            frame = rx.next() => match frame {
                None => break Err(AttachError::Ended("the controller closed the console".into())),
                Some(Err(e)) => break Err(AttachError::WebSocket(e.to_string())),
                Some(Ok(Message::Binary(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(t))) => {
                    let (msg, last) = molar_message(t.as_str());
                    eprint!("\r\n[molar] {msg}\r\n");
                    if last {
                        break Err(AttachError::Ended(msg));
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    break Err(AttachError::Ended("the controller closed the console".into()))
                }
                Some(Ok(_)) => {}
            },
            typed = stdin.recv(), if stdin_open => {
                let Some(typed) = typed else {
                    // Input ended (a pipe): keep showing the console until it ends.
                    stdin_open = false;
                    continue;
                };
                let mut detach = false;
                for t in escapes.feed(&typed) {
                    let frame = match t {
                        Typed::Send(d) => Message::Binary(d.into()),
                        Typed::Break => Message::Text(r#"{"break":true}"#.into()),
                        Typed::Detach => {
                            detach = true;
                            break;
                        }
                    };
                    if tx.send(frame).await.is_err() {
                        break;
                    }
                }
                if detach {
                    let _ = tx.send(Message::Close(None)).await;
                    break Ok(());
                }
            }
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => break Ok(()),
        }
    };
    drop(raw);
    if result.is_ok() {
        eprintln!("\r\n[molar] detached");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_after_a_newline_only() {
        let mut e = Escapes::default();
        assert_eq!(e.feed(b"~."), vec![Typed::Detach]);
        let mut e = Escapes::default();
        assert_eq!(
            e.feed(b"ls ~.\r~B"),
            vec![Typed::Send(b"ls ~.\r".to_vec()), Typed::Break]
        );
        assert_eq!(e.feed(b"x\n~~y"), vec![Typed::Send(b"x\n~y".to_vec())]);
        // Split across reads.
        let mut e = Escapes::default();
        assert_eq!(e.feed(b"a\r"), vec![Typed::Send(b"a\r".to_vec())]);
        assert_eq!(e.feed(b"~"), vec![]);
        assert_eq!(e.feed(b"."), vec![Typed::Detach]);
        // An unknown escape types both characters.
        let mut e = Escapes::default();
        assert_eq!(e.feed(b"~x"), vec![Typed::Send(b"~x".to_vec())]);
    }

    #[test]
    fn molar_messages_are_read_and_sanitised() {
        assert_eq!(
            molar_message(r#"{"ended":"taken over"}"#),
            ("taken over".to_owned(), true)
        );
        assert!(!molar_message(r#"{"notice":"hi"}"#).1);
        assert!(
            !molar_message("{\"notice\":\"\\u001b[2J\"}")
                .0
                .contains('\u{1b}')
        );
    }
}
