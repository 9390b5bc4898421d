//! The daemon's side: [`FirewallMonitor`] sets the rules up once the
//! WireServer's address is known, then checks them every
//! `OS.EnableFirewallPeriod`, logging what it finds with waagent's throttle.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{
    detect_backend, persist, Backend, Ensured, Firewall, FirewallError, Persisted, RulesState,
    NETWORK_SETUP_UNIT,
};
use crate::os::OsUtil;

/// After three reports, the periodic check keeps quiet this long (waagent's
/// throttle, so a VM whose rules keep vanishing does not flood the log).
const QUIET_AFTER_REPORTS: Duration = Duration::from_secs(12 * 3600);

/// The first three reports, then none for twelve hours (waagent's throttle).
#[derive(Debug, Default)]
struct Throttle {
    count: u32,
    quiet_until: Option<Instant>,
}

impl Throttle {
    fn allow(&mut self, now: Instant) -> bool {
        if self.quiet_until.is_some_and(|t| now < t) {
            return false;
        }
        self.count += 1;
        if self.count > 3 {
            self.quiet_until = Some(now + QUIET_AFTER_REPORTS);
            self.count = 0;
            return false;
        }
        true
    }
}

/// The daemon's firewall for one WireServer address: set up once
/// ([`initialize`](Self::initialize)), then checked every
/// `OS.EnableFirewallPeriod` ([`check`](Self::check)). Outcomes are logged
/// here; nothing is returned, as nothing else depends on them.
#[derive(Debug)]
pub struct FirewallMonitor {
    ip: Ipv4Addr,
    uid: u32,
    /// The agent's executable, for the boot unit; `None`: no unit.
    exe: Option<PathBuf>,
    backend: Option<Backend>,
    unsupported: bool,
    reports: Throttle,
    /// [`Firewall::snapshot`] of rules known complete: while it is found
    /// again, the periodic check costs one command instead of three.
    complete: Option<Vec<String>>,
}

impl FirewallMonitor {
    pub fn new(ip: Ipv4Addr, uid: u32, exe: Option<PathBuf>) -> Self {
        FirewallMonitor {
            ip,
            uid,
            exe,
            backend: None,
            unsupported: false,
            reports: Throttle::default(),
            complete: None,
        }
    }

    /// The WireServer address the rules are for.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The tool, found the first time it is needed. An unsupported OS is
    /// logged once, here; other failures are the caller's to report.
    fn firewall<'e>(&mut self, os: &'e dyn OsUtil) -> Result<Option<Firewall<'e>>, FirewallError> {
        if self.unsupported {
            return Ok(None);
        }
        if self.backend.is_none() {
            match detect_backend(os) {
                Ok(b) => {
                    log::info!(
                        "using {} {} for the WireServer firewall rules",
                        b.program(),
                        b.version()
                    );
                    self.backend = Some(b);
                }
                Err(FirewallError::Unsupported(m)) => {
                    log::warn!("{m}");
                    self.unsupported = true;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self
            .backend
            .clone()
            .map(|b| Firewall::new(os.env(), b, self.ip, self.uid)))
    }

    /// The first set-up, as the WireServer's address becomes known: the
    /// legacy rule out, the rules in, and their return at boot arranged.
    pub fn initialize(&mut self, os: &dyn OsUtil) {
        let ip = self.ip;
        let fw = match self.firewall(os) {
            Ok(Some(fw)) => fw,
            Ok(None) => return,
            Err(e) => {
                log::error!("cannot set the WireServer firewall rules for {ip}: {e}");
                return;
            }
        };
        match fw.remove_legacy_rule() {
            Ok(true) => {
                log::info!("removed the legacy firewall rule that accepted all traffic to {ip}")
            }
            Ok(false) => {}
            Err(e) => log::error!("cannot remove the legacy firewall rule for {ip}: {e}"),
        }
        let ensured = fw.ensure();
        if ensured.is_ok() {
            self.complete = complete_snapshot(&fw);
        }
        match ensured {
            Ok(Ensured::AlreadySet) => {
                log::info!("the WireServer firewall rules for {ip} are already set:\n{}", fw.listing())
            }
            Ok(Ensured::Set) => {
                log::info!("set the WireServer firewall rules for {ip}:\n{}", fw.listing())
            }
            Ok(Ensured::Repaired(why)) => log::warn!(
                "the WireServer firewall rules for {ip} were incomplete ({why}); set them again:\n{}",
                fw.listing()
            ),
            Err(e) => log::error!("cannot set the WireServer firewall rules for {ip}: {e}"),
        }
        let Some(exe) = &self.exe else {
            return;
        };
        match persist(os, ip, self.uid, exe) {
            Ok(Persisted::Firewalld(e)) => {
                log::info!("firewalld runs: its permanent rules keep the WireServer firewall ({e:?})")
            }
            Ok(Persisted::Unit {
                path,
                changed: true,
            }) => log::info!(
                "wrote and enabled {}: the rules come back at boot",
                path.display()
            ),
            Ok(Persisted::Unit { .. }) => {
                log::debug!("{NETWORK_SETUP_UNIT} is already in place and enabled")
            }
            Ok(Persisted::NotSystemd) => log::info!(
                "not systemd: nothing sets the WireServer firewall rules at boot until the daemon does"
            ),
            Err(e) => log::error!("cannot make the WireServer firewall rules persistent: {e}"),
        }
    }

    /// The periodic check (`OS.EnableFirewallPeriod`): sets what is missing,
    /// resets an incomplete set; reports are throttled.
    pub fn check(&mut self, os: &dyn OsUtil, now: Instant) {
        let ip = self.ip;
        let fw = match self.firewall(os) {
            Ok(Some(fw)) => fw,
            Ok(None) => return,
            Err(e) => {
                if self.reports.allow(now) {
                    log::warn!("cannot check the WireServer firewall rules for {ip}: {e}");
                }
                return;
            }
        };
        if let Some(known) = &self.complete {
            if fw.snapshot().ok().flatten().as_ref() == Some(known) {
                return;
            }
        }
        let result = match fw.check() {
            Ok(RulesState::Complete) => {
                self.complete = complete_snapshot(&fw);
                return;
            }
            Ok(RulesState::Absent) => {
                if self.reports.allow(now) {
                    log::warn!("the WireServer firewall rules for {ip} are not set; setting them");
                }
                fw.setup()
            }
            Ok(RulesState::Partial(why)) => {
                if self.reports.allow(now) {
                    log::warn!(
                        "the WireServer firewall rules for {ip} are incomplete ({why}); resetting them. Now:\n{}",
                        fw.listing()
                    );
                }
                fw.remove().and_then(|()| fw.setup())
            }
            Err(e) => Err(e),
        };
        self.complete = match result {
            Ok(()) => complete_snapshot(&fw),
            Err(_) => None,
        };
        match result {
            Ok(()) if self.reports.allow(now) => {
                log::info!(
                    "set the WireServer firewall rules for {ip}:\n{}",
                    fw.listing()
                )
            }
            Ok(()) => {}
            Err(e) => {
                if self.reports.allow(now) {
                    log::warn!("cannot set the WireServer firewall rules for {ip}: {e}");
                }
            }
        }
    }
}

/// A snapshot of rules just found or made complete, kept only if it shows
/// at least our rules: one that does not (a tool that prints them some
/// other way) would match their absence too.
fn complete_snapshot(fw: &Firewall<'_>) -> Option<Vec<String>> {
    fw.snapshot()
        .ok()
        .flatten()
        .filter(|s| s.len() >= super::Rule::ALL.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::firewall::testutil::*;
    use crate::os::{Flavour, Output, RecordingRunner};
    use std::rc::Rc;

    #[test]
    fn freebsd_is_not_supported_and_runs_nothing() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let os = crate::os::for_env(env(d.path(), Flavour::FreeBsd, runner.clone()));
        let err = Firewall::detect(&*os, WIRE, 0).err().unwrap();
        assert!(matches!(err, FirewallError::Unsupported(_)));
        assert!(
            err.to_string().contains("not supported on FreeBSD"),
            "{err}"
        );
        // The daemon's monitor finds that out once and then does nothing.
        let mut m = FirewallMonitor::new(WIRE, 0, Some(PathBuf::from("/usr/local/sbin/waagent")));
        m.initialize(&*os);
        let now = Instant::now();
        for i in 0..5 {
            m.check(&*os, now + Duration::from_secs(30 * i));
        }
        assert!(m.unsupported);
        assert!(runner.lines().is_empty(), "{:?}", runner.lines());
    }

    #[test]
    fn periodic_reports_are_throttled_as_waagent_does() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..5)
            .map(|i| t.allow(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        assert!(!t.allow(t0 + Duration::from_secs(11 * 3600)));
        assert!(t.allow(t0 + Duration::from_secs(13 * 3600)));
    }

    #[test]
    fn the_monitor_sets_up_once_then_puts_back_what_disappears() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let chain = fake_iptables(&runner);
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let mut m = FirewallMonitor::new(WIRE, 0, None);
        m.initialize(&*os);
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
        let now = Instant::now();
        let before = runner.lines().len();
        m.check(&*os, now);
        // Complete, as set: one listing, the same as then; no rule checks,
        // no version probe again.
        const LIST: &str = "iptables -w -t security -S OUTPUT";
        assert_eq!(runner.lines()[before..], [LIST]);
        chain.borrow_mut().clear();
        m.check(&*os, now);
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
        chain.borrow_mut().remove(1);
        let before = runner.lines().len();
        m.check(&*os, now);
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
        // The listing differed: each rule checked, the set made again.
        assert_eq!(
            runner.lines()[before..before + 4],
            [vec![LIST.to_string()], lines(CHECK, &[DNS, ROOT, DROP])].concat()
        );
        // Another rule for the WireServer, ahead of ours: the listing
        // differs, the rules are checked (complete), and that listing is
        // the one compared from then on.
        chain.borrow_mut().insert(0, spec("-j LOG"));
        let before = runner.lines().len();
        m.check(&*os, now);
        assert_eq!(
            runner.lines()[before..],
            [
                vec![LIST.to_string()],
                lines(CHECK, &[DNS, ROOT, DROP]),
                vec![LIST.to_string()]
            ]
            .concat()
        );
        let before = runner.lines().len();
        m.check(&*os, now);
        assert_eq!(runner.lines()[before..], [LIST]);
    }

    /// A listing that does not show our rules (a tool that prints them
    /// some other way) is never trusted: it would match their absence.
    #[test]
    fn a_listing_without_our_rules_is_not_a_proof() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.respond(|cmd| {
            (cmd.argv().contains(&"-S".to_string())).then(|| Ok(Output::ok("-P OUTPUT ACCEPT\n")))
        });
        let chain = fake_iptables(&runner);
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let mut m = FirewallMonitor::new(WIRE, 0, None);
        m.initialize(&*os);
        assert_eq!(m.complete, None);
        chain.borrow_mut().clear();
        m.check(&*os, Instant::now());
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
    }
}
