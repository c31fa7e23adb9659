//! The reporting tick: live connections show up within one interval.

#![cfg(feature = "rt")]

#[path = "support/exposition.rs"]
mod exposition;

use std::time::Duration;

use exposition::Parsed;
use telemetry::{
    spawn_reporting, DestinationService, Registry, ResponseFlags, TcpLabels, TcpMetrics, Workload,
    DEFAULT_REPORTING_INTERVAL,
};

const RECEIVED: &str = "istio_tcp_received_bytes_total";

#[tokio::test(start_paused = true)]
async fn flushes_every_interval() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let labels = TcpLabels::outbound(
        &Workload::unknown(),
        &Workload::unknown(),
        &DestinationService::unknown(),
        ResponseFlags::None,
    );
    let mut r = metrics.recorder(labels.clone());
    r.resolve(labels);
    let bytes = r.byte_counters();
    let task = spawn_reporting(metrics.clone(), DEFAULT_REPORTING_INTERVAL);

    bytes.add_received(10);
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(Parsed::scrape(&registry).sum(RECEIVED), 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(Parsed::scrape(&registry).sum(RECEIVED), 10.0);

    bytes.add_received(5);
    tokio::time::sleep(DEFAULT_REPORTING_INTERVAL).await;
    assert_eq!(Parsed::scrape(&registry).sum(RECEIVED), 15.0);

    task.abort();
    bytes.add_received(1);
    r.close(None);
    assert_eq!(Parsed::scrape(&registry).sum(RECEIVED), 16.0);
}

#[tokio::test(start_paused = true)]
async fn zero_interval_does_not_spin_forever() {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let task = spawn_reporting(metrics, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!task.is_finished());
    task.abort();
}
