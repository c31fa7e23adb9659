//! Istio's tcp-echo behaviour over loopback sockets.

use std::time::Duration;

use bookinfo::tcp_echo::{self, TcpEchoConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Sends `input`, half-closes, and returns everything the server wrote until it closed.
async fn exchange(port: u16, input: &[u8]) -> String {
    let work = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(input).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(LIMIT, work)
        .await
        .expect("echo timed out")
}

#[tokio::test]
async fn every_line_comes_back_with_the_prefix() {
    let (l, port) = listener().await;
    let server = tokio::spawn(tcp_echo::serve(l, TcpEchoConfig::new("hello")));
    assert_eq!(exchange(port, b"world\n").await, "hello world\n");
    assert_eq!(
        exchange(port, b"one\ntwo\n\nthree").await,
        "hello one\nhello two\nhello \n"
    );
    server.abort();
}

#[tokio::test]
async fn answers_each_line_as_it_arrives() {
    let (l, port) = listener().await;
    let server = tokio::spawn(tcp_echo::serve(l, TcpEchoConfig::new("one")));
    let work = async {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        for word in ["a", "b", "c"] {
            w.write_all(format!("{word}\n").as_bytes()).await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, format!("one {word}\n"));
        }
    };
    tokio::time::timeout(LIMIT, work).await.expect("timed out");
    server.abort();
}

#[tokio::test]
async fn several_ports_share_the_prefix_like_the_image_args() {
    let (ports, config) = tcp_echo::parse_args("9000,9001,9002", "two").unwrap();
    assert_eq!(ports, vec![9000, 9001, 9002]);
    let (a, pa) = listener().await;
    let (b, pb) = listener().await;
    let (c, pc) = listener().await;
    let server = tokio::spawn(tcp_echo::serve_all(vec![a, b, c], config));
    for port in [pa, pb, pc] {
        assert_eq!(exchange(port, b"x\n").await, "two x\n");
    }
    server.abort();
}

#[tokio::test]
async fn an_endless_line_is_cut_off() {
    let (l, port) = listener().await;
    let server = tokio::spawn(tcp_echo::serve(l, TcpEchoConfig::new("p")));
    let work = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        // The server closes after MAX_LINE bytes without a newline; writes then fail or
        // the read sees EOF with nothing echoed.
        for _ in 0..(tcp_echo::MAX_LINE / chunk.len() + 2) {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(LIMIT, work).await.expect("timed out");
    assert!(out.is_empty());
    server.abort();
}
