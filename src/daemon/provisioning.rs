//! Provisioning proper (§9.1 steps 6.5–6.7): the [`Plan`] decided before
//! anything changes, and the [`Step`]s that carry it out, each idempotent so
//! a restarted daemon can run it again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, SshHostKeyType};
use crate::fsutil;
use crate::journal::CreatedUser;
use crate::ovf::OvfEnv;
use crate::provision::{custom_data, keys, password, sshd};
use crate::wire::imds;

use super::timeline::Phase;
use super::*;

/// The provisioning actions (§9.1 step 6.5 to 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    HostName,
    User,
    Password,
    Sudoers,
    SshdConfig,
    PublicKeys,
    KeyPairs,
    CustomData,
    RootPassword,
    HostKeys,
    RestartSshd,
}

impl Step {
    /// The order they run in. sshd's configuration and host keys come
    /// first, so its restart (tens of milliseconds, in the background from
    /// the end of HostKeys) overlaps the user's steps; RestartSshd, last,
    /// collects it. A journal records steps by [`key`](Self::key), so one
    /// written in another order resumes the same.
    pub const ALL: [Step; 11] = [
        Step::HostName,
        Step::SshdConfig,
        Step::HostKeys,
        Step::User,
        Step::Password,
        Step::Sudoers,
        Step::PublicKeys,
        Step::KeyPairs,
        Step::CustomData,
        Step::RootPassword,
        Step::RestartSshd,
    ];

    pub(super) fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }

    /// The step's name in the journal and the crash hook: fixed strings,
    /// never derived from the variant's name, so a journal written before
    /// an upgrade that renames a variant still resumes.
    pub fn key(self) -> &'static str {
        match self {
            Step::HostName => "HostName",
            Step::User => "User",
            Step::Password => "Password",
            Step::Sudoers => "Sudoers",
            Step::SshdConfig => "SshdConfig",
            Step::PublicKeys => "PublicKeys",
            Step::KeyPairs => "KeyPairs",
            Step::CustomData => "CustomData",
            Step::RootPassword => "RootPassword",
            Step::HostKeys => "HostKeys",
            Step::RestartSshd => "RestartSshd",
        }
    }

    /// What the step does, for logs and failure descriptions.
    pub fn describe(self) -> &'static str {
        match self {
            Step::HostName => "setting the host name",
            Step::User => "creating the user",
            Step::Password => "setting the password",
            Step::Sudoers => "granting sudo",
            Step::SshdConfig => "configuring sshd",
            Step::PublicKeys => "deploying SSH public keys",
            Step::KeyPairs => "deploying SSH key pairs",
            Step::CustomData => "saving custom data",
            Step::RootPassword => "locking the root password",
            Step::HostKeys => "regenerating SSH host keys",
            Step::RestartSshd => "restarting sshd",
        }
    }
}

/// Everything provisioning will do, decided before anything is done.
#[derive(Debug)]
pub struct Plan {
    pub ovf: Box<OvfEnv>,
    /// crypt(3) hash of the password (never the password itself).
    pub password_hash: Option<String>,
    pub public_keys: Vec<keys::KeyFile>,
    pub key_pairs: Vec<keys::KeyPair>,
    /// The SSH host key fingerprint, known after [`Step::HostKeys`].
    pub fingerprint: Option<String>,
}

impl Daemon {
    /// Checks everything and decides every action; changes nothing on the
    /// system (it may write `{THUMBPRINT}.pub` into Lib.Dir).
    pub(super) fn plan(&self, ovf: Box<OvfEnv>) -> Result<Plan, String> {
        let user = &ovf.user_name;
        if self.os.is_dynamic_user(user) {
            // Not in any passwd file: useradd would make a second account
            // of that name. Not even AllowResetSysUser allows it.
            return Err(format!(
                "refusing to provision {user}: it is a systemd dynamic user (a service's account)"
            ));
        }
        if let Some(existing) = self.os.user(user).map_err(|e| e.to_string())? {
            let system = self.os.is_system_user(user).map_err(|e| e.to_string())?;
            if system && !self.config.allow_reset_sys_user {
                let normal = self.os.normal_uids();
                return Err(format!(
                    "refusing to provision the system account {user} (uid {}, outside the normal users' {}-{}); Provisioning.AllowResetSysUser=y allows it",
                    existing.uid,
                    normal.start(),
                    normal.end()
                ));
            }
        }
        let imds_keys = self.imds_keys();
        let public_keys =
            keys::plan_public_keys(&ovf, &imds_keys, &self.lib, &self.config.home_dir)?;
        let key_pairs = keys::plan_key_pairs(&ovf, &self.lib, &self.config.home_dir)?;
        let password_hash = ovf.user_password.as_ref().map(|p| {
            let salt = password::random_salt(self.config.password_crypt_salt_length as usize);
            password::hash(p.expose(), self.config.password_crypt_id, &salt)
        });
        Ok(Plan {
            ovf,
            password_hash,
            public_keys,
            key_pairs,
            fingerprint: None,
        })
    }

    pub(super) fn begin_journal(&mut self, plan: &Plan) -> Result<(), String> {
        let what = provisioning_id(&plan.ovf);
        match self.journal.as_mut() {
            Some(j) => j.begin(&what),
            None => Ok(()),
        }
    }

    /// Moves ReadMedia's read of the provisioning media on, without
    /// waiting. Once it is over, ovf-env.xml goes to Lib.Dir (masked), the
    /// host keys start being made, and its job waits for the goal state.
    pub(super) fn advance_media(&mut self) {
        let Some(MediaProgress::Reading(read)) = self.media.as_mut() else {
            return;
        };
        let Some(outcome) = read.poll(&*self.os, self.clock.now()) else {
            return;
        };
        let job = match outcome {
            Err(e) => Job::Fail(format!("provisioning media: {e}")),
            Ok(media::Media {
                text,
                device,
                unmounting,
            }) => {
                self.media_device = device;
                self.media_unmount = unmounting;
                if let Err(e) = self.write_lib(libdir::OVF_ENV, &ovf::masked(&text), 0o600) {
                    log::warn!("{e}");
                }
                match OvfEnv::parse(&text) {
                    Ok(env) => Job::Waagent(Box::new(env)),
                    Err(e) => Job::Fail(e.to_string()),
                }
            }
        };
        self.timeline.end(Phase::Dvd, self.clock.now());
        if let Job::Waagent(ovf) = &job {
            // ssh-keygen runs while the user is made.
            self.start_host_keys(ovf);
        }
        self.media = Some(MediaProgress::Read(job));
    }

    /// ReadMedia's read of the media is still going on.
    pub(super) fn media_reading(&self) -> bool {
        matches!(self.media, Some(MediaProgress::Reading(_)))
    }

    /// Waits for ReadMedia's read of the media (its mount, or the pause
    /// before its next try), a tick at most; false if a stop was asked.
    pub(super) fn wait_for_media(&self) -> bool {
        match &self.media {
            Some(MediaProgress::Reading(read)) => {
                read.wait(&*self.clock, self.clock.now() + MEDIA_TICK)
            }
            _ => true,
        }
    }

    /// The goal state is in hand: what `job` says comes next (for
    /// [`Job::Media`], the media's job once it is read: AwaitMedia until
    /// then).
    pub(super) fn start_job(&mut self, job: Job, goal: Box<FullGoalState>) -> State {
        let job = match job {
            Job::Media => match self.media.take() {
                Some(MediaProgress::Read(job)) => job,
                Some(reading) => {
                    self.media = Some(reading);
                    return State::AwaitMedia { goal };
                }
                None => Job::Fail("provisioning media: it was never read".into()),
            },
            job => job,
        };
        match job {
            Job::Fail(reason) => State::ReportFailed { goal, reason },
            Job::ReportOnly => State::MarkProvisioned {
                goal,
                fingerprint: self.provisioned_fingerprint(),
                disable_agent: false,
            },
            job => State::ReportStarting { job, goal },
        }
    }

    /// Once ovf-env.xml is read ([`advance_media`](Self::advance_media)):
    /// new SSH host keys, when they are wanted and this provisioning has not
    /// made them already, start being made (`ssh-keygen` in the background, nothing replaced
    /// until HostKeys). What a killed daemon left half-made goes either way.
    pub(super) fn start_host_keys(&mut self, ovf: &OvfEnv) {
        let made = self.journal.as_ref().is_some_and(|j| {
            j.entry().provisioning.as_deref() == Some(provisioning_id(ovf).as_str())
                && j.step_done(Step::HostKeys.key())
        });
        let c = &self.config;
        if !c.regenerate_ssh_host_key_pair || made {
            self.os.discard_ssh_host_key_work();
            return;
        }
        let now = self.clock.now();
        match self
            .os
            .start_ssh_host_keys(c.ssh_host_key_pair_type, &ovf.host_name, now)
        {
            Ok(job) => {
                self.timeline.begin(Phase::HostKeys, now);
                self.host_keys = Some(job);
            }
            Err(e) => log::warn!("cannot start making the SSH host keys: {e}; trying again later"),
        }
    }

    /// Once sshd's configuration and host keys are in place: its restart
    /// starts in the background (RestartSshd collects it), unless a killed
    /// daemon's journal says it was done.
    pub(super) fn start_sshd_restart(&mut self) {
        let done = self
            .journal
            .as_ref()
            .is_some_and(|j| j.step_done(Step::RestartSshd.key()));
        if done || self.sshd_restart.is_some() {
            return;
        }
        let now = self.clock.now();
        match self.os.start_restart_sshd(now) {
            Ok(Some(child)) => {
                self.timeline.begin(Phase::Sshd, now);
                self.sshd_restart = Some(child);
            }
            Ok(None) => {}
            // RestartSshd tries again, and says so if it fails.
            Err(e) => log::debug!("cannot start restarting sshd: {e}"),
        }
    }

    /// RestartSshd's wait for the restart started after HostKeys: true once
    /// it has finished (or none was started); else false after waiting a
    /// tick for it.
    pub(super) fn await_sshd_restart(&mut self) -> bool {
        let Some(child) = self.sshd_restart.as_mut() else {
            return true;
        };
        let now = self.clock.now();
        if child.poll(now) != crate::os::Poll::Running {
            return true;
        }
        // A stop request ends the wait; the loop then stops.
        crate::os::background::wait_any(&[&*child], &*self.clock, now + HOST_KEYS_TICK);
        child.poll(self.clock.now()) != crate::os::Poll::Running
    }

    /// HostKeys' wait for the keys being made: true once every `ssh-keygen`
    /// has finished; else false after waiting a tick for them. Started now
    /// if they were not when ovf-env.xml was read.
    pub(super) fn await_host_keys(&mut self, ovf: &OvfEnv) -> Result<bool, String> {
        let now = self.clock.now();
        let job = match self.host_keys.as_mut() {
            Some(job) => job,
            None => self.host_keys.insert(
                self.os
                    .start_ssh_host_keys(self.config.ssh_host_key_pair_type, &ovf.host_name, now)
                    .map_err(|e| format!("{}: {e}", Step::HostKeys.describe()))?,
            ),
        };
        if job.poll(now) {
            return Ok(true);
        }
        log::debug!("waiting for the SSH host keys being made");
        // A stop request ends the wait; the loop then stops.
        job.wait(&*self.clock, now + HOST_KEYS_TICK);
        Ok(job.poll(self.clock.now()))
    }

    /// IMDS `compute.publicKeys`; a VM without IMDS simply has none.
    pub(super) fn imds_keys(&self) -> Vec<imds::ImdsPublicKey> {
        for attempt in 1..=self.timing.imds_tries.max(1) {
            match imds::public_keys(&self.imds_base, self.timing.imds_timeout_secs) {
                Ok(k) => return k,
                Err(e) if attempt == self.timing.imds_tries => {
                    log::warn!("no SSH keys from IMDS: {e}")
                }
                Err(_) => {
                    if !self.clock.sleep(Duration::from_millis(500)) {
                        break;
                    }
                }
            }
        }
        Vec::new()
    }

    /// One provisioning action (§9.1 step 6.5 to 6.7). Each is idempotent:
    /// it checks before it acts, so a restart can run it again.
    pub(super) fn provision_step(&mut self, step: Step, plan: &mut Plan) -> Result<(), String> {
        let os = &*self.os;
        let c = &self.config;
        let ovf = &plan.ovf;
        let user = ovf.user_name.as_str();
        let entry = || -> Result<crate::os::PasswdEntry, String> {
            os.user(user)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("user {user} does not exist"))
        };
        match step {
            Step::HostName => {
                let name = ovf.host_name.as_str();
                os.set_hostname(name).map_err(|e| e.to_string())?;
                match os.primary_interface() {
                    Some(iface) => {
                        if let Err(e) = os
                            .set_dhcp_hostname(name, &iface)
                            .and_then(|_| os.publish_hostname(&iface))
                        {
                            log::warn!("cannot publish the host name on {iface}: {e}");
                        }
                    }
                    None => {
                        log::warn!("no default route: the host name is not published through DHCP")
                    }
                }
                self.write_lib(libdir::PUBLISHED_HOSTNAME, name, 0o644)
            }
            Step::User => {
                // Only an account made here is recorded as ours (for
                // -deprovision+user); one the image had is adopted. The
                // intent is journalled first, so a crash right after
                // useradd still knows.
                let journal = &mut self.journal;
                if os.user(user).map_err(|e| e.to_string())?.is_none() {
                    if let Some(j) = journal.as_mut() {
                        j.begin_user_creation(user)?;
                    }
                    os.create_user(user, None).map_err(|e| e.to_string())?;
                }
                let u = entry()?;
                match journal.as_mut() {
                    Some(j) if j.creating(user) => j.record_user_created(CreatedUser {
                        name: u.name,
                        uid: u.uid,
                        home: u.home.to_string_lossy().into_owned(),
                    }),
                    _ => Ok(()),
                }
            }
            Step::Password => match &plan.password_hash {
                Some(hash) => os.set_password_hash(user, hash).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Step::Sudoers => os
                .add_sudoer(user, plan.password_hash.is_none())
                .map_err(|e| e.to_string()),
            Step::SshdConfig => {
                if !os.sshd_config_writable() {
                    // The image ships the settings (CoreOS: /etc/ssh is read-only).
                    return Ok(());
                }
                let path = &c.sshd_config_path;
                let Ok(text) = std::fs::read_to_string(path) else {
                    log::warn!(
                        "{} not found: is openssh-server installed? sshd not configured",
                        path.display()
                    );
                    return Ok(());
                };
                let settings =
                    sshd::settings_for(ovf.disable_ssh_password_auth, c.ssh_client_alive_interval);
                let pairs: Vec<(&str, &str)> =
                    settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let new = sshd::apply(&text, &pairs);
                if new != text {
                    let mode = std::os::unix::fs::PermissionsExt::mode(
                        &std::fs::metadata(path)
                            .map_err(|e| e.to_string())?
                            .permissions(),
                    ) & 0o7777;
                    fsutil::write_atomic(path, new.as_bytes(), mode)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                // Included drop-ins are read first and would win: ours sorts
                // before them.
                // (An absolute Include is a system path: under the OS root.)
                let drop_ins = sshd::drop_in_dir(&new, Path::new(""))
                    .map(|d| match d.is_absolute() {
                        true => os.env().path(&d.to_string_lossy()),
                        false => c.ssh_dir.join(d),
                    })
                    .filter(|d| d.is_dir());
                if let Some(dir) = drop_ins {
                    let file = dir.join(sshd::DROP_IN);
                    let text = sshd::drop_in(&pairs);
                    if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                        fsutil::write_atomic(&file, text.as_bytes(), 0o644)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                }
                Ok(())
            }
            Step::PublicKeys => {
                let u = entry()?;
                plan.public_keys
                    .iter()
                    .try_for_each(|f| keys::install_public_keys(f, &c.home_dir, &u))
            }
            Step::KeyPairs => {
                let u = entry()?;
                plan.key_pairs
                    .iter()
                    .try_for_each(|kp| keys::install_key_pair(kp, &self.lib, &c.home_dir, &u))
            }
            Step::CustomData => {
                let Some(data) = &ovf.custom_data else {
                    return Ok(());
                };
                let decode = c.decode_custom_data || c.execute_custom_data;
                let path = custom_data::save(&self.lib, data, decode)?;
                if c.execute_custom_data {
                    if let Err(e) = custom_data::execute(&*os.env().runner, &path) {
                        log::warn!("custom data: {e}");
                    }
                }
                Ok(())
            }
            Step::RootPassword => match c.delete_root_password {
                true => os.lock_root_password().map_err(|e| e.to_string()),
                false => Ok(()),
            },
            Step::HostKeys => {
                if c.regenerate_ssh_host_key_pair {
                    // Started once ovf-env.xml was read; collected here
                    // (waited for, if the RSA key's prime search is not
                    // over yet).
                    let mut job = match self.host_keys.take() {
                        Some(job) => job,
                        None => os
                            .start_ssh_host_keys(
                                c.ssh_host_key_pair_type,
                                &ovf.host_name,
                                self.clock.now(),
                            )
                            .map_err(|e| e.to_string())?,
                    };
                    if !job.wait(&*self.clock, self.clock.now() + Duration::from_secs(3600)) {
                        return Err("stopped while the host keys were being made".into());
                    }
                    os.install_ssh_host_keys(job).map_err(|e| e.to_string())?;
                }
                plan.fingerprint = Some(host_key_fingerprint(c)?);
                Ok(())
            }
            Step::RestartSshd => {
                // Started at the end of HostKeys; finished by now (the
                // step's waiting turns), or started and waited for here.
                let finished = match self.sshd_restart.take() {
                    Some(child) => child
                        .result()
                        .map(|r| r.map(drop).map_err(|e| e.to_string())),
                    None => Some(os.restart_sshd().map_err(|e| e.to_string())),
                };
                if let Some(Err(e)) = finished {
                    log::warn!("cannot restart sshd: {e}");
                }
                Ok(())
            }
        }
    }
}

/// Which provisioning the journal's steps belong to: `user@host`.
fn provisioning_id(ovf: &OvfEnv) -> String {
    format!("{}@{}", ovf.user_name, ovf.host_name)
}

/// The host key fingerprint the fabric gets (§6.9): what `ssh-keygen -lf`
/// prints for `ssh_host_{type}_key.pub` (OpenSSH 6.8 and later: `SHA256:`
/// and the unpadded base64 of the SHA-256 of the key blob), with the colon
/// removed. Computed here rather than by one more process on the way to
/// Ready; the end-to-end tests hold it against `ssh-keygen -lf`.
pub fn host_key_fingerprint(config: &Config) -> Result<String, String> {
    let kind = match config.ssh_host_key_pair_type {
        SshHostKeyType::Auto => "rsa".to_string(),
        k => crate::config::OptionValue::show(&k),
    };
    let path: PathBuf = config.ssh_dir.join(format!("ssh_host_{kind}_key.pub"));
    let text = read_small(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    openssh_fingerprint(&text)
        .ok_or_else(|| format!("{} holds no OpenSSH public key", path.display()))
}

/// `SHA256` and the unpadded base64 of the SHA-256 of the key blob of the
/// first line of `text` (`type base64 [comment]`).
pub(super) fn openssh_fingerprint(text: &str) -> Option<String> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let blob = text.lines().next()?.split_whitespace().nth(1)?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let digest = Sha256::digest(&der);
    Some(format!(
        "SHA256{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// A public key file: a few hundred bytes; more than 64 KiB is not one.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_string(&mut text)?;
    Ok(text)
}
