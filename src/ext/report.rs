//! What the status blob says of each handler (§12.4 of PROTOCOL.md): the
//! outcome of its task in the goal state being handled, and what the
//! extension itself wrote — its status file for the sequence number in
//! force, and its heartbeat when the manifest asks for one.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::exec::{read_state, Handling, Outcome};
use super::handler::{self, HandlerManifest, StatusFor};
use crate::wire::docs::{ExtensionSettings, ExtensionState, ExtensionsConfig, Plugin, PluginState};
use crate::wire::status::{ExtensionStatus, HandlerStatus};

/// A status file this young that cannot be read may be being written: it
/// is reported as transitioning, not as the error CRP would take as final.
const TRANSIENT_GRACE: Duration = Duration::from_secs(10);

/// The status of every handler of `ec` that has one to report.
pub fn handler_statuses(
    ec: &ExtensionsConfig,
    handling: &Handling,
    lib: &Path,
    now: SystemTime,
) -> Vec<HandlerStatus> {
    let mut out = Vec::new();
    for p in &ec.plugins {
        let installed =
            super::plan::installed_version(&p.name, &super::exec::installed_handlers(lib)).cloned();
        match handling.outcome(&p.name) {
            Some(Outcome::Uninstalled) => {}
            Some(Outcome::Failed {
                version,
                code,
                message,
                enabling,
            }) => out.extend(failed(p, version, *code, message, *enabling)),
            Some(Outcome::Disabled { version }) => out.push(disabled(p, version)),
            Some(Outcome::Enabled { version }) => out.extend(enabled(p, version, lib, now)),
            // Not reached yet in this goal state: what is there now.
            None => match (p.state, installed) {
                (Some(PluginState::Enabled), Some(i))
                    if read_state(&lib.join(format!("{}-{}", i.name, i.version)))
                        == handler::HandlerState::Enabled =>
                {
                    out.extend(enabled(p, &i.version, lib, now))
                }
                (Some(PluginState::Enabled), _) => out.push(HandlerStatus {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    status: "Installing",
                    code: 0,
                    message: Some("Plugin is being installed".into()),
                    extension: None,
                }),
                (Some(PluginState::Disabled), Some(i)) => out.push(disabled(p, &i.version)),
                _ => {}
            },
        }
    }
    out
}

/// The settings entries an enabled handler reports on: every enabled
/// extension of a multi-config handler, else its one (or none).
fn reported_settings(p: &Plugin) -> Vec<Option<&ExtensionSettings>> {
    if p.multi_config {
        return p
            .settings
            .iter()
            .filter(|s| s.state == ExtensionState::Enabled)
            .map(Some)
            .collect();
    }
    vec![p.settings.first()]
}

fn enabled(p: &Plugin, version: &str, lib: &Path, now: SystemTime) -> Vec<HandlerStatus> {
    let dir = lib.join(format!("{}-{version}", p.name));
    let manifest = HandlerManifest::read(&dir).ok();
    let mut base = HandlerStatus {
        name: p.name.clone(),
        version: version.to_string(),
        status: "Ready",
        code: 0,
        message: Some("Plugin enabled".into()),
        extension: None,
    };
    if manifest.as_ref().is_some_and(|m| m.report_heartbeat) {
        handler::read_heartbeat(&dir.join(handler::HEARTBEAT_FILE), now).apply(&mut base);
    }
    reported_settings(p)
        .into_iter()
        .map(|s| {
            let mut h = base.clone();
            let of = StatusFor {
                handler: &p.name,
                extension: s.and_then(|s| s.name.as_deref()),
                seq_no: s.map_or(0, |s| s.seq_no),
            };
            h.extension = status_of(&dir, &of, now);
            h
        })
        .collect()
}

/// The extension's status file for `of`, or `None` for a handler with no
/// settings that wrote none.
fn status_of(dir: &Path, of: &StatusFor<'_>, now: SystemTime) -> Option<ExtensionStatus> {
    let file = handler::status_file_name(of.extension, of.seq_no).ok()?;
    let path = dir.join("status").join(file);
    let read = handler::read_status(&path, of);
    let young = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < TRANSIENT_GRACE);
    let mut status = read.status;
    if read.outcome.may_be_transient() && young {
        status.status = "transitioning";
        status.code = 0;
        status.message = format!("the status file {} is being written", path.display());
    }
    status.message = crate::redact::redact(&status.message).into_owned();
    Some(status)
}

fn disabled(p: &Plugin, version: &str) -> HandlerStatus {
    HandlerStatus {
        name: p.name.clone(),
        version: version.to_string(),
        status: "NotReady",
        code: 0,
        message: Some("Plugin disabled".into()),
        extension: None,
    }
}

/// A failure: the handler NotReady with the code and message; for an
/// enable with settings, also an `error` status for the sequence number CRP
/// waits on (§13.9).
fn failed(
    p: &Plugin,
    version: &str,
    code: i64,
    message: &str,
    enabling: bool,
) -> Vec<HandlerStatus> {
    let base = HandlerStatus {
        name: p.name.clone(),
        version: if version.is_empty() {
            p.version.clone()
        } else {
            version.to_string()
        },
        status: "NotReady",
        code,
        message: Some(message.to_string()),
        extension: None,
    };
    reported_settings(p)
        .into_iter()
        .map(|s| {
            let mut h = base.clone();
            if let (true, Some(s)) = (enabling, s) {
                h.extension = Some(ExtensionStatus {
                    extension_name: s.name.clone(),
                    name: s.name.clone().unwrap_or_else(|| p.name.clone()),
                    sequence_number: s.seq_no,
                    operation: Some("Enable".into()),
                    status: "error",
                    code,
                    message: message.to_string(),
                    configuration_applied_time: None,
                    substatus: Vec::new(),
                });
            }
            h
        })
        .collect()
}
