//! Fixtures for the unit tests of `wire::crypto`: the certificates and keys
//! of `test-data/certs`, and a Lib.Dir whose openssl a recorder answers.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::pem::first_certificate;
use super::{Openssl, TransportCert, TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE};
use crate::os::runner::{Cmd, RecordingRunner};

pub const TRANSPORT_CERT: &str = include_str!("../../../test-data/certs/TransportCert.pem");
pub const TRANSPORT_KEY: &str = include_str!("../../../test-data/certs/TransportPrivate.pem");
pub const TENANT_CERT: &str = include_str!("../../../test-data/certs/tenant.crt");
pub const TENANT_KEY: &str = include_str!("../../../test-data/certs/tenant.key");
pub const TENANT_SSH: &str = include_str!("../../../test-data/certs/tenant.ssh.pub");
pub const EXTRA_CERT: &str = include_str!("../../../test-data/certs/extra.crt");
pub const EC_CERT: &str = include_str!("../../../test-data/certs/ec.crt");
pub const EC_KEY: &str = include_str!("../../../test-data/certs/ec.key");
pub const TENANT: &str = "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC69";
pub const EXTRA: &str = "F88526F7384E4488FDCB8C090F8F3CB8C15A5435";
pub const EC: &str = "444CD352546B2FBAAC63341802F2A590C83C8DDE";

pub fn der_of(pem_text: &str) -> Vec<u8> {
    first_certificate(pem_text).unwrap()
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// The value after `flag` in a recorded command.
pub fn arg_after(cmd: &Cmd, flag: &str) -> Option<PathBuf> {
    let argv = cmd.argv();
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1).map(PathBuf::from)
}

/// A lib dir with the fixture transport pair and a handle whose openssl
/// is a [`RecordingRunner`].
pub fn setup() -> (
    tempfile::TempDir,
    Rc<RecordingRunner>,
    Openssl,
    TransportCert,
) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(TRANSPORT_CERT_FILE), TRANSPORT_CERT).unwrap();
    fs::write(dir.path().join(TRANSPORT_KEY_FILE), TRANSPORT_KEY).unwrap();
    let runner = Rc::new(RecordingRunner::new());
    let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
    let transport = TransportCert::load(&openssl, dir.path()).unwrap();
    (dir, runner, openssl, transport)
}
