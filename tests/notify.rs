//! The daemon under a `Type=notify` unit, as systemd sees it: a datagram
//! socket bound in a temporary directory is `NOTIFY_SOCKET`, and the test
//! reads what the real daemon sends there (report-only, against a loopback
//! simulator, so nothing outside the temporary directory changes).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::Sandbox;

/// What systemd would read from the socket, kept in order.
struct Manager {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager {
            sock,
            seen: Vec::new(),
        }
    }

    /// The next message within `within`, if one comes.
    fn next(&mut self, within: Duration) -> Option<String> {
        let end = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                return Some(m);
            }
        }
        None
    }

    /// Reads until a message matches; panics, showing what came, after 30 s.
    fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) if pred(&m) => return m,
                Some(_) => {}
                None => panic!("no {what} within 30 s; received {:#?}", self.seen),
            }
        }
    }

    /// The STATUS= texts received, in order.
    fn statuses(&self) -> Vec<&str> {
        self.seen
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .collect()
    }
}

/// A handler package whose enable writes its status and the environment
/// it was given.
fn env_zip() -> Vec<u8> {
    let script = "#!/bin/sh\ncd \"$(dirname \"$0\")\"\nif [ \"$1\" = enable ]; then env > env.txt; printf '[{\"version\":1.0,\"status\":{\"name\":\"Env\",\"operation\":\"Enable\",\"status\":\"success\",\"code\":0,\"formattedMessage\":{\"lang\":\"en-US\",\"message\":\"ok\"}}}]' > status/0.status; fi\nexit 0\n";
    let manifest = r#"[{"name":"Env","version":1.0,"handlerManifest":{"installCommand":"h.sh install","enableCommand":"h.sh enable","disableCommand":"h.sh disable","uninstallCommand":"h.sh uninstall","updateCommand":"h.sh update"}}]"#;
    common::zip_of(&[("HandlerManifest.json", manifest), ("h.sh", script)])
}

/// The daemon, killed if the test ends before it has exited.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// The exit code, waiting at most 30 s (then the daemon is killed).
fn exit_code(child: &mut Child) -> Option<i32> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("the daemon did not exit within 30 s of SIGTERM");
}

const WATCHDOG: &str = "WATCHDOG=1";

/// READY=1 first; each state's STATUS= once, in order; WATCHDOG=1 through
/// an idle goal-state period far longer than the watchdog interval; none
/// while `Debug.HangFile` exists, again once it is gone; a SIGTERM ends a
/// hung daemon; children never see systemd's variables.
#[test]
fn the_daemon_notifies_systemd_and_its_watchdog_sees_a_hang() {
    let sim =
        waagent::sim::FabricSim::start(waagent::sim::SimConfig::default()).expect("simulator");
    let incarnation = sim.set_handlers(vec![waagent::sim::SimHandler::new(
        "Contoso.Test.Env",
        "1.0.0",
        env_zip(),
    )]);
    let ep = sim.endpoint();
    // A goal-state period of ten minutes: only the capped waits can keep
    // the watchdog (one second here) fed while the daemon is idle.
    let tmp = tempfile::tempdir().unwrap();
    let hang = tmp.path().join("hang");
    let s = Sandbox::new(&format!(
        "Provisioning.Agent=disabled\nDebug.WireServerAddress={}:{}\nDebug.HostGAPluginPort={}\n\
         Extensions.GoalStatePeriod=600\nDebug.HangFile={}\n",
        ep.host,
        ep.wire_port,
        ep.hostplugin_port,
        hang.display()
    ));
    let socket = tmp.path().join("notify");
    let mut systemd = Manager::bind(&socket);
    let mut daemon = common::own_command(common::bin())
        .arg(format!("-configuration-path:{}", s.conf_path().display()))
        .arg("-daemon")
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "1000000")
        .spawn()
        .map(Daemon)
        .expect("spawn the daemon");

    let settled = format!("Steady: incarnation {incarnation}, 1 handler");
    systemd.until("the settled Steady status", |m| {
        m == format!("STATUS={settled}")
    });
    assert_eq!(systemd.seen[0], "READY=1", "{:#?}", systemd.seen);
    assert_eq!(
        systemd.statuses(),
        [
            "Boot: preparing Lib.Dir and the VM's environment",
            "Connect: fetching the goal state from the WireServer",
            "Provisioning: marking the VM provisioned",
            "Provisioning: reporting Ready",
            "Steady: polling the goal state",
            &format!("{settled}, handlers running"),
            &settled,
        ]
    );
    assert!(sim.health_reports().iter().any(|h| h.state == "Ready"));

    // Idle now until the next poll in ten minutes: the pings go on.
    for _ in 0..3 {
        systemd.until("a watchdog ping while idle", |m| m == WATCHDOG);
    }

    // The handler ran without systemd's variables.
    let env = std::fs::read_to_string(s.path("lib/Contoso.Test.Env-1.0.0/env.txt"))
        .expect("the handler's environment");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains(var), "{var} reached the handler:\n{env}");
    }

    // Debug.HangFile: the loop stops and so do the pings (systemd would
    // kill it a second later) ...
    std::fs::write(&hang, "").unwrap();
    let hung = systemd.until("the Hung status", |m| m.starts_with("STATUS=Hung:"));
    assert_eq!(
        hung,
        format!(
            "STATUS=Hung: Debug.HangFile {} exists (a test fault)",
            hang.display()
        )
    );
    let mut after = Vec::new();
    while let Some(m) = systemd.next(Duration::from_secs(3)) {
        after.push(m);
    }
    assert!(after.is_empty(), "sent while hung: {after:?}");
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");

    // ... and come back with the loop once the file is gone.
    std::fs::remove_file(&hang).unwrap();
    systemd.until("the Steady status again", |m| {
        m == format!("STATUS={settled}")
    });
    systemd.until("a ping after the hang", |m| m == WATCHDOG);

    // A hung daemon still stops on SIGTERM.
    std::fs::write(&hang, "").unwrap();
    systemd.until("the Hung status again", |m| m.starts_with("STATUS=Hung:"));
    signal(&daemon.0, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(exit_code(&mut daemon.0), Some(0));
    systemd.until("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    assert!(s.log().contains("daemon stopped"), "{}", s.log());
    assert!(!s.pid_path().exists());
}

/// `WATCHDOG_PID` naming another process: the pings are not ours to send,
/// but READY=1 and the statuses are.
#[test]
fn a_watchdog_for_another_pid_gets_no_pings() {
    let sim =
        waagent::sim::FabricSim::start(waagent::sim::SimConfig::default()).expect("simulator");
    let ep = sim.endpoint();
    let s = Sandbox::new(&format!(
        "Provisioning.Agent=disabled\nDebug.WireServerAddress={}:{}\nDebug.HostGAPluginPort={}\n\
         Extensions.GoalStatePeriod=1\n",
        ep.host, ep.wire_port, ep.hostplugin_port
    ));
    let socket = s.path("notify");
    let mut systemd = Manager::bind(&socket);
    let mut daemon = common::own_command(common::bin())
        .arg(format!("-configuration-path:{}", s.conf_path().display()))
        .arg("-daemon")
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "1000000")
        .env("WATCHDOG_PID", "1")
        .spawn()
        .map(Daemon)
        .expect("spawn the daemon");
    systemd.until("the Steady status", |m| {
        m.starts_with("STATUS=Steady: incarnation 1")
    });
    // Several polls a second apart, each a few loop turns.
    let polls = sim.requests_to("comp=goalstate").len();
    let end = Instant::now() + Duration::from_secs(30);
    while sim.requests_to("comp=goalstate").len() < polls + 3 {
        assert!(Instant::now() < end, "no steady-state polls");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&daemon.0, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(exit_code(&mut daemon.0), Some(0));
    systemd.until("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    assert_eq!(systemd.seen[0], "READY=1");
    assert!(
        !systemd.seen.iter().any(|m| m == WATCHDOG),
        "{:#?}",
        systemd.seen
    );
}
