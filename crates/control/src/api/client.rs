//! A small blocking client of the local API, for the CLI: one HTTP/1.1 request per
//! connection, with time and size limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{GetQuery, Manifests, Reply};

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for each read or write once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response accepted.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Talking to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error("cannot reach the control plane at {addr}: {cause}; start it with `weir control serve`, or point --control / WEIR_CONTROL at it")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("talking to the control plane at {addr} failed: {cause}; check it is running (`weir control serve`) and retry")]
    Io {
        /// The address.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The answer was not one of the API's.
    #[error("the control plane at {addr} answered something unexpected: {reason}; check --control / WEIR_CONTROL points at `weir control serve`")]
    BadResponse {
        /// The address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// An answer: whether the request succeeded (HTTP 2xx) and what to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// True for success.
    pub ok: bool,
    /// The lines to print.
    pub reply: Reply,
}

/// The API's client.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
}

impl Client {
    /// A client of the API at `addr` (`host:port`, optionally with `http://`).
    pub fn new(addr: &str) -> Self {
        let addr = addr.trim();
        let addr = addr.strip_prefix("http://").unwrap_or(addr);
        Client {
            addr: addr.trim_end_matches('/').to_string(),
        }
    }

    /// The address it talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `POST /apply`.
    pub fn apply(&self, manifests: &Manifests) -> Result<Response, ClientError> {
        self.post("/apply", manifests)
    }

    /// `POST /delete`.
    pub fn delete(&self, manifests: &Manifests) -> Result<Response, ClientError> {
        self.post("/delete", manifests)
    }

    /// `GET /resources/{kind}`.
    pub fn get(&self, kind: &str, query: &GetQuery) -> Result<Response, ClientError> {
        let mut path = format!("/resources/{}", encode(kind));
        let mut sep = '?';
        for (key, value) in [
            ("name", &query.name),
            ("namespace", &query.namespace),
            ("output", &query.output),
        ] {
            if let Some(v) = value {
                path.push_str(&format!("{sep}{key}={}", encode(v)));
                sep = '&';
            }
        }
        self.request("GET", &path, None)
    }

    /// `GET /analyze`.
    pub fn analyze(&self) -> Result<Response, ClientError> {
        self.request("GET", "/analyze", None)
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Result<Response, ClientError> {
        self.request("GET", "/healthz", None)
    }

    fn post(&self, path: &str, manifests: &Manifests) -> Result<Response, ClientError> {
        let body = serde_json::to_vec(manifests).map_err(|e| self.bad(e.to_string()))?;
        self.request("POST", path, Some(&body))
    }

    fn bad(&self, reason: String) -> ClientError {
        ClientError::BadResponse {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let unreachable = |cause| ClientError::Unreachable {
            addr: self.addr.clone(),
            cause,
        };
        let io = |cause| ClientError::Io {
            addr: self.addr.clone(),
            cause,
        };
        let addrs: Vec<SocketAddr> = self.addr.to_socket_addrs().map_err(unreachable)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or_else(|| unreachable(last))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        stream.flush().map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(io)?;
        if raw.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(self.bad(format!("response larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        self.parse_response(&raw)
    }

    fn parse_response(&self, raw: &[u8]) -> Result<Response, ClientError> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| self.bad("no HTTP header".into()))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut body = &raw[split + 4..];
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.bad("no HTTP status line".into()))?;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                return Err(self.bad("chunked responses are not supported".into()));
            }
            if name == "content-length" {
                let n: usize = value
                    .parse()
                    .map_err(|_| self.bad(format!("bad content-length `{value}`")))?;
                body = body
                    .get(..n)
                    .ok_or_else(|| self.bad("truncated body".into()))?;
            }
        }
        let reply: Reply = serde_json::from_slice(body).map_err(|e| {
            self.bad(format!(
                "HTTP {status} with a body that is not a reply ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        Ok(Response {
            ok: (200..300).contains(&status),
            reply,
        })
    }
}

/// Percent-encodes everything but unreserved characters, for paths and query values.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
