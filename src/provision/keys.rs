//! SSH keys for the provisioned user (§7.3), from every place today's Azure
//! puts them: inline in ovf-env.xml, as certificates named by thumbprint in
//! the Certificates document, and in IMDS `compute.publicKeys`. Keys are
//! deduplicated by their key material and *appended* to existing files
//! (2.2.5 overwrote `authorized_keys` when a key came with a value; we do
//! not copy that).
//!
//! Planning (which lines go to which file) is separate from writing, so a
//! bad key is refused before anything on the system changes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::fsutil::Owner;
use crate::os::PasswdEntry;
use crate::ovf::{self, OvfEnv};
use crate::userfs::UserDir;
use crate::wire::crypto;
use crate::wire::imds::ImdsPublicKey;

/// Public keys destined for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub lines: Vec<String>,
}

/// A key pair to install from the certificate store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub path: PathBuf,
    pub thumbprint: String,
}

/// The identity of a key line: its type and base64 body, not its comment.
fn key_identity(line: &str) -> Option<(String, String)> {
    let mut f = line.split_whitespace();
    let (t, b) = (f.next()?, f.next()?);
    Some((t.to_string(), b.to_string()))
}

fn add_key(files: &mut Vec<KeyFile>, path: PathBuf, line: String) {
    let id = key_identity(&line);
    let file = match files.iter_mut().position(|f| f.path == path) {
        Some(i) => &mut files[i],
        None => {
            files.push(KeyFile {
                path,
                lines: Vec::new(),
            });
            files.last_mut().expect("just pushed")
        }
    };
    if !file.lines.iter().any(|l| key_identity(l) == id) {
        file.lines.push(line);
    }
}

/// Which public keys go where. Every path is resolved inside the user's
/// home; every thumbprint must name a certificate the fabric delivered.
pub fn plan_public_keys(
    env: &OvfEnv,
    imds: &[ImdsPublicKey],
    lib_dir: &Path,
    home_dir: &Path,
) -> Result<Vec<KeyFile>, String> {
    let user = &env.user_name;
    let mut files = Vec::new();
    for k in &env.public_keys {
        let path = ovf::resolve_key_path(&k.path, home_dir, user).map_err(|e| e.to_string())?;
        if let Some(v) = &k.value {
            add_key(&mut files, path.clone(), v.trim().to_string());
        }
        if let Some(tp) = &k.fingerprint {
            // A key given by value needs no certificate; the fingerprint of
            // such a key is informational and often names nothing on disk.
            if k.value.is_some() && !lib_dir.join(format!("{tp}.crt")).exists() {
                continue;
            }
            add_key(&mut files, path, certificate_key(lib_dir, tp, &k.path)?);
        }
    }
    for k in imds {
        let path = ovf::resolve_key_path(&k.path, home_dir, user)
            .map_err(|e| format!("IMDS key for {}: {}", ovf::quote(&k.path), e.message))?;
        let line = k.key_data.trim();
        ovf::check_public_key_value(line)
            .map_err(|e| format!("IMDS key for {}: {e}", ovf::quote(&k.path)))?;
        add_key(&mut files, path, line.to_string());
    }
    Ok(files)
}

fn certificate_key(lib_dir: &Path, thumbprint: &str, for_path: &str) -> Result<String, String> {
    if !lib_dir.join(format!("{thumbprint}.crt")).exists() {
        return Err(format!(
            "no certificate with thumbprint {thumbprint} (for the SSH key of {for_path}) in the goal state"
        ));
    }
    crypto::ssh_public_key(lib_dir, thumbprint).map_err(|e| e.to_string())
}

/// The key pairs, resolved and checked against the certificate store.
pub fn plan_key_pairs(
    env: &OvfEnv,
    lib_dir: &Path,
    home_dir: &Path,
) -> Result<Vec<KeyPair>, String> {
    env.key_pairs
        .iter()
        .map(|kp| {
            let path = ovf::resolve_key_path(&kp.path, home_dir, &env.user_name)
                .map_err(|e| e.to_string())?;
            if !lib_dir.join(format!("{}.prv", kp.fingerprint)).exists() {
                return Err(format!(
                    "no private key with thumbprint {} (for the key pair {}) in the goal state",
                    kp.fingerprint, kp.path
                ));
            }
            Ok(KeyPair {
                path,
                thumbprint: kp.fingerprint.clone(),
            })
        })
        .collect()
}

fn owner_of(user: &PasswdEntry) -> Owner {
    Owner {
        uid: user.uid,
        gid: user.gid,
    }
}

/// The most of an existing `authorized_keys` the agent reads.
const MAX_KEY_FILE: u64 = 1 << 20;

/// The directory of `path` (which lies in `{home_dir}/{user}`, checked in
/// Plan), reached through descriptors from that base; see [`crate::userfs`].
fn open_dir_of(
    path: &Path,
    home_dir: &Path,
    user: &PasswdEntry,
) -> Result<(UserDir, OsString), String> {
    let base = ovf::key_base(home_dir, &user.name);
    let rel = path
        .strip_prefix(&base)
        .map_err(|_| format!("{} is not in {}", path.display(), base.display()))?;
    let (Some(dir), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(format!("{} names no file", path.display()));
    };
    let dir = UserDir::open(&base, owner_of(user))?.walk(dir)?;
    Ok((dir, name.to_os_string()))
}

/// Appends the keys not already present; the file ends up 0600, the user's.
pub fn install_public_keys(
    file: &KeyFile,
    home_dir: &Path,
    user: &PasswdEntry,
) -> Result<(), String> {
    let (dir, name) = open_dir_of(&file.path, home_dir, user)?;
    let existing = match dir.read(&name, MAX_KEY_FILE)? {
        Some(bytes) => {
            String::from_utf8(bytes).map_err(|_| format!("{} is not text", file.path.display()))?
        }
        None => String::new(),
    };
    let mut text = existing.clone();
    for line in &file.lines {
        let id = key_identity(line);
        if existing.lines().any(|l| key_identity(l) == id) {
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
    }
    // Written even when nothing is new: the mode and owner are put right.
    dir.write(&name, text.as_bytes(), 0o600)
}

/// The private key (0600) and its OpenSSH public key beside it (0644), the
/// user's. (waagent 2.2.5 inverted these modes and left root as owner.)
pub fn install_key_pair(
    kp: &KeyPair,
    lib_dir: &Path,
    home_dir: &Path,
    user: &PasswdEntry,
) -> Result<(), String> {
    let prv = lib_dir.join(format!("{}.prv", kp.thumbprint));
    let key = std::fs::read(&prv).map_err(|e| format!("{}: {e}", prv.display()))?;
    let public = crypto::ssh_public_key(lib_dir, &kp.thumbprint).map_err(|e| e.to_string())?;
    let (dir, name) = open_dir_of(&kp.path, home_dir, user)?;
    dir.write(&name, &key, 0o600)?;
    let mut pub_name = name;
    pub_name.push(".pub");
    dir.write(&pub_name, format!("{public}\n").as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(home: &Path) -> PasswdEntry {
        PasswdEntry {
            name: "me".into(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            home: home.to_path_buf(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn dedup_by_key_material_ignoring_comments() {
        let mut files = Vec::new();
        let p = PathBuf::from("/home/u/.ssh/authorized_keys");
        add_key(&mut files, p.clone(), "ssh-rsa AAAA one".into());
        add_key(&mut files, p.clone(), "ssh-rsa AAAA two".into());
        add_key(&mut files, p.clone(), "ssh-ed25519 BBBB".into());
        add_key(
            &mut files,
            PathBuf::from("/home/u/.ssh/other"),
            "ssh-rsa AAAA".into(),
        );
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].lines, vec!["ssh-rsa AAAA one", "ssh-ed25519 BBBB"]);
    }

    #[test]
    fn imds_keys_of_more_than_one_line_or_with_control_characters_are_refused() {
        let ovf =
            OvfEnv::parse(&crate::wire::docs::test_support::fixture("../ovf/full.xml")).unwrap();
        let lib = tempfile::tempdir().unwrap();
        let imds = |data: &str| {
            plan_public_keys(
                &OvfEnv {
                    public_keys: Vec::new(),
                    ..ovf.clone()
                },
                &[ImdsPublicKey {
                    key_data: data.into(),
                    path: "/home/azureuser/.ssh/authorized_keys".into(),
                }],
                lib.path(),
                Path::new("/home"),
            )
        };
        assert_eq!(
            imds("ssh-ed25519 AAAA imds").unwrap()[0].lines,
            ["ssh-ed25519 AAAA imds"]
        );
        for (data, why) in [
            (
                "ssh-ed25519 AAAA a\nssh-rsa BBBB b",
                "spans more than one line",
            ),
            // sshd reads a lone CR as the end of a line too.
            (
                "ssh-ed25519 AAAA a\rcommand=\"sh\" ssh-rsa BBBB",
                "spans more than one line",
            ),
            ("ssh-ed25519 AAAA a\u{0}b", "contains a control character"),
            (
                "command=\"sh\" ssh-rsa BBBB",
                "is not an OpenSSH public key",
            ),
        ] {
            let err = imds(data).unwrap_err();
            assert!(
                err.starts_with("IMDS key for \"/home/azureuser/.ssh/authorized_keys\": ")
                    && err.contains(why),
                "{data:?}: {err}"
            );
        }
    }

    use std::os::unix::fs::MetadataExt;

    #[test]
    fn appends_only_missing_keys_with_owner_and_mode() {
        let homes = tempfile::tempdir().unwrap();
        let home = homes.path().join("me");
        let path = home.join(".ssh/authorized_keys");
        let user = me(&home);
        let f = KeyFile {
            path: path.clone(),
            lines: vec!["ssh-rsa AAAA new".into(), "ssh-ed25519 BBBB".into()],
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "ssh-ed25519 BBBB already here").unwrap();
        install_public_keys(&f, homes.path(), &user).unwrap();
        install_public_keys(&f, homes.path(), &user).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "ssh-ed25519 BBBB already here\nssh-rsa AAAA new\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn creates_the_ssh_dir_private_and_refuses_symlinks_and_fifos() {
        let homes = tempfile::tempdir().unwrap();
        let user = me(&homes.path().join("me"));
        let keys = |rel: &str| KeyFile {
            path: homes.path().join("me").join(rel),
            lines: vec!["ssh-rsa AAAA".into()],
        };
        install_public_keys(&keys(".ssh/authorized_keys"), homes.path(), &user).unwrap();
        assert_eq!(
            std::fs::metadata(homes.path().join("me/.ssh"))
                .unwrap()
                .mode()
                & 0o777,
            0o700
        );

        // A symlink where a directory of the path should be, at any depth.
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), homes.path().join("me/keys")).unwrap();
        let err = install_public_keys(&keys("keys/deep/authorized_keys"), homes.path(), &user)
            .unwrap_err();
        assert!(
            err.ends_with("keys is a symbolic link; refusing to write through it as root"),
            "{err}"
        );
        assert!(std::fs::read_dir(target.path()).unwrap().next().is_none());

        // A FIFO at authorized_keys would block a blocking open for ever.
        nix::unistd::mkfifo(
            &homes.path().join("me/.ssh/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = install_public_keys(&keys(".ssh/fifo"), homes.path(), &user).unwrap_err();
        assert!(err.contains("fifo is not a regular file"), "{err}");
    }
}
