//! The reporting tick on tokio.

use std::time::Duration;

use crate::metrics::TcpMetrics;

/// Flushes `metrics` every `interval` until the returned handle is aborted or the
/// runtime shuts down (dropping the handle does not stop the task). Missed ticks are
/// skipped, not bunched: a flush always reports everything up to now. A zero interval
/// is raised to one millisecond. The final flush at shutdown is the caller's
/// [`TcpMetrics::flush_all`].
pub fn spawn_reporting(metrics: TcpMetrics, interval: Duration) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            metrics.flush_all();
        }
    })
}
