//! Fixtures shared by the firewall tests: the WireServer address, an
//! `Env` under a temporary root (`os::testing::env`) with a recording runner, the iptables
//! command lines and rule specs as the tests expect them, and
//! [`fake_iptables`], an in-memory iptables (also used by the daemon's
//! tests).

use std::io;
use std::net::Ipv4Addr;

use crate::os::{Cmd, Output, RunError};

pub(super) const WIRE: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

pub(super) use crate::os::testing::env;

pub(super) fn not_found(cmd: &Cmd) -> Result<Output, RunError> {
    Err(RunError::Spawn {
        cmd: cmd.display(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

pub(super) const CHECK: &str = "iptables -w -t security -C OUTPUT -d 168.63.129.16 -p tcp";
pub(super) const APPEND: &str = "iptables -w -t security -A OUTPUT -d 168.63.129.16 -p tcp";
pub(super) const DELETE: &str = "iptables -w -t security -D OUTPUT -d 168.63.129.16 -p tcp";
pub(super) const DNS: &str = "--destination-port 53 -j ACCEPT";
pub(super) const ROOT: &str = "-m owner --uid-owner 0 -j ACCEPT";
pub(super) const DROP: &str = "-m conntrack --ctstate INVALID,NEW -j DROP";

pub(super) fn lines(prefix: &str, rules: &[&str]) -> Vec<String> {
    rules.iter().map(|r| format!("{prefix} {r}")).collect()
}

pub(super) fn spec(rule: &str) -> String {
    format!("-d 168.63.129.16 -p tcp {rule}")
}

/// Test support: an iptables that keeps its `security` OUTPUT chain in
/// memory (`-A`, `-C`, `-D`, `-L`, `-S`, `--version`), so tests see the rules a
/// sequence of commands leaves. Returns the chain, one rule spec per line.
pub(crate) fn fake_iptables(
    runner: &crate::os::RecordingRunner,
) -> std::rc::Rc<std::cell::RefCell<Vec<String>>> {
    let chain = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let c = chain.clone();
    runner.respond(move |cmd| {
        if cmd.program != "iptables" {
            return None;
        }
        let argv = cmd.argv();
        let mut args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        if args == ["--version"] {
            return Some(Ok(Output::ok("iptables v1.8.9 (nf_tables)\n")));
        }
        args.retain(|a| *a != "-w");
        let [t, table, op, rest @ ..] = args.as_slice() else {
            return Some(Ok(Output::failed(2, "bad command")));
        };
        assert_eq!((*t, *table), ("-t", "security"), "{argv:?}");
        let spec = rest.get(1..).unwrap_or_default().join(" ");
        let bad_rule = || {
            Ok(Output::failed(
                1,
                "iptables: Bad rule (does a matching rule exist in that chain?).",
            ))
        };
        let mut chain = c.borrow_mut();
        Some(match *op {
            "-A" => {
                chain.push(spec);
                Ok(Output::default())
            }
            "-C" if chain.contains(&spec) => Ok(Output::default()),
            "-C" => bad_rule(),
            "-D" => match chain.iter().position(|r| *r == spec) {
                Some(i) => {
                    chain.remove(i);
                    Ok(Output::default())
                }
                None => bad_rule(),
            },
            "-L" => Ok(Output::ok(&format!("Chain OUTPUT\n{}\n", chain.join("\n")))),
            // As iptables prints them: the address as a /32 network.
            "-S" => Ok(Output::ok(&format!(
                "-P OUTPUT ACCEPT\n{}",
                chain
                    .iter()
                    .map(|r| format!(
                        "-A OUTPUT {}\n",
                        r.replace("-d 168.63.129.16 ", "-d 168.63.129.16/32 ")
                    ))
                    .collect::<String>()
            ))),
            _ => Ok(Output::failed(2, "unknown option")),
        })
    });
    chain
}
