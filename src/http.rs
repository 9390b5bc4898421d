//! The one HTTP(S) call the agent makes, over minreq (rustls + ring for
//! HTTPS). Timeouts and a response-size bound on every request; no decisions
//! here — the WireServer client above it owns retries and status handling.

use std::fmt;

/// Largest response body accepted, held in memory: the fabric's documents
/// are kilobytes. (Nothing larger is fetched yet; extension packages, when
/// they come, must be streamed to disk instead.)
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

/// Sends `req` and reads the whole response (bounded by `req.max_body`
/// and [`MAX_RESPONSE_BYTES`]). Any status is a response; only transport
/// failures are errors.
pub fn send(req: &Request<'_>) -> Result<Response, HttpError> {
    let err = |message: String| HttpError {
        url: req.url.to_string(),
        message,
    };
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
        .with_max_headers_size(64 * 1024)
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
    let headers: Vec<(String, String)> = lazy
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let limit = req.max_body.min(MAX_RESPONSE_BYTES);
    let mut body = Vec::new();
    for byte in lazy {
        let (b, _) = byte.map_err(|e| err(e.to_string()))?;
        if body.len() == limit {
            return Err(err(format!("response larger than {limit} bytes refused")));
        }
        body.push(b);
    }
    // minreq ends the body quietly at EOF; a body shorter than announced
    // is a broken connection, not a document.
    let announced = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if let Some(n) = announced {
        if body.len() != n {
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

    #[test]
    fn oversized_body_is_refused() {
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', 5000));
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
        assert!(
            e.to_string()
                .ends_with("response larger than 4096 bytes refused"),
            "{e}"
        );
        let _ = h.join();
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
}
