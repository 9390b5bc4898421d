//! A deliberately small HTTP/1.1 server for the simulator.
//!
//! Hand-written rather than a crate because the simulator's purpose is to
//! misbehave on request — reset a connection, send half a body, stall past
//! the client's timeout — which a well-behaved server library exists to
//! prevent. One thread accepts; each connection gets a thread, which
//! answers its requests in turn until the client closes it or asks
//! `Connection: close` (as waagent does), or a fault ends it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request body accepted (status blobs are small; this is a bound,
/// not a feature).
const MAX_REQUEST_BODY: usize = 32 << 20;

/// A request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which of this server's connections carried it, counted from 1.
    pub connection: u64,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `key`, if present.
    pub fn query(&self, key: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection with a TCP reset and no answer.
    Reset,
    /// Announce the whole body's length but send only the first half.
    Truncated { status: u16, body: Vec<u8> },
    /// Wait, then send the reply (to outlast the client's timeout).
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }
}

/// The request handler: called on a connection thread.
pub type Handler = Arc<dyn Fn(&HttpRequest) -> Reply + Send + Sync>;

/// A listening server; stops (and joins its accept thread) when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(addr: SocketAddr, handler: Handler) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name(format!("sim-{addr}"))
            .spawn(move || {
                let mut accepted = 0;
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    accepted += 1;
                    let h = handler.clone();
                    let stop = stop2.clone();
                    let _ = std::thread::Builder::new()
                        .spawn(move || serve(stream, accepted, &h, &stop));
                }
            })?;
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests on one connection. An idle connection is closed
/// after 30 s, and one whose server has stopped at its next request,
/// unanswered (a client sees the server gone, as it would a real one).
fn serve(stream: TcpStream, connection: u64, handler: &Handler, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    while let Ok(Some(mut req)) = read_request(&mut reader) {
        req.connection = connection;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let close = req
            .header("connection")
            .is_some_and(crate::http::plain::has_close);
        let reply = handler(&req);
        match write_reply(&stream, reply, close) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    let mut header_bytes = 0;
    loop {
        let mut h = String::new();
        let n = r.read_line(&mut h)?;
        header_bytes += n;
        if n == 0 || h == "\r\n" || h == "\n" || header_bytes > 64 * 1024 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_REQUEST_BODY {
        return Ok(None);
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(HttpRequest {
        method,
        target,
        headers,
        body,
        connection: 0,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn head(status: u16, headers: &[(String, String)], len: usize, close: bool) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {len}\r\n"));
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends `reply`; whether the connection can carry another request (a
/// full reply to a request that did not ask `close`).
fn write_reply(mut stream: &TcpStream, reply: Reply, close: bool) -> io::Result<bool> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut wire = head(status, &headers, body.len(), close);
            wire.extend_from_slice(&body);
            stream.write_all(&wire)?;
            Ok(!close)
        }
        Reply::Truncated { status, body } => {
            stream.write_all(&head(status, &[], body.len(), true))?;
            stream.write_all(&body[..body.len() / 2])?;
            Ok(false)
        }
        Reply::Reset => {
            reset(stream);
            Ok(false)
        }
        Reply::Delayed(d, inner) => {
            std::thread::sleep(d);
            write_reply(stream, *inner, close)
        }
    }
}

/// SO_LINGER with a zero timeout: close() sends RST instead of FIN.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_and_parses() {
        let h: Handler = Arc::new(|r: &HttpRequest| {
            Reply::body(
                200,
                "text/plain",
                format!(
                    "{} {} {:?} {}",
                    r.method,
                    r.path(),
                    r.query("comp"),
                    r.body.len()
                ),
            )
        });
        let s = Server::start("127.0.0.1:0".parse().unwrap(), h).unwrap();
        let r = crate::http::send(&crate::http::Request {
            method: "POST",
            url: &format!("http://{}/machine?comp=health", s.addr()),
            headers: &[],
            body: Some(b"abc"),
            timeout_secs: 5,
            max_body: 1024,
            proxy: None,
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "POST /machine Some(\"health\") 3"
        );
    }
}
