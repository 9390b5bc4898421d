//! Simulator side of the Certificates document (§6.5): what the WireServer
//! does at request time — seal a PKCS#12 (empty password) holding the
//! tenant's certificates and keys in a CMS envelope addressed to the
//! transport certificate the agent sent in `x-ms-guest-agent-public-x509-cert`.
//!
//! Test support: openssl is the one on `PATH`, run through
//! [`SystemRunner`] (argv only, never a shell), in a private temporary
//! directory that is removed afterwards.

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::os::runner::{Cmd, CommandRunner, SystemRunner};
use crate::wire::crypto::{thumbprint_of_pem, wrap64};

/// The openssl the simulator runs (the one on `PATH`).
const OPENSSL: &str = "openssl";

/// A certificate the fabric delivers, with its private key when it has one.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCert {
    pub cert_pem: String,
    pub key_pem: Option<String>,
}

/// Shows the thumbprint, never the key.
impl std::fmt::Debug for TenantCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCert")
            .field("thumbprint", &self.thumbprint())
            .field("has_key", &self.key_pem.is_some())
            .finish()
    }
}

impl TenantCert {
    /// Upper-case hex SHA-1 of the certificate (what the agent names its
    /// files after), or an empty string when `cert_pem` holds none.
    pub fn thumbprint(&self) -> String {
        thumbprint_of_pem(&self.cert_pem).unwrap_or_default()
    }

    /// The same certificate without its key (a "cert only" entry).
    pub fn without_key(&self) -> TenantCert {
        TenantCert {
            cert_pem: self.cert_pem.clone(),
            key_pem: None,
        }
    }
}

/// The bulk cipher of the CMS envelope, in the protocol's words: the
/// current agent asks for `AES128_CBC`, then retries with `DES_EDE3_CBC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CmsCipher {
    #[default]
    Aes128Cbc,
    DesEde3Cbc,
}

impl CmsCipher {
    /// The protocol's name (the agent's request parameter).
    pub fn name(self) -> &'static str {
        match self {
            CmsCipher::Aes128Cbc => "AES128_CBC",
            CmsCipher::DesEde3Cbc => "DES_EDE3_CBC",
        }
    }

    fn openssl_flag(self) -> &'static str {
        match self {
            CmsCipher::Aes128Cbc => "-aes128",
            CmsCipher::DesEde3Cbc => "-des3",
        }
    }
}

/// A fresh self-signed RSA 2048 certificate and key with subject `CN={cn}`,
/// valid for 100 years.
pub fn generate_tenant_cert(cn: &str) -> Result<TenantCert, String> {
    if cn.is_empty() || cn.contains(['/', '\\', '=', '+', ',']) || cn.chars().any(char::is_control)
    {
        return Err(format!("unsuitable common name {cn:?}"));
    }
    let dir = tempdir()?;
    let key = dir.path().join("tenant.key");
    let cert = dir.path().join("tenant.crt");
    openssl(
        Cmd::new(OPENSSL)
            .args(["req", "-x509", "-nodes", "-subj"])
            .arg(format!("/CN={cn}"))
            .args(["-days", "36500", "-newkey", "rsa:2048", "-keyout"])
            .arg(path_arg(&key))
            .arg("-out")
            .arg(path_arg(&cert)),
    )?;
    Ok(TenantCert {
        cert_pem: read_text(&cert)?,
        key_pem: Some(read_text(&key)?),
    })
}

/// A Certificates document (shaped like `wire/certs.xml`) whose `<Data>`
/// holds `certs` sealed to the transport certificate in `transport_header_b64`,
/// with AES-128-CBC.
pub fn certificates_xml(
    transport_header_b64: &str,
    certs: &[TenantCert],
    incarnation: &str,
) -> Result<String, String> {
    certificates_xml_with(
        transport_header_b64,
        certs,
        incarnation,
        CmsCipher::default(),
    )
}

/// [`certificates_xml`] with a chosen CMS cipher.
pub fn certificates_xml_with(
    transport_header_b64: &str,
    certs: &[TenantCert],
    incarnation: &str,
    cipher: CmsCipher,
) -> Result<String, String> {
    let data = encrypt_certificates(transport_header_b64, certs, cipher)?;
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <CertificateFile xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:noNamespaceSchemaLocation=\"certificates10.xsd\">\n  \
         <Version>2012-11-30</Version>\n  \
         <Incarnation>{}</Incarnation>\n  \
         <Format>Pkcs7BlobWithPfxContents</Format>\n  \
         <Data>{data}</Data>\n\
         </CertificateFile>\n",
        xml_escape(incarnation)
    ))
}

/// The `<Data>` text: base64 of the DER CMS envelope, wrapped at 64 columns
/// with a final newline, as in the samples.
///
/// `openssl pkcs12 -export` holds at most one private key, so at most one
/// of `certs` may carry a key; the others go in as certificates only.
pub fn encrypt_certificates(
    transport_header_b64: &str,
    certs: &[TenantCert],
    cipher: CmsCipher,
) -> Result<String, String> {
    if certs.is_empty() {
        return Err("no certificates to deliver".into());
    }
    let keyed: Vec<&TenantCert> = certs.iter().filter(|c| c.key_pem.is_some()).collect();
    if keyed.len() > 1 {
        return Err(format!(
            "{} certificates carry keys; openssl pkcs12 -export holds one",
            keyed.len()
        ));
    }
    let transport_der = STANDARD
        .decode(transport_header_b64.trim())
        .map_err(|e| format!("the transport certificate header is not base64: {e}"))?;
    let dir = tempdir()?;
    let p = |name: &str| dir.path().join(name);

    let transport_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
        wrap64(&STANDARD.encode(&transport_der))
    );
    write_private(&p("transport.crt"), &transport_pem)?;
    // The keyed certificate first, so pkcs12 -export makes it the main one.
    let mut ordered: Vec<&TenantCert> = keyed.clone();
    ordered.extend(certs.iter().filter(|c| c.key_pem.is_none()));
    let all_certs: String = ordered
        .iter()
        .map(|c| ensure_newline(&c.cert_pem))
        .collect();
    write_private(&p("certs.pem"), &all_certs)?;

    let mut export = Cmd::new(OPENSSL)
        .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
        .arg(path_arg(&p("certs.pem")))
        .arg("-out")
        .arg(path_arg(&p("bundle.pfx")));
    match keyed.first().and_then(|c| c.key_pem.as_ref()) {
        Some(key) => {
            write_private(&p("key.pem"), key)?;
            export = export.arg("-inkey").arg(path_arg(&p("key.pem")));
        }
        None => export = export.arg("-nokeys"),
    }
    openssl(export)?;

    // -keyid: address the recipient by subjectKeyIdentifier, as the fabric
    // does (the samples' RecipientInfo is version 2 with [0] SKI).
    openssl(
        Cmd::new(OPENSSL)
            .args(["cms", "-encrypt", "-binary", "-outform", "DER", "-keyid"])
            .arg(cipher.openssl_flag())
            .arg("-in")
            .arg(path_arg(&p("bundle.pfx")))
            .arg("-out")
            .arg(path_arg(&p("blob.der")))
            .arg(path_arg(&p("transport.crt"))),
    )?;
    let blob = fs::read(p("blob.der")).map_err(|e| format!("cannot read the CMS blob: {e}"))?;
    Ok(wrap64(&STANDARD.encode(blob)))
}

/// An extension's `protectedSettings` (§7.4): `json` sealed to the tenant
/// certificate `cert_pem` as DER CMS, base64 on one line. The recipient is
/// named by issuer and serial (no `-keyid`), so the extension's usual
/// `openssl smime -decrypt -inform DER -recip {thumbprint}.crt -inkey
/// {thumbprint}.prv` opens it with the files the agent wrote.
pub fn seal_protected_settings(json: &str, cert_pem: &str) -> Result<String, String> {
    let dir = tempdir()?;
    let p = |name: &str| dir.path().join(name);
    write_private(&p("tenant.crt"), cert_pem)?;
    write_private(&p("settings.json"), json)?;
    openssl(
        Cmd::new(OPENSSL)
            .args([
                "cms", "-encrypt", "-binary", "-outform", "DER", "-aes256", "-in",
            ])
            .arg(path_arg(&p("settings.json")))
            .arg("-out")
            .arg(path_arg(&p("sealed.der")))
            .arg(path_arg(&p("tenant.crt"))),
    )?;
    let blob = fs::read(p("sealed.der")).map_err(|e| format!("cannot read the CMS blob: {e}"))?;
    Ok(STANDARD.encode(blob))
}

fn openssl(cmd: Cmd) -> Result<(), String> {
    SystemRunner
        .run_ok(&cmd)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn tempdir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("fabric-sim-certs.")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_text(p: &Path) -> Result<String, String> {
    fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn write_private(p: &Path, text: &str) -> Result<(), String> {
    crate::fsutil::write_atomic(p, text.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {}: {e}", p.display()))
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_shape_matches_the_samples() {
        let tenant = generate_tenant_cert("sim unit").unwrap();
        let transport = generate_tenant_cert("LinuxTransport").unwrap();
        // The header is the PEM body on one line (base64 of the DER).
        let header: String = transport
            .cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let xml = certificates_xml(&header, std::slice::from_ref(&tenant), "3<").unwrap();
        assert!(xml.starts_with(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CertificateFile xmlns:xsi="
        ));
        assert!(xml.contains("  <Version>2012-11-30</Version>\n  <Incarnation>3&lt;</Incarnation>\n  <Format>Pkcs7BlobWithPfxContents</Format>\n  <Data>"));
        assert!(xml.ends_with("</Data>\n</CertificateFile>\n"));
        let data = &xml[xml.find("<Data>").unwrap() + 6..xml.find("</Data>").unwrap()];
        assert!(data.lines().all(|l| l.len() <= 64));
        assert!(data.ends_with('\n'));
        assert_eq!(tenant.thumbprint().len(), 40);
        assert!(!format!("{tenant:?}").contains("PRIVATE"));
    }

    #[test]
    fn protected_settings_open_the_way_extensions_open_them() {
        let tenant = generate_tenant_cert("sim settings").unwrap();
        let sealed = seal_protected_settings(r#"{"secret":"s3cr3t"}"#, &tenant.cert_pem).unwrap();
        assert!(!sealed.contains('\n'));
        let dir = tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(p("blob.der"), STANDARD.decode(&sealed).unwrap()).unwrap();
        write_private(&p("t.crt"), &tenant.cert_pem).unwrap();
        write_private(&p("t.prv"), tenant.key_pem.as_deref().unwrap()).unwrap();
        let out = SystemRunner
            .run_ok(
                &Cmd::new(OPENSSL)
                    .args(["smime", "-decrypt", "-inform", "DER", "-in"])
                    .arg(path_arg(&p("blob.der")))
                    .arg("-recip")
                    .arg(path_arg(&p("t.crt")))
                    .arg("-inkey")
                    .arg(path_arg(&p("t.prv"))),
            )
            .unwrap();
        assert_eq!(out.stdout, r#"{"secret":"s3cr3t"}"#);
        assert!(seal_protected_settings("{}", "no certificate").is_err());
    }

    #[test]
    fn refusals() {
        assert!(generate_tenant_cert("a/CN=b").is_err());
        assert!(generate_tenant_cert("").is_err());
        let t = TenantCert {
            cert_pem: "x".into(),
            key_pem: Some("k".into()),
        };
        assert_eq!(t.thumbprint(), "");
        let e = encrypt_certificates("AAAA", &[t.clone(), t], CmsCipher::Aes128Cbc).unwrap_err();
        assert_eq!(
            e,
            "2 certificates carry keys; openssl pkcs12 -export holds one"
        );
        assert!(encrypt_certificates("AAAA", &[], CmsCipher::DesEde3Cbc).is_err());
        assert!(encrypt_certificates(
            "***",
            &[TenantCert {
                cert_pem: "x".into(),
                key_pem: None
            }],
            CmsCipher::Aes128Cbc
        )
        .unwrap_err()
        .starts_with("the transport certificate header is not base64"));
        assert_eq!(CmsCipher::DesEde3Cbc.name(), "DES_EDE3_CBC");
    }
}
