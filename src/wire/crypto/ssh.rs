//! OpenSSH public keys (§7.3): the `ssh-rsa` line of a certificate's RSA
//! key, built in Rust, and waagent's `{THUMBPRINT}.pub` beside it.

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::pem::{first_certificate, public_key_pem};
use super::{der, normalize_thumbprint, CryptoError};
use crate::fsutil;

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
pub(super) fn ssh_line(doc: &str, text: &str) -> Result<(String, Vec<u8>), CryptoError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::crypto::pem;
    use crate::wire::crypto::testing::*;

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
}
