//! The WireServer and HostGAPlugin client (§4, §5, §11 of PROTOCOL.md).
//!
//! Blocking, one request at a time. Every call has a timeout and a bounded
//! response; retries follow the current agent (§4.3): connection errors and
//! 205/206/403/429/500/501/502/503/504/507 are retried with Fibonacci
//! back-off, the throttling answers (403, 429, 503) switch to a fixed short
//! delay with a larger budget, and 410 Gone is never retried here — the goal
//! state is fetched again instead. The WireServer is always reached directly,
//! never through `HttpProxy.*`.
//!
//! One file per endpoint: `wireserver.rs` (versions, the goal state and its
//! documents, health, role properties), `hostplugin.rs` (the HostGAPlugin),
//! `storage.rs` (the status blob directly to storage, artifact downloads
//! with the plugin as fallback); `retry.rs` is the retry loop every call
//! goes through, a download streaming to a file included. This file holds
//! the client and its error.

mod hostplugin;
mod retry;
mod storage;
mod wireserver;

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use crate::clock::{Clock, SystemClock};
use crate::http::HttpError;
use crate::wire::crypto::{CryptoError, Openssl, PendingTransport, Transport, TransportCert};
use crate::wire::docs::LbProbePorts;
use crate::wire::endpoint::Endpoint;
use crate::xml::DocError;

pub use hostplugin::HOSTPLUGIN_API_VERSION;
pub use retry::RetryPolicy;
pub use storage::STORAGE_API_VERSION;
pub use wireserver::{report_target, FullGoalState, WIRE_PROTOCOL_VERSION};

/// Fabric documents are kilobytes; a few MiB means something is wrong.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

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
    /// A download sent (or announced) more than `limit` bytes.
    TooLarge {
        url: String,
        limit: u64,
    },
    /// A goal state lacks something this call needs.
    Missing(String),
    Crypto(CryptoError),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The goal state has Certificates, and the transport certificate they
    /// need is still being generated: a client told not to wait for it
    /// ([`WireClient::set_wait_for_transport`]) says so instead.
    TransportPending,
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
            WireError::TooLarge { url, limit } => write!(
                f,
                "{}: larger than {limit} bytes; refused",
                crate::redact::redact_url(url)
            ),
            WireError::Missing(what) => f.write_str(what),
            WireError::Crypto(e) => e.fmt(f),
            WireError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            WireError::TransportPending => {
                f.write_str("the transport certificate is still being generated")
            }
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

/// When the parts of the last goal-state fetch were done, on the client's
/// clock (for the daemon's timeline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchTimes {
    /// Every document but the Certificates was in hand.
    pub documents: Option<Instant>,
    /// From the Certificates request (the transport certificate in hand)
    /// to the certificates decrypted.
    pub certificates: Option<(Instant, Instant)>,
    /// A transport certificate being generated was collected.
    pub transport_ready: Option<Instant>,
}

/// The agent's connection to the fabric.
pub struct WireClient {
    endpoint: Endpoint,
    lib_dir: PathBuf,
    openssl: Openssl,
    options: ClientOptions,
    transport: Option<TransportCert>,
    /// Being generated in the background since the daemon started: waited
    /// for when the Certificates request needs it.
    pending_transport: Option<PendingTransport>,
    /// False: the Certificates request does not wait for it
    /// ([`WireError::TransportPending`]).
    wait_for_transport: bool,
    /// A forced fetch that stopped at the Certificates for the transport
    /// certificate (`wait_for_transport` false), to be finished.
    unfinished: Option<Box<wireserver::Unfinished>>,
    times: FetchTimes,
    /// From the latest goal state, for HostGAPlugin headers.
    container_id: Option<String>,
    role_config_name: Option<String>,
    /// The latest goal state's `LBProbePorts`: `None` before the first.
    lb_probe_ports: Option<LbProbePorts>,
    /// The latest goal-state response and what it parsed to: the same
    /// bytes, every 6 s for the VM's life, are not parsed again.
    last_goal_state: Option<(Vec<u8>, crate::wire::docs::GoalState)>,
    /// `last_goal_state`'s incarnation is the one `<lib>/Incarnation` holds
    /// (the client is its only writer while the daemon runs).
    last_goal_state_saved: bool,
    /// Waits between retries; a virtual clock in the daemon's tests.
    clock: Rc<dyn Clock>,
    user_agent: String,
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
            pending_transport: None,
            wait_for_transport: true,
            unfinished: None,
            times: FetchTimes::default(),
            container_id: None,
            role_config_name: None,
            lb_probe_ports: None,
            last_goal_state: None,
            last_goal_state_saved: false,
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

    /// Uses `t` as the transport certificate (one being generated is
    /// waited for when first needed) instead of making one on first use.
    pub fn with_transport(mut self, t: Transport) -> Self {
        match t {
            Transport::Ready(c) => self.transport = Some(c),
            Transport::Pending(p) => self.pending_transport = Some(p),
        }
        self
    }

    /// Whether a goal-state fetch waits for the transport certificate being
    /// generated (the default) or stops with [`WireError::TransportPending`]
    /// while it is, having saved nothing, to be finished by
    /// [`finish_goal_state`](Self::finish_goal_state): for the daemon, which
    /// has other work (the provisioning media) to look after meanwhile.
    pub fn set_wait_for_transport(&mut self, wait: bool) {
        self.wait_for_transport = wait;
    }

    /// Gives back the transport certificate, in hand or being generated, for
    /// the next client (a failed connection's client is dropped).
    pub fn take_transport(&mut self) -> Option<Transport> {
        match (self.transport.take(), self.pending_transport.take()) {
            (Some(c), _) => Some(Transport::Ready(c)),
            (None, Some(p)) => Some(Transport::Pending(p)),
            (None, None) => None,
        }
    }

    /// The goal state has no Certificates: the transport certificate being
    /// generated since Boot, in case it had, is not wanted. Its `openssl`
    /// is stopped, so the RSA prime search takes no CPU from the way to
    /// Ready, and a VM that never gets Certificates (the usual one, its SSH
    /// key inline) never pays for it. A later goal state with Certificates
    /// has one made then, as waagent makes one on its first need.
    pub fn drop_pending_transport(&mut self) {
        if self.pending_transport.take().is_some() {
            log::debug!("no Certificates in the goal state: the transport key is not made now");
        }
    }

    /// Collects the transport certificate being generated if it has
    /// finished, without waiting; a failed generation is logged and the
    /// next need makes one again. True while it is still running.
    pub fn poll_transport(&mut self) -> bool {
        let Some(p) = self.pending_transport.as_mut() else {
            return false;
        };
        let now = self.clock.now();
        match p.poll(now) {
            None => return true,
            Some(Ok(t)) => {
                self.transport = Some(t);
                self.times.transport_ready = Some(now);
            }
            Some(Err(e)) => log::warn!("{e}"),
        }
        self.pending_transport = None;
        false
    }

    /// The `LBProbePorts` of the latest goal state received (every poll
    /// asks for one, new incarnation or not); `None` before the first.
    pub fn lb_probe_ports(&self) -> Option<&LbProbePorts> {
        self.lb_probe_ports.as_ref()
    }

    /// When the last goal-state fetch's parts were done.
    pub fn fetch_times(&self) -> FetchTimes {
        self.times
    }
}
