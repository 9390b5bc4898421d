//! The resource disk's decisions, and the commands it runs on a fixture
//! system (sysfs, /proc and /dev in a temporary root, a recording runner).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::os::testing::write;
use crate::os::Flavour;
use crate::os::{for_env, Cmd, Output, RecordingRunner};

const RESOURCE_ID: &str = "{00000000-0001-8899-0000-000000000000}";
const OS_DISK_ID: &str = "{00000000-0000-8899-0000-000000000000}";

struct Fixture {
    root: tempfile::TempDir,
    runner: Rc<RecordingRunner>,
    os: Box<dyn OsUtil>,
}

impl Fixture {
    fn path(&self, abs: &str) -> PathBuf {
        self.root.path().join(abs.trim_start_matches('/'))
    }

    fn write(&self, abs: &str, text: &str) {
        write(self.root.path(), abs, text);
    }

    fn mp(&self) -> PathBuf {
        self.path("/mnt/resource")
    }

    fn run(&self) -> Result<Option<Report>, Error> {
        let opts = Options {
            partition_wait: Duration::from_millis(300),
        };
        activate_with(self.os.as_ref(), None, &opts)
    }

    /// The commands run, with the temporary root shown as `ROOT`.
    fn lines(&self) -> Vec<String> {
        let root = self.root.path().to_string_lossy().into_owned();
        self.runner
            .lines()
            .iter()
            .map(|l| l.replace(&root, "ROOT"))
            .collect()
    }

    /// The kernel learns of /dev/sdb1 (what sfdisk or partx do for real).
    fn add_sdb1(&self) {
        add_sdb1(self.root.path());
    }
}

fn add_sdb1(root: &Path) {
    write(root, "/sys/class/block/sdb/sdb1/partition", "1\n");
    write(root, "/dev/sdb1", "");
}

fn config(root: &Path) -> Config {
    let mut c = Config::default();
    c.resource_disk_format = true;
    c.resource_disk_filesystem = "ext4".into();
    c.resource_disk_mount_point = root.join("mnt/resource");
    c.resource_disk_mount_options = Some("noatime".into());
    c.resource_disk_enable_swap = true;
    c.resource_disk_swap_size_mb = 2;
    c
}

/// A generation-1 Linux VM: the OS disk sda (mounted on /) and a blank sdb
/// on VMBus device 00000000-0001-…; `tweak` adjusts the configuration.
fn linux(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let vmbus = "/sys/bus/vmbus/devices";
    write(
        r,
        &format!("{vmbus}/os/device_id"),
        format!("{OS_DISK_ID}\n"),
    );
    fs::create_dir_all(r.join("sys/bus/vmbus/devices/os/host0/target0:0:0/0:0:0:0/block/sda"))
        .unwrap();
    write(
        r,
        &format!("{vmbus}/res/device_id"),
        format!("{RESOURCE_ID}\n"),
    );
    fs::create_dir_all(r.join("sys/bus/vmbus/devices/res/host1/target1:0:1/1:0:1:0/block/sdb"))
        .unwrap();
    write(r, "/sys/class/block/sdb/size", "41943040\n");
    write(r, "/dev/sdb", "");
    write(
        r,
        "/proc/mounts",
        "/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n",
    );
    write(
        r,
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
    );
    let mut c = config(r);
    tweak(&mut c);
    fixture(root, c, Flavour::Default)
}

fn fixture(root: tempfile::TempDir, config: Config, flavour: Flavour) -> Fixture {
    let runner = Rc::new(RecordingRunner::new());
    let mut env = crate::os::testing::env(root.path(), flavour, runner.clone());
    env.config = config;
    env.distro.version = "1".into();
    Fixture {
        os: for_env(env),
        root,
        runner,
    }
}

/// sfdisk (writing a table, not a type) makes sdb1 appear, as the kernel does.
fn sfdisk_adds_partition(f: &Fixture) {
    let root = f.root.path().to_path_buf();
    f.runner.respond(move |c: &Cmd| {
        let argv = c.argv();
        (c.program == "sfdisk" && !argv.contains(&"--part-type".to_string())).then(|| {
            add_sdb1(&root);
            Ok(Output::ok(""))
        })
    });
}

fn blank() -> Output {
    Output::failed(2, "")
}

// ----- decisions -----

#[test]
fn partitioning_decisions() {
    let blank = Probe::default();
    let dos = Probe {
        table: Some("dos".into()),
        fs: None,
    };
    let whole = Probe {
        table: None,
        fs: Some("ext4".into()),
    };
    let gib = 1u64 << 30;
    assert_eq!(
        decide_partitioning(&blank, false, Some(300 * gib)),
        Ok(Partitioning::Create(PartitionTable::Dos))
    );
    assert_eq!(
        decide_partitioning(&blank, false, None),
        Ok(Partitioning::Create(PartitionTable::Dos))
    );
    assert_eq!(
        decide_partitioning(&blank, false, Some(2048 * gib + 1)),
        Ok(Partitioning::Create(PartitionTable::Gpt))
    );
    assert_eq!(
        decide_partitioning(&dos, false, None),
        Ok(Partitioning::UseExisting)
    );
    assert_eq!(
        decide_partitioning(&blank, true, None),
        Ok(Partitioning::UseExisting)
    );
    assert!(decide_partitioning(&whole, false, None)
        .unwrap_err()
        .contains("whole disk holds ext4"));
}

#[test]
fn formatting_decisions() {
    assert_eq!(decide_formatting(None, "ext4"), Formatting::Make);
    assert_eq!(
        decide_formatting(Some("ntfs"), "ext4"),
        Formatting::ReplaceNtfs
    );
    assert_eq!(
        decide_formatting(Some("ext4"), "ext4"),
        Formatting::Keep("ext4".into())
    );
    // Never reformat a file system, whatever the configuration says now.
    assert_eq!(
        decide_formatting(Some("xfs"), "ext4"),
        Formatting::Keep("xfs".into())
    );
    assert_eq!(
        decide_formatting(Some("crypto_LUKS"), "ext4"),
        Formatting::Keep("crypto_LUKS".into())
    );
}

#[test]
fn swap_decisions() {
    let mb = 1 << 20;
    let reg = |size, mode| SwapFileState::Regular { size, mode };
    assert_eq!(
        decide_swap(mb, SwapFileState::Missing, false),
        SwapPlan::Create
    );
    assert_eq!(decide_swap(mb, reg(mb, 0o600), true), SwapPlan::Nothing);
    assert_eq!(decide_swap(mb, reg(mb, 0o644), true), SwapPlan::FixMode);
    assert_eq!(
        decide_swap(mb, reg(mb, 0o600), false),
        SwapPlan::TurnOn { fix_mode: false }
    );
    assert_eq!(
        decide_swap(mb, reg(mb, 0o640), false),
        SwapPlan::TurnOn { fix_mode: true }
    );
    assert_eq!(
        decide_swap(mb, reg(2 * mb, 0o600), true),
        SwapPlan::Replace { turn_off: true }
    );
    assert_eq!(
        decide_swap(mb, reg(0, 0o600), false),
        SwapPlan::Replace { turn_off: false }
    );
    assert!(matches!(
        decide_swap(mb, SwapFileState::Other, false),
        SwapPlan::Refuse(_)
    ));
}

type Tweak = Box<dyn Fn(&mut Config)>;

#[test]
fn settings_refuse_bad_values_before_anything_runs() {
    let bad: Vec<(Tweak, &str)> = vec![
        (
            Box::new(|c| c.resource_disk_filesystem = "ntfs".into()),
            "ResourceDisk.Filesystem=\"ntfs\" is not supported on",
        ),
        (
            Box::new(|c| c.resource_disk_filesystem = "-V".into()),
            "ResourceDisk.Filesystem=\"-V\"",
        ),
        (
            Box::new(|c| c.resource_disk_filesystem = "ext4 -E x".into()),
            "not supported",
        ),
        (
            Box::new(|c| c.resource_disk_filesystem = "ufs".into()),
            "(use one of ext3, ext4, xfs, btrfs)",
        ),
        (
            Box::new(|c| c.resource_disk_mount_point = "mnt".into()),
            "must be an absolute path",
        ),
        (
            Box::new(|c| c.resource_disk_mount_point = "/".into()),
            "must be an absolute path other than /",
        ),
        (
            Box::new(|c| c.resource_disk_mount_point = "/mnt/../etc".into()),
            "ResourceDisk.MountPoint",
        ),
        (
            Box::new(|c| c.resource_disk_mount_options = Some("-oremount".into())),
            "ResourceDisk.MountOptions",
        ),
        (
            Box::new(|c| c.resource_disk_mount_options = Some("a b".into())),
            "ResourceDisk.MountOptions",
        ),
        (
            Box::new(|c| c.resource_disk_swap_size_mb = u64::MAX),
            "too large",
        ),
    ];
    for (tweak, want) in bad {
        let f = linux(tweak);
        let err = f.run().unwrap_err();
        assert_eq!(err.step, Step::Settings);
        let msg = err.to_string();
        assert!(
            msg.starts_with("resource disk: checking the settings: "),
            "{msg}"
        );
        assert!(msg.contains(want), "{msg} lacks {want}");
        assert!(f.lines().is_empty(), "{:?}", f.lines());
    }
    let d = tempfile::tempdir().unwrap();
    let os = |flavour| {
        crate::os::for_env(crate::os::testing::env(
            d.path(),
            flavour,
            Rc::new(RecordingRunner::new()),
        ))
    };
    for fs in ["ext3", "ext4", "xfs", "btrfs"] {
        let mut c = Config::default();
        c.resource_disk_filesystem = fs.into();
        assert!(
            Settings::from_config(&c, &*os(Flavour::Suse)).is_ok(),
            "{fs}"
        );
    }
    let mut c = Config::default();
    c.resource_disk_filesystem = "ufs".into();
    assert!(Settings::from_config(&c, &*os(Flavour::FreeBsd)).is_ok());
    let c = Config::default(); // ext3, the shipped default, is not for FreeBSD
    let err = Settings::from_config(&c, &*os(Flavour::FreeBsd)).unwrap_err();
    assert_eq!(
        err,
        "ResourceDisk.Filesystem=\"ext3\" is not supported on FreeBSD (use one of ufs)"
    );
}

#[test]
fn format_off_does_nothing() {
    let f = linux(|c| c.resource_disk_format = false);
    assert_eq!(f.run().unwrap(), None);
    assert!(f.lines().is_empty());
}

// ----- finding the disk -----

#[test]
fn finds_the_disk_on_vmbus_or_through_the_udev_link() {
    let f = linux(|_| {});
    assert_eq!(f.os.resource_disk().unwrap(), Path::new("/dev/sdb"));

    // Old kernels: block:sdc.
    let f = linux(|_| {});
    fs::remove_dir_all(f.path("/sys/bus/vmbus/devices/res/host1")).unwrap();
    fs::create_dir_all(f.path("/sys/bus/vmbus/devices/res/host1/target1:0:1/1:0:1:0/block:sdc"))
        .unwrap();
    assert_eq!(f.os.resource_disk().unwrap(), Path::new("/dev/sdc"));

    // No VMBus entry: udev's link, resolved.
    let f = linux(|_| {});
    fs::remove_dir_all(f.path("/sys/bus/vmbus")).unwrap();
    fs::create_dir_all(f.path("/dev/disk/azure")).unwrap();
    std::os::unix::fs::symlink("../../sdb", f.path("/dev/disk/azure/resource")).unwrap();
    assert_eq!(f.os.resource_disk().unwrap(), Path::new("/dev/sdb"));

    // Neither: a clear error, which activate reports as the Find step.
    fs::remove_file(f.path("/dev/disk/azure/resource")).unwrap();
    let err = f.run().unwrap_err();
    assert_eq!(err.step, Step::Find);
    assert!(
        err.to_string()
            .starts_with("resource disk: finding the disk: no resource disk"),
        "{err}"
    );
    assert!(f.lines().is_empty());
}

// ----- Linux command sequences -----

#[test]
fn blank_disk_is_partitioned_formatted_mounted_with_swap() {
    let f = linux(|_| {});
    f.runner.push("blkid", blank());
    sfdisk_adds_partition(&f);
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        [
            "blkid -p -o export /dev/sdb",
            "sfdisk --quiet /dev/sdb",
            "mkfs.ext4 -F /dev/sdb1",
            "mount -t ext4 -o noatime /dev/sdb1 ROOT/mnt/resource",
            "mkswap ROOT/mnt/resource/swapfile",
            "swapon ROOT/mnt/resource/swapfile",
        ]
    );
    // One MBR partition over the whole disk, through standard input.
    assert_eq!(
        f.runner.calls()[1].stdin.as_deref(),
        Some(&b"label: dos\ntype=83\n"[..])
    );
    assert_eq!(
        report,
        Report {
            disk: "/dev/sdb".into(),
            partition: "/dev/sdb1".into(),
            mount_point: f.mp(),
            filesystem: "ext4".into(),
            partitioned: true,
            formatted: true,
            mounted: true,
            swap: SwapOutcome::Created { bytes: 2 << 20 },
        }
    );
    let shown = report
        .to_string()
        .replace(&*f.root.path().to_string_lossy(), "ROOT");
    assert_eq!(
        shown,
        "resource disk /dev/sdb1 (ext4) on ROOT/mnt/resource: partitioned, formatted, mounted; 2 MiB swap created"
    );
    let warning = fs::read_to_string(f.mp().join(WARNING_FILE)).unwrap();
    assert!(warning.starts_with("WARNING: THIS IS A TEMPORARY DISK."));
    let md = fs::metadata(f.mp().join(SWAP_FILE)).unwrap();
    assert_eq!(
        (md.len(), md.permissions().mode() & 0o7777),
        (2 << 20, 0o600)
    );
    assert!(fs::read(f.mp().join(SWAP_FILE))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert_eq!(
        fs::metadata(f.mp()).unwrap().permissions().mode() & 0o7777,
        0o755
    );
}

#[test]
fn kernel_without_the_partition_is_told_with_partx() {
    let f = linux(|c| c.resource_disk_enable_swap = false);
    f.runner.push(
        "blkid",
        Output::ok("DEVNAME=/dev/sdb\nPTUUID=1ae7708e\nPTTYPE=dos\n"),
    );
    f.runner.push(
        "blkid",
        Output::ok("DEVNAME=/dev/sdb1\nPART_ENTRY_TYPE=0x83\n"),
    );
    let root = f.root.path().to_path_buf();
    f.runner.respond(move |c: &Cmd| {
        (c.program == "partx").then(|| {
            add_sdb1(&root);
            Ok(Output::ok(""))
        })
    });
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        [
            "blkid -p -o export /dev/sdb",
            "partx --add --nr 1 /dev/sdb",
            "blkid -p -o export /dev/sdb1",
            "mkfs.ext4 -F /dev/sdb1",
            "mount -t ext4 -o noatime /dev/sdb1 ROOT/mnt/resource",
        ]
    );
    assert!(!report.partitioned && report.formatted);
    assert_eq!(report.swap, SwapOutcome::Disabled);
}

#[test]
fn formatted_disk_is_mounted_as_it_is_never_reformatted() {
    let f = linux(|c| c.resource_disk_mount_options = None);
    f.add_sdb1();
    f.runner.push("blkid", Output::ok("PTTYPE=dos\n"));
    f.runner.push(
        "blkid",
        Output::ok("UUID=1234\nTYPE=xfs\nUSAGE=filesystem\n"),
    );
    // The previous boot's swap file, still the right size.
    fs::create_dir_all(f.mp()).unwrap();
    fs::write(f.mp().join(SWAP_FILE), vec![0u8; 2 << 20]).unwrap();
    fs::set_permissions(f.mp().join(SWAP_FILE), fs::Permissions::from_mode(0o600)).unwrap();
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        [
            "blkid -p -o export /dev/sdb",
            "blkid -p -o export /dev/sdb1",
            "mount -t xfs /dev/sdb1 ROOT/mnt/resource",
            "mkswap ROOT/mnt/resource/swapfile",
            "swapon ROOT/mnt/resource/swapfile",
        ]
    );
    assert_eq!(
        (report.formatted, report.filesystem.as_str()),
        (false, "xfs")
    );
    assert_eq!(report.swap, SwapOutcome::TurnedOn);
}

#[test]
fn azure_ntfs_is_replaced_and_the_mbr_type_set() {
    let f = linux(|c| c.resource_disk_enable_swap = false);
    f.add_sdb1();
    f.runner.push("blkid", Output::ok("PTTYPE=dos\n"));
    f.runner
        .push("blkid", Output::ok("LABEL=Temporary Storage\nTYPE=ntfs\n"));
    f.runner
        .push("sfdisk", Output::failed(1, "sfdisk: unsupported"));
    let report = f.run().unwrap().unwrap();
    // The type change failing is only a warning.
    assert_eq!(
        f.lines(),
        [
            "blkid -p -o export /dev/sdb",
            "blkid -p -o export /dev/sdb1",
            "sfdisk --no-tell-kernel --part-type /dev/sdb 1 83",
            "mkfs.ext4 -F /dev/sdb1",
            "mount -t ext4 -o noatime /dev/sdb1 ROOT/mnt/resource",
        ]
    );
    assert!(report.formatted);
}

#[test]
fn mounted_disk_changes_nothing() {
    let f = linux(|_| {});
    f.add_sdb1();
    let mp = f.mp();
    f.write(
        "/proc/mounts",
        &format!(
            "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 {} ext4 rw,noatime 0 0\n",
            mp.display()
        ),
    );
    f.write(
        "/proc/swaps",
        &format!(
            "Filename\tType\tSize\tUsed\tPriority\n{}/swapfile file 2044 0 -2\n",
            mp.display()
        ),
    );
    fs::create_dir_all(&mp).unwrap();
    fs::write(mp.join(SWAP_FILE), vec![0u8; 2 << 20]).unwrap();
    fs::set_permissions(mp.join(SWAP_FILE), fs::Permissions::from_mode(0o600)).unwrap();
    fsutil_write(&mp.join(WARNING_FILE));
    let before = fs::metadata(mp.join(WARNING_FILE)).unwrap();
    let report = f.run().unwrap().unwrap();
    assert!(f.lines().is_empty(), "{:?}", f.lines());
    assert!(!report.mounted && !report.formatted && !report.partitioned);
    assert_eq!(report.swap, SwapOutcome::AlreadyOn);
    assert!(
        report
            .to_string()
            .ends_with(": already mounted; swap already on"),
        "{report}"
    );
    // The notice was not rewritten.
    let after = fs::metadata(mp.join(WARNING_FILE)).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&before),
        std::os::unix::fs::MetadataExt::ino(&after)
    );
}

fn fsutil_write(p: &Path) {
    crate::fsutil::write_atomic(p, DATA_LOSS_WARNING.as_bytes(), 0o644).unwrap();
}

#[test]
fn mounted_disk_gets_its_swap_turned_on() {
    let f = linux(|_| {});
    f.add_sdb1();
    // Mounted through udev's link elsewhere: found, used where it is.
    fs::create_dir_all(f.path("/dev/disk/azure")).unwrap();
    std::os::unix::fs::symlink("../../sdb1", f.path("/dev/disk/azure/resource-part1")).unwrap();
    let other = f.path("/mnt");
    fs::create_dir_all(&other).unwrap();
    f.write(
        "/proc/mounts",
        &format!(
            "/dev/disk/azure/resource-part1 {} ext4 rw 0 0\n",
            other.display()
        ),
    );
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        ["mkswap ROOT/mnt/swapfile", "swapon ROOT/mnt/swapfile"]
    );
    assert_eq!(report.mount_point, other);
    assert!(other.join(WARNING_FILE).exists());
}

#[test]
fn swap_sizes() {
    // Enabled with size 0: logged, nothing done, no error (2.2.5 wedged).
    let f = linux(|c| c.resource_disk_swap_size_mb = 0);
    f.runner.push("blkid", blank());
    sfdisk_adds_partition(&f);
    let report = f.run().unwrap().unwrap();
    assert_eq!(report.swap, SwapOutcome::ZeroSize);
    assert!(
        !f.lines().iter().any(|l| l.contains("swap")),
        "{:?}",
        f.lines()
    );
    assert!(!f.mp().join(SWAP_FILE).exists());

    // Active with another size: off, replaced, on.
    let f = linux(|c| c.resource_disk_swap_size_mb = 3);
    f.add_sdb1();
    let mp = f.mp();
    f.write(
        "/proc/mounts",
        &format!("/dev/sdb1 {} ext4 rw 0 0\n", mp.display()),
    );
    f.write(
        "/proc/swaps",
        &format!(
            "Filename Type Size Used Priority\n{}/swapfile file 1020 0 -2\n",
            mp.display()
        ),
    );
    fs::create_dir_all(&mp).unwrap();
    fs::write(mp.join(SWAP_FILE), vec![0u8; 1 << 20]).unwrap();
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        [
            "swapoff ROOT/mnt/resource/swapfile",
            "mkswap ROOT/mnt/resource/swapfile",
            "swapon ROOT/mnt/resource/swapfile"
        ]
    );
    assert_eq!(report.swap, SwapOutcome::Recreated { bytes: 3 << 20 });
    assert_eq!(fs::metadata(mp.join(SWAP_FILE)).unwrap().len(), 3 << 20);

    // Active, right size, but world-readable: only the mode changes.
    let f = linux(|c| c.resource_disk_swap_size_mb = 1);
    f.add_sdb1();
    let mp = f.mp();
    f.write(
        "/proc/mounts",
        &format!("/dev/sdb1 {} ext4 rw 0 0\n", mp.display()),
    );
    f.write(
        "/proc/swaps",
        &format!(
            "Filename Type Size Used Priority\n{}/swapfile file 1020 0 -2\n",
            mp.display()
        ),
    );
    fs::create_dir_all(&mp).unwrap();
    fs::write(mp.join(SWAP_FILE), vec![0u8; 1 << 20]).unwrap();
    fs::set_permissions(mp.join(SWAP_FILE), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(f.run().unwrap().unwrap().swap, SwapOutcome::AlreadyOn);
    assert!(f.lines().is_empty());
    assert_eq!(
        fs::metadata(mp.join(SWAP_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // A symlink where the swap file goes is refused, not followed.
    let f = linux(|_| {});
    f.add_sdb1();
    let mp = f.mp();
    f.write(
        "/proc/mounts",
        &format!("/dev/sdb1 {} ext4 rw 0 0\n", mp.display()),
    );
    fs::create_dir_all(&mp).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", mp.join(SWAP_FILE)).unwrap();
    let err = f.run().unwrap_err();
    assert_eq!(err.step, Step::Swap);
    assert!(err.to_string().contains("is not a regular file"), "{err}");

    // btrfs: the empty file is made no-copy-on-write before it is filled.
    let f = linux(|c| c.resource_disk_filesystem = "btrfs".into());
    f.runner.push("blkid", blank());
    sfdisk_adds_partition(&f);
    f.run().unwrap().unwrap();
    assert_eq!(
        f.lines()[2..],
        [
            "mkfs.btrfs -f /dev/sdb1",
            "mount -t btrfs -o noatime /dev/sdb1 ROOT/mnt/resource",
            "chattr +C ROOT/mnt/resource/swapfile",
            "mkswap ROOT/mnt/resource/swapfile",
            "swapon ROOT/mnt/resource/swapfile"
        ]
    );

    // Encryption is FreeBSD's: refused on Linux, and the file is left unused.
    let f = linux(|c| c.resource_disk_enable_swap_encryption = true);
    f.runner.push("blkid", blank());
    sfdisk_adds_partition(&f);
    let err = f.run().unwrap_err();
    assert_eq!(err.step, Step::Swap);
    assert!(
        err.to_string().contains("supported on FreeBSD only"),
        "{err}"
    );
}

#[test]
fn refusals_and_failures_name_the_step_and_device() {
    // A file system on the whole disk: not partitioned over.
    let f = linux(|_| {});
    f.runner.push("blkid", Output::ok("UUID=1\nTYPE=ext4\n"));
    let err = f.run().unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource disk: partitioning /dev/sdb: the whole disk holds ext4 and no partition table; not partitioning over it"
    );
    assert_eq!(f.lines(), ["blkid -p -o export /dev/sdb"]);

    // mkfs fails.
    let f = linux(|_| {});
    f.runner.push("blkid", blank());
    sfdisk_adds_partition(&f);
    f.runner.push(
        "mkfs.ext4",
        Output::failed(1, "mkfs.ext4: Device size reported to be zero."),
    );
    let err = f.run().unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource disk: formatting /dev/sdb1: `mkfs.ext4 -F /dev/sdb1` failed with exit code 1: mkfs.ext4: Device size reported to be zero."
    );
    assert!(!f.lines().iter().any(|l| l.starts_with("mount")));

    // The partition never shows up in /dev.
    let f = linux(|_| {});
    f.runner.push("blkid", Output::ok("PTTYPE=gpt\n"));
    write(f.root.path(), "/sys/class/block/sdb/sdb1/partition", "1\n");
    let err = f.run().unwrap_err();
    assert_eq!(err.step, Step::Partition);
    assert_eq!(err.device.as_deref(), Some(Path::new("/dev/sdb1")));
    assert!(
        err.to_string().contains("did not appear within 300ms"),
        "{err}"
    );

    // Something else already on the mount point.
    let f = linux(|_| {});
    f.write(
        "/proc/mounts",
        &format!("tmpfs {} tmpfs rw 0 0\n", f.mp().display()),
    );
    let err = f.run().unwrap_err();
    assert_eq!(err.step, Step::Mount);
    assert!(
        err.to_string().ends_with("already has tmpfs mounted on it"),
        "{err}"
    );
    assert!(f.lines().is_empty());

    // The disk device missing.
    let f = linux(|_| {});
    fs::remove_file(f.path("/dev/sdb")).unwrap();
    let err = f.run().unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource disk: inspecting /dev/sdb: /dev/sdb does not exist"
    );
}

// ----- FreeBSD -----

fn freebsd(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "/dev/da1s1", "");
    let mut c = config(root.path());
    c.resource_disk_filesystem = "ufs".into();
    c.resource_disk_mount_options = None;
    tweak(&mut c);
    let f = fixture(root, c, Flavour::FreeBsd);
    f.runner.push(
        "sysctl",
        Output::ok(
            "dev.storvsc.0.%pnpinfo: classid=32412632-86cb-44a2-9b5c-50d1417354f5 deviceid=00000000-0000-8899-0000-000000000000\n\
             dev.storvsc.1.%pnpinfo: classid=32412632-86cb-44a2-9b5c-50d1417354f5 deviceid=00000000-0001-8899-0000-000000000000\n",
        ),
    );
    f.runner.push(
        "camcontrol",
        Output::ok("scbus0 on ata0 bus 0\nscbus2 on blkvsc0 bus 0\nscbus3 on blkvsc1 bus 0\n"),
    );
    f.runner.push(
        "camcontrol",
        Output::ok(
            "<Msft Virtual Disk 1.0>            at scbus2 target 0 lun 0 (da0,pass1)\n\
             <Msft Virtual Disk 1.0>            at scbus3 target 1 lun 0 (pass2,da1)\n",
        ),
    );
    f.runner.push(
        "mount",
        Output::ok("/dev/gpt/rootfs\t/\tufs\trw\t1 1\ndevfs\t/dev\tdevfs\trw\t0 0\n"),
    );
    f
}

#[test]
fn freebsd_blank_disk() {
    let f = freebsd(|_| {});
    let none = || Output::failed(1, "gpart: No such geom: da1.");
    f.runner.push("gpart", none());
    f.runner.push(
        "fstyp",
        Output::failed(1, "fstyp: /dev/da1: filesystem not recognized"),
    );
    f.runner.push("gpart", none());
    f.runner.push(
        "diskinfo",
        Output::ok("da1\t512\t34359738368\t67108864\t0\t0\t66576\t16\t63\n"),
    );
    f.runner.push("gpart", Output::ok("da1 created\n"));
    f.runner.push("gpart", Output::ok("da1s1 added\n"));
    f.runner.push(
        "gpart",
        Output::ok("=>      63  67108801  da1  MBR  (32G)\n        63      1985       - free -  (993K)\n      2048  67106816  da1s1  freebsd  (32G)\n"),
    );
    f.runner.push(
        "swapctl",
        Output::ok("Device:       1024-blocks     Used:\n"),
    );
    f.runner.push("mdconfig", Output::ok(""));
    f.runner.push("mdconfig", Output::ok("md0\n"));
    let report = f.run().unwrap().unwrap();
    assert_eq!(
        f.lines(),
        [
            "sysctl dev.storvsc",
            "camcontrol devlist -b",
            "camcontrol devlist",
            "mount -p",
            "gpart show -p da1",
            "fstyp /dev/da1",
            "gpart show -p da1",
            "diskinfo da1",
            "gpart create -s MBR da1",
            "gpart add -t freebsd da1",
            "gpart show -p da1",
            "newfs -U /dev/da1s1",
            "mount -t ufs /dev/da1s1 ROOT/mnt/resource",
            "swapctl -l",
            "mdconfig -l -v",
            "mdconfig -a -t vnode -f ROOT/mnt/resource/swapfile",
            "swapon /dev/md0",
        ]
    );
    assert_eq!(report.partition, Path::new("/dev/da1s1"));
    assert!(report.partitioned && report.formatted && report.mounted);
}

#[test]
fn freebsd_azure_gpt_disk_mounted_with_encrypted_swap_on_already() {
    let f = freebsd(|c| c.resource_disk_enable_swap_encryption = true);
    let mp = f.mp();
    // Azure's GPT: p1 is Microsoft's reserved partition, p2 the data.
    f.runner.push(
        "gpart",
        Output::ok("=>      40  67108784  da1  GPT  (32G)\n        40     32768    da1p1  ms-reserved  (16M)\n     32808  67075984  da1p2  freebsd-ufs  (32G)\n"),
    );
    f.runner.push(
        "mount",
        Output::ok(&format!(
            "/dev/gpt/rootfs\t/\tufs\trw\t1 1\n/dev/da1p2\t{}\tufs\trw\t2 2\n",
            mp.display()
        )),
    );
    // The queue hands out the fixture's first `mount -p` answer first: drop it.
    let _ = f.os.mounts();
    fs::create_dir_all(&mp).unwrap();
    fs::write(mp.join(SWAP_FILE), vec![0u8; 2 << 20]).unwrap();
    fs::set_permissions(mp.join(SWAP_FILE), fs::Permissions::from_mode(0o600)).unwrap();
    f.runner.push(
        "swapctl",
        Output::ok("Device:       1024-blocks     Used:\n/dev/md0.eli     2048         0\n"),
    );
    f.runner.push(
        "mdconfig",
        Output::ok(&format!(
            "md0\tvnode\t   2048K\t{}/swapfile\n",
            mp.display()
        )),
    );
    let report = f.run().unwrap().unwrap();
    assert_eq!(report.partition, Path::new("/dev/da1p2"));
    assert_eq!(report.swap, SwapOutcome::AlreadyOn);
    assert_eq!(
        f.lines()[1..],
        [
            "sysctl dev.storvsc",
            "camcontrol devlist -b",
            "camcontrol devlist",
            "mount -p",
            "gpart show -p da1",
            "swapctl -l",
            "mdconfig -l -v",
        ]
    );
}

#[test]
fn freebsd_encrypted_swap_commands() {
    let f = freebsd(|_| {});
    f.runner.push("mdconfig", Output::ok("md4\n"));
    f.os.swap_on_encrypted(Path::new("/mnt/resource/swapfile"))
        .unwrap();
    f.runner.push(
        "swapctl",
        Output::ok(
            "Device:       1024-blocks     Used:\n/dev/md4.eli  2048  0\n/dev/ada0p3  4096 0\n",
        ),
    );
    f.runner.push(
        "mdconfig",
        Output::ok("md4\tvnode\t   2048K\t/mnt/resource/swapfile\n"),
    );
    f.os.swap_off(Path::new("/mnt/resource/swapfile")).unwrap();
    let lines = f.lines();
    assert_eq!(
        lines[..],
        [
            "mdconfig -a -t vnode -f /mnt/resource/swapfile",
            "chmod 0600 /dev/md4",
            "kldload -n aesni",
            "kldload -n cryptodev",
            "kldload -n geom_eli",
            "geli onetime -e AES-XTS -l 256 -d /dev/md4",
            "swapon /dev/md4.eli",
            "swapctl -l",
            "mdconfig -l -v",
            "swapoff /dev/md4.eli",
            "mdconfig -d -u 4",
        ]
    );
}

#[test]
fn freebsd_periphlist_fallback_and_wrong_filesystem() {
    let f = fixture(
        tempfile::tempdir().unwrap(),
        Config::default(),
        Flavour::FreeBsd,
    );
    f.runner.push(
        "sysctl",
        Output::ok(
            "dev.storvsc.0.%pnpinfo: classid=x deviceid=00000000-0000-8899-0000-000000000000\n",
        ),
    );
    f.runner.push(
        "camcontrol",
        Output::failed(1, "camcontrol: no peripherals at 2:1:0"),
    );
    f.runner.push("camcontrol", Output::ok("pass3: generation: 4 index: 1 status: MORE\nda2: generation: 4 index: 2 status: LAST\n"));
    assert_eq!(f.os.resource_disk().unwrap(), Path::new("/dev/da2"));
    assert_eq!(
        f.lines(),
        [
            "sysctl dev.storvsc",
            "camcontrol periphlist 2:1:0",
            "camcontrol periphlist 3:1:0"
        ]
    );
}
