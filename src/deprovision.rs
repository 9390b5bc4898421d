//! `-deprovision` and `-deprovision+user` (§10): remove what makes this VM
//! this VM, so an image captured from it provisions cleanly. The actions are
//! a list decided first (and shown, and confirmed unless `-force`), then
//! carried out one by one; a failed action is reported and the rest still run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::env::firewall;
use crate::journal::Journal;
use crate::libdir;
use crate::os::OsUtil;
use crate::ovf::OvfEnv;

/// One thing deprovisioning does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StopService,
    DeleteHostKeys(PathBuf),
    DeleteLeases(Vec<PathBuf>),
    ResetHostName,
    LockRoot,
    /// A file or a whole directory tree.
    Delete(PathBuf),
    /// An account provisioning created, with its home directory when that
    /// is still the one `useradd -m` made.
    DeleteUser {
        name: String,
        remove_home: bool,
    },
    /// `+user` keeps this account, and says why.
    KeepUser {
        name: String,
        why: String,
    },
}

impl Action {
    /// The warning shown before confirmation, as waagent words it.
    pub fn warning(&self) -> Option<String> {
        Some(match self {
            Action::StopService => "WARNING! The waagent service will be stopped.".into(),
            Action::DeleteHostKeys(_) => "WARNING! All SSH host key pairs will be deleted.".into(),
            Action::DeleteLeases(_) => "WARNING! Cached DHCP leases will be deleted.".into(),
            Action::LockRoot => {
                "WARNING! root password will be disabled. You will not be able to login as root."
                    .into()
            }
            Action::DeleteUser {
                name,
                remove_home: true,
            } => format!("WARNING! {name} account and entire home directory will be deleted."),
            Action::DeleteUser { name, .. } => {
                format!("WARNING! {name} account will be deleted (its home directory is kept).")
            }
            Action::KeepUser { name, why } => format!("NOTE: {name} is not deleted: {why}."),
            Action::Delete(p) if p.ends_with("resolv.conf") => {
                format!(
                    "WARNING! Nameserver configuration in {} will be deleted.",
                    p.display()
                )
            }
            _ => return None,
        })
    }
}

/// What `-deprovision[+user]` will do on this system.
pub fn plan(config: &Config, os: &dyn OsUtil, with_user: bool) -> Vec<Action> {
    let env = os.env();
    let mut actions = vec![Action::StopService];
    if config.regenerate_ssh_host_key_pair {
        actions.push(Action::DeleteHostKeys(config.ssh_dir.clone()));
    }
    let mut leases = os.dhcp_lease_files();
    // dhcpcd keeps its leases in a directory of its own.
    leases.extend(
        std::fs::read_dir(env.path("/var/lib/dhcpcd"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    if !leases.is_empty() {
        actions.push(Action::DeleteLeases(leases));
    }
    actions.push(Action::ResetHostName);
    if config.delete_root_password {
        actions.push(Action::LockRoot);
    }
    // Which accounts are ours is in the journal: read it before the
    // Lib.Dir that holds it goes.
    if with_user {
        actions.extend(user_actions(config, os));
    }
    actions.push(Action::Delete(
        config
            .ssh_dir
            .join("sshd_config.d")
            .join(crate::provision::sshd::DROP_IN),
    ));
    if let Some(unit) = firewall::unit_path(os) {
        // The unit that puts the firewall rules back at boot (§18.6), and
        // its enablement, so the image carries no dangling link.
        actions.push(Action::Delete(unit));
        actions.push(Action::Delete(
            env.path("/etc/systemd/system/network.target.wants")
                .join(firewall::NETWORK_SETUP_UNIT),
        ));
    }
    actions.push(Action::Delete(config.lib_dir.clone()));
    actions.push(Action::Delete(config.extension_log_dir.clone()));
    actions.push(Action::Delete(env.path("/root/.bash_history")));
    actions.push(Action::Delete(config.log_file.clone()));
    actions.push(Action::Delete(env.path("/etc/resolv.conf")));
    actions.extend(os.deprovision_extra_files().into_iter().map(Action::Delete));
    actions
}

/// The user the saved ovf-env.xml names.
pub fn provisioned_user(lib_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.join(libdir::OVF_ENV)).ok()?;
    OvfEnv::parse(&text).ok().map(|e| e.user_name)
}

/// `+user` deletes only what provisioning created: the accounts the journal
/// records, each while it still has the UID it was created with and that
/// UID is a normal user's. Anything else — a user the image already had
/// (`UserName=www-data` would take `/var/www` with it), one provisioning
/// refused, one deleted and made again since — is kept, and the reason is
/// shown. The home directory goes only while it is still the one
/// `useradd -m` made.
fn user_actions(config: &Config, os: &dyn OsUtil) -> Vec<Action> {
    let journal = Journal::open(&config.lib_dir);
    let created = &journal.entry().created_users;
    let mut actions = Vec::new();
    if let Some(name) = provisioned_user(&config.lib_dir) {
        if !created.iter().any(|u| u.name == name) {
            actions.push(Action::KeepUser {
                name,
                why:
                    "provisioning did not create it (it was already on the system, or was refused)"
                        .into(),
            });
        }
    } else if created.is_empty() {
        log::warn!(
            "no provisioned user found in {}; no account is deleted",
            config.lib_dir.join(libdir::OVF_ENV).display()
        );
    }
    let normal = os.normal_uids();
    for u in created {
        let keep = |why: String| Action::KeepUser {
            name: u.name.clone(),
            why,
        };
        let now = match os.user(&u.name) {
            Ok(Some(now)) => now,
            Ok(None) => continue,
            Err(e) => {
                actions.push(keep(format!("cannot read the user database: {e}")));
                continue;
            }
        };
        if now.uid != u.uid {
            actions.push(keep(format!(
                "its UID is {}, not the {} provisioning created it with",
                now.uid, u.uid
            )));
        } else if !normal.contains(&now.uid) || os.is_dynamic_user(&u.name) {
            actions.push(keep(format!(
                "its UID {} is not a normal user's ({}-{})",
                now.uid,
                normal.start(),
                normal.end()
            )));
        } else {
            actions.push(Action::DeleteUser {
                name: u.name.clone(),
                remove_home: now.home.to_string_lossy() == u.home,
            });
        }
    }
    actions
}

/// Shows the warnings and asks, unless `force`. True: go ahead.
pub fn confirm(
    actions: &[Action],
    force: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> bool {
    for w in actions.iter().filter_map(Action::warning) {
        let _ = writeln!(out, "{w}");
    }
    if force {
        return true;
    }
    let _ = write!(out, "Do you want to proceed (y/n)");
    let _ = out.flush();
    let mut answer = String::new();
    if input.read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes" | "Yes")
}

/// Carries out the actions; returns the failures (each already logged).
pub fn apply(actions: &[Action], os: &dyn OsUtil) -> Vec<String> {
    let mut failures = Vec::new();
    for a in actions {
        log::info!("deprovision: {a:?}");
        let result = match a {
            Action::StopService => os.stop_service().map_err(|e| e.to_string()),
            Action::DeleteHostKeys(dir) => {
                delete_matching(dir, |n| n.starts_with("ssh_host_") && n.contains("key"))
            }
            Action::DeleteLeases(files) => files.iter().try_for_each(|f| delete(f)),
            Action::ResetHostName => {
                let name = "localhost.localdomain";
                let iface = os.primary_interface().unwrap_or_else(|| "eth0".into());
                os.set_hostname(name)
                    .and_then(|_| os.set_dhcp_hostname(name, &iface))
                    .map_err(|e| e.to_string())
            }
            Action::LockRoot => os.lock_root_password().map_err(|e| e.to_string()),
            Action::Delete(p) => delete(p),
            Action::DeleteUser { name, remove_home } => os
                .delete_user(name, *remove_home)
                .and_then(|_| os.remove_sudoer(name))
                .map_err(|e| e.to_string()),
            Action::KeepUser { name, why } => {
                log::warn!("deprovision: {name} is not deleted: {why}");
                Ok(())
            }
        };
        if let Err(e) = result {
            // Stopping a service that is not running is not worth alarm.
            if *a == Action::StopService {
                log::warn!("deprovision: cannot stop the service: {e}");
            } else {
                log::error!("deprovision: {a:?}: {e}");
                failures.push(format!("{a:?}: {e}"));
            }
        }
    }
    failures
}

fn delete(p: &Path) -> Result<(), String> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(|e| format!("{}: {e}", p.display()))
}

fn delete_matching(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<(), String> {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if pred(&e.file_name().to_string_lossy()) {
            delete(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::Flavour;
    use crate::os::{for_env, Distro, Env, RecordingRunner};
    use std::rc::Rc;

    fn setup(
        flavour: Flavour,
    ) -> (
        tempfile::TempDir,
        Rc<RecordingRunner>,
        Box<dyn OsUtil>,
        Config,
    ) {
        let root = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        let mut c = Config::default();
        c.lib_dir = root.path().join("var/lib/waagent");
        c.ssh_dir = root.path().join("etc/ssh");
        c.sudoers_dir = root.path().join("etc/sudoers.d");
        c.extension_log_dir = root.path().join("var/log/azure");
        c.log_file = root.path().join("var/log/waagent.log");
        c.regenerate_ssh_host_key_pair = true;
        c.delete_root_password = false;
        let env = Env {
            root: root.path().to_path_buf(),
            runner: runner.clone(),
            config: c.clone(),
            distro: Distro {
                id: "x".into(),
                version: "1".into(),
                flavour,
            },
        };
        (root, runner, for_env(env), c)
    }

    #[test]
    fn confirmation() {
        let actions = vec![
            Action::StopService,
            Action::DeleteUser {
                name: "azureuser".into(),
                remove_home: true,
            },
        ];
        let mut out = Vec::new();
        assert!(!confirm(&actions, false, &mut "n\n".as_bytes(), &mut out));
        assert!(confirm(
            &actions,
            false,
            &mut "y\n".as_bytes(),
            &mut Vec::new()
        ));
        assert!(!confirm(
            &actions,
            false,
            &mut "".as_bytes(),
            &mut Vec::new()
        ));
        assert!(confirm(&actions, true, &mut "".as_bytes(), &mut Vec::new()));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "WARNING! The waagent service will be stopped.\nWARNING! azureuser account and entire home directory will be deleted.\nDo you want to proceed (y/n)"
        );
    }

    #[test]
    fn removes_state_keys_leases_and_the_user() {
        let (root, runner, os, c) = setup(Flavour::Debian);
        let w = |p: &str, t: &str| {
            let p = root.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w("var/lib/waagent/ovf-env.xml", OVF);
        w("var/lib/waagent/provisioned", "");
        w("etc/ssh/ssh_host_rsa_key", "k");
        w("etc/ssh/sshd_config", "keep");
        w("var/lib/dhcp/dhclient.eth0.leases", "lease {}");
        w("etc/resolv.conf", "nameserver 168.63.129.16");
        w("etc/sudoers.d/waagent", "azureuser ALL=(ALL) ALL\n");
        w(
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\nazureuser:x:1000:1000::/home/azureuser:/bin/sh\n",
        );
        created(&c, "azureuser", 1000, "/home/azureuser");
        let unit = "lib/systemd/system/waagent-network-setup.service";
        w(unit, "[Unit]\n");
        let wants = "etc/systemd/system/network.target.wants/waagent-network-setup.service";
        let link = root.path().join(wants);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(format!("/{unit}"), &link).unwrap();
        assert_eq!(provisioned_user(&c.lib_dir).as_deref(), Some("azureuser"));
        let actions = plan(&c, &*os, true);
        assert!(apply(&actions, &*os).is_empty());
        assert!(!root.path().join("var/lib/waagent").exists());
        assert!(!root.path().join("etc/ssh/ssh_host_rsa_key").exists());
        assert!(root.path().join("etc/ssh/sshd_config").exists());
        assert!(!root
            .path()
            .join("var/lib/dhcp/dhclient.eth0.leases")
            .exists());
        assert!(!root.path().join("etc/resolv.conf").exists());
        assert!(!root.path().join(unit).exists());
        assert!(root.path().join(wants).symlink_metadata().is_err());
        assert_eq!(
            runner.lines(),
            [
                "service waagent stop",
                "hostname localhost.localdomain",
                "userdel -f -r azureuser"
            ]
        );
        assert!(!root.path().join("etc/sudoers.d/waagent").exists());
    }

    /// Records in the journal that provisioning created `name`.
    fn created(c: &Config, name: &str, uid: u32, home: &str) {
        let mut j = Journal::open(&c.lib_dir);
        j.record_user_created(crate::journal::CreatedUser {
            name: name.into(),
            uid,
            home: home.into(),
        })
        .unwrap();
    }

    #[test]
    fn only_an_account_provisioning_created_is_deleted_while_it_is_the_same_one() {
        let (root, runner, os, c) = setup(Flavour::Debian);
        let w = |p: &str, t: &str| {
            let p = root.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        let users = |a: &[Action]| -> Vec<Action> {
            a.iter()
                .filter(|a| matches!(a, Action::DeleteUser { .. } | Action::KeepUser { .. }))
                .cloned()
                .collect()
        };
        w(
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n\
             azureuser:x:1000:1000::/home/azureuser:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        );
        // The image's own www-data was named (and refused or adopted): the
        // journal records no creation, so nothing is deleted, and it says so.
        w(
            "var/lib/waagent/ovf-env.xml",
            &OVF.replace("azureuser", "www-data"),
        );
        assert_eq!(
            users(&plan(&c, &*os, true)),
            [Action::KeepUser {
                name: "www-data".into(),
                why:
                    "provisioning did not create it (it was already on the system, or was refused)"
                        .into()
            }]
        );
        assert_eq!(
            users(&plan(&c, &*os, true))[0].warning().unwrap(),
            "NOTE: www-data is not deleted: provisioning did not create it (it was already on the system, or was refused)."
        );

        // Created, then deleted and made again by someone else: another UID.
        w("var/lib/waagent/ovf-env.xml", OVF);
        created(&c, "azureuser", 1001, "/home/azureuser");
        assert_eq!(
            users(&plan(&c, &*os, true)),
            [Action::KeepUser {
                name: "azureuser".into(),
                why: "its UID is 1000, not the 1001 provisioning created it with".into()
            }]
        );
        // A recorded UID outside the normal range is never deleted.
        created(&c, "nobody", 65534, "/nonexistent");
        assert!(users(&plan(&c, &*os, true)).contains(&Action::KeepUser {
            name: "nobody".into(),
            why: "its UID 65534 is not a normal user's (1000-60000)".into()
        }));
        // The right one, whose home was moved since: the home is kept.
        created(&c, "azureuser", 1000, "/home/old-home");
        let actions = plan(&c, &*os, true);
        assert!(users(&actions).contains(&Action::DeleteUser {
            name: "azureuser".into(),
            remove_home: false
        }));
        apply(&actions, &*os);
        assert!(runner.lines().contains(&"userdel -f azureuser".to_string()));
        assert!(!runner.lines().iter().any(|l| l.contains("nobody")));
    }

    const OVF: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>vm1</HostName><UserName>azureuser</UserName><UserPassword>*</UserPassword>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
  <wa:PlatformSettingsSection><wa:Version>1.0</wa:Version><wa:PlatformSettings><wa:ProvisionGuestAgent>true</wa:ProvisionGuestAgent></wa:PlatformSettings></wa:PlatformSettingsSection>
</Environment>"#;
}
