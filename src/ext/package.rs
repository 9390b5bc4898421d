//! Unpacking an extension package (§13.3–§13.4): a zip from storage becomes
//! the handler's directory, `<lib>/{Name}-{Version}/`.
//!
//! The zip is hostile until proven otherwise: every name is checked before
//! anything is made from it (no absolute path, no `..`, no NUL, backslash
//! or control character), only plain files and directories are created
//! (symlinks, devices, FIFOs and sockets are refused), each file is made
//! with `O_EXCL | O_NOFOLLOW` so no entry can write through another, and
//! the bytes actually decompressed are counted against [`Limits`] (the
//! sizes a zip declares are whatever its maker wrote). Everything happens in
//! a fresh private directory beside the destination that is renamed into
//! place only once complete, so a failure leaves nothing behind and a crash
//! leaves at worst a dot-directory, never a half-unpacked handler.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use crate::names::quote;

/// The file every handler package carries (§13.4), copied to the base dir.
pub const HANDLER_MANIFEST: &str = "HandlerManifest.json";

/// Longest entry name accepted, in bytes: deep enough for any package,
/// short enough that paths stay far below `PATH_MAX`.
const MAX_NAME_BYTES: usize = 1024;

/// `HandlerManifest.json` is a few hundred bytes; it is read into memory to
/// drop a BOM.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The copy buffer.
const BUFFER: usize = 64 << 10;

/// Bounds on what one package may make. They are ceilings against zip bombs
/// (an archive of a few KiB can declare or inflate to terabytes, or list
/// millions of entries), not a guess at real packages' sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest archive opened: the zip reader holds its central directory
    /// (one record per entry) in memory.
    pub max_archive_bytes: u64,
    /// Files and directories created, the parents an entry implies included
    /// (each costs an inode whatever its size).
    pub max_entries: usize,
    /// Bytes written for all files together.
    pub max_total_bytes: u64,
    /// Bytes written for one file.
    pub max_entry_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 512 << 20,
            max_entries: 10_000,
            max_total_bytes: 512 << 20,
            max_entry_bytes: 512 << 20,
        }
    }
}

/// What [`unpack`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub dirs: usize,
    /// Bytes written, the base dir's copy of the manifest excluded.
    pub bytes: u64,
    /// Where the package had `HandlerManifest.json`, relative to the base
    /// dir (just the name when it was there already).
    pub manifest: PathBuf,
}

/// Why a package was not unpacked. Entry names are the zip's, shown quoted
/// and escaped ([`quote`]): they are hostile text.
#[derive(Debug)]
pub enum PackageError {
    /// The destination exists: unpack never merges into or replaces a
    /// directory.
    Exists { package: PathBuf, dest: PathBuf },
    /// Not a zip this reader can read: truncated, corrupt (a CRC that does
    /// not match), encrypted, or compressed other than stored or deflate.
    Corrupt {
        package: PathBuf,
        entry: Option<String>,
        reason: String,
    },
    /// An entry that could land outside the destination, or that is not a
    /// plain file or directory.
    Refused {
        package: PathBuf,
        entry: String,
        reason: String,
    },
    /// A bound of [`Limits`] was reached.
    TooLarge {
        package: PathBuf,
        entry: Option<String>,
        reason: String,
    },
    /// No `HandlerManifest.json` anywhere in the package.
    NoManifest { package: PathBuf },
    /// Reading the package or writing the destination failed (`entry`:
    /// while making that entry, at `path` in the temporary directory).
    Io {
        package: PathBuf,
        entry: Option<String>,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for PackageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entry = |f: &mut fmt::Formatter<'_>, e: &Option<String>| match e {
            Some(e) => write!(f, "entry {}: ", quote(e)),
            None => Ok(()),
        };
        match self {
            PackageError::Exists { package, dest } => write!(
                f,
                "{}: {} exists already; not unpacking over it",
                package.display(),
                dest.display()
            ),
            PackageError::Corrupt {
                package,
                entry: e,
                reason,
            } => {
                write!(f, "{}: not a readable zip: ", package.display())?;
                entry(f, e)?;
                f.write_str(reason)
            }
            PackageError::Refused {
                package,
                entry: e,
                reason,
            } => write!(
                f,
                "{}: entry {} refused: {reason}",
                package.display(),
                quote(e)
            ),
            PackageError::TooLarge {
                package,
                entry: e,
                reason,
            } => {
                write!(f, "{}: ", package.display())?;
                entry(f, e)?;
                f.write_str(reason)
            }
            PackageError::NoManifest { package } => {
                write!(
                    f,
                    "{}: no {HANDLER_MANIFEST} in the package",
                    package.display()
                )
            }
            PackageError::Io {
                package,
                entry: Some(e),
                source,
                ..
            } => write!(f, "{}: entry {}: {source}", package.display(), quote(e)),
            PackageError::Io {
                package,
                entry: None,
                path,
                source,
            } => write!(f, "{}: {}: {source}", package.display(), path.display()),
        }
    }
}

impl std::error::Error for PackageError {}

/// A message from the zip reader, which may quote the archive's bytes:
/// control characters escaped, cut to 200 characters.
fn clean(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    match escaped.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// Unpacks the zip `package` into `dest`, which must not exist, and copies
/// `HandlerManifest.json` (the shallowest one, minus any UTF-8 BOM) to
/// `dest`'s base if the package has it deeper (§13.4).
///
/// Files are made `u+rwx` (waagent does `u+x`: handler scripts often lose
/// their mode in a zip) and directories `u+rwx`, each with no more group
/// and other permissions than the zip gives (0700 when it gives none) and
/// never group or other write, setuid, setgid or sticky: everything runs as
/// root. The whole tree is written in `.{name}.unpack-XXXXXX` beside `dest`
/// (0700), synced, and renamed to `dest`; on any error that directory is
/// removed, so the parent holds what it held before.
pub fn unpack(package: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, PackageError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io {
            package: package.to_path_buf(),
            entry: None,
            path,
            source,
        }
    };
    let exists = || PackageError::Exists {
        package: package.to_path_buf(),
        dest: dest.to_path_buf(),
    };
    if fs::symlink_metadata(dest).is_ok() {
        return Err(exists());
    }
    let Some(name) = dest.file_name() else {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a directory name");
        return Err(io_err(dest)(e));
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };

    let zip = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(package)
        .map_err(io_err(package))?;
    let meta = zip.metadata().map_err(io_err(package))?;
    if !meta.is_file() {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_err(package)(e));
    }
    if meta.len() > limits.max_archive_bytes {
        return Err(PackageError::TooLarge {
            package: package.to_path_buf(),
            entry: None,
            reason: format!(
                "the archive is {} bytes, more than {}",
                meta.len(),
                limits.max_archive_bytes
            ),
        });
    }
    let mut archive = ZipArchive::new(BufReader::new(zip)).map_err(|e| PackageError::Corrupt {
        package: package.to_path_buf(),
        entry: None,
        reason: clean(&e.to_string()),
    })?;
    // The count the central directory holds: refuse a bomb before making
    // anything. (Implied parents are counted as they are made.)
    if archive.len() > limits.max_entries {
        return Err(PackageError::TooLarge {
            package: package.to_path_buf(),
            entry: None,
            reason: format!(
                "{} entries, more than {}",
                archive.len(),
                limits.max_entries
            ),
        });
    }

    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".unpack-");
    // Removed when dropped, which every early return does.
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let mut u = Unpacker {
        package,
        root: tmp.path(),
        limits,
        dirs: HashSet::new(),
        created: 0,
        files: 0,
        bytes: 0,
        manifests: Vec::new(),
        buf: vec![0; BUFFER],
    };
    for i in 0..archive.len() {
        u.entry(&mut archive, i)?;
    }
    let manifest = u.place_manifest()?;
    let (files, dirs, bytes) = (u.files, u.dirs.len(), u.bytes);

    // The rename must not publish files whose data is still in the page
    // cache: a crash then would leave a complete-looking, empty handler.
    sync_tree(tmp.path()).map_err(io_err(tmp.path()))?;
    // rename(2) would replace an empty directory: look again. (Only root
    // writes the parent, Lib.Dir; RENAME_NOREPLACE is Linux-only.)
    if fs::symlink_metadata(dest).is_ok() {
        return Err(exists());
    }
    fs::rename(tmp.path(), dest).map_err(io_err(dest))?;
    // Renamed: nothing is left at the temporary name to remove.
    let _ = tmp.keep();
    if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
        log::warn!("{}: {e}", parent.display());
    }
    Ok(Unpacked {
        files,
        dirs,
        bytes,
        manifest,
    })
}

/// Flushes the file system holding `dir` (one call for the whole tree,
/// where an fsync per file would cost a disk flush each).
fn sync_tree(dir: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let d = File::open(dir)?;
        // SAFETY: syncfs takes a descriptor that `d` keeps open.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        // SAFETY: sync(2) has no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// What an entry is, from its mode and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// The file type bits of a unix mode.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// The entry's kind, or why it is refused. Without file type bits (zips
/// made on other systems) the name decides: a trailing `/` is a directory.
fn kind(mode: Option<u32>, name_is_dir: bool) -> Result<Kind, &'static str> {
    match mode.map(|m| m & S_IFMT) {
        None | Some(0) if name_is_dir => Ok(Kind::Dir),
        None | Some(0) => Ok(Kind::File),
        Some(S_IFREG) if !name_is_dir => Ok(Kind::File),
        Some(S_IFDIR) if name_is_dir => Ok(Kind::Dir),
        Some(S_IFREG) | Some(S_IFDIR) => {
            Err("its mode and its name disagree on whether it is a directory")
        }
        Some(S_IFLNK) => Err("a symbolic link"),
        Some(_) => Err("a device, FIFO or socket"),
    }
}

/// The components of an entry name and whether it names a directory, or
/// why the name is refused. `.` and empty components (`a//b`) are dropped;
/// anything that could climb out or be read two ways is refused.
fn components(name: &str) -> Result<(Vec<&str>, bool), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("a name longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("a NUL in its name".into());
    }
    if name.contains('\\') {
        // A separator on Windows: `..\x` would climb there, and some tools
        // read it so; a plain character on Unix. Neither reading is safe.
        return Err("a backslash in its name".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a control character in its name".into());
    }
    if name.starts_with('/') {
        return Err("an absolute path".into());
    }
    let is_dir = name.ends_with('/');
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("a `..` component".into()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() && !is_dir {
        return Err("a file name that names no file".into());
    }
    Ok((parts, is_dir))
}

/// The mode a file or directory gets: owner rwx, group and other at most
/// what the zip gives them minus write, no setuid, setgid or sticky bit.
fn final_mode(zip_mode: Option<u32>) -> u32 {
    zip_mode.map_or(0, |m| m & 0o055) | 0o700
}

struct Unpacker<'a> {
    package: &'a Path,
    root: &'a Path,
    limits: &'a Limits,
    /// Directories made, relative to `root`: everything else below it that
    /// exists is a file this run made.
    dirs: HashSet<PathBuf>,
    /// Files and directories made, against `max_entries`.
    created: usize,
    files: usize,
    bytes: u64,
    /// Every `HandlerManifest.json` file, relative to `root`.
    manifests: Vec<PathBuf>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn refused(&self, entry: &str, reason: impl Into<String>) -> PackageError {
        PackageError::Refused {
            package: self.package.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn too_large(&self, entry: &str, reason: String) -> PackageError {
        PackageError::TooLarge {
            package: self.package.to_path_buf(),
            entry: Some(entry.to_string()),
            reason,
        }
    }

    fn corrupt(&self, entry: &str, e: impl fmt::Display) -> PackageError {
        PackageError::Corrupt {
            package: self.package.to_path_buf(),
            entry: Some(entry.to_string()),
            reason: clean(&e.to_string()),
        }
    }

    fn io(&self, entry: &str, rel: &Path) -> impl FnOnce(io::Error) -> PackageError {
        let package = self.package.to_path_buf();
        let entry = Some(entry.to_string());
        let path = self.root.join(rel);
        move |source| PackageError::Io {
            package,
            entry,
            path,
            source,
        }
    }

    fn count(&mut self, entry: &str) -> Result<(), PackageError> {
        self.created += 1;
        if self.created > self.limits.max_entries {
            let reason = format!(
                "more than {} files and directories",
                self.limits.max_entries
            );
            return Err(self.too_large(entry, reason));
        }
        Ok(())
    }

    /// Makes the directory `rel` (0700) unless this run made it already.
    /// Something else there is a file an earlier entry made.
    fn mkdir(&mut self, entry: &str, rel: &Path) -> Result<(), PackageError> {
        if self.dirs.contains(rel) {
            return Ok(());
        }
        self.count(entry)?;
        match fs::DirBuilder::new()
            .mode(0o700)
            .create(self.root.join(rel))
        {
            Ok(()) => {
                self.dirs.insert(rel.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(self.refused(entry, "a directory where an earlier entry put a file"))
            }
            Err(e) => Err(self.io(entry, rel)(e)),
        }
    }

    fn entry<R: Read + Seek>(
        &mut self,
        archive: &mut ZipArchive<R>,
        index: usize,
    ) -> Result<(), PackageError> {
        let (name, mode, encrypted) = {
            let data = archive
                .by_index_data(index)
                .map_err(|e| self.corrupt(&format!("#{index}"), e))?;
            let raw = String::from_utf8_lossy(data.name_raw()).into_owned();
            let name = data.name().map_err(|e| self.corrupt(&raw, e))?.into_owned();
            (name, data.unix_mode(), data.encrypted())
        };
        let (parts, name_is_dir) = components(&name).map_err(|r| self.refused(&name, r))?;
        let kind = kind(mode, name_is_dir).map_err(|r| self.refused(&name, r))?;
        if encrypted {
            return Err(self.corrupt(&name, "encrypted"));
        }
        let rel: PathBuf = parts.iter().collect();
        let Some((last, dirs)) = parts.split_last() else {
            // `./` and the like: the base itself.
            return Ok(());
        };
        let mut parent = PathBuf::new();
        for d in dirs {
            parent.push(d);
            self.mkdir(&name, &parent)?;
        }
        let mode = final_mode(mode);
        if kind == Kind::Dir {
            self.mkdir(&name, &rel)?;
            return fs::set_permissions(self.root.join(&rel), Permissions::from_mode(mode))
                .map_err(self.io(&name, &rel));
        }

        self.count(&name)?;
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join(&rel));
        let mut out = match out {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.refused(&name, "a second entry of the same name"));
            }
            Err(e) => return Err(self.io(&name, &rel)(e)),
        };
        let mut reader = archive
            .by_index(index)
            .map_err(|e| self.corrupt(&name, e))?;
        let mut written = 0u64;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(&name, e)),
            };
            written += n as u64;
            self.bytes += n as u64;
            if written > self.limits.max_entry_bytes {
                let reason = format!("expands past {} bytes", self.limits.max_entry_bytes);
                return Err(self.too_large(&name, reason));
            }
            if self.bytes > self.limits.max_total_bytes {
                let reason = format!(
                    "the package expands past {} bytes",
                    self.limits.max_total_bytes
                );
                return Err(self.too_large(&name, reason));
            }
            out.write_all(&self.buf[..n])
                .map_err(self.io(&name, &rel))?;
        }
        drop(reader);
        out.set_permissions(Permissions::from_mode(mode))
            .map_err(self.io(&name, &rel))?;
        self.files += 1;
        if *last == HANDLER_MANIFEST {
            self.manifests.push(rel);
        }
        Ok(())
    }

    /// Puts the shallowest `HandlerManifest.json`, minus a UTF-8 BOM, at
    /// the base (rewriting one already there that has a BOM); returns where
    /// the package had it.
    fn place_manifest(&mut self) -> Result<PathBuf, PackageError> {
        let Some(found) = self
            .manifests
            .iter()
            .min_by_key(|p| (p.components().count(), p.as_os_str().to_os_string()))
            .cloned()
        else {
            return Err(PackageError::NoManifest {
                package: self.package.to_path_buf(),
            });
        };
        let shown = found.to_string_lossy().into_owned();
        let mut text = Vec::new();
        File::open(self.root.join(&found))
            .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut text))
            .map_err(self.io(&shown, &found))?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            let reason = format!("larger than {MAX_MANIFEST_BYTES} bytes");
            return Err(self.too_large(&shown, reason));
        }
        let body = text.strip_prefix(b"\xEF\xBB\xBF");
        let base = Path::new(HANDLER_MANIFEST);
        let out = if found == base {
            let Some(body) = body else {
                return Ok(found);
            };
            // Our own file, made above in our private directory.
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.root.join(base))
                .and_then(|mut f| f.write_all(body))
        } else {
            let mode = fs::metadata(self.root.join(&found))
                .map_err(self.io(&shown, &found))?
                .permissions()
                .mode();
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.root.join(base))
            {
                // Only a directory can be there: a file would have been found.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(self.refused(
                        &format!("{HANDLER_MANIFEST}/"),
                        "a directory where the manifest goes",
                    ));
                }
                r => r.and_then(|mut f| {
                    f.write_all(body.unwrap_or(&text))?;
                    f.set_permissions(Permissions::from_mode(mode & 0o777))
                }),
            }
        };
        out.map_err(self.io(&shown, base))?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests;
