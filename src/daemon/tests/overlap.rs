//! The slow children on the way to Ready, overlapped: the transport key
//! (`openssl req`) from daemon start, the SSH host keys (`ssh-keygen`) from
//! the read of ovf-env.xml, each collected where its result is needed; the
//! DVD's mount while the goal state is fetched; failures reported
//! as before, and a daemon killed while they run resumes cleanly. The
//! recorder gives each child a duration on the virtual clock.

use std::cell::Cell;

use super::*;
use crate::config::SshHostKeyType;
use crate::os::Cmd;

const MS: Duration = Duration::from_millis(1);

fn is_transport(cmd: &Cmd) -> bool {
    cmd.program.ends_with("openssl") && cmd.argv().contains(&"req".to_string())
}

fn is_keygen(cmd: &Cmd, t: &str) -> bool {
    cmd.program == "ssh-keygen" && cmd.argv().contains(&t.to_string())
}

/// A VM that regenerates its host keys (`kind`), whose `openssl req` takes
/// `transport`, whose RSA `ssh-keygen` takes `rsa` of virtual time, and
/// whose sshd takes 30 ms to restart.
fn slow_vm(v: &mut Vm, kind: SshHostKeyType, transport: Duration, rsa: Duration) {
    v.config.regenerate_ssh_host_key_pair = true;
    v.config.ssh_host_key_pair_type = kind;
    v.runner.takes(v.clock.clone(), move |cmd| {
        if is_transport(cmd) {
            Some(transport)
        } else if is_keygen(cmd, "rsa") {
            Some(rsa)
        } else if cmd.display() == "service ssh restart" {
            Some(30 * MS)
        } else {
            None
        }
    });
}

fn lines_of(v: &Vm, start: &str) -> Vec<String> {
    v.runner
        .lines()
        .into_iter()
        .filter(|l| l.starts_with(start))
        .collect()
}

/// The working directories of host keys being made, in the VM's /etc/ssh.
fn host_key_work(v: &Vm) -> Vec<String> {
    std::fs::read_dir(v.path("etc/ssh"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".waagent-hostkeys."))
        .collect()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn keys_are_made_while_the_fabric_answers_and_collected_where_needed() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    slow_vm(&mut v, SshHostKeyType::Auto, 300 * MS, 800 * MS);
    let mut d = v.daemon();

    // Boot starts the transport key; ReadMedia (its mount done at once
    // here) the host keys; both before
    // the fabric is asked anything.
    let state = d.step(State::Boot);
    assert_eq!(state.name(), "ReadMedia");
    assert_eq!(lines_of(&v, "/usr/bin/openssl req").len(), 1);
    let state = d.step(state);
    assert_eq!(state.name(), "Connect");
    // RSA (two racing) and ECDSA by ssh-keygen; Ed25519 made in-process
    // already.
    let keygens = lines_of(&v, "ssh-keygen");
    assert_eq!(keygens.len(), 3, "{keygens:#?}");
    for (line, t) in keygens.iter().zip(["rsa", "rsa", "ecdsa"]) {
        assert!(
            line.starts_with(&format!(
                "ssh-keygen -N '' -q -t {t} -C root@web-01.contoso.internal -f "
            )),
            "{line}"
        );
    }
    assert!(v.sim.requests().is_empty(), "{:?}", v.sim.requests());
    // Nothing replaced yet: the image's key is still sshd's.
    assert_eq!(v.read("etc/ssh/ssh_host_rsa_key.pub"), IMAGE_HOST_KEY);
    assert_eq!(host_key_work(&v).len(), 1);

    // Connect fetches every document, then waits for the transport key
    // (exactly until its child exits) for the Certificates request.
    let state = d.step(state);
    assert_eq!(state.name(), "ReportStarting");
    assert_eq!(v.clock.elapsed(), 300 * MS);
    let targets: Vec<String> = v
        .sim
        .requests()
        .iter()
        .map(|r| r.request.target.clone())
        .collect();
    let certs = targets.iter().position(|t| t.contains("comp=certificates"));
    let ext = targets.iter().position(|t| t.contains("extensionsConfig"));
    assert!(ext < certs && certs.is_some(), "{targets:#?}");
    // ...with the certificate that child made.
    let pem = v.read("var/lib/waagent/TransportCert.pem");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let header = v
        .sim
        .requests_to("comp=certificates")
        .first()
        .and_then(|r| {
            r.request
                .header("x-ms-guest-agent-public-x509-cert")
                .map(String::from)
        });
    assert_eq!(header.as_deref(), Some(body.as_str()));
    assert_eq!(mode(&v.path("var/lib/waagent/TransportPrivate.pem")), 0o600);

    // The HostKeys step waits for the RSA key, then puts all three in place.
    let (trace, _) = step_until(&mut d, state, "Steady", 50);
    assert_eq!(
        trace.iter().filter(|s| *s == "Provision:HostKeys").count(),
        1,
        "{trace:?}"
    );
    assert_eq!(v.waits(), [0.3, 0.5, 0.03]);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    for t in ["rsa", "ecdsa", "ed25519"] {
        let key = v.path(&format!("etc/ssh/ssh_host_{t}_key"));
        assert_eq!(mode(&key), 0o600, "{t}");
        assert_eq!(mode(&key.with_extension("pub")), 0o644, "{t}");
    }
    let rsa = v.path("etc/ssh/ssh_host_rsa_key.pub");
    assert_ne!(v.read("etc/ssh/ssh_host_rsa_key.pub"), IMAGE_HOST_KEY);
    assert_eq!(v.sim.role_properties()[0].1, ssh_keygen_fingerprint(&rsa));
    assert!(host_key_work(&v).is_empty());
    assert_eq!(lines_of(&v, "/usr/bin/openssl req").len(), 1);
    assert_eq!(lines_of(&v, "ssh-keygen").len(), 3);

    // The timeline: the keys overlapped everything before them; sshd's
    // restart, from the end of HostKeys, the user's steps.
    assert_eq!(
        d.timeline.line("Ready", v.clock.now()),
        "timeline (ms since start): dvd 0-0, transport-key 0-300, goal-state 0-0, \
         host-keys 0-800, certificates 300-300, user 800-800, sshd 800-830, \
         report 830-830; Ready at 830"
    );
}

#[test]
fn without_certificates_ready_does_not_wait_for_the_transport_key() {
    let mut v = vm_with(Some(&inline_ovf()), ProvisioningAgent::Waagent, false);
    slow_vm(
        &mut v,
        SshHostKeyType::Ed25519,
        Duration::from_secs(100),
        Duration::ZERO,
    );
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 50);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    // Ready waited for sshd's restart, nothing else.
    assert_eq!(v.waits(), [0.03]);
    assert!(v.sim.requests_to("comp=certificates").is_empty());
    // Not wanted: the generator was stopped, nothing reached Lib.Dir.
    assert!(!v.path("var/lib/waagent/TransportCert.pem").exists());
    assert!(!d.client.as_mut().unwrap().poll_transport());
    assert_eq!(
        d.timeline.line("Ready", v.clock.now()),
        "timeline (ms since start): dvd 0-0, goal-state 0-0, user 0-0, host-keys 0-0, \
         sshd 0-30, report 30-30; Ready at 30"
    );
    assert_eq!(
        v.read("etc/ssh/ssh_host_ed25519_key.pub")
            .split_whitespace()
            .next(),
        Some("ssh-ed25519")
    );

    // Nor later, when it would have finished: the steady state makes none
    // while no goal state has Certificates, and nothing was started again.
    step_for(&v, &mut d, state, Duration::ZERO, 110);
    assert!(!v.path("var/lib/waagent/TransportCert.pem").exists());
    assert!(!v.path("var/lib/waagent/TransportPrivate.pem").exists());
    assert_eq!(lines_of(&v, "/usr/bin/openssl req").len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(v.path("var/lib/waagent"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("Transport") || n.starts_with(".waagent-crypto."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_failed_or_hung_transport_child_is_reported_and_made_again() {
    // Failed, with three primes and then with two: the error names the
    // last command; Connect backs off and the next attempt makes the key
    // again.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    for _ in 0..2 {
        v.runner.push(
            "/usr/bin/openssl",
            Output::failed(1, "req: Can't open \"TransportPrivate.pem\" for writing"),
        );
    }
    let mut d = v.daemon();
    let state = d.step(State::Boot);
    let state = d.step(state);
    assert_eq!(state.name(), "Connect");
    let e = d.connect().unwrap_err();
    let req = &lines_of(&v, "/usr/bin/openssl req")[1];
    assert!(!req.contains("rsa_keygen_primes"), "{req}");
    assert_eq!(
        e,
        NotConnected::Failed(format!(
            "TransportCert: cannot generate the transport certificate: `{req}` failed with \
             exit code 1: req: Can't open \"TransportPrivate.pem\" for writing"
        ))
    );
    assert!(v.sim.requests_to("comp=certificates").is_empty());
    let (trace, _) = step_until(&mut d, state, "Steady", 50);
    assert_eq!(trace[..2], ["Connect", "ReportStarting"]);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    assert_eq!(lines_of(&v, "/usr/bin/openssl req").len(), 3);

    // Hung: killed at its deadline (the runner's two minutes), reported,
    // made again after Connect's back-off.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    let first = Rc::new(Cell::new(true));
    v.runner.takes(v.clock.clone(), move |cmd| {
        (is_transport(cmd) && first.replace(false)).then_some(Duration::from_secs(300))
    });
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Steady");
    assert_eq!(
        trace[..5],
        ["Boot", "ReadMedia", "Connect", "Connect", "ReportStarting"]
    );
    assert_eq!(v.waits(), [120.0, 1.0]);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    assert_eq!(lines_of(&v, "/usr/bin/openssl req").len(), 2);
}

#[test]
fn a_failed_ssh_keygen_fails_provisioning_and_keeps_the_old_keys() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    slow_vm(&mut v, SshHostKeyType::Auto, Duration::ZERO, 500 * MS);
    // Both RSA racers fail: one failing is not enough, the other's key
    // would do.
    for _ in 0..2 {
        v.runner
            .push("ssh-keygen", Output::failed(1, "rsa: out of entropy"));
    }
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Steady");
    assert_eq!(
        &trace[trace.len() - 3..],
        ["Provision:HostKeys", "ReportFailed", "Steady"]
    );
    let rsa = &lines_of(&v, "ssh-keygen -N '' -q -t rsa")[0];
    assert_eq!(
        v.sim.health_reports()[1].description.as_deref(),
        Some(
            format!(
                "regenerating SSH host keys: `{rsa}` failed with exit code 1: rsa: out of entropy"
            )
            .as_str()
        )
    );
    assert_eq!(v.read("etc/ssh/ssh_host_rsa_key.pub"), IMAGE_HOST_KEY);
    assert!(!v.path("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(host_key_work(&v).is_empty());
    assert_eq!(
        d.timeline.line("ProvisioningFailed", v.clock.now()),
        "timeline (ms since start): dvd 0-0, transport-key 0-0, goal-state 0-0, \
         certificates 0-0, host-keys 0-500, report 500-500; ProvisioningFailed at 500"
    );
}

#[test]
fn killed_while_keys_are_made_the_next_start_makes_them_once_and_reports_ready_once() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    slow_vm(&mut v, SshHostKeyType::Auto, 200 * MS, 800 * MS);
    // SIGKILLed on entering HostKeys: the RSA ssh-keygen is still running
    // and its working directory stays behind (nothing is dropped).
    let mut d = v.daemon();
    v.run_until(&mut d, "Provision:HostKeys");
    std::mem::forget(d);
    let stale = host_key_work(&v);
    assert_eq!(stale.len(), 1);
    assert_eq!(v.read("etc/ssh/ssh_host_rsa_key.pub"), IMAGE_HOST_KEY);

    // The next start throws that away and makes its own keys, once.
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(
        health(&v.sim),
        ["NotReady/Provisioning", "NotReady/Provisioning", "Ready"]
    );
    let work = host_key_work(&v);
    assert!(work.is_empty(), "{work:?}");
    // Three ssh-keygen (two RSA racing, ECDSA) by each start.
    assert_eq!(lines_of(&v, "ssh-keygen").len(), 6);
    let rsa = v.path("etc/ssh/ssh_host_rsa_key.pub");
    let fingerprint = ssh_keygen_fingerprint(&rsa);
    assert_eq!(v.sim.role_properties()[0].1, fingerprint);

    // Killed once the keys were in place (HostKeys journalled): the next
    // start makes none and reports the same fingerprint.
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    slow_vm(&mut v, SshHostKeyType::Auto, 200 * MS, 800 * MS);
    let mut d = v.daemon();
    v.run_until(&mut d, "Provision:User");
    std::mem::forget(d);
    let installed = v.read("etc/ssh/ssh_host_rsa_key.pub");
    let installed_ed25519 = v.read("etc/ssh/ssh_host_ed25519_key");
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    // The first start's three children (two RSA racing, ECDSA); none by
    // the second, and no new in-process Ed25519 key either.
    assert_eq!(lines_of(&v, "ssh-keygen").len(), 3);
    assert_eq!(v.read("etc/ssh/ssh_host_rsa_key.pub"), installed);
    assert_eq!(v.read("etc/ssh/ssh_host_ed25519_key"), installed_ed25519);
    let rsa = v.path("etc/ssh/ssh_host_rsa_key.pub");
    assert_eq!(v.sim.role_properties()[0].1, ssh_keygen_fingerprint(&rsa));
    assert_eq!(
        health(&v.sim),
        ["NotReady/Provisioning", "NotReady/Provisioning", "Ready"]
    );
    assert!(host_key_work(&v).is_empty());
}

#[test]
fn the_fingerprint_is_what_ssh_keygen_lf_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.ssh_dir = dir.path().to_path_buf();
    for (t, kind) in [
        ("rsa", SshHostKeyType::Rsa),
        ("ecdsa", SshHostKeyType::Ecdsa),
        ("ed25519", SshHostKeyType::Ed25519),
    ] {
        let file = dir.path().join(format!("ssh_host_{t}_key"));
        let mut cmd = Cmd::new("ssh-keygen")
            .args(["-N", "", "-q", "-t", t, "-f"])
            .arg(file.to_string_lossy());
        if t == "rsa" {
            cmd = cmd.args(["-b", "1024"]);
        }
        SystemRunner.run_ok(&cmd).unwrap();
        config.ssh_host_key_pair_type = kind;
        assert_eq!(
            host_key_fingerprint(&config).unwrap(),
            ssh_keygen_fingerprint(&file.with_extension("pub")),
            "{t}"
        );
    }
    // auto reports the RSA key.
    config.ssh_host_key_pair_type = SshHostKeyType::Auto;
    assert_eq!(
        host_key_fingerprint(&config).unwrap(),
        ssh_keygen_fingerprint(&dir.path().join("ssh_host_rsa_key.pub"))
    );
    std::fs::write(dir.path().join("ssh_host_rsa_key.pub"), "not a key\n").unwrap();
    let e = host_key_fingerprint(&config).unwrap_err();
    assert!(
        e.ends_with("ssh_host_rsa_key.pub holds no OpenSSH public key"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("ssh_host_rsa_key.pub")).unwrap();
    let e = host_key_fingerprint(&config).unwrap_err();
    assert!(e.ends_with("ssh_host_rsa_key.pub does not exist"), "{e}");
}

#[test]
fn the_media_is_unmounted_in_the_background_and_ejected_once_that_is_over() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.config.regenerate_ssh_host_key_pair = true;
    // RSA: a key made by a child (Ed25519's needs none).
    v.config.ssh_host_key_pair_type = SshHostKeyType::Rsa;
    v.runner.takes(v.clock.clone(), |cmd| {
        (cmd.program == "umount").then_some(40 * MS)
    });
    let mut d = v.daemon();
    let state = d.step(State::Boot);
    let state = d.step(state);
    assert_eq!(state.name(), "Connect");
    // ReadMedia (an instant mount) did not wait for the umount, and the
    // keys started after it.
    assert_eq!(v.clock.elapsed(), Duration::ZERO);
    let lines = v.runner.lines();
    let at = |start: &str| lines.iter().position(|l| l.starts_with(start));
    assert!(at("umount ") < at("ssh-keygen "), "{lines:#?}");
    assert!(at("ssh-keygen ").is_some());
    let (trace, _) = step_until(&mut d, state, "Steady", 50);
    assert!(trace.contains(&"MarkProvisioned".to_string()), "{trace:?}");
    // The eject waited exactly for the umount, at MarkProvisioned.
    assert_eq!(v.waits(), [0.04]);
    let lines = v.runner.lines();
    let eject = lines.iter().position(|l| l.starts_with("eject "));
    assert!(eject.is_some(), "{lines:#?}");
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
}

#[test]
fn the_goal_state_is_fetched_while_the_media_is_mounted() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.config.regenerate_ssh_host_key_pair = true;
    v.config.ssh_host_key_pair_type = SshHostKeyType::Rsa;
    v.runner.takes(v.clock.clone(), |cmd| {
        (cmd.program == "mount").then_some(40 * MS)
    });
    let mut d = v.daemon();
    let state = d.step(State::Boot);
    // ReadMedia starts the mount and goes on.
    let state = d.step(state);
    assert_eq!(state.name(), "Connect");
    assert_eq!(lines_of(&v, "mount ").len(), 1);
    assert!(lines_of(&v, "ssh-keygen").is_empty());
    // Connect has the goal state before the mount is over...
    let state = d.step(state);
    assert_eq!(state.name(), "AwaitMedia");
    assert_eq!(v.clock.elapsed(), Duration::ZERO);
    assert_eq!(v.sim.requests_to("comp=goalstate").len(), 1);
    assert!(health(&v.sim).is_empty());
    assert!(!v.path("var/lib/waagent/ovf-env.xml").exists());
    // ...and AwaitMedia waits exactly for it, then reads the document, starts
    // the host keys and goes on to report NotReady.
    let state = d.step(state);
    assert_eq!(state.name(), "AwaitMedia");
    assert_eq!(v.waits(), [0.04]);
    let state = d.step(state);
    assert_eq!(state.name(), "ReportStarting");
    assert_eq!(lines_of(&v, "umount ").len(), 1);
    // The RSA key's two racing generators.
    assert_eq!(lines_of(&v, "ssh-keygen").len(), 2);
    assert_eq!(mode(&v.path("var/lib/waagent/ovf-env.xml")), 0o600);
    let (_, _) = step_until(&mut d, state, "Steady", 50);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    assert_eq!(
        d.timeline.line("Ready", v.clock.now()),
        "timeline (ms since start): dvd 0-40, transport-key 0-0, goal-state 0-0, \
         certificates 0-0, user 40-40, host-keys 40-40, sshd 40-40, report 40-40; \
         Ready at 40"
    );
}

#[test]
fn a_media_that_fails_to_mount_is_reported_once_the_fabric_answers() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    v.runner.respond(|c| {
        (c.program == "mount").then(|| Ok(Output::failed(32, "mount: no medium found")))
    });
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Steady");
    let awaits = trace.iter().filter(|s| *s == "AwaitMedia").count();
    assert_eq!(trace[..3], ["Boot", "ReadMedia", "Connect"]);
    assert_eq!(trace[3..3 + awaits], vec!["AwaitMedia"; awaits]);
    assert_eq!(trace[3 + awaits..], ["ReportFailed", "Steady"]);
    // The goal state was fetched at once; the pauses between the five
    // mounts (5 s each, as waagent's) were waited in AwaitMedia, a second
    // at a time.
    assert_eq!(v.sim.requests_to("comp=goalstate").len(), 1);
    assert_eq!(v.waits(), [1.0; 20]);
    let failed = &v.sim.health_reports()[0];
    assert_eq!(failed.sub_status.as_deref(), Some("ProvisioningFailed"));
    assert!(
        failed
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("provisioning media: cannot mount /dev/sr0: `mount ")),
        "{failed:?}"
    );
    assert_eq!(lines_of(&v, "mount ").len(), 5);
}

#[test]
fn with_certificates_the_host_keys_start_when_the_media_is_read_not_after_the_transport_key() {
    let mut v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    slow_vm(&mut v, SshHostKeyType::Auto, 300 * MS, 800 * MS);
    let slow = v.clock.clone();
    // slow_vm's durations, and the mount's 40 ms.
    v.runner
        .takes(slow, |cmd| (cmd.program == "mount").then_some(40 * MS));
    let mut d = v.daemon();
    let state = d.step(State::Boot);
    let state = d.step(state);
    // The goal state has Certificates and the transport key is 300 ms
    // away: Connect does not wait for it while the mount runs, but for the
    // mount, then reads the document and starts the host keys.
    let state = d.step(state);
    assert_eq!(state.name(), "Connect");
    assert_eq!(v.waits(), [0.04]);
    assert_eq!(v.sim.requests_to("comp=goalstate").len(), 1);
    assert!(v.sim.requests_to("comp=certificates").is_empty());
    assert_eq!(lines_of(&v, "ssh-keygen").len(), 3);
    assert!(!v.path("var/lib/waagent/GoalState.1.xml").exists());
    // Now it waits for the transport key and finishes the fetch: only the
    // Certificates are asked for, the rest was in hand.
    let state = d.step(state);
    assert_eq!(state.name(), "ReportStarting");
    assert_eq!(v.waits(), [0.26]);
    assert_eq!(v.sim.requests_to("comp=certificates").len(), 1);
    assert_eq!(v.sim.requests_to("comp=goalstate").len(), 1);
    assert_eq!(v.sim.requests_to("comp=versions").len(), 1);
    assert_eq!(v.read("var/lib/waagent/Incarnation"), "1");
    step_until(&mut d, state, "Steady", 50);
    assert_eq!(health(&v.sim), ["NotReady/Provisioning", "Ready"]);
    // The RSA key, started at 40 ms, is the last child: Ready at 840 ms
    // and sshd's 30 (not at 300 + 800 + 30).
    assert_eq!(
        d.timeline.line("Ready", v.clock.now()),
        "timeline (ms since start): dvd 0-40, transport-key 0-300, goal-state 0-0, \
         host-keys 40-840, certificates 300-300, user 840-840, sshd 840-870, \
         report 870-870; Ready at 870"
    );
}
