//! CentOS / RHEL: the packages come from the image's `msft-rdma-drivers`,
//! which drops versioned RPMs in `/opt/microsoft/rdma/rhel<major><minor>`.

use super::*;

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

/// A package file `<name>-a.b.c.<fw>-YYYYMMDD.<arch>.rpm`, `<arch>` the
/// agent's own ([`RPM_ARCH`]).
fn is_fw_rpm(file: &str, name: &str, fw: &str) -> bool {
    fw_package(file, name, fw).is_some_and(|tail| {
        tail.get(..8)
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            && tail
                .get(8..)
                .is_some_and(|r| r == format!(".{RPM_ARCH}.rpm"))
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

pub(super) fn check(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
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
        let a = RPM_ARCH;
        assert!(is_fw_rpm(
            &format!("kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm"),
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            &format!("kmod-microsoft-hyper-v-rdma-4.1.0.142-2016032.{a}.rpm"),
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            &format!("kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm"),
            RHEL_USER_PACKAGE,
            "142"
        ));
        // Another architecture's package, or a name that only starts with
        // this one's, is not a match.
        for other in ["x86_64", "aarch64"].iter().filter(|o| **o != a) {
            assert!(!is_fw_rpm(
                &format!("kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{other}.rpm"),
                RHEL_KMOD_PACKAGE,
                "142"
            ));
        }
        assert!(!is_fw_rpm(
            &format!("kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm.bak"),
            RHEL_KMOD_PACKAGE,
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
        // The packages of both architectures Azure runs: the agent's own is
        // installed (aarch64 when this test runs under qemu, make cross).
        for arch in ["aarch64", "x86_64"] {
            for file in [
                "kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101",
                "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323",
                "microsoft-hyper-v-rdma-4.1.0.142-20160323",
            ] {
                f.write(&format!("{RHEL_DIR}/{file}.{arch}.rpm"), "");
            }
        }
        f.write(
            &format!("{RHEL_DIR}/microsoft-hyper-v-rdma-4.1.0.142-20160323.src.rpm"),
            "",
        );
        let (a, _) = super::super::expected_rpm_arch();
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
                summary: format!(
                    "installed kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm, \
                     microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm"
                ),
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
                &*format!("yum install -y -q /opt/microsoft/rdma/rhel79/kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm"),
                "yum erase -y -q microsoft-hyper-v-rdma",
                &*format!("yum install -y -q /opt/microsoft/rdma/rhel79/microsoft-hyper-v-rdma-4.1.0.142-20160323.{a}.rpm"),
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
            &format!(
                "/opt/microsoft/rdma/rhel89/kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101.{RPM_ARCH}.rpm"
            ),
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
}
