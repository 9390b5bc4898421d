//! Values from outside that the agent writes into system files or shows in
//! messages. A host name goes into files that shells source
//! (`/etc/sysconfig/network`, ifcfg, FreeBSD's rc.conf), so every writer
//! checks it with the one rule here, whoever supplied it: ovf-env.xml at
//! provisioning, or the live host name the monitor publishes.

/// A host name by RFC 1123: dot-separated labels of 1 to 63 letters, digits
/// and hyphens, no label starting or ending with a hyphen, 253 characters
/// in all. A fully qualified name is accepted; a trailing dot is not.
pub fn check_host_name(name: &str) -> Result<(), String> {
    let invalid = |why: &str| format!("{} is not a valid host name: {why}", quote(name));
    if name.len() > 253 {
        return Err(format!(
            "host name is {} characters long; at most 253 are allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("it has an empty label"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid("only letters, digits, '-' and '.' are allowed"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    Ok(())
}

/// `text` quoted and escaped for a one-line message (control characters
/// become escapes, so a hostile value cannot forge log lines), cut to 64
/// characters.
pub fn quote(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}
