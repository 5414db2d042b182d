//! The message ids a node has seen, keyed by origin and id, remembered for
//! the whole age limit within a fixed memory bound, so that a replay or a
//! second copy is dropped however it arrives.
//!
//! Memory: each id costs about 64 bytes (a hash-set entry and a queue
//! entry), so the default bound of 2^20 ids is about 64 MiB at most. At
//! rates where the age limit would hold more ids than that, ids are
//! forgotten oldest first from the origin holding the most, and that
//! origin's age floor rises with them: anything from it not newer than its
//! newest forgotten id is refused as stale. So an id is either remembered
//! or refused, never taken twice; and one origin that floods the network
//! raises only its own floor, never another nation's.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::envelope::MessageId;
use crate::label::Nation;

/// How old a message may be when it arrives.
pub const MAX_AGE_US: u64 = 10 * 60 * 1_000_000;
/// How far ahead of this node's clock a message's time may be: more
/// would let a replay outlive the window.
pub const MAX_SKEW_US: u64 = 30 * 1_000_000;
/// Ids remembered at most (see the module docs).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Why an id is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unseen {
    /// Seen before.
    Duplicate,
    /// Older than the age limit, or than the newest id of its origin
    /// forgotten.
    Stale,
    /// From the future by more than the allowed skew.
    Future,
}

/// The ids of one origin.
#[derive(Debug, Default)]
struct Window {
    ids: HashSet<MessageId>,
    /// Insertion order, with each message's time, for forgetting.
    order: VecDeque<(u64, MessageId)>,
    /// Times at or below this are refused: ids this old may have been
    /// forgotten.
    floor_us: u64,
}

impl Window {
    fn forget_oldest(&mut self) -> bool {
        let Some((created_us, id)) = self.order.pop_front() else {
            return false;
        };
        self.ids.remove(&id);
        self.floor_us = self.floor_us.max(created_us);
        true
    }
}

/// The replay window: the ids seen per origin, bounded by the age limit and
/// by a capacity (see the module docs).
#[derive(Debug)]
pub struct SeenIds {
    windows: HashMap<Nation, Window>,
    len: usize,
    capacity: usize,
    /// Ids forgotten to keep the bound, per origin, since last taken
    /// ([`SeenIds::take_overflow`]).
    overflow: HashMap<Nation, u64>,
}

impl SeenIds {
    /// A window that remembers at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> SeenIds {
        SeenIds {
            windows: HashMap::new(),
            len: 0,
            capacity: capacity.max(1),
            overflow: HashMap::new(),
        }
    }

    /// Refuses as stale anything from `origin` not newer than `floor_us`
    /// (a restarted node's store forgot its ids up to there).
    pub fn raise_floor(&mut self, origin: Nation, floor_us: u64) {
        let window = self.windows.entry(origin).or_default();
        window.floor_us = window.floor_us.max(floor_us);
    }

    /// Each origin that had ids forgotten to keep the bound since the last
    /// call: how many, and its floor now.
    pub fn take_overflow(&mut self) -> Vec<(Nation, u64, u64)> {
        let mut overflow: Vec<(Nation, u64, u64)> = self
            .overflow
            .drain()
            .map(|(origin, count)| (origin, count, self.windows.get(&origin).map_or(0, |w| w.floor_us)))
            .collect();
        overflow.sort_unstable();
        overflow
    }

    /// Whether a message with this origin, id and time could be taken now.
    pub fn check(&self, origin: Nation, id: MessageId, created_us: u64, now_us: u64) -> Result<(), Unseen> {
        if created_us > now_us.saturating_add(MAX_SKEW_US) {
            return Err(Unseen::Future);
        }
        let window = self.windows.get(&origin);
        let floor_us = window.map_or(0, |w| w.floor_us);
        if created_us <= floor_us || now_us.saturating_sub(created_us) > MAX_AGE_US {
            return Err(Unseen::Stale);
        }
        if window.is_some_and(|w| w.ids.contains(&id)) {
            return Err(Unseen::Duplicate);
        }
        Ok(())
    }

    /// Whether this id of this origin is remembered.
    pub fn contains(&self, origin: Nation, id: MessageId) -> bool {
        self.windows.get(&origin).is_some_and(|w| w.ids.contains(&id))
    }

    /// Checks, then remembers the id.
    pub fn take(
        &mut self,
        origin: Nation,
        id: MessageId,
        created_us: u64,
        now_us: u64,
    ) -> Result<(), Unseen> {
        if created_us > now_us.saturating_add(MAX_SKEW_US) {
            return Err(Unseen::Future);
        }
        let window = self.windows.entry(origin).or_default();
        if created_us <= window.floor_us || now_us.saturating_sub(created_us) > MAX_AGE_US {
            return Err(Unseen::Stale);
        }
        // One probe of the set, not a lookup and then an insert: at a
        // million ids each probe is a cache miss.
        if !window.ids.insert(id) {
            return Err(Unseen::Duplicate);
        }
        window.order.push_back((created_us, id));
        self.len += 1;
        while self.len > self.capacity {
            // The origin holding the most gives way: a flood forgets its own.
            let Some((&fullest, window)) = self.windows.iter_mut().max_by_key(|(_, w)| w.order.len()) else {
                break;
            };
            if !window.forget_oldest() {
                break;
            }
            *self.overflow.entry(fullest).or_insert(0) += 1;
            self.len -= 1;
        }
        Ok(())
    }

    /// Forgets ids past the age limit: the age check refuses them anyway.
    pub fn expire(&mut self, now_us: u64) {
        let limit = now_us.saturating_sub(MAX_AGE_US);
        for window in self.windows.values_mut() {
            while window.order.front().is_some_and(|&(created, _)| created < limit) {
                window.forget_oldest();
                self.len -= 1;
            }
        }
    }

    /// The ids remembered, over all origins.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    const NOW: u64 = 1_000 * 1_000_000_000;

    #[test]
    fn ids_are_keyed_by_origin_and_id() {
        let (gbr, fra) = (Nation::parse("GBR").unwrap(), Nation::parse("FRA").unwrap());
        let mut seen = SeenIds::new(16);
        assert_eq!(seen.take(gbr, id(1), NOW, NOW), Ok(()));
        assert_eq!(seen.take(gbr, id(1), NOW, NOW), Err(Unseen::Duplicate));
        // Another origin using the same id does not suppress GBR's.
        assert_eq!(seen.take(fra, id(1), NOW, NOW), Ok(()));
    }

    #[test]
    fn what_is_forgotten_for_room_is_reported_and_a_loaded_floor_holds() {
        let (gbr, usa) = (Nation::parse("GBR").unwrap(), Nation::parse("USA").unwrap());
        let mut seen = SeenIds::new(4);
        for n in 0..10 {
            seen.take(usa, id(n), NOW - 100 + u64::from(n), NOW).unwrap();
        }
        assert_eq!(seen.take_overflow(), vec![(usa, 6, NOW - 100 + 5)]);
        assert!(seen.take_overflow().is_empty(), "reported once");
        // A restarted node's store forgot GBR's up to a floor.
        seen.raise_floor(gbr, NOW - 50);
        assert_eq!(seen.take(gbr, id(1), NOW - 50, NOW), Err(Unseen::Stale));
        assert_eq!(seen.take(gbr, id(1), NOW - 49, NOW), Ok(()));
    }

    #[test]
    fn old_and_future_times_are_refused() {
        let gbr = Nation::parse("GBR").unwrap();
        let mut seen = SeenIds::new(16);
        assert_eq!(
            seen.take(gbr, id(1), NOW - MAX_AGE_US - 1, NOW),
            Err(Unseen::Stale)
        );
        assert_eq!(
            seen.take(gbr, id(2), NOW + MAX_SKEW_US + 1, NOW),
            Err(Unseen::Future)
        );
        assert_eq!(seen.take(gbr, id(3), NOW + MAX_SKEW_US, NOW), Ok(()));
    }

    #[test]
    fn a_flooding_origin_forgets_its_own_ids_first() {
        let (gbr, usa) = (Nation::parse("GBR").unwrap(), Nation::parse("USA").unwrap());
        let mut seen = SeenIds::new(8);
        assert_eq!(seen.take(gbr, id(1), NOW - 5_000_000, NOW), Ok(()));
        for n in 10..40 {
            let created = NOW - 1_000_000 + u64::from(n);
            assert_eq!(seen.take(usa, id(n), created, NOW), Ok(()));
        }
        // USA's own floor rose: its oldest ids are gone, and so is room
        // for anything as old.
        assert_eq!(seen.check(usa, id(99), NOW - 1_000_000, NOW), Err(Unseen::Stale));
        // GBR's id is still remembered, and GBR's late messages still pass.
        assert_eq!(
            seen.check(gbr, id(1), NOW - 5_000_000, NOW),
            Err(Unseen::Duplicate)
        );
        assert_eq!(seen.check(gbr, id(2), NOW - 4_000_000, NOW), Ok(()));
        assert_eq!(seen.len(), 8);
    }

    proptest! {
        /// Whatever the order, times and capacity, an id is never taken
        /// twice, and memory never exceeds the capacity.
        #[test]
        fn never_taken_twice(
            arrivals in proptest::collection::vec((0u8..40, any::<bool>(), 0u64..50), 1..300),
            capacity in 1usize..20,
        ) {
            let origins = [Nation::parse("GBR").unwrap(), Nation::parse("FRA").unwrap()];
            let mut seen = SeenIds::new(capacity);
            let mut taken = std::collections::HashSet::new();
            let mut now = NOW;
            for (n, second, advance) in arrivals {
                let origin = origins[usize::from(second)];
                now += advance * 1_000_000;
                seen.expire(now);
                // Each id has one fixed time, as a genuine envelope does.
                let created = NOW + u64::from(n) * 1_000_000;
                if seen.take(origin, id(n), created, now).is_ok() {
                    prop_assert!(taken.insert((origin, n)), "id {} of {} taken twice", n, origin);
                }
                prop_assert!(seen.len() <= capacity);
            }
        }
    }
}
