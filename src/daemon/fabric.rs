//! The daemon's side of the fabric: where the WireServer is, the client,
//! the goal state, health reports and the status blob.

use super::timeline::Phase;
use crate::ext::exec::{Context, Outcome};
use crate::ext::report;
use crate::wire::client::{FullGoalState, WireClient, WireError};
use crate::wire::crypto::Openssl;
use crate::wire::docs::ExtensionsConfig;
use crate::wire::endpoint::{self, Endpoint};
use crate::wire::reports::Health;
use crate::wire::status::{self, AgentStatus, GoalStateOutcome, HandlerStatus, NotRun};

use super::*;

/// Why Connect has no goal state yet.
#[derive(Debug, PartialEq, Eq)]
pub enum NotConnected {
    /// The fabric could not be reached or answered wrongly, after the
    /// client's own retries: Connect backs off.
    Failed(String),
    /// The goal state has Certificates and the transport key is still
    /// being made while the media is read: Connect waits for the media,
    /// then asks again.
    TransportPending,
}

impl From<String> for NotConnected {
    fn from(e: String) -> Self {
        NotConnected::Failed(e)
    }
}

impl std::fmt::Display for NotConnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotConnected::Failed(e) => f.write_str(e),
            NotConnected::TransportPending => WireError::TransportPending.fmt(f),
        }
    }
}

impl Daemon {
    /// A captured image carries the previous VM's state (§9.2): its goal
    /// state, certificates and private keys, journal, `disable_agent`. A new
    /// instance starts with none of it, so everything in Lib.Dir goes, but
    /// `ovf-env.xml` when `keep_ovf_env` (cloud-init may already have put
    /// this instance's there).
    pub(super) fn forget_previous_instance(&mut self, keep_ovf_env: bool) {
        let Ok(entries) = std::fs::read_dir(&self.lib) else {
            return;
        };
        for e in entries.flatten() {
            if keep_ovf_env && e.file_name() == libdir::OVF_ENV {
                continue;
            }
            let path = e.path();
            let removed = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            if let Err(err) = removed {
                log::warn!("cannot remove {}: {err}", path.display());
            }
        }
        self.journal = Some(Journal::open(&self.lib));
    }

    /// Where the fabric is: `Debug.WireServerAddress` when set (tests and
    /// the simulator), else discovery (§3).
    pub(super) fn endpoint(&self) -> Result<(Endpoint, Option<endpoint::Source>), String> {
        if let Some(addr) = &self.config.debug_wireserver_address {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("Debug.WireServerAddress={addr} is not host:port"))?;
            let hostplugin_port = u16::try_from(self.config.debug_hostgaplugin_port)
                .map_err(|_| "Debug.HostGAPluginPort is not a port".to_string())?;
            return Ok((
                Endpoint {
                    host,
                    wire_port: port,
                    hostplugin_port,
                },
                None,
            ));
        }
        let dhcp = self.config.endpoint_discovery.eq_ignore_ascii_case("dhcp");
        let leases = self.os.dhcp_lease_files();
        let (ip, source) =
            endpoint::discover(&self.lib, &leases, dhcp, std::time::SystemTime::now());
        Ok((Endpoint::at(ip), Some(source)))
    }

    fn openssl(&self) -> Openssl {
        Openssl::new(
            self.config.openssl_path.clone(),
            self.os.env().runner.clone(),
        )
    }

    /// A client for `ep`, with the transport certificate made (or being
    /// made) since Boot.
    pub(super) fn new_client(&mut self, ep: Endpoint) -> WireClient {
        let client = WireClient::new(ep, &self.lib, self.openssl(), self.timing.client.clone())
            .with_clock(self.clock.clone());
        match self.transport.take() {
            Some(t) => client.with_transport(t),
            None => client,
        }
    }

    /// At daemon start: the transport certificate in Lib.Dir when it is
    /// sound, else `openssl req` started in the background (its RSA key is
    /// the slowest thing before the Certificates request). A failure to
    /// start is logged; the Certificates request then makes it.
    pub(super) fn start_transport(&mut self) {
        let now = self.clock.now();
        match crypto::start_transport_cert(&self.openssl(), &self.lib, now) {
            Ok(t) => {
                if matches!(t, Transport::Pending(_)) {
                    self.timeline.begin(Phase::TransportKey, now);
                }
                self.transport = Some(t);
            }
            Err(e) => log::warn!("{e}; it is made when it is needed"),
        }
    }

    /// What the client's last goal-state fetch took, into the timeline.
    pub(super) fn note_fetch_times(&mut self) {
        let Some(t) = self.client.as_ref().map(WireClient::fetch_times) else {
            return;
        };
        if let Some(at) = t.documents {
            self.timeline.end(Phase::GoalState, at);
        }
        if let Some((from, to)) = t.certificates {
            self.timeline.span(Phase::Certificates, from, to);
        }
        if let Some(at) = t.transport_ready {
            self.timeline.end(Phase::TransportKey, at);
        }
    }

    /// The final health report (Ready or ProvisioningFailed); once sent,
    /// the timeline of the way there is logged.
    pub(super) fn final_report(&mut self, goal: &FullGoalState, health: &Health) -> bool {
        let start = self.clock.now();
        let sent = self.report(goal, health);
        if sent {
            let end = self.clock.now();
            self.timeline.span(Phase::Report, start, end);
            let outcome = match health {
                Health::Ready => "Ready",
                Health::NotReady { .. } => "ProvisioningFailed",
            };
            log::info!("{}", self.timeline.line(outcome, end));
        }
        sent
    }

    /// Discovery, versions and a forced goal-state fetch with certificates.
    /// While ReadMedia's read of the media goes on, the Certificates
    /// request does not wait for the transport key: the fetch stops there
    /// (the client kept in `connecting`), Connect waits for the media so
    /// that the host keys start as soon as ovf-env.xml is read, and the
    /// next Connect finishes the fetch.
    pub(super) fn connect(&mut self) -> Result<FullGoalState, NotConnected> {
        let media_reading = self.media_reading();
        let (mut client, ep, source, fetched) = match self.connecting.take() {
            Some((mut client, source)) => {
                client.set_wait_for_transport(!media_reading);
                let fetched = client.finish_goal_state();
                let ep = client.endpoint().clone();
                (client, ep, source, fetched)
            }
            None => {
                self.timeline.begin(Phase::GoalState, self.clock.now());
                let (ep, source) = self.endpoint()?;
                log::info!(
                    "WireServer at {ep} ({})",
                    source.map_or("configured".into(), |s| format!("{s:?}"))
                );
                // Before the first request, and so before provisioning.
                self.set_up_firewall(&ep.host);
                let mut client = self.new_client(ep.clone());
                client.set_wait_for_transport(!media_reading);
                let fetched = client
                    .versions()
                    .and_then(|_| client.update_goal_state(true));
                (client, ep, source, fetched)
            }
        };
        if let Err(WireError::TransportPending) = fetched {
            self.connecting = Some((client, source));
            return Err(NotConnected::TransportPending);
        }
        let goal = match fetched {
            Ok(Some(goal)) => {
                let ri = goal.goal_state.role_instance.as_ref();
                if !ri.is_some_and(|ri| ri.certificates_url.is_some()) {
                    // Nothing needs a transport key now.
                    client.drop_pending_transport();
                }
                goal
            }
            failed => {
                // The next attempt's client takes the transport certificate over.
                self.transport = client.take_transport();
                if source == Some(endpoint::Source::Cache) && failed.is_err() {
                    // The cached address may be an old VNet's: rediscover next time.
                    let _ = endpoint::clear_cache(&self.lib);
                }
                return Err(NotConnected::Failed(match failed {
                    Err(e) => e.to_string(),
                    Ok(_) => "the WireServer sent no goal state".into(),
                }));
            }
        };
        if let (Some(_), Ok(ip)) = (source, ep.host.parse()) {
            if endpoint::read_cache(&self.lib) != Some(ip) {
                if let Err(e) = endpoint::write_cache(&self.lib, ip) {
                    log::warn!("cannot cache the WireServer address: {e}");
                }
            }
        }
        if self.read_lib(libdir::PROTOCOL).as_deref() != Some("WireProtocol") {
            let _ = self.write_lib(libdir::PROTOCOL, "WireProtocol", 0o644);
        }
        client.set_wait_for_transport(true);
        self.client = Some(client);
        if source.is_some() && self.manages_environment() {
            self.ensure_route();
        }
        Ok(goal)
    }

    /// Sends a health report; a failure is logged, not fatal (the client
    /// already retried for minutes, and `provisioned` is on disk).
    pub(super) fn report(&mut self, goal: &FullGoalState, health: &Health) -> bool {
        let (Some(client), Ok(target)) = (self.client.as_mut(), goal.report_target()) else {
            log::error!("cannot report {health:?}: no goal state to report on");
            return false;
        };
        match client.report_health(&target, health) {
            Ok(()) => {
                log::info!("reported {}", describe_health(health));
                true
            }
            Err(e) => {
                log::error!("cannot report {}: {e}", describe_health(health));
                false
            }
        }
    }

    /// Steady state: look for a new incarnation. Returns the extensions
    /// goal state now in force: the new incarnation's (kept pending while
    /// the current one's handlers run), else `current`, else (after a
    /// restart) the saved incarnation's, read from Lib.Dir rather than
    /// fetched again — its enabled handlers are enabled again, as waagent
    /// does on start.
    pub(super) fn poll_goal_state(
        &mut self,
        current: Option<Box<ExtensionGoal>>,
    ) -> Option<Box<ExtensionGoal>> {
        if self.client.is_none() {
            match self.discovered_client() {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    log::warn!("goal state poll: {e}");
                    self.failed_polls += 1;
                    return current;
                }
            }
        }
        let client = self.client.as_mut()?;
        let polled = client.update_goal_state(false);
        self.failed_polls = match polled {
            Ok(_) => 0,
            Err(_) => self.failed_polls.saturating_add(1),
        };
        let Some(client) = self.client.as_mut() else {
            return current;
        };
        let newest = match polled {
            Ok(Some(g)) => {
                log::info!("new goal state: incarnation {}", g.goal_state.incarnation);
                let inc = g.goal_state.incarnation.clone();
                match g.extensions_config {
                    Some(ec) => self.extension_goal(&inc, ec),
                    None => None,
                }
            }
            Ok(None) if current.is_none() => {
                let saved = client.saved_incarnation();
                let text = saved.as_ref().and_then(|inc| {
                    std::fs::read_to_string(self.lib.join(libdir::extensions_config(inc))).ok()
                });
                return match (saved, text.map(|t| ExtensionsConfig::parse(&t))) {
                    (Some(inc), Some(Ok(ec))) => self.extension_goal(&inc, ec),
                    (_, Some(Err(e))) => {
                        log::warn!("saved {e}");
                        None
                    }
                    _ => None,
                };
            }
            // Held: asked again on every poll until released.
            Ok(None) if current.as_ref().is_some_and(|g| g.on_hold) => {
                let cur = current?;
                return match self.extension_goal(&cur.incarnation, cur.config.clone()) {
                    Some(g) if g.on_hold => Some(cur),
                    released => released,
                };
            }
            Ok(None) => return current,
            Err(e) => {
                log::warn!("goal state poll: {e}");
                return current;
            }
        };
        match (current, newest) {
            (Some(mut cur), Some(new)) if cur.busy() => {
                cur.pending = Some(new);
                Some(cur)
            }
            (_, new) => new,
        }
    }

    /// What the Extension state works on for `ec` (nothing without a status
    /// blob to report to): its handlers to run, or, with
    /// `Extensions.Enabled=n`, each reported as not run.
    pub(super) fn extension_goal(
        &mut self,
        incarnation: &str,
        ec: ExtensionsConfig,
    ) -> Option<Box<ExtensionGoal>> {
        let status_blob = ec.status_upload_blob.clone()?;
        let on_hold = self.config.extensions_enabled && self.on_hold(&ec);
        let (handling, not_run) = match (self.config.extensions_enabled, on_hold) {
            // On hold: nothing runs; what is installed is reported.
            (true, true) => (
                Some(Handling::new(
                    incarnation,
                    &ExtensionsConfig::default(),
                    &self.lib,
                )),
                Vec::new(),
            ),
            (true, false) => (Some(Handling::new(incarnation, &ec, &self.lib)), Vec::new()),
            (false, _) => (None, status::not_run(&ec, NotRun::Disabled)),
        };
        Some(Box::new(ExtensionGoal {
            status_blob,
            in_svd_seq_no: ec
                .in_vm_goal_state_metadata
                .as_ref()
                .and_then(|m| m.in_svd_seq_no),
            incarnation: incarnation.to_string(),
            config: ec,
            on_hold,
            handling,
            not_run,
            pending: None,
            upload_due: true,
            failed_uploads: 0,
            report_cache: Default::default(),
            status_document: Default::default(),
        }))
    }

    /// `EnableOverProvisioning` and the goal state's artifacts profile says
    /// `onHold` (§13.11): the handlers wait. A profile that cannot be read
    /// or understood holds nothing, as in waagent.
    fn on_hold(&mut self, ec: &ExtensionsConfig) -> bool {
        let (true, Some(url), Some(client)) = (
            self.config.enable_over_provisioning,
            ec.in_vm_artifacts_profile_blob.as_deref(),
            self.client.as_mut(),
        ) else {
            return false;
        };
        let tmp = self.lib.join(".artifacts-profile.json");
        let _ = std::fs::remove_file(&tmp);
        let read = client
            .download_artifact(url, None, &tmp, 64 * 1024)
            .map_err(|e| e.to_string())
            .and_then(|_| std::fs::read(&tmp).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&tmp);
        let profile: serde_json::Value = match read.map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                log::warn!("the artifacts profile is not JSON ({e}); not on hold");
                return false;
            }
            Err(e) => {
                log::warn!("cannot read the artifacts profile: {e}; not on hold");
                return false;
            }
        };
        let held = match &profile["onHold"] {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        if held {
            log::info!("the goal state's extensions are on hold (artifacts profile)");
        }
        held
    }

    /// One turn of the Extension state: a step of the handlers (a newer
    /// goal state taken up once they have settled), then the status, when a
    /// poll made it due or a handler's status changed.
    pub(super) fn handle_extensions(&mut self, goal: &mut Box<ExtensionGoal>) {
        if !goal.busy() {
            if let Some(next) = goal.pending.take() {
                **goal = *next;
            }
        }
        if let (Some(handling), Some(client)) = (goal.handling.as_mut(), self.client.as_mut()) {
            let mut cx = Context {
                os: &*self.os,
                client,
                config: &self.config,
                now: self.clock.now(),
            };
            handling.poll(&mut cx);
        }
        let g = &mut **goal;
        let handlers = match &g.handling {
            Some(h) => report::handler_statuses(
                &g.config,
                h,
                &self.lib,
                std::time::SystemTime::now(),
                &mut g.report_cache,
            ),
            None => g.not_run.clone(),
        };
        if goal.upload_due || goal.status_document.handlers() != Some(&handlers[..]) {
            goal.failed_uploads = match self.upload_status(goal, &handlers) {
                true => 0,
                false => goal.failed_uploads.saturating_add(1),
            };
            // A failure is tried again on the next turn, once; then at
            // the next poll, which makes the status due anyway.
            goal.upload_due = goal.failed_uploads == 1;
        }
    }

    /// The agent's and the handlers' status to the status blob; a failure
    /// is logged (and false).
    pub(super) fn upload_status(
        &mut self,
        goal: &mut ExtensionGoal,
        handlers: &[HandlerStatus],
    ) -> bool {
        let distro = &self.os.env().distro;
        let agent = AgentStatus {
            os_name: distro.id.clone(),
            os_version: distro.version.clone(),
            computer_name: self.os.hostname().unwrap_or_default(),
            in_svd_seq_no: goal.in_svd_seq_no,
            goal_state: match &goal.handling {
                _ if goal.on_hold => GoalStateOutcome::InProgress,
                None => GoalStateOutcome::not_run(handlers),
                Some(h) if !h.is_settled() => GoalStateOutcome::InProgress,
                Some(h) => match h.failed() {
                    f if f.is_empty() => GoalStateOutcome::Success,
                    f => GoalStateOutcome::Failed(format!(
                        "{} of {} extension handler(s) failed: {}",
                        f.len(),
                        goal.config.plugins.len(),
                        f.join(", ")
                    )),
                },
            },
        };
        let body = goal
            .status_document
            .render(&agent, handlers, std::time::SystemTime::now());
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        match client.upload_status(&goal.status_blob, body.as_bytes()) {
            Ok(()) => {
                log::debug!("status uploaded");
                true
            }
            Err(e) => {
                log::warn!("cannot upload the status blob: {e}");
                false
            }
        }
    }

    /// A client for the discovered (or configured) WireServer, for an
    /// already-provisioned VM: nothing is sent until it is used.
    pub(super) fn discovered_client(&mut self) -> Result<WireClient, String> {
        let (ep, _) = self.endpoint()?;
        Ok(self.new_client(ep))
    }
}

fn describe_health(h: &Health) -> String {
    match h {
        Health::Ready => "Ready".into(),
        Health::NotReady {
            sub_status,
            description,
        } => format!("NotReady/{}: {description}", sub_status.as_str()),
    }
}

impl Daemon {
    /// `-run-exthandlers`: the current goal state's handlers, in the
    /// foreground, until every one has settled (or a stop is asked); one
    /// line per handler on standard output; the status uploaded as the
    /// daemon would. For an admin debugging an extension. Exit code 0 when
    /// none failed.
    pub fn run_exthandlers(&mut self, out: &mut dyn std::io::Write) -> i32 {
        let goal = match self.connect() {
            Ok(g) => g,
            Err(e) => {
                log::error!("cannot reach the fabric: {e}");
                let _ = writeln!(out, "cannot reach the fabric: {e}");
                return 1;
            }
        };
        let inc = goal.goal_state.incarnation.clone();
        let Some(ec) = goal.extensions_config else {
            let _ = writeln!(out, "the goal state (incarnation {inc}) has no extensions");
            return 0;
        };
        let Some(mut eg) = self.extension_goal(&inc, ec) else {
            let _ = writeln!(out, "the goal state (incarnation {inc}) has no status blob");
            return 1;
        };
        if eg.handling.is_none() {
            let _ = writeln!(
                out,
                "extension processing is disabled (Extensions.Enabled=n): nothing was run"
            );
        }
        while eg.busy() && !stop_requested() {
            self.handle_extensions(&mut eg);
            if eg.busy() && !self.clock.sleep(Duration::from_millis(200)) {
                break;
            }
        }
        eg.upload_due = true;
        self.handle_extensions(&mut eg);
        let mut failed = 0;
        for p in &eg.config.plugins {
            let line = match eg.handling.as_ref().and_then(|h| h.outcome(&p.name)) {
                Some(Outcome::Enabled { version }) => format!("enabled {version}"),
                Some(Outcome::Disabled { version }) => format!("disabled {version}"),
                Some(Outcome::Uninstalled) => "uninstalled".to_string(),
                Some(Outcome::Failed {
                    version,
                    code,
                    message,
                    ..
                }) => {
                    failed += 1;
                    format!("{version} failed ({code}): {message}")
                }
                None if eg.handling.is_none() => {
                    failed += 1;
                    "not run".to_string()
                }
                None => "nothing to do".to_string(),
            };
            let _ = writeln!(out, "{}: {line}", p.name);
        }
        if stop_requested() {
            let _ = writeln!(out, "stopped before every handler had settled");
            return 1;
        }
        i32::from(failed > 0)
    }
}
