//! Time as the agent sees it: what time it is and how to wait.
//!
//! Every wait of the daemon — Connect's back-off, the goal-state period, the
//! monitors' periods, the client's retries — goes through a [`Clock`], so the
//! state machine can be driven by a `VirtualClock` in tests: time moves only
//! when the daemon waits, and hours of back-off pass in microseconds.
//!
//! A wait ends early when the process is asked to stop (SIGTERM/SIGINT set
//! the flag through [`request_stop`]). Once [`install_wakeup`] has run (the
//! daemon does it with its signal handlers), a wait is one `poll(2)` on a
//! self-pipe that the stop request writes to: the idle daemon sleeps through
//! a whole goal-state period without waking, and a stop ends any wait at
//! once. Without it (tools, tests) a wait looks at the flag every tenth of a
//! second.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
/// The self-pipe's ends; -1 until [`install_wakeup`].
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// Asks every wait to end. Async-signal-safe: an atomic store and a
/// one-byte `write(2)` to a non-blocking pipe (a full pipe already wakes).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: fd is the pipe's write end, open for the process's life;
        // the buffer is one valid byte.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// Makes waits end the moment [`request_stop`] runs, without waking to look
/// at the flag. Idempotent; call before the signal handlers are installed.
pub fn install_wakeup() -> std::io::Result<()> {
    use nix::fcntl::OFlag;
    use std::os::fd::IntoRawFd;
    if WAKE_READ.load(Ordering::SeqCst) >= 0 {
        return Ok(());
    }
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    WAKE_WRITE.store(write.into_raw_fd(), Ordering::SeqCst);
    WAKE_READ.store(read.into_raw_fd(), Ordering::SeqCst);
    Ok(())
}

/// Waits up to `d` for the self-pipe to become readable (a stop request)
/// or a signal to interrupt; false when there is no self-pipe.
fn wait_for_wakeup(d: Duration) -> bool {
    let fd = WAKE_READ.load(Ordering::SeqCst);
    if fd < 0 {
        return false;
    }
    // Rounded up, so a wait never ends a little early and spins.
    let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. EINTR or a readable pipe both just return;
    // the caller looks at the flag and the time again.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    true
}

/// Whether a stop has been asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A source of time and of waits.
pub trait Clock {
    fn now(&self) -> Instant;
    /// Waits for `d` unless a stop is requested; false when it was.
    fn sleep(&self, d: Duration) -> bool;
}

/// The machine's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if stop_requested() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if !wait_for_wakeup(left) {
                std::thread::sleep(left.min(Duration::from_millis(100)));
            }
        }
    }
}

/// A clock that moves only when someone waits on it, and remembers every
/// wait, so tests can assert on the daemon's timers without real time.
#[cfg(test)]
#[derive(Debug)]
pub struct VirtualClock {
    origin: Instant,
    elapsed: std::cell::Cell<Duration>,
    waits: std::cell::RefCell<Vec<Duration>>,
    stop_at: std::cell::Cell<Option<Duration>>,
}

#[cfg(test)]
impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl VirtualClock {
    pub fn new() -> Self {
        VirtualClock {
            origin: Instant::now(),
            elapsed: Default::default(),
            waits: Default::default(),
            stop_at: Default::default(),
        }
    }

    /// Virtual time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.elapsed.get()
    }

    /// Every wait so far, in order; and forgets them.
    pub fn take_waits(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.waits.borrow_mut())
    }

    /// A stop request (SIGTERM) arriving at virtual time `at`: the wait
    /// that reaches it ends there and reports the stop.
    pub fn stop_at(&self, at: Duration) {
        self.stop_at.set(Some(at));
    }
}

#[cfg(test)]
impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed.get()
    }

    fn sleep(&self, d: Duration) -> bool {
        self.waits.borrow_mut().push(d);
        let end = self.elapsed.get() + d;
        match self.stop_at.get() {
            Some(stop) if stop <= end => {
                self.elapsed.set(stop.max(self.elapsed.get()));
                false
            }
            _ => {
                self.elapsed.set(end);
                true
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Runs the test `name` again, alone, in a child process of the test
    /// binary, and asserts that it passed there; returns false here, and
    /// true in the child, which then runs the test's body. For a test that
    /// installs process-wide state (signal handlers, the stop flag) the
    /// other tests in this process must not see.
    pub(crate) fn in_own_process(name: &str) -> bool {
        const CHILD: &str = "WAAGENT_RS_TEST_IN_OWN_PROCESS";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        // Through the emulator when there is one (make cross's qemu-user).
        let out = crate::sim::skips::own_command(&std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }
    use super::*;

    #[test]
    fn virtual_time_moves_only_by_waiting() {
        let c = VirtualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        assert!(c.sleep(Duration::from_secs(10)));
        assert!(c.sleep(Duration::from_secs(20)));
        assert_eq!(c.now() - t0, Duration::from_secs(30));
        assert_eq!(
            c.take_waits(),
            [Duration::from_secs(10), Duration::from_secs(20)]
        );
        assert!(c.take_waits().is_empty());
    }

    #[test]
    fn a_stop_ends_the_wait_that_reaches_it() {
        let c = VirtualClock::new();
        c.stop_at(Duration::from_secs(15));
        assert!(c.sleep(Duration::from_secs(10)));
        assert!(!c.sleep(Duration::from_secs(10)));
        assert_eq!(c.elapsed(), Duration::from_secs(15));
    }

    /// This thread's voluntary context switches: one per time it slept.
    fn wakeups() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// With the self-pipe, a wait sleeps once however long it is, and a
    /// SIGTERM ends it at once. In a child process of its own: the stop
    /// flag is process-wide.
    #[test]
    fn with_the_self_pipe_a_wait_sleeps_once_and_a_stop_ends_it() {
        if !in_own_process("clock::tests::with_the_self_pipe_a_wait_sleeps_once_and_a_stop_ends_it")
        {
            return;
        }
        crate::daemon::install_handlers().unwrap();
        let before = wakeups();
        let start = Instant::now();
        assert!(SystemClock.sleep(Duration::from_millis(700)));
        assert!(start.elapsed() >= Duration::from_millis(700));
        // The 100 ms polling this replaces would have woken 7 times.
        let woke = wakeups() - before;
        assert!(woke <= 2, "woke {woke} times");

        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        });
        let start = Instant::now();
        assert!(!SystemClock.sleep(Duration::from_secs(600)));
        assert!(start.elapsed() < Duration::from_secs(300));
        // Stopped for good: later waits end at once.
        assert!(!SystemClock.sleep(Duration::from_secs(600)));
    }

    #[test]
    fn the_system_clock_waits_for_real() {
        let start = Instant::now();
        assert!(SystemClock.sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
