//! The control plane's side: a gRPC server over mutual TLS that streams each connected
//! proxy its configuration as deltas and records its acknowledgements.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::{authorize, CertificateSigner, CsrError, DEFAULT_TTL};
use crate::convert::node_from_proto;
use crate::proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use crate::proto::{CertificateRequest, CertificateResponse, DeltaRequest, DeltaResponse};
use crate::tls::SpiffeId;
use crate::{NodeInfo, ProxyView, ViewSource};

mod metrics;
mod stream;

pub use metrics::ServerMetrics;
use stream::{Answer, StreamState};

/// Time a proxy has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a proxy has, once its stream is open, to announce its node.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most resource versions a proxy may report on reconnect.
const MAX_INITIAL_VERSIONS: usize = 100_000;
/// Largest message accepted from a proxy.
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Largest message sent to a proxy (a full view of a large mesh).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("configuration server on {addr} failed: {error}")]
    Transport {
        /// The listening address.
        addr: String,
        /// The transport's error.
        error: tonic::transport::Error,
    },
}

/// What the TLS handshake established about a connected proxy.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The proxy's address.
    pub remote: Option<SocketAddr>,
    /// The SPIFFE identity of its verified client certificate, or why there is none.
    pub identity: Result<SpiffeId, String>,
}

/// The configuration delivery server.
#[derive(Clone)]
pub struct ConfigServer {
    source: Arc<dyn ViewSource>,
    metrics: ServerMetrics,
    signer: Option<Arc<dyn CertificateSigner>>,
}

impl std::fmt::Debug for ConfigServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigServer")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl ConfigServer {
    /// A server handing out the views of `source`, with its metrics registered in
    /// `registry` (serve that registry on the monitoring port).
    pub fn new(source: Arc<dyn ViewSource>, registry: &mut Registry) -> Self {
        Self {
            source,
            metrics: ServerMetrics::register(registry),
            signer: None,
        }
    }

    /// Also signs workload certificates (`CreateCertificate`) with `signer`; without
    /// one that call answers `UNIMPLEMENTED`.
    pub fn with_signer(mut self, signer: Arc<dyn CertificateSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The delivery metrics.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Serves on `listener` until `shutdown` is cancelled; every client must present a
    /// certificate verified by `tls` (see [`crate::tls::TlsMaterial::server_config`]).
    /// Open streams end with `UNAVAILABLE` on shutdown, so proxies reconnect elsewhere or
    /// later while keeping their configuration.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        tracing::info!(%addr, "configuration server listening");
        // Cancelled by the caller or when serving fails; ends the accept loop and streams.
        let stop = shutdown.child_token();
        let (conn_tx, conn_rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, tls, conn_tx, stop.clone()));
        let incoming = futures_util::stream::unfold(conn_rx, |mut rx| async move {
            rx.recv().await.map(|io| (Ok::<_, std::io::Error>(io), rx))
        });
        let service = ConfigDiscoveryServer::new(DiscoveryService {
            source: self.source,
            metrics: self.metrics,
            signer: self.signer,
            shutdown: stop.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let result = tonic::transport::Server::builder()
            // Streams of proxies that vanished without closing are ended.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
            .await;
        // The listening socket closes only when the accept loop ends.
        stop.cancel();
        let _ = accept.await;
        result.map_err(|error| ServeError::Transport { addr, error })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    conns: mpsc::Sender<PeerStream>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            () = conns.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "accepting a proxy connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        // Handshakes run apart from the accept loop so a slow client delays no other.
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::info!(%remote, %error, "proxy TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "proxy TLS handshake timed out");
                    return;
                }
            };
            let identity = match tls.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => SpiffeId::from_certificate(leaf),
                _ => Err("no client certificate".to_owned()),
            };
            let info = PeerInfo {
                remote: Some(remote),
                identity,
            };
            let _ = conns.send(PeerStream { inner: tls, info }).await;
        });
    }
}

/// A TLS connection carrying what its handshake proved, for the request handlers.
struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

struct DiscoveryService {
    source: Arc<dyn ViewSource>,
    metrics: ServerMetrics,
    signer: Option<Arc<dyn CertificateSigner>>,
    shutdown: CancellationToken,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for DiscoveryService {
    type DeltaConfigStream = ResponseStream;

    async fn delta_config(
        &self,
        request: Request<Streaming<DeltaRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (peer, identity) = peer_identity(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no node announced within {FIRST_REQUEST_TIMEOUT:?}; fix: send a \
                     DeltaRequest with `node` first"
                ))
            })??
            .ok_or_else(|| Status::cancelled("stream closed before the node was announced"))?;
        let node = first.node.as_ref().ok_or_else(|| {
            Status::invalid_argument(
                "the first DeltaRequest carries no `node`; fix: announce the node first",
            )
        })?;
        let node = node_from_proto(node)
            .map_err(|e| Status::invalid_argument(format!("bad node: {e}")))?;
        check_identity(&node, &identity)?;
        if first.initial_resource_versions.len() > MAX_INITIAL_VERSIONS {
            return Err(Status::invalid_argument(format!(
                "{} initial resource versions reported, at most {MAX_INITIAL_VERSIONS} are \
                 accepted; fix: report only the resources the proxy holds",
                first.initial_resource_versions.len()
            )));
        }
        let views = self.source.subscribe(&node).map_err(|e| {
            tracing::warn!(pod = %node.pod_name, namespace = %node.namespace, error = %e, "proxy refused");
            Status::permission_denied(e.to_string())
        })?;
        let guard = Subscription {
            source: self.source.clone(),
            node,
            metrics: self.metrics.clone(),
        };
        self.metrics.proxy_connected();
        tracing::info!(
            pod = %guard.node.pod_name,
            namespace = %guard.node.namespace,
            identity = %identity,
            remote = ?peer.remote,
            "proxy connected"
        );
        let state = StreamState::new(&first.initial_resource_versions);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream(
            guard,
            state,
            views,
            inbound,
            tx,
            self.shutdown.clone(),
        ));
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let (_, identity) = peer_identity(&request)?;
        let signer = self.signer.clone().ok_or_else(|| {
            Status::unimplemented(
                "this control plane signs no certificates; fix: start it with a certificate authority",
            )
        })?;
        let request = request.into_inner();
        authorize(&request.csr_pem, &identity).map_err(|e| match e {
            CsrError::Malformed(_) => Status::invalid_argument(e.to_string()),
            CsrError::OtherIdentity { .. } => Status::permission_denied(e.to_string()),
        })?;
        let ttl = match request.ttl {
            Some(ttl) => Duration::try_from(ttl).map_err(|e| {
                Status::invalid_argument(format!(
                    "ttl unusable ({e}); fix: send a positive duration"
                ))
            })?,
            None => DEFAULT_TTL,
        };
        tracing::info!(%identity, ?ttl, "signing workload certificate");
        // Signing is CPU work: keep it off the runtime's threads.
        let chain =
            tokio::task::spawn_blocking(move || signer.sign(&request.csr_pem, &identity, ttl))
                .await
                .map_err(|e| Status::internal(format!("signer failed: {e}")))?
                .map_err(|e| Status::internal(format!("signing failed: {e}")))?;
        Ok(Response::new(CertificateResponse {
            cert_chain_pem: chain,
        }))
    }
}

/// The connection's peer and the identity its certificate proves.
fn peer_identity<T>(request: &Request<T>) -> Result<(PeerInfo, SpiffeId), Status> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("connection has no verified TLS identity"))?;
    let identity = peer.identity.clone().map_err(|reason| {
        Status::unauthenticated(format!(
            "client certificate carries no usable identity: {reason}; fix: use a \
             workload certificate issued by the mesh CA"
        ))
    })?;
    Ok((peer, identity))
}

/// Refuses a node whose announced namespace or service account is not the one its
/// certificate proves.
fn check_identity(node: &NodeInfo, identity: &SpiffeId) -> Result<(), Status> {
    if node.namespace != identity.namespace || node.service_account != identity.service_account {
        return Err(Status::permission_denied(format!(
            "proxy {}.{} announces namespace {:?} and service account {:?} but its \
             certificate identity is {identity}; fix: run the proxy with its own workload \
             certificate or correct its node settings",
            node.pod_name, node.namespace, node.namespace, node.service_account
        )));
    }
    Ok(())
}

/// Keeps a proxy registered while its stream lives; unregisters it however the stream
/// ends.
struct Subscription {
    source: Arc<dyn ViewSource>,
    node: NodeInfo,
    metrics: ServerMetrics,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.source.unsubscribe(&self.node);
        self.metrics.proxy_disconnected();
        tracing::info!(pod = %self.node.pod_name, namespace = %self.node.namespace, "proxy disconnected");
    }
}

async fn run_stream(
    sub: Subscription,
    mut state: StreamState,
    mut views: watch::Receiver<Arc<ProxyView>>,
    mut inbound: Streaming<DeltaRequest>,
    tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    shutdown: CancellationToken,
) {
    let proxy = format!("{}.{}", sub.node.pod_name, sub.node.namespace);
    let view = views.borrow_and_update().clone();
    if let Some(response) = state.diff(&view, Instant::now(), true) {
        sub.metrics.pushed();
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            changed = views.changed() => {
                if changed.is_err() {
                    let _ = tx.send(Err(Status::unavailable("the proxy's view is no longer maintained"))).await;
                    return;
                }
                let observed = Instant::now();
                let view = views.borrow_and_update().clone();
                if let Some(response) = state.diff(&view, observed, false) {
                    tracing::debug!(%proxy, nonce = %response.nonce, resources = response.resources.len(), removed = response.removed.len(), "pushing");
                    sub.metrics.pushed();
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
            message = inbound.message() => match message {
                Ok(Some(request)) => match state.answer(&request) {
                    Some(Answer::Ack(latency)) => {
                        if let Some(latency) = latency {
                            sub.metrics.acknowledged(latency.as_secs_f64());
                        }
                    }
                    Some(Answer::Nack(error)) => {
                        // The version stays rejected: the next change brings a new one.
                        sub.metrics.rejected();
                        tracing::warn!(%proxy, nonce = %request.response_nonce, %error, "proxy rejected configuration");
                    }
                    None => tracing::debug!(%proxy, "request without a response nonce ignored"),
                },
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%proxy, %status, "proxy stream ended");
                    return;
                }
            },
        }
    }
}
