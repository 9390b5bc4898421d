//! `SharedConfig`: fetched from the goal state's
//! `RoleInstance/Configuration/SharedConfig` URL (§5.4, §6.4): the
//! deployment's topology. waagent only saves it (`<lib>/SharedConfig.xml`,
//! which RDMA setup and other Azure tools read), so the model is small and
//! lenient: everything but an instance's id is optional.

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
                    })
                })
                .collect::<Result<_, DocError>>()?,
        })
    }
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
                address: Some("10.20.30.40".into())
            }]
        );
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

        let hib = sample("hibernate/goal_state_1/SharedConfig.xml").unwrap();
        let sc = SharedConfig::parse(&hib).unwrap();
        assert_eq!((sc.deployment_name, sc.role_name), (None, None));
        assert_eq!(sc.instances[0].id, "_test-vm");
        assert_eq!(sc.instances[0].address.as_deref(), Some("10.1.52.28"));
    }
}
