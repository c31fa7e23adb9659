//! A connection past its setup. The listeners' setup (sniffing, handshakes, connects,
//! the metadata frame write) runs in its own boxed future, which is freed when it hands
//! over an [`Established`]; an open connection then carries only this, its relay and
//! the task around them, not the locals of every phase it went through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use telemetry::{
    ByteCounters, ConnectionRecorder, DestinationService, ResponseFlags, SecurityPolicy, TcpLabels,
    Workload,
};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::relay::Limits;
use super::{pump_armed, AccessLog, Direction, LiveGuard, MxRead, MxSide, PumpEnd, PumpLimits};
use super::{ClientTls, ServerTls};
use crate::outbound::ActiveGuard;
use crate::sidecar::Shared;
use crate::stream::EitherStream;

/// The two streams of a connection, as the listeners hand them over.
pub(crate) enum Streams {
    /// The local client, and the upstream: plaintext, or TLS to a peer sidecar.
    Outbound(TcpStream, EitherStream<TcpStream, ClientTls>),
    /// The downstream (plaintext, or a peer sidecar's TLS), and the local app.
    Inbound(EitherStream<TcpStream, ServerTls>, TcpStream),
}

/// Which side of Istio's metrics a connection reports.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reporter {
    /// `reporter="source"`: outbound.
    Source,
    /// `reporter="destination"`: inbound, with how the peer connected.
    Destination(SecurityPolicy),
}

/// Where the peer's metadata frame comes from, and its limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MxParams {
    pub(crate) side: MxSide,
    /// `u32` like the configuration's `mxMaxFrameBytes`: this sits in every open
    /// connection's future.
    pub(crate) max_frame_len: u32,
    pub(crate) timeout: Duration,
}

impl MxParams {
    /// Reading the frame from `side` under the configured limits.
    pub(crate) fn new(side: MxSide, limits: &crate::config::LimitsConfig) -> Self {
        Self {
            side,
            max_frame_len: limits.mx_max_frame_bytes,
            timeout: limits.mx_timeout,
        }
    }
}

/// What is known of the peer, and the recorder its labels go to.
pub(crate) struct Peer {
    pub(crate) recorder: ConnectionRecorder,
    pub(crate) reporter: Reporter,
    pub(crate) service: Arc<DestinationService>,
    /// Identities and the peer's name: mTLS only, so boxed, and plaintext connections
    /// carry a null pointer instead of three empty strings.
    pub(crate) names: Option<Box<Names>>,
}

/// What mutual TLS and the metadata exchange name.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Our own identity as presented.
    pub(crate) own_identity: Option<String>,
    /// The peer's verified SPIFFE id.
    pub(crate) identity: Option<String>,
    /// `workload.namespace`, once the metadata exchange named the peer.
    pub(crate) peer: Option<String>,
}

impl Names {
    /// `None` when TLS named no one (plaintext).
    pub(crate) fn of(own_identity: Option<String>, identity: Option<String>) -> Option<Box<Self>> {
        (own_identity.is_some() || identity.is_some()).then(|| {
            Box::new(Self {
                own_identity,
                identity,
                peer: None,
            })
        })
    }
}

impl Peer {
    /// Applies what the metadata exchange (or its absence) told about the peer: the
    /// live table's entry, the access log's peer name and the connection's labels.
    pub(crate) fn resolve(
        &mut self,
        shared: &Shared,
        guard: &LiveGuard,
        metadata: Option<&mx::PeerMetadata>,
        unknown_reason: Option<&str>,
    ) {
        let unknown_peer = Workload {
            principal: self.names.as_ref().and_then(|n| n.identity.clone()),
            ..Workload::unknown()
        };
        let (workload, name) = guard
            .entry()
            .note_peer(metadata, unknown_reason, &unknown_peer);
        if name.is_some() {
            self.names.get_or_insert_default().peer = name;
        }
        let own = self.names.as_ref().and_then(|n| n.own_identity.as_deref());
        let local = shared.local.workload(own);
        self.recorder.resolve(match self.reporter {
            Reporter::Source => {
                TcpLabels::outbound(&local, &workload, &self.service, ResponseFlags::None)
            }
            Reporter::Destination(policy) => TcpLabels::inbound(
                &local,
                &workload,
                &self.service,
                policy,
                ResponseFlags::None,
            ),
        });
    }
}

/// Counts held for the connection's life, released when it ends. Never read: holding
/// them is the point, and dropping them releases them.
#[derive(Default)]
#[allow(dead_code)]
pub(crate) struct Holds {
    /// A `limits.maxConnections` permit.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// The service port's active-connection count.
    pub(crate) port: Option<ActiveGuard>,
    /// The endpoint's active-connection count.
    pub(crate) endpoint: Option<ActiveGuard>,
}

/// A connection ready to copy: its streams and everything its copy phase and its close
/// need, owned.
pub(crate) struct Established {
    pub(crate) shared: Arc<Shared>,
    pub(crate) streams: Streams,
    /// Read the peer's metadata frame off the front of its stream first.
    pub(crate) mx: Option<MxParams>,
    pub(crate) limits: PumpLimits,
    pub(crate) bytes: Arc<ByteCounters>,
    pub(crate) guard: LiveGuard,
    pub(crate) peer: Peer,
    pub(crate) holds: Holds,
}

impl Established {
    /// Copies until the connection ends, then records its close and writes its access
    /// log line.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run(mut self) -> impl Future<Output = ()> + Send {
        // Started here, so the future keeps a pointer to them rather than their
        // configuration.
        let limits = Limits::new(self.limits, &self.bytes);
        // An async block that uses the captured `self` in place: an `async fn` would
        // move its argument into a local and so store the connection twice in the
        // future that every open connection carries.
        async move {
            let (peer, shared, guard) = (&mut self.peer, &self.shared, &self.guard);
            // Log lines name the connection by its live-table entry.
            let ctx: &(dyn std::fmt::Display + Sync) = guard.entry();
            let mut on_result = |metadata: Option<mx::PeerMetadata>, reason: Option<String>| {
                peer.resolve(shared, guard, metadata.as_ref(), reason.as_deref());
            };
            let mx = self.mx.map(|p| MxRead {
                side: p.side,
                max_frame_len: p.max_frame_len as usize,
                timeout: p.timeout,
                on_result: &mut on_result,
            });
            let (bytes, cut) = (&*self.bytes, &self.shared.cut);
            let end = match self.streams {
                Streams::Outbound(down, up) => {
                    pump_armed(down, up, bytes, mx, limits, cut, ctx).await
                }
                Streams::Inbound(down, up) => {
                    pump_armed(down, up, bytes, mx, limits, cut, ctx).await
                }
            };
            let flags = end_flags(&end, self.guard.entry());
            close(self.peer, &self.guard, &self.bytes, Some(flags));
            // Named so the block captures them: a field it did not use would be dropped
            // when `run` returns, before the copy.
            drop((self.guard, self.holds));
        }
    }

    /// Ends a connection that failed before its copy began (the metadata frame or a
    /// replayed request head could not be written): its close is recorded without
    /// response flags, as for a connection reset mid-stream.
    pub(crate) fn abandon(self) {
        close(self.peer, &self.guard, &self.bytes, None);
    }

    /// Applies the peer's metadata, or its absence; see [`Peer::resolve`].
    pub(crate) fn resolve_peer(
        &mut self,
        metadata: Option<&mx::PeerMetadata>,
        unknown_reason: Option<&str>,
    ) {
        self.peer
            .resolve(&self.shared, &self.guard, metadata, unknown_reason);
    }
}

/// Records a connection's close (under `flags`, when given) and writes its access log
/// line.
fn close(peer: Peer, guard: &LiveGuard, bytes: &ByteCounters, flags: Option<ResponseFlags>) {
    let entry = guard.entry();
    let Peer {
        recorder,
        reporter,
        service,
        names,
        ..
    } = peer;
    let names = names.as_deref();
    let log = AccessLog {
        direction: match reporter {
            Reporter::Source => Direction::Outbound,
            Reporter::Destination(_) => Direction::Inbound,
        },
        source: entry.source(),
        destination: entry.destination(),
        upstream: entry.upstream(),
        service: &service.fqdn,
        peer: names
            .and_then(|n| n.peer.as_deref().or(n.identity.as_deref()))
            .unwrap_or("unknown"),
        bytes,
        started: entry.started(),
        flags: flags.unwrap_or(ResponseFlags::None),
    };
    recorder.close(flags);
    log.emit();
}

/// Response flags for how a pump ended, logging the unusual ends.
pub(crate) fn end_flags(end: &PumpEnd, ctx: &dyn std::fmt::Display) -> ResponseFlags {
    match end {
        PumpEnd::Done => ResponseFlags::None,
        PumpEnd::Cut => {
            tracing::info!(conn = %ctx, "connection closed at the drain deadline");
            ResponseFlags::None
        }
        PumpEnd::Idle => {
            tracing::info!(
                conn = %ctx,
                "connection closed after limits.idleTimeout without data"
            );
            ResponseFlags::None
        }
        PumpEnd::DurationLimit => {
            tracing::info!(
                conn = %ctx,
                "connection closed at limits.maxConnectionDuration"
            );
            ResponseFlags::DurationTimeout
        }
        PumpEnd::Exchange(e) => {
            tracing::warn!(conn = %ctx, error = %e, "metadata exchange failed");
            ResponseFlags::None
        }
    }
}
