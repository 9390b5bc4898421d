//! The WireServer's calls (§5, §6): versions, the goal state and its
//! documents (fetched whole, then saved), health and role properties.

use super::retry::Call;
use super::{RetryPolicy, WireClient, WireError};
use crate::fsutil;
use crate::http::Response;
use crate::libdir;
use crate::wire::crypto::{self, Certificate, TransportCert};
use crate::wire::docs::{
    CertificatesDoc, ExtensionsConfig, GoalState, HostingEnvironmentConfig, SharedConfig, Versions,
};
use crate::wire::reports::{self, Health, ReportTarget};

/// The wire protocol version this agent speaks.
pub const WIRE_PROTOCOL_VERSION: &str = "2012-11-30";
/// The agent name the fabric knows; our own name and version go in User-Agent.
const AGENT_NAME_HEADER: &str = "WALinuxAgent";
/// 410 on a sub-document: fetch the goal state again, at most this often.
const GONE_ROUNDS: u32 = 3;
/// A goal state without a RoleInstance is re-requested this often (§4.3).
const NO_ROLE_INSTANCE_TRIES: u32 = 6;

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

/// A goal state fetched but for its Certificates, which wait for the
/// transport certificate ([`WireClient::finish_goal_state`]).
pub(super) struct Unfinished {
    certificates_url: Option<String>,
    goal_state: GoalState,
    gs_xml: String,
    hosting_xml: String,
    hosting_env: HostingEnvironmentConfig,
    shared_xml: String,
    shared_config: SharedConfig,
    ext_xml: Option<String>,
    extensions_config: Option<ExtensionsConfig>,
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

impl WireClient {
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
            let gs = match &self.last_goal_state {
                Some((body, gs)) if *body == r.body => gs.clone(),
                _ => {
                    let gs = GoalState::parse(&text)?;
                    self.last_goal_state = Some((r.body, gs.clone()));
                    self.last_goal_state_saved = false;
                    gs
                }
            };
            // Container id and config name can change without a new
            // incarnation (live migration): take them from every response.
            self.container_id = Some(gs.container_id.clone());
            self.role_config_name = gs
                .role_instance
                .as_ref()
                .and_then(|r| r.config_name.clone());
            self.lb_probe_ports = Some(gs.lb_probe_ports.clone());
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
        std::fs::read_to_string(self.lib_dir.join(libdir::INCARNATION))
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
            // The same response as the last poll's, whose incarnation was
            // found saved: nothing to read on disk either.
            if !forced && self.last_goal_state_saved {
                return Ok(None);
            }
            if !forced && self.saved_incarnation().as_deref() == Some(gs.incarnation.as_str()) {
                self.last_goal_state_saved = true;
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
        self.unfinished = None;
        self.times.documents = None;
        self.times.certificates = None;
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
        let (ext_xml, extensions_config) = match &ri.extensions_config_url {
            Some(u) => {
                let x = self.get_text(u)?;
                let parsed = ExtensionsConfig::parse(&x)?;
                (Some(x), Some(parsed))
            }
            None => (None, None),
        };
        self.times.documents = Some(self.clock.now());
        self.finish_documents(Unfinished {
            certificates_url: ri.certificates_url,
            goal_state: gs,
            gs_xml: gs_xml.to_string(),
            hosting_xml,
            hosting_env,
            shared_xml,
            shared_config,
            ext_xml,
            extensions_config,
        })
    }

    /// A forced fetch that a [`WireError::TransportPending`] interrupted,
    /// finished: the Certificates request (now waiting for the transport
    /// certificate, if so told) and the saves, with the documents already
    /// fetched. A goal state gone stale meanwhile is fetched again whole;
    /// with nothing interrupted, this is `update_goal_state(true)`.
    pub fn finish_goal_state(&mut self) -> Result<Option<FullGoalState>, WireError> {
        match self.unfinished.take() {
            Some(u) => match self.finish_documents(*u) {
                Err(e) if e.is_gone() => {
                    log::info!("{e}; fetching the goal state again");
                    self.update_goal_state(true)
                }
                other => other.map(Some),
            },
            None => self.update_goal_state(true),
        }
    }

    /// The Certificates last (the transport certificate they need may still
    /// be being generated), then everything is saved, `Incarnation` last.
    fn finish_documents(&mut self, u: Unfinished) -> Result<FullGoalState, WireError> {
        let (certs_xml, certificates) = match &u.certificates_url {
            Some(url) => {
                match self.transport() {
                    Err(WireError::TransportPending) => {
                        // Nothing saved: the caller comes back for the rest.
                        self.unfinished = Some(Box::new(u));
                        return Err(WireError::TransportPending);
                    }
                    other => other?,
                };
                let start = self.clock.now();
                let x = self.get_certificates_text(url)?;
                let certs = self.decrypt(&x)?;
                self.times.certificates = Some((start, self.clock.now()));
                (Some(x), certs)
            }
            None => (None, Vec::new()),
        };

        let inc = &u.goal_state.incarnation;
        self.save(&libdir::goal_state(inc), &u.gs_xml)?;
        self.save(libdir::HOSTING_ENVIRONMENT_CONFIG, &u.hosting_xml)?;
        self.save(libdir::SHARED_CONFIG, &u.shared_xml)?;
        if let Some(x) = &certs_xml {
            self.save(libdir::CERTIFICATES, x)?;
        }
        if let Some(x) = &u.ext_xml {
            self.save(&libdir::extensions_config(inc), x)?;
        }
        self.save(libdir::INCARNATION, inc)?;
        self.last_goal_state_saved = true;
        Ok(FullGoalState {
            goal_state: u.goal_state,
            hosting_env: u.hosting_env,
            shared_config: u.shared_config,
            certificates,
            extensions_config: u.extensions_config,
        })
    }

    fn get_text(&self, url: &str) -> Result<String, WireError> {
        let r = self.wire_get(url, Vec::new())?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The transport certificate: the one being generated since the daemon
    /// started (waited for), else made on first use.
    fn transport(&mut self) -> Result<&TransportCert, WireError> {
        if self.transport.is_none() {
            let made = match self.pending_transport.take() {
                Some(mut p) => {
                    let done = match self.wait_for_transport {
                        true => Some(p.wait(&*self.clock)),
                        false => p.poll(self.clock.now()),
                    };
                    let Some(done) = done else {
                        self.pending_transport = Some(p);
                        return Err(WireError::TransportPending);
                    };
                    let t = done?;
                    self.times.transport_ready = Some(self.clock.now());
                    t
                }
                None => crypto::ensure_transport_cert(&self.openssl, &self.lib_dir)?,
            };
            self.transport = Some(made);
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

    /// `POST /machine?comp=health`. A 410 says the goal state moved on:
    /// it is fetched again and the report sent once more, about it.
    pub fn report_health(
        &mut self,
        target: &ReportTarget,
        health: &Health,
    ) -> Result<(), WireError> {
        let url = format!("{}/machine?comp=health", self.endpoint.wire_base());
        self.post_report(&url, target, &[200, 201, 202], true, |t| {
            reports::health_xml(t, health)
        })
    }

    /// `POST /machine?comp=roleProperties`; the fabric answers 202. A 410
    /// is handled as for health.
    pub fn report_role_properties(
        &mut self,
        target: &ReportTarget,
        thumbprint: &str,
    ) -> Result<(), WireError> {
        let url = format!("{}/machine?comp=roleProperties", self.endpoint.wire_base());
        self.post_report(&url, target, &[202], false, |t| {
            reports::role_properties_xml(t, thumbprint)
        })
    }

    /// A report about `target`, written by `body`; on 410 about the goal
    /// state fetched again, once.
    fn post_report(
        &mut self,
        url: &str,
        target: &ReportTarget,
        ok: &[u16],
        health: bool,
        body: impl Fn(&ReportTarget) -> String,
    ) -> Result<(), WireError> {
        let retry = match health {
            true => self.options.health_retry.clone(),
            false => self.options.retry.clone(),
        };
        let mut target = target.clone();
        for round in 0..2 {
            match self.wire_post(url, &body(&target), ok, &retry) {
                Err(e) if e.is_gone() && round == 0 => {
                    log::info!("{e}; reporting on the goal state fetched again");
                    target = report_target(&self.goal_state()?)?;
                }
                other => return other.map(drop),
            }
        }
        Err(WireError::Missing(format!(
            "{}: no answer",
            crate::redact::redact_url(url)
        )))
    }
}
