//! The rc.d and SysV scripts (`packaging/rc.d/waagent`,
//! `packaging/sysv/waagent`): plain /bin/sh (`sh -n`, `dash -n`,
//! `shellcheck -s sh`), and run through their verbs in the sandbox against
//! a stub agent (`test-data/init-scripts/waagent`), the rc.d one over a
//! small stand-in for FreeBSD's rc.subr. The pid file is the fixed
//! `/var/run/waagent.pid` and rc.subr is `/etc/rc.subr`, which only the
//! sandbox's throwaway root may hold.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sandbox::{Options, Sandbox};

const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Where the rendered scripts, the stub and its record live in the sandbox.
const INSIDE: &str = "/tmp/t";

fn source(rel: &str) -> PathBuf {
    Path::new(SOURCE_DIR).join(rel)
}

/// The script as `make install` writes it (the Makefile's SUBST), with the
/// stub's directory as SBINDIR.
fn render(rel: &str) -> String {
    fs::read_to_string(source(rel))
        .unwrap()
        .replace("@SBINDIR@", &format!("{INSIDE}/sbin"))
        .replace("@SYSCONFDIR@", &format!("{INSIDE}/etc"))
}

#[test]
fn the_scripts_are_plain_sh() {
    for rel in ["packaging/rc.d/waagent", "packaging/sysv/waagent"] {
        for shell in ["sh", "dash"] {
            let o = match Command::new(shell).arg("-n").arg(source(rel)).output() {
                Ok(o) => o,
                Err(_) if shell != "sh" => {
                    waagent::sim::skips::note(
                        env!("CARGO_CRATE_NAME"),
                        "the_scripts_are_plain_sh",
                        &format!("no {shell} here"),
                    );
                    continue;
                }
                Err(e) => panic!("cannot run sh: {e}"),
            };
            assert!(
                o.status.success(),
                "{shell} -n {rel}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    // Bashisms and quoting, as /bin/sh scripts (scripts/setup installs it).
    match Command::new("shellcheck")
        .args(["-s", "sh", "-S", "style"])
        .arg(source("packaging/rc.d/waagent"))
        .arg(source("packaging/sysv/waagent"))
        .output()
    {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout)),
        Err(_) => waagent::sim::skips::note(
            env!("CARGO_CRATE_NAME"),
            "the_scripts_are_plain_sh",
            "no shellcheck here (scripts/setup installs it)",
        ),
    }
}

/// Installs the `kind` script, the stub agent, rc.subr's stand-in and the
/// driver into a directory that becomes `/tmp/t` in the sandbox, runs the
/// driver there and returns its transcript.
fn transcript(kind: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    for d in ["sbin", "etc", "init.d", "rc.d"] {
        fs::create_dir(t.join(d)).unwrap();
    }
    let data = source("test-data/init-scripts");
    fs::copy(data.join("waagent"), t.join("sbin/waagent")).unwrap();
    fs::set_permissions(t.join("sbin/waagent"), fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["rc.subr", "run.sh"] {
        fs::copy(data.join(f), t.join(f)).unwrap();
    }
    fs::write(t.join("etc/waagent.conf"), "").unwrap();
    fs::write(t.join("init.d/waagent"), render("packaging/sysv/waagent")).unwrap();
    fs::write(t.join("rc.d/waagent"), render("packaging/rc.d/waagent")).unwrap();
    let o = Sandbox::run(
        &Options::default().bind(t, INSIDE),
        &["sh", &format!("{INSIDE}/run.sh"), kind],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// status, start (the pid file the daemon writes), status, a second start,
/// stop (TERM to that pid, which exits and whose pid file is gone), status;
/// then a pid file naming a process that is not the daemon, though
/// "waagent" is in its command line: never taken for it, never signalled,
/// and the stale file removed.
#[test]
fn the_sysv_script_starts_checks_and_stops_the_daemon() {
    if sandbox::skip("the_sysv_script_starts_checks_and_stops_the_daemon") {
        return;
    }
    assert_eq!(
        transcript("sysv"),
        "$ status\nwaagent is not running\nrc=3\n\
         $ start\nStarting waagent\nrc=0\n\
         pid file: PID\n\
         $ status\nwaagent is running (pid PID)\nrc=0\n\
         $ start\nwaagent is already running (pid PID)\nrc=0\n\
         $ stop\nStopping waagent (pid PID)\nrc=0\n\
         pid file: none\n\
         daemon: gone\n\
         $ status\nwaagent is not running\nrc=3\n\
         $ status\nwaagent is not running, but /var/run/waagent.pid exists\nrc=1\n\
         $ stop\nwaagent is not running\nrc=0\n\
         pid file: none\n\
         other: running\n\
         calls:\n-start\n-daemon\ndaemon PID got TERM\n"
    );
}

/// The same through rc.subr's run_rc_command: `waagent_flags` from
/// rc.conf come before `-start`; stop sends TERM to the pid in the pid file
/// and waits for it; a pid file naming another program is refused.
#[test]
fn the_rcd_script_starts_checks_and_stops_the_daemon() {
    if sandbox::skip("the_rcd_script_starts_checks_and_stops_the_daemon") {
        return;
    }
    assert_eq!(
        transcript("rcd"),
        "$ status\nwaagent is not running.\nrc=1\n\
         $ start\nStarting waagent.\nrc=0\n\
         pid file: PID\n\
         $ status\nwaagent is running as pid PID.\nrc=0\n\
         $ start\nwaagent already running? (pid=PID).\nrc=1\n\
         $ stop\nStopping waagent.\nrc=0\n\
         pid file: none\n\
         daemon: gone\n\
         $ status\nwaagent is not running.\nrc=1\n\
         $ status\nwaagent is not running.\nrc=1\n\
         $ stop\nwaagent not running? (check /var/run/waagent.pid).\nrc=1\n\
         pid file: OTHER\n\
         other: running\n\
         calls:\n-configuration-path:/tmp/t/etc/waagent.conf -start\n-daemon\n\
         daemon PID got TERM\n"
    );
}
