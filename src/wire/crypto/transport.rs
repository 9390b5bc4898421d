//! The transport certificate (§7.1): the self-signed pair in Lib.Dir that
//! the WireServer encrypts the Certificates document to, reused or made anew.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::certificates::{private_key_identity, public_key_identity, thumbprint_of_der};
use super::pem::{first_certificate, first_private_key};
use super::{der, remove_stale_work_dirs, write_file, CryptoError, Openssl, WorkDir};

/// The transport certificate, sent to the WireServer (§2.2 file name).
pub const TRANSPORT_CERT_FILE: &str = "TransportCert.pem";
/// The transport certificate's private key (§2.2 file name).
pub const TRANSPORT_KEY_FILE: &str = "TransportPrivate.pem";

/// Subject and lifetime of the transport certificate (waagent 2.2.11+).
const TRANSPORT_SUBJECT: &str = "/CN=LinuxTransport";
const TRANSPORT_DAYS: &str = "730";
/// A transport certificate this close to expiry is replaced rather than reused.
const TRANSPORT_RENEW_MARGIN_SECS: i64 = 7 * 24 * 3600;

/// Name of the transport certificate "document" in error messages.
const DOC_TRANSPORT: &str = "TransportCert";

/// The transport certificate pair in Lib.Dir, with the certificate's DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    der: Vec<u8>,
}

impl TransportCert {
    /// Loads the pair already in `lib_dir`, checking that the key belongs to
    /// the certificate (not that the certificate is still valid).
    pub fn load(openssl: &Openssl, lib_dir: &Path) -> Result<TransportCert, CryptoError> {
        let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
        let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
        let fail = |step: &str, cause: &dyn fmt::Display| {
            CryptoError::new(DOC_TRANSPORT, step.to_string(), cause)
        };
        let cert_text = fs::read_to_string(&cert_path)
            .map_err(|e| fail(&format!("cannot read {}", cert_path.display()), &e))?;
        let der = first_certificate(&cert_text).map_err(|e| {
            fail(
                &format!("{} holds no usable certificate", cert_path.display()),
                &e,
            )
        })?;
        let info = der::certificate(&der)
            .map_err(|e| fail(&format!("cannot parse {}", cert_path.display()), &e))?;
        let key_text = fs::read_to_string(&key_path)
            .map_err(|e| fail(&format!("cannot read {}", key_path.display()), &e))?;
        let key = first_private_key(&key_text)
            .map_err(|e| fail(&format!("{} holds no usable key", key_path.display()), &e))?;
        let key_id = private_key_identity(openssl, &key, DOC_TRANSPORT)?;
        if key_id != public_key_identity(info.spki) {
            return Err(fail(
                &format!(
                    "{} does not belong to {}",
                    key_path.display(),
                    cert_path.display()
                ),
                &"",
            ));
        }
        Ok(TransportCert {
            cert_path,
            key_path,
            der,
        })
    }

    /// The `x-ms-guest-agent-public-x509-cert` header value: the base64 of
    /// the DER certificate on one line (§21 item 5).
    pub fn header_value(&self) -> String {
        STANDARD.encode(&self.der)
    }

    /// Upper-case hex SHA-1 of the certificate.
    pub fn thumbprint(&self) -> String {
        thumbprint_of_der(&self.der)
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
}

/// Returns the transport pair in `lib_dir`, reusing the one there when the
/// key matches the certificate and the certificate is not about to expire,
/// and generating a new one otherwise (waagent's `openssl req` command).
///
/// waagent regenerates at every protocol detection; reusing a sound pair
/// keeps restarts cheap and changes nothing for the fabric, which encrypts
/// to whatever certificate the request carries.
pub fn ensure_transport_cert(
    openssl: &Openssl,
    lib_dir: &Path,
) -> Result<TransportCert, CryptoError> {
    remove_stale_work_dirs(lib_dir);
    let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
    let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        match TransportCert::load(openssl, lib_dir) {
            Ok(t) => match der::certificate(&t.der) {
                Ok(info) if info.not_after > now_secs() + TRANSPORT_RENEW_MARGIN_SECS => {
                    return Ok(t)
                }
                _ => log::info!("the transport certificate expires soon; generating a new one"),
            },
            Err(e) => log::warn!("{e}; generating a new transport certificate"),
        }
    }
    generate_transport_cert(openssl, lib_dir)
}

fn generate_transport_cert(
    openssl: &Openssl,
    lib_dir: &Path,
) -> Result<TransportCert, CryptoError> {
    let work = WorkDir::new(lib_dir, DOC_TRANSPORT)?;
    let tmp_key = work.path().join(TRANSPORT_KEY_FILE);
    let tmp_cert = work.path().join(TRANSPORT_CERT_FILE);
    let cmd = openssl
        .cmd()
        .args(["req", "-x509", "-nodes", "-subj", TRANSPORT_SUBJECT])
        .args(["-days", TRANSPORT_DAYS, "-newkey", "rsa:2048", "-keyout"])
        .arg(tmp_key.to_string_lossy())
        .arg("-out")
        .arg(tmp_cert.to_string_lossy());
    openssl.run(
        &cmd,
        DOC_TRANSPORT,
        "cannot generate the transport certificate",
    )?;
    let read = |p: &Path| {
        fs::read(p).map_err(|e| {
            CryptoError::new(
                DOC_TRANSPORT,
                format!("openssl req did not write {}", p.display()),
                e,
            )
        })
    };
    let key = read(&tmp_key)?;
    let cert = read(&tmp_cert)?;
    // Key first: a crash between the two renames leaves a pair that does not
    // match, which the next check replaces.
    let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
    let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
    write_file(&key_path, &key, 0o600, DOC_TRANSPORT)?;
    write_file(&cert_path, &cert, 0o644, DOC_TRANSPORT)?;
    drop(work);
    log::info!(
        "generated a new transport certificate in {}",
        lib_dir.display()
    );
    TransportCert::load(openssl, lib_dir)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::runner::{Output, RecordingRunner, RunError};
    use crate::wire::crypto::testing::*;
    use std::rc::Rc;

    #[test]
    fn transport_header_is_one_line_of_der() {
        let (_dir, _runner, _openssl, transport) = setup();
        let header = transport.header_value();
        assert!(!header.contains(['\n', '\r', ' ', '-']));
        assert_eq!(STANDARD.decode(&header).unwrap(), der_of(TRANSPORT_CERT));
        assert_eq!(
            transport.thumbprint(),
            "0C93F56B4B5A1084B5D4E8800C9A7C741B481BDE"
        );
    }

    #[test]
    fn matching_pair_is_reused_without_openssl() {
        let (dir, runner, openssl, _transport) = setup();
        fs::create_dir(dir.path().join(".waagent-crypto.stale")).unwrap();
        let t = ensure_transport_cert(&openssl, dir.path()).unwrap();
        assert_eq!(t.der(), der_of(TRANSPORT_CERT));
        assert!(runner.calls().is_empty());
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn mismatched_pair_is_regenerated_with_waagents_command() {
        let (dir, runner, openssl, _transport) = setup();
        // Key of another certificate: the pair does not match.
        fs::write(dir.path().join(TRANSPORT_KEY_FILE), TENANT_KEY).unwrap();
        runner.respond(|cmd| {
            let key = arg_after(cmd, "-keyout")?;
            let cert = arg_after(cmd, "-out")?;
            fs::write(key, TENANT_KEY).ok()?;
            fs::write(cert, TENANT_CERT).ok()?;
            Some(Ok(Output::ok("")))
        });
        let t = ensure_transport_cert(&openssl, dir.path()).unwrap();
        assert_eq!(t.thumbprint(), TENANT);
        let line = &runner.lines()[0];
        let work = arg_after(&runner.calls()[0], "-out").unwrap();
        let work = work.parent().unwrap().display().to_string();
        assert_eq!(
            line,
            &format!(
                "/usr/bin/openssl req -x509 -nodes -subj /CN=LinuxTransport -days 730 \
                 -newkey rsa:2048 -keyout {work}/TransportPrivate.pem -out {work}/TransportCert.pem"
            )
        );
        assert_eq!(mode(&dir.path().join(TRANSPORT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(TRANSPORT_CERT_FILE)), 0o644);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn failed_generation_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.respond(|cmd| {
            Some(Err(RunError::Spawn {
                cmd: cmd.display(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }))
        });
        let openssl = Openssl::new("/nonexistent/openssl", runner);
        let e = ensure_transport_cert(&openssl, dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("TransportCert: cannot generate the transport certificate: cannot run `/nonexistent/openssl req "),
            "{e}"
        );
        assert!(names(dir.path()).is_empty());
    }
}
