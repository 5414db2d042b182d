//! The message ids a node has seen, keyed by origin and id, remembered for
//! the whole age limit within a fixed memory bound, so that a replay or a
//! second copy is dropped however it arrives.
//!
//! Memory: each id costs about 80 bytes (a hash-set entry and a queue
//! entry), so the default bound of 2^20 ids is about 80 MiB at most. At
//! rates where the age limit would hold more ids than that, the oldest
//! are forgotten and the age floor rises with them: anything not newer
//! than the newest forgotten id is refused as stale. So an id is either
//! remembered or refused, never taken twice.

use std::collections::{HashSet, VecDeque};

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
    /// Older than the age limit, or than the newest id forgotten.
    Stale,
    /// From the future by more than the allowed skew.
    Future,
}

#[derive(Debug)]
pub struct SeenIds {
    ids: HashSet<(Nation, MessageId)>,
    /// Insertion order, with each message's time, for forgetting.
    order: VecDeque<(u64, Nation, MessageId)>,
    /// Times at or below this are refused: ids this old may have been
    /// forgotten.
    floor_us: u64,
    capacity: usize,
}

impl SeenIds {
    pub fn new(capacity: usize) -> SeenIds {
        SeenIds {
            ids: HashSet::new(),
            order: VecDeque::new(),
            floor_us: 0,
            capacity: capacity.max(1),
        }
    }

    /// Whether a message with this origin, id and time could be taken now.
    pub fn check(&self, origin: Nation, id: MessageId, created_us: u64, now_us: u64) -> Result<(), Unseen> {
        if created_us > now_us.saturating_add(MAX_SKEW_US) {
            return Err(Unseen::Future);
        }
        if created_us <= self.floor_us || now_us.saturating_sub(created_us) > MAX_AGE_US {
            return Err(Unseen::Stale);
        }
        if self.ids.contains(&(origin, id)) {
            return Err(Unseen::Duplicate);
        }
        Ok(())
    }

    pub fn contains(&self, origin: Nation, id: MessageId) -> bool {
        self.ids.contains(&(origin, id))
    }

    /// Checks, then remembers the id.
    pub fn take(
        &mut self,
        origin: Nation,
        id: MessageId,
        created_us: u64,
        now_us: u64,
    ) -> Result<(), Unseen> {
        self.check(origin, id, created_us, now_us)?;
        self.ids.insert((origin, id));
        self.order.push_back((created_us, origin, id));
        while self.order.len() > self.capacity {
            self.forget_oldest();
        }
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if let Some((created_us, origin, id)) = self.order.pop_front() {
            self.ids.remove(&(origin, id));
            self.floor_us = self.floor_us.max(created_us);
        }
    }

    /// Forgets ids past the age limit: the age check refuses them anyway.
    pub fn expire(&mut self, now_us: u64) {
        let limit = now_us.saturating_sub(MAX_AGE_US);
        while self.order.front().is_some_and(|&(created, _, _)| created < limit) {
            self.forget_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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

    proptest! {
        /// Whatever the order, times and capacity, an id is never taken
        /// twice, and memory never exceeds the capacity.
        #[test]
        fn never_taken_twice(
            arrivals in proptest::collection::vec((0u8..40, 0u64..50), 1..300),
            capacity in 1usize..20,
        ) {
            let gbr = Nation::parse("GBR").unwrap();
            let mut seen = SeenIds::new(capacity);
            let mut taken = std::collections::HashSet::new();
            let mut now = NOW;
            for (n, advance) in arrivals {
                now += advance * 1_000_000;
                seen.expire(now);
                // Each id has one fixed time, as a genuine envelope does.
                let created = NOW + u64::from(n) * 1_000_000;
                if seen.take(gbr, id(n), created, now).is_ok() {
                    prop_assert!(taken.insert(n), "id {} taken twice", n);
                }
                prop_assert!(seen.len() <= capacity);
            }
        }
    }
}
