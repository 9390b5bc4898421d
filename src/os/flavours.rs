//! The per-distro flavours: each overrides only what differs from the
//! generic Linux defaults of [`OsUtil`] (§18.2 of PROTOCOL.md).
//!
//! Every flavour is here, side by side (over 600 lines), so what each
//! distro does differently reads in one place; their command tables are
//! tested in `flavours/tests.rs`.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::{
    grub2_mkconfig, host_name, linux, parse_mount_table, positional, BootLoader, Cmd, Env, Flavour,
    InitSystem, MountEntry, OsError, OsUtil, PartitionTable, Probe, SERVICE_NAME,
};

/// Debian's and Ubuntu's GRUB: the default entry's arguments, update-grub.
fn debian_grub() -> BootLoader {
    BootLoader::Grub {
        var: "GRUB_CMDLINE_LINUX_DEFAULT",
        regenerate: Cmd::new("update-grub"),
    }
}

/// Declares a flavour struct holding its [`Env`], with the given overrides.
macro_rules! flavour {
    ($(#[$doc:meta])* $name:ident, $flavour:expr, { $($body:tt)* }) => {
        $(#[$doc])*
        pub struct $name {
            env: Env,
        }

        impl OsUtil for $name {
            fn env(&self) -> &Env {
                &self.env
            }

            fn flavour(&self) -> Flavour {
                $flavour
            }

            $($body)*
        }
    };
}

/// The flavour for `env.distro`.
pub fn for_env(env: Env) -> Box<dyn OsUtil> {
    match env.distro.flavour {
        Flavour::Default => Box::new(DefaultLinux { env }),
        Flavour::Debian => Box::new(Debian { env }),
        Flavour::Ubuntu => Box::new(Ubuntu { env }),
        Flavour::RedHat => Box::new(RedHat { env }),
        Flavour::Suse => Box::new(Suse { env }),
        Flavour::CoreOs => Box::new(CoreOs { env }),
        Flavour::FreeBsd => Box::new(FreeBsd { env }),
    }
}

flavour!(
    /// Any Linux we do not know better: the trait's defaults.
    DefaultLinux, Flavour::Default, {}
);

flavour!(
    /// Debian: sshd's unit is `ssh`, and it must not drag its dependencies
    /// along when restarted during boot.
    Debian, Flavour::Debian, {
        fn boot_loader(&self) -> BootLoader {
            debian_grub()
        }

        fn moves_persistent_net_rules(&self) -> bool {
            // waagent leaves Debian's and Ubuntu's rules alone.
            false
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            Some(match self.init_system() {
                InitSystem::Systemd => Cmd::new("systemctl")
                    .args(["--job-mode=ignore-dependencies", "try-reload-or-restart", "ssh"]),
                _ => Cmd::new("service").args(["ssh", "restart"]),
            })
        }
    }
);

flavour!(
    /// Ubuntu: like Debian (`ssh` unit); 18.04+ leases come from systemd-networkd.
    Ubuntu, Flavour::Ubuntu, {
        fn boot_loader(&self) -> BootLoader {
            debian_grub()
        }

        fn moves_persistent_net_rules(&self) -> bool {
            false
        }

        fn provisioning_disabled_means_cloud_init(&self) -> bool {
            true
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            Some(match self.init_system() {
                InitSystem::Systemd => Cmd::new("systemctl").args(["try-reload-or-restart", "ssh"]),
                _ => Cmd::new("service").args(["ssh", "restart"]),
            })
        }

        fn dhcp_client_names(&self) -> &'static [&'static str] {
            if self.env.path("/run/systemd/netif").is_dir() {
                NETWORKD
            } else {
                &["dhclient"]
            }
        }
    }
);

flavour!(
    /// RHEL, CentOS, Oracle Linux and relatives: 6.x keeps the host name in
    /// /etc/sysconfig/network, 7+ use hostnamectl; DHCP_HOSTNAME lives in the
    /// interface's ifcfg file; SysV services are added with chkconfig.
    RedHat, Flavour::RedHat, {
        fn boot_loader(&self) -> BootLoader {
            // Grub legacy boots 6.x even where a stray /etc/default/grub exists.
            match self.env.distro.major() {
                1..=6 => BootLoader::GrubLegacy,
                _ => BootLoader::Grub {
                    var: "GRUB_CMDLINE_LINUX",
                    regenerate: grub2_mkconfig(),
                },
            }
        }

        fn systemd_unit_dir(&self) -> Option<PathBuf> {
            // Image-mode RHEL's /usr is read-only.
            if self.env.path("/run/ostree-booted").exists() {
                return Some(self.env.path("/etc/systemd/system"));
            }
            Some(self.env.path("/usr/lib/systemd/system"))
        }

        fn sysv_enable(&self) -> Cmd {
            Cmd::new("chkconfig").args(["--add", SERVICE_NAME])
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            Some(if self.env.distro.major() >= 7 {
                Cmd::new("systemctl").args(["condrestart", "sshd"])
            } else {
                Cmd::new("service").args(["sshd", "condrestart"])
            })
        }

        fn set_hostname(&self, name: &str) -> Result<(), OsError> {
            let name = host_name(name)?;
            if self.env.distro.major() >= 7 {
                return hostnamectl(&self.env, name);
            }
            linux::set_line(
                &self.env.path("/etc/sysconfig/network"),
                "HOSTNAME=",
                &format!("HOSTNAME={name}"),
            )?;
            self.env.run_ok(Cmd::new("hostname").arg(name)).map(drop)
        }

        fn set_dhcp_hostname(&self, name: &str, iface: &str) -> Result<(), OsError> {
            let iface = positional("interface", iface)?;
            if iface.contains('/') {
                return Err(OsError::Invalid(format!("refusing interface {iface:?}")));
            }
            let file = self
                .env
                .path(&format!("/etc/sysconfig/network-scripts/ifcfg-{iface}"));
            linux::set_line(&file, "DHCP_HOSTNAME=", &format!("DHCP_HOSTNAME={}", host_name(name)?))
        }

        fn dhcp_lease_files(&self) -> Vec<PathBuf> {
            let mut v = linux::files_with_prefix(&self.env.path("/var/lib/dhclient"), "dhclient");
            v.extend(linux::files_with_prefix(&self.env.path("/var/lib/NetworkManager"), "dhclient-"));
            v.extend(linux::files_with_prefix(&self.env.path("/var/lib/NetworkManager"), "internal-"));
            v
        }
    }
);

flavour!(
    /// SLES and openSUSE: wicked or dhcpcd as DHCP client, the host name
    /// option in /etc/sysconfig/network/dhcp, insserv for SysV services.
    Suse, Flavour::Suse, {
        fn boot_loader(&self) -> BootLoader {
            BootLoader::Grub {
                var: "GRUB_CMDLINE_LINUX_DEFAULT",
                regenerate: grub2_mkconfig(),
            }
        }

        fn systemd_unit_dir(&self) -> Option<PathBuf> {
            Some(self.env.path("/usr/lib/systemd/system"))
        }

        fn sysv_enable(&self) -> Cmd {
            Cmd::new("insserv").arg(SERVICE_NAME)
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            Some(match self.init_system() {
                InitSystem::Systemd => Cmd::new("systemctl").args(["restart", "sshd"]),
                _ => Cmd::new("/sbin/service").args(["sshd", "restart"]),
            })
        }

        fn set_hostname(&self, name: &str) -> Result<(), OsError> {
            let name = host_name(name)?;
            if self.env.distro.major() >= 12 {
                return hostnamectl(&self.env, name);
            }
            linux::write_file(&self.env.path("/etc/HOSTNAME"), &format!("{name}\n"), 0o644)?;
            self.env.run_ok(Cmd::new("hostname").arg(name)).map(drop)
        }

        fn set_dhcp_hostname(&self, name: &str, _iface: &str) -> Result<(), OsError> {
            let name = host_name(name)?;
            let file = self.env.path("/etc/sysconfig/network/dhcp");
            let current = std::fs::read_to_string(&file).unwrap_or_default();
            // "AUTO" already sends the live host name.
            if current.lines().any(|l| l.trim() == "DHCLIENT_HOSTNAME_OPTION=\"AUTO\"") {
                return Ok(());
            }
            linux::set_line(&file, "DHCLIENT_HOSTNAME_OPTION=", &format!("DHCLIENT_HOSTNAME_OPTION=\"{name}\""))
        }

        fn dhcp_client_names(&self) -> &'static [&'static str] {
            &["wickedd-dhcp4", "dhcpcd"]
        }
    }
);

flavour!(
    /// CoreOS and Flatcar: systemd-networkd does DHCP and sshd is
    /// socket-activated, so a config change needs no restart; the user
    /// `core` is a normal user here.
    CoreOs, Flavour::CoreOs, {
        fn boot_loader(&self) -> BootLoader {
            BootLoader::Unsupported(
                "CoreOS/Flatcar keep the kernel command line in the OEM partition's grub.cfg; \
                 set it in the image",
            )
        }

        fn systemd_unit_dir(&self) -> Option<PathBuf> {
            // /usr is read-only.
            Some(self.env.path("/etc/systemd/system"))
        }

        fn sshd_config_writable(&self) -> bool {
            // /etc/ssh is read-only; the image ships the settings.
            false
        }

        fn deprovision_extra_files(&self) -> Vec<PathBuf> {
            // A new one is made at the next boot, so each VM gets its own.
            vec![self.env.path("/etc/machine-id")]
        }

        fn is_system_user(&self, name: &str) -> Result<bool, OsError> {
            if name == "core" {
                return Ok(false);
            }
            let normal = self.normal_uids();
            Ok(self.is_dynamic_user(name)
                || self.user(name)?.is_some_and(|u| !normal.contains(&u.uid)))
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            // sshd is socket-activated: each connection reads the files.
            None
        }

        fn set_dhcp_hostname(&self, _name: &str, _iface: &str) -> Result<(), OsError> {
            // networkd sends the transient host name by itself.
            Ok(())
        }

        fn dhcp_client_names(&self) -> &'static [&'static str] {
            NETWORKD
        }
    }
);

flavour!(
    /// FreeBSD 10+: `pw` for accounts, rc.conf for the host name, rc.d for
    /// services, `mount_udf`/`mount_cd9660`, `newfs`, md(4)-backed swap.
    FreeBsd, Flavour::FreeBsd, {
        fn kernel_name(&self) -> &'static str {
            "FreeBSD"
        }

        fn boot_loader(&self) -> BootLoader {
            BootLoader::LoaderConf
        }

        fn checks_numa(&self) -> bool {
            false
        }

        fn load_module_cmd(&self, _module: &str) -> Option<Cmd> {
            None
        }

        fn scsi_timeout_sysctl(&self) -> Option<&'static str> {
            Some("kern.cam.da.default_timeout")
        }

        fn systemd_unit_dir(&self) -> Option<PathBuf> {
            None
        }

        fn moves_persistent_net_rules(&self) -> bool {
            // No udev.
            false
        }

        fn firewall_unsupported(&self) -> Option<&'static str> {
            Some(
                "the WireServer firewall (OS.EnableFirewall) is not supported on FreeBSD: \
                 it has neither iptables nor nft, and waagent sets no pf or ipfw rules; no rules set",
            )
        }

        fn supports_rdma(&self) -> bool {
            false
        }

        fn resource_disk_filesystems(&self) -> &'static [&'static str] {
            &["ufs"]
        }

        fn default_gateway(&self) -> Option<Ipv4Addr> {
            // No /proc: route(8) says.
            let out = self
                .env
                .run_ok(Cmd::new("route").args(["-n", "get", "default"]))
                .ok()?;
            out.stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("gateway:"))
                .and_then(|g| g.trim().parse().ok())
        }

        fn init_system(&self) -> InitSystem {
            InitSystem::RcD
        }

        fn normal_uids(&self) -> RangeInclusive<u32> {
            // pw.conf's minuid and maxuid defaults; nobody is 65534.
            1000..=32000
        }

        fn is_dynamic_user(&self, _name: &str) -> bool {
            false
        }

        fn create_user(&self, name: &str, expiration: Option<&str>) -> Result<(), OsError> {
            let mut cmd = Cmd::new("pw").args(["useradd", positional("user name", name)?, "-m"]);
            if let Some(e) = expiration {
                cmd = cmd.args(["-e", positional("expiration date", e)?]);
            }
            self.env.run_ok(cmd).map(drop)
        }

        fn set_password_hash(&self, name: &str, hash: &str) -> Result<(), OsError> {
            // -H 0: the hash arrives, already encrypted, on descriptor 0.
            let cmd = Cmd::new("pw")
                .args(["usermod", positional("user name", name)?, "-H", "0"])
                .stdin(format!("{hash}\n"));
            self.env.run_ok(cmd).map(drop)
        }

        fn delete_user(&self, name: &str, remove_home: bool) -> Result<(), OsError> {
            let name = positional("user name", name)?;
            linux::truncate_if_exists(&self.env.path("/var/run/utx.active"))?;
            let cmd = match remove_home {
                // rmuser also removes the home directory (if the user owns it).
                true => Cmd::new("rmuser").args(["-y", name]),
                false => Cmd::new("pw").args(["userdel", "-n", name]),
            };
            self.env.run_ok(cmd).map(drop)
        }

        fn lock_root_password(&self) -> Result<(), OsError> {
            self.env
                .run_ok(Cmd::new("pw").args(["usermod", "root", "-h", "-"]))
                .map(drop)
        }

        fn restart_sshd_cmd(&self) -> Option<Cmd> {
            Some(Cmd::new("service").args(["sshd", "restart"]))
        }

        fn set_hostname(&self, name: &str) -> Result<(), OsError> {
            let name = host_name(name)?;
            linux::set_line(&self.env.path("/etc/rc.conf"), "hostname=", &format!("hostname=\"{name}\""))?;
            self.env.run_ok(Cmd::new("hostname").arg(name)).map(drop)
        }

        fn set_dhcp_hostname(&self, name: &str, _iface: &str) -> Result<(), OsError> {
            linux::dhclient_send_host_name(&self.env.path("/etc/dhclient.conf"), name)
        }

        fn publish_hostname(&self, iface: &str) -> Result<(), OsError> {
            let iface = positional("interface", iface)?;
            self.env
                .run_ok(Cmd::new("service").args(["dhclient", "restart", iface]))
                .map(drop)
        }

        fn dhcp_lease_files(&self) -> Vec<PathBuf> {
            linux::files_with_prefix(&self.env.path("/var/db"), "dhclient.leases.")
        }

        fn dhcp_client_pid(&self) -> Result<Option<u32>, OsError> {
            // procfs is rarely mounted here: ask pgrep, every period.
            let out = self
                .env
                .runner
                .run(&Cmd::new("pgrep").args(["-n", "dhclient"]))
                .map_err(OsError::Run)?;
            Ok(out
                .stdout
                .split_whitespace()
                .find_map(|w| w.parse().ok().filter(|p| *p != 0)))
        }

        fn process_start_time(&self, _pid: u32) -> Option<u64> {
            // procfs is rarely mounted: the monitor asks pgrep every time.
            None
        }

        fn primary_interface(&self) -> Option<String> {
            let out = self.env.run_ok(Cmd::new("route").args(["-n", "get", "default"])).ok()?;
            out.stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("interface:"))
                .map(|i| i.trim().to_string())
        }

        fn is_cloud_init_enabled(&self) -> bool {
            self.env
                .runner
                .run(&Cmd::new("service").args(["cloudinit", "enabled"]))
                .is_ok_and(|o| o.success())
        }

        fn instance_id(&self) -> Option<String> {
            let out = self.env.run_ok(Cmd::new("kenv").args(["-q", "smbios.system.uuid"])).ok()?;
            linux::swap_uuid_groups(out.stdout.trim())
        }

        fn has_route_to(&self, dest: Ipv4Addr) -> Result<bool, OsError> {
            let out = self.env.run_ok(Cmd::new("netstat").args(["-rn", "-f", "inet"]))?;
            let d = dest.to_string();
            Ok(out.stdout.lines().any(|l| l.split_whitespace().next() == Some(d.as_str())))
        }

        fn add_route(&self, dest: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), OsError> {
            let cmd = Cmd::new("route").args(["add", "-host", &dest.to_string(), &gateway.to_string()]);
            self.env.run_ok(cmd).map(drop)
        }

        fn dvd_devices(&self) -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = linux::files_or_devices(&self.env.path("/dev"), "cd")
                .into_iter()
                .filter(|n| n[2..].chars().all(|c| c.is_ascii_digit()) && n.len() > 2)
                .map(|n| Path::new("/dev").join(n))
                .collect();
            v.sort();
            v
        }

        fn dvd_mount_commands(&self, device: &Path, mount_point: &Path) -> Vec<Cmd> {
            let dev = device.to_string_lossy();
            let mp = mount_point.to_string_lossy();
            // nodev is the default (and obsolete) on FreeBSD.
            let opts = "ro,nosuid,noexec";
            ["mount_udf", "mount_cd9660"]
                .map(|p| Cmd::new(p).args(["-o", opts]).arg(dev.clone()).arg(mp.clone()))
                .into()
        }

        fn eject(&self, device: &Path) -> Result<(), OsError> {
            self.env
                .run_ok(Cmd::new("cdcontrol").args(["-f"]).arg(device.to_string_lossy()).arg("eject"))
                .map(drop)
        }

        fn mkfs(&self, device: &Path, fstype: &str) -> Result<(), OsError> {
            if fstype != "ufs" {
                return Err(OsError::Invalid(format!(
                    "ResourceDisk.Filesystem={fstype} is not supported on FreeBSD (use ufs)"
                )));
            }
            let cmd = Cmd::new("newfs")
                .arg("-U")
                .arg(device.to_string_lossy())
                .timeout(std::time::Duration::from_secs(600));
            self.env.run_ok(cmd).map(drop)
        }

        fn swap_on(&self, file: &Path) -> Result<(), OsError> {
            // FreeBSD swaps to devices: back the file with a vnode md(4).
            let out = self.env.run_ok(
                Cmd::new("mdconfig").args(["-a", "-t", "vnode", "-f"]).arg(file.to_string_lossy()),
            )?;
            let md = out.stdout.trim();
            if !md.starts_with("md") {
                return Err(OsError::Invalid(format!("mdconfig printed {md:?}, expected an md device")));
            }
            self.env.run_ok(Cmd::new("swapon").arg(format!("/dev/{md}"))).map(drop)
        }

        // ----- the resource disk (§19.2) -----

        fn resource_disk(&self) -> Result<PathBuf, OsError> {
            let env = &self.env;
            let pnp = env.run_ok(Cmd::new("sysctl").arg("dev.storvsc"))?;
            if let Some(unit) = storvsc_resource_unit(&pnp.stdout) {
                let buses = env.run_ok(Cmd::new("camcontrol").args(["devlist", "-b"]))?;
                if let Some(bus) = scbus_of(&buses.stdout, &unit) {
                    let devs = env.run_ok(Cmd::new("camcontrol").arg("devlist"))?;
                    if let Some(da) = da_on_bus(&devs.stdout, &bus) {
                        return Ok(Path::new("/dev").join(da));
                    }
                }
            }
            // Where the resource disk sits when the storvsc unit says nothing.
            for addr in ["2:1:0", "3:1:0"] {
                let out = env.runner.run(&Cmd::new("camcontrol").args(["periphlist", addr]));
                if let Some(da) = out.ok().filter(|o| o.success()).and_then(|o| da_in_periphlist(&o.stdout)) {
                    return Ok(Path::new("/dev").join(da));
                }
            }
            Err(OsError::Invalid(
                "no resource disk: no storvsc device 00000000-0001-… and nothing at SCSI 2:1:0 or 3:1:0".into(),
            ))
        }

        fn mounts(&self) -> Result<Vec<MountEntry>, OsError> {
            let out = self.env.run_ok(Cmd::new("mount").arg("-p"))?;
            Ok(parse_mount_table(&out.stdout))
        }

        fn probe(&self, device: &Path) -> Result<Probe, OsError> {
            let dev = positional("device", &device.to_string_lossy())?.to_string();
            let fstyp = Cmd::new("fstyp").arg(dev.clone());
            let out = self.env.runner.run(&fstyp).map_err(OsError::Run)?;
            let fs = if out.success() {
                Some(out.stdout.trim().to_string()).filter(|t| !t.is_empty())
            } else if out.stderr.contains("not recognized") {
                None
            } else {
                return Err(OsError::Run(super::RunError::Failed { cmd: fstyp.display(), output: out }));
            };
            let table = self
                .env
                .runner
                .run(&Cmd::new("gpart").args(["show", "-p", geom_name(device)]))
                .ok()
                .filter(|o| o.success())
                .and_then(|o| gpart_show(&o.stdout).0);
            Ok(Probe { fs, table })
        }

        fn disk_size(&self, disk: &Path) -> Option<u64> {
            let out = self.env.run_ok(Cmd::new("diskinfo").arg(geom_name(disk))).ok()?;
            out.stdout.split_whitespace().nth(2)?.parse().ok()
        }

        fn first_partition(&self, disk: &Path) -> Option<PathBuf> {
            let out = self.env.run_ok(Cmd::new("gpart").args(["show", "-p", geom_name(disk)])).ok()?;
            gpart_show(&out.stdout).1.map(|p| Path::new("/dev").join(p))
        }

        fn create_partition(&self, disk: &Path, table: PartitionTable) -> Result<(), OsError> {
            let geom = positional("disk", geom_name(disk))?;
            let (scheme, kind) = match table {
                PartitionTable::Dos => ("MBR", "freebsd"),
                PartitionTable::Gpt => ("GPT", "freebsd-ufs"),
            };
            self.env.run_ok(Cmd::new("gpart").args(["create", "-s", scheme, geom]))?;
            self.env.run_ok(Cmd::new("gpart").args(["add", "-t", kind, geom])).map(drop)
        }

        fn announce_partition(&self, _disk: &Path) -> Result<(), OsError> {
            // GEOM sees a new partition at once.
            Ok(())
        }

        fn set_linux_partition_type(&self, _disk: &Path) -> Result<(), OsError> {
            // mount -t ufs does not read the MBR type.
            Ok(())
        }

        fn disable_copy_on_write(&self, _file: &Path) -> Result<(), OsError> {
            Ok(())
        }

        fn active_swap_files(&self) -> Result<Vec<PathBuf>, OsError> {
            Ok(self.swap_md_units()?.into_iter().map(|(_, _, file)| file).collect())
        }

        fn swap_off(&self, file: &Path) -> Result<(), OsError> {
            for (unit, dev, f) in self.swap_md_units()? {
                if f == file {
                    self.env.run_ok(Cmd::new("swapoff").arg(dev))?;
                    self.env.run_ok(Cmd::new("mdconfig").args(["-d", "-u", &unit]))?;
                }
            }
            Ok(())
        }

        fn swap_on_encrypted(&self, file: &Path) -> Result<(), OsError> {
            let out = self.env.run_ok(
                Cmd::new("mdconfig").args(["-a", "-t", "vnode", "-f"]).arg(file.to_string_lossy()),
            )?;
            let md = out.stdout.trim();
            if !md.starts_with("md") || md.contains('/') {
                return Err(OsError::Invalid(format!("mdconfig printed {md:?}, expected an md device")));
            }
            let dev = format!("/dev/{md}");
            self.env.run_ok(Cmd::new("chmod").args(["0600", &dev]))?;
            // -n: already loaded (or built in) is fine; geli says if one is missing.
            for m in ["aesni", "cryptodev", "geom_eli"] {
                let _ = self.env.runner.run(&Cmd::new("kldload").args(["-n", m]));
            }
            self.env.run_ok(Cmd::new("geli").args(["onetime", "-e", "AES-XTS", "-l", "256", "-d", &dev]))?;
            self.env.run_ok(Cmd::new("swapon").arg(format!("{dev}.eli"))).map(drop)
        }
    }
);

impl FreeBsd {
    /// Active swap devices backed by files: (md unit number, swap device
    /// `/dev/mdN` or `/dev/mdN.eli`, backing file).
    fn swap_md_units(&self) -> Result<Vec<(String, String, PathBuf)>, OsError> {
        let swaps = self.env.run_ok(Cmd::new("swapctl").arg("-l"))?;
        let mds = self.env.run_ok(Cmd::new("mdconfig").args(["-l", "-v"]))?;
        let files: Vec<(&str, &str)> = mds
            .stdout
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && f[1] == "vnode").then(|| (f[0], f[3]))
            })
            .collect();
        Ok(swaps
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|dev| {
                let md = dev.strip_prefix("/dev/")?;
                let md = md.strip_suffix(".eli").unwrap_or(md);
                let (_, file) = files.iter().find(|(m, _)| *m == md)?;
                Some((
                    md.trim_start_matches("md").to_string(),
                    dev.to_string(),
                    PathBuf::from(file),
                ))
            })
            .collect())
    }
}

/// A GEOM name: `/dev/da1` → `da1`.
fn geom_name(dev: &Path) -> &str {
    dev.to_str()
        .map(|s| s.strip_prefix("/dev/").unwrap_or(s))
        .unwrap_or_default()
}

/// `sysctl dev.storvsc`: the unit whose `%pnpinfo` has `deviceid=00000000-0001-…`.
fn storvsc_resource_unit(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("dev.storvsc.")?;
        let (unit, info) = rest.split_once(".%pnpinfo:")?;
        info.split_whitespace()
            .any(|w| {
                w.to_ascii_lowercase()
                    .starts_with("deviceid=00000000-0001-")
            })
            .then(|| unit.to_string())
    })
}

/// `camcontrol devlist -b`: the bus (`scbus3`) on `blkvsc{unit}` or `storvsc{unit}`.
fn scbus_of(text: &str, unit: &str) -> Option<String> {
    for driver in ["blkvsc", "storvsc"] {
        let want = format!("{driver}{unit}");
        if let Some(bus) = text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[1] == "on" && f[2] == want).then(|| f[0].to_string())
        }) {
            return Some(bus);
        }
    }
    None
}

/// `camcontrol devlist`: the `daN` of the device on `bus`.
fn da_on_bus(text: &str, bus: &str) -> Option<String> {
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == bus))
        .find_map(|l| {
            let inner = l.rsplit_once('(')?.1.split_once(')')?.0;
            inner
                .split(',')
                .map(str::trim)
                .find(|n| is_da(n))
                .map(str::to_string)
        })
}

/// `camcontrol periphlist 2:1:0`: the `daN` among the peripherals.
fn da_in_periphlist(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .find(|n| is_da(n))
        .map(str::to_string)
}

fn is_da(name: &str) -> bool {
    name.strip_prefix("da")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `gpart show -p DISK`: (scheme, first partition that is not Microsoft's
/// reserved one). Azure's GPT resource disks start with that one, so their
/// data partition is `p2`; MBR disks have `s1`.
fn gpart_show(text: &str) -> (Option<String>, Option<String>) {
    let mut scheme = None;
    let mut part = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"=>") {
            scheme = f.get(4).map(|s| s.to_string());
        } else if f.len() >= 4 && f[2] != "-" && f[3] != "ms-reserved" && part.is_none() {
            part = Some(f[2].to_string());
        }
    }
    (scheme, part)
}

/// systemd-networkd's name in /proc/{pid}/comm (cut to 15 bytes).
const NETWORKD: &[&str] = &["systemd-network"];

/// `hostnamectl set-hostname`, falling back to the generic way when
/// hostnamed is not running (early boot, containers).
fn hostnamectl(env: &Env, name: &str) -> Result<(), OsError> {
    if env
        .run_ok(Cmd::new("hostnamectl").args(["set-hostname", name]))
        .is_ok()
    {
        return Ok(());
    }
    linux::write_file(&env.path("/etc/hostname"), &format!("{name}\n"), 0o644)?;
    env.run_ok(Cmd::new("hostname").arg(name)).map(drop)
}

#[cfg(test)]
mod tests;
