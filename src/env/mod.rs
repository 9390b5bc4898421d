//! The VM's environment beyond provisioning: what the daemon sets up on every
//! boot from `waagent.conf` (§15, §18, §19 of PROTOCOL.md), each a module that
//! checks before it acts, so a reboot or a restarted daemon changes nothing
//! that is already right. Failures are reported to the caller, which logs them
//! and carries on: a VM without these still provisions.

pub mod console;
pub mod firewall;
pub mod kernel;
pub mod lbprobe;
pub mod network;
pub mod rdma;
pub mod resource_disk;
pub mod scvmm;
