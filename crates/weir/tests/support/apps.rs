//! Test applications: a TCP server and client that send deterministic pseudo-random
//! bytes and SHA-256 what they send and receive, so the test can prove data crossed the
//! mesh intact in both directions.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::netns::Netns;

/// What one side of a connection wrote and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes written.
    pub sent: u64,
    /// SHA-256 (hex) of the bytes written.
    pub sent_sha256: String,
    /// Bytes read until EOF.
    pub received: u64,
    /// SHA-256 (hex) of the bytes read.
    pub received_sha256: String,
}

/// Deterministic pseudo-random bytes (xorshift64*), so a sender and the test can agree
/// on the content without storing it.
pub struct Pattern(u64);

impl Pattern {
    /// A stream for `seed` (non-zero).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The SHA-256 (hex) of the first `len` bytes of pattern `seed`.
pub fn pattern_sha256(seed: u64, len: u64) -> String {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `len` bytes of pattern `seed`; returns the hash.
pub fn write_pattern(w: &mut impl Write, seed: u64, len: u64) -> std::io::Result<String> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    w.flush()?;
    Ok(hex(&h.finalize()))
}

/// Reads to EOF; returns the count and hash.
pub fn read_all(r: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hex(&h.finalize())));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// When the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Respond {
    /// At once, while still reading the request.
    Concurrently,
    /// Only after the request's EOF (the client half-closed).
    AfterEof,
}

/// Seed of the bytes servers send.
pub const SERVER_SEED: u64 = 0x5e4e;
/// Seed of the bytes clients send.
pub const CLIENT_SEED: u64 = 0xc11e;

/// Serves `conns` connections on `addr` inside `netns`: reads each request to EOF and
/// answers `response` bytes of [`SERVER_SEED`]. Returns once listening; the handle yields
/// one [`Transfer`] per connection, in accept order.
pub fn serve(
    netns: &Netns,
    addr: SocketAddr,
    response: u64,
    respond: Respond,
    conns: usize,
) -> JoinHandle<Vec<Transfer>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = netns.spawn(move || {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                return Vec::new();
            }
        };
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (stream, _) = listener.accept().expect("accept");
            workers.push(std::thread::spawn(move || {
                serve_one(stream, response, respond)
            }));
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("server connection thread"))
            .collect()
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => handle,
        Ok(Err(e)) => panic!("test server: {e}"),
        Err(_) => panic!("test server on {addr} did not start"),
    }
}

fn serve_one(stream: TcpStream, response: u64, respond: Respond) -> Transfer {
    let mut reader = stream.try_clone().expect("clone stream");
    let mut writer = stream;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let read = std::thread::spawn(move || {
        let r = read_all(&mut reader).expect("server read");
        let _ = done_tx.send(());
        r
    });
    if respond == Respond::AfterEof {
        let _ = done_rx.recv();
    }
    let sent_sha256 = write_pattern(&mut writer, SERVER_SEED, response).expect("server write");
    let (received, received_sha256) = read.join().expect("server reader");
    let _ = writer.shutdown(Shutdown::Write);
    Transfer {
        sent: response,
        sent_sha256,
        received,
        received_sha256,
    }
}

/// Connects to `addr` from inside `netns`, sends `request` bytes of [`CLIENT_SEED`],
/// half-closes, and reads the response to EOF.
pub fn request(netns: &Netns, addr: SocketAddr, request: u64) -> Transfer {
    netns.run(move || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("client connect {addr}: {e}"));
        exchange(stream, request)
    })
}

/// Sends `request` bytes on `stream`, half-closes and reads to EOF (concurrently).
pub fn exchange(stream: TcpStream, request: u64) -> Transfer {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("set timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = stream;
    let write = std::thread::spawn(move || {
        let sha = write_pattern(&mut writer, CLIENT_SEED, request).expect("client write");
        writer.shutdown(Shutdown::Write).expect("client half-close");
        sha
    });
    let (received, received_sha256) = read_all(&mut reader).expect("client read");
    let sent_sha256 = write.join().expect("client writer");
    Transfer {
        sent: request,
        sent_sha256,
        received,
        received_sha256,
    }
}

/// Connects from inside `netns` and returns the open stream (usable from any thread).
pub fn connect(netns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    netns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
}

/// Connects from inside `netns`, sends `request` bytes and reads until the peer closes,
/// tolerating a peer that closes or resets early (a refused upstream). Returns the bytes
/// read.
pub fn request_expecting_close(netns: &Netns, addr: SocketAddr, request: u64) -> u64 {
    netns.run(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("client connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("set timeout");
        let _ = write_pattern(&mut stream, CLIENT_SEED, request);
        let _ = stream.shutdown(Shutdown::Write);
        read_all(&mut stream).map_or(0, |(n, _)| n)
    })
}
