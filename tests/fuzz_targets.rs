//! The fuzz targets of `tests/fuzz` in the normal suite: every body runs
//! on its seeds and on a few thousand deterministic mutations of them, so
//! the bodies build with the crate, the seeds pass every invariant, and a
//! crash `make fuzz` once found stays fixed. `make fuzz` runs the same
//! bodies for minutes under libFuzzer (or the stable loop).

#[path = "fuzz/src/mutate.rs"]
mod mutate;
#[path = "fuzz/src/targets/mod.rs"]
mod targets;

use std::path::Path;

/// Mutated inputs per target: enough to shake out a broken invariant in
/// a second or two of a debug build.
const EXECUTIONS: u64 = 3000;

/// Inputs that once crashed a target (`make fuzz`, minimised with
/// libFuzzer's `-minimize_crash`), by target; each must now pass its body.
/// The unit tests beside each fix hold the same cases in readable form.
const REGRESSIONS: &[(&str, &[u8])] = &[
    // lease_expired: a 15-digit day overflowed the day count.
    ("dhcp_leases", b"expire 1/0/151011294050823 3:2:7"),
    // networkd: U+FFFD in the eight bytes of OPTION_245 (slice panic).
    ("dhcp_leases", "OPTION_245=\u{fffd}a83f8".as_bytes()),
    // ovf::masked: a stray closing tag masked over the one before it, so
    // masking twice differed.
    ("ovf_env", b"<UserPassword</UserPassword</UserPassword"),
    // redact: an END line without its dashes hid the next key.
    (
        "log_redaction",
        b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY",
    ),
    // The target itself: libFuzzer put the framing's secret into the input.
    ("log_redaction", b"Zq9xK2mSeCrEt"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_target_has_seeds() {
    for t in targets::TARGETS {
        assert!(!t.covers.is_empty(), "{} says what it covers", t.name);
        assert!(
            !targets::seeds(root(), t.name).is_empty(),
            "{} has no seeds in tests/fuzz/seeds.txt",
            t.name
        );
    }
}

#[test]
fn every_target_has_a_libfuzzer_entry() {
    let dir = root().join("tests/fuzz/fuzz_targets");
    let manifest = std::fs::read_to_string(root().join("tests/fuzz/Cargo.toml")).unwrap();
    for t in targets::TARGETS {
        assert!(dir.join(format!("{}.rs", t.name)).is_file(), "{}", t.name);
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "{} is not a [[bin]] of tests/fuzz/Cargo.toml",
            t.name
        );
    }
}

#[test]
fn targets_survive_their_seeds_and_mutations() {
    let mut failures = Vec::new();
    for t in targets::TARGETS {
        let seeds = targets::seeds(root(), t.name);
        let outcome = mutate::run(t.run, &seeds, 0x5eed, None, seeds.len() as u64 + EXECUTIONS);
        for c in outcome.crashes {
            failures.push(format!(
                "{}: {}\ninput: {:?}",
                t.name,
                c.message,
                String::from_utf8_lossy(&c.input)
            ));
        }
    }
    targets::cleanup();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn crashes_found_by_fuzzing_stay_fixed() {
    for (name, input) in REGRESSIONS {
        let t = targets::find(name).expect("a target");
        (t.run)(input);
    }
    targets::cleanup();
}
