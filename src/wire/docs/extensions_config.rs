//! `Extensions`: the ExtensionsConfig document, fetched from the goal state's
//! `RoleInstance/Configuration/ExtensionsConfig` URL (§5.6, §6.6). It says
//! which agent families exist (self-update, §14), which handlers to run in
//! which state with which settings (§13), and where to upload status (§12).
//!
//! # Refused documents versus invalid handlers
//!
//! Following the current agent (§6.6), problems that concern one handler do
//! not refuse the document: the [`Plugin`] is kept with
//! [`Plugin::invalid_reason`] set, so it is reported as failed while the
//! other handlers still run and CRP gets an answer instead of a time-out.
//! That is the case for every file in the samples' `invalid_config/`:
//!
//! * `PluginSettings` entries whose version differs from the plugin's
//!   (`ext_conf_plugin_settings_version_mismatch.xml`);
//! * several `PluginSettings` entries for one handler
//!   (`ext_conf_multiple_settings_for_same_handler.xml`);
//! * several `RuntimeSettings` (`ext_conf_multiple_runtime_settings_same_plugin.xml`);
//! * both `RuntimeSettings` and `ExtensionRuntimeSettings`
//!   (`ext_conf_single_and_multi_config_settings_same_plugin.xml`,
//!   and the first handler of `ext_conf_invalid_and_valid_handlers.xml`);
//! * several `DependsOn` for a single-config handler
//!   (`ext_conf_multiple_depends_on_for_single_handler.xml`);
//! * a missing or unknown `state`, a missing `seqNo`, a multi-config
//!   `ExtensionRuntimeSettings` or `DependsOn` without a `name`.
//!
//! The document itself is refused ([`DocError`]) only when it is not
//! well-formed, its root is not `Extensions`, a plugin has no `name` or
//! `version` (nothing could even be reported for it), a GAFamily or a
//! RequiredFeature has no `Name`, or a `seqNo` is present but not a
//! non-negative whole number (waagent's `int()` fails outside its per-handler
//! handling there, failing the whole goal state). No sample is refused.
//!
//! Plugins are matched to `PluginSettings` by name case-insensitively, as the
//! current agent does (`ext_conf_settings_case_mismatch.xml`; 2.2.5 compared
//! exactly), and the runtime settings JSON is kept as raw text: the agent
//! never interprets it beyond handing it to the handler (§13.5).

use log::warn;

use super::{flag, parse_root, DocError};
use crate::xml::Node;

const DOCUMENT: &str = "ExtensionsConfig";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionsConfig {
    /// `GuestAgentExtension/GAFamilies/GAFamily`: agent update channels.
    pub ga_families: Vec<GaFamily>,
    /// `RequiredFeatures/RequiredFeature`: if the agent lacks one, the whole
    /// goal state fails (§13.2).
    pub required_features: Vec<RequiredFeature>,
    /// `StatusUploadBlob`: where the aggregate status goes. `None` when
    /// absent or empty (the current agent then refreshes the goal state).
    pub status_upload_blob: Option<StatusUploadBlob>,
    /// `Plugins/Plugin` in document order, with their settings attached.
    pub plugins: Vec<Plugin>,
    /// `InVMArtifactsProfileBlob`: URL of the `onHold` profile (§13.11);
    /// `None` when absent or blank (`ext_conf_in_vm_empty_artifacts_profile.xml`).
    pub in_vm_artifacts_profile_blob: Option<String>,
    /// `InVMGoalStateMetaData`, when present.
    pub in_vm_goal_state_metadata: Option<InVmGoalStateMetadata>,
}

/// One `GAFamily`: a channel of agent versions (`Prod`, `Test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaFamily {
    pub name: String,
    /// `Version`: the agent version CRP asks for (current agents only).
    pub version: Option<String>,
    /// `IsVersionFromRSM`, `true` in any case.
    pub is_version_from_rsm: bool,
    /// `IsVMEnabledForRSMUpgrades`, `true` in any case.
    pub is_vm_enabled_for_rsm_upgrades: bool,
    /// `Uris/Uri`: agent manifest URLs. Empty in `ext_conf_missing_family.xml`
    /// (self-update is then skipped).
    pub uris: Vec<String>,
}

/// One `RequiredFeature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredFeature {
    /// `Name` (`MultipleExtensionsPerHandler`).
    pub name: String,
    /// `Value` (a version such as `3.0`); usually absent.
    pub value: Option<String>,
}

/// `StatusUploadBlob`: a SAS URL and the kind of blob behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUploadBlob {
    pub url: String,
    /// `@statusBlobType`; absent or unknown means `BlockBlob` (waagent logs
    /// and assumes BlockBlob).
    pub blob_type: StatusBlobType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusBlobType {
    BlockBlob,
    PageBlob,
}

impl StatusBlobType {
    /// The protocol's spelling, for `x-ms-blob-type` and the HostGAPlugin envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusBlobType::BlockBlob => "BlockBlob",
            StatusBlobType::PageBlob => "PageBlob",
        }
    }
}

/// `Plugin@state`: what CRP wants done with the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    Enabled,
    Disabled,
    Uninstall,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Enabled => "enabled",
            PluginState::Disabled => "disabled",
            PluginState::Uninstall => "uninstall",
        }
    }
}

/// One handler (`Plugins/Plugin`) and its `PluginSettings` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// `@name`: `{Publisher}.{Type}`.
    pub name: String,
    /// `@version`: the requested version.
    pub version: String,
    /// `@location`: manifest URL.
    pub location: Option<String>,
    /// `@failoverlocation`: manifest mirror.
    pub failover_location: Option<String>,
    /// `additionalLocations/additionalLocation`: more manifest mirrors.
    pub additional_locations: Vec<String>,
    /// `@state`; `None` only when it is missing or unknown, and then
    /// `invalid_reason` says so.
    pub state: Option<PluginState>,
    /// `@autoUpgrade`: minor upgrades allowed (2.2.5's "auto" policy).
    pub auto_upgrade: bool,
    /// `@useExactVersion`: the version is exact (or a prefix), never
    /// upgraded; CRP always sends it today (§13.8).
    pub use_exact_version: bool,
    /// `@isJson`.
    pub is_json: bool,
    /// `@encodedSignature`: base64 PKCS#7 signature of the package.
    pub encoded_signature: Option<String>,
    /// The settings came as `ExtensionRuntimeSettings` (several named
    /// extensions, §13.12) rather than one `RuntimeSettings`.
    pub multi_config: bool,
    /// `PluginSettings/Plugin/DependsOn`: ordering between handlers.
    pub depends_on: Vec<Dependency>,
    /// The runtime settings, one per extension. Empty for a handler without
    /// settings (it still runs, with an empty `0.settings`) or an invalid one.
    pub settings: Vec<ExtensionSettings>,
    /// Why this handler cannot be run; it must be reported as failed.
    /// `settings` and `depends_on` are empty when this is set.
    pub invalid_reason: Option<String>,
}

impl Plugin {
    /// Manifest URLs in the order to try them: `location`,
    /// `failoverlocation`, then `additionalLocations`.
    pub fn manifest_uris(&self) -> Vec<&str> {
        self.location
            .iter()
            .chain(&self.failover_location)
            .chain(&self.additional_locations)
            .map(String::as_str)
            .collect()
    }

    /// The dependency level of one of this handler's extensions: the
    /// `DependsOn` named after it (multi-config) or the handler's only one
    /// (single-config); 0 without any.
    pub fn dependency_level(&self, settings: &ExtensionSettings) -> u32 {
        self.depends_on
            .iter()
            .find(|d| d.extension_name == settings.name)
            .map_or(0, |d| d.dependency_level)
    }
}

/// One `DependsOn`: the extensions that must succeed before this one runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// `@name`: which extension of a multi-config handler this is for;
    /// `None` for a single-config handler.
    pub extension_name: Option<String>,
    /// `@dependencyLevel`: enables run in ascending level order. Unreadable
    /// means 0, with a warning, as in waagent.
    pub dependency_level: u32,
    /// `DependsOnExtension` entries (informational: waagent orders by level only).
    pub depends_on: Vec<DependsOnExtension>,
}

/// One `DependsOnExtension`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependsOnExtension {
    /// `@handler`: the handler depended on.
    pub handler: String,
    /// `@extension`: which of its extensions, when it is multi-config.
    pub extension: Option<String>,
}

/// The requested state of one extension of a multi-config handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionState {
    Enabled,
    Disabled,
}

/// One set of runtime settings: a `RuntimeSettings` (single-config) or an
/// `ExtensionRuntimeSettings` (multi-config) element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionSettings {
    /// `@name` of an `ExtensionRuntimeSettings`; `None` for single-config.
    pub name: Option<String>,
    /// `@seqNo`: the sequence number (`config/{seqNo}.settings`).
    pub seq_no: u64,
    /// `@state` of an `ExtensionRuntimeSettings` (default enabled); always
    /// `Enabled` for single-config, whose state is the plugin's.
    pub state: ExtensionState,
    /// The element's text, trimmed: the `{"runtimeSettings": [...]}` JSON,
    /// unparsed. May be empty.
    pub runtime_settings: String,
}

/// `InVMGoalStateMetaData`: when and why CRP made this goal state.
///
/// Each value is read on its own and is `None` when absent, blank or
/// unreadable (with a warning): the current agent falls back per value
/// (ids `00000000-…`, time 1900-01-01) rather than dropping the element, and
/// the multi-config samples carry valid ticks without any ids, which must
/// not be lost (the newer of ExtensionsConfig and vmSettings is chosen by
/// `createdOnTicks`, §5.2). `createdOnTicks="0"`
/// (`ext_conf_invalid_vm_metadata.xml`) is `None` too: waagent clamps it to
/// its "unknown" minimum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InVmGoalStateMetadata {
    /// `@inSvdSeqNo`: echoed in the status blob.
    pub in_svd_seq_no: Option<u64>,
    /// `@createdOnTicks`: .NET ticks (100 ns since 0001-01-01 UTC).
    pub created_on_ticks: Option<u64>,
    /// `@activityId`, for telemetry.
    pub activity_id: Option<String>,
    /// `@correlationId`, for telemetry.
    pub correlation_id: Option<String>,
}

impl ExtensionsConfig {
    pub fn parse(xml: &str) -> Result<Self, DocError> {
        let root = parse_root(DOCUMENT, xml, "Extensions")?;
        let ext = root.node(DOCUMENT);
        let all_settings = ext.all("PluginSettings/Plugin");
        Ok(ExtensionsConfig {
            ga_families: ext
                .all("GuestAgentExtension/GAFamilies/GAFamily")
                .iter()
                .map(GaFamily::read)
                .collect::<Result<_, _>>()?,
            required_features: ext
                .all("RequiredFeatures/RequiredFeature")
                .iter()
                .map(|f| {
                    Ok(RequiredFeature {
                        name: f.req_text("Name")?,
                        value: f.opt_text("Value"),
                    })
                })
                .collect::<Result<_, DocError>>()?,
            status_upload_blob: ext
                .get("StatusUploadBlob")
                .and_then(|b| StatusUploadBlob::read(&b)),
            plugins: ext
                .all("Plugins/Plugin")
                .iter()
                .map(|p| Plugin::read(p, &all_settings))
                .collect::<Result<_, _>>()?,
            in_vm_artifacts_profile_blob: ext.opt_text("InVMArtifactsProfileBlob"),
            in_vm_goal_state_metadata: ext
                .get("InVMGoalStateMetaData")
                .map(|m| InVmGoalStateMetadata::read(&m)),
        })
    }
}

/// Non-blank texts of the elements at `rel`.
fn texts(node: &Node<'_>, rel: &str) -> Vec<String> {
    node.all(rel)
        .iter()
        .map(|n| n.text().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

impl GaFamily {
    fn read(family: &Node<'_>) -> Result<Self, DocError> {
        Ok(GaFamily {
            name: family.req_text("Name")?,
            version: family.opt_text("Version"),
            is_version_from_rsm: flag(family.opt_text("IsVersionFromRSM").as_deref()),
            is_vm_enabled_for_rsm_upgrades: flag(
                family.opt_text("IsVMEnabledForRSMUpgrades").as_deref(),
            ),
            uris: texts(family, "Uris/Uri"),
        })
    }
}

impl StatusUploadBlob {
    fn read(blob: &Node<'_>) -> Option<Self> {
        let url = blob.text();
        if url.is_empty() {
            return None;
        }
        let blob_type = match blob.attr("statusBlobType").map(str::trim) {
            None | Some("") | Some("BlockBlob") => StatusBlobType::BlockBlob,
            Some("PageBlob") => StatusBlobType::PageBlob,
            Some(other) => {
                warn!(
                    "{}: {}/@statusBlobType: unknown blob type {other:?}, assuming BlockBlob",
                    DOCUMENT,
                    blob.path()
                );
                StatusBlobType::BlockBlob
            }
        };
        Some(StatusUploadBlob {
            url: url.to_string(),
            blob_type,
        })
    }
}

/// Why reading one handler stopped.
enum Problem {
    /// The handler is invalid: report it failed, run the others.
    Handler(String),
    /// The whole document is unusable.
    Document(DocError),
}

impl From<DocError> for Problem {
    fn from(e: DocError) -> Self {
        Problem::Document(e)
    }
}

impl Plugin {
    fn read(plugin: &Node<'_>, all_settings: &[Node<'_>]) -> Result<Self, DocError> {
        let mut p = Plugin {
            name: plugin.req_attr("name")?,
            version: plugin.req_attr("version")?,
            location: plugin.opt_attr("location"),
            failover_location: plugin.opt_attr("failoverlocation"),
            additional_locations: texts(plugin, "additionalLocations/additionalLocation"),
            state: None,
            auto_upgrade: flag(plugin.attr("autoUpgrade")),
            use_exact_version: flag(plugin.attr("useExactVersion")),
            is_json: flag(plugin.attr("isJson")),
            encoded_signature: plugin.opt_attr("encodedSignature"),
            multi_config: false,
            depends_on: Vec::new(),
            settings: Vec::new(),
            invalid_reason: None,
        };
        match p
            .read_state(plugin)
            .and_then(|()| p.read_settings(all_settings))
        {
            Ok(()) => Ok(p),
            Err(Problem::Handler(reason)) => {
                p.settings.clear();
                p.depends_on.clear();
                p.invalid_reason = Some(reason);
                Ok(p)
            }
            Err(Problem::Document(e)) => Err(e),
        }
    }

    fn read_state(&mut self, plugin: &Node<'_>) -> Result<(), Problem> {
        self.state = Some(match plugin.attr("state").map(str::trim) {
            None | Some("") => return Err(Problem::Handler("state is missing".into())),
            Some("enabled") => PluginState::Enabled,
            Some("disabled") => PluginState::Disabled,
            Some("uninstall") => PluginState::Uninstall,
            Some(other) => {
                return Err(Problem::Handler(format!(
                    "unknown state {other:?} (expected enabled, disabled or uninstall)"
                )))
            }
        });
        Ok(())
    }

    /// Finds this handler's `PluginSettings` entry and reads it, applying
    /// the current agent's validity rules (see the module comment).
    fn read_settings(&mut self, all_settings: &[Node<'_>]) -> Result<(), Problem> {
        let name = self.name.to_lowercase();
        let entries: Vec<&Node<'_>> = all_settings
            .iter()
            .filter(|s| {
                s.attr("name")
                    .is_some_and(|n| n.trim().to_lowercase() == name)
            })
            .collect();
        let Some(entry) = entries.first() else {
            return Ok(()); // a handler without settings is valid
        };
        let mut others: Vec<&str> = entries
            .iter()
            .map(|s| s.attr("version").map_or("", str::trim))
            .filter(|v| *v != self.version)
            .collect();
        if !others.is_empty() {
            others.sort_unstable();
            others.dedup();
            return Err(Problem::Handler(format!(
                "PluginSettings version mismatch: expected {} but found {}",
                self.version,
                others.join(", ")
            )));
        }
        if entries.len() > 1 {
            return Err(Problem::Handler(format!(
                "{} PluginSettings entries for version {} (expected 1)",
                entries.len(),
                self.version
            )));
        }

        let single = entry.all("RuntimeSettings");
        let multi = entry.all("ExtensionRuntimeSettings");
        let depends = entry.all("DependsOn");
        if !single.is_empty() && !multi.is_empty() {
            return Err(Problem::Handler(
                "both RuntimeSettings and ExtensionRuntimeSettings (a handler is single- or multi-config)"
                    .into(),
            ));
        }
        if let Some(runtime) = single.first() {
            if single.len() > 1 {
                return Err(Problem::Handler(format!(
                    "{} RuntimeSettings (expected 1)",
                    single.len()
                )));
            }
            if depends.len() > 1 {
                return Err(Problem::Handler(format!(
                    "{} DependsOn for a single-config handler (expected at most 1)",
                    depends.len()
                )));
            }
            self.depends_on = depends.iter().map(|d| Dependency::read(d, None)).collect();
            self.settings.push(ExtensionSettings::read(
                runtime,
                None,
                ExtensionState::Enabled,
            )?);
        } else if !multi.is_empty() {
            self.multi_config = true;
            for d in &depends {
                let name = d.opt_attr("name").ok_or_else(|| {
                    Problem::Handler("DependsOn without a name in a multi-config handler".into())
                })?;
                self.depends_on.push(Dependency::read(d, Some(name)));
            }
            for s in &multi {
                let name = s.opt_attr("name").ok_or_else(|| {
                    Problem::Handler("ExtensionRuntimeSettings without a name".into())
                })?;
                let state = match s.attr("state").map(|v| v.trim().to_lowercase()).as_deref() {
                    None | Some("") | Some("enabled") => ExtensionState::Enabled,
                    Some("disabled") => ExtensionState::Disabled,
                    Some(other) => {
                        return Err(Problem::Handler(format!(
                        "extension {name}: unknown state {other:?} (expected enabled or disabled)"
                    )))
                    }
                };
                self.settings
                    .push(ExtensionSettings::read(s, Some(name), state)?);
            }
        }
        Ok(())
    }
}

impl Dependency {
    fn read(depends_on: &Node<'_>, extension_name: Option<String>) -> Self {
        let raw = depends_on.attr("dependencyLevel").map_or("", str::trim);
        let dependency_level = raw.parse().unwrap_or_else(|_| {
            warn!(
                "{}: {}/@dependencyLevel: cannot read {raw:?}, using 0",
                DOCUMENT,
                depends_on.path()
            );
            0
        });
        Dependency {
            extension_name,
            dependency_level,
            depends_on: depends_on
                .all("DependsOnExtension")
                .iter()
                .filter_map(|e| {
                    Some(DependsOnExtension {
                        handler: e.opt_attr("handler")?,
                        extension: e.opt_attr("extension"),
                    })
                })
                .collect(),
        }
    }
}

impl ExtensionSettings {
    fn read(
        settings: &Node<'_>,
        name: Option<String>,
        state: ExtensionState,
    ) -> Result<Self, Problem> {
        let seq_no = match settings.attr("seqNo").map(str::trim) {
            None | Some("") => {
                let which = name
                    .as_deref()
                    .map_or(String::new(), |n| format!(" of {n}"));
                return Err(Problem::Handler(format!("seqNo{which} is missing")));
            }
            Some(raw) => raw.parse().map_err(|_| {
                settings.error_at("@seqNo", format!("not a sequence number: {raw:?}"))
            })?,
        };
        Ok(ExtensionSettings {
            name,
            seq_no,
            state,
            runtime_settings: settings.text().to_string(),
        })
    }
}

impl InVmGoalStateMetadata {
    fn read(metadata: &Node<'_>) -> Self {
        let number = |attr: &str| -> Option<u64> {
            let raw = metadata.opt_attr(attr)?;
            match raw.parse() {
                Ok(n) => Some(n),
                Err(_) => {
                    warn!(
                        "{}: {}/@{attr}: not a number: {raw:?}; ignored",
                        DOCUMENT,
                        metadata.path()
                    );
                    None
                }
            }
        };
        InVmGoalStateMetadata {
            in_svd_seq_no: number("inSvdSeqNo"),
            created_on_ticks: number("createdOnTicks").filter(|t| *t != 0),
            activity_id: metadata.opt_attr("activityId"),
            correlation_id: metadata.opt_attr("correlationId"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{fixture, sample};
    use super::*;

    /// A minimal document with the given `Plugins` and `PluginSettings` bodies.
    fn doc(plugins: &str, settings: &str) -> String {
        format!(
            "<Extensions><Plugins>{plugins}</Plugins>\
             <PluginSettings>{settings}</PluginSettings></Extensions>"
        )
    }

    const PLUGIN: &str =
        r#"<Plugin name="Pub.Handler" version="1.0" state="enabled" location="http://m/1" />"#;

    fn only_plugin(settings: &str) -> Plugin {
        let mut ec = ExtensionsConfig::parse(&doc(PLUGIN, settings)).unwrap();
        assert_eq!(ec.plugins.len(), 1);
        ec.plugins.remove(0)
    }

    fn invalid_reason(settings: &str) -> String {
        let p = only_plugin(settings);
        assert!(p.settings.is_empty() && p.depends_on.is_empty());
        p.invalid_reason.expect("handler should be invalid")
    }

    #[test]
    fn fixture_ga_families_features_and_blobs() {
        let ec = ExtensionsConfig::parse(&fixture("ext_conf.xml")).unwrap();
        assert_eq!(ec.ga_families.len(), 2);
        let prod = &ec.ga_families[0];
        assert_eq!(prod.name, "Prod");
        assert_eq!(prod.version.as_deref(), Some("2.13.1.1"));
        assert!(!prod.is_version_from_rsm && prod.is_vm_enabled_for_rsm_upgrades);
        assert_eq!(
            prod.uris,
            [
                "https://rsteststore1.blob.core.windows.net/agents/Contoso.TestAgent_Prod_manifest.xml",
                "https://rsteststore2.blob.core.windows.net/agents/Contoso.TestAgent_Prod_manifest.xml"
            ]
        );
        let test = &ec.ga_families[1];
        assert_eq!(
            (test.name.as_str(), test.version.as_deref()),
            ("Test", None)
        );
        assert!(!test.is_version_from_rsm && !test.is_vm_enabled_for_rsm_upgrades);

        assert_eq!(
            ec.required_features,
            [RequiredFeature {
                name: "MultipleExtensionsPerHandler".into(),
                value: None
            }]
        );
        let blob = ec.status_upload_blob.unwrap();
        assert_eq!(blob.blob_type, StatusBlobType::PageBlob);
        assert_eq!(blob.blob_type.as_str(), "PageBlob");
        assert_eq!(
            blob.url,
            "https://rsteststatus.blob.core.windows.net/$system/rs-test-vm.5f0c8a1e.status?sv=2018-03-28&sr=b&sk=system-1&sig=c2lnbmF0dXJl%3d&se=9999-01-01T00%3a00%3a00Z&sp=w"
        );
        assert_eq!(
            ec.in_vm_artifacts_profile_blob.as_deref(),
            Some("https://rsteststatus.blob.core.windows.net/$system/rs-test-vm.5f0c8a1e.vmSettings?sv=2018-03-28&sr=b&sk=system-1&sig=cHJvZmlsZQ%3d%3d&se=9999-01-01T00%3a00%3a00Z&sp=r")
        );
        assert_eq!(
            ec.in_vm_goal_state_metadata,
            Some(InVmGoalStateMetadata {
                in_svd_seq_no: Some(7),
                created_on_ticks: Some(638_700_000_000_000_000),
                activity_id: Some("0a8e6a52-6a53-4c1e-9f0e-2b9c5d3e7f10".into()),
                correlation_id: Some("e4d3c2b1-a098-4f76-8e5d-4c3b2a190817".into()),
            })
        );
    }

    #[test]
    fn fixture_single_config_plugin() {
        let ec = ExtensionsConfig::parse(&fixture("ext_conf.xml")).unwrap();
        assert_eq!(ec.plugins.len(), 2);
        let echo = &ec.plugins[0];
        assert_eq!(
            (echo.name.as_str(), echo.version.as_str()),
            ("Contoso.Test.EchoHandler", "1.0.0")
        );
        assert_eq!(echo.state, Some(PluginState::Enabled));
        assert!(echo.auto_upgrade && echo.is_json && !echo.multi_config);
        // autoUpgrade with useExactVersion: no upgrades (§13.8).
        assert!(echo.use_exact_version);
        assert_eq!(
            crate::ext::plan::VersionRule::of(echo),
            crate::ext::plan::VersionRule::Exact
        );
        assert_eq!(echo.invalid_reason, None);
        assert_eq!(
            echo.encoded_signature.as_deref(),
            Some("MIIBPAYJKoZIhvcNAQcCoIIBLTCCASkCAQExDzANBglghkgBZQMEAgEFADALBgkqhkiG9w0BBwE=")
        );
        assert_eq!(
            echo.manifest_uris(),
            [
                "https://rsteststore1.blob.core.windows.net/handlers/Contoso.Test_EchoHandler_manifest.xml",
                "https://rsteststore2.blob.core.windows.net/handlers/Contoso.Test_EchoHandler_manifest.xml",
                "https://rsteststore3.blob.core.windows.net/handlers/Contoso.Test_EchoHandler_manifest.xml"
            ]
        );
        assert_eq!(
            echo.depends_on,
            [Dependency {
                extension_name: None,
                dependency_level: 2,
                depends_on: vec![DependsOnExtension {
                    handler: "Contoso.Test.MultiHandler".into(),
                    extension: Some("second".into())
                }]
            }]
        );
        assert_eq!(echo.settings.len(), 1);
        let s = &echo.settings[0];
        assert_eq!(
            (s.name.as_deref(), s.seq_no, s.state),
            (None, 4, ExtensionState::Enabled)
        );
        assert!(s
            .runtime_settings
            .starts_with("{\n  \"runtimeSettings\": ["));
        assert!(s.runtime_settings.contains("\"hello & goodbye\""));
        let json: serde_json::Value = serde_json::from_str(&s.runtime_settings).unwrap();
        assert_eq!(
            json["runtimeSettings"][0]["handlerSettings"]["protectedSettingsCertThumbprint"],
            "3C5A1F0E9B7D24C68E1F0A2B3C4D5E6F70819203"
        );
        assert_eq!(echo.dependency_level(s), 2);
    }

    #[test]
    fn fixture_multi_config_plugin() {
        let ec = ExtensionsConfig::parse(&fixture("ext_conf.xml")).unwrap();
        let multi = &ec.plugins[1];
        assert_eq!(
            (multi.name.as_str(), multi.version.as_str()),
            ("Contoso.Test.MultiHandler", "2.1.0")
        );
        assert!(multi.multi_config && !multi.auto_upgrade);
        assert_eq!(multi.encoded_signature, None);
        assert_eq!(multi.additional_locations, Vec::<String>::new());
        let summary: Vec<_> = multi
            .settings
            .iter()
            .map(|s| {
                (
                    s.name.as_deref(),
                    s.seq_no,
                    s.state,
                    multi.dependency_level(s),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("first"), 3, ExtensionState::Enabled, 0),
                (Some("second"), 1, ExtensionState::Disabled, 1)
            ]
        );
        assert_eq!(
            multi.settings[1].runtime_settings,
            r#"{"runtimeSettings":[{"handlerSettings":{"publicSettings":{"script":"echo second"}}}]}"#
        );
    }

    #[test]
    fn fixture_without_extensions() {
        let ec = ExtensionsConfig::parse(&fixture("ext_conf_no_extensions.xml")).unwrap();
        assert!(ec.plugins.is_empty() && ec.required_features.is_empty());
        assert_eq!(ec.ga_families.len(), 1);
        let blob = ec.status_upload_blob.unwrap();
        assert_eq!(blob.blob_type, StatusBlobType::BlockBlob);
        assert!(blob
            .url
            .ends_with("?sr=b&sp=rw&se=9999-01-01&sk=key1&sv=2014-02-14&sig=c2lnbmF0dXJl"));
        assert_eq!(ec.in_vm_artifacts_profile_blob, None);
    }

    #[test]
    fn plugins_without_settings_are_valid() {
        let p = only_plugin("");
        assert_eq!(
            (
                p.invalid_reason.as_deref(),
                p.settings.len(),
                p.multi_config
            ),
            (None, 0, false)
        );
        assert_eq!(
            (p.auto_upgrade, p.is_json, p.failover_location.as_deref()),
            (false, false, None)
        );
        assert_eq!(p.manifest_uris(), ["http://m/1"]);
    }

    #[test]
    fn settings_match_plugin_names_case_insensitively() {
        let p = only_plugin(
            r#"<Plugin name="pub.HANDLER" version="1.0"><RuntimeSettings seqNo="5">{}</RuntimeSettings></Plugin>"#,
        );
        assert_eq!(p.invalid_reason, None);
        assert_eq!(
            (
                p.settings[0].seq_no,
                p.settings[0].runtime_settings.as_str()
            ),
            (5, "{}")
        );
    }

    #[test]
    fn invalid_handlers_keep_the_document() {
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.1"><RuntimeSettings seqNo="0"/></Plugin><Plugin name="Pub.Handler" version="1.2"/>"#
            ),
            "PluginSettings version mismatch: expected 1.0 but found 1.1, 1.2"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"/><Plugin name="Pub.Handler" version="1.0"/>"#
            ),
            "2 PluginSettings entries for version 1.0 (expected 1)"
        );
        assert_eq!(
            invalid_reason(r#"<Plugin name="Pub.Handler" version="1.0"><RuntimeSettings seqNo="0"/><ExtensionRuntimeSettings seqNo="0" name="a"/></Plugin>"#),
            "both RuntimeSettings and ExtensionRuntimeSettings (a handler is single- or multi-config)"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><RuntimeSettings seqNo="0"/><RuntimeSettings seqNo="1"/></Plugin>"#
            ),
            "2 RuntimeSettings (expected 1)"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><DependsOn dependencyLevel="1"/><DependsOn dependencyLevel="2"/><RuntimeSettings seqNo="0"/></Plugin>"#
            ),
            "2 DependsOn for a single-config handler (expected at most 1)"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><RuntimeSettings>{}</RuntimeSettings></Plugin>"#
            ),
            "seqNo is missing"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><ExtensionRuntimeSettings seqNo=" " name="x"/></Plugin>"#
            ),
            "seqNo of x is missing"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><ExtensionRuntimeSettings seqNo="1"/></Plugin>"#
            ),
            "ExtensionRuntimeSettings without a name"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><DependsOn dependencyLevel="1"/><ExtensionRuntimeSettings seqNo="1" name="a"/></Plugin>"#
            ),
            "DependsOn without a name in a multi-config handler"
        );
        assert_eq!(
            invalid_reason(
                r#"<Plugin name="Pub.Handler" version="1.0"><ExtensionRuntimeSettings seqNo="1" name="a" state="paused"/></Plugin>"#
            ),
            "extension a: unknown state \"paused\" (expected enabled or disabled)"
        );
    }

    #[test]
    fn plugin_state_is_checked_per_handler() {
        let ec = ExtensionsConfig::parse(&doc(
            r#"<Plugin name="A" version="1"/><Plugin name="B" version="1" state="Enabled"/><Plugin name="C" version="1" state="uninstall"/>"#,
            "",
        ))
        .unwrap();
        let states: Vec<_> = ec
            .plugins
            .iter()
            .map(|p| (p.state, p.invalid_reason.as_deref()))
            .collect();
        assert_eq!(
            states,
            [
                (None, Some("state is missing")),
                (
                    None,
                    Some("unknown state \"Enabled\" (expected enabled, disabled or uninstall)")
                ),
                (Some(PluginState::Uninstall), None)
            ]
        );
        assert_eq!(PluginState::Disabled.as_str(), "disabled");
    }

    #[test]
    fn document_is_refused_for_what_cannot_be_reported() {
        let e = ExtensionsConfig::parse(&doc(r#"<Plugin version="1.0" state="enabled"/>"#, ""));
        assert_eq!(
            e.unwrap_err().to_string(),
            "ExtensionsConfig: /Extensions/Plugins/Plugin[1]/@name: missing"
        );
        let e = ExtensionsConfig::parse(&doc(
            PLUGIN,
            r#"<Plugin name="Other" version="1"/><Plugin name="Pub.Handler" version="1.0"><RuntimeSettings seqNo="x1">{}</RuntimeSettings></Plugin>"#,
        ));
        assert_eq!(
            e.unwrap_err().to_string(),
            "ExtensionsConfig: /Extensions/PluginSettings/Plugin[2]/RuntimeSettings[1]/@seqNo: not a sequence number: \"x1\""
        );
        let e = ExtensionsConfig::parse(&doc(
            PLUGIN,
            r#"<Plugin name="Pub.Handler" version="1.0"><RuntimeSettings seqNo="-1"/></Plugin>"#,
        ));
        assert!(e
            .unwrap_err()
            .message
            .contains("not a sequence number: \"-1\""));
        let e = ExtensionsConfig::parse(
            "<Extensions><GuestAgentExtension><GAFamilies><GAFamily><Uris/></GAFamily></GAFamilies></GuestAgentExtension></Extensions>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "ExtensionsConfig: /Extensions/GuestAgentExtension/GAFamilies/GAFamily[1]/Name: missing"
        );
        let e = ExtensionsConfig::parse(
            "<Extensions><RequiredFeatures><RequiredFeature><Value>1</Value></RequiredFeature></RequiredFeatures></Extensions>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "ExtensionsConfig: /Extensions/RequiredFeatures/RequiredFeature[1]/Name: missing"
        );
    }

    #[test]
    fn unreadable_dependency_level_is_zero() {
        let p = only_plugin(
            r#"<Plugin name="Pub.Handler" version="1.0"><DependsOn dependencyLevel="high"><DependsOnExtension extension="e"/></DependsOn><RuntimeSettings seqNo="0"/></Plugin>"#,
        );
        assert_eq!(p.depends_on.len(), 1);
        assert_eq!(p.depends_on[0].dependency_level, 0);
        // An entry without a handler names nothing and is dropped.
        assert!(p.depends_on[0].depends_on.is_empty());
    }

    #[test]
    fn status_blob_type_defaults_to_block_blob() {
        let blob = |xml: &str| {
            ExtensionsConfig::parse(&format!("<Extensions>{xml}</Extensions>"))
                .unwrap()
                .status_upload_blob
        };
        assert_eq!(
            blob("<StatusUploadBlob>u</StatusUploadBlob>")
                .unwrap()
                .blob_type,
            StatusBlobType::BlockBlob
        );
        assert_eq!(
            blob("<StatusUploadBlob statusBlobType=\"AppendBlob\">u</StatusUploadBlob>")
                .unwrap()
                .blob_type,
            StatusBlobType::BlockBlob
        );
        assert_eq!(
            blob("<StatusUploadBlob statusBlobType=\"PageBlob\">  </StatusUploadBlob>"),
            None
        );
        assert_eq!(blob(""), None);
    }

    #[test]
    fn metadata_values_are_read_one_by_one() {
        let meta = |attrs: &str| {
            ExtensionsConfig::parse(&format!(
                "<Extensions><InVMGoalStateMetaData {attrs}/></Extensions>"
            ))
            .unwrap()
            .in_vm_goal_state_metadata
            .unwrap()
        };
        assert_eq!(
            meta(r#"inSvdSeqNo="x" createdOnTicks="0" activityId=" " correlationId="c""#),
            InVmGoalStateMetadata {
                correlation_id: Some("c".into()),
                ..Default::default()
            }
        );
        assert_eq!(meta(r#"createdOnTicks="12""#).created_on_ticks, Some(12));
    }

    #[test]
    fn sample_ext_conf() {
        let Some(text) = sample("wire/ext_conf.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let names: Vec<_> = ec.ga_families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Prod", "Test"]);
        assert_eq!(
            ec.ga_families[0].uris,
            ["http://mock-goal-state/manifest_of_ga.xml"]
        );
        assert_eq!(ec.plugins.len(), 1);
        let p = &ec.plugins[0];
        assert_eq!(
            (p.name.as_str(), p.version.as_str()),
            ("OSTCExtensions.ExampleHandlerLinux", "1.0.0")
        );
        assert_eq!(p.state, Some(PluginState::Enabled));
        assert!(!p.auto_upgrade && p.is_json && !p.use_exact_version);
        assert!(p
            .encoded_signature
            .as_deref()
            .is_some_and(|s| s.starts_with("MIInEAYJKoZIhvcNAQcCoIInATCCJv0CAQMx")));
        assert_eq!(
            p.location.as_deref(),
            Some("http://mock-goal-state/rdfepirv2hknprdstr03.blob.core.windows.net/b01058962be54ceca550a390fa5ff064/Microsoft.OSTCExtensions_ExampleHandlerLinux_asiaeast_manifest.xml")
        );
        assert_eq!(p.settings.len(), 1);
        assert_eq!(p.settings[0].seq_no, 0);
        assert_eq!(
            p.settings[0].runtime_settings,
            r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":"F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9","protectedSettings":"MIICWgYJK","publicSettings":{"foo":"bar"}}}]}"#
        );
        assert_eq!(
            ec.status_upload_blob,
            Some(StatusUploadBlob {
                url: "https://test.blob.core.windows.net/vhds/test-cs12.test-cs12.test-cs12.status?sr=b&sp=rw&se=9999-01-01&sk=key1&sv=2014-02-14&sig=hfRh7gzUE7sUtYwke78IOlZOrTRCYvkec4hGZ9zZzXo".into(),
                blob_type: StatusBlobType::BlockBlob
            })
        );
        assert_eq!(
            ec.in_vm_goal_state_metadata,
            Some(InVmGoalStateMetadata {
                in_svd_seq_no: Some(10),
                created_on_ticks: Some(637_726_657_706_205_217),
                activity_id: Some("a33f6f53-43d6-4625-b322-1a39651a00c9".into()),
                correlation_id: Some("9a47a2a2-e740-4bfc-b11b-4f2f7cfe7d2e".into()),
            })
        );

        let unsigned = sample("wire/ext_conf-no_encoded_signature.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&unsigned).unwrap().plugins[0].encoded_signature,
            None
        );
        let no_meta = sample("wire/ext_conf-no_gs_metadata.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&no_meta)
                .unwrap()
                .in_vm_goal_state_metadata,
            None
        );
    }

    #[test]
    fn sample_case_mismatch_settings_are_matched() {
        let Some(text) = sample("wire/ext_conf_settings_case_mismatch.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&text).unwrap();
        assert_eq!(ec.plugins.len(), 5);
        for p in &ec.plugins {
            assert_eq!(p.invalid_reason, None, "{}", p.name);
            assert_eq!(p.settings.len(), 1, "{}", p.name);
            assert!(p.settings[0]
                .runtime_settings
                .starts_with("{\"runtimeSettings\""));
        }
        // The URL is surrounded by whitespace in this sample.
        assert!(ec
            .status_upload_blob
            .unwrap()
            .url
            .starts_with("https://test.blob.core.windows.net/"));
    }

    #[test]
    fn sample_invalid_configs_mark_the_handler() {
        let cases = [
            (
                "ext_conf_plugin_settings_version_mismatch.xml",
                "version mismatch: expected 1.0.0 but found 1.0.1, 1.0.2",
            ),
            (
                "ext_conf_multiple_settings_for_same_handler.xml",
                "2 PluginSettings entries",
            ),
            (
                "ext_conf_multiple_runtime_settings_same_plugin.xml",
                "2 RuntimeSettings",
            ),
            (
                "ext_conf_single_and_multi_config_settings_same_plugin.xml",
                "both RuntimeSettings and ExtensionRuntimeSettings",
            ),
            (
                "ext_conf_multiple_depends_on_for_single_handler.xml",
                "2 DependsOn for a single-config handler",
            ),
        ];
        for (file, reason) in cases {
            let Some(text) = sample(&format!("wire/invalid_config/{file}")) else {
                return;
            };
            let ec = ExtensionsConfig::parse(&text).unwrap();
            let first = &ec.plugins[0];
            assert_eq!(first.name, "OSTCExtensions.ExampleHandlerLinux", "{file}");
            assert!(
                first
                    .invalid_reason
                    .as_deref()
                    .is_some_and(|r| r.contains(reason)),
                "{file}: {:?}",
                first.invalid_reason
            );
            assert!(
                ec.plugins[1..].iter().all(|p| p.invalid_reason.is_none()),
                "{file}"
            );
        }

        let text = sample("wire/ext_conf_invalid_and_valid_handlers.xml").unwrap();
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let validity: Vec<_> = ec
            .plugins
            .iter()
            .map(|p| (p.name.as_str(), p.invalid_reason.is_none()))
            .collect();
        assert_eq!(
            validity,
            [
                ("OSTCExtensions.InvalidExampleHandlerLinux", false),
                ("OSTCExtensions.ValidExampleHandlerLinux", true)
            ]
        );
    }

    #[test]
    fn sample_dependencies() {
        let Some(text) = sample("wire/ext_conf_sequencing.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let levels: Vec<_> = ec
            .plugins
            .iter()
            .map(|p| (p.name.as_str(), p.dependency_level(&p.settings[0])))
            .collect();
        assert_eq!(
            levels,
            [
                ("OSTCExtensions.ExampleHandlerLinux", 2),
                ("OSTCExtensions.OtherExampleHandlerLinux", 1)
            ]
        );
        assert_eq!(
            ec.plugins[0].depends_on[0].depends_on[0].handler,
            "OSTCExtensions.OtherExampleHandlerLinux"
        );
        assert!(ec.plugins[1].depends_on[0].depends_on.is_empty());

        let text = sample("wire/ext_conf_dependencies_with_empty_settings.xml").unwrap();
        let ec = ExtensionsConfig::parse(&text).unwrap();
        assert_eq!(ec.plugins[0].depends_on[0].dependency_level, 1);
        assert!(ec.plugins[1].settings.is_empty() && ec.plugins[1].invalid_reason.is_none());
    }

    #[test]
    fn sample_multi_config() {
        let Some(text) = sample("wire/multi-config/ext_conf_with_multi_config_dependencies.xml")
        else {
            return;
        };
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let mc = &ec.plugins[0];
        assert!(mc.multi_config && mc.invalid_reason.is_none());
        let levels: Vec<_> = mc
            .settings
            .iter()
            .map(|s| {
                (
                    s.name.as_deref().unwrap_or(""),
                    s.seq_no,
                    mc.dependency_level(s),
                )
            })
            .collect();
        assert_eq!(
            levels,
            [
                ("firstExtension", 2, 0),
                ("secondExtension", 2, 2),
                ("thirdExtension", 1, 3)
            ]
        );
        assert_eq!(mc.depends_on[1].depends_on.len(), 3);
        assert_eq!(
            mc.depends_on[1].depends_on[1],
            DependsOnExtension {
                handler: "OSTCExtensions.ExampleHandlerLinux".into(),
                extension: Some("secondExtension".into())
            }
        );
        assert!(!ec.plugins[1].multi_config);
        assert_eq!(
            ec.plugins[1].dependency_level(&ec.plugins[1].settings[0]),
            1
        );
        assert_eq!(ec.required_features[0].name, "MultipleExtensionsPerHandler");
        // Valid ticks without ids are kept.
        assert_eq!(
            ec.in_vm_goal_state_metadata,
            Some(InVmGoalStateMetadata {
                in_svd_seq_no: Some(3),
                created_on_ticks: Some(637_415_129_555_522_297),
                activity_id: None,
                correlation_id: None
            })
        );
        assert!(ec.in_vm_artifacts_profile_blob.unwrap().contains("vmSettings?sv=2018-03-28&sr=b&sk=system-1&sig=8YHwmibhasT0r9MZgL09QmFwL7ZV%2bg%2b49QP5Zwe4ksY%3d&"));

        let text = sample("wire/multi-config/ext_conf_mc_disabled_extensions.xml").unwrap();
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let states: Vec<_> = ec.plugins[0]
            .settings
            .iter()
            .map(|s| (s.seq_no, s.state))
            .collect();
        assert_eq!(
            states,
            [
                (1, ExtensionState::Disabled),
                (2, ExtensionState::Disabled),
                (99, ExtensionState::Enabled),
                (101, ExtensionState::Enabled)
            ]
        );
        assert_eq!(ec.plugins[1].settings[0].seq_no, 10);
    }

    #[test]
    fn sample_agent_families() {
        let Some(text) = sample("wire/ext_conf_rsm_version.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&text).unwrap();
        for family in &ec.ga_families {
            assert_eq!(family.version.as_deref(), Some("9.9.9.10"));
            assert!(family.is_version_from_rsm && family.is_vm_enabled_for_rsm_upgrades);
        }

        let text = sample("wire/ext_conf_missing_family.xml").unwrap();
        let ec = ExtensionsConfig::parse(&text).unwrap();
        assert_eq!(ec.ga_families.len(), 1);
        assert!(ec.ga_families[0].uris.is_empty() && ec.plugins.is_empty());
        assert!(ec
            .status_upload_blob
            .unwrap()
            .url
            .ends_with("sig=u%2BCA2Cxb7ticiEBRIW8HWgNW7gl2NPuOGQl0u95ApQE%3D"));

        let text = sample("wire/ext_conf_required_features.xml").unwrap();
        let ec = ExtensionsConfig::parse(&text).unwrap();
        let features: Vec<_> = ec
            .required_features
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_deref()))
            .collect();
        assert_eq!(
            features,
            [
                ("TestRequiredFeature1", None),
                ("TestRequiredFeature2", None),
                ("TestRequiredFeature3", Some("3.0"))
            ]
        );
    }

    #[test]
    fn sample_blobs_and_metadata_variants() {
        let Some(page) = sample("wire/ext_conf_no_extensions-page_blob.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&page).unwrap();
        assert_eq!(
            ec.status_upload_blob.unwrap().blob_type,
            StatusBlobType::PageBlob
        );
        assert!(ec.plugins.is_empty());
        let none = sample("wire/ext_conf_no_extensions-no_status_blob.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&none).unwrap().status_upload_blob,
            None
        );

        let empty = sample("wire/ext_conf_in_vm_empty_artifacts_profile.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&empty)
                .unwrap()
                .in_vm_artifacts_profile_blob,
            None
        );
        let profile = sample("wire/ext_conf_in_vm_artifacts_profile.xml").unwrap();
        assert!(ExtensionsConfig::parse(&profile)
            .unwrap()
            .in_vm_artifacts_profile_blob
            .is_some());

        let invalid = sample("wire/ext_conf_invalid_vm_metadata.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&invalid)
                .unwrap()
                .in_vm_goal_state_metadata,
            Some(InVmGoalStateMetadata {
                in_svd_seq_no: Some(2),
                ..Default::default()
            })
        );
        let valid = sample("wire/ext_conf_in_vm_metadata.xml").unwrap();
        let meta = ExtensionsConfig::parse(&valid)
            .unwrap()
            .in_vm_goal_state_metadata
            .unwrap();
        assert_eq!(meta.created_on_ticks, Some(637_405_409_304_121_230));
        assert_eq!(
            meta.activity_id.as_deref(),
            Some("555e551c-600e-4fb4-90ba-8ab8ec28eccc")
        );

        let no_settings = sample("wire/ext_conf_no_settings.xml").unwrap();
        let ec = ExtensionsConfig::parse(&no_settings).unwrap();
        assert_eq!(ec.plugins[0].version, "1.0");
        assert!(ec.plugins[0].settings.is_empty() && ec.plugins[0].invalid_reason.is_none());
        assert_eq!(
            ec.status_upload_blob.unwrap().blob_type,
            StatusBlobType::BlockBlob
        );

        let additional = sample("wire/ext_conf_additional_locations.xml").unwrap();
        let ec = ExtensionsConfig::parse(&additional).unwrap();
        assert_eq!(
            ec.plugins[0].manifest_uris(),
            [
                "http://mock-goal-state/location/1/manifest.xml",
                "http://mock-goal-state/failoverlocation/2/manifest.xml",
                "http://mock-goal-state/additionalLocation/3/manifest.xml",
                "http://mock-goal-state/additionalLocation/4/manifest.xml"
            ]
        );
    }

    #[test]
    fn sample_real_world_documents() {
        let Some(hib) = sample("hibernate/goal_state_1/ExtensionsConfig.xml") else {
            return;
        };
        let ec = ExtensionsConfig::parse(&hib).unwrap();
        assert_eq!(ec.ga_families[0].version.as_deref(), Some("2.13.1.1"));
        assert_eq!(ec.ga_families[0].uris.len(), 5);
        assert_eq!(
            ec.status_upload_blob.as_ref().unwrap().blob_type,
            StatusBlobType::PageBlob
        );
        let names: Vec<_> = ec
            .plugins
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.settings.len()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "Microsoft.GuestConfiguration.ConfigurationforLinux",
                    "1.26.89",
                    1
                ),
                ("Microsoft.Azure.Extensions.CustomScript", "2.1.13", 1),
                ("Microsoft.CPlat.Core.LinuxHibernateExtension", "1.0.1", 0)
            ]
        );

        let hgap = sample("hostgaplugin/ext_conf.xml").unwrap();
        let ec = ExtensionsConfig::parse(&hgap).unwrap();
        assert_eq!(ec.plugins.len(), 5);
        assert!(ec
            .plugins
            .iter()
            .all(|p| p.invalid_reason.is_none() && p.additional_locations.len() == 1));
        let no_blob = sample("hostgaplugin/ext_conf-no_status_upload_blob.xml").unwrap();
        assert_eq!(
            ExtensionsConfig::parse(&no_blob)
                .unwrap()
                .status_upload_blob,
            None
        );

        for (inc, thumbprint) in [
            (3, "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"),
            (4, "C0EDFF1B408001B0FD14F8F615E567F7833822D0"),
        ] {
            let text = sample(&format!(
                "tenant_certificate_rotation/ExtensionsConfig-incarnation-{inc}.xml"
            ))
            .unwrap();
            let ec = ExtensionsConfig::parse(&text).unwrap();
            assert!(
                ec.plugins
                    .iter()
                    .flat_map(|p| &p.settings)
                    .any(|s| s.runtime_settings.contains(thumbprint)),
                "{inc}"
            );
        }

        let old = sample("v2.2.5/wire/ext_conf.xml").unwrap();
        let ec = ExtensionsConfig::parse(&old).unwrap();
        assert_eq!(ec.in_vm_goal_state_metadata, None);
        assert!(ec.plugins[0].settings[0]
            .runtime_settings
            .contains("4037FBF5F1F3014F99B5D6C7799E9B20E6871CB3"));
    }
}
