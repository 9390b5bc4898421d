//! Tests that cannot run here say so, and leave a line for `make test` to
//! print at the end: a skip inside cargo's captured output would otherwise
//! go unseen whenever the test "passes".

use std::io::Write;
use std::path::Path;
use std::process::Command;

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

/// The program that runs this crate's binaries when they were built for
/// another CPU: `WAAGENT_RS_RUNNER`, a command line split on spaces. `make
/// cross` sets it to qemu-user's, which runs the arm64 tests but cannot
/// start an arm64 program itself the way the kernel would.
pub const RUNNER_ENV: &str = "WAAGENT_RS_RUNNER";

/// [`RUNNER_ENV`]'s words, when it is set.
pub fn runner() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var(RUNNER_ENV)
        .ok()?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// A command that runs `program`, one of this crate's binaries (a test
/// binary included): directly, or through [`runner`].
pub fn own_command(program: &Path) -> Command {
    match runner() {
        Some(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// True, after noting why, when this process runs under the [`runner`]
/// and `test` checks something the emulator does not do as the kernel
/// does (`what`).
pub fn skip_under_runner(suite: &str, test: &str, what: &str) -> bool {
    let Some(words) = runner() else {
        return false;
    };
    note(
        suite,
        test,
        &format!("under {} ({RUNNER_ENV}), {what}", words[0]),
    );
    true
}
