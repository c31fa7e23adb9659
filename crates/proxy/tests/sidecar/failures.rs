//! Failures and policies: connect failures and their response flags, retries, mTLS
//! identity checks, STRICT and PERMISSIVE inbound.

use std::time::Duration;

use proxy::config::InboundMode;
use proxy::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pair::{eventually_closed, start_pair, PRODUCTPAGE_SA, RATINGS_SA};
use crate::support::*;

/// A loopback address nothing listens on.
async fn refused_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind(loopback0()).await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Connects through `addr` and expects the proxy to close without data.
async fn expect_closed(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = Vec::new();
    let r = with_deadline(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_err() || buf.is_empty(),
        "expected a close, got {buf:?}"
    );
}

async fn flags_of_closed(stats: std::net::SocketAddr) -> String {
    let samples = eventually_closed(stats, 1.0).await;
    let s = series(&samples, "istio_tcp_connections_closed_total");
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(
        value(&samples, "istio_tcp_connections_opened_total", &[]),
        1.0,
        "opened counted once with the close"
    );
    s[0].labels["response_flags"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_uf_and_retry_exhaustion_is_urx() {
    let cfg = node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA);
    let one = with_service(
        cfg.clone(),
        "down",
        80,
        vec![plain_endpoint(refused_addr().await)],
    );
    let p = Proxy::start(one, ProxyOptions::default()).await.unwrap();
    expect_closed(p.addrs().outbound_service("down", "default", 80).unwrap()).await;
    assert_eq!(flags_of_closed(p.addrs().stats).await, "UF");
    p.shutdown().await;

    let two = with_service(
        cfg,
        "down",
        80,
        vec![
            plain_endpoint(refused_addr().await),
            plain_endpoint(refused_addr().await),
        ],
    );
    let p = Proxy::start(two, ProxyOptions::default()).await.unwrap();
    expect_closed(p.addrs().outbound_service("down", "default", 80).unwrap()).await;
    assert_eq!(flags_of_closed(p.addrs().stats).await, "URX");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_uh() {
    let cfg = with_service(
        node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
        "empty",
        80,
        vec![],
    );
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    expect_closed(p.addrs().outbound_service("empty", "default", 80).unwrap()).await;
    assert_eq!(flags_of_closed(p.addrs().stats).await, "UH");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connection_to_the_capture_port_is_nc() {
    // Without capture rules there is no original destination: forwarding would loop
    // back into the proxy, so the connection has no route.
    let mut cfg = node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA);
    cfg.outbound.listen = Some(loopback0());
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    expect_closed(p.addrs().outbound.unwrap()).await;
    assert_eq!(flags_of_closed(p.addrs().stats).await, "NC");
    let samples = scrape(p.addrs().stats).await;
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_closed_total",
            &[("destination_service", "BlackHoleCluster")]
        ),
        1.0
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_endpoint_is_retried_on_the_next_and_round_robin_alternates() {
    const RESPONSE: usize = 10;
    let (a, _ta) = hash_app(RESPONSE).await;
    let (b, _tb) = hash_app(RESPONSE).await;
    let cfg = node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA);
    let retry = with_service(
        cfg.clone(),
        "flaky",
        80,
        vec![plain_endpoint(refused_addr().await), plain_endpoint(a)],
    );
    let p = Proxy::start(retry, ProxyOptions::default()).await.unwrap();
    let addr = p.addrs().outbound_service("flaky", "default", 80).unwrap();
    for i in 0..4 {
        hash_round_trip(addr, &pattern(100 + i), RESPONSE).await;
    }
    let samples = eventually_closed(p.addrs().stats, 4.0).await;
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_closed_total",
            &[("response_flags", "-")]
        ),
        4.0
    );
    p.shutdown().await;

    // Two healthy endpoints: connections alternate.
    let rr = with_service(cfg, "pair", 80, vec![plain_endpoint(a), plain_endpoint(b)]);
    let p = Proxy::start(rr, ProxyOptions::default()).await.unwrap();
    let addr = p.addrs().outbound_service("pair", "default", 80).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let s = TcpStream::connect(addr).await.unwrap();
        let (status, body) = {
            // Wait until the proxy has connected upstream, then read where it went.
            let admin = p.addrs().admin;
            let end = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let (status, body) = http_get(admin, "/connections").await;
                if body.contains("\"upstream\": \"127.") {
                    break (status, body);
                }
                assert!(tokio::time::Instant::now() < end, "{body}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        seen.push(v["connections"][0]["upstream"].as_str().unwrap().to_owned());
        drop(s);
        let _ = eventually_closed(p.addrs().stats, seen.len() as f64).await;
    }
    let (a, b) = (a.to_string(), b.to_string());
    assert_eq!(seen, vec![a.clone(), b.clone(), a, b]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_identity_fails_the_handshake_with_uf() {
    let (app, _t) = echo_app().await;
    let ca = TestCa::new("cluster.local");
    let server_dir = ca.workload_dir("ratings", &spiffe("default", RATINGS_SA));
    let client_dir = ca.workload_dir("productpage", &spiffe("default", PRODUCTPAGE_SA));
    let server = Proxy::start(
        with_inbound(
            with_tls(
                node_config("ratings-v1", "ratings", "v1", RATINGS_SA),
                &server_dir,
            ),
            InboundMode::Strict,
            9080,
            app,
            "ratings",
        ),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    let inbound = server.addrs().inbound_ports[&9080];
    let client = Proxy::start(
        with_service(
            with_tls(
                node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
                &client_dir,
            ),
            "ratings",
            9080,
            vec![mtls_endpoint(
                inbound,
                &spiffe("default", "impostor-expected"),
            )],
        ),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    expect_closed(
        client
            .addrs()
            .outbound_service("ratings", "default", 9080)
            .unwrap(),
    )
    .await;
    assert_eq!(flags_of_closed(client.addrs().stats).await, "UF");
    let samples = scrape(client.addrs().stats).await;
    assert_eq!(
        value(
            &samples,
            "weir_proxy_tls_handshake_failures_total",
            &[("direction", "outbound")]
        ),
        1.0
    );
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_permissive_accepts_both() {
    let (app, _t) = echo_app().await;
    let strict = start_pair(app, InboundMode::Strict).await;
    let inbound = strict.server.addrs().inbound_ports[&9080];
    expect_closed(inbound).await;
    let samples = scrape(strict.server.addrs().stats).await;
    assert_eq!(
        value(
            &samples,
            "weir_proxy_connections_refused_total",
            &[("reason", "plaintext_in_strict")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "istio_tcp_connections_opened_total", &[]),
        0.0
    );
    strict.client.shutdown().await;
    strict.server.shutdown().await;

    let permissive = start_pair(app, InboundMode::Permissive).await;
    let inbound = permissive.server.addrs().inbound_ports[&9080];
    // Plaintext straight to the inbound listener.
    let mut s = TcpStream::connect(inbound).await.unwrap();
    s.write_all(b"plain").await.unwrap();
    let mut back = [0; 5];
    with_deadline(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"plain");
    drop(s);
    // And mTLS through the client sidecar.
    let outbound = permissive
        .client
        .addrs()
        .outbound_service("ratings", "default", 9080)
        .unwrap();
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(b"secure").await.unwrap();
    let mut back = [0; 6];
    with_deadline(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"secure");
    drop(s);
    let samples = eventually_closed(permissive.server.addrs().stats, 2.0).await;
    let plain = [
        ("connection_security_policy", "none"),
        ("source_workload", "unknown"),
        ("source_principal", "unknown"),
    ];
    assert_eq!(
        value(&samples, "istio_tcp_received_bytes_total", &plain),
        5.0
    );
    let mtls = [
        ("connection_security_policy", "mutual_tls"),
        ("source_workload", "productpage-v1"),
    ];
    assert_eq!(
        value(&samples, "istio_tcp_received_bytes_total", &mtls),
        6.0
    );
    permissive.client.shutdown().await;
    permissive.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_uo_and_max_duration_is_dt() {
    let (app, _t) = echo_app().await;
    let mut cfg = with_service(
        node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
        "echo",
        80,
        vec![plain_endpoint(app)],
    );
    cfg.limits.max_connections = Some(1);
    cfg.limits.max_connection_duration = Some(Duration::from_millis(500));
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let addr = p.addrs().outbound_service("echo", "default", 80).unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"x").await.unwrap();
    let mut b = [0; 1];
    with_deadline(Duration::from_secs(5), first.read_exact(&mut b))
        .await
        .unwrap();
    // The only slot is taken: the second connection overflows.
    expect_closed(addr).await;
    // The first one is cut at its maximum duration.
    let mut rest = Vec::new();
    let r = with_deadline(Duration::from_secs(5), first.read_to_end(&mut rest)).await;
    assert!(r.is_err() || rest.is_empty());
    let samples = eventually_closed(p.addrs().stats, 2.0).await;
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_closed_total",
            &[("response_flags", "UO")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_closed_total",
            &[("response_flags", "DT")]
        ),
        1.0
    );
    // Opened stays with the series the connection resolved to.
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_opened_total",
            &[("response_flags", "-")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "istio_tcp_connections_opened_total",
            &[("response_flags", "UO")]
        ),
        1.0
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_treats_a_silent_plaintext_client_as_plaintext() {
    // A server-first protocol in plaintext: the client waits for the greeting.
    let (app, _t) = greeting_app(b"greeting").await;
    let mut cfg = with_inbound(
        node_config("mysqldb-v1", "mysqldb", "v1", "mysqldb"),
        InboundMode::Disable,
        3306,
        app,
        "mysqldb",
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster.local");
    ca.write_workload(dir.path(), &spiffe("default", "mysqldb"));
    cfg = with_tls(cfg, dir.path());
    cfg.inbound.mode = InboundMode::Permissive;
    cfg.limits.protocol_detection_timeout = Duration::from_millis(200);
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let mut s = TcpStream::connect(p.addrs().inbound_ports[&3306])
        .await
        .unwrap();
    let mut greeting = [0; 8];
    with_deadline(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(&greeting, b"greeting");
    drop(s);
    let samples = eventually_closed(p.addrs().stats, 1.0).await;
    assert_eq!(
        value(
            &samples,
            "istio_tcp_sent_bytes_total",
            &[("connection_security_policy", "none")]
        ),
        8.0
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let (app, _t) = echo_app().await;
    let mut cfg = with_service(
        node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA),
        "echo",
        80,
        vec![plain_endpoint(app)],
    );
    cfg.limits.idle_timeout = Some(Duration::from_millis(300));
    let p = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let mut s = TcpStream::connect(p.addrs().outbound_service("echo", "default", 80).unwrap())
        .await
        .unwrap();
    // Activity keeps it open past the timeout.
    for _ in 0..5 {
        s.write_all(b"x").await.unwrap();
        let mut b = [0; 1];
        with_deadline(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence closes it.
    let mut rest = Vec::new();
    let r = with_deadline(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_err() || rest.is_empty());
    let samples = eventually_closed(p.addrs().stats, 1.0).await;
    assert_eq!(
        value(
            &samples,
            "istio_tcp_received_bytes_total",
            &[("response_flags", "-")]
        ),
        5.0
    );
    p.shutdown().await;
}
