//! Provisioning: from ovf-env.xml to a ready VM.

pub mod password;
pub mod sshd;
