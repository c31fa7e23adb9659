//! Per-connection accounting: lock-free byte counters for the copy loop and the
//! lifecycle object that turns them into exactly-once series updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;

use crate::labels::{ResponseFlags, TcpLabels};
use crate::metrics::{Handles, TcpMetrics};

/// Bytes moved by one connection, written by the copy loop without locks.
///
/// Direction as Istio defines it on both reporters: *received* is the request
/// direction (from the connecting client toward the server), *sent* the response
/// direction. Count application bytes only (no MX frame, no TLS overhead).
#[derive(Debug, Default)]
pub struct ByteCounters {
    received: AtomicU64,
    sent: AtomicU64,
    // What has already been added to the Prometheus counters. Advanced with
    // `fetch_max` so a flush racing the final flush at close never double-counts.
    reported_received: AtomicU64,
    reported_sent: AtomicU64,
    counters: OnceLock<Arc<Handles>>,
}

impl ByteCounters {
    /// Counts bytes read from the client and written toward the server.
    #[inline]
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes read from the server and written back toward the client.
    #[inline]
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Total received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Total sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Adds what was moved since the last flush to the resolved counters.
    pub(crate) fn flush(&self) {
        let Some(h) = self.counters.get() else {
            return;
        };
        flush_one(&self.received, &self.reported_received, h.received.as_ref());
        flush_one(&self.sent, &self.reported_sent, h.sent.as_ref());
    }
}

fn flush_one(total: &AtomicU64, reported: &AtomicU64, counter: Option<&Counter>) {
    let now = total.load(Ordering::Relaxed);
    let before = reported.fetch_max(now, Ordering::Relaxed);
    if now > before {
        if let Some(c) = counter {
            c.inc_by(now - before);
        }
    }
}

#[derive(Debug)]
enum State {
    /// Accepted; peer not known yet. Holds the label set to use if it never will be.
    Pending(TcpLabels),
    /// Labels known, `opened` counted, bytes flowing into series.
    Resolved {
        labels: TcpLabels,
        handles: Arc<Handles>,
    },
}

/// The metrics lifecycle of one connection.
///
/// Created at accept time by [`TcpMetrics::recorder`]. The copy loop counts through
/// [`ConnectionRecorder::byte_counters`]; once metadata exchange has finished (or is
/// known not to happen) [`ConnectionRecorder::resolve`] fixes the label set; at the
/// end [`ConnectionRecorder::close`] records the final bytes and `closed`.
///
/// Exactly-once guarantees:
/// - `opened` is counted once, when the connection is resolved. A connection closed
///   before it was resolved counts `opened` at close, under its fallback labels.
/// - `closed` is counted once, at [`close`](Self::close) or, if that never happens
///   (a cancelled task), when the recorder is dropped.
/// - Bytes are added as deltas on every [`TcpMetrics::flush_all`] and at close, so
///   the totals are exact after close. Bytes counted before resolution are reported
///   with the first flush after it.
///
/// If the response flags given at close differ from the resolved ones (e.g. `DT`
/// when the maximum duration cut the connection), `closed` is counted under the
/// resolved labels with the final flags, while `opened` and the byte counters keep
/// the series they resolved to. Summed over flags, opened and closed still match.
#[derive(Debug)]
pub struct ConnectionRecorder {
    metrics: TcpMetrics,
    id: u64,
    bytes: Arc<ByteCounters>,
    state: Option<State>,
}

impl ConnectionRecorder {
    pub(crate) fn new(metrics: TcpMetrics, fallback: TcpLabels) -> Self {
        let id = metrics.table().next_id();
        Self {
            metrics,
            id,
            bytes: Arc::new(ByteCounters::default()),
            state: Some(State::Pending(fallback)),
        }
    }

    /// A recorder that reports nothing (telemetry off): already finished, so
    /// `resolve` and `close` do nothing.
    pub(crate) fn inert(metrics: TcpMetrics) -> Self {
        Self {
            metrics,
            id: 0,
            bytes: Arc::new(ByteCounters::default()),
            state: None,
        }
    }

    /// The counters for the copy loop (clone the `Arc` into each direction).
    pub fn byte_counters(&self) -> Arc<ByteCounters> {
        self.bytes.clone()
    }

    /// The label set the connection currently reports under: the resolved one, else
    /// the fallback (e.g. for an access log line). `None` once closed, and always
    /// when telemetry was off at accept.
    pub fn labels(&self) -> Option<&TcpLabels> {
        match &self.state {
            Some(State::Pending(l)) | Some(State::Resolved { labels: l, .. }) => Some(l),
            None => None,
        }
    }

    /// True once [`resolve`](Self::resolve) has been called.
    pub fn is_resolved(&self) -> bool {
        matches!(self.state, Some(State::Resolved { .. }))
    }

    /// Fixes the connection's label set and counts `opened`. Only the first call has
    /// an effect; the connection's series never change afterwards.
    pub fn resolve(&mut self, labels: TcpLabels) {
        if let Some(State::Pending(_)) = self.state {
            let handles = self.activate(&labels);
            self.metrics.table().insert(self.id, self.bytes.clone());
            self.state = Some(State::Resolved { labels, handles });
        }
    }

    /// Fetches the counter handles once, counts `opened`, arms the byte counters.
    fn activate(&self, labels: &TcpLabels) -> Arc<Handles> {
        let handles = self.metrics.handles(labels);
        if let Some(c) = &handles.opened {
            c.inc();
        }
        // Set only here, and `activate` runs once per recorder.
        let _ = self.bytes.counters.set(handles.clone());
        handles
    }

    /// Ends the connection: final byte flush and `closed`, once. `flags` are the
    /// response flags of how it ended (`None`: keep the resolved ones, `-` by default).
    pub fn close(mut self, flags: Option<ResponseFlags>) {
        self.finish(flags);
    }

    fn finish(&mut self, flags: Option<ResponseFlags>) {
        let closed = match self.state.take() {
            None => return,
            Some(State::Pending(fallback)) => {
                let labels = match flags {
                    Some(f) => fallback.with_response_flags(f),
                    None => fallback,
                };
                self.activate(&labels).closed.clone()
            }
            Some(State::Resolved { labels, handles }) => {
                self.metrics.table().remove(self.id);
                match flags {
                    Some(f) if f != labels.response_flags() => {
                        self.metrics.closed_counter(&labels.with_response_flags(f))
                    }
                    _ => handles.closed.clone(),
                }
            }
        };
        self.bytes.flush();
        if let Some(c) = closed {
            c.inc();
        }
    }
}

impl Drop for ConnectionRecorder {
    fn drop(&mut self) {
        self.finish(None);
    }
}
