//! [`Firewall`]: the rules for one WireServer address and uid, checked,
//! set and removed with one tool — a command per rule with iptables and
//! firewall-cmd; with nft one table, whose script and check are in `nft`.

use std::net::Ipv4Addr;

use super::nft::{self, nft_script, NFT_TABLE};
use super::{detect_backend, legacy_spec, Backend, Ensured, FirewallError, Rule, RulesState};
use crate::os::{Cmd, Env, OsUtil, RunError};

/// What a rule command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Append,
    Check,
    Delete,
}

/// The rules for one WireServer address and uid, managed with one tool.
pub struct Firewall<'a> {
    env: &'a Env,
    backend: Backend,
    ip: Ipv4Addr,
    uid: u32,
}

impl<'a> Firewall<'a> {
    /// With the tool [`detect_backend`] picks.
    pub fn detect(os: &'a dyn OsUtil, ip: Ipv4Addr, uid: u32) -> Result<Self, FirewallError> {
        Ok(Firewall::new(os.env(), detect_backend(os)?, ip, uid))
    }

    pub fn new(env: &'a Env, backend: Backend, ip: Ipv4Addr, uid: u32) -> Self {
        Firewall {
            env,
            backend,
            ip,
            uid,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The command that appends, checks or deletes one rule (iptables and
    /// firewall-cmd, which take one command per rule).
    fn rule_cmd(&self, op: Op, spec: Vec<String>, insert: bool) -> Cmd {
        let position = if insert { "-I" } else { "-A" };
        match &self.backend {
            Backend::FirewallCmd { .. } => {
                let flag = match op {
                    Op::Append => "--passthrough",
                    Op::Check => "--query-passthrough",
                    Op::Delete => "--remove-passthrough",
                };
                Cmd::new("firewall-cmd")
                    .args(["--permanent", "--direct", flag, "ipv4", "-t", "security"])
                    .args([position, "OUTPUT"])
                    .args(spec)
            }
            _ => {
                let flag = match op {
                    Op::Append => position,
                    Op::Check => "-C",
                    Op::Delete => "-D",
                };
                self.iptables().args([flag, "OUTPUT"]).args(spec)
            }
        }
    }

    /// `iptables [-w] -t security`.
    fn iptables(&self) -> Cmd {
        let mut c = Cmd::new("iptables");
        if matches!(self.backend, Backend::Iptables { wait: true, .. }) {
            c = c.arg("-w");
        }
        c.args(["-t", "security"])
    }

    /// Whether a rule is there: exit 0 yes, 1 no (with the tool's reason);
    /// anything else is an error, not an answer.
    fn query(&self, cmd: &Cmd) -> Result<Result<(), String>, FirewallError> {
        let out = self.env.runner.run(cmd)?;
        match out.code {
            0 => Ok(Ok(())),
            1 => Ok(Err(out.stderr.trim().to_string())),
            _ => Err(FirewallError::Run(RunError::Failed {
                cmd: cmd.display(),
                output: out,
            })),
        }
    }

    /// Which of the rules are there.
    pub fn check(&self) -> Result<RulesState, FirewallError> {
        if let Backend::Nft { .. } = self.backend {
            return nft::nft_check(self.env, self.ip, self.uid);
        }
        let (mut present, mut missing, mut reasons) = (0, Vec::new(), Vec::new());
        for rule in Rule::ALL {
            let cmd = self.rule_cmd(Op::Check, rule.spec(self.ip, self.uid), false);
            match self.query(&cmd)? {
                Ok(()) => present += 1,
                Err(why) => {
                    missing.push(rule.name());
                    if !why.is_empty() {
                        reasons.push(why);
                    }
                }
            }
        }
        Ok(match (present, missing.is_empty()) {
            (_, true) => RulesState::Complete,
            (0, false) => RulesState::Absent,
            _ => {
                let mut why = format!("missing: {}", missing.join(", "));
                if !reasons.is_empty() {
                    why.push_str(&format!(" ({})", reasons.join("; ")));
                }
                RulesState::Partial(why)
            }
        })
    }

    /// Appends the rules (or makes the nft table), with no check: callers
    /// check first ([`ensure`](Self::ensure)).
    pub fn setup(&self) -> Result<(), FirewallError> {
        if let Backend::Nft { .. } = self.backend {
            let script = nft_script(self.ip, self.uid);
            self.env
                .runner
                .run_ok(&Cmd::new("nft").args(["-f", "-"]).stdin(script))?;
            return Ok(());
        }
        for rule in Rule::ALL {
            let cmd = self.rule_cmd(Op::Append, rule.spec(self.ip, self.uid), false);
            self.env.runner.run_ok(&cmd)?;
        }
        Ok(())
    }

    /// Deletes every rule that is there (each as often as it appears).
    pub fn remove(&self) -> Result<(), FirewallError> {
        if let Backend::Nft { .. } = self.backend {
            self.env
                .runner
                .run_ok(&Cmd::new("nft").args(["delete", "table", NFT_TABLE]))?;
            return Ok(());
        }
        let mut present = Vec::new();
        for rule in Rule::ALL {
            let cmd = self.rule_cmd(Op::Check, rule.spec(self.ip, self.uid), false);
            if self.query(&cmd)?.is_ok() {
                present.push(rule);
            }
        }
        for rule in present {
            self.delete(&self.rule_cmd(Op::Delete, rule.spec(self.ip, self.uid), false))?;
        }
        Ok(())
    }

    /// Deletes waagent ≤ 2.2.25's ACCEPT rule (firewalld: ≤ 2.7.0.6's
    /// inserted DNS rule) if it is there; true when it was.
    pub fn remove_legacy_rule(&self) -> Result<bool, FirewallError> {
        let (spec, insert) = match self.backend {
            Backend::Nft { .. } => return Ok(false),
            Backend::FirewallCmd { .. } => (Rule::AcceptDns.spec(self.ip, self.uid), true),
            Backend::Iptables { .. } => (legacy_spec(self.ip), false),
        };
        let check = self.rule_cmd(Op::Check, spec.clone(), insert);
        // Only "absent" (1) is an answer to stop at; as waagent, any other
        // failure of the check still tries the delete.
        if self.env.runner.run(&check)?.code == 1 {
            return Ok(false);
        }
        self.delete(&self.rule_cmd(Op::Delete, spec, insert))?;
        Ok(true)
    }

    /// One delete; iptables deletes one copy per call, so it repeats until
    /// iptables says there is none left (exit 1; 2 means a bad command).
    fn delete(&self, cmd: &Cmd) -> Result<(), FirewallError> {
        if !matches!(self.backend, Backend::Iptables { .. }) {
            self.env.runner.run_ok(cmd)?;
            return Ok(());
        }
        for _ in 1..100 {
            let out = self.env.runner.run(cmd)?;
            match out.code {
                1 => return Ok(()),
                2 => {
                    return Err(FirewallError::Output(format!(
                        "iptables refused the deletion `{}`: {}",
                        cmd.display(),
                        out.stderr.trim()
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks, then sets what is missing: nothing when complete, the rules
    /// when absent, and when only some are there, removes those and sets
    /// all three again (a rule out of place would let traffic through).
    pub fn ensure(&self) -> Result<Ensured, FirewallError> {
        match self.check()? {
            RulesState::Complete => Ok(Ensured::AlreadySet),
            RulesState::Absent => {
                self.setup()?;
                Ok(Ensured::Set)
            }
            RulesState::Partial(why) => {
                self.remove()?;
                self.setup()?;
                Ok(Ensured::Repaired(why))
            }
        }
    }

    /// The current rules as the tool lists them, for the log; an error
    /// message when the listing fails.
    /// The OUTPUT rules that name the WireServer, as iptables prints them
    /// (`-S`): one command, where [`check`](Self::check) takes one per rule.
    /// A snapshot taken while the rules were complete, found again
    /// unchanged, means they still are. `None` for the other tools.
    pub fn snapshot(&self) -> Result<Option<Vec<String>>, FirewallError> {
        if !matches!(self.backend, Backend::Iptables { .. }) {
            return Ok(None);
        }
        let out = self
            .env
            .runner
            .run_ok(&self.iptables().args(["-S", "OUTPUT"]))?;
        let (exact, net) = (self.ip.to_string(), format!("{}/32", self.ip));
        Ok(Some(
            out.stdout
                .lines()
                .filter(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some("-A")
                        && l.split_whitespace()
                            .collect::<Vec<_>>()
                            .windows(2)
                            .any(|w| w[0] == "-d" && (w[1] == exact || w[1] == net))
                })
                .map(str::to_string)
                .collect(),
        ))
    }

    pub fn listing(&self) -> String {
        let cmd = match self.backend {
            Backend::Iptables { .. } => self.iptables().args(["-L", "-nxv"]),
            Backend::FirewallCmd { .. } => {
                Cmd::new("firewall-cmd").args(["--permanent", "--direct", "--get-all-passthroughs"])
            }
            Backend::Nft { .. } => Cmd::new("nft").args(["list", "table", NFT_TABLE]),
        };
        match self.env.runner.run_ok(&cmd) {
            Ok(out) => out.stdout.trim_end().to_string(),
            Err(e) => format!("(cannot list the firewall rules: {e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::firewall::testutil::*;
    use crate::env::firewall::unknown_iptables;
    use crate::os::{Flavour, Output, RecordingRunner};
    use std::rc::Rc;

    #[test]
    fn fresh_setup_appends_the_three_rules() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let chain = fake_iptables(&runner);
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let fw = Firewall::detect(&*os, WIRE, 0).unwrap();
        assert_eq!(
            fw.backend(),
            &Backend::Iptables {
                wait: true,
                version: "1.8.9".into()
            }
        );
        assert_eq!(fw.ensure().unwrap(), Ensured::Set);
        let want: Vec<String> = [
            vec!["iptables --version".to_string()],
            lines(CHECK, &[DNS, ROOT, DROP]),
            lines(APPEND, &[DNS, ROOT, DROP]),
        ]
        .concat();
        assert_eq!(runner.lines(), want);
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
    }

    #[test]
    fn complete_rules_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let chain = fake_iptables(&runner);
        chain
            .borrow_mut()
            .extend([spec(DNS), spec(ROOT), spec(DROP)]);
        let os = crate::os::for_env(env(d.path(), Flavour::RedHat, runner.clone()));
        let fw = Firewall::detect(&*os, WIRE, 0).unwrap();
        assert_eq!(fw.check().unwrap(), RulesState::Complete);
        assert_eq!(fw.ensure().unwrap(), Ensured::AlreadySet);
        let checks = lines(CHECK, &[DNS, ROOT, DROP]);
        let want: Vec<String> = [
            vec!["iptables --version".to_string()],
            checks.clone(),
            checks,
        ]
        .concat();
        assert_eq!(runner.lines(), want);
        assert_eq!(chain.borrow().len(), 3);
    }

    #[test]
    fn partial_rules_are_removed_and_set_again() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let chain = fake_iptables(&runner);
        // The DROP without the root ACCEPT would cut the agent off: and a
        // duplicate of it (appended twice by some earlier run) goes too.
        chain
            .borrow_mut()
            .extend([spec(DNS), spec(DROP), spec(DROP)]);
        let os = crate::os::for_env(env(d.path(), Flavour::Ubuntu, runner.clone()));
        let fw = Firewall::detect(&*os, WIRE, 0).unwrap();
        let Ensured::Repaired(why) = fw.ensure().unwrap() else {
            panic!("not repaired")
        };
        assert_eq!(
            why,
            "missing: ACCEPT (iptables: Bad rule (does a matching rule exist in that chain?).)"
        );
        let want: Vec<String> = [
            vec!["iptables --version".to_string()],
            // check, then remove's own check …
            lines(CHECK, &[DNS, ROOT, DROP]),
            lines(CHECK, &[DNS, ROOT, DROP]),
            // … each present rule deleted until iptables says none is left …
            lines(DELETE, &[DNS, DNS, DROP, DROP, DROP]),
            // … and the three appended in order.
            lines(APPEND, &[DNS, ROOT, DROP]),
        ]
        .concat();
        assert_eq!(runner.lines(), want);
        assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
    }

    #[test]
    fn old_iptables_gets_no_wait_option_and_legacy_rule_goes() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push("iptables", Output::ok("iptables v1.4.7\n"));
        let os = crate::os::for_env(env(d.path(), Flavour::RedHat, runner.clone()));
        let fw = Firewall::detect(&*os, WIRE, 0).unwrap();
        assert_eq!(
            fw.backend(),
            &Backend::Iptables {
                wait: false,
                version: "1.4.7".into()
            }
        );
        // The legacy rule is there (exit 0), deleted once, then gone (exit 1).
        runner.push("iptables", Output::default());
        runner.push("iptables", Output::default());
        runner.push("iptables", Output::failed(1, "Bad rule"));
        assert!(fw.remove_legacy_rule().unwrap());
        let legacy = "-d 168.63.129.16 -p tcp -m conntrack --ctstate INVALID,NEW -j ACCEPT";
        assert_eq!(
            runner.lines()[1..],
            [
                format!("iptables -t security -C OUTPUT {legacy}"),
                format!("iptables -t security -D OUTPUT {legacy}"),
                format!("iptables -t security -D OUTPUT {legacy}"),
            ]
        );
        // Absent: only the check.
        runner.push("iptables", Output::failed(1, "Bad rule"));
        assert!(!fw.remove_legacy_rule().unwrap());
        assert_eq!(runner.lines().len(), 5);
    }

    #[test]
    fn a_check_that_fails_otherwise_is_an_error_not_a_missing_rule() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push(
            "iptables",
            Output::failed(3, "iptables: can't initialize iptables table `security'"),
        );
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let e = os.env();
        let fw = Firewall::new(e, unknown_iptables(), WIRE, 0);
        let err = fw.ensure().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "`iptables -t security -C OUTPUT -d 168.63.129.16 -p tcp {DNS}` failed with exit code 3: iptables: can't initialize iptables table `security'"
            )
        );
        assert_eq!(runner.lines().len(), 1, "nothing appended after the error");
    }
}
