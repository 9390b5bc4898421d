//! `Versions`: the answer to `GET http://<ep>/?comp=versions` (§5.1, §6.1),
//! the wire protocol versions the WireServer speaks.

use super::{parse_root, DocError};

const DOCUMENT: &str = "Versions";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// `Preferred/Version` (in practice one: `2012-11-30`).
    pub preferred: Vec<String>,
    /// `Supported/Version`.
    pub supported: Vec<String>,
}

impl Versions {
    /// Both lists may be empty: a server that names no version we speak is
    /// refused by protocol detection, not by the parser.
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "Versions")?;
        let versions = root.node(DOCUMENT);
        let list = |rel: &str| {
            versions
                .all(rel)
                .iter()
                .map(|v| v.text().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        };
        Ok(Versions {
            preferred: list("Preferred/Version"),
            supported: list("Supported/Version"),
        })
    }

    /// Whether the server speaks `version` at all (preferred or supported).
    pub fn supports(&self, version: &str) -> bool {
        self.prefers(version) || self.supported.iter().any(|v| v == version)
    }

    /// Whether `version` is the server's preferred one; waagent warns when it
    /// is only supported.
    pub fn prefers(&self, version: &str) -> bool {
        self.preferred.iter().any(|v| v == version)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    #[test]
    fn fixture_versions() {
        let v = Versions::parse(&fixture("versions.xml")).unwrap();
        assert_eq!(v.preferred, ["2012-11-30"]);
        assert_eq!(v.supported, ["2010-12-15", "2010-28-10"]);
        assert!(v.prefers("2012-11-30") && v.supports("2012-11-30"));
        assert!(!v.prefers("2010-12-15") && v.supports("2010-12-15"));
        assert!(!v.supports("2015-04-05"));
    }

    #[test]
    fn sample_versions_both_generations() {
        for rel in ["wire/version_info.xml", "v2.2.5/wire/version_info.xml"] {
            let Some(text) = sample(rel) else { return };
            let v = Versions::parse(&text).unwrap();
            assert_eq!(v.preferred, ["2012-11-30"], "{rel}");
            assert_eq!(v.supported, ["2010-12-15", "2010-28-10"], "{rel}");
        }
    }

    #[test]
    fn empty_versions_parse_and_support_nothing() {
        let v = Versions::parse("<Versions/>").unwrap();
        assert!(!v.supports("2012-11-30"));
    }
}
