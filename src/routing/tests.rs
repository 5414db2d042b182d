//! Tests of the routing core: a mesh of cores, one per nation, wired
//! together in memory (announcements and envelopes passed by hand), over
//! random networks, labels, interests and failed links.

use super::*;
use crate::envelope::{MessageIds, Unsigned};
use crate::policy::tests::{arb_label, arb_network, CODES, TOKENS};
use proptest::prelude::*;
use std::collections::BTreeSet;

const START_US: u64 = 1_800_000_000 * 1_000_000;

fn signer() -> Signer {
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Signer::from_pkcs8(der.as_ref()).unwrap()
}

/// What one envelope did in a mesh.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Each session delivery, by session.
    pub deliveries: Vec<SessionId>,
    /// Each envelope copy sent, as (from, to).
    pub crossings: Vec<(Nation, Nation)>,
    /// Envelopes each node took (route returned Ok) from a peer.
    pub received: BTreeMap<Nation, usize>,
    /// Nations that forwarded it on.
    pub forwarders: BTreeSet<Nation>,
    /// Each copy held for a link that is down, as (from, to), not yet
    /// carried ([`Mesh::carry_held`] carries them).
    pub held: Vec<(Nation, Nation)>,
    /// Every route a node returned for it.
    pub routes: Vec<Routed>,
    pub refusals: Vec<(Nation, &'static str)>,
    pub audit: Vec<Record>,
}

/// A route one node returned.
#[derive(Debug)]
pub(crate) struct Routed {
    pub at: Nation,
    /// The peer it came from; `None` at the origin.
    pub from: Option<Nation>,
    pub route: Route,
    /// The node's live peers when it routed.
    pub live_peers: BTreeSet<Nation>,
}

/// Every nation's routing core, linked as the network file says except
/// for the links listed as down.
pub(crate) struct Mesh {
    pub policy: Arc<Policy>,
    pub nodes: BTreeMap<Nation, Routing>,
    pub sessions: BTreeMap<SessionId, (Nation, Arc<Principal>)>,
    pub now: u64,
    ids: MessageIds,
    next_session: SessionId,
    audit: Vec<(Nation, Record)>,
}

impl Mesh {
    pub fn new(policy: Arc<Policy>, down: &BTreeSet<(Nation, Nation)>) -> Mesh {
        Mesh::with_settings(policy, down, RoutingSettings::default())
    }

    pub fn with_settings(
        policy: Arc<Policy>,
        down: &BTreeSet<(Nation, Nation)>,
        settings: RoutingSettings,
    ) -> Mesh {
        let signers: BTreeMap<Nation, Arc<Signer>> = policy
            .nations()
            .keys()
            .map(|&n| (n, Arc::new(signer())))
            .collect();
        let keys: Arc<HashMap<Nation, Vec<u8>>> = Arc::new(
            signers
                .iter()
                .map(|(&n, s)| (n, s.public_key().to_vec()))
                .collect(),
        );
        let nodes = signers
            .iter()
            .map(|(&n, s)| {
                let core = Routing::new(n, policy.clone(), s.clone(), keys.clone(), settings.clone());
                (n, core)
            })
            .collect();
        let mut mesh = Mesh {
            policy,
            nodes,
            sessions: BTreeMap::new(),
            now: START_US,
            ids: MessageIds::new([9; 32]),
            next_session: 1,
            audit: Vec::new(),
        };
        let links: Vec<(Nation, Nation)> = mesh
            .policy
            .nations()
            .iter()
            .flat_map(|(&a, p)| p.peers.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| !down.contains(&(a.min(b), a.max(b))))
            .collect();
        for (a, b) in links {
            let now = mesh.now;
            mesh.nodes.get_mut(&a).unwrap().link_up(b, now);
        }
        mesh.settle();
        mesh
    }

    /// The link between `a` and `b` goes down at both ends, and the news
    /// spreads.
    pub fn link_down(&mut self, a: Nation, b: Nation) {
        let now = self.now;
        self.nodes.get_mut(&a).unwrap().link_down(b, now);
        self.nodes.get_mut(&b).unwrap().link_down(a, now);
        self.settle();
    }

    /// The link between `a` and `b` comes back at both ends.
    pub fn link_up(&mut self, a: Nation, b: Nation) {
        let now = self.now;
        self.nodes.get_mut(&a).unwrap().link_up(b, now);
        self.nodes.get_mut(&b).unwrap().link_up(a, now);
        self.settle();
    }

    /// Passes announcements around until no node has anything to say.
    pub fn settle(&mut self) {
        for _round in 0..10_000 {
            let mut moved = false;
            let nations: Vec<Nation> = self.nodes.keys().copied().collect();
            for &from in &nations {
                while let Some(action) = self.nodes.get_mut(&from).unwrap().poll() {
                    moved = true;
                    match action {
                        Action::Announce { to, announcement } => {
                            for peer in to {
                                let now = self.now;
                                let node = self.nodes.get_mut(&peer).unwrap();
                                node.receive_announcement(from, (*announcement).clone(), now)
                                    .unwrap_or_else(|err| panic!("{from} → {peer}: {err}"));
                            }
                        }
                        Action::Audit(record) => self.audit.push((from, record)),
                    }
                }
            }
            if !moved {
                // Let pending announcements go out, then see if anything moves.
                self.now += ANNOUNCE_INTERVAL_US;
                let now = self.now;
                let mut any = false;
                for node in self.nodes.values_mut() {
                    node.tick(now);
                    any |= !node.actions.is_empty();
                }
                if !any {
                    return;
                }
            }
        }
        panic!("announcements never settled");
    }

    pub fn subscribe(&mut self, principal: &Principal, pattern: &str) -> Result<SessionId, SubscribeError> {
        let session = self.next_session;
        self.next_session += 1;
        let principal = Arc::new(principal.clone());
        let now = self.now;
        let node = self.nodes.get_mut(&principal.nation).unwrap();
        node.open_session(session, principal.clone());
        node.subscribe(session, Pattern::new(pattern).unwrap(), now)?;
        self.sessions.insert(session, (principal.nation, principal));
        Ok(session)
    }

    /// Makes `nation` interested in `pattern` through a session of one of
    /// its principals, whatever that principal may subscribe to: for tests
    /// of where interest takes a message, not of who may read it.
    pub fn interest(&mut self, nation: Nation, pattern: &str) {
        let session = self.next_session;
        self.next_session += 1;
        let principal = Arc::new(
            self.policy
                .principals()
                .find(|p| p.nation == nation)
                .unwrap()
                .clone(),
        );
        let now = self.now;
        let node = self.nodes.get_mut(&nation).unwrap();
        node.open_session(session, principal.clone());
        node.sessions
            .get_mut(&session)
            .unwrap()
            .patterns
            .push(Pattern::new(pattern).unwrap());
        node.interest_changed(now);
        self.sessions.insert(session, (nation, principal));
    }

    pub fn envelope(&self, origin: Nation, label: Label, topic: &Topic) -> Envelope {
        Envelope::from(Unsigned {
            id: self.ids.next_id(),
            origin,
            // A principal of the origin, as ingress checks; the networks
            // of these tests give every nation one.
            publisher: self
                .policy
                .principals()
                .find(|p| p.nation == origin)
                .map_or_else(|| format!("{}.nobody", origin.lowercase()), |p| p.name.clone()),
            topic: topic.clone(),
            released_to: self.policy.release_set(origin, &label),
            label,
            created_us: self.now,
            payload: vec![1, 2, 3],
        })
    }

    /// Publishes at `origin` and carries the envelope wherever the cores
    /// send it over links that are up, as sealed and verified (the I/O
    /// layer's job); copies held for links that are down stay in
    /// `Outcome::held`.
    pub fn publish(&mut self, envelope: &Envelope) -> Outcome {
        let mut outcome = Outcome::default();
        let now = self.now;
        let origin = envelope.origin;
        let route = self
            .nodes
            .get_mut(&origin)
            .unwrap()
            .route(envelope, Source::Local, SealState::Verified, now)
            .expect("a local publish is routed");
        outcome.deliveries.extend(route.deliver.iter().copied());
        // What no path reaches is the I/O layer's to audit (in the
        // message's forward record); here it is audited as a record per
        // nation, as the tests below read it.
        for &(nation, reason) in &route.unreached {
            outcome.audit.push(
                Record::at(now, Event::Forward, Verdict::Deny, reason.code())
                    .subjects(vec![nation.to_string()]),
            );
        }
        let queue: VecDeque<(Nation, Nation)> = route.forward.iter().map(|&to| (origin, to)).collect();
        if !route.forward.is_empty() || !route.held.is_empty() {
            outcome.forwarders.insert(origin);
        }
        outcome.held.extend(route.held.iter().map(|&to| (origin, to)));
        outcome.routes.push(Routed {
            at: origin,
            from: None,
            route,
            live_peers: self.nodes[&origin].live_peers().clone(),
        });
        self.carry(envelope, queue, &mut outcome);
        outcome
    }

    /// Carries the copies held for links that were down, as each outbox
    /// does once its link is back (bring the links up first), and
    /// wherever the cores send them on, until none is held.
    pub fn carry_held(&mut self, envelope: &Envelope, outcome: &mut Outcome) {
        while !outcome.held.is_empty() {
            let queue: VecDeque<(Nation, Nation)> = std::mem::take(&mut outcome.held).into();
            for &(from, to) in &queue {
                assert!(
                    self.nodes[&from].live_peers().contains(&to),
                    "{from}–{to} is still down"
                );
            }
            self.carry(envelope, queue, outcome);
        }
    }

    fn carry(&mut self, envelope: &Envelope, mut queue: VecDeque<(Nation, Nation)>, outcome: &mut Outcome) {
        let now = self.now;
        while let Some((from, to)) = queue.pop_front() {
            outcome.crossings.push((from, to));
            let node = self.nodes.get_mut(&to).unwrap();
            match node.route(envelope, Source::Peer(from), SealState::Verified, now) {
                Ok(route) => {
                    *outcome.received.entry(to).or_default() += 1;
                    outcome.deliveries.extend(route.deliver.iter().copied());
                    if !route.forward.is_empty() || !route.held.is_empty() {
                        outcome.forwarders.insert(to);
                    }
                    queue.extend(route.forward.iter().map(|&next| (to, next)));
                    outcome.held.extend(route.held.iter().map(|&next| (to, next)));
                    outcome.routes.push(Routed {
                        at: to,
                        from: Some(from),
                        route,
                        live_peers: node.live_peers().clone(),
                    });
                }
                Err(refused) => outcome.refusals.push((to, refused.reason)),
            }
        }
        for node in self.nodes.values_mut() {
            while let Some(action) = node.poll() {
                if let Action::Audit(record) = action {
                    outcome.audit.push(record);
                }
            }
        }
    }

    /// Nations reached from `origin` over live links between `allowed`
    /// nations, by a search of its own.
    pub fn reachable(
        &self,
        origin: Nation,
        allowed: &BTreeSet<Nation>,
        down: &BTreeSet<(Nation, Nation)>,
    ) -> BTreeSet<Nation> {
        let mut reached = BTreeSet::from([origin]);
        let mut frontier = vec![origin];
        while let Some(at) = frontier.pop() {
            for &next in &self.policy.nations()[&at].peers {
                let link_up = !down.contains(&(at.min(next), at.max(next)));
                if link_up && allowed.contains(&next) && reached.insert(next) {
                    frontier.push(next);
                }
            }
        }
        reached
    }
}

fn nation(code: &str) -> Nation {
    Nation::parse(code).unwrap()
}

fn eligible(policy: &Policy, label: &Label, origin: Nation) -> BTreeSet<Nation> {
    policy
        .nations()
        .keys()
        .copied()
        .filter(|&n| n == origin || policy.may_forward(label, origin, n).is_allow())
        .collect()
}

/// A network, a label, an origin, a topic, subscriptions (principal
/// index, pattern) and which links fail.
type Case = (Arc<Policy>, Label, Nation, Topic, Vec<(usize, String)>, Vec<bool>);

fn arb_case() -> impl Strategy<Value = Case> {
    arb_network().prop_flat_map(|policy| {
        let nations: Vec<Nation> = policy.nations().keys().copied().collect();
        let principals = policy.principals().count();
        (
            Just(Arc::new(policy.clone())),
            arb_label(&policy),
            proptest::sample::select(nations),
            proptest::collection::vec(proptest::sample::select(TOKENS.to_vec()), 1..4)
                .prop_map(|tokens| Topic::new(tokens.join(".")).unwrap()),
            proptest::collection::vec(
                (
                    0..principals,
                    proptest::sample::select(vec![">", "sigint.>", "*.ru.*", "ru.*", "launch"]),
                ),
                0..8,
            )
            .prop_map(|subs| subs.into_iter().map(|(p, pat)| (p, pat.to_owned())).collect()),
            proptest::collection::vec(any::<bool>(), 36),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over random networks, failed links, labels and interests: nothing
    /// reaches an ineligible nation, every eligible interested reachable
    /// nation gets the message exactly once, no link carries it twice, and
    /// it crosses no link without interest behind it.
    #[test]
    fn trees_deliver_exactly_where_they_may((policy, label, origin, topic, subs, failures) in arb_case()) {
        let nations: Vec<Nation> = policy.nations().keys().copied().collect();
        let mut down = BTreeSet::new();
        for (i, &a) in nations.iter().enumerate() {
            for (j, &b) in nations.iter().enumerate().skip(i + 1) {
                // About one link in four is down.
                if failures[(i * nations.len() + j) % failures.len()] && failures[(j * 5 + i) % failures.len()] {
                    down.insert((a.min(b), a.max(b)));
                }
            }
        }
        let mut mesh = Mesh::new(policy.clone(), &down);
        let principals: Vec<Principal> = policy.principals().cloned().collect();
        for (index, pattern) in &subs {
            let _ = mesh.subscribe(&principals[*index], pattern);
        }
        mesh.settle();
        let envelope = mesh.envelope(origin, label.clone(), &topic);
        let outcome = mesh.publish(&envelope);

        let eligible = eligible(&policy, &label, origin);
        prop_assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
        let mut crossed = BTreeSet::new();
        for &(from, to) in &outcome.crossings {
            prop_assert!(eligible.contains(&from) && eligible.contains(&to), "{from}→{to} outside {eligible:?}");
            prop_assert!(crossed.insert((from, to)), "{from}→{to} carried it twice");
            prop_assert!(!down.contains(&(from.min(to), from.max(to))), "{from}→{to} is down");
        }
        for (&nation, &count) in &outcome.received {
            prop_assert_eq!(count, 1, "{} received it {} times", nation, count);
        }
        // Interest as the sessions hold it (refused subscriptions hold none).
        let interested: BTreeSet<Nation> = mesh
            .nodes
            .iter()
            .filter(|(_, node)| node.sessions.values().any(|s| s.patterns.iter().any(|p| p.matches(&topic))))
            .map(|(&n, _)| n)
            .collect();
        let reachable = mesh.reachable(origin, &eligible, &down);
        for &nation in eligible.iter().filter(|&&n| n != origin) {
            let received = outcome.received.contains_key(&nation);
            if interested.contains(&nation) && reachable.contains(&nation) {
                prop_assert!(received, "{} is interested and reachable but got nothing", nation);
            }
            if !reachable.contains(&nation) {
                prop_assert!(!received, "{} got it over a link that is down", nation);
            }
        }
        // Every nation it reached wanted it or passed it on.
        for nation in outcome.received.keys() {
            prop_assert!(interested.contains(nation) || outcome.forwarders.contains(nation), "{} got it for nothing", nation);
        }
        // Deliveries: exactly the sessions invariant 1 allows, once each.
        let mut expected: Vec<SessionId> = mesh
            .sessions
            .iter()
            .filter(|(_, (nation, principal))| {
                (*nation == origin || outcome.received.contains_key(nation))
                    && policy.may_deliver(principal, &topic, &label, origin).is_allow()
            })
            .map(|(&s, _)| s)
            .filter(|s| {
                let node = &mesh.nodes[&mesh.sessions[s].0];
                node.sessions[s].patterns.iter().any(|p| p.matches(&topic))
            })
            .collect();
        expected.sort_unstable();
        let mut got = outcome.deliveries.clone();
        got.sort_unstable();
        prop_assert_eq!(got, expected);
        // Interested, eligible targets no path reaches are audited, when
        // the origin has heard of their interest at all (a nation whose
        // every link is down never could tell it).
        let configured_reach = mesh.reachable(origin, &eligible, &BTreeSet::new());
        let heard_of = |n: &Nation| mesh.nodes[&origin].known.contains_key(n);
        for &nation in interested.iter().filter(|n| eligible.contains(n) && **n != origin && !reachable.contains(n) && heard_of(n)) {
            let reason = if configured_reach.contains(&nation) { "no-route" } else { "unreachable" };
            prop_assert!(outcome.audit.iter().any(|r| r.reason == reason && r.subjects.contains(&nation.to_string())),
                "{} not audited as {}", nation, reason);
        }
    }
}

fn chain_policy() -> Arc<Policy> {
    ring_policy("")
}

/// The ring, with `gbr_ceilings` (a TOML inline table body) as GBR's
/// bilateral ceilings.
fn ring_policy(gbr_ceilings: &str) -> Arc<Policy> {
    // A ring of four: GBR - EST - LVA - LTU - POL - GBR, with USA hanging
    // off GBR.
    let text = r#"
        [communities]
        EVERYONE = ["GBR", "EST", "LVA", "LTU", "POL", "USA"]
        [nations.GBR]
        address = "127.0.0.1:1"
        peers = ["EST", "POL", "USA"]
        default_ceiling = "SECRET"
        ceilings = { GBR_CEILINGS }
        [nations.EST]
        address = "127.0.0.1:2"
        peers = ["GBR", "LVA"]
        default_ceiling = "SECRET"
        [nations.LVA]
        address = "127.0.0.1:3"
        peers = ["EST", "LTU"]
        default_ceiling = "SECRET"
        [nations.LTU]
        address = "127.0.0.1:4"
        peers = ["LVA", "POL"]
        default_ceiling = "SECRET"
        [nations.POL]
        address = "127.0.0.1:5"
        peers = ["GBR", "LTU"]
        default_ceiling = "SECRET"
        [nations.USA]
        address = "127.0.0.1:6"
        peers = ["GBR"]
        default_ceiling = "SECRET"
        [[principals]]
        name = "gbr.analyst"
        nation = "GBR"
        clearance = "SECRET"
        [[principals]]
        name = "est.analyst"
        nation = "EST"
        clearance = "SECRET"
        [[principals]]
        name = "ltu.analyst"
        nation = "LTU"
        clearance = "SECRET"
        [[principals]]
        name = "pol.analyst"
        nation = "POL"
        clearance = "SECRET"
        [[principals]]
        name = "lva.analyst"
        nation = "LVA"
        clearance = "SECRET"
        publish = [">"]
        subscribe = [">"]
        [[principals]]
        name = "usa.analyst"
        nation = "USA"
        clearance = "SECRET"
        publish = [">"]
        subscribe = ["sigint.>"]
    "#;
    let text = text.replace("GBR_CEILINGS", gbr_ceilings);
    let file: crate::config::NetworkFile = toml::from_str(&text).unwrap();
    Arc::new(file.validate(std::path::Path::new("ring.toml")).unwrap())
}

#[test]
fn a_message_crosses_two_relays_and_interest_is_withdrawn() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    let session = mesh.subscribe(&lva, "sigint.>").unwrap();
    mesh.settle();
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let topic = Topic::new("sigint.ru").unwrap();
    let envelope = mesh.envelope(nation("GBR"), label.clone(), &topic);
    let outcome = mesh.publish(&envelope);
    // GBR → EST → LVA (two hops, tie with GBR → POL → LTU → LVA is longer).
    assert_eq!(
        outcome.crossings,
        [(nation("GBR"), nation("EST")), (nation("EST"), nation("LVA"))]
    );
    assert_eq!(outcome.deliveries, [session]);

    // The last subscriber leaves: nothing crosses any link any more.
    let now = mesh.now;
    mesh.nodes
        .get_mut(&nation("LVA"))
        .unwrap()
        .close_session(session, now);
    mesh.settle();
    let outcome = mesh.publish(&mesh.envelope(nation("GBR"), label, &topic));
    assert!(outcome.crossings.is_empty(), "{:?}", outcome.crossings);
}

#[test]
fn a_failed_link_reroutes_and_an_ineligible_relay_is_avoided() {
    let policy = chain_policy();
    let down = BTreeSet::from([(nation("EST"), nation("GBR"))]);
    let mut mesh = Mesh::new(policy.clone(), &down);
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let topic = Topic::new("sigint.ru").unwrap();
    let all = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let outcome = mesh.publish(&mesh.envelope(nation("GBR"), all, &topic));
    assert_eq!(
        outcome.crossings,
        [
            (nation("GBR"), nation("POL")),
            (nation("POL"), nation("LTU")),
            (nation("LTU"), nation("LVA"))
        ]
    );
    // POL may not see it: the only way left to LVA is gone. Its links are
    // configured but down (EST–GBR): no-route, not unreachable.
    let no_pol = policy
        .scheme()
        .parse("SECRET//REL TO GBR, EST, LVA, LTU")
        .unwrap();
    let outcome = mesh.publish(&mesh.envelope(nation("GBR"), no_pol.clone(), &topic));
    assert!(outcome.crossings.is_empty(), "{:?}", outcome.crossings);
    assert!(outcome
        .audit
        .iter()
        .any(|r| r.reason == "no-route" && r.subjects == ["LVA"]));
    // Without EST either, no configured path of eligible nations exists.
    let only = policy.scheme().parse("SECRET//REL TO GBR, LVA").unwrap();
    let outcome = mesh.publish(&mesh.envelope(nation("GBR"), only, &topic));
    assert!(outcome
        .audit
        .iter()
        .any(|r| r.reason == "unreachable" && r.subjects == ["LVA"]));
    assert_eq!(mesh.nodes[&nation("GBR")].counters().unreachable, 1);
}

#[test]
fn forged_and_unknown_announcements_are_refused() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let now = mesh.now;
    // USA signs an announcement in GBR's name with its own key.
    let forged = Announcement {
        nation: nation("GBR"),
        seq: now + 1,
        links: BTreeSet::new(),
        patterns: [Pattern::new(">").unwrap()].into(),
    }
    .sign(&signer());
    let est = mesh.nodes.get_mut(&nation("EST")).unwrap();
    assert_eq!(
        est.receive_announcement(nation("USA"), forged, now),
        Err(AnnouncementError::BadSignature(nation("GBR")))
    );
    let unknown = Announcement {
        nation: nation("ZZZ"),
        seq: now,
        links: BTreeSet::new(),
        patterns: BTreeSet::new(),
    }
    .sign(&signer());
    assert_eq!(
        est.receive_announcement(nation("USA"), unknown, now),
        Err(AnnouncementError::UnknownNation(nation("ZZZ")))
    );
    let mut refusals = 0;
    while let Some(action) = est.poll() {
        if let Action::Audit(record) = action {
            assert_eq!(record.reason, "bad-announcement");
            refusals += 1;
        }
    }
    assert_eq!(refusals, 2);
    // GBR's genuine links still stand at EST: GBR still reaches LVA via EST.
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let path = est.live_path(nation("GBR"), &label, nation("LVA"));
    assert_eq!(path, Some(vec![nation("GBR"), nation("EST"), nation("LVA")]));
}

#[test]
fn replays_and_ineligible_senders_are_refused_at_ingress() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let topic = Topic::new("sigint.ru").unwrap();
    let label = policy.scheme().parse("SECRET//REL TO GBR, EST, LVA").unwrap();
    let envelope = mesh.envelope(nation("GBR"), label, &topic);
    mesh.publish(&envelope);
    let now = mesh.now;
    let lva_node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    // The same envelope again, by the same or another path.
    let again = lva_node.route(&envelope, Source::Peer(nation("EST")), SealState::Verified, now);
    assert_eq!(again, Err(Refused { reason: "duplicate" }));
    // LTU may not hold it, so it may not relay it, even sealed.
    let mut other = envelope.clone();
    other.id = MessageId([7; 16]);
    let from_ltu = lva_node.route(&other, Source::Peer(nation("LTU")), SealState::Verified, now);
    assert_eq!(
        from_ltu,
        Err(Refused {
            reason: "ineligible-relay"
        })
    );
    // A relay must not pass on an envelope whose seal it has not checked.
    other.id = MessageId([8; 16]);
    let unsealed = lva_node.route(&other, Source::Peer(nation("EST")), SealState::Unverified, now);
    assert_eq!(
        unsealed,
        Err(Refused {
            reason: "unsealed-relay"
        })
    );
    // From the future.
    other.id = MessageId([9; 16]);
    other.created_us = now + seen::MAX_SKEW_US + 1;
    let future = lva_node.route(&other, Source::Peer(nation("EST")), SealState::Verified, now);
    assert_eq!(
        future,
        Err(Refused {
            reason: "from-the-future"
        })
    );
}

#[test]
fn an_unverified_envelope_from_its_origin_is_delivered_but_relayed_only_after_its_seal() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let now = mesh.now;
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let envelope = mesh.envelope(nation("EST"), label, &Topic::new("a.b").unwrap());
    let lva_node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    let route = lva_node
        .route(&envelope, Source::Peer(nation("EST")), SealState::Unverified, now)
        .unwrap();
    assert_eq!(route.deliver.len(), 1);
    assert!(route.forward.is_empty());
    // LVA has no one beyond it that wants it, so even verified it stays.
    assert!(lva_node.relay(&envelope, nation("EST"), now).forward.is_empty());
}

#[test]
fn announcements_expire_without_refresh() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let gbr = mesh.nodes.get_mut(&nation("GBR")).unwrap();
    assert!(gbr.live_path(nation("GBR"), &label, nation("LVA")).is_some());
    // Nobody else ticks or talks: at GBR, everyone else's picture lapses.
    gbr.tick(START_US + ANNOUNCEMENT_TTL_US * 2);
    assert_eq!(gbr.live_path(nation("GBR"), &label, nation("LVA")), None);
}

#[test]
fn a_new_policy_reroutes_around_a_nation_it_no_longer_trusts() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let gbr = mesh.nodes.get_mut(&nation("GBR")).unwrap();
    assert_eq!(
        gbr.live_path(nation("GBR"), &label, nation("LVA")),
        Some(vec![nation("GBR"), nation("EST"), nation("LVA")])
    );
    // GBR now releases at most CONFIDENTIAL to EST: SECRET goes the long
    // way round, through POL and LTU.
    gbr.set_policy(ring_policy(r#"EST = "CONFIDENTIAL""#));
    assert_eq!(
        gbr.live_path(nation("GBR"), &label, nation("LVA")),
        Some(vec![nation("GBR"), nation("POL"), nation("LTU"), nation("LVA")])
    );
}

#[test]
fn announced_interest_is_reduced_and_bounded() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, "sigint.ru").unwrap();
    mesh.subscribe(&lva, "sigint.>").unwrap();
    let node = &mesh.nodes[&nation("LVA")];
    let announced: Vec<&str> = node.own_patterns.iter().map(Pattern::as_str).collect();
    assert_eq!(announced, ["sigint.>"], "a covered pattern adds nothing");

    // More distinct patterns than an announcement may hold: `>` instead.
    let now = mesh.now;
    let node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    for n in 0..=MAX_ANNOUNCED_PATTERNS {
        let session = 1000 + (n / 200) as SessionId;
        if n % 200 == 0 {
            node.open_session(session, Arc::new(lva.clone()));
        }
        node.subscribe(session, Pattern::new(format!("t{n}")).unwrap(), now)
            .unwrap();
    }
    let announced: Vec<&str> = node.own_patterns.iter().map(Pattern::as_str).collect();
    assert_eq!(announced, [">"]);
}

/// A hostile origin signs whatever it likes, so the parts of an envelope
/// its seal cannot vouch for are checked against the network at ingress,
/// straight from the origin or relayed, sealed or not; a refusal burns
/// no id, and the node goes on taking good envelopes.
#[test]
fn what_an_origin_may_not_sign_is_refused_at_ingress() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let now = mesh.now;
    let scheme = policy.scheme();
    let good = mesh.envelope(
        nation("EST"),
        scheme.parse("SECRET//REL TO EVERYONE").unwrap(),
        &Topic::new("a.b").unwrap(),
    );
    type Mutation = fn(&mut Envelope);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "another nation's principal",
            |e| e.publisher = "lva.analyst".into(),
            "unknown-publisher",
        ),
        (
            "a name outside the origin's namespace",
            |e| e.publisher = "analyst".into(),
            "unknown-publisher",
        ),
        (
            "the origin in its own release",
            |e| {
                e.released_to.insert(nation("EST"));
            },
            "release-beyond-marking",
        ),
        (
            "a stranger in the release",
            |e| {
                e.released_to.insert(nation("ZZZ"));
            },
            "release-beyond-marking",
        ),
        (
            "a forged line",
            |e| e.publisher = "est.analyst\n2026 GBR gbr.analyst".into(),
            "unknown-publisher",
        ),
        (
            "a huge name",
            |e| e.publisher = "e".repeat(100_000),
            "unknown-publisher",
        ),
        (
            "unknown compartment",
            |e| {
                e.label.compartments.insert("NOFORN".into());
            },
            "malformed-label",
        ),
        (
            "lower-case nation",
            |e| {
                e.label.rel_to.insert("lva".into());
            },
            "malformed-label",
        ),
        (
            "unknown nation",
            |e| {
                e.label.rel_to.insert("USA, FRA".into());
            },
            "malformed-label",
        ),
        (
            "joined entry",
            |e| {
                e.label.rel_to.insert("LVA, EST".into());
            },
            "malformed-label",
        ),
        (
            "level out of range",
            |e| e.label.level = crate::label::Level(200),
            "malformed-label",
        ),
        (
            "huge label",
            |e| e.label.rel_to.extend((0..20_000).map(|i| format!("X{i}"))),
            "malformed-label",
        ),
        (
            "oversized payload",
            |e| e.payload = vec![0; wire::MAX_PAYLOAD + 1],
            "payload-too-large",
        ),
    ];
    let node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    for (what, mutate, reason) in cases {
        for (from, seal) in [
            (nation("EST"), SealState::Unverified),
            (nation("EST"), SealState::Verified),
            // Relayed to LVA through LTU.
            (nation("LTU"), SealState::Verified),
        ] {
            let mut bad = good.clone();
            mutate(&mut bad);
            let refused = node.route(&bad, Source::Peer(from), seal, now);
            assert_eq!(refused, Err(Refused { reason }), "{what} from {from}");
            let mut records = Vec::new();
            while let Some(action) = node.poll() {
                if let Action::Audit(record) = action {
                    records.push(record);
                }
            }
            assert_eq!(records.len(), 1, "{what}: {records:?}");
            let record = &records[0];
            assert_eq!(
                (record.reason, record.decision),
                (reason, Verdict::Deny),
                "{what}"
            );
            let detail = record.detail.as_deref().unwrap_or_default();
            assert!(!detail.contains('\n') && detail.len() < 300, "{what}: {detail}");
            assert!(
                record.marking.as_deref().unwrap_or_default().len() < 300,
                "{what}"
            );
        }
    }
    // An origin outside the network is that, whatever else is wrong.
    let mut stranger = good.clone();
    stranger.origin = nation("ZZZ");
    stranger.label.level = crate::label::Level(200);
    let refused = node.route(&stranger, Source::Peer(nation("EST")), SealState::Verified, now);
    assert_eq!(
        refused,
        Err(Refused {
            reason: "unknown-origin"
        })
    );
    while node.poll().is_some() {}
    // None of it burned the id: the genuine envelope still goes through.
    let route = node
        .route(&good, Source::Peer(nation("EST")), SealState::Unverified, now)
        .unwrap();
    assert_eq!(route.deliver.len(), 1);
    assert_eq!(route.marking.as_ref(), "SECRET//REL TO EVERYONE");
}

/// Ids are per origin: another origin's envelope under the same id, sealed
/// by its own node, neither suppresses the genuine one nor is suppressed.
#[test]
fn one_origin_cannot_make_anothers_message_a_duplicate() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let topic = Topic::new("a.b").unwrap();
    let genuine = mesh.envelope(nation("GBR"), label, &topic);
    let mut squatter = genuine.clone();
    squatter.origin = nation("EST");
    squatter.publisher = "est.analyst".into();
    squatter.released_to = policy.release_set(nation("EST"), &squatter.label);
    let now = mesh.now;
    let node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    // EST's own, under the id GBR is about to use.
    assert!(node
        .route(&squatter, Source::Peer(nation("EST")), SealState::Unverified, now)
        .is_ok());
    assert!(!node.is_duplicate(nation("GBR"), genuine.id));
    let outcome = mesh.publish(&genuine);
    assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
    assert_eq!(outcome.deliveries.len(), 1);
}

/// Names a hostile label or publisher may carry: known ones, and ones
/// wrong by case, joining, padding, control characters or nonsense.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "GBR",
            "EST",
            "LVA",
            "EVERYONE",
            "est",
            "Everyone",
            "EST, LVA",
            " LVA",
            "LVA\n",
            "USA",
            "ZZZ",
            "",
            "est.analyst",
            "lva.analyst",
            "gbr.analyst",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z., \\n]{0,10}",
    ]
}

proptest! {
    // Each case builds a mesh of six cores, with keys.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a peer puts in the label and publisher of an envelope it
    /// signs, the core refuses it for the first rule it breaks, never
    /// panics, and takes it only if it is canonical and attributed to a
    /// principal of its origin.
    #[test]
    fn a_peers_label_and_publisher_are_checked_against_the_network(
        level in 0u8..8,
        compartments in proptest::collection::btree_set(hostile_name(), 0..3),
        rel_to in proptest::collection::btree_set(hostile_name(), 0..3),
        publisher in hostile_name(),
    ) {
        let policy = chain_policy();
        let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
        let mut envelope = mesh.envelope(
            nation("EST"),
            Label { level: crate::label::Level(level), compartments, rel_to },
            &Topic::new("a.b").unwrap(),
        );
        envelope.publisher = publisher.clone();
        let scheme = policy.scheme();
        let canonical = scheme.parse(&scheme.format(&envelope.label)).as_ref() == Ok(&envelope.label);
        let attributed = crate::policy::is_principal_name_of(&publisher, nation("EST"));
        let now = mesh.now;
        let node = mesh.nodes.get_mut(&nation("LVA")).unwrap();
        let result = node.route(&envelope, Source::Peer(nation("EST")), SealState::Unverified, now);
        match result {
            Err(Refused { reason: "malformed-label" }) => prop_assert!(!canonical),
            Err(Refused { reason: "unknown-publisher" }) => prop_assert!(canonical && !attributed),
            Err(Refused { reason }) => {
                // Well-formed, but the policy keeps it from LVA.
                prop_assert!(canonical && attributed, "{}", reason);
                prop_assert!(reason == "not-releasable" || reason == "not-released-by-origin", "{}", reason);
            }
            Ok(_) => prop_assert!(canonical && attributed),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Invariant 5 in the core: once every other node has cut a nation
    /// (its policy suspended; even with their links to it still up),
    /// nothing crosses to or
    /// through it, whatever the label, the interest or the topology, and
    /// every other interested, eligible nation still gets the message
    /// exactly once when some path of eligible nations reaches it. What
    /// the cut nation itself sends is refused everywhere as `cut-out`.
    #[test]
    fn a_cut_nation_is_sent_nothing_and_relays_nothing(
        (policy, label, origin, topic, subs, _) in arb_case(),
        cut_pick in 0usize..64,
    ) {
        let nations: Vec<Nation> = policy.nations().keys().copied().collect();
        let cut = nations[cut_pick % nations.len()];
        prop_assume!(cut != origin);
        let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
        let principals: Vec<Principal> = policy.principals().cloned().collect();
        for (index, pattern) in &subs {
            let _ = mesh.subscribe(&principals[*index], pattern);
        }
        mesh.settle();
        let suspended = Arc::new(policy.with_suspended(&BTreeSet::from([cut])));
        let now = mesh.now;
        for (&nation, node) in mesh.nodes.iter_mut() {
            if nation == cut {
                // Its links are closed at every other end.
                for &peer in &policy.nations()[&cut].peers {
                    node.link_down(peer, now);
                }
                // What it had queued for those links dies with them.
                while node.poll().is_some() {}
            } else {
                // Their links to it are left up: the suspended policy
                // alone must keep it out of every tree.
                node.set_policy(suspended.clone());
            }
        }
        mesh.settle();

        let envelope = mesh.envelope(origin, label.clone(), &topic);
        let outcome = mesh.publish(&envelope);
        prop_assert!(!outcome.received.contains_key(&cut), "{cut} received it");
        prop_assert!(outcome.crossings.iter().all(|&(a, b)| a != cut && b != cut), "{:?}", outcome.crossings);
        let eligible = eligible(&suspended, &label, origin);
        prop_assert!(!eligible.contains(&cut));
        let no_links_down = BTreeSet::new();
        let reachable = mesh.reachable(origin, &eligible, &no_links_down);
        for &nation in eligible.iter().filter(|&&n| n != origin && n != cut) {
            let interested = mesh
                .nodes[&nation]
                .sessions
                .values()
                .any(|s| s.patterns.iter().any(|p| p.matches(&topic)));
            if interested && reachable.contains(&nation) {
                prop_assert_eq!(outcome.received.get(&nation).copied(), Some(1), "{} missed it", nation);
            }
        }

        // The cut nation's own message, sent to a former neighbour as if
        // its link were still up: refused there, and nowhere delivered.
        let forged = mesh.envelope(cut, label.clone(), &topic);
        for &peer in &policy.nations()[&cut].peers {
            let node = mesh.nodes.get_mut(&peer).unwrap();
            let refused = node.route(&forged, Source::Peer(cut), SealState::Verified, now);
            prop_assert_eq!(refused.err().map(|r| r.reason), Some("cut-out"));
        }
    }
}

/// A line of three: GBR - EST - LVA, whose LVA analyst may subscribe to
/// anything.
fn line_policy() -> Arc<Policy> {
    let text = r#"
        [communities]
        EVERYONE = ["GBR", "EST", "LVA"]
        [nations.GBR]
        address = "127.0.0.1:1"
        peers = ["EST"]
        default_ceiling = "SECRET"
        [nations.EST]
        address = "127.0.0.1:2"
        peers = ["GBR", "LVA"]
        default_ceiling = "SECRET"
        [nations.LVA]
        address = "127.0.0.1:3"
        peers = ["EST"]
        default_ceiling = "SECRET"
        [[principals]]
        name = "gbr.analyst"
        nation = "GBR"
        clearance = "SECRET"
        [[principals]]
        name = "est.analyst"
        nation = "EST"
        clearance = "SECRET"
        subscribe = [">"]
        [[principals]]
        name = "lva.analyst"
        nation = "LVA"
        clearance = "SECRET"
        subscribe = [">"]
    "#;
    let file: crate::config::NetworkFile = toml::from_str(text).unwrap();
    Arc::new(file.validate(std::path::Path::new("line.toml")).unwrap())
}

/// The line with LVA subscribed, and its EST–LVA link gone down at both
/// ends, the news spread.
fn line_with_est_lva_down(settings: RoutingSettings) -> (Mesh, SessionId) {
    let policy = line_policy();
    let mut mesh = Mesh::with_settings(policy.clone(), &BTreeSet::new(), settings);
    let lva = policy.principal("lva.analyst").unwrap().clone();
    let session = mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    mesh.link_down(nation("EST"), nation("LVA"));
    (mesh, session)
}

fn line_envelope(mesh: &Mesh) -> Envelope {
    let label = mesh.policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    mesh.envelope(nation("GBR"), label, &Topic::new("sigint.ru").unwrap())
}

#[test]
fn a_route_says_whether_a_child_passes_the_message_on() {
    let policy = line_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let est = policy.principal("est.analyst").unwrap().clone();
    mesh.subscribe(&est, ">").unwrap();
    mesh.settle();
    // EST alone is interested: GBR's child is only a destination.
    let outcome = mesh.publish(&line_envelope(&mesh));
    let at_gbr = route_at(&outcome, "GBR");
    assert_eq!(at_gbr.forward, [nation("EST")]);
    assert!(!at_gbr.relayed_on);

    // LVA too: EST passes it on, and its own child is a destination.
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let outcome = mesh.publish(&line_envelope(&mesh));
    let at_gbr = route_at(&outcome, "GBR");
    assert_eq!(at_gbr.forward, [nation("EST")]);
    assert!(at_gbr.relayed_on);
    let at_est = route_at(&outcome, "EST");
    assert_eq!(at_est.forward, [nation("LVA")]);
    assert!(!at_est.relayed_on);
}

/// The route a node returned in an outcome.
fn route_at(outcome: &Outcome, at: &str) -> Route {
    let at = nation(at);
    outcome
        .routes
        .iter()
        .find(|routed| routed.at == at)
        .map(|routed| routed.route.clone())
        .unwrap_or_else(|| panic!("{at} routed nothing: {:?}", outcome.routes))
}

#[test]
fn a_message_is_held_for_a_link_that_went_down() {
    let (mut mesh, session) = line_with_est_lva_down(RoutingSettings::default());
    let pair = (nation("EST"), nation("LVA"));
    for at in ["GBR", "EST"] {
        assert!(mesh.nodes[&nation(at)].held_links().contains_key(&pair), "{at}");
    }
    let envelope = line_envelope(&mesh);
    let mut outcome = mesh.publish(&envelope);
    // GBR's live link to EST leads to LVA through the held EST–LVA link.
    let gbr = route_at(&outcome, "GBR");
    assert_eq!(gbr.forward, [nation("EST")]);
    assert!(gbr.held.is_empty() && gbr.unreached.is_empty(), "{gbr:?}");
    assert!(!outcome.audit.iter().any(|r| r.reason == "no-route"));
    // EST keeps it for LVA until the link returns.
    assert_eq!(outcome.crossings, [(nation("GBR"), nation("EST"))]);
    let est = route_at(&outcome, "EST");
    assert_eq!(
        (est.forward.as_slice(), est.held.as_slice()),
        (&[][..], &[nation("LVA")][..])
    );
    assert_eq!(outcome.held, [(nation("EST"), nation("LVA"))]);
    let now = mesh.now;
    let est_node = mesh.nodes.get_mut(&nation("EST")).unwrap();
    let relayed = est_node.relay(&envelope, nation("GBR"), now);
    assert_eq!((relayed.forward, relayed.held), (vec![], vec![nation("LVA")]));
    assert_eq!(est_node.counters().held_for.get(&nation("LVA")), Some(&2));
    // A copy that came from LVA (a relay whose picture differs) is not
    // held to go back to it.
    let back = est_node.relay(&envelope, nation("LVA"), now);
    assert!(back.forward.is_empty() && back.held.is_empty(), "{back:?}");
    // The live picture knows no path: a held copy has not arrived.
    let label = envelope.label.clone();
    let gbr_node = mesh.nodes.get_mut(&nation("GBR")).unwrap();
    assert_eq!(gbr_node.live_path(nation("GBR"), &label, nation("LVA")), None);
    // The outbox sends it when the link returns: LVA's analyst gets it.
    mesh.link_up(nation("EST"), nation("LVA"));
    mesh.carry_held(&envelope, &mut outcome);
    assert_eq!(outcome.deliveries, [session]);
    assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals);
}

#[test]
fn a_held_link_lapses_after_hold_us() {
    // Shorter than an announcement lives: LVA's interest is still known
    // at GBR when the hold ends, so GBR can say it has no route.
    const HOLD_US: u64 = 60 * 1_000_000;
    let settings = RoutingSettings {
        hold_us: HOLD_US,
        ..RoutingSettings::default()
    };
    let (mut mesh, _) = line_with_est_lva_down(settings);
    let pair = (nation("EST"), nation("LVA"));
    let went_down = |mesh: &Mesh, at: &str| mesh.nodes[&nation(at)].held_links()[&pair];
    // EST saw it go down; GBR heard a little later.
    let (est_down, gbr_down) = (went_down(&mesh, "EST"), went_down(&mesh, "GBR"));
    mesh.nodes
        .get_mut(&nation("EST"))
        .unwrap()
        .tick(est_down + HOLD_US);
    assert_eq!(went_down(&mesh, "EST"), est_down, "held for hold_us exactly");
    mesh.now = est_down.max(gbr_down) + HOLD_US + 1;
    let now = mesh.now;
    for node in mesh.nodes.values_mut() {
        node.tick(now);
    }
    mesh.settle();
    for (at, node) in &mesh.nodes {
        assert!(node.held_links().is_empty(), "{at}: {:?}", node.held_links());
    }
    let envelope = line_envelope(&mesh);
    let outcome = mesh.publish(&envelope);
    let gbr = route_at(&outcome, "GBR");
    assert!(gbr.forward.is_empty() && gbr.held.is_empty(), "{gbr:?}");
    assert_eq!(gbr.unreached, [(nation("LVA"), Reason::NoRoute)]);
    assert!(outcome.held.is_empty());
    // Were EST sent it anyway, it would hold nothing for LVA.
    let now = mesh.now;
    let est = mesh.nodes.get_mut(&nation("EST")).unwrap();
    let route = est
        .route(&envelope, Source::Peer(nation("GBR")), SealState::Verified, now)
        .unwrap();
    assert!(route.forward.is_empty() && route.held.is_empty(), "{route:?}");
}

#[test]
fn nothing_is_held_for_a_cut_nation() {
    let (mut mesh, _) = line_with_est_lva_down(RoutingSettings::default());
    let policy = mesh.policy.clone();
    let pair = (nation("EST"), nation("LVA"));
    assert!(mesh.nodes[&nation("EST")].held_links().contains_key(&pair));
    let cut = Arc::new(policy.with_suspended(&BTreeSet::from([nation("LVA")])));
    for at in ["GBR", "EST"] {
        mesh.nodes.get_mut(&nation(at)).unwrap().set_policy(cut.clone());
    }
    mesh.settle();
    for at in ["GBR", "EST"] {
        assert!(mesh.nodes[&nation(at)].held_links().is_empty(), "{at}");
    }
    let envelope = line_envelope(&mesh);
    let outcome = mesh.publish(&envelope);
    assert!(
        outcome.held.is_empty() && outcome.crossings.is_empty(),
        "{outcome:?}"
    );
    // Restored, the link is not held again: it went away on purpose, and
    // only comes back live.
    for at in ["GBR", "EST"] {
        mesh.nodes
            .get_mut(&nation(at))
            .unwrap()
            .set_policy(policy.clone());
    }
    mesh.settle();
    for at in ["GBR", "EST"] {
        assert!(mesh.nodes[&nation(at)].held_links().is_empty(), "{at}");
    }
}

#[test]
fn a_held_link_that_comes_back_is_used_live() {
    let (mut mesh, session) = line_with_est_lva_down(RoutingSettings::default());
    let envelope = line_envelope(&mesh);
    // EST's end comes back before LVA says so (LVA's latest announcement,
    // without EST, reached it): the link is still held, but EST can send
    // on it now, and does.
    let now = mesh.now;
    let lva_says = mesh.nodes.get_mut(&nation("LVA")).unwrap().sign_own(now);
    assert!(lva_says.announcement.links.is_empty());
    let est = mesh.nodes.get_mut(&nation("EST")).unwrap();
    est.receive_announcement(nation("LVA"), (*lva_says).clone(), now)
        .unwrap();
    est.link_up(nation("LVA"), now);
    assert!(est.held_links().contains_key(&(nation("EST"), nation("LVA"))));
    let route = est.relay(&envelope, nation("GBR"), now);
    assert_eq!((route.forward, route.held), (vec![nation("LVA")], vec![]));
    // Both ends up and announced: live again, nothing held anywhere.
    mesh.link_up(nation("EST"), nation("LVA"));
    for (at, node) in &mesh.nodes {
        assert!(node.held_links().is_empty(), "{at}: {:?}", node.held_links());
    }
    let envelope = line_envelope(&mesh);
    let outcome = mesh.publish(&envelope);
    assert_eq!(
        outcome.crossings,
        [(nation("GBR"), nation("EST")), (nation("EST"), nation("LVA"))]
    );
    assert!(outcome.held.is_empty());
    assert_eq!(outcome.deliveries, [session]);
}

#[test]
fn remembered_ids_are_duplicates_and_stale_ones_are_ignored() {
    let (mut mesh, _) = line_with_est_lva_down(RoutingSettings::default());
    let envelope = line_envelope(&mesh);
    let now = mesh.now;
    let lva = mesh.nodes.get_mut(&nation("LVA")).unwrap();
    lva.remember(envelope.origin, envelope.id, envelope.created_us, now);
    assert!(lva.is_duplicate(envelope.origin, envelope.id));
    let again = lva.route(&envelope, Source::Peer(nation("EST")), SealState::Verified, now);
    assert_eq!(again, Err(Refused { reason: "duplicate" }));
    // Too old or too far ahead to be taken now: not remembered.
    let old = MessageId([1; 16]);
    lva.remember(envelope.origin, old, now - seen::MAX_AGE_US - 1, now);
    let ahead = MessageId([2; 16]);
    lva.remember(envelope.origin, ahead, now + seen::MAX_SKEW_US + 1, now);
    assert!(!lva.is_duplicate(envelope.origin, old) && !lva.is_duplicate(envelope.origin, ahead));
}

/// A network, a label (half the time one every nation may hold), an
/// origin, the nations interested in everything, and which configured
/// links go down (those whose entry is 0: about one in three).
type Outage = (Arc<Policy>, Label, Nation, BTreeSet<Nation>, Vec<u8>);

fn arb_outage() -> impl Strategy<Value = Outage> {
    arb_network().prop_flat_map(|policy| {
        let nations: Vec<Nation> = policy.nations().keys().copied().collect();
        let everyone = policy
            .scheme()
            .parse(&format!("UNCLASSIFIED//REL TO {}", CODES.join(", ")))
            .unwrap();
        (
            Just(Arc::new(policy.clone())),
            prop_oneof![Just(everyone), arb_label(&policy)],
            proptest::sample::select(nations.clone()),
            proptest::sample::subsequence(nations.clone(), 0..=nations.len())
                .prop_map(|n| n.into_iter().collect()),
            proptest::collection::vec(0u8..3, nations.len() * nations.len()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over random networks, labels and interests, with random links gone
    /// down after everyone heard of everyone: what a node forwards or
    /// holds goes only to eligible nations (invariant 2), never to the
    /// origin or back to the sender, never both forwarded and held; it
    /// forwards only on links that are up and holds only for links that
    /// are down. Within the hold, no target is `no-route`. And once the
    /// outage ends and the held copies are carried, every interested,
    /// eligible nation a configured path of eligible nations reaches has
    /// the message (a second copy is only ever refused as a duplicate).
    #[test]
    fn held_copies_stay_inside_and_reach_everyone((policy, label, origin, interested, failures) in arb_outage()) {
        let nations: Vec<Nation> = policy.nations().keys().copied().collect();
        let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
        for &nation in &interested {
            mesh.interest(nation, ">");
        }
        mesh.settle();
        let mut down = Vec::new();
        for (i, &a) in nations.iter().enumerate() {
            for (j, &b) in nations.iter().enumerate().skip(i + 1) {
                if policy.nations()[&a].peers.contains(&b) && failures[i * nations.len() + j] == 0 {
                    mesh.link_down(a, b);
                    down.push((a, b));
                }
            }
        }
        let envelope = mesh.envelope(origin, label.clone(), &Topic::new("sigint.ru").unwrap());
        let mut outcome = mesh.publish(&envelope);
        for &(a, b) in &down {
            mesh.link_up(a, b);
        }
        mesh.carry_held(&envelope, &mut outcome);

        let eligible = eligible(&policy, &label, origin);
        prop_assert!(outcome.refusals.iter().all(|&(_, reason)| reason == "duplicate"), "{:?}", outcome.refusals);
        for Routed { at, from, route, live_peers } in &outcome.routes {
            for &to in route.forward.iter().chain(&route.held) {
                prop_assert!(eligible.contains(&to), "{} sent it to {}, outside {:?}", at, to, eligible);
                prop_assert!(to != origin && Some(to) != *from, "{} sent it back to {}", at, to);
            }
            for &to in &route.forward {
                prop_assert!(live_peers.contains(&to) && !route.held.contains(&to), "{} forwarded to {}", at, to);
            }
            for &to in &route.held {
                prop_assert!(policy.nations()[at].peers.contains(&to), "{} is not a peer of {}", to, at);
                prop_assert!(!live_peers.contains(&to), "{} held for {}, whose link is up", at, to);
            }
            if from.is_none() {
                prop_assert!(route.unreached.iter().all(|&(_, reason)| reason == Reason::Unreachable), "{:?}", route.unreached);
            }
        }
        let configured_reach = mesh.reachable(origin, &eligible, &BTreeSet::new());
        for &nation in interested.iter().filter(|&&n| n != origin && eligible.contains(&n)) {
            if configured_reach.contains(&nation) {
                prop_assert!(outcome.received.contains_key(&nation), "{} never got it", nation);
            }
        }
    }
}

/// A member (with its genuine key) that changes its interest hundreds of
/// times a second, each announcement with over 100 KB of patterns: every
/// node it reaches applies, records and passes on at most its pace's
/// worth, each record small, says so once, and still ends up with the
/// member's last word.
#[test]
fn a_churning_member_is_paced_and_its_records_stay_small() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let (gbr, est) = (nation("GBR"), nation("EST"));
    let gbr_signer = mesh.nodes[&gbr].signer.clone();
    let links = mesh.nodes[&est].known[&gbr].signed.announcement.links.clone();
    let patterns = |set: u64| -> BTreeSet<Pattern> {
        (0..MAX_ANNOUNCED_PATTERNS)
            .map(|n| Pattern::new(format!("{set}.{n:0>100}")).unwrap())
            .collect()
    };
    let sets = [patterns(1), patterns(2)];
    let start = mesh.now + 1_000_000;
    let node = mesh.nodes.get_mut(&est).unwrap();
    while node.poll().is_some() {}
    let sent = 300u64;
    for n in 0..sent {
        let announcement = Announcement {
            nation: gbr,
            seq: start + n,
            links: links.clone(),
            patterns: sets[(n % 2) as usize].clone(),
        };
        // A thousand a second.
        let now = start + n * 1_000;
        node.receive_announcement(gbr, announcement.sign(&gbr_signer), now)
            .unwrap();
        node.tick(now);
    }
    let (mut applied, mut rate, mut passed_on) = (Vec::new(), 0, 0);
    while let Some(action) = node.poll() {
        match action {
            Action::Audit(record) if record.reason == "announcement" => applied.push(record),
            Action::Audit(record) if record.reason == "announcement-rate" => rate += 1,
            Action::Announce { .. } => passed_on += 1,
            _ => {}
        }
    }
    // 0.3 s at five a second, after a burst of 16.
    let most = announce::RECEIVED_PACE.burst + 2;
    assert!(applied.len() as u64 <= most, "{} applied", applied.len());
    assert!(passed_on <= most, "{passed_on} passed on");
    assert_eq!(rate, 1, "the churn is recorded once");
    for record in &applied {
        let detail = record.detail.as_deref().unwrap_or_default();
        assert!(detail.len() <= 512, "{} bytes: {detail}", detail.len());
        assert!(detail.contains("(1024 patterns, digest sha256:"), "{detail}");
    }
    // Once it slows down, its last word is applied, with how many were
    // passed over.
    let later = start + sent * 1_000 + announce::RECEIVED_PACE.interval_us;
    assert!(node.next_tick_us() <= later);
    node.tick(later);
    assert_eq!(node.known[&gbr].signed.announcement.seq, start + sent - 1);
    let last: Vec<Record> = std::iter::from_fn(|| node.poll())
        .filter_map(|action| match action {
            Action::Audit(record) if record.reason == "announcement" => Some(record),
            _ => None,
        })
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");
    assert!(
        last[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("passed over"),
        "{last:?}"
    );
}

/// After a restore, what the restored nation created up to the restore is
/// refused wherever it arrives, and nothing created up to then is routed
/// to it (a copy held, or routed again, after the restore); what is
/// created after goes both ways (invariant 5).
#[test]
fn the_cut_period_is_never_released_after_a_restore() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let usa = policy.principal("usa.analyst").unwrap().clone();
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&usa, "sigint.>").unwrap();
    mesh.subscribe(&lva, "sigint.>").unwrap();
    mesh.settle();
    let restored_us = mesh.now;
    for node in mesh.nodes.values_mut() {
        node.set_restored(BTreeMap::from([(nation("USA"), restored_us)]));
    }
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let topic = Topic::new("sigint.ru").unwrap();
    // Created at the restore, so during the cut: USA gets nothing of it.
    let old = mesh.envelope(nation("EST"), label.clone(), &topic);
    let outcome = mesh.publish(&old);
    assert!(!outcome.received.contains_key(&nation("USA")), "{outcome:?}");
    assert_eq!(outcome.received.get(&nation("LVA")), Some(&1), "{outcome:?}");
    // USA's backlog, sent to GBR: refused as cut-out.
    let backlog = mesh.envelope(nation("USA"), label.clone(), &topic);
    let now = mesh.now;
    let gbr = mesh.nodes.get_mut(&nation("GBR")).unwrap();
    let refused = gbr.route(&backlog, Source::Peer(nation("USA")), SealState::Verified, now);
    assert_eq!(refused.err().map(|r| r.reason), Some("cut-out"));
    // Created after the restore: it flows both ways.
    mesh.now += 1;
    let new = mesh.envelope(nation("EST"), label.clone(), &topic);
    assert_eq!(mesh.publish(&new).received.get(&nation("USA")), Some(&1));
    let from_usa = mesh.envelope(nation("USA"), label, &topic);
    assert_eq!(mesh.publish(&from_usa).received.get(&nation("LVA")), Some(&1));
}

/// Relays route by the release set the origin sealed, never by ceilings
/// they do not know: a nation the set leaves out is refused the message
/// even when the marking names it, a relay outside the set may not pass
/// it on, and a set wider than the marking is refused as a lie.
#[test]
fn relays_route_by_the_origins_sealed_release() {
    let policy = chain_policy();
    let mut mesh = Mesh::new(policy.clone(), &BTreeSet::new());
    let lva = policy.principal("lva.analyst").unwrap().clone();
    mesh.subscribe(&lva, ">").unwrap();
    mesh.settle();
    let now = mesh.now;
    let topic = Topic::new("a.b").unwrap();
    let label = policy.scheme().parse("SECRET//REL TO EVERYONE").unwrap();
    let good = mesh.envelope(nation("EST"), label, &topic);
    assert!(good.released_to.contains(&nation("LVA")) && good.released_to.contains(&nation("LTU")));
    let node = mesh.nodes.get_mut(&nation("LVA")).unwrap();

    let mut not_to_lva = good.clone();
    not_to_lva.released_to.remove(&nation("LVA"));
    for (from, seal) in [
        (nation("EST"), SealState::Unverified),
        (nation("LTU"), SealState::Verified),
    ] {
        assert_eq!(
            node.route(&not_to_lva, Source::Peer(from), seal, now),
            Err(Refused {
                reason: "not-released-by-origin"
            }),
            "from {from}"
        );
    }
    let mut not_to_ltu = good.clone();
    not_to_ltu.released_to.remove(&nation("LTU"));
    assert_eq!(
        node.route(&not_to_ltu, Source::Peer(nation("LTU")), SealState::Verified, now),
        Err(Refused {
            reason: "ineligible-relay"
        })
    );
    let mut beyond = good.clone();
    beyond.label = policy.scheme().parse("SECRET//REL TO EST, LVA").unwrap();
    assert_eq!(
        node.route(&beyond, Source::Peer(nation("EST")), SealState::Unverified, now),
        Err(Refused {
            reason: "release-beyond-marking"
        })
    );
    while node.poll().is_some() {}
    // None of it burned the id, and the honest envelope is delivered.
    let route = node
        .route(&good, Source::Peer(nation("EST")), SealState::Unverified, now)
        .unwrap();
    assert_eq!(route.deliver.len(), 1);
}
