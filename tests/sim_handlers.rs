//! The simulator's extension handlers: what it serves must read back through
//! our own parsers and client with the values a test put in, so the
//! agent's end-to-end extension tests can trust it. Also the `fabric-sim`
//! program's `--handlers` file and `--record` output, on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waagent::os::SystemRunner;
use waagent::sim::{FabricSim, Fault, HandlersFile, Service, SimConfig, SimExtension, SimHandler};
use waagent::wire::client::{ClientOptions, RetryPolicy, WireClient};
use waagent::wire::crypto::Openssl;
use waagent::wire::docs::{
    ExtensionManifest, ExtensionState, ExtensionsConfig, GoalState, PluginState,
};

const ECHO: &str = "Contoso.Test.Echo";
const MULTI: &str = "Contoso.Test.Multi";

fn client(sim: &FabricSim, lib: &Path) -> WireClient {
    let policy = RetryPolicy {
        attempts: 2,
        quick_retries: 0,
        quick_delay: Duration::ZERO,
        delay: Duration::from_millis(5),
        throttled_attempts: 2,
        throttled_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(10),
        no_role_instance_delay: Duration::from_millis(5),
    };
    WireClient::new(
        sim.endpoint(),
        lib,
        Openssl::new(PathBuf::from("openssl"), Rc::new(SystemRunner)),
        ClientOptions {
            timeout_secs: 2,
            retry: policy.clone(),
            health_retry: policy,
            storage_proxy: None,
        },
    )
}

/// `(status, body)` of a plain GET, as a download straight from storage.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let r = waagent::http::send(&waagent::http::Request {
        method: "GET",
        url,
        headers,
        body: None,
        timeout_secs: 5,
        max_body: 1 << 20,
        proxy: None,
    })
    .expect("the simulator answers");
    (r.status, r.body)
}

fn zip(tag: &str) -> Vec<u8> {
    // Bytes a text conversion would change, to prove they travel untouched.
    let mut z = b"PK\x03\x04\x00\xff\r\n".to_vec();
    z.extend_from_slice(tag.as_bytes());
    z
}

fn echo() -> SimHandler {
    let mut h = SimHandler::new(ECHO, "1.0.0", zip("echo 1.0.0"));
    h.packages.push(waagent::sim::SimPackage {
        version: "1.1.0".into(),
        zip: zip("echo 1.1.0"),
    });
    h.auto_upgrade = true;
    h.seq_no = 3;
    h.public_settings = json!({"msg": "hi & <bye>"});
    h.protected_settings = Some((
        "TUlJQmZha2U=".into(),
        "0123456789ABCDEF0123456789ABCDEF01234567".into(),
    ));
    h
}

fn multi() -> SimHandler {
    let mut h = SimHandler::new(MULTI, "2.0", zip("multi 2.0"));
    h.extensions = vec![
        SimExtension {
            name: "first".into(),
            state: "enabled".into(),
            seq_no: 7,
            public_settings: json!({"n": 1}),
            protected_settings: None,
        },
        SimExtension {
            name: "second".into(),
            state: "disabled".into(),
            seq_no: 1,
            public_settings: json!({"n": 2}),
            protected_settings: None,
        },
    ];
    h
}

fn ext_config(sim: &FabricSim, lib: &Path) -> (String, ExtensionsConfig) {
    let full = client(sim, lib)
        .update_goal_state(true)
        .expect("goal state")
        .expect("a goal state");
    (
        full.goal_state.incarnation,
        full.extensions_config.expect("an ExtensionsConfig"),
    )
}

fn settings(s: &str) -> Value {
    serde_json::from_str(s).expect("runtime settings are JSON")
}

#[test]
fn extensions_config_reads_back_through_our_parser() {
    let mut bare = SimHandler::new("Contoso.Test.Bare", "1.0", zip("bare"));
    bare.public_settings = Value::Null;
    bare.state = "uninstall".into();
    let sim = FabricSim::start(SimConfig {
        incarnation: 4,
        handlers: vec![echo(), multi(), bare],
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    let (inc, ec) = ext_config(&sim, lib.path());
    assert_eq!(inc, "4");
    assert_eq!(
        ec.in_vm_goal_state_metadata.and_then(|m| m.in_svd_seq_no),
        Some(4)
    );
    assert_eq!(ec.status_upload_blob.unwrap().url, sim.status_blob_url());
    assert_eq!(
        ec.required_features
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["MultipleExtensionsPerHandler"]
    );
    let [e, m, b] = &ec.plugins[..] else {
        panic!("three plugins: {:?}", ec.plugins);
    };

    assert_eq!((e.name.as_str(), e.version.as_str()), (ECHO, "1.0.0"));
    assert_eq!(e.state, Some(PluginState::Enabled));
    assert!(e.auto_upgrade && e.is_json && !e.multi_config);
    assert_eq!(e.invalid_reason, None);
    assert_eq!(
        e.manifest_uris(),
        [sim.manifest_url(ECHO), sim.failover_manifest_url(ECHO)]
    );
    assert!(e
        .manifest_uris()
        .iter()
        .all(|u| u.starts_with("http://127.0.0.1:")));
    let [s] = &e.settings[..] else {
        panic!("one setting: {:?}", e.settings)
    };
    assert_eq!((s.name.as_deref(), s.seq_no), (None, 3));
    assert_eq!(
        settings(&s.runtime_settings),
        json!({"runtimeSettings": [{"handlerSettings": {
            "publicSettings": {"msg": "hi & <bye>"},
            "protectedSettings": "TUlJQmZha2U=",
            "protectedSettingsCertThumbprint": "0123456789ABCDEF0123456789ABCDEF01234567"
        }}]})
    );

    assert!(m.multi_config && !m.auto_upgrade);
    assert_eq!(m.invalid_reason, None);
    let got: Vec<_> = m
        .settings
        .iter()
        .map(|s| {
            (
                s.name.clone().unwrap(),
                s.seq_no,
                s.state,
                settings(&s.runtime_settings),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "first".to_string(),
                7,
                ExtensionState::Enabled,
                json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": {"n": 1}}}]})
            ),
            (
                "second".to_string(),
                1,
                ExtensionState::Disabled,
                json!({"runtimeSettings": [{"handlerSettings": {"publicSettings": {"n": 2}}}]})
            ),
        ]
    );

    // No settings at all: valid, and no PluginSettings entry.
    assert_eq!(b.state, Some(PluginState::Uninstall));
    assert!(b.settings.is_empty() && b.invalid_reason.is_none());
}

#[test]
fn manifests_list_every_version_and_packages_are_served_as_given() {
    let sim = FabricSim::start(SimConfig {
        handlers: vec![echo()],
        ..SimConfig::default()
    })
    .unwrap();
    for url in [sim.manifest_url(ECHO), sim.failover_manifest_url(ECHO)] {
        let (status, body) = get(&url, &[]);
        assert_eq!(status, 200, "{url}");
        let m = ExtensionManifest::parse(&String::from_utf8(body).unwrap()).unwrap();
        let listed: Vec<_> = m
            .plugins
            .iter()
            .map(|p| (p.version.as_str(), p.uris.clone()))
            .collect();
        assert_eq!(
            listed,
            [
                ("1.0.0", vec![sim.package_url(ECHO, "1.0.0")]),
                ("1.1.0", vec![sim.package_url(ECHO, "1.1.0")]),
            ]
        );
    }
    // The blob name §6.7 gives, which the agents save the zip after.
    assert!(sim
        .package_url(ECHO, "1.1.0")
        .ends_with("/blob/packages/Contoso.Test.Echo__1.1.0"));
    let (status, body) = get(&sim.package_url(ECHO, "1.1.0"), &[]);
    assert_eq!((status, body), (200, zip("echo 1.1.0")));
    let ct = sim.requests().last().map(|r| r.status);
    assert_eq!(ct, Some(200));
    assert_eq!(get(&sim.package_url(ECHO, "9.9.9"), &[]).0, 404);
}

#[test]
fn storage_refused_the_host_plugin_serves_package_and_manifest() {
    let sim = FabricSim::start(SimConfig {
        handlers: vec![echo()],
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(true).unwrap();
    let pkg = sim.package_url(ECHO, "1.0.0");
    sim.inject("Contoso.Test.Echo__1.0.0", [Fault::Status(403)]);
    assert_eq!(get(&pkg, &[]).0, 403);
    let via_plugin = c
        .extension_artifact(&pkg, Some(&sim.manifest_url(ECHO)))
        .expect("the HostGAPlugin fetches it");
    assert_eq!(via_plugin, zip("echo 1.0.0"));
    let manifest = c.extension_artifact(&sim.manifest_url(ECHO), None).unwrap();
    assert_eq!(
        ExtensionManifest::parse(&String::from_utf8(manifest).unwrap())
            .unwrap()
            .plugins
            .len(),
        2
    );

    // The record says which way each download went.
    let artifact: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.request.target.contains("Echo") || r.request.target == "/extensionArtifact")
        .map(|r| {
            (
                r.service,
                r.status,
                r.request
                    .header("x-ms-artifact-location")
                    .map(str::to_string),
                r.request
                    .header("x-ms-artifact-manifest-location")
                    .map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        artifact,
        [
            (Service::Wire, 403, None, None),
            (
                Service::HostPlugin,
                200,
                Some(pkg.clone()),
                Some(sim.manifest_url(ECHO))
            ),
            (Service::HostPlugin, 200, Some(sim.manifest_url(ECHO)), None),
        ]
    );
    assert_eq!(
        sim.requests_to("Echo__1.0.0")[0].fault,
        Some(Fault::Status(403))
    );
}

#[test]
fn a_missing_primary_manifest_is_served_from_the_failover_only() {
    let mut h = echo();
    h.primary_manifest_missing = true;
    let sim = FabricSim::start(SimConfig {
        handlers: vec![h],
        ..SimConfig::default()
    })
    .unwrap();
    assert_eq!(get(&sim.manifest_url(ECHO), &[]).0, 404);
    let (status, body) = get(&sim.failover_manifest_url(ECHO), &[]);
    assert_eq!(status, 200);
    assert!(ExtensionManifest::parse(&String::from_utf8(body).unwrap()).is_ok());
    // Nor can the host fetch what storage does not have.
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(true).unwrap();
    assert!(c.extension_artifact(&sim.manifest_url(ECHO), None).is_err());
    assert!(c
        .extension_artifact(&sim.failover_manifest_url(ECHO), None)
        .is_ok());
}

#[test]
fn changing_the_handlers_is_a_new_incarnation() {
    let sim = FabricSim::start(SimConfig {
        handlers: vec![echo(), multi()],
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    let (inc, _) = ext_config(&sim, lib.path());
    assert_eq!(inc, "1");

    // A new seqNo and state, a handler removed, a new version offered.
    let mut e = echo();
    e.seq_no = 4;
    e.state = "disabled".into();
    e.version = "1.2.0".into();
    e.packages.push(waagent::sim::SimPackage {
        version: "1.2.0".into(),
        zip: zip("echo 1.2.0"),
    });
    assert_eq!(sim.set_handlers(vec![e]), 2);
    assert_eq!(sim.config().incarnation, 2);
    let (inc, ec) = ext_config(&sim, lib.path());
    assert_eq!(inc, "2");
    assert_eq!(ec.in_vm_goal_state_metadata.unwrap().in_svd_seq_no, Some(2));
    let [p] = &ec.plugins[..] else {
        panic!("one plugin: {:?}", ec.plugins)
    };
    assert_eq!(
        (p.version.as_str(), p.state, p.settings[0].seq_no),
        ("1.2.0", Some(PluginState::Disabled), 4)
    );
    let (_, body) = get(&sim.manifest_url(ECHO), &[]);
    let m = ExtensionManifest::parse(&String::from_utf8(body).unwrap()).unwrap();
    assert_eq!(m.plugins.len(), 3);
    assert_eq!(
        get(&sim.package_url(ECHO, "1.2.0"), &[]).1,
        zip("echo 1.2.0")
    );
    // What the previous incarnation named stays downloadable.
    assert_eq!(get(&sim.package_url(MULTI, "2.0"), &[]).1, zip("multi 2.0"));

    // No handlers at all: an ExtensionsConfig without plugins.
    assert_eq!(sim.set_handlers(Vec::new()), 3);
    let (_, ec) = ext_config(&sim, lib.path());
    assert!(ec.plugins.is_empty() && ec.status_upload_blob.is_some());
}

#[test]
fn handlers_imply_an_extensions_config() {
    let sim = FabricSim::start(SimConfig {
        extensions_config: false,
        handlers: vec![echo()],
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    assert_eq!(ext_config(&sim, lib.path()).1.plugins.len(), 1);
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn goal_state_incarnation(sim: &FabricSim) -> String {
    let (status, body) = get(
        &format!("{}/machine/?comp=goalstate", sim.endpoint().wire_base()),
        &[("x-ms-version", "2012-11-30")],
    );
    assert_eq!(status, 200);
    GoalState::parse(&String::from_utf8(body).unwrap())
        .unwrap()
        .incarnation
}

#[test]
fn a_watched_handlers_file_is_read_again_on_goal_state_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo-1.zip"), zip("file 1")).unwrap();
    std::fs::write(dir.path().join("echo-2.zip"), zip("file 2")).unwrap();
    let file = dir.path().join("handlers.json");
    let handlers = |seq: u64, versions: &[&str]| {
        let packages: Vec<Value> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"version": v, "zip": format!("echo-{}.zip", i + 1)}))
            .collect();
        json!([{"name": ECHO, "version": versions[0], "seqNo": seq,
                "publicSettings": {"msg": "hi"}, "packages": packages}])
        .to_string()
    };
    write_atomically(&file, &handlers(0, &["1.0.0"]));
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    sim.watch_handlers_file(HandlersFile::new(&file)).unwrap();
    // The first read is the starting point, not a change.
    assert_eq!(goal_state_incarnation(&sim), "1");
    assert_eq!(get(&sim.package_url(ECHO, "1.0.0"), &[]).1, zip("file 1"));
    assert_eq!(goal_state_incarnation(&sim), "1");

    write_atomically(&file, &handlers(1, &["1.0.0", "2.0.0"]));
    assert_eq!(goal_state_incarnation(&sim), "2");
    assert_eq!(goal_state_incarnation(&sim), "2");
    let h = &sim.config().handlers[0];
    assert_eq!((h.seq_no, h.packages.len()), (1, 2));
    assert_eq!(get(&sim.package_url(ECHO, "2.0.0"), &[]).1, zip("file 2"));

    // A broken file is reported once and changes nothing.
    write_atomically(&file, "[{\"name\": \"x\"");
    assert_eq!(goal_state_incarnation(&sim), "2");
    assert_eq!(goal_state_incarnation(&sim), "2");
    let errors = sim.handlers_file_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("not JSON"), "{errors:?}");

    // Rewritten in place, same length: still seen (by its bytes).
    std::fs::write(&file, handlers(2, &["1.0.0"])).unwrap();
    assert_eq!(goal_state_incarnation(&sim), "3");
    std::fs::write(&file, handlers(3, &["1.0.0"])).unwrap();
    assert_eq!(goal_state_incarnation(&sim), "4");
    assert_eq!(sim.config().handlers[0].seq_no, 3);

    // A touch asks for a new incarnation of the same handlers.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(goal_state_incarnation(&sim), "5");
}

#[test]
fn handlers_file_loads_lazily_and_reports_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.json");
    let mut f = HandlersFile::new(&file);
    assert!(f.changed().unwrap_err().contains("h.json"));
    assert_eq!(f.changed(), Ok(None));
    std::fs::write(&file, "[]").unwrap();
    assert_eq!(f.changed(), Ok(Some(Vec::new())));
    assert_eq!(f.changed(), Ok(None));
    std::fs::write(
        &file,
        r#"[{"name": "A.B", "version": "1", "packages": [{"version": "1", "zip": "nope.zip"}]}]"#,
    )
    .unwrap();
    let e = f.changed().unwrap_err();
    assert!(e.contains("packages[0]") && e.contains("nope.zip"), "{e}");
    assert_eq!(f.changed(), Ok(None));
}

/// `fabric-sim` on loopback, its stdout read for the addresses.
struct Program {
    child: Child,
    wire: String,
    plugin: String,
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_program(args: &[&str]) -> Program {
    let mut child = common::own_command(Path::new(env!("CARGO_BIN_EXE_fabric-sim")))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("fabric-sim starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    // "fabric-sim: WireServer on http://…, HostGAPlugin on http://…, IMDS on http://…"
    let urls: Vec<String> = first
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect();
    // Keep draining stdout so the program never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Program {
        child,
        wire: urls[0].clone(),
        plugin: urls[1].clone(),
    }
}

fn records(path: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_program_serves_a_handlers_file_and_records_status_uploads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo.zip"), zip("program")).unwrap();
    let file = dir.path().join("handlers.json");
    let record = dir.path().join("fabric.jsonl");
    let handlers = |seq: u64| {
        json!([{"name": ECHO, "version": "1.0.0", "state": "enabled", "seqNo": seq,
                "publicSettings": {"msg": "hi"},
                "packages": [{"version": "1.0.0", "zip": dir.path().join("echo.zip")}]}])
        .to_string()
    };
    write_atomically(&file, &handlers(0));
    let p = start_program(&[
        "--handlers",
        file.to_str().unwrap(),
        "--record",
        record.to_str().unwrap(),
    ]);
    let gs = |p: &Program| {
        let (_, body) = get(&format!("{}/machine/?comp=goalstate", p.wire), &[]);
        GoalState::parse(&String::from_utf8(body).unwrap()).unwrap()
    };
    let ext = |p: &Program| {
        let g = gs(p);
        let url = g.role_instance.unwrap().extensions_config_url.unwrap();
        let (_, body) = get(&url, &[]);
        (
            g.incarnation,
            ExtensionsConfig::parse(&String::from_utf8(body).unwrap()).unwrap(),
        )
    };
    let (inc, ec) = ext(&p);
    assert_eq!(inc, "1");
    assert_eq!(ec.plugins[0].settings[0].seq_no, 0);
    let manifest_url = ec.plugins[0].location.clone().unwrap();
    assert!(manifest_url.starts_with(&p.wire));
    let (_, m) = get(&manifest_url, &[]);
    let pkg = ExtensionManifest::parse(&String::from_utf8(m).unwrap())
        .unwrap()
        .plugins[0]
        .uris[0]
        .clone();
    assert_eq!(get(&pkg, &[]), (200, zip("program")));

    write_atomically(&file, &handlers(5));
    let (inc, ec) = ext(&p);
    assert_eq!((inc.as_str(), ec.plugins[0].settings[0].seq_no), ("2", 5));
    wait_for("the new incarnation in the record", || {
        records(&record, "incarnation") == [json!({"kind": "incarnation", "incarnation": 2})]
    });

    // A status upload through the HostGAPlugin is recorded with its content.
    let status = r#"{"version":"1.1","aggregateStatus":{}}"#;
    let envelope = waagent::wire::reports::status_envelope(
        &ec.status_upload_blob.unwrap().url,
        &[
            ("x-ms-version", "2014-02-14"),
            ("x-ms-blob-type", "BlockBlob"),
        ],
        Some(status.as_bytes()),
    );
    let r = waagent::http::send(&waagent::http::Request {
        method: "PUT",
        url: &format!("{}/status", p.plugin),
        headers: &[("Content-Type", "application/json")],
        body: Some(envelope.as_bytes()),
        timeout_secs: 5,
        max_body: 1024,
        proxy: None,
    })
    .unwrap();
    assert_eq!(r.status, 200);
    wait_for("the status upload in the record", || {
        !records(&record, "status").is_empty()
    });
    let up = &records(&record, "status")[0];
    assert_eq!(
        (up["via"].as_str(), up["content"].as_str()),
        (Some("HostPlugin"), Some(status))
    );
    assert!(records(&record, "request").iter().any(|r| r["target"]
        .as_str()
        .is_some_and(|t| t.ends_with("Echo__1.0.0"))));
}

/// A `POST` of `body` to `url`; the status.
fn post(url: &str, body: &str) -> u16 {
    waagent::http::send(&waagent::http::Request {
        method: "POST",
        url,
        headers: &[("Content-Type", "text/xml; charset=utf-8")],
        body: Some(body.as_bytes()),
        timeout_secs: 5,
        max_body: 1024,
        proxy: None,
    })
    .expect("the simulator answers")
    .status
}

fn epoch_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn waiting_for_requests_returns_as_soon_as_one_is_recorded() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    // Nothing arrives: the wait ends at its timeout with what there was.
    assert_eq!(sim.wait_for_requests(0, Duration::from_millis(20)), 0);
    let url = format!("{}/?comp=versions", sim.endpoint().wire_base());
    let client = std::thread::spawn(move || get(&url, &[]).0);
    // A long timeout: the wait ends because the request came (a test that
    // hangs here is the failure), and the request is there with its time.
    assert_eq!(sim.wait_for_requests(0, Duration::from_secs(600)), 1);
    assert_eq!(client.join().unwrap(), 200);
    let r = &sim.requests()[0];
    assert_eq!(r.request.target, "/?comp=versions");
    assert!(r.at <= std::time::SystemTime::now());
}

#[test]
fn the_record_carries_when_each_request_and_report_was_received() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("fabric.jsonl");
    let p = start_program(&["--record", record.to_str().unwrap()]);
    let (_, body) = get(&format!("{}/machine/?comp=goalstate", p.wire), &[]);
    let gs = GoalState::parse(&String::from_utf8(body).unwrap()).unwrap();
    let ri = gs.role_instance.unwrap();
    let target = waagent::wire::reports::ReportTarget {
        incarnation: gs.incarnation.clone(),
        container_id: gs.container_id.clone(),
        instance_id: ri.instance_id.clone(),
    };
    let before = epoch_secs(std::time::SystemTime::now());
    let xml = waagent::wire::reports::health_xml(&target, &waagent::wire::reports::Health::Ready);
    assert_eq!(post(&format!("{}/machine?comp=health", p.wire), &xml), 200);
    let after = epoch_secs(std::time::SystemTime::now());
    wait_for("the health report in the record", || {
        !records(&record, "health").is_empty()
    });
    let health = &records(&record, "health")[0];
    assert_eq!(health["state"], "Ready");
    let t = health["t"].as_f64().expect("a time");
    // Within a microsecond's rounding of the window the report was sent in.
    assert!(
        before - 1e-6 <= t && t <= after + 1e-6,
        "{before} <= {t} <= {after}"
    );
    let posted: Vec<Value> = records(&record, "request")
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posted.len(), 1);
    let rt = posted[0]["t"].as_f64().expect("a time");
    assert!(
        before - 1e-6 <= rt && rt <= t + 1e-6,
        "{before} <= {rt} <= {t}"
    );
    // Every request line has its time, in arrival order.
    let times: Vec<f64> = records(&record, "request")
        .iter()
        .map(|r| r["t"].as_f64().expect("a time"))
        .collect();
    assert_eq!(times.len(), 2);
    assert!(times[0] <= times[1]);
}

#[test]
fn the_goal_state_names_a_certificates_document_only_when_there_are_certificates() {
    let certs_url = |args: &[&str]| {
        let p = start_program(args);
        let (_, body) = get(&format!("{}/machine/?comp=goalstate", p.wire), &[]);
        let gs = GoalState::parse(&String::from_utf8(body).unwrap()).unwrap();
        gs.role_instance.unwrap().certificates_url
    };
    // Today's usual VM: an SSH key inline in ovf-env.xml, no certificates.
    assert_eq!(certs_url(&[]), None);
    let dir = tempfile::tempdir().unwrap();
    let url = certs_url(&["--new-tenant-cert", dir.path().to_str().unwrap()]);
    assert!(url.is_some_and(|u| u.contains("comp=certificates")));
}

#[test]
fn what_waagent_also_sends_is_answered_as_azure_answers_it() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let wire = sim.endpoint().wire_base();
    let events = "<?xml version=\"1.0\"?><TelemetryData version=\"1.0\"><Provider id=\"69B669B9-4AF8-4C50-BDC4-6006FA76E975\"></Provider></TelemetryData>";
    assert_eq!(
        post(&format!("{wire}/machine?comp=telemetrydata"), events),
        200
    );
    assert_eq!(
        post(
            &format!("{wire}/HealthService"),
            "{\"Api\":\"reporttargethealth\"}"
        ),
        200
    );
    // Recorded with their bodies, like every request.
    let posts: Vec<(String, String)> = sim
        .requests()
        .into_iter()
        .map(|r| (r.request.target, String::from_utf8(r.request.body).unwrap()))
        .collect();
    assert_eq!(
        posts[0],
        (
            "/machine?comp=telemetrydata".to_string(),
            events.to_string()
        )
    );
    assert_eq!(posts[1].0, "/HealthService");

    // IMDS: the compute part alone, as waagent asks for it, is the same
    // object as in the whole document; without the Metadata header, 400.
    let imds = sim.imds_base();
    let meta = [("Metadata", "true")];
    let (status, whole) = get(
        &format!("{imds}/metadata/instance?api-version=2018-02-01"),
        &meta,
    );
    assert_eq!(status, 200);
    let whole: Value = serde_json::from_slice(&whole).unwrap();
    let (status, compute) = get(
        &format!("{imds}/metadata/instance/compute?api-version=2018-02-01"),
        &meta,
    );
    assert_eq!(status, 200);
    let compute: Value = serde_json::from_slice(&compute).unwrap();
    assert_eq!(compute, whole["compute"]);
    assert_eq!(compute["vmId"], "e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e");
    assert_eq!(
        get(&format!("{imds}/metadata/instance/compute"), &[]).0,
        400
    );
    assert_eq!(
        get(&format!("{imds}/metadata/instance/network"), &meta).0,
        404
    );
}
