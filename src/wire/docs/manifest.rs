//! `PluginVersionManifest`: the extension (or agent) manifest, fetched from
//! a plugin's `location`/`failoverlocation`/`additionalLocations` or from a
//! GAFamily `Uri` in ExtensionsConfig (§6.7). It lists the versions of one
//! handler and where their zip packages are; version selection (§13.8) and
//! agent self-update (§14) choose from it.

use super::{flag, parse_root, DocError};
use crate::xml::Node;

const DOCUMENT: &str = "ExtensionManifest";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionManifest {
    /// `Plugins/Plugin`: the public versions.
    pub plugins: Vec<ManifestPlugin>,
    /// `InternalPlugins/Plugin`: versions only 2.2.5's selection considers.
    pub internal_plugins: Vec<ManifestPlugin>,
}

/// One version of the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPlugin {
    /// `Version`, as written (`1.0.0`, `3.1`, `4.0.0.1`).
    pub version: String,
    /// `Uris/Uri`: mirrors of the zip package. May be empty
    /// (`ga_manifest_no_uris.xml`); such a version cannot be downloaded.
    pub uris: Vec<String>,
    /// `DisallowMajorVersionUpgrade`, `true` in any case.
    pub disallow_major_version_upgrade: bool,
}

impl ExtensionManifest {
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "PluginVersionManifest")?;
        let manifest = root.node(DOCUMENT);
        let list = |rel: &str| -> Result<Vec<ManifestPlugin>, DocError> {
            manifest.all(rel).iter().map(ManifestPlugin::read).collect()
        };
        Ok(ExtensionManifest {
            plugins: list("Plugins/Plugin")?,
            internal_plugins: list("InternalPlugins/Plugin")?,
        })
    }
}

impl ManifestPlugin {
    /// A version without a `Version` is refused: nothing could select it.
    fn read(plugin: &Node<'_>) -> Result<Self, DocError> {
        Ok(ManifestPlugin {
            version: plugin.req_text("Version")?,
            uris: plugin
                .all("Uris/Uri")
                .iter()
                .map(|u| u.text().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            disallow_major_version_upgrade: flag(
                plugin.opt_text("DisallowMajorVersionUpgrade").as_deref(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    fn versions(plugins: &[ManifestPlugin]) -> Vec<&str> {
        plugins.iter().map(|p| p.version.as_str()).collect()
    }

    #[test]
    fn fixture_manifest() {
        let m = ExtensionManifest::parse(&fixture("manifest.xml")).unwrap();
        assert_eq!(versions(&m.plugins), ["1.0.0", "1.1.0", "2.0.0"]);
        assert_eq!(
            m.plugins[0].uris,
            [
                "https://rsteststore1.blob.core.windows.net/pkgs/Contoso.Test.EchoHandler__1.0.0.zip",
                "https://rsteststore2.blob.core.windows.net/pkgs/Contoso.Test.EchoHandler__1.0.0.zip"
            ]
        );
        assert!(!m.plugins[0].disallow_major_version_upgrade);
        assert!(m.plugins[2].disallow_major_version_upgrade);
        assert_eq!(versions(&m.internal_plugins), ["1.2.0"]);
    }

    #[test]
    fn version_is_required() {
        let e = ExtensionManifest::parse(
            "<PluginVersionManifest><Plugins><Plugin><Version>1.0</Version></Plugin>\
             <Plugin><Uris><Uri>u</Uri></Uris></Plugin></Plugins></PluginVersionManifest>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "ExtensionManifest: /PluginVersionManifest/Plugins/Plugin[2]/Version: missing"
        );
    }

    #[test]
    fn sample_extension_manifests() {
        let Some(text) = sample("wire/manifest.xml") else {
            return;
        };
        let m = ExtensionManifest::parse(&text).unwrap();
        assert_eq!(m.plugins.len(), 13);
        assert_eq!(m.plugins[5].version, "2.1.0");
        assert!(m.plugins[5].disallow_major_version_upgrade);
        assert_eq!(
            m.plugins
                .iter()
                .filter(|p| p.disallow_major_version_upgrade)
                .count(),
            1
        );
        assert_eq!(
            m.plugins[0].uris,
            ["http://mock-goal-state/foo.bar/zar/OSTCExtensions.ExampleHandlerLinux__1.0.0"]
        );
        assert!(!m.internal_plugins.is_empty());
        assert_eq!(m.internal_plugins[0].version, "1.3.0");

        let old = sample("v2.2.5/wire/manifest.xml").unwrap();
        let m = ExtensionManifest::parse(&old).unwrap();
        assert_eq!(m.plugins.len(), 11);
        assert_eq!(versions(&m.internal_plugins), ["1.2.0", "2.3.0", "2.4.0"]);

        let one = sample("wire/manifest_deletion.xml").unwrap();
        let m = ExtensionManifest::parse(&one).unwrap();
        assert_eq!(versions(&m.plugins), ["1.0.0"]);
        assert!(m.internal_plugins.is_empty());
    }

    #[test]
    fn sample_agent_manifests() {
        let Some(text) = sample("wire/ga_manifest.xml") else {
            return;
        };
        let m = ExtensionManifest::parse(&text).unwrap();
        assert_eq!(
            m.plugins.last().map(|p| p.version.as_str()),
            Some("99999.0.0.0")
        );
        assert_eq!(
            m.plugins[6].uris,
            ["http://mock-goal-state/ga-manifests/OSTCExtensions.WALinuxAgent__9.9.9.10"]
        );

        let no_uris = sample("wire/ga_manifest_no_uris.xml").unwrap();
        let m = ExtensionManifest::parse(&no_uris).unwrap();
        let last = m.plugins.last().unwrap();
        assert_eq!((last.version.as_str(), last.uris.len()), ("99999.0.0.0", 0));
    }
}
