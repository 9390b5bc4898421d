//! Scrubbing secrets out of text before it is logged.
//!
//! Code that handles a secret keeps it out of log arguments in the first
//! place (see [`crate::os::runner::Arg::Secret`]); this is the net under that:
//! every log line passes through [`redact`], which blanks the shapes secrets
//! take in this agent's inputs — PEM private keys, ovf-env `UserPassword` and
//! `CustomData`, extension `protectedSettings`, and crypt(3) password hashes.

use std::borrow::Cow;

const MASK: &str = "[REDACTED]";

/// XML elements whose content is secret (any namespace prefix).
const SECRET_ELEMENTS: &[&str] = &["UserPassword", "CustomData", "protectedSettings"];
/// JSON members whose string value is secret.
const SECRET_JSON_KEYS: &[&str] = &["protectedSettings", "password", "adminPassword"];

/// Returns `text` with every secret replaced by `[REDACTED]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !might_hold_secret(text) {
        return Cow::Borrowed(text);
    }
    let mut s = redact_pem_keys(text);
    for el in SECRET_ELEMENTS {
        s = redact_xml_element(&s, el);
    }
    for key in SECRET_JSON_KEYS {
        s = redact_json_string(&s, key);
    }
    Cow::Owned(redact_url(&redact_crypt_hashes(&s)))
}

/// Blanks the signature of SAS URLs (`sig=…`), which grants access to a
/// storage blob: the rest of the URL stays readable for diagnosis.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';');
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        if boundary {
            let end = rest
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '<' || c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str(MASK);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Cheap pre-check so ordinary log lines are not copied.
fn might_hold_secret(text: &str) -> bool {
    text.contains("PRIVATE KEY")
        || text.contains('$')
        || text.contains("sig=")
        || SECRET_ELEMENTS.iter().any(|e| text.contains(e))
        || SECRET_JSON_KEYS.iter().any(|k| text.contains(k))
}

fn redact_pem_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_pem_key_begin(rest) {
        out.push_str(&rest[..start]);
        out.push_str("[REDACTED PRIVATE KEY]");
        let after = &rest[start..];
        // Skip past the END line's closing dashes (or, when they are
        // missing, to the end of that line: dashes further on belong to the
        // next block, whose key must be found too), or drop everything if
        // there is no END.
        rest = match after.find("-----END") {
            Some(end) => {
                let tail = &after[end + 8..];
                let line = tail.find('\n').unwrap_or(tail.len());
                match tail[..line].find("-----") {
                    Some(close) => &tail[close + 5..],
                    None => &tail[line..],
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

fn find_pem_key_begin(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("-----BEGIN") {
        let at = from + i;
        let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
        if text[at..line_end].contains("PRIVATE KEY") {
            return Some(at);
        }
        from = at + 10;
    }
    None
}

/// `<ns:Name attr="…">secret</ns:Name>` → `<ns:Name attr="…">[REDACTED]</ns:Name>`.
/// An element that is never closed is blanked to the end of the text.
fn redact_xml_element(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let Some(open) = find_tag(rest, name, false) else {
            out.push_str(rest);
            return out;
        };
        let Some(gt) = rest[open..].find('>') else {
            out.push_str(rest);
            return out;
        };
        let content_start = open + gt + 1;
        out.push_str(&rest[..content_start]);
        if rest[..content_start].ends_with("/>") {
            rest = &rest[content_start..];
            continue;
        }
        out.push_str(MASK);
        match find_tag(&rest[content_start..], name, true) {
            Some(close) => rest = &rest[content_start + close..],
            None => return out,
        }
    }
}

/// Finds `<Name` / `<prefix:Name` (or the closing `</…`) followed by a
/// delimiter, so `UserPasswordHint` does not match `UserPassword`.
fn find_tag(text: &str, name: &str, closing: bool) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let next = text[from..].chars().next();
        if !matches!(next, Some('>' | ' ' | '/' | '\t' | '\r' | '\n')) {
            continue;
        }
        let lt = match text[..at].rfind('<') {
            Some(lt) => lt,
            None => continue,
        };
        let between = &text[lt + 1..at];
        let (is_close, prefix) = match between.strip_prefix('/') {
            Some(p) => (true, p),
            None => (false, between),
        };
        let prefix_ok = prefix.is_empty()
            || (prefix.ends_with(':')
                && prefix[..prefix.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if prefix_ok && is_close == closing {
            return Some(lt);
        }
    }
    None
}

/// `"key": "secret"` → `"key": "[REDACTED]"` (escaped quotes respected; a
/// non-string value such as an object is blanked up to its closing brace).
fn redact_json_string(text: &str, key: &str) -> String {
    let needle = format!("\"{key}\"");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after_key = i + needle.len();
        out.push_str(&rest[..after_key]);
        rest = &rest[after_key..];
        let trimmed = rest.trim_start();
        let Some(value) = trimmed.strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        let consumed = rest.len() - value.len();
        out.push_str(&rest[..consumed]);
        let end = json_value_end(value);
        out.push('"');
        out.push_str(MASK);
        out.push('"');
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Byte length of the JSON value at the start of `v` (best effort: strings,
/// and objects/arrays by bracket depth; anything else up to `,` or `}`).
fn json_value_end(v: &str) -> usize {
    let bytes = v.as_bytes();
    match bytes.first() {
        Some(b'"') => {
            let mut i = 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'"' => return i + 1,
                    _ => i += 1,
                }
            }
            bytes.len()
        }
        Some(b'{' | b'[') => {
            let (mut depth, mut in_str, mut i) = (0usize, false, 0);
            while i < bytes.len() {
                let b = bytes[i];
                if in_str {
                    match b {
                        b'\\' => i += 1,
                        b'"' => in_str = false,
                        _ => {}
                    }
                } else {
                    match b {
                        b'"' => in_str = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
            bytes.len()
        }
        _ => v.find([',', '}', '\n']).unwrap_or(v.len()),
    }
}

/// `$1$salt$hash`, `$5$…`, `$6$…` (with optional `rounds=`) → `[REDACTED]`.
fn redact_crypt_hashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let cand = &rest[i..];
        let is_hash = ["$1$", "$5$", "$6$", "$y$", "$2a$", "$2b$"]
            .iter()
            .any(|p| cand.starts_with(p))
            && cand[1..]
                .split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .next()
                .is_some_and(|h| h.matches('$').count() >= 2);
        if !is_hash {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
            continue;
        }
        out.push_str(&rest[..i]);
        out.push_str(MASK);
        let end = cand
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == ':')
            .unwrap_or(cand.len());
        rest = &cand[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        assert!(matches!(redact("Provisioning complete"), Cow::Borrowed(_)));
        assert_eq!(redact("cost is $5 today"), "cost is $5 today");
    }

    #[test]
    fn pem_private_keys() {
        let t = "got -----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----\n and -----BEGIN CERTIFICATE-----\nMIIpublic\n-----END CERTIFICATE-----";
        let r = redact(t);
        assert!(!r.contains("MIIEsecret"), "{r}");
        assert!(r.contains("[REDACTED PRIVATE KEY]"));
        assert!(r.contains("MIIpublic"), "certificates are public: {r}");
        let cut = redact("-----BEGIN PRIVATE KEY-----\nMIIEsecret");
        assert_eq!(cut, "[REDACTED PRIVATE KEY]");
    }

    /// Found by the log_redaction fuzz target: an END line without its
    /// closing dashes made the skip run on to the next block's BEGIN
    /// dashes, so that block's key was never seen and stayed in the line.
    #[test]
    fn an_end_line_without_dashes_does_not_hide_the_next_key() {
        let t = "-----BEGIN PRIVATE KEY-----\nMIIEfirst\n-----END PRIVATE KEY\n\
                 -----BEGIN PRIVATE KEY-----\nMIIEsecond\n-----END PRIVATE KEY-----\nafter";
        let r = redact(t);
        assert!(!r.contains("MIIEsecond"), "{r}");
        assert_eq!(r, "[REDACTED PRIVATE KEY]\n[REDACTED PRIVATE KEY]\nafter");
    }

    #[test]
    fn ovf_elements_with_namespaces() {
        let t = r#"<ns1:UserName>azureuser</ns1:UserName><ns1:UserPassword>Pa$$w0rd!</ns1:UserPassword><CustomData>IyEvYmluL3No</CustomData><UserPasswordHint>x</UserPasswordHint>"#;
        let r = redact(t);
        assert_eq!(
            r,
            r#"<ns1:UserName>azureuser</ns1:UserName><ns1:UserPassword>[REDACTED]</ns1:UserPassword><CustomData>[REDACTED]</CustomData><UserPasswordHint>x</UserPasswordHint>"#
        );
        assert_eq!(redact("<UserPassword>cut off"), "<UserPassword>[REDACTED]");
    }

    #[test]
    fn json_protected_settings() {
        let t = r#"{"publicSettings": {"a": 1}, "protectedSettings": "MIIB\"x", "protectedSettingsCertThumbprint": "AB"}"#;
        let r = redact(t);
        assert_eq!(
            r,
            r#"{"publicSettings": {"a": 1}, "protectedSettings": "[REDACTED]", "protectedSettingsCertThumbprint": "AB"}"#
        );
        let r = redact(r#"{"protectedSettings": {"password": "hunter2", "k": [1, "}"]}, "n": 1}"#);
        assert_eq!(r, r#"{"protectedSettings": "[REDACTED]", "n": 1}"#);
    }

    #[test]
    fn sas_signatures() {
        let u =
            "https://a.blob.core.windows.net/vhds/x.status?sr=b&sp=rw&sig=hfRh7gzU%2BE7s&sv=2014";
        assert_eq!(
            redact(u),
            "https://a.blob.core.windows.net/vhds/x.status?sr=b&sp=rw&sig=[REDACTED]&sv=2014"
        );
        assert_eq!(redact_url("x?sig=abc"), "x?sig=[REDACTED]");
        assert_eq!(redact_url("design=1"), "design=1");
    }

    #[test]
    fn crypt_hashes() {
        let r = redact("usermod -p '$6$abcdefgh$Zm9vYmFy.hash/x' azureuser");
        assert_eq!(r, "usermod -p '[REDACTED]' azureuser");
        let r = redact("root:$6$rounds=5000$salt$hash:19000:0:99999:7:::");
        assert_eq!(r, "root:[REDACTED]:19000:0:99999:7:::");
    }
}
