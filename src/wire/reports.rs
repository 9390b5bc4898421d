//! What the agent tells the fabric (§6.8, §6.9, §11.4): health reports, role
//! properties and the HostGAPlugin status envelope. Pure builders; sending
//! is the client's job.

use base64::Engine;

use crate::xml::escape;

/// The server refuses descriptions over 4096 bytes; the current agent trims
/// to 3686 characters before escaping, which leaves room for the escapes.
pub const MAX_DESCRIPTION_CHARS: usize = 3686;

/// `Health/…/Details/SubStatus` of a NotReady report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubStatus {
    /// Provisioning has started (or is under way).
    Provisioning,
    /// Provisioning failed; the description says why.
    ProvisioningFailed,
}

impl SubStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubStatus::Provisioning => "Provisioning",
            SubStatus::ProvisioningFailed => "ProvisioningFailed",
        }
    }
}

/// The role instance's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady {
        sub_status: SubStatus,
        description: String,
    },
}

/// Which goal state and instance a report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportTarget {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
}

/// The body of `POST /machine?comp=health`: no whitespace between elements.
pub fn health_xml(target: &ReportTarget, health: &Health) -> String {
    let state = match health {
        Health::Ready => "<State>Ready</State>".to_string(),
        Health::NotReady {
            sub_status,
            description,
        } => {
            // Control characters (from a command's stderr, say) are not
            // allowed in XML 1.0; the fabric would refuse the whole report.
            let description: String = description
                .chars()
                .take(MAX_DESCRIPTION_CHARS)
                .map(|c| {
                    if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            format!(
                "<State>NotReady</State><Details><SubStatus>{}</SubStatus><Description>{}</Description></Details>",
                sub_status.as_str(),
                escape(&description)
            )
        }
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\
         <GoalStateIncarnation>{}</GoalStateIncarnation>\
         <Container><ContainerId>{}</ContainerId><RoleInstanceList><Role>\
         <InstanceId>{}</InstanceId><Health>{state}</Health>\
         </Role></RoleInstanceList></Container></Health>",
        escape(&target.incarnation),
        escape(&target.container_id),
        escape(&target.instance_id),
    )
}

/// The body of `POST /machine?comp=roleProperties`, carrying the SSH host
/// key fingerprint as `CertificateThumbprint` (2.2.x sends it after Ready).
pub fn role_properties_xml(target: &ReportTarget, thumbprint: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <RoleProperties><Container><ContainerId>{}</ContainerId><RoleInstances><RoleInstance>\
         <Id>{}</Id><Properties><Property name=\"CertificateThumbprint\" value=\"{}\" /></Properties>\
         </RoleInstance></RoleInstances></Container></RoleProperties>",
        escape(&target.container_id),
        escape(&target.instance_id),
        escape(thumbprint),
    )
}

/// The JSON body of HostGAPlugin `PUT /status`: the storage request the
/// plugin should replay for us (keys sorted, as waagent sends them).
pub fn status_envelope(
    request_uri: &str,
    headers: &[(&str, &str)],
    content: Option<&[u8]>,
) -> String {
    let mut obj = serde_json::Map::new();
    if let Some(c) = content {
        obj.insert(
            "content".into(),
            base64::engine::general_purpose::STANDARD.encode(c).into(),
        );
    }
    obj.insert(
        "headers".into(),
        headers
            .iter()
            .map(|(n, v)| serde_json::json!({"headerName": n, "headerValue": v}))
            .collect::<Vec<_>>()
            .into(),
    );
    obj.insert("requestUri".into(), request_uri.into());
    serde_json::Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ReportTarget {
        ReportTarget {
            incarnation: "1".into(),
            container_id: "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2".into(),
            instance_id: "b61f93d0.MachineRole_IN_0".into(),
        }
    }

    #[test]
    fn ready() {
        assert_eq!(
            health_xml(&target(), &Health::Ready),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId><RoleInstanceList><Role><InstanceId>b61f93d0.MachineRole_IN_0</InstanceId><Health><State>Ready</State></Health></Role></RoleInstanceList></Container></Health>"
        );
    }

    #[test]
    fn not_ready_escapes_and_trims_the_description() {
        let h = Health::NotReady {
            sub_status: SubStatus::ProvisioningFailed,
            description: "user <root> & friends".into(),
        };
        let x = health_xml(&target(), &h);
        assert!(x.contains("<Health><State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>user &lt;root&gt; &amp; friends</Description></Details></Health>"), "{x}");
        let long = Health::NotReady {
            sub_status: SubStatus::Provisioning,
            description: "é".repeat(5000),
        };
        let x = health_xml(&target(), &long);
        assert_eq!(x.matches('é').count(), MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn control_characters_never_reach_the_xml() {
        let h = Health::NotReady {
            sub_status: SubStatus::ProvisioningFailed,
            description: "a\u{1}b\u{1b}[0mc\nd".into(),
        };
        assert!(health_xml(&target(), &h).contains("<Description>a b [0mc\nd</Description>"));
    }

    #[test]
    fn role_properties() {
        let x = role_properties_xml(&target(), "SHA256abc+/=");
        assert!(x.contains("<Id>b61f93d0.MachineRole_IN_0</Id><Properties><Property name=\"CertificateThumbprint\" value=\"SHA256abc+/=\" /></Properties>"), "{x}");
    }

    #[test]
    fn envelope_is_sorted_json_with_base64_content() {
        let e = status_envelope(
            "https://blob/status?sig=x&sp=rw",
            &[
                ("x-ms-version", "2014-02-14"),
                ("x-ms-blob-type", "BlockBlob"),
            ],
            Some(b"{\"version\":\"1.1\"}"),
        );
        assert_eq!(
            e,
            r#"{"content":"eyJ2ZXJzaW9uIjoiMS4xIn0=","headers":[{"headerName":"x-ms-version","headerValue":"2014-02-14"},{"headerName":"x-ms-blob-type","headerValue":"BlockBlob"}],"requestUri":"https://blob/status?sig=x&sp=rw"}"#
        );
        assert!(!status_envelope("u", &[], None).contains("content"));
    }
}
