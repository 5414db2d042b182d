//! Links dialed by peers, which are receive-only: each batch of frames is
//! checked by the routing core, its seals authenticated (by this node's
//! tag, or the signature), delivered, what passed relayed on, sealed, to
//! this node's children in its delivery tree, and then the signatures
//! behind the tags checked. Envelopes straight from their origin are
//! delivered ahead of their seals; whatever never gets its seal is audited
//! when the link ends.
//! Custody of what the link carried is acknowledged once it is delivered
//! and stored for the next hops.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use quinn::{Connection, VarInt};
use tokio::time::Instant;
use tracing::warn;

use super::connection::{accept_hello, close_after, next_batch, write_frame, AbortOnDrop, StreamError};
use super::custody::{self, Committed};
use super::outbound::{self, Outgoing};
use super::queue::{self, QueueReceiver, QueueSender};
use super::resolutions;
use super::{let_writers_send, offer_cpu, Reason, Rules, Shared};
use crate::audit::{Event, Record, Verdict};
use crate::envelope::{Authentic, Envelope, EnvelopeError, MessageId, Verifier};
use crate::label::Nation;
use crate::routing::{self, SealState, Source};
use crate::store::Change;
use crate::stream::FrameReader;
use crate::wire::{close, Frame};

pub(super) async fn serve(shared: Arc<Shared>, connection: Connection, peer: Nation) {
    let subject = peer.to_string();
    let (mut send, mut recv) = match accept_hello(&shared, &connection).await {
        Ok(streams) => streams,
        Err(err) => return close_after(&shared, &connection, subject, &err).await,
    };
    if let Err(err) = write_frame(
        &mut send,
        &Frame::PeerWelcome {
            nation: shared.nation,
        },
    )
    .await
    {
        return close_after(&shared, &connection, subject, &err).await;
    }
    if let Some(cause) = shared.audit_failure() {
        // Before the link is registered: the peer's dial fails, so it
        // keeps what it would send (and audits it, on a log that works)
        // and dials again with its backoff.
        return refuse_unaudited(&shared, &connection, peer, cause).await;
    }
    // Each end's resolutions, before anything else (see `resolutions`).
    let exchanged = async {
        let sent = resolutions::send_log(&shared, &mut send).await?;
        resolutions::receive_log(&shared, peer, &mut recv).await?;
        Ok::<_, StreamError>(sent)
    };
    let log_sent = match exchanged.await {
        Ok(sent) => sent,
        Err(err) => return close_after(&shared, &connection, subject, &err).await,
    };
    if !shared.rules().links_to(shared.nation, peer) {
        connection.close(
            VarInt::from_u32(close::NO_LONGER_ADMITTED),
            b"cut out by a coalition resolution",
        );
        return;
    }
    shared.linked_again(peer);
    // One inbound link per peer: the newest wins, so a peer that opens
    // many links gets one budget of envelopes waiting for seals, not one
    // per link. The old link's reader fails at once on the close, and its
    // unsealed envelopes are audited and dropped with it.
    let (back, resolutions_back) = queue::bounded(RETURN_QUEUE, RETURN_QUEUE_BYTES);
    let _inbound = InboundLink::register(&shared, peer, &connection, back.clone()).await;
    resolutions::send_missed(&shared, log_sent, &back);
    // The peer is up: this node's link to it need not wait for its
    // backoff (the dialer keeps the wake if it is dialing now, and
    // ignores it after a cut or a replaced link).
    if !shared.router.has_link(peer) {
        shared.dialer_wake(peer).notify_one();
    }
    let mut reader = FrameReader::with_frame_timeout(recv, shared.settings.frame_timeout);
    let mut frames = Vec::new();
    let mut unsealed = Unsealed::default();
    let mut count = CustodyCount::default();
    // Bad signatures behind good tags this link brought that were not
    // its own origin's (see `authenticate`).
    let mut excused = 0;
    // Custody is acknowledged only once what it covers is delivered here
    // and stored for the next hops (on disk, with `sync`), by a task of
    // its own: the reader goes on with the next batch meanwhile, so a
    // flush to disk delays acks, not deliveries or relays.
    let (to_ack, stored) = tokio::sync::mpsc::channel(STORED_QUEUE);
    let mut acking = AbortOnDrop(tokio::spawn(ack_when_stored(
        send,
        stored,
        resolutions_back,
        connection.clone(),
    )));
    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        match next_batch(&mut reader, &mut frames, &mut shutdown).await {
            Ok(true) => {
                // Once a batch: nothing of it is delivered, relayed or
                // verified while the log fails. Its messages are dropped
                // with a record attempted each (counted, as refusals are),
                // and the link is closed so the sender sends no more.
                if let Some(cause) = shared.audit_failure() {
                    for frame in frames.drain(..) {
                        if let Frame::Forward(envelope) = frame {
                            let mut record = Record::new(
                                Event::Drop,
                                Verdict::Deny,
                                Reason::AuditUnavailable.code(),
                            )
                            .subject(peer)
                            .detail(
                                "received while the audit log could not be written; not delivered or relayed",
                            );
                            record.id = Some(envelope.id.to_string());
                            shared.audit(record).await;
                        }
                    }
                    refuse_unaudited(&shared, &connection, peer, cause.clone()).await;
                    break Err(StreamError::AuditUnavailable(cause));
                }
                let mut changes = Vec::new();
                let ingressed = ingress(
                    &shared,
                    peer,
                    &mut frames,
                    &mut unsealed,
                    &mut count,
                    &mut excused,
                    &mut changes,
                )
                .await;
                if let Err(err) = ingressed {
                    // What it relayed before the error is stored all the
                    // same; nothing of the batch is acknowledged.
                    let _ = shared.custody.submit(changes).await;
                    break Err(err);
                }
                // A barrier even without changes of its own: an ack of
                // duplicates must wait for the batch that first took them.
                let committed = shared.custody.submit_barrier(changes).await;
                let through = count.ackable(unsealed.oldest());
                if to_ack.send((committed, through)).await.is_err() {
                    // The acking task stopped: the store failed (it closed
                    // the link) or the link is gone.
                    break Ok(());
                }
            }
            Ok(false) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    drop(to_ack);
    // It writes what it was given, unless the peer stops reading its
    // acks: then it is given up (aborted on drop) after a while, and the
    // sender resends what was not acknowledged.
    let _ = tokio::time::timeout(ACKS_FLUSH, &mut acking.0).await;
    // Whatever is still waiting for its seal was delivered here but can
    // never be verified: it is never relayed or stored, and it is audited.
    // Not acknowledged either, so it comes again: the resend may be
    // relayed once more.
    for (envelope, marking, _) in unsealed.waiting.into_values() {
        shared.router.forget_relayed_again(envelope.origin, envelope.id);
        shared
            .audit(
                Record::new(Event::Refuse, Verdict::Deny, Reason::Unsealed.code())
                    .message(&envelope, &marking)
                    .subject(peer)
                    .detail(format!(
                        "{peer}'s link ended before the seal of this message came"
                    )),
            )
            .await;
    }
    if outbound::closed_as_no_longer_admitted(&connection) {
        shared.cut_out_by(peer, "it closed its link to this node").await;
    }
    if let Err(err) = result {
        close_after(&shared, &connection, subject, &err).await;
    }
}

/// Custody acks waiting for their batch to be stored; past it, the
/// reader waits for the store.
const STORED_QUEUE: usize = 64;
/// How long a link that ends has to write its last acks.
const ACKS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The resolutions a link queues back to its peer at most (see
/// `resolutions::flood`): past it, they wait for the next link's exchange.
const RETURN_QUEUE: usize = 1024;
const RETURN_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Writes each batch's `Custody` ack once the batch is stored, in order,
/// and the resolutions flooded back to the peer ahead of them: this
/// direction carries no messages, so a resolution does not wait behind
/// any.
/// A store that fails closes the link, so the sender keeps what it sent
/// (and sends it again on its next link).
///
/// Acks are cumulative, so at most one goes out per [`ACK_EVERY`], with the
/// newest position: the first after a quiet spell at once, the ones that
/// follow it together. At 1,000 msg/s one ack a message was a packet each
/// way (the ack, and the sender's QUIC ACK of it) on two shared cores.
async fn ack_when_stored(
    mut send: quinn::SendStream,
    mut stored: tokio::sync::mpsc::Receiver<(Committed, Option<u64>)>,
    mut resolutions: QueueReceiver,
    connection: Connection,
) -> Result<(), StreamError> {
    let mut unsent: Option<u64> = None;
    let mut next_write = Instant::now();
    let mut flooded = Vec::new();
    // Closed once the link is no longer the peer's registered one.
    let mut flooding = true;
    loop {
        if let Some(through) = unsent.filter(|_| Instant::now() >= next_write) {
            write_frame(&mut send, &Frame::Custody { through }).await?;
            unsent = None;
            next_write = Instant::now() + ACK_EVERY;
        }
        let item = tokio::select! {
            biased;
            open = resolutions.recv_many(&mut flooded), if flooding => {
                flooding = open;
                crate::stream::write_all(&mut send, &mut flooded).await?;
                flooded.clear();
                continue;
            }
            item = stored.recv() => item,
            () = tokio::time::sleep_until(next_write), if unsent.is_some() => continue,
        };
        let Some((committed, through)) = item else { break };
        if let Err(err) = committed.wait().await {
            let err = StreamError::Store(err);
            warn!(cause = %err, "closing a peer's link: what it sent cannot be stored");
            connection.close(VarInt::from_u32(close::NORMAL), err.to_string().as_bytes());
            return Err(err);
        }
        if let Some(through) = through {
            unsent = Some(unsent.map_or(through, |earlier| earlier.max(through)));
        }
    }
    // The link is ending: what is stored is acknowledged now.
    if let Some(through) = unsent {
        write_frame(&mut send, &Frame::Custody { through }).await?;
    }
    Ok(())
}

/// The most often a link's `Custody` ack is written (see [`ack_when_stored`]).
const ACK_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Closes a peer's link because this node cannot write its audit log.
///
/// Every envelope a peer sends leads to release decisions here (deliver,
/// forward, refuse), each of which must leave a record (invariant 7). So
/// while the log fails, the node takes nothing from peers: it closes the
/// link (`AUDIT_UNAVAILABLE`) rather than read and drop, because then the
/// sender, whose log works, records that the messages did not get here
/// (its link went down), and, with custody, keeps them until this node
/// takes them again. Reading and dropping would lose them with only a
/// record that cannot be written.
async fn refuse_unaudited(shared: &Shared, connection: &Connection, peer: Nation, cause: String) {
    let err = StreamError::AuditUnavailable(cause);
    warn!(cause = %err, "closing a peer's link: the audit log cannot be written");
    connection.close(
        VarInt::from_u32(close::AUDIT_UNAVAILABLE),
        err.to_string().as_bytes(),
    );
    // Attempted all the same: the writer may succeed by the time it tries.
    shared
        .audit(
            Record::new(Event::Disconnect, Verdict::Deny, Reason::AuditUnavailable.code())
                .subject(peer)
                .detail(&err),
        )
        .await;
}

/// A peer's registration as the holder of its one inbound link, undone
/// on every way out of `serve`.
struct InboundLink<'a> {
    shared: &'a Shared,
    peer: Nation,
    generation: u64,
}

impl<'a> InboundLink<'a> {
    /// Makes `connection` `peer`'s inbound link, closing and auditing the
    /// one it replaces.
    async fn register(
        shared: &'a Shared,
        peer: Nation,
        connection: &Connection,
        back: QueueSender,
    ) -> InboundLink<'a> {
        let (generation, replaced) = shared.router.replace_inbound(peer, connection.clone(), back);
        if let Some(old) = replaced {
            let reason = format!("replaced by a newer link from {peer}");
            warn!(%reason, "closing the older inbound link");
            old.close(VarInt::from_u32(close::REPLACED), reason.as_bytes());
            shared
                .audit(
                    Record::new(Event::Disconnect, Verdict::Deny, Reason::LinkReplaced.code())
                        .subject(peer)
                        .detail(format!(
                            "{reason}: a peer has one inbound link at a time, and one budget of messages waiting for seals"
                        )),
                )
                .await;
        }
        InboundLink {
            shared,
            peer,
            generation,
        }
    }
}

impl Drop for InboundLink<'_> {
    fn drop(&mut self) {
        self.shared.router.remove_inbound(self.peer, self.generation);
    }
}

/// The most envelopes, and payload bytes, a link may have delivered
/// whose seals have not come yet; past either, the peer is breaking the
/// protocol (its seals follow each batch at once).
const MAX_UNSEALED: usize = 16 * 1024;
const MAX_UNSEALED_BYTES: usize = 32 * 1024 * 1024;

/// Envelopes from one link delivered ahead of their seals.
#[derive(Default)]
struct Unsealed {
    waiting: HashMap<MessageId, (Envelope, Arc<str>, Option<u64>)>,
    /// The outbox entries of those waiting, so custody is acknowledged
    /// only below the oldest.
    entries: BTreeSet<u64>,
    bytes: usize,
}

impl Unsealed {
    /// Whether one more envelope of `payload` bytes may wait; checked
    /// before it is delivered, so nothing is delivered that is not kept.
    fn make_room(&self, payload: usize) -> Result<(), StreamError> {
        if self.waiting.len() >= MAX_UNSEALED || self.bytes + payload > MAX_UNSEALED_BYTES {
            return Err(StreamError::Unsealed(self.waiting.len()));
        }
        Ok(())
    }

    fn insert(&mut self, envelope: Envelope, marking: Arc<str>, entry: Option<u64>) {
        self.bytes += envelope.payload.len();
        self.entries.extend(entry);
        if let Some((old, _, old_entry)) = self.waiting.insert(envelope.id, (envelope, marking, entry)) {
            // The same id again before its seal (a resend): the newer copy
            // waits in its place.
            self.bytes -= old.payload.len();
            if let Some(old_entry) = old_entry.filter(|&old_entry| Some(old_entry) != entry) {
                self.entries.remove(&old_entry);
            }
        }
    }

    fn take(&mut self, id: &MessageId) -> Option<(Envelope, Arc<str>)> {
        let (envelope, marking, entry) = self.waiting.remove(id)?;
        self.bytes -= envelope.payload.len();
        if let Some(entry) = entry {
            self.entries.remove(&entry);
        }
        Some((envelope, marking))
    }

    /// The oldest outbox entry still waiting for its seal.
    fn oldest(&self) -> Option<u64> {
        self.entries.first().copied()
    }
}

/// Where a link's custody count stands: which of the sender's outbox
/// entries each `Forward` and `Seals` frame is, and what was acknowledged.
#[derive(Default)]
struct CustodyCount {
    /// The entry the next custody frame is; set by `Resume`.
    next: Option<u64>,
    acked: Option<u64>,
}

impl CustodyCount {
    /// The entry the custody frame just read is.
    fn count(&mut self) -> Option<u64> {
        let entry = self.next?;
        self.next = Some(entry.saturating_add(1));
        Some(entry)
    }

    /// The entry to acknowledge through now, if it moved on: everything
    /// read, short of the oldest envelope still waiting for its seal (it
    /// is not stored for relaying until its seal verifies).
    fn ackable(&mut self, oldest_waiting: Option<u64>) -> Option<u64> {
        let read = self.next?.checked_sub(1)?;
        let through = match oldest_waiting {
            Some(oldest) => oldest.checked_sub(1)?.min(read),
            None => read,
        };
        if self.acked.is_some_and(|acked| acked >= through) {
            return None;
        }
        self.acked = Some(through);
        Some(through)
    }
}

/// An envelope from a peer whose seal is to be checked.
struct ToVerify {
    envelope: Envelope,
    marking: Arc<str>,
    /// Delivered already (it came unsealed, straight from its origin), so
    /// only relaying waits for the seal.
    delivered: bool,
}

/// Frames from a peer, read together. An envelope straight from its
/// origin is checked by the routing core (duplicate, age, whether this
/// nation and the peer may hold it) and delivered at once; every other
/// envelope is delivered only once its seal is authenticated. Then every
/// seal at hand is authenticated (by this node's tag, or else by the
/// signature), what passed goes on to this node's children in its
/// delivery tree, sealed, and the signatures behind the tags are checked
/// (mostly one per batch).
/// Envelopes that came unsealed wait (bounded) for the `Seals` frame that
/// follows them.
///
/// Delivery before the seal check, for envelopes from their origin, is on
/// purpose (invariant 3): they arrive on the origin node's own mutual-TLS
/// connection, which already proves who sent them; the origin could sign
/// anything it sends here. The seal matters to whoever relays or stores a
/// message, which happens only after this check.
async fn ingress(
    shared: &Arc<Shared>,
    peer: Nation,
    frames: &mut Vec<Frame>,
    unsealed: &mut Unsealed,
    count: &mut CustodyCount,
    excused: &mut usize,
    changes: &mut Vec<Change>,
) -> Result<(), StreamError> {
    let durable = shared.custody.durable();
    let seen = |envelope: &Envelope| Change::Seen {
        origin: envelope.origin,
        id: envelope.id,
        created_us: envelope.created_us,
    };
    // Each message's `admit` is dated when it arrived, and written before
    // what became of it, so the log reads in causal order.
    let arrived_us = crate::audit::now_us();
    let mut admitted = Vec::new();
    let mut records = Vec::new();
    let mut actions = Vec::new();
    let mut rerouted = Vec::new();
    let mut to_verify = Vec::new();
    let mut delivered_any = false;
    // Resolutions first: a cut that came with envelopes of the nation it
    // cuts applies before they are looked at.
    let offered: Vec<_> = frames
        .extract_if(.., |frame| matches!(frame, Frame::Resolution(_)))
        .filter_map(|frame| match frame {
            Frame::Resolution(signed) => Some(signed),
            _ => None,
        })
        .collect();
    resolutions::take_flooded(shared, peer, offered).await;
    let messages = frames.len();
    let mut result = Ok(());
    for frame in frames.drain(..) {
        match frame {
            Frame::Resume { next } => count.next = Some(next),
            Frame::Forward(envelope) if !envelope.is_signed() => {
                let entry = count.count();
                if let Err(err) = unsealed.make_room(envelope.payload.len()) {
                    result = Err(err);
                    break;
                }
                // Its origin sending it again: a resend after a link or
                // node went down. Delivered already, so it only waits for
                // its seal to be relayed once more (see `relay_again`).
                // One call to the core either way: this is the path of
                // every message straight from its origin.
                let (arrival, more) = shared.router.core(|core, now| {
                    let resent = envelope.origin == peer
                        && core.is_duplicate(envelope.origin, envelope.id)
                        && shared.router.relay_again(envelope.origin, envelope.id);
                    if resent {
                        core.precheck(&envelope, peer, now)
                            .map(|()| Arrival::Resent(core.marking(envelope.origin, &envelope.label)))
                    } else {
                        core.route(&envelope, Source::Peer(peer), SealState::Unverified, now)
                            .map(Arrival::New)
                    }
                });
                actions.extend(more);
                match arrival {
                    Ok(Arrival::New(route)) => {
                        admitted.push(
                            Record::at(
                                arrived_us,
                                Event::Admit,
                                Verdict::Allow,
                                Reason::OriginLink.code(),
                            )
                            .message(&envelope, &route.marking)
                            .subject(peer),
                        );
                        shared.router.deliver(
                            &shared.durables,
                            &envelope,
                            &route.marking,
                            &route.deliver,
                            changes,
                            &mut records,
                        );
                        delivered_any = true;
                        if durable {
                            changes.push(seen(&envelope));
                        }
                        unsealed.insert(envelope, route.marking, entry);
                    }
                    Ok(Arrival::Resent(marking)) => unsealed.insert(envelope, marking, entry),
                    Err(_) => {}
                }
            }
            Frame::Forward(envelope) => {
                count.count();
                let ((duplicate, marking, checked), more) = shared.router.core(|core, now| {
                    let duplicate = core.is_duplicate(envelope.origin, envelope.id);
                    let marking = core.marking(envelope.origin, &envelope.label);
                    // What fails without its seal costs no signature check
                    // (and is audited by the core).
                    let checked = duplicate || core.precheck(&envelope, peer, now).is_ok();
                    (duplicate, marking, checked)
                });
                actions.extend(more);
                if !checked {
                    continue;
                }
                if duplicate && shared.router.relay_again(envelope.origin, envelope.id) {
                    // A copy routed again (after a cut or a link that went
                    // down) may be on its way to nations the first copy's
                    // tree did not reach: relayed once more, not delivered.
                    let (checked, more) = shared
                        .router
                        .core(|core, now| core.precheck(&envelope, peer, now));
                    actions.extend(more);
                    if checked.is_ok() {
                        to_verify.push(ToVerify {
                            envelope,
                            marking,
                            delivered: true,
                        });
                    }
                    continue;
                }
                if duplicate {
                    // Relayed once more already: skip the seal check.
                    records.push(
                        Record::new(Event::Drop, Verdict::Deny, routing::Reason::Duplicate.code())
                            .message(&envelope, &marking)
                            .subject(peer),
                    );
                    continue;
                }
                to_verify.push(ToVerify {
                    envelope,
                    marking,
                    delivered: false,
                });
            }
            Frame::Seals(batch) => {
                count.count();
                // Its envelopes wait on, and are audited `unsealed` when
                // the link closes.
                if let Err(err) = batch.check_size() {
                    result = Err(StreamError::MisshapenSeals(err));
                    break;
                }
                for proof in batch.proofs {
                    // Seals of envelopes refused above have nothing to go on.
                    if let Some((mut envelope, marking)) = unsealed.take(&proof.id) {
                        envelope.attach(&batch.signature, &batch.tags, proof);
                        to_verify.push(ToVerify {
                            envelope,
                            marking,
                            delivered: true,
                        });
                    }
                }
            }
            Frame::Announce(announcement) => {
                // A peer whose link this changes out of the live graph
                // (its end announces it gone, while this node's end is
                // still up) is no longer a child in any tree: what waits
                // for it goes on by the new tree, in the same call, so
                // nothing routed after the change overtakes it.
                let (moved, more) = shared.router.core(|core, now| {
                    let before = core.live_neighbours();
                    // A refused one is audited by the core.
                    let _ = core.receive_announcement(peer, announcement, now);
                    let mut moved = Vec::new();
                    for lost in before.difference(&core.live_neighbours()) {
                        // Decoded inside the lock: only here is it known
                        // whose outbox to move.
                        let envelopes = custody::envelopes(shared.custody.outbox(*lost).not_rerouted());
                        moved.extend(outbound::plan_reroute(core, now, *lost, envelopes));
                    }
                    moved
                });
                actions.extend(more);
                rerouted.extend(moved);
            }
            _ => {
                result = Err(StreamError::Unexpected("non-Forward"));
                break;
            }
        }
    }
    if delivered_any {
        // The deliveries go out before any seal is checked (46 µs for a
        // signature, where a seal has no good tag) and before the records.
        let_writers_send().await;
        offer_cpu(messages);
    }
    // One set of keys for both steps: a reload in between must not make a
    // seal proven under the old key fail under the new one.
    let rules = shared.rules();
    // What passed goes on even when the batch's bad seals close the link:
    // it is its origin's, and it is audited like the rest.
    let (authenticated, checked) = authenticate(shared, &rules, peer, to_verify, excused, &mut records).await;
    if let Err(err) = checked {
        result = Err(err);
    }
    let mut relays = Vec::new();
    let mut to_confirm = Vec::with_capacity(authenticated.len());
    for (
        ToVerify {
            envelope,
            marking,
            delivered,
        },
        authentic,
    ) in authenticated
    {
        let (route, more) = shared.router.core(|core, now| {
            if delivered {
                Ok(core.relay(&envelope, peer, now))
            } else {
                core.route(&envelope, Source::Peer(peer), SealState::Verified, now)
            }
        });
        actions.extend(more);
        to_confirm.push((authentic, marking.clone(), !delivered));
        let Ok(route) = route else { continue };
        shared.router.deliver(
            &shared.durables,
            &envelope,
            &marking,
            &route.deliver,
            changes,
            &mut records,
        );
        if durable && !delivered {
            changes.push(seen(&envelope));
        }
        if !route.forward.is_empty() || !route.held.is_empty() || !route.denied.is_empty() {
            relays.push(Outgoing {
                envelope,
                marking,
                forward: route.forward,
                held: route.held,
                denied: route.denied,
                // Only the origin audits what no path reaches.
                unreached: Vec::new(),
            });
        }
    }
    // The core's records (refusals, deliveries it denied) go after the
    // admissions.
    let refused = shared.announce(actions);
    let relayed_any = !relays.is_empty();
    relay(shared, relays, changes, &mut records);
    let unsealed = outbound::forward_batch(shared, rerouted, changes, &mut records);
    if relayed_any {
        // As for deliveries: what was relayed goes out before any
        // signature is checked.
        let_writers_send().await;
        offer_cpu(messages);
    }
    outbound::seal_later(shared, unsealed).await;
    let batch = ArrivedBatch { peer, arrived_us };
    if let Err(err) = confirm(shared, &rules, batch, to_confirm, &mut admitted, &mut records).await {
        result = Err(err);
    }
    for record in admitted.into_iter().chain(records).chain(refused) {
        shared.audit(record).await;
    }
    result
}

/// Where and when a batch arrived, for its `admit` records.
#[derive(Clone, Copy)]
struct ArrivedBatch {
    peer: Nation,
    arrived_us: u64,
}

/// Bad seals one batch from a peer may hold before the peer is cut. A
/// well-behaved peer never sends one (origins seal what they send, relays
/// pass on only what verified), and each costs a signature check (46 µs),
/// so a peer sending thousands would otherwise hold this reader, and on a
/// small runtime the whole node, for a second at a time.
const MAX_BAD_SEALS: usize = 8;
/// Seals checked between yields, so one large batch does not keep other
/// tasks from running for more than about a millisecond.
const SEALS_PER_YIELD: usize = 16;
/// Bad signatures behind this node's good tags, of origins other than the
/// peer, that one link may bring without being cut: an honest relay passes
/// such lies on until it distrusts their origin too (about one batch of
/// them), while a relay colluding with a lying origin would otherwise
/// cost this node a signature check each, without end.
const MAX_EXCUSED: usize = 1024;

/// Proves each seal its origin's, by this node's tag or by the signature
/// ([`crate::envelope::Verifier::authenticate`]), and records each refusal;
/// returns what passed. The verifier's lock is held for one seal at a
/// time, never for a batch, so other links' readers wait for one signature
/// check at most. Past [`MAX_BAD_SEALS`] bad seals, the rest of the batch
/// is refused unchecked and the link is to be closed as a protocol
/// violation (the error beside what passed).
async fn authenticate(
    shared: &Shared,
    rules: &Arc<Rules>,
    peer: Nation,
    envelopes: Vec<ToVerify>,
    excused: &mut usize,
    records: &mut Vec<Record>,
) -> (Vec<(ToVerify, Authentic)>, Result<(), StreamError>) {
    let mut good = Vec::with_capacity(envelopes.len());
    let mut bad = 0;
    // A cut nation's keys are gone from the rules, so its seals never verify.
    for (checked, item) in envelopes.into_iter().enumerate() {
        if checked > 0 && checked % SEALS_PER_YIELD == 0 {
            tokio::task::yield_now().await;
        }
        let origin = item.envelope.origin;
        let verdict = if bad >= MAX_BAD_SEALS {
            Err((
                format!("not checked: {peer} sent {bad} bad seals in this batch, so its link is closed"),
                false,
            ))
        } else {
            match rules.node_keys.get(&origin) {
                Some(key) => {
                    let own = rules
                        .tag_keys
                        .get(&origin)
                        .map(|tag_key| (shared.nation, tag_key));
                    under_rules(shared, rules, |verifier| {
                        verifier.authenticate(&item.envelope, key, own)
                    })
                }
                None => Err(EnvelopeError::UnknownOrigin(origin)),
            }
            .map_err(|err| {
                // This node's own tag verified beside a bad signature: the
                // origin's doing. An honest relay passes such seals on (by
                // their tags) until it learns to distrust that origin
                // too, so up to a link's allowance they do not count
                // against a relay's link.
                let origins_doing = matches!(err, EnvelopeError::OriginSignedBadly { .. });
                (err.to_string(), origins_doing)
            })
        };
        match verdict {
            Ok(authentic) => good.push((item, authentic)),
            Err((err, origins_doing)) => {
                if origin != peer && origins_doing && *excused < MAX_EXCUSED {
                    *excused += 1;
                } else {
                    bad += 1;
                }
                warn!(id = %item.envelope.id, cause = %err, "refused: bad seal");
                let fate = if item.delivered {
                    "it came on its origin's own link, so it was delivered here, but it is never relayed or stored"
                } else {
                    "it was neither delivered nor relayed"
                };
                records.push(
                    Record::new(Event::Refuse, Verdict::Deny, Reason::BadSignature.code())
                        .detail(format!("{err}; {fate}"))
                        .message(&item.envelope, &item.marking)
                        .subject(peer),
                );
            }
        }
    }
    let checked = if bad > MAX_BAD_SEALS {
        Err(StreamError::BadSeals(bad))
    } else {
        Ok(())
    };
    (good, checked)
}

/// Runs `check` on the verifier with keys from `rules`. If the rules have
/// changed since (a reload, cut or restore), what it remembered under
/// their keys is forgotten at once: the change's own clearing of the
/// verifier may have come before this call.
fn under_rules<T>(shared: &Shared, rules: &Arc<Rules>, check: impl FnOnce(&mut Verifier) -> T) -> T {
    let mut verifier = shared.verifier();
    let outcome = check(&mut verifier);
    if !shared.rules_are(rules) {
        verifier.clear();
    }
    outcome
}

/// Checks the signature of each seal [`authenticate`] proved by a tag,
/// after what it passed was delivered and relayed, and records the
/// outcome: mostly one signature check per batch, or none where the
/// signature was what proved the seal. A good seal's `admit` joins
/// `admitted`, dated at arrival and written before its deliveries; a bad
/// one's refusal goes after them, behind an `admit` for the tag that let
/// it through when it came sealed in this batch (`came_sealed`). A
/// failure is the origin's own doing
/// (its tag for this node verified), so the verifier distrusts that
/// origin's tags from then on, and it counts against the link only when
/// the origin is the peer: past [`MAX_BAD_SEALS`] of those the rest are
/// not checked and the link is closed.
async fn confirm(
    shared: &Shared,
    rules: &Arc<Rules>,
    ArrivedBatch { peer, arrived_us }: ArrivedBatch,
    authenticated: Vec<(Authentic, Arc<str>, bool)>,
    admitted: &mut Vec<Record>,
    records: &mut Vec<Record>,
) -> Result<(), StreamError> {
    let mut bad = 0;
    for (checked, (authentic, marking, came_sealed)) in authenticated.into_iter().enumerate() {
        let id = authentic.id();
        let origin = authentic.origin();
        if checked > 0 && checked % SEALS_PER_YIELD == 0 {
            tokio::task::yield_now().await;
        }
        // Only the lying origin's own seals go unchecked: any other's is
        // checked, so that its record says what is true of it.
        let unchecked = bad >= MAX_BAD_SEALS && origin == peer;
        let verdict = if !authentic.needs_signature() {
            Ok(())
        } else if unchecked {
            Err(format!(
                "not checked: {peer} sent {bad} seals with bad signatures in this batch, so its link is closed"
            ))
        } else {
            // A key gone since (a cut in between) leaves the seal unconfirmed.
            match rules.node_keys.get(&origin) {
                Some(key) => under_rules(shared, rules, |verifier| verifier.confirm(&authentic, key)),
                None => Err(EnvelopeError::UnknownOrigin(origin)),
            }
            .map_err(|err| err.to_string())
        };
        match verdict {
            Ok(()) => admitted.push(
                Record::at(arrived_us, Event::Admit, Verdict::Allow, Reason::Verified.code())
                    .about(id, &marking)
                    .subject(peer),
            ),
            Err(err) => {
                if origin == peer {
                    bad += 1;
                }
                warn!(%id, cause = %err, "bad signature behind a good tag");
                if came_sealed {
                    admitted.push(
                        Record::at(
                            arrived_us,
                            Event::Admit,
                            Verdict::Allow,
                            Reason::TagVerified.code(),
                        )
                        .about(id, &marking)
                        .subject(peer),
                    );
                }
                records.push(
                    Record::new(Event::Refuse, Verdict::Deny, Reason::BadSignature.code())
                        .detail(format!(
                            "{err}; its tag for this node had verified, so it was delivered and relayed as its route allowed before this check"
                        ))
                        .about(id, &marking)
                        .subject(peer),
                );
            }
        }
    }
    if bad > MAX_BAD_SEALS {
        return Err(StreamError::BadSeals(bad));
    }
    Ok(())
}

/// Hands verified envelopes to the outboxes of this node's children, with
/// their seals (each is sealed already), never waiting: like any forward,
/// a child's live link whose outbox is full is cut, so one child cannot
/// slow this reader.
fn relay(
    shared: &Shared,
    relays: Vec<Outgoing<Arc<str>>>,
    changes: &mut Vec<Change>,
    records: &mut Vec<Record>,
) {
    for message in relays {
        message.offer(shared, changes, records);
    }
}

/// What an envelope straight from its origin is to this node.
enum Arrival {
    /// New: delivered, and relayed once its seal verifies.
    New(routing::Route),
    /// A resend of one taken before: relayed once its seal verifies.
    Resent(Arc<str>),
}
