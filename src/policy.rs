//! The network policy (nations, ceilings, principals) and the decisions
//! every node makes: whom it admits, and the three release decisions may
//! publish, may deliver (invariant 1) and may forward (invariant 2). Each
//! decision is an Allow or a Deny with a stable reason code and a sentence
//! for people.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::identity::Identity;
use crate::label::{Label, Level, MarkingScheme, Nation};
use crate::resolution::Quorum;
use crate::topic::{Pattern, Topic};

/// One nation's table of the network file.
#[derive(Debug, Clone)]
pub struct NationPolicy {
    /// Where its node listens (`host:port`).
    pub address: String,
    /// The nations its node links to (links are symmetric).
    pub peers: BTreeSet<Nation>,
    /// The highest level it releases to a partner not in `ceilings`.
    pub default_ceiling: Level,
    /// The highest level it releases to each listed partner.
    pub ceilings: BTreeMap<Nation, Level>,
    /// The SHA-256 of its CA certificate (DER), if the coalition pinned it.
    pub ca_fingerprint: Option<[u8; 32]>,
}

/// A user or system account of one nation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name, such as `gbr.analyst`; its certificate carries it.
    pub name: String,
    /// The nation it belongs to, whose node alone admits it.
    pub nation: Nation,
    /// The highest level it may see or publish.
    pub clearance: Level,
    /// The compartments it holds.
    pub compartments: BTreeSet<String>,
    /// The topics it may publish to.
    pub publish: Vec<Pattern>,
    /// The topics it may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Its roles, such as [`ADMIN_ROLE`].
    pub roles: BTreeSet<String>,
}

/// The first 8 bytes of a digest in hex: enough to tell policies apart
/// at a glance.
pub(crate) fn short_hex(digest: ring::digest::Digest) -> String {
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `name` has the form of a principal name: 1 to 64 lower-case
/// letters, digits, `.`, `-` or `_`.
pub fn is_principal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
}

/// Whether `name` has the form of a principal name of `nation`: in its
/// namespace, such as `gbr.analyst` for GBR.
pub fn is_principal_name_of(name: &str, nation: Nation) -> bool {
    // On every envelope from a peer: no allocation.
    let (name_bytes, code) = (name.as_bytes(), nation.as_str().as_bytes());
    is_principal_name(name)
        && name_bytes.len() > code.len() + 1
        && name_bytes[..code.len()].eq_ignore_ascii_case(code)
        && name_bytes[code.len()] == b'.'
}

/// The role that may run admin commands (status, reload, cut, restore)
/// on its own nation's node.
pub const ADMIN_ROLE: &str = "admin";

/// Every role a principal may hold.
pub const ROLES: &[&str] = &[ADMIN_ROLE];

impl Principal {
    /// Whether the principal may run admin commands on its nation's node.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(ADMIN_ROLE)
    }
}

/// The validated network. Build it with [`crate::config::load_network`].
#[derive(Debug, Clone)]
pub struct Policy {
    scheme: MarkingScheme,
    nations: BTreeMap<Nation, NationPolicy>,
    principals: BTreeMap<String, Principal>,
    /// How many nations' admins must sign a resolution.
    quorum: Quorum,
    /// SHA-256 of the network file's text, so that nodes running
    /// different files stand out in `admin status`.
    file_digest: [u8; 32],
}

/// A stable, machine-readable reason for a decision; it goes into audit
/// records, so codes never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The nation is not in the label's releasability.
    NotReleasable,
    /// The principal's clearance is below the classification.
    ClearanceTooLow,
    /// The principal lacks a compartment of the label.
    MissingCompartment,
    /// The principal's permissions do not cover the topic.
    TopicNotPermitted,
    /// Above the origin's release ceiling for that nation.
    AboveCeiling,
    /// No path of nations that may see the message leads to the nation.
    Unreachable,
    /// The origin did not release the message to the nation (its own
    /// ceilings, or its cuts): the set it sealed does not name it.
    NotReleasedByOrigin,
}

impl Reason {
    /// The stable code, as audit records print it.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotReleasable => "not-releasable",
            Reason::ClearanceTooLow => "clearance-too-low",
            Reason::MissingCompartment => "missing-compartment",
            Reason::TopicNotPermitted => "topic-not-permitted",
            Reason::AboveCeiling => "above-ceiling",
            Reason::Unreachable => "unreachable",
            Reason::NotReleasedByOrigin => "not-released-by-origin",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A release decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every condition holds.
    Allow,
    /// The first condition that failed.
    Deny {
        /// Its stable code.
        reason: Reason,
        /// A sentence for people, naming who and what.
        message: String,
    },
}

impl Decision {
    /// Whether the decision allows.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// A denial for `reason`, explained by `message`.
    pub fn deny(reason: Reason, message: String) -> Decision {
        Decision::Deny { reason, message }
    }

    /// Runs `next` only if this decision allows, so checks chain in order
    /// and the first denial wins.
    pub fn and_then(self, next: impl FnOnce() -> Decision) -> Decision {
        match self {
            Decision::Allow => next(),
            deny => deny,
        }
    }
}

/// Whom a node admits, once the handshake has proved an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission<'a> {
    /// One of the node's own nation's principals: a session.
    Principal(&'a Principal),
    /// A configured peer's node: a link.
    Peer(Nation),
}

/// Why a proved identity is still not admitted; codes are stable, like
/// [`Reason`]'s, and go into audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    /// A principal of another nation: each nation serves its own.
    ForeignPrincipal,
    /// A principal the network file does not list for this nation.
    UnknownPrincipal,
    /// A node that is not one of this node's configured peers.
    NotAPeer,
    /// A nation cut out of the network: nothing of it is admitted.
    CutOut,
}

impl RefusalReason {
    /// The stable code, as audit records print it.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::ForeignPrincipal => "foreign-principal",
            RefusalReason::UnknownPrincipal => "unknown-principal",
            RefusalReason::NotAPeer => "not-a-peer",
            RefusalReason::CutOut => "cut-out",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused connection: the code, and the sentence it is closed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its stable code.
    pub reason: RefusalReason,
    /// The sentence the connection is closed with.
    pub message: String,
}

impl Policy {
    pub(crate) fn new(
        scheme: MarkingScheme,
        nations: BTreeMap<Nation, NationPolicy>,
        principals: BTreeMap<String, Principal>,
        quorum: Quorum,
        file_digest: [u8; 32],
    ) -> Policy {
        Policy {
            scheme,
            nations,
            principals,
            quorum,
            file_digest,
        }
    }

    /// How many nations' admins must sign a resolution.
    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// This policy with `suspended` cut out of the network: released
    /// nothing (by any label, community or ceiling), linked to no one, so
    /// in no delivery tree, and admitted nowhere. Replaces any earlier
    /// suspension.
    pub fn with_suspended(&self, suspended: &BTreeSet<Nation>) -> Policy {
        let mut policy = self.clone();
        policy.scheme = self.scheme.with_suspended(suspended.clone());
        for (nation, table) in &mut policy.nations {
            if suspended.contains(nation) {
                table.peers.clear();
            } else {
                table.peers.retain(|peer| !suspended.contains(peer));
            }
        }
        policy
    }

    /// The nations cut out of the network.
    pub fn suspended(&self) -> &BTreeSet<Nation> {
        self.scheme.suspended()
    }

    /// Whether `nation` is cut out of the network.
    pub fn is_suspended(&self, nation: Nation) -> bool {
        self.scheme.suspended().contains(&nation)
    }

    /// A short digest of what this node enforces: the network file and
    /// the nations cut out. Two nodes that print different digests run
    /// different policies.
    pub fn digest(&self) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(&self.file_digest);
        for nation in self.suspended() {
            context.update(b"\ncut ");
            context.update(nation.as_str().as_bytes());
        }
        short_hex(context.finish())
    }

    /// The levels, nations, communities and compartments markings use.
    pub fn scheme(&self) -> &MarkingScheme {
        &self.scheme
    }

    /// Every nation's table, in code order.
    pub fn nations(&self) -> &BTreeMap<Nation, NationPolicy> {
        &self.nations
    }

    /// One nation's table, if the network has that nation.
    pub fn nation(&self, nation: Nation) -> Option<&NationPolicy> {
        self.nations.get(&nation)
    }

    /// Every principal, by name.
    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.principals.values()
    }

    /// The principal with this name, if any.
    pub fn principal(&self, name: &str) -> Option<&Principal> {
        self.principals.get(name)
    }

    /// Whom the node of `here` admits: its own nation's principals, and the
    /// nodes of its configured peers. Everyone else is refused, even with a
    /// certificate from their own nation's CA.
    pub fn admit(&self, here: Nation, identity: &Identity) -> Result<Admission<'_>, Refusal> {
        let refuse = |reason, message| Err(Refusal { reason, message });
        if self.is_suspended(identity.nation()) {
            return refuse(
                RefusalReason::CutOut,
                format!("{} is cut out of the network", identity.nation()),
            );
        }
        match identity {
            Identity::Principal { nation, name } if *nation != here => refuse(
                RefusalReason::ForeignPrincipal,
                format!("principal {name} belongs to {nation}, this node serves {here}"),
            ),
            Identity::Principal { name, .. } => match self.principal(name) {
                Some(principal) if principal.nation == here => Ok(Admission::Principal(principal)),
                _ => refuse(
                    RefusalReason::UnknownPrincipal,
                    format!("principal {name} is not in the network file of {here}"),
                ),
            },
            Identity::Node(nation)
                if self
                    .nation(here)
                    .is_some_and(|policy| policy.peers.contains(nation)) =>
            {
                Ok(Admission::Peer(*nation))
            }
            Identity::Node(nation) => refuse(
                RefusalReason::NotAPeer,
                format!("the node of {nation} is not a configured peer of {here}"),
            ),
        }
    }

    /// The highest level `origin` releases to `partner`. A nation releases
    /// everything to itself; an unknown origin releases nothing above the
    /// lowest level.
    pub fn ceiling(&self, origin: Nation, partner: Nation) -> Level {
        if origin == partner {
            return self.scheme.highest_level();
        }
        match self.nations.get(&origin) {
            Some(policy) => policy
                .ceilings
                .get(&partner)
                .copied()
                .unwrap_or(policy.default_ceiling),
            None => Level(0),
        }
    }

    fn level(&self, level: Level) -> String {
        self.scheme.level_name(level)
    }

    /// May `principal` publish on `topic` with `label`? Never above its own
    /// clearance, never with a compartment it does not hold.
    pub fn may_publish(&self, principal: &Principal, topic: &Topic, label: &Label) -> Decision {
        if !principal.publish.iter().any(|p| p.matches(topic)) {
            return Decision::deny(
                Reason::TopicNotPermitted,
                format!("{} may not publish on {topic}", principal.name),
            );
        }
        self.clearance_covers(principal, label)
    }

    /// May `principal` see a message with `label` from `origin`, whatever
    /// its topic? `origin` is `None` when unknown; then only the `REL TO`
    /// names make a nation releasable.
    pub fn may_read(&self, principal: &Principal, label: &Label, origin: Option<Nation>) -> Decision {
        if !self.scheme.releasable_to(label, origin, principal.nation) {
            return Decision::deny(
                Reason::NotReleasable,
                format!(
                    "{} is not releasable to {} ({})",
                    self.scheme.format(label),
                    principal.nation,
                    principal.name
                ),
            );
        }
        self.clearance_covers(principal, label)
    }

    /// May `principal` subscribe to `pattern`? Only if one of its
    /// subscribe permissions covers everything the pattern matches.
    pub fn may_subscribe(&self, principal: &Principal, pattern: &Pattern) -> Decision {
        if principal
            .subscribe
            .iter()
            .any(|allowed| pattern.is_covered_by(allowed))
        {
            return Decision::Allow;
        }
        let allowed: Vec<&str> = principal.subscribe.iter().map(Pattern::as_str).collect();
        Decision::deny(
            Reason::TopicNotPermitted,
            format!(
                "{} may not subscribe to {pattern}; permitted: {}",
                principal.name,
                if allowed.is_empty() {
                    "nothing".to_owned()
                } else {
                    allowed.join(", ")
                }
            ),
        )
    }

    /// Would the network ever bring a message with `label` from `origin`
    /// to `principal`? Its nation must be the origin or within the
    /// origin's release to it (invariant 2), and it must be able to read
    /// the label (invariant 1, but for the topic).
    pub fn may_receive(&self, principal: &Principal, label: &Label, origin: Nation) -> Decision {
        let nation_first = if principal.nation == origin {
            Decision::Allow
        } else {
            self.may_forward(label, origin, principal.nation)
        };
        nation_first.and_then(|| self.may_read(principal, label, Some(origin)))
    }

    /// Invariant 1: may this message be delivered to `principal`?
    pub fn may_deliver(
        &self,
        principal: &Principal,
        topic: &Topic,
        label: &Label,
        origin: Nation,
    ) -> Decision {
        self.may_read(principal, label, Some(origin)).and_then(|| {
            if principal.subscribe.iter().any(|p| p.matches(topic)) {
                Decision::Allow
            } else {
                Decision::deny(
                    Reason::TopicNotPermitted,
                    format!("{} may not subscribe to {topic}", principal.name),
                )
            }
        })
    }

    /// Invariant 2: may a message with `label` from `origin` be sent to the
    /// node of `peer`? Checked on egress and again on ingress, at every hop.
    pub fn may_forward(&self, label: &Label, origin: Nation, peer: Nation) -> Decision {
        self.may_release_to_nation(label, Some(origin), peer)
            .and_then(|| {
                let ceiling = self.ceiling(origin, peer);
                if label.level <= ceiling {
                    Decision::Allow
                } else {
                    Decision::deny(
                        Reason::AboveCeiling,
                        format!(
                            "{} releases at most {} to {peer}, and this is {}",
                            origin,
                            self.level(ceiling),
                            self.level(label.level)
                        ),
                    )
                }
            })
    }

    /// The nations besides `origin` that a message with `label` is
    /// released to: what the origin's node seals into the envelope, so
    /// that relays, which never learn its ceilings, route by its decision.
    pub fn release_set(&self, origin: Nation, label: &Label) -> BTreeSet<Nation> {
        self.nations
            .keys()
            .copied()
            .filter(|&nation| nation != origin && self.may_forward(label, origin, nation).is_allow())
            .collect()
    }

    /// Is `nation` named by the label's releasability (or the origin)?
    pub fn may_release_to_nation(&self, label: &Label, origin: Option<Nation>, nation: Nation) -> Decision {
        if self.scheme.releasable_to(label, origin, nation) {
            Decision::Allow
        } else {
            Decision::deny(
                Reason::NotReleasable,
                format!("{} is not releasable to {nation}", self.scheme.format(label)),
            )
        }
    }

    fn clearance_covers(&self, principal: &Principal, label: &Label) -> Decision {
        if label.level > principal.clearance {
            return Decision::deny(
                Reason::ClearanceTooLow,
                format!(
                    "{} is cleared {}, below {}",
                    principal.name,
                    self.level(principal.clearance),
                    self.level(label.level)
                ),
            );
        }
        match label.compartments.difference(&principal.compartments).next() {
            Some(missing) => Decision::deny(
                Reason::MissingCompartment,
                format!("{} does not hold compartment {missing}", principal.name),
            ),
            None => Decision::Allow,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{NationFile, NetworkFile, PrincipalFile};
    use proptest::prelude::*;
    use std::path::Path;

    pub(crate) const CODES: [&str; 6] = ["GBR", "FRA", "POL", "FIN", "USA", "UKR"];
    const LEVELS: [&str; 5] = [
        "UNCLASSIFIED",
        "RESTRICTED",
        "CONFIDENTIAL",
        "SECRET",
        "TOP SECRET",
    ];
    const COMPARTMENTS: [&str; 3] = ["AIRDEF", "SIGINT", "HUMINT"];
    pub(crate) const TOKENS: [&str; 3] = ["sigint", "ru", "launch"];

    fn subset<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = Vec<T>> {
        proptest::sample::subsequence(items.to_vec(), 0..=items.len())
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(">".to_owned()),
            Just("sigint.>".to_owned()),
            Just("*.ru.*".to_owned()),
            Just("sigint.ru.launch".to_owned()),
            Just("ru.*".to_owned()),
        ]
    }

    /// A random network: every nation, random communities, random symmetric
    /// links, random ceilings and random principals.
    pub(crate) fn arb_network() -> impl Strategy<Value = Policy> {
        let nations = CODES.len();
        (
            proptest::collection::vec(subset(&CODES), 0..3),
            proptest::collection::vec(any::<bool>(), nations * nations),
            proptest::collection::vec(
                (0usize..5, proptest::collection::vec(0usize..6, nations)),
                nations,
            ),
            proptest::collection::vec(
                (
                    0usize..nations,
                    0usize..5,
                    subset(&COMPARTMENTS),
                    proptest::collection::vec(arb_pattern(), 0..3),
                ),
                1..8,
            ),
        )
            .prop_map(move |(communities, links, ceilings, principals)| {
                let mut file = NetworkFile::default();
                file.classification.compartments = COMPARTMENTS.iter().map(|c| c.to_string()).collect();
                for (index, members) in communities.into_iter().enumerate() {
                    if !members.is_empty() {
                        file.communities.insert(
                            format!("GROUP{index}"),
                            members.iter().map(|m| m.to_string()).collect(),
                        );
                    }
                }
                for (i, code) in CODES.iter().enumerate() {
                    let (default, per_partner) = &ceilings[i];
                    let peers = CODES
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i && links[i.min(j) * nations + i.max(j)])
                        .map(|(_, p)| p.to_string())
                        .collect();
                    let ceilings = CODES
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i && per_partner[j] < 5)
                        .map(|(j, p)| (p.to_string(), LEVELS[per_partner[j]].to_owned()))
                        .collect();
                    file.nations.insert(
                        code.to_string(),
                        NationFile {
                            address: format!("127.0.0.1:{}", 7400 + i),
                            peers,
                            default_ceiling: Some(LEVELS[*default].to_owned()),
                            ceilings,
                            ca_fingerprint: None,
                        },
                    );
                }
                for (index, (nation, clearance, compartments, patterns)) in principals.into_iter().enumerate()
                {
                    file.principals.push(PrincipalFile {
                        name: format!("{}.p{index}", CODES[nation].to_ascii_lowercase()),
                        nation: CODES[nation].to_owned(),
                        clearance: LEVELS[clearance].to_owned(),
                        compartments: compartments.iter().map(|c| c.to_string()).collect(),
                        publish: patterns.clone(),
                        subscribe: patterns,
                        roles: Vec::new(),
                    });
                }
                // Every nation has a principal, who may do nothing, so
                // that any nation can be the origin of a message whose
                // publisher passes the ingress check.
                for code in CODES {
                    file.principals.push(PrincipalFile {
                        name: format!("{}.source", code.to_ascii_lowercase()),
                        nation: code.to_owned(),
                        clearance: LEVELS[0].to_owned(),
                        compartments: Vec::new(),
                        publish: Vec::new(),
                        subscribe: Vec::new(),
                        roles: Vec::new(),
                    });
                }
                file.validate(Path::new("generated.toml"))
                    .expect("generated networks are valid")
            })
    }

    pub(crate) fn arb_label(policy: &Policy) -> impl Strategy<Value = Label> {
        let names: Vec<String> = CODES
            .iter()
            .map(|c| c.to_string())
            .chain(policy.scheme().communities().keys().cloned())
            .collect();
        (0u8..5, subset(&COMPARTMENTS), subset(&names)).prop_map(|(level, compartments, rel_to)| Label {
            level: Level(level),
            compartments: compartments.iter().map(|c| c.to_string()).collect(),
            rel_to: rel_to.into_iter().collect(),
        })
    }

    fn arb_case() -> impl Strategy<Value = (Policy, Label, Label, Nation, Topic)> {
        arb_network().prop_flat_map(|policy| {
            let label = arb_label(&policy);
            let wider = arb_label(&policy);
            let origin = proptest::sample::select(CODES.to_vec()).prop_map(|c| Nation::parse(c).unwrap());
            let topic = proptest::collection::vec(proptest::sample::select(TOKENS.to_vec()), 1..4)
                .prop_map(|tokens| Topic::new(tokens.join(".")).unwrap());
            (Just(policy), label, wider, origin, topic)
        })
    }

    /// Releasability computed independently of `MarkingScheme`, straight
    /// from the community lists.
    fn nations_named(policy: &Policy, label: &Label, origin: Nation) -> BTreeSet<Nation> {
        let mut out = BTreeSet::from([origin]);
        for name in &label.rel_to {
            match policy.scheme().communities().get(name) {
                Some(members) => out.extend(members),
                None => out.extend(Nation::parse(name)),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Invariant 1: an Allow from may_deliver implies every condition.
        #[test]
        fn deliver_allow_implies_every_condition((policy, label, _, origin, topic) in arb_case()) {
            for principal in policy.principals() {
                if policy.may_deliver(principal, &topic, &label, origin).is_allow() {
                    prop_assert!(nations_named(&policy, &label, origin).contains(&principal.nation));
                    prop_assert!(principal.clearance >= label.level);
                    prop_assert!(label.compartments.is_subset(&principal.compartments));
                    prop_assert!(principal.subscribe.iter().any(|p| p.matches(&topic)));
                }
            }
        }

        /// Invariant 2: an Allow from may_forward implies the peer is
        /// releasable and the level is within the origin's ceiling.
        #[test]
        fn forward_allow_implies_releasable_and_within_ceiling((policy, label, _, origin, _) in arb_case()) {
            for &peer in policy.nations().keys() {
                if policy.may_forward(&label, origin, peer).is_allow() {
                    prop_assert!(nations_named(&policy, &label, origin).contains(&peer));
                    let origin_policy = &policy.nations()[&origin];
                    let ceiling = if peer == origin {
                        Level(4)
                    } else {
                        origin_policy.ceilings.get(&peer).copied().unwrap_or(origin_policy.default_ceiling)
                    };
                    prop_assert!(label.level <= ceiling);
                }
            }
        }

        /// Deny is the default: whatever is not explicitly allowed by every
        /// condition is refused.
        #[test]
        fn every_condition_implies_deliver_allow((policy, label, _, origin, topic) in arb_case()) {
            for principal in policy.principals() {
                let all_hold = nations_named(&policy, &label, origin).contains(&principal.nation)
                    && principal.clearance >= label.level
                    && label.compartments.is_subset(&principal.compartments)
                    && principal.subscribe.iter().any(|p| p.matches(&topic));
                prop_assert_eq!(policy.may_deliver(principal, &topic, &label, origin).is_allow(), all_hold);
            }
        }

        /// A nation cut out is released nothing, whatever the label, the
        /// communities it names or the origin: no forward to it, no
        /// delivery to its principals, no link to it, no admission.
        #[test]
        fn a_cut_nation_is_released_nothing(
            (policy, label, _, origin, topic) in arb_case(),
            cut in 0..CODES.len(),
        ) {
            let cut = Nation::parse(CODES[cut]).unwrap();
            let policy = policy.with_suspended(&BTreeSet::from([cut]));
            prop_assert!(!policy.scheme().releasable_nations(&label, Some(origin)).contains(&cut));
            prop_assert!(!policy.scheme().releasable_to(&label, Some(origin), cut));
            prop_assert!(!policy.may_forward(&label, origin, cut).is_allow());
            // And what it publishes goes to no one.
            for &other in policy.nations().keys() {
                prop_assert!(!policy.may_forward(&label, cut, other).is_allow());
            }
            for principal in policy.principals().filter(|p| p.nation == cut) {
                prop_assert!(!policy.may_deliver(principal, &topic, &label, origin).is_allow());
            }
            prop_assert!(policy.nations().values().all(|table| !table.peers.contains(&cut)));
            for &here in policy.nations().keys() {
                prop_assert!(policy.admit(here, &Identity::Node(cut)).is_err());
            }
            // Between everyone else, exactly what the label gave before.
            let before = policy.with_suspended(&BTreeSet::new());
            if origin != cut {
                for &other in policy.nations().keys().filter(|&&n| n != cut) {
                    prop_assert_eq!(
                        policy.may_forward(&label, origin, other).is_allow(),
                        before.may_forward(&label, origin, other).is_allow()
                    );
                }
            }
        }

        /// Widening releasability never removes a recipient or a peer.
        #[test]
        fn widening_never_removes_a_recipient((policy, label, extra, origin, topic) in arb_case()) {
            let mut wider = label.clone();
            wider.rel_to.extend(extra.rel_to);
            for principal in policy.principals() {
                if policy.may_deliver(principal, &topic, &label, origin).is_allow() {
                    prop_assert!(policy.may_deliver(principal, &topic, &wider, origin).is_allow());
                }
            }
            for &peer in policy.nations().keys() {
                if policy.may_forward(&label, origin, peer).is_allow() {
                    prop_assert!(policy.may_forward(&wider, origin, peer).is_allow());
                }
            }
        }

        /// A publisher can never publish above its clearance, nor with a
        /// compartment it does not hold.
        #[test]
        fn publish_never_exceeds_the_publisher((policy, label, _, _, topic) in arb_case()) {
            for principal in policy.principals() {
                if policy.may_publish(principal, &topic, &label).is_allow() {
                    prop_assert!(label.level <= principal.clearance);
                    prop_assert!(label.compartments.is_subset(&principal.compartments));
                    prop_assert!(principal.publish.iter().any(|p| p.matches(&topic)));
                }
            }
        }
    }

    fn sample() -> Policy {
        crate::config::load_network(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml"))
            .unwrap()
    }

    fn reason(decision: Decision) -> Reason {
        match decision {
            Decision::Deny { reason, .. } => reason,
            Decision::Allow => panic!("expected a denial"),
        }
    }

    #[test]
    fn sample_decisions_have_reasons() {
        let policy = sample();
        let scheme = policy.scheme();
        let topic = Topic::new("sigint.ru.launch").unwrap();
        let gbr = Nation::parse("GBR").unwrap();
        let clerk = policy.principal("gbr.clerk").unwrap();
        let fra = policy.principal("fra.analyst").unwrap();
        let secret_to_fra = scheme.parse("SECRET//REL TO GBR, FRA").unwrap();
        let secret_gbr_only = scheme.parse("SECRET//REL TO GBR").unwrap();

        assert!(policy.may_deliver(fra, &topic, &secret_to_fra, gbr).is_allow());
        assert_eq!(
            reason(policy.may_deliver(fra, &topic, &secret_gbr_only, gbr)),
            Reason::NotReleasable
        );
        assert_eq!(
            reason(policy.may_deliver(clerk, &topic, &secret_gbr_only, gbr)),
            Reason::ClearanceTooLow
        );
        let compartmented = scheme.parse("SECRET//SIGINT//REL TO FRA").unwrap();
        assert_eq!(
            reason(policy.may_deliver(fra, &topic, &compartmented, gbr)),
            Reason::MissingCompartment
        );

        let confidential_coalition = scheme.parse("SECRET//REL TO COALITION").unwrap();
        let tur = Nation::parse("TUR").unwrap();
        assert_eq!(
            reason(policy.may_forward(&confidential_coalition, gbr, tur)),
            Reason::AboveCeiling
        );
        assert!(policy
            .may_forward(&confidential_coalition, gbr, Nation::parse("FRA").unwrap())
            .is_allow());
        assert_eq!(
            reason(policy.may_publish(clerk, &topic, &secret_to_fra)),
            Reason::TopicNotPermitted
        );
        let admin = Topic::new("admin.notice").unwrap();
        assert_eq!(
            reason(policy.may_publish(clerk, &admin, &secret_to_fra)),
            Reason::ClearanceTooLow
        );
        let restricted = scheme.parse("R//REL TO GBR").unwrap();
        assert!(policy.may_publish(clerk, &admin, &restricted).is_allow());
    }

    fn refusal(admitted: Result<Admission<'_>, Refusal>) -> RefusalReason {
        match admitted {
            Err(refusal) => refusal.reason,
            Ok(admission) => panic!("expected a refusal, got {admission:?}"),
        }
    }

    fn principal(nation: &str, name: &str) -> Identity {
        Identity::Principal {
            nation: Nation::parse(nation).unwrap(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn admits_own_principals() {
        let policy = sample();
        let gbr = Nation::parse("GBR").unwrap();
        assert_eq!(
            policy.admit(gbr, &principal("GBR", "gbr.clerk")),
            Ok(Admission::Principal(policy.principal("gbr.clerk").unwrap()))
        );
    }

    #[test]
    fn refuses_foreign_principals() {
        let policy = sample();
        let gbr = Nation::parse("GBR").unwrap();
        let refused = policy.admit(gbr, &principal("FRA", "fra.analyst")).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::ForeignPrincipal);
        assert_eq!(
            refused.message,
            "principal fra.analyst belongs to FRA, this node serves GBR"
        );
    }

    #[test]
    fn refuses_unknown_principals() {
        let policy = sample();
        let gbr = Nation::parse("GBR").unwrap();
        assert_eq!(
            refusal(policy.admit(gbr, &principal("GBR", "gbr.nobody"))),
            RefusalReason::UnknownPrincipal
        );
        // A certificate of this nation naming another nation's principal.
        assert_eq!(
            refusal(policy.admit(gbr, &principal("GBR", "fra.analyst"))),
            RefusalReason::UnknownPrincipal
        );
    }

    #[test]
    fn admits_configured_peers() {
        let policy = sample();
        let gbr = Nation::parse("GBR").unwrap();
        let fra = Nation::parse("FRA").unwrap();
        assert_eq!(policy.admit(gbr, &Identity::Node(fra)), Ok(Admission::Peer(fra)));
    }

    #[test]
    fn refuses_nodes_that_are_not_peers() {
        let policy = sample();
        let gbr = Nation::parse("GBR").unwrap();
        for nation in ["FIN", "GBR"] {
            let node = Identity::Node(Nation::parse(nation).unwrap());
            assert_eq!(refusal(policy.admit(gbr, &node)), RefusalReason::NotAPeer);
        }
    }
}
