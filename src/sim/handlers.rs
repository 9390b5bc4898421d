//! The extension handlers the simulator offers (§6.6, §6.7, §13): what a
//! test asks for ([`SimHandler`]), the documents that describe them (the
//! `Plugins` and `PluginSettings` of ExtensionsConfig, one manifest per
//! handler) and where on the simulator's storage they and their packages
//! live, so an agent can be tested end to end with real zip packages.
//!
//! The `fabric-sim` program takes the same description as a JSON file
//! ([`parse_handlers`]) and watches it ([`HandlersFile`]): a sandbox test's
//! driver script changes the handlers by rewriting that file.
//!
//! Storage layout (all `http://` on the simulator's WireServer port, where
//! production has https storage accounts):
//!
//! * `/blob/manifests/{Name}_manifest.xml`: the primary manifest (`location`);
//! * `/blob/failover/{Name}_manifest.xml`: the same manifest (`failoverlocation`);
//! * `/blob/packages/{Name}__{Version}`: a zip package, named like Azure's blobs.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::xml::escape;

/// One handler (`Plugins/Plugin` and its `PluginSettings`) and the
/// packages its manifest lists.
#[derive(Debug, Clone, PartialEq)]
pub struct SimHandler {
    /// `{Publisher}.{Type}`, e.g. `Contoso.Test.Echo`.
    pub name: String,
    /// The requested version (`Plugin@version`).
    pub version: String,
    /// `enabled`, `disabled` or `uninstall`; served as given, so a test can
    /// also offer an invalid one.
    pub state: String,
    pub auto_upgrade: bool,
    /// `useExactVersion`; true unless a test asks for an older fabric's
    /// goal state, where `auto_upgrade` allows minor upgrades (§13.8).
    pub use_exact_version: bool,
    /// The settings' sequence number (single-config).
    pub seq_no: u64,
    /// `{}` when none. `Null` with no `protected_settings` and no
    /// `extensions` means no `PluginSettings` entry at all (a handler
    /// without settings, §6.6).
    pub public_settings: Value,
    /// `(base64 CMS blob, certificate thumbprint)`; see
    /// [`super::certs::seal_protected_settings`].
    pub protected_settings: Option<(String, String)>,
    /// Non-empty: a multi-config handler (§13.12), one
    /// `ExtensionRuntimeSettings` per entry; `seq_no`, `public_settings` and
    /// `protected_settings` are then unused.
    pub extensions: Vec<SimExtension>,
    /// The versions the manifest lists, in this order.
    pub packages: Vec<SimPackage>,
    /// Serve the manifest only from the failover location (the primary
    /// answers 404, directly and through the HostGAPlugin).
    pub primary_manifest_missing: bool,
}

impl SimHandler {
    /// An enabled single-config handler at `version`, settings `{}` with
    /// seqNo 0, whose manifest lists that version with `zip`.
    pub fn new(name: &str, version: &str, zip: Vec<u8>) -> SimHandler {
        SimHandler {
            name: name.into(),
            version: version.into(),
            state: "enabled".into(),
            auto_upgrade: false,
            use_exact_version: true,
            seq_no: 0,
            public_settings: json!({}),
            protected_settings: None,
            extensions: Vec::new(),
            packages: vec![SimPackage {
                version: version.into(),
                zip,
            }],
            primary_manifest_missing: false,
        }
    }

    fn has_settings(&self) -> bool {
        !self.extensions.is_empty()
            || !self.public_settings.is_null()
            || self.protected_settings.is_some()
    }
}

/// One named extension of a multi-config handler.
#[derive(Debug, Clone, PartialEq)]
pub struct SimExtension {
    pub name: String,
    /// `enabled` or `disabled`.
    pub state: String,
    pub seq_no: u64,
    pub public_settings: Value,
    pub protected_settings: Option<(String, String)>,
}

/// One version of a handler and its zip package.
#[derive(Clone, PartialEq, Eq)]
pub struct SimPackage {
    pub version: String,
    pub zip: Vec<u8>,
}

/// The size, not the bytes.
impl std::fmt::Debug for SimPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPackage")
            .field("version", &self.version)
            .field("zip_bytes", &self.zip.len())
            .finish()
    }
}

/// A name as one URL path segment: handler names and versions are plain
/// (`[A-Za-z0-9._-]`), anything else is percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where a handler's manifest lives on the simulator's storage.
pub fn manifest_path(name: &str, failover: bool) -> String {
    let dir = if failover { "failover" } else { "manifests" };
    format!("/blob/{dir}/{}_manifest.xml", segment(name))
}

/// Where a handler's package lives: `{Name}__{Version}`, the blob name §6.7 gives.
pub fn package_path(name: &str, version: &str) -> String {
    format!("/blob/packages/{}__{}", segment(name), segment(version))
}

/// The blobs that serve `handlers` (path → bytes), and the paths to withdraw
/// (primary manifests marked missing).
pub(super) fn blobs(handlers: &[SimHandler], base: &str) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut put = Vec::new();
    let mut withdraw = Vec::new();
    for h in handlers {
        let manifest = manifest_xml(h, base).into_bytes();
        if h.primary_manifest_missing {
            withdraw.push(manifest_path(&h.name, false));
        } else {
            put.push((manifest_path(&h.name, false), manifest.clone()));
        }
        put.push((manifest_path(&h.name, true), manifest));
        for p in &h.packages {
            put.push((package_path(&h.name, &p.version), p.zip.clone()));
        }
    }
    (put, withdraw)
}

/// The `PluginVersionManifest` of one handler (§6.7, `test-data/wire/manifest.xml`).
pub(super) fn manifest_xml(h: &SimHandler, base: &str) -> String {
    let plugins: String = h
        .packages
        .iter()
        .map(|p| {
            format!(
                "    <Plugin>\n      <Version>{}</Version>\n      <Uris>\n        <Uri>{}</Uri>\n      </Uris>\n    </Plugin>\n",
                escape_text(&p.version),
                escape_text(&format!("{base}{}", package_path(&h.name, &p.version)))
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <PluginVersionManifest xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">\n  \
         <Plugins>\n{plugins}  </Plugins>\n</PluginVersionManifest>\n"
    )
}

/// `{"runtimeSettings":[{"handlerSettings":{…}}]}` (§6.6); the protected
/// keys only when there are protected settings, as in the samples.
pub fn runtime_settings(public: &Value, protected: Option<&(String, String)>) -> String {
    let mut hs = Map::new();
    if !public.is_null() {
        hs.insert("publicSettings".into(), public.clone());
    }
    if let Some((blob, thumbprint)) = protected {
        hs.insert("protectedSettings".into(), json!(blob));
        hs.insert("protectedSettingsCertThumbprint".into(), json!(thumbprint));
    }
    json!({"runtimeSettings": [{"handlerSettings": hs}]}).to_string()
}

/// `RequiredFeatures` of ExtensionsConfig: `MultipleExtensionsPerHandler`
/// when a multi-config handler needs it (as CRP sends), else empty.
pub(super) fn required_features_xml(handlers: &[SimHandler]) -> &'static str {
    if handlers.iter().any(|h| !h.extensions.is_empty()) {
        "<RequiredFeatures>\n  <RequiredFeature>\n    <Name>MultipleExtensionsPerHandler</Name>\n  </RequiredFeature>\n</RequiredFeatures>\n"
    } else {
        ""
    }
}

/// Element text: quotes stay as they are, as in the samples' settings JSON.
fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `Plugins` and `PluginSettings` of ExtensionsConfig; empty without handlers.
pub(super) fn plugins_xml(handlers: &[SimHandler], base: &str) -> String {
    if handlers.is_empty() {
        return String::new();
    }
    let mut out = String::from("<Plugins>\n");
    for h in handlers {
        out.push_str(&format!(
            "  <Plugin name=\"{name}\" version=\"{version}\" location=\"{loc}\" failoverlocation=\"{failover}\" \
             state=\"{state}\" autoUpgrade=\"{auto}\" runAsStartupTask=\"false\" isJson=\"true\" useExactVersion=\"{exact}\" />\n",
            name = escape(&h.name),
            version = escape(&h.version),
            loc = escape(&format!("{base}{}", manifest_path(&h.name, false))),
            failover = escape(&format!("{base}{}", manifest_path(&h.name, true))),
            state = escape(&h.state),
            auto = h.auto_upgrade,
            exact = h.use_exact_version,
        ));
    }
    out.push_str("</Plugins>\n<PluginSettings>\n");
    for h in handlers.iter().filter(|h| h.has_settings()) {
        out.push_str(&format!(
            "  <Plugin name=\"{}\" version=\"{}\">\n",
            escape(&h.name),
            escape(&h.version)
        ));
        if h.extensions.is_empty() {
            out.push_str(&format!(
                "    <RuntimeSettings seqNo=\"{}\">{}</RuntimeSettings>\n",
                h.seq_no,
                escape_text(&runtime_settings(
                    &h.public_settings,
                    h.protected_settings.as_ref()
                ))
            ));
        }
        for e in &h.extensions {
            out.push_str(&format!(
                "    <ExtensionRuntimeSettings seqNo=\"{}\" name=\"{}\" state=\"{}\">{}</ExtensionRuntimeSettings>\n",
                e.seq_no,
                escape(&e.name),
                escape(&e.state),
                escape_text(&runtime_settings(
                    &e.public_settings,
                    e.protected_settings.as_ref()
                ))
            ));
        }
        out.push_str("  </Plugin>\n");
    }
    out.push_str("</PluginSettings>\n");
    out
}

/// Reads the `--handlers` JSON (see `fabric-sim --help`): an array of
/// handler objects. Zip paths and certificate paths are relative to `dir`
/// (the file's directory). Unknown keys are refused, so a typo is an error
/// rather than a silently different handler.
pub fn parse_handlers(text: &str, dir: &Path) -> Result<Vec<SimHandler>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = v.as_array().ok_or("expected a JSON array of handlers")?;
    list.iter()
        .enumerate()
        .map(|(i, h)| parse_handler(h, dir).map_err(|e| format!("handler [{i}]: {e}")))
        .collect()
}

/// The fields of one JSON object, checked against the keys it may have.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn new(v: &'a Value, allowed: &[&str]) -> Result<Self, String> {
        let m = v.as_object().ok_or("expected an object")?;
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("unknown key {k:?} (known: {})", allowed.join(", ")));
        }
        Ok(Fields(m))
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{key}: expected a string")),
        }
    }

    fn required(&self, key: &str) -> Result<String, String> {
        self.string(key)?.ok_or_else(|| format!("{key} is missing"))
    }

    fn array(&self, key: &str) -> Result<&'a [Value], String> {
        match self.0.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(format!("{key}: expected an array")),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, String> {
        self.boolean_or(key, false)
    }

    fn boolean_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{key}: expected true or false")),
        }
    }

    fn seq_no(&self) -> Result<u64, String> {
        match self.0.get("seqNo") {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| "seqNo: expected a non-negative integer".into()),
        }
    }

    fn public_settings(&self) -> Value {
        self.0
            .get("publicSettings")
            .cloned()
            .unwrap_or_else(|| json!({}))
    }

    /// `protectedSettings` as a base64 string with
    /// `protectedSettingsCertThumbprint`, or as JSON sealed here to the PEM
    /// certificate at `protectedSettingsCert`.
    fn protected_settings(&self, dir: &Path) -> Result<Option<(String, String)>, String> {
        let thumbprint = self.string("protectedSettingsCertThumbprint")?;
        let cert = self.string("protectedSettingsCert")?;
        match (self.0.get("protectedSettings"), thumbprint, cert) {
            (None, None, None) => Ok(None),
            (Some(Value::String(blob)), Some(tp), None) => Ok(Some((blob.clone(), tp))),
            (Some(Value::String(_)), _, _) => Err(
                "protectedSettings as a string (base64 CMS) needs protectedSettingsCertThumbprint and no protectedSettingsCert".into(),
            ),
            (Some(settings), None, Some(cert)) => {
                let path = dir.join(cert);
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| format!("protectedSettingsCert {}: {e}", path.display()))?;
                let blob = super::certs::seal_protected_settings(&settings.to_string(), &pem)?;
                let tp = crate::wire::crypto::thumbprint_of_pem(&pem)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Some((blob, tp)))
            }
            _ => Err("protectedSettings: a base64 string with protectedSettingsCertThumbprint, or JSON with protectedSettingsCert".into()),
        }
    }
}

const PROTECTED_KEYS: [&str; 3] = [
    "protectedSettings",
    "protectedSettingsCertThumbprint",
    "protectedSettingsCert",
];

fn parse_handler(v: &Value, dir: &Path) -> Result<SimHandler, String> {
    let mut allowed = vec![
        "name",
        "version",
        "state",
        "autoUpgrade",
        "useExactVersion",
        "seqNo",
        "publicSettings",
        "primaryManifestMissing",
        "packages",
        "extensions",
    ];
    allowed.extend(PROTECTED_KEYS);
    let f = Fields::new(v, &allowed)?;
    let packages = f
        .array("packages")?
        .iter()
        .enumerate()
        .map(|(i, p)| parse_package(p, dir).map_err(|e| format!("packages[{i}]: {e}")))
        .collect::<Result<_, String>>()?;
    let extensions = f
        .array("extensions")?
        .iter()
        .enumerate()
        .map(|(i, e)| parse_extension(e, dir).map_err(|e| format!("extensions[{i}]: {e}")))
        .collect::<Result<_, String>>()?;
    Ok(SimHandler {
        name: f.required("name")?,
        version: f.required("version")?,
        state: f.string("state")?.unwrap_or_else(|| "enabled".into()),
        auto_upgrade: f.boolean("autoUpgrade")?,
        use_exact_version: f.boolean_or("useExactVersion", true)?,
        seq_no: f.seq_no()?,
        public_settings: f.public_settings(),
        protected_settings: f.protected_settings(dir)?,
        extensions,
        packages,
        primary_manifest_missing: f.boolean("primaryManifestMissing")?,
    })
}

fn parse_package(v: &Value, dir: &Path) -> Result<SimPackage, String> {
    let p = Fields::new(v, &["version", "zip"])?;
    let path = dir.join(p.required("zip")?);
    Ok(SimPackage {
        version: p.required("version")?,
        zip: std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    })
}

fn parse_extension(v: &Value, dir: &Path) -> Result<SimExtension, String> {
    let mut allowed = vec!["name", "state", "seqNo", "publicSettings"];
    allowed.extend(PROTECTED_KEYS);
    let e = Fields::new(v, &allowed)?;
    Ok(SimExtension {
        name: e.required("name")?,
        state: e.string("state")?.unwrap_or_else(|| "enabled".into()),
        seq_no: e.seq_no()?,
        public_settings: e.public_settings(),
        protected_settings: e.protected_settings(dir)?,
    })
}

/// A `--handlers` file, watched: [`HandlersFile::changed`] reads it again
/// when it is not what was last seen.
#[derive(Debug)]
pub struct HandlersFile {
    path: PathBuf,
    /// What the last call saw: `None` before the first, `Some(None)` when
    /// the file could not be read.
    seen: Option<Option<Seen>>,
}

/// Modification time, size and inode, plus the bytes: coarse file-system
/// timestamps can miss two rewrites within one clock tick, the bytes do not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    text: Vec<u8>,
}

impl HandlersFile {
    pub fn new(path: impl Into<PathBuf>) -> HandlersFile {
        HandlersFile {
            path: path.into(),
            seen: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handlers, when the file changed since the last call (the first
    /// call always reads it): a new modification time — a `touch` or a
    /// rewrite with the same text counts, which is how a driver asks for a
    /// new incarnation of the same handlers — or new contents. `Ok(None)`:
    /// unchanged. An error (unreadable, invalid) is returned once per
    /// change; the caller keeps its handlers, and the next change is read.
    /// Zips are read only then: touch the file after replacing one.
    pub fn changed(&mut self) -> Result<Option<Vec<SimHandler>>, String> {
        use std::os::unix::fs::MetadataExt;
        // Metadata before the bytes: a write landing in between makes the
        // next call see a change again (an extra read), never miss one.
        let now = std::fs::metadata(&self.path).and_then(|m| {
            Ok(Seen {
                modified: m.modified().ok(),
                len: m.len(),
                ino: m.ino(),
                text: std::fs::read(&self.path)?,
            })
        });
        let (now, error) = match now {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{}: {e}", self.path.display()))),
        };
        if self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.seen = Some(now.clone());
        if let Some(e) = error {
            return Err(e);
        }
        let text = now.map(|s| s.text).unwrap_or_default();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        parse_handlers(&String::from_utf8_lossy(&text), dir)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str) -> Result<Vec<SimHandler>, String> {
        parse_handlers(text, dir)
    }

    #[test]
    fn defaults_and_relative_zips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.zip"), b"zip bytes").unwrap();
        let h = parse_in(
            dir.path(),
            r#"[{"name": "A.B", "version": "1.0", "packages": [{"version": "1.0", "zip": "e.zip"}]}]"#,
        )
        .unwrap();
        let mut want = SimHandler::new("A.B", "1.0", b"zip bytes".to_vec());
        assert_eq!(h, [want.clone()]);

        let h = parse_in(
            dir.path(),
            r#"[{"name": "A.B", "version": "1.0", "state": "uninstall", "autoUpgrade": true,
                 "useExactVersion": false, "seqNo": 9, "publicSettings": null, "primaryManifestMissing": true,
                 "protectedSettings": "QUJD", "protectedSettingsCertThumbprint": "AB12",
                 "packages": [{"version": "1.0", "zip": "e.zip"}],
                 "extensions": [{"name": "x", "seqNo": 2, "state": "disabled"}, {"name": "y"}]}]"#,
        )
        .unwrap();
        want.state = "uninstall".into();
        want.auto_upgrade = true;
        want.use_exact_version = false;
        want.seq_no = 9;
        want.public_settings = Value::Null;
        want.primary_manifest_missing = true;
        want.protected_settings = Some(("QUJD".into(), "AB12".into()));
        let ext = |name: &str, state: &str, seq_no| SimExtension {
            name: name.into(),
            state: state.into(),
            seq_no,
            public_settings: json!({}),
            protected_settings: None,
        };
        want.extensions = vec![ext("x", "disabled", 2), ext("y", "enabled", 0)];
        assert_eq!(h, [want]);
    }

    #[test]
    fn refusals_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str| parse_in(dir.path(), text).unwrap_err();
        assert!(err("{}").contains("array"));
        assert!(err("[").starts_with("not JSON"));
        assert_eq!(
            err(r#"[{"name": "A", "version": "1", "seqno": 1}]"#),
            "handler [0]: unknown key \"seqno\" (known: name, version, state, autoUpgrade, useExactVersion, seqNo, publicSettings, primaryManifestMissing, packages, extensions, protectedSettings, protectedSettingsCertThumbprint, protectedSettingsCert)"
        );
        assert_eq!(err(r#"[{"name": "A"}]"#), "handler [0]: version is missing");
        assert_eq!(
            err(r#"[{"name": "A", "version": "1", "seqNo": -1}]"#),
            "handler [0]: seqNo: expected a non-negative integer"
        );
        assert!(
            err(r#"[{"name": "A", "version": "1", "protectedSettings": "QUJD"}]"#)
                .contains("needs protectedSettingsCertThumbprint")
        );
        assert!(
            err(r#"[{"name": "A", "version": "1", "protectedSettings": {"a": 1}}]"#)
                .contains("protectedSettingsCert")
        );
        assert!(err(
            r#"[{"name": "A", "version": "1", "extensions": [{"name": "x", "zip": "y"}]}]"#
        )
        .starts_with("handler [0]: extensions[0]: unknown key \"zip\""));
        assert!(err(r#"[{"name": "A", "version": "1", "packages": {}}]"#)
            .contains("packages: expected an array"));
    }

    #[test]
    fn protected_json_is_sealed_to_the_named_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = super::super::certs::generate_tenant_cert("handlers file").unwrap();
        std::fs::write(dir.path().join("t.crt"), &cert.cert_pem).unwrap();
        let h = parse_in(
            dir.path(),
            r#"[{"name": "A", "version": "1", "protectedSettings": {"k": "v"}, "protectedSettingsCert": "t.crt"}]"#,
        )
        .unwrap();
        let (blob, thumbprint) = h[0].protected_settings.clone().unwrap();
        assert_eq!(thumbprint, cert.thumbprint());
        assert!(!blob.is_empty() && !blob.contains("\"k\""));
    }

    #[test]
    fn documents_escape_what_they_carry() {
        let mut h = SimHandler::new("Odd Name&Co", "1.0<", b"z".to_vec());
        h.public_settings = json!({"s": "</RuntimeSettings>"});
        assert_eq!(
            package_path(&h.name, &h.version),
            "/blob/packages/Odd%20Name%26Co__1.0%3C"
        );
        let m = manifest_xml(&h, "http://sim");
        assert!(m.contains("<Version>1.0&lt;</Version>"));
        let x = plugins_xml(&[h], "http://sim");
        assert!(x.contains("name=\"Odd Name&amp;Co\" version=\"1.0&lt;\""));
        assert!(x.contains(r#"{"s":"&lt;/RuntimeSettings&gt;"}"#));
        assert_eq!(plugins_xml(&[], "http://sim"), "");
    }
}
