use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;

use super::*;
use crate::copy::tests::ShortIo;

fn node() -> NodeConfig {
    let mut c = crate::config::ProxyConfig::minimal("default", "reviews-v3");
    c.node.pod_name = Some("reviews-v3-7d4b".into());
    c.node.ip = Some("10.44.0.7".parse().unwrap());
    c.node.labels = BTreeMap::from([
        ("app".to_owned(), "reviews".to_owned()),
        ("version".to_owned(), "v3".to_owned()),
    ]);
    c.node
}

fn peer_frame() -> (PeerMetadata, Vec<u8>) {
    let meta = PeerMetadata::for_deployment(
        "default",
        "ratings-v2-mysql",
        "ratings-v2-mysql-1",
        BTreeMap::from([("version".to_owned(), "v2-mysql".to_owned())]),
    );
    let frame = mx::encode_frame(&meta, None);
    (meta, frame)
}

/// Feeds `input` through a short-I/O pipe and reads the front of it.
async fn read_front(input: Vec<u8>, close: bool) -> (Result<PeerFrame, ExchangeError>, usize) {
    let (mut w, r) = tokio::io::duplex(64);
    let mut reader = ShortIo::new(r, 3);
    let feed = async move {
        w.write_all(&input).await.unwrap();
        if close {
            w.shutdown().await.unwrap();
        }
        // Keep the writer alive so only the reader decides when this ends.
        std::future::pending::<()>().await;
    };
    let quiet = AtomicUsize::new(0);
    let mut on_quiet = || {
        quiet.fetch_add(1, Ordering::Relaxed);
    };
    let read = read_peer_frame(&mut reader, 4096, Duration::from_secs(5), &mut on_quiet);
    let result = tokio::select! {
        r = read => r,
        _ = feed => unreachable!(),
    };
    (result, quiet.load(Ordering::Relaxed))
}

#[tokio::test]
async fn local_node_adds_canonical_labels_and_node_id() {
    let local = LocalNode::new(&node());
    let m = local.metadata();
    assert_eq!(m.name, "reviews-v3-7d4b");
    assert_eq!(m.workload_name, "reviews-v3");
    assert_eq!(m.cluster_id, "Kubernetes");
    assert_eq!(
        m.owner,
        "kubernetes://apis/apps/v1/namespaces/default/deployments/reviews-v3"
    );
    assert_eq!(m.labels["service.istio.io/canonical-name"], "reviews");
    assert_eq!(m.labels["service.istio.io/canonical-revision"], "v3");
    let (decoded, node_id) = mx::decode_payload(&local.frame()[8..]).unwrap();
    assert_eq!(&decoded, m);
    assert_eq!(
        node_id.as_deref(),
        Some("sidecar~10.44.0.7~reviews-v3-7d4b.default~default.svc.cluster.local")
    );
    let w = local.workload(Some("spiffe://cluster.local/ns/default/sa/x"));
    assert_eq!(w.canonical_service(), Some("reviews"));
    assert_eq!(
        w.principal(),
        Some("spiffe://cluster.local/ns/default/sa/x")
    );
}

#[tokio::test]
async fn frame_then_data_keeps_the_data() {
    let (meta, mut bytes) = peer_frame();
    bytes.extend_from_slice(b"greeting");
    let (r, quiet) = read_front(bytes, false).await;
    let f = r.unwrap();
    assert_eq!(f.peer, Some(meta));
    // Short reads may leave part of the data in the stream; what was read is kept.
    assert!(b"greeting".starts_with(&f.leftover), "{:?}", f.leftover);
    assert!(!f.eof);
    assert_eq!(quiet, 0);
}

#[tokio::test]
async fn not_a_frame_returns_every_byte() {
    // Two bytes of the magic, then something else.
    let input = b"=#hello".to_vec();
    let (r, _) = read_front(input.clone(), false).await;
    let f = r.unwrap();
    assert_eq!(f.peer, None);
    assert!(input.starts_with(&f.leftover) && f.leftover.len() >= 3);
}

#[tokio::test]
async fn partial_magic_then_end_of_stream_is_data() {
    let (r, _) = read_front(b"=#".to_vec(), true).await;
    let f = r.unwrap();
    assert_eq!(f.leftover, b"=#");
    assert!(f.eof);
}

#[tokio::test]
async fn truncated_frame_is_an_error() {
    let (_, bytes) = peer_frame();
    let (r, _) = read_front(bytes[..20].to_vec(), true).await;
    assert!(matches!(r, Err(ExchangeError::Truncated { .. })), "{r:?}");
}

#[tokio::test]
async fn oversized_frame_is_an_error_naming_the_limit() {
    let mut bytes = mx::MAGIC.to_be_bytes().to_vec();
    bytes.extend_from_slice(&100_000u32.to_be_bytes());
    let (r, _) = read_front(bytes, false).await;
    let err = r.unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
}

#[tokio::test]
async fn empty_stream_is_eof_with_unknown_peer() {
    let (r, _) = read_front(Vec::new(), true).await;
    let f = r.unwrap();
    assert!(f.eof && f.peer.is_none() && f.leftover.is_empty());
}

#[tokio::test(start_paused = true)]
async fn silence_reports_quiet_once_and_stall_mid_frame_fails() {
    let (mut w, mut r) = tokio::io::duplex(64);
    let quiet = AtomicUsize::new(0);
    let mut on_quiet = || {
        quiet.fetch_add(1, Ordering::Relaxed);
    };
    let (_, frame) = peer_frame();
    let timeout = Duration::from_secs(2);
    let read = read_peer_frame(&mut r, 4096, timeout, &mut on_quiet);
    let writer = async {
        // Nothing for longer than the limit: the peer is reported quiet, reading goes on.
        tokio::time::sleep(timeout * 2).await;
        w.write_all(&frame[..12]).await.unwrap();
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = read => r,
        _ = writer => unreachable!(),
    };
    assert_eq!(quiet.load(Ordering::Relaxed), 1);
    match result {
        Err(ExchangeError::Stalled { progress, .. }) => {
            assert_eq!(
                progress.to_string(),
                format!("header complete, 4 of {} payload bytes", frame.len() - 8)
            );
        }
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn lone_magic_prefix_then_silence_is_forwarded_as_data() {
    let (mut w, mut r) = tokio::io::duplex(64);
    w.write_all(b"=").await.unwrap();
    let f = read_peer_frame(&mut r, 4096, Duration::from_secs(1), &mut || {})
        .await
        .unwrap();
    assert_eq!(f.leftover, b"=");
    assert!(!f.eof && f.peer.is_none());
}

#[tokio::test]
async fn write_frame_writes_everything_through_short_writes() {
    let (w, mut r) = tokio::io::duplex(16);
    let mut w = ShortIo::new(w, 5);
    let (_, frame) = peer_frame();
    let expected = frame.clone();
    let reader = tokio::spawn(async move {
        let mut got = vec![0; expected.len()];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut got)
            .await
            .unwrap();
        got == expected
    });
    write_frame(&mut w, &frame, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(reader.await.unwrap());
}
