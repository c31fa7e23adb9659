//! Exactly-once accounting of the connection lifecycle, checked by scraping.

#[path = "support/exposition.rs"]
mod exposition;

use std::sync::Arc;

use exposition::Parsed;
use telemetry::{
    DestinationService, Registry, ResponseFlags, SecurityPolicy, TagOperation, TagOverrides,
    TagValue, TcpLabel, TcpLabels, TcpMetric, TcpMetrics, Workload,
};

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";

fn setup() -> (Registry, TcpMetrics) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    (registry, metrics)
}

fn workload(name: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        cluster: "Kubernetes".into(),
        labels: [("app".to_string(), name.to_string())].into(),
        principal: None,
    }
}

fn fallback() -> TcpLabels {
    TcpLabels::outbound(
        &workload("client"),
        &Workload::unknown(),
        &DestinationService::from_fqdn("server.default.svc.cluster.local"),
        ResponseFlags::None,
    )
}

fn resolved() -> TcpLabels {
    TcpLabels::outbound(
        &workload("client"),
        &workload("server"),
        &DestinationService::from_fqdn("server.default.svc.cluster.local"),
        ResponseFlags::None,
    )
}

/// (opened, closed, sent, received) summed over all series.
fn totals(registry: &Registry) -> (f64, f64, f64, f64) {
    let p = Parsed::scrape(registry);
    (p.sum(OPENED), p.sum(CLOSED), p.sum(SENT), p.sum(RECEIVED))
}

#[test]
fn nothing_reported_before_resolve() {
    let (registry, metrics) = setup();
    let r = metrics.recorder(fallback());
    r.byte_counters().add_received(10);
    metrics.flush_all();
    assert_eq!(totals(&registry), (0.0, 0.0, 0.0, 0.0));
    assert_eq!(metrics.live_connections(), 0);
    assert!(Parsed::scrape(&registry).samples.is_empty());
    r.close(None);
    assert_eq!(totals(&registry), (1.0, 1.0, 0.0, 10.0));
}

#[test]
fn resolve_then_close_counts_once() {
    let (registry, metrics) = setup();
    let mut r = metrics.recorder(fallback());
    let bytes = r.byte_counters();
    bytes.add_received(3);
    assert_eq!(r.labels(), Some(&fallback()));
    r.resolve(resolved());
    assert!(r.is_resolved());
    assert_eq!(r.labels(), Some(&resolved()));
    assert_eq!(metrics.live_connections(), 1);
    assert_eq!(totals(&registry), (1.0, 0.0, 0.0, 0.0));
    // A second resolve is ignored: no second `opened`, no label change.
    r.resolve(fallback());
    bytes.add_sent(7);
    r.close(None);
    assert_eq!(metrics.live_connections(), 0);
    let p = Parsed::scrape(&registry);
    assert_eq!(p.value(OPENED, &[("destination_workload", "server")]), 1.0);
    assert_eq!(p.value(CLOSED, &[("destination_workload", "server")]), 1.0);
    assert_eq!(p.value(SENT, &[("destination_workload", "server")]), 7.0);
    assert_eq!(
        p.value(RECEIVED, &[("destination_workload", "server")]),
        3.0
    );
    assert!(p
        .find(OPENED, &[("destination_workload", "unknown")])
        .is_empty());
}

#[test]
fn resolved_then_dropped_counts_once() {
    let (registry, metrics) = setup();
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    r.byte_counters().add_sent(5);
    drop(r);
    assert_eq!(totals(&registry), (1.0, 1.0, 5.0, 0.0));
    assert_eq!(metrics.live_connections(), 0);
}

#[test]
fn never_resolved_dropped_counts_fallback() {
    let (registry, metrics) = setup();
    drop(metrics.recorder(fallback()));
    let p = Parsed::scrape(&registry);
    assert_eq!(p.value(OPENED, &[("destination_workload", "unknown")]), 1.0);
    assert_eq!(p.value(CLOSED, &[("destination_workload", "unknown")]), 1.0);
}

#[test]
fn connect_failure_before_mx_is_uf() {
    let (registry, metrics) = setup();
    let r = metrics.recorder(fallback());
    r.close(Some(ResponseFlags::UpstreamConnectionFailure));
    let p = Parsed::scrape(&registry);
    assert_eq!(p.value(OPENED, &[("response_flags", "UF")]), 1.0);
    assert_eq!(p.value(CLOSED, &[("response_flags", "UF")]), 1.0);
    assert!(p.find(OPENED, &[("response_flags", "-")]).is_empty());
    assert_eq!(totals(&registry), (1.0, 1.0, 0.0, 0.0));
}

#[test]
fn flags_changed_at_close() {
    let (registry, metrics) = setup();
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    let bytes = r.byte_counters();
    bytes.add_received(100);
    metrics.flush_all();
    bytes.add_received(1);
    r.close(Some(ResponseFlags::DurationTimeout));
    let p = Parsed::scrape(&registry);
    // opened and bytes keep the resolved series; closed carries the final flags.
    assert_eq!(p.value(OPENED, &[("response_flags", "-")]), 1.0);
    assert!(p.find(OPENED, &[("response_flags", "DT")]).is_empty());
    assert_eq!(p.value(RECEIVED, &[("response_flags", "-")]), 101.0);
    assert!(p.find(RECEIVED, &[("response_flags", "DT")]).is_empty());
    assert_eq!(p.value(CLOSED, &[("response_flags", "DT")]), 1.0);
    assert_eq!(p.value(CLOSED, &[("response_flags", "-")]), 0.0);
    assert_eq!(p.sum(CLOSED), 1.0);
}

#[test]
fn same_flags_at_close_use_resolved_series() {
    let (registry, metrics) = setup();
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    r.close(Some(ResponseFlags::None));
    let p = Parsed::scrape(&registry);
    assert_eq!(p.find(CLOSED, &[]).len(), 1);
    assert_eq!(p.value(CLOSED, &[("response_flags", "-")]), 1.0);
}

#[test]
fn deltas_over_many_flushes() {
    let (registry, metrics) = setup();
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    let bytes = r.byte_counters();
    let (mut rx, mut tx) = (0u64, 0u64);
    for i in 1..=200u64 {
        bytes.add_received(i);
        rx += i;
        if i % 3 == 0 {
            bytes.add_sent(i * 2);
            tx += i * 2;
        }
        if i % 7 == 0 {
            metrics.flush_all();
            let p = Parsed::scrape(&registry);
            assert_eq!(p.sum(RECEIVED), rx as f64, "after {i}");
            assert_eq!(p.sum(SENT), tx as f64, "after {i}");
        }
    }
    // A flush with no new bytes adds nothing.
    metrics.flush_all();
    metrics.flush_all();
    r.close(None);
    metrics.flush_all();
    assert_eq!(totals(&registry), (1.0, 1.0, tx as f64, rx as f64));
}

#[test]
fn concurrent_copy_and_flush_exact_totals() {
    let (registry, metrics) = setup();
    let conns: Vec<_> = (0..8)
        .map(|_| {
            let mut r = metrics.recorder(fallback());
            r.resolve(resolved());
            r
        })
        .collect();
    let counters: Vec<_> = conns.iter().map(|r| r.byte_counters()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                metrics.flush_all();
                n += 1;
            }
            n
        })
    };
    let writers: Vec<_> = counters
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    c.add_received(3);
                    c.add_sent(1);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Close half while the flusher still runs, then the rest.
    let mut conns = conns;
    let rest = conns.split_off(4);
    for r in conns {
        r.close(None);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flusher.join().unwrap();
    metrics.flush_all();
    let p = Parsed::scrape(&registry);
    assert_eq!(p.sum(RECEIVED), (8 * 20_000 * 3) as f64);
    assert_eq!(p.sum(SENT), (8 * 20_000) as f64);
    assert_eq!(p.sum(CLOSED), 4.0);
    drop(rest);
    assert_eq!(totals(&registry), (8.0, 8.0, 160_000.0, 480_000.0));
}

#[test]
fn many_live_connections_flush() {
    let (registry, metrics) = setup();
    let conns: Vec<_> = (0..10_000u64)
        .map(|i| {
            let mut r = metrics.recorder(fallback());
            r.resolve(resolved());
            r.byte_counters().add_received(i % 10);
            r
        })
        .collect();
    assert_eq!(metrics.live_connections(), 10_000);
    metrics.flush_all();
    assert_eq!(totals(&registry), (10_000.0, 0.0, 0.0, 45_000.0));
    drop(conns);
    assert_eq!(metrics.live_connections(), 0);
    assert_eq!(totals(&registry), (10_000.0, 10_000.0, 0.0, 45_000.0));
}

#[test]
fn overrides_remove_add_and_disable() {
    let (registry, metrics) = setup();
    let mut o = TagOverrides::none();
    o.set_tag(None, "destination_workload", TagOperation::Remove)
        .set_tag(
            Some(TcpMetric::OpenedConnections),
            "role",
            TagOperation::Upsert(TagValue::Literal("client".into())),
        )
        .set_tag(
            None,
            "source_app",
            TagOperation::Upsert(TagValue::Label(TcpLabel::SourceWorkload)),
        )
        .set_disabled(Some(TcpMetric::SentBytes), true);
    metrics.set_overrides(o);
    // Two peers that differ only in the removed label share one series.
    for name in ["server-a", "server-b"] {
        let local = Workload {
            name: name.into(),
            ..workload("server")
        };
        let mut r = metrics.recorder(fallback());
        r.resolve(TcpLabels::inbound(
            &local,
            &workload("client-x"),
            &DestinationService::unknown(),
            SecurityPolicy::MutualTls,
            ResponseFlags::None,
        ));
        r.byte_counters().add_sent(1);
        r.byte_counters().add_received(2);
        r.close(None);
    }
    let p = Parsed::scrape(&registry);
    let opened = p.find(OPENED, &[]);
    assert_eq!(opened.len(), 1, "{}", p.text);
    assert_eq!(opened[0].value, 2.0);
    assert_eq!(opened[0].label("destination_workload"), None);
    assert_eq!(opened[0].label("role"), Some("client"));
    assert_eq!(opened[0].label("source_app"), Some("client-x"));
    assert_eq!(opened[0].label_names().len(), 23);
    assert_eq!(opened[0].label_names()[22], "role");
    let closed = p.find(CLOSED, &[]);
    assert_eq!((closed.len(), closed[0].label("role")), (1, None));
    assert!(p.find(SENT, &[]).is_empty());
    assert_eq!(p.sum(RECEIVED), 4.0);
}

#[test]
fn types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TcpMetrics>();
    assert_send_sync::<telemetry::ConnectionRecorder>();
    assert_send_sync::<telemetry::ByteCounters>();
    assert_send_sync::<TcpLabels>();
}

#[test]
fn disabled_reports_nothing_and_reenabled_counts_again() {
    let (registry, metrics) = setup();
    assert!(metrics.is_enabled());
    metrics.set_enabled(false);
    assert!(!metrics.is_enabled());

    // Resolved, flushed, closed with flags; and one only dropped.
    let mut r = metrics.recorder(fallback());
    let bytes = r.byte_counters();
    bytes.add_received(11);
    r.resolve(resolved());
    assert!(!r.is_resolved());
    assert_eq!(r.labels(), None);
    assert_eq!(metrics.live_connections(), 0);
    bytes.add_sent(22);
    metrics.flush_all();
    r.close(Some(ResponseFlags::DurationTimeout));
    drop(metrics.recorder(fallback()));
    // The counters still count for access logs.
    assert_eq!((bytes.received(), bytes.sent()), (11, 22));
    let p = Parsed::scrape(&registry);
    assert!(
        !p.samples.iter().any(|s| s.name.starts_with("istio_tcp_")),
        "no istio_tcp series while disabled: {}",
        p.text
    );

    // A connection accepted while on keeps reporting after the switch goes off.
    metrics.set_enabled(true);
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    metrics.set_enabled(false);
    r.byte_counters().add_received(5);
    r.byte_counters().add_sent(6);
    r.close(None);
    assert_eq!(totals(&registry), (1.0, 1.0, 6.0, 5.0));

    // Back on: new connections count again.
    metrics.set_enabled(true);
    let mut r = metrics.recorder(fallback());
    r.resolve(resolved());
    assert!(r.is_resolved());
    r.byte_counters().add_received(1);
    r.close(None);
    assert_eq!(totals(&registry), (2.0, 2.0, 6.0, 6.0));
}

/// Repeat connections of a label set reuse its counters; changing the overrides
/// sends later connections to the new series and leaves earlier ones alone.
#[test]
fn repeat_connections_follow_override_changes() {
    let (registry, metrics) = setup();
    let run = |n: u64| {
        for _ in 0..n {
            let mut r = metrics.recorder(fallback());
            r.resolve(resolved());
            r.byte_counters().add_received(3);
            r.close(None);
        }
    };
    run(3);
    let mut o = TagOverrides::none();
    o.set_tag(
        None,
        "role",
        TagOperation::Upsert(TagValue::Literal("client".into())),
    );
    metrics.set_overrides(o);
    run(2);
    metrics.set_overrides(TagOverrides::none());
    run(1);
    let p = Parsed::scrape(&registry);
    let opened = p.find(OPENED, &[]);
    let mut by_role: Vec<_> = opened
        .iter()
        .map(|s| (s.label("role").map(str::to_owned), s.value))
        .collect();
    by_role.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(by_role, [(None, 4.0), (Some("client".to_owned()), 2.0)]);
    assert_eq!(p.sum(RECEIVED), 18.0);
    assert_eq!(p.sum(CLOSED), 6.0);
}

/// With an override reading pod labels, label sets that print alike but come from
/// workloads with different pod labels still land in their own series.
#[test]
fn pod_label_overrides_are_not_shared_between_equal_label_sets() {
    let (registry, metrics) = setup();
    let mut o = TagOverrides::none();
    o.set_tag(
        Some(TcpMetric::OpenedConnections),
        "role",
        TagOperation::Upsert(TagValue::DestinationLabel("role".into())),
    );
    metrics.set_overrides(o);
    for role in ["a", "b", "a"] {
        let mut server = workload("server");
        server.labels.insert("role".into(), role.into());
        let mut r = metrics.recorder(fallback());
        r.resolve(TcpLabels::outbound(
            &workload("client"),
            &server,
            &DestinationService::from_fqdn("server.default.svc.cluster.local"),
            ResponseFlags::None,
        ));
        r.close(None);
    }
    let p = Parsed::scrape(&registry);
    let mut by_role: Vec<_> = p
        .find(OPENED, &[])
        .iter()
        .map(|s| (s.label("role").map(str::to_owned), s.value))
        .collect();
    by_role.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_role,
        [(Some("a".to_owned()), 2.0), (Some("b".to_owned()), 1.0)]
    );
    assert_eq!(p.find(CLOSED, &[]).len(), 1);
    assert_eq!(p.sum(CLOSED), 3.0);
}
