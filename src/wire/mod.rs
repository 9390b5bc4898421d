//! The WireServer protocol: documents in, requests out.

pub mod client;
pub mod crypto;
pub mod docs;
pub mod endpoint;
pub mod imds;
pub mod reports;
pub mod status;
