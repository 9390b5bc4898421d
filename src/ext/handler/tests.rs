use super::*;
use std::path::PathBuf;

use crate::wire::docs::test_support::{fixture, samples_dir};
use crate::wire::docs::ExtensionsConfig;

/// One of our own fixtures in `test-data/ext/`.
fn own(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-data/ext")
        .join(name)
}

fn own_text(name: &str) -> String {
    let path = own(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An upstream sample under `../shared/azure-samples/ext/`, or `None` (the
/// test is noted as skipped) without them.
fn sample(rel: &str) -> Option<PathBuf> {
    Some(samples_dir()?.join("ext").join(rel))
}

// --- HandlerManifest.json ----------------------------------------------------

#[test]
fn manifest_with_every_field() {
    let m = HandlerManifest::parse(&own_text("handler_manifest.json")).unwrap();
    assert_eq!(
        m,
        HandlerManifest {
            enable: "/bin/handler.sh enable".into(),
            install: Some("bin/handler.sh install".into()),
            uninstall: Some("bin/handler.sh uninstall".into()),
            update: Some("bin/handler.sh update".into()),
            disable: Some("bin/handler.sh disable".into()),
            report_heartbeat: true,
            continue_on_update_failure: true,
            supports_multiple_extensions: false,
            update_with_install: false,
        }
    );
}

#[test]
fn manifest_with_a_bom_and_only_an_enable_command() {
    let m = HandlerManifest::parse(&own_text("handler_manifest_bom_enable_only.json")).unwrap();
    assert_eq!(m.enable, "python3 -u bin/agent -run-exthandlers");
    assert_eq!(
        (m.install, m.uninstall, m.update, m.disable),
        (None, None, None, None)
    );
    assert!(m.update_with_install);
    assert!(!m.report_heartbeat && !m.continue_on_update_failure);
    assert!(!m.supports_multiple_extensions);
}

#[test]
fn manifest_errors_name_the_file_and_the_problem() {
    let e = HandlerManifest::parse(&own_text("handler_manifest_no_enable.json")).unwrap_err();
    assert_eq!(e.to_string(), "HandlerManifest.json: has no enableCommand");
    assert_eq!(e.code, CODE_MANIFEST_INVALID);

    let wrap = |hm: &str| format!(r#"[{{"handlerManifest": {hm}}}]"#);
    let cases = [
        (
            "",
            "is not valid JSON: EOF while parsing a value at line 1 column 0",
        ),
        ("{}", "is not a JSON array"),
        ("[]", "is an empty array"),
        ("[{}]", "has no handlerManifest object"),
        (
            r#"[{"handlerManifest": "x"}]"#,
            "has no handlerManifest object",
        ),
        (
            &wrap(r#"{"enableCommand": 7}"#),
            "enableCommand is not a string",
        ),
        (&wrap(r#"{"enableCommand": "   "}"#), "has no enableCommand"),
        (&wrap(r#"{"enableCommand": null}"#), "has no enableCommand"),
        (
            &wrap(r#"{"enableCommand": "x", "installCommand": ["a"]}"#),
            "installCommand is not a string",
        ),
        (
            &wrap(r#"{"enableCommand": "run\u0000 me"}"#),
            "enableCommand contains a NUL character",
        ),
    ];
    for (text, problem) in cases {
        let e = HandlerManifest::parse(text).unwrap_err();
        assert_eq!(e.problem, problem, "{text}");
        assert_eq!(e.what, MANIFEST_FILE);
    }
    let huge = wrap(&format!(r#"{{"enableCommand": "{}"}}"#, "x".repeat(70_000)));
    assert!(HandlerManifest::parse(&huge)
        .unwrap_err()
        .problem
        .contains("at most 65536"));
}

#[test]
fn manifest_update_mode_and_flags_as_waagent_reads_them() {
    let parse = |hm: &str| {
        HandlerManifest::parse(&format!(
            r#"[{{"handlerManifest": {{"enableCommand": "e", {hm}}}}}]"#
        ))
        .unwrap()
    };
    assert!(parse(r#""updateMode": "UPDATEWITHINSTALL""#).update_with_install);
    assert!(parse(r#""updateMode": null"#).update_with_install);
    assert!(!parse(r#""updateMode": "UpdateWithoutInstall""#).update_with_install);
    assert!(!parse(r#""updateMode": 1"#).update_with_install);
    assert!(parse(r#""reportHeartbeat": "tRuE""#).report_heartbeat);
    assert!(!parse(r#""reportHeartbeat": " true""#).report_heartbeat);
    assert!(!parse(r#""reportHeartbeat": 1"#).report_heartbeat);
    assert!(!parse(r#""reportHeartbeat": "yes""#).report_heartbeat);
}

#[test]
fn sample_manifests() {
    let Some(dir) = sample("handler_manifest") else {
        return;
    };
    let flags = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let m = HandlerManifest::parse(&text).unwrap();
        assert_eq!(m.enable, "enable_cmd");
        assert_eq!(m.install.as_deref(), Some("install_cmd"));
        assert_eq!(m.uninstall.as_deref(), Some("uninstall_cmd"));
        assert_eq!(m.update.as_deref(), Some("update_cmd"));
        assert_eq!(m.disable.as_deref(), Some("disable_cmd"));
        assert!(m.update_with_install);
        (
            m.report_heartbeat,
            m.continue_on_update_failure,
            m.supports_multiple_extensions,
        )
    };
    assert_eq!(flags("valid_manifest.json"), (true, true, true));
    assert_eq!(
        flags("manifest_boolean_fields_strings.json"),
        (true, true, true)
    );
    assert_eq!(
        flags("manifest_boolean_fields_false.json"),
        (false, false, false)
    );
    assert_eq!(
        flags("manifest_boolean_fields_invalid.json"),
        (false, false, false)
    );
    assert_eq!(
        flags("manifest_no_optional_fields.json"),
        (false, false, false)
    );

    let base = dir.parent().unwrap().join("sample_ext-1.3.0");
    let m = HandlerManifest::read(&base).unwrap();
    assert_eq!(m.enable, "sample.py -enable");
    assert_eq!(m.uninstall.as_deref(), Some("sample.py -uninstall"));
    assert!(!m.report_heartbeat);
}

#[test]
fn manifest_read_from_the_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let e = HandlerManifest::read(dir.path()).unwrap_err();
    assert_eq!(e.code, CODE_MANIFEST_NOT_FOUND);
    assert_eq!(e.problem, "does not exist");
    assert!(e.what.ends_with("/HandlerManifest.json"));

    // A link planted as the manifest is not followed.
    let target = own("handler_manifest.json");
    std::os::unix::fs::symlink(&target, dir.path().join(MANIFEST_FILE)).unwrap();
    let e = HandlerManifest::read(dir.path()).unwrap_err();
    assert_eq!(e.problem, "is a symbolic link, not a regular file");
    assert_eq!(e.code, CODE_MANIFEST_NOT_FOUND);

    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    std::fs::copy(&target, dir.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(
        HandlerManifest::read(dir.path()).unwrap(),
        HandlerManifest::parse(&own_text("handler_manifest.json")).unwrap()
    );

    std::fs::write(dir.path().join(MANIFEST_FILE), b"[\xff]").unwrap();
    let e = HandlerManifest::read(dir.path()).unwrap_err();
    assert_eq!((e.problem.as_str(), e.code), ("is not UTF-8 text", 1003));
}

#[test]
fn commands_run_through_sh_from_the_base_dir() {
    let base = Path::new("/var/lib/waagent/Contoso.Tools.Example-1.2.3");
    assert_eq!(
        shell_command(base, "bin/handler.sh enable").unwrap(),
        (
            "/bin/sh",
            vec![
                "-c".to_string(),
                "/var/lib/waagent/Contoso.Tools.Example-1.2.3/bin/handler.sh enable".to_string()
            ]
        )
    );
    // A leading '/' is the package's mistake, not a root-relative path.
    assert_eq!(
        shell_command(base, "//bin/handler.sh enable").unwrap().1[1],
        "/var/lib/waagent/Contoso.Tools.Example-1.2.3/bin/handler.sh enable"
    );
    // The base dir is ours and stays one word whatever it holds.
    assert_eq!(
        shell_command(Path::new("/srv/my lib/it's-1.0"), "run x")
            .unwrap()
            .1[1],
        r"'/srv/my lib/it'\''s-1.0'/run x"
    );
    assert!(shell_command(Path::new("lib/X-1.0"), "run").is_err());
    assert!(shell_command(base, "run\0").is_err());
}

// --- HandlerEnvironment.json and settings -------------------------------------

#[test]
fn handler_environment_is_the_current_agents() {
    let text = handler_environment_json(
        "Contoso.Tools.Example",
        Path::new("/var/lib/waagent/Contoso.Tools.Example-1.2.3"),
        Path::new("/var/log/azure/Contoso.Tools.Example"),
    );
    assert_eq!(
        text,
        concat!(
            r#"[{"name": "Contoso.Tools.Example", "version": 1.0, "handlerEnvironment": {"#,
            r#""logFolder": "/var/log/azure/Contoso.Tools.Example", "#,
            r#""configFolder": "/var/lib/waagent/Contoso.Tools.Example-1.2.3/config", "#,
            r#""statusFolder": "/var/lib/waagent/Contoso.Tools.Example-1.2.3/status", "#,
            r#""heartbeatFile": "/var/lib/waagent/Contoso.Tools.Example-1.2.3/heartbeat.log", "#,
            r#""eventsFolder": "/var/log/azure/Contoso.Tools.Example/events", "#,
            r#""eventsFolder_preview": "/var/log/azure/Contoso.Tools.Example/events"}}]"#,
        )
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v[0]["version"].is_f64());
    // Names are JSON-escaped, not pasted.
    let v: Value = serde_json::from_str(&handler_environment_json(
        "A\"B",
        Path::new("/x"),
        Path::new("/y"),
    ))
    .unwrap();
    assert_eq!(v[0]["name"], "A\"B");
}

#[test]
fn settings_file_from_the_goal_state() {
    let ec = ExtensionsConfig::parse(&fixture("ext_conf.xml")).unwrap();
    let echo = &ec.plugins[0].settings[0];
    assert_eq!(
        settings_json(&echo.runtime_settings).unwrap(),
        concat!(
            r#"{"runtimeSettings": [{"handlerSettings": {"#,
            r#""publicSettings": {"message":"hello & goodbye"}, "#,
            r#""protectedSettings": "TUlJQlBsYWNlaG9sZGVy", "#,
            r#""protectedSettingsCertThumbprint": "3C5A1F0E9B7D24C68E1F0A2B3C4D5E6F70819203"}}]}"#
        )
    );
    // Public settings only: the other two keys are there, null.
    let first = &ec.plugins[1].settings[0];
    assert_eq!(
        settings_json(&first.runtime_settings).unwrap(),
        concat!(
            r#"{"runtimeSettings": [{"handlerSettings": {"publicSettings": {"script":"echo first"}, "#,
            r#""protectedSettings": null, "protectedSettingsCertThumbprint": null}}]}"#
        )
    );
}

#[test]
fn settings_without_values_and_bad_settings() {
    // No settings at all: waagent's empty 0.settings.
    assert_eq!(settings_json("").unwrap(), "");
    assert_eq!(settings_json(" \n ").unwrap(), "");
    assert_eq!(settings_json(r#"{"runtimeSettings": []}"#).unwrap(), "");
    assert_eq!(
        settings_json(r#"{"runtimeSettings": [{"handlerSettings": {}}]}"#).unwrap(),
        r#"{"runtimeSettings": [{"handlerSettings": {"publicSettings": null, "protectedSettings": null, "protectedSettingsCertThumbprint": null}}]}"#
    );
    // Only the first entry counts, and what is in it goes on unchanged
    // (one line even when the goal state spread it over several).
    let out = settings_json(
        "{\"runtimeSettings\": [{\"handlerSettings\": {\"publicSettings\": {\"a\": [1, 2.5, -3, \"x\\ny\", true],\n \"b\": {}}}}, {\"handlerSettings\": {}}]}",
    )
    .unwrap();
    assert!(!out.contains('\n'));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["runtimeSettings"][0]["handlerSettings"]["publicSettings"],
        serde_json::json!({"a": [1, 2.5, -3, "x\ny", true], "b": {}})
    );

    // Errors never quote the settings, protected or not.
    let secret = "U0VDUkVUIFNFVFRJTkdT";
    for bad in [
        format!(
            r#"{{"runtimeSettings":[{{"handlerSettings":{{"protectedSettings":"{secret}"}}}}]"#
        ),
        format!(r#"{{"runtimeSettings":[{{"protectedSettings":"{secret}"}}]}}"#),
        format!(
            r#"{{"runtimeSettings":{{"handlerSettings":{{"protectedSettings":"{secret}"}}}}}}"#
        ),
        format!(r#"["{secret}"]"#),
    ] {
        let e = settings_json(&bad).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(e.to_string().starts_with("the runtime settings: "), "{e}");
    }
}

#[test]
fn sample_goal_states_settings() {
    let Some(dir) = samples_dir() else {
        return;
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.join("wire")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("ext_conf") && name.ends_with(".xml")) {
            continue;
        }
        let Ok(ec) = ExtensionsConfig::parse(&std::fs::read_to_string(entry.path()).unwrap())
        else {
            continue;
        };
        for s in ec.plugins.iter().flat_map(|p| &p.settings) {
            let out = settings_json(&s.runtime_settings)
                .unwrap_or_else(|e| panic!("{name} seqNo {}: {e}", s.seq_no));
            if s.runtime_settings.trim().is_empty() {
                assert_eq!(out, "");
                continue;
            }
            assert!(!out.contains('\n'), "{name}");
            let input: Value = serde_json::from_str(&s.runtime_settings).unwrap();
            let output: Value = serde_json::from_str(&out).unwrap();
            let given = &input["runtimeSettings"][0]["handlerSettings"];
            let written = &output["runtimeSettings"][0]["handlerSettings"];
            for key in [
                "publicSettings",
                "protectedSettings",
                "protectedSettingsCertThumbprint",
            ] {
                assert_eq!(written[key], given[key], "{name} {key}");
                assert!(written.get(key).is_some());
            }
            seen += 1;
        }
    }
    assert!(seen > 10, "only {seen} settings found in the samples");
}

#[test]
fn settings_and_status_file_names() {
    assert_eq!(settings_file_name(None, 3).unwrap(), "3.settings");
    assert_eq!(
        settings_file_name(Some("first"), 3).unwrap(),
        "first.3.settings"
    );
    assert_eq!(status_file_name(None, 0).unwrap(), "0.status");
    assert_eq!(
        status_file_name(Some("Ext_1-a.b"), 12).unwrap(),
        "Ext_1-a.b.12.status"
    );
    for bad in ["", ".hidden", "../x", "a/b", "a b", "a\0", &"x".repeat(129)] {
        let e = status_file_name(Some(bad), 1).unwrap_err();
        assert!(e.what.starts_with("extension name \""), "{e}");
    }
}

fn handler() -> HandlerStatus {
    HandlerStatus {
        name: "Contoso.Tools.Example".into(),
        version: "1.2.3".into(),
        status: "Ready",
        code: 0,
        message: Some("Plugin enabled".into()),
        extension: None,
    }
}

// --- HandlerState and HandlerStatus ------------------------------------------------

#[test]
fn handler_state_round_trips_and_defaults_to_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_handler_state(dir.path()), HandlerState::NotInstalled);
    for state in [
        HandlerState::Installed,
        HandlerState::Enabled,
        HandlerState::FailedUpgrade,
        HandlerState::NotInstalled,
    ] {
        write_handler_state(dir.path(), state).unwrap();
        assert_eq!(read_handler_state(dir.path()), state);
    }
    let path = dir.path().join(HANDLER_STATE_FILE);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "NotInstalled");
    std::fs::write(&path, "Enabled\n").unwrap();
    assert_eq!(read_handler_state(dir.path()), HandlerState::Enabled);
    for garbled in ["enabled", "", "\u{0}\u{1}", "Enabled Installed"] {
        std::fs::write(&path, garbled).unwrap();
        assert_eq!(read_handler_state(dir.path()), HandlerState::NotInstalled);
    }
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(own("handler_manifest.json"), &path).unwrap();
    assert_eq!(read_handler_state(dir.path()), HandlerState::NotInstalled);
}

#[test]
fn extension_state_of_a_multi_config_handler() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        read_extension_state(dir.path(), "first"),
        ExtensionState::Disabled
    );
    write_extension_state(dir.path(), "first", ExtensionState::Enabled).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("first.HandlerState")).unwrap(),
        "enabled"
    );
    assert_eq!(
        read_extension_state(dir.path(), "first"),
        ExtensionState::Enabled
    );
    write_extension_state(dir.path(), "first", ExtensionState::Disabled).unwrap();
    assert_eq!(
        read_extension_state(dir.path(), "first"),
        ExtensionState::Disabled
    );
    let e = write_extension_state(dir.path(), "../first", ExtensionState::Enabled).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        read_extension_state(dir.path(), "../first"),
        ExtensionState::Disabled
    );
}

#[test]
fn handler_status_round_trips_and_tolerates_garbage() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_handler_status(dir.path()), None);
    let mut h = handler();
    h.message = Some("a \"quoted\"\nmessage".into());
    write_handler_status(dir.path(), &h).unwrap();
    assert_eq!(read_handler_status(dir.path()), Some(h.clone()));
    let path = dir.path().join(HANDLER_STATUS_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(r#"{"name": "Contoso.Tools.Example", "version": "1.2.3", "status": "Ready", "code": 0, "message": "#));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    h.message = None;
    h.status = "NotReady";
    h.code = -1;
    write_handler_status(dir.path(), &h).unwrap();
    assert_eq!(read_handler_status(dir.path()), Some(h));

    // The Python agent's file, with keys the agent does not read.
    std::fs::copy(own("handler_status_waagent.json"), &path).unwrap();
    assert_eq!(read_handler_status(dir.path()), Some(handler()));

    for garbled in [
        "",
        "{",
        "[]",
        r#"{"name": "X", "version": "1", "status": "Sleeping", "code": 0}"#,
        r#"{"name": "X", "status": "Ready", "code": 0}"#,
        r#"{"name": 1, "version": "1", "status": "Ready"}"#,
    ] {
        std::fs::write(&path, garbled).unwrap();
        assert_eq!(read_handler_status(dir.path()), None, "{garbled}");
    }
}
