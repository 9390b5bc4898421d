//! `make bench`'s arithmetic: the parsers of the daemon's timeline line and
//! of strace's output, the statistics, the README section and the driver's
//! pure parts (scripts/bench-lib/test_report.py), run in every `cargo test`.

use std::path::Path;
use std::process::Command;

#[test]
fn bench_parsers_and_statistics() {
    // The system's Python, the one waagent 2.7.3 runs on and the bench uses.
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        waagent::sim::skips::note(
            "bench_scripts",
            "bench_parsers_and_statistics",
            "no /usr/bin/python3 (run scripts/setup)",
        );
        return;
    }
    let out = Command::new(python)
        .args(["-m", "unittest", "-v", "test_report"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-lib"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // unittest reports how many ran: a suite that found no tests is a failure.
    assert!(
        err.contains("Ran ") && !err.contains("Ran 0 tests"),
        "{err}"
    );
}
