//! A client sidecar and a server sidecar on loopback, with mTLS and metadata exchange.

use std::collections::BTreeMap;
use std::time::Duration;

use proxy::config::InboundMode;
use proxy::{Proxy, ProxyHandle, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

pub struct Pair {
    pub ca: TestCa,
    pub client: ProxyHandle,
    pub server: ProxyHandle,
}

pub const RATINGS_SA: &str = "bookinfo-ratings";
pub const PRODUCTPAGE_SA: &str = "bookinfo-productpage";

/// productpage-v1 (client sidecar, explicit outbound listener for ratings:9080) →
/// mTLS + MX → ratings-v1 (server sidecar, explicit STRICT inbound) → `app`.
pub async fn start_pair(app: std::net::SocketAddr, mode: InboundMode) -> Pair {
    let ca = TestCa::new("cluster.local");
    let server_dir = ca.workload_dir("ratings", &spiffe("default", RATINGS_SA));
    let client_dir = ca.workload_dir("productpage", &spiffe("default", PRODUCTPAGE_SA));
    let server_cfg = with_inbound(
        with_tls(
            node_config("ratings-v1", "ratings", "v1", RATINGS_SA),
            &server_dir,
        ),
        mode,
        9080,
        app,
        "ratings",
    );
    let server = Proxy::start(server_cfg, ProxyOptions::default())
        .await
        .unwrap();
    let inbound = server.addrs().inbound_ports[&9080];
    let client_cfg = with_service(
        with_tls(
            node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
            &client_dir,
        ),
        "ratings",
        9080,
        vec![mtls_endpoint(inbound, &spiffe("default", RATINGS_SA))],
    );
    let client = Proxy::start(client_cfg, ProxyOptions::default())
        .await
        .unwrap();
    Pair { ca, client, server }
}

fn expected_labels(reporter: &str, policy: &str) -> BTreeMap<String, String> {
    [
        ("reporter", reporter),
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "default"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "default"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
        ),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_service", "ratings.default.svc.cluster.local"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_service_name", "ratings"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", policy),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Exactly one series per family with exactly `labels`, holding `values`.
fn assert_series(samples: &[Sample], labels: &BTreeMap<String, String>, values: [(&str, f64); 4]) {
    for (name, v) in values {
        let s = series(samples, name);
        assert_eq!(s.len(), 1, "{name}: {s:#?}");
        assert_eq!(&s[0].labels, labels, "{name} labels");
        assert_eq!(s[0].value, v, "{name} value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_pair_moves_bytes_intact_with_half_close_and_exact_metrics() {
    const REQUEST: usize = 3 * 1024 * 1024 + 7;
    const RESPONSE: usize = 2 * 1024 * 1024 + 3;
    let (app, _app_task) = hash_app(RESPONSE).await;
    let pair = start_pair(app, InboundMode::Strict).await;
    let outbound = pair
        .client
        .addrs()
        .outbound_service("ratings", "default", 9080)
        .unwrap();

    hash_round_trip(outbound, &pattern(REQUEST), RESPONSE).await;

    let received = REQUEST as f64;
    let sent = (32 + RESPONSE) as f64;
    for (handle, reporter, policy) in [
        (&pair.client, "source", "unknown"),
        (&pair.server, "destination", "mutual_tls"),
    ] {
        let stats = handle.addrs().stats;
        let closed = eventually_closed(stats, 1.0).await;
        assert_series(
            &closed,
            &expected_labels(reporter, policy),
            [
                ("istio_tcp_connections_opened_total", 1.0),
                ("istio_tcp_connections_closed_total", 1.0),
                ("istio_tcp_received_bytes_total", received),
                ("istio_tcp_sent_bytes_total", sent),
            ],
        );
    }
    assert_eq!(pair.client.live_connections(), 0);
    assert_eq!(pair.server.live_connections(), 0);
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

/// Scrapes until the closed counter reaches `n`.
pub async fn eventually_closed(stats: std::net::SocketAddr, n: f64) -> Vec<Sample> {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(stats).await;
        let closed: f64 = series(&samples, "istio_tcp_connections_closed_total")
            .iter()
            .map(|s| s.value)
            .sum();
        if closed >= n {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "closed connections never reached {n}: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connection_is_reported_within_one_interval() {
    let (app, _app_task) = echo_app().await;
    let pair = start_pair(app, InboundMode::Strict).await;
    let outbound = pair
        .client
        .addrs()
        .outbound_service("ratings", "default", 9080)
        .unwrap();
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(&[7u8; 1000]).await.unwrap();
    let mut back = vec![0; 1000];
    with_deadline(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, vec![7u8; 1000]);

    // Reporting interval is 200 ms: the open connection's bytes appear without a close.
    for handle in [&pair.client, &pair.server] {
        let stats = handle.addrs().stats;
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let samples = scrape(stats).await;
            let rx = value(&samples, "istio_tcp_received_bytes_total", &[]);
            let tx = value(&samples, "istio_tcp_sent_bytes_total", &[]);
            if rx == 1000.0 && tx == 1000.0 {
                assert_eq!(
                    value(&samples, "istio_tcp_connections_opened_total", &[]),
                    1.0
                );
                assert_eq!(
                    value(&samples, "istio_tcp_connections_closed_total", &[]),
                    0.0
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "live bytes not reported: {samples:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The admin endpoint lists the connection with the verified peer and its bytes.
    let (status, body) = http_get(pair.server.addrs().admin, "/connections").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{body}");
    assert_eq!(
        conns[0]["peer"]["identity"],
        spiffe("default", PRODUCTPAGE_SA)
    );
    assert_eq!(conns[0]["peer"]["workload"], "productpage-v1");
    assert_eq!(conns[0]["received_bytes"], 1000);
    assert_eq!(conns[0]["sent_bytes"], 1000);
    drop(s);
    eventually_closed(pair.client.addrs().stats, 1.0).await;
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_works_through_the_pair() {
    let (app, _app_task) = greeting_app(b"5.5.5-10.11-MariaDB greeting").await;
    let pair = start_pair(app, InboundMode::Permissive).await;
    let outbound = pair
        .client
        .addrs()
        .outbound_service("ratings", "default", 9080)
        .unwrap();
    let mut s = TcpStream::connect(outbound).await.unwrap();
    let mut greeting = vec![0; 28];
    with_deadline(Duration::from_secs(10), s.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(&greeting, b"5.5.5-10.11-MariaDB greeting");
    s.write_all(b"query").await.unwrap();
    let mut answer = [0; 5];
    with_deadline(Duration::from_secs(10), s.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"query");
    drop(s);
    let samples = eventually_closed(pair.server.addrs().stats, 1.0).await;
    let m = [
        ("destination_workload", "ratings-v1"),
        ("source_workload", "productpage-v1"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &m), 5.0);
    assert_eq!(value(&samples, "istio_tcp_sent_bytes_total", &m), 33.0);
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_peer_without_sidecar_has_unknown_peer_labels() {
    const RESPONSE: usize = 100_000;
    let (app, _app_task) = hash_app(RESPONSE).await;
    let cfg = with_service(
        node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
        "legacy",
        8080,
        vec![plain_endpoint(app)],
    );
    let client = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let outbound = client
        .addrs()
        .outbound_service("legacy", "default", 8080)
        .unwrap();
    hash_round_trip(outbound, &pattern(250_000), RESPONSE).await;
    let samples = eventually_closed(client.addrs().stats, 1.0).await;
    let s = series(&samples, "istio_tcp_connections_closed_total");
    assert_eq!(s.len(), 1);
    let l = &s[0].labels;
    assert_eq!(l["reporter"], "source");
    assert_eq!(l["source_workload"], "productpage-v1");
    assert_eq!(l["source_principal"], "unknown");
    assert_eq!(l["destination_workload"], "unknown");
    assert_eq!(l["destination_principal"], "unknown");
    assert_eq!(l["destination_canonical_service"], "unknown");
    assert_eq!(l["destination_canonical_revision"], "latest");
    assert_eq!(l["destination_service"], "legacy.default.svc.cluster.local");
    assert_eq!(l["response_flags"], "-");
    assert_eq!(
        value(&samples, "istio_tcp_received_bytes_total", &[]),
        250_000.0
    );
    assert_eq!(
        value(&samples, "istio_tcp_sent_bytes_total", &[]),
        (32 + RESPONSE) as f64
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_explicit_listener_reaches_its_own_service() {
    let (a, _ta) = greeting_app(b"service-a").await;
    let (b, _tb) = greeting_app(b"service-b").await;
    let cfg = node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA);
    let cfg = with_service(cfg, "alpha", 80, vec![plain_endpoint(a)]);
    let cfg = with_service(cfg, "beta", 80, vec![plain_endpoint(b)]);
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    for (name, greeting) in [("alpha", b"service-a"), ("beta", b"service-b")] {
        let addr = p.addrs().outbound_service(name, "default", 80).unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut got = [0; 9];
        with_deadline(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, greeting, "{name}");
    }
    p.shutdown().await;
}
