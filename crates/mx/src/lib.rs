//! Istio's `istio-peer-exchange` metadata exchange ("MX") without I/O: the frame codec
//! (magic, length, `google.protobuf.Any` wrapping a `google.protobuf.Struct`), an incremental
//! [`Decoder`] that accepts any split of the byte stream with bounded memory and tells a
//! non-frame stream apart at its first differing byte, and [`PeerMetadata`], the typed model
//! of the `x-envoy-peer-metadata` Struct with the canonical service/revision rules telemetry
//! labels are built from. Frames are byte-for-byte what Envoy's C++ encoder produces (map keys
//! sorted). The proxy owns sockets, TLS and timeouts; this crate owns the bytes.

mod decoder;
mod frame;
mod metadata;

pub use decoder::{decode_frame, DecodeError, Decoder, PeerPayload, Progress, Step};
pub use frame::{
    decode_payload, decode_payload_struct, encode_frame, encode_struct_frame, exchange_struct,
    PayloadError, KEY_PEER_METADATA, KEY_PEER_METADATA_ID, STRUCT_TYPE_URL,
};
pub use metadata::{
    keys, labels, node_id, owner_for_deployment, ExtraValue, MetadataError, PeerMetadata,
    DEFAULT_CANONICAL_REVISION, DEFAULT_CLUSTER_ID,
};
/// Re-exported so callers build and inspect Structs with the same prost-types version.
pub use prost_types;

/// First four bytes of a frame, big endian.
pub const MAGIC: u32 = 0x3D23_0467;
/// Magic plus length.
pub const HEADER_LEN: usize = 8;
/// Default limit on the payload (bytes after the header).
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;
/// ALPN that turns metadata exchange on.
pub const ALPN_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// ALPN of a mesh connection without metadata exchange.
pub const ALPN_ISTIO: &[u8] = b"istio";
/// What a client sidecar advertises, in preference order.
pub const CLIENT_ALPN: [&[u8]; 2] = [ALPN_PEER_EXCHANGE, ALPN_ISTIO];
