//! End to end: `OS.EnableFirewall=y` with real iptables, as root in the
//! throwaway-VM sandbox (`scripts/sandbox`), whose network namespace has
//! its own tables and `fabric-sim` on 168.63.129.16. The real `waagent
//! -daemon` sets the three rules, root can reach the WireServer and an
//! unprivileged user cannot (DNS excepted), a removed rule comes back on
//! the period, a second daemon changes nothing, and the boot unit it writes
//! (`waagent-network-setup.service`, with a stand-in `systemctl`) runs
//! `-setup-firewall=168.63.129.16`, which puts the rules back after a
//! "reboot" and changes nothing the second time. Nothing outside the
//! sandbox's namespaces is touched: the host's rules are compared before
//! and after.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::path::PathBuf;
use std::process::Command;

use sandbox::{Options, Sandbox};

/// Runs inside the sandbox, in /work; leaves its evidence in /work/ev.
const DRIVER: &str = r#"#!/bin/bash
set -u
cd /work
mkdir -p ev bin /run/systemd/system /lib/systemd/system
# systemd "runs" (so the daemon writes the boot unit), and a systemctl that
# records what it is asked and says the unit is not enabled yet.
cat > bin/systemctl <<'EOF'
#!/bin/sh
echo "$*" >> /work/ev/systemctl.log
case $1 in is-enabled) echo disabled; exit 1 ;; esac
exit 0
EOF
chmod 755 bin/systemctl
# The agent's iptables, through a stand-in that logs each call; this
# script calls the real one.
IPT=$(PATH=$PATH:/usr/sbin:/sbin command -v iptables)
printf '#!/bin/sh\necho "$*" >> /work/ev/iptables.log\nexec %s "$@"\n' "$IPT" > bin/iptables
chmod 755 bin/iptables
iptables() { "$IPT" "$@"; }
export PATH=/work/bin:$PATH

./fabric-sim --wire 168.63.129.16:80 --plugin 168.63.129.16:32526 --imds 169.254.169.254:80 \
    --record /work/fabric.jsonl > /work/fabric.log 2>&1 &
sim=$!
i=0; until grep -q 'fabric-sim:' fabric.log 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && exit 90; sleep 0.05; done

rules() { iptables -w -t security -S OUTPUT; }
readys() { grep '"kind":"health"' fabric.jsonl 2>/dev/null | grep -c '"state":"Ready"'; }
wait_ready() { i=0; until [ "$(readys)" -ge "$1" ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done; }
# connect USER PORT: exit status of a TCP connect to the WireServer (124: timed out).
connect() {
    if [ "$1" = root ]; then
        timeout 3 bash -c "exec 3<>/dev/tcp/168.63.129.16/$2"
    else
        timeout 3 setpriv --reuid=65534 --regid=65534 --clear-groups bash -c "exec 3<>/dev/tcp/168.63.129.16/$2"
    fi 2>/dev/null
    echo $?
}

rules > ev/before
./waagent -daemon -configuration-path:/work/waagent.conf &
pid=$!
wait_ready 1
rules > ev/after_daemon
connect root 80 > ev/root_80
connect nobody 80 > ev/nobody_80
connect nobody 53 > ev/nobody_53

# Someone deletes the DROP rule: the daemon's check (every second here)
# puts the set back.
iptables -w -t security -D OUTPUT -d 168.63.129.16 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP
rules > ev/after_delete
i=0; until iptables -w -t security -C OUTPUT -d 168.63.129.16 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP 2>/dev/null; do
    i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.05; done
sleep 0.3
rules > ev/after_repair
kill -TERM $pid; wait $pid; echo $? > ev/daemon.rc

# A second daemon: nothing to change.
./waagent -daemon -configuration-path:/work/waagent.conf &
pid=$!
wait_ready 2
# Its periodic checks (every second) while the rules stay complete.
mark=$(wc -l < ev/iptables.log)
sleep 2.5
tail -n +$((mark + 1)) ev/iptables.log > ev/iptables_steady.log
rules > ev/after_second
kill -TERM $pid; wait $pid; echo $? > ev/daemon2.rc

# A reboot: the kernel forgot the rules; the boot unit's command sets them.
cp /lib/systemd/system/waagent-network-setup.service ev/unit 2>/dev/null
iptables -w -t security -F OUTPUT
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/waagent-network-setup.service)
$exec_start > ev/setup1.out 2> ev/setup1.err; echo $? > ev/setup1.rc
rules > ev/after_boot
$exec_start > ev/setup2.out 2> ev/setup2.err; echo $? > ev/setup2.rc
rules > ev/after_boot2
connect nobody 80 > ev/nobody_80_after_boot
kill $sim
exit 0
"#;

const CONF: &str = "Provisioning.Agent=disabled
OS.EnableFirewall=y
OS.EnableFirewallPeriod=1
Extensions.GoalStatePeriod=1
Logs.File=/work/waagent.log
Logs.Console=n
";

/// The chain as `iptables -S OUTPUT` prints it with the three rules.
const RULES: &str = "-P OUTPUT ACCEPT
-A OUTPUT -d 168.63.129.16/32 -p tcp -m tcp --dport 53 -j ACCEPT
-A OUTPUT -d 168.63.129.16/32 -p tcp -m owner --uid-owner 0 -j ACCEPT
-A OUTPUT -d 168.63.129.16/32 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP
";

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waagent")).with_file_name(name)
}

/// The host's own security OUTPUT chain (read only), to show it untouched.
fn host_rules() -> Option<String> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "security", "-S", "OUTPUT"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn daemon_and_setup_firewall_let_only_root_reach_the_wire_server() {
    let name = "daemon_and_setup_firewall_let_only_root_reach_the_wire_server";
    if sandbox::skip(name) {
        return;
    }
    let found = |tool: &str| {
        Command::new("sh")
            .args([
                "-c",
                "PATH=$PATH:/usr/sbin:/sbin command -v \"$1\"",
                "sh",
                tool,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for tool in ["iptables", "setpriv", "timeout"] {
        if !found(tool) {
            let why = format!("needs {tool} (run scripts/setup)");
            if std::env::var_os("WAAGENT_RS_REQUIRE_SANDBOX").is_some_and(|v| v == "1") {
                panic!("{name}: {why}");
            }
            waagent::sim::skips::note("firewall_e2e", name, &why);
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for b in ["waagent", "fabric-sim"] {
        std::fs::copy(bin(b), d.join(b)).expect("copy the binaries");
    }
    std::fs::write(d.join("waagent.conf"), CONF).unwrap();
    let driver = d.join("driver.sh");
    std::fs::write(&driver, DRIVER).unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let host_before = host_rules();
    let out = Sandbox::run(&Options::default().bind(d, "/work"), &["/work/driver.sh"]);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let ctx = format!(
        "sandbox stdout:\n{}\nstderr:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        read("waagent.log")
    );
    assert!(out.status.success(), "{ctx}");
    assert_eq!(host_rules(), host_before, "the host's rules changed");

    // The daemon set the three rules, in order.
    assert_eq!(read("ev/before"), "-P OUTPUT ACCEPT\n", "{ctx}");
    assert_eq!(read("ev/after_daemon"), RULES, "{ctx}");
    // Root reaches fabric-sim; nobody's SYN is dropped (the connect times
    // out); nobody's DNS is let through (refused at once: no server on 53).
    assert_eq!(read("ev/root_80").trim(), "0", "{ctx}");
    assert_eq!(read("ev/nobody_80").trim(), "124", "{ctx}");
    assert_eq!(read("ev/nobody_53").trim(), "1", "{ctx}");

    // A deleted DROP: the incomplete set was reset, on the period.
    assert_eq!(
        read("ev/after_delete").lines().count(),
        3,
        "{}",
        read("ev/after_delete")
    );
    assert_eq!(read("ev/after_repair"), RULES, "{ctx}");
    let log = read("waagent.log");
    assert!(
        log.contains("set the WireServer firewall rules for 168.63.129.16"),
        "{ctx}"
    );
    assert!(
        log.contains(
            "the WireServer firewall rules for 168.63.129.16 are incomplete (missing: DROP"
        ),
        "{ctx}"
    );
    assert_eq!(read("ev/daemon.rc").trim(), "0", "{ctx}");

    // A second daemon changed nothing, and while the rules stayed as it
    // found them each periodic check was one listing, not a check per rule.
    assert_eq!(read("ev/after_second"), RULES, "{ctx}");
    let steady = read("ev/iptables_steady.log");
    assert!(!steady.is_empty(), "no periodic check ran\n{ctx}");
    assert!(
        steady.lines().all(|l| l == "-w -t security -S OUTPUT"),
        "{steady}"
    );
    assert!(
        log.contains("the WireServer firewall rules for 168.63.129.16 are already set"),
        "{ctx}"
    );
    assert_eq!(read("ev/daemon2.rc").trim(), "0", "{ctx}");

    // The boot unit, enabled by each daemon (the stand-in says it is not).
    let unit = read("ev/unit");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/work/waagent -setup-firewall=168.63.129.16"),
        "{unit}"
    );
    assert!(unit.contains("\nBefore=network-pre.target\n"), "{unit}");
    assert_eq!(
        read("ev/systemctl.log"),
        "is-enabled waagent-network-setup.service\nenable --no-reload waagent-network-setup.service\n"
            .repeat(2),
        "{ctx}"
    );

    // After the "reboot", the unit's command set them; run again, nothing.
    assert_eq!(
        read("ev/setup1.rc").trim(),
        "0",
        "{}",
        read("ev/setup1.err")
    );
    assert_eq!(
        read("ev/setup1.out"),
        "waagent: set the firewall rules for 168.63.129.16\n"
    );
    assert_eq!(read("ev/after_boot"), RULES);
    assert_eq!(
        read("ev/setup2.rc").trim(),
        "0",
        "{}",
        read("ev/setup2.err")
    );
    assert_eq!(
        read("ev/setup2.out"),
        "waagent: the firewall rules for 168.63.129.16 are already set\n"
    );
    assert_eq!(read("ev/after_boot2"), RULES);
    assert_eq!(read("ev/nobody_80_after_boot").trim(), "124");
}
