//! The client workloads. Each prints one JSON object on stdout.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{IO_TIMEOUT, MESSAGE};

/// Most latency samples kept; bounds memory on long runs (a sample is 4 bytes).
const MAX_SAMPLES: usize = 4_000_000;

/// Ping-pong over one blocking connection: a blocking socket on a dedicated thread is
/// the least noisy way to time one round trip.
pub fn request_response(addr: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("setting TCP_NODELAY")?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .context("setting a read timeout")?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .context("setting a write timeout")?;
    let msg = [0x5au8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut round_trip = |s: &mut std::net::TcpStream| -> anyhow::Result<()> {
        s.write_all(&msg).context("sending a request")?;
        s.read_exact(&mut back).context("reading the response")?;
        anyhow::ensure!(back == msg, "the response differs from the request");
        Ok(())
    };
    let warmup = (duration / 10).min(Duration::from_secs(1));
    let start = Instant::now();
    while start.elapsed() < warmup {
        round_trip(&mut s)?;
    }
    let mut samples: Vec<u32> = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < duration && samples.len() < MAX_SAMPLES {
        let t = Instant::now();
        round_trip(&mut s)?;
        samples.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    anyhow::ensure!(
        !samples.is_empty(),
        "no round trip completed in {duration:?}"
    );
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        f64::from(samples[i.min(samples.len() - 1)]) / 1000.0
    };
    let mean = samples.iter().map(|&v| f64::from(v)).sum::<f64>() / samples.len() as f64 / 1000.0;
    println!(
        "{{\"samples\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"mean_us\":{:.2}}}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        mean
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {IO_TIMEOUT:?}")),
    }
}

/// One connect-exchange-close cycle against an answer-then-close server.
async fn one_connection(addr: SocketAddr) -> Result<(), String> {
    let mut s = timed("connect", TcpStream::connect(addr)).await?;
    let _ = s.set_nodelay(true);
    let msg = [0xa5u8; MESSAGE];
    timed("send", s.write_all(&msg)).await?;
    let mut back = [0u8; MESSAGE];
    timed("read response", s.read_exact(&mut back)).await?;
    if back != msg {
        return Err("the response differs from the request".to_owned());
    }
    let mut rest = [0u8; 1];
    match timed("read close", s.read(&mut rest)).await? {
        0 => Ok(()),
        _ => Err("the server sent more than the response".to_owned()),
    }
}

/// Connections per second with `concurrency` loops in flight.
pub fn connections_per_second(
    addr: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=10_000).contains(&concurrency),
        "--concurrency {concurrency}: use 1 to 10000"
    );
    runtime()?.block_on(async move {
        let ok = Rc::new(AtomicUsize::new(0));
        let errors = Rc::new(AtomicUsize::new(0));
        let first_error = Rc::new(std::cell::RefCell::new(None::<String>));
        let start = Instant::now();
        let deadline = start + duration;
        let local = tokio::task::LocalSet::new();
        for _ in 0..concurrency {
            let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
            local.spawn_local(async move {
                while Instant::now() < deadline {
                    match one_connection(addr).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.borrow_mut().get_or_insert(e);
                            // Do not spin on a refusing peer.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            });
        }
        local.await;
        let secs = start.elapsed().as_secs_f64();
        let n = ok.load(Ordering::Relaxed);
        let err = first_error.borrow().clone().unwrap_or_default();
        println!(
            "{{\"ok\":{n},\"errors\":{},\"seconds\":{secs:.3},\"per_sec\":{:.1},\"first_error\":{:?}}}",
            errors.load(Ordering::Relaxed),
            n as f64 / secs,
            err
        );
        anyhow::ensure!(n > 0, "no connection completed; first error: {err}");
        Ok(())
    })
}

/// Opens `count` connections (one echo each), reports, holds them for `hold`.
pub fn idle_connections(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    hold: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100_000).contains(&count),
        "--count {count}: use 1 to 100000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&concurrency),
        "--concurrency {concurrency}: use 1 to 10000"
    );
    runtime()?.block_on(async move {
        let next = Rc::new(AtomicUsize::new(0));
        let first_error = Rc::new(std::cell::RefCell::new(None::<String>));
        let start = Instant::now();
        let local = tokio::task::LocalSet::new();
        let mut workers = Vec::new();
        for _ in 0..concurrency.min(count) {
            let (next, first_error) = (next.clone(), first_error.clone());
            workers.push(local.spawn_local(async move {
                let mut held = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    match open_one(addr).await {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            first_error.borrow_mut().get_or_insert(e);
                        }
                    }
                }
                held
            }));
        }
        let mut held = Vec::with_capacity(count);
        local
            .run_until(async {
                for w in workers {
                    if let Ok(mut h) = w.await {
                        held.append(&mut h);
                    }
                }
            })
            .await;
        let err = first_error.borrow().clone().unwrap_or_default();
        println!(
            "{{\"open\":{},\"errors\":{},\"open_seconds\":{:.3},\"first_error\":{:?}}}",
            held.len(),
            count - held.len(),
            start.elapsed().as_secs_f64(),
            err
        );
        anyhow::ensure!(!held.is_empty(), "no connection opened; first error: {err}");
        tokio::time::sleep(hold).await;
        drop(held);
        Ok(())
    })
}

async fn open_one(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = timed("connect", TcpStream::connect(addr)).await?;
    let _ = s.set_nodelay(true);
    let msg = [0x3cu8; MESSAGE];
    timed("send", s.write_all(&msg)).await?;
    let mut back = [0u8; MESSAGE];
    timed("read echo", s.read_exact(&mut back)).await?;
    Ok(s)
}
