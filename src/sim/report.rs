//! What a simulation found, as one value: written as `report.json`, drawn
//! as `report.html` (see `html`), and summed up on the terminal.

use serde::{Deserialize, Serialize};

use super::scenario::{PublisherSpec, SubscriberSpec};

/// Everything one run measured and concluded. Times are microseconds from
/// the start of traffic unless a name says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name (its file name without `.toml`).
    pub scenario: String,
    /// What the scenario shows.
    pub description: String,
    /// The network file it ran.
    pub network_file: String,
    /// How long traffic ran.
    pub duration_us: u64,
    /// How long the scenario file asked for; differs when `--duration`
    /// overrode it.
    pub scenario_duration_us: u64,
    /// When the run started, RFC 3339 (UTC).
    pub started_at: String,
    /// How long the whole run took, set-up and drain included.
    pub wall_time_us: u64,
    /// The traffic: who published what, how often.
    pub publishers: Vec<PublisherSpec>,
    /// Who subscribed to what.
    pub subscribers: Vec<SubscriberSpec>,
    /// Every nation, placed at its capital.
    pub nations: Vec<NationReport>,
    /// Every configured link.
    pub links: Vec<LinkReport>,
    /// The timed events, as scheduled and as applied.
    pub events: Vec<EventReport>,
    /// The intervals between events: phase 0 is before the first event.
    pub phases: Vec<Phase>,
    /// Origin nation × receiving nation, per phase.
    pub matrix: Vec<MatrixCell>,
    /// Latency per origin × receiving nation with any delivery.
    pub pairs: Vec<PairLatency>,
    /// Published and delivered messages over time.
    pub timeline: Timeline,
    /// The oracle's verdict.
    pub verdict: Verdict,
}

/// One nation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NationReport {
    /// Its code.
    pub nation: String,
    /// Its capital.
    pub capital: String,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Cut out of the network when the run ended.
    pub cut_at_end: bool,
    /// Its node was down (crashed, not restarted) when the run ended.
    pub down_at_end: bool,
    /// Messages its publishers had acknowledged.
    pub published: u64,
    /// Messages its subscribers received.
    pub received: u64,
    /// Messages its subscribers received from other nations after it was
    /// cut out (by publish time, after the cut was acknowledged).
    pub received_while_cut: u64,
}

/// One emulated link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkReport {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Emulated one-way delay.
    pub delay_us: u64,
    /// Emulated jitter.
    pub jitter_us: u64,
    /// Emulated loss rate, 0 to 1.
    pub loss: f64,
    /// Emulated bandwidth.
    pub bandwidth_mbps: f64,
    /// Median latency of messages between the two ends' subscribers and
    /// publishers (either way), which go over this link; `None` if none did.
    pub measured_p50_us: Option<u64>,
    /// The link was up (not `link-down`) when the run ended.
    pub up_at_end: bool,
    /// One end was cut out when the run ended, so the link is severed.
    pub severed: bool,
    /// UDP datagrams the emulator carried on this link, both ways.
    pub datagrams: u64,
    /// Datagrams it dropped: loss, a full queue, or the link down.
    pub dropped: u64,
}

/// One timed event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventReport {
    /// As written: `cut USA`, `link-down FIN SWE`, ...
    pub action: String,
    /// When it was due.
    pub at_us: u64,
    /// When it started.
    pub started_us: u64,
    /// When it had taken effect everywhere (for `cut`: the last node's
    /// acknowledgement).
    pub applied_us: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What happened, or why it failed.
    pub detail: String,
    /// Eligible deliveries lost because of it.
    pub explained_losses: u64,
}

/// An interval between events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Such as `before cut USA` or `after cut USA`.
    pub label: String,
    /// Start (by publish time).
    pub from_us: u64,
    /// End.
    pub to_us: u64,
}

/// Messages from one origin nation to one receiving nation's subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixCell {
    /// The origin nation.
    pub origin: String,
    /// The receiving nation.
    pub receiver: String,
    /// Per phase, in order: what the oracle expected and what arrived.
    pub phases: Vec<PhaseCount>,
}

/// Deliveries in one phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PhaseCount {
    /// Deliveries the policy makes eligible (one per message per
    /// subscriber).
    pub expected: u64,
    /// Deliveries that arrived.
    pub delivered: u64,
}

/// Latency from one origin to one receiving nation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairLatency {
    /// The origin nation.
    pub origin: String,
    /// The receiving nation.
    pub receiver: String,
    /// Deliveries measured.
    pub count: u64,
    /// Fastest delivery.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// The emulated one-way delay of the fastest path between the two
    /// nations (the sum of its links' delays): no delivery can beat it.
    pub path_delay_us: u64,
    /// Links on that path.
    pub path_hops: u32,
}

/// Messages over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Width of one bucket.
    pub bucket_us: u64,
    /// Messages published (acknowledged) per bucket.
    pub published: Vec<u64>,
    /// Messages delivered to subscribers per bucket, by arrival time.
    pub delivered: Vec<u64>,
}

/// The oracle's findings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// Publishes attempted.
    pub published: u64,
    /// Publishes the origin node acknowledged.
    pub acknowledged: u64,
    /// Publishes refused or lost with their connection (not counted as
    /// sent).
    pub unacknowledged: u64,
    /// Eligible (message, subscriber) pairs among acknowledged messages.
    pub expected: u64,
    /// Deliveries that arrived (duplicates counted once).
    pub delivered: u64,
    /// Deliveries the policy forbids. Must be 0.
    pub leaks: u64,
    /// Deliveries that arrived more than once. Must be 0.
    pub duplicates: u64,
    /// Eligible deliveries that never came, inside an event's window.
    pub explained_losses: u64,
    /// Eligible deliveries that never came, with no event to explain
    /// them. Must be 0.
    pub unexplained_losses: u64,
    /// Deliveries that arrived after a later message of the same
    /// publisher had reached the same subscriber (publish order broken).
    #[serde(default)]
    pub reordered: u64,
    /// Deliveries during an event's change-over, when either outcome is
    /// allowed (such as a message published while a cut was applied).
    pub in_transition: u64,
    /// Some leaks, duplicates and unexplained losses, to start from.
    pub findings: Vec<Finding>,
    /// Every node's audit log, its hash chain checked after the run
    /// (crashes and restarts included). A broken chain fails the run.
    #[serde(default)]
    pub audit_logs: Vec<AuditCheck>,
    /// `publisher → subscriber` pairs the oracle expected to hear from each
    /// other that had not exchanged a probe when warm-up gave up (30 s):
    /// their losses are unexplained, and this says why.
    #[serde(default)]
    pub warm_up_missing: Vec<String>,
    /// No leak, no duplicate, no unexplained loss.
    pub passed: bool,
}

/// One node's audit log after the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditCheck {
    /// The node.
    pub nation: String,
    /// Whole records in its log.
    pub records: u64,
    /// Whether every record chains to the one before it.
    pub intact: bool,
    /// The first break, or the last hash.
    pub detail: String,
}

/// One wrong delivery or missing one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// `leak`, `duplicate` or `loss`.
    pub kind: String,
    /// The publisher.
    pub publisher: String,
    /// Its sequence number.
    pub seq: u64,
    /// The subscriber concerned.
    pub subscriber: String,
    /// The message's marking.
    pub marking: String,
    /// When it was published.
    pub published_us: u64,
    /// Why the oracle thinks so.
    pub why: String,
}

/// Writes `report.json` and `report.html` into `dir` (created if need
/// be); returns their paths.
pub fn write(
    report: &Report,
    dir: &std::path::Path,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::write(&html, super::html::render(report))?;
    Ok((json, html))
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

impl Report {
    /// The summary table printed after a run.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let v = &self.verdict;
        let _ = writeln!(
            out,
            "scenario {}: {:.1} s of traffic{} (whole run {:.1} s), {} nodes",
            self.scenario,
            self.duration_us as f64 / 1e6,
            if self.duration_us != self.scenario_duration_us {
                format!(
                    " (--duration; the scenario says {:.1} s)",
                    self.scenario_duration_us as f64 / 1e6
                )
            } else {
                String::new()
            },
            self.wall_time_us as f64 / 1e6,
            self.nations.len(),
        );
        let _ = writeln!(
            out,
            "published {} ({} acknowledged, {} not), {} eligible deliveries expected, {} delivered",
            v.published, v.acknowledged, v.unacknowledged, v.expected, v.delivered
        );
        if !self.events.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:>8}  {:<20} {:>10}  {:>8}  detail",
                "at", "event", "took", "losses"
            );
            for e in &self.events {
                let _ = writeln!(
                    out,
                    "  {:>8}  {:<20} {:>10}  {:>8}  {}{}",
                    format!("{:.1} s", e.started_us as f64 / 1e6),
                    e.action,
                    ms(e.applied_us.saturating_sub(e.started_us)),
                    e.explained_losses,
                    if e.ok { "" } else { "FAILED: " },
                    e.detail
                );
            }
        }
        let cut: Vec<&NationReport> = self.nations.iter().filter(|n| n.cut_at_end).collect();
        for n in &cut {
            let _ = writeln!(
                out,
                "\n{} is cut out: it received {} messages from other nations published after the cut",
                n.nation, n.received_while_cut
            );
        }
        let _ = writeln!(
            out,
            "\n  {:<12} {:>7} {:>10} {:>10} {:>12}",
            "pair", "count", "p50", "p99", "path delay"
        );
        let mut pairs: Vec<&PairLatency> = self.pairs.iter().filter(|p| p.origin != p.receiver).collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.path_delay_us));
        let shown = 8.min(pairs.len());
        for p in &pairs[..shown] {
            let _ = writeln!(
                out,
                "  {:<12} {:>7} {:>10} {:>10} {:>12}",
                format!("{}→{}", p.origin, p.receiver),
                p.count,
                ms(p.p50_us),
                ms(p.p99_us),
                ms(p.path_delay_us)
            );
        }
        if pairs.len() > shown {
            let _ = writeln!(out, "  ... {} more pairs in the report", pairs.len() - shown);
        }
        let _ = writeln!(
            out,
            "\n{}: {} leaks, {} duplicates, {} unexplained losses ({} losses explained by events, {} deliveries during a change-over, {} out of publish order)",
            if v.passed { "PASS" } else { "FAIL" },
            v.leaks,
            v.duplicates,
            v.unexplained_losses,
            v.explained_losses,
            v.in_transition,
            v.reordered
        );
        let records: u64 = v.audit_logs.iter().map(|a| a.records).sum();
        let broken: Vec<&AuditCheck> = v.audit_logs.iter().filter(|a| !a.intact).collect();
        let _ = writeln!(
            out,
            "  audit logs: {} records in {} nodes, {}",
            records,
            v.audit_logs.len(),
            if broken.is_empty() {
                "every hash chain intact".to_owned()
            } else {
                format!("BROKEN in {}: {}", broken[0].nation, broken[0].detail)
            }
        );
        if !v.warm_up_missing.is_empty() {
            let _ = writeln!(
                out,
                "  warm-up never connected {} publisher → subscriber pairs, such as {}",
                v.warm_up_missing.len(),
                v.warm_up_missing[0]
            );
        }
        for f in v.findings.iter().take(5) {
            let _ = writeln!(
                out,
                "  {} {}#{} → {} ({}) at {}: {}",
                f.kind,
                f.publisher,
                f.seq,
                f.subscriber,
                f.marking,
                ms(f.published_us),
                f.why
            );
        }
        out
    }
}
