//! The daemon's journal: what must survive a crash, in `<lib>/waagent-rs.journal`.
//!
//! Every provisioning step is idempotent, so a restart could simply start
//! over; the journal makes it precise instead: steps already done are not
//! redone (no second password hash, no second host-key generation), and the
//! Ready report is sent once per incarnation even when the daemon is killed
//! between writing `provisioned` and reporting. Written atomically after
//! each change, so a crash leaves the previous entry or the new one.
//!
//! It also remembers which accounts provisioning *created* (not adopted:
//! a user the image already had is never ours), with their UIDs, so
//! `-deprovision+user` deletes those and nothing else. The daemon writes it;
//! deprovisioning reads it.

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
    /// A user about to be created (recorded before `useradd` runs): if it
    /// exists after a crash, we made it.
    pub creating_user: Option<String>,
    /// The accounts provisioning created. Kept when provisioning finishes.
    pub created_users: Vec<CreatedUser>,
}

/// An account provisioning created, as it was then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    pub name: String,
    pub uid: u32,
    /// Its home directory as `useradd -m` made it.
    pub home: String,
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

    /// Provisioning finished (or starts over): forget its steps. The users
    /// it created are remembered.
    pub fn clear_steps(&mut self) -> Result<(), String> {
        let e = &mut self.entry;
        if e.steps_done.is_empty() && e.provisioning.is_none() && e.creating_user.is_none() {
            return Ok(());
        }
        e.steps_done.clear();
        e.provisioning = None;
        e.creating_user = None;
        self.save()
    }

    /// `name` is about to be created: said before `useradd` runs, so a
    /// crash in between still knows the account is ours.
    pub fn begin_user_creation(&mut self, name: &str) -> Result<(), String> {
        self.entry.creating_user = Some(name.to_string());
        self.save()
    }

    /// Whether `name`'s creation was begun (and not yet recorded as done).
    pub fn creating(&self, name: &str) -> bool {
        self.entry.creating_user.as_deref() == Some(name)
    }

    /// Provisioning created this account.
    pub fn record_user_created(&mut self, user: CreatedUser) -> Result<(), String> {
        self.entry.creating_user = None;
        self.entry.created_users.retain(|u| u.name != user.name);
        self.entry.created_users.push(user);
        self.save()
    }

    pub fn record_ready(&mut self, incarnation: &str) -> Result<(), String> {
        self.entry.ready_reported = Some(incarnation.to_string());
        self.save()
    }

    fn save(&self) -> Result<(), String> {
        let created: Vec<serde_json::Value> = self
            .entry
            .created_users
            .iter()
            .map(|u| serde_json::json!({"name": u.name, "uid": u.uid, "home": u.home}))
            .collect();
        let v = serde_json::json!({
            "provisioning": self.entry.provisioning,
            "stepsDone": self.entry.steps_done,
            "readyReported": self.entry.ready_reported,
            "creatingUser": self.entry.creating_user,
            "createdUsers": created,
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
        creating_user: v
            .get("creatingUser")
            .and_then(|r| r.as_str())
            .map(str::to_string),
        // Journals of earlier versions have none: nothing is known to be ours.
        created_users: v
            .get("createdUsers")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|u| {
                Some(CreatedUser {
                    name: u.get("name")?.as_str()?.to_string(),
                    uid: u32::try_from(u.get("uid")?.as_u64()?).ok()?,
                    home: u.get("home")?.as_str()?.to_string(),
                })
            })
            .collect(),
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

        // Created users outlive the provisioning that made them.
        let mut j = Journal::open(lib.path());
        j.begin_user_creation("azureuser").unwrap();
        assert!(Journal::open(lib.path()).creating("azureuser"));
        j.record_user_created(CreatedUser {
            name: "azureuser".into(),
            uid: 1000,
            home: "/home/azureuser".into(),
        })
        .unwrap();
        j.clear_steps().unwrap();
        let j = Journal::open(lib.path());
        assert!(!j.creating("azureuser"));
        assert_eq!(
            j.entry().created_users,
            [CreatedUser {
                name: "azureuser".into(),
                uid: 1000,
                home: "/home/azureuser".into(),
            }]
        );

        // A journal of an earlier version (no createdUsers) still loads.
        std::fs::write(
            lib.path().join(FILE),
            r#"{"provisioning":"a@b","stepsDone":["HostName","User"],"readyReported":null}"#,
        )
        .unwrap();
        let j = Journal::open(lib.path());
        assert!(j.step_done("User") && j.entry().created_users.is_empty());

        std::fs::write(lib.path().join(FILE), "{not json").unwrap();
        assert_eq!(Journal::open(lib.path()).entry(), &Entry::default());
        let mut j = Journal::open(lib.path());
        j.clear_steps().unwrap();
    }
}
