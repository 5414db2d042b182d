//! The node's side of routing: the routing core behind one mutex (held
//! only for a call, never across `.await`), the session and link tables
//! that I/O tasks share, and carrying out what the core decides. Local
//! deliveries go to session queues without waiting (a full one
//! disconnects its subscriber); live links are handed back as
//! [`PeerTarget`]s (for announcements, and to cut one whose outbox is
//! full); duplicates relayed once more are remembered here.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use dashmap::DashMap;
use quinn::{Connection, VarInt};
use rustls_pki_types::CertificateDer;

use super::durable::Durables;
use super::queue::{OfferError, QueueSender};
use super::Reason;

use crate::audit::{now_us, Event, Record, Verdict};
use crate::envelope::{Envelope, MessageId};
use crate::identity::Identity;
use crate::label::Nation;
use crate::policy::Principal;
use crate::routing::{Action, Routing, SessionId};
use crate::store::Change;
use crate::wire::{self, close};

struct SessionEntry {
    principal: Arc<Principal>,
    queue: QueueSender,
    connection: Connection,
    /// Wakes the session's task to end it (its subscriber is too slow):
    /// the task, not the one that found the queue full, ends it, so what
    /// was queued is written or audited first.
    ending: Arc<tokio::sync::Notify>,
}

/// Why this node ended one of its links, if it did: set once, by whoever
/// ends it first, so the end is audited once.
pub(super) struct LinkFate(AtomicU8);

const LINK_LIVE: u8 = 0;
const LINK_STALLED: u8 = 1;
const LINK_NO_LONGER_ADMITTED: u8 = 2;

impl LinkFate {
    fn new() -> Arc<LinkFate> {
        Arc::new(LinkFate(AtomicU8::new(LINK_LIVE)))
    }

    /// Marks the link as ended for `fate`; false if it already was.
    fn end(&self, fate: u8) -> bool {
        self.0
            .compare_exchange(LINK_LIVE, fate, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether this node cut the link for not keeping up.
    pub(super) fn stalled(&self) -> bool {
        self.0.load(Ordering::Acquire) == LINK_STALLED
    }

    /// Whether this node closed the link because its rules no longer admit
    /// the peer (cut out, revoked, or gone from the network file): what
    /// was queued on it is purged, never sent.
    pub(super) fn no_longer_admitted(&self) -> bool {
        self.0.load(Ordering::Acquire) == LINK_NO_LONGER_ADMITTED
    }
}

struct LinkEntry {
    link: u64,
    queue: QueueSender,
    connection: Connection,
    fate: Arc<LinkFate>,
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
    /// The one inbound link of each peer, with its generation and the
    /// queue of resolutions it carries back to the peer.
    inbound: DashMap<Nation, (u64, Connection, QueueSender)>,
    next_id: AtomicU64,
    /// Actions produced where nothing can wait (such as a slow consumer
    /// dropped mid-delivery), for the ticker task to carry out. Bounded by
    /// the sessions: each close adds at most an announcement and a record,
    /// and the ticker drains it as soon as it is woken.
    deferred: Mutex<Vec<Action>>,
    deferred_ready: tokio::sync::Notify,
    /// Messages relayed once more as duplicates; see [`Router::relay_again`].
    relayed_again: Mutex<RelayedAgain>,
}

/// The most duplicates remembered as relayed once more.
const RELAYED_AGAIN: usize = 64 * 1024;

#[derive(Default)]
struct RelayedAgain {
    ids: std::collections::HashSet<(Nation, MessageId)>,
    order: std::collections::VecDeque<(Nation, MessageId)>,
}

/// Ends a slow consumer's session: its queue takes nothing more, and its
/// task is told to end it (flush what it can within a deadline, audit the
/// rest, then close the connection as `SLOW_CONSUMER`).
fn disconnect_slow(entry: &SessionEntry) -> Record {
    let (subject, queue) = (entry.principal.name.as_str(), &entry.queue);
    queue.close();
    entry.ending.notify_one();
    tracing::warn!(subject, "disconnecting: slow consumer");
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
            relayed_again: Mutex::default(),
        }
    }

    pub(super) fn defer(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(actions);
        self.deferred_ready.notify_one();
    }

    /// Whether a duplicate of this message is to be relayed once more:
    /// true the first time it is asked for a message (of the last
    /// [`RELAYED_AGAIN`]). A copy routed again along a new tree (after a
    /// cut, or a link that went down) reaches nodes that hold it already,
    /// and only if they pass it on does it get to the nations the old
    /// tree missed; once each, so copies cannot loop between nodes whose
    /// trees disagree for a moment, and each message costs each node two
    /// relays at most.
    ///
    /// May be called inside [`Router::core`]: its own lock is only ever
    /// taken after the core's, never before.
    pub(super) fn relay_again(&self, origin: Nation, id: MessageId) -> bool {
        let mut relayed = self.relayed_again.lock().unwrap_or_else(PoisonError::into_inner);
        if !relayed.ids.insert((origin, id)) {
            return false;
        }
        relayed.order.push_back((origin, id));
        if relayed.order.len() > RELAYED_AGAIN {
            if let Some(oldest) = relayed.order.pop_front() {
                relayed.ids.remove(&oldest);
            }
        }
        true
    }

    /// Forgets that this message was relayed once more: the copy that was
    /// to be never got its seal, so the next one may be.
    pub(super) fn forget_relayed_again(&self, origin: Nation, id: MessageId) {
        let mut relayed = self.relayed_again.lock().unwrap_or_else(PoisonError::into_inner);
        // Its place in `order` stays, and goes when it comes round.
        relayed.ids.remove(&(origin, id));
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

    /// A number for a session of the core that is not a connection's (a
    /// durable subscription's).
    pub(super) fn new_session_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn add_session(
        &self,
        principal: std::sync::Arc<Principal>,
        queue: QueueSender,
        connection: Connection,
        ending: Arc<tokio::sync::Notify>,
    ) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = SessionEntry {
            principal: principal.clone(),
            queue,
            connection,
            ending,
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
                Err(OfferError::Full) => disconnect_slow(&entry),
            }
        };
        // The session's own task audits its end; its interest goes now.
        self.remove_session(session);
        Offer::SlowConsumer(result)
    }

    /// Registers this node's live link to `peer`, then tells the core.
    /// Returns its generation (so a stale link cannot remove its
    /// successor) and its fate.
    pub(super) fn add_link(
        &self,
        peer: Nation,
        queue: QueueSender,
        connection: Connection,
    ) -> (u64, Arc<LinkFate>, Vec<Action>) {
        let link = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fate = LinkFate::new();
        self.links.insert(
            peer,
            LinkEntry {
                link,
                queue,
                connection,
                fate: fate.clone(),
            },
        );
        (link, fate, self.core(|core, now| core.link_up(peer, now)).1)
    }

    /// Closes every session and link that `admits` no longer admits,
    /// given who it is and the certificate chain it proved. A closed link
    /// leaves the table and the core at once, and its queue takes no more
    /// frames: from here on nothing more is sent to that peer. Returns
    /// what was closed (sessions, this node's links, peers' links) and the
    /// core's actions.
    pub(super) fn close_unadmitted(
        &self,
        here: Nation,
        admits: impl Fn(
            &Identity,
            &[CertificateDer<'static>],
            Option<&Principal>,
        ) -> Result<(), (String, &'static str)>,
        records: &mut Vec<Record>,
    ) -> (Vec<String>, Vec<Nation>, Vec<Nation>, Vec<Action>) {
        let chain = |connection: &Connection| -> Vec<CertificateDer<'static>> {
            connection
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                .map(|chain| *chain)
                .unwrap_or_default()
        };
        let mut refusal = |connection: &Connection, subject: String, (why, code): (String, &'static str)| {
            tracing::warn!(%subject, %why, "closing: no longer admitted");
            connection.close(VarInt::from_u32(close::NO_LONGER_ADMITTED), why.as_bytes());
            records.push(
                Record::new(Event::Disconnect, Verdict::Deny, code)
                    .subject(subject)
                    .detail(format!("no longer admitted: {why}")),
            );
        };
        let mut sessions = Vec::new();
        let mut closed_ids = Vec::new();
        for entry in self.sessions.iter() {
            let principal = &entry.principal;
            let identity = Identity::Principal {
                nation: here,
                name: principal.name.clone(),
            };
            if let Err(why) = admits(&identity, &chain(&entry.connection), Some(principal)) {
                refusal(&entry.connection, principal.name.clone(), why);
                sessions.push(principal.name.clone());
                closed_ids.push(*entry.key());
            }
        }
        let mut actions = Vec::new();
        for id in closed_ids {
            self.sessions.remove(&id);
            actions.extend(self.core(|core, now| core.close_session(id, now)).1);
        }
        let mut links = Vec::new();
        let outbound: Vec<Nation> = self.links.iter().map(|entry| *entry.key()).collect();
        for peer in outbound {
            let verdict = match self.links.get(&peer) {
                Some(entry) => admits(&Identity::Node(peer), &chain(&entry.connection), None),
                None => continue,
            };
            let Err(why) = verdict else { continue };
            let Some((_, entry)) = self.links.remove(&peer) else {
                continue;
            };
            entry.fate.end(LINK_NO_LONGER_ADMITTED);
            // Closed before anything else: quinn discards whatever was
            // still unsent, so no queued byte leaves after this.
            refusal(&entry.connection, peer.to_string(), why);
            entry.queue.close();
            actions.extend(self.core(|core, now| core.link_down(peer, now)).1);
            links.push(peer);
        }
        let inbound: Vec<(Nation, Connection)> = self
            .inbound
            .iter()
            .map(|entry| (*entry.key(), entry.value().1.clone()))
            .collect();
        let mut closed_inbound = Vec::new();
        for (peer, connection) in inbound {
            if let Err(why) = admits(&Identity::Node(peer), &chain(&connection), None) {
                refusal(&connection, peer.to_string(), why);
                closed_inbound.push(peer);
            }
        }
        (sessions, links, closed_inbound, actions)
    }

    /// Every live session: its principal and its queue's depth.
    pub(super) fn session_depths(&self) -> Vec<(String, usize)> {
        self.sessions
            .iter()
            .map(|entry| (entry.principal.name.clone(), entry.queue.len()))
            .collect()
    }

    /// Whether the link this node dials to `peer` is up.
    pub(super) fn has_link(&self, peer: Nation) -> bool {
        self.links.contains_key(&peer)
    }

    /// Whether `peer`'s own link to this node is up.
    pub(super) fn has_inbound(&self, peer: Nation) -> bool {
        self.inbound.contains_key(&peer)
    }

    /// As [`Router::core`], after forgetting this node's link `link` to
    /// `peer` (unless a newer one has replaced it) in the same call, so
    /// that `call` sees the tree without it and nothing routed in between
    /// sees a tree that has neither.
    pub(super) fn core_without_link<R>(
        &self,
        peer: Nation,
        link: Option<u64>,
        call: impl FnOnce(&mut Routing, u64) -> R,
    ) -> (R, Vec<Action>) {
        let removed = link.is_some_and(|link| {
            self.links
                .remove_if(&peer, |_, entry| entry.link == link)
                .is_some()
        });
        self.core(|core, now| {
            if removed {
                core.link_down(peer, now);
            }
            call(core, now)
        })
    }

    /// Makes `connection` `peer`'s one inbound link; returns its
    /// generation, for [`Router::remove_inbound`], and the link it
    /// replaced, for the caller to close.
    pub(super) fn replace_inbound(
        &self,
        peer: Nation,
        connection: Connection,
        back: QueueSender,
    ) -> (u64, Option<Connection>) {
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = self.inbound.insert(peer, (generation, connection, back));
        (generation, replaced.map(|(_, old, _)| old))
    }

    /// The queues back to `peers` on the links they dialed.
    pub(super) fn return_paths(&self, peers: &[Nation]) -> Vec<(Nation, QueueSender)> {
        peers
            .iter()
            .filter_map(|&peer| {
                self.inbound
                    .get(&peer)
                    .map(|entry| (peer, entry.value().2.clone()))
            })
            .collect()
    }

    /// Forgets `peer`'s inbound link of `generation`, unless a newer one
    /// has replaced it already.
    pub(super) fn remove_inbound(&self, peer: Nation, generation: u64) {
        self.inbound
            .remove_if(&peer, |_, (current, _, _)| *current == generation);
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
            queue: entry.queue.clone(),
            connection: entry.connection.clone(),
            fate: entry.fate.clone(),
        })
    }

    /// Offers `envelope` to the sessions the core chose, without waiting.
    /// Every delivery of the message shares one record listing its
    /// recipients; a full queue disconnects its subscriber. A durable
    /// subscription among them holds it (its store entry joins `changes`).
    pub(super) fn deliver(
        &self,
        durables: &Durables,
        envelope: &Envelope,
        marking: &str,
        sessions: &[SessionId],
        changes: &mut Vec<Change>,
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
                if let Some(durable) = durables.of_session(id) {
                    if durables.hold(&durable, envelope, marking, changes, records) {
                        delivered_to.push(durable.principal.clone());
                    }
                }
                continue;
            };
            match session.queue.offer(frame.clone()) {
                Ok(()) => delivered_to.push(session.principal.name.clone()),
                Err(OfferError::Full) => {
                    records.push(disconnect_slow(&session));
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
    pub(super) queue: QueueSender,
    pub(super) connection: Connection,
    fate: Arc<LinkFate>,
}

impl PeerTarget {
    /// Cuts the link because its outbox is full: its peer cannot keep up.
    ///
    /// Nothing that sends on links (publishers' sessions, the sealer,
    /// relaying readers) may wait for one link: each serves every link, so
    /// a peer that stops reading, or reads just often enough, would slow
    /// them all. A full outbox therefore means its peer cannot keep up, as
    /// with a slow subscriber: the link is cut, alone, and its peer gets
    /// what its outbox holds again when it re-dials. The first to find it
    /// full closes the connection and pushes the audit record of the cut
    /// onto `records`.
    pub(super) fn cut_stalled(&self, limit: &str, records: &mut Vec<Record>) {
        if !self.fate.end(LINK_STALLED) {
            return;
        }
        tracing::warn!(to = %self.nation, %limit, "cutting a link whose outbox is full");
        self.connection.close(
            VarInt::from_u32(close::SLOW_CONSUMER),
            format!(
                "slow consumer: the outbox of {limit} for {} was full, and no link is waited for",
                self.nation
            )
            .as_bytes(),
        );
        records.push(
            Record::new(Event::Disconnect, Verdict::Deny, Reason::PeerStalled.code())
                .subject(self.nation)
                .detail(format!(
                    "its outbox of {limit} was full: {} does not read fast enough, so its link is cut rather than let it slow anyone else",
                    self.nation
                )),
        );
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
