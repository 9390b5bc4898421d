//! The OS layer: every change the agent makes to the system goes through the
//! [`OsUtil`] trait.
//!
//! The trait's default methods are the generic Linux behaviour; each
//! [`Flavour`] is a thin struct overriding only what its distro does
//! differently (§18.2 of PROTOCOL.md). The flavour is picked at run
//! time from the detected [`Distro`], so every flavour — FreeBSD included —
//! compiles, and is tested, on Linux.
//!
//! Commands go through the [`CommandRunner`] in [`Env`], never through a
//! shell; fixed system paths (`/etc/passwd`, `/proc/net/route`, `/sys/block`)
//! are read under [`Env::root`], and paths that waagent makes configurable
//! (sudoers, sshd, password file) come from the [`Config`]. Tests point both
//! at a temporary directory and a [`RecordingRunner`].
//!
//! This file is long (over 700 lines) because the trait is one interface
//! that the flavours override piece by piece, and its default methods are
//! the generic behaviour they override; what is not the trait lives beside
//! it: `linux.rs` (file edits), `tables.rs` (the disk tables), `runner.rs`,
//! `distro.rs`, `flavours.rs`.

pub mod background;
mod distro;
pub mod ed25519;
mod flavours;
pub mod hostkeys;
mod linux;
pub mod runner;
mod tables;
#[cfg(test)]
pub mod testing;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use distro::{detect, from_os_release, Distro, Flavour};
pub use flavours::for_env;
pub use hostkeys::HostKeyJob;
/// Atomic replacement of a system file that keeps its mode and owner.
pub(crate) use linux::write_file;
pub use linux::{proc_route_default_gateway, PasswdEntry};
pub use runner::{
    Background, Cmd, CommandRunner, Output, Placement, Poll, RecordingRunner, RunError,
    SystemRunner,
};
pub(crate) use tables::{parse_blkid_export, parse_mount_table, parse_proc_swaps};
use tables::{sysfs_partition, vmbus_resource_block};

use crate::config::{Config, SshHostKeyType};

/// The service our packages install, on every distro (`waagent.service`,
/// rc.d `waagent`, `/etc/init.d/waagent`).
pub const SERVICE_NAME: &str = "waagent";

/// What every OS action needs: where the system is, how to run commands,
/// the configuration and the detected distro.
pub struct Env {
    /// Prefix for fixed system paths; `/` in production.
    pub root: PathBuf,
    pub runner: Rc<dyn CommandRunner>,
    pub config: Config,
    pub distro: Distro,
}

impl Env {
    /// The real system: root `/`, real commands, distro from `uname` and
    /// `/etc/os-release`.
    pub fn system(config: Config) -> Env {
        let root = PathBuf::from("/");
        let distro = detect_running(&root);
        Env {
            root,
            runner: Rc::new(SystemRunner),
            config,
            distro,
        }
    }

    /// `abs` (an absolute system path such as `/etc/passwd`) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// `abs` with every symlink resolved, as a path of the system (not under
    /// the root): `/dev/disk/azure/resource` becomes `/dev/sdb`. Unchanged
    /// when it cannot be resolved (it does not exist, or leads outside).
    pub fn canonical(&self, abs: &Path) -> PathBuf {
        let under = self.path(&abs.to_string_lossy());
        let (Ok(real), Ok(root)) = (
            std::fs::canonicalize(&under),
            std::fs::canonicalize(&self.root),
        ) else {
            return abs.to_path_buf();
        };
        match real.strip_prefix(&root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => abs.to_path_buf(),
        }
    }

    pub fn run_ok(&self, cmd: Cmd) -> Result<Output, OsError> {
        self.runner.run_ok(&cmd).map_err(OsError::Run)
    }
}

/// Detects the distro of the running system under `root`.
pub fn detect_running(root: &Path) -> Distro {
    let uts = nix::sys::utsname::uname().ok();
    let sysname = uts
        .as_ref()
        .map(|u| u.sysname().to_string_lossy().into_owned())
        .unwrap_or_default();
    let release = uts
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    detect(root, &sysname, &release)
}

/// The CPU architecture as the kernel names it (`uname -m`: `x86_64` or
/// `aarch64` on Linux, `amd64` or `arm64` on FreeBSD), which waagent logs at
/// start as its "CPU Arch" (Python's `platform.machine()`, §6.11). When uname
/// fails, the name of the architecture this agent was built for.
pub fn cpu_arch() -> String {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| built_for_machine().to_string())
}

/// `uname -m` on the target this binary was built for.
fn built_for_machine() -> &'static str {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("freebsd", "x86_64") => "amd64",
        ("freebsd", "aarch64") => "arm64",
        (_, arch) => arch,
    }
}

/// The init system that manages the agent's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    Systemd,
    SysV,
    /// FreeBSD rc.d.
    RcD,
}

/// Why a system action failed.
#[derive(Debug)]
pub enum OsError {
    Run(RunError),
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A value the action refuses (a user name that looks like an option, …).
    Invalid(String),
}

impl OsError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> OsError + '_ {
        move |source| OsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OsError::Run(e) => e.fmt(f),
            OsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            OsError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OsError {}

/// A value that goes to a command as a positional argument: never empty and
/// never mistakable for an option.
pub(crate) fn positional<'a>(what: &str, v: &'a str) -> Result<&'a str, OsError> {
    if v.is_empty() || v.starts_with('-') || v.contains('\0') || v.contains('\n') {
        return Err(OsError::Invalid(format!("refusing {what} {v:?}")));
    }
    Ok(v)
}

/// A host name every writer of the system's files checks, whoever gave it
/// (ovf-env.xml, the live host name): several of those files are sourced by
/// shells.
pub(crate) fn host_name(name: &str) -> Result<&str, OsError> {
    crate::names::check_host_name(name).map_err(OsError::Invalid)?;
    Ok(name)
}

/// One line of the mount table (`/proc/mounts`, FreeBSD `mount -p`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted, as the table shows it (`/dev/sdb1`, `tmpfs`).
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// What a look at a block device's first bytes found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// A file system or other content (`ext4`, `ntfs`, `swap`, `LVM2_member`).
    pub fs: Option<String>,
    /// A partition table on the device itself (`dos`/`gpt`; FreeBSD `MBR`/`GPT`).
    pub table: Option<String>,
}

/// The partition table the agent writes on a blank resource disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTable {
    /// MBR, what Azure delivers the disk with (up to 2 TiB).
    Dos,
    Gpt,
}

/// Every system action the agent performs. Default methods are generic Linux.
pub trait OsUtil {
    fn env(&self) -> &Env;
    fn flavour(&self) -> Flavour;

    // ----- the agent's own service -----

    fn init_system(&self) -> InitSystem {
        if self.env().path("/run/systemd/system").is_dir() {
            InitSystem::Systemd
        } else {
            InitSystem::SysV
        }
    }

    /// The command that enables a SysV init script at boot.
    fn sysv_enable(&self) -> Cmd {
        Cmd::new("update-rc.d").args([SERVICE_NAME, "defaults"])
    }

    /// `-register-service`: enable the agent's service at boot.
    fn register_service(&self) -> Result<(), OsError> {
        let cmd = match self.init_system() {
            InitSystem::Systemd => Cmd::new("systemctl").args(["enable", "waagent.service"]),
            InitSystem::SysV => self.sysv_enable(),
            InitSystem::RcD => Cmd::new("sysrc").arg("waagent_enable=YES"),
        };
        self.env().run_ok(cmd).map(drop)
    }

    /// Stops the agent's service (deprovisioning).
    fn stop_service(&self) -> Result<(), OsError> {
        let cmd = match self.init_system() {
            InitSystem::Systemd => Cmd::new("systemctl").args(["stop", "waagent.service"]),
            InitSystem::SysV => Cmd::new("service").args([SERVICE_NAME, "stop"]),
            InitSystem::RcD => Cmd::new("service").args([SERVICE_NAME, "onestop"]),
        };
        self.env().run_ok(cmd).map(drop)
    }

    // ----- users and passwords -----

    /// The `/etc/passwd` entry of `name`, if there is one.
    fn user(&self, name: &str) -> Result<Option<PasswdEntry>, OsError> {
        linux::find_user(&self.env().path("/etc/passwd"), name)
    }

    /// The UIDs of normal users: `UID_MIN`..=`UID_MAX` of `/etc/login.defs`
    /// (shadow's defaults, 1000 and 60000, when unset). Everything outside
    /// is an account of the system: root, daemons, `nobody` (65534),
    /// systemd's dynamic users (61184–65519).
    fn normal_uids(&self) -> RangeInclusive<u32> {
        let defs = self.env().path("/etc/login.defs");
        let min = linux::login_defs_number(&defs, "UID_MIN").unwrap_or(1000);
        let max = linux::login_defs_number(&defs, "UID_MAX").unwrap_or(60000);
        min..=max
    }

    /// True for a systemd dynamic user (`DynamicUser=yes`): a service's
    /// account that exists only while it runs, in no passwd file.
    fn is_dynamic_user(&self, name: &str) -> bool {
        self.env()
            .path("/run/systemd/dynamic-uid")
            .join(format!("direct:{name}"))
            .symlink_metadata()
            .is_ok()
    }

    /// True for an existing account whose UID lies outside
    /// [`normal_uids`](Self::normal_uids), and for a dynamic user: such an
    /// account is never provisioned (a sudoers line for `nobody` would make
    /// every daemon running as nobody root) unless
    /// `Provisioning.AllowResetSysUser`, and never deleted by
    /// `-deprovision+user`.
    fn is_system_user(&self, name: &str) -> Result<bool, OsError> {
        if self.is_dynamic_user(name) {
            return Ok(true);
        }
        let normal = self.normal_uids();
        Ok(self.user(name)?.is_some_and(|u| !normal.contains(&u.uid)))
    }

    fn create_user(&self, name: &str, expiration: Option<&str>) -> Result<(), OsError> {
        let mut cmd = Cmd::new("useradd").arg("-m");
        if let Some(e) = expiration {
            cmd = cmd.args(["-e", positional("expiration date", e)?]);
        }
        self.env()
            .run_ok(cmd.arg(positional("user name", name)?))
            .map(drop)
    }

    /// Sets a crypt(3) hash as the password. The hash goes through standard
    /// input, never the command line (which other users can read in /proc).
    fn set_password_hash(&self, name: &str, hash: &str) -> Result<(), OsError> {
        let line = format!("{}:{hash}\n", positional("user name", name)?);
        self.env()
            .run_ok(Cmd::new("chpasswd").arg("-e").stdin(line))
            .map(drop)
    }

    /// Deletes the account, and its home directory when `remove_home`.
    fn delete_user(&self, name: &str, remove_home: bool) -> Result<(), OsError> {
        let name = positional("user name", name)?;
        // userdel refuses a user that utmp says is logged in.
        linux::truncate_if_exists(&self.env().path("/var/run/utmp"))?;
        let cmd = match remove_home {
            true => Cmd::new("userdel").args(["-f", "-r", name]),
            false => Cmd::new("userdel").args(["-f", name]),
        };
        self.env().run_ok(cmd).map(drop)
    }

    /// Locks root's password in `OS.PasswordPath` (`Provisioning.DeleteRootPassword`).
    fn lock_root_password(&self) -> Result<(), OsError> {
        linux::lock_root_in_shadow(&self.env().config.password_path)
    }

    /// Gives `name` sudo rights in `{OS.SudoersDir}/waagent` (0440), once.
    fn add_sudoer(&self, name: &str, nopasswd: bool) -> Result<(), OsError> {
        linux::add_sudoer(&self.env().config.sudoers_dir, name, nopasswd)
    }

    fn remove_sudoer(&self, name: &str) -> Result<(), OsError> {
        linux::remove_sudoer(&self.env().config.sudoers_dir, name)
    }

    // ----- SSH -----

    /// The command that makes sshd pick up a changed configuration or new
    /// host keys; `None` where nothing needs to run.
    fn restart_sshd_cmd(&self) -> Option<Cmd> {
        Some(match self.init_system() {
            InitSystem::Systemd => Cmd::new("systemctl").args(["try-reload-or-restart", "sshd"]),
            _ => Cmd::new("service").args(["sshd", "restart"]),
        })
    }

    /// Makes sshd pick up a changed configuration or new host keys.
    fn restart_sshd(&self) -> Result<(), OsError> {
        match self.restart_sshd_cmd() {
            Some(cmd) => self.env().run_ok(cmd).map(drop),
            None => Ok(()),
        }
    }

    /// Starts [`restart_sshd`](Self::restart_sshd)'s command in the
    /// background (`None`: nothing to run); `now` is the daemon's clock.
    fn start_restart_sshd(&self, now: std::time::Instant) -> Result<Option<Background>, OsError> {
        let Some(cmd) = self.restart_sshd_cmd() else {
            return Ok(None);
        };
        self.env()
            .runner
            .start_captured(&cmd, now + cmd.timeout)
            .map(Some)
            .map_err(OsError::Run)
    }

    /// Starts making new SSH host keys of `kind` in the background (one
    /// `ssh-keygen` per type, into a private directory in `OS.SshDir`; see
    /// [`hostkeys`]); nothing in `OS.SshDir` changes until
    /// [`install_ssh_host_keys`](Self::install_ssh_host_keys). `host` is the
    /// host name the keys' comment names; `now` is the daemon's clock.
    fn start_ssh_host_keys(
        &self,
        kind: SshHostKeyType,
        host: &str,
        now: std::time::Instant,
    ) -> Result<HostKeyJob, OsError> {
        let env = self.env();
        let comment = format!("root@{}", host_name(host)?);
        HostKeyJob::start(&*env.runner, &env.config.ssh_dir, kind, &comment, now)
    }

    /// Replaces the SSH host keys in `OS.SshDir` with the ones `job` made
    /// (all of them, or none when one failed: the old keys then stay).
    fn install_ssh_host_keys(&self, job: HostKeyJob) -> Result<(), OsError> {
        job.install(&self.env().config.ssh_dir)
    }

    /// Removes what a daemon killed while making host keys left in
    /// `OS.SshDir` (when no new keys are to be made).
    fn discard_ssh_host_key_work(&self) {
        hostkeys::remove_stale(&self.env().config.ssh_dir)
    }

    // ----- host name -----

    /// Sets the host name now and for the next boot.
    fn set_hostname(&self, name: &str) -> Result<(), OsError> {
        let name = host_name(name)?;
        linux::write_file(
            &self.env().path("/etc/hostname"),
            &format!("{name}\n"),
            0o644,
        )?;
        self.env().run_ok(Cmd::new("hostname").arg(name)).map(drop)
    }

    /// Makes the DHCP client send `name`, so Azure DNS learns it.
    fn set_dhcp_hostname(&self, name: &str, _iface: &str) -> Result<(), OsError> {
        linux::dhclient_send_host_name(&self.env().path("/etc/dhcp/dhclient.conf"), name)
    }

    /// Re-runs DHCP on `iface` so the new name reaches Azure DNS, through the
    /// network manager in charge rather than an ifdown/ifup bounce.
    fn publish_hostname(&self, iface: &str) -> Result<(), OsError> {
        let iface = positional("interface", iface)?;
        let env = self.env();
        let cmd = if env.path("/run/systemd/netif").is_dir() {
            Cmd::new("networkctl").args(["reconfigure", iface])
        } else if env.path("/run/NetworkManager").is_dir() {
            Cmd::new("nmcli").args(["device", "reapply", iface])
        } else {
            Cmd::new("dhclient").args(["-1", "-nw", iface])
        };
        env.run_ok(cmd).map(drop)
    }

    /// The host name the kernel has now: gethostname(2) on the real
    /// system (one uname call: the status asks on every upload); under a
    /// test root, its `/proc/sys/kernel/hostname`, so tests can set it.
    fn hostname(&self) -> Result<String, OsError> {
        let env = self.env();
        if env.root != Path::new("/") {
            if let Ok(name) = std::fs::read_to_string(env.path("/proc/sys/kernel/hostname")) {
                return Ok(name.trim_end_matches('\n').to_string());
            }
        }
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| OsError::Invalid(format!("cannot read the host name: {e}")))
    }

    /// The interface that carries the default route (the lowest metric),
    /// where DHCP runs and the host name is published.
    fn primary_interface(&self) -> Option<String> {
        linux::proc_route_default_interface(&self.env().path("/proc/net/route"))
    }

    /// The VM's own IPv4 address: the first of the primary interface's,
    /// where the load-balancer probe responder listens (§18.9).
    fn primary_ipv4(&self) -> Option<std::net::Ipv4Addr> {
        linux::interface_ipv4(&self.primary_interface()?)
    }

    /// True when cloud-init will provision this VM (`Provisioning.Agent=auto`
    /// hands over to it then, as waagent 2.2.45+ does).
    fn is_cloud_init_enabled(&self) -> bool {
        let env = self.env();
        let enabled = |cmd: Cmd| {
            env.runner
                .run(&cmd)
                .is_ok_and(|o| o.success() && o.stdout.trim() == "enabled")
        };
        enabled(Cmd::new("systemctl").args(["is-enabled", "cloud-init-local.service"]))
    }

    /// The VM's unique id: the SMBIOS system UUID with its first three
    /// groups byte-swapped, which is how IMDS and the portal show `vmId`.
    fn instance_id(&self) -> Option<String> {
        let raw =
            std::fs::read_to_string(self.env().path("/sys/class/dmi/id/product_uuid")).ok()?;
        linux::swap_uuid_groups(raw.trim())
    }

    // ----- DHCP and routes -----

    /// Lease files that may carry option 245 (the WireServer address).
    fn dhcp_lease_files(&self) -> Vec<PathBuf> {
        let env = self.env();
        let mut v = Vec::new();
        for (dir, prefix) in [
            ("/var/lib/dhcp", "dhclient"),
            ("/var/lib/dhclient", "dhclient"),
            ("/var/lib/NetworkManager", "dhclient-"),
            ("/run/systemd/netif/leases", ""),
        ] {
            v.extend(linux::files_with_prefix(&env.path(dir), prefix));
        }
        v
    }

    /// The DHCP client's process names, as `/proc/{pid}/comm` shows them
    /// (at most 15 bytes: networkd is `systemd-network`).
    fn dhcp_client_names(&self) -> &'static [&'static str] {
        &["dhclient"]
    }

    /// The DHCP client's PID; a change means it restarted and may have
    /// dropped the WireServer route. What `pidof` would say, read from
    /// /proc rather than spawned every period: the newest process with
    /// one of [`dhcp_client_names`](Self::dhcp_client_names).
    fn dhcp_client_pid(&self) -> Result<Option<u32>, OsError> {
        Ok(linux::newest_process_named(
            &self.env().path("/proc"),
            self.dhcp_client_names(),
        ))
    }

    /// When process `pid` started (clock ticks after boot, field 22 of
    /// `/proc/{pid}/stat`): with the PID, it names one process, so a PID
    /// reused by another is not mistaken for it. None: no such process, or
    /// no procfs to tell.
    fn process_start_time(&self, pid: u32) -> Option<u64> {
        linux::process_start_time(&self.env().path("/proc"), pid)
    }

    /// True when the main routing table has a route to exactly `dest`.
    fn has_route_to(&self, dest: Ipv4Addr) -> Result<bool, OsError> {
        linux::proc_route_has(&self.env().path("/proc/net/route"), dest)
    }

    /// Adds a host route to `dest` through `gateway`.
    fn add_route(&self, dest: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), OsError> {
        let cmd = Cmd::new("ip").args([
            "route",
            "add",
            &format!("{dest}/32"),
            "via",
            &gateway.to_string(),
        ]);
        self.env().run_ok(cmd).map(drop)
    }

    // ----- disks and mounts -----

    /// CD/DVD drives (the provisioning media), found by their SCSI device
    /// type (5, CD-ROM) in sysfs rather than by name.
    fn dvd_devices(&self) -> Vec<PathBuf> {
        linux::sysfs_cdroms(&self.env().path("/sys/block"))
    }

    /// The commands that mount the provisioning media, to be tried in turn
    /// until one succeeds: read-only, and nothing on it (a device node, a
    /// set-uid program, any program) is honoured.
    fn dvd_mount_commands(&self, device: &Path, mount_point: &Path) -> Vec<Cmd> {
        vec![mount_command(
            device,
            mount_point,
            Some("udf,iso9660"),
            Some("ro,nodev,nosuid,noexec"),
        )]
    }

    /// Mounts the provisioning media with the
    /// [`dvd_mount_commands`](Self::dvd_mount_commands); the last one's
    /// error if none succeeds.
    fn mount_dvd(&self, device: &Path, mount_point: &Path) -> Result<(), OsError> {
        let mut last = Err(OsError::Invalid(
            "no command mounts the provisioning media".into(),
        ));
        for cmd in self.dvd_mount_commands(device, mount_point) {
            last = self.env().run_ok(cmd).map(drop);
            if last.is_ok() {
                break;
            }
        }
        last
    }

    fn mount(
        &self,
        device: &Path,
        mount_point: &Path,
        fstype: Option<&str>,
        options: Option<&str>,
    ) -> Result<(), OsError> {
        let cmd = mount_command(device, mount_point, fstype, options);
        self.env().run_ok(cmd).map(drop)
    }

    fn umount(&self, mount_point: &Path) -> Result<(), OsError> {
        self.env()
            .run_ok(Cmd::new("umount").arg(mount_point.to_string_lossy()))
            .map(drop)
    }

    /// Starts [`umount`](Self::umount) in the background (tens of
    /// milliseconds of the kernel's, which nothing after it waits for but
    /// the eject); `now` is the daemon's clock.
    fn start_umount(
        &self,
        mount_point: &Path,
        now: std::time::Instant,
    ) -> Result<Background, OsError> {
        self.start_captured(&Cmd::new("umount").arg(mount_point.to_string_lossy()), now)
    }

    /// Starts `cmd` in the background, its output captured, to be killed
    /// past its timeout from `now` (the daemon's clock).
    fn start_captured(&self, cmd: &Cmd, now: std::time::Instant) -> Result<Background, OsError> {
        self.env()
            .runner
            .start_captured(cmd, now + cmd.timeout)
            .map_err(OsError::Run)
    }

    fn eject(&self, device: &Path) -> Result<(), OsError> {
        self.env()
            .run_ok(Cmd::new("eject").arg(device.to_string_lossy()))
            .map(drop)
    }

    /// Makes a file system of `fstype` (`ResourceDisk.Filesystem`) on `device`.
    fn mkfs(&self, device: &Path, fstype: &str) -> Result<(), OsError> {
        let fstype = positional("file system", fstype)?;
        let force = if fstype.starts_with("ext") {
            "-F"
        } else {
            "-f"
        };
        let cmd = Cmd::new(format!("mkfs.{fstype}"))
            .arg(force)
            .arg(device.to_string_lossy())
            .timeout(std::time::Duration::from_secs(600));
        self.env().run_ok(cmd).map(drop)
    }

    /// Turns a prepared file (0600, full size) into active swap.
    fn swap_on(&self, file: &Path) -> Result<(), OsError> {
        let f = file.to_string_lossy();
        self.env().run_ok(Cmd::new("mkswap").arg(f.clone()))?;
        self.env().run_ok(Cmd::new("swapon").arg(f)).map(drop)
    }

    // ----- the resource disk (§19) -----

    /// The resource disk: the Hyper-V storage device whose VMBus id is
    /// `{00000000-0001-…}` (IDE port 1, what udev names
    /// `/dev/disk/azure/resource`), else that link when udev made it.
    fn resource_disk(&self) -> Result<PathBuf, OsError> {
        let env = self.env();
        if let Some(name) = vmbus_resource_block(&env.path("/sys/bus/vmbus/devices")) {
            return Ok(Path::new("/dev").join(name));
        }
        let link = Path::new("/dev/disk/azure/resource");
        if env.path("/dev/disk/azure/resource").exists() {
            return Ok(env.canonical(link));
        }
        Err(OsError::Invalid(
            "no resource disk: no VMBus device 00000000-0001-… has a block device, and /dev/disk/azure/resource does not exist".into(),
        ))
    }

    /// The mount table.
    fn mounts(&self) -> Result<Vec<MountEntry>, OsError> {
        let p = self.env().path("/proc/mounts");
        let text = std::fs::read_to_string(&p).map_err(OsError::io(&p))?;
        Ok(parse_mount_table(&text))
    }

    /// What `device` holds, by a low-level probe (`blkid -p`: the device's
    /// bytes, never blkid's cache, which can be stale after a mkfs).
    fn probe(&self, device: &Path) -> Result<Probe, OsError> {
        let env = self.env();
        if !env.path(&device.to_string_lossy()).exists() {
            return Err(OsError::Invalid(format!(
                "{} does not exist",
                device.display()
            )));
        }
        let cmd = Cmd::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(positional("device", &device.to_string_lossy())?);
        let out = env.runner.run(&cmd).map_err(OsError::Run)?;
        match out.code {
            // 2: nothing recognised (a blank device).
            0 | 2 => Ok(parse_blkid_export(&out.stdout)),
            _ => Err(OsError::Run(RunError::Failed {
                cmd: cmd.display(),
                output: out,
            })),
        }
    }

    /// The size of `disk` in bytes, if the system says.
    fn disk_size(&self, disk: &Path) -> Option<u64> {
        let name = disk.file_name()?.to_string_lossy().into_owned();
        let p = self.env().path(&format!("/sys/class/block/{name}/size"));
        let sectors: u64 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
        sectors.checked_mul(512)
    }

    /// Partition 1 of `disk` as the kernel knows it (sysfs names it as /dev
    /// does: `sdb1`, `nvme0n1p1`, `loop0p1`).
    fn first_partition(&self, disk: &Path) -> Option<PathBuf> {
        let name = disk.file_name()?.to_string_lossy().into_owned();
        sysfs_partition(&self.env().path(&format!("/sys/class/block/{name}")), 1)
            .map(|p| Path::new("/dev").join(p))
    }

    /// Writes a new partition table on a blank `disk` with one partition over
    /// all of it. sfdisk (util-linux, on every distro, scriptable through
    /// standard input) rather than parted, which minimal images lack.
    fn create_partition(&self, disk: &Path, table: PartitionTable) -> Result<(), OsError> {
        let script = match table {
            PartitionTable::Dos => "label: dos\ntype=83\n",
            // Linux file system data.
            PartitionTable::Gpt => "label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        };
        let cmd = Cmd::new("sfdisk")
            .arg("--quiet")
            .arg(positional("disk", &disk.to_string_lossy())?)
            .stdin(script);
        self.env().run_ok(cmd).map(drop)
    }

    /// Tells the kernel about partition 1 when re-reading the table did not
    /// (a kernel without that table type's parser, a disk busy elsewhere).
    fn announce_partition(&self, disk: &Path) -> Result<(), OsError> {
        let cmd = Cmd::new("partx")
            .args(["--add", "--nr", "1"])
            .arg(positional("disk", &disk.to_string_lossy())?);
        self.env().run_ok(cmd).map(drop)
    }

    /// Marks MBR partition 1 as Linux (83) after replacing the NTFS Azure
    /// put there. Only the type byte changes, so the kernel is not told
    /// (a re-read would drop the partition for a moment).
    fn set_linux_partition_type(&self, disk: &Path) -> Result<(), OsError> {
        let cmd = Cmd::new("sfdisk")
            .args(["--no-tell-kernel", "--part-type"])
            .arg(positional("disk", &disk.to_string_lossy())?)
            .args(["1", "83"]);
        self.env().run_ok(cmd).map(drop)
    }

    /// Makes a new, still empty file no-copy-on-write: btrfs swaps only to
    /// such files.
    fn disable_copy_on_write(&self, file: &Path) -> Result<(), OsError> {
        self.env()
            .run_ok(Cmd::new("chattr").arg("+C").arg(file.to_string_lossy()))
            .map(drop)
    }

    /// Files in use as swap now.
    fn active_swap_files(&self) -> Result<Vec<PathBuf>, OsError> {
        let p = self.env().path("/proc/swaps");
        let text = std::fs::read_to_string(&p).map_err(OsError::io(&p))?;
        Ok(parse_proc_swaps(&text))
    }

    /// Stops swapping to `file`.
    fn swap_off(&self, file: &Path) -> Result<(), OsError> {
        self.env()
            .run_ok(Cmd::new("swapoff").arg(file.to_string_lossy()))
            .map(drop)
    }

    /// Swap to `file` through a one-time random key
    /// (`ResourceDisk.EnableSwapEncryption`, FreeBSD's `geli onetime`).
    fn swap_on_encrypted(&self, _file: &Path) -> Result<(), OsError> {
        Err(OsError::Invalid(
            "ResourceDisk.EnableSwapEncryption is supported on FreeBSD only; no swap enabled"
                .into(),
        ))
    }

    /// The file systems `ResourceDisk.Filesystem` may name.
    fn resource_disk_filesystems(&self) -> &'static [&'static str] {
        &["ext3", "ext4", "xfs", "btrfs"]
    }

    // ----- distro facts: what the layers above ask instead of naming a flavour -----

    /// The kernel family, for messages (`Linux`, `FreeBSD`).
    fn kernel_name(&self) -> &'static str {
        "Linux"
    }

    /// How the kernel command line is set for the next boot
    /// (`-serialconsole`, `numa=off`).
    fn boot_loader(&self) -> BootLoader {
        BootLoader::Grub {
            var: "GRUB_CMDLINE_LINUX",
            regenerate: grub2_mkconfig(),
        }
    }

    /// Whether an old kernel (before 2.6.37) gets `numa=off` at boot
    /// (a Linux kernel matter).
    fn checks_numa(&self) -> bool {
        true
    }

    /// The command that loads a kernel module, if the agent loads any here.
    fn load_module_cmd(&self, module: &str) -> Option<Cmd> {
        Some(Cmd::new("modprobe").arg(module))
    }

    /// The sysctl that holds the disks' SCSI timeout, where there is one
    /// instead of `/sys/block/*/device/timeout`.
    fn scsi_timeout_sysctl(&self) -> Option<&'static str> {
        None
    }

    /// Where the systemd units the agent writes go (under the root); `None`
    /// without systemd.
    fn systemd_unit_dir(&self) -> Option<PathBuf> {
        Some(self.env().path("/lib/systemd/system"))
    }

    /// Whether the persistent-net udev rules are moved away (§15).
    fn moves_persistent_net_rules(&self) -> bool {
        true
    }

    /// Whether the agent may edit sshd_config (§9.1).
    fn sshd_config_writable(&self) -> bool {
        true
    }

    /// What 2.2.x's `Provisioning.Enabled=n` (with `Provisioning.Agent`
    /// unset) meant here: cloud-init provisions (true), or nobody (false).
    fn provisioning_disabled_means_cloud_init(&self) -> bool {
        false
    }

    /// Why the WireServer firewall (`OS.EnableFirewall`) cannot be set
    /// here, if it cannot.
    fn firewall_unsupported(&self) -> Option<&'static str> {
        None
    }

    /// Whether RDMA (`OS.EnableRDMA`) can be set up here at all.
    fn supports_rdma(&self) -> bool {
        true
    }

    /// Files `-deprovision` removes on this distro besides the common ones.
    fn deprovision_extra_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The default gateway with the lowest metric.
    fn default_gateway(&self) -> Option<Ipv4Addr> {
        let text = std::fs::read_to_string(self.env().path("/proc/net/route")).ok()?;
        proc_route_default_gateway(&text)
    }
}

/// How a distro sets the kernel command line for the next boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootLoader {
    /// GRUB 2's `/etc/default/grub`, the arguments in the shell variable
    /// `var`, regenerated by `regenerate` (grub legacy's `menu.lst` where
    /// that file is missing).
    Grub { var: &'static str, regenerate: Cmd },
    /// Grub legacy only (RHEL/CentOS 6), even where a stray
    /// `/etc/default/grub` exists.
    GrubLegacy,
    /// FreeBSD's `/boot/loader.conf`.
    LoaderConf,
    /// The agent cannot set it here; why.
    Unsupported(&'static str),
}

/// `mount [-t FSTYPE] [-o OPTIONS] DEVICE MOUNT_POINT`.
fn mount_command(
    device: &Path,
    mount_point: &Path,
    fstype: Option<&str>,
    options: Option<&str>,
) -> Cmd {
    let mut cmd = Cmd::new("mount");
    if let Some(t) = fstype {
        cmd = cmd.args(["-t", t]);
    }
    if let Some(o) = options {
        cmd = cmd.args(["-o", o]);
    }
    cmd.arg(device.to_string_lossy())
        .arg(mount_point.to_string_lossy())
}

/// `grub2-mkconfig`, writing where RHEL and SUSE boot from.
pub fn grub2_mkconfig() -> Cmd {
    Cmd::new("grub2-mkconfig").args(["-o", "/boot/grub2/grub.cfg"])
}

#[cfg(test)]
mod arch_tests {
    use super::*;

    /// The expected name is written out per target, so this checks what
    /// an arm64 VM is told: `make cross` runs it as aarch64 under
    /// qemu-user, whose uname reports the emulated CPU.
    #[test]
    fn cpu_arch_names_the_machine_the_agent_runs_on() {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        let want = "x86_64";
        #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
        let want = "aarch64";
        #[cfg(all(target_os = "freebsd", target_arch = "x86_64"))]
        let want = "amd64";
        #[cfg(all(target_os = "freebsd", target_arch = "aarch64"))]
        let want = "arm64";
        #[cfg(not(any(
            all(
                target_os = "linux",
                any(target_arch = "x86_64", target_arch = "aarch64")
            ),
            all(
                target_os = "freebsd",
                any(target_arch = "x86_64", target_arch = "aarch64")
            ),
        )))]
        let want = built_for_machine();
        assert_eq!(cpu_arch(), want);
        assert_eq!(built_for_machine(), want);
    }
}
