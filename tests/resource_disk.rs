//! The resource disk for real: a sparse image on a loop device, activated by
//! the library's own code path as root inside the namespace sandbox.
//!
//! How it runs: the one test here has two roles. On the host it makes the
//! image, attaches it (`losetup -P`: the sandbox has no loop-control), binds
//! the loop device into the sandbox's private /dev and re-executes its own
//! test binary there (`--exact <this test>`), with `WAAGENT_RS_RD_DEVICE`
//! naming the device. Inside, that variable makes the same test activate the
//! disk and assert on the result. No extra binary, no hidden subcommand.
//!
//! The sandbox has no udev, so the inside role plays its part: a thread makes
//! the /dev node of every partition the kernel announces for the loop device.
//! Swap is global to the kernel and loop devices too: the inside role turns
//! its swap off on the way out, pass or fail, and the host role's guard turns
//! off anything left (through a host mount of the partition), unmounts that
//! and detaches the loop device.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use sandbox::{Options, Sandbox};
use waagent::config::Config;
use waagent::env::resource_disk::{self, Report, SwapOutcome, SWAP_FILE, WARNING_FILE};
use waagent::os::{self, Cmd, CommandRunner, Env, Output, RunError, SystemRunner};

const TEST: &str = "activates_a_loop_disk_in_the_sandbox";
const DEVICE_VAR: &str = "WAAGENT_RS_RD_DEVICE";
const FS_VAR: &str = "WAAGENT_RS_RD_FS";
const MOUNT_POINT: &str = "/mnt/resource";
const IMAGE_SIZE: u64 = 512 << 20; // mkfs.xfs wants 300 MiB
const SWAP_MB: u64 = 64;

#[test]
fn activates_a_loop_disk_in_the_sandbox() {
    if let (Ok(dev), Ok(fs)) = (std::env::var(DEVICE_VAR), std::env::var(FS_VAR)) {
        inside(&dev, &fs);
        return;
    }
    if sandbox::skip(TEST) {
        return;
    }
    for fs in ["ext4", "xfs"] {
        host(fs);
    }
}

// ----- the host's role -----

fn host(fs: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("resource.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_SIZE))
        .unwrap();
    let out = Command::new("losetup")
        .args(["--partscan", "--find", "--show"])
        .arg(&image)
        .output()
        .expect("run losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let guard = LoopGuard {
        dev: dev.clone(),
        scratch: dir.path().join("host-mount"),
    };

    // The test binary runs again inside; its directory may not be visible
    // there (a checkout under /tmp: the sandbox has a fresh /tmp), so bind it.
    let exe = std::env::current_exe().unwrap();
    let out = Sandbox::command(
        &Options::default().bind(&dev, &dev).bind(&exe, &exe),
        &[
            &exe.to_string_lossy(),
            "--exact",
            TEST,
            "--nocapture",
            "--test-threads=1",
        ],
    )
    .env(DEVICE_VAR, &dev)
    .env(FS_VAR, fs)
    .stdin(Stdio::null())
    .output()
    .expect("run scripts/sandbox");
    let shown = format!(
        "{fs} on {dev}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(guard);
    assert!(out.status.success(), "{shown}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("inside: all checks passed"),
        "{shown}"
    );

    // Nothing left behind on the host: no swap, no mount, no loop device.
    let swaps = fs::read_to_string("/proc/swaps").unwrap();
    assert!(!swaps.contains(SWAP_FILE), "swap left on: {swaps}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dev), "mount left: {mounts}");
    let loops = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&*image.to_string_lossy()),
        "loop device left attached"
    );
}

/// Detaches the loop device, after turning off any swap the sandbox could
/// not: its file is reachable from here only through a new mount of the
/// partition (the sandbox's mount died with its namespace).
struct LoopGuard {
    dev: String,
    scratch: PathBuf,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
        let part = format!("{}p1", self.dev);
        if swaps.contains(SWAP_FILE) && Path::new(&part).exists() {
            let _ = fs::create_dir_all(&self.scratch);
            let mounted = Command::new("mount").arg(&part).arg(&self.scratch).status();
            if mounted.is_ok_and(|s| s.success()) {
                let _ = Command::new("swapoff")
                    .arg(self.scratch.join(SWAP_FILE))
                    .status();
                let _ = Command::new("umount").arg(&self.scratch).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

// ----- the sandbox's role -----

/// Runs every command for real and remembers it.
#[derive(Default)]
struct Tee(RefCell<Vec<String>>);

impl CommandRunner for Tee {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        self.0.borrow_mut().push(cmd.display());
        SystemRunner.run(cmd)
    }

    fn spawn(&self, cmd: &Cmd) -> Result<u32, RunError> {
        self.0.borrow_mut().push(cmd.display());
        SystemRunner.spawn(cmd)
    }

    fn start(
        &self,
        cmd: &Cmd,
        placement: &waagent::os::Placement,
        deadline: std::time::Instant,
    ) -> Result<waagent::os::Background, RunError> {
        self.0.borrow_mut().push(cmd.display());
        SystemRunner.start(cmd, placement, deadline)
    }
}

/// Turns the swap off and unmounts, however the checks end.
struct Off;

impl Drop for Off {
    fn drop(&mut self) {
        let _ = Command::new("swapoff")
            .arg(Path::new(MOUNT_POINT).join(SWAP_FILE))
            .status();
        let _ = Command::new("umount").arg(MOUNT_POINT).status();
    }
}

fn activate(dev: &str, fs: &str, swap_mb: u64) -> (Report, Vec<String>) {
    let mut c = Config::default();
    c.resource_disk_format = true;
    c.resource_disk_filesystem = fs.into();
    c.resource_disk_mount_point = MOUNT_POINT.into();
    c.resource_disk_mount_options = Some("noatime".into());
    c.resource_disk_enable_swap = true;
    c.resource_disk_swap_size_mb = swap_mb;
    let tee = Rc::new(Tee::default());
    let root = PathBuf::from("/");
    let env = Env {
        distro: os::detect_running(&root),
        root,
        runner: tee.clone(),
        config: c,
    };
    let osu = os::for_env(env);
    let report = resource_disk::activate(osu.as_ref(), Some(Path::new(dev)))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("ResourceDisk.Format=y");
    let cmds = tee.0.borrow().clone();
    println!("inside: {report}\n  commands: {cmds:?}");
    (report, cmds)
}

fn blkid(dev: &str, tag: &str) -> String {
    let o = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag, dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn is_swap_on(file: &Path) -> bool {
    fs::read_to_string("/proc/swaps")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&*file.to_string_lossy()))
}

fn inside(dev: &str, fs: &str) {
    udev_for(dev);
    let _off = Off;
    let name = dev.trim_start_matches("/dev/");
    let part = format!("{dev}p1");
    let mp = Path::new(MOUNT_POINT);
    let swap = mp.join(SWAP_FILE);

    // 1. A blank disk: partitioned, formatted, mounted, swap on.
    let (r, cmds) = activate(dev, fs, SWAP_MB);
    assert!(r.partitioned && r.formatted && r.mounted, "{r:?}");
    assert_eq!(r.partition, Path::new(&part));
    assert_eq!(
        r.swap,
        SwapOutcome::Created {
            bytes: SWAP_MB << 20
        }
    );
    assert!(cmds.iter().any(|c| c.starts_with("sfdisk")), "{cmds:?}");
    assert!(Path::new(&format!("/sys/class/block/{name}/{name}p1/partition")).exists());
    assert_eq!(blkid(&part, "TYPE"), fs);
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.starts_with(&format!("{part} {MOUNT_POINT} ")))
        .unwrap_or_else(|| panic!("{part} not on {MOUNT_POINT}:\n{mounts}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[2], fs, "{line}");
    assert!(fields[3].split(',').any(|o| o == "noatime"), "{line}");
    let warning = fs::read_to_string(mp.join(WARNING_FILE)).unwrap();
    assert!(warning.contains("TEMPORARY DISK"), "{warning}");
    let md = fs::metadata(&swap).unwrap();
    assert_eq!(
        (md.len(), md.permissions().mode() & 0o7777),
        (SWAP_MB << 20, 0o600)
    );
    assert!(
        is_swap_on(&swap),
        "{}",
        fs::read_to_string("/proc/swaps").unwrap()
    );
    let uuid = blkid(&part, "UUID");
    assert!(!uuid.is_empty());

    // 2. Again: it is all there, so nothing runs.
    let (r, cmds) = activate(dev, fs, SWAP_MB);
    assert!(!r.partitioned && !r.formatted && !r.mounted, "{r:?}");
    assert_eq!(r.swap, SwapOutcome::AlreadyOn);
    assert!(cmds.is_empty(), "{cmds:?}");

    // 3. A reboot that kept the disk: unmounted, swap off, a file on it.
    fs::write(mp.join("marker"), "kept").unwrap();
    assert!(Command::new("swapoff")
        .arg(&swap)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("umount").arg(mp).status().unwrap().success());
    let (r, cmds) = activate(dev, fs, SWAP_MB);
    assert!(!r.partitioned && !r.formatted && r.mounted, "{r:?}");
    assert_eq!(r.swap, SwapOutcome::TurnedOn);
    assert!(
        !cmds
            .iter()
            .any(|c| c.starts_with("mkfs") || c.starts_with("sfdisk")),
        "{cmds:?}"
    );
    assert_eq!(fs::read_to_string(mp.join("marker")).unwrap(), "kept");
    assert_eq!(blkid(&part, "UUID"), uuid);
    assert!(is_swap_on(&swap));

    // 4. Another SwapSizeMB: the file is replaced at the new size.
    let (r, _) = activate(dev, fs, SWAP_MB / 2);
    assert_eq!(
        r.swap,
        SwapOutcome::Recreated {
            bytes: (SWAP_MB / 2) << 20
        }
    );
    assert_eq!(fs::metadata(&swap).unwrap().len(), (SWAP_MB / 2) << 20);
    assert!(is_swap_on(&swap));
    assert_eq!(fs::read_to_string(mp.join("marker")).unwrap(), "kept");
    println!("inside: all checks passed");
}

/// What udev would do: make /dev nodes for the partitions of `dev` that the
/// kernel knows (the sandbox's /dev is a private tmpfs).
fn udev_for(dev: &str) {
    let name = dev.trim_start_matches("/dev/").to_string();
    std::thread::spawn(move || loop {
        let sys = PathBuf::from(format!("/sys/class/block/{name}"));
        for e in fs::read_dir(&sys).into_iter().flatten().flatten() {
            let node = Path::new("/dev").join(e.file_name());
            if !e.path().join("partition").exists() || node.exists() {
                continue;
            }
            if let Ok(numbers) = fs::read_to_string(e.path().join("dev")) {
                if let Some((major, minor)) = numbers.trim().split_once(':') {
                    let _ = Command::new("mknod")
                        .arg(&node)
                        .args(["b", major, minor])
                        .status();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    });
}
