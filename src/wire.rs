//! The wire protocol: frames, their bincode 2 encoding, the 4-byte
//! big-endian length prefix, and the size limits, checked before anything
//! is allocated. Sans-IO: the node and client feed it bytes.
//!
//! Every connection (client or peer) carries one long-lived bidirectional
//! stream, opened by the dialing side, whose first frame is `Hello`.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminCommand, AdminReply};
use crate::envelope::{Envelope, MessageId, SealBatch};
use crate::label::Nation;
use crate::resolution::SignedResolution;
use crate::routing::announce::SignedAnnouncement;

/// The TLS ALPN protocol: a client or peer speaking anything else fails
/// the handshake.
pub const ALPN: &[u8] = b"entente/1";

/// The frame-format version carried in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload a publisher may send.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// The largest frame accepted: a maximal payload plus room for the
/// envelope's other fields.
pub const MAX_FRAME: usize = MAX_PAYLOAD + 64 * 1024;

/// The size of a frame's length prefix, in bytes (a big-endian `u32`).
pub const LENGTH_PREFIX: usize = 4;

/// QUIC application close codes, so the other side can tell why.
pub mod close {
    /// A normal close: the connection is done with.
    pub const NORMAL: u32 = 0;
    /// The peer was not admitted: another nation's principal, unknown, or
    /// not a configured peer.
    pub const REFUSED: u32 = 1;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 2;
    /// The peer read too slowly and its queue filled up.
    pub const SLOW_CONSUMER: u32 = 3;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// A newer link from the same peer took this one's place: a peer has
    /// one inbound link at a time.
    pub const REPLACED: u32 = 5;
    /// The node's policy no longer admits the peer: its nation was cut
    /// out, its certificate revoked, or it left the network file.
    pub const NO_LONGER_ADMITTED: u32 = 6;
    /// The node cannot write its audit log, so it takes nothing it would
    /// have to record: the sender keeps what it has not sent, and dials
    /// again later.
    pub const AUDIT_UNAVAILABLE: u32 = 7;
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge {
        /// The frame's length, in bytes.
        len: usize,
    },
    /// A length prefix of 0.
    #[error("empty frame")]
    Empty,
    /// The body does not decode as a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body holds bytes after the frame; how many.
    #[error("malformed frame: {0} trailing bytes after the frame")]
    Trailing(usize),
    /// The frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

/// A message as a subscriber receives it. The marking is printed once by
/// the node, so clients need no copy of the network file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message's unique id.
    pub id: MessageId,
    /// The nation whose node accepted and sealed the message.
    pub origin: Nation,
    /// The principal who published it.
    pub publisher: String,
    /// The topic it was published to.
    pub topic: String,
    /// Its label as a canonical marking.
    pub marking: String,
    /// When the origin node created it, in microseconds since the Unix epoch.
    pub created_us: u64,
    /// The message body.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The order of the variants is part of the wire format (bincode encodes
/// the index); the borrowed encoders below depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame from whoever dialed.
    Hello {
        /// The protocol version the dialer speaks ([`PROTOCOL_VERSION`]).
        version: u32,
    },
    /// The node's answer to `Hello` from a principal.
    Welcome {
        /// The node's nation.
        nation: Nation,
        /// The principal the node admitted the client as.
        principal: String,
    },
    /// The node's answer to `Hello` from a peer node.
    PeerWelcome {
        /// The answering node's nation.
        nation: Nation,
    },
    /// A principal's request to publish a message.
    Publish {
        /// The client's id for the request, echoed in the reply.
        request: u64,
        /// The topic to publish to.
        topic: String,
        /// The message's marking, such as `SECRET//REL TO GBR, FRA`.
        marking: String,
        /// The message body, at most [`MAX_PAYLOAD`] bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A principal's request to subscribe to a pattern.
    Subscribe {
        /// The client's id for the request, echoed in the reply.
        request: u64,
        /// The topic pattern.
        pattern: String,
    },
    /// The node accepted and routed a publish.
    PublishAck {
        /// The request this answers.
        request: u64,
        /// The id the node gave the message.
        id: MessageId,
    },
    /// The node accepted a subscription.
    SubscribeAck {
        /// The request this answers.
        request: u64,
    },
    /// A refused request, with the policy's reason code and sentence.
    Refused {
        /// The request this answers.
        request: u64,
        /// The stable reason code.
        code: String,
        /// The sentence for people.
        message: String,
    },
    /// A message for a subscriber.
    Deliver(Delivery),
    /// An envelope between nodes: sealed, or unsealed when its seal
    /// follows in a `Seals` frame on the same link.
    Forward(Envelope),
    /// The seals of envelopes this link carried unsealed.
    Seals(SealBatch),
    /// A node's signed view of its links and interest, flooded between
    /// nodes.
    Announce(SignedAnnouncement),
    /// An admin principal's command to its own node.
    Admin {
        /// The client's id for the request, echoed in the reply.
        request: u64,
        /// What to do.
        command: AdminCommand,
    },
    /// The node's answer to an admin command it carried out; a refused
    /// one gets `Refused`.
    AdminReply {
        /// The request this answers.
        request: u64,
        /// The answer.
        reply: AdminReply,
    },
    /// From a link's dialer: the next `Forward` or `Seals` frame on this
    /// link is the sender's outbox entry `next`, and each one after it
    /// counts on by one. Sent first on every link, and again wherever the
    /// count jumps (entries that expired, or were lost in a crash before
    /// they were stored).
    Resume {
        /// The outbox sequence number of the next custody frame.
        next: u64,
    },
    /// From a link's receiver: it holds custody of every custody frame up
    /// to and including `through` (delivered locally, and stored for
    /// whoever it relays to), so the sender may forget them.
    Custody {
        /// The last outbox sequence number acknowledged.
        through: u64,
    },
    /// A coalition resolution with the signatures the sender holds: part
    /// of the log each end sends when a link opens, or flooded when new.
    Resolution(SignedResolution),
    /// The end of the log a link opens with: after it, envelopes.
    ResolutionsSent,
    /// A principal's request to subscribe to a pattern under a name its
    /// node keeps while the principal is away: what matches waits there,
    /// and is delivered (as `DurableDeliver`) until acknowledged.
    SubscribeDurable {
        /// The client's id for the request, echoed in the reply.
        request: u64,
        /// The subscription's name, unique per principal.
        name: String,
        /// The topic pattern.
        pattern: String,
    },
    /// A message for a durable subscription, with its place in the
    /// subscription's order.
    DurableDeliver {
        /// The subscription's name.
        name: String,
        /// The message's sequence number in the subscription: ascending,
        /// never reused.
        seq: u64,
        /// The message.
        delivery: Delivery,
    },
    /// From the subscriber: it has every message of the durable
    /// subscription up to and including `through`, so the node may forget
    /// them.
    DurableAck {
        /// The subscription's name.
        name: String,
        /// The last sequence number acknowledged.
        through: u64,
    },
    /// A principal's request to subscribe to a pattern, as `Subscribe`
    /// does, with a watch under `name` that counts what the node takes for
    /// the pattern while no session holds the watch: a subscriber that
    /// comes back under the same name learns how many messages it missed.
    SubscribeWatched {
        /// The client's id for the request, echoed in the reply.
        request: u64,
        /// The watch's name, unique per principal.
        name: String,
        /// The topic pattern.
        pattern: String,
    },
    /// The node's answer to `SubscribeWatched`: subscribed, and how many
    /// messages the watch counted while nobody held it; `None` if the
    /// node did not know the watch (new, or forgotten).
    Watched {
        /// The request this answers.
        request: u64,
        /// Messages counted while the watch was not held.
        missed: Option<u64>,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// The frame with its length prefix, ready to write.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    encode_value(frame, 0)
}

/// Any value that serializes exactly as some `Frame` does, prefixed.
fn encode_value(value: &impl Serialize, size_hint: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX + size_hint + 256);
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|err| WireError::Encode(err.to_string()))?;
    let len = out.len() - LENGTH_PREFIX;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge { len });
    }
    out[..LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

// The borrowed encoders below produce the same bytes as `encode` of the
// owned frame (a test checks), without copying the payload into a `Frame`
// first: this runs once per message on the hot path.
const DELIVER_VARIANT: u32 = 8;
const FORWARD_VARIANT: u32 = 9;

struct Variant<'a, T>(u32, &'static str, &'a T);

impl<T: Serialize> Serialize for Variant<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("Frame", self.0, self.1, self.2)
    }
}

/// `Delivery` with borrowed fields.
#[derive(Serialize)]
pub struct DeliveryRef<'a> {
    /// The message's unique id.
    pub id: MessageId,
    /// The nation whose node accepted and sealed the message.
    pub origin: Nation,
    /// The principal who published it.
    pub publisher: &'a str,
    /// The topic it was published to.
    pub topic: &'a str,
    /// Its label as a canonical marking.
    pub marking: &'a str,
    /// When the origin node created it, in microseconds since the Unix epoch.
    pub created_us: u64,
    /// The message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// The same bytes as `encode(&Frame::Deliver(..))` of these fields.
pub fn encode_deliver(delivery: &DeliveryRef<'_>) -> Result<Vec<u8>, WireError> {
    encode_value(
        &Variant(DELIVER_VARIANT, "Deliver", delivery),
        delivery.payload.len(),
    )
}

/// The same bytes as `encode(&Frame::Forward(envelope.clone()))`.
pub fn encode_forward(envelope: &Envelope) -> Result<Vec<u8>, WireError> {
    encode_value(
        &Variant(FORWARD_VARIANT, "Forward", envelope),
        envelope.payload.len(),
    )
}

/// The body length announced by a length prefix, refused before any
/// buffer is allocated for it if it is too large.
pub fn body_len(prefix: [u8; LENGTH_PREFIX]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    match len {
        0 => Err(WireError::Empty),
        len if len > MAX_FRAME => Err(WireError::TooLarge { len }),
        len => Ok(len),
    }
}

/// Bytes read from a stream, cut into frames: bytes go in as they arrive,
/// in chunks of any size, and whole frames come out. A frame that lies
/// whole in one chunk is decoded where it lies; only a frame cut across
/// chunks is copied together. A length prefix is checked against the frame
/// limit before anything grows for its body.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    /// The start of a frame cut across chunks, put together here.
    partial: BytesMut,
    /// Chunks not yet cut into frames, oldest first.
    chunks: VecDeque<Bytes>,
}

impl FrameBuffer {
    /// Appends bytes read from the stream.
    pub fn extend(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.chunks.push_back(chunk);
        }
    }

    /// Whether no bytes are buffered, not even part of a frame.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.chunks.is_empty()
    }

    /// The next whole frame, if one is buffered; an error for a prefix over
    /// the limit or a body that does not decode.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if self.partial.is_empty() {
                let Some(front) = self.chunks.front_mut() else {
                    return Ok(None);
                };
                if let Some(len) = whole_frame(front)? {
                    let frame = decode(&front[LENGTH_PREFIX..LENGTH_PREFIX + len]);
                    front.advance(LENGTH_PREFIX + len);
                    if front.is_empty() {
                        self.chunks.pop_front();
                    }
                    return frame.map(Some);
                }
            } else if let Some(len) = whole_frame(&self.partial)? {
                let frame = decode(&self.partial[LENGTH_PREFIX..LENGTH_PREFIX + len]);
                self.partial.advance(LENGTH_PREFIX + len);
                return frame.map(Some);
            }
            // The frame at the front is cut: move the next chunk's bytes it
            // needs (or its prefix's) into `partial`.
            let Some(front) = self.chunks.front_mut() else {
                return Ok(None);
            };
            let wanted = match self.partial.get(..LENGTH_PREFIX) {
                Some(prefix) => LENGTH_PREFIX + body_len(prefix.try_into().unwrap_or_default())?,
                None => LENGTH_PREFIX,
            };
            // Once for the whole frame, its length checked: growing chunk by
            // chunk could double the capacity past the frame limit.
            self.partial.reserve(wanted.saturating_sub(self.partial.len()));
            let take = wanted.saturating_sub(self.partial.len()).max(1).min(front.len());
            self.partial.extend_from_slice(&front[..take]);
            front.advance(take);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

/// The body length of the frame at the start of `bytes` if all of it is
/// there; an error for a prefix over the limit.
fn whole_frame(bytes: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(prefix) = bytes.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let len = body_len(prefix.try_into().unwrap_or_default())?;
    Ok((bytes.len() >= LENGTH_PREFIX + len).then_some(len))
}

/// Decodes one frame body (without its prefix). All of it must be used.
pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
    let (frame, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|err| WireError::Malformed(err.to_string()))?;
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageIds;
    use crate::label::{Label, Level};
    use crate::topic::Topic;
    use proptest::prelude::*;

    fn round_trip(frame: Frame) {
        let bytes = encode(&frame).unwrap();
        let len = body_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(decode(&bytes[4..]).unwrap(), frame);
    }

    #[test]
    fn frames_round_trip() {
        let id = MessageIds::new([3; 32]).next_id();
        round_trip(Frame::Hello {
            version: PROTOCOL_VERSION,
        });
        round_trip(Frame::Publish {
            request: 7,
            topic: "sigint.ru".into(),
            marking: "SECRET//REL TO GBR".into(),
            payload: vec![1; 1024],
        });
        round_trip(Frame::Refused {
            request: 7,
            code: "clearance-too-low".into(),
            message: "no".into(),
        });
        round_trip(Frame::Forward(Envelope {
            id,
            origin: Nation::parse("GBR").unwrap(),
            publisher: "gbr.analyst".into(),
            topic: Topic::new("a.b").unwrap(),
            label: Label::local(Level(3)),
            released_to: [Nation::parse("FRA").unwrap()].into(),
            created_us: 5,
            payload: vec![9; 3],
            seal: crate::envelope::Seal {
                signature: vec![0; 64],
                siblings: vec![[7; 32]],
                left: 1,
                tags: Vec::new(),
            },
        }));
    }

    #[test]
    fn borrowed_encoders_match_the_owned_frames() {
        let envelope = Envelope {
            id: MessageIds::new([4; 32]).next_id(),
            origin: Nation::parse("FRA").unwrap(),
            publisher: "fra.analyst".into(),
            topic: Topic::new("a.b").unwrap(),
            label: Label::local(Level(2)),
            released_to: Default::default(),
            created_us: 99,
            payload: vec![5; 300],
            seal: crate::envelope::Seal {
                signature: vec![1; 64],
                siblings: vec![[2; 32], [3; 32]],
                left: 2,
                tags: vec![crate::authenticator::Tag {
                    nation: *b"GBR",
                    mac: [4; crate::authenticator::TAG_LEN],
                }],
            },
        };
        assert_eq!(
            encode_forward(&envelope).unwrap(),
            encode(&Frame::Forward(envelope.clone())).unwrap()
        );
        let delivery = Delivery {
            id: envelope.id,
            origin: envelope.origin,
            publisher: envelope.publisher.clone(),
            topic: "a.b".into(),
            marking: "CONFIDENTIAL".into(),
            created_us: 99,
            payload: envelope.payload.clone(),
        };
        let borrowed = DeliveryRef {
            id: delivery.id,
            origin: delivery.origin,
            publisher: &delivery.publisher,
            topic: &delivery.topic,
            marking: &delivery.marking,
            created_us: delivery.created_us,
            payload: &delivery.payload,
        };
        assert_eq!(
            encode_deliver(&borrowed).unwrap(),
            encode(&Frame::Deliver(delivery)).unwrap()
        );
    }

    #[test]
    fn custody_frames_round_trip() {
        round_trip(Frame::Resume { next: u64::MAX });
        round_trip(Frame::Custody { through: 7 });
    }

    #[test]
    fn seals_round_trip() {
        round_trip(Frame::Seals(SealBatch {
            signature: vec![3; 64],
            tags: vec![crate::authenticator::Tag {
                nation: *b"FRA",
                mac: [5; crate::authenticator::TAG_LEN],
            }],
            proofs: vec![crate::envelope::Proof {
                id: MessageIds::new([1; 32]).next_id(),
                siblings: vec![[4; 32]],
                left: 1,
            }],
        }));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        assert_eq!(
            body_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(WireError::TooLarge { len: MAX_FRAME + 1 })
        );
        assert_eq!(
            body_len(u32::MAX.to_be_bytes()),
            Err(WireError::TooLarge {
                len: u32::MAX as usize
            })
        );
        assert_eq!(body_len([0; 4]), Err(WireError::Empty));
        let huge = Frame::Publish {
            request: 1,
            topic: "a".into(),
            marking: "U".into(),
            payload: vec![0; MAX_FRAME],
        };
        assert!(matches!(
            encode(&huge),
            Err(WireError::TooLarge { .. }) | Err(WireError::Encode(_))
        ));
    }

    #[test]
    fn a_frame_buffer_refuses_an_oversized_prefix_before_growing() {
        let mut buffer = FrameBuffer::default();
        buffer.extend(Bytes::copy_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes()[..2]));
        buffer.extend(Bytes::copy_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes()[2..]));
        assert_eq!(
            buffer.next_frame(),
            Err(WireError::TooLarge { len: MAX_FRAME + 1 })
        );
        assert!(buffer.partial.capacity() < MAX_FRAME);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(decode(&[0xff; 16]), Err(WireError::Malformed(_))));
        let mut bytes = encode(&Frame::Hello { version: 1 }).unwrap();
        bytes.push(0);
        assert_eq!(decode(&bytes[4..]), Err(WireError::Trailing(1)));
    }

    #[test]
    fn invalid_fields_inside_a_valid_encoding_are_refused() {
        // A Forward whose topic is not a valid topic must not decode.
        let mut frame = encode(&Frame::Forward(Envelope {
            id: MessageIds::new([0; 32]).next_id(),
            origin: Nation::parse("GBR").unwrap(),
            publisher: "p".into(),
            topic: Topic::new("abc").unwrap(),
            label: Label::local(Level(0)),
            released_to: Default::default(),
            created_us: 0,
            payload: vec![],
            seal: Default::default(),
        }))
        .unwrap();
        let position = frame.windows(3).position(|w| w == b"abc").unwrap();
        frame[position + 1] = b'*';
        assert!(matches!(decode(&frame[4..]), Err(WireError::Malformed(_))));
    }

    proptest! {
        /// However the stream cuts the bytes into chunks, the same frames
        /// come out, in order, and nothing is left over.
        #[test]
        fn frames_survive_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
            cuts in proptest::collection::vec(1usize..400, 1..50),
        ) {
            let frames: Vec<Frame> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| Frame::Publish {
                    request: i as u64,
                    topic: "a.b".into(),
                    marking: "U".into(),
                    payload,
                })
                .collect();
            let stream: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
            let mut buffer = FrameBuffer::default();
            let mut out = Vec::new();
            let mut rest = stream.as_slice();
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                buffer.extend(Bytes::copy_from_slice(&rest[..n]));
                rest = &rest[n..];
                while let Some(frame) = buffer.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert!(buffer.is_empty());
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_frames_are_errors(cut in 0usize..40) {
            let bytes = encode(&Frame::Publish {
                request: 1, topic: "sigint.ru".into(), marking: "S".into(), payload: vec![7; 16],
            }).unwrap();
            let body = &bytes[4..];
            if cut < body.len() {
                prop_assert!(decode(&body[..cut]).is_err());
            }
        }
    }
}
