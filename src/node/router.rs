//! The node's side of routing: the routing core behind one mutex (held
//! only for a call, never across `.await`), the session and link tables
//! that I/O tasks share, and carrying out what the core decides. Local
//! deliveries go to session queues without waiting (a full one
//! disconnects its subscriber); links are handed back as [`PeerTarget`]s,
//! which are offered to the same way (a full one cuts its link).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use dashmap::DashMap;
use quinn::{Connection, VarInt};

use super::queue::{OfferError, QueueSender};
use super::Reason;

use crate::audit::{now_us, Event, Record, Verdict};
use crate::envelope::Envelope;
use crate::label::Nation;
use crate::policy::Principal;
use crate::routing::{Action, Routing, SessionId};
use crate::wire::{self, close};

struct SessionEntry {
    name: String,
    queue: QueueSender,
    connection: Connection,
}

struct LinkEntry {
    link: u64,
    queue: QueueSender,
    connection: Connection,
    /// Set by whoever cuts the link first, so the cut is audited once.
    cut: Arc<AtomicBool>,
}

/// What happened when a frame was offered to a session's queue.
pub(super) enum Offer {
    Queued,
    /// The queue was full: the session has been disconnected.
    SlowConsumer(Record),
    Gone,
}

pub(super) struct Router {
    core: Mutex<Routing>,
    sessions: DashMap<SessionId, SessionEntry>,
    /// The links this node dialed: the only ones it sends on.
    links: DashMap<Nation, LinkEntry>,
    /// The one inbound link of each peer, with its generation.
    inbound: DashMap<Nation, (u64, Connection)>,
    next_id: AtomicU64,
    /// Actions produced where nothing can wait (such as a slow consumer
    /// dropped mid-delivery), for the ticker task to carry out. Bounded by
    /// the sessions: each close adds at most an announcement and a record,
    /// and the ticker drains it as soon as it is woken.
    deferred: Mutex<Vec<Action>>,
    deferred_ready: tokio::sync::Notify,
}

fn disconnect_slow(connection: &Connection, subject: &str, queue: &QueueSender) -> Record {
    connection.close(VarInt::from_u32(close::SLOW_CONSUMER), b"slow consumer");
    tracing::warn!(subject, "disconnected: slow consumer");
    Record::new(Event::Disconnect, Verdict::Deny, Reason::SlowConsumer.code())
        .subject(subject)
        .detail(format!("its queue of {} was full", queue.describe_limit()))
}

impl Router {
    pub(super) fn new(core: Routing) -> Router {
        Router {
            core: Mutex::new(core),
            sessions: DashMap::new(),
            links: DashMap::new(),
            inbound: DashMap::new(),
            next_id: AtomicU64::new(1),
            deferred: Mutex::new(Vec::new()),
            deferred_ready: tokio::sync::Notify::new(),
        }
    }

    fn defer(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(actions);
        self.deferred_ready.notify_one();
    }

    /// Waits until some action was deferred, or an announcement is due.
    pub(super) async fn deferred_ready(&self) {
        self.deferred_ready.notified().await;
    }

    pub(super) fn take_deferred(&self) -> Vec<Action> {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `call` on the core, and takes every action it produced.
    pub(super) fn core<R>(&self, call: impl FnOnce(&mut Routing, u64) -> R) -> (R, Vec<Action>) {
        // A poisoned lock means a panic elsewhere; every core call leaves
        // the core consistent, so carry on.
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        let result = call(&mut core, now_us());
        let actions = std::iter::from_fn(|| core.poll()).collect();
        if core.announcement_pending() {
            // The ticker may be asleep for up to a second: wake it.
            self.deferred_ready.notify_one();
        }
        (result, actions)
    }

    pub(super) fn add_session(
        &self,
        principal: std::sync::Arc<Principal>,
        queue: QueueSender,
        connection: Connection,
    ) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = SessionEntry {
            name: principal.name.clone(),
            queue,
            connection,
        };
        self.sessions.insert(id, entry);
        self.core(|core, _| core.open_session(id, principal));
        id
    }

    /// Forgets a session; its interest leaves with it.
    pub(super) fn remove_session(&self, session: SessionId) {
        self.sessions.remove(&session);
        let actions = self.core(|core, now| core.close_session(session, now)).1;
        self.defer(actions);
    }

    /// Queues a frame for one session (an ack or a refusal).
    pub(super) fn offer(&self, session: SessionId, frame: Bytes) -> Offer {
        let result = {
            let Some(entry) = self.sessions.get(&session) else {
                return Offer::Gone;
            };
            match entry.queue.offer(frame) {
                Ok(()) => return Offer::Queued,
                Err(OfferError::Closed) => return Offer::Gone,
                Err(OfferError::Full) => disconnect_slow(&entry.connection, &entry.name, &entry.queue),
            }
        };
        // The session's own task audits its end; its interest goes now.
        self.remove_session(session);
        Offer::SlowConsumer(result)
    }

    /// Registers this node's live link to `peer`, then tells the core;
    /// returns its generation, so a stale link cannot remove its successor.
    pub(super) fn add_link(
        &self,
        peer: Nation,
        queue: QueueSender,
        connection: Connection,
    ) -> (u64, Vec<Action>) {
        let link = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.links.insert(
            peer,
            LinkEntry {
                link,
                queue,
                connection,
                cut: Arc::new(AtomicBool::new(false)),
            },
        );
        (link, self.core(|core, now| core.link_up(peer, now)).1)
    }

    /// Whether this node cut its link `link` to `peer` for not keeping up.
    pub(super) fn was_cut(&self, peer: Nation, link: u64) -> bool {
        self.links
            .get(&peer)
            .is_some_and(|entry| entry.link == link && entry.cut.load(Ordering::Acquire))
    }

    pub(super) fn remove_link(&self, peer: Nation, link: u64) -> Vec<Action> {
        if self
            .links
            .remove_if(&peer, |_, entry| entry.link == link)
            .is_none()
        {
            return Vec::new();
        }
        self.core(|core, now| core.link_down(peer, now)).1
    }

    /// Makes `connection` `peer`'s one inbound link; returns its
    /// generation, for [`Router::remove_inbound`], and the link it
    /// replaced, for the caller to close.
    pub(super) fn replace_inbound(&self, peer: Nation, connection: Connection) -> (u64, Option<Connection>) {
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = self.inbound.insert(peer, (generation, connection));
        (generation, replaced.map(|(_, old)| old))
    }

    /// Forgets `peer`'s inbound link of `generation`, unless a newer one
    /// has replaced it already.
    pub(super) fn remove_inbound(&self, peer: Nation, generation: u64) {
        self.inbound
            .remove_if(&peer, |_, (current, _)| *current == generation);
    }

    /// The live links to `peers`, taken out of the table so that no
    /// guard is held while the caller offers to them.
    pub(super) fn targets(&self, peers: &[Nation]) -> Vec<PeerTarget> {
        peers.iter().filter_map(|&peer| self.target(peer)).collect()
    }

    /// The live link to `peer`, if it is up.
    pub(super) fn target(&self, peer: Nation) -> Option<PeerTarget> {
        self.links.get(&peer).map(|entry| PeerTarget {
            nation: peer,
            link: entry.link,
            queue: entry.queue.clone(),
            connection: entry.connection.clone(),
            cut: entry.cut.clone(),
        })
    }

    /// Offers `envelope` to the sessions the core chose, without waiting.
    /// Every delivery of the message shares one record listing its
    /// recipients; a full queue disconnects its subscriber.
    pub(super) fn deliver(
        &self,
        envelope: &Envelope,
        marking: &str,
        sessions: &[SessionId],
        records: &mut Vec<Record>,
    ) {
        if sessions.is_empty() {
            return;
        }
        let frame = match encode_delivery(envelope, marking) {
            Ok(frame) => frame,
            Err(err) => {
                records.push(
                    Record::new(Event::Drop, Verdict::Deny, Reason::EncodeFailed.code())
                        .message(envelope, marking)
                        .detail(err),
                );
                return;
            }
        };
        let mut delivered_to = Vec::with_capacity(sessions.len());
        let mut slow = BTreeSet::new();
        for &id in sessions {
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            match session.queue.offer(frame.clone()) {
                Ok(()) => delivered_to.push(session.name.clone()),
                Err(OfferError::Full) => {
                    records.push(disconnect_slow(
                        &session.connection,
                        &session.name,
                        &session.queue,
                    ));
                    slow.insert(id);
                }
                Err(OfferError::Closed) => {}
            }
        }
        if !delivered_to.is_empty() {
            tracing::debug!(id = %envelope.id, to = ?delivered_to, "delivered");
            records.push(
                Record::new(Event::Deliver, Verdict::Allow, Reason::PolicyAllows.code())
                    .message(envelope, marking)
                    .subjects(delivered_to),
            );
        }
        for id in slow {
            self.remove_session(id);
        }
    }
}

/// A peer link a message may go to, taken out of the table so that no
/// lock is held while it is offered to.
#[derive(Clone)]
pub(super) struct PeerTarget {
    pub(super) nation: Nation,
    pub(super) link: u64,
    pub(super) queue: QueueSender,
    pub(super) connection: Connection,
    cut: Arc<AtomicBool>,
}

impl PeerTarget {
    /// Queues `frame` on the link if there is room now; never waits.
    ///
    /// Nothing that sends on links (publishers' sessions, the sealer,
    /// relaying readers) may wait for one link: each serves every link, so
    /// a peer that stops reading, or reads just often enough, would slow
    /// them all. A full queue therefore means its peer cannot keep up, as
    /// with a slow subscriber: the link is cut, alone, and its peer gets
    /// everything again (announcements first) when it re-dials. The queue
    /// is sized (`NodeSettings::peer_queue`) so that a peer that keeps up
    /// absorbs any burst. The first to find it full closes the connection
    /// and pushes the audit record of the cut onto `records`; every frame
    /// offered until the link is gone is refused as `peer-stalled`.
    pub(super) fn offer_or_cut(&self, frame: Bytes, records: &mut Vec<Record>) -> Result<(), Reason> {
        match self.queue.offer(frame) {
            Ok(()) => Ok(()),
            Err(OfferError::Closed) => Err(Reason::LinkDown),
            Err(OfferError::Full) => {
                if !self.cut.swap(true, Ordering::AcqRel) {
                    let limit = self.queue.describe_limit();
                    tracing::warn!(to = %self.nation, %limit, "cutting a link whose queue is full");
                    self.connection.close(
                        VarInt::from_u32(close::SLOW_CONSUMER),
                        format!(
                            "slow consumer: the link queue of {limit} for {} was full, and no link is waited for",
                            self.nation
                        )
                        .as_bytes(),
                    );
                    records.push(
                        Record::new(Event::Disconnect, Verdict::Deny, Reason::PeerStalled.code())
                            .subject(self.nation)
                            .detail(format!(
                                "its link queue of {limit} was full: {} does not read fast enough, so its link is cut rather than let it slow anyone else",
                                self.nation
                            )),
                    );
                }
                Err(Reason::PeerStalled)
            }
        }
    }
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
