//! HTTPS to one Redfish service: rustls with the BMC's own verifier, a SessionService
//! session (`X-Auth-Token`, deleted on close, renewed once when the service answers 401),
//! basic authentication when the service has no session collection, bounded timeouts and
//! retries, `If-Match` with the resource's ETag on PATCH, task monitors (202 + `Location`)
//! followed to completion, and `@Message.ExtendedInfo` errors reported verbatim. Errors
//! name the BMC by address and never carry the password or the token.

use super::trust;
use super::types::{self, ServiceRoot, Task};
use crate::oob::{BmcTarget, OobError};
use molar_protocol::Secret;
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// Requests that failed in transport (or 503) are tried this many times in all.
pub const ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an operation's task monitor is followed.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(600);
/// The most bytes of a response body read.
const BODY_MAX: usize = 4 << 20;

#[derive(Debug)]
enum Auth {
    None,
    Session {
        token: Secret,
        location: Option<String>,
    },
    Basic,
}

/// A response: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self, addr: &str, what: &str) -> Result<T, OobError> {
        serde_json::from_slice(&self.body).map_err(|e| OobError::Protocol {
            addr: addr.to_owned(),
            detail: format!("{what}: the answer is not the expected JSON: {e}"),
        })
    }

    fn header(&self, name: header::HeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// A logged-in (or about to log in) client of one BMC's Redfish service.
pub struct Client {
    http: reqwest::Client,
    base: String,
    addr: String,
    username: String,
    password: Secret,
    auth: Auth,
    refused: trust::Refused,
    /// How often a task monitor is polled (shortened by tests).
    pub task_poll: Duration,
    /// Pause before a retry, times the attempt number.
    pub retry_pause: Duration,
    /// Tries per request (transport failures and 503).
    pub attempts: u32,
}

impl Client {
    /// A client for the target; nothing is sent yet.
    pub fn new(target: &BmcTarget) -> Result<Client, OobError> {
        let addr = target.addr();
        let (tls, refused) =
            trust::client_config(target.trust.as_ref()).map_err(|detail| OobError::Protocol {
                addr: addr.clone(),
                detail,
            })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OobError::Protocol {
                addr: addr.clone(),
                detail: format!("HTTPS client: {e}"),
            })?;
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        Ok(Client {
            http,
            base: format!("https://{host}:{}", target.port),
            addr,
            username: target.username.clone(),
            password: target.password.clone(),
            auth: Auth::None,
            refused,
            task_poll: Duration::from_secs(2),
            retry_pause: Duration::from_millis(500),
            attempts: ATTEMPTS,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The URL of a path on this BMC. A `Location` the service sent may be absolute: it is
    /// followed only when it names this same BMC, so the session token never goes elsewhere.
    fn url(&self, path: &str) -> Result<String, OobError> {
        if path.starts_with('/') && !path.starts_with("//") {
            return Ok(format!("{}{}", self.base, path));
        }
        if let Some(rest) = path.strip_prefix(&self.base)
            && rest.starts_with('/')
        {
            return Ok(path.to_owned());
        }
        Err(OobError::Protocol {
            addr: self.addr.clone(),
            detail: format!(
                "the service pointed to {:?}, which is not a path on this BMC",
                path.chars().take(120).collect::<String>()
            ),
        })
    }

    fn transport(&self, e: &reqwest::Error, attempts: u32) -> OobError {
        if let Some(fp) = self.refused.lock().ok().and_then(|s| s.clone()) {
            return OobError::Untrusted {
                addr: self.addr.clone(),
                fingerprint: fp,
            };
        }
        if e.is_connect() || e.is_timeout() {
            return OobError::Unreachable {
                addr: self.addr.clone(),
                attempts,
            };
        }
        // reqwest's messages carry the URL (never credentials: they travel in headers).
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            detail.push_str(&format!(": {s}"));
            src = s.source();
        }
        OobError::Protocol {
            addr: self.addr.clone(),
            detail,
        }
    }

    /// One request, with retries for transport failures and 503, without re-login.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        authed: bool,
    ) -> Result<Reply, OobError> {
        let mut last = None;
        let attempts = self.attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.retry_pause * (attempt - 1)).await;
            }
            let mut rb = self
                .http
                .request(method.clone(), self.url(path)?)
                .header(header::ACCEPT, "application/json")
                .header("OData-Version", "4.0");
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(tag) = if_match {
                rb = rb.header(header::IF_MATCH, tag);
            }
            if authed {
                match &self.auth {
                    Auth::Session { token, .. } => rb = rb.header("X-Auth-Token", token.expose()),
                    Auth::Basic => rb = rb.basic_auth(&self.username, Some(self.password.expose())),
                    Auth::None => {}
                }
            }
            match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = read_body(resp)
                        .await
                        .map_err(|e| self.transport(&e, attempt))?;
                    let reply = Reply {
                        status,
                        headers,
                        body,
                    };
                    if status == StatusCode::SERVICE_UNAVAILABLE && attempt < attempts {
                        last = Some(Ok(reply));
                        continue;
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    let err = self.transport(&e, attempt);
                    // An untrusted certificate does not become trusted by trying again.
                    if matches!(err, OobError::Untrusted { .. }) {
                        return Err(err);
                    }
                    last = Some(Err(err));
                }
            }
        }
        last.unwrap_or_else(|| {
            Err(OobError::Unreachable {
                addr: self.addr.clone(),
                attempts,
            })
        })
    }

    /// The service root, read without credentials (Redfish allows it).
    pub async fn service_root(&self) -> Result<ServiceRoot, OobError> {
        let r = self
            .raw(Method::GET, "/redfish/v1/", None, None, false)
            .await?;
        if !r.status.is_success() {
            return Err(self.refusal("reading the service root", &r));
        }
        r.json(&self.addr, "the service root")
    }

    /// Logs in: a session when the service has a session collection, else basic
    /// authentication (checked by reading the systems collection). A wrong password is
    /// `OobError::Auth`.
    pub async fn login(&mut self) -> Result<(), OobError> {
        let root = self.service_root().await?;
        let sessions = root
            .links
            .and_then(|l| l.sessions)
            .map(|l| l.id)
            .or_else(|| {
                root.session_service
                    .map(|_| "/redfish/v1/SessionService/Sessions".to_owned())
            });
        if let Some(path) = sessions {
            let body = serde_json::json!({
                "UserName": self.username,
                "Password": self.password.expose(),
            });
            let r = self
                .raw(Method::POST, &path, Some(&body), None, false)
                .await?;
            if r.status.is_success() {
                let token = r.header(header::HeaderName::from_static("x-auth-token"));
                let Some(token) = token.filter(|t| !t.is_empty()) else {
                    return Err(OobError::Protocol {
                        addr: self.addr.clone(),
                        detail: "the session was created without an X-Auth-Token".into(),
                    });
                };
                self.auth = Auth::Session {
                    token: Secret::new(token),
                    location: r.header(header::LOCATION),
                };
                return Ok(());
            }
            if matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(self.auth_refused(&r));
            }
            if !matches!(
                r.status,
                StatusCode::NOT_FOUND
                    | StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::NOT_IMPLEMENTED
            ) {
                return Err(self.refusal("creating a session", &r));
            }
        }
        self.auth = Auth::Basic;
        let path = root
            .systems
            .map(|l| l.id)
            .unwrap_or_else(|| "/redfish/v1/Systems".into());
        let r = self.raw(Method::GET, &path, None, None, true).await?;
        if matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            self.auth = Auth::None;
            return Err(self.auth_refused(&r));
        }
        Ok(())
    }

    fn auth_refused(&self, r: &Reply) -> OobError {
        OobError::Auth {
            addr: self.addr.clone(),
            reason: types::error_text(&r.body)
                .unwrap_or_else(|| format!("HTTP {}", r.status.as_u16())),
        }
    }

    /// `what refused: <ExtendedInfo messages | HTTP status>`.
    pub fn refusal(&self, what: &str, r: &Reply) -> OobError {
        let status = format!(
            "HTTP {} {}",
            r.status.as_u16(),
            r.status.canonical_reason().unwrap_or("")
        );
        OobError::Refused {
            addr: self.addr.clone(),
            command: what.to_owned(),
            completion: match types::error_text(&r.body) {
                Some(t) => format!("{}: {t}", status.trim_end()),
                None => status.trim_end().to_owned(),
            },
        }
    }

    /// An authenticated request; a 401 on a session renews it once (sessions expire).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, OobError> {
        if matches!(self.auth, Auth::None) {
            self.login().await?;
        }
        let r = self.raw(method.clone(), path, body, if_match, true).await?;
        if r.status == StatusCode::UNAUTHORIZED && matches!(self.auth, Auth::Session { .. }) {
            tracing::debug!(bmc = %self.addr, "Redfish session expired; logging in again");
            self.auth = Auth::None;
            self.login().await?;
            return self.raw(method, path, body, if_match, true).await;
        }
        Ok(r)
    }

    /// GET a resource as `T`.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, OobError> {
        let r = self.request(Method::GET, path, None, None).await?;
        if !r.status.is_success() {
            return Err(self.refusal(&format!("GET {path}"), &r));
        }
        r.json(&self.addr, path)
    }

    /// PATCH with `If-Match` set to the resource's current ETag (header, else
    /// `@odata.etag`), so a concurrent change is not overwritten; a 412 re-reads once.
    pub async fn patch(&mut self, path: &str, body: &Value, what: &str) -> Result<(), OobError> {
        for _ in 0..2 {
            let cur = self.request(Method::GET, path, None, None).await?;
            if !cur.status.is_success() {
                return Err(self.refusal(&format!("GET {path}"), &cur));
            }
            let etag = cur.header(header::ETAG).or_else(|| {
                serde_json::from_slice::<Value>(&cur.body)
                    .ok()
                    .and_then(|v| v.get("@odata.etag")?.as_str().map(str::to_owned))
            });
            let r = self
                .request(Method::PATCH, path, Some(body), etag.as_deref())
                .await?;
            if r.status == StatusCode::PRECONDITION_FAILED && etag.is_some() {
                continue;
            }
            return self.finish(r, what).await.map(|_| ());
        }
        Err(OobError::Refused {
            addr: self.addr.clone(),
            command: what.to_owned(),
            completion: "the resource kept changing (HTTP 412 twice)".into(),
        })
    }

    /// POST an action (or anything) and follow its task monitor to completion.
    pub async fn post(&mut self, path: &str, body: &Value, what: &str) -> Result<Reply, OobError> {
        let r = self.request(Method::POST, path, Some(body), None).await?;
        self.finish(r, what).await
    }

    /// An operation's answer: errors become `Refused` with the service's messages; 202 with
    /// a `Location` is a task monitor, polled until the task ends.
    async fn finish(&mut self, r: Reply, what: &str) -> Result<Reply, OobError> {
        if !r.status.is_success() {
            return Err(self.refusal(what, &r));
        }
        if r.status != StatusCode::ACCEPTED {
            return Ok(r);
        }
        let Some(monitor) = r.header(header::LOCATION) else {
            return Ok(r);
        };
        let deadline = tokio::time::Instant::now() + TASK_TIMEOUT;
        loop {
            let wait = r
                .header(header::RETRY_AFTER)
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(30)))
                .unwrap_or(self.task_poll)
                .min(self.task_poll.max(Duration::from_millis(1)) * 15);
            tokio::time::sleep(wait).await;
            let m = self.request(Method::GET, &monitor, None, None).await?;
            if !m.status.is_success() {
                return Err(self.refusal(what, &m));
            }
            let task: Option<Task> = serde_json::from_slice(&m.body).ok();
            let state = task.as_ref().and_then(|t| t.task_state.clone());
            match state.as_deref() {
                Some("Exception" | "Killed" | "Cancelled" | "Interrupted") => {
                    let msgs: Vec<String> = task
                        .map(|t| t.messages.iter().map(types::Message::line).collect())
                        .unwrap_or_default();
                    return Err(OobError::Refused {
                        addr: self.addr.clone(),
                        command: what.to_owned(),
                        completion: format!(
                            "task {}: {}",
                            state.unwrap_or_default(),
                            if msgs.is_empty() {
                                "no message".into()
                            } else {
                                msgs.join("; ")
                            }
                        ),
                    });
                }
                Some("Completed") => return Ok(m),
                _ if m.status != StatusCode::ACCEPTED => return Ok(m),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OobError::Protocol {
                    addr: self.addr.clone(),
                    detail: format!(
                        "{what}: the task at {monitor} did not end in {TASK_TIMEOUT:?}"
                    ),
                });
            }
        }
    }

    /// Deletes the session (if any). Errors are only logged: the session expires anyway.
    pub async fn close(mut self) {
        if let Auth::Session {
            location: Some(loc),
            ..
        } = &self.auth
        {
            let loc = loc.clone();
            match self.raw(Method::DELETE, &loc, None, None, true).await {
                Ok(r) if r.status.is_success() => {}
                Ok(r) => {
                    tracing::debug!(bmc = %self.addr, status = %r.status, "deleting the Redfish session")
                }
                Err(e) => {
                    tracing::debug!(bmc = %self.addr, error = %e, "deleting the Redfish session")
                }
            }
        }
        self.auth = Auth::None;
    }

    /// Whether the client uses a session (false: basic authentication).
    pub fn has_session(&self) -> bool {
        matches!(self.auth, Auth::Session { .. })
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<bytes::Bytes, reqwest::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > BODY_MAX {
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oob::BmcProtocol;

    #[test]
    fn only_paths_on_this_bmc_are_followed() {
        let t = BmcTarget {
            host: "127.0.0.1".into(),
            port: 8443,
            username: "u".into(),
            password: Secret::new("p"),
            allow_ipmi15: false,
            protocol: BmcProtocol::Redfish,
            trust: None,
        };
        let c = Client::new(&t).unwrap();
        assert_eq!(
            c.url("/redfish/v1/").unwrap(),
            "https://127.0.0.1:8443/redfish/v1/"
        );
        assert_eq!(
            c.url("https://127.0.0.1:8443/redfish/v1/TaskMonitors/1")
                .unwrap(),
            "https://127.0.0.1:8443/redfish/v1/TaskMonitors/1"
        );
        for bad in [
            "https://evil.example/redfish/v1/",
            "https://127.0.0.1:8443.evil.example/x",
            "//evil.example/x",
            "http://127.0.0.1:8443/redfish/v1/",
            "redfish/v1",
        ] {
            assert!(c.url(bad).is_err(), "{bad}");
        }
        let v6 = Client::new(&BmcTarget {
            host: "::1".into(),
            ..t
        })
        .unwrap();
        assert_eq!(v6.url("/x").unwrap(), "https://[::1]:8443/x");
    }
}
