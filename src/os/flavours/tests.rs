//! Each flavour's commands and file edits, through the recording runner on a
//! temporary root.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::super::{for_env, testing, Flavour, OsUtil, Output, RecordingRunner, RunError};
use crate::config::SshHostKeyType;

struct Fixture {
    root: tempfile::TempDir,
    runner: Rc<RecordingRunner>,
    os: Box<dyn OsUtil>,
}

impl Fixture {
    fn file(&self, abs: &str) -> PathBuf {
        self.root.path().join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> String {
        testing::read(self.root.path(), abs)
    }

    fn write(&self, abs: &str, text: &str) {
        testing::write(self.root.path(), abs, text);
    }

    /// Commands run since the last call.
    fn take(&self) -> Vec<String> {
        let lines = self.runner.lines();
        let n = TAKEN.with(|t| t.replace(lines.len()));
        lines[n.min(lines.len())..].to_vec()
    }
}

thread_local! {
    static TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Fixture {
    /// Process `pid` named `comm` in the fixture's /proc, started at `ticks`.
    fn process(&self, pid: u32, comm: &str, ticks: u64) {
        self.write(&format!("/proc/{pid}/comm"), &format!("{comm}\n"));
        self.write(
            &format!("/proc/{pid}/stat"),
            &format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 1 0 0 0 20 0 1 0 {ticks} 1 1\n"
            ),
        );
    }
}

fn fixture(flavour: Flavour, version: &str, systemd: bool) -> Fixture {
    TAKEN.with(|t| t.set(0));
    let root = tempfile::tempdir().unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let mut env = testing::env(root.path(), flavour, runner.clone());
    env.distro.version = version.to_string();
    env.config.sudoers_dir = root.path().join("etc/sudoers.d");
    env.config.password_path = root.path().join("etc/shadow");
    env.config.ssh_dir = root.path().join("etc/ssh");
    fs::create_dir_all(root.path().join("etc/dhcp")).unwrap();
    if systemd {
        fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
    }
    let os = for_env(env);
    assert_eq!(os.flavour(), flavour);
    Fixture { root, runner, os }
}

#[test]
fn register_service_for_each_init_system() {
    let cases: &[(Flavour, bool, &str)] = &[
        (Flavour::Default, true, "systemctl enable waagent.service"),
        (Flavour::Ubuntu, true, "systemctl enable waagent.service"),
        (Flavour::Default, false, "update-rc.d waagent defaults"),
        (Flavour::Debian, false, "update-rc.d waagent defaults"),
        (Flavour::RedHat, false, "chkconfig --add waagent"),
        (Flavour::Suse, false, "insserv waagent"),
        // FreeBSD is rc.d even if a stray /run/systemd exists.
        (Flavour::FreeBsd, true, "sysrc waagent_enable=YES"),
    ];
    for (flavour, systemd, want) in cases {
        let f = fixture(*flavour, "1", *systemd);
        f.os.register_service().unwrap();
        assert_eq!(
            f.take(),
            vec![want.to_string()],
            "{flavour} systemd={systemd}"
        );
    }
}

#[test]
fn stop_service() {
    let f = fixture(Flavour::Debian, "12", true);
    f.os.stop_service().unwrap();
    let f2 = fixture(Flavour::FreeBsd, "13.2", false);
    f2.os.stop_service().unwrap();
    assert_eq!(f.take(), ["systemctl stop waagent.service"]);
    assert_eq!(f2.runner.lines(), ["service waagent onestop"]);
}

#[test]
fn register_service_failure_names_the_command() {
    let f = fixture(Flavour::Default, "1", true);
    f.runner.push(
        "systemctl",
        Output::failed(
            1,
            "Failed to enable unit: Unit file waagent.service does not exist.",
        ),
    );
    let err = f.os.register_service().unwrap_err().to_string();
    assert_eq!(
        err,
        "`systemctl enable waagent.service` failed with exit code 1: Failed to enable unit: Unit file waagent.service does not exist."
    );
}

#[test]
fn users_on_linux_and_freebsd() {
    for flavour in [
        Flavour::Default,
        Flavour::Debian,
        Flavour::Ubuntu,
        Flavour::RedHat,
        Flavour::Suse,
        Flavour::CoreOs,
    ] {
        let f = fixture(flavour, "9", true);
        f.write("/var/run/utmp", "logged-in records");
        f.os.create_user("azureuser", None).unwrap();
        f.os.create_user("azureuser", Some("2030-01-01")).unwrap();
        f.os.set_password_hash("azureuser", "$6$salt$hash").unwrap();
        f.os.delete_user("azureuser", true).unwrap();
        assert_eq!(
            f.take(),
            [
                "useradd -m azureuser",
                "useradd -m -e 2030-01-01 azureuser",
                "chpasswd -e",
                "userdel -f -r azureuser"
            ],
            "{flavour}"
        );
        // The hash travels on stdin, not argv.
        let calls = f.runner.calls();
        assert_eq!(
            calls[2].stdin.as_deref(),
            Some(&b"azureuser:$6$salt$hash\n"[..])
        );
        assert_eq!(f.read("/var/run/utmp"), "");
    }

    let f = fixture(Flavour::FreeBsd, "13.2", false);
    f.write("/var/run/utx.active", "records");
    f.os.create_user("azureuser", None).unwrap();
    f.os.set_password_hash("azureuser", "$6$salt$hash").unwrap();
    f.os.delete_user("azureuser", true).unwrap();
    f.os.lock_root_password().unwrap();
    assert_eq!(
        f.take(),
        [
            "pw useradd azureuser -m",
            "pw usermod azureuser -H 0",
            "rmuser -y azureuser",
            "pw usermod root -h -"
        ]
    );
    assert_eq!(
        f.runner.calls()[1].stdin.as_deref(),
        Some(&b"$6$salt$hash\n"[..])
    );
    assert_eq!(f.read("/var/run/utx.active"), "");
}

#[test]
fn names_that_look_like_options_never_reach_a_command() {
    for flavour in Flavour::ALL {
        let f = fixture(flavour, "9", true);
        assert!(f.os.create_user("-o", None).is_err());
        assert!(f.os.create_user("", None).is_err());
        assert!(f.os.set_password_hash("-p", "x").is_err());
        assert!(f.os.delete_user("--help", true).is_err());
        assert!(f.os.set_hostname("-F").is_err());
        assert!(f.os.publish_hostname("-a").is_err());
        assert!(f.take().is_empty(), "{flavour}");
    }
}

#[test]
fn system_users() {
    for (flavour, core_is_system) in [(Flavour::Default, true), (Flavour::CoreOs, false)] {
        let f = fixture(flavour, "1", true);
        f.write(
            "/etc/passwd",
            "root:x:0:0::/root:/bin/sh\ncore:x:500:500::/home/core:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/sh\n\
             nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\nbig:x:60001:60001::/home/big:/bin/sh\n",
        );
        f.write("/etc/login.defs", "UID_MIN 1000\n");
        assert!(f.os.is_system_user("root").unwrap());
        assert!(!f.os.is_system_user("azureuser").unwrap());
        assert!(!f.os.is_system_user("newuser").unwrap());
        // Above UID_MAX (60000 when unset): nobody, and anything up there.
        assert!(f.os.is_system_user("nobody").unwrap(), "{flavour}");
        assert!(f.os.is_system_user("big").unwrap(), "{flavour}");
        f.write("/etc/login.defs", "UID_MIN 1000\nUID_MAX 60001\n");
        assert!(!f.os.is_system_user("big").unwrap(), "{flavour}");
        // A systemd dynamic user is in no passwd file.
        assert!(!f.os.is_system_user("svc").unwrap());
        let dynamic = f.root.path().join("run/systemd/dynamic-uid");
        fs::create_dir_all(&dynamic).unwrap();
        std::os::unix::fs::symlink("61184", dynamic.join("direct:svc")).unwrap();
        assert!(f.os.is_system_user("svc").unwrap(), "{flavour}");
        assert_eq!(
            f.os.is_system_user("core").unwrap(),
            core_is_system,
            "{flavour}"
        );
    }
    // FreeBSD: pw's 1000-32000; nobody is 65534 there too.
    let f = fixture(Flavour::FreeBsd, "13.2", true);
    f.write(
        "/etc/passwd",
        "nobody:*:65534:65534::/nonexistent:/usr/sbin/nologin\nazureuser:*:1001:1001::/home/azureuser:/bin/sh\n",
    );
    assert!(f.os.is_system_user("nobody").unwrap());
    assert!(!f.os.is_system_user("azureuser").unwrap());
}

#[test]
fn lock_root_on_linux_edits_the_configured_password_file() {
    let f = fixture(Flavour::RedHat, "8", true);
    f.write("/etc/shadow", "root:$6$a$b:1::::::\n");
    f.os.lock_root_password().unwrap();
    assert_eq!(f.read("/etc/shadow"), "root:*LOCK*:1::::::\n");
    assert!(f.take().is_empty());
}

#[test]
fn sudoers_through_the_trait() {
    let f = fixture(Flavour::FreeBsd, "13", false);
    f.os.add_sudoer("azureuser", false).unwrap();
    assert_eq!(
        f.read("/etc/sudoers.d/waagent"),
        "azureuser ALL=(ALL) ALL\n"
    );
    f.os.remove_sudoer("azureuser").unwrap();
    assert!(!f.file("/etc/sudoers.d/waagent").exists());
}

#[test]
fn restart_sshd_per_flavour() {
    let cases: &[(Flavour, &str, bool, &[&str])] = &[
        (
            Flavour::Default,
            "1",
            true,
            &["systemctl try-reload-or-restart sshd"],
        ),
        (Flavour::Default, "1", false, &["service sshd restart"]),
        (
            Flavour::Debian,
            "12",
            true,
            &["systemctl --job-mode=ignore-dependencies try-reload-or-restart ssh"],
        ),
        (
            Flavour::Ubuntu,
            "22.04",
            true,
            &["systemctl try-reload-or-restart ssh"],
        ),
        (
            Flavour::RedHat,
            "6.10",
            false,
            &["service sshd condrestart"],
        ),
        (
            Flavour::RedHat,
            "8.9",
            true,
            &["systemctl condrestart sshd"],
        ),
        (Flavour::Suse, "15.5", true, &["systemctl restart sshd"]),
        (
            Flavour::Suse,
            "11.4",
            false,
            &["/sbin/service sshd restart"],
        ),
        (Flavour::CoreOs, "3815", true, &[]),
        (Flavour::FreeBsd, "13.2", false, &["service sshd restart"]),
    ];
    for (flavour, version, systemd, want) in cases {
        let f = fixture(*flavour, version, *systemd);
        f.os.restart_sshd().unwrap();
        assert_eq!(f.take(), *want, "{flavour} {version}");
    }
}

#[test]
fn host_keys_are_made_aside_and_replace_the_old_ones_per_flavour() {
    for flavour in [Flavour::Default, Flavour::FreeBsd] {
        let f = fixture(flavour, "13.2", false);
        f.write("/etc/ssh/ssh_host_rsa_key", "old");
        f.write("/etc/ssh/ssh_host_rsa_key.pub", "old");
        f.write("/etc/ssh/sshd_config", "keep");
        f.runner.respond(|cmd| {
            let file = cmd.argv().last()?.clone();
            std::fs::write(&file, "new").ok()?;
            std::fs::write(format!("{file}.pub"), "ssh-ed25519 AAAA root@vm1").ok()?;
            Some(Ok(Output::default()))
        });
        let now = std::time::Instant::now();
        let mut job =
            f.os.start_ssh_host_keys(SshHostKeyType::Ecdsa, "vm1", now)
                .unwrap();
        let taken = f.take();
        assert_eq!(taken.len(), 1, "{flavour}");
        assert!(
            taken[0].starts_with("ssh-keygen -N '' -q -t ecdsa -C root@vm1 -f "),
            "{flavour}: {taken:?}"
        );
        assert!(f.file("/etc/ssh/ssh_host_rsa_key").exists());
        assert!(job.poll(now));
        f.os.install_ssh_host_keys(job).unwrap();
        assert_eq!(f.read("/etc/ssh/ssh_host_ecdsa_key"), "new");
        assert!(!f.file("/etc/ssh/ssh_host_rsa_key").exists());
        assert!(!f.file("/etc/ssh/ssh_host_rsa_key.pub").exists());
        assert_eq!(f.read("/etc/ssh/sshd_config"), "keep");
        // Ed25519: made in-process, no command, done at once.
        let mut job =
            f.os.start_ssh_host_keys(SshHostKeyType::Ed25519, "vm1", now)
                .unwrap();
        assert!(f.take().is_empty(), "{flavour}");
        assert!(job.poll(now));
        f.os.install_ssh_host_keys(job).unwrap();
        assert!(f
            .read("/etc/ssh/ssh_host_ed25519_key")
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(f
            .read("/etc/ssh/ssh_host_ed25519_key.pub")
            .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"));
        assert!(!f.file("/etc/ssh/ssh_host_ecdsa_key").exists());
        // A host name that is not one never reaches ssh-keygen.
        let e =
            f.os.start_ssh_host_keys(SshHostKeyType::Ed25519, "-oops", now)
                .unwrap_err();
        assert!(e.to_string().contains("-oops"), "{e}");
        assert!(f.take().is_empty());
    }
}

#[test]
fn set_hostname_per_flavour() {
    // Default, Debian, Ubuntu, CoreOS: /etc/hostname and hostname(1).
    for flavour in [
        Flavour::Default,
        Flavour::Debian,
        Flavour::Ubuntu,
        Flavour::CoreOs,
    ] {
        let f = fixture(flavour, "1", true);
        f.os.set_hostname("vm-1").unwrap();
        assert_eq!(f.read("/etc/hostname"), "vm-1\n");
        assert_eq!(f.take(), ["hostname vm-1"], "{flavour}");
    }

    let f = fixture(Flavour::RedHat, "6.10", false);
    f.write(
        "/etc/sysconfig/network",
        "NETWORKING=yes\nHOSTNAME=localhost.localdomain\n",
    );
    f.os.set_hostname("vm-1").unwrap();
    assert_eq!(
        f.read("/etc/sysconfig/network"),
        "NETWORKING=yes\nHOSTNAME=vm-1\n"
    );
    assert_eq!(f.take(), ["hostname vm-1"]);

    for (flavour, version) in [(Flavour::RedHat, "9.4"), (Flavour::Suse, "15.5")] {
        let f = fixture(flavour, version, true);
        f.os.set_hostname("vm-1").unwrap();
        assert_eq!(f.take(), ["hostnamectl set-hostname vm-1"]);
        assert!(!f.file("/etc/hostname").exists());
        // hostnamed not running: fall back to the file and hostname(1).
        f.runner
            .push("hostnamectl", Output::failed(1, "Failed to connect to bus"));
        f.os.set_hostname("vm-2").unwrap();
        assert_eq!(f.take(), ["hostnamectl set-hostname vm-2", "hostname vm-2"]);
        assert_eq!(f.read("/etc/hostname"), "vm-2\n");
    }

    let f = fixture(Flavour::Suse, "11.4", false);
    f.os.set_hostname("vm-1").unwrap();
    assert_eq!(f.read("/etc/HOSTNAME"), "vm-1\n");
    assert_eq!(f.take(), ["hostname vm-1"]);

    let f = fixture(Flavour::FreeBsd, "13.2", false);
    f.write(
        "/etc/rc.conf",
        "sshd_enable=\"YES\"\nhostname=\"freebsd\"\n",
    );
    f.os.set_hostname("vm-1").unwrap();
    assert_eq!(
        f.read("/etc/rc.conf"),
        "sshd_enable=\"YES\"\nhostname=\"vm-1\"\n"
    );
    assert_eq!(f.take(), ["hostname vm-1"]);
}

#[test]
fn dhcp_hostname_per_flavour() {
    let f = fixture(Flavour::Debian, "12", true);
    f.os.set_dhcp_hostname("vm-1", "eth0").unwrap();
    assert_eq!(
        f.read("/etc/dhcp/dhclient.conf"),
        "send host-name \"vm-1\";\n"
    );

    let f = fixture(Flavour::RedHat, "7", true);
    f.write(
        "/etc/sysconfig/network-scripts/ifcfg-eth0",
        "DEVICE=eth0\nBOOTPROTO=dhcp\n",
    );
    f.os.set_dhcp_hostname("vm-1", "eth0").unwrap();
    assert_eq!(
        f.read("/etc/sysconfig/network-scripts/ifcfg-eth0"),
        "DEVICE=eth0\nBOOTPROTO=dhcp\nDHCP_HOSTNAME=vm-1\n"
    );
    assert!(f.os.set_dhcp_hostname("vm-1", "../../shadow").is_err());

    let f = fixture(Flavour::Suse, "15", true);
    f.write(
        "/etc/sysconfig/network/dhcp",
        "DHCLIENT_HOSTNAME_OPTION=\"\"\n",
    );
    f.os.set_dhcp_hostname("vm-1", "eth0").unwrap();
    assert_eq!(
        f.read("/etc/sysconfig/network/dhcp"),
        "DHCLIENT_HOSTNAME_OPTION=\"vm-1\"\n"
    );
    f.write(
        "/etc/sysconfig/network/dhcp",
        "DHCLIENT_HOSTNAME_OPTION=\"AUTO\"\n",
    );
    f.os.set_dhcp_hostname("vm-2", "eth0").unwrap();
    assert_eq!(
        f.read("/etc/sysconfig/network/dhcp"),
        "DHCLIENT_HOSTNAME_OPTION=\"AUTO\"\n"
    );

    let f = fixture(Flavour::CoreOs, "1", true);
    f.os.set_dhcp_hostname("vm-1", "eth0").unwrap();
    assert!(!f.file("/etc/dhcp/dhclient.conf").exists());

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.os.set_dhcp_hostname("vm-1", "hn0").unwrap();
    assert_eq!(f.read("/etc/dhclient.conf"), "send host-name \"vm-1\";\n");
}

#[test]
fn publish_hostname_uses_the_network_manager_in_charge() {
    let f = fixture(Flavour::Ubuntu, "22.04", true);
    fs::create_dir_all(f.file("/run/systemd/netif")).unwrap();
    f.os.publish_hostname("eth0").unwrap();
    assert_eq!(f.take(), ["networkctl reconfigure eth0"]);

    let f = fixture(Flavour::RedHat, "9", true);
    fs::create_dir_all(f.file("/run/NetworkManager")).unwrap();
    f.os.publish_hostname("eth0").unwrap();
    assert_eq!(f.take(), ["nmcli device reapply eth0"]);

    let f = fixture(Flavour::Debian, "10", false);
    f.os.publish_hostname("eth0").unwrap();
    assert_eq!(f.take(), ["dhclient -1 -nw eth0"]);

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.os.publish_hostname("hn0").unwrap();
    assert_eq!(f.take(), ["service dhclient restart hn0"]);
}

#[test]
fn dhcp_leases_and_client_pid() {
    let f = fixture(Flavour::Debian, "12", true);
    f.write("/var/lib/dhcp/dhclient.eth0.leases", "lease {}");
    f.write("/var/lib/dhcp/other", "x");
    f.write("/run/systemd/netif/leases/2", "OPTION_245=a83f8110");
    assert_eq!(
        f.os.dhcp_lease_files(),
        [
            f.file("/var/lib/dhcp/dhclient.eth0.leases"),
            f.file("/run/systemd/netif/leases/2")
        ]
    );
    // The DHCP client is found in /proc, as pidof would: the newest.
    assert_eq!(f.os.dhcp_client_pid().unwrap(), None);
    f.process(700, "dhclient", 100);
    f.process(812, "dhclient", 300);
    f.process(900, "sshd", 400);
    assert_eq!(f.os.dhcp_client_pid().unwrap(), Some(812));
    assert!(f.take().is_empty());

    let f = fixture(Flavour::RedHat, "8", true);
    f.write("/var/lib/NetworkManager/internal-abc-eth0.lease", "x");
    f.write("/var/lib/dhclient/dhclient--eth0.lease", "x");
    assert_eq!(
        f.os.dhcp_lease_files(),
        [
            f.file("/var/lib/dhclient/dhclient--eth0.lease"),
            f.file("/var/lib/NetworkManager/internal-abc-eth0.lease")
        ]
    );

    // networkd (CoreOS; Debian and Ubuntu when it runs): its comm is cut
    // to 15 bytes.
    let f = fixture(Flavour::CoreOs, "1", true);
    f.process(633, "systemd-network", 50);
    f.process(640, "dhclient", 60);
    assert_eq!(f.os.dhcp_client_pid().unwrap(), Some(633));
    let f = fixture(Flavour::Ubuntu, "22.04", true);
    fs::create_dir_all(f.file("/run/systemd/netif")).unwrap();
    f.process(633, "systemd-network", 50);
    assert_eq!(f.os.dhcp_client_pid().unwrap(), Some(633));

    let f = fixture(Flavour::Suse, "15", true);
    f.process(900, "dhcpcd", 80);
    f.process(1201, "wickedd-dhcp4", 90);
    assert_eq!(f.os.dhcp_client_pid().unwrap(), Some(1201));
    assert!(f.take().is_empty());

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.write("/var/db/dhclient.leases.hn0", "lease {}");
    assert_eq!(
        f.os.dhcp_lease_files(),
        [f.file("/var/db/dhclient.leases.hn0")]
    );
    f.runner.push("pgrep", Output::ok("77\n"));
    assert_eq!(f.os.dhcp_client_pid().unwrap(), Some(77));
    assert_eq!(f.take(), ["pgrep -n dhclient"]);
}

#[test]
fn routes_to_the_wireserver() {
    let ws = Ipv4Addr::new(168, 63, 129, 16);
    let gw = Ipv4Addr::new(10, 0, 0, 1);
    let f = fixture(Flavour::Default, "1", true);
    f.write(
        "/proc/net/route",
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
    );
    assert!(!f.os.has_route_to(ws).unwrap());
    f.os.add_route(ws, gw).unwrap();
    assert_eq!(f.take(), ["ip route add 168.63.129.16/32 via 10.0.0.1"]);

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.runner.push(
        "netstat",
        Output::ok("Routing tables\n\nInternet:\nDestination        Gateway            Flags     Netif Expire\ndefault            10.0.0.1           UGS         hn0\n168.63.129.16      10.0.0.1           UGHS        hn0\n"),
    );
    assert!(f.os.has_route_to(ws).unwrap());
    f.os.add_route(ws, gw).unwrap();
    assert_eq!(
        f.take(),
        [
            "netstat -rn -f inet",
            "route add -host 168.63.129.16 10.0.0.1"
        ]
    );
}

#[test]
fn dvd_mount_eject() {
    let f = fixture(Flavour::Ubuntu, "22.04", true);
    f.write("/sys/block/sr0/device/type", "5\n");
    f.write("/sys/block/sda/device/type", "0\n");
    assert_eq!(f.os.dvd_devices(), [PathBuf::from("/dev/sr0")]);
    f.os.mount_dvd(Path::new("/dev/sr0"), Path::new("/mnt/cdrom/secure"))
        .unwrap();
    f.os.umount(Path::new("/mnt/cdrom/secure")).unwrap();
    f.os.eject(Path::new("/dev/sr0")).unwrap();
    assert_eq!(
        f.take(),
        [
            "mount -t udf,iso9660 -o ro,nodev,nosuid,noexec /dev/sr0 /mnt/cdrom/secure",
            "umount /mnt/cdrom/secure",
            "eject /dev/sr0"
        ]
    );
    // A missing eject is recognisable, so provisioning can make it a warning.
    f.runner.respond(|c| {
        (c.program == "eject").then(|| {
            Err(RunError::Spawn {
                cmd: "eject /dev/sr0".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        })
    });
    match f.os.eject(Path::new("/dev/sr0")).unwrap_err() {
        super::super::OsError::Run(e) => assert!(e.is_not_found()),
        other => panic!("{other}"),
    }

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.write("/dev/cd0", "");
    f.write("/dev/cd1", "");
    f.write("/dev/cdrom", "");
    f.write("/dev/ada0", "");
    assert_eq!(
        f.os.dvd_devices(),
        [PathBuf::from("/dev/cd0"), PathBuf::from("/dev/cd1")]
    );
    f.runner.push(
        "mount_udf",
        Output::failed(1, "mount_udf: /dev/cd0: Invalid argument"),
    );
    f.os.mount_dvd(Path::new("/dev/cd0"), Path::new("/mnt/cdrom/secure"))
        .unwrap();
    f.os.eject(Path::new("/dev/cd0")).unwrap();
    assert_eq!(
        f.take(),
        [
            "mount_udf -o ro,nosuid,noexec /dev/cd0 /mnt/cdrom/secure",
            "mount_cd9660 -o ro,nosuid,noexec /dev/cd0 /mnt/cdrom/secure",
            "cdcontrol -f /dev/cd0 eject"
        ]
    );
}

#[test]
fn filesystems_and_swap() {
    let f = fixture(Flavour::Suse, "15", true);
    f.os.mkfs(Path::new("/dev/sdb1"), "ext4").unwrap();
    f.os.mkfs(Path::new("/dev/sdb1"), "btrfs").unwrap();
    f.os.mount(
        Path::new("/dev/sdb1"),
        Path::new("/mnt/resource"),
        Some("btrfs"),
        Some("compress=lzo"),
    )
    .unwrap();
    f.os.mount(
        Path::new("/dev/sdb1"),
        Path::new("/mnt/resource"),
        None,
        None,
    )
    .unwrap();
    f.os.swap_on(Path::new("/mnt/resource/swapfile")).unwrap();
    assert_eq!(
        f.take(),
        [
            "mkfs.ext4 -F /dev/sdb1",
            "mkfs.btrfs -f /dev/sdb1",
            "mount -t btrfs -o compress=lzo /dev/sdb1 /mnt/resource",
            "mount /dev/sdb1 /mnt/resource",
            "mkswap /mnt/resource/swapfile",
            "swapon /mnt/resource/swapfile"
        ]
    );
    assert!(f.os.mkfs(Path::new("/dev/sdb1"), "-V").is_err());

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.os.mkfs(Path::new("/dev/da1s1"), "ufs").unwrap();
    let err =
        f.os.mkfs(Path::new("/dev/da1s1"), "ext4")
            .unwrap_err()
            .to_string();
    assert_eq!(
        err,
        "ResourceDisk.Filesystem=ext4 is not supported on FreeBSD (use ufs)"
    );
    f.runner.push("mdconfig", Output::ok("md3\n"));
    f.os.swap_on(Path::new("/mnt/resource/swapfile")).unwrap();
    assert_eq!(
        f.take(),
        [
            "newfs -U /dev/da1s1",
            "mdconfig -a -t vnode -f /mnt/resource/swapfile",
            "swapon /dev/md3"
        ]
    );
}

#[test]
fn instance_id_interface_and_cloud_init() {
    let f = fixture(Flavour::Ubuntu, "22.04", true);
    f.write(
        "/sys/class/dmi/id/product_uuid",
        "C4BFE7E2-EB2D-4A4E-8615-EA6AAF50162E\n",
    );
    assert_eq!(
        f.os.instance_id().as_deref(),
        Some("e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e")
    );
    f.runner.push("systemctl", Output::ok("enabled\n"));
    assert!(f.os.is_cloud_init_enabled());
    f.runner.push("systemctl", Output::failed(1, "disabled"));
    assert!(!f.os.is_cloud_init_enabled());
    assert_eq!(
        f.take(),
        [
            "systemctl is-enabled cloud-init-local.service",
            "systemctl is-enabled cloud-init-local.service"
        ]
    );

    let f = fixture(Flavour::FreeBsd, "13", false);
    f.runner
        .push("kenv", Output::ok("C4BFE7E2-EB2D-4A4E-8615-EA6AAF50162E\n"));
    f.runner.push("route", Output::ok("   route to: default\ndestination: default\n  interface: hn0\n      flags: <UP,GATEWAY,DONE,STATIC>\n"));
    assert_eq!(
        f.os.instance_id().as_deref(),
        Some("e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e")
    );
    assert_eq!(f.os.primary_interface().as_deref(), Some("hn0"));
    assert!(f.os.is_cloud_init_enabled());
    assert_eq!(
        f.take(),
        [
            "kenv -q smbios.system.uuid",
            "route -n get default",
            "service cloudinit enabled"
        ]
    );
}

#[test]
fn resource_disk_tables_on_linux() {
    let f = fixture(Flavour::Default, "1", true);
    f.write(
        "/proc/mounts",
        "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /mnt/my\\040disk ext4 rw,noatime 0 0\n",
    );
    let m = f.os.mounts().unwrap();
    assert_eq!(m[1].target, Path::new("/mnt/my disk"));
    assert_eq!(
        (m[1].fstype.as_str(), m[1].options.as_str()),
        ("ext4", "rw,noatime")
    );
    f.write(
        "/proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 100 0 100\n/mnt/resource/swapfile file 2044 0 -2\n",
    );
    assert_eq!(
        f.os.active_swap_files().unwrap(),
        [PathBuf::from("/mnt/resource/swapfile")]
    );

    // Partitions by sysfs number, named as the kernel names them.
    f.write("/sys/class/block/loop3/loop3p1/partition", "1\n");
    f.write("/sys/class/block/loop3/loop3p2/partition", "2\n");
    f.write("/sys/class/block/loop3/size", "1048576\n");
    assert_eq!(
        f.os.first_partition(Path::new("/dev/loop3")),
        Some(PathBuf::from("/dev/loop3p1"))
    );
    assert_eq!(f.os.first_partition(Path::new("/dev/sdc")), None);
    assert_eq!(f.os.disk_size(Path::new("/dev/loop3")), Some(512 << 20));

    // blkid: 2 is "nothing there", anything else non-zero an error.
    f.write("/dev/sdb", "");
    f.runner.push("blkid", Output::failed(2, ""));
    assert_eq!(
        f.os.probe(Path::new("/dev/sdb")).unwrap(),
        super::super::Probe::default()
    );
    f.runner.push(
        "blkid",
        Output::ok("DEVNAME=/dev/sdb\nPTUUID=1\nPTTYPE=gpt\n"),
    );
    assert_eq!(
        f.os.probe(Path::new("/dev/sdb")).unwrap().table.as_deref(),
        Some("gpt")
    );
    f.runner
        .push("blkid", Output::failed(8, "ambivalent result"));
    assert!(f.os.probe(Path::new("/dev/sdb")).is_err());
    assert!(f.os.probe(Path::new("/dev/nothing")).is_err());

    f.os.create_partition(Path::new("/dev/sdb"), super::super::PartitionTable::Gpt)
        .unwrap();
    f.os.announce_partition(Path::new("/dev/sdb")).unwrap();
    f.os.swap_off(Path::new("/mnt/resource/swapfile")).unwrap();
    assert!(f
        .os
        .create_partition(Path::new("-x"), super::super::PartitionTable::Dos)
        .is_err());
    assert_eq!(
        f.take(),
        [
            "blkid -p -o export /dev/sdb",
            "blkid -p -o export /dev/sdb",
            "blkid -p -o export /dev/sdb",
            "sfdisk --quiet /dev/sdb",
            "partx --add --nr 1 /dev/sdb",
            "swapoff /mnt/resource/swapfile"
        ]
    );
    assert_eq!(
        f.runner.calls()[3].stdin.as_deref(),
        Some(&b"label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"[..])
    );
}

#[test]
fn resource_disk_probe_on_freebsd() {
    let f = fixture(Flavour::FreeBsd, "13", false);
    f.runner.push("fstyp", Output::ok("ufs\n"));
    f.runner
        .push("gpart", Output::failed(1, "gpart: No such geom: da1s1."));
    let p = f.os.probe(Path::new("/dev/da1s1")).unwrap();
    assert_eq!((p.fs.as_deref(), p.table), (Some("ufs"), None));
    f.runner.push(
        "fstyp",
        Output::failed(1, "fstyp: /dev/da1: Device not configured"),
    );
    assert!(f.os.probe(Path::new("/dev/da1")).is_err());
    f.runner.push(
        "mount",
        Output::ok("/dev/da1s1\t/mnt/resource\tufs\trw\t2 2\n"),
    );
    assert_eq!(f.os.mounts().unwrap()[0].source, "/dev/da1s1");
    assert_eq!(
        f.take(),
        [
            "fstyp /dev/da1s1",
            "gpart show -p da1s1",
            "fstyp /dev/da1",
            "mount -p"
        ]
    );
}

/// The distro facts the layers above ask instead of naming a flavour, one
/// row per flavour.
#[test]
fn distro_facts_per_flavour() {
    use crate::os::BootLoader;
    let grub = |f: &Fixture| match f.os.boot_loader() {
        BootLoader::Grub { var, regenerate } => format!("{var} {}", regenerate.display()),
        other => format!("{other:?}"),
    };
    let rows = [
        // flavour, version, boot loader, unit dir, moves rules, sshd writable,
        // Enabled=n means cloud-init, firewall, rdma, resource disk fs
        (Flavour::Default, "1", "GRUB_CMDLINE_LINUX grub2-mkconfig -o /boot/grub2/grub.cfg", Some("lib/systemd/system"), true, true, false, true, true, "ext4"),
        (Flavour::Debian, "12", "GRUB_CMDLINE_LINUX_DEFAULT update-grub", Some("lib/systemd/system"), false, true, false, true, true, "ext4"),
        (Flavour::Ubuntu, "22.04", "GRUB_CMDLINE_LINUX_DEFAULT update-grub", Some("lib/systemd/system"), false, true, true, true, true, "ext4"),
        (Flavour::RedHat, "9.2", "GRUB_CMDLINE_LINUX grub2-mkconfig -o /boot/grub2/grub.cfg", Some("usr/lib/systemd/system"), true, true, false, true, true, "xfs"),
        (Flavour::RedHat, "6.10", "GrubLegacy", Some("usr/lib/systemd/system"), true, true, false, true, true, "ext4"),
        (Flavour::Suse, "15", "GRUB_CMDLINE_LINUX_DEFAULT grub2-mkconfig -o /boot/grub2/grub.cfg", Some("usr/lib/systemd/system"), true, true, false, true, true, "btrfs"),
        (Flavour::CoreOs, "3815", "Unsupported(\"CoreOS/Flatcar keep the kernel command line in the OEM partition's grub.cfg; set it in the image\")", Some("etc/systemd/system"), true, false, false, true, true, "ext4"),
        (Flavour::FreeBsd, "13.2", "LoaderConf", None, false, true, false, false, false, "ufs"),
    ];
    for (flavour, version, boot, unit_dir, moves, sshd, cloud_init, firewall, rdma, fs) in rows {
        let f = fixture(flavour, version, true);
        let row = format!("{flavour} {version}");
        assert_eq!(grub(&f), boot, "{row}");
        assert_eq!(
            f.os.systemd_unit_dir(),
            unit_dir.map(|d| f.root.path().join(d)),
            "{row}"
        );
        assert_eq!(f.os.moves_persistent_net_rules(), moves, "{row}");
        assert_eq!(f.os.sshd_config_writable(), sshd, "{row}");
        assert_eq!(
            f.os.provisioning_disabled_means_cloud_init(),
            cloud_init,
            "{row}"
        );
        assert_eq!(f.os.firewall_unsupported().is_none(), firewall, "{row}");
        assert_eq!(f.os.supports_rdma(), rdma, "{row}");
        assert!(f.os.resource_disk_filesystems().contains(&fs), "{row}");
        assert_eq!(f.os.checks_numa(), flavour != Flavour::FreeBsd, "{row}");
        assert_eq!(
            f.os.load_module_cmd("ata_piix").is_some(),
            flavour != Flavour::FreeBsd,
            "{row}"
        );
        assert_eq!(
            f.os.scsi_timeout_sysctl(),
            (flavour == Flavour::FreeBsd).then_some("kern.cam.da.default_timeout"),
            "{row}"
        );
        let extra = f.os.deprovision_extra_files();
        assert_eq!(
            extra == [f.root.path().join("etc/machine-id")],
            flavour == Flavour::CoreOs,
            "{row}"
        );
    }
    // Image-mode RHEL's /usr is read-only.
    let f = fixture(Flavour::RedHat, "9.4", true);
    f.write("/run/ostree-booted", "");
    assert_eq!(
        f.os.systemd_unit_dir(),
        Some(f.root.path().join("etc/systemd/system"))
    );
}
