//! `SharedConfig`: fetched from the goal state's
//! `RoleInstance/Configuration/SharedConfig` URL (§5.4, §6.4): the
//! deployment's topology. waagent only saves it (`<lib>/SharedConfig.xml`,
//! which RDMA setup and other Azure tools read), so the model is small and
//! lenient: everything but an instance's id is optional.
//!
//! On HPC sizes the instance also carries its RDMA endpoint as two
//! attributes, `rdmaMacAddress` (twelve hex digits, no separators, e.g.
//! `00155D33FF1D`) and `rdmaIPv4Address`. They are kept as sent and checked
//! only by [`SharedConfig::rdma`], which RDMA setup calls: a malformed
//! value must stop RDMA, not the goal state every other part of the agent
//! needs.

use std::net::Ipv4Addr;

use super::{parse_root, DocError};

const DOCUMENT: &str = "SharedConfig";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedConfig {
    /// `Deployment@name` (absent in current captures).
    pub deployment_name: Option<String>,
    /// `Role@name` (absent in current captures).
    pub role_name: Option<String>,
    /// `Instances/Instance`.
    pub instances: Vec<SharedInstance>,
}

/// One `Instances/Instance`: a VM of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedInstance {
    /// `@id`: the instance (VM) name.
    pub id: String,
    /// `@address`: its private IP address.
    pub address: Option<String>,
    /// `@rdmaMacAddress`, as sent (HPC sizes only).
    pub rdma_mac_address: Option<String>,
    /// `@rdmaIPv4Address`, as sent (HPC sizes only).
    pub rdma_ipv4_address: Option<String>,
}

impl SharedConfig {
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "SharedConfig")?;
        let sc = root.node(DOCUMENT);
        Ok(SharedConfig {
            deployment_name: sc.get("Deployment").and_then(|d| d.opt_attr("name")),
            role_name: sc.get("Role").and_then(|r| r.opt_attr("name")),
            instances: sc
                .all("Instances/Instance")
                .iter()
                .map(|i| {
                    Ok(SharedInstance {
                        id: i.req_attr("id")?,
                        address: i.opt_attr("address"),
                        rdma_mac_address: i.opt_attr("rdmaMacAddress"),
                        rdma_ipv4_address: i.opt_attr("rdmaIPv4Address"),
                    })
                })
                .collect::<Result<_, DocError>>()?,
        })
    }

    /// The RDMA endpoint of this VM: `(rdmaIPv4Address, rdmaMacAddress)` of
    /// the first `Instance` (the element waagent reads; a SharedConfig
    /// names only the VM it is sent to). `Ok(None)` when neither attribute
    /// is there (not an RDMA size); an error naming the attribute when only
    /// one is, or when a value is not an IPv4 address / a MAC address.
    pub fn rdma(&self) -> Result<Option<(Ipv4Addr, [u8; 6])>, DocError> {
        let Some(first) = self.instances.first() else {
            return Ok(None);
        };
        let at = |attr: &str, message: String| {
            DocError::new(
                DOCUMENT,
                format!("/SharedConfig/Instances/Instance[1]/@{attr}"),
                message,
            )
        };
        let (ip, mac) = match (&first.rdma_ipv4_address, &first.rdma_mac_address) {
            (None, None) => return Ok(None),
            (Some(ip), Some(mac)) => (ip, mac),
            (None, Some(_)) => return Err(at("rdmaIPv4Address", "missing".into())),
            (Some(_), None) => return Err(at("rdmaMacAddress", "missing".into())),
        };
        let ip = ip
            .parse::<Ipv4Addr>()
            .map_err(|_| at("rdmaIPv4Address", format!("not an IPv4 address: {ip:?}")))?;
        let mac = parse_mac(mac)
            .ok_or_else(|| at("rdmaMacAddress", format!("not a MAC address: {mac:?}")))?;
        Ok(Some((ip, mac)))
    }
}

/// Six bytes written as twelve hex digits (`00155D33FF1D`, the fabric's
/// form), or as six pairs separated by `:` or `-`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let digits: String = if text.len() == 17 {
        let sep = text.as_bytes()[2];
        if sep != b':' && sep != b'-' {
            return None;
        }
        let pairs: Vec<&str> = text.split(char::from(sep)).collect();
        if pairs.len() != 6 || pairs.iter().any(|p| p.len() != 2) {
            return None;
        }
        pairs.concat()
    } else {
        text.to_string()
    };
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    #[test]
    fn fixture_shared_config() {
        let sc = SharedConfig::parse(&fixture("shared_config.xml")).unwrap();
        assert_eq!(
            sc.deployment_name.as_deref(),
            Some("a1b2c3d4e5f60718293a4b5c6d7e8f90")
        );
        assert_eq!(sc.role_name.as_deref(), Some("_rs-test-vm"));
        assert_eq!(
            sc.instances,
            [SharedInstance {
                id: "_rs-test-vm".into(),
                address: Some("10.20.30.40".into()),
                rdma_mac_address: None,
                rdma_ipv4_address: None,
            }]
        );
        assert_eq!(sc.rdma(), Ok(None));
    }

    #[test]
    fn rdma_endpoint_of_an_hpc_instance() {
        let sc = SharedConfig::parse(&fixture("shared_config_rdma.xml")).unwrap();
        assert_eq!(
            sc.instances[0].rdma_mac_address.as_deref(),
            Some("00155D33FF1D")
        );
        assert_eq!(
            sc.instances[0].rdma_ipv4_address.as_deref(),
            Some("172.16.1.4")
        );
        assert_eq!(
            sc.rdma(),
            Ok(Some((
                Ipv4Addr::new(172, 16, 1, 4),
                [0x00, 0x15, 0x5d, 0x33, 0xff, 0x1d]
            )))
        );
    }

    fn one_instance(attrs: &str) -> SharedConfig {
        SharedConfig::parse(&format!(
            "<SharedConfig><Instances><Instance id=\"vm\" {attrs}/><Instance id=\"other\" \
             rdmaMacAddress=\"001122334455\" rdmaIPv4Address=\"172.16.9.9\"/></Instances></SharedConfig>"
        ))
        .expect("a bad RDMA value must not make the document unreadable")
    }

    #[test]
    fn rdma_mac_in_separated_and_lower_case_forms() {
        for mac in ["00:15:5d:33:ff:1d", "00-15-5D-33-FF-1D", "00155d33ff1d"] {
            let sc = one_instance(&format!(
                "rdmaMacAddress=\"{mac}\" rdmaIPv4Address=\"172.16.1.4\""
            ));
            assert_eq!(
                sc.rdma().unwrap().map(|(_, m)| m),
                Some([0x00, 0x15, 0x5d, 0x33, 0xff, 0x1d]),
                "{mac}"
            );
        }
    }

    #[test]
    fn rdma_bad_or_half_values_are_clear_errors() {
        let cases = [
            (
                "rdmaMacAddress=\"00155D33FF1\" rdmaIPv4Address=\"172.16.1.4\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaMacAddress: not a MAC address: \"00155D33FF1\"",
            ),
            (
                "rdmaMacAddress=\"00155D33FF1G\" rdmaIPv4Address=\"172.16.1.4\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaMacAddress: not a MAC address: \"00155D33FF1G\"",
            ),
            (
                "rdmaMacAddress=\"00:15:5D:33:FF-1D\" rdmaIPv4Address=\"172.16.1.4\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaMacAddress: not a MAC address: \"00:15:5D:33:FF-1D\"",
            ),
            (
                "rdmaMacAddress=\"00155D33FF1D\" rdmaIPv4Address=\"172.16.1.400\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaIPv4Address: not an IPv4 address: \"172.16.1.400\"",
            ),
            (
                "rdmaMacAddress=\"00155D33FF1D\" rdmaIPv4Address=\"-o eth0\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaIPv4Address: not an IPv4 address: \"-o eth0\"",
            ),
            (
                "rdmaMacAddress=\"00155D33FF1D\"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaIPv4Address: missing",
            ),
            (
                "rdmaIPv4Address=\"172.16.1.4\" rdmaMacAddress=\" \"",
                "SharedConfig: /SharedConfig/Instances/Instance[1]/@rdmaMacAddress: missing",
            ),
        ];
        for (attrs, want) in cases {
            let e = one_instance(attrs).rdma().unwrap_err();
            assert_eq!(e.to_string(), want, "{attrs}");
        }
    }

    #[test]
    fn rdma_of_the_first_instance_only() {
        // The second instance has an endpoint, the first (this VM) none.
        assert_eq!(one_instance("").rdma(), Ok(None));
        assert_eq!(SharedConfig::default().rdma(), Ok(None));
    }

    #[test]
    fn instance_without_id_is_refused() {
        let e = SharedConfig::parse(
            "<SharedConfig><Instances><Instance id=\"a\"/><Instance address=\"10.0.0.5\"/></Instances></SharedConfig>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "SharedConfig: /SharedConfig/Instances/Instance[2]/@id: missing"
        );
    }

    #[test]
    fn sample_shared_configs() {
        let Some(text) = sample("wire/shared_config.xml") else {
            return;
        };
        let sc = SharedConfig::parse(&text).unwrap();
        assert_eq!(
            sc.deployment_name.as_deref(),
            Some("db00a7755a5e4e8a8fe4b19bc3b330c3")
        );
        assert_eq!(sc.role_name.as_deref(), Some("MachineRole"));
        assert_eq!(sc.instances.len(), 1);
        assert_eq!(sc.instances[0].id, "MachineRole_IN_0");
        assert_eq!(sc.instances[0].address.as_deref(), Some("10.115.153.75"));
        assert_eq!(sc.rdma(), Ok(None));

        let hib = sample("hibernate/goal_state_1/SharedConfig.xml").unwrap();
        let sc = SharedConfig::parse(&hib).unwrap();
        assert_eq!((sc.deployment_name, sc.role_name), (None, None));
        assert_eq!(sc.instances[0].id, "_test-vm");
        assert_eq!(sc.instances[0].address.as_deref(), Some("10.1.52.28"));
    }
}
