//! Runs commands in the throwaway-VM sandbox (`scripts/sandbox`): as root, in
//! new namespaces over an overlay of `/`, so the real agent can create users,
//! write /etc and mount the provisioning DVD without touching this machine.
//!
//! Include it from a test file with
//! `#[path = "common/sandbox.rs"] mod sandbox;`, then:
//!
//! ```ignore
//! if sandbox::skip("my_test") { return; }
//! let out = Sandbox::run(&Options::default().dmi_uuid("…"), &["waagent", "-version"]);
//! ```
//!
//! Tests skip (printing why) when the sandbox cannot run here, e.g. not as
//! root; with `WAAGENT_RS_REQUIRE_SANDBOX=1` in the environment (CI) they fail
//! instead, so a machine that should run them cannot skip them silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// What the sandbox is given besides the command: `scripts/sandbox`'s options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--iso`: the provisioning DVD, `/dev/sr0` inside.
    pub iso: Option<PathBuf>,
    /// `--bind HOST:SANDBOX`, read-write, in order.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// `--dmi-uuid`: what `/sys/class/dmi/id/product_uuid` reads.
    pub dmi_uuid: Option<String>,
    /// `--keep-on-failure`: where the sandbox's changes go if the command fails.
    pub keep_on_failure: Option<PathBuf>,
}

impl Options {
    pub fn iso(mut self, iso: impl Into<PathBuf>) -> Self {
        self.iso = Some(iso.into());
        self
    }

    pub fn bind(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds.push((host.into(), inside.into()));
        self
    }

    pub fn dmi_uuid(mut self, uuid: &str) -> Self {
        self.dmi_uuid = Some(uuid.to_string());
        self
    }

    pub fn keep_on_failure(mut self, dir: impl Into<PathBuf>) -> Self {
        self.keep_on_failure = Some(dir.into());
        self
    }
}

pub struct Sandbox;

impl Sandbox {
    /// `Ok` when the sandbox works here: root, the tools, and a trial run of
    /// `scripts/sandbox -- true`. Checked once per test binary.
    pub fn available() -> Result<(), String> {
        static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
        CHECKED.get_or_init(check).clone()
    }

    /// Runs `cmd` in a fresh sandbox and waits for it; standard input is
    /// empty, standard output and error are captured. The exit status is the
    /// command's (125 when the sandbox itself could not be built).
    pub fn run(opts: &Options, cmd: &[&str]) -> Output {
        Self::command(opts, cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/sandbox")
    }

    /// The `scripts/sandbox … -- cmd…` command line, to spawn it yourself.
    pub fn command(opts: &Options, cmd: &[&str]) -> Command {
        let mut c = Command::new(script("sandbox"));
        if let Some(iso) = &opts.iso {
            c.arg("--iso").arg(iso);
        }
        for (host, inside) in &opts.binds {
            let mut spec = host.clone().into_os_string();
            spec.push(":");
            spec.push(inside);
            c.arg("--bind").arg(spec);
        }
        if let Some(uuid) = &opts.dmi_uuid {
            c.arg("--dmi-uuid").arg(uuid);
        }
        if let Some(dir) = &opts.keep_on_failure {
            c.arg("--keep-on-failure").arg(dir);
        }
        c.arg("--").args(cmd);
        c
    }

    /// `scripts/make-ovf-iso OVF_ENV_XML OUT [EXTRA…]`: an Azure-like
    /// provisioning DVD with `xml` as `/ovf-env.xml`.
    pub fn make_ovf_iso(xml: &Path, out: &Path, extra: &[&Path]) -> Result<(), String> {
        let o = Command::new(script("make-ovf-iso"))
            .arg(xml)
            .arg(out)
            .args(extra)
            .output()
            .map_err(|e| format!("cannot run make-ovf-iso: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }
}

/// True (after printing why) when `test` must be skipped because the sandbox
/// is not available; panics instead under `WAAGENT_RS_REQUIRE_SANDBOX=1`.
pub fn skip(test: &str) -> bool {
    match Sandbox::available() {
        Ok(()) => false,
        Err(why) if std::env::var_os("WAAGENT_RS_REQUIRE_SANDBOX").is_some_and(|v| v == "1") => {
            panic!("{test}: the sandbox is required (WAAGENT_RS_REQUIRE_SANDBOX=1) but {why}")
        }
        Err(why) => {
            waagent::sim::skips::note(env!("CARGO_CRATE_NAME"), test, &why);
            true
        }
    }
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn check() -> Result<(), String> {
    // The agent inside the sandbox is started by the kernel, which cannot
    // run a binary built for another CPU (make cross: arm64 under qemu-user).
    if let Some(runner) = waagent::sim::skips::runner() {
        return Err(format!(
            "the binaries were built for another CPU and run under {} \
             (WAAGENT_RS_RUNNER); inside the sandbox the kernel would start them",
            runner[0]
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("the sandbox needs root".into());
    }
    for tool in ["unshare", "ip", "losetup", "xorriso", "genisoimage"] {
        let found = Command::new("sh")
            .args([
                "-c",
                "PATH=$PATH:/usr/sbin:/sbin command -v \"$1\"",
                "sh",
                tool,
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("{tool} is missing (run scripts/setup)"));
        }
    }
    let o = Sandbox::run(&Options::default(), &["true"]);
    if !o.status.success() {
        return Err(format!(
            "scripts/sandbox -- true failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}
