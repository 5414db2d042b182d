//! The routing table of one node: client sessions with their
//! subscriptions, live peer links, and the ids already seen. Routing runs
//! every policy decision. Local deliveries go to session queues without
//! waiting (a full one disconnects its subscriber); the links a message
//! may go to are handed back, for the caller to queue on with
//! backpressure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use quinn::{Connection, VarInt};

use super::queue::{OfferError, QueueSender};

use crate::audit::{Event, Record, Verdict};
use crate::envelope::{Envelope, MessageId};
use crate::label::Nation;
use crate::policy::{Decision, Policy, Principal};
use crate::topic::Pattern;
use crate::wire::{self, close};

/// How many recent message ids a node remembers to drop duplicates.
const SEEN_CAPACITY: usize = 1 << 16;

pub(super) type SessionId = u64;

struct SessionEntry {
    principal: Arc<Principal>,
    patterns: Vec<Pattern>,
    queue: QueueSender,
    connection: Connection,
}

struct PeerEntry {
    link: u64,
    queue: QueueSender,
    connection: Connection,
}

/// What happened when a frame was offered to a session's queue.
pub(super) enum Offer {
    Queued,
    /// The queue was full: the session has been disconnected.
    SlowConsumer(Record),
    Gone,
}

#[derive(Default)]
struct SeenIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

pub(super) struct Router {
    nation: Nation,
    policy: Arc<Policy>,
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
    peers: RwLock<HashMap<Nation, PeerEntry>>,
    seen: Mutex<SeenIds>,
    next_id: AtomicU64,
}

// A poisoned lock means a panic elsewhere; the table itself is still
// consistent (every mutation is a single insert or remove), so carry on.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn disconnect_slow(connection: &Connection, subject: &str, queue: &QueueSender) -> Record {
    connection.close(VarInt::from_u32(close::SLOW_CONSUMER), b"slow consumer");
    tracing::warn!(subject, "disconnected: slow consumer");
    Record::new(Event::Disconnect, Verdict::Deny, "slow-consumer")
        .subject(subject)
        .detail(format!("its queue of {} was full", queue.describe_limit()))
}

impl Router {
    pub(super) fn new(nation: Nation, policy: Arc<Policy>) -> Router {
        Router {
            nation,
            policy,
            sessions: RwLock::default(),
            peers: RwLock::default(),
            seen: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    pub(super) fn add_session(
        &self,
        principal: Arc<Principal>,
        queue: QueueSender,
        connection: Connection,
    ) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = SessionEntry {
            principal,
            patterns: Vec::new(),
            queue,
            connection,
        };
        write(&self.sessions).insert(id, entry);
        id
    }

    /// Adds a subscription; false if the session already holds `limit`
    /// patterns (a remote party must not grow the table without bound).
    pub(super) fn subscribe(&self, session: SessionId, pattern: Pattern, limit: usize) -> bool {
        let mut sessions = write(&self.sessions);
        let Some(entry) = sessions.get_mut(&session) else {
            return false;
        };
        if !entry.patterns.contains(&pattern) {
            if entry.patterns.len() >= limit {
                return false;
            }
            entry.patterns.push(pattern);
        }
        true
    }

    pub(super) fn remove_session(&self, session: SessionId) {
        write(&self.sessions).remove(&session);
    }

    /// Queues a frame for one session (an ack or a refusal).
    pub(super) fn offer(&self, session: SessionId, frame: Bytes) -> Offer {
        let sessions = read(&self.sessions);
        let Some(entry) = sessions.get(&session) else {
            return Offer::Gone;
        };
        match entry.queue.offer(frame) {
            Ok(()) => Offer::Queued,
            Err(OfferError::Closed) => Offer::Gone,
            Err(OfferError::Full) => {
                let record = disconnect_slow(&entry.connection, &entry.principal.name, &entry.queue);
                drop(sessions);
                self.remove_session(session);
                Offer::SlowConsumer(record)
            }
        }
    }

    /// Registers a live link to `peer`; returns its generation, so that a
    /// stale link cannot unregister its replacement.
    pub(super) fn add_peer(&self, peer: Nation, queue: QueueSender, connection: Connection) -> u64 {
        let link = self.next_id.fetch_add(1, Ordering::Relaxed);
        write(&self.peers).insert(
            peer,
            PeerEntry {
                link,
                queue,
                connection,
            },
        );
        link
    }

    pub(super) fn remove_peer(&self, peer: Nation, link: u64) {
        let mut peers = write(&self.peers);
        if peers.get(&peer).is_some_and(|entry| entry.link == link) {
            peers.remove(&peer);
        }
    }

    pub(super) fn is_duplicate(&self, id: &MessageId) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .contains(id)
    }

    /// Remembers `id`; false if it was already seen.
    pub(super) fn mark_seen(&self, id: MessageId) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.set.insert(id) {
            return false;
        }
        seen.order.push_back(id);
        if seen.order.len() > SEEN_CAPACITY {
            if let Some(oldest) = seen.order.pop_front() {
                seen.set.remove(&oldest);
            }
        }
        true
    }

    /// Offers `envelope` to every local subscriber whose pattern matches
    /// and who passes may-deliver, without waiting; records every decision.
    /// Every allowed delivery of the message shares one record, listing
    /// its recipients.
    pub(super) fn deliver_locally(&self, envelope: &Envelope, marking: &str, records: &mut Vec<Record>) {
        let mut frame: Option<Bytes> = None;
        let mut slow = Vec::new();
        let mut delivered_to = Vec::new();
        let sessions = read(&self.sessions);
        for (&id, session) in sessions.iter() {
            if !session.patterns.iter().any(|p| p.matches(&envelope.topic)) {
                continue;
            }
            let record = |event, verdict, reason: &'static str| {
                Record::new(event, verdict, reason)
                    .message(envelope, marking)
                    .subject(&session.principal.name)
            };
            match self.policy.may_deliver(
                &session.principal,
                &envelope.topic,
                &envelope.label,
                envelope.origin,
            ) {
                Decision::Deny { reason, message } => {
                    tracing::debug!(to = %session.principal.name, %reason, "delivery denied");
                    records.push(record(Event::Deliver, Verdict::Deny, reason.code()).detail(message));
                }
                Decision::Allow => {
                    let frame = match &frame {
                        Some(frame) => frame.clone(),
                        None => match encode_delivery(envelope, marking) {
                            Ok(encoded) => frame.insert(encoded).clone(),
                            Err(err) => {
                                records.push(record(Event::Drop, Verdict::Deny, "encode-failed").detail(err));
                                return;
                            }
                        },
                    };
                    match session.queue.offer(frame) {
                        Ok(()) => {
                            tracing::debug!(to = %session.principal.name, id = %envelope.id, "delivered");
                            delivered_to.push(session.principal.name.clone());
                        }
                        Err(OfferError::Full) => {
                            records.push(disconnect_slow(
                                &session.connection,
                                &session.principal.name,
                                &session.queue,
                            ));
                            slow.push(id);
                        }
                        Err(OfferError::Closed) => {}
                    }
                }
            }
        }
        drop(sessions);
        if !delivered_to.is_empty() {
            records.push(
                Record::new(Event::Deliver, Verdict::Allow, "policy-allows")
                    .message(envelope, marking)
                    .subjects(delivered_to),
            );
        }
        for id in slow {
            self.remove_session(id);
        }
    }

    /// The live links of the peers that may receive `envelope` (invariant
    /// 2); records every denial and every eligible peer whose link is down.
    pub(super) fn forward_targets(
        &self,
        envelope: &Envelope,
        marking: &str,
        records: &mut Vec<Record>,
    ) -> Vec<PeerTarget> {
        let Some(nation) = self.policy.nation(self.nation) else {
            return Vec::new();
        };
        let mut targets = Vec::new();
        let peers = read(&self.peers);
        for &peer in &nation.peers {
            match self.policy.may_forward(&envelope.label, envelope.origin, peer) {
                Decision::Deny { reason, message } => {
                    tracing::debug!(to = %peer, id = %envelope.id, %reason, "forward denied");
                    records.push(
                        Record::new(Event::Forward, Verdict::Deny, reason.code())
                            .message(envelope, marking)
                            .subject(peer)
                            .detail(message),
                    );
                }
                Decision::Allow => match peers.get(&peer) {
                    Some(entry) => targets.push(PeerTarget {
                        nation: peer,
                        link: entry.link,
                        queue: entry.queue.clone(),
                        connection: entry.connection.clone(),
                    }),
                    None => records.push(
                        Record::new(Event::Drop, Verdict::Deny, "link-down")
                            .message(envelope, marking)
                            .subject(peer),
                    ),
                },
            }
        }
        targets
    }
}

/// A peer link a message may go to, taken out of the table so the sender
/// can wait for room in its queue without holding a lock.
#[derive(Clone)]
pub(super) struct PeerTarget {
    pub(super) nation: Nation,
    pub(super) link: u64,
    pub(super) queue: QueueSender,
    pub(super) connection: Connection,
}

fn encode_delivery(envelope: &Envelope, marking: &str) -> Result<Bytes, wire::WireError> {
    wire::encode_deliver(&wire::DeliveryRef {
        id: envelope.id,
        origin: envelope.origin,
        publisher: &envelope.publisher,
        topic: envelope.topic.as_str(),
        marking,
        created_us: envelope.created_us,
        payload: &envelope.payload,
    })
    .map(Bytes::from)
}
