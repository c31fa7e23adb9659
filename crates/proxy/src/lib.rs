//! weir's data plane: the sidecar that sits beside a workload, captures its TCP traffic
//! (transparently through iptables or on explicit listeners), secures it with mutual TLS,
//! exchanges workload metadata with the peer sidecar in-band (`istio-peer-exchange`),
//! copies bytes both ways and reports every connection as Istio's `istio_tcp_*` metrics.
//! It also serves the admin, stats and readiness endpoints.
//!
//! Embed it with [`Proxy::start`] and a [`config::ProxyConfig`]; the `weir proxy`
//! command wraps the same entry point.
//!
//! Threads: connections run on the caller's tokio runtime, one task each, with the two
//! copy directions joined in that task; the admin (15000), stats (15090) and readiness
//! (15021) endpoints run on their own thread and current-thread runtime. Module map:
//! [`config`] (the configuration), [`tls`] (certificates, SPIFFE verification),
//! [`exchange`] (metadata exchange on a stream), [`copy`] (one direction of bytes),
//! [`connection`] (connects, the two-way pump, live-connection table), [`outbound`] and
//! [`inbound`] (the two listeners' connection handling), [`gateway`] (gateway mode: an
//! ingress gateway's servers routed by port and HTTP path), [`capture`] (iptables rules).

mod admin;
pub mod capture;
pub mod config;
pub mod connection;
pub mod copy;
pub mod exchange;
pub mod gateway;
mod health;
pub mod inbound;
pub mod outbound;
mod sidecar;
pub mod stream;
pub mod tls;

pub use sidecar::{
    BoundAddrs, LogLevelSetter, Proxy, ProxyHandle, ProxyOptions, Shared, ShutdownReport,
    StartError, UpdateError, UpdateSummary,
};
