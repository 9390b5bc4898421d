//! The retry loop every fabric call goes through (§4.3): quick first
//! retries, then Fibonacci back-off, throttling, 410 handed back to the
//! caller, all bounded by a [`RetryPolicy`].

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use super::{WireClient, WireError, MAX_DOCUMENT_BYTES};
use crate::http::{self, DownloadError, Request, Response};

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for errors that are not throttling.
    pub attempts: u32,
    /// The first retries come quickly: the n-th of them waits
    /// `quick_delay × n`. A dropped connection or a half answer is usually
    /// over in a second; waagent's first wait is 2 s (30 s for health).
    pub quick_retries: u32,
    pub quick_delay: Duration,
    /// Back-off unit: every later retry n waits `delay × Fibonacci(n + 1)`.
    pub delay: Duration,
    /// Attempts once the server has throttled us (403, 429, 503).
    pub throttled_attempts: u32,
    /// Fixed wait between throttled attempts.
    pub throttled_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub deadline: Duration,
    /// Wait between goal-state requests that lack a RoleInstance.
    pub no_role_instance_delay: Duration,
}

impl RetryPolicy {
    /// WireServer and HostGAPlugin calls: 6 attempts, 1+2+5+8+13 s apart
    /// (waagent: 2+3+5+8+13); throttled: 25 attempts 1 s apart; nothing
    /// starts after 5 minutes.
    pub fn fabric() -> Self {
        RetryPolicy {
            attempts: 6,
            quick_retries: 2,
            quick_delay: Duration::from_secs(1),
            delay: Duration::from_secs(1),
            throttled_attempts: 25,
            throttled_delay: Duration::from_secs(1),
            deadline: Duration::from_secs(300),
            no_role_instance_delay: Duration::from_millis(500),
        }
    }

    /// Health reports: the current agent's 30 attempts, 15 s unit, after
    /// the quick 1 and 2 s (waagent: 30, 45, 75 s …).
    pub fn health() -> Self {
        RetryPolicy {
            attempts: 30,
            delay: Duration::from_secs(15),
            deadline: Duration::from_secs(1800),
            ..Self::fabric()
        }
    }

    /// The wait before retry `retry` (the first is 1).
    pub fn backoff(&self, retry: u32) -> Duration {
        if retry <= self.quick_retries {
            return self.quick_delay.saturating_mul(retry);
        }
        let (mut a, mut b) = (1u32, 1u32);
        for _ in 0..=retry {
            (a, b) = (b, a.saturating_add(b));
        }
        self.delay.saturating_mul(a)
    }
}

/// Statuses worth another attempt (§4.3).
fn retryable(status: u16) -> bool {
    matches!(
        status,
        205 | 206 | 403 | 429 | 500 | 501 | 502 | 503 | 504 | 507
    )
}

fn throttled(status: u16) -> bool {
    matches!(status, 403 | 429 | 503)
}

/// A request as the retry loop sees it.
pub(super) struct Call<'a> {
    pub(super) method: &'a str,
    pub(super) url: &'a str,
    pub(super) headers: Vec<(&'a str, String)>,
    pub(super) body: Option<&'a [u8]>,
    /// Statuses that count as success.
    pub(super) ok: &'a [u16],
    pub(super) retry: &'a RetryPolicy,
    /// Extra statuses retried for this call (HostGAPlugin artifact warm-up: 400).
    pub(super) also_retry: &'a [u16],
    /// Storage calls only: `HttpProxy.*`.
    pub(super) proxy: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// The common case: no headers or body, 200 is success, the retry
    /// policy given, no extra retries, no proxy.
    pub(super) fn new(method: &'a str, url: &'a str, retry: &'a RetryPolicy) -> Self {
        Call {
            method,
            url,
            headers: Vec::new(),
            body: None,
            ok: &[200],
            retry,
            also_retry: &[],
            proxy: None,
        }
    }
}

/// A download's deadline grows with what it may fetch: minreq's timeout
/// bounds the whole exchange, so allow the usual timeout plus a second per
/// MiB (a floor of 1 MiB/s).
fn download_timeout(timeout_secs: u64, max_bytes: u64) -> u64 {
    timeout_secs.saturating_add(max_bytes.div_ceil(1 << 20))
}

impl WireClient {
    /// One logical request with retries. Returns the successful response.
    pub(super) fn execute(&self, call: &Call<'_>) -> Result<Response, WireError> {
        self.execute_with(call, |req| http::send(req).map_err(WireError::Transport))
    }

    /// [`execute`](Self::execute) with the body of a successful answer
    /// streamed into a new file `dest` (see [`http::download`]); returns the
    /// bytes written. An attempt that fails leaves no file, so the next one
    /// can create it again; an oversized artifact or a local file error ends
    /// the call at once.
    pub(super) fn execute_download(
        &self,
        call: &Call<'_>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, WireError> {
        let written = Cell::new(0);
        self.execute_with(call, |req| {
            let req = Request {
                timeout_secs: download_timeout(req.timeout_secs, max_bytes),
                ..req.clone()
            };
            match http::download(&req, dest, max_bytes) {
                Ok(d) => {
                    // A 2xx the call does not accept (206, say) wrote a file.
                    if d.written > 0 && !call.ok.contains(&d.status) {
                        let _ = std::fs::remove_file(dest);
                    }
                    written.set(d.written);
                    Ok(Response {
                        status: d.status,
                        headers: d.headers,
                        body: d.error_body,
                    })
                }
                Err(DownloadError::Transport(e)) => Err(WireError::Transport(e)),
                Err(DownloadError::TooLarge { url, limit }) => {
                    Err(WireError::TooLarge { url, limit })
                }
                Err(DownloadError::File { path, source }) => Err(WireError::Io { path, source }),
            }
        })?;
        Ok(written.get())
    }

    /// The retry loop around `send`: a `WireError::Transport` it returns is
    /// retried like a failed connection; any other error ends the call.
    fn execute_with(
        &self,
        call: &Call<'_>,
        mut send: impl FnMut(&Request<'_>) -> Result<Response, WireError>,
    ) -> Result<Response, WireError> {
        let started = self.clock.now();
        let mut attempts = 0u32;
        let mut budget = call.retry.attempts.max(1);
        let mut throttled_mode = false;
        let shown = crate::redact::redact_url(call.url);
        loop {
            attempts += 1;
            // Each attempt is bounded by its timeout: a turn that fetches
            // many documents keeps systemd's watchdog fed between them.
            crate::notify::keepalive();
            let headers: Vec<(&str, &str)> = call
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                // No `Connection: close` (waagent sends it): the connection
                // is kept for the next poll (http/plain/idle.rs).
                .chain([("User-Agent", self.user_agent.as_str())])
                .collect();
            let result = send(&Request {
                method: call.method,
                url: call.url,
                headers: &headers,
                body: call.body,
                timeout_secs: self.options.timeout_secs,
                max_body: MAX_DOCUMENT_BYTES,
                proxy: call.proxy,
            });
            let failure = match result {
                Ok(r) if call.ok.contains(&r.status) => return Ok(r),
                Ok(r) if r.status == 410 => {
                    return Err(WireError::Gone {
                        url: call.url.to_string(),
                    })
                }
                Ok(r) => {
                    let status = r.status;
                    let err = WireError::Status {
                        url: call.url.to_string(),
                        status,
                        body: String::from_utf8_lossy(&r.body).into_owned(),
                    };
                    if !retryable(status) && !call.also_retry.contains(&status) {
                        return Err(err);
                    }
                    if throttled(status) && !throttled_mode {
                        throttled_mode = true;
                        budget = budget.max(call.retry.throttled_attempts);
                    }
                    err
                }
                Err(WireError::Transport(e)) => WireError::Transport(e),
                Err(e) => return Err(e),
            };
            let wait = if throttled_mode {
                call.retry.throttled_delay
            } else {
                call.retry.backoff(attempts)
            };
            let spent = self.clock.now().saturating_duration_since(started);
            let out_of_budget = attempts >= budget || spent + wait > call.retry.deadline;
            if !out_of_budget {
                // Debug only: the caller logs the outcome once, so a fabric
                // that is down for minutes does not flood the log.
                log::debug!(
                    "{} {shown}: {failure}; retrying in {wait:?} (attempt {attempts} of {budget})",
                    call.method
                );
            }
            // A stop request during the wait ends the retries too.
            if out_of_budget || !self.clock.sleep(wait) {
                return Err(WireError::Exhausted {
                    url: call.url.to_string(),
                    attempts,
                    last: Box::new(failure),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_retries_then_fibonacci_backoff() {
        let waits = |p: RetryPolicy, n: u32| -> Vec<u64> {
            (1..=n).map(|n| p.backoff(n).as_secs()).collect()
        };
        // Waagent's 2, 3, 5, 8, 13 s and 30, 45, 75, 120 s, but the first two.
        assert_eq!(waits(RetryPolicy::fabric(), 5), [1, 2, 5, 8, 13]);
        assert_eq!(waits(RetryPolicy::health(), 5), [1, 2, 75, 120, 195]);
        // The patience stays waagent's: attempts and deadlines.
        let (f, h) = (RetryPolicy::fabric(), RetryPolicy::health());
        assert_eq!(
            (f.attempts, f.throttled_attempts, f.deadline.as_secs()),
            (6, 25, 300)
        );
        assert_eq!(
            (h.attempts, h.throttled_attempts, h.deadline.as_secs()),
            (30, 25, 1800)
        );
    }

    /// A client of `sim` with the production policies, waiting on `clock`.
    fn client(
        sim: &crate::sim::FabricSim,
        clock: &std::rc::Rc<crate::clock::VirtualClock>,
    ) -> WireClient {
        let openssl = crate::wire::crypto::Openssl::new(
            std::path::PathBuf::from("openssl"),
            std::rc::Rc::new(crate::os::SystemRunner),
        );
        WireClient::new(
            sim.endpoint(),
            Path::new("/nonexistent"),
            openssl,
            super::super::ClientOptions::default(),
        )
        .with_clock(clock.clone())
    }

    /// The schedule as the client keeps it, on the virtual clock: one
    /// transient fault of any kind costs one wait of 1 s (the fault
    /// matrix's bound is 3 s), two in a row 1 + 2 s, and a health report
    /// waits the same (waagent: 30 s).
    #[test]
    fn a_transient_fault_is_retried_after_a_second() {
        use crate::sim::{FabricSim, Fault, SimConfig};
        use crate::wire::reports::{Health, ReportTarget};
        let secs = |waits: Vec<Duration>| -> Vec<f64> {
            waits.iter().map(Duration::as_secs_f64).collect()
        };
        let faults = [
            Fault::Reset,
            Fault::Truncate,
            Fault::Oversized(5 << 20),
            Fault::Status(500),
            Fault::Status(503),
            Fault::Status(429),
        ];
        for fault in faults {
            let sim = FabricSim::start(SimConfig::default()).unwrap();
            let clock = std::rc::Rc::new(crate::clock::VirtualClock::new());
            sim.inject("comp=versions", [fault.clone()]);
            client(&sim, &clock).versions().unwrap();
            assert_eq!(secs(clock.take_waits()), [1.0], "{fault:?}");
        }
        let sim = FabricSim::start(SimConfig::default()).unwrap();
        let clock = std::rc::Rc::new(crate::clock::VirtualClock::new());
        sim.inject("comp=versions", [Fault::Reset, Fault::Truncate]);
        client(&sim, &clock).versions().unwrap();
        assert_eq!(secs(clock.take_waits()), [1.0, 2.0]);

        let target = ReportTarget {
            incarnation: "1".into(),
            container_id: SimConfig::default().container_id,
            instance_id: SimConfig::default().instance_id,
        };
        // The health report goes on the connection the versions kept. A
        // reset there, before any answer, is what a server's idle close
        // looks like: sent again at once on a new connection. A reset of
        // that one too is a fault, waited for.
        let faults = [
            (vec![Fault::Reset], 2, vec![]),
            (vec![Fault::Reset, Fault::Reset], 3, vec![1.0]),
            (vec![Fault::Oversized(5 << 20)], 2, vec![1.0]),
        ];
        for (fault, sent, waits) in faults {
            let before = sim.requests_to("comp=health").len();
            sim.inject("comp=health", fault.clone());
            client(&sim, &clock)
                .report_health(&target, &Health::Ready)
                .unwrap();
            assert_eq!(secs(clock.take_waits()), waits, "{fault:?}");
            assert_eq!(
                sim.requests_to("comp=health").len() - before,
                sent,
                "{fault:?}"
            );
        }
        // Persistent failure: waagent's 30 attempts over half an hour.
        sim.inject("comp=health", vec![Fault::Status(500); 40]);
        let err = client(&sim, &clock)
            .report_health(&target, &Health::Ready)
            .unwrap_err()
            .to_string();
        let waits = secs(clock.take_waits());
        assert_eq!(waits[..5], [1.0, 2.0, 75.0, 120.0, 195.0]);
        assert!(waits.iter().sum::<f64>() <= 1800.0, "{waits:?}");
        assert!(err.contains("gave up after"), "{err}");
    }

    #[test]
    fn download_deadline_grows_with_the_bound() {
        assert_eq!(download_timeout(10, 0), 10);
        assert_eq!(download_timeout(10, 1), 11);
        assert_eq!(download_timeout(10, 256 << 20), 266);
        assert_eq!(download_timeout(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn retry_classes() {
        for s in [205, 206, 403, 429, 500, 501, 502, 503, 504, 507] {
            assert!(retryable(s), "{s}");
        }
        for s in [200, 400, 404, 410] {
            assert!(!retryable(s), "{s}");
        }
        assert!(throttled(429) && throttled(403) && throttled(503) && !throttled(500));
    }
}
