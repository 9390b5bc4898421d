//! The state machine driven step by step, in process: a scripted fabric (the
//! simulator on loopback, with faults), a recording command runner over a
//! temporary root, and a virtual clock under the production timings, so every
//! transition and timer is checked without root, without the platform and
//! without sleeping for real time: the clock moves only when the daemon
//! waits, and the tests assert on every wait.
//!
//! `boot.rs`: from Boot to the first report — provisioning, cloud-init,
//! failures, restarts, SCVMM. `steady.rs`: the steady state — monitors,
//! poll periods, SIGTERM, RDMA, the firewall.

mod boot;
mod overlap;
mod steady;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::clock::VirtualClock;
use crate::config::{Config, ProvisioningAgent};
use crate::os::Flavour;
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

/// The UID the fixture's useradd gives: a normal user's (1000) when the
/// tests run as root, else our own, so chown works unprivileged.
fn test_uid() -> u32 {
    match nix::unistd::getuid().as_raw() {
        0 => 1000,
        uid => uid,
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A VM whose DVD holds `ovf` (none: no drive) and a fabric serving the
/// test tenant certificate.
fn vm(ovf: Option<&str>, agent: ProvisioningAgent) -> Vm {
    vm_with(ovf, agent, true)
}

/// Like [`vm`]; without `certificates` the goal state has no Certificates.
fn vm_with(ovf: Option<&str>, agent: ProvisioningAgent, certificates: bool) -> Vm {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let certs = Path::new(MANIFEST).join("test-data/certs");
    let tenant = TenantCert {
        cert_pem: std::fs::read_to_string(certs.join("tenant.crt")).unwrap(),
        key_pem: Some(std::fs::read_to_string(certs.join("tenant.key")).unwrap()),
    };
    let imds_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGltZHNrZXk= imds@azure".to_string();
    let sim = FabricSim::start(SimConfig {
        tenant_certs: if certificates {
            vec![tenant]
        } else {
            Vec::new()
        },
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
    write(&r.join("etc/ssh/ssh_host_rsa_key.pub"), IMAGE_HOST_KEY);
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
            let (uid, gid) = (test_uid(), test_uid());
            let line = format!("{name}:x:{uid}:{gid}::{}/{name}:/bin/sh\n", home.display());
            let mut text = std::fs::read_to_string(&passwd).unwrap_or_default();
            text.push_str(&line);
            std::fs::write(&passwd, text).unwrap();
            std::fs::create_dir_all(home.join(&name)).unwrap();
            Some(Ok(Output::default()))
        }
        "ssh-keygen" => keygen(cmd),
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

/// The image's RSA host key (a real key: its fingerprint is checked
/// against ssh-keygen's).
const IMAGE_HOST_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCpyPldqCZ6czOpRVwmL8Tp52IR4Uxlq15rikZ1xH1cYOdX1olyeCp8RM3Xkgl45kqWEkCrp1c22t5YIgpxw79s++PxGR/qsQboS7WBenihv3IqjzKhYaDx64t6gzU9E+P6uzhbE/QJ+JYpOA12b20io9E7Enkwn2IZIBp4W11rPQ== root@image\n";

/// `ssh-keygen -N '' -q -t TYPE -C COMMENT -f FILE` as the recorder plays
/// it: the real one, RSA keys made 1024 bits long to be quick.
fn keygen(cmd: &crate::os::Cmd) -> Option<Result<Output, crate::os::RunError>> {
    let mut real = cmd.clone();
    if cmd.argv().contains(&"rsa".to_string()) {
        real = real.args(["-b", "1024"]);
    }
    Some(SystemRunner.run(&real))
}

/// The second field of `ssh-keygen -lf public`, colons removed: the
/// fingerprint as waagent reports it, from the real ssh-keygen.
fn ssh_keygen_fingerprint(public: &Path) -> String {
    let out = SystemRunner
        .run_ok(
            &crate::os::Cmd::new("ssh-keygen")
                .arg("-lf")
                .arg(public.to_string_lossy()),
        )
        .expect("ssh-keygen -lf");
    out.stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .replace(':', "")
}

/// test-data/ovf/full.xml with every key path under `$HOME` (the fixture's
/// home directory is not /home).
fn full_ovf() -> String {
    std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml"))
        .unwrap()
        .replace("<Path>/home/azureuser/", "<Path>$HOME/azureuser/")
}

/// full.xml with only its inline SSH key: no key by fingerprint, no key
/// pair, so no certificate is needed.
fn inline_ovf() -> String {
    let full = full_ovf();
    let cut = |text: &str, from: &str, to: &str| -> String {
        let a = text.find(from).unwrap();
        let b = a + text[a..].find(to).unwrap() + to.len();
        format!("{}{}", &text[..a], &text[b..])
    };
    let one = cut(
        &full,
        "<PublicKey>\n            <Fingerprint>",
        "</PublicKey>",
    );
    let inline = cut(&one, "<KeyPairs>", "</KeyPairs>");
    assert!(!inline.contains("Fingerprint"), "{inline}");
    inline
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
        .map(|s| format!("Provision:{}", s.key()))
        .collect()
}

/// Steps `state` until `secs` of virtual time have passed since `start`,
/// so what the monitors due by then did is visible; the state reached.
fn step_for(v: &Vm, d: &mut Daemon, mut state: State, start: Duration, secs: u64) -> State {
    while v.clock.elapsed() < start + Duration::from_secs(secs) {
        state = d.step(state);
    }
    state
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
