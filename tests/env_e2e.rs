//! The environment commands on a real (sandboxed) system: `-serialconsole`
//! edits the GRUB defaults and regenerates the boot configuration, once.

#[path = "common/sandbox.rs"]
mod sandbox;

use sandbox::{Options, Sandbox};

#[test]
fn serialconsole_edits_grub_once() {
    if sandbox::skip("serialconsole_edits_grub_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_waagent"), dir.path().join("waagent")).unwrap();
    std::fs::write(
        dir.path().join("waagent.conf"),
        "Logs.File=/work/waagent.log\nLogs.Console=n\n",
    )
    .unwrap();
    // A Debian-like /etc/default/grub, and an update-grub that only records
    // that it ran (the sandbox has no boot loader to regenerate).
    let script = r#"set -e
mkdir -p /etc/default
printf 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\nGRUB_CMDLINE_LINUX=""\n' > /etc/default/grub
printf '#!/bin/sh\necho ran >> /work/update-grub.log\n' > /usr/sbin/update-grub
chmod 755 /usr/sbin/update-grub
/work/waagent -serialconsole -configuration-path:/work/waagent.conf > /work/first.out
/work/waagent -serialconsole -configuration-path:/work/waagent.conf > /work/second.out
cp /etc/default/grub /work/grub
"#;
    let out = Sandbox::run(
        &Options::default().bind(dir.path(), "/work"),
        &["sh", "-c", script],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    assert_eq!(
        read("grub"),
        "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash console=ttyS0 earlyprintk=ttyS0\"\nGRUB_CMDLINE_LINUX=\"\"\n"
    );
    assert_eq!(
        read("update-grub.log"),
        "ran\n",
        "grub regenerated once, on the change"
    );
    assert_eq!(
        read("first.out"),
        "waagent: serial console enabled in /etc/default/grub; it takes effect at the next boot\n"
    );
    assert_eq!(
        read("second.out"),
        "waagent: the serial console is already enabled in /etc/default/grub\n"
    );
}
