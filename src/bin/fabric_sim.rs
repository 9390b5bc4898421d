//! `fabric-sim`: the Azure fabric simulator as a program, for the demo, the
//! sandbox and benchmarks. Serves a WireServer and a HostGAPlugin and prints
//! every request it answers, one line each, until it is killed.
//!
//! `--handlers FILE` names the extension handlers to offer, as JSON (the
//! format is in [`USAGE`]); the file is watched, so a sandbox test's driver
//! script changes a seqNo, a state or the versions on offer by rewriting it,
//! and the next goal-state request sees a new incarnation. `--lb-probe-ports
//! FILE` is watched the same way for the goal state's `LBProbePorts`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write;

use waagent::sim::certs::{generate_tenant_cert, TenantCert};
use waagent::sim::{FabricSim, Fault, HandlersFile, PortsFile, SimConfig};

const USAGE: &str = "usage: fabric-sim [--wire ADDR:PORT] [--plugin ADDR:PORT] [--imds ADDR:PORT] [--imds-key PATH=KEY] [--tenant-cert CRT[:KEY]] [--new-tenant-cert DIR] [--handlers FILE] [--lb-probe-ports FILE] [--record FILE] [--fault PATTERN:KIND[:N]] [--incarnation N]

  --wire ADDR:PORT     WireServer and blob store (default 127.0.0.1:0, any free port)
  --plugin ADDR:PORT   HostGAPlugin (default 127.0.0.1:0)
  --imds ADDR:PORT     Instance Metadata Service (default 127.0.0.1:0)
  --imds-key PATH=KEY  an SSH public key IMDS lists for PATH (repeatable)
  --tenant-cert CRT[:KEY]
                       put this PEM certificate (and its key) in the Certificates
                       document (repeatable; at most one with a key)
  --new-tenant-cert DIR
                       make a certificate and key for the Certificates document,
                       writing DIR/tenant.crt, DIR/tenant.key and DIR/thumbprint
  --handlers FILE      offer the extension handlers FILE describes (below); FILE is
                       read again on each goal-state request when it changed (its
                       modification time or contents), and a change is a new
                       incarnation (a touch too); an invalid FILE is reported and
                       the handlers stay as they were. Write it whole (write a
                       temporary file and rename it).
  --record FILE        append every request, health and role-properties report,
                       status upload (kind \"status\", its content as text), new
                       incarnation and --handlers error as a JSON line to FILE,
                       as they arrive; requests, health reports and status uploads
                       carry \"t\", when they were received (seconds since the
                       Unix epoch, wall clock), and a request \"fault\", what it
                       was given
  --fault PATTERN:KIND[:N[:SKIP]]
                       misbehave on N (default 1) requests whose path and query
                       contain PATTERN, after SKIP (default 0) of them were answered
                       normally; KIND is reset, truncate, malformed, an HTTP status
                       (503), delay-SECONDS (a fraction allowed), oversized-BYTES
                       (200 with that many bytes of body), or replace=FROM=TO (the
                       first FROM in the body becomes TO); repeatable
  --incarnation N      first goal-state incarnation (default 1)
  --lb-probe-ports FILE
                       the goal state's LBProbePorts/Port values: FILE's words
                       (blanks or commas between them), served verbatim; FILE is
                       read again on each goal-state request and a change is a
                       new incarnation (a missing FILE: no ports)

The --handlers FILE is a JSON array with one object per handler:
  [{\"name\": \"Contoso.Test.Echo\", \"version\": \"1.0.0\", \"state\": \"enabled\",
    \"autoUpgrade\": false, \"seqNo\": 0, \"publicSettings\": {\"msg\": \"hi\"},
    \"packages\": [{\"version\": \"1.0.0\", \"zip\": \"/work/echo-1.0.0.zip\"}]}]
  name, version        required: Plugin@name and the requested Plugin@version
  state                enabled (default), disabled or uninstall (served as given)
  autoUpgrade          false (default) or true
  useExactVersion      true (default) or false: false with autoUpgrade lets the agent
                       take a newer minor version (an older fabric's goal state)
  seqNo                the settings' sequence number (default 0)
  publicSettings       any JSON (default {}); null with no protectedSettings and no
                       extensions: the handler has no PluginSettings at all
  protectedSettings    either a base64 CMS string with protectedSettingsCertThumbprint,
                       or any JSON with protectedSettingsCert, a PEM certificate
                       file it is sealed to when FILE is read
  packages             the versions the manifest lists: version and zip, a file
                       (relative paths are relative to FILE's directory; a zip is
                       read again only when FILE changes)
  primaryManifestMissing
                       true: the manifest's location answers 404 and only its
                       failoverlocation serves it
  extensions           a multi-config handler: objects with name, state (enabled or
                       disabled), seqNo, publicSettings and protectedSettings as above
Storage paths: manifests /blob/manifests/NAME_manifest.xml (failover
/blob/failover/NAME_manifest.xml), packages /blob/packages/NAME__VERSION, on
the --wire address; --fault on a package path makes storage refuse it while
the HostGAPlugin's /extensionArtifact still serves it.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut wire: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut plugin = wire;
    let mut imds = wire;
    let mut config = SimConfig::default();
    let mut record: Option<std::path::PathBuf> = None;
    let mut handlers: Option<HandlersFile> = None;
    let mut lb_probe_ports: Option<PortsFile> = None;
    let mut faults: Vec<FaultSpec> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--wire" => wire = value()?.parse().map_err(|e| format!("--wire: {e}"))?,
            "--plugin" => plugin = value()?.parse().map_err(|e| format!("--plugin: {e}"))?,
            "--imds" => imds = value()?.parse().map_err(|e| format!("--imds: {e}"))?,
            "--imds-key" => {
                let v = value()?;
                let (path, key) = v.split_once('=').ok_or("--imds-key needs PATH=KEY")?;
                config
                    .imds_public_keys
                    .push((key.to_string(), path.to_string()));
            }
            "--incarnation" => {
                config.incarnation = value()?
                    .parse()
                    .map_err(|e| format!("--incarnation: {e}"))?
            }
            "--tenant-cert" => {
                let v = value()?;
                let (crt, key) = match v.split_once(':') {
                    Some((c, k)) => (c.to_string(), Some(k.to_string())),
                    None => (v, None),
                };
                let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
                config.tenant_certs.push(TenantCert {
                    cert_pem: read(&crt)?,
                    key_pem: key.as_deref().map(read).transpose()?,
                });
            }
            "--handlers" => handlers = Some(HandlersFile::new(value()?)),
            "--lb-probe-ports" => lb_probe_ports = Some(PortsFile::new(value()?)),
            "--record" => record = Some(std::path::PathBuf::from(value()?)),
            "--new-tenant-cert" => {
                let dir = std::path::PathBuf::from(value()?);
                let cert = generate_tenant_cert("fabric-sim-tenant")?;
                let tp = cert.thumbprint();
                let write = |name: &str, data: &str| {
                    std::fs::write(dir.join(name), data)
                        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
                };
                write("tenant.crt", &cert.cert_pem)?;
                write("tenant.key", cert.key_pem.as_deref().unwrap_or(""))?;
                write("thumbprint", &tp)?;
                config.tenant_certs.push(cert);
            }
            "--container-id" => config.container_id = value()?,
            "--fault" => faults.push(parse_fault(&value()?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Read before the servers start, so the first goal state has them.
    if let Some(file) = handlers.as_mut() {
        config.handlers = file.changed()?.unwrap_or_default();
    }
    let sim = FabricSim::start_on(config, wire, plugin, imds)
        .map_err(|e| format!("cannot listen: {e}"))?;
    if let Some(file) = handlers {
        sim.watch_handlers_file(file)?;
    }
    if let Some(file) = lb_probe_ports {
        sim.watch_lb_probe_ports_file(file);
    }
    for f in faults {
        sim.inject_after(&f.pattern, f.skip, f.faults);
    }
    let ep = sim.endpoint();
    println!(
        "fabric-sim: WireServer on {}, HostGAPlugin on {}, IMDS on {}",
        ep.wire_base(),
        ep.hostplugin_base(),
        sim.imds_base()
    );
    let mut out = match &record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    // One write per line, so a reader polling the file never sees half of one.
    let mut emit = |line: serde_json::Value| {
        if let Some(f) = out.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    };
    let (mut shown, mut reports, mut roles, mut uploads, mut errors) = (0, 0, 0, 0, 0);
    let mut incarnation = sim.config().incarnation;
    loop {
        sim.wait_for_requests(shown, Duration::from_millis(50));
        let requests = sim.requests();
        for r in &requests[shown..] {
            println!(
                "{} {:?} {} {}",
                r.status, r.service, r.request.method, r.request.target
            );
            emit(serde_json::json!({
                "kind": "request",
                "service": format!("{:?}", r.service),
                "method": r.request.method,
                "target": r.request.target,
                "artifact": r.request.header("x-ms-artifact-location"),
                "status": r.status,
                "connection": r.request.connection,
                "fault": r.fault.as_ref().map(|f| format!("{f:?}")),
                "body": String::from_utf8_lossy(&r.request.body),
                "t": epoch_secs(r.at),
            }));
        }
        shown = requests.len();
        let health = sim.health_reports();
        for h in &health[reports..] {
            let details = match (&h.sub_status, &h.description) {
                (Some(s), Some(d)) => format!(" {s}: {d}"),
                _ => String::new(),
            };
            println!(
                "  health report, incarnation {}: {}{details}",
                h.incarnation, h.state
            );
            emit(serde_json::json!({
                "kind": "health",
                "incarnation": h.incarnation,
                "container": h.container_id,
                "instance": h.instance_id,
                "state": h.state,
                "subStatus": h.sub_status,
                "description": h.description,
                "t": epoch_secs(h.at),
            }));
        }
        reports = health.len();
        let props = sim.role_properties();
        for (instance, thumbprint) in &props[roles..] {
            println!("  role properties: {instance} CertificateThumbprint={thumbprint}");
            emit(
                serde_json::json!({"kind": "roleProperties", "instance": instance, "thumbprint": thumbprint}),
            );
        }
        roles = props.len();
        let status = sim.status_uploads();
        for u in &status[uploads..] {
            println!("  status upload via {:?}: {} bytes", u.via, u.content.len());
            emit(serde_json::json!({
                "kind": "status",
                "via": format!("{:?}", u.via),
                "blobUrl": u.blob_url,
                "content": String::from_utf8_lossy(&u.content),
                "t": epoch_secs(u.at),
            }));
        }
        uploads = status.len();
        for e in &sim.handlers_file_errors()[errors..] {
            emit(serde_json::json!({"kind": "handlersError", "error": e}));
            errors += 1;
        }
        let now = sim.config().incarnation;
        if now != incarnation {
            println!("  incarnation {now}");
            emit(serde_json::json!({"kind": "incarnation", "incarnation": now}));
            incarnation = now;
        }
    }
}

/// Seconds since the Unix epoch, to the microsecond.
fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as f64 / 1e6
}

/// A `--fault`: N copies of a fault for PATTERN, after SKIP good answers.
#[derive(Debug, PartialEq)]
struct FaultSpec {
    pattern: String,
    skip: usize,
    faults: Vec<Fault>,
}

/// `PATTERN:KIND[:N[:SKIP]]` (see [`USAGE`]).
fn parse_fault(spec: &str) -> Result<FaultSpec, String> {
    let bad = || format!("--fault {spec:?}: expected PATTERN:KIND[:N[:SKIP]]");
    let mut parts = spec.split(':');
    let (pattern, kind) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let mut number = |default: usize| match parts.next() {
        Some(n) => n.parse::<usize>().map_err(|_| bad()),
        None => Ok(default),
    };
    let (count, skip) = (number(1)?, number(0)?);
    if parts.next().is_some() || pattern.is_empty() {
        return Err(bad());
    }
    let fault = if let Some(secs) = kind.strip_prefix("delay-") {
        let secs: f64 = secs.parse().map_err(|_| bad())?;
        Fault::Delay(Duration::try_from_secs_f64(secs).map_err(|_| bad())?)
    } else if let Some(n) = kind.strip_prefix("oversized-") {
        Fault::Oversized(n.parse().map_err(|_| bad())?)
    } else if let Some(rest) = kind.strip_prefix("replace=") {
        let (from, to) = rest.split_once('=').ok_or_else(bad)?;
        if from.is_empty() {
            return Err(bad());
        }
        Fault::Replace(from.to_string(), to.to_string())
    } else {
        match kind {
            "reset" => Fault::Reset,
            "truncate" => Fault::Truncate,
            "malformed" => Fault::Malformed,
            k => Fault::Status(k.parse().map_err(|_| bad())?),
        }
    };
    Ok(FaultSpec {
        pattern: pattern.to_string(),
        skip,
        faults: vec![fault; count],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs() {
        let spec = |pattern: &str, skip, faults| FaultSpec {
            pattern: pattern.to_string(),
            skip,
            faults,
        };
        assert_eq!(
            parse_fault("comp=health:503"),
            Ok(spec("comp=health", 0, vec![Fault::Status(503)]))
        );
        assert_eq!(
            parse_fault("comp=health:410:2:1"),
            Ok(spec("comp=health", 1, vec![Fault::Status(410); 2]))
        );
        assert_eq!(
            parse_fault("/status:delay-2.5"),
            Ok(spec(
                "/status",
                0,
                vec![Fault::Delay(Duration::from_millis(2500))]
            ))
        );
        assert_eq!(
            parse_fault("/blob/:oversized-5000:3"),
            Ok(spec("/blob/", 0, vec![Fault::Oversized(5000); 3]))
        );
        assert_eq!(
            parse_fault("comp=goalstate:replace=<Incarnation>1<=<Incarnation>../x<"),
            Ok(spec(
                "comp=goalstate",
                0,
                vec![Fault::Replace(
                    "<Incarnation>1<".into(),
                    "<Incarnation>../x<".into()
                )]
            ))
        );
        for bad in [
            "",
            "x",
            ":503",
            "x:teapot",
            "x:503:a",
            "x:503:1:b",
            "x:503:1:1:1",
            "x:delay-z",
            "x:delay--1",
            "x:replace==y",
            "x:replace=y",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
    }
}
