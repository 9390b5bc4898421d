//! An Ed25519 SSH host key made in the agent's own process: 32 random bytes
//! from the kernel (ring's `SystemRandom`, getrandom(2)) are the key, ring
//! derives its public half, and the two files are written in OpenSSH's own
//! formats, byte for byte what `ssh-keygen -t ed25519 -N ''` writes but for
//! the random values (PROTOCOL.key in OpenSSH's source: an unencrypted
//! `openssh-key-v1` private key; the one-line public key).
//!
//! Why not `ssh-keygen`: starting it costs more than the key (5 ms on an
//! idle machine, 20–30 ms while the DVD is read and the fabric answers on 2
//! cores), and it was the last child between the goal state and Ready for
//! the usual VM. The formats are small and fixed, and ring, already linked
//! for rustls, does the curve arithmetic; `ssh-keygen -y` reads what this
//! writes in the tests.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

const KEY_TYPE: &str = "ssh-ed25519";

/// A new key pair: the private key file's text (PEM-armoured
/// `openssh-key-v1`, no passphrase) and the public key's line, both with
/// `comment`.
pub fn generate(comment: &str) -> Result<(String, String), String> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed)
        .map_err(|_| "no random bytes from the kernel".to_string())?;
    let mut check = [0u8; 4];
    rng.fill(&mut check)
        .map_err(|_| "no random bytes from the kernel".to_string())?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| "ring refused the Ed25519 seed".to_string())?;
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
    let files = encode(&seed, &public, u32::from_ne_bytes(check), comment);
    seed.fill(0);
    Ok(files)
}

/// The two files for the key `seed` (whose public half is `public`); the
/// private key's two check integers are `check`.
fn encode(seed: &[u8; 32], public: &[u8; 32], check: u32, comment: &str) -> (String, String) {
    let mut blob = Vec::new();
    put_string(&mut blob, KEY_TYPE.as_bytes());
    put_string(&mut blob, public);

    // The "encrypted" list of private keys (cipher none): the check integer
    // twice, the key, its comment, then padding 1, 2, 3… to the cipher's
    // block size (8 for none).
    let mut secret = Vec::new();
    secret.extend_from_slice(&check.to_be_bytes());
    secret.extend_from_slice(&check.to_be_bytes());
    put_string(&mut secret, KEY_TYPE.as_bytes());
    put_string(&mut secret, public);
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(seed);
    both[32..].copy_from_slice(public);
    put_string(&mut secret, &both);
    both.fill(0);
    put_string(&mut secret, comment.as_bytes());
    let mut pad = 1u8;
    while secret.len() % 8 != 0 {
        secret.push(pad);
        pad += 1;
    }

    let mut key = b"openssh-key-v1\0".to_vec();
    put_string(&mut key, b"none"); // cipher
    put_string(&mut key, b"none"); // kdf
    put_string(&mut key, b""); // kdf options
    key.extend_from_slice(&1u32.to_be_bytes()); // one key
    put_string(&mut key, &blob);
    put_string(&mut key, &secret);
    secret.fill(0);

    let body = STANDARD.encode(&key);
    key.fill(0);
    let mut private = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    // ssh-keygen wraps at 70 columns.
    for line in body.as_bytes().chunks(70) {
        private.push_str(std::str::from_utf8(line).unwrap_or_default());
        private.push('\n');
    }
    private.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let public_line = format!("{KEY_TYPE} {} {comment}\n", STANDARD.encode(&blob));
    (private, public_line)
}

/// An SSH wire-format string: its length (32-bit, big-endian), then it.
fn put_string(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    fn ssh_keygen_present() -> bool {
        Command::new("ssh-keygen").arg("-?").output().is_ok()
    }

    /// OpenSSH reads the private key, derives the same public key from it,
    /// and finds the comment inside it (no `.pub` beside it to read).
    #[test]
    fn ssh_keygen_reads_the_key_and_derives_the_same_public_key() {
        assert!(
            ssh_keygen_present(),
            "the tests need ssh-keygen (openssh-client)"
        );
        let (private, public) = generate("root@vm1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ssh_host_ed25519_key");
        std::fs::write(&key, &private).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8(out.stdout).unwrap();
        // -y prints "type base64 comment" on current OpenSSH, "type base64"
        // on older ones.
        let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(fields(&derived), fields(&public));
        assert!(public.ends_with(" root@vm1\n"), "{public}");

        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(&key)
            .output()
            .unwrap();
        let listed = String::from_utf8(out.stdout).unwrap();
        assert!(
            listed.starts_with("256 SHA256:") && listed.contains(" root@vm1 (ED25519)"),
            "{listed}"
        );
    }

    #[test]
    fn each_key_is_new() {
        let (a, pa) = generate("c").unwrap();
        let (b, pb) = generate("c").unwrap();
        assert_ne!(a, b);
        assert_ne!(pa, pb);
    }

    /// The layout, for a known seed: RFC 8032's first test vector, whose
    /// public key is given there, in the files `ssh-keygen` would write.
    #[test]
    fn the_layout_is_openssh_s() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let public: [u8; 32] =
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .try_into()
                .unwrap();
        let derived = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(derived.public_key().as_ref(), public);

        let (private, line) = encode(&seed, &public, 0x01020304, "me@host");
        assert_eq!(
            line,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea me@host\n"
        );
        let lines: Vec<&str> = private.lines().collect();
        assert_eq!(lines[0], "-----BEGIN OPENSSH PRIVATE KEY-----");
        assert_eq!(*lines.last().unwrap(), "-----END OPENSSH PRIVATE KEY-----");
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 70));
        let key = STANDARD.decode(lines[1..lines.len() - 1].concat()).unwrap();
        assert!(key.starts_with(b"openssh-key-v1\0\0\0\0\x04none\0\0\0\x04none\0\0\0\0\0\0\0\x01"));
        // The private section: check integers, type, public, seed||public,
        // comment, padding 1..; 8-byte aligned.
        // Header 39 bytes, then the public blob (4 + 51): the section at 94.
        let secret_len = u32::from_be_bytes(key[94..98].try_into().unwrap()) as usize;
        let secret = &key[98..];
        assert_eq!(secret.len(), secret_len);
        assert_eq!(secret_len % 8, 0);
        assert_eq!(&secret[..8], [1, 2, 3, 4, 1, 2, 3, 4]);
        let mut want = Vec::new();
        put_string(&mut want, b"ssh-ed25519");
        put_string(&mut want, &public);
        let mut both = seed.to_vec();
        both.extend_from_slice(&public);
        put_string(&mut want, &both);
        put_string(&mut want, b"me@host");
        assert_eq!(&secret[8..8 + want.len()], want.as_slice());
        let pad: Vec<u8> = (1..=(secret_len - 8 - want.len()) as u8).collect();
        assert_eq!(&secret[8 + want.len()..], pad.as_slice());
    }
}
