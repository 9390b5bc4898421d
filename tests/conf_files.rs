//! The shipped conf/ files parse cleanly and differ from the generic file
//! exactly as §17.3 of PROTOCOL.md says each distro's does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use waagent::config::Config;

fn conf(name: &str) -> (Config, PathBuf) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name);
    let (c, warnings) = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
    (c, path)
}

/// Options whose value differs from the generic file's.
fn differences(name: &str) -> BTreeMap<&'static str, String> {
    let generic: BTreeMap<_, _> = conf("waagent.conf").0.entries().into_iter().collect();
    conf(name)
        .0
        .entries()
        .into_iter()
        .filter(|(k, v)| generic.get(k) != Some(v))
        .collect()
}

fn map(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[test]
fn every_conf_file_parses_without_warnings() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") {
            conf(&name);
            n += 1;
        }
    }
    assert_eq!(n, 7, "generic + six distro files");
}

#[test]
fn generic_file_ships_waagents_values() {
    let (c, _) = conf("waagent.conf");
    assert!(c.delete_root_password);
    assert!(c.regenerate_ssh_host_key_pair);
    assert!(c.monitor_host_name);
    assert!(c.resource_disk_format);
    assert_eq!(c.resource_disk_filesystem, "ext4");
    assert_eq!(c.root_device_scsi_timeout, Some(300));
    assert!(c.enable_firewall);
    assert_eq!(c.enable_firewall_period, 30);
}

#[test]
fn distro_variants_differ_as_documented() {
    assert_eq!(
        differences("waagent-ubuntu.conf"),
        map(&[
            ("Provisioning.RegenerateSshHostKeyPair", "False"),
            ("Provisioning.MonitorHostName", "False"),
            ("ResourceDisk.Format", "False"),
            ("ResourceDisk.MountPoint", "/mnt"),
        ])
    );
    assert_eq!(
        differences("waagent-debian.conf"),
        map(&[
            ("Provisioning.SshHostKeyPairType", "auto"),
            ("OS.EnableFirewall", "False")
        ])
    );
    assert_eq!(differences("waagent-redhat.conf"), map(&[]));
    assert_eq!(
        differences("waagent-suse.conf"),
        map(&[
            ("ResourceDisk.Filesystem", "btrfs"),
            ("ResourceDisk.MountOptions", "compress=lzo")
        ])
    );
    assert_eq!(
        differences("waagent-coreos.conf"),
        map(&[
            ("Provisioning.DeleteRootPassword", "False"),
            ("Provisioning.RegenerateSshHostKeyPair", "False"),
            ("Provisioning.SshHostKeyPairType", "ed25519"),
            ("OS.AllowHTTP", "True"),
        ])
    );
    assert_eq!(
        differences("waagent-freebsd.conf"),
        map(&[
            ("ResourceDisk.Filesystem", "ufs"),
            ("OS.PasswordPath", "/etc/master.passwd"),
            ("OS.SudoersDir", "/usr/local/etc/sudoers.d"),
            ("ResourceDisk.EnableSwap", "True"),
            ("ResourceDisk.SwapSizeMB", "16384"),
        ])
    );
}
