//! Writing as root into a directory a user owns (`~/.ssh`).
//!
//! The user can change that tree at any moment: swap a directory for a
//! symlink to `/etc`, leave a FIFO where a file should be, hard-link
//! `/etc/shadow` into it. Checking a path and then using it by name loses
//! that race, so everything here goes through descriptors: each directory is
//! opened from its parent with `O_NOFOLLOW | O_DIRECTORY`, a file is read
//! through the descriptor that was checked, a new file is made with
//! `O_EXCL | O_NOFOLLOW` in the directory's descriptor, given its owner and
//! mode with `fchown`/`fchmod`, and renamed within that same directory.
//! Whatever is not a plain directory or a regular file is refused.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

use crate::fsutil::Owner;

/// An open directory of the user's tree, and the path it was reached by
/// (for messages only: nothing is ever looked up by it again).
#[derive(Debug)]
pub struct UserDir {
    dir: File,
    path: PathBuf,
    owner: Owner,
}

/// What is at a name inside a [`UserDir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: refused.
    Other,
}

fn err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

fn refuse(path: &Path, what: &str) -> String {
    format!(
        "{} is {what}; refusing to write through it as root",
        path.display()
    )
}

impl UserDir {
    /// Opens `base` (the directory under which a user's key paths lie,
    /// `{HomeDir}/{user}`) for `owner`, making it 0700 and theirs if it is
    /// missing. Its parent is root's (`/home`) and is opened by path; `base`
    /// itself is not followed if it is a symlink.
    pub fn open(base: &Path, owner: Owner) -> Result<UserDir, String> {
        let parent = base
            .parent()
            .ok_or_else(|| refuse(base, "not below a directory"))?;
        let name = base
            .file_name()
            .ok_or_else(|| refuse(base, "not a directory name"))?;
        let root = File::open(parent).map_err(|e| err(parent, e))?;
        let top = UserDir {
            dir: root,
            path: parent.to_path_buf(),
            owner,
        };
        top.subdir(name, true)
    }

    /// The directory `rel` below this one (plain names only), each missing
    /// one made 0700 and the user's.
    pub fn walk(self, rel: &Path) -> Result<UserDir, String> {
        let mut dir = self;
        for c in rel.components() {
            match c {
                Component::Normal(name) => dir = dir.subdir(name, true)?,
                Component::CurDir => {}
                _ => return Err(refuse(&dir.path.join(rel), "not a plain relative path")),
            }
        }
        Ok(dir)
    }

    /// Where this directory was reached (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn subdir(&self, name: &OsStr, create: bool) -> Result<UserDir, String> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(Some(self.fd()), name, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                mkdirat(Some(self.fd()), name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| err(&path, e))?;
                let fd = openat(Some(self.fd()), name, flags, Mode::empty())
                    .map_err(|e| err(&path, e))?;
                // SAFETY: openat returned a new descriptor that nothing else owns.
                let dir = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
                std::os::unix::fs::fchown(&dir, Some(self.owner.uid), Some(self.owner.gid))
                    .map_err(|e| err(&path, e))?;
                dir.set_permissions(std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| err(&path, e))?;
                return Ok(UserDir {
                    dir,
                    path,
                    owner: self.owner,
                });
            }
            // A symlink (O_NOFOLLOW: ELOOP, or ENOTDIR on Linux with
            // O_DIRECTORY) or anything else that is not a directory.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(match self.kind(name) {
                    Ok(Kind::Symlink) => refuse(&path, "a symbolic link"),
                    _ => refuse(&path, "not a directory"),
                })
            }
            Err(e) => return Err(err(&path, e)),
            Ok(fd) => fd,
        };
        // SAFETY: as above.
        let dir = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
        Ok(UserDir {
            dir,
            path,
            owner: self.owner,
        })
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.dir.as_raw_fd()
    }

    /// What `name` is, without following it.
    pub fn kind(&self, name: &OsStr) -> Result<Kind, String> {
        match fstatat(Some(self.fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(Kind::Missing),
            Err(e) => Err(err(&self.path.join(name), e)),
            Ok(st) => Ok(
                match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                    SFlag::S_IFREG => Kind::File,
                    SFlag::S_IFDIR => Kind::Dir,
                    SFlag::S_IFLNK => Kind::Symlink,
                    _ => Kind::Other,
                },
            ),
        }
    }

    /// The content of the regular file `name` (`None` when there is none),
    /// at most `max` bytes. Refused: anything but a regular file (opened
    /// non-blocking, so a FIFO cannot hang the agent), a file with other
    /// hard links (it could be `/etc/shadow`), one the user does not own.
    pub fn read(&self, name: &OsStr, max: u64) -> Result<Option<Vec<u8>>, String> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(Some(self.fd()), name, flags, Mode::empty()) {
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refuse(&path, "a symbolic link")),
            // A socket.
            Err(Errno::ENXIO) => return Err(refuse(&path, "not a regular file")),
            Err(e) => return Err(err(&path, e)),
            Ok(fd) => fd,
        };
        // SAFETY: as above.
        let file = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
        let md = file.metadata().map_err(|e| err(&path, e))?;
        if !md.is_file() {
            return Err(refuse(&path, "not a regular file"));
        }
        if md.nlink() != 1 {
            return Err(refuse(&path, "a file with other hard links"));
        }
        // Not even root's: a user can leave a root file there (a hard link
        // made before its original was replaced keeps one link), and its
        // content would be handed to the user.
        if md.uid() != self.owner.uid {
            return Err(refuse(
                &path,
                &format!("owned by uid {}, not the user's", md.uid()),
            ));
        }
        if md.len() > max {
            return Err(format!(
                "{} is {} bytes; at most {max} are read",
                path.display(),
                md.len()
            ));
        }
        let mut data = Vec::new();
        file.take(max)
            .read_to_end(&mut data)
            .map_err(|e| err(&path, e))?;
        Ok(Some(data))
    }

    /// Replaces `name` with `data`, the user's, with `mode`: a new file made
    /// beside it (never through an existing name), renamed over it, the
    /// directory synced. A directory or anything else that is not a regular
    /// file at `name` is refused.
    pub fn write(&self, name: &OsStr, data: &[u8], mode: u32) -> Result<(), String> {
        let path = self.path.join(name);
        match self.kind(name)? {
            Kind::Missing | Kind::File => {}
            Kind::Dir => return Err(refuse(&path, "a directory")),
            Kind::Symlink => return Err(refuse(&path, "a symbolic link")),
            Kind::Other => return Err(refuse(&path, "not a regular file")),
        }
        let (tmp_name, file) = self.create_temp(name)?;
        let written = (|| -> std::io::Result<()> {
            let mut f = &file;
            f.write_all(data)?;
            std::os::unix::fs::fchown(&file, Some(self.owner.uid), Some(self.owner.gid))?;
            // After chown, which clears set-id bits.
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            file.sync_all()
        })();
        let renamed = written.map_err(|e| err(&path, e)).and_then(|_| {
            renameat(Some(self.fd()), tmp_name.as_os_str(), Some(self.fd()), name)
                .map_err(|e| err(&path, e))
        });
        if renamed.is_err() {
            let _ = nix::unistd::unlinkat(
                Some(self.fd()),
                tmp_name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        renamed?;
        self.dir.sync_all().map_err(|e| err(&self.path, e))
    }

    /// `.{name}.{random}.tmp`, created 0600 with `O_EXCL | O_NOFOLLOW`.
    fn create_temp(&self, name: &OsStr) -> Result<(OsString, File), String> {
        let mut last = None;
        for _ in 0..16 {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(".{:016x}.tmp", random_u64()));
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            match openat(
                Some(self.fd()),
                tmp.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                // SAFETY: as above.
                Ok(fd) => return Ok((tmp, unsafe { File::from(OwnedFd::from_raw_fd(fd)) })),
                Err(Errno::EEXIST) => last = Some(Errno::EEXIST),
                Err(e) => return Err(err(&self.path.join(tmp), e)),
            }
        }
        Err(err(
            &self.path.join(name),
            last.map_or("no temporary name".into(), |e| e.to_string()),
        ))
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return u64::from(t.subsec_nanos()) ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn makes_missing_directories_private_and_writes_atomically() {
        let home = tempfile::tempdir().unwrap();
        let base = home.path().join("azureuser");
        let dir = UserDir::open(&base, me())
            .unwrap()
            .walk(Path::new(".ssh/keys"))
            .unwrap();
        dir.write(OsStr::new("k"), b"one\n", 0o600).unwrap();
        dir.write(OsStr::new("k"), b"two\n", 0o644).unwrap();
        let file = base.join(".ssh/keys/k");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two\n");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o644);
        for d in ["", ".ssh", ".ssh/keys"] {
            let md = std::fs::metadata(base.join(d)).unwrap();
            assert_eq!(md.mode() & 0o777, 0o700, "{d}");
        }
        assert_eq!(
            std::fs::read_dir(base.join(".ssh/keys")).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert_eq!(
            dir.read(OsStr::new("k"), 100).unwrap().as_deref(),
            Some(&b"two\n"[..])
        );
        assert_eq!(dir.read(OsStr::new("none"), 100).unwrap(), None);
    }

    #[test]
    fn refuses_symlinks_fifos_hard_links_and_directories() {
        let home = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = home.path().join("u");
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), base.join(".ssh")).unwrap();
        let e = UserDir::open(&base, me())
            .unwrap()
            .walk(Path::new(".ssh"))
            .unwrap_err();
        assert!(
            e.ends_with(".ssh is a symbolic link; refusing to write through it as root"),
            "{e}"
        );
        // An intermediate component too.
        std::os::unix::fs::symlink(outside.path(), base.join("mid")).unwrap();
        let e = UserDir::open(&base, me())
            .unwrap()
            .walk(Path::new("mid/deeper"))
            .unwrap_err();
        assert!(e.contains("mid is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        let dir = UserDir::open(&base, me())
            .unwrap()
            .walk(Path::new("real"))
            .unwrap();
        nix::unistd::mkfifo(&base.join("real/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.read(OsStr::new("fifo"), 100).unwrap_err();
        assert!(
            e.ends_with("fifo is not a regular file; refusing to write through it as root"),
            "{e}"
        );
        let e = dir.write(OsStr::new("fifo"), b"x", 0o600).unwrap_err();
        assert!(e.contains("fifo is not a regular file"), "{e}");

        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::fs::hard_link(outside.path().join("secret"), base.join("real/linked")).unwrap();
        let e = dir.read(OsStr::new("linked"), 100).unwrap_err();
        assert!(e.contains("linked is a file with other hard links"), "{e}");

        std::os::unix::fs::symlink(outside.path().join("secret"), base.join("real/sym")).unwrap();
        assert!(dir
            .read(OsStr::new("sym"), 100)
            .unwrap_err()
            .contains("a symbolic link"));
        assert!(dir.write(OsStr::new("sym"), b"x", 0o600).is_err());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s"
        );

        std::fs::create_dir(base.join("real/d")).unwrap();
        assert!(dir
            .write(OsStr::new("d"), b"x", 0o600)
            .unwrap_err()
            .contains("a directory"));

        std::fs::write(base.join("real/big"), vec![b'a'; 200]).unwrap();
        assert!(dir
            .read(OsStr::new("big"), 100)
            .unwrap_err()
            .contains("at most 100 are read"));

        // A base that is itself a symlink is not followed.
        std::os::unix::fs::symlink(outside.path(), home.path().join("v")).unwrap();
        assert!(UserDir::open(&home.path().join("v"), me()).is_err());
    }
}
