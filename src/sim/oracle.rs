//! The simulator's independent oracle: who should receive a message, worked
//! out from the network file's data alone (levels, communities, ceilings,
//! clearances, links) with its own small evaluation of markings, topics,
//! releasability and suspension. It calls none of the node's policy,
//! label or topic code, so a bug there cannot hide itself here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::label::Nation;
use crate::policy::Policy;

/// The state of the network at one moment, as events change it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Nations cut out.
    pub cut: BTreeSet<Nation>,
    /// Principals whose certificates are revoked.
    pub revoked: BTreeSet<String>,
    /// Nodes crashed and not restarted.
    pub down_nodes: BTreeSet<Nation>,
    /// Links down, each as its two ends in order.
    pub down_links: BTreeSet<(Nation, Nation)>,
}

/// A marking as the oracle reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marking {
    /// Rank of the level, lowest 0.
    pub level: usize,
    /// Compartments, upper case.
    pub compartments: BTreeSet<String>,
    /// `REL TO` names, upper case (nations and communities).
    pub rel_to: BTreeSet<String>,
}

/// A message as the oracle sees it.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The publishing principal.
    pub publisher: &'a str,
    /// Its nation.
    pub origin: Nation,
    /// The topic.
    pub topic: &'a str,
    /// Its marking, read.
    pub marking: &'a Marking,
}

/// A subscription as the oracle sees it.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    /// The subscribing principal.
    pub principal: &'a str,
    /// Its pattern.
    pub pattern: &'a str,
}

struct NationData {
    peers: BTreeSet<Nation>,
    default_ceiling: usize,
    ceilings: BTreeMap<Nation, usize>,
}

struct PrincipalData {
    nation: Nation,
    clearance: usize,
    compartments: BTreeSet<String>,
    subscribe: Vec<String>,
}

/// The oracle for one network.
pub struct Oracle {
    levels: Vec<(String, Option<String>)>,
    communities: BTreeMap<String, BTreeSet<Nation>>,
    nations: BTreeMap<Nation, NationData>,
    principals: BTreeMap<String, PrincipalData>,
}

impl Oracle {
    /// Copies what it needs out of the network file's data.
    pub fn new(policy: &Policy) -> Oracle {
        let scheme = policy.scheme();
        Oracle {
            levels: scheme
                .levels()
                .iter()
                .map(|l| {
                    (
                        l.name.to_ascii_uppercase(),
                        l.short.as_ref().map(|s| s.to_ascii_uppercase()),
                    )
                })
                .collect(),
            communities: scheme.communities().clone(),
            nations: policy
                .nations()
                .iter()
                .map(|(&nation, data)| {
                    let nation_data = NationData {
                        peers: data.peers.clone(),
                        default_ceiling: usize::from(data.default_ceiling.0),
                        ceilings: data
                            .ceilings
                            .iter()
                            .map(|(&n, l)| (n, usize::from(l.0)))
                            .collect(),
                    };
                    (nation, nation_data)
                })
                .collect(),
            principals: policy
                .principals()
                .map(|p| {
                    let data = PrincipalData {
                        nation: p.nation,
                        clearance: usize::from(p.clearance.0),
                        compartments: p.compartments.clone(),
                        subscribe: p.subscribe.iter().map(|s| s.as_str().to_owned()).collect(),
                    };
                    (p.name.clone(), data)
                })
                .collect(),
        }
    }

    /// Reads a marking (`SECRET//SIGINT//REL TO GBR, NATO`). `None` if the
    /// oracle cannot read it; the scenario's markings are checked on load.
    pub fn read_marking(&self, text: &str) -> Option<Marking> {
        let mut blocks = text.split("//").map(str::trim);
        let level_text = blocks.next()?.to_ascii_uppercase();
        let level = self
            .levels
            .iter()
            .position(|(name, short)| *name == level_text || short.as_deref() == Some(level_text.as_str()))?;
        let mut marking = Marking {
            level,
            compartments: BTreeSet::new(),
            rel_to: BTreeSet::new(),
        };
        for block in blocks {
            let upper = block.to_ascii_uppercase();
            if let Some(names) = upper.strip_prefix("REL TO ") {
                marking
                    .rel_to
                    .extend(names.split(',').map(|n| n.trim().to_owned()));
            } else {
                marking
                    .compartments
                    .extend(upper.split('/').map(|c| c.trim().to_owned()));
            }
        }
        Some(marking)
    }

    /// The nation of a principal.
    pub fn nation_of(&self, principal: &str) -> Option<Nation> {
        self.principals.get(principal).map(|p| p.nation)
    }

    /// Whether the `REL TO` names `nation`, directly or by a community.
    fn named(&self, marking: &Marking, nation: Nation) -> bool {
        marking.rel_to.iter().any(|name| {
            name == nation.as_str()
                || self
                    .communities
                    .get(name)
                    .is_some_and(|members| members.contains(&nation))
        })
    }

    fn ceiling(&self, origin: Nation, partner: Nation) -> usize {
        if origin == partner {
            return usize::MAX;
        }
        self.nations.get(&origin).map_or(0, |n| {
            n.ceilings.get(&partner).copied().unwrap_or(n.default_ceiling)
        })
    }

    /// May the message's node hand it to `nation`'s node at all: named by
    /// its releasability, within the origin's ceiling for it, and neither
    /// of them cut out? Its origin always may.
    pub fn nation_eligible(&self, message: &Message, nation: Nation, world: &World) -> bool {
        if nation == message.origin {
            return true;
        }
        !world.cut.contains(&message.origin)
            && !world.cut.contains(&nation)
            && self.named(message.marking, nation)
            && message.marking.level <= self.ceiling(message.origin, nation)
    }

    /// May `subscription` receive `message` under the policy in `world`
    /// (whether or not the network can get it there)?
    pub fn may_receive(&self, message: &Message, subscription: &Subscription, world: &World) -> bool {
        let Some(principal) = self.principals.get(subscription.principal) else {
            return false;
        };
        !world.revoked.contains(subscription.principal)
            && !world.revoked.contains(message.publisher)
            && topic_matches(subscription.pattern, message.topic)
            && principal
                .subscribe
                .iter()
                .any(|p| topic_matches(p, message.topic))
            && message.marking.level <= principal.clearance
            && message.marking.compartments.is_subset(&principal.compartments)
            && self.nation_eligible(message, principal.nation, world)
    }

    /// Can the network carry `message` from its origin to `nation` in
    /// `world`: a path over links that are up, through nodes that are up,
    /// every one of them eligible for it (a relay never carries what it may
    /// not see)?
    pub fn reachable(&self, message: &Message, nation: Nation, world: &World) -> bool {
        let origin = message.origin;
        if world.down_nodes.contains(&origin) || world.down_nodes.contains(&nation) {
            return false;
        }
        if origin == nation {
            return true;
        }
        let usable = |n: Nation| !world.down_nodes.contains(&n) && self.nation_eligible(message, n, world);
        let mut seen = BTreeSet::from([origin]);
        let mut queue = VecDeque::from([origin]);
        while let Some(at) = queue.pop_front() {
            let Some(data) = self.nations.get(&at) else {
                continue;
            };
            for &next in &data.peers {
                let link = if at <= next { (at, next) } else { (next, at) };
                if world.down_links.contains(&link) || !usable(next) || !seen.insert(next) {
                    continue;
                }
                if next == nation {
                    return true;
                }
                queue.push_back(next);
            }
        }
        false
    }
}

impl Oracle {
    /// Hops from `from` to every node the message may cross in `world`
    /// (eligible, up, over links that are up).
    fn hops_from(&self, message: &Message, from: Nation, world: &World) -> BTreeMap<Nation, u32> {
        let usable = |n: Nation| !world.down_nodes.contains(&n) && self.nation_eligible(message, n, world);
        let mut hops = BTreeMap::new();
        if !usable(from) {
            return hops;
        }
        hops.insert(from, 0);
        let mut queue = VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            let here = hops[&at];
            let Some(data) = self.nations.get(&at) else {
                continue;
            };
            for &next in &data.peers {
                let link = if at <= next { (at, next) } else { (next, at) };
                if world.down_links.contains(&link) || !usable(next) || hops.contains_key(&next) {
                    continue;
                }
                hops.insert(next, here + 1);
                queue.push_back(next);
            }
        }
        hops
    }

    /// Whether the node `via`, or the link `via`–`other` when given, lies
    /// on some shortest path (by hops, as delivery trees are built) from
    /// the message's origin to `to` in `world`: what a change to it can
    /// disturb.
    pub fn on_a_shortest_path(
        &self,
        message: &Message,
        to: Nation,
        world: &World,
        via: Nation,
        other: Option<Nation>,
    ) -> bool {
        let from_origin = self.hops_from(message, message.origin, world);
        let Some(&length) = from_origin.get(&to) else {
            return false;
        };
        let to_target = self.hops_from(message, to, world);
        let through = |a: Nation, b: Nation| matches!((from_origin.get(&a), to_target.get(&b)), (Some(x), Some(y)) if x + 1 + y == length);
        match other {
            None => matches!(
                (from_origin.get(&via), to_target.get(&via)),
                (Some(x), Some(y)) if x + y == length
            ),
            Some(other) => through(via, other) || through(other, via),
        }
    }
}

/// Whether a `*` / `>` pattern matches a dotted topic: `*` is one token,
/// `>` one or more to the end.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for token in pattern.split('.') {
        match token {
            ">" => return topic_tokens.next().is_some(),
            "*" => {
                if topic_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn sample() -> (Policy, Oracle) {
        let policy = config::load_network(Path::new("config/network.toml")).unwrap();
        let oracle = Oracle::new(&policy);
        (policy, oracle)
    }

    #[test]
    fn topics_match_like_nats() {
        assert!(topic_matches(">", "a"));
        assert!(topic_matches(">", "a.b.c"));
        assert!(topic_matches("a.>", "a.b"));
        assert!(!topic_matches("a.>", "a"));
        assert!(topic_matches("a.*", "a.b"));
        assert!(!topic_matches("a.*", "a.b.c"));
        assert!(topic_matches("*.missile", "air.missile"));
        assert!(!topic_matches("a.b", "a.b.c"));
        assert!(!topic_matches("a.b.c", "a.b"));
    }

    #[test]
    fn markings_read_by_full_or_short_names() {
        let (_, oracle) = sample();
        let m = oracle.read_marking("s//sigint//REL TO GBR, nato").unwrap();
        assert_eq!(m.level, 3);
        assert_eq!(m.compartments, BTreeSet::from(["SIGINT".to_owned()]));
        assert_eq!(m.rel_to, BTreeSet::from(["GBR".to_owned(), "NATO".to_owned()]));
        assert!(oracle.read_marking("SECRETISH").is_none());
    }

    #[test]
    fn releasability_ceilings_clearance_and_cuts_decide() {
        let (_, oracle) = sample();
        let nato_secret = oracle.read_marking("SECRET//REL TO NATO").unwrap();
        let from_gbr = Message {
            publisher: "gbr.analyst",
            origin: nation("GBR"),
            topic: "intel.report",
            marking: &nato_secret,
        };
        let usa = Subscription {
            principal: "usa.analyst",
            pattern: ">",
        };
        let ukr = Subscription {
            principal: "ukr.analyst",
            pattern: ">",
        };
        let tur = Subscription {
            principal: "tur.analyst",
            pattern: ">",
        };
        let clerk = Subscription {
            principal: "gbr.clerk",
            pattern: ">",
        };
        let mut world = World::default();
        assert!(oracle.may_receive(&from_gbr, &usa, &world));
        // UKR is not in NATO.
        assert!(!oracle.may_receive(&from_gbr, &ukr, &world));
        // GBR releases at most CONFIDENTIAL to TUR.
        assert!(!oracle.may_receive(&from_gbr, &tur, &world));
        // The clerk is cleared RESTRICTED.
        assert!(!oracle.may_receive(&from_gbr, &clerk, &world));
        world.cut.insert(nation("USA"));
        assert!(!oracle.may_receive(&from_gbr, &usa, &world));
        world.cut.clear();
        world.revoked.insert("usa.analyst".into());
        assert!(!oracle.may_receive(&from_gbr, &usa, &world));
    }

    #[test]
    fn shortest_paths_name_the_nodes_and_links_a_message_may_cross() {
        let (_, oracle) = sample();
        let nato = oracle.read_marking("SECRET//REL TO NATO").unwrap();
        let from_dnk = Message {
            publisher: "dnk.analyst",
            origin: nation("DNK"),
            topic: "t",
            marking: &nato,
        };
        let world = World::default();
        // DNK reaches EST in 3 hops: through DEU–GBR, NOR–GBR or SWE–FIN.
        let on = |via: &str, other: Option<&str>| {
            oracle.on_a_shortest_path(&from_dnk, nation("EST"), &world, nation(via), other.map(nation))
        };
        assert!(on("GBR", None) && on("FIN", None) && on("DNK", None) && on("EST", None));
        assert!(on("SWE", Some("FIN")) && on("FIN", Some("SWE")));
        assert!(on("GBR", Some("EST")) && on("FIN", Some("EST")));
        // Not on any 3-hop path.
        assert!(!on("POL", None) && !on("USA", None) && !on("FRA", None));
        assert!(!on("DEU", Some("POL")) && !on("GBR", Some("FRA")));
        // With GBR down, only the SWE–FIN path is left.
        let gbr_down = World {
            down_nodes: [nation("GBR")].into(),
            ..World::default()
        };
        assert!(oracle.on_a_shortest_path(&from_dnk, nation("EST"), &gbr_down, nation("FIN"), None));
        assert!(!oracle.on_a_shortest_path(&from_dnk, nation("EST"), &gbr_down, nation("NOR"), None));
    }

    #[test]
    fn relays_must_be_eligible_and_up() {
        let (_, oracle) = sample();
        // LVA reaches GBR only through EST or LTU–POL.
        let baltic = oracle.read_marking("SECRET//REL TO BALTIC, GBR").unwrap();
        let from_lva = Message {
            publisher: "lva.analyst",
            origin: nation("LVA"),
            topic: "t",
            marking: &baltic,
        };
        let mut world = World::default();
        assert!(oracle.reachable(&from_lva, nation("GBR"), &world));
        world.down_links.insert((nation("EST"), nation("GBR")));
        // POL is not released BALTIC//GBR material, so it cannot relay.
        assert!(!oracle.reachable(&from_lva, nation("GBR"), &world));
        world.down_links.clear();
        world.down_nodes.insert(nation("EST"));
        assert!(!oracle.reachable(&from_lva, nation("GBR"), &world));
    }
}
