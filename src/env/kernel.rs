//! Kernel settings the agent keeps right on Azure (§18.3, §18.9 of
//! PROTOCOL.md): the SCSI command timeout of the disks, the Hyper-V
//! entropy seed, and the `numa=off` workaround of old kernels.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::console::{self, Applied};
use crate::os::{Cmd, Env, OsError, OsUtil};

/// What one application of `OS.RootDeviceScsiTimeout` did.
#[derive(Debug, Default)]
pub struct ScsiTimeouts {
    /// Devices whose timeout was changed (`sda`, …), or the sysctl.
    pub changed: Vec<String>,
    /// Devices that could not be read or written; the others were still done.
    pub errors: Vec<OsError>,
}

/// `OS.RootDeviceScsiTimeout`: the SCSI command timeout of every disk.
///
/// Azure's storage can stall for longer than the kernel's 30 s default
/// (host servicing, storage failover); a timeout that short turns a pause
/// into I/O errors and a read-only root, so the agent raises it. Linux resets
/// the value whenever a disk is (re)attached, hence the periodic check
/// (`OS.RootDeviceScsiTimeoutPeriod`); where one sysctl holds it
/// ([`OsUtil::scsi_timeout_sysctl`], FreeBSD) it is set once.
#[derive(Debug, Clone)]
pub struct RootDeviceScsiTimeout {
    pub seconds: u64,
    sysctl_done: bool,
}

impl RootDeviceScsiTimeout {
    /// From the configuration; `None` when the option is unset.
    pub fn from_config(env: &Env) -> Option<Self> {
        env.config
            .root_device_scsi_timeout
            .map(|seconds| RootDeviceScsiTimeout {
                seconds,
                sysctl_done: false,
            })
    }

    /// Sets the timeout where it differs. A sysctl runs until it has
    /// succeeded once and never again.
    pub fn apply(&mut self, os: &dyn OsUtil) -> ScsiTimeouts {
        let env = os.env();
        let Some(sysctl) = os.scsi_timeout_sysctl() else {
            return set_sysfs_timeouts(&env.path("/sys/block"), self.seconds);
        };
        let mut r = ScsiTimeouts::default();
        if self.sysctl_done {
            return r;
        }
        let cmd = Cmd::new("sysctl").arg(format!("{sysctl}={}", self.seconds));
        match env.run_ok(cmd) {
            Ok(_) => {
                self.sysctl_done = true;
                r.changed.push(sysctl.to_string());
            }
            Err(e) => r.errors.push(e),
        }
        r
    }
}

/// Writes `seconds` to `{sys_block}/sd*/device/timeout` wherever the value
/// differs. sysfs attributes are written in place: they are not files that
/// a rename could replace, so no atomic write here.
pub fn set_sysfs_timeouts(sys_block: &Path, seconds: u64) -> ScsiTimeouts {
    let mut r = ScsiTimeouts::default();
    let Ok(dir) = fs::read_dir(sys_block) else {
        return r;
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sd"))
        .collect();
    names.sort();
    let want = seconds.to_string();
    for name in names {
        let path = sys_block.join(&name).join("device/timeout");
        let current = match fs::read_to_string(&path) {
            Ok(v) => v,
            // A disk being detached, or not a SCSI disk: nothing to set.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                r.errors.push(OsError::Io { path, source: e });
                continue;
            }
        };
        if current.trim() == want {
            continue;
        }
        let written = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(want.as_bytes()));
        match written {
            Ok(()) => r.changed.push(name),
            Err(e) => r.errors.push(OsError::Io { path, source: e }),
        }
    }
    r
}

/// Hyper-V hands every VM a random seed in the ACPI `OEM0` table; writing it
/// to `/dev/random` mixes it into the pool early in boot, before the VM has
/// gathered entropy of its own (waagent 2.0 did this at start). Failures are
/// ignored: a write to `/dev/random` credits no entropy and only adds to the
/// pool, so a missing table (not Hyper-V, an older host) or a refused write
/// costs nothing but the extra seed. Returns the bytes written.
pub fn seed_entropy_from_hyperv(env: &Env) -> Option<usize> {
    let seed = fs::read(env.path("/sys/firmware/acpi/tables/OEM0")).ok()?;
    if seed.is_empty() {
        return None;
    }
    // Never created: only the real device is written.
    let mut random = fs::OpenOptions::new()
        .write(true)
        .open(env.path("/dev/random"))
        .ok()?;
    random.write_all(&seed).ok()?;
    Some(seed.len())
}

/// The running kernel's release (`5.15.0-1051-azure`), from
/// `/proc/sys/kernel/osrelease`.
pub fn kernel_release(env: &Env) -> Option<String> {
    let r = fs::read_to_string(env.path("/proc/sys/kernel/osrelease")).ok()?;
    let r = r.trim();
    (!r.is_empty()).then(|| r.to_string())
}

/// The last kernel that needs `numa=off`: Linux up to 2.6.37 mishandled
/// Hyper-V's virtual NUMA topology (§18.9 gives "≤ 2.6.37").
pub const NUMA_BROKEN_UP_TO: (u32, u32, u32) = (2, 6, 37);

/// True for a Linux release (`2.6.32-431.el6.x86_64`) at or below
/// [`NUMA_BROKEN_UP_TO`]. A release that does not parse is assumed fine:
/// the workaround only ever applied to a few old images.
pub fn needs_numa_off(release: &str) -> bool {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(a)), Some(Some(b)), third) = (nums.next(), nums.next(), nums.next()) else {
        return false;
    };
    let c = third.flatten().unwrap_or(0);
    (a, b, c) <= NUMA_BROKEN_UP_TO
}

/// What the NUMA check found.
#[derive(Debug, PartialEq, Eq)]
pub enum NumaCheck {
    /// The kernel is new enough (or its release is unknown).
    NotNeeded,
    /// `numa=off` was (or already is) on the kernel command line for the
    /// next boot; it takes effect after a reboot.
    Disabled(Applied),
}

/// On an old kernel, adds `numa=off` to the boot configuration (the same
/// edit as `-serialconsole`, [`console::add_kernel_args`]). `release` is
/// [`kernel_release`] or `uname -r`.
pub fn disable_numa_if_needed(os: &dyn OsUtil, release: &str) -> Result<NumaCheck, OsError> {
    if !os.checks_numa() || !needs_numa_off(release) {
        return Ok(NumaCheck::NotNeeded);
    }
    console::add_kernel_args(os, &["numa=off"]).map(NumaCheck::Disabled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::testing::{self, read, write};
    use crate::os::Flavour;
    use crate::os::{for_env, Output, RecordingRunner};
    use std::rc::Rc;

    /// With `OS.RootDeviceScsiTimeout=300`.
    fn env(root: &Path, flavour: Flavour, runner: Rc<RecordingRunner>) -> Env {
        let mut env = testing::env(root, flavour, runner);
        env.config.root_device_scsi_timeout = Some(300);
        env
    }

    #[test]
    fn linux_sets_only_sd_disks_whose_timeout_differs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "/sys/block/sda/device/timeout", "30\n");
        write(root, "/sys/block/sdb/device/timeout", "300\n");
        write(root, "/sys/block/sr0/device/timeout", "30\n");
        fs::create_dir_all(root.join("sys/block/sdc")).unwrap(); // no device/timeout
        let runner = Rc::new(RecordingRunner::new());
        let os = for_env(env(root, Flavour::RedHat, runner.clone()));
        let mut t = RootDeviceScsiTimeout::from_config(os.env()).unwrap();
        let r = t.apply(&*os);
        assert_eq!(r.changed, vec!["sda"]);
        assert!(r.errors.is_empty());
        assert_eq!(read(root, "/sys/block/sda/device/timeout"), "300");
        assert_eq!(read(root, "/sys/block/sr0/device/timeout"), "30\n");
        // Periodic: nothing left to change, until a disk is reset.
        assert!(t.apply(&*os).changed.is_empty());
        write(root, "/sys/block/sda/device/timeout", "30\n");
        assert_eq!(t.apply(&*os).changed, vec!["sda"]);
        assert!(runner.lines().is_empty());
    }

    #[test]
    fn unset_option_means_nothing_to_do() {
        let d = tempfile::tempdir().unwrap();
        let mut e = env(d.path(), Flavour::Ubuntu, Rc::new(RecordingRunner::new()));
        e.config.root_device_scsi_timeout = None;
        assert!(RootDeviceScsiTimeout::from_config(&e).is_none());
        assert!(set_sysfs_timeouts(&d.path().join("sys/block"), 300)
            .changed
            .is_empty());
    }

    #[test]
    fn freebsd_runs_the_sysctl_until_it_succeeds_once() {
        let d = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push("sysctl", Output::failed(1, "unknown oid"));
        let os = for_env(env(d.path(), Flavour::FreeBsd, runner.clone()));
        let mut t = RootDeviceScsiTimeout::from_config(os.env()).unwrap();
        let r = t.apply(&*os);
        assert!(r.changed.is_empty() && r.errors.len() == 1);
        assert_eq!(t.apply(&*os).changed, vec!["kern.cam.da.default_timeout"]);
        assert!(t.apply(&*os).changed.is_empty());
        assert_eq!(
            runner.lines(),
            vec![
                "sysctl kern.cam.da.default_timeout=300",
                "sysctl kern.cam.da.default_timeout=300"
            ]
        );
    }

    #[test]
    fn entropy_seed_is_copied_and_its_absence_ignored() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let e = env(root, Flavour::Ubuntu, Rc::new(RecordingRunner::new()));
        assert_eq!(seed_entropy_from_hyperv(&e), None);
        write(root, "/sys/firmware/acpi/tables/OEM0", "OEM0-seed-bytes");
        assert_eq!(seed_entropy_from_hyperv(&e), None); // no /dev/random to write
        assert!(!root.join("dev/random").exists());
        write(root, "/dev/random", "");
        assert_eq!(seed_entropy_from_hyperv(&e), Some(15));
        assert_eq!(read(root, "/dev/random"), "OEM0-seed-bytes");
    }

    #[test]
    fn numa_cut_off() {
        assert!(needs_numa_off("2.6.32-431.el6.x86_64"));
        assert!(needs_numa_off("2.6.37"));
        assert!(needs_numa_off("2.6"));
        assert!(!needs_numa_off("2.6.38-8-virtual"));
        assert!(!needs_numa_off("3.0.101-63-default"));
        assert!(!needs_numa_off("5.15.0-1051-azure"));
        assert!(!needs_numa_off(""));
        assert!(!needs_numa_off("garbage"));
    }

    #[test]
    fn numa_off_goes_to_the_boot_configuration_on_old_kernels_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "/proc/sys/kernel/osrelease", "2.6.32-71.el6.x86_64\n");
        write(root, "/boot/grub/menu.lst", "\tkernel /vmlinuz ro quiet\n");
        let runner = Rc::new(RecordingRunner::new());
        let mut e = env(root, Flavour::RedHat, runner.clone());
        e.distro.version = "6.0".into();
        let os = for_env(e);
        assert_eq!(
            disable_numa_if_needed(&*os, "5.4.0").unwrap(),
            NumaCheck::NotNeeded
        );
        let release = kernel_release(os.env()).unwrap();
        assert_eq!(release, "2.6.32-71.el6.x86_64");
        let NumaCheck::Disabled(a) = disable_numa_if_needed(&*os, &release).unwrap() else {
            panic!("numa=off expected");
        };
        assert!(a.changed);
        assert_eq!(
            read(root, "/boot/grub/menu.lst"),
            "\tkernel /vmlinuz ro quiet numa=off\n"
        );
        let NumaCheck::Disabled(a) = disable_numa_if_needed(&*os, &release).unwrap() else {
            panic!("numa=off expected");
        };
        assert!(!a.changed);
        assert!(runner.lines().is_empty());
        // FreeBSD has no such workaround.
        let os = for_env(env(root, Flavour::FreeBsd, runner.clone()));
        assert_eq!(
            disable_numa_if_needed(&*os, &release).unwrap(),
            NumaCheck::NotNeeded
        );
    }
}
