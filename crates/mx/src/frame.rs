//! Frame encoding, and parsing of a complete payload (the `google.protobuf.Any`).

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Any, Struct, Value};

use crate::metadata::{kind_name, string_value, MetadataError, PeerMetadata};
use crate::{HEADER_LEN, MAGIC};

/// `Any.type_url` of the payload.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// Key of the peer metadata Struct in the exchanged Struct.
pub const KEY_PEER_METADATA: &str = "x-envoy-peer-metadata";
/// Key of the node id in the exchanged Struct.
pub const KEY_PEER_METADATA_ID: &str = "x-envoy-peer-metadata-id";

/// Why a complete, size-checked payload does not describe a peer.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    #[error("payload is not a google.protobuf.Any: {0}")]
    NotAny(String),
    #[error("payload Any has type_url {found:?}, expected {STRUCT_TYPE_URL:?}")]
    WrongTypeUrl { found: String },
    #[error("payload Any value is not a google.protobuf.Struct: {0}")]
    NotStruct(String),
    #[error("payload Struct has no key {KEY_PEER_METADATA:?}")]
    MissingPeerMetadata,
    #[error("payload key {KEY_PEER_METADATA:?} must be a struct, found {found}")]
    PeerMetadataNotAStruct { found: &'static str },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// The exchanged Struct: `x-envoy-peer-metadata` and, when `node_id` is non-empty,
/// `x-envoy-peer-metadata-id`.
pub fn exchange_struct(peer: &PeerMetadata, node_id: Option<&str>) -> Struct {
    let mut s = Struct::default();
    s.fields.insert(
        KEY_PEER_METADATA.to_owned(),
        Value {
            kind: Some(Kind::StructValue(peer.to_struct())),
        },
    );
    if let Some(id) = node_id.filter(|id| !id.is_empty()) {
        s.fields
            .insert(KEY_PEER_METADATA_ID.to_owned(), string_value(id));
    }
    s
}

/// Encodes a whole frame (header + Any) carrying `peer` and, when non-empty, `node_id`.
pub fn encode_frame(peer: &PeerMetadata, node_id: Option<&str>) -> Vec<u8> {
    encode_struct_frame(&exchange_struct(peer, node_id))
}

/// Encodes a whole frame around an arbitrary Struct (used for vectors and tests).
pub fn encode_struct_frame(s: &Struct) -> Vec<u8> {
    let any = Any {
        type_url: STRUCT_TYPE_URL.to_owned(),
        value: s.encode_to_vec(),
    };
    let len = any.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    // A payload over 4 GiB cannot be framed; saturating makes every receiver reject it
    // as too large instead of misreading a wrapped length.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&any.encode_to_vec());
    out
}

/// Parses a payload into the exchanged Struct, checking the Any wrapper.
pub fn decode_payload_struct(payload: &[u8]) -> Result<Struct, PayloadError> {
    let any = Any::decode(payload).map_err(|e| PayloadError::NotAny(e.to_string()))?;
    if any.type_url != STRUCT_TYPE_URL {
        return Err(PayloadError::WrongTypeUrl {
            found: any.type_url,
        });
    }
    Struct::decode(any.value.as_slice()).map_err(|e| PayloadError::NotStruct(e.to_string()))
}

/// Parses a payload into the peer's metadata and node id.
///
/// The node id is informational (receivers ignore it, as Envoy does): a missing, empty or
/// non-string `x-envoy-peer-metadata-id` reads as `None`. Other top-level keys are ignored.
pub fn decode_payload(payload: &[u8]) -> Result<(PeerMetadata, Option<String>), PayloadError> {
    let s = decode_payload_struct(payload)?;
    let md = match s.fields.get(KEY_PEER_METADATA) {
        None => return Err(PayloadError::MissingPeerMetadata),
        Some(Value {
            kind: Some(Kind::StructValue(md)),
        }) => PeerMetadata::from_struct(md)?,
        Some(other) => {
            return Err(PayloadError::PeerMetadataNotAStruct {
                found: kind_name(other),
            })
        }
    };
    let node_id = match s.fields.get(KEY_PEER_METADATA_ID) {
        Some(Value {
            kind: Some(Kind::StringValue(id)),
        }) if !id.is_empty() => Some(id.clone()),
        _ => None,
    };
    Ok((md, node_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(frame: &[u8]) -> &[u8] {
        &frame[HEADER_LEN..]
    }

    #[test]
    fn header_is_magic_then_length() {
        let frame = encode_frame(&PeerMetadata::default(), None);
        assert_eq!(&frame[..4], &[0x3D, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        assert_eq!(len, frame.len() - HEADER_LEN);
    }

    #[test]
    fn empty_node_id_is_not_sent() {
        let s = exchange_struct(&PeerMetadata::default(), Some(""));
        assert!(!s.fields.contains_key(KEY_PEER_METADATA_ID));
        let s = exchange_struct(&PeerMetadata::default(), Some("sidecar~x"));
        assert_eq!(s.fields[KEY_PEER_METADATA_ID], string_value("sidecar~x"));
    }

    #[test]
    fn payload_errors_name_the_problem() {
        assert!(matches!(
            decode_payload(&[0xff, 0xff, 0xff, 0xff]),
            Err(PayloadError::NotAny(_))
        ));
        let wrong = Any {
            type_url: "type.googleapis.com/google.protobuf.Value".into(),
            value: vec![],
        };
        let err = decode_payload(&wrong.encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload Any has type_url \"type.googleapis.com/google.protobuf.Value\", \
             expected \"type.googleapis.com/google.protobuf.Struct\""
        );
        let not_struct = Any {
            type_url: STRUCT_TYPE_URL.into(),
            value: vec![0x0a, 0x05, 0x01],
        };
        assert!(matches!(
            decode_payload(&not_struct.encode_to_vec()),
            Err(PayloadError::NotStruct(_))
        ));
        let no_md = encode_struct_frame(&Struct::default());
        assert_eq!(
            decode_payload(payload_of(&no_md)),
            Err(PayloadError::MissingPeerMetadata)
        );
        let mut s = Struct::default();
        s.fields.insert(KEY_PEER_METADATA.into(), string_value("x"));
        assert_eq!(
            decode_payload(payload_of(&encode_struct_frame(&s))),
            Err(PayloadError::PeerMetadataNotAStruct { found: "string" })
        );
    }

    #[test]
    fn non_string_node_id_is_ignored() {
        let mut s = exchange_struct(&PeerMetadata::default(), None);
        s.fields.insert(
            KEY_PEER_METADATA_ID.into(),
            Value {
                kind: Some(Kind::NumberValue(7.0)),
            },
        );
        let (md, id) = decode_payload(payload_of(&encode_struct_frame(&s))).unwrap();
        assert_eq!(md, PeerMetadata::default());
        assert_eq!(id, None);
    }
}
