//! Fixtures shared by the RDMA tests: the instance's endpoint, a `dat.conf`,
//! KVP pool bytes, and [`Fx`], a scratch root with a recording runner that
//! stands in for the system.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::rc::Rc;

use super::{RdmaAddress, KVP_KEY_SIZE, KVP_POOL_PATH, KVP_VALUE_SIZE};
use crate::config::Config;
use crate::os::{for_env, testing, Flavour, OsUtil, Output, RecordingRunner};

/// The instance's RDMA endpoint, as SharedConfig gives it.
pub(super) const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x33, 0xff, 0x1d];
pub(super) const IP: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 4);
pub(super) const ADDRESS: RdmaAddress = RdmaAddress { ipv4: IP, mac: MAC };

/// A DAPL configuration with the `ofa-v2-ib0` provider waagent rewrites.
pub(super) const DAT_CONF: &str = "\
# DAT v2.0, v1.2 configuration file
ofa-v2-mlx4_0-1 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"mlx4_0 1\" \"\"
ofa-v2-ib0 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"ib0 0\" \"\"
ofa-v2-ib1 u2.0 nonthreadsafe default libdaplofa.so.2 dapl.2.0 \"ib1 0\" \"\"
";

/// A KVP pool file as hv_kvp_daemon writes it: fixed-size records,
/// key and value NUL-padded.
pub(super) fn kvp_pool(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        assert!(k.len() < KVP_KEY_SIZE && v.len() < KVP_VALUE_SIZE);
        let mut key = k.as_bytes().to_vec();
        key.resize(KVP_KEY_SIZE, 0);
        let mut value = v.as_bytes().to_vec();
        value.resize(KVP_VALUE_SIZE, 0);
        out.extend(key);
        out.extend(value);
    }
    out
}

/// A scratch directory standing in for `/`, and a runner that records the
/// commands and answers them.
pub(super) struct Fx {
    root: tempfile::TempDir,
    pub(super) runner: Rc<RecordingRunner>,
}

pub(super) fn fx() -> Fx {
    Fx {
        root: tempfile::tempdir().unwrap(),
        runner: Rc::new(RecordingRunner::new()),
    }
}

impl Fx {
    pub(super) fn path(&self, abs: &str) -> PathBuf {
        self.root.path().join(abs.trim_start_matches('/'))
    }

    pub(super) fn write(&self, abs: &str, data: impl AsRef<[u8]>) {
        testing::write(self.root.path(), abs, data);
    }

    pub(super) fn read(&self, abs: &str) -> String {
        testing::read(self.root.path(), abs)
    }

    pub(super) fn mode(&self, abs: &str) -> u32 {
        fs::metadata(self.path(abs)).unwrap().permissions().mode() & 0o7777
    }

    pub(super) fn mkdir(&self, abs: &str) {
        fs::create_dir_all(self.path(abs)).unwrap();
    }

    pub(super) fn nic(&self, name: &str, address: &str) {
        self.write(
            &format!("/sys/class/net/{name}/address"),
            format!("{address}\n"),
        );
    }

    pub(super) fn kvp(&self, pairs: &[(&str, &str)]) {
        self.write(KVP_POOL_PATH, kvp_pool(pairs));
    }

    pub(super) fn os(&self, id: &str, version: &str, flavour: Flavour) -> Box<dyn OsUtil> {
        self.os_with(id, version, flavour, Config::default())
    }

    pub(super) fn os_with(
        &self,
        id: &str,
        version: &str,
        flavour: Flavour,
        config: Config,
    ) -> Box<dyn OsUtil> {
        let mut env = testing::env(self.root.path(), flavour, self.runner.clone());
        env.config = config;
        env.distro.id = id.into();
        env.distro.version = version.into();
        for_env(env)
    }

    /// Answers every command whose display starts with `prefix`.
    pub(super) fn answer(&self, prefix: &'static str, out: Output) {
        self.runner.respond(move |c| {
            (c.display() == prefix || c.display().starts_with(&format!("{prefix} ")))
                .then(|| Ok(out.clone()))
        });
    }

    pub(super) fn lines(&self) -> Vec<String> {
        self.runner.lines()
    }

    /// No temporary file of an atomic write was left behind.
    pub(super) fn no_temp_files(&self, dir: &str) {
        let left: Vec<_> = fs::read_dir(self.path(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `ps -ef` with the KVP daemon running.
pub(super) fn kvp_running() -> Output {
    Output::ok("root       812     1  0 10:00 ?        00:00:00 /usr/sbin/hv_kvp_daemon -n\n")
}
