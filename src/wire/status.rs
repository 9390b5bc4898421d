//! The aggregate status blob (§12): what the portal shows about the agent
//! and its extensions, uploaded to the `StatusUploadBlob` SAS URL on every
//! goal-state period. Built here (pure), uploaded by the client.
//!
//! CRP waits for a status from every handler of the goal state, so a handler
//! the agent does not run is still reported, as failed, with the reason —
//! waagent does the same for handlers it refuses (`Extensions.Enabled=n`, a
//! policy): a `NotReady` handler status with a terminal error code, and for
//! an enable with settings an `error` extension status for that sequence
//! number, so CRP fails fast instead of waiting out its timeout.

use std::time::SystemTime;

use crate::wire::docs::{ExtensionState, ExtensionsConfig, PluginState};

/// The guest agent's part of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub os_name: String,
    pub os_version: String,
    pub computer_name: String,
    /// `inSvdSeqNo` of the extensions goal state processed, if known.
    pub in_svd_seq_no: Option<u64>,
    /// How processing that goal state went (`goalStateAggregateStatus`).
    pub goal_state: GoalStateOutcome,
}

/// The outcome of processing an extensions goal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoalStateOutcome {
    /// Its handlers are still being run: nothing is said yet.
    InProgress,
    Success,
    /// Why it failed (handlers that failed, or were not run).
    Failed(String),
}

impl GoalStateOutcome {
    /// For handlers none of which was run: failed, saying how many.
    pub fn not_run(handlers: &[HandlerStatus]) -> GoalStateOutcome {
        match handlers.len() {
            0 => GoalStateOutcome::Success,
            n => GoalStateOutcome::Failed(format!("{n} of {n} extension handler(s) not run")),
        }
    }
}

/// `ExtensionErrorCodes.PluginEnableProcessingFailed`: an enable that did not happen.
pub const CODE_ENABLE_FAILED: i64 = 1009;
/// `ExtensionErrorCodes.PluginDisableProcessingFailed`: a disable or
/// uninstall that did not happen (CRP has no code of its own for uninstall).
pub const CODE_DISABLE_FAILED: i64 = 1010;
/// `GoalStateAggregateStatusCodes.GoalStateUnknownFailure`.
const CODE_GOAL_STATE_FAILED: i64 = -1;

/// One entry of `handlerAggregateStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStatus {
    /// `{Publisher}.{Type}`.
    pub name: String,
    pub version: String,
    /// `Ready`, `NotReady`, `Installing`, `Unresponsive`.
    pub status: &'static str,
    pub code: i64,
    pub message: Option<String>,
    /// The extension's own status, reported as `runtimeSettingsStatus`.
    pub extension: Option<ExtensionStatus>,
}

impl HandlerStatus {
    /// An installed, enabled handler's entry: `Ready`, "Plugin enabled", and
    /// no extension status yet (waagent's words for the same state).
    pub fn enabled(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            status: "Ready",
            code: 0,
            message: Some("Plugin enabled".into()),
            extension: None,
        }
    }
}

/// One extension's status (`runtimeSettingsStatus.settingsStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionStatus {
    /// The extension's name for a multi-config handler (reported as
    /// `extensionName`); `None` for single-config.
    pub extension_name: Option<String>,
    /// The name inside the settings status: the extension's, else the handler's.
    pub name: String,
    pub sequence_number: u64,
    /// `Enable`, `Disable`, … as the extension wrote it; `None` (reported
    /// as `null`, as waagent does) when it did not say.
    pub operation: Option<String>,
    /// `transitioning`, `warning`, `error`, `success`.
    pub status: &'static str,
    pub code: i64,
    pub message: String,
    /// When the extension says it applied these settings; `null` when it
    /// did not say (waagent reports the file's value, never its own time).
    pub configuration_applied_time: Option<String>,
    /// Reported as `substatus`, left out when empty (§12.1).
    pub substatus: Vec<SubStatus>,
}

/// One entry of an extension status's `substatus`; what the extension wrote,
/// its text cut down when the status file was oversized (§13.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubStatus {
    /// `null` when the extension gave none.
    pub name: Option<String>,
    /// `transitioning`, `warning`, `error`, `success`.
    pub status: &'static str,
    pub code: i64,
    /// `formattedMessage.message`; `null` when the extension gave none.
    pub message: Option<String>,
}

/// Why the extensions of a goal state were not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// `Extensions.Enabled=n`.
    Disabled,
    /// This agent does not run extension handlers yet.
    Unsupported,
}

/// The status of every handler of `ec`, none of which was run, and why.
/// A handler the document itself made invalid reports that reason instead.
pub fn not_run(ec: &ExtensionsConfig, why: NotRun) -> Vec<HandlerStatus> {
    let mut out = Vec::new();
    for plugin in &ec.plugins {
        let (operation, code) = match plugin.state {
            Some(PluginState::Enabled) => ("run", CODE_ENABLE_FAILED),
            _ => ("uninstall", CODE_DISABLE_FAILED),
        };
        let handler = |full_name: &str, extension: Option<ExtensionStatus>| {
            let message = match (&plugin.invalid_reason, why) {
                (Some(reason), _) => format!("Extension '{full_name}' will not be processed: {reason}"),
                (None, NotRun::Disabled) => format!(
                    "Extension '{full_name}' will not be processed since extension processing is disabled. \
                     To enable extension processing, set Extensions.Enabled=y in waagent.conf"
                ),
                (None, NotRun::Unsupported) => format!(
                    "Extension '{full_name}' will not be processed: waagent-rs {} does not {operation} VM extensions yet",
                    crate::VERSION
                ),
            };
            HandlerStatus {
                name: plugin.name.clone(),
                version: plugin.version.clone(),
                status: "NotReady",
                code,
                extension: extension.map(|e| ExtensionStatus {
                    message: message.clone(),
                    ..e
                }),
                message: Some(message),
            }
        };
        if plugin.settings.is_empty() {
            out.push(handler(&plugin.name, None));
            continue;
        }
        for s in &plugin.settings {
            let full_name = match &s.name {
                Some(ext) => format!("{}.{ext}", plugin.name),
                None => plugin.name.clone(),
            };
            // As waagent: an extension status only for an enable, so CRP
            // matches it to the sequence number it is waiting for.
            let enable =
                plugin.state == Some(PluginState::Enabled) && s.state == ExtensionState::Enabled;
            let extension = enable.then(|| ExtensionStatus {
                extension_name: s.name.clone(),
                name: s.name.clone().unwrap_or_else(|| plugin.name.clone()),
                sequence_number: s.seq_no,
                operation: Some("Enable".to_string()),
                status: "error",
                code,
                message: String::new(),
                configuration_applied_time: None,
                substatus: Vec::new(),
            });
            out.push(handler(&full_name, extension));
            if !plugin.multi_config {
                break;
            }
        }
    }
    out
}

/// The status document, current agent's shape (§12.2). The extensions goal
/// state counts as executed only when no handler of it failed.
pub fn aggregate_status(
    agent: &AgentStatus,
    handlers: &[HandlerStatus],
    now: SystemTime,
) -> String {
    let ts = crate::utc::timestamp(now);
    let message = |m: &str| serde_json::json!({"lang": "en-US", "message": m});
    let handler_entries: Vec<serde_json::Value> = handlers
        .iter()
        .map(|h| {
            let mut v = serde_json::json!({
                "handlerVersion": h.version,
                "handlerName": h.name,
                "status": h.status,
                "code": h.code,
                "useExactVersion": true,
            });
            if let Some(m) = &h.message {
                v["formattedMessage"] = message(m);
            }
            if let Some(e) = &h.extension {
                v["runtimeSettingsStatus"] = serde_json::json!({
                    "settingsStatus": {
                        "status": {
                            "name": e.name,
                            "configurationAppliedTime": e.configuration_applied_time,
                            "operation": e.operation,
                            "status": e.status,
                            "code": e.code,
                            "formattedMessage": message(&e.message),
                        },
                        "version": 1.0,
                        "timestampUTC": ts,
                    },
                    "sequenceNumber": e.sequence_number,
                });
                if !e.substatus.is_empty() {
                    let subs: Vec<serde_json::Value> = e
                        .substatus
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "name": s.name,
                                "status": s.status,
                                "code": s.code,
                                "formattedMessage": {"lang": "en-US", "message": s.message},
                            })
                        })
                        .collect();
                    v["runtimeSettingsStatus"]["settingsStatus"]["status"]["substatus"] =
                        subs.into();
                }
                if let Some(name) = &e.extension_name {
                    v["runtimeSettingsStatus"]["extensionName"] = name.clone().into();
                }
            }
            v
        })
        .collect();
    let mut aggregate = serde_json::json!({
        "guestAgentStatus": {
            "version": crate::VERSION,
            "status": "Ready",
            "formattedMessage": message("Guest Agent is running"),
        },
        "handlerAggregateStatus": handler_entries,
    });
    let outcome = match &agent.goal_state {
        GoalStateOutcome::InProgress => None,
        GoalStateOutcome::Success => {
            Some(("GoalState executed successfully".to_string(), "Success", 0))
        }
        GoalStateOutcome::Failed(why) => Some((why.clone(), "Failed", CODE_GOAL_STATE_FAILED)),
    };
    if let (Some(seq), Some((text, status, code))) = (agent.in_svd_seq_no, outcome) {
        aggregate["vmArtifactsAggregateStatus"] = serde_json::json!({
            "goalStateAggregateStatus": {
                "formattedMessage": message(&text),
                "timestampUTC": ts,
                "inSvdSeqNo": seq,
                "status": status,
                "code": code,
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

/// The status document last made, sent again with only its times brought
/// up to date while what it says is the same: the status goes up on every
/// goal-state poll, and is rebuilt only when it changed.
#[derive(Debug, Default)]
pub struct StatusDocument {
    made_from: Option<(AgentStatus, Vec<HandlerStatus>)>,
    /// The `timestampUTC` in `json`.
    ts: String,
    json: String,
}

impl StatusDocument {
    /// The handlers' statuses the document was last made from.
    pub fn handlers(&self) -> Option<&[HandlerStatus]> {
        self.made_from.as_ref().map(|(_, h)| h.as_slice())
    }

    /// [`aggregate_status`] of the arguments, the same text to the byte.
    pub fn render(
        &mut self,
        agent: &AgentStatus,
        handlers: &[HandlerStatus],
        now: SystemTime,
    ) -> &str {
        let ts = crate::utc::timestamp(now);
        let same = self
            .made_from
            .as_ref()
            .is_some_and(|(a, h)| a == agent && h == handlers);
        if !same {
            self.json = aggregate_status(agent, handlers, now);
            self.made_from = Some((agent.clone(), handlers.to_vec()));
        } else if ts != self.ts {
            // Every time in the document is a `"timestampUTC":"…"` pair we
            // wrote: inside a JSON string a quote is escaped, so text from
            // a handler cannot look like one.
            let pair = |t: &str| format!("\"timestampUTC\":\"{t}\"");
            self.json = self.json.replace(&pair(&self.ts), &pair(&ts));
        }
        self.ts = ts;
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// An enabled handler's entry: "Plugin enabled", and its extension's
    /// successful Enable with these substatuses.
    fn enabled_handler(substatus: Vec<SubStatus>) -> HandlerStatus {
        HandlerStatus {
            extension: Some(ExtensionStatus {
                extension_name: None,
                name: "Contoso.Tools.Example".into(),
                sequence_number: 3,
                operation: Some("Enable".into()),
                status: "success",
                code: 0,
                message: "Enabled".into(),
                configuration_applied_time: Some("2024-05-01T11:59:58Z".into()),
                substatus,
            }),
            ..HandlerStatus::enabled("Contoso.Tools.Example", "1.2.3")
        }
    }

    #[test]
    fn agent_ready_document() {
        let a = AgentStatus {
            os_name: "debian".into(),
            os_version: "12".into(),
            computer_name: "vm1".into(),
            in_svd_seq_no: Some(4),
            goal_state: GoalStateOutcome::Success,
        };
        let v: serde_json::Value =
            serde_json::from_str(&aggregate_status(&a, &[], UNIX_EPOCH)).unwrap();
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

    #[test]
    fn handlers_not_run_are_reported_failed_with_the_reason() {
        let ec = ExtensionsConfig::parse(&crate::wire::docs::test_support::fixture("ext_conf.xml"))
            .unwrap();
        let a = AgentStatus {
            os_name: "debian".into(),
            os_version: "12".into(),
            computer_name: "vm1".into(),
            in_svd_seq_no: Some(7),
            goal_state: GoalStateOutcome::Failed("3 of 3 extension handler(s) not run".into()),
        };
        let handlers = not_run(&ec, NotRun::Unsupported);
        let v: serde_json::Value =
            serde_json::from_str(&aggregate_status(&a, &handlers, UNIX_EPOCH)).unwrap();
        let agg = &v["aggregateStatus"];
        let gs = &agg["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"];
        assert_eq!(gs["status"], "Failed");
        assert_eq!(gs["code"], -1);
        assert_eq!(gs["inSvdSeqNo"], 7);
        assert_eq!(
            gs["formattedMessage"]["message"],
            "3 of 3 extension handler(s) not run"
        );

        // One entry per single-config handler, one per extension of a
        // multi-config one; each NotReady with enable's terminal code.
        let entries = agg["handlerAggregateStatus"].as_array().unwrap();
        let summary: Vec<(String, String, i64, Option<u64>)> = entries
            .iter()
            .map(|h| {
                (
                    h["handlerName"].as_str().unwrap().to_string(),
                    h["status"].as_str().unwrap().to_string(),
                    h["code"].as_i64().unwrap(),
                    h["runtimeSettingsStatus"]["sequenceNumber"].as_u64(),
                )
            })
            .collect();
        let echo = "Contoso.Test.EchoHandler".to_string();
        let multi = "Contoso.Test.MultiHandler".to_string();
        let not_ready = "NotReady".to_string();
        assert_eq!(
            summary,
            [
                (echo, not_ready.clone(), 1009, Some(4)),
                (multi.clone(), not_ready.clone(), 1009, Some(3)),
                // Disabled extension: a handler status only.
                (multi, not_ready, 1009, None),
            ]
        );
        let msg = format!(
            "Extension 'Contoso.Test.MultiHandler.first' will not be processed: waagent-rs {} does not run VM extensions yet",
            crate::VERSION
        );
        assert_eq!(entries[1]["formattedMessage"]["message"], msg.as_str());
        let rs = &entries[1]["runtimeSettingsStatus"];
        assert_eq!(rs["extensionName"], "first");
        assert_eq!(rs["settingsStatus"]["status"]["status"], "error");
        assert_eq!(rs["settingsStatus"]["status"]["operation"], "Enable");
        assert_eq!(
            rs["settingsStatus"]["status"]["formattedMessage"]["message"],
            msg.as_str()
        );
        assert!(entries[0]["runtimeSettingsStatus"]
            .get("extensionName")
            .is_none());
        assert!(entries[2]["formattedMessage"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Extension 'Contoso.Test.MultiHandler.second' will not"));

        // Extensions.Enabled=n says so, as waagent does.
        let off = not_run(&ec, NotRun::Disabled);
        assert!(off[0].message.as_deref().unwrap().ends_with(
            "since extension processing is disabled. To enable extension processing, set Extensions.Enabled=y in waagent.conf"
        ));
    }

    #[test]
    fn uninstall_and_invalid_handlers_say_so() {
        let text = crate::wire::docs::test_support::fixture("ext_conf.xml").replacen(
            "state=\"enabled\"",
            "state=\"uninstall\"",
            1,
        );
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let h = not_run(&ec, NotRun::Unsupported);
        assert_eq!(h[0].code, 1010);
        assert_eq!(h[0].extension, None);
        assert!(h[0]
            .message
            .as_deref()
            .unwrap()
            .ends_with("does not uninstall VM extensions yet"));

        let text = crate::wire::docs::test_support::fixture("ext_conf.xml").replacen(
            "state=\"enabled\"",
            "state=\"sideways\"",
            1,
        );
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let h = not_run(&ec, NotRun::Unsupported);
        let reason = ec.plugins[0].invalid_reason.clone().unwrap();
        assert_eq!(
            h[0].message.as_deref().unwrap(),
            format!("Extension 'Contoso.Test.EchoHandler' will not be processed: {reason}")
        );
    }

    #[test]
    fn an_extension_status_carries_its_substatus_and_applied_time() {
        let a = AgentStatus {
            os_name: "debian".into(),
            os_version: "12".into(),
            computer_name: "vm1".into(),
            in_svd_seq_no: Some(1),
            goal_state: GoalStateOutcome::Success,
        };
        let handlers = [
            enabled_handler(vec![
                SubStatus {
                    name: Some("StdOut".into()),
                    status: "success",
                    code: 0,
                    message: Some("hello \"quoted\"\n".into()),
                },
                SubStatus {
                    name: None,
                    status: "warning",
                    code: 7,
                    message: None,
                },
            ]),
            enabled_handler(Vec::new()),
        ];
        let v: serde_json::Value =
            serde_json::from_str(&aggregate_status(&a, &handlers, UNIX_EPOCH)).unwrap();
        let agg = &v["aggregateStatus"];
        assert_eq!(
            agg["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["status"],
            "Success"
        );
        let rs = &agg["handlerAggregateStatus"][0]["runtimeSettingsStatus"];
        assert_eq!(rs["sequenceNumber"], 3);
        let settings = &rs["settingsStatus"];
        assert_eq!(settings["version"], 1.0);
        assert!(settings["version"].is_f64());
        assert_eq!(settings["timestampUTC"], "1970-01-01T00:00:00Z");
        let st = &settings["status"];
        assert_eq!(st["name"], "Contoso.Tools.Example");
        assert_eq!(st["configurationAppliedTime"], "2024-05-01T11:59:58Z");
        assert_eq!(st["operation"], "Enable");
        assert_eq!(st["status"], "success");
        assert_eq!(st["formattedMessage"]["message"], "Enabled");
        assert_eq!(
            st["substatus"],
            serde_json::json!([
                {"name": "StdOut", "status": "success", "code": 0,
                 "formattedMessage": {"lang": "en-US", "message": "hello \"quoted\"\n"}},
                {"name": null, "status": "warning", "code": 7,
                 "formattedMessage": {"lang": "en-US", "message": null}},
            ])
        );
        // No substatus key at all when there is none (§12.1).
        let st =
            &agg["handlerAggregateStatus"][1]["runtimeSettingsStatus"]["settingsStatus"]["status"];
        assert!(st.get("substatus").is_none());

        // An extension status the agent made up has no applied time.
        let ec = ExtensionsConfig::parse(&crate::wire::docs::test_support::fixture("ext_conf.xml"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&aggregate_status(
            &a,
            &not_run(&ec, NotRun::Unsupported),
            UNIX_EPOCH,
        ))
        .unwrap();
        let st = &v["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]
            ["settingsStatus"]["status"];
        assert!(st["configurationAppliedTime"].is_null());
        assert!(st.get("substatus").is_none());
    }

    /// Sent again unchanged, the document is the one a fresh build gives:
    /// only the times moved, even where a handler's own text holds what
    /// looks like a time pair.
    #[test]
    fn a_status_document_sent_again_is_a_fresh_build_to_the_byte() {
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000);
        let later = t0 + std::time::Duration::from_secs(6);
        let agent = AgentStatus {
            os_name: "debian".into(),
            os_version: "12".into(),
            computer_name: "vm1".into(),
            in_svd_seq_no: Some(4),
            goal_state: GoalStateOutcome::Success,
        };
        let sly = format!("\"timestampUTC\":\"{}\"", crate::utc::timestamp(t0));
        let mut handler = enabled_handler(Vec::new());
        handler.message = Some(sly);
        let handlers = vec![handler];
        let mut doc = StatusDocument::default();
        assert_eq!(doc.handlers(), None);
        assert_eq!(
            doc.render(&agent, &handlers, t0),
            aggregate_status(&agent, &handlers, t0)
        );
        let again = doc.render(&agent, &handlers, later).to_string();
        assert_eq!(again, aggregate_status(&agent, &handlers, later));
        assert_ne!(again, aggregate_status(&agent, &handlers, t0));
        // A change is a new build.
        let mut failed = agent.clone();
        failed.goal_state = GoalStateOutcome::Failed("1 of 1 extension handler(s) failed".into());
        assert_eq!(
            doc.render(&failed, &handlers, later),
            aggregate_status(&failed, &handlers, later)
        );
        assert_eq!(
            doc.render(&failed, &[], later),
            aggregate_status(&failed, &[], later)
        );
        assert_eq!(doc.handlers(), Some(&[][..]));
    }
}
