//! `Pid.File`: one daemon at a time.
//!
//! The daemon holds an exclusive `flock` on the pid file for its whole life
//! and writes its pid into it; it removes the file when it exits. The lock,
//! not the pid, decides: a pid left by a crash, or recycled by another
//! program, blocks nothing, and the kernel drops the lock of a daemon that
//! dies however it dies. The lock is on the file's inode, so the pid is
//! written in place (a rename would put a new, unlocked inode at the path),
//! and whoever gets the lock checks that the path still names that inode (the
//! previous holder removes the file before its lock goes).
//!
//! A killed daemon holds its lock until it has finished dying, which may take
//! a moment (a process dies only when its current system call returns), so
//! a start that finds the file locked waits for it, within a bound.
//!
//! The file is 0600 (fixed if it exists), because `flock` works on a
//! read-only descriptor too: anyone who could open it could block the
//! daemon. A descriptor opened before that (a 0644 file left by an older
//! agent) still could; the error then says so, and removing the file is the
//! cure. A symlink, or a file that is not a regular one owned by the
//! daemon's user, is refused rather than locked.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Held until drop; O_CLOEXEC (std's default), so no child inherits it.
    file: Flock<File>,
}

/// Who the pid in a locked pid file is, as far as `/proc` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The same program as this one (`/proc/PID/exe` = `/proc/self/exe`).
    SameProgram,
    /// Another program, running this executable.
    Other(PathBuf),
    /// No such process.
    NotRunning,
    /// Cannot tell (no `/proc`, or the process is exiting).
    Unknown,
}

#[derive(Debug)]
pub enum PidFileError {
    /// The lock stayed taken for the whole wait.
    Locked {
        path: PathBuf,
        /// The pid written in the file, if any.
        pid: Option<u32>,
        holder: Holder,
        waited: Duration,
    },
    /// A stop was requested while waiting for the lock.
    Stopped {
        path: PathBuf,
    },
    /// Not a regular file of ours: refused rather than locked.
    Unsafe {
        path: PathBuf,
        why: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for PidFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidFileError::Locked {
                path,
                pid,
                holder,
                waited,
            } => {
                let path = path.display();
                let pid = match pid {
                    Some(pid) => pid.to_string(),
                    None => return write!(f, "{path} is locked by another process and names no pid (waited {waited:?}); if no waagent daemon runs, remove the file"),
                };
                match holder {
                    Holder::SameProgram => write!(
                        f,
                        "another waagent daemon is already running (pid {pid}, from {path})"
                    ),
                    Holder::Other(exe) => write!(
                        f,
                        "{path} is locked, but pid {pid} in it runs {}, not this program (waited {waited:?}); another process holds the lock: remove the file",
                        exe.display()
                    ),
                    Holder::NotRunning => write!(
                        f,
                        "{path} is locked, but pid {pid} in it is not running (waited {waited:?}); another process holds the lock: remove the file"
                    ),
                    Holder::Unknown => write!(
                        f,
                        "{path} is locked by another process (pid {pid} in it; waited {waited:?})"
                    ),
                }
            }
            PidFileError::Stopped { path } => {
                write!(
                    f,
                    "stopped while waiting for the lock on {}",
                    path.display()
                )
            }
            PidFileError::Unsafe { path, why } => {
                write!(f, "refusing pid file {}: {why}", path.display())
            }
            PidFileError::Io { path, source } => {
                write!(f, "cannot claim pid file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PidFileError {}

impl PidFile {
    /// How long the daemon waits for a previous one to release the lock.
    pub const WAIT: Duration = Duration::from_secs(10);

    /// Claims `path` for this process, waiting up to `wait` (and while no
    /// stop is requested) for a holder to let go. `proc_dir` is `/proc`
    /// (under the OS root), used only to describe a holder that does not.
    pub fn acquire(path: &Path, proc_dir: &Path, wait: Duration) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let deadline = Instant::now() + wait;
        let mut announced = false;
        // Kept open while waiting: the lock comes on this inode.
        let mut file = open(path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => {
                    if names_inode(path, &locked).map_err(io_err)? {
                        let me = std::process::id();
                        locked.set_len(0).map_err(io_err)?;
                        locked
                            .write_all_at(format!("{me}\n").as_bytes(), 0)
                            .map_err(io_err)?;
                        locked.sync_all().map_err(io_err)?;
                        return Ok(PidFile {
                            path: path.to_path_buf(),
                            file: locked,
                        });
                    }
                    // The holder removed the file as it let go: whatever
                    // the path names now is what to lock (no pause).
                    drop(locked);
                    file = open(path)?;
                }
                Err((f, Errno::EWOULDBLOCK)) => {
                    file = f;
                    if !announced {
                        log::info!(
                            "{} is locked (pid {}); waiting up to {wait:?} for it",
                            path.display(),
                            read_pid(path).map_or("unknown".to_string(), |p| p.to_string())
                        );
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, e)) => return Err(io_err(e.into())),
            }
            if crate::clock::stop_requested() {
                return Err(PidFileError::Stopped {
                    path: path.to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                let pid = read_pid(path);
                return Err(PidFileError::Locked {
                    path: path.to_path_buf(),
                    pid,
                    holder: pid.map_or(Holder::Unknown, |p| holder(p, proc_dir)),
                    waited: wait,
                });
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, and only if it is still ours; the lock
        // goes when the descriptor closes, right after.
        if names_inode(&self.path, &self.file).unwrap_or(false) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Opens (creating) the pid file: never through a symlink, regular, ours,
/// and 0600 from now on.
fn open(path: &Path) -> Result<File, PidFileError> {
    let err = |why: String| PidFileError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let io_err = |source| PidFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(err("not a regular file".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(err(format!("owned by uid {}, not {euid}", meta.uid())));
    }
    if meta.mode() & 0o7777 != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    Ok(file)
}

/// Whether `path` names the inode `file` is open on.
fn names_inode(path: &Path, file: &File) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == open.dev() && m.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The PID in a pid file, if it holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What `/proc` says about `pid`: the same program as this one (comparing
/// executables, which tolerates the " (deleted)" an upgrade leaves on a
/// running one), another, or none.
pub fn holder(pid: u32, proc_dir: &Path) -> Holder {
    let exe = |who: &str| {
        let target = fs::read_link(proc_dir.join(who).join("exe")).ok()?;
        let bytes = target.as_os_str().as_bytes();
        let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
        Some(PathBuf::from(OsStr::from_bytes(bytes)))
    };
    match (exe(&pid.to_string()), exe("self")) {
        (Some(theirs), Some(mine)) if theirs == mine => Holder::SameProgram,
        (Some(theirs), Some(_)) => Holder::Other(theirs),
        (None, _) if proc_dir.is_dir() && !proc_dir.join(pid.to_string()).exists() => {
            Holder::NotRunning
        }
        _ => Holder::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    const SHORT: Duration = Duration::from_millis(200);

    fn proc() -> PathBuf {
        PathBuf::from("/proc")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn claims_writes_its_pid_privately_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/waagent.pid");
        let held = PidFile::acquire(&path, &proc(), SHORT).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(mode(&path), 0o600);
        drop(held);
        assert!(!path.exists());

        // An old 0644 file with garbage in it: made private, overwritten.
        fs::write(&path, "not a pid, and longer than one\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let _held = PidFile::acquire(&path, &proc(), SHORT).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_second_claim_is_refused_while_the_first_holds() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("waagent.pid");
        let first = PidFile::acquire(&path, &proc(), SHORT).unwrap();
        // Another open file description: what a second daemon would have.
        let err = PidFile::acquire(&path, &proc(), SHORT).unwrap_err();
        assert!(
            matches!(
                err,
                PidFileError::Locked {
                    holder: Holder::SameProgram,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "another waagent daemon is already running (pid {}, from {})",
                std::process::id(),
                path.display()
            )
        );
        drop(first);
        let _second = PidFile::acquire(&path, &proc(), SHORT).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
    }

    #[test]
    fn a_recycled_pid_that_looks_like_waagent_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("waagent.pid");
        // A live process whose command line contains "waagent": sleep run
        // through a symlink of that name. Without the lock it blocks nothing.
        let link = d.path().join("waagent-lookalike");
        symlink("/bin/sleep", &link).unwrap();
        let mut other = Command::new(&link).arg("30").spawn().unwrap();
        fs::write(&path, format!("{}\n", other.id())).unwrap();
        // spawn() returns as exec begins, before the new argv is in place.
        let cmdline = format!("/proc/{}/cmdline", other.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read(&cmdline).is_ok_and(|c| String::from_utf8_lossy(&c).contains("waagent")) {
            assert!(Instant::now() < deadline, "{cmdline} never named waagent");
            std::thread::sleep(Duration::from_millis(10));
        }
        let claimed = PidFile::acquire(&path, &proc(), SHORT);
        let _ = other.kill();
        let _ = other.wait();
        let _held = claimed.unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
    }

    #[test]
    fn waits_for_a_holder_that_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("waagent.pid");
        let (ready, done) = (d.path().join("ready"), d.path().join("done"));
        // flock(1) holds the lock for about a second, then lets go.
        let script = format!(
            "touch {}; sleep 1; touch {}",
            ready.display(),
            done.display()
        );
        let mut holder = Command::new("flock")
            .arg(&path)
            .args(["sh", "-c", &script])
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let claimed = PidFile::acquire(&path, &proc(), Duration::from_secs(30));
        let _ = holder.wait();
        let _held = claimed.unwrap();
        assert!(done.exists(), "claimed before the holder let go");
        assert_eq!(read_pid(&path), Some(std::process::id()));
    }

    #[test]
    fn a_holder_that_removes_the_file_as_it_goes_hands_over_the_path() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("waagent.pid");
        let first = PidFile::acquire(&path, &proc(), SHORT).unwrap();
        let p = path.clone();
        // Waits on the first's inode, which the first unlinks as it goes.
        let waiter =
            std::thread::spawn(move || PidFile::acquire(&p, &proc(), Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let second = waiter.join().unwrap().unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        // The second holds the lock on what the path names now.
        assert!(PidFile::acquire(&path, &proc(), SHORT).is_err());
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_a_symlink_or_a_file_that_is_not_a_regular_one() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, "precious\n").unwrap();
        let path = d.path().join("waagent.pid");
        symlink(&target, &path).unwrap();
        let err = PidFile::acquire(&path, &proc(), SHORT).unwrap_err();
        assert!(matches!(err, PidFileError::Io { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");

        let dir = d.path().join("dir.pid");
        fs::create_dir(&dir).unwrap();
        assert!(PidFile::acquire(&dir, &proc(), SHORT).is_err());
    }

    #[test]
    fn describes_the_holder_by_its_executable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("self")).unwrap();
        fs::create_dir_all(p.join("4242")).unwrap();
        fs::create_dir_all(p.join("4343")).unwrap();
        fs::create_dir_all(p.join("4444")).unwrap();
        symlink("/usr/sbin/waagent", p.join("self/exe")).unwrap();
        // The running daemon's binary was replaced by an upgrade.
        symlink("/usr/sbin/waagent (deleted)", p.join("4242/exe")).unwrap();
        symlink("/usr/bin/vim", p.join("4343/exe")).unwrap();
        // 4444: exiting, its exe no longer readable.
        assert_eq!(holder(4242, p), Holder::SameProgram);
        assert_eq!(holder(4343, p), Holder::Other("/usr/bin/vim".into()));
        assert_eq!(holder(4444, p), Holder::Unknown);
        assert_eq!(holder(4545, p), Holder::NotRunning);
        let err = PidFileError::Locked {
            path: "/run/waagent.pid".into(),
            pid: Some(4343),
            holder: holder(4343, p),
            waited: Duration::from_secs(10),
        };
        assert_eq!(
            err.to_string(),
            "/run/waagent.pid is locked, but pid 4343 in it runs /usr/bin/vim, not this program (waited 10s); another process holds the lock: remove the file"
        );
    }
}
