//! A hostile member's node, for the benchmarks and the containment tests:
//! it holds a genuine node certificate and key, greets the links real
//! nodes dial to it, announces interest in their traffic (signed with its
//! real key, so they forward to it), then stops reading or reads only a
//! trickle. It plays what one compromised member can do (ARCHITECTURE.md,
//! "Threat model: a hostile member"), with
//! real QUIC and TLS, so that what the real nodes do about it is measured
//! and tested on the real code path.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use tokio::task::JoinSet;

use crate::audit::now_us;
use crate::identity::Identity;
use crate::label::Nation;
use crate::node::NodeConfig;
use crate::routing::announce::Announcement;
use crate::stream;
use crate::tls;
use crate::topic::Pattern;
use crate::wire::{self, Frame};

/// How a hostile node treats a link a real node dialed to it, once greeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// Never reads again: the link's flow control closes, and everything
    /// the real node sends it piles up in that node's queue.
    Stuck,
    /// Reads [`TRICKLE_BYTES`] every [`TRICKLE_EVERY`]: never silent long
    /// enough for any timeout, but far slower than the traffic it asked for.
    Trickle,
}

/// What a trickling node reads at a time.
pub const TRICKLE_BYTES: usize = 1024;
/// How often a trickling node reads.
pub const TRICKLE_EVERY: Duration = Duration::from_millis(20);

/// Why the hostile node could not play its part.
#[derive(Debug, thiserror::Error)]
pub enum HostileError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Dialing the real node failed.
    #[error("cannot dial the node: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Reading or writing a frame failed.
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The real node did not answer `Hello` with its `PeerWelcome`.
    #[error("the node answered {0}, not PeerWelcome")]
    Welcome(String),
    /// The CAs cannot be made into a trust store.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A pattern did not parse.
    #[error(transparent)]
    Pattern(#[from] crate::topic::TopicError),
}

/// Serves, as the node of `nation`, every link dialed to `endpoint`
/// (bound with that nation's real certificate, as `node::bind` does) the
/// `hostility` way, re-dials included, until the endpoint is closed.
pub async fn serve(endpoint: Endpoint, nation: Nation, hostility: Hostility) {
    let mut links = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        links.spawn(misbehave(incoming, nation, hostility));
        while links.try_join_next().is_some() {}
    }
}

async fn misbehave(incoming: quinn::Incoming, nation: Nation, hostility: Hostility) {
    let Ok(connection) = incoming.await else { return };
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    if !matches!(stream::read_frame(&mut recv).await, Ok(Some(Frame::Hello { .. }))) {
        return;
    }
    // It greets, sends an empty resolution log, and reads nothing more.
    for frame in [Frame::PeerWelcome { nation }, Frame::ResolutionsSent] {
        if stream::write_frame(&mut send, &frame).await.is_err() {
            return;
        }
    }
    match hostility {
        Hostility::Stuck => {
            connection.closed().await;
        }
        Hostility::Trickle => {
            let mut buffer = vec![0u8; TRICKLE_BYTES];
            loop {
                tokio::select! {
                    _ = connection.closed() => return,
                    () = tokio::time::sleep(TRICKLE_EVERY) => {}
                }
                if !matches!(recv.read(&mut buffer).await, Ok(Some(_))) {
                    return;
                }
            }
        }
    }
    // Keep the stream halves until the connection is gone.
    drop((send, recv));
}

/// Opens a link from the hostile node to the real node of `to` at `addr`
/// and announces, signed with the hostile node's real key, that it is
/// linked to `to` and wants `patterns`: the real node then forwards that
/// traffic to it. Keep the returned connection: it is the hostile node's
/// one inbound link at `to`, and the announcement lives with it.
pub async fn announce_interest(
    config: &NodeConfig,
    endpoint: &Endpoint,
    to: Nation,
    addr: SocketAddr,
    patterns: &[&str],
) -> Result<Connection, HostileError> {
    let client = tls::client_config(
        &config.trust.trust_store(&Default::default())?,
        config.cert_chain.clone(),
        config.key.clone_key(),
        Identity::Node(to),
    )?;
    let connection = endpoint
        .connect_with(client, addr, &addr.ip().to_string())?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    stream::write_frame(
        &mut send,
        &Frame::Hello {
            version: wire::PROTOCOL_VERSION,
        },
    )
    .await?;
    stream::write_frame(&mut send, &Frame::ResolutionsSent).await?;
    match stream::read_frame(&mut recv).await? {
        Some(Frame::PeerWelcome { nation }) if nation == to => {}
        other => return Err(HostileError::Welcome(format!("{other:?}"))),
    }
    // The node's resolution log comes next; nothing here needs it.
    while !matches!(
        stream::read_frame(&mut recv).await?,
        Some(Frame::ResolutionsSent) | None
    ) {}
    let patterns = patterns
        .iter()
        .map(|p| Pattern::new(*p))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let announcement = Announcement {
        nation: config.nation,
        seq: now_us(),
        links: [to].into(),
        patterns,
    };
    stream::write_frame(&mut send, &Frame::Announce(announcement.sign(&config.signer))).await?;
    Ok(connection)
}
