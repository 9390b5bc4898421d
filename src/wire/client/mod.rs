//! The WireServer and HostGAPlugin client (§4, §5, §11 of the protocol notes).
//!
//! Blocking, one request at a time. Every call has a timeout and a bounded
//! response; retries follow the current agent (§4.3): connection errors and
//! 205/206/403/429/500/501/502/503/504/507 are retried with Fibonacci
//! back-off, the throttling answers (403, 429, 503) switch to a fixed short
//! delay with a larger budget, and 410 Gone is never retried here — the goal
//! state is fetched again instead. The WireServer is always reached directly,
//! never through `HttpProxy.*`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::fsutil;
use crate::http::{self, HttpError, Request, Response};
use crate::wire::crypto::{self, Certificate, CryptoError, Openssl, TransportCert};
use crate::wire::docs::{
    CertificatesDoc, ExtensionsConfig, GoalState, HostingEnvironmentConfig, SharedConfig,
    StatusBlobType, StatusUploadBlob, Versions,
};
use crate::wire::endpoint::Endpoint;
use crate::wire::reports::{self, Health, ReportTarget};
use crate::xml::DocError;

/// The wire protocol version this agent speaks.
pub const WIRE_PROTOCOL_VERSION: &str = "2012-11-30";
/// The HostGAPlugin API version.
pub const HOSTPLUGIN_API_VERSION: &str = "2015-09-01";
/// Storage's API version, for requests the HostGAPlugin replays.
pub const STORAGE_API_VERSION: &str = "2014-02-14";
/// The agent name the fabric knows; our own name and version go in User-Agent.
const AGENT_NAME_HEADER: &str = "WALinuxAgent";
/// Fabric documents are kilobytes; a few MiB means something is wrong.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// 410 on a sub-document: fetch the goal state again, at most this often.
const GONE_ROUNDS: u32 = 3;
/// A goal state without a RoleInstance is re-requested this often (§4.3).
const NO_ROLE_INSTANCE_TRIES: u32 = 6;

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for errors that are not throttling.
    pub attempts: u32,
    /// Back-off unit: the n-th retry waits `delay × Fibonacci(n + 1)`.
    pub delay: Duration,
    /// Attempts once the server has throttled us (403, 429, 503).
    pub throttled_attempts: u32,
    /// Fixed wait between throttled attempts.
    pub throttled_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub deadline: Duration,
    /// Wait between goal-state requests that lack a RoleInstance.
    pub no_role_instance_delay: Duration,
}

impl RetryPolicy {
    /// WireServer and HostGAPlugin calls: 6 attempts, 2+3+5+8+13 s apart;
    /// throttled: 25 attempts 1 s apart; nothing starts after 5 minutes.
    pub fn fabric() -> Self {
        RetryPolicy {
            attempts: 6,
            delay: Duration::from_secs(1),
            throttled_attempts: 25,
            throttled_delay: Duration::from_secs(1),
            deadline: Duration::from_secs(300),
            no_role_instance_delay: Duration::from_millis(500),
        }
    }

    /// Health reports: the current agent's 30 attempts, 15 s unit.
    pub fn health() -> Self {
        RetryPolicy {
            attempts: 30,
            delay: Duration::from_secs(15),
            deadline: Duration::from_secs(1800),
            ..Self::fabric()
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let (mut a, mut b) = (1u32, 1u32);
        for _ in 0..=retry {
            (a, b) = (b, a.saturating_add(b));
        }
        self.delay.saturating_mul(a)
    }
}

/// Why a fabric call failed.
#[derive(Debug)]
pub enum WireError {
    /// Could not talk to the server at all (refused, reset, timed out, too big).
    Transport(HttpError),
    /// The server answered with a status that is not success.
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// 410 Gone: the goal state moved on; fetch it again.
    Gone {
        url: String,
    },
    /// Retries used up; `last` is the final failure.
    Exhausted {
        url: String,
        attempts: u32,
        last: Box<WireError>,
    },
    /// The server does not speak our protocol version.
    UnsupportedVersion {
        offered: Vec<String>,
    },
    /// A document did not parse.
    Document(DocError),
    /// A goal state lacks something this call needs.
    Missing(String),
    Crypto(CryptoError),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl WireError {
    fn is_gone(&self) -> bool {
        matches!(self, WireError::Gone { .. })
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Transport(e) => write!(f, "{}", crate::redact::redact_url(&e.to_string())),
            WireError::Status { url, status, body } => {
                write!(f, "{}: HTTP {status}", crate::redact::redact_url(url))?;
                let body = body.trim();
                if !body.is_empty() {
                    let short: String = body.chars().take(200).collect();
                    write!(f, ": {short}")?;
                }
                Ok(())
            }
            WireError::Gone { url } => write!(
                f,
                "{}: HTTP 410 (goal state is stale)",
                crate::redact::redact_url(url)
            ),
            WireError::Exhausted { attempts, last, .. } => {
                write!(f, "{last} (gave up after {attempts} attempts)")
            }
            WireError::UnsupportedVersion { offered } => write!(
                f,
                "the WireServer does not support protocol {WIRE_PROTOCOL_VERSION} (it offers {})",
                offered.join(", ")
            ),
            WireError::Document(e) => e.fmt(f),
            WireError::Missing(what) => f.write_str(what),
            WireError::Crypto(e) => e.fmt(f),
            WireError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for WireError {}

impl From<DocError> for WireError {
    fn from(e: DocError) -> Self {
        WireError::Document(e)
    }
}

impl From<CryptoError> for WireError {
    fn from(e: CryptoError) -> Self {
        WireError::Crypto(e)
    }
}

/// Statuses worth another attempt (§4.3).
fn retryable(status: u16) -> bool {
    matches!(
        status,
        205 | 206 | 403 | 429 | 500 | 501 | 502 | 503 | 504 | 507
    )
}

fn throttled(status: u16) -> bool {
    matches!(status, 403 | 429 | 503)
}

/// Everything one incarnation of the goal state holds.
#[derive(Debug, Clone)]
pub struct FullGoalState {
    pub goal_state: GoalState,
    pub hosting_env: HostingEnvironmentConfig,
    pub shared_config: SharedConfig,
    /// Certificates decrypted into Lib.Dir (`{THUMBPRINT}.crt/.prv`).
    pub certificates: Vec<Certificate>,
    pub extensions_config: Option<ExtensionsConfig>,
}

impl FullGoalState {
    /// What a health report about this goal state names.
    pub fn report_target(&self) -> Result<ReportTarget, WireError> {
        report_target(&self.goal_state)
    }
}

/// Incarnation, container and instance of a goal state.
pub fn report_target(gs: &GoalState) -> Result<ReportTarget, WireError> {
    let instance = gs
        .role_instance
        .as_ref()
        .ok_or_else(|| WireError::Missing("GoalState: no RoleInstance to report on".into()))?;
    Ok(ReportTarget {
        incarnation: gs.incarnation.clone(),
        container_id: gs.container_id.clone(),
        instance_id: instance.instance_id.clone(),
    })
}

/// Settings of a [`WireClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request socket timeout, in seconds (waagent: 10).
    pub timeout_secs: u64,
    pub retry: RetryPolicy,
    pub health_retry: RetryPolicy,
    /// `http://host:port` for storage traffic (`HttpProxy.Host/Port`, or the
    /// environment's proxy); never used for the WireServer or HostGAPlugin.
    pub storage_proxy: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout_secs: 10,
            retry: RetryPolicy::fabric(),
            health_retry: RetryPolicy::health(),
            storage_proxy: None,
        }
    }
}

/// The agent's connection to the fabric.
pub struct WireClient {
    endpoint: Endpoint,
    lib_dir: PathBuf,
    openssl: Openssl,
    options: ClientOptions,
    transport: Option<TransportCert>,
    /// From the latest goal state, for HostGAPlugin headers.
    container_id: Option<String>,
    role_config_name: Option<String>,
    /// Waits between retries; a virtual clock in the daemon's tests.
    clock: Rc<dyn Clock>,
    user_agent: String,
}

/// A request as the retry loop sees it.
struct Call<'a> {
    method: &'a str,
    url: &'a str,
    headers: Vec<(&'a str, String)>,
    body: Option<&'a [u8]>,
    /// Statuses that count as success.
    ok: &'a [u16],
    retry: &'a RetryPolicy,
    /// Extra statuses retried for this call (HostGAPlugin artifact warm-up: 400).
    also_retry: &'a [u16],
    /// Storage calls only: `HttpProxy.*`.
    proxy: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// The common case: no headers or body, 200 is success, the retry
    /// policy given, no extra retries, no proxy.
    fn new(method: &'a str, url: &'a str, retry: &'a RetryPolicy) -> Self {
        Call {
            method,
            url,
            headers: Vec::new(),
            body: None,
            ok: &[200],
            retry,
            also_retry: &[],
            proxy: None,
        }
    }
}

impl WireClient {
    pub fn new(
        endpoint: Endpoint,
        lib_dir: &Path,
        openssl: Openssl,
        options: ClientOptions,
    ) -> Self {
        WireClient {
            endpoint,
            lib_dir: lib_dir.to_path_buf(),
            openssl,
            options,
            transport: None,
            container_id: None,
            role_config_name: None,
            clock: Rc::new(SystemClock),
            user_agent: format!("{}/{}", crate::AGENT_NAME, crate::VERSION),
        }
    }

    /// Waits on `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Rc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One logical request with retries. Returns the successful response.
    fn execute(&self, call: &Call<'_>) -> Result<Response, WireError> {
        let started = self.clock.now();
        let mut attempts = 0u32;
        let mut budget = call.retry.attempts.max(1);
        let mut throttled_mode = false;
        let shown = crate::redact::redact_url(call.url);
        loop {
            attempts += 1;
            let headers: Vec<(&str, &str)> = call
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain([
                    ("User-Agent", self.user_agent.as_str()),
                    ("Connection", "close"),
                ])
                .collect();
            let result = http::send(&Request {
                method: call.method,
                url: call.url,
                headers: &headers,
                body: call.body,
                timeout_secs: self.options.timeout_secs,
                max_body: MAX_DOCUMENT_BYTES,
                proxy: call.proxy,
            });
            let failure = match result {
                Ok(r) if call.ok.contains(&r.status) => return Ok(r),
                Ok(r) if r.status == 410 => {
                    return Err(WireError::Gone {
                        url: call.url.to_string(),
                    })
                }
                Ok(r) => {
                    let status = r.status;
                    let err = WireError::Status {
                        url: call.url.to_string(),
                        status,
                        body: String::from_utf8_lossy(&r.body).into_owned(),
                    };
                    if !retryable(status) && !call.also_retry.contains(&status) {
                        return Err(err);
                    }
                    if throttled(status) && !throttled_mode {
                        throttled_mode = true;
                        budget = budget.max(call.retry.throttled_attempts);
                    }
                    err
                }
                Err(e) => WireError::Transport(e),
            };
            let wait = if throttled_mode {
                call.retry.throttled_delay
            } else {
                call.retry.backoff(attempts)
            };
            let spent = self.clock.now().saturating_duration_since(started);
            let out_of_budget = attempts >= budget || spent + wait > call.retry.deadline;
            if !out_of_budget {
                // Debug only: the caller logs the outcome once, so a fabric
                // that is down for minutes does not flood the log.
                log::debug!(
                    "{} {shown}: {failure}; retrying in {wait:?} (attempt {attempts} of {budget})",
                    call.method
                );
            }
            // A stop request during the wait ends the retries too.
            if out_of_budget || !self.clock.sleep(wait) {
                return Err(WireError::Exhausted {
                    url: call.url.to_string(),
                    attempts,
                    last: Box::new(failure),
                });
            }
        }
    }

    fn wire_get(
        &self,
        url: &str,
        extra: Vec<(&'static str, String)>,
    ) -> Result<Response, WireError> {
        let mut headers = vec![
            ("x-ms-agent-name", AGENT_NAME_HEADER.to_string()),
            ("x-ms-version", WIRE_PROTOCOL_VERSION.to_string()),
        ];
        headers.extend(extra);
        self.execute(&Call {
            headers,
            ..Call::new("GET", url, &self.options.retry)
        })
    }

    fn wire_post(
        &self,
        url: &str,
        body: &str,
        ok: &[u16],
        retry: &RetryPolicy,
    ) -> Result<Response, WireError> {
        self.execute(&Call {
            headers: vec![
                ("x-ms-agent-name", AGENT_NAME_HEADER.to_string()),
                ("x-ms-version", WIRE_PROTOCOL_VERSION.to_string()),
                ("Content-Type", "text/xml;charset=utf-8".to_string()),
            ],
            body: Some(body.as_bytes()),
            ok,
            ..Call::new("POST", url, retry)
        })
    }

    /// `GET /?comp=versions`; fails unless 2012-11-30 is offered.
    pub fn versions(&self) -> Result<Versions, WireError> {
        let url = format!("{}/?comp=versions", self.endpoint.wire_base());
        let r = self.execute(&Call::new("GET", &url, &self.options.retry))?;
        let v = Versions::parse(&String::from_utf8_lossy(&r.body))?;
        if !v.supports(WIRE_PROTOCOL_VERSION) {
            let mut offered = v.preferred.clone();
            offered.extend(v.supported.iter().cloned());
            return Err(WireError::UnsupportedVersion { offered });
        }
        if !v.preferred.iter().any(|p| p == WIRE_PROTOCOL_VERSION) {
            // Azure prefers a newer version and supports ours: the normal case.
            log::info!(
                "WireServer prefers {:?}; using the supported {WIRE_PROTOCOL_VERSION}",
                v.preferred
            );
        }
        Ok(v)
    }

    /// `GET /machine/?comp=goalstate` (note the slash before `?`). A goal
    /// state without a RoleInstance is asked for again a few times, as the
    /// fabric sends one while the VM is still being set up.
    pub fn goal_state(&mut self) -> Result<GoalState, WireError> {
        self.goal_state_with_text().map(|(gs, _)| gs)
    }

    /// The goal state and its text as received (saved as `GoalState.{n}.xml`).
    fn goal_state_with_text(&mut self) -> Result<(GoalState, String), WireError> {
        let url = format!("{}/machine/?comp=goalstate", self.endpoint.wire_base());
        let mut tries = 0;
        loop {
            tries += 1;
            let r = self.wire_get(&url, Vec::new())?;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let gs = GoalState::parse(&text)?;
            // Container id and config name can change without a new
            // incarnation (live migration): take them from every response.
            self.container_id = Some(gs.container_id.clone());
            self.role_config_name = gs
                .role_instance
                .as_ref()
                .and_then(|r| r.config_name.clone());
            if gs.role_instance.is_some() || tries >= NO_ROLE_INSTANCE_TRIES {
                return Ok((gs, text));
            }
            if !self.clock.sleep(self.options.retry.no_role_instance_delay) {
                return Ok((gs, text));
            }
        }
    }

    /// The last incarnation fully processed, from `<lib>/Incarnation`.
    pub fn saved_incarnation(&self) -> Option<String> {
        std::fs::read_to_string(self.lib_dir.join("Incarnation"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Fetches the goal state and, when its incarnation is new (or `forced`),
    /// every sub-document; decrypts the certificates; saves the documents
    /// under Lib.Dir with waagent's names. `None`: nothing changed.
    ///
    /// Everything is fetched and parsed before anything is written, and
    /// `Incarnation` is written last, so a failure halfway leaves the
    /// previous incarnation's files whole.
    pub fn update_goal_state(&mut self, forced: bool) -> Result<Option<FullGoalState>, WireError> {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let (gs, gs_xml) = self.goal_state_with_text()?;
            if !forced && self.saved_incarnation().as_deref() == Some(gs.incarnation.as_str()) {
                return Ok(None);
            }
            match self.fetch_documents(gs, &gs_xml) {
                Err(e) if e.is_gone() && rounds < GONE_ROUNDS => {
                    log::info!("{e}; fetching the goal state again");
                    continue;
                }
                other => return other.map(Some),
            }
        }
    }

    fn fetch_documents(&mut self, gs: GoalState, gs_xml: &str) -> Result<FullGoalState, WireError> {
        let ri = gs.role_instance.clone().ok_or_else(|| {
            WireError::Missing("GoalState: no RoleInstance in the goal state".into())
        })?;
        let need = |u: &Option<String>, what: &str| {
            u.clone().ok_or_else(|| {
                WireError::Missing(format!("GoalState: no {what} URL in the goal state"))
            })
        };
        let hosting_url = need(
            &ri.hosting_environment_config_url,
            "HostingEnvironmentConfig",
        )?;
        let shared_url = need(&ri.shared_config_url, "SharedConfig")?;

        let hosting_xml = self.get_text(&hosting_url)?;
        let hosting_env = HostingEnvironmentConfig::parse(&hosting_xml)?;
        let shared_xml = self.get_text(&shared_url)?;
        let shared_config = SharedConfig::parse(&shared_xml)?;
        let certs_xml = match &ri.certificates_url {
            Some(u) => Some(self.get_certificates_text(u)?),
            None => None,
        };
        let (ext_xml, extensions_config) = match &ri.extensions_config_url {
            Some(u) => {
                let x = self.get_text(u)?;
                let parsed = ExtensionsConfig::parse(&x)?;
                (Some(x), Some(parsed))
            }
            None => (None, None),
        };
        let certificates = match &certs_xml {
            Some(x) => self.decrypt(x)?,
            None => Vec::new(),
        };

        let inc = &gs.incarnation;
        self.save(&format!("GoalState.{inc}.xml"), gs_xml)?;
        self.save("HostingEnvironmentConfig.xml", &hosting_xml)?;
        self.save("SharedConfig.xml", &shared_xml)?;
        if let Some(x) = &certs_xml {
            self.save("Certificates.xml", x)?;
        }
        if let Some(x) = &ext_xml {
            self.save(&format!("ExtensionsConfig.{inc}.xml"), x)?;
        }
        self.save("Incarnation", inc)?;
        Ok(FullGoalState {
            goal_state: gs,
            hosting_env,
            shared_config,
            certificates,
            extensions_config,
        })
    }

    fn get_text(&self, url: &str) -> Result<String, WireError> {
        let r = self.wire_get(url, Vec::new())?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The transport certificate, made on first use.
    fn transport(&mut self) -> Result<&TransportCert, WireError> {
        if self.transport.is_none() {
            self.transport = Some(crypto::ensure_transport_cert(&self.openssl, &self.lib_dir)?);
        }
        self.transport
            .as_ref()
            .ok_or_else(|| WireError::Missing("transport certificate".into()))
    }

    /// `GET {Certificates}` with the transport certificate. AES128 is asked
    /// for first, as the current agent does; a server that refuses it gets
    /// the DES_EDE3 request 2.2.x sends.
    fn get_certificates_text(&mut self, url: &str) -> Result<String, WireError> {
        let header = self.transport()?.header_value();
        let mut last = None;
        for cipher in ["AES128_CBC", "DES_EDE3_CBC"] {
            let extra = vec![
                ("x-ms-cipher-name", cipher.to_string()),
                ("x-ms-guest-agent-public-x509-cert", header.clone()),
            ];
            match self.wire_get(url, extra) {
                Ok(r) => return Ok(String::from_utf8_lossy(&r.body).into_owned()),
                Err(
                    e @ WireError::Status {
                        status: 400..=499, ..
                    },
                ) => {
                    log::warn!("Certificates with {cipher}: {e}");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| WireError::Missing("Certificates".into())))
    }

    fn decrypt(&mut self, certs_xml: &str) -> Result<Vec<Certificate>, WireError> {
        let doc = CertificatesDoc::parse(certs_xml)?;
        if !doc.is_pfx_package() {
            log::warn!(
                "Certificates: format {:?} is not a PFX package; skipped",
                doc.format
            );
            return Ok(Vec::new());
        }
        let Some(data) = doc.data.filter(|d| !d.is_empty()) else {
            return Ok(Vec::new());
        };
        let transport = self.transport()?.clone();
        Ok(crypto::decrypt_certificates(
            &self.openssl,
            &self.lib_dir,
            &transport,
            &data,
        )?)
    }

    fn save(&self, name: &str, text: &str) -> Result<(), WireError> {
        let path = self.lib_dir.join(name);
        // 0600: ExtensionsConfig carries SAS tokens and protected settings.
        fsutil::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| WireError::Io { path, source })
    }

    /// `POST /machine?comp=health`.
    pub fn report_health(&self, target: &ReportTarget, health: &Health) -> Result<(), WireError> {
        let url = format!("{}/machine?comp=health", self.endpoint.wire_base());
        let body = reports::health_xml(target, health);
        self.wire_post(&url, &body, &[200, 201, 202], &self.options.health_retry)
            .map(drop)
    }

    /// `POST /machine?comp=roleProperties`; the fabric answers 202.
    pub fn report_role_properties(
        &self,
        target: &ReportTarget,
        thumbprint: &str,
    ) -> Result<(), WireError> {
        let url = format!("{}/machine?comp=roleProperties", self.endpoint.wire_base());
        let body = reports::role_properties_xml(target, thumbprint);
        self.wire_post(&url, &body, &[202], &self.options.retry)
            .map(drop)
    }

    // ----- HostGAPlugin -----

    fn plugin_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("x-ms-version", HOSTPLUGIN_API_VERSION.to_string())];
        if let Some(c) = &self.container_id {
            h.push(("x-ms-containerid", c.clone()));
        }
        if let Some(n) = &self.role_config_name {
            h.push(("x-ms-host-config-name", n.clone()));
        }
        h
    }

    /// `GET /health` of the HostGAPlugin: 200 means healthy. Not retried —
    /// the caller polls it.
    pub fn hostplugin_health(&self) -> Result<bool, WireError> {
        let url = format!("{}/health", self.endpoint.hostplugin_base());
        let once = RetryPolicy {
            attempts: 1,
            ..self.options.retry.clone()
        };
        match self.execute(&Call::new("GET", &url, &once)) {
            Ok(_) => Ok(true),
            Err(WireError::Status { .. }) | Err(WireError::Exhausted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /versions`: true when the plugin speaks 2015-09-01.
    pub fn hostplugin_supported(&self) -> Result<bool, WireError> {
        let url = format!("{}/versions", self.endpoint.hostplugin_base());
        let r = self.execute(&Call {
            headers: self.plugin_headers(),
            ..Call::new("GET", &url, &self.options.retry)
        })?;
        Ok(String::from_utf8_lossy(&r.body).contains(HOSTPLUGIN_API_VERSION))
    }

    /// A plugin call that refreshes the container id and config name from a
    /// new goal state and tries once more when the plugin says they are
    /// stale (410, or 400 naming InvalidContainerConfiguration).
    fn plugin_call(
        &mut self,
        method: &str,
        url: &str,
        extra: &[(&'static str, String)],
        body: Option<&[u8]>,
        also_retry: &[u16],
    ) -> Result<Response, WireError> {
        for round in 0..2 {
            let mut headers = self.plugin_headers();
            headers.extend(extra.iter().cloned());
            let result = self.execute(&Call {
                headers,
                body,
                ok: &[200, 201],
                also_retry,
                ..Call::new(method, url, &self.options.retry)
            });
            let stale = match &result {
                Err(WireError::Gone { .. }) => true,
                Err(WireError::Status {
                    status: 400, body, ..
                }) => body.contains("InvalidContainerConfiguration"),
                Err(WireError::Exhausted { last, .. }) => {
                    matches!(&**last, WireError::Status { status: 400, body, .. } if body.contains("InvalidContainerConfiguration"))
                }
                _ => false,
            };
            if stale && round == 0 {
                log::info!(
                    "HostGAPlugin: container configuration is stale; refreshing the goal state"
                );
                self.goal_state()?;
                continue;
            }
            return result;
        }
        Err(WireError::Missing("HostGAPlugin: no answer".into()))
    }

    /// `GET /extensionArtifact`: a storage artifact through the host.
    pub fn extension_artifact(
        &mut self,
        artifact_url: &str,
        manifest_url: Option<&str>,
    ) -> Result<Vec<u8>, WireError> {
        let url = format!("{}/extensionArtifact", self.endpoint.hostplugin_base());
        let mut extra = vec![("x-ms-artifact-location", artifact_url.to_string())];
        if let Some(m) = manifest_url {
            extra.push(("x-ms-artifact-manifest-location", m.to_string()));
        }
        // The plugin answers 400 while its cache warms up (§4.3).
        Ok(self.plugin_call("GET", &url, &extra, None, &[400])?.body)
    }

    /// Uploads the status blob (§12): through the HostGAPlugin first, as the
    /// current agent does (it works where NSGs block storage), then directly
    /// to storage. A page blob goes directly.
    pub fn upload_status(
        &mut self,
        blob: &StatusUploadBlob,
        content: &[u8],
    ) -> Result<(), WireError> {
        if blob.blob_type == StatusBlobType::BlockBlob {
            match self.put_status(&blob.url, content) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::info!("status through the HostGAPlugin failed ({e}); uploading directly")
                }
            }
        }
        self.put_blob_directly(blob, content)
    }

    /// Storage requests carry its API version and a date (in waagent's
    /// format, which SAS authentication accepts).
    fn storage_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-ms-version", STORAGE_API_VERSION.to_string()),
            (
                "x-ms-date",
                crate::utc::timestamp(std::time::SystemTime::now()),
            ),
        ]
    }

    fn put_blob_directly(&self, blob: &StatusUploadBlob, content: &[u8]) -> Result<(), WireError> {
        let put = |url: &str, extra: Vec<(&'static str, String)>, body: &[u8]| {
            let mut headers = self.storage_headers();
            headers.extend(extra);
            self.execute(&Call {
                headers,
                body: Some(body),
                ok: &[201],
                proxy: self.options.storage_proxy.as_deref(),
                ..Call::new("PUT", url, &self.options.retry)
            })
            .map(drop)
        };
        match blob.blob_type {
            StatusBlobType::BlockBlob => put(
                &blob.url,
                vec![("x-ms-blob-type", "BlockBlob".into())],
                content,
            ),
            StatusBlobType::PageBlob => {
                // Pages are 512 bytes: create the blob at the padded size,
                // then write the content zero-padded, at most 4 MiB a time.
                let padded = content.len().div_ceil(512) * 512;
                put(
                    &blob.url,
                    vec![
                        ("x-ms-blob-type", "PageBlob".into()),
                        ("x-ms-blob-content-length", padded.to_string()),
                    ],
                    &[],
                )?;
                let sep = if blob.url.contains('?') { '&' } else { '?' };
                let page_url = format!("{}{sep}comp=page", blob.url);
                for (i, chunk) in content.chunks(4 << 20).enumerate() {
                    let start = i * (4 << 20);
                    let mut body = chunk.to_vec();
                    body.resize(chunk.len().div_ceil(512) * 512, 0);
                    let range = format!("bytes={start}-{}", start + body.len() - 1);
                    put(
                        &page_url,
                        vec![("x-ms-range", range), ("x-ms-page-write", "update".into())],
                        &body,
                    )?;
                }
                Ok(())
            }
        }
    }

    /// `PUT /status`: upload the status blob (a block blob) through the host.
    pub fn put_status(&mut self, blob_url: &str, content: &[u8]) -> Result<(), WireError> {
        let url = format!("{}/status", self.endpoint.hostplugin_base());
        let envelope = reports::status_envelope(
            blob_url,
            &[
                ("x-ms-version", STORAGE_API_VERSION),
                ("x-ms-blob-type", "BlockBlob"),
            ],
            Some(content),
        );
        let extra = [("Content-Type", "application/json".to_string())];
        self.plugin_call("PUT", &url, &extra, Some(envelope.as_bytes()), &[])
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fibonacci_backoff() {
        let p = RetryPolicy::fabric();
        let waits: Vec<u64> = (1..6).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 3, 5, 8, 13]);
        assert_eq!(RetryPolicy::health().backoff(1).as_secs(), 30);
    }

    #[test]
    fn retry_classes() {
        for s in [205, 206, 403, 429, 500, 501, 502, 503, 504, 507] {
            assert!(retryable(s), "{s}");
        }
        for s in [200, 400, 404, 410] {
            assert!(!retryable(s), "{s}");
        }
        assert!(throttled(429) && throttled(403) && throttled(503) && !throttled(500));
    }
}
