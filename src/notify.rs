//! sd_notify(3), written by hand: one datagram per message to the socket
//! systemd names in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Under `Type=notify` the daemon says `READY=1` once its loop
//! runs, `STATUS=` whenever the state's text changes, `WATCHDOG=1` while
//! its loop turns, and `STOPPING=1` on its way out.
//!
//! The watchdog (`WatchdogSec=` in the unit; systemd passes `WATCHDOG_USEC`,
//! and `WATCHDOG_PID` when the pings must come from one process) is kept
//! alive from the loop's turns, from every wait of the daemon's clock, which
//! then never sleeps longer than half the interval in one poll(2), and from
//! the ticks of the work that blocks with a deadline (a command the runner
//! waits for, a download's chunks): all of these prove the loop is moving.
//! A loop stuck anywhere else stops pinging, and systemd restarts it.
//!
//! Without `NOTIFY_SOCKET` (rc.d, SysV, by hand) every function here does
//! nothing. The variables are taken out of the environment at start, so the
//! children the agent runs (extension handlers, custom data) cannot speak
//! to systemd for it.
//!
//! `Debug.HangFile` (a test-only fault): while that file exists, the loop
//! and every wait of the clock block in [`hold_while_hung`] without pinging,
//! so a test can watch systemd restart a hung agent; a stop request still
//! ends it.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Where the messages go, as `$NOTIFY_SOCKET` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    /// `@name`: a socket in Linux's abstract namespace (the name without
    /// the `@`, which stands for the leading NUL byte).
    Abstract(Vec<u8>),
}

/// `$NOTIFY_SOCKET`'s value: an absolute path or `@name`; anything else
/// (empty, relative, systemd's `vsock:` form) is not for us.
pub fn parse_socket(value: &str) -> Option<Target> {
    if let Some(name) = value.strip_prefix('@') {
        return (!name.is_empty()).then(|| Target::Abstract(name.as_bytes().to_vec()));
    }
    value
        .starts_with('/')
        .then(|| Target::Path(PathBuf::from(value)))
}

/// The watchdog interval from `WATCHDOG_USEC` and `WATCHDOG_PID`, as
/// sd_watchdog_enabled(3) reads them: none when unset, zero or not a
/// number, or when `WATCHDOG_PID` names another process (or is not a pid).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// The longest single wait with the watchdog at `interval`: half of it, so
/// a ping after each wait always comes in time.
pub fn longest_wait_for(interval: Duration) -> Duration {
    interval / 2
}

/// Pings closer together than this are skipped: a command checked every
/// 20 ms would otherwise send fifty datagrams a second.
pub fn ping_spacing(interval: Duration) -> Duration {
    interval / 4
}

/// `d`, or at most `longest` when the watchdog is on.
pub fn cap_wait(d: Duration, longest: Option<Duration>) -> Duration {
    longest.map_or(d, |m| d.min(m))
}

/// `STATUS=text` on one line (a newline would start another assignment).
pub fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

/// A connection to the service manager's socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    target: Target,
    watchdog: Option<Duration>,
    last_status: Mutex<Option<String>>,
    last_ping: Mutex<Option<Instant>>,
}

impl Notifier {
    /// An unbound datagram socket that sends to `target`; pings are due
    /// every `watchdog` when set.
    pub fn new(target: Target, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let addr = match &target {
            Target::Path(p) => SocketAddr::from_pathname(p)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Target::Abstract(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist only on Linux",
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A service manager that stops reading must not stop the loop.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            target,
            watchdog,
            last_status: Mutex::new(None),
            last_ping: Mutex::new(None),
        })
    }

    /// From systemd's variables, which it takes out of the environment so
    /// no child inherits them; none when `NOTIFY_SOCKET` is unset or bad.
    /// Call while the process has one thread.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var(NOTIFY_SOCKET).ok();
        let usec = std::env::var(WATCHDOG_USEC).ok();
        let pid = std::env::var(WATCHDOG_PID).ok();
        for var in [NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID] {
            std::env::remove_var(var);
        }
        let socket = socket?;
        let Some(target) = parse_socket(&socket) else {
            log::warn!("{NOTIFY_SOCKET}={socket:?} is not a socket path or @name; not notifying");
            return None;
        };
        let watchdog = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id());
        match Notifier::new(target, watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("cannot use {NOTIFY_SOCKET}={socket:?}: {e}; not notifying");
                None
            }
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The watchdog interval, when systemd asked for pings.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    fn send_logged(&self, message: &str) -> bool {
        match self.send(message) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("{NOTIFY_SOCKET}: cannot send {message:?}: {e}");
                false
            }
        }
    }

    pub fn ready(&self) {
        if !self.send_logged("READY=1") {
            log::warn!("cannot tell the service manager the daemon is ready");
        }
    }

    /// `STATUS=text`, unless it is the text last sent; true when sent.
    pub fn status(&self, text: &str) -> bool {
        let mut last = self.last_status.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(text) {
            return false;
        }
        let sent = self.send_logged(&status_message(text));
        if sent {
            *last = Some(text.to_string());
        }
        sent
    }

    /// The status last sent.
    pub fn last_status(&self) -> Option<String> {
        self.last_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `WATCHDOG=1` when the watchdog is on and the last ping is at least
    /// [`ping_spacing`] old at `now`; true when sent.
    pub fn ping(&self, now: Instant) -> bool {
        let Some(interval) = self.watchdog else {
            return false;
        };
        let mut last = self.last_ping.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < ping_spacing(interval)) {
            return false;
        }
        let sent = self.send_logged("WATCHDOG=1");
        if sent {
            *last = Some(now);
        }
        sent
    }

    /// `STOPPING=1` with the status `Stopping`.
    pub fn stopping(&self) {
        self.send_logged(&format!("STOPPING=1\n{}", status_message("Stopping")));
        *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) = Some("Stopping".into());
    }
}

/// The daemon's notifier, once installed.
static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
/// `Debug.HangFile`, once the daemon has set it.
static HANG_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Makes `n` the process's notifier (the first one installed stays).
pub fn install(n: Notifier) {
    let _ = NOTIFIER.set(n);
}

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get()
}

/// `READY=1`.
pub fn ready() {
    if let Some(n) = notifier() {
        n.ready();
    }
}

/// `STATUS=text` when it changed.
pub fn status(text: &str) {
    if let Some(n) = notifier() {
        n.status(text);
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    if let Some(n) = notifier() {
        n.stopping();
    }
}

/// `WATCHDOG=1`, when the watchdog is on and the last ping is not recent.
pub fn keepalive() {
    if let Some(n) = notifier() {
        n.ping(Instant::now());
    }
}

/// The longest single wait: half the watchdog interval, when it is on.
pub fn longest_wait() -> Option<Duration> {
    notifier()
        .and_then(Notifier::watchdog)
        .map(longest_wait_for)
}

/// Arms the `Debug.HangFile` fault (test-only; the first path set stays).
pub fn set_hang_file(path: &Path) {
    let _ = HANG_FILE.set(path.to_path_buf());
}

/// While the `Debug.HangFile` exists, blocks without pinging the watchdog
/// (and tells the service manager why); returns false when a stop was
/// requested meanwhile, true at once when the fault is off.
pub fn hold_while_hung() -> bool {
    let Some(path) = HANG_FILE.get() else {
        return true;
    };
    if !path.exists() {
        return true;
    }
    log::warn!(
        "Debug.HangFile {} exists: the loop hangs, without watchdog pings, until it is removed",
        path.display()
    );
    // The hang may begin inside a wait: the status before it is what
    // holds again once it is over, whether or not the loop turns then.
    let before = notifier().and_then(Notifier::last_status);
    status(&format!(
        "Hung: Debug.HangFile {} exists (a test fault)",
        path.display()
    ));
    while path.exists() {
        if !crate::clock::pause(Duration::from_millis(200)) {
            return false;
        }
    }
    log::info!(
        "Debug.HangFile {} is gone: the loop goes on",
        path.display()
    );
    if let Some(text) = before {
        status(&text);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket("/run/systemd/notify"),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_socket("@/org/freedesktop/systemd1/notify/123"),
            Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        for bad in ["", "@", "run/notify", "vsock:2:1234"] {
            assert_eq!(parse_socket(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn watchdog_variables() {
        let s = Duration::from_secs;
        assert_eq!(watchdog_interval(Some("60000000"), None, 7), Some(s(60)));
        assert_eq!(
            watchdog_interval(Some("60000000"), Some("7"), 7),
            Some(s(60))
        );
        // The pings are someone else's job.
        assert_eq!(watchdog_interval(Some("60000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("60000000"), Some("x"), 7), None);
        for bad in [None, Some(""), Some("0"), Some("-5"), Some("1e6")] {
            assert_eq!(watchdog_interval(bad, None, 7), None, "{bad:?}");
        }
    }

    #[test]
    fn waits_are_capped_at_half_the_interval() {
        let s = Duration::from_secs;
        let longest = Some(longest_wait_for(s(60)));
        assert_eq!(longest, Some(s(30)));
        // The idle daemon's 300 s goal-state period, without pings in it,
        // would outlast the watchdog.
        assert_eq!(cap_wait(s(300), longest), s(30));
        assert_eq!(cap_wait(s(6), longest), s(6));
        assert_eq!(cap_wait(s(300), None), s(300));
        assert_eq!(ping_spacing(s(60)), s(15));
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(
            status_message("Steady: incarnation 3, 2 handlers"),
            "STATUS=Steady: incarnation 3, 2 handlers"
        );
        assert_eq!(status_message("a\nb\rc"), "STATUS=a b c");
    }

    fn listener() -> (tempfile::TempDir, UnixDatagram, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        (dir, sock, path)
    }

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn messages_reach_the_socket_and_a_status_only_when_it_changes() {
        let (_dir, sock, path) = listener();
        let n = Notifier::new(Target::Path(path), None).unwrap();
        n.ready();
        assert!(n.status("Boot: preparing"));
        assert!(!n.status("Boot: preparing"));
        assert!(n.status("Steady: incarnation 1, no handlers"));
        // No watchdog asked for: no pings.
        assert!(!n.ping(Instant::now()));
        n.stopping();
        assert_eq!(
            received(&sock),
            [
                "READY=1",
                "STATUS=Boot: preparing",
                "STATUS=Steady: incarnation 1, no handlers",
                "STOPPING=1\nSTATUS=Stopping",
            ]
        );
    }

    #[test]
    fn pings_are_spaced() {
        let (_dir, sock, path) = listener();
        let n = Notifier::new(Target::Path(path), Some(Duration::from_secs(8))).unwrap();
        let t0 = Instant::now();
        assert!(n.ping(t0));
        assert!(!n.ping(t0 + Duration::from_secs(1)));
        assert!(n.ping(t0 + Duration::from_secs(2)));
        assert_eq!(received(&sock), ["WATCHDOG=1", "WATCHDOG=1"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("waagent-rs-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_nonblocking(true).unwrap();
        let target = parse_socket(&format!("@{name}")).unwrap();
        Notifier::new(target, None).unwrap().ready();
        assert_eq!(received(&sock), ["READY=1"]);
    }

    /// The system clock's waits, plain and watching descriptors, each last
    /// at most half the watchdog's interval and end with a ping:
    /// at a 200 ms interval, two seconds ping at least three times (an
    /// uncapped wait would ping once, at its end). In a child process
    /// of its own: the notifier is process-wide.
    #[test]
    fn the_clocks_waits_ping_the_watchdog() {
        use crate::clock::{Clock, SystemClock, Watched};
        use std::os::fd::{AsRawFd, RawFd};
        if !crate::clock::tests::in_own_process("notify::tests::the_clocks_waits_ping_the_watchdog")
        {
            return;
        }
        let (_dir, sock, path) = listener();
        install(Notifier::new(Target::Path(path), Some(Duration::from_millis(200))).unwrap());
        assert_eq!(longest_wait(), Some(Duration::from_millis(100)));

        assert!(SystemClock.sleep(Duration::from_secs(2)));
        let pings = received(&sock).len();
        assert!(pings >= 3, "{pings} pings in a plain wait");

        /// A pipe nobody writes to: watched, never readable.
        struct Quiet(std::os::fd::OwnedFd);
        impl Watched for Quiet {
            fn fds(&self) -> Vec<RawFd> {
                vec![self.0.as_raw_fd()]
            }
            fn readable(&mut self, _: RawFd) {}
        }
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert!(SystemClock.sleep_watching(Duration::from_secs(2), &mut Quiet(read)));
        let pings = received(&sock).len();
        assert!(pings >= 3, "{pings} pings in a watching wait");
    }

    #[test]
    fn an_absent_listener_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(Target::Path(dir.path().join("gone")), None).unwrap();
        assert!(n.send("READY=1").is_err());
        assert!(!n.status("Boot"));
        // Not remembered as sent: tried again next time.
        assert!(!n.status("Boot"));
    }
}
