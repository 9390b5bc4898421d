//! The network pieces the agent keeps in place (§3.4, §15, §18.4 of
//! PROTOCOL.md): the host route to the WireServer, the udev rules that
//! would rename `eth0` in a VM made from an image, and the DHCP client
//! monitor that says when those routes must be put back.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::os::{Env, OsError, OsUtil};

// ----- the route to the WireServer -----

pub use crate::os::proc_route_default_gateway;

/// What [`ensure_wire_server_route`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireServerRoute {
    AlreadyPresent,
    /// Added through this gateway.
    Added(Ipv4Addr),
    /// No default gateway to route through: nothing to do yet.
    NoGateway,
}

/// Adds a host route to the WireServer through the default gateway when
/// the table has none (§3.4): a DHCP client that ignored the classless
/// static routes (option 121/249) leaves it out, and a restarted dhclient
/// wipes what the agent added.
pub fn ensure_wire_server_route(
    os: &dyn OsUtil,
    wire_server: Ipv4Addr,
) -> Result<WireServerRoute, OsError> {
    if os.has_route_to(wire_server)? {
        return Ok(WireServerRoute::AlreadyPresent);
    }
    let Some(gw) = os.default_gateway() else {
        return Ok(WireServerRoute::NoGateway);
    };
    os.add_route(wire_server, gw)?;
    Ok(WireServerRoute::Added(gw))
}

// ----- persistent-net udev rules -----

/// The rules that pin interface names to MAC addresses (§18.4). A VM made
/// from a captured image gets a new MAC, so with these rules its only NIC
/// would come up as `eth1` and DHCP (configured for `eth0`) would not run.
pub const PERSISTENT_NET_RULES: [&str; 2] = [
    "/lib/udev/rules.d/75-persistent-net-generator.rules",
    "/etc/udev/rules.d/70-persistent-net.rules",
];

/// Moves the rules into Lib.Dir (env monitor, every
/// `OS.RemovePersistentNetRulesPeriod`). A copy already in Lib.Dir is
/// replaced by the newer one (udev regenerates `70-persistent-net.rules`);
/// absent rules are skipped, so it is cheap to repeat. Returns the rules
/// moved (their system paths).
pub fn remove_persistent_net_rules(os: &dyn OsUtil) -> Result<Vec<PathBuf>, OsError> {
    let env = os.env();
    // Not where waagent leaves them (Debian, Ubuntu) or there is no udev.
    if !os.moves_persistent_net_rules() {
        return Ok(Vec::new());
    }
    let lib = &env.config.lib_dir;
    let mut moved = Vec::new();
    for rule in PERSISTENT_NET_RULES {
        let src = env.path(rule);
        if !src.is_file() {
            continue;
        }
        move_file(&src, &lib.join(file_name(rule)))?;
        moved.push(src);
    }
    Ok(moved)
}

/// Puts the rules back from Lib.Dir where the system has none (the undo of
/// [`remove_persistent_net_rules`]; waagent's `restore_rules_files`).
pub fn restore_persistent_net_rules(env: &Env) -> Result<Vec<PathBuf>, OsError> {
    let lib = &env.config.lib_dir;
    let mut restored = Vec::new();
    for rule in PERSISTENT_NET_RULES {
        let dest = env.path(rule);
        let src = lib.join(file_name(rule));
        if dest.is_file() || !src.is_file() {
            continue;
        }
        move_file(&src, &dest)?;
        restored.push(dest);
    }
    Ok(restored)
}

fn file_name(abs: &str) -> &str {
    abs.rsplit('/').next().unwrap_or(abs)
}

/// `rename`, or copy-then-delete across file systems (`/lib` and
/// `/var/lib` are often different ones). The copy is written atomically
/// with the original's mode and replaces any older copy, as rename would.
fn move_file(src: &Path, dest: &Path) -> Result<(), OsError> {
    match fs::rename(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let data = fs::read(src).map_err(OsError::io(src))?;
            let mode = fs::metadata(src).map_err(OsError::io(src))?.mode() & 0o7777;
            fsutil::write_atomic(dest, &data, mode).map_err(OsError::io(dest))?;
            fs::remove_file(src).map_err(OsError::io(src))
        }
        Err(e) => Err(OsError::Io {
            path: src.to_path_buf(),
            source: e,
        }),
    }
}

// ----- DHCP client monitor -----

/// Remembers the DHCP client's PID (§15): when it changes, the client has
/// restarted, may have flushed the routes, and the caller re-adds them
/// ([`ensure_wire_server_route`]). Checked every
/// `OS.MonitorDhcpClientRestartPeriod`.
///
/// While the PID last seen is still that same process (its start time
/// unchanged), the client cannot have restarted, and the flavour's lookup
/// (`pidof`, a process spawned every period) is skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DhcpClientMonitor {
    pid: Option<u32>,
    /// When `pid` started, where the flavour can tell (Linux's /proc).
    started: Option<u64>,
}

impl DhcpClientMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The PID last seen.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Takes a new reading; true when the client restarted. The first PID
    /// seen is only remembered, and a moment with no client running (the
    /// restart in progress) keeps the old PID, as waagent does, so the
    /// change is reported once the new client is there.
    pub fn observe(&mut self, pid: Option<u32>) -> bool {
        match (self.pid, pid) {
            (None, p) => {
                self.pid = p;
                false
            }
            (Some(old), Some(new)) if old != new => {
                self.pid = Some(new);
                true
            }
            _ => false,
        }
    }

    /// [`observe`](Self::observe) with the PID from the flavour
    /// (`pidof dhclient`, networkd's MainPID, `pgrep -n dhclient`, …),
    /// looked up only when the process last seen is gone.
    pub fn check(&mut self, os: &dyn OsUtil) -> Result<bool, OsError> {
        if let (Some(pid), Some(started)) = (self.pid, self.started) {
            if os.process_start_time(pid) == Some(started) {
                return Ok(false);
            }
        }
        let pid = os.dhcp_client_pid()?;
        let restarted = self.observe(pid);
        self.started = self.pid.and_then(|p| os.process_start_time(p));
        Ok(restarted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::testing::{self, write};
    use crate::os::Flavour;
    use crate::os::{for_env, Output, RecordingRunner};
    use std::rc::Rc;

    const WIRE: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    /// With Lib.Dir at `/var/lib/waagent` under `root`, made.
    fn env(root: &Path, flavour: Flavour, runner: Rc<RecordingRunner>) -> Env {
        let mut env = testing::env(root, flavour, runner);
        env.config.lib_dir = root.join("var/lib/waagent");
        fs::create_dir_all(&env.config.lib_dir).unwrap();
        env
    }

    #[test]
    fn gateway_of_the_lowest_metric_default_route() {
        let text = format!(
            "{HEADER}eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
             eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(
            proc_route_default_gateway(&text),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        // A default route straight out of an interface has no gateway.
        let text = format!("{HEADER}ppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(proc_route_default_gateway(&text), None);
        assert_eq!(proc_route_default_gateway(""), None);
        assert_eq!(proc_route_default_gateway("x\ny z\n"), None);
    }

    #[test]
    fn adds_the_wire_server_route_only_when_missing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let runner = Rc::new(RecordingRunner::new());
        write(
            root,
            "/proc/net/route",
            format!("{HEADER}eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"),
        );
        let os = for_env(env(root, Flavour::RedHat, runner.clone()));
        assert_eq!(
            ensure_wire_server_route(os.as_ref(), WIRE).unwrap(),
            WireServerRoute::Added(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            runner.lines(),
            vec!["ip route add 168.63.129.16/32 via 10.0.0.1"]
        );

        write(
            root,
            "/proc/net/route",
            format!(
                "{HEADER}eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                 eth0\t10813FA8\t0100000A\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
            ),
        );
        assert_eq!(
            ensure_wire_server_route(os.as_ref(), WIRE).unwrap(),
            WireServerRoute::AlreadyPresent
        );
        write(root, "/proc/net/route", HEADER);
        assert_eq!(
            ensure_wire_server_route(os.as_ref(), WIRE).unwrap(),
            WireServerRoute::NoGateway
        );
        assert_eq!(runner.lines().len(), 1);
    }

    #[test]
    fn freebsd_route_through_route_get_default() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push(
            "netstat",
            Output::ok("Destination Gateway Flags\ndefault 10.0.0.1 UGS\n"),
        );
        runner.push(
            "route",
            Output::ok(
                "   route to: default\ndestination: default\n    gateway: 10.0.0.1\n  interface: hn0\n",
            ),
        );
        let os = for_env(env(d.path(), Flavour::FreeBsd, runner.clone()));
        assert_eq!(
            ensure_wire_server_route(os.as_ref(), WIRE).unwrap(),
            WireServerRoute::Added(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            runner.lines(),
            vec![
                "netstat -rn -f inet",
                "route -n get default",
                "route add -host 168.63.129.16 10.0.0.1"
            ]
        );
    }

    #[test]
    fn rules_move_to_lib_dir_and_back() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let os = for_env(env(root, Flavour::RedHat, Rc::new(RecordingRunner::new())));
        let e = os.env();
        write(root, PERSISTENT_NET_RULES[0], "generator\n");
        write(
            root,
            PERSISTENT_NET_RULES[1],
            "SUBSYSTEM==\"net\", NAME=\"eth0\"\n",
        );
        write(
            root,
            "/var/lib/waagent/70-persistent-net.rules",
            "stale copy\n",
        );
        let moved = remove_persistent_net_rules(&*os).unwrap();
        assert_eq!(moved.len(), 2);
        assert!(!e.path(PERSISTENT_NET_RULES[1]).exists());
        let lib = &e.config.lib_dir;
        assert_eq!(
            fs::read_to_string(lib.join("70-persistent-net.rules")).unwrap(),
            "SUBSYSTEM==\"net\", NAME=\"eth0\"\n"
        );
        assert_eq!(
            fs::read_to_string(lib.join("75-persistent-net-generator.rules")).unwrap(),
            "generator\n"
        );
        assert!(remove_persistent_net_rules(&*os).unwrap().is_empty());

        // Restore puts back only what the system lacks.
        write(root, PERSISTENT_NET_RULES[1], "regenerated\n");
        let restored = restore_persistent_net_rules(e).unwrap();
        assert_eq!(restored, vec![e.path(PERSISTENT_NET_RULES[0])]);
        assert_eq!(
            fs::read_to_string(e.path(PERSISTENT_NET_RULES[1])).unwrap(),
            "regenerated\n"
        );
        assert!(restore_persistent_net_rules(e).unwrap().is_empty());
    }

    #[test]
    fn debian_ubuntu_and_freebsd_keep_their_rules() {
        for flavour in [Flavour::Debian, Flavour::Ubuntu, Flavour::FreeBsd] {
            let d = tempfile::tempdir().unwrap();
            let os = for_env(env(d.path(), flavour, Rc::new(RecordingRunner::new())));
            write(d.path(), PERSISTENT_NET_RULES[1], "x\n");
            assert!(!os.moves_persistent_net_rules(), "{flavour}");
            assert!(remove_persistent_net_rules(&*os).unwrap().is_empty());
            assert!(os.env().path(PERSISTENT_NET_RULES[1]).exists());
        }
        for flavour in [
            Flavour::Default,
            Flavour::RedHat,
            Flavour::Suse,
            Flavour::CoreOs,
        ] {
            let d = tempfile::tempdir().unwrap();
            let os = for_env(env(d.path(), flavour, Rc::new(RecordingRunner::new())));
            assert!(os.moves_persistent_net_rules(), "{flavour}");
        }
    }

    #[test]
    fn dhcp_monitor_reports_a_new_pid_once() {
        let mut m = DhcpClientMonitor::new();
        assert!(!m.observe(None));
        assert!(!m.observe(Some(100))); // first sighting
        assert!(!m.observe(Some(100)));
        assert!(!m.observe(None)); // restarting: keep 100
        assert_eq!(m.pid(), Some(100));
        assert!(m.observe(Some(200)));
        assert!(!m.observe(Some(200)));
    }

    /// Process `pid` under the test root: `comm` and a `stat` that says it
    /// started at `ticks`.
    fn process(root: &Path, pid: u32, comm: &str, ticks: u64) {
        let dir = root.join(format!("proc/{pid}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        // A command name with a space and a ')' in it, as a hostile one may.
        let fields = format!("S 1 {pid} {pid} 0 -1 4194368 95 0 0 0 1 0 0 0 20 0 1 0 {ticks} 4861952 230 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0");
        fs::write(dir.join("stat"), format!("{pid} ({comm} x)) {fields}\n")).unwrap();
    }

    /// The client is found in /proc, as pidof would find it, and looked
    /// for again only once the process last seen is gone or its PID is
    /// another process's; nothing is ever spawned.
    #[test]
    fn dhcp_monitor_finds_the_client_in_proc_and_looks_again_only_when_it_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let os = for_env(env(d.path(), Flavour::RedHat, runner.clone()));
        process(d.path(), 1, "systemd", 10);
        process(d.path(), 812, "dhclient", 4000);
        let mut m = DhcpClientMonitor::new();
        assert!(!m.check(os.as_ref()).unwrap());
        assert_eq!(m.pid(), Some(812));
        for _ in 0..3 {
            assert!(!m.check(os.as_ref()).unwrap());
        }
        // Not even a look at /proc while 812 is the same process.
        fs::remove_dir_all(d.path().join("proc/1")).unwrap();
        process(d.path(), 1, "dhclient", 5000);
        assert!(!m.check(os.as_ref()).unwrap());
        assert_eq!(m.pid(), Some(812));
        fs::remove_dir_all(d.path().join("proc/1")).unwrap();

        // 812 is now another, later process: the client restarted as 955.
        process(d.path(), 812, "bash", 9000);
        process(d.path(), 955, "dhclient", 8999);
        assert!(m.check(os.as_ref()).unwrap());
        assert_eq!(m.pid(), Some(955));
        assert!(!m.check(os.as_ref()).unwrap());

        // Gone, no client yet: kept, and looked for on each check.
        fs::remove_dir_all(d.path().join("proc/955")).unwrap();
        assert!(!m.check(os.as_ref()).unwrap());
        assert_eq!(m.pid(), Some(955));
        process(d.path(), 1200, "dhclient", 9500);
        assert!(m.check(os.as_ref()).unwrap());
        assert_eq!(m.pid(), Some(1200));
        assert!(runner.lines().is_empty(), "{:?}", runner.lines());
    }

    #[test]
    fn process_start_time_reads_field_22_past_the_command_name() {
        let d = tempfile::tempdir().unwrap();
        let os = for_env(env(
            d.path(),
            Flavour::Debian,
            Rc::new(RecordingRunner::new()),
        ));
        process(d.path(), 77, "a (b)", 123_456);
        assert_eq!(os.process_start_time(77), Some(123_456));
        assert_eq!(os.process_start_time(78), None);
        // FreeBSD has no procfs to ask.
        let freebsd = for_env(env(
            d.path(),
            Flavour::FreeBsd,
            Rc::new(RecordingRunner::new()),
        ));
        assert_eq!(freebsd.process_start_time(77), None);
    }
}
