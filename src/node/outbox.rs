//! Each peer's outbox: the envelopes and seals this node must still hand
//! to that peer, in order, kept until the peer acknowledges custody of
//! them (a cumulative `Custody` ack), across link outages. A link's writer
//! sends from it, from the oldest entry not acknowledged, each time the
//! link comes up.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::wire::{self, Frame};

/// The fewest bytes an entry counts for against the outbox's bound: its
/// bookkeeping, so a flood of tiny frames is bounded too.
const ENTRY_OVERHEAD: usize = 256;

/// One frame held for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Its place in the outbox's order; the `Custody` ack names it.
    pub(super) seq: u64,
    /// When it was queued, microseconds since the epoch (for the age
    /// limit).
    pub(super) queued_us: u64,
    /// The encoded `Forward` or `Seals` frame.
    pub(super) frame: Bytes,
}

fn charge(frame: &Bytes) -> usize {
    frame.len().max(ENTRY_OVERHEAD)
}

/// The outbox was full: the frame was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Full;

/// What is wrong with a peer's `Custody` ack.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum AckError {
    /// It acknowledged an entry this link never sent it.
    #[error("the peer acknowledged entry {through}, but this link sent it nothing past {written:?}")]
    NotSent {
        /// What it acknowledged.
        through: u64,
        /// The last entry this link wrote.
        written: Option<u64>,
    },
}

pub(super) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

struct State {
    /// In `seq` order, not always consecutive (entries that expired, or
    /// were lost before they were stored, leave gaps).
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// The next entry the current link is to write.
    cursor: u64,
    /// The last entry the current link wrote, if any: the receiver counts
    /// on from it, so a jump needs a `Resume` first.
    written: Option<u64>,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    /// Entries acknowledged lately, newest last, kept a little (bounded
    /// by [`RECENT_BYTES`] and [`RECENT_US`]): if the peer is cut out
    /// before it relayed them, they are routed again along the new tree.
    recent: VecDeque<Entry>,
    recent_bytes: usize,
    /// The last entry already routed again along another path, so a
    /// link that keeps dropping costs each entry one re-route at most.
    rerouted_through: u64,
    /// When the current link last made progress: came up, or had entries
    /// acknowledged (microseconds since the epoch).
    progress_us: u64,
    /// Whether a frame was refused for want of room since that progress.
    /// With large frames the byte count stays just below the bound (a
    /// frame is refused when it would cross it), so "full" is what was
    /// refused, not what the count reached.
    refused_since_progress: bool,
}

/// The most bytes, and the longest time, acknowledged entries are kept
/// for a re-route after a cut.
const RECENT_BYTES: usize = 8 * 1024 * 1024;
const RECENT_US: u64 = 2_000_000;

impl Outbox {
    /// An outbox bounded at `max_frames` and `max_bytes`, holding `loaded`
    /// (a restarted node's stored entries, in order) to begin with.
    pub(super) fn new(max_frames: usize, max_bytes: usize, loaded: Vec<Entry>) -> Outbox {
        let next_seq = loaded.last().map_or(1, |last| last.seq + 1);
        let bytes = loaded.iter().map(|entry| charge(&entry.frame)).sum();
        Outbox {
            state: Mutex::new(State {
                cursor: loaded.first().map_or(next_seq, |first| first.seq),
                entries: loaded.into(),
                next_seq,
                written: None,
                bytes,
                max_frames: max_frames.max(1),
                max_bytes: max_bytes.max(1),
                recent: VecDeque::new(),
                recent_bytes: 0,
                rerouted_through: 0,
                progress_us: 0,
                refused_since_progress: false,
            }),
            ready: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` and returns its sequence number; never waits. A `bounded`
    /// frame (an envelope) is refused when the outbox is full, unless it
    /// is empty; seals are always taken, since the envelopes they seal
    /// were, and the receiver acknowledges nothing past an envelope
    /// waiting for its seal.
    pub(super) fn push(&self, frame: Bytes, queued_us: u64, bounded: bool) -> Result<u64, Full> {
        let mut state = self.state();
        let cost = charge(&frame);
        let full = state.entries.len() >= state.max_frames || state.bytes + cost > state.max_bytes;
        if bounded && !state.entries.is_empty() && full {
            state.refused_since_progress = true;
            return Err(Full);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.bytes += cost;
        state.entries.push_back(Entry {
            seq,
            queued_us,
            frame,
        });
        drop(state);
        self.ready.notify_one();
        Ok(seq)
    }

    /// A link came up (at `now_us`): it starts from the oldest entry not
    /// acknowledged.
    pub(super) fn attach(&self, now_us: u64) {
        let mut state = self.state();
        state.progress_us = now_us;
        state.refused_since_progress = false;
        state.cursor = state.entries.front().map_or(state.next_seq, |e| e.seq);
        state.written = None;
        drop(state);
        self.ready.notify_one();
    }

    /// Takes up to `max` frames for the current link to write, each after
    /// a `Resume` where the count does not run on from the last one
    /// written. Returns whether more are waiting.
    pub(super) fn take(&self, out: &mut Vec<Bytes>, max: usize) -> bool {
        let mut state = self.state();
        let start = state.entries.partition_point(|e| e.seq < state.cursor);
        let mut taken = 0;
        let mut last = state.written;
        for entry in state.entries.range(start..) {
            if taken == max {
                break;
            }
            if last.is_none_or(|w| w + 1 != entry.seq) {
                if let Ok(resume) = wire::encode(&Frame::Resume { next: entry.seq }) {
                    out.push(Bytes::from(resume));
                }
            }
            out.push(entry.frame.clone());
            last = Some(entry.seq);
            taken += 1;
        }
        if let Some(last) = last {
            state.written = Some(last);
            state.cursor = state.cursor.max(last + 1);
        }
        start + taken < state.entries.len()
    }

    /// Waits until something may be there to take.
    pub(super) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// The peer holds everything up to `through`: forget it (but for a
    /// while, see [`Outbox::take_all`]). Returns how many entries went.
    pub(super) fn acknowledge(&self, through: u64, now_us: u64) -> Result<usize, AckError> {
        let mut state = self.state();
        if state.written.is_none_or(|written| through > written) {
            return Err(AckError::NotSent {
                through,
                written: state.written,
            });
        }
        let mut forgotten = 0;
        if state.entries.front().is_some_and(|e| e.seq <= through) {
            state.progress_us = now_us;
            state.refused_since_progress = false;
        }
        while state.entries.front().is_some_and(|e| e.seq <= through) {
            if let Some(mut entry) = state.entries.pop_front() {
                state.bytes -= charge(&entry.frame);
                forgotten += 1;
                state.recent_bytes += entry.frame.len();
                entry.queued_us = now_us;
                state.recent.push_back(entry);
            }
        }
        while state
            .recent
            .front()
            .is_some_and(|e| state.recent_bytes > RECENT_BYTES || e.queued_us + RECENT_US < now_us)
        {
            if let Some(old) = state.recent.pop_front() {
                state.recent_bytes -= old.frame.len();
            }
        }
        Ok(forgotten)
    }

    /// Takes out the entries queued before `before_us`, oldest first
    /// (the current link, if any, resumes past them).
    pub(super) fn expire(&self, before_us: u64) -> Vec<Entry> {
        let mut state = self.state();
        let mut expired = Vec::new();
        while state.entries.front().is_some_and(|e| e.queued_us < before_us) {
            if let Some(entry) = state.entries.pop_front() {
                state.bytes -= charge(&entry.frame);
                expired.push(entry);
            }
        }
        expired
    }

    /// Takes out everything (a cut purges it): the entries held, and
    /// apart, those acknowledged lately (the peer may not have passed them
    /// on before it was cut).
    pub(super) fn take_all(&self) -> (Vec<Entry>, Vec<Entry>) {
        let mut state = self.state();
        state.bytes = 0;
        state.recent_bytes = 0;
        let recent = state.recent.drain(..).collect();
        (state.entries.drain(..).collect(), recent)
    }

    /// The frames held that were not routed again before, to route along
    /// another path while the link is down (they stay here too, for when
    /// it returns).
    pub(super) fn not_rerouted(&self) -> Vec<Bytes> {
        let mut state = self.state();
        let from = state.rerouted_through;
        let frames: Vec<Bytes> = state
            .entries
            .iter()
            .filter(|e| e.seq > from)
            .map(|e| e.frame.clone())
            .collect();
        if let Some(last) = state.entries.back() {
            state.rerouted_through = last.seq;
        }
        frames
    }

    /// Whether the outbox is full (at its bound, or it refused a frame)
    /// and its link has made no progress (come up, or had anything
    /// acknowledged) for `patience_us`: its peer does not keep up. A link
    /// that came back to a backlog has that long to start draining it
    /// before it counts as stalled.
    pub(super) fn stalled(&self, now_us: u64, patience_us: u64) -> bool {
        let state = self.state();
        let full = state.refused_since_progress
            || state.entries.len() >= state.max_frames
            || state.bytes >= state.max_bytes;
        full && now_us.saturating_sub(state.progress_us) > patience_us
    }

    /// Entries held, and the bytes they count for.
    pub(super) fn depth(&self) -> (usize, usize) {
        let state = self.state();
        (state.entries.len(), state.bytes)
    }

    /// The last entry no longer held (acknowledged or expired), if any.
    pub(super) fn forgotten_through(&self) -> Option<u64> {
        let state = self.state();
        state
            .entries
            .front()
            .map_or(state.next_seq, |e| e.seq)
            .checked_sub(1)
    }

    /// The frames held now, in order.
    pub(super) fn frames(&self) -> Vec<Bytes> {
        self.state().entries.iter().map(|e| e.frame.clone()).collect()
    }

    /// The entries held now, for a test to look at.
    #[cfg(test)]
    fn seqs(&self) -> Vec<u64> {
        self.state().entries.iter().map(|e| e.seq).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    fn resume(next: u64) -> Bytes {
        Bytes::from(wire::encode(&Frame::Resume { next }).unwrap())
    }

    #[test]
    fn a_link_writes_in_order_from_the_oldest_entry_not_acknowledged() {
        let outbox = Outbox::new(1 << 20, 1 << 20, Vec::new());
        for byte in 1..=3 {
            outbox.push(frame(byte, 10), 0, true).unwrap();
        }
        outbox.attach(0);
        let mut out = Vec::new();
        assert!(!outbox.take(&mut out, 10));
        assert_eq!(out, vec![resume(1), frame(1, 10), frame(2, 10), frame(3, 10)]);
        assert_eq!(outbox.acknowledge(1, 0), Ok(1));
        assert_eq!(outbox.forgotten_through(), Some(1));
        // The link drops; the next starts again from entry 2.
        outbox.attach(0);
        let mut again = Vec::new();
        outbox.take(&mut again, 10);
        assert_eq!(again, vec![resume(2), frame(2, 10), frame(3, 10)]);
        outbox.push(frame(4, 10), 0, true).unwrap();
        let mut more = Vec::new();
        outbox.take(&mut more, 10);
        assert_eq!(more, vec![frame(4, 10)], "the count runs on: no resume");
        assert_eq!(outbox.acknowledge(4, 0), Ok(3));
        assert_eq!(outbox.depth(), (0, 0));
    }

    #[test]
    fn take_is_bounded_and_says_more_wait() {
        let outbox = Outbox::new(1 << 20, 1 << 20, Vec::new());
        for byte in 0..5 {
            outbox.push(frame(byte, 1), 0, true).unwrap();
        }
        outbox.attach(0);
        let mut out = Vec::new();
        assert!(outbox.take(&mut out, 2));
        assert_eq!(out.len(), 3, "a resume and two frames");
        out.clear();
        assert!(!outbox.take(&mut out, 10));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn an_ack_of_what_was_never_sent_is_refused() {
        let outbox = Outbox::new(1 << 20, 1 << 20, Vec::new());
        outbox.push(frame(1, 1), 0, true).unwrap();
        outbox.push(frame(2, 1), 0, true).unwrap();
        outbox.attach(0);
        assert_eq!(
            outbox.acknowledge(1, 0),
            Err(AckError::NotSent {
                through: 1,
                written: None
            })
        );
        let mut out = Vec::new();
        outbox.take(&mut out, 1);
        assert!(outbox.acknowledge(2, 0).is_err(), "entry 2 was not written yet");
        assert_eq!(outbox.seqs(), vec![1, 2], "nothing was forgotten");
        assert_eq!(outbox.acknowledge(1, 0), Ok(1));
    }

    #[test]
    fn envelopes_are_bounded_in_bytes_but_seals_always_go() {
        let outbox = Outbox::new(1 << 20, 1000, Vec::new());
        outbox.push(frame(1, 600), 0, true).unwrap();
        assert_eq!(outbox.push(frame(2, 600), 0, true), Err(Full));
        assert!(outbox.push(frame(3, 600), 0, false).is_ok(), "a seal");
        assert_eq!(outbox.depth(), (2, 1200));
        // Tiny frames count for their bookkeeping.
        let small = Outbox::new(1 << 20, 1000, Vec::new());
        for _ in 0..3 {
            small.push(frame(0, 1), 0, true).unwrap();
        }
        assert_eq!(small.push(frame(0, 1), 0, true), Err(Full));
        // A frame larger than the bound passes an empty outbox.
        let empty = Outbox::new(1 << 20, 10, Vec::new());
        assert!(empty.push(frame(0, 50), 0, true).is_ok());
        // And the count of frames is bounded too.
        let few = Outbox::new(2, 1 << 20, Vec::new());
        few.push(frame(0, 1), 0, true).unwrap();
        few.push(frame(0, 1), 0, true).unwrap();
        assert_eq!(few.push(frame(0, 1), 0, true), Err(Full));
        // Full is stalled only once its link has made no progress for a
        // while: a link that came back to a backlog gets time to drain it.
        few.attach(1_000);
        assert!(!few.stalled(1_500, 1_000));
        assert!(few.stalled(2_001, 1_000));
        few.take(&mut Vec::new(), 10);
        few.acknowledge(1, 2_500).unwrap();
        assert!(!few.stalled(3_000, 1_000), "not full any more");
    }

    /// With frames of 64 KiB, the byte count stops just below the bound
    /// (the next frame would cross it): a refused frame still makes the
    /// outbox full, so a peer that never acknowledges is found stalled.
    #[test]
    fn large_frames_that_no_longer_fit_make_the_outbox_full() {
        let large = Outbox::new(1 << 20, 1_000_000, Vec::new());
        large.attach(0);
        while large.push(frame(0, 65_536), 0, true).is_ok() {}
        let (_, bytes) = large.depth();
        assert!(bytes < 1_000_000, "{bytes}");
        assert!(large.stalled(2_001, 1_000));
        // Progress clears it: the peer acknowledged, there is room again.
        let mut written = Vec::new();
        large.take(&mut written, 1);
        large.acknowledge(1, 3_000).unwrap();
        assert!(!large.stalled(4_500, 1_000));
    }

    #[test]
    fn expired_and_lost_entries_leave_a_gap_the_link_resumes_past() {
        let loaded = vec![
            Entry {
                seq: 4,
                queued_us: 10,
                frame: frame(4, 1),
            },
            Entry {
                seq: 6,
                queued_us: 20,
                frame: frame(6, 1),
            },
            Entry {
                seq: 7,
                queued_us: 30,
                frame: frame(7, 1),
            },
        ];
        let outbox = Outbox::new(1 << 20, 1 << 20, loaded);
        assert_eq!(outbox.push(frame(8, 1), 40, true).unwrap(), 8);
        assert_eq!(outbox.expire(15).len(), 1);
        outbox.attach(0);
        let mut out = Vec::new();
        outbox.take(&mut out, 10);
        assert_eq!(out, vec![resume(6), frame(6, 1), frame(7, 1), frame(8, 1)]);
        // An entry expiring under a live link: the link resumes past it.
        outbox.push(frame(9, 1), 50, true).unwrap();
        outbox.push(frame(10, 1), 60, true).unwrap();
        assert_eq!(outbox.acknowledge(8, 0), Ok(3));
        assert_eq!(outbox.expire(55).len(), 1);
        let mut next = Vec::new();
        outbox.take(&mut next, 10);
        assert_eq!(next, vec![resume(10), frame(10, 1)]);
        let (held, recent) = outbox.take_all();
        assert_eq!(
            (held.len(), recent.len()),
            (1, 3),
            "8, 9 and 10 were acknowledged"
        );
        assert_eq!(outbox.depth(), (0, 0));
    }

    #[test]
    fn acknowledged_entries_are_kept_a_little_and_each_is_rerouted_once() {
        let outbox = Outbox::new(1 << 20, 1 << 20, Vec::new());
        for byte in 1..=3 {
            outbox.push(frame(byte, 10), 0, true).unwrap();
        }
        assert_eq!(outbox.not_rerouted().len(), 3);
        assert!(outbox.not_rerouted().is_empty(), "each entry once");
        outbox.push(frame(4, 10), 0, true).unwrap();
        assert_eq!(outbox.not_rerouted(), vec![frame(4, 10)]);
        outbox.attach(0);
        outbox.take(&mut Vec::new(), 10);
        outbox.acknowledge(2, 1_000).unwrap();
        // Past the time kept, an acknowledged entry is gone for good.
        outbox.acknowledge(3, 1_000 + RECENT_US + 1).unwrap();
        let (held, recent) = outbox.take_all();
        assert_eq!(held.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    }
}
