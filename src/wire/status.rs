//! The aggregate status blob (§12): what the portal shows about the agent
//! and its extensions, uploaded to the `StatusUploadBlob` SAS URL on every
//! goal-state period. Built here (pure), uploaded by the client.

use std::time::{SystemTime, UNIX_EPOCH};

/// The guest agent's part of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub os_name: String,
    pub os_version: String,
    pub computer_name: String,
    /// `inSvdSeqNo` of the extensions goal state processed, if known.
    pub in_svd_seq_no: Option<u64>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC, no fraction (§21 item 13).
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The status document, current agent's shape (§12.2), with no handlers:
/// the agent is Ready.
pub fn aggregate_status(agent: &AgentStatus, now: SystemTime) -> String {
    let ts = utc_timestamp(now);
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
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc_timestamp(UNIX_EPOCH + Duration::from_millis(1_795_866_123_999)),
            "2026-11-28T11:42:03Z"
        );
    }

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
