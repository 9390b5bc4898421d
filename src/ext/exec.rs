//! Carrying out an extensions goal state, one step per turn of the daemon's
//! loop (the `RdmaSetup::poll` pattern): [`Handling::poll`] does what can be
//! done at once (a download, a file) and starts at most one command, which
//! later turns look at until it exits or its deadline passes. A failing or
//! hanging handler fails alone: the loop, its status uploads and the other
//! handlers go on.
//!
//! A command runs as `/bin/sh -c 'sh -c "$1"; c=$?; echo $c > "$2"; exit $c'`
//! with `$1` the handler's own command line (§13.4, as waagent runs it) and
//! `$2` a file in the handler's `config/`: the exit code outlives a daemon
//! killed meanwhile, so a restarted daemon adopts the command's outcome
//! instead of running it twice. `config/Running` says which command is under
//! way until its outcome is taken.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::handler::{self, HandlerManifest};
use super::package;
use super::plan::{
    self, enable_ops, select_version, Command, HandlerState, Installed, Op, Task, UpdatePolicy,
    VersionRule, Wanted,
};
use crate::config::Config;
use crate::fsutil;
use crate::os::{Background, Cmd, OsUtil, Placement, Poll};
use crate::wire::client::WireClient;
use crate::wire::docs::{ExtensionManifest, ExtensionsConfig, Plugin};

/// The most a manifest may be; it lists versions and URLs.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The most a package may be, downloaded.
const MAX_PACKAGE_BYTES: u64 = 256 << 20;
/// The file that says a command is under way (`config/Running`).
const RUNNING_FILE: &str = "Running";

// ExtensionErrorCodes (what CRP understands of a failure).
/// `PluginManifestDownloadError`.
const MANIFEST_FAILED: i64 = 1001;
/// `PluginPackageDownloadFailed` (and extraction, which follows it).
const PACKAGE_FAILED: i64 = 1004;
/// `PluginHandlerScriptTimedout`.
const TIMED_OUT: i64 = 1011;
/// `PluginDisableProcessingFailed`: CRP has no code of its own for uninstall.
const UNINSTALL_FAILED: i64 = 1010;

/// The code of a failing command.
fn code_for(command: Command) -> i64 {
    match command {
        Command::Install => 1007,
        Command::Update => 1008,
        Command::Enable => 1009,
        Command::Disable | Command::Uninstall => 1010,
    }
}

/// A URL for the log: its query (a SAS token) cut off.
fn redact_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// The package's `HandlerManifest.json`, in the handler's base directory.
fn read_manifest(dir: &Path) -> Result<HandlerManifest, String> {
    HandlerManifest::read(dir).map_err(|e| e.to_string())
}

/// Copies `mrseq` and `status/*` of the old version into the new one
/// (§13.9); what is missing is skipped.
fn carry_over(from: &Path, to: &Path) {
    let _ = std::fs::copy(from.join("mrseq"), to.join("mrseq"));
    if let Ok(entries) = std::fs::read_dir(from.join("status")) {
        let _ = std::fs::create_dir_all(to.join("status"));
        for e in entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        {
            let _ = std::fs::copy(e.path(), to.join("status").join(e.file_name()));
        }
    }
}

/// What [`Handling::poll`] needs from the daemon for one turn.
pub struct Context<'a> {
    pub os: &'a dyn OsUtil,
    pub client: &'a mut WireClient,
    pub config: &'a Config,
    /// The daemon's clock.
    pub now: Instant,
}

/// Where the handling of a goal state stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More to do: poll again soon (a command runs, or a step is next).
    Busy,
    /// Every task is done; statuses are final for this goal state.
    Settled,
}

/// The outcome of a handler's task, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Enabled at this version.
    Enabled {
        version: String,
    },
    Disabled {
        version: String,
    },
    Uninstalled,
    /// Failed, with the ExtensionErrorCodes value and a message.
    Failed {
        version: String,
        code: i64,
        message: String,
        /// The command that failed was an enable (or install before it):
        /// CRP is also told through the extension's status.
        enabling: bool,
    },
}

/// One extensions goal state being carried out.
pub struct Handling {
    /// `inSvdSeqNo`/incarnation this handling answers.
    pub incarnation: String,
    lib: PathBuf,
    plugins: Vec<Plugin>,
    tasks: VecDeque<Task>,
    current: Option<Current>,
    /// Handler name → the outcome of its task in this goal state.
    outcomes: Vec<(String, Outcome)>,
}

/// The task under way and the steps left.
struct Current {
    task: Task,
    /// The version being worked on, once known.
    version: Option<String>,
    ops: VecDeque<Op>,
    running: Option<Running>,
    /// Exit codes the update environment passes on (§13.10).
    disable_code: Option<i32>,
    uninstall_code: Option<i32>,
    /// The old version, during an update.
    from_version: Option<String>,
    policy: UpdatePolicy,
    /// The version whose enable a killed daemon left running, adopted and
    /// finished well: it was this goal state's enable, not to be run twice.
    adopted_enable: Option<String>,
}

/// A command under way: started by us, or adopted after a restart.
struct Running {
    version: String,
    command: Command,
    exit_file: PathBuf,
    child: Option<Background>,
    /// When this daemon started it or found it running.
    since: Instant,
    deadline: Instant,
}

impl Handling {
    /// The tasks for `ec` given what is installed under `lib`.
    pub fn new(incarnation: &str, ec: &ExtensionsConfig, lib: &Path) -> Handling {
        let on_disk = installed_handlers(lib);
        let tasks = plan::plan(&Wanted::from_config(ec), &on_disk);
        log::info!(
            "extensions goal state {incarnation}: {} handler(s), {} task(s)",
            ec.plugins.len(),
            tasks.len()
        );
        Handling {
            incarnation: incarnation.to_string(),
            lib: lib.to_path_buf(),
            plugins: ec.plugins.clone(),
            tasks: tasks.into(),
            current: None,
            outcomes: Vec::new(),
        }
    }

    pub fn is_settled(&self) -> bool {
        self.current.is_none() && self.tasks.is_empty()
    }

    /// How long the command under way has been running, if one is.
    pub fn running_for(&self, now: Instant) -> Option<Duration> {
        let run = self.current.as_ref()?.running.as_ref()?;
        Some(now.saturating_duration_since(run.since))
    }

    /// The handlers whose task failed in this goal state.
    pub fn failed(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The outcome of `name`'s task, once it is done.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
    }

    /// Does what can be done now: steps that need no command, until a
    /// command is started or is still running, or everything is done.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Progress {
        // Bounded: each pass either finishes a step or returns.
        for _ in 0..64 {
            if self.current.is_none() {
                let Some(task) = self.tasks.pop_front() else {
                    return Progress::Settled;
                };
                self.current = Some(self.begin(task, cx));
            }
            match self.advance(cx) {
                Step::Continue => {}
                Step::Wait => return Progress::Busy,
                Step::Done(outcome) => {
                    let cur = self.current.take().expect("a task under way");
                    log::info!("extension {}: {}", cur.task.name(), describe(&outcome));
                    let name = cur.task.name().to_string();
                    self.outcomes.retain(|(n, _)| *n != name);
                    self.outcomes.push((name, outcome));
                }
            }
        }
        Progress::Busy
    }

    fn plugin(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    fn dir(&self, name: &str, version: &str) -> PathBuf {
        self.lib.join(format!("{name}-{version}"))
    }

    /// Sets up a task: a command a killed daemon left running is adopted;
    /// an enable resolves its version (manifest, download, unpack) and
    /// lists its steps.
    fn begin(&self, task: Task, cx: &mut Context<'_>) -> Current {
        let mut cur = Current {
            task,
            version: None,
            ops: VecDeque::new(),
            running: None,
            disable_code: None,
            uninstall_code: None,
            from_version: None,
            policy: UpdatePolicy::default(),
            adopted_enable: None,
        };
        match cur.task.clone() {
            Task::Refuse { .. } => {}
            Task::Disable { installed } => {
                cur.version = Some(installed.version.clone());
                cur.ops = VecDeque::from([
                    Op::Run {
                        version: installed.version.clone(),
                        command: Command::Disable,
                    },
                    Op::SetState {
                        version: installed.version,
                        state: HandlerState::Installed,
                    },
                ]);
            }
            Task::Uninstall { installed, .. } => {
                let v = installed.version.clone();
                cur.version = Some(v.clone());
                if installed.state == HandlerState::Enabled {
                    cur.ops.push_back(Op::Run {
                        version: v.clone(),
                        command: Command::Disable,
                    });
                }
                cur.ops.push_back(Op::Run {
                    version: v.clone(),
                    command: Command::Uninstall,
                });
                cur.ops.push_back(Op::Delete { version: v });
            }
            Task::Enable { .. } => {}
        }
        // A command a killed daemon left running is adopted, whatever the task.
        cur.running = self.adopt(cur.task.name(), cx);
        cur
    }

    /// One step of the current task.
    fn advance(&mut self, cx: &mut Context<'_>) -> Step {
        let task = match &self.current {
            Some(c) => c.task.clone(),
            None => return Step::Continue,
        };
        if let Task::Refuse {
            version, reason, ..
        } = &task
        {
            return Step::Done(Outcome::Failed {
                version: version.clone(),
                code: crate::wire::status::CODE_ENABLE_FAILED,
                message: reason.clone(),
                enabling: true,
            });
        }
        // A command under way: look at it.
        if self.current.as_ref().is_some_and(|c| c.running.is_some()) {
            return self.check_running(cx);
        }
        // An enable whose version is not known yet: resolve it.
        if let Task::Enable {
            name,
            requested,
            installed,
        } = &task
        {
            if self.current.as_ref().is_some_and(|c| c.version.is_none()) {
                return match self.resolve(name, requested, installed.as_ref(), cx) {
                    Ok(()) => Step::Continue,
                    Err((code, message)) => Step::Done(Outcome::Failed {
                        version: requested.clone(),
                        code,
                        message,
                        enabling: true,
                    }),
                };
            }
        }
        let Some(op) = self.current.as_mut().and_then(|c| c.ops.pop_front()) else {
            return Step::Done(self.finished(&task));
        };
        match self.perform(&task, op, cx) {
            Ok(()) => Step::Continue,
            Err(failure) => Step::Done(failure),
        }
    }

    /// What a task that ran all its steps achieved.
    fn finished(&self, task: &Task) -> Outcome {
        let version = self
            .current
            .as_ref()
            .and_then(|c| c.version.clone())
            .unwrap_or_default();
        match task {
            Task::Enable { .. } => Outcome::Enabled { version },
            Task::Disable { .. } => Outcome::Disabled { version },
            Task::Uninstall { .. } => Outcome::Uninstalled,
            Task::Refuse { .. } => unreachable_refuse(),
        }
    }
}

/// What one [`Handling::advance`] achieved.
enum Step {
    /// A step is done; the next may follow at once.
    Continue,
    /// A command runs: come back on a later turn.
    Wait,
    /// The task is over.
    Done(Outcome),
}

fn unreachable_refuse() -> Outcome {
    // Refuse tasks end in advance() before any step; kept total.
    Outcome::Failed {
        version: String::new(),
        code: crate::wire::status::CODE_ENABLE_FAILED,
        message: "refused".into(),
        enabling: true,
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Enabled { version } => format!("enabled {version}"),
        Outcome::Disabled { version } => format!("disabled {version}"),
        Outcome::Uninstalled => "uninstalled".into(),
        Outcome::Failed {
            version,
            code,
            message,
            ..
        } => format!("{version} failed ({code}): {message}"),
    }
}

/// The handler directories under `lib` (`{Name}-{Version}`, §13.3) and
/// their states. Names with a `-` are not handler names (waagent relies on
/// the same); anything else in Lib.Dir is ignored.
pub fn installed_handlers(lib: &Path) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return Vec::new();
    };
    let mut found: Vec<Installed> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let dir = e.file_name().to_string_lossy().into_owned();
            let (name, version) = dir.rsplit_once('-')?;
            let ok = !name.is_empty()
                && !name.contains('-')
                && !version.is_empty()
                && version
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            ok.then(|| Installed {
                name: name.to_string(),
                version: version.to_string(),
                state: read_state(&e.path()),
            })
        })
        .collect();
    found.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then(plan::compare_versions(&a.version, &b.version))
    });
    found
}

/// `config/HandlerState` of a handler directory.
pub fn read_state(dir: &Path) -> HandlerState {
    handler::read_handler_state(&dir.join("config"))
}

fn write_state(dir: &Path, state: HandlerState) -> Result<(), String> {
    handler::write_handler_state(&dir.join("config"), state)
        .map_err(|e| format!("{}/config/HandlerState: {e}", dir.display()))
}

/// The command line the package gives for `command`.
fn command_line(m: &HandlerManifest, command: Command) -> Option<&str> {
    match command {
        Command::Enable => Some(m.enable.as_str()),
        Command::Install => m.install.as_deref(),
        Command::Disable => m.disable.as_deref(),
        Command::Uninstall => m.uninstall.as_deref(),
        Command::Update => m.update.as_deref(),
    }
}

impl Handling {
    /// Picks the version from the manifest, downloads and unpacks it if it
    /// is not there, and lists the steps (§13.4, §13.8, §13.9).
    fn resolve(
        &mut self,
        name: &str,
        requested: &str,
        installed: Option<&Installed>,
        cx: &mut Context<'_>,
    ) -> Result<(), (i64, String)> {
        use crate::wire::status::CODE_ENABLE_FAILED;
        // Already installed at a version an exact request matches: no
        // manifest. Minor upgrades must look for a newer one.
        let rule = self
            .plugin(name)
            .map_or(VersionRule::Exact, VersionRule::of);
        let version = match installed {
            Some(i)
                if rule == VersionRule::Exact
                    && select_version(requested, &[i.version.as_str()], rule).is_some() =>
            {
                i.version.clone()
            }
            _ => self.choose_version(name, requested, rule, cx)?,
        };
        let dir = self.dir(name, &version);
        let mut state = read_state(&dir);
        if matches!(
            state,
            HandlerState::NotInstalled | HandlerState::FailedUpgrade
        ) || !dir.join("HandlerManifest.json").is_file()
        {
            self.set_up(name, &version, cx)
                .map_err(|m| (PACKAGE_FAILED, m))?;
            state = HandlerState::NotInstalled;
        }
        let manifest = read_manifest(&dir).map_err(|m| (MANIFEST_FAILED, m))?;
        let policy = UpdatePolicy {
            install_after_update: manifest.update_with_install,
            continue_on_update_failure: manifest.continue_on_update_failure,
        };
        let old = installed.filter(|i| i.version != version);
        let mut ops = enable_ops(installed, &version, state, policy);
        let cur = self
            .current
            .as_mut()
            .ok_or((CODE_ENABLE_FAILED, "no task under way".to_string()))?;
        if cur.adopted_enable.as_deref() == Some(version.as_str()) {
            ops.retain(|op| {
                !matches!(
                    op,
                    Op::Run {
                        command: Command::Enable,
                        ..
                    }
                )
            });
        }
        cur.version = Some(version);
        cur.policy = policy;
        cur.from_version = old.map(|o| o.version.clone());
        cur.ops = ops.into();
        Ok(())
    }

    /// The newest manifest version `requested` matches; the manifest comes
    /// from the plugin's locations in order, each directly, then through
    /// the HostGAPlugin.
    fn choose_version(
        &self,
        name: &str,
        requested: &str,
        rule: VersionRule,
        cx: &mut Context<'_>,
    ) -> Result<String, (i64, String)> {
        let plugin = self
            .plugin(name)
            .ok_or((MANIFEST_FAILED, format!("{name} is not in the goal state")))?;
        let manifest = self
            .fetch_manifest(plugin, cx)
            .map_err(|m| (MANIFEST_FAILED, m))?;
        let versions: Vec<&str> = manifest
            .plugins
            .iter()
            .map(|p| p.version.as_str())
            .collect();
        select_version(requested, &versions, rule)
            .map(str::to_string)
            .ok_or_else(|| {
                (
                    MANIFEST_FAILED,
                    format!(
                        "the manifest of {name} lists no version {requested} (it has {})",
                        versions.join(", ")
                    ),
                )
            })
    }

    fn fetch_manifest(
        &self,
        plugin: &Plugin,
        cx: &mut Context<'_>,
    ) -> Result<ExtensionManifest, String> {
        let tmp = self.lib.join(format!(".{}.manifest.xml", plugin.name));
        let mut last = format!("{} has no manifest location", plugin.name);
        for uri in plugin.manifest_uris() {
            let _ = std::fs::remove_file(&tmp);
            let got = cx
                .client
                .download_artifact(uri, None, &tmp, MAX_MANIFEST_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|_| std::fs::read_to_string(&tmp).map_err(|e| e.to_string()))
                .and_then(|text| ExtensionManifest::parse(&text).map_err(|e| e.to_string()));
            let _ = std::fs::remove_file(&tmp);
            match got {
                Ok(m) => return Ok(m),
                Err(e) => {
                    log::warn!("manifest of {} from {}: {e}", plugin.name, redact_url(uri));
                    last = e;
                }
            }
        }
        Err(format!(
            "cannot get the manifest of {}: {last}",
            plugin.name
        ))
    }

    /// Downloads and unpacks `version` into `<lib>/{name}-{version}`, writes
    /// `HandlerEnvironment.json` and makes `config/` and `status/` (§13.4);
    /// its state is NotInstalled until install runs.
    fn set_up(&self, name: &str, version: &str, cx: &mut Context<'_>) -> Result<(), String> {
        let plugin = self
            .plugin(name)
            .ok_or_else(|| format!("{name} is not in the goal state"))?;
        let manifest = self.fetch_manifest(plugin, cx)?;
        let pkg = manifest
            .plugins
            .iter()
            .find(|p| p.version == version)
            .ok_or_else(|| format!("the manifest of {name} lists no version {version}"))?;
        let dir = self.dir(name, version);
        if dir.exists() {
            // A set-up that did not finish, or a failed upgrade: start over.
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let zip = self.lib.join(format!("{name}__{version}.zip"));
        let manifest_uri = plugin.manifest_uris().first().map(|s| s.to_string());
        let mut last =
            format!("cannot download {name} {version}: the manifest lists no package URI for it");
        let mut unpacked = false;
        for uri in &pkg.uris {
            let _ = std::fs::remove_file(&zip);
            if let Err(e) =
                cx.client
                    .download_artifact(uri, manifest_uri.as_deref(), &zip, MAX_PACKAGE_BYTES)
            {
                log::warn!("package {name} {version} from {}: {e}", redact_url(uri));
                last = format!("cannot download {name} {version}: {e}");
                continue;
            }
            if let Err(e) = package::unpack(&zip, &dir, &package::Limits::default()) {
                // What came whole over HTTP may still be a broken copy:
                // the HostGAPlugin's is tried, as waagent tries the other
                // channel when a zip does not open.
                log::warn!(
                    "package {name} {version} from {}: {e}; trying the HostGAPlugin",
                    redact_url(uri)
                );
                last = e.to_string();
                let _ = std::fs::remove_file(&zip);
                let again = cx.client.extension_artifact_to_file(
                    uri,
                    manifest_uri.as_deref(),
                    &zip,
                    MAX_PACKAGE_BYTES,
                );
                match again.map(|_| package::unpack(&zip, &dir, &package::Limits::default())) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        last = e.to_string();
                        continue;
                    }
                    Err(e) => {
                        log::warn!("package {name} {version} through the HostGAPlugin: {e}");
                        continue;
                    }
                }
            }
            unpacked = true;
            break;
        }
        let _ = std::fs::remove_file(&zip);
        if !unpacked {
            return Err(last);
        }
        for sub in ["config", "status"] {
            fsutil::ensure_dir(&dir.join(sub), 0o700)
                .map_err(|e| format!("{}/{sub}: {e}", dir.display()))?;
        }
        let log_dir = cx.config.extension_log_dir.join(name);
        let _ = fsutil::ensure_dir(&log_dir, 0o755);
        let env = handler::handler_environment_json(name, &dir, &log_dir);
        let p = dir.join("HandlerEnvironment.json");
        fsutil::write_atomic(&p, env.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        write_state(&dir, HandlerState::NotInstalled)
    }

    /// Carries out one step that is not waiting.
    fn perform(&mut self, task: &Task, op: Op, cx: &mut Context<'_>) -> Result<(), Outcome> {
        let name = task.name().to_string();
        let version_now = self
            .current
            .as_ref()
            .and_then(|c| c.version.clone())
            .unwrap_or_default();
        let fail = |code: i64, message: String| Outcome::Failed {
            version: version_now.clone(),
            code,
            message,
            enabling: matches!(task, Task::Enable { .. }),
        };
        match op {
            Op::WriteSettings { version } => self
                .write_settings(&name, &version)
                .map_err(|m| fail(crate::wire::status::CODE_ENABLE_FAILED, m)),
            Op::SetState { version, state } => write_state(&self.dir(&name, &version), state)
                .map_err(|m| fail(crate::wire::status::CODE_ENABLE_FAILED, m)),
            Op::CarryOver { from, to } => {
                carry_over(&self.dir(&name, &from), &self.dir(&name, &to));
                Ok(())
            }
            Op::Delete { version } => {
                let dir = self.dir(&name, &version);
                std::fs::remove_dir_all(&dir)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(|e| fail(UNINSTALL_FAILED, format!("{}: {e}", dir.display())))
            }
            Op::Run { version, command } => match self.start(&name, &version, command, cx) {
                Ok(Some(running)) => {
                    if let Some(c) = self.current.as_mut() {
                        c.running = Some(running);
                    }
                    Ok(())
                }
                // The package has no such command: nothing to run.
                Ok(None) => Ok(()),
                Err(m) => Err(fail(code_for(command), m)),
            },
        }
    }

    /// `config/{seq}.settings` for each extension of `name` (an empty
    /// `0.settings` without any, §13.5).
    fn write_settings(&self, name: &str, version: &str) -> Result<(), String> {
        let dir = self.dir(name, version).join("config");
        let settings = self
            .plugin(name)
            .map(|p| p.settings.clone())
            .unwrap_or_default();
        if settings.is_empty() {
            let p = dir.join("0.settings");
            return fsutil::write_atomic(&p, b"", 0o600)
                .map_err(|e| format!("{}: {e}", p.display()));
        }
        for s in &settings {
            let file = match &s.name {
                Some(ext) => format!("{ext}.{}.settings", s.seq_no),
                None => format!("{}.settings", s.seq_no),
            };
            let text = handler::settings_json(&s.runtime_settings).map_err(|e| e.to_string())?;
            let p = dir.join(file);
            fsutil::write_atomic(&p, text.as_bytes(), 0o600)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }

    /// Starts `command` of `name` `version` in the background; `None` when
    /// the package declares no such command.
    fn start(
        &self,
        name: &str,
        version: &str,
        command: Command,
        cx: &mut Context<'_>,
    ) -> Result<Option<Running>, String> {
        let dir = self.dir(name, version);
        let manifest = read_manifest(&dir)?;
        let Some(line) = command_line(&manifest, command) else {
            return Ok(None);
        };
        // waagent's `/bin/sh -c "{base}/{cmd}"`: its script is our $1.
        let (_, argv) = handler::shell_command(&dir, line).map_err(|e| e.to_string())?;
        let script = argv.last().cloned().unwrap_or_default();
        let exit_file = dir
            .join("config")
            .join(format!(".{}.exit", command.as_str()));
        let _ = std::fs::remove_file(&exit_file);
        let mut cmd = Cmd::new("/bin/sh")
            .arg("-c")
            .arg(r#"sh -c "$1"; c=$?; echo $c > "$2"; exit $c"#)
            .arg("waagent-extension")
            .arg(script)
            .arg(exit_file.to_string_lossy())
            .timeout(self.timeout(command, cx.config));
        for (k, v) in self.environment(name, version, command, cx) {
            cmd = cmd.env(k, v);
        }
        let log_dir = cx.config.extension_log_dir.join(name);
        let _ = fsutil::ensure_dir(&log_dir, 0o755);
        let placement = Placement {
            cwd: dir.clone(),
            stdout: log_dir.join(format!("{}.stdout", command.as_str())),
            stderr: log_dir.join(format!("{}.stderr", command.as_str())),
        };
        let deadline = cx.now + cmd.timeout;
        log::info!("extension {name} {version}: {}", command.as_str());
        let child = cx
            .os
            .env()
            .runner
            .start(&cmd, &placement, deadline)
            .map_err(|e| e.to_string())?;
        let marker = serde_json::json!({
            "command": command.as_str(),
            "version": version,
            "pid": child.pid(),
            "exitFile": exit_file.to_string_lossy(),
            "timeout": cmd.timeout.as_secs(),
        });
        let _ = fsutil::write_atomic(
            &dir.join("config").join(RUNNING_FILE),
            marker.to_string().as_bytes(),
            0o600,
        );
        Ok(Some(Running {
            version: version.to_string(),
            command,
            exit_file,
            child: Some(child),
            since: cx.now,
            deadline,
        }))
    }

    fn timeout(&self, command: Command, c: &Config) -> Duration {
        Duration::from_secs(match command {
            Command::Install => c.debug_extension_install_timeout,
            Command::Update => c.debug_extension_update_timeout,
            Command::Disable => c.debug_extension_disable_timeout,
            Command::Enable => c.debug_extension_enable_timeout,
            Command::Uninstall => c.debug_extension_uninstall_timeout,
        })
    }

    /// The environment of §13.10.
    fn environment(
        &self,
        name: &str,
        version: &str,
        command: Command,
        cx: &Context<'_>,
    ) -> Vec<(String, String)> {
        let cur = self.current.as_ref();
        let seq = self
            .plugin(name)
            .and_then(|p| p.settings.first())
            .map_or(0, |s| s.seq_no);
        let mut env = vec![
            (
                "AZURE_GUEST_AGENT_EXTENSION_PATH".to_string(),
                self.dir(name, version).to_string_lossy().into_owned(),
            ),
            (
                "AZURE_GUEST_AGENT_EXTENSION_VERSION".into(),
                version.to_string(),
            ),
            (
                "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS".into(),
                cx.client.endpoint().host.clone(),
            ),
            ("ConfigSequenceNumber".into(), seq.to_string()),
            (
                "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES".into(),
                r#"[{"Key":"ExtensionTelemetryPipeline","Value":"1.0"}]"#.into(),
            ),
        ];
        let code = |c: Option<i32>| c.map_or("NOT_RUN".to_string(), |c| c.to_string());
        match command {
            Command::Update => {
                let to = cur.and_then(|c| c.version.clone()).unwrap_or_default();
                env.push(("VERSION".into(), to));
                if let Some(from) = cur.and_then(|c| c.from_version.clone()) {
                    env.push(("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION".into(), from));
                }
                env.push((
                    "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE".into(),
                    code(cur.and_then(|c| c.disable_code)),
                ));
            }
            Command::Install | Command::Enable if cur.is_some_and(|c| c.from_version.is_some()) => {
                env.push((
                    "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE".into(),
                    code(cur.and_then(|c| c.uninstall_code)),
                ));
            }
            _ => {}
        }
        env
    }

    /// Looks at the command under way.
    fn check_running(&mut self, cx: &mut Context<'_>) -> Step {
        let Some(cur) = self.current.as_mut() else {
            return Step::Continue;
        };
        let Some(run) = cur.running.as_mut() else {
            return Step::Continue;
        };
        let result: Result<i32, String> = match run.child.as_mut() {
            Some(child) => match child.poll(cx.now) {
                Poll::Running => return Step::Wait,
                Poll::Exited(code) => Ok(code),
                Poll::TimedOut => Err(format!("{} timed out and was killed", run.command.as_str())),
            },
            // Adopted from a killed daemon: its exit file tells.
            None => match std::fs::read_to_string(&run.exit_file) {
                Ok(text) => Ok(text.trim().parse().unwrap_or(-1)),
                Err(_) if cx.now < run.deadline => return Step::Wait,
                Err(_) => Err(format!(
                    "{} (left running by a previous daemon) did not finish in time",
                    run.command.as_str()
                )),
            },
        };
        let Some(run) = cur.running.take() else {
            return Step::Continue;
        };
        let dir = self
            .lib
            .join(format!("{}-{}", cur.task.name(), run.version));
        let _ = std::fs::remove_file(dir.join("config").join(RUNNING_FILE));
        let _ = std::fs::remove_file(&run.exit_file);
        // An adopted command that succeeded: record what its own steps would
        // have recorded, so the plan does not run it again.
        if run.child.is_none() && result == Ok(0) {
            let implied = match run.command {
                Command::Install | Command::Disable => Some(HandlerState::Installed),
                Command::Enable => Some(HandlerState::Enabled),
                Command::Update | Command::Uninstall => None,
            };
            if let Some(state) = implied {
                let _ = write_state(&dir, state);
            }
            if run.command == Command::Enable {
                cur.adopted_enable = Some(run.version.clone());
            }
        }
        let name = cur.task.name().to_string();
        let fail = |code: i64, message: String, task: &Task| Outcome::Failed {
            version: run.version.clone(),
            code,
            message,
            enabling: matches!(task, Task::Enable { .. }),
        };
        match (result, run.command) {
            (Ok(0), Command::Disable) => {
                cur.disable_code = Some(0);
                Step::Continue
            }
            (Ok(0), Command::Uninstall) => {
                cur.uninstall_code = Some(0);
                Step::Continue
            }
            (Ok(0), _) => Step::Continue,
            // During an update, a failing old disable or uninstall is kept
            // as an exit code when the new package says to go on.
            (Ok(code), c @ (Command::Disable | Command::Uninstall))
                if cur.from_version.is_some() && cur.policy.continue_on_update_failure =>
            {
                log::warn!(
                    "extension {name}: {} exited {code}; continuing the update",
                    c.as_str()
                );
                match c {
                    Command::Disable => cur.disable_code = Some(code),
                    _ => cur.uninstall_code = Some(code),
                }
                Step::Continue
            }
            // An uninstall that was asked for: its failure is reported,
            // the directory still goes (§13.9).
            (Ok(code), Command::Uninstall) if matches!(cur.task, Task::Uninstall { .. }) => {
                log::warn!("extension {name}: uninstall exited {code}; removing it anyway");
                Step::Continue
            }
            (result, c) => {
                if c == Command::Update {
                    let new = cur.version.clone().unwrap_or_default();
                    let _ = write_state(
                        &self.lib.join(format!("{name}-{new}")),
                        HandlerState::FailedUpgrade,
                    );
                }
                let (code, message) = match result {
                    Ok(exit) => (
                        code_for(c),
                        format!("{} failed with exit code {exit}", c.as_str()),
                    ),
                    Err(message) => (TIMED_OUT, message),
                };
                let task = cur.task.clone();
                Step::Done(fail(code, message, &task))
            }
        }
    }

    /// A command `name`'s handler was running when the daemon was killed:
    /// read from `config/Running` in its directories.
    fn adopt(&self, name: &str, cx: &Context<'_>) -> Option<Running> {
        for i in installed_handlers(&self.lib)
            .iter()
            .filter(|i| i.name == name)
        {
            let dir = self.dir(name, &i.version);
            let marker = dir.join("config").join(RUNNING_FILE);
            let Ok(text) = std::fs::read_to_string(&marker) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let command = match v["command"].as_str() {
                Some("install") => Command::Install,
                Some("enable") => Command::Enable,
                Some("disable") => Command::Disable,
                Some("uninstall") => Command::Uninstall,
                Some("update") => Command::Update,
                _ => {
                    let _ = std::fs::remove_file(&marker);
                    continue;
                }
            };
            let exit_file = dir
                .join("config")
                .join(format!(".{}.exit", command.as_str()));
            let alive = v["pid"]
                .as_u64()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p > 0)
                .is_some_and(|p| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
                });
            if !alive && !exit_file.exists() {
                // Gone without a word (a reboot): run it again.
                let _ = std::fs::remove_file(&marker);
                continue;
            }
            log::info!(
                "extension {name} {}: {} was left running by a previous daemon; waiting for it",
                i.version,
                command.as_str()
            );
            let timeout = Duration::from_secs(v["timeout"].as_u64().unwrap_or(900));
            return Some(Running {
                version: i.version.clone(),
                command,
                exit_file,
                child: None,
                since: cx.now,
                deadline: cx.now + timeout,
            });
        }
        None
    }
}
