//! Traffic from the local workload to services: routing by original destination or
//! explicit listener, endpoint choice with retry, mTLS to the peer sidecar, and the
//! source-reporter metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry::{DestinationService, ResponseFlags, TcpLabels, Workload};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{
    Endpoint, EndpointTls, LoadBalancer, OutboundPort, OutboundService, OutboundTrafficPolicy,
    Route, ServiceRef,
};
use crate::connection::{
    self, AccessLog, Direction, Established, Holds, MxParams, MxSide, Names, Peer, Reporter,
    Streams,
};
use crate::exchange;
use crate::sidecar::{Generation, Shared};
use crate::stream::EitherStream;
use crate::tls;

mod balance;

pub(crate) use balance::ActiveGuard;
use balance::EndpointPool;

/// Service name Istio reports for traffic to unknown destinations it lets through.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Service name Istio reports for traffic to unknown destinations it refuses.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

fn destination_service(r: &ServiceRef) -> Arc<DestinationService> {
    Arc::new(DestinationService {
        fqdn: r.fqdn(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
    })
}

/// One shared copy of a cluster-named service (`PassthroughCluster`, `BlackHoleCluster`).
fn named_cluster(
    cell: &'static std::sync::OnceLock<Arc<DestinationService>>,
    name: &str,
) -> Arc<DestinationService> {
    cell.get_or_init(|| {
        Arc::new(DestinationService {
            fqdn: name.into(),
            name: name.into(),
            namespace: String::new(),
        })
    })
    .clone()
}

/// One weighted destination of a service port.
#[derive(Debug)]
pub struct WeightedRoute {
    weight: u32,
    /// The `destination_service*` labels of connections on this route.
    service: Arc<DestinationService>,
    subset: Option<String>,
    /// Why the destination cannot be resolved; connections are refused with `NC`.
    unresolved: Option<String>,
    pool: EndpointPool,
}

/// One service port: its weighted routes and connection-pool limits.
#[derive(Debug)]
pub struct ServicePort {
    /// `<name>.<namespace>:<port>`.
    key: String,
    routes: Vec<WeightedRoute>,
    total_weight: u64,
    max_connections: Option<u32>,
    active: Arc<AtomicUsize>,
    connect_timeout: Option<Duration>,
}

impl ServicePort {
    /// Picks the route of a new connection: weighted random, as Envoy picks among
    /// weighted clusters. Stateless (no lock or shared cursor between connections) and
    /// unbiased over time; a smooth round robin would be exact over short runs but needs
    /// a lock per connection.
    fn choose(&self) -> &WeightedRoute {
        if self.total_weight == 0 || self.routes.len() == 1 {
            return &self.routes[0];
        }
        let r = balance::random_below(self.total_weight);
        let i = balance::pick_weighted(self.routes.iter().map(|r| r.weight), r).unwrap_or(0);
        &self.routes[i]
    }

    /// The `<name>.<namespace>:<port>` key of this service port.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Where outbound connections go.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_destination: HashMap<SocketAddr, Arc<ServicePort>>,
    /// Service ports by `<name>.<namespace>:<port>`, for explicit listeners.
    by_key: HashMap<String, Arc<ServicePort>>,
    /// Active-connection counters, reused by the next table so that counts survive
    /// configuration updates.
    endpoint_loads: HashMap<SocketAddr, Arc<AtomicUsize>>,
    port_active: HashMap<String, Arc<AtomicUsize>>,
}

/// The `<name>.<namespace>:<port>` key of a service port.
pub fn port_key(svc: &OutboundService, port: &OutboundPort) -> String {
    format!("{}.{}:{}", svc.name, svc.namespace, port.port)
}

impl RouteTable {
    /// Builds the table from the configured services.
    pub fn new(services: &[Arc<OutboundService>]) -> Self {
        Self::rebuild(services, &RouteTable::default())
    }

    /// Builds the table for `services`, keeping the active-connection counts of
    /// `previous` for the endpoints and service ports both know.
    pub fn rebuild(services: &[Arc<OutboundService>], previous: &RouteTable) -> Self {
        let mut table = Self::default();
        for svc in services {
            for port in &svc.ports {
                let key = port_key(svc, port);
                let sp = Arc::new(table.service_port(svc, port, key.clone(), previous));
                for ip in &svc.addresses {
                    table
                        .by_destination
                        .insert(SocketAddr::new(*ip, port.port), sp.clone());
                }
                // Direct connections to a pod address reach the same service.
                for ep in &port.endpoints {
                    table
                        .by_destination
                        .entry(ep.address)
                        .or_insert_with(|| sp.clone());
                }
                table.by_key.insert(key, sp);
            }
        }
        table
    }

    fn service_port(
        &mut self,
        svc: &OutboundService,
        port: &OutboundPort,
        key: String,
        previous: &RouteTable,
    ) -> ServicePort {
        let routes: Vec<WeightedRoute> = if port.routes.is_empty() {
            vec![WeightedRoute {
                weight: 1,
                service: destination_service(&svc.service_ref()),
                subset: None,
                unresolved: None,
                pool: self.pool(&port.endpoints, svc.load_balancer, previous),
            }]
        } else {
            port.routes
                .iter()
                .map(|r| WeightedRoute {
                    weight: r.weight,
                    service: destination_service(&r.destination),
                    subset: r.subset.clone(),
                    unresolved: r.unresolved.clone(),
                    pool: self.pool(
                        &r.endpoints,
                        r.load_balancer.unwrap_or(svc.load_balancer),
                        previous,
                    ),
                })
                .collect()
        };
        let active = previous.port_active.get(&key).cloned().unwrap_or_default();
        self.port_active.insert(key.clone(), active.clone());
        ServicePort {
            total_weight: routes.iter().map(|r| u64::from(r.weight)).sum(),
            key,
            routes,
            max_connections: port.max_connections,
            active,
            connect_timeout: port.connect_timeout,
        }
    }

    fn pool(
        &mut self,
        endpoints: &[Endpoint],
        lb: LoadBalancer,
        previous: &RouteTable,
    ) -> EndpointPool {
        let loads = endpoints
            .iter()
            .map(|ep| {
                self.endpoint_loads
                    .entry(ep.address)
                    .or_insert_with(|| {
                        previous
                            .endpoint_loads
                            .get(&ep.address)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .clone()
            })
            .collect();
        EndpointPool::new(endpoints.to_vec(), loads, lb)
    }

    /// The service port for a captured connection's original destination.
    pub fn lookup(&self, destination: SocketAddr) -> Option<Arc<ServicePort>> {
        self.by_destination.get(&destination).cloned()
    }

    /// The service port named `<name>.<namespace>:<port>`.
    pub fn by_key(&self, key: &str) -> Option<Arc<ServicePort>> {
        self.by_key.get(key).cloned()
    }

    /// A set of weighted routes that belongs to no service port (a gateway server's or
    /// one of its HTTP routes), named `key`; `None` when `routes` is empty. Endpoint
    /// counts are shared with this table's service ports and carried over from
    /// `previous`.
    pub fn route_set(
        &mut self,
        key: String,
        routes: &[Route],
        previous: &RouteTable,
    ) -> Option<Arc<ServicePort>> {
        if routes.is_empty() {
            return None;
        }
        let routes: Vec<WeightedRoute> = routes
            .iter()
            .map(|r| WeightedRoute {
                weight: r.weight,
                service: destination_service(&r.destination),
                subset: r.subset.clone(),
                unresolved: r.unresolved.clone(),
                pool: self.pool(&r.endpoints, r.load_balancer.unwrap_or_default(), previous),
            })
            .collect();
        let active = previous.port_active.get(&key).cloned().unwrap_or_default();
        self.port_active.insert(key.clone(), active.clone());
        Some(Arc::new(ServicePort {
            total_weight: routes.iter().map(|r| u64::from(r.weight)).sum(),
            key,
            routes,
            max_connections: None,
            active,
            connect_timeout: None,
        }))
    }
}

/// What a connection is routed to.
#[derive(Debug)]
pub enum Target {
    /// A configured service port.
    Route {
        /// The service port.
        port: Arc<ServicePort>,
        /// The address the application asked for (captured traffic); `None` on an
        /// explicit listener.
        original: Option<SocketAddr>,
    },
    /// An unknown destination, forwarded as is (`ALLOW_ANY`).
    Passthrough,
    /// Nowhere (`REGISTRY_ONLY` and unknown, or a connection to the listener itself).
    NoRoute,
}

impl Target {
    /// Routes `destination` through `routes` under `policy`.
    pub fn classify(
        routes: &RouteTable,
        policy: OutboundTrafficPolicy,
        destination: SocketAddr,
    ) -> Self {
        match routes.lookup(destination) {
            Some(port) => Target::Route {
                port,
                original: Some(destination),
            },
            None if policy == OutboundTrafficPolicy::AllowAny => Target::Passthrough,
            None => Target::NoRoute,
        }
    }

    fn service(&self) -> Arc<DestinationService> {
        static PASSTHROUGH: std::sync::OnceLock<Arc<DestinationService>> =
            std::sync::OnceLock::new();
        static BLACKHOLE: std::sync::OnceLock<Arc<DestinationService>> = std::sync::OnceLock::new();
        match self {
            Target::Route { port, .. } => port.routes[0].service.clone(),
            Target::Passthrough => named_cluster(&PASSTHROUGH, PASSTHROUGH_CLUSTER),
            Target::NoRoute => named_cluster(&BLACKHOLE, BLACKHOLE_CLUSTER),
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
async fn connect_endpoint(
    shared: &Shared,
    gen: &Generation,
    ep: &Endpoint,
    connect_timeout: Duration,
) -> Result<Connected, String> {
    let limits = &gen.config.limits;
    let tcp = connection::connect(ep.address, connect_timeout, gen.config.capture.mark)
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
        stream: EitherStream::Right(Box::new(stream)),
        address: ep.address,
        peer_identity,
        own_identity: current.identity().map(str::to_owned),
        exchange,
    })
}

/// Records a connection refused before any destination was chosen (a gateway request
/// that no route matches, or that is not readable HTTP): opened and closed at once with
/// `flags`, reported as traffic to `BlackHoleCluster` like any other connection without
/// a route.
pub(crate) fn refuse(
    shared: &Shared,
    source: SocketAddr,
    destination: SocketAddr,
    flags: ResponseFlags,
) {
    let service = Target::NoRoute.service();
    let local = shared.local.workload(None);
    let fallback = TcpLabels::outbound(&local, &Workload::unknown(), &service, flags);
    let started = Instant::now();
    let (recorder, bytes, _guard) = shared.open(
        Direction::Outbound,
        source,
        destination,
        started,
        &service,
        fallback,
    );
    let log = AccessLog {
        direction: Direction::Outbound,
        source,
        destination,
        upstream: None,
        service: &service.fqdn,
        peer: "unknown",
        bytes: &bytes,
        started,
        flags,
    };
    log.finish(recorder, flags);
}

/// Sets up one outbound connection under the configuration `gen` it was accepted with:
/// route, connect (with retries), TLS and the metadata frame. Returns it ready to copy,
/// or `None` when it was refused or failed (recorded and logged here). `replay` holds
/// bytes already read from the client (a gateway's first request head); they are sent
/// upstream first and counted as received.
pub(crate) async fn setup(
    shared: Arc<Shared>,
    gen: Arc<Generation>,
    client: TcpStream,
    source: SocketAddr,
    destination: SocketAddr,
    target: Target,
    replay: Vec<u8>,
) -> Option<Established> {
    let started = Instant::now();
    let route = match &target {
        Target::Route { port, original } => Some((port, port.choose(), *original)),
        _ => None,
    };
    let service = match &route {
        Some((_, r, _)) => r.service.clone(),
        None => target.service(),
    };
    let local = shared.local.workload(None);
    let fallback = TcpLabels::outbound(&local, &Workload::unknown(), &service, ResponseFlags::None);
    let (recorder, bytes, guard) = shared.open(
        Direction::Outbound,
        source,
        destination,
        started,
        &service,
        fallback,
    );
    let ctx = connection::ConnName {
        kind: "outbound",
        source,
        destination,
    };
    let log = AccessLog {
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

    let permit = match gen
        .outbound_permits
        .as_ref()
        .map(|s| s.clone().try_acquire_owned())
    {
        Some(Err(_)) => {
            tracing::warn!(conn = %ctx, "outbound connection limit reached (limits.maxConnections); refusing");
            log.finish(recorder, ResponseFlags::UpstreamOverflow);
            return None;
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };

    let limits = &gen.config.limits;
    // Held for the connection's life: the service port's and the endpoint's counts.
    let mut port_slot = None;
    let mut endpoint_load = None;
    let connected = match (&target, route) {
        (Target::NoRoute, _) => {
            tracing::warn!(conn = %ctx, "no route to {destination}: not a known service (outbound trafficPolicy REGISTRY_ONLY) or a loop to the proxy itself");
            Err(ResponseFlags::NoClusterFound)
        }
        (Target::Passthrough, _) => {
            let ep = Endpoint {
                address: destination,
                tls: EndpointTls::Disable,
                identity: None,
            };
            Box::pin(connect_endpoint(&shared, &gen, &ep, limits.connect_timeout))
                .await
                .map_err(|e| {
                    tracing::warn!(conn = %ctx, error = %e, "passthrough upstream connect failed");
                    ResponseFlags::UpstreamConnectionFailure
                })
        }
        (Target::Route { .. }, None) => Err(ResponseFlags::NoClusterFound),
        (Target::Route { .. }, Some((port, r, original))) => 'route: {
            if let Some(why) = &r.unresolved {
                tracing::warn!(conn = %ctx, route = %r.service.fqdn, subset = ?r.subset, reason = %why, "route destination is unresolved; refusing");
                break 'route Err(ResponseFlags::NoClusterFound);
            }
            if let Some(max) = port.max_connections {
                match ActiveGuard::try_acquire(&port.active, max) {
                    Some(g) => port_slot = Some(g),
                    None => {
                        tracing::warn!(conn = %ctx, service = %port.key, max, "service port connection limit reached (maxConnections); refusing");
                        break 'route Err(ResponseFlags::UpstreamOverflow);
                    }
                }
            } else {
                port_slot = Some(ActiveGuard::acquire(&port.active));
            }
            let order = r
                .pool
                .attempt_order(original, limits.connect_attempts as usize);
            if order.is_empty() {
                tracing::warn!(conn = %ctx, service = %r.service.fqdn, subset = ?r.subset, "no endpoints for the route");
                break 'route Err(ResponseFlags::NoHealthyUpstream);
            }
            let timeout = port.connect_timeout.unwrap_or(limits.connect_timeout);
            let mut result = Err(ResponseFlags::UpstreamConnectionFailure);
            for (i, c) in order.iter().enumerate() {
                let load = c.load.as_ref().map(ActiveGuard::acquire);
                // Boxed, like every phase before the copy: an open connection's future
                // then reserves room only for the copy, not for the handshake state.
                match Box::pin(connect_endpoint(&shared, &gen, &c.endpoint, timeout)).await {
                    Ok(conn) => {
                        endpoint_load = load;
                        result = Ok(conn);
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
    };
    // Taken apart at once: a `Connected` kept whole would keep its storage (the stream's
    // included) reserved in this future for the connection's whole life.
    let Connected {
        stream,
        address,
        peer_identity,
        own_identity,
        exchange,
    } = match connected {
        Ok(c) => c,
        Err(flags) => {
            log.finish(recorder, flags);
            return None;
        }
    };
    guard.entry().set_upstream(address);
    let mut established = Established {
        shared,
        // Taken out below, once the frame and the replayed head are written.
        streams: Streams::Outbound(client, stream),
        mx: exchange.then(|| MxParams::new(MxSide::Upstream, limits)),
        limits: connection::PumpLimits::from_config(limits),
        bytes,
        guard,
        peer: Peer {
            recorder,
            reporter: Reporter::Source,
            service,
            names: Names::of(own_identity, peer_identity),
        },
        holds: Holds {
            permit,
            port: port_slot,
            endpoint: endpoint_load,
        },
    };
    if !exchange {
        // Known now: a failed replay below is recorded under the resolved labels.
        established.resolve_peer(None, None);
    }
    let Streams::Outbound(client, stream) = &mut established.streams else {
        unreachable!("built as outbound just above")
    };
    if exchange {
        let frame = established.shared.local.frame();
        if let Err(e) = Box::pin(exchange::write_frame(stream, frame, limits.mx_timeout)).await {
            tracing::warn!(conn = %ctx, error = %e, "writing metadata exchange frame failed");
            established.abandon();
            return None;
        }
    }
    if !replay.is_empty() {
        let write = tokio::io::AsyncWriteExt::write_all(stream, &replay);
        match Box::pin(tokio::time::timeout(limits.connect_timeout, write)).await {
            Ok(Ok(())) => established.bytes.add_received(replay.len() as u64),
            Ok(Err(e)) => {
                tracing::warn!(conn = %ctx, error = %e, "sending the request head upstream failed");
                established.abandon();
                return None;
            }
            Err(_) => {
                tracing::warn!(conn = %ctx, "sending the request head upstream timed out");
                established.abandon();
                return None;
            }
        }
    }
    let _ = client.set_nodelay(true);
    Some(established)
}

#[cfg(test)]
mod tests;
