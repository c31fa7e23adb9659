//! The proxy's own health metrics, next to the `istio_tcp_*` families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::connection::Direction;

type Labels = Vec<(&'static str, &'static str)>;

/// Counters for events the Istio families do not show.
#[derive(Clone, Debug, Default)]
pub struct HealthMetrics {
    tls_failures: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    live: Gauge,
    cert_reloads: Counter,
}

impl HealthMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "weir_proxy_tls_handshake_failures",
            "TLS handshakes that failed, by direction",
            m.tls_failures.clone(),
        );
        registry.register(
            "weir_proxy_connections_refused",
            "Inbound connections refused before any byte was forwarded, by reason",
            m.refused.clone(),
        );
        registry.register(
            "weir_proxy_live_connections",
            "Connections currently open through the proxy",
            m.live.clone(),
        );
        registry.register(
            "weir_proxy_certificate_reloads",
            "Times new workload certificates were loaded",
            m.cert_reloads.clone(),
        );
        m
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self, direction: Direction) {
        let d = match direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        self.tls_failures
            .get_or_create(&vec![("direction", d)])
            .inc();
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Sets the live-connection gauge (at scrape time).
    pub fn set_live(&self, n: usize) {
        self.live.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a certificate reload.
    pub fn cert_reloaded(&self) {
        self.cert_reloads.inc();
    }
}
