//! Commands the daemon's loop starts and then looks at on each turn, instead
//! of waiting for them: an extension's install or enable can take minutes,
//! and a key being generated (transport certificate, SSH host keys) should
//! not hold up the requests and steps that do not need it.
//!
//! An extension's output goes to files (a handler's log folder), never to
//! pipes the loop would have to drain; a short job started with
//! [`CommandRunner::start_captured`](super::CommandRunner::start_captured)
//! has its output in pipes instead (bounded, drained on each poll), so its
//! error text can be reported and [`wait_any`] wakes the moment it exits.
//! [`Background::poll`] is a `waitpid(WNOHANG)`. Each child has a deadline:
//! past it, its process group is killed and it counts as timed out. A child
//! that exits, however it exits, is left alone, and so are the processes it
//! started: `enable` commonly starts a service that must outlive the agent
//! (the unit's `KillMode=process` is for them). Nothing here keeps SIGTERM
//! from ending the daemon: a stopping daemon just stops polling, and the
//! child runs on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::runner::{kill_group, Arg, Capture, Cmd, Output, RunError};
use crate::clock::{stop_requested, Clock};

/// Where a background command runs and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The working directory (a handler's base directory).
    pub cwd: PathBuf,
    /// Standard output and error, appended to (created 0600).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// What a look at a background command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    Running,
    /// Its exit code, or `128 + signal` when a signal ended it.
    Exited(i32),
    /// Past its deadline: its process group was killed.
    TimedOut,
}

/// A command started in the background.
pub struct Background {
    inner: Inner,
    shown: String,
    deadline: Instant,
    /// The command's own limit, for the error text.
    timeout: Duration,
    /// What the last poll found, once it is final.
    done: Option<Poll>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("command", &self.shown)
            .field("done", &self.done)
            .finish()
    }
}

enum Inner {
    Process(Child),
    /// Output in pipes, read as it comes; what was read once it has exited.
    Captured {
        child: Child,
        capture: Option<Capture>,
        output: (String, String),
    },
    /// A test's scripted answer (or a runner that ran the command to its
    /// end): it exits with `code` at `until` on the daemon's clock, at once
    /// when `None`.
    Scripted {
        code: i32,
        output: (String, String),
        until: Option<Instant>,
    },
}

impl Background {
    /// A real child, its output in `placement`'s files, in a process group
    /// of its own so that a timeout can end everything it started.
    pub(super) fn start(
        cmd: &Cmd,
        placement: &Placement,
        deadline: Instant,
    ) -> Result<Background, RunError> {
        let shown = cmd.display();
        let spawn_err = |source| RunError::Spawn {
            cmd: shown.clone(),
            source,
        };
        let stdout = output_file(&placement.stdout).map_err(spawn_err)?;
        let stderr = output_file(&placement.stderr).map_err(spawn_err)?;
        let child = Command::new(&cmd.program)
            .args(cmd.args.iter().map(Arg::as_str))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&placement.cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        log::debug!("started {shown} (pid {}) in the background", child.id());
        Ok(Background {
            inner: Inner::Process(child),
            shown,
            deadline,
            timeout: cmd.timeout,
            done: None,
        })
    }

    /// A real child whose standard output and error are captured in pipes
    /// (standard input is /dev/null), in a process group of its own.
    pub(super) fn start_captured(cmd: &Cmd, deadline: Instant) -> Result<Background, RunError> {
        let shown = cmd.display();
        let mut child = Command::new(&cmd.program)
            .args(cmd.args.iter().map(Arg::as_str))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| RunError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
        log::debug!("started {shown} (pid {}) in the background", child.id());
        let capture = Capture::new(&mut child);
        Ok(Background {
            inner: Inner::Captured {
                child,
                capture: Some(capture),
                output: Default::default(),
            },
            shown,
            deadline,
            timeout: cmd.timeout,
            done: None,
        })
    }

    /// A child that exits with `output`'s code at `until` on the daemon's
    /// clock (at once when `None`): a test's script, or a runner that ran
    /// the command to its end.
    pub fn scripted(
        cmd: &Cmd,
        output: Output,
        deadline: Instant,
        until: Option<Instant>,
    ) -> Background {
        Background {
            inner: Inner::Scripted {
                code: output.code,
                output: (output.stdout, output.stderr),
                until,
            },
            shown: cmd.display(),
            deadline,
            timeout: cmd.timeout,
            done: None,
        }
    }

    /// The command as displayed (secrets hidden).
    pub fn command(&self) -> &str {
        &self.shown
    }

    pub fn pid(&self) -> u32 {
        match &self.inner {
            Inner::Process(c) | Inner::Captured { child: c, .. } => c.id(),
            Inner::Scripted { .. } => 0,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Looks at the child once, without waiting; `now` is the daemon's
    /// clock. A final answer is kept, so polling again is harmless.
    pub fn poll(&mut self, now: Instant) -> Poll {
        if let Some(done) = self.done {
            return done;
        }
        let found = match &mut self.inner {
            Inner::Scripted { until, .. } if until.is_some_and(|u| now < u) => {
                match now >= self.deadline {
                    true => Poll::TimedOut,
                    false => Poll::Running,
                }
            }
            Inner::Scripted { code, .. } => Poll::Exited(*code),
            Inner::Process(child) => look(child, now, self.deadline, &self.shown),
            Inner::Captured {
                child,
                capture,
                output,
            } => {
                // Drained on every look, so a chatty child never blocks on
                // a full pipe.
                if let Some(c) = capture.as_mut() {
                    if let Err(e) = c.take_buffered() {
                        log::warn!("cannot read the output of {}: {e}", self.shown);
                    }
                }
                let found = look(child, now, self.deadline, &self.shown);
                if found != Poll::Running {
                    if let Some(mut c) = capture.take() {
                        let _ = c.take_buffered();
                        *output = c.into_output();
                    }
                }
                found
            }
        };
        if found != Poll::Running {
            self.done = Some(found);
            log::debug!("{} finished: {found:?}", self.shown);
        }
        found
    }

    /// What the command came to, once a poll has found it finished: its
    /// output when it exited 0, else the error naming the command, as
    /// [`CommandRunner::run_ok`](super::CommandRunner::run_ok) would say
    /// it (output is only known for a captured or scripted child).
    pub fn result(&self) -> Option<Result<Output, RunError>> {
        let (stdout, stderr) = match &self.inner {
            Inner::Captured { output, .. } | Inner::Scripted { output, .. } => output.clone(),
            Inner::Process(_) => Default::default(),
        };
        match self.done? {
            Poll::Running => None,
            Poll::Exited(0) => Some(Ok(Output {
                code: 0,
                stdout,
                stderr,
            })),
            Poll::Exited(code) => Some(Err(RunError::Failed {
                cmd: self.shown.clone(),
                output: Output {
                    code,
                    stdout,
                    stderr,
                },
            })),
            Poll::TimedOut => Some(Err(RunError::TimedOut {
                cmd: self.shown.clone(),
                after: self.timeout,
            })),
        }
    }

    /// Ends a child that is no longer wanted (the loser of a race, a job
    /// given up): SIGKILL to its process group, then it is reaped. A child
    /// that has already finished is left alone.
    pub fn kill(&mut self) {
        if self.done.is_some() {
            return;
        }
        match &mut self.inner {
            Inner::Process(child) | Inner::Captured { child, .. } => {
                // Not already gone: a finished command's group is never
                // signalled (its processes may be someone else's by now).
                if let Ok(None) = child.try_wait() {
                    kill_group(child);
                } else {
                    self.done = Some(Poll::Exited(-1));
                    return;
                }
            }
            Inner::Scripted { .. } => {}
        }
        self.done = Some(Poll::Exited(128 + libc::SIGKILL));
        log::debug!("killed {}", self.shown);
    }
}

/// A `waitpid(WNOHANG)` on `child`, killing its group past `deadline`.
fn look(child: &mut Child, now: Instant, deadline: Instant, shown: &str) -> Poll {
    match child.try_wait() {
        Ok(Some(status)) => Poll::Exited(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        ),
        Ok(None) if now >= deadline => {
            kill_group(child);
            Poll::TimedOut
        }
        Ok(None) => Poll::Running,
        Err(e) => {
            // ECHILD: someone else reaped it. Nothing more to learn.
            log::warn!("cannot look at {shown} (pid {}): {e}", child.id());
            Poll::Exited(-1)
        }
    }
}

/// The longest [`wait_any`] waits without looking at the stop flag and at
/// children it cannot watch by their pipes.
const WAIT_TICK: Duration = Duration::from_millis(100);

/// Waits until one of `children` may have finished (poll them to know),
/// `until` has come on `clock`, or a stop is asked (then false).
///
/// A captured child is watched through its pipes, which close when it
/// exits, so the wait ends the moment it does; a scripted one finishes at a
/// known instant of the clock, which the wait goes to (a virtual clock
/// moves there); any other is looked at every [`WAIT_TICK`].
pub fn wait_any(children: &[&Background], clock: &dyn Clock, until: Instant) -> bool {
    let now = clock.now();
    let mut wake = until;
    let mut fds = Vec::new();
    for c in children {
        wake = wake.min(c.deadline);
        match &c.inner {
            _ if c.done.is_some() => return true,
            Inner::Scripted { until: None, .. } => return true,
            Inner::Scripted { until: Some(u), .. } => wake = wake.min(*u),
            Inner::Process(_) => wake = wake.min(now + WAIT_TICK),
            Inner::Captured { capture, .. } => match capture {
                Some(c) if c.is_open() => fds.extend(c.fds()),
                // Its pipes are closed: it is exiting.
                _ => wake = wake.min(now + Duration::from_micros(200)),
            },
        }
    }
    let left = wake.saturating_duration_since(now);
    if fds.is_empty() {
        return clock.sleep(left);
    }
    if stop_requested() {
        return false;
    }
    // Rounded up: a timeout of 0 would spin until the deadline.
    let ms = u16::try_from(left.min(WAIT_TICK).as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let mut polled: Vec<PollFd> = fds
        .into_iter()
        .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    // EINTR is a signal (SIGTERM, SIGCHLD): the caller looks again.
    let _ = nix::poll::poll(&mut polled, PollTimeout::from(ms));
    !stop_requested()
}

/// Output files are appended to, so a retried command's output follows the
/// first one's; created 0600 (an extension may print secrets).
fn output_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::super::runner::{CommandRunner, SystemRunner};
    use super::*;

    fn placement(dir: &Path) -> Placement {
        Placement {
            cwd: dir.to_path_buf(),
            stdout: dir.join("out.log"),
            stderr: dir.join("err.log"),
        }
    }

    fn wait(b: &mut Background) -> Poll {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match b.poll(Instant::now()) {
                Poll::Running if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn output_goes_to_files_and_the_exit_code_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let cmd = Cmd::new("sh").args(["-c", "pwd; echo oops >&2; exit 3"]);
        let far = Instant::now() + Duration::from_secs(60);
        let mut b = SystemRunner.start(&cmd, &placement(d.path()), far).unwrap();
        assert_eq!(wait(&mut b), Poll::Exited(3));
        assert_eq!(b.poll(Instant::now()), Poll::Exited(3), "final");
        let out = std::fs::read_to_string(d.path().join("out.log")).unwrap();
        assert_eq!(
            std::fs::canonicalize(out.trim()).unwrap(),
            std::fs::canonicalize(d.path()).unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("err.log")).unwrap(),
            "oops\n"
        );
    }

    #[test]
    fn polling_never_waits_and_a_deadline_kills_the_group() {
        // qemu-user runs posix_spawn's vfork as a fork and returns before
        // the child's setpgid, so a kill at once may find no group yet.
        if crate::sim::skips::skip_under_runner(
            "lib",
            "os::background::tests::polling_never_waits_and_a_deadline_kills_the_group",
            "the child's process group may not exist yet when posix_spawn returns",
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let start = Instant::now();
        let mut b = SystemRunner
            .start(&cmd, &placement(d.path()), start + Duration::from_secs(60))
            .unwrap();
        assert_eq!(b.poll(Instant::now()), Poll::Running);
        assert!(start.elapsed() < Duration::from_secs(2), "poll waited");
        // The daemon's clock says the deadline has passed.
        assert_eq!(b.poll(start + Duration::from_secs(61)), Poll::TimedOut);
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the group survived the timeout");
    }

    #[test]
    fn a_finished_command_leaves_what_it_started_running() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("service-ran");
        let script = format!("(sleep 1; touch {}) & exit 0", marker.display());
        let cmd = Cmd::new("sh").args(["-c", &script]);
        let far = Instant::now() + Duration::from_secs(60);
        let mut b = SystemRunner.start(&cmd, &placement(d.path()), far).unwrap();
        assert_eq!(wait(&mut b), Poll::Exited(0));
        let until = Instant::now() + Duration::from_secs(10);
        while !marker.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(marker.exists(), "the background process was killed");
    }

    /// Waits for `b` through [`wait_any`] on the system clock (30 s at most).
    fn wait_captured(b: &mut Background) -> Poll {
        let clock = crate::clock::SystemClock;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match b.poll(Instant::now()) {
                Poll::Running if Instant::now() < until => {
                    assert!(wait_any(&[&*b], &clock, until));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_captured_child_says_what_run_ok_would() {
        let far = Instant::now() + Duration::from_secs(60);
        let ok = Cmd::new("sh").args(["-c", "sleep 0.2; echo made"]);
        let mut b = SystemRunner.start_captured(&ok, far).unwrap();
        assert_eq!(b.result().map(|r| r.is_ok()), None, "still running");
        assert_eq!(wait_captured(&mut b), Poll::Exited(0));
        assert_eq!(b.result().unwrap().unwrap(), Output::ok("made\n"));

        let bad = Cmd::new("sh").args(["-c", "echo progress; echo 'no key' >&2; exit 3"]);
        let mut b = SystemRunner.start_captured(&bad, far).unwrap();
        assert_eq!(wait_captured(&mut b), Poll::Exited(3));
        assert_eq!(
            b.result().unwrap().unwrap_err().to_string(),
            "`sh -c 'echo progress; echo '\\''no key'\\'' >&2; exit 3'` failed with exit code 3: no key"
        );
    }

    #[test]
    fn a_chatty_captured_child_is_drained_and_a_late_one_times_out() {
        let far = Instant::now() + Duration::from_secs(60);
        // Four times what a pipe holds: it would block if nobody read.
        let chatty = Cmd::new("sh").args(["-c", "head -c 262144 /dev/zero | tr '\\0' x"]);
        let mut b = SystemRunner.start_captured(&chatty, far).unwrap();
        assert_eq!(wait_captured(&mut b), Poll::Exited(0));
        assert_eq!(b.result().unwrap().unwrap().stdout.len(), 262144);

        let hung = Cmd::new("sleep").arg("30").timeout(Duration::from_secs(5));
        let start = Instant::now();
        let mut b = SystemRunner.start_captured(&hung, start).unwrap();
        // The daemon's clock says the deadline has passed.
        assert_eq!(b.poll(start + Duration::from_secs(1)), Poll::TimedOut);
        assert_eq!(
            b.result().unwrap().unwrap_err().to_string(),
            "`sleep 30` did not finish within 5s and was killed"
        );
    }

    #[test]
    fn a_killed_child_takes_its_group_with_it_and_a_finished_one_is_left_alone() {
        // qemu-user runs posix_spawn's vfork as a fork and returns before
        // the child's setpgid, so a kill at once may find no group yet.
        if crate::sim::skips::skip_under_runner(
            "lib",
            "os::background::tests::a_killed_child_takes_its_group_with_it_and_a_finished_one_is_left_alone",
            "the child's process group may not exist yet when posix_spawn returns",
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let far = Instant::now() + Duration::from_secs(60);
        let mut b = SystemRunner
            .start_captured(&Cmd::new("sh").args(["-c", &script]), far)
            .unwrap();
        assert_eq!(b.poll(Instant::now()), Poll::Running);
        b.kill();
        assert_eq!(b.poll(Instant::now()), Poll::Exited(128 + libc::SIGKILL));
        assert!(b.result().unwrap().is_err());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists(), "the group survived the kill");

        let mut done = SystemRunner.start_captured(&Cmd::new("true"), far).unwrap();
        assert_eq!(wait_captured(&mut done), Poll::Exited(0));
        done.kill();
        assert_eq!(done.poll(Instant::now()), Poll::Exited(0));
    }

    #[test]
    fn scripted_children_exit_when_the_clock_says_and_wait_any_goes_there() {
        let clock = crate::clock::VirtualClock::new();
        let t0 = clock.now();
        let cmd = Cmd::new("ssh-keygen");
        let slow = Background::scripted(
            &cmd,
            Output::ok(""),
            t0 + Duration::from_secs(120),
            Some(t0 + Duration::from_millis(700)),
        );
        let mut hung = Background::scripted(
            &cmd,
            Output::ok(""),
            t0 + Duration::from_secs(2),
            Some(t0 + Duration::from_secs(9)),
        );
        assert!(wait_any(
            &[&slow, &hung],
            &clock,
            t0 + Duration::from_secs(5)
        ));
        assert_eq!(clock.elapsed(), Duration::from_millis(700));
        let mut slow = slow;
        assert_eq!(slow.poll(clock.now()), Poll::Exited(0));
        assert_eq!(hung.poll(clock.now()), Poll::Running);
        // Its deadline comes before its exit: it times out there.
        assert!(wait_any(&[&hung], &clock, t0 + Duration::from_secs(5)));
        assert_eq!(clock.elapsed(), Duration::from_secs(2));
        assert_eq!(hung.poll(clock.now()), Poll::TimedOut);
        // A stop request ends a wait.
        clock.stop_at(Duration::from_secs(3));
        let late = Background::scripted(
            &cmd,
            Output::ok(""),
            t0 + Duration::from_secs(60),
            Some(t0 + Duration::from_secs(50)),
        );
        assert!(!wait_any(&[&late], &clock, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_missing_program_fails_to_start() {
        // qemu-user runs glibc's posix_spawn as a plain fork, so the exec's
        // error never reaches the parent: the child just exits 127.
        if crate::sim::skips::skip_under_runner(
            "lib",
            "os::background::tests::a_missing_program_fails_to_start",
            "a failed exec is not reported to posix_spawn's caller",
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let err = SystemRunner
            .start(
                &Cmd::new("/nonexistent/handler"),
                &placement(d.path()),
                Instant::now(),
            )
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
