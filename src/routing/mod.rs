//! The sans-IO routing core of one node: its local subscriptions, every
//! nation's announced links and interest, which of its own links are up,
//! the ids it has seen, and the delivery trees. Events go in through
//! methods (a session subscribes, a link comes up, an announcement or an
//! envelope arrives, a tick passes); decisions come back as a [`Route`]
//! for an envelope, and as [`Action`]s (announcements to send, audit
//! records) taken with [`Routing::poll`]. No sockets, no clock, no locks:
//! the caller passes `now` in, so the node, the simulator and the tests
//! drive the same code, each with its own clock.
//!
//! Delivery trees (ARCHITECTURE.md, "Federation"): for an envelope from origin
//! O with label L on topic T, the eligible nations E are O and those L may
//! be forwarded to from O (invariant 2); the targets are the nations of E
//! interested in T; the tree is the union of the shortest paths from O to
//! each target over live links between nations of E only, ties going to
//! the lower nation code. Every node computes the same tree from the same
//! announcements and forwards only to its children in it, so a relay never
//! carries what it may not see, a link carries a message at most once,
//! and nothing crosses a link with no interest behind it.
//!
//! Held links (custody): a link that leaves the live picture because it
//! went down (this node's own, or one a nation stopped announcing) is
//! held for [`RoutingSettings::hold_us`], since the node keeps a per-peer
//! outbox that outlives an outage. Targets the live tree misses are routed
//! through a fallback tree, the same shortest paths over live and held
//! links together between nations of E: a child in it that leads to such a
//! target is listed in [`Route::held`] if its link is down (the copy waits
//! in that peer's outbox) and in [`Route::forward`] if it is up. A link
//! that comes back moves from held to live, so the fallback tree stays as
//! it was while the outage's links are held: a relay that gets a held copy
//! once the outage ends passes it on the way the origin chose (a tree
//! grown from the live one would change as links return, and lose or
//! repeat copies). Only what neither tree reaches is `no-route` or
//! `unreachable` at the origin. A policy change holds nothing (what it
//! removes is gone on purpose) and drops held links it no longer
//! configures, so nothing is held for a cut nation.

pub mod announce;
pub mod seen;
pub mod tree;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::audit::{Event, Record, Verdict};
use crate::envelope::{Envelope, MessageId, Signer};
use crate::label::{quoted, Label, LabelError, Nation};
use crate::policy::{Decision, Policy, Principal};
use crate::topic::{Pattern, Topic};
use crate::wire;

use announce::{Announcement, AnnouncementError, Paced, SignedAnnouncement, MAX_ANNOUNCED_PATTERNS};
use seen::{SeenIds, Unseen};
use tree::{Branch, Graph, NationSet, Nations, PathTree};

pub use tree::MAX_NATIONS;

/// A client session of this node, as the I/O layer numbers it.
pub type SessionId = u64;

/// How often a node re-announces itself when nothing changes.
pub const REFRESH_US: u64 = 30 * 1_000_000;
/// An announcement not refreshed for this long is forgotten: its node
/// is gone, and so are its links and its interest.
pub const ANNOUNCEMENT_TTL_US: u64 = 3 * REFRESH_US + 5 * 1_000_000;
/// The shortest time between two announcements of this node's own; a
/// burst of subscriptions becomes one announcement.
pub const ANNOUNCE_INTERVAL_US: u64 = 20_000;
/// The most distinct patterns whose pairwise coverage is worked out
/// before announcing them.
const REDUCE_PATTERNS: usize = 256;
/// How long a link that went down is held by default: an outage of a few
/// minutes (a restart, a network blip) loses nothing.
pub const DEFAULT_HOLD_US: u64 = 5 * 60 * 1_000_000;
/// Trees kept at most; the cache is cleared when it fills (each tree is a
/// few hundred bytes, and the set of labels in use is small).
const TREE_CACHE: usize = 4096;

/// What an `announcement` audit record lists for no links or no patterns:
/// with its space, it can be neither a nation nor a pattern.
pub const NOTHING: &str = "no entries";

/// The longest pattern list an `announcement` record spells out. A longer
/// one is recorded as its count and a digest, so that a record stays small
/// whatever a member announces.
pub const LISTED_INTEREST_MAX: usize = 256;

/// What an `announcement` record says of one: `links: A, B; interest: p, q`,
/// or for a long list `interest: (1024 patterns, digest sha256:…)`.
fn announcement_detail(announcement: &Announcement) -> String {
    let links: Vec<&str> = announcement.links.iter().map(Nation::as_str).collect();
    let patterns: Vec<&str> = announcement.patterns.iter().map(Pattern::as_str).collect();
    let listed = patterns.join(", ");
    let interest = if patterns.is_empty() {
        NOTHING.to_owned()
    } else if listed.len() <= LISTED_INTEREST_MAX {
        listed
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, patterns.join("\n").as_bytes());
        let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("({} patterns, digest sha256:{hex})", patterns.len())
    };
    let links = if links.is_empty() {
        NOTHING.to_owned()
    } else {
        links.join(", ")
    };
    format!("links: {links}; interest: {interest}")
}

/// A stable reason code of the routing core, for audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The same origin and id arrived before.
    Duplicate,
    /// Older than the age limit (or than the ids this node still holds).
    Stale,
    /// Timed too far in the future.
    FromTheFuture,
    /// The origin is not a nation of the network.
    UnknownOrigin,
    /// A relayed envelope came without a seal.
    UnsealedRelay,
    /// The link peer may not hold this message itself.
    IneligibleRelay,
    /// The publisher's name is not of the form of a principal of the
    /// origin nation.
    UnknownPublisher,
    /// The label is not canonical under the network's marking scheme.
    MalformedLabel,
    /// The payload is over [`wire::MAX_PAYLOAD`].
    PayloadTooLarge,
    /// An announcement that is forged, malformed or from an unknown nation.
    BadAnnouncement,
    /// An interested, eligible nation that no path of eligible nations
    /// reaches, even over every configured link.
    Unreachable,
    /// An interested, eligible nation cut off only because links are down.
    NoRoute,
    /// A nation's links or interest changed.
    Announcement,
    /// A nation announced faster than its pace: held back.
    AnnouncementRate,
    /// An origin's ids were forgotten to keep the replay window bounded.
    SeenOverflow,
    /// The origin is a nation cut out of the network.
    CutOut,
    /// The origin's sealed release set names a nation its marking does not.
    ReleaseBeyondMarking,
}

impl Reason {
    /// The stable code, as audit records write it.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Duplicate => "duplicate",
            Reason::Stale => "stale",
            Reason::FromTheFuture => "from-the-future",
            Reason::UnknownOrigin => "unknown-origin",
            Reason::UnsealedRelay => "unsealed-relay",
            Reason::IneligibleRelay => "ineligible-relay",
            Reason::UnknownPublisher => "unknown-publisher",
            Reason::MalformedLabel => "malformed-label",
            Reason::PayloadTooLarge => "payload-too-large",
            Reason::BadAnnouncement => "bad-announcement",
            Reason::Unreachable => "unreachable",
            Reason::NoRoute => "no-route",
            Reason::Announcement => "announcement",
            Reason::AnnouncementRate => "announcement-rate",
            Reason::SeenOverflow => "seen-overflow",
            Reason::CutOut => "cut-out",
            Reason::ReleaseBeyondMarking => "release-beyond-marking",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Where an envelope came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Published by a session of this node.
    Local,
    /// Received on the link from this peer.
    Peer(Nation),
}

/// Whether an envelope's seal has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealState {
    /// Not yet: allowed only straight from its origin (invariant 3), and
    /// then delivered but not relayed until [`Routing::relay`].
    Unverified,
    /// Checked against the origin's node key.
    Verified,
}

/// What to do with one envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Sessions that may receive it (invariant 1).
    pub deliver: Vec<SessionId>,
    /// Peers to send it to: this node's children in its delivery tree, and
    /// those in its fallback tree whose link is up (see the module docs).
    pub forward: Vec<Nation>,
    /// Peers to send it to whose link is down (held, see the module docs):
    /// it waits in their outbox until the link returns. Never in
    /// `forward`; like it, only eligible nations, never the origin or the
    /// peer it came from.
    pub held: Vec<Nation>,
    /// Live neighbours that want it but may not have it, each with the
    /// policy's reason (invariant 7 at this node's boundary; nations
    /// further away are denied by their own neighbours). The I/O layer
    /// lists them with the peers it forwarded to in the message's one
    /// `forward` audit record.
    pub denied: Vec<(Nation, crate::policy::Reason)>,
    /// At the origin only: interested, eligible nations no path of live
    /// or held links reaches, as `no-route` (configured links on the way
    /// are down) or `unreachable` (no configured path of eligible nations
    /// exists). In the route rather than in an audit record of their own,
    /// so that a nation that is away does not add a line to every message.
    pub unreached: Vec<(Nation, Reason)>,
    /// Its label's canonical marking, as deliveries and audit records
    /// print it (worked out once, for the route).
    pub marking: Arc<str>,
    /// Some peer in `forward` or `held` is to pass it on further down the
    /// tree (or may: a fallback or a grace-period child), so that peer
    /// waits for its seal before relaying. False when every one of them
    /// is only a destination.
    pub relayed_on: bool,
}

/// What [`Routing`]'s tree walk decides for one envelope at one node (the
/// fields of [`Route`] of the same names).
#[derive(Default)]
struct Children {
    forward: Vec<Nation>,
    held: Vec<Nation>,
    denied: Vec<(Nation, crate::policy::Reason)>,
    unreached: Vec<(Nation, Reason)>,
    relayed_on: bool,
}

/// An envelope the core refused; the audit record is already queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The stable reason code, as the audit record gives it.
    pub reason: &'static str,
}

/// Output for the I/O layer to carry out.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send this announcement on the links to these peers.
    Announce {
        /// The peers to send it to.
        to: Vec<Nation>,
        /// The announcement, as its origin signed it.
        announcement: Arc<SignedAnnouncement>,
    },
    /// Append this record to the audit log.
    Audit(Record),
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The principal may not subscribe to the pattern; the policy's sentence.
    #[error("{0}")]
    NotPermitted(String),
    /// The session already holds the most subscriptions allowed (this many).
    #[error("a session may hold at most {0} subscriptions; use wildcards or another session")]
    TooMany(usize),
    /// The session is not open in the core.
    #[error("no such session")]
    NoSession,
}

impl SubscribeError {
    /// The stable code the node sends with its refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::NotPermitted(_) => "topic-not-permitted",
            SubscribeError::TooMany(_) => "too-many-subscriptions",
            SubscribeError::NoSession => "no-session",
        }
    }
}

/// What the core has decided so far, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Envelopes published by this node's sessions.
    pub published: u64,
    /// Session deliveries allowed.
    pub delivered: u64,
    /// Envelope copies sent to peers.
    pub forwarded: u64,
    /// Envelope copies left for peers whose link is down ([`Route::held`]).
    pub held: u64,
    /// Envelopes refused at ingress.
    pub refused: u64,
    /// Message × nation pairs no eligible path could ever reach.
    pub unreachable: u64,
    /// Message × nation pairs cut off by links that are down.
    pub no_route: u64,
    /// Forwards per peer, so a test can see what crossed each link.
    pub forwarded_to: BTreeMap<Nation, u64>,
    /// Held copies per peer.
    pub held_for: BTreeMap<Nation, u64>,
}

/// Limits of the core.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    /// The most subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// The most message ids the replay window holds ([`seen::SeenIds`]).
    pub seen_capacity: usize,
    /// How long a link that went down is still routed through, its copies
    /// held for the outbox (see the module docs).
    pub hold_us: u64,
    /// Test only: while set, the next delivery the policy refuses goes
    /// through anyway (and clears it), so a test can show that the
    /// simulator's oracle catches a leak. Never compiled into a release.
    #[cfg(feature = "fault-injection")]
    pub leak_once: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Test only: a restored nation's messages from its cut are accepted.
    #[cfg(feature = "fault-injection")]
    pub release_cut_backlog: bool,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            max_subscriptions: 256,
            seen_capacity: seen::DEFAULT_CAPACITY,
            hold_us: DEFAULT_HOLD_US,
            #[cfg(feature = "fault-injection")]
            leak_once: None,
            #[cfg(feature = "fault-injection")]
            release_cut_backlog: false,
        }
    }
}

struct LocalSession {
    principal: Arc<Principal>,
    patterns: Vec<Pattern>,
}

struct Known {
    signed: Arc<SignedAnnouncement>,
    received_us: u64,
}

/// A delivery tree as one node uses it.
struct CachedTree {
    live: PathTree,
    branches: Vec<Branch>,
    /// This node's children in the fallback tree (over live and held
    /// links), for the targets the live tree misses.
    fallback: Vec<Branch>,
    /// What the fallback tree reaches.
    fallback_reach: NationSet,
    /// Nations reachable from the origin over configured links between
    /// eligible nations: the difference between `no-route` and
    /// `unreachable`.
    configured_reach: NationSet,
}

/// A verified announcement that came faster than its nation's pace.
struct HeldBack {
    /// The link it came on (not flooded back there).
    from: Nation,
    signed: SignedAnnouncement,
    /// How many came (each replacing the one before) since the last one
    /// applied.
    count: u64,
}

/// The last label routed, with what it costs to work out: publishers and
/// links mostly repeat one label.
struct LabelMemo {
    origin: Nation,
    label: Label,
    /// The origin and every nation the marking names, as this node's
    /// cuts leave it: what any release set from the origin is cut down to.
    permitted: NationSet,
    marking: Arc<str>,
    malformed: Option<LabelError>,
}

/// How long after the live links change a relay also passes messages on
/// by the tree it had before ([`Routing::relay`]).
pub const RELAY_GRACE_US: u64 = 2_000_000;

/// The longest marking printed for a label that is not canonical: a
/// hostile label may be as large as a frame.
const MALFORMED_MARKING_MAX: usize = 256;

/// The routing core of one node. See the module docs.
pub struct Routing {
    nation: Nation,
    policy: Arc<Policy>,
    nations: Nations,
    me: usize,
    configured: Graph,
    live: Graph,
    /// Links that left `live` by going down, by their nations (lower code
    /// first, as indices change with the policy), with when they went
    /// down.
    held: BTreeMap<(Nation, Nation), u64>,
    /// `live` and the held links: what fallback trees run over.
    reserve: Graph,
    /// `live` as it was before its last change, and when it changed: for
    /// [`RELAY_GRACE_US`] a relay also passes a message on by the tree it
    /// had, so a copy its sender routed by that tree still gets through.
    previous: Option<(Graph, u64)>,
    signer: Arc<Signer>,
    node_keys: Arc<HashMap<Nation, Vec<u8>>>,
    settings: RoutingSettings,
    sessions: BTreeMap<SessionId, LocalSession>,
    live_peers: BTreeSet<Nation>,
    own_patterns: BTreeSet<Pattern>,
    seq: u64,
    announced_us: Option<u64>,
    announce_due: bool,
    known: BTreeMap<Nation, Known>,
    /// This node's own announcements against [`announce::OWN_PACE`].
    own_pace: Paced,
    /// Each other nation's against [`announce::RECEIVED_PACE`].
    received_pace: BTreeMap<Nation, Paced>,
    /// The newest announcement of each nation that came faster than
    /// [`announce::RECEIVED_PACE`], to apply once its pace allows.
    held_back: BTreeMap<Nation, HeldBack>,
    /// Each restored nation, with when its restore took effect: what it
    /// created before then was created during its cut, and is refused.
    restored: BTreeMap<Nation, u64>,
    /// Nations whose announcements were held back since one last passed
    /// at once: their churn is recorded once a run, not once a hold.
    churning: BTreeSet<Nation>,
    /// Announced patterns per nation index (this node's own excluded).
    interest: Vec<Vec<Pattern>>,
    trees: HashMap<(usize, NationSet), Arc<CachedTree>>,
    last_label: Option<LabelMemo>,
    last_topic: Option<(Topic, NationSet)>,
    seen: SeenIds,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Routing {
    /// The core of `nation`'s node. `node_keys` holds every nation's node
    /// key, to verify announcements; `signer` signs this node's own.
    pub fn new(
        nation: Nation,
        policy: Arc<Policy>,
        signer: Arc<Signer>,
        node_keys: Arc<HashMap<Nation, Vec<u8>>>,
        settings: RoutingSettings,
    ) -> Routing {
        let nations = Nations::of(&policy);
        let mut routing = Routing {
            nation,
            me: nations.index(nation).unwrap_or(usize::MAX),
            configured: Graph::configured(&policy, &nations),
            live: Graph::empty(nations.len()),
            held: BTreeMap::new(),
            reserve: Graph::empty(nations.len()),
            previous: None,
            interest: vec![Vec::new(); nations.len()],
            nations,
            policy,
            signer,
            node_keys,
            seen: SeenIds::new(settings.seen_capacity),
            settings,
            sessions: BTreeMap::new(),
            live_peers: BTreeSet::new(),
            own_patterns: BTreeSet::new(),
            seq: 0,
            announced_us: None,
            announce_due: true,
            known: BTreeMap::new(),
            own_pace: Paced::default(),
            received_pace: BTreeMap::new(),
            held_back: BTreeMap::new(),
            churning: BTreeSet::new(),
            restored: BTreeMap::new(),
            trees: HashMap::new(),
            last_label: None,
            last_topic: None,
            actions: VecDeque::new(),
            counters: Counters::default(),
        };
        routing.rebuild_live(None);
        routing
    }

    /// The nation whose node this is.
    pub fn nation(&self) -> Nation {
        self.nation
    }

    /// The network policy the core decides by.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// What the core has decided so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The next action to carry out, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn audit(&mut self, record: Record) {
        self.actions.push_back(Action::Audit(record));
    }

    // ----- sessions and subscriptions -----

    /// A session of `principal` opened; it receives nothing until it subscribes.
    pub fn open_session(&mut self, session: SessionId, principal: Arc<Principal>) {
        self.sessions.insert(
            session,
            LocalSession {
                principal,
                patterns: Vec::new(),
            },
        );
    }

    /// Adds a subscription, if the principal's permissions cover the
    /// pattern and the session holds fewer than the limit.
    pub fn subscribe(
        &mut self,
        session: SessionId,
        pattern: Pattern,
        now_us: u64,
    ) -> Result<(), SubscribeError> {
        let limit = self.settings.max_subscriptions;
        let entry = self.sessions.get_mut(&session).ok_or(SubscribeError::NoSession)?;
        if let Decision::Deny { message, .. } = self.policy.may_subscribe(&entry.principal, &pattern) {
            return Err(SubscribeError::NotPermitted(message));
        }
        if !entry.patterns.contains(&pattern) {
            if entry.patterns.len() >= limit {
                return Err(SubscribeError::TooMany(limit));
            }
            entry.patterns.push(pattern);
        }
        self.interest_changed(now_us);
        Ok(())
    }

    /// Removes a subscription, if the session holds it.
    pub fn unsubscribe(&mut self, session: SessionId, pattern: &Pattern, now_us: u64) {
        if let Some(entry) = self.sessions.get_mut(&session) {
            entry.patterns.retain(|p| p != pattern);
        }
        self.interest_changed(now_us);
    }

    /// A session ended: its subscriptions go with it.
    pub fn close_session(&mut self, session: SessionId, now_us: u64) {
        if self.sessions.remove(&session).is_some() {
            self.interest_changed(now_us);
        }
    }

    /// The patterns this node announces: its sessions' patterns, without
    /// those another one covers; `>` if there are too many to list.
    fn local_patterns(&self) -> BTreeSet<Pattern> {
        let all: BTreeSet<&Pattern> = self.sessions.values().flat_map(|s| s.patterns.iter()).collect();
        if all.len() > MAX_ANNOUNCED_PATTERNS {
            return Pattern::new(">").into_iter().collect();
        }
        if all.len() > REDUCE_PATTERNS {
            // Pairwise coverage grows with the square of the count: past
            // this, list them as they are rather than let one subscriber
            // make every subscribe slow.
            return all.into_iter().cloned().collect();
        }
        all.iter()
            .filter(|p| !all.iter().any(|q| q != *p && p.is_covered_by(q)))
            .map(|p| (*p).clone())
            .collect()
    }

    fn interest_changed(&mut self, now_us: u64) {
        let patterns = self.local_patterns();
        if patterns != self.own_patterns {
            self.own_patterns = patterns;
            self.announce_soon(now_us);
        }
    }

    // ----- links and announcements -----

    /// This node's link to `peer` is up: tell everyone, and give the peer
    /// every announcement this node holds.
    pub fn link_up(&mut self, peer: Nation, now_us: u64) {
        self.live_peers.insert(peer);
        self.rebuild_live(Some(now_us));
        let mut everything: Vec<Arc<SignedAnnouncement>> =
            self.known.values().map(|k| k.signed.clone()).collect();
        everything.push(self.sign_own(now_us));
        for announcement in everything {
            self.actions.push_back(Action::Announce {
                to: vec![peer],
                announcement,
            });
        }
        self.announce_soon(now_us);
    }

    /// This node's link to `peer` went down.
    pub fn link_down(&mut self, peer: Nation, now_us: u64) {
        if self.live_peers.remove(&peer) {
            self.rebuild_live(Some(now_us));
            self.announce_soon(now_us);
        }
    }

    /// The peers this node has a live link to.
    pub fn live_peers(&self) -> &BTreeSet<Nation> {
        &self.live_peers
    }

    /// The peers whose link to this node is in the live graph: this
    /// node's link to them is up and they announce it too. A peer that
    /// leaves this set is no longer a child in any tree, even if this
    /// node's own link to it is still up.
    pub fn live_neighbours(&self) -> BTreeSet<Nation> {
        self.nations
            .names(self.live.neighbours(self.me))
            .into_iter()
            .collect()
    }

    /// The newest announcement held of each other nation, as signed.
    pub fn announcements(&self) -> Vec<Arc<SignedAnnouncement>> {
        self.known.values().map(|known| known.signed.clone()).collect()
    }

    /// The links held (see the module docs), by their nations (lower code
    /// first), with when each went down.
    pub fn held_links(&self) -> &BTreeMap<(Nation, Nation), u64> {
        &self.held
    }

    fn announce_soon(&mut self, now_us: u64) {
        self.announce_due = true;
        self.tick(now_us);
    }

    fn sign_own(&mut self, now_us: u64) -> Arc<SignedAnnouncement> {
        self.seq = (self.seq + 1).max(now_us);
        let announcement = Announcement {
            nation: self.nation,
            seq: self.seq,
            links: self.live_peers.clone(),
            patterns: self.own_patterns.clone(),
        };
        Arc::new(announcement.sign(&self.signer))
    }

    fn announce_own(&mut self, now_us: u64) {
        let announcement = self.sign_own(now_us);
        self.announced_us = Some(now_us);
        self.announce_due = false;
        if !self.live_peers.is_empty() {
            self.actions.push_back(Action::Announce {
                to: self.live_peers.iter().copied().collect(),
                announcement,
            });
        }
    }

    /// Time passes: forget old ids, announcements and held links, and
    /// announce this node when it changed or its refresh is due.
    pub fn tick(&mut self, now_us: u64) {
        self.seen.expire(now_us);
        for (origin, count, floor_us) in self.seen.take_overflow() {
            self.audit(
                Record::at(now_us, Event::Drop, Verdict::Deny, Reason::SeenOverflow.code())
                    .subject(origin)
                    .detail(format!(
                        "{origin} sent more fresh ids than the replay window holds: its {count} oldest \
                         were forgotten, and anything from it created at or before {floor_us} µs is \
                         now refused as stale"
                    )),
            );
        }
        let expired: Vec<Nation> = self
            .known
            .iter()
            .filter(|(_, k)| now_us.saturating_sub(k.received_us) > ANNOUNCEMENT_TTL_US)
            .map(|(&n, _)| n)
            .collect();
        let hold_us = self.settings.hold_us;
        let held = self.held.len();
        self.held
            .retain(|_, &mut down_us| now_us.saturating_sub(down_us) <= hold_us);
        if !expired.is_empty() || self.held.len() != held {
            for nation in expired {
                self.known.remove(&nation);
            }
            self.rebuild_live(Some(now_us));
        }
        self.apply_held_back(now_us);
        let since = self.announced_us.map(|at| now_us.saturating_sub(at));
        let due = match since {
            None => true,
            Some(since) => (self.announce_due && since >= ANNOUNCE_INTERVAL_US) || since >= REFRESH_US,
        };
        if due && self.own_pace.take(announce::OWN_PACE, now_us) {
            self.announce_own(now_us);
        } else if due {
            self.announce_due = true;
        }
    }

    /// Whether an announcement of this node's own waits for the next tick
    /// (announcements are at least [`ANNOUNCE_INTERVAL_US`] apart).
    pub fn announcement_pending(&self) -> bool {
        self.announce_due
    }

    /// When the next tick has work to do, at the latest.
    pub fn next_tick_us(&self) -> u64 {
        let own = match self.announced_us {
            Some(at) if self.announce_due => at + ANNOUNCE_INTERVAL_US,
            Some(at) => at + REFRESH_US,
            None => 0,
        }
        .max(self.own_pace.next_us(announce::OWN_PACE));
        let held_back = self.held_back.keys().map(|nation| {
            self.received_pace
                .get(nation)
                .map_or(0, |pace| pace.next_us(announce::RECEIVED_PACE))
        });
        held_back.fold(own, u64::min)
    }

    /// An announcement arrived on the link from `from`. A newer one than
    /// this node holds is kept and passed on to every other live link.
    pub fn receive_announcement(
        &mut self,
        from: Nation,
        signed: SignedAnnouncement,
        now_us: u64,
    ) -> Result<(), AnnouncementError> {
        let nation = signed.announcement.nation;
        let seq = signed.announcement.seq;
        // Flooding brings most announcements more than once: an old or
        // repeated one changes nothing, so it costs no signature check.
        if self
            .known
            .get(&nation)
            .is_some_and(|k| k.signed.announcement.seq >= seq)
        {
            return Ok(());
        }
        let checked = match self.node_keys.get(&nation) {
            _ if self.policy.is_suspended(nation) => Err(AnnouncementError::CutOut(nation)),
            Some(key) if self.nations.index(nation).is_some() => signed.verify(key),
            _ => Err(AnnouncementError::UnknownNation(nation)),
        }
        .and_then(|()| {
            if seq > now_us.saturating_add(seen::MAX_SKEW_US) {
                Err(AnnouncementError::FromTheFuture(nation))
            } else {
                Ok(())
            }
        });
        if let Err(err) = checked {
            self.audit(
                Record::at(
                    now_us,
                    Event::Refuse,
                    Verdict::Deny,
                    Reason::BadAnnouncement.code(),
                )
                .subject(from)
                .detail(format!("{from} sent it: {err}")),
            );
            return Err(err);
        }
        if nation == self.nation {
            // Our own from an earlier run: supersede it.
            if seq >= self.seq {
                self.seq = seq;
                self.announce_due = true;
                self.announced_us = None;
                self.tick(now_us);
            }
            return Ok(());
        }
        let pace = self.received_pace.entry(nation).or_default();
        if !self.held_back.contains_key(&nation) && pace.take(announce::RECEIVED_PACE, now_us) {
            self.churning.remove(&nation);
            self.apply_announcement(from, signed, 0, now_us);
            return Ok(());
        }
        // Too fast: kept (only the newest) until the pace allows, so what
        // the network ends up believing is still the nation's last word.
        let count = self.held_back.remove(&nation).map_or(1, |held| held.count + 1);
        if self.churning.insert(nation) {
            let per_second = 1_000_000 / announce::RECEIVED_PACE.interval_us;
            self.audit(
                Record::at(
                    now_us,
                    Event::Refuse,
                    Verdict::Deny,
                    Reason::AnnouncementRate.code(),
                )
                .subject(nation)
                .detail(format!(
                    "{nation} announces faster than {per_second} times a second: until it slows \
                         down, only its newest announcement is kept, and applied at that pace"
                )),
            );
        }
        self.held_back.insert(nation, HeldBack { from, signed, count });
        Ok(())
    }

    /// Applies the announcements held back whose nation's pace now allows
    /// one.
    fn apply_held_back(&mut self, now_us: u64) {
        let ready: Vec<Nation> = self
            .held_back
            .keys()
            .copied()
            .filter(|nation| {
                self.received_pace
                    .get(nation)
                    .is_none_or(|pace| pace.next_us(announce::RECEIVED_PACE) <= now_us)
            })
            .collect();
        for nation in ready {
            let Some(held) = self.held_back.remove(&nation) else {
                continue;
            };
            // A newer one may have been applied meanwhile (a cut forgets
            // the nation's; expired ones are gone too).
            if self.policy.is_suspended(nation)
                || self
                    .known
                    .get(&nation)
                    .is_some_and(|k| k.signed.announcement.seq >= held.signed.announcement.seq)
            {
                continue;
            }
            self.received_pace
                .entry(nation)
                .or_default()
                .take(announce::RECEIVED_PACE, now_us);
            self.apply_announcement(held.from, held.signed, held.count - 1, now_us);
        }
    }

    /// Keeps a verified announcement of another nation, newer than the
    /// one held, and passes it on to every other live link. `passed_over`:
    /// how many of the nation's came before it and were never applied
    /// (they came too fast).
    fn apply_announcement(
        &mut self,
        from: Nation,
        signed: SignedAnnouncement,
        passed_over: u64,
        now_us: u64,
    ) {
        let nation = signed.announcement.nation;
        let previous = self.known.get(&nation);
        let changed = previous.is_none_or(|k| {
            k.signed.announcement.links != signed.announcement.links
                || k.signed.announcement.patterns != signed.announcement.patterns
        });
        let signed = Arc::new(signed);
        self.known.insert(
            nation,
            Known {
                signed: signed.clone(),
                received_us: now_us,
            },
        );
        if changed || passed_over > 0 {
            let mut detail = announcement_detail(&signed.announcement);
            if passed_over > 0 {
                detail.push_str(&format!(
                    "; {passed_over} announcements before it came too fast and were passed over"
                ));
            }
            self.audit(
                Record::at(now_us, Event::Admit, Verdict::Allow, Reason::Announcement.code())
                    .subject(nation)
                    .detail(detail),
            );
        }
        if changed {
            self.rebuild_live(Some(now_us));
        }
        let to: Vec<Nation> = self
            .live_peers
            .iter()
            .copied()
            .filter(|&p| p != from && p != nation)
            .collect();
        if !to.is_empty() {
            self.actions.push_back(Action::Announce {
                to,
                announcement: signed,
            });
        }
    }

    /// Rebuilds the live-link picture and every nation's interest from the
    /// announcements held. A link counts only if both ends announce it and
    /// the network file configures it, so one lying member cannot invent
    /// a link to a nation that does not confirm it. With `went_down_us`,
    /// links that leave the picture are held from then; without (a policy
    /// change), they are not.
    fn rebuild_live(&mut self, went_down_us: Option<u64>) {
        let n = self.nations.len();
        let mut announced = vec![NationSet::default(); n];
        let mut interest = vec![Vec::new(); n];
        for (&nation, known) in &self.known {
            if let Some(index) = self.nations.index(nation) {
                announced[index] = self
                    .nations
                    .set_of(known.signed.announcement.links.iter().copied());
                interest[index] = known.signed.announcement.patterns.iter().cloned().collect();
            }
        }
        if self.me < n {
            announced[self.me] = self.nations.set_of(self.live_peers.iter().copied());
        }
        let mut live = Graph::empty(n);
        for (a, b) in self.configured.links() {
            if announced[a].contains(b) && announced[b].contains(a) {
                live.link(a, b);
            }
        }
        if let Some(now_us) = went_down_us {
            for (a, b) in self.live.links().difference(&live.links()) {
                // Nations are in code order, so the pair is too.
                let pair = (self.nations.nation(*a), self.nations.nation(*b));
                self.held.insert(pair, now_us);
            }
        }
        let nations = &self.nations;
        self.held
            .retain(|&(a, b), _| match (nations.index(a), nations.index(b)) {
                (Some(a), Some(b)) => !live.neighbours(a).contains(b),
                _ => false,
            });
        let mut reserve = live.clone();
        for &(a, b) in self.held.keys() {
            if let (Some(a), Some(b)) = (nations.index(a), nations.index(b)) {
                reserve.link(a, b);
            }
        }
        if live != self.live {
            // Not after a policy change (no time given): the old tree may
            // run through a nation just cut out.
            self.previous = went_down_us.map(|now_us| (self.live.clone(), now_us));
        }
        if live != self.live || reserve != self.reserve {
            self.live = live;
            self.reserve = reserve;
            self.trees.clear();
        }
        self.interest = interest;
        self.last_topic = None;
    }

    // ----- policy -----

    /// The node keys announcements are checked with (a cut nation's is
    /// gone).
    pub fn set_node_keys(&mut self, node_keys: Arc<HashMap<Nation, Vec<u8>>>) {
        self.node_keys = node_keys;
    }

    /// Each restored nation, with when its restore took effect (see
    /// [`Routing::precheck`]).
    pub fn set_restored(&mut self, restored: BTreeMap<Nation, u64>) {
        self.restored = restored;
    }

    /// A new network policy: everything derived from it is recomputed.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        // A cut nation's interest and links leave with it.
        self.known.retain(|&nation, _| !policy.is_suspended(nation));
        self.previous = None;
        self.nations = Nations::of(&policy);
        self.me = self.nations.index(self.nation).unwrap_or(usize::MAX);
        self.configured = Graph::configured(&policy, &self.nations);
        // Nothing is held for a nation cut out or a link the network no
        // longer has: its outbox would wait for a link that must not return.
        let (nations, configured) = (&self.nations, &self.configured);
        self.held.retain(|&(a, b), _| {
            !policy.is_suspended(a)
                && !policy.is_suspended(b)
                && match (nations.index(a), nations.index(b)) {
                    (Some(a), Some(b)) => configured.neighbours(a).contains(b),
                    _ => false,
                }
        });
        self.policy = policy;
        self.live = Graph::empty(self.nations.len());
        self.reserve = Graph::empty(self.nations.len());
        self.trees.clear();
        self.last_label = None;
        self.rebuild_live(None);
    }

    // ----- envelopes -----

    /// Records an id as seen without routing anything: the ids a node
    /// kept before a restart, reloaded so that a copy still on its way is
    /// a duplicate. An id too old or too far ahead to be taken now is
    /// ignored, as is one already held; ingress would refuse those anyway.
    pub fn remember(&mut self, origin: Nation, id: MessageId, created_us: u64, now_us: u64) {
        let _ = self.seen.take(origin, id, created_us, now_us);
    }

    /// What a restarted node's store forgot of `origin`'s ids to keep its
    /// bound: anything not newer than `floor_us` is refused as stale.
    pub fn remember_floor(&mut self, origin: Nation, floor_us: u64) {
        self.seen.raise_floor(origin, floor_us);
    }

    /// Whether this origin and id were seen already: lets the caller skip
    /// checking the seal of a second copy.
    pub fn is_duplicate(&self, origin: Nation, id: MessageId) -> bool {
        self.seen.contains(origin, id)
    }

    /// The nations that may hold an envelope, and its canonical marking:
    /// its origin, and the nations the origin released it to that this
    /// node's policy also allows (the marking, this node's cuts). Without
    /// the nations that were cut out when it was created (restored since),
    /// so a copy routed after a restore (held for a peer that was down,
    /// routed again) never reaches a nation that may not have had it then.
    fn eligibility_of(&mut self, envelope: &Envelope) -> (NationSet, Arc<str>) {
        let origin = envelope.origin;
        let released = self.nations.set_of(envelope.released_to.iter().copied());
        let memo = self.label_memo(origin, &envelope.label);
        let (permitted, marking) = (memo.permitted, memo.marking.clone());
        let mut eligible = permitted.and(released);
        if let Some(index) = self.nations.index(origin) {
            eligible.insert(index);
        }
        for (&nation, &restored_us) in &self.restored {
            if envelope.created_us <= restored_us && nation != envelope.origin {
                if let Some(index) = self.nations.index(nation) {
                    eligible.remove(index);
                }
            }
        }
        (eligible, marking)
    }

    /// What this node would release a label from `origin` to: by its
    /// own release set if it is the origin, by the marking otherwise.
    fn eligibility(&mut self, origin: Nation, label: &Label) -> (NationSet, Arc<str>) {
        let own = (origin == self.nation).then(|| self.policy.release_set(origin, label));
        let memo = self.label_memo(origin, label);
        let (permitted, marking) = (memo.permitted, memo.marking.clone());
        match own {
            Some(released) => {
                let mut eligible = permitted.and(self.nations.set_of(released));
                if let Some(index) = self.nations.index(origin) {
                    eligible.insert(index);
                }
                (eligible, marking)
            }
            None => (permitted, marking),
        }
    }

    /// What the core knows about a label, worked out once for a run of
    /// envelopes that carry it. A label that is not canonical is never
    /// routed: it gets no permitted nations (so it is not worked through
    /// the marking name by name) and a marking cut short.
    fn label_memo(&mut self, origin: Nation, label: &Label) -> &LabelMemo {
        let memo = match self.last_label.take() {
            Some(memo) if memo.origin == origin && memo.label == *label => memo,
            _ => {
                let scheme = self.policy.scheme();
                let malformed = scheme.check_canonical(label).err();
                let (permitted, marking) = match malformed {
                    None => (
                        permitted_nations(&self.policy, &self.nations, origin, label),
                        scheme.format(label),
                    ),
                    Some(_) => (NationSet::default(), malformed_marking(scheme.format(label))),
                };
                LabelMemo {
                    origin,
                    label: label.clone(),
                    permitted,
                    marking: marking.into(),
                    malformed,
                }
            }
        };
        self.last_label.insert(memo)
    }

    /// The canonical marking of a label, as audit records print it.
    pub fn marking(&mut self, origin: Nation, label: &Label) -> Arc<str> {
        self.eligibility(origin, label).1
    }

    /// The nations (other than this one) that announced interest in `topic`.
    fn interested(&mut self, topic: &Topic) -> NationSet {
        if let Some((last, set)) = &self.last_topic {
            if last == topic {
                return *set;
            }
        }
        let mut set = NationSet::default();
        for (index, patterns) in self.interest.iter().enumerate() {
            if index != self.me && patterns.iter().any(|p| p.matches(topic)) {
                set.insert(index);
            }
        }
        self.last_topic = Some((topic.clone(), set));
        set
    }

    fn tree(&mut self, origin: usize, eligible: NationSet) -> Arc<CachedTree> {
        if let Some(tree) = self.trees.get(&(origin, eligible)) {
            return tree.clone();
        }
        if self.trees.len() >= TREE_CACHE {
            self.trees.clear();
        }
        let live = self.live.shortest_paths(origin, eligible);
        let (fallback, fallback_reach) = if self.reserve == self.live {
            (Vec::new(), live.reached())
        } else {
            let tree = self.reserve.shortest_paths(origin, eligible);
            (tree.branches(self.me), tree.reached())
        };
        let tree = Arc::new(CachedTree {
            branches: live.branches(self.me),
            fallback,
            fallback_reach,
            configured_reach: self.configured.shortest_paths(origin, eligible).reached(),
            live,
        });
        self.trees.insert((origin, eligible), tree.clone());
        tree
    }

    fn refuse(
        &mut self,
        envelope: &Envelope,
        marking: &str,
        from: Nation,
        reason: &'static str,
        detail: String,
        now_us: u64,
    ) -> Refused {
        self.counters.refused += 1;
        let event = if reason == Reason::Duplicate.code() {
            Event::Drop
        } else {
            Event::Refuse
        };
        self.audit(
            Record::at(now_us, event, Verdict::Deny, reason)
                .message(envelope, marking)
                .subject(from)
                .detail(detail),
        );
        Refused { reason }
    }

    /// The checks on a peer's envelope that need no seal: a known origin,
    /// and the fields only the network file can vouch for (payload size,
    /// label, publisher). [`Routing::route`] makes them too; a reader makes
    /// them first on a sealed envelope, so that one failing them costs no
    /// signature check and is never audited as verified.
    pub fn precheck(&mut self, envelope: &Envelope, from: Nation, now_us: u64) -> Result<(), Refused> {
        let origin = envelope.origin;
        if self.policy.is_suspended(origin) {
            let marking = self.label_memo(origin, &envelope.label).marking.clone();
            return Err(self.refuse(
                envelope,
                &marking,
                from,
                Reason::CutOut.code(),
                format!("{from} sent a message from {origin}, which is cut out of the network"),
                now_us,
            ));
        }
        #[cfg(feature = "fault-injection")]
        let restored = (!self.settings.release_cut_backlog)
            .then(|| self.restored.get(&origin).copied())
            .flatten();
        #[cfg(not(feature = "fault-injection"))]
        let restored = self.restored.get(&origin).copied();
        if let Some(restored_us) = restored {
            if envelope.created_us <= restored_us {
                let marking = self.label_memo(origin, &envelope.label).marking.clone();
                return Err(self.refuse(
                    envelope,
                    &marking,
                    from,
                    Reason::CutOut.code(),
                    format!(
                        "{from} sent a message {origin} created while it was cut out (before its restore \
                         took effect, at {restored_us} µs): what a nation publishes while cut out is never released"
                    ),
                    now_us,
                ));
            }
        }
        if self.nations.index(origin).is_none() {
            let marking = self.label_memo(origin, &envelope.label).marking.clone();
            return Err(self.refuse(
                envelope,
                &marking,
                from,
                Reason::UnknownOrigin.code(),
                format!("{from} sent a message from {origin}, which is not a nation of the network"),
                now_us,
            ));
        }
        if let Some((reason, detail)) = self.malformed(envelope) {
            let marking = self.label_memo(origin, &envelope.label).marking.clone();
            return Err(self.refuse(envelope, &marking, from, reason.code(), detail, now_us));
        }
        Ok(())
    }

    /// Routes one envelope: the checks of a node boundary (for one from a
    /// peer), then local delivery, then the peers to forward it to. An
    /// unverified envelope (straight from its origin) is delivered but not
    /// forwarded; call [`Routing::relay`] once its seal has verified.
    pub fn route(
        &mut self,
        envelope: &Envelope,
        source: Source,
        seal: SealState,
        now_us: u64,
    ) -> Result<Route, Refused> {
        let origin = envelope.origin;
        let (eligible, marking) = self.eligibility_of(envelope);
        match source {
            Source::Local => {
                self.counters.published += 1;
                // A fresh id; remembered so an echo is a duplicate.
                let _ = self.seen.take(origin, envelope.id, envelope.created_us, now_us);
            }
            Source::Peer(from) => {
                self.precheck(envelope, from, now_us)?;
                if seal == SealState::Unverified && origin != from {
                    return Err(self.refuse(
                        envelope,
                        &marking,
                        from,
                        Reason::UnsealedRelay.code(),
                        format!("{from} relayed a message from {origin} without its seal"),
                        now_us,
                    ));
                }
                if let Err(unseen) = self.seen.check(origin, envelope.id, envelope.created_us, now_us) {
                    let (reason, detail) = match unseen {
                        Unseen::Duplicate => (
                            Reason::Duplicate,
                            format!("already received; this copy came from {from}"),
                        ),
                        Unseen::Stale => (
                            Reason::Stale,
                            format!(
                                "created more than {} s ago, or before the oldest id this node still holds",
                                seen::MAX_AGE_US / 1_000_000
                            ),
                        ),
                        Unseen::Future => (
                            Reason::FromTheFuture,
                            format!(
                                "created more than {} s ahead of this node's clock",
                                seen::MAX_SKEW_US / 1_000_000
                            ),
                        ),
                    };
                    return Err(self.refuse(envelope, &marking, from, reason.code(), detail, now_us));
                }
                if !eligible.contains(self.me) {
                    let (reason, message) = match self.release_denial(envelope, self.nation) {
                        Some(Decision::Deny { reason, message }) => (reason.code(), message),
                        _ => (Reason::IneligibleRelay.code(), String::new()),
                    };
                    return Err(self.refuse(
                        envelope,
                        &marking,
                        from,
                        reason,
                        format!("{from} sent it: {message}"),
                        now_us,
                    ));
                }
                let from_eligible = self.nations.index(from).is_some_and(|i| eligible.contains(i));
                if !from_eligible {
                    return Err(self.refuse(
                        envelope,
                        &marking,
                        from,
                        Reason::IneligibleRelay.code(),
                        format!("{from} relayed a message it may not hold itself"),
                        now_us,
                    ));
                }
                // Checked above; taking cannot fail now.
                let _ = self.seen.take(origin, envelope.id, envelope.created_us, now_us);
            }
        }
        let deliver = self.deliver_locally(envelope, &marking, now_us);
        let children = match (source, seal) {
            (Source::Peer(_), SealState::Unverified) => Children::default(),
            (Source::Peer(from), SealState::Verified) => {
                self.children(envelope, eligible, Some(from), now_us)
            }
            (Source::Local, _) => self.children(envelope, eligible, None, now_us),
        };
        Ok(Route {
            deliver,
            forward: children.forward,
            held: children.held,
            denied: children.denied,
            unreached: children.unreached,
            marking,
            relayed_on: children.relayed_on,
        })
    }

    /// What is wrong with the parts of a peer's envelope that only the
    /// network file can vouch for: a seal proves that the origin sent
    /// them, but a hostile origin signs whatever it likes, so payload
    /// size, label and publisher are checked here, whether the envelope
    /// came straight from its origin or through a relay.
    fn malformed(&mut self, envelope: &Envelope) -> Option<(Reason, String)> {
        let origin = envelope.origin;
        if envelope.payload.len() > wire::MAX_PAYLOAD {
            return Some((
                Reason::PayloadTooLarge,
                format!(
                    "a payload of {} bytes from {origin}; the limit is {} bytes",
                    envelope.payload.len(),
                    wire::MAX_PAYLOAD
                ),
            ));
        }
        if let Some(err) = &self.label_memo(origin, &envelope.label).malformed {
            return Some((Reason::MalformedLabel, format!("a label from {origin}: {err}")));
        }
        // The seal makes the origin's node accountable for the name; only
        // its form is checked here: another nation's roster is not known.
        let publisher = &envelope.publisher;
        if !crate::policy::is_principal_name_of(publisher, origin) {
            return Some((
                Reason::UnknownPublisher,
                format!(
                    "publisher {} is not a principal name of {origin} ({}.<name>)",
                    quoted(publisher),
                    origin.lowercase()
                ),
            ));
        }
        self.release_beyond_marking(envelope)
    }

    /// A release set that names the origin, a nation outside the network,
    /// or one the marking does not name: the origin signed a release the
    /// label does not allow. A nation this node has cut out is not held
    /// against it: the origin may not have applied that cut yet.
    fn release_beyond_marking(&mut self, envelope: &Envelope) -> Option<(Reason, String)> {
        let origin = envelope.origin;
        if envelope.released_to.len() >= MAX_NATIONS {
            return Some((
                Reason::ReleaseBeyondMarking,
                format!(
                    "{origin} released it to {} nations; a network has at most {MAX_NATIONS}",
                    envelope.released_to.len()
                ),
            ));
        }
        // What the marking names, worked out once per label (checked
        // canonical before this is called).
        let permitted = self.label_memo(origin, &envelope.label).permitted;
        let beyond = envelope.released_to.iter().find(|&&nation| {
            nation == origin
                || self
                    .nations
                    .index(nation)
                    .is_none_or(|index| !permitted.contains(index) && !self.policy.is_suspended(nation))
        })?;
        let scheme = self.policy.scheme();
        Some((
            Reason::ReleaseBeyondMarking,
            format!(
                "{origin} released {} to {}, which its marking does not name",
                scheme.format(&envelope.label),
                quoted(beyond.as_str())
            ),
        ))
    }

    /// Where to pass on an envelope that came unverified from `from` (its
    /// origin) and whose seal has now verified: a route with nobody to
    /// deliver to (that was done on arrival).
    pub fn relay(&mut self, envelope: &Envelope, from: Nation, now_us: u64) -> Route {
        let (eligible, marking) = self.eligibility_of(envelope);
        let children = self.children(envelope, eligible, Some(from), now_us);
        Route {
            deliver: Vec::new(),
            forward: children.forward,
            held: children.held,
            denied: children.denied,
            unreached: children.unreached,
            marking,
            relayed_on: children.relayed_on,
        }
    }

    fn deliver_locally(&mut self, envelope: &Envelope, marking: &str, now_us: u64) -> Vec<SessionId> {
        let mut deliver = Vec::new();
        let mut denials = Vec::new();
        for (&id, session) in &self.sessions {
            if !session.patterns.iter().any(|p| p.matches(&envelope.topic)) {
                continue;
            }
            match self.policy.may_deliver(
                &session.principal,
                &envelope.topic,
                &envelope.label,
                envelope.origin,
            ) {
                Decision::Allow => deliver.push(id),
                #[cfg(feature = "fault-injection")]
                Decision::Deny { .. }
                    if self
                        .settings
                        .leak_once
                        .as_ref()
                        .is_some_and(|leak| leak.swap(false, std::sync::atomic::Ordering::SeqCst)) =>
                {
                    deliver.push(id)
                }
                Decision::Deny { reason, message } => denials.push(
                    Record::at(now_us, Event::Deliver, Verdict::Deny, reason.code())
                        .message(envelope, marking)
                        .subject(&session.principal.name)
                        .detail(message),
                ),
            }
        }
        for record in denials {
            self.audit(record);
        }
        self.counters.delivered += deliver.len() as u64;
        deliver
    }

    /// This node's children that lead to an interested nation, in the
    /// envelope's live tree or, for targets the live tree misses, in its
    /// fallback tree, split by whether their link is up; the interested
    /// neighbours it may not go to; and, at the origin, the interested,
    /// eligible nations neither tree reaches.
    fn children(
        &mut self,
        envelope: &Envelope,
        eligible: NationSet,
        from: Option<Nation>,
        now_us: u64,
    ) -> Children {
        let Some(origin) = self.nations.index(envelope.origin) else {
            return Children::default();
        };
        let interested = self.interested(&envelope.topic);
        let mut children = Children {
            denied: self.ineligible_neighbours(envelope, interested.minus(eligible)),
            ..Children::default()
        };
        let mut targets = interested.and(eligible);
        targets.remove(origin);
        targets.remove(self.me);
        if targets.is_empty() {
            return children;
        }
        let tree = self.tree(origin, eligible);
        let missed = targets.minus(tree.live.reached());
        let mut chosen = NationSet::default();
        for branch in &tree.branches {
            if branch.beyond.intersects(targets) {
                chosen.insert(branch.child);
                let mut further = branch.beyond.and(targets);
                further.remove(branch.child);
                children.relayed_on |= !further.is_empty();
            }
        }
        for branch in &tree.fallback {
            if branch.beyond.intersects(missed) {
                chosen.insert(branch.child);
                children.relayed_on = true;
            }
        }
        // Just after the live links changed, a relay's sender may have
        // routed by the tree as it was: where that tree made this node the
        // way to a target, it still is, over live links (a copy that also
        // comes the new way is a duplicate there). Without this, a copy on
        // its way when a link came back was lost at the relay.
        if let Some((previous, changed_us)) = &self.previous {
            if from.is_some() && now_us < changed_us.saturating_add(RELAY_GRACE_US) {
                for branch in previous.shortest_paths(origin, eligible).branches(self.me) {
                    let child = self.nations.nation(branch.child);
                    if branch.beyond.intersects(targets) && self.live_peers.contains(&child) {
                        chosen.insert(branch.child);
                        children.relayed_on = true;
                    }
                }
            }
        }
        for child in self.nations.names(chosen) {
            if Some(child) == from || child == envelope.origin {
                continue;
            }
            // A fallback child may have a live link: the first hop toward
            // a held link further on, or a held link whose end here is
            // back up before the peer's announcement says so.
            if self.live_peers.contains(&child) {
                children.forward.push(child);
                self.counters.forwarded += 1;
                *self.counters.forwarded_to.entry(child).or_default() += 1;
            } else {
                children.held.push(child);
                self.counters.held += 1;
                *self.counters.held_for.entry(child).or_default() += 1;
            }
        }
        if from.is_none() {
            let missed = missed.minus(tree.fallback_reach);
            if !missed.is_empty() {
                let no_route = missed.and(tree.configured_reach);
                let unreachable = missed.minus(tree.configured_reach);
                for (set, reason, counter) in [
                    (no_route, Reason::NoRoute, &mut self.counters.no_route),
                    (unreachable, Reason::Unreachable, &mut self.counters.unreachable),
                ] {
                    let names = self.nations.names(set);
                    *counter += names.len() as u64;
                    children
                        .unreached
                        .extend(names.into_iter().map(|nation| (nation, reason)));
                }
            }
        }
        children
    }

    /// Invariant 7 at this node's own boundary: each live peer that wants
    /// the message but may not have it, with the policy's reason (nations
    /// further away are denied by their own neighbours). Returned in the
    /// route rather than audited here, so that the I/O layer writes one
    /// record per message with every peer's outcome.
    fn ineligible_neighbours(
        &self,
        envelope: &Envelope,
        denied: NationSet,
    ) -> Vec<(Nation, crate::policy::Reason)> {
        if denied.is_empty() {
            return Vec::new();
        }
        self.live_peers
            .iter()
            .copied()
            .filter(|&p| self.nations.index(p).is_some_and(|i| denied.contains(i)))
            .filter_map(|peer| match self.release_denial(envelope, peer) {
                Some(Decision::Deny { reason, .. }) => Some((peer, reason)),
                _ => None,
            })
            .collect()
    }

    /// Why `nation` may not hold `envelope`: its marking does not name it,
    /// or its origin did not release it there (this node's own ceilings
    /// when it is the origin; the sealed release set otherwise). `None`
    /// if neither keeps it out.
    fn release_denial(&self, envelope: &Envelope, nation: Nation) -> Option<Decision> {
        let origin = envelope.origin;
        let marking = self
            .policy
            .may_release_to_nation(&envelope.label, Some(origin), nation);
        if !marking.is_allow() {
            return Some(marking);
        }
        if origin == self.nation {
            return Some(self.policy.may_forward(&envelope.label, origin, nation)).filter(|d| !d.is_allow());
        }
        (!envelope.released_to.contains(&nation)).then(|| {
            Decision::deny(
                crate::policy::Reason::NotReleasedByOrigin,
                format!("{origin} did not release it to {nation}"),
            )
        })
    }

    /// The path a message from `origin` with `label` takes to `to` over
    /// the live links, as this node sees them: `None` if none reaches it
    /// (held links do not count: a copy held for one has not arrived).
    pub fn live_path(&mut self, origin: Nation, label: &Label, to: Nation) -> Option<Vec<Nation>> {
        let (eligible, _) = self.eligibility(origin, label);
        let (o, t) = (self.nations.index(origin)?, self.nations.index(to)?);
        let tree = self.tree(o, eligible);
        tree.live
            .path(t)
            .map(|path| path.into_iter().map(|i| self.nations.nation(i)).collect())
    }
}

/// The printed form of a label that is not canonical, cut short.
fn malformed_marking(mut printed: String) -> String {
    if printed.len() > MALFORMED_MARKING_MAX {
        let mut end = MALFORMED_MARKING_MAX;
        while !printed.is_char_boundary(end) {
            end -= 1;
        }
        printed.truncate(end);
        printed.push('…');
    }
    printed
}

/// The origin and every nation the label's marking names, as `policy`'s
/// cuts leave it: whatever the origin's ceilings, no other nation may
/// hold it (invariant 2).
fn permitted_nations(policy: &Policy, nations: &Nations, origin: Nation, label: &Label) -> NationSet {
    let mut permitted = NationSet::default();
    for index in 0..nations.len() {
        let nation = nations.nation(index);
        if nation == origin
            || policy
                .may_release_to_nation(label, Some(origin), nation)
                .is_allow()
        {
            permitted.insert(index);
        }
    }
    permitted
}

/// The origin and every nation a label from it may be forwarded to
/// (invariant 2) under the origin's ceilings, which `policy` must hold:
/// the only nations its delivery tree may touch.
fn eligible_nations(policy: &Policy, nations: &Nations, origin: Nation, label: &Label) -> NationSet {
    let mut eligible = NationSet::default();
    for index in 0..nations.len() {
        let nation = nations.nation(index);
        if nation == origin || policy.may_forward(label, origin, nation).is_allow() {
            eligible.insert(index);
        }
    }
    eligible
}

/// The path a message from `origin` with `label` takes to each nation over
/// the configured links when every link is up, by the same trees the nodes
/// use; `None` for a nation no eligible path reaches. Eligible nations
/// only.
pub fn configured_paths(
    policy: &Policy,
    origin: Nation,
    label: &Label,
) -> BTreeMap<Nation, Option<Vec<Nation>>> {
    let nations = Nations::of(policy);
    let mut out = BTreeMap::new();
    let Some(root) = nations.index(origin) else {
        return out;
    };
    let eligible = eligible_nations(policy, &nations, origin, label);
    let tree = Graph::configured(policy, &nations).shortest_paths(root, eligible);
    for index in eligible.iter() {
        let path = tree
            .path(index)
            .map(|p| p.into_iter().map(|i| nations.nation(i)).collect());
        out.insert(nations.nation(index), path);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
