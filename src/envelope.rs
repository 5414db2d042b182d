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
//! same Ed25519 key; `ROOT_CONTEXT` keeps the two uses apart.
//!
//! **Batch seals.** One signature per message would cap a core at about
//! 20,000 verified messages per second. So the origin node seals a batch of
//! envelopes at once: each envelope's canonical bytes are hashed into a
//! SHA-256 leaf, the leaves into a Merkle tree, and only the root is signed.
//! Each envelope carries the root's signature and its own inclusion proof
//! (the sibling hashes up to the root), so it stays verifiable on its own,
//! after relays and restarts, with nothing but the origin's public key. A
//! [`Verifier`] remembers recently verified roots, so the rest of a batch
//! costs one hash per envelope instead of one signature check. A batch of
//! one is an ordinary signature over that envelope's leaf.
//!
//! **Tags.** A seal also carries a tag per other nation
//! ([`crate::authenticator`]): an HMAC over the root and signature under
//! the key the origin shares with that nation. A node checks its own tag
//! before it relays and the signature just after ([`Verifier::authenticate`]
//! and [`Verifier::confirm`]); a seal without a good tag for it is checked
//! by signature first, as before.

use std::fmt;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ring::digest::{self, SHA256};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::authenticator::{self, AgreementKey, Tag, TagKey, TagKeys, MAX_TAGS};
use crate::label::{Label, Nation};
use crate::topic::Topic;

/// Starts every envelope's canonical bytes.
const ENVELOPE_CONTEXT: &[u8] = b"entente envelope v1\0";
/// Starts the bytes a node signs: a batch root. It separates envelope
/// signatures from every other use of the node key (such as the TLS
/// handshake), so one can never stand in for another.
const ROOT_CONTEXT: &[u8] = b"entente batch root v1\0";
/// Domain separation inside the tree, so a leaf can never pass for an
/// inner node or the other way round.
const LEAF_TAG: u8 = 0;
const NODE_TAG: u8 = 1;

/// The length of an Ed25519 signature, in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// The most envelopes one seal covers; it bounds a proof to 32 hashes.
pub const MAX_BATCH: usize = 1 << 16;
/// A proof has one sibling per tree level at most.
const MAX_PROOF: usize = 32;

/// A SHA-256 hash: a Merkle leaf, inner node or root.
pub type Hash = [u8; 32];

/// Why an envelope's seal or a node key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The seal does not verify under the origin node's key.
    #[error("signature on message {id} from {origin} does not verify: its label, topic or payload was changed after signing, or it was not signed by {origin}'s node")]
    BadSignature {
        /// The message's id.
        id: MessageId,
        /// The nation whose node should have signed it.
        origin: Nation,
    },
    /// No node key is known for the origin nation.
    #[error("no node key is known for origin nation {0}")]
    UnknownOrigin(Nation),
    /// A node key file's contents are not a usable Ed25519 key.
    #[error("the node key is not a valid Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
    /// The inclusion proof is longer than any batch can need.
    #[error("message {id} from {origin} carries an inclusion proof of {len} hashes; at most {MAX_PROOF} are possible")]
    BadProof {
        /// The message's id.
        id: MessageId,
        /// The nation whose node signed it.
        origin: Nation,
        /// The proof's length, in hashes.
        len: usize,
    },
    /// The seal carries more tags than a network has nations.
    #[error("message {id} from {origin} carries {len} tags on its seal; at most {MAX_TAGS} are possible")]
    TooManyTags {
        /// The message's id.
        id: MessageId,
        /// The nation whose node sealed it.
        origin: Nation,
        /// How many tags it carries.
        len: usize,
    },
    /// A `Seals` frame whose signature or tags are not of a size a genuine
    /// one has.
    #[error("a Seals frame with a {signature}-byte signature and {tags} tags; a genuine one has a {SIGNATURE_LEN}-byte signature and at most {MAX_TAGS} tags")]
    MisshapenSeals {
        /// Its signature's length, in bytes.
        signature: usize,
        /// How many tags it carries.
        tags: usize,
    },
    /// This node's tag on the seal verified, so the origin's own node made
    /// it, but the signature beside it does not verify.
    #[error("message {id}: {origin}'s tag for this node verifies but its signature does not, so {origin}'s own node sealed it with a bad signature; {origin}'s tags are not trusted here any more")]
    OriginSignedBadly {
        /// The message's id.
        id: MessageId,
        /// The nation whose node sealed it.
        origin: Nation,
    },
}

/// Unique message id: a keyed pseudo-random function of a counter (see
/// [`MessageIds`]), so an id tells its holder nothing about the ids it was
/// not sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every audit record prints an id: one write, not 16 formatted ones.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, byte) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(byte >> 4)];
            text[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hands out message ids for one node run: HMAC-SHA-256 of a counter under
/// a secret drawn per run, cut to 128 bits. A partner holding some of a
/// node's ids can neither order them nor tell how many were withheld
/// between them (as it could from a bare counter), and 128 bits make a
/// repeat within one run as unlikely as a random draw repeating; the
/// counter makes it impossible for a given key.
pub struct MessageIds {
    key: ring::hmac::Key,
    next: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for MessageIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: it would make every id guessable.
        f.debug_struct("MessageIds").finish_non_exhaustive()
    }
}

impl MessageIds {
    /// `secret` must be random per run and never leave the node (the
    /// caller owns randomness, so this module stays deterministic).
    pub fn new(secret: [u8; 32]) -> MessageIds {
        MessageIds {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next id of this run.
    pub fn next_id(&self) -> MessageId {
        let counter = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = ring::hmac::sign(&self.key, &counter.to_be_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&tag.as_ref()[..16]);
        MessageId(id)
    }
}

/// Everything the origin node signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message's unique id.
    pub id: MessageId,
    /// The nation whose node accepted the message from its publisher and
    /// seals it.
    pub origin: Nation,
    /// The principal who published the message.
    pub publisher: String,
    /// The topic it was published to.
    pub topic: Topic,
    /// The security label every hop enforces.
    pub label: Label,
    /// The nations besides the origin that the origin released it to,
    /// under the label and its own (private) release ceilings: the only
    /// nations that may hold it. Sealed, so no relay can widen it.
    pub released_to: BTreeSet<Nation>,
    /// Microseconds since the Unix epoch, by the origin node's clock.
    pub created_us: u64,
    #[serde(with = "serde_bytes")]
    /// The message body, opaque to the broker.
    pub payload: Vec<u8>,
    /// The origin node's seal; empty until the envelope is sealed.
    pub seal: Seal,
}

/// The origin node's seal on one envelope of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Ed25519 signature over `ROOT_CONTEXT` and the batch's Merkle root;
    /// empty while the envelope is unsigned.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The sibling hashes from this envelope's leaf up to the root.
    pub siblings: Vec<Hash>,
    /// Bit `i` is set when `siblings[i]` is the left one of its pair.
    pub left: u32,
    /// The origin's tag for each other nation, over the root and signature.
    pub tags: Vec<Tag>,
}

/// The seals of a batch of envelopes sent ahead of them, unsealed, on one
/// link: the one signature over the batch root, and each envelope's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealBatch {
    /// The origin node's Ed25519 signature over the batch root.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The origin's tag for each other nation, over the root and signature.
    pub tags: Vec<Tag>,
    /// One proof per envelope of the batch.
    pub proofs: Vec<Proof>,
}

/// One envelope's place in a sealed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The envelope this proof belongs to.
    pub id: MessageId,
    /// The sibling hashes from the envelope's leaf up to the root.
    pub siblings: Vec<Hash>,
    /// Bit `i` is set when `siblings[i]` is the left one of its pair.
    pub left: u32,
}

impl SealBatch {
    /// The seals of `envelopes` (all sealed together by
    /// [`Signer::seal_batch`]), for sending after them.
    pub fn of<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> SealBatch {
        let mut signature = Vec::new();
        let mut tags = Vec::new();
        let proofs = envelopes
            .into_iter()
            .map(|envelope| {
                signature.clone_from(&envelope.seal.signature);
                tags.clone_from(&envelope.seal.tags);
                Proof {
                    id: envelope.id,
                    siblings: envelope.seal.siblings.clone(),
                    left: envelope.seal.left,
                }
            })
            .collect();
        SealBatch {
            signature,
            tags,
            proofs,
        }
    }

    /// Refuses a batch whose signature or tags are not of a size a genuine
    /// one has. To be checked before anything of it is attached: each of
    /// its envelopes gets a copy of both, so an oversized batch would cost
    /// its size once per envelope it names.
    pub fn check_size(&self) -> Result<(), EnvelopeError> {
        if self.signature.len() != SIGNATURE_LEN || self.tags.len() > MAX_TAGS {
            return Err(EnvelopeError::MisshapenSeals {
                signature: self.signature.len(),
                tags: self.tags.len(),
            });
        }
        Ok(())
    }
}

impl Envelope {
    /// Puts the seal that `proof` and its batch's signature and tags make
    /// on this envelope; whether it is genuine is for verification to say.
    pub fn attach(&mut self, signature: &[u8], tags: &[Tag], proof: Proof) {
        self.seal = Seal {
            signature: signature.to_vec(),
            siblings: proof.siblings,
            left: proof.left,
            tags: tags.to_vec(),
        };
    }
}

/// The fields of a message before it is signed.
#[derive(Debug, Clone)]
pub struct Unsigned {
    /// The message's unique id.
    pub id: MessageId,
    /// The nation whose node accepts and signs the message.
    pub origin: Nation,
    /// The principal publishing the message.
    pub publisher: String,
    /// The topic it is published to.
    pub topic: Topic,
    /// The security label every hop enforces.
    pub label: Label,
    /// The nations besides the origin it is released to
    /// ([`crate::policy::Policy::release_set`]).
    pub released_to: BTreeSet<Nation>,
    /// Microseconds since the Unix epoch, by the origin node's clock.
    pub created_us: u64,
    /// The message body, opaque to the broker.
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

/// The canonical bytes a seal covers are these, then the payload: a context
/// tag, then every field but the seal in a fixed order, each
/// length-prefixed (the payload's prefix ends this header). Labels are
/// sorted sets, so equal labels encode equally. The payload is hashed in
/// place rather than copied in.
fn signed_header(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(ENVELOPE_CONTEXT);
    out.extend_from_slice(&envelope.id.0);
    out.extend_from_slice(envelope.origin.as_str().as_bytes());
    put_bytes(&mut out, envelope.publisher.as_bytes());
    put_bytes(&mut out, envelope.topic.as_str().as_bytes());
    out.push(envelope.label.level.0);
    put_set(&mut out, envelope.label.compartments.iter());
    put_set(&mut out, envelope.label.rel_to.iter());
    out.extend_from_slice(&(envelope.released_to.len() as u32).to_be_bytes());
    for nation in &envelope.released_to {
        out.extend_from_slice(nation.as_str().as_bytes());
    }
    out.extend_from_slice(&envelope.created_us.to_be_bytes());
    out.extend_from_slice(&(envelope.payload.len() as u32).to_be_bytes());
    out
}

impl From<Unsigned> for Envelope {
    /// An envelope not yet signed: fit for local delivery only, which needs
    /// no signature; [`Signer::seal_batch`] seals it before it leaves the node.
    fn from(message: Unsigned) -> Envelope {
        Envelope {
            id: message.id,
            origin: message.origin,
            publisher: message.publisher,
            topic: message.topic,
            label: message.label,
            released_to: message.released_to,
            created_us: message.created_us,
            payload: message.payload,
            seal: Seal::default(),
        }
    }
}

impl Envelope {
    /// This envelope's leaf in the Merkle tree of its batch: the hash of
    /// everything its seal covers.
    pub fn leaf(&self) -> Hash {
        let mut context = digest::Context::new(&SHA256);
        context.update(&[LEAF_TAG]);
        context.update(&signed_header(self));
        context.update(&self.payload);
        to_hash(context.finish())
    }
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = digest::Context::new(&SHA256);
    context.update(&[NODE_TAG]);
    context.update(left);
    context.update(right);
    to_hash(context.finish())
}

fn to_hash(digest: digest::Digest) -> Hash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn root_message(root: &Hash) -> Vec<u8> {
    [ROOT_CONTEXT, root].concat()
}

/// Builds the Merkle tree over `leaves` and returns its root and each
/// leaf's proof. An odd node at the end of a level moves up unpaired.
fn merkle(leaves: Vec<Hash>) -> (Hash, Vec<(Vec<Hash>, u32)>) {
    let mut proofs = vec![(Vec::new(), 0u32); leaves.len()];
    // Which node of the current level each leaf's path passes through.
    let mut position: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves;
    while level.len() > 1 {
        for (proof, at) in proofs.iter_mut().zip(position.iter_mut()) {
            let (siblings, left) = proof;
            if *at % 2 == 1 {
                *left |= 1 << siblings.len();
                siblings.push(level[*at - 1]);
            } else if *at + 1 < level.len() {
                siblings.push(level[*at + 1]);
            }
            *at /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [alone] => *alone,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    (level[0], proofs)
}

/// An origin node's signing key, and its X25519 half for tag keys.
pub struct Signer {
    key: Ed25519KeyPair,
    agreement: AgreementKey,
}

/// A batch's seal, as [`Signer::seal_leaves`] makes it.
#[derive(Debug)]
pub struct BatchSeal {
    /// The signature over the batch root.
    pub signature: Vec<u8>,
    /// One tag per nation whose tag key was given, ordered by nation.
    pub tags: Vec<Tag>,
    /// Each leaf's proof: its siblings, and which of them are on the left.
    pub proofs: Vec<(Vec<Hash>, u32)>,
}

impl Signer {
    /// From the node key file's PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, EnvelopeError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|err| EnvelopeError::BadKey(err.to_string()))?;
        let public: [u8; 32] = key
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| EnvelopeError::BadKey("an Ed25519 public key is 32 bytes".into()))?;
        // The seed found must be the key's own: it must make the same
        // public key, or tag keys would not match anyone's.
        let seed = authenticator::ed25519_seed(der)
            .filter(|seed| Ed25519KeyPair::from_seed_and_public_key(seed, &public).is_ok())
            .ok_or_else(|| EnvelopeError::BadKey("no Ed25519 seed found in the PKCS#8 key".into()))?;
        Ok(Signer {
            key,
            agreement: AgreementKey::new(&seed, public),
        })
    }

    /// The tag keys this node shares with each other nation of `node_keys`.
    pub fn tag_keys(&self, node_keys: &HashMap<Nation, Vec<u8>>) -> TagKeys {
        self.agreement.tag_keys(node_keys)
    }

    /// The Ed25519 public key that verifies this signer's seals.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Seals one envelope as a batch of one, without tags.
    pub fn seal(&self, message: Unsigned) -> Envelope {
        let mut envelope = Envelope::from(message);
        self.seal_batch(std::slice::from_mut(&mut envelope), &TagKeys::new());
        envelope
    }

    /// Seals (or re-seals) `envelopes` with one signature over their
    /// Merkle root, tagged for each nation of `tag_keys`. Batches longer
    /// than [`MAX_BATCH`] are sealed in parts.
    pub fn seal_batch(&self, envelopes: &mut [Envelope], tag_keys: &TagKeys) {
        for batch in envelopes.chunks_mut(MAX_BATCH) {
            let sealed = self.seal_leaves(batch.iter().map(Envelope::leaf).collect(), tag_keys);
            for (envelope, (siblings, left)) in batch.iter_mut().zip(sealed.proofs) {
                envelope.seal = Seal {
                    signature: sealed.signature.clone(),
                    siblings,
                    left,
                    tags: sealed.tags.clone(),
                };
            }
        }
    }

    /// Seals a batch known only by its leaves ([`Envelope::leaf`]): the
    /// signature over their root, a tag for each nation of `tag_keys`, and
    /// each leaf's proof, in order. At most [`MAX_BATCH`] leaves.
    pub fn seal_leaves(&self, leaves: Vec<Hash>, tag_keys: &TagKeys) -> BatchSeal {
        debug_assert!(leaves.len() <= MAX_BATCH);
        if leaves.is_empty() {
            return BatchSeal {
                signature: Vec::new(),
                tags: Vec::new(),
                proofs: Vec::new(),
            };
        }
        let (root, proofs) = merkle(leaves);
        let signature = self.key.sign(&root_message(&root)).as_ref().to_vec();
        // In nation order: the keys are kept sorted.
        let tags = tag_keys
            .iter()
            .take(MAX_TAGS)
            .map(|(&nation, key)| key.tag(nation, &root, &signature))
            .collect();
        BatchSeal {
            signature,
            tags,
            proofs,
        }
    }

    /// Signs `message`, which must start with a context string of its own
    /// (as announcements do), so that it can never pass for a batch root.
    pub fn sign_with_context(&self, message: &[u8]) -> Vec<u8> {
        debug_assert!(!message.starts_with(ROOT_CONTEXT));
        self.key.sign(message).as_ref().to_vec()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Envelope {
    /// Whether the envelope carries a seal. An unsealed one is delivered
    /// locally, or sent on a link ahead of its [`SealBatch`].
    pub fn is_signed(&self) -> bool {
        !self.seal.signature.is_empty()
    }

    /// The batch root this envelope's leaf and proof lead to.
    fn root(&self) -> Result<Hash, EnvelopeError> {
        self.check_seal_size()?;
        let mut hash = self.leaf();
        for step in 0..self.seal.siblings.len() {
            hash = self.seal.up(step, &hash);
        }
        Ok(hash)
    }

    fn check_seal_size(&self) -> Result<(), EnvelopeError> {
        let len = self.seal.siblings.len();
        if len > MAX_PROOF {
            return Err(EnvelopeError::BadProof {
                id: self.id,
                origin: self.origin,
                len,
            });
        }
        let len = self.seal.tags.len();
        if len > MAX_TAGS {
            return Err(EnvelopeError::TooManyTags {
                id: self.id,
                origin: self.origin,
                len,
            });
        }
        Ok(())
    }

    fn bad_signature(&self) -> EnvelopeError {
        EnvelopeError::BadSignature {
            id: self.id,
            origin: self.origin,
        }
    }

    /// Checks the seal with the origin node's Ed25519 public key: the
    /// proof must lead from this envelope to a root that key signed.
    pub fn verify(&self, origin_public_key: &[u8]) -> Result<(), EnvelopeError> {
        let root = self.root()?;
        UnparsedPublicKey::new(&signature::ED25519, origin_public_key)
            .verify(&root_message(&root), &self.seal.signature)
            .map_err(|_| self.bad_signature())
    }
}

impl Seal {
    /// The node one level above `hash`, `hash` being where this proof's
    /// path stands after `step` siblings.
    fn up(&self, step: usize, hash: &Hash) -> Hash {
        let sibling = &self.siblings[step];
        if self.left & (1 << step) != 0 {
            node_hash(sibling, hash)
        } else {
            node_hash(hash, sibling)
        }
    }
}

/// A node of a batch tree whose root is proven its origin's (by this
/// node's tag or by the signature), with the rest of the proof above it.
#[derive(Debug)]
struct Proven {
    signature: Arc<[u8]>,
    siblings: Arc<[Hash]>,
    left: u32,
    /// How many of `siblings` lie below this node.
    from: usize,
    root: Hash,
}

impl Proven {
    /// Whether `seal`, standing at this node after `step` siblings, goes on
    /// exactly as the proven proof did: the same siblings and directions
    /// to the same root, under the very signature that was proven. Then
    /// it verifies on its own too, so what a relay passes on is always a
    /// seal the next node can check without this cache.
    fn continues(&self, seal: &Seal, step: usize) -> bool {
        *self.signature == *seal.signature
            && self.siblings[self.from..] == seal.siblings[step..]
            && self.left.checked_shr(self.from as u32).unwrap_or(0)
                == seal.left.checked_shr(step as u32).unwrap_or(0)
    }
}

/// A root's signature as checked: a failure counts only under the same
/// key (a success stands until [`Verifier::clear`], as proven nodes do).
#[derive(Debug)]
struct Checked {
    signature: Arc<[u8]>,
    /// The key it failed under; none when it holds.
    failed_under: Option<Arc<[u8]>>,
}

impl Checked {
    fn holds(&self) -> bool {
        self.failed_under.is_none()
    }
}

/// What [`Verifier::authenticate`] proved: the envelope's proof leads to a
/// root its origin sealed. [`Verifier::confirm`] then checks the signature
/// over that root, if that was not how it was proven.
#[derive(Debug, Clone)]
#[must_use = "a seal proven by its tag still needs its signature confirmed"]
pub struct Authentic {
    origin: Nation,
    id: MessageId,
    root: Hash,
    signature: Arc<[u8]>,
    /// The signature over the root verified already.
    signed: bool,
}

impl Authentic {
    /// Whether [`Verifier::confirm`] has a signature to check: the seal
    /// was proven by a tag, and its root's signature is not yet checked.
    pub fn needs_signature(&self) -> bool {
        !self.signed
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The nation whose node sealed it.
    pub fn origin(&self) -> Nation {
        self.origin
    }
}

/// Verifies envelopes in two steps: [`Verifier::authenticate`] before a
/// relay, by this node's tag where the seal has a good one and by the
/// signature otherwise, and [`Verifier::confirm`] after it, by the
/// signature. It remembers the tree nodes it has proven: every node on a
/// checked path up to a proven root. Another envelope of the batch stops
/// at the first proven node its path reaches (usually one hash above its
/// leaf), so it costs its leaf hash and about one more. It remembers the
/// roots whose signature verified too, so each batch costs one signature
/// check. A proven node vouches only for its origin's envelopes. Bounded:
/// the oldest are forgotten first.
#[derive(Debug)]
pub struct Verifier {
    proven: HashMap<(Nation, Hash), Proven>,
    order: VecDeque<(Nation, Hash)>,
    /// Roots whose signature was checked, with that signature and whether
    /// it held (a failure is remembered too, so a bad root costs one check
    /// however many envelopes it covers; a success replaces it).
    checked: HashMap<(Nation, Hash), Checked>,
    checked_order: VecDeque<(Nation, Hash)>,
    /// Origins whose tag once verified beside a bad signature: their seals
    /// are checked by signature before any relay from then on, until the
    /// node restarts.
    distrusted: HashSet<Nation>,
    capacity: usize,
}

impl Verifier {
    /// A verifier that remembers at most `capacity` proven nodes, and as
    /// many signed roots (at least 1 of each).
    pub fn new(capacity: usize) -> Verifier {
        Verifier {
            proven: HashMap::new(),
            order: VecDeque::new(),
            checked: HashMap::new(),
            checked_order: VecDeque::new(),
            distrusted: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Forgets everything proven. A proven node stands for the key that
    /// checked its root: when a nation's key may have changed (a reload),
    /// nothing proven under the old one may vouch any more. Distrust stays:
    /// a new key does not make an origin that lied honest.
    pub fn clear(&mut self) {
        self.proven.clear();
        self.order.clear();
        self.checked.clear();
        self.checked_order.clear();
    }

    /// Whether `origin` once tagged a bad signature, so that its seals are
    /// proven by signature only.
    pub fn distrusts(&self, origin: Nation) -> bool {
        self.distrusted.contains(&origin)
    }

    /// Both steps at once: the same result as [`Envelope::verify`].
    pub fn verify(&mut self, envelope: &Envelope, origin_public_key: &[u8]) -> Result<(), EnvelopeError> {
        let authentic = self.authenticate(envelope, origin_public_key, None)?;
        self.confirm(&authentic, origin_public_key)
    }

    /// Proves that `envelope`'s proof leads to a root its origin sealed:
    /// by a proven node, by this node's tag (`own`: this node's nation and
    /// the tag key it shares with the origin), or else by the signature.
    /// Anything that fails here is not its origin's as it stands.
    pub fn authenticate(
        &mut self,
        envelope: &Envelope,
        origin_public_key: &[u8],
        own: Option<(Nation, &TagKey)>,
    ) -> Result<Authentic, EnvelopeError> {
        envelope.check_seal_size()?;
        let seal = &envelope.seal;
        let origin = envelope.origin;
        // The nodes this path passes through, from its leaf up.
        let mut path = Vec::with_capacity(seal.siblings.len() + 1);
        let mut hash = envelope.leaf();
        for step in 0..=seal.siblings.len() {
            if step > 0 {
                hash = seal.up(step - 1, &hash);
            }
            let known = self.proven.get(&(origin, hash));
            if let Some(proven) = known.filter(|proven| proven.continues(seal, step)) {
                // The same signature: shared, not copied again.
                let (signature, root) = (proven.signature.clone(), proven.root);
                self.remember(origin, seal, signature.clone(), &path, root);
                let signed = self
                    .checked
                    .get(&(origin, root))
                    .is_some_and(|known| known.holds() && *known.signature == *signature);
                return Ok(Authentic {
                    origin,
                    id: envelope.id,
                    root,
                    signature,
                    signed,
                });
            }
            path.push(hash);
        }
        let root = hash;
        let tag_holds = own.is_some_and(|(here, key)| {
            seal.tags
                .iter()
                .find(|tag| tag.nation == here.code())
                .is_some_and(|tag| key.accepts(tag, &root, &seal.signature))
        });
        let tagged = tag_holds && !self.distrusted.contains(&origin);
        if !tagged && !self.signature_holds(origin, &root, &seal.signature, origin_public_key) {
            // A good tag beside a bad signature is the origin's own doing
            // (a distrusted origin's: a trusted one's passed above), not
            // the doing of whoever passed it on.
            return Err(if tag_holds {
                EnvelopeError::OriginSignedBadly {
                    id: envelope.id,
                    origin,
                }
            } else {
                envelope.bad_signature()
            });
        }
        let signature: Arc<[u8]> = Arc::from(seal.signature.as_slice());
        self.remember(origin, seal, signature.clone(), &path, root);
        Ok(Authentic {
            origin,
            id: envelope.id,
            root,
            signature,
            signed: !tagged,
        })
    }

    /// Checks the signature over the root `authentic` proved, unless it was
    /// checked already. It can fail only for a seal proven by a tag, and
    /// then the origin's own node made the tag (no one else holds its
    /// key): the origin is distrusted, and this and every later seal of
    /// its is checked by signature before anything is relayed.
    pub fn confirm(&mut self, authentic: &Authentic, origin_public_key: &[u8]) -> Result<(), EnvelopeError> {
        let origin = authentic.origin;
        if authentic.signed
            || self.signature_holds(origin, &authentic.root, &authentic.signature, origin_public_key)
        {
            return Ok(());
        }
        if self.distrusted.insert(origin) {
            // What its tags proved vouches for nothing more.
            self.proven.retain(|(nation, _), _| *nation != origin);
            self.order.retain(|(nation, _)| *nation != origin);
        }
        Err(EnvelopeError::OriginSignedBadly {
            id: authentic.id,
            origin,
        })
    }

    /// Whether `signature` is `origin`'s over `root`: remembered, or
    /// checked now and remembered.
    fn signature_holds(&mut self, origin: Nation, root: &Hash, signature: &[u8], public_key: &[u8]) -> bool {
        let key = (origin, *root);
        if let Some(known) = self.checked.get(&key) {
            let same_key = known
                .failed_under
                .as_deref()
                .is_none_or(|failed| *failed == *public_key);
            if *known.signature == *signature && same_key {
                return known.holds();
            }
        }
        let holds = UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&root_message(root), signature)
            .is_ok();
        // A failure never replaces a success, so another signature sent
        // under a genuine root cannot make its batch cost a check each.
        if !holds && self.checked.contains_key(&key) {
            return false;
        }
        let checked = Checked {
            signature: Arc::from(signature),
            failed_under: (!holds).then(|| Arc::from(public_key)),
        };
        if self.checked.insert(key, checked).is_none() {
            self.checked_order.push_back(key);
            if self.checked_order.len() > self.capacity {
                if let Some(oldest) = self.checked_order.pop_front() {
                    self.checked.remove(&oldest);
                }
            }
        }
        holds
    }

    /// Remembers the nodes of `path` (`path[i]` after `i` siblings) as
    /// proven. The leaf itself only when it is its batch's root: another
    /// envelope's path never passes through it.
    fn remember(&mut self, origin: Nation, seal: &Seal, signature: Arc<[u8]>, path: &[Hash], root: Hash) {
        let first = usize::from(!seal.siblings.is_empty());
        if path.len() <= first {
            return;
        }
        let siblings: Arc<[Hash]> = Arc::from(seal.siblings.as_slice());
        for (from, hash) in path.iter().enumerate().skip(first) {
            let proven = Proven {
                signature: signature.clone(),
                siblings: siblings.clone(),
                left: seal.left,
                from,
                root,
            };
            if self.proven.insert((origin, *hash), proven).is_none() {
                self.order.push_back((origin, *hash));
            }
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.proven.remove(&oldest);
            }
        }
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
            id: MessageIds::new([7; 32]).next_id(),
            origin: Nation::parse("GBR").unwrap(),
            publisher: "gbr.analyst".to_owned(),
            topic: Topic::new("sigint.ru.launch").unwrap(),
            label: Label {
                level: Level(3),
                compartments: ["SIGINT".to_owned()].into(),
                rel_to: ["FRA".to_owned(), "GBR".to_owned()].into(),
            },
            released_to: [Nation::parse("FRA").unwrap()].into(),
            created_us: 1_764_000_000_000_000,
            payload: b"launch detected".to_vec(),
        }
    }

    #[test]
    fn a_sealed_envelope_verifies_with_the_origin_key_only() {
        let origin = signer();
        let envelope = origin.seal(message());
        assert_eq!(envelope.seal.signature.len(), SIGNATURE_LEN);
        envelope.verify(origin.public_key()).unwrap();
        assert!(!Envelope::from(message()).is_signed());
        assert!(Envelope::from(message()).verify(origin.public_key()).is_err());
        assert!(matches!(
            envelope.verify(signer().public_key()),
            Err(EnvelopeError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_batch_of_one_has_no_proof() {
        let signer = signer();
        let envelope = signer.seal(message());
        assert!(envelope.seal.siblings.is_empty());
        assert_eq!(envelope.seal.signature.len(), SIGNATURE_LEN);
    }

    #[test]
    fn ids_are_unique_per_run() {
        let ids = MessageIds::new([1; 32]);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_ne!(a, MessageIds::new([2; 32]).next_id());
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
            9 => {
                // A relay widening or narrowing the origin's release.
                let widened = Nation::parse("DEU").unwrap();
                if !e.released_to.remove(&widened) {
                    e.released_to.insert(widened);
                }
            }
            _ => flip(&mut e.seal.signature),
        }
        (e != *envelope).then_some(e)
    }

    proptest! {
        /// Invariant 3: changing any single byte of any signed field (or
        /// of the signature) makes verification fail.
        #[test]
        fn any_single_byte_change_is_detected(field in 0usize..11, position in any::<usize>(), bit in 1u8..=255) {
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
        for field in 0..11 {
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

    fn batch(signer: &Signer, n: usize) -> Vec<Envelope> {
        let ids = MessageIds::new([3; 32]);
        let mut envelopes: Vec<Envelope> = (0..n)
            .map(|i| {
                let mut message = message();
                message.id = ids.next_id();
                message.payload = format!("message {i}").into_bytes();
                Envelope::from(message)
            })
            .collect();
        signer.seal_batch(&mut envelopes, &TagKeys::new());
        envelopes
    }

    proptest! {
        /// Every envelope of a batch verifies on its own, with the plain
        /// check and with the caching one.
        #[test]
        fn every_envelope_of_a_batch_verifies(n in 1usize..70) {
            let signer = signer();
            let envelopes = batch(&signer, n);
            let mut verifier = Verifier::new(4);
            for envelope in &envelopes {
                prop_assert!(envelope.verify(signer.public_key()).is_ok());
                prop_assert!(verifier.verify(envelope, signer.public_key()).is_ok());
                prop_assert!(envelope.seal.siblings.len() <= MAX_PROOF);
            }
        }

        /// Invariant 3 with batches: changing a field, a proof hash or a
        /// proof direction of one envelope fails, even when its batch's
        /// root is already remembered as verified.
        #[test]
        fn tampering_inside_a_batch_is_detected(
            n in 2usize..40,
            pick in any::<usize>(),
            field in 0usize..12,
            position in any::<usize>(),
            bit in 1u8..=255,
        ) {
            let signer = signer();
            let envelopes = batch(&signer, n);
            let mut verifier = Verifier::new(16);
            let original = &envelopes[pick % n];
            // Another envelope of the batch puts its root in the cache.
            let other = &envelopes[(pick + 1) % n];
            prop_assert!(verifier.verify(other, signer.public_key()).is_ok());
            let tampered = match field {
                10 => {
                    let mut e = original.clone();
                    let i = position % e.seal.siblings.len();
                    e.seal.siblings[i][position % 32] ^= bit;
                    Some(e)
                }
                11 => {
                    let mut e = original.clone();
                    e.seal.left ^= 1 << (position % e.seal.siblings.len());
                    Some(e)
                }
                field => with_field_mutated(original, field, position, bit),
            };
            if let Some(tampered) = tampered {
                prop_assert!(tampered.verify(signer.public_key()).is_err());
                prop_assert!(verifier.verify(&tampered, signer.public_key()).is_err());
            }
        }
    }

    #[test]
    fn seals_sent_after_their_envelopes_verify_once_attached() {
        let signer = signer();
        let sealed = batch(&signer, 7);
        let mut unsealed: Vec<Envelope> = sealed
            .iter()
            .map(|e| Envelope {
                seal: Seal::default(),
                ..e.clone()
            })
            .collect();
        // The receiver got only some of the batch.
        let seals = SealBatch::of(sealed.iter().skip(2));
        assert_eq!(seals.proofs.len(), 5);
        let mut verifier = Verifier::new(4);
        for (envelope, proof) in unsealed.iter_mut().skip(2).zip(seals.proofs.clone()) {
            assert!(verifier.verify(envelope, signer.public_key()).is_err());
            assert_eq!(proof.id, envelope.id);
            envelope.attach(&seals.signature, &seals.tags, proof);
            assert!(verifier.verify(envelope, signer.public_key()).is_ok());
        }
        // A proof put on another envelope does not verify.
        let mut wrong = unsealed[0].clone();
        wrong.attach(&seals.signature, &seals.tags, seals.proofs[0].clone());
        assert!(verifier.verify(&wrong, signer.public_key()).is_err());
    }

    #[test]
    fn proofs_cannot_be_swapped_or_borrowed() {
        let signer = signer();
        let envelopes = batch(&signer, 5);
        let mut verifier = Verifier::new(16);
        verifier.verify(&envelopes[0], signer.public_key()).unwrap();
        let mut swapped = envelopes[1].clone();
        swapped.seal = envelopes[2].seal.clone();
        assert!(verifier.verify(&swapped, signer.public_key()).is_err());
        // A genuine root with a forged signature is not waved through by
        // the cache.
        let mut forged = envelopes[3].clone();
        forged.seal.signature[0] ^= 1;
        assert!(verifier.verify(&forged, signer.public_key()).is_err());
        // Nor is another signer's batch, even with the same contents.
        let stranger = signer_batch_of_other_key(&envelopes);
        assert!(verifier.verify(&stranger, signer.public_key()).is_err());
        let mut too_long = envelopes[4].clone();
        too_long.seal.siblings = vec![[0; 32]; MAX_PROOF + 1];
        assert!(matches!(
            too_long.verify(signer.public_key()),
            Err(EnvelopeError::BadProof { .. })
        ));
    }

    /// A node that signs a batch holding an envelope that claims another
    /// origin cannot make the cache vouch for it: proven nodes count only
    /// for their own origin's envelopes.
    #[test]
    fn a_proven_node_vouches_only_for_its_origin() {
        let other_nation = signer();
        let signer = signer();
        let mut envelopes = batch(&signer, 6);
        for envelope in &mut envelopes {
            envelope.seal = Seal::default();
        }
        envelopes[3].origin = Nation::parse("FRA").unwrap();
        signer.seal_batch(&mut envelopes, &TagKeys::new());
        let mut verifier = Verifier::new(64);
        for (i, envelope) in envelopes.iter().enumerate().filter(|(i, _)| *i != 3) {
            assert!(
                verifier.verify(envelope, signer.public_key()).is_ok(),
                "envelope {i}"
            );
        }
        // Checked against the key of the origin it claims, as a node does.
        let claimed_origin = other_nation;
        let impostor = &envelopes[3];
        assert!(verifier.verify(impostor, claimed_origin.public_key()).is_err());
        assert!(impostor.verify(claimed_origin.public_key()).is_err());
    }

    /// Once cleared, an envelope of a proven batch needs its origin's key
    /// again: a key replaced by a reload vouches for nothing cached.
    #[test]
    fn a_cleared_verifier_checks_the_key_again() {
        let signer = signer();
        let envelopes = batch(&signer, 4);
        let mut verifier = Verifier::new(64);
        verifier.verify(&envelopes[0], signer.public_key()).unwrap();
        let new_key = self::signer();
        // Before clearing, the proven tree answers without the key.
        assert!(verifier.verify(&envelopes[1], new_key.public_key()).is_ok());
        verifier.clear();
        assert!(verifier.verify(&envelopes[2], new_key.public_key()).is_err());
        assert!(verifier.verify(&envelopes[2], signer.public_key()).is_ok());
    }

    fn signer_batch_of_other_key(envelopes: &[Envelope]) -> Envelope {
        let mut copy = envelopes.to_vec();
        signer().seal_batch(&mut copy, &TagKeys::new());
        copy.swap_remove(0)
    }

    #[test]
    fn the_cache_stays_bounded() {
        let signer = signer();
        let mut verifier = Verifier::new(3);
        for _ in 0..10 {
            let envelope = signer.seal(message());
            verifier.verify(&envelope, signer.public_key()).unwrap();
        }
        assert!(verifier.proven.len() <= 3);
        assert_eq!(verifier.proven.len(), verifier.order.len());
    }

    /// FRA seals for GBR and DEU; each node's key, as its tag keys make it.
    struct Tagged {
        fra: Signer,
        gbr: Signer,
        deu: Signer,
        gbr_nation: Nation,
        deu_nation: Nation,
    }

    impl Tagged {
        fn new() -> Tagged {
            Tagged {
                fra: signer(),
                gbr: signer(),
                deu: signer(),
                gbr_nation: Nation::parse("GBR").unwrap(),
                deu_nation: Nation::parse("DEU").unwrap(),
            }
        }

        fn keys_of(&self, node: &Signer) -> TagKeys {
            let node_keys: HashMap<Nation, Vec<u8>> = [
                (Nation::parse("FRA").unwrap(), self.fra.public_key().to_vec()),
                (self.gbr_nation, self.gbr.public_key().to_vec()),
                (self.deu_nation, self.deu.public_key().to_vec()),
            ]
            .into();
            node.tag_keys(&node_keys)
        }

        fn batch(&self, n: usize) -> Vec<Envelope> {
            let mut envelopes = batch(&self.fra, n);
            self.fra.seal_batch(&mut envelopes, &self.keys_of(&self.fra));
            envelopes
        }

        /// GBR's tag key for FRA's seals.
        fn gbr_key(&self) -> TagKey {
            self.keys_of(&self.gbr)[&Nation::parse("FRA").unwrap()].clone()
        }
    }

    #[test]
    fn a_seal_carries_a_tag_for_each_other_nation() {
        let tagged = Tagged::new();
        let envelopes = tagged.batch(3);
        let nations: Vec<[u8; 3]> = envelopes[0].seal.tags.iter().map(|tag| tag.nation).collect();
        assert_eq!(nations, [tagged.deu_nation.code(), tagged.gbr_nation.code()]);
        // Tags or not, the signature verifies alone.
        envelopes[1].verify(tagged.fra.public_key()).unwrap();
    }

    /// The tag proves the root without the signature: checked with a key
    /// that is not FRA's, authentication still passes by the tag, and only
    /// the signature check after it fails.
    #[test]
    fn a_node_authenticates_by_its_tag_and_confirms_by_the_signature() {
        let tagged = Tagged::new();
        let envelopes = tagged.batch(4);
        let gbr_key = tagged.gbr_key();
        let own = Some((tagged.gbr_nation, &gbr_key));
        let mut verifier = Verifier::new(64);
        let authentic = verifier
            .authenticate(&envelopes[0], tagged.fra.public_key(), own)
            .unwrap();
        verifier.confirm(&authentic, tagged.fra.public_key()).unwrap();
        let mut fresh = Verifier::new(64);
        let wrong_key = tagged.deu.public_key();
        let authentic = fresh.authenticate(&envelopes[1], wrong_key, own).unwrap();
        assert!(fresh.confirm(&authentic, wrong_key).is_err());
        // DEU's own tag is no use to GBR: GBR checks that seal by signature.
        let mut fresh = Verifier::new(64);
        let mut borrowed = envelopes[2].clone();
        borrowed
            .seal
            .tags
            .retain(|tag| tag.nation == tagged.deu_nation.code());
        borrowed.seal.tags[0].nation = tagged.gbr_nation.code();
        assert!(fresh.authenticate(&borrowed, wrong_key, own).is_err());
        assert!(fresh
            .authenticate(&borrowed, tagged.fra.public_key(), own)
            .is_ok());
    }

    proptest! {
        /// Invariant 3 with tags: a change to any signed field or to the
        /// signature of one envelope fails authentication at a node with a
        /// good tag, even with its batch's nodes proven; a change to the
        /// tags alone only sends the node back to the signature, which
        /// holds.
        #[test]
        fn tampering_fails_before_any_relay(
            n in 1usize..20,
            pick in any::<usize>(),
            field in 0usize..11,
            position in any::<usize>(),
            bit in 1u8..=255,
        ) {
            let tagged = Tagged::new();
            let envelopes = tagged.batch(n);
            let gbr_key = tagged.gbr_key();
            let own = Some((tagged.gbr_nation, &gbr_key));
            let key = tagged.fra.public_key();
            let mut verifier = Verifier::new(64);
            let other = &envelopes[(pick + 1) % n];
            let authentic = verifier.authenticate(other, key, own).unwrap();
            prop_assert!(verifier.confirm(&authentic, key).is_ok());
            let original = &envelopes[pick % n];
            if field == 10 {
                let mut e = original.clone();
                let i = position % e.seal.tags.len();
                e.seal.tags[i].mac[position % authenticator::TAG_LEN] ^= bit;
                let authentic = verifier.authenticate(&e, key, own);
                prop_assert!(authentic.is_ok());
                prop_assert!(verifier.confirm(&authentic.unwrap(), key).is_ok());
            } else if let Some(tampered) = with_field_mutated(original, field, position, bit) {
                prop_assert!(verifier.authenticate(&tampered, key, own).is_err(), "field {} changed but authenticated", field);
            }
        }
    }

    /// A relay (DEU) that changes a label cannot make a tag for GBR to
    /// match, with any key it holds.
    #[test]
    fn a_relay_cannot_forge_another_nations_tag() {
        let tagged = Tagged::new();
        let mut envelope = tagged.batch(1).remove(0);
        envelope.label.rel_to.insert("DEU".to_owned());
        let root = envelope.root().unwrap();
        for (_, deu_key) in tagged.keys_of(&tagged.deu) {
            envelope.seal.tags = vec![deu_key.tag(tagged.gbr_nation, &root, &envelope.seal.signature)];
            let gbr_key = tagged.gbr_key();
            let mut verifier = Verifier::new(64);
            assert!(matches!(
                verifier.authenticate(
                    &envelope,
                    tagged.fra.public_key(),
                    Some((tagged.gbr_nation, &gbr_key))
                ),
                Err(EnvelopeError::BadSignature { .. })
            ));
        }
    }

    /// An origin that tags a bad signature is caught at the confirmation,
    /// and from then on its seals are checked by signature first.
    #[test]
    fn an_origin_that_tags_a_bad_signature_is_distrusted() {
        let tagged = Tagged::new();
        let fra_keys = tagged.keys_of(&tagged.fra);
        let mut envelopes = tagged.batch(4);
        let root = envelopes[0].root().unwrap();
        let bad_signature = vec![7u8; SIGNATURE_LEN];
        for envelope in &mut envelopes {
            envelope.seal.signature.clone_from(&bad_signature);
            envelope.seal.tags =
                vec![fra_keys[&tagged.gbr_nation].tag(tagged.gbr_nation, &root, &bad_signature)];
        }
        let gbr_key = tagged.gbr_key();
        let own = Some((tagged.gbr_nation, &gbr_key));
        let key = tagged.fra.public_key();
        let mut verifier = Verifier::new(64);
        let authentic = verifier.authenticate(&envelopes[0], key, own).unwrap();
        assert!(matches!(
            verifier.confirm(&authentic, key),
            Err(EnvelopeError::OriginSignedBadly { .. })
        ));
        // The bad root is remembered: the rest of its batch costs no check.
        assert!(verifier.checked.values().any(|checked| !checked.holds()));
        // Neither its tag nor the nodes it proved count any more, and its
        // next lie is told apart from a relay's forgery.
        assert!(matches!(
            verifier.authenticate(&envelopes[1], key, own),
            Err(EnvelopeError::OriginSignedBadly { .. })
        ));
        // Its genuine seals still verify, by signature.
        let genuine = tagged.batch(2);
        assert!(verifier.authenticate(&genuine[0], key, own).is_ok());
        // Nor after a change of rules.
        verifier.clear();
        assert!(verifier.authenticate(&envelopes[2], key, own).is_err());
        assert!(verifier.distrusts(Nation::parse("GBR").unwrap()));
    }

    #[test]
    fn a_seal_with_too_many_tags_is_refused() {
        let tagged = Tagged::new();
        let mut envelope = tagged.batch(1).remove(0);
        let tag = envelope.seal.tags[0].clone();
        envelope.seal.tags = vec![tag; MAX_TAGS + 1];
        assert!(matches!(
            Verifier::new(4).authenticate(&envelope, tagged.fra.public_key(), None),
            Err(EnvelopeError::TooManyTags { .. })
        ));
    }

    #[test]
    fn a_seals_frame_of_a_size_no_genuine_one_has_is_refused() {
        let tagged = Tagged::new();
        let batch = tagged.batch(3);
        let genuine = SealBatch::of(&batch);
        assert!(genuine.check_size().is_ok());
        let mut long_signature = genuine.clone();
        long_signature.signature.push(0);
        let mut too_many_tags = genuine.clone();
        too_many_tags.tags = vec![genuine.tags[0].clone(); MAX_TAGS + 1];
        for misshapen in [long_signature, too_many_tags] {
            assert!(matches!(
                misshapen.check_size(),
                Err(EnvelopeError::MisshapenSeals { .. })
            ));
        }
    }

    #[test]
    fn a_bad_key_file_is_an_error() {
        assert!(matches!(
            Signer::from_pkcs8(b"not a key"),
            Err(EnvelopeError::BadKey(_))
        ));
    }
}
