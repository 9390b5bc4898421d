//! Provisioning: from ovf-env.xml to a ready VM. The sequence and its
//! states live in `daemon`; these modules do one job each.

pub mod custom_data;
pub mod keys;
pub mod media;
pub mod password;
pub mod sshd;
