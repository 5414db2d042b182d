//! Envelopes: a labelled message bound to its origin by the origin node's
//! signature (invariant 3, modelled on STANAG 4778 binding), and the
//! canonical encoding the signature covers.
//!
//! The signature is Ed25519 (ring). `cargo bench --bench core -- signature/`
//! on the 2-core development machine, over a 1 KiB message: Ed25519 sign
//! 26.4 µs, verify 47.9 µs; ECDSA P-256 sign 17.6 µs, verify 53.1 µs. A
//! message is signed once but verified at every node that relays or stores
//! it, so verification is what scales with the network, and Ed25519 is the
//! faster verifier. Its signatures are also deterministic (ring's P-256
//! signing needs fresh randomness per signature, one more thing to get
//! wrong), and its public keys are half the size. The node's TLS key is the
//! same Ed25519 key; `SIGNING_CONTEXT` keeps the two uses apart.

use std::fmt;

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::label::{Label, Nation};
use crate::topic::Topic;

/// Separates envelope signatures from every other use of the node key
/// (such as the TLS handshake), so one can never stand in for another.
const SIGNING_CONTEXT: &[u8] = b"entente envelope v1\0";

pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("signature on message {id} from {origin} does not verify: its label, topic or payload was changed after signing, or it was not signed by {origin}'s node")]
    BadSignature { id: MessageId, origin: Nation },
    #[error("no node key is known for origin nation {0}")]
    UnknownOrigin(Nation),
    #[error("the node key is not a valid Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
}

/// Unique message id: the origin node's random per-run prefix and a
/// counter, so ids never repeat without a random draw per message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hands out message ids for one node run.
#[derive(Debug)]
pub struct MessageIds {
    prefix: [u8; 8],
    next: std::sync::atomic::AtomicU64,
}

impl MessageIds {
    /// `prefix` must be random per run (the caller owns randomness, so this
    /// module stays deterministic).
    pub fn new(prefix: [u8; 8]) -> MessageIds {
        MessageIds {
            prefix,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> MessageId {
        let counter = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.prefix);
        id[8..].copy_from_slice(&counter.to_be_bytes());
        MessageId(id)
    }
}

/// Everything the origin node signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    pub origin: Nation,
    pub publisher: String,
    pub topic: Topic,
    pub label: Label,
    /// Microseconds since the Unix epoch, by the origin node's clock.
    pub created_us: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The fields of a message before it is signed.
#[derive(Debug, Clone)]
pub struct Unsigned {
    pub id: MessageId,
    pub origin: Nation,
    pub publisher: String,
    pub topic: Topic,
    pub label: Label,
    pub created_us: u64,
    pub payload: Vec<u8>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are bounded by the frame limit, far below u32::MAX; a
    // length prefix makes every field boundary unambiguous.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_set<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a String>) {
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        put_bytes(out, item.as_bytes());
    }
}

/// The canonical bytes a signature covers: a context tag, then every field
/// but the signature in a fixed order, each length-prefixed. Labels are
/// sorted sets, so equal labels encode equally.
fn signed_bytes(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + envelope.payload.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    out.extend_from_slice(&envelope.id.0);
    out.extend_from_slice(envelope.origin.as_str().as_bytes());
    put_bytes(&mut out, envelope.publisher.as_bytes());
    put_bytes(&mut out, envelope.topic.as_str().as_bytes());
    out.push(envelope.label.level.0);
    put_set(&mut out, envelope.label.compartments.iter());
    put_set(&mut out, envelope.label.rel_to.iter());
    out.extend_from_slice(&envelope.created_us.to_be_bytes());
    put_bytes(&mut out, &envelope.payload);
    out
}

impl From<Unsigned> for Envelope {
    /// An envelope not yet signed: fit for local delivery only, which needs
    /// no signature; [`Signer::sign`] it before it leaves the node.
    fn from(message: Unsigned) -> Envelope {
        Envelope {
            id: message.id,
            origin: message.origin,
            publisher: message.publisher,
            topic: message.topic,
            label: message.label,
            created_us: message.created_us,
            payload: message.payload,
            signature: Vec::new(),
        }
    }
}

/// An origin node's signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    /// From the node key file's PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, EnvelopeError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|key| Signer { key })
            .map_err(|err| EnvelopeError::BadKey(err.to_string()))
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    pub fn seal(&self, message: Unsigned) -> Envelope {
        let mut envelope = Envelope::from(message);
        self.sign(&mut envelope);
        envelope
    }

    /// Signs (or re-signs) `envelope` in place.
    pub fn sign(&self, envelope: &mut Envelope) {
        envelope.signature = self.key.sign(&signed_bytes(envelope)).as_ref().to_vec();
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Envelope {
    /// Checks the origin node's signature with that node's Ed25519 public key.
    pub fn is_signed(&self) -> bool {
        !self.signature.is_empty()
    }

    pub fn verify(&self, origin_public_key: &[u8]) -> Result<(), EnvelopeError> {
        UnparsedPublicKey::new(&signature::ED25519, origin_public_key)
            .verify(&signed_bytes(self), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature {
                id: self.id,
                origin: self.origin,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Level;
    use proptest::prelude::*;

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer::from_pkcs8(der.as_ref()).unwrap()
    }

    fn message() -> Unsigned {
        Unsigned {
            id: MessageIds::new([7; 8]).next_id(),
            origin: Nation::parse("GBR").unwrap(),
            publisher: "gbr.analyst".to_owned(),
            topic: Topic::new("sigint.ru.launch").unwrap(),
            label: Label {
                level: Level(3),
                compartments: ["SIGINT".to_owned()].into(),
                rel_to: ["FRA".to_owned(), "GBR".to_owned()].into(),
            },
            created_us: 1_764_000_000_000_000,
            payload: b"launch detected".to_vec(),
        }
    }

    #[test]
    fn a_sealed_envelope_verifies_with_the_origin_key_only() {
        let origin = signer();
        let envelope = origin.seal(message());
        assert_eq!(envelope.signature.len(), SIGNATURE_LEN);
        envelope.verify(origin.public_key()).unwrap();
        assert!(!Envelope::from(message()).is_signed());
        assert!(Envelope::from(message()).verify(origin.public_key()).is_err());
        assert!(matches!(
            envelope.verify(signer().public_key()),
            Err(EnvelopeError::BadSignature { .. })
        ));
    }

    #[test]
    fn ids_are_unique_per_run() {
        let ids = MessageIds::new([1; 8]);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_ne!(a, MessageIds::new([2; 8]).next_id());
        assert_eq!(a.to_string().len(), 32);
    }

    /// The signed encoding of every field, so a test can flip one byte of
    /// exactly one field and re-decode.
    fn with_field_mutated(envelope: &Envelope, field: usize, position: usize, bit: u8) -> Option<Envelope> {
        let mut e = envelope.clone();
        let flip = |bytes: &mut Vec<u8>| {
            if bytes.is_empty() {
                bytes.push(bit);
            } else {
                let i = position % bytes.len();
                bytes[i] ^= bit;
            }
        };
        match field {
            0 => {
                let mut bytes = e.label.rel_to.pop_first()?.into_bytes();
                flip(&mut bytes);
                e.label.rel_to.insert(String::from_utf8(bytes).ok()?);
            }
            1 => {
                let mut bytes = e.label.compartments.pop_first()?.into_bytes();
                flip(&mut bytes);
                e.label.compartments.insert(String::from_utf8(bytes).ok()?);
            }
            2 => e.label.level = Level(e.label.level.0 ^ bit),
            3 => {
                let mut bytes = e.topic.as_str().as_bytes().to_vec();
                flip(&mut bytes);
                e.topic = Topic::new(String::from_utf8(bytes).ok()?).ok()?;
            }
            4 => {
                let mut bytes = e.publisher.clone().into_bytes();
                flip(&mut bytes);
                e.publisher = String::from_utf8(bytes).ok()?;
            }
            5 => {
                let mut bytes = e.origin.as_str().as_bytes().to_vec();
                flip(&mut bytes);
                e.origin = Nation::parse(std::str::from_utf8(&bytes).ok()?)?;
            }
            6 => e.created_us ^= u64::from(bit) << (position % 64),
            7 => flip(&mut e.payload),
            8 => e.id.0[position % 16] ^= bit,
            _ => flip(&mut e.signature),
        }
        (e != *envelope).then_some(e)
    }

    proptest! {
        /// Invariant 3: changing any single byte of any signed field (or
        /// of the signature) makes verification fail.
        #[test]
        fn any_single_byte_change_is_detected(field in 0usize..10, position in any::<usize>(), bit in 1u8..=255) {
            let signer = signer();
            let envelope = signer.seal(message());
            if let Some(tampered) = with_field_mutated(&envelope, field, position, bit) {
                prop_assert!(tampered.verify(signer.public_key()).is_err(), "field {} changed but verified", field);
            }
        }
    }

    #[test]
    fn each_field_is_covered() {
        let signer = signer();
        let envelope = signer.seal(message());
        for field in 0..10 {
            let tampered = with_field_mutated(&envelope, field, 0, 0x01)
                .or_else(|| with_field_mutated(&envelope, field, 1, 0x20))
                .unwrap_or_else(|| panic!("field {field} could not be mutated"));
            assert!(tampered.verify(signer.public_key()).is_err(), "field {field}");
        }
    }

    #[test]
    fn moving_bytes_between_fields_is_detected() {
        // Length prefixes keep field boundaries fixed: the same bytes split
        // differently between publisher and topic must not verify.
        let signer = signer();
        let mut original = message();
        original.publisher = "ab".to_owned();
        original.topic = Topic::new("c").unwrap();
        let envelope = signer.seal(original);
        let mut moved = envelope.clone();
        moved.publisher = "a".to_owned();
        moved.topic = Topic::new("bc").unwrap();
        assert!(moved.verify(signer.public_key()).is_err());
    }

    #[test]
    fn a_bad_key_file_is_an_error() {
        assert!(matches!(
            Signer::from_pkcs8(b"not a key"),
            Err(EnvelopeError::BadKey(_))
        ));
    }
}
