//! Links this node dials, the only ones it sends on: dialing each
//! configured peer and re-dialing with backoff, one link's life
//! (`run_link`), and offering publishers' envelopes to links
//! (`forward_batch`), which hands what the links carried to the sealer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use super::connection::{read_frame, write_frame, StreamError};
use super::router::PeerTarget;
use super::sealer::ToSeal;
use super::{queue, resolve, Reason, Shared};
use crate::audit::{Event, Record, Verdict};
use crate::envelope::Envelope;
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::address_host;
use crate::stream;
use crate::tls;
use crate::wire::{self, Frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Offers each envelope, unsealed, to its target links without waiting
/// (a link whose queue is full is cut: see [`PeerTarget::offer_or_cut`]),
/// then hands what the links carried to the sealer.
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
        let record = |peer: Nation, event, verdict, reason: Reason| {
            Record::new(event, verdict, reason.code())
                .message(&envelope, &marking)
                .subject(peer)
        };
        let frame = match wire::encode_forward(&envelope) {
            Ok(encoded) => Bytes::from(encoded),
            Err(err) => {
                for target in &targets {
                    records.push(
                        record(target.nation, Event::Drop, Verdict::Deny, Reason::EncodeFailed).detail(&err),
                    );
                }
                continue;
            }
        };
        let mut carried_by = Vec::with_capacity(targets.len());
        for target in targets {
            match target.offer_or_cut(frame.clone(), records) {
                Ok(()) => {
                    debug!(to = %target.nation, id = %envelope.id, "forwarded");
                    records.push(record(
                        target.nation,
                        Event::Forward,
                        Verdict::Allow,
                        Reason::PolicyAllows,
                    ));
                    carried_by.push(target);
                }
                Err(reason) => records.push(record(target.nation, Event::Drop, Verdict::Deny, reason)),
            }
        }
        if !carried_by.is_empty() {
            let to_seal = ToSeal {
                id: envelope.id,
                leaf: envelope.leaf(),
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
    let mut record = Record::new(Event::Disconnect, Verdict::Deny, Reason::LinkDown.code())
        .subject(peer)
        .detail(&cause);
    if dropped > 0 {
        record = record.detail(format!("{cause}; {dropped} queued messages dropped"));
    }
    shared.audit(record).await;
    shared.carry_out(actions).await;
    Ok(())
}
