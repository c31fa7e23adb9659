//! The proxy's configuration: who this sidecar is, what it listens on, where traffic goes
//! and how it is secured and reported.
//!
//! These are the types the control plane will push; until it exists they are read from a
//! static YAML or JSON file (`weir proxy --config FILE`, documented in
//! `docs/proxy-config.md`). Loading runs parse → construct (defaults) → validate, and
//! every error names the source, the field, the bad value and the fix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod duration;
mod gateway;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use gateway::{
    host_selected, GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, PathMatch,
};

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read proxy configuration {path}: {error}; check the path and its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The text is not valid YAML/JSON or does not match the schema.
    #[error("{source_name}: invalid {format} proxy configuration: {message}")]
    Parse {
        /// File name or another description of where the text came from.
        source_name: String,
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message (it carries the line and column, and the field).
        message: String,
    },
    /// A value parses but is not acceptable.
    #[error("{source_name}: field `{field}` = {value:?}: {problem}; fix: {fix}")]
    Invalid {
        /// File name or another description of where the text came from.
        source_name: String,
        /// Dotted path of the field, e.g. `outbound.services[0].ports[1].endpoints[0].identity`.
        field: String,
        /// The offending value as written (or as understood).
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

/// Who a sidecar's pod is, for [`ProxyConfig::sidecar`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// Pod name.
    pub pod_name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload (Deployment) name.
    pub workload: String,
    /// Service account.
    pub service_account: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Cluster id (`Kubernetes` when `None`).
    pub cluster_id: Option<String>,
    /// Pod IP.
    pub ip: Option<IpAddr>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Owner, e.g. `kubernetes://apis/apps/v1/namespaces/NS/deployments/NAME`.
    pub owner: Option<String>,
}

/// The whole configuration of one sidecar.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// The workload this sidecar runs beside. It becomes the metadata sent over MX and
    /// the local side of every metric.
    pub node: NodeConfig,
    /// Workload certificates. Needed for any mTLS, inbound or outbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Traffic arriving for the workload.
    #[serde(default)]
    pub inbound: InboundConfig,
    /// Traffic the workload sends to other services.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// How often live connections are reported.
    #[serde(default)]
    pub reporting: ReportingConfig,
    /// Timeouts and size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Admin endpoint (config dump, connections, log level); keep it on loopback.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Prometheus endpoint `/stats/prometheus`.
    #[serde(default)]
    pub stats: StatsConfig,
    /// Readiness endpoint `/healthz/ready`.
    #[serde(default)]
    pub readiness: ReadinessConfig,
    /// Settings shared with the traffic-capture rules.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// Metric reporting switches and Telemetry API overrides.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Gateway mode (an ingress gateway's servers and routes); unset for a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayConfig>,
}

/// Who this sidecar is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// Pod name (MX `NAME`). Defaults to the workload name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Kubernetes namespace (MX `NAMESPACE`). Required.
    pub namespace: String,
    /// Workload name, usually the Deployment name (MX `WORKLOAD_NAME`). Required.
    pub workload_name: String,
    /// Service account; forms the SPIFFE identity.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Trust domain; forms the SPIFFE identity.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Cluster id (MX `CLUSTER_ID`).
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Pod IP, used in the node id sent over MX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Pod labels (MX `LABELS`): `app`, `version`, canonical name/revision, others.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Owner reference (MX `OWNER`). Defaults to the Deployment of the workload name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Mesh id (MX `MESH_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// Region (MX `REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Availability zone (MX `AVAILABILITY_ZONE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl NodeConfig {
    /// The pod name, falling back to the workload name.
    pub fn pod(&self) -> &str {
        self.pod_name.as_deref().unwrap_or(&self.workload_name)
    }

    /// This workload's SPIFFE identity, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn default_service_account() -> String {
    "default".to_owned()
}
fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}
fn default_cluster_id() -> String {
    "Kubernetes".to_owned()
}

/// Where the workload certificates are, in Istio's layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory holding `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    pub cert_dir: PathBuf,
    /// How often the files are checked for changes (new handshakes use new files).
    #[serde(default = "default_tls_poll", with = "duration::serde_duration")]
    pub poll_interval: Duration,
}

fn default_tls_poll() -> Duration {
    Duration::from_secs(1)
}

/// Peer authentication mode of the inbound side (Istio `PeerAuthentication`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundMode {
    /// Only mutual TLS; plaintext connections are refused.
    Strict,
    /// Mutual TLS and plaintext both accepted (the first bytes decide).
    #[default]
    Permissive,
    /// Plaintext only; TLS is not terminated.
    Disable,
}

/// Traffic arriving for the workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundConfig {
    /// Transparent capture listener (iptables REDIRECT target, usually `0.0.0.0:15006`).
    /// The original destination port picks the app port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Peer authentication mode.
    #[serde(default)]
    pub mode: InboundMode,
    /// The app ports this workload serves.
    #[serde(default)]
    pub ports: Vec<InboundPort>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            listen: None,
            mode: InboundMode::Permissive,
            ports: Vec::new(),
        }
    }
}

/// One app port served by this workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPort {
    /// The port the workload's clients address (the original destination port).
    pub port: u16,
    /// Where the app listens. Defaults to `127.0.0.1:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<SocketAddr>,
    /// An explicit listener for this port (no iptables): peers connect here directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The service this port belongs to (the `destination_service*` labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

impl InboundPort {
    /// The app address for this port.
    pub fn target_addr(&self) -> SocketAddr {
        self.target
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

/// A reference to a Kubernetes service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Fully qualified host name; defaults to `<name>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl ServiceRef {
    /// The service's host name (FQDN).
    pub fn fqdn(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", self.name, self.namespace))
    }
}

/// What happens to outbound traffic for a destination no service matches
/// (Istio `meshConfig.outboundTrafficPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Forward it to its original destination, in plaintext.
    #[default]
    AllowAny,
    /// Refuse it (`response_flags="NC"`).
    RegistryOnly,
}

/// Traffic the workload sends to other services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundConfig {
    /// Transparent capture listener (iptables REDIRECT target, usually `127.0.0.1:15001`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Policy for destinations no service matches.
    #[serde(default)]
    pub traffic_policy: OutboundTrafficPolicy,
    /// Services this workload may call. Shared: a configuration pushed by the control
    /// plane reuses the entries that did not change instead of copying every service.
    #[serde(default)]
    pub services: Vec<Arc<OutboundService>>,
}

/// Load-balancing algorithm across a service port's endpoints (Istio `DestinationRule`
/// `trafficPolicy.loadBalancer.simple`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// Each new connection goes to the next endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest active connections from this proxy (two random
    /// choices, the lesser loaded wins, as Envoy does).
    LeastRequest,
    /// A uniformly random endpoint.
    Random,
    /// No balancing: the connection goes to the address the application asked for
    /// (its original destination), as Envoy's original-destination cluster.
    Passthrough,
}

/// A service this workload calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundService {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Fully qualified host name; defaults to `<name>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Service virtual IPs, matched against the original destination of captured traffic.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Load-balancing algorithm.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<OutboundPort>,
}

impl OutboundService {
    /// The service as a reference (for labels).
    pub fn service_ref(&self) -> ServiceRef {
        ServiceRef {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// One port of a called service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundPort {
    /// The service port (matched against the original destination port).
    pub port: u16,
    /// An explicit listener for this service port (no iptables): the app connects here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Where connections go when `routes` is empty. Empty means no healthy upstream
    /// (`UH`).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Weighted destinations (a VirtualService's TCP route, or an HTTP route without
    /// match applied per connection). Each new connection picks one by weight; when
    /// empty, `endpoints` of this service are used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Most concurrent connections to this service port (DestinationRule
    /// `connectionPool.tcp.maxConnections`); more are refused with `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Upstream connect timeout for this port (DestinationRule
    /// `connectionPool.tcp.connectTimeout`); `limits.connectTimeout` when unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::serde_opt_duration"
    )]
    pub connect_timeout: Option<Duration>,
}

/// One weighted destination of a service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Relative weight; a route with weight 0 gets no connection.
    #[serde(default = "default_route_weight")]
    pub weight: u32,
    /// The service (and subset) the connection goes to. It names the
    /// `destination_service*` labels.
    pub destination: ServiceRef,
    /// DestinationRule subset name, if the route names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Load balancing among this route's endpoints; the service's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// The destination's endpoints (subset members only). Empty means no healthy upstream
    /// (`UH`).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Set when the destination cannot be resolved (no such service or subset): new
    /// connections on this route are refused with `NC`, as Envoy does for a route to a
    /// missing cluster. The text says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

fn default_route_weight() -> u32 {
    1
}

/// How the proxy talks to an endpoint (Istio `DestinationRule` `trafficPolicy.tls.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointTls {
    /// Mutual TLS with the workload certificate, then metadata exchange.
    #[default]
    IstioMutual,
    /// Plaintext (a peer without a sidecar).
    Disable,
}

/// One upstream endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The endpoint's address (pod IP and target port, or its sidecar's explicit inbound
    /// listener).
    pub address: SocketAddr,
    /// Transport security.
    #[serde(default)]
    pub tls: EndpointTls,
    /// The SPIFFE identity the endpoint's certificate must carry (required with
    /// `ISTIO_MUTUAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Reporting of live connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportingConfig {
    /// Interval between reports of live connections (Istio `tcpReportingDuration`).
    #[serde(default = "default_reporting", with = "duration::serde_duration")]
    pub interval: Duration,
}

impl Default for ReportingConfig {
    fn default() -> Self {
        Self {
            interval: default_reporting(),
        }
    }
}

fn default_reporting() -> Duration {
    Duration::from_secs(15)
}

/// Timeouts and size limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time allowed for one upstream TCP connect.
    #[serde(default = "default_connect_timeout", with = "duration::serde_duration")]
    pub connect_timeout: Duration,
    /// Upstream connect attempts per connection, each on the next endpoint.
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: u32,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_tls_timeout", with = "duration::serde_duration")]
    pub tls_handshake_timeout: Duration,
    /// PERMISSIVE inbound: how long to wait for a client's first bytes to tell TLS from
    /// plaintext. A client that stays silent this long (a server-first protocol such as
    /// MySQL) is treated as plaintext.
    #[serde(
        default = "default_protocol_detection",
        with = "duration::serde_duration"
    )]
    pub protocol_detection_timeout: Duration,
    /// Largest metadata-exchange frame accepted, in bytes.
    #[serde(default = "default_mx_max")]
    pub mx_max_frame_bytes: u32,
    /// Time allowed for the peer's metadata-exchange frame to arrive once it started.
    #[serde(default = "default_mx_timeout", with = "duration::serde_duration")]
    pub mx_timeout: Duration,
    /// How long live connections may drain after a shutdown request.
    #[serde(default = "default_drain", with = "duration::serde_duration")]
    pub drain_timeout: Duration,
    /// Most concurrent connections per direction; more are refused with `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// A connection with no byte in either direction for this long is closed (as
    /// Envoy's TCP proxy `idle_timeout`). Unset: no limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::serde_opt_duration"
    )]
    pub idle_timeout: Option<Duration>,
    /// Longest a connection may live; longer ones are cut with `DT`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::serde_opt_duration"
    )]
    pub max_connection_duration: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            connect_attempts: default_connect_attempts(),
            tls_handshake_timeout: default_tls_timeout(),
            protocol_detection_timeout: default_protocol_detection(),
            mx_max_frame_bytes: default_mx_max(),
            mx_timeout: default_mx_timeout(),
            drain_timeout: default_drain(),
            max_connections: None,
            idle_timeout: None,
            max_connection_duration: None,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_attempts() -> u32 {
    2
}
fn default_tls_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_protocol_detection() -> Duration {
    Duration::from_secs(1)
}
fn default_mx_max() -> u32 {
    65536
}
fn default_mx_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}

/// Admin endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; must be loopback.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin(),
        }
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}

/// Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatsConfig {
    /// Listen address.
    #[serde(default = "default_stats")]
    pub listen: SocketAddr,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            listen: default_stats(),
        }
    }
}

fn default_stats() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15090))
}

/// Readiness endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Listen address.
    #[serde(default = "default_readiness")]
    pub listen: SocketAddr,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            listen: default_readiness(),
        }
    }
}

fn default_readiness() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15021))
}

/// Settings shared with the traffic-capture (iptables) rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureConfig {
    /// `SO_MARK` set on the proxy's own upstream sockets so capture rules skip them
    /// (needs `CAP_NET_ADMIN`). Unset: no mark (skip by owner uid instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
}

/// Metric reporting switches and Telemetry API overrides (resolved mesh → namespace →
/// workload by the control plane).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Records and exports the `istio_tcp_*` metrics. `false` turns per-connection
    /// accounting off entirely (the proxy still forwards and logs).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Telemetry API `metrics[].overrides`, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricOverride>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            overrides: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One Telemetry API override: a metric (or all of them), disabled and/or tag changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricOverride {
    /// `TCP_OPENED_CONNECTIONS`, `TCP_CLOSED_CONNECTIONS`, `TCP_SENT_BYTES`,
    /// `TCP_RECEIVED_BYTES` or `ALL_METRICS` (the default). Other (HTTP/gRPC) metric
    /// names are accepted and have no effect on a TCP proxy.
    #[serde(default = "default_all_metrics")]
    pub metric: String,
    /// Do not report the metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Label name → operation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

fn default_all_metrics() -> String {
    "ALL_METRICS".to_owned()
}

/// A Telemetry API tag override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (the default) or `REMOVE`.
    #[serde(default)]
    pub operation: TagOperationKind,
    /// For `UPSERT`: a CEL-like expression as Istio's docs use, e.g. a quoted literal
    /// `"'v1'"`, `upstream_peer.labels['app'].value`, `destination_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Tag override operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperationKind {
    /// Set the label.
    #[default]
    Upsert,
    /// Drop the label.
    Remove,
}

/// The format of a configuration text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML (the default).
    Yaml,
    /// JSON.
    Json,
}

impl ProxyConfig {
    /// Reads, parses and validates a configuration file. `.json` files are JSON; anything
    /// else is YAML.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        };
        Self::from_str_named(&text, format, &path.display().to_string())
    }

    /// Parses and validates a configuration text; `source_name` appears in errors.
    pub fn from_str_named(
        text: &str,
        format: Format,
        source_name: &str,
    ) -> Result<Self, ConfigError> {
        let parsed: Result<Self, String> = match format {
            Format::Yaml => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        };
        let config = parsed.map_err(|message| ConfigError::Parse {
            source_name: source_name.to_owned(),
            format: match format {
                Format::Yaml => "YAML",
                Format::Json => "JSON",
            },
            message,
        })?;
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks the cross-field rules the types cannot express.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        validate::validate(self, source_name)
    }

    /// The bootstrap of a sidecar in a pod laid out as Istio's: capture listeners on
    /// 15006 (inbound, PERMISSIVE until a PeerAuthentication says otherwise) and
    /// 127.0.0.1:15001 (outbound, ALLOW_ANY), admin on 127.0.0.1:15000, stats on :15090,
    /// readiness on :15021, certificates in `cert_dir`, the proxy's sockets marked with
    /// `mark` (`None` when the capture rules recognise the proxy by uid instead). The
    /// rest comes from the control plane.
    pub fn sidecar(pod: PodIdentity, cert_dir: PathBuf, mark: Option<u32>) -> Self {
        let mut c = ProxyConfig::minimal(&pod.namespace, &pod.workload);
        c.node.pod_name = Some(pod.pod_name);
        c.node.service_account = pod.service_account;
        c.node.trust_domain = pod.trust_domain;
        if let Some(cluster) = pod.cluster_id {
            c.node.cluster_id = cluster;
        }
        c.node.ip = pod.ip;
        c.node.labels = pod.labels;
        c.node.owner = pod.owner;
        c.tls = Some(TlsConfig {
            cert_dir,
            poll_interval: Duration::from_secs(5),
        });
        c.inbound = InboundConfig {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 15006))),
            mode: InboundMode::Permissive,
            ports: Vec::new(),
        };
        c.outbound = OutboundConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 15001))),
            traffic_policy: OutboundTrafficPolicy::AllowAny,
            services: Vec::new(),
        };
        c.limits.drain_timeout = Duration::from_secs(5);
        c.admin.listen = SocketAddr::from(([127, 0, 0, 1], 15000));
        c.stats.listen = SocketAddr::from(([0, 0, 0, 0], 15090));
        c.readiness.listen = SocketAddr::from(([0, 0, 0, 0], 15021));
        c.capture.mark = mark;
        c
    }

    /// Constructs a minimal configuration for `namespace`/`workload` with nothing
    /// listening on fixed ports (admin, stats and readiness on `127.0.0.1:0`), for
    /// embedding and tests.
    pub fn minimal(namespace: &str, workload: &str) -> Self {
        let loopback0 = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            node: NodeConfig {
                pod_name: None,
                namespace: namespace.to_owned(),
                workload_name: workload.to_owned(),
                service_account: default_service_account(),
                trust_domain: default_trust_domain(),
                cluster_id: default_cluster_id(),
                ip: None,
                labels: BTreeMap::new(),
                owner: None,
                mesh_id: None,
                region: None,
                zone: None,
            },
            tls: None,
            inbound: InboundConfig {
                mode: InboundMode::Disable,
                ..InboundConfig::default()
            },
            outbound: OutboundConfig::default(),
            reporting: ReportingConfig::default(),
            limits: LimitsConfig::default(),
            admin: AdminConfig { listen: loopback0 },
            stats: StatsConfig { listen: loopback0 },
            readiness: ReadinessConfig { listen: loopback0 },
            capture: CaptureConfig::default(),
            telemetry: TelemetryConfig::default(),
            gateway: None,
        }
    }

    /// The configuration as pretty JSON (what `/config_dump` serves).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests;
