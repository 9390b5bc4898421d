//! `waagent -daemon`: one explicit state machine, one thread, one loop.
//!
//! Every state is a variant of [`State`]; [`Daemon::step`] performs the
//! state's I/O and returns the next state, and every transition is visible in
//! its single `match`. The loop in [`Daemon::run`] just steps until
//! [`State::Stopped`].
//!
//! First boot (§9.1): Boot → ReadMedia → Connect → [AwaitMedia] →
//! ReportStarting → Plan → Provision (one step per [`Step`]) →
//! MarkProvisioned → ReportReady → Steady (ReadMedia starts the DVD's
//! mount, Connect fetches the goal state meanwhile, AwaitMedia waits for
//! whatever of the mount is left). Everything that can be refused (the
//! document, the user, a key path, a thumbprint) is refused in Plan, before
//! the system changes, so a bad input ends in ReportFailed with nothing
//! half-made. A reboot with
//! `<lib>/provisioned` naming this VM goes from Boot straight to Steady and
//! reports nothing; a captured image (another instance id) provisions again.
//!
//! This file holds the states and the one `match`; the work they call is
//! beside it: `provisioning.rs` (the Plan and its Steps), `fabric.rs` (the
//! WireServer client, reports, the status blob), `environment.rs` (the
//! boot-time set-up and the steady state's monitors), `signals.rs`
//! (SIGTERM); the journal is `crate::journal`. It is over 600 lines because
//! the state machine is read as one: every state, every transition, and the
//! pure Boot decision that picks the first one.

mod environment;
mod fabric;
mod provisioning;
mod signals;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ProvisioningAgent};
use crate::ext::exec::Handling;
use crate::fsutil;
use crate::libdir;
use crate::os::HostKeyJob;
use crate::os::OsUtil;
use crate::ovf::{self, OvfEnv};
use crate::provision::media;
use crate::wire::client::{ClientOptions, FullGoalState, WireClient};
use crate::wire::crypto::{self, Transport};
use crate::wire::docs::ExtensionsConfig;
use crate::wire::docs::StatusUploadBlob;
use crate::wire::imds;
use crate::wire::reports::{Health, SubStatus};
use crate::wire::status::HandlerStatus;

pub use crate::journal::Journal;
use environment::Monitors;
use fabric::NotConnected;
pub use provisioning::{host_key_fingerprint, Plan, Step};
pub use signals::{install_handlers, stop_requested};
use timeline::{Phase, Timeline};

/// `<lib>/provisioned`: provisioning finished; holds the VM's instance id.
pub const PROVISIONED_FILE: &str = libdir::PROVISIONED;
/// `<lib>/disable_agent`: ovf-env said `ProvisionGuestAgent=false` (§8.3).
pub const DISABLE_AGENT_FILE: &str = libdir::DISABLE_AGENT;
/// The wait before Connect's next attempt: 1 s, then 2 s (a malformed or
/// stale answer, which the client does not retry, is usually gone by
/// then), then the base delay doubling each attempt, at most six times the
/// base (10 s … 60 s by default).
pub fn connect_backoff(base: Duration, attempt: u32) -> Duration {
    match attempt {
        0 | 1 => QUICK_RETRY.saturating_mul(attempt + 1).min(base),
        n => base
            .saturating_mul(1u32 << (n - 2).min(3))
            .min(base.saturating_mul(6)),
    }
}

/// The first wait after a failure the client did not retry (Connect's, a
/// goal-state poll's): a transient fault is recovered from within seconds,
/// while the back-off after it keeps waagent's patience.
const QUICK_RETRY: Duration = Duration::from_secs(1);

/// The goal-state poll period with `Extensions.Enabled=n`, as waagent's.
const EXTENSIONS_DISABLED_POLL_SECS: u64 = 300;

/// Test hook: `WAAGENT_RS_TEST_CRASH_AT=<State>` or `Provision:<Step>` makes
/// the daemon SIGKILL itself on entering that state, so crash-safety tests
/// can stop it at every step. Unset in production.
pub const CRASH_HOOK_ENV: &str = "WAAGENT_RS_TEST_CRASH_AT";

/// Waits and retry budgets: the production values, which the in-process
/// tests keep (on a virtual clock); the goal-state period comes from the
/// configuration.
#[derive(Debug, Clone)]
pub struct Timing {
    pub media: media::MountRetry,
    /// The pause between attempts to reach the fabric after the quick
    /// 1 and 2 s; it doubles up to six times this (waagent waits a flat
    /// 10 s, for an hour).
    pub connect_delay: Duration,
    pub client: ClientOptions,
    /// IMDS is asked this often, this patiently, for SSH keys.
    pub imds_tries: u32,
    pub imds_timeout_secs: u64,
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
    /// ovf-env.xml is being read from the provisioning media since
    /// ReadMedia ([`Daemon::media`]): one of the above once it is.
    Media,
}

/// ReadMedia's read of the provisioning media: running while Connect asks
/// the fabric for the goal state, then the job it makes.
enum MediaProgress {
    Reading(Box<media::MediaRead>),
    Read(Job),
}

/// What Boot decides from what it read: the mode, `<lib>/provisioned`
/// (the instance id it holds), this VM's instance id and whether a Ready
/// report is journalled (§9.2, §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDecision {
    /// `Provisioning.Agent=disabled`: report Ready, nothing else.
    ReportOnly,
    /// Provisioned and reported for this instance: nothing to do (a reboot).
    AlreadyDone,
    /// Provisioned for this instance but no Ready journalled (killed between
    /// `provisioned` and the report, or upgraded from waagent): report it.
    ReportReady,
    /// Provision (waagent or cloud-init, by the mode); `captured` when the
    /// previous instance's state must be forgotten first.
    Provision { captured: bool },
}

/// Boot's decision, without I/O. An empty `provisioned` (waagent 2.2.5
/// wrote none) or an unknown instance id counts as this instance.
pub fn boot_decision(
    mode: Mode,
    provisioned: Option<&str>,
    instance: Option<&str>,
    ready_reported: bool,
) -> BootDecision {
    if mode == Mode::Disabled {
        return BootDecision::ReportOnly;
    }
    let Some(saved) = provisioned else {
        return BootDecision::Provision { captured: false };
    };
    let same = saved.is_empty() || instance.is_none() || instance == Some(saved);
    match (same, ready_reported) {
        (true, true) => BootDecision::AlreadyDone,
        (true, false) => BootDecision::ReportReady,
        (false, _) => BootDecision::Provision { captured: true },
    }
}

/// The extensions goal state the Extension state works on: where the status
/// goes, which goal state it answers, its handlers being carried out, and
/// what to report of them.
pub struct ExtensionGoal {
    pub status_blob: StatusUploadBlob,
    pub in_svd_seq_no: Option<u64>,
    /// The incarnation it came with.
    pub incarnation: String,
    pub config: ExtensionsConfig,
    /// The artifacts profile holds the handlers (§13.11): asked again on
    /// every poll.
    pub on_hold: bool,
    /// The handlers being run; `None` when none may run here
    /// (`Extensions.Enabled=n`): then `not_run` says why of each.
    pub handling: Option<Handling>,
    pub not_run: Vec<HandlerStatus>,
    /// A newer goal state that arrived while handlers were running: taken
    /// up once they have settled (waagent finishes one before the next).
    pub pending: Option<Box<ExtensionGoal>>,
    /// A goal-state poll happened since the last upload: the status is due.
    pub upload_due: bool,
    /// Uploads that failed in a row: the first is tried again a second
    /// later, the rest at the next poll.
    pub failed_uploads: u32,
    /// The handler files the status was last made from.
    pub report_cache: crate::ext::report::ReportCache,
    /// The status document last uploaded (or tried), rebuilt only on a
    /// change; its handlers' statuses are uploaded again when they change.
    pub status_document: crate::wire::status::StatusDocument,
}

impl std::fmt::Debug for ExtensionGoal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtensionGoal")
            .field("in_svd_seq_no", &self.in_svd_seq_no)
            .field("handlers", &self.config.plugins.len())
            .finish()
    }
}

impl ExtensionGoal {
    /// Whether a handler command runs or a step is next.
    pub fn busy(&self) -> bool {
        self.handling.as_ref().is_some_and(|h| !h.is_settled())
    }
}

/// How soon a running extension command is looked at again: an eighth of
/// the time it has run, from 20 ms up to a second. Most install and enable
/// commands take well under a second, and waiting a whole second for each
/// doubled the time to the extension's first status; a long command still
/// costs one turn a second.
fn extension_tick(running_for: Option<Duration>) -> Duration {
    let ran = running_for.unwrap_or_default();
    (ran / 8).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// The longest one turn of the HostKeys (RestartSshd) step waits for the
/// host keys being made (sshd being restarted) before the loop comes round
/// again.
const HOST_KEYS_TICK: Duration = Duration::from_secs(1);

/// The longest one turn of AwaitMedia waits for the provisioning media.
const MEDIA_TICK: Duration = Duration::from_secs(1);

/// The daemon's states.
#[derive(Debug)]
pub enum State {
    /// Prepare Lib.Dir and decide what this boot must do.
    Boot,
    /// Start reading ovf-env.xml from the provisioning media (its mount
    /// runs while Connect fetches the goal state).
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
    /// The goal state is in hand: wait for ReadMedia's read of the media.
    AwaitMedia {
        goal: Box<FullGoalState>,
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
        /// The extensions goal state in force, once one has been read.
        extensions: Option<Box<ExtensionGoal>>,
    },
    /// Act on the extensions goal state: a step of its handlers, and the
    /// status to the status blob when due or changed.
    Extension {
        goal: Box<ExtensionGoal>,
        next_poll: Instant,
    },
    Stopped(i32),
}

impl State {
    /// Where the crash hook can stop: the state's name, with the step for
    /// Provision (`Provision:User`).
    pub fn crash_point(&self) -> String {
        match self {
            State::Provision { step, .. } => format!("Provision:{}", step.key()),
            other => other.name().to_string(),
        }
    }

    /// What the service manager shows (`systemctl status waagent`): the
    /// state, or the phase it belongs to, then what it does, in the
    /// protocol's words. Sent when it changes, so it changes only with
    /// what an admin would want to know.
    pub fn status(&self) -> String {
        let plural = |n: usize, what: &str| match n {
            0 => format!("no {what}s"),
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        match self {
            State::Boot => "Boot: preparing Lib.Dir and the VM's environment".into(),
            State::ReadMedia | State::AwaitMedia { .. } => {
                "Provisioning: reading ovf-env.xml from the provisioning media".into()
            }
            State::WaitForCloudInit { .. } => {
                "Provisioning: waiting for cloud-init to provide ovf-env.xml".into()
            }
            State::Connect { attempt: 0, .. } => {
                "Connect: fetching the goal state from the WireServer".into()
            }
            State::Connect { attempt, .. } => format!(
                "Connect: fetching the goal state from the WireServer (attempt {})",
                attempt + 1
            ),
            State::ReportStarting { .. } => {
                "Provisioning: reporting NotReady (Provisioning)".into()
            }
            State::Plan { .. } => "Provisioning: checking ovf-env.xml and the goal state".into(),
            State::Provision { step, .. } => format!("Provisioning: {}", step.describe()),
            State::WaitForHostKey { .. } => {
                "Provisioning: waiting for cloud-init's SSH host key".into()
            }
            State::MarkProvisioned { .. } => "Provisioning: marking the VM provisioned".into(),
            State::ReportReady { .. } => "Provisioning: reporting Ready".into(),
            State::ReportFailed { reason, .. } => format!("Provisioning failed: {reason}"),
            State::Steady {
                extensions: None, ..
            } => "Steady: polling the goal state".into(),
            State::Steady {
                extensions: Some(goal),
                ..
            }
            | State::Extension { goal, .. } => {
                let mut text = format!(
                    "Steady: incarnation {}, {}",
                    goal.incarnation,
                    plural(goal.config.plugins.len(), "handler")
                );
                if goal.busy() {
                    text.push_str(", handlers running");
                }
                text
            }
            State::Stopped(_) => "Stopping".into(),
        }
    }

    /// The variant's name, for the log.
    pub fn name(&self) -> &'static str {
        match self {
            State::Boot => "Boot",
            State::ReadMedia => "ReadMedia",
            State::WaitForCloudInit { .. } => "WaitForCloudInit",
            State::Connect { .. } => "Connect",
            State::AwaitMedia { .. } => "AwaitMedia",
            State::ReportStarting { .. } => "ReportStarting",
            State::Plan { .. } => "Plan",
            State::Provision { .. } => "Provision",
            State::WaitForHostKey { .. } => "WaitForHostKey",
            State::MarkProvisioned { .. } => "MarkProvisioned",
            State::ReportReady { .. } => "ReportReady",
            State::ReportFailed { .. } => "ReportFailed",
            State::Steady { .. } => "Steady",
            State::Extension { .. } => "Extension",
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
    /// `<lib>/disable_agent` (ProvisionGuestAgent=false): no status is
    /// uploaded. Read at Boot, set when provisioning writes it.
    agent_disabled: bool,
    /// The Extension state has acted on a goal state since start: polls go
    /// from `InitialGoalStatePeriod` to `GoalStatePeriod`.
    goal_state_handled: bool,
    /// Goal-state polls that failed in a row: the first is retried after
    /// [`QUICK_RETRY`], the rest wait the period.
    failed_polls: u32,
    monitors: Monitors,
    clock: Rc<dyn Clock>,
    /// ReadMedia's read of the provisioning media, until provisioning
    /// takes its job.
    media: Option<MediaProgress>,
    /// The provisioning media's drive, ejected once `provisioned` is written.
    media_device: Option<PathBuf>,
    /// Its `umount`, started once ovf-env.xml was read; over before the
    /// eject (or collected in Steady).
    media_unmount: Option<crate::os::Background>,
    /// Connect's client and its endpoint's source, while its goal-state
    /// fetch waits for the transport key (see `connect`).
    connecting: Option<(WireClient, Option<crate::wire::endpoint::Source>)>,
    /// The transport certificate, in hand or being generated since Boot,
    /// until a client takes it.
    transport: Option<Transport>,
    /// New SSH host keys being made since ovf-env.xml was read, until HostKeys
    /// collects them.
    host_keys: Option<HostKeyJob>,
    /// sshd being restarted since HostKeys, until RestartSshd collects it.
    sshd_restart: Option<crate::os::Background>,
    /// The way to the final report, for its log line.
    timeline: Timeline,
    /// Why provisioning failed in this run, which Steady's status keeps
    /// showing.
    failure: Option<String>,
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
            agent_disabled: false,
            goal_state_handled: false,
            failed_polls: 0,
            monitors: Monitors::default(),
            clock: Rc::new(SystemClock),
            media: None,
            media_device: None,
            media_unmount: None,
            connecting: None,
            transport: None,
            host_keys: None,
            sshd_restart: None,
            timeline: Timeline::new(Instant::now()),
            failure: None,
        }
    }

    /// Takes its time from `clock` (and waits on it), instead of the
    /// system's: the tests' virtual clock.
    pub fn with_clock(mut self, clock: Rc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs from Boot until stopped; returns the exit code. Under systemd
    /// (`crate::notify`) it says READY=1 as the loop starts, each state's
    /// [`State::status`] when it changes and WATCHDOG=1 as the loop turns.
    pub fn run(&mut self) -> i32 {
        let crash_at = std::env::var(CRASH_HOOK_ENV).ok();
        if let Some(path) = &self.config.debug_hang_file {
            crate::notify::set_hang_file(path);
        }
        crate::notify::ready();
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
                crate::notify::stopping();
                log::info!("daemon stopped");
                return code;
            }
            // Test fault Debug.HangFile: no turn, no ping while it exists.
            if !crate::notify::hold_while_hung() {
                state = State::Stopped(0);
                continue;
            }
            crate::notify::status(&self.status(&state));
            crate::notify::keepalive();
            if stop_requested() {
                // Between steps (a wait would have ended in Stopped itself).
                log::info!("stop requested in state {}", state.name());
                state = State::Stopped(0);
                continue;
            }
            log::debug!("state {}", state.name());
            state = self.step(state);
        }
    }

    /// Performs `state`'s work and returns the next state.
    pub fn step(&mut self, state: State) -> State {
        match state {
            State::Boot => {
                self.timeline = Timeline::new(self.clock.now());
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
                let provisioned = self.read_lib(PROVISIONED_FILE);
                let instance = self.os.instance_id();
                let decision = boot_decision(
                    mode,
                    provisioned.as_deref(),
                    instance.as_deref(),
                    ready_reported,
                );
                if decision == (BootDecision::Provision { captured: true }) {
                    log::info!(
                        "provisioned for instance {}, but this is {}: a captured image; provisioning again",
                        provisioned.unwrap_or_default(),
                        instance.unwrap_or_default()
                    );
                    self.forget_previous_instance(mode == Mode::CloudInit);
                }
                self.agent_disabled = self.lib.join(DISABLE_AGENT_FILE).exists();
                // Before anything else: the RSA key takes longer than the
                // DVD and the goal state together.
                self.start_transport();
                let report_only = State::Connect {
                    job: Job::ReportOnly,
                    attempt: 0,
                };
                match decision {
                    BootDecision::ReportOnly => report_only,
                    BootDecision::AlreadyDone => {
                        log::info!("already provisioned; nothing to report");
                        State::Steady {
                            next_poll: self.clock.now(),
                            extensions: None,
                        }
                    }
                    BootDecision::ReportReady => {
                        log::info!("provisioned, but no Ready report is journalled; reporting it");
                        report_only
                    }
                    BootDecision::Provision { .. } if mode == Mode::CloudInit => {
                        State::WaitForCloudInit {
                            since: self.clock.now(),
                        }
                    }
                    BootDecision::Provision { .. } => State::ReadMedia,
                }
            }

            State::ReadMedia => {
                let now = self.clock.now();
                self.timeline.begin(Phase::Dvd, now);
                // Started, not waited for: the mount runs while Connect
                // asks for the goal state, which needs nothing from it.
                let read = media::MediaRead::start(
                    &*self.os,
                    &self.config.dvd_mount_point,
                    self.timing.media,
                    now,
                );
                self.media = Some(match read {
                    Ok(read) => MediaProgress::Reading(Box::new(read)),
                    Err(e) => {
                        self.timeline.end(Phase::Dvd, now);
                        MediaProgress::Read(Job::Fail(format!("provisioning media: {e}")))
                    }
                });
                self.advance_media();
                State::Connect {
                    job: Job::Media,
                    attempt: 0,
                }
            }

            State::WaitForCloudInit { since } => {
                let path = self.lib.join(libdir::OVF_ENV);
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

            State::Connect { job, attempt } => {
                // A mount that has finished is read (and unmounted) now,
                // even while the fabric keeps failing.
                self.advance_media();
                match self.connect() {
                    Ok(goal) => {
                        self.note_fetch_times();
                        let goal = Box::new(goal);
                        log::info!(
                            "goal state incarnation {}, container {}",
                            goal.goal_state.incarnation,
                            goal.goal_state.container_id
                        );
                        self.advance_media();
                        self.start_job(job, goal)
                    }
                    Err(NotConnected::TransportPending) => {
                        // The goal state has Certificates, the transport key
                        // is not made yet, and the media's mount is still
                        // running: wait for the mount (a tick at most), so the
                        // host keys start once it is over, then finish the
                        // fetch (waiting for the key).
                        if !self.wait_for_media() {
                            return State::Stopped(0);
                        }
                        self.advance_media();
                        State::Connect { job, attempt }
                    }
                    Err(NotConnected::Failed(e)) => {
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
                }
            }

            State::AwaitMedia { goal } => {
                self.advance_media();
                if !self.media_reading() {
                    return self.start_job(Job::Media, goal);
                }
                if !self.wait_for_media() {
                    return State::Stopped(0);
                }
                State::AwaitMedia { goal }
            }

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
                    // start_job takes the media's job first.
                    Job::Media => State::AwaitMedia { goal },
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
                let key = step.key();
                // A step a killed daemon finished is not redone. HostKeys
                // still runs its check, as Plan needs its fingerprint.
                let done = self.journal.as_ref().is_some_and(|j| j.step_done(key));
                let phase = match step {
                    Step::HostKeys => Some(Phase::HostKeys),
                    Step::RestartSshd => Some(Phase::Sshd),
                    Step::HostName | Step::SshdConfig => None,
                    _ => Some(Phase::User),
                };
                if let Some(p) = phase {
                    self.timeline.begin(p, self.clock.now());
                }
                // The host keys (sshd's restart) are collected once their
                // children have finished; until then a turn waits for them,
                // a tick at most, and the loop comes round again.
                let ready = match step {
                    Step::HostKeys if !done && self.config.regenerate_ssh_host_key_pair => {
                        self.await_host_keys(&plan.ovf)
                    }
                    Step::RestartSshd if !done => Ok(self.await_sshd_restart()),
                    _ => Ok(true),
                };
                match ready {
                    Ok(true) => {}
                    Ok(false) => return State::Provision { plan, goal, step },
                    Err(reason) => {
                        self.end_phase(phase);
                        return State::ReportFailed { goal, reason };
                    }
                }
                if done && step != Step::HostKeys {
                    log::info!(
                        "provisioning: {} was done before a restart",
                        step.describe()
                    );
                } else {
                    log::info!("provisioning: {}", step.describe());
                    let result = if done {
                        host_key_fingerprint(&self.config).map(|fp| plan.fingerprint = Some(fp))
                    } else {
                        self.provision_step(step, &mut plan)
                    };
                    if let Err(e) = result {
                        self.end_phase(phase);
                        return State::ReportFailed {
                            goal,
                            reason: format!("{}: {e}", step.describe()),
                        };
                    }
                    if let Some(Err(e)) = self.journal.as_mut().map(|j| j.record_step(key)) {
                        log::warn!("{e}");
                    }
                }
                self.end_phase(phase);
                if step == Step::HostKeys {
                    self.start_sshd_restart();
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

            State::WaitForHostKey { goal, since } => match host_key_fingerprint(&self.config) {
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
            },

            State::MarkProvisioned {
                goal,
                fingerprint,
                disable_agent,
            } => {
                let id = self.os.instance_id().unwrap_or_default();
                if let Err(e) = self.write_lib(PROVISIONED_FILE, &id, 0o644) {
                    return State::ReportFailed { goal, reason: e };
                }
                // Only now: a daemon killed before `provisioned` was written
                // reads the media again.
                if let Some(child) = self.media_unmount.take() {
                    media::finish_unmount(child, &*self.clock);
                }
                if let Some(device) = self.media_device.take() {
                    media::eject(&*self.os, &device);
                }
                if disable_agent {
                    self.agent_disabled = true;
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
                if self.final_report(&goal, &Health::Ready) {
                    let inc = goal.goal_state.incarnation.clone();
                    if let Some(Err(e)) = self.journal.as_mut().map(|j| j.record_ready(&inc)) {
                        log::warn!("{e}");
                    }
                }
                if let (Some(fp), Some(client), Ok(target)) =
                    (&fingerprint, self.client.as_mut(), goal.report_target())
                {
                    if let Err(e) = client.report_role_properties(&target, fp) {
                        log::warn!("cannot report the SSH host key fingerprint: {e}");
                    }
                }
                // The extensions are asked for at once, as waagent's
                // extension handler does when it starts, not a period later.
                State::Steady {
                    next_poll: self.clock.now(),
                    extensions: None,
                }
            }

            State::ReportFailed { goal, reason } => {
                log::error!("provisioning failed: {reason}");
                self.failure = Some(reason.clone());
                // The next start redoes everything: what failed may be input.
                if let Some(Err(e)) = self.journal.as_mut().map(Journal::clear_steps) {
                    log::warn!("{e}");
                }
                // Host keys being made are not wanted any more.
                self.host_keys = None;
                self.final_report(
                    &goal,
                    &Health::NotReady {
                        sub_status: SubStatus::ProvisioningFailed,
                        description: reason,
                    },
                );
                State::Steady {
                    next_poll: self.clock.now() + self.poll_period(),
                    extensions: None,
                }
            }

            State::Steady {
                next_poll,
                mut extensions,
            } => {
                // A handler command runs: look at it every tick, and poll
                // the goal state only when that is due.
                let now = self.clock.now();
                let wake = match extensions.as_ref() {
                    Some(g) if g.busy() => {
                        let ran = g.handling.as_ref().and_then(|h| h.running_for(now));
                        next_poll.min(now + extension_tick(ran))
                    }
                    // A failed upload is tried again a second later, once.
                    Some(g) if g.failed_uploads == 1 => next_poll.min(now + QUICK_RETRY),
                    _ => next_poll,
                };
                let wait = wake.saturating_duration_since(self.clock.now());
                if !self.idle(wait) {
                    return State::Stopped(0);
                }
                let mut next_poll = next_poll;
                // A transport certificate nobody needed yet, once made; an
                // sshd restart a failed provisioning left running, once over.
                if let Some(c) = self.client.as_mut() {
                    c.poll_transport();
                }
                let now = self.clock.now();
                if let Some(c) = self.sshd_restart.as_mut() {
                    if c.poll(now) != crate::os::Poll::Running {
                        self.sshd_restart = None;
                    }
                }
                if let Some(c) = self.media_unmount.as_mut() {
                    if c.poll(now) != crate::os::Poll::Running {
                        self.media_unmount = None;
                    }
                }
                if self.clock.now() >= next_poll {
                    if self.manages_environment() {
                        self.run_monitors();
                    }
                    extensions = self.poll_goal_state(extensions);
                    self.sync_lb_probe();
                    if self.manages_environment() {
                        self.set_up_rdma();
                    }
                    if let Some(g) = extensions.as_mut() {
                        g.upload_due = true;
                    }
                    next_poll = self.clock.now()
                        + match self.failed_polls {
                            1 => QUICK_RETRY.min(self.poll_period()),
                            _ => self.poll_period(),
                        };
                }
                match extensions {
                    Some(goal) if !self.agent_disabled => State::Extension { goal, next_poll },
                    extensions => State::Steady {
                        next_poll,
                        extensions,
                    },
                }
            }

            State::Extension {
                mut goal,
                next_poll,
            } => {
                self.handle_extensions(&mut goal);
                // The first goal state handled: polls go to their regular period.
                let next_poll = match self.goal_state_handled {
                    true => next_poll,
                    false => {
                        self.goal_state_handled = true;
                        self.clock.now() + self.poll_period()
                    }
                };
                State::Steady {
                    next_poll,
                    extensions: Some(goal),
                }
            }

            State::Stopped(code) => State::Stopped(code),
        }
    }

    /// What systemd shows for `state`: [`State::status`], and in Steady
    /// why provisioning failed, if it did.
    fn status(&self, state: &State) -> String {
        let text = state.status();
        match (&self.failure, state) {
            (Some(why), State::Steady { .. } | State::Extension { .. }) => {
                format!("{text}; provisioning failed: {why}")
            }
            _ => text,
        }
    }

    fn end_phase(&mut self, phase: Option<Phase>) {
        if let Some(p) = phase {
            self.timeline.end(p, self.clock.now());
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
                if self.os.provisioning_disabled_means_cloud_init() {
                    Mode::CloudInit
                } else {
                    Mode::Disabled
                }
            }
            ProvisioningAgent::Auto if self.os.is_cloud_init_enabled() => Mode::CloudInit,
            ProvisioningAgent::Auto => Mode::Waagent,
        }
    }

    /// The host key fingerprint of a VM provisioned before this start
    /// (Ready not yet reported): reported with Ready, as it would have
    /// been. None with `Provisioning.Agent=disabled`, which reports no key.
    fn provisioned_fingerprint(&self) -> Option<String> {
        match self.mode() {
            Mode::Disabled => None,
            _ => host_key_fingerprint(&self.config).ok(),
        }
    }

    /// The wait between goal-state polls (§15 timers table).
    fn poll_period(&self) -> Duration {
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
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tick_tests {
    use super::extension_tick;
    use std::time::Duration;

    #[test]
    fn a_running_command_is_looked_at_soon_then_once_a_second() {
        let ms = |n| Duration::from_millis(n);
        // Just started (or adopted, its start unknown): soon.
        assert_eq!(extension_tick(None), ms(20));
        assert_eq!(extension_tick(Some(ms(0))), ms(20));
        // An eighth of the time it has run: a command that ends within a
        // second is noticed within 1/8 of its run time (or 20 ms).
        assert_eq!(extension_tick(Some(ms(400))), ms(50));
        // A long command: once a second, as before.
        assert_eq!(extension_tick(Some(ms(8_000))), ms(1000));
        assert_eq!(extension_tick(Some(Duration::from_secs(3600))), ms(1000));
    }
}

#[cfg(test)]
mod status_tests {
    use super::{Job, State};

    #[test]
    fn status_texts_begin_with_the_state() {
        assert_eq!(
            State::Boot.status(),
            "Boot: preparing Lib.Dir and the VM's environment"
        );
        let connect = |attempt| State::Connect {
            job: Job::ReportOnly,
            attempt,
        };
        assert_eq!(
            connect(0).status(),
            "Connect: fetching the goal state from the WireServer"
        );
        assert_eq!(
            connect(2).status(),
            "Connect: fetching the goal state from the WireServer (attempt 3)"
        );
        let steady = State::Steady {
            next_poll: std::time::Instant::now(),
            extensions: None,
        };
        assert_eq!(steady.status(), "Steady: polling the goal state");
        assert_eq!(State::Stopped(0).status(), "Stopping");
    }
}
