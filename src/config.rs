//! `/etc/waagent.conf`: every option waagent 2.2.5 and the current agent read,
//! parsed into typed fields with waagent's defaults.
//!
//! Syntax (a superset of both waagent generations): one `Key=Value` or
//! `Key = Value` per line, `#` starts a comment (whole line or trailing),
//! quotes around the value are stripped, `None` or an empty value means "use
//! the default". Keys match case-insensitively, so `AutoUpdate.Frequency` works
//! as well as the real `Autoupdate.Frequency`.
//!
//! A value of the wrong type is not fatal: it produces a [`Warning`] naming
//! file, line and key, and the default is kept, as waagent does (it does so
//! silently; we say so).

use std::fmt;
use std::path::{Path, PathBuf};

/// Problems that leave a usable configuration behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// The configuration file could not be read at all.
#[derive(Debug)]
pub struct LoadError {
    pub file: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read configuration file {}: {}",
            self.file.display(),
            self.source
        )
    }
}

impl std::error::Error for LoadError {}

/// `Provisioning.PasswordCryptId`: the crypt(3) scheme of the user's password hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptId {
    Md5,
    Sha256,
    Sha512,
}

/// `Provisioning.SshHostKeyPairType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshHostKeyType {
    Rsa,
    Dsa,
    Ecdsa,
    Ed25519,
    /// `ssh-keygen -A`: every type the installed OpenSSH supports; rsa is reported.
    Auto,
}

/// `Provisioning.Agent`: who provisions the VM (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningAgent {
    Auto,
    Waagent,
    CloudInit,
    Disabled,
}

/// How one option's text turns into its typed value and back.
pub trait OptionValue: Sized {
    /// What a valid value looks like, for the warning text.
    const EXPECTED: &'static str;
    fn parse(raw: &str) -> Option<Self>;
    /// The value as `-show-configuration` prints it (waagent's spelling).
    fn show(&self) -> String;
}

impl OptionValue for bool {
    const EXPECTED: &'static str = "a switch, y or n";
    fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "y" => Some(true),
            "n" => Some(false),
            _ => None,
        }
    }
    fn show(&self) -> String {
        // waagent prints Python booleans; scripts grep for them.
        if *self { "True" } else { "False" }.to_string()
    }
}

impl OptionValue for u64 {
    const EXPECTED: &'static str = "a whole number";
    fn parse(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for String {
    const EXPECTED: &'static str = "text";
    fn parse(raw: &str) -> Option<Self> {
        Some(raw.to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl OptionValue for PathBuf {
    const EXPECTED: &'static str = "an absolute path";
    fn parse(raw: &str) -> Option<Self> {
        raw.starts_with('/').then(|| PathBuf::from(raw))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl<T: OptionValue> OptionValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn parse(raw: &str) -> Option<Self> {
        T::parse(raw).map(Some)
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "None".to_string(), T::show)
    }
}

impl OptionValue for u16 {
    const EXPECTED: &'static str = "a port number (1-65535)";
    fn parse(raw: &str) -> Option<Self> {
        raw.parse().ok().filter(|p| *p != 0)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// An enum option's values, each with its one spelling in waagent.conf:
/// the one table both `parse` (any case) and `show` read.
trait Spelled: Copy + PartialEq + 'static {
    const SPELLINGS: &'static [(&'static str, Self)];

    fn parse_spelled(raw: &str) -> Option<Self> {
        Self::SPELLINGS
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(raw))
            .map(|(_, v)| *v)
    }

    fn spelling(&self) -> String {
        Self::SPELLINGS
            .iter()
            .find(|(_, v)| v == self)
            .map_or_else(String::new, |(s, _)| s.to_string())
    }
}

/// [`OptionValue`] for a [`Spelled`] enum, with its warning text.
macro_rules! spelled_option {
    ($t:ty, $expected:literal) => {
        impl OptionValue for $t {
            const EXPECTED: &'static str = $expected;
            fn parse(raw: &str) -> Option<Self> {
                Self::parse_spelled(raw)
            }
            fn show(&self) -> String {
                self.spelling()
            }
        }
    };
}

impl Spelled for CryptId {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("1", Self::Md5), ("5", Self::Sha256), ("6", Self::Sha512)];
}
spelled_option!(CryptId, "a crypt id: 1 (MD5), 5 (SHA-256) or 6 (SHA-512)");

impl Spelled for SshHostKeyType {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("rsa", Self::Rsa),
        ("dsa", Self::Dsa),
        ("ecdsa", Self::Ecdsa),
        ("ed25519", Self::Ed25519),
        ("auto", Self::Auto),
    ];
}
spelled_option!(SshHostKeyType, "one of rsa, dsa, ecdsa, ed25519, auto");

impl Spelled for ProvisioningAgent {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("waagent", Self::Waagent),
        ("cloud-init", Self::CloudInit),
        ("disabled", Self::Disabled),
    ];
}
spelled_option!(
    ProvisioningAgent,
    "one of auto, waagent, cloud-init, disabled"
);

/// Declares the options once: the struct, its defaults, the key table, and
/// the setter/printer, so a key can never be parsed but not shown or vice versa.
macro_rules! options {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $key:literal, $default:expr; )*) => {
        /// Every option of `waagent.conf`, typed, with waagent's code defaults.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[$doc])* pub $field: $ty, )*
            /// Keys given a valid value in the file (for options whose default
            /// is another option's value).
            explicit: Vec<&'static str>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* explicit: Vec::new() }
            }
        }

        impl Config {
            /// Every key, in its canonical spelling.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// Sets `key` from `raw`. `None`: unknown key; `Some(Err)`: the
            /// expected-value text for a bad value.
            fn set(&mut self, key: &str, raw: Option<&str>) -> Option<Result<&'static str, &'static str>> {
                $(
                    if key.eq_ignore_ascii_case($key) {
                        let Some(raw) = raw else {
                            self.$field = $default;
                            self.explicit.retain(|k| *k != $key);
                            return Some(Ok($key));
                        };
                        return Some(match <$ty as OptionValue>::parse(raw) {
                            Some(v) => {
                                self.$field = v;
                                self.explicit.push($key);
                                Ok($key)
                            }
                            None => Err(<$ty as OptionValue>::EXPECTED),
                        });
                    }
                )*
                None
            }

            fn default_text(key: &str) -> String {
                $( if key == $key { let d: $ty = $default; return d.show(); } )*
                String::new()
            }

            /// `(key, value)` for every option, sorted by key, as
            /// `-show-configuration` prints them.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                let mut v = vec![$( ($key, OptionValue::show(&self.$field)), )*];
                v.sort_by(|a, b| a.0.cmp(b.0));
                v
            }
        }
    };
}

options! {
    // --- Provisioning (§9) ---
    /// 2.2.x switch; superseded by `Provisioning.Agent`.
    provisioning_enabled: bool = "Provisioning.Enabled", true;
    /// 2.2.11–2.2.44 switch: let cloud-init provision.
    provisioning_use_cloud_init: bool = "Provisioning.UseCloudInit", false;
    provisioning_agent: ProvisioningAgent = "Provisioning.Agent", ProvisioningAgent::Auto;
    delete_root_password: bool = "Provisioning.DeleteRootPassword", false;
    regenerate_ssh_host_key_pair: bool = "Provisioning.RegenerateSshHostKeyPair", false;
    ssh_host_key_pair_type: SshHostKeyType = "Provisioning.SshHostKeyPairType", SshHostKeyType::Rsa;
    monitor_host_name: bool = "Provisioning.MonitorHostName", false;
    monitor_host_name_period: u64 = "Provisioning.MonitorHostNamePeriod", 30;
    decode_custom_data: bool = "Provisioning.DecodeCustomData", false;
    execute_custom_data: bool = "Provisioning.ExecuteCustomData", false;
    password_crypt_id: CryptId = "Provisioning.PasswordCryptId", CryptId::Sha512;
    password_crypt_salt_length: u64 = "Provisioning.PasswordCryptSaltLength", 10;
    allow_reset_sys_user: bool = "Provisioning.AllowResetSysUser", false;

    // --- Resource disk (§19) ---
    resource_disk_format: bool = "ResourceDisk.Format", false;
    resource_disk_filesystem: String = "ResourceDisk.Filesystem", "ext3".to_string();
    resource_disk_mount_point: PathBuf = "ResourceDisk.MountPoint", PathBuf::from("/mnt/resource");
    resource_disk_mount_options: Option<String> = "ResourceDisk.MountOptions", None;
    resource_disk_enable_swap: bool = "ResourceDisk.EnableSwap", false;
    resource_disk_swap_size_mb: u64 = "ResourceDisk.SwapSizeMB", 0;
    resource_disk_enable_swap_encryption: bool = "ResourceDisk.EnableSwapEncryption", false;

    // --- Logs ---
    logs_verbose: bool = "Logs.Verbose", false;
    /// Echo the log to /dev/console until provisioning completes.
    logs_console: bool = "Logs.Console", true;
    logs_collect: bool = "Logs.Collect", true;
    logs_collect_period: u64 = "Logs.CollectPeriod", 3600;

    // --- OS ---
    root_device_scsi_timeout: Option<u64> = "OS.RootDeviceScsiTimeout", None;
    root_device_scsi_timeout_period: u64 = "OS.RootDeviceScsiTimeoutPeriod", 30;
    openssl_path: PathBuf = "OS.OpensslPath", PathBuf::from("/usr/bin/openssl");
    /// 2.2.0–2.2.10 name; when unset, `{OS.SshDir}/sshd_config`.
    sshd_config_path: PathBuf = "OS.SshdConfigPath", PathBuf::from("/etc/ssh/sshd_config");
    ssh_dir: PathBuf = "OS.SshDir", PathBuf::from("/etc/ssh");
    ssh_client_alive_interval: u64 = "OS.SshClientAliveInterval", 180;
    home_dir: PathBuf = "OS.HomeDir", PathBuf::from("/home");
    password_path: PathBuf = "OS.PasswordPath", PathBuf::from("/etc/shadow");
    sudoers_dir: PathBuf = "OS.SudoersDir", PathBuf::from("/etc/sudoers.d");
    enable_rdma: bool = "OS.EnableRDMA", false;
    update_rdma_driver: bool = "OS.UpdateRdmaDriver", false;
    check_rdma_driver: bool = "OS.CheckRdmaDriver", false;
    enable_fips: bool = "OS.EnableFIPS", false;
    enable_firewall: bool = "OS.EnableFirewall", false;
    enable_firewall_period: u64 = "OS.EnableFirewallPeriod", 300;
    allow_http: bool = "OS.AllowHTTP", false;
    remove_persistent_net_rules_period: u64 = "OS.RemovePersistentNetRulesPeriod", 30;
    monitor_dhcp_client_restart_period: u64 = "OS.MonitorDhcpClientRestartPeriod", 30;

    // --- Paths and proxy ---
    http_proxy_host: Option<String> = "HttpProxy.Host", None;
    http_proxy_port: Option<u16> = "HttpProxy.Port", None;
    lib_dir: PathBuf = "Lib.Dir", PathBuf::from("/var/lib/waagent");
    dvd_mount_point: PathBuf = "DVD.MountPoint", PathBuf::from("/mnt/cdrom/secure");
    pid_file: PathBuf = "Pid.File", PathBuf::from("/var/run/waagent.pid");
    extension_log_dir: PathBuf = "Extension.LogDir", PathBuf::from("/var/log/azure");
    /// The log file. waagent 2.0 read this key; 2.2+ hard-code the path.
    log_file: PathBuf = "Logs.File", PathBuf::from("/var/log/waagent.log");
    detect_scvmm_env: bool = "DetectScvmmEnv", false;
    /// 2.0's load-balancer probe responder (§18.9): answer TCP connections
    /// on the goal state's `LBProbePorts` with `200 OK`.
    lb_probe_responder: bool = "LBProbeResponder", false;

    // --- Self-update (§14); this agent updates through the package manager ---
    auto_update_enabled: bool = "AutoUpdate.Enabled", true;
    /// Defaults to `AutoUpdate.Enabled`.
    auto_update_to_latest_version: bool = "AutoUpdate.UpdateToLatestVersion", true;
    auto_update_ga_family: String = "AutoUpdate.GAFamily", "Prod".to_string();
    auto_update_frequency: u64 = "Autoupdate.Frequency", 3600;

    // --- Extensions (§13) ---
    enable_over_provisioning: bool = "EnableOverProvisioning", true;
    extensions_enabled: bool = "Extensions.Enabled", true;
    goal_state_period: u64 = "Extensions.GoalStatePeriod", 6;
    /// Defaults to `Extensions.GoalStatePeriod`.
    initial_goal_state_period: u64 = "Extensions.InitialGoalStatePeriod", 6;
    wait_for_cloud_init: bool = "Extensions.WaitForCloudInit", false;
    wait_for_cloud_init_timeout: u64 = "Extensions.WaitForCloudInitTimeout", 3600;
    goal_state_history_cleanup_period: u64 = "Extensions.GoalStateHistoryCleanupPeriod", 86400;

    // --- cgroups, monitoring, policy, discovery (current agent) ---
    cgroups_enforce_limits: bool = "CGroups.EnforceLimits", false;
    cgroups_excluded: String = "CGroups.Excluded", "customscript,runcommand".to_string();
    cgroups_enabled: bool = "CGroups.Enabled", true;
    monitor_network_configuration_changes: bool = "Monitor.NetworkConfigurationChanges", false;
    policy_file_path: PathBuf = "Policy.PolicyFilePath", PathBuf::from("/etc/waagent_policy.json");
    /// `dhcp`, or anything else to always use 168.63.129.16.
    endpoint_discovery: String = "Protocol.EndpointDiscovery", "dhcp".to_string();

    // --- Debug.* knobs of the current agent: accepted and type-checked ---
    debug_cgroup_log_metrics: bool = "Debug.CgroupLogMetrics", false;
    debug_cgroup_disable_on_process_check_failure: bool = "Debug.CgroupDisableOnProcessCheckFailure", true;
    debug_cgroup_disable_on_quota_check_failure: bool = "Debug.CgroupDisableOnQuotaCheckFailure", true;
    debug_cgroup_check_period: u64 = "Debug.CgroupCheckPeriod", 300;
    debug_agent_cpu_quota: u64 = "Debug.AgentCpuQuota", 50;
    debug_agent_cpu_throttled_time_threshold: u64 = "Debug.AgentCpuThrottledTimeThreshold", 120;
    debug_agent_memory_quota: u64 = "Debug.AgentMemoryQuota", 31_457_280;
    debug_enable_agent_memory_usage_check: bool = "Debug.EnableAgentMemoryUsageCheck", false;
    debug_enable_fast_track: bool = "Debug.EnableFastTrack", true;
    debug_enable_ga_versioning: bool = "Debug.EnableGAVersioning", true;
    debug_enable_cgroup_v2_resource_limiting: bool = "Debug.EnableCgroupV2ResourceLimiting", true;
    debug_enable_extension_policy: bool = "Debug.EnableExtensionPolicy", false;
    debug_enable_signature_validation: bool = "Debug.EnableSignatureValidation", false;
    debug_enable_rsm_downgrade: bool = "Debug.EnableRsmDowngrade", false;
    debug_etp_collection_period: u64 = "Debug.EtpCollectionPeriod", 300;
    debug_self_update_hotfix_frequency: u64 = "Debug.SelfUpdateHotfixFrequency", 14_400;
    debug_self_update_regular_frequency: u64 = "Debug.SelfUpdateRegularFrequency", 86_400;
    debug_firewall_rules_log_period: u64 = "Debug.FirewallRulesLogPeriod", 86_400;
    debug_log_collector_initial_delay: u64 = "Debug.LogCollectorInitialDelay", 300;

    // --- this agent's own test knobs (not waagent's) ---
    /// `host:port` of the WireServer instead of discovery, for running the
    /// daemon against a simulator on loopback. The HostGAPlugin is then
    /// looked for on `Debug.HostGAPluginPort` of the same host.
    debug_wireserver_address: Option<String> = "Debug.WireServerAddress", None;
    debug_hostgaplugin_port: u64 = "Debug.HostGAPluginPort", 32526;
    /// `host:port` of IMDS instead of 169.254.169.254:80.
    debug_imds_address: Option<String> = "Debug.ImdsAddress", None;
    /// Seconds an extension command may run before its process group is
    /// killed (§13.10): waagent's fixed limits, settable for tests.
    debug_extension_install_timeout: u64 = "Debug.ExtensionInstallTimeout", 900;
    debug_extension_update_timeout: u64 = "Debug.ExtensionUpdateTimeout", 900;
    debug_extension_disable_timeout: u64 = "Debug.ExtensionDisableTimeout", 900;
    debug_extension_enable_timeout: u64 = "Debug.ExtensionEnableTimeout", 300;
    debug_extension_uninstall_timeout: u64 = "Debug.ExtensionUninstallTimeout", 300;
    /// Seconds a fabric request (WireServer, HostGAPlugin, storage, IMDS)
    /// may take: waagent's 10 s (IMDS at most 3 s), shorter for tests of
    /// what a stalled fabric costs.
    debug_http_timeout: u64 = "Debug.HttpTimeout", 10;
    /// Test-only fault: while this file exists the daemon's loop hangs
    /// without pinging systemd's watchdog (`crate::notify`), so a test can
    /// see a hung agent restarted. Off (None) by default.
    debug_hang_file: Option<PathBuf> = "Debug.HangFile", None;
}

/// Keys only the 2.0 agent read. Distro files still carry them; they are
/// accepted without a warning and have no effect.
const LEGACY_KEYS: &[&str] = &[
    "Role.StateConsumer",
    "Role.ConfigurationConsumer",
    "Role.TopologyConsumer",
    "Network.Interface",
];

/// Old spellings of keys that the current agent renamed.
const ALIASES: &[(&str, &str)] = &[
    (
        "Debug.AutoUpdateHotfixFrequency",
        "Debug.SelfUpdateHotfixFrequency",
    ),
    (
        "Debug.AutoUpdateNormalFrequency",
        "Debug.SelfUpdateRegularFrequency",
    ),
];

impl Config {
    /// Reads and parses `path`. Bad lines become warnings; only an unreadable
    /// file is an error.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), LoadError> {
        let text = std::fs::read(path).map_err(|source| LoadError {
            file: path.to_path_buf(),
            source,
        })?;
        Ok(Config::parse(&String::from_utf8_lossy(&text), path))
    }

    /// Parses config text; `file` only names the source in warnings.
    pub fn parse(text: &str, file: &Path) -> (Config, Vec<Warning>) {
        let mut cfg = Config::default();
        let mut warnings = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let warn = |message: String| Warning {
                file: file.to_path_buf(),
                line: idx + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                warnings.push(warn(format!("not a Key=Value line: {line:?}")));
                continue;
            };
            let key = key.trim();
            let key = ALIASES
                .iter()
                .find(|(old, _)| old.eq_ignore_ascii_case(key))
                .map_or(key, |(_, new)| new);
            let value = clean_value(value);
            let raw = (!value.is_empty() && value != "None").then_some(value);
            match cfg.set(key, raw) {
                Some(Ok(_)) => {}
                Some(Err(expected)) => {
                    let canonical = Config::KEYS
                        .iter()
                        .find(|k| k.eq_ignore_ascii_case(key))
                        .copied()
                        .unwrap_or(key);
                    warnings.push(warn(format!(
                        "{canonical}: invalid value {value:?}, expected {expected}; using the default {}",
                        Config::default_text(canonical)
                    )));
                }
                None if LEGACY_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) => {}
                None => warnings.push(warn(format!("{key}: unknown option, ignored"))),
            }
        }
        cfg.resolve_derived_defaults();
        (cfg, warnings)
    }

    /// True when the file set `key` (canonical spelling) to a valid value.
    pub fn is_explicit(&self, key: &str) -> bool {
        self.explicit.contains(&key)
    }

    /// Options whose default is another option's value.
    fn resolve_derived_defaults(&mut self) {
        if !self.is_explicit("AutoUpdate.UpdateToLatestVersion") {
            self.auto_update_to_latest_version = self.auto_update_enabled;
        }
        if !self.is_explicit("Extensions.InitialGoalStatePeriod") {
            self.initial_goal_state_period = self.goal_state_period;
        }
        if !self.is_explicit("OS.SshdConfigPath") {
            self.sshd_config_path = self.ssh_dir.join("sshd_config");
        }
    }

    /// The value of an option by key (canonical spelling), as shown.
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }
}

/// The value part of a line: cut at `#`, trimmed, one pair of quotes removed.
fn clean_value(value: &str) -> &str {
    let value = value.split('#').next().unwrap_or("").trim();
    value.trim_matches(|c| c == '"' || c == '\'').trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enum_value_reads_back_what_it_shows_in_any_case() {
        fn round_trip<T: Spelled + OptionValue + std::fmt::Debug>() {
            for (spelling, v) in T::SPELLINGS {
                assert_eq!(v.show(), *spelling);
                assert_eq!(T::parse(spelling), Some(*v));
                assert_eq!(T::parse(&spelling.to_uppercase()), Some(*v));
            }
            assert_eq!(T::parse("no-such-value"), None);
        }
        round_trip::<CryptId>();
        round_trip::<SshHostKeyType>();
        round_trip::<ProvisioningAgent>();
        // Every variant has its spelling (a new one must be added to the table).
        use SshHostKeyType as K;
        let shown: Vec<String> = [CryptId::Md5, CryptId::Sha256, CryptId::Sha512]
            .iter()
            .map(OptionValue::show)
            .chain(
                [K::Rsa, K::Dsa, K::Ecdsa, K::Ed25519, K::Auto]
                    .iter()
                    .map(OptionValue::show),
            )
            .chain(
                [
                    ProvisioningAgent::Auto,
                    ProvisioningAgent::Waagent,
                    ProvisioningAgent::CloudInit,
                    ProvisioningAgent::Disabled,
                ]
                .iter()
                .map(OptionValue::show),
            )
            .collect();
        assert!(shown.iter().all(|s| !s.is_empty()), "{shown:?}");
    }

    fn parse(text: &str) -> (Config, Vec<Warning>) {
        Config::parse(text, Path::new("/etc/waagent.conf"))
    }

    #[test]
    fn both_waagent_syntaxes_and_comments() {
        let (c, w) = parse(
            "# comment\n\
             Logs.Verbose=y\n\
             ResourceDisk.Format = y # trailing comment\n\
             ResourceDisk.Filesystem = \"ext4\"\n\
             \n   # indented comment\n\
             ResourceDisk.MountOptions=compress=lzo\n\
             OS.RootDeviceScsiTimeout=None\n\
             autoupdate.frequency = 7200\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert!(c.logs_verbose);
        assert!(c.resource_disk_format);
        assert_eq!(c.resource_disk_filesystem, "ext4");
        // Only the first '=' splits key from value.
        assert_eq!(
            c.resource_disk_mount_options.as_deref(),
            Some("compress=lzo")
        );
        assert_eq!(c.root_device_scsi_timeout, None);
        assert_eq!(c.auto_update_frequency, 7200);
    }

    #[test]
    fn none_and_empty_restore_the_default() {
        let (c, w) = parse("Lib.Dir=/srv/x\nLib.Dir=None\nResourceDisk.SwapSizeMB=\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.lib_dir, PathBuf::from("/var/lib/waagent"));
        assert_eq!(c.resource_disk_swap_size_mb, 0);
    }

    #[test]
    fn last_value_wins() {
        let (c, _) = parse("Logs.Verbose=y\nLogs.Verbose=n\n");
        assert!(!c.logs_verbose);
    }

    /// Every option's code default, as -show-configuration prints it: this is
    /// the table of §17.2 of PROTOCOL.md.
    #[test]
    fn every_default() {
        let expected: &[(&str, &str)] = &[
            ("AutoUpdate.Enabled", "True"),
            ("AutoUpdate.GAFamily", "Prod"),
            ("AutoUpdate.UpdateToLatestVersion", "True"),
            ("Autoupdate.Frequency", "3600"),
            ("CGroups.Enabled", "True"),
            ("CGroups.EnforceLimits", "False"),
            ("CGroups.Excluded", "customscript,runcommand"),
            ("DVD.MountPoint", "/mnt/cdrom/secure"),
            ("Debug.AgentCpuQuota", "50"),
            ("Debug.AgentCpuThrottledTimeThreshold", "120"),
            ("Debug.AgentMemoryQuota", "31457280"),
            ("Debug.CgroupCheckPeriod", "300"),
            ("Debug.CgroupDisableOnProcessCheckFailure", "True"),
            ("Debug.CgroupDisableOnQuotaCheckFailure", "True"),
            ("Debug.CgroupLogMetrics", "False"),
            ("Debug.EnableAgentMemoryUsageCheck", "False"),
            ("Debug.EnableCgroupV2ResourceLimiting", "True"),
            ("Debug.EnableExtensionPolicy", "False"),
            ("Debug.EnableFastTrack", "True"),
            ("Debug.EnableGAVersioning", "True"),
            ("Debug.EnableRsmDowngrade", "False"),
            ("Debug.EnableSignatureValidation", "False"),
            ("Debug.EtpCollectionPeriod", "300"),
            ("Debug.ExtensionDisableTimeout", "900"),
            ("Debug.ExtensionEnableTimeout", "300"),
            ("Debug.ExtensionInstallTimeout", "900"),
            ("Debug.ExtensionUninstallTimeout", "300"),
            ("Debug.ExtensionUpdateTimeout", "900"),
            ("Debug.FirewallRulesLogPeriod", "86400"),
            ("Debug.HangFile", "None"),
            ("Debug.HostGAPluginPort", "32526"),
            ("Debug.HttpTimeout", "10"),
            ("Debug.ImdsAddress", "None"),
            ("Debug.LogCollectorInitialDelay", "300"),
            ("Debug.SelfUpdateHotfixFrequency", "14400"),
            ("Debug.SelfUpdateRegularFrequency", "86400"),
            ("Debug.WireServerAddress", "None"),
            ("DetectScvmmEnv", "False"),
            ("EnableOverProvisioning", "True"),
            ("Extension.LogDir", "/var/log/azure"),
            ("Extensions.Enabled", "True"),
            ("Extensions.GoalStateHistoryCleanupPeriod", "86400"),
            ("Extensions.GoalStatePeriod", "6"),
            ("Extensions.InitialGoalStatePeriod", "6"),
            ("Extensions.WaitForCloudInit", "False"),
            ("Extensions.WaitForCloudInitTimeout", "3600"),
            ("HttpProxy.Host", "None"),
            ("HttpProxy.Port", "None"),
            ("LBProbeResponder", "False"),
            ("Lib.Dir", "/var/lib/waagent"),
            ("Logs.Collect", "True"),
            ("Logs.CollectPeriod", "3600"),
            ("Logs.Console", "True"),
            ("Logs.File", "/var/log/waagent.log"),
            ("Logs.Verbose", "False"),
            ("Monitor.NetworkConfigurationChanges", "False"),
            ("OS.AllowHTTP", "False"),
            ("OS.CheckRdmaDriver", "False"),
            ("OS.EnableFIPS", "False"),
            ("OS.EnableFirewall", "False"),
            ("OS.EnableFirewallPeriod", "300"),
            ("OS.EnableRDMA", "False"),
            ("OS.HomeDir", "/home"),
            ("OS.MonitorDhcpClientRestartPeriod", "30"),
            ("OS.OpensslPath", "/usr/bin/openssl"),
            ("OS.PasswordPath", "/etc/shadow"),
            ("OS.RemovePersistentNetRulesPeriod", "30"),
            ("OS.RootDeviceScsiTimeout", "None"),
            ("OS.RootDeviceScsiTimeoutPeriod", "30"),
            ("OS.SshClientAliveInterval", "180"),
            ("OS.SshDir", "/etc/ssh"),
            ("OS.SshdConfigPath", "/etc/ssh/sshd_config"),
            ("OS.SudoersDir", "/etc/sudoers.d"),
            ("OS.UpdateRdmaDriver", "False"),
            ("Pid.File", "/var/run/waagent.pid"),
            ("Policy.PolicyFilePath", "/etc/waagent_policy.json"),
            ("Protocol.EndpointDiscovery", "dhcp"),
            ("Provisioning.Agent", "auto"),
            ("Provisioning.AllowResetSysUser", "False"),
            ("Provisioning.DecodeCustomData", "False"),
            ("Provisioning.DeleteRootPassword", "False"),
            ("Provisioning.Enabled", "True"),
            ("Provisioning.ExecuteCustomData", "False"),
            ("Provisioning.MonitorHostName", "False"),
            ("Provisioning.MonitorHostNamePeriod", "30"),
            ("Provisioning.PasswordCryptId", "6"),
            ("Provisioning.PasswordCryptSaltLength", "10"),
            ("Provisioning.RegenerateSshHostKeyPair", "False"),
            ("Provisioning.SshHostKeyPairType", "rsa"),
            ("Provisioning.UseCloudInit", "False"),
            ("ResourceDisk.EnableSwap", "False"),
            ("ResourceDisk.EnableSwapEncryption", "False"),
            ("ResourceDisk.Filesystem", "ext3"),
            ("ResourceDisk.Format", "False"),
            ("ResourceDisk.MountOptions", "None"),
            ("ResourceDisk.MountPoint", "/mnt/resource"),
            ("ResourceDisk.SwapSizeMB", "0"),
        ];
        let (c, w) = parse("");
        assert!(w.is_empty());
        let got = c.entries();
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn derived_defaults_follow_their_source() {
        let (c, _) =
            parse("AutoUpdate.Enabled=n\nExtensions.GoalStatePeriod=20\nOS.SshDir=/config/ssh\n");
        assert!(!c.auto_update_to_latest_version);
        assert_eq!(c.initial_goal_state_period, 20);
        assert_eq!(c.sshd_config_path, PathBuf::from("/config/ssh/sshd_config"));

        let (c, _) = parse(
            "AutoUpdate.Enabled=n\nAutoUpdate.UpdateToLatestVersion=y\n\
             Extensions.InitialGoalStatePeriod=2\nOS.SshdConfigPath=/config/ssh/sshd_config\n",
        );
        assert!(c.auto_update_to_latest_version);
        assert_eq!(c.initial_goal_state_period, 2);
        assert_eq!(c.sshd_config_path, PathBuf::from("/config/ssh/sshd_config"));
    }

    /// One bad value of each type: the warning names file, line and key, and
    /// the default stays.
    #[test]
    fn bad_value_of_each_type_warns_and_keeps_default() {
        let cases: &[(&str, &str, &str)] = &[
            ("Logs.Verbose=maybe", "Logs.Verbose", "False"),
            (
                "ResourceDisk.SwapSizeMB=2GB",
                "ResourceDisk.SwapSizeMB",
                "0",
            ),
            (
                "Extensions.GoalStatePeriod=-5",
                "Extensions.GoalStatePeriod",
                "6",
            ),
            (
                "OS.RootDeviceScsiTimeout=five",
                "OS.RootDeviceScsiTimeout",
                "None",
            ),
            (
                "Provisioning.PasswordCryptId=2a",
                "Provisioning.PasswordCryptId",
                "6",
            ),
            (
                "Provisioning.SshHostKeyPairType=rsa1",
                "Provisioning.SshHostKeyPairType",
                "rsa",
            ),
            ("Provisioning.Agent=chef", "Provisioning.Agent", "auto"),
            ("HttpProxy.Port=70000", "HttpProxy.Port", "None"),
            ("Lib.Dir=var/lib/waagent", "Lib.Dir", "/var/lib/waagent"),
        ];
        for (line, key, default) in cases {
            let text = format!("# header\nLogs.Console=y\n{line}\n");
            let (c, w) = parse(&text);
            assert_eq!(w.len(), 1, "{line}: {w:?}");
            let msg = w[0].to_string();
            assert!(
                msg.starts_with(&format!("/etc/waagent.conf:3: {key}: invalid value")),
                "{msg}"
            );
            assert!(
                msg.ends_with(&format!("using the default {default}")),
                "{msg}"
            );
            assert_eq!(c.get(key).as_deref(), Some(*default), "{line}");
        }
    }

    #[test]
    fn unknown_keys_and_malformed_lines_warn() {
        let (_, w) = parse("Home.Dir=/home\nthis is not an option\nRole.StateConsumer=x\n");
        let msgs: Vec<String> = w.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "/etc/waagent.conf:1: Home.Dir: unknown option, ignored".to_string(),
                "/etc/waagent.conf:2: not a Key=Value line: \"this is not an option\"".to_string(),
            ]
        );
    }

    #[test]
    fn lb_probe_responder_is_a_real_switch_off_by_default() {
        assert!(!Config::default().lb_probe_responder);
        assert_eq!(
            Config::default().get("LBProbeResponder").as_deref(),
            Some("False")
        );
        let (c, w) = parse("LBProbeResponder=y\n");
        assert!(w.is_empty(), "{w:?}");
        assert!(c.lb_probe_responder);
        assert_eq!(c.get("LBProbeResponder").as_deref(), Some("True"));
        let (c, w) = parse("LBProbeResponder=maybe\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!c.lb_probe_responder);
    }

    #[test]
    fn old_debug_names_are_aliases() {
        let (c, w) = parse("Debug.AutoUpdateHotfixFrequency=60\n");
        assert!(w.is_empty());
        assert_eq!(c.debug_self_update_hotfix_frequency, 60);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Path::new("/nonexistent/waagent.conf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read configuration file /nonexistent/waagent.conf: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn every_key_is_settable_and_shown() {
        for key in Config::KEYS {
            let mut c = Config::default();
            assert!(c.set(key, None).is_some(), "{key}");
            assert!(c.get(key).is_some(), "{key}");
        }
    }
}
