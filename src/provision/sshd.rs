//! Editing `sshd_config` the way waagent does (§9.1 step 6.5.5), as pure
//! text → text functions; reading and writing the file is the caller's.
//!
//! The rule: every line whose first word is the keyword and which is not
//! inside a `Match` block becomes `Keyword value`; when there is no such
//! line, one is inserted just before the first `Match` block, or appended.
//! A `Match all` line ends a block. Comments (`#PasswordAuthentication`)
//! are not keywords. Every other byte of the file is kept.
//!
//! One deliberate difference from waagent: the keyword is matched
//! case-insensitively. sshd reads keywords case-insensitively and keeps the
//! *first* value it sees, so with waagent's case-sensitive match a global
//! `passwordauthentication yes` would stay above our inserted
//! `PasswordAuthentication no` and win (checked with OpenSSH 9.2's
//! `sshd -T`): the user asked for password logins off and would not get it.
//! `Match` is recognised case-insensitively too, as sshd and waagent do.

/// The settings waagent writes: password and keyboard-interactive logins
/// `no` when the ovf-env says `DisableSshPasswordAuthentication`, else
/// `yes`, and `ClientAliveInterval` (`OS.SshClientAliveInterval`, 180).
///
/// `KbdInteractiveAuthentication` is written beside waagent's
/// `ChallengeResponseAuthentication`: since OpenSSH 8.7 the latter is only a
/// deprecated alias of the former, both names set one option, and sshd keeps
/// the first value it reads — so a `KbdInteractiveAuthentication yes` that a
/// modern image ships (Ubuntu 22.04 ships the keyword) would otherwise decide
/// the matter whatever we wrote under the old name. Older OpenSSH has had
/// `KbdInteractiveAuthentication` as its own keyword since 3.x, so writing
/// it is harmless there.
pub fn settings_for(
    disable_password_auth: bool,
    client_alive_interval: u64,
) -> Vec<(&'static str, String)> {
    let allow = if disable_password_auth { "no" } else { "yes" };
    vec![
        ("PasswordAuthentication", allow.to_string()),
        ("ChallengeResponseAuthentication", allow.to_string()),
        ("KbdInteractiveAuthentication", allow.to_string()),
        ("ClientAliveInterval", client_alive_interval.to_string()),
    ]
}

/// The drop-in the agent writes when sshd_config includes a drop-in
/// directory: its name sorts before the others (`50-cloud-init.conf`, …).
pub const DROP_IN: &str = "00-waagent.conf";

/// The directory of `*.conf` drop-ins that a *global* `Include` line of
/// `config_text` reads (Debian 12, Ubuntu 22.04 and Fedora ship
/// `Include /etc/ssh/sshd_config.d/*.conf` at the top). sshd keeps the first
/// value it reads, and included files come first, so a drop-in saying
/// `PasswordAuthentication yes` would beat our edit of the main file: the
/// settings must then also go into a drop-in that sorts first.
/// A relative include is relative to `ssh_dir`, as sshd resolves it.
pub fn drop_in_dir(config_text: &str, ssh_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for line in config_text.lines() {
        let (word, rest) = words(line);
        if word.eq_ignore_ascii_case("Match") {
            return None;
        }
        if !word.eq_ignore_ascii_case("Include") {
            continue;
        }
        for pattern in rest.split_whitespace() {
            let Some(dir) = pattern.strip_suffix("/*.conf") else {
                continue;
            };
            let dir = std::path::Path::new(dir);
            return Some(if dir.is_absolute() {
                dir.to_path_buf()
            } else {
                ssh_dir.join(dir)
            });
        }
    }
    None
}

/// The drop-in's text: the settings, one per line, under a header.
pub fn drop_in(settings: &[(&str, &str)]) -> String {
    let mut s = String::from("# Written by the Azure guest agent (waagent-rs) from ovf-env.xml.\n");
    for (k, v) in settings {
        s.push_str(&format!("{k} {v}\n"));
    }
    s
}

/// `config_text` with each `(keyword, value)` of `settings` applied by
/// waagent's rule (see the module documentation). Applying the same
/// settings again changes nothing.
pub fn apply(config_text: &str, settings: &[(&str, &str)]) -> String {
    settings
        .iter()
        .fold(config_text.to_string(), |text, (keyword, value)| {
            set(&text, keyword, value)
        })
}

/// The first word of a line: leading blanks skipped, ended by a blank or
/// `=` (sshd also takes `Keyword=value`).
fn words(line: &str) -> (&str, &str) {
    let line = line.trim_start_matches([' ', '\t']);
    let end = line.find([' ', '\t', '=']).unwrap_or(line.len());
    let rest = line[end..].trim_start_matches([' ', '\t', '=']);
    (&line[..end], rest)
}

/// Splits off the line terminator (`\n`, `\r\n` or none) so it can be kept.
fn split_terminator(line: &str) -> (&str, &str) {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let body = body.strip_suffix('\r').unwrap_or(body);
    (body, &line[body.len()..])
}

fn set(text: &str, keyword: &str, value: &str) -> String {
    let wanted = format!("{keyword} {value}");
    let mut out = String::with_capacity(text.len() + wanted.len() + 1);
    let mut in_match = false;
    let mut found = false;
    // Byte offset in `out` of the first line that opens a Match block.
    let mut first_match: Option<usize> = None;

    for line in text.split_inclusive('\n') {
        let (body, terminator) = split_terminator(line);
        let (first, rest) = words(body);
        if first.eq_ignore_ascii_case("Match") {
            let (criterion, more) = words(rest);
            if criterion.eq_ignore_ascii_case("all") && more.trim().is_empty() {
                in_match = false;
            } else {
                in_match = true;
                first_match.get_or_insert(out.len());
            }
        } else if !in_match && first.eq_ignore_ascii_case(keyword) {
            found = true;
            out.push_str(&wanted);
            out.push_str(terminator);
            continue;
        }
        out.push_str(line);
    }

    if !found {
        let line = format!("{wanted}\n");
        match first_match {
            Some(at) => out.insert_str(at, &line),
            None => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&line);
            }
        }
    }
    out
}

#[cfg(test)]
mod drop_in_tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn finds_the_included_directory() {
        let ssh = Path::new("/etc/ssh");
        let debian =
            "# comment\nInclude /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n";
        assert_eq!(
            drop_in_dir(debian, ssh),
            Some(PathBuf::from("/etc/ssh/sshd_config.d"))
        );
        assert_eq!(
            drop_in_dir("include sshd_config.d/*.conf\n", ssh),
            Some(PathBuf::from("/etc/ssh/sshd_config.d"))
        );
        assert_eq!(drop_in_dir("PasswordAuthentication yes\n", ssh), None);
        assert_eq!(
            drop_in_dir("Match User x\n  Include /etc/ssh/x.d/*.conf\n", ssh),
            None
        );
        assert_eq!(drop_in_dir("Include /etc/ssh/extra.conf\n", ssh), None);
    }

    #[test]
    fn drop_in_text() {
        assert_eq!(
            drop_in(&[("PasswordAuthentication", "no"), ("ClientAliveInterval", "180")]),
            "# Written by the Azure guest agent (waagent-rs) from ovf-env.xml.\nPasswordAuthentication no\nClientAliveInterval 180\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISABLE: &[(&str, &str)] = &[
        ("PasswordAuthentication", "no"),
        ("ChallengeResponseAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("ClientAliveInterval", "180"),
    ];

    fn check_idempotent(text: &str, settings: &[(&str, &str)]) -> String {
        let once = apply(text, settings);
        assert_eq!(apply(&once, settings), once, "not idempotent for {text:?}");
        once
    }

    #[test]
    fn settings_for_both_ways() {
        let owned = settings_for(true, 180);
        let s: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(s, DISABLE);
        let owned = settings_for(false, 60);
        let s: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            s,
            [
                ("PasswordAuthentication", "yes"),
                ("ChallengeResponseAuthentication", "yes"),
                ("KbdInteractiveAuthentication", "yes"),
                ("ClientAliveInterval", "60"),
            ]
        );
    }

    #[test]
    fn replaces_every_global_line_and_keeps_the_rest() {
        let text = "# top\nPort 22\nPasswordAuthentication yes\n#PasswordAuthentication yes\n\
                    PasswordAuthentication   yes # again\nUsePAM yes\n";
        assert_eq!(
            check_idempotent(text, &[("PasswordAuthentication", "no")]),
            "# top\nPort 22\nPasswordAuthentication no\n#PasswordAuthentication yes\n\
             PasswordAuthentication no\nUsePAM yes\n"
        );
    }

    #[test]
    fn keyword_is_the_whole_first_word() {
        let text = "PasswordAuthenticationX yes\nPasswordAuthentication=yes\n\
                    \tpasswordauthentication yes\n";
        assert_eq!(
            check_idempotent(text, &[("PasswordAuthentication", "no")]),
            "PasswordAuthenticationX yes\nPasswordAuthentication no\nPasswordAuthentication no\n"
        );
    }

    #[test]
    fn inserts_before_the_first_match_block_and_leaves_blocks_alone() {
        let text = "Port 22\n\nMatch User alice\n  PasswordAuthentication yes\n\
                    Match all\nX11Forwarding no\nMatch Group admins\n\
                    \tClientAliveInterval 5\n";
        assert_eq!(
            check_idempotent(text, DISABLE),
            "Port 22\n\nPasswordAuthentication no\nChallengeResponseAuthentication no\n\
             KbdInteractiveAuthentication no\nClientAliveInterval 180\n\
             Match User alice\n  PasswordAuthentication yes\n\
             Match all\nX11Forwarding no\nMatch Group admins\n\tClientAliveInterval 5\n"
        );
    }

    #[test]
    fn match_all_ends_the_block() {
        let text = "Match User bob\nPasswordAuthentication yes\nmatch ALL\n\
                    PasswordAuthentication yes\n";
        assert_eq!(
            check_idempotent(text, &[("PasswordAuthentication", "no")]),
            "Match User bob\nPasswordAuthentication yes\nmatch ALL\nPasswordAuthentication no\n"
        );
        // `Match all` followed by more criteria is still a block.
        let text = "Match all User x\nPasswordAuthentication yes\n";
        assert_eq!(
            apply(text, &[("PasswordAuthentication", "no")]),
            "PasswordAuthentication no\nMatch all User x\nPasswordAuthentication yes\n"
        );
    }

    #[test]
    fn appends_at_the_end_with_a_newline() {
        assert_eq!(
            check_idempotent("Port 22", &[("ClientAliveInterval", "180")]),
            "Port 22\nClientAliveInterval 180\n"
        );
        assert_eq!(
            check_idempotent("Port 22\n", &[("ClientAliveInterval", "180")]),
            "Port 22\nClientAliveInterval 180\n"
        );
        assert_eq!(
            check_idempotent("", &[("ClientAliveInterval", "180")]),
            "ClientAliveInterval 180\n"
        );
        // A replaced last line without a newline stays without one.
        assert_eq!(
            check_idempotent("ClientAliveInterval 0", &[("ClientAliveInterval", "180")]),
            "ClientAliveInterval 180"
        );
    }

    #[test]
    fn crlf_lines_keep_their_terminator() {
        let text = "Port 22\r\nPasswordAuthentication yes\r\nUsePAM yes\r\n";
        assert_eq!(
            check_idempotent(text, &[("PasswordAuthentication", "no")]),
            "Port 22\r\nPasswordAuthentication no\r\nUsePAM yes\r\n"
        );
    }

    #[test]
    fn shared_sample_sshd_config() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/azure-samples/wire/sshd_config"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: {path} is missing");
            return;
        };
        let out = check_idempotent(&text, DISABLE);
        // ChallengeResponseAuthentication was there: replaced in place.
        assert!(text.contains("\nChallengeResponseAuthentication no\n"));
        assert_eq!(out.matches("ChallengeResponseAuthentication no").count(), 1);
        // The others were not (only commented): inserted before `Match group root`.
        let block = "PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     ClientAliveInterval 180\nMatch group root";
        assert!(out.contains(block), "{out}");
        assert!(out.contains("\n#PasswordAuthentication yes\n"));
        // Nothing else changed: removing the inserted lines gives the input.
        let back = out.replacen(
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nClientAliveInterval 180\n",
            "",
            1,
        );
        assert_eq!(back, text);

        let on = settings_for(false, 180);
        let on: Vec<(&str, &str)> = on.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let flipped = check_idempotent(&out, &on);
        for line in [
            "\nPasswordAuthentication yes\n",
            "\nChallengeResponseAuthentication yes\n",
            "\nKbdInteractiveAuthentication yes\n",
        ] {
            assert_eq!(flipped.matches(line).count(), 1, "{line}");
        }
        assert_eq!(apply(&flipped, DISABLE), out);
    }

    #[test]
    fn duplicates_inside_and_outside_blocks() {
        let text = "ClientAliveInterval 1\nMatch Address 10.0.0.0/8\nClientAliveInterval 2\n\
                    Match all\nClientAliveInterval 3\n   ClientAliveInterval 4\n";
        assert_eq!(
            check_idempotent(text, &[("ClientAliveInterval", "180")]),
            "ClientAliveInterval 180\nMatch Address 10.0.0.0/8\nClientAliveInterval 2\n\
             Match all\nClientAliveInterval 180\nClientAliveInterval 180\n"
        );
    }
}
