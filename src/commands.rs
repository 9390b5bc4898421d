//! What each command-line command does, and the exit codes: 0 success,
//! 1 failure (including "not implemented yet"), 2 usage error.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{self, Command, Invocation};
use crate::config::Config;
use crate::log::{self as agentlog, LogOptions};
use crate::os::{self, Env};
use crate::pidfile::PidFile;
use crate::{AGENT_NAME, VERSION};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Runs the agent with `args` (including the program name); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let argv0 = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "waagent".to_string());
    let inv = match cli::parse(args.get(1..).unwrap_or_default()) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("{argv0}: {e}\n{}", cli::usage_line(&argv0));
            return EXIT_USAGE;
        }
    };
    match inv.command {
        Command::Help => {
            print!("{}", cli::help(&argv0));
            return EXIT_OK;
        }
        Command::Version => {
            print!("{}", version_text(&os::detect_running(Path::new("/"))));
            return EXIT_OK;
        }
        _ => {}
    }

    let root = Path::new("/");
    let config_path = config_path(&inv, root);
    let (config, warnings) = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) if inv.command == Command::SetupFirewall => {
            // The boot unit runs it without -configuration-path; the rules
            // take nothing from the file, and at boot they matter more.
            eprintln!("{argv0}: warning: {e}; using the default settings");
            (Config::default(), Vec::new())
        }
        Err(e) => {
            eprintln!("{argv0}: {e}");
            return EXIT_FAILURE;
        }
    };
    for w in &warnings {
        eprintln!("{argv0}: warning: {w}");
    }
    if inv.command == Command::ShowConfiguration {
        print!("{}", show_configuration(&config));
        return EXIT_OK;
    }

    let console = (inv.command == Command::Daemon && config.logs_console)
        .then(|| PathBuf::from("/dev/console"));
    let log_opts = LogOptions {
        file: config.log_file.clone(),
        verbose: config.logs_verbose || inv.verbose,
        stdout: inv.verbose,
        console,
    };
    for problem in agentlog::init(&log_opts) {
        eprintln!("{argv0}: warning: {problem}");
    }
    for w in &warnings {
        log::warn!("{w}");
    }

    match inv.command {
        Command::Start => start(&inv, &config_path),
        Command::Daemon => daemon(config),
        Command::SerialConsole => serial_console(config),
        Command::RunExtHandlers => run_exthandlers(config),
        Command::Deprovision => deprovision(config, false, inv.force),
        Command::DeprovisionUser => deprovision(config, true, inv.force),
        Command::RegisterService => register_service(Env::system(config)),
        Command::SetupFirewall => match inv.firewall_endpoint {
            Some(ip) => setup_firewall(&*os::for_env(Env::system(config)), ip),
            None => {
                eprintln!(
                    "{argv0}: -setup-firewall needs the WireServer address: -setup-firewall=IP"
                );
                EXIT_USAGE
            }
        },
        Command::CollectLogs => collect_logs(Env::system(config), inv.full),
        other => not_implemented(other),
    }
}

/// The configuration file: `-configuration-path`, else the flavour's default.
pub fn config_path(inv: &Invocation, root: &Path) -> PathBuf {
    inv.configuration_path.clone().unwrap_or_else(|| {
        let flavour = os::detect_running(root).flavour;
        PathBuf::from(flavour.default_config_path())
    })
}

/// `-version`: the agent, the OS, and the goal-state agent — which for this
/// single-process agent is the daemon itself, so the same version.
pub fn version_text(distro: &os::Distro) -> String {
    let os_version = if distro.version.is_empty() {
        String::new()
    } else {
        format!(" {}", distro.version)
    };
    format!(
        "{AGENT_NAME}-{VERSION} running on {}{os_version}\nGoal state agent: {VERSION}\n",
        distro.id
    )
}

/// `-show-configuration`: `Key = value`, sorted.
pub fn show_configuration(config: &Config) -> String {
    config
        .entries()
        .into_iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

/// `-start`: run `waagent -daemon` in a new session, detached from the
/// terminal, and return. The daemon claims `Pid.File` itself.
fn start(inv: &Invocation, config_path: &Path) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("waagent: cannot find the agent's own executable: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut cmd = os::Cmd::new(exe.to_string_lossy())
        .arg("-daemon")
        .arg(format!("-configuration-path:{}", config_path.display()));
    if inv.verbose {
        cmd = cmd.arg("-verbose");
    }
    match os::runner::spawn_detached(&cmd) {
        Ok(pid) => {
            log::info!("started the daemon, pid {pid}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("waagent: cannot start {} -daemon: {e}", exe.display());
            log::error!("cannot start {} -daemon: {e}", exe.display());
            EXIT_FAILURE
        }
    }
}

/// `-daemon`: claims the pid file and runs the state machine until SIGTERM.
fn daemon(config: Config) -> i32 {
    let env = Env::system(config.clone());
    // First, so a SIGTERM while waiting for the pid file is a clean stop.
    if let Err(e) = crate::daemon::install_handlers() {
        log::warn!("{e}");
    }
    let _pid = match PidFile::acquire(&config.pid_file, &env.path("/proc"), PidFile::WAIT) {
        Ok(p) => p,
        Err(e @ crate::pidfile::PidFileError::Stopped { .. }) => {
            log::info!("{e}");
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("waagent: {e}");
            log::error!("{e}");
            return EXIT_FAILURE;
        }
    };
    // Every openssl (and, later, extension) child inherits it, as in waagent.
    crate::wire::crypto::export_fips_env(config.enable_fips);
    // systemd's Type=notify socket and watchdog, taken out of the
    // environment the children inherit.
    if let Some(n) = crate::notify::Notifier::from_env() {
        match n.watchdog() {
            Some(w) => log::info!("notifying systemd; watchdog every {w:?}"),
            None => log::info!("notifying systemd"),
        }
        crate::notify::install(n);
    }
    log::info!(
        "{AGENT_NAME} {VERSION} daemon starting, pid {}, on {} {} ({} flavour), CPU arch {}",
        std::process::id(),
        env.distro.id,
        env.distro.version,
        env.distro.flavour,
        os::cpu_arch()
    );
    let timing = daemon_timing(&config);
    let os = os::for_env(env);
    crate::daemon::Daemon::new(config, os, timing).run()
}

/// The daemon's timings, with the storage proxy: `HttpProxy.*`, else the
/// environment's. minreq would apply http_proxy & co. to every request;
/// the WireServer must be reached directly, so they are taken out of the
/// environment and used, like HttpProxy.*, for storage only.
fn daemon_timing(config: &Config) -> crate::daemon::Timing {
    let env_proxy = crate::http::take_environment_proxy();
    let mut timing = crate::daemon::Timing::default();
    timing.client.timeout_secs = config.debug_http_timeout.max(1);
    timing.imds_timeout_secs = timing.imds_timeout_secs.min(timing.client.timeout_secs);
    timing.client.storage_proxy = match (&config.http_proxy_host, config.http_proxy_port) {
        (Some(host), Some(port)) => Some(format!("http://{host}:{port}")),
        (Some(host), None) => {
            log::warn!("HttpProxy.Host={host} without HttpProxy.Port: no proxy is used");
            None
        }
        _ => env_proxy,
    };
    if let Some(p) = &timing.client.storage_proxy {
        // Without credentials, which a proxy URL may carry.
        log::info!(
            "storage traffic goes through the proxy {}",
            p.rsplit('@').next().unwrap_or("")
        );
    }
    timing
}

/// `-run-exthandlers`: the current goal state's extension handlers in the
/// foreground, for an admin debugging one. Not beside a running daemon,
/// which would run the same handlers: the daemon's pid-file lock decides.
fn run_exthandlers(config: Config) -> i32 {
    let env = Env::system(config.clone());
    if let Err(e) = crate::daemon::install_handlers() {
        log::warn!("{e}");
    }
    let _pid = match PidFile::acquire(&config.pid_file, &env.path("/proc"), Duration::ZERO) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "waagent: -run-exthandlers needs the daemon stopped (it runs the same handlers): {e}"
            );
            log::error!("-run-exthandlers: {e}");
            return EXIT_FAILURE;
        }
    };
    crate::wire::crypto::export_fips_env(config.enable_fips);
    let timing = daemon_timing(&config);
    let os = os::for_env(env);
    let mut d = crate::daemon::Daemon::new(config, os, timing);
    d.run_exthandlers(&mut std::io::stdout())
}

/// `-deprovision[+user]`: list, confirm (unless `-force`), do.
fn deprovision(config: Config, with_user: bool, force: bool) -> i32 {
    let os = os::for_env(Env::system(config.clone()));
    let actions = crate::deprovision::plan(&config, &*os, with_user);
    let stdin = std::io::stdin();
    if !crate::deprovision::confirm(&actions, force, &mut stdin.lock(), &mut std::io::stdout()) {
        println!("\nDeprovisioning cancelled; nothing was changed.");
        return EXIT_OK;
    }
    let failures = crate::deprovision::apply(&actions, &*os);
    for f in &failures {
        eprintln!("waagent: deprovision: {f}");
    }
    if failures.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// `-serialconsole`: kernel messages and a login on the serial console (the
/// portal's serial console and boot diagnostics read it), from the next boot.
fn serial_console(config: Config) -> i32 {
    let os = os::for_env(Env::system(config));
    match crate::env::console::enable_serial_console(&*os) {
        Ok(a) if !a.changed => {
            println!(
                "waagent: the serial console is already enabled in {}",
                a.file.display()
            );
            EXIT_OK
        }
        Ok(a) => {
            log::info!("serial console enabled in {}", a.file.display());
            println!(
                "waagent: serial console enabled in {}; it takes effect at the next boot",
                a.file.display()
            );
            EXIT_OK
        }
        Err(e) => {
            log::error!("cannot enable the serial console: {e}");
            eprintln!("waagent: cannot enable the serial console: {e}");
            EXIT_FAILURE
        }
    }
}

/// `-register-service`: enable the agent's service for the running init system.
fn register_service(env: Env) -> i32 {
    let os = os::for_env(env);
    match os.register_service() {
        Ok(()) => {
            let init = os.init_system();
            log::info!("enabled the {} service ({init:?})", os::SERVICE_NAME);
            println!(
                "waagent: enabled the {} service ({init:?})",
                os::SERVICE_NAME
            );
            EXIT_OK
        }
        Err(e) => {
            log::error!("cannot register the service: {e}");
            eprintln!("waagent: cannot register the service: {e}");
            EXIT_FAILURE
        }
    }
}

/// `-setup-firewall=IP`: what `waagent-network-setup.service` runs at boot,
/// before the network is up — the WireServer firewall rules for IP, for
/// this process's uid (root). waagent appends them unchecked; this checks
/// first, so a second run changes nothing.
fn setup_firewall(os: &dyn os::OsUtil, ip: Ipv4Addr) -> i32 {
    use crate::env::firewall::{Ensured, Firewall};
    let uid = nix::unistd::getuid().as_raw();
    log::info!("setting up the WireServer firewall rules for {ip}");
    let result = Firewall::detect(os, ip, uid).and_then(|fw| fw.ensure().map(|r| (r, fw)));
    match result {
        Ok((done, fw)) => {
            let said = match done {
                Ensured::AlreadySet => format!("the firewall rules for {ip} are already set"),
                Ensured::Set => format!("set the firewall rules for {ip}"),
                Ensured::Repaired(why) => {
                    format!("the firewall rules for {ip} were incomplete ({why}); set them again")
                }
            };
            log::info!(
                "{said} ({} {}):\n{}",
                fw.backend().program(),
                fw.backend().version(),
                fw.listing()
            );
            println!("waagent: {said}");
            EXIT_OK
        }
        Err(e) => {
            log::error!("cannot set the WireServer firewall rules for {ip}: {e}");
            eprintln!("waagent: cannot set the WireServer firewall rules for {ip}: {e}");
            EXIT_FAILURE
        }
    }
}

/// `-collect-logs [-full]`: the log archive for support (`logcollector`).
fn collect_logs(env: Env, full: bool) -> i32 {
    let mode = if full {
        "-collect-logs -full"
    } else {
        "-collect-logs"
    };
    match crate::logcollector::collect(&env, full) {
        Ok(r) => {
            let said = format!(
                "wrote {}: {} bytes, {} files ({} bytes uncompressed; {} left out, see {} inside)",
                r.archive.display(),
                r.bytes,
                r.files,
                r.uncompressed,
                r.left_out,
                crate::logcollector::RESULTS
            );
            log::info!("{mode}: {said}");
            println!("waagent: {said}");
            EXIT_OK
        }
        Err(e) => {
            log::error!("{mode}: cannot write the log archive: {e}");
            eprintln!("waagent: {mode}: cannot write the log archive: {e}");
            EXIT_FAILURE
        }
    }
}

fn not_implemented(command: Command) -> i32 {
    let msg = format!(
        "{} is not implemented in {AGENT_NAME} {VERSION} yet; nothing was changed",
        command.flag()
    );
    log::error!("{msg}");
    eprintln!("waagent: {msg}");
    EXIT_FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_agent_os_and_goal_state_agent() {
        let d = os::from_os_release("ID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!(
            version_text(&d),
            format!("waagent-rs-{VERSION} running on debian 12\nGoal state agent: {VERSION}\n")
        );
        let d = os::from_os_release("");
        assert!(version_text(&d).starts_with(&format!("waagent-rs-{VERSION} running on unknown\n")));
    }

    #[test]
    fn show_configuration_is_sorted_key_equals_value() {
        let (c, _) = Config::parse("Logs.Verbose=y\n", Path::new("x"));
        let text = show_configuration(&c);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), Config::KEYS.len());
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted);
        assert!(lines.contains(&"Logs.Verbose = True"));
    }
}
