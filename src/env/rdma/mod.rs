//! RDMA on HPC sizes (§18.5 of the protocol notes): what waagent does for
//! `OS.EnableRDMA`, `OS.UpdateRdmaDriver` and `OS.CheckRdmaDriver`, done
//! without blocking the single-threaded daemon.
//!
//! Any of the three options asks for RDMA. The host tells the VM which kind
//! of RDMA it has through the Hyper-V KVP pool (`/var/lib/hyperv/.kvp_pool_0`):
//!
//! * **Network Direct** (the older HPC sizes): the pool holds
//!   `NdDriverVersion`. With `OS.CheckRdmaDriver` (on unless the file says
//!   `n`, as in waagent) the distro's driver package is checked against that
//!   version first ([`check_driver`]: CentOS/RHEL, SLES and Ubuntu only).
//!   Then the DAPL `dat.conf` gets the instance's RDMA address, the
//!   `hv_network_direct` module is loaded and, when it is older than 4.1,
//!   the address and MAC are written to `/dev/hvnd_rdma` once it appears;
//!   finally the interface with the RDMA MAC gets the address (/16).
//! * **SR-IOV InfiniBand** (no `NdDriverVersion`): the host either lists
//!   MAC/IP pairs in the pool's `IPoIB_Data`, each assigned to the IP-over-IB
//!   interface with that MAC, or the instance's RDMA address goes to the first
//!   `ib*` interface once an InfiniBand device exists.
//!
//! The instance's address and MAC come from SharedConfig
//! ([`RdmaAddress::from_shared_config`]); without them waagent configures
//! nothing, and neither does this module.
//!
//! waagent waits in place for the device (120 s) and the IPoIB interfaces
//! (60 s). Here [`RdmaSetup::poll`] never sleeps: it does what can be done now
//! and says what it waits for. Only the driver check runs package-manager
//! commands (each bounded by a 10-minute timeout) in the first poll; it
//! happens with `OS.CheckRdmaDriver` on a Network Direct host only.
//!
//! # Wiring (for the daemon)
//!
//! ```ignore
//! use waagent::env::rdma::{RdmaAddress, RdmaProgress, RdmaSetup};
//!
//! // Once, after provisioning, with the newest SharedConfig (waagent
//! // fetches it again at this point: RDMA changes need not bump the
//! // incarnation).
//! let address = RdmaAddress::from_shared_config(&shared_config).unwrap_or_else(|e| {
//!     log::error!("RDMA: {e}");
//!     None
//! });
//! let mut rdma = RdmaSetup::new(&config, address.as_ref());
//!
//! // Every few seconds in the steady state, until the answer is final:
//! match rdma.poll(os) {
//!     RdmaProgress::NotRequested => {}                     // final, nothing to log
//!     RdmaProgress::Waiting(why) => log::debug!("RDMA: {why}"), // poll again later
//!     RdmaProgress::Done(report) => {
//!         log::info!("RDMA: {report}");
//!         for w in &report.warnings {
//!             log::warn!("RDMA: {w}");
//!         }
//!     }
//!     RdmaProgress::Failed(e) => {
//!         log::error!("RDMA: {e}");
//!         for w in &rdma.report().warnings {
//!             log::warn!("RDMA: {w}");
//!         }
//!     }
//! }
//! ```
//!
//! Once final, `poll` returns the same answer again and touches nothing, so
//! calling it once too often is harmless; [`RdmaProgress::is_final`] says when
//! to stop. Every step is safe to repeat after a daemon restart: `dat.conf`
//! is rewritten only when it differs, and an address that is already on the
//! interface counts as assigned.
//!
//! Differences from waagent, all deliberate: interfaces are found in
//! `/sys/class/net` and configured with `ip` (`ip link set IF up`,
//! `ip addr add A/16 dev IF`) where waagent parses and runs `ifconfig`, which
//! minimal images lack; the kernel modules are read from `/proc/modules`
//! rather than `lsmod | grep`; a missing `/sys/class/infiniband` is waited
//! for like an empty one; values from SharedConfig and the KVP pool are
//! checked before they reach a file or a command, and the MAC goes to the
//! device in upper case whatever case SharedConfig used; waagent's fixed
//! sleeps around the KVP daemon check (CentOS) are not taken (the driver
//! check runs only when the pool already holds `NdDriverVersion`, so the
//! daemon has run); a failed package install (SUSE) ends the driver check
//! instead of being logged and followed by a lock; after a reboot request
//! the driver check stops; an IPoIB pair once assigned is not assigned
//! again on the next try.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{positional, Cmd, Distro, Env, Flavour, OsUtil, Output, RunError};
use crate::wire::docs::{DocError, SharedConfig};

/// The Hyper-V KVP pool the host writes (pool 0, "external" values).
pub const KVP_POOL_PATH: &str = "/var/lib/hyperv/.kvp_pool_0";
/// A record of the pool: a NUL-padded key, then a NUL-padded value.
pub const KVP_KEY_SIZE: usize = 512;
pub const KVP_VALUE_SIZE: usize = 2048;
/// The pool key whose value is the host's Network Direct version.
pub const ND_VERSION_KEY: &str = "NdDriverVersion";
/// The pool key listing IP-over-IB MAC/IP pairs on SR-IOV hosts.
pub const IPOIB_DATA_KEY: &str = "IPoIB_Data";

/// Where the DAPL configuration may live, tried in this order; the first
/// that exists is updated.
pub const DAT_CONF_PATHS: [&str; 3] = [
    "/etc/dat.conf",
    "/etc/rdma/dat.conf",
    "/usr/local/etc/dat.conf",
];
/// The Network Direct driver's control device (drivers before 4.1).
pub const RDMA_DEVICE: &str = "/dev/hvnd_rdma";
/// Non-empty once an (SR-IOV) InfiniBand device exists.
pub const INFINIBAND_DIR: &str = "/sys/class/infiniband";
/// The Network Direct kernel module (an alias on Ubuntu).
pub const DRIVER_MODULE: &str = "hv_network_direct";
/// Ubuntu's alias file pointing `hv_network_direct` at the versioned module.
pub const UBUNTU_MODPROBE_CONF: &str = "/etc/modprobe.d/vmbus-rdma.conf";
/// Every RDMA address is configured with this prefix length.
pub const PREFIX_LEN: u8 = 16;
/// How long `/dev/hvnd_rdma` and an InfiniBand device are waited for.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the IP-over-IB interfaces are waited for.
pub const IPOIB_TIMEOUT: Duration = Duration::from_secs(60);
/// A package manager may download and build (DKMS) for a while.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// The DAPL provider line whose address waagent rewrites; `"<addr> 0"` follows.
const DAT_CONF_ENTRY: &str = "ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"";
const MODPROBE_ALIAS: &str = "alias hv_network_direct hv_network_direct_";

// ----- the options -----

/// The RDMA options that are on; any one of them asks for RDMA.
pub fn requested_by(config: &Config) -> Vec<&'static str> {
    [
        ("OS.EnableRDMA", config.enable_rdma),
        ("OS.UpdateRdmaDriver", config.update_rdma_driver),
        ("OS.CheckRdmaDriver", config.check_rdma_driver),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect()
}

/// True when the configuration asks for RDMA.
pub fn is_requested(config: &Config) -> bool {
    !requested_by(config).is_empty()
}

/// `OS.CheckRdmaDriver` as waagent reads it when setting RDMA up: on unless
/// the file turns it off. (Its default of `n` counts only when deciding
/// whether RDMA is asked for at all, in [`requested_by`].)
pub fn checks_driver(config: &Config) -> bool {
    config.check_rdma_driver || !config.is_explicit("OS.CheckRdmaDriver")
}

// ----- the instance's endpoint -----

/// The instance's RDMA endpoint, from SharedConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaAddress {
    pub ipv4: Ipv4Addr,
    pub mac: [u8; 6],
}

impl RdmaAddress {
    /// `rdmaIPv4Address`/`rdmaMacAddress` of the VM's instance; `Ok(None)`
    /// when SharedConfig has neither (not an RDMA size).
    pub fn from_shared_config(sc: &SharedConfig) -> Result<Option<Self>, DocError> {
        Ok(sc.rdma()?.map(|(ipv4, mac)| RdmaAddress { ipv4, mac }))
    }

    /// The MAC as waagent writes it to the device: `00:15:5D:33:FF:1D`.
    pub fn mac_text(&self) -> String {
        mac_text(&self.mac, ":")
    }
}

impl fmt::Display for RdmaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (MAC {})", self.ipv4, self.mac_text())
    }
}

fn mac_text(mac: &[u8], sep: &str) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(sep)
}

// ----- errors and results -----

/// Why RDMA was not (fully) set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaError {
    /// Not possible on this system (FreeBSD), or no driver handler for this
    /// distro.
    Unsupported(String),
    /// SharedConfig gave this VM no RDMA address and MAC.
    NoAddress,
    /// A device or interface did not appear in time.
    TimedOut(String),
    /// A step failed: a file, a command, a value from the host.
    Failed(String),
}

impl fmt::Display for RdmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RdmaError::Unsupported(m) | RdmaError::TimedOut(m) | RdmaError::Failed(m) => {
                f.write_str(m)
            }
            RdmaError::NoAddress => f.write_str(
                "SharedConfig gives this VM no RDMA address (rdmaIPv4Address and rdmaMacAddress \
                 on its Instance): the RDMA interface was not configured",
            ),
        }
    }
}

impl std::error::Error for RdmaError {}

fn failed(m: impl Into<String>) -> RdmaError {
    RdmaError::Failed(m.into())
}

/// What the setup did, in order, and what went wrong without stopping it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdmaReport {
    /// `NdDriverVersion` from the KVP pool: `Some` on a Network Direct host,
    /// `None` on an SR-IOV one.
    pub nd_version: Option<String>,
    /// One line per step taken (or deliberately skipped).
    pub steps: Vec<String>,
    /// Problems that did not stop the setup: no KVP pool, a failed driver
    /// check (waagent carries on with the device after it too).
    pub warnings: Vec<String>,
    /// `shutdown -r now` was run to load a new driver.
    pub reboot_requested: bool,
}

impl fmt::Display for RdmaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.nd_version {
            Some(v) => write!(f, "Network Direct {v}: ")?,
            None => f.write_str("SR-IOV: ")?,
        }
        f.write_str(&self.steps.join("; "))?;
        if self.reboot_requested {
            f.write_str(" (reboot requested)")?;
        }
        Ok(())
    }
}

/// What one [`RdmaSetup::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaProgress {
    /// No RDMA option is on; nothing was touched.
    NotRequested,
    /// Waiting for the system (a device, an interface); poll again later.
    Waiting(String),
    Done(RdmaReport),
    Failed(RdmaError),
}

impl RdmaProgress {
    /// True for every answer but `Waiting`: polling again changes nothing.
    pub fn is_final(&self) -> bool {
        !matches!(self, RdmaProgress::Waiting(_))
    }
}

// ----- the setup, one poll at a time -----

/// RDMA setup as a state machine the daemon polls (see the module doc).
#[derive(Debug)]
pub struct RdmaSetup {
    requested: Vec<&'static str>,
    check_driver: bool,
    update_driver: bool,
    address: Option<RdmaAddress>,
    report: RdmaReport,
    phase: Phase,
}

#[derive(Debug, Clone)]
enum Phase {
    Start,
    /// Network Direct before 4.1: `/dev/hvnd_rdma` must appear.
    WaitDevice {
        since: Instant,
    },
    /// SR-IOV with `IPoIB_Data`: pairs not yet assigned.
    IpoibPairs {
        pending: Vec<(String, Ipv4Addr)>,
        since: Instant,
        last_error: Option<String>,
    },
    /// SR-IOV without `IPoIB_Data`: an InfiniBand device must appear…
    WaitInfiniband {
        since: Instant,
    },
    /// …then an `ib*` network interface.
    WaitIbInterface {
        since: Instant,
    },
    Over(RdmaProgress),
}

/// The next phase, or the end.
enum Next {
    Wait(Phase, String),
    Done,
}

impl RdmaSetup {
    /// `address`: the VM's endpoint from SharedConfig, if it has one.
    pub fn new(config: &Config, address: Option<&RdmaAddress>) -> Self {
        RdmaSetup {
            requested: requested_by(config),
            check_driver: checks_driver(config),
            update_driver: config.update_rdma_driver,
            address: address.copied(),
            report: RdmaReport::default(),
            phase: Phase::Start,
        }
    }

    /// What has been done so far (also after a failure).
    pub fn report(&self) -> &RdmaReport {
        &self.report
    }

    /// Does what can be done now; never sleeps.
    pub fn poll(&mut self, os: &dyn OsUtil) -> RdmaProgress {
        self.poll_at(os, Instant::now())
    }

    fn poll_at(&mut self, os: &dyn OsUtil, now: Instant) -> RdmaProgress {
        let result = match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::Over(p) => {
                self.phase = Phase::Over(p.clone());
                return p;
            }
            Phase::Start => {
                if self.requested.is_empty() {
                    self.phase = Phase::Over(RdmaProgress::NotRequested);
                    return RdmaProgress::NotRequested;
                }
                self.start(os, now)
            }
            Phase::WaitDevice { since } => self.wait_device(os.env(), now, since),
            Phase::IpoibPairs {
                pending,
                since,
                last_error,
            } => self.ipoib_pairs(os.env(), now, pending, since, last_error),
            Phase::WaitInfiniband { since } => self.wait_infiniband(os.env(), now, since),
            Phase::WaitIbInterface { since } => self.wait_ib_interface(os.env(), now, since),
        };
        let progress = match result {
            Ok(Next::Wait(phase, why)) => {
                self.phase = phase;
                return RdmaProgress::Waiting(why);
            }
            Ok(Next::Done) => RdmaProgress::Done(self.report.clone()),
            Err(e) => RdmaProgress::Failed(e),
        };
        self.phase = Phase::Over(progress.clone());
        progress
    }

    fn start(&mut self, os: &dyn OsUtil, now: Instant) -> Result<Next, RdmaError> {
        let env = os.env();
        if env.distro.flavour == Flavour::FreeBsd {
            return Err(RdmaError::Unsupported(format!(
                "RDMA is not supported on {} ({} set): nothing was changed",
                distro_name(&env.distro),
                self.requested.join(", ")
            )));
        }
        let pool = match read_kvp_pool(env) {
            Ok(p) => p,
            Err(e) => {
                self.report.warnings.push(e.to_string());
                Vec::new()
            }
        };
        let nd_version = kvp_lookup(&pool, ND_VERSION_KEY)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(v) = &nd_version {
            if !is_version_token(v) {
                return Err(failed(format!(
                    "{KVP_POOL_PATH}: {ND_VERSION_KEY} is not a version: {v:?}"
                )));
            }
        }
        self.report.nd_version = nd_version.clone();

        if let Some(v) = &nd_version {
            if self.check_driver {
                match check_driver(os, v, self.update_driver) {
                    Ok(d) => {
                        self.report.steps.push(format!("driver: {}", d.summary));
                        self.report.warnings.extend(d.warnings);
                        self.report.reboot_requested |= d.reboot_requested;
                    }
                    Err(e) => self.report.warnings.push(format!("driver check: {e}")),
                }
            } else {
                self.report
                    .steps
                    .push("driver check skipped (OS.CheckRdmaDriver=n)".into());
            }
        }

        let Some(address) = self.address else {
            return Err(RdmaError::NoAddress);
        };
        match nd_version {
            Some(_) => self.network_direct(env, now, address),
            None => match kvp_lookup(&pool, IPOIB_DATA_KEY) {
                Some(data) => {
                    let pairs = parse_ipoib_data(&data)?;
                    self.ipoib_pairs(env, now, pairs, now, None)
                }
                None => self.wait_infiniband(env, now, now),
            },
        }
    }

    fn network_direct(
        &mut self,
        env: &Env,
        now: Instant,
        address: RdmaAddress,
    ) -> Result<Next, RdmaError> {
        let (path, changed) = update_dat_conf(env, address.ipv4)?;
        self.report.steps.push(if changed {
            format!("{path}: address set to {}", address.ipv4)
        } else {
            format!("{path}: already as it should be")
        });
        if !self.check_driver {
            self.configure_interface(env, &address)?;
            return Ok(Next::Done);
        }
        let module = resolved_module(env);
        run_ok(env, Cmd::new("modprobe").arg(&module))
            .map_err(|e| failed(format!("cannot load the kernel module {module}: {e}")))?;
        self.report.steps.push(format!("module {module} loaded"));
        let out = run(env, Cmd::new("modinfo").arg(&module))?;
        let version = if out.success() {
            modinfo_version(&out.stdout)
        } else {
            self.report.warnings.push(format!(
                "`modinfo {module}` failed (exit code {}); assuming a driver before 4.1",
                out.code
            ));
            None
        };
        if let Some((a, b, c)) = version.filter(|&(a, b, _)| a > 4 || (a == 4 && b > 0)) {
            self.report
                .steps
                .push(format!("driver {a}.{b}.{c} needs no {RDMA_DEVICE}"));
            self.configure_interface(env, &address)?;
            return Ok(Next::Done);
        }
        self.wait_device(env, now, now)
    }

    fn wait_device(&mut self, env: &Env, now: Instant, since: Instant) -> Result<Next, RdmaError> {
        let Some(address) = self.address else {
            return Err(RdmaError::NoAddress);
        };
        if !env.path(RDMA_DEVICE).exists() {
            if now.saturating_duration_since(since) >= DEVICE_TIMEOUT {
                return Err(RdmaError::TimedOut(format!(
                    "{RDMA_DEVICE} did not appear within {} s",
                    DEVICE_TIMEOUT.as_secs()
                )));
            }
            return Ok(Next::Wait(
                Phase::WaitDevice { since },
                format!("waiting for {RDMA_DEVICE}"),
            ));
        }
        write_device_config(env, &address)?;
        self.report
            .steps
            .push(format!("{RDMA_DEVICE}: {}", device_config(&address)));
        self.configure_interface(env, &address)?;
        Ok(Next::Done)
    }

    fn configure_interface(&mut self, env: &Env, address: &RdmaAddress) -> Result<(), RdmaError> {
        let iface = interface_with_mac(env, address.mac).ok_or_else(|| {
            failed(format!(
                "no network interface has the RDMA MAC address {}",
                address.mac_text()
            ))
        })?;
        assign_address(env, &iface, address.ipv4)?;
        self.report
            .steps
            .push(format!("{iface}: {}/{PREFIX_LEN}", address.ipv4));
        Ok(())
    }

    fn ipoib_pairs(
        &mut self,
        env: &Env,
        now: Instant,
        mut pending: Vec<(String, Ipv4Addr)>,
        since: Instant,
        mut last_error: Option<String>,
    ) -> Result<Next, RdmaError> {
        for (name, address) in net_interfaces(env) {
            let Some(mac) = ipoib_mac(&name, &address) else {
                continue;
            };
            let Some(i) = pending
                .iter()
                .position(|(m, _)| m.eq_ignore_ascii_case(&mac))
            else {
                continue;
            };
            let ip = pending[i].1;
            match assign_address(env, &name, ip) {
                Ok(()) => {
                    self.report.steps.push(format!("{name}: {ip}/{PREFIX_LEN}"));
                    pending.remove(i);
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if pending.is_empty() {
            return Ok(Next::Done);
        }
        let missing: Vec<String> = pending
            .iter()
            .map(|(m, ip)| format!("{ip} (MAC {m})"))
            .collect();
        if now.saturating_duration_since(since) >= IPOIB_TIMEOUT {
            let mut m = format!(
                "IP-over-IB addresses not assigned within {} s: {}",
                IPOIB_TIMEOUT.as_secs(),
                missing.join(", ")
            );
            if let Some(e) = last_error {
                m.push_str(&format!("; last error: {e}"));
            }
            return Err(RdmaError::TimedOut(m));
        }
        Ok(Next::Wait(
            Phase::IpoibPairs {
                pending,
                since,
                last_error,
            },
            format!(
                "waiting for IP-over-IB interfaces for {}",
                missing.join(", ")
            ),
        ))
    }

    fn wait_infiniband(
        &mut self,
        env: &Env,
        now: Instant,
        since: Instant,
    ) -> Result<Next, RdmaError> {
        let any = fs::read_dir(env.path(INFINIBAND_DIR)).is_ok_and(|mut d| d.next().is_some());
        if any {
            return self.wait_ib_interface(env, now, now);
        }
        if now.saturating_duration_since(since) >= DEVICE_TIMEOUT {
            return Err(RdmaError::TimedOut(format!(
                "no InfiniBand device appeared in {INFINIBAND_DIR} within {} s",
                DEVICE_TIMEOUT.as_secs()
            )));
        }
        Ok(Next::Wait(
            Phase::WaitInfiniband { since },
            format!("waiting for an InfiniBand device in {INFINIBAND_DIR}"),
        ))
    }

    fn wait_ib_interface(
        &mut self,
        env: &Env,
        now: Instant,
        since: Instant,
    ) -> Result<Next, RdmaError> {
        let Some(address) = self.address else {
            return Err(RdmaError::NoAddress);
        };
        let ib = net_interfaces(env)
            .into_iter()
            .map(|(name, _)| name)
            .find(|n| n.len() > 2 && n.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("ib")));
        let Some(ib) = ib else {
            if now.saturating_duration_since(since) >= IPOIB_TIMEOUT {
                return Err(RdmaError::TimedOut(format!(
                    "no ib* network interface appeared within {} s",
                    IPOIB_TIMEOUT.as_secs()
                )));
            }
            return Ok(Next::Wait(
                Phase::WaitIbInterface { since },
                "waiting for an ib* network interface".into(),
            ));
        };
        assign_address(env, &ib, address.ipv4)?;
        self.report
            .steps
            .push(format!("{ib}: {}/{PREFIX_LEN}", address.ipv4));
        Ok(Next::Done)
    }
}

fn distro_name(d: &Distro) -> String {
    if d.version.is_empty() {
        d.id.clone()
    } else {
        format!("{} {}", d.id, d.version)
    }
}

/// A version as the host writes it (`142.0`): safe in a module name, a
/// file and a command line.
fn is_version_token(v: &str) -> bool {
    v.len() <= 64
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

// ----- the KVP pool -----

/// The whole KVP pool file (small: one record per key the host sets).
fn read_kvp_pool(env: &Env) -> Result<Vec<u8>, RdmaError> {
    let path = env.path(KVP_POOL_PATH);
    fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            failed(format!(
                "{KVP_POOL_PATH} does not exist: the kernel does not provide it or the \
                 KVP daemon is not running"
            ))
        } else {
            failed(format!("{KVP_POOL_PATH}: {e}"))
        }
    })
}

/// The value of `key` in KVP pool bytes: fixed-size records of a
/// [`KVP_KEY_SIZE`]-byte key and a [`KVP_VALUE_SIZE`]-byte value, each up
/// to its first NUL. A short last record counts as far as it goes, as long
/// as it has a value byte (waagent reads it so).
pub fn kvp_lookup(pool: &[u8], key: &str) -> Option<String> {
    let until_nul = |b: &[u8]| -> Vec<u8> { b.iter().copied().take_while(|&c| c != 0).collect() };
    let mut rest = pool;
    while !rest.is_empty() {
        let (k, after) = rest.split_at(rest.len().min(KVP_KEY_SIZE));
        let (v, next) = after.split_at(after.len().min(KVP_VALUE_SIZE));
        if v.is_empty() {
            break;
        }
        if until_nul(k) == key.as_bytes() {
            return Some(String::from_utf8_lossy(&until_nul(v)).into_owned());
        }
        rest = next;
    }
    None
}

/// The host's Network Direct version (`NdDriverVersion`), if it gave one.
pub fn nd_driver_version(env: &Env) -> Result<Option<String>, RdmaError> {
    Ok(kvp_lookup(&read_kvp_pool(env)?, ND_VERSION_KEY)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}

/// `IPoIB_Data`: `NUMPAIRS:<n>|<MAC>:<IPv4>|…`, MACs without separators.
/// The count must match the pairs that follow.
pub fn parse_ipoib_data(value: &str) -> Result<Vec<(String, Ipv4Addr)>, RdmaError> {
    let bad = |m: String| failed(format!("{IPOIB_DATA_KEY}: {m}"));
    let mut fields = value.split('|');
    let head = fields.next().unwrap_or_default();
    let count: usize = head
        .strip_prefix("NUMPAIRS:")
        .map(|n| {
            n.bytes()
                .take_while(u8::is_ascii_digit)
                .collect::<Vec<u8>>()
        })
        .filter(|d| !d.is_empty())
        .and_then(|d| String::from_utf8_lossy(&d).parse().ok())
        .ok_or_else(|| bad(format!("no pair count in {head:?}")))?;
    let pairs = fields
        .map(|f| {
            let (mac, rest) = f
                .split_once(':')
                .filter(|(m, _)| !m.is_empty())
                .ok_or_else(|| bad(format!("no MAC/IP pair in {f:?}")))?;
            let ip: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let ip = ip
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("no IPv4 address in {f:?}")))?;
            if !mac.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad(format!("not a MAC address: {mac:?}")));
            }
            Ok((mac.to_string(), ip))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.len() != count {
        return Err(bad(format!("says {count} pairs but lists {}", pairs.len())));
    }
    Ok(pairs)
}

// ----- DAPL configuration -----

/// Replaces, everywhere in `text`, the non-blank run after `prefix` (which
/// `after` must follow) by `value`; returns the new text and how many runs
/// were replaced.
fn replace_runs(text: &str, prefix: &str, after: &str, value: &str) -> (String, usize) {
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

// ----- network interfaces -----

/// Every interface in `/sys/class/net` with its `address` text, by name.
fn net_interfaces(env: &Env) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(env.path("/sys/class/net")) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let address = fs::read_to_string(e.path().join("address")).ok()?;
            Some((name, address.trim().to_string()))
        })
        .collect();
    v.sort();
    v
}

/// An Ethernet-style `aa:bb:cc:dd:ee:ff` address as bytes.
fn parse_colon_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// The interface whose address is `mac`; an `eth<N>` one first (the only
/// names waagent looks at), else the first by name.
pub fn interface_with_mac(env: &Env, mac: [u8; 6]) -> Option<String> {
    let matching: Vec<String> = net_interfaces(env)
        .into_iter()
        .filter(|(_, a)| parse_colon_mac(a) == Some(mac))
        .map(|(n, _)| n)
        .collect();
    let is_eth = |n: &&String| {
        n.strip_prefix("eth")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    matching
        .iter()
        .find(is_eth)
        .or_else(|| matching.first())
        .cloned()
}

/// The MAC (twelve upper-case hex digits) that `IPoIB_Data` gives for an
/// interface: an Ethernet address as it is; for an `ib*` interface's 20-byte
/// InfiniBand address, bytes 13–15 and 18–20 (its port GUID without the
/// two bytes inserted in the middle), as waagent reads it.
fn ipoib_mac(name: &str, address: &str) -> Option<String> {
    let parts: Vec<&str> = address.trim().split(':').collect();
    let two = |p: &&str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let is_ib = name.len() > 2 && name.starts_with("ib");
    let picked: Vec<&str> = if is_ib {
        if parts.len() < 9 || !parts[parts.len() - 8..].iter().all(two) {
            return None;
        }
        let g = &parts[parts.len() - 8..];
        vec![g[0], g[1], g[2], g[5], g[6], g[7]]
    } else {
        if parts.len() != 6 || !parts.iter().all(two) {
            return None;
        }
        parts
    };
    Some(picked.concat().to_ascii_uppercase())
}

/// Brings `iface` up and adds `ipv4/16` to it (`ip link set IF up`,
/// `ip addr add A/16 dev IF`). Exit code 2 (the address is there already)
/// counts as done, as it does for waagent.
pub fn assign_address(env: &Env, iface: &str, ipv4: Ipv4Addr) -> Result<(), RdmaError> {
    let iface = positional("interface", iface).map_err(|e| failed(e.to_string()))?;
    for cmd in [
        Cmd::new("ip").args(["link", "set", iface, "up"]),
        Cmd::new("ip").args(["addr", "add", &format!("{ipv4}/{PREFIX_LEN}"), "dev", iface]),
    ] {
        let out = run(env, cmd.clone())?;
        if !out.success() && out.code != 2 {
            return Err(failed(format!(
                "cannot set {ipv4}/{PREFIX_LEN} on {iface}: {}",
                RunError::Failed {
                    cmd: cmd.display(),
                    output: out
                }
            )));
        }
    }
    log::info!("RDMA: {iface}: {ipv4}/{PREFIX_LEN}");
    Ok(())
}

// ----- commands and modules -----

/// Runs `cmd`; only a command that could not run is an error here.
fn run(env: &Env, cmd: Cmd) -> Result<Output, RdmaError> {
    env.runner.run(&cmd).map_err(|e| failed(e.to_string()))
}

/// Runs `cmd`; a non-zero exit is an error too.
fn run_ok(env: &Env, cmd: Cmd) -> Result<Output, RdmaError> {
    env.run_ok(cmd).map_err(|e| failed(e.to_string()))
}

/// What `hv_network_direct` resolves to (`modprobe -R`: Ubuntu aliases it
/// to `hv_network_direct_<version>`); the plain name when that fails.
fn resolved_module(env: &Env) -> String {
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
fn modinfo_version(text: &str) -> Option<(u32, u32, u32)> {
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
fn driver_loaded(env: &Env) -> bool {
    fs::read_to_string(env.path("/proc/modules"))
        .is_ok_and(|t| t.lines().any(|l| l.starts_with(DRIVER_MODULE)))
}

/// `modprobe --first-time hv_network_direct`.
fn load_driver_module(env: &Env) -> bool {
    env.runner
        .run(&Cmd::new("modprobe").args(["--first-time", DRIVER_MODULE]))
        .is_ok_and(|o| o.success())
}

// ----- the driver check, per distro -----

/// What [`check_driver`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    pub summary: String,
    /// Steps that failed without stopping the check (a reboot that did not
    /// start, an old package that could not be erased).
    pub warnings: Vec<String>,
    pub reboot_requested: bool,
}

impl DriverReport {
    fn new(summary: impl Into<String>) -> Self {
        DriverReport {
            summary: summary.into(),
            ..Default::default()
        }
    }

    /// `shutdown -r now`: the Network Direct module cannot be unloaded, so
    /// a new one needs a reboot.
    fn reboot(mut self, env: &Env) -> Self {
        log::info!("RDMA: rebooting to load the new driver");
        match run_ok(env, Cmd::new("shutdown").args(["-r", "now"])) {
            Ok(_) => self.reboot_requested = true,
            Err(e) => self.warnings.push(format!("reboot failed: {e}")),
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverHandler {
    RedHat,
    Suse,
    Ubuntu,
}

/// The distros waagent has a driver handler for: CentOS and its RHEL
/// relatives, SLES (and SLE HPC) after 11, Ubuntu.
fn driver_handler(d: &Distro) -> Option<DriverHandler> {
    match d.flavour {
        Flavour::RedHat
            if ["rhel", "centos", "almalinux", "rocky", "cloudlinux"].contains(&d.id.as_str()) =>
        {
            Some(DriverHandler::RedHat)
        }
        Flavour::Suse
            if ["sles", "sle_hpc", "sle-hpc"].contains(&d.id.as_str())
                && numbers(&d.version).is_some_and(|v| v > vec![11]) =>
        {
            Some(DriverHandler::Suse)
        }
        Flavour::Ubuntu if d.id == "ubuntu" => Some(DriverHandler::Ubuntu),
        _ => None,
    }
}

/// Checks (and with the distro's means updates) the RDMA driver against the
/// host's Network Direct version `nd_version`. `update`:
/// `OS.UpdateRdmaDriver`, which only Ubuntu's kernel update looks at.
pub fn check_driver(
    os: &dyn OsUtil,
    nd_version: &str,
    update: bool,
) -> Result<DriverReport, RdmaError> {
    let env = os.env();
    match driver_handler(&env.distro) {
        Some(DriverHandler::RedHat) => redhat_driver(env, nd_version),
        Some(DriverHandler::Suse) => suse_driver(env, nd_version),
        Some(DriverHandler::Ubuntu) => ubuntu_driver(env, nd_version, update),
        None => Err(RdmaError::Unsupported(format!(
            "checking the RDMA driver is not supported on {} (only on CentOS/RHEL, SLES and \
             Ubuntu): the driver was left as it is",
            distro_name(&env.distro)
        ))),
    }
}

/// Dotted numbers (`5.4.0.1040`); `None` if a part is not a number.
fn numbers(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.trim().parse().ok()).collect()
}

// CentOS / RHEL: the packages come from the image's `msft-rdma-drivers`,
// which drops versioned RPMs in /opt/microsoft/rdma/rhel<major><minor>.

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

/// A package file `<name>-a.b.c.<fw>-YYYYMMDD.x86_64.rpm`.
fn is_fw_rpm(file: &str, name: &str, fw: &str) -> bool {
    fw_package(file, name, fw).is_some_and(|tail| {
        tail.get(..8)
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            && tail.get(8..).is_some_and(|r| r.starts_with(".x86_64.rpm"))
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

fn redhat_driver(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
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

// SLES 12 (SLE 15 passes the InfiniBand device through): a KMP matching the
// kernel flavour, from the repositories or from /opt/microsoft/rdma.

fn zypper(args: &[&str]) -> Cmd {
    Cmd::new("zypper")
        .args(args.iter().copied())
        .timeout(PACKAGE_TIMEOUT)
}

fn suse_driver(env: &Env, nd_version: &str) -> Result<DriverReport, RdmaError> {
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
                .filter(|n| n.ends_with(".rpm") && !n.ends_with(".src.rpm"))
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

// Ubuntu: the Azure kernel ships hv_network_direct_<version> modules; the
// alias picks the host's, and a newer kernel may bring a missing one.

fn ubuntu_driver(env: &Env, nd_version: &str, update: bool) -> Result<DriverReport, RdmaError> {
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

fn write_text(path: &Path, text: &str) -> Result<(), RdmaError> {
    crate::os::write_file(path, text, 0o644).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{for_env, RecordingRunner};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::rc::Rc;

    const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x33, 0xff, 0x1d];
    const IP: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 4);
    const ADDRESS: RdmaAddress = RdmaAddress { ipv4: IP, mac: MAC };

    const DAT_CONF: &str = "\
# DAT v2.0, v1.2 configuration file
ofa-v2-mlx4_0-1 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"mlx4_0 1\" \"\"
ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"ib0 0\" \"\"
ofa-v2-ib1 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"ib1 0\" \"\"
";

    /// A KVP pool file as hv_kvp_daemon writes it: fixed-size records,
    /// key and value NUL-padded.
    fn kvp_pool(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in pairs {
            assert!(k.len() < KVP_KEY_SIZE && v.len() < KVP_VALUE_SIZE);
            let mut key = k.as_bytes().to_vec();
            key.resize(KVP_KEY_SIZE, 0);
            let mut value = v.as_bytes().to_vec();
            value.resize(KVP_VALUE_SIZE, 0);
            out.extend(key);
            out.extend(value);
        }
        out
    }

    struct Fx {
        root: tempfile::TempDir,
        runner: Rc<RecordingRunner>,
    }

    fn fx() -> Fx {
        Fx {
            root: tempfile::tempdir().unwrap(),
            runner: Rc::new(RecordingRunner::new()),
        }
    }

    fn config(text: &str) -> Config {
        let (c, warnings) = Config::parse(text, Path::new("waagent.conf"));
        assert!(warnings.is_empty(), "{warnings:?}");
        c
    }

    impl Fx {
        fn path(&self, abs: &str) -> PathBuf {
            self.root.path().join(abs.trim_start_matches('/'))
        }

        fn write(&self, abs: &str, data: impl AsRef<[u8]>) {
            let p = self.path(abs);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }

        fn read(&self, abs: &str) -> String {
            fs::read_to_string(self.path(abs)).unwrap()
        }

        fn mode(&self, abs: &str) -> u32 {
            fs::metadata(self.path(abs)).unwrap().permissions().mode() & 0o7777
        }

        fn mkdir(&self, abs: &str) {
            fs::create_dir_all(self.path(abs)).unwrap();
        }

        fn nic(&self, name: &str, address: &str) {
            self.write(
                &format!("/sys/class/net/{name}/address"),
                format!("{address}\n"),
            );
        }

        fn kvp(&self, pairs: &[(&str, &str)]) {
            self.write(KVP_POOL_PATH, kvp_pool(pairs));
        }

        fn os(&self, id: &str, version: &str, flavour: Flavour) -> Box<dyn OsUtil> {
            self.os_with(id, version, flavour, Config::default())
        }

        fn os_with(
            &self,
            id: &str,
            version: &str,
            flavour: Flavour,
            config: Config,
        ) -> Box<dyn OsUtil> {
            for_env(Env {
                root: self.root.path().to_path_buf(),
                runner: self.runner.clone(),
                config,
                distro: Distro {
                    id: id.into(),
                    version: version.into(),
                    flavour,
                },
            })
        }

        /// Answers every command whose display starts with `prefix`.
        fn answer(&self, prefix: &'static str, out: Output) {
            self.runner.respond(move |c| {
                (c.display() == prefix || c.display().starts_with(&format!("{prefix} ")))
                    .then(|| Ok(out.clone()))
            });
        }

        fn lines(&self) -> Vec<String> {
            self.runner.lines()
        }

        /// No temporary file of an atomic write was left behind.
        fn no_temp_files(&self, dir: &str) {
            let left: Vec<_> = fs::read_dir(self.path(dir))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    fn done(p: RdmaProgress) -> RdmaReport {
        match p {
            RdmaProgress::Done(r) => r,
            other => panic!("not done: {other:?}"),
        }
    }

    fn failure(p: RdmaProgress) -> RdmaError {
        match p {
            RdmaProgress::Failed(e) => e,
            other => panic!("not failed: {other:?}"),
        }
    }

    // ----- options and address -----

    #[test]
    fn options_that_ask_for_rdma() {
        let c = Config::default();
        assert!(!is_requested(&c) && requested_by(&c).is_empty());
        let c = config("OS.EnableRDMA=y\nOS.CheckRdmaDriver=y\n");
        assert_eq!(
            requested_by(&c),
            vec!["OS.EnableRDMA", "OS.CheckRdmaDriver"]
        );
        assert!(is_requested(&config("OS.UpdateRdmaDriver=y\n")));
    }

    #[test]
    fn check_driver_is_on_unless_the_file_turns_it_off() {
        assert!(checks_driver(&config("OS.EnableRDMA=y\n")));
        assert!(checks_driver(&config("OS.CheckRdmaDriver=y\n")));
        assert!(!checks_driver(&config(
            "OS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n"
        )));
    }

    #[test]
    fn address_from_shared_config() {
        let sc = SharedConfig::parse(
            "<SharedConfig><Instances><Instance id=\"vm\" rdmaMacAddress=\"00155D33FF1D\" \
             rdmaIPv4Address=\"172.16.1.4\"/></Instances></SharedConfig>",
        )
        .unwrap();
        let a = RdmaAddress::from_shared_config(&sc).unwrap().unwrap();
        assert_eq!(a, ADDRESS);
        assert_eq!(a.mac_text(), "00:15:5D:33:FF:1D");
        assert_eq!(a.to_string(), "172.16.1.4 (MAC 00:15:5D:33:FF:1D)");
        let bad = SharedConfig::parse(
            "<SharedConfig><Instances><Instance id=\"vm\" rdmaMacAddress=\"nope\" \
             rdmaIPv4Address=\"172.16.1.4\"/></Instances></SharedConfig>",
        )
        .unwrap();
        assert!(RdmaAddress::from_shared_config(&bad).is_err());
        assert_eq!(
            RdmaAddress::from_shared_config(&SharedConfig::default()),
            Ok(None)
        );
    }

    // ----- KVP pool -----

    #[test]
    fn kvp_lookup_reads_fixed_size_records() {
        let pool = kvp_pool(&[
            ("HostName", "host-17"),
            ("NdDriverVersionX", "1.0"),
            ("NdDriverVersion", "142.0"),
            ("IPoIB_Data", "NUMPAIRS:0"),
        ]);
        assert_eq!(pool.len(), 4 * (KVP_KEY_SIZE + KVP_VALUE_SIZE));
        assert_eq!(
            kvp_lookup(&pool, "NdDriverVersion").as_deref(),
            Some("142.0")
        );
        assert_eq!(kvp_lookup(&pool, "HostName").as_deref(), Some("host-17"));
        assert_eq!(
            kvp_lookup(&pool, "IPoIB_Data").as_deref(),
            Some("NUMPAIRS:0")
        );
        assert_eq!(kvp_lookup(&pool, "NdDriver"), None);
        assert_eq!(kvp_lookup(&[], "NdDriverVersion"), None);
    }

    #[test]
    fn kvp_short_last_record_counts_if_it_has_a_value() {
        let mut pool = kvp_pool(&[("A", "1")]);
        let mut key = b"NdDriverVersion".to_vec();
        key.resize(KVP_KEY_SIZE, 0);
        pool.extend(&key);
        // Key only: no value, not a record.
        assert_eq!(kvp_lookup(&pool, "NdDriverVersion"), None);
        pool.extend(b"150.1");
        assert_eq!(
            kvp_lookup(&pool, "NdDriverVersion").as_deref(),
            Some("150.1")
        );
        // Not UTF-8: read lossily, never a panic.
        let pool = kvp_pool(&[("K", "a\u{7f}")]);
        let mut bad = pool.clone();
        bad[KVP_KEY_SIZE + 1] = 0xff;
        assert_eq!(kvp_lookup(&bad, "K").as_deref(), Some("a\u{fffd}"));
    }

    #[test]
    fn nd_version_from_the_pool_file() {
        let f = fx();
        let os = f.os("centos", "7.9", Flavour::RedHat);
        let e = nd_driver_version(os.env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/var/lib/hyperv/.kvp_pool_0 does not exist: the kernel does not provide it or the KVP daemon is not running"
        );
        f.kvp(&[("HostName", "h")]);
        assert_eq!(nd_driver_version(os.env()), Ok(None));
        f.kvp(&[("HostName", "h"), ("NdDriverVersion", " 142.0 ")]);
        assert_eq!(nd_driver_version(os.env()), Ok(Some("142.0".into())));
    }

    #[test]
    fn ipoib_data_pairs() {
        assert_eq!(
            parse_ipoib_data("NUMPAIRS:2|00155D33FF1D:172.16.1.4|00155D33FF1E:172.16.1.5"),
            Ok(vec![
                ("00155D33FF1D".to_string(), IP),
                ("00155D33FF1E".to_string(), Ipv4Addr::new(172, 16, 1, 5)),
            ])
        );
        assert_eq!(parse_ipoib_data("NUMPAIRS:0"), Ok(vec![]));
        for (bad, why) in [
            (
                "NUMPAIRS:3|00155D33FF1D:172.16.1.4",
                "IPoIB_Data: says 3 pairs but lists 1",
            ),
            (
                "PAIRS:1|00155D33FF1D:172.16.1.4",
                "IPoIB_Data: no pair count in \"PAIRS:1\"",
            ),
            (
                "NUMPAIRS:1|00155D33FF1D",
                "IPoIB_Data: no MAC/IP pair in \"00155D33FF1D\"",
            ),
            (
                "NUMPAIRS:1|00155D33FF1D:172.16.1",
                "IPoIB_Data: no IPv4 address in \"00155D33FF1D:172.16.1\"",
            ),
            (
                "NUMPAIRS:1|00 15;rm:172.16.1.4",
                "IPoIB_Data: not a MAC address: \"00 15;rm\"",
            ),
        ] {
            assert_eq!(parse_ipoib_data(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }

    // ----- dat.conf -----

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

    // ----- device and interfaces -----

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
    fn interface_by_mac_prefers_eth_names() {
        let f = fx();
        let os = f.os("ubuntu", "22.04", Flavour::Ubuntu);
        assert_eq!(interface_with_mac(os.env(), MAC), None);
        f.nic("eth0", "00:0d:3a:00:00:01");
        f.nic("enP1s1", "00:15:5d:33:ff:1d");
        assert_eq!(interface_with_mac(os.env(), MAC).as_deref(), Some("enP1s1"));
        f.nic("eth1", "00:15:5D:33:FF:1D");
        f.nic("lo", "00:00:00:00:00:00");
        f.nic(
            "ib0",
            "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d",
        );
        assert_eq!(interface_with_mac(os.env(), MAC).as_deref(), Some("eth1"));
    }

    #[test]
    fn ipoib_mac_of_ethernet_and_infiniband_addresses() {
        assert_eq!(
            ipoib_mac(
                "ib0",
                "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d"
            )
            .as_deref(),
            Some("00155D33FF1D")
        );
        assert_eq!(
            ipoib_mac("eth1", "00:15:5d:33:ff:1e").as_deref(),
            Some("00155D33FF1E")
        );
        // An IB-length address on a non-ib name, or an Ethernet one on ib0.
        assert_eq!(
            ipoib_mac(
                "eth1",
                "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d"
            ),
            None
        );
        assert_eq!(ipoib_mac("ib0", "00:15:5d:33:ff:1e"), None);
        assert_eq!(ipoib_mac("eth0", ""), None);
    }

    #[test]
    fn address_assignment_through_ip() {
        let f = fx();
        let os = f.os("ubuntu", "22.04", Flavour::Ubuntu);
        assign_address(os.env(), "eth1", IP).unwrap();
        // 2: the address is there already.
        f.runner.push("ip", Output::ok(""));
        f.runner
            .push("ip", Output::failed(2, "RTNETLINK answers: File exists"));
        assign_address(os.env(), "eth1", IP).unwrap();
        f.runner
            .push("ip", Output::failed(1, "Cannot find device \"eth1\""));
        let e = assign_address(os.env(), "eth1", IP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot set 172.16.1.4/16 on eth1: `ip link set eth1 up` failed with exit code 1: \
             Cannot find device \"eth1\""
        );
        assert!(assign_address(os.env(), "-x", IP).is_err());
        assert_eq!(
            f.lines(),
            [
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
                "ip link set eth1 up",
            ]
        );
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
        assert!(is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-2016032.x86_64.rpm",
            RHEL_KMOD_PACKAGE,
            "142"
        ));
        assert!(!is_fw_rpm(
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            RHEL_USER_PACKAGE,
            "142"
        ));
    }

    // ----- the driver check, per distro -----

    fn kvp_running() -> Output {
        Output::ok("root       812     1  0 10:00 ?        00:00:00 /usr/sbin/hv_kvp_daemon -n\n")
    }

    const RHEL_DIR: &str = "/opt/microsoft/rdma/rhel79";

    #[test]
    fn redhat_installs_the_packages_of_the_firmware_and_reboots_if_not_loaded() {
        let f = fx();
        f.write(
            "/etc/redhat-release",
            "CentOS Linux release 7.9.2009 (Core)\n",
        );
        for file in [
            "kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101.x86_64.rpm",
            "kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
            "microsoft-hyper-v-rdma-4.1.0.142-20160323.src.rpm",
            "microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
        ] {
            f.write(&format!("{RHEL_DIR}/{file}"), "");
        }
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
                summary: "installed kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm, \
                          microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm"
                    .into(),
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
                "yum install -y -q /opt/microsoft/rdma/rhel79/kmod-microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
                "yum erase -y -q microsoft-hyper-v-rdma",
                "yum install -y -q /opt/microsoft/rdma/rhel79/microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64.rpm",
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
            "/opt/microsoft/rdma/rhel89/kmod-microsoft-hyper-v-rdma-4.1.0.141-20160101.x86_64.rpm",
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
            "msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm",
        ] {
            f.write(&format!("/opt/microsoft/rdma/{file}"), "");
        }
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
            "installed /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm"
        );
        assert!(!r.reboot_requested);
        assert_eq!(
            f.lines(),
            [
                "uname -r",
                "zypper -n se -s msft-rdma-kmp-azure",
                "zypper -n --no-refresh in /opt/microsoft/rdma/msft-rdma-kmp-azure-20180201.142.0-1.x86_64.rpm",
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

    #[test]
    fn other_distros_have_no_driver_handler() {
        for (id, version, flavour) in [
            ("debian", "12", Flavour::Debian),
            ("opensuse-leap", "15.5", Flavour::Suse),
            ("ol", "8.9", Flavour::RedHat),
            // waagent's handler is for releases after 11 (11.3 is one).
            ("sles", "11", Flavour::Suse),
            ("flatcar", "3815.2.0", Flavour::CoreOs),
        ] {
            let f = fx();
            let os = f.os(id, version, flavour);
            let e = check_driver(os.as_ref(), "142.0", true).unwrap_err();
            assert_eq!(
                e,
                RdmaError::Unsupported(format!(
                    "checking the RDMA driver is not supported on {id} {version} (only on \
                     CentOS/RHEL, SLES and Ubuntu): the driver was left as it is"
                ))
            );
            assert!(f.lines().is_empty(), "{id}");
        }
    }

    // ----- the whole setup -----

    /// A Network Direct host: NdDriverVersion in the pool, dat.conf, the
    /// RDMA NIC as eth1.
    fn network_direct_host() -> Fx {
        let f = fx();
        f.kvp(&[("HostName", "host-17"), ("NdDriverVersion", "142.0")]);
        f.write("/etc/dat.conf", DAT_CONF);
        f.nic("eth0", "00:0d:3a:00:00:01");
        f.nic("eth1", "00:15:5d:33:ff:1d");
        f
    }

    fn rdma_config() -> Config {
        config("OS.EnableRDMA=y\n")
    }

    #[test]
    fn not_requested_touches_nothing() {
        let f = network_direct_host();
        let os = f.os("centos", "7.9", Flavour::RedHat);
        let mut s = RdmaSetup::new(&Config::default(), Some(&ADDRESS));
        for _ in 0..2 {
            let p = s.poll(os.as_ref());
            assert_eq!(p, RdmaProgress::NotRequested);
            assert!(p.is_final());
        }
        assert!(f.lines().is_empty());
        assert_eq!(f.read("/etc/dat.conf"), DAT_CONF);
    }

    #[test]
    fn freebsd_is_refused_plainly() {
        let f = network_direct_host();
        let os = f.os("freebsd", "13.2", Flavour::FreeBsd);
        let mut s = RdmaSetup::new(
            &config("OS.EnableRDMA=y\nOS.UpdateRdmaDriver=y\n"),
            Some(&ADDRESS),
        );
        let e = failure(s.poll(os.as_ref()));
        assert_eq!(
            e,
            RdmaError::Unsupported(
                "RDMA is not supported on freebsd 13.2 (OS.EnableRDMA, OS.UpdateRdmaDriver set): \
                 nothing was changed"
                    .into()
            )
        );
        assert!(f.lines().is_empty());
        assert_eq!(f.read("/etc/dat.conf"), DAT_CONF);
    }

    #[test]
    fn network_direct_on_centos_waits_for_the_device_then_configures_it() {
        let f = network_direct_host();
        f.answer("ps -ef", kvp_running());
        f.answer(
            "rpm -q microsoft-hyper-v-rdma",
            Output::ok("microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64\n"),
        );
        f.answer(
            "modprobe -R hv_network_direct",
            Output::ok("hv_network_direct\n"),
        );
        f.answer(
            "modinfo hv_network_direct",
            Output::ok(
                "filename: /lib/modules/x/hv_network_direct.ko\nversion:        4.0.2.114\n",
            ),
        );
        let os = f.os_with("centos", "7.9", Flavour::RedHat, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        let first = [
            "ps -ef",
            "rpm -q microsoft-hyper-v-rdma",
            "modprobe -R hv_network_direct",
            "modprobe hv_network_direct",
            "modinfo hv_network_direct",
        ];
        assert_eq!(
            s.poll_at(os.as_ref(), t0),
            RdmaProgress::Waiting("waiting for /dev/hvnd_rdma".into())
        );
        assert_eq!(f.lines(), first);
        assert_eq!(
            f.read("/etc/dat.conf"),
            DAT_CONF.replace("\"ib0 0\"", "\"172.16.1.4 0\"")
        );
        assert_eq!(f.mode("/etc/dat.conf"), 0o644);
        f.no_temp_files("/etc");

        assert!(!s
            .poll_at(os.as_ref(), t0 + Duration::from_secs(60))
            .is_final());
        assert_eq!(f.lines(), first, "waiting runs nothing");

        f.write(RDMA_DEVICE, "");
        let r = done(s.poll_at(os.as_ref(), t0 + Duration::from_secs(65)));
        assert_eq!(f.read(RDMA_DEVICE), device_config(&ADDRESS));
        let mut all = first.to_vec();
        all.extend(["ip link set eth1 up", "ip addr add 172.16.1.4/16 dev eth1"]);
        assert_eq!(f.lines(), all);
        assert_eq!(
            r,
            RdmaReport {
                nd_version: Some("142.0".into()),
                steps: vec![
                    "driver: microsoft-hyper-v-rdma-4.1.0.142-20160323.x86_64 matches Network Direct 142.0".into(),
                    "/etc/dat.conf: address set to 172.16.1.4".into(),
                    "module hv_network_direct loaded".into(),
                    "/dev/hvnd_rdma: rdmaMacAddress=\"00:15:5D:33:FF:1D\" rdmaIPv4Address=\"172.16.1.4\"".into(),
                    "eth1: 172.16.1.4/16".into(),
                ],
                warnings: vec![],
                reboot_requested: false,
            }
        );
        assert!(
            r.to_string().starts_with("Network Direct 142.0: driver: "),
            "{r}"
        );

        // Final: polling again does nothing.
        assert_eq!(
            s.poll_at(os.as_ref(), t0 + Duration::from_secs(999)),
            RdmaProgress::Done(r)
        );
        assert_eq!(f.lines().len(), all.len());
    }

    #[test]
    fn network_direct_device_that_never_appears_times_out_once() {
        let f = network_direct_host();
        f.answer("ps -ef", kvp_running());
        let os = f.os_with("rhel", "7.9", Flavour::RedHat, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        assert!(!s.poll_at(os.as_ref(), t0).is_final());
        assert!(!s
            .poll_at(os.as_ref(), t0 + Duration::from_secs(119))
            .is_final());
        let p = s.poll_at(os.as_ref(), t0 + Duration::from_secs(120));
        assert_eq!(
            p,
            RdmaProgress::Failed(RdmaError::TimedOut(
                "/dev/hvnd_rdma did not appear within 120 s".into()
            ))
        );
        let n = f.lines().len();
        f.write(RDMA_DEVICE, "");
        assert_eq!(s.poll_at(os.as_ref(), t0 + Duration::from_secs(200)), p);
        assert_eq!(f.lines().len(), n);
        assert_eq!(f.read(RDMA_DEVICE), "", "nothing written after the failure");
        assert!(!f.lines().iter().any(|l| l.starts_with("ip ")));
        // The driver check ran (and failed: no package directory) but did not
        // stop the setup.
        assert!(
            s.report().warnings[0].starts_with("driver check: "),
            "{:?}",
            s.report()
        );
        assert!(s
            .report()
            .steps
            .contains(&"/etc/dat.conf: address set to 172.16.1.4".to_string()));
    }

    #[test]
    fn network_direct_driver_4_1_needs_no_device() {
        let f = network_direct_host();
        f.answer("modprobe -R", Output::ok("hv_network_direct_142_0\n"));
        f.answer(
            "modinfo hv_network_direct_142_0",
            Output::ok("version:        4.1.5\n"),
        );
        let os = f.os_with("ubuntu", "18.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let r = done(s.poll(os.as_ref()));
        assert_eq!(
            f.lines(),
            [
                "modprobe -R hv_network_direct",
                "modprobe -R hv_network_direct",
                "modprobe hv_network_direct_142_0",
                "modinfo hv_network_direct_142_0",
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
            ]
        );
        assert!(!f.path(RDMA_DEVICE).exists());
        assert!(
            r.steps
                .contains(&"driver 4.1.5 needs no /dev/hvnd_rdma".to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn without_driver_check_only_dat_conf_and_interface() {
        let f = network_direct_host();
        f.write(RDMA_DEVICE, "");
        let os = f.os_with(
            "sles",
            "12.5",
            Flavour::Suse,
            config("OS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n"),
        );
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let r = done(s.poll(os.as_ref()));
        assert_eq!(
            f.lines(),
            ["ip link set eth1 up", "ip addr add 172.16.1.4/16 dev eth1"]
        );
        assert_eq!(
            f.read(RDMA_DEVICE),
            "",
            "waagent writes the device only when it checks the driver"
        );
        assert_eq!(
            r.steps,
            [
                "driver check skipped (OS.CheckRdmaDriver=n)",
                "/etc/dat.conf: address set to 172.16.1.4",
                "eth1: 172.16.1.4/16",
            ]
        );
    }

    #[test]
    fn unsupported_driver_check_is_a_warning_and_the_device_is_still_set_up() {
        let f = network_direct_host();
        f.write(RDMA_DEVICE, "");
        let os = f.os_with("debian", "12", Flavour::Debian, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let r = done(s.poll(os.as_ref()));
        assert_eq!(
            r.warnings,
            [
                "driver check: checking the RDMA driver is not supported on debian 12 (only on \
              CentOS/RHEL, SLES and Ubuntu): the driver was left as it is"
            ]
        );
        assert_eq!(f.read(RDMA_DEVICE), device_config(&ADDRESS));
        assert_eq!(
            f.lines(),
            [
                "modprobe -R hv_network_direct",
                "modprobe hv_network_direct",
                "modinfo hv_network_direct",
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
            ]
        );
    }

    #[test]
    fn network_direct_failures_stop_before_the_interface() {
        // The module does not load.
        let f = network_direct_host();
        f.answer(
            "modprobe hv_network_direct",
            Output::failed(1, "FATAL: Module hv_network_direct not found."),
        );
        let os = f.os_with("debian", "12", Flavour::Debian, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert_eq!(
            failure(s.poll(os.as_ref())).to_string(),
            "cannot load the kernel module hv_network_direct: `modprobe hv_network_direct` failed \
             with exit code 1: FATAL: Module hv_network_direct not found."
        );
        assert!(!f.lines().iter().any(|l| l.starts_with("ip ")));

        // No NIC has the MAC.
        let g = network_direct_host();
        fs::remove_dir_all(g.path("/sys/class/net/eth1")).unwrap();
        let os = g.os_with(
            "debian",
            "12",
            Flavour::Debian,
            config("OS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n"),
        );
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert_eq!(
            failure(s.poll(os.as_ref())),
            RdmaError::Failed(
                "no network interface has the RDMA MAC address 00:15:5D:33:FF:1D".into()
            )
        );

        // No dat.conf: nothing else is done.
        let h = network_direct_host();
        fs::remove_file(h.path("/etc/dat.conf")).unwrap();
        let os = h.os_with(
            "debian",
            "12",
            Flavour::Debian,
            config("OS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n"),
        );
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert!(failure(s.poll(os.as_ref()))
            .to_string()
            .starts_with("no DAPL configuration found"));
        assert!(h.lines().is_empty());

        // A version from the host that is not one.
        let k = network_direct_host();
        k.kvp(&[("NdDriverVersion", "142.0\nalias x y")]);
        let os = k.os_with("ubuntu", "18.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert_eq!(
            failure(s.poll(os.as_ref())).to_string(),
            "/var/lib/hyperv/.kvp_pool_0: NdDriverVersion is not a version: \"142.0\\nalias x y\""
        );
        assert!(k.lines().is_empty());
    }

    #[test]
    fn no_address_in_shared_config_configures_nothing() {
        let f = network_direct_host();
        let os = f.os_with(
            "debian",
            "12",
            Flavour::Debian,
            config("OS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n"),
        );
        let mut s = RdmaSetup::new(&os.env().config, None);
        let e = failure(s.poll(os.as_ref()));
        assert_eq!(e, RdmaError::NoAddress);
        assert!(e
            .to_string()
            .starts_with("SharedConfig gives this VM no RDMA address"));
        assert!(f.lines().is_empty());
        assert_eq!(f.read("/etc/dat.conf"), DAT_CONF);
    }

    fn ib_address(last6: &str) -> String {
        // 20-byte IPoIB address: 4 bytes of QPN/flags, the subnet prefix,
        // then the port GUID, which embeds the MAC around ff:fd.
        let m: Vec<&str> = last6.split(':').collect();
        format!(
            "80:00:02:08:fe:80:00:00:00:00:00:00:{}:{}:{}:ff:fd:{}:{}:{}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    #[test]
    fn sriov_ipoib_pairs_are_assigned_as_their_interfaces_appear() {
        let f = fx();
        f.kvp(&[(
            "IPoIB_Data",
            "NUMPAIRS:2|00155D33FF1D:172.16.1.4|00155D33FF1E:172.16.1.5",
        )]);
        f.nic("eth0", "00:0d:3a:00:00:01");
        f.nic("ib0", &ib_address("00:15:5d:33:ff:1d"));
        f.runner.push("ip", Output::failed(1, "Cannot find device"));
        let os = f.os_with("ubuntu", "22.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        assert_eq!(
            s.poll_at(os.as_ref(), t0),
            RdmaProgress::Waiting(
                "waiting for IP-over-IB interfaces for 172.16.1.4 (MAC 00155D33FF1D), \
                 172.16.1.5 (MAC 00155D33FF1E)"
                    .into()
            )
        );
        assert_eq!(
            s.poll_at(os.as_ref(), t0 + Duration::from_secs(3)),
            RdmaProgress::Waiting(
                "waiting for IP-over-IB interfaces for 172.16.1.5 (MAC 00155D33FF1E)".into()
            )
        );
        f.nic("ib1", &ib_address("00:15:5d:33:ff:1e"));
        let r = done(s.poll_at(os.as_ref(), t0 + Duration::from_secs(6)));
        assert_eq!(
            f.lines(),
            [
                "ip link set ib0 up",
                "ip link set ib0 up",
                "ip addr add 172.16.1.4/16 dev ib0",
                "ip link set ib1 up",
                "ip addr add 172.16.1.5/16 dev ib1",
            ]
        );
        assert_eq!(r.nd_version, None);
        assert_eq!(
            r.to_string(),
            "SR-IOV: ib0: 172.16.1.4/16; ib1: 172.16.1.5/16"
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn sriov_ipoib_pairs_time_out_naming_what_is_missing() {
        let f = fx();
        f.kvp(&[("IPoIB_Data", "NUMPAIRS:1|00155D33FF1E:172.16.1.5")]);
        f.nic("ib0", &ib_address("00:15:5d:33:ff:1d"));
        let os = f.os_with("centos", "7.9", Flavour::RedHat, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        assert!(!s.poll_at(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll_at(os.as_ref(), t0 + Duration::from_secs(60))),
            RdmaError::TimedOut(
                "IP-over-IB addresses not assigned within 60 s: 172.16.1.5 (MAC 00155D33FF1E)"
                    .into()
            )
        );
        assert!(f.lines().is_empty(), "ib0 is not in the list");
    }

    #[test]
    fn sriov_single_address_goes_to_the_first_ib_interface() {
        let f = fx();
        f.kvp(&[("HostName", "host-17")]);
        f.nic("eth0", "00:0d:3a:00:00:01");
        let os = f.os_with("sles", "15.5", Flavour::Suse, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        assert_eq!(
            s.poll_at(os.as_ref(), t0),
            RdmaProgress::Waiting(
                "waiting for an InfiniBand device in /sys/class/infiniband".into()
            )
        );
        f.mkdir("/sys/class/infiniband/mlx5_0");
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(
            s.poll_at(os.as_ref(), t1),
            RdmaProgress::Waiting("waiting for an ib* network interface".into())
        );
        // The interface wait counts from when the device appeared.
        assert!(!s
            .poll_at(os.as_ref(), t0 + Duration::from_secs(150))
            .is_final());
        f.nic("ib1", &ib_address("00:15:5d:33:ff:1e"));
        f.nic("ib0", &ib_address("00:15:5d:33:ff:1d"));
        let r = done(s.poll_at(os.as_ref(), t0 + Duration::from_secs(155)));
        assert_eq!(
            f.lines(),
            ["ip link set ib0 up", "ip addr add 172.16.1.4/16 dev ib0"]
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.to_string(), "SR-IOV: ib0: 172.16.1.4/16");
    }

    #[test]
    fn sriov_waits_time_out() {
        let f = fx();
        let os = f.os_with("ubuntu", "22.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        let t0 = Instant::now();
        assert!(!s.poll_at(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll_at(os.as_ref(), t0 + Duration::from_secs(120))),
            RdmaError::TimedOut(
                "no InfiniBand device appeared in /sys/class/infiniband within 120 s".into()
            )
        );
        // No pool at all: said once, as a warning.
        assert_eq!(
            s.report().warnings,
            ["/var/lib/hyperv/.kvp_pool_0 does not exist: the kernel does not provide it or the \
              KVP daemon is not running"]
        );

        let g = fx();
        g.mkdir("/sys/class/infiniband/mlx5_0");
        let os = g.os_with("ubuntu", "22.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert!(!s.poll_at(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll_at(os.as_ref(), t0 + Duration::from_secs(60))),
            RdmaError::TimedOut("no ib* network interface appeared within 60 s".into())
        );
        assert!(g.lines().is_empty());
    }
}
