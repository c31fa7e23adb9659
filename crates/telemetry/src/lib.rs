//! Istio-compatible TCP telemetry: the `istio_tcp_*` counter families with Istio's 23
//! labels, the per-connection [`ConnectionRecorder`] that the proxy's copy loop feeds
//! through lock-free [`ByteCounters`], the reporting flush that turns them into
//! exactly-once counter updates, Telemetry API overrides, and the Prometheus
//! exposition. It knows nothing about sockets or configuration files: the proxy
//! describes each connection with [`Workload`]s and a [`DestinationService`], and
//! owns the reporting timer (or uses `spawn_reporting` with the `rt` feature).
//!
//! ```
//! use telemetry::*;
//!
//! let mut registry = Registry::default();
//! let metrics = TcpMetrics::new(&mut registry);
//! let local = Workload { name: "ratings-v1".into(), namespace: "default".into(), ..Workload::default() };
//! let service = DestinationService::from_fqdn("ratings.default.svc.cluster.local");
//!
//! // Accept: the peer is not known yet.
//! let fallback = TcpLabels::inbound(&local, &Workload::unknown(), &service,
//!     SecurityPolicy::MutualTls, ResponseFlags::None);
//! let mut conn = metrics.recorder(fallback);
//! let bytes = conn.byte_counters(); // into the copy loop
//!
//! // Metadata exchange done: fix the labels (counts `opened`).
//! let peer = Workload { name: "productpage-v1".into(), ..Workload::default() };
//! conn.resolve(TcpLabels::inbound(&local, &peer, &service,
//!     SecurityPolicy::MutualTls, ResponseFlags::None));
//!
//! bytes.add_received(6);  // client → server
//! bytes.add_sent(12);     // server → client
//! metrics.flush_all();    // every reporting tick
//! conn.close(None);       // final bytes and `closed`
//!
//! let text = encode(&registry, Format::negotiate(None)).unwrap();
//! assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter"));
//! ```

mod exposition;
mod labels;
mod metrics;
mod overrides;
mod recorder;
#[cfg(feature = "rt")]
mod reporting;
mod workload;

pub use exposition::{
    encode, EncodeError, Format, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE,
};
pub use labels::{
    LabelValue, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy, TcpLabel, TcpLabels,
    TcpLabelsBuilder, UNKNOWN,
};
pub use metrics::{TcpMetrics, DEFAULT_REPORTING_INTERVAL};
pub use overrides::{MetricOverrides, TagOperation, TagOverrides, TagValue, TcpMetric};
pub use recorder::{ByteCounters, ConnectionRecorder};
#[cfg(feature = "rt")]
pub use reporting::spawn_reporting;
pub use workload::{
    spiffe_id, DestinationService, SpiffeId, Workload, APP_LABEL, CANONICAL_NAME_LABEL,
    CANONICAL_REVISION_LABEL, DEFAULT_REVISION, K8S_NAME_LABEL, K8S_VERSION_LABEL, VERSION_LABEL,
};

/// Re-exported so users name the same registry type this crate registers into.
pub use prometheus_client::registry::Registry;
