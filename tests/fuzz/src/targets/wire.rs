//! The WireServer's XML documents and the reader under them.

use waagent::wire::client::report_target;
use waagent::wire::docs::{
    CertificatesDoc, DocError, ExtensionManifest, ExtensionsConfig, GoalState,
    HostingEnvironmentConfig, SharedConfig, Versions,
};
use waagent::xml::{self, Element};

use super::lossy;

/// An `Err` must come from the document asked for, and say so first.
pub(super) fn check<T>(document: &str, result: &Result<T, DocError>) {
    if let Err(e) = result {
        assert_eq!(e.document, document, "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{document}: ")),
            "{shown:?} does not start with {document:?}"
        );
    }
}

/// Deepest nesting of `e` (itself at depth 1) and its element count.
fn shape(e: &Element) -> (usize, usize) {
    e.children.iter().fold((1, 1), |(depth, count), c| {
        let (d, n) = shape(c);
        (depth.max(d + 1), count + n)
    })
}

pub fn documents(data: &[u8]) {
    let text = lossy(data);
    let tree = xml::parse("Fuzz", &text);
    check("Fuzz", &tree);
    if let Ok(root) = &tree {
        let (depth, count) = shape(root);
        assert!(depth <= xml::MAX_DEPTH, "depth {depth} passed the limit");
        assert!(
            count <= xml::MAX_ELEMENTS,
            "{count} elements passed the limit"
        );
    }

    let versions = Versions::parse(&text);
    check("Versions", &versions);
    if let Ok(v) = versions {
        let _ = (v.supports("2012-11-30"), v.prefers("2012-11-30"));
    }
    let goal_state = GoalState::parse(&text);
    check("GoalState", &goal_state);
    if let Ok(gs) = goal_state {
        // Every goal state that parses can be reported on, or says why not.
        if let Ok(target) = report_target(&gs) {
            assert_eq!(target.incarnation, gs.incarnation);
        }
    }
    check(
        "HostingEnvironmentConfig",
        &HostingEnvironmentConfig::parse(&text),
    );
    let shared = SharedConfig::parse(&text);
    check("SharedConfig", &shared);
    if let Ok(sc) = shared {
        check("SharedConfig", &sc.rdma());
    }
    let certificates = CertificatesDoc::parse(&text);
    check("Certificates", &certificates);
    if let Ok(c) = certificates {
        let _ = c.is_pfx_package();
    }
    check("ExtensionManifest", &ExtensionManifest::parse(&text));
}

pub fn extensions_config(data: &[u8]) {
    let text = lossy(data);
    let parsed = ExtensionsConfig::parse(&text);
    check("ExtensionsConfig", &parsed);
    let Ok(ec) = parsed else { return };
    for p in &ec.plugins {
        // What the model promises its users (extensions_config.rs).
        if p.invalid_reason.is_some() {
            assert!(p.settings.is_empty() && p.depends_on.is_empty(), "{p:?}");
        }
        if p.state.is_none() {
            assert!(p.invalid_reason.is_some(), "no state and no reason: {p:?}");
        }
        let uris = p.manifest_uris();
        let expected = usize::from(p.location.is_some())
            + usize::from(p.failover_location.is_some())
            + p.additional_locations.len();
        assert_eq!(uris.len(), expected);
        for s in &p.settings {
            assert_eq!(s.runtime_settings, s.runtime_settings.trim());
            let _ = p.dependency_level(s);
        }
    }
    if let Some(blob) = &ec.status_upload_blob {
        assert!(!blob.url.trim().is_empty(), "empty status blob URL kept");
    }
}
