//! Certificates and keys (protocol notes §7): the transport certificate the
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

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

use crate::fsutil;
use crate::os::runner::{Cmd, CommandRunner, Output};
use crate::os::Env;

/// The transport certificate, sent to the WireServer (§2.2 file name).
pub const TRANSPORT_CERT_FILE: &str = "TransportCert.pem";
/// The transport certificate's private key (§2.2 file name).
pub const TRANSPORT_KEY_FILE: &str = "TransportPrivate.pem";
/// The decrypted bundle (keys and certificates), kept 0600 in Lib.Dir as
/// waagent keeps it: Azure Stack's documentation and aks-engine read the
/// stamp CA certificate from `/var/lib/waagent/Certificates.pem`.
pub const CERTIFICATES_PEM_FILE: &str = "Certificates.pem";
/// The MIME-wrapped CMS blob (§7.2); only lives in the working directory.
const P7M_FILE: &str = "Certificates.p7m";
/// The decrypted PKCS#12; only lives in the working directory.
const PFX_FILE: &str = "Certificates.pfx";

/// Prefix of the private working directories made inside Lib.Dir; one left
/// behind by a crash is removed at the next transport-certificate check.
const WORK_DIR_PREFIX: &str = ".waagent-crypto.";

/// Subject and lifetime of the transport certificate (waagent 2.2.11+).
const TRANSPORT_SUBJECT: &str = "/CN=LinuxTransport";
const TRANSPORT_DAYS: &str = "730";
/// A transport certificate this close to expiry is replaced rather than reused.
const TRANSPORT_RENEW_MARGIN_SECS: i64 = 7 * 24 * 3600;

/// Name of the transport certificate "document" in error messages.
const DOC_TRANSPORT: &str = "TransportCert";
/// Name of the Certificates document in error messages (§6.5).
const DOC_CERTIFICATES: &str = "Certificates";

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
// Transport certificate (§7.1)

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

// ---------------------------------------------------------------------------
// The Certificates document (§6.5, §7.2)

/// One certificate delivered in the Certificates document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Upper-case hex SHA-1 of the DER certificate; the file name stem.
    pub thumbprint: String,
    /// Whether `{thumbprint}.prv` was written next to `{thumbprint}.crt`.
    pub has_private_key: bool,
}

/// Decrypts the `<Data>` of a Certificates document with the transport key
/// and writes `{THUMBPRINT}.crt` (0644), `{THUMBPRINT}.prv` (0600) and
/// `Certificates.pem` (0600) into `lib_dir`.
///
/// Nothing is written to `lib_dir` unless every step succeeds; the
/// intermediate files live in a private working directory that is removed
/// on return, success or not.
pub fn decrypt_certificates(
    openssl: &Openssl,
    lib_dir: &Path,
    transport: &TransportCert,
    data_base64: &str,
) -> Result<Vec<Certificate>, CryptoError> {
    let doc = DOC_CERTIFICATES;
    let blob = decode_data(data_base64)?;
    let work = WorkDir::new(lib_dir, doc)?;
    let p7m = work.path().join(P7M_FILE);
    let pfx = work.path().join(PFX_FILE);
    let pem = work.path().join(CERTIFICATES_PEM_FILE);
    write_file(&p7m, mime_wrap(&p7m, &blob).as_bytes(), 0o600, doc)?;

    let decrypt = openssl
        .cmd()
        .args(["cms", "-decrypt", "-in"])
        .arg(p7m.to_string_lossy())
        .arg("-inkey")
        .arg(transport.key_path().to_string_lossy())
        .arg("-recip")
        .arg(transport.cert_path().to_string_lossy())
        .arg("-out")
        .arg(pfx.to_string_lossy());
    openssl.run(
        &decrypt,
        doc,
        "cannot decrypt the CMS envelope with the transport key",
    )?;
    pkcs12_to_pem(openssl, &pfx, &pem)?;

    let bundle = fs::read_to_string(&pem)
        .map_err(|e| CryptoError::new(doc, "cannot read the decrypted PEM bundle", e))?;
    let found = pair_bundle(openssl, &bundle)?;

    for c in &found.certs {
        let crt = lib_dir.join(format!("{}.crt", c.thumbprint));
        write_file(&crt, c.pem.as_bytes(), 0o644, doc)?;
        if let Some(key) = &c.key_pem {
            let prv = lib_dir.join(format!("{}.prv", c.thumbprint));
            write_file(&prv, key.as_bytes(), 0o600, doc)?;
        }
    }
    write_file(
        &lib_dir.join(CERTIFICATES_PEM_FILE),
        bundle.as_bytes(),
        0o600,
        doc,
    )?;
    drop(work);
    Ok(found.summary())
}

/// The `<Data>` text as bytes; whitespace (the 64-column wrapping) ignored.
fn decode_data(data_base64: &str) -> Result<Vec<u8>, CryptoError> {
    let compact: String = data_base64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(CryptoError::new(
            DOC_CERTIFICATES,
            "the <Data> element is empty",
            "",
        ));
    }
    STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| CryptoError::new(DOC_CERTIFICATES, "the <Data> element is not base64", e))
}

/// The S/MIME file waagent writes as `Certificates.p7m` (§7.2 step 1). The
/// body is re-wrapped at 64 columns so openssl's S/MIME reader never sees
/// an over-long line, whatever the fabric's wrapping was.
fn mime_wrap(p7m_path: &Path, blob: &[u8]) -> String {
    let name = p7m_path.display();
    format!(
        "MIME-Version:1.0\n\
         Content-Disposition: attachment; filename=\"{name}\"\n\
         Content-Type: application/x-pkcs7-mime; name=\"{name}\"\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         {}",
        wrap64(&STANDARD.encode(blob))
    )
}

/// `text` cut into lines of 64 characters, each ending in a newline.
pub(crate) fn wrap64(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 1);
    let bytes = text.as_bytes();
    for chunk in bytes.chunks(64) {
        // base64 is ASCII, so every chunk boundary is a char boundary.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

/// `openssl pkcs12 -nodes -password pass:` (the PKCS#12 has an empty
/// password), retried with `-legacy` for 2017-era bundles sealed with
/// RC2-40 that OpenSSL 3 refuses by default. OpenSSL 1.1 reads those
/// without help and has no `-legacy`, so its retry just fails too and the
/// first error is the one reported.
fn pkcs12_to_pem(openssl: &Openssl, pfx: &Path, pem: &Path) -> Result<(), CryptoError> {
    let step = "cannot read the decrypted PKCS#12 bundle (empty password)";
    let cmd = openssl
        .cmd()
        .args(["pkcs12", "-nodes", "-password", "pass:", "-in"])
        .arg(pfx.to_string_lossy())
        .arg("-out")
        .arg(pem.to_string_lossy());
    let first = match openssl.run(&cmd, DOC_CERTIFICATES, step) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    // A failed attempt may leave a partial bundle behind; start clean.
    let _ = fs::remove_file(pem);
    match openssl.runner.run(&cmd.clone().arg("-legacy")) {
        Ok(out) if out.success() => {
            log::info!("the Certificates PKCS#12 needed openssl's legacy provider");
            Ok(())
        }
        _ => {
            let _ = fs::remove_file(pem);
            Err(first)
        }
    }
}

/// A certificate of the bundle, with its key when one matched.
struct Found {
    thumbprint: String,
    pem: String,
    key_pem: Option<String>,
}

struct Bundle {
    certs: Vec<Found>,
}

impl Bundle {
    fn summary(self) -> Vec<Certificate> {
        self.certs
            .into_iter()
            .map(|c| Certificate {
                thumbprint: c.thumbprint,
                has_private_key: c.key_pem.is_some(),
            })
            .collect()
    }
}

/// Splits the decrypted PEM bundle and pairs each private key with the
/// certificate holding the same public key (§21 item 7: not by order).
fn pair_bundle(openssl: &Openssl, bundle: &str) -> Result<Bundle, CryptoError> {
    let doc = DOC_CERTIFICATES;
    let blocks = pem::blocks(bundle)
        .map_err(|e| CryptoError::new(doc, "the decrypted PEM bundle is malformed", e))?;
    let mut certs: Vec<(Found, Vec<u8>)> = Vec::new();
    let mut keys = Vec::new();
    for b in blocks {
        if b.is_certificate() {
            let info = der::certificate(&b.der).map_err(|e| {
                CryptoError::new(doc, "a certificate in the bundle cannot be parsed", e)
            })?;
            let thumbprint = thumbprint_of_der(&b.der);
            if certs.iter().any(|(c, _)| c.thumbprint == thumbprint) {
                continue;
            }
            let identity = public_key_identity(info.spki);
            certs.push((
                Found {
                    thumbprint,
                    pem: b.text,
                    key_pem: None,
                },
                identity,
            ));
        } else if b.is_private_key() {
            keys.push(b);
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let identity = match private_key_identity(openssl, key, doc) {
            Ok(id) => id,
            Err(e) => {
                log::warn!("Certificates: private key #{} ignored: {e}", i + 1);
                continue;
            }
        };
        let mut matched = false;
        for (c, _) in certs.iter_mut().filter(|(_, id)| *id == identity) {
            c.key_pem = Some(key.text.clone());
            matched = true;
        }
        if !matched {
            log::warn!(
                "Certificates: private key #{} matches no certificate in the bundle; ignored",
                i + 1
            );
        }
    }
    Ok(Bundle {
        certs: certs.into_iter().map(|(c, _)| c).collect(),
    })
}

/// What identifies a public key for matching: the canonical RSA
/// SubjectPublicKeyInfo rebuilt from modulus and exponent (so encoding
/// variants of the same key compare equal), else the SPKI bytes as given.
fn public_key_identity(spki: &[u8]) -> Vec<u8> {
    match der::rsa_public_key(spki) {
        Ok(Some(k)) => der::rsa_spki(&k),
        _ => spki.to_vec(),
    }
}

/// The identity of a private key's public half: computed in Rust for RSA
/// (PKCS#8 or PKCS#1), asked of `openssl pkey -pubout` otherwise (EC keys),
/// with the key on standard input so it never becomes an argument.
fn private_key_identity(
    openssl: &Openssl,
    key: &pem::Block,
    document: &str,
) -> Result<Vec<u8>, CryptoError> {
    match der::rsa_public_from_private(&key.label, &key.der) {
        Ok(Some(k)) => return Ok(der::rsa_spki(&k)),
        Ok(None) => {}
        Err(e) => {
            return Err(CryptoError::new(
                document,
                format!("cannot parse a {} block", key.label),
                e,
            ))
        }
    }
    if key.label.contains("ENCRYPTED") {
        return Err(CryptoError::new(document, "a private key is encrypted", ""));
    }
    let cmd = openssl
        .cmd()
        .args(["pkey", "-pubout"])
        .stdin(key.text.clone().into_bytes());
    let out = openssl.run(
        &cmd,
        document,
        "cannot derive the public key of a private key",
    )?;
    let spki = pem::blocks(&out.stdout)
        .ok()
        .and_then(|b| b.into_iter().find(|b| b.label == "PUBLIC KEY"))
        .ok_or_else(|| {
            CryptoError::new(document, "openssl pkey -pubout printed no public key", "")
        })?;
    Ok(public_key_identity(&spki.der))
}

// ---------------------------------------------------------------------------
// Thumbprints and SSH keys (§7.3)

/// Upper-case hex SHA-1 of the first certificate in `cert_pem`.
pub fn thumbprint_of_pem(cert_pem: &str) -> Result<String, CryptoError> {
    let der = first_certificate(cert_pem)
        .map_err(|e| CryptoError::new("certificate", "no certificate in the PEM text", e))?;
    Ok(thumbprint_of_der(&der))
}

/// Upper-case hex SHA-1 of a DER certificate (waagent's file names and the
/// fabric's thumbprints).
pub fn thumbprint_of_der(der: &[u8]) -> String {
    Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// `thumbprint` upper-cased if it is 40 hex digits; refused otherwise,
/// before it can name a file.
pub fn normalize_thumbprint(thumbprint: &str) -> Result<String, CryptoError> {
    if thumbprint.len() == 40 && thumbprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(thumbprint.to_ascii_uppercase())
    } else {
        Err(CryptoError::new(
            "thumbprint",
            format!(
                "{:?} is not 40 hexadecimal digits",
                crate::redact::redact(thumbprint)
            ),
            "",
        ))
    }
}

/// The OpenSSH `ssh-rsa AAAA…` line for the certificate `{THUMBPRINT}.crt`
/// in `lib_dir`, built in Rust from the certificate's RSA key (what
/// `ssh-keygen -i -m PKCS8` prints for waagent). Also leaves the PEM public
/// key as `{THUMBPRINT}.pub`, waagent's artifact.
pub fn ssh_public_key(lib_dir: &Path, thumbprint: &str) -> Result<String, CryptoError> {
    let thumb = normalize_thumbprint(thumbprint)?;
    let doc = format!("{thumb}.crt");
    let path = lib_dir.join(&doc);
    let text = fs::read_to_string(&path)
        .map_err(|e| CryptoError::new(&doc, format!("cannot read {}", path.display()), e))?;
    let (line, spki) = ssh_line(&doc, &text)?;
    let pub_path = lib_dir.join(format!("{thumb}.pub"));
    if let Err(e) = fsutil::write_atomic(&pub_path, public_key_pem(&spki).as_bytes(), 0o644) {
        log::warn!("cannot write {}: {e}", pub_path.display());
    }
    Ok(line)
}

/// The `ssh-rsa AAAA…` line of the first certificate in `text` (the file
/// `doc`), and that certificate's SubjectPublicKeyInfo.
fn ssh_line(doc: &str, text: &str) -> Result<(String, Vec<u8>), CryptoError> {
    let cert = first_certificate(text)
        .map_err(|e| CryptoError::new(doc, "holds no usable certificate", e))?;
    let info = der::certificate(&cert)
        .map_err(|e| CryptoError::new(doc, "cannot parse the certificate", e))?;
    let key = match der::rsa_public_key(info.spki) {
        Ok(Some(k)) => k,
        Ok(None) => {
            let alg = der::spki_algorithm(info.spki)
                .map(der::oid_text)
                .unwrap_or_else(|_| "unknown".to_string());
            return Err(CryptoError::new(
                doc,
                format!("the certificate's key (algorithm {alg}) is not RSA"),
                "only ssh-rsa keys can be derived from certificates",
            ));
        }
        Err(e) => {
            return Err(CryptoError::new(
                doc,
                "cannot read the certificate's RSA key",
                e,
            ))
        }
    };
    let line = format!("ssh-rsa {}", STANDARD.encode(ssh_rsa_blob(&key)));
    Ok((line, info.spki.to_vec()))
}

/// The OpenSSH wire form of an RSA key: string "ssh-rsa", mpint e, mpint n.
fn ssh_rsa_blob(key: &der::RsaPublic<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.n.len() + key.e.len() + 32);
    ssh_string(&mut out, b"ssh-rsa");
    ssh_mpint(&mut out, key.e);
    ssh_mpint(&mut out, key.n);
    out
}

fn ssh_string(out: &mut Vec<u8>, data: &[u8]) {
    // RSA moduli are far below 4 GiB; saturate rather than wrap if ever not.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// RFC 4251 mpint of a non-negative magnitude: no leading zero bytes, one
/// zero byte added when the top bit is set, zero as the empty string.
fn ssh_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let m = der::strip_leading_zeros(magnitude);
    if m.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v = Vec::with_capacity(m.len() + 1);
        v.push(0);
        v.extend_from_slice(m);
        ssh_string(out, &v);
    } else {
        ssh_string(out, m);
    }
}

/// A SubjectPublicKeyInfo as `-----BEGIN PUBLIC KEY-----` PEM.
fn public_key_pem(spki: &[u8]) -> String {
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}-----END PUBLIC KEY-----\n",
        wrap64(&STANDARD.encode(spki))
    )
}

// ---------------------------------------------------------------------------
// Fuzzing

/// Entry points for the fuzz targets in `tests/fuzz`; not an API. The agent
/// reaches the PEM and DER readers only through functions that read, write
/// and fsync files in Lib.Dir, which would slow a fuzzer a hundredfold:
/// these run the same code on text in memory.
#[doc(hidden)]
pub mod fuzzing {
    use super::{pair_bundle, Certificate, CryptoError, Openssl};

    /// What [`decrypt_certificates`](super::decrypt_certificates) makes of
    /// the PEM bundle openssl decrypted, without writing it anywhere.
    /// `openssl` is asked only for the public half of non-RSA keys.
    pub fn read_bundle(openssl: &Openssl, bundle: &str) -> Result<Vec<Certificate>, CryptoError> {
        pair_bundle(openssl, bundle).map(|b| b.summary())
    }

    /// The line [`ssh_public_key`](super::ssh_public_key) derives from the
    /// text of the certificate file `doc`.
    pub fn ssh_line(doc: &str, cert_pem: &str) -> Result<String, CryptoError> {
        super::ssh_line(doc, cert_pem).map(|(line, _)| line)
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn first_certificate(text: &str) -> Result<Vec<u8>, String> {
    pem::blocks(text)?
        .into_iter()
        .find(pem::Block::is_certificate)
        .map(|b| b.der)
        .ok_or_else(|| "no CERTIFICATE block".to_string())
}

fn first_private_key(text: &str) -> Result<pem::Block, String> {
    pem::blocks(text)?
        .into_iter()
        .find(pem::Block::is_private_key)
        .ok_or_else(|| "no PRIVATE KEY block".to_string())
}

fn write_file(path: &Path, data: &[u8], mode: u32, document: &str) -> Result<(), CryptoError> {
    fsutil::write_atomic(path, data, mode)
        .map_err(|e| CryptoError::new(document, format!("cannot write {}", path.display()), e))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

/// PEM text: blocks between `-----BEGIN X-----` and `-----END X-----`;
/// anything outside (openssl's "Bag Attributes") is skipped.
mod pem {
    use super::STANDARD;
    use base64::Engine;

    pub struct Block {
        pub label: String,
        pub der: Vec<u8>,
        /// The block itself, BEGIN to END, newline-terminated.
        pub text: String,
    }

    /// Shows the label only: a block may hold a private key.
    impl std::fmt::Debug for Block {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PEM {} block ({} bytes)", self.label, self.der.len())
        }
    }

    impl Block {
        pub fn is_certificate(&self) -> bool {
            self.label.ends_with("CERTIFICATE")
        }

        pub fn is_private_key(&self) -> bool {
            self.label.ends_with("PRIVATE KEY")
        }
    }

    /// Every block of `text`. Errors name the block's label only, never
    /// its content.
    pub fn blocks(text: &str) -> Result<Vec<Block>, String> {
        let mut out = Vec::new();
        let mut current: Option<(String, String, String)> = None; // label, base64, text
        for raw in text.lines() {
            let line = raw.trim();
            match &mut current {
                None => {
                    if let Some(label) = armour(line, "-----BEGIN ") {
                        current = Some((label.to_string(), String::new(), format!("{line}\n")));
                    }
                }
                Some((label, body, block)) => {
                    if let Some(end) = armour(line, "-----END ") {
                        if end != label {
                            return Err(format!("{label} block ends with END {end}"));
                        }
                        block.push_str(line);
                        block.push('\n');
                        let der = STANDARD
                            .decode(body.as_bytes())
                            .map_err(|_| format!("invalid base64 in a {label} block"))?;
                        if der.is_empty() {
                            return Err(format!("empty {label} block"));
                        }
                        out.push(Block {
                            label: std::mem::take(label),
                            der,
                            text: std::mem::take(block),
                        });
                        current = None;
                    } else if line.starts_with("-----") {
                        return Err(format!("{label} block is not terminated"));
                    } else {
                        block.push_str(line);
                        block.push('\n');
                        // RFC 1421 headers ("Proc-Type: …") are not base64.
                        if !line.contains(':') {
                            body.push_str(line);
                        }
                    }
                }
            }
        }
        match current {
            Some((label, _, _)) => Err(format!("{label} block is not terminated")),
            None => Ok(out),
        }
    }

    /// `X` from `{start}X-----`.
    fn armour<'a>(line: &'a str, start: &str) -> Option<&'a str> {
        line.strip_prefix(start)?
            .strip_suffix("-----")
            .filter(|l| !l.is_empty())
    }
}

/// Just enough DER to reach a certificate's validity and public key and an
/// RSA key's modulus and exponent. Definite lengths and single-byte tags
/// only, which is all X.509 and PKCS#1/#8 use.
mod der {
    use std::fmt;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Error(pub &'static str);

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    /// `[0] EXPLICIT` (the certificate's version).
    pub const CONTEXT_0: u8 = 0xA0;

    /// 1.2.840.113549.1.1.1
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    /// One encoded value.
    #[derive(Debug, Clone, Copy)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
        /// Tag, length and content together.
        pub raw: &'a [u8],
    }

    /// Reads the values of a constructed value's content in order.
    pub struct Reader<'a> {
        rest: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(data: &'a [u8]) -> Self {
            Reader { rest: data }
        }

        pub fn peek_tag(&self) -> Option<u8> {
            self.rest.first().copied()
        }

        pub fn read(&mut self) -> Result<Tlv<'a>, Error> {
            let (tlv, rest) = parse(self.rest)?;
            self.rest = rest;
            Ok(tlv)
        }

        pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, Error> {
            let tlv = self.read().map_err(|_| Error(what))?;
            if tlv.tag == tag {
                Ok(tlv)
            } else {
                Err(Error(what))
            }
        }
    }

    /// The first value of `input` and what follows it.
    pub fn parse(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), Error> {
        let (&tag, after_tag) = input.split_first().ok_or(Error("truncated DER"))?;
        if tag & 0x1f == 0x1f {
            return Err(Error("multi-byte DER tags are not supported"));
        }
        let (&first, after_len) = after_tag.split_first().ok_or(Error("truncated DER"))?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else if first == 0x80 {
            return Err(Error("indefinite DER length"));
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return Err(Error("DER length too large"));
            }
            let bytes = after_len.get(..n).ok_or(Error("truncated DER"))?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + n)
        };
        let end = header
            .checked_add(len)
            .ok_or(Error("DER length too large"))?;
        if input.len() < end {
            return Err(Error("truncated DER"));
        }
        Ok((
            Tlv {
                tag,
                content: &input[header..end],
                raw: &input[..end],
            },
            &input[end..],
        ))
    }

    /// `data` as exactly one value with tag `tag`.
    pub fn single<'a>(data: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, Error> {
        let (tlv, rest) = parse(data).map_err(|_| Error(what))?;
        if tlv.tag != tag || !rest.is_empty() {
            return Err(Error(what));
        }
        Ok(tlv)
    }

    /// What the agent needs from an X.509 certificate.
    pub struct CertInfo<'a> {
        /// The whole SubjectPublicKeyInfo encoding.
        pub spki: &'a [u8],
        /// notAfter, seconds since the epoch.
        pub not_after: i64,
    }

    /// Certificate → TBSCertificate → validity, subjectPublicKeyInfo.
    pub fn certificate(der: &[u8]) -> Result<CertInfo<'_>, Error> {
        let cert = single(der, SEQUENCE, "not a DER Certificate")?;
        let mut r = Reader::new(cert.content);
        let tbs = r.expect(SEQUENCE, "no TBSCertificate")?;
        let mut t = Reader::new(tbs.content);
        if t.peek_tag() == Some(CONTEXT_0) {
            t.read()?;
        }
        t.expect(INTEGER, "no serialNumber")?;
        t.expect(SEQUENCE, "no signature algorithm")?;
        t.expect(SEQUENCE, "no issuer")?;
        let validity = t.expect(SEQUENCE, "no validity")?;
        t.expect(SEQUENCE, "no subject")?;
        let spki = t.expect(SEQUENCE, "no subjectPublicKeyInfo")?;
        let mut v = Reader::new(validity.content);
        v.read().map_err(|_| Error("no notBefore"))?;
        let not_after = time(&v.read().map_err(|_| Error("no notAfter"))?)?;
        Ok(CertInfo {
            spki: spki.raw,
            not_after,
        })
    }

    /// The algorithm OID (content bytes) of a SubjectPublicKeyInfo.
    pub fn spki_algorithm(spki: &[u8]) -> Result<&[u8], Error> {
        Ok(spki_parts(spki)?.0)
    }

    /// (algorithm OID, public key bits) of a SubjectPublicKeyInfo.
    fn spki_parts(spki: &[u8]) -> Result<(&[u8], &[u8]), Error> {
        let s = single(spki, SEQUENCE, "not a SubjectPublicKeyInfo")?;
        let mut r = Reader::new(s.content);
        let alg = r.expect(SEQUENCE, "no public key algorithm")?;
        let oid = Reader::new(alg.content).expect(OID, "no public key algorithm OID")?;
        let bits = r.expect(BIT_STRING, "no public key bits")?;
        match bits.content.split_first() {
            Some((0, key)) => Ok((oid.content, key)),
            _ => Err(Error("public key bits are not whole bytes")),
        }
    }

    /// An RSA public key: magnitudes without leading zero bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RsaPublic<'a> {
        pub n: &'a [u8],
        pub e: &'a [u8],
    }

    /// The RSA key of a SubjectPublicKeyInfo; `None` for other algorithms.
    pub fn rsa_public_key(spki: &[u8]) -> Result<Option<RsaPublic<'_>>, Error> {
        let (oid, key) = spki_parts(spki)?;
        if oid != RSA_ENCRYPTION {
            return Ok(None);
        }
        let seq = single(key, SEQUENCE, "not an RSAPublicKey")?;
        let mut r = Reader::new(seq.content);
        let n = unsigned(&r.expect(INTEGER, "no RSA modulus")?)?;
        let e = unsigned(&r.expect(INTEGER, "no RSA exponent")?)?;
        Ok(Some(RsaPublic { n, e }))
    }

    /// The public half of an RSA private key in a PEM block labelled
    /// `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1); `None` when the
    /// key is of another kind.
    pub fn rsa_public_from_private<'a>(
        label: &str,
        der: &'a [u8],
    ) -> Result<Option<RsaPublic<'a>>, Error> {
        match label {
            "RSA PRIVATE KEY" => pkcs1_public(der).map(Some),
            "PRIVATE KEY" => {
                let seq = single(der, SEQUENCE, "not a PKCS#8 PrivateKeyInfo")?;
                let mut r = Reader::new(seq.content);
                r.expect(INTEGER, "no PKCS#8 version")?;
                let alg = r.expect(SEQUENCE, "no PKCS#8 algorithm")?;
                let oid = Reader::new(alg.content).expect(OID, "no PKCS#8 algorithm OID")?;
                if oid.content != RSA_ENCRYPTION {
                    return Ok(None);
                }
                let key = r.expect(OCTET_STRING, "no PKCS#8 private key")?;
                pkcs1_public(key.content).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// RSAPrivateKey ::= SEQUENCE { version, n, e, d, … }
    fn pkcs1_public(der: &[u8]) -> Result<RsaPublic<'_>, Error> {
        let seq = single(der, SEQUENCE, "not an RSAPrivateKey")?;
        let mut r = Reader::new(seq.content);
        r.expect(INTEGER, "no RSAPrivateKey version")?;
        let n = unsigned(&r.expect(INTEGER, "no RSA modulus")?)?;
        let e = unsigned(&r.expect(INTEGER, "no RSA exponent")?)?;
        Ok(RsaPublic { n, e })
    }

    /// A non-negative INTEGER's magnitude.
    fn unsigned<'a>(int: &Tlv<'a>) -> Result<&'a [u8], Error> {
        match int.content.first() {
            None => Err(Error("empty INTEGER")),
            Some(b) if b & 0x80 != 0 => Err(Error("negative INTEGER")),
            Some(_) => Ok(strip_leading_zeros(int.content)),
        }
    }

    pub fn strip_leading_zeros(b: &[u8]) -> &[u8] {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        &b[start..]
    }

    /// The canonical SubjectPublicKeyInfo of an RSA key (what openssl
    /// writes): rsaEncryption with NULL parameters.
    pub fn rsa_spki(key: &RsaPublic<'_>) -> Vec<u8> {
        let mut rsa = uint(key.n);
        rsa.extend(uint(key.e));
        let rsa = tlv(SEQUENCE, &rsa);
        let mut bits = vec![0u8];
        bits.extend(rsa);
        let mut alg = tlv(OID, RSA_ENCRYPTION);
        alg.extend(tlv(NULL, &[]));
        let mut spki = tlv(SEQUENCE, &alg);
        spki.extend(tlv(BIT_STRING, &bits));
        tlv(SEQUENCE, &spki)
    }

    /// A DER INTEGER of a non-negative magnitude.
    pub fn uint(magnitude: &[u8]) -> Vec<u8> {
        let m = strip_leading_zeros(magnitude);
        let mut content = Vec::with_capacity(m.len() + 1);
        if m.first().map_or(true, |b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(m);
        tlv(INTEGER, &content)
    }

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` as
    /// seconds since the epoch.
    pub fn time(t: &Tlv<'_>) -> Result<i64, Error> {
        let bad = Error("malformed certificate time");
        let s = std::str::from_utf8(t.content).map_err(|_| bad.clone())?;
        let s = s.strip_suffix('Z').ok_or(bad.clone())?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, Error> {
            s.get(r)
                .and_then(|x| x.parse::<i64>().ok())
                .ok_or(Error("malformed certificate time"))
        };
        let (year, rest) = match (t.tag, s.len()) {
            (UTC_TIME, 12) => {
                let yy = num(0..2)?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
            }
            (GENERALIZED_TIME, 14) => (num(0..4)?, 4),
            _ => return Err(bad),
        };
        let month = num(rest..rest + 2)?;
        let day = num(rest + 2..rest + 4)?;
        let hour = num(rest + 4..rest + 6)?;
        let min = num(rest + 6..rest + 8)?;
        let sec = num(rest + 8..rest + 10)?;
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || min > 59
            || sec > 60
        {
            return Err(bad);
        }
        Ok(crate::utc::days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec)
    }

    /// Dotted text of an OID's content bytes, for error messages.
    pub fn oid_text(oid: &[u8]) -> String {
        let mut arcs: Vec<u64> = Vec::new();
        let mut acc: u64 = 0;
        for &b in oid {
            if acc > u64::MAX >> 7 {
                return "?".to_string();
            }
            acc = (acc << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    // The first subidentifier packs two arcs: 40 * X + Y.
                    let x = (acc / 40).min(2);
                    arcs.push(x);
                    arcs.push(acc - 40 * x);
                } else {
                    arcs.push(acc);
                }
                acc = 0;
            }
        }
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::runner::{RecordingRunner, RunError};
    use std::os::unix::fs::MetadataExt;

    const TRANSPORT_CERT: &str = include_str!("../../../test-data/certs/TransportCert.pem");
    const TRANSPORT_KEY: &str = include_str!("../../../test-data/certs/TransportPrivate.pem");
    const TENANT_CERT: &str = include_str!("../../../test-data/certs/tenant.crt");
    const TENANT_KEY: &str = include_str!("../../../test-data/certs/tenant.key");
    const TENANT_SSH: &str = include_str!("../../../test-data/certs/tenant.ssh.pub");
    const EXTRA_CERT: &str = include_str!("../../../test-data/certs/extra.crt");
    const EC_CERT: &str = include_str!("../../../test-data/certs/ec.crt");
    const EC_KEY: &str = include_str!("../../../test-data/certs/ec.key");
    const TENANT: &str = "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC69";
    const EXTRA: &str = "F88526F7384E4488FDCB8C090F8F3CB8C15A5435";
    const EC: &str = "444CD352546B2FBAAC63341802F2A590C83C8DDE";

    fn der_of(pem_text: &str) -> Vec<u8> {
        first_certificate(pem_text).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    /// The value after `flag` in a recorded command.
    fn arg_after(cmd: &Cmd, flag: &str) -> Option<PathBuf> {
        let argv = cmd.argv();
        let i = argv.iter().position(|a| a == flag)?;
        argv.get(i + 1).map(PathBuf::from)
    }

    /// A lib dir with the fixture transport pair and a handle whose openssl
    /// is a [`RecordingRunner`].
    fn setup() -> (
        tempfile::TempDir,
        Rc<RecordingRunner>,
        Openssl,
        TransportCert,
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TRANSPORT_CERT_FILE), TRANSPORT_CERT).unwrap();
        fs::write(dir.path().join(TRANSPORT_KEY_FILE), TRANSPORT_KEY).unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
        let transport = TransportCert::load(&openssl, dir.path()).unwrap();
        (dir, runner, openssl, transport)
    }

    // -- DER ---------------------------------------------------------------

    #[test]
    fn der_lengths_short_long_and_bad() {
        let (t, rest) = der::parse(&[0x04, 0x02, 0xaa, 0xbb, 0xff]).unwrap();
        assert_eq!(
            (t.tag, t.content, rest),
            (0x04, &[0xaa, 0xbb][..], &[0xff][..])
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(der::parse(&long).unwrap().0.content.len(), 0x80);
        assert_eq!(
            der::parse(&[0x30, 0x80, 0, 0]).unwrap_err().0,
            "indefinite DER length"
        );
        assert_eq!(der::parse(&[0x04, 0x05, 1]).unwrap_err().0, "truncated DER");
        assert_eq!(der::parse(&[0x04, 0x82, 1]).unwrap_err().0, "truncated DER");
        assert_eq!(der::parse(&[0x04]).unwrap_err().0, "truncated DER");
        assert_eq!(
            der::parse(&[0x04, 0x85, 1, 1, 1, 1, 1]).unwrap_err().0,
            "DER length too large"
        );
        assert!(der::parse(&[0x1f, 0x01, 0x00]).is_err());
    }

    #[test]
    fn der_encoding_round_trips() {
        assert_eq!(der::tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let big = der::tlv(0x04, &[0u8; 300]);
        assert_eq!(&big[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der::uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(der::uint(&[0x00, 0x00, 0x7f]), vec![0x02, 1, 0x7f]);
        assert_eq!(der::uint(&[]), vec![0x02, 1, 0x00]);
    }

    #[test]
    fn certificate_walk_reaches_validity_and_rsa_key() {
        let der = der_of(TENANT_CERT);
        let info = der::certificate(&der).unwrap();
        // -days 36500 from 2025: far beyond 2100.
        assert!(info.not_after > 4_102_444_800, "{}", info.not_after);
        let key = der::rsa_public_key(info.spki).unwrap().unwrap();
        assert_eq!(key.e, &[0x01, 0x00, 0x01]);
        assert_eq!(key.n.len(), 256);
        // openssl's SPKI is already canonical, so rebuilding it is the identity.
        assert_eq!(der::rsa_spki(&key), info.spki);
        // The private key gives the same public key.
        let k = pem::blocks(TENANT_KEY).unwrap().remove(0);
        assert_eq!(
            der::rsa_public_from_private(&k.label, &k.der).unwrap(),
            Some(key)
        );
    }

    #[test]
    fn pkcs1_keys_and_other_key_types() {
        // PKCS#1: the RSAPrivateKey inside the PKCS#8 wrapper.
        let k = pem::blocks(TENANT_KEY).unwrap().remove(0);
        let p8 = der::single(&k.der, der::SEQUENCE, "x").unwrap();
        let mut r = der::Reader::new(p8.content);
        r.read().unwrap();
        r.read().unwrap();
        let inner = r.expect(der::OCTET_STRING, "x").unwrap().content;
        let from_pkcs1 = der::rsa_public_from_private("RSA PRIVATE KEY", inner).unwrap();
        let from_pkcs8 = der::rsa_public_from_private("PRIVATE KEY", &k.der).unwrap();
        assert_eq!(from_pkcs1, from_pkcs8);
        assert!(from_pkcs1.is_some());

        let ec = pem::blocks(EC_KEY).unwrap().remove(0);
        assert_eq!(
            der::rsa_public_from_private(&ec.label, &ec.der).unwrap(),
            None
        );
        let der = der_of(EC_CERT);
        let info = der::certificate(&der).unwrap();
        assert_eq!(der::rsa_public_key(info.spki).unwrap(), None);
        assert_eq!(
            der::oid_text(der::spki_algorithm(info.spki).unwrap()),
            "1.2.840.10045.2.1"
        );
        assert_eq!(der::oid_text(der::RSA_ENCRYPTION), "1.2.840.113549.1.1.1");
    }

    #[test]
    fn certificate_walk_refuses_garbage_and_truncation() {
        let der = der_of(TENANT_CERT);
        for cut in [0, 1, 4, 100, der.len() - 1] {
            assert!(der::certificate(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(der::certificate(b"not der at all").is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(der::certificate(&trailing).is_err());
    }

    #[test]
    fn certificate_times() {
        let t = |tag: u8, s: &str| {
            der::time(&der::Tlv {
                tag,
                content: s.as_bytes(),
                raw: &[],
            })
        };
        assert_eq!(t(der::UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(t(der::UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(der::UTC_TIME, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(t(der::GENERALIZED_TIME, "20000301000000Z"), Ok(951_868_800));
        assert_eq!(
            t(der::GENERALIZED_TIME, "21251103091500Z"),
            Ok(4_917_834_900)
        );
        assert!(t(der::UTC_TIME, "20000301000000Z").is_err());
        assert!(t(der::UTC_TIME, "701301000000Z").is_err());
        assert!(t(der::UTC_TIME, "7001010000+0Z").is_err());
        assert!(t(der::UTC_TIME, "700101000000").is_err());
    }

    // -- SSH ---------------------------------------------------------------

    #[test]
    fn mpint_leading_zero_rule() {
        let enc = |m: &[u8]| {
            let mut v = Vec::new();
            ssh_mpint(&mut v, m);
            v
        };
        assert_eq!(enc(&[]), vec![0, 0, 0, 0]);
        assert_eq!(enc(&[0, 0]), vec![0, 0, 0, 0]);
        assert_eq!(enc(&[0x7f]), vec![0, 0, 0, 1, 0x7f]);
        assert_eq!(enc(&[0x80]), vec![0, 0, 0, 2, 0, 0x80]);
        assert_eq!(enc(&[0x00, 0x01, 0x00, 0x01]), vec![0, 0, 0, 3, 1, 0, 1]);
    }

    #[test]
    fn ssh_key_matches_ssh_keygen_and_writes_pub() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{TENANT}.crt")), TENANT_CERT).unwrap();
        // Lower case is accepted and names the upper-case file.
        let line = ssh_public_key(dir.path(), &TENANT.to_lowercase()).unwrap();
        let expected: Vec<&str> = TENANT_SSH.split_whitespace().take(2).collect();
        assert_eq!(line, expected.join(" "));
        let pub_path = dir.path().join(format!("{TENANT}.pub"));
        let pub_pem = fs::read_to_string(&pub_path).unwrap();
        let block = pem::blocks(&pub_pem).unwrap().remove(0);
        assert_eq!(block.label, "PUBLIC KEY");
        let der = der_of(TENANT_CERT);
        assert_eq!(block.der, der::certificate(&der).unwrap().spki);
        assert_eq!(mode(&pub_path), 0o644);
    }

    #[test]
    fn ssh_key_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = ssh_public_key(dir.path(), "../../etc/passwd").unwrap_err();
        assert_eq!(
            e.to_string(),
            "thumbprint: \"../../etc/passwd\" is not 40 hexadecimal digits"
        );
        assert!(ssh_public_key(dir.path(), &format!("{TENANT}0")).is_err());
        assert!(ssh_public_key(dir.path(), &TENANT.replace('F', "G")).is_err());

        let e = ssh_public_key(dir.path(), TENANT).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{TENANT}.crt: cannot read ")),
            "{e}"
        );

        fs::write(dir.path().join(format!("{EC}.crt")), EC_CERT).unwrap();
        let e = ssh_public_key(dir.path(), EC).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{EC}.crt: the certificate's key (algorithm 1.2.840.10045.2.1) is not RSA: \
                 only ssh-rsa keys can be derived from certificates"
            )
        );

        fs::write(dir.path().join(format!("{EXTRA}.crt")), "garbage").unwrap();
        let e = ssh_public_key(dir.path(), EXTRA).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{EXTRA}.crt: holds no usable certificate: no CERTIFICATE block")
        );
        assert_eq!(
            names(dir.path()),
            vec![format!("{EC}.crt"), format!("{EXTRA}.crt")]
        );
    }

    // -- PEM and thumbprints -----------------------------------------------

    #[test]
    fn thumbprints_are_upper_case_sha1_of_der() {
        assert_eq!(thumbprint_of_pem(TENANT_CERT).unwrap(), TENANT);
        assert_eq!(thumbprint_of_pem(EXTRA_CERT).unwrap(), EXTRA);
        let e = thumbprint_of_pem("nothing here").unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate: no certificate in the PEM text: no CERTIFICATE block"
        );
        assert_eq!(
            normalize_thumbprint(&TENANT.to_lowercase()).unwrap(),
            TENANT
        );
    }

    #[test]
    fn pem_blocks_skip_bag_attributes_and_keep_block_text() {
        let bundle = format!(
            "Bag Attributes\n    localKeyID: 01 00 00 00 \nKey Attributes: <No Attributes>\n\
             {TENANT_KEY}Bag Attributes\r\n    friendlyName: x\r\n{}",
            TENANT_CERT.replace('\n', "\r\n")
        );
        let blocks = pem::blocks(&bundle).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].is_private_key() && !blocks[0].is_certificate());
        assert_eq!(blocks[0].text, TENANT_KEY);
        assert!(blocks[1].is_certificate());
        assert_eq!(blocks[1].text, TENANT_CERT);
    }

    #[test]
    fn pem_errors_never_show_content() {
        let secret = "c2VjcmV0IGtleSBtYXRlcmlhbA=="; // "secret key material"
        let bad = format!("-----BEGIN PRIVATE KEY-----\n{secret}!!\n-----END PRIVATE KEY-----\n");
        let e = pem::blocks(&bad).unwrap_err();
        assert_eq!(e, "invalid base64 in a PRIVATE KEY block");
        let e = pem::blocks("-----BEGIN PRIVATE KEY-----\nabcd\n").unwrap_err();
        assert_eq!(e, "PRIVATE KEY block is not terminated");
        let e = pem::blocks("-----BEGIN PRIVATE KEY-----\nabcd\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert_eq!(e, "PRIVATE KEY block ends with END CERTIFICATE");
    }

    #[test]
    fn mime_wrapping_is_waagents_p7m() {
        let blob: Vec<u8> = (0u8..=99).collect();
        let text = mime_wrap(Path::new("/var/lib/waagent/Certificates.p7m"), &blob);
        let b64 = STANDARD.encode(&blob);
        assert_eq!(
            text,
            format!(
                "MIME-Version:1.0\n\
                 Content-Disposition: attachment; filename=\"/var/lib/waagent/Certificates.p7m\"\n\
                 Content-Type: application/x-pkcs7-mime; name=\"/var/lib/waagent/Certificates.p7m\"\n\
                 Content-Transfer-Encoding: base64\n\n{}\n{}\n{}\n",
                &b64[..64],
                &b64[64..128],
                &b64[128..]
            )
        );
        assert_eq!(wrap64(""), "");
    }

    #[test]
    fn data_must_be_non_empty_base64() {
        let e = decode_data(" \n ").unwrap_err();
        assert_eq!(e.to_string(), "Certificates: the <Data> element is empty");
        let e = decode_data("not*base64").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Certificates: the <Data> element is not base64: "),
            "{e}"
        );
        assert_eq!(decode_data("AAEC\nAw==\n").unwrap(), vec![0, 1, 2, 3]);
    }

    // -- The decryption pipeline, with a scripted openssl ------------------

    /// Scripts openssl: `cms` succeeds, `pkcs12` fails unless `-legacy`
    /// is given (the RC2-40 case), and writes `bundle` then.
    fn script_legacy_bundle(runner: &RecordingRunner, bundle: String) {
        runner.respond(move |cmd| {
            let argv = cmd.argv();
            match argv.get(1).map(String::as_str) {
                Some("pkcs12") if !argv.iter().any(|a| a == "-legacy") => Some(Ok(Output::failed(
                    1,
                    "Error outputting keys and certificates\nunsupported:Algorithm (RC2-40-CBC : 0)",
                ))),
                Some("pkcs12") => {
                    let out = arg_after(cmd, "-out")?;
                    fs::write(out, &bundle).ok()?;
                    Some(Ok(Output::ok("")))
                }
                _ => None,
            }
        });
    }

    #[test]
    fn decrypts_pairs_by_public_key_and_retries_legacy() {
        let (dir, runner, openssl, transport) = setup();
        // Key last and the extra certificate first: pairing is by key, not order.
        let bundle = format!("Bag Attributes\n    x: y\n{EXTRA_CERT}{TENANT_CERT}{TENANT_KEY}");
        script_legacy_bundle(&runner, bundle.clone());
        let certs = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap();
        assert_eq!(
            certs,
            vec![
                Certificate {
                    thumbprint: EXTRA.into(),
                    has_private_key: false
                },
                Certificate {
                    thumbprint: TENANT.into(),
                    has_private_key: true
                },
            ]
        );
        let lines = runner.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let work = arg_after(&runner.calls()[0], "-in").unwrap();
        let work = work.parent().unwrap().display().to_string();
        let lib = dir.path().display().to_string();
        assert_eq!(
            lines[0],
            format!(
                "/usr/bin/openssl cms -decrypt -in {work}/Certificates.p7m -inkey \
                 {lib}/TransportPrivate.pem -recip {lib}/TransportCert.pem -out {work}/Certificates.pfx"
            )
        );
        assert_eq!(
            lines[1],
            format!(
                "/usr/bin/openssl pkcs12 -nodes -password pass: -in {work}/Certificates.pfx \
                 -out {work}/Certificates.pem"
            )
        );
        assert_eq!(lines[2], format!("{} -legacy", lines[1]));
        assert_eq!(
            names(dir.path()),
            vec![
                "Certificates.pem".to_string(),
                format!("{TENANT}.crt"),
                format!("{TENANT}.prv"),
                format!("{EXTRA}.crt"),
                TRANSPORT_CERT_FILE.into(),
                TRANSPORT_KEY_FILE.into(),
            ]
        );
        let p = |n: &str| dir.path().join(n);
        assert_eq!(
            fs::read_to_string(p(&format!("{TENANT}.prv"))).unwrap(),
            TENANT_KEY
        );
        assert_eq!(
            fs::read_to_string(p(&format!("{TENANT}.crt"))).unwrap(),
            TENANT_CERT
        );
        assert_eq!(fs::read_to_string(p("Certificates.pem")).unwrap(), bundle);
        assert_eq!(mode(&p(&format!("{TENANT}.prv"))), 0o600);
        assert_eq!(mode(&p("Certificates.pem")), 0o600);
        assert_eq!(mode(&p(&format!("{TENANT}.crt"))), 0o644);
        assert_eq!(mode(&p(&format!("{EXTRA}.crt"))), 0o644);
    }

    #[test]
    fn cms_failure_names_the_step_and_writes_nothing() {
        let (dir, runner, openssl, transport) = setup();
        runner.push(
            "/usr/bin/openssl",
            Output::failed(
                4,
                "Error decrypting CMS structure\n...:no matching recipient",
            ),
        );
        let e = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("Certificates: cannot decrypt the CMS envelope with the transport key: `/usr/bin/openssl cms -decrypt "),
            "{msg}"
        );
        assert!(
            msg.ends_with("failed with exit code 4: ...:no matching recipient"),
            "{msg}"
        );
        assert_eq!(e.document(), "Certificates");
        assert_eq!(runner.calls().len(), 1);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn pkcs12_failure_reports_the_first_attempt() {
        let (dir, runner, openssl, transport) = setup();
        runner.respond(|cmd| {
            let argv = cmd.argv();
            if argv.get(1).map(String::as_str) != Some("pkcs12") {
                return None;
            }
            // Like openssl: a partial output file, then failure.
            let out = arg_after(cmd, "-out")?;
            fs::write(out, "partial").ok()?;
            let err = if argv.iter().any(|a| a == "-legacy") {
                "pkcs12: Unknown option: -legacy"
            } else {
                "Mac verify error: invalid password?"
            };
            Some(Ok(Output::failed(1, err)))
        });
        let e = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "Certificates: cannot read the decrypted PKCS#12 bundle (empty password): "
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with("Mac verify error: invalid password?"),
            "{msg}"
        );
        assert_eq!(runner.calls().len(), 3);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn key_without_certificate_is_ignored() {
        let (dir, runner, openssl, transport) = setup();
        script_legacy_bundle(&runner, format!("{TRANSPORT_KEY}{EXTRA_CERT}"));
        let certs = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap();
        assert_eq!(
            certs,
            vec![Certificate {
                thumbprint: EXTRA.into(),
                has_private_key: false
            }]
        );
        assert!(!names(dir.path()).iter().any(|n| n.ends_with(".prv")));
    }

    #[test]
    fn non_rsa_keys_go_to_openssl_pkey_on_stdin() {
        let (dir, runner, openssl, transport) = setup();
        script_legacy_bundle(&runner, format!("{EC_KEY}{EC_CERT}"));
        let ec_spki = der::certificate(&der_of(EC_CERT)).unwrap().spki.to_vec();
        let spki_pem = public_key_pem(&ec_spki);
        runner.respond(move |cmd| {
            (cmd.argv().get(1).map(String::as_str) == Some("pkey"))
                .then(|| Ok(Output::ok(&spki_pem)))
        });
        let certs = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap();
        assert_eq!(
            certs,
            vec![Certificate {
                thumbprint: EC.into(),
                has_private_key: true
            }]
        );
        let pkey = runner
            .calls()
            .into_iter()
            .find(|c| c.argv()[1] == "pkey")
            .unwrap();
        assert_eq!(pkey.display(), "/usr/bin/openssl pkey -pubout");
        assert_eq!(pkey.stdin.as_deref(), Some(EC_KEY.as_bytes()));
        assert_eq!(
            fs::read_to_string(dir.path().join(format!("{EC}.prv"))).unwrap(),
            EC_KEY
        );
    }

    #[test]
    fn malformed_bundle_writes_nothing() {
        let (dir, runner, openssl, transport) = setup();
        script_legacy_bundle(
            &runner,
            format!("{TENANT_CERT}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        );
        let e = decrypt_certificates(&openssl, dir.path(), &transport, "AAEC").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Certificates: a certificate in the bundle cannot be parsed: not a DER Certificate"
        );
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    // -- Transport certificate ---------------------------------------------

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
