//! The delivery metrics the control plane exports on its monitoring port.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Counters of configuration delivery. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    pushes: Counter,
    rejections: Counter,
    push_latency: Histogram,
    connected: Gauge,
}

impl ServerMetrics {
    /// Creates the metrics and registers them in `registry`:
    /// `weir_control_pushes_total`, `weir_control_push_rejections_total`,
    /// `weir_control_push_latency_seconds` and `weir_control_connected_proxies`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            pushes: Counter::default(),
            rejections: Counter::default(),
            // 1 ms to ~33 s.
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            connected: Gauge::default(),
        };
        registry.register(
            "weir_control_pushes",
            "Configuration responses sent to proxies",
            metrics.pushes.clone(),
        );
        registry.register(
            "weir_control_push_rejections",
            "Configuration responses proxies rejected (NACK)",
            metrics.rejections.clone(),
        );
        registry.register(
            "weir_control_push_latency_seconds",
            "Time from a configuration change observed to the proxy's acknowledgement",
            metrics.push_latency.clone(),
        );
        registry.register(
            "weir_control_connected_proxies",
            "Proxies with an open configuration stream",
            metrics.connected.clone(),
        );
        metrics
    }

    /// Responses sent so far.
    pub fn pushes(&self) -> u64 {
        self.pushes.get()
    }

    /// Responses rejected so far.
    pub fn rejections(&self) -> u64 {
        self.rejections.get()
    }

    /// Proxies connected now.
    pub fn connected(&self) -> i64 {
        self.connected.get()
    }

    pub(crate) fn pushed(&self) {
        self.pushes.inc();
    }

    pub(crate) fn rejected(&self) {
        self.rejections.inc();
    }

    pub(crate) fn acknowledged(&self, seconds: f64) {
        self.push_latency.observe(seconds);
    }

    pub(crate) fn proxy_connected(&self) {
        self.connected.inc();
    }

    pub(crate) fn proxy_disconnected(&self) {
        self.connected.dec();
    }
}
