//! The way to Ready, phase by phase, on the daemon's own monotonic clock:
//! logged as one line when the daemon reports Ready (or ProvisioningFailed),
//! so where the time went can be read from the log, and measured by the
//! benchmark, which parses the line. Its format is a contract:
//!
//! ```text
//! timeline (ms since start): dvd 0-4, transport-key 0-118, goal-state 5-20, …; Ready at 165
//! ```
//!
//! Phases appear in the order they started (ties in [`Phase::ALL`]'s
//! order), each as `name start-end` in whole milliseconds since the daemon
//! started; a phase that did not happen, or had not finished by then (a
//! transport key nobody needed yet), is left out.

use std::time::Instant;

/// A phase of the way to Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// ovf-env.xml read from the provisioning media.
    Dvd,
    /// The transport certificate generated (started at daemon start).
    TransportKey,
    /// Endpoint, versions, the goal state and its documents but the
    /// Certificates (from the first attempt).
    GoalState,
    /// The Certificates request and their decryption.
    Certificates,
    /// The user's provisioning steps: user, password, sudoers, SSH keys
    /// and key pairs, custom data, root password (the host name and
    /// sshd_config, a millisecond or two, are in no phase).
    User,
    /// The SSH host keys: generated (started early), put in place, and
    /// their fingerprint taken.
    HostKeys,
    /// sshd restarted.
    Sshd,
    /// The final health report.
    Report,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Dvd,
        Phase::TransportKey,
        Phase::GoalState,
        Phase::Certificates,
        Phase::User,
        Phase::HostKeys,
        Phase::Sshd,
        Phase::Report,
    ];

    /// The phase's name in the line: part of the contract.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Dvd => "dvd",
            Phase::TransportKey => "transport-key",
            Phase::GoalState => "goal-state",
            Phase::Certificates => "certificates",
            Phase::User => "user",
            Phase::HostKeys => "host-keys",
            Phase::Sshd => "sshd",
            Phase::Report => "report",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// When each phase started and ended.
#[derive(Debug, Clone)]
pub struct Timeline {
    origin: Instant,
    spans: [(Option<Instant>, Option<Instant>); 8],
}

impl Timeline {
    /// A timeline whose zero is `origin` (the daemon's start).
    pub fn new(origin: Instant) -> Self {
        Timeline {
            origin,
            spans: [(None, None); 8],
        }
    }

    /// `phase` started at `at`; a phase begun already keeps its first start.
    pub fn begin(&mut self, phase: Phase, at: Instant) {
        self.spans[phase.index()].0.get_or_insert(at);
    }

    /// `phase` ended at `at` (the latest end is kept).
    pub fn end(&mut self, phase: Phase, at: Instant) {
        let end = &mut self.spans[phase.index()].1;
        *end = Some(end.map_or(at, |e| e.max(at)));
    }

    /// `phase` ran from `from` to `to`.
    pub fn span(&mut self, phase: Phase, from: Instant, to: Instant) {
        self.begin(phase, from);
        self.end(phase, to);
    }

    /// Whether `phase` has started.
    pub fn begun(&self, phase: Phase) -> bool {
        self.spans[phase.index()].0.is_some()
    }

    /// The line: the finished phases in start order, then `{outcome} at N`
    /// (`Ready`, `ProvisioningFailed`).
    pub fn line(&self, outcome: &str, at: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(self.origin).as_millis();
        let mut done: Vec<(Phase, Instant, Instant)> = Phase::ALL
            .iter()
            .filter_map(|p| match self.spans[p.index()] {
                (Some(b), Some(e)) => Some((*p, b, e.max(b))),
                _ => None,
            })
            .collect();
        // Stable: phases that started together stay in ALL's order.
        done.sort_by_key(|(_, b, _)| *b);
        let phases: Vec<String> = done
            .iter()
            .map(|(p, b, e)| format!("{} {}-{}", p.name(), ms(*b), ms(*e)))
            .collect();
        format!(
            "timeline (ms since start): {}; {outcome} at {}",
            phases.join(", "),
            ms(at)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_line_lists_finished_phases_in_start_order() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.span(Phase::Dvd, at(t0, 0), at(t0, 4));
        t.begin(Phase::TransportKey, at(t0, 0));
        t.end(Phase::TransportKey, at(t0, 118));
        t.span(Phase::GoalState, at(t0, 5), at(t0, 20));
        t.span(Phase::Certificates, at(t0, 118), at(t0, 130));
        t.span(Phase::User, at(t0, 131), at(t0, 150));
        // Started before the goal state was asked for, finished long after.
        t.span(Phase::HostKeys, at(t0, 4), at(t0, 152));
        t.span(Phase::Sshd, at(t0, 152), at(t0, 160));
        t.span(Phase::Report, at(t0, 160), at(t0, 165));
        assert_eq!(
            t.line("Ready", at(t0, 165)),
            "timeline (ms since start): dvd 0-4, transport-key 0-118, host-keys 4-152, \
             goal-state 5-20, certificates 118-130, user 131-150, sshd 152-160, report 160-165; \
             Ready at 165"
        );
    }

    #[test]
    fn unfinished_and_missing_phases_are_left_out() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        // The transport key nobody needed is still being generated.
        t.begin(Phase::TransportKey, at(t0, 0));
        t.span(Phase::GoalState, at(t0, 1), at(t0, 9));
        t.span(Phase::Report, at(t0, 9), at(t0, 12));
        assert_eq!(
            t.line("ProvisioningFailed", at(t0, 12)),
            "timeline (ms since start): goal-state 1-9, report 9-12; ProvisioningFailed at 12"
        );
    }

    #[test]
    fn a_phase_keeps_its_first_start_and_its_last_end_and_rounds_down() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        let us = |n: u64| t0 + Duration::from_micros(n);
        // Connect failed once and was retried: the phase spans both.
        t.span(Phase::GoalState, us(5_900), us(7_000));
        t.span(Phase::GoalState, us(20_000), us(25_999));
        t.end(Phase::GoalState, us(24_000));
        t.span(Phase::Report, us(26_000), us(26_500));
        assert!(t.begun(Phase::GoalState) && !t.begun(Phase::Dvd));
        assert_eq!(
            t.line("Ready", us(26_999)),
            "timeline (ms since start): goal-state 5-25, report 26-26; Ready at 26"
        );
    }
}
