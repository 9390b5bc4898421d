//! Logging: `/var/log/waagent.log` (`Logs.File`), plus standard output with
//! `-verbose`, plus `/dev/console` while provisioning when `Logs.Console=y`.
//!
//! Every record passes through [`crate::redact::redact`] before any sink sees
//! it, so a secret that slips into a log argument still never reaches disk.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{CombinedLogger, SharedLogger, WriteLogger};

use crate::redact::redact;

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The log file (`Logs.File`, default `/var/log/waagent.log`).
    pub file: PathBuf,
    /// `Logs.Verbose=y` or `-verbose`: include debug records.
    pub verbose: bool,
    /// `-verbose`: also write to standard output.
    pub stdout: bool,
    /// The system console (`/dev/console`), for `Logs.Console=y` while provisioning.
    pub console: Option<PathBuf>,
}

/// A logger that redacts each message, then hands it to the real sinks.
struct RedactingLogger {
    inner: Box<CombinedLogger>,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let clean = redact(&text);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{clean}"))
                .level(record.level())
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the process-wide logger. A sink that cannot be opened is left
/// out and reported in the returned list, so the agent still runs (and still
/// logs to the sinks that work) on a read-only or half-set-up system.
pub fn init(opts: &LogOptions) -> Vec<String> {
    let mut problems = Vec::new();
    let level = if opts.verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();

    let mut sinks: Vec<Box<dyn SharedLogger>> = Vec::new();
    match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&opts.file)
    {
        Ok(file) => sinks.push(WriteLogger::new(level, config.clone(), file)),
        Err(e) => problems.push(format!("cannot open log file {}: {e}", opts.file.display())),
    }
    if opts.stdout {
        sinks.push(WriteLogger::new(level, config.clone(), io::stdout()));
    }
    if let Some(console) = &opts.console {
        // The console is best effort: a VM without one still runs.
        if let Ok(c) = OpenOptions::new().append(true).open(console) {
            sinks.push(WriteLogger::new(LevelFilter::Info, config, c));
        }
    }
    let logger = RedactingLogger {
        inner: CombinedLogger::new(sinks),
    };
    match log::set_boxed_logger(Box::new(logger)) {
        Ok(()) => log::set_max_level(level),
        Err(e) => problems.push(format!("logger already set: {e}")),
    }
    problems
}
