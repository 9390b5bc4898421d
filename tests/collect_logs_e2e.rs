//! `-collect-logs [-full]` end to end: in the throwaway-VM sandbox, the
//! real `waagent -daemon` provisions from an Azure-like DVD (a password,
//! custom data, an SSH key pair from the Certificates) against `fabric-sim`
//! on the platform addresses, and runs an extension whose protected
//! settings hold the admin password and a token; the handler decrypts them
//! as real ones do and logs its settings file. Then `waagent -collect-logs`
//! and `-collect-logs -full` run, and their archives are opened here with
//! the zip crate: the expected files are in them, and no byte of the
//! password, the private keys, the protected settings (sealed or plain)
//! or the custom data is, although each is first shown to be on the VM's
//! disk.

#[path = "common/sandbox.rs"]
mod sandbox;
#[path = "common/vm.rs"]
mod vm;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use sandbox::{Options, Sandbox};
use serde_json::{json, Value};
use vm::{DMI_UUID, FULL_PASSWORD};
use zip::ZipArchive;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const HANDLER_NAME: &str = "Contoso.Test.Secret";
/// The protected settings' token: plaintext only once the handler has
/// decrypted them.
const TOKEN: &str = "protected-plaintext-7f3a9c";
/// test-data/ovf/full.xml's CustomData, as Lib.Dir's ovf-env.xml keeps it.
const CUSTOM_DATA: &str =
    "IyEvYmluL3NoCmVjaG8gJ2hlbGxvIGZyb20gY3VzdG9tIGRhdGEnID4gL3Zhci90bXAvY3VzdG9tLWRhdGEtcmFuCg==";

/// The handler: `enable` decrypts its protected settings with the
/// certificate and key the agent wrote (as extensions do) into its own
/// directory, logs its settings file (some handlers do), writes a log in
/// its directory and a status, and says so in /work/enabled.
const HANDLER: &str = r#"#!/bin/sh
cd "$(dirname "$0")/.." || exit 9
[ "$1" = enable ] || exit 0
seq=$ConfigSequenceNumber
s=config/$seq.settings
log=/var/log/azure/Contoso.Test.Secret
mkdir -p $log
thumb=$(sed -n 's/.*"protectedSettingsCertThumbprint": *"\([0-9A-Fa-f]*\)".*/\1/p' $s)
sed -n 's/.*"protectedSettings": *"\([^"]*\)".*/\1/p' $s | base64 -d > /tmp/protected.der
openssl smime -decrypt -inform DER -in /tmp/protected.der -recip /var/lib/waagent/$thumb.crt \
    -inkey /var/lib/waagent/$thumb.prv > protected.json 2>> $log/extension.log
echo "enable $seq with settings: $(cat $s)" >> $log/extension.log
echo "enable $seq done" >> handler.log
mkdir -p status
printf '[{"version":1.0,"timestampUTC":"2026-12-04T00:00:00Z","status":{"name":"Secret","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"enabled"}}}]' > status/$seq.status
touch /work/enabled
exit 0
"#;

const HANDLER_MANIFEST: &str = r#"[{"name":"Secret","version":1.0,"handlerManifest":{
 "installCommand":"bin/handler.sh install","uninstallCommand":"bin/handler.sh uninstall",
 "updateCommand":"bin/handler.sh update","enableCommand":"bin/handler.sh enable",
 "disableCommand":"bin/handler.sh disable","rebootAfterInstall":false,"reportHeartbeat":false}}]"#;

const DRIVER: &str = r#"#!/bin/sh
set -u
cd /work
./fabric-sim --wire 168.63.129.16:80 --plugin 168.63.129.16:32526 --imds 169.254.169.254:80 \
    --tenant-cert /work/tenant.crt:/work/tenant.key --handlers /work/handlers.json \
    --record /work/fabric.jsonl > /work/fabric.log 2>&1 &
i=0; until grep -q 'fabric-sim:' /work/fabric.log 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && exit 90; sleep 0.05; done
./waagent -daemon -configuration-path:/work/waagent.conf > /work/daemon.out 2>&1 &
daemon=$!
i=0; until [ -e /work/enabled ]; do
    i=$((i+1)); [ $i -gt 1200 ] && { echo "the handler was never enabled" >> /work/driver.err; break; }
    sleep 0.05
done
kill -TERM $daemon; wait $daemon
echo "Dec  4 23:59:59 vm kernel: a syslog line" > /var/log/syslog
# What is on the disk, for the test to find its needles in.
mkdir -p /work/disk
h=$(ls -d /var/lib/waagent/Contoso.Test.Secret-*)
cp /var/lib/waagent/*.prv /var/lib/waagent/TransportPrivate.pem /var/lib/waagent/ovf-env.xml \
   /var/lib/waagent/ExtensionsConfig.*.xml /home/azureuser/.ssh/id_rsa \
   $h/protected.json $h/config/0.settings /var/log/azure/Contoso.Test.Secret/extension.log /work/disk/
ls /var/lib/waagent > /work/lib.ls
for mode in normal full; do
    flag=; [ $mode = full ] && flag=-full
    ./waagent -collect-logs $flag -configuration-path:/work/waagent.conf > /work/$mode.out 2> /work/$mode.err
    echo $? > /work/$mode.rc
    stat -c '%a %s' /var/lib/waagent/logcollector/logs.zip > /work/$mode.stat
    cp /var/lib/waagent/logcollector/logs.zip /work/$mode.zip
done
ls -a /var/lib/waagent/logcollector > /work/logcollector.ls
exit 0
"#;

const CONF: &str = "Provisioning.Agent=waagent
Provisioning.PasswordCryptId=6
Logs.File=/work/waagent.log
Logs.Console=n
Extensions.GoalStatePeriod=1
Extensions.InitialGoalStatePeriod=1
";

fn package() -> Vec<u8> {
    vm::handler_package(
        &[
            ("HandlerManifest.json", HANDLER_MANIFEST),
            ("bin/handler.sh", HANDLER),
        ],
        0o755,
    )
}

/// Every entry of a zip: name and uncompressed bytes.
fn entries(zip: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().unwrap().into_owned(), data)
        })
        .collect()
}

/// The base64 lines of every PEM private key in `pem`.
fn key_lines(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in pem.lines() {
        if l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY") {
            inside = true;
        } else if l.starts_with("-----END") {
            inside = false;
        } else if inside && l.len() >= 32 {
            out.push(l.to_string());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && hay.windows(n.len()).any(|w| w == n)
}

#[test]
fn collected_logs_hold_what_support_needs_and_no_secret() {
    if sandbox::skip("collected_logs_hold_what_support_needs_and_no_secret") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vm::stage_binaries_and_tenant_cert(d);
    std::fs::write(d.join("secret-1.0.0.zip"), package()).unwrap();
    let handlers = json!([{
        "name": HANDLER_NAME,
        "version": "1.0.0",
        "seqNo": 0,
        "publicSettings": {"message": "public hello"},
        "protectedSettings": {"username": "azureuser", "password": FULL_PASSWORD, "token": TOKEN},
        "protectedSettingsCert": "tenant.crt",
        "packages": [{"version": "1.0.0", "zip": "secret-1.0.0.zip"}],
    }]);
    std::fs::write(d.join("handlers.json"), handlers.to_string()).unwrap();
    std::fs::write(d.join("waagent.conf"), CONF).unwrap();
    let ovf = Path::new(MANIFEST_DIR).join("test-data/ovf/full.xml");
    let iso = d.join("ovf.iso");
    Sandbox::make_ovf_iso(&ovf, &iso, &[]).expect("make the provisioning ISO");
    let driver = d.join("driver.sh");
    std::fs::write(&driver, DRIVER).unwrap();
    std::fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let opts = Options::default()
        .iso(&iso)
        .bind(d, "/work")
        .dmi_uuid(DMI_UUID);
    let out = Sandbox::command(&opts, &["/work/driver.sh"])
        .stdin(Stdio::null())
        .output()
        .expect("run the sandbox");
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let ctx = format!(
        "sandbox: {}\nstderr: {}\ndriver: {}\nhandler log: {}\nnormal: {}{}\nfull: {}{}\nagent log (tail):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        read("driver.err"),
        read("disk/extension.log"),
        read("normal.out"),
        read("normal.err"),
        read("full.out"),
        read("full.err"),
        read("waagent.log")
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "{ctx}");
    assert_eq!(read("driver.err"), "", "{ctx}");

    // The needles, each shown to be on the VM's disk first.
    let disk = |name: &str| read(&format!("disk/{name}"));
    let mut needles: Vec<(String, String)> = Vec::new();
    assert!(disk("protected.json").contains(FULL_PASSWORD), "{ctx}");
    assert!(disk("protected.json").contains(TOKEN), "{ctx}");
    needles.push(("the admin password".into(), FULL_PASSWORD.into()));
    needles.push(("the protected settings' token".into(), TOKEN.into()));
    let settings: Value = serde_json::from_str(&disk("0.settings")).expect("0.settings on disk");
    let sealed = settings["runtimeSettings"][0]["handlerSettings"]["protectedSettings"]
        .as_str()
        .expect("sealed protected settings on disk")
        .to_string();
    assert!(sealed.len() > 200, "{sealed}");
    let sealed_part = sealed[100..164].to_string();
    let ext_config: String = read("lib.ls")
        .lines()
        .filter(|n| n.starts_with("ExtensionsConfig."))
        .map(&disk)
        .collect();
    assert!(ext_config.contains(&sealed_part), "{ctx}");
    assert!(
        disk("extension.log").contains(&sealed_part),
        "the handler logged its settings"
    );
    needles.push(("the sealed protected settings".into(), sealed_part));
    assert!(disk("ovf-env.xml").contains(CUSTOM_DATA), "{ctx}");
    needles.push(("the custom data".into(), CUSTOM_DATA[..40].into()));
    let prv: Vec<String> = read("lib.ls")
        .lines()
        .filter(|n| n.ends_with(".prv"))
        .map(str::to_string)
        .collect();
    assert!(!prv.is_empty(), "no .prv in Lib.Dir: {}", read("lib.ls"));
    for key in prv
        .iter()
        .map(String::as_str)
        .chain(["TransportPrivate.pem", "id_rsa"])
    {
        let lines = key_lines(&disk(key));
        assert!(
            lines.len() >= 5,
            "{key} holds no private key on disk: {ctx}"
        );
        for l in lines {
            needles.push((format!("a line of {key}"), l));
        }
    }

    let lib = "var/lib/waagent";
    let handler_dir = format!("{lib}/{HANDLER_NAME}-1.0.0");
    let mut archives = Vec::new();
    for mode in ["normal", "full"] {
        assert_eq!(read(&format!("{mode}.rc")).trim(), "0", "{mode}: {ctx}");
        let zip = d.join(format!("{mode}.zip"));
        let all = entries(&zip);
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        // Where, how big, how many: as on the disk.
        let (mode_bits, size) = read(&format!("{mode}.stat"))
            .trim()
            .split_once(' ')
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .unwrap_or_default();
        assert_eq!(mode_bits, "600", "{mode}");
        let said = read(&format!("{mode}.out"));
        let want = format!(
            "waagent: wrote /var/lib/waagent/logcollector/logs.zip: {size} bytes, {} files (",
            all.len()
        );
        assert!(said.starts_with(&want), "{mode}: {said}\nwanted {want}");
        for want in [
            "results.txt".to_string(),
            "commands/ip_addr.txt".into(),
            "commands/ip_route.txt".into(),
            "commands/df.txt".into(),
            "commands/dmesg.txt".into(),
            "proc/mounts".into(),
            "proc/cmdline".into(),
            "work/waagent.log".into(),
            format!("{lib}/Incarnation"),
            format!("{lib}/GoalState.1.xml"),
            format!("{lib}/HostingEnvironmentConfig.xml"),
            format!("{lib}/SharedConfig.xml"),
            format!("{lib}/ExtensionsConfig.1.xml"),
            format!("{lib}/ovf-env.xml"),
            format!("{lib}/provisioned"),
            format!("{handler_dir}/HandlerManifest.json"),
            format!("{handler_dir}/config/0.settings"),
            format!("{handler_dir}/config/HandlerState"),
            format!("{handler_dir}/status/0.status"),
            format!("var/log/azure/{HANDLER_NAME}/extension.log"),
        ] {
            assert!(
                names.contains(&want.as_str()),
                "{mode}: {want} not in {names:?}"
            );
        }
        let full_only = [
            format!("{handler_dir}/handler.log"),
            "var/log/syslog".to_string(),
        ];
        for n in &full_only {
            assert_eq!(
                names.contains(&n.as_str()),
                mode == "full",
                "{mode}: {n} in {names:?}"
            );
        }
        for n in &names {
            assert!(
                !n.ends_with(".prv")
                    && !n.ends_with(".pem")
                    && !n.contains("Certificates")
                    && !n.ends_with("protected.json")
                    && !n.ends_with("id_rsa"),
                "{mode}: {n} collected"
            );
        }
        // The settings file is there, without its protected part.
        let get = |name: &str| {
            let (_, data) = all.iter().find(|(n, _)| n == name).unwrap();
            String::from_utf8_lossy(data).into_owned()
        };
        let s: Value =
            serde_json::from_str(&get(&format!("{handler_dir}/config/0.settings"))).unwrap();
        let hs = &s["runtimeSettings"][0]["handlerSettings"];
        assert_eq!(hs["protectedSettings"], "[REDACTED]", "{mode}");
        assert_eq!(hs["publicSettings"]["message"], "public hello", "{mode}");
        let ovf = get(&format!("{lib}/ovf-env.xml"));
        assert!(
            ovf.contains("<HostName>web-01.contoso.internal</HostName>"),
            "{ovf}"
        );
        let results = get("results.txt");
        for p in prv
            .iter()
            .map(String::as_str)
            .chain(["TransportPrivate.pem"])
        {
            assert!(
                results.contains(&format!("/var/lib/waagent/{p}: a private key")),
                "{mode}: {p} not reported as left out:\n{results}"
            );
        }
        for l in read("lib.ls")
            .lines()
            .filter(|n| n.starts_with("Certificates"))
        {
            assert!(
                results.contains(&format!("/var/lib/waagent/{l}: the certificates")),
                "{mode}: {l} not reported:\n{results}"
            );
        }
        // Not one needle in all the archive's bytes.
        let bytes: Vec<u8> = all.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        for (what, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "{mode}: {what} is in the archive"
            );
            assert!(
                !contains(&std::fs::read(&zip).unwrap(), needle),
                "{mode}: {what} in the zip"
            );
        }
        archives.push(all.len());
    }
    assert!(archives[1] > archives[0], "-full adds files: {archives:?}");
    // The second archive replaced the first; no temporary file is left.
    assert_eq!(
        read("logcollector.ls").lines().collect::<Vec<_>>(),
        [".", "..", "logs.zip"]
    );
}
