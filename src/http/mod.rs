//! The agent's HTTP(S) calls: [`send`] reads a response into memory,
//! [`download`] streams one to a file. Timeouts and a size bound on every
//! request; no decisions here — the WireServer client above it owns retries
//! and status handling.
//!
//! Plain HTTP to an IP address (the WireServer, the HostGAPlugin, IMDS)
//! goes through [`plain`], on the caller's thread; everything else (storage
//! by name, HTTPS, a proxy) through minreq, with rustls + ring for HTTPS.

pub(crate) mod plain;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest response body accepted, held in memory: the fabric's documents
/// are kilobytes. Extension packages go to disk through [`download`].
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// An HTTP response: status, headers (lower-case names), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct HttpError {
    pub url: String,
    pub message: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.message)
    }
}

impl std::error::Error for HttpError {}

/// A request to send: method, URL, headers, body, timeout in seconds.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout_secs: u64,
    /// Largest body accepted, at most [`MAX_RESPONSE_BYTES`].
    pub max_body: usize,
    /// `http://host:port` of a proxy to tunnel through (storage only: the
    /// WireServer, HostGAPlugin and IMDS are always reached directly).
    pub proxy: Option<&'a str>,
}

/// The proxy variables minreq would otherwise apply to every request.
const PROXY_VARIABLES: &[&str] = &[
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "all_proxy",
    "ALL_PROXY",
];

/// Takes the proxy from the environment, the first of `https_proxy`,
/// `HTTPS_PROXY`, `http_proxy`, `all_proxy`, `ALL_PROXY` that is set, and
/// removes them all, so only requests that ask for it use a proxy. Call
/// once at start, before any thread exists.
pub fn take_environment_proxy() -> Option<String> {
    let found = PROXY_VARIABLES
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    for k in PROXY_VARIABLES {
        std::env::remove_var(k);
    }
    found
}

fn http_error(req: &Request<'_>, message: String) -> HttpError {
    HttpError {
        url: req.url.to_string(),
        message,
    }
}

/// A response body still to be read.
enum Body {
    Plain(plain::Body),
    Minreq(minreq::ResponseLazy),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Plain(b) => b.read(buf),
            Body::Minreq(b) => b.read(buf),
        }
    }
}

/// The largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Sends `req` and returns the response with its body still to be read,
/// its status and its headers (names lower-cased).
fn open(req: &Request<'_>) -> Result<(Body, u16, Headers), HttpError> {
    let err = |message: String| http_error(req, message);
    if let (None, Some(target)) = (req.proxy, plain::target(req.url)) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(req.timeout_secs);
        let r = plain::open(
            req.method,
            &target,
            req.headers,
            req.body,
            deadline,
            MAX_HEAD_BYTES,
        )
        .map_err(|e| err(e.to_string()))?;
        return Ok((Body::Plain(r.body), r.status, r.headers));
    }
    let method = match req.method {
        "GET" => minreq::Method::Get,
        "PUT" => minreq::Method::Put,
        "POST" => minreq::Method::Post,
        "HEAD" => minreq::Method::Head,
        "DELETE" => minreq::Method::Delete,
        other => return Err(err(format!("unsupported method {other}"))),
    };
    let mut r = minreq::Request::new(method, req.url)
        .with_timeout(req.timeout_secs)
        .with_max_headers_size(MAX_HEAD_BYTES)
        .with_max_status_line_length(8 * 1024);
    for (k, v) in req.headers {
        r = r.with_header(*k, *v);
    }
    if let Some(b) = req.body {
        r = r.with_body(b.to_vec());
    }
    if let Some(p) = req.proxy {
        let proxy = minreq::Proxy::new(p).map_err(|e| err(format!("proxy {p}: {e}")))?;
        r = r.with_proxy(proxy);
    }
    let lazy = r.send_lazy().map_err(|e| err(e.to_string()))?;
    let status = u16::try_from(lazy.status_code).map_err(|_| err("bad status code".into()))?;
    let headers: Headers = lazy
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    Ok((Body::Minreq(lazy), status, headers))
}

type Headers = Vec<(String, String)>;

/// The `Content-Length` announced, if any and a number.
fn content_length(headers: &Headers) -> Option<u64> {
    headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
}

/// Sends `req` and reads the whole response (bounded by `req.max_body`
/// and [`MAX_RESPONSE_BYTES`]). Any status is a response; only transport
/// failures are errors.
pub fn send(req: &Request<'_>) -> Result<Response, HttpError> {
    let err = |message: String| http_error(req, message);
    let (lazy, status, headers) = open(req)?;
    let limit = req.max_body.min(MAX_RESPONSE_BYTES);
    // Announced too large: refused before the body is read.
    if content_length(&headers).is_some_and(|n| n > limit as u64) {
        return Err(err(format!("response larger than {limit} bytes refused")));
    }
    let mut body = Vec::new();
    Read::take(lazy, limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(e.to_string()))?;
    if body.len() > limit {
        return Err(err(format!("response larger than {limit} bytes refused")));
    }
    // minreq ends the body quietly at EOF; a body shorter than announced
    // is a broken connection, not a document.
    if let Some(n) = content_length(&headers) {
        if body.len() as u64 != n {
            return Err(err(format!(
                "connection closed after {} of {n} bytes",
                body.len()
            )));
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// What [`download`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Bytes written to the file: a 2xx answer's whole body; 0 otherwise.
    pub written: u64,
    /// A non-2xx answer's body (at most `max_body` bytes, the rest
    /// dropped), for the error message; empty on success.
    pub error_body: Vec<u8>,
}

/// Why [`download`] failed. Only `Transport` is worth another attempt.
#[derive(Debug)]
pub enum DownloadError {
    /// Could not talk to the server, or the body broke off.
    Transport(HttpError),
    /// More than `limit` bytes announced or sent.
    TooLarge { url: String, limit: u64 },
    /// The destination could not be created or written.
    File { path: PathBuf, source: io::Error },
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::Transport(e) => e.fmt(f),
            DownloadError::TooLarge { url, limit } => {
                write!(f, "{url}: response larger than {limit} bytes refused")
            }
            DownloadError::File { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for DownloadError {}

/// The read and write buffer of a download.
const DOWNLOAD_BUFFER: usize = 64 << 10;

/// Removes a partial download unless disarmed.
struct Partial<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Sends `req` and streams a 2xx answer's body into a new file `dest`,
/// never holding it in memory: extension packages are tens of MiB. At most
/// `max_bytes` are accepted; past that (announced or sent), or on any
/// failure, the partial file is removed, so `dest` exists only complete.
///
/// `dest` is created 0600 with `O_EXCL | O_NOFOLLOW` (an existing file or
/// symlink there is an error, never overwritten or followed) and fsynced
/// before this returns. Any other status is returned with no file.
/// `req.timeout_secs` bounds the whole exchange (minreq's timeout is a
/// deadline, not an idle timeout), so the caller sizes it to `max_bytes`.
pub fn download(req: &Request<'_>, dest: &Path, max_bytes: u64) -> Result<Download, DownloadError> {
    let transport = |message: String| DownloadError::Transport(http_error(req, message));
    let file_err = |source: io::Error| DownloadError::File {
        path: dest.to_path_buf(),
        source,
    };
    let too_large = || DownloadError::TooLarge {
        url: req.url.to_string(),
        limit: max_bytes,
    };
    let (mut lazy, status, headers) = open(req).map_err(DownloadError::Transport)?;
    let announced = content_length(&headers);
    if !(200..300).contains(&status) {
        // The body only explains the error: keep its start.
        let limit = req.max_body.min(MAX_RESPONSE_BYTES) as u64;
        let mut error_body = Vec::new();
        let _ = Read::take(&mut lazy, limit).read_to_end(&mut error_body);
        return Ok(Download {
            status,
            headers,
            written: 0,
            error_body,
        });
    }
    if announced.is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .map_err(file_err)?;
    let mut partial = Partial {
        path: dest,
        armed: true,
    };
    let mut out = BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
    let mut buf = vec![0u8; DOWNLOAD_BUFFER];
    let mut written = 0u64;
    loop {
        let n = match lazy.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(transport(e.to_string())),
        };
        // A download within its deadline keeps the loop alive.
        crate::notify::keepalive();
        written += n as u64;
        if written > max_bytes {
            return Err(too_large());
        }
        out.write_all(&buf[..n]).map_err(file_err)?;
    }
    if let Some(n) = announced {
        if written != n {
            return Err(transport(format!(
                "connection closed after {written} of {n} bytes"
            )));
        }
    }
    let file: File = out.into_inner().map_err(|e| file_err(e.into_error()))?;
    file.sync_all().map_err(file_err)?;
    partial.armed = false;
    Ok(Download {
        status,
        headers,
        written,
        error_body: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one canned response on loopback and returns the request it got.
    fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            buf.truncate(n);
            let _ = s.write_all(&response);
            buf
        });
        (url, h)
    }

    #[test]
    fn get_with_headers() {
        let (url, h) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Ms-Thing: a\r\n\r\nhello".to_vec(),
        );
        let r = send(&Request {
            method: "GET",
            url: &format!("{url}/?comp=versions"),
            headers: &[("x-ms-version", "2012-11-30")],
            body: None,
            timeout_secs: 5,
            max_body: 1024,
            proxy: None,
        })
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(r.headers.contains(&("x-ms-thing".into(), "a".into())));
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /?comp=versions HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("x-ms-version: 2012-11-30\r\n"),
            "{req}"
        );
    }

    /// Sends a GET with a 4096-byte limit to a server that answers
    /// Content-Length: 5000 and then `sent` bytes of body; the error.
    fn oversized(sent: usize) -> HttpError {
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', sent));
        let (url, h) = serve_once(resp);
        let e = send(&Request {
            method: "GET",
            url: &url,
            headers: &[],
            body: None,
            timeout_secs: 10,
            max_body: 4096,
            proxy: None,
        })
        .unwrap_err();
        let _ = h.join();
        e
    }

    #[test]
    fn oversized_body_is_refused() {
        let e = oversized(5000);
        assert!(
            e.to_string()
                .ends_with("response larger than 4096 bytes refused"),
            "{e}"
        );
    }

    /// The fault matrix: a 5 MiB answer to a document cost reading 4 MiB
    /// before it was refused. An announced length over the limit is
    /// refused on the headers (here only 10 of the 5000 bytes come, which
    /// a reader of the body would call a broken connection).
    #[test]
    fn an_announced_oversized_body_is_refused_unread() {
        let e = oversized(10);
        assert!(
            e.to_string()
                .ends_with("response larger than 4096 bytes refused"),
            "{e}"
        );
    }

    #[test]
    fn a_body_shorter_than_announced_is_an_error() {
        let (url, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec());
        let e = send(&Request {
            method: "GET",
            url: &url,
            headers: &[],
            body: None,
            timeout_secs: 5,
            max_body: 1024,
            proxy: None,
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("connection closed after 5 of 10 bytes"),
            "{e}"
        );
        let _ = h.join();
    }

    fn get(url: &str) -> Request<'_> {
        Request {
            method: "GET",
            url,
            headers: &[],
            body: None,
            timeout_secs: 10,
            max_body: 1024,
            proxy: None,
        }
    }

    /// The names in `dir`, sorted: what a failed download left behind.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn download_streams_the_body_to_a_new_private_file() {
        use std::os::unix::fs::PermissionsExt;
        // Larger than the buffer, so the copy loop goes round.
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend(&body);
        let (url, h) = serve_once(resp);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pkg.zip");
        let d = download(
            &Request {
                headers: &[("x-ms-version", "2014-02-14")],
                ..get(&format!("{url}/blob/pkg.zip?sig=x"))
            },
            &dest,
            1 << 20,
        )
        .unwrap();
        assert_eq!((d.status, d.written), (200, body.len() as u64));
        assert!(d.error_body.is_empty());
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(
            req.starts_with("GET /blob/pkg.zip?sig=x HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req
            .to_ascii_lowercase()
            .contains("x-ms-version: 2014-02-14\r\n"));
    }

    #[test]
    fn a_download_past_the_bound_is_refused_and_leaves_no_file() {
        // No Content-Length: the body ends when the server closes, so only
        // counting what arrives can stop it.
        let mut resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 200_000));
        let (url, h) = serve_once(resp);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pkg.zip");
        let e = download(&get(&url), &dest, 100_000).unwrap_err();
        assert!(
            matches!(e, DownloadError::TooLarge { limit: 100_000, .. }),
            "{e}"
        );
        assert!(e
            .to_string()
            .ends_with("response larger than 100000 bytes refused"));
        assert!(listing(dir.path()).is_empty());
        let _ = h.join();

        // Announced too large: refused before a byte is written.
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 5000));
        let (url, h) = serve_once(resp);
        let e = download(&get(&url), &dest, 4999).unwrap_err();
        assert!(
            matches!(e, DownloadError::TooLarge { limit: 4999, .. }),
            "{e}"
        );
        assert!(listing(dir.path()).is_empty());
        let _ = h.join();
    }

    #[test]
    fn an_error_status_is_returned_with_its_body_and_no_file() {
        let (url, h) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\nno such blob".to_vec(),
        );
        let dir = tempfile::tempdir().unwrap();
        let d = download(&get(&url), &dir.path().join("pkg.zip"), 1 << 20).unwrap();
        assert_eq!((d.status, d.written), (404, 0));
        assert_eq!(d.error_body, b"no such blob");
        assert!(listing(dir.path()).is_empty());
        let _ = h.join();
    }

    #[test]
    fn a_body_cut_short_leaves_no_file() {
        let (url, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let e = download(&get(&url), &dir.path().join("pkg.zip"), 1 << 20).unwrap_err();
        assert!(matches!(e, DownloadError::Transport(_)), "{e}");
        assert!(
            e.to_string()
                .ends_with("connection closed after 5 of 10 bytes"),
            "{e}"
        );
        assert!(listing(dir.path()).is_empty());
        let _ = h.join();
    }

    #[test]
    fn an_existing_file_or_symlink_at_the_destination_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pkg.zip");
        std::fs::write(&dest, b"earlier").unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("link.zip");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for path in [&dest, &link] {
            let (url, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnew".to_vec());
            let e = download(&get(&url), path, 1 << 20).unwrap_err();
            match &e {
                DownloadError::File { path: p, source } => {
                    assert_eq!(p, path);
                    assert_eq!(source.kind(), io::ErrorKind::AlreadyExists, "{e}");
                }
                other => panic!("{other}"),
            }
            let _ = h.join();
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"earlier");
        assert!(!target.exists());
        assert_eq!(listing(dir.path()), ["link.zip", "pkg.zip"]);
    }

    #[test]
    fn connection_refused_is_an_error_naming_the_url() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/machine", l.local_addr().unwrap());
        drop(l);
        let e = send(&Request {
            method: "GET",
            url: &url,
            headers: &[],
            body: None,
            timeout_secs: 2,
            max_body: 1024,
            proxy: None,
        })
        .unwrap_err();
        assert!(e.to_string().starts_with(&url), "{e}");
    }

    /// The same answers read the same through both transports: plain (an
    /// address) and minreq (a name). What a caller sees must not depend on
    /// which one carried the request.
    #[test]
    fn both_transports_read_the_same_answers() {
        let answers: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Ms-Thing: a\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            b"HTTP/1.1 410 Gone\r\nContent-Length: 2\r\n\r\nno",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        ];
        let got = |host: &str, answer: &[u8]| {
            let (url, h) = serve_once(answer.to_vec());
            let url = url.replace("127.0.0.1", host);
            let r = send(&Request {
                method: "PUT",
                url: &format!("{url}/status"),
                headers: &[("x-ms-version", "2015-09-01")],
                body: Some(b"{}"),
                timeout_secs: 5,
                max_body: 1024,
                proxy: None,
            });
            let req = String::from_utf8(h.join().unwrap()).unwrap();
            let req = req.replace(host, "HOST").to_ascii_lowercase();
            match r {
                // minreq's headers come out of a HashMap: no order.
                Ok(mut r) => {
                    r.headers.sort();
                    (req, format!("{} {:?} {:?}", r.status, r.headers, r.body))
                }
                Err(e) => (req, e.message),
            }
        };
        for answer in answers {
            let (plain_req, plain) = got("127.0.0.1", answer);
            let (minreq_req, by_name) = got("localhost", answer);
            assert_eq!(plain, by_name, "{}", String::from_utf8_lossy(answer));
            assert!(
                plain_req.starts_with("put /status http/1.1\r\nhost: host:"),
                "{plain_req}"
            );
            for line in [
                "x-ms-version: 2015-09-01\r\n",
                "content-length: 2\r\n",
                "\r\n\r\n{}",
            ] {
                assert!(plain_req.contains(line), "{plain_req}");
                assert!(minreq_req.contains(line), "{minreq_req}");
            }
        }
    }
}
