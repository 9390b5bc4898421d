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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

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
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

/// Cap on captured output per stream; the rest is read and dropped so the
/// child never blocks on a full pipe.
const MAX_CAPTURE: usize = 1 << 20;

impl CommandRunner for SystemRunner {
    fn spawn(&self, cmd: &Cmd) -> Result<u32, RunError> {
        log::debug!("starting {}", cmd.display());
        spawn_detached(cmd).map_err(|source| RunError::Spawn {
            cmd: cmd.display(),
            source,
        })
    }

    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let shown = cmd.display();
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
        let (stdout, stderr, timed_out) = drain(&mut child, deadline).map_err(io_err)?;
        if timed_out {
            kill_group(&mut child);
            return Err(RunError::TimedOut {
                cmd: shown,
                after: cmd.timeout,
            });
        }
        let status = child.wait().map_err(io_err)?;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let out = Output {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        log::debug!("{shown} exited with {code}");
        Ok(out)
    }
}

/// Reads stdout and stderr until both close or `deadline` passes.
fn drain(child: &mut Child, deadline: Instant) -> io::Result<(Vec<u8>, Vec<u8>, bool)> {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 8192];
    while out.is_some() || err.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((out_buf, err_buf, true));
        }
        let ms = u16::try_from(left.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
        let (out_ready, err_ready) = {
            let mut fds = Vec::with_capacity(2);
            if let Some(o) = &out {
                fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
            }
            if let Some(e) = &err {
                fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let mut it = fds.iter();
            let o = out
                .as_ref()
                .map(|_| it.next().is_some_and(ready))
                .unwrap_or(false);
            let e = err
                .as_ref()
                .map(|_| it.next().is_some_and(ready))
                .unwrap_or(false);
            (o, e)
        };
        if out_ready {
            read_chunk(&mut out, &mut out_buf, &mut chunk)?;
        }
        if err_ready {
            read_chunk(&mut err, &mut err_buf, &mut chunk)?;
        }
    }
    Ok((out_buf, err_buf, false))
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

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Negative pid: the whole process group made by process_group(0).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
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

/// Test double: records every command and answers from a script. Commands
/// with no scripted answer succeed with empty output.
#[derive(Default)]
pub struct RecordingRunner {
    calls: RefCell<Vec<Cmd>>,
    queued: RefCell<VecDeque<(String, Output)>>,
    responders: RefCell<Vec<Responder>>,
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
