use std::collections::BTreeMap;

use prost::Message;
use prost_types::{Any, Struct};

use super::*;
use crate::{encode_frame, encode_struct_frame, DEFAULT_MAX_FRAME_LEN};

fn ratings() -> PeerMetadata {
    let labels: BTreeMap<String, String> = [
        ("app", "ratings"),
        ("version", "v2"),
        ("service.istio.io/canonical-name", "ratings"),
        ("service.istio.io/canonical-revision", "v2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PeerMetadata::for_deployment(
        "default",
        "ratings-v2",
        "ratings-v2-5b7d9c8f6d-x2k4p",
        labels,
    )
}

const ID: &str = "sidecar~10.0.0.5~ratings-v2-5b7d9c8f6d-x2k4p.default~default.svc.cluster.local";

fn expected_peer() -> PeerPayload {
    PeerPayload::Peer {
        metadata: ratings(),
        node_id: Some(ID.to_string()),
    }
}

fn frame_with_header(payload: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_be_bytes().to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Feeds `chunks` in order and returns the final step, the index of the chunk that produced
/// it, and every intermediate step (all of which must be NeedMore).
fn feed_chunks(dec: &mut Decoder, chunks: &[&[u8]]) -> (Step, usize) {
    for (i, c) in chunks.iter().enumerate() {
        match dec.feed(c).unwrap() {
            Step::NeedMore => continue,
            step => return (step, i),
        }
    }
    (Step::NeedMore, chunks.len())
}

#[test]
fn whole_frame_in_one_call() {
    let frame = encode_frame(&ratings(), Some(ID));
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
    assert_eq!(
        dec.feed(&frame).unwrap(),
        Step::Frame {
            consumed: frame.len(),
            peer: expected_peer()
        }
    );
    assert!(dec.is_finished());
    assert_eq!(dec.feed(b"x"), Err(DecodeError::Finished));
}

#[test]
fn every_split_point_with_trailing_data() {
    let frame = encode_frame(&ratings(), Some(ID));
    let mut stream = frame.clone();
    stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
    for split in 0..=stream.len() {
        let (a, b) = stream.split_at(split);
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        let (step, idx) = feed_chunks(&mut dec, &[a, b]);
        let Step::Frame { consumed, peer } = step else {
            panic!("split {split}: expected a frame, got {step:?}");
        };
        assert_eq!(peer, expected_peer(), "split {split}");
        let chunk = if idx == 0 { a } else { b };
        let offset = if idx == 0 { 0 } else { a.len() };
        assert_eq!(offset + consumed, frame.len(), "split {split}");
        let mut rest = chunk[consumed..].to_vec();
        if idx == 0 {
            rest.extend_from_slice(b);
        }
        assert_eq!(rest, &stream[frame.len()..], "split {split}");
    }
}

#[test]
fn byte_at_a_time() {
    let frame = encode_frame(&ratings(), Some(ID));
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
    for (i, b) in frame.iter().enumerate() {
        let step = dec.feed(std::slice::from_ref(b)).unwrap();
        assert_eq!(
            dec.bytes_buffered(),
            if i + 1 == frame.len() { 0 } else { i + 1 }
        );
        if i + 1 < frame.len() {
            assert_eq!(step, Step::NeedMore, "byte {i}");
            assert!(dec.is_mid_frame());
        } else {
            assert_eq!(
                step,
                Step::Frame {
                    consumed: 1,
                    peer: expected_peer()
                }
            );
            assert!(!dec.is_mid_frame());
        }
    }
}

#[test]
fn empty_input_needs_more() {
    let mut dec = Decoder::default();
    assert_eq!(dec.feed(&[]).unwrap(), Step::NeedMore);
    assert!(!dec.is_mid_frame());
    assert_eq!(dec.progress(), Progress::Header { got: 0 });
}

#[test]
fn magic_mismatch_at_each_position_returns_every_byte() {
    let magic = MAGIC.to_be_bytes();
    for pos in 0..4 {
        for split in 0..=pos {
            // The stream matches the magic up to `pos`, then differs.
            let mut stream = magic[..pos].to_vec();
            stream.push(magic[pos] ^ 0x80);
            stream.extend_from_slice(b"rest");
            let (a, b) = stream.split_at(split);
            let mut dec = Decoder::default();
            let first = dec.feed(a).unwrap();
            let (buffered, current) = match first {
                Step::NotAFrame { buffered } => (buffered, a),
                Step::NeedMore => match dec.feed(b).unwrap() {
                    Step::NotAFrame { buffered } => (buffered, b),
                    other => panic!("pos {pos} split {split}: {other:?}"),
                },
                other => panic!("pos {pos} split {split}: {other:?}"),
            };
            // Detected at the first differing byte: the split containing it reports.
            assert_eq!(current, b, "pos {pos} split {split}");
            assert_eq!(buffered, a, "pos {pos} split {split}");
            let mut forwarded = buffered.clone();
            forwarded.extend_from_slice(current);
            assert_eq!(forwarded, stream);
            assert_eq!(dec.feed(b"more"), Err(DecodeError::Finished));
        }
    }
}

#[test]
fn not_a_frame_byte_at_a_time() {
    // MySQL server greeting: first byte differs.
    let mut dec = Decoder::default();
    assert_eq!(
        dec.feed(&[0x4a]).unwrap(),
        Step::NotAFrame { buffered: vec![] }
    );
    // Three matching bytes in separate calls, then a mismatch.
    let mut dec = Decoder::default();
    for b in &MAGIC.to_be_bytes()[..3] {
        assert_eq!(dec.feed(std::slice::from_ref(b)).unwrap(), Step::NeedMore);
    }
    assert_eq!(dec.progress(), Progress::Header { got: 3 });
    assert_eq!(
        dec.feed(b"\x00abc").unwrap(),
        Step::NotAFrame {
            buffered: vec![0x3d, 0x23, 0x04]
        }
    );
}

#[test]
fn little_endian_magic_is_not_a_frame() {
    let mut dec = Decoder::default();
    assert_eq!(
        dec.feed(&MAGIC.to_le_bytes()).unwrap(),
        Step::NotAFrame { buffered: vec![] }
    );
}

#[test]
fn length_over_limit_is_an_error() {
    let mut header = MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&101u32.to_be_bytes());
    let mut dec = Decoder::new(100);
    for b in &header[..7] {
        assert_eq!(dec.feed(std::slice::from_ref(b)).unwrap(), Step::NeedMore);
    }
    let err = dec.feed(&header[7..]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            declared: 101,
            max: 100
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("101-byte payload"), "{msg}");
    assert!(msg.contains("limit of 100 bytes"), "{msg}");
    assert_eq!(
        msg,
        "istio-peer-exchange frame declares a 101-byte payload, over the limit of 100 bytes; \
         closing the connection (raise the proxy setting `limits.mxMaxFrameBytes` if peers \
         legitimately send more metadata)"
    );
    assert_eq!(dec.feed(b"x"), Err(DecodeError::Finished));

    // At the limit is accepted.
    let mut dec = Decoder::new(100);
    header[4..].copy_from_slice(&100u32.to_be_bytes());
    assert_eq!(dec.feed(&header).unwrap(), Step::NeedMore);
    assert_eq!(dec.declared_len(), Some(100));

    // The largest declarable length is refused by the default limit before any allocation.
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
    header[4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        dec.feed(&header),
        Err(DecodeError::FrameTooLarge {
            declared: u32::MAX,
            ..
        })
    ));
}

#[test]
fn zero_length_payload_is_invalid_and_completes_at_header() {
    let mut stream = frame_with_header(&[]);
    stream.extend_from_slice(b"app");
    let mut dec = Decoder::default();
    let step = dec.feed(&stream).unwrap();
    let Step::Frame {
        consumed: 8,
        peer: PeerPayload::Invalid { reason },
    } = step
    else {
        panic!("{step:?}");
    };
    assert_eq!(
        reason,
        "payload Any has type_url \"\", expected \"type.googleapis.com/google.protobuf.Struct\""
    );
    // Byte at a time: the eighth byte completes it.
    let mut dec = Decoder::default();
    for b in &stream[..7] {
        assert_eq!(dec.feed(std::slice::from_ref(b)).unwrap(), Step::NeedMore);
    }
    assert!(matches!(
        dec.feed(&stream[7..]).unwrap(),
        Step::Frame { consumed: 1, .. }
    ));
}

#[test]
fn garbage_payload_is_invalid() {
    let mut stream = frame_with_header(&[0xff, 0xff, 0xff, 0xff]);
    stream.extend_from_slice(b"tail");
    let step = Decoder::default().feed(&stream).unwrap();
    let Step::Frame {
        consumed: 12,
        peer: PeerPayload::Invalid { reason },
    } = step
    else {
        panic!("{step:?}");
    };
    assert!(
        reason.starts_with("payload is not a google.protobuf.Any: "),
        "{reason}"
    );
}

#[test]
fn wrong_type_url_is_invalid() {
    let s = crate::exchange_struct(&ratings(), Some(ID));
    let any = Any {
        type_url: "type.googleapis.com/google.protobuf.Value".into(),
        value: s.encode_to_vec(),
    };
    let frame = frame_with_header(&any.encode_to_vec());
    let step = Decoder::default().feed(&frame).unwrap();
    assert_eq!(
        step,
        Step::Frame {
            consumed: frame.len(),
            peer: PeerPayload::Invalid {
                reason: "payload Any has type_url \"type.googleapis.com/google.protobuf.Value\", \
                         expected \"type.googleapis.com/google.protobuf.Struct\""
                    .into()
            }
        }
    );
}

#[test]
fn missing_peer_metadata_is_invalid() {
    let frame = encode_struct_frame(&Struct::default());
    let step = Decoder::default().feed(&frame).unwrap();
    assert_eq!(
        step,
        Step::Frame {
            consumed: frame.len(),
            peer: PeerPayload::Invalid {
                reason: "payload Struct has no key \"x-envoy-peer-metadata\"".into()
            }
        }
    );
}

#[test]
fn progress_reports_payload_position() {
    let frame = encode_frame(&ratings(), None);
    let mut dec = Decoder::default();
    assert_eq!(dec.feed(&frame[..20]).unwrap(), Step::NeedMore);
    let declared = frame.len() - HEADER_LEN;
    assert_eq!(dec.declared_len(), Some(declared));
    assert_eq!(dec.progress(), Progress::Payload { got: 12, declared });
    assert_eq!(
        dec.progress().to_string(),
        format!("header complete, 12 of {declared} payload bytes")
    );
    assert_eq!(dec.bytes_buffered(), 20);
    assert!(dec.is_mid_frame());
}

#[test]
fn decode_frame_one_shot() {
    let frame = encode_frame(&ratings(), Some(ID));
    assert_eq!(
        decode_frame(&frame[..frame.len() - 1], DEFAULT_MAX_FRAME_LEN),
        Ok(None)
    );
    assert_eq!(
        decode_frame(&frame, DEFAULT_MAX_FRAME_LEN),
        Ok(Some(Step::Frame {
            consumed: frame.len(),
            peer: expected_peer()
        }))
    );
}

#[test]
fn never_allocates_beyond_declared_length() {
    let frame = encode_frame(&ratings(), Some(ID));
    let mut dec = Decoder::new(frame.len() - HEADER_LEN);
    assert_eq!(dec.feed(&frame[..frame.len() - 1]).unwrap(), Step::NeedMore);
    let State::Payload { buf, declared } = &dec.state else {
        panic!("{:?}", dec.state);
    };
    assert_eq!(buf.capacity(), *declared);
}

#[test]
fn partial_magic_until_the_magic_is_complete() {
    let mut dec = Decoder::default();
    assert_eq!(dec.partial_magic(), Some(&[][..]));
    dec.feed(&[0x3d, 0x23]).unwrap();
    assert_eq!(dec.partial_magic(), Some(&[0x3d, 0x23][..]));
    dec.feed(&[0x04, 0x67, 0x00]).unwrap();
    assert_eq!(dec.partial_magic(), None);
    assert_eq!(dec.progress(), Progress::Header { got: 5 });
    assert_eq!(dec.progress().to_string(), "5 of 8 header bytes");
}
