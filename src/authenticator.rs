//! Seal authenticators: the key each two nodes share without a word
//! exchanged (static X25519 agreement of their Ed25519 node keys), and the
//! per-nation tags an origin puts on a seal with those keys, so that a node
//! checks its own tag (about a microsecond) before it relays, instead of
//! the origin's signature (48 µs). PBFT's MAC authenticators are the model.
//!
//! A tag covers a batch root and the signature over it. Only the origin and
//! the tag's nation hold the key, so a tag that verifies proves to that
//! nation, and to no one else, that the origin sealed exactly that root
//! with exactly that signature. The signature stays for everyone else and
//! for the record: it is still checked at every node, just after the relay.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::{digest, hkdf, hmac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::label::Nation;

/// Starts the bytes a tag covers, apart from every other use of the key.
const TAG_CONTEXT: &[u8] = b"entente seal tag v1\0";
/// Starts the bytes a receipt's tag covers.
const RECEIPT_CONTEXT: &[u8] = b"entente receipt v1\0";
/// HKDF's salt for pairwise keys.
const PAIR_SALT: &[u8] = b"entente pairwise key v1";
/// A tag's length: HMAC-SHA256 cut to 128 bits, as RFC 2104 allows; a
/// forger must guess it outright, once per message, online.
pub const TAG_LEN: usize = 16;
/// The most tags one seal may carry: one per other nation of the network.
pub const MAX_TAGS: usize = 64;

/// One nation's tag on a seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// The nation whose node can check it (its code, kept inline so that
    /// decoding a seal allocates nothing per tag).
    pub nation: [u8; 3],
    /// HMAC-SHA256 of the root and signature, cut to [`TAG_LEN`] bytes.
    pub mac: [u8; TAG_LEN],
}

/// The tag keys a node shares with every other nation it knows, in nation
/// order (so seals list their tags in that order).
pub type TagKeys = BTreeMap<Nation, TagKey>;

/// The key one node shares with one other, for tags.
#[derive(Clone)]
pub struct TagKey(hmac::Key);

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagKey").finish_non_exhaustive()
    }
}

impl TagKey {
    fn mac(&self, nation: [u8; 3], root: &[u8; 32], signature: &[u8]) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(TAG_CONTEXT);
        // Whose tag it is: the key is the same both ways, and the root
        // names the origin, so with this each tag has one reading only.
        context.update(&nation);
        context.update(root);
        context.update(signature);
        let mut mac = [0; TAG_LEN];
        mac.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
        mac
    }

    /// `nation`'s tag on the batch `root` sealed with `signature`.
    pub fn tag(&self, nation: Nation, root: &[u8; 32], signature: &[u8]) -> Tag {
        Tag {
            nation: nation.code(),
            mac: self.mac(nation.code(), root, signature),
        }
    }

    /// Whether `tag` is this key's over `root` and `signature` (in
    /// constant time, so a forger learns nothing from how long it took).
    pub fn accepts(&self, tag: &Tag, root: &[u8; 32], signature: &[u8]) -> bool {
        self.mac(tag.nation, root, signature).ct_eq(&tag.mac).into()
    }

    /// The tag of a receipt: `from` says to `to` that it has the messages
    /// `ids`. Apart from seal tags by its context; each end of the key
    /// makes it for its own receipts only, as `from` is covered.
    pub fn receipt_mac(&self, from: Nation, to: Nation, ids: &[crate::envelope::MessageId]) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(RECEIPT_CONTEXT);
        context.update(&from.code());
        context.update(&to.code());
        context.update(&(ids.len() as u64).to_be_bytes());
        for id in ids {
            context.update(&id.0);
        }
        let mut mac = [0; TAG_LEN];
        mac.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
        mac
    }

    /// Whether `mac` is this key's receipt tag over `from`, `to` and `ids`
    /// (in constant time).
    pub fn accepts_receipt(
        &self,
        mac: &[u8; TAG_LEN],
        from: Nation,
        to: Nation,
        ids: &[crate::envelope::MessageId],
    ) -> bool {
        self.receipt_mac(from, to, ids).ct_eq(mac).into()
    }
}

/// The X25519 half of a node's Ed25519 key: the same secret scalar, on the
/// Montgomery form of the curve (as libsodium's
/// `crypto_sign_ed25519_sk_to_curve25519`), so that every node's
/// certificate already publishes its agreement key.
pub struct AgreementKey {
    /// The first half of SHA-512 of the Ed25519 seed; clamped when used.
    scalar: [u8; 32],
    public: [u8; 32],
}

impl fmt::Debug for AgreementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgreementKey").finish_non_exhaustive()
    }
}

impl AgreementKey {
    /// From an Ed25519 seed and the public key it makes.
    pub fn new(seed: &[u8; 32], public: [u8; 32]) -> AgreementKey {
        let hashed = digest::digest(&digest::SHA512, seed);
        let mut scalar = [0; 32];
        scalar.copy_from_slice(&hashed.as_ref()[..32]);
        AgreementKey { scalar, public }
    }

    /// The tag key shared with the node whose Ed25519 public key is
    /// `other`; none for a key that is not a point of the curve or is of
    /// small order (no secret could come of it).
    pub fn tag_key(&self, other: &[u8]) -> Option<TagKey> {
        let other: [u8; 32] = other.try_into().ok()?;
        let point = CompressedEdwardsY(other).decompress()?;
        if point.is_small_order() {
            return None;
        }
        let shared: MontgomeryPoint = point.to_montgomery().mul_clamped(self.scalar);
        if shared.0 == [0; 32] {
            return None;
        }
        // Both ends must feed HKDF the same bytes: the two public keys in
        // order, so each pair's key is its own.
        let (low, high) = if self.public <= other {
            (self.public, other)
        } else {
            (other, self.public)
        };
        let info = [low.as_slice(), high.as_slice()];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, PAIR_SALT).extract(&shared.0);
        let okm = prk.expand(&info, hmac::HMAC_SHA256).ok()?;
        Some(TagKey(hmac::Key::from(okm)))
    }

    /// The tag keys shared with every nation of `node_keys` but this node's.
    pub fn tag_keys(&self, node_keys: &HashMap<Nation, Vec<u8>>) -> TagKeys {
        node_keys
            .iter()
            .filter(|(_, key)| key.as_slice() != self.public)
            .filter_map(|(&nation, key)| Some((nation, self.tag_key(key)?)))
            .collect()
    }
}

/// The 32-byte seed inside an Ed25519 PKCS#8 key (v1 or v2): the octet
/// string right after the algorithm's OID (1.3.101.112).
pub fn ed25519_seed(pkcs8: &[u8]) -> Option<[u8; 32]> {
    const BEFORE_SEED: [u8; 9] = [0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let at = pkcs8
        .windows(BEFORE_SEED.len())
        .position(|window| window == BEFORE_SEED)?
        + BEFORE_SEED.len();
    pkcs8.get(at..at + 32)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn node() -> AgreementKey {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let seed = ed25519_seed(der.as_ref()).unwrap();
        // The seed found is the key's: it makes the same public key.
        Ed25519KeyPair::from_seed_and_public_key(&seed, pair.public_key().as_ref()).unwrap();
        AgreementKey::new(&seed, pair.public_key().as_ref().try_into().unwrap())
    }

    const ROOT: [u8; 32] = [9; 32];

    #[test]
    fn two_nodes_derive_the_same_key_and_a_third_cannot() {
        let (fra, gbr, deu) = (node(), node(), node());
        let fra_gbr = fra.tag_key(&gbr.public).unwrap();
        let gbr_fra = gbr.tag_key(&fra.public).unwrap();
        let gbr_nation = Nation::parse("GBR").unwrap();
        let tag = fra_gbr.tag(gbr_nation, &ROOT, b"signature");
        assert!(gbr_fra.accepts(&tag, &ROOT, b"signature"));
        // DEU, with its own keys to both, cannot make or check FRA's tag
        // for GBR.
        let deu_gbr = deu.tag_key(&gbr.public).unwrap();
        let deu_fra = deu.tag_key(&fra.public).unwrap();
        assert!(!deu_gbr.accepts(&tag, &ROOT, b"signature"));
        assert!(!deu_fra.accepts(&tag, &ROOT, b"signature"));
        assert!(!gbr_fra.accepts(&deu_gbr.tag(gbr_nation, &ROOT, b"signature"), &ROOT, b"signature"));
    }

    #[test]
    fn a_tag_covers_the_root_and_the_signature() {
        let (fra, gbr) = (node(), node());
        let key = fra.tag_key(&gbr.public).unwrap();
        let tag = key.tag(Nation::parse("GBR").unwrap(), &ROOT, b"signature");
        assert!(key.accepts(&tag, &ROOT, b"signature"));
        assert!(!key.accepts(&tag, &[8; 32], b"signature"));
        assert!(!key.accepts(&tag, &ROOT, b"signaturf"));
        let mut flipped = tag.clone();
        flipped.mac[TAG_LEN - 1] ^= 1;
        assert!(!key.accepts(&flipped, &ROOT, b"signature"));
    }

    #[test]
    fn keys_that_make_no_secret_are_refused() {
        let fra = node();
        // The identity point and a point of order 8 (small order), and
        // bytes that are no point at all.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(fra.tag_key(&identity).is_none());
        let order_8 = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
            0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
        ];
        assert!(fra.tag_key(&order_8).is_none());
        assert!(fra.tag_key(&[2; 31]).is_none());
    }

    #[test]
    fn tag_keys_leave_out_this_node() {
        let (fra, gbr) = (node(), node());
        let keys: HashMap<Nation, Vec<u8>> = [
            (Nation::parse("FRA").unwrap(), fra.public.to_vec()),
            (Nation::parse("GBR").unwrap(), gbr.public.to_vec()),
        ]
        .into();
        let tag_keys = fra.tag_keys(&keys);
        assert_eq!(
            tag_keys.keys().copied().collect::<Vec<_>>(),
            [Nation::parse("GBR").unwrap()]
        );
    }

    #[test]
    fn a_seed_is_found_only_in_an_ed25519_key() {
        assert!(ed25519_seed(b"not a key").is_none());
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let cut = &der.as_ref()[..20];
        assert!(ed25519_seed(cut).is_none());
    }
}
