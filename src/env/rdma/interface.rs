//! Network interfaces: finding the one with the RDMA MAC (Network Direct) or
//! an IP-over-IB one (SR-IOV), and giving it its address.
//!
//! Unlike waagent, which parses and runs `ifconfig` (minimal images lack
//! it), interfaces are found in `/sys/class/net` and configured with `ip`:
//! `ip link set IF up`, `ip addr add A/16 dev IF`.

use std::fs;
use std::net::Ipv4Addr;

use super::{failed, run, RdmaError};
use crate::os::{positional, Cmd, Env, RunError};

/// Every RDMA address is configured with this prefix length.
pub const PREFIX_LEN: u8 = 16;

/// Every interface in `/sys/class/net` with its `address` text, by name.
pub(super) fn net_interfaces(env: &Env) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(env.path("/sys/class/net")) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let address = fs::read_to_string(e.path().join("address")).ok()?;
            Some((name, address.trim().to_string()))
        })
        .collect();
    v.sort();
    v
}

/// An Ethernet-style `aa:bb:cc:dd:ee:ff` address as bytes.
fn parse_colon_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// The interface whose address is `mac`; an `eth<N>` one first (the only
/// names waagent looks at), else the first by name.
pub fn interface_with_mac(env: &Env, mac: [u8; 6]) -> Option<String> {
    let matching: Vec<String> = net_interfaces(env)
        .into_iter()
        .filter(|(_, a)| parse_colon_mac(a) == Some(mac))
        .map(|(n, _)| n)
        .collect();
    let is_eth = |n: &&String| {
        n.strip_prefix("eth")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    matching
        .iter()
        .find(is_eth)
        .or_else(|| matching.first())
        .cloned()
}

/// The MAC (twelve upper-case hex digits) that `IPoIB_Data` gives for an
/// interface: an Ethernet address as it is; for an `ib*` interface's 20-byte
/// InfiniBand address, bytes 13–15 and 18–20 (its port GUID without the
/// two bytes inserted in the middle), as waagent reads it.
pub(super) fn ipoib_mac(name: &str, address: &str) -> Option<String> {
    let parts: Vec<&str> = address.trim().split(':').collect();
    let two = |p: &&str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let is_ib = name.len() > 2 && name.starts_with("ib");
    let picked: Vec<&str> = if is_ib {
        if parts.len() < 9 || !parts[parts.len() - 8..].iter().all(two) {
            return None;
        }
        let g = &parts[parts.len() - 8..];
        vec![g[0], g[1], g[2], g[5], g[6], g[7]]
    } else {
        if parts.len() != 6 || !parts.iter().all(two) {
            return None;
        }
        parts
    };
    Some(picked.concat().to_ascii_uppercase())
}

/// Brings `iface` up and adds `ipv4/16` to it (`ip link set IF up`,
/// `ip addr add A/16 dev IF`). Exit code 2 (the address is there already)
/// counts as done, as it does for waagent.
pub fn assign_address(env: &Env, iface: &str, ipv4: Ipv4Addr) -> Result<(), RdmaError> {
    let iface = positional("interface", iface).map_err(|e| failed(e.to_string()))?;
    for cmd in [
        Cmd::new("ip").args(["link", "set", iface, "up"]),
        Cmd::new("ip").args(["addr", "add", &format!("{ipv4}/{PREFIX_LEN}"), "dev", iface]),
    ] {
        let out = run(env, cmd.clone())?;
        if !out.success() && out.code != 2 {
            return Err(failed(format!(
                "cannot set {ipv4}/{PREFIX_LEN} on {iface}: {}",
                RunError::Failed {
                    cmd: cmd.display(),
                    output: out
                }
            )));
        }
    }
    log::info!("RDMA: {iface}: {ipv4}/{PREFIX_LEN}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rdma::testutil::*;
    use crate::os::{Flavour, Output};

    #[test]
    fn interface_by_mac_prefers_eth_names() {
        let f = fx();
        let os = f.os("ubuntu", "22.04", Flavour::Ubuntu);
        assert_eq!(interface_with_mac(os.env(), MAC), None);
        f.nic("eth0", "00:0d:3a:00:00:01");
        f.nic("enP1s1", "00:15:5d:33:ff:1d");
        assert_eq!(interface_with_mac(os.env(), MAC).as_deref(), Some("enP1s1"));
        f.nic("eth1", "00:15:5D:33:FF:1D");
        f.nic("lo", "00:00:00:00:00:00");
        f.nic(
            "ib0",
            "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d",
        );
        assert_eq!(interface_with_mac(os.env(), MAC).as_deref(), Some("eth1"));
    }

    #[test]
    fn ipoib_mac_of_ethernet_and_infiniband_addresses() {
        assert_eq!(
            ipoib_mac(
                "ib0",
                "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d"
            )
            .as_deref(),
            Some("00155D33FF1D")
        );
        assert_eq!(
            ipoib_mac("eth1", "00:15:5d:33:ff:1e").as_deref(),
            Some("00155D33FF1E")
        );
        // An IB-length address on a non-ib name, or an Ethernet one on ib0.
        assert_eq!(
            ipoib_mac(
                "eth1",
                "80:00:02:08:fe:80:00:00:00:00:00:00:00:15:5d:ff:fd:33:ff:1d"
            ),
            None
        );
        assert_eq!(ipoib_mac("ib0", "00:15:5d:33:ff:1e"), None);
        assert_eq!(ipoib_mac("eth0", ""), None);
    }

    #[test]
    fn address_assignment_through_ip() {
        let f = fx();
        let os = f.os("ubuntu", "22.04", Flavour::Ubuntu);
        assign_address(os.env(), "eth1", IP).unwrap();
        // 2: the address is there already.
        f.runner.push("ip", Output::ok(""));
        f.runner
            .push("ip", Output::failed(2, "RTNETLINK answers: File exists"));
        assign_address(os.env(), "eth1", IP).unwrap();
        f.runner
            .push("ip", Output::failed(1, "Cannot find device \"eth1\""));
        let e = assign_address(os.env(), "eth1", IP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot set 172.16.1.4/16 on eth1: `ip link set eth1 up` failed with exit code 1: \
             Cannot find device \"eth1\""
        );
        assert!(assign_address(os.env(), "-x", IP).is_err());
        assert_eq!(
            f.lines(),
            [
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
                "ip link set eth1 up",
                "ip addr add 172.16.1.4/16 dev eth1",
                "ip link set eth1 up",
            ]
        );
    }
}
