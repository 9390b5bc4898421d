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
    fn new(summary: impl Into<String>) -> Self {
        DriverReport {
            summary: summary.into(),
            ..Default::default()
        }
    }

    /// `shutdown -r now`: the Network Direct module cannot be unloaded, so
    /// a new one needs a reboot.
    fn reboot(mut self, env: &Env) -> Self {
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
        Some(DriverHandler::RedHat) => redhat_driver(env, nd_version),
        Some(DriverHandler::Suse) => suse_driver(env, nd_version),
        Some(DriverHandler::Ubuntu) => ubuntu_driver(env, nd_version, update),
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

// CentOS / RHEL: the packages come from the image's `msft-rdma-drivers`,
// which drops versioned RPMs in /opt/microsoft/rdma/rhel<major><minor>.

const RHEL_USER_PACKAGE: &str = "microsoft-hyper-v-rdma";
const RHEL_KMOD_PACKAGE: &str = "kmod-microsoft-hyper-v-rdma";
const RHEL_WRAPPER_PACKAGE: &str = "msft-rdma-drivers";
const RHEL_KVP_PACKAGES: [&str; 2] = ["hypervkvpd", "microsoft-hyper-v"];
const KVP_DAEMONS: [&str; 2] = ["hypervkvpd", "hv_kvp_daemon"];

fn yum(args: &[&str]) -> Cmd {
    Cmd::new("yum")
        .args(args.iter().copied())
        .timeout(PACKAGE_TIMEOUT)
}

fn rpm_installed(env: &Env, package: &str) -> Result<bool, RdmaError> {
    Ok(run(env, Cmd::new("rpm").args(["-q", package]))?.success())
}

/// `<name>-a.b.c.<fw>-<rest>`: three or more dotted numbers, then the
/// firmware's major version; returns `<rest>`.
fn fw_package<'a>(text: &'a str, name: &str, fw: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(name)?.strip_prefix('-')?;
    let (head, tail) = rest.split_once('-')?;
    let parts: Vec<&str> = head.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (parts.len() >= 4 && numeric && parts.last() == Some(&fw)).then_some(tail)
}

/// A package file `<name>-a.b.c.<fw>-YYYYMMDD.x86_64.rpm`.
fn is_fw_rpm(file: &str, name: &str, fw: &str) -> bool {
    fw_package(file, name, fw).is_some_and(|tail| {
        tail.get(..8)
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            && tail.get(8..).is_some_and(|r| r.starts_with(".x86_64.rpm"))
    })
}

/// Major and minor release (`7`, `9`): from os-release, or from
/// `/etc/redhat-release` where os-release has the major only (CentOS 7).
fn rhel_release(env: &Env) -> Option<(String, String)> {
    let split = |v: &str| -> Option<(String, String)> {
        let mut p = v.split('.');
        let (a, b) = (p.next()?, p.next()?);
        let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        (num(a) && num(b)).then(|| (a.to_string(), b.to_string()))
    };
    split(&env.distro.version).or_else(|| {
        let text = fs::read_to_string(env.path("/etc/redhat-release")).ok()?;
        text.split_whitespace().find_map(split)
    })
}

fn redhat_driver(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
    let (major, minor) = rhel_release(env).ok_or_else(|| {
        failed(format!(
            "cannot tell the minor release of {}: no RDMA package directory to use",
            distro_name(&env.distro)
        ))
    })?;
    let ps = run_ok(env, Cmd::new("ps").arg("-ef"))?;
    if !KVP_DAEMONS.iter().any(|d| ps.stdout.contains(d)) {
        for p in RHEL_KVP_PACKAGES {
            if rpm_installed(env, p)? {
                return Err(failed(format!(
                    "package {p} is installed but the KVP daemon is not running"
                )));
            }
        }
        run_ok(env, yum(&["install", "-y", "-q", RHEL_KVP_PACKAGES[0]]))?;
        return Ok(DriverReport::new(format!(
            "the KVP daemon was missing: {} installed",
            RHEL_KVP_PACKAGES[0]
        ))
        .reboot(env));
    }

    let fw = nd_version.split('.').next().unwrap_or(nd_version);
    let q = run(env, Cmd::new("rpm").args(["-q", RHEL_USER_PACKAGE]))?;
    let installed = q.stdout.lines().next().unwrap_or_default().trim();
    if q.success() && fw_package(installed, RHEL_USER_PACKAGE, fw).is_some() {
        return Ok(DriverReport::new(format!(
            "{installed} matches Network Direct {nd_version}"
        )));
    }

    log::info!("RDMA: installing the driver packages for Network Direct {nd_version}");
    run_ok(env, yum(&["clean", "all"]))?;
    run_ok(env, yum(&["updateinfo"]))?;
    let mut report = DriverReport::default();
    // Erased first so that the install below is a fresh one.
    run(env, yum(&["erase", "-y", "-q", RHEL_WRAPPER_PACKAGE]))?;
    run_ok(env, yum(&["install", "-y", "-q", RHEL_WRAPPER_PACKAGE]))?;

    let dir = format!("/opt/microsoft/rdma/rhel{major}{minor}");
    let mut files: Vec<String> = fs::read_dir(env.path(&dir))
        .map_err(|e| failed(format!("RDMA package directory {dir}: {e}")))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    files.sort();

    // The drivers bring their own KVP daemon.
    for p in RHEL_KVP_PACKAGES {
        if rpm_installed(env, p)? {
            if let Err(e) = run_ok(env, yum(&["erase", "-q", "-y", p])) {
                report.warnings.push(e.to_string());
            }
        }
    }
    let mut done = Vec::new();
    for (kind, package) in [
        ("kernel mode", RHEL_KMOD_PACKAGE),
        ("user mode", RHEL_USER_PACKAGE),
    ] {
        let file = files
            .iter()
            .find(|f| is_fw_rpm(f, package, fw))
            .ok_or_else(|| {
                failed(format!(
                    "no RDMA {kind} package for Network Direct {fw} in {dir}"
                ))
            })?;
        run(env, yum(&["erase", "-y", "-q", package]))?;
        run_ok(env, yum(&["install", "-y", "-q", &format!("{dir}/{file}")]))?;
        done.push(file.clone());
    }
    report.summary = format!("installed {}", done.join(", "));
    if load_driver_module(env) && driver_loaded(env) {
        Ok(report)
    } else {
        Ok(report.reboot(env))
    }
}

// SLES 12 (SLE 15 passes the InfiniBand device through): a KMP matching the
// kernel flavour, from the repositories or from /opt/microsoft/rdma.

fn zypper(args: &[&str]) -> Cmd {
    Cmd::new("zypper")
        .args(args.iter().copied())
        .timeout(PACKAGE_TIMEOUT)
}

fn suse_driver(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
    if env.distro.major() >= 15 {
        return Ok(DriverReport::new(
            "SLE 15 and later pass the InfiniBand device through: no driver package needed",
        ));
    }
    let release = run_ok(env, Cmd::new("uname").arg("-r"))?.stdout;
    let package = if release.contains("default") {
        "msft-rdma-kmp-default"
    } else if release.contains("azure") {
        "msft-rdma-kmp-azure"
    } else {
        return Err(failed(format!(
            "kernel {:?} is neither -default nor -azure: no RDMA driver package for it",
            release.trim()
        )));
    };
    let search = run(env, zypper(&["-n", "se", "-s", package]))?;
    let mut report = DriverReport::default();
    let mut versions = Vec::new();
    let mut other_installed = false;
    for line in search.stdout.lines().filter(|l| l.contains(package)) {
        let cols: Vec<&str> = line.split('|').collect();
        if cols.len() < 4 {
            report
                .warnings
                .push(format!("unexpected zypper search line {line:?}"));
            continue;
        }
        let (status, version) = (cols[0].trim(), cols[3].trim());
        versions.push(version.to_string());
        if status.starts_with('i') {
            if version.contains(nd_version) {
                return Ok(DriverReport::new(format!(
                    "{package}-{version} is installed"
                )));
            }
            other_installed = true;
            run(env, zypper(&["removelock", package]))?;
        }
    }
    let mut reboot_needed = false;
    if other_installed {
        // A loaded Network Direct module cannot be unloaded.
        reboot_needed = driver_loaded(env);
        run(env, zypper(&["-n", "rm", package]))?;
    }
    let finish = |mut report: DriverReport, installed: String| {
        report.summary = format!("installed {installed}");
        let _ = run(env, zypper(&["addlock", package]));
        if !load_driver_module(env) || reboot_needed {
            report.reboot(env)
        } else {
            report
        }
    };
    if let Some(version) = versions.iter().find(|v| v.contains(nd_version)) {
        let full = format!("{package}-{version}");
        run_ok(env, zypper(&["-n", "in", &full]))?;
        return Ok(finish(report, full));
    }
    let local_dir = "/opt/microsoft/rdma";
    let mut local: Vec<String> = fs::read_dir(env.path(local_dir))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".rpm") && !n.ends_with(".src.rpm"))
                .map(|n| format!("{local_dir}/{n}"))
                .collect()
        })
        .unwrap_or_default();
    local.sort();
    if let Some(file) = local
        .iter()
        .find(|f| f.contains(package) && f.contains(nd_version))
    {
        let cmd = zypper(&["-n", "--no-refresh", "in", file]);
        let out = run(env, cmd.clone())?;
        // 106: some repositories could not be refreshed; the local file was
        // installed all the same.
        if !out.success() && out.code != 106 {
            return Err(failed(
                RunError::Failed {
                    cmd: cmd.display(),
                    output: out,
                }
                .to_string(),
            ));
        }
        return Ok(finish(report, file.clone()));
    }
    Err(failed(format!(
        "no {package} package matches Network Direct {nd_version}, neither in the \
         repositories nor in {local_dir}"
    )))
}

// Ubuntu: the Azure kernel ships hv_network_direct_<version> modules; the
// alias picks the host's, and a newer kernel may bring a missing one.

fn ubuntu_driver(env: &Env, nd_version: &str, update: bool) -> Result<DriverReport, RdmaError> {
    let nd = nd_version.replace('.', "_");
    let wanted = format!("{DRIVER_MODULE}_{nd}");
    let current = resolved_module(env);
    if current == wanted {
        return Ok(DriverReport::new(format!(
            "{DRIVER_MODULE} is {wanted} already"
        )));
    }
    if run(env, Cmd::new("modinfo").arg(&wanted))?.success() {
        set_modprobe_alias(env, &nd)?;
        return Ok(DriverReport::new(format!(
            "{UBUNTU_MODPROBE_CONF}: {DRIVER_MODULE} now loads {wanted}"
        )));
    }
    if !update {
        return Ok(DriverReport::new(format!(
            "this kernel has no {wanted}; kernel update skipped (OS.UpdateRdmaDriver=n)"
        )));
    }
    let release = run_ok(env, Cmd::new("uname").arg("-r"))?.stdout;
    let release = release.trim();
    let kernel = release.strip_suffix("-azure").ok_or_else(|| {
        failed(format!(
            "kernel {release} is not an Azure kernel: no kernel update for {wanted}"
        ))
    })?;
    let kernel = kernel.replace('-', ".");
    run_ok(
        env,
        Cmd::new("apt-get").arg("update").timeout(PACKAGE_TIMEOUT),
    )?;
    let show = run_ok(
        env,
        Cmd::new("apt-cache").args(["show", "--no-all-versions", "linux-azure"]),
    )?;
    let version = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| failed("no Version in `apt-cache show linux-azure`"))?;
    // "<kernel>.<upload>": the upload number is not part of the kernel's.
    let package = match version.rsplit_once('.') {
        Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => version,
    };
    let (Some(have), Some(offered)) = (numbers(&kernel), numbers(package)) else {
        return Err(failed(format!(
            "cannot compare kernel {kernel} with linux-azure {package}"
        )));
    };
    if have >= offered {
        return Err(failed(format!(
            "no kernel update is available for Network Direct {nd_version} (kernel {kernel}, \
             linux-azure {package})"
        )));
    }
    log::info!("RDMA: updating the kernel to linux-azure {version} for {wanted}");
    run_ok(
        env,
        Cmd::new("apt-get")
            .args(["-y", "install", "linux-azure"])
            .timeout(PACKAGE_TIMEOUT),
    )
    .map_err(|e| failed(format!("kernel update failed: {e}")))?;
    Ok(DriverReport::new(format!("kernel updated to linux-azure {version}")).reboot(env))
}

/// Points the `hv_network_direct` alias at `hv_network_direct_<nd>`:
/// replaces every alias line's target, or appends one.
fn set_modprobe_alias(env: &Env, nd: &str) -> Result<(), RdmaError> {
    let path = env.path(UBUNTU_MODPROBE_CONF);
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(failed(format!("{UBUNTU_MODPROBE_CONF}: {e}"))),
    };
    let (mut new, n) = replace_runs(&old, MODPROBE_ALIAS, "", nd);
    if n == 0 {
        new = format!("{old}\n{MODPROBE_ALIAS}{nd}\n");
    }
    write_text(&path, &new)
}

fn write_text(path: &Path, text: &str) -> Result<(), RdmaError> {
    crate::os::write_file(path, text, 0o644).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::Output;

    #[test]
    fn rpm_names_matching_the_firmware() {
        let user = "microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64";
        assert!(fw_package(user, RHEL_USER_PACKAGE, "142").is_some());
        assert!(fw_package(user, RHEL_USER_PACKAGE, "42").is_none());
        assert!(fw_package(
            "microsoft-hyper-v-rdma-1.142-2016",
            RHEL_USER_PACKAGE,
            "142"
        )
        .is_none());
        assert!(is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-2016032.x86_64.rpm",
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            RHEL_USER_PACKAGE,
            "142"
        ));
    }

    const RHEL_DIR: &str = "/opt/microsoft/rdma/rhel79";

    #[test]
    fn redhat_installs_the_packages_of_the_firmware_and_reboots_if_not_loaded() {
        let f = fx();
        f.write(
            "/etc/redhat-release",
            "CentOS Linux release 7.9.2009 (Core)\n",
        );
        for file in [
            "kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101.x86_64.rpm",
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            "microsoft-hyper-v-rdma-4.1.0.142-20160323.src.rpm",
            "microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
        ] {
            f.write(&format!("{RHEL_DIR}/{file}"), "");
        }
        f.answer("ps -ef", kvp_running());
        f.answer(
            "rpm -q microsoft-hyper-v-rdma",
            Output::failed(1, "package microsoft-hyper-v-rdma is not installed"),
        );
        f.answer(
            "rpm -q microsoft-hyper-v",
            Output::failed(1, "not installed"),
        );
        f.answer("modprobe --first-time", Output::failed(1, "FATAL"));
        // os-release says "7" only: the minor comes from redhat-release.
        let os = f.os("centos", "7", Flavour::RedHat);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r,
            DriverReport {
                summary: "installed kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm, \
                          microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm"
                    .into(),
                warnings: vec![],
                reboot_requested: true,
            }
        );
        assert_eq!(
            f.lines(),
            [
                "ps -ef",
                "rpm -q microsoft-hyper-v-rdma",
                "yum clean all",
                "yum updateinfo",
                "yum erase -y -q msft-rdma-drivers",
                "yum install -y -q msft-rdma-drivers",
                "rpm -q hypervkvpd",
                "yum erase -q -y hypervkvpd",
                "rpm -q microsoft-hyper-v",
                "yum erase -y -q kmod-microsoft-hyper-v-rdma",
                "yum install -y -q /opt/microsoft/rdma/rhel79/kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
                "yum erase -y -q microsoft-hyper-v-rdma",
                "yum install -y -q /opt/microsoft/rdma/rhel79/microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
                "modprobe --first-time hv_network_direct",
                "shutdown -r now",
            ]
        );
        let install = f
            .runner
            .calls()
            .into_iter()
            .find(|c| c.display().starts_with("yum install"))
            .unwrap();
        assert_eq!(install.timeout, Duration::from_secs(600));
    }

    #[test]
    fn redhat_up_to_date_package_is_left_alone() {
        let f = fx();
        f.answer("ps -ef", kvp_running());
        f.answer(
            "rpm -q microsoft-hyper-v-rdma",
            Output::ok("microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64\n"),
        );
        let os = f.os("rhel", "7.9", Flavour::RedHat);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64 matches Network Direct 142.0"
        );
        assert!(!r.reboot_requested);
        assert_eq!(f.lines(), ["ps -ef", "rpm -q microsoft-hyper-v-rdma"]);
    }

    #[test]
    fn redhat_missing_package_or_directory_stops_the_check() {
        let f = fx();
        f.answer("ps -ef", kvp_running());
        f.answer("rpm -q", Output::failed(1, "not installed"));
        let os = f.os("almalinux", "8.9", Flavour::RedHat);
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("RDMA package directory /opt/microsoft/rdma/rhel89: "),
            "{e}"
        );
        f.write(
            "/opt/microsoft/rdma/rhel89/kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101.x86_64.rpm",
            "",
        );
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no RDMA kernel mode package for Network Direct 142 in /opt/microsoft/rdma/rhel89"
        );
        assert!(!f
            .lines()
            .iter()
            .any(|l| l.starts_with("yum install -y -q /opt")));
    }

    #[test]
    fn redhat_without_kvp_daemon_installs_it_and_reboots() {
        let f = fx();
        f.answer(
            "ps -ef",
            Output::ok("root 1 0 0 10:00 ? 00:00:01 /usr/lib/systemd/systemd\n"),
        );
        f.answer("rpm -q", Output::failed(1, "not installed"));
        let os = f.os("centos", "7.9", Flavour::RedHat);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "the KVP daemon was missing: hypervkvpd installed"
        );
        assert!(r.reboot_requested);
        assert_eq!(
            f.lines(),
            [
                "ps -ef",
                "rpm -q hypervkvpd",
                "rpm -q microsoft-hyper-v",
                "yum install -y -q hypervkvpd",
                "shutdown -r now",
            ]
        );
    }

    #[test]
    fn redhat_kvp_package_without_its_daemon_is_an_error() {
        let f = fx();
        f.answer("ps -ef", Output::ok("root 1 0 0 10:00 ? 00:00:01 init\n"));
        let os = f.os("centos", "7.9", Flavour::RedHat);
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert_eq!(
            e,
            RdmaError::Failed(
                "package hypervkvpd is installed but the KVP daemon is not running".into()
            )
        );
        assert_eq!(f.lines(), ["ps -ef", "rpm -q hypervkvpd"]);
        // No minor release anywhere: refused before any command.
        let g = fx();
        let os = g.os("centos", "7", Flavour::RedHat);
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot tell the minor release of centos 7: no RDMA package directory to use"
        );
        assert!(g.lines().is_empty());
    }

    const ZYPPER_SEARCH: &str = "Loading repository data...
Reading installed packages...

S  | Name                  | Type    | Version              | Arch   | Repository
---+-----------------------+---------+----------------------+--------+-----------
i+ | msft-rdma-kmp-default | package | 20170201.140.0_k4.4  | x86_64 | SLE-HPC
v  | msft-rdma-kmp-default | package | 20180201.142.0_k4.12 | x86_64 | SLE-HPC
";

    #[test]
    fn suse_replaces_a_mismatched_kmp_from_the_repositories() {
        let f = fx();
        f.write(
            "/proc/modules",
            "hv_network_direct 16384 0 - Live 0x0000000000000000\n",
        );
        f.answer("uname -r", Output::ok("4.12.14-122.37-default\n"));
        f.answer("zypper -n se -s", Output::ok(ZYPPER_SEARCH));
        let os = f.os("sles", "12.5", Flavour::Suse);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "installed msft-rdma-kmp-default-20180201.142.0_k4.12"
        );
        assert!(
            r.reboot_requested,
            "the old module stays loaded until a reboot"
        );
        assert_eq!(
            f.lines(),
            [
                "uname -r",
                "zypper -n se -s msft-rdma-kmp-default",
                "zypper removelock msft-rdma-kmp-default",
                "zypper -n rm msft-rdma-kmp-default",
                "zypper -n in msft-rdma-kmp-default-20180201.142.0_k4.12",
                "zypper addlock msft-rdma-kmp-default",
                "modprobe --first-time hv_network_direct",
                "shutdown -r now",
            ]
        );
    }

    #[test]
    fn suse_matching_kmp_installed_means_nothing_to_do() {
        let f = fx();
        f.answer("uname -r", Output::ok("4.12.14-122.37-default\n"));
        f.answer(
            "zypper -n se -s",
            Output::ok(&ZYPPER_SEARCH.replace("i+ |", "v  |").replace(
                "v  | msft-rdma-kmp-default | package | 2018",
                "i  | msft-rdma-kmp-default | package | 2018",
            )),
        );
        let os = f.os("sles", "12.5", Flavour::Suse);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "msft-rdma-kmp-default-20180201.142.0_k4.12 is installed"
        );
        assert_eq!(
            f.lines(),
            ["uname -r", "zypper -n se -s msft-rdma-kmp-default"]
        );
    }

    #[test]
    fn suse_falls_back_to_the_local_package() {
        let f = fx();
        for file in [
            "msft-rdma-kmp-azure-20180201.140.0-1.x86_64.rpm",
            "msft-rdma-kmp-azure-20180201.142.0-1.src.rpm",
            "msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm",
        ] {
            f.write(&format!("/opt/microsoft/rdma/{file}"), "");
        }
        f.answer("uname -r", Output::ok("4.12.14-6.15-azure\n"));
        f.answer(
            "zypper -n se -s",
            Output::failed(104, "No matching items found."),
        );
        // 106: a repository could not be refreshed; the file went in anyway.
        f.answer(
            "zypper -n --no-refresh in",
            Output::failed(106, "repository failed"),
        );
        let os = f.os("sle_hpc", "12.3", Flavour::Suse);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "installed /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm"
        );
        assert!(!r.reboot_requested);
        assert_eq!(
            f.lines(),
            [
                "uname -r",
                "zypper -n se -s msft-rdma-kmp-azure",
                "zypper -n --no-refresh in /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm",
                "zypper addlock msft-rdma-kmp-azure",
                "modprobe --first-time hv_network_direct",
            ]
        );
    }

    #[test]
    fn suse_without_a_matching_package_or_kernel_flavour_fails() {
        let f = fx();
        f.answer("uname -r", Output::ok("4.12.14-6.15-azure\n"));
        let os = f.os("sles", "12.5", Flavour::Suse);
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no msft-rdma-kmp-azure package matches Network Direct 142.0, neither in the \
             repositories nor in /opt/microsoft/rdma"
        );
        let g = fx();
        g.answer("uname -r", Output::ok("4.12.14-150-rt\n"));
        let os = g.os("sles", "12.5", Flavour::Suse);
        let e = check_driver(os.as_ref(), "142.0", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel \"4.12.14-150-rt\" is neither -default nor -azure: no RDMA driver package for it"
        );
        assert_eq!(g.lines(), ["uname -r"]);
    }

    #[test]
    fn suse_15_needs_no_driver() {
        let f = fx();
        let os = f.os("sles", "15.5", Flavour::Suse);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert!(r.summary.starts_with("SLE 15 and later"), "{}", r.summary);
        assert!(f.lines().is_empty());
    }

    #[test]
    fn ubuntu_points_the_alias_at_the_hosts_module() {
        let f = fx();
        f.mkdir("/etc/modprobe.d");
        f.answer(
            "modprobe -R hv_network_direct",
            Output::ok("hv_network_direct_140_0\n"),
        );
        let os = f.os("ubuntu", "18.04", Flavour::Ubuntu);
        // No alias file yet: one is made.
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "/etc/modprobe.d/vmbus-rdma.conf: hv_network_direct now loads hv_network_direct_142_0"
        );
        assert_eq!(
            f.read(UBUNTU_MODPROBE_CONF),
            "\nalias hv_network_direct hv_network_direct_142_0\n"
        );
        assert_eq!(f.mode(UBUNTU_MODPROBE_CONF), 0o644);
        // An alias to another version is replaced, the rest kept.
        f.write(
            UBUNTU_MODPROBE_CONF,
            "# RDMA\nalias hv_network_direct hv_network_direct_140_0\noptions x y\n",
        );
        check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            f.read(UBUNTU_MODPROBE_CONF),
            "# RDMA\nalias hv_network_direct hv_network_direct_142_0\noptions x y\n"
        );
        f.no_temp_files("/etc/modprobe.d");
        assert_eq!(
            f.lines(),
            [
                "modprobe -R hv_network_direct",
                "modinfo hv_network_direct_142_0",
                "modprobe -R hv_network_direct",
                "modinfo hv_network_direct_142_0",
            ]
        );
    }

    #[test]
    fn ubuntu_module_already_right() {
        let f = fx();
        f.answer(
            "modprobe -R hv_network_direct",
            Output::ok("hv_network_direct_142_0\n"),
        );
        let os = f.os("ubuntu", "18.04", Flavour::Ubuntu);
        let r = check_driver(os.as_ref(), "142.0", true).unwrap();
        assert_eq!(
            r.summary,
            "hv_network_direct is hv_network_direct_142_0 already"
        );
        assert_eq!(f.lines(), ["modprobe -R hv_network_direct"]);
    }

    #[test]
    fn ubuntu_updates_the_azure_kernel_only_when_allowed_and_newer() {
        let f = fx();
        f.answer("modprobe -R", Output::failed(1, "not found"));
        f.answer("modinfo", Output::failed(1, "not found"));
        f.answer("uname -r", Output::ok("5.4.0-1040-azure\n"));
        f.answer(
            "apt-cache show",
            Output::ok("Package: linux-azure\nArchitecture: amd64\nVersion: 5.4.0.1041.21\n"),
        );
        let os = f.os("ubuntu", "18.04", Flavour::Ubuntu);
        let r = check_driver(os.as_ref(), "142.0", false).unwrap();
        assert_eq!(
            r.summary,
            "this kernel has no hv_network_direct_142_0; kernel update skipped (OS.UpdateRdmaDriver=n)"
        );
        assert_eq!(
            f.lines(),
            [
                "modprobe -R hv_network_direct",
                "modinfo hv_network_direct_142_0"
            ]
        );

        let r = check_driver(os.as_ref(), "142.0", true).unwrap();
        assert_eq!(r.summary, "kernel updated to linux-azure 5.4.0.1041.21");
        assert!(r.reboot_requested);
        assert_eq!(
            f.lines()[2..],
            [
                "modprobe -R hv_network_direct",
                "modinfo hv_network_direct_142_0",
                "uname -r",
                "apt-get update",
                "apt-cache show --no-all-versions linux-azure",
                "apt-get -y install linux-azure",
                "shutdown -r now",
            ]
        );
    }

    #[test]
    fn ubuntu_without_a_newer_or_azure_kernel_fails() {
        let f = fx();
        f.answer("modprobe -R", Output::failed(1, "not found"));
        f.answer("modinfo", Output::failed(1, "not found"));
        f.answer("uname -r", Output::ok("5.4.0-1041-azure\n"));
        f.answer("apt-cache show", Output::ok("Version: 5.4.0.1041.21\n"));
        let os = f.os("ubuntu", "18.04", Flavour::Ubuntu);
        let e = check_driver(os.as_ref(), "142.0", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no kernel update is available for Network Direct 142.0 (kernel 5.4.0.1041, linux-azure 5.4.0.1041)"
        );
        assert!(!f.lines().iter().any(|l| l.contains("install")));

        let g = fx();
        g.answer("modprobe -R", Output::failed(1, "not found"));
        g.answer("modinfo", Output::failed(1, "not found"));
        g.answer("uname -r", Output::ok("5.15.0-91-generic\n"));
        let os = g.os("ubuntu", "22.04", Flavour::Ubuntu);
        let e = check_driver(os.as_ref(), "142.0", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel 5.15.0-91-generic is not an Azure kernel: no kernel update for hv_network_direct_142_0"
        );
        assert_eq!(g.lines().last().map(String::as_str), Some("uname -r"));
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
