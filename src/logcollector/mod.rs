//! `-collect-logs [-full]`: the agent's and the extensions' logs, the
//! Lib.Dir documents and a few facts about the system, in one zip at
//! `<Lib.Dir>/logcollector/logs.zip` (waagent's place and shape), for an
//! administrator to hand to support.
//!
//! What goes in is chosen by `select.rs`; here each chosen file is read
//! (bounded, O_NOFOLLOW, the inode it was listed as), stripped of what
//! must not leave the VM, and deflated into a temporary file beside the
//! archive, which is fsynced, made 0600 and renamed in. `results.txt` in
//! the archive says what was collected, what was left out and why.
//!
//! Never in the archive: private keys, the fabric's certificates and
//! protected data, custom data, password databases (by name, in every
//! tree), `protectedSettings` (removed from handler settings files and
//! blanked in the goal-state documents), ovf-env.xml's password and custom
//! data (masked). Every text also passes through the log redaction, a net
//! under all that for secrets a handler may have logged (PEM private
//! keys, `"password": …`).

pub mod select;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::os::{Cmd, Env};
pub use select::{Candidate, Chosen, Class, LeftOut, Limits, Selection, Sources, Treatment};

/// The directory under Lib.Dir, and the archive's name (waagent's).
pub const DIR: &str = "logcollector";
pub const ARCHIVE: &str = "logs.zip";
/// The manifest inside the archive.
pub const RESULTS: &str = "results.txt";

/// Lines of `dmesg` kept (its newest).
const DMESG_LINES: usize = 2000;
/// `journalctl -n`: the agent's newest journal lines.
const JOURNAL_LINES: &str = "5000";
/// A command's limit; each captures at most 1 MiB per stream (the runner).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// `/proc` files report size 0; they are read up to this.
const PROC_LIMIT: u64 = 1024 * 1024;

/// What one collection wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub archive: PathBuf,
    /// The archive's size on disk.
    pub bytes: u64,
    /// Entries in the archive, `results.txt` included.
    pub files: usize,
    /// Their bytes before compression.
    pub uncompressed: u64,
    pub left_out: usize,
}

/// Output of a command or a `/proc` file, stored under `name`.
struct Fact {
    name: String,
    data: Vec<u8>,
}

/// Collects into `<Lib.Dir>/logcollector/logs.zip`.
pub fn collect(env: &Env, full: bool) -> io::Result<Report> {
    collect_with(env, full, &Limits::default())
}

/// [`collect`] within `limits`.
pub fn collect_with(env: &Env, full: bool, limits: &Limits) -> io::Result<Report> {
    let src = Sources {
        lib_dir: env.config.lib_dir.clone(),
        log_file: env.config.log_file.clone(),
        ext_log_dir: env.config.extension_log_dir.clone(),
        root: env.root.clone(),
    };
    let dir = src.lib_dir.join(DIR);
    make_private_dir(&dir)?;

    let mut notes = Vec::new();
    let facts = facts(env, &src, &mut notes);
    let reserved = facts.iter().map(|f| f.data.len() as u64).sum();
    let (found, refused) = select::candidates(&src, full, limits);
    let Selection {
        chosen,
        mut left_out,
        ..
    } = select::select(found, refused, reserved, limits);

    let mut tmp = tempfile::Builder::new()
        .prefix(".logs.zip.")
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(&dir)?;
    let mut zip = ZipWriter::new(tmp.as_file_mut());
    let mut included = Vec::new();
    let mut uncompressed = 0u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for f in &facts {
        add(&mut zip, &f.name, &f.data, Some(now))?;
        uncompressed += f.data.len() as u64;
        included.push(format!("{:>10}  {}", f.data.len(), f.name));
    }
    for c in &chosen {
        match read_chosen(c).and_then(|raw| treat(&c.file, raw)) {
            // Redaction may lengthen a text: the limit holds all the same.
            Ok((data, _)) if uncompressed + data.len() as u64 > limits.total => {
                let why = format!(
                    "{} bytes as collected would pass the archive's limit of {} uncompressed bytes",
                    data.len(),
                    limits.total
                );
                left_out.push(LeftOut {
                    what: c.file.path.display().to_string(),
                    why,
                });
            }
            Ok((data, note)) => {
                add(&mut zip, &c.file.name, &data, Some(c.file.mtime))?;
                uncompressed += data.len() as u64;
                let mut line = format!("{:>10}  {}", data.len(), c.file.name);
                if c.take < c.file.size {
                    let _ = write!(line, " (its last {} of {} bytes)", c.take, c.file.size);
                }
                if let Some(n) = note {
                    let _ = write!(line, " ({n})");
                }
                included.push(line);
            }
            Err(why) => left_out.push(LeftOut {
                what: c.file.path.display().to_string(),
                why,
            }),
        }
    }
    let results = results_text(&src, full, limits, &included, &left_out, &notes);
    add(&mut zip, RESULTS, results.as_bytes(), Some(now))?;
    uncompressed += results.len() as u64;
    zip.finish().map_err(zip_error)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o600))?;
    let archive = dir.join(ARCHIVE);
    tmp.persist(&archive).map_err(|e| e.error)?;
    crate::fsutil::sync_dir(&dir)?;
    let bytes = fs::symlink_metadata(&archive)?.len();
    Ok(Report {
        archive,
        bytes,
        files: included.len() + 1,
        uncompressed,
        left_out: left_out.len(),
    })
}

/// `<Lib.Dir>/logcollector`, 0700, a real directory (not a link).
fn make_private_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    let md = fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    fs::set_permissions(dir, Permissions::from_mode(0o700))
}

fn zip_error(e: zip::result::ZipError) -> io::Error {
    io::Error::other(format!("cannot write the archive: {e}"))
}

fn add<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    name: &str,
    data: &[u8],
    mtime: Option<i64>,
) -> io::Result<()> {
    let mut o = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o600);
    if let Some(t) = mtime.and_then(zip_time) {
        o = o.last_modified_time(t);
    }
    zip.start_file(name, o).map_err(zip_error)?;
    zip.write_all(data)
}

/// A Unix time as the zip's DOS time (UTC; zips have no zone).
fn zip_time(secs: i64) -> Option<zip::DateTime> {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::utc::civil_from_days(days);
    zip::DateTime::from_date_and_time(
        u16::try_from(y).ok()?,
        m as u8,
        d as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
    )
    .ok()
}

/// The chosen file's last `take` bytes, from the inode that was listed:
/// opened without following a link or blocking on a FIFO.
fn read_chosen(c: &Chosen) -> Result<Vec<u8>, String> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&c.file.path)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() || (md.dev(), md.ino()) != c.file.id {
        return Err("changed since it was listed: not collected".into());
    }
    read_tail(&mut f, md.len(), c.take).map_err(|e| format!("cannot be read: {e}"))
}

/// At most `take` bytes: the last ones of a file `size` long.
fn read_tail(f: &mut File, size: u64, take: u64) -> io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(size.saturating_sub(take)))?;
    let mut data = Vec::with_capacity(take.min(size) as usize);
    f.take(take).read_to_end(&mut data)?;
    Ok(data)
}

/// What goes into the archive for a file's bytes, and a note on what was
/// changed; `Err` names why it is left out instead.
fn treat(c: &Candidate, raw: Vec<u8>) -> Result<(Vec<u8>, Option<&'static str>), String> {
    if select::is_compressed(&c.name) {
        return Ok((raw, None));
    }
    match c.treatment {
        Treatment::Copy => {
            if looks_binary(&raw) {
                return Ok((raw, None));
            }
            let text = String::from_utf8_lossy(&raw);
            let clean = redact_text(&text);
            let note = (clean != text).then_some("secrets redacted");
            Ok((clean.into_bytes(), note))
        }
        Treatment::Settings => {
            let text = std::str::from_utf8(&raw)
                .map_err(|_| "a settings file that is not UTF-8 text; it may hold protected settings: not collected".to_string())?;
            let stripped = strip_protected_settings(text)?;
            Ok((
                redact_text(&stripped).into_bytes(),
                Some("protectedSettings removed"),
            ))
        }
        Treatment::OvfEnv => {
            let text = std::str::from_utf8(&raw).map_err(|_| {
                "ovf-env.xml that is not UTF-8 text cannot be masked: not collected".to_string()
            })?;
            let masked = crate::ovf::masked(text);
            Ok((
                redact_text(&masked).into_bytes(),
                Some("password and custom data masked"),
            ))
        }
    }
}

/// A NUL in the first 8 KiB: binary, stored as it is.
fn looks_binary(data: &[u8]) -> bool {
    data[..data.len().min(8192)].contains(&0)
}

/// The log redaction, plus `protectedSettings` in a goal-state document
/// whose JSON quotes are written as `&quot;`.
pub fn redact_text(text: &str) -> String {
    let once = crate::redact::redact(text).into_owned();
    blank_escaped_protected(&once)
}

fn blank_escaped_protected(text: &str) -> String {
    const KEY: &str = "&quot;protectedSettings&quot;";
    const Q: &str = "&quot;";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i + KEY.len()]);
        rest = &rest[i + KEY.len()..];
        let value = rest.trim_start().strip_prefix(':').map(str::trim_start);
        if let Some(v) = value.and_then(|v| v.strip_prefix(Q)) {
            if let Some(end) = v.find(Q) {
                out.push_str(&rest[..rest.len() - v.len()]);
                out.push_str("[REDACTED]");
                rest = &v[end..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A handler's `config/N.settings` with every `protectedSettings` value
/// replaced; a file that is not the JSON expected is left out, since it
/// may hold them in a shape this does not know.
pub fn strip_protected_settings(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: Value = serde_json::from_str(text).map_err(|_| {
        "a settings file that is not valid JSON; it may hold protected settings: not collected"
            .to_string()
    })?;
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "protectedSettings" {
                        if !v.is_null() {
                            *v = Value::from("[REDACTED]");
                        }
                    } else {
                        walk(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut doc);
    Ok(doc.to_string())
}

/// The commands' output and the /proc facts; a command that cannot run is
/// noted, not fatal.
fn facts(env: &Env, src: &Sources, notes: &mut Vec<String>) -> Vec<Fact> {
    let mut out = Vec::new();
    let mut run = |name: &str, cmd: Cmd, keep_lines: Option<usize>| {
        let shown = cmd.display();
        match env.runner.run(&cmd.timeout(COMMAND_TIMEOUT)) {
            Ok(o) => {
                let mut text = o.stdout.clone();
                if let Some(n) = keep_lines {
                    text = last_lines(&text, n);
                }
                if !o.success() {
                    notes.push(format!(
                        "`{shown}` exited with {}: {}",
                        o.code,
                        o.stderr.trim()
                    ));
                }
                out.push(Fact {
                    name: name.to_string(),
                    data: redact_text(&text).into_bytes(),
                });
            }
            Err(e) => notes.push(e.to_string()),
        }
    };
    run("commands/ip_addr.txt", Cmd::new("ip").arg("addr"), None);
    run("commands/ip_route.txt", Cmd::new("ip").arg("route"), None);
    run("commands/df.txt", Cmd::new("df").arg("-h"), None);
    run("commands/dmesg.txt", Cmd::new("dmesg"), Some(DMESG_LINES));
    if fs::symlink_metadata(src.system("/run/systemd/system")).is_ok_and(|m| m.is_dir()) {
        run(
            "commands/journalctl_waagent.txt",
            Cmd::new("journalctl").args([
                "--no-pager",
                "-u",
                crate::os::SERVICE_NAME,
                "-n",
                JOURNAL_LINES,
            ]),
            None,
        );
    }
    for (name, abs) in [
        ("proc/mounts", "/proc/self/mounts"),
        ("proc/cmdline", "/proc/cmdline"),
    ] {
        match read_proc(&src.system(abs)) {
            Ok(data) => out.push(Fact {
                name: name.to_string(),
                data: redact_text(&String::from_utf8_lossy(&data)).into_bytes(),
            }),
            Err(e) => notes.push(format!("{abs}: {e}")),
        }
    }
    out
}

fn read_proc(p: &Path) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    f.take(PROC_LIMIT).read_to_end(&mut data)?;
    Ok(data)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut s = lines[from..].join("\n");
    s.push('\n');
    s
}

fn results_text(
    src: &Sources,
    full: bool,
    limits: &Limits,
    included: &[String],
    left_out: &[LeftOut],
    notes: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} -collect-logs{} at {}",
        crate::AGENT_NAME,
        crate::VERSION,
        if full { " -full" } else { "" },
        crate::utc::timestamp(std::time::SystemTime::now())
    );
    let _ = writeln!(
        s,
        "Lib.Dir {}, Logs.File {}, Extension.LogDir {}",
        src.lib_dir.display(),
        src.log_file.display(),
        src.ext_log_dir.display()
    );
    let _ = writeln!(
        s,
        "Limits: {} uncompressed bytes in all, {} per file (a longer file keeps its newest bytes).",
        limits.total, limits.per_file
    );
    let _ = writeln!(
        s,
        "Text passes through the agent's log redaction; private keys, certificates, protected \
         settings, custom data and password databases are never collected.\n"
    );
    let _ = writeln!(s, "## Included ({}), bytes and name\n", included.len());
    for l in included {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "\n## Left out ({})\n", left_out.len());
    for l in left_out {
        let _ = writeln!(s, "{}: {}", l.what, l.why);
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Commands and files that failed\n");
        for n in notes {
            let _ = writeln!(s, "{n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole command over a temporary root: the archive's mode,
    /// entries, results, the commands run, and no secret anywhere in it.
    #[test]
    fn collects_into_a_private_archive_without_secrets() {
        use crate::os::testing::{env, write};
        use crate::os::{Flavour, Output, RecordingRunner};
        use std::rc::Rc;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let runner = Rc::new(RecordingRunner::new());
        runner.push("ip", Output::ok("1: lo: <LOOPBACK,UP>\n"));
        runner.push("dmesg", Output::ok(&"kmsg-line\n".repeat(3000)));
        let mut e = env(root, Flavour::Default, runner.clone());
        e.config.lib_dir = root.join("var/lib/waagent");
        e.config.log_file = root.join("var/log/waagent.log");
        e.config.extension_log_dir = root.join("var/log/azure");
        write(root, "/var/log/waagent.log", "started\n");
        write(
            root,
            "/var/log/azure/Echo/extension.log",
            "handler settings: {\"password\": \"hunter2\"}\n",
        );
        write(
            root,
            "/var/lib/waagent/ovf-env.xml",
            "<UserPassword>hunter2</UserPassword><CustomData>Y3VzdG9t</CustomData>",
        );
        write(
            root,
            "/var/lib/waagent/TransportPrivate.pem",
            "-----BEGIN PRIVATE KEY-----\nMIIEkey\n-----END PRIVATE KEY-----\n",
        );
        write(
            root,
            "/var/lib/waagent/Echo-1.0/config/0.settings",
            r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":"MIIBsealed"}}]}"#,
        );
        write(root, "/run/systemd/system/.keep", "");
        write(root, "/proc/cmdline", "console=ttyS0\n");
        let r = collect_with(&e, false, &Limits::default()).unwrap();
        assert_eq!(
            r.archive,
            root.join("var/lib/waagent/logcollector/logs.zip")
        );
        let md = fs::metadata(&r.archive).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(md.len(), r.bytes);
        let dmode = fs::metadata(r.archive.parent().unwrap()).unwrap().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let mut zip = zip::ZipArchive::new(File::open(&r.archive).unwrap()).unwrap();
        assert_eq!(zip.len(), r.files);
        let mut all = String::new();
        let mut names = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            assert_eq!(f.compression(), CompressionMethod::Deflated);
            names.push(f.name().unwrap().to_string());
            f.read_to_string(&mut all).unwrap();
        }
        let lib = archive_name_of(root, "var/lib/waagent");
        for want in [
            "commands/ip_addr.txt".to_string(),
            "commands/ip_route.txt".into(),
            "commands/df.txt".into(),
            "commands/dmesg.txt".into(),
            "commands/journalctl_waagent.txt".into(),
            "proc/cmdline".into(),
            format!("{lib}/ovf-env.xml"),
            format!("{lib}/Echo-1.0/config/0.settings"),
            archive_name_of(root, "var/log/waagent.log"),
            archive_name_of(root, "var/log/azure/Echo/extension.log"),
            RESULTS.into(),
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("TransportPrivate")),
            "{names:?}"
        );
        for secret in ["hunter2", "Y3VzdG9t", "MIIEkey", "MIIBsealed"] {
            assert!(!all.contains(secret), "{secret} in the archive");
        }
        assert!(all.contains("console=ttyS0") && all.contains("1: lo:"));
        assert!(all.contains("TransportPrivate.pem: a private key"), "{all}");
        assert_eq!(all.matches("kmsg-line").count(), DMESG_LINES);
        let lines = runner.lines();
        assert!(
            lines.contains(&"journalctl --no-pager -u waagent -n 5000".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"ip route".to_string()), "{lines:?}");
        // Again: the archive is replaced, its predecessor not collected.
        let again = collect_with(&e, false, &Limits::default()).unwrap();
        assert_eq!(again.files, r.files);
        let left: Vec<_> = fs::read_dir(r.archive.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    /// The limit holds for what is written, after redaction lengthened it.
    #[test]
    fn the_limit_holds_for_the_bytes_written() {
        use crate::os::testing::{env, write};
        use crate::os::{Flavour, RecordingRunner};
        use std::rc::Rc;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut e = env(root, Flavour::Default, Rc::new(RecordingRunner::new()));
        e.config.lib_dir = root.join("lib");
        e.config.log_file = root.join("log/waagent.log");
        e.config.extension_log_dir = root.join("log/azure");
        write(root, "/lib/.keep", "");
        write(root, "/log/waagent.log", r#"{"password":"x"}"#);
        let limits = Limits {
            total: 20,
            ..Limits::default()
        };
        let r = collect_with(&e, false, &limits).unwrap();
        let mut zip = zip::ZipArchive::new(File::open(&r.archive).unwrap()).unwrap();
        let log = archive_name_of(root, "log/waagent.log");
        assert!(zip.by_name(&log).is_err(), "{log} was collected");
        let mut results = String::new();
        zip.by_name(RESULTS)
            .unwrap()
            .read_to_string(&mut results)
            .unwrap();
        assert!(
            results.contains("25 bytes as collected would pass the archive's limit of 20"),
            "{results}"
        );
    }

    fn archive_name_of(root: &Path, rel: &str) -> String {
        select::archive_name(&root.join(rel))
    }

    #[test]
    fn settings_lose_their_protected_part() {
        let text = r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettingsCertThumbprint":"AB12","protectedSettings":"MIIBsecret==","publicSettings":{"a":1}}}]}"#;
        let out = strip_protected_settings(text).unwrap();
        assert!(!out.contains("MIIBsecret"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let hs = &v["runtimeSettings"][0]["handlerSettings"];
        assert_eq!(hs["protectedSettings"], "[REDACTED]");
        assert_eq!(hs["publicSettings"]["a"], 1);
        assert_eq!(hs["protectedSettingsCertThumbprint"], "AB12");
        let null = r#"{"runtimeSettings":[{"handlerSettings":{"protectedSettings":null}}]}"#;
        assert!(strip_protected_settings(null).unwrap().contains("null"));
        assert_eq!(strip_protected_settings("").unwrap(), "");
        assert!(strip_protected_settings(r#"{"protectedSettings":"MIIB"#).is_err());
    }

    #[test]
    fn goal_state_documents_lose_protected_settings_however_quoted() {
        for doc in [
            r#"<RuntimeSettings seqNo="0">{"runtimeSettings":[{"handlerSettings":{"protectedSettings":"MIIBsecret==","publicSettings":{}}}]}</RuntimeSettings>"#,
            r#"<RuntimeSettings seqNo="0">{&quot;runtimeSettings&quot;:[{&quot;handlerSettings&quot;:{&quot;protectedSettings&quot; : &quot;MIIBsecret==&quot;}}]}</RuntimeSettings>"#,
        ] {
            let out = redact_text(doc);
            assert!(!out.contains("MIIBsecret"), "{out}");
            assert!(out.contains("protectedSettings"), "{out}");
        }
    }

    #[test]
    fn treatments() {
        let c = |name: &str, treatment| Candidate {
            path: PathBuf::from(format!("/x/{name}")),
            name: format!("x/{name}"),
            size: 0,
            mtime: 0,
            id: (0, 0),
            class: Class::LibDocument,
            treatment,
        };
        let ovf = "<UserPassword>hunter2</UserPassword><CustomData>c2VjcmV0</CustomData>";
        let (out, note) = treat(&c("ovf-env.xml", Treatment::OvfEnv), ovf.into()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("hunter2") && !out.contains("c2VjcmV0"),
            "{out}"
        );
        assert_eq!(note, Some("password and custom data masked"));
        assert!(treat(&c("ovf-env.xml", Treatment::OvfEnv), vec![0xff, 0xfe]).is_err());
        let key = "log line\n-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----\n";
        let (out, note) = treat(&c("a.log", Treatment::Copy), key.into()).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("MIIEsecret"));
        assert_eq!(note, Some("secrets redacted"));
        // Binary and compressed files are stored as they are.
        let bin = vec![1, 0, 2, 3];
        assert_eq!(
            treat(&c("a.bin", Treatment::Copy), bin.clone()).unwrap().0,
            bin
        );
        assert_eq!(
            treat(&c("a.log.gz", Treatment::Copy), bin.clone())
                .unwrap()
                .0,
            bin
        );
    }

    #[test]
    fn tail_reads_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(read_tail(&mut f, 10, 4).unwrap(), b"6789");
        assert_eq!(read_tail(&mut f, 10, 40).unwrap(), b"0123456789");
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
    }

    #[test]
    fn zip_times_are_the_files_utc_times() {
        // DOS times count in 2 s steps.
        let t = zip_time(1_733_356_800 + 3662).unwrap(); // 2024-12-05 01:01:02
        assert_eq!(
            (
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            (2024, 12, 5, 1, 1, 2)
        );
        assert!(zip_time(0).is_none()); // before 1980: no DOS time
    }
}
