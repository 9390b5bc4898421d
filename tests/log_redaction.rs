//! Secrets never reach a log line: passwords, private keys, protected
//! settings and custom data are logged here through every path the agent
//! has — plain log calls and the command runner's own logging of a failed
//! command — and the log file must not contain any of them.

use std::path::PathBuf;

use waagent::log::{init, LogOptions};
use waagent::os::{Cmd, CommandRunner, SystemRunner};

const PASSWORD: &str = "S3cret-Passw0rd!";
const KEY_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
const PROTECTED: &str = "MIIB0wYJKoZIhvcNAQcDoIIBxDCCAcACAQAxggFpMIIBZQIBADBN";
const CUSTOM_DATA: &str = "IyEvYmluL3NoCmVjaG8gc2VjcmV0IGRhdGE=";
const HASH: &str = "$6$saltsalt$0123456789abcdefghijKLMNOPqrstuvwxyzABCDEFGH";

#[test]
fn secrets_never_reach_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("waagent.log");
    let problems = init(&LogOptions {
        file: file.clone(),
        verbose: true,
        stdout: false,
        console: None,
    });
    assert!(problems.is_empty(), "{problems:?}");

    let ovf = format!(
        "<ns1:LinuxProvisioningConfigurationSet><ns1:UserName>azureuser</ns1:UserName>\
         <ns1:UserPassword>{PASSWORD}</ns1:UserPassword><ns1:CustomData>{CUSTOM_DATA}</ns1:CustomData>\
         </ns1:LinuxProvisioningConfigurationSet>"
    );
    log::info!("ovf-env.xml: {ovf}");
    log::debug!(
        "transport key:\n-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n"
    );
    log::warn!(
        "settings: {{\"runtimeSettings\":[{{\"handlerSettings\":{{\"protectedSettingsCertThumbprint\":\"F6AB\",\
         \"protectedSettings\":\"{PROTECTED}\",\"publicSettings\":{{\"commandToExecute\":\"ls\"}}}}}}]}}"
    );
    log::error!("shadow line root:{HASH}:19000:0:99999:7:::");

    // A failing command with a secret argument, logged by the runner (debug)
    // and by the caller through the error's text.
    let err = SystemRunner
        .run_ok(
            &Cmd::new("sh")
                .args(["-c", "echo \"usermod: bad hash $1\" >&2; exit 1", "sh"])
                .secret_arg(HASH),
        )
        .unwrap_err();
    log::error!("set password: {err}");
    log::logger().flush();

    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [
        PASSWORD,
        KEY_BODY,
        PROTECTED,
        CUSTOM_DATA,
        HASH,
        "0123456789abcdefghij",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into the log:\n{text}"
        );
    }
    // The lines themselves are there, with the secrets masked.
    for kept in [
        "<ns1:UserName>azureuser</ns1:UserName>",
        "<ns1:UserPassword>[REDACTED]</ns1:UserPassword>",
        "[REDACTED PRIVATE KEY]",
        "\"protectedSettings\":\"[REDACTED]\"",
        "\"protectedSettingsCertThumbprint\":\"F6AB\"",
        "\"commandToExecute\":\"ls\"",
        "shadow line root:[REDACTED]:19000",
        "set password: `sh -c",
        "'***'` failed with exit code 1: usermod: bad hash [REDACTED]",
    ] {
        assert!(
            text.contains(kept),
            "{kept:?} missing from the log:\n{text}"
        );
    }
}
