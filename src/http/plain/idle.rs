//! Connections kept open between requests, one per address at most.
//!
//! The daemon asks the WireServer for the goal state and puts its status to
//! the HostGAPlugin every 6 s for the VM's whole life. A new connection for
//! each (socket, handshake, close, the peer's side of it all) was about 60%
//! of the idle daemon's CPU, measured with `perf` in the bench sandbox; on a
//! kept connection a request is one write and one read.
//!
//! HTTP/1.1 connections persist unless either side says `Connection:
//! close`. The server may still close an idle one at any time, so before a
//! kept connection is used it is looked at: one the server has closed (or
//! written to unasked) is dropped, and [`super::open`] sends a request
//! again on a new connection if the server closed the kept one before any
//! answer. A connection idle longer than [`MAX_IDLE`] is not used: the
//! server has likely timed it out, and the VM should not hold sockets open
//! on the host for nothing.
//!
//! Thread-local: the daemon is single-threaded, and a socket here is used
//! by one request at a time. The sockets are close-on-exec, so no child
//! (an extension, above all) inherits a connection the firewall rule
//! (`OS.EnableFirewall`) lets only root open.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connection idle longer than this is closed instead of used: longer
/// than the 6 s between polls, shorter than the usual idle timeouts of
/// servers (IIS 120 s, nginx 75 s, the simulator 30 s).
pub const MAX_IDLE: Duration = Duration::from_secs(20);

/// The most connections kept: the WireServer, the HostGAPlugin, IMDS and
/// one to spare.
const MAX_KEPT: usize = 4;

struct Kept {
    addr: SocketAddr,
    tcp: TcpStream,
    since: Instant,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// The connection kept for `addr`, if there is one still open; connections
/// idle past [`MAX_IDLE`] are closed on the way.
pub fn take(addr: &SocketAddr) -> Option<TcpStream> {
    take_at(addr, Instant::now())
}

fn take_at(addr: &SocketAddr, now: Instant) -> Option<TcpStream> {
    let kept = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        k.retain(|c| now.saturating_duration_since(c.since) < MAX_IDLE);
        let i = k.iter().position(|c| c.addr == *addr)?;
        Some(k.swap_remove(i))
    })?;
    still_open(&kept.tcp).then_some(kept.tcp)
}

/// Keeps `tcp`, whose last response has been read to its end, for the next
/// request to `addr`.
pub fn put(addr: SocketAddr, tcp: TcpStream) {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        k.retain(|c| c.addr != addr);
        if k.len() >= MAX_KEPT {
            k.remove(0);
        }
        k.push(Kept {
            addr,
            tcp,
            since: Instant::now(),
        });
    });
}

/// How many connections are kept.
#[cfg(test)]
pub fn count() -> usize {
    KEPT.with(|k| k.borrow().len())
}

/// Nothing to read and no error: the server has not closed it. One
/// non-blocking peek; an end of file, a reset or bytes nobody asked for
/// all mean it cannot carry a request.
fn still_open(tcp: &TcpStream) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;

    let mut byte = [0u8; 1];
    matches!(
        recv(
            tcp.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(Errno::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_connection_is_used_once_and_only_while_it_is_fresh_and_open() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (client, _server) = pair();
        put(addr, client);
        assert!(take(&"127.0.0.1:10".parse().unwrap()).is_none());
        assert!(take(&addr).is_some());
        assert!(take(&addr).is_none(), "taken twice");

        // Idle too long: closed, not used.
        let (client, _server) = pair();
        put(addr, client);
        assert!(take_at(&addr, Instant::now() + MAX_IDLE).is_none());
        assert_eq!(count(), 0);

        // Closed by the server, or written to unasked: not used.
        let (client, server) = pair();
        put(addr, client);
        drop(server);
        assert!(take(&addr).is_none());
        let (client, mut server) = pair();
        put(addr, client);
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(take(&addr).is_none());
    }

    #[test]
    fn one_connection_per_address_and_a_few_in_all() {
        let mut servers = Vec::new();
        for port in 1..=6u16 {
            let (client, server) = pair();
            servers.push(server);
            put(SocketAddr::from(([127, 0, 0, 1], port)), client);
        }
        assert_eq!(count(), MAX_KEPT);
        // The oldest went first.
        assert!(take(&SocketAddr::from(([127, 0, 0, 1], 1))).is_none());
        assert!(take(&SocketAddr::from(([127, 0, 0, 1], 6))).is_some());
        let addr = SocketAddr::from(([127, 0, 0, 1], 5));
        let (client, _server) = pair();
        put(addr, client);
        assert_eq!(count(), MAX_KEPT - 1);
    }
}
