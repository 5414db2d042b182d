//! Links this node dials, the only ones it sends on: dialing each
//! configured peer and re-dialing with backoff, one link's life
//! (`run_link`), and offering publishers' envelopes to links
//! (`forward_batch`), which hands what the links carried to the sealer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tracing::{debug, error, info, warn};

use super::connection::{read_frame, write_frame, StreamError};
use super::router::PeerTarget;
use super::sealer::ToSeal;
use super::{queue, resolve, Reason, Shared};
use crate::audit::{Event, PeerOutcome, Record, Verdict};
use crate::envelope::Envelope;
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::address_host;
use crate::policy;
use crate::routing;
use crate::stream;
use crate::tls;
use crate::wire::{self, Frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a link must stay up for its end to reset the re-dial backoff.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// The shortest wait before re-dialing a peer this node cut for not
/// keeping up (capped by `max_redial_backoff`).
const CUT_BACKOFF: Duration = Duration::from_secs(1);

/// A message to offer to peers, with its route's forward decisions.
pub(super) struct Outgoing<M> {
    pub(super) envelope: Envelope,
    pub(super) marking: M,
    /// The peers the routing core chose: this node's children in the tree.
    pub(super) forward: Vec<Nation>,
    /// Interested neighbours the policy denied, with its reason.
    pub(super) denied: Vec<(Nation, policy::Reason)>,
    /// Interested, eligible nations no live path reaches (`no-route`,
    /// `unreachable`): at the origin only.
    pub(super) unreached: Vec<(Nation, routing::Reason)>,
}

impl<M: AsRef<str>> Outgoing<M> {
    /// Offers the message (its encoded forward frame) to each chosen
    /// peer's link without waiting, and records every peer's outcome,
    /// allowed, denied or dropped, in the message's one `forward` record.
    /// Returns the links that took it.
    pub(super) fn offer(&self, shared: &Shared, records: &mut Vec<Record>) -> Vec<PeerTarget> {
        let mut peers: Vec<PeerOutcome> = self
            .denied
            .iter()
            .map(|&(peer, reason)| PeerOutcome {
                peer,
                decision: Verdict::Deny,
                reason: reason.code(),
            })
            .collect();
        let mut carried_by = Vec::with_capacity(self.forward.len());
        // Encoded only if it goes anywhere: a message that stays local may
        // still have denials to record.
        let frame = if self.forward.is_empty() {
            Ok(Bytes::new())
        } else {
            wire::encode_forward(&self.envelope).map(Bytes::from)
        };
        if let Err(err) = &frame {
            warn!(id = %self.envelope.id, cause = %err, "cannot encode a forward");
        }
        for &peer in &self.forward {
            let outcome = match (&frame, shared.router.target(peer)) {
                (Err(_), _) => Err(Reason::EncodeFailed),
                // The link went down since the core chose it.
                (Ok(_), None) => Err(Reason::LinkDown),
                (Ok(frame), Some(target)) => target.offer_or_cut(frame.clone(), records).map(|()| target),
            };
            let (decision, reason) = match outcome {
                Ok(target) => {
                    debug!(to = %peer, id = %self.envelope.id, "forwarded");
                    carried_by.push(target);
                    (Verdict::Allow, Reason::PolicyAllows)
                }
                Err(reason) => (Verdict::Deny, reason),
            };
            peers.push(PeerOutcome {
                peer,
                decision,
                reason: reason.code(),
            });
        }
        // Listed in the same record, so a nation that is away (one cut
        // for not keeping up, say) adds no line to every message; a line
        // of its own per message measured as most of what a hostile peer
        // cost the healthy ones (BENCHMARKS.md, issue 8).
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

/// Offers each envelope, unsealed, to its target links without waiting
/// (a link whose queue is full is cut: see [`PeerTarget::offer_or_cut`]),
/// then hands what the links carried to the sealer.
///
/// The seal follows its envelopes so that signing (24 µs) is not on the
/// way: the receiving node delivers an envelope from its origin at once,
/// and relays or stores it only once the seal has come and verified.
pub(super) async fn forward_batch(
    shared: &Shared,
    outgoing: Vec<Outgoing<String>>,
    records: &mut Vec<Record>,
) {
    for message in outgoing {
        let carried_by = message.offer(shared, records);
        if !carried_by.is_empty() {
            let to_seal = ToSeal {
                id: message.envelope.id,
                leaf: message.envelope.leaf(),
                carried_by,
            };
            // The sealer never waits for a link, so this waits at most for
            // one signature; it fails only at shutdown, and then the peers
            // audit the missing seals.
            let _ = shared.sealer.send(to_seal).await;
        }
    }
}

/// Keeps the link to `peer` up until shutdown.
pub(super) async fn dial_forever(shared: Arc<Shared>, peer: Nation) {
    let mut shutdown = shared.shutdown.clone();
    let mut rules_changed = shared.rules_changed.subscribe();
    let mut backoff = FIRST_BACKOFF;
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
                backoff = backoff.max(CUT_BACKOFF).min(shared.settings.max_redial_backoff);
                debug!(?backoff, "link cut; re-dialing later");
            }
            // Two dialers holding one nation's certificate would otherwise
            // take the link from each other ten times a second, a
            // handshake each time: this one waits the longest backoff.
            Ok(LinkEnd::Replaced) => {
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
async fn run_link(shared: &Shared, peer: Nation, config: &quinn::ClientConfig) -> Result<LinkEnd, LinkError> {
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
    let (link, fate, purge_report, actions) = shared.router.add_link(peer, queue, connection.clone());
    info!("link up");
    shared
        .audit(Record::new(Event::Admit, Verdict::Allow, Reason::LinkUp.code()).subject(peer))
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
                // A frame written is gone from `batch`; what a failed write
                // leaves there never left.
                if let Err(err) = stream::write_all(&mut send, &mut batch).await {
                    break err.to_string();
                }
                batch.clear();
            }
            err = connection.closed() => break err.to_string(),
            _ = shutdown.changed() => break "node shutting down".to_owned(),
        }
    };
    let replaced = matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(wire::close::REPLACED)
    );
    let actions = shared.router.remove_link(peer, link);
    let mut left = outbox.close_and_drain();
    left.append(&mut batch);
    if fate.no_longer_admitted() {
        // The control that closed the link has audited why; what was
        // queued for the peer is purged, each message audited.
        let purged = purge(shared, peer, left).await;
        let _ = purge_report.send(purged);
        return Ok(LinkEnd::NoLongerAdmitted);
    }
    let end = if fate.stalled() {
        LinkEnd::Cut
    } else if replaced {
        LinkEnd::Replaced
    } else {
        LinkEnd::Down
    };
    let dropped = left.len();
    if *shutdown.borrow() {
        info!(dropped, "link closed for shutdown");
    } else {
        warn!(%cause, dropped, "link down");
    }
    let mut record = Record::new(Event::Disconnect, Verdict::Deny, Reason::LinkDown.code())
        .subject(peer)
        .detail(&cause);
    if dropped > 0 {
        record = record.detail(format!("{cause}; {dropped} queued messages dropped"));
    }
    shared.audit(record).await;
    shared.carry_out(actions).await;
    Ok(end)
}

/// Audits each message that was queued for `peer` when the rules stopped
/// admitting it, as dropped (`cut` when its nation is cut out), and
/// returns how many there were. Seals and announcements carry no message
/// and go unrecorded.
async fn purge(shared: &Shared, peer: Nation, frames: Vec<Bytes>) -> u64 {
    let rules = shared.rules();
    let code = if rules.policy.is_suspended(peer) {
        Reason::Cut.code()
    } else {
        Reason::NoLongerAdmitted.code()
    };
    let mut purged = 0;
    for frame in frames {
        let Some(body) = frame.get(wire::LENGTH_PREFIX..) else {
            continue;
        };
        // Frames this node encoded itself: they decode.
        if let Ok(Frame::Forward(envelope)) = wire::decode(body) {
            purged += 1;
            let marking = rules.policy.scheme().format(&envelope.label);
            shared
                .audit(
                    Record::new(Event::Drop, Verdict::Deny, code)
                        .message(&envelope, &marking)
                        .subject(peer)
                        .detail(format!(
                            "it was queued for {peer}, which this node no longer admits; purged, never sent"
                        )),
                )
                .await;
        }
    }
    if purged > 0 {
        warn!(
            purged,
            "messages queued for a peer no longer admitted were purged"
        );
    }
    purged
}
