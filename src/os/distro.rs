//! Which operating system this is, from `/etc/os-release` or `uname`, and
//! which [`Flavour`] of system actions it gets (§18.1 of PROTOCOL.md).

use std::fmt;
use std::path::Path;

/// The families whose system actions differ (§18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Any other Linux: the generic commands.
    Default,
    Debian,
    Ubuntu,
    /// RHEL, CentOS, Oracle Linux, AlmaLinux, Rocky, Fedora.
    RedHat,
    /// SLES and openSUSE.
    Suse,
    /// CoreOS and its successor Flatcar: read-only /usr, socket-activated sshd.
    CoreOs,
    FreeBsd,
}

impl Flavour {
    pub const ALL: [Flavour; 7] = [
        Flavour::Default,
        Flavour::Debian,
        Flavour::Ubuntu,
        Flavour::RedHat,
        Flavour::Suse,
        Flavour::CoreOs,
        Flavour::FreeBsd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Default => "default",
            Flavour::Debian => "debian",
            Flavour::Ubuntu => "ubuntu",
            Flavour::RedHat => "redhat",
            Flavour::Suse => "suse",
            Flavour::CoreOs => "coreos",
            Flavour::FreeBsd => "freebsd",
        }
    }

    /// Where this flavour's packages put the configuration file.
    pub fn default_config_path(self) -> &'static str {
        match self {
            Flavour::CoreOs => "/usr/share/oem/waagent.conf",
            Flavour::FreeBsd => "/usr/local/etc/waagent.conf",
            _ => "/etc/waagent.conf",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The detected operating system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    /// os-release `ID` (e.g. `ubuntu`, `rhel`), or `freebsd`.
    pub id: String,
    /// os-release `VERSION_ID` (e.g. `22.04`), or the FreeBSD release (`13.2`).
    pub version: String,
    pub flavour: Flavour,
}

impl Distro {
    /// The major version number, 0 when unknown.
    pub fn major(&self) -> u32 {
        self.version
            .split(['.', '-'])
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

/// Detects the OS under `root` (normally `/`): FreeBSD from `sysname` (the
/// kernel name `uname -s` prints) and `release`, Linux from
/// `{root}/etc/os-release` (or `{root}/usr/lib/os-release`).
pub fn detect(root: &Path, sysname: &str, release: &str) -> Distro {
    if sysname.eq_ignore_ascii_case("FreeBSD") {
        // "13.2-RELEASE-p4" → "13.2"
        let version = release.split('-').next().unwrap_or(release).to_string();
        return Distro {
            id: "freebsd".into(),
            version,
            flavour: Flavour::FreeBsd,
        };
    }
    let text = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .unwrap_or_default();
    from_os_release(&text)
}

/// Parses os-release text into a [`Distro`].
pub fn from_os_release(text: &str) -> Distro {
    let field = |name: &str| -> String {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .unwrap_or_default()
    };
    let id = field("ID").to_ascii_lowercase();
    let like = field("ID_LIKE").to_ascii_lowercase();
    let flavour = flavour_of(&id)
        .or_else(|| like.split_whitespace().find_map(flavour_of))
        .unwrap_or(Flavour::Default);
    Distro {
        id: if id.is_empty() { "unknown".into() } else { id },
        version: field("VERSION_ID"),
        flavour,
    }
}

fn flavour_of(id: &str) -> Option<Flavour> {
    Some(match id {
        "ubuntu" => Flavour::Ubuntu,
        "debian" | "kali" | "devuan" | "raspbian" => Flavour::Debian,
        "rhel" | "centos" | "ol" | "oracle" | "almalinux" | "rocky" | "fedora" => Flavour::RedHat,
        "sles" | "sled" | "suse" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => {
            Flavour::Suse
        }
        "coreos" | "flatcar" => Flavour::CoreOs,
        "freebsd" => Flavour::FreeBsd,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(os_release: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/os-release"), os_release).unwrap();
        d
    }

    /// One real os-release per supported distro, as shipped.
    #[test]
    fn each_flavour_from_os_release() {
        let cases: &[(&str, &str, &str, Flavour)] = &[
            ("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n", "debian", "12", Flavour::Debian),
            ("NAME=\"Ubuntu\"\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n", "ubuntu", "22.04", Flavour::Ubuntu),
            ("NAME=\"Red Hat Enterprise Linux\"\nVERSION_ID=\"9.4\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\n", "rhel", "9.4", Flavour::RedHat),
            ("NAME=\"CentOS Linux\"\nVERSION=\"7 (Core)\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"7\"\n", "centos", "7", Flavour::RedHat),
            ("NAME=\"Oracle Linux Server\"\nVERSION=\"8.9\"\nID=\"ol\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"8.9\"\n", "ol", "8.9", Flavour::RedHat),
            ("NAME=\"SLES\"\nVERSION=\"15-SP5\"\nVERSION_ID=\"15.5\"\nID=\"sles\"\nID_LIKE=\"suse\"\n", "sles", "15.5", Flavour::Suse),
            ("NAME=\"openSUSE Leap\"\nVERSION_ID=\"15.5\"\nID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n", "opensuse-leap", "15.5", Flavour::Suse),
            ("NAME=\"Container Linux by CoreOS\"\nID=coreos\nVERSION_ID=2345.3.0\n", "coreos", "2345.3.0", Flavour::CoreOs),
            ("NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nID_LIKE=coreos\nVERSION_ID=3815.2.0\n", "flatcar", "3815.2.0", Flavour::CoreOs),
            ("NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"21.3\"\n", "linuxmint", "21.3", Flavour::Ubuntu),
            ("NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n", "alpine", "3.19.1", Flavour::Default),
        ];
        for (text, id, version, flavour) in cases {
            let root = root_with(text);
            let d = detect(root.path(), "Linux", "6.1.0");
            assert_eq!(
                d,
                Distro {
                    id: id.to_string(),
                    version: version.to_string(),
                    flavour: *flavour
                },
                "{text}"
            );
        }
    }

    #[test]
    fn freebsd_from_uname_even_with_an_os_release() {
        let root = root_with("NAME=FreeBSD\nID=freebsd\nVERSION_ID=13.2\n");
        let d = detect(root.path(), "FreeBSD", "13.2-RELEASE-p4");
        assert_eq!(d.flavour, Flavour::FreeBsd);
        assert_eq!(d.version, "13.2");
        assert_eq!(d.major(), 13);
    }

    #[test]
    fn usr_lib_os_release_and_nothing_at_all() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            detect(d.path(), "Linux", "6.1"),
            Distro {
                id: "unknown".into(),
                version: String::new(),
                flavour: Flavour::Default
            }
        );
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::write(
            d.path().join("usr/lib/os-release"),
            "ID=debian\nVERSION_ID=11\n",
        )
        .unwrap();
        assert_eq!(detect(d.path(), "Linux", "6.1").flavour, Flavour::Debian);
    }

    #[test]
    fn major_version() {
        let d = from_os_release("ID=centos\nVERSION_ID=\"6.10\"\n");
        assert_eq!(d.major(), 6);
        assert_eq!(from_os_release("ID=x\n").major(), 0);
    }
}
