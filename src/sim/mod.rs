//! The Azure fabric simulator: WireServer, HostGAPlugin and a blob store on
//! loopback (or on 168.63.129.16 inside a sandbox's network namespace).
//!
//! It is test support (feature `simulator`), also run by the demo and the
//! benchmarks through the `fabric-sim` binary. It serves one consistent goal
//! state from templates, encrypts the Certificates document at request time
//! to the transport certificate the agent sent, offers extension handlers
//! with their manifests and zip packages (see [`handlers`]), records every
//! request, parses the health reports and status uploads it receives, can
//! move to a new incarnation, and misbehaves on request (see [`Fault`]).
//! Test support only, never in `waagent`; one file for the fabric's state
//! and its routes, which read together, with the HTTP server, certificates
//! and the handlers' documents beside it.

pub mod certs;
pub mod handlers;
pub mod server;
pub mod skips;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine;

use crate::wire::endpoint::Endpoint;
use certs::TenantCert;
pub use handlers::{HandlersFile, SimExtension, SimHandler, SimPackage};
use server::{Handler, HttpRequest, Reply, Server};

/// Which of the simulator's servers a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// WireServer and blob store (port 80 in a VM).
    Wire,
    /// HostGAPlugin (port 32526).
    HostPlugin,
    /// Instance Metadata Service (169.254.169.254:80).
    Imds,
}

/// A request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub service: Service,
    pub request: HttpRequest,
    /// The status it was answered with (0: connection reset).
    pub status: u16,
    /// The injected fault it got, if any.
    pub fault: Option<Fault>,
    /// When the simulator had read it (wall clock, for benchmarks that
    /// compare it with a process's start).
    pub at: SystemTime,
}

/// A health report as the fabric understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
    /// `Ready` or `NotReady`.
    pub state: String,
    pub sub_status: Option<String>,
    pub description: Option<String>,
    /// When the simulator received it.
    pub at: SystemTime,
}

/// A status blob upload, directly or through the HostGAPlugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpload {
    pub via: Service,
    pub blob_url: String,
    pub content: Vec<u8>,
    /// When the simulator received it.
    pub at: SystemTime,
}

/// Misbehaviour for the next request(s) whose path and query contain a
/// pattern; queued faults are used up one request each, in order (after
/// the requests [`FabricSim::inject_after`] lets through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Reset the connection without answering.
    Reset,
    /// Answer normally but send only half of the body.
    Truncate,
    /// Answer 200 with the document cut in half (well-formed HTTP, broken XML).
    Malformed,
    /// Answer 200 with a body of this many bytes.
    Oversized(usize),
    /// Answer normally, with the first `.0` in the body replaced by `.1`
    /// (a hostile or broken value in an otherwise good document).
    Replace(String, String),
}

/// The goal state the simulator serves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub incarnation: u64,
    pub container_id: String,
    pub instance_id: String,
    pub role_config_name: String,
    pub vm_name: String,
    pub deployment_name: String,
    pub role_name: String,
    /// Certificates in the Certificates document (none: no Certificates URL).
    pub tenant_certs: Vec<TenantCert>,
    /// Serve an ExtensionsConfig at all (its status blob, and `handlers`);
    /// non-empty `handlers` imply it.
    pub extensions_config: bool,
    /// The extension handlers ExtensionsConfig names, whose manifests and
    /// packages the simulator's storage serves ([`handlers`]).
    pub handlers: Vec<SimHandler>,
    /// Refuse `x-ms-cipher-name: AES128_CBC` with 400, as an older fabric might.
    pub refuse_aes128: bool,
    /// `compute.publicKeys` served by IMDS: `(keyData, path)`.
    pub imds_public_keys: Vec<(String, String)>,
    /// `Machine/LBProbePorts/Port` values, as text (a test may send one
    /// that is not a port); none: no `LBProbePorts`.
    pub lb_probe_ports: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            incarnation: 1,
            container_id: "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2".into(),
            instance_id: "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0".into(),
            role_config_name: "b61f93d0.0.b61f93d0._canary.1.xml".into(),
            vm_name: "simvm".into(),
            deployment_name: "db00a7755a5e4e8a8fe4b19bc3b330c3".into(),
            role_name: "MachineRole".into(),
            tenant_certs: Vec::new(),
            extensions_config: true,
            handlers: Vec::new(),
            refuse_aes128: false,
            imds_public_keys: Vec::new(),
            lb_probe_ports: Vec::new(),
        }
    }
}

/// Faults queued for requests matching `pattern`, after `skip` of them
/// have been answered normally.
struct Injection {
    pattern: String,
    skip: usize,
    faults: std::collections::VecDeque<Fault>,
}

#[derive(Default)]
struct State {
    config: Option<SimConfig>,
    wire_base: String,
    requests: Vec<Recorded>,
    faults: Vec<Injection>,
    health: Vec<HealthReport>,
    role_properties: Vec<(String, String)>,
    status: Vec<StatusUpload>,
    blobs: HashMap<String, Vec<u8>>,
    overrides: HashMap<&'static str, String>,
    /// Re-read on each goal-state request; a change is a new incarnation.
    handlers_file: Option<HandlersFile>,
    handlers_file_errors: Vec<String>,
    /// Re-read on each goal-state request; a change is a new incarnation.
    lb_probe_ports_file: Option<PortsFile>,
}

/// A `--lb-probe-ports` file, watched: its words (split at blanks and
/// commas) are the goal state's `LBProbePorts`, taken verbatim.
#[derive(Debug)]
pub struct PortsFile {
    path: std::path::PathBuf,
    /// The text last read (`None`: unreadable or not read yet).
    seen: Option<String>,
}

impl PortsFile {
    pub fn new(path: impl Into<std::path::PathBuf>) -> PortsFile {
        PortsFile {
            path: path.into(),
            seen: None,
        }
    }

    /// The ports, when the file's text is not what was last read (a
    /// missing file reads as empty: no ports).
    pub fn changed(&mut self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        if self.seen.as_ref() == Some(&text) {
            return None;
        }
        let ports = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        self.seen = Some(text);
        Some(ports)
    }
}

impl State {
    /// The fault for a request to `target`, if one is due: the first
    /// injection that matches and still has faults either lets it through
    /// (using up one of its `skip`) or hands out its next fault.
    fn next_fault(&mut self, target: &str) -> Option<Fault> {
        let i = self
            .faults
            .iter_mut()
            .find(|i| target.contains(i.pattern.as_str()) && !i.faults.is_empty())?;
        if i.skip > 0 {
            i.skip -= 1;
            return None;
        }
        i.faults.pop_front()
    }

    /// Puts the handlers' manifests and packages in the blob store. Nothing
    /// is withdrawn but a primary manifest marked missing: an agent still
    /// working on the previous incarnation can fetch what it named.
    fn publish_handlers(&mut self) {
        let Some(c) = self.config.as_ref() else {
            return;
        };
        let (put, withdraw) = handlers::blobs(&c.handlers, &self.wire_base);
        for path in withdraw {
            self.blobs.remove(&path);
        }
        self.blobs.extend(put);
    }

    /// Replaces the handlers and moves to the next incarnation; returns it.
    fn replace_handlers(&mut self, new: Vec<SimHandler>) -> u64 {
        let c = self.config.get_or_insert_with(SimConfig::default);
        c.handlers = new;
        c.incarnation += 1;
        let inc = c.incarnation;
        self.publish_handlers();
        inc
    }

    /// A goal-state request: a changed `--lb-probe-ports` file is a new
    /// incarnation with its ports.
    fn check_lb_probe_ports_file(&mut self) {
        if let Some(ports) = self
            .lb_probe_ports_file
            .as_mut()
            .and_then(PortsFile::changed)
        {
            let c = self.config.get_or_insert_with(SimConfig::default);
            c.lb_probe_ports = ports;
            c.incarnation += 1;
        }
    }

    /// A goal-state request: a changed handlers file takes effect first.
    fn check_handlers_file(&mut self) {
        let Some(file) = self.handlers_file.as_mut() else {
            return;
        };
        match file.changed() {
            Ok(Some(new)) => {
                self.replace_handlers(new);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("fabric-sim: handlers unchanged: {e}");
                self.handlers_file_errors.push(e);
            }
        }
    }
}

/// A running simulator; stops when dropped.
pub struct FabricSim {
    state: Arc<Mutex<State>>,
    /// Notified after each request is recorded (see [`FabricSim::wait_for_requests`]).
    news: Arc<Condvar>,
    wire: Server,
    plugin: Server,
    imds: Server,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking handler thread must not take the whole test down with it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FabricSim {
    /// Starts on loopback, ephemeral ports.
    pub fn start(config: SimConfig) -> std::io::Result<FabricSim> {
        let lo = || SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(config, lo(), lo(), lo())
    }

    /// Starts on the given addresses (`168.63.129.16:80`, `168.63.129.16:32526`
    /// and `169.254.169.254:80` in a sandbox).
    pub fn start_on(
        config: SimConfig,
        wire: SocketAddr,
        plugin: SocketAddr,
        imds: SocketAddr,
    ) -> std::io::Result<FabricSim> {
        let state = Arc::new(Mutex::new(State {
            config: Some(config),
            ..State::default()
        }));
        let news = Arc::new(Condvar::new());
        let handler = |service: Service| -> Handler {
            let (s, n) = (state.clone(), news.clone());
            Arc::new(move |r: &HttpRequest| {
                let reply = handle(&s, service, r);
                n.notify_all();
                reply
            })
        };
        let (wire_handler, plugin_handler, imds_handler) = (
            handler(Service::Wire),
            handler(Service::HostPlugin),
            handler(Service::Imds),
        );
        let wire = Server::start(wire, wire_handler)?;
        let plugin = Server::start(plugin, plugin_handler)?;
        let imds = Server::start(imds, imds_handler)?;
        {
            let mut s = lock(&state);
            s.wire_base = format!("http://{}", wire.addr());
            s.publish_handlers();
        }
        Ok(FabricSim {
            state,
            news,
            wire,
            plugin,
            imds,
        })
    }

    /// `http://addr:port` of the simulated IMDS.
    pub fn imds_base(&self) -> String {
        format!("http://{}", self.imds.addr())
    }

    /// Where the agent should look for this fabric.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.wire.addr().ip().to_string(),
            wire_port: self.wire.addr().port(),
            hostplugin_port: self.plugin.addr().port(),
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Waits until more than `seen` requests have been recorded, or for
    /// `timeout`; returns how many there are. A program that reports what
    /// the fabric received (`fabric-sim --record`) reacts at once instead of
    /// polling, so its record is written as the requests arrive.
    pub fn wait_for_requests(&self, seen: usize, timeout: Duration) -> usize {
        let guard = lock(&self.state);
        let (guard, _) = self
            .news
            .wait_timeout_while(guard, timeout, |s| s.requests.len() <= seen)
            .unwrap_or_else(|p| p.into_inner());
        guard.requests.len()
    }

    /// Requests whose path and query contain `pattern`.
    pub fn requests_to(&self, pattern: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.request.target.contains(pattern))
            .collect()
    }

    pub fn health_reports(&self) -> Vec<HealthReport> {
        lock(&self.state).health.clone()
    }

    /// `(instance id, CertificateThumbprint)` of each role-properties report.
    pub fn role_properties(&self) -> Vec<(String, String)> {
        lock(&self.state).role_properties.clone()
    }

    pub fn status_uploads(&self) -> Vec<StatusUpload> {
        lock(&self.state).status.clone()
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.state).config.clone().unwrap_or_default()
    }

    /// Moves to the next incarnation; returns it.
    pub fn bump_incarnation(&self) -> u64 {
        let mut s = lock(&self.state);
        let c = s.config.get_or_insert_with(SimConfig::default);
        c.incarnation += 1;
        c.incarnation
    }

    /// Replaces the extension handlers (a new seqNo or state, a handler
    /// removed, a new version offered) and moves to the next incarnation;
    /// returns it.
    pub fn set_handlers(&self, handlers: Vec<SimHandler>) -> u64 {
        lock(&self.state).replace_handlers(handlers)
    }

    /// Watches a `--handlers` file: each goal-state request first reads it
    /// again if it changed, and a change takes effect as
    /// [`FabricSim::set_handlers`] (an invalid file leaves the handlers as
    /// they are, see [`FabricSim::handlers_file_errors`]). The first read
    /// happens here, without a new incarnation, unless `file` was read
    /// already (then its handlers should be in the starting config).
    pub fn watch_handlers_file(&self, mut file: HandlersFile) -> Result<(), String> {
        let mut s = lock(&self.state);
        if let Some(first) = file.changed()? {
            s.config.get_or_insert_with(SimConfig::default).handlers = first;
            s.publish_handlers();
        }
        s.handlers_file = Some(file);
        Ok(())
    }

    /// Replaces the goal state's `LBProbePorts` and moves to the next
    /// incarnation; returns it.
    pub fn set_lb_probe_ports(&self, ports: Vec<String>) -> u64 {
        let mut s = lock(&self.state);
        let c = s.config.get_or_insert_with(SimConfig::default);
        c.lb_probe_ports = ports;
        c.incarnation += 1;
        c.incarnation
    }

    /// Watches a `--lb-probe-ports` file: read now (without a new
    /// incarnation), then on each goal-state request, where a change is a
    /// new incarnation with the file's ports.
    pub fn watch_lb_probe_ports_file(&self, mut file: PortsFile) {
        let mut s = lock(&self.state);
        if let Some(ports) = file.changed() {
            s.config
                .get_or_insert_with(SimConfig::default)
                .lb_probe_ports = ports;
        }
        s.lb_probe_ports_file = Some(file);
    }

    /// Why the watched handlers file was not taken, one entry per change.
    pub fn handlers_file_errors(&self) -> Vec<String> {
        lock(&self.state).handlers_file_errors.clone()
    }

    /// The primary manifest URL of handler `name` (its `location`).
    pub fn manifest_url(&self, name: &str) -> String {
        let s = lock(&self.state);
        format!("{}{}", s.wire_base, handlers::manifest_path(name, false))
    }

    /// The failover manifest URL of handler `name` (its `failoverlocation`).
    pub fn failover_manifest_url(&self, name: &str) -> String {
        let s = lock(&self.state);
        format!("{}{}", s.wire_base, handlers::manifest_path(name, true))
    }

    /// Where the package of `name` at `version` is served (the manifest's `Uri`).
    pub fn package_url(&self, name: &str, version: &str) -> String {
        let s = lock(&self.state);
        format!("{}{}", s.wire_base, handlers::package_path(name, version))
    }

    pub fn set_tenant_certs(&self, certs: Vec<TenantCert>) {
        if let Some(c) = lock(&self.state).config.as_mut() {
            c.tenant_certs = certs;
        }
    }

    /// Queues faults for requests whose path and query contain `pattern`.
    pub fn inject(&self, pattern: &str, faults: impl IntoIterator<Item = Fault>) {
        self.inject_after(pattern, 0, faults);
    }

    /// Queues faults for the requests matching `pattern` that come after
    /// the first `skip` of them (answered normally): the Ready report
    /// rather than the NotReady one before it, say.
    pub fn inject_after(
        &self,
        pattern: &str,
        skip: usize,
        faults: impl IntoIterator<Item = Fault>,
    ) {
        lock(&self.state).faults.push(Injection {
            pattern: pattern.to_string(),
            skip,
            faults: faults.into_iter().collect(),
        });
    }

    /// Serves `text` instead of the template for a document: `versions`,
    /// `goalstate`, `hostingEnvironmentConfig`, `sharedConfig`, `extensionsConfig`.
    pub fn override_document(&self, kind: &'static str, text: &str) {
        lock(&self.state).overrides.insert(kind, text.to_string());
    }

    /// A blob the agent can download (directly, or through the HostGAPlugin).
    /// Returns its URL.
    pub fn put_blob(&self, name: &str, data: Vec<u8>) -> String {
        let mut s = lock(&self.state);
        let url = format!("{}/blob/{name}", s.wire_base);
        s.blobs.insert(format!("/blob/{name}"), data);
        url
    }

    /// The status blob's SAS URL in the ExtensionsConfig.
    pub fn status_blob_url(&self) -> String {
        status_blob_url(&lock(&self.state).wire_base)
    }
}

fn status_blob_url(base: &str) -> String {
    format!("{base}/blob/vmstatus.status?sr=b&sp=rw&se=9999-01-01&sv=2014-02-14&sig=c2ltdWxhdG9y")
}

/// A full reply with its body changed by `f`; any other reply as it is.
fn with_body(reply: Reply, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Reply {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => Reply::Full {
            status,
            headers,
            body: f(body),
        },
        other => other,
    }
}

fn handle(state: &Mutex<State>, service: Service, req: &HttpRequest) -> Reply {
    let at = SystemTime::now();
    let fault = lock(state).next_fault(&req.target);
    let reply = match fault.clone() {
        Some(Fault::Status(code)) => Reply::status(code),
        Some(Fault::Reset) => Reply::Reset,
        Some(Fault::Oversized(n)) => Reply::body(200, "text/xml", vec![b' '; n]),
        Some(Fault::Delay(d)) => Reply::Delayed(d, Box::new(route(state, service, req))),
        Some(Fault::Truncate) => match route(state, service, req) {
            Reply::Full { status, body, .. } => Reply::Truncated { status, body },
            other => other,
        },
        Some(Fault::Malformed) => {
            with_body(route(state, service, req), |b| b[..b.len() / 2].to_vec())
        }
        Some(Fault::Replace(from, to)) => with_body(route(state, service, req), |b| {
            String::from_utf8_lossy(&b)
                .replacen(&from, &to, 1)
                .into_bytes()
        }),
        None => route(state, service, req),
    };
    let status = match &reply {
        Reply::Full { status, .. } | Reply::Truncated { status, .. } => *status,
        Reply::Delayed(_, inner) => match &**inner {
            Reply::Full { status, .. } => *status,
            _ => 0,
        },
        Reply::Reset => 0,
    };
    lock(state).requests.push(Recorded {
        service,
        request: req.clone(),
        status,
        fault,
        at,
    });
    reply
}

fn xml(body: String) -> Reply {
    Reply::body(200, "text/xml; charset=utf-8", body)
}

fn route(state: &Mutex<State>, service: Service, req: &HttpRequest) -> Reply {
    match service {
        Service::Wire => route_wire(state, req),
        Service::HostPlugin => route_plugin(state, req),
        Service::Imds => route_imds(state, req),
    }
}

fn route_wire(state: &Mutex<State>, req: &HttpRequest) -> Reply {
    let (config, base, overrides) = {
        let s = lock(state);
        (
            s.config.clone().unwrap_or_default(),
            s.wire_base.clone(),
            s.overrides.clone(),
        )
    };
    let inc = config.incarnation.to_string();
    let doc = |kind: &'static str, make: &dyn Fn() -> String| {
        xml(overrides.get(kind).cloned().unwrap_or_else(make))
    };
    let path = req.path();
    match (req.method.as_str(), path, req.query("comp")) {
        ("GET", "/", Some("versions")) => doc("versions", &templates::versions),
        ("GET", "/machine/", Some("goalstate")) => {
            let config = {
                let mut s = lock(state);
                s.check_handlers_file();
                s.check_lb_probe_ports_file();
                s.config.clone().unwrap_or_default()
            };
            doc("goalstate", &|| templates::goal_state(&config, &base))
        }
        ("GET", p, Some(comp)) if p.starts_with("/machine/") => {
            // A sub-document of an older incarnation is gone (§4.3).
            if req.query("incarnation").is_some_and(|i| i != inc) {
                return Reply::status(410);
            }
            match (comp, req.query("type")) {
                ("config", Some("hostingEnvironmentConfig")) => {
                    doc("hostingEnvironmentConfig", &|| {
                        templates::hosting_env(&config)
                    })
                }
                ("config", Some("sharedConfig")) => {
                    doc("sharedConfig", &|| templates::shared_config(&config))
                }
                ("config", Some("extensionsConfig")) => doc("extensionsConfig", &|| {
                    templates::extensions_config(&config, &base, &status_blob_url(&base))
                }),
                ("certificates", _) => certificates(&config, req),
                _ => Reply::status(404),
            }
        }
        ("POST", "/machine", Some("health")) => match parse_health(&req.body) {
            Some(h) => {
                lock(state).health.push(h);
                Reply::status(200)
            }
            None => Reply::body(400, "text/plain", "malformed health report"),
        },
        // What waagent also sends, answered as Azure does (the request is
        // recorded; nothing else is kept): its telemetry events and the
        // HealthService observations of the HostGAPlugin and IMDS.
        ("POST", "/machine", Some("telemetrydata")) | ("POST", "/HealthService", None) => {
            Reply::status(200)
        }
        ("POST", "/machine", Some("roleProperties")) => match parse_role_properties(&req.body) {
            Some(p) => {
                lock(state).role_properties.push(p);
                Reply::status(202)
            }
            None => Reply::body(400, "text/plain", "malformed role properties"),
        },
        ("PUT", p, _) if p.starts_with("/blob/") => {
            let url = format!("{base}{}", req.target);
            lock(state).status.push(StatusUpload {
                via: Service::Wire,
                blob_url: url,
                content: req.body.clone(),
                at: SystemTime::now(),
            });
            Reply::status(201)
        }
        ("GET", p, _) if p.starts_with("/blob/") => match lock(state).blobs.get(p) {
            Some(b) => Reply::body(200, "application/octet-stream", b.clone()),
            None => Reply::status(404),
        },
        _ => Reply::status(404),
    }
}

fn certificates(config: &SimConfig, req: &HttpRequest) -> Reply {
    let Some(header) = req.header("x-ms-guest-agent-public-x509-cert") else {
        return Reply::body(400, "text/plain", "no transport certificate");
    };
    let cipher = req.header("x-ms-cipher-name").unwrap_or("DES_EDE3_CBC");
    if cipher == "AES128_CBC" && config.refuse_aes128 {
        return Reply::body(400, "text/plain", "unsupported cipher");
    }
    let cipher = match cipher {
        "AES128_CBC" => certs::CmsCipher::Aes128Cbc,
        "DES_EDE3_CBC" => certs::CmsCipher::DesEde3Cbc,
        _ => return Reply::body(400, "text/plain", "unknown cipher"),
    };
    match certs::certificates_xml_with(
        header,
        &config.tenant_certs,
        &config.incarnation.to_string(),
        cipher,
    ) {
        Ok(x) => xml(x),
        Err(e) => Reply::body(500, "text/plain", e),
    }
}

fn route_plugin(state: &Mutex<State>, req: &HttpRequest) -> Reply {
    let config = lock(state).config.clone().unwrap_or_default();
    // Stale container ids are refused like the real plugin does.
    let stale = req
        .header("x-ms-containerid")
        .is_some_and(|c| c != config.container_id);
    match (req.method.as_str(), req.path()) {
        ("GET", "/health") => Reply::status(200),
        ("GET", "/versions") => Reply::body(200, "application/json", "[\"2015-09-01\"]"),
        ("GET", "/vmSettings") => Reply::status(404),
        (_, _) if stale => Reply::status(410),
        ("GET", "/extensionArtifact") => {
            let Some(loc) = req.header("x-ms-artifact-location") else {
                return Reply::status(400);
            };
            let path = loc.find("/blob/").map(|i| &loc[i..]).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            match lock(state).blobs.get(path) {
                Some(b) => Reply::body(200, "application/octet-stream", b.clone()),
                None => Reply::status(404),
            }
        }
        ("PUT", "/status") => match parse_envelope(&req.body) {
            Some((url, content)) => {
                lock(state).status.push(StatusUpload {
                    via: Service::HostPlugin,
                    blob_url: url,
                    content,
                    at: SystemTime::now(),
                });
                Reply::status(200)
            }
            None => Reply::body(400, "text/plain", "malformed status envelope"),
        },
        _ => Reply::status(404),
    }
}

fn route_imds(state: &Mutex<State>, req: &HttpRequest) -> Reply {
    // IMDS refuses requests without the header (it guards against SSRF).
    if !req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Reply::body(
            400,
            "application/json",
            r#"{"error":"Bad request. Required metadata header not specified"}"#,
        );
    }
    // `/metadata/instance/compute` is the `compute` part alone (waagent
    // reads it for its telemetry).
    let compute_only = match (req.method.as_str(), req.path()) {
        ("GET", "/metadata/instance") => false,
        ("GET", "/metadata/instance/compute") => true,
        _ => return Reply::status(404),
    };
    let config = lock(state).config.clone().unwrap_or_default();
    let keys: Vec<serde_json::Value> = config
        .imds_public_keys
        .iter()
        .map(|(k, p)| serde_json::json!({"keyData": k, "path": p}))
        .collect();
    let doc = serde_json::json!({
        "compute": {
            "location": "westeurope",
            "name": config.vm_name,
            "offer": "debian-12",
            "osType": "Linux",
            "placementGroupId": "",
            "platformFaultDomain": "0",
            "platformUpdateDomain": "0",
            "publisher": "Debian",
            "resourceGroupName": "sim-rg",
            "sku": "12-gen2",
            "subscriptionId": "00000000-0000-0000-0000-000000000000",
            "tags": "",
            "version": "0.20250101.1",
            "vmId": "e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e",
            "vmScaleSetName": "",
            "vmSize": "Standard_B2s",
            "zone": "",
            "publicKeys": keys,
        },
        "network": {"interface": [{"macAddress": "000D3A3382E8",
            "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}]}}]}
    });
    let doc = if compute_only { &doc["compute"] } else { &doc };
    Reply::body(200, "application/json", doc.to_string())
}

fn parse_health(body: &[u8]) -> Option<HealthReport> {
    let root = crate::xml::parse("Health", &String::from_utf8_lossy(body)).ok()?;
    let text = |e: &crate::xml::Element, path: &[&str]| -> Option<String> {
        let mut cur = e;
        for p in path {
            cur = cur.child(p)?;
        }
        Some(cur.text.trim().to_string())
    };
    let role = root
        .child("Container")?
        .child("RoleInstanceList")?
        .child("Role")?;
    let health = role.child("Health")?;
    Some(HealthReport {
        incarnation: text(&root, &["GoalStateIncarnation"])?,
        container_id: text(&root, &["Container", "ContainerId"])?,
        instance_id: text(role, &["InstanceId"])?,
        state: text(health, &["State"])?,
        sub_status: text(health, &["Details", "SubStatus"]),
        description: text(health, &["Details", "Description"]),
        at: SystemTime::now(),
    })
}

fn parse_role_properties(body: &[u8]) -> Option<(String, String)> {
    let root = crate::xml::parse("RoleProperties", &String::from_utf8_lossy(body)).ok()?;
    let ri = root
        .child("Container")?
        .child("RoleInstances")?
        .child("RoleInstance")?;
    let id = ri.child("Id")?.text.trim().to_string();
    let value = ri
        .child("Properties")?
        .children_named("Property")
        .find(|p| p.attr("name") == Some("CertificateThumbprint"))?
        .attr("value")?
        .to_string();
    Some((id, value))
}

fn parse_envelope(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let url = v.get("requestUri")?.as_str()?.to_string();
    let content = match v.get("content").and_then(|c| c.as_str()) {
        Some(c) => base64::engine::general_purpose::STANDARD.decode(c).ok()?,
        None => Vec::new(),
    };
    Some((url, content))
}

/// The documents, written for the simulator (same shapes as Azure's).
mod templates {
    use super::SimConfig;
    use crate::xml::escape;

    pub fn versions() -> String {
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Versions>\n  <Preferred>\n    <Version>2015-04-05</Version>\n  </Preferred>\n  <Supported>\n    <Version>2015-04-05</Version>\n    <Version>2012-11-30</Version>\n    <Version>2012-09-15</Version>\n    <Version>2010-12-15</Version>\n  </Supported>\n</Versions>\n".to_string()
    }

    pub fn goal_state(c: &SimConfig, base: &str) -> String {
        let inc = c.incarnation;
        let m = format!("{base}/machine/{}", escape(&c.container_id));
        let certs = if c.tenant_certs.is_empty() {
            String::new()
        } else {
            format!("\n          <Certificates>{m}?comp=certificates&amp;incarnation={inc}</Certificates>")
        };
        let ext = if c.extensions_config || !c.handlers.is_empty() {
            format!("\n          <ExtensionsConfig>{m}?comp=config&amp;type=extensionsConfig&amp;incarnation={inc}</ExtensionsConfig>")
        } else {
            String::new()
        };
        let lb = if c.lb_probe_ports.is_empty() {
            String::new()
        } else {
            let ports: String = c
                .lb_probe_ports
                .iter()
                .map(|p| format!("<Port>{}</Port>", escape(p)))
                .collect();
            format!("\n    <LBProbePorts>{ports}</LBProbePorts>")
        };
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>{inc}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>{lb}
  </Machine>
  <Container>
    <ContainerId>{cid}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{iid}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{m}?comp=config&amp;type=hostingEnvironmentConfig&amp;incarnation={inc}</HostingEnvironmentConfig>
          <SharedConfig>{m}?comp=config&amp;type=sharedConfig&amp;incarnation={inc}</SharedConfig>{ext}
          <FullConfig>{m}?comp=config&amp;type=fullConfig&amp;incarnation={inc}</FullConfig>{certs}
          <ConfigName>{cfg}</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
            cid = escape(&c.container_id),
            iid = escape(&c.instance_id),
            cfg = escape(&c.role_config_name),
        )
    }

    pub fn hosting_env(c: &SimConfig) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{inc}">
  <StoredCertificates />
  <Deployment name="{dep}" guid="{{ce5a036f-5c93-40e7-8adf-2613631008ab}}" incarnation="0">
    <Service name="{vm}Service" guid="{{00000000-0000-0000-0000-000000000000}}" />
    <ServiceInstance name="{dep}.0" guid="{{d113f4d7-9ead-4e73-b715-b724b5b7842c}}" />
  </Deployment>
  <Incarnation number="{inc}" instance="{vm}" guid="{{a0faca35-52e5-4ec7-8fd1-63d2bc107d9b}}" />
  <Role guid="{{73d95f1c-6472-e58e-7a1a-523554e11d46}}" name="{role}" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" />
</HostingEnvironmentConfig>
"#,
            inc = c.incarnation,
            dep = escape(&c.deployment_name),
            vm = escape(&c.vm_name),
            role = escape(&c.role_name),
        )
    }

    pub fn shared_config(c: &SimConfig) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="{inc}">
  <Deployment name="{dep}" guid="{{ce5a036f-5c93-40e7-8adf-2613631008ab}}" incarnation="0" isNonCancellableTopologyChangeEnabled="false">
    <Service name="{vm}Service" guid="{{00000000-0000-0000-0000-000000000000}}" />
    <ServiceInstance name="{dep}.0" guid="{{d113f4d7-9ead-4e73-b715-b724b5b7842c}}" />
  </Deployment>
  <Incarnation number="{inc}" instance="{vm}" guid="{{a0faca35-52e5-4ec7-8fd1-63d2bc107d9b}}" />
  <Role guid="{{73d95f1c-6472-e58e-7a1a-523554e11d46}}" name="{role}" settleTimeSeconds="10" />
  <Instances>
    <Instance id="{vm}" address="10.0.0.4">
      <FaultDomains randomId="0" updateId="0" updateCount="0" />
      <InputEndpoints />
    </Instance>
  </Instances>
</SharedConfig>
"#,
            inc = c.incarnation,
            dep = escape(&c.deployment_name),
            vm = escape(&c.vm_name),
            role = escape(&c.role_name),
        )
    }

    pub fn extensions_config(c: &SimConfig, base: &str, status_url: &str) -> String {
        let features = super::handlers::required_features_xml(&c.handlers);
        let handlers = super::handlers::plugins_xml(&c.handlers, base);
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="{inc}"><GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <GAFamilies>
    <GAFamily>
      <Name>Prod</Name>
      <Uris />
    </GAFamily>
  </GAFamilies>
</GuestAgentExtension>
{features}<StatusUploadBlob statusBlobType="BlockBlob">{url}</StatusUploadBlob>
{handlers}<InVMGoalStateMetaData inSvdSeqNo="{inc}" createdOnTicks="638000000000000000" activityId="a33f6f53-43d6-4625-b322-1a39651a00c9" correlationId="9a47a2a2-e740-4bfc-b11b-4f2f7cfe7d2e" />
</Extensions>
"#,
            inc = c.incarnation,
            url = escape(status_url),
        )
    }
}
