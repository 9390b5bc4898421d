//! The transport certificate (§7.1): the self-signed pair in Lib.Dir that
//! the WireServer encrypts the Certificates document to, reused or made anew.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::certificates::{private_key_identity, public_key_identity, thumbprint_of_der};
use super::pem::{first_certificate, first_private_key};
use super::{der, remove_stale_work_dirs, write_file, CryptoError, Openssl, WorkDir};
use crate::clock::Clock;
use crate::os::background::{self, Background, Poll};
use crate::os::runner::{Cmd, RunError};

/// The transport certificate, sent to the WireServer (§2.2 file name).
pub const TRANSPORT_CERT_FILE: &str = "TransportCert.pem";
/// The transport certificate's private key (§2.2 file name).
pub const TRANSPORT_KEY_FILE: &str = "TransportPrivate.pem";

/// Subject and lifetime of the transport certificate (waagent 2.2.11+).
const TRANSPORT_SUBJECT: &str = "/CN=LinuxTransport";
const TRANSPORT_DAYS: &str = "730";
/// A transport certificate this close to expiry is replaced rather than reused.
const TRANSPORT_RENEW_MARGIN_SECS: i64 = 7 * 24 * 3600;

/// Name of the transport certificate "document" in error messages.
const DOC_TRANSPORT: &str = "TransportCert";

/// The transport certificate pair in Lib.Dir, with the certificate's DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    der: Vec<u8>,
}

impl TransportCert {
    /// Loads the pair already in `lib_dir`, checking that the key belongs to
    /// the certificate (not that the certificate is still valid).
    pub fn load(openssl: &Openssl, lib_dir: &Path) -> Result<TransportCert, CryptoError> {
        let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
        let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
        let fail = |step: &str, cause: &dyn fmt::Display| {
            CryptoError::new(DOC_TRANSPORT, step.to_string(), cause)
        };
        let cert_text = fs::read_to_string(&cert_path)
            .map_err(|e| fail(&format!("cannot read {}", cert_path.display()), &e))?;
        let der = first_certificate(&cert_text).map_err(|e| {
            fail(
                &format!("{} holds no usable certificate", cert_path.display()),
                &e,
            )
        })?;
        let info = der::certificate(&der)
            .map_err(|e| fail(&format!("cannot parse {}", cert_path.display()), &e))?;
        let key_text = fs::read_to_string(&key_path)
            .map_err(|e| fail(&format!("cannot read {}", key_path.display()), &e))?;
        let key = first_private_key(&key_text)
            .map_err(|e| fail(&format!("{} holds no usable key", key_path.display()), &e))?;
        let key_id = private_key_identity(openssl, &key, DOC_TRANSPORT)?;
        if key_id != public_key_identity(info.spki) {
            return Err(fail(
                &format!(
                    "{} does not belong to {}",
                    key_path.display(),
                    cert_path.display()
                ),
                &"",
            ));
        }
        Ok(TransportCert {
            cert_path,
            key_path,
            der,
        })
    }

    /// The `x-ms-guest-agent-public-x509-cert` header value: the base64 of
    /// the DER certificate on one line (§21 item 5).
    pub fn header_value(&self) -> String {
        STANDARD.encode(&self.der)
    }

    /// Upper-case hex SHA-1 of the certificate.
    pub fn thumbprint(&self) -> String {
        thumbprint_of_der(&self.der)
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
}

/// Returns the transport pair in `lib_dir`, reusing the one there when the
/// key matches the certificate and the certificate is not about to expire,
/// and generating a new one otherwise (waagent's `openssl req` command).
///
/// waagent regenerates at every protocol detection; reusing a sound pair
/// keeps restarts cheap and changes nothing for the fabric, which encrypts
/// to whatever certificate the request carries.
pub fn ensure_transport_cert(
    openssl: &Openssl,
    lib_dir: &Path,
) -> Result<TransportCert, CryptoError> {
    match sound_pair(openssl, lib_dir) {
        Some(t) => Ok(t),
        None => generate_transport_cert(openssl, lib_dir),
    }
}

/// The transport certificate, in hand or being made.
#[derive(Debug)]
pub enum Transport {
    Ready(TransportCert),
    Pending(PendingTransport),
}

/// Like [`ensure_transport_cert`], but a new pair is generated in the
/// background: `openssl req` is started and this returns at once, so the
/// RSA key's prime search (50 ms to half a second) overlaps whatever comes
/// before the Certificates request. `now` is the daemon's clock.
pub fn start_transport_cert(
    openssl: &Openssl,
    lib_dir: &Path,
    now: Instant,
) -> Result<Transport, CryptoError> {
    if let Some(t) = sound_pair(openssl, lib_dir) {
        return Ok(Transport::Ready(t));
    }
    let (child, work) = start_req(openssl, lib_dir, KeyShape::ThreePrimes, now)?;
    Ok(Transport::Pending(PendingTransport {
        openssl: openssl.clone(),
        lib_dir: lib_dir.to_path_buf(),
        child: Box::new(child),
        work,
        shape: KeyShape::ThreePrimes,
    }))
}

/// The transport key's RSA primes.
///
/// The key only opens what the fabric seals to its certificate, and the
/// fabric sees only the modulus and exponent, which are the same for any
/// number of primes (RFC 8017 §3.2). Three primes of 683 bits are found in
/// well under half the time of two of 1024: on this project's bench machine,
/// 80 runs each of `openssl req` with OpenSSL 3.0, median 79 ms against
/// 197, p90 113 against 345. OpenSSL itself allows three primes from 1024
/// bits on, and the best attack on the key stays the factoring of its
/// 2048-bit modulus: a 683-bit factor is far beyond ECM.
///
/// An openssl that cannot make one (before 1.1.1, LibreSSL) fails at once,
/// as does OpenSSL 3's FIPS provider (FIPS 186 allows two primes), and two
/// primes are made instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyShape {
    ThreePrimes,
    TwoPrimes,
}

impl KeyShape {
    /// The shape to try after a generator of this one failed with `e`:
    /// openssl refusing three primes exits non-zero at once.
    fn fallback(self, e: &RunError) -> Option<KeyShape> {
        match (self, e) {
            (KeyShape::ThreePrimes, RunError::Failed { .. }) => {
                log::info!(
                    "openssl cannot make a three-prime transport key ({e}); \
                     making a two-prime one"
                );
                Some(KeyShape::TwoPrimes)
            }
            _ => None,
        }
    }
}

/// One generator, not two racing: racing does not pay on a 2-core machine
/// under load (measured with two-prime keys, 200 interleaved runs, first
/// exit wins; one: median 263 ms, p90 551, p99 1061; two: median 290 ms,
/// p90 563, p99 956): the second generator competes for the same cores
/// that the rest of the boot needs.
fn start_req(
    openssl: &Openssl,
    lib_dir: &Path,
    shape: KeyShape,
    now: Instant,
) -> Result<(Background, WorkDir), CryptoError> {
    let work = WorkDir::new(lib_dir, DOC_TRANSPORT)?;
    let cmd = req_cmd(openssl, &work, shape);
    let child = openssl
        .runner
        .start_captured(&cmd, now + cmd.timeout)
        .map_err(|e| CryptoError::new(DOC_TRANSPORT, GENERATE_STEP, e))?;
    Ok((child, work))
}

/// A transport certificate being generated by `openssl req` in the
/// background (see [`start_transport_cert`]), in a private working
/// directory; nothing reaches Lib.Dir until it has finished well.
pub struct PendingTransport {
    openssl: Openssl,
    lib_dir: PathBuf,
    /// Boxed: [`Transport`] holds this or a loaded pair, a quarter its size.
    child: Box<Background>,
    work: WorkDir,
    shape: KeyShape,
}

impl fmt::Debug for PendingTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingTransport")
            .field("shape", &self.shape)
            .finish()
    }
}

impl PendingTransport {
    /// Looks at the generator without waiting: `None` while it runs; the
    /// pair, written into Lib.Dir, once it has finished.
    pub fn poll(&mut self, now: Instant) -> Option<Result<TransportCert, CryptoError>> {
        if self.child.poll(now) == Poll::Running {
            return None;
        }
        let e = match self.child.result()? {
            Ok(_) => return Some(install(&self.openssl, &self.lib_dir, &self.work)),
            Err(e) => e,
        };
        let Some(shape) = self.shape.fallback(&e) else {
            return Some(Err(CryptoError::new(DOC_TRANSPORT, GENERATE_STEP, e)));
        };
        match start_req(&self.openssl, &self.lib_dir, shape, now) {
            Ok((child, work)) => {
                *self.child = child;
                self.work = work;
                self.shape = shape;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Waits on `clock` until the generator has finished (or is killed at
    /// its deadline), then returns what [`poll`](Self::poll) does. A stop
    /// request ends the wait with an error.
    pub fn wait(&mut self, clock: &dyn Clock) -> Result<TransportCert, CryptoError> {
        loop {
            if let Some(done) = self.poll(clock.now()) {
                return done;
            }
            let far = clock.now() + Duration::from_secs(3600);
            if !background::wait_any(&[&*self.child], clock, far) {
                return Err(CryptoError::new(
                    DOC_TRANSPORT,
                    GENERATE_STEP,
                    "the agent is stopping",
                ));
            }
        }
    }
}

impl Drop for PendingTransport {
    /// Not wanted any more (no Certificates, or the daemon is stopping):
    /// the generator goes, and its working directory with it.
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// The pair in `lib_dir` when it is sound and not about to expire; working
/// directories a crash left there are removed first (none can be in use:
/// only the daemon works in Lib.Dir, and it calls this before it starts one).
fn sound_pair(openssl: &Openssl, lib_dir: &Path) -> Option<TransportCert> {
    remove_stale_work_dirs(lib_dir);
    let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
    let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
    if !cert_path.exists() && !key_path.exists() {
        return None;
    }
    match TransportCert::load(openssl, lib_dir) {
        Ok(t) => match der::certificate(&t.der) {
            Ok(info) if info.not_after > now_secs() + TRANSPORT_RENEW_MARGIN_SECS => Some(t),
            _ => {
                log::info!("the transport certificate expires soon; generating a new one");
                None
            }
        },
        Err(e) => {
            log::warn!("{e}; generating a new transport certificate");
            None
        }
    }
}

const GENERATE_STEP: &str = "cannot generate the transport certificate";

/// waagent's command, writing into `work`, with the key's primes.
fn req_cmd(openssl: &Openssl, work: &WorkDir, shape: KeyShape) -> Cmd {
    let cmd = openssl
        .cmd()
        .args(["req", "-x509", "-nodes", "-subj", TRANSPORT_SUBJECT])
        .args(["-days", TRANSPORT_DAYS, "-newkey", "rsa:2048"]);
    let cmd = match shape {
        KeyShape::ThreePrimes => cmd.args(["-pkeyopt", "rsa_keygen_primes:3"]),
        KeyShape::TwoPrimes => cmd,
    };
    cmd.arg("-keyout")
        .arg(work.path().join(TRANSPORT_KEY_FILE).to_string_lossy())
        .arg("-out")
        .arg(work.path().join(TRANSPORT_CERT_FILE).to_string_lossy())
}

/// [`start_transport_cert`]'s generator, waited for at once.
fn generate_transport_cert(
    openssl: &Openssl,
    lib_dir: &Path,
) -> Result<TransportCert, CryptoError> {
    let mut shape = KeyShape::ThreePrimes;
    loop {
        let work = WorkDir::new(lib_dir, DOC_TRANSPORT)?;
        match openssl.runner.run_ok(&req_cmd(openssl, &work, shape)) {
            Ok(_) => return install(openssl, lib_dir, &work),
            Err(e) => match shape.fallback(&e) {
                Some(next) => shape = next,
                None => return Err(CryptoError::new(DOC_TRANSPORT, GENERATE_STEP, e)),
            },
        }
    }
}

/// What `openssl req` left in `work`, into Lib.Dir, checked.
fn install(
    openssl: &Openssl,
    lib_dir: &Path,
    work: &WorkDir,
) -> Result<TransportCert, CryptoError> {
    let tmp_key = work.path().join(TRANSPORT_KEY_FILE);
    let tmp_cert = work.path().join(TRANSPORT_CERT_FILE);
    let read = |p: &Path| {
        fs::read(p).map_err(|e| {
            CryptoError::new(
                DOC_TRANSPORT,
                format!("openssl req did not write {}", p.display()),
                e,
            )
        })
    };
    let key = read(&tmp_key)?;
    let cert = read(&tmp_cert)?;
    // Key first: a crash between the two renames leaves a pair that does not
    // match, which the next check replaces.
    let key_path = lib_dir.join(TRANSPORT_KEY_FILE);
    let cert_path = lib_dir.join(TRANSPORT_CERT_FILE);
    write_file(&key_path, &key, 0o600, DOC_TRANSPORT)?;
    write_file(&cert_path, &cert, 0o644, DOC_TRANSPORT)?;
    log::info!(
        "generated a new transport certificate in {}",
        lib_dir.display()
    );
    TransportCert::load(openssl, lib_dir)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::VirtualClock;
    use crate::os::runner::{Output, RecordingRunner, RunError};
    use crate::wire::crypto::testing::*;
    use std::rc::Rc;

    #[test]
    fn transport_header_is_one_line_of_der() {
        let (_dir, _runner, _openssl, transport) = setup();
        let header = transport.header_value();
        assert!(!header.contains(['\n', '\r', ' ', '-']));
        assert_eq!(STANDARD.decode(&header).unwrap(), der_of(TRANSPORT_CERT));
        assert_eq!(
            transport.thumbprint(),
            "0C93F56B4B5A1084B5D4E8800C9A7C741B481BDE"
        );
    }

    #[test]
    fn matching_pair_is_reused_without_openssl() {
        let (dir, runner, openssl, _transport) = setup();
        fs::create_dir(dir.path().join(".waagent-crypto.stale")).unwrap();
        let t = ensure_transport_cert(&openssl, dir.path()).unwrap();
        assert_eq!(t.der(), der_of(TRANSPORT_CERT));
        assert!(runner.calls().is_empty());
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn mismatched_pair_is_regenerated_with_waagents_command_and_three_primes() {
        let (dir, runner, openssl, _transport) = setup();
        // Key of another certificate: the pair does not match.
        fs::write(dir.path().join(TRANSPORT_KEY_FILE), TENANT_KEY).unwrap();
        runner.respond(|cmd| {
            let key = arg_after(cmd, "-keyout")?;
            let cert = arg_after(cmd, "-out")?;
            fs::write(key, TENANT_KEY).ok()?;
            fs::write(cert, TENANT_CERT).ok()?;
            Some(Ok(Output::ok("")))
        });
        let t = ensure_transport_cert(&openssl, dir.path()).unwrap();
        assert_eq!(t.thumbprint(), TENANT);
        let line = &runner.lines()[0];
        let work = arg_after(&runner.calls()[0], "-out").unwrap();
        let work = work.parent().unwrap().display().to_string();
        assert_eq!(
            line,
            &format!(
                "/usr/bin/openssl req -x509 -nodes -subj /CN=LinuxTransport -days 730 \
                 -newkey rsa:2048 -pkeyopt rsa_keygen_primes:3 \
                 -keyout {work}/TransportPrivate.pem -out {work}/TransportCert.pem"
            )
        );
        assert_eq!(mode(&dir.path().join(TRANSPORT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(TRANSPORT_CERT_FILE)), 0o644);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    /// The recorder's `openssl req`: writes the tenant pair where told.
    fn req_writes_the_tenant_pair(runner: &RecordingRunner) {
        runner.respond(|cmd| {
            let key = arg_after(cmd, "-keyout")?;
            let cert = arg_after(cmd, "-out")?;
            fs::write(key, TENANT_KEY).ok()?;
            fs::write(cert, TENANT_CERT).ok()?;
            Some(Ok(Output::ok("")))
        });
    }

    #[test]
    fn started_in_the_background_and_collected_when_its_child_exits() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        req_writes_the_tenant_pair(&runner);
        let clock = Rc::new(VirtualClock::new());
        runner.takes(clock.clone(), |_| Some(Duration::from_millis(250)));
        let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
        let Transport::Pending(mut p) =
            start_transport_cert(&openssl, dir.path(), clock.now()).unwrap()
        else {
            panic!("no pair in Lib.Dir, yet nothing is being generated")
        };
        assert_eq!(runner.lines().len(), 1);
        assert!(runner.lines()[0].starts_with("/usr/bin/openssl req -x509 -nodes"));
        // Running: nothing in Lib.Dir but the private working directory.
        assert!(p.poll(clock.now()).is_none());
        let work = names(dir.path());
        assert!(
            work.len() == 1 && work[0].starts_with(".waagent-crypto."),
            "{work:?}"
        );
        let t = p.wait(&*clock).unwrap();
        assert_eq!(clock.elapsed(), Duration::from_millis(250));
        assert_eq!(t.thumbprint(), TENANT);
        assert_eq!(mode(&dir.path().join(TRANSPORT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(TRANSPORT_CERT_FILE)), 0o644);
        drop(p);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
        // A sound pair is used as it is: nothing is started.
        match start_transport_cert(&openssl, dir.path(), clock.now()).unwrap() {
            Transport::Ready(t) => assert_eq!(t.thumbprint(), TENANT),
            Transport::Pending(_) => panic!("a sound pair was generated again"),
        }
        assert_eq!(runner.lines().len(), 1);
    }

    #[test]
    fn a_background_generation_that_fails_or_hangs_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.push("/usr/bin/openssl", Output::failed(1, "req: no entropy"));
        runner.push("/usr/bin/openssl", Output::failed(1, "req: no entropy"));
        let clock = Rc::new(VirtualClock::new());
        let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
        let Ok(Transport::Pending(mut p)) = start_transport_cert(&openssl, dir.path(), clock.now())
        else {
            panic!("not started")
        };
        let e = p.wait(&*clock).unwrap_err().to_string();
        // Three primes, then two; the error is the last try's.
        let lines = runner.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" -pkeyopt rsa_keygen_primes:3 "));
        assert!(!lines[1].contains("-pkeyopt"));
        assert_eq!(
            e,
            format!(
                "TransportCert: cannot generate the transport certificate: `{}` failed with exit code 1: req: no entropy",
                lines[1]
            )
        );
        drop(p);
        assert!(names(dir.path()).is_empty());

        // Hung past the command's two minutes: killed there.
        runner.takes(clock.clone(), |_| Some(Duration::from_secs(600)));
        let Ok(Transport::Pending(mut p)) = start_transport_cert(&openssl, dir.path(), clock.now())
        else {
            panic!("not started")
        };
        let e = p.wait(&*clock).unwrap_err().to_string();
        assert!(
            e.ends_with("did not finish within 120s and was killed"),
            "{e}"
        );
        // A hang is not a refusal of three primes: nothing is tried after it.
        assert_eq!(clock.elapsed(), Duration::from_secs(120));
        assert_eq!(runner.lines().len(), 3);
    }

    fn asks_three_primes(cmd: &Cmd) -> bool {
        cmd.argv().iter().any(|a| a == "rsa_keygen_primes:3")
    }

    /// An openssl before 1.1.1 (or LibreSSL) refuses `rsa_keygen_primes`.
    fn refuses_three_primes(runner: &RecordingRunner) {
        runner.respond(|cmd| {
            asks_three_primes(cmd).then(|| Ok(Output::failed(1, "req: parameter setting error")))
        });
        req_writes_the_tenant_pair(runner);
    }

    #[test]
    fn an_openssl_that_refuses_three_primes_makes_two() {
        // In the background: the two-prime generator starts when the
        // refusal is seen, and its pair is the one installed.
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        refuses_three_primes(&runner);
        let clock = Rc::new(VirtualClock::new());
        runner.takes(clock.clone(), |cmd| {
            (!asks_three_primes(cmd)).then_some(Duration::from_millis(300))
        });
        let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
        let Ok(Transport::Pending(mut p)) = start_transport_cert(&openssl, dir.path(), clock.now())
        else {
            panic!("not started")
        };
        assert!(p.poll(clock.now()).is_none(), "the fallback is not started");
        assert_eq!(runner.lines().len(), 2);
        let t = p.wait(&*clock).unwrap();
        assert_eq!(t.thumbprint(), TENANT);
        assert_eq!(clock.elapsed(), Duration::from_millis(300));
        drop(p);
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
        let lines = runner.lines();
        assert!(lines[0].contains(" -newkey rsa:2048 -pkeyopt rsa_keygen_primes:3 -keyout "));
        assert!(lines[1].contains(" -newkey rsa:2048 -keyout "));

        // Waited for at once: the same two commands.
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        refuses_three_primes(&runner);
        let openssl = Openssl::new("/usr/bin/openssl", runner.clone());
        let t = ensure_transport_cert(&openssl, dir.path()).unwrap();
        assert_eq!(t.thumbprint(), TENANT);
        let lines = runner.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" -pkeyopt rsa_keygen_primes:3 "));
        assert!(!lines[1].contains("-pkeyopt"));
        assert_eq!(
            names(dir.path()),
            vec![TRANSPORT_CERT_FILE, TRANSPORT_KEY_FILE]
        );
    }

    #[test]
    fn failed_generation_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Rc::new(RecordingRunner::new());
        runner.respond(|cmd| {
            Some(Err(RunError::Spawn {
                cmd: cmd.display(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }))
        });
        let openssl = Openssl::new("/nonexistent/openssl", runner);
        let e = ensure_transport_cert(&openssl, dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("TransportCert: cannot generate the transport certificate: cannot run `/nonexistent/openssl req "),
            "{e}"
        );
        assert!(names(dir.path()).is_empty());
    }
}
