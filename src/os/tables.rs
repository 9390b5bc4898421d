//! Reading the system's disk tables: the mount table, `/proc/swaps`,
//! `blkid -p -o export` and block devices in sysfs (shared by the flavours).

use std::path::{Path, PathBuf};

use super::{MountEntry, Probe};

/// The block device (`sdb`) under the VMBus device whose id is
/// `{00000000-0001-…}`: IDE controller 0, port 1, the resource disk on every
/// generation-1 VM.
pub(super) fn vmbus_resource_block(devices: &Path) -> Option<String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(devices)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    dirs.into_iter().find_map(|dir| {
        let id = std::fs::read_to_string(dir.join("device_id")).ok()?;
        let id = id.trim().trim_start_matches('{');
        if !id.to_ascii_lowercase().starts_with("00000000-0001-") {
            return None;
        }
        find_block_name(&dir, 6)
    })
}

/// Searches `dir` (not through symlinks: sysfs is full of loops) for a
/// `block` directory and returns its first entry; old kernels name the
/// directory `block:sdb` instead.
fn find_block_name(dir: &Path, depth: u32) -> Option<String> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(dev) = name.strip_prefix("block:") {
            return Some(dev.to_string());
        }
        if name == "block" {
            let mut devs: Vec<String> = std::fs::read_dir(e.path())
                .ok()?
                .flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect();
            devs.sort();
            if let Some(d) = devs.into_iter().next() {
                return Some(d);
            }
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_block_name(&e.path(), depth - 1))
}

/// The sysfs name of partition `nr` of the disk whose sysfs directory is `disk`.
pub(super) fn sysfs_partition(disk: &Path, nr: u32) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(disk)
        .ok()?
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("partition"))
                .is_ok_and(|n| n.trim().parse() == Ok(nr))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// `/proc/mounts` or FreeBSD's `mount -p`: source, target, type, options.
pub(crate) fn parse_mount_table(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, target, fstype) = (f.next()?, f.next()?, f.next()?);
            if source.starts_with('#') {
                return None;
            }
            Some(MountEntry {
                source: unescape_octal(source),
                target: PathBuf::from(unescape_octal(target)),
                fstype: fstype.to_string(),
                options: f.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The files in `/proc/swaps` (partitions left out).
pub(crate) fn parse_proc_swaps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, kind) = (f.next()?, f.next()?);
            (kind == "file").then(|| PathBuf::from(unescape_octal(name)))
        })
        .collect()
}

/// `blkid -p -o export`: `TYPE=` is the content, `PTTYPE=` a partition table.
pub(crate) fn parse_blkid_export(text: &str) -> Probe {
    let mut p = Probe::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) if !v.is_empty() => p.fs = Some(v.to_string()),
            Some(("PTTYPE", v)) if !v.is_empty() => p.table = Some(v.to_string()),
            _ => {}
        }
    }
    p
}

/// Undoes the kernel's `\040`-style escapes of spaces, tabs, newlines and
/// backslashes in mount and swap tables.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
