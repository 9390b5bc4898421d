//! `make install` / `make uninstall` into a temporary DESTDIR.
//!
//! Checks the Makefile contract: which files land where, with which modes,
//! that placeholders are substituted, that an admin's edited waagent.conf is
//! never overwritten, and that uninstall removes exactly what install put
//! there.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary cargo built for this test run; installed as BIN.
const BIN: &str = env!("CARGO_BIN_EXE_waagent");
const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Relative path under DESTDIR → permission bits.
type Tree = BTreeMap<String, u32>;

fn gnu_make() -> &'static str {
    if cfg!(any(
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd"
    )) {
        "gmake"
    } else {
        "make"
    }
}

/// Runs `make -s <target> DESTDIR=<destdir> <vars>` in the source tree.
///
/// Variables that a surrounding `make` or the caller's environment could
/// set are removed, so only the ones passed here count.
fn run_make(target: &str, destdir: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(gnu_make());
    cmd.current_dir(SOURCE_DIR).arg("-s").arg(target);
    cmd.arg(format!("DESTDIR={}", destdir.display()));
    for (key, value) in vars {
        cmd.arg(format!("{key}={value}"));
    }
    for key in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "PREFIX",
        "SBINDIR",
        "SYSCONFDIR",
        "SYSTEMDUNITDIR",
        "RCDIR",
        "INITDDIR",
        "LOGROTATEDIR",
        "NEWSYSLOGDIR",
        "INIT",
        "DISTRO",
        "OS",
        "BIN",
    ] {
        cmd.env_remove(key);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {} (is GNU make installed?): {e}", gnu_make()))
}

/// Like `run_make`, but the command must succeed.
fn make_ok(target: &str, destdir: &Path, vars: &[(&str, &str)]) {
    let out = run_make(target, destdir, vars);
    assert!(
        out.status.success(),
        "make {target} {vars:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every non-directory under `root`, with its permission bits.
fn walk(root: &Path) -> Tree {
    fn visit(root: &Path, dir: &Path, tree: &mut Tree) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
            if meta.is_dir() {
                visit(root, &path, tree);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("walked path is under the root")
                    .to_string_lossy()
                    .into_owned();
                tree.insert(rel, meta.permissions().mode() & 0o7777);
            }
        }
    }
    let mut tree = Tree::new();
    visit(root, root, &mut tree);
    tree
}

fn tree(entries: &[(&str, u32)]) -> Tree {
    entries.iter().map(|(p, m)| (p.to_string(), *m)).collect()
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_text(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path.as_ref()))
        .unwrap_or_else(|_| panic!("{} is not UTF-8", path.as_ref().display()))
}

fn source(rel: &str) -> PathBuf {
    Path::new(SOURCE_DIR).join(rel)
}

/// The init file each INIT installs (with PREFIX=/usr SYSCONFDIR=/etc), and its mode.
fn init_file(init: &str) -> (&'static str, u32) {
    match init {
        "systemd" => ("lib/systemd/system/waagent.service", 0o644),
        "rcd" => ("usr/etc/rc.d/waagent", 0o555),
        "sysv" => ("etc/init.d/waagent", 0o755),
        other => panic!("no expectation for INIT={other}"),
    }
}

#[test]
fn install_upgrade_uninstall_for_each_init_system() {
    for init in ["systemd", "rcd", "sysv"] {
        let dest = tempfile::tempdir().expect("create temporary DESTDIR");
        let root = dest.path();
        let vars = [
            ("PREFIX", "/usr"),
            ("SYSCONFDIR", "/etc"),
            ("INIT", init),
            ("DISTRO", "generic"),
            ("OS", "Linux"),
            ("BIN", BIN),
        ];

        // Fresh install.
        make_ok("install", root, &vars);
        let (init_path, init_mode) = init_file(init);
        assert_eq!(
            walk(root),
            tree(&[
                ("usr/sbin/waagent", 0o755),
                ("etc/waagent.conf", 0o644),
                ("etc/logrotate.d/waagent", 0o644),
                (init_path, init_mode),
            ]),
            "files installed with INIT={init}"
        );
        assert!(
            read(root.join("usr/sbin/waagent")) == read(BIN),
            "installed binary differs from BIN (INIT={init})"
        );
        assert_eq!(
            read_text(root.join("etc/waagent.conf")),
            read_text(source("conf/waagent.conf")),
            "installed waagent.conf (INIT={init})"
        );
        assert_eq!(
            read_text(root.join("etc/logrotate.d/waagent")),
            read_text(source("packaging/logrotate/waagent")),
            "installed logrotate file (INIT={init})"
        );
        let init_text = read_text(root.join(init_path));
        assert!(
            !init_text.contains("@SBINDIR@") && !init_text.contains("@SYSCONFDIR@"),
            "placeholder left in {init_path}:\n{init_text}"
        );
        assert!(
            init_text.contains("/usr/sbin/waagent"),
            "{init_path} does not name /usr/sbin/waagent:\n{init_text}"
        );
        match init {
            "systemd" => {
                assert!(
                    init_text
                        .lines()
                        .any(|l| l == "ExecStart=/usr/sbin/waagent -daemon"),
                    "no ExecStart line in the unit:\n{init_text}"
                );
                assert!(init_text.contains("ConditionPathExists=/etc/waagent.conf"));
            }
            "rcd" => assert!(init_text.contains("required_files=\"/etc/waagent.conf\"")),
            _ => assert!(init_text.contains("CONFIG=\"/etc/waagent.conf\"")),
        }

        // The admin edits the configuration; a second install keeps it.
        let conf = root.join("etc/waagent.conf");
        let edited = format!(
            "{}\n# edited by the admin\nLogs.Verbose=y\n",
            read_text(&conf)
        );
        fs::write(&conf, &edited).expect("edit the installed waagent.conf");
        make_ok("install", root, &vars);
        assert_eq!(
            read_text(&conf),
            edited,
            "second install overwrote the edited waagent.conf (INIT={init})"
        );
        assert_eq!(
            read_text(root.join("etc/waagent.conf.new")),
            read_text(source("conf/waagent.conf")),
            "waagent.conf.new after the second install (INIT={init})"
        );
        assert_eq!(
            walk(root).get("etc/waagent.conf.new"),
            Some(&0o644),
            "mode of waagent.conf.new"
        );

        // Uninstall removes everything but the edited configuration.
        make_ok("uninstall", root, &vars);
        assert_eq!(
            walk(root),
            tree(&[("etc/waagent.conf", 0o644)]),
            "files left after uninstall with INIT={init}"
        );
        assert_eq!(
            read_text(&conf),
            edited,
            "edited waagent.conf after uninstall"
        );
    }
}

#[test]
fn install_and_uninstall_for_freebsd() {
    let dest = tempfile::tempdir().expect("create temporary DESTDIR");
    let root = dest.path();
    let vars = [
        ("PREFIX", "/usr/local"),
        ("SYSCONFDIR", "/usr/local/etc"),
        ("INIT", "rcd"),
        ("DISTRO", "freebsd"),
        ("OS", "FreeBSD"),
        ("BIN", BIN),
    ];

    make_ok("install", root, &vars);
    assert_eq!(
        walk(root),
        tree(&[
            ("usr/local/sbin/waagent", 0o755),
            ("usr/local/etc/waagent.conf", 0o644),
            ("usr/local/etc/rc.d/waagent", 0o555),
            ("usr/local/etc/newsyslog.conf.d/waagent.conf", 0o644),
        ]),
        "files installed for FreeBSD"
    );
    assert_eq!(
        read_text(root.join("usr/local/etc/waagent.conf")),
        read_text(source("conf/waagent-freebsd.conf")),
        "FreeBSD installs conf/waagent-freebsd.conf"
    );
    assert_eq!(
        read_text(root.join("usr/local/etc/newsyslog.conf.d/waagent.conf")),
        read_text(source("packaging/newsyslog/waagent.conf")),
        "newsyslog file"
    );
    let rc = read_text(root.join("usr/local/etc/rc.d/waagent"));
    assert!(
        !rc.contains("@SBINDIR@") && !rc.contains("@SYSCONFDIR@"),
        "placeholder left in rc.d script:\n{rc}"
    );
    assert!(rc.contains("command=\"/usr/local/sbin/waagent\""), "{rc}");
    assert!(
        rc.contains("required_files=\"/usr/local/etc/waagent.conf\""),
        "{rc}"
    );

    // An unmodified configuration is removed too.
    make_ok("uninstall", root, &vars);
    assert_eq!(walk(root), Tree::new(), "files left after uninstall");
}

#[test]
fn install_picks_the_distro_configuration() {
    for distro in ["ubuntu", "debian", "redhat", "suse", "coreos"] {
        let dest = tempfile::tempdir().expect("create temporary DESTDIR");
        let vars = [
            ("PREFIX", "/usr"),
            ("SYSCONFDIR", "/etc"),
            ("INIT", "systemd"),
            ("DISTRO", distro),
            ("OS", "Linux"),
            ("BIN", BIN),
        ];
        make_ok("install", dest.path(), &vars);
        assert_eq!(
            read_text(dest.path().join("etc/waagent.conf")),
            read_text(source(&format!("conf/waagent-{distro}.conf"))),
            "DISTRO={distro} installs conf/waagent-{distro}.conf"
        );
    }
}

#[test]
fn invalid_init_or_distro_is_refused() {
    let cases = [
        ("INIT", "bogus", "systemd rcd sysv"),
        ("DISTRO", "bogus", "generic"),
    ];
    for (key, value, expected) in cases {
        let dest = tempfile::tempdir().expect("create temporary DESTDIR");
        let mut vars = vec![
            ("PREFIX", "/usr"),
            ("SYSCONFDIR", "/etc"),
            ("INIT", "systemd"),
            ("DISTRO", "generic"),
            ("OS", "Linux"),
            ("BIN", BIN),
        ];
        vars.retain(|(k, _)| *k != key);
        vars.push((key, value));
        let out = run_make("install", dest.path(), &vars);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "make install {key}={value} succeeded"
        );
        assert!(
            stderr.contains(&format!("{key}='{value}' is not valid")) && stderr.contains(expected),
            "make install {key}={value}: message should name the valid values, got:\n{stderr}"
        );
        assert_eq!(
            walk(dest.path()),
            Tree::new(),
            "make install {key}={value} created files"
        );
    }
}
