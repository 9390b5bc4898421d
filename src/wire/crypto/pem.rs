//! PEM text, read and written: blocks between `-----BEGIN X-----` and
//! `-----END X-----`; anything outside (openssl's "Bag Attributes") is skipped.

use base64::engine::general_purpose::STANDARD;
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

pub fn first_certificate(text: &str) -> Result<Vec<u8>, String> {
    blocks(text)?
        .into_iter()
        .find(Block::is_certificate)
        .map(|b| b.der)
        .ok_or_else(|| "no CERTIFICATE block".to_string())
}

pub fn first_private_key(text: &str) -> Result<Block, String> {
    blocks(text)?
        .into_iter()
        .find(Block::is_private_key)
        .ok_or_else(|| "no PRIVATE KEY block".to_string())
}

/// A SubjectPublicKeyInfo as `-----BEGIN PUBLIC KEY-----` PEM.
pub fn public_key_pem(spki: &[u8]) -> String {
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}-----END PUBLIC KEY-----\n",
        wrap64(&STANDARD.encode(spki))
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

#[cfg(test)]
mod tests {
    use crate::wire::crypto::pem;
    use crate::wire::crypto::testing::*;

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
}
