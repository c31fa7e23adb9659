//! Property tests: arbitrary metadata survives frame -> decoder with arbitrary splits, and
//! arbitrary bytes get a defined answer.

use std::collections::BTreeMap;

use mx::prost_types::value::Kind;
use mx::prost_types::{ListValue, Struct, Value};
use mx::{
    encode_frame, keys, DecodeError, Decoder, ExtraValue, PeerMetadata, PeerPayload, Step,
    HEADER_LEN,
};
use proptest::prelude::*;

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<f64>().prop_map(Kind::NumberValue),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<String>().prop_map(Kind::StringValue),
    ]
    .prop_map(|k| Value { kind: Some(k) });
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|values| Kind::ListValue(ListValue { values })),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|fields| Kind::StructValue(Struct { fields })),
        ]
        .prop_map(|k| Value { kind: Some(k) })
    })
}

fn any_metadata() -> impl Strategy<Value = PeerMetadata> {
    let strings = (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
    );
    let options = (
        any::<Option<String>>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
    );
    let labels = prop::collection::btree_map(any::<String>(), any::<String>(), 0..6);
    let extra = prop::collection::btree_map(
        any::<String>().prop_filter("typed key", |k| !keys::ALL.contains(&k.as_str())),
        any_value().prop_map(ExtraValue),
        0..4,
    );
    (strings, options, labels, extra).prop_map(
        |(
            (name, namespace, workload_name, cluster_id, owner),
            (identity, region, zone, service_account, mesh_id),
            labels,
            extra,
        )| PeerMetadata {
            name,
            namespace,
            workload_name,
            cluster_id,
            owner,
            labels,
            identity,
            region,
            zone,
            service_account,
            mesh_id,
            extra,
        },
    )
}

/// Feeds `stream` cut at `cuts` (sorted positions); returns the first non-NeedMore step
/// with the bytes of the stream after the frame (rest of that chunk plus later chunks).
fn feed_cut(dec: &mut Decoder, stream: &[u8], cuts: &[usize]) -> (Step, Vec<u8>) {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    bounds.push(0);
    bounds.push(stream.len());
    bounds.sort_unstable();
    for w in bounds.windows(2) {
        let chunk = &stream[w[0]..w[1]];
        match dec.feed(chunk).expect("no stream error expected") {
            Step::NeedMore => {}
            step @ Step::Frame { consumed, .. } => {
                return (step, stream[w[0] + consumed..].to_vec());
            }
            step @ Step::NotAFrame { .. } => return (step, stream[w[0]..].to_vec()),
        }
    }
    (Step::NeedMore, Vec::new())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn metadata_round_trips_through_struct(md in any_metadata()) {
        prop_assert_eq!(PeerMetadata::from_struct(&md.to_struct()), Ok(md));
    }

    #[test]
    fn frame_round_trips_with_arbitrary_splits(
        md in any_metadata(),
        node_id in any::<Option<String>>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        trailing in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let frame = encode_frame(&md, node_id.as_deref());
        let mut stream = frame.clone();
        stream.extend_from_slice(&trailing);
        let mut dec = Decoder::new(frame.len() - HEADER_LEN);
        let (step, rest) = feed_cut(&mut dec, &stream, &cuts);
        let expected_id = node_id.filter(|id| !id.is_empty());
        match step {
            Step::Frame { peer: PeerPayload::Peer { metadata, node_id }, .. } => {
                prop_assert_eq!(metadata, md);
                prop_assert_eq!(node_id, expected_id);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        prop_assert_eq!(rest, trailing);
        prop_assert_eq!(dec.feed(b"x"), Err(DecodeError::Finished));
    }

    #[test]
    fn arbitrary_bytes_get_a_defined_answer(
        stream in prop::collection::vec(any::<u8>(), 0..64),
        magic_prefix in 0usize..=8,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Half the cases start with (part of) a valid header so later states get exercised.
        let mut bytes = mx::MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&24u32.to_be_bytes());
        bytes.truncate(magic_prefix);
        bytes.extend_from_slice(&stream);
        let mut dec = Decoder::new(32);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        bounds.push(0);
        bounds.push(bytes.len());
        bounds.sort_unstable();
        let mut taken = Vec::new();
        for w in bounds.windows(2) {
            let chunk = &bytes[w[0]..w[1]];
            match dec.feed(chunk) {
                Ok(Step::NeedMore) => taken.extend_from_slice(chunk),
                Ok(Step::NotAFrame { buffered }) => {
                    prop_assert_eq!(&buffered, &taken);
                    let mut all = buffered;
                    all.extend_from_slice(&bytes[w[0]..]);
                    prop_assert_eq!(all, bytes.clone());
                    break;
                }
                Ok(Step::Frame { consumed, .. }) => {
                    prop_assert!(consumed <= chunk.len());
                    prop_assert!(w[0] + consumed <= bytes.len());
                    break;
                }
                Err(DecodeError::FrameTooLarge { max, .. }) => {
                    prop_assert_eq!(max, 32);
                    break;
                }
                Err(DecodeError::Finished) => prop_assert!(false, "finished before a result"),
            }
            prop_assert_eq!(dec.bytes_buffered(), taken.len());
        }
    }
}

#[test]
fn label_keys_sort_like_envoy() {
    // A key sorts before its own extension (bytewise), as in Envoy's C++ encoder.
    let md = PeerMetadata {
        labels: BTreeMap::from([
            ("app-x".to_string(), "2".to_string()),
            ("app".to_string(), "1".to_string()),
        ]),
        ..PeerMetadata::default()
    };
    let frame = encode_frame(&md, None);
    let pos = |needle: &[u8]| frame.windows(needle.len()).position(|w| w == needle);
    assert!(pos(b"\x03app").unwrap() < pos(b"\x05app-x").unwrap());
}
