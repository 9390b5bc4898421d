//! The names of the files the agent keeps in Lib.Dir (`/var/lib/waagent`),
//! each written in one place and read in others: waagent's own names
//! (§2.2 of PROTOCOL.md), so an image that ran the Python agent is read as
//! it left it. Files one module owns alone keep their name there: the
//! transport certificate (`wire::crypto`), the WireServer address cache
//! (`wire::endpoint`), the journal (`journal`).

/// The last incarnation fully processed; written last, after its documents.
pub const INCARNATION: &str = "Incarnation";
/// The goal state's sub-documents of the current incarnation.
pub const HOSTING_ENVIRONMENT_CONFIG: &str = "HostingEnvironmentConfig.xml";
pub const SHARED_CONFIG: &str = "SharedConfig.xml";
pub const CERTIFICATES: &str = "Certificates.xml";
/// `WireProtocol`: which protocol the agent speaks (waagent's marker).
pub const PROTOCOL: &str = "Protocol";
/// ovf-env.xml, the password masked (0600).
pub const OVF_ENV: &str = "ovf-env.xml";
/// The host name provisioning (or the monitor) last published.
pub const PUBLISHED_HOSTNAME: &str = "published_hostname";
/// Provisioning finished; holds the VM's instance id.
pub const PROVISIONED: &str = "provisioned";
/// ovf-env said `ProvisionGuestAgent=false` (§8.3).
pub const DISABLE_AGENT: &str = "disable_agent";

/// `GoalState.{incarnation}.xml`.
pub fn goal_state(incarnation: &str) -> String {
    format!("GoalState.{incarnation}.xml")
}

/// `ExtensionsConfig.{incarnation}.xml`.
pub fn extensions_config(incarnation: &str) -> String {
    format!("ExtensionsConfig.{incarnation}.xml")
}
