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
fn setup_firewall_needs_an_ipv4_address() {
    // Only refused invocations here: a valid one would change this
    // machine's firewall (tests/firewall_e2e.rs runs it in the sandbox).
    for (args, msg) in [
        (
            &["-setup-firewall"][..],
            "-setup-firewall needs the WireServer address: -setup-firewall=IP",
        ),
        (
            &["-setup-firewall=168.63.129.256"],
            "-setup-firewall=168.63.129.256: not an IPv4 address (the WireServer's, e.g. 168.63.129.16)",
        ),
    ] {
        let o = waagent(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&o).starts_with(&format!("waagent: {msg}\nusage: waagent [-verbose]")),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("|-setup-firewall=IP"), "{}", stderr(&o));
    }
    let help = stdout(&waagent(&["-help"]));
    assert!(help.contains("  -setup-firewall=IP "), "{help}");
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
        ("-run-exthandlers", "-run-exthandlers"),
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
    let o = s.run(&["-collect-logs", "-verbose"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("[ERROR] -collect-logs is not implemented"),
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

    // Now stale: the daemon takes it over.
    let o = s.run(&["-version"]);
    assert_eq!(o.status.code(), Some(0));
}

/// A loopback fabric and a config that sends the daemon there and asks it
/// to report only (`Provisioning.Agent=disabled`): the state machine runs for
/// real on this machine without touching the system or the platform address.
fn fabric_and_config() -> (waagent::sim::FabricSim, Sandbox) {
    let sim =
        waagent::sim::FabricSim::start(waagent::sim::SimConfig::default()).expect("simulator");
    let ep = sim.endpoint();
    let s = Sandbox::new(&format!(
        "Provisioning.Agent=disabled\nDebug.WireServerAddress={}:{}\nDebug.HostGAPluginPort={}\nExtensions.GoalStatePeriod=1\n",
        ep.host, ep.wire_port, ep.hostplugin_port
    ));
    (sim, s)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemon_reports_ready_and_stops_cleanly_on_sigterm() {
    let (sim, s) = fabric_and_config();
    // A proxy in the environment (unreachable) must not catch the
    // WireServer's traffic: the daemon reaches the fabric directly.
    let mut daemon = std::process::Command::new(common::bin())
        .arg(format!("-configuration-path:{}", s.conf_path().display()))
        .arg("-daemon")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("all_proxy", "http://127.0.0.1:9")
        .spawn()
        .expect("spawn the daemon");
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    assert_eq!(waagent::pidfile::read_pid(&s.pid_path()), Some(daemon.id()));
    assert!(s.path("lib/provisioned").exists());
    // Steady state polls the goal state every second.
    let polls = sim.requests_to("comp=goalstate").len();
    wait_for("a steady-state poll", || {
        sim.requests_to("comp=goalstate").len() > polls
    });

    // The Extension state reports the agent's own status to the status blob
    // (through the HostGAPlugin first).
    wait_for("a status upload", || !sim.status_uploads().is_empty());
    let upload = &sim.status_uploads()[0];
    assert_eq!(upload.via, waagent::sim::Service::HostPlugin);
    assert_eq!(upload.blob_url, sim.status_blob_url());
    let status: serde_json::Value = serde_json::from_slice(&upload.content).unwrap();
    assert_eq!(status["version"], "1.1");
    assert_eq!(
        status["aggregateStatus"]["guestAgentStatus"]["status"],
        "Ready"
    );
    assert_eq!(
        status["aggregateStatus"]["handlerAggregateStatus"],
        serde_json::json!([])
    );

    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    assert!(!s.pid_path().exists());
    let reports: Vec<String> = sim.health_reports().into_iter().map(|h| h.state).collect();
    assert_eq!(reports, vec!["Ready".to_string()]);
    assert!(s.log().contains("daemon stopped"), "{}", s.log());
    assert!(
        s.log()
            .contains("storage traffic goes through the proxy http://127.0.0.1:9"),
        "{}",
        s.log()
    );
}

#[test]
fn start_detaches_a_daemon() {
    let (sim, s) = fabric_and_config();
    let child = std::process::Command::new(common::bin())
        .arg(format!("-configuration-path:{}", s.conf_path().display()))
        .arg("-start")
        .output()
        .expect("run -start");
    assert_eq!(child.status.code(), Some(0), "{}", stderr(&child));
    assert!(stdout(&child).is_empty());
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    // The detached daemon is the one -start logged, holds the pid file, and
    // leads its own session.
    let log = s.log();
    let started = log
        .lines()
        .find_map(|l| l.split("started the daemon, pid ").nth(1))
        .and_then(|p| p.trim().parse::<i32>().ok())
        .expect("-start logged the daemon's pid");
    assert_eq!(
        waagent::pidfile::read_pid(&s.pid_path()),
        Some(started as u32)
    );
    let pid = nix::unistd::Pid::from_raw(started);
    assert_eq!(nix::unistd::getsid(Some(pid)).unwrap(), pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the daemon to exit", || !s.pid_path().exists());
}
