//! Incremental, sans-IO decoder for the first bytes of a peer-exchange stream.

use std::fmt;

use crate::frame::decode_payload;
use crate::metadata::PeerMetadata;
use crate::{HEADER_LEN, MAGIC};

const MAGIC_BYTES: [u8; 4] = MAGIC.to_be_bytes();

/// What a call to [`Decoder::feed`] found.
// One value per connection: boxing the metadata would cost callers more than the size does.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// All of `input` was consumed (buffered); feed more.
    NeedMore,
    /// The stream does not start with the magic. `buffered` holds bytes the decoder took from
    /// earlier calls (possibly empty); the caller must forward `buffered` and then the current
    /// `input` untouched. The decoder is done.
    NotAFrame { buffered: Vec<u8> },
    /// A whole frame was read. `consumed` bytes of the current `input` belonged to the frame;
    /// the rest of `input` is application data. The decoder is done.
    Frame { consumed: usize, peer: PeerPayload },
}

/// The content of a complete frame.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPayload {
    /// The peer's metadata and node id (`None` when absent or empty).
    Peer {
        metadata: PeerMetadata,
        node_id: Option<String>,
    },
    /// A well-formed frame whose payload did not parse (bad protobuf, wrong type_url, missing
    /// key): consumed, peer is unknown, the connection goes on.
    Invalid { reason: String },
}

impl PeerPayload {
    /// Decodes a complete payload; never fails, a bad payload is `Invalid`.
    pub fn from_payload(payload: &[u8]) -> Self {
        match decode_payload(payload) {
            Ok((metadata, node_id)) => PeerPayload::Peer { metadata, node_id },
            Err(e) => PeerPayload::Invalid {
                reason: e.to_string(),
            },
        }
    }

    /// The metadata, when the payload described a peer.
    pub fn metadata(&self) -> Option<&PeerMetadata> {
        match self {
            PeerPayload::Peer { metadata, .. } => Some(metadata),
            PeerPayload::Invalid { .. } => None,
        }
    }

    /// Consumes `self`, keeping the metadata when the payload described a peer.
    pub fn into_metadata(self) -> Option<PeerMetadata> {
        match self {
            PeerPayload::Peer { metadata, .. } => Some(metadata),
            PeerPayload::Invalid { .. } => None,
        }
    }
}

/// A stream error: the connection must close.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Declared length over the limit.
    #[error(
        "istio-peer-exchange frame declares a {declared}-byte payload, over the limit of \
         {max} bytes; closing the connection (raise the proxy setting \
         `limits.mxMaxFrameBytes` if peers legitimately send more metadata)"
    )]
    FrameTooLarge { declared: u32, max: usize },
    /// `feed()` after the decoder finished.
    #[error("istio-peer-exchange decoder fed after it finished (a frame, a non-frame, or an error was already reported)")]
    Finished,
}

#[derive(Debug)]
enum State {
    /// `matched` leading bytes equal the magic's.
    Magic {
        matched: usize,
    },
    /// The magic was read; `got` bytes of the length so far.
    Length {
        bytes: [u8; 4],
        got: usize,
    },
    /// The header was read; the payload is accumulating in `buf` (capacity = declared length).
    Payload {
        declared: usize,
        buf: Vec<u8>,
    },
    Done,
}

/// How far a decoder got, for a log line when a frame stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// `got` of the 8 header bytes.
    Header { got: usize },
    /// The header declared `declared` payload bytes; `got` have arrived.
    Payload { got: usize, declared: usize },
    /// A result was reported.
    Finished,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Header { got } => write!(f, "{got} of {HEADER_LEN} header bytes"),
            Progress::Payload { got, declared } => {
                write!(f, "header complete, {got} of {declared} payload bytes")
            }
            Progress::Finished => f.write_str("finished"),
        }
    }
}

/// Incremental decoder: feed any split of the byte stream (1 byte at a time works).
///
/// The magic is checked byte by byte, so a stream that is not a frame is recognised at its
/// first differing byte. Memory is bounded by `HEADER_LEN + max_frame_len`. Timeouts are
/// the caller's: [`Decoder::is_mid_frame`] and [`Decoder::progress`] tell how far it got.
#[derive(Debug)]
pub struct Decoder {
    max_frame_len: usize,
    state: State,
}

impl Default for Decoder {
    /// A decoder with [`crate::DEFAULT_MAX_FRAME_LEN`].
    fn default() -> Self {
        Decoder::new(crate::DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder {
    /// A decoder accepting payloads of at most `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Decoder {
            max_frame_len,
            state: State::Magic { matched: 0 },
        }
    }

    /// The payload limit this decoder enforces.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Consumes a prefix of `input`. Never allocates more than `HEADER_LEN + max_frame_len`.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, DecodeError> {
        let mut pos = 0;
        loop {
            match &mut self.state {
                State::Done => return Err(DecodeError::Finished),
                State::Magic { matched } => {
                    let earlier = *matched;
                    while *matched < MAGIC_BYTES.len() {
                        let Some(&b) = input.get(pos) else {
                            return Ok(Step::NeedMore);
                        };
                        if b != MAGIC_BYTES[*matched] {
                            self.state = State::Done;
                            return Ok(Step::NotAFrame {
                                buffered: MAGIC_BYTES[..earlier].to_vec(),
                            });
                        }
                        *matched += 1;
                        pos += 1;
                    }
                    self.state = State::Length {
                        bytes: [0; 4],
                        got: 0,
                    };
                }
                State::Length { bytes, got } => {
                    let take = (bytes.len() - *got).min(input.len() - pos);
                    bytes[*got..*got + take].copy_from_slice(&input[pos..pos + take]);
                    *got += take;
                    pos += take;
                    if *got < bytes.len() {
                        return Ok(Step::NeedMore);
                    }
                    let declared = u32::from_be_bytes(*bytes);
                    let Some(len) = usize::try_from(declared)
                        .ok()
                        .filter(|len| *len <= self.max_frame_len)
                    else {
                        self.state = State::Done;
                        return Err(DecodeError::FrameTooLarge {
                            declared,
                            max: self.max_frame_len,
                        });
                    };
                    self.state = State::Payload {
                        declared: len,
                        buf: Vec::with_capacity(len),
                    };
                }
                State::Payload { declared, buf } => {
                    let take = (*declared - buf.len()).min(input.len() - pos);
                    buf.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    if buf.len() < *declared {
                        return Ok(Step::NeedMore);
                    }
                    let peer = PeerPayload::from_payload(buf);
                    self.state = State::Done;
                    return Ok(Step::Frame {
                        consumed: pos,
                        peer,
                    });
                }
            }
        }
    }

    /// Bytes of the stream taken so far and not yet reported (0 once finished).
    pub fn bytes_buffered(&self) -> usize {
        match &self.state {
            State::Magic { matched } => *matched,
            State::Length { got, .. } => MAGIC_BYTES.len() + got,
            State::Payload { buf, .. } => HEADER_LEN + buf.len(),
            State::Done => 0,
        }
    }

    /// True when some bytes of a possible frame arrived but no result was reported yet; a
    /// caller that times out now should close the connection and log [`Decoder::progress`].
    pub fn is_mid_frame(&self) -> bool {
        self.bytes_buffered() > 0
    }

    /// True once a result (frame, non-frame or error) was reported.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// While the stream has matched only part of the magic: those bytes (possibly none).
    ///
    /// When the stream ends (EOF) here, the bytes were never shown to be a frame and the
    /// caller should forward them as application data; past the magic they belong to a
    /// truncated frame.
    pub fn partial_magic(&self) -> Option<&'static [u8]> {
        match &self.state {
            State::Magic { matched } => Some(&MAGIC_BYTES[..*matched]),
            _ => None,
        }
    }

    /// The payload length the header declared, once the header is complete.
    pub fn declared_len(&self) -> Option<usize> {
        match &self.state {
            State::Payload { declared, .. } => Some(*declared),
            _ => None,
        }
    }

    /// How far the decoder got.
    pub fn progress(&self) -> Progress {
        match &self.state {
            State::Done => Progress::Finished,
            State::Payload { declared, buf } => Progress::Payload {
                got: buf.len(),
                declared: *declared,
            },
            _ => Progress::Header {
                got: self.bytes_buffered(),
            },
        }
    }
}

/// Decodes a frame held entirely in `bytes`: `Ok(None)` when `bytes` ends before the frame
/// does. On success, the step tells how many bytes belonged to the frame.
pub fn decode_frame(bytes: &[u8], max_frame_len: usize) -> Result<Option<Step>, DecodeError> {
    match Decoder::new(max_frame_len).feed(bytes)? {
        Step::NeedMore => Ok(None),
        step => Ok(Some(step)),
    }
}

#[cfg(test)]
mod tests;
