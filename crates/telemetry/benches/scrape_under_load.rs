//! Does a scrape of 10,000 series stall the data path? One thread does what a proxy's
//! worker does per connection (open, resolve, count bytes, close) and times each
//! operation, first with nobody scraping, then while a second thread encodes the
//! registry for Prometheus back to back. Prints the latency distributions and the
//! scrape times. `cargo bench -p telemetry --bench scrape_under_load` (set
//! `SCRAPE_BENCH_SECONDS` to change the 3 s per phase).
//!
//! What can wait: the four families each sit behind a lock that a scrape holds (for
//! reading) while it encodes that family, and that a connection takes (for writing)
//! only when its label set is new. Counting bytes and resolving to series that exist
//! go through cached counter handles and atomics.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use telemetry::{encode, Format, Registry, ResponseFlags, TcpMetrics};

#[path = "support/labels.rs"]
mod support;
use support::{labels, workload};

/// Latencies of one kind of operation, in nanoseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn time<T>(&mut self, op: impl FnOnce() -> T) {
        let start = Instant::now();
        black_box(op());
        self.0.push(start.elapsed().as_nanos() as u64);
    }

    fn row(&mut self, name: &str) -> String {
        self.0.sort_unstable();
        let n = self.0.len();
        let at = |q: f64| self.0[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0;
        format!(
            "| {name} | {n} | {:.2} | {:.2} | {:.2} | {:.1} |",
            at(0.5),
            at(0.99),
            at(0.999),
            *self.0.last().unwrap_or(&0) as f64 / 1000.0
        )
    }
}

/// The data path for `length`: mostly connections whose series exist, every 10,000th
/// from a peer never seen before (a new label set; a few hundred in a phase, so the
/// registry stays near 10,000 series), and byte counting in between.
fn data_path(metrics: &TcpMetrics, length: Duration, round: &str) -> [Samples; 3] {
    let local = workload("ratings-v1");
    let known = labels(&local, "productpage-v1");
    let (mut existing, mut new, mut bytes) = Default::default();
    let until = Instant::now() + length;
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        if i.is_multiple_of(10_000) {
            let fresh = labels(&local, &format!("{round}-peer-{i}"));
            Samples::time(&mut new, || {
                let mut r = metrics.recorder(fresh.clone());
                r.resolve(fresh);
                r.close(None);
            });
            continue;
        }
        let (fallback, resolved) = (known.clone(), known.clone());
        Samples::time(&mut existing, || {
            let mut r = metrics.recorder(fallback);
            let counters = r.byte_counters();
            r.resolve(resolved);
            counters.add_received(black_box(6));
            counters.add_sent(black_box(12));
            r.close(Some(ResponseFlags::None));
        });
        let mut r = metrics.recorder(known.clone());
        r.resolve(known.clone());
        let counters = r.byte_counters();
        // One timing per 100 adds: a single add is shorter than reading the clock.
        Samples::time(&mut bytes, || {
            for _ in 0..100 {
                counters.add_received(black_box(16_384));
            }
        });
        r.close(None);
    }
    [existing, new, bytes]
}

/// A registry holding 10,000 series: 2,500 peers × 4 families.
fn ten_thousand_series() -> (Registry, TcpMetrics) {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let local = workload("ratings-v1");
    for i in 0..2_500 {
        let l = labels(&local, &format!("client-{i}"));
        metrics.recorder(l).close(None);
    }
    (registry, metrics)
}

/// Lines of the exposition that are series (not `#` comments).
fn series(registry: &Registry) -> usize {
    let text = encode(registry, Format::PrometheusText).unwrap_or_default();
    text.lines().filter(|l| !l.starts_with('#')).count()
}

fn main() {
    let seconds = std::env::var("SCRAPE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let length = Duration::from_secs(seconds);

    let (registry, _) = ten_thousand_series();
    let size = encode(&registry, Format::PrometheusText).map_or(0, |s| s.len());
    let mut alone = Samples::default();
    let until = Instant::now() + length;
    while Instant::now() < until {
        alone.time(|| encode(&registry, Format::PrometheusText).map(|s| s.len()));
    }

    let (registry, metrics) = ten_thousand_series();
    let mut quiet = data_path(&metrics, length, "quiet");
    let quiet_series = series(&registry);

    let (registry, metrics) = ten_thousand_series();
    let stop = AtomicBool::new(false);
    let (mut busy, mut scrapes) = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut times = Samples::default();
            while !stop.load(Ordering::Relaxed) {
                times.time(|| encode(&registry, Format::PrometheusText).map(|s| s.len()));
            }
            times
        });
        let busy = data_path(&metrics, length, "busy");
        stop.store(true, Ordering::Relaxed);
        (busy, scraper.join().unwrap_or_default())
    });
    let busy_series = series(&registry);

    println!(
        "10,000 series at the start of each phase ({size} bytes of Prometheus text); \
         {quiet_series} and {busy_series} at the end; {seconds} s per phase\n"
    );
    println!("| operation | count | p50 (µs) | p99 (µs) | p99.9 (µs) | max (µs) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let names = [
        "connection, existing series",
        "connection, new label set",
        "100 byte counts",
    ];
    for (name, samples) in names.iter().zip(quiet.iter_mut()) {
        println!("{}", samples.row(&format!("{name}, no scrape")));
    }
    for (name, samples) in names.iter().zip(busy.iter_mut()) {
        println!("{}", samples.row(&format!("{name}, scraping")));
    }
    println!("{}", alone.row("scrape, nothing else running"));
    println!("{}", scrapes.row("scrape, during the data path"));
}
