//! The Instance Metadata Service (§20 of PROTOCOL.md): today's Azure
//! puts the VM's SSH public keys here (and inline in ovf-env.xml) rather
//! than reliably in the Certificates document, so provisioning reads them
//! from all three. Reached directly at 169.254.169.254, never via a proxy;
//! a VM without IMDS (Azure Stack, old fabrics) just has no keys from it.

use std::fmt;

use crate::http::{self, Request};

/// IMDS on Azure.
pub const IMDS_BASE: &str = "http://169.254.169.254";
/// The API version asked for; `compute.publicKeys` exists since 2018-04-02.
pub const API_VERSION: &str = "2021-02-01";
const MAX_BODY: usize = 1 << 20;

/// One SSH public key the VM was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsPublicKey {
    /// The OpenSSH public key line.
    pub key_data: String,
    /// Where it goes, e.g. `/home/azureuser/.ssh/authorized_keys`.
    pub path: String,
}

#[derive(Debug)]
pub struct ImdsError(pub String);

impl fmt::Display for ImdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IMDS: {}", self.0)
    }
}

impl std::error::Error for ImdsError {}

/// `GET {base}/metadata/instance` and the `compute.publicKeys` in it.
/// One attempt per call; the caller decides whether to try again.
pub fn public_keys(base: &str, timeout_secs: u64) -> Result<Vec<ImdsPublicKey>, ImdsError> {
    let url = format!("{base}/metadata/instance?api-version={API_VERSION}");
    let user_agent = format!("{}/{}", crate::AGENT_NAME, crate::VERSION);
    let r = http::send(&Request {
        method: "GET",
        url: &url,
        headers: &[("Metadata", "true"), ("User-Agent", &user_agent)],
        body: None,
        timeout_secs,
        max_body: MAX_BODY,
        proxy: None,
    })
    .map_err(|e| ImdsError(e.to_string()))?;
    if r.status != 200 {
        return Err(ImdsError(format!("{url}: HTTP {}", r.status)));
    }
    parse_public_keys(&r.body)
}

/// The keys in an `/metadata/instance` document.
pub fn parse_public_keys(body: &[u8]) -> Result<Vec<ImdsPublicKey>, ImdsError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ImdsError(format!("instance metadata is not JSON: {e}")))?;
    let Some(keys) = v.pointer("/compute/publicKeys") else {
        return Ok(Vec::new());
    };
    let keys = keys
        .as_array()
        .ok_or_else(|| ImdsError("compute.publicKeys is not a list".into()))?;
    keys.iter()
        .map(|k| {
            let field = |name: &str| {
                k.get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| ImdsError(format!("compute.publicKeys entry without {name}")))
            };
            Ok(ImdsPublicKey {
                key_data: field("keyData")?.trim().to_string(),
                path: field("path")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_instance_metadata() {
        let body = br#"{"compute":{"name":"vm","publicKeys":[{"keyData":"ssh-rsa AAAAB3 me@host\r\n","path":"/home/azureuser/.ssh/authorized_keys"}]},"network":{}}"#;
        assert_eq!(
            parse_public_keys(body).unwrap(),
            vec![ImdsPublicKey {
                key_data: "ssh-rsa AAAAB3 me@host".into(),
                path: "/home/azureuser/.ssh/authorized_keys".into()
            }]
        );
    }

    #[test]
    fn no_keys_and_bad_documents() {
        assert!(parse_public_keys(br#"{"compute":{}}"#).unwrap().is_empty());
        assert_eq!(
            parse_public_keys(b"<html>").unwrap_err().to_string(),
            "IMDS: instance metadata is not JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            parse_public_keys(br#"{"compute":{"publicKeys":[{"path":"/x"}]}}"#)
                .unwrap_err()
                .to_string(),
            "IMDS: compute.publicKeys entry without keyData"
        );
        assert!(parse_public_keys(br#"{"compute":{"publicKeys":"x"}}"#).is_err());
    }

    #[test]
    fn shared_sample_has_no_keys() {
        let p = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/azure-samples/imds/valid.json"
        ));
        let Ok(body) = std::fs::read(p) else {
            eprintln!("skipped: {} not present", p.display());
            return;
        };
        assert!(parse_public_keys(&body).unwrap().is_empty());
    }
}
