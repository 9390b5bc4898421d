//! The kernel command line in the boot loader's configuration: waagent 2.0's
//! `-serialconsole` (`console=ttyS0 earlyprintk=ttyS0`, so Azure's boot
//! diagnostics and serial console see the boot) and the `numa=off`
//! workaround of old kernels ([`super::kernel`]) (§16, §18.9 of PROTOCOL.md).
//!
//!
//! Where the command line lives differs by distro:
//!
//! * Debian/Ubuntu: `/etc/default/grub`, `GRUB_CMDLINE_LINUX_DEFAULT=` (what
//!   their installers fill in), then `update-grub`;
//! * RHEL 7+ and other grub2 systems: `/etc/default/grub`,
//!   `GRUB_CMDLINE_LINUX=`, then `grub2-mkconfig -o /boot/grub2/grub.cfg`;
//!   SUSE keeps its arguments in `GRUB_CMDLINE_LINUX_DEFAULT=`. With
//!   `GRUB_ENABLE_BLSCFG=true` (RHEL 8+, Fedora) each kernel's arguments sit
//!   in its own Boot Loader Spec entry, which grub2-mkconfig does not always
//!   rewrite, so `grubby --update-kernel=ALL --args=…` runs too;
//! * RHEL 6 and SLES 11: the `kernel` lines of `/boot/grub/menu.lst`, read by
//!   grub legacy directly (nothing to regenerate);
//! * FreeBSD: no Linux command line; `/boot/loader.conf` gets `comconsole`
//!   in its `console=` list and a 115200 baud rate, the values FreeBSD's own
//!   Azure images are built with (`release/tools/azure.conf`).
//!
//! The text edits are pure functions; [`enable_serial_console`] and
//! [`add_kernel_args`] apply them. Every edit is idempotent (an argument
//! already there, even with options such as `console=ttyS0,115200`, is not
//! added again), keeps the rest of the line and its quoting, and the file is
//! replaced atomically with its mode and owner kept.

use std::fs;
use std::path::{Path, PathBuf};

use crate::os::{BootLoader, Cmd, Env, OsError, OsUtil};

/// What `-serialconsole` adds to the Linux kernel command line.
pub const SERIAL_CONSOLE_ARGS: [&str; 2] = ["console=ttyS0", "earlyprintk=ttyS0"];

/// `/boot/loader.conf` settings for the serial console on FreeBSD, added
/// when the file does not set them already (an administrator's value wins);
/// the `console=` list separately gets `comconsole` first.
pub const LOADER_CONF_SETTINGS: [(&str, &str); 3] = [
    ("comconsole_speed", "115200"),
    ("boot_multicons", "YES"),
    ("boot_serial", "YES"),
];

/// `console=` for a loader.conf that has none (FreeBSD's Azure images).
pub const LOADER_CONF_CONSOLE: &str = "comconsole efi vidconsole";

/// The file that holds the kernel command line, and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootConfig {
    /// `/etc/default/grub`: the arguments are in the shell variable `var`.
    GrubDefault {
        path: PathBuf,
        var: &'static str,
        /// `update-grub` or `grub2-mkconfig`, run after a change.
        regenerate: Cmd,
        /// Boot Loader Spec entries (`GRUB_ENABLE_BLSCFG=true`): `grubby`
        /// must update each kernel's entry as well.
        bls: bool,
    },
    /// Grub legacy's `menu.lst`: every `kernel` line carries the arguments.
    MenuLst { path: PathBuf },
    /// FreeBSD's `/boot/loader.conf`.
    LoaderConf { path: PathBuf },
}

impl BootConfig {
    pub fn path(&self) -> &Path {
        match self {
            BootConfig::GrubDefault { path, .. }
            | BootConfig::MenuLst { path }
            | BootConfig::LoaderConf { path } => path,
        }
    }
}

/// What an apply function did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The file edited (after following symbolic links).
    pub file: PathBuf,
    /// False when everything was there already (nothing written, nothing run).
    pub changed: bool,
    /// Commands run after the edit (grub regeneration), in order.
    pub commands: Vec<Cmd>,
}

/// Finds the boot loader configuration of this system (under the root):
/// what the distro uses ([`OsUtil::boot_loader`]), then which file is there.
pub fn boot_config(os: &dyn OsUtil) -> Result<BootConfig, OsError> {
    let env = os.env();
    let default_grub = env.path("/etc/default/grub");
    let menu_lst = env.path("/boot/grub/menu.lst");
    match os.boot_loader() {
        BootLoader::LoaderConf => {
            return Ok(BootConfig::LoaderConf {
                path: env.path("/boot/loader.conf"),
            })
        }
        BootLoader::Unsupported(why) => return Err(OsError::Invalid(why.into())),
        BootLoader::Grub { var, regenerate } if default_grub.is_file() => {
            let text = fs::read_to_string(&default_grub).map_err(OsError::io(&default_grub))?;
            let bls = shell_var(&text, "GRUB_ENABLE_BLSCFG").is_some_and(|v| v.trim() == "true");
            return Ok(BootConfig::GrubDefault {
                path: default_grub,
                var,
                regenerate,
                bls,
            });
        }
        BootLoader::Grub { .. } | BootLoader::GrubLegacy => {}
    }
    if menu_lst.exists() {
        return Ok(BootConfig::MenuLst { path: menu_lst });
    }
    Err(OsError::Invalid(format!(
        "no boot loader configuration found ({} or {})",
        default_grub.display(),
        menu_lst.display()
    )))
}

/// `-serialconsole`: sends the kernel's console (and the loader's, on
/// FreeBSD) to the first serial port from the next boot on.
pub fn enable_serial_console(os: &dyn OsUtil) -> Result<Applied, OsError> {
    let env = os.env();
    match boot_config(os)? {
        BootConfig::LoaderConf { path } => {
            let path = resolve_symlinks(env, &path);
            let old = read_optional(&path)?.unwrap_or_default();
            let new = loader_conf_serial_console(&old);
            let changed = new != old;
            if changed {
                crate::os::write_file(&path, &new, 0o644)?;
            }
            Ok(Applied {
                file: path,
                changed,
                commands: Vec::new(),
            })
        }
        config => apply_kernel_args(env, config, &SERIAL_CONSOLE_ARGS),
    }
}

/// Adds `args` to the Linux kernel command line for the next boot.
pub fn add_kernel_args(os: &dyn OsUtil, args: &[&str]) -> Result<Applied, OsError> {
    match boot_config(os)? {
        BootConfig::LoaderConf { .. } => Err(OsError::Invalid(format!(
            "{} has no Linux kernel command line for {}",
            os.kernel_name(),
            args.join(" ")
        ))),
        config => apply_kernel_args(os.env(), config, args),
    }
}

fn apply_kernel_args(env: &Env, config: BootConfig, args: &[&str]) -> Result<Applied, OsError> {
    let path = resolve_symlinks(env, config.path());
    let old = fs::read_to_string(&path).map_err(OsError::io(&path))?;
    let new = match &config {
        BootConfig::GrubDefault { var, .. } => grub_default_add_args(&old, var, args),
        BootConfig::MenuLst { .. } => menu_lst_add_args(&old, args),
        BootConfig::LoaderConf { .. } => old.clone(),
    };
    let mut applied = Applied {
        file: path.clone(),
        changed: new != old,
        commands: Vec::new(),
    };
    if !applied.changed {
        return Ok(applied);
    }
    crate::os::write_file(&path, &new, 0o644)?;
    if let BootConfig::GrubDefault {
        regenerate, bls, ..
    } = config
    {
        let mut cmds = vec![regenerate];
        if bls {
            cmds.push(Cmd::new("grubby").args([
                "--update-kernel=ALL".to_string(),
                format!("--args={}", args.join(" ")),
            ]));
        }
        for cmd in cmds {
            applied.commands.push(cmd.clone());
            env.run_ok(cmd).map_err(|e| {
                OsError::Invalid(format!(
                    "{} was updated but the boot configuration was not regenerated: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(applied)
}

// ----- pure text edits -----

/// True when `arg` is among the whitespace-separated `words`, also in a
/// longer form with options (`console=ttyS0,115200n8` has `console=ttyS0`).
pub fn has_arg(words: &str, arg: &str) -> bool {
    words.split_whitespace().any(|w| {
        w == arg
            || w.strip_prefix(arg)
                .is_some_and(|rest| rest.starts_with(','))
    })
}

/// The words of `args` that `words` lacks, in order, each once.
fn missing<'a>(words: &str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for a in args {
        if !has_arg(words, a) && !v.contains(a) {
            v.push(a);
        }
    }
    v
}

/// Appends `extra` to a command-line string, one space apart.
fn append_words(words: &str, extra: &[&str]) -> String {
    let mut s = words.trim_end().to_string();
    for e in extra {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(e);
    }
    s
}

/// One `VAR=value` assignment found in a shell-syntax file.
struct Assignment {
    line: usize,
    /// Byte range of the value's content (inside any quotes) in the line.
    start: usize,
    end: usize,
    /// The quote character around the value, if any.
    quote: Option<char>,
}

/// The last assignment of `var` in `text` (the one the shell keeps).
/// Commented-out lines are not assignments; `export VAR=` is.
fn find_assignment(text: &str, var: &str) -> Option<Assignment> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let lead = line.len() - line.trim_start().len();
        let mut rest = &line[lead..];
        let mut offset = lead;
        if let Some(r) = rest.strip_prefix("export ") {
            let skip = r.len() - r.trim_start().len();
            offset += "export ".len() + skip;
            rest = &r[skip..];
        }
        let Some(value) = rest.strip_prefix(var).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        let vstart = offset + var.len() + 1;
        let a = match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let body = &value[1..];
                // The closing quote: the next unescaped one (no escapes in '…').
                let mut close = None;
                let mut escaped = false;
                for (j, c) in body.char_indices() {
                    if q == '"' && !escaped && c == '\\' {
                        escaped = true;
                        continue;
                    }
                    if c == q && !escaped {
                        close = Some(j);
                        break;
                    }
                    escaped = false;
                }
                // A quote left open continues on the next line; such an
                // assignment is not edited (nor is an earlier one).
                let close = close?;
                Assignment {
                    line: i,
                    start: vstart + 1,
                    end: vstart + 1 + close,
                    quote: Some(q),
                }
            }
            _ => {
                let len = value
                    .find(|c: char| c.is_whitespace() || c == '#' || c == ';')
                    .unwrap_or(value.len());
                Assignment {
                    line: i,
                    start: vstart,
                    end: vstart + len,
                    quote: None,
                }
            }
        };
        found = Some(a);
    }
    found
}

/// The value of the last assignment of `var` (quotes removed).
pub fn shell_var(text: &str, var: &str) -> Option<String> {
    let a = find_assignment(text, var)?;
    text.lines()
        .nth(a.line)
        .map(|l| l[a.start..a.end].to_string())
}

/// Adds `args` to `var`'s value in a `/etc/default/grub`-style file. The
/// other arguments, the quoting and anything after the value (a comment)
/// stay as they were; a missing variable is appended as `VAR="args"`.
pub fn grub_default_add_args(text: &str, var: &str, args: &[&str]) -> String {
    let Some(a) = find_assignment(text, var) else {
        return append_line(text, &format!("{var}=\"{}\"", append_words("", args)));
    };
    map_line(text, a.line, |line| {
        let value = &line[a.start..a.end];
        let add = missing(value, args);
        if add.is_empty() {
            return line.to_string();
        }
        let new_value = append_words(value, &add);
        match a.quote {
            // Inside quotes our arguments (no quotes, no `$`) are literal.
            Some(_) => format!("{}{new_value}{}", &line[..a.start], &line[a.end..]),
            // An unquoted value becomes double-quoted once it has spaces.
            None => format!("{}\"{new_value}\"{}", &line[..a.start], &line[a.end..]),
        }
    })
}

/// Adds `args` to every `kernel` line of grub legacy's `menu.lst`
/// (`kernel /vmlinuz-… ro root=…`); other lines are left alone.
pub fn menu_lst_add_args(text: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for piece in text.split_inclusive('\n') {
        let (line, eol) = match piece.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (piece, ""),
        };
        let trimmed = line.trim_start();
        let is_kernel = trimmed
            .strip_prefix("kernel")
            .is_some_and(|r| r.starts_with([' ', '\t', '=']));
        if is_kernel {
            out.push_str(&append_words(line, &missing(trimmed, args)));
        } else {
            out.push_str(line);
        }
        out.push_str(eol);
    }
    out
}

/// FreeBSD `/boot/loader.conf`: `comconsole` first in `console=` (kept
/// with whatever else is listed), the speed and dual-console switches added
/// unless the file sets them already.
pub fn loader_conf_serial_console(text: &str) -> String {
    let mut out = match find_assignment(text, "console") {
        Some(a) => map_line(text, a.line, |line| {
            let value = line[a.start..a.end].trim();
            if value.split([' ', ',']).any(|c| c == "comconsole") {
                return line.to_string();
            }
            // loader(8) takes space- or comma-separated lists; keep the style.
            let new_value = match (value.is_empty(), value.contains(',')) {
                (true, _) => "comconsole".to_string(),
                (false, true) => format!("comconsole,{value}"),
                (false, false) => format!("comconsole {value}"),
            };
            let q = usize::from(a.quote.is_some());
            format!(
                "{}\"{new_value}\"{}",
                &line[..a.start - q],
                &line[a.end + q..]
            )
        }),
        None => append_line(text, &format!("console=\"{LOADER_CONF_CONSOLE}\"")),
    };
    for (key, value) in LOADER_CONF_SETTINGS {
        if find_assignment(&out, key).is_none() {
            out = append_line(&out, &format!("{key}=\"{value}\""));
        }
    }
    out
}

fn append_line(text: &str, line: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// `text` with line `n` replaced by `f(line)`; line endings kept.
fn map_line(text: &str, n: usize, f: impl FnOnce(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut f = Some(f);
    for (i, piece) in text.split_inclusive('\n').enumerate() {
        let (line, eol) = match piece.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (piece, ""),
        };
        match f.take_if(|_| i == n) {
            Some(f) => out.push_str(&f(line)),
            None => out.push_str(line),
        }
        out.push_str(eol);
    }
    out
}

// ----- files -----

/// Follows symbolic links from `path`, keeping absolute targets under the
/// root. It matters: on RHEL 6 `/boot/grub/menu.lst` is a link to
/// `grub.conf`, and renaming a new file over the link would leave grub
/// reading the old `grub.conf`.
pub fn resolve_symlinks(env: &Env, path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let Ok(target) = fs::read_link(&p) else {
            return p;
        };
        p = if target.is_absolute() {
            env.path(&target.to_string_lossy())
        } else {
            p.parent().map_or(target.clone(), |d| d.join(&target))
        };
    }
    p
}

fn read_optional(path: &Path) -> Result<Option<String>, OsError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OsError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::testing;
    use crate::os::{grub2_mkconfig, Flavour};
    use crate::os::{Output, RecordingRunner};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    use std::rc::Rc;

    const ARGS: [&str; 2] = SERIAL_CONSOLE_ARGS;

    #[test]
    fn grub_default_appends_inside_double_quotes_and_keeps_the_rest() {
        let text = "GRUB_TIMEOUT=5\n\
                    GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\" # from the installer\n\
                    GRUB_CMDLINE_LINUX=\"\"\n";
        let out = grub_default_add_args(text, "GRUB_CMDLINE_LINUX_DEFAULT", &ARGS);
        assert_eq!(
            out,
            "GRUB_TIMEOUT=5\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash console=ttyS0 earlyprintk=ttyS0\" # from the installer\n\
             GRUB_CMDLINE_LINUX=\"\"\n"
        );
        assert_eq!(
            grub_default_add_args(&out, "GRUB_CMDLINE_LINUX_DEFAULT", &ARGS),
            out
        );
    }

    #[test]
    fn grub_default_single_quotes_unquoted_empty_and_missing() {
        let add = |t: &str| grub_default_add_args(t, "GRUB_CMDLINE_LINUX", &ARGS);
        assert_eq!(
            add("GRUB_CMDLINE_LINUX='rhgb quiet'\n"),
            "GRUB_CMDLINE_LINUX='rhgb quiet console=ttyS0 earlyprintk=ttyS0'\n"
        );
        assert_eq!(
            add("GRUB_CMDLINE_LINUX=quiet\n"),
            "GRUB_CMDLINE_LINUX=\"quiet console=ttyS0 earlyprintk=ttyS0\"\n"
        );
        assert_eq!(
            add("  export GRUB_CMDLINE_LINUX=\"\"\n"),
            "  export GRUB_CMDLINE_LINUX=\"console=ttyS0 earlyprintk=ttyS0\"\n"
        );
        assert_eq!(
            add("GRUB_TIMEOUT=1"),
            "GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX=\"console=ttyS0 earlyprintk=ttyS0\"\n"
        );
    }

    #[test]
    fn grub_default_edits_the_last_live_assignment_only() {
        let text = "#GRUB_CMDLINE_LINUX=\"old\"\n\
                    GRUB_CMDLINE_LINUX=\"a\"\n\
                    GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX crashkernel=auto\"\n";
        assert_eq!(
            grub_default_add_args(text, "GRUB_CMDLINE_LINUX", &["numa=off"]),
            "#GRUB_CMDLINE_LINUX=\"old\"\n\
             GRUB_CMDLINE_LINUX=\"a\"\n\
             GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX crashkernel=auto numa=off\"\n"
        );
        // A longer variable name is not the variable.
        assert_eq!(
            grub_default_add_args(
                "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n",
                "GRUB_CMDLINE_LINUX",
                &["numa=off"]
            ),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"numa=off\"\n"
        );
        // An escaped quote does not end the value.
        assert_eq!(
            grub_default_add_args("V=\"a=\\\"b c\\\"\"\n", "V", &["x"]),
            "V=\"a=\\\"b c\\\" x\"\n"
        );
    }

    #[test]
    fn an_argument_with_options_counts_as_present() {
        let text = "GRUB_CMDLINE_LINUX=\"console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0\"\n";
        assert_eq!(
            grub_default_add_args(text, "GRUB_CMDLINE_LINUX", &ARGS),
            text
        );
        assert!(!has_arg("console=ttyS01", "console=ttyS0"));
        assert!(!has_arg("xconsole=ttyS0", "console=ttyS0"));
        assert_eq!(
            grub_default_add_args(
                "GRUB_CMDLINE_LINUX=\"console=ttyS0\"\n",
                "GRUB_CMDLINE_LINUX",
                &ARGS
            ),
            "GRUB_CMDLINE_LINUX=\"console=ttyS0 earlyprintk=ttyS0\"\n"
        );
    }

    #[test]
    fn menu_lst_kernel_lines_only() {
        let text = "default=0\ntimeout=5\ntitle CentOS (2.6.32)\n\troot (hd0,0)\n\
                    \tkernel /vmlinuz-2.6.32 ro root=/dev/sda1 rhgb quiet\n\
                    \tinitrd /initramfs-2.6.32.img\n\
                    # kernel /old ro\n\
                    title Other\n\tkernel=/vmlinuz-x ro console=ttyS0";
        let out = menu_lst_add_args(text, &ARGS);
        assert_eq!(
            out,
            "default=0\ntimeout=5\ntitle CentOS (2.6.32)\n\troot (hd0,0)\n\
             \tkernel /vmlinuz-2.6.32 ro root=/dev/sda1 rhgb quiet console=ttyS0 earlyprintk=ttyS0\n\
             \tinitrd /initramfs-2.6.32.img\n\
             # kernel /old ro\n\
             title Other\n\tkernel=/vmlinuz-x ro console=ttyS0 earlyprintk=ttyS0"
        );
        assert_eq!(menu_lst_add_args(&out, &ARGS), out);
        assert_eq!(menu_lst_add_args("kernelopts=x\n", &ARGS), "kernelopts=x\n");
    }

    #[test]
    fn loader_conf_adds_comconsole_and_keeps_other_consoles() {
        let out = loader_conf_serial_console("");
        assert_eq!(
            out,
            "console=\"comconsole efi vidconsole\"\ncomconsole_speed=\"115200\"\n\
             boot_multicons=\"YES\"\nboot_serial=\"YES\"\n"
        );
        assert_eq!(loader_conf_serial_console(&out), out);

        let text = "kern.hz=100\nconsole=\"vidconsole\"\ncomconsole_speed=\"9600\"\n";
        let out = loader_conf_serial_console(text);
        assert_eq!(
            out,
            "kern.hz=100\nconsole=\"comconsole vidconsole\"\ncomconsole_speed=\"9600\"\n\
             boot_multicons=\"YES\"\nboot_serial=\"YES\"\n"
        );
        assert_eq!(loader_conf_serial_console(&out), out);

        let out = loader_conf_serial_console("console=efi,vidconsole # local\n");
        assert!(
            out.starts_with("console=\"comconsole,efi,vidconsole\" # local\n"),
            "{out}"
        );
    }

    struct Fixture {
        root: tempfile::TempDir,
        runner: Rc<RecordingRunner>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                root: tempfile::tempdir().unwrap(),
                runner: Rc::new(RecordingRunner::new()),
            }
        }

        fn write(&self, abs: &str, text: &str, mode: u32) {
            testing::write(self.root.path(), abs, text);
            let p = self.root.path().join(abs.trim_start_matches('/'));
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }

        fn read(&self, abs: &str) -> String {
            testing::read(self.root.path(), abs)
        }

        fn os(&self, flavour: Flavour, version: &str) -> Box<dyn OsUtil> {
            let mut env = testing::env(self.root.path(), flavour, self.runner.clone());
            env.distro.version = version.into();
            crate::os::for_env(env)
        }
    }

    #[test]
    fn ubuntu_edits_cmdline_default_and_runs_update_grub_once() {
        let f = Fixture::new();
        f.write(
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"\"\n",
            0o644,
        );
        let os = f.os(Flavour::Ubuntu, "22.04");
        let a = enable_serial_console(&*os).unwrap();
        assert!(a.changed);
        assert_eq!(
            f.read("/etc/default/grub"),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash console=ttyS0 earlyprintk=ttyS0\"\n\
             GRUB_CMDLINE_LINUX=\"\"\n"
        );
        assert_eq!(f.runner.lines(), vec!["update-grub"]);
        let again = enable_serial_console(&*os).unwrap();
        assert!(!again.changed && again.commands.is_empty());
        assert_eq!(f.runner.lines().len(), 1);
    }

    #[test]
    fn rhel7_edits_cmdline_linux_keeps_mode_and_regenerates() {
        let f = Fixture::new();
        f.write(
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\n",
            0o600,
        );
        let a = enable_serial_console(&*f.os(Flavour::RedHat, "7.9")).unwrap();
        assert_eq!(a.commands, vec![grub2_mkconfig()]);
        assert_eq!(
            f.read("/etc/default/grub"),
            "GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet console=ttyS0 earlyprintk=ttyS0\"\n"
        );
        let md = fs::metadata(f.root.path().join("etc/default/grub")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(
            f.runner.lines(),
            vec!["grub2-mkconfig -o /boot/grub2/grub.cfg"]
        );
    }

    #[test]
    fn bls_systems_also_update_each_entry_with_grubby() {
        let f = Fixture::new();
        f.write(
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX=\"rhgb\"\nGRUB_ENABLE_BLSCFG=true\n",
            0o644,
        );
        enable_serial_console(&*f.os(Flavour::RedHat, "9.2")).unwrap();
        assert_eq!(
            f.runner.lines(),
            vec![
                "grub2-mkconfig -o /boot/grub2/grub.cfg",
                "grubby --update-kernel=ALL '--args=console=ttyS0 earlyprintk=ttyS0'"
            ]
        );
    }

    #[test]
    fn suse12_uses_cmdline_default_and_grub2_mkconfig() {
        let f = Fixture::new();
        f.write(
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX=\"\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"splash=silent quiet\"\n",
            0o644,
        );
        enable_serial_console(&*f.os(Flavour::Suse, "15.5")).unwrap();
        assert!(f.read("/etc/default/grub").ends_with(
            "GRUB_CMDLINE_LINUX_DEFAULT=\"splash=silent quiet console=ttyS0 earlyprintk=ttyS0\"\n"
        ));
        assert_eq!(
            f.runner.lines(),
            vec!["grub2-mkconfig -o /boot/grub2/grub.cfg"]
        );
    }

    #[test]
    fn regeneration_failure_says_the_file_changed() {
        let f = Fixture::new();
        f.write(
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n",
            0o644,
        );
        f.runner
            .push("update-grub", Output::failed(1, "no /boot/grub"));
        let err = enable_serial_console(&*f.os(Flavour::Debian, "12"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was updated but the boot configuration was not regenerated"),
            "{err}"
        );
    }

    #[test]
    fn rhel6_follows_the_menu_lst_link_to_grub_conf() {
        let f = Fixture::new();
        f.write(
            "/boot/grub/grub.conf",
            "title x\n\tkernel /vmlinuz ro quiet\n",
            0o600,
        );
        std::os::unix::fs::symlink("./grub.conf", f.root.path().join("boot/grub/menu.lst"))
            .unwrap();
        // A stray /etc/default/grub does not fool RHEL 6.
        f.write("/etc/default/grub", "GRUB_CMDLINE_LINUX=\"\"\n", 0o644);
        let a = enable_serial_console(&*f.os(Flavour::RedHat, "6.10")).unwrap();
        assert!(a.changed && a.commands.is_empty());
        let link = fs::symlink_metadata(f.root.path().join("boot/grub/menu.lst")).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(
            f.read("/boot/grub/grub.conf"),
            "title x\n\tkernel /vmlinuz ro quiet console=ttyS0 earlyprintk=ttyS0\n"
        );
        let md = fs::metadata(f.root.path().join("boot/grub/grub.conf")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(f.read("/etc/default/grub"), "GRUB_CMDLINE_LINUX=\"\"\n");
        assert!(f.runner.lines().is_empty());
    }

    #[test]
    fn sles11_uses_menu_lst() {
        let f = Fixture::new();
        f.write(
            "/boot/grub/menu.lst",
            "    kernel /boot/vmlinuz root=/dev/sda2 splash=silent\n",
            0o644,
        );
        assert!(
            enable_serial_console(&*f.os(Flavour::Suse, "11.4"))
                .unwrap()
                .changed
        );
        assert_eq!(
            f.read("/boot/grub/menu.lst"),
            "    kernel /boot/vmlinuz root=/dev/sda2 splash=silent console=ttyS0 earlyprintk=ttyS0\n"
        );
    }

    #[test]
    fn freebsd_edits_loader_conf_and_runs_nothing() {
        let f = Fixture::new();
        f.write("/boot/loader.conf", "autoboot_delay=\"-1\"\n", 0o644);
        let os = f.os(Flavour::FreeBsd, "14.1");
        let a = enable_serial_console(&*os).unwrap();
        assert!(a.changed && a.commands.is_empty());
        assert!(f
            .read("/boot/loader.conf")
            .starts_with("autoboot_delay=\"-1\"\nconsole=\"comconsole efi vidconsole\"\n"));
        assert!(!enable_serial_console(&*os).unwrap().changed);
        assert!(add_kernel_args(&*os, &["numa=off"]).is_err());
        assert!(f.runner.lines().is_empty());
    }

    #[test]
    fn no_boot_configuration_and_coreos_are_errors() {
        let f = Fixture::new();
        assert!(enable_serial_console(&*f.os(Flavour::Default, "")).is_err());
        f.write("/etc/default/grub", "", 0o644);
        assert!(enable_serial_console(&*f.os(Flavour::CoreOs, "")).is_err());
        assert!(f.runner.lines().is_empty());
    }
}
