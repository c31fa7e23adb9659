//! Traffic from the local workload to services: routing by original destination or
//! explicit listener, endpoint choice with retry, mTLS to the peer sidecar, and the
//! source-reporter metrics.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use telemetry::{DestinationService, ResponseFlags, TcpLabels, Workload};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, EndpointTls, LoadBalancer, OutboundService, OutboundTrafficPolicy};
use crate::connection::{self, AccessLog, Direction, MxRead, MxSide, PumpEnd};
use crate::exchange;
use crate::sidecar::Shared;
use crate::stream::EitherStream;
use crate::tls;

/// Service name Istio reports for traffic to unknown destinations it lets through.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Service name Istio reports for traffic to unknown destinations it refuses.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// One service port and where its connections go.
#[derive(Debug)]
pub struct Route {
    service: DestinationService,
    endpoints: Vec<Endpoint>,
    load_balancer: LoadBalancer,
    next: AtomicUsize,
}

impl Route {
    fn new(svc: &OutboundService, endpoints: Vec<Endpoint>) -> Self {
        let r = svc.service_ref();
        Self {
            service: DestinationService {
                fqdn: r.fqdn(),
                name: r.name.clone(),
                namespace: r.namespace.clone(),
            },
            endpoints,
            load_balancer: svc.load_balancer,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints to try, in order: the balancer's choice first, then the next ones.
    fn attempt_order(&self, attempts: usize) -> Vec<&Endpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = match self.load_balancer {
            // LEAST_REQUEST and PASSTHROUGH are placeholders until routing lands.
            LoadBalancer::RoundRobin | LoadBalancer::LeastRequest | LoadBalancer::Passthrough => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
            LoadBalancer::Random => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(self.next.fetch_add(1, Ordering::Relaxed));
                (h.finish() % n as u64) as usize
            }
        };
        (0..attempts.min(n))
            .map(|i| &self.endpoints[(start + i) % n])
            .collect()
    }
}

/// Where outbound connections go.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_destination: HashMap<SocketAddr, Arc<Route>>,
    /// Explicit listeners: address, `<name>.<namespace>:<port>`, route.
    pub(crate) explicit: Vec<(SocketAddr, String, Arc<Route>)>,
}

impl RouteTable {
    /// Builds the table from the configured services.
    pub fn new(services: &[OutboundService]) -> Self {
        let mut table = Self::default();
        for svc in services {
            for port in &svc.ports {
                let route = Arc::new(Route::new(svc, port.endpoints.clone()));
                for ip in &svc.addresses {
                    table
                        .by_destination
                        .insert(SocketAddr::new(*ip, port.port), route.clone());
                }
                // Direct connections to a pod address reach the same service.
                for ep in &port.endpoints {
                    table
                        .by_destination
                        .entry(ep.address)
                        .or_insert_with(|| route.clone());
                }
                if let Some(listen) = port.listen {
                    let key = format!("{}.{}:{}", svc.name, svc.namespace, port.port);
                    table.explicit.push((listen, key, route.clone()));
                }
            }
        }
        table
    }

    /// The route for a captured connection's original destination.
    pub fn lookup(&self, destination: SocketAddr) -> Option<Arc<Route>> {
        self.by_destination.get(&destination).cloned()
    }
}

/// What a connection is routed to.
#[derive(Debug)]
pub enum Target {
    /// A configured service port.
    Route(Arc<Route>),
    /// An unknown destination, forwarded as is (`ALLOW_ANY`).
    Passthrough,
    /// Nowhere (`REGISTRY_ONLY` and unknown, or a connection to the listener itself).
    NoRoute,
}

impl Target {
    /// Routes a captured connection.
    pub fn for_original_destination(shared: &Shared, destination: SocketAddr) -> Self {
        Self::classify(
            &shared.routes,
            shared.config.outbound.traffic_policy,
            destination,
        )
    }

    /// Routes `destination` through `routes` under `policy`.
    pub fn classify(
        routes: &RouteTable,
        policy: OutboundTrafficPolicy,
        destination: SocketAddr,
    ) -> Self {
        match routes.lookup(destination) {
            Some(r) => Target::Route(r),
            None if policy == OutboundTrafficPolicy::AllowAny => Target::Passthrough,
            None => Target::NoRoute,
        }
    }

    fn service(&self) -> DestinationService {
        match self {
            Target::Route(r) => r.service.clone(),
            Target::Passthrough => DestinationService {
                fqdn: PASSTHROUGH_CLUSTER.into(),
                name: PASSTHROUGH_CLUSTER.into(),
                namespace: String::new(),
            },
            Target::NoRoute => DestinationService {
                fqdn: BLACKHOLE_CLUSTER.into(),
                name: BLACKHOLE_CLUSTER.into(),
                namespace: String::new(),
            },
        }
    }
}

type Upstream = EitherStream<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// A connected upstream and what its handshake established.
struct Connected {
    stream: Upstream,
    address: SocketAddr,
    /// Verified SPIFFE id of the server (mTLS only).
    peer_identity: Option<String>,
    /// Our own identity as presented (mTLS only).
    own_identity: Option<String>,
    /// ALPN resolved to istio-peer-exchange.
    exchange: bool,
}

/// Connects to one endpoint: TCP, then TLS when the endpoint wants it.
async fn connect_endpoint(shared: &Shared, ep: &Endpoint) -> Result<Connected, String> {
    let limits = &shared.config.limits;
    let tcp = connection::connect(
        ep.address,
        limits.connect_timeout,
        shared.config.capture.mark,
    )
    .await
    .map_err(|e| format!("connect to {} failed: {e}", ep.address))?;
    if ep.tls == EndpointTls::Disable {
        return Ok(Connected {
            stream: EitherStream::Left(tcp),
            address: ep.address,
            peer_identity: None,
            own_identity: None,
            exchange: false,
        });
    }
    let (Some(certs), Some(expected)) = (&shared.certs, &ep.identity) else {
        return Err(format!(
            "endpoint {} needs ISTIO_MUTUAL but no certificates or identity are configured",
            ep.address
        ));
    };
    let current = certs.current();
    let config = current
        .client_config(expected)
        .map_err(|e| format!("TLS client configuration: {e}"))?;
    let handshake = TlsConnector::from(config).connect(tls::server_name_for(ep.address), tcp);
    let stream = match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.health.tls_failure(Direction::Outbound);
            return Err(format!(
                "TLS handshake with {} (expecting {expected}) failed: {e}",
                ep.address
            ));
        }
        Err(_) => {
            shared.health.tls_failure(Direction::Outbound);
            return Err(format!(
                "TLS handshake with {} timed out after {:?}",
                ep.address, limits.tls_handshake_timeout
            ));
        }
    };
    let session = stream.get_ref().1;
    let peer_identity = tls::peer_identity(session.peer_certificates());
    let exchange = session.alpn_protocol() == Some(mx::ALPN_PEER_EXCHANGE);
    Ok(Connected {
        stream: EitherStream::Right(stream),
        address: ep.address,
        peer_identity,
        own_identity: current.identity().map(str::to_owned),
        exchange,
    })
}

/// Serves one outbound connection to its end.
pub async fn handle(
    shared: Arc<Shared>,
    client: TcpStream,
    source: SocketAddr,
    destination: SocketAddr,
    target: Target,
) {
    let started = Instant::now();
    let service = target.service();
    let local = shared.local.workload(None);
    let fallback = TcpLabels::outbound(&local, &Workload::unknown(), &service, ResponseFlags::None);
    let mut recorder = shared.metrics.recorder(fallback);
    let bytes = recorder.byte_counters();
    let guard = shared
        .live
        .register(Direction::Outbound, source, destination, bytes.clone());
    guard.entry().set_service(&service.fqdn);
    let ctx = format!("outbound {source}->{destination}");
    let mut log = AccessLog {
        direction: Direction::Outbound,
        source,
        destination,
        upstream: None,
        service: &service.fqdn,
        peer: "unknown",
        bytes: &bytes,
        started,
        flags: ResponseFlags::None,
    };

    let _permit = match shared
        .outbound_permits
        .as_ref()
        .map(|s| s.clone().try_acquire_owned())
    {
        Some(Err(_)) => {
            tracing::warn!(conn = %ctx, "outbound connection limit reached (limits.maxConnections); refusing");
            log.finish(recorder, ResponseFlags::UpstreamOverflow);
            return;
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };

    let connected = match &target {
        Target::NoRoute => {
            tracing::warn!(conn = %ctx, "no route to {destination}: not a known service (outbound trafficPolicy REGISTRY_ONLY) or a loop to the proxy itself");
            Err(ResponseFlags::NoClusterFound)
        }
        Target::Passthrough => {
            let ep = Endpoint {
                address: destination,
                tls: EndpointTls::Disable,
                identity: None,
            };
            connect_endpoint(&shared, &ep).await.map_err(|e| {
                tracing::warn!(conn = %ctx, error = %e, "passthrough upstream connect failed");
                ResponseFlags::UpstreamConnectionFailure
            })
        }
        Target::Route(route) => {
            let order = route.attempt_order(shared.config.limits.connect_attempts as usize);
            if order.is_empty() {
                tracing::warn!(conn = %ctx, service = %route.service.fqdn, "no endpoints for the service");
                Err(ResponseFlags::NoHealthyUpstream)
            } else {
                let mut result = Err(ResponseFlags::UpstreamConnectionFailure);
                for (i, ep) in order.iter().enumerate() {
                    match connect_endpoint(&shared, ep).await {
                        Ok(c) => {
                            result = Ok(c);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(conn = %ctx, attempt = i + 1, of = order.len(), error = %e, "upstream connect failed");
                        }
                    }
                }
                result.map_err(|f| {
                    if order.len() > 1 {
                        ResponseFlags::UpstreamRetryLimitExceeded
                    } else {
                        f
                    }
                })
            }
        }
    };
    let connected = match connected {
        Ok(c) => c,
        Err(flags) => {
            log.flags = flags;
            recorder.close(Some(flags));
            log.emit();
            return;
        }
    };
    log.upstream = Some(connected.address);
    guard.entry().set_upstream(connected.address);

    let local = shared.local.workload(connected.own_identity.as_deref());
    let peer_identity = connected.peer_identity.clone();
    let unknown_peer = Workload {
        principal: peer_identity.clone(),
        ..Workload::unknown()
    };
    let mut stream = connected.stream;
    let limits = &shared.config.limits;
    let mut peer_name = peer_identity.clone().unwrap_or_else(|| "unknown".into());
    let mut on_result = |peer: Option<mx::PeerMetadata>, reason: Option<String>| {
        let (workload, name) =
            guard
                .entry()
                .note_peer(&ctx, peer.as_ref(), reason.as_deref(), &unknown_peer);
        if let Some(name) = name {
            peer_name = name;
        }
        recorder.resolve(TcpLabels::outbound(
            &local,
            &workload,
            &service,
            ResponseFlags::None,
        ));
    };
    let mx = if connected.exchange {
        if let Err(e) =
            exchange::write_frame(&mut stream, shared.local.frame(), limits.mx_timeout).await
        {
            tracing::warn!(conn = %ctx, error = %e, "writing metadata exchange frame failed");
            recorder.close(None);
            log.emit();
            return;
        }
        Some(MxRead {
            side: MxSide::Upstream,
            max_frame_len: limits.mx_max_frame_bytes as usize,
            timeout: limits.mx_timeout,
            on_result: &mut on_result,
        })
    } else {
        on_result(None, None);
        None
    };
    let _ = client.set_nodelay(true);
    let end = connection::pump(
        client,
        stream,
        &bytes,
        mx,
        connection::PumpLimits::from_config(limits),
        &shared.cut,
        &ctx,
    )
    .await;
    log.peer = &peer_name;
    log.finish(recorder, end_flags(&end, &ctx));
}

#[cfg(test)]
mod tests;

/// Response flags for how a pump ended, logging the unusual ends.
pub(crate) fn end_flags(end: &PumpEnd, ctx: &str) -> ResponseFlags {
    match end {
        PumpEnd::Done => ResponseFlags::None,
        PumpEnd::Cut => {
            tracing::info!(conn = ctx, "connection closed at the drain deadline");
            ResponseFlags::None
        }
        PumpEnd::Idle => {
            tracing::info!(
                conn = ctx,
                "connection closed after limits.idleTimeout without data"
            );
            ResponseFlags::None
        }
        PumpEnd::DurationLimit => {
            tracing::info!(
                conn = ctx,
                "connection closed at limits.maxConnectionDuration"
            );
            ResponseFlags::DurationTimeout
        }
        PumpEnd::Exchange(e) => {
            tracing::warn!(conn = ctx, error = %e, "metadata exchange failed");
            ResponseFlags::None
        }
    }
}
