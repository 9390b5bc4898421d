//! A handler's own files (§13.3–§13.7, §13.12): its manifest, the
//! environment and settings files the agent writes for it, the status and
//! heartbeat files the extension writes back (`handler/status.rs`), and the
//! agent's record of the handler's state.
//!
//! Pure functions and bounded file readers; nothing here runs a command.
//! What is read here came in the package or was written by the extension
//! (root, but not us), so every reader has a size bound, opens the file
//! without following a symbolic link or blocking on a FIFO, and turns every
//! bad case into a value to report, never a panic or an error that stops
//! the agent's loop. Extension text that ends up in a message is quoted,
//! escaped and cut short ([`crate::names::quote`]); settings never do.

use std::fmt;
use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde_json::Value;

use crate::names::quote;
use crate::wire::docs::ExtensionState;
use crate::wire::status::HandlerStatus;

mod status;
pub use status::{
    parse_status, read_heartbeat, read_status, Heartbeat, StatusFor, StatusOutcome, StatusRead,
    HEARTBEAT_MAX_AGE,
};

/// `ExtensionErrorCodes.PluginUnknownFailure`: a status file that cannot
/// be read (waagent's code for it).
pub const CODE_UNKNOWN_FAILURE: i64 = -1;
/// `ExtensionErrorCodes.PluginProcessingError`, the catch-all.
pub const CODE_PROCESSING_ERROR: i64 = 1000;
/// `ExtensionErrorCodes.PluginHandlerManifestNotFound`.
pub const CODE_MANIFEST_NOT_FOUND: i64 = 1002;
/// `ExtensionErrorCodes.PluginHandlerManifestDeserializationError`.
pub const CODE_MANIFEST_INVALID: i64 = 1003;
/// `ExtensionErrorCodes.PluginSettingsStatusInvalid`: a status file that
/// is not a valid status.
pub const CODE_STATUS_INVALID: i64 = 1012;

/// The manifest's name in the base dir (§13.4).
pub const MANIFEST_FILE: &str = "HandlerManifest.json";
/// The file [`handler_environment_json`] goes to, in the base dir.
pub const ENVIRONMENT_FILE: &str = "HandlerEnvironment.json";
/// The extension's heartbeat, in the base dir (§13.7).
pub const HEARTBEAT_FILE: &str = "heartbeat.log";
/// `config/HandlerState`: a [`HandlerState`] as plain text.
pub const HANDLER_STATE_FILE: &str = "HandlerState";
/// `config/HandlerStatus`: the handler status the agent last set (§12.4).
pub const HANDLER_STATUS_FILE: &str = "HandlerStatus";

/// Real manifests are under 2 KiB; this only stops a hostile package.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// A status file larger than this is valid but has its texts cut (§13.6).
pub const STATUS_TRUNCATE_BYTES: usize = 128 * 1024;
/// A status file larger than this is not parsed at all: reported as an
/// error, since 1 MiB is eight times what waagent lets through.
pub const STATUS_MAX_BYTES: usize = 1024 * 1024;
/// The heartbeat and the agent's own state files are a few lines.
const MAX_SMALL_FILE_BYTES: usize = 64 * 1024;

/// The values a handler status may have (§12.1).
const HANDLER_STATUSES: [&str; 4] = ["Ready", "NotReady", "Installing", "Unresponsive"];

/// A manifest, settings value or name the agent cannot use: what it is,
/// what is wrong, and the `ExtensionErrorCodes` value to report it with.
/// The text never quotes settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The file or value at fault (`HandlerManifest.json`, a path, …).
    pub what: String,
    pub problem: String,
    pub code: i64,
}

impl HandlerError {
    fn new(what: impl Into<String>, problem: impl Into<String>, code: i64) -> Self {
        HandlerError {
            what: what.into(),
            problem: problem.into(),
            code,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.problem)
    }
}

impl std::error::Error for HandlerError {}

// ---------------------------------------------------------------------------
// HandlerManifest.json (§13.4)

/// What the agent uses of `HandlerManifest.json`. Commands are paths
/// relative to the base dir, possibly with arguments, run through
/// [`shell_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerManifest {
    /// Required: a handler that cannot be enabled is not a handler (the
    /// agent's own package has only this one).
    pub enable: String,
    /// `None` when the manifest has none (absent, `null` or blank): the
    /// lifecycle step has nothing to run.
    pub install: Option<String>,
    pub uninstall: Option<String>,
    pub update: Option<String>,
    pub disable: Option<String>,
    /// The agent reads `heartbeat.log` (§13.7).
    pub report_heartbeat: bool,
    /// A failing disable or uninstall of the old version does not abort an update.
    pub continue_on_update_failure: bool,
    /// A multi-config handler (§13.12).
    pub supports_multiple_extensions: bool,
    /// `updateMode` absent or `UpdateWithInstall` (any case): the new
    /// version's install runs after an update.
    pub update_with_install: bool,
}

impl HandlerManifest {
    /// Parses the text of `HandlerManifest.json`: an array whose first
    /// element holds `handlerManifest`. A UTF-8 byte-order mark is skipped;
    /// keys the agent does not use are ignored.
    pub fn parse(text: &str) -> Result<HandlerManifest, HandlerError> {
        let bad =
            |problem: String| HandlerError::new(MANIFEST_FILE, problem, CODE_MANIFEST_INVALID);
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "is {} bytes long; at most {MAX_MANIFEST_BYTES} are allowed",
                text.len()
            )));
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let doc: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
        let first = match &doc {
            Value::Array(items) => items
                .first()
                .ok_or_else(|| bad("is an empty array".into()))?,
            _ => return Err(bad("is not a JSON array".into())),
        };
        let hm = first
            .get("handlerManifest")
            .filter(|v| v.is_object())
            .ok_or_else(|| bad("has no handlerManifest object".into()))?;
        let command = |key: &str| -> Result<Option<String>, HandlerError> {
            match hm.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) if s.contains('\0') => {
                    Err(bad(format!("{key} contains a NUL character")))
                }
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("{key} is not a string"))),
            }
        };
        // waagent's reading of a boolean: a JSON boolean, or the string
        // "true" in any case; anything else is false.
        let flag = |key: &str| match hm.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let update_with_install = match hm.get("updateMode") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("UpdateWithInstall"),
            Some(_) => false,
        };
        Ok(HandlerManifest {
            enable: command("enableCommand")?.ok_or_else(|| bad("has no enableCommand".into()))?,
            install: command("installCommand")?,
            uninstall: command("uninstallCommand")?,
            update: command("updateCommand")?,
            disable: command("disableCommand")?,
            report_heartbeat: flag("reportHeartbeat"),
            continue_on_update_failure: flag("continueOnUpdateFailure"),
            supports_multiple_extensions: flag("supportsMultipleExtensions"),
            update_with_install,
        })
    }

    /// Reads and parses `{base_dir}/HandlerManifest.json`. A file that is
    /// missing, not a regular file or unreadable is
    /// `PluginHandlerManifestNotFound` (1002); bad content is 1003.
    pub fn read(base_dir: &Path) -> Result<HandlerManifest, HandlerError> {
        let path = base_dir.join(MANIFEST_FILE);
        let (data, _) = read_bounded(&path, MAX_MANIFEST_BYTES).map_err(|e| {
            let code = match e {
                ReadFail::TooLarge => CODE_MANIFEST_INVALID,
                _ => CODE_MANIFEST_NOT_FOUND,
            };
            HandlerError::new(path.display().to_string(), e.to_string(), code)
        })?;
        let text = String::from_utf8(data).map_err(|_| {
            HandlerError::new(
                path.display().to_string(),
                "is not UTF-8 text",
                CODE_MANIFEST_INVALID,
            )
        })?;
        HandlerManifest::parse(&text).map_err(|e| HandlerError {
            what: path.display().to_string(),
            ..e
        })
    }
}

/// The program and arguments that run `command`, one of the manifest's
/// commands, for the handler in `base_dir`; the caller runs them with
/// `base_dir` as working directory. This is waagent's
/// `/bin/sh -c "{base}/{command}"`, with a leading `/` of the command
/// dropped (as the current agent does) and the base dir quoted when it
/// holds characters the shell would read.
///
/// The command comes from the package and runs as root through the shell:
/// that is what an extension is, and its package is as trusted as its
/// commands. Settings never go through a shell: they reach the extension in
/// files (§13.5).
pub fn shell_command(
    base_dir: &Path,
    command: &str,
) -> Result<(&'static str, Vec<String>), HandlerError> {
    let what = || base_dir.display().to_string();
    let base = base_dir
        .to_str()
        .ok_or_else(|| HandlerError::new(what(), "is not UTF-8", CODE_PROCESSING_ERROR))?;
    if !base_dir.is_absolute() {
        return Err(HandlerError::new(
            what(),
            "is not absolute",
            CODE_PROCESSING_ERROR,
        ));
    }
    if command.contains('\0') {
        return Err(HandlerError::new(
            what(),
            "the command contains a NUL character",
            CODE_PROCESSING_ERROR,
        ));
    }
    let line = format!("{}/{}", sh_quote(base), command.trim_start_matches('/'));
    Ok(("/bin/sh", vec!["-c".to_string(), line]))
}

/// `s` as one shell word: unchanged when every character is plain (the
/// usual `/var/lib/waagent/Publisher.Type-1.2.3`, so the command line is
/// waagent's own), else in single quotes.
fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------
// HandlerEnvironment.json (§13.4) and settings (§13.5)

/// A JSON object with its keys in the given order and Python's `json.dumps`
/// separators, as waagent writes the files extensions read. `pairs` hold
/// JSON texts.
fn ordered_object(pairs: &[(&str, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn json_path(p: &Path) -> String {
    Value::from(p.to_string_lossy().as_ref()).to_string()
}

/// `HandlerEnvironment.json` for handler `name` (`Publisher.Type`) unpacked
/// in `base_dir`, logging to `log_dir` (current agent:
/// `{Extension.LogDir}/{name}`): where its config, status, heartbeat and
/// events are. `version` is the schema's, the number 1.0; the events folder
/// is given twice (`eventsFolder_preview` for extensions written against
/// the preview), as the current agent does.
pub fn handler_environment_json(name: &str, base_dir: &Path, log_dir: &Path) -> String {
    let events = log_dir.join("events");
    let env = ordered_object(&[
        ("logFolder", json_path(log_dir)),
        ("configFolder", json_path(&base_dir.join("config"))),
        ("statusFolder", json_path(&base_dir.join("status"))),
        ("heartbeatFile", json_path(&base_dir.join(HEARTBEAT_FILE))),
        ("eventsFolder", json_path(&events)),
        ("eventsFolder_preview", json_path(&events)),
    ]);
    let top = ordered_object(&[
        ("name", Value::from(name).to_string()),
        ("version", "1.0".to_string()),
        ("handlerEnvironment", env),
    ]);
    format!("[{top}]")
}

/// The content of `config/{seqNo}.settings` for one extension, from its
/// runtime settings as ExtensionsConfig gives them
/// ([`crate::wire::docs::ExtensionSettings::runtime_settings`]): one line of
/// JSON with `publicSettings`, `protectedSettings` and
/// `protectedSettingsCertThumbprint` always present, `null` when the goal
/// state has no value. No settings at all (an empty text, or an empty
/// `runtimeSettings`) give the empty content of the `0.settings` waagent
/// writes for a handler without settings.
///
/// The values are passed on, not interpreted: the protected settings stay
/// encrypted for the extension to decrypt (§7.4), and no error quotes them.
/// The first `runtimeSettings` entry is the one used, as in waagent.
/// Numbers keep their value except integers beyond 64 bits, which JSON
/// readers without big integers (this one) turn into floating point.
pub fn settings_json(runtime_settings: &str) -> Result<String, HandlerError> {
    let bad = |problem: &str| {
        HandlerError::new(
            "the runtime settings",
            problem.to_string(),
            CODE_PROCESSING_ERROR,
        )
    };
    if runtime_settings.trim().is_empty() {
        return Ok(String::new());
    }
    let doc: Value = serde_json::from_str(runtime_settings)
        .map_err(|e| bad(&format!("are not valid JSON ({e})")))?;
    let entries = doc
        .get("runtimeSettings")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("have no runtimeSettings array"))?;
    let Some(first) = entries.first() else {
        return Ok(String::new());
    };
    let hs = first
        .get("handlerSettings")
        .filter(|v| v.is_object())
        .ok_or_else(|| bad("have no handlerSettings object"))?;
    let value = |key: &str| hs.get(key).unwrap_or(&Value::Null).to_string();
    let handler_settings = ordered_object(&[
        ("publicSettings", value("publicSettings")),
        ("protectedSettings", value("protectedSettings")),
        (
            "protectedSettingsCertThumbprint",
            value("protectedSettingsCertThumbprint"),
        ),
    ]);
    Ok(ordered_object(&[(
        "runtimeSettings",
        format!(
            "[{}]",
            ordered_object(&[("handlerSettings", handler_settings)])
        ),
    )]))
}

/// `{seqNo}.settings`, or `{extension}.{seqNo}.settings` for an extension
/// of a multi-config handler (§13.5, §13.12).
pub fn settings_file_name(extension: Option<&str>, seq_no: u64) -> Result<String, HandlerError> {
    config_file_name(extension, seq_no, "settings")
}

/// `{seqNo}.status`, or `{extension}.{seqNo}.status` (§13.6, §13.12).
pub fn status_file_name(extension: Option<&str>, seq_no: u64) -> Result<String, HandlerError> {
    config_file_name(extension, seq_no, "status")
}

fn config_file_name(
    extension: Option<&str>,
    seq_no: u64,
    suffix: &str,
) -> Result<String, HandlerError> {
    match extension {
        None => Ok(format!("{seq_no}.{suffix}")),
        Some(name) => {
            check_extension_name(name)?;
            Ok(format!("{name}.{seq_no}.{suffix}"))
        }
    }
}

/// An extension name becomes part of file names in the handler's
/// directories, so it must be one plain file-name word: letters, digits,
/// `_`, `-` and `.`, not starting with `.`, at most 128 characters.
fn check_extension_name(name: &str) -> Result<(), HandlerError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(HandlerError::new(
            format!("extension name {}", quote(name)),
            "is not a plain file name (letters, digits, '_', '-', '.')",
            CODE_PROCESSING_ERROR,
        ))
    }
}

// ---------------------------------------------------------------------------
// Bounded reads of files others write

/// Why a file could not be read.
#[derive(Debug)]
enum ReadFail {
    Missing,
    /// A symbolic link, directory, FIFO, …: never read.
    NotRegular(&'static str),
    TooLarge,
    Io(io::Error),
}

impl fmt::Display for ReadFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFail::Missing => f.write_str("does not exist"),
            ReadFail::NotRegular(kind) => write!(f, "is a {kind}, not a regular file"),
            ReadFail::TooLarge => f.write_str("is too large"),
            ReadFail::Io(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// Reads at most `cap` bytes of the regular file at `path`, with its
/// metadata. O_NOFOLLOW: a link planted at the path is refused, not
/// followed (a link among the directories above it is followed; those are
/// the agent's, bar the extension's own `status/`). O_NONBLOCK: a FIFO
/// there cannot hang the agent in open(2); fstat then refuses it.
fn read_bounded(path: &Path, cap: usize) -> Result<(Vec<u8>, Metadata), ReadFail> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => ReadFail::Missing,
            // Linux says ELOOP for O_NOFOLLOW on a link, FreeBSD EMLINK.
            Some(libc::ELOOP) | Some(libc::EMLINK) => ReadFail::NotRegular("symbolic link"),
            _ => ReadFail::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadFail::Io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else {
            "special file"
        };
        return Err(ReadFail::NotRegular(kind));
    }
    let mut data = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut data)
        .map_err(ReadFail::Io)?;
    if data.len() > cap {
        return Err(ReadFail::TooLarge);
    }
    Ok((data, meta))
}

/// A status code: a JSON integer, or a string holding one (`"code": "0"`
/// is common); anything else is 0, waagent's default for a missing code.
fn code_of(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map_or(0, |f| f as i64)
        }),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// The agent's record of a handler: config/HandlerState, config/HandlerStatus

/// Where a handler is in its lifecycle (§13.9), kept in `config/HandlerState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerState {
    NotInstalled,
    Installed,
    Enabled,
    /// Its update failed (current agent): kept so its status is still
    /// reported, and installed again on the next enable.
    FailedUpgrade,
}

impl HandlerState {
    /// The file's text, waagent's.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerState::NotInstalled => "NotInstalled",
            HandlerState::Installed => "Installed",
            HandlerState::Enabled => "Enabled",
            HandlerState::FailedUpgrade => "FailedUpgrade",
        }
    }

    fn parse(text: &str) -> Option<HandlerState> {
        [
            HandlerState::NotInstalled,
            HandlerState::Installed,
            HandlerState::Enabled,
            HandlerState::FailedUpgrade,
        ]
        .into_iter()
        .find(|s| s.as_str() == text.trim())
    }
}

/// Reads a small file of the agent's own, `None` for any failure: these
/// readers fall back to a default, as waagent's do.
fn read_small(path: &Path) -> Option<String> {
    read_bounded(path, MAX_SMALL_FILE_BYTES)
        .ok()
        .and_then(|(data, _)| String::from_utf8(data).ok())
}

/// The handler's state from `{config_dir}/HandlerState`: `NotInstalled`
/// when the file is missing, unreadable or holds anything else, which makes
/// the next enable install the handler again (waagent's default).
pub fn read_handler_state(config_dir: &Path) -> HandlerState {
    read_small(&config_dir.join(HANDLER_STATE_FILE))
        .and_then(|t| HandlerState::parse(&t))
        .unwrap_or(HandlerState::NotInstalled)
}

/// Writes `{config_dir}/HandlerState` atomically (mode 0600); `config/` is
/// made with the package (§13.4).
pub fn write_handler_state(config_dir: &Path, state: HandlerState) -> io::Result<()> {
    crate::fsutil::write_atomic(
        &config_dir.join(HANDLER_STATE_FILE),
        state.as_str().as_bytes(),
        0o600,
    )
}

/// The requested state of one extension of a multi-config handler, from
/// `{config_dir}/{extension}.HandlerState` (`enabled` or `disabled`, §13.12);
/// `Disabled` when missing or garbled, waagent's default.
pub fn read_extension_state(config_dir: &Path, extension: &str) -> ExtensionState {
    if check_extension_name(extension).is_err() {
        return ExtensionState::Disabled;
    }
    let path = config_dir.join(format!("{extension}.{HANDLER_STATE_FILE}"));
    match read_small(&path).as_deref().map(str::trim) {
        Some("enabled") => ExtensionState::Enabled,
        _ => ExtensionState::Disabled,
    }
}

/// Writes `{config_dir}/{extension}.HandlerState`; refuses an extension
/// name that is not a plain file name.
pub fn write_extension_state(
    config_dir: &Path,
    extension: &str,
    state: ExtensionState,
) -> io::Result<()> {
    check_extension_name(extension)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let text = match state {
        ExtensionState::Enabled => "enabled",
        ExtensionState::Disabled => "disabled",
    };
    crate::fsutil::write_atomic(
        &config_dir.join(format!("{extension}.{HANDLER_STATE_FILE}")),
        text.as_bytes(),
        0o600,
    )
}

/// The handler status the agent last set, from `{config_dir}/HandlerStatus`
/// (`{"name","version","status","code","message"}`), without an extension
/// status (that comes from the extension's file). `None` when the file is
/// missing or garbled: such a handler is not reported (§12.4).
pub fn read_handler_status(config_dir: &Path) -> Option<HandlerStatus> {
    let text = read_small(&config_dir.join(HANDLER_STATUS_FILE))?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    let string = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_string);
    let status = doc.get("status").and_then(Value::as_str)?;
    Some(HandlerStatus {
        name: string("name")?,
        version: string("version")?,
        status: HANDLER_STATUSES.into_iter().find(|s| *s == status)?,
        code: code_of(doc.get("code")),
        message: string("message"),
        extension: None,
    })
}

/// Writes `{config_dir}/HandlerStatus` atomically (mode 0600) from `h`
/// (its extension status is not part of it).
pub fn write_handler_status(config_dir: &Path, h: &HandlerStatus) -> io::Result<()> {
    let text = ordered_object(&[
        ("name", Value::from(h.name.as_str()).to_string()),
        ("version", Value::from(h.version.as_str()).to_string()),
        ("status", Value::from(h.status).to_string()),
        ("code", h.code.to_string()),
        (
            "message",
            h.message
                .as_deref()
                .map_or(Value::Null, Value::from)
                .to_string(),
        ),
    ]);
    crate::fsutil::write_atomic(
        &config_dir.join(HANDLER_STATUS_FILE),
        text.as_bytes(),
        0o600,
    )
}

#[cfg(test)]
mod tests;
