//! Traffic from peers to the local workload: TLS detection, mTLS termination with
//! the peer's identity, metadata exchange, and the destination-reporter metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry::{DestinationService, ResponseFlags, SecurityPolicy, TcpLabels, Workload};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{InboundMode, InboundPort, ProxyConfig};
use crate::connection::{
    self, AccessLog, Direction, Established, Holds, MxParams, MxSide, Names, Peer, Reporter,
    Streams,
};
use crate::exchange;
use crate::sidecar::{Generation, Shared};
use crate::stream::EitherStream;
use crate::tls;

/// Where an inbound connection goes.
#[derive(Clone, Debug)]
pub struct InboundTarget {
    /// The app's address.
    pub app: SocketAddr,
    /// The service the port belongs to (unknown when not configured).
    pub service: Arc<DestinationService>,
}

impl InboundTarget {
    /// The target of a configured port.
    pub fn for_port(port: &InboundPort) -> Self {
        Self {
            app: port.target_addr(),
            service: port
                .service
                .as_ref()
                .map(|s| {
                    Arc::new(DestinationService {
                        fqdn: s.fqdn(),
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                    })
                })
                .unwrap_or_default(),
        }
    }
}

/// The inbound targets of one configuration, built once and shared by its connections.
#[derive(Debug, Default)]
pub struct InboundTargets {
    by_port: HashMap<u16, InboundTarget>,
    unknown: Arc<DestinationService>,
}

impl InboundTargets {
    /// The targets of `config`'s inbound ports.
    pub fn new(config: &ProxyConfig) -> Self {
        Self {
            by_port: config
                .inbound
                .ports
                .iter()
                .map(|p| (p.port, InboundTarget::for_port(p)))
                .collect(),
            unknown: Arc::new(DestinationService::unknown()),
        }
    }

    /// The target of a configured port.
    pub fn port(&self, port: u16) -> Option<InboundTarget> {
        self.by_port.get(&port).cloned()
    }

    /// The target of a captured connection: the configured port, else the app on
    /// `127.0.0.1:<port>` with an unknown service (Istio's inbound passthrough).
    pub fn for_original_destination(&self, destination: SocketAddr) -> InboundTarget {
        self.port(destination.port())
            .unwrap_or_else(|| InboundTarget {
                app: SocketAddr::from(([127, 0, 0, 1], destination.port())),
                service: self.unknown.clone(),
            })
    }
}

/// Does the start of a stream look like a TLS ClientHello (handshake record, version 3.x)?
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x16] | [0x16, 0x03, ..])
}

/// Waits for the client's first bytes; `None` on timeout or error, `Some(empty)` on EOF.
async fn sniff(client: &TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = [0u8; 3];
    match tokio::time::timeout(wait, client.peek(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

type Downstream = EitherStream<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// Sets up one inbound connection under the configuration `gen` it was accepted with:
/// plaintext or TLS as the mode allows, then the local app. Returns it ready to copy, or
/// `None` when it was refused or failed (recorded and logged here).
pub(crate) async fn setup(
    shared: Arc<Shared>,
    gen: Arc<Generation>,
    client: TcpStream,
    source: SocketAddr,
    destination: SocketAddr,
    target: Option<InboundTarget>,
) -> Option<Established> {
    let started = Instant::now();
    let ctx = connection::ConnName {
        kind: "inbound",
        source,
        destination,
    };
    let limits = &gen.config.limits;
    let _ = client.set_nodelay(true);

    // Plaintext or TLS, as the mode allows.
    let use_tls = match gen.config.inbound.mode {
        InboundMode::Disable => false,
        InboundMode::Strict => match Box::pin(sniff(&client, limits.tls_handshake_timeout)).await {
            Some(first) if looks_like_tls(&first) => true,
            Some(first) if first.is_empty() => return None,
            Some(_) => {
                tracing::warn!(conn = %ctx, "refusing a plaintext connection: inbound mode is STRICT (mutual TLS only); send it through a sidecar or set inbound.mode: PERMISSIVE");
                shared.health.refused("plaintext_in_strict");
                return None;
            }
            None => {
                tracing::warn!(conn = %ctx, "no TLS ClientHello within {:?} (inbound mode STRICT); closing", limits.tls_handshake_timeout);
                shared.health.refused("no_client_hello");
                return None;
            }
        },
        // A silent client may be waiting for a server-first greeting: plaintext.
        InboundMode::Permissive => Box::pin(sniff(&client, limits.protocol_detection_timeout))
            .await
            .is_some_and(|first| looks_like_tls(&first)),
    };

    let mut peer_identity = None;
    let mut own_identity = None;
    let mut exchange_on = false;
    let downstream: Downstream = if use_tls {
        let Some(certs) = &shared.certs else {
            tracing::warn!(conn = %ctx, "TLS connection but no certificates configured; closing");
            return None;
        };
        let current = certs.current();
        let accept = TlsAcceptor::from(current.server_config()).accept(client);
        // Boxed, like every phase before the copy: an open connection's future then
        // reserves room only for the copy, not for the handshake state.
        match Box::pin(tokio::time::timeout(limits.tls_handshake_timeout, accept)).await {
            Ok(Ok(stream)) => {
                let session = stream.get_ref().1;
                peer_identity = tls::peer_identity(session.peer_certificates());
                exchange_on = session.alpn_protocol() == Some(mx::ALPN_PEER_EXCHANGE);
                own_identity = current.identity().map(str::to_owned);
                EitherStream::Right(Box::new(stream))
            }
            Ok(Err(e)) => {
                tracing::warn!(conn = %ctx, error = %e, "inbound TLS handshake failed (the client must present a certificate signed by the mesh root)");
                shared.health.tls_failure(Direction::Inbound);
                return None;
            }
            Err(_) => {
                tracing::warn!(conn = %ctx, "inbound TLS handshake timed out after {:?}", limits.tls_handshake_timeout);
                shared.health.tls_failure(Direction::Inbound);
                return None;
            }
        }
    } else {
        EitherStream::Left(client)
    };

    let service = target
        .as_ref()
        .map(|t| t.service.clone())
        .unwrap_or_default();
    let policy = if use_tls {
        SecurityPolicy::MutualTls
    } else {
        SecurityPolicy::None
    };
    let local = shared.local.workload(own_identity.as_deref());
    let unknown_peer = Workload {
        principal: peer_identity.clone(),
        ..Workload::unknown()
    };
    let fallback = TcpLabels::inbound(&local, &unknown_peer, &service, policy, ResponseFlags::None);
    let (recorder, bytes, guard) = shared.open(
        Direction::Inbound,
        source,
        destination,
        started,
        &service,
        fallback,
    );
    let mut log = AccessLog {
        direction: Direction::Inbound,
        source,
        destination,
        upstream: None,
        service: &service.fqdn,
        peer: peer_identity.as_deref().unwrap_or("unknown"),
        bytes: &bytes,
        started,
        flags: ResponseFlags::None,
    };

    let permit = match gen
        .inbound_permits
        .as_ref()
        .map(|s| s.clone().try_acquire_owned())
    {
        Some(Err(_)) => {
            tracing::warn!(conn = %ctx, "inbound connection limit reached (limits.maxConnections); refusing");
            log.finish(recorder, ResponseFlags::UpstreamOverflow);
            return None;
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };

    let Some(target) = target else {
        tracing::warn!(conn = %ctx, "no inbound route: the connection was not redirected by the capture rules (no original destination)");
        log.finish(recorder, ResponseFlags::NoClusterFound);
        return None;
    };
    log.upstream = Some(target.app);
    guard.entry().set_upstream(target.app);
    let app = match Box::pin(connection::connect(
        target.app,
        limits.connect_timeout,
        gen.config.capture.mark,
    ))
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(conn = %ctx, app = %target.app, error = %e, "connecting to the local app failed");
            log.finish(recorder, ResponseFlags::UpstreamConnectionFailure);
            return None;
        }
    };

    let mut established = Established {
        shared,
        streams: Streams::Inbound(downstream, app),
        mx: exchange_on.then(|| MxParams::new(MxSide::Downstream, limits)),
        limits: connection::PumpLimits::from_config(limits),
        bytes,
        guard,
        peer: Peer {
            recorder,
            reporter: Reporter::Destination(policy),
            service,
            names: Names::of(own_identity, peer_identity),
        },
        holds: Holds {
            permit,
            ..Holds::default()
        },
    };
    if exchange_on {
        let Streams::Inbound(downstream, _) = &mut established.streams else {
            unreachable!("built as inbound just above")
        };
        let frame = established.shared.local.frame();
        if let Err(e) = Box::pin(exchange::write_frame(downstream, frame, limits.mx_timeout)).await
        {
            tracing::warn!(conn = %ctx, error = %e, "writing metadata exchange frame failed");
            established.abandon();
            return None;
        }
    } else {
        established.resolve_peer(None, None);
    }
    Some(established)
}
