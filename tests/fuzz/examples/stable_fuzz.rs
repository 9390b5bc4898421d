//! The stable fallback of `make fuzz`: runs a target body over mutated
//! seeds for a number of seconds, saves each distinct crash's input and
//! ends with one `RESULT` line for scripts/fuzz.
//!
//! ```text
//! stable-fuzz --list
//! stable-fuzz TARGET SECONDS ARTIFACT_DIR [RNG_SEED]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use waagent_fuzz::{mutate, targets};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for t in targets::TARGETS {
            println!("{:<20} {}", t.name, t.covers);
        }
        return ExitCode::SUCCESS;
    }
    let [name, seconds, artifacts, rest @ ..] = args.as_slice() else {
        eprintln!("usage: stable-fuzz --list | TARGET SECONDS ARTIFACT_DIR [RNG_SEED]");
        return ExitCode::from(2);
    };
    let Some(target) = targets::find(name) else {
        eprintln!("stable-fuzz: no target {name:?} (see --list)");
        return ExitCode::from(2);
    };
    let (Ok(seconds), Ok(rng_seed)) = (
        seconds.parse::<u64>(),
        rest.first().map_or(Ok(0x5eed), |s| s.parse::<u64>()),
    ) else {
        eprintln!("stable-fuzz: SECONDS and RNG_SEED are whole numbers");
        return ExitCode::from(2);
    };

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let seeds = targets::seeds(&root, name);
    println!(
        "{name}: {} seeds, {seconds} s, rng seed {rng_seed}",
        seeds.len()
    );
    let started = Instant::now();
    let outcome = mutate::run(
        target.run,
        &seeds,
        rng_seed,
        Some(started + Duration::from_secs(seconds)),
        u64::MAX,
    );
    let elapsed = started.elapsed().as_secs();
    targets::cleanup();

    let dir = PathBuf::from(artifacts);
    for crash in &outcome.crashes {
        let path = dir.join(format!("crash-{:016x}", fnv1a(&crash.input)));
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &crash.input))
        {
            eprintln!("stable-fuzz: cannot save {}: {e}", path.display());
        }
        println!("crash: {}\n{}", path.display(), crash.message);
    }
    println!(
        "RESULT target={name} seconds={elapsed} executions={} crashes={}",
        outcome.executions,
        outcome.crashes.len()
    );
    if outcome.crashes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A stable name for a crash input.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
