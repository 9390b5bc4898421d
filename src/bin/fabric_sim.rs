//! `fabric-sim`: the Azure fabric simulator as a program, for the demo, the
//! sandbox and benchmarks. Serves a WireServer and a HostGAPlugin and prints
//! every request it answers, one line each, until it is killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use waagent::sim::certs::generate_tenant_cert;
use waagent::sim::{FabricSim, SimConfig};

const USAGE: &str = "usage: fabric-sim [--wire ADDR:PORT] [--plugin ADDR:PORT] [--imds ADDR:PORT] [--imds-key PATH=KEY] [--tenant-cert DIR] [--incarnation N]

  --wire ADDR:PORT     WireServer and blob store (default 127.0.0.1:0, any free port)
  --plugin ADDR:PORT   HostGAPlugin (default 127.0.0.1:0)
  --imds ADDR:PORT     Instance Metadata Service (default 127.0.0.1:0)
  --imds-key PATH=KEY  an SSH public key IMDS lists for PATH (repeatable)
  --tenant-cert DIR    put a new certificate and key in the Certificates document,
                       writing DIR/tenant.crt, DIR/tenant.key and DIR/thumbprint
  --incarnation N      first goal-state incarnation (default 1)";

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
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let sim = FabricSim::start_on(config, wire, plugin, imds)
        .map_err(|e| format!("cannot listen: {e}"))?;
    let ep = sim.endpoint();
    println!(
        "fabric-sim: WireServer on {}, HostGAPlugin on {}, IMDS on {}",
        ep.wire_base(),
        ep.hostplugin_base(),
        sim.imds_base()
    );
    let mut shown = 0;
    let mut reports = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let requests = sim.requests();
        for r in &requests[shown..] {
            println!(
                "{} {:?} {} {}",
                r.status, r.service, r.request.method, r.request.target
            );
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
        }
        reports = health.len();
    }
}
