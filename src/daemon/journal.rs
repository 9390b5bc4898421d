//! The daemon's journal: what must survive a crash, in `<lib>/waagent-rs.journal`.
//!
//! Every provisioning step is idempotent, so a restart could simply start
//! over; the journal makes it precise instead: steps already done are not
//! redone (no second password hash, no second host-key generation), and the
//! Ready report is sent once per incarnation even when the daemon is killed
//! between writing `provisioned` and reporting. Written atomically after
//! each change, so a crash leaves the previous entry or the new one.

use std::path::{Path, PathBuf};

use crate::fsutil;

/// Waagent has no such file; the name says whose it is.
pub const FILE: &str = "waagent-rs.journal";

/// What the journal holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Which provisioning the steps belong to (`user@host` of its ovf-env),
    /// so a different document never inherits them.
    pub provisioning: Option<String>,
    /// Provisioning steps completed, in order, for the provisioning under way.
    pub steps_done: Vec<String>,
    /// The goal-state incarnation the Ready report was last sent for.
    pub ready_reported: Option<String>,
}

pub struct Journal {
    path: PathBuf,
    entry: Entry,
}

impl Journal {
    /// Reads the journal in `lib_dir`; a missing or unreadable one is empty
    /// (and said so in the log when unreadable).
    pub fn open(lib_dir: &Path) -> Journal {
        let path = lib_dir.join(FILE);
        let entry = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).unwrap_or_else(|| {
                log::warn!("{}: unreadable journal; starting afresh", path.display());
                Entry::default()
            }),
            Err(_) => Entry::default(),
        };
        Journal { path, entry }
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    pub fn step_done(&self, step: &str) -> bool {
        self.entry.steps_done.iter().any(|s| s == step)
    }

    /// Starts (or resumes) the provisioning identified by `what`; the steps
    /// of any other are forgotten.
    pub fn begin(&mut self, what: &str) -> Result<(), String> {
        if self.entry.provisioning.as_deref() == Some(what) {
            return Ok(());
        }
        self.entry.provisioning = Some(what.to_string());
        self.entry.steps_done.clear();
        self.save()
    }

    pub fn record_step(&mut self, step: &str) -> Result<(), String> {
        if !self.step_done(step) {
            self.entry.steps_done.push(step.to_string());
        }
        self.save()
    }

    /// Provisioning finished (or starts over): forget its steps.
    pub fn clear_steps(&mut self) -> Result<(), String> {
        if self.entry.steps_done.is_empty() && self.entry.provisioning.is_none() {
            return Ok(());
        }
        self.entry.steps_done.clear();
        self.entry.provisioning = None;
        self.save()
    }

    pub fn record_ready(&mut self, incarnation: &str) -> Result<(), String> {
        self.entry.ready_reported = Some(incarnation.to_string());
        self.save()
    }

    fn save(&self) -> Result<(), String> {
        let v = serde_json::json!({
            "provisioning": self.entry.provisioning,
            "stepsDone": self.entry.steps_done,
            "readyReported": self.entry.ready_reported,
        });
        fsutil::write_atomic(&self.path, format!("{v}\n").as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn parse(text: &str) -> Option<Entry> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let steps = v.get("stepsDone")?.as_array()?;
    Some(Entry {
        provisioning: v
            .get("provisioning")
            .and_then(|p| p.as_str())
            .map(str::to_string),
        steps_done: steps
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        ready_reported: v
            .get("readyReported")
            .and_then(|r| r.as_str())
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening_and_tolerates_garbage() {
        let lib = tempfile::tempdir().unwrap();
        let mut j = Journal::open(lib.path());
        assert_eq!(j.entry(), &Entry::default());
        j.begin("azureuser@vm1").unwrap();
        j.record_step("User").unwrap();
        j.record_step("User").unwrap();
        j.record_step("Password").unwrap();
        j.record_ready("3").unwrap();
        let mut j = Journal::open(lib.path());
        assert_eq!(j.entry().steps_done, vec!["User", "Password"]);
        j.begin("azureuser@vm1").unwrap();
        assert!(
            j.step_done("User"),
            "resuming the same provisioning keeps its steps"
        );
        let j = Journal::open(lib.path());
        assert_eq!(j.entry().ready_reported.as_deref(), Some("3"));
        assert!(j.step_done("User") && !j.step_done("HostName"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(lib.path().join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let mut j = Journal::open(lib.path());
        j.begin("other@vm2").unwrap();
        assert!(!j.step_done("User"), "another document starts afresh");
        assert_eq!(j.entry().ready_reported.as_deref(), Some("3"));

        std::fs::write(lib.path().join(FILE), "{not json").unwrap();
        assert_eq!(Journal::open(lib.path()).entry(), &Entry::default());
        let mut j = Journal::open(lib.path());
        j.clear_steps().unwrap();
    }
}
