//! Helpers shared by the integration tests: run the real binary with a
//! configuration whose every path lies under a temporary directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A temporary root with a waagent.conf pointing every path inside it,
    /// plus `extra` lines.
    pub fn new(extra: &str) -> Sandbox {
        let dir = tempfile::tempdir().expect("temporary directory");
        let s = Sandbox { dir };
        for d in ["lib", "log", "run"] {
            std::fs::create_dir_all(s.path(d)).expect("create sandbox dirs");
        }
        let conf = format!(
            "Lib.Dir={lib}\nLogs.File={log}\nPid.File={pid}\nLogs.Console=n\n\
             Extension.LogDir={extlog}\nOS.SudoersDir={root}/sudoers.d\n{extra}",
            lib = s.path("lib").display(),
            log = s.log_path().display(),
            pid = s.pid_path().display(),
            extlog = s.path("log/azure").display(),
            root = s.dir.path().display(),
        );
        std::fs::write(s.conf_path(), conf).expect("write waagent.conf");
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn conf_path(&self) -> PathBuf {
        self.path("waagent.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("log/waagent.log")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.path("run/waagent.pid")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `waagent -configuration-path:<conf> args…`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![format!(
            "-configuration-path:{}",
            self.conf_path().display()
        )];
        all.extend(args.iter().map(|s| s.to_string()));
        waagent(&all)
    }
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_waagent"))
}

/// The program that runs this crate's binaries when they are built for
/// another CPU: `WAAGENT_RS_RUNNER`, a command line split on spaces
/// (`make cross` sets it to qemu-user's, which cannot itself start a
/// program of the emulated CPU the way the kernel would).
pub fn runner() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("WAAGENT_RS_RUNNER")
        .ok()?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// A command that runs `program`, one of this crate's binaries: directly,
/// or through [`runner`].
pub fn own_command(program: &Path) -> Command {
    match runner() {
        Some(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// True (after saying why) when `test` cannot run under the [`runner`]:
/// it needs the binary to start itself again (`-start` re-executes
/// `/proc/self/exe`, which qemu-user cannot do for an emulated program).
pub fn skip_under_runner(suite: &str, test: &str) -> bool {
    let Some(words) = runner() else {
        return false;
    };
    let why = format!(
        "the binary runs under {} (WAAGENT_RS_RUNNER), which cannot start it again",
        words[0]
    );
    waagent::sim::skips::note(suite, test, &why);
    true
}

pub fn waagent<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    own_command(bin())
        .args(args)
        .output()
        .expect("run the waagent binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
