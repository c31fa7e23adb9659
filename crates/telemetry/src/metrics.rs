//! The four Istio TCP counter families, the table of live connections, and the
//! reporting tick that flushes them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::labels::TcpLabels;
use crate::overrides::{TagOverrides, TcpMetric};
use crate::recorder::{ByteCounters, ConnectionRecorder};

/// Istio's default `tcpReportingDuration`.
pub const DEFAULT_REPORTING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// The istio_tcp_* counters and the connections that feed them.
///
/// Cheap to clone (shared). Create one per proxy (and per registry: a second one in
/// the same registry would print the families twice) with [`TcpMetrics::new`], which
/// registers the four families; hand out a [`ConnectionRecorder`] per accepted
/// connection with [`TcpMetrics::recorder`]; call [`TcpMetrics::flush_all`] on every
/// reporting tick and once at shutdown.
#[derive(Clone, Debug)]
pub struct TcpMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    series: Arc<[Series; 4]>,
    handles: RwLock<HandleCache>,
    table: ConnectionTable,
    // Read once per accepted connection, never on the copy path.
    enabled: AtomicBool,
}

/// Resolved counter handles of one connection: fetched once, used until close.
#[derive(Clone, Debug)]
pub(crate) struct Handles {
    pub(crate) opened: Option<Counter>,
    pub(crate) closed: Option<Counter>,
    pub(crate) sent: Option<Counter>,
    pub(crate) received: Option<Counter>,
}

impl TcpMetrics {
    /// Registers the four metrics in `registry` (one collector). The encoder appends
    /// `_total`, so the exposition names are `istio_tcp_connections_opened_total` and
    /// so on.
    pub fn new(registry: &mut Registry) -> Self {
        let series: Arc<[Series; 4]> = Arc::default();
        registry.register_collector(Box::new(TcpCollector(series.clone())));
        Self {
            inner: Arc::new(Inner {
                series,
                handles: RwLock::new(HandleCache::new(Arc::new(TagOverrides::none()))),
                table: ConnectionTable::default(),
                enabled: AtomicBool::new(true),
            }),
        }
    }

    /// Starts recording a connection at accept time.
    ///
    /// `fallback` is the label set used if the connection ends before
    /// [`ConnectionRecorder::resolve`] is called (typically: local workload known, peer
    /// unknown). Nothing is reported for the connection until it is resolved or closed.
    /// While telemetry is off (see [`set_enabled`](Self::set_enabled)) the recorder
    /// is inert: it drops `fallback`, joins no table and never touches a series; its
    /// [`ByteCounters`] still count, for access logs.
    pub fn recorder(&self, fallback: TcpLabels) -> ConnectionRecorder {
        if self.is_enabled() {
            ConnectionRecorder::new(self.clone(), fallback)
        } else {
            ConnectionRecorder::inert(self.clone())
        }
    }

    /// Turns per-connection accounting on or off (on by default). Connections accepted
    /// while it is off are never reported, not even after it is turned back on;
    /// connections accepted while it was on keep reporting until they close.
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether new connections are accounted. Callers can skip building label sets
    /// when it is false.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Replaces the Telemetry API overrides. Connections resolved from now on use them;
    /// live connections keep the series they resolved to.
    pub fn set_overrides(&self, overrides: TagOverrides) {
        *self.write_handles() = HandleCache::new(Arc::new(overrides));
    }

    /// The overrides in effect.
    pub fn overrides(&self) -> Arc<TagOverrides> {
        self.read_handles().overrides.clone()
    }

    fn read_handles(&self) -> std::sync::RwLockReadGuard<'_, HandleCache> {
        // Every write leaves the cache consistent (one assignment or insert).
        self.inner
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_handles(&self) -> std::sync::RwLockWriteGuard<'_, HandleCache> {
        self.inner
            .handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the bytes every live, resolved connection moved since the last flush.
    ///
    /// Reads each connection's atomics; the copy loops never wait on it. The table
    /// lock is held for the walk, so opens and closes wait for at most one walk.
    pub fn flush_all(&self) {
        self.inner.table.for_each(|c| c.flush());
    }

    /// Number of live connections that have been resolved and not closed.
    pub fn live_connections(&self) -> usize {
        self.inner.table.len()
    }

    /// The counter handles of a label set: from the cache when a connection with the
    /// same labels came before under the same overrides, else one family lookup per
    /// metric.
    pub(crate) fn handles(&self, labels: &TcpLabels) -> Arc<Handles> {
        let overrides = {
            let cache = self.read_handles();
            if let Some(h) = cache.map.get(labels) {
                return h.clone();
            }
            cache.overrides.clone()
        };
        let handles = Arc::new(self.lookup_handles(&overrides, labels));
        // Overrides that read pod labels can map equal label sets to different
        // series, so those results are not shared.
        if !overrides.reads_workload_labels() {
            let mut cache = self.write_handles();
            // Not if the overrides changed meanwhile: the handles follow the old ones.
            if Arc::ptr_eq(&cache.overrides, &overrides) {
                if cache.map.len() >= HANDLE_CACHE_CAPACITY {
                    cache.map.clear();
                }
                cache.map.insert(labels.clone(), handles.clone());
            }
        }
        handles
    }

    fn lookup_handles(&self, overrides: &TagOverrides, labels: &TcpLabels) -> Handles {
        let get = |m: TcpMetric| -> Option<Counter> {
            let o = overrides.metric(m);
            if o.disabled {
                return None;
            }
            let series = &self.inner.series[m as usize];
            Some(if o.tags.is_empty() {
                series.counter(labels)
            } else {
                series.counter(&o.apply(labels))
            })
        };
        Handles {
            opened: get(TcpMetric::OpenedConnections),
            closed: get(TcpMetric::ClosedConnections),
            sent: get(TcpMetric::SentBytes),
            received: get(TcpMetric::ReceivedBytes),
        }
    }

    /// The `closed` counter for a label set (used when the flags change at close).
    pub(crate) fn closed_counter(&self, labels: &TcpLabels) -> Option<Counter> {
        let overrides = self.overrides();
        let o = overrides.metric(TcpMetric::ClosedConnections);
        if o.disabled {
            return None;
        }
        let series = &self.inner.series[TcpMetric::ClosedConnections as usize];
        Some(series.counter(&o.apply(labels)))
    }

    pub(crate) fn table(&self) -> &ConnectionTable {
        &self.inner.table
    }
}

/// One metric's series: a counter per label set.
///
/// Not a `prometheus_client` `Family`: a family's encoder holds the family's lock while
/// it prints every series (milliseconds for a few thousand Istio label sets), and a
/// connection whose label set is new must wait for it to create its series, which
/// stalls every connection on that worker (BENCHMARKS.md, "Scraping 10,000 series").
/// Here a scrape holds the lock only to copy the handles out.
#[derive(Debug, Default)]
struct Series(RwLock<HashMap<TcpLabels, Counter, BuildHasherDefault<WordHasher>>>);

impl Series {
    /// The counter of a label set, created at zero the first time.
    fn counter(&self, labels: &TcpLabels) -> Counter {
        // Every write leaves the map consistent (one insert).
        let read = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = read.get(labels) {
            return counter.clone();
        }
        drop(read);
        let mut write = self.0.write().unwrap_or_else(PoisonError::into_inner);
        write.entry(labels.clone()).or_default().clone()
    }

    /// Every label set and its counter, as they are now.
    fn snapshot(&self) -> Vec<(TcpLabels, Counter)> {
        let read = self.0.read().unwrap_or_else(PoisonError::into_inner);
        read.iter().map(|(l, c)| (l.clone(), c.clone())).collect()
    }
}

/// Encodes the four metrics for a scrape, each from a snapshot of its series.
#[derive(Debug)]
struct TcpCollector(Arc<[Series; 4]>);

impl Collector for TcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for m in TcpMetric::ALL {
            let snapshot = self.0[m as usize].snapshot();
            // As the registry does for a family without series: nothing, not even HELP.
            if snapshot.is_empty() {
                continue;
            }
            let (name, help) = match m {
                TcpMetric::OpenedConnections => (
                    "istio_tcp_connections_opened",
                    "Total TCP connections opened.",
                ),
                TcpMetric::ClosedConnections => (
                    "istio_tcp_connections_closed",
                    "Total TCP connections closed.",
                ),
                TcpMetric::SentBytes => (
                    "istio_tcp_sent_bytes",
                    "Total bytes sent in response to a TCP connection.",
                ),
                TcpMetric::ReceivedBytes => (
                    "istio_tcp_received_bytes",
                    "Total bytes received in a TCP connection.",
                ),
            };
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, counter) in &snapshot {
                counter.encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// Label sets whose handles are kept; past it the cache starts over (the families
/// keep their series, so that only costs lookups).
const HANDLE_CACHE_CAPACITY: usize = 16_384;

/// The overrides in effect and the counter handles resolved under them, so that
/// connections of a known label set skip the four family lookups.
#[derive(Debug)]
struct HandleCache {
    overrides: Arc<TagOverrides>,
    map: HashMap<TcpLabels, Arc<Handles>, BuildHasherDefault<WordHasher>>,
}

impl HandleCache {
    fn new(overrides: Arc<TagOverrides>) -> Self {
        Self {
            overrides,
            map: HashMap::default(),
        }
    }
}

/// Hashes the single word a key writes: a label set's digest (already a keyed
/// hash) or a connection id. Multiplying spreads sequential ids over all bits, which
/// the table's probing needs; SipHash would only cost time here.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The live, resolved connections, keyed by a process-unique id.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTable {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ByteCounters>, BuildHasherDefault<WordHasher>>>,
}

impl ConnectionTable {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn insert(&self, id: u64, counters: Arc<ByteCounters>) {
        self.lock().insert(id, counters);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn for_each(&self, mut f: impl FnMut(&ByteCounters)) {
        for c in self.lock().values() {
            f(c);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ByteCounters>, BuildHasherDefault<WordHasher>>>
    {
        // A panic elsewhere while holding the lock leaves the map consistent
        // (single insert/remove calls), so keep serving it.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
