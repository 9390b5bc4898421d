//! `GoalState`: the answer to `GET http://<ep>/machine/?comp=goalstate`
//! (§5.2, §6.2). It names the incarnation, the container and the URLs of the
//! other documents of this incarnation.

use super::{parse_root, DocError};
use crate::xml::Node;

const DOCUMENT: &str = "GoalState";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    /// `Incarnation`: compared as text, never as a number. Only digits
    /// (checked by [`GoalState::parse`]): it becomes part of file names
    /// (`GoalState.{n}.xml`), so `../` from the network must never get there.
    pub incarnation: String,
    /// `Machine/ExpectedState` (`Started`).
    pub expected_state: Option<String>,
    /// `Machine/LBProbePorts/Port`: where 2.0's load-balancer probe
    /// responder listened (§18.9).
    pub lb_probe_ports: LbProbePorts,
    /// `Container/ContainerId`: sent in health reports, role properties,
    /// telemetry and the HostGAPlugin headers. It can change without a new
    /// incarnation (live migration, hibernation), so read it every time.
    pub container_id: String,
    /// The first `Container/RoleInstanceList/RoleInstance`. `None` early in a
    /// VM's life (`goal_state_noop.xml`): the agent asks again later.
    pub role_instance: Option<RoleInstance>,
    /// `Container/RemoteAccessInfo`: where the JIT remote-access users are.
    pub remote_access_info_url: Option<String>,
}

/// One `RoleInstance`: this VM's id and the URLs of its configuration
/// documents (`Configuration/*`). The URLs are absolute and used verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInstance {
    /// `InstanceId`: sent in health reports and role properties.
    pub instance_id: String,
    /// `State` (`Started`).
    pub state: Option<String>,
    pub hosting_environment_config_url: Option<String>,
    pub shared_config_url: Option<String>,
    /// Absent when the VM has no extensions configured.
    pub extensions_config_url: Option<String>,
    /// Present, but never fetched by any waagent.
    pub full_config_url: Option<String>,
    /// Absent when the VM has no certificates.
    pub certificates_url: Option<String>,
    /// `ConfigName`: the HostGAPlugin's `x-ms-host-config-name`.
    pub config_name: Option<String>,
}

impl GoalState {
    /// `Incarnation` and `Container/ContainerId` are required; everything
    /// else is optional.
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "GoalState")?;
        let gs = root.node(DOCUMENT);
        Ok(GoalState {
            incarnation: incarnation(&gs)?,
            expected_state: gs.opt_text("Machine/ExpectedState"),
            lb_probe_ports: LbProbePorts::read(&gs),
            container_id: gs.req_text("Container/ContainerId")?,
            role_instance: gs
                .get("Container/RoleInstanceList/RoleInstance")
                .map(|ri| RoleInstance::read(&ri))
                .transpose()?,
            remote_access_info_url: gs.opt_text("Container/RemoteAccessInfo"),
        })
    }
}

/// The most load-balancer probe ports listened on: the fabric names one;
/// a goal state naming hundreds must not make the agent open hundreds of
/// sockets.
pub const MAX_LB_PROBE_PORTS: usize = 16;

/// The goal state's `LBProbePorts`, read strictly: each `Port` must be a
/// whole number from 1 to 65535 (surrounding blanks aside); duplicates
/// count once and only the first [`MAX_LB_PROBE_PORTS`] distinct ports are
/// kept. A bad entry never fails the goal state: it is left out and said
/// why in `refused`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbProbePorts {
    /// The ports to listen on, ascending.
    pub ports: Vec<u16>,
    /// One line per entry left out, naming its path (the value quoted, as
    /// it comes from the network).
    pub refused: Vec<String>,
}

impl LbProbePorts {
    fn read(gs: &Node<'_>) -> Self {
        let mut kept: Vec<u16> = Vec::new();
        let mut refused = Vec::new();
        for node in gs.all("Machine/LBProbePorts/Port") {
            let text = node.text();
            let port = match text.parse::<u16>() {
                Ok(p) if p > 0 && text.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => {
                    refused.push(format!(
                        "{}: {} is not a port (1-65535)",
                        node.path(),
                        crate::names::quote(text)
                    ));
                    continue;
                }
            };
            if kept.contains(&port) {
                continue;
            }
            if kept.len() == MAX_LB_PROBE_PORTS {
                refused.push(format!(
                    "{}: port {port} is over the limit of {MAX_LB_PROBE_PORTS} ports",
                    node.path()
                ));
                continue;
            }
            kept.push(port);
        }
        kept.sort_unstable();
        // Said one by one up to a point: a goal state of a million bad
        // entries must not become a million log lines.
        if refused.len() > MAX_LB_PROBE_PORTS {
            let more = refused.len() - MAX_LB_PROBE_PORTS;
            refused.truncate(MAX_LB_PROBE_PORTS);
            refused.push(format!(
                "/GoalState/Machine/LBProbePorts: {more} more entries left out"
            ));
        }
        LbProbePorts {
            ports: kept,
            refused,
        }
    }
}

/// The longest incarnation accepted: far more digits than any fabric sends,
/// few enough for a file name.
const MAX_INCARNATION_DIGITS: usize = 20;

/// `Incarnation`, which must be 1 to 20 ASCII digits. The value is not
/// quoted in the error: it is hostile by assumption and could be anything.
fn incarnation(gs: &Node<'_>) -> Result<String, DocError> {
    let text = gs.req_text("Incarnation")?;
    if text.len() > MAX_INCARNATION_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(gs.error_at(
            "Incarnation",
            format!("not a number of at most {MAX_INCARNATION_DIGITS} digits"),
        ));
    }
    Ok(text)
}

impl RoleInstance {
    fn read(ri: &Node<'_>) -> Result<Self, DocError> {
        let config = |name: &str| ri.opt_text(&format!("Configuration/{name}"));
        Ok(RoleInstance {
            instance_id: ri.req_text("InstanceId")?,
            state: ri.opt_text("State"),
            hosting_environment_config_url: config("HostingEnvironmentConfig"),
            shared_config_url: config("SharedConfig"),
            extensions_config_url: config("ExtensionsConfig"),
            full_config_url: config("FullConfig"),
            certificates_url: config("Certificates"),
            config_name: config("ConfigName"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    #[test]
    fn fixture_goal_state() {
        let gs = GoalState::parse(&fixture("goal_state.xml")).unwrap();
        assert_eq!(gs.incarnation, "7");
        assert_eq!(gs.expected_state.as_deref(), Some("Started"));
        assert_eq!(gs.container_id, "5f0c8a1e-3b7d-4c2a-9e61-0d4b2f8a7c13");
        assert_eq!(gs.remote_access_info_url, None);
        let ri = gs.role_instance.unwrap();
        assert_eq!(
            ri.instance_id,
            "2d9e4c70-8a15-4f3b-b6d2-91c7e0a4f5b8._rs-test-vm"
        );
        assert_eq!(ri.state.as_deref(), Some("Started"));
        assert_eq!(
            ri.hosting_environment_config_url.as_deref(),
            Some("http://168.63.129.16:80/machine/5f0c8a1e-3b7d-4c2a-9e61-0d4b2f8a7c13/2d9e4c70%2D8a15%2D4f3b%2Db6d2%2D91c7e0a4f5b8.%5Frs%2Dtest%2Dvm?comp=config&type=hostingEnvironmentConfig&incarnation=7")
        );
        assert_eq!(
            ri.certificates_url.as_deref(),
            Some("http://168.63.129.16:80/machine/5f0c8a1e-3b7d-4c2a-9e61-0d4b2f8a7c13/2d9e4c70%2D8a15%2D4f3b%2Db6d2%2D91c7e0a4f5b8.%5Frs%2Dtest%2Dvm?comp=certificates&incarnation=7")
        );
        assert!(ri
            .shared_config_url
            .unwrap()
            .ends_with("type=sharedConfig&incarnation=7"));
        assert!(ri
            .extensions_config_url
            .unwrap()
            .ends_with("type=extensionsConfig&incarnation=7"));
        assert!(ri
            .full_config_url
            .unwrap()
            .ends_with("type=fullConfig&incarnation=7"));
        assert_eq!(
            ri.config_name.as_deref(),
            Some("2d9e4c70-8a15-4f3b-b6d2-91c7e0a4f5b8.0.2d9e4c70-8a15-4f3b-b6d2-91c7e0a4f5b8.0._rs-test-vm.7.xml")
        );
    }

    #[test]
    fn fixture_lb_probe_port() {
        let gs = GoalState::parse(&fixture("goal_state.xml")).unwrap();
        assert_eq!(gs.lb_probe_ports.ports, [16001]);
        assert!(gs.lb_probe_ports.refused.is_empty());
    }

    fn with_ports(ports: &[&str]) -> LbProbePorts {
        let ports: String = ports.iter().map(|p| format!("<Port>{p}</Port>")).collect();
        GoalState::parse(&format!(
            "<GoalState><Incarnation>1</Incarnation><Machine><LBProbePorts>{ports}</LBProbePorts></Machine>\
             <Container><ContainerId>c</ContainerId></Container></GoalState>"
        ))
        .unwrap()
        .lb_probe_ports
    }

    #[test]
    fn lb_probe_ports_are_read_strictly_deduplicated_and_capped() {
        assert_eq!(with_ports(&[]), LbProbePorts::default());
        let none = GoalState::parse(
            "<GoalState><Incarnation>1</Incarnation><Container><ContainerId>c</ContainerId></Container></GoalState>",
        )
        .unwrap();
        assert_eq!(none.lb_probe_ports, LbProbePorts::default());

        let p = with_ports(&["80", " 443 ", "80", "1", "65535"]);
        assert_eq!(p.ports, [1, 80, 443, 65535]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);

        let p = with_ports(&[
            "0",
            "65536",
            "-1",
            "+80",
            "8o",
            "",
            "1e3",
            "99999999999999999999",
            "\u{0661}",
            "80",
        ]);
        assert_eq!(p.ports, [80]);
        assert_eq!(p.refused.len(), 9, "{:?}", p.refused);
        assert_eq!(
            p.refused[0],
            "/GoalState/Machine/LBProbePorts/Port[1]: \"0\" is not a port (1-65535)"
        );
        assert_eq!(
            p.refused[3],
            "/GoalState/Machine/LBProbePorts/Port[4]: \"+80\" is not a port (1-65535)"
        );

        // A hostile value is quoted, escaped and cut, never copied whole.
        let long = format!("1\n{}", "x".repeat(500));
        let p = with_ports(&[&long]);
        assert!(p.ports.is_empty());
        assert!(!p.refused[0].contains('\n'), "{:?}", p.refused);
        assert!(p.refused[0].len() < 200, "{:?}", p.refused);

        // At most MAX_LB_PROBE_PORTS distinct ports: the first ones named.
        let many: Vec<String> = (0..40).map(|i| (20_000 - i).to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let p = with_ports(&many);
        let want: Vec<u16> = (20_001 - MAX_LB_PROBE_PORTS as u16..=20_000).collect();
        assert_eq!(p.ports, want);
        assert_eq!(p.refused.len(), MAX_LB_PROBE_PORTS + 1);
        assert_eq!(
            p.refused[0],
            "/GoalState/Machine/LBProbePorts/Port[17]: port 19984 is over the limit of 16 ports"
        );
        assert_eq!(
            p.refused[MAX_LB_PROBE_PORTS],
            "/GoalState/Machine/LBProbePorts: 8 more entries left out"
        );
        // Ten thousand bad entries: a bounded account of them.
        let junk = vec!["x"; 10_000];
        let p = with_ports(&junk);
        assert!(p.ports.is_empty());
        assert_eq!(p.refused.len(), MAX_LB_PROBE_PORTS + 1);
        assert_eq!(
            p.refused[MAX_LB_PROBE_PORTS],
            "/GoalState/Machine/LBProbePorts: 9984 more entries left out"
        );
    }

    #[test]
    fn fixture_noop_goal_state_has_no_role_instance() {
        let gs = GoalState::parse(&fixture("goal_state_noop.xml")).unwrap();
        assert_eq!(gs.incarnation, "1");
        assert_eq!(gs.container_id, "5f0c8a1e-3b7d-4c2a-9e61-0d4b2f8a7c13");
        assert_eq!(gs.role_instance, None);
    }

    #[test]
    fn missing_required_values_name_their_path() {
        let e = GoalState::parse("<GoalState><Incarnation>1</Incarnation></GoalState>");
        assert_eq!(
            e.unwrap_err().to_string(),
            "GoalState: /GoalState/Container/ContainerId: missing"
        );
        let e = GoalState::parse(
            "<GoalState><Incarnation> </Incarnation><Container><ContainerId>c</ContainerId></Container></GoalState>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "GoalState: /GoalState/Incarnation: empty"
        );
        let e = GoalState::parse(
            "<GoalState><Incarnation>1</Incarnation><Container><ContainerId>c</ContainerId>\
             <RoleInstanceList><RoleInstance><State>Started</State></RoleInstance></RoleInstanceList>\
             </Container></GoalState>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "GoalState: /GoalState/Container/RoleInstanceList/RoleInstance/InstanceId: missing"
        );
    }

    #[test]
    fn incarnation_is_digits_only() {
        let gs = |inc: &str| {
            GoalState::parse(&format!(
                "<GoalState><Incarnation>{inc}</Incarnation><Container><ContainerId>c</ContainerId></Container></GoalState>"
            ))
        };
        assert_eq!(gs(" 42 ").unwrap().incarnation, "42");
        for bad in [
            "../../etc/cron.d/x",
            "1/2",
            "-1",
            "1.0",
            "1e3",
            "\u{0662}",
            "123456789012345678901",
        ] {
            assert_eq!(
                gs(bad).unwrap_err().to_string(),
                "GoalState: /GoalState/Incarnation: not a number of at most 20 digits",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sample_goal_state_urls_are_decoded_once() {
        let Some(text) = sample("wire/goal_state.xml") else {
            return;
        };
        let gs = GoalState::parse(&text).unwrap();
        assert_eq!(gs.incarnation, "1");
        assert_eq!(gs.container_id, "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2");
        let ri = gs.role_instance.unwrap();
        assert_eq!(
            ri.instance_id,
            "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"
        );
        assert_eq!(
            ri.extensions_config_url.as_deref(),
            Some("http://168.63.129.16:80/machine/865a6683-91d8-450f-99ae/bc8b9d47%2Db5ed%2D4704%2D85d9%2Dfd74cc967ec2.%5Fcanary?comp=config&type=extensionsConfig&incarnation=1")
        );
        assert_eq!(
            ri.config_name.as_deref(),
            Some("bc8b9d47-b5ed-4704-85d9-fd74cc967ec2.5.bc8b9d47-b5ed-4704-85d9-fd74cc967ec2.5._canary.1.xml")
        );
    }

    #[test]
    fn sample_goal_state_variants() {
        let Some(noop) = sample("wire/goal_state_noop.xml") else {
            return;
        };
        assert_eq!(GoalState::parse(&noop).unwrap().role_instance, None);

        let no_certs = sample("wire/goal_state_no_certs.xml").unwrap();
        let ri = GoalState::parse(&no_certs).unwrap().role_instance.unwrap();
        assert!(ri.certificates_url.is_none() && ri.extensions_config_url.is_some());

        let no_ext = sample("wire/goal_state_no_ext.xml").unwrap();
        let ri = GoalState::parse(&no_ext).unwrap().role_instance.unwrap();
        assert!(ri.extensions_config_url.is_none() && ri.certificates_url.is_some());

        // The URL is followed by a newline and spaces in the sample.
        let remote = sample("wire/goal_state_remote_access.xml").unwrap();
        let gs = GoalState::parse(&remote).unwrap();
        assert_eq!(
            gs.remote_access_info_url.as_deref(),
            Some("http://168.63.129.16:80/remoteaccessinfouri/")
        );
        // Two ConfigName elements: the first one counts.
        assert_eq!(
            gs.role_instance.unwrap().config_name.as_deref(),
            Some("b61f93d0-e1ed-40b2-b067-22c243233448.1.b61f93d0-e1ed-40b2-b067-22c243233448.2.MachineRole_IN_0.xml")
        );
    }

    #[test]
    fn sample_goal_state_2017_and_hibernate() {
        let Some(old) = sample("v2.2.5/wire/goal_state.xml") else {
            return;
        };
        let ri = GoalState::parse(&old).unwrap().role_instance.unwrap();
        assert_eq!(ri.instance_id, "MachineRole_IN_0");
        assert_eq!(
            ri.hosting_environment_config_url.as_deref(),
            Some("http://hostingenvuri/")
        );
        assert_eq!(ri.config_name.as_deref(), Some("DummyRoleConfigName.xml"));

        let hib = sample("hibernate/goal_state_1/GoalState.xml").unwrap();
        let gs = GoalState::parse(&hib).unwrap();
        assert_eq!(gs.container_id, "06185f00-1f00-4545-abaa-4b7baa121869");
        assert_eq!(
            gs.role_instance.unwrap().instance_id,
            "8cd0ae53-1baa-4f00-9356-a4e1a34f004c._test-vm"
        );
    }

    #[test]
    fn sample_tenant_rotation_incarnations() {
        let Some(three) = sample("tenant_certificate_rotation/GoalState-incarnation-3.xml") else {
            return;
        };
        let four = sample("tenant_certificate_rotation/GoalState-incarnation-4.xml").unwrap();
        let (three, four) = (
            GoalState::parse(&three).unwrap(),
            GoalState::parse(&four).unwrap(),
        );
        assert_eq!(
            (three.incarnation.as_str(), four.incarnation.as_str()),
            ("3", "4")
        );
        assert!(four
            .role_instance
            .unwrap()
            .certificates_url
            .unwrap()
            .ends_with("incarnation=4"));
    }
}
