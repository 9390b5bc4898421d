//! The state machine driven step by step, in process: a scripted fabric (the
//! simulator on loopback, with faults), a recording command runner over a
//! temporary root, and a virtual clock under the production timings, so every
//! transition and timer is checked without root, without the platform and
//! without sleeping for real time: the clock moves only when the daemon
//! waits, and the tests assert on every wait.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::clock::VirtualClock;
use crate::config::{Config, ProvisioningAgent};
use crate::os::{for_env, CommandRunner, Distro, Env, Output, RecordingRunner, SystemRunner};
use crate::sim::certs::TenantCert;
use crate::sim::{FabricSim, Fault, SimConfig};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const PASSWORD: &str = "Sup3r$ecret P@ss & más <x>";

struct Vm {
    root: tempfile::TempDir,
    runner: Rc<RecordingRunner>,
    sim: FabricSim,
    config: Config,
    flavour: Flavour,
    clock: Rc<VirtualClock>,
}

impl Vm {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// A daemon with the production timings, on the virtual clock.
    fn daemon(&self) -> Daemon {
        let env = Env {
            root: self.root.path().to_path_buf(),
            runner: self.runner.clone(),
            config: self.config.clone(),
            distro: Distro {
                id: format!("{:?}", self.flavour).to_lowercase(),
                version: "12".into(),
                flavour: self.flavour,
            },
        };
        Daemon::new(self.config.clone(), for_env(env), Timing::default())
            .with_clock(self.clock.clone())
    }

    /// The waits since the last call, in whole seconds (all the agent's
    /// timers are whole seconds, but the 500 ms ones).
    fn waits(&self) -> Vec<f64> {
        self.clock
            .take_waits()
            .iter()
            .map(Duration::as_secs_f64)
            .collect()
    }

    /// Steps from Boot until `last` is reached (inclusive); the trace of
    /// crash points (state names, `Provision:<Step>`).
    fn run_until(&self, d: &mut Daemon, last: &str) -> Vec<String> {
        let mut state = State::Boot;
        let mut trace = Vec::new();
        for _ in 0..200 {
            trace.push(state.crash_point());
            if trace.last().map(String::as_str) == Some(last) {
                // Extension's work is the point of reaching it: do it.
                if last == "Extension" {
                    d.step(state);
                }
                return trace;
            }
            state = d.step(state);
        }
        panic!("never reached {last}: {trace:?}");
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A VM whose DVD holds `ovf` (none: no drive) and a fabric serving the
/// test tenant certificate.
fn vm(ovf: Option<&str>, agent: ProvisioningAgent) -> Vm {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let certs = Path::new(MANIFEST).join("test-data/certs");
    let tenant = TenantCert {
        cert_pem: std::fs::read_to_string(certs.join("tenant.crt")).unwrap(),
        key_pem: Some(std::fs::read_to_string(certs.join("tenant.key")).unwrap()),
    };
    let imds_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGltZHNrZXk= imds@azure".to_string();
    let sim = FabricSim::start(SimConfig {
        tenant_certs: vec![tenant],
        imds_public_keys: vec![(
            imds_key,
            format!("{}/home/azureuser/.ssh/authorized_keys", r.display()),
        )],
        ..SimConfig::default()
    })
    .unwrap();
    let ep = sim.endpoint();

    write(
        &r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
    );
    write(&r.join("etc/login.defs"), "UID_MIN 1000\n");
    write(
        &r.join("etc/ssh/sshd_config"),
        "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n",
    );
    write(
        &r.join("etc/ssh/ssh_host_rsa_key.pub"),
        "ssh-rsa AAAA root@host\n",
    );
    write(
        &r.join("etc/ssh/sshd_config.d/50-cloud-init.conf"),
        "PasswordAuthentication no\n",
    );
    write(
        &r.join("sys/class/dmi/id/product_uuid"),
        "C4BFE7E2-EB2D-4A4E-8615-EA6AAF50162E\n",
    );
    if let Some(ovf) = ovf {
        write(&r.join("sys/block/sr0/device/type"), "5\n");
        write(&r.join("mnt/cdrom/secure/ovf-env.xml"), ovf);
    }

    let mut c = Config::default();
    c.provisioning_agent = agent;
    c.lib_dir = r.join("var/lib/waagent");
    c.dvd_mount_point = r.join("mnt/cdrom/secure");
    c.sudoers_dir = r.join("etc/sudoers.d");
    c.ssh_dir = r.join("etc/ssh");
    c.sshd_config_path = r.join("etc/ssh/sshd_config");
    c.home_dir = r.join("home");
    c.password_path = r.join("etc/shadow");
    c.debug_wireserver_address = Some(format!("{}:{}", ep.host, ep.wire_port));
    c.debug_hostgaplugin_port = u64::from(ep.hostplugin_port);
    c.debug_imds_address = Some(sim.imds_base().trim_start_matches("http://").to_string());

    // The recording runner stands in for the system; useradd really adds
    // the user to the fixture passwd (as this process's uid, so chown
    // works unprivileged), and openssl really runs (certificates).
    let runner = Rc::new(RecordingRunner::new());
    let passwd = r.join("etc/passwd");
    let home = r.join("home");
    runner.respond(move |cmd| match cmd.program.as_str() {
        "useradd" => {
            let name = cmd.argv().last().cloned().unwrap_or_default();
            let (uid, gid) = (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            );
            let line = format!("{name}:x:{uid}:{gid}::{}/{name}:/bin/sh\n", home.display());
            let mut text = std::fs::read_to_string(&passwd).unwrap_or_default();
            text.push_str(&line);
            std::fs::write(&passwd, text).unwrap();
            std::fs::create_dir_all(home.join(&name)).unwrap();
            Some(Ok(Output::default()))
        }
        "ssh-keygen" => Some(Ok(Output::ok("2048 SHA256:ab:cd+ef root@host (RSA)\n"))),
        p if p.ends_with("openssl") => Some(SystemRunner.run(cmd)),
        _ => None,
    });
    Vm {
        root,
        runner,
        sim,
        config: c,
        flavour: Flavour::Debian,
        clock: Rc::new(VirtualClock::new()),
    }
}

/// test-data/ovf/full.xml with every key path under `$HOME` (the fixture's
/// home directory is not /home).
fn full_ovf() -> String {
    std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml"))
        .unwrap()
        .replace("<Path>/home/azureuser/", "<Path>$HOME/azureuser/")
}

fn health(sim: &FabricSim) -> Vec<String> {
    sim.health_reports()
        .into_iter()
        .map(|h| match h.sub_status {
            Some(s) => format!("{}/{s}", h.state),
            None => h.state,
        })
        .collect()
}

fn provision_steps() -> Vec<String> {
    Step::ALL
        .iter()
        .map(|s| format!("Provision:{s:?}"))
        .collect()
}

#[test]
fn first_boot_through_every_provisioning_transition() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    // The fabric is down for Connect's first two attempts: each is the
    // client's six tries of the Versions request.
    v.sim.inject("comp=versions", vec![Fault::Reset; 12]);
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Extension");
    // The client's retries (1 s Fibonacci), Connect's back-off (10 s, then
    // doubled), nothing while provisioning, then Extensions.GoalStatePeriod.
    let client = [2.0, 3.0, 5.0, 8.0, 13.0];
    let want: Vec<f64> = [&client[..], &[10.0], &client[..], &[20.0, 6.0]].concat();
    assert_eq!(v.waits(), want);
    let mut want: Vec<String> = [
        "Boot",
        "ReadMedia",
        "Connect",
        "Connect",
        "Connect",
        "ReportStarting",
        "Plan",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.extend(provision_steps());
    want.extend(
        ["MarkProvisioned", "ReportReady", "Steady", "Extension"]
            .iter()
            .map(|s| s.to_string()),
    );
    assert_eq!(trace, want);

    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    assert_eq!(v.sim.role_properties()[0].1, "SHA256abcd+ef");
    let lines = v.runner.lines();
    let mount = format!(
        "mount -t udf,iso9660 -o ro /dev/sr0 {}",
        v.path("mnt/cdrom/secure").display()
    );
    for want in [
        mount.as_str(),
        "hostname web-01.contoso.internal",
        "useradd -m azureuser",
        "chpasswd -e",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in {lines:#?}");
    }
    let chpasswd = v
        .runner
        .calls()
        .into_iter()
        .find(|c| c.program == "chpasswd")
        .unwrap();
    let line = String::from_utf8(chpasswd.stdin.unwrap()).unwrap();
    let hash = line.trim().strip_prefix("azureuser:").unwrap();
    assert!(hash.starts_with("$6$") && crate::provision::password::verify(PASSWORD, hash));

    assert_eq!(v.read("etc/sudoers.d/waagent"), "azureuser ALL=(ALL) ALL\n");
    assert!(v
        .read("etc/ssh/sshd_config")
        .contains("ClientAliveInterval 180"));
    // sshd reads the included drop-ins first: ours sorts before cloud-init's.
    assert_eq!(
        v.read("etc/ssh/sshd_config.d/00-waagent.conf"),
        "# Written by the Azure guest agent (waagent-rs) from ovf-env.xml.\nPasswordAuthentication yes\nChallengeResponseAuthentication yes\nKbdInteractiveAuthentication yes\nClientAliveInterval 180\n"
    );
    assert_eq!(
        v.read("home/azureuser/.ssh/authorized_keys")
            .lines()
            .count(),
        3
    );
    assert_eq!(
        v.read("var/lib/waagent/provisioned"),
        "e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e"
    );
    assert_eq!(
        v.read("var/lib/waagent/published_hostname"),
        "web-01.contoso.internal"
    );
    assert!(!v.read("var/lib/waagent/ovf-env.xml").contains("Sup3r"));
    let journal: serde_json::Value =
        serde_json::from_str(&v.read("var/lib/waagent/waagent-rs.journal")).unwrap();
    assert_eq!(journal["readyReported"], "1");
    assert_eq!(v.sim.status_uploads().len(), 1);

    // Reboot: straight to Steady, polling at once; nothing reported, no
    // system change (only the DHCP-client monitor looks for its PID).
    let before = v.runner.calls().len();
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Extension"),
        ["Boot", "Steady", "Extension"]
    );
    assert_eq!(v.waits(), [0.0]);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    let after: Vec<String> = v.runner.lines()[before..].to_vec();
    assert_eq!(after, ["pidof dhclient"]);
    assert_eq!(
        v.sim.status_uploads().len(),
        2,
        "status is still uploaded after a reboot"
    );

    // A new incarnation is picked up by the steady-state poll.
    v.sim.bump_incarnation();
    let mut d = v.daemon();
    v.run_until(&mut d, "Extension");
    assert_eq!(v.read("var/lib/waagent/Incarnation"), "2");
}

#[test]
fn bad_input_goes_to_report_failed_without_provisioning() {
    let bad = full_ovf().replace(
        "<UserName>azureuser</UserName>",
        "<UserName>us;er</UserName>",
    );
    let v = vm(Some(&bad), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Steady"),
        ["Boot", "ReadMedia", "Connect", "ReportFailed", "Steady"]
    );
    assert_eq!(health(&v.sim), ["NotReady/ProvisioningFailed"]);
    assert!(v.sim.health_reports()[0]
        .description
        .as_deref()
        .unwrap()
        .contains("\"us;er\" is not a valid user name"));
    assert!(!v.runner.lines().iter().any(|l| l.starts_with("useradd")));
    assert!(!v.path("var/lib/waagent/provisioned").exists());
}

#[test]
fn a_failing_step_reports_failed_and_a_system_user_is_refused_in_plan() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.runner.respond(|c| {
        (c.program == "chpasswd").then(|| Ok(Output::failed(1, "chpasswd: PAM failure")))
    });
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Steady");
    assert_eq!(
        &trace[trace.len() - 4..],
        [
            "Provision:User",
            "Provision:Password",
            "ReportFailed",
            "Steady"
        ]
    );
    let h = v.sim.health_reports();
    assert_eq!(
        h.last().unwrap().description.as_deref(),
        Some("setting the password: `chpasswd -e` failed with exit code 1: chpasswd: PAM failure")
    );

    let daemon_user = full_ovf()
        .replace(
            "<UserName>azureuser</UserName>",
            "<UserName>daemon</UserName>",
        )
        .replace("$HOME/azureuser/", "$HOME/daemon/");
    let v = vm(Some(&daemon_user), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Steady"),
        [
            "Boot",
            "ReadMedia",
            "Connect",
            "ReportStarting",
            "Plan",
            "ReportFailed",
            "Steady"
        ]
    );
}

#[test]
fn no_media_is_a_reported_failure() {
    let v = vm(None, ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Steady"),
        ["Boot", "ReadMedia", "Connect", "ReportFailed", "Steady"]
    );
    assert_eq!(
        v.sim.health_reports()[0].description.as_deref(),
        Some("provisioning media: no provisioning media (DVD drive) found")
    );
}

#[test]
fn disabled_reports_ready_on_every_start() {
    let v = vm(None, ProvisioningAgent::Disabled);
    for _ in 0..2 {
        let mut d = v.daemon();
        assert_eq!(
            v.run_until(&mut d, "Steady"),
            [
                "Boot",
                "Connect",
                "MarkProvisioned",
                "ReportReady",
                "Steady"
            ]
        );
    }
    assert_eq!(health(&v.sim), ["Ready", "Ready"]);
    // Only openssl ran (the transport certificate and Certificates): no
    // system change at all.
    let lines = v.runner.lines();
    assert!(
        lines.iter().all(|l| l.starts_with("/usr/bin/openssl ")),
        "{lines:?}"
    );
}

#[test]
fn cloud_init_provisions_and_the_agent_reports_around_it() {
    let v = vm(None, ProvisioningAgent::CloudInit);
    let mut d = v.daemon();
    let mut state = d.step(State::Boot);
    assert_eq!(state.name(), "WaitForCloudInit");
    state = d.step(state);
    assert_eq!(
        state.name(),
        "WaitForCloudInit",
        "still waiting for ovf-env.xml"
    );
    write(&v.path("var/lib/waagent/ovf-env.xml"), &full_ovf());
    let mut trace = Vec::new();
    while state.name() != "Steady" {
        assert!(trace.len() < 50, "{trace:?}");
        trace.push(state.name());
        state = d.step(state);
    }
    assert_eq!(
        trace,
        [
            "WaitForCloudInit",
            "Connect",
            "ReportStarting",
            "WaitForHostKey",
            "MarkProvisioned",
            "ReportReady"
        ]
    );
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    assert!(
        !v.runner.lines().iter().any(|l| l.starts_with("useradd")),
        "cloud-init makes the user"
    );
}

#[test]
fn mode_follows_the_agent_setting_and_the_old_switches() {
    let v = vm(None, ProvisioningAgent::Auto);
    let mode_with = |text: &str| {
        let (parsed, warnings) = Config::parse(text, Path::new("waagent.conf"));
        assert!(warnings.is_empty());
        let mut w = vm(None, ProvisioningAgent::Auto);
        let lib = w.config.lib_dir.clone();
        w.config = parsed;
        w.config.lib_dir = lib;
        w.runner = v.runner.clone();
        w.daemon().mode()
    };
    // auto: cloud-init when systemctl says it is enabled, else waagent.
    v.runner.push("systemctl", Output::ok("enabled\n"));
    assert_eq!(mode_with(""), Mode::CloudInit);
    assert_eq!(mode_with(""), Mode::Waagent);
    assert_eq!(mode_with("Provisioning.UseCloudInit=y\n"), Mode::CloudInit);
    // 2.2.x: Enabled=n is no provisioning (cloud-init on Ubuntu).
    assert_eq!(mode_with("Provisioning.Enabled=n\n"), Mode::Disabled);
    // An explicit Provisioning.Agent wins over the old switches.
    assert_eq!(
        mode_with("Provisioning.Enabled=n\nProvisioning.Agent=waagent\n"),
        Mode::Waagent
    );
    assert_eq!(mode_with("Provisioning.Agent=disabled\n"), Mode::Disabled);
}

#[test]
fn connect_backs_off_to_a_ceiling() {
    let waits: Vec<u64> = (0..6)
        .map(|a| connect_backoff(Duration::from_secs(10), a).as_secs())
        .collect();
    assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
}

/// Steps `state` until a state named `last` (returned, not stepped); the
/// names on the way, `state`'s first.
fn step_until(d: &mut Daemon, mut state: State, last: &str, limit: usize) -> (Vec<String>, State) {
    let mut trace = Vec::new();
    while state.name() != last {
        assert!(trace.len() < limit, "never reached {last}: {trace:?}");
        trace.push(state.crash_point());
        state = d.step(state);
    }
    (trace, state)
}

#[test]
fn boot_prepares_the_environment_and_steady_state_runs_each_monitor_on_its_period() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    // RedHat moves the persistent-net rules (Debian's are left alone).
    v.flavour = Flavour::RedHat;
    v.config.root_device_scsi_timeout = Some(300);
    v.config.monitor_dhcp_client_restart_period = 60;
    let timeout = "sys/block/sda/device/timeout";
    let rule = "etc/udev/rules.d/70-persistent-net.rules";
    let generator = "lib/udev/rules.d/75-persistent-net-generator.rules";
    write(&v.path(timeout), "30\n");
    write(&v.path(rule), "SUBSYSTEM==\"net\", NAME=\"eth0\"\n");
    write(&v.path(generator), "# generator\n");
    // A default route via 10.0.0.1 and none to the WireServer.
    write(
        &v.path("proc/net/route"),
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
    );
    for pid in ["100\n", "100\n", "200\n"] {
        v.runner.push("pidof", Output::ok(pid));
    }
    // Boot: the Hyper-V seed goes to /dev/random, and an old kernel gets
    // numa=off for its next boot.
    write(&v.path("sys/firmware/acpi/tables/OEM0"), "OEM0-seed");
    write(&v.path("dev/random"), "");
    write(
        &v.path("proc/sys/kernel/osrelease"),
        "2.6.32-71.el6.x86_64\n",
    );
    write(
        &v.path("boot/grub/menu.lst"),
        "\tkernel /vmlinuz ro quiet\n",
    );
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 100);
    assert_eq!(v.read("dev/random"), "OEM0-seed");
    assert_eq!(
        v.read("boot/grub/menu.lst"),
        "\tkernel /vmlinuz ro quiet numa=off\n"
    );
    v.clock.take_waits();

    // Steps the steady state until `secs` of virtual time have passed since
    // the first poll; what the monitors changed is then visible.
    let start = v.clock.elapsed();
    let mut run_for = |secs: u64, state: State| -> State {
        let mut state = state;
        while v.clock.elapsed() < start + Duration::from_secs(secs) {
            state = d.step(state);
        }
        state
    };

    // First poll (6 s): every monitor runs at its first chance.
    state = run_for(6, state);
    assert_eq!(v.read(timeout), "300");
    let lib = "var/lib/waagent/";
    assert!(!v.path(rule).exists() && !v.path(generator).exists());
    assert_eq!(
        v.read(&format!("{lib}70-persistent-net.rules")),
        "SUBSYSTEM==\"net\", NAME=\"eth0\"\n"
    );
    assert_eq!(
        v.read(&format!("{lib}75-persistent-net-generator.rules")),
        "# generator\n"
    );

    // udev resets the timeout and regenerates the rule: both are undone on
    // the first poll 30 s (their periods) after the last run, not before.
    write(&v.path(timeout), "30\n");
    write(&v.path(rule), "SUBSYSTEM==\"net\", NAME=\"eth1\"\n");
    state = run_for(6 + 24, state);
    assert_eq!(v.read(timeout), "30\n", "not due before its period");
    assert!(v.path(rule).exists());
    state = run_for(6 + 30, state);
    assert_eq!(v.read(timeout), "300");
    assert!(!v.path(rule).exists());
    assert_eq!(
        v.read(&format!("{lib}70-persistent-net.rules")),
        "SUBSYSTEM==\"net\", NAME=\"eth1\"\n"
    );

    // The DHCP client (period 60 s) restarted between its second and third
    // look: the route to the WireServer is added back through the gateway.
    let route = format!("ip route add {}/32 via 10.0.0.1", v.sim.endpoint().host);
    let looks = |v: &Vm| {
        v.runner
            .lines()
            .iter()
            .filter(|l| *l == "pidof dhclient")
            .count()
    };
    state = run_for(6 + 60, state);
    assert_eq!(looks(&v), 2);
    assert!(!v.runner.lines().contains(&route));
    run_for(6 + 120, state);
    assert_eq!(looks(&v), 3);
    assert!(v.runner.lines().contains(&route), "{:#?}", v.runner.lines());

    // Between the monitors, the goal state is polled every 6 s: nothing
    // but those waits passed on the clock.
    let waits = v.waits();
    assert!(waits.iter().all(|w| *w == 6.0), "{waits:?}");
    assert_eq!(waits.len(), 126 / 6);
}

#[test]
fn sigterm_stops_the_steady_state_and_connect_at_once() {
    let v = vm(None, ProvisioningAgent::Disabled);
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    let stop = v.clock.elapsed() + Duration::from_secs(3);
    v.clock.stop_at(stop);
    assert!(matches!(d.step(state), State::Stopped(0)));
    assert_eq!(v.clock.elapsed(), stop, "the 6 s wait ended at the stop");

    // The fabric down: a stop during Connect's back-off stops the daemon.
    let v = vm(None, ProvisioningAgent::Disabled);
    v.sim.inject("comp=versions", vec![Fault::Reset; 100]);
    v.clock.stop_at(Duration::from_secs(100));
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Stopped", 20);
    assert_eq!(trace, ["Boot", "Connect", "Connect", "Connect"]);
    assert_eq!(v.clock.elapsed(), Duration::from_secs(100));
    assert!(health(&v.sim).is_empty());
}

#[test]
fn cloud_init_that_never_delivers_is_reported_after_its_timeout() {
    // No ovf-env.xml from cloud-init: 30 minutes of 1 s looks, then failure.
    let v = vm(None, ProvisioningAgent::CloudInit);
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Steady", 2000);
    let waiting = trace.iter().filter(|s| *s == "WaitForCloudInit").count();
    assert_eq!(waiting, 1801);
    assert_eq!(&trace[trace.len() - 2..], ["Connect", "ReportFailed"]);
    let waits = v.waits();
    assert_eq!(waits.len(), 1800);
    assert!(waits.iter().all(|w| *w == 1.0));
    assert_eq!(health(&v.sim), ["NotReady/ProvisioningFailed"]);

    // ovf-env.xml but never an SSH host key: the same patience, then failure.
    let v = vm(None, ProvisioningAgent::CloudInit);
    write(&v.path("var/lib/waagent/ovf-env.xml"), &full_ovf());
    std::fs::remove_file(v.path("etc/ssh/ssh_host_rsa_key.pub")).unwrap();
    v.runner
        .respond(|c| (c.program == "ssh-keygen").then(|| Ok(Output::failed(1, "no key"))));
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Steady", 2000);
    assert_eq!(
        trace.iter().filter(|s| *s == "WaitForHostKey").count(),
        1801
    );
    assert_eq!(trace.last().map(String::as_str), Some("ReportFailed"));
    assert_eq!(
        health(&v.sim),
        ["NotReady/Provisioning", "NotReady/ProvisioningFailed"]
    );
    assert!(v.sim.health_reports()[1]
        .description
        .as_deref()
        .unwrap()
        .starts_with("cloud-init made no SSH host key"));
}

#[test]
fn restarts_resume_or_redo_by_what_lib_dir_says() {
    // `provisioned` names this VM but no Ready is journalled (killed in
    // between, or upgraded from waagent): report Ready, do nothing else.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    write(
        &v.path("var/lib/waagent/provisioned"),
        "e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e",
    );
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Steady", 20);
    assert_eq!(trace, ["Boot", "Connect", "MarkProvisioned", "ReportReady"]);
    assert_eq!(health(&v.sim), ["Ready"]);
    assert!(!v.runner.lines().iter().any(|l| l.starts_with("useradd")));

    // Another instance id: a captured image, provisioned afresh, and the
    // previous instance's goal-state files are forgotten.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    write(
        &v.path("var/lib/waagent/provisioned"),
        "00000000-1111-2222-3333-444444444444",
    );
    write(&v.path("var/lib/waagent/GoalState.7.xml"), "<GoalState/>");
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "ReportReady");
    assert_eq!(trace[..2], ["Boot", "ReadMedia"]);
    assert!(!v.path("var/lib/waagent/GoalState.7.xml").exists());
    assert!(v.runner.lines().iter().any(|l| l == "useradd -m azureuser"));
    assert_eq!(
        v.read("var/lib/waagent/provisioned"),
        "e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e"
    );
}

#[test]
fn lib_dir_that_cannot_be_written_fails_safe() {
    // Lib.Dir itself unusable: stop (exit 1) before touching anything.
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    write(&v.path("var/lib/not-a-dir"), "");
    v.config.lib_dir = v.path("var/lib/not-a-dir");
    let mut d = v.daemon();
    assert!(matches!(d.step(State::Boot), State::Stopped(1)));

    // The journal cannot be written: fail before the first step.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    std::fs::create_dir_all(v.path("var/lib/waagent/waagent-rs.journal")).unwrap();
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Steady", 50);
    assert_eq!(&trace[trace.len() - 2..], ["Plan", "ReportFailed"]);
    assert!(!v.runner.lines().iter().any(|l| l.starts_with("useradd")));

    // `provisioned` cannot be written: everything is done, but Ready is
    // not claimed; the failure is reported instead.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    std::fs::create_dir_all(v.path("var/lib/waagent/provisioned")).unwrap();
    let mut d = v.daemon();
    let (trace, _) = step_until(&mut d, State::Boot, "Steady", 50);
    assert_eq!(
        &trace[trace.len() - 2..],
        ["MarkProvisioned", "ReportFailed"]
    );
    assert_eq!(
        health(&v.sim),
        ["NotReady/Provisioning", "NotReady/ProvisioningFailed"]
    );
}

#[test]
fn scvmm_media_hands_the_vm_over_and_the_daemon_exits() {
    let mut v = vm(None, ProvisioningAgent::Waagent);
    v.config.detect_scvmm_env = true;
    write(&v.path("dev/sr0"), "");
    let mp = v.path("mnt/cdrom/secure");
    // The recording runner does not mount: the media is already "there".
    write(&mp.join("linuxosconfiguration.xml"), "<LinuxProvisioning/>");
    let mut d = v.daemon();
    assert!(matches!(d.step(State::Boot), State::Stopped(0)));
    let m = mp.display();
    let lines = v.runner.lines();
    for want in [
        "modprobe ata_piix".to_string(),
        format!("mount -t udf,iso9660 -o ro /dev/sr0 {m}"),
        format!("/bin/bash {m}/install '-p {m}'"),
    ] {
        assert!(lines.contains(&want), "{want} not in {lines:#?}");
    }
    // VMM's agent gets five minutes before ours exits.
    assert_eq!(v.waits(), [300.0]);
    assert!(v.sim.requests().is_empty(), "the fabric is never asked");

    // Without VMM's marker, the drive is released and provisioning goes on.
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.config.detect_scvmm_env = true;
    write(&v.path("dev/sr0"), "");
    let mut d = v.daemon();
    assert_eq!(d.step(State::Boot).name(), "ReadMedia");
    let umount = format!("umount {}", v.path("mnt/cdrom/secure").display());
    assert!(
        v.runner.lines().contains(&umount),
        "{:#?}",
        v.runner.lines()
    );
}

#[test]
fn polls_at_the_initial_period_until_a_goal_state_is_handled() {
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.initial_goal_state_period = 2;
    v.config.goal_state_period = 10;
    let mut d = v.daemon();
    let (trace, state) = step_until(&mut d, State::Boot, "Steady", 10);
    assert_eq!(trace.last().map(String::as_str), Some("ReportReady"));
    v.clock.take_waits();
    let mut state = state;
    let mut names = Vec::new();
    for _ in 0..6 {
        state = d.step(state);
        names.push(state.name());
    }
    assert_eq!(
        names,
        [
            "Extension",
            "Steady",
            "Extension",
            "Steady",
            "Extension",
            "Steady"
        ]
    );
    assert_eq!(v.waits(), [2.0, 10.0, 10.0]);
    assert_eq!(v.sim.status_uploads().len(), 3);

    // Extensions.Enabled=n: the goal state every five minutes.
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.extensions_enabled = false;
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    v.clock.take_waits();
    let mut state = state;
    for _ in 0..4 {
        state = d.step(state);
    }
    assert_eq!(v.waits(), [300.0, 300.0]);
}

#[test]
fn rdma_is_set_up_from_a_fresh_shared_config_without_holding_up_the_loop() {
    let rdma_vm = || {
        let mut v = vm(None, ProvisioningAgent::Disabled);
        v.config.enable_rdma = true;
        let shared = Path::new(MANIFEST).join("test-data/wire/shared_config_rdma.xml");
        v.sim
            .override_document("sharedConfig", &std::fs::read_to_string(shared).unwrap());
        // An SR-IOV host (no Network Direct version in a KVP pool) whose
        // IP-over-IB interface is there before its InfiniBand device.
        write(&v.path("sys/class/net/eth0/address"), "00:0d:3a:11:22:33\n");
        write(
            &v.path("sys/class/net/ib0/address"),
            "00:00:10:29:fe:80:00:00:00:00:00:00:00:15:5d:33:ff:1d:00:00\n",
        );
        v
    };
    let fetches = |v: &Vm| v.sim.requests_to("sharedConfig").len();
    let assigned = |v: &Vm| {
        v.runner
            .lines()
            .contains(&"ip addr add 172.16.1.4/16 dev ib0".to_string())
    };

    let v = rdma_vm();
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    let before = fetches(&v);
    // First period: SharedConfig fetched again (forced), then waiting for
    // the device without waiting in place: the loop goes on to Extension.
    state = d.step(state);
    assert_eq!(state.name(), "Extension");
    assert_eq!(fetches(&v), before + 1);
    assert!(!assigned(&v));
    std::fs::create_dir_all(v.path("sys/class/infiniband/mlx5_ib0")).unwrap();
    for _ in 0..4 {
        state = d.step(state);
    }
    assert!(assigned(&v), "{:#?}", v.runner.lines());
    // Settled: later periods fetch nothing more for it and run nothing.
    let commands = v.runner.lines().len();
    for _ in 0..10 {
        state = d.step(state);
    }
    assert_eq!(fetches(&v), before + 1);
    let later: Vec<String> = v.runner.lines()[commands..]
        .iter()
        .filter(|l| l.starts_with("ip "))
        .cloned()
        .collect();
    assert!(later.is_empty(), "{later:?}");

    // The device never comes: after waagent's 120 s the set-up gives up,
    // and a device appearing later changes nothing.
    let v = rdma_vm();
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    let start = v.clock.elapsed();
    while v.clock.elapsed() < start + Duration::from_secs(180) {
        state = d.step(state);
    }
    std::fs::create_dir_all(v.path("sys/class/infiniband/mlx5_ib0")).unwrap();
    for _ in 0..10 {
        state = d.step(state);
    }
    assert!(!assigned(&v));
}

#[test]
fn firewall_rules_are_set_before_provisioning_and_put_back_on_their_period() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.config.enable_firewall = true;
    v.config.enable_firewall_period = 30;
    // systemd is running: the boot unit is written too.
    std::fs::create_dir_all(v.path("run/systemd/system")).unwrap();
    std::fs::create_dir_all(v.path("lib/systemd/system")).unwrap();
    let chain = crate::env::firewall::fake_iptables(&v.runner);
    let ip = v.sim.endpoint().host;
    let uid = nix::unistd::getuid().as_raw();
    let rules = [
        format!("-d {ip} -p tcp --destination-port 53 -j ACCEPT"),
        format!("-d {ip} -p tcp -m owner --uid-owner {uid} -j ACCEPT"),
        format!("-d {ip} -p tcp -m conntrack --ctstate INVALID,NEW -j DROP"),
    ];
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 100);

    // Set in Connect, once, before the first provisioning step (the listing
    // for the log runs only when a logger takes it).
    let lines = v.runner.lines();
    let first = lines
        .iter()
        .position(|l| l.starts_with("iptables"))
        .unwrap();
    let want: Vec<String> = [
        "iptables --version".to_string(),
        format!("iptables -w -t security -C OUTPUT -d {ip} -p tcp -m conntrack --ctstate INVALID,NEW -j ACCEPT"),
    ]
    .into_iter()
    .chain(rules.iter().map(|r| format!("iptables -w -t security -C OUTPUT {r}")))
    .chain(rules.iter().map(|r| format!("iptables -w -t security -A OUTPUT {r}")))
    .collect();
    assert_eq!(lines[first..first + want.len()], want[..]);
    let useradd = lines
        .iter()
        .position(|l| l == "useradd -m azureuser")
        .unwrap();
    assert!(first + want.len() < useradd, "{lines:#?}");
    assert_eq!(*chain.borrow(), rules);
    // … and the unit that sets them at boot, enabled.
    let unit = v.read("lib/systemd/system/waagent-network-setup.service");
    let exe = std::env::current_exe().unwrap();
    assert!(
        unit.contains(&format!(
            "\nExecStart={} -setup-firewall={ip}\n",
            exe.display()
        )),
        "{unit}"
    );
    assert!(lines.contains(&"systemctl enable waagent-network-setup.service".to_string()));
    let checks = |v: &Vm| {
        v.runner
            .lines()
            .iter()
            .filter(|l| l.starts_with("iptables -w -t security -C OUTPUT"))
            .count()
    };
    let setup_checks = checks(&v);
    v.clock.take_waits();

    let start = v.clock.elapsed();
    let mut run_for = |secs: u64, state: State| -> State {
        let mut state = state;
        while v.clock.elapsed() < start + Duration::from_secs(secs) {
            state = d.step(state);
        }
        state
    };
    // First poll (6 s): checked, complete, nothing changed.
    state = run_for(6, state);
    assert_eq!(checks(&v), setup_checks + 3);
    assert_eq!(*chain.borrow(), rules);

    // Someone deletes the DROP: not put back before the period (30 s) …
    chain.borrow_mut().pop();
    state = run_for(6 + 24, state);
    assert_eq!(checks(&v), setup_checks + 3, "not due before its period");
    assert_eq!(chain.borrow().len(), 2);
    // … then the incomplete set is removed and set again, in order.
    state = run_for(6 + 30, state);
    assert_eq!(*chain.borrow(), rules);

    // Everything flushed: all three back on the next period, not before.
    chain.borrow_mut().clear();
    state = run_for(6 + 54, state);
    assert!(chain.borrow().is_empty());
    run_for(6 + 60, state);
    assert_eq!(*chain.borrow(), rules);
    let appends = v
        .runner
        .lines()
        .iter()
        .filter(|l| l.starts_with("iptables -w -t security -A"))
        .count();
    assert_eq!(appends, 9, "set at Connect, repaired, set again");
    // The goal state was polled every 6 s in between: no other waits.
    let waits = v.waits();
    assert!(waits.iter().all(|w| *w == 6.0), "{waits:?}");

    // A reboot (the kernel forgot the rules): straight to Steady, where the
    // first monitor run sets them up.
    chain.borrow_mut().clear();
    let mut d = v.daemon();
    let (trace, state) = step_until(&mut d, State::Boot, "Steady", 10);
    assert_eq!(trace, ["Boot"]);
    assert!(chain.borrow().is_empty());
    d.step(state);
    assert_eq!(*chain.borrow(), rules);
}
