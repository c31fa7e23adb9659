//! Delivery of proxy configuration from the control plane to each sidecar.
//!
//! The control plane computes a [`ProxyView`] per connected proxy; this crate carries it
//! over a gRPC stream as xDS-style delta updates of weir's own protobuf resource types
//! (one resource per outbound service, one for the workload's own settings, which also
//! carries a gateway's servers and routes), with an acknowledgement or rejection per update. The proxy side assembles the resources into a
//! [`proxy::config::ProxyConfig`] and swaps it in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proxy::config::{
    GatewayConfig, InboundMode, InboundPort, OutboundService, OutboundTrafficPolicy,
    TelemetryConfig,
};

/// What one proxy should run with, as the control plane computed it. Cheap to clone:
/// resources are shared between proxies and between versions.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyView {
    /// Settings of the proxy's own workload.
    pub workload: Arc<WorkloadConfig>,
    /// Outbound services keyed by host name (FQDN). A change to one service replaces only
    /// its entry, so the delta sent to the proxy is that one resource. The map itself is
    /// shared by every view of one revision: notifying N proxies copies no map.
    pub services: Arc<ServiceMap>,
}

/// Outbound services keyed by host name (FQDN).
pub type ServiceMap = BTreeMap<String, Arc<OutboundService>>;

/// The dynamic settings of a proxy's own workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// Peer authentication (PeerAuthentication resolved workload → namespace → mesh).
    pub inbound_mode: InboundMode,
    /// The ports the workload serves (services selecting it: port → targetPort).
    pub inbound_ports: Vec<InboundPort>,
    /// Policy for destinations no service matches.
    pub traffic_policy: OutboundTrafficPolicy,
    /// Interval between reports of live connections (Telemetry `reportingInterval`).
    pub reporting_interval: Duration,
    /// Telemetry API overrides resolved mesh → namespace → workload.
    pub telemetry: TelemetryConfig,
    /// The gateway servers and routes, for a pod an Istio Gateway selects; `None` for a
    /// sidecar.
    pub gateway: Option<GatewayConfig>,
}

/// Who a connecting proxy is: what it announces, plus the identity its client
/// certificate proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Pod name.
    pub pod_name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload (Deployment) name.
    pub workload_name: String,
    /// Service account, as proven by the client certificate's SPIFFE identity.
    pub service_account: String,
    /// Pod IP, if known.
    pub ip: Option<IpAddr>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Ports the workload's containers declare.
    pub container_ports: BTreeSet<u16>,
}

/// Why a proxy cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The proxy's announced node contradicts its verified identity or is unknown.
    #[error("proxy {pod}.{namespace} refused: {reason}")]
    Refused {
        /// Pod name.
        pod: String,
        /// Namespace.
        namespace: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// The control plane's side of delivery: a live view per proxy.
pub trait ViewSource: Send + Sync + 'static {
    /// Registers a connected proxy and returns its current view, updated whenever the
    /// mesh changes in a way that affects it.
    fn subscribe(
        &self,
        node: &NodeInfo,
    ) -> Result<tokio::sync::watch::Receiver<Arc<ProxyView>>, SubscribeError>;

    /// The proxy disconnected (it stays an endpoint of its services only while another
    /// registration keeps it).
    fn unsubscribe(&self, node: &NodeInfo);
}

pub mod ca;
pub mod client;
pub mod convert;
pub mod rotate;
pub mod server;
pub mod tls;

/// The name of the one `Workload` resource each proxy receives.
pub const WORKLOAD_RESOURCE_NAME: &str = "workload";

pub mod proto {
    //! The generated protobuf types and gRPC stubs of `weir.config.v1`.
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("weir.config.v1");
}
