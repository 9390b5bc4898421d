//! The WireServer client against the fabric simulator: the whole exchange of
//! a first boot, then each fault the simulator can inject.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use waagent::os::SystemRunner;
use waagent::sim::certs::generate_tenant_cert;
use waagent::sim::{FabricSim, Fault, Service, SimConfig};
use waagent::wire::client::{ClientOptions, RetryPolicy, WireClient, WireError};
use waagent::wire::crypto::Openssl;
use waagent::wire::endpoint;
use waagent::wire::reports::{self, Health, SubStatus};

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        quick_retries: 0,
        quick_delay: Duration::ZERO,
        delay: Duration::from_millis(5),
        throttled_attempts: 6,
        throttled_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(20),
        no_role_instance_delay: Duration::from_millis(5),
    }
}

fn client(sim: &FabricSim, lib: &Path) -> WireClient {
    client_with(sim, lib, 1, None)
}

/// A client with `timeout_secs` and, for storage, `storage_proxy`.
fn client_with(
    sim: &FabricSim,
    lib: &Path,
    timeout_secs: u64,
    storage_proxy: Option<String>,
) -> WireClient {
    let openssl = Openssl::new(PathBuf::from("openssl"), Rc::new(SystemRunner));
    WireClient::new(
        sim.endpoint(),
        lib,
        openssl,
        ClientOptions {
            timeout_secs,
            retry: fast_policy(),
            health_retry: fast_policy(),
            storage_proxy,
        },
    )
}

/// A simulator whose goal state has Certificates: one tenant certificate
/// with its private key, named `cn`; and its thumbprint.
fn sim_with_tenant_cert(cn: &str) -> (FabricSim, String) {
    let tenant = generate_tenant_cert(cn).expect("tenant certificate");
    let thumbprint = tenant.thumbprint();
    let sim = FabricSim::start(SimConfig {
        tenant_certs: vec![tenant],
        ..SimConfig::default()
    })
    .unwrap();
    (sim, thumbprint)
}

/// Every file under `dir` with its bytes, to prove a failure changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn targets(sim: &FabricSim) -> Vec<String> {
    sim.requests()
        .iter()
        .map(|r| format!("{} {}", r.request.method, r.request.target))
        .collect()
}

#[test]
fn first_boot_exchange_versions_goal_state_certificates_not_ready_ready() {
    let (sim, thumbprint) = sim_with_tenant_cert("simulated-tenant");
    let lib = tempfile::tempdir().unwrap();
    // Discovery: option 245 in a networkd lease names the simulator's address
    // (loopback here); the ports are the simulator's.
    let leases = tempfile::tempdir().unwrap();
    let lease = leases.path().join("2");
    std::fs::write(&lease, "ADDRESS=10.0.0.69\nOPTION_245=7f000001\n").unwrap();
    let (ip, source) = endpoint::discover(lib.path(), &[lease], true, std::time::SystemTime::now());
    assert_eq!(
        (ip.to_string(), source),
        (sim.endpoint().host, endpoint::Source::DhcpLease)
    );
    let mut c = client(&sim, lib.path());

    c.versions().expect("versions");
    endpoint::write_cache(lib.path(), ip).unwrap();
    assert_eq!(endpoint::read_cache(lib.path()), Some(ip));
    let full = c
        .update_goal_state(false)
        .expect("goal state")
        .expect("a new incarnation");
    assert_eq!(full.goal_state.incarnation, "1");
    assert_eq!(full.hosting_env.vm_name, "simvm");
    assert_eq!(full.certificates.len(), 1);
    assert_eq!(full.certificates[0].thumbprint, thumbprint);
    assert!(full.certificates[0].has_private_key);
    let status_blob = full
        .extensions_config
        .as_ref()
        .and_then(|e| e.status_upload_blob.as_ref())
        .expect("status blob");
    assert_eq!(status_blob.url, sim.status_blob_url());

    let target = full.report_target().unwrap();
    let not_ready = Health::NotReady {
        sub_status: SubStatus::Provisioning,
        description: "Starting".into(),
    };
    c.report_health(&target, &not_ready).unwrap();
    c.report_health(&target, &Health::Ready).unwrap();

    let m = format!("/machine/{}", sim.config().container_id);
    assert_eq!(
        targets(&sim),
        vec![
            "GET /?comp=versions".to_string(),
            "GET /machine/?comp=goalstate".into(),
            format!("GET {m}?comp=config&type=hostingEnvironmentConfig&incarnation=1"),
            format!("GET {m}?comp=config&type=sharedConfig&incarnation=1"),
            format!("GET {m}?comp=config&type=extensionsConfig&incarnation=1"),
            // Last: the transport certificate may still be being generated.
            format!("GET {m}?comp=certificates&incarnation=1"),
            "POST /machine?comp=health".into(),
            "POST /machine?comp=health".into(),
        ]
    );
    let reqs = sim.requests();
    for r in &reqs[1..] {
        assert_eq!(
            r.request.header("x-ms-version"),
            Some("2012-11-30"),
            "{}",
            r.request.target
        );
        assert_eq!(r.request.header("x-ms-agent-name"), Some("WALinuxAgent"));
    }
    // The Certificates request carries the transport certificate on one line.
    let cert_req = &reqs[5].request;
    assert_eq!(cert_req.header("x-ms-cipher-name"), Some("AES128_CBC"));
    let header = cert_req
        .header("x-ms-guest-agent-public-x509-cert")
        .unwrap();
    let pem = std::fs::read_to_string(lib.path().join("TransportCert.pem")).unwrap();
    let pem_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(header, pem_body);
    // Health bodies exactly as built, and as the fabric understood them.
    assert_eq!(
        reqs[6].request.body,
        reports::health_xml(&target, &not_ready).into_bytes()
    );
    assert_eq!(
        reqs[7].request.body,
        reports::health_xml(&target, &Health::Ready).into_bytes()
    );
    assert_eq!(
        reqs[6].request.header("content-type"),
        Some("text/xml;charset=utf-8")
    );
    let seen = sim.health_reports();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (
            seen[0].state.as_str(),
            seen[0].sub_status.as_deref(),
            seen[0].description.as_deref()
        ),
        ("NotReady", Some("Provisioning"), Some("Starting"))
    );
    assert_eq!(
        (seen[1].state.as_str(), seen[1].sub_status.as_deref()),
        ("Ready", None)
    );
    for h in &seen {
        assert_eq!(h.incarnation, "1");
        assert_eq!(h.container_id, sim.config().container_id);
        assert_eq!(h.instance_id, sim.config().instance_id);
    }

    // Lib.Dir holds waagent's files with private modes.
    let files = snapshot(lib.path());
    for name in [
        "GoalState.1.xml",
        "HostingEnvironmentConfig.xml",
        "SharedConfig.xml",
        "Certificates.xml",
        "ExtensionsConfig.1.xml",
        "Incarnation",
        "WireServerEndpoint",
        "TransportCert.pem",
        "TransportPrivate.pem",
    ] {
        assert!(
            files.contains_key(name),
            "{name} missing: {:?}",
            files.keys()
        );
    }
    assert_eq!(files["Incarnation"], b"1");
    assert_eq!(mode(&lib.path().join("TransportPrivate.pem")), 0o600);
    assert_eq!(mode(&lib.path().join(format!("{thumbprint}.prv"))), 0o600);
    assert!(lib.path().join(format!("{thumbprint}.crt")).exists());
    assert_eq!(mode(&lib.path().join("ExtensionsConfig.1.xml")), 0o600);
}

#[test]
fn same_incarnation_fetches_nothing_new_and_a_bump_fetches_everything() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    assert!(c.update_goal_state(false).unwrap().is_some());
    let n = sim.requests().len();
    assert!(c.update_goal_state(false).unwrap().is_none());
    assert_eq!(
        targets(&sim)[n..],
        ["GET /machine/?comp=goalstate".to_string()]
    );

    assert_eq!(sim.bump_incarnation(), 2);
    let full = c.update_goal_state(false).unwrap().expect("incarnation 2");
    assert_eq!(full.goal_state.incarnation, "2");
    assert_eq!(
        std::fs::read_to_string(lib.path().join("Incarnation")).unwrap(),
        "2"
    );
    assert!(lib.path().join("GoalState.2.xml").exists());
    assert!(lib.path().join("ExtensionsConfig.2.xml").exists());
    // No certificates in this goal state: no transport key was needed.
    assert!(!lib.path().join("TransportPrivate.pem").exists());
}

/// The client keeps the latest goal state's LBProbePorts, read strictly,
/// whether or not its incarnation is new; a failed poll keeps them.
#[test]
fn the_latest_lb_probe_ports_are_kept_from_every_goal_state() {
    let sim = FabricSim::start(SimConfig {
        lb_probe_ports: vec!["16001".into(), "0".into(), "16001".into()],
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    assert!(c.lb_probe_ports().is_none());
    c.update_goal_state(false).unwrap().expect("incarnation 1");
    let p = c.lb_probe_ports().unwrap();
    assert_eq!(p.ports, [16001]);
    assert_eq!(
        p.refused,
        ["/GoalState/Machine/LBProbePorts/Port[2]: \"0\" is not a port (1-65535)"]
    );
    // Same incarnation: nothing new to fetch, the ports still read.
    assert!(c.update_goal_state(false).unwrap().is_none());
    assert_eq!(c.lb_probe_ports().unwrap().ports, [16001]);

    assert_eq!(sim.set_lb_probe_ports(vec!["80".into(), "443".into()]), 2);
    c.update_goal_state(false).unwrap().expect("incarnation 2");
    assert_eq!(c.lb_probe_ports().unwrap().ports, [80, 443]);
    let saved = std::fs::read_to_string(lib.path().join("GoalState.2.xml")).unwrap();
    assert!(saved.contains("<LBProbePorts><Port>80</Port><Port>443</Port></LBProbePorts>"));

    sim.inject("comp=goalstate", vec![Fault::Status(500); 3]);
    assert!(c.update_goal_state(false).is_err());
    assert_eq!(c.lb_probe_ports().unwrap().ports, [80, 443]);

    assert_eq!(sim.set_lb_probe_ports(Vec::new()), 3);
    c.update_goal_state(false).unwrap().expect("incarnation 3");
    assert!(c.lb_probe_ports().unwrap().ports.is_empty());
}

#[test]
fn server_errors_are_retried_then_succeed() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let c = client(&sim, lib.path());
    sim.inject("comp=versions", [Fault::Status(503), Fault::Status(500)]);
    c.versions().unwrap();
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 500, 200]);
}

/// `inject_after` lets the first requests through (the fault matrix puts a
/// fault on the Ready report, after the NotReady one), and each request is
/// recorded with when it arrived, on the simulator's clock.
#[test]
fn a_fault_can_wait_for_a_later_request_and_arrivals_are_timed() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    sim.inject_after("comp=versions", 2, [Fault::Status(503)]);
    let c = client(&sim, lib.path());
    for _ in 0..3 {
        c.versions().unwrap();
    }
    let seen = sim.requests_to("comp=versions");
    let statuses: Vec<u16> = seen.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 503, 200]);
    assert_eq!(seen[2].fault, Some(Fault::Status(503)));
    // The retry waited the policy's 5 ms, as the simulator saw it.
    assert!(seen.windows(2).all(|w| w[0].at <= w[1].at));
    let waited = seen[3].at.duration_since(seen[2].at).unwrap_or_default();
    assert!(waited >= Duration::from_millis(5), "{waited:?}");
}

#[test]
fn throttling_raises_the_attempt_budget() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let c = client(&sim, lib.path());
    // Five 429s exceed the normal budget of 3 but not the throttled one of 6.
    sim.inject("comp=versions", vec![Fault::Status(429); 5]);
    c.versions().unwrap();
    assert_eq!(sim.requests().len(), 6);
}

#[test]
fn persistent_failure_gives_up_with_a_clear_error() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    sim.inject("comp=goalstate", vec![Fault::Status(500); 10]);
    let err = c.update_goal_state(false).unwrap_err();
    let base = sim.endpoint().wire_base();
    assert_eq!(
        err.to_string(),
        format!("{base}/machine/?comp=goalstate: HTTP 500 (gave up after 3 attempts)")
    );
    assert_eq!(sim.requests().len(), 3);
    assert!(snapshot(lib.path()).is_empty());

    // Not retryable: one request, the status in the error.
    sim.inject("comp=versions", [Fault::Status(404)]);
    let err = c.versions().unwrap_err();
    assert_eq!(err.to_string(), format!("{base}/?comp=versions: HTTP 404"));
    assert_eq!(sim.requests_to("comp=versions").len(), 1);
}

#[test]
fn gone_sub_document_refetches_the_goal_state() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    sim.inject("type=sharedConfig", [Fault::Status(410)]);
    let full = c.update_goal_state(false).unwrap().unwrap();
    assert_eq!(full.goal_state.incarnation, "1");
    assert_eq!(sim.requests_to("comp=goalstate").len(), 2);
    assert_eq!(sim.requests_to("type=sharedConfig").len(), 2);

    // A sub-document of an older incarnation really is gone at the simulator.
    let stale = sim.requests_to("type=hostingEnvironmentConfig")[0]
        .request
        .target
        .clone();
    sim.bump_incarnation();
    let url = format!("{}{stale}", sim.endpoint().wire_base());
    let r = waagent::http::send(&waagent::http::Request {
        method: "GET",
        url: &url,
        headers: &[],
        body: None,
        timeout_secs: 2,
        max_body: 1024,
        proxy: None,
    })
    .unwrap();
    assert_eq!(r.status, 410);
}

#[test]
fn gone_every_round_fails_and_writes_nothing() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    sim.inject("type=hostingEnvironmentConfig", vec![Fault::Status(410); 3]);
    let err = c.update_goal_state(false).unwrap_err();
    assert!(
        err.to_string().ends_with("HTTP 410 (goal state is stale)"),
        "{err}"
    );
    assert_eq!(sim.requests_to("comp=goalstate").len(), 3);
    assert!(snapshot(lib.path()).is_empty());
}

#[test]
fn timeouts_resets_and_truncated_bodies_are_retried() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    sim.inject("comp=goalstate", [Fault::Delay(Duration::from_secs(3))]);
    sim.inject("comp=versions", [Fault::Reset]);
    sim.inject("type=sharedConfig", [Fault::Truncate]);
    c.versions().unwrap();
    c.update_goal_state(false).unwrap().unwrap();
    let faults = |p: &str| -> Vec<Option<Fault>> {
        sim.requests_to(p).into_iter().map(|r| r.fault).collect()
    };
    assert_eq!(
        faults("comp=goalstate"),
        vec![Some(Fault::Delay(Duration::from_secs(3))), None]
    );
    assert_eq!(faults("comp=versions"), vec![Some(Fault::Reset), None]);
    assert_eq!(
        faults("type=sharedConfig"),
        vec![Some(Fault::Truncate), None]
    );
}

#[test]
fn a_broken_document_keeps_the_previous_incarnation_whole() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let before = snapshot(lib.path());

    sim.bump_incarnation();
    sim.inject("type=extensionsConfig", [Fault::Malformed]);
    let err = c.update_goal_state(false).unwrap_err();
    assert!(matches!(err, WireError::Document(_)), "{err}");
    assert!(err.to_string().starts_with("ExtensionsConfig: "), "{err}");
    assert_eq!(snapshot(lib.path()), before);
    // Not retried: malformed XML is not a transient failure.
    assert_eq!(sim.requests_to("type=extensionsConfig").len(), 2);

    // Truncated beyond the retry budget: same, nothing written.
    sim.inject("type=hostingEnvironmentConfig", vec![Fault::Truncate; 3]);
    assert!(c.update_goal_state(false).is_err());
    assert_eq!(snapshot(lib.path()), before);

    // And the next poll gets incarnation 2 cleanly.
    assert_eq!(
        c.update_goal_state(false)
            .unwrap()
            .unwrap()
            .goal_state
            .incarnation,
        "2"
    );
}

#[test]
fn oversized_responses_are_refused() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    sim.inject("comp=goalstate", vec![Fault::Oversized(5 << 20); 3]);
    let err = c.update_goal_state(false).unwrap_err().to_string();
    assert!(
        err.contains("response larger than 4194304 bytes refused"),
        "{err}"
    );
    assert!(err.ends_with("(gave up after 3 attempts)"), "{err}");
    assert!(snapshot(lib.path()).is_empty());
}

#[test]
fn a_server_without_our_protocol_version_is_refused() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    sim.override_document(
        "versions",
        "<Versions><Preferred><Version>2015-04-05</Version></Preferred><Supported><Version>2010-12-15</Version></Supported></Versions>",
    );
    let err = client(&sim, lib.path()).versions().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the WireServer does not support protocol 2012-11-30 (it offers 2015-04-05, 2010-12-15)"
    );
}

#[test]
fn certificates_fall_back_to_des_ede3_when_aes128_is_refused() {
    let tenant = generate_tenant_cert("des-tenant").unwrap();
    let thumbprint = tenant.thumbprint();
    let sim = FabricSim::start(SimConfig {
        tenant_certs: vec![tenant],
        refuse_aes128: true,
        ..SimConfig::default()
    })
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    let full = client(&sim, lib.path())
        .update_goal_state(true)
        .unwrap()
        .unwrap();
    assert_eq!(full.certificates[0].thumbprint, thumbprint);
    let ciphers: Vec<_> = sim
        .requests_to("comp=certificates")
        .iter()
        .map(|r| {
            (
                r.request
                    .header("x-ms-cipher-name")
                    .unwrap_or("")
                    .to_string(),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        ciphers,
        vec![
            ("AES128_CBC".to_string(), 400),
            ("DES_EDE3_CBC".to_string(), 200)
        ]
    );
}

#[test]
fn goal_state_without_role_instance_is_asked_again() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    sim.override_document(
        "goalstate",
        "<GoalState><Version>2012-11-30</Version><Incarnation>1</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine><Container><ContainerId>c1</ContainerId></Container></GoalState>",
    );
    let err = client(&sim, lib.path())
        .update_goal_state(false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "GoalState: no RoleInstance in the goal state"
    );
    assert_eq!(sim.requests_to("comp=goalstate").len(), 6);
}

#[test]
fn role_properties_carry_the_host_key_fingerprint() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    let full = c.update_goal_state(false).unwrap().unwrap();
    c.report_role_properties(&full.report_target().unwrap(), "SHA256abcdef")
        .unwrap();
    assert_eq!(
        sim.role_properties(),
        vec![(sim.config().instance_id, "SHA256abcdef".to_string())]
    );
}

/// A 410 on a report: the goal state moved on, so it is fetched again and
/// the report sent once more, about the incarnation it names (found by the
/// fault matrix: the report was dropped).
#[test]
fn a_report_answered_410_is_sent_again_about_the_goal_state_fetched_again() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    let full = c.update_goal_state(false).unwrap().unwrap();
    let target = full.report_target().unwrap();
    sim.inject("comp=health", [Fault::Status(410)]);
    sim.bump_incarnation();
    c.report_health(&target, &Health::Ready).unwrap();
    let reports = sim.health_reports();
    let states: Vec<(&str, &str)> = reports
        .iter()
        .map(|h| (h.state.as_str(), h.incarnation.as_str()))
        .collect();
    // The 410 ate the first (the simulator records what it answered).
    assert_eq!(states, [("Ready", "2")]);
    let all = targets(&sim);
    let first_post = all.iter().position(|t| t.starts_with("POST")).unwrap();
    let requests = all[first_post..].to_vec();
    assert_eq!(
        requests,
        [
            "POST /machine?comp=health",
            "GET /machine/?comp=goalstate",
            "POST /machine?comp=health"
        ]
    );

    sim.inject("comp=roleProperties", [Fault::Status(410)]);
    c.report_role_properties(&target, "SHA256abcdef").unwrap();
    assert_eq!(sim.role_properties().len(), 1);
    // Twice gone: given up, named.
    sim.inject("comp=health", vec![Fault::Status(410); 2]);
    let err = c.report_health(&target, &Health::Ready).unwrap_err();
    assert!(err.to_string().contains("HTTP 410"), "{err}");
}

#[test]
fn role_properties_must_be_accepted_with_202() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    let full = c.update_goal_state(false).unwrap().unwrap();
    sim.inject("comp=roleProperties", [Fault::Status(200)]);
    let err = c
        .report_role_properties(&full.report_target().unwrap(), "x")
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("/machine?comp=roleProperties: HTTP 200"),
        "{err}"
    );
}

#[test]
fn hostplugin_health_artifacts_and_status_upload() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    assert!(c.hostplugin_health().unwrap());
    assert!(c.hostplugin_supported().unwrap());

    let url = sim.put_blob("manifest.xml", b"<PluginVersionManifest/>".to_vec());
    assert_eq!(
        c.extension_artifact(&url, None).unwrap(),
        b"<PluginVersionManifest/>"
    );

    let status = br#"{"version":"1.1","timestampUTC":"2026-11-27T09:00:00Z"}"#;
    c.put_status(&sim.status_blob_url(), status).unwrap();
    let uploads = sim.status_uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].via, Service::HostPlugin);
    assert_eq!(uploads[0].blob_url, sim.status_blob_url());
    assert_eq!(uploads[0].content, status);

    let put = &sim.requests_to("/status")[0].request;
    assert_eq!(put.header("x-ms-version"), Some("2015-09-01"));
    assert_eq!(
        put.header("x-ms-containerid"),
        Some(sim.config().container_id.as_str())
    );
    assert_eq!(
        put.header("x-ms-host-config-name"),
        Some(sim.config().role_config_name.as_str())
    );
    let envelope: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(
        envelope["headers"],
        serde_json::json!([
            {"headerName": "x-ms-version", "headerValue": "2014-02-14"},
            {"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"}
        ])
    );
}

#[test]
fn hostplugin_stale_container_refreshes_the_goal_state_once() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let gs_before = sim.requests_to("comp=goalstate").len();
    sim.inject("/status", [Fault::Status(410)]);
    c.put_status(&sim.status_blob_url(), b"{}").unwrap();
    assert_eq!(sim.requests_to("comp=goalstate").len(), gs_before + 1);
    assert_eq!(sim.requests_to("/status").len(), 2);
    assert_eq!(sim.status_uploads().len(), 1);
}

#[test]
fn status_falls_back_to_storage_and_page_blobs_are_padded() {
    use waagent::wire::docs::{StatusBlobType, StatusUploadBlob};
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let content = br#"{"version":"1.1"}"#;

    // The HostGAPlugin fails: the block blob goes straight to storage.
    sim.inject("/status", vec![Fault::Status(500); 3]);
    let block = StatusUploadBlob {
        url: sim.status_blob_url(),
        blob_type: StatusBlobType::BlockBlob,
    };
    c.upload_status(&block, content).unwrap();
    let uploads = sim.status_uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        (uploads[0].via, uploads[0].content.as_slice()),
        (Service::Wire, &content[..])
    );
    let put = sim
        .requests()
        .into_iter()
        .rfind(|r| r.request.method == "PUT")
        .unwrap()
        .request;
    assert_eq!(put.header("x-ms-blob-type"), Some("BlockBlob"));
    assert_eq!(put.header("x-ms-version"), Some("2014-02-14"));
    assert!(put
        .header("x-ms-date")
        .is_some_and(|d| d.ends_with('Z') && d.len() == 20));

    // A page blob: created at the padded size, then one zero-padded page write.
    let page = StatusUploadBlob {
        url: sim.status_blob_url(),
        blob_type: StatusBlobType::PageBlob,
    };
    c.upload_status(&page, content).unwrap();
    let puts: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.request.method == "PUT")
        .map(|r| r.request)
        .collect();
    let (create, write) = (&puts[puts.len() - 2], &puts[puts.len() - 1]);
    assert_eq!(create.header("x-ms-blob-type"), Some("PageBlob"));
    assert_eq!(create.header("x-ms-blob-content-length"), Some("512"));
    assert!(create.body.is_empty());
    assert!(write.target.ends_with("&comp=page"), "{}", write.target);
    assert_eq!(write.header("x-ms-range"), Some("bytes=0-511"));
    assert_eq!(write.header("x-ms-page-write"), Some("update"));
    assert_eq!(write.body.len(), 512);
    assert_eq!(&write.body[..content.len()], content);
    assert!(write.body[content.len()..].iter().all(|b| *b == 0));
}

/// A CONNECT proxy on loopback: records each CONNECT line and tunnels.
fn connect_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                record.lock().unwrap().push(first.trim().to_string());
                let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let upstream = std::net::TcpStream::connect(target).unwrap();
                let mut client = conn;
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
                let mut client_w = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut reader, &mut up_w);
                });
                let _ = std::io::copy(&mut up_r, &mut client_w);
            });
        }
    });
    (url, seen)
}

#[test]
fn storage_goes_through_the_proxy_and_the_wireserver_never_does() {
    use waagent::wire::docs::{StatusBlobType, StatusUploadBlob};
    let (proxy, seen) = connect_proxy();
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client_with(&sim, lib.path(), 2, Some(proxy));
    c.versions().unwrap();
    c.update_goal_state(false).unwrap().unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "WireServer traffic went through the proxy"
    );

    // The HostGAPlugin refuses; storage is reached through the proxy.
    sim.inject("/status", vec![Fault::Status(500); 3]);
    let blob = StatusUploadBlob {
        url: sim.status_blob_url(),
        blob_type: StatusBlobType::BlockBlob,
    };
    c.upload_status(&blob, b"{}").unwrap();
    let ep = sim.endpoint();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("CONNECT {}:{} HTTP/1.1", ep.host, ep.wire_port)]
    );
    assert_eq!(sim.status_uploads().len(), 1);
}

#[test]
fn an_incarnation_that_is_not_a_number_is_refused_and_names_no_file() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let before = snapshot(lib.path());

    sim.bump_incarnation();
    sim.inject(
        "comp=goalstate",
        [Fault::Replace(
            "<Incarnation>2</Incarnation>".into(),
            "<Incarnation>../../../tmp/evil</Incarnation>".into(),
        )],
    );
    let err = c.update_goal_state(false).unwrap_err();
    assert!(matches!(err, WireError::Document(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "GoalState: /GoalState/Incarnation: not a number of at most 20 digits"
    );
    assert_eq!(snapshot(lib.path()), before);
    assert!(!lib.path().join("../../../tmp/evil.xml").exists());

    // The next poll, with a sane goal state, goes on as usual.
    let full = c.update_goal_state(false).unwrap().unwrap();
    assert_eq!(full.goal_state.incarnation, "2");
}

/// Bytes no text handling would keep intact, like a zip's.
fn package_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const SAS: &str = "?sv=2018-03-28&sr=b&sig=c2VjcmV0LXNpZw%3D%3D";

#[test]
fn a_package_downloads_straight_from_storage_into_a_private_file() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    // Several times the download buffer.
    let data = package_bytes(300_000);
    let url = sim.put_blob("Contoso.Ext__1.0.zip", data.clone()) + SAS;
    let manifest = sim.put_blob("manifest.xml", b"<PluginVersionManifest/>".to_vec());
    let dest = lib.path().join("Contoso.Ext__1.0.zip");

    let n = c
        .download_artifact(&url, Some(&manifest), &dest, 1 << 20)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(mode(&dest), 0o600);
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "{:?}", targets(&sim));
    assert_eq!(requests[0].service, Service::Wire);
    assert_eq!(
        requests[0].request.target,
        format!("/blob/Contoso.Ext__1.0.zip{SAS}")
    );
    assert_eq!(
        requests[0].request.header("x-ms-version"),
        Some("2014-02-14")
    );
}

#[test]
fn a_storage_refusal_falls_back_to_the_hostgaplugin() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let data = package_bytes(100_000);
    let url = sim.put_blob("Contoso.Ext__1.0.zip", data.clone()) + SAS;
    let manifest = sim.put_blob("manifest.xml", b"<PluginVersionManifest/>".to_vec()) + SAS;
    let dest = lib.path().join("Contoso.Ext__1.0.zip");

    // 403 is throttling for fabric calls (25 attempts); storage gets one,
    // since the plugin is the way round a network that blocks storage.
    sim.inject(
        "/blob/Contoso.Ext",
        [Fault::Status(403), Fault::Status(403)],
    );
    let n = c
        .download_artifact(&url, Some(&manifest), &dest, 1 << 20)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let direct = sim.requests_to("/blob/Contoso.Ext");
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0].status, 403);
    let via = sim.requests_to("/extensionArtifact");
    assert_eq!(via.len(), 1);
    assert_eq!(via[0].service, Service::HostPlugin);
    let r = &via[0].request;
    assert_eq!(r.method, "GET");
    assert_eq!(r.header("x-ms-artifact-location"), Some(url.as_str()));
    assert_eq!(
        r.header("x-ms-artifact-manifest-location"),
        Some(manifest.as_str())
    );
    assert_eq!(r.header("x-ms-version"), Some("2015-09-01"));
    assert_eq!(
        r.header("x-ms-containerid"),
        Some(sim.config().container_id.as_str())
    );

    // Without a manifest URI the header is left out.
    let second = lib.path().join("second.zip");
    c.download_artifact(&url, None, &second, 1 << 20).unwrap();
    assert_eq!(std::fs::read(&second).unwrap(), data);
    let via = sim.requests_to("/extensionArtifact");
    assert_eq!(via.len(), 2);
    assert_eq!(
        via[1].request.header("x-ms-artifact-manifest-location"),
        None
    );
}

#[test]
fn the_plugin_download_refreshes_a_stale_container_and_retries_a_cut_body() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let gs_before = sim.requests_to("comp=goalstate").len();
    let data = package_bytes(50_000);
    let url = sim.put_blob("Contoso.Ext__1.0.zip", data.clone());
    let dest = lib.path().join("Contoso.Ext__1.0.zip");
    // The blob store is the WireServer's address here, so the download
    // goes on the connection the goal state kept: a reset there before any
    // answer is sent again at once on a new connection, and only a reset
    // of that one too fails the direct download.
    sim.inject("/blob/Contoso.Ext", [Fault::Reset, Fault::Reset]);
    sim.inject("/extensionArtifact", [Fault::Status(410), Fault::Truncate]);

    c.download_artifact(&url, None, &dest, 1 << 20).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(sim.requests_to("comp=goalstate").len(), gs_before + 1);
    let statuses: Vec<(u16, Option<Fault>)> = sim
        .requests_to("/extensionArtifact")
        .into_iter()
        .map(|r| (r.status, r.fault))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (410, Some(Fault::Status(410))),
            (200, Some(Fault::Truncate)),
            (200, None)
        ]
    );
}

#[test]
fn a_download_that_fails_both_ways_leaves_no_file() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let before = listing(lib.path());
    let ep = sim.endpoint();
    let url = format!("http://{}:{}/blob/missing.zip{SAS}", ep.host, ep.wire_port);
    let dest = lib.path().join("missing.zip");
    let err = c.download_artifact(&url, None, &dest, 1 << 20).unwrap_err();
    assert!(
        matches!(err, WireError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/extensionArtifact"), "{err}");
    assert_eq!(listing(lib.path()), before);
    assert_eq!(sim.requests_to("/blob/missing.zip").len(), 1);
    assert_eq!(sim.requests_to("/extensionArtifact").len(), 1);
}

#[test]
fn an_oversized_package_is_refused_and_not_fetched_again_through_the_plugin() {
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client(&sim, lib.path());
    c.update_goal_state(false).unwrap().unwrap();
    let before = listing(lib.path());
    let url = sim.put_blob("big.zip", package_bytes(5000)) + SAS;
    let dest = lib.path().join("big.zip");
    let err = c.download_artifact(&url, None, &dest, 4096).unwrap_err();
    assert!(
        matches!(err, WireError::TooLarge { limit: 4096, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.ends_with("larger than 4096 bytes; refused"), "{text}");
    assert!(
        !text.contains("c2VjcmV0"),
        "the SAS signature leaked: {text}"
    );
    assert_eq!(listing(lib.path()), before);
    assert_eq!(sim.requests_to("/blob/big.zip").len(), 1);
    assert!(sim.requests_to("/extensionArtifact").is_empty());

    // A file already at the destination is an error, and stays as it was.
    std::fs::write(&dest, b"earlier").unwrap();
    let small = sim.put_blob("small.zip", package_bytes(10));
    let err = c.download_artifact(&small, None, &dest, 4096).unwrap_err();
    assert!(matches!(err, WireError::Io { .. }), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"earlier");
}

#[test]
fn a_package_download_goes_through_the_proxy() {
    let (proxy, seen) = connect_proxy();
    let sim = FabricSim::start(SimConfig::default()).unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut c = client_with(&sim, lib.path(), 2, Some(proxy));
    let data = package_bytes(20_000);
    let url = sim.put_blob("Contoso.Ext__1.0.zip", data.clone());
    let dest = lib.path().join("Contoso.Ext__1.0.zip");
    c.download_artifact(&url, None, &dest, 1 << 20).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let ep = sim.endpoint();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("CONNECT {}:{} HTTP/1.1", ep.host, ep.wire_port)]
    );
}

#[test]
fn a_fetch_that_does_not_wait_for_the_transport_key_stops_at_the_certificates_then_finishes() {
    use waagent::wire::crypto::{start_transport_cert, Transport};
    let (sim, thumbprint) = sim_with_tenant_cert("pending-tenant");
    let lib = tempfile::tempdir().unwrap();
    // An `openssl` that waits for the test's go before it makes the key.
    let bin = tempfile::tempdir().unwrap();
    let gate = bin.path().join("go");
    let gated = bin.path().join("openssl");
    std::fs::write(
        &gated,
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.01; done\nexec openssl \"$@\"\n",
            gate.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&gated, std::fs::Permissions::from_mode(0o755)).unwrap();
    let openssl = Openssl::new(gated, Rc::new(SystemRunner));
    let pending = start_transport_cert(&openssl, lib.path(), std::time::Instant::now()).unwrap();
    assert!(matches!(pending, Transport::Pending(_)));
    let mut c = client(&sim, lib.path()).with_transport(pending);

    c.set_wait_for_transport(false);
    let err = c.update_goal_state(true).unwrap_err();
    assert!(matches!(err, WireError::TransportPending), "{err}");
    // Every other document was fetched; nothing was saved.
    assert_eq!(sim.requests_to("type=sharedConfig").len(), 1);
    assert!(sim.requests_to("comp=certificates").is_empty());
    let saved: Vec<String> = snapshot(lib.path())
        .into_keys()
        .filter(|n| !n.starts_with(".waagent-crypto."))
        .collect();
    assert!(saved.is_empty(), "{saved:?}");
    // Still not made: the same answer, and no request.
    assert!(matches!(
        c.finish_goal_state(),
        Err(WireError::TransportPending)
    ));
    assert_eq!(sim.requests_to("comp=goalstate").len(), 1);

    // Made; the Certificates are asked for, answered 410 (the goal state
    // moved on meanwhile): the whole goal state is fetched again.
    std::fs::write(&gate, "").unwrap();
    sim.inject("comp=certificates", [Fault::Status(410)]);
    c.set_wait_for_transport(true);
    let full = c.finish_goal_state().unwrap().unwrap();
    assert_eq!(full.certificates.len(), 1);
    assert_eq!(full.certificates[0].thumbprint, thumbprint);
    assert_eq!(sim.requests_to("comp=goalstate").len(), 2);
    assert_eq!(sim.requests_to("comp=certificates").len(), 2);
    let inc = std::fs::read_to_string(lib.path().join("Incarnation")).unwrap();
    assert_eq!(inc, "1");
    assert!(lib.path().join("Certificates.xml").exists());
}
