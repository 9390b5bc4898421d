//! Certificates and keys (PROTOCOL.md §7): the transport certificate the
//! agent sends to the WireServer, the Certificates document decrypted into
//! `{THUMBPRINT}.crt` / `{THUMBPRINT}.prv` files in Lib.Dir, and OpenSSH
//! public keys derived from those certificates.
//!
//! The `openssl` binary (`OS.OpensslPath`) does the cryptography, always
//! through the [`CommandRunner`], as waagent does. Everything that is only
//! parsing happens here in Rust: PEM splitting, SHA-1 thumbprints, and a
//! minimal DER walk to the public key. That saves one or two processes per
//! certificate and avoids scraping openssl's human-readable output.
//!
//! Secrets: private keys travel as files in Lib.Dir (0600, inside a 0700
//! working directory while in flight) or on a child's standard input, which
//! the runner never displays. No error text built here holds key bytes.
//!
//! One file per job: `transport.rs` (the transport certificate),
//! `certificates.rs` (the Certificates document, thumbprints), `ssh.rs`
//! (OpenSSH keys), `pem.rs` and `der.rs` (the readers); this file holds what
//! they share: the error, the `openssl` handle, the working directory.

mod certificates;
mod der;
mod pem;
mod ssh;
#[cfg(test)]
mod testing;
mod transport;

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::fsutil;
use crate::os::runner::{Cmd, CommandRunner, Output};
use crate::os::Env;

pub use certificates::{
    decrypt_certificates, normalize_thumbprint, thumbprint_of_der, thumbprint_of_pem, Certificate,
    CERTIFICATES_PEM_FILE,
};
/// For the simulator's certificates (`sim/certs.rs`).
#[cfg(feature = "simulator")]
pub(crate) use pem::wrap64;
pub use ssh::ssh_public_key;
pub use transport::{
    ensure_transport_cert, start_transport_cert, PendingTransport, Transport, TransportCert,
    TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE,
};

/// Prefix of the private working directories made inside Lib.Dir; one left
/// behind by a crash is removed at the next transport-certificate check.
const WORK_DIR_PREFIX: &str = ".waagent-crypto.";

/// Why a certificate operation failed: which document, which step, and the
/// cause. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoError {
    document: String,
    step: String,
    cause: String,
}

impl CryptoError {
    fn new(document: impl Into<String>, step: impl Into<String>, cause: impl fmt::Display) -> Self {
        CryptoError {
            document: document.into(),
            step: step.into(),
            cause: cause.to_string(),
        }
    }

    /// The document or file the operation was about (`Certificates`,
    /// `TransportCert`, `{THUMBPRINT}.crt`).
    pub fn document(&self) -> &str {
        &self.document
    }

    /// What was being done, in words (`cannot decrypt the CMS envelope …`).
    pub fn step(&self) -> &str {
        &self.step
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.document, self.step)?;
        if !self.cause.is_empty() {
            write!(f, ": {}", self.cause)?;
        }
        Ok(())
    }
}

impl std::error::Error for CryptoError {}

/// The `openssl` binary and the runner that starts it.
#[derive(Clone)]
pub struct Openssl {
    path: PathBuf,
    runner: Rc<dyn CommandRunner>,
}

impl Openssl {
    pub fn new(path: impl Into<PathBuf>, runner: Rc<dyn CommandRunner>) -> Self {
        Openssl {
            path: path.into(),
            runner,
        }
    }

    /// `OS.OpensslPath` from the configuration, with the environment's runner.
    pub fn from_env(env: &Env) -> Self {
        Self::new(env.config.openssl_path.clone(), Rc::clone(&env.runner))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(self.path.to_string_lossy())
    }

    /// Runs `cmd`; a failure becomes `{document}: {step}: {runner's text}`
    /// (the runner shows the command with paths only and openssl's last
    /// line of standard error, redacted).
    fn run(&self, cmd: &Cmd, document: &str, step: &str) -> Result<Output, CryptoError> {
        self.runner
            .run_ok(cmd)
            .map_err(|e| CryptoError::new(document, step, e))
    }
}

/// Sets `OPENSSL_FIPS=1` for this process and so for every child it starts
/// (openssl, extensions), which is what `OS.EnableFIPS=y` means in waagent.
/// Call once at daemon start, before any thread exists.
pub fn export_fips_env(enabled: bool) {
    if enabled {
        std::env::set_var("OPENSSL_FIPS", "1");
    }
}

// ---------------------------------------------------------------------------
// Fuzzing

/// Entry points for the fuzz targets in `tests/fuzz`; not an API. The agent
/// reaches the PEM and DER readers only through functions that read, write
/// and fsync files in Lib.Dir, which would slow a fuzzer a hundredfold:
/// these run the same code on text in memory.
#[doc(hidden)]
pub mod fuzzing {
    use super::certificates::pair_bundle;
    use super::{Certificate, CryptoError, Openssl};

    /// What [`decrypt_certificates`](super::decrypt_certificates) makes of
    /// the PEM bundle openssl decrypted, without writing it anywhere.
    /// `openssl` is asked only for the public half of non-RSA keys.
    pub fn read_bundle(openssl: &Openssl, bundle: &str) -> Result<Vec<Certificate>, CryptoError> {
        pair_bundle(openssl, bundle).map(|b| b.summary())
    }

    /// The line [`ssh_public_key`](super::ssh_public_key) derives from the
    /// text of the certificate file `doc`.
    pub fn ssh_line(doc: &str, cert_pem: &str) -> Result<String, CryptoError> {
        super::ssh::ssh_line(doc, cert_pem).map(|(line, _)| line)
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn write_file(path: &Path, data: &[u8], mode: u32, document: &str) -> Result<(), CryptoError> {
    fsutil::write_atomic(path, data, mode)
        .map_err(|e| CryptoError::new(document, format!("cannot write {}", path.display()), e))
}

/// A private (0700) directory inside Lib.Dir for intermediate files, so
/// they share the file system of their final names, are unreadable to
/// others even where openssl writes them 0644, and vanish when dropped.
struct WorkDir(tempfile::TempDir);

impl WorkDir {
    fn new(lib_dir: &Path, document: &str) -> Result<WorkDir, CryptoError> {
        let dir = tempfile::Builder::new()
            .prefix(WORK_DIR_PREFIX)
            .tempdir_in(lib_dir)
            .map_err(|e| {
                CryptoError::new(
                    document,
                    format!("cannot make a working directory in {}", lib_dir.display()),
                    e,
                )
            })?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(|e| CryptoError::new(document, "cannot restrict the working directory", e))?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Removes working directories a crash left in `lib_dir`. Only the daemon
/// (one per machine, `Pid.File`) works there, so none can be in use.
fn remove_stale_work_dirs(lib_dir: &Path) {
    let Ok(entries) = fs::read_dir(lib_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(WORK_DIR_PREFIX)
        {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}
