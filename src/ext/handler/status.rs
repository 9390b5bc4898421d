//! What the extension writes back (§13.6, §13.7): its status files and
//! its heartbeat, read with the bounds and checks of the parent module and
//! turned into the status the agent reports, whatever they hold.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{
    code_of, read_bounded, ReadFail, CODE_STATUS_INVALID, CODE_UNKNOWN_FAILURE, HANDLER_STATUSES,
    MAX_SMALL_FILE_BYTES, STATUS_MAX_BYTES, STATUS_TRUNCATE_BYTES,
};
use crate::names::quote;
use crate::wire::status::{ExtensionStatus, HandlerStatus, SubStatus};

/// The extension status message past [`STATUS_TRUNCATE_BYTES`] (characters).
const MAX_MESSAGE_CHARS: usize = 1024;
/// Each substatus name and message past [`STATUS_TRUNCATE_BYTES`].
const MAX_SUBSTATUS_FIELD_CHARS: usize = 10 * 1024;
/// waagent's mark on a cut text.
const TRUNCATED: &str = " ... [TRUNCATED]";
/// `operation` and `configurationAppliedTime` are short words; any longer
/// text is cut, whatever the file's size.
const MAX_SHORT_FIELD_CHARS: usize = 1024;
/// A heartbeat not modified for longer than this is unresponsive (§13.7).
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(600);
/// The values an extension status (and substatus) may have (§13.6).
const EXTENSION_STATUSES: [&str; 4] = ["transitioning", "error", "success", "warning"];

fn strip_bom(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data)
}

/// A text value as the status report carries it: strings as they are,
/// `null` as none, any other JSON (a number as a name) as its JSON text,
/// as waagent passes whatever it finds on.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `formattedMessage`: absent or `null` is no message; otherwise it must
/// be an object with `lang` and `message` (§13.6).
fn formatted_message(v: Option<&Value>, at: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            for key in ["lang", "message"] {
                if !m.contains_key(key) {
                    return Err(format!("{at}formattedMessage has no {key}"));
                }
            }
            Ok(text_of(m.get("message")))
        }
        Some(_) => Err(format!("{at}formattedMessage is not an object")),
    }
}

/// `s` cut to `max` characters, marked as cut, when it has `max` or more
/// (waagent's rule); with its length in characters.
fn truncate(s: &str, max: usize) -> (String, usize) {
    let n = s.chars().count();
    if n < max {
        return (s.to_string(), n);
    }
    let cut = s.char_indices().nth(max).map_or(s.len(), |(i, _)| i);
    (format!("{}{TRUNCATED}", &s[..cut]), max + TRUNCATED.len())
}

fn truncate_opt(s: Option<String>, max: usize) -> (Option<String>, usize) {
    match s {
        None => (None, 0),
        Some(s) => {
            let (t, n) = truncate(&s, max);
            (Some(t), n)
        }
    }
}

// ---------------------------------------------------------------------------
// Extension status files (§13.6)

/// Whose status file is read: the names reported with it and used in
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFor<'a> {
    /// `{Publisher}.{Type}`.
    pub handler: &'a str,
    /// The extension's name, for a multi-config handler.
    pub extension: Option<&'a str>,
    /// The sequence number the status is for.
    pub seq_no: u64,
}

impl StatusFor<'_> {
    /// `Publisher.Type`, or `Publisher.Type.extension`.
    fn full_name(&self) -> String {
        match self.extension {
            Some(e) => format!("{}.{e}", self.handler),
            None => self.handler.to_string(),
        }
    }

    /// A status the agent reports in the extension's place.
    fn status(&self, status: &'static str, code: i64, message: String) -> ExtensionStatus {
        ExtensionStatus {
            extension_name: self.extension.map(str::to_string),
            name: self.extension.unwrap_or(self.handler).to_string(),
            sequence_number: self.seq_no,
            operation: None,
            status,
            code,
            message,
            configuration_applied_time: None,
            substatus: Vec::new(),
        }
    }
}

/// What reading a status file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// A valid status, reported as the extension wrote it.
    Valid,
    /// A valid status in a file over 128 KiB: its message cut to 1 KiB,
    /// each substatus name and message to 10 KiB, and substatuses left out
    /// once those texts pass 128 KiB in all (waagent's rules).
    Truncated,
    /// No file yet: `transitioning`, code 0, the agent speaking for the
    /// extension, as the current agent does.
    Missing,
    /// An empty file (the extension may be writing it).
    Empty,
    /// Not JSON, or not UTF-8: half written, or garbage.
    NotJson,
    /// JSON, but not a status (§13.6's validation).
    Schema,
    /// Over [`STATUS_MAX_BYTES`]: not parsed.
    TooLarge,
    /// A link, FIFO, directory…: not opened or not read.
    NotRegular,
    /// An I/O error.
    Unreadable,
}

impl StatusOutcome {
    /// An empty or half-written file may be an extension caught writing
    /// it. waagent reads 5 times, 2 s apart, before it believes one; a
    /// caller that cannot wait should re-read on its next pass before
    /// reporting the error to CRP, which takes `error` as final.
    pub fn may_be_transient(self) -> bool {
        matches!(self, StatusOutcome::Empty | StatusOutcome::NotJson)
    }
}

/// A status file read: the extension status to report, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRead {
    pub status: ExtensionStatus,
    pub outcome: StatusOutcome,
}

/// Reads the status file at `path` (`status/{seq}.status`, §13.6) for the
/// extension `of`. Never fails: a file that is missing gives
/// `transitioning` (code 0); one that is empty, not JSON, not a status,
/// over 1 MiB or not a regular file gives `error` with
/// `PluginSettingsStatusInvalid` (1012); an I/O error gives `error`, -1.
/// Each message names the file and the problem, never its content.
pub fn read_status(path: &Path, of: &StatusFor<'_>) -> StatusRead {
    let full = of.full_name();
    let seq = of.seq_no;
    let file = path.display();
    let fail = |outcome, code, message: String| StatusRead {
        status: of.status("error", code, message),
        outcome,
    };
    match read_bounded(path, STATUS_MAX_BYTES) {
        Ok((data, _)) => parse_status(&data, path, of),
        Err(ReadFail::Missing) => StatusRead {
            status: of.status(
                "transitioning",
                0,
                format!(
                    "This status is being reported by the Guest Agent since no status file was \
                     reported by extension {full}: Status file {file} does not exist"
                ),
            ),
            outcome: StatusOutcome::Missing,
        },
        Err(ReadFail::TooLarge) => fail(
            StatusOutcome::TooLarge,
            CODE_STATUS_INVALID,
            format!(
                "The status file {file} of extension {full} (sequence number {seq}) is over \
                 {STATUS_MAX_BYTES} bytes; the agent does not read it"
            ),
        ),
        Err(e @ ReadFail::NotRegular(_)) => fail(
            StatusOutcome::NotRegular,
            CODE_STATUS_INVALID,
            format!("The status file {file} of extension {full} (sequence number {seq}) {e}"),
        ),
        Err(e @ ReadFail::Io(_)) => fail(
            StatusOutcome::Unreadable,
            CODE_UNKNOWN_FAILURE,
            format!(
                "We couldn't read any status for extension {full}, for the sequence number \
                 {seq}: the status file {file} {e}"
            ),
        ),
    }
}

/// [`read_status`] on bytes already read (`path` only names the file in
/// messages); the parsers' fuzz tests come in here.
pub fn parse_status(data: &[u8], path: &Path, of: &StatusFor<'_>) -> StatusRead {
    let full = of.full_name();
    let seq = of.seq_no;
    let file = path.display();
    let fail = |outcome, message: String| StatusRead {
        status: of.status("error", CODE_STATUS_INVALID, message),
        outcome,
    };
    if data.len() > STATUS_MAX_BYTES {
        return fail(
            StatusOutcome::TooLarge,
            format!(
                "The status file {file} of extension {full} (sequence number {seq}) is over \
                 {STATUS_MAX_BYTES} bytes; the agent does not read it"
            ),
        );
    }
    let text = strip_bom(data);
    if text.iter().all(u8::is_ascii_whitespace) {
        return fail(
            StatusOutcome::Empty,
            format!("The status file {file} of extension {full} (sequence number {seq}) is empty"),
        );
    }
    let doc: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                StatusOutcome::NotJson,
                format!(
                    "The status reported by extension {full} (sequence number {seq}) in {file} \
                     is not valid JSON: {e}"
                ),
            )
        }
    };
    match status_from_json(&doc, of, data.len() > STATUS_TRUNCATE_BYTES) {
        Ok(read) => read,
        Err(problem) => fail(
            StatusOutcome::Schema,
            format!(
                "Could not get a valid status from extension {full} (sequence number {seq}): \
                 the status file {file} {problem}"
            ),
        ),
    }
}

/// The checks of waagent's `parse_ext_status`: element 0 of an array, its
/// `status` object with a `status`, valid substatuses. A top-level status
/// value that is not one of the four is reported as `error`, as waagent
/// does; a substatus's must be valid.
fn status_from_json(
    doc: &Value,
    of: &StatusFor<'_>,
    oversized: bool,
) -> Result<StatusRead, String> {
    let first = match doc {
        Value::Array(items) => items.first().ok_or("is an empty array")?,
        _ => return Err("is not a JSON array".into()),
    };
    let st = first
        .get("status")
        .filter(|v| v.is_object())
        .ok_or("has no status object in element 0")?;
    let status = match st.get("status") {
        None => return Err("has no status.status".into()),
        Some(v) => EXTENSION_STATUSES
            .into_iter()
            .find(|s| v.as_str() == Some(s))
            .unwrap_or("error"),
    };
    let message = formatted_message(st.get("formattedMessage"), "status.")?;
    let substatus = match st.get("substatus") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let at = format!("status.substatus[{i}]");
                let sub = match item {
                    Value::Null => continue,
                    Value::Object(_) => item,
                    _ => return Err(format!("has {at} that is not an object")),
                };
                let value = sub.get("status").ok_or(format!("has no {at}.status"))?;
                let status = EXTENSION_STATUSES
                    .into_iter()
                    .find(|s| value.as_str() == Some(s))
                    .ok_or_else(|| {
                        format!(
                            "has {at}.status {}, not one of {}",
                            quote(&text_of(Some(value)).unwrap_or_default()),
                            EXTENSION_STATUSES.join(", ")
                        )
                    })?;
                out.push(SubStatus {
                    name: text_of(sub.get("name")),
                    status,
                    code: code_of(sub.get("code")),
                    message: formatted_message(sub.get("formattedMessage"), &format!("{at}."))
                        .map_err(|e| format!("has {e}"))?,
                });
            }
            out
        }
        Some(_) => return Err("has a status.substatus that is not an array".into()),
    };
    let short = |key: &str| truncate_opt(text_of(st.get(key)), MAX_SHORT_FIELD_CHARS).0;
    let mut status = ExtensionStatus {
        operation: short("operation"),
        configuration_applied_time: short("configurationAppliedTime"),
        code: code_of(st.get("code")),
        message: message.unwrap_or_default(),
        substatus,
        ..of.status(status, 0, String::new())
    };
    if !oversized {
        return Ok(StatusRead {
            status,
            outcome: StatusOutcome::Valid,
        });
    }
    let (message, mut size) = truncate(&status.message, MAX_MESSAGE_CHARS);
    status.message = message;
    let mut kept = Vec::new();
    for sub in std::mem::take(&mut status.substatus) {
        let (name, n) = truncate_opt(sub.name, MAX_SUBSTATUS_FIELD_CHARS);
        let (message, m) = truncate_opt(sub.message, MAX_SUBSTATUS_FIELD_CHARS);
        size += n + m;
        if size > STATUS_TRUNCATE_BYTES {
            break;
        }
        kept.push(SubStatus {
            name,
            message,
            ..sub
        });
    }
    status.substatus = kept;
    Ok(StatusRead {
        status,
        outcome: StatusOutcome::Truncated,
    })
}

// ---------------------------------------------------------------------------
// Heartbeat (§13.7)

/// What `heartbeat.log` says about a handler whose manifest sets
/// `reportHeartbeat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heartbeat {
    /// A fresh heartbeat: the handler status the extension reports, its
    /// message cut to 1 KiB.
    Reported {
        status: &'static str,
        code: i64,
        message: Option<String>,
    },
    /// Not modified for more than 600 s.
    Unresponsive,
    /// Missing, not a regular file, unreadable or malformed: why.
    Invalid(String),
}

impl Heartbeat {
    /// Puts the heartbeat into the handler's status, as waagent does: a
    /// fresh one sets the status and (when it has one) the message, not
    /// the code; a stale one makes the handler `Unresponsive`, code -1; an
    /// invalid one `NotReady`, code -1, with the reason.
    pub fn apply(&self, h: &mut HandlerStatus) {
        match self {
            Heartbeat::Reported {
                status, message, ..
            } => {
                h.status = status;
                if let Some(m) = message {
                    h.message = Some(m.clone());
                }
            }
            Heartbeat::Unresponsive => {
                h.status = "Unresponsive";
                h.code = -1;
                h.message = Some("Extension heartbeat is not responsive".to_string());
            }
            Heartbeat::Invalid(why) => {
                h.status = "NotReady";
                h.code = -1;
                h.message = Some(why.clone());
            }
        }
    }
}

/// Reads `heartbeat.log` at `path`: stale when its modification time is
/// more than [`HEARTBEAT_MAX_AGE`] before `now` (a time in the future is
/// fresh), else
/// `[{"heartbeat": {"status", "code", "formattedMessage"}}]`.
pub fn read_heartbeat(path: &Path, now: SystemTime) -> Heartbeat {
    let file = path.display();
    let (data, meta) = match read_bounded(path, MAX_SMALL_FILE_BYTES) {
        Ok(read) => read,
        Err(e) => {
            return Heartbeat::Invalid(format!("Failed to get heartbeat file {file}: it {e}"))
        }
    };
    let stale = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age.as_secs() > HEARTBEAT_MAX_AGE.as_secs());
    if stale {
        return Heartbeat::Unresponsive;
    }
    heartbeat_from_bytes(&data)
        .unwrap_or_else(|why| Heartbeat::Invalid(format!("Malformed heartbeat file {file}: {why}")))
}

fn heartbeat_from_bytes(data: &[u8]) -> Result<Heartbeat, String> {
    let doc: Value =
        serde_json::from_slice(strip_bom(data)).map_err(|e| format!("not valid JSON ({e})"))?;
    let hb = doc
        .get(0)
        .and_then(|first| first.get("heartbeat"))
        .filter(|v| v.is_object())
        .ok_or("no heartbeat object in element 0 of an array")?;
    let value = hb.get("status").ok_or("no heartbeat.status")?;
    let status = HANDLER_STATUSES
        .into_iter()
        .find(|s| value.as_str().is_some_and(|v| v.eq_ignore_ascii_case(s)))
        .ok_or_else(|| {
            format!(
                "heartbeat.status {} is not one of {}",
                quote(&text_of(Some(value)).unwrap_or_default()),
                HANDLER_STATUSES.join(", ")
            )
        })?;
    let message = formatted_message(hb.get("formattedMessage"), "heartbeat.")?;
    Ok(Heartbeat::Reported {
        status,
        code: code_of(hb.get("code")),
        message: truncate_opt(message, MAX_MESSAGE_CHARS).0,
    })
}
