//! Bad metadata-exchange input against the inbound side, from a raw TLS client that
//! negotiates `istio-peer-exchange` and then writes whatever the test wants.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proxy::config::InboundMode;
use proxy::{Proxy, ProxyHandle, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pair::{eventually_closed, PRODUCTPAGE_SA, RATINGS_SA};
use crate::support::*;

struct Server {
    _ca: TestCa,
    client_dir: std::path::PathBuf,
    handle: ProxyHandle,
    inbound: SocketAddr,
}

async fn server() -> Server {
    let (app, _t) = echo_app().await;
    let ca = TestCa::new("cluster.local");
    let server_dir = ca.workload_dir("ratings", &spiffe("default", RATINGS_SA));
    let client_dir = ca.workload_dir("productpage", &spiffe("default", PRODUCTPAGE_SA));
    let mut cfg = with_inbound(
        with_tls(
            node_config("ratings-v1", "ratings", "v1", RATINGS_SA),
            &server_dir,
        ),
        InboundMode::Strict,
        9080,
        app,
        "ratings",
    );
    cfg.limits.mx_max_frame_bytes = 4096;
    cfg.limits.mx_timeout = Duration::from_millis(300);
    let handle = Proxy::start(cfg, ProxyOptions::default()).await.unwrap();
    let inbound = handle.addrs().inbound_ports[&9080];
    Server {
        _ca: ca,
        client_dir,
        handle,
        inbound,
    }
}

/// Connects with the client workload's certificate, negotiates ALPN and reads the
/// server's frame; returns the stream and the server's metadata.
async fn raw_client(dir: &Path, server: SocketAddr) -> (TlsStream<TcpStream>, mx::PeerMetadata) {
    let certs = proxy::tls::WorkloadCerts::load(dir).unwrap();
    let config = certs.client_config(&spiffe("default", RATINGS_SA)).unwrap();
    let tcp = TcpStream::connect(server).await.unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(proxy::tls::server_name_for(server), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(mx::ALPN_PEER_EXCHANGE)
    );
    let mut decoder = mx::Decoder::new(mx::DEFAULT_MAX_FRAME_LEN);
    let mut byte = [0u8; 1];
    let metadata = loop {
        with_deadline(Duration::from_secs(5), tls.read_exact(&mut byte))
            .await
            .unwrap();
        match decoder.feed(&byte).unwrap() {
            mx::Step::NeedMore => continue,
            mx::Step::Frame { peer, .. } => break peer.into_metadata().unwrap(),
            other => panic!("server sent no frame: {other:?}"),
        }
    };
    (tls, metadata)
}

async fn echo_check(tls: &mut TlsStream<TcpStream>, data: &[u8]) {
    let mut back = vec![0; data.len()];
    with_deadline(Duration::from_secs(5), tls.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, data);
}

async fn expect_closed(mut tls: TlsStream<TcpStream>) {
    let mut rest = Vec::new();
    let r = with_deadline(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        r.is_err() || rest.is_empty(),
        "expected a close, got {rest:?}"
    );
}

fn frame_header(len: u32) -> Vec<u8> {
    let mut h = mx::MAGIC.to_be_bytes().to_vec();
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn source_of(samples: &[Sample]) -> BTreeMap<String, String> {
    let s = series(samples, "istio_tcp_connections_closed_total");
    assert_eq!(s.len(), 1, "{s:#?}");
    s[0].labels.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sends_its_metadata_and_accepts_a_frame_split_byte_by_byte() {
    let s = server().await;
    let (mut tls, server_meta) = raw_client(&s.client_dir, s.inbound).await;
    assert_eq!(server_meta.workload_name, "ratings-v1");
    assert_eq!(server_meta.labels["app"], "ratings");
    assert_eq!(
        server_meta.labels["service.istio.io/canonical-revision"],
        "v1"
    );
    let mut labels = BTreeMap::new();
    labels.insert("app".to_owned(), "reviews".to_owned());
    labels.insert("version".to_owned(), "v3".to_owned());
    let meta = mx::PeerMetadata::for_deployment("default", "reviews-v3", "reviews-v3-abc", labels);
    let mut bytes = mx::encode_frame(&meta, None);
    bytes.extend_from_slice(b"app-bytes");
    for b in &bytes {
        tls.write_all(&[*b]).await.unwrap();
        tls.flush().await.unwrap();
    }
    echo_check(&mut tls, b"app-bytes").await;
    drop(tls);
    let samples = eventually_closed(s.handle.addrs().stats, 1.0).await;
    let l = source_of(&samples);
    assert_eq!(l["source_workload"], "reviews-v3");
    assert_eq!(l["source_canonical_revision"], "v3");
    assert_eq!(l["source_principal"], spiffe("default", PRODUCTPAGE_SA));
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 9.0);
    assert_eq!(value(&samples, "istio_tcp_sent_bytes_total", &[]), 9.0);
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_magic_passes_through_with_unknown_peer() {
    let s = server().await;
    let (mut tls, _) = raw_client(&s.client_dir, s.inbound).await;
    // Starts like the magic (0x3D) and then differs: every byte must still arrive.
    tls.write_all(b"=#plain bytes").await.unwrap();
    echo_check(&mut tls, b"=#plain bytes").await;
    drop(tls);
    let samples = eventually_closed(s.handle.addrs().stats, 1.0).await;
    let l = source_of(&samples);
    assert_eq!(l["source_workload"], "unknown");
    assert_eq!(l["source_principal"], spiffe("default", PRODUCTPAGE_SA));
    assert_eq!(l["connection_security_policy"], "mutual_tls");
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 13.0);
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_payload_is_consumed_and_peer_unknown() {
    let s = server().await;
    let (mut tls, _) = raw_client(&s.client_dir, s.inbound).await;
    let mut bytes = frame_header(5);
    bytes.extend_from_slice(&[0xff, 0x01, 0x02, 0x03, 0x04]);
    bytes.extend_from_slice(b"after");
    tls.write_all(&bytes).await.unwrap();
    echo_check(&mut tls, b"after").await;
    drop(tls);
    let samples = eventually_closed(s.handle.addrs().stats, 1.0).await;
    assert_eq!(source_of(&samples)["source_workload"], "unknown");
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 5.0);
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_frames_close_only_their_connection() {
    let s = server().await;
    // A healthy connection stays open across both failures.
    let (mut healthy, _) = raw_client(&s.client_dir, s.inbound).await;
    healthy.write_all(b"not a frame").await.unwrap();
    echo_check(&mut healthy, b"not a frame").await;

    let (mut big, _) = raw_client(&s.client_dir, s.inbound).await;
    big.write_all(&frame_header(1 << 20)).await.unwrap();
    expect_closed(big).await;

    let (mut stalled, _) = raw_client(&s.client_dir, s.inbound).await;
    let mut partial = frame_header(100);
    partial.extend_from_slice(&[0; 10]);
    stalled.write_all(&partial).await.unwrap();
    stalled.flush().await.unwrap();
    expect_closed(stalled).await;

    healthy.write_all(b" still here").await.unwrap();
    echo_check(&mut healthy, b" still here").await;
    let (mut fresh, _) = raw_client(&s.client_dir, s.inbound).await;
    fresh.write_all(b"new").await.unwrap();
    echo_check(&mut fresh, b"new").await;
    assert_eq!(s.handle.live_connections(), 2);
    drop((healthy, fresh));
    eventually_closed(s.handle.addrs().stats, 4.0).await;
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_peer_is_reported_unknown_and_its_late_frame_is_still_stripped() {
    let s = server().await;
    let (mut tls, server_metadata) = raw_client(&s.client_dir, s.inbound).await;
    // Nothing within the exchange's time limit (300 ms): the connection is reported
    // with an unknown peer, and reading goes on.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut late = mx::encode_frame(&server_metadata, None);
    late.extend_from_slice(b"late data");
    tls.write_all(&late).await.unwrap();
    echo_check(&mut tls, b"late data").await;
    drop(tls);
    let samples = eventually_closed(s.handle.addrs().stats, 1.0).await;
    // The labels were fixed when the time limit passed, so the late frame's workload
    // does not appear; its bytes are not application data.
    assert_eq!(source_of(&samples)["source_workload"], "unknown");
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 9.0);
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_magic_then_silence_is_forwarded_as_application_data() {
    let s = server().await;
    let (mut tls, _) = raw_client(&s.client_dir, s.inbound).await;
    let magic = mx::MAGIC.to_be_bytes();
    tls.write_all(&magic[..2]).await.unwrap();
    tls.flush().await.unwrap();
    // After the time limit the two bytes are data, not a frame: they reach the app.
    echo_check(&mut tls, &magic[..2]).await;
    tls.write_all(b" and more").await.unwrap();
    echo_check(&mut tls, b" and more").await;
    drop(tls);
    let samples = eventually_closed(s.handle.addrs().stats, 1.0).await;
    assert_eq!(source_of(&samples)["source_workload"], "unknown");
    assert_eq!(value(&samples, "istio_tcp_received_bytes_total", &[]), 11.0);
    s.handle.shutdown().await;
}
