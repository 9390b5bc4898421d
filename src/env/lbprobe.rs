//! `LBProbeResponder=y` (§18.9): answer the Azure load balancer's health
//! probes on the goal state's `LBProbePorts`, as waagent 2.0 did, so a
//! load-balanced VM is taken into rotation without a service of its own on
//! the probe port.
//!
//! No thread: the listeners are non-blocking and the daemon's idle wait
//! watches them ([`crate::clock::Clock::sleep_watching`]). A connection is
//! accepted, given [`REPLY`] with one non-blocking write, and its sending
//! side shut; what the prober sends is read and dropped, a bounded amount,
//! until it hangs up (so the close is a FIN, not a reset that could beat
//! the reply), or at most [`LINGER`], or until [`MAX_LINGERING`] newer
//! connections push it out. Nothing waits on a client.
//!
//! What to open and close is pure ([`diff`]); the sockets are
//! [`Responder`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::clock::Watched;

/// The answer to every probe: 200, nothing more to read, and the server
/// closes. (2.0 sent a two-byte `OK` body and a `Date`; the load balancer
/// looks at the status line only.)
pub const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How long an answered connection is kept to read the request and see
/// the prober hang up.
pub const LINGER: Duration = Duration::from_secs(2);
/// The most answered connections kept lingering at once; the oldest is
/// closed to make room.
pub const MAX_LINGERING: usize = 32;
/// The most of a request read (and dropped) per connection.
const MAX_REQUEST_BYTES: usize = 4096;
/// The most connections accepted from one listener per readiness: a flood
/// on one port cannot keep the loop from its other work.
const ACCEPTS_PER_WAKE: usize = 16;

/// What changes when the ports listened on go from `current` to `wanted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Ports to stop listening on, ascending.
    pub close: Vec<u16>,
    /// Ports to start listening on, ascending.
    pub open: Vec<u16>,
}

/// The listeners to close and open to go from `current` to `wanted`.
pub fn diff(current: &BTreeSet<u16>, wanted: &BTreeSet<u16>) -> Change {
    Change {
        close: current.difference(wanted).copied().collect(),
        open: wanted.difference(current).copied().collect(),
    }
}

/// An answered connection, read from until the prober hangs up.
struct Lingering {
    stream: TcpStream,
    since: Instant,
    read: usize,
}

/// The listening sockets and the connections being closed.
#[derive(Default)]
pub struct Responder {
    /// Where the listeners are bound; `None` before the first [`Responder::set`].
    addr: Option<Ipv4Addr>,
    listeners: BTreeMap<u16, TcpListener>,
    /// Ports that could not be bound, said once each: tried again at each
    /// [`Responder::set`], warned about again only after they were listened
    /// on or left the goal state.
    failed: BTreeSet<u16>,
    lingering: Vec<Lingering>,
    /// Probes answered since start.
    answered: u64,
}

impl Responder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ports listened on now.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Where the listeners are bound.
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.addr
    }

    /// Probes answered since start.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Listens on exactly `wanted` at `addr`: closes the listeners no longer
    /// wanted (all of them when the address changed) and opens the new
    /// ones. A port that cannot be bound (in use, privileged, an address
    /// gone) is a warning naming it; the others go on.
    pub fn set(&mut self, addr: Ipv4Addr, wanted: &BTreeSet<u16>) {
        if self.addr.is_some_and(|a| a != addr) && !self.listeners.is_empty() {
            log::info!(
                "LBProbeResponder: the address is now {addr}; listening there instead of {}",
                self.addr.map_or(String::new(), |a| a.to_string())
            );
            self.listeners.clear();
        }
        self.addr = Some(addr);
        self.failed.retain(|p| wanted.contains(p));
        let change = diff(&self.ports(), wanted);
        for port in &change.close {
            self.listeners.remove(port);
            log::info!("LBProbeResponder: stopped listening on {addr}:{port}");
        }
        for port in change.open {
            match listen(addr, port) {
                Ok(l) => {
                    log::info!("LBProbeResponder: answering load-balancer probes on {addr}:{port}");
                    self.failed.remove(&port);
                    self.listeners.insert(port, l);
                }
                Err(e) => {
                    if self.failed.insert(port) {
                        log::warn!(
                            "LBProbeResponder: cannot listen on port {port} ({addr}:{port}): {e}; \
                             probes on it go unanswered"
                        );
                    }
                }
            }
        }
        self.expire(Instant::now());
    }

    /// Accepts what is waiting on `listener`'s port and answers it.
    fn accept(&mut self, port: u16) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let Some(l) = self.listeners.get(&port) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    log::debug!("LBProbeResponder: probe from {peer} on port {port}");
                    self.answer(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ECONNABORTED and the like: that connection is gone, and
                // EMFILE must not spin; the next readiness tries again.
                Err(e) => {
                    log::debug!("LBProbeResponder: accept on port {port}: {e}");
                    return;
                }
            }
        }
    }

    fn answer(&mut self, mut stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        // A fresh socket's send buffer takes the whole reply; a short or
        // refused write is not waited out.
        if stream.write(REPLY).is_ok_and(|n| n == REPLY.len()) {
            self.answered += 1;
        }
        let _ = stream.shutdown(Shutdown::Write);
        let now = Instant::now();
        self.expire(now);
        if self.lingering.len() >= MAX_LINGERING {
            self.lingering.remove(0);
        }
        let mut conn = Lingering {
            stream,
            since: now,
            read: 0,
        };
        // The request may be there already; if the prober has hung up too,
        // the connection is done.
        if drain(&mut conn) {
            self.lingering.push(conn);
        }
    }

    /// Closes the connections lingering longer than [`LINGER`].
    fn expire(&mut self, now: Instant) {
        self.lingering
            .retain(|c| now.saturating_duration_since(c.since) < LINGER);
    }
}

/// Reads and drops what `conn` has to read; false when it is done with
/// (the prober hung up, an error, or more than a request's worth).
fn drain(conn: &mut Lingering) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                conn.read += n;
                if conn.read > MAX_REQUEST_BYTES {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A non-blocking listener on `addr:port` (close-on-exec, `SO_REUSEADDR`,
/// as std makes them). Port 0 is refused: it would listen on a port
/// nobody asked for.
fn listen(addr: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    if port == 0 {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "0 is not a port",
        ));
    }
    let l = TcpListener::bind(SocketAddrV4::new(addr, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Watched for Responder {
    fn fds(&self) -> Vec<RawFd> {
        self.listeners
            .values()
            .map(AsRawFd::as_raw_fd)
            .chain(self.lingering.iter().map(|c| c.stream.as_raw_fd()))
            .collect()
    }

    fn readable(&mut self, fd: RawFd) {
        if let Some(port) = self
            .listeners
            .iter()
            .find(|(_, l)| l.as_raw_fd() == fd)
            .map(|(p, _)| *p)
        {
            self.accept(port);
            return;
        }
        if let Some(i) = self
            .lingering
            .iter()
            .position(|c| c.stream.as_raw_fd() == fd)
        {
            if !drain(&mut self.lingering[i]) {
                self.lingering.remove(i);
            }
        }
        self.expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn the_diff_closes_what_is_gone_and_opens_what_is_new() {
        assert_eq!(diff(&set(&[]), &set(&[])), Change::default());
        assert_eq!(
            diff(&set(&[]), &set(&[80, 443])),
            Change {
                close: vec![],
                open: vec![80, 443]
            }
        );
        assert_eq!(
            diff(&set(&[80, 443, 16001]), &set(&[443, 8080])),
            Change {
                close: vec![80, 16001],
                open: vec![8080]
            }
        );
        assert_eq!(
            diff(&set(&[80]), &set(&[])),
            Change {
                close: vec![80],
                open: vec![]
            }
        );
        assert_eq!(diff(&set(&[80]), &set(&[80])), Change::default());
    }

    #[test]
    fn the_reply_is_a_complete_empty_200_that_closes() {
        let text = std::str::from_utf8(REPLY).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        // Exactly one header block, ended by the blank line, no body.
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(text.matches("\r\n\r\n").count(), 1);
    }

    /// A free port on loopback below the ephemeral range (Linux's starts at
    /// 32768): the tests check that a closed port refuses connections, and
    /// a port there could meanwhile be handed to another test's bind(0) or
    /// connect in this process.
    fn free_port() -> u16 {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let start = 20000 + (std::process::id() % 5000) as u16;
        loop {
            let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 7000;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    /// Connects from another thread while the wait runs; returns what the
    /// client read (until the server closed).
    fn probe_during_wait(r: &mut Responder, port: u16, request: &'static [u8]) -> Vec<u8> {
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(request).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("reading the reply: {e} after {got:?}"),
                }
            }
            got
        });
        // Wait until the client has its answer: the wait is long enough,
        // and the thread is joined only after it.
        while !client.is_finished() {
            assert!(SystemClock.sleep_watching(Duration::from_millis(200), r));
        }
        client.join().unwrap()
    }

    /// A real TCP client on loopback gets the 200 while the daemon's kind of
    /// wait runs; a port dropped is closed (connections refused); a port
    /// added is opened.
    #[test]
    fn a_probe_on_loopback_is_answered_during_the_wait() {
        let (p1, p2) = (free_port(), free_port());
        let lo = Ipv4Addr::LOCALHOST;
        let mut r = Responder::new();
        r.set(lo, &set(&[p1]));
        assert_eq!(r.ports(), set(&[p1]));

        let got = probe_during_wait(&mut r, p1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(got, REPLY);
        // A bare TCP connect (the load balancer's TCP probe) is answered too.
        let got = probe_during_wait(&mut r, p1, b"");
        assert_eq!(got, REPLY);
        assert_eq!(r.answered(), 2);

        r.set(lo, &set(&[p2]));
        assert_eq!(r.ports(), set(&[p2]));
        let refused = TcpStream::connect(("127.0.0.1", p1)).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(
            probe_during_wait(&mut r, p2, b"HEAD / HTTP/1.0\r\n\r\n"),
            REPLY
        );

        // A goal state without ports: nothing listens.
        r.set(lo, &set(&[]));
        assert!(r.ports().is_empty());
        let refused = TcpStream::connect(("127.0.0.1", p2)).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    }

    /// A port another socket holds is skipped (and tried again at the next
    /// set); the others are listened on.
    #[test]
    fn a_port_in_use_is_skipped_and_the_others_listen() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let free = free_port();
        let lo = Ipv4Addr::LOCALHOST;
        let mut r = Responder::new();
        r.set(lo, &set(&[busy, free]));
        assert_eq!(r.ports(), set(&[free]));
        assert_eq!(r.failed, set(&[busy]));
        drop(taken);
        r.set(lo, &set(&[busy, free]));
        assert_eq!(r.ports(), set(&[busy, free]));
        assert!(r.failed.is_empty());
        assert_eq!(probe_during_wait(&mut r, busy, b""), REPLY);
    }

    /// A client that never sends nor hangs up is not waited for: the
    /// next probe is answered while it still holds its connection, and it
    /// is let go after LINGER.
    #[test]
    fn a_silent_client_blocks_nothing() {
        let port = free_port();
        let mut r = Responder::new();
        r.set(Ipv4Addr::LOCALHOST, &set(&[port]));
        let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(probe_during_wait(&mut r, port, b""), REPLY);
        assert_eq!(r.answered(), 2);
        // Its reply is there to read, whatever it does next.
        let mut got = Vec::new();
        silent
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        (&silent)
            .take(REPLY.len() as u64)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, REPLY);
        assert!(r.lingering.len() <= 2);
        r.expire(Instant::now() + LINGER);
        assert!(r.lingering.is_empty());
    }

    #[test]
    fn port_zero_is_never_listened_on() {
        let mut r = Responder::new();
        r.set(Ipv4Addr::LOCALHOST, &set(&[0]));
        assert!(r.ports().is_empty());
        assert_eq!(r.failed, set(&[0]));
    }
}
