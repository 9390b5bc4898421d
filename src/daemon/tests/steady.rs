//! The steady state on the virtual clock: monitors on their periods, goal
//! state polls, SIGTERM, RDMA and the firewall.

use super::*;
use crate::sim::Service;

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
    // The DHCP client, as /proc shows it.
    let dhclient = |pid: u32, started: u64| {
        write(&v.path(&format!("proc/{pid}/comm")), "dhclient\n");
        write(
            &v.path(&format!("proc/{pid}/stat")),
            &format!(
                "{pid} (dhclient) S 1 {pid} {pid} 0 -1 0 0 0 0 0 1 0 0 0 20 0 1 0 {started} 1 1\n"
            ),
        );
    };
    dhclient(100, 500);
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

    let start = v.clock.elapsed();

    // The first poll comes at once after Ready: every monitor runs at its
    // first chance.
    state = step_for(&v, &mut d, state, start, 6);
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
    state = step_for(&v, &mut d, state, start, 24);
    assert_eq!(v.read(timeout), "30\n", "not due before its period");
    assert!(v.path(rule).exists());
    state = step_for(&v, &mut d, state, start, 30);
    assert_eq!(v.read(timeout), "300");
    assert!(!v.path(rule).exists());
    assert_eq!(
        v.read(&format!("{lib}70-persistent-net.rules")),
        "SUBSYSTEM==\"net\", NAME=\"eth1\"\n"
    );

    // The DHCP client (period 60 s) restarted between its second and third
    // look: the route to the WireServer is added back through the gateway.
    let route = format!("ip route add {}/32 via 10.0.0.1", v.sim.endpoint().host);
    state = step_for(&v, &mut d, state, start, 60);
    assert!(!v.runner.lines().contains(&route));
    std::fs::remove_dir_all(v.path("proc/100")).unwrap();
    dhclient(200, 900);
    step_for(&v, &mut d, state, start, 120);
    assert!(v.runner.lines().contains(&route), "{:#?}", v.runner.lines());
    // Found in /proc: no process was spawned to look for it.
    assert!(
        !v.runner.lines().iter().any(|l| l.starts_with("pidof")),
        "{:#?}",
        v.runner.lines()
    );

    // Between the monitors, the goal state is polled every 6 s: nothing
    // but those waits passed on the clock.
    let waits = v.waits();
    assert_eq!(waits[0], 0.0, "the first poll at once");
    assert!(waits[1..].iter().all(|w| *w == 6.0), "{waits:?}");
    assert_eq!(waits.len(), 1 + 120 / 6);
}

#[test]
fn sigterm_stops_the_steady_state_and_connect_at_once() {
    let v = vm(None, ProvisioningAgent::Disabled);
    let mut d = v.daemon();
    v.run_until(&mut d, "Steady");
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    // The first poll, at once; then the 6 s wait.
    let state = d.step(state);
    let state = d.step(state);
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
fn polls_at_the_initial_period_until_a_goal_state_is_handled() {
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.initial_goal_state_period = 2;
    v.config.goal_state_period = 10;
    let mut d = v.daemon();
    let (trace, state) = step_until(&mut d, State::Boot, "Steady", 10);
    assert_eq!(trace.last().map(String::as_str), Some("ReportReady"));
    // Its extensions not at hand (the saved document is gone), the poll at
    // once after Ready handles nothing; polls come at the initial period
    // until a new goal state brings them, then at the regular one.
    for e in std::fs::read_dir(v.path("var/lib/waagent")).unwrap() {
        let e = e.unwrap();
        if e.file_name()
            .to_string_lossy()
            .starts_with("ExtensionsConfig")
        {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    v.clock.take_waits();
    let mut state = state;
    let mut names = Vec::new();
    for i in 0..6 {
        if i == 2 {
            v.sim.bump_incarnation();
        }
        state = d.step(state);
        names.push(state.name());
    }
    assert_eq!(
        names,
        [
            "Steady",
            "Steady",
            "Extension",
            "Steady",
            "Extension",
            "Steady"
        ]
    );
    assert_eq!(v.waits(), [0.0, 2.0, 2.0, 10.0]);
    assert_eq!(v.sim.status_uploads().len(), 2);

    // Extensions.Enabled=n: the goal state every five minutes.
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.extensions_enabled = false;
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    v.clock.take_waits();
    let mut state = state;
    for _ in 0..6 {
        state = d.step(state);
    }
    assert_eq!(v.waits(), [0.0, 300.0, 300.0]);
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
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    let start = v.clock.elapsed();
    let mut state = step_for(&v, &mut d, state, start, 180);
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
    assert!(
        lines.contains(&"systemctl enable --no-reload waagent-network-setup.service".to_string())
    );
    let checks = |v: &Vm| {
        v.runner
            .lines()
            .iter()
            .filter(|l| l.starts_with("iptables -w -t security -C OUTPUT"))
            .count()
    };
    let listings = |v: &Vm| {
        v.runner
            .lines()
            .iter()
            .filter(|l| *l == "iptables -w -t security -S OUTPUT")
            .count()
    };
    let setup_checks = checks(&v);
    let setup_listings = listings(&v);
    v.clock.take_waits();

    let start = v.clock.elapsed();
    // The first poll, at once after Ready: complete, as set at Connect; one
    // listing tells.
    state = step_for(&v, &mut d, state, start, 6);
    assert_eq!(listings(&v), setup_listings + 1);
    assert_eq!(checks(&v), setup_checks);
    assert_eq!(*chain.borrow(), rules);

    // Someone deletes the DROP: not put back before the period (30 s) …
    chain.borrow_mut().pop();
    state = step_for(&v, &mut d, state, start, 24);
    assert_eq!(
        listings(&v),
        setup_listings + 1,
        "not due before its period"
    );
    assert_eq!(chain.borrow().len(), 2);
    // … then the incomplete set is removed and set again, in order.
    state = step_for(&v, &mut d, state, start, 30);
    assert_eq!(*chain.borrow(), rules);

    // Everything flushed: all three back on the next period, not before.
    chain.borrow_mut().clear();
    state = step_for(&v, &mut d, state, start, 54);
    assert!(chain.borrow().is_empty());
    step_for(&v, &mut d, state, start, 60);
    assert_eq!(*chain.borrow(), rules);
    let appends = v
        .runner
        .lines()
        .iter()
        .filter(|l| l.starts_with("iptables -w -t security -A"))
        .count();
    assert_eq!(appends, 9, "set at Connect, repaired, set again");
    // The goal state was polled at once, then every 6 s: no other waits.
    let waits = v.waits();
    assert_eq!(waits[0], 0.0, "the first poll at once");
    assert!(waits[1..].iter().all(|w| *w == 6.0), "{waits:?}");

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

#[test]
fn an_incarnation_that_is_not_a_number_is_refused_and_polling_goes_on() {
    let v = vm(None, ProvisioningAgent::Disabled);
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    let lib = v.path("var/lib/waagent");
    assert!(lib.join("GoalState.1.xml").exists());

    v.sim.bump_incarnation();
    v.sim.inject(
        "comp=goalstate",
        [Fault::Replace(
            "<Incarnation>2</Incarnation>".into(),
            "<Incarnation>2.evil</Incarnation>".into(),
        )],
    );
    // One poll: refused, nothing saved under any name, Incarnation kept.
    state = d.step(state);
    assert_eq!(v.read("var/lib/waagent/Incarnation"), "1");
    let names: Vec<String> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("GoalState."))
        .collect();
    assert_eq!(names, ["GoalState.1.xml"]);

    // The next poll takes incarnation 2 as usual.
    while state.name() != "Steady" {
        state = d.step(state);
    }
    d.step(state);
    assert_eq!(v.read("var/lib/waagent/Incarnation"), "2");
    assert!(lib.join("GoalState.2.xml").exists());
}

/// A goal state with one handler whose manifest is nowhere to be had.
fn with_unreachable_handler(v: &Vm) {
    let location = v.sim.manifest_url("Contoso.Test.Nowhere");
    v.sim.inject(
        "type=extensionsConfig",
        [Fault::Replace(
            "<StatusUploadBlob".into(),
            format!(
                r#"<Plugins><Plugin name="Contoso.Test.Echo" version="1.0.0" location="{location}" state="enabled" autoUpgrade="false" /></Plugins>
<PluginSettings><Plugin name="Contoso.Test.Echo" version="1.0.0"><RuntimeSettings seqNo="5">{{"runtimeSettings":[{{"handlerSettings":{{"publicSettings":{{}}}}}}]}}</RuntimeSettings></Plugin></PluginSettings>
<StatusUploadBlob"#
            ),
        )],
    );
}

/// The last status blob uploaded, parsed.
fn last_status(v: &Vm) -> serde_json::Value {
    let uploads = v.sim.status_uploads();
    serde_json::from_slice(&uploads.last().expect("a status upload").content).unwrap()
}

#[test]
fn a_handler_that_cannot_be_run_is_reported_failed_with_its_code_never_as_done() {
    // Its manifest cannot be fetched: PluginManifestDownloadError.
    let v = vm(None, ProvisioningAgent::Disabled);
    with_unreachable_handler(&v);
    let mut d = v.daemon();
    v.run_until(&mut d, "Extension");
    let agg = &last_status(&v)["aggregateStatus"];
    assert_eq!(
        agg["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["status"],
        "Failed"
    );
    let h = &agg["handlerAggregateStatus"][0];
    assert_eq!(h["handlerName"], "Contoso.Test.Echo");
    assert_eq!(h["status"], "NotReady");
    assert_eq!(h["code"], 1001);
    assert!(h["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .starts_with("cannot get the manifest of Contoso.Test.Echo"));
    assert_eq!(h["runtimeSettingsStatus"]["sequenceNumber"], 5);
    assert_eq!(
        h["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"],
        "error"
    );

    // Extensions.Enabled=n: not run, and said so.
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.extensions_enabled = false;
    with_unreachable_handler(&v);
    let mut d = v.daemon();
    v.run_until(&mut d, "Extension");
    let agg = &last_status(&v)["aggregateStatus"];
    let h = &agg["handlerAggregateStatus"][0];
    assert_eq!(h["code"], 1009);
    assert!(h["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .contains("extension processing is disabled"));
    assert_eq!(
        agg["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["status"],
        "Failed"
    );
    assert_eq!(
        v.sim.requests_to("manifests").len(),
        0,
        "nothing is fetched when extensions are off"
    );
}

#[test]
fn a_live_host_name_that_is_not_valid_is_never_written_anywhere() {
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.monitor_host_name = true;
    v.config.monitor_host_name_period = 30;
    write(&v.path("var/lib/waagent/published_hostname"), "vm1");
    write(&v.path("etc/hostname"), "vm1\n");
    // Set by someone on the VM; it would end up in files shells source.
    write(&v.path("proc/sys/kernel/hostname"), "vm1;reboot\n");
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    let start = v.clock.elapsed();
    let state = step_for(&v, &mut d, state, start, 65);
    assert_eq!(v.read("etc/hostname"), "vm1\n");
    assert_eq!(v.read("var/lib/waagent/published_hostname"), "vm1");
    assert!(!v.read("etc/dhcp/dhclient.conf").contains("reboot"));
    assert!(
        v.runner.lines().iter().all(|l| !l.starts_with("hostname")),
        "{:?}",
        v.runner.lines()
    );

    // A valid new name is published as before.
    write(&v.path("proc/sys/kernel/hostname"), "renamed-by-user\n");
    let start = v.clock.elapsed();
    step_for(&v, &mut d, state, start, 31);
    assert_eq!(v.read("etc/hostname"), "renamed-by-user\n");
    assert_eq!(
        v.read("var/lib/waagent/published_hostname"),
        "renamed-by-user"
    );
    assert!(v
        .runner
        .lines()
        .iter()
        .any(|l| l == "hostname renamed-by-user"));
}

#[test]
fn handlers_on_hold_wait_until_the_artifacts_profile_releases_them() {
    let v = vm(None, ProvisioningAgent::Disabled);
    let profile = v
        .sim
        .put_blob("profile.json", br#"{"onHold": true}"#.to_vec());
    let location = v.sim.manifest_url("Contoso.Test.Nowhere");
    // Every ExtensionsConfig served names the profile and one handler.
    for _ in 0..50 {
        v.sim.inject(
            "type=extensionsConfig",
            [Fault::Replace(
                "<StatusUploadBlob".into(),
                format!(
                    r#"<Plugins><Plugin name="Contoso.Test.Echo" version="1.0.0" location="{location}" state="enabled" /></Plugins>
<InVMArtifactsProfileBlob>{profile}</InVMArtifactsProfileBlob>
<StatusUploadBlob"#
                ),
            )],
        );
    }
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Extension", 20);
    for _ in 0..6 {
        state = d.step(state);
    }
    // Held: the manifest is never asked for; the goal state is in progress.
    assert!(v.sim.requests_to("manifests").is_empty());
    assert!(
        v.sim.requests_to("profile.json").len() >= 2,
        "asked on every poll"
    );
    let agg = &last_status(&v)["aggregateStatus"];
    assert!(agg["vmArtifactsAggregateStatus"].is_null(), "{agg}");

    // Released: the handler is taken up on the next poll.
    v.sim
        .put_blob("profile.json", br#"{"onHold": false}"#.to_vec());
    for _ in 0..6 {
        state = d.step(state);
    }
    assert!(!v.sim.requests_to("manifests").is_empty());
    let h = &last_status(&v)["aggregateStatus"]["handlerAggregateStatus"][0];
    assert_eq!(h["code"], 1001, "{h}");
}

#[test]
fn an_enable_a_killed_daemon_left_running_is_adopted_and_not_run_again() {
    // The fault matrix's SIGKILL during enable: the next daemon waited for
    // that enable, then ran enable once more as its plan said.
    use crate::ext::handler::write_handler_state;
    use crate::ext::plan::HandlerState;
    let v = vm(None, ProvisioningAgent::Disabled);
    v.sim.set_handlers(vec![crate::sim::SimHandler::new(
        "Contoso.Test.Echo",
        "1.0.0",
        Vec::new(),
    )]);
    let dir = v.path("var/lib/waagent/Contoso.Test.Echo-1.0.0");
    write(
        &dir.join("HandlerManifest.json"),
        r#"[{"name":"Echo","version":1.0,"handlerManifest":{"installCommand":"bin/h install","uninstallCommand":"bin/h uninstall","updateCommand":"bin/h update","enableCommand":"bin/h enable","disableCommand":"bin/h disable"}}]"#,
    );
    write(&dir.join("bin/h"), "#!/bin/sh\n");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    write_handler_state(&dir.join("config"), HandlerState::Installed).unwrap();
    // Its marker names a process that is gone; the exit code it left is 0.
    let exit_file = dir.join("config/.enable.exit");
    write(&exit_file, "0\n");
    let marker = serde_json::json!({"command": "enable", "version": "1.0.0",
        "pid": 999_999_999, "exitFile": exit_file, "timeout": 300});
    write(&dir.join("config/Running"), &marker.to_string());
    write(
        &dir.join("status/0.status"),
        r#"[{"version":1.0,"timestampUTC":"2026-12-04T00:00:00Z","status":{"name":"Echo","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"enabled"}}}]"#,
    );
    let mut d = v.daemon();
    v.run_until(&mut d, "Extension");
    let started: Vec<String> = v
        .runner
        .lines()
        .into_iter()
        .filter(|l| l.contains("waagent-extension"))
        .collect();
    assert_eq!(started, Vec::<String>::new(), "nothing run again");
    assert_eq!(
        crate::ext::handler::read_handler_state(&dir.join("config")),
        HandlerState::Enabled
    );
    assert!(!dir.join("config/Running").exists() && !exit_file.exists());
    let h = &last_status(&v)["aggregateStatus"]["handlerAggregateStatus"][0];
    assert_eq!(h["status"], "Ready", "{h}");
    assert_eq!(
        h["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"],
        "success"
    );
}

#[test]
fn a_package_that_does_not_open_is_fetched_again_through_the_hostgaplugin() {
    // The fault matrix: storage answered 200 with half the zip (or 5 MiB
    // of junk), the download "succeeded", and the handler failed for the
    // whole incarnation.
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default();
    w.start_file("HandlerManifest.json", o).unwrap();
    w.write_all(br#"[{"name":"Echo","version":1.0,"handlerManifest":{"installCommand":"bin/h install","uninstallCommand":"bin/h uninstall","updateCommand":"bin/h update","enableCommand":"bin/h enable","disableCommand":"bin/h disable"}}]"#).unwrap();
    w.start_file("bin/h", o).unwrap();
    w.write_all(b"#!/bin/sh\n").unwrap();
    let zip = w.finish().unwrap().into_inner();
    for fault in [Fault::Malformed, Fault::Oversized(5 << 20)] {
        let v = vm(None, ProvisioningAgent::Disabled);
        v.sim.set_handlers(vec![crate::sim::SimHandler::new(
            "Contoso.Test.Echo",
            "1.0.0",
            zip.clone(),
        )]);
        v.sim.inject("/blob/packages/", [fault.clone()]);
        let mut d = v.daemon();
        v.run_until(&mut d, "Extension");
        let through_plugin = v.sim.requests_to("/extensionArtifact");
        assert_eq!(through_plugin.len(), 1, "{fault:?}");
        assert_eq!(through_plugin[0].status, 200);
        let dir = v.path("var/lib/waagent/Contoso.Test.Echo-1.0.0");
        assert!(dir.join("HandlerManifest.json").is_file(), "{fault:?}");
        let lines = v.runner.lines();
        assert!(
            lines.iter().any(|l| l.contains("bin/h install")),
            "{fault:?}: {lines:?}"
        );
        assert!(
            !std::fs::read_dir(v.path("var/lib/waagent"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".zip")),
            "no zip left"
        );
    }
}

#[test]
fn a_failed_goal_state_poll_is_retried_after_a_second_then_at_the_period() {
    // One broken answer (a half document: the client does not retry it)
    // waited a whole Extensions.GoalStatePeriod; now a second, once.
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.initial_goal_state_period = 6;
    v.config.goal_state_period = 6;
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    v.clock.take_waits();
    // Polls from now: broken, good, good; then broken three times.
    v.sim.inject_after("comp=goalstate", 0, [Fault::Malformed]);
    let mut polls = |n: usize| {
        let before = v.sim.requests_to("comp=goalstate").len();
        while v.sim.requests_to("comp=goalstate").len() < before + n {
            state = d.step(std::mem::replace(&mut state, State::Stopped(0)));
        }
    };
    polls(3);
    // The first poll comes at once after Ready.
    assert_eq!(v.waits(), [0.0, 1.0, 6.0]);
    v.sim.inject("comp=goalstate", vec![Fault::Malformed; 3]);
    polls(4);
    // The first failure of a run is retried quickly, the others not: a
    // fabric that stays broken is asked no more often than waagent asks.
    assert_eq!(v.waits(), [6.0, 1.0, 6.0, 6.0]);
}

#[test]
fn a_failed_status_upload_is_tried_again_a_second_later_then_at_the_period() {
    // The fault matrix: storage answered the status blob's PUT 410 (the
    // HostGAPlugin refusing it) and the status waited for the next change
    // or poll; the final one would have waited the whole period.
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.initial_goal_state_period = 6;
    v.config.goal_state_period = 6;
    let mut d = v.daemon();
    let (_, state) = step_until(&mut d, State::Boot, "Steady", 10);
    v.clock.take_waits();
    v.sim.inject("/status", vec![Fault::Status(400); 100]);
    v.sim.inject("vmstatus.status", [Fault::Status(410)]);
    let mut state = state;
    for _ in 0..6 {
        state = d.step(state);
    }
    // Poll (at once after Ready; the upload fails), a second later the
    // upload again, the next poll.
    assert_eq!(v.waits(), [0.0, 1.0, 5.0]);
    let direct: Vec<u16> = v
        .sim
        .requests_to("vmstatus.status")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(direct, [410, 201, 201]);
    // Storage refusing for good: one quick retry, then the period.
    v.sim
        .inject("vmstatus.status", vec![Fault::Status(410); 100]);
    for _ in 0..8 {
        state = d.step(state);
    }
    assert_eq!(v.waits(), [6.0, 1.0, 5.0, 6.0]);
}

/// `LBProbeResponder=y`: after a goal-state poll the daemon listens on its
/// `LBProbePorts` at the primary interface's address (the fixture's default
/// route is on `lo`, so 127.0.0.1), a probe waiting when the idle wait
/// begins gets the 200, and a goal state without the port closes it.
#[test]
fn probes_are_answered_in_the_idle_wait_and_follow_the_goal_state() {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.lb_probe_responder = true;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    v.sim.set_lb_probe_ports(vec![port.to_string(), "0".into()]);
    write(
        &v.path("proc/net/route"),
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         lo\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n",
    );
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    // Not before the first poll, which comes at once.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    state = d.step(state);

    // The kernel completes the connection; the next idle wait answers it.
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (_, s) = step_until(&mut d, state, "Steady", 10);
    state = d.step(s);
    let mut got = Vec::new();
    probe.read_to_end(&mut got).unwrap();
    assert_eq!(got, crate::env::lbprobe::REPLY);

    // The port leaves the goal state: closed after the next poll.
    v.sim.set_lb_probe_ports(Vec::new());
    let start = v.clock.elapsed();
    step_for(&v, &mut d, state, start, 7);
    // (Not by connecting: a test running beside this one may have been
    // given the freed port for a listener of its own.)
    assert!(d.monitors.lb_probe.ports().is_empty());
}

#[test]
fn the_steady_state_polls_and_uploads_on_kept_connections() {
    // Each 6 s turn: the goal state from the WireServer, the status to the
    // HostGAPlugin. Both ride on the connection the last turn left open,
    // not on a new TCP connection each (http/plain/idle.rs).
    let mut v = vm(None, ProvisioningAgent::Disabled);
    v.config.initial_goal_state_period = 6;
    v.config.goal_state_period = 6;
    let mut d = v.daemon();
    let (_, mut state) = step_until(&mut d, State::Boot, "Steady", 10);
    let before = v.sim.requests().len();
    let polls = |v: &Vm| v.sim.requests_to("comp=goalstate").len();
    let first = polls(&v);
    while polls(&v) < first + 6 {
        state = d.step(state);
    }
    let turns: Vec<_> = v.sim.requests()[before..].to_vec();
    let connections = |service: Service| {
        let mut c: Vec<u64> = turns
            .iter()
            .filter(|r| r.service == service)
            .map(|r| r.request.connection)
            .collect();
        c.dedup();
        c
    };
    let wire = connections(Service::Wire);
    assert_eq!(wire.len(), 1, "goal-state polls on connections {wire:?}");
    let uploads = turns
        .iter()
        .filter(|r| r.service == Service::HostPlugin)
        .count();
    assert!(uploads >= 2, "{uploads} status uploads");
    let plugin = connections(Service::HostPlugin);
    assert_eq!(plugin.len(), 1, "status uploads on connections {plugin:?}");
}
