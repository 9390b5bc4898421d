//! ovf-env.xml from the provisioning media: the parser, the masked copy
//! the agent saves, and where key paths lead.

use std::path::{Component, Path};

use waagent::ovf::{self, OvfEnv};

use super::lossy;

/// The password of `test-data/ovf/full.xml`, a seed.
const SEED_PASSWORD: &str = "Sup3r$ecret";

pub fn ovf_env(data: &[u8]) {
    let text = lossy(data);
    let parsed = OvfEnv::parse(&text);
    let saved = ovf::masked(&text);
    assert_eq!(ovf::masked(&saved), saved, "masking is not idempotent");

    let env = match parsed {
        Ok(env) => env,
        Err(e) => {
            assert_eq!(e.document, "ovf-env.xml");
            let shown = e.to_string();
            assert!(shown.starts_with("ovf-env.xml: "), "{shown:?}");
            assert!(!shown.contains('\n'), "not one line: {shown:?}");
            if text.contains(&format!("<UserPassword>{SEED_PASSWORD}")) {
                assert!(
                    !shown.contains(SEED_PASSWORD),
                    "quotes the password: {shown:?}"
                );
            }
            return;
        }
    };

    // The saved copy, read back, holds no password but a mask.
    if let Ok(again) = OvfEnv::parse(&saved) {
        let password = again.user_password.as_ref().map(|p| p.expose().to_string());
        assert!(
            matches!(password.as_deref(), None | Some("*")),
            "the saved copy still holds a password"
        );
    }

    ovf::check_user_name(&env.user_name).expect("parse checked the user name");
    ovf::check_host_name(&env.host_name).expect("parse checked the host name");
    for k in &env.public_keys {
        assert!(k.fingerprint.is_some() || k.value.is_some());
        if let Some(fp) = &k.fingerprint {
            assert_thumbprint(fp);
        }
        if let Some(v) = &k.value {
            assert!(!v.contains(['\n', '\r']), "a key value of several lines");
        }
        assert_key_path(&k.path, &env.user_name, true);
    }
    for kp in &env.key_pairs {
        assert_thumbprint(&kp.fingerprint);
        assert_key_path(&kp.path, &env.user_name, true);
    }
}

fn assert_thumbprint(fp: &str) {
    assert!(
        fp.len() == 40
            && fp
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "{fp:?} is not a normalised thumbprint"
    );
}

/// A key path resolves inside `/home/{user}/` or is refused; one under
/// `$HOME/` that `OvfEnv::parse` accepted (`checked`) always resolves.
pub(super) fn assert_key_path(path: &str, user: &str, checked: bool) {
    let home = Path::new("/home");
    match ovf::resolve_key_path(path, home, user) {
        Ok(p) => {
            let base = home.join(user);
            assert!(
                p.starts_with(&base) && p != base,
                "{path:?} resolved to {p:?}"
            );
            assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{p:?} is not normalised"
            );
        }
        Err(e) => {
            assert_eq!(e.document, "ovf-env.xml");
            assert!(
                !(checked && path.starts_with("$HOME/")),
                "parse accepted {path:?} but resolving refuses it: {e}"
            );
        }
    }
}
