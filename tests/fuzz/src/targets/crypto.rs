//! The PEM and DER readers of `wire/crypto/`: the Certificates bundle
//! openssl decrypts from the fabric's blob, and certificate files.
//!
//! `certificates_pem` mutates PEM text; `certificates_der` mutates the DER
//! bytes themselves, wrapped into blocks of every label the reader acts on.

use std::rc::Rc;

use waagent::os::{Output, RecordingRunner};
use waagent::wire::crypto::{self, fuzzing, CryptoError, Openssl};

use super::lossy;

/// A certificate from the seeds whose key (`tenant.key`) pairs with it.
const TENANT_CRT: &str = include_str!("../../../../test-data/certs/tenant.crt");

pub fn pem(data: &[u8]) {
    let text = lossy(data);
    match crypto::thumbprint_of_pem(&text) {
        Ok(t) => assert_thumbprint(&t),
        Err(e) => assert_error(&e, "certificate", &text),
    }
    // `openssl pkey -pubout` (asked for non-RSA keys) answers with the
    // input too, so its output goes through the same reader.
    read_bundle(&text, &text);
    ssh_line(&text);
}

pub fn der(data: &[u8]) {
    let cert = block("CERTIFICATE", data);
    match crypto::thumbprint_of_pem(&cert) {
        Ok(t) => assert_eq!(t, crypto::thumbprint_of_der(data)),
        Err(e) => {
            assert!(data.is_empty(), "a well-formed block is refused: {e}");
            assert_error(&e, "certificate", &cert);
        }
    }
    if let Some(certs) = read_bundle(&cert, "") {
        // Every block holds these bytes, so any certificate is this one.
        for c in &certs {
            assert_eq!(c.thumbprint, crypto::thumbprint_of_der(data));
            assert!(!c.has_private_key);
        }
    }
    ssh_line(&cert);

    let public_key = block("PUBLIC KEY", data);
    for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
        let key = block(label, data);
        read_bundle(&format!("{TENANT_CRT}{key}"), &public_key);
        read_bundle(&format!("{cert}{key}"), &public_key);
    }
}

/// `text` through `read_bundle`, with `pkey_output` as what openssl prints
/// for a key the reader cannot handle itself. `None` when refused.
fn read_bundle(text: &str, pkey_output: &str) -> Option<Vec<crypto::Certificate>> {
    let runner = RecordingRunner::new();
    let answer = pkey_output.to_string();
    runner.respond(move |_| Some(Ok(Output::ok(&answer))));
    let openssl = Openssl::new("/usr/bin/openssl", Rc::new(runner));
    match fuzzing::read_bundle(&openssl, text) {
        Ok(certs) => {
            for (i, c) in certs.iter().enumerate() {
                assert_thumbprint(&c.thumbprint);
                assert!(
                    !certs[..i].iter().any(|o| o.thumbprint == c.thumbprint),
                    "{} listed twice",
                    c.thumbprint
                );
                if c.has_private_key {
                    assert!(text.contains("PRIVATE KEY"), "a key from nowhere");
                }
            }
            Some(certs)
        }
        Err(e) => {
            assert_error(&e, "Certificates", text);
            None
        }
    }
}

fn ssh_line(text: &str) {
    match fuzzing::ssh_line("fuzz.crt", text) {
        Ok(line) => {
            let b64 = line.strip_prefix("ssh-rsa ").expect("an ssh-rsa line");
            assert!(
                !b64.is_empty() && b64.bytes().all(is_base64),
                "not one base64 word: {line:?}"
            );
        }
        Err(e) => assert_error(&e, "fuzz.crt", text),
    }
}

fn assert_thumbprint(t: &str) {
    assert!(
        t.len() == 40
            && t.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "{t:?} is not a thumbprint"
    );
}

/// A refusal names its document and never quotes key material: no base64
/// line of the input (16 characters or more) appears in it, unless that
/// line is also part of a `-----BEGIN/END …-----` line, whose label may be
/// shown.
fn assert_error(e: &CryptoError, document: &str, input: &str) {
    assert_eq!(e.document(), document, "{e}");
    let shown = e.to_string();
    let armour: Vec<&str> = input.lines().filter(|l| l.contains("-----")).collect();
    for line in input.lines().map(str::trim) {
        if line.len() >= 16
            && line.bytes().all(is_base64)
            && shown.contains(line)
            && !armour.iter().any(|a| a.contains(line))
        {
            panic!("the error quotes key material: {shown:?}");
        }
    }
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// `der` as a PEM block labelled `label`, 64 base64 characters a line.
fn block(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding (the fuzz crate adds no dependencies).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
