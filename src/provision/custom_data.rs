//! CustomData from ovf-env.xml (§9.1 step 6.5.7): saved to `<lib>/CustomData`
//! (0600: it often holds secrets), base64-decoded when configured, and run
//! as a program when `Provisioning.ExecuteCustomData=y` — directly, by its
//! own interpreter line, never through a shell.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::fsutil;
use crate::os::{Cmd, CommandRunner};

/// The file name waagent uses in Lib.Dir.
pub const FILE: &str = "CustomData";
/// Custom data runs to completion before Ready is reported; bound it
/// (waagent waits for ever).
pub const EXECUTE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Test hook: `WAAGENT_RS_TEST_CUSTOM_DATA_TIMEOUT=<seconds>` replaces
/// [`EXECUTE_TIMEOUT`], so an end-to-end test can watch a hanging script
/// time out. Unset in production.
pub const TIMEOUT_HOOK_ENV: &str = "WAAGENT_RS_TEST_CUSTOM_DATA_TIMEOUT";

/// Writes the custom data, decoded when `decode` (the current agent also
/// decodes whenever it will execute).
pub fn save(lib_dir: &Path, data: &str, decode: bool) -> Result<PathBuf, String> {
    let bytes = if decode {
        let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("CustomData is not valid base64: {e}"))?
    } else {
        data.as_bytes().to_vec()
    };
    let path = lib_dir.join(FILE);
    fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Runs the saved custom data (made 0700 first). Its failure is reported
/// to the caller, who logs it: a user's script failing (or timing out) does
/// not make the VM's provisioning fail, as with waagent. Background
/// processes it starts outlive it; on timeout its process group is killed.
pub fn execute(runner: &dyn CommandRunner, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let timeout = std::env::var(TIMEOUT_HOOK_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(EXECUTE_TIMEOUT, Duration::from_secs);
    runner
        .run_ok(&Cmd::new(path.to_string_lossy()).timeout(timeout))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::SystemRunner;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_raw_or_decoded_private() {
        let lib = tempfile::tempdir().unwrap();
        let p = save(lib.path(), "IyEvYmluL3NoCmVj\naG8gaGk=", true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "#!/bin/sh\necho hi");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        save(lib.path(), "raw text", false).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "raw text");
        assert_eq!(
            save(lib.path(), "not base64!", true).unwrap_err(),
            "CustomData is not valid base64: Invalid symbol 33, offset 9."
        );
    }

    #[test]
    fn executed_as_a_program() {
        let lib = tempfile::tempdir().unwrap();
        let marker = lib.path().join("ran");
        let script = format!("#!/bin/sh\necho \"$0\" > {}\n", marker.display());
        let p = save(lib.path(), &script, false).unwrap();
        execute(&SystemRunner, &p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            p.display().to_string()
        );
        save(lib.path(), "#!/bin/sh\nexit 3\n", false).unwrap();
        assert!(execute(&SystemRunner, &p)
            .unwrap_err()
            .ends_with("failed with exit code 3"));
    }
}
