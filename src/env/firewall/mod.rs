//! The WireServer firewall (`OS.EnableFirewall`, §18.6 of the protocol
//! notes): only root may open TCP connections to the WireServer.
//!
//! Why: the WireServer answers anyone on the VM, and what it serves (the
//! goal state, certificates wrapped for the agent, extension settings) is
//! the agent's business. Azure DNS listens on the same address, so port 53
//! stays open to every user.
//!
//! What, as waagent (`ga/firewall_manager.py`) does it:
//!
//! * With iptables: three rules **appended** to the `OUTPUT` chain of the
//!   `security` table, in this order (the order is the point: the two
//!   ACCEPTs must come before the DROP) —
//!   `-d IP -p tcp --destination-port 53 -j ACCEPT`,
//!   `-d IP -p tcp -m owner --uid-owner UID -j ACCEPT` (the agent's own uid),
//!   `-d IP -p tcp -m conntrack --ctstate INVALID,NEW -j DROP`.
//!   `-w` (wait for the xtables lock) is passed when iptables is 1.4.21 or
//!   newer. Presence is checked rule by rule with `-C`: exit 0 present,
//!   1 absent, anything else an error. Some rules but not all means the set
//!   is broken: every rule found is deleted (`-D` until it is gone) and the
//!   three are appended again.
//! * Without iptables, nft: one table `ip walinuxagent` (waagent's name, so
//!   an agent switch leaves one table, not two) with one rule dropping new
//!   TCP connections to the address that are neither DNS nor the agent's.
//! * Neither installed: an error naming both. FreeBSD (no iptables or nft;
//!   waagent has no pf/ipfw rules either): "not supported", which the
//!   daemon logs once.
//!
//! Rules made by waagent ≤ 2.2.25 (`--ctstate INVALID,NEW -j ACCEPT`) would
//! defeat the DROP; the first set-up deletes them.
//!
//! The rules live in the kernel and are gone after a reboot, so after the
//! first set-up the daemon makes them come back at boot, before the network
//! is up ([`persist`]): through firewalld's permanent direct rules when
//! firewalld is running, else (systemd only) with a oneshot unit,
//! `waagent-network-setup.service`, that runs `waagent -setup-firewall=IP`.
//!
//! Every command goes through the [`Env`]'s runner; decisions (which rules,
//! what their state means, the unit's text) are pure functions.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsutil;
use crate::os::{Cmd, Env, Flavour, Output, RunError};

/// The nft table, named as waagent names it.
pub const NFT_TABLE: &str = "walinuxagent";

/// The boot-time unit that sets the rules again before the network is up.
pub const NETWORK_SETUP_UNIT: &str = "waagent-network-setup.service";

/// iptables can wait for the xtables lock (`-w`) from this version on.
const IPTABLES_WAIT_SINCE: [u32; 3] = [1, 4, 21];

/// After three reports, the periodic check keeps quiet this long (waagent's
/// throttle, so a VM whose rules keep vanishing does not flood the log).
const QUIET_AFTER_REPORTS: Duration = Duration::from_secs(12 * 3600);

/// One of the three rules, in the order they are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Azure DNS shares the WireServer's address: open to every user.
    AcceptDns,
    /// The agent's own connections.
    AcceptAgent,
    /// Every other new connection.
    Drop,
}

impl Rule {
    /// In chain order: rules are appended, so this is also the order of the
    /// commands.
    pub const ALL: [Rule; 3] = [Rule::AcceptDns, Rule::AcceptAgent, Rule::Drop];

    /// The name waagent's logs use.
    pub fn name(self) -> &'static str {
        match self {
            Rule::AcceptDns => "ACCEPT DNS",
            Rule::AcceptAgent => "ACCEPT",
            Rule::Drop => "DROP",
        }
    }

    /// The rule's iptables match and target (what follows `OUTPUT`).
    pub fn spec(self, ip: Ipv4Addr, uid: u32) -> Vec<String> {
        let mut v = vec!["-d".to_string(), ip.to_string(), "-p".into(), "tcp".into()];
        let rest: &[&str] = match self {
            Rule::AcceptDns => &["--destination-port", "53", "-j", "ACCEPT"],
            Rule::AcceptAgent => &["-m", "owner", "--uid-owner"],
            Rule::Drop => &["-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"],
        };
        v.extend(rest.iter().map(|s| s.to_string()));
        if self == Rule::AcceptAgent {
            v.extend([uid.to_string(), "-j".into(), "ACCEPT".into()]);
        }
        v
    }
}

/// The rule waagent ≤ 2.2.25 made, which accepted what DROP now drops.
fn legacy_spec(ip: Ipv4Addr) -> Vec<String> {
    let mut v = Rule::Drop.spec(ip, 0);
    if let Some(last) = v.last_mut() {
        *last = "ACCEPT".into();
    }
    v
}

/// The tool that manages the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `iptables [-w] -t security …`.
    Iptables { wait: bool, version: String },
    /// firewalld's permanent direct rules (persistence only, as waagent).
    FirewallCmd { version: String },
    /// `nft`, when iptables is not installed.
    Nft { version: String },
}

impl Backend {
    pub fn program(&self) -> &'static str {
        match self {
            Backend::Iptables { .. } => "iptables",
            Backend::FirewallCmd { .. } => "firewall-cmd",
            Backend::Nft { .. } => "nft",
        }
    }

    pub fn version(&self) -> &str {
        match self {
            Backend::Iptables { version, .. }
            | Backend::FirewallCmd { version }
            | Backend::Nft { version } => version,
        }
    }
}

/// Why the rules could not be checked or set.
#[derive(Debug)]
pub enum FirewallError {
    /// This OS has no way to set them (FreeBSD).
    Unsupported(String),
    /// Neither iptables nor nft is installed.
    NoTool,
    /// A command could not run, or failed in a way that is not an answer.
    Run(RunError),
    /// A tool's output made no sense.
    Output(String),
    /// The boot-time unit could not be written or removed.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for FirewallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirewallError::Unsupported(m) | FirewallError::Output(m) => f.write_str(m),
            FirewallError::NoTool => f.write_str(
                "neither `iptables` nor `nft` is installed (not found on PATH): \
                 cannot set the WireServer firewall rules (OS.EnableFirewall)",
            ),
            FirewallError::Run(e) => e.fmt(f),
            FirewallError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for FirewallError {}

impl From<RunError> for FirewallError {
    fn from(e: RunError) -> Self {
        FirewallError::Run(e)
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesState {
    /// Every rule is there.
    Complete,
    /// None is there (a fresh boot).
    Absent,
    /// Some are there, not all, or the nft rule is not ours: why.
    Partial(String),
}

/// What [`Firewall::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    AlreadySet,
    Set,
    /// The rules were incomplete (why): removed and set again.
    Repaired(String),
}

/// The iptables version in `iptables --version` output
/// (`iptables v1.8.9 (nf_tables)` → 1.8.9): the first run of digits and dots.
pub fn parse_iptables_version(text: &str) -> Option<Vec<u32>> {
    let start = text.find(|c: char| c.is_ascii_digit() || c == '.')?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let v: Vec<u32> = rest[..end]
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (!v.is_empty()).then_some(v)
}

/// Whether iptables of this version takes `-w`.
pub fn iptables_can_wait(version: &[u32]) -> bool {
    version >= &IPTABLES_WAIT_SINCE[..]
}

/// The tool to use, as waagent picks it: iptables when installed (with `-w`
/// if it is new enough; a version that cannot be read means no `-w`), else
/// nft; FreeBSD has neither.
pub fn detect_backend(env: &Env) -> Result<Backend, FirewallError> {
    if env.distro.flavour == Flavour::FreeBsd {
        return Err(FirewallError::Unsupported(
            "the WireServer firewall (OS.EnableFirewall) is not supported on FreeBSD: \
             it has neither iptables nor nft, and waagent sets no pf or ipfw rules; no rules set"
                .into(),
        ));
    }
    let version = |program: &str| env.runner.run(&Cmd::new(program).arg("--version"));
    match version("iptables") {
        Err(e) if e.is_not_found() => {}
        Ok(out) if out.success() => {
            return Ok(match parse_iptables_version(&out.stdout) {
                Some(v) => Backend::Iptables {
                    wait: iptables_can_wait(&v),
                    version: join_version(&v),
                },
                None => {
                    log::warn!(
                        "cannot read the iptables version in {:?}; not using -w",
                        out.stdout.trim()
                    );
                    unknown_iptables()
                }
            });
        }
        other => {
            log::warn!(
                "cannot read the iptables version ({}); not using -w",
                describe(&other)
            );
            return Ok(unknown_iptables());
        }
    }
    match version("nft") {
        Err(e) if e.is_not_found() => Err(FirewallError::NoTool),
        Ok(out) if out.success() => Ok(Backend::Nft {
            version: out.stdout.trim().to_string(),
        }),
        _ => Ok(Backend::Nft {
            version: "unknown".into(),
        }),
    }
}

fn unknown_iptables() -> Backend {
    Backend::Iptables {
        wait: false,
        version: "unknown".into(),
    }
}

fn join_version(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

fn describe(r: &Result<Output, RunError>) -> String {
    match r {
        Ok(o) => format!("exit code {}: {}", o.code, o.stderr.trim()),
        Err(e) => e.to_string(),
    }
}

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
    pub fn detect(env: &'a Env, ip: Ipv4Addr, uid: u32) -> Result<Self, FirewallError> {
        Ok(Firewall::new(env, detect_backend(env)?, ip, uid))
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
            return self.nft_check();
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

    fn nft_check(&self) -> Result<RulesState, FirewallError> {
        let run = |args: &[&str]| -> Result<serde_json::Value, FirewallError> {
            let cmd = Cmd::new("nft").args(args.iter().copied());
            let out = self.env.runner.run_ok(&cmd)?;
            serde_json::from_str(&out.stdout).map_err(|e| {
                FirewallError::Output(format!(
                    "cannot parse the output of `{}`: {e}",
                    cmd.display()
                ))
            })
        };
        if !nft_has_table(&run(&["--json", "list", "tables"])?) {
            return Ok(RulesState::Absent);
        }
        let table = run(&["--json", "list", "table", NFT_TABLE])?;
        Ok(match nft_rule_problems(&table, self.ip, self.uid) {
            problems if problems.is_empty() => RulesState::Complete,
            problems => RulesState::Partial(problems.join("; ")),
        })
    }
}

/// The nft script that makes the table, its output chain and the rule, in
/// one transaction.
pub fn nft_script(ip: Ipv4Addr, uid: u32) -> String {
    format!(
        "add table ip {NFT_TABLE}\n\
         add chain ip {NFT_TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}\n\
         add rule ip {NFT_TABLE} output ip daddr {ip} tcp dport != 53 skuid != {uid} ct state invalid,new counter drop\n"
    )
}

/// The items of `nft --json` output.
fn nft_items(v: &serde_json::Value) -> &[serde_json::Value] {
    v.get("nftables")
        .and_then(serde_json::Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether `nft --json list tables` lists ours.
fn nft_has_table(v: &serde_json::Value) -> bool {
    nft_items(v)
        .iter()
        .filter_map(|i| i.get("table"))
        .any(|t| t.get("name").and_then(serde_json::Value::as_str) == Some(NFT_TABLE))
}

/// What is wrong with our table in `nft --json list table walinuxagent`;
/// nothing when it holds exactly our one rule.
fn nft_rule_problems(v: &serde_json::Value, ip: Ipv4Addr, uid: u32) -> Vec<String> {
    use serde_json::json;
    let rules: Vec<&serde_json::Value> =
        nft_items(v).iter().filter_map(|i| i.get("rule")).collect();
    if rules.len() != 1 {
        return vec![format!(
            "table {NFT_TABLE} should hold exactly one rule, not {}",
            rules.len()
        )];
    }
    let rule = rules[0];
    let ours = rule.get("family") == Some(&json!("ip"))
        && rule.get("table") == Some(&json!(NFT_TABLE))
        && rule.get("chain") == Some(&json!("output"));
    let Some(expr) = rule
        .get("expr")
        .and_then(serde_json::Value::as_array)
        .filter(|_| ours)
    else {
        return vec![format!(
            "no rule in the output chain of table ip {NFT_TABLE}"
        )];
    };
    let wanted = [
        (
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": ip.to_string()}}),
            "no expression matches the WireServer address",
        ),
        (
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 53}}),
            "no expression excludes the DNS port",
        ),
        (
            json!({"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": uid}}),
            "no expression excludes the agent's uid",
        ),
        (json!({"drop": null}), "the drop action is missing"),
    ];
    wanted
        .into_iter()
        .filter(|(e, _)| !expr.contains(e))
        .map(|(_, why)| why.to_string())
        .collect()
}

// ----- at boot: firewalld's permanent rules or the network-setup unit -----

/// Where the unit goes (under the root), by flavour: where waagent's
/// osutil puts systemd units — `/usr/lib/systemd/system` on RHEL and SUSE
/// (`/etc/systemd/system` on an image-mode RHEL, whose `/usr` is read-only),
/// `/lib/systemd/system` elsewhere — and `/etc/systemd/system` on
/// CoreOS/Flatcar, whose `/usr` is read-only too.
pub fn unit_path(env: &Env) -> PathBuf {
    let dir = match env.distro.flavour {
        Flavour::RedHat if env.path("/run/ostree-booted").exists() => "/etc/systemd/system",
        Flavour::RedHat | Flavour::Suse => "/usr/lib/systemd/system",
        Flavour::CoreOs => "/etc/systemd/system",
        _ => "/lib/systemd/system",
    };
    env.path(dir).join(NETWORK_SETUP_UNIT)
}

/// The unit: a oneshot that runs `EXE -setup-firewall=IP` once local file
/// systems are mounted and before the network comes up, and only while the
/// agent is installed (a leftover unit does nothing).
pub fn unit_text(exe: &Path, ip: Ipv4Addr) -> Result<String, FirewallError> {
    let exe_s = exe.to_string_lossy();
    let plain = exe.is_absolute()
        && exe_s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c));
    if !plain {
        return Err(FirewallError::Output(format!(
            "cannot write {NETWORK_SETUP_UNIT}: the agent's path {exe_s:?} is not a plain absolute path"
        )));
    }
    Ok(format!(
        "# Written by the Azure guest agent (waagent-rs) when OS.EnableFirewall=y:\n\
         # puts the WireServer firewall rules back at boot. Rewritten by the agent.\n\
         [Unit]\n\
         Description=Set up the WireServer firewall rules for the Azure guest agent\n\
         After=local-fs.target\n\
         Before=network-pre.target\n\
         Wants=network-pre.target\n\
         DefaultDependencies=no\n\
         ConditionPathExists={exe_s}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={exe_s} -setup-firewall={ip}\n\
         RemainAfterExit=yes\n\
         \n\
         [Install]\n\
         WantedBy=network.target\n"
    ))
}

/// How the rules come back after a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// firewalld runs: its permanent direct rules (our unit removed).
    Firewalld(Ensured),
    /// The unit, `changed` when it was (re)written and enabled.
    Unit { path: PathBuf, changed: bool },
    /// Neither firewalld nor systemd: nothing sets them at boot.
    NotSystemd,
}

/// Makes the rules come back at boot, as waagent's
/// `persist_firewall_rules.py`: firewalld's permanent rules when firewalld
/// runs (it would replace any others at its start), else on systemd the
/// [`NETWORK_SETUP_UNIT`], rewritten (atomically, 0644) and enabled only
/// when it differs or is not enabled. Like waagent, no daemon-reload (it
/// would disturb other units); the unit counts from the next boot.
pub fn persist(env: &Env, ip: Ipv4Addr, uid: u32, exe: &Path) -> Result<Persisted, FirewallError> {
    let unit = unit_path(env);
    if firewalld_running(env) {
        let version = env
            .runner
            .run_ok(&Cmd::new("firewall-cmd").arg("--version"))
            .map_or_else(|_| "unknown".to_string(), |o| o.stdout.trim().to_string());
        let fw = Firewall::new(env, Backend::FirewallCmd { version }, ip, uid);
        if let Err(e) = fw.remove_legacy_rule() {
            log::warn!("cannot remove the legacy firewalld rule: {e}");
        }
        let ensured = fw.ensure()?;
        match std::fs::remove_file(&unit) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove {}: {e}", unit.display())
            }
            _ => {}
        }
        return Ok(Persisted::Firewalld(ensured));
    }
    if !env.path("/run/systemd/system").is_dir() {
        return Ok(Persisted::NotSystemd);
    }
    let text = unit_text(exe, ip)?;
    let enabled = env
        .runner
        .run(&Cmd::new("systemctl").args(["is-enabled", NETWORK_SETUP_UNIT]))
        .is_ok_and(|o| o.stdout.trim() == "enabled");
    let current = std::fs::read_to_string(&unit).ok();
    if enabled && current.as_deref() == Some(text.as_str()) {
        return Ok(Persisted::Unit {
            path: unit,
            changed: false,
        });
    }
    fsutil::write_atomic(&unit, text.as_bytes(), 0o644).map_err(|source| FirewallError::Io {
        path: unit.clone(),
        source,
    })?;
    let enable = Cmd::new("systemctl").args(["enable", NETWORK_SETUP_UNIT]);
    if let Err(e) = env.runner.run_ok(&enable) {
        // A unit that is not enabled is not one to leave behind.
        let _ = std::fs::remove_file(&unit);
        return Err(e.into());
    }
    Ok(Persisted::Unit {
        path: unit,
        changed: true,
    })
}

/// `firewall-cmd --state` says `running`.
fn firewalld_running(env: &Env) -> bool {
    env.runner
        .run(&Cmd::new("firewall-cmd").arg("--state"))
        .is_ok_and(|o| o.success() && o.stdout.trim() == "running")
}

// ----- the daemon's side -----

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
        }
    }

    /// The WireServer address the rules are for.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The tool, found the first time it is needed. An unsupported OS is
    /// logged once, here; other failures are the caller's to report.
    fn firewall<'e>(&mut self, env: &'e Env) -> Result<Option<Firewall<'e>>, FirewallError> {
        if self.unsupported {
            return Ok(None);
        }
        if self.backend.is_none() {
            match detect_backend(env) {
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
            .map(|b| Firewall::new(env, b, self.ip, self.uid)))
    }

    /// The first set-up, as the WireServer's address becomes known: the
    /// legacy rule out, the rules in, and their return at boot arranged.
    pub fn initialize(&mut self, env: &Env) {
        let ip = self.ip;
        let fw = match self.firewall(env) {
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
        match fw.ensure() {
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
        match persist(env, ip, self.uid, exe) {
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
    pub fn check(&mut self, env: &Env, now: Instant) {
        let ip = self.ip;
        let fw = match self.firewall(env) {
            Ok(Some(fw)) => fw,
            Ok(None) => return,
            Err(e) => {
                if self.reports.allow(now) {
                    log::warn!("cannot check the WireServer firewall rules for {ip}: {e}");
                }
                return;
            }
        };
        let result = match fw.check() {
            Ok(RulesState::Complete) => return,
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

/// Test support: an iptables that keeps its `security` OUTPUT chain in
/// memory (`-A`, `-C`, `-D`, `-L`, `--version`), so tests see the rules a
/// sequence of commands leaves. Returns the chain, one rule spec per line.
#[cfg(test)]
pub(crate) fn fake_iptables(
    runner: &crate::os::RecordingRunner,
) -> std::rc::Rc<std::cell::RefCell<Vec<String>>> {
    let chain = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let c = chain.clone();
    runner.respond(move |cmd| {
        if cmd.program != "iptables" {
            return None;
        }
        let argv = cmd.argv();
        let mut args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        if args == ["--version"] {
            return Some(Ok(Output::ok("iptables v1.8.9 (nf_tables)\n")));
        }
        args.retain(|a| *a != "-w");
        let [t, table, op, rest @ ..] = args.as_slice() else {
            return Some(Ok(Output::failed(2, "bad command")));
        };
        assert_eq!((*t, *table), ("-t", "security"), "{argv:?}");
        let spec = rest.get(1..).unwrap_or_default().join(" ");
        let bad_rule = || {
            Ok(Output::failed(
                1,
                "iptables: Bad rule (does a matching rule exist in that chain?).",
            ))
        };
        let mut chain = c.borrow_mut();
        Some(match *op {
            "-A" => {
                chain.push(spec);
                Ok(Output::default())
            }
            "-C" if chain.contains(&spec) => Ok(Output::default()),
            "-C" => bad_rule(),
            "-D" => match chain.iter().position(|r| *r == spec) {
                Some(i) => {
                    chain.remove(i);
                    Ok(Output::default())
                }
                None => bad_rule(),
            },
            "-L" => Ok(Output::ok(&format!("Chain OUTPUT\n{}\n", chain.join("\n")))),
            _ => Ok(Output::failed(2, "unknown option")),
        })
    });
    chain
}

#[cfg(test)]
mod tests;
