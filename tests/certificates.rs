//! Certificates and keys end to end with the real openssl (§7 of
//! PROTOCOL.md): our committed fixtures, every transport-key/blob pair of
//! the upstream samples, transport-certificate generation, a round trip
//! through the simulator's encryption, and refusals of bad input.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

use waagent::os::runner::SystemRunner;
use waagent::sim::certs::{self as sim, CmsCipher, TenantCert};
use waagent::wire::crypto::{self, Certificate, Openssl, TransportCert};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-data/certs");
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/azure-samples");

const TENANT: &str = "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC69";
const EXTRA: &str = "F88526F7384E4488FDCB8C090F8F3CB8C15A5435";
const EC: &str = "444CD352546B2FBAAC63341802F2A590C83C8DDE";

/// `/usr/bin/openssl`, or the first `openssl` on `PATH`.
fn openssl_path() -> PathBuf {
    let default = PathBuf::from("/usr/bin/openssl");
    if default.exists() {
        return default;
    }
    which("openssl").expect("openssl is needed for these tests")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn openssl() -> Openssl {
    Openssl::new(openssl_path(), Rc::new(SystemRunner))
}

fn fixture(name: &str) -> String {
    let path = Path::new(FIXTURES).join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The upstream samples, or `None` (and a note) when this checkout has none.
fn samples() -> Option<PathBuf> {
    let dir = PathBuf::from(SAMPLES);
    if dir.is_dir() {
        Some(dir)
    } else {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        waagent::sim::skips::note(
            "certificates",
            &test,
            &format!("{} not found", dir.display()),
        );
        None
    }
}

/// The text of `<Data>`, by plain string search.
fn data_of(xml: &str) -> &str {
    let start = xml.find("<Data>").expect("<Data>") + "<Data>".len();
    let end = xml.find("</Data>").expect("</Data>");
    &xml[start..end]
}

/// A fresh Lib.Dir holding a transport pair.
fn lib_with_pair(cert: &str, key: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("TransportCert.pem"), cert).unwrap();
    fs::write(dir.path().join("TransportPrivate.pem"), key).unwrap();
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn sorted(mut v: Vec<Certificate>) -> Vec<Certificate> {
    v.sort_by(|a, b| a.thumbprint.cmp(&b.thumbprint));
    v
}

fn cert(thumbprint: &str, has_private_key: bool) -> Certificate {
    Certificate {
        thumbprint: thumbprint.to_string(),
        has_private_key,
    }
}

/// `ssh-keygen -y -f` of `key_pem` (from a 0600 copy, as ssh-keygen
/// insists), first two fields; `None` without ssh-keygen.
fn ssh_keygen_public(key_pem: &str) -> Option<String> {
    let keygen = which("ssh-keygen")?;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_rsa");
    fs::write(&key, key_pem).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(keygen)
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

// ---------------------------------------------------------------------------
// Our fixtures

#[test]
fn fixture_decrypts_to_its_thumbprints_with_right_modes() {
    let lib = lib_with_pair(
        &fixture("TransportCert.pem"),
        &fixture("TransportPrivate.pem"),
    );
    let openssl = openssl();
    let transport = TransportCert::load(&openssl, lib.path()).unwrap();
    let xml = fixture("certificates.xml");
    let certs =
        crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml)).unwrap();
    assert_eq!(sorted(certs), vec![cert(TENANT, true), cert(EXTRA, false)]);

    let p = |n: String| lib.path().join(n);
    assert_eq!(
        names(lib.path()),
        vec![
            "Certificates.pem".to_string(),
            format!("{TENANT}.crt"),
            format!("{TENANT}.prv"),
            format!("{EXTRA}.crt"),
            "TransportCert.pem".into(),
            "TransportPrivate.pem".into(),
        ],
        "no temporary file may be left behind"
    );
    assert_eq!(mode(&p(format!("{TENANT}.prv"))), 0o600);
    assert_eq!(mode(&p("Certificates.pem".into())), 0o600);
    assert_eq!(mode(&p(format!("{TENANT}.crt"))), 0o644);
    assert_eq!(mode(&p(format!("{EXTRA}.crt"))), 0o644);
    let crt = fs::read_to_string(p(format!("{TENANT}.crt"))).unwrap();
    assert_eq!(crypto::thumbprint_of_pem(&crt).unwrap(), TENANT);

    // The derived ssh-rsa line is what ssh-keygen makes of the private key,
    // both the committed one and the .prv we just wrote.
    let line = crypto::ssh_public_key(lib.path(), TENANT).unwrap();
    let committed = fixture("tenant.ssh.pub");
    let committed: Vec<&str> = committed.split_whitespace().take(2).collect();
    assert_eq!(line, committed.join(" "));
    let prv = fs::read_to_string(p(format!("{TENANT}.prv"))).unwrap();
    match (
        ssh_keygen_public(&fixture("tenant.key")),
        ssh_keygen_public(&prv),
    ) {
        (Some(from_key), Some(from_prv)) => {
            assert_eq!(line, from_key);
            assert_eq!(line, from_prv);
        }
        _ => eprintln!("ssh-keygen not found: cross-check skipped"),
    }
    assert_eq!(mode(&p(format!("{TENANT}.pub"))), 0o644);

    // A second delivery of the same document just rewrites the same files.
    let again =
        crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml)).unwrap();
    assert_eq!(sorted(again), vec![cert(TENANT, true), cert(EXTRA, false)]);
}

#[test]
fn fixture_thumbprints_agree_with_openssl() {
    for (name, thumb) in [("tenant.crt", TENANT), ("extra.crt", EXTRA), ("ec.crt", EC)] {
        assert_eq!(crypto::thumbprint_of_pem(&fixture(name)).unwrap(), thumb);
        assert_eq!(openssl_fingerprint(&Path::new(FIXTURES).join(name)), thumb);
    }
}

/// `openssl x509 -noout -fingerprint -sha1`, colons removed.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = Command::new(openssl_path())
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, hex) = text.trim().split_once('=').expect("Fingerprint=…");
    hex.replace(':', "")
}

// ---------------------------------------------------------------------------
// Upstream samples (README "Key pairs")

/// Decrypts `doc` with the pair `(cert, key)` of the samples in a fresh lib dir.
fn decrypt_sample(
    root: &Path,
    doc: &str,
    cert: &str,
    key: &str,
) -> (
    tempfile::TempDir,
    Result<Vec<Certificate>, crypto::CryptoError>,
) {
    let read = |rel: &str| fs::read_to_string(root.join(rel)).unwrap();
    let lib = lib_with_pair(&read(cert), &read(key));
    let openssl = openssl();
    let transport = TransportCert::load(&openssl, lib.path()).unwrap();
    let xml = read(doc);
    let result = crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml));
    (lib, result)
}

#[test]
fn every_sample_pair_decrypts_to_the_listed_thumbprints() {
    let Some(root) = samples() else { return };
    let wire = ("wire/trans_cert", "wire/trans_prv");
    let rotation = (
        "tenant_certificate_rotation/TransportCert.pem",
        "tenant_certificate_rotation/TransportPrivate.pem",
    );
    let hibernate = (
        "hibernate/TransportCert.pem",
        "hibernate/TransportPrivate.pem",
    );
    let old = ("v2.2.5/wire/trans_cert", "v2.2.5/wire/trans_prv");
    let f6ab = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9";
    let c8979 = "8979F1AC8C4215827BF3B5A403E6137B504D02A4";
    let cases: &[(&str, (&str, &str), Vec<Certificate>)] = &[
        (
            "wire/certs.xml",
            wire,
            vec![cert(c8979, false), cert(f6ab, true)],
        ),
        (
            "wire/certs_no_format_specified.xml",
            wire,
            vec![cert(c8979, false), cert(f6ab, true)],
        ),
        (
            "tenant_certificate_rotation/Certificates-incarnation-3.xml",
            rotation,
            vec![cert(c8979, false), cert(f6ab, true)],
        ),
        (
            "tenant_certificate_rotation/Certificates-incarnation-4.xml",
            rotation,
            vec![
                cert(c8979, false),
                cert("C0EDFF1B408001B0FD14F8F615E567F7833822D0", true),
            ],
        ),
        (
            "hibernate/goal_state_1/Certificates.xml",
            hibernate,
            vec![
                cert("1AF52E2E892C3A0DBC589F301F80073CBA924E26", true),
                cert("DC45A99039D4F9CFB0CD84D566BA065A763F3762", false),
            ],
        ),
        // RC2-40 inside the PKCS#12: the -legacy retry on OpenSSL 3.
        (
            "v2.2.5/wire/certs.xml",
            old,
            vec![
                cert("33B0ABCE4673538650971C10F7D7397E71561F35", false),
                cert("4037FBF5F1F3014F99B5D6C7799E9B20E6871CB3", true),
            ],
        ),
    ];
    for (doc, (c, k), expected) in cases {
        let (lib, result) = decrypt_sample(&root, doc, c, k);
        let got = result.unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(sorted(got), *expected, "{doc}");
        for e in expected {
            let crt = lib.path().join(format!("{}.crt", e.thumbprint));
            let text = fs::read_to_string(&crt).unwrap();
            assert_eq!(
                crypto::thumbprint_of_pem(&text).unwrap(),
                e.thumbprint,
                "{doc}"
            );
            let prv = lib.path().join(format!("{}.prv", e.thumbprint));
            assert_eq!(prv.exists(), e.has_private_key, "{doc}: {}", prv.display());
        }
        assert!(
            !names(lib.path()).iter().any(|n| n.starts_with('.')),
            "{doc}: temporary files left: {:?}",
            names(lib.path())
        );
    }
}

#[test]
fn hibernate_summary_matches_the_agents_certificates_json() {
    let Some(root) = samples() else { return };
    let (_lib, result) = decrypt_sample(
        &root,
        "hibernate/goal_state_1/Certificates.xml",
        "hibernate/TransportCert.pem",
        "hibernate/TransportPrivate.pem",
    );
    let json = fs::read_to_string(root.join("hibernate/goal_state_1/Certificates.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut expected: Vec<Certificate> = summary
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| {
            cert(
                c["thumbprint"].as_str().unwrap(),
                c["hasPrivateKey"].as_bool().unwrap(),
            )
        })
        .collect();
    expected.sort_by(|a, b| a.thumbprint.cmp(&b.thumbprint));
    assert_eq!(sorted(result.unwrap()), expected);
}

#[test]
fn blob_for_another_transport_cert_fails_and_writes_nothing() {
    let Some(root) = samples() else { return };
    let (lib, result) = decrypt_sample(
        &root,
        "wire/incorrect-certs.xml",
        "wire/trans_cert",
        "wire/trans_prv",
    );
    let e = result.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("Certificates: cannot decrypt the CMS envelope with the transport key: "),
        "{msg}"
    );
    assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    assert_eq!(
        names(lib.path()),
        vec!["TransportCert.pem", "TransportPrivate.pem"]
    );
}

// ---------------------------------------------------------------------------
// Transport certificate

#[test]
fn transport_cert_is_generated_once_and_reused() {
    let lib = tempfile::tempdir().unwrap();
    let openssl = openssl();
    let first = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    let cert_path = lib.path().join("TransportCert.pem");
    let key_path = lib.path().join("TransportPrivate.pem");
    assert_eq!(
        names(lib.path()),
        vec!["TransportCert.pem", "TransportPrivate.pem"]
    );
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&cert_path), 0o644);
    assert!(fs::read_to_string(&key_path)
        .unwrap()
        .contains("PRIVATE KEY-----"));

    // The header: one line of base64 of the DER whose SHA-1 is openssl's
    // fingerprint of the file.
    let header = first.header_value();
    assert!(!header.is_empty());
    assert!(header
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    let der = STANDARD.decode(&header).unwrap();
    let sha1: String = Sha1::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(sha1, openssl_fingerprint(&cert_path));
    assert_eq!(first.thumbprint(), sha1);
    let subject = Command::new(openssl_path())
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert_path)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout).replace(' ', "");
    assert_eq!(subject.trim(), "subject=CN=LinuxTransport");

    // Three primes (PROTOCOL.md §7.1): the fabric sees only the modulus.
    assert_eq!(rsa_shape(&key_path), "(2048 bit, 3 primes)");

    // Second call: same files, untouched.
    let stamp = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec(), m.ino(), fs::read(p).unwrap())
    };
    let before = (stamp(&cert_path), stamp(&key_path));
    let second = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    assert_eq!(second, first);
    assert_eq!((stamp(&cert_path), stamp(&key_path)), before);
}

/// What `openssl pkey -text` says of the key: "(2048 bit, 3 primes)", or
/// "(2048 bit, 2 primes)".
fn rsa_shape(key: &Path) -> String {
    let out = Command::new(openssl_path())
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    first.trim_start_matches("Private-Key: ").to_string()
}

/// An openssl before 1.1.1, or LibreSSL, has no multi-prime keys: it
/// fails at once on `rsa_keygen_primes`. The agent makes two primes then,
/// and the pair works as any other.
#[test]
fn an_openssl_without_multi_prime_keys_gets_a_two_prime_key() {
    let bin = tempfile::tempdir().unwrap();
    let old = bin.path().join("openssl");
    fs::write(
        &old,
        format!(
            "#!/bin/sh\n\
             case \"$*\" in *rsa_keygen_primes*) echo 'req: parameter setting error' >&2; exit 1;; esac\n\
             exec {} \"$@\"\n",
            openssl_path().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    let openssl = Openssl::new(&old, Rc::new(SystemRunner));
    let lib = tempfile::tempdir().unwrap();
    let transport = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    let key_path = lib.path().join("TransportPrivate.pem");
    assert_eq!(rsa_shape(&key_path), "(2048 bit, 2 primes)");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(
        names(lib.path()),
        vec!["TransportCert.pem", "TransportPrivate.pem"]
    );
    let tenant = TenantCert {
        cert_pem: fixture("extra.crt"),
        key_pem: None,
    };
    let xml = sim::certificates_xml(&transport.header_value(), &[tenant], "1").unwrap();
    let certs =
        crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml)).unwrap();
    assert_eq!(certs, vec![cert(EXTRA, false)]);
}

#[test]
fn a_key_that_does_not_match_causes_regeneration() {
    let openssl = openssl();
    for bad_key in [
        fixture("tenant.key"),
        "not a key at all\n".to_string(),
        String::new(),
    ] {
        let lib = lib_with_pair(&fixture("TransportCert.pem"), &bad_key);
        let t = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
        assert_ne!(t.der(), first_der(&fixture("TransportCert.pem")));
        // The new pair is sound: it loads, and a blob sealed to it opens.
        assert_eq!(TransportCert::load(&openssl, lib.path()).unwrap(), t);
        assert_eq!(mode(&lib.path().join("TransportPrivate.pem")), 0o600);
        assert_eq!(
            names(lib.path()),
            vec!["TransportCert.pem", "TransportPrivate.pem"]
        );
    }
    // Only one half present.
    let lib = tempfile::tempdir().unwrap();
    fs::write(
        lib.path().join("TransportPrivate.pem"),
        fixture("TransportPrivate.pem"),
    )
    .unwrap();
    let t = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    assert_eq!(TransportCert::load(&openssl, lib.path()).unwrap(), t);
}

#[test]
fn a_transport_cert_about_to_expire_is_replaced() {
    let lib = tempfile::tempdir().unwrap();
    let out = Command::new(openssl_path())
        .args([
            "req",
            "-x509",
            "-nodes",
            "-subj",
            "/CN=LinuxTransport",
            "-days",
            "1",
        ])
        .args(["-newkey", "rsa:2048", "-keyout"])
        .arg(lib.path().join("TransportPrivate.pem"))
        .arg("-out")
        .arg(lib.path().join("TransportCert.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let openssl = openssl();
    let old = TransportCert::load(&openssl, lib.path()).unwrap();
    let new = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    assert_ne!(new.der(), old.der());
    assert_eq!(
        crypto::ensure_transport_cert(&openssl, lib.path()).unwrap(),
        new
    );
}

fn first_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body).unwrap()
}

// ---------------------------------------------------------------------------
// Simulator round trip

#[test]
fn simulator_documents_decrypt_with_our_transport_cert() {
    let lib = tempfile::tempdir().unwrap();
    let openssl = openssl();
    let transport = crypto::ensure_transport_cert(&openssl, lib.path()).unwrap();
    let tenant = sim::generate_tenant_cert("waagent-rs round trip").unwrap();
    let thumb = tenant.thumbprint();
    let extra = TenantCert {
        cert_pem: fixture("extra.crt"),
        key_pem: None,
    };
    for cipher in [CmsCipher::Aes128Cbc, CmsCipher::DesEde3Cbc] {
        let xml = sim::certificates_xml_with(
            &transport.header_value(),
            &[extra.clone(), tenant.clone()],
            "7",
            cipher,
        )
        .unwrap();
        assert!(xml.contains("<Incarnation>7</Incarnation>"));
        let certs = crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml))
            .unwrap_or_else(|e| panic!("{}: {e}", cipher.name()));
        let mut expected = vec![cert(&thumb, true), cert(EXTRA, false)];
        expected.sort_by(|a, b| a.thumbprint.cmp(&b.thumbprint));
        assert_eq!(sorted(certs), expected, "{}", cipher.name());
    }
    // End to end to an SSH key.
    let line = crypto::ssh_public_key(lib.path(), &thumb).unwrap();
    if let Some(expected) = ssh_keygen_public(tenant.key_pem.as_deref().unwrap()) {
        assert_eq!(line, expected);
    }
    // The default is AES-128, and certificates alone (no key) work too.
    let xml =
        sim::certificates_xml(&transport.header_value(), &[tenant.without_key()], "8").unwrap();
    let certs =
        crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml)).unwrap();
    assert_eq!(certs, vec![cert(&thumb, false)]);
}

#[test]
fn ec_keys_pair_through_openssl_pkey() {
    let lib = lib_with_pair(
        &fixture("TransportCert.pem"),
        &fixture("TransportPrivate.pem"),
    );
    let openssl = openssl();
    let transport = TransportCert::load(&openssl, lib.path()).unwrap();
    let ec = TenantCert {
        cert_pem: fixture("ec.crt"),
        key_pem: Some(fixture("ec.key")),
    };
    let xml = sim::certificates_xml(&transport.header_value(), &[ec], "1").unwrap();
    let certs =
        crypto::decrypt_certificates(&openssl, lib.path(), &transport, data_of(&xml)).unwrap();
    assert_eq!(certs, vec![cert(EC, true)]);
    let e = crypto::ssh_public_key(lib.path(), EC).unwrap_err();
    assert!(e.to_string().contains("is not RSA"), "{e}");
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn bad_data_is_a_clear_error_and_writes_nothing() {
    let lib = lib_with_pair(
        &fixture("TransportCert.pem"),
        &fixture("TransportPrivate.pem"),
    );
    let openssl = openssl();
    let transport = TransportCert::load(&openssl, lib.path()).unwrap();
    let blob = STANDARD
        .decode(
            data_of(&fixture("certificates.xml"))
                .split_whitespace()
                .collect::<String>(),
        )
        .unwrap();
    let truncated = STANDARD.encode(&blob[..blob.len() / 2]);
    let random = STANDARD.encode([0x5au8; 300]);
    let key_lines: Vec<String> = fixture("TransportPrivate.pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    for (data, expected) in [
        (
            "%%% not base64 %%%",
            "Certificates: the <Data> element is not base64: ",
        ),
        ("", "Certificates: the <Data> element is empty"),
        ("\n  \n", "Certificates: the <Data> element is empty"),
        (
            truncated.as_str(),
            "Certificates: cannot decrypt the CMS envelope with the transport key: ",
        ),
        (
            random.as_str(),
            "Certificates: cannot decrypt the CMS envelope with the transport key: ",
        ),
    ] {
        let e = crypto::decrypt_certificates(&openssl, lib.path(), &transport, data).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(expected), "{data:.20}: {msg}");
        assert!(!key_lines.iter().any(|l| msg.contains(l.as_str())), "{msg}");
        assert_eq!(
            names(lib.path()),
            vec!["TransportCert.pem", "TransportPrivate.pem"]
        );
    }
}

#[test]
fn thumbprints_that_are_not_hex_are_refused() {
    let lib = tempfile::tempdir().unwrap();
    for bad in [
        "../../etc/passwd",
        "",
        "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC6",
        "F00305206ABF9DAFCEBFE9A1CB2E6B9FFF18FC6/",
    ] {
        let e = crypto::ssh_public_key(lib.path(), bad).unwrap_err();
        assert!(
            e.to_string().contains("is not 40 hexadecimal digits"),
            "{e}"
        );
    }
    assert!(names(lib.path()).is_empty());
}
