//! The fuzz targets' bodies: one function per family of parsers that read
//! outside input. Each feeds the bytes to the parsers and asserts what must
//! hold for any input — not only "no panic", but that a refusal names its
//! document, a limit holds, a secret stays masked — by panicking, which
//! libFuzzer and the stable runner both record as a crash.
//!
//! One body, three callers: the libFuzzer targets (`fuzz_targets/*.rs`),
//! the stable fallback (`examples/stable_fuzz.rs`) and the main crate's
//! `tests/fuzz_targets.rs`, which includes this directory with `#[path]` so
//! the bodies build and run with every `cargo test`.

use std::path::Path;

mod crypto;
mod ovf;
mod system;
mod text;
mod wire;

/// A fuzz target: a name (the libFuzzer binary's) and its body.
pub struct Target {
    pub name: &'static str,
    /// What it covers, for `stable-fuzz --list`.
    pub covers: &'static str,
    pub run: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "wire_documents",
        covers: "xml::parse, Versions, GoalState, HostingEnvironmentConfig, SharedConfig (+rdma), Certificates, ExtensionManifest",
        run: wire::documents,
    },
    Target {
        name: "extensions_config",
        covers: "ExtensionsConfig (plugins, settings, dependencies, metadata)",
        run: wire::extensions_config,
    },
    Target {
        name: "ovf_env",
        covers: "OvfEnv::parse, ovf::masked, resolve_key_path",
        run: ovf::ovf_env,
    },
    Target {
        name: "certificates_pem",
        covers: "PEM bundle reader: thumbprints, certificate/key pairing, ssh-rsa lines",
        run: crypto::pem,
    },
    Target {
        name: "certificates_der",
        covers: "DER reader: certificates, SPKI, PKCS#1/#8 keys, times, OIDs",
        run: crypto::der,
    },
    Target {
        name: "imds_json",
        covers: "IMDS compute.publicKeys and their key paths",
        run: text::imds_json,
    },
    Target {
        name: "dhcp_leases",
        covers: "option 245 in dhclient and systemd-networkd leases",
        run: text::dhcp_leases,
    },
    Target {
        name: "waagent_conf",
        covers: "waagent.conf (Config::parse)",
        run: text::waagent_conf,
    },
    Target {
        name: "kvp_pool",
        covers: "Hyper-V KVP pool records and IPoIB_Data",
        run: text::kvp_pool,
    },
    Target {
        name: "system_tables",
        covers: "/proc/net/route, os-release, passwd, login.defs, mounts, swaps, blkid, FreeBSD camcontrol/gpart/mdconfig",
        run: system::system_tables,
    },
    Target {
        name: "log_redaction",
        covers: "redact (every log line): keys, passwords, SAS signatures",
        run: text::log_redaction,
    },
];

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Which files seed which target (one list for `scripts/fuzz`, the stable
/// runner and the tests).
const SEEDS: &str = include_str!("../../seeds.txt");

/// The seed paths of `target` as written in `seeds.txt` (relative to the
/// repository root; a directory stands for the files in it).
pub fn seed_paths(target: &str) -> Vec<&'static str> {
    SEEDS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(target)).then_some(words)
        })
        .flatten()
        .collect()
}

/// The seed inputs of `target` under the repository `root`, in a stable
/// order; `*.md` files in seed directories are left out.
pub fn seeds(root: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for rel in seed_paths(target) {
        let path = root.join(rel);
        match std::fs::read_dir(&path) {
            Ok(entries) => {
                let mut in_dir: Vec<_> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && !matches!(p.extension(), Some(e) if e == "md"))
                    .collect();
                in_dir.sort();
                files.extend(in_dir);
            }
            Err(_) => files.push(path),
        }
    }
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("seed {}: {e}", f.display())))
        .collect()
}

/// Removes what the bodies left on disk (`system_tables`' scratch root);
/// a libFuzzer run, which never returns, uses `WAAGENT_FUZZ_SCRATCH`.
pub fn cleanup() {
    system::remove_scratch();
}

/// Lossy text: every parser here reads text, and the agent turns bytes
/// into text the same way before parsing.
fn lossy(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
