//! The HTTP plumbing the apps share: an HTTP/1 accept loop, response builders, bounded
//! request bodies, and a one-connection-per-request client with time and size limits
//! that forwards Istio's tracing headers.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// Response body type of every app.
pub(crate) type Body = Full<Bytes>;

/// Largest request body an app reads (ratings accepts POSTed JSON).
pub(crate) const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest response body the client reads from an upstream.
pub(crate) const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// Time a client gets to send a request's headers (also bounds idle keep-alive).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client gets to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the client waits for an upstream connection to close after its response.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Request headers Istio's Bookinfo apps copy onto their outbound calls so that traces
/// and header-based routing see one request end to end.
pub const PROPAGATED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// Where an app sends its calls: `host:port`, resolved on every call (the service
/// name resolves through the pod's DNS in the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Upstream {
    /// An upstream at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// The upstream Istio's apps build from `<NAME>_HOSTNAME` (default `default_host`),
    /// `SERVICES_DOMAIN` (appended as `.<domain>`) and `<NAME>_SERVICE_PORT` (default 9080).
    pub(crate) fn from_env(
        env: &impl Fn(&str) -> Option<String>,
        hostname_var: &str,
        default_host: &str,
        port_var: &str,
    ) -> Result<Self, crate::env::EnvError> {
        let host = crate::env::var(env, hostname_var).unwrap_or_else(|| default_host.to_string());
        let host = match crate::env::var(env, "SERVICES_DOMAIN") {
            Some(domain) => format!("{host}.{domain}"),
            None => host,
        };
        let port = crate::env::port(env, port_var, 9080)?;
        Ok(Self { host, port })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

/// Why an outbound call got no usable response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("connecting to {upstream}: {source}")]
    Connect { upstream: String, source: io::Error },
    #[error("HTTP exchange with {upstream}: {source}")]
    Http {
        upstream: String,
        source: hyper::Error,
    },
    #[error("response body from {upstream} is over {limit} bytes or broken: {detail}")]
    Body {
        upstream: String,
        limit: usize,
        detail: String,
    },
    #[error("no response from {upstream} within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("bad request path {path:?} for {upstream}")]
    Path { upstream: String, path: String },
}

/// `GET http://upstream{path}` on a fresh connection, copying `headers`, bounded by
/// `timeout` overall and [`MAX_RESPONSE_BODY`]. Returns the status and body whatever
/// the status is.
pub(crate) async fn get(
    upstream: &Upstream,
    path: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), FetchError> {
    let name = upstream.to_string();
    match tokio::time::timeout(timeout, exchange(upstream, path, headers)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout {
            upstream: name,
            timeout,
        }),
    }
}

async fn exchange(
    upstream: &Upstream,
    path: &str,
    headers: &HeaderMap,
) -> Result<(StatusCode, Bytes), FetchError> {
    let name = upstream.to_string();
    let stream = TcpStream::connect((upstream.host.as_str(), upstream.port))
        .await
        .map_err(|source| FetchError::Connect {
            upstream: name.clone(),
            source,
        })?;
    // Small request/response exchanges: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let http_err = |source| FetchError::Http {
        upstream: name.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let conn_task = AbortOnDrop(tokio::spawn(conn));

    let mut builder = Request::get(path);
    if let Some(h) = builder.headers_mut() {
        h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Ok(host) = HeaderValue::from_str(&upstream.authority()) {
            h.insert(HOST, host);
        }
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|_| FetchError::Path {
            upstream: name.clone(),
            path: path.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Body {
            upstream: name.clone(),
            limit: MAX_RESPONSE_BODY,
            detail: e.to_string(),
        })?
        .to_bytes();
    // Dropping the sender lets the connection close cleanly; bounded so a peer that
    // never closes cannot hold the task.
    drop(sender);
    let mut conn_task = conn_task;
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut conn_task.0).await;
    Ok((status, body))
}

/// Aborts a spawned task when dropped (cancelled or timed-out calls leave nothing behind).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The subset of `incoming` listed in [`PROPAGATED_HEADERS`].
pub(crate) fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED_HEADERS {
        for value in incoming.get_all(*name) {
            out.append(*name, value.clone());
        }
    }
    out
}

/// Accepts connections on `listener` forever, serving each with `handler` on its own
/// task. Transient accept errors (resets, fd exhaustion) are logged and retried; any
/// other accept error is returned.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    app: &'static str,
    handler: H,
) -> io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(app, %addr, "listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_error(app, e).await?;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(app, %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Sleeps after a retryable accept error, or returns the error if it is not one.
pub(crate) async fn accept_error(app: &'static str, e: io::Error) -> io::Result<()> {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => Ok(()),
        _ => match e.raw_os_error() {
            // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources to come back.
            Some(24 | 23 | 105 | 12) => {
                tracing::warn!(app, error = %e, "accept failed, retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
            _ => Err(e),
        },
    }
}

/// Reads a request body of at most [`MAX_REQUEST_BODY`] bytes within a time limit.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    let collect = Limited::new(req.into_body(), MAX_REQUEST_BODY).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) => Err(format!(
            "request body is over {MAX_REQUEST_BODY} bytes or broken: {e}"
        )),
        Err(_) => Err(format!(
            "request body not received within {BODY_READ_TIMEOUT:?}"
        )),
    }
}

/// A response with `status`, `content_type` and `body`.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response; serialization of our own types cannot fail, but if it did the
/// client still gets a defined 500.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            format!("{{\"error\":\"internal serialization error: {e}\"}}"),
        ),
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Istio's apps answer unknown paths with a plain 404.
pub(crate) fn not_found() -> Response<Body> {
    response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "Not Found\n",
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn only_listed_headers_propagate() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert("x-b3-traceid", HeaderValue::from_static("t1"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        let out = propagated(&h);
        assert_eq!(out.len(), 2);
        assert_eq!(out["x-request-id"], "r1");
        assert_eq!(out["x-b3-traceid"], "t1");
    }

    #[test]
    fn upstream_from_istio_variables() {
        let env = crate::env::from_pairs(&[
            ("SERVICES_DOMAIN", "default.svc.cluster.local"),
            ("DETAILS_HOSTNAME", "details-alt"),
            ("DETAILS_SERVICE_PORT", "9081"),
        ]);
        let up = Upstream::from_env(&env, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT")
            .unwrap();
        assert_eq!(up.to_string(), "details-alt.default.svc.cluster.local:9081");
        let env = crate::env::from_pairs(&[]);
        let up = Upstream::from_env(&env, "REVIEWS_HOSTNAME", "reviews", "REVIEWS_SERVICE_PORT")
            .unwrap();
        assert_eq!(up, Upstream::new("reviews", 9080));
        assert_eq!(Upstream::new("::1", 80).to_string(), "[::1]:80");
    }
}
