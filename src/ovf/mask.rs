//! The copy of ovf-env.xml the agent keeps (§8.4): a text-level scanner that
//! masks every `UserPassword` element's content, whatever the markup.

/// The document as the agent saves it to `<lib>/ovf-env.xml` (0600): every
/// `UserPassword` element's content replaced by `*` (§8.4; waagent's
/// `<UserPassword>.*?<` → `<UserPassword>*<`, which gives the same result
/// on Azure's documents). Unlike that regular expression this also masks a
/// namespace-prefixed element, one with attributes, content over several
/// lines, CDATA and comments, and — erring towards masking — broken
/// markup: an element that is never closed is masked to the end of the
/// text, and a closing tag whose start tag is mangled masks the text before
/// it. Everything else is kept byte for byte.
pub fn masked(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    // Everything before `copied` is in `out` already (copied or masked).
    let mut copied = 0;
    let mut from = 0;
    while let Some(tag) = next_password_tag(xml, from) {
        match tag {
            Tag::Open { name_end } => {
                let rest = &xml[name_end..];
                let content = match rest.find(['<', '>']) {
                    Some(i) if rest.as_bytes()[i] == b'>' => {
                        if rest[..i].ends_with('/') {
                            // <UserPassword/>: nothing to mask.
                            from = name_end + i + 1;
                            continue;
                        }
                        name_end + i + 1
                    }
                    // A start tag that never ends: its "attributes" may be
                    // the password, so mask from the name on.
                    _ => name_end,
                };
                out.push_str(&xml[copied..content]);
                out.push('*');
                match find_close(xml, content) {
                    // The closing tag goes out now: a stray closing tag
                    // after it masks back to it, never over it.
                    Some((start, end)) => {
                        out.push_str(&xml[start..end]);
                        copied = end;
                        from = end;
                    }
                    None => return out,
                }
            }
            Tag::Close { start, end } => {
                // A closing tag whose start tag we did not see: mask back
                // to the previous `>`.
                let masked_from = xml[copied..start]
                    .rfind('>')
                    .map_or(copied, |i| copied + i + 1);
                out.push_str(&xml[copied..masked_from]);
                if masked_from < start {
                    out.push('*');
                }
                out.push_str(&xml[start..end]);
                copied = end;
                from = end;
            }
        }
    }
    out.push_str(&xml[copied..]);
    out
}

enum Tag {
    /// `<UserPassword` (any prefix); `name_end` is just after the name.
    Open { name_end: usize },
    /// `</UserPassword` (any prefix) from `start` up to `end`, after the
    /// `>` if one follows (blanks allowed), else after the name.
    Close { start: usize, end: usize },
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') || !c.is_ascii()
}

/// The `UserPassword` tag (open or close) starting at byte `at`, if that
/// is one. The local name is compared case-insensitively: masking more
/// than the parser would read as a password is the safe side.
fn password_tag_at(xml: &str, at: usize) -> Option<Tag> {
    let rest = xml[at..].strip_prefix('<')?;
    let (closing, name) = match rest.strip_prefix('/') {
        Some(name) => (true, name),
        None => (false, rest),
    };
    let len = name.find(|c| !is_name_char(c)).unwrap_or(name.len());
    let local = name[..len].rsplit(':').next().unwrap_or_default();
    if !local.eq_ignore_ascii_case("UserPassword") {
        return None;
    }
    let name_end = xml.len() - name.len() + len;
    if !closing {
        return Some(Tag::Open { name_end });
    }
    let after = &xml[name_end..];
    let blanks = after.len() - after.trim_start().len();
    let end = if after[blanks..].starts_with('>') {
        name_end + blanks + 1
    } else {
        name_end
    };
    Some(Tag::Close { start: at, end })
}

fn next_password_tag(xml: &str, from: usize) -> Option<Tag> {
    let mut at = from;
    while let Some(i) = xml[at..].find('<') {
        let lt = at + i;
        if let Some(tag) = password_tag_at(xml, lt) {
            return Some(tag);
        }
        at = lt + 1;
    }
    None
}

/// The closing `UserPassword` tag at or after `from`, skipping CDATA
/// sections, comments and processing instructions (whose text may contain
/// `</UserPassword>` as part of the password). `None` when there is none,
/// or one of those never ends.
fn find_close(xml: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = xml[at..].find('<') {
        let lt = at + i;
        let rest = &xml[lt..];
        let skip = [("<![CDATA[", "]]>"), ("<!--", "-->"), ("<?", "?>")]
            .iter()
            .find(|(open, _)| rest.starts_with(open));
        if let Some((open, close)) = skip {
            let end = rest[open.len()..].find(close)?;
            at = lt + open.len() + end + close.len();
            continue;
        }
        if let Some(Tag::Close { start, end }) = password_tag_at(xml, lt) {
            return Some((start, end));
        }
        at = lt + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::tests::{full_with, FULL, FULL_PASSWORD, NO_PASSWORD};
    use crate::ovf::{OvfEnv, Password};

    /// The unescaped and escaped forms of `FULL`'s password and pieces of it.
    fn leaks(text: &str) -> Vec<&'static str> {
        [
            "Sup3r$ecret",
            "P@ss",
            "m\u{e1}s &lt;x",
            "m\u{e1}s <x",
            FULL_PASSWORD,
        ]
        .into_iter()
        .filter(|s| text.contains(s))
        .collect()
    }

    #[test]
    fn masked_fixture_keeps_everything_but_the_password() {
        let saved = masked(FULL);
        assert!(leaks(&saved).is_empty(), "{saved}");
        assert_eq!(
            saved,
            full_with(
                "<UserPassword>Sup3r$ecret P@ss &amp; más &lt;x&gt;</UserPassword>",
                "<UserPassword>*</UserPassword>"
            )
        );
        let env = OvfEnv::parse(&saved).unwrap();
        assert_eq!(env.user_password.as_ref().map(Password::expose), Some("*"));
        let original = OvfEnv::parse(FULL).unwrap();
        assert_eq!(
            OvfEnv {
                user_password: original.user_password.clone().map(|_| Password::new("*")),
                ..original
            },
            env
        );
        assert_eq!(masked(NO_PASSWORD), NO_PASSWORD);
        assert_eq!(masked(&saved), saved);
    }

    #[test]
    fn masking_forms() {
        for (input, expected) in [
            (
                "<UserPassword>pw</UserPassword>",
                "<UserPassword>*</UserPassword>",
            ),
            (
                "<a:UserPassword>pw</a:UserPassword >",
                "<a:UserPassword>*</a:UserPassword >",
            ),
            (
                "<UserPassword xml:space=\"preserve\">pw</UserPassword>",
                "<UserPassword xml:space=\"preserve\">*</UserPassword>",
            ),
            (
                "<UserPassword>p\nw\r\n</UserPassword>",
                "<UserPassword>*</UserPassword>",
            ),
            (
                "<UserPassword><![CDATA[p</UserPassword>w]]></UserPassword>",
                "<UserPassword>*</UserPassword>",
            ),
            (
                "<UserPassword>p<!-- </UserPassword> -->w</UserPassword>",
                "<UserPassword>*</UserPassword>",
            ),
            (
                "<userpassword>pw</userpassword>",
                "<userpassword>*</userpassword>",
            ),
            ("<UserPassword/><X>keep</X>", "<UserPassword/><X>keep</X>"),
            ("<UserPassword />", "<UserPassword />"),
            (
                "<UserPasswordHint>keep</UserPasswordHint>",
                "<UserPasswordHint>keep</UserPasswordHint>",
            ),
            (
                "<A><UserPassword>one</UserPassword><UserPassword>two</UserPassword></A>",
                "<A><UserPassword>*</UserPassword><UserPassword>*</UserPassword></A>",
            ),
            // Broken markup errs towards masking.
            ("<UserPassword>pw", "<UserPassword>*"),
            ("<UserPassword>pw</UserPass", "<UserPassword>*"),
            (
                "<UserPassword pw</UserPassword>",
                "<UserPassword*</UserPassword>",
            ),
            ("<UserPasswordpw</UserPassword>", "*</UserPassword>"),
            (
                "<X>a</X><UserPassXord>pw</UserPassword>",
                "<X>a</X><UserPassXord>*</UserPassword>",
            ),
            ("<UserPassword><![CDATA[pw", "<UserPassword>*"),
            ("</UserPassword>", "</UserPassword>"),
            ("<", "<"),
            ("", ""),
            ("<UserPassword", "<UserPassword*"),
            // Found by the ovf_env fuzz target: a closing tag without its
            // `>` followed by a stray one. The stray tag masked back over
            // the first, whose bytes were lost, and masking again changed
            // the result.
            (
                "<UserPassword>x</UserPassword\0x</UserPassword\0>",
                "<UserPassword>*</UserPassword*</UserPassword\0>",
            ),
        ] {
            assert_eq!(masked(input), expected, "{input:?}");
            assert_eq!(masked(expected), expected, "again {input:?}");
        }
    }
}
