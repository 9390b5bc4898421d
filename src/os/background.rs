//! Commands the daemon's loop starts and then looks at on each turn, instead
//! of waiting for them: an extension's install or enable can take minutes.
//!
//! The child's output goes to files (a handler's log folder), never to pipes
//! the loop would have to drain; [`Background::poll`] is a `waitpid(WNOHANG)`.
//! Each child has a deadline: past it, its process group is killed and it
//! counts as timed out. A child that exits, however it exits, is left alone,
//! and so are the processes it started: `enable` commonly starts a service
//! that must outlive the agent (the unit's `KillMode=process` is for them).
//! Nothing here keeps SIGTERM from ending the daemon: a stopping daemon just
//! stops polling, and the child runs on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::runner::{Arg, Cmd, RunError};

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
#[derive(Debug)]
pub struct Background {
    inner: Inner,
    shown: String,
    deadline: Instant,
    /// What the last poll found, once it is final.
    done: Option<Poll>,
}

#[derive(Debug)]
enum Inner {
    Process(Child),
    /// A test's scripted answer: the exit code the command "had".
    Scripted {
        pid: u32,
        code: i32,
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
            done: None,
        })
    }

    /// A scripted child for [`super::RecordingRunner`]: it has already
    /// exited with `code`.
    pub(super) fn scripted(cmd: &Cmd, code: i32, deadline: Instant) -> Background {
        Background {
            inner: Inner::Scripted { pid: 0, code },
            shown: cmd.display(),
            deadline,
            done: None,
        }
    }

    /// The command as displayed (secrets hidden).
    pub fn command(&self) -> &str {
        &self.shown
    }

    pub fn pid(&self) -> u32 {
        match &self.inner {
            Inner::Process(c) => c.id(),
            Inner::Scripted { pid, .. } => *pid,
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
            Inner::Scripted { code, .. } => Poll::Exited(*code),
            Inner::Process(child) => match child.try_wait() {
                Ok(Some(status)) => Poll::Exited(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                ),
                Ok(None) if now >= self.deadline => {
                    kill_group(child);
                    Poll::TimedOut
                }
                Ok(None) => Poll::Running,
                Err(e) => {
                    // ECHILD: someone else reaped it. Nothing more to learn.
                    log::warn!("cannot look at {} (pid {}): {e}", self.shown, child.id());
                    Poll::Exited(-1)
                }
            },
        };
        if found != Poll::Running {
            self.done = Some(found);
        }
        found
    }
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

/// SIGKILL to the whole group, then a bounded wait to reap the child: a
/// process dies only when its current system call returns.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    log::warn!("pid {} is still there after SIGKILL", child.id());
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

    #[test]
    fn a_missing_program_fails_to_start() {
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
