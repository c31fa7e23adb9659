//! Gateway mode: connections to an ingress gateway's server ports, routed by the
//! gateway configuration ([`crate::config::GatewayConfig`]) instead of going to a local
//! app.
//!
//! A `TCP` server gives every connection a weighted route. An `HTTP` server reads the
//! connection's first request head (at most [`MAX_HEAD_BYTES`], within [`HEAD_TIMEOUT`]),
//! matches its `Host` (without port) and its path without the query string against the
//! routes in order, and sends the
//! whole connection to the first route that matches, replaying the bytes already read:
//! routing is per connection, by its first request, so later requests on a kept-alive
//! connection follow the first one. A request no route matches gets `404 Not Found`, an
//! oversized or unreadable head `400 Bad Request`, a head that does not arrive in time
//! `408 Request Timeout`; each closes the connection. Upstream, gateway connections take
//! the same path as a sidecar's outbound connections (mutual TLS, metadata exchange,
//! `reporter="source"` metrics under the gateway's own workload).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use telemetry::ResponseFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{host_selected, GatewayConfig, GatewayProtocol, PathMatch};
use crate::connection::{self, Established};
use crate::outbound::{self, RouteTable, ServicePort, Target};
use crate::sidecar::{Generation, Shared};

/// Largest first request head read before routing.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time allowed for the first request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write an error response to the client.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, how long and how much of the client's input is discarded
/// before the connection closes.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// One gateway server, ready to route.
#[derive(Debug)]
enum ServerRoutes {
    /// `None`: the server has no route (connections are refused with `NC`).
    Tcp(Option<Arc<ServicePort>>),
    Http(Vec<HttpEntry>),
}

/// One HTTP route of a server: its conditions and where it sends connections.
#[derive(Debug)]
struct HttpEntry {
    hosts: Vec<String>,
    matches: Vec<PathMatch>,
    set: Arc<ServicePort>,
}

/// The routes of every gateway server, by port.
#[derive(Debug, Default)]
pub struct GatewayTable {
    servers: HashMap<u16, ServerRoutes>,
}

impl GatewayTable {
    /// Builds the table; route endpoints share `routes`' active-connection counts and
    /// carry over those of `previous`.
    pub fn build(config: &GatewayConfig, routes: &mut RouteTable, previous: &RouteTable) -> Self {
        let mut servers = HashMap::new();
        for s in &config.servers {
            let key = format!("gateway:{}", s.port);
            let built = match s.protocol {
                GatewayProtocol::Tcp => ServerRoutes::Tcp(routes.route_set(key, &s.tcp, previous)),
                GatewayProtocol::Http => ServerRoutes::Http(
                    s.http
                        .iter()
                        .enumerate()
                        .filter_map(|(i, h)| {
                            let set = routes.route_set(
                                format!("{key}/http[{i}]"),
                                &h.routes,
                                previous,
                            )?;
                            Some(HttpEntry {
                                hosts: h.hosts.clone(),
                                matches: h.matches.clone(),
                                set,
                            })
                        })
                        .collect(),
                ),
            };
            servers.insert(s.port, built);
        }
        Self { servers }
    }

    /// True when `port` is a gateway server port.
    pub fn serves(&self, port: u16) -> bool {
        self.servers.contains_key(&port)
    }

    /// The route set of the first HTTP route of server `port` that selects a request
    /// for `host` (without port) and `path`.
    fn http_route(&self, port: u16, host: Option<&str>, path: &str) -> Option<Arc<ServicePort>> {
        let Some(ServerRoutes::Http(routes)) = self.servers.get(&port) else {
            return None;
        };
        routes
            .iter()
            .find(|e| {
                host_selected(&e.hosts, host)
                    && (e.matches.is_empty() || e.matches.iter().any(|m| m.matches(path)))
            })
            .map(|e| e.set.clone())
    }
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("the request head exceeds {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// The head did not arrive within [`HEAD_TIMEOUT`].
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    /// The client closed before sending a complete head.
    #[error("the client closed the connection before a complete request head ({0} bytes)")]
    Closed(usize),
    /// The request line is not HTTP/1.x.
    #[error("not an HTTP/1 request: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("reading the request head failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads until the end of the first request head (an empty line), at most `max` bytes,
/// within `timeout`. Returns everything read, which may run past the head (a body or a
/// pipelined request): all of it is to be replayed upstream.
pub async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let room = max.saturating_sub(buf.len()).min(chunk.len());
            if room == 0 {
                return Err(HeadError::TooLarge);
            }
            let n = reader.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Err(HeadError::Closed(buf.len()));
            }
            // Only the new bytes and the three before them can complete the terminator.
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if head_end(&buf[from..]).is_some() {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HeadError::Timeout(timeout)),
    }
}

/// The offset just past the empty line that ends a head (`\r\n\r\n`, or a bare `\n\n`
/// as lenient servers accept).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The path of the request line at the start of `head`, without query string or
/// fragment. Origin form (`/a?b`) and absolute form (`http://host/a`) are understood.
pub fn request_path(head: &[u8]) -> Result<&str, HeadError> {
    let line_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| HeadError::Malformed("no request line".into()))?;
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| HeadError::Malformed("the request line is not text".into()))?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(format!(
            "request line {:?} is not `METHOD TARGET HTTP/1.x`",
            truncate(line)
        )));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(HeadError::Malformed(format!(
            "method {:?} is not a token",
            truncate(method)
        )));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed(format!(
            "version {:?} is not HTTP/1.x",
            truncate(version)
        )));
    }
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        // `*` (OPTIONS) and authority form (CONNECT) name no path.
        target
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    Ok(&path[..end])
}

/// The host a request is for, without port: the `Host` header's (or, without one, the
/// authority of an absolute-form target). `None` when the request names none.
pub fn request_host(head: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let request_line = lines.next()?;
    let header = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim())
    });
    let authority = match header {
        Some(h) => h,
        None => {
            let target = request_line.split(' ').nth(1)?;
            let rest = target
                .strip_prefix("http://")
                .or_else(|| target.strip_prefix("https://"))?;
            rest.split(['/', '?', '#']).next()?
        }
    };
    let host = if authority.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    (!host.is_empty()).then_some(host)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A complete response that closes the connection.
fn response(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

/// Writes an error response and closes the write side, within a time limit; then reads
/// and discards what the client still sends (bounded in bytes and time) so that closing
/// with unread input does not reset the connection before the client reads the answer.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, status: &str) {
    let text = response(status);
    let write = async {
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await
    };
    if !matches!(
        tokio::time::timeout(RESPONSE_TIMEOUT, write).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Sets up one connection to gateway server `port` (`destination` is the address the
/// client connected to): routes it, answering HTTP requests that match no route
/// itself. Returns it ready to copy, or `None` when it was answered, refused or failed.
pub(crate) async fn setup(
    shared: Arc<Shared>,
    gen: Arc<Generation>,
    mut client: TcpStream,
    source: SocketAddr,
    destination: SocketAddr,
    port: u16,
) -> Option<Established> {
    let ctx = connection::ConnName {
        kind: "gateway",
        source,
        destination,
    };
    let server = gen.gateway.as_ref().and_then(|g| g.servers.get(&port));
    let target = match server {
        None | Some(ServerRoutes::Tcp(None)) => {
            tracing::warn!(conn = %ctx, port, "no gateway route for this port; refusing");
            outbound::refuse(&shared, source, destination, ResponseFlags::NoClusterFound);
            return None;
        }
        Some(ServerRoutes::Tcp(Some(set))) => set.clone(),
        Some(ServerRoutes::Http(_)) => {
            let head = read_head(&mut client, MAX_HEAD_BYTES, HEAD_TIMEOUT).await;
            let status = match &head {
                Ok(buf) => match request_path(buf) {
                    Ok(path) => match gen
                        .gateway
                        .as_ref()
                        .and_then(|g| g.http_route(port, request_host(buf), path))
                    {
                        Some(set) => {
                            tracing::debug!(conn = %ctx, path, route = set.key(), "gateway route");
                            let replay = head.unwrap_or_default();
                            let target = Target::Route {
                                port: set,
                                original: None,
                            };
                            return outbound::setup(
                                shared,
                                gen,
                                client,
                                source,
                                destination,
                                target,
                                replay,
                            )
                            .await;
                        }
                        None => {
                            tracing::info!(conn = %ctx, host = ?request_host(buf).map(truncate), path = %truncate(path), "no gateway route matches the request; 404");
                            "404 Not Found"
                        }
                    },
                    Err(e) => {
                        tracing::info!(conn = %ctx, error = %e, "unreadable request; 400");
                        "400 Bad Request"
                    }
                },
                Err(HeadError::TooLarge) => {
                    tracing::info!(conn = %ctx, max = MAX_HEAD_BYTES, "request head too large; 400");
                    "400 Bad Request"
                }
                Err(HeadError::Timeout(t)) => {
                    tracing::info!(conn = %ctx, timeout = ?t, "request head stalled; 408");
                    "408 Request Timeout"
                }
                Err(e @ (HeadError::Closed(_) | HeadError::Io(_) | HeadError::Malformed(_))) => {
                    // Nothing to answer and nothing was routed (health checks that
                    // connect and close look like this).
                    tracing::debug!(conn = %ctx, error = %e, "connection ended before a request");
                    return None;
                }
            };
            reply(&mut client, status).await;
            outbound::refuse(&shared, source, destination, ResponseFlags::NoClusterFound);
            return None;
        }
    };
    let target = Target::Route {
        port: target,
        original: None,
    };
    outbound::setup(shared, gen, client, source, destination, target, Vec::new()).await
}

#[cfg(test)]
mod tests;
