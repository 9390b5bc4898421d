//! Every external command the agent runs goes through a [`CommandRunner`]:
//! [`SystemRunner`] spawns it for real, with a timeout and captured output;
//! [`RecordingRunner`] records it for tests and answers from a script.
//!
//! The runner is single-threaded like the rest of the agent: output pipes
//! are drained with poll(2) while waiting, so a chatty child cannot block on
//! a full pipe and no helper thread is needed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use super::background::{Background, Placement, Poll};

/// Default limit for one command; long jobs (mkfs, ssh-keygen) pass their own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// An argument; a secret one is shown as `***` whenever the command is
/// displayed or logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Arg {
    Plain(String),
    Secret(String),
}

impl Arg {
    pub fn as_str(&self) -> &str {
        match self {
            Arg::Plain(s) | Arg::Secret(s) => s,
        }
    }
}

/// A command to run: program, arguments, optional standard input, timeout.
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<Arg>,
    /// Bytes written to standard input (treated as secret when displayed).
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables (e.g. `OPENSSL_FIPS=1`).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(Arg::Plain(a.into()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args
            .extend(args.into_iter().map(|a| Arg::Plain(a.into())));
        self
    }

    /// An argument that must never be logged (a password hash, a key).
    pub fn secret_arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(Arg::Secret(a.into()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Program and plain arguments as strings (secrets shown as `***`), for
    /// assertions in tests.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(|a| match a {
                Arg::Plain(s) => s.clone(),
                Arg::Secret(_) => "***".to_string(),
            }))
            .collect()
    }

    /// The command line as one string, shell-quoted, secrets hidden.
    pub fn display(&self) -> String {
        self.argv()
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Quotes `s` for a POSIX shell when it needs it (for display only: the
/// agent never runs commands through a shell).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Exit code, or `128 + signal` when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(stdout: &str) -> Self {
        Output {
            code: 0,
            stdout: stdout.to_string(),
            stderr: String::new(),
        }
    }

    pub fn failed(code: i32, stderr: &str) -> Self {
        Output {
            code,
            stdout: String::new(),
            stderr: stderr.to_string(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Why a command did not produce an [`Output`], or produced a failing one.
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started (not installed, not executable).
    Spawn {
        cmd: String,
        source: io::Error,
    },
    TimedOut {
        cmd: String,
        after: Duration,
    },
    /// It ran and exited non-zero (from [`CommandRunner::run_ok`]).
    Failed {
        cmd: String,
        output: Output,
    },
    Io {
        cmd: String,
        source: io::Error,
    },
    /// The agent is stopping (SIGTERM): the command was not waited for, or
    /// not started. See [`SystemRunner`].
    Interrupted {
        cmd: String,
    },
}

impl RunError {
    /// True when the program is not installed, which some callers treat as a
    /// warning (a missing `eject`, say).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RunError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Spawn { cmd, source } => write!(f, "cannot run `{cmd}`: {source}"),
            RunError::TimedOut { cmd, after } => {
                write!(f, "`{cmd}` did not finish within {after:?} and was killed")
            }
            RunError::Failed { cmd, output } => {
                write!(f, "`{cmd}` failed with exit code {}", output.code)?;
                let err = output.stderr.trim();
                if !err.is_empty() {
                    write!(f, ": {}", crate::redact::redact(last_line(err)))?;
                }
                Ok(())
            }
            RunError::Io { cmd, source } => write!(f, "`{cmd}`: {source}"),
            RunError::Interrupted { cmd } => {
                write!(f, "`{cmd}` was abandoned: the agent is stopping")
            }
        }
    }
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s)
}

impl std::error::Error for RunError {}

/// Runs external commands. Implementations must never pass arguments through
/// a shell.
pub trait CommandRunner {
    /// Runs `cmd` to completion; a non-zero exit is an `Ok` output.
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError>;

    /// Starts `cmd` detached ([`spawn_detached`]) for what must outlive the
    /// agent (SCVMM's installer); returns its pid.
    fn spawn(&self, cmd: &Cmd) -> Result<u32, RunError>;

    /// Starts `cmd` in the background (see [`Background`]): it runs in
    /// `placement`'s directory with its output in `placement`'s files, and
    /// is killed with its process group if a poll finds it past `deadline`.
    fn start(
        &self,
        cmd: &Cmd,
        placement: &Placement,
        deadline: Instant,
    ) -> Result<Background, RunError>;

    /// Starts `cmd` in the background with its standard output and error
    /// captured (bounded, as [`run`](Self::run) captures them), for a short
    /// job whose outcome the loop collects later (a key being generated):
    /// [`Background::result`] then says what [`run_ok`](Self::run_ok)
    /// would have. Killed with its process group if a poll finds it past
    /// `deadline`. A runner that cannot do that runs it to its end here.
    fn start_captured(&self, cmd: &Cmd, deadline: Instant) -> Result<Background, RunError> {
        let out = self.run(cmd)?;
        Ok(Background::scripted(cmd, out, deadline, None))
    }

    /// Runs `cmd` and turns a non-zero exit into [`RunError::Failed`].
    fn run_ok(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let out = self.run(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(RunError::Failed {
                cmd: cmd.display(),
                output: out,
            })
        }
    }
}

/// Spawns real processes.
///
/// The deadline is enforced on the process, not on its pipes: a child that
/// redirects its output and hangs is still killed on time, and a child that
/// exits while a background grandchild (`app &`) keeps the pipes open
/// returns at once with what it wrote. A finished command's process group is
/// never signalled: its background children are the user's (waagent's unit
/// has KillMode=process for the same reason).
///
/// A stop request (SIGTERM) ends the wait within a tick (100 ms) with
/// [`RunError::Interrupted`], and the command is abandoned, not killed: a
/// command killed halfway (useradd, or dpkg under a user's script that
/// restarts this very service) can leave the system inconsistent, while one
/// left alone only finishes what it was asked to do. That is also what
/// waagent does: its daemon dies on SIGTERM and systemd leaves its children
/// alone. The abandoned command's pipes close when the agent exits.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

/// Cap on captured output per stream; the rest is read and dropped so the
/// child never blocks on a full pipe.
const MAX_CAPTURE: usize = 1 << 20;
/// One read from a pipe.
const CHUNK: usize = 8192;

/// The longest the runner waits without looking at the child, the deadline
/// and the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// How long a SIGKILLed command is waited for: a process dies only when its
/// current system call returns, which for one stuck on a dead disk may be
/// never.
const REAP_WAIT: Duration = Duration::from_secs(2);

impl CommandRunner for SystemRunner {
    fn spawn(&self, cmd: &Cmd) -> Result<u32, RunError> {
        log::debug!("starting {}", cmd.display());
        spawn_detached(cmd).map_err(|source| RunError::Spawn {
            cmd: cmd.display(),
            source,
        })
    }

    fn start(
        &self,
        cmd: &Cmd,
        placement: &Placement,
        deadline: Instant,
    ) -> Result<Background, RunError> {
        Background::start(cmd, placement, deadline)
    }

    fn start_captured(&self, cmd: &Cmd, deadline: Instant) -> Result<Background, RunError> {
        if crate::clock::stop_requested() {
            return Err(RunError::Interrupted { cmd: cmd.display() });
        }
        Background::start_captured(cmd, deadline)
    }

    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let shown = cmd.display();
        if crate::clock::stop_requested() {
            // Nothing would wait for it.
            return Err(RunError::Interrupted { cmd: shown });
        }
        log::debug!("running {shown}");
        let mut command = Command::new(&cmd.program);
        command
            .args(cmd.args.iter().map(Arg::as_str))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills its children too.
            .process_group(0);
        let mut child = command.spawn().map_err(|source| RunError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        let io_err = |source| RunError::Io {
            cmd: shown.clone(),
            source,
        };
        if let (Some(data), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
            // Small inputs only (a password hash, a key); a child that exits
            // without reading gives EPIPE, which is its business.
            if let Err(e) = pipe.write_all(data) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    kill_group(&mut child);
                    return Err(io_err(e));
                }
            }
        }
        let deadline = Instant::now() + cmd.timeout;
        let mut capture = Capture::new(&mut child);
        // While the pipes are closed there is nothing to poll: sleep, from
        // 50 µs (the child is exiting: it closes its files a moment before
        // it can be reaped) up to TICK. Starting at 1 ms cost every command
        // about a millisecond (300 runs of `true`: median 1.7 ms, now 0.7).
        let mut pause = Duration::from_micros(50);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io_err)? {
                // What it wrote is in the pipes; a background grandchild may
                // hold them open for ever, so take what is there, no more.
                capture.take_buffered().map_err(io_err)?;
                break status;
            }
            if crate::clock::stop_requested() {
                log::warn!(
                    "the agent is stopping: abandoning {shown} (pid {})",
                    child.id()
                );
                return Err(RunError::Interrupted { cmd: shown });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                kill_group(&mut child);
                return Err(RunError::TimedOut {
                    cmd: shown,
                    after: cmd.timeout,
                });
            }
            // A command with a deadline keeps the loop alive meanwhile.
            crate::notify::keepalive();
            if capture.is_open() {
                capture.poll(left.min(TICK)).map_err(io_err)?;
            } else {
                std::thread::sleep(left.min(pause));
                pause = (pause * 2).min(TICK);
            }
        };
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let (stdout, stderr) = capture.into_output();
        log::debug!("{shown} exited with {code}");
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    }
}

/// A child's stdout and stderr, read as they fill.
pub(super) struct Capture {
    out: Option<ChildStdout>,
    err: Option<ChildStderr>,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
}

impl Capture {
    pub(super) fn new(child: &mut Child) -> Self {
        Capture {
            out: child.stdout.take(),
            err: child.stderr.take(),
            out_buf: Vec::new(),
            err_buf: Vec::new(),
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.out.is_some() || self.err.is_some()
    }

    /// The pipes still open: readable (or at end of file) when the child
    /// writes or exits.
    pub(super) fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        let out = self.out.as_ref().map(|o| o.as_fd());
        let err = self.err.as_ref().map(|e| e.as_fd());
        out.into_iter().chain(err).collect()
    }

    /// Waits up to `timeout` for output and reads one chunk from each
    /// stream that has some (or closes the ones at end of file).
    fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        let (out_ready, err_ready) = self.ready(timeout)?;
        self.read_ready(out_ready, err_ready)
    }

    fn read_ready(&mut self, out_ready: bool, err_ready: bool) -> io::Result<()> {
        let mut chunk = [0u8; CHUNK];
        if out_ready {
            read_chunk(&mut self.out, &mut self.out_buf, &mut chunk)?;
        }
        if err_ready {
            read_chunk(&mut self.err, &mut self.err_buf, &mut chunk)?;
        }
        Ok(())
    }

    /// Reads what the pipes hold now, without waiting. Bounded, since a
    /// grandchild may keep writing: enough rounds to fill the capture.
    pub(super) fn take_buffered(&mut self) -> io::Result<()> {
        for _ in 0..=MAX_CAPTURE / CHUNK {
            if !self.is_open() {
                break;
            }
            let (out_ready, err_ready) = self.ready(Duration::ZERO)?;
            if !out_ready && !err_ready {
                break;
            }
            self.read_ready(out_ready, err_ready)?;
        }
        Ok(())
    }

    /// Which streams are readable (or at end of file) within `timeout`.
    fn ready(&self, timeout: Duration) -> io::Result<(bool, bool)> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = Vec::with_capacity(2);
        if let Some(o) = &self.out {
            fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
        }
        if let Some(e) = &self.err {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
        }
        loop {
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) if timeout.is_zero() => {}
                // A signal (SIGTERM): the caller looks at the stop flag.
                Err(nix::errno::Errno::EINTR) => return Ok((false, false)),
                Err(e) => return Err(e.into()),
            }
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let mut it = fds.iter();
        let o = self.out.is_some() && it.next().is_some_and(ready);
        let e = self.err.is_some() && it.next().is_some_and(ready);
        Ok((o, e))
    }

    pub(super) fn into_output(self) -> (String, String) {
        (
            String::from_utf8_lossy(&self.out_buf).into_owned(),
            String::from_utf8_lossy(&self.err_buf).into_owned(),
        )
    }
}

fn read_chunk<R: Read>(
    pipe: &mut Option<R>,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> io::Result<()> {
    let Some(p) = pipe else { return Ok(()) };
    match p.read(chunk) {
        Ok(0) => *pipe = None,
        Ok(n) => {
            let room = MAX_CAPTURE.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..n.min(room)]);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// SIGKILLs the command's whole process group and reaps the command,
/// waiting at most [`REAP_WAIT`].
pub(super) fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Negative pid: the whole process group made by process_group(0).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // A killed process is usually gone within a millisecond (its memory
    // freed): look again soon, then less often, so that dropping an
    // unwanted `openssl` costs the loop that millisecond rather than a
    // fixed 10 ms sleep.
    let until = Instant::now() + REAP_WAIT;
    let mut pause = Duration::from_micros(100);
    while Instant::now() < until {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(pause),
            _ => return,
        }
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    log::warn!(
        "pid {} is still there {REAP_WAIT:?} after SIGKILL; not waiting for it",
        child.id()
    );
}

/// Starts `cmd` in a new session with its standard streams on /dev/null and
/// does not wait for it: for what must outlive the agent or its terminal
/// (`-start`'s daemon, SCVMM's installer). Returns the child's pid.
pub fn spawn_detached(cmd: &Cmd) -> io::Result<u32> {
    let mut c = Command::new(&cmd.program);
    c.args(cmd.args.iter().map(Arg::as_str))
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    c.spawn().map(|child| child.id())
}

/// A scripted answer for [`RecordingRunner`].
pub type Responder = Box<dyn Fn(&Cmd) -> Option<Result<Output, RunError>>>;

/// How long a background command "runs", for [`RecordingRunner::takes`].
pub type BackgroundTime = Box<dyn Fn(&Cmd) -> Option<Duration>>;

/// Test double: records every command and answers from a script. Commands
/// with no scripted answer succeed with empty output.
#[derive(Default)]
pub struct RecordingRunner {
    calls: RefCell<Vec<Cmd>>,
    queued: RefCell<VecDeque<(String, Output)>>,
    responders: RefCell<Vec<Responder>>,
    durations: RefCell<Vec<BackgroundTime>>,
    clock: RefCell<Option<std::rc::Rc<dyn crate::clock::Clock>>>,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next command whose program is `program` gets `output`.
    pub fn push(&self, program: &str, output: Output) {
        self.queued
            .borrow_mut()
            .push_back((program.to_string(), output));
    }

    /// A general answer; consulted after queued outputs, first match wins.
    pub fn respond(&self, f: impl Fn(&Cmd) -> Option<Result<Output, RunError>> + 'static) {
        self.responders.borrow_mut().push(Box::new(f));
    }

    /// Background commands for which `f` gives a duration run that long
    /// on `clock` (the daemon's) before they exit with their scripted
    /// answer; the others exit at once. Their side effects (a responder's
    /// files) happen when they start.
    pub fn takes(
        &self,
        clock: std::rc::Rc<dyn crate::clock::Clock>,
        f: impl Fn(&Cmd) -> Option<Duration> + 'static,
    ) {
        *self.clock.borrow_mut() = Some(clock);
        self.durations.borrow_mut().push(Box::new(f));
    }

    /// When a background command started now exits, per [`takes`](Self::takes).
    fn exits_at(&self, cmd: &Cmd) -> Option<Instant> {
        let clock = self.clock.borrow();
        let d = self.durations.borrow().iter().find_map(|f| f(cmd))?;
        clock.as_ref().map(|c| c.now() + d)
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Cmd> {
        self.calls.borrow().clone()
    }

    /// Every command so far as displayed lines (secrets hidden).
    pub fn lines(&self) -> Vec<String> {
        self.calls.borrow().iter().map(Cmd::display).collect()
    }
}

impl CommandRunner for RecordingRunner {
    /// Recorded like [`run`](Self::run); a scripted failure fails the
    /// spawn, anything else "starts" pid 0.
    fn spawn(&self, cmd: &Cmd) -> Result<u32, RunError> {
        self.run(cmd).map(|_| 0)
    }

    /// Recorded like [`run`](Self::run); the scripted answer's exit code
    /// is what the command "exited" with: at once, or after what
    /// [`takes`](Self::takes) says.
    fn start(
        &self,
        cmd: &Cmd,
        _placement: &Placement,
        deadline: Instant,
    ) -> Result<Background, RunError> {
        let out = self.run(cmd)?;
        let until = self.exits_at(cmd);
        Ok(Background::scripted(cmd, out, deadline, until))
    }

    /// Recorded like [`run`](Self::run), whose scripted answer (output and
    /// exit code) the command has when it exits: at once, or after what
    /// [`takes`](Self::takes) says.
    fn start_captured(&self, cmd: &Cmd, deadline: Instant) -> Result<Background, RunError> {
        let out = self.run(cmd)?;
        let until = self.exits_at(cmd);
        Ok(Background::scripted(cmd, out, deadline, until))
    }

    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        self.calls.borrow_mut().push(cmd.clone());
        let mut q = self.queued.borrow_mut();
        if let Some(i) = q.iter().position(|(p, _)| *p == cmd.program) {
            if let Some((_, out)) = q.remove(i) {
                return Ok(out);
            }
        }
        drop(q);
        for r in self.responders.borrow().iter() {
            if let Some(answer) = r(cmd) {
                return answer;
            }
        }
        Ok(Output::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_stderr_and_exit_code() {
        let out = SystemRunner
            .run(&Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(
            out,
            Output {
                code: 3,
                stdout: "out\n".into(),
                stderr: "err\n".into()
            }
        );
    }

    #[test]
    fn passes_extra_environment() {
        let out = SystemRunner
            .run(
                &Cmd::new("sh")
                    .args(["-c", "echo $OPENSSL_FIPS"])
                    .env("OPENSSL_FIPS", "1"),
            )
            .unwrap();
        assert_eq!(out.stdout, "1\n");
    }

    #[test]
    fn feeds_stdin() {
        let out = SystemRunner
            .run(&Cmd::new("cat").stdin("hash-goes-here"))
            .unwrap();
        assert_eq!(out.stdout, "hash-goes-here");
    }

    #[test]
    fn times_out_and_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // The grandchild would write the marker after 2 s if it outlived the kill.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let err = SystemRunner
            .run(
                &Cmd::new("sh")
                    .args(["-c", &script])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("`sh -c '{script}'` did not finish within 300ms and was killed")
        );
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "grandchild survived the timeout");
    }

    /// Polls `cond` for up to 30 s (the machine may be loaded).
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cond()
    }

    #[test]
    fn a_child_that_closed_its_pipes_and_hangs_still_times_out() {
        let started = Instant::now();
        let err = SystemRunner
            .run(
                &Cmd::new("sh")
                    .args(["-c", "exec >/dev/null 2>&1; sleep 30"])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        // Not the 30 s of the sleep.
        assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    }

    #[test]
    fn a_finished_command_returns_at_once_and_its_background_children_live_on() {
        let dir = tempfile::tempdir().unwrap();
        for code in [0, 3] {
            let marker = dir.path().join(format!("alive-{code}"));
            // The background child inherits stdout and stderr and holds them
            // for 4 s, beyond the 3 s timeout: only a runner that looks at
            // the process, not at the pipes, returns the output.
            let script = format!(
                "echo started; (sleep 4; touch {}) & echo done >&2; exit {code}",
                marker.display()
            );
            let out = SystemRunner
                .run(
                    &Cmd::new("sh")
                        .args(["-c", &script])
                        .timeout(Duration::from_secs(3)),
                )
                .unwrap_or_else(|e| panic!("exit {code}: {e}"));
            assert_eq!(
                out,
                Output {
                    code,
                    stdout: "started\n".into(),
                    stderr: "done\n".into()
                }
            );
        }
        for code in [0, 3] {
            let marker = dir.path().join(format!("alive-{code}"));
            assert!(
                eventually(|| marker.exists()),
                "the background child of a command that exited {code} was killed"
            );
        }
    }

    /// The stop flag is process-wide, so this test sets it in a child
    /// process: the test binary run again for this one test.
    #[test]
    fn a_stop_request_abandons_the_command_without_killing_it() {
        if !crate::clock::tests::in_own_process(
            "os::runner::tests::a_stop_request_abandons_the_command_without_killing_it",
        ) {
            return;
        }
        crate::daemon::install_handlers().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        // SIGTERM once the command runs, as from systemd.
        let watched = pid_file.clone();
        std::thread::spawn(move || {
            while !std::fs::read_to_string(&watched).is_ok_and(|p| p.ends_with('\n')) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        });
        let started = Instant::now();
        let err = SystemRunner
            .run(
                &Cmd::new("sh")
                    .args(["-c", &script])
                    .timeout(Duration::from_secs(60)),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::Interrupted { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("`sh -c '{script}'` was abandoned: the agent is stopping")
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{err}");
        // Abandoned, not killed: still running (not a zombie).
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        assert_ne!(state, Some("Z"), "{stat}");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Once stopping, nothing new is started.
        let marker = dir.path().join("ran");
        let err = SystemRunner
            .run(&Cmd::new("touch").arg(marker.to_string_lossy()))
            .unwrap_err();
        assert!(matches!(err, RunError::Interrupted { .. }), "{err}");
        assert!(!marker.exists());
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let out = SystemRunner
            .run(&Cmd::new("sh").args([
                "-c",
                "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2",
            ]))
            .unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (300_000, 300_000));
    }

    #[test]
    fn missing_program_is_not_found() {
        // qemu-user runs glibc's posix_spawn as a plain fork, so the exec's
        // error never reaches the parent: the child just exits 127.
        if crate::sim::skips::skip_under_runner(
            "lib",
            "os::runner::tests::missing_program_is_not_found",
            "a failed exec is not reported to posix_spawn's caller",
        ) {
            return;
        }
        let err = SystemRunner
            .run(&Cmd::new("/nonexistent/eject"))
            .unwrap_err();
        assert!(err.is_not_found());
        assert!(
            err.to_string()
                .starts_with("cannot run `/nonexistent/eject`: "),
            "{err}"
        );
    }

    #[test]
    fn run_ok_reports_failure_with_stderr_and_hides_secrets() {
        let err = SystemRunner
            .run_ok(
                &Cmd::new("sh")
                    .args(["-c", "echo 'bad thing' >&2; exit 4"])
                    .secret_arg("$6$salt$hash"),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert_eq!(msg, "`sh -c 'echo '\\''bad thing'\\'' >&2; exit 4' '***'` failed with exit code 4: bad thing");
    }

    #[test]
    fn recording_runner_records_and_scripts() {
        let r = RecordingRunner::new();
        r.push("hostname", Output::ok("vm1\n"));
        r.respond(|c| (c.program == "useradd").then(|| Ok(Output::failed(9, "exists"))));
        assert_eq!(r.run(&Cmd::new("hostname")).unwrap().stdout, "vm1\n");
        assert_eq!(r.run(&Cmd::new("hostname")).unwrap().stdout, "");
        assert_eq!(r.run(&Cmd::new("useradd").arg("u")).unwrap().code, 9);
        assert_eq!(r.lines(), vec!["hostname", "hostname", "useradd u"]);
    }
}
