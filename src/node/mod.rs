//! The broker node: its configuration and keys, the QUIC endpoint, the
//! state its tasks share, the accept loop and shutdown, and `run_network`
//! (every node of a network in one process). Admission, sessions, links,
//! sealing and routing each live in their own submodule.

mod admission;
mod connection;
mod control;
mod custody;
mod durable;
mod inbound;
mod outbound;
mod outbox;
mod queue;
mod reason;
mod release;
mod resolutions;
mod router;
mod sealer;
mod session;

pub use control::{ControlError, NodeControl};
pub use reason::Reason;

use std::collections::BTreeSet;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Endpoint, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::audit::{now_us, Audit, AuditError, Event, Record, Verdict};
use crate::authenticator::TagKeys;
use crate::config::PolicySource;
use crate::envelope::{EnvelopeError, MessageIds, Signer, Verifier};
use crate::identity::{ed25519_public_key, Identity, IdentityError, TrustStore};
use crate::label::Nation;
use crate::pki::{self, PkiError, PkiLayout, TrustMaterial};
use crate::policy::Policy;
use crate::resolution::SignedResolution;
use crate::routing::{Action, Routing, RoutingSettings};
use crate::store::{Change, Durability, StoreError};
use crate::tls::{self, TlsError};
use crate::wire::{self, close, Frame};

use router::Router;

/// Tree nodes remembered as proven (about one per envelope): every peer's
/// recent batches. Each holds its proof above it, shared along a path: about
/// 2 MiB in all at usual batch sizes, 18 MiB at most (32-hash proofs).
const VERIFIED_NODES: usize = 16 * 1024;
/// Envelopes waiting for the sealer (a leaf hash and a few links each);
/// when it is full, publishers wait.
const SEALER_QUEUE: usize = 16 * 1024;

/// Why a node could not be loaded, bound or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The nation asked for has no table in the network file.
    #[error("{0} is not a nation of the network file")]
    UnknownNation(Nation),
    /// The certs folder is missing a file or holds a bad one.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A nation's node certificate does not check out against its CA.
    #[error("node certificate of {nation}: {cause}")]
    NodeCertificate {
        /// Whose node certificate.
        nation: Nation,
        /// What is wrong with it.
        cause: IdentityError,
    },
    /// The node key cannot sign.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        cause: std::io::Error,
    },
    /// A node address in the network file does not resolve.
    #[error("cannot resolve the address `{0}` of a node")]
    Address(String),
    /// A CA cannot be made into a trust store.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The record of cut-out nations in the data directory is unreadable.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The custody store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stopped node still held its data folder or its port.
    #[error("the node stopped, but did not let go of its data folder and port within {}s", RELEASE_TIMEOUT.as_secs())]
    NotReleased,
}

/// How long a stopping node's connections may take to drain and its
/// writers to close, after its tasks have ended.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunables of one node. The defaults suit the sample network.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Frames queued for one client session before it counts as a slow
    /// consumer and is disconnected.
    pub session_queue: usize,
    /// Bytes queued for one client session before it counts as a slow
    /// consumer; with `session_queue`, this bounds memory per session.
    pub session_queue_bytes: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Frames one peer's outbox holds (envelopes and seals it has not
    /// acknowledged yet, whether its link is up or down). Nothing ever
    /// waits for room: a message for a full outbox is not kept for that
    /// peer (`outbox-full`), and a live link whose outbox stays full
    /// without an ack for 2 s is cut (`peer-stalled`).
    pub peer_queue: usize,
    /// Bytes one peer's outbox holds (each entry counts for at least 256);
    /// with `peer_queue`, this bounds the memory one peer can hold, up or
    /// down.
    pub peer_queue_bytes: usize,
    /// `sync`: every message this node takes custody of is on disk
    /// (`<data dir>/store.redb`) before it acknowledges it, to the
    /// publisher or to the peer that handed it over, so a crash loses
    /// nothing acknowledged. `memory`: nothing touches the disk.
    pub durability: Durability,
    /// How long a message may wait in an outbox (from its creation)
    /// before it expires, audited (`expired`). Below the replay window
    /// (10 minutes), so what is resent is never refused as stale.
    pub custody_max_age: Duration,
    /// How long a message may wait for a durable subscription (from when
    /// this node took it) before it is dropped, audited
    /// (`durable-expired`).
    pub durable_max_age: Duration,
    /// Bytes one durable subscription may hold waiting (payloads and
    /// their headers): past it, its oldest message is dropped, audited
    /// (`durable-full`). Each waits in memory too, so this with
    /// [`durable::MAX_PER_PRINCIPAL`] bounds what a principal holds.
    pub durable_max_bytes: usize,
    /// How long a new connection may take to open its stream and send
    /// `Hello`, so an idle or slow dialer cannot hold a slot.
    pub first_frame_timeout: Duration,
    /// How long the rest of a frame may take once its first bytes came:
    /// past it, the connection is closed as a protocol violation, so no
    /// one can park a partial frame (up to 1 MiB) for ever. A connection
    /// idle between frames has no deadline: an idle subscriber is fine.
    pub frame_timeout: Duration,
    /// Sessions one principal may hold at once; past it, a new one is
    /// refused (`too-many-sessions`), so one account cannot take every slot.
    pub max_sessions_per_principal: usize,
    /// Inbound connections (sessions and peers' links, handshakes in
    /// progress included) the node holds at once; past it, a new attempt
    /// is refused before any TLS work (`too-many-connections`). Only
    /// attempts from a validated address (after a QUIC retry) count.
    pub max_connections: usize,
    /// Handshakes started per second, on average: attempts past it are
    /// refused before any TLS work (`too-many-handshakes`), so a flood of
    /// attempts costs the node neither signatures nor an audit line each.
    pub handshakes_per_second: u32,
    /// Handshakes that may start back to back after a quiet spell, such as
    /// every client and peer re-connecting after a restart.
    pub handshake_burst: u32,
    /// The longest wait between re-dials of a peer that is down.
    pub max_redial_backoff: Duration,
    /// Test only: see `RoutingSettings::leak_once`.
    #[cfg(feature = "fault-injection")]
    pub leak_once: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Test only: while it holds a cause, the node acts as if its audit
    /// log could not be written (as `Audit::failure` reports it), so the
    /// fail-closed paths can be tested without breaking a file system.
    #[cfg(feature = "fault-injection")]
    pub audit_failure: Option<Arc<Mutex<Option<String>>>>,
    /// Test only: breaks invariant 5 on purpose, so a test can show the
    /// simulator's oracle catches it.
    #[cfg(feature = "fault-injection")]
    pub cut_faults: CutFaults,
    /// Test only: the secret message ids are made under, instead of one
    /// drawn at start, so a test can play a member that knows a partner's
    /// next ids (which invariant 8 otherwise keeps from it).
    #[cfg(feature = "fault-injection")]
    pub id_secret: Option<[u8; 32]>,
}

/// Test only: ways to break invariant 5 on purpose.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, Default)]
pub struct CutFaults {
    /// The node neither keeps nor takes coalition resolutions: restarted,
    /// it has forgotten every cut.
    pub forget_resolutions: bool,
    /// A restored nation's messages from its cut are accepted, and a cut
    /// node keeps holding messages for the partners that cut it.
    pub release_backlog: bool,
}

/// Sessions one principal may hold at once, unless configured otherwise.
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 16;
/// Inbound connections a node holds at once, unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            session_queue: 1024,
            session_queue_bytes: 4 * 1024 * 1024,
            max_subscriptions: 256,
            peer_queue: 256 * 1024,
            peer_queue_bytes: 64 * 1024 * 1024,
            durability: Durability::Sync,
            custody_max_age: Duration::from_secs(5 * 60),
            durable_max_age: Duration::from_secs(24 * 60 * 60),
            durable_max_bytes: 64 * 1024 * 1024,
            first_frame_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            max_sessions_per_principal: DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshakes_per_second: 256,
            handshake_burst: 256,
            max_redial_backoff: Duration::from_secs(5),
            #[cfg(feature = "fault-injection")]
            leak_once: None,
            #[cfg(feature = "fault-injection")]
            audit_failure: None,
            #[cfg(feature = "fault-injection")]
            cut_faults: CutFaults::default(),
            #[cfg(feature = "fault-injection")]
            id_secret: None,
        }
    }
}

/// Everything a node needs to run, loaded from the network file and the
/// certs folder.
pub struct NodeConfig {
    /// The nation this node serves.
    pub nation: Nation,
    /// The validated network file.
    pub policy: Arc<Policy>,
    /// The file or files it came from, which `reload` reads again; `None`
    /// if the policy was built in memory (then reload re-reads only the
    /// CAs and CRLs).
    pub policy_source: Option<PolicySource>,
    /// The certs folder, which `reload` reads again (CAs, CRLs, node
    /// certificates).
    pub layout: PkiLayout,
    /// Every nation's CA and CRL, each CA anchoring only its own nation's
    /// identities.
    pub trust: TrustMaterial,
    /// The node's certificate chain, presented to clients and peers.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key, for TLS.
    pub key: PrivateKeyDer<'static>,
    /// The same key, for seals and announcements.
    pub signer: Signer,
    /// Every nation's node key, to verify the envelopes it signs.
    pub node_keys: HashMap<Nation, Vec<u8>>,
    /// Where the audit log goes.
    pub data_dir: PathBuf,
    /// Peer addresses that override the network file (tests bind port 0).
    pub peer_addresses: BTreeMap<Nation, SocketAddr>,
    /// Queue limits and timeouts.
    pub settings: NodeSettings,
    /// Seals the node's QUIC retry tokens, in every server config it
    /// installs (`tls::new_token_key`).
    pub token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
}

impl NodeConfig {
    /// Loads the node of `nation`: its certificate and key, the trust store
    /// and every nation's node key, each checked against its nation's CA.
    pub fn load(
        nation: Nation,
        policy: Arc<Policy>,
        layout: &PkiLayout,
        data_dir: PathBuf,
    ) -> Result<NodeConfig, NodeError> {
        if policy.nation(nation).is_none() {
            return Err(NodeError::UnknownNation(nation));
        }
        let trust = pki::read_trust_material(&policy, layout)?;
        let node_keys = load_node_keys(nation, &policy, &trust, layout)?;
        let (cert_path, key_path) = layout.cert_and_key(&Identity::Node(nation));
        let cert = pki::read_cert(&cert_path)?;
        let key = pki::read_key(&key_path)?;
        let signer = Signer::from_pkcs8(key.secret_der())?;
        if node_keys.get(&nation).map(Vec::as_slice) != Some(signer.public_key()) {
            return Err(NodeError::NodeCertificate {
                nation,
                cause: IdentityError::Unparsable(format!(
                    "{} does not belong to {}",
                    key_path.display(),
                    cert_path.display()
                )),
            });
        }
        Ok(NodeConfig {
            nation,
            policy,
            policy_source: None,
            layout: layout.clone(),
            trust,
            cert_chain: vec![cert],
            key,
            signer,
            node_keys,
            data_dir,
            peer_addresses: BTreeMap::new(),
            settings: NodeSettings::default(),
            token_key: tls::new_token_key()?,
        })
    }

    /// The node's own address from the network file.
    pub fn listen_address(&self) -> Result<SocketAddr, NodeError> {
        let address = &self.policy.nations()[&self.nation].address;
        resolve(address)
    }
}

/// Every nation's node key, each from a node certificate checked against
/// its own nation's CA and CRL. A revoked node certificate of another
/// nation is left out (that node's seals stop counting) rather than
/// stopping this node; `here`'s own being revoked is an error.
fn load_node_keys(
    here: Nation,
    policy: &Policy,
    material: &TrustMaterial,
    layout: &PkiLayout,
) -> Result<HashMap<Nation, Vec<u8>>, NodeError> {
    if material.missing_cas.contains(&here) {
        return Err(NodeError::NodeCertificate {
            nation: here,
            cause: IdentityError::Unparsable(format!(
                "{} is missing: make this nation's PKI with entente certs init --nation {here}",
                layout.ca_cert(here).display()
            )),
        });
    }
    if let Some(found) = material.mismatched_cas.get(&here) {
        return Err(NodeError::NodeCertificate {
            nation: here,
            cause: IdentityError::Unparsable(format!(
                "{} has the fingerprint {found}, not the one the coalition file pins for {here}",
                layout.ca_cert(here).display()
            )),
        });
    }
    let trust = material.trust_store(&BTreeSet::new())?;
    let mut node_keys = HashMap::new();
    for &other in policy.nations().keys() {
        if material.mismatched_cas.contains_key(&other) {
            warn!(nation = %other, "its CA is not the one the coalition file pins: its seals do not count");
            continue;
        }
        if material.missing_cas.contains(&other) {
            warn!(nation = %other, "no bundle of this nation is imported yet: nothing of it is trusted");
            continue;
        }
        let (cert_path, _) = layout.cert_and_key(&Identity::Node(other));
        let cert = pki::read_cert(&cert_path)?;
        let bad = |cause| NodeError::NodeCertificate { nation: other, cause };
        match trust.identify_client(std::slice::from_ref(&cert), UnixTime::now()) {
            Ok(Identity::Node(n)) if n == other => {}
            Ok(found) => {
                return Err(bad(IdentityError::WrongAnchor {
                    claimed: found,
                    cause: format!("{} is not the node certificate of {other}", cert_path.display()),
                }))
            }
            Err(IdentityError::Revoked(_)) if other != here => {
                warn!(nation = %other, "its node certificate is revoked: its seals no longer count");
                continue;
            }
            Err(err) => return Err(bad(err)),
        }
        node_keys.insert(other, ed25519_public_key(&cert).map_err(bad)?);
    }
    Ok(node_keys)
}

fn resolve(address: &str) -> Result<SocketAddr, NodeError> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| NodeError::Address(address.to_owned()))
}

/// Binds the node's QUIC endpoint. Use port 0 to let the OS choose, then
/// read it back with `Endpoint::local_addr`.
pub fn bind(config: &NodeConfig, addr: SocketAddr) -> Result<NodeEndpoint, NodeError> {
    let bind_error = |cause| NodeError::Bind { addr, cause };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
    let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).map_err(bind_error)?;
    endpoint_on(config, socket)
}

/// The node's QUIC endpoint on a socket of the caller's, such as the
/// simulator's emulated WAN socket.
pub fn endpoint_on(
    config: &NodeConfig,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
) -> Result<NodeEndpoint, NodeError> {
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (socket, socket_released) = release::ReleasingSocket::wrap(socket);
    let endpoint = Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config(config)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|cause| NodeError::Bind { addr, cause })?;
    Ok(NodeEndpoint {
        endpoint,
        socket_released,
    })
}

/// A node's QUIC endpoint, which knows when quinn has let go of its
/// socket (so [`Node::run`] returns only once the port is free).
pub struct NodeEndpoint {
    endpoint: Endpoint,
    socket_released: release::LetGo,
}

impl NodeEndpoint {
    /// The endpoint, for a caller that plays a node itself.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

fn server_config(config: &NodeConfig) -> Result<quinn::ServerConfig, NodeError> {
    let suspended = control::read_local_cuts(&config.data_dir, &config.policy)?.suspended;
    let trust = config.trust.trust_store(&suspended)?;
    Ok(tls::server_config(
        &trust,
        config.cert_chain.clone(),
        config.key.clone_key(),
        config.token_key.clone(),
    )?)
}

/// What a reload or a cut replaces, as one value, so that handshakes,
/// admission, seal checks and routing never see half of a change.
struct Rules {
    /// The network file as loaded, before any cut.
    loaded: Arc<Policy>,
    /// What the node enforces: `loaded` with the cut-out nations removed
    /// from every releasability, community, link and tree.
    policy: Arc<Policy>,
    /// Every CA and CRL, as read.
    material: TrustMaterial,
    /// The CAs trusted now: none of a cut-out nation's.
    trust: TrustStore,
    /// Every nation's node key, as read, and its tag key.
    all_node_keys: Arc<PeerKeys>,
    /// The node keys whose seals count now: none of a cut-out nation's.
    node_keys: Arc<HashMap<Nation, Vec<u8>>>,
    /// The tag keys this node shares with the nations of `node_keys`.
    tag_keys: Arc<TagKeys>,
    /// What `admin status` shows: the policy's digest with the CAs and
    /// CRLs, so a node that has not applied a revocation stands out too.
    digest: String,
    /// Each restored nation, with when its restore took effect.
    restored: BTreeMap<Nation, u64>,
}

/// Every nation's node key, as read, and the tag key this node shares
/// with each: worked out once per key (a Diffie-Hellman each), not again
/// at every cut and restore.
struct PeerKeys {
    node: HashMap<Nation, Vec<u8>>,
    tags: TagKeys,
}

impl PeerKeys {
    fn new(node: HashMap<Nation, Vec<u8>>, signer: &Signer) -> PeerKeys {
        let tags = signer.tag_keys(&node);
        PeerKeys { node, tags }
    }
}

impl Rules {
    fn new(
        loaded: Arc<Policy>,
        material: TrustMaterial,
        all_node_keys: Arc<PeerKeys>,
        cuts: &control::Cuts,
    ) -> Result<Rules, NodeError> {
        let suspended = &cuts.suspended;
        let trust = material.trust_store(suspended)?;
        let node_keys: HashMap<Nation, Vec<u8>> = all_node_keys
            .node
            .iter()
            .filter(|(nation, _)| !suspended.contains(nation))
            .map(|(&nation, key)| (nation, key.clone()))
            .collect();
        let tag_keys: TagKeys = all_node_keys
            .tags
            .iter()
            .filter(|(nation, _)| !suspended.contains(nation))
            .map(|(&nation, key)| (nation, key.clone()))
            .collect();
        let tag_keys = Arc::new(tag_keys);
        let policy = Arc::new(loaded.with_suspended(suspended));
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(policy.digest().as_bytes());
        for ca in material.cas.values() {
            context.update(ca.as_ref());
        }
        for crl in &material.crls {
            context.update(crl.as_ref());
        }
        let digest = crate::policy::short_hex(context.finish());
        Ok(Rules {
            digest,
            policy,
            loaded,
            material,
            trust,
            all_node_keys,
            node_keys: Arc::new(node_keys),
            tag_keys,
            restored: cuts.restored.clone(),
        })
    }

    /// Whether this node links to `peer` under these rules.
    fn links_to(&self, here: Nation, peer: Nation) -> bool {
        self.policy
            .nation(here)
            .is_some_and(|table| table.peers.contains(&peer))
    }
}

/// State shared by every task of one node.
struct Shared {
    nation: Nation,
    /// Replaced whole by reload, cut and restore; read with `rules()`.
    rules: RwLock<Arc<Rules>>,
    /// Bumped on every change of `rules`, so dialers of peers that were
    /// not linked to (or cut out) look again.
    rules_changed: watch::Sender<u64>,
    /// One admin change at a time: a reload and a cut must not each
    /// apply to the rules the other replaced.
    admin_changes: tokio::sync::Mutex<()>,
    policy_source: Option<PolicySource>,
    layout: PkiLayout,
    data_dir: PathBuf,
    started: std::time::Instant,
    /// The nations a dialer task runs for.
    dialers: Mutex<BTreeSet<Nation>>,
    /// Wakes a peer's dialer from its backoff: the peer just dialed this
    /// node, so it is up, and its link from here need not wait (what this
    /// node floods, resolutions first, goes on that link).
    dialer_wake: dashmap::DashMap<Nation, Arc<tokio::sync::Notify>>,
    /// Each peer's budget of refused resolution signatures.
    refused_resolutions: dashmap::DashMap<Nation, resolutions::RefusedBudget>,
    /// Woken when a reload may have added peers: the accept loop starts
    /// their dialers among its own tasks, so they are joined and their
    /// panics reported like the rest.
    peers_added: tokio::sync::Notify,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    signer: Arc<Signer>,
    ids: MessageIds,
    verifier: Mutex<Verifier>,
    /// Envelopes the links carried unsealed, for the sealer task.
    sealer: mpsc::Sender<sealer::ToSeal>,
    /// Resolutions peers flooded back on this node's links, for
    /// [`resolutions::take_returned`].
    returned_resolutions: mpsc::Sender<(Nation, SignedResolution)>,
    peer_addresses: BTreeMap<Nation, SocketAddr>,
    settings: NodeSettings,
    audit: Audit,
    /// Whether the audit log was failing when last looked at, so that the
    /// start and the end of a failure are each logged once.
    audit_failing: AtomicBool,
    router: Router,
    /// Every peer's outbox, and the store behind them.
    custody: custody::Custody,
    /// Peers that cut this nation out (they closed its link as no longer
    /// admitted, refused its certificate, or a resolution in force cuts
    /// it): nothing is held for them until a link to them comes up again.
    cut_by: RwLock<BTreeSet<Nation>>,
    /// The coalition's resolutions; locked for one call, never across an
    /// `.await`.
    resolutions: Mutex<crate::resolution::ResolutionLog>,
    /// Bumped on every change of the log, which
    /// [`resolutions::write_forever`] then writes.
    log_changed: watch::Sender<u64>,
    /// Sessions held per principal, for `max_sessions_per_principal`.
    principal_sessions: Arc<dashmap::DashMap<String, usize>>,
    /// Every durable subscription, and what waits for it.
    durables: durable::Durables,
    endpoint: Endpoint,
    shutdown: watch::Receiver<bool>,
    /// Last, so it drops after the audit writer and the store handles.
    _held: release::Holding,
}

impl Shared {
    /// The rules in force now. The lock is held only to clone the `Arc`.
    fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether `rules` are still the ones in force (no clone: this is
    /// asked once per seal).
    fn rules_are(&self, rules: &Arc<Rules>) -> bool {
        Arc::ptr_eq(rules, &self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The seal verifier, locked: for one call, never across an `.await`.
    fn verifier(&self) -> std::sync::MutexGuard<'_, Verifier> {
        self.verifier.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a dialer for each peer of the rules that has none yet (a
    /// reload may add peers). A dialer runs until shutdown, idle while
    /// its peer is not linked to.
    fn spawn_dialers(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let rules = self.rules();
        let Some(table) = rules.loaded.nation(self.nation) else {
            return;
        };
        let mut running = self.dialers.lock().unwrap_or_else(PoisonError::into_inner);
        let new: Vec<Nation> = table
            .peers
            .iter()
            .copied()
            .filter(|peer| running.insert(*peer))
            .collect();
        drop(running);
        for peer in new {
            let shared = self.clone();
            tasks.spawn(
                async move { outbound::dial_forever(shared, peer).await }
                    .instrument(info_span!("link", to = %peer)),
            );
        }
    }

    async fn audit(&self, record: Record) {
        self.audit.record(record).await;
    }

    /// Hands `frame` to `peer`'s outbox, never waiting: `Ok` with the
    /// reason to record (`policy-allows` on a live link, `held` while the
    /// link is down), or why the peer does not get it (`outbox-full`).
    /// `bounded` is false for seals, which follow envelopes already taken.
    fn hand_over(
        &self,
        peer: Nation,
        frame: Bytes,
        queued_us: u64,
        bounded: bool,
        changes: &mut Vec<Change>,
    ) -> Result<Reason, Reason> {
        if self.is_cut_by(peer) {
            return Err(Reason::CutBy);
        }
        let linked = self.router.has_link(peer);
        match self.custody.hand_over(peer, frame, queued_us, bounded, changes) {
            Ok(()) if linked => Ok(Reason::PolicyAllows),
            Ok(()) => Ok(Reason::Held),
            // The ticker cuts a live link whose outbox stays full (see
            // `cut_stalled_links`).
            Err(outbox::Full) => Err(Reason::OutboxFull),
        }
    }

    /// Whether `peer` cut this nation out (see `cut_by`).
    fn is_cut_by(&self, peer: Nation) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.settings.cut_faults.release_backlog {
            return false;
        }
        self.cut_by
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer)
    }

    /// Test only: whether this node forgets coalition resolutions.
    fn forgets_resolutions(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.settings.cut_faults.forget_resolutions;
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// `peer` cut this nation out, as `how` says: what is held for it is
    /// purged (audited `cut-by`) and nothing more is held for it, so
    /// nothing published meanwhile goes to it when it takes this nation
    /// back. Its dialer keeps trying.
    async fn cut_out_by(&self, peer: Nation, how: &str) {
        if !self
            .cut_by
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer)
        {
            return;
        }
        warn!(%peer, how, "the peer cut this nation out; nothing more is held for it");
        let purged = control::purge_for(self, &self.rules(), peer, Reason::CutBy).await;
        self.audit(
            Record::new(Event::Disconnect, Verdict::Deny, Reason::CutBy.code())
                .subject(peer)
                .detail(format!(
                    "{peer} cut this nation out ({how}); {purged} message(s) held for it were purged, \
                     and nothing more is held for it until it links again"
                )),
        )
        .await;
    }

    /// What wakes `peer`'s dialer.
    fn dialer_wake(&self, peer: Nation) -> Arc<tokio::sync::Notify> {
        self.dialer_wake.entry(peer).or_default().clone()
    }

    /// A link with `peer` came up: it takes this nation again.
    fn linked_again(&self, peer: Nation) {
        if self
            .cut_by
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer)
        {
            info!(%peer, "the peer takes this nation again");
        }
    }

    /// Why the audit log cannot be written now, if it cannot. While it
    /// cannot, the node fails closed: it refuses new publishes and
    /// subscriptions (`audit-unavailable`) and takes nothing from peers,
    /// since every message it takes leads to release decisions it could
    /// not record (invariant 7). One call per batch of frames, not per
    /// frame. The start and the end of a failure are logged once each.
    fn audit_failure(&self) -> Option<String> {
        let failure = self.injected_audit_failure().or_else(|| self.audit.failure());
        let failing = failure.is_some();
        if self.audit_failing.load(Ordering::Relaxed) != failing
            && self.audit_failing.swap(failing, Ordering::Relaxed) != failing
        {
            match &failure {
                Some(cause) => warn!(
                    %cause,
                    "the audit log cannot be written: refusing publishes, subscriptions and peers' messages until it can"
                ),
                None => info!(
                    "the audit log is written again: accepting publishes, subscriptions and peers' messages"
                ),
            }
        }
        failure
    }

    #[cfg(feature = "fault-injection")]
    fn injected_audit_failure(&self) -> Option<String> {
        self.settings
            .audit_failure
            .as_ref()
            .and_then(|cause| cause.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    #[cfg(not(feature = "fault-injection"))]
    fn injected_audit_failure(&self) -> Option<String> {
        None
    }

    /// Carries out what the routing core decided: audit records, and
    /// announcements queued on the links they go to.
    async fn carry_out(&self, actions: Vec<Action>) {
        for record in self.announce(actions) {
            self.audit(record).await;
        }
    }

    /// Sends the core's announcements and hands back its records, for a
    /// caller that must write them after the records of what caused them
    /// (a message's `publish` or `admit` before the core's refusals to
    /// deliver it).
    fn announce(&self, actions: Vec<Action>) -> Vec<Record> {
        let mut records = Vec::new();
        for action in actions {
            match action {
                Action::Audit(record) => records.push(record),
                Action::Announce { to, announcement } => {
                    let frame = match wire::encode(&Frame::Announce((*announcement).clone())) {
                        Ok(frame) => Bytes::from(frame),
                        Err(err) => {
                            warn!(cause = %err, "cannot encode an announcement");
                            continue;
                        }
                    };
                    for target in self.router.targets(&to) {
                        // Offered, never awaited: the ticker and every link
                        // reader carry announcements out, so waiting on one
                        // peer's full queue would stall them for everyone.
                        // A peer whose queue is full reads nothing: the 30 s
                        // refresh repairs what it missed, and a link that
                        // returns gets everything again.
                        if target.queue.offer(frame.clone()).is_err() {
                            warn!(to = %target.nation, "link queue full: an announcement was not sent");
                        }
                    }
                }
            }
        }
        records
    }
}

/// Lets the tasks this one woke (session and link writers), then the
/// connection drivers they wake in turn, send what they were handed before
/// this task goes on with what can wait: on the node's one thread, each
/// yield lets the tasks queued before it run.
async fn let_writers_send() {
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
}

/// Offers the thread's CPU, once the writers have sent a batch of at most
/// [`FEW`] messages, to whatever waits for it. A process the sends just
/// woke (a client beside its node, the next node where several share a
/// host) is often queued behind this thread, which would otherwise go on
/// with bookkeeping first. Under load, batches are larger and every
/// process is busy, so the offer would only add context switches.
fn offer_cpu(messages: usize) {
    if messages <= FEW {
        std::thread::yield_now();
    }
}

/// The most messages in a batch after which [`offer_cpu`] offers the
/// thread's CPU.
const FEW: usize = 4;

/// Ticks the routing core (announcements due, ids and announcements that
/// expire) and carries out deferred actions, until shutdown.
async fn tick_forever(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut housekeeping: Option<tokio::time::Instant> = None;
    loop {
        if housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
            housekeeping = Some(tokio::time::Instant::now());
            store_announcements(&shared);
            cut_stalled_links(&shared).await;
            expire_held(&shared).await;
        }
        let (next_us, actions) = shared.router.core(|core, now| {
            core.tick(now);
            core.next_tick_us().saturating_sub(now)
        });
        shared.carry_out(actions).await;
        shared.carry_out(shared.router.take_deferred()).await;
        // So that a failing audit log is reported (and its recovery) even
        // while no traffic looks at it.
        shared.audit_failure();
        // At least once a second, so ids and announcements expire on time.
        let wait = Duration::from_micros(next_us.clamp(1_000, 1_000_000));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.router.deferred_ready() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the ticker stores the others' announcements, cuts stalled
/// links and expires what was held too long. Announcements are stored on
/// this timer rather than as they come, so a member that signs them as
/// fast as it can costs the store nothing more.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// How long a live link whose outbox is full may go without progress (an
/// ack) before it is cut as stalled: a link that came back to a backlog
/// has this long to start draining it.
const STALL_PATIENCE_US: u64 = 2_000_000;

/// Cuts each live link whose outbox is full and has made no progress for
/// [`STALL_PATIENCE_US`]: its peer does not keep up (see
/// [`router::PeerTarget::cut_stalled`]). What the outbox holds stays for
/// the next link.
async fn cut_stalled_links(shared: &Shared) {
    let now = now_us();
    let limit = format!(
        "{} frames or {} bytes",
        shared.settings.peer_queue, shared.settings.peer_queue_bytes
    );
    let mut records = Vec::new();
    for peer in shared.custody.peers() {
        if shared.custody.outbox(peer).stalled(now, STALL_PATIENCE_US) {
            if let Some(target) = shared.router.target(peer) {
                target.cut_stalled(&limit, &mut records);
            }
        }
    }
    for record in records {
        shared.audit(record).await;
    }
}

/// Stores the newest announcement of each other nation (without waiting:
/// one lost in a crash is heard again within 30 s).
fn store_announcements(shared: &Shared) {
    if !shared.custody.durable() {
        return;
    }
    let (held, _) = shared.router.core(|core, _| core.announcements());
    let changes = held
        .into_iter()
        .filter_map(|signed| {
            let frame = wire::encode(&Frame::Announce((*signed).clone())).ok()?;
            Some(Change::Announcement {
                nation: signed.announcement.nation,
                frame: Bytes::from(frame),
            })
        })
        .collect();
    shared.custody.write_later(changes);
}

/// Takes out of every outbox what has waited past the age limit (from
/// its creation), each message audited as `expired`: a peer that stays
/// away does not hold memory, or get stale messages, for ever. And lets
/// the store forget the ids past the replay window.
async fn expire_held(shared: &Shared) {
    let now = now_us();
    shared.custody.write_later(vec![Change::ForgetSeenBefore(
        now.saturating_sub(crate::routing::seen::MAX_AGE_US),
    )]);
    let max_age = u64::try_from(shared.settings.custody_max_age.as_micros()).unwrap_or(u64::MAX);
    let before_us = now.saturating_sub(max_age);
    for peer in shared.custody.peers() {
        let expired = shared.custody.outbox(peer).expire(before_us);
        let Some(last) = expired.last().map(|entry| entry.seq) else {
            continue;
        };
        let rules = shared.rules();
        let mut count = 0;
        for envelope in custody::envelopes(expired.into_iter().map(|entry| entry.frame)) {
            count += 1;
            let marking = rules.policy.scheme().format(&envelope.label);
            shared
                .audit(
                    Record::new(Event::Drop, Verdict::Deny, Reason::Expired.code())
                        .message(&envelope, &marking)
                        .subject(peer)
                        .detail(format!(
                            "held for {peer} longer than {:?} since it was created; expired, never sent",
                            shared.settings.custody_max_age
                        )),
                )
                .await;
        }
        warn!(%peer, count, "messages held too long for a peer expired");
        shared
            .custody
            .write_later(vec![Change::Forget { peer, through: last }]);
    }
}

/// Runs a node on `endpoint` until `shutdown` completes, then closes every
/// connection and flushes the audit log.
pub async fn run(
    config: NodeConfig,
    endpoint: NodeEndpoint,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    Node::start(config, endpoint)?.run(shutdown).await
}

/// A node that is set up but not yet serving: take its [`NodeControl`]
/// (for reload, cut and restore as library calls), then [`Node::run`] it.
pub struct Node {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    to_seal: mpsc::Receiver<sealer::ToSeal>,
    /// Envelopes a restarted node's outboxes hold without their seals (a
    /// crash came between them): sealed again once the sealer runs.
    reseal: Vec<sealer::ToSeal>,
    returned: mpsc::Receiver<(Nation, SignedResolution)>,
    released: Released,
}

/// Says when a node, stopped or crashed (its task aborted), has let go of
/// what another node started in its place would need.
#[derive(Debug, Clone)]
pub struct Released {
    /// Its shared state, whose drop closes the audit writer.
    shared: release::LetGo,
    store: Option<release::LetGo>,
    socket: release::LetGo,
}

impl Released {
    /// Once its data folder is free: the audit log written and closed,
    /// the custody store closed (its file lock released).
    pub async fn data(self) {
        self.shared.wait().await;
        if let Some(store) = self.store {
            store.wait().await;
        }
    }

    /// Once its data folder and its UDP port are free.
    pub async fn all(self) {
        let socket = self.socket.clone();
        self.data().await;
        socket.wait().await;
    }
}

impl Node {
    /// Sets the node up on `endpoint`: its audit log, its routing core, and
    /// the nations its data directory records as cut out.
    pub fn start(config: NodeConfig, endpoint: NodeEndpoint) -> Result<Node, NodeError> {
        // This node's own cuts, and the coalition's resolutions it kept
        // (their signers checked under every CA but those it cut).
        let local = control::read_local_cuts(&config.data_dir, &config.policy)?;
        #[cfg(feature = "fault-injection")]
        let forget = config.settings.cut_faults.forget_resolutions;
        #[cfg(not(feature = "fault-injection"))]
        let forget = false;
        let resolutions = if forget {
            crate::resolution::ResolutionLog::new(
                config.policy.nations().keys().copied().collect(),
                config.policy.quorum(),
            )
        } else {
            resolutions::load(
                &config.data_dir,
                &config.policy,
                &config.trust.trust_store(&local.suspended)?,
            )?
        };
        let cuts = local.and(&resolutions::enforced_cuts(&resolutions, config.nation));
        // A node whose nation the coalition cut holds nothing for anyone,
        // across a restart too, until its links return.
        let cut_by: BTreeSet<Nation> = if resolutions.cut_out().contains(&config.nation) {
            config
                .policy
                .nation(config.nation)
                .map(|table| table.peers.iter().copied().collect())
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        let rules = Rules::new(
            config.policy.clone(),
            config.trust,
            Arc::new(PeerKeys::new(config.node_keys, &config.signer)),
            &cuts,
        )?;
        // The endpoint was bound with this node's own cuts only.
        endpoint.endpoint.set_server_config(Some(tls::server_config(
            &rules.trust,
            config.cert_chain.clone(),
            config.key.clone_key(),
            config.token_key.clone(),
        )?));
        let audit = Audit::open(&config.data_dir, config.nation)?;
        let (stop, stopped) = watch::channel(false);
        let (sealer, to_seal) = mpsc::channel(SEALER_QUEUE);
        let (returned_resolutions, returned) = mpsc::channel(resolutions::RETURNED_QUEUE);
        let mut id_secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id_secret).map_err(|_| {
            NodeError::Envelope(EnvelopeError::BadKey(
                "no system randomness for message ids".into(),
            ))
        })?;
        #[cfg(feature = "fault-injection")]
        if let Some(secret) = config.settings.id_secret {
            id_secret = secret;
        }
        let signer = Arc::new(config.signer);
        let settings = &config.settings;
        let now = now_us();
        let custody::Loaded {
            custody,
            seen,
            seen_floors,
            announcements,
            durables,
            store_released,
        } = custody::Custody::open(
            &config.data_dir,
            settings.durability,
            (settings.peer_queue, settings.peer_queue_bytes),
            now.saturating_sub(crate::routing::seen::MAX_AGE_US),
        )?;
        let reseal = custody.unsealed();
        let mut routing = Routing::new(
            config.nation,
            rules.policy.clone(),
            signer.clone(),
            rules.node_keys.clone(),
            RoutingSettings {
                max_subscriptions: config.settings.max_subscriptions,
                #[cfg(feature = "fault-injection")]
                leak_once: config.settings.leak_once.clone(),
                #[cfg(feature = "fault-injection")]
                release_cut_backlog: config.settings.cut_faults.release_backlog,
                ..RoutingSettings::default()
            },
        );
        routing.set_restored(rules.restored.clone());
        // A restarted node knows what it took before, so the resends that
        // follow are duplicates.
        for (origin, floor_us) in seen_floors {
            routing.remember_floor(origin, floor_us);
        }
        for id in seen {
            routing.remember(id.origin, id.id, id.created_us, now);
        }
        // And what the others announced, so that what peers resend to it
        // can be relayed before they announce again. Each is checked as
        // if it had just come (signature, nation, time).
        for frame in announcements {
            if let Some(Ok(Frame::Announce(signed))) = frame.get(wire::LENGTH_PREFIX..).map(wire::decode) {
                // Its sequence number is its signing time: one older than
                // an announcement lives would be forgotten by now.
                if signed
                    .announcement
                    .seq
                    .saturating_add(crate::routing::ANNOUNCEMENT_TTL_US)
                    > now
                {
                    let _ = routing.receive_announcement(config.nation, signed, now);
                }
            }
        }
        // The records of loading them say nothing new.
        while routing.poll().is_some() {}
        let (held, shared_released) = release::holding();
        let released = Released {
            shared: shared_released,
            store: store_released,
            socket: endpoint.socket_released,
        };
        let durable_limits = durable::Limits::new(&config.settings);
        let shared = Arc::new(Shared {
            nation: config.nation,
            router: Router::new(routing),
            rules: RwLock::new(Arc::new(rules)),
            rules_changed: watch::channel(0).0,
            admin_changes: tokio::sync::Mutex::new(()),
            policy_source: config.policy_source,
            layout: config.layout,
            data_dir: config.data_dir,
            started: std::time::Instant::now(),
            dialers: Mutex::default(),
            dialer_wake: dashmap::DashMap::new(),
            refused_resolutions: dashmap::DashMap::new(),
            peers_added: tokio::sync::Notify::new(),
            cert_chain: config.cert_chain,
            key: config.key,
            token_key: config.token_key,
            signer,
            ids: MessageIds::new(id_secret),
            verifier: Mutex::new(Verifier::new(VERIFIED_NODES)),
            sealer,
            returned_resolutions,
            peer_addresses: config.peer_addresses,
            settings: config.settings,
            audit,
            audit_failing: AtomicBool::new(false),
            custody,
            resolutions: Mutex::new(resolutions),
            log_changed: watch::Sender::new(0),
            cut_by: RwLock::new(cut_by),
            principal_sessions: Arc::default(),
            durables: durable::Durables::new(durable_limits),
            endpoint: endpoint.endpoint,
            shutdown: stopped,
            _held: held,
        });
        durable::restore(&shared, durables);
        Ok(Node {
            shared,
            stop,
            to_seal,
            reseal,
            returned,
            released,
        })
    }

    /// Says when this node has let go of its data folder and its port,
    /// for a caller that aborts its task rather than stopping it.
    pub fn released(&self) -> Released {
        self.released.clone()
    }

    /// The handle that runs admin commands on this node.
    pub fn control(&self) -> NodeControl {
        NodeControl::new(&self.shared)
    }

    /// Serves until `shutdown` completes, then closes every connection
    /// and returns once the audit log is written and closed, the custody
    /// store closed and the UDP port free: a node can be started again on
    /// the same folder and address as soon as this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let Node {
            shared,
            stop,
            to_seal,
            reseal,
            returned,
            released,
        } = self;
        serve(shared, stop, to_seal, reseal, returned, shutdown).await;
        // Every task that held the shared state has ended, and with it
        // the last handles to the store, the audit writer and the
        // endpoint; what is left is quinn's connection drivers draining.
        tokio::time::timeout(RELEASE_TIMEOUT, released.all())
            .await
            .map_err(|_| NodeError::NotReleased)
    }
}

async fn serve(
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    to_seal: mpsc::Receiver<sealer::ToSeal>,
    reseal: Vec<sealer::ToSeal>,
    returned: mpsc::Receiver<(Nation, SignedResolution)>,
    shutdown: impl Future<Output = ()>,
) {
    let endpoint = shared.endpoint.clone();
    info!(nation = %shared.nation, addr = ?endpoint.local_addr().ok(), "node running");
    control::audit_trust_problems(&shared, &shared.rules()).await;
    let mut tasks = JoinSet::new();
    tasks.spawn(sealer::seal_forever(shared.clone(), to_seal));
    if !reseal.is_empty() {
        info!(
            count = reseal.len(),
            "sealing again what the outboxes held unsealed"
        );
        let sealer = shared.sealer.clone();
        tasks.spawn(async move {
            for to_seal in reseal {
                if sealer.send(to_seal).await.is_err() {
                    return;
                }
            }
        });
    }
    tasks.spawn(tick_forever(shared.clone()));
    tasks.spawn(durable::pump_forever(shared.clone()));
    tasks.spawn(resolutions::take_returned(shared.clone(), returned));
    tasks.spawn(resolutions::write_forever(shared.clone()));
    shared.spawn_dialers(&mut tasks);

    let settings = &shared.settings;
    let mut gate = admission::Gate::new(
        settings.max_connections,
        settings.handshakes_per_second,
        settings.handshake_burst,
        std::time::Instant::now(),
    );
    let mut report = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    // An attempt whose source address is not proven yet
                    // gets a stateless retry before it may take a token or
                    // a slot: the node keeps nothing for it, and only a
                    // dialer that receives at the address it claims comes
                    // back, so spoofed sources cannot spend the handshake
                    // bucket or hold `max_connections`. Always, not only
                    // under pressure: it costs one round trip at connection
                    // setup only, and there is no threshold to tune or get
                    // wrong. `retry` may only fail for an attempt that
                    // already answered one; should it fail, the attempt
                    // goes on to the gate rather than being dropped.
                    let incoming = if incoming.remote_address_validated() {
                        incoming
                    } else {
                        match incoming.retry() {
                            Ok(()) => continue,
                            Err(err) => err.into_incoming(),
                        }
                    };
                    let now = std::time::Instant::now();
                    match gate.admit(now) {
                        Ok(slot) => {
                            let shared = shared.clone();
                            tasks.spawn(async move { admission::accept(shared, incoming, slot).await });
                        }
                        Err(reason) => {
                            let remote = incoming.remote_address();
                            incoming.refuse();
                            if let Some(record) = gate.refused(reason, remote, now) {
                                warn!(%remote, %reason, "connection attempt refused before TLS");
                                shared.audit(record).await;
                            }
                        }
                    }
                }
                None => break,
            },
            _ = report.tick() => {
                for record in gate.overdue(std::time::Instant::now()) {
                    shared.audit(record).await;
                }
            }
            // Reap finished connection tasks so the set stays small.
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_task_end(&shared, joined).await,
            () = shared.peers_added.notified() => shared.spawn_dialers(&mut tasks),
        }
    }
    for record in gate.overdue(std::time::Instant::now() + Duration::from_secs(1)) {
        shared.audit(record).await;
    }

    info!(nation = %shared.nation, "node shutting down");
    let _ = stop.send(true);
    endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"node shutting down");
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            report_task_end(&shared, joined).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        // Whatever they hold (the store, the audit log) must still be let
        // go of before the node counts as stopped.
        warn!(
            count = tasks.len(),
            "some connection tasks did not stop in time; aborting them"
        );
        tasks.shutdown().await;
    }
}

/// Reports a node task (a connection's reader, a dialer, the sealer or
/// the ticker) that panicked: logged and audited, not swallowed.
async fn report_task_end(shared: &Shared, joined: Result<(), tokio::task::JoinError>) {
    let Err(err) = joined else { return };
    if !err.is_panic() {
        return;
    }
    tracing::error!(cause = %err, "a node task panicked");
    shared
        .audit(
            Record::new(Event::Disconnect, Verdict::Deny, Reason::TaskPanicked.code()).detail(format!(
                "a node task panicked ({err}); its connection, if it had one, is gone"
            )),
        )
        .await;
}

/// Runs every node of the network in this process, each on its address
/// from the network file (`entente up`). Creates the PKI first if the
/// certs folder has none. `on_ready` gets each nation, its address and its
/// admin handle once all are bound. Each node reloads from `network_file`.
pub async fn run_network(
    policy: Arc<Policy>,
    network_file: Option<&std::path::Path>,
    layout: &PkiLayout,
    data_root: &std::path::Path,
    on_ready: impl FnOnce(&[(Nation, SocketAddr, NodeControl)]),
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    if !layout.exists_for(&policy) {
        info!(certs = %layout.root().display(), "no PKI yet; generating one");
        pki::generate(&policy, layout, false)?;
    }
    // A certs folder from before principals were added (such as the
    // admins) gets their certificates, so `entente admin` works at once.
    for identity in pki::issue_missing(&policy, layout)? {
        info!(%identity, "issued a certificate for a principal that had none");
    }
    let mut nodes = Vec::new();
    let mut ready = Vec::new();
    for &nation in policy.nations().keys() {
        let mut config = NodeConfig::load(nation, policy.clone(), layout, data_root.join(nation.as_str()))?;
        config.policy_source = network_file.map(|path| PolicySource::Network(path.to_owned()));
        let addr = config.listen_address()?;
        let endpoint = bind(&config, addr)?;
        let node = Node::start(config, endpoint)?;
        ready.push((nation, addr, node.control()));
        nodes.push(node);
    }
    on_ready(&ready);
    let (stop, stopped) = watch::channel(false);
    let mut running = JoinSet::new();
    for node in nodes {
        let mut stopped = stopped.clone();
        running.spawn(node.run(async move {
            let _ = stopped.changed().await;
        }));
    }
    shutdown.await;
    let _ = stop.send(true);
    let mut result = Ok(());
    while let Some(joined) = running.join_next().await {
        if let Ok(Err(err)) = joined {
            result = Err(err);
        }
    }
    result
}
