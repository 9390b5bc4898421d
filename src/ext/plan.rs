//! What to do about the handlers of an extensions goal state, decided
//! without I/O (§13.2, §13.8, §13.9 of PROTOCOL.md): [`plan`] turns what the
//! goal state asks and what is installed into [`Task`]s in the order they
//! run, [`select_version`] picks a version from a manifest, and [`enable_ops`]
//! lists the steps that bring a handler to Enabled once its package is
//! known. The executor (`exec.rs`) carries them out.

use std::cmp::Ordering;

use crate::wire::docs::{ExtensionsConfig, PluginState};

pub use super::handler::HandlerState;

/// What the goal state asks of one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    /// `Plugin@version`.
    pub version: String,
    pub state: PluginState,
    /// The lowest `dependencyLevel` of its extensions (0 without any).
    pub level: u32,
    /// Why the document itself makes this handler impossible to run.
    pub invalid: Option<String>,
}

impl Wanted {
    /// Every plugin of `ec`; one with no readable state is invalid.
    pub fn from_config(ec: &ExtensionsConfig) -> Vec<Wanted> {
        ec.plugins
            .iter()
            .map(|p| Wanted {
                name: p.name.clone(),
                version: p.version.clone(),
                state: p.state.unwrap_or(PluginState::Enabled),
                level: p
                    .settings
                    .iter()
                    .map(|s| p.dependency_level(s))
                    .min()
                    .unwrap_or(0),
                invalid: p.invalid_reason.clone().or_else(|| {
                    p.state
                        .is_none()
                        .then(|| "the plugin has no valid state".to_string())
                }),
            })
            .collect()
    }
}

/// One `<lib>/{Name}-{Version}` directory and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub state: HandlerState,
}

/// What to do about one handler, in the order [`plan`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Bring the handler to Enabled at a version of its manifest that
    /// matches `requested`; `installed` is what is there now.
    Enable {
        name: String,
        requested: String,
        installed: Option<Installed>,
    },
    /// Run `disable` (it is Enabled).
    Disable { installed: Installed },
    /// `disable` first when `installed` is Enabled, then `uninstall`, then
    /// delete its directory. `removed`: the goal state no longer names it.
    Uninstall { installed: Installed, removed: bool },
    /// Nothing runs; the handler is reported failed with this reason.
    Refuse {
        name: String,
        version: String,
        reason: String,
    },
}

impl Task {
    pub fn name(&self) -> &str {
        match self {
            Task::Enable { name, .. } | Task::Refuse { name, .. } => name,
            Task::Disable { installed } | Task::Uninstall { installed, .. } => &installed.name,
        }
    }
}

/// The installed version of `name`: the highest directory that is
/// Installed or Enabled (a NotInstalled one is a set-up that did not
/// finish; a FailedUpgrade one is retried as new).
pub fn installed_version<'a>(name: &str, on_disk: &'a [Installed]) -> Option<&'a Installed> {
    on_disk
        .iter()
        .filter(|i| i.name == name)
        .filter(|i| matches!(i.state, HandlerState::Installed | HandlerState::Enabled))
        .max_by(|a, b| compare_versions(&a.version, &b.version))
}

/// The tasks for a goal state, in the order they run (§13.2): what goes away
/// first — handlers the goal state no longer names, then uninstalls and
/// disables, highest dependency level first — then enables, lowest level
/// first (goal-state order within a level).
pub fn plan(wanted: &[Wanted], on_disk: &[Installed]) -> Vec<Task> {
    let mut removed: Vec<Task> = Vec::new();
    let mut names: Vec<&str> = on_disk.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if wanted.iter().any(|w| w.name == name) {
            continue;
        }
        if let Some(installed) = installed_version(name, on_disk) {
            removed.push(Task::Uninstall {
                installed: installed.clone(),
                removed: true,
            });
        }
    }

    let mut going: Vec<(u32, Task)> = Vec::new();
    let mut coming: Vec<(u32, Task)> = Vec::new();
    for w in wanted {
        let installed = installed_version(&w.name, on_disk).cloned();
        if let Some(reason) = &w.invalid {
            coming.push((
                w.level,
                Task::Refuse {
                    name: w.name.clone(),
                    version: w.version.clone(),
                    reason: reason.clone(),
                },
            ));
            continue;
        }
        match (w.state, installed) {
            (PluginState::Enabled, installed) => coming.push((
                w.level,
                Task::Enable {
                    name: w.name.clone(),
                    requested: w.version.clone(),
                    installed,
                },
            )),
            (PluginState::Disabled, Some(i)) if i.state == HandlerState::Enabled => {
                going.push((w.level, Task::Disable { installed: i }))
            }
            (PluginState::Uninstall, Some(i)) => going.push((
                w.level,
                Task::Uninstall {
                    installed: i,
                    removed: false,
                },
            )),
            // Disabled and not enabled, or nothing installed to remove.
            _ => {}
        }
    }
    going.sort_by_key(|t| std::cmp::Reverse(t.0));
    coming.sort_by_key(|t| t.0);
    removed
        .into_iter()
        .chain(going.into_iter().map(|t| t.1))
        .chain(coming.into_iter().map(|t| t.1))
        .collect()
}

/// Versions compared component by component as numbers (`1.10` > `1.9`);
/// a component that is not a number compares as text after the numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<String> { v.split('.').map(str::to_string).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).map_or("0", String::as_str),
            pb.get(i).map_or("0", String::as_str),
        );
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// How a plugin's requested version is read (§13.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRule {
    /// The current agent's rule, and the one CRP asks for with
    /// `useExactVersion="true"`: the requested version, or the newest
    /// version it is a component-wise prefix of.
    Exact,
    /// `autoUpgrade="true"` without `useExactVersion` (older fabrics): the
    /// newest version with the requested major version, never below the
    /// requested one; 2.2.5's minor upgrades.
    MinorUpgrades,
}

impl VersionRule {
    pub fn of(plugin: &crate::wire::docs::Plugin) -> VersionRule {
        if plugin.auto_upgrade && !plugin.use_exact_version {
            VersionRule::MinorUpgrades
        } else {
            VersionRule::Exact
        }
    }
}

/// The version to run for `requested` under `rule` (§13.8). `Exact`: the
/// newest manifest version of which `requested` is a component-wise prefix
/// (`1.0` matches `1.0` and `1.0.7`; `2.1.13` only itself).
/// `MinorUpgrades`: the newest one with the same major version that is not
/// older than `requested`. `None`: the manifest lists none.
pub fn select_version<'a>(
    requested: &str,
    available: &[&'a str],
    rule: VersionRule,
) -> Option<&'a str> {
    let requested = requested.trim();
    let want: Vec<&str> = requested.split('.').collect();
    let same = |w: &str, h: &str| {
        w == h || (w.parse::<u64>().is_ok() && w.parse::<u64>() == h.parse::<u64>())
    };
    available
        .iter()
        .copied()
        .filter(|v| {
            let have: Vec<&str> = v.split('.').collect();
            match rule {
                VersionRule::Exact => {
                    have.len() >= want.len() && want.iter().zip(&have).all(|(w, h)| same(w, h))
                }
                VersionRule::MinorUpgrades => {
                    same(want[0], have[0]) && compare_versions(v, requested) != Ordering::Less
                }
            }
        })
        .max_by(|a, b| compare_versions(a, b))
}

/// A handler command (§13.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Install,
    Enable,
    Disable,
    Uninstall,
    Update,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Install => "install",
            Command::Enable => "enable",
            Command::Disable => "disable",
            Command::Uninstall => "uninstall",
            Command::Update => "update",
        }
    }
}

/// One step of bringing a handler to Enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `config/{seq}.settings` of `version`.
    WriteSettings { version: String },
    /// Run a command of `version`'s package.
    Run { version: String, command: Command },
    /// Copy `mrseq` and `status/*` from the old version to the new one.
    CarryOver { from: String, to: String },
    /// Set `config/HandlerState` of `version`.
    SetState {
        version: String,
        state: HandlerState,
    },
    /// Delete `<lib>/{Name}-{version}`.
    Delete { version: String },
}

/// What the new package's `HandlerManifest.json` says about updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdatePolicy {
    /// `updateMode` is absent or `UpdateWithInstall`.
    pub install_after_update: bool,
    /// `continueOnUpdateFailure`.
    pub continue_on_update_failure: bool,
}

/// The steps that bring `new` (already unpacked, in state `new_state`) to
/// Enabled, given the installed `old` (§13.9, current waagent's order): a
/// fresh handler installs; a different version is an update (old disable,
/// carry-over, update, old uninstall, old deleted, install if the policy
/// says); then settings and enable.
pub fn enable_ops(
    old: Option<&Installed>,
    new: &str,
    new_state: HandlerState,
    policy: UpdatePolicy,
) -> Vec<Op> {
    let v = |s: &str| s.to_string();
    let mut ops = Vec::new();
    let fresh = matches!(
        new_state,
        HandlerState::NotInstalled | HandlerState::FailedUpgrade
    );
    match old {
        _ if !fresh => ops.push(Op::WriteSettings { version: v(new) }),
        None => ops.extend([
            Op::WriteSettings { version: v(new) },
            Op::Run {
                version: v(new),
                command: Command::Install,
            },
            Op::SetState {
                version: v(new),
                state: HandlerState::Installed,
            },
        ]),
        Some(old) if old.version == new => ops.push(Op::WriteSettings { version: v(new) }),
        Some(old) => {
            if old.state == HandlerState::Enabled {
                ops.push(Op::Run {
                    version: old.version.clone(),
                    command: Command::Disable,
                });
            }
            ops.push(Op::CarryOver {
                from: old.version.clone(),
                to: v(new),
            });
            ops.push(Op::WriteSettings { version: v(new) });
            // A downgrade is an update run by the old version (current).
            let updater = match compare_versions(new, &old.version) {
                Ordering::Less => old.version.clone(),
                _ => v(new),
            };
            ops.push(Op::Run {
                version: updater,
                command: Command::Update,
            });
            ops.push(Op::Run {
                version: old.version.clone(),
                command: Command::Uninstall,
            });
            ops.push(Op::Delete {
                version: old.version.clone(),
            });
            if policy.install_after_update {
                ops.push(Op::Run {
                    version: v(new),
                    command: Command::Install,
                });
            }
            ops.push(Op::SetState {
                version: v(new),
                state: HandlerState::Installed,
            });
        }
    }
    ops.push(Op::Run {
        version: v(new),
        command: Command::Enable,
    });
    ops.push(Op::SetState {
        version: v(new),
        state: HandlerState::Enabled,
    });
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, version: &str, state: PluginState, level: u32) -> Wanted {
        Wanted {
            name: name.into(),
            version: version.into(),
            state,
            level,
            invalid: None,
        }
    }

    fn installed(name: &str, version: &str, state: HandlerState) -> Installed {
        Installed {
            name: name.into(),
            version: version.into(),
            state,
        }
    }

    /// A task as a short line: `enable A 1.0 (from 0.9)`, `disable B 2.0`…
    fn show(t: &Task) -> String {
        match t {
            Task::Enable {
                name,
                requested,
                installed,
            } => match installed {
                Some(i) => format!("enable {name} {requested} (from {})", i.version),
                None => format!("enable {name} {requested}"),
            },
            Task::Disable { installed: i } => format!("disable {} {}", i.name, i.version),
            Task::Uninstall {
                installed: i,
                removed,
            } => format!(
                "uninstall {} {}{}",
                i.name,
                i.version,
                if *removed { " (removed)" } else { "" }
            ),
            Task::Refuse { name, .. } => format!("refuse {name}"),
        }
    }

    #[test]
    fn each_requested_state_against_what_is_installed() {
        use HandlerState::*;
        use PluginState as P;
        // (what is asked, what is installed) → the tasks
        let rows: Vec<(Vec<Wanted>, Vec<super::Installed>, Vec<&str>)> = vec![
            // Fresh VM: enable.
            (
                vec![wanted("A", "1.0", P::Enabled, 0)],
                vec![],
                vec!["enable A 1.0"],
            ),
            // Installed and enabled: enable again (a new goal state runs enable).
            (
                vec![wanted("A", "1.0", P::Enabled, 0)],
                vec![installed("A", "1.0", Enabled)],
                vec!["enable A 1.0 (from 1.0)"],
            ),
            // A half-made directory does not count as installed.
            (
                vec![wanted("A", "1.0", P::Enabled, 0)],
                vec![installed("A", "1.0", NotInstalled)],
                vec!["enable A 1.0"],
            ),
            // disabled: only an Enabled handler is disabled.
            (
                vec![wanted("A", "1.0", P::Disabled, 0)],
                vec![installed("A", "1.0", Enabled)],
                vec!["disable A 1.0"],
            ),
            (
                vec![wanted("A", "1.0", P::Disabled, 0)],
                vec![installed("A", "1.0", Installed)],
                vec![],
            ),
            (vec![wanted("A", "1.0", P::Disabled, 0)], vec![], vec![]),
            // uninstall: whatever is installed; nothing when nothing is.
            (
                vec![wanted("A", "1.0", P::Uninstall, 0)],
                vec![installed("A", "1.0", Installed)],
                vec!["uninstall A 1.0"],
            ),
            (vec![wanted("A", "1.0", P::Uninstall, 0)], vec![], vec![]),
            // Gone from the goal state: uninstalled, highest version.
            (
                vec![],
                vec![
                    installed("B", "1.0", Installed),
                    installed("B", "1.2", Enabled),
                ],
                vec!["uninstall B 1.2 (removed)"],
            ),
            // An upgrade is an enable from the installed version.
            (
                vec![wanted("A", "2.0", P::Enabled, 0)],
                vec![installed("A", "1.0", Enabled)],
                vec!["enable A 2.0 (from 1.0)"],
            ),
        ];
        for (w, d, want) in rows {
            let got: Vec<String> = plan(&w, &d).iter().map(show).collect();
            assert_eq!(got, want, "{w:?} {d:?}");
        }
    }

    #[test]
    fn removals_first_then_disables_by_descending_level_then_enables_by_ascending_level() {
        use HandlerState::*;
        use PluginState as P;
        let w = vec![
            wanted("E2", "1.0", P::Enabled, 2),
            wanted("D1", "1.0", P::Disabled, 1),
            wanted("E0", "1.0", P::Enabled, 0),
            wanted("U3", "1.0", P::Uninstall, 3),
            wanted("E1", "1.0", P::Enabled, 1),
        ];
        let d = vec![
            installed("D1", "1.0", Enabled),
            installed("U3", "1.0", Enabled),
            installed("Gone", "3.0", Enabled),
        ];
        let got: Vec<String> = plan(&w, &d).iter().map(show).collect();
        assert_eq!(
            got,
            [
                "uninstall Gone 3.0 (removed)",
                "uninstall U3 1.0",
                "disable D1 1.0",
                "enable E0 1.0",
                "enable E1 1.0",
                "enable E2 1.0",
            ]
        );
    }

    #[test]
    fn an_invalid_plugin_is_refused_and_nothing_runs_for_it() {
        let mut w = wanted("A", "1.0", PluginState::Enabled, 0);
        w.invalid = Some("no settings".into());
        assert_eq!(
            plan(&[w], &[]),
            [Task::Refuse {
                name: "A".into(),
                version: "1.0".into(),
                reason: "no settings".into()
            }]
        );
    }

    #[test]
    fn version_selection_is_exact_or_the_newest_with_that_prefix() {
        let available = ["1.0", "1.0.7", "1.0.10", "1.1.0", "2.1.13", "2.1.14"];
        for (requested, want) in [
            ("1.0", Some("1.0.10")),
            ("1.0.7", Some("1.0.7")),
            ("1.1", Some("1.1.0")),
            ("2.1.13", Some("2.1.13")),
            ("2", Some("2.1.14")),
            ("3.0", None),
            ("1.0.1", None),
            // Leading zeros compare as numbers.
            ("01.0", Some("1.0.10")),
        ] {
            assert_eq!(
                select_version(requested, &available, VersionRule::Exact),
                want,
                "{requested}"
            );
        }
        for (requested, want) in [
            // Minor and patch upgrades within the major version...
            ("1.0", Some("1.1.0")),
            ("1.0.7", Some("1.1.0")),
            ("2.1.13", Some("2.1.14")),
            // ...never a major one, never below the request.
            ("1.2", None),
            ("3.0", None),
        ] {
            assert_eq!(
                select_version(requested, &available, VersionRule::MinorUpgrades),
                want,
                "{requested} with minor upgrades"
            );
        }
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.a", "1.0.1"), Ordering::Greater);
    }

    fn show_ops(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| match o {
                Op::WriteSettings { version } => format!("settings {version}"),
                Op::Run { version, command } => format!("{} {version}", command.as_str()),
                Op::CarryOver { from, to } => format!("carry {from}>{to}"),
                Op::SetState { version, state } => format!("{} {version}", state.as_str()),
                Op::Delete { version } => format!("delete {version}"),
            })
            .collect()
    }

    #[test]
    fn lifecycle_steps_for_every_starting_point() {
        use HandlerState::*;
        let with_install = UpdatePolicy {
            install_after_update: true,
            continue_on_update_failure: false,
        };
        // (installed, new version, its state, policy) → the steps
        type Row<'a> = (
            Option<super::Installed>,
            &'a str,
            HandlerState,
            UpdatePolicy,
            Vec<&'a str>,
        );
        let rows: Vec<Row> = vec![
            // Fresh: install, then enable.
            (
                None,
                "1.0",
                NotInstalled,
                with_install,
                vec![
                    "settings 1.0",
                    "install 1.0",
                    "Installed 1.0",
                    "enable 1.0",
                    "Enabled 1.0",
                ],
            ),
            // Already there (a new seqNo, a new goal state, a reboot): enable only.
            (
                Some(installed("A", "1.0", Enabled)),
                "1.0",
                Enabled,
                with_install,
                vec!["settings 1.0", "enable 1.0", "Enabled 1.0"],
            ),
            (
                Some(installed("A", "1.0", Installed)),
                "1.0",
                Installed,
                with_install,
                vec!["settings 1.0", "enable 1.0", "Enabled 1.0"],
            ),
            // Upgrade from an enabled version, installing after the update.
            (
                Some(installed("A", "1.0", Enabled)),
                "1.1",
                NotInstalled,
                with_install,
                vec![
                    "disable 1.0",
                    "carry 1.0>1.1",
                    "settings 1.1",
                    "update 1.1",
                    "uninstall 1.0",
                    "delete 1.0",
                    "install 1.1",
                    "Installed 1.1",
                    "enable 1.1",
                    "Enabled 1.1",
                ],
            ),
            // From an installed (not enabled) one, UpdateWithoutInstall.
            (
                Some(installed("A", "1.0", Installed)),
                "1.1",
                NotInstalled,
                UpdatePolicy::default(),
                vec![
                    "carry 1.0>1.1",
                    "settings 1.1",
                    "update 1.1",
                    "uninstall 1.0",
                    "delete 1.0",
                    "Installed 1.1",
                    "enable 1.1",
                    "Enabled 1.1",
                ],
            ),
            // A downgrade: the old version runs the update.
            (
                Some(installed("A", "2.0", Enabled)),
                "1.5",
                NotInstalled,
                with_install,
                vec![
                    "disable 2.0",
                    "carry 2.0>1.5",
                    "settings 1.5",
                    "update 2.0",
                    "uninstall 2.0",
                    "delete 2.0",
                    "install 1.5",
                    "Installed 1.5",
                    "enable 1.5",
                    "Enabled 1.5",
                ],
            ),
            // A failed upgrade is tried again as a new version.
            (
                Some(installed("A", "1.0", Enabled)),
                "1.1",
                FailedUpgrade,
                with_install,
                vec![
                    "disable 1.0",
                    "carry 1.0>1.1",
                    "settings 1.1",
                    "update 1.1",
                    "uninstall 1.0",
                    "delete 1.0",
                    "install 1.1",
                    "Installed 1.1",
                    "enable 1.1",
                    "Enabled 1.1",
                ],
            ),
        ];
        for (old, new, state, policy, want) in rows {
            assert_eq!(
                show_ops(&enable_ops(old.as_ref(), new, state, policy)),
                want,
                "{old:?} → {new} ({state:?})"
            );
        }
    }
}
