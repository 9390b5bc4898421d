//! Time as the agent sees it: what time it is and how to wait.
//!
//! Every wait of the daemon — Connect's back-off, the goal-state period, the
//! monitors' periods, the client's retries — goes through a [`Clock`], so the
//! state machine can be driven by a `VirtualClock` in tests: time moves only
//! when the daemon waits, and hours of back-off pass in microseconds.
//!
//! A wait ends early when the process is asked to stop (SIGTERM/SIGINT set
//! the flag through [`request_stop`]), so a stop takes effect within a tenth
//! of a second of any wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every wait to end. Async-signal-safe: only stores to an atomic.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
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
            std::thread::sleep(left.min(Duration::from_millis(100)));
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
mod tests {
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

    #[test]
    fn the_system_clock_waits_for_real() {
        let start = Instant::now();
        assert!(SystemClock.sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
