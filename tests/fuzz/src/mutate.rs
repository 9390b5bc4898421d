//! The stable fallback's fuzzing loop: no coverage feedback, just the
//! seeds pseudo-randomly mutated (bit flips, the bytes and numbers the
//! parsers care about, cuts, splices) and fed to a target body, with every
//! panic caught and kept. Used where nightly (and so libFuzzer) is missing,
//! and by `tests/fuzz_targets.rs` for a short deterministic run.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::Instant;

/// xorshift64*: small, fast, and the same sequence for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes with a meaning to XML, PEM/DER, JSON, lease and table parsers.
const BYTES: &[u8] = b"<>/&;:=#\"' \n\r\t\0-[]!?${},.|0123456789abcdefxAFZ\xff\x80\x30\x02\x03\x04\x05\x06\x17\x18\x1f\x7f\x81\x82\x84\xa0";

/// Numbers at the edges of the integer types the parsers use.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "255",
    "256",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "99999999999999999999999",
    "1e999",
];

/// Inputs never grow beyond this.
const MAX_LEN: usize = 64 * 1024;

/// A new input: a seed (now and then random bytes or nothing) with one to
/// eight edits.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = match rng.below(32) {
        0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        1 => Vec::new(),
        _ if seeds.is_empty() => Vec::new(),
        _ => seeds[rng.below(seeds.len())].clone(),
    };
    for _ in 0..1 + rng.below(8) {
        edit(rng, &mut v, seeds);
    }
    v.truncate(MAX_LEN);
    v
}

fn edit(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = v.len();
    let at = rng.below(len + 1);
    match rng.below(10) {
        0 if len > 0 => v[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => v[at.min(len - 1)] = rng.next() as u8,
        2 if len > 0 => v[at.min(len - 1)] = BYTES[rng.below(BYTES.len())],
        3 => v.insert(at, BYTES[rng.below(BYTES.len())]),
        4 if len > 0 => {
            let end = (at + 1 + rng.below(16)).min(len);
            v.drain(at.min(len - 1)..end);
        }
        5 => v.truncate(at),
        6 if len > 0 => {
            let start = rng.below(len);
            let chunk = v[start..(start + 1 + rng.below(64)).min(len)].to_vec();
            v.splice(at..at, chunk);
        }
        7 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(128)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
        }
        8 => {
            // A run of digits at or after `at` becomes an edge number.
            let number = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
            match v[at..].iter().position(u8::is_ascii_digit) {
                Some(i) => {
                    let start = at + i;
                    let end = start + v[start..].iter().take_while(|b| b.is_ascii_digit()).count();
                    v.splice(start..end, number.iter().copied());
                }
                None => {
                    v.splice(at..at, number.iter().copied());
                }
            }
        }
        _ => v.insert(at, rng.next() as u8),
    }
}

/// A panic a body raised, and the input that raised it.
pub struct Crash {
    /// Where it panicked (`file:line:column`).
    pub location: String,
    /// The panic as the default hook would show it.
    pub message: String,
    pub input: Vec<u8>,
}

/// What a run did.
#[derive(Default)]
pub struct Outcome {
    pub executions: u64,
    /// One per panic location, with the first input that reached it.
    pub crashes: Vec<Crash>,
}

/// Distinct crashes kept per run; more are counted as executions only.
const MAX_CRASHES: usize = 16;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

/// A panic hook that keeps the message of a panic raised inside [`run`]
/// (instead of printing it) and leaves every other panic to the previous
/// hook, so tests running beside a fuzz run still report theirs.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let location = info.location().map(ToString::to_string).unwrap_or_default();
                LAST_PANIC.with(|l| *l.borrow_mut() = (location, info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `body` on every seed, then on mutations of them until `deadline`
/// or `max_executions`, whichever comes first.
pub fn run(
    body: fn(&[u8]),
    seeds: &[Vec<u8>],
    rng_seed: u64,
    deadline: Option<Instant>,
    max_executions: u64,
) -> Outcome {
    install_hook();
    let mut rng = Rng::new(rng_seed);
    let mut outcome = Outcome::default();
    let mut seeded = seeds.iter();
    while outcome.executions < max_executions {
        if outcome.executions % 64 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let input = match seeded.next() {
            Some(seed) => seed.clone(),
            None => mutate(&mut rng, seeds),
        };
        QUIET.with(|q| q.set(true));
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&input)));
        QUIET.with(|q| q.set(false));
        outcome.executions += 1;
        if result.is_err() {
            let (location, message) = LAST_PANIC.with(|l| std::mem::take(&mut *l.borrow_mut()));
            let known = outcome.crashes.iter().any(|c| c.location == location);
            if !known && outcome.crashes.len() < MAX_CRASHES {
                outcome.crashes.push(Crash {
                    location,
                    message,
                    input,
                });
            }
        }
    }
    outcome
}
