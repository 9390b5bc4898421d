//! Ubuntu: the Azure kernel ships `hv_network_direct_<version>` modules; the
//! alias picks the host's, and a newer kernel may bring a missing one.

use super::*;

pub(super) fn check(env: &Env, nd_version: &str, update: bool) -> Result<DriverReport, RdmaError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::Output;

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
}
