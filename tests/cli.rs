//! The real binary's command line: exit codes, what it prints, what it writes.

mod common;

use common::{stderr, stdout, waagent, Sandbox};
use std::time::{Duration, Instant};

#[test]
fn unknown_flag_prints_usage_on_stderr_and_exits_2() {
    for bad in ["-frobnicate", "--daemonX", "/provision", "extra"] {
        let o = waagent(&[bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stdout(&o).is_empty(), "{bad}");
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!(
                "waagent: unknown argument \"{bad}\"\nusage: waagent [-verbose]"
            )),
            "{err}"
        );
    }
}

#[test]
fn help_in_every_spelling() {
    for flag in ["-help", "--help", "/help", "-?", "-usage"] {
        let o = waagent(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{flag}");
        let out = stdout(&o);
        assert!(
            out.starts_with("usage: waagent [-verbose] [-force]"),
            "{flag}: {out}"
        );
        assert!(out.contains("  -deprovision+user "), "{out}");
    }
    // No command at all: help, as waagent does.
    let o = waagent::<&str>(&[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("usage: waagent"));
}

#[test]
fn version_needs_no_configuration() {
    let o = waagent(&["-version", "-configuration-path:/nonexistent.conf"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "waagent-rs-{} running on ",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert_eq!(
        lines[1],
        format!("Goal state agent: {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn show_configuration_prints_every_option_sorted_and_warns_on_bad_values() {
    let s = Sandbox::new("Logs.Verbose = y # chatty\nResourceDisk.SwapSizeMB=lots\n");
    let o = s.run(&["-show-configuration"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), waagent::config::Config::KEYS.len());
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert!(lines.contains(&"Logs.Verbose = True"));
    assert!(lines.contains(&"ResourceDisk.SwapSizeMB = 0"));
    assert!(lines.contains(&format!("Lib.Dir = {}", s.path("lib").display()).as_str()));
    assert_eq!(
        stderr(&o),
        format!(
            "waagent: warning: {}:8: ResourceDisk.SwapSizeMB: invalid value \"lots\", expected a whole number; using the default 0\n",
            s.conf_path().display()
        )
    );
}

#[test]
fn missing_configuration_file_is_a_clear_error() {
    let o = waagent(&[
        "-show-configuration",
        "-configuration-path:/nonexistent/waagent.conf",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "waagent: cannot read configuration file /nonexistent/waagent.conf: No such file or directory (os error 2)\n"
    );
}

#[test]
fn unimplemented_commands_say_so_and_fail() {
    let s = Sandbox::new("");
    for (flag, shown) in [
        ("-deprovision", "-deprovision"),
        ("-deprovision+user", "-deprovision+user"),
        ("-run-exthandlers", "-run-exthandlers"),
        ("-serialconsole", "-serialconsole"),
        ("-collect-logs", "-collect-logs"),
    ] {
        let o = s.run(&[flag, "-force"]);
        assert_eq!(o.status.code(), Some(1), "{flag}");
        let want = format!(
            "waagent: {shown} is not implemented in waagent-rs {} yet; nothing was changed\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(stderr(&o), want);
        assert!(
            s.log()
                .contains(want.trim_start_matches("waagent: ").trim_end()),
            "{}",
            s.log()
        );
    }
}

#[test]
fn verbose_logs_to_stdout_too() {
    let s = Sandbox::new("");
    let o = s.run(&["-serialconsole", "-verbose"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("[ERROR] -serialconsole is not implemented"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn daemon_claims_the_pid_file_and_refuses_a_second_daemon() {
    let s = Sandbox::new("");
    // A live waagent holding the pid file keeps the daemon out. The holder is
    // sleep(1) run through a symlink, so its argv[0] names waagent; spawn()
    // returns after exec, so its cmdline is already in place.
    let holder_path = s.path("waagent-holder");
    std::os::unix::fs::symlink("/bin/sleep", &holder_path).unwrap();
    let mut holder = std::process::Command::new(&holder_path)
        .arg("30")
        .spawn()
        .expect("spawn holder");
    std::fs::write(s.pid_path(), format!("{}\n", holder.id())).unwrap();
    let o = s.run(&["-daemon"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "waagent: another waagent daemon is already running (pid {}, from {})\n",
            holder.id(),
            s.pid_path().display()
        )
    );

    // Now stale: the daemon takes it, says plainly it cannot go further yet,
    // and removes the pid file on the way out.
    let o = s.run(&["-daemon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("provisioning and steady state are not implemented"),
        "{}",
        stderr(&o)
    );
    assert!(s.log().contains("daemon starting, pid "), "{}", s.log());
    assert!(!s.pid_path().exists());
}

#[test]
fn start_detaches_a_daemon() {
    let s = Sandbox::new("");
    let child = std::process::Command::new(common::bin())
        .arg(format!("-configuration-path:{}", s.conf_path().display()))
        .arg("-start")
        .output()
        .expect("run -start");
    assert_eq!(child.status.code(), Some(0), "{}", stderr(&child));
    assert!(stdout(&child).is_empty());
    // The detached daemon logs its own pid, different from -start's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = s.log();
        if log.contains("not implemented") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let started = log
        .lines()
        .find_map(|l| l.split("started the daemon, pid ").nth(1))
        .and_then(|p| p.trim().parse::<u32>().ok())
        .expect("-start logged the daemon's pid");
    let daemon = log
        .lines()
        .find_map(|l| l.split("daemon starting, pid ").nth(1))
        .and_then(|p| p.split(',').next()?.parse::<u32>().ok())
        .expect("the daemon logged its pid");
    assert_eq!(started, daemon, "{log}");
    assert!(log.contains("not implemented"), "{log}");
}
