//! From Boot to the first report: provisioning, cloud-init, failures,
//! restarts and SCVMM, on the virtual clock.

use super::*;

#[test]
fn first_boot_through_every_provisioning_transition() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    // The fabric is down for Connect's first two attempts: each is the
    // client's six tries of the Versions request.
    v.sim.inject("comp=versions", vec![Fault::Reset; 12]);
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Extension");
    // The client's retries (1 and 2 s, then 1 s Fibonacci), Connect's
    // back-off (1 s, 2 s, then from 10 s doubled), nothing while
    // provisioning, and a wait of nothing between Ready and the extensions.
    let client = [1.0, 2.0, 5.0, 8.0, 13.0];
    let want: Vec<f64> = [&client[..], &[1.0], &client[..], &[2.0, 0.0]].concat();
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
    let host_key = v.path("etc/ssh/ssh_host_rsa_key.pub");
    assert_eq!(
        v.sim.role_properties()[0].1,
        ssh_keygen_fingerprint(&host_key)
    );
    let lines = v.runner.lines();
    let mount = format!(
        "mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {}",
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
    // system change, no command run (the DHCP-client monitor reads /proc).
    let before = v.runner.calls().len();
    let mut d = v.daemon();
    assert_eq!(
        v.run_until(&mut d, "Extension"),
        ["Boot", "Steady", "Extension"]
    );
    assert_eq!(v.waits(), [0.0]);
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

/// The texts systemd shows (`STATUS=`, sent when they change) on the way
/// from Boot to Steady: one per state, one per provisioning step.
fn statuses_until_steady(d: &mut Daemon) -> (Vec<String>, State) {
    let mut state = State::Boot;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..200 {
        let text = d.status(&state);
        if seen.last() != Some(&text) {
            seen.push(text);
        }
        if state.name() == "Steady" {
            return (seen, state);
        }
        state = d.step(state);
    }
    panic!("never reached Steady: {seen:?}");
}

#[test]
fn each_state_and_step_has_its_status_text() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    let (seen, _) = statuses_until_steady(&mut d);
    let mut want: Vec<String> = [
        "Boot: preparing Lib.Dir and the VM's environment",
        "Provisioning: reading ovf-env.xml from the provisioning media",
        "Connect: fetching the goal state from the WireServer",
        "Provisioning: reporting NotReady (Provisioning)",
        "Provisioning: checking ovf-env.xml and the goal state",
    ]
    .map(String::from)
    .to_vec();
    want.extend(
        Step::ALL
            .iter()
            .map(|s| format!("Provisioning: {}", s.describe())),
    );
    want.extend(
        [
            "Provisioning: marking the VM provisioned",
            "Provisioning: reporting Ready",
            "Steady: polling the goal state",
        ]
        .map(String::from),
    );
    assert_eq!(seen, want);
}

#[test]
fn a_failed_provisioning_stays_in_the_steady_status() {
    let bad = full_ovf().replace(
        "<UserName>azureuser</UserName>",
        "<UserName>us;er</UserName>",
    );
    let v = vm(Some(&bad), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    let (seen, steady) = statuses_until_steady(&mut d);
    let failed = seen
        .iter()
        .find(|t| t.starts_with("Provisioning failed: "))
        .expect("a failure status");
    assert!(
        failed.contains("\"us;er\" is not a valid user name"),
        "{failed}"
    );
    let reason = failed.strip_prefix("Provisioning failed: ").unwrap();
    assert_eq!(
        d.status(&steady),
        format!("Steady: polling the goal state; provisioning failed: {reason}")
    );
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
    let waits: Vec<u64> = (0..8)
        .map(|a| connect_backoff(Duration::from_secs(10), a).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 10, 20, 40, 60, 60, 60]);
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
    // With it the host key's fingerprint, as the first time (the fault
    // matrix's SIGKILL at ReportReady found it missing).
    let props = v.sim.role_properties();
    assert_eq!(props.len(), 1, "{props:?}");
    assert_eq!(
        props[0].1,
        ssh_keygen_fingerprint(&v.path("etc/ssh/ssh_host_rsa_key.pub"))
    );

    // Another instance id: a captured image, provisioned afresh, and the
    // previous instance's goal-state files are forgotten.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    write(
        &v.path("var/lib/waagent/provisioned"),
        "00000000-1111-2222-3333-444444444444",
    );
    // What the image's instance left: its goal state, a tenant key, the
    // ProvisionGuestAgent=false it was given, its journal.
    let old = [
        "GoalState.7.xml",
        "0123456789ABCDEF0123456789ABCDEF01234567.prv",
        "disable_agent",
        "waagent-rs.journal",
        "history/7/GoalState.xml",
    ];
    for f in old {
        write(&v.path(&format!("var/lib/waagent/{f}")), "old instance");
    }
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Extension");
    assert_eq!(trace[..2], ["Boot", "ReadMedia"]);
    for f in old {
        let text = v.read(&format!("var/lib/waagent/{f}"));
        assert!(!text.contains("old instance"), "{f} survived");
    }
    // Without the image's disable_agent, this VM's status is uploaded.
    assert_eq!(v.sim.status_uploads().len(), 1);
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
        format!("mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {m}"),
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
fn sigterm_while_waiting_for_cloud_init_stops_without_a_report() {
    // Waiting for ovf-env.xml.
    let v = vm(None, ProvisioningAgent::CloudInit);
    v.clock.stop_at(Duration::from_secs(5));
    let mut d = v.daemon();
    let (trace, state) = step_until(&mut d, State::Boot, "Stopped", 20);
    assert!(matches!(state, State::Stopped(0)));
    assert_eq!(trace.len(), 1 + 5, "{trace:?}");
    assert_eq!(v.clock.elapsed(), Duration::from_secs(5));

    // Waiting for its SSH host key.
    let v = vm(None, ProvisioningAgent::CloudInit);
    write(&v.path("var/lib/waagent/ovf-env.xml"), &full_ovf());
    v.runner
        .respond(|c| (c.program == "ssh-keygen").then(|| Ok(Output::failed(1, "no key"))));
    std::fs::remove_file(v.path("etc/ssh/ssh_host_rsa_key.pub")).unwrap();
    v.clock.stop_at(Duration::from_secs(5));
    let mut d = v.daemon();
    let (trace, state) = step_until(&mut d, State::Boot, "Stopped", 20);
    assert!(matches!(state, State::Stopped(0)));
    assert_eq!(trace.last().map(String::as_str), Some("WaitForHostKey"));
    assert_eq!(
        health(&v.sim),
        ["NotReady/Provisioning"],
        "no failure claimed"
    );
}

#[test]
fn accounts_outside_the_normal_uid_range_are_refused_before_any_change() {
    // nobody (65534) with a sudoers line would make every daemon that runs
    // as nobody root.
    let ovf = full_ovf()
        .replace(
            "<UserName>azureuser</UserName>",
            "<UserName>nobody</UserName>",
        )
        .replace("$HOME/azureuser/", "$HOME/nobody/");
    let v = vm(Some(&ovf), ProvisioningAgent::Waagent);
    let passwd = v.read("etc/passwd") + "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
    write(&v.path("etc/passwd"), &passwd);
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Steady");
    assert!(
        !trace.iter().any(|s| s.starts_with("Provision:")),
        "{trace:?}"
    );
    assert_eq!(
        v.sim.health_reports()[1].description.as_deref(),
        Some("refusing to provision the system account nobody (uid 65534, outside the normal users' 1000-60000); Provisioning.AllowResetSysUser=y allows it")
    );
    assert!(!v.path("etc/sudoers.d/waagent").exists());
    assert!(v.runner.lines().iter().all(|l| !l.starts_with("chpasswd")));

    // A systemd dynamic user, in no passwd file: refused too.
    let ovf = full_ovf()
        .replace("<UserName>azureuser</UserName>", "<UserName>svc</UserName>")
        .replace("$HOME/azureuser/", "$HOME/svc/");
    let v = vm(Some(&ovf), ProvisioningAgent::Waagent);
    std::fs::create_dir_all(v.path("run/systemd/dynamic-uid")).unwrap();
    std::os::unix::fs::symlink("61184", v.path("run/systemd/dynamic-uid/direct:svc")).unwrap();
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(
        v.sim.health_reports()[1].description.as_deref(),
        Some("refusing to provision svc: it is a systemd dynamic user (a service's account)")
    );
    assert!(v.runner.lines().iter().all(|l| !l.starts_with("useradd")));
}

#[test]
fn the_journal_records_an_account_as_created_only_when_useradd_made_it() {
    let uid = test_uid();
    let created = |v: &Vm| -> serde_json::Value {
        let j: serde_json::Value =
            serde_json::from_str(&v.read("var/lib/waagent/waagent-rs.journal")).unwrap();
        j["createdUsers"].clone()
    };
    // Made by provisioning: recorded with its UID and home, and kept after
    // provisioning finished.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(
        created(&v),
        serde_json::json!([{"name": "azureuser", "uid": uid, "home": v.path("home/azureuser").to_string_lossy()}])
    );

    // The image already had it: adopted, not recorded.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    let passwd = v.read("etc/passwd") + &format!("azureuser:x:{uid}:{uid}::/srv/shared:/bin/sh\n");
    write(&v.path("etc/passwd"), &passwd);
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert!(v.runner.lines().iter().all(|l| !l.starts_with("useradd")));
    assert_eq!(created(&v), serde_json::json!([]));

    // Killed after useradd, before the step was journalled: the restart
    // finds the account, and the intent says it is ours.
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Provision", 20);
    let (_, state) = step_until(&mut d, state, "Provision", 1);
    let State::Provision { plan, goal, .. } = state else {
        unreachable!()
    };
    let mut j = Journal::open(&v.path("var/lib/waagent"));
    j.begin_user_creation("azureuser").unwrap();
    v.runner
        .run(&crate::os::Cmd::new("useradd").arg("-m").arg("azureuser"))
        .unwrap();
    drop((plan, goal));
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(created(&v)[0]["name"], "azureuser");
    assert_eq!(
        v.runner
            .lines()
            .iter()
            .filter(|l| l.starts_with("useradd"))
            .count(),
        1
    );
}

#[test]
fn the_media_is_ejected_only_once_provisioned_is_written_so_a_restart_can_read_it() {
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    // eject really takes the media away, and notes whether `provisioned`
    // was on disk by then.
    let (dvd, provisioned) = (
        v.path("mnt/cdrom/secure/ovf-env.xml"),
        v.path("var/lib/waagent/provisioned"),
    );
    let ejected_after_provisioned = Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = ejected_after_provisioned.clone();
    v.runner.respond(move |cmd| {
        (cmd.program == "eject").then(|| {
            seen.borrow_mut().push(provisioned.exists());
            let _ = std::fs::remove_file(&dvd);
            Ok(Output::default())
        })
    });
    // Killed in the middle of provisioning, after the media was read.
    let mut d = v.daemon();
    let trace = v.run_until(&mut d, "Provision:Sudoers");
    assert!(trace.contains(&"ReadMedia".to_string()));
    drop(d);
    assert!(
        v.path("mnt/cdrom/secure/ovf-env.xml").exists(),
        "ejected too early"
    );

    // The next start reads it again and finishes.
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(
        health(&v.sim).last().map(String::as_str),
        Some("Ready"),
        "{:?}",
        v.sim.health_reports().last()
    );
    assert_eq!(*ejected_after_provisioned.borrow(), [true]);
    assert!(!v.path("mnt/cdrom/secure/ovf-env.xml").exists());
}

#[test]
fn boot_decides_from_what_it_read() {
    use BootDecision::*;
    let this = Some("e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e");
    let other = Some("00000000-1111-2222-3333-444444444444");
    // mode, <lib>/provisioned, this VM's instance id, Ready journalled → decision
    let rows = [
        (Mode::Disabled, None, this, false, ReportOnly),
        (Mode::Disabled, this, this, true, ReportOnly),
        (
            Mode::Waagent,
            None,
            this,
            false,
            Provision { captured: false },
        ),
        (
            Mode::CloudInit,
            None,
            this,
            true,
            Provision { captured: false },
        ),
        (Mode::Waagent, this, this, true, AlreadyDone),
        (Mode::Waagent, this, this, false, ReportReady),
        // waagent 2.2.5 wrote an empty file; an unknown id cannot differ.
        (Mode::Waagent, Some(""), this, true, AlreadyDone),
        (Mode::Waagent, this, None, false, ReportReady),
        // A captured image, whatever the journal says.
        (
            Mode::Waagent,
            other,
            this,
            true,
            Provision { captured: true },
        ),
        (
            Mode::CloudInit,
            other,
            this,
            false,
            Provision { captured: true },
        ),
    ];
    for (mode, provisioned, instance, ready, want) in rows {
        assert_eq!(
            boot_decision(mode, provisioned, instance, ready),
            want,
            "{mode:?} {provisioned:?} {instance:?} {ready}"
        );
    }
}

#[test]
fn a_journal_written_by_the_previous_format_resumes_without_redoing_its_steps() {
    // The keys are part of the on-disk format: never to change (the order
    // the steps run in may).
    let keys = [
        (Step::HostName, "HostName"),
        (Step::User, "User"),
        (Step::Password, "Password"),
        (Step::Sudoers, "Sudoers"),
        (Step::SshdConfig, "SshdConfig"),
        (Step::PublicKeys, "PublicKeys"),
        (Step::KeyPairs, "KeyPairs"),
        (Step::CustomData, "CustomData"),
        (Step::RootPassword, "RootPassword"),
        (Step::HostKeys, "HostKeys"),
        (Step::RestartSshd, "RestartSshd"),
    ];
    for (step, key) in keys {
        assert_eq!(step.key(), key);
        assert_eq!(Step::ALL.iter().filter(|s| **s == step).count(), 1, "{key}");
    }
    let v = vm(Some(&full_ovf()), ProvisioningAgent::Waagent);
    // Exactly what e903d89 wrote after its first four steps.
    write(
        &v.path("var/lib/waagent/waagent-rs.journal"),
        r#"{"provisioning":"azureuser@web-01.contoso.internal","readyReported":null,"stepsDone":["HostName","User","Password","Sudoers"]}
"#,
    );
    let passwd = v.read("etc/passwd")
        + &format!(
            "azureuser:x:{uid}:{uid}::{}:/bin/sh\n",
            v.path("home/azureuser").display(),
            uid = test_uid()
        );
    write(&v.path("etc/passwd"), &passwd);
    std::fs::create_dir_all(v.path("home/azureuser")).unwrap();
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    assert_eq!(health(&v.sim).last().map(String::as_str), Some("Ready"));
    let lines = v.runner.lines();
    for done in ["hostname ", "useradd ", "chpasswd "] {
        assert!(
            !lines.iter().any(|l| l.starts_with(done)),
            "{done} redone: {lines:?}"
        );
    }
    assert!(!v.path("etc/sudoers.d/waagent").exists(), "Sudoers redone");
    // The steps after them did run.
    assert!(v
        .read("home/azureuser/.ssh/authorized_keys")
        .contains("ssh-"));
}
