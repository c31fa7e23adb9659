//! Certificate reload, readiness, admin endpoints and draining on shutdown.

use std::time::Duration;

use proxy::config::InboundMode;
use proxy::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pair::{start_pair, PRODUCTPAGE_SA, RATINGS_SA};
use crate::support::*;

/// The leaf certificate the server presents to a fresh handshake.
async fn presented_leaf(client_dir: &std::path::Path, server: std::net::SocketAddr) -> Vec<u8> {
    let certs = proxy::tls::WorkloadCerts::load(client_dir).unwrap();
    let config = certs.client_config(&spiffe("default", RATINGS_SA)).unwrap();
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = with_deadline(
        Duration::from_secs(5),
        TlsConnector::from(config).connect(proxy::tls::server_name_for(server), tcp),
    )
    .await
    .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn leaf_on_disk(dir: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(dir.join("cert-chain.pem")).unwrap();
    rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_are_used_by_new_handshakes() {
    let (app, _t) = echo_app().await;
    let pair = start_pair(app, InboundMode::Strict).await;
    let server_dir = pair.ca.dir.path().join("ratings");
    let client_dir = pair.ca.dir.path().join("productpage");
    let inbound = pair.server.addrs().inbound_ports[&9080];
    let before = leaf_on_disk(&server_dir);
    assert_eq!(presented_leaf(&client_dir, inbound).await, before);

    // A long-lived connection made with the old certificate keeps working.
    let outbound = pair
        .client
        .addrs()
        .outbound_service("ratings", "default", 9080)
        .unwrap();
    let mut old = TcpStream::connect(outbound).await.unwrap();
    old.write_all(b"old").await.unwrap();
    let mut buf = [0; 3];
    with_deadline(Duration::from_secs(5), old.read_exact(&mut buf))
        .await
        .unwrap();

    pair.ca
        .write_workload(&server_dir, &spiffe("default", RATINGS_SA));
    let after = leaf_on_disk(&server_dir);
    assert_ne!(before, after);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented_leaf(&client_dir, inbound).await != after {
        assert!(
            tokio::time::Instant::now() < end,
            "new certificate never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let samples = scrape(pair.server.addrs().stats).await;
    assert!(value(&samples, "weir_proxy_certificate_reloads_total", &[]) >= 1.0);

    old.write_all(b"old").await.unwrap();
    with_deadline(Duration::from_secs(5), old.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"old");
    // A broken replacement keeps the last good certificate in use.
    std::fs::write(server_dir.join("key.pem"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presented_leaf(&client_dir, inbound).await, after);
    drop(old);
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_cuts_and_flushes_metrics() {
    let (app, _t) = echo_app().await;
    let pair = start_pair(app, InboundMode::Strict).await;
    let addrs = pair.client.addrs().clone();
    let outbound = addrs.outbound_service("ratings", "default", 9080).unwrap();
    let (status, _) = http_get(addrs.readiness, "/healthz/ready").await;
    assert_eq!(status, 200);

    // One connection ends during the drain, one outlives the deadline (2 s).
    let mut short = TcpStream::connect(outbound).await.unwrap();
    let mut long = TcpStream::connect(outbound).await.unwrap();
    for s in [&mut short, &mut long] {
        s.write_all(b"12345").await.unwrap();
        let mut b = [0; 5];
        with_deadline(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap();
    }
    let shutdown = tokio::spawn(pair.client.shutdown());
    // Readiness turns to 503 while draining.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while http_get(addrs.readiness, "/healthz/ready").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < end,
            "still ready while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    short.write_all(b"bye").await.unwrap();
    let mut b = [0; 3];
    with_deadline(Duration::from_secs(5), short.read_exact(&mut b))
        .await
        .unwrap();
    drop(short);
    let report = with_deadline(Duration::from_secs(10), shutdown)
        .await
        .unwrap();
    assert_eq!(report.cut_connections, 1);
    let samples = parse_exposition(&report.final_metrics);
    assert_eq!(
        value(&samples, "istio_tcp_connections_opened_total", &[]),
        2.0
    );
    assert_eq!(
        value(&samples, "istio_tcp_connections_closed_total", &[]),
        2.0
    );
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 13.0);
    assert_eq!(value(&samples, "istio_tcp_sent_bytes_total", &[]), 13.0);
    // The cut connection is closed toward the client.
    let mut rest = Vec::new();
    let r = with_deadline(Duration::from_secs(5), long.read_to_end(&mut rest)).await;
    assert!(r.is_err() || rest.is_empty());
    // The listeners and endpoints are gone with the proxy.
    assert!(TcpStream::connect(outbound).await.is_err());
    assert!(TcpStream::connect(addrs.stats).await.is_err());
    pair.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let (app, _t) = echo_app().await;
    let pair = start_pair(app, InboundMode::Strict).await;
    let admin = pair.client.addrs().admin;
    let (status, body) = http_get(admin, "/config_dump").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["identity"], spiffe("default", PRODUCTPAGE_SA));
    assert_eq!(v["metadata"]["WORKLOAD_NAME"], "productpage-v1");
    assert_eq!(v["config"]["node"]["workloadName"], "productpage-v1");
    assert_eq!(v["config"]["reporting"]["interval"], "200ms");
    let (status, body) = http_request(admin, "POST", "/logging?level=debug").await;
    assert_eq!(status, 501, "{body}");
    let (status, body) = http_get(admin, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE weir_proxy_live_connections gauge"),
        "{body}"
    );
    let quit = pair.client.shutdown_requested();
    assert!(!quit.is_cancelled());
    let (status, _) = http_request(admin, "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    assert!(quit.is_cancelled());
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_through_the_setter() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let options = ProxyOptions {
        log_level: Some(std::sync::Arc::new(move |l: &str| {
            if l == "bogus" {
                return Err("invalid filter".into());
            }
            s2.lock().unwrap().push(l.to_owned());
            Ok(l.to_owned())
        })),
    };
    let cfg = node_config("productpage-v1", "productpage", "v1", PRODUCTPAGE_SA);
    let p = Proxy::start(cfg, options).await.unwrap();
    let (status, _) = http_request(p.addrs().admin, "POST", "/logging?level=debug").await;
    assert_eq!(status, 200);
    let (status, body) = http_request(p.addrs().admin, "POST", "/logging?level=bogus").await;
    assert_eq!((status, body.as_str()), (400, "invalid filter\n"));
    let (status, _) = http_request(p.addrs().admin, "POST", "/logging").await;
    assert_eq!(status, 400);
    assert_eq!(*seen.lock().unwrap(), vec!["debug".to_owned()]);
    p.shutdown().await;
}
