//! Test fixtures for code above the OS layer: an [`Env`] over a temporary
//! root whose commands a [`RecordingRunner`] answers, and files written and
//! read at their absolute paths under that root.

use std::fs;
use std::path::Path;
use std::rc::Rc;

use super::{Distro, Env, Flavour, RecordingRunner};
use crate::config::Config;

/// `root` as `/`, a `flavour` distro (its name as id, no version), the
/// default configuration; adjust `config` or `distro` on the result.
pub fn env(root: &Path, flavour: Flavour, runner: Rc<RecordingRunner>) -> Env {
    Env {
        root: root.to_path_buf(),
        runner,
        config: Config::default(),
        distro: Distro {
            id: flavour.name().into(),
            version: String::new(),
            flavour,
        },
    }
}

/// Writes `data` at `abs` (`/etc/...`) under `root`, making the parents.
pub fn write(root: &Path, abs: &str, data: impl AsRef<[u8]>) {
    let p = root.join(abs.trim_start_matches('/'));
    fs::create_dir_all(p.parent().expect("an absolute path has a parent")).unwrap();
    fs::write(p, data).unwrap();
}

/// The text at `abs` under `root`.
pub fn read(root: &Path, abs: &str) -> String {
    fs::read_to_string(root.join(abs.trim_start_matches('/'))).unwrap()
}
