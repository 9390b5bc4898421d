//! The WireServer firewall (`OS.EnableFirewall`, §18.6 of PROTOCOL.md):
//! only root may open TCP connections to the WireServer.
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
//! is up (firewalld's permanent rules or `waagent-network-setup.service`,
//! submodule `persist`, [`persist()`]).
//!
//! Every command goes through the [`Env`](crate::os::Env)'s runner; decisions (which rules,
//! what their state means, the unit's text) are pure functions.
//!
//! This file holds the rules, the choice of tool and the outcomes; the
//! submodules, each with its tests, hold the rest, and their public items
//! are re-exported here: `manager` the [`Firewall`] that checks, sets and
//! removes the rules, `nft` the nft script and the check of its JSON,
//! `persist` the return at boot, `monitor` the daemon's side
//! ([`FirewallMonitor`]).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::os::{Cmd, OsUtil, Output, RunError};

mod manager;
mod monitor;
mod nft;
mod persist;
#[cfg(test)]
mod testutil;

pub use manager::Firewall;
pub use monitor::FirewallMonitor;
pub use nft::{nft_script, NFT_TABLE};
pub use persist::{persist, unit_path, unit_text, Persisted, NETWORK_SETUP_UNIT};
#[cfg(test)]
pub(crate) use testutil::fake_iptables;

/// iptables can wait for the xtables lock (`-w`) from this version on.
const IPTABLES_WAIT_SINCE: [u32; 3] = [1, 4, 21];

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
pub fn detect_backend(os: &dyn OsUtil) -> Result<Backend, FirewallError> {
    if let Some(why) = os.firewall_unsupported() {
        return Err(FirewallError::Unsupported(why.into()));
    }
    let env = os.env();
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

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::os::Flavour;
    use crate::os::RecordingRunner;
    use std::rc::Rc;

    #[test]
    fn the_three_rules_in_chain_order() {
        let specs: Vec<String> = Rule::ALL
            .iter()
            .map(|r| r.spec(WIRE, 0).join(" "))
            .collect();
        assert_eq!(specs, [spec(DNS), spec(ROOT), spec(DROP)]);
        assert_eq!(
            Rule::AcceptAgent.spec(WIRE, 1001).join(" "),
            spec("-m owner --uid-owner 1001 -j ACCEPT")
        );
        assert_eq!(
            legacy_spec(WIRE).join(" "),
            spec("-m conntrack --ctstate INVALID,NEW -j ACCEPT")
        );
    }

    #[test]
    fn an_unreadable_version_means_no_wait_option() {
        assert_eq!(
            parse_iptables_version("iptables v1.8.9 (nf_tables)"),
            Some(vec![1, 8, 9])
        );
        assert_eq!(
            parse_iptables_version("iptables v1.4.21"),
            Some(vec![1, 4, 21])
        );
        assert_eq!(parse_iptables_version("iptables"), None);
        assert_eq!(parse_iptables_version("v."), None);
        assert!(iptables_can_wait(&[1, 4, 21]));
        assert!(iptables_can_wait(&[1, 8]));
        assert!(!iptables_can_wait(&[1, 4]));
        assert!(!iptables_can_wait(&[1, 4, 20]));

        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push("iptables", Output::failed(3, "can't initialize"));
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        assert_eq!(detect_backend(&*os).unwrap(), unknown_iptables());
    }

    #[test]
    fn neither_iptables_nor_nft_is_an_error_naming_them() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.respond(|c| Some(not_found(c)));
        let os = crate::os::for_env(env(d.path(), Flavour::Debian, runner.clone()));
        let err = Firewall::detect(&*os, WIRE, 0).err().unwrap();
        assert!(matches!(err, FirewallError::NoTool));
        assert_eq!(
            err.to_string(),
            "neither `iptables` nor `nft` is installed (not found on PATH): cannot set the WireServer firewall rules (OS.EnableFirewall)"
        );
        assert_eq!(runner.lines(), ["iptables --version", "nft --version"]);
    }
}
