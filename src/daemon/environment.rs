//! The VM around provisioning, as the daemon keeps it (§15, §18): the
//! boot-time set-up (entropy, SCVMM, NUMA, the resource disk) and the
//! steady state's monitors, each on its own period — SCSI timeout, udev
//! rules, the DHCP client's route, the host name, the firewall, RDMA —
//! and the load-balancer probe responder, which the idle wait serves.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::env::{firewall, kernel, lbprobe, network, rdma, resource_disk, scvmm};
use crate::wire::docs::LbProbePorts;
use crate::wire::endpoint;

use super::*;

/// The periodic checks of the steady state (§15), each with its own period
/// and when it is next due (`None`: at the first chance).
#[derive(Default)]
pub(super) struct Monitors {
    scsi_timeout: Option<kernel::RootDeviceScsiTimeout>,
    dhcp: network::DhcpClientMonitor,
    next_scsi: Option<Instant>,
    next_net_rules: Option<Instant>,
    next_dhcp: Option<Instant>,
    next_hostname: Option<Instant>,
    /// The live host name last refused as invalid (so it is said once).
    refused_hostname: Option<String>,
    /// RDMA set-up in progress (made from the first SharedConfig fetched
    /// for it); `rdma_settled` once it is done, failed or not asked for.
    rdma: Option<rdma::RdmaSetup>,
    rdma_settled: bool,
    /// `OS.EnableFirewall`: the rules for the WireServer address they were
    /// first set up for (a new address gets a new set-up).
    firewall: Option<firewall::FirewallMonitor>,
    next_firewall: Option<Instant>,
    /// `LBProbeResponder=y`: the listeners on the goal state's
    /// `LBProbePorts`, and those ports as last read (their refused
    /// entries are said once per change).
    pub(in crate::daemon) lb_probe: lbprobe::Responder,
    lb_probe_seen: Option<LbProbePorts>,
}

/// Whether a monitor due at `next` runs at `now`; if so, it is next due a
/// period later.
fn due(next: &mut Option<Instant>, now: Instant, period: Duration) -> bool {
    if next.is_some_and(|n| now < n) {
        return false;
    }
    *next = Some(now + period);
    true
}

impl Daemon {
    /// The steady state's wait: load-balancer probes are answered while it
    /// lasts (nothing else is watched when the responder is off).
    pub(super) fn idle(&mut self, d: Duration) -> bool {
        let clock = self.clock.clone();
        clock.sleep_watching(d, &mut self.monitors.lb_probe)
    }

    /// `LBProbeResponder` (§18.9): listens on the latest goal state's
    /// `LBProbePorts` at the VM's address (the primary interface's IPv4
    /// address; 0.0.0.0 when it has none), and nowhere else: ports the goal
    /// state dropped are closed, new ones opened, and a port that could not
    /// be bound is tried again. Called after each goal-state poll; before
    /// the first goal state (or a fabric that never answered) nothing
    /// changes. With `LBProbeResponder=n` nothing is ever opened.
    pub(super) fn sync_lb_probe(&mut self) {
        if !self.config.lb_probe_responder {
            return;
        }
        let Some(latest) = self.client.as_ref().and_then(|c| c.lb_probe_ports()) else {
            return;
        };
        if self.monitors.lb_probe_seen.as_ref() != Some(latest) {
            for r in &latest.refused {
                log::warn!("LBProbeResponder: goal state {r}: not listened on");
            }
            self.monitors.lb_probe_seen = Some(latest.clone());
        }
        let wanted: std::collections::BTreeSet<u16> = latest.ports.iter().copied().collect();
        if wanted.is_empty() && self.monitors.lb_probe.ports().is_empty() {
            return;
        }
        let addr = match self.os.primary_ipv4() {
            Some(a) => a,
            None => {
                if self.monitors.lb_probe.addr() != Some(Ipv4Addr::UNSPECIFIED) {
                    log::warn!(
                        "LBProbeResponder: no IPv4 address on the primary interface ({}); \
                         listening on 0.0.0.0",
                        self.os
                            .primary_interface()
                            .as_deref()
                            .unwrap_or("none found")
                    );
                }
                Ipv4Addr::UNSPECIFIED
            }
        };
        self.monitors.lb_probe.set(addr, &wanted);
    }

    /// `Debug.WireServerAddress` means a simulator, not Azure: routes, udev
    /// rules, disks and kernel settings of the machine are then left alone —
    /// unless the OS layer works under a test root (never `/` then), where
    /// the in-process tests drive the environment on fixtures.
    pub(super) fn manages_environment(&self) -> bool {
        self.config.debug_wireserver_address.is_none() || self.os.env().root != Path::new("/")
    }

    /// Boot-time environment (§9.1 steps 3–4, §18): entropy, SCVMM, NUMA and
    /// the resource disk. Each failure is logged; provisioning goes on.
    /// Returns a state when SCVMM takes the VM over.
    pub(super) fn prepare_environment(&mut self) -> Option<State> {
        let env = self.os.env();
        if let Some(n) = kernel::seed_entropy_from_hyperv(env) {
            log::debug!("seeded /dev/random with {n} bytes from the Hyper-V OEM0 table");
        }
        if self.config.detect_scvmm_env {
            if let Some(h) = scvmm::detect(&*self.os) {
                log::info!(
                    "SCVMM media in {}: handing the VM over to its agent",
                    h.device.display()
                );
                if let Err(e) = self.os.env().runner.spawn(&h.install) {
                    log::error!("cannot start the SCVMM installer: {e}");
                } else {
                    self.clock.sleep(h.exit_after);
                    return Some(State::Stopped(0));
                }
            }
        }
        if let Some(release) = kernel::kernel_release(env) {
            match kernel::disable_numa_if_needed(&*self.os, &release) {
                Ok(kernel::NumaCheck::Disabled(a)) if a.changed => {
                    log::warn!(
                        "kernel {release} needs numa=off: added to {} for the next boot",
                        a.file.display()
                    )
                }
                Ok(_) => {}
                Err(e) => log::warn!("cannot add numa=off for kernel {release}: {e}"),
            }
        }
        match resource_disk::activate(&*self.os, None) {
            Ok(Some(report)) => log::info!("{report}"),
            Ok(None) => {}
            Err(e) => log::error!("{e}"),
        }
        self.monitors.scsi_timeout = kernel::RootDeviceScsiTimeout::from_config(self.os.env());
        None
    }

    /// The steady state's periodic checks (§15, §18.3, §18.4, §18.7), each
    /// when its period has passed.
    pub(super) fn run_monitors(&mut self) {
        let now = self.clock.now();
        let period = |secs: u64| Duration::from_secs(secs.max(1));
        if self.config.enable_firewall
            && due(
                &mut self.monitors.next_firewall,
                now,
                period(self.config.enable_firewall_period),
            )
        {
            self.check_firewall(now);
        }
        let c = &self.config;
        let m = &mut self.monitors;
        if due(
            &mut m.next_scsi,
            now,
            period(c.root_device_scsi_timeout_period),
        ) {
            if let Some(t) = m.scsi_timeout.as_mut() {
                let r = t.apply(&*self.os);
                if !r.changed.is_empty() {
                    log::info!("SCSI timeout set on {:?}", r.changed);
                }
            }
        }
        if due(
            &mut m.next_net_rules,
            now,
            period(c.remove_persistent_net_rules_period),
        ) && self.os.moves_persistent_net_rules()
        {
            match network::remove_persistent_net_rules(&*self.os) {
                Ok(moved) if !moved.is_empty() => {
                    log::info!("moved persistent-net udev rules: {moved:?}")
                }
                Ok(_) => {}
                Err(e) => log::warn!("persistent-net udev rules: {e}"),
            }
        }
        if due(
            &mut self.monitors.next_dhcp,
            now,
            period(c.monitor_dhcp_client_restart_period),
        ) {
            if let Ok(true) = self.monitors.dhcp.check(&*self.os) {
                log::info!("the DHCP client restarted; checking the route to the WireServer");
                self.ensure_route();
            }
        }
        if c.monitor_host_name
            && due(
                &mut self.monitors.next_hostname,
                now,
                period(c.monitor_host_name_period),
            )
        {
            self.monitor_host_name();
        }
    }

    /// `OS.EnableFirewall` (§18.6): the first set-up for the WireServer at
    /// `host` — legacy rule out, rules in, their return at boot arranged —
    /// once per address. Called as soon as the address is known (Connect,
    /// before provisioning; the first monitor run after a reboot). waagent
    /// sets them when its extension handler starts, after provisioning;
    /// earlier closes the window in which other users could reach the
    /// WireServer, and changes nothing else.
    pub(super) fn set_up_firewall(&mut self, host: &str) {
        if !self.config.enable_firewall || !self.manages_environment() {
            return;
        }
        let Ok(ip) = host.parse::<Ipv4Addr>() else {
            log::warn!(
                "OS.EnableFirewall: the WireServer address {host} is not IPv4; no rules set"
            );
            return;
        };
        if self
            .monitors
            .firewall
            .as_ref()
            .is_some_and(|f| f.ip() == ip)
        {
            return;
        }
        let exe = std::env::current_exe().ok();
        let uid = nix::unistd::getuid().as_raw();
        let mut fw = firewall::FirewallMonitor::new(ip, uid, exe);
        fw.initialize(&*self.os);
        self.monitors.firewall = Some(fw);
    }

    /// The periodic firewall check (every `OS.EnableFirewallPeriod`): puts
    /// back rules that were removed or left incomplete.
    pub(super) fn check_firewall(&mut self, now: Instant) {
        if !self.manages_environment() {
            return;
        }
        let host = match &self.client {
            Some(c) => c.endpoint().host.clone(),
            None => match self.endpoint() {
                Ok((ep, _)) => ep.host,
                Err(e) => {
                    log::warn!("OS.EnableFirewall: {e}");
                    return;
                }
            },
        };
        let known = self
            .monitors
            .firewall
            .as_ref()
            .is_some_and(|f| host.parse() == Ok(f.ip()));
        if !known {
            self.set_up_firewall(&host);
            return;
        }
        if let Some(fw) = self.monitors.firewall.as_mut() {
            fw.check(&*self.os, now);
        }
    }

    /// RDMA (§18.5), when any RDMA option asks for it: made once from a
    /// freshly fetched SharedConfig (waagent forces the fetch: RDMA changes
    /// need not bump the incarnation), then polled every period until it is
    /// done or failed. Polling never waits for the device; each outcome is
    /// logged once.
    pub(super) fn set_up_rdma(&mut self) {
        if self.monitors.rdma_settled {
            return;
        }
        if !rdma::is_requested(&self.config) {
            self.monitors.rdma_settled = true;
            return;
        }
        if self.monitors.rdma.is_none() {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            let shared = match client.update_goal_state(true) {
                Ok(Some(goal)) => goal.shared_config,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("RDMA: cannot fetch SharedConfig (trying again next period): {e}");
                    return;
                }
            };
            let address = rdma::RdmaAddress::from_shared_config(&shared).unwrap_or_else(|e| {
                log::error!("RDMA: {e}");
                None
            });
            self.monitors.rdma = Some(rdma::RdmaSetup::new(&self.config, address.as_ref()));
        }
        let now = self.clock.now();
        let Some(setup) = self.monitors.rdma.as_mut() else {
            return;
        };
        let progress = setup.poll(&*self.os, now);
        match &progress {
            rdma::RdmaProgress::NotRequested => {}
            rdma::RdmaProgress::Waiting(why) => log::debug!("RDMA: {why}"),
            rdma::RdmaProgress::Done(report) => {
                log::info!("RDMA: {report}");
                for w in &report.warnings {
                    log::warn!("RDMA: {w}");
                }
            }
            rdma::RdmaProgress::Failed(e) => {
                log::error!("RDMA: {e}");
                for w in &setup.report().warnings {
                    log::warn!("RDMA: {w}");
                }
            }
        }
        self.monitors.rdma_settled = progress.is_final();
    }

    /// The route to the WireServer, when DHCP left it out (§3.4).
    pub(super) fn ensure_route(&self) {
        let ip = self
            .client
            .as_ref()
            .and_then(|c| c.endpoint().host.parse().ok())
            .unwrap_or(endpoint::WELL_KNOWN);
        match network::ensure_wire_server_route(&*self.os, ip) {
            Ok(network::WireServerRoute::Added(gw)) => log::info!("added a route to {ip} via {gw}"),
            Ok(_) => {}
            Err(e) => log::warn!("cannot add a route to {ip}: {e}"),
        }
    }

    /// `Provisioning.MonitorHostName`: a host name changed by the user is
    /// made persistent and published through DHCP (§18.7).
    ///
    /// Any local admin (or a compromised service with CAP_SYS_ADMIN in the
    /// UTS namespace) can set the live name, and it goes into files shells
    /// source, so it passes provisioning's rule first, every time.
    pub(super) fn monitor_host_name(&mut self) {
        let (Ok(current), Some(published)) = (
            self.os.hostname(),
            self.read_lib(libdir::PUBLISHED_HOSTNAME),
        ) else {
            return;
        };
        if current == published || current.is_empty() {
            return;
        }
        if let Err(why) = crate::names::check_host_name(&current) {
            if self.monitors.refused_hostname.as_deref() != Some(current.as_str()) {
                log::warn!("the host name changed, but is not published: {why}");
                self.monitors.refused_hostname = Some(current);
            }
            return;
        }
        log::info!("host name changed from {published} to {current}; publishing it");
        if let Err(e) = self.os.set_hostname(&current) {
            log::warn!("cannot make the host name {current} persistent: {e}");
            return;
        }
        // As at provisioning: a DHCP client that cannot re-send the name is
        // a warning, not a reason to try again every period.
        if let Some(i) = self.os.primary_interface() {
            let published = self
                .os
                .set_dhcp_hostname(&current, &i)
                .and_then(|_| self.os.publish_hostname(&i));
            if let Err(e) = published {
                log::warn!("cannot publish the host name {current} on {i}: {e}");
            }
        }
        if let Err(e) = self.write_lib(libdir::PUBLISHED_HOSTNAME, &current, 0o644) {
            log::warn!("{e}");
        }
    }
}
