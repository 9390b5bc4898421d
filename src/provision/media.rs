//! The provisioning media: Azure attaches a small UDF/ISO "DVD" holding
//! `ovf-env.xml` (§8.1). Find it, mount it read-only with the system's
//! mount(8) as waagent does, copy the document, unmount and eject.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::Clock;
use crate::os::OsUtil;

/// ovf-env.xml is a few KiB; anything this big is not one.
const MAX_OVF_BYTES: u64 = 1 << 20;

/// How patiently the media is mounted (the current agent: 5 tries, 5 s apart;
/// the drive can appear a moment after boot).
#[derive(Debug, Clone, Copy)]
pub struct MountRetry {
    pub tries: u32,
    pub delay: Duration,
}

impl Default for MountRetry {
    fn default() -> Self {
        MountRetry {
            tries: 5,
            delay: Duration::from_secs(5),
        }
    }
}

/// The CD/DVD drives to try: those sysfs says are CD-ROMs, then the names
/// waagent looks for in /dev (old kernels, FreeBSD).
pub fn candidate_devices(os: &dyn OsUtil) -> Vec<PathBuf> {
    let mut found = os.dvd_devices();
    let dev = os.env().path("/dev");
    let mut named: Vec<PathBuf> = std::fs::read_dir(&dev)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_dvd_name(n))
        .map(|n| Path::new("/dev").join(n))
        .collect();
    named.sort();
    for n in named {
        if !found.contains(&n) {
            found.push(n);
        }
    }
    found
}

/// `sr0`, `hdc`…`hdz`, `cdrom0`, `cd0` (§8.1).
fn is_dvd_name(n: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    n.strip_prefix("sr").is_some_and(digits)
        || n.strip_prefix("cdrom")
            .is_some_and(|s| s.is_empty() || digits(s))
        || n.strip_prefix("cd").is_some_and(digits)
        || (n.len() == 3 && n.starts_with("hd") && ('c'..='z').contains(&n.as_bytes()[2].into()))
}

/// Where `device` is already mounted, per `/proc/mounts` (under the OS root).
fn existing_mount(os: &dyn OsUtil, device: &Path) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string(os.env().path("/proc/mounts")).ok()?;
    let dev = device.to_string_lossy();
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == dev).then(|| PathBuf::from(f.next().unwrap_or("")))
    })
}

/// Mounts the media, returns ovf-env.xml's text, unmounts and ejects.
/// Failing to unmount or eject is a warning (a missing `eject` binary
/// included): the document is what matters.
pub fn read_ovf_env(
    os: &dyn OsUtil,
    mount_point: &Path,
    retry: MountRetry,
    clock: &dyn Clock,
) -> Result<String, String> {
    let devices = candidate_devices(os);
    if devices.is_empty() {
        return Err("no provisioning media (DVD drive) found".into());
    }
    let mut last_err = String::new();
    for device in &devices {
        if let Some(mp) = existing_mount(os, device) {
            log::info!(
                "provisioning media {} is already mounted at {}",
                device.display(),
                mp.display()
            );
            return read_document(&mp);
        }
        std::fs::create_dir_all(mount_point).map_err(|e| {
            format!(
                "cannot create the mount point {}: {e}",
                mount_point.display()
            )
        })?;
        for attempt in 1..=retry.tries.max(1) {
            match os.mount_dvd(device, mount_point) {
                Ok(()) => {
                    let doc = read_document(mount_point);
                    release(os, device, mount_point);
                    return doc;
                }
                Err(e) => {
                    last_err = format!("cannot mount {}: {e}", device.display());
                    if attempt < retry.tries {
                        log::warn!("{last_err}; trying again in {:?}", retry.delay);
                        if !clock.sleep(retry.delay) {
                            return Err(format!("{last_err}; stopped"));
                        }
                    }
                }
            }
        }
    }
    Err(last_err)
}

fn read_document(dir: &Path) -> Result<String, String> {
    let path = dir.join("ovf-env.xml");
    let md = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.len() > MAX_OVF_BYTES {
        return Err(format!(
            "{} is {} bytes, more than an ovf-env.xml can be",
            path.display(),
            md.len()
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

fn release(os: &dyn OsUtil, device: &Path, mount_point: &Path) {
    if let Err(e) = os.umount(mount_point) {
        log::warn!("cannot unmount the provisioning media: {e}");
        return;
    }
    match os.eject(device) {
        Ok(()) => {}
        Err(crate::os::OsError::Run(e)) if e.is_not_found() => {
            log::warn!("eject is not installed; the provisioning media stays in the drive")
        }
        Err(e) => log::warn!("cannot eject the provisioning media: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Config;
    use crate::os::{for_env, Distro, Env, Flavour, Output, RecordingRunner, RunError};
    use std::rc::Rc;

    fn setup(flavour: Flavour) -> (tempfile::TempDir, Rc<RecordingRunner>, Box<dyn OsUtil>) {
        let root = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let env = Env {
            root: root.path().to_path_buf(),
            runner: runner.clone(),
            config: Config::default(),
            distro: Distro {
                id: "x".into(),
                version: "1".into(),
                flavour,
            },
        };
        (root, runner, for_env(env))
    }

    fn fast() -> MountRetry {
        MountRetry {
            tries: 3,
            delay: Duration::from_millis(1),
        }
    }

    #[test]
    fn device_names() {
        for ok in ["sr0", "sr12", "hdc", "hdz", "cdrom", "cdrom0", "cd0"] {
            assert!(is_dvd_name(ok), "{ok}");
        }
        for no in [
            "sda", "hda", "hdb", "sr", "cd", "cdx", "srx", "hdaa", "loop0",
        ] {
            assert!(!is_dvd_name(no), "{no}");
        }
    }

    #[test]
    fn mounts_reads_unmounts_and_ejects() {
        let (root, runner, os) = setup(Flavour::Debian);
        let p = root.path().join("sys/block/sr0/device");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("type"), "5\n").unwrap();
        let mp = root.path().join("mnt/cdrom/secure");
        // The recording runner does not mount: put the file where mount would.
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("ovf-env.xml"), "<Environment/>").unwrap();
        let text = read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap();
        assert_eq!(text, "<Environment/>");
        assert_eq!(
            runner.lines(),
            [
                format!("mount -t udf,iso9660 -o ro /dev/sr0 {}", mp.display()),
                format!("umount {}", mp.display()),
                "eject /dev/sr0".to_string()
            ]
        );
    }

    #[test]
    fn retries_then_fails_with_the_mount_error() {
        let (root, runner, os) = setup(Flavour::Default);
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/sr0"), "").unwrap();
        runner.respond(|c| {
            (c.program == "mount").then(|| {
                Ok(Output::failed(
                    32,
                    "mount: /mnt: unknown filesystem type 'udf'",
                ))
            })
        });
        let mp = root.path().join("mnt");
        let err = read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap_err();
        assert!(
            err.starts_with("cannot mount /dev/sr0: `mount -t udf,iso9660 -o ro /dev/sr0 "),
            "{err}"
        );
        assert!(
            err.ends_with("failed with exit code 32: mount: /mnt: unknown filesystem type 'udf'"),
            "{err}"
        );
        assert_eq!(runner.lines().len(), 3);
    }

    #[test]
    fn missing_eject_is_only_a_warning_and_no_drive_is_an_error() {
        let (root, runner, os) = setup(Flavour::FreeBsd);
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        let mp = root.path().join("mnt");
        assert_eq!(
            read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap_err(),
            "no provisioning media (DVD drive) found"
        );
        std::fs::write(root.path().join("dev/cd0"), "").unwrap();
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("ovf-env.xml"), "x").unwrap();
        runner.respond(|c| {
            (c.program == "cdcontrol").then(|| {
                Err(RunError::Spawn {
                    cmd: "cdcontrol".into(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            })
        });
        assert_eq!(read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap(), "x");
    }

    #[test]
    fn already_mounted_media_is_read_in_place() {
        let (root, runner, os) = setup(Flavour::Default);
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/sr0"), "").unwrap();
        let elsewhere = root.path().join("media/cdrom");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("ovf-env.xml"), "doc").unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/mounts"),
            format!("/dev/sr0 {} udf ro 0 0\n", elsewhere.display()),
        )
        .unwrap();
        assert_eq!(
            read_ovf_env(&*os, &root.path().join("mnt"), fast(), &SystemClock).unwrap(),
            "doc"
        );
        assert!(runner.lines().is_empty());
    }

    #[test]
    fn oversized_document_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ovf-env.xml"),
            vec![b'x'; (MAX_OVF_BYTES + 1) as usize],
        )
        .unwrap();
        assert!(read_document(dir.path())
            .unwrap_err()
            .contains("more than an ovf-env.xml can be"));
    }
}
