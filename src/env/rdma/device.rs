//! The Network Direct device (the older HPC sizes), as waagent sets it up:
//! the DAPL `dat.conf` gets the instance's address, the `hv_network_direct`
//! kernel module is loaded and, when it is older than 4.1, is told the
//! address and MAC through `/dev/hvnd_rdma`. The per-distro driver check
//! ([`check_driver`](super::check_driver)) uses the module helpers too.
//!
//! Unlike waagent, the loaded modules are read from `/proc/modules` rather
//! than `lsmod | grep`, and the MAC goes to the device in upper case whatever
//! case SharedConfig used.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;

use super::{failed, RdmaAddress, RdmaError};
use crate::os::{positional, Cmd, Env, Output};

/// Where the DAPL configuration may live, tried in this order; the first
/// that exists is updated.
pub const DAT_CONF_PATHS: [&str; 3] = [
    "/etc/dat.conf",
    "/etc/rdma/dat.conf",
    "/usr/local/etc/dat.conf",
];
/// The Network Direct driver's control device (drivers before 4.1).
pub const RDMA_DEVICE: &str = "/dev/hvnd_rdma";
/// The Network Direct kernel module (an alias on Ubuntu).
pub const DRIVER_MODULE: &str = "hv_network_direct";

/// The DAPL provider line whose address waagent rewrites; `"<addr> 0"` follows.
const DAT_CONF_ENTRY: &str = "ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"";

// ----- DAPL configuration -----

/// Replaces, everywhere in `text`, the non-blank run after `prefix` (which
/// `after` must follow) by `value`; returns the new text and how many runs
/// were replaced.
pub(super) fn replace_runs(text: &str, prefix: &str, after: &str, value: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut count = 0;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i + prefix.len()..];
        let run = tail.find(char::is_whitespace).unwrap_or(tail.len());
        if run > 0 && tail[run..].starts_with(after) {
            out.push_str(&rest[..i + prefix.len()]);
            out.push_str(value);
            out.push_str(after);
            rest = &tail[run + after.len()..];
            count += 1;
        } else {
            // Go on one character further: a match may start inside.
            let step = rest[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..i + step]);
            rest = &rest[i + step..];
        }
    }
    out.push_str(rest);
    (out, count)
}

/// `dat.conf` with the `ofa-v2-ib0` provider pointed at `ipv4`
/// (`… dapl.2.0 "<ipv4> 0"`); everything else as it was.
pub fn rewrite_dat_conf(text: &str, ipv4: Ipv4Addr) -> String {
    replace_runs(text, DAT_CONF_ENTRY, " 0\"", &ipv4.to_string()).0
}

/// Updates the first DAPL configuration of [`DAT_CONF_PATHS`] that exists,
/// atomically and keeping its mode and owner; unchanged text is not written.
/// Returns the path and whether it changed.
pub fn update_dat_conf(env: &Env, ipv4: Ipv4Addr) -> Result<(&'static str, bool), RdmaError> {
    for abs in DAT_CONF_PATHS {
        let path = env.path(abs);
        if !path.is_file() {
            continue;
        }
        let old = fs::read_to_string(&path).map_err(|e| failed(format!("{abs}: {e}")))?;
        let new = rewrite_dat_conf(&old, ipv4);
        if new == old {
            return Ok((abs, false));
        }
        crate::os::write_file(&path, &new, 0o644).map_err(|e| failed(e.to_string()))?;
        log::info!("RDMA: {abs}: address set to {ipv4}");
        return Ok((abs, true));
    }
    Err(failed(format!(
        "no DAPL configuration found (tried {}): the RDMA interface was not configured",
        DAT_CONF_PATHS.join(", ")
    )))
}

// ----- the Network Direct device -----

/// What the device is told: `rdmaMacAddress="00:15:5D:33:FF:1D" rdmaIPv4Address="172.16.1.4"`.
pub fn device_config(address: &RdmaAddress) -> String {
    format!(
        "rdmaMacAddress=\"{}\" rdmaIPv4Address=\"{}\"",
        address.mac_text(),
        address.ipv4
    )
}

/// Writes [`device_config`] to `/dev/hvnd_rdma`, which must exist: it is the
/// driver's device, written in place (never replaced by a rename).
pub fn write_device_config(env: &Env, address: &RdmaAddress) -> Result<(), RdmaError> {
    let path = env.path(RDMA_DEVICE);
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(device_config(address).as_bytes()))
        .map_err(|e| failed(format!("{RDMA_DEVICE}: {e}")))?;
    log::info!("RDMA: {RDMA_DEVICE} configured with {address}");
    Ok(())
}

// ----- the kernel module -----

/// What `hv_network_direct` resolves to (`modprobe -R`: Ubuntu aliases it
/// to `hv_network_direct_<version>`); the plain name when that fails.
pub(super) fn resolved_module(env: &Env) -> String {
    env.runner
        .run(&Cmd::new("modprobe").args(["-R", DRIVER_MODULE]))
        .ok()
        .filter(Output::success)
        .and_then(|o| o.stdout.lines().next().map(|l| l.trim().to_string()))
        .filter(|m| positional("module", m).is_ok())
        .unwrap_or_else(|| DRIVER_MODULE.to_string())
}

/// The `a.b.c` of the first `version:` field of `modinfo` output (any case,
/// blanks, three numbers and then something that is not a digit).
pub(super) fn modinfo_version(text: &str) -> Option<(u32, u32, u32)> {
    let lower = text.to_ascii_lowercase();
    lower.match_indices("version:").find_map(|(i, m)| {
        let after = &text[i + m.len()..];
        let rest = after.trim_start();
        if rest.len() == after.len() {
            return None;
        }
        let mut nums = [0u32; 3];
        let mut s = rest;
        for (k, n) in nums.iter_mut().enumerate() {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            *n = s[..digits].parse().ok()?;
            s = &s[digits..];
            if k < 2 {
                s = s.strip_prefix('.')?;
            }
        }
        match s.chars().next() {
            Some(c) if c.is_ascii_digit() => None,
            _ => Some((nums[0], nums[1], nums[2])),
        }
    })
}

/// True when `/proc/modules` lists a `hv_network_direct*` module.
pub(super) fn driver_loaded(env: &Env) -> bool {
    fs::read_to_string(env.path("/proc/modules"))
        .is_ok_and(|t| t.lines().any(|l| l.starts_with(DRIVER_MODULE)))
}

/// `modprobe --first-time hv_network_direct`.
pub(super) fn load_driver_module(env: &Env) -> bool {
    env.runner
        .run(&Cmd::new("modprobe").args(["--first-time", DRIVER_MODULE]))
        .is_ok_and(|o| o.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::Flavour;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dat_conf_rewrite_touches_only_the_ib0_provider() {
        let new = rewrite_dat_conf(DAT_CONF, IP);
        assert_eq!(
            new,
            DAT_CONF.replace("\"ib0 0\"", "\"172.16.1.4 0\""),
            "only ofa-v2-ib0 changes"
        );
        // Idempotent, and an address already there is replaced too.
        assert_eq!(rewrite_dat_conf(&new, IP), new);
        assert_eq!(
            rewrite_dat_conf(&new, Ipv4Addr::new(172, 16, 9, 9)),
            DAT_CONF.replace("\"ib0 0\"", "\"172.16.9.9 0\"")
        );
        // Port 1, or no address at all: not waagent's pattern, left alone.
        for other in [
            "ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"ib0 1\" \"\"\n",
            "ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \" 0\" \"\"\n",
        ] {
            assert_eq!(rewrite_dat_conf(other, IP), other);
        }
    }

    #[test]
    fn dat_conf_first_existing_path_atomically_keeping_its_mode() {
        let f = fx();
        let os = f.os("sles", "12.5", Flavour::Suse);
        let e = update_dat_conf(os.env(), IP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no DAPL configuration found (tried /etc/dat.conf, /etc/rdma/dat.conf, \
             /usr/local/etc/dat.conf): the RDMA interface was not configured"
        );
        f.write("/etc/rdma/dat.conf", DAT_CONF);
        f.write("/usr/local/etc/dat.conf", DAT_CONF);
        fs::set_permissions(
            f.path("/etc/rdma/dat.conf"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert_eq!(
            update_dat_conf(os.env(), IP),
            Ok(("/etc/rdma/dat.conf", true))
        );
        assert!(f
            .read("/etc/rdma/dat.conf")
            .contains("dapl.2.0 \"172.16.1.4 0\""));
        assert_eq!(f.mode("/etc/rdma/dat.conf"), 0o640);
        assert_eq!(
            f.read("/usr/local/etc/dat.conf"),
            DAT_CONF,
            "only the first one"
        );
        f.no_temp_files("/etc/rdma");
        // Second time: nothing to write.
        let before = fs::metadata(f.path("/etc/rdma/dat.conf"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            update_dat_conf(os.env(), IP),
            Ok(("/etc/rdma/dat.conf", false))
        );
        let after = fs::metadata(f.path("/etc/rdma/dat.conf"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        assert!(f.lines().is_empty());
    }

    #[test]
    fn device_gets_mac_and_address_in_place() {
        let f = fx();
        let os = f.os("centos", "7.9", Flavour::RedHat);
        assert_eq!(
            device_config(&ADDRESS),
            "rdmaMacAddress=\"00:15:5D:33:FF:1D\" rdmaIPv4Address=\"172.16.1.4\""
        );
        let e = write_device_config(os.env(), &ADDRESS).unwrap_err();
        assert!(e.to_string().starts_with("/dev/hvnd_rdma: "), "{e}");
        assert!(!f.path(RDMA_DEVICE).exists(), "the device is never created");
        f.write(
            RDMA_DEVICE,
            "something longer than the configuration line, from before.....",
        );
        write_device_config(os.env(), &ADDRESS).unwrap();
        assert_eq!(f.read(RDMA_DEVICE), device_config(&ADDRESS));
    }

    #[test]
    fn modinfo_versions() {
        let out = "filename:       /lib/modules/3.10.0/extra/hv_network_direct.ko\n\
                   version:        4.0.2.114\nlicense:        GPL\nsrcversion:     1C4E2F5A\n";
        assert_eq!(modinfo_version(out), Some((4, 0, 2)));
        assert_eq!(modinfo_version("VERSION:\t4.2.0-x\n"), Some((4, 2, 0)));
        assert_eq!(modinfo_version("version: 4.2\nsrcversion: ABC\n"), None);
        assert_eq!(modinfo_version("version:4.2.0\n"), None);
        assert_eq!(modinfo_version("license: GPL\n"), None);
    }
}
