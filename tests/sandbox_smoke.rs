//! The throwaway-VM sandbox (`scripts/sandbox`) is real inside and leaves the
//! machine untouched: users, host name, the platform addresses, the
//! provisioning DVD, DMI. Every run checks that no mount and no loop device
//! of its own is left on the host. Skipped (with the reason) when not root.

#[path = "common/sandbox.rs"]
mod sandbox;

use sandbox::{Options, Sandbox};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The host's mount table (as the test process sees it) and loop devices.
struct Host {
    mounts: BTreeSet<String>,
    loops: BTreeSet<String>,
}

impl Host {
    fn now() -> Host {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("read /proc/self/mountinfo")
            .lines()
            .map(str::to_string)
            .collect();
        let o = Command::new("losetup")
            .args([
                "--list",
                "--noheadings",
                "--raw",
                "--output",
                "NAME,BACK-FILE",
            ])
            .output()
            .expect("run losetup");
        let loops = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        Host { mounts, loops }
    }
}

/// Runs `cmd` in the sandbox and checks the host afterwards: the same mounts
/// as before (sandboxes mount only in their own namespaces, so concurrent runs
/// do not disturb this), and no loop device backed by a file under `own`
/// (loop devices are global, and other sandboxes may be running).
fn run(opts: &Options, own: &Path, cmd: &[&str]) -> Output {
    let before = Host::now();
    let out = Sandbox::run(opts, cmd);
    assert_host_clean(&before, own);
    out
}

fn assert_host_clean(before: &Host, own: &Path) {
    let after = Host::now();
    let new: Vec<_> = after.mounts.difference(&before.mounts).collect();
    assert!(new.is_empty(), "mounts left on the host: {new:#?}");
    assert_eq!(
        before.mounts.len(),
        after.mounts.len(),
        "the host's mount count changed"
    );
    // The kernel detaches an autoclear loop device on its last close; give
    // that a moment after the sandbox's processes are gone.
    let own = own.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ours: Vec<_> = Host::now()
            .loops
            .into_iter()
            .filter(|l| l.contains(&own))
            .collect();
        if ours.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "loop devices left: {ours:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the host name")
        .trim()
        .to_string()
}

#[test]
fn useradd_lands_in_the_sandbox_only() {
    if sandbox::skip("useradd_lands_in_the_sandbox_only") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let has_user = || {
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("sbxuser:"))
    };
    assert!(!has_user(), "the host already has sbxuser: cannot test");
    let o = run(
        &Options::default(),
        tmp.path(),
        &[
            "sh",
            "-c",
            "useradd -m sbxuser && grep '^sbxuser:' /etc/passwd && test -d /home/sbxuser \
             && echo 'sbxuser:secret' | chpasswd && grep -q '^sbxuser:\\$' /etc/shadow",
        ],
    );
    assert_ok(&o);
    assert!(
        text(&o.stdout).starts_with("sbxuser:"),
        "{}",
        text(&o.stdout)
    );
    assert!(!has_user(), "sbxuser reached the host's /etc/passwd");
    assert!(!Path::new("/home/sbxuser").exists());
}

#[test]
fn host_name_changes_in_the_sandbox_only() {
    if sandbox::skip("host_name_changes_in_the_sandbox_only") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host_before = host_hostname();
    let o = run(
        &Options::default(),
        tmp.path(),
        &[
            "sh",
            "-c",
            "hostname; cat /etc/hostname; hostname sbx-host && hostname",
        ],
    );
    assert_ok(&o);
    assert_eq!(text(&o.stdout), "localhost\nlocalhost\nsbx-host\n");
    assert_eq!(host_hostname(), host_before);
}

#[test]
fn platform_addresses_answer_inside() {
    if sandbox::skip("platform_addresses_answer_inside") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A server on the WireServer's address, asked from inside; IMDS's address
    // is on the same loopback. Nothing here is ever sent from the host.
    let script = r#"
        python3 -m http.server --bind 168.63.129.16 80 >/dev/null 2>&1 &
        ip -4 -o addr show dev lo | grep -q ' 169.254.169.254/32 ' || exit 3
        for i in $(seq 100); do
            python3 -c 'import urllib.request; print(urllib.request.urlopen("http://168.63.129.16/", timeout=2).status)' 2>/dev/null && exit 0
            sleep 0.1
        done
        exit 1"#;
    let o = run(&Options::default(), tmp.path(), &["sh", "-c", script]);
    assert_ok(&o);
    assert_eq!(text(&o.stdout), "200\n");
}

#[test]
fn network_looks_like_an_azure_vm_and_dns_fails_fast() {
    if sandbox::skip("network_looks_like_an_azure_vm_and_dns_fails_fast") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = run(
        &Options::default(),
        tmp.path(),
        &[
            "sh",
            "-c",
            "ip -4 -o addr show dev eth0 | grep -q ' 10.0.0.4/24 ' && \
             ip route show 168.63.129.16 | grep -q 'via 10.0.0.1 dev eth0' && \
             grep -q '^eth0\t10813FA8\t0100000A' /proc/net/route && \
             ! getent hosts storage.example.invalid",
        ],
    );
    assert_ok(&o);
    assert!(started.elapsed() < Duration::from_secs(5), "DNS waited");
}

#[test]
fn dev_is_private_and_console_is_null() {
    if sandbox::skip("dev_is_private_and_console_is_null") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = run(
        &Options::default(),
        tmp.path(),
        &[
            "sh",
            "-c",
            "stat -c %t:%T /dev/console; echo spam >/dev/console; \
             ls /dev | grep -E '^(vd|sd|hd|loop|xvd|nvme|sr)' ; \
             touch /sys/x 2>/dev/null && echo sys-writable; exit 0",
        ],
    );
    assert_ok(&o);
    assert_eq!(text(&o.stdout), "1:3\n");
}

#[test]
fn provisioning_dvd_mounts_with_the_agents_command() {
    if sandbox::skip("provisioning_dvd_mounts_with_the_agents_command") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let xml = tmp.path().join("ovf.xml");
    let ovf = "<?xml version=\"1.0\"?><Environment><HostName>sbx</HostName></Environment>\n";
    std::fs::write(&xml, ovf).unwrap();
    let extra = tmp.path().join("extra.txt");
    std::fs::write(&extra, "extra\n").unwrap();
    let iso = tmp.path().join("ovf.iso");
    Sandbox::make_ovf_iso(&xml, &iso, &[&extra]).unwrap();

    // Azure's label: the ISO 9660 volume id, 40 bytes into the primary
    // volume descriptor at sector 16.
    let image = std::fs::read(&iso).unwrap();
    let label = text(&image[32768 + 40..32768 + 72]);
    assert!(label.starts_with("rd_rdfe_stable."), "{label:?}");

    let script = "\
        cat /sys/block/sr0/device/type
        test -b /dev/sr0 || exit 11
        mount | grep -q /dev/sr0 && exit 18
        ls /proc/self/fd | grep -qx 9 && exit 12
        mkdir -p /mnt/cdrom/secure
        mount -o ro -t udf,iso9660 /dev/sr0 /mnt/cdrom/secure || exit 13
        cat /mnt/cdrom/secure/ovf-env.xml /mnt/cdrom/secure/extra.txt
        touch /mnt/cdrom/secure/x 2>/dev/null && exit 14
        grep -q '^/dev/sr0 /mnt/cdrom/secure ' /proc/mounts || exit 15
        umount /mnt/cdrom/secure || exit 16
        test -e /mnt/cdrom/secure/ovf-env.xml && exit 17
        exit 0";
    let o = run(
        &Options::default().iso(&iso),
        tmp.path(),
        &["sh", "-c", script],
    );
    assert_ok(&o);
    assert_eq!(text(&o.stdout), format!("5\n{ovf}extra\n"));
}

#[test]
fn a_device_without_an_image_does_not_mount() {
    if sandbox::skip("a_device_without_an_image_does_not_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.iso");
    std::fs::write(&junk, vec![0u8; 64 * 1024]).unwrap();
    let o = run(
        &Options::default().iso(&junk),
        tmp.path(),
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/cdrom/secure; mount -o ro -t udf,iso9660 /dev/sr0 /mnt/cdrom/secure; \
             echo $?; grep -c /mnt/cdrom /proc/mounts",
        ],
    );
    assert_eq!(text(&o.stdout), "32\n0\n", "{}", text(&o.stderr));
}

#[test]
fn dmi_uuid_is_what_the_agent_reads() {
    if sandbox::skip("dmi_uuid_is_what_the_agent_reads") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let uuid = "7ADF4ED6-14C3-9A4E-8E21-4AA8E0B1D9F7";
    let o = run(
        &Options::default().dmi_uuid(uuid),
        tmp.path(),
        &[
            "cat",
            "/sys/class/dmi/id/product_uuid",
            "/sys/class/dmi/id/sys_vendor",
        ],
    );
    assert_ok(&o);
    assert_eq!(text(&o.stdout), format!("{uuid}\nMicrosoft Corporation\n"));
}

#[test]
fn binds_exit_status_and_kept_changes() {
    if sandbox::skip("binds_exit_status_and_kept_changes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let keep = tmp.path().join("keep");
    std::fs::create_dir(&logs).unwrap();
    let o = run(
        &Options::default()
            .bind(&logs, "/var/log/sbx")
            .keep_on_failure(&keep),
        tmp.path(),
        &[
            "sh",
            "-c",
            "echo written >/var/log/sbx/out && echo x >/etc/sbx-marker && exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(logs.join("out")).unwrap(),
        "written\n"
    );
    assert!(keep.join("etc/sbx-marker").exists());
    assert!(!Path::new("/etc/sbx-marker").exists());
}

#[test]
fn sigterm_stops_the_sandbox_and_cleans_up() {
    if sandbox::skip("sigterm_stops_the_sandbox_and_cleans_up") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let xml = tmp.path().join("ovf.xml");
    std::fs::write(&xml, "<Environment/>\n").unwrap();
    let iso = tmp.path().join("ovf.iso");
    Sandbox::make_ovf_iso(&xml, &iso, &[]).unwrap();
    let before = Host::now();
    let mut child = Sandbox::command(
        &Options::default().iso(&iso),
        &["sh", "-c", "sleep 60 & sleep 60"],
    )
    .stdin(std::process::Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_host_clean(&before, tmp.path());
}
