//! Scenario files (`config/scenarios/*.toml`): the network, the emulated
//! WAN links, the traffic and the timed events of one simulation, parsed
//! strictly and checked against the network file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError};
use crate::label::Nation;
use crate::policy::Policy;
use crate::topic::{Pattern, Topic};

/// What is wrong with a scenario file; each says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {cause}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing fields.
    #[error("scenario {path} is not valid: {cause}")]
    Parse {
        /// The scenario file.
        path: PathBuf,
        /// The TOML error, with its line and column.
        cause: String,
    },
    /// The network file it names is broken.
    #[error("scenario {path}: its network file is not valid: {cause}")]
    Network {
        /// The scenario file.
        path: PathBuf,
        /// The network file's error.
        cause: ConfigError,
    },
    /// A field is well-formed but makes no sense for this network.
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: Option<String>,
    /// Relative to the scenario file.
    network: PathBuf,
    duration: String,
    #[serde(default)]
    links: LinksFile,
    #[serde(default)]
    publishers: Vec<PublisherFile>,
    #[serde(default)]
    subscribers: Vec<SubscriberFile>,
    #[serde(default)]
    events: Vec<EventFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksFile {
    /// Jitter added to every link's delay unless a link says otherwise.
    jitter: Option<String>,
    /// Loss rate of every link unless a link says otherwise, 0 to 1.
    loss: Option<f64>,
    /// Bandwidth of every link in Mbit/s unless a link says otherwise.
    bandwidth_mbps: Option<f64>,
    /// Links that differ from the defaults.
    #[serde(default, rename = "link")]
    overrides: Vec<LinkFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    between: [String; 2],
    delay: Option<String>,
    jitter: Option<String>,
    loss: Option<f64>,
    bandwidth_mbps: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublisherFile {
    principal: String,
    topic: String,
    marking: String,
    /// Messages per second.
    rate: f64,
    /// Payload bytes.
    #[serde(default = "default_payload")]
    payload: usize,
}

fn default_payload() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberFile {
    principal: String,
    pattern: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    /// `30s`, or a share of the duration such as `50%`.
    at: String,
    /// `cut USA`, `link-down FIN SWE`, `revoke pol.airdef`, ...
    event: String,
}

/// One emulated WAN link's character, in one direction (links are
/// symmetric).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkParams {
    /// One-way propagation delay.
    #[serde(with = "micros")]
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`, that never reorders packets.
    #[serde(with = "micros")]
    pub jitter: Duration,
    /// Share of packets lost, 0 to 1.
    pub loss: f64,
    /// Bits per second.
    pub bandwidth_bps: f64,
}

/// Durations in reports are whole microseconds.
mod micros {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_micros() as u64)
    }
}

/// A publisher: one client session publishing at a steady rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherSpec {
    /// The principal it connects as.
    pub principal: String,
    /// Its nation, the messages' origin.
    pub nation: Nation,
    /// The topic it publishes on.
    pub topic: String,
    /// The marking of every message.
    pub marking: String,
    /// Messages per second.
    pub rate: f64,
    /// Payload bytes per message.
    pub payload: usize,
}

/// A subscriber: one client session with one pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriberSpec {
    /// The principal it connects as.
    pub principal: String,
    /// Its nation.
    pub nation: Nation,
    /// The pattern it subscribes to.
    pub pattern: String,
}

/// What happens at an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// `entente admin cut NATION` on every other node.
    Cut {
        /// The nation cut out.
        nation: Nation,
    },
    /// `entente admin restore NATION` on every other node.
    Restore {
        /// The nation restored.
        nation: Nation,
    },
    /// The emulated link between two nations drops every packet.
    LinkDown {
        /// The two ends.
        between: [Nation; 2],
    },
    /// The link carries packets again.
    LinkUp {
        /// The two ends.
        between: [Nation; 2],
    },
    /// A node stops at once: no close, no flush, its packets dropped.
    NodeCrash {
        /// The nation whose node crashes.
        nation: Nation,
    },
    /// A crashed node starts again from its data directory.
    NodeRestart {
        /// The nation whose node restarts.
        nation: Nation,
    },
    /// `entente certs revoke --principal P`, then a reload of every node.
    Revoke {
        /// The principal revoked.
        principal: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Cut { nation } => write!(f, "cut {nation}"),
            Action::Restore { nation } => write!(f, "restore {nation}"),
            Action::LinkDown { between: [a, b] } => write!(f, "link-down {a} {b}"),
            Action::LinkUp { between: [a, b] } => write!(f, "link-up {a} {b}"),
            Action::NodeCrash { nation } => write!(f, "node-crash {nation}"),
            Action::NodeRestart { nation } => write!(f, "node-restart {nation}"),
            Action::Revoke { principal } => write!(f, "revoke {principal}"),
        }
    }
}

/// A timed event.
#[derive(Debug, Clone, Serialize)]
pub struct EventSpec {
    /// When, from the start of traffic.
    #[serde(with = "micros")]
    pub at: Duration,
    /// What.
    pub action: Action,
}

/// When an event happens: at a fixed time, or at a share of the duration
/// (so `--duration` moves it along).
#[derive(Debug, Clone, Copy)]
enum At {
    Fixed(Duration),
    Share(f64),
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name: the file name without `.toml`.
    pub name: String,
    /// What it shows, for the report.
    pub description: String,
    /// The network file, resolved.
    pub network_file: PathBuf,
    /// The network.
    pub policy: Arc<Policy>,
    /// How long traffic runs.
    pub duration: Duration,
    /// Every configured link's emulated character, keyed by its two ends
    /// in order.
    pub links: BTreeMap<(Nation, Nation), LinkParams>,
    /// The publishers.
    pub publishers: Vec<PublisherSpec>,
    /// The subscribers.
    pub subscribers: Vec<SubscriberSpec>,
    events: Vec<(At, Action)>,
}

impl Scenario {
    /// Loads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses a scenario; `path` names it in errors and anchors the
    /// network file's path.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|err| ScenarioError::Parse {
            path: path.to_owned(),
            cause: err.to_string(),
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_owned(),
            message,
        };
        let network_file = tidy(&path.parent().unwrap_or(Path::new(".")).join(&file.network));
        let policy =
            Arc::new(
                config::load_network(&network_file).map_err(|cause| ScenarioError::Network {
                    path: path.to_owned(),
                    cause,
                })?,
            );
        let duration = parse_duration(&file.duration).map_err(|err| invalid(format!("duration: {err}")))?;
        check_duration(duration).map_err(|err| invalid(format!("duration: {err}")))?;
        let links = links(&file.links, &policy).map_err(&invalid)?;
        let principal_nation = |name: &str, what: &str| {
            policy.principal(name).map(|p| p.nation).ok_or_else(|| {
                invalid(format!(
                    "{what} `{name}` is not a principal of {}",
                    network_file.display()
                ))
            })
        };
        let mut publishers = Vec::new();
        for p in &file.publishers {
            let nation = principal_nation(&p.principal, "publisher")?;
            let topic = Topic::new(p.topic.as_str())
                .map_err(|err| invalid(format!("publisher {}: {err}", p.principal)))?;
            let label = policy
                .scheme()
                .parse(&p.marking)
                .map_err(|err| invalid(format!("publisher {}: {err}", p.principal)))?;
            if let Some(principal) = policy.principal(&p.principal) {
                if let crate::policy::Decision::Deny { message, .. } =
                    policy.may_publish(principal, &topic, &label)
                {
                    return Err(invalid(format!(
                        "publisher {}: every publish would be refused: {message}",
                        p.principal
                    )));
                }
            }
            if !(p.rate > 0.0 && p.rate <= 10_000.0) {
                return Err(invalid(format!(
                    "publisher {}: rate {} is not between 0 and 10000 messages per second",
                    p.principal, p.rate
                )));
            }
            if p.payload < PAYLOAD_HEADER || p.payload > 64 * 1024 {
                return Err(invalid(format!(
                    "publisher {}: payload {} must be {PAYLOAD_HEADER} to 65536 bytes",
                    p.principal, p.payload
                )));
            }
            publishers.push(PublisherSpec {
                principal: p.principal.clone(),
                nation,
                topic: p.topic.clone(),
                marking: p.marking.clone(),
                rate: p.rate,
                payload: p.payload,
            });
        }
        let mut subscribers = Vec::new();
        for s in &file.subscribers {
            let nation = principal_nation(&s.principal, "subscriber")?;
            let pattern = Pattern::new(s.pattern.as_str())
                .map_err(|err| invalid(format!("subscriber {}: {err}", s.principal)))?;
            if let Some(principal) = policy.principal(&s.principal) {
                if let crate::policy::Decision::Deny { message, .. } =
                    policy.may_subscribe(principal, &pattern)
                {
                    return Err(invalid(format!("subscriber {}: {message}", s.principal)));
                }
            }
            subscribers.push(SubscriberSpec {
                principal: s.principal.clone(),
                nation,
                pattern: s.pattern.clone(),
            });
        }
        if publishers.is_empty() || subscribers.is_empty() {
            return Err(invalid(
                "a scenario needs at least one publisher and one subscriber".into(),
            ));
        }
        let mut events = Vec::new();
        for e in &file.events {
            let at = parse_at(&e.at).map_err(|err| invalid(format!("event `{}`: {err}", e.event)))?;
            let action = parse_action(&e.event, &policy)
                .map_err(|err| invalid(format!("event `{}`: {err}", e.event)))?;
            events.push((at, action));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        let scenario = Scenario {
            name,
            description: file.description.unwrap_or_default(),
            network_file,
            policy,
            duration,
            links,
            publishers,
            subscribers,
            events,
        };
        scenario.events().map_err(|err| invalid(format!("event {err}")))?;
        Ok(scenario)
    }

    /// The events in time order, placed within `duration`. An event past
    /// the end, a restart of a node that is not down, or a crash of one
    /// that is, is an error that names it.
    pub fn events(&self) -> Result<Vec<EventSpec>, String> {
        let mut events: Vec<EventSpec> = self
            .events
            .iter()
            .map(|(at, action)| EventSpec {
                at: match *at {
                    At::Fixed(at) => at,
                    At::Share(share) => self.duration.mul_f64(share),
                },
                action: action.clone(),
            })
            .collect();
        events.sort_by_key(|event| event.at);
        let mut down = BTreeSet::new();
        for event in &events {
            let at = event.at;
            if at >= self.duration {
                return Err(format!(
                    "`{}` at {at:?} is past the end of the run ({:?}): move it earlier, or run longer",
                    event.action, self.duration
                ));
            }
            match &event.action {
                Action::NodeCrash { nation } if !down.insert(*nation) => {
                    return Err(format!(
                        "`{}` at {at:?}: {nation}'s node is already down",
                        event.action
                    ));
                }
                Action::NodeRestart { nation } if !down.remove(nation) => {
                    return Err(format!(
                        "`{}` at {at:?}: {nation}'s node is not down (a restart follows a `node-crash {nation}`)",
                        event.action
                    ));
                }
                _ => {}
            }
        }
        Ok(events)
    }

    /// The link between `a` and `b`, if the network file configures one.
    pub fn link(&self, a: Nation, b: Nation) -> Option<&LinkParams> {
        self.links.get(&ordered(a, b))
    }
}

/// Bytes at the start of every payload that identify the message
/// (publisher, sequence number, send time).
pub const PAYLOAD_HEADER: usize = 20;

/// A link's key: its two ends in order.
pub fn ordered(a: Nation, b: Nation) -> (Nation, Nation) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Default link bandwidth: 1 Gbit/s.
const DEFAULT_BANDWIDTH_MBPS: f64 = 1000.0;

fn links(file: &LinksFile, policy: &Policy) -> Result<BTreeMap<(Nation, Nation), LinkParams>, String> {
    let jitter = file
        .jitter
        .as_deref()
        .map(link_delay)
        .transpose()
        .map_err(|err| format!("links.jitter: {err}"))?;
    let loss = check_loss(file.loss.unwrap_or(0.0), "links.loss")?;
    let bandwidth = check_bandwidth(
        file.bandwidth_mbps.unwrap_or(DEFAULT_BANDWIDTH_MBPS),
        "links.bandwidth_mbps",
    )?;
    let mut links = BTreeMap::new();
    for (&nation, nation_policy) in policy.nations() {
        for &peer in &nation_policy.peers {
            let delay = super::geo::path_delay(nation, peer).ok_or_else(|| {
                format!("no capital coordinates for the link {nation}–{peer}; give its delay under [[links.link]]")
            });
            let key = ordered(nation, peer);
            if links.contains_key(&key) {
                continue;
            }
            // A missing capital is only an error if no override names the
            // link's delay; checked below.
            let delay = delay.unwrap_or(Duration::ZERO);
            links.insert(
                key,
                LinkParams {
                    delay,
                    jitter: jitter.unwrap_or(delay / 20),
                    loss,
                    bandwidth_bps: bandwidth,
                },
            );
        }
    }
    let mut overridden = BTreeSet::new();
    for link in &file.overrides {
        let [a, b] = &link.between;
        let (a, b) = (nation_of(a, policy)?, nation_of(b, policy)?);
        let key = ordered(a, b);
        let Some(params) = links.get_mut(&key) else {
            return Err(format!(
                "links.link between {a} and {b}: the network file has no such link"
            ));
        };
        if !overridden.insert(key) {
            return Err(format!("links.link between {a} and {b} is given twice"));
        }
        if let Some(delay) = &link.delay {
            params.delay = link_delay(delay).map_err(|err| format!("links.link {a}–{b} delay: {err}"))?;
            if link.jitter.is_none() && jitter.is_none() {
                params.jitter = params.delay / 20;
            }
        }
        if let Some(j) = &link.jitter {
            params.jitter = link_delay(j).map_err(|err| format!("links.link {a}–{b} jitter: {err}"))?;
        }
        if let Some(loss) = link.loss {
            params.loss = check_loss(loss, "links.link loss")?;
        }
        if let Some(mbps) = link.bandwidth_mbps {
            params.bandwidth_bps = check_bandwidth(mbps, "links.link bandwidth_mbps")?;
        }
    }
    for (&(a, b), params) in &links {
        if params.delay.is_zero() && super::geo::path_delay(a, b).is_none() && !overridden.contains(&(a, b)) {
            return Err(format!(
                "no capital coordinates for the link {a}–{b}; give its delay under [[links.link]]"
            ));
        }
    }
    Ok(links)
}

/// `config/scenarios/../network.toml` as `config/network.toml`, for the
/// report (lexically: a scenario names its network relative to itself).
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn nation_of(text: &str, policy: &Policy) -> Result<Nation, String> {
    Nation::parse(text)
        .filter(|n| policy.nation(*n).is_some())
        .ok_or_else(|| format!("`{text}` is not a nation of the network"))
}

fn check_loss(loss: f64, what: &str) -> Result<f64, String> {
    if (0.0..1.0).contains(&loss) {
        Ok(loss)
    } else {
        Err(format!("{what} {loss} must be at least 0 and below 1"))
    }
}

fn check_bandwidth(mbps: f64, what: &str) -> Result<f64, String> {
    if mbps.is_finite() && mbps >= 0.1 {
        Ok(mbps * 1_000_000.0)
    } else {
        Err(format!("{what} {mbps} must be at least 0.1 Mbit/s"))
    }
}

fn parse_at(text: &str) -> Result<At, String> {
    if let Some(share) = text.trim().strip_suffix('%') {
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a share: write it like 50%"))?;
        if !(0.0..100.0).contains(&share) {
            return Err(format!("`{text}` must be from 0% to below 100%"));
        }
        return Ok(At::Share(share / 100.0));
    }
    parse_duration(text).map(At::Fixed)
}

fn parse_action(text: &str, policy: &Policy) -> Result<Action, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let nation = |i: usize| -> Result<Nation, String> {
        let word = words.get(i).ok_or("a nation is missing")?;
        nation_of(word, policy)
    };
    let arity = |n: usize| {
        if words.len() == n {
            Ok(())
        } else {
            Err(format!("`{}` takes {} argument(s)", words[0], n - 1))
        }
    };
    let link = || -> Result<[Nation; 2], String> {
        arity(3)?;
        let (a, b) = (nation(1)?, nation(2)?);
        let linked = policy.nation(a).is_some_and(|p| p.peers.contains(&b));
        if !linked {
            return Err(format!("{a} and {b} are not linked in the network file"));
        }
        Ok([a, b])
    };
    let action = match words.first().copied() {
        Some("cut") => Action::Cut { nation: { arity(2)?; nation(1)? } },
        Some("restore") => Action::Restore { nation: { arity(2)?; nation(1)? } },
        Some("link-down") => Action::LinkDown { between: link()? },
        Some("link-up") => Action::LinkUp { between: link()? },
        Some("node-crash") => Action::NodeCrash { nation: { arity(2)?; nation(1)? } },
        Some("node-restart") => Action::NodeRestart { nation: { arity(2)?; nation(1)? } },
        Some("revoke") => {
            arity(2)?;
            let principal = words[1];
            if policy.principal(principal).is_none() {
                return Err(format!("`{principal}` is not a principal of the network"));
            }
            Action::Revoke {
                principal: principal.to_owned(),
            }
        }
        _ => {
            return Err(
                "unknown event: use cut N, restore N, link-down A B, link-up A B, node-crash N, node-restart N or revoke PRINCIPAL"
                    .into(),
            )
        }
    };
    Ok(action)
}

/// The longest run: a day, far past any useful scenario, and well inside
/// what a clock can add without overflowing.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The longest one-way delay or jitter of a link.
const MAX_LINK_DELAY: Duration = Duration::from_secs(10);

/// A run's length: more than 0, at most a day.
pub fn check_duration(duration: Duration) -> Result<(), String> {
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(format!("{duration:?} must be more than 0 and at most 24h"));
    }
    Ok(())
}

/// A link's delay or jitter: at most 10 s.
fn link_delay(text: &str) -> Result<Duration, String> {
    let delay = parse_duration(text)?;
    if delay > MAX_LINK_DELAY {
        return Err(format!("`{text}` is more than a link's 10 s at most"));
    }
    Ok(delay)
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write it like 30s, 500ms, 2m or 1h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("`{text}`: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Scenario, ScenarioError> {
        let network = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml");
        let text = format!(
            "network = {:?}\nduration = \"10s\"\n{body}",
            network.display().to_string()
        );
        Scenario::parse(&text, Path::new("/tmp/test.toml"))
    }

    const TRAFFIC: &str = r#"
[[publishers]]
principal = "gbr.analyst"
topic = "a.b"
marking = "SECRET//REL TO NATO"
rate = 10

[[subscribers]]
principal = "usa.analyst"
pattern = ">"
"#;

    fn error(body: &str) -> String {
        parse(body).expect_err("must be refused").to_string()
    }

    #[test]
    fn the_shipped_scenarios_load() {
        for name in [
            "europe-cut-usa",
            "nordic-air-command",
            "europe-cut-deu-relay-crash",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/scenarios/{name}.toml"));
            let scenario = Scenario::load(&path).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(scenario.name, name);
            assert!(!scenario.network_file.to_string_lossy().contains(".."));
            assert!(!scenario.events().unwrap().is_empty());
        }
    }

    #[test]
    fn links_get_their_delay_from_the_capitals_and_can_be_overridden() {
        let gbr = Nation::parse("GBR").unwrap();
        let usa = Nation::parse("USA").unwrap();
        let fra = Nation::parse("FRA").unwrap();
        let scenario = parse(&format!(
            "{TRAFFIC}\n[links]\nloss = 0.01\n[[links.link]]\nbetween = [\"GBR\", \"FRA\"]\ndelay = \"9ms\"\nbandwidth_mbps = 10\n"
        ))
        .unwrap();
        let usa_link = scenario.link(usa, gbr).unwrap();
        assert_eq!(usa_link.delay, super::super::geo::path_delay(gbr, usa).unwrap());
        assert_eq!(usa_link.loss, 0.01);
        assert_eq!(usa_link.bandwidth_bps, 1e9);
        let fra_link = scenario.link(gbr, fra).unwrap();
        assert_eq!(fra_link.delay, Duration::from_millis(9));
        assert_eq!(fra_link.bandwidth_bps, 1e7);
        // Only configured links exist.
        assert!(scenario.link(usa, Nation::parse("FIN").unwrap()).is_none());
    }

    #[test]
    fn events_at_a_share_move_with_the_duration_and_late_ones_are_refused() {
        let mut scenario = parse(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"50%\"\nevent = \"cut USA\"\n[[events]]\nat = \"8s\"\nevent = \"restore USA\"\n"
        ))
        .unwrap();
        let events = scenario.events().unwrap();
        assert_eq!(events[0].at, Duration::from_secs(5));
        assert_eq!(events[1].at, Duration::from_secs(8));
        scenario.duration = Duration::from_secs(4);
        let err = scenario.events().unwrap_err();
        assert!(
            err.contains("`restore USA` at 8s is past the end of the run (4s)"),
            "{err}"
        );
        // In the file itself, too.
        let err = error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"11s\"\nevent = \"cut USA\"\n"
        ));
        assert!(err.contains("past the end of the run"), "{err}");
    }

    /// What the run would refuse at set-up, or every time, is refused
    /// when the scenario loads, saying why.
    #[test]
    fn publishers_and_subscribers_the_policy_refuses_are_refused_at_load() {
        let subscriber = error(
            "[[publishers]]\nprincipal = \"gbr.analyst\"\ntopic = \"a.b\"\nmarking = \"SECRET//REL TO NATO\"\nrate = 10\n\
             [[subscribers]]\nprincipal = \"gbr.sigint\"\npattern = \"a.>\"\n",
        );
        assert!(
            subscriber.contains("subscriber gbr.sigint") && subscriber.contains("a.>"),
            "{subscriber}"
        );
        let no_rights = error(
            "[[publishers]]\nprincipal = \"gbr.clerk\"\ntopic = \"a.b\"\nmarking = \"RESTRICTED//REL TO NATO\"\nrate = 10\n\
             [[subscribers]]\nprincipal = \"gbr.analyst\"\npattern = \">\"\n",
        );
        assert!(
            no_rights.contains("every publish would be refused"),
            "{no_rights}"
        );
        let above = error(
            "[[publishers]]\nprincipal = \"gbr.clerk\"\ntopic = \"admin.x\"\nmarking = \"SECRET//REL TO NATO\"\nrate = 10\n\
             [[subscribers]]\nprincipal = \"gbr.analyst\"\npattern = \">\"\n",
        );
        assert!(above.contains("every publish would be refused"), "{above}");
    }

    #[test]
    fn restarts_need_a_crash_and_crashes_a_running_node() {
        let restart = error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"node-restart POL\"\n"
        ));
        assert!(restart.contains("POL's node is not down"), "{restart}");
        let twice = error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"node-crash POL\"\n[[events]]\nat = \"2s\"\nevent = \"node-crash POL\"\n"
        ));
        assert!(twice.contains("already down"), "{twice}");
        let both = format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"node-crash POL\"\n[[events]]\nat = \"2s\"\nevent = \"node-restart POL\"\n"
        );
        assert_eq!(parse(&both).unwrap().events().unwrap().len(), 2);
    }

    #[test]
    fn broken_scenarios_say_what_is_wrong() {
        assert!(error(&format!("{TRAFFIC}\ncolour = 1")).contains("unknown field"));
        assert!(error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"explode GBR\""
        ))
        .contains("unknown event"));
        assert!(error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"cut XXX\""
        ))
        .contains("not a nation"));
        assert!(error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"link-down GBR FIN\""
        ))
        .contains("not linked"));
        assert!(error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"1s\"\nevent = \"revoke nobody\""
        ))
        .contains("not a principal"));
        assert!(error(&format!(
            "{TRAFFIC}\n[[events]]\nat = \"150%\"\nevent = \"cut USA\""
        ))
        .contains("below 100%"));
        assert!(error(&format!("{TRAFFIC}\n[links]\nloss = 1.5")).contains("below 1"));
        assert!(error(&format!("{TRAFFIC}\n[links]\njitter = \"20s\"")).contains("10 s at most"));
        assert!(parse(TRAFFIC).is_ok());
        let network = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml");
        let endless = format!(
            "network = {:?}\nduration = \"48h\"\n{TRAFFIC}",
            network.display().to_string()
        );
        let err = Scenario::parse(&endless, Path::new("/tmp/endless.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 24h"), "{err}");
        assert!(error(&format!(
            "{TRAFFIC}\n[[links.link]]\nbetween = [\"GBR\", \"FIN\"]"
        ))
        .contains("no such link"));
        assert!(error(&TRAFFIC.replace("SECRET//REL TO NATO", "SECRETISH")).contains("publisher gbr.analyst"));
        assert!(error(&TRAFFIC.replace("rate = 10", "rate = 0")).contains("rate"));
        assert!(error(&TRAFFIC.replace("usa.analyst", "usa.nobody")).contains("not a principal"));
        assert!(error("").contains("at least one publisher"));
        let missing = Scenario::load(Path::new("/nonexistent/scenario.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read scenario /nonexistent/scenario.toml"),
            "{missing}"
        );
    }
}
