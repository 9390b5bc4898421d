//! SLES 12 (SLE 15 passes the InfiniBand device through): a KMP matching the
//! kernel flavour, from the repositories or from /opt/microsoft/rdma.

use super::*;

fn zypper(args: &[&str]) -> Cmd {
    Cmd::new("zypper")
        .args(args.iter().copied())
        .timeout(PACKAGE_TIMEOUT)
}

pub(super) fn check(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
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
                .filter(|n| is_rpm_of_this_arch(n))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::Output;

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
            "msft-rdma-kmp-azure-20180201.140.0-1.aarch64.rpm",
            "msft-rdma-kmp-azure-20180201.142.0-1.aarch64.rpm",
            "msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm",
        ] {
            f.write(&format!("/opt/microsoft/rdma/{file}"), "");
        }
        // The agent's own architecture: aarch64 under qemu (make cross).
        let (a, _) = super::super::expected_rpm_arch();
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
            format!("installed /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.{a}.rpm")
        );
        assert!(!r.reboot_requested);
        assert_eq!(
            f.lines(),
            [
                "uname -r",
                "zypper -n se -s msft-rdma-kmp-azure",
                &*format!("zypper -n --no-refresh in /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.{a}.rpm"),
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
}
