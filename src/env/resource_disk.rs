//! The resource disk (§19): Azure's temporary disk, partitioned, formatted
//! and mounted at `ResourceDisk.MountPoint`, with an optional swap file.
//!
//! The daemon calls [`activate`] at Boot. Every step looks before it acts,
//! so a second run, a reboot that kept the disk, or a daemon restart changes
//! nothing that is already right. A partition that holds a file system is
//! never reformatted: after a reboot on the same host the disk still has the
//! previous boot's files, and losing them is only acceptable when the
//! platform did it. The one exception is NTFS, which is how Azure delivers a
//! fresh resource disk (waagent formats over it too).
//!
//! What to do given what is there is decided by pure functions
//! (`decide_*`), tested apart from the commands that find out and act. One
//! file (over 600 lines) because activation is one ordered sequence — find,
//! partition, format, mount, swap — whose rules and actions read together;
//! the tests are in `resource_disk/tests.rs`.

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{MountEntry, OsError, OsUtil, PartitionTable, Probe};

/// The notice written at the top of the mounted disk.
pub const WARNING_FILE: &str = "DATALOSS_WARNING_README.txt";

/// The swap file, in the mount point.
pub const SWAP_FILE: &str = "swapfile";

/// The notice's text: waagent's message in our words.
pub const DATA_LOSS_WARNING: &str = "\
WARNING: THIS IS A TEMPORARY DISK.

Anything stored on this disk can be lost at any time, with no way to get it
back: the disk is wiped whenever the virtual machine is moved to another host,
resized, redeployed or stopped (deallocated), and after some host failures.

Do not keep personal data, application data or anything else you need on it.
Use it for scratch files, caches and swap only.

See http://msdn.microsoft.com/en-us/library/windowsazure/jj672979.aspx
";

const MIB: u64 = 1 << 20;

/// The largest disk an MBR partition table covers (2 TiB of 512-byte sectors).
const MBR_LIMIT: u64 = 1 << 41;

/// How the activation waits on the system; tests shorten it.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a new partition may take to appear in /dev (udev makes the
    /// node a moment after the kernel learns of it). Current waagent waits
    /// 5 × 5 s.
    pub partition_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partition_wait: Duration::from_secs(25),
        }
    }
}

/// The `ResourceDisk.*` options, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub filesystem: String,
    pub mount_point: PathBuf,
    pub mount_options: Option<String>,
    pub swap: SwapWanted,
}

/// What `ResourceDisk.EnableSwap`, `SwapSizeMB` and `EnableSwapEncryption` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapWanted {
    Off,
    /// Swap on with size 0: nothing to do (2.2.5 wedged here; §21 item 19).
    ZeroSize,
    File {
        bytes: u64,
        encrypted: bool,
    },
}

impl Settings {
    /// Checks the options before anything is touched; `os` says which
    /// file systems may be made here.
    pub fn from_config(c: &Config, os: &dyn OsUtil) -> Result<Settings, String> {
        let fs = c.resource_disk_filesystem.trim();
        let allowed = os.resource_disk_filesystems();
        if !allowed.contains(&fs) {
            return Err(format!(
                "ResourceDisk.Filesystem={fs:?} is not supported on {} (use one of {})",
                os.kernel_name(),
                allowed.join(", ")
            ));
        }
        let mp = &c.resource_disk_mount_point;
        let shown = mp.to_string_lossy();
        if !mp.is_absolute()
            || mp.parent().is_none()
            || mp
                .components()
                .any(|p| p == std::path::Component::ParentDir)
            || shown.contains(['\n', '\0'])
        {
            return Err(format!(
                "ResourceDisk.MountPoint={shown:?} must be an absolute path other than /"
            ));
        }
        let opts = c
            .resource_disk_mount_options
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty());
        if let Some(o) = opts {
            if o.starts_with('-') || o.contains(char::is_whitespace) || o.contains('\0') {
                return Err(format!(
                    "ResourceDisk.MountOptions={o:?} is not an option list"
                ));
            }
        }
        let swap = match (c.resource_disk_enable_swap, c.resource_disk_swap_size_mb) {
            (false, _) => SwapWanted::Off,
            (true, 0) => SwapWanted::ZeroSize,
            (true, mb) => SwapWanted::File {
                bytes: mb
                    .checked_mul(MIB)
                    .ok_or_else(|| format!("ResourceDisk.SwapSizeMB={mb} is too large"))?,
                encrypted: c.resource_disk_enable_swap_encryption,
            },
        };
        Ok(Settings {
            filesystem: fs.to_string(),
            mount_point: mp.clone(),
            mount_options: opts.map(str::to_string),
            swap,
        })
    }
}

// ----- decisions -----

/// Whether the disk needs a partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    UseExisting,
    Create(PartitionTable),
}

/// `disk` is what a probe of the whole disk found; `has_partition` whether
/// the system already knows its partition 1.
pub fn decide_partitioning(
    disk: &Probe,
    has_partition: bool,
    size: Option<u64>,
) -> Result<Partitioning, String> {
    if has_partition || disk.table.is_some() {
        return Ok(Partitioning::UseExisting);
    }
    if let Some(fs) = &disk.fs {
        return Err(format!(
            "the whole disk holds {fs} and no partition table; not partitioning over it"
        ));
    }
    // MBR, as Azure delivers the disk, unless it is too big for one.
    Ok(Partitioning::Create(
        if size.is_some_and(|s| s > MBR_LIMIT) {
            PartitionTable::Gpt
        } else {
            PartitionTable::Dos
        },
    ))
}

/// What to do with the partition's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formatting {
    /// Nothing there: make the configured file system.
    Make,
    /// Azure's NTFS: a fresh resource disk, format over it.
    ReplaceNtfs,
    /// A file system (or anything else) is there: mount it as it is.
    Keep(String),
}

pub fn decide_formatting(found: Option<&str>, wanted: &str) -> Formatting {
    match found {
        None => Formatting::Make,
        Some("ntfs") if wanted != "ntfs" => Formatting::ReplaceNtfs,
        Some(t) => Formatting::Keep(t.to_string()),
    }
}

/// The mount of `device`, given a mount table whose `/dev` sources are
/// already resolved to their real nodes.
pub fn mounted<'a>(mounts: &'a [MountEntry], device: &Path) -> Option<&'a MountEntry> {
    mounts.iter().find(|m| Path::new(&m.source) == device)
}

/// The swap file as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapFileState {
    Missing,
    Regular {
        size: u64,
        mode: u32,
    },
    /// A directory, a symlink, a device: not ours.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapPlan {
    Nothing,
    /// On, but readable by others: strip group and other bits.
    FixMode,
    TurnOn {
        fix_mode: bool,
    },
    Create,
    /// The wrong size: (turn off,) delete, create, turn on.
    Replace {
        turn_off: bool,
    },
    Refuse(String),
}

pub fn decide_swap(bytes: u64, file: SwapFileState, active: bool) -> SwapPlan {
    match file {
        SwapFileState::Other => {
            SwapPlan::Refuse("exists and is not a regular file; not touching it".into())
        }
        SwapFileState::Missing => SwapPlan::Create,
        SwapFileState::Regular { size, mode } if size == bytes => {
            let fix_mode = mode & 0o077 != 0;
            match (active, fix_mode) {
                (true, false) => SwapPlan::Nothing,
                (true, true) => SwapPlan::FixMode,
                (false, _) => SwapPlan::TurnOn { fix_mode },
            }
        }
        SwapFileState::Regular { .. } => SwapPlan::Replace { turn_off: active },
    }
}

// ----- what happened -----

/// What [`activate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub disk: PathBuf,
    pub partition: PathBuf,
    pub mount_point: PathBuf,
    pub filesystem: String,
    /// A partition table was written (the disk was blank).
    pub partitioned: bool,
    pub formatted: bool,
    /// Mounted by this run (false: it already was).
    pub mounted: bool,
    pub swap: SwapOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    Disabled,
    ZeroSize,
    AlreadyOn,
    TurnedOn,
    Created { bytes: u64 },
    Recreated { bytes: u64 },
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource disk {} ({}) on {}",
            self.partition.display(),
            self.filesystem,
            self.mount_point.display()
        )?;
        let done: Vec<&str> = [
            (self.partitioned, "partitioned"),
            (self.formatted, "formatted"),
            (self.mounted, "mounted"),
        ]
        .iter()
        .filter(|(d, _)| *d)
        .map(|(_, w)| *w)
        .collect();
        if done.is_empty() {
            f.write_str(": already mounted")?;
        } else {
            write!(f, ": {}", done.join(", "))?;
        }
        match self.swap {
            SwapOutcome::Disabled => Ok(()),
            SwapOutcome::ZeroSize => f.write_str("; swap enabled with SwapSizeMB=0: none"),
            SwapOutcome::AlreadyOn => f.write_str("; swap already on"),
            SwapOutcome::TurnedOn => f.write_str("; swap turned on"),
            SwapOutcome::Created { bytes } => write!(f, "; {} MiB swap created", bytes / MIB),
            SwapOutcome::Recreated { bytes } => {
                write!(f, "; swap file resized to {} MiB", bytes / MIB)
            }
        }
    }
}

/// The step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Settings,
    Find,
    Inspect,
    Partition,
    Format,
    Mount,
    Swap,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Settings => "checking the settings",
            Step::Find => "finding the disk",
            Step::Inspect => "inspecting",
            Step::Partition => "partitioning",
            Step::Format => "formatting",
            Step::Mount => "mounting",
            Step::Swap => "setting up swap in",
        })
    }
}

/// Why the resource disk is not (fully) active: the step, the device or
/// file it was about, and the cause.
#[derive(Debug)]
pub struct Error {
    pub step: Step,
    pub device: Option<PathBuf>,
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resource disk: {}", self.step)?;
        if let Some(d) = &self.device {
            write!(f, " {}", d.display())?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for Error {}

fn fail(step: Step, device: &Path, reason: impl fmt::Display) -> Error {
    Error {
        step,
        device: Some(device.to_path_buf()),
        reason: reason.to_string(),
    }
}

fn at(step: Step, device: &Path) -> impl FnOnce(OsError) -> Error + '_ {
    move |e| fail(step, device, e)
}

// ----- acting -----

/// Activates the resource disk per `ResourceDisk.*` (none when
/// `ResourceDisk.Format=n`). `device` overrides discovery (tests).
pub fn activate(os: &dyn OsUtil, device: Option<&Path>) -> Result<Option<Report>, Error> {
    activate_with(os, device, &Options::default())
}

pub fn activate_with(
    os: &dyn OsUtil,
    device: Option<&Path>,
    opts: &Options,
) -> Result<Option<Report>, Error> {
    let config = &os.env().config;
    if !config.resource_disk_format {
        return Ok(None);
    }
    let s = Settings::from_config(config, os).map_err(|reason| Error {
        step: Step::Settings,
        device: None,
        reason,
    })?;
    let disk = match device {
        Some(d) => os.env().canonical(d),
        None => os.resource_disk().map_err(|e| Error {
            step: Step::Find,
            device: None,
            reason: e.to_string(),
        })?,
    };
    activate_disk(os, &s, disk, opts).map(Some)
}

fn activate_disk(
    os: &dyn OsUtil,
    s: &Settings,
    disk: PathBuf,
    opts: &Options,
) -> Result<Report, Error> {
    let env = os.env();
    let mounts: Vec<MountEntry> = os
        .mounts()
        .map_err(at(Step::Inspect, &disk))?
        .into_iter()
        .map(|mut m| {
            if m.source.starts_with("/dev/") {
                m.source = env
                    .canonical(Path::new(&m.source))
                    .to_string_lossy()
                    .into_owned();
            }
            m
        })
        .collect();
    if let Some(m) = mounted(&mounts, &disk) {
        return Err(fail(
            Step::Inspect,
            &disk,
            format!(
                "the whole disk is mounted on {}; leaving it",
                m.target.display()
            ),
        ));
    }
    let known = os.first_partition(&disk);
    if let Some((part, m)) = known.as_ref().and_then(|p| Some((p, mounted(&mounts, p)?))) {
        if m.target != s.mount_point {
            log::info!(
                "resource disk {} is already mounted on {} (ResourceDisk.MountPoint is {}); using it there",
                part.display(),
                m.target.display(),
                s.mount_point.display()
            );
        }
        ensure_warning(&m.target);
        let swap = swap(os, s, &m.target, &m.fstype)?;
        return Ok(Report {
            disk: disk.clone(),
            partition: part.clone(),
            mount_point: m.target.clone(),
            filesystem: m.fstype.clone(),
            partitioned: false,
            formatted: false,
            mounted: false,
            swap,
        });
    }
    if let Some(m) = mounts.iter().find(|m| m.target == s.mount_point) {
        return Err(fail(
            Step::Mount,
            &disk,
            format!(
                "{} already has {} mounted on it",
                s.mount_point.display(),
                m.source
            ),
        ));
    }

    let disk_probe = os.probe(&disk).map_err(at(Step::Inspect, &disk))?;
    let plan = decide_partitioning(&disk_probe, known.is_some(), os.disk_size(&disk))
        .map_err(|r| fail(Step::Partition, &disk, r))?;
    let partitioned = if let Partitioning::Create(table) = plan {
        log::info!(
            "resource disk {} is blank: writing a {table:?} partition table",
            disk.display()
        );
        os.create_partition(&disk, table)
            .map_err(at(Step::Partition, &disk))?;
        true
    } else {
        false
    };
    let part = ensure_partition(os, &disk, opts)?;

    let formatting = if partitioned {
        Formatting::Make
    } else {
        let found = os.probe(&part).map_err(at(Step::Inspect, &part))?;
        decide_formatting(found.fs.as_deref(), &s.filesystem)
    };
    let (fstype, formatted) = match formatting {
        Formatting::Keep(t) => {
            if t != s.filesystem {
                log::warn!(
                    "resource disk {} holds {t}, not ResourceDisk.Filesystem={}; mounting it as it is",
                    part.display(),
                    s.filesystem
                );
            }
            (t, false)
        }
        Formatting::ReplaceNtfs => {
            if disk_probe.table.as_deref() == Some("dos") {
                if let Err(e) = os.set_linux_partition_type(&disk) {
                    log::warn!(
                        "resource disk {}: partition type not changed: {e}",
                        disk.display()
                    );
                }
            }
            os.mkfs(&part, &s.filesystem)
                .map_err(at(Step::Format, &part))?;
            (s.filesystem.clone(), true)
        }
        Formatting::Make => {
            os.mkfs(&part, &s.filesystem)
                .map_err(at(Step::Format, &part))?;
            (s.filesystem.clone(), true)
        }
    };

    if !s.mount_point.is_dir() {
        fs::create_dir_all(&s.mount_point)
            .and_then(|()| fs::set_permissions(&s.mount_point, Permissions::from_mode(0o755)))
            .map_err(|e| fail(Step::Mount, &s.mount_point, e))?;
    }
    os.mount(
        &part,
        &s.mount_point,
        Some(&fstype),
        s.mount_options.as_deref(),
    )
    .map_err(at(Step::Mount, &part))?;
    ensure_warning(&s.mount_point);
    let swap = swap(os, s, &s.mount_point, &fstype)?;
    Ok(Report {
        disk,
        partition: part,
        mount_point: s.mount_point.clone(),
        filesystem: fstype,
        partitioned,
        formatted,
        mounted: true,
        swap,
    })
}

/// Partition 1 of `disk`, made known to the kernel if need be, once its
/// node exists.
fn ensure_partition(os: &dyn OsUtil, disk: &Path, opts: &Options) -> Result<PathBuf, Error> {
    let part = match os.first_partition(disk) {
        Some(p) => p,
        None => {
            os.announce_partition(disk)
                .map_err(at(Step::Partition, disk))?;
            os.first_partition(disk).ok_or_else(|| {
                fail(
                    Step::Partition,
                    disk,
                    "the partition table has no partition 1",
                )
            })?
        }
    };
    let node = os.env().path(&part.to_string_lossy());
    let deadline = Instant::now() + opts.partition_wait;
    while !node.exists() {
        if Instant::now() >= deadline {
            return Err(fail(
                Step::Partition,
                &part,
                format!("the node did not appear within {:?}", opts.partition_wait),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(part)
}

/// Writes the data-loss notice unless it is already there as it should be.
/// A failure is only logged: the disk is usable without it.
fn ensure_warning(mount_point: &Path) {
    let p = mount_point.join(WARNING_FILE);
    if fs::read(&p).is_ok_and(|t| t == DATA_LOSS_WARNING.as_bytes()) {
        return;
    }
    if let Err(e) = crate::fsutil::write_atomic(&p, DATA_LOSS_WARNING.as_bytes(), 0o644) {
        log::warn!("cannot write {}: {e}", p.display());
    }
}

fn swap(
    os: &dyn OsUtil,
    s: &Settings,
    mount_point: &Path,
    fstype: &str,
) -> Result<SwapOutcome, Error> {
    let (bytes, encrypted) = match s.swap {
        SwapWanted::Off => return Ok(SwapOutcome::Disabled),
        SwapWanted::ZeroSize => {
            log::info!("ResourceDisk.EnableSwap=y with ResourceDisk.SwapSizeMB=0: no swap file");
            return Ok(SwapOutcome::ZeroSize);
        }
        SwapWanted::File { bytes, encrypted } => (bytes, encrypted),
    };
    let file = mount_point.join(SWAP_FILE);
    let active = os
        .active_swap_files()
        .map_err(at(Step::Swap, &file))?
        .contains(&file);
    let state = match fs::symlink_metadata(&file) {
        Ok(m) if m.file_type().is_file() => SwapFileState::Regular {
            size: m.len(),
            mode: m.permissions().mode() & 0o7777,
        },
        Ok(_) => SwapFileState::Other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SwapFileState::Missing,
        Err(e) => return Err(fail(Step::Swap, &file, e)),
    };
    let private = |f: &Path| {
        fs::set_permissions(f, Permissions::from_mode(0o600)).map_err(|e| fail(Step::Swap, f, e))
    };
    let turn_on = |f: &Path| {
        if encrypted {
            os.swap_on_encrypted(f)
        } else {
            os.swap_on(f)
        }
        .map_err(at(Step::Swap, f))
    };
    let btrfs = fstype == "btrfs";
    Ok(match decide_swap(bytes, state, active) {
        SwapPlan::Nothing => SwapOutcome::AlreadyOn,
        SwapPlan::FixMode => {
            private(&file)?;
            SwapOutcome::AlreadyOn
        }
        SwapPlan::TurnOn { fix_mode } => {
            if fix_mode {
                private(&file)?;
            }
            turn_on(&file)?;
            SwapOutcome::TurnedOn
        }
        SwapPlan::Create => {
            create_swap_file(os, &file, bytes, btrfs)?;
            turn_on(&file)?;
            SwapOutcome::Created { bytes }
        }
        SwapPlan::Replace { turn_off } => {
            if turn_off {
                os.swap_off(&file).map_err(at(Step::Swap, &file))?;
            }
            fs::remove_file(&file).map_err(|e| fail(Step::Swap, &file, e))?;
            create_swap_file(os, &file, bytes, btrfs)?;
            turn_on(&file)?;
            SwapOutcome::Recreated { bytes }
        }
        SwapPlan::Refuse(r) => return Err(fail(Step::Swap, &file, r)),
    })
}

/// Creates `file`, 0600 from the start, with `bytes` of zeros actually
/// written: swapon refuses files with holes, and preallocation
/// (`fallocate`) leaves unwritten extents some kernels refuse on xfs and
/// ext4, which is why waagent writes them with dd there too. A file left
/// half-written is removed.
fn create_swap_file(os: &dyn OsUtil, file: &Path, bytes: u64, btrfs: bool) -> Result<(), Error> {
    let err = |e: std::io::Error| fail(Step::Swap, file, e);
    // create_new: never through a symlink someone left in the way.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(err)?;
    let written = (|| {
        if btrfs {
            os.disable_copy_on_write(file)
                .map_err(at(Step::Swap, file))?;
        }
        f.set_permissions(Permissions::from_mode(0o600))
            .map_err(err)?;
        let chunk = vec![0u8; MIB as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MIB);
            f.write_all(&chunk[..n as usize]).map_err(err)?;
            left -= n;
        }
        f.sync_all().map_err(err)
    })();
    if written.is_err() {
        let _ = fs::remove_file(file);
    }
    written
}

#[cfg(test)]
mod tests;
