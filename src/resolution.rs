//! Coalition resolutions: "cut USA" or "restore USA", numbered
//! coalition-wide, in force once the admins of a quorum of member nations
//! have signed them; and the log of them that every node keeps, whose
//! standing for each nation depends only on what it holds, never on the
//! order it came in (invariant 5). Sans-IO: certificate checks are the
//! caller's ([`SignerCheck`]), times are passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::envelope::Signer;
use crate::label::Nation;

/// Starts the bytes a resolution signature covers, so it can never pass
/// for a seal, an announcement or a TLS signature made with the same key.
const RESOLUTION_CONTEXT: &[u8] = b"entente resolution v1\0";

/// How far ahead of a node's clock a resolution's number or a signature's
/// time may be: more would let one member push the numbering out of reach.
pub const MAX_SKEW_US: u64 = 30 * 1_000_000;

/// Resolutions held that are not in force yet (still gathering
/// signatures), at most, per nation they name: past it the oldest goes.
pub const PENDING_PER_NATION: usize = 8;

/// Certificates in one signature's chain, at most.
pub const MAX_CHAIN: usize = 4;

/// Signatures on one resolution, at most (one per nation).
pub const MAX_SIGNATURES: usize = 64;

/// What a resolution does to the nation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing more is released to it, nothing of it accepted.
    Cut,
    /// It is back; only what it creates from then on is accepted.
    Restore,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Cut => "cut",
            Action::Restore => "restore",
        })
    }
}

/// A resolution, as proposed and signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The coalition-wide number: higher is newer. A proposer takes one
    /// above every number it knows, and at least its clock in
    /// microseconds, so two resolutions about a nation are always ordered.
    pub seq: u64,
    /// Cut or restore.
    pub action: Action,
    /// The nation it names.
    pub nation: Nation,
    /// When it was proposed, microseconds since the epoch.
    pub created_us: u64,
}

/// A resolution's id: the first 8 bytes of the SHA-256 of what its
/// signatures cover, in hex. What `entente admin sign` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResolutionId(pub [u8; 8]);

impl fmt::Display for ResolutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ResolutionId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{text}` is not a resolution id: 16 hex digits, as `entente admin propose` prints");
        if text.len() != 16 || !text.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ResolutionId(id))
    }
}

impl Resolution {
    /// The bytes every signature of it covers (before the signer's part).
    fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RESOLUTION_CONTEXT.len() + 24);
        out.extend_from_slice(RESOLUTION_CONTEXT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(match self.action {
            Action::Cut => 1,
            Action::Restore => 2,
        });
        out.extend_from_slice(self.nation.as_str().as_bytes());
        out.extend_from_slice(&self.created_us.to_be_bytes());
        out
    }

    /// Its id.
    pub fn id(&self) -> ResolutionId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.canonical());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        ResolutionId(id)
    }

    /// What one nation's admin signs: the resolution, the signing nation
    /// and the time of signing.
    fn signed_bytes(&self, nation: Nation, signed_us: u64) -> Vec<u8> {
        let mut out = self.canonical();
        out.extend_from_slice(nation.as_str().as_bytes());
        out.extend_from_slice(&signed_us.to_be_bytes());
        out
    }

    /// Signs it as `nation`'s admin, whose certificate chain is `chain`.
    pub fn sign(&self, nation: Nation, signed_us: u64, chain: Vec<Vec<u8>>, key: &Signer) -> Signature {
        Signature {
            nation,
            signed_us,
            chain: chain.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            signature: key.sign_with_context(&self.signed_bytes(nation, signed_us)),
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (resolution {}, number {})",
            self.action,
            self.nation,
            self.id(),
            self.seq
        )
    }
}

/// One nation's admin's signature of a resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The nation whose admin signed.
    pub nation: Nation,
    /// When, microseconds since the epoch, by the signer's clock.
    pub signed_us: u64,
    /// The admin's certificate chain (DER, leaf first), checked against
    /// that nation's CA.
    pub chain: Vec<serde_bytes::ByteBuf>,
    /// Ed25519 over the resolution, the nation and the time.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A resolution and the signatures gathered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedResolution {
    /// The resolution.
    pub resolution: Resolution,
    /// Its signatures, at most one per nation.
    pub signatures: Vec<Signature>,
}

/// How many member nations must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quorum {
    /// This many nations.
    Count(usize),
    /// More than half of the nations the resolution does not name.
    Majority,
}

impl Quorum {
    /// Signatures needed when `voters` nations may sign.
    pub fn needed(self, voters: usize) -> usize {
        match self {
            Quorum::Count(count) => count.max(1),
            Quorum::Majority => voters / 2 + 1,
        }
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::Count(count) => write!(f, "{count}"),
            Quorum::Majority => f.write_str("majority"),
        }
    }
}

/// Checks that a certificate chain is `nation`'s admin's under `nation`'s
/// own CA (revocations included), and gives its Ed25519 public key. The
/// node's trust store, in the I/O layer.
pub trait SignerCheck {
    /// The admin's public key, or why the chain is not a `nation` admin's.
    fn admin_key(&self, nation: Nation, chain: &[Vec<u8>]) -> Result<Vec<u8>, String>;
}

/// Why a resolution, or one of its signatures, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolutionError {
    /// It names a nation that is not a member.
    #[error("resolution {id} names {nation}, which is not a nation of the coalition")]
    UnknownNation {
        /// The resolution.
        id: ResolutionId,
        /// The nation named.
        nation: Nation,
    },
    /// Its number or creation time is too far ahead.
    #[error("resolution {id} is numbered or dated more than 30 s ahead of this node's clock")]
    FromTheFuture {
        /// The resolution.
        id: ResolutionId,
    },
    /// A signature by a nation that may not sign it (the nation named,
    /// or one outside the coalition).
    #[error("resolution {id}: {nation} may not sign it ({why})")]
    NotAVoter {
        /// The resolution.
        id: ResolutionId,
        /// Who signed.
        nation: Nation,
        /// Why not.
        why: &'static str,
    },
    /// A signature that does not check out.
    #[error("resolution {id}: the signature for {nation} is refused: {why}")]
    BadSignature {
        /// The resolution.
        id: ResolutionId,
        /// Who it claims to be from.
        nation: Nation,
        /// What is wrong.
        why: String,
    },
    /// More signatures or certificates than a genuine one has.
    #[error("resolution {id} carries {count} signatures or certificates, more than a genuine one has")]
    Oversized {
        /// The resolution.
        id: ResolutionId,
        /// How many.
        count: usize,
    },
}

/// Where a nation stands by the resolutions in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The deciding resolution's action.
    pub action: Action,
    /// Its id.
    pub id: ResolutionId,
    /// Its number.
    pub seq: u64,
    /// When it took effect: the time at which its quorum had signed (the
    /// quorum-th earliest signature), never before it was proposed.
    pub effective_us: u64,
}

/// What offering a resolution did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offered {
    /// Nations whose valid signatures were new here.
    pub added: Vec<Nation>,
    /// Signatures refused (each to be audited); the valid ones are kept.
    pub refused: Vec<ResolutionError>,
    /// Whether it reached its quorum with what was added.
    pub took_effect: bool,
    /// Whether, in force, it is not the one deciding its nation's
    /// standing (a newer one is): it changes nothing.
    pub superseded: bool,
}

/// One resolution held, with its valid signatures by nation.
#[derive(Debug, Clone)]
struct Held {
    resolution: Resolution,
    signatures: BTreeMap<Nation, Signature>,
}

/// Every resolution a node holds: those in force (the deciding one per
/// nation is kept; older ones change nothing and are dropped) and those
/// still gathering signatures (bounded).
#[derive(Debug, Clone)]
pub struct ResolutionLog {
    members: BTreeSet<Nation>,
    quorum: Quorum,
    held: BTreeMap<ResolutionId, Held>,
}

impl ResolutionLog {
    /// An empty log for a coalition of `members` with `quorum`.
    pub fn new(members: BTreeSet<Nation>, quorum: Quorum) -> ResolutionLog {
        ResolutionLog {
            members,
            quorum,
            held: BTreeMap::new(),
        }
    }

    /// The signatures `resolution` needs.
    pub fn needed(&self, resolution: &Resolution) -> usize {
        let voters = self.members.iter().filter(|&&n| n != resolution.nation).count();
        self.quorum.needed(voters)
    }

    /// A number for a new resolution: above every one held, and at least
    /// `now_us`.
    pub fn next_seq(&self, now_us: u64) -> u64 {
        let highest = self.held.values().map(|h| h.resolution.seq).max().unwrap_or(0);
        highest.saturating_add(1).max(now_us)
    }

    /// Takes what is valid of `offered`: each signature is checked on its
    /// own, so one bad signature (a relay's, or the named nation's) costs
    /// nothing of the good ones. Refuses the whole only if the resolution
    /// itself is malformed.
    pub fn offer(
        &mut self,
        offered: SignedResolution,
        check: &dyn SignerCheck,
        now_us: u64,
    ) -> Result<Offered, ResolutionError> {
        let resolution = offered.resolution;
        let id = resolution.id();
        if !self.members.contains(&resolution.nation) {
            return Err(ResolutionError::UnknownNation {
                id,
                nation: resolution.nation,
            });
        }
        let horizon = now_us.saturating_add(MAX_SKEW_US);
        if resolution.seq > horizon || resolution.created_us > horizon {
            return Err(ResolutionError::FromTheFuture { id });
        }
        let oversized = offered.signatures.len() > MAX_SIGNATURES
            || offered.signatures.iter().any(|s| s.chain.len() > MAX_CHAIN);
        if oversized {
            return Err(ResolutionError::Oversized {
                id,
                count: offered.signatures.len(),
            });
        }
        let was_in_force = self.in_force(&id);
        let mut result = Offered::default();
        let known: BTreeSet<Nation> = self
            .held
            .get(&id)
            .map(|held| held.signatures.keys().copied().collect())
            .unwrap_or_default();
        let mut valid = Vec::new();
        for signature in offered.signatures {
            let nation = signature.nation;
            if known.contains(&nation) || valid.iter().any(|s: &Signature| s.nation == nation) {
                continue;
            }
            match self.check_signature(&resolution, &signature, check, horizon) {
                Ok(()) => valid.push(signature),
                Err(err) => result.refused.push(err),
            }
        }
        if valid.is_empty() && !self.held.contains_key(&id) {
            return Ok(result);
        }
        let held = self.held.entry(id).or_insert_with(|| Held {
            resolution,
            signatures: BTreeMap::new(),
        });
        for signature in valid {
            result.added.push(signature.nation);
            held.signatures.insert(signature.nation, signature);
        }
        let now_in_force = self.in_force(&id);
        result.took_effect = now_in_force && !was_in_force;
        let nation = self.held[&id].resolution.nation;
        result.superseded = now_in_force && self.standing(nation).is_some_and(|s| s.id != id);
        self.prune(nation);
        Ok(result)
    }

    fn check_signature(
        &self,
        resolution: &Resolution,
        signature: &Signature,
        check: &dyn SignerCheck,
        horizon: u64,
    ) -> Result<(), ResolutionError> {
        let id = resolution.id();
        let nation = signature.nation;
        if nation == resolution.nation {
            return Err(ResolutionError::NotAVoter {
                id,
                nation,
                why: "a nation does not vote on itself",
            });
        }
        if !self.members.contains(&nation) {
            return Err(ResolutionError::NotAVoter {
                id,
                nation,
                why: "not a nation of the coalition",
            });
        }
        let bad = |why: String| ResolutionError::BadSignature { id, nation, why };
        if signature.signed_us > horizon {
            return Err(bad("signed more than 30 s ahead of this node's clock".into()));
        }
        let chain: Vec<Vec<u8>> = signature.chain.iter().map(|c| c.to_vec()).collect();
        let key = check.admin_key(nation, &chain).map_err(bad)?;
        UnparsedPublicKey::new(&ED25519, &key)
            .verify(
                &resolution.signed_bytes(nation, signature.signed_us),
                &signature.signature,
            )
            .map_err(|_| bad("it does not verify with the admin certificate's key".into()))
    }

    fn in_force(&self, id: &ResolutionId) -> bool {
        self.held
            .get(id)
            .is_some_and(|held| held.signatures.len() >= self.needed(&held.resolution))
    }

    /// When `held` took effect, if it has.
    fn effective_us(&self, held: &Held) -> Option<u64> {
        let needed = self.needed(&held.resolution);
        let mut times: Vec<u64> = held.signatures.values().map(|s| s.signed_us).collect();
        times.sort_unstable();
        times
            .get(needed.checked_sub(1)?)
            .map(|&at| at.max(held.resolution.created_us))
    }

    /// Where `nation` stands: the resolution in force about it with the
    /// highest number (then id), if any.
    pub fn standing(&self, nation: Nation) -> Option<Standing> {
        self.held
            .iter()
            .filter(|(_, held)| held.resolution.nation == nation)
            .filter_map(|(&id, held)| {
                Some(Standing {
                    action: held.resolution.action,
                    id,
                    seq: held.resolution.seq,
                    effective_us: self.effective_us(held)?,
                })
            })
            .max_by_key(|standing| (standing.seq, standing.id))
    }

    /// The nations cut out by resolutions in force.
    pub fn cut_out(&self) -> BTreeSet<Nation> {
        self.members
            .iter()
            .copied()
            .filter(|&n| self.standing(n).is_some_and(|s| s.action == Action::Cut))
            .collect()
    }

    /// Each restored nation, with when its restore took effect: what it
    /// created before then was created during its cut.
    pub fn restored(&self) -> BTreeMap<Nation, u64> {
        self.members
            .iter()
            .filter_map(|&n| {
                self.standing(n)
                    .filter(|s| s.action == Action::Restore)
                    .map(|s| (n, s.effective_us))
            })
            .collect()
    }

    /// Drops what can no longer matter for `nation`: resolutions older than
    /// the one deciding its standing, and pending ones past the bound.
    fn prune(&mut self, nation: Nation) {
        let deciding = self.standing(nation);
        let mut pending: Vec<(u64, ResolutionId)> = Vec::new();
        let ids: Vec<ResolutionId> = self
            .held
            .iter()
            .filter(|(_, h)| h.resolution.nation == nation)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let seq = self.held[&id].resolution.seq;
            let older = deciding.is_some_and(|d| (seq, id) < (d.seq, d.id));
            if older {
                self.held.remove(&id);
            } else if !self.in_force(&id) {
                pending.push((seq, id));
            }
        }
        pending.sort_unstable();
        let excess = pending.len().saturating_sub(PENDING_PER_NATION);
        for (_, id) in pending.into_iter().take(excess) {
            self.held.remove(&id);
        }
    }

    /// One resolution held, with its signatures.
    pub fn get(&self, id: &ResolutionId) -> Option<SignedResolution> {
        self.held.get(id).map(|held| SignedResolution {
            resolution: held.resolution.clone(),
            signatures: held.signatures.values().cloned().collect(),
        })
    }

    /// Everything held, for a peer or the disk: in force or not, each with
    /// its signatures. Bounded by [`PENDING_PER_NATION`] + 1 per nation.
    pub fn all(&self) -> Vec<SignedResolution> {
        self.held.keys().filter_map(|id| self.get(id)).collect()
    }

    /// Whether `id` is in force.
    pub fn is_in_force(&self, id: &ResolutionId) -> bool {
        self.in_force(id)
    }

    /// How many valid signatures `id` has.
    pub fn signatures(&self, id: &ResolutionId) -> usize {
        self.held.get(id).map_or(0, |held| held.signatures.len())
    }
}

#[cfg(test)]
mod tests;
