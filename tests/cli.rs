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

/// `-collect-logs` writes the archive under Lib.Dir and says where, how
/// big and how many files, on standard output and in the log; `-full`
/// adds to it. (Run on this machine: it only reads, and writes under the
/// sandbox's Lib.Dir.)
#[test]
fn collect_logs_writes_the_archive_and_says_where() {
    let s = Sandbox::new("");
    std::fs::create_dir_all(s.path("log/azure")).unwrap();
    std::fs::write(s.path("log/azure/handler.log"), "handler ran\n").unwrap();
    std::fs::write(s.path("lib/Incarnation"), "1").unwrap();
    let archive = s.path("lib/logcollector/logs.zip");
    for args in [&["-collect-logs"][..], &["-collect-logs", "-full"]] {
        let o = s.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let out = stdout(&o);
        let bytes = std::fs::metadata(&archive).unwrap().len();
        let zip = zip::ZipArchive::new(std::fs::File::open(&archive).unwrap()).unwrap();
        let want = format!(
            "waagent: wrote {}: {bytes} bytes, {} files (",
            archive.display(),
            zip.len()
        );
        assert!(out.starts_with(&want), "{out}\nwanted {want}");
        assert!(
            out.ends_with(" left out, see results.txt inside)\n"),
            "{out}"
        );
        let logged = format!(
            "{}: {}",
            args.join(" "),
            out.trim_start_matches("waagent: ").trim_end()
        );
        assert!(s.log().contains(&logged), "{logged} not in\n{}", s.log());
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        let mut want: Vec<String> = ["results.txt", "commands/ip_addr.txt", "proc/cmdline"]
            .map(String::from)
            .into();
        for p in [
            "log/azure/handler.log",
            "lib/Incarnation",
            "log/waagent.log",
        ] {
            want.push(s.path(p).to_string_lossy().trim_start_matches('/').into());
        }
        for n in want {
            assert!(names.contains(&n), "{n} not in {names:?}");
        }
    }
    let help = stdout(&waagent(&["-help"]));
    assert!(help.contains("  -collect-logs [-full] "), "{help}");
}

#[test]
fn verbose_logs_to_stdout_too() {
    let s = Sandbox::new("");
    let o = s.run(&["-collect-logs", "-verbose"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("[INFO] -collect-logs: wrote "),
        "{}",
        stdout(&o)
    );
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
    let mut daemon = common::own_command(common::bin())
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
    // The CPU the daemon runs on, as the kernel names it: aarch64 when
    // make cross runs this under qemu-user.
    #[cfg(target_arch = "x86_64")]
    let arch = "x86_64";
    #[cfg(target_arch = "aarch64")]
    let arch = "aarch64";
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let arch = std::env::consts::ARCH;
    assert!(
        s.log().contains(&format!("), CPU arch {arch}\n")),
        "{}",
        s.log()
    );
    assert!(
        s.log()
            .contains("storage traffic goes through the proxy http://127.0.0.1:9"),
        "{}",
        s.log()
    );
}

#[test]
fn start_detaches_a_daemon() {
    if common::skip_under_runner(
        "cli",
        "start_detaches_a_daemon",
        "the binary cannot start itself again (-start re-executes /proc/self/exe)",
    ) {
        return;
    }
    let (sim, s) = fabric_and_config();
    let child = common::own_command(common::bin())
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

/// The daemons a test started: SIGKILLed and reaped when the test ends, pass
/// or fail, so a failing test leaves none behind.
struct Daemons(Vec<std::process::Child>);

impl Daemons {
    fn start(&mut self, s: &Sandbox) -> u32 {
        let child = common::own_command(common::bin())
            .arg(format!("-configuration-path:{}", s.conf_path().display()))
            .arg("-daemon")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let pid = child.id();
        self.0.push(child);
        pid
    }

    fn get(&mut self, pid: u32) -> &mut std::process::Child {
        self.0
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("a daemon of this test")
    }

    fn running(&mut self, pid: u32) -> bool {
        matches!(self.get(pid).try_wait(), Ok(None))
    }

    /// Its exit code and standard error, once it has exited.
    fn exited(&mut self, pid: u32) -> Option<(Option<i32>, String)> {
        let child = self.get(pid);
        let status = child.try_wait().ok()??;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        Some((status.code(), err))
    }

    fn signal(&mut self, pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    }

    /// SIGTERM and the exit code.
    fn stop(&mut self, pid: u32) -> Option<i32> {
        self.signal(pid, nix::sys::signal::Signal::SIGTERM);
        self.get(pid).wait().unwrap().code()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A pid file naming a live process whose command line says "waagent"
/// (a recycled pid) blocks nothing: the lock decides. The daemon then
/// refuses a second one, naming itself, and removes the file as it stops.
#[test]
fn a_recycled_pid_does_not_block_and_a_running_daemon_refuses_a_second() {
    if common::skip_under_runner(
        "cli",
        "a_recycled_pid_does_not_block_and_a_running_daemon_refuses_a_second",
        "the pid file's check of another daemon's /proc/PID/exe finds qemu, not waagent",
    ) {
        return;
    }
    let (sim, s) = fabric_and_config();
    let lookalike = s.path("waagent-lookalike");
    std::os::unix::fs::symlink("/bin/sleep", &lookalike).unwrap();
    let mut other = std::process::Command::new(&lookalike)
        .arg("60")
        .spawn()
        .expect("spawn the look-alike");
    wait_for("the look-alike's command line", || {
        std::fs::read(format!("/proc/{}/cmdline", other.id()))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("waagent"))
    });
    std::fs::write(s.pid_path(), format!("{}\n", other.id())).unwrap();

    let mut d = Daemons(Vec::new());
    let first = d.start(&s);
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    let _ = other.kill();
    let _ = other.wait();
    assert!(d.running(first));
    assert_eq!(waagent::pidfile::read_pid(&s.pid_path()), Some(first));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.pid_path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A second daemon waits out the bound, then refuses.
    let second = d.start(&s);
    let mut refused = None;
    wait_for("the second daemon to give up", || {
        refused = d.exited(second);
        refused.is_some()
    });
    let (code, err) = refused.unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "waagent: another waagent daemon is already running (pid {first}, from {})\n",
            s.pid_path().display()
        )
    );
    assert!(d.running(first));
    assert_eq!(d.stop(first), Some(0));
    assert!(!s.pid_path().exists());
}

/// Started together, exactly one daemon runs; the others wait out the bound
/// and exit 1 naming it.
#[test]
fn simultaneous_starts_run_exactly_one_daemon() {
    if common::skip_under_runner(
        "cli",
        "simultaneous_starts_run_exactly_one_daemon",
        "the pid file's check of another daemon's /proc/PID/exe finds qemu, not waagent",
    ) {
        return;
    }
    let (sim, s) = fabric_and_config();
    let mut d = Daemons(Vec::new());
    let pids: Vec<u32> = (0..3).map(|_| d.start(&s)).collect();
    // exited() takes the child's stderr: ask each daemon once, once it is gone.
    let mut outcomes: Vec<(u32, (Option<i32>, String))> = Vec::new();
    wait_for("all but one daemon to exit", || {
        for p in &pids {
            if outcomes.iter().all(|(q, _)| q != p) {
                if let Some(o) = d.exited(*p) {
                    outcomes.push((*p, o));
                }
            }
        }
        outcomes.len() >= pids.len() - 1
    });
    let running: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| outcomes.iter().all(|(q, _)| q != p))
        .collect();
    assert_eq!(running.len(), 1, "{outcomes:?}");
    let winner = running[0];
    for (_, (code, err)) in &outcomes {
        assert_eq!(*code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "another waagent daemon is already running (pid {winner}, "
            )),
            "{err}"
        );
    }
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    assert!(d.running(winner));
    assert_eq!(waagent::pidfile::read_pid(&s.pid_path()), Some(winner));
    assert_eq!(d.stop(winner), Some(0));
}

/// As a supervisor does it: the daemon is SIGKILLed 0.05 s after it started
/// and a new one started at once. The new one runs.
#[test]
fn a_daemon_killed_at_start_is_replaced_at_once() {
    let (sim, s) = fabric_and_config();
    let mut d = Daemons(Vec::new());
    let first = d.start(&s);
    std::thread::sleep(Duration::from_millis(50));
    d.signal(first, nix::sys::signal::Signal::SIGKILL);
    // Not reaped yet: it may still be in /proc, dying.
    let second = d.start(&s);
    wait_for("the new daemon to hold the pid file", || {
        waagent::pidfile::read_pid(&s.pid_path()) == Some(second) || !d.running(second)
    });
    assert!(d.running(second), "{:?}", d.exited(second));
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    // Still the new one, polling.
    let polls = sim.requests_to("comp=goalstate").len();
    wait_for("a steady-state poll", || {
        sim.requests_to("comp=goalstate").len() > polls
    });
    assert!(d.running(second));
    assert_eq!(d.stop(second), Some(0));
}

/// A SIGKILLed daemon is held while dying (stopped by ptrace at its exit,
/// with its files still open and its /proc entry whole): the new start
/// waits for it to finish dying, then runs.
#[cfg(target_os = "linux")]
#[test]
fn a_start_waits_for_a_dying_daemon_then_runs() {
    if common::skip_under_runner(
        "cli",
        "a_start_waits_for_a_dying_daemon_then_runs",
        "there is no ptrace to hold a dying daemon",
    ) {
        return;
    }
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let (sim, s) = fabric_and_config();
    let mut d = Daemons(Vec::new());
    let first = d.start(&s);
    wait_for("the first daemon to hold the pid file", || {
        waagent::pidfile::read_pid(&s.pid_path()) == Some(first)
    });
    let ptrace = |req: libc::c_uint, data: libc::c_long| {
        // SAFETY: plain ptrace requests on our own child; no memory is passed.
        let r = unsafe {
            libc::ptrace(
                req,
                first as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                data,
            )
        };
        assert_eq!(r, 0, "ptrace {req}: {}", std::io::Error::last_os_error());
    };
    ptrace(libc::PTRACE_SEIZE, libc::PTRACE_O_TRACEEXIT as libc::c_long);
    // Detached however the test ends: Daemons' drop could not reap a
    // tracee stopped for its tracer.
    struct Detach(u32);
    impl Drop for Detach {
        fn drop(&mut self) {
            // SAFETY: as above; fails harmlessly if already detached.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    self.0 as libc::pid_t,
                    std::ptr::null_mut::<libc::c_void>(),
                    0 as libc::c_long,
                )
            };
        }
    }
    let traced = Detach(first);
    d.signal(first, nix::sys::signal::Signal::SIGKILL);
    let pid = nix::unistd::Pid::from_raw(first as i32);
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)).unwrap() {
            WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_EXIT) => break,
            // A signal that arrived just before the kill.
            WaitStatus::Stopped(..) => ptrace(libc::PTRACE_CONT, 0),
            other => panic!("the first daemon: {other:?}"),
        }
    }
    let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("waagent"));

    let second = d.start(&s);
    let waiting = format!("is locked (pid {first}); waiting up to 10s for it");
    wait_for("the new daemon to wait", || {
        s.log().contains(&waiting) || !d.running(second)
    });
    assert!(d.running(second), "{:?}", d.exited(second));
    // Let the first finish dying.
    drop(traced);
    wait_for("the new daemon to hold the pid file", || {
        waagent::pidfile::read_pid(&s.pid_path()) == Some(second) || !d.running(second)
    });
    assert!(d.running(second), "{:?}", d.exited(second));
    wait_for("Ready", || {
        sim.health_reports().iter().any(|h| h.state == "Ready")
    });
    assert!(d.running(second));
    assert_eq!(d.stop(second), Some(0));
}

/// A handler package whose enable writes its status (and only into its own
/// directory), or, with `fail`, exits 3.
fn echo_zip(fail: bool) -> Vec<u8> {
    let script = if fail {
        "#!/bin/sh\nexit 3\n".to_string()
    } else {
        "#!/bin/sh\ncd \"$(dirname \"$0\")\"\n[ \"$1\" = enable ] && printf '[{\"version\":1.0,\"status\":{\"name\":\"Echo\",\"operation\":\"Enable\",\"status\":\"success\",\"code\":0,\"formattedMessage\":{\"lang\":\"en-US\",\"message\":\"ok\"}}}]' > status/0.status\nexit 0\n".to_string()
    };
    let manifest = r#"[{"name":"Echo","version":1.0,"handlerManifest":{"installCommand":"h.sh install","enableCommand":"h.sh enable","disableCommand":"h.sh disable","uninstallCommand":"h.sh uninstall","updateCommand":"h.sh update"}}]"#;
    common::zip_of(&[("HandlerManifest.json", manifest), ("h.sh", &script)])
}

/// An older fabric's goal state (`autoUpgrade` without `useExactVersion`)
/// gets the newest minor version of the requested major one; CRP's exact
/// versions are taken as asked (§13.8).
#[test]
fn run_exthandlers_takes_minor_upgrades_only_when_the_version_is_not_exact() {
    use waagent::sim::{SimHandler, SimPackage};
    let (sim, s) = fabric_and_config();
    let handler = |name: &str, exact: bool| {
        let mut h = SimHandler::new(name, "1.0.0", echo_zip(false));
        h.auto_upgrade = true;
        h.use_exact_version = exact;
        for v in ["1.1.0", "2.0.0"] {
            h.packages.push(SimPackage {
                version: v.into(),
                zip: echo_zip(false),
            });
        }
        h
    };
    sim.set_handlers(vec![
        handler("Contoso.Test.Auto", false),
        handler("Contoso.Test.Exact", true),
    ]);
    let o = s.run(&["-run-exthandlers"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Contoso.Test.Auto: enabled 1.1.0\n\
         Contoso.Test.Exact: enabled 1.0.0\n"
    );
    assert!(s
        .path("lib/Contoso.Test.Auto-1.1.0/status/0.status")
        .exists());
    assert!(!s.path("lib/Contoso.Test.Auto-1.0.0").exists());
    assert!(s
        .path("lib/Contoso.Test.Exact-1.0.0/status/0.status")
        .exists());
}

/// `-run-exthandlers` runs the goal state's handlers in the foreground,
/// prints one line each, uploads the status, and exits 0 only when none
/// failed; beside a running daemon it refuses.
#[test]
fn run_exthandlers_runs_the_handlers_once_in_the_foreground() {
    use waagent::sim::SimHandler;
    let (sim, s) = fabric_and_config();
    sim.set_handlers(vec![
        SimHandler::new("Contoso.Test.Echo", "1.0.0", echo_zip(false)),
        SimHandler::new("Contoso.Test.Broken", "2.0.0", echo_zip(true)),
    ]);
    let o = s.run(&["-run-exthandlers"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Contoso.Test.Echo: enabled 1.0.0\n\
         Contoso.Test.Broken: 2.0.0 failed (1007): install failed with exit code 3\n"
    );
    assert!(s
        .path("lib/Contoso.Test.Echo-1.0.0/status/0.status")
        .exists());
    let uploads = sim.status_uploads();
    let last: serde_json::Value =
        serde_json::from_slice(&uploads.last().expect("a status upload").content).unwrap();
    let handlers = last["aggregateStatus"]["handlerAggregateStatus"]
        .as_array()
        .unwrap();
    assert_eq!(handlers[0]["status"], "Ready");
    assert_eq!(
        handlers[0]["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"],
        "success"
    );
    assert_eq!(handlers[1]["status"], "NotReady");

    // Only the good one: exit 0. Its enable runs again, nothing is reinstalled.
    sim.set_handlers(vec![SimHandler::new(
        "Contoso.Test.Echo",
        "1.0.0",
        echo_zip(false),
    )]);
    let o = s.run(&["-run-exthandlers"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Contoso.Test.Echo: enabled 1.0.0\n");

    // Beside a running daemon: refused, nothing run.
    let mut d = Daemons(Vec::new());
    let daemon = d.start(&s);
    wait_for("the daemon's pid file", || {
        waagent::pidfile::read_pid(&s.pid_path()) == Some(daemon)
    });
    let o = s.run(&["-run-exthandlers"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("waagent: -run-exthandlers needs the daemon stopped"),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.stop(daemon), Some(0));
}
