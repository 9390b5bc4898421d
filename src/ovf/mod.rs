//! `ovf-env.xml`, the provisioning document Azure hands the VM on its
//! provisioning DVD (§8): who the user is, their password and SSH keys,
//! the host name, custom data.
//!
//! The document comes from outside and the agent acts on it as root — it
//! creates the account, writes its sudoers line, writes key files — so
//! [`OvfEnv::parse`] refuses, with a one-line message that becomes the
//! `ProvisioningFailed` description, anything that could turn that into
//! harm: a user name that is not a plain POSIX name (or is `root`), a host
//! name that is not a host name, key paths that leave the user's home,
//! fingerprints that are not fingerprints (they become file names), public
//! keys that are not one OpenSSH key line, custom data beyond any size
//! Azure sends.
//!
//! The password is held in a [`Password`], which prints as `***`, and the
//! copy of the document the agent keeps is [`masked`] first (§8.4).

mod mask;

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::names::{check_host_name, quote};
use crate::xml::{self, DocError, Node};
pub use mask::masked;

/// The name errors carry (and the file name the agent saves).
pub const DOCUMENT: &str = "ovf-env.xml";

/// Largest `CustomData` accepted, in bytes of text. Azure's limit is 64 KiB
/// of base64; four times that leaves room without letting a document fill
/// the disk under `<lib>`.
pub const MAX_CUSTOM_DATA: usize = 256 * 1024;

/// Longest user name useradd accepts (`LOGIN_NAME_MAX` minus the NUL on
/// glibc is larger, but utmp and shadow tools stop at 32).
pub const MAX_USER_NAME: usize = 32;

/// The one schema version waagent knows; newer ones are read as this.
const KNOWN_VERSION: &str = "1.0";

/// A clear-text password from the document. It prints as `***` (in both
/// `{}` and `{:?}`), so no log line or error can show it by accident;
/// [`Password::expose`] is the one way to the text, for hashing.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// The password itself. Use it to hash, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `SSH/PublicKeys/PublicKey`: a key for `Path` (usually
/// `$HOME/{user}/.ssh/authorized_keys`), given inline as `Value` or as the
/// certificate with thumbprint `Fingerprint` from the Certificates document
/// (or both; then the value is used). At least one of the two is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Upper-case hex, 40 digits.
    pub fingerprint: Option<String>,
    /// As written; resolve it with [`resolve_key_path`] before use.
    pub path: String,
    /// One OpenSSH public key line (`ssh-…`, `ecdsa-…`, `sk-…`), trimmed.
    pub value: Option<String>,
}

/// `SSH/KeyPairs/KeyPair`: the private key of the certificate with this
/// thumbprint, to be installed at `Path` (usually `…/.ssh/id_rsa`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// Upper-case hex, 40 digits.
    pub fingerprint: String,
    /// As written; resolve it with [`resolve_key_path`] before use.
    pub path: String,
}

/// What `ovf-env.xml` asks for, validated (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct OvfEnv {
    /// `ProvisioningSection/Version`.
    pub version: String,
    pub host_name: String,
    pub user_name: String,
    /// `None` when absent or empty: no password is set, and the sudoers
    /// line gets `NOPASSWD`.
    pub user_password: Option<Password>,
    /// True only for the text `true`, in any case (§8.2).
    pub disable_ssh_password_auth: bool,
    pub public_keys: Vec<PublicKey>,
    pub key_pairs: Vec<KeyPair>,
    /// As given (normally base64); decoding is the provisioner's choice.
    pub custom_data: Option<String>,
    /// `PlatformSettingsSection/PlatformSettings/ProvisionGuestAgent`:
    /// `true`/`false` in any case; absent, empty or anything else is `None`.
    pub provision_guest_agent: Option<bool>,
}

/// Custom data is the user's script and may hold secrets: `{:?}` shows its
/// size only (the password is a [`Password`] already).
impl fmt::Debug for OvfEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvfEnv")
            .field("version", &self.version)
            .field("host_name", &self.host_name)
            .field("user_name", &self.user_name)
            .field("user_password", &self.user_password)
            .field("disable_ssh_password_auth", &self.disable_ssh_password_auth)
            .field("public_keys", &self.public_keys)
            .field("key_pairs", &self.key_pairs)
            .field(
                "custom_data",
                &self
                    .custom_data
                    .as_ref()
                    .map(|c| format!("<{} bytes>", c.len())),
            )
            .field("provision_guest_agent", &self.provision_guest_agent)
            .finish()
    }
}

impl OvfEnv {
    /// Reads and validates the document (§8.2). Required: `Environment`,
    /// `ProvisioningSection/Version`, `LinuxProvisioningConfigurationSet`
    /// with `HostName` and `UserName`. `PlatformSettingsSection` is
    /// optional (2.2.5's documents have none).
    pub fn parse(text: &str) -> Result<OvfEnv, DocError> {
        let root = xml::parse(DOCUMENT, text).map_err(one_line)?;
        let env = root.node(DOCUMENT);
        if root.name != "Environment" {
            return Err(env.error("not an OVF environment: the root element must be Environment"));
        }
        let section = env.req("ProvisioningSection")?;
        let version = section.req_text("Version")?;
        if version.as_str() > KNOWN_VERSION {
            log::warn!(
                "{DOCUMENT}: version {} is newer than {KNOWN_VERSION}; reading it as {KNOWN_VERSION}",
                quote(&version)
            );
        }
        let set = section.req("LinuxProvisioningConfigurationSet")?;

        let host_name = set.req_text("HostName")?;
        check_host_name(&host_name).map_err(|m| set.error_at("HostName", m))?;
        let user_name = set.req_text("UserName")?;
        check_user_name(&user_name).map_err(|m| set.error_at("UserName", m))?;

        // Not trimmed: spaces may be part of a password (waagent keeps them).
        let user_password = set
            .get("UserPassword")
            .map(|n| n.element().text.clone())
            .filter(|p| !p.is_empty())
            .map(Password);
        // Blanks around it are forgiven; `yes`, `1` and the like are false.
        let disable_ssh_password_auth = set
            .opt_text("DisableSshPasswordAuthentication")
            .is_some_and(|t| t.eq_ignore_ascii_case("true"));

        let public_keys = set
            .all("SSH/PublicKeys/PublicKey")
            .iter()
            .map(|n| public_key(n, &user_name))
            .collect::<Result<Vec<_>, _>>()?;
        let key_pairs = set
            .all("SSH/KeyPairs/KeyPair")
            .iter()
            .map(|n| key_pair(n, &user_name))
            .collect::<Result<Vec<_>, _>>()?;

        let custom_data = set.opt_text("CustomData");
        if let Some(data) = &custom_data {
            if data.len() > MAX_CUSTOM_DATA {
                return Err(set.error_at(
                    "CustomData",
                    format!(
                        "custom data is {} bytes; at most {MAX_CUSTOM_DATA} are accepted",
                        data.len()
                    ),
                ));
            }
        }

        let provision_guest_agent = env
            .opt_text("PlatformSettingsSection/PlatformSettings/ProvisionGuestAgent")
            .and_then(|t| match t.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            });

        Ok(OvfEnv {
            version,
            host_name,
            user_name,
            user_password,
            disable_ssh_password_auth,
            public_keys,
            key_pairs,
            custom_data,
            provision_guest_agent,
        })
    }
}

/// The XML reader's messages can quote the character it stumbled on as is
/// (`expected '>' not '\n'`); a refusal becomes a one-line health report,
/// so control characters are escaped.
fn one_line(mut e: DocError) -> DocError {
    if e.message.contains(char::is_control) {
        e.message = e
            .message
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
    }
    e
}

fn public_key(node: &Node<'_>, user: &str) -> Result<PublicKey, DocError> {
    let fingerprint = node
        .opt_text("Fingerprint")
        .map(|f| normalise_fingerprint(&f).map_err(|m| node.error_at("Fingerprint", m)))
        .transpose()?;
    let path = node.req_text("Path")?;
    check_key_path(&path, user).map_err(|m| node.error_at("Path", m))?;
    let value = node.opt_text("Value");
    if let Some(v) = &value {
        check_public_key_value(v).map_err(|m| node.error_at("Value", m))?;
    }
    if fingerprint.is_none() && value.is_none() {
        return Err(node.error("a public key needs a Fingerprint or a Value"));
    }
    Ok(PublicKey {
        fingerprint,
        path,
        value,
    })
}

fn key_pair(node: &Node<'_>, user: &str) -> Result<KeyPair, DocError> {
    let fingerprint = node.req_text("Fingerprint")?;
    let fingerprint =
        normalise_fingerprint(&fingerprint).map_err(|m| node.error_at("Fingerprint", m))?;
    let path = node.req_text("Path")?;
    check_key_path(&path, user).map_err(|m| node.error_at("Path", m))?;
    Ok(KeyPair { fingerprint, path })
}

/// A POSIX user name as shadow's useradd accepts it (`[a-z_][a-z0-9_-]*[$]?`),
/// letters in either case (Azure allows capitals, as do Red Hat's and
/// SUSE's useradd), at most 32 characters, and not `root`. This also keeps
/// out everything that could matter where the name is used: `/` and `..`
/// (home directory, key paths), shell and sudoers metacharacters, spaces,
/// a leading `-` (an option to useradd).
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name == "root" {
        return Err("refusing to provision the root account".to_string());
    }
    let length = name.chars().count();
    if length > MAX_USER_NAME {
        return Err(format!(
            "user name is {length} characters long; at most {MAX_USER_NAME} are allowed"
        ));
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "{} is not a valid user name: it must start with a letter or '_' \
             and hold only letters, digits, '_' and '-'",
            quote(name)
        ));
    }
    Ok(())
}

/// A certificate thumbprint as the agent names its files (`{FP}.crt`):
/// 40 hex digits, upper case. Blanks and colons, which people paste in,
/// are dropped first.
fn normalise_fingerprint(text: &str) -> Result<String, String> {
    let fp: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if fp.len() == 40 && fp.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(fp)
    } else {
        Err(format!(
            "{} is not a certificate fingerprint (40 hexadecimal digits)",
            quote(text)
        ))
    }
}

/// One OpenSSH public key line: it goes into `authorized_keys` as is, so a
/// second line would be a second key (or an options line). Shared by every
/// source of keys (ovf-env.xml, IMDS).
pub(crate) fn check_public_key_value(value: &str) -> Result<(), String> {
    if value.contains(['\n', '\r']) {
        return Err("the public key spans more than one line".to_string());
    }
    if value.contains(|c: char| c.is_control() && c != '\t') {
        return Err("the public key contains a control character".to_string());
    }
    if !["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|p| value.starts_with(p))
    {
        return Err(format!(
            "{} is not an OpenSSH public key (ssh-…, ecdsa-… or sk-…)",
            quote(value)
        ));
    }
    Ok(())
}

fn outside_home(path: &str, home: &str) -> String {
    format!(
        "key path {} is outside the user's home directory {home}",
        quote(path)
    )
}

/// The checks on a key `Path` that do not depend on `OS.HomeDir`, done at
/// parse time so a bad document fails before anything changes: a path must
/// be absolute or start with `$HOME/`, and a `$HOME` path must stay inside
/// `$HOME/{user}/`. Absolute paths are judged by [`resolve_key_path`],
/// which knows the home directory.
fn check_key_path(path: &str, user: &str) -> Result<(), String> {
    if path.chars().any(char::is_control) {
        return Err(format!(
            "key path {} contains a control character",
            quote(path)
        ));
    }
    if path.starts_with('/') {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix("$HOME/") else {
        return Err(format!(
            "key path {} is neither absolute nor under $HOME",
            quote(path)
        ));
    };
    let home = format!("$HOME/{user}");
    if rest.contains("$HOME") {
        return Err(outside_home(path, &home));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(outside_home(path, &home));
                }
            }
            part => parts.push(part),
        }
    }
    if parts.len() < 2 || parts[0] != user {
        return Err(outside_home(path, &home));
    }
    Ok(())
}

/// `path` with `.` and `..` resolved lexically (`..` at the root stays
/// there, as in Python's `os.path.normpath`). `path` is absolute.
fn normalise(path: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut out = PathBuf::from("/");
    out.extend(parts);
    out
}

/// Where a key `Path` from the document (or IMDS) really points: `$HOME`
/// replaced by `home_dir` (`OS.HomeDir`, `/home` by default) as waagent
/// does, then normalised lexically — and refused unless the result lies
/// inside `{home_dir}/{user}/`.
///
/// The directory every key path of `user` lies in: `{home_dir}/{user}`,
/// normalised as [`resolve_key_path`] does.
pub fn key_base(home_dir: &Path, user: &str) -> PathBuf {
    normalise(&home_dir.to_string_lossy()).join(user)
}

/// Why refuse: the path comes from outside, and the agent creates these
/// files *as root*. waagent writes wherever the path points, so
/// `$HOME/../../etc/shadow`, `/root/.ssh/authorized_keys` or another
/// user's `$HOME/other/.ssh/authorized_keys` would be overwritten or given
/// an attacker's key. Keeping every key file inside the provisioned user's
/// own home confines the damage to the account being created. (A symbolic
/// link inside that home can still point elsewhere; the writer must refuse
/// to follow links.)
pub fn resolve_key_path(path: &str, home_dir: &Path, user: &str) -> Result<PathBuf, DocError> {
    let fail = |message: String| DocError::new(DOCUMENT, "", message);
    check_user_name(user).map_err(fail)?;
    if path.chars().any(char::is_control) {
        return Err(fail(format!(
            "key path {} contains a control character",
            quote(path)
        )));
    }
    let home = match home_dir.to_str() {
        Some(h) if h.starts_with('/') => h,
        _ => {
            return Err(fail(format!(
                "the home directory {} is not an absolute path",
                quote(&home_dir.to_string_lossy())
            )))
        }
    };
    let replaced = path.replace("$HOME", home);
    if !replaced.starts_with('/') {
        return Err(fail(format!(
            "key path {} is neither absolute nor under $HOME",
            quote(path)
        )));
    }
    let resolved = normalise(&replaced);
    let base = key_base(home_dir, user);
    if resolved.starts_with(&base) && resolved != base {
        Ok(resolved)
    } else {
        Err(fail(outside_home(path, &base.to_string_lossy())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const FULL: &str = include_str!("../../test-data/ovf/full.xml");
    pub(super) const NO_PASSWORD: &str = include_str!("../../test-data/ovf/no-password.xml");
    const MINIMAL: &str = include_str!("../../test-data/ovf/minimal.xml");
    pub(super) const FULL_PASSWORD: &str = "Sup3r$ecret P@ss & m\u{e1}s <x>";
    const TENANT: &str = "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC69";
    const SET: &str = "/Environment/ProvisioningSection/LinuxProvisioningConfigurationSet";

    fn err(text: &str) -> String {
        match OvfEnv::parse(text) {
            Ok(env) => panic!("parsed: {env:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn samples_dir() -> Option<std::path::PathBuf> {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/azure-samples"
        ));
        if dir.is_dir() {
            Some(dir.to_path_buf())
        } else {
            eprintln!("skipped: {} is missing", dir.display());
            None
        }
    }

    #[test]
    fn full_fixture() {
        let env = OvfEnv::parse(FULL).unwrap();
        assert_eq!(env.version, "1.0");
        assert_eq!(env.host_name, "web-01.contoso.internal");
        assert_eq!(env.user_name, "azureuser");
        assert_eq!(
            env.user_password.as_ref().map(Password::expose),
            Some(FULL_PASSWORD)
        );
        assert!(!env.disable_ssh_password_auth);
        assert_eq!(
            env.public_keys,
            [
                PublicKey {
                    fingerprint: Some(TENANT.to_string()),
                    path: "$HOME/azureuser/.ssh/authorized_keys".to_string(),
                    value: None,
                },
                PublicKey {
                    fingerprint: None,
                    path: "/home/azureuser/.ssh/authorized_keys".to_string(),
                    value: Some(
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDt0ZXN0a2V5Zm9yd2FhZ2VudHJzb25seW5vdHJlYWw= alice@laptop"
                            .to_string()
                    ),
                },
            ]
        );
        assert_eq!(
            env.key_pairs,
            [KeyPair {
                fingerprint: TENANT.to_string(),
                path: "$HOME/azureuser/.ssh/id_rsa".to_string(),
            }]
        );
        assert_eq!(
            env.custom_data.as_deref(),
            Some("IyEvYmluL3NoCmVjaG8gJ2hlbGxvIGZyb20gY3VzdG9tIGRhdGEnID4gL3Zhci90bXAvY3VzdG9tLWRhdGEtcmFuCg==")
        );
        assert_eq!(env.provision_guest_agent, Some(true));
    }

    #[test]
    fn no_password_fixture() {
        let env = OvfEnv::parse(NO_PASSWORD).unwrap();
        assert_eq!(env.host_name, "db2");
        assert_eq!(env.user_name, "Ops_User-2");
        assert_eq!(env.user_password, None);
        assert!(env.disable_ssh_password_auth);
        assert_eq!(env.public_keys.len(), 1);
        assert_eq!(
            env.public_keys[0].fingerprint.as_deref(),
            Some("EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62")
        );
        assert!(env.public_keys[0]
            .value
            .as_deref()
            .is_some_and(|v| v.starts_with("ecdsa-sha2-nistp256 ")));
        assert!(env.key_pairs.is_empty());
        assert_eq!(env.custom_data, None);
        assert_eq!(env.provision_guest_agent, Some(false));
    }

    #[test]
    fn minimal_fixture() {
        let env = OvfEnv::parse(MINIMAL).unwrap();
        assert_eq!(
            env,
            OvfEnv {
                version: "1.0".to_string(),
                host_name: "h".to_string(),
                user_name: "u".to_string(),
                user_password: None,
                disable_ssh_password_auth: false,
                public_keys: Vec::new(),
                key_pairs: Vec::new(),
                custom_data: None,
                provision_guest_agent: None,
            }
        );
    }

    #[test]
    fn shared_samples() {
        let Some(dir) = samples_dir() else {
            return;
        };
        for (file, guest_agent) in [
            ("ovf-env.xml", Some(false)),
            ("ovf-env-2.xml", Some(true)),
            ("ovf-env-3.xml", None),
            ("ovf-env-4.xml", None),
            ("v2.2.5/ovf-env.xml", None),
        ] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let env = OvfEnv::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(env.version, "1.0", "{file}");
            assert_eq!(env.host_name, "HostName", "{file}");
            assert_eq!(env.user_name, "UserName", "{file}");
            assert_eq!(
                env.user_password.as_ref().map(Password::expose),
                Some("UserPassword"),
                "{file}"
            );
            assert!(!env.disable_ssh_password_auth, "{file}");
            assert_eq!(
                env.public_keys,
                [PublicKey {
                    fingerprint: Some("EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62".to_string()),
                    path: "$HOME/UserName/.ssh/authorized_keys".to_string(),
                    value: Some("ssh-rsa AAAANOTAREALKEY== foo@bar.local".to_string()),
                }],
                "{file}"
            );
            assert_eq!(
                env.key_pairs,
                [KeyPair {
                    fingerprint: "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62".to_string(),
                    path: "$HOME/UserName/.ssh/id_rsa".to_string(),
                }],
                "{file}"
            );
            assert_eq!(env.custom_data.as_deref(), Some("CustomData"), "{file}");
            assert_eq!(env.provision_guest_agent, guest_agent, "{file}");

            let saved = masked(&text);
            assert!(saved.contains("<UserPassword>*</UserPassword>"), "{file}");
            assert!(!saved.contains(">UserPassword<"), "{file}");
            // Only the password changed.
            assert_eq!(
                saved.replace("<UserPassword>*<", "<UserPassword>UserPassword<"),
                text,
                "{file}"
            );
        }
    }

    #[test]
    fn bad_fixtures_fail_with_exact_messages() {
        let cases: &[(&str, String)] = &[
            (
                include_str!("../../test-data/ovf/bad-no-username.xml"),
                format!("ovf-env.xml: {SET}/UserName: missing"),
            ),
            (
                include_str!("../../test-data/ovf/bad-root.xml"),
                format!("ovf-env.xml: {SET}/UserName: refusing to provision the root account"),
            ),
            (
                include_str!("../../test-data/ovf/bad-user-semicolon.xml"),
                format!(
                    "ovf-env.xml: {SET}/UserName: \"us;er\" is not a valid user name: it must \
                     start with a letter or '_' and hold only letters, digits, '_' and '-'"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-user-dotdot.xml"),
                format!(
                    "ovf-env.xml: {SET}/UserName: \"../x\" is not a valid user name: it must \
                     start with a letter or '_' and hold only letters, digits, '_' and '-'"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-user-too-long.xml"),
                format!(
                    "ovf-env.xml: {SET}/UserName: user name is 33 characters long; \
                     at most 32 are allowed"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-key-path.xml"),
                format!(
                    "ovf-env.xml: {SET}/SSH/PublicKeys/PublicKey[1]/Path: key path \
                     \"$HOME/../../etc/shadow\" is outside the user's home directory \
                     $HOME/azureuser"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-fingerprint.xml"),
                format!(
                    "ovf-env.xml: {SET}/SSH/KeyPairs/KeyPair[1]/Fingerprint: \
                     \"../../etc/ssh/ssh_host_rsa_key\" is not a certificate fingerprint \
                     (40 hexadecimal digits)"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-hostname.xml"),
                format!(
                    "ovf-env.xml: {SET}/HostName: \"web_01;reboot\" is not a valid host name: \
                     only letters, digits, '-' and '.' are allowed"
                ),
            ),
            (
                include_str!("../../test-data/ovf/bad-malformed.xml"),
                format!(
                    "ovf-env.xml: {SET}/UserName: end tag </UserNam> does not match <UserName>"
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&err(text), expected);
        }
    }

    #[test]
    fn xml_errors_are_one_line() {
        assert_eq!(
            err("<wa:HostName/\n"),
            "ovf-env.xml: /HostName: malformed XML: invalid attribute at 1:13 cause \
             expected '>' not '\\n' at 1:14"
        );
    }

    #[test]
    fn errors_in_the_password_or_custom_data_never_quote_them() {
        let set = "/Environment/ProvisioningSection/LinuxProvisioningConfigurationSet";
        for (password, shown_path) in [
            // Each would have quoted part of the password.
            ("Qx7&Qx7;", "UserPassword"),
            ("Qx7&#xD800;Qx7", "UserPassword"),
            ("Qx7<Qx7</UserPassword>", "UserPassword"),
            ("Qx7<!--Qx7", "UserPassword"),
            ("Qx7]]>Qx7\u{1}", "UserPassword"),
        ] {
            let doc = FULL.replace(
                "<UserPassword>Sup3r$ecret P@ss &amp; más &lt;x&gt;</UserPassword>",
                &format!("<UserPassword>{password}</UserPassword>"),
            );
            let e = OvfEnv::parse(&doc).unwrap_err().to_string();
            assert!(
                !e.contains("Qx7") && !e.contains("D800"),
                "{password:?}: {e}"
            );
            assert_eq!(
                e,
                format!("ovf-env.xml: {set}/{shown_path}: the content of UserPassword is not valid XML (not shown: it is secret)"),
                "{password:?}"
            );
        }
        let doc = FULL.replacen("<CustomData>", "<CustomData>&secretdata;", 1);
        let e = OvfEnv::parse(&doc).unwrap_err().to_string();
        assert!(!e.contains("secretdata"), "{e}");
        assert!(
            e.ends_with(
                "/CustomData: the content of CustomData is not valid XML (not shown: it is secret)"
            ),
            "{e}"
        );
    }

    #[test]
    fn custom_data_is_bounded() {
        let start = FULL.find("<CustomData>").unwrap() + "<CustomData>".len();
        let end = FULL.find("</CustomData>").unwrap();
        let with = |data: &str| format!("{}{data}{}", &FULL[..start], &FULL[end..]);
        assert_eq!(
            err(&with(&"A".repeat(1024 * 1024))),
            format!(
                "ovf-env.xml: {SET}/CustomData: custom data is 1048576 bytes; \
                 at most 262144 are accepted"
            )
        );
        let env = OvfEnv::parse(&with(&"A".repeat(MAX_CUSTOM_DATA))).unwrap();
        assert_eq!(env.custom_data.map(|c| c.len()), Some(MAX_CUSTOM_DATA));
    }

    /// `FULL` with `old` replaced by `new` (which must be there).
    pub(super) fn full_with(old: &str, new: &str) -> String {
        assert!(FULL.contains(old), "{old}");
        FULL.replacen(old, new, 1)
    }

    #[test]
    fn more_refusals() {
        let user = "<UserName>azureuser</UserName>";
        for (name, message) in [
            ("a b", "\"a b\" is not a valid user name"),
            ("-x", "\"-x\" is not a valid user name"),
            ("1abc", "\"1abc\" is not a valid user name"),
            ("a/b", "\"a/b\" is not a valid user name"),
            ("a$b", "\"a$b\" is not a valid user name"),
            ("$", "\"$\" is not a valid user name"),
            ("x\u{e9}", "\"x\u{e9}\" is not a valid user name"),
            ("a&amp;b", "\"a&b\" is not a valid user name"),
            ("a&#10;b", "\"a\\nb\" is not a valid user name"),
        ] {
            let e = err(&full_with(user, &format!("<UserName>{name}</UserName>")));
            assert!(e.contains(message), "{name}: {e}");
        }
        assert_eq!(
            err(&full_with(user, "<UserName>  </UserName>")),
            format!("ovf-env.xml: {SET}/UserName: empty")
        );
        let host = "<HostName>web-01.contoso.internal</HostName>";
        for (name, why) in [
            ("-web", "a label starts or ends with '-'"),
            ("web-.x", "a label starts or ends with '-'"),
            ("a..b", "it has an empty label"),
            ("vm.", "it has an empty label"),
            ("a b", "only letters, digits, '-' and '.' are allowed"),
            (&"x".repeat(64), "a label is longer than 63 characters"),
        ] {
            let e = err(&full_with(host, &format!("<HostName>{name}</HostName>")));
            assert!(e.ends_with(why), "{name}: {e}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        assert_eq!(
            err(&full_with(host, &format!("<HostName>{long}</HostName>"))),
            format!("ovf-env.xml: {SET}/HostName: host name is 255 characters long; at most 253 are allowed")
        );
        let ok = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert!(OvfEnv::parse(&full_with(host, &format!("<HostName>{ok}</HostName>"))).is_ok());

        let value = "<Value>ssh-ed25519 ";
        assert!(err(&full_with(value, "<Value>command=\"sh\" ssh-ed25519 "))
            .ends_with("is not an OpenSSH public key (ssh-…, ecdsa-… or sk-…)"));
        assert!(
            err(&full_with(value, "<Value>ssh-ed25519 AAAA x\nssh-rsa "))
                .ends_with("/PublicKey[2]/Value: the public key spans more than one line")
        );
        assert_eq!(
            err(&full_with(
                "<Path>/home/azureuser/.ssh/authorized_keys</Path>\n            <Value>",
                "<Path>/home/azureuser/.ssh/authorized_keys</Path>\n            <NoValue>"
            )
            .replacen("</Value>", "</NoValue>", 1)),
            format!(
                "ovf-env.xml: {SET}/SSH/PublicKeys/PublicKey[2]: a public key needs a \
                 Fingerprint or a Value"
            )
        );
        assert!(err(&full_with(
            "<Path>$HOME/azureuser/.ssh/id_rsa</Path>",
            "<Path>.ssh/id_rsa</Path>"
        ))
        .ends_with(
            "KeyPair[1]/Path: key path \".ssh/id_rsa\" is neither absolute nor under $HOME"
        ));
        assert!(err(&full_with(
            "<Path>$HOME/azureuser/.ssh/id_rsa</Path>",
            "<Path>$HOME/other/.ssh/id_rsa</Path>"
        ))
        .ends_with("is outside the user's home directory $HOME/azureuser"));
        assert!(err(&full_with(
            "<Path>$HOME/azureuser/.ssh/id_rsa</Path>",
            "<Path>$HOME/azureuser</Path>"
        ))
        .ends_with("is outside the user's home directory $HOME/azureuser"));
        assert!(err(&full_with(
            "<Path>$HOME/azureuser/.ssh/id_rsa</Path>",
            "<Path>$HOME/azureuser/.ssh/id&#9;rsa</Path>"
        ))
        .ends_with("key path \"$HOME/azureuser/.ssh/id\\trsa\" contains a control character"));
        assert!(err(&full_with("<Fingerprint>f003", "<Fingerprint>f00"))
            .ends_with("PublicKey[1]/Fingerprint: \"f0005206abf9dafcebfe9a1cb2e6b9fff18fc69\" is not a certificate fingerprint (40 hexadecimal digits)"));
        assert_eq!(
            err(&FULL.replace("Environment", "Envelope")),
            "ovf-env.xml: /Envelope: not an OVF environment: the root element must be Environment"
        );
        assert_eq!(
            err(&full_with("<wa:Version>1.0</wa:Version>", "")),
            "ovf-env.xml: /Environment/ProvisioningSection/Version: missing"
        );
    }

    #[test]
    fn lenient_where_waagent_is() {
        let newer = full_with(
            "<wa:Version>1.0</wa:Version>",
            "<wa:Version>2.0</wa:Version>",
        );
        assert_eq!(OvfEnv::parse(&newer).unwrap().version, "2.0");
        let disable = |text: &str| {
            OvfEnv::parse(&full_with(
                "<DisableSshPasswordAuthentication>false<",
                &format!("<DisableSshPasswordAuthentication>{text}<"),
            ))
            .unwrap()
            .disable_ssh_password_auth
        };
        assert!(disable("true") && disable("True") && disable("TRUE"));
        assert!(!disable("yes") && !disable("1") && !disable("") && !disable("truest"));
        let guest = |text: &str| {
            OvfEnv::parse(&full_with(
                "<wa:ProvisionGuestAgent>true<",
                &format!("<wa:ProvisionGuestAgent>{text}<"),
            ))
            .unwrap()
            .provision_guest_agent
        };
        assert_eq!(guest("False"), Some(false));
        assert_eq!(guest("tRUE"), Some(true));
        assert_eq!(guest("no"), None);
        // Spaces are part of a password; an empty one is no password.
        let pw = |text: &str| {
            OvfEnv::parse(&full_with(
                "<UserPassword>Sup3r$ecret P@ss &amp; más &lt;x&gt;<",
                &format!("<UserPassword>{text}<"),
            ))
            .unwrap()
            .user_password
        };
        assert_eq!(pw(" a b ").as_ref().map(Password::expose), Some(" a b "));
        assert_eq!(pw(""), None);
        assert_eq!(
            pw("<![CDATA[x</UserPassword>y]]>")
                .as_ref()
                .map(Password::expose),
            Some("x</UserPassword>y")
        );
        // A single label and a name with the `$` of a machine account.
        let env = OvfEnv::parse(
            &full_with(
                "<UserName>azureuser</UserName>",
                "<UserName>_svc$</UserName>",
            )
            .replace("$HOME/azureuser/", "$HOME/_svc$/")
            .replace("/home/azureuser/", "/home/_svc$/"),
        )
        .unwrap();
        assert_eq!(env.user_name, "_svc$");
        assert!(check_user_name(&"a".repeat(32)).is_ok());
        assert!(check_user_name("Root").is_ok());
    }

    #[test]
    fn password_never_prints() {
        let env = OvfEnv::parse(FULL).unwrap();
        let shown = format!(
            "{env:?} {} {:?}",
            Password::new("hunter2"),
            Password::new("hunter2")
        );
        assert!(!shown.contains("Sup3r"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user_password: Some(***)"), "{shown}");
        // Custom data shows its size only.
        assert!(!shown.contains("IyEv"), "{shown}");
        assert!(
            shown.contains("custom_data: Some(\"<92 bytes>\")"),
            "{shown}"
        );
    }

    #[test]
    fn key_paths_resolve_inside_the_home_only() {
        let home = Path::new("/home");
        let ok = |p: &str| resolve_key_path(p, home, "azureuser").map_err(|e| e.to_string());
        assert_eq!(
            ok("$HOME/azureuser/.ssh/authorized_keys"),
            Ok(PathBuf::from("/home/azureuser/.ssh/authorized_keys"))
        );
        assert_eq!(
            ok("/home/azureuser/./.ssh//x/../authorized_keys"),
            Ok(PathBuf::from("/home/azureuser/.ssh/authorized_keys"))
        );
        assert_eq!(
            resolve_key_path("$HOME/u/.ssh/id_rsa", Path::new("/data/users/"), "u"),
            Ok(PathBuf::from("/data/users/u/.ssh/id_rsa"))
        );
        for (path, shown) in [
            ("$HOME/../../etc/shadow", "\"$HOME/../../etc/shadow\""),
            (
                "/root/.ssh/authorized_keys",
                "\"/root/.ssh/authorized_keys\"",
            ),
            ("$HOME/other/.ssh/x", "\"$HOME/other/.ssh/x\""),
            ("$HOME/azureuser", "\"$HOME/azureuser\""),
            ("$HOME/azureuser/..", "\"$HOME/azureuser/..\""),
            ("$HOME/azureuser2/.ssh/x", "\"$HOME/azureuser2/.ssh/x\""),
            ("$HOMEx/azureuser/.ssh/x", "\"$HOMEx/azureuser/.ssh/x\""),
            (
                "/home/azureuser/../../../../etc/passwd",
                "\"/home/azureuser/../../../../etc/passwd\"",
            ),
        ] {
            assert_eq!(
                ok(path),
                Err(format!(
                    "ovf-env.xml: key path {shown} is outside the user's home directory /home/azureuser"
                ))
            );
        }
        assert_eq!(
            ok("relative/x"),
            Err(
                "ovf-env.xml: key path \"relative/x\" is neither absolute nor under $HOME"
                    .to_string()
            )
        );
        assert_eq!(
            resolve_key_path("$HOME/root/.ssh/x", home, "root").map_err(|e| e.to_string()),
            Err("ovf-env.xml: refusing to provision the root account".to_string())
        );
        assert!(resolve_key_path("$HOME/x/.ssh/y", home, "..").is_err());
        assert!(resolve_key_path("$HOME/x/.ssh/y", Path::new("home"), "x").is_err());
        assert!(resolve_key_path("/home/x/.ssh/a\nb", home, "x").is_err());
    }
}
