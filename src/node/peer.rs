//! Peer links. Each node dials every configured peer and keeps the link up,
//! re-dialing with backoff; it sends its own traffic only on links it
//! dialed. Links dialed by peers are receive-only: every envelope on them
//! is verified and re-checked before it is routed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tracing::{debug, error, info, warn};

use super::queue;
use super::router::Source;
use super::{accept_hello, close_after, read_frame, resolve, write_frame, Shared, StreamError};
use crate::audit::{self, Event, Record, Verdict};
use crate::envelope::Envelope;
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::address_host;
use crate::policy::Decision;
use crate::tls;
use crate::wire::{self, Frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Messages older than this are refused at ingress (see `ingress`).
const MAX_MESSAGE_AGE_US: u64 = 10 * 60 * 1_000_000;

pub(super) async fn serve_inbound(shared: Arc<Shared>, connection: Connection, peer: Nation) {
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
    let mut shutdown = shared.shutdown.clone();
    let result = loop {
        let frame = tokio::select! {
            frame = read_frame(&mut recv) => frame,
            _ = shutdown.changed() => break Ok(()),
        };
        match frame {
            Ok(Some(Frame::Forward(envelope))) => ingress(&shared, peer, envelope).await,
            Ok(Some(_)) => break Err(StreamError::Unexpected("non-Forward")),
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    if let Err(err) = result {
        close_after(&shared, &connection, subject, &err).await;
    }
}

/// A message from a peer: drop duplicates, verify the origin's signature,
/// re-check that this nation may receive it, then route it.
async fn ingress(shared: &Shared, peer: Nation, mut envelope: Envelope) {
    let marking = shared.policy.scheme().format(&envelope.label);
    let record = |event, verdict, reason: &str| {
        Record::new(event, verdict, reason)
            .message(&envelope, &marking)
            .subject(peer)
    };
    if shared.router.is_duplicate(&envelope.id) {
        return shared
            .audit(record(Event::Drop, Verdict::Deny, "duplicate"))
            .await;
    }
    // Until relaying exists, a peer may only send what its own node
    // originated; anything else (including our own messages echoed back)
    // is refused rather than trusted.
    if envelope.origin != peer {
        warn!(origin = %envelope.origin, "refused: not the peer's own message");
        let detail = format!(
            "{peer} sent a message originated by {}; peers send only their own",
            envelope.origin
        );
        return shared
            .audit(record(Event::Refuse, Verdict::Deny, "not-origin").detail(detail))
            .await;
    }
    // Older messages may have left the duplicate window, so a replay of
    // one could not be told from a first delivery.
    if audit::now_us().saturating_sub(envelope.created_us) > MAX_MESSAGE_AGE_US {
        warn!(id = %envelope.id, "refused: stale message");
        return shared.audit(record(Event::Refuse, Verdict::Deny, "stale")).await;
    }
    let Some(key) = shared.node_keys.get(&envelope.origin) else {
        warn!(origin = %envelope.origin, "refused: unknown origin");
        return shared
            .audit(record(Event::Refuse, Verdict::Deny, "unknown-origin"))
            .await;
    };
    if let Err(err) = envelope.verify(key) {
        warn!(id = %envelope.id, cause = %err, "refused: bad signature");
        return shared
            .audit(record(Event::Refuse, Verdict::Deny, "bad-signature").detail(err))
            .await;
    }
    if let Decision::Deny { reason, message } =
        shared
            .policy
            .may_forward(&envelope.label, envelope.origin, shared.nation)
    {
        warn!(id = %envelope.id, %reason, "refused: peer sent what this nation may not receive");
        return shared
            .audit(
                record(Event::Refuse, Verdict::Deny, reason.code())
                    .detail(format!("{peer} sent it: {message}")),
            )
            .await;
    }
    shared
        .audit(record(Event::Admit, Verdict::Allow, "verified"))
        .await;
    for record in shared
        .router
        .route(&mut envelope, Source::Peer(peer), &shared.signer)
    {
        shared.audit(record).await;
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
    let link = shared.router.add_peer(peer, queue, connection.clone());
    info!("link up");
    shared
        .audit(Record::new(Event::Admit, Verdict::Allow, "link-up").subject(peer))
        .await;
    let mut shutdown = shared.shutdown.clone();
    let cause = loop {
        tokio::select! {
            frame = outbox.recv() => match frame {
                Some(frame) => if let Err(err) = send.write_all(&frame).await {
                    break err.to_string();
                },
                None => break "queue closed".to_owned(),
            },
            err = connection.closed() => break err.to_string(),
            _ = shutdown.changed() => break "node shutting down".to_owned(),
        }
    };
    shared.router.remove_peer(peer, link);
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
    Ok(())
}
