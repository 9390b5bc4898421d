//! The aggregate status blob (§12): what the portal shows about the agent
//! and its extensions, uploaded to the `StatusUploadBlob` SAS URL on every
//! goal-state period. Built here (pure), uploaded by the client.

use std::time::SystemTime;

/// The guest agent's part of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub os_name: String,
    pub os_version: String,
    pub computer_name: String,
    /// `inSvdSeqNo` of the extensions goal state processed, if known.
    pub in_svd_seq_no: Option<u64>,
}

/// The status document, current agent's shape (§12.2), with no handlers:
/// the agent is Ready.
pub fn aggregate_status(agent: &AgentStatus, now: SystemTime) -> String {
    let ts = crate::utc::timestamp(now);
    let message = |m: &str| serde_json::json!({"lang": "en-US", "message": m});
    let mut aggregate = serde_json::json!({
        "guestAgentStatus": {
            "version": crate::VERSION,
            "status": "Ready",
            "formattedMessage": message("Guest Agent is running"),
        },
        "handlerAggregateStatus": [],
    });
    if let Some(seq) = agent.in_svd_seq_no {
        aggregate["vmArtifactsAggregateStatus"] = serde_json::json!({
            "goalStateAggregateStatus": {
                "formattedMessage": message("GoalState executed successfully"),
                "timestampUTC": ts,
                "inSvdSeqNo": seq,
                "status": "Success",
                "code": 0,
            }
        });
    }
    serde_json::json!({
        "version": "1.1",
        "timestampUTC": ts,
        "aggregateStatus": aggregate,
        "guestOSInfo": {
            "computerName": agent.computer_name,
            "osName": agent.os_name,
            "osVersion": agent.os_version,
            "version": crate::VERSION,
        },
        "supportedFeatures": [],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn agent_ready_document() {
        let a = AgentStatus {
            os_name: "debian".into(),
            os_version: "12".into(),
            computer_name: "vm1".into(),
            in_svd_seq_no: Some(4),
        };
        let v: serde_json::Value = serde_json::from_str(&aggregate_status(&a, UNIX_EPOCH)).unwrap();
        assert_eq!(v["version"], "1.1");
        assert_eq!(v["timestampUTC"], "1970-01-01T00:00:00Z");
        assert_eq!(v["aggregateStatus"]["guestAgentStatus"]["status"], "Ready");
        assert_eq!(
            v["aggregateStatus"]["guestAgentStatus"]["version"],
            crate::VERSION
        );
        assert_eq!(
            v["aggregateStatus"]["handlerAggregateStatus"],
            serde_json::json!([])
        );
        assert_eq!(
            v["aggregateStatus"]["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
                ["inSvdSeqNo"],
            4
        );
        assert_eq!(v["guestOSInfo"]["computerName"], "vm1");
    }
}
