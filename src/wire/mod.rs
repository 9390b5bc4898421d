//! The WireServer protocol: documents in, requests out.

pub mod crypto;
pub mod docs;
pub mod endpoint;
