//! Metadata exchange (`istio-peer-exchange`) over an established stream.
//!
//! Each side writes its own frame before any application byte and strips the peer's
//! frame from the front of what it reads. Reading the peer's frame is part of the
//! peer-to-local copy direction, so the other direction never waits for it (frames may
//! cross, and server-first protocols work). Bytes after the frame are forwarded, never
//! lost; a stream that does not start with the magic is forwarded untouched.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use mx::{Decoder, PeerMetadata, Progress, Step};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::NodeConfig;
use crate::copy::AdaptiveBuffer;

/// Errors that end a connection during metadata exchange.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The peer declared a frame over the limit.
    #[error(transparent)]
    TooLarge(mx::DecodeError),
    /// The peer's frame started but did not complete in time.
    #[error("istio-peer-exchange frame from the peer stalled after {progress} (limit {timeout:?}); closing the connection")]
    Stalled {
        /// How far the frame got.
        progress: Progress,
        /// The time limit.
        timeout: Duration,
    },
    /// The peer closed the stream half-way through its frame.
    #[error("peer closed the stream in the middle of its istio-peer-exchange frame ({progress}); closing the connection")]
    Truncated {
        /// How far the frame got.
        progress: Progress,
    },
    /// Reading or writing failed.
    #[error("I/O error during istio-peer-exchange: {0}")]
    Io(#[from] io::Error),
    /// Writing our own frame took longer than the limit.
    #[error("writing our istio-peer-exchange frame timed out after {0:?}; closing the connection")]
    WriteTimeout(Duration),
}

/// This sidecar's identity as metadata: what it sends and what it reports as its side.
#[derive(Clone, Debug)]
pub struct LocalNode {
    metadata: PeerMetadata,
    frame: Vec<u8>,
    workload: telemetry::Workload,
}

impl LocalNode {
    /// Builds the node from the configuration. Canonical name and revision labels are
    /// added when missing, as Istio's injector does for pods.
    pub fn new(node: &NodeConfig) -> Self {
        let mut labels = node.labels.clone();
        let probe = telemetry::Workload {
            name: node.workload_name.clone(),
            labels: labels.clone(),
            ..telemetry::Workload::default()
        };
        let service = probe
            .canonical_service()
            .unwrap_or(&node.workload_name)
            .to_owned();
        let revision = probe.canonical_revision().to_owned();
        labels
            .entry(telemetry::CANONICAL_NAME_LABEL.to_owned())
            .or_insert(service);
        labels
            .entry(telemetry::CANONICAL_REVISION_LABEL.to_owned())
            .or_insert(revision);

        let mut metadata =
            PeerMetadata::for_deployment(&node.namespace, &node.workload_name, node.pod(), labels);
        metadata.cluster_id = node.cluster_id.clone();
        if let Some(owner) = &node.owner {
            metadata.owner = owner.clone();
        }
        metadata.mesh_id = node.mesh_id.clone();
        metadata.region = node.region.clone();
        metadata.zone = node.zone.clone();
        let node_id = node
            .ip
            .map(|ip: IpAddr| mx::node_id(ip, node.pod(), &node.namespace));
        let frame = mx::encode_frame(&metadata, node_id.as_deref());
        let workload = workload_of(&metadata, None);
        Self {
            metadata,
            frame,
            workload,
        }
    }

    /// The metadata sent to peers.
    pub fn metadata(&self) -> &PeerMetadata {
        &self.metadata
    }

    /// The encoded frame.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The local side of the metrics; `principal` only under mTLS. Borrowed without
    /// one: a plaintext connection then holds no copy of the pod's labels for its life.
    pub fn workload(&self, principal: Option<&str>) -> std::borrow::Cow<'_, telemetry::Workload> {
        match principal {
            None => std::borrow::Cow::Borrowed(&self.workload),
            Some(p) => {
                let mut w = self.workload.clone();
                w.principal = Some(p.to_owned());
                std::borrow::Cow::Owned(w)
            }
        }
    }
}

/// A workload for the metrics from MX metadata and a verified principal.
pub fn workload_of(metadata: &PeerMetadata, principal: Option<&str>) -> telemetry::Workload {
    telemetry::Workload {
        name: metadata.workload_name.clone(),
        namespace: metadata.namespace.clone(),
        cluster: metadata.cluster_id.clone(),
        labels: metadata.labels.clone(),
        principal: principal.map(str::to_owned),
    }
}

/// Writes our frame, within `timeout`.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    frame: &[u8],
    timeout: Duration,
) -> Result<(), ExchangeError> {
    let write = async {
        writer.write_all(frame).await?;
        writer.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ExchangeError::WriteTimeout(timeout)),
    }
}

/// What reading the front of the peer's stream found.
#[derive(Debug)]
pub struct PeerFrame {
    /// The peer's metadata; `None` when there was no frame or its payload was invalid.
    pub peer: Option<PeerMetadata>,
    /// Why the peer is unknown, for the log (`None` when known).
    pub unknown_reason: Option<String>,
    /// Application bytes read past (or instead of) the frame; forward them first.
    pub leftover: Vec<u8>,
    /// The peer closed its side before sending any application byte.
    pub eof: bool,
}

/// Reads the peer's frame from the front of `reader`.
///
/// `on_quiet` is called once if nothing at all arrives within `timeout` (the peer may be
/// waiting for us, e.g. a plaintext server-first protocol): callers resolve the
/// connection's labels with an unknown peer then, and reading continues. A frame that
/// has started (its full magic arrived) must complete within `timeout` of its first
/// byte. A stream that stops after a partial magic is application data: it is
/// forwarded on timeout or end of stream.
pub async fn read_peer_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    max_frame_len: usize,
    timeout: Duration,
    on_quiet: &mut (dyn FnMut() + Send),
) -> Result<PeerFrame, ExchangeError> {
    let mut decoder = Decoder::new(max_frame_len);
    let mut buf = AdaptiveBuffer::new();
    let mut quiet_reported = false;
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = if decoder.is_mid_frame() || !quiet_reported {
            tokio::time::timeout_at(deadline, buf.read_from(reader))
                .await
                .ok()
        } else {
            Some(buf.read_from(reader).await)
        };
        let n = match read {
            None if decoder.is_mid_frame() => {
                let progress = decoder.progress();
                if let Some(magic) = partial_magic(progress) {
                    return Ok(not_a_frame(magic, false, "no istio-peer-exchange frame"));
                }
                return Err(ExchangeError::Stalled { progress, timeout });
            }
            None => {
                quiet_reported = true;
                on_quiet();
                continue;
            }
            Some(Ok(0)) => return end_of_stream(&decoder),
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return end_of_stream(&decoder)
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(n)) => n,
        };
        let was_mid_frame = decoder.is_mid_frame();
        let input = buf.filled(n);
        match decoder.feed(input) {
            Ok(Step::NeedMore) => {
                if !was_mid_frame {
                    // The frame's time limit runs from its first byte.
                    deadline = tokio::time::Instant::now() + timeout;
                }
            }
            Ok(Step::NotAFrame { buffered }) => {
                let mut leftover = buffered;
                leftover.extend_from_slice(input);
                return Ok(PeerFrame {
                    peer: None,
                    unknown_reason: Some(
                        "the peer's stream does not start with an istio-peer-exchange frame".into(),
                    ),
                    leftover,
                    eof: false,
                });
            }
            Ok(Step::Frame { consumed, peer }) => {
                let leftover = input.get(consumed..).unwrap_or_default().to_vec();
                return Ok(frame_result(peer, leftover));
            }
            Err(e) => return Err(ExchangeError::TooLarge(e)),
        }
    }
}

/// What a complete frame tells, with the application bytes read past it.
pub(crate) fn frame_result(peer: mx::PeerPayload, leftover: Vec<u8>) -> PeerFrame {
    match peer {
        mx::PeerPayload::Peer { metadata, .. } => PeerFrame {
            peer: Some(metadata),
            unknown_reason: None,
            leftover,
            eof: false,
        },
        mx::PeerPayload::Invalid { reason } => PeerFrame {
            peer: None,
            unknown_reason: Some(format!(
                "the peer's istio-peer-exchange frame was consumed but its payload is invalid: {reason}"
            )),
            leftover,
            eof: false,
        },
    }
}

/// The bytes of a partial magic (fewer than 4 matched): they may be application data.
pub(crate) fn partial_magic(progress: Progress) -> Option<Vec<u8>> {
    match progress {
        Progress::Header { got } if got < 4 => Some(mx::MAGIC.to_be_bytes()[..got].to_vec()),
        _ => None,
    }
}

pub(crate) fn not_a_frame(leftover: Vec<u8>, eof: bool, why: &str) -> PeerFrame {
    PeerFrame {
        peer: None,
        unknown_reason: Some(why.to_owned()),
        leftover,
        eof,
    }
}

pub(crate) fn end_of_stream(decoder: &Decoder) -> Result<PeerFrame, ExchangeError> {
    let progress = decoder.progress();
    if !decoder.is_mid_frame() {
        return Ok(not_a_frame(
            Vec::new(),
            true,
            "the peer closed its side without sending an istio-peer-exchange frame",
        ));
    }
    match partial_magic(progress) {
        Some(magic) => Ok(not_a_frame(magic, true, "no istio-peer-exchange frame")),
        None => Err(ExchangeError::Truncated { progress }),
    }
}

#[cfg(test)]
mod tests;
