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
//!
//! A wait can also watch descriptors of its own ([`Clock::sleep_watching`]:
//! the load-balancer probe responder's sockets): they join the self-pipe in
//! the same `poll(2)`, each one readable is handed to its owner at once,
//! and the wait goes on for the rest of its time. So the single-threaded
//! daemon answers a probe within a moment while it idles, without a thread
//! or a busy loop.
//!
//! Under systemd's watchdog (`crate::notify`) a wait wakes every half
//! interval to ping it.

use std::os::fd::RawFd;
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
    let ms = poll_ms(d);
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

/// One wait of up to `d` (a tenth of a second at most without the
/// self-pipe) that a stop request ends; false when one was made. Nothing
/// else happens in it: no watchdog ping.
pub fn pause(d: Duration) -> bool {
    if stop_requested() {
        return false;
    }
    if !wait_for_wakeup(d) {
        std::thread::sleep(d.min(Duration::from_millis(100)));
    }
    !stop_requested()
}

/// Whether a stop has been asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Descriptors a wait watches besides the stop request, and their owner,
/// which handles each one that becomes readable.
pub trait Watched {
    /// The descriptors to watch now (asked again after each one handled).
    fn fds(&self) -> Vec<RawFd>;
    /// `fd` is readable (or hung up, or in error): handle it without
    /// blocking.
    fn readable(&mut self, fd: RawFd);
}

/// A source of time and of waits.
pub trait Clock {
    fn now(&self) -> Instant;
    /// Waits for `d` unless a stop is requested; false when it was.
    fn sleep(&self, d: Duration) -> bool;

    /// [`Clock::sleep`], while handing each descriptor of `watched` that
    /// becomes readable to it. This default, for clocks whose time is not
    /// the machine's (the tests' virtual clock), handles what is readable
    /// at once, then sleeps: its waits cannot be spent in `poll(2)`.
    fn sleep_watching(&self, d: Duration, watched: &mut dyn Watched) -> bool {
        serve(watched, None, 0);
        self.sleep(d)
    }
}

/// One `poll(2)` over `watched`'s descriptors (and `wake`, the self-pipe,
/// when given) for up to `timeout_ms`; hands each readable one to
/// `watched`. Returns how many were.
fn serve(watched: &mut dyn Watched, wake: Option<RawFd>, timeout_ms: i32) -> usize {
    let fds = watched.fds();
    if fds.is_empty() && wake.is_none() {
        return 0;
    }
    let mut pfds: Vec<libc::pollfd> = wake
        .into_iter()
        .chain(fds.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds. EINTR (a
    // signal) just returns; the caller looks at the flag and the time.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return 0;
    }
    let ready: Vec<RawFd> = pfds
        .iter()
        .skip(usize::from(wake.is_some()))
        .filter(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
        .map(|p| p.fd)
        .collect();
    for &fd in &ready {
        watched.readable(fd);
    }
    ready.len()
}

/// Milliseconds for `poll(2)`, rounded up, so a wait never ends a little
/// early and spins.
fn poll_ms(d: Duration) -> i32 {
    d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

/// The machine's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Under a service watchdog no single poll(2) outlasts half its
    /// interval, and each ends with a ping (`crate::notify`).
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if stop_requested() || !crate::notify::hold_while_hung() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            pause(crate::notify::cap_wait(left, crate::notify::longest_wait()));
            crate::notify::keepalive();
        }
    }

    fn sleep_watching(&self, d: Duration, watched: &mut dyn Watched) -> bool {
        let end = Instant::now() + d;
        loop {
            if stop_requested() || !crate::notify::hold_while_hung() {
                return false;
            }
            if watched.fds().is_empty() {
                return self.sleep(end.saturating_duration_since(Instant::now()));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            // As in `sleep`: at most half the watchdog's interval at once.
            let left = crate::notify::cap_wait(left, crate::notify::longest_wait());
            // Without the self-pipe a stop is only seen by looking.
            let wake = WAKE_READ.load(Ordering::SeqCst);
            let (wake, slice) = match wake >= 0 {
                true => (Some(wake), left),
                false => (None, left.min(Duration::from_millis(100))),
            };
            serve(watched, wake, poll_ms(slice));
            crate::notify::keepalive();
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

    /// A pipe whose read end a wait watches; counts the bytes it read.
    struct PipeWatch {
        read: std::os::unix::net::UnixStream,
        got: Vec<u8>,
    }

    impl Watched for PipeWatch {
        fn fds(&self) -> Vec<RawFd> {
            use std::os::fd::AsRawFd;
            vec![self.read.as_raw_fd()]
        }
        fn readable(&mut self, _fd: RawFd) {
            use std::io::Read;
            let mut buf = [0u8; 16];
            if let Ok(n) = self.read.read(&mut buf) {
                self.got.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn pipe_watch() -> (PipeWatch, std::os::unix::net::UnixStream) {
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        read.set_nonblocking(true).unwrap();
        (
            PipeWatch {
                read,
                got: Vec::new(),
            },
            write,
        )
    }

    /// What becomes readable during a wait is handled then, and the wait
    /// still lasts its whole time.
    #[test]
    fn a_watched_descriptor_is_handled_during_the_wait_which_goes_on() {
        use std::io::Write;
        let (mut watch, mut write) = pipe_watch();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            write.write_all(b"a").unwrap();
            // The second byte only once the first was handled.
            rx.recv().unwrap();
            write.write_all(b"b").unwrap();
        });
        struct Signal<'a>(&'a mut PipeWatch, Option<std::sync::mpsc::Sender<()>>);
        impl Watched for Signal<'_> {
            fn fds(&self) -> Vec<RawFd> {
                self.0.fds()
            }
            fn readable(&mut self, fd: RawFd) {
                self.0.readable(fd);
                if let Some(tx) = self.1.take() {
                    tx.send(()).unwrap();
                }
            }
        }
        let start = Instant::now();
        let mut w = Signal(&mut watch, Some(tx));
        assert!(SystemClock.sleep_watching(Duration::from_millis(400), &mut w));
        assert!(start.elapsed() >= Duration::from_millis(400));
        writer.join().unwrap();
        assert_eq!(watch.got, b"ab");
    }

    /// With the self-pipe, a watched descriptor is handled in the same
    /// poll(2), and a SIGTERM still ends the wait at once. In a child
    /// process of its own: the stop flag is process-wide.
    #[test]
    fn with_the_self_pipe_a_watching_wait_handles_its_descriptors_and_stops() {
        if !in_own_process(
            "clock::tests::with_the_self_pipe_a_watching_wait_handles_its_descriptors_and_stops",
        ) {
            return;
        }
        use std::io::Write;
        crate::daemon::install_handlers().unwrap();
        let (mut watch, mut write) = pipe_watch();
        std::thread::spawn(move || {
            write.write_all(b"a").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
            // Kept open: a hung-up pipe would be readable for ever.
            std::thread::sleep(Duration::from_secs(600));
        });
        let start = Instant::now();
        assert!(!SystemClock.sleep_watching(Duration::from_secs(600), &mut watch));
        assert!(start.elapsed() < Duration::from_secs(300));
        assert_eq!(watch.got, b"a");
    }

    /// The virtual clock handles what is readable when the wait begins and
    /// moves its time by the whole wait.
    #[test]
    fn the_virtual_clock_handles_what_is_readable_then_moves_on() {
        use std::io::Write;
        let (mut watch, mut write) = pipe_watch();
        let c = VirtualClock::new();
        assert!(c.sleep_watching(Duration::from_secs(6), &mut watch));
        assert!(watch.got.is_empty());
        write.write_all(b"x").unwrap();
        assert!(c.sleep_watching(Duration::from_secs(6), &mut watch));
        assert_eq!(watch.got, b"x");
        assert_eq!(c.take_waits(), [Duration::from_secs(6); 2]);
    }

    #[test]
    fn the_system_clock_waits_for_real() {
        let start = Instant::now();
        assert!(SystemClock.sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
