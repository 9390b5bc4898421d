//! End to end: the real `waagent -daemon`, as root in the throwaway-VM
//! sandbox (`scripts/sandbox`), provisions from an Azure-like DVD against
//! `fabric-sim` listening on 168.63.129.16 and 169.254.169.254 inside the
//! sandbox's own network namespace. A driver script runs inside and copies
//! the evidence out; the assertions are made here, on real files.

#[path = "common/sandbox.rs"]
mod sandbox;
#[path = "common/vm.rs"]
mod vm;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sandbox::{Options, Sandbox};
use serde_json::Value;
use vm::{DMI_UUID, FULL_PASSWORD, IMDS_KEY, INSTANCE_ID};
use waagent::provision::password;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const INLINE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDt0ZXN0a2V5Zm9yd2FhZ2VudHJzb25seW5vdHJlYWw= alice@laptop";

/// The driver: start the fabric, run the daemon until it has reported, stop
/// it, and copy what it did to /work/ev/<phase>/. Phases run in order in one
/// sandbox, so a reboot sees the first boot's disk.
const DRIVER: &str = r#"#!/bin/sh
set -u
cd /work
# start_sim LOG [ARGS…]: the fabric on the platform addresses; $sim is its pid.
start_sim() {
    log=$1; shift
    ./fabric-sim --wire 168.63.129.16:80 --plugin 168.63.129.16:32526 --imds 169.254.169.254:80 \
        --record /work/fabric.jsonl "$@" > "$log" 2>&1 &
    sim=$!
    i=0; until grep -q 'fabric-sim:' "$log" 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && exit 90; sleep 0.05; done
}
stop_sim() { kill $sim; wait $sim 2>/dev/null; }
start_sim /work/fabric.log --tenant-cert /work/tenant.crt:/work/tenant.key \
    --imds-key "/home/azureuser/.ssh/authorized_keys=$IMDS_KEY"

# Final reports so far: Ready or ProvisioningFailed.
reports() { grep '"kind":"health"' /work/fabric.jsonl 2>/dev/null | grep -c '"state":"Ready"\|ProvisioningFailed'; }

# run_daemon PHASE N: the daemon until N final reports exist in all
# (N = 0: give it 3 s of steady state instead), then SIGTERM.
run_daemon() {
    ./waagent -daemon -configuration-path:/work/waagent.conf &
    pid=$!
    i=0
    if [ "$2" = 0 ]; then sleep 3; else
        until [ "$(reports)" -ge "$2" ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
        sleep 0.3
    fi
    kill -TERM $pid; wait $pid; echo $? > /work/ev/$1/daemon.rc
}

evidence() {
    e=/work/ev/$1; mkdir -p $e
    getent passwd azureuser > $e/passwd
    getent shadow azureuser | cut -d: -f2 > $e/hash
    grep '^root:' /etc/shadow | cut -d: -f2 > $e/root_hash
    hostname > $e/hostname
    for f in /home/azureuser/.ssh /home/azureuser/.ssh/authorized_keys /home/azureuser/.ssh/id_rsa \
             /home/azureuser/.ssh/id_rsa.pub /etc/sudoers.d/waagent /var/lib/waagent /var/lib/waagent/ovf-env.xml; do
        [ -e $f ] && echo "$(stat -c '%a %U %G' $f) $f" >> $e/modes
    done
    for f in /home/azureuser/.ssh/authorized_keys /home/azureuser/.ssh/id_rsa.pub /etc/sudoers.d/waagent \
             /etc/ssh/sshd_config /etc/ssh/sshd_config.d/00-waagent.conf /var/lib/waagent/ovf-env.xml /var/lib/waagent/provisioned /var/tmp/custom-data-ran; do
        [ -f $f ] && cp $f $e/$(echo $f | tr / _)
    done
    ls /var/lib/waagent > $e/lib 2>/dev/null
    ls /etc/ssh | grep '^ssh_host_' > $e/host_keys
    for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done > $e/fingerprints 2>/dev/null
    for k in /etc/ssh/ssh_host_*; do echo "$(stat -c %a $k) $(basename $k)"; done > $e/host_key_modes
    ls -a /etc/ssh | grep -v '^ssh_host_\|^sshd_config\|^\.*$\|^moduli$\|^ssh_config' > $e/ssh_dir_extra
    cut -d: -f1,3 /etc/passwd > $e/users
}

mkdir -p /work/ev/first /work/ev/reboot /work/ev/captured /work/ev/deprovision /work/ev/retry
cut -d: -f1,3 /etc/passwd > /work/ev/users_before

if [ "$PHASES" = crash ]; then
    # The daemon kills itself with SIGKILL at $CRASH_AT; the next start must
    # converge to the same VM as an uninterrupted one.
    # (No $CRASH_AT: an uninterrupted first boot, for comparison.)
    if [ -n "$CRASH_AT" ]; then
        WAAGENT_RS_TEST_CRASH_AT=$CRASH_AT timeout 30 ./waagent -daemon -configuration-path:/work/waagent.conf
        echo $? > /work/ev/crash.rc
    fi
    ls -a /var/lib/waagent > /work/ev/lib_after_crash 2>/dev/null
    run_daemon first 1
    evidence first
    grep -c '^azureuser:' /etc/passwd > /work/ev/first/passwd_count
    cat /var/lib/waagent/waagent-rs.journal > /work/ev/first/journal 2>/dev/null
    ls -a /var/lib/waagent > /work/ev/first/lib_all
    exit 0
fi

if [ "$PHASES" = customdata ]; then
    # A custom-data script that hangs or leaves a process behind. Every wait
    # is bounded, so a daemon that hangs fails the test instead of blocking it.
    alive() { [ -r /proc/$1/stat ] && ! grep -q ') Z ' /proc/$1/stat; }
    # stop_bounded PHASE: SIGTERM, then 10 s to exit; "hung" if it did not.
    stop_bounded() {
        kill -TERM $pid; i=0
        while alive $pid && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done
        if alive $pid; then kill -KILL $pid; wait $pid; echo hung > /work/ev/$1/daemon.rc
        else wait $pid; echo $? > /work/ev/$1/daemon.rc; fi
    }
    mkdir -p /work/ev/last
    hook=${CD_TIMEOUT:+WAAGENT_RS_TEST_CUSTOM_DATA_TIMEOUT=$CD_TIMEOUT}
    env $hook ./waagent -daemon -configuration-path:/work/waagent.conf &
    pid=$!
    if [ "$MODE" = sigterm ]; then
        i=0; until [ -s /var/tmp/custom-data-pid ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
        stop_bounded first
        reports > /work/ev/first/reports
        alive "$(cat /var/tmp/custom-data-pid)" && echo yes > /work/ev/first/script_alive
        # The next start finishes provisioning; "last" is its evidence.
        ./waagent -daemon -configuration-path:/work/waagent.conf &
        pid=$!
    fi
    i=0; until [ "$(reports)" -ge 1 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
    stop_bounded last
    for f in pid bgpid; do
        [ -s /var/tmp/custom-data-$f ] && alive "$(cat /var/tmp/custom-data-$f)" && echo yes > /work/ev/last/${f}_alive
    done
    cp /var/tmp/custom-data-runs /work/ev/last/runs 2>/dev/null
    exit 0
fi

if [ "$PHASES" = steady ]; then
    # The fabric refuses the first two connections; then, in steady state,
    # the user renames the VM and the host-name monitor publishes it.
    stop_sim
    start_sim /work/fabric1.log --tenant-cert /work/tenant.crt:/work/tenant.key --fault comp=versions:reset:2
    ./waagent -daemon -configuration-path:/work/waagent.conf &
    pid=$!
    i=0; until [ "$(reports)" -ge 1 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
    hostname renamed-by-user
    i=0; until grep -q renamed-by-user /var/lib/waagent/published_hostname 2>/dev/null; do
        i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.05; done
    # A DHCP client that restarts (a new pid) after the route to the
    # WireServer was lost: the monitor puts the route back.
    ln -s /bin/sleep /tmp/dhclient
    /tmp/dhclient 300 & first=$!
    sleep 2.5
    ip route del 168.63.129.16 via 10.0.0.1
    ip route show > /work/ev/first/routes_lost
    kill $first; /tmp/dhclient 300 & second=$!
    i=0; until ip route show | grep -q '^168.63.129.16 via 10.0.0.1'; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.05; done
    ip route show > /work/ev/first/routes_after
    kill $second
    kill -TERM $pid; wait $pid; echo $? > /work/ev/first/daemon.rc
    evidence first
    cp /etc/hostname /work/ev/first/etc_hostname
    cp /var/lib/waagent/published_hostname /work/ev/first/published 2>/dev/null
    exit 0
fi

if [ "$PHASES" = lbprobe ]; then
    # LBProbeResponder=y: the goal state's port answered on the VM's address
    # (eth0's 10.0.0.4), the hostile entries beside it refused; then the
    # goal state moves the probe to another port.
    stop_sim
    echo '16001 0 99999 abc 16001' > /work/ports
    start_sim /work/fabric1.log --tenant-cert /work/tenant.crt:/work/tenant.key \
        --imds-key "/home/azureuser/.ssh/authorized_keys=$IMDS_KEY" --lb-probe-ports /work/ports
    # probe NAME ADDR PORT: a real TCP client, its output and exit code.
    probe() {
        timeout 10 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "GET / HTTP/1.1\r\nHost: probe\r\n\r\n" >&3 && cat <&3' \
            "$2" "$3" > /work/ev/first/$1 2> /work/ev/first/$1.err
        echo $? > /work/ev/first/$1.rc
    }
    # until_log TEXT: until the agent's log holds TEXT (10 s at most).
    until_log() { i=0; until grep -qF "$1" /work/waagent.log; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done; }
    ./waagent -daemon -configuration-path:/work/waagent.conf &
    pid=$!
    until_log 'answering load-balancer probes on 10.0.0.4:16001'
    probe on_vm_address 10.0.0.4 16001
    probe on_loopback 127.0.0.1 16001
    echo 16002 > /work/ports
    until_log 'stopped listening on 10.0.0.4:16001'
    until_log 'answering load-balancer probes on 10.0.0.4:16002'
    probe dropped 10.0.0.4 16001
    probe moved 10.0.0.4 16002
    kill -TERM $pid; wait $pid; echo $? > /work/ev/first/daemon.rc
    # LBProbeResponder=n: the same goal state opens nothing.
    sed -i 's/^LBProbeResponder=y/LBProbeResponder=n/' /work/waagent.conf
    ./waagent -daemon -configuration-path:/work/waagent.conf &
    pid=$!
    n=$(grep -c 'comp=goalstate' /work/fabric1.log)
    i=0; until [ "$(grep -c 'comp=goalstate' /work/fabric1.log)" -ge $((n+2)) ]; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done
    probe disabled 10.0.0.4 16002
    kill -TERM $pid; wait $pid; echo $? > /work/ev/first/daemon2.rc
    exit 0
fi

if [ "$PHASES" = custom ]; then
    # The image as it was before its first boot (/work/pre.sh), the first
    # boot, then whatever the test wants done or seen (/work/post.sh).
    [ -x /work/pre.sh ] && /work/pre.sh
    run_daemon first 1
    evidence first
    [ -x /work/post.sh ] && /work/post.sh
    exit 0
fi

if [ "$PHASES" = retry ]; then
    # The fabric first sends no certificates (the key's thumbprint names
    # nothing): provisioning fails. The next start, with them, succeeds.
    stop_sim
    start_sim /work/fabric1.log
    run_daemon first 1
    evidence first
    stop_sim
    start_sim /work/fabric2.log --tenant-cert /work/tenant.crt:/work/tenant.key
    run_daemon retry 2
    evidence retry
    exit 0
fi

run_daemon first 1
evidence first
[ "$PHASES" = first ] && exit 0

# Reboot: same instance. Nothing may be reported or written.
touch /work/ev/stamp; sleep 1.1
run_daemon reboot 0
find /etc /home /var/lib/waagent -newer /work/ev/stamp > /work/ev/reboot/changed
evidence reboot

# A captured image: another instance id. Provisioned again.
echo 01020304-0506-0708-0910-111213141516 > /work/uuid2
mount --bind /work/uuid2 /sys/class/dmi/id/product_uuid
run_daemon captured 2
evidence captured

./waagent -deprovision+user -force -configuration-path:/work/waagent.conf > /work/ev/deprovision/out 2>&1
echo $? > /work/ev/deprovision/rc
evidence deprovision
exit 0
"#;

const CONF: &str = "Provisioning.Agent=waagent
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType=ed25519
Provisioning.DeleteRootPassword=y
Provisioning.ExecuteCustomData=y
Provisioning.PasswordCryptId=6
Logs.File=/work/waagent.log
Logs.Console=n
Extensions.GoalStatePeriod=1
";

struct Run {
    dir: tempfile::TempDir,
    output: std::process::Output,
}

impl Run {
    fn ev(&self, phase: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("ev").join(phase).join(name))
            .unwrap_or_default()
    }

    fn file(&self, phase: &str, abs: &str) -> String {
        self.ev(phase, &abs.replace('/', "_"))
    }

    /// The fabric's record: every health report and role-properties report.
    fn records(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("fabric.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == kind)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("waagent.log")).unwrap_or_default()
    }

    fn context(&self) -> String {
        format!(
            "sandbox stdout:\n{}\nstderr:\n{}\nagent log:\n{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr),
            self.log()
        )
    }
}

fn bin(name: &str) -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_waagent"));
    own.with_file_name(name)
}

/// Runs the driver in a fresh sandbox with `ovf_xml` on the DVD.
fn run(ovf_xml: &str, conf: &str, phases: &str) -> Run {
    run_with(ovf_xml, conf, phases, "")
}

fn run_with(ovf_xml: &str, conf: &str, phases: &str, crash_at: &str) -> Run {
    run_env(ovf_xml, conf, phases, &[("CRASH_AT", crash_at)])
}

/// Runs the driver with `env` (`NAME`, value) added to its environment.
fn run_env(ovf_xml: &str, conf: &str, phases: &str, env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    run_in(dir, ovf_xml, conf, phases, env)
}

/// The first boot after `pre` (a shell script: the image as it was before
/// it) ran in the sandbox, then `post` (another, for what the test does or
/// looks at afterwards, under /work/ev).
fn run_custom(pre: &str, ovf_xml: &str, conf: &str, post: &str) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, body) in [("pre.sh", pre), ("post.sh", post)] {
        let script = dir.path().join(name);
        std::fs::write(&script, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    run_in(dir, ovf_xml, conf, "custom", &[])
}

fn run_in(
    dir: tempfile::TempDir,
    ovf_xml: &str,
    conf: &str,
    phases: &str,
    env: &[(&str, &str)],
) -> Run {
    let d = dir.path();
    for b in ["waagent", "fabric-sim"] {
        std::fs::copy(bin(b), d.join(b)).expect("copy the binaries");
    }
    for f in ["tenant.crt", "tenant.key"] {
        std::fs::copy(
            Path::new(MANIFEST).join("test-data/certs").join(f),
            d.join(f),
        )
        .unwrap();
    }
    std::fs::write(d.join("ovf-env.xml"), ovf_xml).unwrap();
    std::fs::write(d.join("waagent.conf"), conf).unwrap();
    let driver = d.join("driver.sh");
    std::fs::write(&driver, DRIVER).unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let iso = d.join("ovf.iso");
    // A test may have made its own (hostile) media.
    if !iso.exists() {
        Sandbox::make_ovf_iso(&d.join("ovf-env.xml"), &iso, &[])
            .expect("make the provisioning ISO");
    }
    let opts = Options::default()
        .iso(&iso)
        .bind(d, "/work")
        .dmi_uuid(DMI_UUID);
    let mut args = vec![
        "env".to_string(),
        format!("PHASES={phases}"),
        format!("IMDS_KEY={IMDS_KEY}"),
    ];
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    args.push("/work/driver.sh".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = Sandbox::command(&opts, &args);
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the sandbox");
    Run { dir, output }
}

fn mode_of(run: &Run, phase: &str, path: &str) -> String {
    run.ev(phase, "modes")
        .lines()
        .find(|l| l.ends_with(&format!(" {path}")))
        .map(|l| l.rsplit_once(' ').map_or("", |(m, _)| m).to_string())
        .unwrap_or_default()
}

fn states(reports: &[Value]) -> Vec<String> {
    reports
        .iter()
        .map(|r| match r["subStatus"].as_str() {
            Some(s) => format!("{}/{s}", r["state"].as_str().unwrap_or("")),
            None => r["state"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

#[test]
fn provisioning_reboot_captured_image_and_deprovision() {
    if sandbox::skip("provisioning_reboot_captured_image_and_deprovision") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let r = run(&full, CONF, "all");
    assert!(r.output.status.success(), "{}", r.context());
    let ctx = r.context();

    // --- first boot ---
    assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
    let passwd = r.ev("first", "passwd");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd:?} {ctx}");
    assert_eq!(
        (fields[0], fields[5], fields[6]),
        ("azureuser", "/home/azureuser", "/bin/sh")
    );
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid >= 1000);

    let hash = r.ev("first", "hash");
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(
        password::verify(FULL_PASSWORD, hash.trim()),
        "the shadow hash does not verify"
    );
    assert!(!password::verify("wrong", hash.trim()));
    assert_eq!(r.ev("first", "root_hash").trim(), "*LOCK*");

    // authorized_keys: the key derived from the certificate the fabric sent,
    // the inline key, the IMDS key — each once.
    let derived =
        std::fs::read_to_string(Path::new(MANIFEST).join("test-data/certs/tenant.ssh.pub"))
            .unwrap();
    let derived_body = derived.split_whitespace().nth(1).unwrap();
    let keys = r.file("first", "/home/azureuser/.ssh/authorized_keys");
    let lines: Vec<&str> = keys.lines().collect();
    assert_eq!(lines.len(), 3, "{keys}");
    assert_eq!(lines[0].split_whitespace().nth(1), Some(derived_body));
    assert_eq!(lines[1], INLINE_KEY);
    assert_eq!(lines[2], IMDS_KEY);
    assert_eq!(
        mode_of(&r, "first", "/home/azureuser/.ssh"),
        "700 azureuser azureuser"
    );
    assert_eq!(
        mode_of(&r, "first", "/home/azureuser/.ssh/authorized_keys"),
        "600 azureuser azureuser"
    );
    assert_eq!(
        mode_of(&r, "first", "/home/azureuser/.ssh/id_rsa"),
        "600 azureuser azureuser"
    );
    assert_eq!(
        mode_of(&r, "first", "/home/azureuser/.ssh/id_rsa.pub"),
        "644 azureuser azureuser"
    );
    assert_eq!(
        r.file("first", "/home/azureuser/.ssh/id_rsa.pub")
            .split_whitespace()
            .nth(1),
        Some(derived_body)
    );

    assert_eq!(
        r.file("first", "/etc/sudoers.d/waagent"),
        "azureuser ALL=(ALL) ALL\n"
    );
    assert_eq!(
        mode_of(&r, "first", "/etc/sudoers.d/waagent"),
        "440 root root"
    );
    let sshd = r.file("first", "/etc/ssh/sshd_config");
    for want in [
        "PasswordAuthentication yes",
        "ChallengeResponseAuthentication yes",
        "ClientAliveInterval 180",
    ] {
        assert_eq!(
            sshd.lines().filter(|l| *l == want).count(),
            1,
            "{want} in:\n{sshd}"
        );
    }
    // Debian's sshd_config includes sshd_config.d first: our drop-in is there.
    let drop_in = r.file("first", "/etc/ssh/sshd_config.d/00-waagent.conf");
    assert!(
        drop_in.contains("\nPasswordAuthentication yes\n"),
        "{drop_in}"
    );

    // Host keys of the configured type, and the fabric got their fingerprint.
    let host_keys = r.ev("first", "host_keys");
    assert_eq!(
        host_keys.lines().collect::<Vec<_>>(),
        ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    );
    let fp = r.ev("first", "fingerprints");
    let fp = fp.split_whitespace().nth(1).unwrap_or("").replace(':', "");
    let props = r.records("roleProperties");
    assert_eq!(props.len(), 2, "{ctx}");
    assert_eq!(props[0]["thumbprint"], fp.as_str());

    assert_eq!(r.ev("first", "hostname").trim(), "web-01.contoso.internal");
    let saved = r.file("first", "/var/lib/waagent/ovf-env.xml");
    assert!(saved.contains("<UserName>azureuser</UserName>"));
    assert!(
        !saved.contains("Sup3r"),
        "the saved ovf-env.xml has the password:\n{saved}"
    );
    assert_eq!(
        mode_of(&r, "first", "/var/lib/waagent/ovf-env.xml"),
        "600 root root"
    );
    assert_eq!(mode_of(&r, "first", "/var/lib/waagent"), "700 root root");
    assert_eq!(r.file("first", "/var/lib/waagent/provisioned"), INSTANCE_ID);
    assert_eq!(
        r.file("first", "/var/tmp/custom-data-ran").trim(),
        "hello from custom data"
    );

    // The reports: NotReady/Provisioning then Ready, for incarnation 1 of the
    // simulator's container and instance — on the first boot and again for
    // the captured image, never on the reboot.
    let reports = r.records("health");
    assert_eq!(
        states(&reports),
        [
            "NotReady/Provisioning",
            "Ready",
            "NotReady/Provisioning",
            "Ready"
        ],
        "{ctx}"
    );
    let sim = waagent::sim::SimConfig::default();
    for h in &reports {
        assert_eq!(h["incarnation"], "1");
        assert_eq!(h["container"], sim.container_id.as_str());
        assert_eq!(h["instance"], sim.instance_id.as_str());
    }
    assert_eq!(reports[0]["description"], "Starting");

    // --- reboot: nothing reported (above), nothing written ---
    assert_eq!(r.ev("reboot", "daemon.rc").trim(), "0");
    assert_eq!(
        r.ev("reboot", "changed"),
        "",
        "files changed by the second start\n{ctx}"
    );
    for f in [
        "passwd",
        "hash",
        "host_keys",
        "fingerprints",
        "_home_azureuser_.ssh_authorized_keys",
        "_etc_sudoers.d_waagent",
    ] {
        assert_eq!(r.ev("first", f), r.ev("reboot", f), "{f} changed on reboot");
    }

    // --- captured image: provisioned again, keys not duplicated ---
    assert_eq!(
        r.file("captured", "/var/lib/waagent/provisioned"),
        "04030201-0605-0807-0910-111213141516"
    );
    assert_eq!(
        r.file("captured", "/home/azureuser/.ssh/authorized_keys"),
        keys
    );
    assert_eq!(
        r.file("captured", "/etc/sudoers.d/waagent"),
        "azureuser ALL=(ALL) ALL\n"
    );

    // --- deprovision+user undoes it, but for the account: this instance
    // found it in the (captured) image, so it is not this one's to delete ---
    assert_eq!(
        r.ev("deprovision", "rc").trim(),
        "0",
        "{}",
        r.ev("deprovision", "out")
    );
    assert_eq!(r.ev("deprovision", "passwd"), r.ev("captured", "passwd"));
    assert_eq!(r.ev("deprovision", "users"), r.ev("captured", "users"));
    assert!(r.ev("deprovision", "out").contains(
        "NOTE: azureuser is not deleted: provisioning did not create it (it was already on the system, or was refused)."
    ));
    assert_eq!(r.ev("deprovision", "lib"), "");
    assert_eq!(r.ev("deprovision", "host_keys"), "");
    assert_eq!(
        r.file("deprovision", "/etc/ssh/sshd_config.d/00-waagent.conf"),
        ""
    );
    assert_eq!(
        r.ev("deprovision", "hostname").trim(),
        "localhost.localdomain"
    );
}

/// `-deprovision+user` deletes the account provisioning created, and no
/// other: not one the image had (whose home another account may share),
/// not one provisioning refused. Real useradd and userdel, in the sandbox.
#[test]
fn deprovision_user_deletes_only_the_account_provisioning_created() {
    if sandbox::skip("deprovision_user_deletes_only_the_account_provisioning_created") {
        return;
    }
    let data = Path::new(MANIFEST).join("test-data/ovf");
    let full = std::fs::read_to_string(data.join("full.xml")).unwrap();
    let accounts = |r: &Run| r.ev("deprovision", "accounts");
    let deprovision = "cd /work; rc=0\n\
        ./waagent -deprovision+user -force -configuration-path:/work/waagent.conf > ev/deprovision/out 2>&1 || rc=$?\n\
        echo $rc > ev/deprovision/rc\n\
        getent passwd azureuser > /work/ev/deprovision/passwd || true\n\
        cut -d: -f1,3,6 /etc/passwd > /work/ev/deprovision/accounts\n\
        cat /etc/sudoers.d/waagent > /work/ev/deprovision/_etc_sudoers.d_waagent 2>/dev/null || true\n\
        find /home /srv -mindepth 1 -maxdepth 2 2>/dev/null | sort > /work/ev/deprovision/homes\n";

    // Created by provisioning: deleted, home and all.
    let r = run_custom("", &full, CONF, deprovision);
    assert_eq!(
        r.ev("first", "passwd").split(':').next(),
        Some("azureuser"),
        "{}",
        r.context()
    );
    assert_eq!(
        r.ev("deprovision", "rc").trim(),
        "0",
        "{}",
        r.ev("deprovision", "out")
    );
    assert!(r
        .ev("deprovision", "out")
        .contains("WARNING! azureuser account and entire home directory will be deleted."));
    assert!(!accounts(&r).contains("azureuser:"), "{}", accounts(&r));
    assert!(!r.ev("deprovision", "homes").contains("/home/azureuser"));
    assert_eq!(r.file("deprovision", "/etc/sudoers.d/waagent"), "");

    // The image already had azureuser, whose home is a directory shared
    // with the web server: provisioning adopts it; deprovisioning keeps the
    // account and every file of the shared directory.
    let pre = "mkdir -p /srv/www && echo site > /srv/www/index.html\n\
               useradd -u 1500 -d /srv/www -M azureuser\n";
    let r = run_custom(pre, &full, CONF, deprovision);
    assert_eq!(
        states(&r.records("health")).last().map(String::as_str),
        Some("Ready"),
        "{}",
        r.context()
    );
    assert_eq!(
        r.ev("deprovision", "rc").trim(),
        "0",
        "{}",
        r.ev("deprovision", "out")
    );
    assert!(
        accounts(&r).contains("azureuser:1500:/srv/www\n"),
        "{}",
        accounts(&r)
    );
    assert!(r.ev("deprovision", "homes").contains("/srv/www/index.html"));
    assert!(r.ev("deprovision", "out").contains(
        "NOTE: azureuser is not deleted: provisioning did not create it (it was already on the system, or was refused)."
    ));
    assert!(!r
        .ev("deprovision", "out")
        .contains("WARNING! azureuser account"));

    // A name provisioning refused (nobody, a system account) is kept too.
    let nobody = std::fs::read_to_string(data.join("minimal.xml"))
        .unwrap()
        .replace("<UserName>u</UserName>", "<UserName>nobody</UserName>");
    let r = run_custom("", &nobody, CONF, deprovision);
    assert_eq!(
        states(&r.records("health")).last().map(String::as_str),
        Some("NotReady/ProvisioningFailed"),
        "{}",
        r.context()
    );
    assert!(accounts(&r).contains("nobody:65534:"), "{}", accounts(&r));
    assert!(r
        .ev("deprovision", "out")
        .contains("NOTE: nobody is not deleted: provisioning did not create it"));
}

/// Each bad input ends in NotReady/ProvisioningFailed naming the cause,
/// with no user made and `provisioned` not written.
#[test]
fn bad_input_fails_provisioning_with_its_reason() {
    if sandbox::skip("bad_input_fails_provisioning_with_its_reason") {
        return;
    }
    let data = Path::new(MANIFEST).join("test-data/ovf");
    let full = std::fs::read_to_string(data.join("full.xml")).unwrap();
    let huge = full.replace(
        "IyEvYmluL3NoCmVjaG8gJ2hlbGxvIGZyb20gY3VzdG9tIGRhdGEnID4gL3Zhci90bXAvY3VzdG9tLWRhdGEtcmFuCg==",
        &"QUFB".repeat(80_000),
    );
    let system_user = full
        .replace(
            "<UserName>azureuser</UserName>",
            "<UserName>daemon</UserName>",
        )
        .replace("$HOME/azureuser/", "$HOME/daemon/")
        .replace("/home/azureuser/", "/home/daemon/");
    let bad_tp = full.replace(
        "f00305206abf9dafcebfe9a1cb2e6b9fff18fc69",
        "0000000000000000000000000000000000000001",
    );
    let cases: Vec<(String, String, &str)> = [
        "bad-no-username.xml",
        "bad-root.xml",
        "bad-user-semicolon.xml",
        "bad-user-dotdot.xml",
        "bad-user-too-long.xml",
        "bad-key-path.xml",
        "bad-hostname.xml",
        "bad-fingerprint.xml",
        "bad-malformed.xml",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read_to_string(data.join(f)).unwrap(),
            "",
        )
    })
    .chain([
        ("huge custom data".to_string(), huge, "CustomData"),
        (
            "system user".to_string(),
            system_user,
            "refusing to provision the system account daemon",
        ),
        (
            "no such certificate".to_string(),
            bad_tp,
            "no certificate with thumbprint 0000000000000000000000000000000000000001",
        ),
    ])
    .collect();
    let host_users: BTreeSet<String> = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect();
    for (name, xml, must_mention) in cases {
        let r = run(&xml, CONF, "first");
        let reports = r.records("health");
        let last = reports
            .last()
            .unwrap_or_else(|| panic!("{name}: no report\n{}", r.context()));
        assert_eq!(last["state"], "NotReady", "{name}");
        assert_eq!(
            last["subStatus"],
            "ProvisioningFailed",
            "{name}: {}",
            r.context()
        );
        let description = last["description"].as_str().unwrap_or("");
        assert!(
            !description.is_empty() && !description.contains('\n'),
            "{name}: {description:?}"
        );
        assert!(description.contains(must_mention), "{name}: {description}");
        // The reason is in the log too, and no Ready was ever sent.
        assert!(
            r.log()
                .contains(&format!("provisioning failed: {description}")),
            "{name}"
        );
        assert!(!states(&reports).contains(&"Ready".to_string()), "{name}");
        // Nobody new in /etc/passwd; nothing marked provisioned.
        let users: BTreeSet<String> = r
            .ev("first", "users")
            .lines()
            .filter_map(|l| l.split(':').next().map(str::to_string))
            .collect();
        let new: Vec<_> = users.difference(&host_users).collect();
        assert!(new.is_empty(), "{name}: users made: {new:?}");
        assert_eq!(
            r.file("first", "/var/lib/waagent/provisioned"),
            "",
            "{name}"
        );
        assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{name}");
        eprintln!("{name}: {description}");
    }
}

/// A failed provisioning leaves nothing half-done, so the next start simply
/// provisions.
#[test]
fn a_later_start_retries_cleanly_after_a_failure() {
    if sandbox::skip("a_later_start_retries_cleanly_after_a_failure") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let r = run(&full, CONF, "retry");
    assert!(r.output.status.success(), "{}", r.context());
    let reports = r.records("health");
    assert_eq!(
        states(&reports),
        [
            "NotReady/Provisioning",
            "NotReady/ProvisioningFailed",
            "NotReady/Provisioning",
            "Ready"
        ],
        "{}",
        r.context()
    );
    assert!(reports[1]["description"]
        .as_str()
        .unwrap_or("")
        .starts_with("no certificate with thumbprint F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC69"));
    assert_eq!(r.ev("first", "passwd"), "");
    assert_eq!(r.file("first", "/var/lib/waagent/provisioned"), "");
    assert!(r.ev("retry", "passwd").starts_with("azureuser:x:"));
    assert_eq!(r.file("retry", "/var/lib/waagent/provisioned"), INSTANCE_ID);
    assert_eq!(
        // The certificate's key and the inline one (this fabric's IMDS has none).
        r.file("retry", "/home/azureuser/.ssh/authorized_keys")
            .lines()
            .count(),
        2
    );
}

/// SIGKILL at every state and every provisioning step, then a normal start:
/// the VM converges to what an uninterrupted first boot makes — one user,
/// one sudoers line, each key once, no temporary file left — and Ready is
/// reported exactly once.
#[test]
fn killed_at_any_step_the_next_start_converges() {
    if sandbox::skip("killed_at_any_step_the_next_start_converges") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let mut points: Vec<String> = ["Boot", "ReadMedia", "Connect", "ReportStarting", "Plan"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    points.extend(
        waagent::daemon::Step::ALL
            .iter()
            .map(|s| format!("Provision:{s:?}")),
    );
    points.extend(
        ["MarkProvisioned", "ReportReady", "Steady"]
            .iter()
            .map(|s| s.to_string()),
    );
    for point in &points {
        let r = run_with(&full, CONF, "crash", point);
        let ctx = format!("{point}: {}", r.context());
        assert_eq!(r.ev("", "crash.rc").trim(), "137", "{ctx}");
        assert!(
            r.log().contains(&format!("killing myself at {point}")),
            "{ctx}"
        );
        assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
        assert_eq!(r.ev("first", "passwd_count").trim(), "1", "{ctx}");
        assert!(
            password::verify(FULL_PASSWORD, r.ev("first", "hash").trim()),
            "{ctx}"
        );
        assert_eq!(
            r.file("first", "/etc/sudoers.d/waagent"),
            "azureuser ALL=(ALL) ALL\n",
            "{ctx}"
        );
        let keys = r.file("first", "/home/azureuser/.ssh/authorized_keys");
        assert_eq!(keys.lines().count(), 3, "{ctx}\n{keys}");
        assert_eq!(
            mode_of(&r, "first", "/home/azureuser/.ssh/authorized_keys"),
            "600 azureuser azureuser"
        );
        assert_eq!(
            r.file("first", "/var/lib/waagent/provisioned"),
            INSTANCE_ID,
            "{ctx}"
        );
        let lib = r.ev("first", "lib_all");
        assert!(
            !lib.lines()
                .any(|l| l.ends_with(".tmp") || l.starts_with(".waagent-crypto")),
            "{ctx}\n{lib}"
        );
        let journal: Value = serde_json::from_str(&r.ev("first", "journal")).unwrap_or_default();
        assert_eq!(journal["stepsDone"], serde_json::json!([]), "{ctx}");
        assert_eq!(journal["readyReported"], "1", "{ctx}");
        let finals: Vec<String> = states(&r.records("health"))
            .into_iter()
            .filter(|s| !s.ends_with("/Provisioning"))
            .collect();
        assert_eq!(finals, ["Ready"], "{ctx}");
        // Killed before the Ready report, the next start (provisioned
        // already) reports Ready with the host key's fingerprint, as the
        // first would have.
        assert_host_keys(&r, "first", &[("ED25519", 256)], true, &ctx);
        eprintln!("{point}: converged");
    }
}

/// `phase`'s host keys are exactly `want` (type as `ssh-keygen -l` names
/// it, bits), 0600 private and 0644 public, nothing else left in /etc/ssh
/// (no key generation's working directory), and (when `reported`) the last
/// role-properties report carries the first type's fingerprint as
/// `ssh-keygen -lf` prints it.
fn assert_host_keys(r: &Run, phase: &str, want: &[(&str, u32)], reported: bool, ctx: &str) {
    let mut got: Vec<(String, u32)> = r
        .ev(phase, "fingerprints")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let kind = f
                .last()
                .unwrap_or(&"")
                .trim_matches(|c| c == '(' || c == ')');
            (kind.to_string(), f[0].parse().unwrap_or(0))
        })
        .collect();
    got.sort();
    let mut want_sorted: Vec<(String, u32)> =
        want.iter().map(|(k, b)| (k.to_string(), *b)).collect();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "{ctx}");
    let modes = r.ev(phase, "host_key_modes");
    assert_eq!(modes.lines().count(), 2 * want.len(), "{modes}\n{ctx}");
    for l in modes.lines() {
        let want_mode = if l.ends_with(".pub") { "644 " } else { "600 " };
        assert!(l.starts_with(want_mode), "{l}\n{ctx}");
    }
    assert_eq!(r.ev(phase, "ssh_dir_extra"), "", "{ctx}");
    let first = want[0].0;
    let fp = r
        .ev(phase, "fingerprints")
        .lines()
        .find(|l| l.ends_with(&format!("({first})")))
        .and_then(|l| l.split_whitespace().nth(1).map(|f| f.replace(':', "")))
        .unwrap_or_default();
    let props = r.records("roleProperties");
    let last = props.last().map(|p| p["thumbprint"].clone());
    assert_eq!(last, reported.then(|| Value::from(fp)), "{ctx}");
}

/// `Provisioning.SshHostKeyPairType=auto`: RSA 3072, ECDSA 256 and Ed25519
/// keys, as `ssh-keygen -A` makes them, each from its own `ssh-keygen`
/// started as soon as ovf-env.xml was read; the fabric gets the RSA key's
/// fingerprint. Killed while the DVD's mount runs (Connect), while the RSA
/// key's prime search is under way (ReportStarting), or at the steps that
/// collect the keys and restart sshd, the next start uses none of the
/// half-made keys, leaves nothing behind and reports Ready once.
#[test]
fn auto_host_keys_are_made_in_the_background_and_survive_a_kill() {
    if sandbox::skip("auto_host_keys_are_made_in_the_background_and_survive_a_kill") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let conf = CONF.replace(
        "Provisioning.SshHostKeyPairType=ed25519",
        "Provisioning.SshHostKeyPairType=auto",
    );
    let want = [("RSA", 3072), ("ECDSA", 256), ("ED25519", 256)];
    for point in [
        "",
        "Connect",
        "ReportStarting",
        "Provision:HostKeys",
        "Provision:RestartSshd",
    ] {
        let r = if point.is_empty() {
            run_with(&full, &conf, "crash", "")
        } else {
            run_with(&full, &conf, "crash", point)
        };
        let ctx = format!("{point}: {}", r.context());
        if !point.is_empty() {
            assert_eq!(r.ev("", "crash.rc").trim(), "137", "{ctx}");
        }
        if point == "ReportStarting" {
            // Killed with its ssh-keygen children at work: their directory
            // (whatever they had written) went at the next start.
            assert!(
                r.log()
                    .contains("left by a daemon stopped while it made host keys"),
                "{ctx}"
            );
        }
        assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
        assert_host_keys(&r, "first", &want, true, &ctx);
        let finals: Vec<String> = states(&r.records("health"))
            .into_iter()
            .filter(|s| !s.ends_with("/Provisioning"))
            .collect();
        assert_eq!(finals, ["Ready"], "{ctx}");
        // The daemon's own account of the way to Ready.
        let timeline = r
            .log()
            .lines()
            .find(|l| l.contains("timeline (ms since start): "))
            .map(String::from)
            .unwrap_or_default();
        for phase in ["dvd ", "goal-state ", "host-keys ", "sshd ", "report "] {
            assert!(timeline.contains(phase), "{phase}in {timeline}\n{ctx}");
        }
        assert!(timeline.contains("; Ready at "), "{timeline}");
        eprintln!("auto {point}: converged");
    }
}

/// Steady state, for real: a fabric that refuses the first connections is
/// retried until it answers (one Ready), and a host name the user changes
/// is made persistent and published by the monitor.
#[test]
fn steady_state_survives_a_slow_fabric_and_publishes_a_renamed_host() {
    if sandbox::skip("steady_state_survives_a_slow_fabric_and_publishes_a_renamed_host") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let conf =
        format!("{CONF}Provisioning.MonitorHostName=y\nProvisioning.MonitorHostNamePeriod=1\nOS.MonitorDhcpClientRestartPeriod=1\n");
    let r = run(&full, &conf, "steady");
    let ctx = r.context();
    assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
    let versions: Vec<u64> = r
        .records("request")
        .iter()
        .filter(|q| q["target"] == "/?comp=versions")
        .map(|q| q["status"].as_u64().unwrap_or(999))
        .collect();
    assert_eq!(versions, [0, 0, 200], "two resets, then the answer\n{ctx}");
    assert_eq!(
        states(&r.records("health")),
        ["NotReady/Provisioning", "Ready"],
        "{ctx}"
    );
    assert_eq!(
        r.ev("first", "published").trim(),
        "renamed-by-user",
        "{ctx}"
    );
    assert_eq!(r.ev("first", "etc_hostname").trim(), "renamed-by-user");
    assert!(
        r.log()
            .contains("host name changed from web-01.contoso.internal to renamed-by-user"),
        "{ctx}"
    );
    // The route to the WireServer, lost and restored after the DHCP client restarted.
    assert!(
        !r.ev("first", "routes_lost").contains("168.63.129.16 via"),
        "{ctx}"
    );
    assert!(
        r.ev("first", "routes_after")
            .contains("168.63.129.16 via 10.0.0.1"),
        "{}\n{ctx}",
        r.ev("first", "routes_after")
    );
    assert!(r.log().contains("the DHCP client restarted"), "{ctx}");
    assert!(
        r.log()
            .contains("added a route to 168.63.129.16 via 10.0.0.1"),
        "{ctx}"
    );
}

/// `LBProbeResponder=y` (§18.9): the daemon answers a real TCP client on
/// the VM's address and the goal state's port with `200 OK`, and only
/// there (not on loopback); the hostile entries beside the port are
/// refused by name; when the goal state moves the probe to another port,
/// the old one refuses connections and the new one answers. With
/// `LBProbeResponder=n` nothing listens.
#[test]
fn load_balancer_probes_are_answered_on_the_goal_states_ports() {
    if sandbox::skip("load_balancer_probes_are_answered_on_the_goal_states_ports") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let r = run(&full, &format!("{CONF}LBProbeResponder=y\n"), "lbprobe");
    let ctx = r.context();
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
    assert_eq!(r.ev("first", "daemon2.rc").trim(), "0", "{ctx}");
    assert_eq!(
        states(&r.records("health")),
        ["NotReady/Provisioning", "Ready"],
        "{ctx}"
    );
    assert_eq!(r.ev("first", "on_vm_address"), reply, "{ctx}");
    assert_eq!(r.ev("first", "on_vm_address.rc").trim(), "0", "{ctx}");
    // Bound to the VM's address, not to every address.
    assert_ne!(r.ev("first", "on_loopback.rc").trim(), "0", "{ctx}");
    assert!(
        r.ev("first", "on_loopback.err")
            .contains("Connection refused"),
        "{ctx}"
    );
    // The port the goal state dropped refuses; the new one answers.
    assert_ne!(r.ev("first", "dropped.rc").trim(), "0", "{ctx}");
    assert!(
        r.ev("first", "dropped.err").contains("Connection refused"),
        "{}\n{ctx}",
        r.ev("first", "dropped.err")
    );
    assert_eq!(r.ev("first", "moved"), reply, "{ctx}");
    assert_eq!(r.ev("first", "moved.rc").trim(), "0", "{ctx}");
    // LBProbeResponder=n: the same goal state, nothing listening.
    assert!(
        r.ev("first", "disabled.err").contains("Connection refused"),
        "{ctx}"
    );
    let log = r.log();
    for (n, bad) in [(2, "0"), (3, "99999"), (4, "abc")] {
        let want = format!(
            "LBProbeResponder: goal state /GoalState/Machine/LBProbePorts/Port[{n}]: \"{bad}\" is not a port (1-65535): not listened on"
        );
        assert!(log.contains(&want), "{want}\n{ctx}");
    }
    // Each port opened once, though the duplicate was named twice.
    assert_eq!(
        log.matches("answering load-balancer probes on 10.0.0.4:16001")
            .count(),
        1,
        "{ctx}"
    );
}

/// Root writes keys into a tree the user owns, so every planted trap there
/// is refused: a symlink at any directory of a key path (even a path that
/// is not the default one), a FIFO or a hard link to /etc/shadow at
/// authorized_keys, a symlink at a key pair's file. Each ends in
/// ProvisioningFailed naming the trap, and nothing outside the home changes.
/// (The race itself cannot be timed; the traps are there before the agent.)
#[test]
fn key_files_are_written_through_descriptors_never_through_a_planted_link() {
    if sandbox::skip("key_files_are_written_through_descriptors_never_through_a_planted_link") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    // The image's user, whose home the traps are in.
    let user = "useradd -u 1500 -m azureuser\nmkdir -p /home/azureuser/.ssh\n";
    // What is outside the home afterwards, and a checksum of /etc/shadow
    // less the lines provisioning may change (root's and azureuser's).
    let post = "cd /work\n\
        find /root/.ssh /etc/cron.d -mindepth 1 -printf '%p %s %m %u\\n' 2>&1 | sort > ev/first/outside\n\
        grep -v '^root:\\|^azureuser:' /etc/shadow | md5sum > ev/first/shadow_rest\n\
        f=/home/azureuser/.ssh/authorized_keys; [ ! -f $f ] || cat $f > ev/first/keys\n\
        [ ! -f $f ] || stat -c %u $f > ev/first/keys_owner\n";
    let before = "cd /work; mkdir -p ev/first\n\
        find /root/.ssh /etc/cron.d -mindepth 1 -printf '%p %s %m %u\\n' 2>&1 | sort > ev/outside_before\n\
        grep -v '^root:\\|^azureuser:' /etc/shadow | md5sum > ev/shadow_rest_before\n";
    let cases = [
        (
            "~/.ssh is a symlink to root's",
            "mkdir -p /root/.ssh; rm -rf /home/azureuser/.ssh; ln -s /root/.ssh /home/azureuser/.ssh\n",
            full.clone(),
            "/home/azureuser/.ssh is a symbolic link; refusing to write through it as root",
        ),
        (
            "a directory of a non-default key path is a symlink to /etc",
            "ln -s /etc /home/azureuser/conf\n",
            full.replace(
                "<Path>/home/azureuser/.ssh/authorized_keys</Path>",
                "<Path>/home/azureuser/conf/cron.d/authorized_keys</Path>",
            ),
            "/home/azureuser/conf is a symbolic link; refusing to write through it as root",
        ),
        (
            "authorized_keys is a FIFO",
            "mkfifo /home/azureuser/.ssh/authorized_keys\n",
            full.clone(),
            "/home/azureuser/.ssh/authorized_keys is not a regular file; refusing to write through it as root",
        ),
        (
            "authorized_keys is a hard link to /etc/shadow",
            "ln /etc/shadow /home/azureuser/.ssh/authorized_keys\n",
            full.clone(),
            // By the time keys are written, chpasswd has replaced /etc/shadow,
            // so the link is the old shadow's only one; root's, all the same.
            "/home/azureuser/.ssh/authorized_keys is owned by uid 0, not the user's; refusing to write through it as root",
        ),
        (
            "authorized_keys is a hard link to a file that stays",
            "ln /etc/login.defs /home/azureuser/.ssh/authorized_keys\n",
            full.clone(),
            "/home/azureuser/.ssh/authorized_keys is a file with other hard links; refusing to write through it as root",
        ),
        (
            "the key pair's file is a symlink into /etc/cron.d",
            "mkdir -p /etc/cron.d; ln -s /etc/cron.d/evil /home/azureuser/.ssh/id_rsa\n",
            full.clone(),
            "/home/azureuser/.ssh/id_rsa is a symbolic link; refusing to write through it as root",
        ),
    ];
    for (name, trap, ovf, reason) in cases {
        // The user's own tree is theirs; the traps keep their owners.
        let pre = format!(
            "{user}chown -h -R 1500:1500 /home/azureuser\n{trap}chown -h 1500:1500 /home/azureuser/* /home/azureuser/.ssh 2>/dev/null || true\n{before}"
        );
        let r = run_custom(&pre, &ovf, CONF, post);
        let reports = r.records("health");
        assert_eq!(
            states(&reports).last().map(String::as_str),
            Some("NotReady/ProvisioningFailed"),
            "{name}\n{}",
            r.context()
        );
        let description = reports.last().unwrap()["description"]
            .as_str()
            .unwrap_or("");
        assert!(description.ends_with(reason), "{name}: {description}");
        assert_eq!(
            std::fs::read_to_string(r.dir.path().join("ev/outside_before")).unwrap(),
            r.ev("first", "outside"),
            "{name}: something changed outside the home"
        );
        assert_eq!(
            std::fs::read_to_string(r.dir.path().join("ev/shadow_rest_before")).unwrap(),
            r.ev("first", "shadow_rest"),
            "{name}"
        );
        // Shadow's content is never handed to the user.
        assert!(
            !(r.ev("first", "keys").contains("root:")
                && r.ev("first", "keys_owner").trim() == "1500"),
            "{name}: shadow's content is the user's"
        );
    }
}

/// One NotReady/Provisioning and one Ready, the daemon stopped cleanly and
/// the custom data ran exactly once.
fn assert_ready_after_one_run(r: &Run, ctx: &str) {
    assert_eq!(
        states(&r.records("health")),
        ["NotReady/Provisioning", "Ready"],
        "{ctx}"
    );
    assert_eq!(r.ev("last", "daemon.rc").trim(), "0", "{ctx}");
    assert_eq!(r.ev("last", "runs"), "run\n", "{ctx}");
}

/// full.xml with `script` as its custom data, run by the `customdata`
/// phase: `mode` "sigterm" stops the daemon while the script runs and
/// starts it again; `timeout` is the custom-data timeout hook's value.
fn run_custom_data(script: &str, mode: &str, timeout: &str) -> Run {
    use base64::Engine;
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(script);
    let ovf = full.replace(
        "IyEvYmluL3NoCmVjaG8gJ2hlbGxvIGZyb20gY3VzdG9tIGRhdGEnID4gL3Zhci90bXAvY3VzdG9tLWRhdGEtcmFuCg==",
        &encoded,
    );
    assert_ne!(ovf, full);
    run_env(
        &ovf,
        CONF,
        "customdata",
        &[("MODE", mode), ("CD_TIMEOUT", timeout)],
    )
}

/// Records its pid and a run, closes its output and hangs.
const HANGING_SCRIPT: &str = "#!/bin/sh
echo $$ > /var/tmp/custom-data-pid
echo run >> /var/tmp/custom-data-runs
exec >/dev/null 2>&1
exec sleep 600
";

/// A script that closed its output and hangs is killed at its timeout, and
/// provisioning goes on to Ready (its failure is only a warning, as in
/// waagent); the daemon then stops on SIGTERM.
#[test]
fn a_hanging_custom_data_script_times_out_and_ready_is_reported() {
    if sandbox::skip("a_hanging_custom_data_script_times_out_and_ready_is_reported") {
        return;
    }
    let r = run_custom_data(HANGING_SCRIPT, "timeout", "3");
    let ctx = r.context();
    assert_ready_after_one_run(&r, &ctx);
    assert_eq!(
        r.ev("last", "pid_alive"),
        "",
        "the script outlived its timeout\n{ctx}"
    );
    assert!(
        r.log().contains("did not finish within 3s and was killed"),
        "{ctx}"
    );
}

/// SIGTERM while the script hangs (with the production timeout of an hour)
/// stops the daemon at once and leaves the script running; the next start
/// does not run it again and reports Ready.
#[test]
fn sigterm_stops_the_daemon_while_custom_data_hangs() {
    if sandbox::skip("sigterm_stops_the_daemon_while_custom_data_hangs") {
        return;
    }
    let r = run_custom_data(HANGING_SCRIPT, "sigterm", "");
    let ctx = r.context();
    assert_eq!(r.ev("first", "daemon.rc").trim(), "0", "{ctx}");
    assert_eq!(r.ev("first", "reports").trim(), "0", "{ctx}");
    assert_eq!(r.ev("first", "script_alive"), "yes\n", "{ctx}");
    assert!(
        r.log()
            .contains("the agent is stopping: abandoning /var/lib/waagent/CustomData"),
        "{ctx}"
    );
    assert_eq!(r.ev("last", "daemon.rc").trim(), "0", "{ctx}");
    let finals: Vec<String> = states(&r.records("health"))
        .into_iter()
        .filter(|s| !s.ends_with("/Provisioning"))
        .collect();
    assert_eq!(finals, ["Ready"], "{ctx}");
    assert_eq!(r.ev("last", "runs"), "run\n", "run again\n{ctx}");
}

/// A script that starts a service in the background, which keeps the
/// output pipes open, and exits: Ready at once, and the service lives on.
#[test]
fn a_service_started_by_custom_data_survives_and_ready_is_reported() {
    if sandbox::skip("a_service_started_by_custom_data_survives_and_ready_is_reported") {
        return;
    }
    let script = "#!/bin/sh
echo run >> /var/tmp/custom-data-runs
sleep 600 &
echo $! > /var/tmp/custom-data-bgpid
echo 'started a service'
exit 0
";
    let r = run_custom_data(script, "background", "");
    let ctx = r.context();
    assert_ready_after_one_run(&r, &ctx);
    assert_eq!(
        r.ev("last", "bgpid_alive"),
        "yes\n",
        "the service was killed\n{ctx}"
    );
}

/// Hostile media: ovf-env.xml on a real ISO is a symlink to /etc/shadow, or
/// a FIFO. The document is opened without following links and must be a
/// regular file, so each ends in ProvisioningFailed saying which, at once,
/// and nothing of /etc/shadow is read. The media is mounted read-only,
/// nodev, nosuid and noexec.
#[test]
fn hostile_media_is_mounted_without_exec_and_its_links_are_not_followed() {
    if sandbox::skip("hostile_media_is_mounted_without_exec_and_its_links_are_not_followed") {
        return;
    }
    let conf = format!("{CONF}Logs.Verbose=y\n");
    for (what, make, reason) in [
        (
            "a symlink to /etc/shadow",
            "ln -s /etc/shadow",
            "/mnt/cdrom/secure/ovf-env.xml is a symbolic link; refused",
        ),
        (
            "a FIFO",
            "mkfifo",
            "/mnt/cdrom/secure/ovf-env.xml is not a regular file; refused",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        let made = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{make} \"$1/ovf-env.xml\" && xorriso -as mkisofs -quiet -o \"$2\" -R -J \"$1\""
            ))
            .args([
                "sh",
                &stage.to_string_lossy(),
                &dir.path().join("ovf.iso").to_string_lossy(),
            ])
            .status()
            .unwrap();
        assert!(made.success(), "{what}: cannot make the ISO");
        let r = run_in(dir, "", &conf, "first", &[]);
        let reports = r.records("health");
        assert_eq!(
            states(&reports).last().map(String::as_str),
            Some("NotReady/ProvisioningFailed"),
            "{what}\n{}",
            r.context()
        );
        let description = reports.last().unwrap()["description"]
            .as_str()
            .unwrap_or("");
        assert_eq!(
            description,
            format!("provisioning media: {reason}"),
            "{what}"
        );
        assert!(
            r.ev("first", "lib").lines().all(|f| f != "ovf-env.xml"),
            "{what}"
        );
        let log = r.log();
        assert!(
            log.contains(
                "started mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 /mnt/cdrom/secure"
            ),
            "{what}: {log}"
        );
        assert!(!log.contains("root:"), "{what}: shadow in the log");
    }
}

/// The files the agent replaces keep their SELinux label (and other
/// extended attributes), on the sandbox's tmpfs: /etc/shadow (root locked,
/// `Provisioning.DeleteRootPassword=y`, as the RHEL conf sets), /etc/hostname
/// and sshd_config. The image's user is adopted and no password is set, so
/// the agent is the only one to rewrite /etc/shadow (useradd and chpasswd
/// would label their own copy only where SELinux runs).
#[test]
fn replaced_system_files_keep_their_selinux_label() {
    if sandbox::skip("replaced_system_files_keep_their_selinux_label") {
        return;
    }
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let no_password = full.replace(
        "<UserPassword>Sup3r$ecret P@ss &amp; más &lt;x&gt;</UserPassword>",
        "",
    );
    let files = "/etc/shadow /etc/hostname /etc/ssh/sshd_config";
    let pre = format!(
        "useradd -u 1500 -m azureuser\n\
         for f in {files}; do\n\
             setfattr -n security.selinux -v system_u:object_r:label_of$(echo $f | tr / _)_t:s0 $f\n\
             setfattr -n user.origin -v image $f\n\
         done\n"
    );
    let post = format!(
        "cd /work\n\
         for f in {files}; do\n\
             echo \"$f $(stat -c %i $f) $(getfattr --absolute-names -n security.selinux --only-values $f) $(getfattr --absolute-names -n user.origin --only-values $f)\"\n\
         done > ev/first/labels 2>&1\n\
         grep '^root:' /etc/shadow | cut -d: -f2 > ev/first/root_field\n"
    );
    let r = run_custom(&pre, &no_password, CONF, &post);
    assert_eq!(
        states(&r.records("health")).last().map(String::as_str),
        Some("Ready"),
        "{}",
        r.context()
    );
    // The agent did replace /etc/shadow (root is locked) and the others.
    assert_eq!(r.ev("first", "root_field").trim(), "*LOCK*");
    assert_eq!(r.ev("first", "hostname").trim(), "web-01.contoso.internal");
    let labels = r.ev("first", "labels");
    for f in ["/etc/shadow", "/etc/hostname", "/etc/ssh/sshd_config"] {
        let label = format!("system_u:object_r:label_of{}_t:s0", f.replace('/', "_"));
        let line = labels
            .lines()
            .find(|l| l.starts_with(&format!("{f} ")))
            .unwrap_or("");
        assert!(line.ends_with(&format!(" {label} image")), "{f}: {labels}");
    }
}
