//! `HostingEnvironmentConfig`: fetched from the goal state's
//! `RoleInstance/Configuration/HostingEnvironmentConfig` URL (§5.3, §6.3).
//! The agent uses three names from it.

use super::{parse_root, DocError};

const DOCUMENT: &str = "HostingEnvironmentConfig";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingEnvironmentConfig {
    /// `Incarnation@instance`: the VM name.
    pub vm_name: String,
    /// `Role@name`: the role name.
    pub role_name: Option<String>,
    /// `Deployment@name`: the tenant (deployment) name, for telemetry only.
    pub deployment_name: Option<String>,
}

impl HostingEnvironmentConfig {
    /// Only the VM name is required. `Role` and `Deployment` are optional
    /// because the fabric leaves them out today: the 2025 capture in
    /// `hibernate/goal_state_1/HostingEnvironmentConfig.xml` has only
    /// `StoredCertificates` and `Incarnation`, and the current agent reads
    /// them with `getattrib`, which gives `None` for a missing element.
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "HostingEnvironmentConfig")?;
        let hec = root.node(DOCUMENT);
        Ok(HostingEnvironmentConfig {
            vm_name: hec.req("Incarnation")?.req_attr("instance")?,
            role_name: hec.get("Role").and_then(|r| r.opt_attr("name")),
            deployment_name: hec.get("Deployment").and_then(|d| d.opt_attr("name")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    #[test]
    fn fixture_hosting_env() {
        let hec = HostingEnvironmentConfig::parse(&fixture("hosting_env.xml")).unwrap();
        assert_eq!(hec.vm_name, "_rs-test-vm");
        assert_eq!(hec.role_name.as_deref(), Some("_rs-test-vm"));
        assert_eq!(
            hec.deployment_name.as_deref(),
            Some("a1b2c3d4e5f60718293a4b5c6d7e8f90")
        );
    }

    #[test]
    fn vm_name_is_required() {
        let e = HostingEnvironmentConfig::parse(
            "<HostingEnvironmentConfig><Role name=\"r\"/></HostingEnvironmentConfig>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "HostingEnvironmentConfig: /HostingEnvironmentConfig/Incarnation: missing"
        );
        let e = HostingEnvironmentConfig::parse(
            "<HostingEnvironmentConfig><Incarnation number=\"1\"/></HostingEnvironmentConfig>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "HostingEnvironmentConfig: /HostingEnvironmentConfig/Incarnation/@instance: missing"
        );
    }

    #[test]
    fn sample_hosting_env_both_generations() {
        for rel in ["wire/hosting_env.xml", "v2.2.5/wire/hosting_env.xml"] {
            let Some(text) = sample(rel) else { return };
            let hec = HostingEnvironmentConfig::parse(&text).unwrap();
            assert_eq!(hec.vm_name, "MachineRole_IN_0", "{rel}");
            assert_eq!(hec.role_name.as_deref(), Some("MachineRole"), "{rel}");
            assert_eq!(
                hec.deployment_name.as_deref(),
                Some("db00a7755a5e4e8a8fe4b19bc3b330c3"),
                "{rel}"
            );
        }
    }

    #[test]
    fn sample_hibernate_hosting_env_has_only_the_vm_name() {
        let Some(text) = sample("hibernate/goal_state_1/HostingEnvironmentConfig.xml") else {
            return;
        };
        let hec = HostingEnvironmentConfig::parse(&text).unwrap();
        assert_eq!(hec.vm_name, "_test-vm");
        assert_eq!((hec.role_name, hec.deployment_name), (None, None));
    }
}
