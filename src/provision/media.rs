//! The provisioning media: Azure attaches a small UDF/ISO "DVD" holding
//! `ovf-env.xml` (§8.1). Find it, mount it read-only (and nodev, nosuid,
//! noexec) with the system's mount(8) as waagent does, read the document,
//! unmount. It is ejected only once provisioning is recorded as done
//! ([`eject`]): a daemon killed before that reads the document again, and
//! the password is never kept on disk in the meantime.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::os::{Background, Cmd, OsUtil, Poll};

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

/// What was read from the media.
pub struct Media {
    /// ovf-env.xml's text.
    pub text: String,
    /// The drive it came from, to [`eject`] once provisioning is recorded;
    /// `None` when the media was already mounted by someone else (it is
    /// left as it was found).
    pub device: Option<PathBuf>,
    /// Its `umount`, running; to be over before the eject.
    pub unmounting: Option<Background>,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("device", &self.device)
            .field(
                "unmounting",
                &self.unmounting.as_ref().map(Background::command),
            )
            .finish_non_exhaustive()
    }
}

/// Waits (up to its deadline) for the media's `umount` started by
/// [`MediaRead`] to finish; a failure is a warning.
pub fn finish_unmount(mut child: Background, clock: &dyn Clock) {
    while child.poll(clock.now()) == Poll::Running {
        let until = child.deadline();
        if !crate::os::background::wait_any(&[&child], clock, until) {
            return;
        }
    }
    if let Some(Err(e)) = child.result() {
        log::warn!("cannot unmount the provisioning media: {e}");
    }
}

/// The media being read in the background, so that the daemon asks the
/// fabric for its goal state while the mount runs (tens of milliseconds of
/// mount(8) and the file system driver, the longest step before the goal
/// state). Each drive gets `retry.tries` mounts `retry.delay` apart, each
/// mount being the flavour's commands tried in turn; the first drive that
/// mounts is read, and unmounted in the background. A drive already
/// mounted elsewhere is read in place and left so; one that a killed
/// daemon left mounted at our mount point is read there and unmounted as
/// ours; either, not readable, is a failed try. [`poll`](Self::poll)
/// moves it on and says when it is over; nothing in it blocks.
pub struct MediaRead {
    mount_point: PathBuf,
    retry: MountRetry,
    devices: Vec<PathBuf>,
    /// The drive being tried, in `devices`.
    device: usize,
    /// Mounts tried on that drive so far.
    attempt: u32,
    step: Step,
    /// Why the last mount failed: the error once every drive has failed.
    last_err: String,
}

enum Step {
    /// The next mount starts at this time (or the next drive, or the end,
    /// once a drive has had all its tries).
    Pause(Instant),
    /// A mount: `child` running, or about to start the next of `rest`.
    Mounting {
        child: Option<Box<Background>>,
        rest: VecDeque<Cmd>,
    },
    /// The result has been handed out.
    Over,
}

impl MediaRead {
    /// Finds the drives; the mount point is made and the first mount
    /// started by the first [`poll`](Self::poll).
    pub fn start(
        os: &dyn OsUtil,
        mount_point: &Path,
        retry: MountRetry,
        now: Instant,
    ) -> Result<Self, String> {
        let devices = candidate_devices(os);
        if devices.is_empty() {
            return Err("no provisioning media (DVD drive) found".into());
        }
        Ok(MediaRead {
            mount_point: mount_point.to_path_buf(),
            retry,
            devices,
            device: 0,
            attempt: 0,
            step: Step::Pause(now),
            last_err: String::new(),
        })
    }

    /// Does what can be done at `now` (start a mount, look at the running
    /// one, read the document); the outcome once there is one (it is given
    /// once), else `None`.
    pub fn poll(&mut self, os: &dyn OsUtil, now: Instant) -> Option<Result<Media, String>> {
        loop {
            match std::mem::replace(&mut self.step, Step::Over) {
                Step::Over => return None,
                Step::Pause(at) if now < at => {
                    self.step = Step::Pause(at);
                    return None;
                }
                Step::Pause(_) => {
                    let Some(device) = self.devices.get(self.device) else {
                        return Some(Err(std::mem::take(&mut self.last_err)));
                    };
                    if let Some(mp) = existing_mount(os, device) {
                        // At our mount point, an agent killed while its
                        // mount ran, or before its umount, left it: ours to
                        // read, unmount and eject. Elsewhere it is read in
                        // place and left as it is.
                        let ours = mp == self.mount_point;
                        log::info!(
                            "provisioning media {} is {} mounted at {}",
                            device.display(),
                            if ours { "still" } else { "already" },
                            mp.display()
                        );
                        self.attempt += 1;
                        match read_document(&mp) {
                            Ok(text) if ours => return Some(self.mounted(os, Ok(text), now)),
                            Ok(text) => {
                                return Some(Ok(Media {
                                    text,
                                    device: None,
                                    unmounting: None,
                                }))
                            }
                            // Not readable (yet: its mount may still be
                            // going on) is a failed try.
                            Err(e) => self.last_err = e,
                        }
                        let rest = VecDeque::new();
                        self.step = Step::Mounting { child: None, rest };
                        continue;
                    }
                    if self.attempt == 0 {
                        if let Err(e) = std::fs::create_dir_all(&self.mount_point) {
                            return Some(Err(format!(
                                "cannot create the mount point {}: {e}",
                                self.mount_point.display()
                            )));
                        }
                    }
                    self.attempt += 1;
                    let rest = os.dvd_mount_commands(device, &self.mount_point).into();
                    self.step = Step::Mounting { child: None, rest };
                }
                Step::Mounting {
                    child: Some(mut child),
                    rest,
                } => {
                    if child.poll(now) == Poll::Running {
                        self.step = Step::Mounting {
                            child: Some(child),
                            rest,
                        };
                        return None;
                    }
                    match child.result() {
                        Some(Ok(_)) => {
                            let doc = read_document(&self.mount_point);
                            return Some(self.mounted(os, doc, now));
                        }
                        Some(Err(e)) => self.failed(&e),
                        None => self.failed(&"no outcome"),
                    }
                    self.step = Step::Mounting { child: None, rest };
                }
                Step::Mounting {
                    child: None,
                    mut rest,
                } => match rest.pop_front() {
                    Some(cmd) => {
                        let child = os.start_captured(&cmd, now);
                        let child = child.map_err(|e| self.failed(&e)).ok().map(Box::new);
                        self.step = Step::Mounting { child, rest };
                    }
                    // This mount failed: again after a pause, or the next drive.
                    None if self.attempt < self.retry.tries.max(1) => {
                        log::warn!("{}; trying again in {:?}", self.last_err, self.retry.delay);
                        self.step = Step::Pause(now + self.retry.delay);
                    }
                    None => {
                        self.device += 1;
                        self.attempt = 0;
                        self.step = Step::Pause(now);
                    }
                },
            }
        }
    }

    /// Waits until the running mount may have finished, the next one is
    /// due, or `until`; false if a stop was asked.
    pub fn wait(&self, clock: &dyn Clock, until: Instant) -> bool {
        match &self.step {
            Step::Mounting {
                child: Some(child), ..
            } => crate::os::background::wait_any(&[child], clock, until),
            Step::Pause(at) => clock.sleep((*at).min(until).saturating_duration_since(clock.now())),
            _ => true,
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        let device = self.devices[self.device].display();
        self.last_err = format!("cannot mount {device}: {e}");
    }

    /// Mounted at our mount point, and `doc` read from it: the umount
    /// started (read well; else it is unmounted at once). Only the eject,
    /// once `provisioned` is written, needs the umount to be over.
    fn mounted(
        &mut self,
        os: &dyn OsUtil,
        doc: Result<String, String>,
        now: Instant,
    ) -> Result<Media, String> {
        let mp = &self.mount_point;
        let unmounting = match &doc {
            Ok(_) => os.start_umount(mp, now).map(Some),
            Err(_) => os.umount(mp).map(|()| None),
        }
        .unwrap_or_else(|e| {
            log::warn!("cannot unmount the provisioning media: {e}");
            None
        });
        doc.map(|text| Media {
            text,
            device: Some(self.devices[self.device].clone()),
            unmounting,
        })
    }
}

/// ovf-env.xml, opened without following a symlink and read through the
/// descriptor that was checked: a regular file, at most [`MAX_OVF_BYTES`]
/// (non-blocking, so a FIFO on hostile media cannot hang the agent).
fn read_document(dir: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("ovf-env.xml");
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{} is a symbolic link; refused", path.display()),
            _ => fail(&e),
        })?;
    let md = file.metadata().map_err(|e| fail(&e))?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file; refused", path.display()));
    }
    if md.len() > MAX_OVF_BYTES {
        return Err(format!(
            "{} is {} bytes, more than an ovf-env.xml can be",
            path.display(),
            md.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_OVF_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&e))?;
    if bytes.len() as u64 > MAX_OVF_BYTES {
        return Err(format!(
            "{} grew past {MAX_OVF_BYTES} bytes while read",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Ejects the media; a failure (a missing `eject` binary included) is a
/// warning.
pub fn eject(os: &dyn OsUtil, device: &Path) {
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

    /// A [`MediaRead`] driven to its end on `clock`.
    fn read_ovf_env(
        os: &dyn OsUtil,
        mount_point: &Path,
        retry: MountRetry,
        clock: &dyn Clock,
    ) -> Result<Media, String> {
        let mut read = MediaRead::start(os, mount_point, retry, clock.now())?;
        loop {
            if let Some(outcome) = read.poll(os, clock.now()) {
                return outcome;
            }
            assert!(read.wait(clock, clock.now() + Duration::from_secs(1)));
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
    fn mounts_reads_and_unmounts_and_ejects_only_when_asked() {
        let (root, runner, os) = setup(Flavour::Debian);
        let p = root.path().join("sys/block/sr0/device");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("type"), "5\n").unwrap();
        let mp = root.path().join("mnt/cdrom/secure");
        // The recording runner does not mount: put the file where mount would.
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("ovf-env.xml"), "<Environment/>").unwrap();
        let media = read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap();
        assert_eq!(media.text, "<Environment/>");
        assert_eq!(
            runner.lines(),
            [
                format!(
                    "mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {}",
                    mp.display()
                ),
                format!("umount {}", mp.display()),
            ]
        );
        eject(&*os, media.device.as_deref().unwrap());
        assert_eq!(runner.lines().last().unwrap(), "eject /dev/sr0");
    }

    /// A drive for `setup`'s root, and the mount point with the document
    /// where mount(8) would put it (the recording runner mounts nothing).
    fn drive_and_document(root: &Path, dev: &str) -> PathBuf {
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev").join(dev), "").unwrap();
        let mp = root.join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("ovf-env.xml"), "<Environment/>").unwrap();
        mp
    }

    #[test]
    fn the_mount_runs_in_the_background_and_a_failed_one_waits_its_pause() {
        let (root, runner, os) = setup(Flavour::Default);
        let mp = drive_and_document(root.path(), "sr0");
        let clock = std::rc::Rc::new(crate::clock::VirtualClock::new());
        runner.push(
            "mount",
            Output::failed(32, "mount: no medium found on /dev/sr0"),
        );
        runner.takes(clock.clone(), |c| {
            (c.program == "mount").then_some(Duration::from_millis(30))
        });
        let retry = MountRetry {
            tries: 2,
            delay: Duration::from_secs(5),
        };
        let mut read = MediaRead::start(&*os, &mp, retry, clock.now()).unwrap();
        // Each poll returns at once: the mount is running, then the pause.
        assert!(read.poll(&*os, clock.now()).is_none());
        assert_eq!(runner.lines().len(), 1);
        assert!(read.wait(&*clock, clock.now() + Duration::from_secs(1)));
        assert!(read.poll(&*os, clock.now()).is_none());
        assert!(read.wait(&*clock, clock.now() + Duration::from_secs(1)));
        assert!(read.poll(&*os, clock.now()).is_none());
        assert_eq!(runner.lines().len(), 1, "the pause is not over");
        while read.poll(&*os, clock.now()).is_none() {
            assert!(read.wait(&*clock, clock.now() + Duration::from_secs(1)));
        }
        // 30 ms of the failed mount, 5 s of pause a second at a time, 30
        // ms of the second mount, which worked.
        let waits: Vec<f64> = clock
            .take_waits()
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        assert_eq!(waits, [0.03, 1.0, 1.0, 1.0, 1.0, 1.0, 0.03]);
        let mount = format!(
            "mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 {}",
            mp.display()
        );
        assert_eq!(
            runner.lines(),
            [mount.clone(), mount, format!("umount {}", mp.display())]
        );
        // Handed out once.
        assert!(read.poll(&*os, clock.now()).is_none());
    }

    #[test]
    fn media_a_killed_run_left_at_our_mount_point_is_read_unmounted_and_ejected() {
        let (root, runner, os) = setup(Flavour::Default);
        let mp = drive_and_document(root.path(), "sr0");
        let doc = mp.join("ovf-env.xml");
        std::fs::remove_file(&doc).unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/mounts"),
            format!("/dev/sr0 {} udf ro 0 0\n", mp.display()),
        )
        .unwrap();
        let clock = crate::clock::VirtualClock::new();
        let mut read = MediaRead::start(&*os, &mp, fast(), clock.now()).unwrap();
        // Its mount is still filling it: a failed try, then a pause.
        assert!(read.poll(&*os, clock.now()).is_none());
        std::fs::write(&doc, "<Environment/>").unwrap();
        assert!(read.wait(&clock, clock.now() + Duration::from_secs(1)));
        let media = read.poll(&*os, clock.now()).unwrap().unwrap();
        assert_eq!(media.text, "<Environment/>");
        // Not mounted again; unmounted, and to be ejected, as ours.
        assert_eq!(runner.lines(), [format!("umount {}", mp.display())]);
        assert!(media.unmounting.is_some());
        assert_eq!(media.device.as_deref(), Some(Path::new("/dev/sr0")));
    }

    #[test]
    fn freebsd_tries_udf_then_cd9660() {
        let (root, runner, os) = setup(Flavour::FreeBsd);
        let mp = drive_and_document(root.path(), "cd0");
        runner.push(
            "mount_udf",
            Output::failed(1, "mount_udf: /dev/cd0: Invalid argument"),
        );
        let media = read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap();
        assert_eq!(media.text, "<Environment/>");
        let mp = mp.display();
        assert_eq!(
            runner.lines(),
            [
                format!("mount_udf -o ro,nosuid,noexec /dev/cd0 {mp}"),
                format!("mount_cd9660 -o ro,nosuid,noexec /dev/cd0 {mp}"),
                format!("umount {mp}"),
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
            err.starts_with(
                "cannot mount /dev/sr0: `mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 "
            ),
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
        let media = read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap();
        assert_eq!(media.text, "x");
        eject(&*os, &media.device.unwrap());
        assert_eq!(
            runner.lines().last().unwrap(),
            "cdcontrol -f /dev/cd0 eject"
        );
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
        let media = read_ovf_env(&*os, &root.path().join("mnt"), fast(), &SystemClock).unwrap();
        assert_eq!((media.text.as_str(), media.device), ("doc", None));
        assert!(runner.lines().is_empty());
    }

    #[test]
    fn a_symlink_fifo_or_oversized_ovf_env_is_refused() {
        let (root, _runner, os) = setup(Flavour::Default);
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/sr0"), "").unwrap();
        let mp = root.path().join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        let doc = mp.join("ovf-env.xml");
        let secret = root.path().join("shadow");
        std::fs::write(&secret, "root:$6$secret").unwrap();
        std::os::unix::fs::symlink(&secret, &doc).unwrap();
        assert_eq!(
            read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap_err(),
            format!("{} is a symbolic link; refused", doc.display())
        );
        std::fs::remove_file(&doc).unwrap();
        nix::unistd::mkfifo(&doc, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_ovf_env(&*os, &mp, fast(), &SystemClock).unwrap_err(),
            format!("{} is not a regular file; refused", doc.display())
        );
        std::fs::remove_file(&doc).unwrap();
        std::fs::write(&doc, vec![b' '; (MAX_OVF_BYTES + 1) as usize]).unwrap();
        assert!(read_ovf_env(&*os, &mp, fast(), &SystemClock)
            .unwrap_err()
            .ends_with("bytes, more than an ovf-env.xml can be"));
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
