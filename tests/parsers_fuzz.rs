//! Property test: no input, however broken, makes the XML reader or a
//! document parser panic, and every refusal is a `DocError` naming the
//! document it was asked to read. Inputs are arbitrary bytes, token soup
//! built from XML's special pieces, and our own fixtures with random byte
//! flips, truncations and insertions of the characters XML cares about.

use proptest::prelude::*;
use proptest::sample::Index;
use waagent::wire::docs::{
    CertificatesDoc, DocError, ExtensionManifest, ExtensionsConfig, GoalState,
    HostingEnvironmentConfig, SharedConfig, Versions,
};
use waagent::xml;

const FIXTURES: &[&str] = &[
    include_str!("../test-data/wire/versions.xml"),
    include_str!("../test-data/wire/goal_state.xml"),
    include_str!("../test-data/wire/goal_state_noop.xml"),
    include_str!("../test-data/wire/hosting_env.xml"),
    include_str!("../test-data/wire/shared_config.xml"),
    include_str!("../test-data/wire/certificates.xml"),
    include_str!("../test-data/wire/ext_conf.xml"),
    include_str!("../test-data/wire/ext_conf_no_extensions.xml"),
    include_str!("../test-data/wire/manifest.xml"),
];

/// An `Err` must come from the document we asked for, and say so first.
fn check<T>(document: &str, result: Result<T, DocError>) {
    if let Err(e) = result {
        assert_eq!(e.document, document);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{document}: ")),
            "{shown:?} does not start with {document:?}"
        );
    }
}

/// Feeds `text` to the reader and to every document parser.
fn parse_everything(text: &str) {
    check("Fuzz", xml::parse("Fuzz", text));
    check("Versions", Versions::parse(text));
    check("GoalState", GoalState::parse(text));
    check(
        "HostingEnvironmentConfig",
        HostingEnvironmentConfig::parse(text),
    );
    check("SharedConfig", SharedConfig::parse(text));
    check("Certificates", CertificatesDoc::parse(text));
    check("ExtensionsConfig", ExtensionsConfig::parse(text));
    check("ExtensionManifest", ExtensionManifest::parse(text));
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Truncation is rare: one cut already ends most documents' interest.
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), prop::sample::select(&b"<>&\"'/;"[..]))
            .prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        3 => any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match *m {
            Mutation::FlipBit(ref at, bit) => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Truncate(ref at) => bytes.truncate(at.index(bytes.len())),
            Mutation::Insert(ref at, byte) => bytes.insert(at.index(bytes.len() + 1), byte),
            Mutation::Remove(ref at) => {
                bytes.remove(at.index(bytes.len()));
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Pieces that steer random text into the reader's interesting corners.
const PIECES: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "=",
    "\"",
    "'",
    " ",
    "\n",
    "&",
    ";",
    "&amp;",
    "&lt;",
    "&#65;",
    "&#x0;",
    "&bogus;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml version=\"1.0\"?>",
    "<!DOCTYPE x [<!ENTITY e \"v\">]>",
    "ns:",
    "xmlns:i=\"u\"",
    "GoalState",
    "Extensions",
    "Plugin",
    "Plugins",
    "PluginSettings",
    "name=\"A\"",
    "version=\"1\"",
    "state=\"enabled\"",
    "seqNo=\"1\"",
    "seqNo=\"x\"",
    "RuntimeSettings",
    "ExtensionRuntimeSettings",
    "Incarnation",
    "Container",
    "ContainerId",
    "PluginVersionManifest",
    "Version",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..80)) {
        parse_everything(&pieces.concat());
    }

    #[test]
    fn mutated_fixtures(
        which in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        parse_everything(&mutate(FIXTURES[which.index(FIXTURES.len())], &mutations));
    }
}

#[test]
fn unmutated_fixtures_go_through_every_parser() {
    for fixture in FIXTURES {
        parse_everything(fixture);
    }
}
