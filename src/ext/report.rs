//! What the status blob says of each handler (§12.4 of PROTOCOL.md): the
//! outcome of its task in the goal state being handled, and what the
//! extension itself wrote — its status file for the sequence number in
//! force, and its heartbeat when the manifest asks for one.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::exec::{read_state, Handling, Outcome};
use super::handler::{self, HandlerManifest, StatusFor};
use crate::wire::docs::{ExtensionSettings, ExtensionState, ExtensionsConfig, Plugin, PluginState};
use crate::wire::status::{ExtensionStatus, HandlerStatus};

/// A status file this young that cannot be read may be being written: it
/// is reported as transitioning, not as the error CRP would take as final.
const TRANSIENT_GRACE: Duration = Duration::from_secs(10);

/// What the status was last made from: each manifest's heartbeat flag and
/// each status file as read, kept while the file is the same one (device,
/// inode, size, modification and change times). The status is looked at on
/// every goal-state poll, for the VM's life; a file that did not change is
/// not read and parsed again.
#[derive(Debug, Default)]
pub struct ReportCache {
    heartbeat: HashMap<PathBuf, (FileId, bool)>,
    status: HashMap<PathBuf, (FileId, handler::StatusRead)>,
}

/// Which file, in which version: a rewrite (in place or by rename) changes
/// at least the change time, which no user can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The status of every handler of `ec` that has one to report.
pub fn handler_statuses(
    ec: &ExtensionsConfig,
    handling: &Handling,
    lib: &Path,
    now: SystemTime,
    cache: &mut ReportCache,
) -> Vec<HandlerStatus> {
    let mut out = Vec::new();
    // Listed only for a handler not reached yet in this goal state.
    let mut listing = None;
    for p in &ec.plugins {
        let mut installed = || {
            let all = listing.get_or_insert_with(|| super::exec::installed_handlers(lib));
            super::plan::installed_version(&p.name, all).cloned()
        };
        match handling.outcome(&p.name) {
            Some(Outcome::Uninstalled) => {}
            Some(Outcome::Failed {
                version,
                code,
                message,
                enabling,
            }) => out.extend(failed(p, version, *code, message, *enabling)),
            Some(Outcome::Disabled { version }) => out.push(disabled(p, version)),
            Some(Outcome::Enabled { version }) => out.extend(enabled(p, version, lib, now, cache)),
            // Not reached yet in this goal state: what is there now.
            None => match (p.state, installed()) {
                (Some(PluginState::Enabled), Some(i))
                    if read_state(&lib.join(format!("{}-{}", i.name, i.version)))
                        == handler::HandlerState::Enabled =>
                {
                    out.extend(enabled(p, &i.version, lib, now, cache))
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

fn enabled(
    p: &Plugin,
    version: &str,
    lib: &Path,
    now: SystemTime,
    cache: &mut ReportCache,
) -> Vec<HandlerStatus> {
    let dir = lib.join(format!("{}-{version}", p.name));
    let mut base = HandlerStatus::enabled(&p.name, version);
    if reports_heartbeat(&dir, cache) {
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
            h.extension = status_of(&dir, &of, now, cache);
            h
        })
        .collect()
}

/// Whether the handler's manifest asks for its heartbeat to be reported.
fn reports_heartbeat(dir: &Path, cache: &mut ReportCache) -> bool {
    let path = dir.join(handler::MANIFEST_FILE);
    let meta = std::fs::symlink_metadata(&path).ok();
    read_cached(&mut cache.heartbeat, path, meta.as_ref(), || {
        HandlerManifest::read(dir).is_ok_and(|m| m.report_heartbeat)
    })
}

/// What `read` makes of the file at `path` (`meta`: its lstat), kept in
/// `cache` and made again only when the file is no longer the same one.
/// A file that is not there is read every time and not kept.
fn read_cached<T: Clone>(
    cache: &mut HashMap<PathBuf, (FileId, T)>,
    path: PathBuf,
    meta: Option<&std::fs::Metadata>,
    read: impl FnOnce() -> T,
) -> T {
    let id = meta.map(FileId::of);
    match (id, cache.get(&path)) {
        (Some(id), Some((was, value))) if *was == id => value.clone(),
        _ => {
            let value = read();
            if let Some(id) = id {
                cache.insert(path, (id, value.clone()));
            }
            value
        }
    }
}

/// The extension's status file for `of`, or `None` for a handler with no
/// settings that wrote none.
fn status_of(
    dir: &Path,
    of: &StatusFor<'_>,
    now: SystemTime,
    cache: &mut ReportCache,
) -> Option<ExtensionStatus> {
    let file = handler::status_file_name(of.extension, of.seq_no).ok()?;
    let path = dir.join("status").join(file);
    let meta = std::fs::symlink_metadata(&path).ok();
    let read = read_cached(&mut cache.status, path.clone(), meta.as_ref(), || {
        handler::read_status(&path, of)
    });
    let young = meta
        .and_then(|m| m.modified().ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn test_data(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test-data")
            .join(path)
    }

    /// Writes `bytes` to `path` the way a handler should: a new file renamed
    /// over the old.
    fn replace(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_status_file_rewritten_is_read_again_and_one_unchanged_gives_the_same() {
        let ec = ExtensionsConfig::parse(
            &std::fs::read_to_string(test_data("wire/ext_conf.xml")).unwrap(),
        )
        .unwrap();
        let lib = tempfile::tempdir().unwrap();
        let dir = lib.path().join("Contoso.Test.EchoHandler-1.0.0");
        for sub in ["config", "status"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy(
            test_data("ext/handler_manifest.json"),
            dir.join(handler::MANIFEST_FILE),
        )
        .unwrap();
        std::fs::write(dir.join("config/HandlerState"), "Enabled").unwrap();
        let status = dir.join("status/4.status");
        replace(
            &status,
            &std::fs::read(test_data("ext/status_success.json")).unwrap(),
        );
        // No step has run: each handler is reported as found on disk.
        let handling = Handling::new("1", &ec, lib.path());
        let now = SystemTime::now() + TRANSIENT_GRACE;
        let mut cache = ReportCache::default();
        let fresh =
            || handler_statuses(&ec, &handling, lib.path(), now, &mut ReportCache::default());

        let first = handler_statuses(&ec, &handling, lib.path(), now, &mut cache);
        let echo = first
            .iter()
            .find(|h| h.name == "Contoso.Test.EchoHandler")
            .unwrap();
        assert_eq!(echo.extension.as_ref().unwrap().status, "success");
        assert_eq!(cache.status.len(), 1);
        assert_eq!(
            handler_statuses(&ec, &handling, lib.path(), now, &mut cache),
            first
        );

        // The same size, a different status: the file's times tell.
        let text = std::fs::read_to_string(&status).unwrap();
        replace(
            &status,
            text.replacen("\"success\"", "\"warning\"", 1).as_bytes(),
        );
        let second = handler_statuses(&ec, &handling, lib.path(), now, &mut cache);
        assert_ne!(second, first);
        assert_eq!(second, fresh());

        // Gone: reported as a fresh read reports it.
        std::fs::remove_file(&status).unwrap();
        let third = handler_statuses(&ec, &handling, lib.path(), now, &mut cache);
        assert_ne!(third, second);
        assert_eq!(third, fresh());
    }
}
