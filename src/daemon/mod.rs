//! `waagent -daemon`: one explicit state machine, one thread, one loop.
//!
//! Every state is a variant of [`State`]; [`Daemon::step`] performs the
//! state's I/O and returns the next state, and every transition is visible in
//! its single `match`. The loop in [`Daemon::run`] just steps until
//! [`State::Stopped`].
//!
//! First boot (§9.1): Boot → ReadMedia → Connect → ReportStarting → Plan →
//! Provision (one step per [`Step`]) → MarkProvisioned → ReportReady →
//! Steady. Everything that can be refused (the document, the user, a key
//! path, a thumbprint) is refused in Plan, before the system changes, so a
//! bad input ends in ReportFailed with nothing half-made. A reboot with
//! `<lib>/provisioned` naming this VM goes from Boot straight to Steady and
//! reports nothing; a captured image (another instance id) provisions again.

mod journal;
mod signals;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ProvisioningAgent, SshHostKeyType};
use crate::env::{firewall, kernel, network, rdma, resource_disk, scvmm};
use crate::fsutil;
use crate::os::{Cmd, Flavour, OsUtil};
use crate::ovf::{self, OvfEnv};
use crate::provision::{custom_data, keys, media, password, sshd};
use crate::wire::client::{ClientOptions, FullGoalState, WireClient};
use crate::wire::crypto::Openssl;
use crate::wire::docs::{ExtensionsConfig, StatusUploadBlob};
use crate::wire::endpoint::{self, Endpoint};
use crate::wire::imds;
use crate::wire::reports::{Health, SubStatus};
use crate::wire::status::{aggregate_status, AgentStatus};

pub use journal::Journal;
pub use signals::{install_handlers, stop_requested};

/// `<lib>/provisioned`: provisioning finished; holds the VM's instance id.
pub const PROVISIONED_FILE: &str = "provisioned";
/// `<lib>/disable_agent`: ovf-env said `ProvisionGuestAgent=false` (§8.3).
pub const DISABLE_AGENT_FILE: &str = "disable_agent";
/// The wait before Connect's next attempt: the base delay doubling each
/// attempt, at most six times the base (10 s … 60 s by default).
pub fn connect_backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(3))
        .min(base.saturating_mul(6))
}

/// The goal-state poll period with `Extensions.Enabled=n`, as waagent's.
const EXTENSIONS_DISABLED_POLL_SECS: u64 = 300;

/// Test hook: `WAAGENT_RS_TEST_CRASH_AT=<State>` or `Provision:<Step>` makes
/// the daemon SIGKILL itself on entering that state, so crash-safety tests
/// can stop it at every step. Unset in production.
pub const CRASH_HOOK_ENV: &str = "WAAGENT_RS_TEST_CRASH_AT";

/// Waits and retry budgets; tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    pub media: media::MountRetry,
    /// First pause between attempts to reach the fabric; it doubles up to
    /// six times this (waagent waits a flat 10 s, for an hour).
    pub connect_delay: Duration,
    pub client: ClientOptions,
    /// IMDS is asked this often, this patiently, for SSH keys.
    pub imds_tries: u32,
    pub imds_timeout_secs: u64,
    /// The steady-state period; `None`: `Extensions.GoalStatePeriod`.
    pub poll_period: Option<Duration>,
    /// How often, and how long, to look for what cloud-init makes (§9.3).
    pub cloud_init_poll: Duration,
    pub cloud_init_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            media: media::MountRetry::default(),
            connect_delay: Duration::from_secs(10),
            client: ClientOptions::default(),
            imds_tries: 3,
            imds_timeout_secs: 3,
            poll_period: None,
            cloud_init_poll: Duration::from_secs(1),
            cloud_init_wait: Duration::from_secs(1800),
        }
    }
}

/// Who provisions this VM (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Waagent,
    CloudInit,
    /// `Provisioning.Agent=disabled`: report Ready on every start, nothing else.
    Disabled,
}

/// What the daemon will do once it reaches the fabric.
#[derive(Debug)]
pub enum Job {
    /// Provision from this document.
    Waagent(Box<OvfEnv>),
    /// cloud-init provisions; we report around it.
    CloudInit,
    /// Only report Ready.
    ReportOnly,
    /// Provisioning cannot happen; report why.
    Fail(String),
}

/// The provisioning actions, in order (§9.1 step 6.5 to 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    HostName,
    User,
    Password,
    Sudoers,
    SshdConfig,
    PublicKeys,
    KeyPairs,
    CustomData,
    RootPassword,
    HostKeys,
    RestartSshd,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Step::HostName,
        Step::User,
        Step::Password,
        Step::Sudoers,
        Step::SshdConfig,
        Step::PublicKeys,
        Step::KeyPairs,
        Step::CustomData,
        Step::RootPassword,
        Step::HostKeys,
        Step::RestartSshd,
    ];

    fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }

    /// What the step does, for logs and failure descriptions.
    pub fn describe(self) -> &'static str {
        match self {
            Step::HostName => "setting the host name",
            Step::User => "creating the user",
            Step::Password => "setting the password",
            Step::Sudoers => "granting sudo",
            Step::SshdConfig => "configuring sshd",
            Step::PublicKeys => "deploying SSH public keys",
            Step::KeyPairs => "deploying SSH key pairs",
            Step::CustomData => "saving custom data",
            Step::RootPassword => "locking the root password",
            Step::HostKeys => "regenerating SSH host keys",
            Step::RestartSshd => "restarting sshd",
        }
    }
}

/// Everything provisioning will do, decided before anything is done.
#[derive(Debug)]
pub struct Plan {
    pub ovf: Box<OvfEnv>,
    /// crypt(3) hash of the password (never the password itself).
    pub password_hash: Option<String>,
    pub public_keys: Vec<keys::KeyFile>,
    pub key_pairs: Vec<keys::KeyPair>,
    /// The SSH host key fingerprint, known after [`Step::HostKeys`].
    pub fingerprint: Option<String>,
}

/// The daemon's states.
#[derive(Debug)]
pub enum State {
    /// Prepare Lib.Dir and decide what this boot must do.
    Boot,
    /// Copy ovf-env.xml from the provisioning media.
    ReadMedia,
    /// cloud-init provisions: wait for it to leave ovf-env.xml in Lib.Dir.
    WaitForCloudInit {
        since: Instant,
    },
    /// Find the fabric and fetch the goal state with its certificates;
    /// retried until it answers.
    Connect {
        job: Job,
        attempt: u32,
    },
    /// NotReady / Provisioning / "Starting".
    ReportStarting {
        job: Job,
        goal: Box<FullGoalState>,
    },
    /// Validate everything and decide every action.
    Plan {
        ovf: Box<OvfEnv>,
        goal: Box<FullGoalState>,
    },
    /// Perform one provisioning step.
    Provision {
        plan: Box<Plan>,
        goal: Box<FullGoalState>,
        step: Step,
    },
    /// cloud-init provisions: wait for the SSH host key it makes.
    WaitForHostKey {
        goal: Box<FullGoalState>,
        since: Instant,
    },
    /// Write `provisioned` (before Ready, so a crash after Ready cannot
    /// provision twice).
    MarkProvisioned {
        goal: Box<FullGoalState>,
        fingerprint: Option<String>,
        disable_agent: bool,
    },
    /// Ready, then role properties with the host key fingerprint.
    ReportReady {
        goal: Box<FullGoalState>,
        fingerprint: Option<String>,
    },
    /// NotReady / ProvisioningFailed with a one-line reason.
    ReportFailed {
        goal: Box<FullGoalState>,
        reason: String,
    },
    /// Poll the goal state every `Extensions.GoalStatePeriod` until stopped
    /// (`Extensions.InitialGoalStatePeriod` until the first goal state has
    /// been acted on; five minutes with `Extensions.Enabled=n`).
    Steady {
        next_poll: Instant,
    },
    /// Act on the extensions goal state: with no handlers yet, report the
    /// agent's own status (Ready) to the status blob.
    Extension,
    Stopped(i32),
}

impl State {
    /// Where the crash hook can stop: the state's name, with the step for
    /// Provision (`Provision:User`).
    pub fn crash_point(&self) -> String {
        match self {
            State::Provision { step, .. } => format!("Provision:{step:?}"),
            other => other.name().to_string(),
        }
    }

    /// The variant's name, for the log.
    pub fn name(&self) -> &'static str {
        match self {
            State::Boot => "Boot",
            State::ReadMedia => "ReadMedia",
            State::WaitForCloudInit { .. } => "WaitForCloudInit",
            State::Connect { .. } => "Connect",
            State::ReportStarting { .. } => "ReportStarting",
            State::Plan { .. } => "Plan",
            State::Provision { .. } => "Provision",
            State::WaitForHostKey { .. } => "WaitForHostKey",
            State::MarkProvisioned { .. } => "MarkProvisioned",
            State::ReportReady { .. } => "ReportReady",
            State::ReportFailed { .. } => "ReportFailed",
            State::Steady { .. } => "Steady",
            State::Extension => "Extension",
            State::Stopped(_) => "Stopped",
        }
    }
}

/// The daemon and what its states share.
pub struct Daemon {
    config: Config,
    os: Box<dyn OsUtil>,
    lib: PathBuf,
    client: Option<WireClient>,
    imds_base: String,
    timing: Timing,
    journal: Option<Journal>,
    /// From the newest ExtensionsConfig: where status goes, and which
    /// extensions goal state it answers.
    status_blob: Option<StatusUploadBlob>,
    in_svd_seq_no: Option<u64>,
    /// The Extension state has acted on a goal state since start: polls go
    /// from `InitialGoalStatePeriod` to `GoalStatePeriod`.
    goal_state_handled: bool,
    monitors: Monitors,
    clock: Rc<dyn Clock>,
}

/// The periodic checks of the steady state (§15), each with its own period
/// and when it is next due (`None`: at the first chance).
struct Monitors {
    scsi_timeout: Option<kernel::RootDeviceScsiTimeout>,
    dhcp: network::DhcpClientMonitor,
    next_scsi: Option<Instant>,
    next_net_rules: Option<Instant>,
    next_dhcp: Option<Instant>,
    next_hostname: Option<Instant>,
    /// RDMA set-up in progress (made from the first SharedConfig fetched
    /// for it); `rdma_settled` once it is done, failed or not asked for.
    rdma: Option<rdma::RdmaSetup>,
    rdma_settled: bool,
    /// `OS.EnableFirewall`: the rules for the WireServer address they were
    /// first set up for (a new address gets a new set-up).
    firewall: Option<firewall::FirewallMonitor>,
    next_firewall: Option<Instant>,
}

/// Whether a monitor due at `next` runs at `now`; if so, it is next due a
/// period later.
fn due(next: &mut Option<Instant>, now: Instant, period: Duration) -> bool {
    if next.is_some_and(|n| now < n) {
        return false;
    }
    *next = Some(now + period);
    true
}

impl Daemon {
    pub fn new(config: Config, os: Box<dyn OsUtil>, timing: Timing) -> Daemon {
        let imds_base = match &config.debug_imds_address {
            Some(a) => format!("http://{a}"),
            None => imds::IMDS_BASE.to_string(),
        };
        Daemon {
            lib: config.lib_dir.clone(),
            config,
            os,
            client: None,
            imds_base,
            timing,
            journal: None,
            status_blob: None,
            in_svd_seq_no: None,
            goal_state_handled: false,
            monitors: Monitors {
                scsi_timeout: None,
                dhcp: network::DhcpClientMonitor::new(),
                next_scsi: None,
                next_net_rules: None,
                next_dhcp: None,
                next_hostname: None,
                rdma: None,
                rdma_settled: false,
                firewall: None,
                next_firewall: None,
            },
            clock: Rc::new(SystemClock),
        }
    }

    /// Takes its time from `clock` (and waits on it), instead of the
    /// system's: the tests' virtual clock.
    pub fn with_clock(mut self, clock: Rc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs from Boot until stopped; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let crash_at = std::env::var(CRASH_HOOK_ENV).ok();
        let mut state = State::Boot;
        loop {
            if crash_at.as_deref() == Some(state.crash_point().as_str()) {
                log::warn!(
                    "test hook {CRASH_HOOK_ENV}: killing myself at {}",
                    state.crash_point()
                );
                log::logger().flush();
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let State::Stopped(code) = state {
                log::info!("daemon stopped");
                return code;
            }
            if stop_requested() {
                log::info!("stop requested in state {}", state.name());
                return 0;
            }
            log::debug!("state {}", state.name());
            state = self.step(state);
        }
    }

    /// Performs `state`'s work and returns the next state.
    pub fn step(&mut self, state: State) -> State {
        match state {
            State::Boot => {
                if let Err(e) = fsutil::ensure_dir(&self.lib, 0o700) {
                    log::error!("cannot create Lib.Dir {}: {e}", self.lib.display());
                    return State::Stopped(1);
                }
                if self.manages_environment() {
                    if let Some(handover) = self.prepare_environment() {
                        return handover;
                    }
                }
                let journal = Journal::open(&self.lib);
                let ready_reported = journal.entry().ready_reported.is_some();
                self.journal = Some(journal);
                let mode = self.mode();
                log::info!("provisioning agent: {mode:?}");
                if mode == Mode::Disabled {
                    return State::Connect {
                        job: Job::ReportOnly,
                        attempt: 0,
                    };
                }
                if let Some(saved) = self.read_lib(PROVISIONED_FILE) {
                    let current = self.os.instance_id();
                    let same = saved.is_empty()
                        || current.is_none()
                        || current.as_deref() == Some(saved.as_str());
                    if same && ready_reported {
                        log::info!("already provisioned; nothing to report");
                        return State::Steady {
                            next_poll: self.clock.now(),
                        };
                    }
                    if same {
                        // Killed between writing `provisioned` and the Ready
                        // report (or upgraded from waagent): report it now.
                        log::info!("provisioned, but no Ready report is journalled; reporting it");
                        return State::Connect {
                            job: Job::ReportOnly,
                            attempt: 0,
                        };
                    }
                    log::info!(
                        "provisioned for instance {saved}, but this is {}: a captured image; provisioning again",
                        current.unwrap_or_default()
                    );
                    self.forget_previous_instance();
                }
                match mode {
                    Mode::CloudInit => State::WaitForCloudInit {
                        since: self.clock.now(),
                    },
                    _ => State::ReadMedia,
                }
            }

            State::ReadMedia => {
                let job = match media::read_ovf_env(
                    &*self.os,
                    &self.config.dvd_mount_point,
                    self.timing.media,
                    &*self.clock,
                ) {
                    Err(e) => Job::Fail(format!("provisioning media: {e}")),
                    Ok(text) => {
                        if let Err(e) = self.write_lib("ovf-env.xml", &ovf::masked(&text), 0o600) {
                            log::warn!("{e}");
                        }
                        match OvfEnv::parse(&text) {
                            Ok(env) => Job::Waagent(Box::new(env)),
                            Err(e) => Job::Fail(e.to_string()),
                        }
                    }
                };
                State::Connect { job, attempt: 0 }
            }

            State::WaitForCloudInit { since } => {
                let path = self.lib.join("ovf-env.xml");
                if path.exists() {
                    log::info!("cloud-init provided {}", path.display());
                    return State::Connect {
                        job: Job::CloudInit,
                        attempt: 0,
                    };
                }
                if self.clock.now().saturating_duration_since(since) >= self.timing.cloud_init_wait
                {
                    let reason = format!("cloud-init did not provide {} in time", path.display());
                    return State::Connect {
                        job: Job::Fail(reason),
                        attempt: 0,
                    };
                }
                if !self.clock.sleep(self.timing.cloud_init_poll) {
                    return State::Stopped(0);
                }
                State::WaitForCloudInit { since }
            }

            State::Connect { job, attempt } => match self.connect() {
                Ok(goal) => {
                    let goal = Box::new(goal);
                    log::info!(
                        "goal state incarnation {}, container {}",
                        goal.goal_state.incarnation,
                        goal.goal_state.container_id
                    );
                    match job {
                        Job::Fail(reason) => State::ReportFailed { goal, reason },
                        Job::ReportOnly => State::MarkProvisioned {
                            goal,
                            fingerprint: None,
                            disable_agent: false,
                        },
                        job => State::ReportStarting { job, goal },
                    }
                }
                Err(e) => {
                    // Back off (the fabric may be busy for minutes at boot)
                    // and say so once per step: each attempt already spent
                    // its own quick retries inside the client.
                    let wait = connect_backoff(self.timing.connect_delay, attempt);
                    log::warn!(
                        "cannot reach the fabric (attempt {}): {e}; trying again in {wait:?}",
                        attempt + 1
                    );
                    if !self.clock.sleep(wait) {
                        return State::Stopped(0);
                    }
                    State::Connect {
                        job,
                        attempt: attempt + 1,
                    }
                }
            },

            State::ReportStarting { job, goal } => {
                self.report(
                    &goal,
                    &Health::NotReady {
                        sub_status: SubStatus::Provisioning,
                        description: "Starting".into(),
                    },
                );
                match job {
                    Job::Waagent(ovf) => State::Plan { ovf, goal },
                    Job::CloudInit => State::WaitForHostKey {
                        goal,
                        since: self.clock.now(),
                    },
                    Job::ReportOnly => State::MarkProvisioned {
                        goal,
                        fingerprint: None,
                        disable_agent: false,
                    },
                    Job::Fail(reason) => State::ReportFailed { goal, reason },
                }
            }

            State::Plan { ovf, goal } => match self.plan(ovf) {
                Ok(plan) if self.begin_journal(&plan).is_err() => State::ReportFailed {
                    goal,
                    reason: format!("cannot write the journal in {}", self.lib.display()),
                },
                Ok(plan) => State::Provision {
                    plan: Box::new(plan),
                    goal,
                    step: Step::ALL[0],
                },
                Err(reason) => State::ReportFailed { goal, reason },
            },

            State::Provision {
                mut plan,
                goal,
                step,
            } => {
                let key = format!("{step:?}");
                // A step a killed daemon finished is not redone. HostKeys
                // still runs its check, as Plan needs its fingerprint.
                let done = self.journal.as_ref().is_some_and(|j| j.step_done(&key));
                if done && step != Step::HostKeys {
                    log::info!(
                        "provisioning: {} was done before a restart",
                        step.describe()
                    );
                } else {
                    log::info!("provisioning: {}", step.describe());
                    let result = if done {
                        host_key_fingerprint(&*self.os, &self.config)
                            .map(|fp| plan.fingerprint = Some(fp))
                    } else {
                        self.provision_step(step, &mut plan)
                    };
                    if let Err(e) = result {
                        return State::ReportFailed {
                            goal,
                            reason: format!("{}: {e}", step.describe()),
                        };
                    }
                    if let Some(Err(e)) = self.journal.as_mut().map(|j| j.record_step(&key)) {
                        log::warn!("{e}");
                    }
                }
                match step.next() {
                    Some(next) => State::Provision {
                        plan,
                        goal,
                        step: next,
                    },
                    None => State::MarkProvisioned {
                        goal,
                        fingerprint: plan.fingerprint.clone(),
                        disable_agent: plan.ovf.provision_guest_agent == Some(false),
                    },
                }
            }

            State::WaitForHostKey { goal, since } => {
                match host_key_fingerprint(&*self.os, &self.config) {
                    Ok(fp) => State::MarkProvisioned {
                        goal,
                        fingerprint: Some(fp),
                        disable_agent: false,
                    },
                    Err(_)
                        if self.clock.now().saturating_duration_since(since)
                            < self.timing.cloud_init_wait =>
                    {
                        if !self.clock.sleep(self.timing.cloud_init_poll) {
                            return State::Stopped(0);
                        }
                        State::WaitForHostKey { goal, since }
                    }
                    Err(e) => State::ReportFailed {
                        goal,
                        reason: format!("cloud-init made no SSH host key: {e}"),
                    },
                }
            }

            State::MarkProvisioned {
                goal,
                fingerprint,
                disable_agent,
            } => {
                let id = self.os.instance_id().unwrap_or_default();
                if let Err(e) = self.write_lib(PROVISIONED_FILE, &id, 0o644) {
                    return State::ReportFailed { goal, reason: e };
                }
                if disable_agent {
                    if let Err(e) = self.write_lib(DISABLE_AGENT_FILE, "", 0o644) {
                        log::warn!("{e}");
                    }
                }
                if let Some(Err(e)) = self.journal.as_mut().map(Journal::clear_steps) {
                    log::warn!("{e}");
                }
                log::info!("provisioning complete");
                State::ReportReady { goal, fingerprint }
            }

            State::ReportReady { goal, fingerprint } => {
                if self.report(&goal, &Health::Ready) {
                    let inc = goal.goal_state.incarnation.clone();
                    if let Some(Err(e)) = self.journal.as_mut().map(|j| j.record_ready(&inc)) {
                        log::warn!("{e}");
                    }
                }
                if let (Some(fp), Some(client), Ok(target)) =
                    (&fingerprint, &self.client, goal.report_target())
                {
                    if let Err(e) = client.report_role_properties(&target, fp) {
                        log::warn!("cannot report the SSH host key fingerprint: {e}");
                    }
                }
                State::Steady {
                    next_poll: self.clock.now() + self.poll_period(),
                }
            }

            State::ReportFailed { goal, reason } => {
                log::error!("provisioning failed: {reason}");
                // The next start redoes everything: what failed may be input.
                if let Some(Err(e)) = self.journal.as_mut().map(Journal::clear_steps) {
                    log::warn!("{e}");
                }
                self.report(
                    &goal,
                    &Health::NotReady {
                        sub_status: SubStatus::ProvisioningFailed,
                        description: reason,
                    },
                );
                State::Steady {
                    next_poll: self.clock.now() + self.poll_period(),
                }
            }

            State::Steady { next_poll } => {
                let wait = next_poll.saturating_duration_since(self.clock.now());
                if !self.clock.sleep(wait) {
                    return State::Stopped(0);
                }
                if self.manages_environment() {
                    self.run_monitors();
                }
                self.poll_goal_state();
                if self.manages_environment() {
                    self.set_up_rdma();
                }
                if self.status_blob.is_some() && !self.lib.join(DISABLE_AGENT_FILE).exists() {
                    State::Extension
                } else {
                    State::Steady {
                        next_poll: self.clock.now() + self.poll_period(),
                    }
                }
            }

            State::Extension => {
                self.upload_status();
                self.goal_state_handled = true;
                State::Steady {
                    next_poll: self.clock.now() + self.poll_period(),
                }
            }

            State::Stopped(code) => State::Stopped(code),
        }
    }

    /// The Lib.Dir this daemon works in.
    pub fn lib_dir(&self) -> &Path {
        &self.lib
    }

    /// Who provisions (§9.3): `Provisioning.Agent`, or the 2.2.x switches
    /// when only they are set, or — for `auto` — cloud-init if it is enabled.
    pub fn mode(&self) -> Mode {
        let c = &self.config;
        match c.provisioning_agent {
            ProvisioningAgent::Waagent => Mode::Waagent,
            ProvisioningAgent::CloudInit => Mode::CloudInit,
            ProvisioningAgent::Disabled => Mode::Disabled,
            ProvisioningAgent::Auto
                if !c.is_explicit("Provisioning.Agent") && c.provisioning_use_cloud_init =>
            {
                Mode::CloudInit
            }
            ProvisioningAgent::Auto
                if !c.is_explicit("Provisioning.Agent") && !c.provisioning_enabled =>
            {
                // 2.2.x: Enabled=n meant cloud-init on Ubuntu, no provisioning elsewhere.
                if self.os.flavour() == Flavour::Ubuntu {
                    Mode::CloudInit
                } else {
                    Mode::Disabled
                }
            }
            ProvisioningAgent::Auto if self.os.is_cloud_init_enabled() => Mode::CloudInit,
            ProvisioningAgent::Auto => Mode::Waagent,
        }
    }

    /// `Debug.WireServerAddress` means a simulator, not Azure: routes, udev
    /// rules, disks and kernel settings of the machine are then left alone —
    /// unless the OS layer works under a test root (never `/` then), where
    /// the in-process tests drive the environment on fixtures.
    fn manages_environment(&self) -> bool {
        self.config.debug_wireserver_address.is_none() || self.os.env().root != Path::new("/")
    }

    /// Boot-time environment (§9.1 steps 3–4, §18): entropy, SCVMM, NUMA and
    /// the resource disk. Each failure is logged; provisioning goes on.
    /// Returns a state when SCVMM takes the VM over.
    fn prepare_environment(&mut self) -> Option<State> {
        let env = self.os.env();
        if let Some(n) = kernel::seed_entropy_from_hyperv(env) {
            log::debug!("seeded /dev/random with {n} bytes from the Hyper-V OEM0 table");
        }
        if self.config.detect_scvmm_env {
            if let Some(h) = scvmm::detect(&*self.os) {
                log::info!(
                    "SCVMM media in {}: handing the VM over to its agent",
                    h.device.display()
                );
                if let Err(e) = self.os.env().runner.spawn(&h.install) {
                    log::error!("cannot start the SCVMM installer: {e}");
                } else {
                    self.clock.sleep(h.exit_after);
                    return Some(State::Stopped(0));
                }
            }
        }
        if let Some(release) = kernel::kernel_release(env) {
            match kernel::disable_numa_if_needed(env, &release) {
                Ok(kernel::NumaCheck::Disabled(a)) if a.changed => {
                    log::warn!(
                        "kernel {release} needs numa=off: added to {} for the next boot",
                        a.file.display()
                    )
                }
                Ok(_) => {}
                Err(e) => log::warn!("cannot add numa=off for kernel {release}: {e}"),
            }
        }
        match resource_disk::activate(&*self.os, None) {
            Ok(Some(report)) => log::info!("{report}"),
            Ok(None) => {}
            Err(e) => log::error!("{e}"),
        }
        self.monitors.scsi_timeout = kernel::RootDeviceScsiTimeout::from_config(self.os.env());
        None
    }

    /// The steady state's periodic checks (§15, §18.3, §18.4, §18.7), each
    /// when its period has passed.
    fn run_monitors(&mut self) {
        let now = self.clock.now();
        let period = |secs: u64| Duration::from_secs(secs.max(1));
        if self.config.enable_firewall
            && due(
                &mut self.monitors.next_firewall,
                now,
                period(self.config.enable_firewall_period),
            )
        {
            self.check_firewall(now);
        }
        let c = &self.config;
        let m = &mut self.monitors;
        if due(
            &mut m.next_scsi,
            now,
            period(c.root_device_scsi_timeout_period),
        ) {
            if let Some(t) = m.scsi_timeout.as_mut() {
                let r = t.apply(self.os.env());
                if !r.changed.is_empty() {
                    log::info!("SCSI timeout set on {:?}", r.changed);
                }
            }
        }
        if due(
            &mut m.next_net_rules,
            now,
            period(c.remove_persistent_net_rules_period),
        ) && network::moves_persistent_net_rules(self.os.flavour())
        {
            match network::remove_persistent_net_rules(self.os.env()) {
                Ok(moved) if !moved.is_empty() => {
                    log::info!("moved persistent-net udev rules: {moved:?}")
                }
                Ok(_) => {}
                Err(e) => log::warn!("persistent-net udev rules: {e}"),
            }
        }
        if due(
            &mut self.monitors.next_dhcp,
            now,
            period(c.monitor_dhcp_client_restart_period),
        ) {
            if let Ok(true) = self.monitors.dhcp.check(&*self.os) {
                log::info!("the DHCP client restarted; checking the route to the WireServer");
                self.ensure_route();
            }
        }
        if c.monitor_host_name
            && due(
                &mut self.monitors.next_hostname,
                now,
                period(c.monitor_host_name_period),
            )
        {
            self.monitor_host_name();
        }
    }

    /// `OS.EnableFirewall` (§18.6): the first set-up for the WireServer at
    /// `host` — legacy rule out, rules in, their return at boot arranged —
    /// once per address. Called as soon as the address is known (Connect,
    /// before provisioning; the first monitor run after a reboot). waagent
    /// sets them when its extension handler starts, after provisioning;
    /// earlier closes the window in which other users could reach the
    /// WireServer, and changes nothing else.
    fn set_up_firewall(&mut self, host: &str) {
        if !self.config.enable_firewall || !self.manages_environment() {
            return;
        }
        let Ok(ip) = host.parse::<Ipv4Addr>() else {
            log::warn!(
                "OS.EnableFirewall: the WireServer address {host} is not IPv4; no rules set"
            );
            return;
        };
        if self
            .monitors
            .firewall
            .as_ref()
            .is_some_and(|f| f.ip() == ip)
        {
            return;
        }
        let exe = std::env::current_exe().ok();
        let uid = nix::unistd::getuid().as_raw();
        let mut fw = firewall::FirewallMonitor::new(ip, uid, exe);
        fw.initialize(self.os.env());
        self.monitors.firewall = Some(fw);
    }

    /// The periodic firewall check (every `OS.EnableFirewallPeriod`): puts
    /// back rules that were removed or left incomplete.
    fn check_firewall(&mut self, now: Instant) {
        if !self.manages_environment() {
            return;
        }
        let host = match &self.client {
            Some(c) => c.endpoint().host.clone(),
            None => match self.endpoint() {
                Ok((ep, _)) => ep.host,
                Err(e) => {
                    log::warn!("OS.EnableFirewall: {e}");
                    return;
                }
            },
        };
        let known = self
            .monitors
            .firewall
            .as_ref()
            .is_some_and(|f| host.parse() == Ok(f.ip()));
        if !known {
            self.set_up_firewall(&host);
            return;
        }
        if let Some(fw) = self.monitors.firewall.as_mut() {
            fw.check(self.os.env(), now);
        }
    }

    /// RDMA (§18.5), when any RDMA option asks for it: made once from a
    /// freshly fetched SharedConfig (waagent forces the fetch: RDMA changes
    /// need not bump the incarnation), then polled every period until it is
    /// done or failed. Polling never waits for the device; each outcome is
    /// logged once.
    fn set_up_rdma(&mut self) {
        if self.monitors.rdma_settled {
            return;
        }
        if !rdma::is_requested(&self.config) {
            self.monitors.rdma_settled = true;
            return;
        }
        if self.monitors.rdma.is_none() {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            let shared = match client.update_goal_state(true) {
                Ok(Some(goal)) => goal.shared_config,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("RDMA: cannot fetch SharedConfig (trying again next period): {e}");
                    return;
                }
            };
            let address = rdma::RdmaAddress::from_shared_config(&shared).unwrap_or_else(|e| {
                log::error!("RDMA: {e}");
                None
            });
            self.monitors.rdma = Some(rdma::RdmaSetup::new(&self.config, address.as_ref()));
        }
        let now = self.clock.now();
        let Some(setup) = self.monitors.rdma.as_mut() else {
            return;
        };
        let progress = setup.poll(&*self.os, now);
        match &progress {
            rdma::RdmaProgress::NotRequested => {}
            rdma::RdmaProgress::Waiting(why) => log::debug!("RDMA: {why}"),
            rdma::RdmaProgress::Done(report) => {
                log::info!("RDMA: {report}");
                for w in &report.warnings {
                    log::warn!("RDMA: {w}");
                }
            }
            rdma::RdmaProgress::Failed(e) => {
                log::error!("RDMA: {e}");
                for w in &setup.report().warnings {
                    log::warn!("RDMA: {w}");
                }
            }
        }
        self.monitors.rdma_settled = progress.is_final();
    }

    /// The route to the WireServer, when DHCP left it out (§3.4).
    fn ensure_route(&self) {
        let ip = self
            .client
            .as_ref()
            .and_then(|c| c.endpoint().host.parse().ok())
            .unwrap_or(endpoint::WELL_KNOWN);
        match network::ensure_wire_server_route(&*self.os, ip) {
            Ok(network::WireServerRoute::Added(gw)) => log::info!("added a route to {ip} via {gw}"),
            Ok(_) => {}
            Err(e) => log::warn!("cannot add a route to {ip}: {e}"),
        }
    }

    /// `Provisioning.MonitorHostName`: a host name changed by the user is
    /// made persistent and published through DHCP (§18.7).
    fn monitor_host_name(&self) {
        let (Ok(current), Some(published)) =
            (self.os.hostname(), self.read_lib("published_hostname"))
        else {
            return;
        };
        if current == published || current.is_empty() {
            return;
        }
        log::info!("host name changed from {published} to {current}; publishing it");
        if let Err(e) = self.os.set_hostname(&current) {
            log::warn!("cannot make the host name {current} persistent: {e}");
            return;
        }
        // As at provisioning: a DHCP client that cannot re-send the name is
        // a warning, not a reason to try again every period.
        if let Some(i) = self.os.primary_interface() {
            let published = self
                .os
                .set_dhcp_hostname(&current, &i)
                .and_then(|_| self.os.publish_hostname(&i));
            if let Err(e) = published {
                log::warn!("cannot publish the host name {current} on {i}: {e}");
            }
        }
        if let Err(e) = self.write_lib("published_hostname", &current, 0o644) {
            log::warn!("{e}");
        }
    }

    /// The wait between goal-state polls (§18 timers table).
    fn poll_period(&self) -> Duration {
        if let Some(p) = self.timing.poll_period {
            return p;
        }
        let c = &self.config;
        let secs = if !c.extensions_enabled {
            EXTENSIONS_DISABLED_POLL_SECS
        } else if self.goal_state_handled {
            c.goal_state_period
        } else {
            c.initial_goal_state_period
        };
        Duration::from_secs(secs.max(1))
    }

    fn read_lib(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.lib.join(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn write_lib(&self, name: &str, text: &str, mode: u32) -> Result<(), String> {
        let path = self.lib.join(name);
        fsutil::write_atomic(&path, text.as_bytes(), mode)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A captured image carries the previous VM's goal state; drop it (§9.2).
    fn forget_previous_instance(&self) {
        let Ok(entries) = std::fs::read_dir(&self.lib) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with("GoalState.")
                || name.starts_with("ExtensionsConfig.")
                || [
                    "Incarnation",
                    "Protocol",
                    endpoint::CACHE_FILE,
                    "published_hostname",
                    "HostingEnvironmentConfig.xml",
                    "SharedConfig.xml",
                    "Certificates.xml",
                    PROVISIONED_FILE,
                    journal::FILE,
                ]
                .contains(&name.as_str());
            if stale {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    log::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Where the fabric is: `Debug.WireServerAddress` when set (tests and
    /// the simulator), else discovery (§3).
    fn endpoint(&self) -> Result<(Endpoint, Option<endpoint::Source>), String> {
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

    fn new_client(&self, ep: Endpoint) -> WireClient {
        let openssl = Openssl::new(
            self.config.openssl_path.clone(),
            self.os.env().runner.clone(),
        );
        WireClient::new(ep, &self.lib, openssl, self.timing.client.clone())
            .with_clock(self.clock.clone())
    }

    /// Discovery, versions and a forced goal-state fetch with certificates.
    fn connect(&mut self) -> Result<FullGoalState, String> {
        let (ep, source) = self.endpoint()?;
        log::info!(
            "WireServer at {ep} ({})",
            source.map_or("configured".into(), |s| format!("{s:?}"))
        );
        // Before the first request, and so before provisioning.
        self.set_up_firewall(&ep.host);
        let mut client = self.new_client(ep.clone());
        let goal = client
            .versions()
            .and_then(|_| client.update_goal_state(true))
            .map_err(|e| {
                if source == Some(endpoint::Source::Cache) {
                    // The cached address may be an old VNet's: rediscover next time.
                    let _ = endpoint::clear_cache(&self.lib);
                }
                e.to_string()
            })?
            .ok_or("the WireServer sent no goal state")?;
        if let (Some(_), Ok(ip)) = (source, ep.host.parse()) {
            if endpoint::read_cache(&self.lib) != Some(ip) {
                if let Err(e) = endpoint::write_cache(&self.lib, ip) {
                    log::warn!("cannot cache the WireServer address: {e}");
                }
            }
        }
        if self.read_lib("Protocol").as_deref() != Some("WireProtocol") {
            let _ = self.write_lib("Protocol", "WireProtocol", 0o644);
        }
        self.client = Some(client);
        if source.is_some() && self.manages_environment() {
            self.ensure_route();
        }
        Ok(goal)
    }

    /// Sends a health report; a failure is logged, not fatal (the client
    /// already retried for minutes, and `provisioned` is on disk).
    fn report(&self, goal: &FullGoalState, health: &Health) -> bool {
        let (Some(client), Ok(target)) = (&self.client, goal.report_target()) else {
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

    /// Checks everything and decides every action; changes nothing on the
    /// system (it may write `{THUMBPRINT}.pub` into Lib.Dir).
    fn plan(&self, ovf: Box<OvfEnv>) -> Result<Plan, String> {
        let user = &ovf.user_name;
        if let Some(existing) = self.os.user(user).map_err(|e| e.to_string())? {
            let system = self.os.is_system_user(user).map_err(|e| e.to_string())?;
            if system && !self.config.allow_reset_sys_user {
                return Err(format!(
                    "refusing to provision the system account {user} (uid {}); Provisioning.AllowResetSysUser=y allows it",
                    existing.uid
                ));
            }
        }
        let imds_keys = self.imds_keys();
        let public_keys =
            keys::plan_public_keys(&ovf, &imds_keys, &self.lib, &self.config.home_dir)?;
        let key_pairs = keys::plan_key_pairs(&ovf, &self.lib, &self.config.home_dir)?;
        let password_hash = ovf.user_password.as_ref().map(|p| {
            let salt = password::random_salt(self.config.password_crypt_salt_length as usize);
            password::hash(p.expose(), self.config.password_crypt_id, &salt)
        });
        Ok(Plan {
            ovf,
            password_hash,
            public_keys,
            key_pairs,
            fingerprint: None,
        })
    }

    fn begin_journal(&mut self, plan: &Plan) -> Result<(), String> {
        let what = format!("{}@{}", plan.ovf.user_name, plan.ovf.host_name);
        match self.journal.as_mut() {
            Some(j) => j.begin(&what),
            None => Ok(()),
        }
    }

    /// IMDS `compute.publicKeys`; a VM without IMDS simply has none.
    fn imds_keys(&self) -> Vec<imds::ImdsPublicKey> {
        for attempt in 1..=self.timing.imds_tries.max(1) {
            match imds::public_keys(&self.imds_base, self.timing.imds_timeout_secs) {
                Ok(k) => return k,
                Err(e) if attempt == self.timing.imds_tries => {
                    log::warn!("no SSH keys from IMDS: {e}")
                }
                Err(_) => {
                    if !self.clock.sleep(Duration::from_millis(500)) {
                        break;
                    }
                }
            }
        }
        Vec::new()
    }

    /// One provisioning action (§9.1 step 6.5 to 6.7). Each is idempotent:
    /// it checks before it acts, so a restart can run it again.
    fn provision_step(&self, step: Step, plan: &mut Plan) -> Result<(), String> {
        let os = &*self.os;
        let c = &self.config;
        let ovf = &plan.ovf;
        let user = ovf.user_name.as_str();
        let entry = || -> Result<crate::os::PasswdEntry, String> {
            os.user(user)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("user {user} does not exist"))
        };
        match step {
            Step::HostName => {
                let name = ovf.host_name.as_str();
                os.set_hostname(name).map_err(|e| e.to_string())?;
                match os.primary_interface() {
                    Some(iface) => {
                        if let Err(e) = os
                            .set_dhcp_hostname(name, &iface)
                            .and_then(|_| os.publish_hostname(&iface))
                        {
                            log::warn!("cannot publish the host name on {iface}: {e}");
                        }
                    }
                    None => {
                        log::warn!("no default route: the host name is not published through DHCP")
                    }
                }
                self.write_lib("published_hostname", name, 0o644)
            }
            Step::User => {
                if os.user(user).map_err(|e| e.to_string())?.is_none() {
                    os.create_user(user, None).map_err(|e| e.to_string())?;
                }
                entry().map(drop)
            }
            Step::Password => match &plan.password_hash {
                Some(hash) => os.set_password_hash(user, hash).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Step::Sudoers => os
                .add_sudoer(user, plan.password_hash.is_none())
                .map_err(|e| e.to_string()),
            Step::SshdConfig => {
                if os.flavour() == Flavour::CoreOs {
                    // /etc/ssh is read-only there; CoreOS ships the settings.
                    return Ok(());
                }
                let path = &c.sshd_config_path;
                let Ok(text) = std::fs::read_to_string(path) else {
                    log::warn!(
                        "{} not found: is openssh-server installed? sshd not configured",
                        path.display()
                    );
                    return Ok(());
                };
                let settings =
                    sshd::settings_for(ovf.disable_ssh_password_auth, c.ssh_client_alive_interval);
                let pairs: Vec<(&str, &str)> =
                    settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let new = sshd::apply(&text, &pairs);
                if new != text {
                    let mode = std::os::unix::fs::PermissionsExt::mode(
                        &std::fs::metadata(path)
                            .map_err(|e| e.to_string())?
                            .permissions(),
                    ) & 0o7777;
                    fsutil::write_atomic(path, new.as_bytes(), mode)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                // Included drop-ins are read first and would win: ours sorts
                // before them.
                // (An absolute Include is a system path: under the OS root.)
                let drop_ins = sshd::drop_in_dir(&new, Path::new(""))
                    .map(|d| match d.is_absolute() {
                        true => os.env().path(&d.to_string_lossy()),
                        false => c.ssh_dir.join(d),
                    })
                    .filter(|d| d.is_dir());
                if let Some(dir) = drop_ins {
                    let file = dir.join(sshd::DROP_IN);
                    let text = sshd::drop_in(&pairs);
                    if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                        fsutil::write_atomic(&file, text.as_bytes(), 0o644)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                }
                Ok(())
            }
            Step::PublicKeys => {
                let u = entry()?;
                plan.public_keys
                    .iter()
                    .try_for_each(|f| keys::install_public_keys(f, &u))
            }
            Step::KeyPairs => {
                let u = entry()?;
                plan.key_pairs
                    .iter()
                    .try_for_each(|kp| keys::install_key_pair(kp, &self.lib, &u))
            }
            Step::CustomData => {
                let Some(data) = &ovf.custom_data else {
                    return Ok(());
                };
                let decode = c.decode_custom_data || c.execute_custom_data;
                let path = custom_data::save(&self.lib, data, decode)?;
                if c.execute_custom_data {
                    if let Err(e) = custom_data::execute(&*os.env().runner, &path) {
                        log::warn!("custom data: {e}");
                    }
                }
                Ok(())
            }
            Step::RootPassword => match c.delete_root_password {
                true => os.lock_root_password().map_err(|e| e.to_string()),
                false => Ok(()),
            },
            Step::HostKeys => {
                if c.regenerate_ssh_host_key_pair {
                    os.regenerate_ssh_host_key(c.ssh_host_key_pair_type)
                        .map_err(|e| e.to_string())?;
                }
                plan.fingerprint = Some(host_key_fingerprint(os, c)?);
                Ok(())
            }
            Step::RestartSshd => {
                if let Err(e) = os.restart_sshd() {
                    log::warn!("cannot restart sshd: {e}");
                }
                Ok(())
            }
        }
    }

    /// Steady state: look for a new incarnation, and keep what the
    /// Extension state needs from its ExtensionsConfig.
    fn poll_goal_state(&mut self) {
        if self.client.is_none() {
            match self.connect_quietly() {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    log::warn!("goal state poll: {e}");
                    return;
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match client.update_goal_state(false) {
            Ok(Some(g)) => {
                log::info!("new goal state: incarnation {}", g.goal_state.incarnation);
                self.remember_extensions(g.extensions_config.as_ref());
            }
            Ok(None) if self.status_blob.is_none() => {
                // A restart: the incarnation is the saved one; read its
                // ExtensionsConfig from Lib.Dir rather than fetch it again.
                let saved = client.saved_incarnation().and_then(|inc| {
                    std::fs::read_to_string(self.lib.join(format!("ExtensionsConfig.{inc}.xml")))
                        .ok()
                });
                if let Some(text) = saved {
                    match ExtensionsConfig::parse(&text) {
                        Ok(ec) => self.remember_extensions(Some(&ec)),
                        Err(e) => log::warn!("saved {e}"),
                    }
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("goal state poll: {e}"),
        }
    }

    fn remember_extensions(&mut self, ec: Option<&ExtensionsConfig>) {
        self.status_blob = ec.and_then(|e| e.status_upload_blob.clone());
        self.in_svd_seq_no = ec
            .and_then(|e| e.in_vm_goal_state_metadata.as_ref())
            .and_then(|m| m.in_svd_seq_no);
    }

    /// The agent's status to the status blob; a failure is logged and the
    /// next period tries again.
    fn upload_status(&mut self) {
        let (Some(blob), Some(client)) = (self.status_blob.clone(), self.client.as_mut()) else {
            return;
        };
        let distro = &self.os.env().distro;
        let agent = AgentStatus {
            os_name: distro.id.clone(),
            os_version: distro.version.clone(),
            computer_name: self.os.hostname().unwrap_or_default(),
            in_svd_seq_no: self.in_svd_seq_no,
        };
        let body = aggregate_status(&agent, std::time::SystemTime::now());
        match client.upload_status(&blob, body.as_bytes()) {
            Ok(()) => log::debug!("status uploaded"),
            Err(e) => log::warn!("cannot upload the status blob: {e}"),
        }
    }

    /// A client for an already-provisioned VM (no forced fetch).
    fn connect_quietly(&self) -> Result<WireClient, String> {
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

/// The host key fingerprint the fabric gets (§6.9): field 2 of
/// `ssh-keygen -lf` with the colons removed (`SHA256…` with OpenSSH ≥ 6.8).
pub fn host_key_fingerprint(os: &dyn OsUtil, config: &Config) -> Result<String, String> {
    let kind = match config.ssh_host_key_pair_type {
        SshHostKeyType::Auto => "rsa".to_string(),
        k => crate::config::OptionValue::show(&k),
    };
    let path: PathBuf = config.ssh_dir.join(format!("ssh_host_{kind}_key.pub"));
    if !Path::new(&path).exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    let out = os
        .env()
        .runner
        .run_ok(
            &Cmd::new("ssh-keygen")
                .arg("-lf")
                .arg(path.to_string_lossy()),
        )
        .map_err(|e| e.to_string())?;
    out.stdout
        .split_whitespace()
        .nth(1)
        .map(|f| f.replace(':', ""))
        .ok_or_else(|| format!("ssh-keygen printed no fingerprint for {}", path.display()))
}

#[cfg(test)]
mod tests;
