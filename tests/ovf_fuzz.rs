//! Property tests for `ovf-env.xml`: no input makes `OvfEnv::parse` or
//! `ovf::masked` panic; every refusal is one line naming the document and
//! never quoting the password; masking is idempotent; and the copy the
//! agent saves never holds the fixture's password — neither whole nor in
//! pieces, escaped or not — whether the document around it is damaged, the
//! password itself is altered, or one of its two tags is damaged.
//!
//! Inputs: arbitrary bytes, token soup built from the pieces the masker
//! cares about, and our fixtures with random edits.

use proptest::prelude::*;
use proptest::sample::Index;
use waagent::ovf::{self, OvfEnv};

const FULL: &str = include_str!("../test-data/ovf/full.xml");

const FIXTURES: &[&str] = &[
    FULL,
    include_str!("../test-data/ovf/no-password.xml"),
    include_str!("../test-data/ovf/minimal.xml"),
    include_str!("../test-data/ovf/bad-no-username.xml"),
    include_str!("../test-data/ovf/bad-root.xml"),
    include_str!("../test-data/ovf/bad-user-semicolon.xml"),
    include_str!("../test-data/ovf/bad-user-dotdot.xml"),
    include_str!("../test-data/ovf/bad-user-too-long.xml"),
    include_str!("../test-data/ovf/bad-key-path.xml"),
    include_str!("../test-data/ovf/bad-fingerprint.xml"),
    include_str!("../test-data/ovf/bad-hostname.xml"),
    include_str!("../test-data/ovf/bad-malformed.xml"),
];

const OPEN_TAG: &str = "<UserPassword>";
const CLOSE_TAG: &str = "</UserPassword>";

/// `FULL`'s password as written (`&amp;`, `&lt;`, `&gt;`) and pieces of it,
/// escaped and decoded: none may appear in what the agent saves.
const PASSWORD_PIECES: &[&str] = &[
    "Sup3r$ecret P@ss &amp; m\u{e1}s &lt;x&gt;",
    "Sup3r$ecret P@ss & m\u{e1}s <x>",
    "Sup3r$ecret",
    // Not "P@ss" alone: one edit turns the tag's "Pass" into that.
    "ecret P@ss",
    "m\u{e1}s &lt;x",
    "m\u{e1}s <x",
];

fn leaks(text: &str) -> Vec<&'static str> {
    PASSWORD_PIECES
        .iter()
        .copied()
        .filter(|p| text.contains(p))
        .collect()
}

/// Parses and masks `text`, checking what must hold for any input.
fn exercise(text: &str) -> String {
    if let Err(e) = OvfEnv::parse(text) {
        assert_eq!(e.document, "ovf-env.xml");
        let shown = e.to_string();
        assert!(shown.starts_with("ovf-env.xml: "), "{shown:?}");
        assert!(!shown.contains('\n'), "not one line: {shown:?}");
        assert!(
            !shown.contains("Sup3r$ecret"),
            "quotes the password: {shown:?}"
        );
    }
    let saved = ovf::masked(text);
    assert_eq!(ovf::masked(&saved), saved, "masking is not idempotent");
    saved
}

#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Index, u8),
    Replace(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

impl Edit {
    fn index(&self) -> &Index {
        match self {
            Edit::FlipBit(i, _)
            | Edit::Replace(i, _)
            | Edit::Insert(i, _)
            | Edit::Remove(i)
            | Edit::Truncate(i) => i,
        }
    }

    /// Applies the edit at byte `at` (which is < `bytes.len()`).
    fn apply_at(&self, bytes: &mut Vec<u8>, at: usize) {
        match self {
            Edit::FlipBit(_, bit) => bytes[at] ^= 1 << (bit % 8),
            Edit::Replace(_, b) => bytes[at] = *b,
            Edit::Insert(_, b) => bytes.insert(at, *b),
            Edit::Remove(_) => {
                bytes.remove(at);
            }
            Edit::Truncate(_) => bytes.truncate(at),
        }
    }
}

/// Bytes XML and the masker care about, and now and then any byte.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"<>/!?[]-&;:\"' \n\tx".to_vec()),
        1 => any::<u8>(),
    ]
}

fn edit(with_truncate: bool) -> impl Strategy<Value = Edit> {
    let truncate_weight = u32::from(with_truncate);
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<Index>().prop_map(Edit::Remove),
        truncate_weight => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// `base` with each edit applied at a position drawn from `allowed` (byte
/// offsets into `base`); applied from the last position back so earlier
/// offsets stay valid.
fn edited(base: &str, allowed: &[usize], edits: &[Edit]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    if allowed.is_empty() {
        return base.to_string();
    }
    let mut placed: Vec<(usize, &Edit)> = edits
        .iter()
        .map(|e| (allowed[e.index().index(allowed.len())], e))
        .collect();
    placed.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (at, e) in placed {
        if at < bytes.len() {
            e.apply_at(&mut bytes, at);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Byte ranges of `FULL`'s password element: its start tag, its content
/// and its end tag.
fn password_spans() -> (
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
) {
    let open = FULL.find(OPEN_TAG).expect("fixture has a password");
    let close = FULL.find(CLOSE_TAG).expect("fixture closes it");
    (
        open..open + OPEN_TAG.len(),
        open + OPEN_TAG.len()..close,
        close..close + CLOSE_TAG.len(),
    )
}

/// Token soup around the password element's pieces.
fn soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "<UserPassword>",
        "</UserPassword>",
        "<wa:UserPassword",
        "</wa:UserPassword >",
        "<UserPassword/>",
        "<userpassword>",
        "<![CDATA[",
        "]]>",
        "<!--",
        "-->",
        "<?",
        "?>",
        "<",
        ">",
        "/",
        " ",
        "\n",
        "x=\"",
        "\"",
        "&amp;",
        "secret",
        "<Environment>",
        "</Environment>",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup(text in soup()) {
        let saved = exercise(&text);
        // Whatever follows a recognisable start tag is masked.
        prop_assert!(!saved.contains("<UserPassword>secret"), "{saved}");
    }

    #[test]
    fn edited_fixtures(
        fixture in prop::sample::select(FIXTURES.to_vec()),
        edits in prop::collection::vec(edit(true), 1..6),
    ) {
        let all: Vec<usize> = (0..fixture.len()).collect();
        exercise(&edited(fixture, &all, &edits));
    }

    /// Damage anywhere but in the password's two tags, content included.
    #[test]
    fn password_never_survives_damage_around_it(edits in prop::collection::vec(edit(true), 1..8)) {
        let (open, _, close) = password_spans();
        let allowed: Vec<usize> = (0..FULL.len())
            .filter(|i| !open.contains(i) && !close.contains(i))
            .collect();
        let text = edited(FULL, &allowed, &edits);
        let saved = exercise(&text);
        prop_assert!(leaks(&saved).is_empty(), "{:?} leak from {text}", leaks(&saved));
    }

    /// One byte of one of the two tags damaged, the content intact, and
    /// damage elsewhere.
    #[test]
    fn password_never_survives_a_damaged_tag(
        in_close_tag in any::<bool>(),
        tag_edit in edit(false),
        other_edits in prop::collection::vec(edit(false), 0..4),
    ) {
        let (open, content, close) = password_spans();
        let tag: Vec<usize> = if in_close_tag { close.clone().collect() } else { open.clone().collect() };
        let elsewhere: Vec<usize> = (0..FULL.len())
            .filter(|i| *i < open.start || *i >= close.end)
            .collect();
        // Applied from the last position back, so every offset still
        // points where it was drawn.
        let mut placed: Vec<(usize, Edit)> = other_edits
            .iter()
            .map(|e| (elsewhere[e.index().index(elsewhere.len())], e.clone()))
            .collect();
        placed.push((tag[tag_edit.index().index(tag.len())], tag_edit));
        placed.sort_by_key(|p| std::cmp::Reverse(p.0));
        let mut bytes = FULL.as_bytes().to_vec();
        for (at, e) in &placed {
            if *at < bytes.len() {
                e.apply_at(&mut bytes, *at);
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(text.contains(&FULL[content]), "content must stay intact");
        let saved = exercise(&text);
        prop_assert!(leaks(&saved).is_empty(), "{:?} leak from {text}", leaks(&saved));
    }
}

#[test]
fn every_truncation_of_the_full_fixture() {
    for cut in (0..=FULL.len()).filter(|&i| FULL.is_char_boundary(i)) {
        let text = &FULL[..cut];
        let saved = exercise(text);
        assert!(leaks(&saved).is_empty(), "cut at {cut}: {saved}");
    }
}
