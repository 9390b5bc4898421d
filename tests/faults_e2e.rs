//! The fault matrix: provisioning and one extension cycle, end to end, under
//! every fault `fabric-sim` can inject on every URL the agent uses, and with
//! the agent SIGKILLed at every step and started again.
//!
//! Each case is a fresh throwaway VM (`scripts/sandbox`): the real
//! `waagent -daemon` provisions from an Azure-like DVD against `fabric-sim`
//! on the platform addresses inside the sandbox's own network namespace,
//! then installs and enables a real shell-script handler from a real zip.
//! Every fault is transient, as a real fabric's hiccup is: the first request
//! to the URL (or the one after the first SKIP, for the Ready report and the
//! first steady-state poll) fails, then the fabric behaves. Every case must
//! converge to the clean run's end state with nothing duplicated or lost,
//! and — but for the timeouts — recover within 3 s: from the faulted request
//! to the successful retry, both as the simulator's clock saw them arrive.
//!
//! The matrix is printed (and written to `target/tmp/fault-matrix.txt`)
//! with its pass count and the slowest recovery; `make faults` shows it.
//! Cases run in parallel sandboxes (`WAAGENT_RS_FAULT_JOBS`, default 10):
//! they mostly wait for the fabric's retries, not for the CPU.

#[path = "common/sandbox.rs"]
mod sandbox;
#[path = "common/vm.rs"]
mod vm;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sandbox::{Options, Sandbox};
use serde_json::{json, Value};
use vm::{DMI_UUID, FULL_PASSWORD, IMDS_KEY, INSTANCE_ID};
use waagent::provision::password;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
/// The issue's bound on recovering from one transient fault that is not a
/// timeout, in the simulator's milliseconds.
const RECOVERY_BOUND_MS: u64 = 3000;
/// `Debug.HttpTimeout` in the cases: a stall costs this, not waagent's 10 s.
const HTTP_TIMEOUT_SECS: u64 = 2;
/// How long a case may take before it is stopped and failed.
const CASE_LIMIT: Duration = Duration::from_secs(90);

/// The handler: logs each call to /work/calls; `enable` writes the status
/// of its sequence number. When /work/kill-in names the operation, it first
/// SIGKILLs the daemon (once), as a crash while a handler runs.
const HANDLER: &str = r#"#!/bin/sh
cd "$(dirname "$0")/.." || exit 9
op=$1
echo "$op $AZURE_GUEST_AGENT_EXTENSION_VERSION seq=$ConfigSequenceNumber" >> /work/calls
if [ "$(cat /work/kill-in 2>/dev/null)" = "$op" ] && [ ! -e /work/killed ]; then
    : > /work/killed
    kill -KILL "$(cat /var/run/waagent.pid)"
    sleep 0.3
fi
if [ "$op" = enable ]; then
    seq=$ConfigSequenceNumber
    mkdir -p status
    printf '[{"version":1.0,"timestampUTC":"2026-12-04T00:00:00Z","status":{"name":"Echo","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"enabled %s"}}}]' "$seq" > "status/$seq.status"
fi
exit 0
"#;

const HANDLER_MANIFEST: &str = r#"[{"name":"Echo","version":1.0,"handlerManifest":{
 "installCommand":"bin/handler.sh install","uninstallCommand":"bin/handler.sh uninstall",
 "updateCommand":"bin/handler.sh update","enableCommand":"bin/handler.sh enable",
 "disableCommand":"bin/handler.sh disable","rebootAfterInstall":false,
 "reportHeartbeat":false,"updateMode":"UpdateWithInstall"}}]"#;

/// Custom data that counts its runs.
const CUSTOM_DATA: &str = "#!/bin/sh\necho ran >> /var/tmp/custom-data-runs\n";

/// One case in one sandbox: the fabric (with the case's `--fault`s) and the
/// daemon (started again whenever it dies, as a supervisor would) until the
/// test, watching the fabric's record from outside, writes to /work/ctl;
/// then SIGTERM and the evidence. Nothing here polls: `wait -n` wakes for
/// the daemon's death or the test's word.
const DRIVER: &str = r#"#!/bin/bash
set -u
cd /work
S=/work/share
e=/work/ev
mkdir -p $e
# shellcheck disable=SC2086 # FAULTS is a list of arguments
$S/fabric-sim --wire 168.63.129.16:80 --plugin 168.63.129.16:32526 --imds 169.254.169.254:80 \
    --tenant-cert $S/tenant.crt:$S/tenant.key --imds-key "/home/azureuser/.ssh/authorized_keys=$IMDS_KEY" \
    --handlers /work/handlers.json --record /work/fabric.jsonl $FAULTS > /work/fabric.log 2>&1 &
sim=$!
(read -r word < /work/ctl; echo "$word" > $e/ctl) &
told=$!
start_daemon() {
    env $1 $S/waagent -daemon -configuration-path:/work/waagent.conf >> /work/daemon.out 2>&1 &
    daemon=$!
}
# The fabric listens before the agent starts, as on Azure.
i=0; until grep -q 'fabric-sim:' /work/fabric.log 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && exit 90; sleep 0.05; done
start_daemon "${CRASH_AT:+WAAGENT_RS_TEST_CRASH_AT=$CRASH_AT}"
starts=1
while :; do
    wait -n -p who $daemon $told
    rc=$?
    [ "$who" = "$told" ] && break
    echo $rc >> $e/died.rc
    if [ $starts -ge 3 ]; then echo "the daemon died $starts times" >> $e/driver.err; wait $told; break; fi
    start_daemon ""; starts=$((starts+1))
done
[ "$(cat $e/ctl)" = done ] || echo "told: $(cat $e/ctl)" >> $e/driver.err
kill -TERM $daemon 2>/dev/null; wait $daemon; echo $? > $e/daemon.rc
# The record is written as requests arrive, within 50 ms.
sleep 0.15
kill $sim; wait $sim 2>/dev/null
grep -c '^azureuser:' /etc/passwd > $e/passwd_count
getent passwd azureuser > $e/passwd
getent shadow azureuser | cut -d: -f2 > $e/hash
cp /etc/sudoers.d/waagent $e/sudoers 2>/dev/null
cp /home/azureuser/.ssh/authorized_keys $e/authorized_keys 2>/dev/null
for f in /home/azureuser/.ssh /home/azureuser/.ssh/authorized_keys /home/azureuser/.ssh/id_rsa \
         /home/azureuser/.ssh/id_rsa.pub /var/lib/waagent; do
    [ -e $f ] && echo "$(stat -c '%a %U %G' $f) $f" >> $e/modes
done
ls /etc/ssh | grep '^ssh_host_' > $e/host_keys
ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null | cut -d' ' -f2 | tr -d : > $e/fingerprint
cp /etc/ssh/sshd_config $e/sshd_config
hostname > $e/hostname
cp /var/tmp/custom-data-runs $e/custom_data_runs 2>/dev/null
(cd /var/lib/waagent && find . | LC_ALL=C sort) > $e/lib
cp /var/lib/waagent/waagent-rs.journal $e/journal 2>/dev/null
cp /var/lib/waagent/provisioned $e/provisioned 2>/dev/null
exit 0
"#;

/// What a URL's requests are, for which faults apply to it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A document the agent reads.
    Document,
    /// A report or upload: the answer has no body to cut or break.
    Post,
    /// A storage download, with the HostGAPlugin as the other way.
    Download,
}

/// A row of the matrix: a URL the agent uses, and where to fault it.
struct Url {
    name: &'static str,
    /// What the faulted requests' path and query contain.
    pattern: &'static str,
    /// Requests answered normally before the faulted one.
    skip: usize,
    kind: Kind,
    /// Other sources of the same thing: a success there is a recovery too.
    alternatives: &'static [&'static str],
    /// Faults that hold for the whole run, to send the agent down this path.
    background: &'static [&'static str],
    /// The client's limit on one request here (None: a download's deadline,
    /// minutes, which no stall in a test outlasts).
    timeout_secs: Option<u64>,
    /// A broken value in an otherwise good document: (from, to).
    replace: Option<(&'static str, &'static str)>,
}

/// Storage refusing every manifest and package download.
const STORAGE_REFUSES: &[&str] = &[
    "/blob/manifests/:403:1000",
    "/blob/failover/:403:1000",
    "/blob/packages/:403:1000",
];

fn urls() -> Vec<Url> {
    let doc = |name, pattern| Url {
        name,
        pattern,
        skip: 0,
        kind: Kind::Document,
        alternatives: &[],
        background: &[],
        timeout_secs: Some(HTTP_TIMEOUT_SECS),
        replace: None,
    };
    let post = |name, pattern| Url {
        kind: Kind::Post,
        ..doc(name, pattern)
    };
    // A download's deadline is the timeout plus a second per MiB it may
    // fetch: a manifest's 1 MiB, a package's 256 MiB.
    let manifest_timeout = Some(HTTP_TIMEOUT_SECS + 1);
    vec![
        Url {
            replace: Some(("2012-11-30", "1999-01-01")),
            ..doc("versions", "comp=versions")
        },
        Url {
            replace: Some((
                "<Incarnation>1</Incarnation>",
                "<Incarnation>../../tmp/evil</Incarnation>",
            )),
            ..doc("goal state", "comp=goalstate")
        },
        doc("HostingEnvironmentConfig", "type=hostingEnvironmentConfig"),
        doc("SharedConfig", "type=sharedConfig"),
        Url {
            replace: Some(("<Data>", "<Data>!!")),
            ..doc("Certificates", "comp=certificates")
        },
        doc("ExtensionsConfig", "type=extensionsConfig"),
        doc("IMDS", "/metadata/instance"),
        post("health: NotReady", "comp=health"),
        Url {
            skip: 1,
            ..post("health: Ready", "comp=health")
        },
        post("role properties", "comp=roleProperties"),
        // The first steady-state poll comes at once after Ready (it finds
        // the extensions); the second at Extensions.GoalStatePeriod (6 s).
        Url {
            skip: 1,
            ..doc("goal state: 1st poll", "comp=goalstate")
        },
        Url {
            skip: 2,
            ..doc("goal state: 2nd poll", "comp=goalstate")
        },
        Url {
            kind: Kind::Download,
            alternatives: &["/blob/failover/"],
            timeout_secs: manifest_timeout,
            ..doc("manifest (storage)", "/blob/manifests/")
        },
        Url {
            kind: Kind::Download,
            timeout_secs: None,
            ..doc("package (storage)", "/blob/packages/")
        },
        Url {
            kind: Kind::Download,
            background: STORAGE_REFUSES,
            timeout_secs: manifest_timeout,
            ..doc("HostGAPlugin artifact", "/extensionArtifact")
        },
        post("HostGAPlugin status", "/status"),
        Url {
            background: &["/status:400:1000"],
            ..post("status blob (storage)", "vmstatus.status")
        },
    ]
}

/// The matrix's columns.
const FAULTS: &[&str] = &[
    "503",
    "429",
    "410",
    "403",
    "timeout",
    "reset",
    "truncate",
    "malformed",
    "oversized",
    "replace",
];

/// The `--fault` KIND of column `fault` on `url`, if it applies there.
fn fault_kind(url: &Url, fault: &str) -> Option<String> {
    let kind = match (fault, url.kind) {
        ("503" | "429" | "410" | "reset", _) => fault.to_string(),
        // Storage's refusal; for the fabric, 403 is one more throttling status.
        ("403", Kind::Download) => "403".into(),
        ("403", _) if url.pattern == "vmstatus.status" => "403".into(),
        ("timeout", _) => format!("delay-{}", url.timeout_secs? + 1),
        ("truncate" | "malformed", Kind::Document | Kind::Download) => fault.to_string(),
        // Over the 4 MiB of a document (and a manifest's 1 MiB); a
        // "package" of 5 MiB of spaces, which no zip reader takes.
        ("oversized", _) => format!("oversized-{}", 5 << 20),
        ("replace", _) => {
            let (from, to) = url.replace?;
            format!("replace={from}={to}")
        }
        _ => return None,
    };
    Some(kind)
}

/// The crash points: every state the run passes, every provisioning step,
/// and a SIGKILL while the handler's install or enable runs.
fn crash_points() -> Vec<String> {
    let mut points: Vec<String> = ["Boot", "ReadMedia", "Connect", "ReportStarting", "Plan"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    points.extend(
        waagent::daemon::Step::ALL
            .iter()
            .map(|s| format!("Provision:{}", s.key())),
    );
    points.extend(
        ["MarkProvisioned", "ReportReady", "Steady", "Extension"]
            .iter()
            .map(|s| s.to_string()),
    );
    points
}

/// One run in one sandbox.
#[derive(Clone, Debug)]
struct Case {
    /// The matrix cell: row (URL or "crash") and column (fault or point).
    row: String,
    column: String,
    /// `--fault` arguments; the first is the measured one.
    faults: Vec<String>,
    /// The URL whose recovery is timed.
    watch: Option<Watch>,
    crash_at: Option<String>,
    /// The handler operation during which the daemon is SIGKILLed.
    kill_in: Option<&'static str>,
    /// A stall past the client's timeout: not held to the 3 s bound.
    timeout: bool,
}

#[derive(Clone, Debug)]
struct Watch {
    pattern: &'static str,
    alternatives: &'static [&'static str],
    download: bool,
}

fn cases() -> Vec<Case> {
    let mut cases = vec![Case {
        row: "clean".into(),
        column: "-".into(),
        faults: Vec::new(),
        watch: None,
        crash_at: None,
        kill_in: None,
        timeout: false,
    }];
    for url in urls() {
        for fault in FAULTS {
            let Some(kind) = fault_kind(&url, fault) else {
                continue;
            };
            let mut faults = vec![format!("{}:{kind}:1:{}", url.pattern, url.skip)];
            faults.extend(url.background.iter().map(|b| b.to_string()));
            cases.push(Case {
                row: url.name.into(),
                column: fault.to_string(),
                faults,
                watch: Some(Watch {
                    pattern: url.pattern,
                    alternatives: url.alternatives,
                    download: url.kind == Kind::Download,
                }),
                crash_at: None,
                kill_in: None,
                timeout: *fault == "timeout",
            });
        }
    }
    let crash = |column: &str, crash_at: Option<String>, kill_in| Case {
        row: "SIGKILL".into(),
        column: column.to_string(),
        faults: Vec::new(),
        watch: None,
        crash_at,
        kill_in,
        timeout: false,
    };
    for point in crash_points() {
        cases.push(crash(&point, Some(point.clone()), None));
    }
    for op in ["install", "enable"] {
        cases.push(crash(&format!("handler {op}"), None, Some(op)));
    }
    cases
}

/// A request as the fabric recorded it.
#[derive(Debug, Clone)]
struct Req {
    ms: u64,
    method: String,
    target: String,
    artifact: String,
    status: u64,
    fault: Option<String>,
    body: String,
}

impl Req {
    fn ok(&self) -> bool {
        self.fault.is_none() && (200..300).contains(&self.status)
    }
}

/// Every request in a fabric record (`--record`), in order of arrival.
fn requests_in(record: &str) -> Vec<Req> {
    let mut reqs: Vec<Req> = record
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "request")
        .map(|v| Req {
            // "t": seconds since the epoch, to the microsecond.
            ms: (v["t"].as_f64().unwrap_or(0.0) * 1000.0).round() as u64,
            method: v["method"].as_str().unwrap_or("").to_string(),
            target: v["target"].as_str().unwrap_or("").to_string(),
            artifact: v["artifact"].as_str().unwrap_or("").to_string(),
            status: v["status"].as_u64().unwrap_or(0),
            fault: v["fault"].as_str().map(str::to_string),
            body: v["body"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    reqs.sort_by_key(|r| r.ms);
    reqs
}

/// Health reports the fabric accepted (a request the fault ate, which the
/// agent never heard answered, does not count): `State` or
/// `State/SubStatus`, with the incarnation.
fn health_of(reqs: &[Req]) -> Vec<(String, String)> {
    reqs.iter()
        .filter(|r| r.target.contains("comp=health") && r.ok())
        .map(|r| {
            let tag = |t: &str| {
                r.body
                    .split_once(&format!("<{t}>"))
                    .and_then(|(_, rest)| rest.split_once(&format!("</{t}>")))
                    .map(|(v, _)| v.to_string())
            };
            let state = tag("State").unwrap_or_default();
            let state = match tag("SubStatus") {
                Some(s) => format!("{state}/{s}"),
                None => state,
            };
            (state, tag("GoalStateIncarnation").unwrap_or_default())
        })
        .collect()
}

/// The status blobs the fabric accepted, through the HostGAPlugin (an
/// envelope) or straight to storage.
fn statuses_of(reqs: &[Req]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.ok() && r.method == "PUT")
        .filter_map(|r| {
            let content = if r.target.starts_with("/status") {
                let env: Value = serde_json::from_str(&r.body).ok()?;
                let b64 = env["content"].as_str()?;
                base64::engine::general_purpose::STANDARD.decode(b64).ok()?
            } else if r.target.contains("vmstatus.status") {
                r.body.clone().into_bytes()
            } else {
                return None;
            };
            serde_json::from_slice(&content).ok()
        })
        .collect()
}

/// Whether `status` has the agent Ready and the handler's enable a success.
fn handler_succeeded(status: &Value) -> bool {
    let agg = &status["aggregateStatus"];
    agg["guestAgentStatus"]["status"] == "Ready"
        && agg["handlerAggregateStatus"].as_array().is_some_and(|hs| {
            hs.iter().any(|h| {
                let st = &h["runtimeSettingsStatus"]["settingsStatus"]["status"];
                h["handlerName"] == "Contoso.Test.Echo"
                    && h["status"] == "Ready"
                    && st["status"] == "success"
                    && st["formattedMessage"]["message"] == "enabled 0"
            })
        })
}

/// The end of a case: Ready accepted, a status with the handler's
/// success, and the watched URL answered well after its fault.
fn finished(record: &str, case: &Case) -> bool {
    let reqs = requests_in(record);
    health_of(&reqs).iter().any(|(s, _)| s == "Ready")
        && statuses_of(&reqs).iter().any(handler_succeeded)
        && case
            .watch
            .as_ref()
            .map_or(true, |w| recovery(&reqs, w).is_ok())
}

/// The watched fault's request and the first successful one for the same
/// thing after it, as the fabric's clock saw them arrive: the time between,
/// and what they were.
fn recovery(reqs: &[Req], w: &Watch) -> Result<(u64, String), String> {
    let same = |r: &Req| {
        let mut places = std::iter::once(w.pattern).chain(w.alternatives.iter().copied());
        let direct = places.clone().any(|p| r.target.contains(p));
        let through_plugin = w.download
            && r.target.contains("/extensionArtifact")
            && places.any(|p| r.artifact.contains(p));
        direct || through_plugin
    };
    let first = reqs
        .iter()
        .position(|r| r.fault.is_some() && r.target.contains(w.pattern))
        .ok_or("the fault was never hit")?;
    let faulted = &reqs[first];
    let retry = reqs[first + 1..]
        .iter()
        .find(|r| same(r) && r.ok())
        .ok_or_else(|| format!("never recovered from {:?}", faulted.fault))?;
    Ok((
        retry.ms - faulted.ms,
        format!(
            "{} {} ({}) → {} {} at +{} ms",
            faulted.method,
            faulted.target,
            faulted.fault.as_deref().unwrap_or(""),
            retry.method,
            retry.target,
            retry.ms - faulted.ms
        ),
    ))
}

/// What one case left behind.
struct Outcome {
    case: Case,
    dir: tempfile::TempDir,
    status: std::process::ExitStatus,
    seconds: f64,
    /// The password verifies against the shadow hash (checked on the
    /// case's own thread: SHA-512 crypt is slow in a debug build).
    password_ok: bool,
}

impl Outcome {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn ev(&self, name: &str) -> String {
        self.read(&format!("ev/{name}"))
    }

    fn requests(&self) -> Vec<Req> {
        requests_in(&self.read("fabric.jsonl"))
    }

    fn recovery(&self) -> Result<(u64, String), String> {
        let w = self.case.watch.as_ref().ok_or("nothing watched")?;
        recovery(&self.requests(), w)
    }

    fn health(&self) -> Vec<(String, String)> {
        health_of(&self.requests())
    }

    /// The thumbprints of the role-properties reports the fabric accepted.
    fn role_properties(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.target.contains("comp=roleProperties") && r.ok())
            .filter_map(|r| {
                let (_, rest) = r
                    .body
                    .split_once("name=\"CertificateThumbprint\" value=\"")?;
                Some(rest.split('"').next()?.to_string())
            })
            .collect()
    }

    fn statuses(&self) -> Vec<Value> {
        statuses_of(&self.requests())
    }

    /// The handler's calls, each cut to its first two words.
    fn calls(&self) -> Vec<String> {
        self.read("calls")
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn context(&self) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "{} × {} ({:.1} s): sandbox {}\nsandbox stderr: {}\ndriver: {}\ndaemon deaths: {}\ncalls:\n{}\nrequests:\n{}\nagent log (tail):\n{}",
            self.case.row,
            self.case.column,
            self.seconds,
            self.status,
            self.read("sandbox.err").trim(),
            self.ev("driver.err").trim(),
            self.ev("died.rc").trim(),
            self.read("calls"),
            self.requests()
                .iter()
                .map(|r| format!(
                    "  {:>6} ms {} {} → {} {}",
                    r.ms,
                    r.method,
                    r.target,
                    r.status,
                    r.fault.as_deref().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join("\n"),
            tail(self.read("waagent.log"), 40)
        )
    }
}

/// Why a case did not converge to the clean run's end state; empty when it did.
fn check(o: &Outcome, clean: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    let driver = o.ev("driver.err");
    expect(driver.is_empty(), format!("driver: {}", driver.trim()));
    expect(
        o.ev("daemon.rc").trim() == "0",
        format!("the daemon's exit code: {:?}", o.ev("daemon.rc").trim()),
    );
    // Crashed where asked, and started again.
    let died = o.ev("died.rc");
    match (&o.case.crash_at, o.case.kill_in) {
        (None, None) => expect(died.is_empty(), format!("the daemon died: {died:?}")),
        (crashed, _) => {
            expect(
                died.trim() == "137",
                format!("not SIGKILLed once: {died:?}"),
            );
            if let Some(point) = crashed {
                expect(
                    o.read("waagent.log")
                        .contains(&format!("killing myself at {point}\n")),
                    format!("no crash at {point}"),
                );
            }
        }
    }
    // The VM: one user, with the password, sudo, the keys, sshd's settings,
    // the host name; a host key, custom data run once.
    expect(
        o.ev("provisioned") == INSTANCE_ID,
        format!("provisioned: {:?}", o.ev("provisioned")),
    );
    expect(
        o.ev("passwd_count").trim() == "1",
        format!(
            "azureuser in /etc/passwd {} times",
            o.ev("passwd_count").trim()
        ),
    );
    expect(o.password_ok, "the password does not verify".into());
    for name in [
        "passwd",
        "sudoers",
        "authorized_keys",
        "modes",
        "host_keys",
        "sshd_config",
        "hostname",
        "custom_data_runs",
        "lib",
        "journal",
        "provisioned",
    ] {
        expect(
            o.ev(name) == clean.ev(name),
            format!(
                "{name} differs from the clean run's:\n{}\n-- clean:\n{}",
                o.ev(name),
                clean.ev(name)
            ),
        );
    }
    // Nothing half-written in Lib.Dir.
    let leftovers: Vec<String> = o
        .ev("lib")
        .lines()
        .filter(|l| {
            let name = l.rsplit('/').next().unwrap_or("");
            name.ends_with(".tmp") || (name.starts_with('.') && name != ".")
        })
        .map(str::to_string)
        .collect();
    expect(
        leftovers.is_empty(),
        format!("left in Lib.Dir: {leftovers:?}"),
    );
    // Ready once for incarnation 1, never a failure.
    let health = o.health();
    let ready: Vec<_> = health.iter().filter(|(s, _)| s == "Ready").collect();
    expect(
        ready.len() == 1 && ready[0].1 == "1",
        format!("Ready reports: {ready:?}"),
    );
    expect(
        health.last().is_some_and(|(s, _)| s == "Ready"),
        format!("the last report is not Ready: {health:?}"),
    );
    expect(
        !health.iter().any(|(s, _)| s.contains("ProvisioningFailed")),
        format!("a failure was reported: {health:?}"),
    );
    expect(
        health.iter().any(|(s, _)| s == "NotReady/Provisioning"),
        format!("no NotReady/Provisioning report: {health:?}"),
    );
    // The host key the fabric was told of is the one on disk.
    let fingerprint = o.ev("fingerprint").trim().to_string();
    expect(
        !fingerprint.is_empty() && o.role_properties() == [fingerprint.clone()],
        format!(
            "role properties {:?}, host key {fingerprint:?}",
            o.role_properties()
        ),
    );
    // The handler installed and enabled once each; its success uploaded.
    let calls = o.calls();
    expect(
        calls == ["install 1.0.0", "enable 1.0.0"],
        format!("handler calls: {calls:?}"),
    );
    let succeeded = o.statuses().iter().any(handler_succeeded);
    expect(
        succeeded,
        "no accepted status upload with the handler's success".into(),
    );
    bad
}

fn package() -> Vec<u8> {
    vm::handler_package(
        &[
            ("HandlerManifest.json", HANDLER_MANIFEST),
            ("bin/handler.sh", HANDLER),
        ],
        0o644,
    )
}

const CONF: &str = "Provisioning.Agent=waagent
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType=ed25519
Provisioning.DeleteRootPassword=y
Provisioning.ExecuteCustomData=y
Provisioning.PasswordCryptId=6
Logs.File=/work/waagent.log
Logs.Verbose=y
Logs.Console=n
Extensions.GoalStatePeriod=6
Extensions.InitialGoalStatePeriod=1
";

/// What every case shares: the binaries, the DVD, the certificate, the
/// handler's zip and the driver.
fn share() -> tempfile::TempDir {
    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    vm::stage_binaries_and_tenant_cert(s);
    let full = std::fs::read_to_string(Path::new(MANIFEST).join("test-data/ovf/full.xml")).unwrap();
    let (before, rest) = full.split_once("<CustomData>").unwrap();
    let (_, after) = rest.split_once("</CustomData>").unwrap();
    let custom = base64::engine::general_purpose::STANDARD.encode(CUSTOM_DATA);
    let ovf = format!("{before}<CustomData>{custom}</CustomData>{after}");
    std::fs::write(s.join("ovf-env.xml"), ovf).unwrap();
    Sandbox::make_ovf_iso(&s.join("ovf-env.xml"), &s.join("ovf.iso"), &[]).unwrap();
    std::fs::write(s.join("echo.zip"), package()).unwrap();
    let driver = s.join("driver.sh");
    std::fs::write(&driver, DRIVER).unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    share
}

fn run_case(case: &Case, share: &Path) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let handlers = json!([{
        "name": "Contoso.Test.Echo",
        "version": "1.0.0",
        "state": "enabled",
        "seqNo": 0,
        "publicSettings": {"message": "hello 0"},
        "packages": [{"version": "1.0.0", "zip": "/work/share/echo.zip"}],
    }]);
    std::fs::write(d.join("handlers.json"), handlers.to_string()).unwrap();
    std::fs::write(
        d.join("waagent.conf"),
        format!("{CONF}Debug.HttpTimeout={HTTP_TIMEOUT_SECS}\n"),
    )
    .unwrap();
    if let Some(op) = case.kill_in {
        std::fs::write(d.join("kill-in"), op).unwrap();
    }
    std::fs::create_dir(d.join("share")).unwrap();
    let opts = Options::default()
        .iso(share.join("ovf.iso"))
        .bind(d, "/work")
        .bind(share, "/work/share")
        .dmi_uuid(DMI_UUID);
    let faults: Vec<String> = case.faults.iter().map(|f| format!("--fault {f}")).collect();
    let args = [
        "env".to_string(),
        format!("FAULTS={}", faults.join(" ")),
        format!("IMDS_KEY={IMDS_KEY}"),
        format!("CRASH_AT={}", case.crash_at.clone().unwrap_or_default()),
        "/work/share/driver.sh".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ctl = d.join("ctl");
    nix::unistd::mkfifo(&ctl, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = Instant::now();
    let mut child = Sandbox::command(&opts, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("sandbox.err")).unwrap())
        .spawn()
        .expect("run the sandbox");
    // Watch the fabric's record; say "done" once it has what the case
    // waits for, "timeout" after CASE_LIMIT.
    let mut told = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let elapsed = started.elapsed();
        if !told {
            let record = std::fs::read_to_string(d.join("fabric.jsonl")).unwrap_or_default();
            let word = match (finished(&record, case), elapsed > CASE_LIMIT) {
                (true, _) => Some("done"),
                (false, true) => Some("timeout"),
                _ => None,
            };
            told = word.is_some_and(|w| tell(&ctl, w));
        }
        if elapsed > CASE_LIMIT + Duration::from_secs(30) {
            // scripts/sandbox undoes everything on SIGTERM.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = started.elapsed().as_secs_f64();
    let hash = std::fs::read_to_string(d.join("ev/hash")).unwrap_or_default();
    Outcome {
        case: case.clone(),
        dir,
        status,
        seconds,
        password_ok: password::verify(FULL_PASSWORD, hash.trim()),
    }
}

/// Writes `word` to the driver's control FIFO; false while nobody reads it.
fn tell(fifo: &Path, word: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .and_then(|mut f| f.write_all(format!("{word}\n").as_bytes()))
        .is_ok()
}

/// Runs `cases` on `jobs` threads; the outcomes in the cases' order.
fn run_all(cases: &[Case], share: &Path, jobs: usize) -> Vec<Outcome> {
    let next = Arc::new(Mutex::new(0usize));
    let done: Arc<Mutex<Vec<(usize, Outcome)>>> = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let (next, done) = (next.clone(), done.clone());
            s.spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(case) = cases.get(i) else { return };
                let o = run_case(case, share);
                done.lock().unwrap().push((i, o));
            });
        }
    });
    let mut done = std::mem::take(&mut *done.lock().unwrap());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, o)| o).collect()
}

/// The printed matrix: one line per URL, one column per fault, each cell
/// the recovery time in seconds or FAIL; then the crash points.
fn matrix(results: &[(&Outcome, Vec<String>, Option<u64>)]) -> String {
    let mut out = String::new();
    let width = 26;
    out.push_str(&format!("{:width$}", "fault matrix: URL \\ fault"));
    for f in FAULTS {
        out.push_str(&format!(" {f:>9}"));
    }
    out.push('\n');
    let mut cells: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for (o, bad, ms) in results {
        let cell = match (bad.is_empty(), ms) {
            (true, Some(ms)) => format!("{:.2}s", *ms as f64 / 1000.0),
            (true, None) => "ok".into(),
            (false, _) => "FAIL".into(),
        };
        cells.insert((o.case.row.as_str(), o.case.column.as_str()), cell);
    }
    for url in urls() {
        out.push_str(&format!("{:width$}", url.name));
        for f in FAULTS {
            let cell = cells.get(&(url.name, *f)).map_or("·", String::as_str);
            out.push_str(&format!(" {cell:>9}"));
        }
        out.push('\n');
    }
    out.push_str("\nSIGKILL at, then started again:\n");
    for (o, bad, _) in results.iter().filter(|(o, _, _)| o.case.row == "SIGKILL") {
        let verdict = if bad.is_empty() { "converged" } else { "FAIL" };
        out.push_str(&format!("  {:width$} {verdict}\n", o.case.column));
    }
    out
}

#[test]
fn every_transient_fault_and_every_crash_converges_to_the_clean_run() {
    if sandbox::skip("every_transient_fault_and_every_crash_converges_to_the_clean_run") {
        return;
    }
    let share = share();
    let mut cases = cases();
    // WAAGENT_RS_FAULT_ONLY=text: only the cases whose row or column
    // contains it (while debugging one), besides the clean run.
    if let Ok(only) = std::env::var("WAAGENT_RS_FAULT_ONLY") {
        let clean = cases.remove(0);
        cases.retain(|c| format!("{} {}", c.row, c.column).contains(&only));
        cases.insert(0, clean);
    }
    let jobs = std::env::var("WAAGENT_RS_FAULT_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(10);
    let started = Instant::now();
    // The clean run (first) alongside the others: each is compared with
    // it once all are done.
    let outcomes = run_all(&cases, share.path(), jobs);
    let wall = started.elapsed().as_secs_f64();
    let clean = &outcomes[0];
    let clean_bad = check(clean, clean);
    assert!(
        clean_bad.is_empty(),
        "the clean run: {clean_bad:#?}\n{}",
        clean.context()
    );

    let mut results = Vec::new();
    let mut failures = Vec::new();
    for o in outcomes.iter().skip(1) {
        let mut bad = check(o, clean);
        let mut ms = None;
        if o.case.watch.is_some() {
            match o.recovery() {
                Ok((t, how)) => {
                    ms = Some(t);
                    if !o.case.timeout && t > RECOVERY_BOUND_MS {
                        bad.push(format!(
                            "recovered in {t} ms, over {RECOVERY_BOUND_MS}: {how}"
                        ));
                    }
                }
                Err(e) => bad.push(e),
            }
        }
        if !bad.is_empty() {
            failures.push(format!(
                "{}\n  - {}\n{}",
                o.case.row,
                bad.join("\n  - "),
                o.context()
            ));
        }
        results.push((o, bad, ms));
    }
    let passed = results.iter().filter(|(_, bad, _)| bad.is_empty()).count();
    let slowest = |timeouts: bool| {
        results
            .iter()
            .filter(|(o, bad, _)| bad.is_empty() && o.case.timeout == timeouts)
            .filter_map(|(o, _, ms)| Some((ms.as_ref()?, o)))
            .max_by_key(|(ms, _)| **ms)
            .map(|(ms, o)| {
                format!(
                    "{:.2} s ({} × {})",
                    *ms as f64 / 1000.0,
                    o.case.row,
                    o.case.column
                )
            })
            .unwrap_or_else(|| "none".into())
    };
    let mut report = matrix(&results);
    let secs: Vec<f64> = outcomes.iter().map(|o| o.seconds).collect();
    let (fastest, slowest_case) = secs
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    report.push_str(&format!(
        "\n{passed} of {} cases converged to the clean run's end state ({} parallel sandboxes, {wall:.0} s; \
         a case {fastest:.1} to {slowest_case:.1} s, {:.1} s on average)\n\
         slowest recovery from a fault that is not a timeout: {} (bound {} s)\n\
         slowest recovery from a timeout ({HTTP_TIMEOUT_SECS} s, Debug.HttpTimeout): {}\n",
        results.len(),
        jobs,
        secs.iter().sum::<f64>() / secs.len().max(1) as f64,
        slowest(false),
        RECOVERY_BOUND_MS / 1000,
        slowest(true),
    ));
    eprintln!("{report}");
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-matrix.txt");
    let _ = std::fs::write(&file, &report);
    assert!(
        failures.is_empty(),
        "{} case(s) did not converge:\n\n{}\n\n{report}",
        failures.len(),
        failures.join("\n\n")
    );
}
