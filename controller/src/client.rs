//! A typed client of the controller's HTTP API: what the `molar` CLI and the end-to-end tests
//! use. It trusts only the controller's CA (no public roots) and sends the admin token.

use crate::api::{
    CallRequest, CallResponse, ConditionSet, ConditionStatusAnswer, ControlQueued, ControlRequest,
    CreatedToken, EventPage, LogPage, MaintenanceAnswer, MaintenanceRequest, ReenrolRequest,
    Reenrolled, RemovedServer, RequestList, ServerList, ServerView, TaskList, TaskRequest,
    TaskStarted, TokenList, TokenRequest, TransitionPage, WorkflowList,
};
use crate::store::{
    RequestRecord, TaskEvent, TaskRecord, TokenRecord, TokenScope, Transition, WorkflowRecord,
};
use crate::workflow::{ClaimParams, ReleaseParams};
use molar_protocol::{ErrorBody, Secret, codes};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("parsing the CA certificate: {0}")]
    Ca(reqwest::Error),
    #[error("building the HTTP client: {0}")]
    Build(reqwest::Error),
    #[error("reaching the controller at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    /// The API answered with an error body.
    #[error("{0}")]
    Api(ErrorBody),
    #[error("an event from {url} exceeds {max} bytes; the stream is abandoned")]
    EventTooLong { url: String, max: usize },
    #[error("unexpected answer from {url} (HTTP {status}): {msg}")]
    Decode {
        url: String,
        status: u16,
        msg: String,
    },
}

impl ClientError {
    /// The stable code: the API's own code, or `io_error` when the API was not reached.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api(b) => &b.code,
            ClientError::Decode { .. } | ClientError::EventTooLong { .. } => codes::INTERNAL,
            _ => codes::IO,
        }
    }
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An API client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Secret,
    /// The CA the API is checked against, for connections reqwest does not make (the
    /// console's WebSocket).
    ca_pem: std::sync::Arc<Vec<u8>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        return Err(ClientError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(s)
}

/// Most bytes of one server-sent event (its lines and its data), like the protocol's line
/// limit: a stream that never ends its line must not grow the client without bound.
pub const MAX_EVENT: usize = molar_protocol::DEFAULT_MAX_LINE;

/// Follows `GET /tasks/{id}/events`: stored events first, then live ones, ending after the
/// terminal one.
pub struct TaskEvents {
    resp: reqwest::Response,
    buf: Vec<u8>,
    data: String,
    url: String,
    /// An event was too long: the stream is over.
    failed: bool,
}

impl TaskEvents {
    /// The next event, or `None` when the stream ended. An event longer than [`MAX_EVENT`]
    /// is an error, after which the stream ends.
    pub async fn next(&mut self) -> Option<Result<TaskEvent>> {
        if self.failed {
            return None;
        }
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if self.data.is_empty() {
                        continue;
                    }
                    let data = std::mem::take(&mut self.data);
                    return Some(
                        serde_json::from_str(&data).map_err(|e| ClientError::Decode {
                            url: self.url.clone(),
                            status: 200,
                            msg: e.to_string(),
                        }),
                    );
                }
                if let Some(d) = line.strip_prefix("data:") {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
                // `event:`, `id:` and `:` keep-alive comments need nothing.
            }
            if self.buf.len() + self.data.len() > MAX_EVENT {
                self.failed = true;
                self.buf = Vec::new();
                self.data = String::new();
                return Some(Err(ClientError::EventTooLong {
                    url: self.url.clone(),
                    max: MAX_EVENT,
                }));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return None,
                Err(source) => {
                    return Some(Err(ClientError::Http {
                        url: self.url.clone(),
                        source,
                    }));
                }
            }
        }
    }
}

impl Client {
    /// A client of the API at `api_url` (e.g. `https://127.0.0.1:7701`) trusting `ca_pem`.
    pub fn new(api_url: &str, token: Secret, ca_pem: &[u8]) -> Result<Client> {
        crate::pki::install_default_provider();
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(ClientError::Ca)?;
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client {
            http,
            base: format!("{}/api/v1", api_url.trim().trim_end_matches('/')),
            token,
            ca_pem: std::sync::Arc::new(ca_pem.to_vec()),
        })
    }

    /// A client from explicit files.
    pub fn from_files(api_url: &str, token_file: &Path, ca_file: &Path) -> Result<Client> {
        let token = Secret::new(read_trimmed(token_file)?);
        let ca = std::fs::read(ca_file).map_err(|source| ClientError::Read {
            path: ca_file.to_owned(),
            source,
        })?;
        Client::new(api_url, token, &ca)
    }

    /// A client from a controller's state directory (`api.url`, `admin.token`, `ca.pem`).
    pub fn from_state_dir(dir: &Path) -> Result<Client> {
        let url = read_trimmed(&dir.join("api.url"))?;
        Client::from_files(&url, &dir.join("admin.token"), &dir.join("ca.pem"))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T> {
        let resp = self.respond(req, url).await?;
        Self::decode(resp, url).await
    }

    /// Sends `req` with the admin token; the response, whatever its status.
    async fn respond(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response> {
        req.bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|source| ClientError::Http {
                url: url.to_owned(),
                source,
            })
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response, url: &str) -> Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        let decode_err = |msg: String| ClientError::Decode {
            url: url.to_owned(),
            status: status.as_u16(),
            msg,
        };
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|_| decode_err(String::from_utf8_lossy(&bytes).into_owned()))?;
            let body: ErrorBody = serde_json::from_value(v["error"].clone())
                .map_err(|_| decode_err(String::from_utf8_lossy(&bytes).into_owned()))?;
            return Err(ClientError::Api(body));
        }
        serde_json::from_slice(&bytes).map_err(|e| decode_err(e.to_string()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.get(&url), &url).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body), &url).await
    }

    pub async fn servers(&self) -> Result<Vec<ServerView>> {
        Ok(self.get::<ServerList>("/servers").await?.servers)
    }

    pub async fn server(&self, id: &str, inventory: bool) -> Result<ServerView> {
        let q = if inventory { "?inventory=true" } else { "" };
        self.get(&format!("/servers/{id}{q}")).await
    }

    /// Calls `method` on the server's agent and returns its result.
    pub async fn call(
        &self,
        id: &str,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let body = CallRequest {
            method: method.to_owned(),
            params: Some(params),
            timeout_s: timeout.map(|t| t.as_secs_f64()),
        };
        let r: CallResponse = self.post(&format!("/servers/{id}/call"), &body).await?;
        Ok(r.result)
    }

    pub async fn start_task(&self, id: &str, method: &str, params: Value) -> Result<TaskStarted> {
        let body = TaskRequest {
            method: method.to_owned(),
            params: Some(params),
        };
        self.post(&format!("/servers/{id}/tasks"), &body).await
    }

    pub async fn task(&self, task_id: &str) -> Result<TaskRecord> {
        self.get(&format!("/tasks/{task_id}")).await
    }

    pub async fn server_tasks(&self, id: &str) -> Result<Vec<TaskRecord>> {
        Ok(self
            .get::<TaskList>(&format!("/servers/{id}/tasks"))
            .await?
            .tasks)
    }

    /// Opens the task's event stream.
    pub async fn task_events(&self, task_id: &str) -> Result<TaskEvents> {
        let url = self.url(&format!("/tasks/{task_id}/events"));
        let resp = self.respond(self.http.get(&url), &url).await?;
        if !resp.status().is_success() {
            return Err(Self::decode::<Value>(resp, &url).await.err().unwrap_or(
                ClientError::Decode {
                    url,
                    status: 0,
                    msg: "error status without an error body".into(),
                },
            ));
        }
        Ok(TaskEvents {
            resp,
            buf: Vec::new(),
            data: String::new(),
            url,
            failed: false,
        })
    }

    /// Log records with an id greater than `after`.
    pub async fn logs(&self, id: &str, after: i64, limit: u32) -> Result<LogPage> {
        self.get(&format!("/servers/{id}/logs?after={after}&limit={limit}"))
            .await
    }

    /// Creates an agent token of scope `any`; the answer is the only time the token is
    /// shown.
    pub async fn create_token(&self, name: &str) -> Result<CreatedToken> {
        self.create_scoped_token(name, &TokenScope::Any).await
    }

    /// Creates an agent token of `scope`.
    pub async fn create_scoped_token(
        &self,
        name: &str,
        scope: &TokenScope,
    ) -> Result<CreatedToken> {
        let mut req = TokenRequest {
            name: name.to_owned(),
            ..TokenRequest::default()
        };
        match scope {
            TokenScope::Any => {}
            TokenScope::Server { server_id } => req.server = Some(server_id.clone()),
            TokenScope::Set { label } => req.set = Some(label.clone()),
            TokenScope::Enrol => req.enrol = true,
        }
        self.post("/tokens", &req).await
    }

    /// Replaces a token by a new one of the same scope, revoking it and closing its sessions.
    pub async fn rotate_token(&self, id: &str) -> Result<CreatedToken> {
        self.post(&format!("/tokens/{id}/rotate"), &serde_json::json!({}))
            .await
    }

    /// Expects the server to boot the ramdisk within `window` (default 1 h): an enrolment
    /// token may then claim it.
    pub async fn reenrol_server(&self, id: &str, window: Option<Duration>) -> Result<Reenrolled> {
        let body = ReenrolRequest {
            for_s: window.map(|w| w.as_secs()),
        };
        self.post(&format!("/servers/{id}/reenrol"), &body).await
    }

    /// Enrols a server by its BMC (`POST /servers`); the controller opens a session with
    /// the BMC before it stores anything.
    pub async fn add_server(&self, req: &crate::api::AddServer) -> Result<ServerView> {
        self.post("/servers", req).await
    }

    /// Security events with an id greater than `after`, of one server if given.
    pub async fn events(&self, server: Option<&str>, after: i64, limit: u32) -> Result<EventPage> {
        let server = server.map(|s| format!("&server={s}")).unwrap_or_default();
        self.get(&format!("/events?after={after}&limit={limit}{server}"))
            .await
    }

    /// One server's state changes (id or name) with an id above `after`, oldest first.
    pub async fn history(&self, server: &str, after: i64, limit: u32) -> Result<TransitionPage> {
        self.get(&format!(
            "/servers/{}/history?after={after}&limit={limit}",
            segment(server)
        ))
        .await
    }

    /// Every server's state changes (or one server's) with an id above `after`.
    pub async fn transitions(
        &self,
        server: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<TransitionPage> {
        let server = server
            .map(|s| format!("&server={}", segment(s)))
            .unwrap_or_default();
        self.get(&format!("/transitions?after={after}&limit={limit}{server}"))
            .await
    }

    /// Takes a server into maintenance (`on`) or out of it.
    pub async fn maintenance(
        &self,
        server: &str,
        on: bool,
        reason: Option<&str>,
    ) -> Result<Transition> {
        let req = MaintenanceRequest {
            on,
            reason: reason.map(str::to_owned),
            firmware: None,
        };
        Ok(self.maintenance_with(server, &req).await?.transition)
    }

    /// [`Client::maintenance`] with every option (a firmware plan run in maintenance).
    pub async fn maintenance_with(
        &self,
        server: &str,
        req: &MaintenanceRequest,
    ) -> Result<MaintenanceAnswer> {
        self.post(&format!("/servers/{}/maintenance", segment(server)), req)
            .await
    }

    /// Checks a server's stored inventory against a QC spec (without the agent).
    pub async fn qc_stored(
        &self,
        server: &str,
        spec: molar_protocol::qc::Spec,
    ) -> Result<molar_protocol::qc::QcReport> {
        let body = crate::api::QcCheckRequest { spec };
        self.post(&format!("/servers/{}/qc", segment(server)), &body)
            .await
    }

    /// Starts the claim workflow (deploy, then Reserved).
    pub async fn claim(&self, server: &str, params: &ClaimParams) -> Result<WorkflowRecord> {
        self.post(&format!("/servers/{}/claim", segment(server)), params)
            .await
    }

    /// Starts the release workflow (Cleanup: ramdisk, erase, then Available).
    pub async fn release(&self, server: &str, params: &ReleaseParams) -> Result<WorkflowRecord> {
        self.post(&format!("/servers/{}/release", segment(server)), params)
            .await
    }

    /// Every BMC entry (without passwords).
    pub async fn bmcs(&self) -> Result<Vec<crate::store::BmcRecord>> {
        Ok(self.get::<crate::api::BmcList>("/bmcs").await?.bmcs)
    }

    /// A server's BMC entry (without its password).
    pub async fn bmc(&self, server: &str) -> Result<crate::store::BmcRecord> {
        self.get(&format!("/servers/{}/bmc", segment(server))).await
    }

    /// The server's BMC credentials (an admin's reveal, written to the audit log).
    pub async fn reveal_bmc(&self, server: &str) -> Result<crate::store::BmcSecrets> {
        self.post(
            &format!("/servers/{}/bmc/reveal", segment(server)),
            &serde_json::json!({}),
        )
        .await
    }

    /// Replaces the server's BMC login (checked with a session first unless `no_verify`).
    pub async fn set_bmc(
        &self,
        server: &str,
        login: &crate::bmc::BmcLogin,
    ) -> Result<crate::bmc::BmcLoginStored> {
        let url = self.url(&format!("/servers/{}/bmc", segment(server)));
        self.send(self.http.put(&url).json(login), &url).await
    }

    /// Sets a new BMC password, in-band when the agent is connected, else over LAN.
    pub async fn rotate_bmc(&self, server: &str) -> Result<crate::bmc::BmcRotated> {
        self.post(
            &format!("/servers/{}/bmc/rotate", segment(server)),
            &serde_json::json!({}),
        )
        .await
    }

    /// Retries the server's failed discovery or release from its failed step.
    pub async fn retry(&self, server: &str) -> Result<WorkflowRecord> {
        self.post(
            &format!("/servers/{}/retry", segment(server)),
            &serde_json::json!({}),
        )
        .await
    }

    /// A server's workflows, newest first.
    pub async fn workflows(&self, server: &str, limit: u32) -> Result<Vec<WorkflowRecord>> {
        Ok(self
            .get::<WorkflowList>(&format!(
                "/servers/{}/workflows?limit={limit}",
                segment(server)
            ))
            .await?
            .workflows)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(self.get::<TokenList>("/tokens").await?.tokens)
    }

    /// Queues a control request on a server (id or name); see [`crate::requests`].
    pub async fn control(&self, server: &str, req: &ControlRequest) -> Result<ControlQueued> {
        self.post(&format!("/servers/{}/control", segment(server)), req)
            .await
    }

    /// `set_power_state` with `parameter` (on, off, soft, cycle, reset or status).
    pub async fn power(&self, server: &str, parameter: &str) -> Result<ControlQueued> {
        self.control(server, &control_request("set_power_state", Some(parameter)))
            .await
    }

    /// `set_next_boot_device` (pxe, disk, bios, cdrom or none).
    pub async fn boot_device(
        &self,
        server: &str,
        device: &str,
        persistent: bool,
        efi: bool,
    ) -> Result<ControlQueued> {
        let req = ControlRequest {
            persistent,
            efi,
            ..control_request("set_next_boot_device", Some(device))
        };
        self.control(server, &req).await
    }

    /// Insert `url` as virtual CD and boot from it once (Redfish BMCs).
    pub async fn boot_from_media(&self, server: &str, url: &str) -> Result<ControlQueued> {
        self.control(server, &control_request("boot_from_media", Some(url)))
            .await
    }

    /// A BMC cold reset.
    pub async fn bmc_reset(&self, server: &str) -> Result<ControlQueued> {
        self.control(server, &control_request("bmc_reset", None))
            .await
    }

    /// Chassis identify: `Some(0)` turns it off, `None` is the BMC's default interval.
    pub async fn identify(&self, server: &str, seconds: Option<u8>) -> Result<ControlQueued> {
        let parameter = seconds.map(|s| s.to_string());
        self.control(server, &control_request("identify", parameter.as_deref()))
            .await
    }

    /// A server's requests, newest first, at most `limit`.
    pub async fn requests(&self, server: &str, limit: u32) -> Result<Vec<RequestRecord>> {
        let path = format!("/servers/{}/requests?limit={limit}", segment(server));
        Ok(self.get::<RequestList>(&path).await?.requests)
    }

    /// One request.
    pub async fn request(&self, id: i64) -> Result<RequestRecord> {
        self.get(&format!("/requests/{id}")).await
    }

    /// Polls a request until it is succeeded or failed, at most `timeout`.
    pub async fn wait_request(&self, id: i64, timeout: Duration) -> Result<RequestRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.request(id).await?;
            if r.state.is_final() {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Api(ErrorBody::new(
                    codes::TIMEOUT,
                    format!(
                        "request {id} is still {} after {timeout:?}",
                        r.state.as_str()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Seed 000's condition create, as its clients send it.
    pub async fn condition_server_control(
        &self,
        server: &str,
        body: &Value,
    ) -> Result<ConditionSet> {
        let path = format!("/servers/{}/condition/serverControl", segment(server));
        self.post(&path, body).await
    }

    /// Seed 000's status.
    pub async fn condition_status(&self, server: &str) -> Result<ConditionStatusAnswer> {
        self.get(&format!("/servers/{}/status", segment(server)))
            .await
    }

    /// Removes a server with its connections, tasks, logs and BMC entry (admin).
    /// `https://host:port/api/v1`, the admin token and the CA: what the console's
    /// WebSocket (`crate::console::attach`) connects with.
    pub fn console_endpoint(&self) -> (&str, &Secret, &[u8]) {
        (&self.base, &self.token, &self.ca_pem)
    }

    /// `POST /servers/{id}/console/token`.
    pub async fn create_console_token(
        &self,
        id: &str,
        ttl_s: Option<u64>,
    ) -> Result<crate::api::CreatedConsoleToken> {
        let body = crate::api::ConsoleTokenRequest { ttl_s };
        self.post(&format!("/servers/{}/console/token", segment(id)), &body)
            .await
    }

    /// `DELETE /servers/{id}/console/token`.
    pub async fn revoke_console_tokens(
        &self,
        id: &str,
    ) -> Result<crate::api::RevokedConsoleTokens> {
        let url = self.url(&format!("/servers/{}/console/token", segment(id)));
        self.send(self.http.delete(&url), &url).await
    }

    /// `GET /servers/{id}/console/log`: the bounded console log, raw bytes.
    pub async fn console_log(&self, id: &str) -> Result<Vec<u8>> {
        let url = self.url(&format!("/servers/{}/console/log", segment(id)));
        let resp = self.respond(self.http.get(&url), &url).await?;
        if !resp.status().is_success() {
            return Self::decode::<Value>(resp, &url).await.map(|_| Vec::new());
        }
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        Ok(bytes.to_vec())
    }

    pub async fn remove_server(&self, id: &str) -> Result<RemovedServer> {
        let url = self.url(&format!("/servers/{id}"));
        self.send(self.http.delete(&url), &url).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let url = self.url(&format!("/tokens/{id}"));
        let _: Value = self.send(self.http.delete(&url), &url).await?;
        Ok(())
    }
}

fn control_request(action: &str, parameter: Option<&str>) -> ControlRequest {
    ControlRequest {
        action: action.into(),
        parameter: parameter.map(str::to_owned),
        persistent: false,
        efi: false,
    }
}

/// A server id or name as one URL path segment: everything but unreserved characters
/// percent-encoded, so a name with `/`, `?`, `#` or spaces names that server and nothing else.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
