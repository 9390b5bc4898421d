//! Tests that cannot run here say so, and leave a line for `make test` to
//! print at the end: a skip inside cargo's captured output would otherwise
//! go unseen whenever the test "passes".

use std::io::Write;

/// The file `make test` collects skips in (one line each).
pub const LOG_ENV: &str = "WAAGENT_RS_SKIP_LOG";

/// Records that `test` (in the suite `suite`) did not run, and why.
pub fn note(suite: &str, test: &str, why: &str) {
    eprintln!("skipping {suite}::{test}: {why}");
    let Some(path) = std::env::var_os(LOG_ENV) else {
        return;
    };
    // Appends of one short line are atomic, so parallel tests do not mix.
    let line = format!("{suite}::{test}: {why}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
