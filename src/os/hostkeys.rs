//! New SSH host keys (`Provisioning.RegenerateSshHostKeyPair`), made in the
//! background: one `ssh-keygen` per key type, started as soon as the daemon
//! knows they are wanted, each writing into a private directory inside
//! `OS.SshDir` (the keys' own file system). They are collected at the
//! provisioning step that needs them and only then renamed over the old
//! keys, so neither a crash nor a failed `ssh-keygen` ever leaves half a key
//! where sshd reads it; a killed daemon's directory is removed by the next
//! start and its children's keys are never used.
//!
//! `auto` makes what `ssh-keygen -A` makes on current OpenSSH (rsa, ecdsa,
//! ed25519), with ssh-keygen's default sizes for each (RSA 3072 bits since
//! OpenSSH 8.0, ECDSA 256), the same file names, 0600 private and 0644
//! public keys, and the comment `-A` writes (`root@` the host name). The
//! Ed25519 key needs no child: it is made in-process (`os/ed25519.rs`) the
//! moment the job starts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::background::{self, Background, Poll};
use super::runner::{Cmd, CommandRunner};
use super::{linux, OsError};
use crate::clock::Clock;
use crate::config::{OptionValue, SshHostKeyType};

/// Prefix of the private working directories in `OS.SshDir`.
const WORK_PREFIX: &str = ".waagent-hostkeys.";

/// How long one `ssh-keygen` may take (RSA's prime search is the long one).
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(120);

/// How many `ssh-keygen -t rsa` race for the RSA host key; the first to
/// finish is kept and the others killed. An RSA 3072 key's prime search
/// varies a lot from run to run, and in `auto` it is the one slow child
/// left once the transport key (three primes, under 100 ms) is made, so a
/// second generator has a core to itself. Measured on the 2-vCPU bench
/// machine, 60 interleaved runs of one vs. two, first exit wins: one,
/// median 660 ms, p90 1129, mean 701; two, median 424 ms, p90 713, mean
/// 456. (With a two-prime transport key made beside them it did not pay:
/// 200 runs, median 700 vs. 834 ms.)
const RSA_RACERS: usize = 2;

/// The key types `kind` stands for, as `ssh-keygen -t` names them.
pub fn key_types(kind: SshHostKeyType) -> Vec<String> {
    match kind {
        SshHostKeyType::Auto => ["rsa", "ecdsa", "ed25519"].map(String::from).to_vec(),
        k => vec![k.show()],
    }
}

/// The host keys being made.
pub struct HostKeyJob {
    /// The private directory the children write into; removed when the job
    /// is dropped, installed or not.
    work: tempfile::TempDir,
    keys: Vec<KeyGen>,
}

/// One key type: its file name and the `ssh-keygen` making it (several
/// racing for RSA), each into its own subdirectory of the work directory.
struct KeyGen {
    name: String,
    racers: Vec<(Background, PathBuf)>,
    /// The racer's file that finished well.
    made: Option<PathBuf>,
    /// Why none did, once every racer has failed.
    failed: Option<String>,
}

impl std::fmt::Debug for HostKeyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("HostKeyJob").field("keys", &names).finish()
    }
}

impl HostKeyJob {
    /// Starts the `ssh-keygen` children for `kind` (working directories a
    /// killed daemon left in `ssh_dir` are removed first). `comment` is the
    /// key's comment; `now` is the daemon's clock.
    pub fn start(
        runner: &dyn CommandRunner,
        ssh_dir: &Path,
        kind: SshHostKeyType,
        comment: &str,
        now: Instant,
    ) -> Result<HostKeyJob, OsError> {
        remove_stale(ssh_dir);
        let work = tempfile::Builder::new()
            .prefix(WORK_PREFIX)
            .tempdir_in(ssh_dir)
            .map_err(OsError::io(ssh_dir))?;
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o700))
            .map_err(OsError::io(work.path()))?;
        let mut job = HostKeyJob {
            work,
            keys: Vec::new(),
        };
        for t in key_types(kind) {
            let name = format!("ssh_host_{t}_key");
            if t == "ed25519" {
                // Made here and now: no child (os/ed25519.rs).
                let made = write_ed25519(job.work.path(), &name, comment)?;
                job.keys.push(KeyGen {
                    name,
                    racers: Vec::new(),
                    made: Some(made),
                    failed: None,
                });
                continue;
            }
            let n = if t == "rsa" { RSA_RACERS } else { 1 };
            let mut racers = Vec::new();
            for i in 0..n {
                let dir = job.work.path().join(i.to_string());
                fs::create_dir_all(&dir).map_err(OsError::io(&dir))?;
                let file = dir.join(&name);
                let cmd = Cmd::new("ssh-keygen")
                    .args(["-N", "", "-q", "-t", &t, "-C", comment, "-f"])
                    .arg(file.to_string_lossy())
                    .timeout(KEYGEN_TIMEOUT);
                // A child already started is killed when `job` is dropped.
                let child = runner
                    .start_captured(&cmd, now + KEYGEN_TIMEOUT)
                    .map_err(OsError::Run)?;
                racers.push((child, file));
            }
            job.keys.push(KeyGen {
                name,
                racers,
                made: None,
                failed: None,
            });
        }
        Ok(job)
    }

    /// Looks at the children without waiting; true once every key is made
    /// or has failed (then [`install`](Self::install) says why).
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut settled = true;
        for k in &mut self.keys {
            settled &= k.poll(now);
        }
        settled
    }

    /// Waits on `clock`, up to `until`, until [`poll`](Self::poll) is true;
    /// false when a stop was asked.
    pub fn wait(&mut self, clock: &dyn Clock, until: Instant) -> bool {
        loop {
            if self.poll(clock.now()) || clock.now() >= until {
                return true;
            }
            let running: Vec<&Background> = self
                .keys
                .iter()
                .flat_map(|k| k.racers.iter().map(|(c, _)| c))
                .collect();
            if !background::wait_any(&running, clock, until) {
                return false;
            }
        }
    }

    /// Replaces the host keys in `ssh_dir` with the ones made: every key
    /// made well or nothing changes (the old keys stay). Each new file is
    /// fsynced and given its mode (0600, `.pub` 0644) and the SELinux label
    /// of the file it replaces before it is renamed in; the old keys of
    /// other types are removed, as `ssh-keygen` into an emptied directory
    /// would leave them.
    pub fn install(mut self, ssh_dir: &Path) -> Result<(), OsError> {
        let mut made = Vec::new();
        for k in &mut self.keys {
            match (&k.made, &k.failed) {
                (Some(file), _) => made.push((k.name.clone(), file.clone())),
                (None, Some(why)) => return Err(OsError::Invalid(why.clone())),
                (None, None) => {
                    return Err(OsError::Invalid(format!(
                        "{} is still being generated",
                        k.name
                    )))
                }
            }
        }
        let mut files = Vec::new();
        for (name, file) in &made {
            let public = PathBuf::from(format!("{}.pub", file.display()));
            files.push((file.clone(), ssh_dir.join(name), 0o600));
            files.push((public, ssh_dir.join(format!("{name}.pub")), 0o644));
        }
        for (from, to, mode) in &files {
            prepare(from, to, *mode)?;
        }
        linux::remove_host_keys(ssh_dir)?;
        for (from, to, _) in &files {
            fs::rename(from, to).map_err(OsError::io(to))?;
        }
        crate::fsutil::sync_dir(ssh_dir).map_err(OsError::io(ssh_dir))
    }
}

impl KeyGen {
    /// True once this key is made or every racer has failed (one racer's
    /// failure is remembered, but another may still make the key).
    fn poll(&mut self, now: Instant) -> bool {
        if self.made.is_some() || (self.failed.is_some() && self.racers.is_empty()) {
            return true;
        }
        let mut i = 0;
        while i < self.racers.len() {
            if self.racers[i].0.poll(now) == Poll::Running {
                i += 1;
                continue;
            }
            let (child, file) = self.racers.remove(i);
            match child.result() {
                Some(Ok(_)) if file.exists() => {
                    for (mut other, _) in self.racers.drain(..) {
                        other.kill();
                    }
                    self.made = Some(file);
                    return true;
                }
                Some(Ok(_)) => {
                    let why = format!("`{}` wrote no {}", child.command(), file.display());
                    self.failed.get_or_insert(why);
                }
                Some(Err(e)) => {
                    self.failed.get_or_insert(e.to_string());
                }
                None => {}
            }
        }
        match self.racers.is_empty() {
            true => {
                self.failed
                    .get_or_insert_with(|| format!("{} was not generated", self.name));
                true
            }
            false => false,
        }
    }
}

impl Drop for HostKeyJob {
    /// Children still running are not wanted any more (provisioning
    /// failed, or the daemon is stopping): killed, and the directory goes.
    fn drop(&mut self) {
        for k in &mut self.keys {
            for (child, _) in &mut k.racers {
                child.kill();
            }
        }
    }
}

/// An Ed25519 key pair made in-process, written as `ssh-keygen` would
/// leave it in `work/0/name` and `.pub` (0600 and 0644, as install sets
/// them again); the private key's path.
fn write_ed25519(work: &Path, name: &str, comment: &str) -> Result<PathBuf, OsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = super::ed25519::generate(comment).map_err(OsError::Invalid)?;
    let dir = work.join("0");
    fs::create_dir_all(&dir).map_err(OsError::io(&dir))?;
    let file = dir.join(name);
    for (path, text, mode) in [
        (file.clone(), private, 0o600),
        (
            PathBuf::from(format!("{}.pub", file.display())),
            public,
            0o644,
        ),
    ] {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(OsError::io(&path))?;
    }
    Ok(file)
}

/// A generated key file made ready to be renamed over `target`: written to
/// disk, its mode set, the label of the file it replaces copied.
fn prepare(file: &Path, target: &Path, mode: u32) -> Result<(), OsError> {
    let f = fs::File::open(file).map_err(OsError::io(file))?;
    crate::fsutil::keep_xattrs(target, &f).map_err(OsError::io(target))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(OsError::io(file))?;
    f.sync_all().map_err(OsError::io(file))
}

/// Removes the working directories a killed daemon left in `ssh_dir`.
/// Only the daemon (one per machine) makes them, and it calls this before
/// it makes its own, so none is in use; a killed daemon's `ssh-keygen`
/// still running loses its directory and its key with it.
pub fn remove_stale(ssh_dir: &Path) {
    let Ok(entries) = fs::read_dir(ssh_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(WORK_PREFIX) {
            // Its ssh-keygen may be writing its key right now: try again.
            let removed = (0..3)
                .map(|_| fs::remove_dir_all(e.path()))
                .find(Result::is_ok);
            match removed.unwrap_or_else(|| fs::remove_dir_all(e.path())) {
                Ok(()) => log::info!(
                    "removed {}, left by a daemon stopped while it made host keys",
                    e.path().display()
                ),
                Err(err) => log::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::rc::Rc;

    use super::*;
    use crate::clock::VirtualClock;
    use crate::os::runner::{Output, RecordingRunner, SystemRunner};

    /// `ssh-keygen` as the recorder plays it: writes `-f FILE` and
    /// `FILE.pub` (0644 both, as a careless umask would) holding the type.
    fn keygen(runner: &RecordingRunner) {
        runner.respond(|cmd| {
            if cmd.program != "ssh-keygen" {
                return None;
            }
            let argv = cmd.argv();
            let after = |flag: &str| {
                let i = argv.iter().position(|a| a == flag)?;
                argv.get(i + 1).cloned()
            };
            let (t, file) = (after("-t")?, after("-f")?);
            fs::write(&file, format!("private {t}\n")).ok()?;
            fs::write(format!("{file}.pub"), format!("ssh-{t} AAAA root@vm1\n")).ok()?;
            Some(Ok(Output::default()))
        });
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn ssh_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_dsa_key",
        ] {
            fs::write(d.path().join(f), "old\n").unwrap();
        }
        fs::write(d.path().join("sshd_config"), "keep\n").unwrap();
        d
    }

    #[test]
    fn auto_makes_each_type_with_its_own_ssh_keygen_and_renames_them_in_at_install() {
        let dir = ssh_dir();
        let runner = RecordingRunner::new();
        keygen(&runner);
        let clock = VirtualClock::new();
        let mut job = HostKeyJob::start(
            &runner,
            dir.path(),
            SshHostKeyType::Auto,
            "root@vm1",
            clock.now(),
        )
        .unwrap();
        let work = job.work.path().to_path_buf();
        // Ed25519 is made in-process, without a child; two RSA generators
        // race, each into its own directory.
        let want: Vec<String> = [("rsa", 0), ("rsa", 1), ("ecdsa", 0)]
            .iter()
            .map(|(t, i)| {
                format!(
                    "ssh-keygen -N '' -q -t {t} -C root@vm1 -f {}/{i}/ssh_host_{t}_key",
                    work.display()
                )
            })
            .collect();
        assert_eq!(runner.lines(), want);
        assert_eq!(mode(&work), 0o700);
        // Nothing in place yet: sshd still has its old keys.
        assert_eq!(
            fs::read_to_string(dir.path().join("ssh_host_rsa_key")).unwrap(),
            "old\n"
        );
        assert!(job.poll(clock.now()));
        job.install(dir.path()).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "ssh_host_ecdsa_key",
                "ssh_host_ecdsa_key.pub",
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub",
                "ssh_host_rsa_key",
                "ssh_host_rsa_key.pub",
                "sshd_config"
            ]
        );
        for t in ["rsa", "ecdsa", "ed25519"] {
            let key = dir.path().join(format!("ssh_host_{t}_key"));
            let text = fs::read_to_string(&key).unwrap();
            match t {
                "ed25519" => assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")),
                _ => assert_eq!(text, format!("private {t}\n")),
            }
            assert_eq!(mode(&key), 0o600, "{t}");
            assert_eq!(mode(&key.with_extension("pub")), 0o644, "{t}");
        }
        assert_eq!(
            fs::read_to_string(dir.path().join("sshd_config")).unwrap(),
            "keep\n"
        );
    }

    #[test]
    fn a_failed_ssh_keygen_is_named_and_the_old_keys_stay() {
        let dir = ssh_dir();
        let runner = RecordingRunner::new();
        runner.respond(|cmd| {
            cmd.argv()
                .contains(&"ecdsa".to_string())
                .then(|| Ok(Output::failed(1, "ecdsa: unsupported key type")))
        });
        keygen(&runner);
        let clock = VirtualClock::new();
        let mut job = HostKeyJob::start(
            &runner,
            dir.path(),
            SshHostKeyType::Auto,
            "root@vm1",
            clock.now(),
        )
        .unwrap();
        let work = job.work.path().to_path_buf();
        assert!(job.poll(clock.now()));
        let e = job.install(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "`ssh-keygen -N '' -q -t ecdsa -C root@vm1 -f {}/0/ssh_host_ecdsa_key` failed with exit code 1: ecdsa: unsupported key type",
                work.display()
            )
        );
        assert_eq!(
            names(dir.path()),
            [
                "ssh_host_dsa_key",
                "ssh_host_rsa_key",
                "ssh_host_rsa_key.pub",
                "sshd_config"
            ]
        );
    }

    #[test]
    fn the_first_rsa_racer_to_finish_is_kept_and_one_failing_is_not_fatal() {
        // Racer 1 finishes first (300 ms against 900): its key goes in,
        // and racer 0 is killed then, not waited for.
        let dir = ssh_dir();
        let runner = RecordingRunner::new();
        keygen(&runner);
        let clock = Rc::new(VirtualClock::new());
        let racer = |cmd: &Cmd, i: usize| {
            cmd.argv()
                .iter()
                .any(|a| a.contains(&format!("/{i}/ssh_host_rsa")))
        };
        runner.takes(clock.clone(), move |cmd| {
            if racer(cmd, 0) {
                Some(Duration::from_millis(900))
            } else {
                racer(cmd, 1).then_some(Duration::from_millis(300))
            }
        });
        let t0 = clock.now();
        let mut job =
            HostKeyJob::start(&runner, dir.path(), SshHostKeyType::Rsa, "root@vm1", t0).unwrap();
        let work = job.work.path().to_path_buf();
        assert!(job.wait(&*clock, t0 + Duration::from_secs(5)));
        assert_eq!(clock.take_waits(), [Duration::from_millis(300)]);
        assert_eq!(
            job.keys[0].made.as_deref(),
            Some(work.join("1/ssh_host_rsa_key").as_path())
        );
        job.install(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("ssh_host_rsa_key")).unwrap(),
            "private rsa\n"
        );

        // Racer 0 fails at once: racer 1's key is the one, no error.
        let dir = ssh_dir();
        let runner = RecordingRunner::new();
        runner.respond(move |cmd| racer(cmd, 0).then(|| Ok(Output::failed(1, "rsa: no entropy"))));
        keygen(&runner);
        let clock = Rc::new(VirtualClock::new());
        runner.takes(clock.clone(), move |cmd| {
            racer(cmd, 1).then_some(Duration::from_millis(300))
        });
        let mut job = HostKeyJob::start(
            &runner,
            dir.path(),
            SshHostKeyType::Rsa,
            "root@vm1",
            clock.now(),
        )
        .unwrap();
        assert!(job.wait(&*clock, clock.now() + Duration::from_secs(5)));
        job.install(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("ssh_host_rsa_key.pub")).unwrap(),
            "ssh-rsa AAAA root@vm1\n"
        );
    }

    #[test]
    fn keys_still_being_made_are_waited_for_until_their_child_exits() {
        let dir = ssh_dir();
        let runner = RecordingRunner::new();
        keygen(&runner);
        let clock = Rc::new(VirtualClock::new());
        // RSA's prime search takes 700 ms, ed25519's key none.
        runner.takes(clock.clone(), |cmd| {
            cmd.argv()
                .contains(&"rsa".to_string())
                .then_some(Duration::from_millis(700))
        });
        let t0 = clock.now();
        let mut job =
            HostKeyJob::start(&runner, dir.path(), SshHostKeyType::Auto, "root@vm1", t0).unwrap();
        assert!(!job.poll(t0));
        // A turn waits a tick at most...
        assert!(job.wait(&*clock, t0 + Duration::from_millis(300)));
        assert!(!job.poll(clock.now()));
        // ...and the next one exactly until the child exits.
        assert!(job.wait(&*clock, t0 + Duration::from_secs(1)));
        assert!(job.poll(clock.now()));
        assert_eq!(
            clock.take_waits(),
            [Duration::from_millis(300), Duration::from_millis(400)]
        );
        job.install(dir.path()).unwrap();
        assert_eq!(mode(&dir.path().join("ssh_host_rsa_key")), 0o600);
    }

    #[test]
    fn a_job_dropped_unfinished_or_left_by_a_killed_daemon_leaves_nothing() {
        let dir = ssh_dir();
        // A killed daemon's directory, a half-written key in it.
        let stale = dir.path().join(format!("{WORK_PREFIX}x1Yz"));
        fs::create_dir_all(stale.join("0")).unwrap();
        fs::write(
            stale.join("0/ssh_host_ed25519_key"),
            "-----BEGIN OPENSSH PRI",
        )
        .unwrap();
        let runner = RecordingRunner::new();
        keygen(&runner);
        let clock = Rc::new(VirtualClock::new());
        runner.takes(clock.clone(), |_| Some(Duration::from_secs(5)));
        let job = HostKeyJob::start(
            &runner,
            dir.path(),
            SshHostKeyType::Ed25519,
            "root@vm1",
            clock.now(),
        )
        .unwrap();
        assert!(!stale.exists(), "the stale directory is still there");
        let work = job.work.path().to_path_buf();
        assert!(work.exists());
        drop(job);
        assert!(!work.exists());
        assert_eq!(
            names(dir.path()),
            [
                "ssh_host_dsa_key",
                "ssh_host_rsa_key",
                "ssh_host_rsa_key.pub",
                "sshd_config"
            ]
        );
    }

    #[test]
    fn real_ssh_keygen_children_make_what_ssh_keygen_a_makes() {
        let dir = ssh_dir();
        let clock = crate::clock::SystemClock;
        let now = clock.now();
        let mut job = HostKeyJob::start(
            &SystemRunner,
            dir.path(),
            SshHostKeyType::Auto,
            "root@web-01",
            now,
        )
        .unwrap();
        // What `ssh-keygen -A` makes, under a prefix, for comparison.
        let reference = tempfile::tempdir().unwrap();
        fs::create_dir_all(reference.path().join("etc/ssh")).unwrap();
        SystemRunner
            .run_ok(
                &Cmd::new("ssh-keygen")
                    .args(["-A", "-f"])
                    .arg(reference.path().to_string_lossy()),
            )
            .unwrap();
        let reference = reference.path().join("etc/ssh");
        assert!(job.wait(&clock, now + Duration::from_secs(60)));
        assert!(job.poll(clock.now()));
        job.install(dir.path()).unwrap();
        let mut want = names(&reference);
        want.push("sshd_config".into());
        assert_eq!(names(dir.path()), want);
        // Size and type (first and last fields), modes; the comment ours.
        let listing = |public: &Path| {
            let out = SystemRunner
                .run_ok(
                    &Cmd::new("ssh-keygen")
                        .arg("-lf")
                        .arg(public.to_string_lossy()),
                )
                .unwrap();
            let f: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
            (f[0].clone(), f[2].clone(), f[f.len() - 1].clone())
        };
        for n in want.iter().filter(|n| n.ends_with(".pub")) {
            let (ours, theirs) = (dir.path().join(n), reference.join(n));
            let (bits, comment, kind) = listing(&ours);
            let (ref_bits, _, ref_kind) = listing(&theirs);
            assert_eq!((bits, kind), (ref_bits, ref_kind), "{n}");
            assert_eq!(comment, "root@web-01");
            assert_eq!(mode(&ours), mode(&theirs), "{n}");
            let private = ours.with_extension("");
            assert_eq!(mode(&private), mode(&theirs.with_extension("")), "{n}");
            assert_eq!(mode(&private), 0o600);
        }
    }
}
