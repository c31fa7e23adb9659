//! What every proxied connection shares, whichever direction it runs: the table of live
//! connections (admin and drain), upstream connects, and the two-way pump.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use telemetry::{ByteCounters, DestinationService, ResponseFlags, Workload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::copy::{copy_one_way, copy_ready_one_way, splice_one_way, CopyEnd, TcpRef};
use crate::exchange::{read_peer_frame, workload_of, ExchangeError};
use crate::stream::EitherStream;
use relay::Limits;

/// Which listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the local workload to a service (source reporter).
    Outbound,
    /// From a peer to the local workload (destination reporter).
    Inbound,
}

/// What is known about the peer of a live connection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerSummary {
    /// Verified SPIFFE id (mTLS only).
    pub identity: Option<String>,
    /// Workload name from metadata exchange.
    pub workload: Option<String>,
    /// Namespace from metadata exchange.
    pub namespace: Option<String>,
}

/// One live connection, as `/connections` shows it.
#[derive(Debug)]
pub struct LiveEntry {
    id: u64,
    direction: Direction,
    source: SocketAddr,
    destination: SocketAddr,
    started: Instant,
    /// What setup learns; one lock, rarely taken (setup, MX, `/connections`).
    details: Mutex<Details>,
    bytes: Arc<ByteCounters>,
}

#[derive(Debug, Default)]
struct Details {
    service: Option<Arc<DestinationService>>,
    upstream: Option<SocketAddr>,
    peer: Option<Box<PeerSummary>>,
}

impl LiveEntry {
    fn details(&self) -> std::sync::MutexGuard<'_, Details> {
        self.details.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client's address.
    pub fn source(&self) -> SocketAddr {
        self.source
    }

    /// The address the client asked for.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The endpoint connected to, once known.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.details().upstream
    }

    /// Records the peer once known.
    pub fn set_peer(&self, peer: PeerSummary) {
        self.details().peer = Some(Box::new(peer));
    }

    /// Records what the metadata exchange (or its absence) told about the peer and
    /// returns the peer's side of the metrics with, when MX named it, the peer's
    /// `workload.namespace` for the access log. `unknown_peer` (carrying the verified
    /// principal, if any) stands in when there was no usable metadata.
    pub fn note_peer(
        &self,
        peer: Option<&mx::PeerMetadata>,
        unknown_reason: Option<&str>,
        unknown_peer: &Workload,
    ) -> (Workload, Option<String>) {
        if let Some(reason) = unknown_reason {
            tracing::debug!(conn = %self, reason, "peer metadata unknown");
        }
        if let Some(m) = peer {
            self.set_peer(PeerSummary {
                identity: unknown_peer.principal.clone(),
                workload: Some(m.workload_name.clone()),
                namespace: Some(m.namespace.clone()),
            });
        } else if unknown_peer.principal.is_some() {
            self.set_peer(PeerSummary {
                identity: unknown_peer.principal.clone(),
                ..PeerSummary::default()
            });
        }
        match peer {
            Some(m) => (
                workload_of(m, unknown_peer.principal.as_deref()),
                Some(format!("{}.{}", m.workload_name, m.namespace)),
            ),
            None => (unknown_peer.clone(), None),
        }
    }

    /// Records the chosen service.
    pub fn set_service(&self, service: &Arc<DestinationService>) {
        self.details().service = Some(service.clone());
    }

    /// Records the endpoint connected to.
    pub fn set_upstream(&self, addr: SocketAddr) {
        self.details().upstream = Some(addr);
    }
}

/// How log lines name a connection: `outbound 10.0.0.1:43512->10.96.0.7:3306`. Written
/// out only when a line is logged, so naming costs a connection nothing.
#[derive(Clone, Copy, Debug)]
pub struct ConnName {
    /// `outbound`, `inbound` or `gateway`.
    pub kind: &'static str,
    /// Client address.
    pub source: SocketAddr,
    /// Address the client asked for.
    pub destination: SocketAddr,
}

impl fmt::Display for ConnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}->{}", self.kind, self.source, self.destination)
    }
}

impl fmt::Display for LiveEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        };
        ConnName {
            kind,
            source: self.source,
            destination: self.destination,
        }
        .fmt(f)
    }
}

/// A live connection as JSON.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// Process-unique id.
    pub id: u64,
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// Client address.
    pub source: SocketAddr,
    /// Address the client connected to (the original destination when captured).
    pub destination: SocketAddr,
    /// Endpoint or app address the proxy connected to.
    pub upstream: Option<SocketAddr>,
    /// Destination service host.
    pub service: String,
    /// Peer identity and workload.
    pub peer: Option<PeerSummary>,
    /// Request-direction bytes so far.
    pub received_bytes: u64,
    /// Response-direction bytes so far.
    pub sent_bytes: u64,
    /// Seconds since accept.
    pub age_seconds: f64,
}

/// All live connections.
#[derive(Debug, Default)]
pub struct LiveConnections {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<LiveEntry>>>,
    changed: Notify,
}

impl LiveConnections {
    /// Registers a connection accepted at `started`; it leaves the table when the
    /// guard drops.
    pub fn register(
        self: &Arc<Self>,
        direction: Direction,
        source: SocketAddr,
        destination: SocketAddr,
        started: Instant,
        bytes: Arc<ByteCounters>,
    ) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(LiveEntry {
            id,
            direction,
            source,
            destination,
            started,
            details: Mutex::default(),
            bytes,
        });
        self.lock().insert(id, entry.clone());
        LiveGuard {
            table: self.clone(),
            entry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<LiveEntry>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot for the admin endpoint.
    pub fn snapshot(&self) -> Vec<ConnectionView> {
        self.lock()
            .values()
            .map(|e| {
                let details = e.details();
                ConnectionView {
                    id: e.id,
                    direction: e.direction,
                    source: e.source,
                    destination: e.destination,
                    upstream: details.upstream,
                    service: details
                        .service
                        .as_ref()
                        .map(|s| s.fqdn.clone())
                        .unwrap_or_default(),
                    peer: details.peer.as_deref().cloned(),
                    received_bytes: e.bytes.received(),
                    sent_bytes: e.bytes.sent(),
                    age_seconds: e.started.elapsed().as_secs_f64(),
                }
            })
            .collect()
    }

    /// Waits until no connection is live or `deadline` passes; true when empty.
    pub async fn wait_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a close between the check and the wait
            // still wakes us.
            notified.as_mut().enable();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_empty();
            }
        }
    }
}

/// Removes its connection from the table when dropped.
#[derive(Debug)]
pub struct LiveGuard {
    table: Arc<LiveConnections>,
    entry: Arc<LiveEntry>,
}

impl LiveGuard {
    /// The connection's entry.
    pub fn entry(&self) -> &LiveEntry {
        &self.entry
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.table.lock().remove(&self.entry.id);
        self.table.changed.notify_waiters();
    }
}

/// Connects to `addr` within `timeout`, with `SO_MARK` when given and `TCP_NODELAY`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    mark: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        // Lets the capture rules recognise the proxy's own traffic (needs CAP_NET_ADMIN).
        socket2::SockRef::from(&socket)
            .set_mark(mark)
            .map_err(|e| mark_error(mark, e))?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ))
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn mark_error(mark: u32, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("setting SO_MARK {mark} (capture.mark) failed: {e}; run the proxy with CAP_NET_ADMIN or remove capture.mark"),
    )
}

/// Checks that upstream sockets can carry `mark`, so a missing capability is reported
/// at start rather than as a connect failure on every connection.
pub fn probe_mark(mark: u32) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket2::SockRef::from(&socket)
        .set_mark(mark)
        .map_err(|e| mark_error(mark, e))
}

/// Which stream carries the peer's metadata frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MxSide {
    /// The connecting client is the peer (inbound).
    Downstream,
    /// The server is the peer (outbound).
    Upstream,
}

/// Metadata-exchange reading parameters for [`pump`].
pub struct MxRead<'a> {
    /// Which side sends the peer frame.
    pub side: MxSide,
    /// Frame size limit.
    pub max_frame_len: usize,
    /// Frame time limit.
    pub timeout: Duration,
    /// Called at most once with the result (peer metadata or why it is unknown); not
    /// when the connection ends before the frame or its time limit.
    pub on_result: &'a mut (dyn FnMut(Option<mx::PeerMetadata>, Option<String>) + Send),
}

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// Both directions finished (end of stream or an error after which the
    /// connection is over).
    Done,
    /// Metadata exchange failed and the connection was closed.
    Exchange(ExchangeError),
    /// The maximum connection duration passed.
    DurationLimit,
    /// No byte moved for the idle timeout.
    Idle,
    /// The drain deadline passed.
    Cut,
}

enum DirEnd {
    Copy(CopyEnd),
    Exchange(ExchangeError),
}

/// How a direction moves bytes once the metadata frame (if any) is off its front.
#[derive(Clone, Copy)]
enum Path<'a> {
    /// Both sockets are plain TCP: `splice(2)`, reader then writer.
    Splice(&'a TcpStream, &'a TcpStream),
    /// The reader is plain TCP: a buffer only while data waits.
    Ready(&'a TcpStream),
    /// Anything else (TLS): the adaptive buffer.
    Stream,
}

async fn forward<R, W>(
    reader: &mut R,
    writer: &mut W,
    mx: Option<MxRead<'_>>,
    path: Path<'_>,
    count: &(dyn Fn(u64) + Send + Sync),
) -> DirEnd
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut prefix = Vec::new();
    if let Some(mx) = mx {
        let on_result = mx.on_result;
        let mut resolved = false;
        let mut on_quiet = || {
            // The frame has not come yet: report the connection with an unknown peer
            // now so it is visible within a reporting interval.
            on_result(
                None,
                Some("no istio-peer-exchange frame within the time limit".into()),
            );
            resolved = true;
        };
        let frame = read_peer_frame(reader, mx.max_frame_len, mx.timeout, &mut on_quiet).await;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return DirEnd::Exchange(e),
        };
        if !resolved {
            on_result(frame.peer, frame.unknown_reason);
        }
        if frame.eof {
            return DirEnd::Copy(
                copy_one_way(&mut tokio::io::empty(), writer, &frame.leftover, count).await,
            );
        }
        prefix = frame.leftover;
    }
    DirEnd::Copy(match path {
        Path::Splice(from, to) => splice_one_way(from, to, &prefix, count).await,
        Path::Ready(from) => copy_ready_one_way(from, writer, &prefix, count).await,
        Path::Stream => copy_one_way(reader, writer, &prefix, count).await,
    })
}

/// The plain TCP socket under a connection's stream, when it is one: the stream types
/// the listeners hand to [`pump`] (a bare socket, or the plaintext side of
/// [`EitherStream`]).
fn plain_tcp(stream: &dyn Any) -> Option<&TcpStream> {
    if let Some(tcp) = stream.downcast_ref::<TcpStream>() {
        return Some(tcp);
    }
    match (
        stream.downcast_ref::<ClientSide>(),
        stream.downcast_ref::<ServerSide>(),
    ) {
        (Some(EitherStream::Left(tcp)), _) | (_, Some(EitherStream::Left(tcp))) => Some(tcp),
        _ => None,
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type ClientSide = EitherStream<TcpStream, ClientTls>;
type ServerSide = EitherStream<TcpStream, ServerTls>;

/// True for the TLS side of the listeners' stream types.
fn is_tls(stream: &dyn Any) -> bool {
    matches!(
        stream.downcast_ref::<ClientSide>(),
        Some(EitherStream::Right(_))
    ) || matches!(
        stream.downcast_ref::<ServerSide>(),
        Some(EitherStream::Right(_))
    )
}

/// Takes `slot`'s stream when it is one of the listeners' `EitherStream`s with the TLS
/// side (`tls`) or the plaintext side (`!tls`); leaves it in place otherwise.
fn take_side<R: Any>(slot: &mut dyn Any, tls: bool) -> Option<EitherStream<TcpStream, R>> {
    let side = slot.downcast_mut::<Option<EitherStream<TcpStream, R>>>()?;
    if matches!(side, Some(EitherStream::Right(_))) == tls {
        side.take()
    } else {
        None
    }
}

/// Takes the TLS session and its socket out of `slot` when [`is_tls`] holds.
fn take_tls<S: Any>(slot: &mut Option<S>) -> Option<tls_relay::TlsSide> {
    let any: &mut dyn Any = slot;
    if let Some(EitherStream::Right(tls)) = take_side::<ClientTls>(any, true) {
        let (tcp, session) = tls.into_inner();
        return Some((tcp, session.into()));
    }
    if let Some(EitherStream::Right(tls)) = take_side::<ServerTls>(any, true) {
        let (tcp, session) = tls.into_inner();
        return Some((tcp, session.into()));
    }
    None
}

/// Takes the plain TCP socket out of `slot` when [`plain_tcp`] finds one.
fn take_plain_tcp<S: Any>(slot: &mut Option<S>) -> Option<TcpStream> {
    let any: &mut dyn Any = slot;
    if let Some(tcp) = any.downcast_mut::<Option<TcpStream>>() {
        return tcp.take();
    }
    if let Some(EitherStream::Left(tcp)) = take_side::<ClientTls>(any, false) {
        return Some(tcp);
    }
    if let Some(EitherStream::Left(tcp)) = take_side::<ServerTls>(any, false) {
        return Some(tcp);
    }
    None
}

/// Copies both ways between `downstream` (the client) and `upstream` (the server)
/// until both directions end, counting request bytes as received and response bytes
/// as sent. With `mx`, the peer's frame is read off the front of its stream first.
///
/// The sidecar's two shapes run as small hand-written futures that hold no buffer
/// while the connection is quiet: two plain TCP sides (plaintext hops) as a
/// [`relay::Relay`], and a TLS side with a plain one (mutual TLS between sidecars) as
/// a [`tls_relay::TlsRelay`]. Other pairs take the general path, whose plain TCP sides
/// still use the fast paths of [`crate::copy`]; it is boxed so that relayed
/// connections do not reserve its larger state. The choice is made here, before the
/// first poll, so the returned future is only as large as the largest relay.
pub fn pump<'a, D, U>(
    downstream: D,
    upstream: U,
    bytes: &'a ByteCounters,
    mx: Option<MxRead<'a>>,
    limits: PumpLimits,
    cut: &'a CancellationToken,
    log_ctx: &'a (dyn fmt::Display + Sync),
) -> Pump<'a>
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = Limits::new(limits, bytes);
    pump_armed(downstream, upstream, bytes, mx, limits, cut, log_ctx)
}

/// [`pump`] with its limits already running (see [`Limits::new`]).
fn pump_armed<'a, D, U>(
    downstream: D,
    upstream: U,
    bytes: &'a ByteCounters,
    mx: Option<MxRead<'a>>,
    limits: Option<Box<Limits>>,
    cut: &'a CancellationToken,
    log_ctx: &'a (dyn fmt::Display + Sync),
) -> Pump<'a>
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut down = Some(downstream);
    let mut up = Some(upstream);
    let plain = |s: Option<&dyn Any>| s.and_then(plain_tcp).is_some();
    let tls = |s: Option<&dyn Any>| s.is_some_and(is_tls);
    let (d, u) = (
        down.as_ref().map(|d| d as &dyn Any),
        up.as_ref().map(|u| u as &dyn Any),
    );
    let mx_side = mx.as_ref().map(|m| m.side);
    if mx.is_none() && plain(d) && plain(u) {
        if let (Some(d), Some(u)) = (take_plain_tcp(&mut down), take_plain_tcp(&mut up)) {
            return Pump::Plain(relay::Relay::new(d, u, bytes, limits, cut, log_ctx));
        }
    } else if tls(d) && plain(u) && mx_side != Some(MxSide::Upstream) {
        // Inbound: the peer sidecar's TLS downstream, the local app upstream.
        if let (Some(t), Some(p)) = (take_tls(&mut down), take_plain_tcp(&mut up)) {
            let relay = tls_relay::TlsRelay::new(p, t, true, mx, bytes, limits, cut, log_ctx);
            return Pump::Tls(relay);
        }
    } else if plain(d) && tls(u) && mx_side != Some(MxSide::Downstream) {
        // Outbound: the local client downstream, the peer sidecar's TLS upstream.
        if let (Some(p), Some(t)) = (take_plain_tcp(&mut down), take_tls(&mut up)) {
            let relay = tls_relay::TlsRelay::new(p, t, false, mx, bytes, limits, cut, log_ctx);
            return Pump::Tls(relay);
        }
    }
    let (Some(downstream), Some(upstream)) = (down, up) else {
        // Unreachable: a branch above takes its two sides only after checking both.
        return Pump::General(Box::pin(std::future::ready(PumpEnd::Done)));
    };
    Pump::General(Box::pin(pump_general(
        downstream, upstream, bytes, mx, limits, cut, log_ctx,
    )))
}

/// The copy phase of one connection, as [`pump`] chose it.
pub enum Pump<'a> {
    /// Two plain TCP sockets.
    Plain(relay::Relay<'a>),
    /// A TLS session and a plain TCP socket.
    Tls(tls_relay::TlsRelay<'a, 'a>),
    /// Any other pair of streams.
    General(Pin<Box<dyn Future<Output = PumpEnd> + Send + 'a>>),
}

impl Future for Pump<'_> {
    type Output = PumpEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PumpEnd> {
        match self.get_mut() {
            Pump::Plain(r) => Pin::new(r).poll(cx),
            Pump::Tls(r) => Pin::new(r).poll(cx),
            Pump::General(f) => f.as_mut().poll(cx),
        }
    }
}

/// The general pump: any pair of streams, with or without metadata exchange.
async fn pump_general<D, U>(
    downstream: D,
    upstream: U,
    bytes: &ByteCounters,
    mx: Option<MxRead<'_>>,
    limits: Option<Box<Limits>>,
    cut: &CancellationToken,
    log_ctx: &(dyn fmt::Display + Sync),
) -> PumpEnd
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let ctx = PumpCtx {
        bytes,
        limits,
        cut,
        log_ctx,
    };
    match (plain_tcp(&downstream), plain_tcp(&upstream)) {
        (Some(d), Some(u)) => {
            let paths = (Path::Splice(d, u), Path::Splice(u, d));
            pump_halves(
                (TcpRef(d), TcpRef(d)),
                (TcpRef(u), TcpRef(u)),
                paths,
                mx,
                ctx,
            )
            .await
        }
        (Some(d), None) => {
            let paths = (Path::Ready(d), Path::Stream);
            let up = tokio::io::split(upstream);
            pump_halves((TcpRef(d), TcpRef(d)), up, paths, mx, ctx).await
        }
        (None, Some(u)) => {
            let paths = (Path::Stream, Path::Ready(u));
            let down = tokio::io::split(downstream);
            pump_halves(down, (TcpRef(u), TcpRef(u)), paths, mx, ctx).await
        }
        (None, None) => {
            let down = tokio::io::split(downstream);
            let up = tokio::io::split(upstream);
            pump_halves(down, up, (Path::Stream, Path::Stream), mx, ctx).await
        }
    }
}

struct PumpCtx<'a> {
    bytes: &'a ByteCounters,
    limits: Option<Box<Limits>>,
    cut: &'a CancellationToken,
    log_ctx: &'a (dyn fmt::Display + Sync),
}

async fn pump_halves<DR, DW, UR, UW>(
    (mut down_r, mut down_w): (DR, DW),
    (mut up_r, mut up_w): (UR, UW),
    (request_path, response_path): (Path<'_>, Path<'_>),
    mx: Option<MxRead<'_>>,
    ctx: PumpCtx<'_>,
) -> PumpEnd
where
    DR: AsyncRead + Unpin + Send,
    DW: AsyncWrite + Unpin + Send,
    UR: AsyncRead + Unpin + Send,
    UW: AsyncWrite + Unpin + Send,
{
    let PumpCtx {
        bytes,
        limits,
        cut,
        log_ctx,
    } = ctx;
    let count_received = |n: u64| bytes.add_received(n);
    let count_sent = |n: u64| bytes.add_sent(n);
    let (mx_request, mx_response) = match mx {
        Some(m) if m.side == MxSide::Downstream => (Some(m), None),
        Some(m) => (None, Some(m)),
        None => (None, None),
    };
    let abort = CancellationToken::new();
    let exchange_error: Mutex<Option<ExchangeError>> = Mutex::new(None);
    let finish = |end: DirEnd, what: &str| match end {
        DirEnd::Copy(CopyEnd::Eof) => {}
        DirEnd::Copy(CopyEnd::Error { error, after_data }) => {
            if after_data && is_normal_end(&error) {
                tracing::debug!(conn = %log_ctx, direction = what, %error, "connection ended by the peer");
            } else {
                tracing::debug!(conn = %log_ctx, direction = what, %error, "connection ended with an error");
            }
            abort.cancel();
        }
        DirEnd::Exchange(e) => {
            *exchange_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e);
            abort.cancel();
        }
    };
    let request = async {
        let end = forward(
            &mut down_r,
            &mut up_w,
            mx_request,
            request_path,
            &count_received,
        )
        .await;
        finish(end, "request");
    };
    let response = async {
        let end = forward(
            &mut up_r,
            &mut down_w,
            mx_response,
            response_path,
            &count_sent,
        )
        .await;
        finish(end, "response");
    };
    let limits = async {
        match limits {
            Some(mut l) => std::future::poll_fn(|cx| l.poll(cx, bytes)).await,
            None => std::future::pending().await,
        }
    };
    // Pinned here and joined by reference: joining them by value would keep a second,
    // moved-from copy of both directions in the connection's future (about 2.6 KB that
    // every open connection would carry). The block ends their borrows before the
    // exchange error is read.
    let end = {
        tokio::pin!(request, response);
        tokio::select! {
            _ = async { tokio::join!(&mut request, &mut response) } => PumpEnd::Done,
            _ = abort.cancelled() => PumpEnd::Done,
            end = limits => end,
            _ = cut.cancelled() => PumpEnd::Cut,
        }
    };
    match exchange_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        Some(e) => PumpEnd::Exchange(e),
        None => end,
    }
}

/// Time limits of one pump.
#[derive(Clone, Copy, Debug, Default)]
pub struct PumpLimits {
    /// Longest life (`DT` when reached).
    pub max_duration: Option<Duration>,
    /// Longest quiet period.
    pub idle_timeout: Option<Duration>,
}

impl PumpLimits {
    /// The limits configured in `limits`.
    pub fn from_config(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            max_duration: limits.max_connection_duration,
            idle_timeout: limits.idle_timeout,
        }
    }
}

/// Resets and broken pipes after data flowed are how many peers end a connection.
pub fn is_normal_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Everything the access log line says about a connection.
pub struct AccessLog<'a> {
    /// Direction.
    pub direction: Direction,
    /// Client address.
    pub source: SocketAddr,
    /// Destination the client asked for.
    pub destination: SocketAddr,
    /// Endpoint actually used.
    pub upstream: Option<SocketAddr>,
    /// Destination service host.
    pub service: &'a str,
    /// Peer identity or workload.
    pub peer: &'a str,
    /// Bytes counters.
    pub bytes: &'a ByteCounters,
    /// When accepted.
    pub started: Instant,
    /// Response flags.
    pub flags: ResponseFlags,
}

impl AccessLog<'_> {
    /// Ends the connection with `flags`: records `closed` (and the last bytes) under
    /// them, then writes the access log line.
    pub fn finish(mut self, recorder: telemetry::ConnectionRecorder, flags: ResponseFlags) {
        self.flags = flags;
        recorder.close(Some(flags));
        self.emit();
    }

    /// Writes the line (target `access`).
    pub fn emit(&self) {
        tracing::info!(
            target: "access",
            direction = ?self.direction,
            src = %self.source,
            dst = %self.destination,
            upstream = %self.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            service = self.service,
            peer = self.peer,
            received_bytes = self.bytes.received(),
            sent_bytes = self.bytes.sent(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            response_flags = self.flags.as_str(),
            "tcp connection closed"
        );
    }
}

mod established;
mod relay;
mod tls_relay;

pub(crate) use established::{Established, Holds, MxParams, Names, Peer, Reporter, Streams};

#[cfg(test)]
mod tests;
