//! RDMA on HPC sizes (§18.5 of the protocol notes): what this agent does
//! about `OS.EnableRDMA`, `OS.UpdateRdmaDriver` and `OS.CheckRdmaDriver`.
//!
//! waagent installs or checks the Intel MPI RDMA driver package that
//! matches the host's Network Direct version (per distro: CentOS, SUSE,
//! Ubuntu) and configures the RDMA interface with the instance's address
//! from `SharedConfig.xml`. The notes do not say enough to do that
//! faithfully (package names and versions, how the host's version is read,
//! how the device is configured), and a half-configured RDMA NIC is worse
//! than none, so this agent refuses plainly: the daemon logs the refusal
//! and carries on; images that need RDMA configure it themselves.

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::Config;

/// Why RDMA was not set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaUnsupported {
    /// The options that asked for it (`OS.EnableRDMA`, …).
    pub options: Vec<&'static str>,
    /// The RDMA address SharedConfig gave this instance, if any.
    pub address: Option<Ipv4Addr>,
}

impl fmt::Display for RdmaUnsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RDMA setup is not supported by this agent yet ({} set",
            self.options.join(", ")
        )?;
        if let Some(a) = self.address {
            write!(f, "; SharedConfig gives RDMA address {a}")?;
        }
        f.write_str("): the RDMA driver and interface were left as they are")
    }
}

impl std::error::Error for RdmaUnsupported {}

/// The RDMA options that are on; any one of them asks for RDMA.
pub fn requested_by(config: &Config) -> Vec<&'static str> {
    [
        ("OS.EnableRDMA", config.enable_rdma),
        ("OS.UpdateRdmaDriver", config.update_rdma_driver),
        ("OS.CheckRdmaDriver", config.check_rdma_driver),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect()
}

/// True when the configuration asks for RDMA.
pub fn is_requested(config: &Config) -> bool {
    !requested_by(config).is_empty()
}

/// The daemon's RDMA step (after provisioning). `Ok` when RDMA is not
/// asked for; otherwise the refusal, naming the options and the address
/// (`address`: the instance's RDMA address from SharedConfig, if the caller
/// has one) so the log says what was not done.
pub fn setup(config: &Config, address: Option<Ipv4Addr>) -> Result<(), RdmaUnsupported> {
    let options = requested_by(config);
    if options.is_empty() {
        return Ok(());
    }
    Err(RdmaUnsupported { options, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_nothing_done() {
        let c = Config::default();
        assert!(!is_requested(&c));
        assert_eq!(setup(&c, Some(Ipv4Addr::new(172, 16, 1, 4))), Ok(()));
    }

    #[test]
    fn any_rdma_option_gets_a_plain_refusal() {
        for set in [
            |c: &mut Config| c.enable_rdma = true,
            |c: &mut Config| c.update_rdma_driver = true,
            |c: &mut Config| c.check_rdma_driver = true,
        ] {
            let mut c = Config::default();
            set(&mut c);
            assert!(is_requested(&c));
            assert!(setup(&c, None).is_err());
        }
    }

    #[test]
    fn refusal_names_options_and_address() {
        let mut c = Config::default();
        c.enable_rdma = true;
        c.check_rdma_driver = true;
        let e = setup(&c, Some(Ipv4Addr::new(172, 16, 1, 4))).unwrap_err();
        assert_eq!(e.options, vec!["OS.EnableRDMA", "OS.CheckRdmaDriver"]);
        assert_eq!(
            e.to_string(),
            "RDMA setup is not supported by this agent yet (OS.EnableRDMA, OS.CheckRdmaDriver set; \
             SharedConfig gives RDMA address 172.16.1.4): the RDMA driver and interface were left as they are"
        );
        let e = setup(&c, None).unwrap_err();
        assert!(!e.to_string().contains("SharedConfig"), "{e}");
    }
}
