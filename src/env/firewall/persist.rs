//! The rules' return at boot, as waagent's `persist_firewall_rules.py`:
//! the rules live in the kernel and are gone after a reboot, so after the
//! first set-up the daemon makes them come back before the network is up —
//! through firewalld's permanent direct rules when firewalld is running,
//! else (systemd only) with a oneshot unit, [`NETWORK_SETUP_UNIT`], that
//! runs `waagent -setup-firewall=IP`.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{Backend, Ensured, Firewall, FirewallError};
use crate::fsutil;
use crate::os::{Cmd, Env, OsUtil};

/// The boot-time unit that sets the rules again before the network is up.
pub const NETWORK_SETUP_UNIT: &str = "waagent-network-setup.service";

/// Where the unit goes (under the root): the distro's directory for the
/// agent's systemd units ([`OsUtil::systemd_unit_dir`], where waagent's
/// osutil puts them); `None` without systemd.
pub fn unit_path(os: &dyn OsUtil) -> Option<PathBuf> {
    os.systemd_unit_dir().map(|d| d.join(NETWORK_SETUP_UNIT))
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
/// when it differs or is not enabled. No daemon-reload, not even the one
/// `systemctl enable` does unless told `--no-reload`: it would make systemd
/// load every unit again in the middle of the first boot, and the unit is
/// for the next boot, which loads it anyway.
pub fn persist(
    os: &dyn OsUtil,
    ip: Ipv4Addr,
    uid: u32,
    exe: &Path,
) -> Result<Persisted, FirewallError> {
    let env = os.env();
    let unit = unit_path(os);
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
        match unit.as_deref().map(std::fs::remove_file) {
            Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove the {NETWORK_SETUP_UNIT} unit: {e}")
            }
            _ => {}
        }
        return Ok(Persisted::Firewalld(ensured));
    }
    let Some(unit) = unit.filter(|_| env.path("/run/systemd/system").is_dir()) else {
        return Ok(Persisted::NotSystemd);
    };
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
    let enable = Cmd::new("systemctl").args(["enable", "--no-reload", NETWORK_SETUP_UNIT]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::firewall::testutil::*;
    use crate::os::Flavour;
    use crate::os::{Output, RecordingRunner};
    use std::rc::Rc;

    #[test]
    fn the_boot_unit_runs_setup_firewall_before_the_network() {
        let text = unit_text(Path::new("/usr/sbin/waagent"), WIRE).unwrap();
        for line in [
            "After=local-fs.target",
            "Before=network-pre.target",
            "Wants=network-pre.target",
            "DefaultDependencies=no",
            "ConditionPathExists=/usr/sbin/waagent",
            "Type=oneshot",
            "ExecStart=/usr/sbin/waagent -setup-firewall=168.63.129.16",
            "RemainAfterExit=yes",
            "WantedBy=network.target",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        for bad in ["waagent", "/opt/my agent/waagent", "/usr/sbin/wa%agent"] {
            assert!(unit_text(Path::new(bad), WIRE).is_err(), "{bad}");
        }
    }

    #[test]
    fn unit_path_follows_the_flavour() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let runner = Rc::new(RecordingRunner::new());
        let at = |f: Flavour| unit_path(&*crate::os::for_env(env(r, f, runner.clone())));
        let unit = |dir: &str| Some(r.join(dir).join(NETWORK_SETUP_UNIT));
        assert_eq!(at(Flavour::Debian), unit("lib/systemd/system"));
        assert_eq!(at(Flavour::Default), unit("lib/systemd/system"));
        assert_eq!(at(Flavour::Suse), unit("usr/lib/systemd/system"));
        assert_eq!(at(Flavour::RedHat), unit("usr/lib/systemd/system"));
        assert_eq!(at(Flavour::CoreOs), unit("etc/systemd/system"));
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::write(r.join("run/ostree-booted"), "").unwrap();
        assert_eq!(at(Flavour::RedHat), unit("etc/systemd/system"));
        assert_eq!(at(Flavour::FreeBsd), None, "no systemd");
    }

    #[test]
    fn persist_writes_and_enables_the_unit_once_on_systemd() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let runner = Rc::new(RecordingRunner::new());
        let os = crate::os::for_env(env(r, Flavour::Debian, runner.clone()));
        let exe = Path::new("/usr/sbin/waagent");
        // Not systemd: nothing at all.
        assert_eq!(persist(&*os, WIRE, 0, exe).unwrap(), Persisted::NotSystemd);
        assert_eq!(runner.lines(), ["firewall-cmd --state"]);

        std::fs::create_dir_all(r.join("run/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("lib/systemd/system")).unwrap();
        let path = r.join("lib/systemd/system/waagent-network-setup.service");
        assert_eq!(
            persist(&*os, WIRE, 0, exe).unwrap(),
            Persisted::Unit {
                path: path.clone(),
                changed: true
            }
        );
        assert_eq!(
            runner.lines()[1..],
            [
                "firewall-cmd --state",
                "systemctl is-enabled waagent-network-setup.service",
                "systemctl enable --no-reload waagent-network-setup.service"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            unit_text(exe, WIRE).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );

        // Enabled and the same: left alone.
        runner.push("systemctl", Output::ok("enabled\n"));
        assert_eq!(
            persist(&*os, WIRE, 0, exe).unwrap(),
            Persisted::Unit {
                path: path.clone(),
                changed: false
            }
        );
        assert_eq!(runner.lines().len(), 6);

        // Another address: rewritten and enabled again.
        runner.push("systemctl", Output::ok("enabled\n"));
        let other = Ipv4Addr::new(10, 1, 2, 3);
        assert!(matches!(
            persist(&*os, other, 0, exe).unwrap(),
            Persisted::Unit { changed: true, .. }
        ));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("ExecStart=/usr/sbin/waagent -setup-firewall=10.1.2.3\n"));

        // A unit systemctl will not enable is not left behind.
        std::fs::remove_file(&path).unwrap();
        runner.push("systemctl", Output::failed(1, "x"));
        runner.push("systemctl", Output::failed(1, "Failed to enable unit"));
        let err = persist(&*os, WIRE, 0, exe).unwrap_err().to_string();
        assert_eq!(
            err,
            "`systemctl enable --no-reload waagent-network-setup.service` failed with exit code 1: Failed to enable unit"
        );
        assert!(!path.exists());
    }

    #[test]
    fn persist_uses_firewalld_permanent_rules_when_it_runs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let runner = Rc::new(RecordingRunner::new());
        let os = crate::os::for_env(env(r, Flavour::RedHat, runner.clone()));
        std::fs::create_dir_all(r.join("run/systemd/system")).unwrap();
        let unit = unit_path(&*os).unwrap();
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(&unit, "old").unwrap();
        runner.push("firewall-cmd", Output::ok("running\n"));
        runner.push("firewall-cmd", Output::ok("1.3.4\n"));
        // No legacy rule; none of ours either.
        for _ in 0..4 {
            runner.push("firewall-cmd", Output::failed(1, "no"));
        }
        assert_eq!(
            persist(&*os, WIRE, 0, Path::new("/usr/sbin/waagent")).unwrap(),
            Persisted::Firewalld(Ensured::Set)
        );
        let direct = "firewall-cmd --permanent --direct";
        let rule = |op: &str, pos: &str, r: &str| {
            format!("{direct} {op} ipv4 -t security {pos} OUTPUT -d 168.63.129.16 -p tcp {r}")
        };
        let mut want = vec![
            "firewall-cmd --state".to_string(),
            "firewall-cmd --version".to_string(),
            rule("--query-passthrough", "-I", DNS),
        ];
        want.extend([DNS, ROOT, DROP].map(|r| rule("--query-passthrough", "-A", r)));
        want.extend([DNS, ROOT, DROP].map(|r| rule("--passthrough", "-A", r)));
        assert_eq!(runner.lines(), want);
        assert!(!unit.exists(), "firewalld keeps the rules: no unit");
    }
}
