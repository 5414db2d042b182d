//! End-to-end receipts, sans IO: a target nation's node says to a message's
//! origin that it has stored and delivered it, in batches, each bound to
//! the tag key the two nodes share (so no relay can forge one, or change
//! what one says); and the origin's table of the messages some target has
//! not receipted yet, which says what to send again and what expired. No
//! sockets, no clock: the caller passes the time in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::authenticator::{TagKey, TAG_LEN};
use crate::envelope::MessageId;
use crate::label::Nation;

/// The most ids one receipt names: a frame of about 16 KiB.
pub const MAX_IDS: usize = 1024;
/// How long a receipt waits for others to go with it.
pub const BATCH_US: u64 = 5_000;
/// Ids a node holds waiting to be receipted, over every origin: past it,
/// the oldest batch goes out at once.
pub const MAX_PENDING: usize = 64 * MAX_IDS;

/// What a target's node says to an origin's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The target nation whose node has the messages.
    pub from: Nation,
    /// The origin they came from.
    pub to: Nation,
    /// The nations it still has to pass through, in order, before `to`:
    /// each relay takes itself off the front. Not tagged: a relay that
    /// misroutes a receipt does no more than one that drops it.
    pub via: Vec<Nation>,
    /// The messages, at most [`MAX_IDS`].
    pub ids: Vec<MessageId>,
    /// `from`'s tag over `from`, `to` and `ids`, under the key it shares
    /// with `to`.
    pub mac: [u8; TAG_LEN],
}

/// Why a receipt is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// More ids than a receipt may name, or none.
    #[error("a receipt names {0} ids; it may name 1 to {MAX_IDS}")]
    Size(usize),
    /// No key is shared with the nation it claims to come from.
    #[error("no key is shared with {0}, so its receipts cannot be checked")]
    UnknownSender(Nation),
    /// Its tag is not its sender's.
    #[error("its tag is not {0}'s: forged, or changed on the way")]
    BadTag(Nation),
}

impl Receipt {
    /// `from`'s receipt to `to` for `ids`, tagged with `key`, the key they
    /// share.
    pub fn new(from: Nation, to: Nation, via: Vec<Nation>, ids: Vec<MessageId>, key: &TagKey) -> Receipt {
        let mac = key.receipt_mac(from, to, &ids);
        Receipt {
            from,
            to,
            via,
            ids,
            mac,
        }
    }

    /// Checks the receipt at its origin, with the key shared with its
    /// sender (`None`: no key is).
    pub fn verify(&self, key: Option<&TagKey>) -> Result<(), ReceiptError> {
        if self.ids.is_empty() || self.ids.len() > MAX_IDS {
            return Err(ReceiptError::Size(self.ids.len()));
        }
        let key = key.ok_or(ReceiptError::UnknownSender(self.from))?;
        if key.accepts_receipt(&self.mac, self.from, self.to, &self.ids) {
            Ok(())
        } else {
            Err(ReceiptError::BadTag(self.from))
        }
    }
}

/// A target's receipts waiting to go, per origin and way back.
#[derive(Debug, Default)]
pub struct Outgoing {
    waiting: BTreeMap<(Nation, Vec<Nation>), (u64, Vec<MessageId>)>,
    len: usize,
}

impl Outgoing {
    /// Adds `id`, from `origin`, to go back by `via`.
    pub fn add(&mut self, origin: Nation, via: Vec<Nation>, id: MessageId, now_us: u64) {
        let (_, ids) = self.waiting.entry((origin, via)).or_insert((now_us, Vec::new()));
        ids.push(id);
        self.len += 1;
    }

    /// When the next batch is due, if one waits.
    pub fn next_due_us(&self) -> Option<u64> {
        self.waiting
            .values()
            .map(|(since_us, ids)| {
                if ids.len() >= MAX_IDS {
                    0
                } else {
                    since_us.saturating_add(BATCH_US)
                }
            })
            .min()
    }

    /// The receipts due now: each batch [`BATCH_US`] old or full, and,
    /// past [`MAX_PENDING`], the oldest too. Each is made by `me` with the
    /// key it shares with the origin; a batch for an origin `keys` has no
    /// key for is dropped (its origin will send again).
    pub fn take_due(&mut self, me: Nation, now_us: u64, keys: &BTreeMap<Nation, TagKey>) -> Vec<Receipt> {
        let mut due: Vec<(Nation, Vec<Nation>)> = self
            .waiting
            .iter()
            .filter(|(_, (since_us, ids))| {
                ids.len() >= MAX_IDS || since_us.saturating_add(BATCH_US) <= now_us
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut left = self.len - due.iter().map(|key| self.waiting[key].1.len()).sum::<usize>();
        if left > MAX_PENDING {
            let mut by_age: Vec<(u64, (Nation, Vec<Nation>))> = self
                .waiting
                .iter()
                .filter(|(key, _)| !due.contains(key))
                .map(|(key, (since_us, _))| (*since_us, key.clone()))
                .collect();
            by_age.sort();
            for (_, key) in by_age {
                if left <= MAX_PENDING {
                    break;
                }
                left -= self.waiting[&key].1.len();
                due.push(key);
            }
        }
        let mut receipts = Vec::new();
        for key in due {
            let Some((_, ids)) = self.waiting.remove(&key) else {
                continue;
            };
            self.len -= ids.len();
            let (origin, via) = key;
            let Some(tag_key) = keys.get(&origin) else {
                continue;
            };
            for chunk in ids.chunks(MAX_IDS) {
                receipts.push(Receipt::new(me, origin, via.clone(), chunk.to_vec(), tag_key));
            }
        }
        receipts
    }
}

/// A message the origin keeps until every target receipts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreceipted {
    /// When the origin created it.
    pub created_us: u64,
    /// The targets that have not receipted it.
    pub missing: BTreeSet<Nation>,
    /// When it was last sent (or sent again).
    pub sent_us: u64,
    /// How many times it was sent again.
    pub resent: u32,
}

/// What a receipt did at the origin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Messages every target has now receipted: the origin may forget them.
    pub complete: Vec<MessageId>,
    /// Ids it named that the origin was not waiting on from that nation
    /// (never sent to it, receipted already, or forgotten).
    pub unknown: usize,
}

/// The origin's messages not yet receipted by every target, bounded.
#[derive(Debug)]
pub struct Awaiting {
    entries: HashMap<MessageId, Unreceipted>,
    by_age: BTreeSet<(u64, MessageId)>,
    capacity: usize,
}

impl Awaiting {
    /// A table of at most `capacity` messages (at least 1).
    pub fn new(capacity: usize) -> Awaiting {
        Awaiting {
            entries: HashMap::new(),
            by_age: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many messages await receipts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Waits for `targets` to receipt `id` (none: nothing to wait for).
    /// Past the capacity, the oldest is given up and returned, with the
    /// targets it still missed, for the caller to audit.
    pub fn track(
        &mut self,
        id: MessageId,
        created_us: u64,
        targets: BTreeSet<Nation>,
        now_us: u64,
    ) -> Option<(MessageId, Unreceipted)> {
        if targets.is_empty() {
            return None;
        }
        let entry = Unreceipted {
            created_us,
            missing: targets,
            sent_us: now_us,
            resent: 0,
        };
        if let Some(old) = self.entries.insert(id, entry) {
            self.by_age.remove(&(old.created_us, id));
        }
        self.by_age.insert((created_us, id));
        if self.entries.len() <= self.capacity {
            return None;
        }
        let &(_, oldest) = self.by_age.first()?;
        self.remove(oldest).map(|gone| (oldest, gone))
    }

    fn remove(&mut self, id: MessageId) -> Option<Unreceipted> {
        let gone = self.entries.remove(&id)?;
        self.by_age.remove(&(gone.created_us, id));
        Some(gone)
    }

    /// What `id` still waits for.
    pub fn get(&self, id: &MessageId) -> Option<&Unreceipted> {
        self.entries.get(id)
    }

    /// Takes a verified receipt from `from`: each message it names stops
    /// waiting for `from`, and those that waited for nobody else are done.
    pub fn receipt(&mut self, from: Nation, ids: &[MessageId]) -> Taken {
        let mut taken = Taken::default();
        for id in ids {
            let Some(entry) = self.entries.get_mut(id) else {
                taken.unknown += 1;
                continue;
            };
            if !entry.missing.remove(&from) {
                taken.unknown += 1;
                continue;
            }
            if entry.missing.is_empty() {
                self.remove(*id);
                taken.complete.push(*id);
            }
        }
        taken
    }

    /// Gives up what was created before `before_us`: each message with the
    /// targets that never receipted it, oldest first.
    pub fn expire(&mut self, before_us: u64) -> Vec<(MessageId, Unreceipted)> {
        let old: Vec<MessageId> = self
            .by_age
            .iter()
            .take_while(|(created_us, _)| *created_us < before_us)
            .map(|&(_, id)| id)
            .collect();
        old.into_iter()
            .filter_map(|id| self.remove(id).map(|gone| (id, gone)))
            .collect()
    }

    /// The messages last sent at or before `sent_before_us`, oldest first,
    /// each marked sent again at `now_us`: what to send again to the
    /// targets still missing.
    pub fn overdue(&mut self, sent_before_us: u64, now_us: u64) -> Vec<(MessageId, BTreeSet<Nation>)> {
        let mut overdue = Vec::new();
        for &(_, id) in &self.by_age {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if entry.sent_us <= sent_before_us {
                entry.sent_us = now_us;
                entry.resent += 1;
                overdue.push((id, entry.missing.clone()));
            }
        }
        overdue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MessageIds, Signer};

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    /// The key `a` shares with `b`, as `a` makes it.
    fn shared(a: &Signer, b: &Signer) -> TagKey {
        let keys = a.tag_keys(&HashMap::from([(nation("ZZZ"), b.public_key().to_vec())]));
        keys.into_values().next().unwrap()
    }

    fn ids(n: usize) -> Vec<MessageId> {
        let ids = MessageIds::new([5; 32]);
        (0..n).map(|_| ids.next_id()).collect()
    }

    #[test]
    fn a_receipt_verifies_with_the_shared_key_only_and_as_sent() {
        let (fra, gbr, deu) = (signer(), signer(), signer());
        let receipt = Receipt::new(
            nation("FRA"),
            nation("GBR"),
            vec![nation("DEU")],
            ids(3),
            &shared(&fra, &gbr),
        );
        receipt.verify(Some(&shared(&gbr, &fra))).unwrap();
        // A relay's key, or no key, does not do.
        assert_eq!(
            receipt.verify(Some(&shared(&gbr, &deu))),
            Err(ReceiptError::BadTag(nation("FRA")))
        );
        assert_eq!(
            receipt.verify(None),
            Err(ReceiptError::UnknownSender(nation("FRA")))
        );
        // A relay that changes what it says, or whose it is, breaks it; the
        // way back is the relays' to change.
        let mut changed = receipt.clone();
        changed.ids.pop();
        assert!(changed.verify(Some(&shared(&gbr, &fra))).is_err());
        let mut changed = receipt.clone();
        changed.from = nation("DEU");
        assert!(changed.verify(Some(&shared(&gbr, &fra))).is_err());
        let mut changed = receipt.clone();
        changed.ids.reverse();
        assert!(changed.verify(Some(&shared(&gbr, &fra))).is_err());
        let mut rerouted = receipt.clone();
        rerouted.via.clear();
        rerouted.verify(Some(&shared(&gbr, &fra))).unwrap();
        // Too many ids, or none.
        let key = shared(&fra, &gbr);
        let big = Receipt::new(nation("FRA"), nation("GBR"), Vec::new(), ids(MAX_IDS + 1), &key);
        assert_eq!(big.verify(Some(&key)), Err(ReceiptError::Size(MAX_IDS + 1)));
        let empty = Receipt::new(nation("FRA"), nation("GBR"), Vec::new(), Vec::new(), &key);
        assert_eq!(empty.verify(Some(&key)), Err(ReceiptError::Size(0)));
    }

    #[test]
    fn receipts_wait_for_company_then_go_per_origin_and_way() {
        let (fra, gbr, deu) = (signer(), signer(), signer());
        let keys = BTreeMap::from([
            (nation("GBR"), shared(&fra, &gbr)),
            (nation("DEU"), shared(&fra, &deu)),
        ]);
        let mut out = Outgoing::default();
        let [a, b, c] = ids(3).try_into().unwrap();
        out.add(nation("GBR"), vec![nation("DEU")], a, 1_000);
        out.add(nation("GBR"), vec![nation("DEU")], b, 2_000);
        out.add(nation("DEU"), Vec::new(), c, 3_000);
        assert_eq!(out.next_due_us(), Some(1_000 + BATCH_US));
        assert!(out
            .take_due(nation("FRA"), 1_000 + BATCH_US - 1, &keys)
            .is_empty());
        let first = out.take_due(nation("FRA"), 1_000 + BATCH_US, &keys);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].to, first[0].ids.clone()), (nation("GBR"), vec![a, b]));
        first[0].verify(Some(&shared(&gbr, &fra))).unwrap();
        assert_eq!(out.next_due_us(), Some(3_000 + BATCH_US));
        let second = out.take_due(nation("FRA"), 3_000 + BATCH_US, &keys);
        assert_eq!((second[0].to, second[0].ids.clone()), (nation("DEU"), vec![c]));
        assert_eq!(out.next_due_us(), None);
    }

    #[test]
    fn a_full_batch_goes_at_once_and_the_pending_ids_are_bounded() {
        let fra = signer();
        let gbr = signer();
        let keys = BTreeMap::from([(nation("GBR"), shared(&fra, &gbr))]);
        let mut out = Outgoing::default();
        for id in ids(MAX_IDS) {
            out.add(nation("GBR"), Vec::new(), id, 0);
        }
        assert_eq!(out.next_due_us(), Some(0));
        let full = out.take_due(nation("FRA"), 0, &keys);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].ids.len(), MAX_IDS);
        // Many ways back, none full or due yet: past the bound, the
        // oldest go at once.
        let codes = [
            "AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "III", "JJJ", "KKK", "LLL", "MMM", "NNN",
            "OOO",
        ];
        let ways: Vec<Vec<Nation>> = codes
            .iter()
            .flat_map(|a| codes.iter().map(move |b| vec![nation(a), nation(b)]))
            .collect();
        let per_way = MAX_PENDING / ways.len() + 10;
        assert!(per_way < MAX_IDS);
        let mut time = 0;
        for (way, chunk) in ways.iter().zip(ids(per_way * ways.len()).chunks(per_way)) {
            time += 1;
            for id in chunk {
                out.add(nation("GBR"), way.clone(), *id, time);
            }
        }
        let early = out.take_due(nation("FRA"), time, &keys);
        assert!(!early.is_empty());
        assert!(out.len <= MAX_PENDING, "{} ids still wait", out.len);
        // The oldest went: the first way's.
        assert_eq!(early[0].via, ways[0]);
    }

    #[test]
    fn the_origin_forgets_a_message_only_once_every_target_receipted_it() {
        let mut awaiting = Awaiting::new(16);
        let [a, b] = ids(2).try_into().unwrap();
        let both: BTreeSet<Nation> = [nation("FRA"), nation("DEU")].into();
        assert!(awaiting.track(a, 10, both.clone(), 10).is_none());
        assert!(awaiting.track(b, 11, [nation("FRA")].into(), 11).is_none());
        assert!(awaiting.track(ids(3)[2], 12, BTreeSet::new(), 12).is_none());
        assert_eq!(awaiting.len(), 2, "a message with no target waits for nothing");
        let taken = awaiting.receipt(nation("FRA"), &[a, b]);
        assert_eq!(taken.complete, vec![b]);
        assert_eq!(awaiting.get(&a).unwrap().missing, [nation("DEU")].into());
        // Again from FRA, or from a nation that was no target: nothing.
        let again = awaiting.receipt(nation("FRA"), &[a]);
        assert_eq!((again.complete.len(), again.unknown), (0, 1));
        let stranger = awaiting.receipt(nation("POL"), &[a]);
        assert_eq!((stranger.complete.len(), stranger.unknown), (0, 1));
        assert_eq!(awaiting.receipt(nation("DEU"), &[a]).complete, vec![a]);
        assert!(awaiting.is_empty());
    }

    #[test]
    fn what_is_overdue_is_sent_again_and_what_is_old_expires_with_who_never_answered() {
        let mut awaiting = Awaiting::new(16);
        let [a, b] = ids(2).try_into().unwrap();
        awaiting.track(a, 100, [nation("FRA"), nation("DEU")].into(), 100);
        awaiting.track(b, 200, [nation("FRA")].into(), 200);
        awaiting.receipt(nation("FRA"), &[a]);
        let overdue = awaiting.overdue(150, 1_000);
        assert_eq!(overdue, vec![(a, [nation("DEU")].into())]);
        assert_eq!(awaiting.get(&a).unwrap().resent, 1);
        assert!(awaiting.overdue(150, 1_100).is_empty(), "sent again at 1,000");
        let expired = awaiting.expire(150);
        assert_eq!(expired.len(), 1);
        assert_eq!(
            (expired[0].0, expired[0].1.missing.clone()),
            (a, [nation("DEU")].into())
        );
        assert_eq!(awaiting.len(), 1);
    }

    #[test]
    fn past_its_capacity_the_table_gives_up_the_oldest() {
        let mut awaiting = Awaiting::new(2);
        let [a, b, c] = ids(3).try_into().unwrap();
        awaiting.track(a, 1, [nation("FRA")].into(), 1);
        awaiting.track(b, 2, [nation("FRA")].into(), 2);
        let given_up = awaiting.track(c, 3, [nation("FRA")].into(), 3).unwrap();
        assert_eq!(given_up.0, a);
        assert_eq!(awaiting.len(), 2);
        assert!(awaiting.get(&a).is_none());
    }

    #[test]
    fn both_ends_of_a_pair_make_the_same_receipt_tag() {
        let (fra, gbr) = (signer(), signer());
        let from_fra = shared(&fra, &gbr).receipt_mac(nation("FRA"), nation("GBR"), &ids(1));
        let from_gbr = shared(&gbr, &fra).receipt_mac(nation("FRA"), nation("GBR"), &ids(1));
        assert_eq!(from_fra, from_gbr);
    }
}
