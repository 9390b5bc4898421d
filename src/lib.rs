//! waagent-rs: a guest agent for Linux and FreeBSD virtual machines on Azure,
//! compatible with the Microsoft Azure Linux Agent (`waagent`).
//!
//! The binary (`src/main.rs`) is a thin shell over this library, so the
//! integration tests in `tests/` drive the same code. Comments cite the
//! protocol as `§n.n`: the sections of `PROTOCOL.md`, beside this crate.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod deprovision;
pub mod env;
pub mod ext;
pub mod fsutil;
pub mod http;
pub mod journal;
pub mod libdir;
pub mod log;
pub mod logcollector;
pub mod names;
pub mod notify;
pub mod os;
pub mod ovf;
pub mod pidfile;
pub mod provision;
pub mod redact;
#[cfg(feature = "simulator")]
pub mod sim;
pub mod userfs;
pub mod utc;
pub mod wire;
pub mod xml;

/// This agent's version, as `-version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name this agent reports (to the fabric and in `-version`).
pub const AGENT_NAME: &str = "waagent-rs";
