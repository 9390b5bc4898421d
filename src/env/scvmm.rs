//! System Center Virtual Machine Manager (§18.8 of PROTOCOL.md).
//!
//! A VM deployed by SCVMM rather than Azure gets a DVD with
//! `linuxosconfiguration.xml` and VMM's own `install` script instead of
//! `ovf-env.xml`. With `DetectScvmmEnv=y` the daemon looks for it at start;
//! when it is there, VMM's guest agent does the provisioning and ours steps
//! aside: it starts the script and exits after [`SCVMM_EXIT_DELAY`].

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os::{Cmd, OsUtil};

/// The file that marks VMM media.
pub const VMM_CONF_FILE_NAME: &str = "linuxosconfiguration.xml";
/// VMM's start-up script on the media.
pub const VMM_STARTUP_SCRIPT_NAME: &str = "install";
/// How long waagent waits after starting VMM's script before it exits.
pub const SCVMM_EXIT_DELAY: Duration = Duration::from_secs(300);

/// VMM media was found: what the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScvmmHandOver {
    /// The drive the media is in (left mounted: the script reads from it).
    pub device: PathBuf,
    pub mount_point: PathBuf,
    /// VMM's script, to be started detached (own session, standard streams
    /// on /dev/null): it outlives the agent.
    pub install: Cmd,
    /// Then wait this long and exit the daemon.
    pub exit_after: Duration,
}

/// True for the device names waagent tries (`sr0`, `hdc`…`hdz`, `cdrom`,
/// `cdrom0`, `cd0`); whole names, so `sr0p1` or `cdrom-x` do not match.
pub fn is_cd_like(name: &str) -> bool {
    let digits = |s: &str, min: usize, max: usize| {
        s.len() >= min && s.len() <= max && s.chars().all(|c| c.is_ascii_digit())
    };
    if let Some(r) = name.strip_prefix("cdrom") {
        return digits(r, 0, 1);
    }
    if let Some(r) = name.strip_prefix("sr") {
        return digits(r, 1, 1);
    }
    if let Some(r) = name.strip_prefix("cd") {
        return digits(r, 1, usize::MAX);
    }
    if let Some(r) = name.strip_prefix("hd") {
        let mut c = r.chars();
        return matches!((c.next(), c.next()), (Some('c'..='z'), None));
    }
    false
}

/// The CD-like devices in `dev_dir`, sorted, as `/dev/NAME` paths. A name
/// that is a symbolic link to another listed device (`cdrom` → `sr0`) is
/// dropped, so no drive is mounted twice.
pub fn cd_devices(dev_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dev_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_cd_like(n))
        .collect();
    names.sort();
    let link_to_listed = |n: &String| {
        fs::read_link(dev_dir.join(n)).is_ok_and(|t| {
            t.file_name()
                .is_some_and(|f| names.iter().any(|m| m != n && f == m.as_str()))
        })
    };
    names
        .iter()
        .filter(|n| !link_to_listed(n))
        .map(|n| Path::new("/dev").join(n))
        .collect()
}

/// `DetectScvmmEnv`: looks for VMM media in every CD-like drive. Each drive
/// gets one mount try at `DVD.MountPoint` through the flavour's `mount_dvd`
/// (Linux `mount -t udf,iso9660 -o ro`, FreeBSD `mount_udf`/`mount_cd9660`);
/// failures are skipped, as waagent does (an empty drive is normal), and a
/// drive without the marker is unmounted again. `None`: not SCVMM, carry on.
pub fn detect(os: &dyn OsUtil) -> Option<ScvmmHandOver> {
    let env = os.env();
    // The IDE CD driver, missing from some initrds; ignored if it fails
    // (built in, or no such module).
    if let Some(load) = os.load_module_cmd("ata_piix") {
        let _ = env.runner.run(&load);
    }
    let mount_point = env.config.dvd_mount_point.clone();
    if let Err(e) = fs::create_dir_all(&mount_point) {
        log::warn!("SCVMM: cannot create {}: {e}", mount_point.display());
        return None;
    }
    for device in cd_devices(&env.path("/dev")) {
        if let Err(e) = os.mount_dvd(&device, &mount_point) {
            log::debug!("SCVMM: {} not mounted: {e}", device.display());
            continue;
        }
        if mount_point.join(VMM_CONF_FILE_NAME).is_file() {
            log::info!("SCVMM media found in {}", device.display());
            return Some(ScvmmHandOver {
                install: install_command(&mount_point),
                device,
                mount_point,
                exit_after: SCVMM_EXIT_DELAY,
            });
        }
        if let Err(e) = os.umount(&mount_point) {
            log::warn!("SCVMM: {e}");
        }
    }
    None
}

/// `/bin/bash {mnt}/install "-p {mnt}"`: the option and the path travel as
/// one argument, exactly as waagent has always started VMM's script.
pub fn install_command(mount_point: &Path) -> Cmd {
    let mnt = mount_point.to_string_lossy();
    Cmd::new("/bin/bash")
        .arg(mount_point.join(VMM_STARTUP_SCRIPT_NAME).to_string_lossy())
        .arg(format!("-p {mnt}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::testing;
    use crate::os::Flavour;
    use crate::os::{for_env, Output, RecordingRunner};
    use std::rc::Rc;

    #[test]
    fn cd_like_names() {
        for n in ["sr0", "sr9", "hdc", "hdz", "cdrom", "cdrom0", "cd0", "cd12"] {
            assert!(is_cd_like(n), "{n}");
        }
        for n in [
            "sr", "sr10", "sr0p1", "hda", "hdb", "hdcc", "cdrom10", "cdrom-x", "cd", "cdx", "sda",
            "tty0",
        ] {
            assert!(!is_cd_like(n), "{n}");
        }
    }

    struct Fixture {
        root: tempfile::TempDir,
        runner: Rc<RecordingRunner>,
    }

    fn fixture(devices: &[&str]) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        for d in devices {
            fs::write(dev.join(d), "").unwrap();
        }
        Fixture {
            root,
            runner: Rc::new(RecordingRunner::new()),
        }
    }

    impl Fixture {
        fn os(&self, flavour: Flavour) -> Box<dyn OsUtil> {
            let mut env = testing::env(self.root.path(), flavour, self.runner.clone());
            env.config.dvd_mount_point = self.mnt();
            for_env(env)
        }

        fn mnt(&self) -> PathBuf {
            self.root.path().join("mnt/cdrom/secure")
        }

        /// Makes mounting `device` "show" the VMM marker.
        fn vmm_media_in(&self, device: &'static str) {
            let mnt = self.mnt();
            self.runner.respond(move |c| {
                if c.program.starts_with("mount") && c.argv().iter().any(|a| a == device) {
                    fs::write(mnt.join(VMM_CONF_FILE_NAME), "<xml/>").unwrap();
                }
                None
            });
        }
    }

    #[test]
    fn lists_cd_devices_without_links_to_each_other() {
        let f = fixture(&["sr0", "sda", "hdc", "tty0"]);
        std::os::unix::fs::symlink("sr0", f.root.path().join("dev/cdrom")).unwrap();
        assert_eq!(
            cd_devices(&f.root.path().join("dev")),
            vec![PathBuf::from("/dev/hdc"), PathBuf::from("/dev/sr0")]
        );
        assert!(cd_devices(&f.root.path().join("nodev")).is_empty());
    }

    #[test]
    fn finds_vmm_media_in_the_second_drive() {
        let f = fixture(&["sr0", "sr1"]);
        f.vmm_media_in("/dev/sr1");
        let h = detect(f.os(Flavour::RedHat).as_ref()).expect("SCVMM");
        assert_eq!(h.device, PathBuf::from("/dev/sr1"));
        assert_eq!(h.exit_after, Duration::from_secs(300));
        let m = f.mnt().display().to_string();
        assert_eq!(
            h.install.argv(),
            vec![
                "/bin/bash".to_string(),
                format!("{m}/install"),
                format!("-p {m}")
            ]
        );
        assert_eq!(
            f.runner.lines(),
            vec![
                "modprobe ata_piix".to_string(),
                format!("mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {m}"),
                format!("umount {m}"),
                format!("mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr1 {m}"),
            ]
        );
    }

    #[test]
    fn no_media_and_failed_mounts_mean_not_scvmm() {
        let f = fixture(&["sr0", "hdc"]);
        f.runner
            .push("modprobe", Output::failed(1, "module not found"));
        f.runner
            .push("mount", Output::failed(32, "no medium found"));
        assert_eq!(detect(f.os(Flavour::Suse).as_ref()), None);
        let m = f.mnt().display().to_string();
        assert_eq!(
            f.runner.lines(),
            vec![
                "modprobe ata_piix".to_string(),
                format!("mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/hdc {m}"),
                format!("mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {m}"),
                format!("umount {m}"),
            ]
        );
    }

    #[test]
    fn freebsd_mounts_its_own_way_and_loads_no_linux_module() {
        let f = fixture(&["cd0"]);
        f.vmm_media_in("/dev/cd0");
        let h = detect(f.os(Flavour::FreeBsd).as_ref()).expect("SCVMM");
        assert_eq!(h.device, PathBuf::from("/dev/cd0"));
        let m = f.mnt().display().to_string();
        assert_eq!(
            f.runner.lines(),
            vec![format!("mount_udf -o ro,nosuid,noexec /dev/cd0 {m}")]
        );
    }
}
