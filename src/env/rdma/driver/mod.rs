//! The driver check (`OS.CheckRdmaDriver`, on a Network Direct host): the
//! distro's RDMA driver is checked against the host's `NdDriverVersion` and,
//! with the distro's own means, brought in line. As in waagent, only
//! CentOS/RHEL and its relatives, SLES and Ubuntu have a handler. Package
//! managers run with a 10-minute timeout; a new driver asks for a reboot,
//! since a loaded Network Direct module cannot be replaced.
//!
//! Differences from waagent: its fixed sleeps around the KVP daemon check
//! (CentOS) are not taken (the check runs only when the pool already holds
//! `NdDriverVersion`, so the daemon has run); a failed package install
//! (SUSE) ends the check instead of being logged and followed by a lock;
//! after a reboot request the check stops.
//!
//! One submodule per distro family: `redhat`, `suse`, `ubuntu`.

mod redhat;
mod suse;
mod ubuntu;

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::device::{
    driver_loaded, load_driver_module, replace_runs, resolved_module, DRIVER_MODULE,
};
use super::{distro_name, failed, run, run_ok, RdmaError};
use crate::os::{Cmd, Distro, Env, Flavour, OsUtil, RunError};

/// Ubuntu's alias file pointing `hv_network_direct` at the versioned module.
pub const UBUNTU_MODPROBE_CONF: &str = "/etc/modprobe.d/vmbus-rdma.conf";

/// The RPM architecture of the driver packages to install: the agent's own,
/// as the kernel's modules must match it (RPM and Rust both say `x86_64`
/// and `aarch64`). The images ship x86_64 packages; an arm64 VM must not
/// pick one.
pub(super) const RPM_ARCH: &str = std::env::consts::ARCH;

/// True for `<anything>.<RPM_ARCH>.rpm`.
pub(super) fn is_rpm_of_this_arch(file: &str) -> bool {
    file.strip_suffix(".rpm")
        .and_then(|f| f.strip_suffix(RPM_ARCH))
        .is_some_and(|f| f.ends_with('.'))
}

/// The RPM architecture the driver tests expect, and the other one Azure
/// runs: written out per target rather than taken from [`RPM_ARCH`], which
/// they check. Under qemu (make cross) the tests run as aarch64.
#[cfg(test)]
pub(super) fn expected_rpm_arch() -> (&'static str, &'static str) {
    #[cfg(target_arch = "x86_64")]
    return ("x86_64", "aarch64");
    #[cfg(target_arch = "aarch64")]
    return ("aarch64", "x86_64");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return (RPM_ARCH, "x86_64");
}

/// A package manager may download and build (DKMS) for a while.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(600);
const MODPROBE_ALIAS: &str = "alias hv_network_direct hv_network_direct_";

/// What [`check_driver`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    pub summary: String,
    /// Steps that failed without stopping the check (a reboot that did not
    /// start, an old package that could not be erased).
    pub warnings: Vec<String>,
    pub reboot_requested: bool,
}

impl DriverReport {
    pub(super) fn new(summary: impl Into<String>) -> Self {
        DriverReport {
            summary: summary.into(),
            ..Default::default()
        }
    }

    /// `shutdown -r now`: the Network Direct module cannot be unloaded, so
    /// a new one needs a reboot.
    pub(super) fn reboot(mut self, env: &Env) -> Self {
        log::info!("RDMA: rebooting to load the new driver");
        match run_ok(env, Cmd::new("shutdown").args(["-r", "now"])) {
            Ok(_) => self.reboot_requested = true,
            Err(e) => self.warnings.push(format!("reboot failed: {e}")),
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverHandler {
    RedHat,
    Suse,
    Ubuntu,
}

/// The distros waagent has a driver handler for: CentOS and its RHEL
/// relatives, SLES (and SLE HPC) after 11, Ubuntu.
fn driver_handler(d: &Distro) -> Option<DriverHandler> {
    match d.flavour {
        Flavour::RedHat
            if ["rhel", "centos", "almalinux", "rocky", "cloudlinux"].contains(&d.id.as_str()) =>
        {
            Some(DriverHandler::RedHat)
        }
        Flavour::Suse
            if ["sles", "sle_hpc", "sle-hpc"].contains(&d.id.as_str())
                && numbers(&d.version).is_some_and(|v| v > vec![11]) =>
        {
            Some(DriverHandler::Suse)
        }
        Flavour::Ubuntu if d.id == "ubuntu" => Some(DriverHandler::Ubuntu),
        _ => None,
    }
}

/// Checks (and with the distro's means updates) the RDMA driver against the
/// host's Network Direct version `nd_version`. `update`:
/// `OS.UpdateRdmaDriver`, which only Ubuntu's kernel update looks at.
pub fn check_driver(
    os: &dyn OsUtil,
    nd_version: &str,
    update: bool,
) -> Result<DriverReport, RdmaError> {
    let env = os.env();
    match driver_handler(&env.distro) {
        Some(DriverHandler::RedHat) => redhat::check(env, nd_version),
        Some(DriverHandler::Suse) => suse::check(env, nd_version),
        Some(DriverHandler::Ubuntu) => ubuntu::check(env, nd_version, update),
        None => Err(RdmaError::Unsupported(format!(
            "checking the RDMA driver is not supported on {} (only on CentOS/RHEL, SLES and \
             Ubuntu): the driver was left as it is",
            distro_name(&env.distro)
        ))),
    }
}

/// Dotted numbers (`5.4.0.1040`); `None` if a part is not a number.
fn numbers(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.trim().parse().ok()).collect()
}

pub(super) fn write_text(path: &Path, text: &str) -> Result<(), RdmaError> {
    crate::os::write_file(path, text, 0o644).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;

    /// The architecture the packages must be built for, written out per
    /// target: under qemu (make cross) this runs as aarch64.
    #[test]
    fn rpm_arch_is_the_agents_own() {
        let (want, other) = expected_rpm_arch();
        assert_eq!(RPM_ARCH, want);
        assert!(is_rpm_of_this_arch(&format!("msft-rdma-1.0-1.{want}.rpm")));
        assert!(!is_rpm_of_this_arch(&format!(
            "msft-rdma-1.0-1.{other}.rpm"
        )));
        assert!(!is_rpm_of_this_arch("msft-rdma-1.0-1.src.rpm"));
        assert!(!is_rpm_of_this_arch(&format!("msft-rdma-1.0-1{want}.rpm")));
        assert!(!is_rpm_of_this_arch(&format!("msft-rdma-1.0-1.{want}")));
    }

    #[test]
    fn other_distros_have_no_driver_handler() {
        for (id, version, flavour) in [
            ("debian", "12", Flavour::Debian),
            ("opensuse-leap", "15.5", Flavour::Suse),
            ("ol", "8.9", Flavour::RedHat),
            // waagent's handler is for releases after 11 (11.3 is one).
            ("sles", "11", Flavour::Suse),
            ("flatcar", "3815.2.0", Flavour::CoreOs),
        ] {
            let f = fx();
            let os = f.os(id, version, flavour);
            let e = check_driver(os.as_ref(), "142.0", true).unwrap_err();
            assert_eq!(
                e,
                RdmaError::Unsupported(format!(
                    "checking the RDMA driver is not supported on {id} {version} (only on \
                     CentOS/RHEL, SLES and Ubuntu): the driver was left as it is"
                ))
            );
            assert!(f.lines().is_empty(), "{id}");
        }
    }
}
