//! Files the agent persists: written atomically, with their mode set before
//! they become visible.
//!
//! A crash (or SIGKILL) at any point leaves either the old file or the new one,
//! never a truncated mix: the data goes to a temporary file in the same
//! directory, is fsynced, gets its mode (and owner), and is renamed over the
//! target; then the directory is fsynced so the rename itself is durable.

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

fn sync_dir(dir: &Path) -> io::Result<()> {
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

    #[test]
    fn ensure_dir_sets_mode_on_existing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("var/lib/waagent");
        ensure_dir(&lib, 0o755).unwrap();
        ensure_dir(&lib, 0o700).unwrap();
        assert_eq!(fs::metadata(&lib).unwrap().mode() & 0o7777, 0o700);
    }
}
