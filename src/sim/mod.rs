//! The Azure fabric simulator (test support; feature `simulator`).

pub mod certs;
