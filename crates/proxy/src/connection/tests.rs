//! The two-way pump over real loopback sockets: the relay (both sides plain TCP), the
//! readiness path (one side plain TCP) and the stream path.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair of loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const LIMIT: Duration = Duration::from_secs(60);

/// Client sends `request` and half-closes; the server reads to the end, then answers
/// `response` and closes; returns what the server received, what the client received
/// and how the pump ended.
async fn exchange<D, U>(
    mut client: TcpStream,
    downstream: D,
    upstream: U,
    mut server: impl AsyncRead + AsyncWrite + Unpin,
    request: Vec<u8>,
    response: Vec<u8>,
    bytes: &ByteCounters,
) -> (Vec<u8>, Vec<u8>, PumpEnd)
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let cut = CancellationToken::new();
    let client_side = async move {
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    };
    let server_side = async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        // The request side is half-closed; the response still goes through.
        server.write_all(&response).await.unwrap();
        server.shutdown().await.unwrap();
        got
    };
    let pump = pump(
        downstream,
        upstream,
        bytes,
        None,
        PumpLimits::default(),
        &cut,
        &"test",
    );
    let run = async { tokio::join!(server_side, client_side, pump) };
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("the exchange finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_path_moves_large_transfers_exactly_with_half_close() {
    let (client, downstream) = socket_pair().await;
    let (upstream, server) = socket_pair().await;
    assert!(plain_tcp(&downstream).is_some() && plain_tcp(&upstream).is_some());
    let request = pattern(24 << 20, 1);
    let response = pattern((5 << 20) + 3, 7);
    let bytes = ByteCounters::default();
    let (at_server, at_client, end) = exchange(
        client,
        downstream,
        upstream,
        server,
        request.clone(),
        response.clone(),
        &bytes,
    )
    .await;
    assert!(matches!(end, PumpEnd::Done), "{end:?}");
    assert_eq!(at_server.len(), request.len());
    assert_eq!(sha(&at_server), sha(&request));
    assert_eq!(at_client.len(), response.len());
    assert_eq!(sha(&at_client), sha(&response));
    assert_eq!(bytes.received(), request.len() as u64);
    assert_eq!(bytes.sent(), response.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_path_through_either_stream_and_empty_directions() {
    // The plaintext side of the listeners' stream type takes the splice path too;
    // a direction that carries nothing still ends cleanly.
    type Up = EitherStream<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
    let (client, downstream) = socket_pair().await;
    let (upstream, server) = socket_pair().await;
    let upstream: Up = EitherStream::Left(upstream);
    assert!(plain_tcp(&upstream).is_some());
    let bytes = ByteCounters::default();
    let (at_server, at_client, end) = exchange(
        client,
        downstream,
        upstream,
        server,
        Vec::new(),
        b"pong".to_vec(),
        &bytes,
    )
    .await;
    assert!(matches!(end, PumpEnd::Done), "{end:?}");
    assert!(at_server.is_empty());
    assert_eq!(at_client, b"pong");
    assert_eq!((bytes.received(), bytes.sent()), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_path_with_a_stream_upstream() {
    // Downstream plain TCP, upstream an in-memory stream: the request direction reads
    // on readiness with a pooled buffer, the response direction uses the stream path.
    let (client, downstream) = socket_pair().await;
    let (upstream, server) = tokio::io::duplex(64 * 1024);
    assert!(plain_tcp(&upstream).is_none());
    let request = pattern((3 << 20) + 11, 3);
    let response = pattern(1 << 20, 5);
    let bytes = ByteCounters::default();
    let (at_server, at_client, end) = exchange(
        client,
        downstream,
        upstream,
        server,
        request.clone(),
        response.clone(),
        &bytes,
    )
    .await;
    assert!(matches!(end, PumpEnd::Done), "{end:?}");
    assert_eq!(sha(&at_server), sha(&request));
    assert_eq!(sha(&at_client), sha(&response));
    assert_eq!(bytes.received(), request.len() as u64);
    assert_eq!(bytes.sent(), response.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_a_quiet_spliced_connection() {
    let (mut client, downstream) = socket_pair().await;
    let (upstream, mut server) = socket_pair().await;
    let bytes = ByteCounters::default();
    let cut = CancellationToken::new();
    let limits = PumpLimits {
        max_duration: None,
        idle_timeout: Some(Duration::from_millis(300)),
    };
    let traffic = async {
        // Bytes for a while, each gap shorter than the timeout, then silence.
        let mut last = tokio::time::Instant::now();
        for i in 0..4 {
            client.write_all(b"tick").await.unwrap();
            last = tokio::time::Instant::now();
            let mut four = [0; 4];
            server.read_exact(&mut four).await.unwrap();
            if i < 3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        last
    };
    let run = async {
        let (end, last) = tokio::join!(
            pump(downstream, upstream, &bytes, None, limits, &cut, &"test"),
            traffic
        );
        (end, last, tokio::time::Instant::now())
    };
    let (end, last, ended) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("ended in time");
    assert!(matches!(end, PumpEnd::Idle), "{end:?}");
    // Gaps shorter than the timeout never cut it: it ends only once the last byte is at
    // least the timeout old.
    assert!(
        ended.duration_since(last) >= Duration::from_millis(300),
        "cut {:?} after the last byte",
        ended.duration_since(last)
    );
    assert_eq!(bytes.received(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_moves_small_then_bulk_then_small_exactly() {
    // Small requests are copied, a bulk burst switches the direction to splice and a
    // small one switches it back; every byte arrives, in order, counted once.
    let (mut client, downstream) = socket_pair().await;
    let (upstream, mut server) = socket_pair().await;
    let bytes = ByteCounters::default();
    let cut = CancellationToken::new();
    let bulk = pattern((6 << 20) + 5, 9);
    let traffic = async {
        let mut sent = 0u64;
        for round in 0..3 {
            for i in 0..20u8 {
                let msg = [round, i, 0xAB];
                client.write_all(&msg).await.unwrap();
                let mut got = [0; 3];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, msg);
                server.write_all(&got[..2]).await.unwrap();
                let mut back = [0; 2];
                client.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg[..2]);
                sent += 3;
            }
            if round < 2 {
                let (w, r) = tokio::join!(client.write_all(&bulk), async {
                    let mut got = vec![0; bulk.len()];
                    server.read_exact(&mut got).await.unwrap();
                    got
                });
                w.unwrap();
                assert_eq!(sha(&r), sha(&bulk));
                sent += bulk.len() as u64;
            }
        }
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        sent
    };
    let run = async {
        tokio::join!(
            pump(
                downstream,
                upstream,
                &bytes,
                None,
                PumpLimits::default(),
                &cut,
                &"test"
            ),
            traffic
        )
    };
    let (end, sent) = tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(matches!(end, PumpEnd::Done), "{end:?}");
    assert_eq!(bytes.received(), sent);
    assert_eq!(bytes.sent(), 3 * 20 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_ends_at_the_maximum_duration_even_while_busy() {
    let (mut client, downstream) = socket_pair().await;
    let (upstream, mut server) = socket_pair().await;
    let bytes = ByteCounters::default();
    let cut = CancellationToken::new();
    let limits = PumpLimits {
        max_duration: Some(Duration::from_millis(400)),
        idle_timeout: Some(Duration::from_millis(300)),
    };
    let started = tokio::time::Instant::now();
    let traffic = async {
        // Busy all along (gaps well under the idle timeout) until the proxy closes.
        let mut buf = [0; 4];
        loop {
            if client.write_all(b"busy").await.is_err() {
                return;
            }
            match server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let run = async {
        tokio::select! {
            end = pump(downstream, upstream, &bytes, None, limits, &cut, &"test") => end,
            _ = traffic => panic!("the traffic stopped before the limit"),
        }
    };
    let end = tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(matches!(end, PumpEnd::DurationLimit), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(bytes.received() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_cut_at_the_drain_deadline_and_peers_see_the_close() {
    let (mut client, downstream) = socket_pair().await;
    let (upstream, mut server) = socket_pair().await;
    let bytes = ByteCounters::default();
    let cut = CancellationToken::new();
    let run = async {
        // The pump owns the proxy's sockets: when it ends they close, and both peers
        // see it.
        let pumped = pump(
            downstream,
            upstream,
            &bytes,
            None,
            PumpLimits::default(),
            &cut,
            &"test",
        );
        let cutter = async {
            client.write_all(b"x").await.unwrap();
            let mut one = [0; 1];
            server.read_exact(&mut one).await.unwrap();
            cut.cancel();
        };
        tokio::join!(pumped, cutter).0
    };
    let end = tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(matches!(end, PumpEnd::Cut), "{end:?}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
        .await
        .expect("the client sees the close in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(bytes.received(), 1);
}

#[test]
fn an_open_connection_reserves_little() {
    // What every open connection's copy phase carries while quiet: keep it small (see
    // BENCHMARKS.md, RSS per idle connection). The whole task depends on the build
    // profile; `-Zprint-type-sizes` in a release build shows it (about 540 bytes, which
    // with tokio's task header fills a 640-byte, 128-aligned allocation).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_client, downstream) = socket_pair().await;
        let (upstream, _server) = socket_pair().await;
        let bytes = ByteCounters::default();
        let cut = CancellationToken::new();
        let limits = PumpLimits::default();
        let copy = pump(downstream, upstream, &bytes, None, limits, &cut, &"test");
        assert!(matches!(copy, Pump::Plain(_)));
        assert!(
            std::mem::size_of_val(&copy) <= 256,
            "{}",
            std::mem::size_of_val(&copy)
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_serves_both_bulk_directions_and_its_limit_under_full_load() {
    // Both ends write as fast as they can and read everything: neither direction may
    // starve the other, and the duration limit still ends the connection.
    let (client, downstream) = socket_pair().await;
    let (upstream, server) = socket_pair().await;
    let bytes = ByteCounters::default();
    let cut = CancellationToken::new();
    let limits = PumpLimits {
        max_duration: Some(Duration::from_millis(500)),
        idle_timeout: None,
    };
    let blast = |s: TcpStream| async move {
        let (mut r, mut w) = s.into_split();
        let chunk = vec![7u8; 256 * 1024];
        let writer = async move { while w.write_all(&chunk).await.is_ok() {} };
        let reader = async move {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::join!(writer, reader);
    };
    let run = async {
        tokio::select! {
            end = pump(downstream, upstream, &bytes, None, limits, &cut, &"test") => end,
            _ = async { tokio::join!(blast(client), blast(server)) } => panic!("the load stopped first"),
        }
    };
    let end = tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(matches!(end, PumpEnd::DurationLimit), "{end:?}");
    assert!(
        bytes.received() > 1 << 20,
        "request moved {}",
        bytes.received()
    );
    assert!(bytes.sent() > 1 << 20, "response moved {}", bytes.sent());
}
