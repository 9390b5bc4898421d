//! Where the WireServer is (§3 of PROTOCOL.md).
//!
//! Order, as the current agent does it: the address cached in
//! `<lib>/WireServerEndpoint` by an earlier successful probe; DHCP option 245
//! from the DHCP client's lease files (ISC dhclient `option unknown-245
//! a8:3f:81:10;`, systemd-networkd `OPTION_245=a83f8110`), the *last*
//! unexpired lease winning; and else the well-known 168.63.129.16.
//! `Protocol.EndpointDiscovery` other than `dhcp` skips straight to the
//! well-known address.
//!
//! Option 245 is four raw bytes, a big-endian IPv4 address. (waagent 2.2.5
//! took the lease's DNS server instead, which breaks with custom DNS; we do
//! not copy that.)

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fsutil;

/// The address every Azure VM can reach the WireServer at.
pub const WELL_KNOWN: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// The WireServer's port.
pub const WIRESERVER_PORT: u16 = 80;
/// The HostGAPlugin's port, on the same address.
pub const HOSTPLUGIN_PORT: u16 = 32526;
/// Cache file in Lib.Dir, waagent's name.
pub const CACHE_FILE: &str = "WireServerEndpoint";

/// The WireServer and HostGAPlugin addresses. Tests and the simulator use
/// loopback with other ports; in a VM it is `WELL_KNOWN:80` and `:32526`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub wire_port: u16,
    pub hostplugin_port: u16,
}

impl Endpoint {
    /// The fabric at `ip` on the standard ports.
    pub fn at(ip: Ipv4Addr) -> Endpoint {
        Endpoint {
            host: ip.to_string(),
            wire_port: WIRESERVER_PORT,
            hostplugin_port: HOSTPLUGIN_PORT,
        }
    }

    /// `http://host[:port]` of the WireServer.
    pub fn wire_base(&self) -> String {
        base_url(&self.host, self.wire_port, WIRESERVER_PORT)
    }

    /// `http://host:port` of the HostGAPlugin.
    pub fn hostplugin_base(&self) -> String {
        base_url(&self.host, self.hostplugin_port, 0)
    }
}

fn base_url(host: &str, port: u16, default: u16) -> String {
    if port == default {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.wire_port)
    }
}

/// How the address was found, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    DhcpLease,
    WellKnown,
}

/// Finds the WireServer's address: cache, then `lease_files`, then the
/// well-known address. `dhcp` is false when `Protocol.EndpointDiscovery` is
/// not `dhcp`.
pub fn discover(
    lib_dir: &Path,
    lease_files: &[std::path::PathBuf],
    dhcp: bool,
    now: SystemTime,
) -> (Ipv4Addr, Source) {
    if !dhcp {
        return (WELL_KNOWN, Source::WellKnown);
    }
    if let Some(ip) = read_cache(lib_dir) {
        return (ip, Source::Cache);
    }
    let mut found = None;
    for file in lease_files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let ip = if text.contains("OPTION_245=") {
            networkd_option_245(&text)
        } else {
            dhclient_option_245(&text, now)
        };
        if ip.is_some() {
            log::debug!("option 245 in {}", file.display());
            found = ip;
        }
    }
    match found {
        Some(ip) => (ip, Source::DhcpLease),
        None => (WELL_KNOWN, Source::WellKnown),
    }
}

/// The cached address, if the file holds one.
pub fn read_cache(lib_dir: &Path) -> Option<Ipv4Addr> {
    std::fs::read_to_string(lib_dir.join(CACHE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Remembers a working address (after a successful versions probe).
pub fn write_cache(lib_dir: &Path, ip: Ipv4Addr) -> std::io::Result<()> {
    fsutil::write_atomic(&lib_dir.join(CACHE_FILE), ip.to_string().as_bytes(), 0o644)
}

/// The daemon forgets the cache at start so each boot re-detects.
pub fn clear_cache(lib_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(lib_dir.join(CACHE_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `OPTION_245=a83f8110` from a systemd-networkd lease file.
pub fn networkd_option_245(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("OPTION_245="))
        .and_then(|hex| decode_hex_ip(hex.trim(), ""))
}

/// The last unexpired lease's `option unknown-245 a8:3f:81:10;` from an ISC
/// dhclient lease file.
pub fn dhclient_option_245(text: &str, now: SystemTime) -> Option<Ipv4Addr> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut result = None;
    let (mut in_lease, mut ip, mut expired) = (false, None, false);
    for line in text.lines().map(str::trim) {
        if line.starts_with("lease") && line.ends_with('{') {
            (in_lease, ip, expired) = (true, None, false);
        } else if line == "}" && in_lease {
            if let (Some(addr), false) = (ip, expired) {
                result = Some(addr);
            }
            in_lease = false;
        } else if let Some(v) = line.strip_prefix("option unknown-245 ") {
            ip = decode_hex_ip(v.trim_end_matches(';').trim(), ":");
        } else if let Some(v) = line.strip_prefix("expire ") {
            expired = lease_expired(v.trim_end_matches(';'), now);
        }
    }
    result
}

/// `expire` values: `never`, `0 never`, or `W YYYY/MM/DD HH:MM:SS` in UTC.
/// An unreadable date counts as expired: a lease we cannot judge is not used.
fn lease_expired(value: &str, now: u64) -> bool {
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.last() == Some(&"never") {
        return false;
    }
    let (Some(date), Some(time)) = (words.get(words.len().wrapping_sub(2)), words.last()) else {
        return true;
    };
    let d: Vec<i64> = date.split('/').filter_map(|x| x.parse().ok()).collect();
    let t: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    // Out-of-range fields are unreadable too; in range, the arithmetic
    // below cannot overflow.
    let in_range = |v: &[i64], ranges: [(i64, i64); 3]| {
        v.len() == 3
            && v.iter()
                .zip(ranges)
                .all(|(x, (lo, hi))| (lo..=hi).contains(x))
    };
    if !in_range(&d, [(0, 9999), (1, 12), (1, 31)]) || !in_range(&t, [(0, 23), (0, 59), (0, 60)]) {
        return true;
    }
    let secs =
        crate::utc::days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    secs <= now as i64
}

/// Four hex bytes, separated by `sep` (or packed when `sep` is empty).
fn decode_hex_ip(s: &str, sep: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = if sep.is_empty() {
        // Hex digits only: they are one byte each, so the slices below
        // stay on character boundaries.
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        (0..4).map(|i| &s[i * 2..i * 2 + 2]).collect()
    } else {
        s.split(sep).collect()
    };
    if parts.len() != 4 {
        return None;
    }
    let mut b = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        b[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(Ipv4Addr::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_795_000_000; // 2026-11-18

    fn lease(ip: &str, expire: &str) -> String {
        format!("lease {{\n  interface \"eth0\";\n  option domain-name-servers 10.0.0.53;\n  option unknown-245 {ip};\n  expire {expire};\n}}\n")
    }

    #[test]
    fn last_unexpired_lease_wins_and_dns_is_ignored() {
        let text = [
            lease("a8:3f:81:01", "0 2152/07/23 23:27:10"),
            lease("a8:3f:81:02", "never"),
            lease("a8:3f:81:03", "4 2015/06/16 16:58:54"),
        ]
        .concat();
        assert_eq!(
            dhclient_option_245(&text, t(NOW)),
            Some(Ipv4Addr::new(168, 63, 129, 2))
        );
    }

    #[test]
    fn lease_without_245_or_with_garbage_is_skipped() {
        let text = format!(
            "{}lease {{\n  option routers 10.0.0.1;\n  expire never;\n}}\n{}",
            lease("a8:3f:81:10", "0 never"),
            lease("zz:3f:81:10", "never")
        );
        assert_eq!(dhclient_option_245(&text, t(NOW)), Some(WELL_KNOWN));
        assert_eq!(dhclient_option_245("lease {\n expire never;", t(NOW)), None);
        assert_eq!(
            dhclient_option_245(&lease("a8:3f:81", "never"), t(NOW)),
            None
        );
        assert_eq!(
            dhclient_option_245(&lease("a8:3f:81:10", "0 2026/13/01"), t(NOW)),
            None
        );
    }

    #[test]
    fn expiry_is_compared_in_utc() {
        // 2026-11-18 00:00:00 UTC is 1_795_046_400... check both sides of a boundary.
        let boundary = crate::utc::days_from_civil(2026, 11, 18) as u64 * 86_400;
        let l = lease("a8:3f:81:10", "3 2026/11/18 00:00:00");
        assert_eq!(dhclient_option_245(&l, t(boundary - 1)), Some(WELL_KNOWN));
        assert_eq!(dhclient_option_245(&l, t(boundary)), None);
    }

    #[test]
    fn networkd_lease() {
        assert_eq!(
            networkd_option_245("ADDRESS=10.0.0.69\nOPTION_245=a83f8110\n"),
            Some(WELL_KNOWN)
        );
        assert_eq!(networkd_option_245("OPTION_245=a83f81\n"), None);
        assert_eq!(networkd_option_245("ADDRESS=10.0.0.69\n"), None);
    }

    /// Found by the dhcp_leases fuzz target: a year, day or hour of 20
    /// digits overflowed the day count (a panic in debug builds, a
    /// wrapped-around expiry in release). Such a date is unreadable, so
    /// the lease counts as expired.
    #[test]
    fn absurd_expiry_dates_are_unreadable() {
        for expire in [
            "0 88888888888888888888/07/23 23:27:10",
            "0 2152/07/1510191259405068243 23:27:10",
            "0 2152/07/23 9223372036854775807:27:10",
            "0 2152/13/23 23:27:10",
            "0 2152/07/23 23:61:10",
        ] {
            assert_eq!(
                dhclient_option_245(&lease("a8:3f:81:10", expire), t(NOW)),
                None,
                "{expire}"
            );
        }
        let last = lease("a8:3f:81:10", "0 9999/12/31 23:59:60");
        assert_eq!(dhclient_option_245(&last, t(NOW)), Some(WELL_KNOWN));
    }

    /// Found by the dhcp_leases fuzz target: eight bytes that are not
    /// eight characters (slicing panicked inside the U+FFFD), and a sign
    /// that `from_str_radix` would take.
    #[test]
    fn networkd_option_245_is_eight_hex_digits() {
        assert_eq!(networkd_option_245("OPTION_245=\u{fffd}a83f8\n"), None);
        assert_eq!(networkd_option_245("OPTION_245=+a+3f811\n"), None);
        assert_eq!(
            networkd_option_245("OPTION_245=A83F8110\n"),
            Some(WELL_KNOWN)
        );
    }

    #[test]
    fn discovery_order() {
        let lib = tempfile::tempdir().unwrap();
        let leases = tempfile::tempdir().unwrap();
        let dhclient = leases.path().join("dhclient.eth0.leases");
        std::fs::write(&dhclient, lease("0a:00:00:05", "never")).unwrap();
        let files = vec![leases.path().join("missing"), dhclient.clone()];

        assert_eq!(
            discover(lib.path(), &files, true, t(NOW)),
            (Ipv4Addr::new(10, 0, 0, 5), Source::DhcpLease)
        );
        assert_eq!(
            discover(lib.path(), &files, false, t(NOW)),
            (WELL_KNOWN, Source::WellKnown)
        );
        assert_eq!(
            discover(lib.path(), &[], true, t(NOW)),
            (WELL_KNOWN, Source::WellKnown)
        );

        write_cache(lib.path(), Ipv4Addr::new(10, 9, 8, 7)).unwrap();
        assert_eq!(
            std::fs::read_to_string(lib.path().join("WireServerEndpoint")).unwrap(),
            "10.9.8.7"
        );
        assert_eq!(
            discover(lib.path(), &files, true, t(NOW)),
            (Ipv4Addr::new(10, 9, 8, 7), Source::Cache)
        );
        clear_cache(lib.path()).unwrap();
        clear_cache(lib.path()).unwrap();
        assert_eq!(
            discover(lib.path(), &files, true, t(NOW)).1,
            Source::DhcpLease
        );

        // A corrupt cache is ignored, not trusted.
        std::fs::write(lib.path().join("WireServerEndpoint"), "garbage").unwrap();
        assert_eq!(
            discover(lib.path(), &files, true, t(NOW)).1,
            Source::DhcpLease
        );
    }

    /// The shared samples, when ../shared is beside the checkout.
    #[test]
    fn shared_lease_samples() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/azure-samples"
        ));
        if !dir.is_dir() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            dhclient_option_245(&read("dhcp.leases"), t(NOW)),
            Some(WELL_KNOWN)
        );
        assert_eq!(
            dhclient_option_245(&read("dhcp.leases.custom.dns"), t(NOW)),
            Some(WELL_KNOWN)
        );
        assert_eq!(
            dhclient_option_245(&read("dhcp.leases.multi"), t(NOW)),
            Some(Ipv4Addr::new(168, 63, 129, 2))
        );
        assert_eq!(networkd_option_245(&read("2")), Some(WELL_KNOWN));
    }

    #[test]
    fn urls() {
        let e = Endpoint::at(WELL_KNOWN);
        assert_eq!(e.wire_base(), "http://168.63.129.16");
        assert_eq!(e.hostplugin_base(), "http://168.63.129.16:32526");
        let e = Endpoint {
            host: "127.0.0.1".into(),
            wire_port: 4000,
            hostplugin_port: 4001,
        };
        assert_eq!(e.wire_base(), "http://127.0.0.1:4000");
    }
}
