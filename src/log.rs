//! Logging: `/var/log/waagent.log` (`Logs.File`), plus standard output with
//! `-verbose`, plus `/dev/console` while provisioning when `Logs.Console=y`,
//! plus the systemd journal when standard error is connected to it (the
//! service's `journalctl -u waagent` then holds the agent's own lines).
//!
//! Every record passes through [`crate::redact::redact`] before any sink sees
//! it, so a secret that slips into a log argument still never reaches disk
//! or the journal.

use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use log::{Level, LevelFilter, Log, Metadata, Record};
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
    /// Standard error goes to the journal: each record is written there
    /// too, up to this level.
    journal: Option<LevelFilter>,
}

impl RedactingLogger {
    fn to_journal(&self, level: Level) -> bool {
        self.journal.is_some_and(|max| level <= max)
    }
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.to_journal(metadata.level()) || self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let clean = redact(&text);
        if self.to_journal(record.level()) {
            // One write per record, so lines of two records never mix; a
            // journal that went away is no reason to stop the agent.
            let _ = io::stderr()
                .lock()
                .write_all(journal_text(record.level(), &clean).as_bytes());
        }
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

/// The syslog priority prefix journald reads at the start of each line it
/// gets on a stream (sd-daemon(3)): `<3>` error, `<4>` warning, `<6>`
/// info, `<7>` debug.
pub fn journal_prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// `text` as journal lines: every line carries the record's priority (a
/// line without one would be logged at the stream's default, info), and
/// no time stamp, since the journal keeps its own.
pub fn journal_text(level: Level, text: &str) -> String {
    let prefix = journal_prefix(level);
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split('\n') {
        out.push_str(prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `JOURNAL_STREAM`'s value, `DEVICE:INODE` in decimal, which systemd sets
/// when it connects standard output or error to the journal.
pub fn parse_journal_stream(value: &str) -> Option<(libc::dev_t, libc::ino_t)> {
    let (dev, ino) = value.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(dev) || !digits(ino) {
        return None;
    }
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Whether descriptor `fd` is the stream `JOURNAL_STREAM` names. The
/// variable is inherited by every child, so it is trusted only when the
/// descriptor itself is that stream (systemd.exec(5)): a command run from
/// a shell started by a service writes to a terminal, not the journal.
fn is_journal_stream(fd: std::os::unix::io::RawFd, value: Option<&str>) -> bool {
    let Some((dev, ino)) = value.and_then(parse_journal_stream) else {
        return false;
    };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
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
        // simplelog writes a record in a dozen pieces: a LineWriter makes it
        // one write(2) per line, so two agent processes appending to the
        // same file (the daemon and `waagent -deprovision`, say) never
        // split each other's lines.
        Ok(file) => sinks.push(WriteLogger::new(
            level,
            config.clone(),
            LineWriter::new(file),
        )),
        Err(e) => problems.push(format!("cannot open log file {}: {e}", opts.file.display())),
    }
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let journal = is_journal_stream(2, stream.as_deref());
    // Under systemd standard output goes to the journal too: -verbose would
    // log every line twice.
    if opts.stdout && !(journal && is_journal_stream(1, stream.as_deref())) {
        sinks.push(WriteLogger::new(level, config.clone(), io::stdout()));
    }
    if let Some(console) = &opts.console {
        // The console is best effort: a VM without one still runs.
        if let Ok(c) = OpenOptions::new().append(true).open(console) {
            sinks.push(WriteLogger::new(
                LevelFilter::Info,
                config,
                LineWriter::new(c),
            ));
        }
    }
    let logger = RedactingLogger {
        inner: CombinedLogger::new(sinks),
        journal: journal.then_some(level),
    };
    match log::set_boxed_logger(Box::new(logger)) {
        Ok(()) => log::set_max_level(level),
        Err(e) => problems.push(format!("logger already set: {e}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn journal_stream_is_device_colon_inode_in_decimal() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:1"),
            Some((u64::MAX as libc::dev_t, 1))
        );
        for bad in [
            "",
            ":",
            "8",
            "8:",
            ":1",
            "8:1:2",
            " 8:1",
            "8:1 ",
            "-8:1",
            "+8:1",
            "0x8:1",
            "a:b",
            "18446744073709551616:1",
        ] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_descriptor_is_the_journal_only_when_its_device_and_inode_match() {
        let file = tempfile::tempfile().unwrap();
        let st = nix::sys::stat::fstat(file.as_raw_fd()).unwrap();
        let fd = file.as_raw_fd();
        let named = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(is_journal_stream(fd, Some(&named)));
        let other_inode = format!("{}:{}", st.st_dev, st.st_ino + 1);
        assert!(!is_journal_stream(fd, Some(&other_inode)));
        let other_device = format!("{}:{}", st.st_dev + 1, st.st_ino);
        assert!(!is_journal_stream(fd, Some(&other_device)));
        assert!(!is_journal_stream(fd, None));
        assert!(!is_journal_stream(fd, Some("garbage")));
        // A closed descriptor is nobody's journal.
        drop(file);
        assert!(!is_journal_stream(fd, Some(&named)));
    }

    #[test]
    fn journal_lines_carry_the_syslog_priority_and_no_time() {
        assert_eq!(journal_prefix(Level::Error), "<3>");
        assert_eq!(journal_prefix(Level::Warn), "<4>");
        assert_eq!(journal_prefix(Level::Info), "<6>");
        assert_eq!(journal_prefix(Level::Debug), "<7>");
        assert_eq!(journal_prefix(Level::Trace), "<7>");
        assert_eq!(
            journal_text(Level::Info, "provisioning agent: Waagent"),
            "<6>provisioning agent: Waagent\n"
        );
        // Each line of a multi-line record keeps the record's priority.
        assert_eq!(
            journal_text(Level::Error, "cannot mount:\nmount: no medium"),
            "<3>cannot mount:\n<3>mount: no medium\n"
        );
        assert_eq!(journal_text(Level::Warn, ""), "<4>\n");
    }
}
