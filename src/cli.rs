//! The command line, compatible with waagent's.
//!
//! waagent matches each argument against `^[-/]*{word}`, so `-daemon`,
//! `--daemon` and `/daemon` are the same flag, and the last command word
//! wins. We accept the same spellings (plus `=` beside waagent's `:` for
//! `-configuration-path`), normalise them to `--word`, and let getopts do the
//! rest. Unlike waagent we match whole words: `-daemonX` is an error, not
//! `-daemon`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use getopts::Options;

/// What the agent was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Daemon,
    Start,
    RunExtHandlers,
    Deprovision,
    DeprovisionUser,
    RegisterService,
    Version,
    Help,
    ShowConfiguration,
    SerialConsole,
    CollectLogs,
    /// `-setup-firewall=IP`: the WireServer firewall rules, once (at boot).
    SetupFirewall,
}

impl Command {
    /// The flag that selects it, as the user types it.
    pub fn flag(self) -> &'static str {
        match self {
            Command::Daemon => "-daemon",
            Command::Start => "-start",
            Command::RunExtHandlers => "-run-exthandlers",
            Command::Deprovision => "-deprovision",
            Command::DeprovisionUser => "-deprovision+user",
            Command::RegisterService => "-register-service",
            Command::Version => "-version",
            Command::Help => "-help",
            Command::ShowConfiguration => "-show-configuration",
            Command::SerialConsole => "-serialconsole",
            Command::CollectLogs => "-collect-logs",
            Command::SetupFirewall => "-setup-firewall",
        }
    }
}

/// The command words, with their descriptions for `-help`.
const COMMANDS: &[(&str, Command, &str)] = &[
    (
        "daemon",
        Command::Daemon,
        "run the agent in the foreground (what the boot service runs)",
    ),
    (
        "start",
        Command::Start,
        "start the daemon in the background and return",
    ),
    (
        "run-exthandlers",
        Command::RunExtHandlers,
        "run the current goal state's extension handlers in the foreground, then exit",
    ),
    (
        "deprovision",
        Command::Deprovision,
        "remove provisioning data so the VM can be captured as an image",
    ),
    (
        "deprovision+user",
        Command::DeprovisionUser,
        "like -deprovision, and delete the provisioned user",
    ),
    (
        "register-service",
        Command::RegisterService,
        "enable the waagent service at boot for the running init system",
    ),
    (
        "version",
        Command::Version,
        "print the agent's version and the OS it runs on",
    ),
    ("help", Command::Help, "print this help"),
    (
        "show-configuration",
        Command::ShowConfiguration,
        "print every configuration option as Key = value",
    ),
    (
        "serialconsole",
        Command::SerialConsole,
        "configure the boot loader to use the serial console",
    ),
    (
        "collect-logs",
        Command::CollectLogs,
        "collect the logs into <Lib.Dir>/logcollector/logs.zip (secrets left out)",
    ),
    (
        SETUP_FIREWALL,
        Command::SetupFirewall,
        "set the WireServer firewall rules for IP and exit (run at boot)",
    ),
];

/// Flags that modify a command.
const MODIFIERS: &[(&str, &str)] = &[
    ("force", "do not ask for confirmation (-deprovision)"),
    (
        "verbose",
        "log debug messages, and log to standard output too",
    ),
    (
        "debug",
        "with -run-exthandlers: do not check for an orphaned agent",
    ),
    (
        "full",
        "with -collect-logs: add the system log and the handlers' own logs",
    ),
];

const CONFIG_PATH: &str = "configuration-path";
/// The one command word that takes a value, as waagent's
/// `-setup-firewall=<IP>` (the WireServer address).
const SETUP_FIREWALL: &str = "setup-firewall";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub force: bool,
    pub verbose: bool,
    pub debug: bool,
    pub full: bool,
    /// `-configuration-path:FILE`.
    pub configuration_path: Option<PathBuf>,
    /// `-setup-firewall=IP`.
    pub firewall_endpoint: Option<Ipv4Addr>,
}

/// A command line we cannot make sense of: the caller prints it with the
/// usage and exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn options() -> Options {
    let mut o = Options::new();
    for (word, _, help) in COMMANDS {
        if *word == SETUP_FIREWALL {
            o.optmulti("", word, help, "IP");
        } else {
            o.optflagmulti("", word, help);
        }
    }
    for (word, help) in MODIFIERS {
        o.optflagmulti("", word, help);
    }
    o.optopt(
        "",
        CONFIG_PATH,
        "read FILE instead of the default waagent.conf",
        "FILE",
    );
    o
}

/// The one-line usage, as waagent prints it.
pub fn usage_line(argv0: &str) -> String {
    format!(
        "usage: {argv0} [-verbose] [-force] [-help] [-configuration-path:FILE] \
         -deprovision[+user]|-register-service|-version|-daemon|-start|-run-exthandlers\
         |-show-configuration|-serialconsole|-collect-logs [-full]|-setup-firewall=IP"
    )
}

/// The full `-help` text.
pub fn help(argv0: &str) -> String {
    let mut s = usage_line(argv0);
    s.push_str("\n\nCommands:\n");
    for (word, _, help) in COMMANDS {
        let shown = match *word {
            SETUP_FIREWALL => format!("{word}=IP"),
            "collect-logs" => format!("{word} [-full]"),
            w => w.to_string(),
        };
        s.push_str(&format!("  -{shown:<24}{help}\n"));
    }
    s.push_str("\nOptions:\n");
    for (word, help) in MODIFIERS {
        s.push_str(&format!("  -{word:<24}{help}\n"));
    }
    s.push_str(&format!(
        "  -{:<24}{}\n",
        "configuration-path:FILE", "read FILE instead of the default waagent.conf"
    ));
    s.push_str(
        "\nFlags may be written -word, --word or /word. With no command, this help is printed.\n\
         Configuration: /etc/waagent.conf (FreeBSD /usr/local/etc, CoreOS /usr/share/oem); \
         log: /var/log/waagent.log.\n",
    );
    s
}

/// Turns `-x`, `--x`, `/x`, `-x:v` into getopts' `--x` / `--x=v`.
fn normalise(args: &[String]) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_expected = false;
    for a in args {
        if value_expected {
            out.push(a.clone());
            value_expected = false;
            continue;
        }
        let word = a.trim_start_matches(['-', '/']);
        let (name, value) = match word.find([':', '=']) {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let name = match name.to_ascii_lowercase().as_str() {
            "?" | "usage" | "h" => "help".to_string(),
            n => n.to_string(),
        };
        let known = COMMANDS.iter().any(|(w, _, _)| *w == name)
            || MODIFIERS.iter().any(|(w, _)| *w == name)
            || name == CONFIG_PATH;
        let takes_value = name == CONFIG_PATH || name == SETUP_FIREWALL;
        if !known || (value.is_some() && !takes_value) {
            return Err(UsageError(format!("unknown argument {a:?}")));
        }
        if name == SETUP_FIREWALL && value.is_none() {
            return Err(UsageError(
                "-setup-firewall needs the WireServer address: -setup-firewall=IP".into(),
            ));
        }
        match value {
            Some(v) => out.push(format!("--{name}={v}")),
            None => {
                value_expected = name == CONFIG_PATH;
                out.push(format!("--{name}"));
            }
        }
    }
    Ok(out)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    let normalised = normalise(args)?;
    let m = options()
        .parse(&normalised)
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(extra) = m.free.first() {
        return Err(UsageError(format!("unexpected argument {extra:?}")));
    }
    // The last command word wins, as in waagent.
    let command = COMMANDS
        .iter()
        .filter_map(|(word, cmd, _)| m.opt_positions(word).last().map(|p| (*p, *cmd)))
        .max_by_key(|(p, _)| *p)
        .map_or(Command::Help, |(_, c)| c);
    let configuration_path = match m.opt_str(CONFIG_PATH) {
        Some(p) if p.is_empty() => {
            return Err(UsageError("-configuration-path needs a file name".into()))
        }
        p => p.map(PathBuf::from),
    };
    let firewall_endpoint = match m.opt_strs(SETUP_FIREWALL).last() {
        Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
            UsageError(format!(
                "-setup-firewall={ip}: not an IPv4 address (the WireServer's, e.g. 168.63.129.16)"
            ))
        })?),
        None => None,
    };
    Ok(Invocation {
        command,
        force: m.opt_present("force"),
        verbose: m.opt_present("verbose"),
        debug: m.opt_present("debug"),
        full: m.opt_present("full"),
        configuration_path,
        firewall_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn cmd(args: &[&str]) -> Command {
        p(args).unwrap().command
    }

    #[test]
    fn every_command_in_every_spelling() {
        for (word, command, _) in COMMANDS {
            let word = match *word {
                SETUP_FIREWALL => "setup-firewall=168.63.129.16",
                w => w,
            };
            for spelling in [format!("-{word}"), format!("--{word}"), format!("/{word}")] {
                assert_eq!(cmd(&[&spelling]), *command, "{spelling}");
            }
        }
        assert_eq!(cmd(&["-?"]), Command::Help);
        assert_eq!(cmd(&["-usage"]), Command::Help);
        assert_eq!(cmd(&["/?"]), Command::Help);
        assert_eq!(cmd(&[]), Command::Help);
    }

    #[test]
    fn modifiers() {
        let i = p(&["-deprovision+user", "-force", "--verbose"]).unwrap();
        assert_eq!(
            i,
            Invocation {
                command: Command::DeprovisionUser,
                force: true,
                verbose: true,
                debug: false,
                full: false,
                configuration_path: None,
                firewall_endpoint: None,
            }
        );
        let i = p(&["/run-exthandlers", "-debug"]).unwrap();
        assert!(i.debug && !i.force && !i.verbose);
        let i = p(&["-collect-logs", "-full"]).unwrap();
        assert_eq!((i.command, i.full), (Command::CollectLogs, true));
    }

    #[test]
    fn configuration_path_spellings() {
        for args in [
            &["-configuration-path:/tmp/w.conf", "-daemon"][..],
            &["--configuration-path=/tmp/w.conf", "-daemon"],
            &["-configuration-path", "/tmp/w.conf", "-daemon"],
            &["-daemon", "/configuration-path:/tmp/w.conf"],
        ] {
            let i = p(args).unwrap();
            assert_eq!(
                i.configuration_path,
                Some(PathBuf::from("/tmp/w.conf")),
                "{args:?}"
            );
            assert_eq!(i.command, Command::Daemon);
        }
        assert_eq!(
            p(&["-configuration-path:"]).unwrap_err().to_string(),
            "-configuration-path needs a file name"
        );
        assert_eq!(
            p(&["-show-configuration", "-configuration-path"])
                .unwrap_err()
                .to_string(),
            "Argument to option 'configuration-path' missing"
        );
    }

    #[test]
    fn setup_firewall_takes_the_wire_server_address() {
        for spelling in [
            "-setup-firewall=168.63.129.16",
            "--setup-firewall=168.63.129.16",
            "/setup-firewall:168.63.129.16",
        ] {
            let i = p(&[spelling]).unwrap();
            assert_eq!(i.command, Command::SetupFirewall, "{spelling}");
            assert_eq!(
                i.firewall_endpoint,
                Some(Ipv4Addr::new(168, 63, 129, 16)),
                "{spelling}"
            );
        }
        for (args, msg) in [
            (
                &["-setup-firewall"][..],
                "-setup-firewall needs the WireServer address: -setup-firewall=IP",
            ),
            (
                &["-setup-firewall", "168.63.129.16"],
                "-setup-firewall needs the WireServer address: -setup-firewall=IP",
            ),
            (
                &["-setup-firewall=168.63.129"],
                "-setup-firewall=168.63.129: not an IPv4 address (the WireServer's, e.g. 168.63.129.16)",
            ),
            (
                &["-setup-firewall=-w"],
                "-setup-firewall=-w: not an IPv4 address (the WireServer's, e.g. 168.63.129.16)",
            ),
        ] {
            assert_eq!(p(args).unwrap_err().to_string(), msg, "{args:?}");
        }
        assert!(help("waagent").contains("  -setup-firewall=IP "));
        assert!(help("waagent").contains("  -collect-logs [-full] "));
    }

    #[test]
    fn last_command_wins() {
        assert_eq!(cmd(&["-version", "-daemon"]), Command::Daemon);
        assert_eq!(cmd(&["-daemon", "-version"]), Command::Version);
        assert_eq!(
            cmd(&["-deprovision", "-force", "-deprovision+user"]),
            Command::DeprovisionUser
        );
    }

    #[test]
    fn unknown_arguments_are_usage_errors() {
        for (args, msg) in [
            (&["-frobnicate"][..], "unknown argument \"-frobnicate\""),
            (&["-daemonX"], "unknown argument \"-daemonX\""),
            (&["-provision"], "unknown argument \"-provision\""),
            (&["daemon", "extra"], "unknown argument \"extra\""),
            (&["-version:2"], "unknown argument \"-version:2\""),
            (&["-"], "unknown argument \"-\""),
        ] {
            assert_eq!(p(args).unwrap_err().to_string(), msg, "{args:?}");
        }
    }

    #[test]
    fn help_lists_every_flag() {
        let h = help("waagent");
        for (word, _, _) in COMMANDS {
            assert!(
                h.contains(&format!("  -{word} ")) || h.contains(&format!("  -{word}=")),
                "{word}"
            );
        }
        for (word, _) in MODIFIERS {
            assert!(h.contains(&format!("  -{word} ")), "{word}");
        }
        assert!(h.starts_with("usage: waagent [-verbose]"));
    }
}
