//! The Hyper-V KVP pool (`/var/lib/hyperv/.kvp_pool_0`): how the host tells
//! the VM which kind of RDMA it has. A Network Direct host sets
//! `NdDriverVersion`; an SR-IOV host may list the IP-over-IB MAC/IP pairs in
//! `IPoIB_Data`. The pool is read as hv_kvp_daemon writes it: fixed-size
//! records, key and value NUL-padded.

use std::fs;
use std::net::Ipv4Addr;

use super::{failed, RdmaError};
use crate::os::Env;

/// The Hyper-V KVP pool the host writes (pool 0, "external" values).
pub const KVP_POOL_PATH: &str = "/var/lib/hyperv/.kvp_pool_0";
/// A record of the pool: a NUL-padded key, then a NUL-padded value.
pub const KVP_KEY_SIZE: usize = 512;
pub const KVP_VALUE_SIZE: usize = 2048;
/// The pool key whose value is the host's Network Direct version.
pub const ND_VERSION_KEY: &str = "NdDriverVersion";
/// The pool key listing IP-over-IB MAC/IP pairs on SR-IOV hosts.
pub const IPOIB_DATA_KEY: &str = "IPoIB_Data";

/// The whole KVP pool file (small: one record per key the host sets).
pub(super) fn read_kvp_pool(env: &Env) -> Result<Vec<u8>, RdmaError> {
    let path = env.path(KVP_POOL_PATH);
    fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            failed(format!(
                "{KVP_POOL_PATH} does not exist: the kernel does not provide it or the \
                 KVP daemon is not running"
            ))
        } else {
            failed(format!("{KVP_POOL_PATH}: {e}"))
        }
    })
}

/// The value of `key` in KVP pool bytes: fixed-size records of a
/// [`KVP_KEY_SIZE`]-byte key and a [`KVP_VALUE_SIZE`]-byte value, each up
/// to its first NUL. A short last record counts as far as it goes, as long
/// as it has a value byte (waagent reads it so).
pub fn kvp_lookup(pool: &[u8], key: &str) -> Option<String> {
    let until_nul = |b: &[u8]| -> Vec<u8> { b.iter().copied().take_while(|&c| c != 0).collect() };
    let mut rest = pool;
    while !rest.is_empty() {
        let (k, after) = rest.split_at(rest.len().min(KVP_KEY_SIZE));
        let (v, next) = after.split_at(after.len().min(KVP_VALUE_SIZE));
        if v.is_empty() {
            break;
        }
        if until_nul(k) == key.as_bytes() {
            return Some(String::from_utf8_lossy(&until_nul(v)).into_owned());
        }
        rest = next;
    }
    None
}

/// The host's Network Direct version (`NdDriverVersion`), if it gave one.
pub fn nd_driver_version(env: &Env) -> Result<Option<String>, RdmaError> {
    Ok(kvp_lookup(&read_kvp_pool(env)?, ND_VERSION_KEY)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}

/// `IPoIB_Data`: `NUMPAIRS:<n>|<MAC>:<IPv4>|…`, MACs without separators.
/// The count must match the pairs that follow.
pub fn parse_ipoib_data(value: &str) -> Result<Vec<(String, Ipv4Addr)>, RdmaError> {
    let bad = |m: String| failed(format!("{IPOIB_DATA_KEY}: {m}"));
    let mut fields = value.split('|');
    let head = fields.next().unwrap_or_default();
    let count: usize = head
        .strip_prefix("NUMPAIRS:")
        .map(|n| {
            n.bytes()
                .take_while(u8::is_ascii_digit)
                .collect::<Vec<u8>>()
        })
        .filter(|d| !d.is_empty())
        .and_then(|d| String::from_utf8_lossy(&d).parse().ok())
        .ok_or_else(|| bad(format!("no pair count in {head:?}")))?;
    let pairs = fields
        .map(|f| {
            let (mac, rest) = f
                .split_once(':')
                .filter(|(m, _)| !m.is_empty())
                .ok_or_else(|| bad(format!("no MAC/IP pair in {f:?}")))?;
            let ip: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let ip = ip
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("no IPv4 address in {f:?}")))?;
            if !mac.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad(format!("not a MAC address: {mac:?}")));
            }
            Ok((mac.to_string(), ip))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.len() != count {
        return Err(bad(format!("says {count} pairs but lists {}", pairs.len())));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::Flavour;

    #[test]
    fn kvp_lookup_reads_fixed_size_records() {
        let pool = kvp_pool(&[
            ("HostName", "host-17"),
            ("NdDriverVersionX", "1.0"),
            ("NdDriverVersion", "142.0"),
            ("IPoIB_Data", "NUMPAIRS:0"),
        ]);
        assert_eq!(pool.len(), 4 * (KVP_KEY_SIZE + KVP_VALUE_SIZE));
        assert_eq!(
            kvp_lookup(&pool, "NdDriverVersion").as_deref(),
            Some("142.0")
        );
        assert_eq!(kvp_lookup(&pool, "HostName").as_deref(), Some("host-17"));
        assert_eq!(
            kvp_lookup(&pool, "IPoIB_Data").as_deref(),
            Some("NUMPAIRS:0")
        );
        assert_eq!(kvp_lookup(&pool, "NdDriver"), None);
        assert_eq!(kvp_lookup(&[], "NdDriverVersion"), None);
    }

    #[test]
    fn kvp_short_last_record_counts_if_it_has_a_value() {
        let mut pool = kvp_pool(&[("A", "1")]);
        let mut key = b"NdDriverVersion".to_vec();
        key.resize(KVP_KEY_SIZE, 0);
        pool.extend(&key);
        // Key only: no value, not a record.
        assert_eq!(kvp_lookup(&pool, "NdDriverVersion"), None);
        pool.extend(b"150.1");
        assert_eq!(
            kvp_lookup(&pool, "NdDriverVersion").as_deref(),
            Some("150.1")
        );
        // Not UTF-8: read lossily, never a panic.
        let pool = kvp_pool(&[("K", "a\u{7f}")]);
        let mut bad = pool.clone();
        bad[KVP_KEY_SIZE + 1] = 0xff;
        assert_eq!(kvp_lookup(&bad, "K").as_deref(), Some("a\u{fffd}"));
    }

    #[test]
    fn nd_version_from_the_pool_file() {
        let f = fx();
        let os = f.os("centos", "7.9", Flavour::RedHat);
        let e = nd_driver_version(os.env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/var/lib/hyperv/.kvp_pool_0 does not exist: the kernel does not provide it or the KVP daemon is not running"
        );
        f.kvp(&[("HostName", "h")]);
        assert_eq!(nd_driver_version(os.env()), Ok(None));
        f.kvp(&[("HostName", "h"), ("NdDriverVersion", " 142.0 ")]);
        assert_eq!(nd_driver_version(os.env()), Ok(Some("142.0".into())));
    }

    #[test]
    fn ipoib_data_pairs() {
        assert_eq!(
            parse_ipoib_data("NUMPAIRS:2|00155D33FF1D:172.16.1.4|00155D33FF1E:172.16.1.5"),
            Ok(vec![
                ("00155D33FF1D".to_string(), IP),
                ("00155D33FF1E".to_string(), Ipv4Addr::new(172, 16, 1, 5)),
            ])
        );
        assert_eq!(parse_ipoib_data("NUMPAIRS:0"), Ok(vec![]));
        for (bad, why) in [
            (
                "NUMPAIRS:3|00155D33FF1D:172.16.1.4",
                "IPoIB_Data: says 3 pairs but lists 1",
            ),
            (
                "PAIRS:1|00155D33FF1D:172.16.1.4",
                "IPoIB_Data: no pair count in \"PAIRS:1\"",
            ),
            (
                "NUMPAIRS:1|00155D33FF1D",
                "IPoIB_Data: no MAC/IP pair in \"00155D33FF1D\"",
            ),
            (
                "NUMPAIRS:1|00155D33FF1D:172.16.1",
                "IPoIB_Data: no IPv4 address in \"00155D33FF1D:172.16.1\"",
            ),
            (
                "NUMPAIRS:1|00 15;rm:172.16.1.4",
                "IPoIB_Data: not a MAC address: \"00 15;rm\"",
            ),
        ] {
            assert_eq!(parse_ipoib_data(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }
}
