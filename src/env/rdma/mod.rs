//! RDMA on HPC sizes (§18.5 of PROTOCOL.md): what waagent does for
//! `OS.EnableRDMA`, `OS.UpdateRdmaDriver` and `OS.CheckRdmaDriver`, done
//! without blocking the single-threaded daemon.
//!
//! Any of the three options asks for RDMA. The host tells the VM which kind
//! of RDMA it has through the Hyper-V KVP pool (submodule `kvp`):
//!
//! * **Network Direct** (the older HPC sizes): the pool holds
//!   `NdDriverVersion`. With `OS.CheckRdmaDriver` (on unless the file says
//!   `n`, as in waagent) the distro's driver is checked against that
//!   version first ([`check_driver`], submodule `driver`). Then the device
//!   is set up (`device`): `dat.conf`, the `hv_network_direct` module and,
//!   before 4.1, `/dev/hvnd_rdma`; finally the interface with the RDMA MAC
//!   gets the address (/16, `interface`).
//! * **SR-IOV InfiniBand** (no `NdDriverVersion`): the host either lists
//!   MAC/IP pairs in the pool's `IPoIB_Data`, each assigned to the IP-over-IB
//!   interface with that MAC, or the instance's RDMA address goes to the first
//!   `ib*` interface once an InfiniBand device exists.
//!
//! This file holds the options, the results and [`RdmaSetup`], the state
//! machine that takes these steps; the submodules hold the steps, each with
//! its tests, and their public items are re-exported here.
//!
//! The instance's address and MAC come from SharedConfig
//! ([`RdmaAddress::from_shared_config`]); without them waagent configures
//! nothing, and neither does this module.
//!
//! waagent waits in place for the device (120 s) and the IPoIB interfaces
//! (60 s). Here [`RdmaSetup::poll`] never sleeps: it does what can be done now
//! and says what it waits for, timing the waits by the `now` it is given.
//! Only the driver check runs package-manager commands (each bounded by a
//! 10-minute timeout) in the first poll; it happens with `OS.CheckRdmaDriver`
//! on a Network Direct host only.
//!
//! The daemon (`Daemon::set_up_rdma`) makes one [`RdmaSetup`] from a freshly
//! fetched SharedConfig once it reaches the steady state, and polls it every
//! goal-state period with the time from its clock until the answer is final.
//!
//! Once final, `poll` returns the same answer again and touches nothing, so
//! calling it once too often is harmless; [`RdmaProgress::is_final`] says when
//! to stop. Every step is safe to repeat after a daemon restart: `dat.conf`
//! is rewritten only when it differs, and an address that is already on the
//! interface counts as assigned.
//!
//! Differences from waagent, all deliberate (the submodules list their own):
//! a missing `/sys/class/infiniband` is waited for like an empty one; values
//! from SharedConfig and the KVP pool are checked before they reach a file or
//! a command; an IPoIB pair once assigned is not assigned again on the next
//! try.

mod device;
mod driver;
mod interface;
mod kvp;
#[cfg(test)]
mod testutil;

pub use device::{
    device_config, rewrite_dat_conf, update_dat_conf, write_device_config, DAT_CONF_PATHS,
    DRIVER_MODULE, RDMA_DEVICE,
};
pub use driver::{check_driver, DriverReport, UBUNTU_MODPROBE_CONF};
pub use interface::{assign_address, interface_with_mac, PREFIX_LEN};
pub use kvp::{
    kvp_lookup, nd_driver_version, parse_ipoib_data, IPOIB_DATA_KEY, KVP_KEY_SIZE, KVP_POOL_PATH,
    KVP_VALUE_SIZE, ND_VERSION_KEY,
};

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{Cmd, Distro, Env, OsUtil, Output};
use crate::wire::docs::{DocError, SharedConfig};
use device::{modinfo_version, resolved_module};
use interface::{ipoib_mac, net_interfaces};
use kvp::read_kvp_pool;

/// Non-empty once an (SR-IOV) InfiniBand device exists.
pub const INFINIBAND_DIR: &str = "/sys/class/infiniband";
/// How long `/dev/hvnd_rdma` and an InfiniBand device are waited for.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the IP-over-IB interfaces are waited for.
pub const IPOIB_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Runs `cmd`; only a command that could not run is an error here.
fn run(env: &Env, cmd: Cmd) -> Result<Output, RdmaError> {
    env.runner.run(&cmd).map_err(|e| failed(e.to_string()))
}

/// Runs `cmd`; a non-zero exit is an error too.
fn run_ok(env: &Env, cmd: Cmd) -> Result<Output, RdmaError> {
    env.run_ok(cmd).map_err(|e| failed(e.to_string()))
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

    /// Does what can be done at `now` (from the daemon's clock; the waits
    /// for a device or an interface are timed by it); never sleeps.
    pub fn poll(&mut self, os: &dyn OsUtil, now: Instant) -> RdmaProgress {
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
        if !os.supports_rdma() {
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

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::os::Flavour;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let (c, warnings) = Config::parse(text, Path::new("waagent.conf"));
        assert!(warnings.is_empty(), "{warnings:?}");
        c
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
            let p = s.poll(os.as_ref(), Instant::now());
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
        let e = failure(s.poll(os.as_ref(), Instant::now()));
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
            s.poll(os.as_ref(), t0),
            RdmaProgress::Waiting("waiting for /dev/hvnd_rdma".into())
        );
        assert_eq!(f.lines(), first);
        assert_eq!(
            f.read("/etc/dat.conf"),
            DAT_CONF.replace("\"ib0 0\"", "\"172.16.1.4 0\"")
        );
        assert_eq!(f.mode("/etc/dat.conf"), 0o644);
        f.no_temp_files("/etc");

        assert!(!s.poll(os.as_ref(), t0 + Duration::from_secs(60)).is_final());
        assert_eq!(f.lines(), first, "waiting runs nothing");

        f.write(RDMA_DEVICE, "");
        let r = done(s.poll(os.as_ref(), t0 + Duration::from_secs(65)));
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
            s.poll(os.as_ref(), t0 + Duration::from_secs(999)),
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
        assert!(!s.poll(os.as_ref(), t0).is_final());
        assert!(!s
            .poll(os.as_ref(), t0 + Duration::from_secs(119))
            .is_final());
        let p = s.poll(os.as_ref(), t0 + Duration::from_secs(120));
        assert_eq!(
            p,
            RdmaProgress::Failed(RdmaError::TimedOut(
                "/dev/hvnd_rdma did not appear within 120 s".into()
            ))
        );
        let n = f.lines().len();
        f.write(RDMA_DEVICE, "");
        assert_eq!(s.poll(os.as_ref(), t0 + Duration::from_secs(200)), p);
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
        let r = done(s.poll(os.as_ref(), Instant::now()));
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
        let r = done(s.poll(os.as_ref(), Instant::now()));
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
        let r = done(s.poll(os.as_ref(), Instant::now()));
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
            failure(s.poll(os.as_ref(), Instant::now())).to_string(),
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
            failure(s.poll(os.as_ref(), Instant::now())),
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
        assert!(failure(s.poll(os.as_ref(), Instant::now()))
            .to_string()
            .starts_with("no DAPL configuration found"));
        assert!(h.lines().is_empty());

        // A version from the host that is not one.
        let k = network_direct_host();
        k.kvp(&[("NdDriverVersion", "142.0\nalias x y")]);
        let os = k.os_with("ubuntu", "18.04", Flavour::Ubuntu, rdma_config());
        let mut s = RdmaSetup::new(&os.env().config, Some(&ADDRESS));
        assert_eq!(
            failure(s.poll(os.as_ref(), Instant::now())).to_string(),
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
        let e = failure(s.poll(os.as_ref(), Instant::now()));
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
            s.poll(os.as_ref(), t0),
            RdmaProgress::Waiting(
                "waiting for IP-over-IB interfaces for 172.16.1.4 (MAC 00155D33FF1D), \
                 172.16.1.5 (MAC 00155D33FF1E)"
                    .into()
            )
        );
        assert_eq!(
            s.poll(os.as_ref(), t0 + Duration::from_secs(3)),
            RdmaProgress::Waiting(
                "waiting for IP-over-IB interfaces for 172.16.1.5 (MAC 00155D33FF1E)".into()
            )
        );
        f.nic("ib1", &ib_address("00:15:5d:33:ff:1e"));
        let r = done(s.poll(os.as_ref(), t0 + Duration::from_secs(6)));
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
        assert!(!s.poll(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll(os.as_ref(), t0 + Duration::from_secs(60))),
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
            s.poll(os.as_ref(), t0),
            RdmaProgress::Waiting(
                "waiting for an InfiniBand device in /sys/class/infiniband".into()
            )
        );
        f.mkdir("/sys/class/infiniband/mlx5_0");
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(
            s.poll(os.as_ref(), t1),
            RdmaProgress::Waiting("waiting for an ib* network interface".into())
        );
        // The interface wait counts from when the device appeared.
        assert!(!s
            .poll(os.as_ref(), t0 + Duration::from_secs(150))
            .is_final());
        f.nic("ib1", &ib_address("00:15:5d:33:ff:1e"));
        f.nic("ib0", &ib_address("00:15:5d:33:ff:1d"));
        let r = done(s.poll(os.as_ref(), t0 + Duration::from_secs(155)));
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
        assert!(!s.poll(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll(os.as_ref(), t0 + Duration::from_secs(120))),
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
        assert!(!s.poll(os.as_ref(), t0).is_final());
        assert_eq!(
            failure(s.poll(os.as_ref(), t0 + Duration::from_secs(60))),
            RdmaError::TimedOut("no ib* network interface appeared within 60 s".into())
        );
        assert!(g.lines().is_empty());
    }
}
