//! Helpers shared by the integration tests: run the real binary with a
//! configuration whose every path lies under a temporary directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

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

pub use waagent::sim::skips::own_command;

/// True (after saying why) when `test` cannot run under the runner
/// (`waagent::sim::skips::runner`, make cross's qemu-user): it needs what
/// only the kernel does (`what`).
pub fn skip_under_runner(suite: &str, test: &str, what: &str) -> bool {
    waagent::sim::skips::skip_under_runner(suite, test, what)
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

/// A zip of `files` (name, text), stored with the crate's default options:
/// a handler package as the simulator serves it.
pub fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default();
    for (name, data) in files {
        w.start_file(*name, o).unwrap();
        w.write_all(data.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}
