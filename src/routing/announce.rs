//! Announcements: what one node tells the network about itself (its live
//! links and the topic patterns its subscribers hold, never who holds
//! them), signed by that nation's node key so that no relay can forge or
//! change one.

use std::collections::BTreeSet;

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::envelope::Signer;
use crate::label::Nation;
use crate::topic::Pattern;

/// Starts the bytes an announcement's signature covers, so it can never
/// pass for a batch seal or a TLS signature made with the same key.
const ANNOUNCEMENT_CONTEXT: &[u8] = b"entente announcement v1\0";

/// The most patterns one announcement may hold. A node with more distinct
/// patterns announces `>` instead (more traffic, nothing lost); a peer
/// that sends more is refused, so one member cannot make every node match
/// each message against a huge list.
pub const MAX_ANNOUNCED_PATTERNS: usize = 1024;

/// How often a node announces itself at most, once its burst is spent:
/// however fast its links and subscriptions change, the network hears of
/// it four times a second.
pub const OWN_PACE: Pace = Pace {
    interval_us: 250_000,
    burst: 8,
};

/// How fast a node takes in another nation's announcements: a little
/// more than [`OWN_PACE`], so an honest node's, bunched a little on the
/// way, always pass. Past it, they are held back (the newest replacing the
/// one held) and applied at this pace, so a member that churns its
/// interest costs every node five announcements a second, no more.
pub const RECEIVED_PACE: Pace = Pace {
    interval_us: 200_000,
    burst: 16,
};

/// A rate: `burst` at once, then one every `interval_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Microseconds between two, once the burst is spent.
    pub interval_us: u64,
    /// How many may come at once.
    pub burst: u64,
}

/// Where one sender stands against a [`Pace`] (the generic cell rate
/// algorithm: one number, no timer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paced {
    /// When the sender would be back to a full burst.
    full_at_us: u64,
}

impl Paced {
    /// Whether one more may go at `now_us`; if so, it is counted.
    pub fn take(&mut self, pace: Pace, now_us: u64) -> bool {
        if self.next_us(pace) > now_us {
            return false;
        }
        self.full_at_us = self.full_at_us.max(now_us).saturating_add(pace.interval_us);
        true
    }

    /// The earliest time one more may go.
    pub fn next_us(&self, pace: Pace) -> u64 {
        self.full_at_us
            .saturating_sub(pace.burst.saturating_sub(1).saturating_mul(pace.interval_us))
    }
}

/// One node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The announcing nation.
    pub nation: Nation,
    /// Higher is newer. The origin starts from its clock in microseconds,
    /// so a restarted node's announcements supersede its old ones.
    pub seq: u64,
    /// The peers it has a live link to.
    pub links: BTreeSet<Nation>,
    /// The topic patterns its subscribers hold.
    pub patterns: BTreeSet<Pattern>,
}

/// An announcement with its origin node's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    /// The announcement.
    pub announcement: Announcement,
    /// The announcing nation's node's Ed25519 signature over it.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why an announcement was refused (audited as `bad-announcement`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    /// The signature is not the announcing nation's node key's.
    #[error("announcement of {0}: its signature does not verify with {0}'s node key")]
    BadSignature(Nation),
    /// The announcing nation is not in the network.
    #[error("announcement of {0}, which is not a nation of the network")]
    UnknownNation(Nation),
    /// The announcing nation is cut out of the network.
    #[error("announcement of {0}, which is cut out of the network")]
    CutOut(Nation),
    /// The announcement's `seq` is further ahead of this node's clock than the
    /// allowed skew.
    #[error("announcement of {0} is timed ahead of this node's clock by more than the allowed skew")]
    FromTheFuture(Nation),
    /// The announcement holds more than [`MAX_ANNOUNCED_PATTERNS`] patterns.
    #[error(
        "announcement of {nation} holds {count} patterns; at most {MAX_ANNOUNCED_PATTERNS} are accepted"
    )]
    TooManyPatterns {
        /// The announcing nation.
        nation: Nation,
        /// How many patterns it held.
        count: usize,
    },
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Announcement {
    /// The canonical bytes its signature covers: sets are sorted, and
    /// every variable field is length-prefixed.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.patterns.len());
        out.extend_from_slice(ANNOUNCEMENT_CONTEXT);
        out.extend_from_slice(self.nation.as_str().as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(self.links.len() as u32).to_be_bytes());
        for link in &self.links {
            out.extend_from_slice(link.as_str().as_bytes());
        }
        out.extend_from_slice(&(self.patterns.len() as u32).to_be_bytes());
        for pattern in &self.patterns {
            put(&mut out, pattern.as_str().as_bytes());
        }
        out
    }

    /// Signs the announcement with its nation's node key.
    pub fn sign(self, signer: &Signer) -> SignedAnnouncement {
        let signature = signer.sign_with_context(&self.signed_bytes());
        SignedAnnouncement {
            announcement: self,
            signature,
        }
    }
}

impl SignedAnnouncement {
    /// Checks the signature against the announcing nation's node key.
    pub fn verify(&self, node_key: &[u8]) -> Result<(), AnnouncementError> {
        let announcement = &self.announcement;
        if announcement.patterns.len() > MAX_ANNOUNCED_PATTERNS {
            return Err(AnnouncementError::TooManyPatterns {
                nation: announcement.nation,
                count: announcement.patterns.len(),
            });
        }
        UnparsedPublicKey::new(&ED25519, node_key)
            .verify(&announcement.signed_bytes(), &self.signature)
            .map_err(|_| AnnouncementError::BadSignature(announcement.nation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_allows_its_burst_then_one_an_interval() {
        let pace = Pace {
            interval_us: 100,
            burst: 3,
        };
        let mut paced = Paced::default();
        let now = 1_000_000;
        let at_once = (0..10).take_while(|_| paced.take(pace, now)).count();
        assert_eq!(at_once, 3);
        assert_eq!(paced.next_us(pace), now + 100);
        assert!(!paced.take(pace, now + 99));
        assert!(paced.take(pace, now + 100));
        assert!(!paced.take(pace, now + 150));
        // Idle long enough, the whole burst is back, and no more.
        let later = now + 10_000;
        assert_eq!((0..10).take_while(|_| paced.take(pace, later)).count(), 3);
    }

    #[test]
    fn an_honest_node_never_outruns_what_its_peers_take() {
        // The fastest an honest node announces, received at once in bursts
        // of its own pace, always fits the received pace.
        let mut own = Paced::default();
        let mut received = Paced::default();
        let mut now = 0;
        for _ in 0..1000 {
            now = now.max(own.next_us(OWN_PACE));
            assert!(own.take(OWN_PACE, now));
            assert!(received.take(RECEIVED_PACE, now), "refused at {now}");
        }
    }

    fn signer() -> Signer {
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Signer::from_pkcs8(der.as_ref()).unwrap()
    }

    fn announcement() -> Announcement {
        Announcement {
            nation: Nation::parse("GBR").unwrap(),
            seq: 7,
            links: [Nation::parse("FRA").unwrap()].into(),
            patterns: [Pattern::new("sigint.>").unwrap()].into(),
        }
    }

    #[test]
    fn a_signed_announcement_verifies_and_any_change_breaks_it() {
        let signer = signer();
        let signed = announcement().sign(&signer);
        assert_eq!(signed.verify(signer.public_key()), Ok(()));

        let mut changed = signed.clone();
        changed.announcement.seq += 1;
        assert!(changed.verify(signer.public_key()).is_err());
        let mut changed = signed.clone();
        changed.announcement.links.insert(Nation::parse("USA").unwrap());
        assert!(changed.verify(signer.public_key()).is_err());
        let mut changed = signed.clone();
        changed.announcement.patterns.insert(Pattern::new(">").unwrap());
        assert!(changed.verify(signer.public_key()).is_err());
        let mut changed = signed.clone();
        changed.announcement.nation = Nation::parse("FRA").unwrap();
        assert!(changed.verify(signer.public_key()).is_err());

        // Another node's key cannot stand in.
        assert_eq!(
            signed.verify(self::signer().public_key()),
            Err(AnnouncementError::BadSignature(Nation::parse("GBR").unwrap()))
        );
    }

    #[test]
    fn too_many_patterns_are_refused_before_the_signature_check() {
        let signer = signer();
        let mut big = announcement();
        big.patterns = (0..=MAX_ANNOUNCED_PATTERNS)
            .map(|i| Pattern::new(format!("t{i}")).unwrap())
            .collect();
        let signed = big.sign(&signer);
        assert!(matches!(
            signed.verify(signer.public_key()),
            Err(AnnouncementError::TooManyPatterns { .. })
        ));
    }
}
