//! Hot-path costs: byte accounting, a reporting flush over 10,000 live connections,
//! resolving a connection, and encoding 10,000 series.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use telemetry::{
    encode, DestinationService, Format, Registry, ResponseFlags, SecurityPolicy, TcpLabels,
    TcpMetrics, Workload,
};

#[path = "support/labels.rs"]
mod support;
use support::workload;

/// A connection to ratings-v1 from `peer`.
fn labels(peer: &str) -> TcpLabels {
    support::labels(&workload("ratings-v1"), peer)
}

fn byte_accounting(c: &mut Criterion) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let mut r = metrics.recorder(labels("productpage-v1"));
    r.resolve(labels("productpage-v1"));
    let bytes = r.byte_counters();
    c.bench_function("add_received", |b| {
        b.iter(|| bytes.add_received(black_box(16384)))
    });
}

fn flush_10k(c: &mut Criterion) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let conns: Vec<_> = (0..10_000)
        .map(|i| {
            let l = labels(&format!("client-{}", i % 100));
            let mut r = metrics.recorder(l.clone());
            r.resolve(l);
            r
        })
        .collect();
    let counters: Vec<_> = conns.iter().map(|r| r.byte_counters()).collect();
    c.bench_function("flush_all/10k_live", |b| {
        b.iter(|| {
            for c in &counters {
                c.add_received(1);
            }
            metrics.flush_all();
        })
    });
    drop(conns);
}

fn open_resolve_close(c: &mut Criterion) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let l = labels("productpage-v1");
    c.bench_function("connection/resolve_close", |b| {
        b.iter_batched(
            || l.clone(),
            |l| {
                let mut r = metrics.recorder(l.clone());
                r.resolve(l);
                r.byte_counters().add_sent(1);
                r.close(None);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("labels/build", |b| {
        let (local, peer) = (workload("ratings-v1"), workload("productpage-v1"));
        let svc = DestinationService::from_fqdn("ratings.default.svc.cluster.local");
        b.iter(|| {
            TcpLabels::inbound(
                &local,
                &peer,
                &svc,
                SecurityPolicy::MutualTls,
                ResponseFlags::None,
            )
        })
    });
}

/// What the proxy does per connection of a route whose series already exist: build
/// the fallback labels (peer unknown), open, build the resolved labels, resolve, count
/// bytes, close.
fn connection_lifecycle(c: &mut Criterion) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let local = workload("ratings-v1");
    let peer = workload("productpage-v1");
    let unknown_peer = Workload {
        principal: peer.principal.clone(),
        ..Workload::unknown()
    };
    let svc = DestinationService::from_fqdn("ratings.default.svc.cluster.local");
    let policy = SecurityPolicy::MutualTls;
    let lifecycle = || {
        let fallback = TcpLabels::inbound(&local, &unknown_peer, &svc, policy, ResponseFlags::None);
        let mut r = metrics.recorder(fallback);
        let bytes = r.byte_counters();
        r.resolve(TcpLabels::inbound(
            &local,
            &peer,
            &svc,
            policy,
            ResponseFlags::None,
        ));
        bytes.add_received(black_box(6));
        bytes.add_sent(black_box(12));
        r.close(Some(ResponseFlags::None));
    };
    lifecycle();
    c.bench_function("connection_lifecycle/existing_series", |b| {
        b.iter(lifecycle)
    });
}

fn encode_10k_series(c: &mut Criterion) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    // 2,500 distinct peers × 4 families = 10,000 series.
    for i in 0..2_500 {
        let l = labels(&format!("client-{i}"));
        metrics.recorder(l).close(None);
    }
    c.bench_function("encode/10k_series/prometheus_text", |b| {
        b.iter(|| encode(&registry, Format::PrometheusText).map(|s| s.len()))
    });
    c.bench_function("encode/10k_series/openmetrics", |b| {
        b.iter(|| encode(&registry, Format::OpenMetrics).map(|s| s.len()))
    });
}

criterion_group!(
    benches,
    byte_accounting,
    flush_10k,
    open_resolve_close,
    connection_lifecycle,
    encode_10k_series
);
criterion_main!(benches);
