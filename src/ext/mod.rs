//! VM extensions (§13 of PROTOCOL.md): handlers downloaded, unpacked, run and
//! supervised, their status reported.
//!
//! Single-threaded like the rest of the agent: a handler's command is a child
//! process the daemon's loop looks at on each turn, never waits on. What to
//! do is decided by a pure planner from the ExtensionsConfig and what is on
//! disk; an executor carries the plan out one step per turn.

pub mod exec;
pub mod handler;
pub mod package;
pub mod plan;
pub mod report;
