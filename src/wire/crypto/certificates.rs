//! The Certificates document (§6.5, §7.2): its `<Data>` decrypted with the
//! transport key, keys paired with their certificates, and the
//! `{THUMBPRINT}.crt` / `.prv` files written to Lib.Dir; thumbprints.

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::pem::{self, first_certificate, wrap64};
use super::{der, write_file, CryptoError, Openssl, TransportCert, WorkDir};

/// The decrypted bundle (keys and certificates), kept 0600 in Lib.Dir as
/// waagent keeps it: Azure Stack's documentation and aks-engine read the
/// stamp CA certificate from `/var/lib/waagent/Certificates.pem`.
pub const CERTIFICATES_PEM_FILE: &str = "Certificates.pem";
/// The MIME-wrapped CMS blob (§7.2); only lives in the working directory.
const P7M_FILE: &str = "Certificates.p7m";
/// The decrypted PKCS#12; only lives in the working directory.
const PFX_FILE: &str = "Certificates.pfx";

/// Name of the Certificates document in error messages (§6.5).
const DOC_CERTIFICATES: &str = "Certificates";

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

pub(super) struct Bundle {
    certs: Vec<Found>,
}

impl Bundle {
    pub(super) fn summary(self) -> Vec<Certificate> {
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
pub(super) fn pair_bundle(openssl: &Openssl, bundle: &str) -> Result<Bundle, CryptoError> {
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
pub(super) fn public_key_identity(spki: &[u8]) -> Vec<u8> {
    match der::rsa_public_key(spki) {
        Ok(Some(k)) => der::rsa_spki(&k),
        _ => spki.to_vec(),
    }
}

/// The identity of a private key's public half: computed in Rust for RSA
/// (PKCS#8 or PKCS#1), asked of `openssl pkey -pubout` otherwise (EC keys),
/// with the key on standard input so it never becomes an argument.
pub(super) fn private_key_identity(
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
// Thumbprints (§7.3)

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::runner::{Output, RecordingRunner};
    use crate::wire::crypto::pem::public_key_pem;
    use crate::wire::crypto::testing::*;
    use crate::wire::crypto::{TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE};

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
}
