//! The state machine driven step by step, in process: a scripted fabric (the
//! simulator on loopback, with faults), a recording command runner over a
//! temporary root, and millisecond timings, so every transition is checked
//! without root, without the platform and without sleeping for real time.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::config::{Config, ProvisioningAgent};
use crate::os::{for_env, CommandRunner, Distro, Env, Output, RecordingRunner, SystemRunner};
use crate::sim::certs::TenantCert;
use crate::sim::{FabricSim, Fault, SimConfig};
use crate::wire::client::RetryPolicy;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const PASSWORD: &str = "Sup3r$ecret P@ss & más <x>";

struct Vm {
    root: tempfile::TempDir,
    runner: Rc<RecordingRunner>,
    sim: FabricSim,
    config: Config,
}

impl Vm {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn daemon(&self) -> Daemon {
        let env = Env {
            root: self.root.path().to_path_buf(),
            runner: self.runner.clone(),
            config: self.config.clone(),
            distro: Distro {
                id: "debian".into(),
                version: "12".into(),
                flavour: crate::os::Flavour::Debian,
            },
        };
        let fast = RetryPolicy {
            attempts: 1,
            delay: Duration::from_millis(1),
            throttled_attempts: 1,
            throttled_delay: Duration::from_millis(1),
            deadline: Duration::from_secs(5),
            no_role_instance_delay: Duration::from_millis(1),
        };
        let timing = Timing {
            media: media::MountRetry {
                tries: 1,
                delay: Duration::from_millis(1),
            },
            connect_delay: Duration::from_millis(1),
            client: ClientOptions {
                timeout_secs: 2,
                retry: fast.clone(),
                health_retry: fast,
                storage_proxy: None,
            },
            imds_tries: 1,
            imds_timeout_secs: 2,
            poll_period: Some(Duration::from_millis(1)),
            cloud_init_poll: Duration::from_millis(1),
            cloud_init_wait: Duration::from_secs(5),
        };
        Daemon::new(self.config.clone(), for_env(env), timing)
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
    // The fabric is down for the first two attempts.
    v.sim
        .inject("comp=versions", [Fault::Reset, Fault::Status(503)]);
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Extension");
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

    // Reboot: straight to Steady, nothing reported, no command run.
    let before = v.runner.calls().len();
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Extension"),
        ["Boot", "Steady", "Extension"]
    );
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    let after: Vec<String> = v.runner.lines()[before..].to_vec();
    assert!(after.is_empty(), "{after:?}");
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
