//! Peer links. Each node dials every configured peer and keeps the link up,
//! re-dialing with backoff; it sends its own traffic only on links it
//! dialed, each batch of envelopes followed by their seals. Links dialed
//! by peers are receive-only: every envelope on them is re-checked before
//! it is delivered, and its seal verified as soon as it is at hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::queue;
use super::router::PeerTarget;
use super::{accept_hello, close_after, next_batch, read_frame, resolve, write_frame, Shared, StreamError};
use crate::audit::{Event, Record, Verdict};
use crate::envelope::{Envelope, EnvelopeError, Hash, MessageId, Proof, SealBatch};
use crate::identity::Identity;
use crate::label::{Label, MarkingScheme, Nation};
use crate::pki::address_host;
use crate::routing::{Reason, Route, SealState, Source};
use crate::stream::{self, FrameReader};
use crate::tls;
use crate::wire::{self, Frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn serve_inbound(shared: Arc<Shared>, connection: Connection, peer: Nation) {
    let subject = peer.to_string();
    let (mut send, recv) = match accept_hello(&shared, &connection).await {
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
    let mut reader = FrameReader::new(recv);
    let mut frames = Vec::new();
    let mut unsealed = Unsealed::default();
    let mut markings = LastMarking::default();
    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        match next_batch(&mut reader, &mut frames, &mut shutdown).await {
            Ok(true) => {
                if let Err(err) = ingress(&shared, peer, &mut frames, &mut unsealed, &mut markings).await {
                    break Err(err);
                }
            }
            Ok(false) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    // Whatever is still waiting for its seal was delivered here but can
    // never be verified: it is never relayed or stored, and it is audited.
    for (envelope, marking) in unsealed.waiting.into_values() {
        shared
            .audit(
                Record::new(Event::Refuse, Verdict::Deny, "unsealed")
                    .message(&envelope, &marking)
                    .subject(peer)
                    .detail(format!(
                        "{peer}'s link ended before the seal of this message came"
                    )),
            )
            .await;
    }
    if let Err(err) = result {
        close_after(&shared, &connection, subject, &err).await;
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
    waiting: HashMap<MessageId, (Envelope, String)>,
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

    fn insert(&mut self, envelope: Envelope, marking: String) {
        self.bytes += envelope.payload.len();
        self.waiting.insert(envelope.id, (envelope, marking));
    }

    fn take(&mut self, id: &MessageId) -> Option<(Envelope, String)> {
        let taken = self.waiting.remove(id)?;
        self.bytes -= taken.0.payload.len();
        Some(taken)
    }
}

/// The canonical marking of the last label a link carried: a link mostly
/// carries a few labels over and over, and comparing one costs less than
/// printing it.
#[derive(Default)]
struct LastMarking(Option<(Label, String)>);

impl LastMarking {
    fn of(&mut self, scheme: &MarkingScheme, label: &Label) -> String {
        if let Some((last, marking)) = &self.0 {
            if last == label {
                return marking.clone();
            }
        }
        let marking = scheme.format(label);
        self.0 = Some((label.clone(), marking.clone()));
        marking
    }
}

/// An envelope from a peer whose seal is to be checked.
struct ToVerify {
    envelope: Envelope,
    marking: String,
    /// Delivered already (it came unsealed, straight from its origin), so
    /// only relaying waits for the seal.
    delivered: bool,
}

/// Frames from a peer, read together. An envelope straight from its
/// origin is checked by the routing core (duplicate, age, whether this
/// nation and the peer may hold it) and delivered at once; every other
/// envelope is delivered only once its seal verifies. Then every seal at
/// hand is verified (mostly one signature check per batch), and what
/// verified goes on to this node's children in its delivery tree, sealed.
/// Envelopes that came unsealed wait (bounded) for the `Seals` frame that
/// follows them.
///
/// Delivery before the seal check, for envelopes from their origin, is on
/// purpose (invariant 3): they arrive on the origin node's own mutual-TLS
/// connection, which already proves who sent them; the origin could sign
/// anything it sends here. The seal matters to whoever relays or stores a
/// message, which happens only after this check.
async fn ingress(
    shared: &Shared,
    peer: Nation,
    frames: &mut Vec<Frame>,
    unsealed: &mut Unsealed,
    markings: &mut LastMarking,
) -> Result<(), StreamError> {
    let mut records = Vec::new();
    let mut actions = Vec::new();
    let mut to_verify = Vec::new();
    let mut delivered_any = false;
    let mut result = Ok(());
    for frame in frames.drain(..) {
        match frame {
            Frame::Forward(envelope) if !envelope.is_signed() => {
                if let Err(err) = unsealed.make_room(envelope.payload.len()) {
                    result = Err(err);
                    break;
                }
                let marking = markings.of(shared.policy.scheme(), &envelope.label);
                let (route, more) = shared
                    .router
                    .core(|core, now| core.route(&envelope, Source::Peer(peer), SealState::Unverified, now));
                actions.extend(more);
                if let Ok(route) = route {
                    shared
                        .router
                        .deliver(&envelope, &marking, &route.deliver, &mut records);
                    delivered_any = true;
                    unsealed.insert(envelope, marking);
                }
            }
            Frame::Forward(envelope) => {
                let marking = markings.of(shared.policy.scheme(), &envelope.label);
                let (duplicate, _) = shared
                    .router
                    .core(|core, _| core.is_duplicate(envelope.origin, envelope.id));
                if duplicate {
                    // The common case with two paths: skip the seal check.
                    records.push(
                        Record::new(Event::Drop, Verdict::Deny, Reason::Duplicate.code())
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
                for proof in batch.proofs {
                    // Seals of envelopes refused above have nothing to go on.
                    if let Some((mut envelope, marking)) = unsealed.take(&proof.id) {
                        envelope.attach(&batch.signature, proof);
                        to_verify.push(ToVerify {
                            envelope,
                            marking,
                            delivered: true,
                        });
                    }
                }
            }
            Frame::Announce(announcement) => {
                let (_, more) = shared
                    .router
                    .core(|core, now| core.receive_announcement(peer, announcement, now));
                actions.extend(more);
            }
            _ => {
                result = Err(StreamError::Unexpected("non-Forward"));
                break;
            }
        }
    }
    if delivered_any && !to_verify.is_empty() {
        // Let the session writers, then the connection drivers they wake,
        // send the deliveries before any seal is checked (46 µs for a
        // signature): each yield lets the tasks queued before it run.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    }
    let verified = verify(shared, peer, to_verify, &mut records);
    let mut relays = Vec::new();
    for ToVerify {
        envelope,
        marking,
        delivered,
    } in verified
    {
        let (route, more) = shared.router.core(|core, now| {
            if delivered {
                Ok(Route {
                    deliver: Vec::new(),
                    forward: core.relay(&envelope, peer, now),
                })
            } else {
                core.route(&envelope, Source::Peer(peer), SealState::Verified, now)
            }
        });
        actions.extend(more);
        let Ok(route) = route else { continue };
        shared
            .router
            .deliver(&envelope, &marking, &route.deliver, &mut records);
        if !route.forward.is_empty() {
            relays.push((envelope, marking, route.forward));
        }
    }
    shared.carry_out(actions).await;
    relay(shared, relays, &mut records).await;
    for record in records {
        shared.audit(record).await;
    }
    result
}

/// Checks each seal and records the outcome; returns what verified.
fn verify(
    shared: &Shared,
    peer: Nation,
    envelopes: Vec<ToVerify>,
    records: &mut Vec<Record>,
) -> Vec<ToVerify> {
    if envelopes.is_empty() {
        return envelopes;
    }
    let mut verifier = shared.verifier.lock().unwrap_or_else(PoisonError::into_inner);
    let mut good = Vec::with_capacity(envelopes.len());
    for item in envelopes {
        let verdict = match shared.node_keys.get(&item.envelope.origin) {
            Some(key) => verifier.verify(&item.envelope, key),
            None => Err(EnvelopeError::UnknownOrigin(item.envelope.origin)),
        };
        let record = match verdict {
            Ok(()) => Record::new(Event::Admit, Verdict::Allow, "verified"),
            Err(err) => {
                warn!(id = %item.envelope.id, cause = %err, "refused: bad seal");
                let fate = if item.delivered {
                    "it came on its origin's own link, so it was delivered here, but it is never relayed or stored"
                } else {
                    "it was neither delivered nor relayed"
                };
                Record::new(Event::Refuse, Verdict::Deny, "bad-signature").detail(format!("{err}; {fate}"))
            }
        };
        let ok = record.decision == Verdict::Allow;
        records.push(record.message(&item.envelope, &item.marking).subject(peer));
        if ok {
            good.push(item);
        }
    }
    good
}

/// Sends verified envelopes on to this node's children, with their seals
/// (each is sealed already), waiting for room like any forward.
async fn relay(shared: &Shared, relays: Vec<(Envelope, String, Vec<Nation>)>, records: &mut Vec<Record>) {
    for (envelope, marking, forward) in relays {
        let frame = match wire::encode_forward(&envelope) {
            Ok(encoded) => Bytes::from(encoded),
            Err(err) => {
                records.push(
                    Record::new(Event::Drop, Verdict::Deny, "encode-failed")
                        .message(&envelope, &marking)
                        .detail(err),
                );
                continue;
            }
        };
        for target in shared.router.targets(&forward) {
            let record = match send_or_cut(shared, &target, frame.clone()).await {
                Ok(()) => Record::new(Event::Forward, Verdict::Allow, "policy-allows"),
                Err(reason) => Record::new(Event::Drop, Verdict::Deny, reason),
            };
            records.push(record.message(&envelope, &marking).subject(target.nation));
        }
    }
}

/// Queues each envelope, unsealed, for its target links, waiting for
/// room (a busy link slows the publisher down), then hands what the links
/// carried to the sealer. A link that stays full for `peer_stall_timeout`
/// is closed.
///
/// The seal follows its envelopes so that signing (24 µs) is not on the
/// way: the receiving node delivers an envelope from its origin at once,
/// and relays or stores it only once the seal has come and verified.
pub(super) async fn forward_batch(
    shared: &Shared,
    outgoing: Vec<(Envelope, String, Vec<PeerTarget>)>,
    records: &mut Vec<Record>,
) {
    for (envelope, marking, targets) in outgoing {
        let record = |peer: Nation, event, verdict, reason: &'static str| {
            Record::new(event, verdict, reason)
                .message(&envelope, &marking)
                .subject(peer)
        };
        let frame = match wire::encode_forward(&envelope) {
            Ok(encoded) => Bytes::from(encoded),
            Err(err) => {
                for target in &targets {
                    records.push(
                        record(target.nation, Event::Drop, Verdict::Deny, "encode-failed").detail(&err),
                    );
                }
                continue;
            }
        };
        let mut carried_by = Vec::with_capacity(targets.len());
        for target in targets {
            match send_or_cut(shared, &target, frame.clone()).await {
                Ok(()) => {
                    debug!(to = %target.nation, id = %envelope.id, "forwarded");
                    records.push(record(
                        target.nation,
                        Event::Forward,
                        Verdict::Allow,
                        "policy-allows",
                    ));
                    carried_by.push(target);
                }
                Err(reason) => {
                    let mut drop = record(target.nation, Event::Drop, Verdict::Deny, reason);
                    if reason == "peer-stalled" {
                        drop = drop.detail(format!(
                            "its queue stayed full for {:?}",
                            shared.settings.peer_stall_timeout
                        ));
                    }
                    records.push(drop);
                }
            }
        }
        if !carried_by.is_empty() {
            let to_seal = ToSeal {
                id: envelope.id,
                leaf: envelope.leaf(),
                carried_by,
            };
            // Fails only at shutdown; the peers audit the missing seals.
            let _ = shared.sealer.send(to_seal).await;
        }
    }
}

/// An envelope some links carried unsealed, waiting for its seal.
pub(super) struct ToSeal {
    id: MessageId,
    leaf: Hash,
    carried_by: Vec<PeerTarget>,
}

/// The shortest time between two signatures of the sealer.
const SEAL_INTERVAL: Duration = Duration::from_millis(1);
/// The most envelopes under one signature: their proofs (ten hashes each
/// at most) keep a `Seals` frame far below the frame limit.
const SEAL_BATCH: usize = 1024;

/// The sealer: signs what the links carried, one signature per batch, and
/// sends each link the seals of its envelopes. Signatures are at least
/// [`SEAL_INTERVAL`] apart, so at any rate above one batch a millisecond
/// the signing cost stays flat (about 2.5% of a core here, and 5% for each
/// peer that verifies), while a lone message is sealed at once.
pub(super) async fn seal_forever(shared: Arc<Shared>, mut queue: mpsc::Receiver<ToSeal>) {
    let mut shutdown = shared.shutdown.clone();
    let mut last_signature = tokio::time::Instant::now() - SEAL_INTERVAL;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, SEAL_BATCH) => if received == 0 { return },
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep_until(last_signature + SEAL_INTERVAL).await;
        // Let the link writers, then the connection drivers they wake,
        // send the envelopes before the signature is made.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        while batch.len() < SEAL_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (signature, proofs) = shared.signer.seal_leaves(batch.iter().map(|s| s.leaf).collect());
        last_signature = tokio::time::Instant::now();
        // Each link gets one Seals frame with the proofs of what it carried.
        let mut per_link: Vec<(PeerTarget, Vec<Proof>)> = Vec::new();
        for (sealed, (siblings, left)) in batch.drain(..).zip(proofs) {
            let proof = Proof {
                id: sealed.id,
                siblings,
                left,
            };
            for target in sealed.carried_by {
                match per_link.iter_mut().find(|(link, _)| link.link == target.link) {
                    Some((_, proofs)) => proofs.push(proof.clone()),
                    None => per_link.push((target, vec![proof.clone()])),
                }
            }
        }
        for (target, proofs) in per_link {
            let seals = Frame::Seals(SealBatch {
                signature: signature.clone(),
                proofs,
            });
            match wire::encode(&seals) {
                // A link that fails here is going down: its peer audits
                // the envelopes whose seals never came.
                Ok(frame) => {
                    let _ = send_or_cut(&shared, &target, Bytes::from(frame)).await;
                }
                Err(err) => warn!(to = %target.nation, cause = %err, "cannot encode seals"),
            }
        }
    }
}

/// Queues `frame` on a link, waiting for room up to `peer_stall_timeout`;
/// a link that stays full that long is closed. The error is the reason
/// code for the audit record.
pub(super) async fn send_or_cut(
    shared: &Shared,
    target: &PeerTarget,
    frame: Bytes,
) -> Result<(), &'static str> {
    match tokio::time::timeout(shared.settings.peer_stall_timeout, target.queue.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("link-down"),
        Err(_) => {
            warn!(to = %target.nation, "closing a link whose queue stayed full");
            target.connection.close(
                VarInt::from_u32(wire::close::SLOW_CONSUMER),
                b"slow consumer: peer queue stayed full",
            );
            Err("peer-stalled")
        }
    }
}

/// Keeps the link to `peer` up until shutdown.
pub(super) async fn dial_forever(shared: Arc<Shared>, peer: Nation) {
    let config = match tls::client_config(
        &shared.trust,
        shared.cert_chain.clone(),
        shared.key.clone_key(),
        Identity::Node(peer),
    ) {
        Ok(config) => config,
        Err(err) => return error!(cause = %err, "cannot configure the link"),
    };
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = FIRST_BACKOFF;
    while !*shutdown.borrow() {
        match run_link(&shared, peer, &config).await {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(err) => debug!(cause = %err, ?backoff, "link down; re-dialing"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(shared.settings.max_redial_backoff);
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot resolve the peer's address: {0}")]
    Address(String),
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the peer answered {0}, not PeerWelcome from its own node")]
    WrongWelcome(String),
}

fn peer_address(shared: &Shared, peer: Nation) -> Result<(SocketAddr, String), LinkError> {
    if let Some(addr) = shared.peer_addresses.get(&peer) {
        return Ok((*addr, addr.ip().to_string()));
    }
    let address = &shared.policy.nations()[&peer].address;
    let addr = resolve(address).map_err(|err| LinkError::Address(err.to_string()))?;
    Ok((addr, address_host(address).to_owned()))
}

/// One link's life: dial, greet, then write queued frames until the
/// connection ends. Returns `Ok` if the link was up at some point.
async fn run_link(shared: &Shared, peer: Nation, config: &quinn::ClientConfig) -> Result<(), LinkError> {
    let (addr, server_name) = peer_address(shared, peer)?;
    let connection = shared
        .endpoint
        .connect_with(config.clone(), addr, &server_name)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = Frame::Hello {
        version: wire::PROTOCOL_VERSION,
    };
    write_frame(&mut send, &hello).await?;
    let welcome = tokio::time::timeout(shared.settings.first_frame_timeout, read_frame(&mut recv))
        .await
        .map_err(|_| StreamError::Timeout("PeerWelcome"))??;
    match welcome {
        Some(Frame::PeerWelcome { nation }) if nation == peer => {}
        other => {
            connection.close(wire::close::PROTOCOL.into(), b"unexpected welcome");
            return Err(LinkError::WrongWelcome(format!("{other:?}")));
        }
    }

    let (queue, mut outbox) = queue::bounded(shared.settings.peer_queue, shared.settings.peer_queue_bytes);
    let (link, actions) = shared.router.add_link(peer, queue, connection.clone());
    info!("link up");
    shared
        .audit(Record::new(Event::Admit, Verdict::Allow, "link-up").subject(peer))
        .await;
    shared.carry_out(actions).await;
    let mut shutdown = shared.shutdown.clone();
    let mut batch = Vec::new();
    let cause = loop {
        tokio::select! {
            more = outbox.recv_many(&mut batch) => {
                if !more {
                    break "queue closed".to_owned();
                }
                if let Err(err) = stream::write_all(&mut send, &mut batch).await {
                    break err.to_string();
                }
                batch.clear();
            }
            err = connection.closed() => break err.to_string(),
            _ = shutdown.changed() => break "node shutting down".to_owned(),
        }
    };
    let actions = shared.router.remove_link(peer, link);
    let dropped = outbox.close_and_count();
    if *shutdown.borrow() {
        info!(dropped, "link closed for shutdown");
    } else {
        warn!(%cause, dropped, "link down");
    }
    let mut record = Record::new(Event::Disconnect, Verdict::Deny, "link-down")
        .subject(peer)
        .detail(&cause);
    if dropped > 0 {
        record = record.detail(format!("{cause}; {dropped} queued messages dropped"));
    }
    shared.audit(record).await;
    shared.carry_out(actions).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Signer;

    #[test]
    fn a_full_seal_batch_fits_in_one_frame() {
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let signer = Signer::from_pkcs8(der.as_ref()).unwrap();
        let leaves: Vec<Hash> = (0..SEAL_BATCH).map(|i| [(i % 251) as u8; 32]).collect();
        let (signature, proofs) = signer.seal_leaves(leaves);
        let proofs = proofs
            .into_iter()
            .enumerate()
            .map(|(i, (siblings, left))| Proof {
                id: MessageId([(i % 256) as u8; 16]),
                siblings,
                left,
            })
            .collect();
        let frame = wire::encode(&Frame::Seals(SealBatch { signature, proofs })).unwrap();
        assert!(frame.len() < wire::MAX_FRAME / 2, "{} bytes", frame.len());
    }
}
