//! `Pid.File`: one daemon at a time.
//!
//! The daemon writes its PID atomically at start and removes the file when it
//! exits. A file naming a live process that is a waagent keeps a second daemon
//! out; a stale file (the process is gone, or the PID now belongs to something
//! else after a crash) is taken over.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

#[derive(Debug)]
pub enum PidFileError {
    /// Another daemon holds the file.
    Running {
        pid: u32,
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for PidFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidFileError::Running { pid, path } => write!(
                f,
                "another waagent daemon is already running (pid {pid}, from {})",
                path.display()
            ),
            PidFileError::Io { path, source } => {
                write!(f, "cannot write pid file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PidFileError {}

impl PidFile {
    /// Claims `path` for this process. `proc_dir` is `/proc` (under the OS
    /// root), used to tell a live waagent from a recycled PID.
    pub fn acquire(path: &Path, proc_dir: &Path) -> Result<PidFile, PidFileError> {
        let me = std::process::id();
        if let Some(pid) = read_pid(path) {
            if pid != me && is_live_waagent(pid, proc_dir) {
                return Err(PidFileError::Running {
                    pid,
                    path: path.to_path_buf(),
                });
            }
        }
        let io_err = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        fsutil::write_atomic(path, format!("{me}\n").as_bytes(), 0o644).map_err(io_err)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid: me,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only remove it if it is still ours.
        if read_pid(&self.path) == Some(self.pid) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The PID in a pid file, if it holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_live_waagent(pid: u32, proc_dir: &Path) -> bool {
    match fs::read(proc_dir.join(pid.to_string()).join("cmdline")) {
        Ok(cmdline) => cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg).contains("waagent")),
        // No /proc (FreeBSD without linprocfs): trust that the process exists.
        Err(_) if !proc_dir.is_dir() => i32::try_from(pid)
            .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, pid: u32, cmdline: &[u8]) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("cmdline"), cmdline).unwrap();
    }

    #[test]
    fn claims_refuses_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let proc_dir = d.path().join("proc");
        fs::create_dir_all(&proc_dir).unwrap();
        let path = d.path().join("run/waagent.pid");

        let held = PidFile::acquire(&path, &proc_dir).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        drop(held);
        assert!(!path.exists());

        // A live waagent holds it.
        fs::write(&path, "4242\n").unwrap();
        fake_proc(&proc_dir, 4242, b"/usr/sbin/waagent\0-daemon\0");
        let err = PidFile::acquire(&path, &proc_dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another waagent daemon is already running (pid 4242, from {})",
                path.display()
            )
        );
        assert_eq!(read_pid(&path), Some(4242));

        // The PID was recycled by something else: stale, taken over.
        fake_proc(&proc_dir, 4242, b"/usr/bin/vim\0");
        let _held = PidFile::acquire(&path, &proc_dir).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));

        // Garbage in the file is stale too.
        fs::write(&path, "not a pid").unwrap();
        assert!(PidFile::acquire(&path, &proc_dir).is_ok());
    }
}
