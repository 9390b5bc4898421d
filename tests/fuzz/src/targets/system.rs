//! The system's own tables and tool output, read through the OS layer as
//! the agent reads them: every file and every command's output is the
//! fuzz input. Not hostile input like the fabric's, but a panic here would
//! stop the agent all the same.
//!
//! The Linux files live under a scratch root (`WAAGENT_FUZZ_SCRATCH`, else
//! a directory in the system's temporary directory), rewritten per input.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use waagent::config::Config;
use waagent::env::network::proc_route_default_gateway;
use waagent::os::{for_env, from_os_release, Distro, Env, Flavour, Output, RecordingRunner};

use super::lossy;

/// Files the Linux flavour reads; each gets the whole input.
const FILES: &[&str] = &[
    "etc/passwd",
    "etc/login.defs",
    "proc/mounts",
    "proc/swaps",
    "sys/class/block/sdb/size",
];

pub fn system_tables(data: &[u8]) {
    let text = lossy(data);
    if let Some(gw) = proc_route_default_gateway(&text) {
        assert!(!gw.is_unspecified(), "0.0.0.0 as a gateway");
    }
    let _ = from_os_release(&text);
    linux(&text);
    freebsd(&text);
}

fn linux(text: &str) {
    let root = scratch();
    for f in FILES {
        std::fs::write(root.join(f), text).expect("scratch root is writable");
    }
    let os = for_env(env(&root, Flavour::Default, text));
    let first = text.split(':').next().unwrap_or_default();
    for name in [first, "root"] {
        if let Ok(Some(user)) = os.user(name) {
            assert_eq!(user.name, name);
        }
    }
    // login.defs: an inverted UID_MIN/UID_MAX makes every account a
    // system one, which is the safe side.
    if os.normal_uids().is_empty() && matches!(os.user(first), Ok(Some(_))) {
        assert!(os.is_system_user(first).unwrap_or(true));
    }
    let _ = os.mounts().expect("/proc/mounts is there");
    let _ = os.active_swap_files().expect("/proc/swaps is there");
    let _ = os.probe(Path::new("/dev/sdb"));
    if let Some(bytes) = os.disk_size(Path::new("/dev/sdb")) {
        assert_eq!(bytes % 512, 0);
    }
}

/// Every command (sysctl, camcontrol, mount -p, fstyp, gpart, diskinfo,
/// swapctl, mdconfig) prints the input.
fn freebsd(text: &str) {
    let os = for_env(env(&scratch(), Flavour::FreeBsd, text));
    if let Ok(disk) = os.resource_disk() {
        let name = disk
            .strip_prefix("/dev")
            .expect("a device")
            .to_string_lossy();
        let unit = name.strip_prefix("da").expect("a da(4) disk");
        assert!(
            !unit.is_empty() && unit.bytes().all(|b| b.is_ascii_digit()),
            "{disk:?}"
        );
    }
    let _ = os.mounts();
    let _ = os.probe(Path::new("/dev/da1"));
    let _ = os.disk_size(Path::new("/dev/da1"));
    let _ = os.first_partition(Path::new("/dev/da1"));
    let _ = os.active_swap_files();
}

fn env(root: &Path, flavour: Flavour, output: &str) -> Env {
    let runner = RecordingRunner::new();
    let answer = output.to_string();
    runner.respond(move |_| Some(Ok(Output::ok(&answer))));
    Env {
        root: root.to_path_buf(),
        runner: Rc::new(runner),
        config: Config::default(),
        distro: Distro {
            id: "fuzz".into(),
            version: "1".into(),
            flavour,
        },
    }
}

thread_local! {
    static ROOT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// The scratch root, made once per thread (tests run side by side).
fn scratch() -> PathBuf {
    ROOT.with(|r| {
        r.borrow_mut()
            .get_or_insert_with(|| {
                let root = match std::env::var_os("WAAGENT_FUZZ_SCRATCH") {
                    Some(dir) => PathBuf::from(dir),
                    None => std::env::temp_dir().join(format!(
                        "waagent-fuzz-{}-{:?}",
                        std::process::id(),
                        std::thread::current().id()
                    )),
                };
                for f in FILES.iter().chain(&["dev/sdb"]) {
                    let path = root.join(f);
                    std::fs::create_dir_all(path.parent().expect("a parent"))
                        .expect("scratch root");
                    std::fs::write(&path, "").expect("scratch root");
                }
                root
            })
            .clone()
    })
}

/// Removes this thread's scratch root, if it made one.
pub fn remove_scratch() {
    if let Some(root) = ROOT.with(|r| r.borrow_mut().take()) {
        let _ = std::fs::remove_dir_all(root);
    }
}
