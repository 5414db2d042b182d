//! Links this node dials, the only ones it sends on: dialing each
//! configured peer and re-dialing with backoff, one link's life
//! (`run_link`: writing its outbox from the oldest entry not acknowledged,
//! reading its `Custody` acks), handing envelopes to peers' outboxes
//! (`forward_batch`, then `seal_later` hands what they took to the sealer), and
//! routing again what waited for a peer the tree has lost (`reroute`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tracing::{debug, error, info, warn};

use super::connection::{read_frame, write_frame, AbortOnDrop, StreamError};
use super::custody::{self, CustodyHandle};
use super::outbox::Outbox;
use super::resolutions;
use super::sealer::ToSeal;
use super::{queue, resolve, Reason, Shared};
use crate::audit::{now_us, Event, PeerOutcome, Record, Verdict};
use crate::envelope::Envelope;
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::address_host;
use crate::policy;
use crate::routing::{self, Action, Routing};
use crate::store::Change;
use crate::stream;
use crate::tls;
use crate::wire::{self, Frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a link must stay up for its end to reset the re-dial backoff.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// The shortest wait before re-dialing a peer this node cut for not
/// keeping up (capped by `max_redial_backoff`).
const CUT_BACKOFF: Duration = Duration::from_secs(1);

/// A message to hand to peers' outboxes, with its route's forward
/// decisions.
pub(super) struct Outgoing<M> {
    pub(super) envelope: Envelope,
    pub(super) marking: M,
    /// The peers the routing core chose: this node's children in the tree.
    pub(super) forward: Vec<Nation>,
    /// Children on the tree as it was, whose links are down: the message
    /// waits in their outboxes until the link returns.
    pub(super) held: Vec<Nation>,
    /// Interested neighbours the policy denied, with its reason.
    pub(super) denied: Vec<(Nation, policy::Reason)>,
    /// Interested, eligible nations no path reaches (`no-route`,
    /// `unreachable`): at the origin only.
    pub(super) unreached: Vec<(Nation, routing::Reason)>,
}

impl<M: AsRef<str>> Outgoing<M> {
    /// Hands the message (its encoded forward frame) to each chosen
    /// peer's outbox without waiting, puts the changes that store it in
    /// `changes`, and records every peer's outcome (allowed, held, denied
    /// or dropped) in the message's one `forward` record. Returns the
    /// peers that took it.
    pub(super) fn offer(
        &self,
        shared: &Shared,
        changes: &mut Vec<Change>,
        records: &mut Vec<Record>,
    ) -> Vec<Nation> {
        let mut peers: Vec<PeerOutcome> = self
            .denied
            .iter()
            .map(|&(peer, reason)| PeerOutcome {
                peer,
                decision: Verdict::Deny,
                reason: reason.code(),
            })
            .collect();
        let mut carried_by = Vec::with_capacity(self.forward.len() + self.held.len());
        // Encoded only if it goes anywhere: a message that stays local may
        // still have denials to record.
        let frame = if self.forward.is_empty() && self.held.is_empty() {
            Ok(Bytes::new())
        } else {
            wire::encode_forward(&self.envelope).map(Bytes::from)
        };
        if let Err(err) = &frame {
            warn!(id = %self.envelope.id, cause = %err, "cannot encode a forward");
        }
        for &peer in self.forward.iter().chain(&self.held) {
            let outcome = match &frame {
                Err(_) => Err(Reason::EncodeFailed),
                // Aged from its creation, as the replay window is.
                Ok(frame) => shared.hand_over(peer, frame.clone(), self.envelope.created_us, true, changes),
            };
            let (decision, reason) = match outcome {
                Ok(reason) => {
                    debug!(to = %peer, id = %self.envelope.id, %reason, "forwarded");
                    carried_by.push(peer);
                    (Verdict::Allow, reason)
                }
                Err(reason) => (Verdict::Deny, reason),
            };
            peers.push(PeerOutcome {
                peer,
                decision,
                reason: reason.code(),
            });
        }
        // Listed in the same record, so a nation that is away adds no line
        // to every message; a line of its own per message measured as most
        // of what a hostile peer cost the healthy ones (BENCHMARKS.md).
        peers.extend(self.unreached.iter().map(|&(peer, reason)| PeerOutcome {
            peer,
            decision: Verdict::Deny,
            reason: reason.code(),
        }));
        if !peers.is_empty() {
            records.push(Record::forward(peers).message(&self.envelope, self.marking.as_ref()));
        }
        carried_by
    }
}

/// Hands each envelope, unsealed, to its peers' outboxes without waiting
/// (a live link whose outbox is full is cut). Returns what they took, for
/// [`seal_later`].
///
/// The seal follows its envelopes so that signing (24 µs) is not on the
/// way: the receiving node delivers an envelope from its origin at once,
/// and relays or stores it only once the seal has come and verified.
#[must_use = "what the outboxes took unsealed must go to the sealer"]
pub(super) fn forward_batch(
    shared: &Shared,
    outgoing: Vec<Outgoing<String>>,
    changes: &mut Vec<Change>,
    records: &mut Vec<Record>,
) -> Unsealed {
    let mut unsealed = Vec::new();
    for message in outgoing {
        let carried_by = message.offer(shared, changes, records);
        // A relayed envelope carries its seal; one being routed again may
        // too.
        if !carried_by.is_empty() && !message.envelope.is_signed() {
            unsealed.push((message.envelope, carried_by));
        }
    }
    Unsealed(unsealed)
}

/// Envelopes outboxes took unsealed, and the peers whose outboxes hold
/// each.
pub(super) struct Unsealed(Vec<(Envelope, Vec<Nation>)>);

/// Hands what the outboxes took unsealed to the sealer. Called once the
/// link writers have had a turn: the leaf hashes are not on the way of
/// the envelopes they seal.
pub(super) async fn seal_later(shared: &Shared, Unsealed(unsealed): Unsealed) {
    for (envelope, carried_by) in unsealed {
        let to_seal = ToSeal {
            id: envelope.id,
            leaf: envelope.leaf(),
            carried_by,
        };
        // The sealer never waits for a link, so this waits at most for
        // one signature; it fails only at shutdown, and a restarted node
        // seals again what its outboxes hold unsealed.
        let _ = shared.sealer.send(to_seal).await;
    }
}

/// Routes the envelopes among `frames`, which were bound for `peer`,
/// again along this node's tree as it is now, without `peer`: its link is
/// down (the frames also stay in its outbox, for when it returns; copies
/// that arrive twice are dropped as duplicates), or it was cut out. With
/// `going_down`, this node's link of that generation to `peer` is
/// forgotten in the same call to the core, so nothing published in
/// between overtakes what is routed again.
pub(super) async fn reroute(shared: &Shared, peer: Nation, frames: Vec<Bytes>, going_down: Option<u64>) {
    // Decoded before the core's lock is taken: only routing is inside.
    let envelopes = custody::envelopes(frames);
    let (outgoing, actions) = shared.router.core_without_link(peer, going_down, |core, now| {
        plan_reroute(core, now, peer, envelopes)
    });
    hand_over_again(shared, outgoing, actions).await;
}

/// The routes, along the tree as `core` has it now and without `peer`, of
/// `envelopes`. Called inside the core call that changed the tree.
pub(super) fn plan_reroute(
    core: &mut Routing,
    now: u64,
    peer: Nation,
    envelopes: Vec<Envelope>,
) -> Vec<Outgoing<String>> {
    envelopes
        .into_iter()
        .filter_map(|envelope| {
            let route = core.relay(&envelope, peer, now);
            (!route.forward.is_empty() || !route.held.is_empty()).then(|| Outgoing {
                marking: route.marking.to_string(),
                envelope,
                forward: route.forward,
                held: route.held,
                denied: Vec::new(),
                unreached: Vec::new(),
            })
        })
        .collect()
}

/// Hands messages routed again to their new outboxes (sealed anew where
/// they were not yet), and stores them, after carrying out `actions`.
pub(super) async fn hand_over_again(shared: &Shared, outgoing: Vec<Outgoing<String>>, actions: Vec<Action>) {
    // The announcement that the link is down goes first (the writers send
    // announcements ahead of their outboxes): a relay that routes a copy
    // by a tree that still has the link would not pass it on.
    shared.carry_out(actions).await;
    if outgoing.is_empty() {
        return;
    }
    let rerouted = outgoing.len();
    let mut changes = Vec::new();
    let mut records = Vec::new();
    let unsealed = forward_batch(shared, outgoing, &mut changes, &mut records);
    seal_later(shared, unsealed).await;
    if let Err(err) = shared.custody.commit(changes).await {
        warn!(cause = %err, "messages routed again could not be stored");
    }
    for record in records {
        shared.audit(record).await;
    }
    info!(
        rerouted,
        "messages bound for a peer that is away were routed again"
    );
}

/// Keeps the link to `peer` up until shutdown.
pub(super) async fn dial_forever(shared: Arc<Shared>, peer: Nation) {
    let mut shutdown = shared.shutdown.clone();
    let mut rules_changed = shared.rules_changed.subscribe();
    let mut backoff = FIRST_BACKOFF;
    let wake = shared.dialer_wake(peer);
    while !*shutdown.borrow() {
        // Marked seen before the rules are read, so a change that lands
        // in between still wakes the wait below.
        rules_changed.borrow_and_update();
        let rules = shared.rules();
        if !rules.links_to(shared.nation, peer) {
            // Cut out, or no longer a peer in the network file: no dial
            // until the rules change (a restore, a reload).
            drop(rules);
            tokio::select! {
                changed = rules_changed.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            backoff = FIRST_BACKOFF;
            continue;
        }
        // Built for each dial from the rules in force, so a reload's CAs
        // and CRLs apply to the very next handshake.
        let config = tls::client_config(
            &rules.trust,
            shared.cert_chain.clone(),
            shared.key.clone_key(),
            Identity::Node(peer),
        );
        drop(rules);
        let config = match config {
            Ok(config) => config,
            Err(err) => return error!(cause = %err, "cannot configure the link"),
        };
        let dialed = tokio::time::Instant::now();
        // Whether the peer dialing this node may cut the wait short: not
        // after a cut or a replaced link, whose long waits are the point.
        let mut wakeable = true;
        match run_link(&shared, peer, &config).await {
            // A link that stayed up a while went down for a reason of its
            // own: re-dial at once. One that drops as soon as it is up is
            // a peer flapping it (each link-up costs a signed announcement
            // flooded to every node), so the backoff keeps growing.
            Ok(LinkEnd::Down) if dialed.elapsed() >= STABLE_LINK => backoff = FIRST_BACKOFF,
            Ok(LinkEnd::Down) => debug!(?backoff, "link dropped soon after it came up"),
            // A peer cut for not keeping up is re-dialed after a second at
            // least, and then with a growing backoff, as if the dial had
            // failed: one that keeps filling its queue costs a handshake
            // and a refill (queued for nobody) every few seconds, not ten
            // times a second.
            Ok(LinkEnd::Cut) => {
                wakeable = false;
                backoff = backoff.max(CUT_BACKOFF).min(shared.settings.max_redial_backoff);
                debug!(?backoff, "link cut; re-dialing later");
            }
            // Two dialers holding one nation's certificate would otherwise
            // take the link from each other ten times a second, a
            // handshake each time: this one waits the longest backoff.
            Ok(LinkEnd::Replaced) => {
                wakeable = false;
                backoff = shared.settings.max_redial_backoff;
                warn!(
                    ?backoff,
                    "the peer took a newer link from this nation instead; re-dialing later"
                );
            }
            // The rules no longer admit the peer: the loop waits for them
            // to change.
            Ok(LinkEnd::NoLongerAdmitted) => backoff = FIRST_BACKOFF,
            Err(err) => debug!(cause = %err, ?backoff, "link down; re-dialing"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            // The peer dialed this node (now, or since this dial began):
            // it is up.
            () = wake.notified(), if wakeable => backoff = FIRST_BACKOFF,
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
    let rules = shared.rules();
    let address = rules
        .loaded
        .nation(peer)
        .map(|table| table.address.clone())
        .ok_or_else(|| LinkError::Address(format!("{peer} is not in the network file")))?;
    let addr = resolve(&address).map_err(|err| LinkError::Address(err.to_string()))?;
    Ok((addr, address_host(&address).to_owned()))
}

/// Whether the peer closed `connection` because it no longer admits this
/// node (it cut this nation out).
pub(super) fn closed_as_no_longer_admitted(connection: &quinn::Connection) -> bool {
    matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(wire::close::NO_LONGER_ADMITTED)
    )
}

/// How a link that was up ended.
enum LinkEnd {
    /// It went down: the peer left, the network failed, or shutdown.
    Down,
    /// This node cut it: its queue was full.
    Cut,
    /// The peer closed it for a newer link from this nation: another
    /// dialer holds its certificate (a second instance of this node, or
    /// someone playing it).
    Replaced,
    /// This node closed it: its rules no longer admit the peer.
    NoLongerAdmitted,
}

/// One link's life: dial, greet, then write queued frames until the
/// connection ends. Returns `Ok` if the link was up at some point.
async fn run_link(
    shared: &Arc<Shared>,
    peer: Nation,
    config: &quinn::ClientConfig,
) -> Result<LinkEnd, LinkError> {
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
    let log_sent = resolutions::send_log(shared, &mut send).await?;
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
    // The peer's resolutions, before anything else: a cut this node
    // missed while it was down applies before it sends a single envelope.
    resolutions::receive_log(shared, peer, &mut recv).await?;
    if !shared.rules().links_to(shared.nation, peer) {
        connection.close(
            wire::close::NO_LONGER_ADMITTED.into(),
            b"cut out by a coalition resolution",
        );
        return Ok(LinkEnd::NoLongerAdmitted);
    }
    shared.linked_again(peer);

    // Announcements go on a queue of their own: they are not held in
    // custody (a link that comes up gets every one the node holds).
    let (queue, mut announcements) = queue::bounded(ANNOUNCEMENT_QUEUE, ANNOUNCEMENT_QUEUE_BYTES);
    let outbox = shared.custody.outbox(peer);
    outbox.attach(now_us());
    let (link, fate, actions) = shared.router.add_link(peer, queue.clone(), connection.clone());
    resolutions::send_missed(shared, log_sent, &queue);
    info!("link up");
    shared
        .audit(Record::new(Event::Admit, Verdict::Allow, Reason::LinkUp.code()).subject(peer))
        .await;
    shared.carry_out(actions).await;
    let mut acks = AbortOnDrop(tokio::spawn(read_acks(
        shared.clone(),
        shared.custody.handle(),
        peer,
        outbox.clone(),
        recv,
        connection.clone(),
    )));
    let mut shutdown = shared.shutdown.clone();
    let mut batch = Vec::new();
    let mut more = true;
    let cause = loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break "node shutting down".to_owned(),
            err = connection.closed() => break err.to_string(),
            open = announcements.recv_many(&mut batch) => {
                if !open {
                    break "queue closed".to_owned();
                }
                if let Err(err) = stream::write_all(&mut send, &mut batch).await {
                    break err.to_string();
                }
                batch.clear();
            }
            () = outbox.ready(), if !more => more = true,
            () = std::future::ready(()), if more => {
                more = outbox.take(&mut batch, queue::WRITE_BATCH);
                // What a failed write leaves is still in the outbox, and
                // the next link sends it again.
                if let Err(err) = stream::write_all(&mut send, &mut batch).await {
                    break err.to_string();
                }
                batch.clear();
            }
        }
    };
    acks.0.abort();
    let cause = match (&mut acks.0).await {
        // It closed the connection, which is what ended the loop above.
        Ok(Err(violation)) => {
            warn!(cause = %violation, "closed the link: its acknowledgements broke the protocol");
            shared
                .audit(
                    Record::new(Event::Disconnect, Verdict::Deny, Reason::ProtocolViolation.code())
                        .subject(peer)
                        .detail(&violation),
                )
                .await;
            violation
        }
        _ => cause,
    };
    // The acks since the last forget written (they are written at most
    // every FORGET_EVERY) are forgotten in the store too.
    if let Some(through) = outbox.forgotten_through() {
        shared.custody.write_later(vec![Change::Forget { peer, through }]);
    }
    let replaced = matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(wire::close::REPLACED)
    );
    if closed_as_no_longer_admitted(&connection) {
        shared.cut_out_by(peer, "it closed this node's link to it").await;
    }
    // What waits for the peer goes on by the tree without it (and to the
    // peer too, when it returns); not for a peer that another dialer
    // took the link from, or at shutdown.
    let reroute_now = !replaced && !*shutdown.borrow() && !fate.no_longer_admitted();
    let frames = if reroute_now {
        outbox.not_rerouted()
    } else {
        Vec::new()
    };
    reroute(shared, peer, frames, Some(link)).await;
    announcements.close_and_drain();
    if fate.no_longer_admitted() {
        // The control that closed the link has audited why, and purges
        // what the peer's outbox holds.
        return Ok(LinkEnd::NoLongerAdmitted);
    }
    let end = if fate.stalled() {
        LinkEnd::Cut
    } else if replaced {
        LinkEnd::Replaced
    } else {
        LinkEnd::Down
    };
    let (held, _) = outbox.depth();
    if *shutdown.borrow() {
        info!(held, "link closed for shutdown");
    } else {
        warn!(%cause, held, "link down");
    }
    let mut record = Record::new(Event::Disconnect, Verdict::Deny, Reason::LinkDown.code())
        .subject(peer)
        .detail(&cause);
    if held > 0 {
        record = record.detail(format!(
            "{cause}; {held} frames not acknowledged stay in its outbox, for the next link"
        ));
    }
    shared.audit(record).await;
    Ok(end)
}

/// The announcements a link queues at most: a few per nation, even for a
/// peer that reads nothing and asked for nothing (so its outbox never
/// fills and gets it cut). Past it, announcements are not queued, and the
/// 30 s refresh repairs what it missed once it reads again.
const ANNOUNCEMENT_QUEUE: usize = 4096;
const ANNOUNCEMENT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How often acknowledged entries are forgotten in the store: a crash
/// between two costs a resend of what came in between, no more.
const FORGET_EVERY: Duration = Duration::from_millis(100);

/// Reads the peer's `Custody` acks on a link and lets the outbox forget
/// what they cover (and the store, without waiting: a forget lost in a
/// crash costs a resend). An ack of what this link never sent, or any
/// other frame, closes the link as a protocol violation.
async fn read_acks(
    shared: Arc<Shared>,
    custody: CustodyHandle,
    peer: Nation,
    outbox: Arc<Outbox>,
    mut recv: quinn::RecvStream,
    connection: quinn::Connection,
) -> Result<(), String> {
    // Forgetting is cumulative, so the store hears of it at most every
    // FORGET_EVERY, not once an ack.
    let mut forgotten = tokio::time::Instant::now();
    loop {
        let read = read_frame(&mut recv).await;
        let why = match read {
            Ok(Some(Frame::Custody { through })) => match outbox.acknowledge(through, now_us()) {
                Ok(_) if forgotten.elapsed() >= FORGET_EVERY => {
                    forgotten = tokio::time::Instant::now();
                    custody.write_later(vec![Change::Forget { peer, through }]);
                    continue;
                }
                Ok(_) => continue,
                Err(err) => err.to_string(),
            },
            // Flooded back on this link by the peer (see
            // `resolutions::flood`): taken by the node's own task, paced
            // like any link's; dropped if that one is behind.
            Ok(Some(Frame::Resolution(signed))) => {
                if shared.returned_resolutions.try_send((peer, signed)).is_err() {
                    debug!("the resolutions flooded back wait for too long: one is dropped");
                }
                continue;
            }
            Ok(Some(_)) => "a frame other than Custody or Resolution on a link's return stream".to_owned(),
            Err(err) if err.is_protocol_violation() => err.to_string(),
            // The link's end is seen by its writer.
            Ok(None) | Err(_) => return Ok(()),
        };
        connection.close(wire::close::PROTOCOL.into(), why.as_bytes());
        return Err(why);
    }
}
