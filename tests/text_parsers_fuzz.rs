//! Property test for the parsers of text that is not fabric XML: waagent.conf,
//! DHCP lease files, IMDS instance metadata, an extension handler's JSON
//! files, and the simulator-facing report builders' inputs. Arbitrary bytes never panic; each parser answers with
//! its typed result (a warning list, `None`, an `ImdsError`).

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use waagent::config::Config;
use waagent::ext::handler::{
    parse_status, read_heartbeat, settings_json, HandlerManifest, StatusFor, StatusOutcome,
    StatusRead,
};
use waagent::wire::endpoint::{dhclient_option_245, networkd_option_245};
use waagent::wire::imds::parse_public_keys;
use waagent::wire::reports::{health_xml, Health, ReportTarget, SubStatus};

const STATUS: &str = include_str!("../test-data/ext/status_success.json");
const MANIFEST: &str = include_str!("../test-data/ext/handler_manifest.json");
const HEARTBEAT: &str = include_str!("../test-data/ext/heartbeat.json");

/// What every status read must be, whatever the file held: one of the four
/// values, an invalid file reported as such, with a message naming it.
fn check_status(read: &StatusRead) -> Result<(), TestCaseError> {
    let s = &read.status;
    prop_assert!(["transitioning", "error", "success", "warning"].contains(&s.status));
    match read.outcome {
        StatusOutcome::Valid | StatusOutcome::Truncated => {
            prop_assert!(s.substatus.iter().all(|sub| sub.status != "bogus"))
        }
        _ => {
            prop_assert_eq!((s.status, s.code), ("error", 1012));
            prop_assert!(
                s.message.contains("/lib/X-1.0/status/0.status"),
                "{}",
                s.message
            );
        }
    }
    Ok(())
}

/// `base` with `junk` inserted at byte `cut` (moved back to a character boundary).
fn splice(base: &str, cut: usize, junk: &str) -> String {
    let mut text = base.to_string();
    let cut = (0..=cut.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text.insert_str(cut, junk);
    text
}

const LEASE: &str = "lease {\n  interface \"eth0\";\n  option unknown-245 a8:3f:81:10;\n  expire 0 2152/07/23 23:27:10;\n}\n";
const CONF: &str = include_str!("../conf/waagent.conf");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn config_never_panics_and_warns_with_file_and_line(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let (_, warnings) = Config::parse(&text, Path::new("/etc/waagent.conf"));
        for w in warnings {
            prop_assert!(w.to_string().starts_with("/etc/waagent.conf:"));
            prop_assert!(w.line >= 1 && w.line <= text.lines().count());
        }
    }

    #[test]
    fn config_mutations(cut in 0..CONF.len(), junk in "[=#\"'\\n a-zA-Z.0-9]{0,40}") {
        let mut text = CONF.to_string();
        let cut = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(cut, &junk);
        let _ = Config::parse(&text, Path::new("x.conf"));
    }

    #[test]
    fn lease_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024), secs in any::<u32>()) {
        let text = String::from_utf8_lossy(&bytes);
        let now = UNIX_EPOCH + Duration::from_secs(u64::from(secs));
        let _ = dhclient_option_245(&text, now);
        let _ = networkd_option_245(&text);
        let mixed = format!("{LEASE}{text}");
        let _ = dhclient_option_245(&mixed, now);
    }

    #[test]
    fn imds_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Err(e) = parse_public_keys(&bytes) {
            prop_assert!(e.to_string().starts_with("IMDS: "));
        }
    }

    #[test]
    fn health_reports_are_always_well_formed(desc in "\\PC{0,64}", ctl in "[\\x00-\\x1f]{0,3}", inc in "[0-9a-z<&>\"]{0,8}") {
        let target = ReportTarget { incarnation: inc, container_id: "c&<".into(), instance_id: "i>".into() };
        let body = health_xml(&target, &Health::NotReady { sub_status: SubStatus::ProvisioningFailed, description: format!("{desc}{ctl}") });
        let root = waagent::xml::parse("Health", &body).expect("our own report parses");
        let d = root.child("Container").and_then(|c| c.child("RoleInstanceList")).and_then(|r| r.child("Role"))
            .and_then(|r| r.child("Health")).and_then(|h| h.child("Details")).and_then(|d| d.child("Description"))
            .map(|d| d.text.clone());
        let ctl_shown: String = ctl.chars().map(|c| if matches!(c, '\t' | '\n' | '\r') { c } else { ' ' }).collect();
        let expected = format!("{desc}{ctl_shown}").replace('\r', "\n").replace("\n\n", "\n");
        let got = d.unwrap_or_default();
        // XML normalises line ends; compare with them folded.
        prop_assert_eq!(got.replace('\r', "\n").replace("\n\n", "\n"), expected);
    }

    #[test]
    fn handler_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = HandlerManifest::parse(&text) {
            prop_assert!(e.to_string().starts_with("HandlerManifest.json: "));
        }
        if let Err(e) = settings_json(&text) {
            prop_assert!(e.to_string().starts_with("the runtime settings: "));
        }
        let of = StatusFor { handler: "X", extension: None, seq_no: 0 };
        check_status(&parse_status(&bytes, Path::new("/lib/X-1.0/status/0.status"), &of))?;
    }

    #[test]
    fn handler_file_mutations(which in 0..3usize, cut in 0..800usize, junk in "[\\[\\]{}:,\"0-9a-zA-Z \\\\\n]{0,24}") {
        let base = [STATUS, MANIFEST, HEARTBEAT][which];
        let text = splice(base, cut, &junk);
        let _ = HandlerManifest::parse(&text);
        let of = StatusFor { handler: "X", extension: Some("e"), seq_no: 0 };
        check_status(&parse_status(text.as_bytes(), Path::new("/lib/X-1.0/status/0.status"), &of))?;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartbeat.log");
        std::fs::write(&path, &text).unwrap();
        let _ = read_heartbeat(&path, std::time::SystemTime::now());
    }
}
