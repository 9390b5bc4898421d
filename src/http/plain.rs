//! Plain HTTP/1.1 to an IP address: the WireServer, the HostGAPlugin and
//! IMDS, which the agent reaches by address, never by name and never
//! through a proxy.
//!
//! minreq bounds each request by running it on a new thread (name
//! resolution cannot be given a timeout); for a goal-state poll and a
//! status upload every 6 s for the VM's whole life, that thread was most of
//! the daemon's idle CPU. An address needs no resolution, so here the
//! deadline is kept by the socket alone: the connect, each write and each
//! read get what is left of it, and nothing else runs.
//!
//! A connection the server leaves open is kept for the next request to the
//! same address (see [`idle`]): setting up and tearing down a TCP
//! connection was most of the idle daemon's CPU. A request that says
//! `Connection: close` gets a connection of its own, as waagent's all do.
//! httparse reads the response head; the body is framed by
//! `Content-Length`, by chunked transfer coding, or by the end of the
//! connection. A `Content-Length` body that ends early reads as a short
//! body, which [`super::send`] and [`super::download`] report; a chunked
//! body that ends early is an error here.

use std::io::{self, BufRead, BufReader, Cursor, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
#[cfg(target_os = "linux")]
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

pub mod idle;

/// The most header lines a response head may have.
const MAX_HEADERS: usize = 64;

/// The longest chunk-size or trailer line.
const MAX_LINE: u64 = 4096;

/// The most trailer lines after the last chunk.
const MAX_TRAILERS: usize = 64;

/// Where a request goes: `http://<IPv4 | [IPv6]>[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub addr: SocketAddr,
    /// The URL's `host[:port]`, sent as `Host`.
    pub authority: &'a str,
    /// The request target: the path and query, `/` when the URL has none.
    pub path: String,
}

/// The target of `url` when it is plain HTTP to an IP address; `None` for
/// anything else (HTTPS, a host name, user info), which minreq handles.
pub fn target(url: &str) -> Option<Target<'_>> {
    let scheme = url.get(..7)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &url[7..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let addr = match authority.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let host = authority
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(authority);
            SocketAddr::new(host.parse::<IpAddr>().ok()?, 80)
        }
    };
    // The fragment is not sent (RFC 9110, section 4.2.4).
    let tail = tail.split('#').next().unwrap_or("");
    let path = match tail.starts_with('/') {
        true => tail.to_string(),
        false => format!("/{tail}"),
    };
    Some(Target {
        addr,
        authority,
        path,
    })
}

/// Header names (lower-cased) and values, in the order received.
pub type Headers = Vec<(String, String)>;

/// The response to one request: status, headers and the body, to be read.
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Body,
}

/// Sends one request to `t` and reads the response head. The whole
/// exchange, the body's reading included, ends by `deadline`.
///
/// An idle connection to the same address is used when there is one. If
/// the server closed it before answering (its idle timeout met our
/// request on the way), the request goes again on a new connection:
/// nothing of it was answered, so nothing of it was done.
pub fn open(
    method: &str,
    t: &Target<'_>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    deadline: Instant,
    max_head: usize,
) -> io::Result<Response> {
    // Head and body in one write: one segment for a small request.
    let mut request = request_head(method, t, headers, body)?;
    request.extend_from_slice(body.unwrap_or_default());
    let keep = !says_close(headers.iter().map(|(k, v)| (*k, *v)));
    if keep {
        if let Some(tcp) = idle::take(&t.addr) {
            let stream = DeadlineStream::new(tcp, deadline, None);
            match exchange(stream, method, &request, max_head, Some(t.addr)) {
                Err(Failed {
                    error,
                    answered: false,
                }) if closed_under_us(&error) => {
                    log::debug!(
                        "{}: the server closed a kept connection ({error}); connecting again",
                        t.addr
                    );
                }
                result => return result.map_err(|f| f.error),
            }
        }
    }
    let (tcp, write_set) = connect(&t.addr, deadline)?;
    let stream = DeadlineStream::new(tcp, deadline, write_set);
    exchange(stream, method, &request, max_head, keep.then_some(t.addr)).map_err(|f| f.error)
}

/// An error of [`exchange`], and whether any of the response had come.
struct Failed {
    error: io::Error,
    answered: bool,
}

/// Writes `request` on `stream` and reads the response head; the
/// connection may be kept for `keep` afterwards if the response allows it.
fn exchange(
    mut stream: DeadlineStream,
    method: &str,
    request: &[u8],
    max_head: usize,
    keep: Option<SocketAddr>,
) -> Result<Response, Failed> {
    let head = match stream.write_all(request) {
        Ok(()) => read_head(&mut stream, max_head),
        Err(e) => Err(e),
    };
    let (version, status, headers, rest) = head.map_err(|error| Failed {
        error,
        answered: stream.answered,
    })?;
    let framing = framing(method, status, &headers).map_err(|error| Failed {
        error,
        answered: true,
    })?;
    // HTTP/1.1 keeps the connection unless the server says otherwise; a
    // body that runs to the close ends it.
    let persistent = version == 1
        && framing != Framing::Eof
        && !says_close(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(Response {
        status,
        headers,
        body: Body {
            src: BufReader::new(Cursor::new(rest).chain(stream)),
            framing,
            keep: keep.filter(|_| persistent),
        },
    })
}

/// Whether a `Connection` header among `headers` has the `close` option.
fn says_close<'a>(mut headers: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    headers.any(|(k, v)| k.eq_ignore_ascii_case("connection") && has_close(v))
}

/// Whether a `Connection` header's value lists the `close` option (the
/// simulator's server asks the same of a request).
pub(crate) fn has_close(connection: &str) -> bool {
    connection
        .split(',')
        .any(|o| o.trim().eq_ignore_ascii_case("close"))
}

/// A kept connection that failed before any of the response came: the
/// server closed it (end of file, reset, broken pipe). A timeout is not
/// that: the server may be working on the request.
fn closed_under_us(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// A connection to `addr`, made by `deadline`, and when its write timeout
/// was set (see [`SLACK`]).
///
/// On Linux a blocking connect(2) is bounded by SO_SNDTIMEO, which the first
/// write needs set anyway: three system calls fewer than std's
/// `connect_timeout` (non-blocking connect, poll, back to blocking), on
/// every goal-state poll and status upload of the VM's life. A timed-out
/// connect fails with EINPROGRESS; one a signal interrupts goes on in the
/// kernel, so it is waited for as std would. FreeBSD's connect(2) ignores
/// SO_SNDTIMEO: there, and elsewhere, std's `connect_timeout`.
#[cfg(target_os = "linux")]
fn connect(addr: &SocketAddr, deadline: Instant) -> io::Result<(TcpStream, Option<Instant>)> {
    use nix::errno::Errno;
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};

    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let tcp = TcpStream::from(fd);
    let mut set = None;
    bound(&mut set, deadline, |d| tcp.set_write_timeout(Some(d)))?;
    match socket::connect(tcp.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) => Ok((tcp, set)),
        Err(Errno::EINPROGRESS) => Err(timeout()),
        Err(Errno::EINTR) => Ok((finish_connect(tcp, deadline)?, set)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn connect(addr: &SocketAddr, deadline: Instant) -> io::Result<(TcpStream, Option<Instant>)> {
    let tcp = TcpStream::connect_timeout(addr, remaining(deadline)?).map_err(timed_out)?;
    Ok((tcp, None))
}

/// Waits for a connect(2) that a signal interrupted to finish, by
/// `deadline`.
#[cfg(target_os = "linux")]
fn finish_connect(tcp: TcpStream, deadline: Instant) -> io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    loop {
        let left = remaining(deadline)?;
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(tcp.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, ms) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Err(timeout()),
            Ok(_) => {
                return match tcp.take_error()? {
                    Some(e) => Err(e),
                    None => Ok(tcp),
                }
            }
        }
    }
}

/// The request line and headers. A header a hostile document could have
/// filled with a line break (a container id, a blob URL) is refused, not
/// sent as two headers.
fn request_head(
    method: &str,
    t: &Target<'_>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Vec<u8>> {
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !visible(method) || !visible(&t.path) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the method or URL has a character that cannot be sent",
        ));
    }
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", t.path, t.authority);
    let mut has_length = false;
    for (name, value) in headers {
        let name_ok = visible(name) && !name.contains(':');
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !name_ok || !value_ok {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("header {name:?} has a character that cannot be sent"),
            ));
        }
        has_length |= name.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // As minreq: a PUT or POST always says how long its body is.
    let wants_length = body.is_some() || method == "PUT" || method == "POST";
    if wants_length && !has_length {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            body.map_or(0, <[u8]>::len)
        ));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// Reads until the response head is complete (1xx heads skipped); returns
/// the HTTP minor version, the status, the headers and the bytes read past
/// the head.
fn read_head(
    stream: &mut DeadlineStream,
    max_head: usize,
) -> io::Result<(u8, u16, Headers, Vec<u8>)> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(0);
                let version = parsed.version.unwrap_or(0);
                if (100..200).contains(&status) && status != 101 {
                    buf.drain(..len);
                    continue;
                }
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                return Ok((version, status, headers, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("bad response head: {e}"),
                ))
            }
        }
        if buf.len() >= max_head {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("response head larger than {max_head} bytes refused"),
            ));
        }
        let want = chunk.len().min(max_head - buf.len());
        let n = stream.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the response head was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// The last chunk and trailers read.
    Done,
}

fn framing(method: &str, status: u16, headers: &[(String, String)]) -> io::Result<Framing> {
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let bad = |m: &str| Err(io::Error::new(ErrorKind::InvalidData, m.to_string()));
    let header = |name: &'static str| headers.iter().filter(move |(k, _)| k == name);
    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); a coding
    // other than chunked last means the body runs to the close.
    if let Some((_, te)) = header("transfer-encoding").next_back() {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return Ok(match last.eq_ignore_ascii_case("chunked") {
            true => Framing::Chunked(Chunk::Size),
            false => Framing::Eof,
        });
    }
    let mut length = None;
    for (_, v) in header("content-length") {
        for part in v.split(',') {
            let Ok(n) = part.trim().parse::<u64>() else {
                return bad("bad Content-Length");
            };
            if length.is_some_and(|l| l != n) {
                return bad("conflicting Content-Length headers");
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Eof, Framing::Length))
}

/// A response body, read to its framing's end and no further.
pub struct Body {
    src: BufReader<io::Chain<Cursor<Vec<u8>>, DeadlineStream>>,
    framing: Framing,
    /// Where the connection goes back to [`idle`] once the body is read.
    keep: Option<SocketAddr>,
}

impl Drop for Body {
    /// Read to its end, with nothing past it: the connection is kept. A
    /// body left unread (refused as too large, or an error) closes it, as
    /// do bytes the server sent past the body.
    fn drop(&mut self) {
        let Some(addr) = self.keep else { return };
        let done = matches!(
            self.framing,
            Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        );
        let nothing_buffered = self.src.buffer().is_empty();
        let (head_rest, stream) = self.src.get_mut().get_mut();
        let nothing_left = head_rest.position() >= head_rest.get_ref().len() as u64;
        if done && nothing_buffered && nothing_left {
            if let Some(tcp) = stream.tcp.take() {
                idle::put(addr, tcp);
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.framing {
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    return Ok(0)
                }
                Framing::Eof => return self.src.read(buf),
                Framing::Length(left) => {
                    let n = self.read_some(buf, left)?;
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(n);
                }
                Framing::Chunked(Chunk::Size) => {
                    let line = self.line()?;
                    let size = match httparse::parse_chunk_size(&line) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(io::Error::new(ErrorKind::InvalidData, "bad chunk size")),
                    };
                    if size == 0 {
                        self.trailers()?;
                        self.framing = Framing::Chunked(Chunk::Done);
                    } else {
                        self.framing = Framing::Chunked(Chunk::Data(size));
                    }
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let n = self.read_some(buf, left)?;
                    if n == 0 {
                        return Err(cut_short());
                    }
                    self.framing = match left - n as u64 {
                        0 => Framing::Chunked(Chunk::DataEnd),
                        more => Framing::Chunked(Chunk::Data(more)),
                    };
                    return Ok(n);
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if !matches!(self.line()?.as_slice(), b"\r\n" | b"\n") {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            "chunk longer than its size",
                        ));
                    }
                    self.framing = Framing::Chunked(Chunk::Size);
                }
            }
        }
    }
}

impl Body {
    /// Reads at most `left` bytes into `buf`.
    fn read_some(&mut self, buf: &mut [u8], left: u64) -> io::Result<usize> {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.src.read(&mut buf[..want])
    }

    /// One line of a chunked body, with its line end; cut short or too
    /// long is an error.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.src)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)?;
        match line.last() {
            Some(b'\n') => Ok(line),
            _ if line.len() as u64 == MAX_LINE => Err(io::Error::new(
                ErrorKind::InvalidData,
                "chunked body line too long",
            )),
            _ => Err(cut_short()),
        }
    }

    /// The trailer section after the last chunk, up to its empty line.
    fn trailers(&mut self) -> io::Result<()> {
        for _ in 0..=MAX_TRAILERS {
            if matches!(self.line()?.as_slice(), b"\r\n" | b"\n") {
                return Ok(());
            }
        }
        Err(io::Error::new(ErrorKind::InvalidData, "too many trailers"))
    }
}

fn cut_short() -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        "connection closed inside a chunked body",
    )
}

/// The socket, each read and write bounded by what is left until the
/// deadline.
struct DeadlineStream {
    /// Taken when the connection goes back to [`idle`].
    tcp: Option<TcpStream>,
    deadline: Instant,
    /// Whether a byte of the response has been read.
    answered: bool,
    /// When the read and the write timeout were last set.
    read_set: Option<Instant>,
    write_set: Option<Instant>,
}

/// A socket timeout set at `t` to what was left then lets a wait that
/// starts later end that much past the deadline. Within this, it is not set
/// again: a request's one write then needs no setsockopt(2) of its own
/// after the connect's, nor does each read of a body that streams in.
const SLACK: Duration = Duration::from_millis(5);

impl DeadlineStream {
    fn new(tcp: TcpStream, deadline: Instant, write_set: Option<Instant>) -> Self {
        Self {
            tcp: Some(tcp),
            deadline,
            answered: false,
            read_set: None,
            write_set,
        }
    }
}

/// Sets a timeout through `set` to what is left until `deadline`, unless it
/// was set within [`SLACK`] (`last`); none left is a timeout.
fn bound(
    last: &mut Option<Instant>,
    deadline: Instant,
    set: impl FnOnce(Duration) -> io::Result<()>,
) -> io::Result<()> {
    let left = remaining(deadline)?;
    // The instant `left` was measured at.
    let now = deadline - left;
    if last.is_some_and(|t| now.saturating_duration_since(t) < SLACK) {
        return Ok(());
    }
    set(left)?;
    *last = Some(now);
    Ok(())
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mut tcp) = self.tcp.as_ref() else {
            return Ok(0);
        };
        bound(&mut self.read_set, self.deadline, |d| {
            tcp.set_read_timeout(Some(d))
        })?;
        let n = tcp.read(buf).map_err(timed_out)?;
        self.answered |= n > 0;
        Ok(n)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(mut tcp) = self.tcp.as_ref() else {
            return Err(ErrorKind::NotConnected.into());
        };
        bound(&mut self.write_set, self.deadline, |d| {
            tcp.set_write_timeout(Some(d))
        })?;
        tcp.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The time left until `deadline`; none left is a timeout.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    match deadline.saturating_duration_since(Instant::now()) {
        d if d.is_zero() => Err(timeout()),
        d => Ok(d),
    }
}

fn timeout() -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        "no answer within the request's timeout",
    )
}

/// A socket timeout (EAGAIN on Linux, ETIMEDOUT elsewhere) said as one.
fn timed_out(e: io::Error) -> io::Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => timeout(),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn targets_are_plain_http_to_an_address() {
        let t = target("http://168.63.129.16/machine/?comp=goalstate").unwrap();
        assert_eq!(t.addr, "168.63.129.16:80".parse().unwrap());
        assert_eq!(t.authority, "168.63.129.16");
        assert_eq!(t.path, "/machine/?comp=goalstate");
        let t = target("HTTP://168.63.129.16:32526?x=1#frag").unwrap();
        assert_eq!(t.addr.port(), 32526);
        assert_eq!(t.path, "/?x=1");
        let t = target("http://[::1]:8080").unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(t.path, "/");
        assert_eq!(target("http://[fe80::1]/a").unwrap().addr.port(), 80);
        for other in [
            "https://168.63.129.16/",
            "http://example.com/",
            "http://user@10.0.0.1/",
            "http://10.0.0.1:99999/",
            "ftp://10.0.0.1/",
            "http:/",
        ] {
            assert_eq!(target(other), None, "{other}");
        }
    }

    #[test]
    fn a_line_break_in_a_header_or_the_url_is_never_sent() {
        let t = target("http://127.0.0.1:9/a").unwrap();
        let e = request_head("GET", &t, &[("x-ms-containerid", "a\r\nEvil: 1")], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("x-ms-containerid"), "{e}");
        assert!(request_head("GET", &t, &[("Bad Name", "v")], None).is_err());
        let mut t2 = t.clone();
        t2.path = "/a b".into();
        assert!(request_head("GET", &t2, &[], None).is_err());
        let head = request_head("PUT", &t, &[("x-ms-version", "2015-09-01")], None).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "PUT /a HTTP/1.1\r\nHost: 127.0.0.1:9\r\nx-ms-version: 2015-09-01\r\nContent-Length: 0\r\n\r\n"
        );
    }

    fn framing_of(status: u16, headers: &[(&str, &str)]) -> io::Result<Framing> {
        let h: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        framing("GET", status, &h)
    }

    #[test]
    fn the_body_is_framed_as_the_head_says() {
        assert_eq!(
            framing_of(204, &[("content-length", "5")]).unwrap(),
            Framing::Empty
        );
        assert_eq!(framing_of(200, &[]).unwrap(), Framing::Eof);
        assert_eq!(
            framing_of(200, &[("content-length", "5")]).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            framing_of(200, &[("content-length", "5"), ("content-length", "5, 5")]).unwrap(),
            Framing::Length(5)
        );
        assert!(framing_of(200, &[("content-length", "5"), ("content-length", "6")]).is_err());
        assert!(framing_of(200, &[("content-length", "-1")]).is_err());
        assert_eq!(
            framing_of(
                200,
                &[
                    ("transfer-encoding", "gzip, Chunked"),
                    ("content-length", "3")
                ]
            )
            .unwrap(),
            Framing::Chunked(Chunk::Size)
        );
        assert_eq!(
            framing_of(200, &[("transfer-encoding", "gzip")]).unwrap(),
            Framing::Eof
        );
    }

    /// Answers one connection with `chunks`, pausing `gap` between them;
    /// returns the URL and the request the server read.
    fn serve(chunks: Vec<Vec<u8>>, gap: Duration) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = vec![0u8; 8192];
            let n = s.read(&mut req).unwrap();
            req.truncate(n);
            for c in chunks {
                if s.write_all(&c).is_err() {
                    break;
                }
                std::thread::sleep(gap);
            }
            req
        });
        (url, h)
    }

    fn get(url: &str, secs: u64) -> io::Result<(Response, Vec<u8>)> {
        let t = target(url).unwrap();
        let mut r = open(
            "GET",
            &t,
            &[("Connection", "close")],
            None,
            Instant::now() + Duration::from_secs(secs),
            64 * 1024,
        )?;
        let mut body = Vec::new();
        r.body.read_to_end(&mut body)?;
        Ok((r, body))
    }

    #[test]
    fn a_chunked_body_split_anywhere_is_put_together() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        // One byte per write: every state of the head and chunk readers
        // meets a partial read.
        let chunks = wire.iter().map(|b| vec![*b]).collect();
        let (url, h) = serve(chunks, Duration::from_micros(200));
        let (r, body) = get(&url, 10).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(body, b"hello, world");
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(
            req.starts_with("GET /x HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{req}"
        );
    }

    #[test]
    fn a_chunked_body_cut_short_or_malformed_is_an_error() {
        for (wire, want) in [
            (&b"5\r\nhel"[..], ErrorKind::UnexpectedEof),
            (b"5\r\nhello\r\n", ErrorKind::UnexpectedEof),
            (b"zz\r\nhello\r\n0\r\n\r\n", ErrorKind::InvalidData),
            (b"2\r\nhello\r\n0\r\n\r\n", ErrorKind::InvalidData),
        ] {
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            resp.extend_from_slice(wire);
            let (url, h) = serve(vec![resp], Duration::ZERO);
            let e = get(&url, 10).err().expect("an error");
            assert_eq!(e.kind(), want, "{:?}: {e}", String::from_utf8_lossy(wire));
            let _ = h.join();
        }
    }

    #[test]
    fn a_content_length_body_stops_at_its_length() {
        let (url, h) = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef".to_vec()],
            Duration::ZERO,
        );
        let (_, body) = get(&url, 10).unwrap();
        assert_eq!(body, b"abc");
        let _ = h.join();
    }

    #[test]
    fn a_head_too_large_or_malformed_is_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b"X-A: b\r\n", 9000).flatten());
        for wire in [
            big,
            b"HTTP/1.1 2OO OK\r\n\r\n".to_vec(),
            b"SSH-2.0-x\r\n\r\n".to_vec(),
        ] {
            let (url, h) = serve(vec![wire], Duration::ZERO);
            let e = get(&url, 10).err().expect("an error");
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
            let _ = h.join();
        }
    }

    #[test]
    fn a_server_that_stalls_is_given_up_on_at_the_deadline() {
        let (url, h) = serve(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab".to_vec(),
                b"c".to_vec(),
            ],
            Duration::from_millis(2500),
        );
        // Without the deadline, the read would wait for the "c" and the
        // close, and return a short body.
        let e = get(&url, 1).err().expect("a timeout");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        drop(h);
    }

    #[test]
    fn a_timeout_is_set_again_only_past_the_slack() {
        let far = Instant::now() + Duration::from_secs(10);
        let set_to = std::cell::RefCell::new(Vec::new());
        let set = |d| {
            set_to.borrow_mut().push(d);
            Ok(())
        };
        let mut last = None;
        bound(&mut last, far, set).unwrap();
        assert!(set_to.borrow()[0] > Duration::from_secs(9));
        // Just set: what is left differs by less than the slack.
        bound(&mut last, far, set).unwrap();
        assert_eq!(set_to.borrow().len(), 1);
        last = Instant::now().checked_sub(SLACK * 2);
        bound(&mut last, far, set).unwrap();
        assert_eq!(set_to.borrow().len(), 2);
        // Past the deadline: a timeout, whenever it was last set.
        let e = bound(&mut last, Instant::now(), set).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert_eq!(set_to.borrow().len(), 2);
    }

    /// What a keep-alive test server does with each request on a
    /// connection: answer with these bytes, or close without an answer.
    #[derive(Clone)]
    enum Turn {
        Answer(&'static [u8]),
        Close,
    }

    /// Serves `conns` connections in turn, each with its script; returns
    /// the URL and, at the end, the requests each connection carried.
    fn keep_server(conns: Vec<Vec<Turn>>) -> (String, std::thread::JoinHandle<Vec<usize>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut carried = Vec::new();
            for script in conns {
                let (mut s, _) = l.accept().unwrap();
                let mut n = 0;
                for turn in script {
                    // Each request is one GET head, read whole.
                    let mut req = Vec::new();
                    let mut byte = [0u8; 1];
                    while !req.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).unwrap_or(0) == 0 {
                            break;
                        }
                        req.push(byte[0]);
                    }
                    n += 1;
                    match turn {
                        Turn::Answer(wire) => s.write_all(wire).unwrap(),
                        Turn::Close => break,
                    }
                }
                carried.push(n);
            }
            carried
        });
        (url, h)
    }

    fn get_keeping(url: &str) -> io::Result<(u16, Vec<u8>)> {
        let t = target(url).unwrap();
        let mut r = open(
            "GET",
            &t,
            &[],
            None,
            Instant::now() + Duration::from_secs(5),
            4096,
        )?;
        let mut body = Vec::new();
        r.body.read_to_end(&mut body)?;
        Ok((r.status, body))
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn a_connection_the_server_keeps_carries_the_next_request() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (url, h) = keep_server(vec![vec![
            Turn::Answer(OK),
            Turn::Answer(chunked),
            Turn::Answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Turn::Answer(OK),
        ]]);
        for want in [&b"ok"[..], b"ok", b"", b"ok"] {
            assert_eq!(get_keeping(&url).unwrap().1, want);
        }
        assert_eq!(idle::count(), 1);
        assert_eq!(h.join().unwrap(), [4]);
    }

    #[test]
    fn a_connection_either_side_closes_is_not_kept() {
        // The request says close; the response says close; HTTP/1.0; a
        // body to the end of the connection; a body left unread; bytes
        // past the body.
        let (url, h) = keep_server(vec![vec![Turn::Answer(OK)]]);
        let t = target(&url).unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        let mut r = open("GET", &t, &[("Connection", "close")], None, far, 4096).unwrap();
        r.body.read_to_end(&mut Vec::new()).unwrap();
        drop(r);
        assert_eq!(idle::count(), 0);
        assert_eq!(h.join().unwrap(), [1]);
        for wire in [
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        ] {
            let (url, h) = keep_server(vec![vec![Turn::Answer(wire)]]);
            let t = target(&url).unwrap();
            let mut r = open("GET", &t, &[], None, far, 4096).unwrap();
            let mut body = Vec::new();
            if wire.ends_with(b"ok") {
                r.body.read_to_end(&mut body).unwrap();
            } else {
                // Give the bytes past the body time to arrive.
                std::thread::sleep(Duration::from_millis(20));
                r.body.read_to_end(&mut body).unwrap();
            }
            assert_eq!(body, b"ok", "{}", String::from_utf8_lossy(wire));
            drop(r);
            assert_eq!(idle::count(), 0, "{}", String::from_utf8_lossy(wire));
            drop(h);
        }
        let (url, h) = keep_server(vec![vec![Turn::Answer(OK)]]);
        let t = target(&url).unwrap();
        drop(open("GET", &t, &[], None, far, 4096).unwrap());
        assert_eq!(idle::count(), 0);
        drop(h);
    }

    #[test]
    fn a_kept_connection_the_server_closed_is_replaced_without_a_lost_request() {
        // Closed while idle (seen before the request), and closed with the
        // request on the way (seen after it): either way the request goes
        // again on a new connection and is answered.
        let (url, h) = keep_server(vec![
            vec![Turn::Answer(OK)],
            vec![Turn::Answer(OK), Turn::Close],
            vec![Turn::Answer(OK)],
        ]);
        assert_eq!(get_keeping(&url).unwrap(), (200, b"ok".to_vec()));
        // The first connection is closed now; the second answers.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(get_keeping(&url).unwrap(), (200, b"ok".to_vec()));
        // The second closes unanswered; the third answers.
        assert_eq!(get_keeping(&url).unwrap(), (200, b"ok".to_vec()));
        assert_eq!(h.join().unwrap(), [1, 2, 1]);

        // On a new connection the same close is an error: sent once only.
        let (url, h) = keep_server(vec![vec![Turn::Close]]);
        let e = get_keeping(&url).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
        assert_eq!(h.join().unwrap(), [1]);
    }

    /// A listener whose accept queue is full: the kernel drops the SYN of
    /// any further connect, which then waits for a retransmission (after
    /// 1 s) or its timeout. Returns it, its URL and the queued connection.
    fn full_listener() -> (TcpListener, String, TcpStream) {
        use nix::sys::socket::{listen, Backlog};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // A backlog of 0 queues one connection.
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        (l, format!("http://{addr}/x"), queued)
    }

    #[test]
    fn a_connect_never_answered_is_given_up_on_at_the_deadline() {
        let (_l, url, _queued) = full_listener();
        let start = Instant::now();
        let t = target(&url).unwrap();
        let e = open(
            "GET",
            &t,
            &[],
            None,
            start + Duration::from_millis(300),
            1024,
        )
        .err()
        .expect("a timeout");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        // Not at the SYN's retransmission: at the deadline.
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }

    /// A connect(2) a signal interrupts goes on in the kernel: the request
    /// still reaches the server once its queue has room.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_connect_interrupted_by_a_signal_still_completes() {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        extern "C" fn ignore(_: libc::c_int) {}
        // No SA_RESTART, and a socket timeout: connect(2) fails with EINTR.
        let action = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing; SIGUSR2 is this test's alone.
        unsafe { sigaction(Signal::SIGUSR2, &action) }.unwrap();
        let (l, url, queued) = full_listener();
        // SAFETY: plain calls on this thread's own id.
        let me = unsafe { libc::pthread_self() };
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(unsafe { libc::pthread_kill(me, libc::SIGUSR2) }, 0);
            std::thread::sleep(Duration::from_millis(100));
            // Room in the queue: the retransmitted SYN gets through.
            drop(queued);
            drop(l.accept().unwrap());
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        let (r, body) = get(&url, 10).unwrap();
        assert_eq!((r.status, &body[..]), (200, &b"ok"[..]));
        server.join().unwrap();
    }
}
