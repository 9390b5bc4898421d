//! Typed models of the documents the WireServer serves (§6 of PROTOCOL.md),
//! one module per document, each with `parse(xml) -> Result<Self, DocError>`.
//!
//! Common rules, so the models stay predictable:
//!
//! * a *required* element or attribute that is missing or blank is a
//!   [`DocError`] naming its path; unknown elements and attributes are ignored;
//! * optional values are `Option` (absent and blank are the same, as in
//!   waagent) or an empty `Vec`;
//! * text values are trimmed; URLs are entity-decoded once by the XML reader
//!   (`&amp;` → `&`) and otherwise left exactly as sent (`%2D` stays, §21.3);
//! * the root element must be the expected one, so an error page or a
//!   document of another kind is refused instead of read as empty.

mod certificates;
mod extensions_config;
mod goal_state;
mod hosting_env;
mod manifest;
mod shared_config;
mod versions;

pub use certificates::CertificatesDoc;
pub use extensions_config::{
    Dependency, DependsOnExtension, ExtensionSettings, ExtensionState, ExtensionsConfig, GaFamily,
    InVmGoalStateMetadata, Plugin, PluginState, RequiredFeature, StatusBlobType, StatusUploadBlob,
};
pub use goal_state::{GoalState, LbProbePorts, RoleInstance, MAX_LB_PROBE_PORTS};
pub use hosting_env::HostingEnvironmentConfig;
pub use manifest::{ExtensionManifest, ManifestPlugin};
pub use shared_config::{SharedConfig, SharedInstance};
pub use versions::Versions;

pub use crate::xml::DocError;
use crate::xml::{self, Element};

/// Parses `text` as `document` and checks its root element is `root`.
fn parse_root(document: &'static str, text: &str, root: &str) -> Result<Element, DocError> {
    let element = xml::parse(document, text)?;
    if element.name != root {
        return Err(DocError::new(
            document,
            format!("/{}", element.name),
            format!("root element is <{}>, expected <{root}>", element.name),
        ));
    }
    Ok(element)
}

/// waagent's reading of a boolean flag: `true` in any case; anything else,
/// or nothing, is false.
fn flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// Our own fixture documents (always present).
    pub fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test-data/wire")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// The upstream sample directory, when this checkout sits beside it;
    /// CI may run without it, so callers skip when this is `None`.
    pub fn samples_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/azure-samples"
        ));
        if dir.is_dir() {
            Some(dir)
        } else {
            let why = format!("{} not found", dir.display());
            let test = std::thread::current().name().unwrap_or("?").to_string();
            crate::sim::skips::note("lib", &test, &why);
            None
        }
    }

    /// One upstream sample document, or `None` (test skipped) without them.
    pub fn sample(rel: &str) -> Option<String> {
        let path = samples_dir()?.join(rel);
        Some(
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::samples_dir;
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn wrong_root_element_is_refused() {
        let e = GoalState::parse("<Versions/>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "GoalState: /Versions: root element is <Versions>, expected <GoalState>"
        );
    }

    #[test]
    fn flags_read_like_waagent() {
        assert!(flag(Some("True")) && flag(Some("true")) && flag(Some(" TRUE ")));
        assert!(!flag(Some("false")) && !flag(Some("1")) && !flag(Some("")) && !flag(None));
    }

    /// Which parser a sample file belongs to, by waagent's file naming.
    fn kind(path: &Path) -> Option<&'static str> {
        let name = path.file_name()?.to_str()?;
        let in_dir = |d: &str| path.parent().and_then(Path::file_name) == Some(d.as_ref());
        if !name.ends_with(".xml") {
            return None;
        }
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
        Some(if starts(&["goal_state", "GoalState"]) {
            "GoalState"
        } else if starts(&["hosting_env", "HostingEnvironmentConfig"]) {
            "HostingEnvironmentConfig"
        } else if starts(&["shared_config", "SharedConfig"]) {
            "SharedConfig"
        } else if starts(&["certs", "certificates", "Certificates", "incorrect-certs"]) {
            "Certificates"
        } else if starts(&["ext_conf", "ExtensionsConfig"]) || in_dir("multi-config") {
            "ExtensionsConfig"
        } else if starts(&["manifest", "ga_manifest"]) {
            "ExtensionManifest"
        } else if starts(&["version_info", "versions"]) {
            "Versions"
        } else {
            return None;
        })
    }

    fn parse_as(kind: &str, text: &str) -> Result<(), DocError> {
        match kind {
            "GoalState" => GoalState::parse(text).map(drop),
            "HostingEnvironmentConfig" => HostingEnvironmentConfig::parse(text).map(drop),
            "SharedConfig" => SharedConfig::parse(text).map(drop),
            "Certificates" => CertificatesDoc::parse(text).map(drop),
            "ExtensionsConfig" => ExtensionsConfig::parse(text).map(drop),
            "ExtensionManifest" => ExtensionManifest::parse(text).map(drop),
            "Versions" => Versions::parse(text).map(drop),
            _ => unreachable!("unknown kind {kind}"),
        }
    }

    fn xml_files(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if recurse {
                    xml_files(&path, recurse, out);
                }
            } else {
                out.push(path);
            }
        }
    }

    /// Every goal-state document in the upstream samples parses. None of them
    /// is refused: the `invalid_config/` ones are documents waagent accepts
    /// while marking one handler invalid (see `extensions_config`), and
    /// `ext_conf_invalid_vm_metadata.xml` only loses its metadata values.
    #[test]
    fn every_sample_document_parses() {
        let Some(root) = samples_dir() else { return };
        let mut files = Vec::new();
        xml_files(&root.join("wire"), true, &mut files);
        xml_files(&root.join("v2.2.5/wire"), false, &mut files);
        xml_files(&root.join("hibernate/goal_state_1"), false, &mut files);
        xml_files(&root.join("tenant_certificate_rotation"), false, &mut files);
        xml_files(&root.join("hostgaplugin"), false, &mut files);
        files.sort();

        let mut counts = std::collections::BTreeMap::new();
        let mut failures = Vec::new();
        for path in &files {
            let Some(kind) = kind(path) else { continue };
            *counts.entry(kind).or_insert(0) += 1;
            let text = std::fs::read_to_string(path).expect("readable sample");
            if let Err(e) = parse_as(kind, &text) {
                failures.push(format!("{}: {e}", path.display()));
            }
        }
        assert!(failures.is_empty(), "refused:\n{}", failures.join("\n"));
        let expected = [
            ("Certificates", 8),
            ("ExtensionManifest", 8),
            ("ExtensionsConfig", 47),
            ("GoalState", 10),
            ("HostingEnvironmentConfig", 3),
            ("SharedConfig", 2),
            ("Versions", 2),
        ];
        let counts: Vec<(&str, i32)> = counts.into_iter().collect();
        assert_eq!(counts, expected);
    }

    /// Our own fixtures, which always exist, each parse as their kind.
    #[test]
    fn every_fixture_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/wire");
        let mut files = Vec::new();
        xml_files(&dir, false, &mut files);
        let mut parsed = 0;
        for path in &files {
            let Some(kind) = kind(path) else { continue };
            let text = std::fs::read_to_string(path).expect("readable fixture");
            if let Err(e) = parse_as(kind, &text) {
                panic!("{}: {e}", path.display());
            }
            parsed += 1;
        }
        assert!(parsed >= 9, "only {parsed} fixtures found");
    }
}
