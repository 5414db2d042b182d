//! Turns what a run recorded (sends, deliveries, events) into the report:
//! the oracle's verdict on every (message, subscriber) pair, the delivery
//! matrix, latency per nation pair against the emulated path delay, and
//! the timeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::geo;
use super::oracle::{Marking, Message, Oracle, Subscription, World};
use super::report::{
    EventReport, Finding, LinkReport, MatrixCell, NationReport, PairLatency, Phase, PhaseCount, Report,
    Timeline, Verdict,
};
use super::scenario::{ordered, Action, EventSpec, Scenario};
use super::wan::Wan;
use crate::label::Nation;

/// One publish attempt.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Its sequence number, from 1, per publisher.
    pub seq: u64,
    /// When the publish started.
    pub sent_us: u64,
    /// Whether the node acknowledged it.
    pub acked: bool,
}

/// One delivery to a subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// The publisher's index in the scenario.
    pub publisher: usize,
    /// The message's sequence number.
    pub seq: u64,
    /// When it arrived.
    pub at_us: u64,
}

/// What a run recorded.
pub struct Run<'a> {
    /// The scenario, with the duration that ran.
    pub scenario: &'a Scenario,
    /// The events as scheduled.
    pub events: &'a [EventSpec],
    /// The events as applied, in the same order.
    pub applied: Vec<EventReport>,
    /// Per publisher, every publish.
    pub sent: Vec<Vec<Sent>>,
    /// Per subscriber, every delivery.
    pub delivered: Vec<Vec<Delivered>>,
    /// The emulated network, for its counts.
    pub wan: &'a Wan,
    /// The state of the network at the end.
    pub end_state: World,
    /// How long traffic ran.
    pub duration_us: u64,
}

/// At most this many findings are listed.
const MAX_FINDINGS: usize = 50;
/// Messages this long before an event may still be in flight when it hits.
const IN_FLIGHT_US: u64 = 1_000_000;

/// How long after an event took effect the network may still lose
/// messages because of it: a link or node that went silent is noticed only
/// when QUIC's idle timeout (10 s) passes, and a restored or restarted
/// node's links come back within the longest re-dial back-off (5 s) plus
/// an announcement.
fn settle_us(action: &Action) -> u64 {
    match action {
        Action::Cut { .. } | Action::Revoke { .. } => 1_000_000,
        Action::Restore { .. } | Action::LinkUp { .. } | Action::NodeRestart { .. } => 10_000_000,
        Action::LinkDown { .. } | Action::NodeCrash { .. } => 15_000_000,
    }
}

fn apply(world: &mut World, action: &Action) {
    match action {
        Action::Cut { nation } => {
            world.cut.insert(*nation);
        }
        Action::Restore { nation } => {
            world.cut.remove(nation);
        }
        Action::LinkDown { between: [a, b] } => {
            world.down_links.insert(ordered(*a, *b));
        }
        Action::LinkUp { between: [a, b] } => {
            world.down_links.remove(&ordered(*a, *b));
        }
        Action::NodeCrash { nation } => {
            world.down_nodes.insert(*nation);
        }
        Action::NodeRestart { nation } => {
            world.down_nodes.remove(nation);
        }
        Action::Revoke { principal } => {
            world.revoked.insert(principal.clone());
        }
    }
}

/// Whether `action` touches what `message` needed to reach `sub`, in the
/// world before or after it.
fn touches(
    oracle: &Oracle,
    action: &Action,
    message: &Message,
    sub: &super::scenario::SubscriberSpec,
    worlds: [&World; 2],
) -> bool {
    let on_path = |via: Nation, other: Option<Nation>| {
        worlds
            .iter()
            .any(|world| oracle.on_a_shortest_path(message, sub.nation, world, via, other))
    };
    match action {
        Action::Cut { nation }
        | Action::Restore { nation }
        | Action::NodeCrash { nation }
        | Action::NodeRestart { nation } => {
            *nation == message.origin || *nation == sub.nation || on_path(*nation, None)
        }
        Action::LinkDown { between: [a, b] } | Action::LinkUp { between: [a, b] } => on_path(*a, Some(*b)),
        Action::Revoke { principal } => *principal == sub.principal || *principal == message.publisher,
    }
}

/// The (publisher, subscriber) pairs that must hear from each other
/// before any event: the warm-up waits for them.
pub fn expected_pairs(scenario: &Scenario) -> BTreeSet<(usize, usize)> {
    let oracle = Oracle::new(&scenario.policy);
    let world = World::default();
    let mut pairs = BTreeSet::new();
    for (p, publisher) in scenario.publishers.iter().enumerate() {
        let Some(marking) = oracle.read_marking(&publisher.marking) else {
            continue;
        };
        let message = Message {
            publisher: &publisher.principal,
            origin: publisher.nation,
            topic: &publisher.topic,
            marking: &marking,
        };
        for (s, subscriber) in scenario.subscribers.iter().enumerate() {
            let subscription = Subscription {
                principal: &subscriber.principal,
                pattern: &subscriber.pattern,
            };
            if oracle.may_receive(&message, &subscription, &world)
                && oracle.reachable(&message, subscriber.nation, &world)
            {
                pairs.insert((p, s));
            }
        }
    }
    pairs
}

/// The oracle's judgement on every (message, subscriber) pair, and every
/// figure of the report.
pub fn analyse(run: &Run) -> Report {
    let scenario = run.scenario;
    let oracle = Oracle::new(&scenario.policy);
    let mut applied = run.applied.clone();

    // worlds[k]: the network after the first k events that succeeded.
    let mut worlds = vec![World::default()];
    for (event, report) in run.events.iter().zip(&applied) {
        let mut next = worlds.last().cloned().unwrap_or_default();
        if report.ok {
            apply(&mut next, &event.action);
        }
        worlds.push(next);
    }
    let applied_by = |t: u64| run.applied.iter().filter(|e| e.applied_us <= t).count();
    let started_by = |t: u64| run.applied.iter().filter(|e| e.started_us <= t).count();
    // The latest event whose window holds `t` and that touches what the
    // message needed: its sender or receiver, or a node or link on one of
    // its shortest paths before or after the event.
    let explaining = |t: u64, message: &Message, sub: &super::scenario::SubscriberSpec| {
        run.events
            .iter()
            .zip(&run.applied)
            .enumerate()
            .rev()
            .find(|(i, (event, report))| {
                report.started_us.saturating_sub(IN_FLIGHT_US) <= t
                    && t <= report.applied_us + settle_us(&event.action)
                    && touches(
                        &oracle,
                        &event.action,
                        message,
                        sub,
                        [&worlds[*i], &worlds[*i + 1]],
                    )
            })
            .map(|(i, _)| i)
    };

    // Phases: split at each event's taking effect.
    let mut bounds = vec![0];
    bounds.extend(applied.iter().map(|e| e.applied_us));
    bounds.push(run.duration_us.max(bounds.last().copied().unwrap_or(0)));
    let phases: Vec<Phase> = (0..bounds.len() - 1)
        .map(|i| Phase {
            label: if i == 0 {
                applied
                    .first()
                    .map_or("whole run".to_owned(), |e| format!("before {}", e.action))
            } else {
                format!("after {}", applied[i - 1].action)
            },
            from_us: bounds[i],
            to_us: bounds[i + 1],
        })
        .collect();
    let phase_of = |t: u64| bounds[1..bounds.len() - 1].iter().filter(|&&b| b <= t).count();

    let mut deliveries: HashMap<(usize, u64, usize), (u32, u64)> = HashMap::new();
    let reordered = run.delivered.iter().map(|list| out_of_order(list)).sum();
    for (s, list) in run.delivered.iter().enumerate() {
        for d in list {
            let entry = deliveries.entry((d.publisher, d.seq, s)).or_insert((0, d.at_us));
            entry.0 += 1;
            entry.1 = entry.1.min(d.at_us);
        }
    }

    let markings: Vec<Option<Marking>> = scenario
        .publishers
        .iter()
        .map(|p| oracle.read_marking(&p.marking))
        .collect();
    let mut verdict = Verdict::default();
    let mut cells: BTreeMap<(Nation, Nation), Vec<PhaseCount>> = BTreeMap::new();
    let mut latencies: BTreeMap<(Nation, Nation), Vec<u64>> = BTreeMap::new();
    let mut received_while_cut: BTreeMap<Nation, u64> = BTreeMap::new();
    let mut findings = Vec::new();
    let mut find = |kind: &str, p: usize, seq: u64, s: usize, sent_us: u64, why: String| {
        if findings.len() < MAX_FINDINGS {
            findings.push(Finding {
                kind: kind.to_owned(),
                publisher: scenario.publishers[p].principal.clone(),
                seq,
                subscriber: scenario.subscribers[s].principal.clone(),
                marking: scenario.publishers[p].marking.clone(),
                published_us: sent_us,
                why,
            });
        }
    };

    let last_world = worlds.last().unwrap_or(&worlds[0]);
    for (p, sends) in run.sent.iter().enumerate() {
        let spec = &scenario.publishers[p];
        let Some(marking) = &markings[p] else { continue };
        let message = Message {
            publisher: &spec.principal,
            origin: spec.nation,
            topic: &spec.topic,
            marking,
        };
        for sent in sends {
            verdict.published += 1;
            if sent.acked {
                verdict.acknowledged += 1;
            } else {
                verdict.unacknowledged += 1;
            }
            let (lo, hi) = (
                &worlds[applied_by(sent.sent_us)],
                &worlds[started_by(sent.sent_us)],
            );
            let phase = phase_of(sent.sent_us);
            for (s, sub) in scenario.subscribers.iter().enumerate() {
                let subscription = Subscription {
                    principal: &sub.principal,
                    pattern: &sub.pattern,
                };
                let (count, at_us) = deliveries.get(&(p, sent.seq, s)).copied().unwrap_or((0, 0));
                let arrived = count > 0;
                let allowed_lo = oracle.may_receive(&message, &subscription, lo);
                let allowed_hi = oracle.may_receive(&message, &subscription, hi);
                let cell = cells
                    .entry((spec.nation, sub.nation))
                    .or_insert_with(|| vec![PhaseCount::default(); phases.len()]);
                if arrived {
                    verdict.delivered += 1;
                    cell[phase].delivered += 1;
                    latencies
                        .entry((spec.nation, sub.nation))
                        .or_default()
                        .push(at_us.saturating_sub(sent.sent_us));
                    if lo.cut.contains(&sub.nation) && sub.nation != spec.nation {
                        *received_while_cut.entry(sub.nation).or_default() += 1;
                    }
                }
                if count > 1 {
                    verdict.duplicates += 1;
                    find(
                        "duplicate",
                        p,
                        sent.seq,
                        s,
                        sent.sent_us,
                        format!("delivered {count} times"),
                    );
                }
                if arrived && !allowed_lo && !allowed_hi {
                    verdict.leaks += 1;
                    find(
                        "leak",
                        p,
                        sent.seq,
                        s,
                        sent.sent_us,
                        format!("the policy does not let {} see this", sub.principal),
                    );
                    continue;
                }
                if !sent.acked {
                    continue;
                }
                // With custody, a message cut off only by links or nodes
                // that are down waits for a path: it is due if one was
                // there when it was published, or is there at the end.
                let reach_end = oracle.reachable(&message, sub.nation, last_world);
                let reach_lo = reach_end || oracle.reachable(&message, sub.nation, lo);
                let reach_hi = reach_end || oracle.reachable(&message, sub.nation, hi);
                let eligible = allowed_lo && allowed_hi && reach_lo && reach_hi;
                if eligible {
                    verdict.expected += 1;
                    cell[phase].expected += 1;
                } else if allowed_lo != allowed_hi || reach_lo != reach_hi {
                    // Published while an event was being applied: either
                    // outcome is right.
                    if arrived {
                        verdict.in_transition += 1;
                    }
                    continue;
                }
                // Allowed, but no path at the time: an event cut it off,
                // unless the links never connected them at all.
                let made_unreachable = !eligible && allowed_lo && allowed_hi && {
                    let all_up = World {
                        cut: lo.cut.clone(),
                        revoked: lo.revoked.clone(),
                        ..World::default()
                    };
                    oracle.reachable(&message, sub.nation, &all_up)
                };
                if arrived || !(eligible || made_unreachable) {
                    continue;
                }
                match explaining(sent.sent_us, &message, sub) {
                    Some(event) => {
                        verdict.explained_losses += 1;
                        applied[event].explained_losses += 1;
                    }
                    None => {
                        verdict.unexplained_losses += 1;
                        find(
                            "loss",
                            p,
                            sent.seq,
                            s,
                            sent.sent_us,
                            if made_unreachable {
                                format!("{} was cut off with no event to explain it", sub.principal)
                            } else {
                                format!(
                                    "{} was eligible and reachable, and never received it",
                                    sub.principal
                                )
                            },
                        );
                    }
                }
            }
        }
    }
    verdict.reordered = reordered;
    verdict.passed = verdict.leaks == 0 && verdict.duplicates == 0 && verdict.unexplained_losses == 0;
    verdict.findings = findings;

    let pairs = pair_latencies(scenario, &latencies);
    let end = &run.end_state;
    let capitals = geo::capitals();
    let nations = scenario
        .policy
        .nations()
        .keys()
        .map(|&nation| {
            let capital = capitals.iter().find(|c| c.nation == nation);
            NationReport {
                nation: nation.to_string(),
                capital: capital.map_or_else(String::new, |c| c.name.clone()),
                lat: capital.map_or(0.0, |c| c.lat),
                lon: capital.map_or(0.0, |c| c.lon),
                cut_at_end: end.cut.contains(&nation),
                down_at_end: end.down_nodes.contains(&nation),
                published: run
                    .sent
                    .iter()
                    .zip(&scenario.publishers)
                    .filter(|(_, spec)| spec.nation == nation)
                    .map(|(sends, _)| sends.iter().filter(|s| s.acked).count() as u64)
                    .sum(),
                received: cells
                    .iter()
                    .filter(|((_, to), _)| *to == nation)
                    .flat_map(|(_, counts)| counts.iter().map(|c| c.delivered))
                    .sum(),
                received_while_cut: received_while_cut.get(&nation).copied().unwrap_or(0),
            }
        })
        .collect();
    let links = scenario
        .links
        .iter()
        .map(|(&(a, b), params)| {
            let mut samples: Vec<u64> = [(a, b), (b, a)]
                .iter()
                .filter_map(|key| latencies.get(key))
                .flatten()
                .copied()
                .collect();
            samples.sort_unstable();
            let (datagrams, dropped) = run.wan.counts(a, b);
            LinkReport {
                a: a.to_string(),
                b: b.to_string(),
                delay_us: params.delay.as_micros() as u64,
                jitter_us: params.jitter.as_micros() as u64,
                loss: params.loss,
                bandwidth_mbps: params.bandwidth_bps / 1e6,
                measured_p50_us: (!samples.is_empty()).then(|| percentile(&samples, 50.0)),
                up_at_end: !end.down_links.contains(&(a, b)),
                severed: end.cut.contains(&a) || end.cut.contains(&b),
                datagrams,
                dropped,
            }
        })
        .collect();
    let timeline = timeline(run, &deliveries);
    let matrix = cells
        .into_iter()
        .map(|((origin, receiver), phases)| MatrixCell {
            origin: origin.to_string(),
            receiver: receiver.to_string(),
            phases,
        })
        .collect();
    Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        network_file: scenario.network_file.display().to_string(),
        duration_us: run.duration_us,
        scenario_duration_us: run.duration_us,
        started_at: String::new(),
        wall_time_us: 0,
        publishers: scenario.publishers.clone(),
        subscribers: scenario.subscribers.clone(),
        nations,
        links,
        events: applied,
        phases,
        matrix,
        pairs,
        timeline,
        verdict,
    }
}

/// Deliveries to one subscriber (in arrival order) that came after a
/// later message of the same publisher.
fn out_of_order(arrivals: &[Delivered]) -> u64 {
    let mut newest: HashMap<usize, u64> = HashMap::new();
    let mut late = 0;
    for d in arrivals {
        let last = newest.entry(d.publisher).or_default();
        if d.seq < *last {
            late += 1;
        }
        *last = (*last).max(d.seq);
    }
    late
}

fn percentile(sorted: &[u64], pct: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((pct / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn pair_latencies(scenario: &Scenario, latencies: &BTreeMap<(Nation, Nation), Vec<u64>>) -> Vec<PairLatency> {
    latencies
        .iter()
        .map(|(&(origin, receiver), samples)| {
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let (path_delay_us, path_hops) = fastest_path(scenario, origin, receiver);
            PairLatency {
                origin: origin.to_string(),
                receiver: receiver.to_string(),
                count: sorted.len() as u64,
                min_us: sorted[0],
                p50_us: percentile(&sorted, 50.0),
                p90_us: percentile(&sorted, 90.0),
                p99_us: percentile(&sorted, 99.0),
                max_us: sorted[sorted.len() - 1],
                path_delay_us,
                path_hops,
            }
        })
        .collect()
}

/// The smallest sum of emulated link delays from `from` to `to` over the
/// configured links (Dijkstra), and its number of links: a lower bound on
/// any delivery between them.
pub fn fastest_path(scenario: &Scenario, from: Nation, to: Nation) -> (u64, u32) {
    let mut best: BTreeMap<Nation, (u64, u32)> = BTreeMap::from([(from, (0, 0))]);
    let mut done = BTreeSet::new();
    while let Some((&at, &(delay, hops))) = best
        .iter()
        .filter(|(n, _)| !done.contains(*n))
        .min_by_key(|(_, (delay, _))| *delay)
    {
        if at == to {
            return (delay, hops);
        }
        done.insert(at);
        for (&(a, b), params) in &scenario.links {
            let next = if a == at {
                b
            } else if b == at {
                a
            } else {
                continue;
            };
            let candidate = (delay + params.delay.as_micros() as u64, hops + 1);
            if best.get(&next).is_none_or(|known| candidate.0 < known.0) {
                best.insert(next, candidate);
            }
        }
    }
    (0, 0)
}

fn timeline(run: &Run, deliveries: &HashMap<(usize, u64, usize), (u32, u64)>) -> Timeline {
    // About a hundred buckets, each a whole number of 100 ms.
    let bucket_us = (run.duration_us / 100).max(100_000) / 100_000 * 100_000;
    let buckets = (run.duration_us / bucket_us + 1) as usize;
    let mut published = vec![0; buckets];
    let mut delivered = vec![0; buckets];
    for sends in &run.sent {
        for sent in sends.iter().filter(|s| s.acked) {
            published[((sent.sent_us / bucket_us) as usize).min(buckets - 1)] += 1;
        }
    }
    for &(_, at_us) in deliveries.values() {
        delivered[((at_us / bucket_us) as usize).min(buckets - 1)] += 1;
    }
    Timeline {
        bucket_us,
        published,
        delivered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(publisher: usize, seq: u64) -> Delivered {
        Delivered {
            publisher,
            seq,
            at_us: 0,
        }
    }

    #[test]
    fn publish_order_is_checked_per_publisher() {
        let in_order = [arrival(0, 1), arrival(1, 5), arrival(0, 2), arrival(1, 6)];
        assert_eq!(out_of_order(&in_order), 0);
        let swapped = [arrival(0, 2), arrival(0, 1), arrival(0, 3), arrival(1, 1)];
        assert_eq!(out_of_order(&swapped), 1);
        // A resend of an old one after newer ones counts too.
        assert_eq!(out_of_order(&[arrival(0, 5), arrival(0, 6), arrival(0, 2)]), 1);
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 51);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
