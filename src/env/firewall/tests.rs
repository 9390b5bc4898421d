//! The firewall's command lines, exactly, against a recording runner (with
//! an in-memory iptables where the rules' state matters), and the boot unit
//! under a temporary root.

use super::*;
use crate::config::Config;
use crate::os::{Distro, RecordingRunner};
use std::rc::Rc;

const WIRE: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

fn env(root: &Path, flavour: Flavour, runner: Rc<RecordingRunner>) -> Env {
    Env {
        root: root.to_path_buf(),
        runner,
        config: Config::default(),
        distro: Distro {
            id: flavour.name().into(),
            version: String::new(),
            flavour,
        },
    }
}

fn not_found(cmd: &Cmd) -> Result<Output, RunError> {
    Err(RunError::Spawn {
        cmd: cmd.display(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

const CHECK: &str = "iptables -w -t security -C OUTPUT -d 168.63.129.16 -p tcp";
const APPEND: &str = "iptables -w -t security -A OUTPUT -d 168.63.129.16 -p tcp";
const DELETE: &str = "iptables -w -t security -D OUTPUT -d 168.63.129.16 -p tcp";
const DNS: &str = "--destination-port 53 -j ACCEPT";
const ROOT: &str = "-m owner --uid-owner 0 -j ACCEPT";
const DROP: &str = "-m conntrack --ctstate INVALID,NEW -j DROP";

fn lines(prefix: &str, rules: &[&str]) -> Vec<String> {
    rules.iter().map(|r| format!("{prefix} {r}")).collect()
}

fn spec(rule: &str) -> String {
    format!("-d 168.63.129.16 -p tcp {rule}")
}

#[test]
fn the_three_rules_in_chain_order() {
    let specs: Vec<String> = Rule::ALL
        .iter()
        .map(|r| r.spec(WIRE, 0).join(" "))
        .collect();
    assert_eq!(specs, [spec(DNS), spec(ROOT), spec(DROP)]);
    assert_eq!(
        Rule::AcceptAgent.spec(WIRE, 1001).join(" "),
        spec("-m owner --uid-owner 1001 -j ACCEPT")
    );
    assert_eq!(
        legacy_spec(WIRE).join(" "),
        spec("-m conntrack --ctstate INVALID,NEW -j ACCEPT")
    );
}

#[test]
fn fresh_setup_appends_the_three_rules() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let chain = fake_iptables(&runner);
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let fw = Firewall::detect(&e, WIRE, 0).unwrap();
    assert_eq!(
        fw.backend(),
        &Backend::Iptables {
            wait: true,
            version: "1.8.9".into()
        }
    );
    assert_eq!(fw.ensure().unwrap(), Ensured::Set);
    let want: Vec<String> = [
        vec!["iptables --version".to_string()],
        lines(CHECK, &[DNS, ROOT, DROP]),
        lines(APPEND, &[DNS, ROOT, DROP]),
    ]
    .concat();
    assert_eq!(runner.lines(), want);
    assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
}

#[test]
fn complete_rules_are_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let chain = fake_iptables(&runner);
    chain
        .borrow_mut()
        .extend([spec(DNS), spec(ROOT), spec(DROP)]);
    let e = env(d.path(), Flavour::RedHat, runner.clone());
    let fw = Firewall::detect(&e, WIRE, 0).unwrap();
    assert_eq!(fw.check().unwrap(), RulesState::Complete);
    assert_eq!(fw.ensure().unwrap(), Ensured::AlreadySet);
    let checks = lines(CHECK, &[DNS, ROOT, DROP]);
    let want: Vec<String> = [
        vec!["iptables --version".to_string()],
        checks.clone(),
        checks,
    ]
    .concat();
    assert_eq!(runner.lines(), want);
    assert_eq!(chain.borrow().len(), 3);
}

#[test]
fn partial_rules_are_removed_and_set_again() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let chain = fake_iptables(&runner);
    // The DROP without the root ACCEPT would cut the agent off: and a
    // duplicate of it (appended twice by some earlier run) goes too.
    chain
        .borrow_mut()
        .extend([spec(DNS), spec(DROP), spec(DROP)]);
    let e = env(d.path(), Flavour::Ubuntu, runner.clone());
    let fw = Firewall::detect(&e, WIRE, 0).unwrap();
    let Ensured::Repaired(why) = fw.ensure().unwrap() else {
        panic!("not repaired")
    };
    assert_eq!(
        why,
        "missing: ACCEPT (iptables: Bad rule (does a matching rule exist in that chain?).)"
    );
    let want: Vec<String> = [
        vec!["iptables --version".to_string()],
        // check, then remove's own check …
        lines(CHECK, &[DNS, ROOT, DROP]),
        lines(CHECK, &[DNS, ROOT, DROP]),
        // … each present rule deleted until iptables says none is left …
        lines(DELETE, &[DNS, DNS, DROP, DROP, DROP]),
        // … and the three appended in order.
        lines(APPEND, &[DNS, ROOT, DROP]),
    ]
    .concat();
    assert_eq!(runner.lines(), want);
    assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
}

#[test]
fn old_iptables_gets_no_wait_option_and_legacy_rule_goes() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    runner.push("iptables", Output::ok("iptables v1.4.7\n"));
    let e = env(d.path(), Flavour::RedHat, runner.clone());
    let fw = Firewall::detect(&e, WIRE, 0).unwrap();
    assert_eq!(
        fw.backend(),
        &Backend::Iptables {
            wait: false,
            version: "1.4.7".into()
        }
    );
    // The legacy rule is there (exit 0), deleted once, then gone (exit 1).
    runner.push("iptables", Output::default());
    runner.push("iptables", Output::default());
    runner.push("iptables", Output::failed(1, "Bad rule"));
    assert!(fw.remove_legacy_rule().unwrap());
    let legacy = "-d 168.63.129.16 -p tcp -m conntrack --ctstate INVALID,NEW -j ACCEPT";
    assert_eq!(
        runner.lines()[1..],
        [
            format!("iptables -t security -C OUTPUT {legacy}"),
            format!("iptables -t security -D OUTPUT {legacy}"),
            format!("iptables -t security -D OUTPUT {legacy}"),
        ]
    );
    // Absent: only the check.
    runner.push("iptables", Output::failed(1, "Bad rule"));
    assert!(!fw.remove_legacy_rule().unwrap());
    assert_eq!(runner.lines().len(), 5);
}

#[test]
fn an_unreadable_version_means_no_wait_option() {
    assert_eq!(
        parse_iptables_version("iptables v1.8.9 (nf_tables)"),
        Some(vec![1, 8, 9])
    );
    assert_eq!(
        parse_iptables_version("iptables v1.4.21"),
        Some(vec![1, 4, 21])
    );
    assert_eq!(parse_iptables_version("iptables"), None);
    assert_eq!(parse_iptables_version("v."), None);
    assert!(iptables_can_wait(&[1, 4, 21]));
    assert!(iptables_can_wait(&[1, 8]));
    assert!(!iptables_can_wait(&[1, 4]));
    assert!(!iptables_can_wait(&[1, 4, 20]));

    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    runner.push("iptables", Output::failed(3, "can't initialize"));
    let e = env(d.path(), Flavour::Debian, runner.clone());
    assert_eq!(detect_backend(&e).unwrap(), unknown_iptables());
}

#[test]
fn a_check_that_fails_otherwise_is_an_error_not_a_missing_rule() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    runner.push(
        "iptables",
        Output::failed(3, "iptables: can't initialize iptables table `security'"),
    );
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let fw = Firewall::new(&e, unknown_iptables(), WIRE, 0);
    let err = fw.ensure().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "`iptables -t security -C OUTPUT -d 168.63.129.16 -p tcp {DNS}` failed with exit code 3: iptables: can't initialize iptables table `security'"
        )
    );
    assert_eq!(runner.lines().len(), 1, "nothing appended after the error");
}

#[test]
fn neither_iptables_nor_nft_is_an_error_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    runner.respond(|c| Some(not_found(c)));
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let err = Firewall::detect(&e, WIRE, 0).err().unwrap();
    assert!(matches!(err, FirewallError::NoTool));
    assert_eq!(
        err.to_string(),
        "neither `iptables` nor `nft` is installed (not found on PATH): cannot set the WireServer firewall rules (OS.EnableFirewall)"
    );
    assert_eq!(runner.lines(), ["iptables --version", "nft --version"]);
}

#[test]
fn without_iptables_nft_gets_one_table_with_one_rule() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    runner.respond(|c| (c.program == "iptables").then(|| not_found(c)));
    runner.push("nft", Output::ok("nftables v1.0.6 (Lester Gooch #5)\n"));
    runner.push(
        "nft",
        Output::ok(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#),
    );
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let fw = Firewall::detect(&e, WIRE, 0).unwrap();
    assert_eq!(
        fw.backend(),
        &Backend::Nft {
            version: "nftables v1.0.6 (Lester Gooch #5)".into()
        }
    );
    assert_eq!(fw.ensure().unwrap(), Ensured::Set);
    assert_eq!(
        runner.lines(),
        [
            "iptables --version",
            "nft --version",
            "nft --json list tables",
            "nft -f -"
        ]
    );
    let script = runner.calls()[3].stdin.clone().unwrap();
    assert_eq!(
        String::from_utf8(script).unwrap(),
        "add table ip walinuxagent\n\
         add chain ip walinuxagent output { type filter hook output priority 0 ; policy accept ; }\n\
         add rule ip walinuxagent output ip daddr 168.63.129.16 tcp dport != 53 skuid != 0 ct state invalid,new counter drop\n"
    );
}

/// `nft --json list table walinuxagent` as nft 1.0.6 prints our rule.
fn nft_table(ip: &str, uid: u32) -> String {
    format!(
        r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}}}, {{"table": {{"family": "ip", "name": "walinuxagent", "handle": 1}}}}, {{"chain": {{"family": "ip", "table": "walinuxagent", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}}}, {{"rule": {{"family": "ip", "table": "walinuxagent", "chain": "output", "handle": 2, "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "ip", "field": "daddr"}}}}, "right": "{ip}"}}}}, {{"match": {{"op": "!=", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 53}}}}, {{"match": {{"op": "!=", "left": {{"meta": {{"key": "skuid"}}}}, "right": {uid}}}}}, {{"match": {{"op": "in", "left": {{"ct": {{"key": "state"}}}}, "right": ["invalid", "new"]}}}}, {{"counter": {{"packets": 0, "bytes": 0}}}}, {{"drop": null}}]}}}}]}}"#
    )
}

#[test]
fn nft_rule_is_checked_expression_by_expression() {
    let tables = r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "walinuxagent", "handle": 1}}]}"#;
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let fw = Firewall::new(
        &e,
        Backend::Nft {
            version: "1".into(),
        },
        WIRE,
        0,
    );

    runner.push("nft", Output::ok(tables));
    runner.push("nft", Output::ok(&nft_table("168.63.129.16", 0)));
    assert_eq!(fw.ensure().unwrap(), Ensured::AlreadySet);
    assert_eq!(
        runner.lines(),
        [
            "nft --json list tables",
            "nft --json list table walinuxagent"
        ]
    );

    // Another address and uid: not ours; the table is made again.
    runner.push("nft", Output::ok(tables));
    runner.push("nft", Output::ok(&nft_table("10.0.0.1", 1000)));
    assert_eq!(
        fw.ensure().unwrap(),
        Ensured::Repaired(
            "no expression matches the WireServer address; no expression excludes the agent's uid"
                .into()
        )
    );
    assert_eq!(
        runner.lines()[2..],
        [
            "nft --json list tables",
            "nft --json list table walinuxagent",
            "nft delete table walinuxagent",
            "nft -f -"
        ]
    );

    // Output that is not JSON is an error naming the command.
    runner.push("nft", Output::ok("table ip walinuxagent {"));
    assert!(fw
        .check()
        .unwrap_err()
        .to_string()
        .starts_with("cannot parse the output of `nft --json list tables`"));
}

#[test]
fn freebsd_is_not_supported_and_runs_nothing() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let e = env(d.path(), Flavour::FreeBsd, runner.clone());
    let err = Firewall::detect(&e, WIRE, 0).err().unwrap();
    assert!(matches!(err, FirewallError::Unsupported(_)));
    assert!(
        err.to_string().contains("not supported on FreeBSD"),
        "{err}"
    );
    // The daemon's monitor finds that out once and then does nothing.
    let mut m = FirewallMonitor::new(WIRE, 0, Some(PathBuf::from("/usr/local/sbin/waagent")));
    m.initialize(&e);
    let now = Instant::now();
    for i in 0..5 {
        m.check(&e, now + Duration::from_secs(30 * i));
    }
    assert!(m.unsupported);
    assert!(runner.lines().is_empty(), "{:?}", runner.lines());
}

#[test]
fn the_boot_unit_runs_setup_firewall_before_the_network() {
    let text = unit_text(Path::new("/usr/sbin/waagent"), WIRE).unwrap();
    for line in [
        "After=local-fs.target",
        "Before=network-pre.target",
        "Wants=network-pre.target",
        "DefaultDependencies=no",
        "ConditionPathExists=/usr/sbin/waagent",
        "Type=oneshot",
        "ExecStart=/usr/sbin/waagent -setup-firewall=168.63.129.16",
        "RemainAfterExit=yes",
        "WantedBy=network.target",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    for bad in ["waagent", "/opt/my agent/waagent", "/usr/sbin/wa%agent"] {
        assert!(unit_text(Path::new(bad), WIRE).is_err(), "{bad}");
    }
}

#[test]
fn unit_path_follows_the_flavour() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let runner = Rc::new(RecordingRunner::new());
    let at = |f: Flavour| unit_path(&env(r, f, runner.clone()));
    let unit = |dir: &str| r.join(dir).join(NETWORK_SETUP_UNIT);
    assert_eq!(at(Flavour::Debian), unit("lib/systemd/system"));
    assert_eq!(at(Flavour::Default), unit("lib/systemd/system"));
    assert_eq!(at(Flavour::Suse), unit("usr/lib/systemd/system"));
    assert_eq!(at(Flavour::RedHat), unit("usr/lib/systemd/system"));
    assert_eq!(at(Flavour::CoreOs), unit("etc/systemd/system"));
    std::fs::create_dir_all(r.join("run")).unwrap();
    std::fs::write(r.join("run/ostree-booted"), "").unwrap();
    assert_eq!(at(Flavour::RedHat), unit("etc/systemd/system"));
}

#[test]
fn persist_writes_and_enables_the_unit_once_on_systemd() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let runner = Rc::new(RecordingRunner::new());
    let e = env(r, Flavour::Debian, runner.clone());
    let exe = Path::new("/usr/sbin/waagent");
    // Not systemd: nothing at all.
    assert_eq!(persist(&e, WIRE, 0, exe).unwrap(), Persisted::NotSystemd);
    assert_eq!(runner.lines(), ["firewall-cmd --state"]);

    std::fs::create_dir_all(r.join("run/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("lib/systemd/system")).unwrap();
    let path = r.join("lib/systemd/system/waagent-network-setup.service");
    assert_eq!(
        persist(&e, WIRE, 0, exe).unwrap(),
        Persisted::Unit {
            path: path.clone(),
            changed: true
        }
    );
    assert_eq!(
        runner.lines()[1..],
        [
            "firewall-cmd --state",
            "systemctl is-enabled waagent-network-setup.service",
            "systemctl enable waagent-network-setup.service"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        unit_text(exe, WIRE).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o644
    );

    // Enabled and the same: left alone.
    runner.push("systemctl", Output::ok("enabled\n"));
    assert_eq!(
        persist(&e, WIRE, 0, exe).unwrap(),
        Persisted::Unit {
            path: path.clone(),
            changed: false
        }
    );
    assert_eq!(runner.lines().len(), 6);

    // Another address: rewritten and enabled again.
    runner.push("systemctl", Output::ok("enabled\n"));
    let other = Ipv4Addr::new(10, 1, 2, 3);
    assert!(matches!(
        persist(&e, other, 0, exe).unwrap(),
        Persisted::Unit { changed: true, .. }
    ));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("ExecStart=/usr/sbin/waagent -setup-firewall=10.1.2.3\n"));

    // A unit systemctl will not enable is not left behind.
    std::fs::remove_file(&path).unwrap();
    runner.push("systemctl", Output::failed(1, "x"));
    runner.push("systemctl", Output::failed(1, "Failed to enable unit"));
    let err = persist(&e, WIRE, 0, exe).unwrap_err().to_string();
    assert_eq!(
        err,
        "`systemctl enable waagent-network-setup.service` failed with exit code 1: Failed to enable unit"
    );
    assert!(!path.exists());
}

#[test]
fn persist_uses_firewalld_permanent_rules_when_it_runs() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let runner = Rc::new(RecordingRunner::new());
    let e = env(r, Flavour::RedHat, runner.clone());
    std::fs::create_dir_all(r.join("run/systemd/system")).unwrap();
    let unit = unit_path(&e);
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "old").unwrap();
    runner.push("firewall-cmd", Output::ok("running\n"));
    runner.push("firewall-cmd", Output::ok("1.3.4\n"));
    // No legacy rule; none of ours either.
    for _ in 0..4 {
        runner.push("firewall-cmd", Output::failed(1, "no"));
    }
    assert_eq!(
        persist(&e, WIRE, 0, Path::new("/usr/sbin/waagent")).unwrap(),
        Persisted::Firewalld(Ensured::Set)
    );
    let direct = "firewall-cmd --permanent --direct";
    let rule = |op: &str, pos: &str, r: &str| {
        format!("{direct} {op} ipv4 -t security {pos} OUTPUT -d 168.63.129.16 -p tcp {r}")
    };
    let mut want = vec![
        "firewall-cmd --state".to_string(),
        "firewall-cmd --version".to_string(),
        rule("--query-passthrough", "-I", DNS),
    ];
    want.extend([DNS, ROOT, DROP].map(|r| rule("--query-passthrough", "-A", r)));
    want.extend([DNS, ROOT, DROP].map(|r| rule("--passthrough", "-A", r)));
    assert_eq!(runner.lines(), want);
    assert!(!unit.exists(), "firewalld keeps the rules: no unit");
}

#[test]
fn periodic_reports_are_throttled_as_waagent_does() {
    let mut t = Throttle::default();
    let t0 = Instant::now();
    let allowed: Vec<bool> = (0..5)
        .map(|i| t.allow(t0 + Duration::from_secs(i)))
        .collect();
    assert_eq!(allowed, [true, true, true, false, false]);
    assert!(!t.allow(t0 + Duration::from_secs(11 * 3600)));
    assert!(t.allow(t0 + Duration::from_secs(13 * 3600)));
}

#[test]
fn the_monitor_sets_up_once_then_puts_back_what_disappears() {
    let d = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let chain = fake_iptables(&runner);
    let e = env(d.path(), Flavour::Debian, runner.clone());
    let mut m = FirewallMonitor::new(WIRE, 0, None);
    m.initialize(&e);
    assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
    let now = Instant::now();
    let before = runner.lines().len();
    m.check(&e, now);
    // Complete: three checks, nothing else (no version probe again).
    assert_eq!(runner.lines()[before..], lines(CHECK, &[DNS, ROOT, DROP]));
    chain.borrow_mut().clear();
    m.check(&e, now);
    assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
    chain.borrow_mut().remove(1);
    m.check(&e, now);
    assert_eq!(*chain.borrow(), [spec(DNS), spec(ROOT), spec(DROP)]);
}
