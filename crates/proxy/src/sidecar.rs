//! Starting and stopping a sidecar: listeners, accept loops, reporting tick,
//! certificate watcher, admin thread and the drain on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use telemetry::{Registry, TcpMetrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer, AdminState};
use crate::config::{ConfigError, ProxyConfig};
use crate::connection::{Direction, Established, LiveConnections, LiveGuard};
use crate::exchange::LocalNode;
use crate::gateway::{self, GatewayTable};
use crate::health::HealthMetrics;
use crate::inbound::{self, InboundTargets};
use crate::outbound::{self, RouteTable, Target};
use crate::tls::{CertStore, TlsError};

pub(crate) mod overrides;
mod update;

pub use update::{UpdateError, UpdateSummary};

/// Errors starting a proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The workload certificates could not be loaded.
    #[error(transparent)]
    Certificates(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {error}; pick a free address or stop the process using it")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The proxy cannot mark its sockets as configured.
    #[error(transparent)]
    Mark(std::io::Error),
    /// The admin thread could not start.
    #[error("cannot start the admin server thread: {0}")]
    Admin(std::io::Error),
}

/// Changes the log filter at runtime (`/logging?level=...`); returns the new filter or
/// a message explaining why the value was refused.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Options that are not part of the pushed configuration.
#[derive(Clone, Default)]
pub struct ProxyOptions {
    /// How `/logging` changes the log level; `None` disables the endpoint.
    pub log_level: Option<LogLevelSetter>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("log_level", &self.log_level.is_some())
            .finish()
    }
}

/// The addresses the proxy actually listens on (useful with port 0).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BoundAddrs {
    /// Transparent inbound listener.
    pub inbound: Option<SocketAddr>,
    /// Transparent outbound listener.
    pub outbound: Option<SocketAddr>,
    /// Explicit inbound listeners by app port.
    pub inbound_ports: BTreeMap<u16, SocketAddr>,
    /// Explicit outbound listeners by `<name>.<namespace>:<port>`.
    pub outbound_services: BTreeMap<String, SocketAddr>,
    /// Explicit gateway server listeners by server port.
    pub gateway_servers: BTreeMap<u16, SocketAddr>,
    /// Admin endpoint.
    pub admin: SocketAddr,
    /// Prometheus endpoint.
    pub stats: SocketAddr,
    /// Readiness endpoint.
    pub readiness: SocketAddr,
}

impl BoundAddrs {
    /// The explicit outbound listener of a service port.
    pub fn outbound_service(&self, name: &str, namespace: &str, port: u16) -> Option<SocketAddr> {
        self.outbound_services
            .get(&format!("{name}.{namespace}:{port}"))
            .copied()
    }
}

/// State shared by every connection of one proxy.
pub struct Shared {
    /// The configuration in force; swapped whole by [`ProxyHandle::update`]. Read once
    /// per connection, at accept, so a connection keeps the routes it started with.
    state: RwLock<Arc<Generation>>,
    pub(crate) local: LocalNode,
    pub(crate) metrics: TcpMetrics,
    pub(crate) health: HealthMetrics,
    pub(crate) certs: Option<Arc<CertStore>>,
    pub(crate) live: Arc<LiveConnections>,
    /// Cancelled at the drain deadline: live connections are cut.
    pub(crate) cut: CancellationToken,
}

impl Shared {
    /// Starts recording a connection accepted at `started`: its recorder (under
    /// `fallback` until its peer is known), byte counters, and live-table entry naming
    /// `service`.
    pub(crate) fn open(
        &self,
        direction: Direction,
        source: SocketAddr,
        destination: SocketAddr,
        started: std::time::Instant,
        service: &Arc<telemetry::DestinationService>,
        fallback: telemetry::TcpLabels,
    ) -> (
        telemetry::ConnectionRecorder,
        Arc<telemetry::ByteCounters>,
        LiveGuard,
    ) {
        let recorder = self.metrics.recorder(fallback);
        let bytes = recorder.byte_counters();
        let guard = self
            .live
            .register(direction, source, destination, started, bytes.clone());
        guard.entry().set_service(service);
        (recorder, bytes, guard)
    }

    /// The configuration in force now.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, next: Arc<Generation>) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

/// One version of the configuration and what is built from it.
pub(crate) struct Generation {
    pub(crate) config: Arc<ProxyConfig>,
    /// The control plane's version string (`static` for the start-up configuration).
    pub(crate) version: String,
    pub(crate) routes: RouteTable,
    /// Inbound ports' targets.
    pub(crate) inbound: InboundTargets,
    /// Gateway servers' routes (gateway mode only).
    pub(crate) gateway: Option<GatewayTable>,
    pub(crate) inbound_permits: Option<Arc<Semaphore>>,
    pub(crate) outbound_permits: Option<Arc<Semaphore>>,
}

impl Generation {
    /// Builds a generation; counters of active connections (per endpoint, per service
    /// port, and the `limits.maxConnections` permits when the limit is unchanged) carry
    /// over from `previous`.
    fn new(config: Arc<ProxyConfig>, version: String, previous: Option<&Generation>) -> Self {
        let empty = RouteTable::default();
        let previous_routes = previous.map_or(&empty, |p| &p.routes);
        let mut routes = RouteTable::rebuild(&config.outbound.services, previous_routes);
        let gateway = config
            .gateway
            .as_ref()
            .map(|g| GatewayTable::build(g, &mut routes, previous_routes));
        let max = config.limits.max_connections;
        let keep = previous.filter(|p| p.config.limits.max_connections == max);
        let permits = |old: Option<&Option<Arc<Semaphore>>>| match old {
            Some(o) => o.clone(),
            None => max.map(|n| Arc::new(Semaphore::new(n as usize))),
        };
        Self {
            inbound: InboundTargets::new(&config),
            inbound_permits: permits(keep.map(|p| &p.inbound_permits)),
            outbound_permits: permits(keep.map(|p| &p.outbound_permits)),
            routes,
            gateway,
            version,
            config,
        }
    }
}

/// The sidecar proxy.
#[derive(Debug)]
pub struct Proxy;

/// What a listener does with the connections it accepts.
#[derive(Clone)]
enum Listener {
    InboundCapture(SocketAddr),
    /// An explicit inbound listener for an app port.
    InboundPort(u16),
    OutboundCapture(SocketAddr),
    /// An explicit outbound listener for `<name>.<namespace>:<port>`.
    OutboundRoute(String),
    /// An explicit listener for a gateway server port.
    GatewayServer(u16),
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind { what, addr, error })
}

fn local_addr(l: &TcpListener, what: &str, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|error| StartError::Bind {
        what: what.to_owned(),
        addr,
        error,
    })
}

/// The original destination of a redirected connection; `None` when it was not
/// redirected (then the kernel has no NAT entry for it).
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    orig.ok().and_then(|a| a.as_socket())
}

impl Proxy {
    /// Starts a proxy on the current tokio runtime: loads certificates, binds every
    /// listener (port 0 picks a free port; see [`ProxyHandle::addrs`]), starts the
    /// admin thread and reports ready.
    pub async fn start(
        config: ProxyConfig,
        options: ProxyOptions,
    ) -> Result<ProxyHandle, StartError> {
        config.validate("configuration")?;
        if let Some(mark) = config.capture.mark {
            crate::connection::probe_mark(mark).map_err(StartError::Mark)?;
        }
        let overrides = overrides::tag_overrides(&config.telemetry).map_err(|e| {
            StartError::Config(ConfigError::Invalid {
                source_name: "configuration".into(),
                field: e.field,
                value: e.value,
                problem: e.problem,
                fix: e.fix,
            })
        })?;
        let config = Arc::new(config);
        let certs = match &config.tls {
            Some(tls) => Some(Arc::new(CertStore::load(&tls.cert_dir)?)),
            None => None,
        };
        let mut registry = Registry::default();
        let metrics = TcpMetrics::new(&mut registry);
        metrics.set_enabled(config.telemetry.enabled);
        metrics.set_overrides(overrides);
        let health = HealthMetrics::new(&mut registry);
        let registry = Arc::new(registry);
        let shared = Arc::new(Shared {
            state: RwLock::new(Arc::new(Generation::new(
                config.clone(),
                STATIC_VERSION.to_owned(),
                None,
            ))),
            local: LocalNode::new(&config.node),
            metrics,
            health,
            certs: certs.clone(),
            live: Arc::new(LiveConnections::default()),
            cut: CancellationToken::new(),
        });

        // The endpoint addresses are filled in once the admin thread has bound them.
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut addrs = BoundAddrs {
            inbound: None,
            outbound: None,
            inbound_ports: BTreeMap::new(),
            outbound_services: BTreeMap::new(),
            gateway_servers: BTreeMap::new(),
            admin: unbound,
            stats: unbound,
            readiness: unbound,
        };
        let mut listeners = Vec::new();
        if let Some(addr) = config.inbound.listen {
            let l = bind("inbound.listen".into(), addr).await?;
            let bound = local_addr(&l, "inbound.listen", addr)?;
            addrs.inbound = Some(bound);
            listeners.push((l, Listener::InboundCapture(bound)));
        }
        for port in &config.inbound.ports {
            if let Some(addr) = port.listen {
                let what = format!("inbound port {}", port.port);
                let l = bind(what.clone(), addr).await?;
                addrs
                    .inbound_ports
                    .insert(port.port, local_addr(&l, &what, addr)?);
                listeners.push((l, Listener::InboundPort(port.port)));
            }
        }
        if let Some(addr) = config.outbound.listen {
            let l = bind("outbound.listen".into(), addr).await?;
            let bound = local_addr(&l, "outbound.listen", addr)?;
            addrs.outbound = Some(bound);
            listeners.push((l, Listener::OutboundCapture(bound)));
        }
        for svc in &config.outbound.services {
            for port in &svc.ports {
                let Some(addr) = port.listen else { continue };
                let key = outbound::port_key(svc, port);
                let l = bind(key.clone(), addr).await?;
                addrs
                    .outbound_services
                    .insert(key.clone(), local_addr(&l, &key, addr)?);
                listeners.push((l, Listener::OutboundRoute(key)));
            }
        }

        for server in config.gateway.iter().flat_map(|g| &g.servers) {
            let Some(addr) = server.listen else { continue };
            let what = format!("gateway server {}", server.port);
            let l = bind(what.clone(), addr).await?;
            addrs
                .gateway_servers
                .insert(server.port, local_addr(&l, &what, addr)?);
            listeners.push((l, Listener::GatewayServer(server.port)));
        }

        let ready = Arc::new(AtomicBool::new(false));
        let quit = CancellationToken::new();
        let admin = admin::spawn(
            AdminState {
                shared: shared.clone(),
                registry: registry.clone(),
                ready: ready.clone(),
                log_level: options.log_level.clone(),
                quit: quit.clone(),
            },
            &config,
        )?;
        addrs.admin = admin.admin_addr;
        addrs.stats = admin.stats_addr;
        addrs.readiness = admin.readiness_addr;

        let stop_accept = CancellationToken::new();
        let mut tasks = Vec::new();
        for (listener, kind) in listeners {
            tasks.push(tokio::spawn(accept_loop(
                shared.clone(),
                listener,
                kind,
                stop_accept.clone(),
            )));
        }
        let background = CancellationToken::new();
        let (interval_tx, interval_rx) = watch::channel(config.reporting.interval);
        let reporter = tokio::spawn(report_live(
            shared.metrics.clone(),
            interval_rx,
            background.clone(),
        ));
        let watcher = match (&certs, &config.tls) {
            (Some(store), Some(tls)) => {
                let health = shared.health.clone();
                Some(store.clone().spawn_watcher(
                    tls.poll_interval,
                    background.clone(),
                    move || health.cert_reloaded(),
                ))
            }
            _ => None,
        };
        ready.store(true, Ordering::SeqCst);
        tracing::info!(
            workload = %config.node.workload_name,
            namespace = %config.node.namespace,
            identity = ?certs.as_ref().and_then(|c| c.current().identity().map(str::to_owned)),
            addrs = %serde_json::to_string(&addrs).unwrap_or_default(),
            "proxy ready"
        );
        Ok(ProxyHandle {
            addrs,
            shared,
            update_lock: Mutex::new(()),
            updates: AtomicU64::new(0),
            interval: interval_tx,
            registry,
            ready,
            quit,
            stop_accept,
            background,
            accept_tasks: tasks,
            reporter,
            watcher,
            admin: Some(admin),
        })
    }
}

/// The start-up configuration's version in `/config_dump`.
pub(crate) const STATIC_VERSION: &str = "static";

/// Flushes live connections' bytes every reporting interval; a new interval (after an
/// update) starts a new period.
async fn report_live(
    metrics: TcpMetrics,
    mut interval: watch::Receiver<Duration>,
    stop: CancellationToken,
) {
    loop {
        let period = *interval.borrow_and_update();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => metrics.flush_all(),
                changed = interval.changed() => {
                    if changed.is_err() {
                        // The handle is gone; keep the last period until stopped.
                        let _ = stop.cancelled().await;
                        return;
                    }
                    break;
                }
            }
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Listener,
    stop: CancellationToken,
) {
    // An explicit listener bound to one address is every connection's local address:
    // known here, it saves a `getsockname` per connection. Capture listeners (and
    // wildcard binds) ask each socket.
    let local = match (&kind, listener.local_addr()) {
        (Listener::InboundCapture(_) | Listener::OutboundCapture(_), _) => None,
        (_, Ok(addr)) if !addr.ip().is_unspecified() => Some(addr),
        _ => None,
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let gen = shared.current();
        let local = local.unwrap_or_else(|| stream.local_addr().unwrap_or(peer));
        tokio::spawn(connection(shared, gen, stream, peer, local, kind.clone()));
    }
}

/// One accepted connection's task. Its setup runs boxed, and the box is freed when the
/// setup hands over: an open connection's task then holds only the [`Established`]
/// connection and its relay, not the larger state of the phases before.
fn connection(
    shared: Arc<Shared>,
    gen: Arc<Generation>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    kind: Listener,
) -> impl std::future::Future<Output = ()> + Send {
    let cut = shared.cut.clone();
    let setup = Box::pin(async move {
        tokio::select! {
            // A connection sees the cut itself once it is copying; this ends
            // connections still connecting or handshaking.
            biased;
            established = setup(shared, gen, stream, peer, local, kind) => established,
            _ = cut.cancelled() => None,
        }
    });
    async move {
        // The run future is pinned in place and awaited by reference, so this task
        // stores it once (awaiting it by value would reserve a second copy).
        let run = match setup.await {
            Some(established) => established.run(),
            None => return,
        };
        let run = std::pin::pin!(run);
        run.await
    }
}

/// Sets up an accepted connection as its listener says; `local` is the address it was
/// accepted on.
async fn setup(
    shared: Arc<Shared>,
    gen: Arc<Generation>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    kind: Listener,
) -> Option<Established> {
    match kind {
        Listener::InboundPort(port) => {
            let target = gen.inbound.port(port);
            inbound::setup(shared, gen, stream, peer, local, target).await
        }
        Listener::GatewayServer(port) => {
            Box::pin(gateway::setup(shared, gen, stream, peer, local, port)).await
        }
        Listener::InboundCapture(listen) => {
            let original = original_destination(&stream)
                .filter(|dst| *dst != local && dst.port() != listen.port());
            if let Some(dst) = original {
                if gen.gateway.as_ref().is_some_and(|g| g.serves(dst.port())) {
                    // A gateway server port: the connection is routed, not delivered to
                    // a local app. Boxed so that sidecar connections do not carry the
                    // gateway's larger future.
                    return Box::pin(gateway::setup(shared, gen, stream, peer, dst, dst.port()))
                        .await;
                }
            }
            let (dst, target) = match original {
                Some(dst) => (dst, Some(gen.inbound.for_original_destination(dst))),
                None => (local, None),
            };
            inbound::setup(shared, gen, stream, peer, dst, target).await
        }
        Listener::OutboundRoute(key) => {
            let target = match gen.routes.by_key(&key) {
                Some(port) => Target::Route {
                    port,
                    original: None,
                },
                None => Target::NoRoute,
            };
            outbound::setup(shared, gen, stream, peer, local, target, Vec::new()).await
        }
        Listener::OutboundCapture(listen) => {
            let (dst, target) = match original_destination(&stream) {
                Some(dst) if dst != local && dst.port() != listen.port() => (
                    dst,
                    Target::classify(&gen.routes, gen.config.outbound.traffic_policy, dst),
                ),
                // A direct connection to the capture port would loop back to us.
                _ => (local, Target::NoRoute),
            };
            outbound::setup(shared, gen, stream, peer, dst, target, Vec::new()).await
        }
    }
}

/// What a shutdown did.
#[derive(Debug)]
pub struct ShutdownReport {
    /// Connections still open at the drain deadline, which were cut.
    pub cut_connections: usize,
    /// The final metrics exposition, after the last flush.
    pub final_metrics: String,
}

/// A running proxy.
pub struct ProxyHandle {
    addrs: BoundAddrs,
    shared: Arc<Shared>,
    /// One update at a time: each builds on the generation before it.
    update_lock: Mutex<()>,
    /// Updates applied so far (names the version of an unversioned update).
    updates: AtomicU64,
    interval: watch::Sender<Duration>,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    quit: CancellationToken,
    stop_accept: CancellationToken,
    background: CancellationToken,
    accept_tasks: Vec<JoinHandle<()>>,
    reporter: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
    admin: Option<AdminServer>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// The bound addresses.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Number of connections currently open.
    pub fn live_connections(&self) -> usize {
        self.shared.live.len()
    }

    /// Cancelled when a shutdown is requested through the admin endpoint
    /// (`/quitquitquit`); the binary also cancels it on SIGTERM/SIGINT.
    pub fn shutdown_requested(&self) -> CancellationToken {
        self.quit.clone()
    }

    /// The current metrics exposition (Prometheus text), as `/stats/prometheus` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.health.set_live(self.shared.live.len());
        telemetry::encode(&self.registry, telemetry::Format::PrometheusText).unwrap_or_default()
    }

    /// Stops accepting, lets live connections finish until the drain deadline
    /// (`limits.drainTimeout`), cuts the rest, flushes every metric and stops the
    /// admin thread.
    pub async fn shutdown(mut self) -> ShutdownReport {
        self.ready.store(false, Ordering::SeqCst);
        self.stop_accept.cancel();
        for t in self.accept_tasks.drain(..) {
            let _ = t.await;
        }
        let drain = self.shared.current().config.limits.drain_timeout;
        tracing::info!(live = self.shared.live.len(), deadline = ?drain, "draining connections");
        let deadline = tokio::time::Instant::now() + drain;
        let mut cut_connections = 0;
        if !self.shared.live.wait_empty(deadline).await {
            cut_connections = self.shared.live.len();
            tracing::warn!(
                cut_connections,
                "drain deadline reached; closing the remaining connections"
            );
            self.shared.cut.cancel();
            let grace = tokio::time::Instant::now() + Duration::from_secs(2);
            self.shared.live.wait_empty(grace).await;
        }
        // Connections still in their handshake were not in the table: end them too.
        self.shared.cut.cancel();
        self.background.cancel();
        let _ = (&mut self.reporter).await;
        if let Some(w) = self.watcher.take() {
            let _ = w.await;
        }
        self.shared.metrics.flush_all();
        let final_metrics = self.metrics_text();
        if let Some(admin) = self.admin.take() {
            admin.stop().await;
        }
        tracing::info!(cut_connections, "proxy stopped; metrics flushed");
        ShutdownReport {
            cut_connections,
            final_metrics,
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // A handle dropped without shutdown still stops its tasks and threads.
        self.stop_accept.cancel();
        self.background.cancel();
        self.shared.cut.cancel();
        if let Some(admin) = self.admin.take() {
            admin.stop_detached();
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<R>(
        _: impl FnOnce(Arc<Shared>, Arc<Generation>, TcpStream, SocketAddr, SocketAddr, Listener) -> R,
    ) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_open_connections_task_stays_small() {
        // Every open connection's task holds this future, plus tokio's 96-byte header,
        // in an allocation rounded up to 128 bytes: up to 544 bytes of future (release)
        // that is 640 bytes, past it 768, and idle plaintext connections then miss their
        // 2 KiB (BENCHMARKS.md). A debug build lays the future out 32 bytes larger.
        let limit = if cfg!(debug_assertions) { 576 } else { 544 };
        let size = returned_size(connection);
        assert!(
            size <= limit,
            "the connection task's future is {size} bytes (at most {limit})"
        );
    }
}
