use super::*;
use crate::wire::status::{ExtensionStatus, SubStatus};
use std::path::PathBuf;
use std::time::UNIX_EPOCH;
use std::time::{Duration, SystemTime};

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

fn single(seq_no: u64) -> StatusFor<'static> {
    StatusFor {
        handler: "Contoso.Tools.Example",
        extension: None,
        seq_no,
    }
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

// --- Status files --------------------------------------------------------------

#[test]
fn a_valid_status_file() {
    let path = own("status_success.json");
    let read = read_status(&path, &single(4));
    assert_eq!(read.outcome, StatusOutcome::Valid);
    assert_eq!(
        read.status,
        ExtensionStatus {
            extension_name: None,
            name: "Contoso.Tools.Example".into(),
            sequence_number: 4,
            operation: Some("Enable".into()),
            status: "success",
            code: 0,
            message: "Enabled".into(),
            configuration_applied_time: Some("2024-05-01T11:59:58Z".into()),
            substatus: vec![
                SubStatus {
                    name: Some("StdOut".into()),
                    status: "success",
                    code: 0,
                    message: Some("hello".into()),
                },
                SubStatus {
                    name: Some("StdErr".into()),
                    status: "warning",
                    code: 3,
                    message: Some("a \"quoted\"\nline".into()),
                },
                SubStatus {
                    name: None,
                    status: "error",
                    code: 0,
                    message: None,
                },
            ],
        }
    );

    // A multi-config extension's status carries its name.
    let of = StatusFor {
        handler: "Contoso.Test.MultiHandler",
        extension: Some("first"),
        seq_no: 3,
    };
    let read = read_status(&path, &of);
    assert_eq!(read.status.extension_name.as_deref(), Some("first"));
    assert_eq!(read.status.name, "first");
}

#[test]
fn a_status_value_waagent_does_not_know_is_an_error() {
    let read = read_status(&own("status_unknown_value.json"), &single(1));
    assert_eq!(read.outcome, StatusOutcome::Valid);
    assert_eq!(read.status.status, "error");
    assert_eq!(read.status.code, 12);
    assert_eq!(read.status.operation.as_deref(), Some("Install"));
    assert_eq!(read.status.message, "");
}

#[test]
fn a_missing_status_file_is_reported_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.status");
    let read = read_status(&path, &single(0));
    assert_eq!(read.outcome, StatusOutcome::Missing);
    assert!(!read.outcome.may_be_transient());
    assert_eq!((read.status.status, read.status.code), ("transitioning", 0));
    assert_eq!(
        read.status.message,
        format!(
            "This status is being reported by the Guest Agent since no status file was reported \
             by extension Contoso.Tools.Example: Status file {} does not exist",
            path.display()
        )
    );
    assert_eq!(read.status.operation, None);
    assert_eq!(read.status.sequence_number, 0);
}

/// Every bad file: `error`, its code, what was found, and a message that
/// names the file.
#[test]
fn bad_status_files() {
    let cases: [(&str, StatusOutcome, &str); 5] = [
        (
            "status_half_written.json",
            StatusOutcome::NotJson,
            "is not valid JSON: EOF while parsing a string at line 1 column 93",
        ),
        (
            "status_object.json",
            StatusOutcome::Schema,
            "is not a JSON array",
        ),
        (
            "status_bad_substatus.json",
            StatusOutcome::Schema,
            r#"has status.substatus[0].status "done\u{1b}[31m", not one of transitioning, error, success, warning"#,
        ),
        (
            "status_bad_message.json",
            StatusOutcome::Schema,
            "has no lang",
        ),
        (
            "heartbeat.json",
            StatusOutcome::Schema,
            "has no status object in element 0",
        ),
    ];
    for (name, outcome, problem) in cases {
        let path = own(name);
        let read = read_status(&path, &single(2));
        assert_eq!(read.outcome, outcome, "{name}");
        assert_eq!(read.status.status, "error", "{name}");
        assert_eq!(read.status.code, CODE_STATUS_INVALID, "{name}");
        assert!(
            read.status.message.contains(&path.display().to_string()),
            "{name}: {}",
            read.status.message
        );
        assert!(
            read.status.message.ends_with(problem),
            "{name}: {}",
            read.status.message
        );
        assert!(
            read.status.message.contains("(sequence number 2)"),
            "{name}"
        );
    }
    // A half-written file does not show its content.
    let read = read_status(&own("status_half_written.json"), &single(2));
    assert!(!read.status.message.contains("formattedMessage"));
    assert!(read.outcome.may_be_transient());
}

#[test]
fn status_files_that_are_not_files_or_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);

    std::fs::write(at("empty.status"), "").unwrap();
    std::fs::write(at("blank.status"), "\u{feff} \n").unwrap();
    for name in ["empty.status", "blank.status"] {
        let read = read_status(&at(name), &single(1));
        assert_eq!(read.outcome, StatusOutcome::Empty, "{name}");
        assert!(read.outcome.may_be_transient());
        assert_eq!(
            (read.status.status, read.status.code),
            ("error", CODE_STATUS_INVALID)
        );
        assert!(read.status.message.ends_with("is empty"));
    }

    std::fs::write(
        at("latin1.status"),
        b"[{\"status\": {\"status\": \"\xe9\"}}]",
    )
    .unwrap();
    assert_eq!(
        read_status(&at("latin1.status"), &single(1)).outcome,
        StatusOutcome::NotJson
    );

    std::fs::write(at("empty_array.status"), "[]").unwrap();
    let read = read_status(&at("empty_array.status"), &single(1));
    assert_eq!(read.outcome, StatusOutcome::Schema);
    assert!(read.status.message.ends_with("is an empty array"));

    // A BOM is tolerated.
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(std::fs::read(own("status_success.json")).unwrap());
    std::fs::write(at("bom.status"), bom).unwrap();
    assert_eq!(
        read_status(&at("bom.status"), &single(1)).outcome,
        StatusOutcome::Valid
    );

    // A link is not followed, even to a valid status.
    std::os::unix::fs::symlink(own("status_success.json"), at("link.status")).unwrap();
    let read = read_status(&at("link.status"), &single(1));
    assert_eq!(read.outcome, StatusOutcome::NotRegular);
    assert_eq!(read.status.code, CODE_STATUS_INVALID);
    assert!(read
        .status
        .message
        .ends_with("is a symbolic link, not a regular file"));

    // A FIFO neither hangs the open nor is read.
    nix::unistd::mkfifo(&at("fifo.status"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let read = read_status(&at("fifo.status"), &single(1));
    assert_eq!(read.outcome, StatusOutcome::NotRegular);
    assert!(read
        .status
        .message
        .ends_with("is a FIFO, not a regular file"));

    std::fs::create_dir(at("dir.status")).unwrap();
    assert_eq!(
        read_status(&at("dir.status"), &single(1)).outcome,
        StatusOutcome::NotRegular
    );

    // Over 1 MiB: refused without parsing, however valid.
    let padding = " ".repeat(STATUS_MAX_BYTES);
    std::fs::write(
        at("huge.status"),
        format!("[{{\"status\": {{\"status\": \"success\"}}}}{padding}]"),
    )
    .unwrap();
    let read = read_status(&at("huge.status"), &single(1));
    assert_eq!(read.outcome, StatusOutcome::TooLarge);
    assert_eq!(read.status.status, "error");
    assert!(read.status.message.contains("is over 1048576 bytes"));
}

/// A status file over 128 KiB with long texts, built here.
fn oversized_status(
    message_chars: usize,
    subs: usize,
    name_chars: usize,
    msg_chars: usize,
) -> String {
    let sub = serde_json::json!({
        "name": "n".repeat(name_chars),
        "status": "success",
        "code": 0,
        "formattedMessage": {"lang": "en-US", "message": "m".repeat(msg_chars)},
    });
    serde_json::json!([{
        "status": {
            "status": "success",
            "operation": "o".repeat(5000),
            "formattedMessage": {"lang": "en-US", "message": "é".repeat(message_chars)},
            "substatus": vec![sub; subs],
        }
    }])
    .to_string()
}

#[test]
fn oversized_status_files_are_cut_as_waagent_cuts_them() {
    let text = oversized_status(2000, 30, 6000, 12_000);
    assert!(text.len() > STATUS_TRUNCATE_BYTES);
    let read = parse_status(text.as_bytes(), Path::new("/x/0.status"), &single(0));
    assert_eq!(read.outcome, StatusOutcome::Truncated);
    let s = &read.status;
    assert_eq!(s.message, format!("{} ... [TRUNCATED]", "é".repeat(1024)));
    // 1040 characters of message, then 6000 + 10256 per substatus: seven
    // fit in 128 KiB.
    assert_eq!(s.substatus.len(), 7);
    for sub in &s.substatus {
        assert_eq!(sub.name.as_deref(), Some("n".repeat(6000).as_str()));
        assert_eq!(
            sub.message.as_deref(),
            Some(format!("{} ... [TRUNCATED]", "m".repeat(10_240)).as_str())
        );
    }
    assert_eq!(
        s.operation.as_deref(),
        Some(format!("{} ... [TRUNCATED]", "o".repeat(1024)).as_str())
    );

    // Under 128 KiB nothing is cut but the short fields.
    let text = oversized_status(5000, 2, 20_000, 20_000);
    assert!(text.len() < STATUS_TRUNCATE_BYTES);
    let read = parse_status(text.as_bytes(), Path::new("/x/0.status"), &single(0));
    assert_eq!(read.outcome, StatusOutcome::Valid);
    assert_eq!(read.status.message.chars().count(), 5000);
    assert_eq!(read.status.substatus.len(), 2);
    assert_eq!(
        read.status.substatus[1].message.as_deref().map(str::len),
        Some(20_000)
    );
}

#[test]
fn sample_status_files() {
    let Some(dir) = sample("") else {
        return;
    };
    let read = read_status(&dir.join("sample-status.json"), &single(0));
    assert_eq!(read.outcome, StatusOutcome::Valid);
    let s = &read.status;
    assert_eq!((s.status, s.code), ("success", 1));
    assert_eq!(s.operation.as_deref(), Some("Enable"));
    assert_eq!(s.configuration_applied_time, None);
    assert_eq!(
        s.message,
        "Aenean semper nunc nisl, vitae sollicitudin felis consequat at. In lobortis elementum \
         sapien, non commodo odio semper ac."
    );
    assert_eq!(s.substatus.len(), 1);
    let sub = &s.substatus[0];
    assert_eq!(
        (sub.status, sub.code, sub.message.as_deref()),
        ("success", 0, None)
    );
    assert!(sub
        .name
        .as_deref()
        .unwrap()
        .starts_with(r#"[{"status": {"status": "success", "code": "1", "snapshotInfo": "#));

    let read = read_status(&dir.join("sample-status-very-large.json"), &single(0));
    assert_eq!(read.outcome, StatusOutcome::Truncated);
    let s = &read.status;
    assert_eq!((s.status, s.code), ("success", 1));
    assert!(s.message.starts_with(
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Vestibulum non lacinia urna, sit "
    ));
    assert!(s.message.ends_with(" ... [TRUNCATED]"));
    assert_eq!(s.message.chars().count(), 1024 + 16);
    assert_eq!(s.substatus.len(), 1);
    let sub = &s.substatus[0];
    assert_eq!((sub.status, sub.code), ("success", 0));
    assert_eq!(sub.name.as_deref().unwrap().chars().count(), 10_240 + 16);
    assert!(sub.message.as_deref().unwrap().starts_with(
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Vestibulum non lacinia urna, sit amet venenatis orci"
    ));

    for (name, outcome) in [
        (
            "sample-status-invalid-json-format.json",
            StatusOutcome::NotJson,
        ),
        (
            "sample-status-invalid-format-emptykey-line7.json",
            StatusOutcome::NotJson,
        ),
        (
            "sample-status-invalid-status-no-status-status-key.json",
            StatusOutcome::Schema,
        ),
    ] {
        let read = read_status(&dir.join(name), &single(0));
        assert_eq!(read.outcome, outcome, "{name}");
        assert_eq!(
            (read.status.status, read.status.code),
            ("error", CODE_STATUS_INVALID),
            "{name}"
        );
        assert!(read.status.message.contains(name));
        // The file's content stays out of the message.
        assert!(!read.status.message.contains("uniqueMachineId"), "{name}");
    }
}

/// A status read from a file reaches the status blob in §12's shape.
#[test]
fn a_status_read_goes_into_the_status_blob() {
    let read = read_status(&own("status_success.json"), &single(4));
    let handler = HandlerStatus {
        extension: Some(read.status),
        ..handler()
    };
    let agent = crate::wire::status::AgentStatus {
        os_name: "debian".into(),
        os_version: "12".into(),
        computer_name: "vm1".into(),
        in_svd_seq_no: None,
        goal_state: crate::wire::status::GoalStateOutcome::InProgress,
    };
    let blob = crate::wire::status::aggregate_status(&agent, &[handler], UNIX_EPOCH);
    let v: Value = serde_json::from_str(&blob).unwrap();
    let h = &v["aggregateStatus"]["handlerAggregateStatus"][0];
    assert_eq!(h["handlerName"], "Contoso.Tools.Example");
    assert_eq!(h["runtimeSettingsStatus"]["sequenceNumber"], 4);
    let st = &h["runtimeSettingsStatus"]["settingsStatus"]["status"];
    assert_eq!(st["configurationAppliedTime"], "2024-05-01T11:59:58Z");
    assert_eq!(st["operation"], "Enable");
    assert_eq!(
        st["formattedMessage"],
        serde_json::json!({"lang": "en-US", "message": "Enabled"})
    );
    assert_eq!(st["substatus"].as_array().unwrap().len(), 3);
    assert_eq!(
        st["substatus"][1],
        serde_json::json!({"name": "StdErr", "status": "warning", "code": 3,
            "formattedMessage": {"lang": "en-US", "message": "a \"quoted\"\nline"}})
    );
    assert_eq!(st["substatus"][2]["name"], Value::Null);
}

// --- Heartbeat -------------------------------------------------------------------

fn handler() -> HandlerStatus {
    HandlerStatus::enabled("Contoso.Tools.Example", "1.2.3")
}

#[test]
fn a_fresh_heartbeat_sets_the_handlers_status() {
    let path = own("heartbeat.json");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    for now in [
        mtime,
        mtime + HEARTBEAT_MAX_AGE,
        mtime - Duration::from_secs(3600),
    ] {
        let hb = read_heartbeat(&path, now);
        assert_eq!(
            hb,
            Heartbeat::Reported {
                status: "Ready",
                code: 0,
                message: Some("running".into())
            }
        );
    }
    let mut h = handler();
    h.status = "NotReady";
    h.code = 5;
    read_heartbeat(&path, mtime).apply(&mut h);
    assert_eq!(
        (h.status, h.code, h.message.as_deref()),
        ("Ready", 5, Some("running"))
    );
}

#[test]
fn a_stale_heartbeat_is_unresponsive() {
    let path = own("heartbeat.json");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let hb = read_heartbeat(&path, mtime + HEARTBEAT_MAX_AGE + Duration::from_secs(1));
    assert_eq!(hb, Heartbeat::Unresponsive);
    let mut h = handler();
    hb.apply(&mut h);
    assert_eq!(
        (h.status, h.code, h.message.as_deref()),
        (
            "Unresponsive",
            -1,
            Some("Extension heartbeat is not responsive")
        )
    );
    // Stale wins over malformed: the age is looked at first, as waagent does.
    let bad = own("heartbeat_bad_status.json");
    let mtime = std::fs::metadata(&bad).unwrap().modified().unwrap();
    assert_eq!(
        read_heartbeat(&bad, mtime + Duration::from_secs(601)),
        Heartbeat::Unresponsive
    );
}

#[test]
fn missing_or_malformed_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let missing = dir.path().join(HEARTBEAT_FILE);
    let Heartbeat::Invalid(why) = read_heartbeat(&missing, now) else {
        panic!("a missing heartbeat is invalid");
    };
    assert_eq!(
        why,
        format!(
            "Failed to get heartbeat file {}: it does not exist",
            missing.display()
        )
    );
    let mut h = handler();
    read_heartbeat(&missing, now).apply(&mut h);
    assert_eq!((h.status, h.code), ("NotReady", -1));

    let bad = own("heartbeat_bad_status.json");
    let mtime = std::fs::metadata(&bad).unwrap().modified().unwrap();
    assert_eq!(
        read_heartbeat(&bad, mtime),
        Heartbeat::Invalid(format!(
            "Malformed heartbeat file {}: heartbeat.status \"Sleeping\" is not one of Ready, NotReady, Installing, Unresponsive",
            bad.display()
        ))
    );
    for (text, why) in [
        ("", "not valid JSON"),
        ("{}", "no heartbeat object"),
        (r#"[{"heartbeat": {"code": 0}}]"#, "no heartbeat.status"),
        (
            r#"[{"heartbeat": {"status": "Ready", "formattedMessage": {"lang": "en"}}}]"#,
            "heartbeat.formattedMessage has no message",
        ),
    ] {
        std::fs::write(&missing, text).unwrap();
        let Heartbeat::Invalid(got) = read_heartbeat(&missing, SystemTime::now()) else {
            panic!("{text} should be invalid");
        };
        assert!(got.contains(why), "{text}: {got}");
    }
    // Its status in any case, named as the status blob names it; a long
    // message cut.
    std::fs::write(
        &missing,
        format!(
            r#"[{{"heartbeat": {{"status": "notready", "code": "4", "formattedMessage": {{"lang": "en-US", "message": "{}"}}}}}}]"#,
            "x".repeat(3000)
        ),
    )
    .unwrap();
    let Heartbeat::Reported {
        status,
        code,
        message,
    } = read_heartbeat(&missing, SystemTime::now())
    else {
        panic!("valid heartbeat");
    };
    assert_eq!((status, code), ("NotReady", 4));
    assert_eq!(message.unwrap().len(), 1024 + 16);
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
