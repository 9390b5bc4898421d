//! VM extensions end to end: the real `waagent -daemon`, as root in the
//! throwaway-VM sandbox, runs real shell-script handlers from real zip
//! packages that `fabric-sim` serves on the platform addresses inside the
//! sandbox's own network namespace. A driver script changes the handlers
//! (`--handlers` file) and waits for what they log; the assertions are made
//! here, on the handlers' log, the files left and every status the fabric
//! received.

#[path = "common/sandbox.rs"]
mod sandbox;
#[path = "common/vm.rs"]
mod vm;

use std::io::{Cursor, Write};
use std::path::Path;
use std::process::Stdio;

use sandbox::{Options, Sandbox};
use serde_json::{json, Value};
use vm::DMI_UUID;
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

/// The handler every package carries, in shell: it logs each call with
/// what it was given to `/work/calls`, and `enable` writes the status of
/// its sequence number. `$BEHAVIOUR` (in the package) changes `enable` and
/// `install`: `hang`, `malformed`, `service`, `slow-install`.
const HANDLER: &str = r#"#!/bin/sh
cd "$(dirname "$0")/.." || exit 9
op=$1
behaviour=$(cat behaviour 2>/dev/null)
echo "$op $AZURE_GUEST_AGENT_EXTENSION_VERSION seq=$ConfigSequenceNumber version=${VERSION:-} from=${AZURE_GUEST_AGENT_UPDATING_FROM_VERSION:-} disable=${AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE:-} uninstall=${AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE:-} wire=$AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS cwd=$(pwd) path=$AZURE_GUEST_AGENT_EXTENSION_PATH" >> /work/calls
case "$op:$behaviour" in
install:slow-install)
    echo "install-start" >> /work/calls
    sleep 3
    echo "install-done" >> /work/calls
    ;;
enable:hang)
    sleep 1000
    ;;
enable:*)
    seq=$ConfigSequenceNumber
    cp "config/$seq.settings" "/work/settings.$seq"
    cp HandlerEnvironment.json "/work/environment.$AZURE_GUEST_AGENT_EXTENSION_VERSION.json"
    mkdir -p status
    if [ "$behaviour" = malformed ]; then
        echo '{"not": "a status' > "status/$seq.status"
        touch -d '1 hour ago' "status/$seq.status"
    else
        printf '[{"version":1.0,"timestampUTC":"2026-12-04T00:00:00Z","status":{"name":"Echo","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"enabled %s"}}}]' "$seq" > "status/$seq.status"
    fi
    if [ "$behaviour" = service ]; then
        sleep 300 > /dev/null 2>&1 &
        echo $! > /work/service.pid
    fi
    ;;
esac
exit 0
"#;

const MANIFEST: &str = r#"[{"name":"Echo","version":1.0,"handlerManifest":{
 "installCommand":"bin/handler.sh install","uninstallCommand":"bin/handler.sh uninstall",
 "updateCommand":"bin/handler.sh update","enableCommand":"bin/handler.sh enable",
 "disableCommand":"bin/handler.sh disable","rebootAfterInstall":false,
 "reportHeartbeat":false,"updateMode":"UpdateWithInstall"}}]"#;

/// A handler package: the manifest, the script (not executable in the zip,
/// as often in real ones) and the behaviour file.
fn package(behaviour: &str) -> Vec<u8> {
    vm::handler_package(
        &[
            ("HandlerManifest.json", MANIFEST),
            ("bin/handler.sh", HANDLER),
            ("behaviour", behaviour),
        ],
        0o644,
    )
}

/// Hostile packages: an entry climbing out of the handler directory, and
/// one that is a symbolic link to /etc.
fn zip_slip() -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default();
    w.start_file("HandlerManifest.json", o).unwrap();
    w.write_all(MANIFEST.as_bytes()).unwrap();
    w.start_file("../../../../work/slipped", o).unwrap();
    w.write_all(b"escaped").unwrap();
    w.finish().unwrap().into_inner()
}

fn symlink_package() -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default();
    w.start_file("HandlerManifest.json", o).unwrap();
    w.write_all(MANIFEST.as_bytes()).unwrap();
    w.add_symlink("etc", "/etc", o).unwrap();
    w.start_file("etc/linked", o).unwrap();
    w.write_all(b"through the link").unwrap();
    w.finish().unwrap().into_inner()
}

/// More entries than a handler may unpack (10,000): each one small, the
/// whole zip about a megabyte.
fn entry_bomb() -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("HandlerManifest.json", o).unwrap();
    w.write_all(MANIFEST.as_bytes()).unwrap();
    for i in 0..10_000 {
        w.start_file(format!("f{i}"), o).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The driver's functions; a scenario follows them.
const DRIVER: &str = r#"#!/bin/sh
set -u
cd /work
start_sim() {
    ./fabric-sim --wire 168.63.129.16:80 --plugin 168.63.129.16:32526 --imds 169.254.169.254:80 \
        --handlers /work/handlers.json --record /work/fabric.jsonl "$@" >> /work/fabric.log 2>&1 &
    sim=$!
    i=0; until grep -q 'fabric-sim:' /work/fabric.log 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && exit 90; sleep 0.05; done
}
start_daemon() {
    ./waagent -daemon -configuration-path:/work/waagent.conf >> /work/daemon.out 2>&1 &
    daemon=$!
}
stop_daemon() { kill -TERM $daemon; wait $daemon; echo "$?" >> /work/daemon.rc; }
# wait_for PATTERN FILE [SECONDS]: until FILE holds PATTERN (a fixed string).
wait_for() {
    i=0; limit=$(( ${3:-30} * 20 ))
    until grep -qF -- "$1" "$2" 2>/dev/null; do
        i=$((i+1))
        if [ $i -gt $limit ]; then echo "timed out waiting for '$1' in $2" >> /work/driver.err; return 1; fi
        sleep 0.05
    done
}
# phase NAME: the handlers of handlers-NAME.json from now on.
phase() { cp "/work/handlers-$1.json" /work/handlers.tmp && mv /work/handlers.tmp /work/handlers.json; echo "== $1" >> /work/calls; }
: > /work/calls
"#;

const CONF: &str = "Provisioning.Agent=disabled
Logs.File=/work/waagent.log
Logs.Verbose=y
Logs.Console=n
Extensions.GoalStatePeriod=1
Extensions.InitialGoalStatePeriod=1
Debug.ExtensionEnableTimeout=3
";

struct Run {
    dir: tempfile::TempDir,
    output: std::process::Output,
}

impl Run {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The handlers' log, phase by phase: `== NAME` lines start a phase.
    fn calls(&self) -> Vec<String> {
        self.read("calls").lines().map(str::to_string).collect()
    }

    /// The calls of one phase, each cut to its first two words
    /// (`install 1.0.0`).
    fn phase(&self, name: &str) -> Vec<String> {
        let all = self.calls();
        let start = all
            .iter()
            .position(|l| *l == format!("== {name}"))
            .map_or(all.len(), |i| i + 1);
        all[start..]
            .iter()
            .take_while(|l| !l.starts_with("== "))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Every status blob the fabric received, parsed.
    fn statuses(&self) -> Vec<Value> {
        self.read("fabric.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "status")
            .filter_map(|v| serde_json::from_str(v["content"].as_str()?).ok())
            .collect()
    }

    /// The last status the fabric received of handler `name`.
    fn last_handler_status(&self, name: &str) -> Value {
        self.statuses()
            .iter()
            .rev()
            .find_map(|s| {
                s["aggregateStatus"]["handlerAggregateStatus"]
                    .as_array()?
                    .iter()
                    .find(|h| h["handlerName"] == name)
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    fn context(&self) -> String {
        format!(
            "driver stderr:\n{}\n{}\ncalls:\n{}\nagent log (tail):\n{}",
            String::from_utf8_lossy(&self.output.stderr),
            self.read("driver.err"),
            self.read("calls"),
            self.read("waagent.log")
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

fn bin(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_waagent")).with_file_name(name)
}

/// Runs `scenario` (shell, after the driver's functions) in a fresh
/// sandbox with the packages and `phases` (name → handlers JSON) in /work.
fn run(packages: &[(&str, Vec<u8>)], phases: &[(&str, Value)], conf: &str, scenario: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for b in ["waagent", "fabric-sim"] {
        std::fs::copy(bin(b), d.join(b)).unwrap();
    }
    for (name, bytes) in packages {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    for (name, handlers) in phases {
        std::fs::write(
            d.join(format!("handlers-{name}.json")),
            handlers.to_string(),
        )
        .unwrap();
    }
    // The first phase is in force when the fabric starts.
    let first = phases
        .first()
        .map(|p| p.1.to_string())
        .unwrap_or("[]".into());
    std::fs::write(d.join("handlers.json"), first).unwrap();
    std::fs::write(d.join("waagent.conf"), conf).unwrap();
    let driver = d.join("driver.sh");
    std::fs::write(&driver, format!("{DRIVER}\n{scenario}\nexit 0\n")).unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let opts = Options::default().bind(d, "/work").dmi_uuid(DMI_UUID);
    let output = Sandbox::command(&opts, &["/work/driver.sh"])
        .stdin(Stdio::null())
        .output()
        .expect("run the sandbox");
    Run { dir, output }
}

fn echo(version: &str, state: &str, seq: u64, packages: &[&str]) -> Value {
    json!({
        "name": "Contoso.Test.Echo",
        "version": version,
        "state": state,
        "seqNo": seq,
        "publicSettings": {"message": format!("hello {seq}")},
        "packages": packages.iter().map(|v| json!({"version": v, "zip": format!("echo-{v}.zip")})).collect::<Vec<_>>(),
    })
}

/// Install and enable once each, with the right environment and settings;
/// a new sequence number re-enables; a restart (as after a reboot) enables
/// again without installing; an upgrade runs waagent's order; `disabled`
/// disables; removal uninstalls and deletes the handler's directory.
#[test]
fn a_handler_through_its_whole_lifecycle() {
    if sandbox::skip("a_handler_through_its_whole_lifecycle") {
        return;
    }
    let r = run(
        &[
            ("echo-1.0.0.zip", package("")),
            ("echo-1.1.0.zip", package("")),
        ],
        &[
            (
                "install",
                json!([echo("1.0.0", "enabled", 0, &["1.0.0", "1.1.0"])]),
            ),
            (
                "seq",
                json!([echo("1.0.0", "enabled", 1, &["1.0.0", "1.1.0"])]),
            ),
            (
                "upgrade",
                json!([echo("1.1.0", "enabled", 1, &["1.0.0", "1.1.0"])]),
            ),
            (
                "disable",
                json!([echo("1.1.0", "disabled", 1, &["1.0.0", "1.1.0"])]),
            ),
            ("remove", json!([])),
        ],
        CONF,
        r#"
start_sim
echo "== install" >> /work/calls
start_daemon
wait_for "enable 1.0.0 seq=0" /work/calls
# The status of seq 0 reaches the fabric.
wait_for 'enabled 0' /work/fabric.jsonl
ls -d /var/lib/waagent/Contoso.Test.Echo-* > /work/dirs.install
stat -c '%a' /var/lib/waagent/Contoso.Test.Echo-1.0.0/config/0.settings > /work/settings.mode
phase seq
wait_for "enable 1.0.0 seq=1" /work/calls
wait_for 'enabled 1' /work/fabric.jsonl
stop_daemon
echo "== restart" >> /work/calls
start_daemon
wait_for "== restart" /work/calls
i=0; until [ "$(grep -c '^enable' /work/calls)" -ge 3 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
sleep 1
phase upgrade
wait_for "enable 1.1.0" /work/calls
sleep 1
ls -d /var/lib/waagent/Contoso.Test.Echo-* > /work/dirs.upgrade
phase disable
wait_for "disable 1.1.0" /work/calls
sleep 1
cat /var/lib/waagent/Contoso.Test.Echo-1.1.0/config/HandlerState > /work/state.disable
phase remove
wait_for "uninstall 1.1.0" /work/calls
sleep 1.5
ls -d /var/lib/waagent/Contoso.Test.Echo-* > /work/dirs.remove 2>/dev/null
stop_daemon
"#,
    );
    let ctx = r.context();
    assert_eq!(r.read("driver.err"), "", "{ctx}");
    // Install, then enable, once each.
    assert_eq!(
        r.phase("install"),
        ["install 1.0.0", "enable 1.0.0"],
        "{ctx}"
    );
    let calls = r.calls();
    let enable = calls
        .iter()
        .find(|l| l.starts_with("enable 1.0.0 seq=0"))
        .unwrap();
    for want in [
        "wire=168.63.129.16",
        "cwd=/var/lib/waagent/Contoso.Test.Echo-1.0.0",
        "path=/var/lib/waagent/Contoso.Test.Echo-1.0.0",
    ] {
        assert!(enable.contains(want), "{enable} lacks {want}");
    }
    let settings: Value = serde_json::from_str(&r.read("settings.0")).unwrap();
    let hs = &settings["runtimeSettings"][0]["handlerSettings"];
    assert_eq!(hs["publicSettings"], json!({"message": "hello 0"}));
    assert!(hs.get("protectedSettings").is_some() && hs["protectedSettings"].is_null());
    assert_eq!(r.read("settings.mode").trim(), "600");
    let env: Value = serde_json::from_str(&r.read("environment.1.0.0.json")).unwrap();
    assert_eq!(
        env[0]["handlerEnvironment"]["statusFolder"],
        "/var/lib/waagent/Contoso.Test.Echo-1.0.0/status"
    );
    // The status blob parses and holds the handler's status and the agent's.
    let blob = r
        .statuses()
        .into_iter()
        .find(|s| s.to_string().contains("enabled 0"))
        .expect("a status with the extension's");
    assert_eq!(
        blob["aggregateStatus"]["guestAgentStatus"]["status"],
        "Ready"
    );
    let h = &blob["aggregateStatus"]["handlerAggregateStatus"][0];
    assert_eq!(h["handlerName"], "Contoso.Test.Echo");
    assert_eq!(h["handlerVersion"], "1.0.0");
    assert_eq!(h["status"], "Ready");
    let st = &h["runtimeSettingsStatus"];
    assert_eq!(st["sequenceNumber"], 0);
    assert_eq!(st["settingsStatus"]["status"]["status"], "success");
    assert_eq!(
        st["settingsStatus"]["status"]["formattedMessage"]["message"],
        "enabled 0"
    );
    // A new sequence number: enable again, nothing else.
    assert_eq!(r.phase("seq"), ["enable 1.0.0"], "{ctx}");
    // A restart: enabled again, not installed again.
    assert_eq!(r.phase("restart"), ["enable 1.0.0"], "{ctx}");
    // The upgrade in waagent's order, and the old directory gone.
    assert_eq!(
        r.phase("upgrade"),
        [
            "disable 1.0.0",
            "update 1.1.0",
            "uninstall 1.0.0",
            "install 1.1.0",
            "enable 1.1.0"
        ],
        "{ctx}"
    );
    let update = calls
        .iter()
        .find(|l| l.starts_with("update 1.1.0"))
        .unwrap();
    assert!(
        update.contains("version=1.1.0 from=1.0.0 disable=0"),
        "{update}"
    );
    let install = calls
        .iter()
        .find(|l| l.starts_with("install 1.1.0"))
        .unwrap();
    assert!(install.contains("uninstall=0"), "{install}");
    assert_eq!(
        r.read("dirs.upgrade").trim(),
        "/var/lib/waagent/Contoso.Test.Echo-1.1.0"
    );
    // disabled: disable, and the state says so.
    assert_eq!(r.phase("disable"), ["disable 1.1.0"], "{ctx}");
    assert_eq!(r.read("state.disable").trim(), "Installed");
    // Removed from the goal state: uninstall (it was not enabled), deleted.
    assert_eq!(r.phase("remove"), ["uninstall 1.1.0"], "{ctx}");
    assert_eq!(r.read("dirs.remove").trim(), "", "{ctx}");
    assert_eq!(r.read("daemon.rc"), "0\n0\n");
}

fn handler(name: &str, zip: &str) -> Value {
    json!({
        "name": name,
        "version": "1.0.0",
        "state": "enabled",
        "seqNo": 0,
        "publicSettings": {},
        "packages": [{"version": "1.0.0", "zip": zip}],
    })
}

/// What goes wrong stays with the handler it went wrong for: a hanging
/// enable is killed at its deadline while statuses keep being uploaded; a
/// malformed status file is reported as such; zip-slip, symlink and
/// entry-bomb packages are refused with nothing written outside; a storage location
/// that refuses gives way to the HostGAPlugin; the others still run.
#[test]
fn failures_are_contained_and_reported() {
    if sandbox::skip("failures_are_contained_and_reported") {
        return;
    }
    let r = run(
        &[
            ("hang.zip", package("hang")),
            ("bad.zip", package("malformed")),
            ("slip.zip", zip_slip()),
            ("link.zip", symlink_package()),
            ("bomb.zip", entry_bomb()),
            ("good.zip", package("")),
        ],
        &[(
            "all",
            json!([
                handler("Contoso.Test.Hang", "hang.zip"),
                handler("Contoso.Test.Bad", "bad.zip"),
                handler("Contoso.Test.Slip", "slip.zip"),
                handler("Contoso.Test.Link", "link.zip"),
                handler("Contoso.Test.Bomb", "bomb.zip"),
                handler("Contoso.Test.Fallback", "good.zip"),
            ]),
        )],
        CONF,
        r#"
start_sim --fault packages/Contoso.Test.Fallback:403:10
start_daemon
wait_for "enable 1.0.0" /work/calls
# The handlers after the hanging one run once it is killed (3 s).
i=0; until [ "$(grep -c '^enable' /work/calls)" -ge 3 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
sleep 2.5
ls /work > /work/listing
ls -d /var/lib/waagent/Contoso.Test.* > /work/dirs 2>/dev/null
ls /etc/linked > /work/etc-linked 2>&1
stop_daemon
"#,
    );
    let ctx = r.context();
    assert_eq!(r.read("driver.err"), "", "{ctx}");
    let status = |name: &str| r.last_handler_status(name);

    let hang = status("Contoso.Test.Hang");
    assert_eq!(hang["status"], "NotReady", "{ctx}");
    assert_eq!(hang["code"], 1011);
    assert_eq!(
        hang["formattedMessage"]["message"],
        "enable timed out and was killed"
    );
    // Uploads went on while it hung: the goal state was reported in
    // progress (no aggregate verdict yet) on several polls, each with the
    // agent itself Ready.
    let statuses = r.statuses();
    let in_progress: Vec<_> = statuses
        .iter()
        .filter(|s| s["aggregateStatus"]["vmArtifactsAggregateStatus"].is_null())
        .collect();
    assert!(
        in_progress.len() >= 2,
        "{} uploads while it hung\n{ctx}",
        in_progress.len()
    );
    for s in &in_progress {
        assert_eq!(
            s["aggregateStatus"]["guestAgentStatus"]["status"], "Ready",
            "{s}"
        );
    }

    let bad = status("Contoso.Test.Bad");
    assert_eq!(bad["status"], "Ready", "the handler itself is fine: {bad}");
    let st = &bad["runtimeSettingsStatus"]["settingsStatus"]["status"];
    assert_eq!(st["status"], "error", "{bad}");
    assert_eq!(st["code"], 1012);

    for name in ["Contoso.Test.Slip", "Contoso.Test.Link"] {
        let h = status(name);
        assert_eq!(h["status"], "NotReady", "{name}: {h}");
        assert_eq!(h["code"], 1004, "{name}: {h}");
        assert!(
            h["formattedMessage"]["message"]
                .as_str()
                .unwrap()
                .contains("refus"),
            "{name}: {h}"
        );
    }
    assert!(
        !r.read("listing").contains("slipped"),
        "zip-slip wrote outside"
    );
    assert!(
        r.read("etc-linked").contains("No such file"),
        "{}",
        r.read("etc-linked")
    );
    let bomb = status("Contoso.Test.Bomb");
    assert_eq!(bomb["code"], 1004, "{bomb}");
    assert!(
        bomb["formattedMessage"]["message"]
            .as_str()
            .unwrap()
            .contains("10001 entries, more than 10000"),
        "{bomb}"
    );
    let dirs = r.read("dirs");
    assert!(
        ["Slip", "Link", "Bomb"].iter().all(|n| !dirs.contains(n)),
        "{dirs}"
    );

    let fallback = status("Contoso.Test.Fallback");
    assert_eq!(fallback["status"], "Ready", "{ctx}");
    let record = r.read("fabric.jsonl");
    assert!(
        record.contains("/extensionArtifact"),
        "no HostGAPlugin download"
    );
    let statuses = r.statuses();
    let verdict = &statuses.last().unwrap()["aggregateStatus"]["vmArtifactsAggregateStatus"]
        ["goalStateAggregateStatus"];
    assert_eq!(verdict["status"], "Failed");
    assert!(verdict["formattedMessage"]["message"]
        .as_str()
        .unwrap()
        .starts_with("4 of 6 extension handler(s) failed"));
}

/// A daemon SIGKILLed while a handler installs, and started again at once,
/// waits for that install instead of running it twice; a service that
/// `enable` started survives the daemon's SIGTERM.
#[test]
fn a_killed_daemon_does_not_install_twice_and_services_outlive_it() {
    if sandbox::skip("a_killed_daemon_does_not_install_twice_and_services_outlive_it") {
        return;
    }
    let r = run(
        &[
            ("slow.zip", package("slow-install")),
            ("svc.zip", package("service")),
        ],
        &[(
            "all",
            json!([
                handler("Contoso.Test.Slow", "slow.zip"),
                handler("Contoso.Test.Service", "svc.zip"),
            ]),
        )],
        CONF,
        r#"
start_sim
start_daemon
wait_for "install-start" /work/calls
sleep 0.5
kill -KILL $daemon; wait $daemon 2>/dev/null
echo "== restarted" >> /work/calls
start_daemon
i=0; until [ -s /work/service.pid ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
sleep 1
stop_daemon
sleep 0.5
if kill -0 "$(cat /work/service.pid)" 2>/dev/null; then echo alive > /work/service.after; else echo dead > /work/service.after; fi
"#,
    );
    let ctx = r.context();
    let calls = r.calls();
    let count = |prefix: &str| calls.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("install 1.0.0"), 2, "Slow's and Service's: {ctx}");
    assert_eq!(count("install-start"), 1, "{ctx}");
    assert_eq!(count("install-done"), 1, "{ctx}");
    assert_eq!(count("enable 1.0.0"), 2, "{ctx}");
    // Slow's enable came after the restart, once its install was done.
    let restart = calls.iter().position(|l| l == "== restarted").unwrap();
    let done = calls.iter().position(|l| l == "install-done").unwrap();
    assert!(done > restart, "{ctx}");
    assert_eq!(
        r.last_handler_status("Contoso.Test.Slow")["status"],
        "Ready",
        "{ctx}"
    );
    assert_eq!(r.read("service.after").trim(), "alive", "{ctx}");
}
