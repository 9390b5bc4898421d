//! Files the agent persists: written atomically, with their mode set before
//! they become visible.
//!
//! A crash (or SIGKILL) at any point leaves either the old file or the new one,
//! never a truncated mix: the data goes to a temporary file in the same
//! directory, is fsynced, gets its mode (and owner), and is renamed over the
//! target; then the directory is fsynced so the rename itself is durable.
//!
//! The new file is a new inode, which would come with the directory's
//! default SELinux label: `/etc/shadow` labelled `etc_t` instead of
//! `shadow_t` breaks logins on RHEL. So the extended attributes of the file
//! being replaced (its `security.selinux` label, ACLs, `user.*`) are copied
//! to the new one first; file capabilities are not (a rewritten file is not
//! the program they were granted to).

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Who should own a written file; `None` keeps the writer's (root's) ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Writes `data` to `path` atomically with permission bits `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, data, mode, None)
}

/// Like [`write_atomic`], and hands the file to `owner` before it is renamed
/// into place, so there is no moment where a user's file belongs to root.
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // Created 0600 so a secret is never readable, even for a moment.
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    keep_xattrs(path, tmp.as_file())?;
    tmp.as_file().sync_all()?;
    if let Some(o) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(o.uid), Some(o.gid))?;
    }
    // After chown: chown clears set-id bits, so the mode goes last.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Copies the extended attributes of the file at `path` (if there is one;
/// a symlink there is not followed) to `to`. The SELinux label must come
/// across, or the replacement does not happen; another attribute that
/// cannot is a warning.
#[cfg(target_os = "linux")]
pub(crate) fn keep_xattrs(path: &Path, to: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(from) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    else {
        return Ok(());
    };
    let names = xattr::list(from.as_raw_fd())?;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.capability" {
            continue;
        }
        let shown = String::from_utf8_lossy(name);
        let copied = xattr::get(from.as_raw_fd(), name)
            .and_then(|value| xattr::set(to.as_raw_fd(), name, &value));
        match copied {
            Ok(()) => {}
            Err(e) if name == b"security.selinux" => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot keep the SELinux label of {}: {e}", path.display()),
                ))
            }
            Err(e) => log::warn!("{}: {shown} not kept: {e}", path.display()),
        }
    }
    Ok(())
}

/// FreeBSD has no SELinux; its extattrs are left to the administrator.
#[cfg(not(target_os = "linux"))]
pub(crate) fn keep_xattrs(_path: &Path, _to: &File) -> io::Result<()> {
    Ok(())
}

/// The three xattr calls on descriptors, each sized by a first call.
#[cfg(target_os = "linux")]
mod xattr {
    use std::io;
    use std::os::fd::RawFd;

    /// A size query and a read: the buffer is allocated from the answer;
    /// an attribute that grew in between (ERANGE) is asked for again.
    fn sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
        for _ in 0..3 {
            let len = call(std::ptr::null_mut(), 0);
            if len < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; len as usize];
            let got = call(buf.as_mut_ptr(), buf.len());
            if got >= 0 {
                buf.truncate(got as usize);
                return Ok(buf);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ERANGE) {
                return Err(e);
            }
        }
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    }

    fn c_name(name: &[u8]) -> io::Result<std::ffi::CString> {
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// The names, each NUL-terminated. A file system without xattrs has none.
    pub fn list(fd: RawFd) -> io::Result<Vec<u8>> {
        // SAFETY: the buffer pointer and length describe a live allocation
        // (or are null and 0 for the size query).
        match sized(|buf, len| unsafe { libc::flistxattr(fd, buf.cast(), len) }) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
            other => other,
        }
    }

    pub fn get(fd: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
        let name = c_name(name)?;
        // SAFETY: as above; `name` is NUL-terminated.
        sized(|buf, len| unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.cast(), len) })
    }

    pub fn set(fd: RawFd, name: &[u8], value: &[u8]) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: `value` is a live slice; `name` is NUL-terminated.
        let r =
            unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Creates `path` (and missing parents) and sets its mode, even if it existed.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, Permissions::from_mode(mode))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.prv");
        write_atomic(&p, b"key", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"key");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);

        let p = dir.path().join("sudoers");
        write_atomic(&p, b"x ALL=(ALL) ALL\n", 0o440).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o440);
    }

    #[test]
    fn replaces_existing_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Incarnation");
        fs::write(&p, "1").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&p, b"2", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "2");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("Incarnation")]);
    }

    #[test]
    fn missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/file");
        assert!(write_atomic(&p, b"x", 0o600).is_err());
    }

    #[test]
    fn owner_is_applied_before_rename() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authorized_keys");
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        write_atomic_owned(&p, b"ssh-rsa AAAA", 0o600, Some(me)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (me.uid, me.gid));
    }

    /// On the test machine's file system; the sandbox test does the same
    /// for /etc/shadow on tmpfs. Linux only, as `keep_xattrs` is.
    #[cfg(target_os = "linux")]
    #[test]
    fn replacing_keeps_the_selinux_label_and_other_xattrs_but_not_capabilities() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shadow");
        fs::write(&p, "root:x:::::::\n").unwrap();
        let f = File::open(&p).unwrap();
        let label = b"system_u:object_r:shadow_t:s0\0";
        if let Err(e) = xattr::set(f.as_raw_fd(), b"user.origin", b"image") {
            let why = format!("this file system has no user xattrs ({e})");
            crate::sim::skips::note("lib", "fsutil::replacing_keeps_the_selinux_label", &why);
            return;
        }
        // security.* needs root where there is no LSM to ask.
        let selinux = xattr::set(f.as_raw_fd(), b"security.selinux", label).is_ok();
        drop(f);
        write_atomic(&p, b"root:*LOCK*:::::::\n", 0o640).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(xattr::get(f.as_raw_fd(), b"user.origin").unwrap(), b"image");
        if selinux {
            assert_eq!(
                xattr::get(f.as_raw_fd(), b"security.selinux").unwrap(),
                label
            );
        }
        // A new file gets nothing from anywhere.
        let q = dir.path().join("new");
        write_atomic(&q, b"x", 0o600).unwrap();
        let names = xattr::list(File::open(&q).unwrap().as_raw_fd()).unwrap();
        assert!(!String::from_utf8_lossy(&names).contains("user.origin"));
    }

    #[test]
    fn ensure_dir_sets_mode_on_existing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("var/lib/waagent");
        ensure_dir(&lib, 0o755).unwrap();
        ensure_dir(&lib, 0o700).unwrap();
        assert_eq!(fs::metadata(&lib).unwrap().mode() & 0o7777, 0o700);
    }
}
