//! One container's life inside its pod: started, probed for readiness for as long as it
//! runs, restarted with backoff when it exits, stopped on request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use super::{Recorder, GRACE};
use crate::netns;
use crate::process::{self, Backoff, Launch};

/// How a container shows it is ready.
pub(super) enum Probe {
    /// `GET /healthz/ready` answers 200 (the sidecar).
    Http(SocketAddr),
    /// Every port accepts a connection on the pod's loopback (apps); none: at once.
    Tcp(String, Vec<u16>),
}

impl Probe {
    async fn ready(&self) -> bool {
        match self {
            Probe::Http(addr) => http_ok(*addr).await,
            Probe::Tcp(_, ports) if ports.is_empty() => true,
            Probe::Tcp(netns_name, ports) => {
                let ports = ports.clone();
                let name = netns_name.clone();
                // Probing inside the pod's loopback keeps probes out of the sidecar's
                // metrics (Istio rewrites its probes to its agent for the same reason).
                tokio::task::spawn_blocking(move || {
                    netns::run_in(&name, move || {
                        ports.iter().all(|p| {
                            std::net::TcpStream::connect_timeout(
                                &SocketAddr::from(([127, 0, 0, 1], *p)),
                                Duration::from_millis(500),
                            )
                            .is_ok()
                        })
                    })
                    .unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        }
    }
}

async fn http_ok(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Runs a container until `stop`: restarts it with backoff when it exits, marks it
/// ready when its probe passes.
pub(super) async fn keep_running(
    launch: Launch,
    probe: Probe,
    index: usize,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let mut child = match process::spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                recorder.container(index, |c| c.last_exit = Some(e.to_string()));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next(Duration::ZERO)) => continue,
                }
            }
        };
        let group = child.id().and_then(|p| i32::try_from(p).ok());
        recorder.container(index, |c| c.running = true);
        let mut ready = false;
        let status = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    process::stop(&mut child, GRACE).await;
                    recorder.container(index, |c| { c.running = false; c.ready = false; });
                    return;
                }
                status = child.wait() => break status,
                _ = tokio::time::sleep(Duration::from_millis(if ready { 5000 } else { 200 })) => {
                    // Probed for the container's whole life, as Kubernetes' readiness probe:
                    // a container that stops answering stops receiving traffic.
                    let now = probe.ready().await;
                    if now != ready {
                        ready = now;
                        recorder.container(index, |c| c.ready = now);
                    }
                    let log = launch.log.clone();
                    let _ = tokio::task::spawn_blocking(move || process::trim_log(&log)).await;
                }
            }
        };
        // Helpers the program left in its group (e.g. mariadbd) go with it.
        if let Some(pid) = group {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let exit = match status {
            Ok(s) => process::describe_exit(s),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        // The ended instance's log is the "previous" one (`weir logs -p`) from now on.
        process::rotate_log(&launch.log);
        let delay = backoff.next(started.elapsed());
        tracing::warn!(container = %launch.log.display(), %exit, ?delay, "container exited; restarting");
        recorder.container(index, |c| {
            c.running = false;
            c.ready = false;
            c.restarts += 1;
            c.last_exit = Some(exit);
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
