//! Feeds arbitrary bytes, cut into arbitrary chunks, to the MX decoder.
//!
//! Input: one control byte, then the stream. The control byte seeds the chunk sizes and, with
//! its high bit, picks a small frame limit so the too-large path is reached too. Seed corpus:
//! each fixture vector prefixed with a zero byte (see fuzz/README.md).
//!
//! Invariants: no panic; `NotAFrame` hands back every byte taken so far, so the forwarded
//! bytes equal the stream; a `Frame` consumes at most the current chunk; the bytes the decoder
//! reports buffered equal what it took; nothing is accepted after a result; a decoded peer
//! re-encodes to a frame that decodes to the same peer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mx::{encode_frame, DecodeError, Decoder, PeerPayload, Step, DEFAULT_MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max = if control & 0x80 != 0 { 64 } else { DEFAULT_MAX_FRAME_LEN };
    let mut dec = Decoder::new(max);
    let mut rng = u32::from(control) | 0x1_0000;
    let mut pos = 0;
    let mut taken: Vec<u8> = Vec::new();
    loop {
        // xorshift: cheap, deterministic chunk sizes from 0 to 16 bytes.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let len = ((rng % 17) as usize).min(stream.len() - pos);
        let chunk = &stream[pos..pos + len];
        match dec.feed(chunk) {
            Ok(Step::NeedMore) => {
                taken.extend_from_slice(chunk);
                assert_eq!(dec.bytes_buffered(), taken.len());
                if pos + len == stream.len() {
                    assert!(!dec.is_finished());
                    return;
                }
            }
            Ok(Step::NotAFrame { buffered }) => {
                assert_eq!(buffered, taken);
                let mut forwarded = buffered;
                forwarded.extend_from_slice(&stream[pos..]);
                assert_eq!(forwarded, stream);
                break;
            }
            Ok(Step::Frame { consumed, peer }) => {
                assert!(consumed <= chunk.len());
                assert!(taken.len() + consumed <= max + mx::HEADER_LEN);
                if let PeerPayload::Peer { metadata, node_id } = peer {
                    let again = encode_frame(&metadata, node_id.as_deref());
                    let step = Decoder::new(usize::MAX).feed(&again);
                    assert_eq!(
                        step,
                        Ok(Step::Frame {
                            consumed: again.len(),
                            peer: PeerPayload::Peer { metadata, node_id },
                        })
                    );
                }
                break;
            }
            Err(DecodeError::FrameTooLarge { declared, max: m }) => {
                assert_eq!(m, max);
                assert!(declared as usize > max);
                break;
            }
            Err(DecodeError::Finished) => panic!("Finished before any result"),
        }
        pos += len;
    }
    assert!(dec.is_finished());
    assert_eq!(dec.bytes_buffered(), 0);
    assert_eq!(dec.feed(b"x"), Err(DecodeError::Finished));
});
