//! Text that is not fabric XML: IMDS JSON, DHCP leases, waagent.conf, the
//! Hyper-V KVP pool, and log lines on their way through `redact`.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use waagent::config::Config;
use waagent::env::rdma::{kvp_lookup, parse_ipoib_data, KVP_KEY_SIZE, KVP_VALUE_SIZE};
use waagent::redact::redact;
use waagent::wire::endpoint::{dhclient_option_245, networkd_option_245};
use waagent::wire::imds::parse_public_keys;

use super::lossy;
use super::ovf::assert_key_path;

pub fn imds_json(data: &[u8]) {
    match parse_public_keys(data) {
        Ok(keys) => {
            for k in keys {
                assert_eq!(k.key_data, k.key_data.trim());
                assert_key_path(&k.path, "azureuser", false);
            }
        }
        Err(e) => assert!(e.to_string().starts_with("IMDS: "), "{e}"),
    }
}

pub fn dhcp_leases(data: &[u8]) {
    let text = lossy(data);
    // 2026-12-04, the epoch, and the end of year 9999.
    for secs in [1_796_342_400, 0, 253_402_300_799] {
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        if dhclient_option_245(&text, now).is_some() {
            assert!(
                text.contains("option unknown-245 "),
                "an address from nowhere"
            );
        }
    }
    if networkd_option_245(&text).is_some() {
        assert!(text.contains("OPTION_245="), "an address from nowhere");
    }
}

pub fn waagent_conf(data: &[u8]) {
    let text = lossy(data);
    let (config, warnings) = Config::parse(&text, Path::new("/etc/waagent.conf"));
    let lines = text.lines().count();
    for w in warnings {
        assert!(w.to_string().starts_with("/etc/waagent.conf:"), "{w}");
        assert!(w.line >= 1 && w.line <= lines, "line {} of {lines}", w.line);
    }
    // What -show-configuration prints.
    let _ = config.entries();
}

pub fn kvp_pool(data: &[u8]) {
    // The bytes as the pool file itself.
    for key in ["NdDriverVersion", "IPoIB_Data"] {
        if let Some(value) = kvp_lookup(data, key) {
            let _ = parse_ipoib_data(&value);
        }
    }
    // The text as `key=value` lines, written as hv_kvp_daemon writes them:
    // what goes in must come out.
    let text = lossy(data);
    let mut pool = Vec::new();
    let mut first: Vec<(&str, &str)> = Vec::new();
    for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
        if key.len() >= KVP_KEY_SIZE || value.len() >= KVP_VALUE_SIZE || key.contains('\0') {
            continue;
        }
        pool.extend(padded(key, KVP_KEY_SIZE));
        pool.extend(padded(value, KVP_VALUE_SIZE));
        if !first.iter().any(|(k, _)| *k == key) {
            first.push((key, value));
        }
    }
    for (key, value) in first {
        let stored = value.split('\0').next().unwrap_or_default();
        assert_eq!(kvp_lookup(&pool, key).as_deref(), Some(stored), "{key:?}");
    }
    match parse_ipoib_data(&text) {
        Ok(pairs) => {
            for (mac, _) in pairs {
                assert!(!mac.is_empty() && mac.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }
        Err(e) => assert!(e.to_string().starts_with("IPoIB_Data: "), "{e}"),
    }
}

fn padded(s: &str, size: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(size, 0);
    v
}

/// A secret that only these framings put into the line.
const SECRET: &str = "Zq9xK2mSeCrEt";

pub fn log_redaction(data: &[u8]) {
    let text = lossy(data);
    let _ = redact(&text);
    // libFuzzer learns the secret from the comparisons below; once the
    // input holds it, it is no longer only in the framing.
    if text.contains(SECRET) {
        return;
    }
    // Whatever precedes it, a secret in each shape the redactor knows is
    // blanked.
    let framed = [
        format!("{text}<UserPassword>{SECRET}</UserPassword>"),
        format!("{text}<wa:CustomData>{SECRET}</wa:CustomData>"),
        format!("{text}\n-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n"),
        format!("{text} https://a.blob.core.windows.net/c/b?sv=1&sig={SECRET}&se=2"),
    ];
    for line in &framed {
        let shown = redact(line);
        assert!(!shown.contains(SECRET), "survives redaction: {shown:?}");
    }
}
