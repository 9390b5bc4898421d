//! File-level system actions shared by the flavours: reading the account
//! database, editing small config files in place (atomically), and reading
//! `/proc` and `/sys`. No commands are run here.

use std::fs;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::OsError;
use crate::fsutil::{self, Owner};

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

fn read_optional(path: &Path) -> Result<Option<String>, OsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OsError::io(path)(e)),
    }
}

pub(crate) fn find_user(passwd: &Path, name: &str) -> Result<Option<PasswdEntry>, OsError> {
    let text = read_optional(passwd)?.unwrap_or_default();
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
            shell: f[6].to_string(),
        })
    }))
}

/// A numeric setting of `/etc/login.defs` (`UID_MIN`, `UID_MAX`).
pub(crate) fn login_defs_number(path: &Path, key: &str) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next()?.parse().ok())?
    })
}

pub(crate) fn truncate_if_exists(path: &Path) -> Result<(), OsError> {
    match fs::OpenOptions::new().write(true).truncate(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OsError::io(path)(e)),
    }
}

/// Writes `text` atomically, keeping the mode and owner of the file it
/// replaces (`/etc/shadow` is 0640 root:shadow on Debian), or `new_mode`.
pub(crate) fn write_file(path: &Path, text: &str, new_mode: u32) -> Result<(), OsError> {
    let (mode, owner) = match fs::metadata(path) {
        Ok(md) => (
            md.mode() & 0o7777,
            Some(Owner {
                uid: md.uid(),
                gid: md.gid(),
            }),
        ),
        Err(_) => (new_mode, None),
    };
    fsutil::write_atomic_owned(path, text.as_bytes(), mode, owner).map_err(OsError::io(path))
}

/// Replaces root's password hash with `*LOCK*`, leaving every other field.
pub(crate) fn lock_root_in_shadow(path: &Path) -> Result<(), OsError> {
    let text = read_optional(path)?
        .ok_or_else(|| OsError::Invalid(format!("{}: no such password file", path.display())))?;
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                found = true;
                let tail = rest.split_once(':').map_or("", |(_, t)| t);
                format!("root:*LOCK*:{tail}")
            }
            None => l.to_string(),
        })
        .collect();
    if !found {
        return Err(OsError::Invalid(format!(
            "{}: has no root entry",
            path.display()
        )));
    }
    write_file(path, &(out.join("\n") + "\n"), 0o640)
}

/// A user name safe to put in a sudoers line: what useradd accepts, nothing
/// sudoers would parse as syntax.
pub(crate) fn check_user_name(name: &str) -> Result<&str, OsError> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name.len() <= 32
        && name
            .trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(OsError::Invalid(format!("refusing user name {name:?}")))
    }
}

fn sudoers_line(name: &str, nopasswd: bool) -> String {
    if nopasswd {
        format!("{name} ALL=(ALL) NOPASSWD: ALL")
    } else {
        format!("{name} ALL=(ALL) ALL")
    }
}

pub(crate) fn add_sudoer(dir: &Path, name: &str, nopasswd: bool) -> Result<(), OsError> {
    let name = check_user_name(name)?;
    fsutil::ensure_dir(dir, 0o750).map_err(OsError::io(dir))?;
    ensure_sudoers_includedir(dir)?;
    let file = dir.join("waagent");
    let text = read_optional(&file)?.unwrap_or_default();
    let want = sudoers_line(name, nopasswd);
    let prefix = format!("{name} ");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if text.lines().any(|l| l == want)
        && text.lines().filter(|l| l.starts_with(&prefix)).count() == 1
    {
        return Ok(());
    }
    lines.push(want);
    fsutil::write_atomic(&file, (lines.join("\n") + "\n").as_bytes(), 0o440)
        .map_err(OsError::io(&file))
}

pub(crate) fn remove_sudoer(dir: &Path, name: &str) -> Result<(), OsError> {
    let file = dir.join("waagent");
    let Some(text) = read_optional(&file)? else {
        return Ok(());
    };
    let prefix = format!("{name} ");
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    if kept.is_empty() {
        return fs::remove_file(&file).map_err(OsError::io(&file));
    }
    fsutil::write_atomic(&file, (kept.join("\n") + "\n").as_bytes(), 0o440)
        .map_err(OsError::io(&file))
}

/// Some images ship a sudoers without `#includedir`; a drop-in is then
/// ignored. Append the directive to the `sudoers` beside the drop-in directory.
fn ensure_sudoers_includedir(dir: &Path) -> Result<(), OsError> {
    let Some(main) = dir.parent().map(|p| p.join("sudoers")) else {
        return Ok(());
    };
    let Some(text) = read_optional(&main)? else {
        return Ok(());
    };
    let d = dir.to_string_lossy();
    let has = text.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("#includedir") || l.starts_with("@includedir"))
            && l.split_whitespace().nth(1) == Some(&*d)
    });
    if has {
        return Ok(());
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("#includedir {d}\n"));
    write_file(&main, &new, 0o440)
}

pub(crate) fn remove_host_keys(ssh_dir: &Path) -> Result<(), OsError> {
    let entries = match fs::read_dir(ssh_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(OsError::io(ssh_dir)(e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") && name.contains("key") {
            fs::remove_file(e.path()).map_err(OsError::io(&e.path()))?;
        }
    }
    Ok(())
}

/// Sets the line starting with `key` to `line` in a small config file
/// (creating it), leaving all other lines as they were.
pub(crate) fn set_line(path: &Path, key: &str, line: &str) -> Result<(), OsError> {
    let text = read_optional(path)?.unwrap_or_default();
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.trim_start().starts_with(key) {
            if !found {
                out.push(line.to_string());
            }
            found = true;
        } else {
            out.push(l.to_string());
        }
    }
    if !found {
        out.push(line.to_string());
    }
    write_file(path, &(out.join("\n") + "\n"), 0o644)
}

/// dhclient.conf: `send host-name "{name}";` unless the file already sends
/// the live host name (`send host-name = gethostname();`).
pub(crate) fn dhclient_send_host_name(conf: &Path, name: &str) -> Result<(), OsError> {
    let name = super::host_name(name)?;
    if name.contains(['"', ';', '\\']) {
        return Err(OsError::Invalid(format!("refusing host name {name:?}")));
    }
    if conf.parent().is_some_and(|d| !d.is_dir()) {
        // No dhclient configuration directory: dhclient is not installed.
        log::debug!("{} has no directory; dhclient not in use", conf.display());
        return Ok(());
    }
    let text = read_optional(conf)?.unwrap_or_default();
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("send host-name") && l.contains("gethostname()"))
    {
        return Ok(());
    }
    set_line(
        conf,
        "send host-name",
        &format!("send host-name \"{name}\";"),
    )
}

pub(crate) fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// When process `pid` started, in clock ticks after boot: field 22 of
/// `{proc_dir}/{pid}/stat`. None when there is no such process.
pub(crate) fn process_start_time(proc_dir: &Path, pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?;
    // The command name, field 2, is in parentheses and may hold spaces or
    // parentheses itself: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `{proc_dir}/{pid}/comm` is one of `names`. One open, read and
/// close: the kernel keeps a command name under 16 bytes, and this runs for
/// every process on each DHCP-client check while none is found
/// (`fs::read_to_string` would add a stat and a second read).
fn comm_is(proc_dir: &Path, pid: u32, names: &[&str]) -> bool {
    let mut buf = [0u8; 64];
    let Ok(n) = fs::File::open(proc_dir.join(pid.to_string()).join("comm"))
        .and_then(|mut f| f.read(&mut buf))
    else {
        return false;
    };
    let comm = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
    names.iter().any(|name| name.as_bytes() == comm)
}

/// The newest process (latest start, then highest PID) whose
/// `{proc_dir}/{pid}/comm` is one of `names`: what `pidof` finds, without
/// a process of its own. Processes that end meanwhile are passed over.
pub(crate) fn newest_process_named(proc_dir: &Path, names: &[&str]) -> Option<u32> {
    fs::read_dir(proc_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm_is(proc_dir, *pid, names))
        .filter_map(|pid| Some((process_start_time(proc_dir, pid)?, pid)))
        .max()
        .map(|(_, pid)| pid)
}

/// Names in `dir` starting with `prefix`, of any file type (device nodes too).
pub(crate) fn files_or_devices(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// `/proc/net/route` lists destinations as little-endian hex
/// (168.63.129.16 is `10813FA8`).
pub(crate) fn proc_route_has(route: &Path, dest: Ipv4Addr) -> Result<bool, OsError> {
    let text = read_optional(route)?.unwrap_or_default();
    let want = format!("{:08X}", u32::from_le_bytes(dest.octets()));
    Ok(text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 7 && f[1].eq_ignore_ascii_case(&want) && f[7] == "FFFFFFFF"
    }))
}

/// The gateway of the lowest-metric default route in `/proc/net/route`
/// text, whose addresses are hexadecimal in host (little-endian) order.
pub fn proc_route_default_gateway(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() <= 7 || f[1] != "00000000" || f[7] != "00000000" {
                return None;
            }
            // RTF_GATEWAY (0x2) must be set, or the "gateway" is 0.0.0.0.
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            if flags & 0x2 == 0 || gw == 0 {
                return None;
            }
            let metric = f[6].parse::<u32>().unwrap_or(u32::MAX);
            Some((metric, Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// The interface of the default route with the lowest metric.
pub(crate) fn proc_route_default_interface(route: &Path) -> Option<String> {
    let text = fs::read_to_string(route).ok()?;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The first IPv4 address of interface `name` (getifaddrs(3), on Linux
/// and FreeBSD alike); `None` when it has none or does not exist.
pub(crate) fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs made, alive until
        // freeifaddrs; its name is a NUL-terminated string, and an address
        // whose family is AF_INET is a sockaddr_in.
        unsafe {
            let ifa = &*cur;
            let addr = ifa.ifa_addr;
            if !addr.is_null()
                && i32::from((*addr).sa_family) == libc::AF_INET
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                let sin = &*(addr as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// `04030201-0605-0807-0910-111213141516` → `01020304-0506-0708-0910-…`:
/// SMBIOS stores the first three UUID fields little-endian (§9.2).
pub(crate) fn swap_uuid_groups(uuid: &str) -> Option<String> {
    let parts: Vec<&str> = uuid.split('-').collect();
    let ok = parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n)
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return None;
    }
    let swap = |p: &str| -> String {
        let bytes: Vec<&str> = (0..p.len()).step_by(2).map(|i| &p[i..i + 2]).collect();
        bytes.into_iter().rev().collect()
    };
    Some(
        format!(
            "{}-{}-{}-{}-{}",
            swap(parts[0]),
            swap(parts[1]),
            swap(parts[2]),
            parts[3],
            parts[4]
        )
        .to_ascii_lowercase(),
    )
}

/// Block devices whose SCSI type is 5 (CD-ROM), as `/dev/{name}`.
pub(crate) fn sysfs_cdroms(sys_block: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| fs::read_to_string(e.path().join("device/type")).is_ok_and(|t| t.trim() == "5"))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod ifaddr_tests {
    #[test]
    fn loopback_has_127_0_0_1_and_a_missing_interface_has_nothing() {
        assert_eq!(
            super::interface_ipv4("lo"),
            Some(std::net::Ipv4Addr::LOCALHOST)
        );
        assert_eq!(super::interface_ipv4("no-such-if0"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The kernel's own /proc: this test process is found by its command
    /// name as the kernel writes it (cut to 15 bytes, with a newline).
    #[test]
    fn a_process_is_found_by_name_in_the_real_proc() {
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        let me = me.trim_end();
        let found = newest_process_named(Path::new("/proc"), &[me]).expect("this process");
        let comm = fs::read_to_string(format!("/proc/{found}/comm")).unwrap();
        assert_eq!(comm.trim_end(), me);
        assert_eq!(
            newest_process_named(Path::new("/proc"), &["no-such-comm"]),
            None
        );
    }

    #[test]
    fn passwd_lookup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        fs::write(&p, "root:x:0:0:root:/root:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/sh\nbroken:x\n").unwrap();
        let u = find_user(&p, "azureuser").unwrap().unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_path(), u.shell.as_str()),
            (1000, 1000, Path::new("/home/azureuser"), "/bin/sh")
        );
        assert_eq!(find_user(&p, "broken").unwrap(), None);
        assert_eq!(find_user(&p, "nobody").unwrap(), None);
        assert_eq!(find_user(&d.path().join("missing"), "root").unwrap(), None);
    }

    #[test]
    fn uid_min_from_login_defs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("login.defs");
        fs::write(&p, "#UID_MIN 7\nUID_MIN\t\t\t  500\nUID_MAX 60000\n").unwrap();
        assert_eq!(login_defs_number(&p, "UID_MIN"), Some(500));
    }

    #[test]
    fn lock_root_keeps_other_fields_mode_and_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shadow");
        fs::write(
            &p,
            "root:$6$x$y:19000:0:99999:7:::\nazureuser:!:19000:0:99999:7:::\n",
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        lock_root_in_shadow(&p).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "root:*LOCK*:19000:0:99999:7:::\nazureuser:!:19000:0:99999:7:::\n"
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        fs::write(&p, "daemon:*:1::::::\n").unwrap();
        assert!(lock_root_in_shadow(&p)
            .unwrap_err()
            .to_string()
            .ends_with("has no root entry"));
    }

    #[test]
    fn sudoers_once_updated_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sudoers.d");
        fs::write(d.path().join("sudoers"), "root ALL=(ALL) ALL").unwrap();
        add_sudoer(&dir, "azureuser", false).unwrap();
        add_sudoer(&dir, "azureuser", false).unwrap();
        add_sudoer(&dir, "other", true).unwrap();
        let f = dir.join("waagent");
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "azureuser ALL=(ALL) ALL\nother ALL=(ALL) NOPASSWD: ALL\n"
        );
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o440);
        // The main file gained the includedir, once.
        add_sudoer(&dir, "azureuser", true).unwrap();
        let main = fs::read_to_string(d.path().join("sudoers")).unwrap();
        assert_eq!(
            main,
            format!("root ALL=(ALL) ALL\n#includedir {}\n", dir.display())
        );
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "other ALL=(ALL) NOPASSWD: ALL\nazureuser ALL=(ALL) NOPASSWD: ALL\n"
        );
        remove_sudoer(&dir, "azureuser").unwrap();
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "other ALL=(ALL) NOPASSWD: ALL\n"
        );
        remove_sudoer(&dir, "other").unwrap();
        assert!(!f.exists());
    }

    #[test]
    fn sudoers_refuses_syntax_in_names() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            "ALL ALL=(ALL) ALL\nx",
            "a b",
            "-x",
            "",
            "a,b",
            &"a".repeat(33),
        ] {
            assert!(add_sudoer(d.path(), bad, false).is_err(), "{bad:?}");
        }
        assert!(!d.path().join("waagent").exists());
    }

    #[test]
    fn dhclient_conf_edit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dhclient.conf");
        fs::write(&p, "timeout 300;\nsend host-name \"old\";\n").unwrap();
        dhclient_send_host_name(&p, "vm-1").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "timeout 300;\nsend host-name \"vm-1\";\n"
        );
        fs::write(&p, "send host-name = gethostname();\n").unwrap();
        dhclient_send_host_name(&p, "vm-2").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "send host-name = gethostname();\n"
        );
        assert!(dhclient_send_host_name(&p, "x\"; evil").is_err());
        let absent = d.path().join("no-dhcp/dhclient.conf");
        dhclient_send_host_name(&absent, "vm-3").unwrap();
        assert!(!absent.exists());
    }

    #[test]
    fn proc_route() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("route");
        fs::write(
            &p,
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t10813FA8\t0100000A\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n",
        )
        .unwrap();
        assert!(proc_route_has(&p, Ipv4Addr::new(168, 63, 129, 16)).unwrap());
        assert!(!proc_route_has(&p, Ipv4Addr::new(169, 254, 169, 254)).unwrap());
    }

    #[test]
    fn default_route_interface_and_uuid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("route");
        fs::write(
            &p,
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0100000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .unwrap();
        assert_eq!(proc_route_default_interface(&p).as_deref(), Some("eth0"));
        fs::write(&p, "Iface\tDestination\n").unwrap();
        assert_eq!(proc_route_default_interface(&p), None);
        assert_eq!(
            swap_uuid_groups("C4BFE7E2-EB2D-4A4E-8615-EA6AAF50162E").as_deref(),
            Some("e2e7bfc4-2deb-4e4a-8615-ea6aaf50162e")
        );
        assert_eq!(swap_uuid_groups("not-a-uuid"), None);
    }

    #[test]
    fn cdroms_by_scsi_type() {
        let d = tempfile::tempdir().unwrap();
        for (dev, t) in [("sda", "0"), ("sr0", "5"), ("sdc", "5")] {
            let p = d.path().join(dev).join("device");
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("type"), format!("{t}\n")).unwrap();
        }
        fs::create_dir_all(d.path().join("loop0")).unwrap();
        assert_eq!(
            sysfs_cdroms(d.path()),
            vec![PathBuf::from("/dev/sdc"), PathBuf::from("/dev/sr0")]
        );
    }
}
