//! Fuzz targets for waagent-rs: every parser that reads outside input.
//!
//! [`targets`] holds one body per target; `fuzz_targets/*.rs` hand them to
//! libFuzzer (`cargo +nightly fuzz run --fuzz-dir tests/fuzz NAME`) and
//! `examples/stable_fuzz.rs` runs them on stable with [`mutate`]'s loop.
//! `make fuzz` (scripts/fuzz) picks one or the other.

pub mod mutate;
pub mod targets;
