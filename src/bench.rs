//! `entente bench`: latency and throughput over a chain of real `entente
//! node` processes on loopback, each with a fresh PKI, measured by a
//! publisher and subscribers in this process (one clock).

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Client, ClientError, ClientOptions, Overrides};
use crate::config::ConfigError;
use crate::hostile::{self, Hostility};
use crate::label::Nation;
use crate::node::{self, NodeConfig};
use crate::pki::{self, PkiError, PkiLayout};
use crate::policy::Policy;

/// Nations a chain is drawn from, in order.
const CHAIN: [&str; 15] = [
    "GBR", "FRA", "DEU", "POL", "FIN", "SWE", "DNK", "NOR", "EST", "LVA", "LTU", "ROU", "UKR", "TUR", "USA",
];
const TOPIC: &str = "bench.data";
/// What every bench subscriber subscribes to.
const PATTERN: &str = "bench.>";
/// The hop counts the benchmarks report (BENCHMARKS.md, latency against
/// hops): a line of up to five nodes.
pub const MAX_HOPS: usize = 4;
/// How long a node may take to start and link up before the bench gives up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long after the last send the bench waits for stragglers.
const DRAIN: Duration = Duration::from_secs(3);
/// How often an audit log is read while the bench waits on it.
const POLL: Duration = Duration::from_millis(20);

/// How a bench runs its node processes.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// The `entente` binary.
    pub binary: std::path::PathBuf,
    /// Each node's `--durability`.
    pub durability: crate::store::Durability,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// More hops than the bench supports (at most [`MAX_HOPS`]).
    #[error("--hops {0}: the bench runs chains of 0 to {MAX_HOPS} hops (1 to {nodes} nodes)", nodes = MAX_HOPS + 1)]
    TooManyHops(usize),
    /// More peers than a star of the bench's 15 nations can have (at most 14).
    #[error("--peers {0}: the bench draws nodes from 15 nations, so a node can have at most 14 peers")]
    TooManyPeers(usize),
    /// A payload size, in bytes, too small for the sequence number and send time.
    #[error("--size {0}: the payload must hold at least 16 bytes (sequence number and send time)")]
    TooSmall(usize),
    /// A send rate of 0 messages per second.
    #[error("--rate must be above 0")]
    ZeroRate,
    /// Setting up the chain failed: ports, files, node processes, links.
    #[error("bench setup: {0}")]
    Setup(String),
    /// The generated network file did not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The PKI could not be generated or loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A bench client failed to connect, publish or subscribe.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn setup(what: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(what.to_string())
}

/// A chain of `hops + 1` node processes, killed when dropped.
pub struct Chain {
    dir: tempfile::TempDir,
    policy: Policy,
    layout: PkiLayout,
    nations: Vec<Nation>,
    addresses: Vec<String>,
    processes: Vec<Child>,
    /// The nation in the network file, linked to the first node, whose
    /// node this process plays as a hostile member (no process runs it).
    hostile: Option<usize>,
}

impl Drop for Chain {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The hostile node this process plays, stopped when dropped.
struct HostileNode {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    _announcer: quinn::Connection,
}

impl Drop for HostileNode {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"bench over");
        self.task.abort();
    }
}

fn free_ports(count: usize) -> Result<Vec<u16>, BenchError> {
    // Held together so the ports differ; released just before the nodes bind.
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(setup)?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()).map_err(setup))
        .collect()
}

/// Sessions the bench's one principal per nation may hold: the memory
/// bench opens hundreds, all as that principal.
const BENCH_SESSIONS_PER_PRINCIPAL: u32 = 100_000;

/// A network file for `nations` on `ports`, where nation `i` links to
/// the nations `links(i)`, and every nation has a `<nation>.bench`
/// principal that may publish and subscribe to everything.
fn network_file(nations: &[Nation], ports: &[u16], links: &dyn Fn(usize) -> Vec<usize>) -> String {
    let mut text = String::new();
    for (i, nation) in nations.iter().enumerate() {
        let peers: Vec<String> = links(i).iter().map(|&j| format!("\"{}\"", nations[j])).collect();
        text.push_str(&format!(
            "[nations.{nation}]\naddress = \"127.0.0.1:{}\"\npeers = [{}]\ndefault_ceiling = \"TOP SECRET\"\n\n",
            ports[i],
            peers.join(", ")
        ));
        text.push_str(&format!(
            "[[principals]]\nname = \"{}.bench\"\nnation = \"{nation}\"\nclearance = \"SECRET\"\npublish = [\">\"]\nsubscribe = [\">\"]\n\n",
            nation.lowercase()
        ));
    }
    text
}

impl Chain {
    /// Starts `hops + 1` linked nodes in a line, as `node_binary node ...`
    /// processes, and waits until every link is up and every node knows
    /// the whole line.
    pub fn start(hops: usize, nodes: &NodeCommand) -> Result<Chain, BenchError> {
        Chain::start_with(hops, false, nodes)
    }

    /// As [`Chain::start`]; with `hostile`, the network file also has one
    /// more nation, a peer of the first node, whose node no process runs:
    /// [`throughput`] plays it as a hostile member. It is not part of the
    /// line, so the hops and the subscribers stay where they were.
    pub fn start_with(hops: usize, hostile: bool, nodes: &NodeCommand) -> Result<Chain, BenchError> {
        if hops > MAX_HOPS {
            return Err(BenchError::TooManyHops(hops));
        }
        let last = hops;
        let extra = hops + 1;
        let links = move |i: usize| {
            let mut peers = Vec::new();
            if i == extra {
                return vec![0];
            }
            if i > 0 {
                peers.push(i - 1);
            }
            if i < last {
                peers.push(i + 1);
            }
            if i == 0 && hostile {
                peers.push(extra);
            }
            peers
        };
        let count = hops + 1 + usize::from(hostile);
        Chain::launch(count, hostile.then_some(extra), nodes, &links)
    }

    /// Starts a hub node linked to `spokes` other nodes (at most 14).
    pub fn star(spokes: usize, nodes: &NodeCommand) -> Result<Chain, BenchError> {
        if spokes >= CHAIN.len() {
            return Err(BenchError::TooManyPeers(spokes));
        }
        Chain::launch(spokes + 1, None, nodes, &|i| match i {
            0 => (1..=spokes).collect(),
            _ => vec![0],
        })
    }

    fn launch(
        count: usize,
        hostile: Option<usize>,
        nodes: &NodeCommand,
        links: &dyn Fn(usize) -> Vec<usize>,
    ) -> Result<Chain, BenchError> {
        let real = |i: &usize| Some(*i) != hostile;
        let nations: Vec<Nation> = CHAIN[..count].iter().filter_map(|c| Nation::parse(c)).collect();
        let dir = tempfile::tempdir().map_err(setup)?;
        let network_path = dir.path().join("network.toml");
        let ports = free_ports(nations.len())?;
        std::fs::write(&network_path, network_file(&nations, &ports, links)).map_err(setup)?;
        let policy = crate::config::load_network(&network_path)?;
        let layout = PkiLayout::new(dir.path().join("certs"));
        pki::generate(&policy, &layout, false)?;

        let mut chain = Chain {
            policy,
            layout,
            addresses: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            nations,
            processes: Vec::new(),
            dir,
            hostile,
        };
        let root = chain.dir.path().to_owned();
        for (_, &nation) in chain.nations.iter().enumerate().filter(|(i, _)| real(i)) {
            let mut child = Command::new(&nodes.binary)
                .arg("node")
                .args(["--durability", &nodes.durability.to_string()])
                .args(["--nation", nation.as_str()])
                .arg("--network")
                .arg(&network_path)
                .arg("--certs")
                .arg(root.join("certs"))
                .arg("--data")
                .arg(root.join("data").join(nation.as_str()))
                // Every client of a bench is its nation's one principal.
                .args([
                    "--max-sessions-per-principal",
                    &BENCH_SESSIONS_PER_PRINCIPAL.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|err| setup(format!("cannot start {}: {err}", nodes.binary.display())))?;
            let stdout = child.stdout.take();
            chain.processes.push(child);
            let mut line = String::new();
            let started = stdout
                .map(BufReader::new)
                .is_some_and(|mut out| out.read_line(&mut line).is_ok() && line.contains("listening"));
            if !started {
                return Err(setup(format!("the {nation} node did not start")));
            }
        }
        let deadline = Instant::now() + START_LIMIT;
        for i in (0..count).filter(real) {
            for j in links(i).into_iter().filter(real) {
                let to = chain.nations[j];
                chain.wait_for_audit(i, deadline, &|record| is_record(record, "link-up", to), || {
                    format!("the {}–{to} link did not come up", chain.nations[i])
                })?;
            }
        }
        // A relay forwards along the tree it computes from what it has
        // heard, and a node misses a link it has not heard both ends of
        // announce: until every node has heard every other announce all
        // its links, a relay can drop what it should pass on.
        for at in (0..count).filter(real) {
            for of in (0..count).filter(|&of| of != at).filter(real) {
                let nation = chain.nations[of];
                let mut expected: Vec<&str> = links(of)
                    .into_iter()
                    .filter(real)
                    .map(|j| chain.nations[j].as_str())
                    .collect();
                expected.sort_unstable();
                let complete = |record: &serde_json::Value| {
                    announced(record, nation).is_some_and(|(mut heard, _)| {
                        heard.sort_unstable();
                        heard == expected
                    })
                };
                chain.wait_for_audit(at, deadline, &complete, || {
                    format!(
                        "the {} node did not hear {nation} announce its links ({})",
                        chain.nations[at],
                        expected.join(", ")
                    )
                })?;
            }
        }
        Ok(chain)
    }

    fn audit_path(&self, node: usize) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join(self.nations[node].as_str())
            .join("audit.jsonl")
    }

    /// Whether a record of node `at`'s audit log satisfies `wanted`. A
    /// line the writer has not finished does not parse, and is skipped.
    fn audit_has(&self, at: usize, wanted: &dyn Fn(&serde_json::Value) -> bool) -> bool {
        std::fs::read_to_string(self.audit_path(at)).is_ok_and(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|record| wanted(&record))
        })
    }

    /// Waits until a record of node `at`'s audit log satisfies `wanted`;
    /// after `deadline`, fails with `failure()`.
    fn wait_for_audit(
        &self,
        at: usize,
        deadline: Instant,
        wanted: &dyn Fn(&serde_json::Value) -> bool,
        failure: impl Fn() -> String,
    ) -> Result<(), BenchError> {
        while !self.audit_has(at, wanted) {
            if Instant::now() > deadline {
                return Err(setup(failure()));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Waits until the first node has heard the last one announce interest
    /// in `pattern`: routing sends a message only towards nations known to
    /// want it, so anything published before then is dropped at the first
    /// node. The relays between them heard the announcement first, since in
    /// a line it reaches the first node only through them.
    async fn wait_for_interest(&self, pattern: &str) -> Result<(), BenchError> {
        let last = self.last();
        if last == 0 {
            // The subscriber is on the publisher's node: its acknowledged
            // subscription is all routing needs.
            return Ok(());
        }
        let nation = self.nations[last];
        let deadline = Instant::now() + START_LIMIT;
        let interested = |record: &serde_json::Value| {
            announced(record, nation).is_some_and(|(_, interest)| interest.contains(&pattern))
        };
        while !self.audit_has(0, &interested) {
            if Instant::now() > deadline {
                return Err(setup(format!(
                    "the {} node did not hear {nation} announce its subscriber's interest in {pattern} within {START_LIMIT:?}",
                    self.nations[0]
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// As `wait_for_audit`, without blocking the thread: for waits while
    /// this process also plays a node.
    async fn wait_for_audit_async(
        &self,
        at: usize,
        wanted: &dyn Fn(&serde_json::Value) -> bool,
        failure: impl Fn() -> String,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + START_LIMIT;
        while !self.audit_has(at, wanted) {
            if Instant::now() > deadline {
                return Err(setup(failure()));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Plays the chain's hostile nation (see [`Chain::start_with`]) with its
    /// genuine certificate: serves the link the first node dials to it the
    /// `hostility` way (at every re-dial), and announces to the first node
    /// that it wants everything the bench publishes, so that node forwards
    /// all of it there too. Returns once the first node has heard it.
    async fn play_hostile(&self, hostility: Hostility) -> Result<HostileNode, BenchError> {
        let index = self
            .hostile
            .ok_or_else(|| setup("this chain was started without a hostile nation"))?;
        let nation = self.nations[index];
        let data = self.dir.path().join("data").join(nation.as_str());
        let config =
            NodeConfig::load(nation, Arc::new(self.policy.clone()), &self.layout, data).map_err(setup)?;
        let addr = self.addresses[index].parse().map_err(setup)?;
        let endpoint = node::bind(&config, addr).map_err(setup)?.endpoint().clone();
        let task = tokio::spawn(hostile::serve(endpoint.clone(), nation, hostility));
        let first = self.nations[0];
        self.wait_for_audit_async(0, &|record| is_record(record, "link-up", nation), || {
            format!("the {first} node did not dial the hostile {nation} node")
        })
        .await?;
        let first_addr = self.addresses[0].parse().map_err(setup)?;
        let announcer = hostile::announce_interest(&config, &endpoint, first, first_addr, &[PATTERN])
            .await
            .map_err(setup)?;
        let interested = |record: &serde_json::Value| {
            announced(record, nation).is_some_and(|(_, interest)| interest.contains(&PATTERN))
        };
        self.wait_for_audit_async(0, &interested, || {
            format!("the {first} node did not hear the hostile {nation} node's interest")
        })
        .await?;
        Ok(HostileNode {
            endpoint,
            task,
            _announcer: announcer,
        })
    }

    /// How many times the first node cut the hostile nation's link as a
    /// peer that does not keep up.
    fn hostile_cuts(&self) -> u64 {
        let Some(index) = self.hostile else { return 0 };
        let nation = self.nations[index];
        std::fs::read_to_string(self.audit_path(0)).map_or(0, |text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|record| record["event"] == "disconnect" && is_record(record, "peer-stalled", nation))
                .count() as u64
        })
    }

    /// Resident memory of node `index`, from /proc (Linux).
    fn resident_kib(&self, index: usize) -> Result<u64, BenchError> {
        let pid = self.processes[index].id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|err| setup(format!("cannot read the memory of process {pid}: {err}")))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| setup(format!("no VmRSS for process {pid}")))
    }

    /// A client connected to node `index` as its `<nation>.bench` principal.
    pub async fn client(&self, index: usize) -> Result<Client, BenchError> {
        let nation = self.nations[index];
        let overrides = Overrides {
            node: Some(self.addresses[index].clone()),
            ..Overrides::default()
        };
        let name = format!("{}.bench", nation.lowercase());
        let options = ClientOptions::for_principal(&name, Some(&self.policy), &self.layout, &overrides)?;
        Ok(Client::connect(options).await?)
    }

    /// The last node of the line (the hostile nation, if any, comes after it).
    fn last(&self) -> usize {
        self.nations.len() - 1 - usize::from(self.hostile.is_some())
    }

    /// A marking releasable to every nation of the chain.
    fn marking(&self) -> String {
        let names: Vec<&str> = self.nations.iter().map(Nation::as_str).collect();
        format!("SECRET//REL TO {}", names.join(", "))
    }
}

/// The payload carries its sequence number and send time (nanoseconds
/// since the run started), then padding up to `size`.
fn stamped_payload(size: usize, seq: u64, sent_ns: u64) -> Vec<u8> {
    let mut payload = vec![0x5a; size];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    payload
}

/// Whether an audit record has this reason and subject.
fn is_record(record: &serde_json::Value, reason: &str, subject: Nation) -> bool {
    record["reason"] == reason && record["subject"] == subject.as_str()
}

/// The links and interest `nation` announced, from an `announcement`
/// audit record of it (`links: A, B; interest: p, q`, or `no entries`).
fn announced(record: &serde_json::Value, nation: Nation) -> Option<(Vec<&str>, Vec<&str>)> {
    if !is_record(record, "announcement", nation) {
        return None;
    }
    let (links, interest) = record["detail"]
        .as_str()?
        .strip_prefix("links: ")?
        .split_once("; interest: ")?;
    fn list(text: &str) -> Vec<&str> {
        match text {
            crate::routing::NOTHING => Vec::new(),
            _ => text.split(", ").collect(),
        }
    }
    Some((list(links), list(interest)))
}

fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// The result of [`latency`]: latency quantiles over one run. Times are in
/// microseconds, from send to delivery.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    /// Hops from the publisher's node to the subscriber's node.
    pub hops: usize,
    /// Payload size, in bytes.
    pub size: usize,
    /// Send rate, in messages per second.
    pub rate: u64,
    /// Median latency, in microseconds.
    pub p50_us: f64,
    /// 90th percentile latency, in microseconds.
    pub p90_us: f64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: f64,
    /// 99.9th percentile latency, in microseconds.
    pub p999_us: f64,
    /// Highest latency, in microseconds.
    pub max_us: f64,
    /// Messages published.
    pub sent: u64,
    /// Messages delivered.
    pub received: u64,
    /// `sent − received`.
    pub lost: u64,
    /// How far the sender ever fell behind its schedule; large values mean
    /// the machine, not the broker, limited the rate.
    pub max_send_lag_us: f64,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Open-loop latency: messages leave on a fixed schedule whatever the
/// replies, and each is timed from its actual send to its delivery.
pub async fn latency(
    chain: &Chain,
    size: usize,
    rate: u64,
    duration: Duration,
) -> Result<LatencyReport, BenchError> {
    if size < 16 {
        return Err(BenchError::TooSmall(size));
    }
    if rate == 0 {
        return Err(BenchError::ZeroRate);
    }
    let subscriber = chain.client(chain.last()).await?;
    subscriber.subscribe(PATTERN).await?;
    chain.wait_for_interest(PATTERN).await?;
    let publisher = chain.client(0).await?;
    let marking = chain.marking();
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);

    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(setup)?;
        let mut received = 0u64;
        let deadline = tokio::time::Instant::now() + duration + DRAIN;
        while received < total {
            let Ok(delivery) = tokio::time::timeout_at(deadline, subscriber.next_delivery()).await else {
                break;
            };
            let now = nanos(start.elapsed());
            if let Some((_, sent_ns)) = read_stamp(&delivery?.payload) {
                histogram.saturating_record(now.saturating_sub(sent_ns).max(1_000));
                received += 1;
            }
        }
        subscriber.close().await;
        Ok::<_, BenchError>((histogram, received))
    });

    let mut interval = tokio::time::interval_at(tokio::time::Instant::from_std(start), period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut max_lag = Duration::ZERO;
    for seq in 0..total {
        interval.tick().await;
        let now = start.elapsed();
        max_lag = max_lag.max(now.saturating_sub(period * u32::try_from(seq).unwrap_or(u32::MAX)));
        publisher
            .publish_unawaited(TOPIC, &marking, stamped_payload(size, seq, nanos(now)))
            .await?;
    }
    let (histogram, received) = receiver.await.map_err(setup)??;
    publisher.close().await;
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(LatencyReport {
        hops: chain.last(),
        size,
        rate,
        p50_us: us(histogram.value_at_quantile(0.5)),
        p90_us: us(histogram.value_at_quantile(0.9)),
        p99_us: us(histogram.value_at_quantile(0.99)),
        p999_us: us(histogram.value_at_quantile(0.999)),
        max_us: us(histogram.max()),
        sent: total,
        received,
        lost: total - received.min(total),
        max_send_lag_us: max_lag.as_secs_f64() * 1e6,
    })
}

/// The result of [`throughput`]: sustained delivery rate over one run.
#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    /// Hops from the publisher's node to the subscribers' node.
    pub hops: usize,
    /// Payload size, in bytes.
    pub size: usize,
    /// Subscribers, all on the last node.
    pub subscribers: usize,
    /// Deliveries per second, over all subscribers.
    pub msgs_per_s: f64,
    /// Delivered payload, in MiB per second, over all subscribers.
    pub mib_per_s: f64,
    /// Messages acknowledged by the first node.
    pub sent: u64,
    /// Deliveries, over all subscribers.
    pub received: u64,
    /// `sent × subscribers − received`.
    pub lost: u64,
    /// How the hostile peer of the first node behaved, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile: Option<&'static str>,
    /// How many times the first node cut the hostile peer's link
    /// (`peer-stalled`): once per re-dial that it filled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile_cuts: Option<u64>,
}

/// The most messages the publisher keeps ahead of the slowest subscriber:
/// half a session's default queue (1,024 frames, 4 MiB), so a subscriber
/// that keeps up is never cut off as a slow consumer, and far above what
/// one round trip needs, so the window itself does not limit the rate.
fn window(size: usize) -> u64 {
    let frames = 512;
    let bytes = 2 * 1024 * 1024 / (size + 256);
    frames.min(bytes).max(1) as u64
}

/// The most deliveries a throughput subscriber takes at once.
const DELIVERY_BATCH: usize = 256;

/// Publishes as fast as the chain delivers for `duration`, never more
/// than 512 messages (or 2 MiB) ahead of the slowest subscriber, and counts
/// what each of `subscribers` receives on the last node. With `hostile`
/// (on a chain from [`Chain::start_with`]), the first node also has a
/// hostile peer that asked for all of it and then stops reading or
/// trickles: what it costs the healthy chain is the difference in rate.
pub async fn throughput(
    chain: &Chain,
    size: usize,
    duration: Duration,
    subscribers: usize,
    hostile: Option<Hostility>,
) -> Result<ThroughputReport, BenchError> {
    if size < 16 {
        return Err(BenchError::TooSmall(size));
    }
    let subscribers = subscribers.max(1);
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let progress = Arc::new(tokio::sync::Notify::new());
    // When the latest delivery arrived, in nanoseconds since `start`.
    let last_delivery_ns = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..subscribers {
        let client = chain.client(chain.last()).await?;
        client.subscribe(PATTERN).await?;
        let (received, progress, last_delivery_ns) =
            (received.clone(), progress.clone(), last_delivery_ns.clone());
        tasks.push(tokio::spawn(async move {
            // Ends when the bench stops waiting: the client is dropped with
            // the task. Counted a batch at a time, so that a hundred
            // subscribers on one thread measure the node, not the counting.
            let mut batch = Vec::with_capacity(DELIVERY_BATCH);
            while let Ok(count) = client.next_deliveries(&mut batch, DELIVERY_BATCH).await {
                batch.clear();
                received[index].fetch_add(count as u64, Ordering::Relaxed);
                last_delivery_ns.fetch_max(nanos(start.elapsed()), Ordering::Relaxed);
                progress.notify_one();
            }
        }));
    }
    let slowest = || {
        received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    let total = || received.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>();
    chain.wait_for_interest(PATTERN).await?;
    let hostile_node = match hostile {
        Some(hostility) => Some(chain.play_hostile(hostility).await?),
        None => None,
    };
    let publisher = chain.client(0).await?;
    let marking = chain.marking();
    let sending_from = nanos(start.elapsed());
    let window = window(size);
    let mut published = 0u64;
    let stop_sending = Instant::now() + duration;
    while Instant::now() < stop_sending {
        while published >= slowest() + window {
            // A delivery that lands between the check and the wait leaves
            // a permit in `progress`, so this cannot miss its wake-up.
            if tokio::time::timeout(DRAIN, progress.notified()).await.is_err() {
                break;
            }
        }
        publisher
            .publish_unawaited(TOPIC, &marking, stamped_payload(size, published, 0))
            .await?;
        published += 1;
    }
    // Wait for the acknowledgements, then for deliveries to stop growing.
    let wanted = |acked: u64| acked * subscribers as u64;
    let mut last_progress = Instant::now();
    let mut seen = (0, 0);
    loop {
        let (acked, refused) = publisher.unawaited_replies();
        let delivered = total();
        if acked + refused >= published && delivered >= wanted(acked) {
            break;
        }
        if (acked, delivered) != seen {
            seen = (acked, delivered);
            last_progress = Instant::now();
        } else if last_progress.elapsed() > DRAIN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed_ns = last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(sending_from);
    let (acked, _) = publisher.unawaited_replies();
    let delivered = total();
    for task in tasks {
        task.abort();
    }
    publisher.close().await;
    drop(hostile_node);
    let seconds = (elapsed_ns as f64 / 1e9).max(f64::EPSILON);
    Ok(ThroughputReport {
        hops: chain.last(),
        size,
        subscribers,
        msgs_per_s: delivered as f64 / seconds,
        mib_per_s: delivered as f64 * size as f64 / seconds / (1024.0 * 1024.0),
        sent: acked,
        received: delivered,
        lost: wanted(acked).saturating_sub(delivered),
        hostile: hostile.map(|h| match h {
            Hostility::Stuck => "stuck",
            Hostility::Trickle => "trickle",
        }),
        hostile_cuts: hostile.map(|_| chain.hostile_cuts()),
    })
}

/// The result of [`memory`]: resident memory of a hub node, idle and with
/// client sessions.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    /// Peer links of the hub node.
    pub peers: usize,
    /// Idle client sessions connected for the second reading.
    pub sessions: usize,
    /// Resident memory of the hub node with its peer links up and idle.
    pub idle_node_kib: u64,
    /// The same with `sessions` idle client sessions connected as well.
    pub with_sessions_kib: u64,
    /// `(with_sessions_kib − idle_node_kib) / sessions`.
    pub per_session_kib: f64,
}

/// How long memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_secs(2);

/// Resident memory of an idle hub node with every peer link up, then with
/// `sessions` idle client sessions (each subscribed to one pattern).
pub async fn memory(chain: &Chain, sessions: usize) -> Result<MemoryReport, BenchError> {
    tokio::time::sleep(SETTLE).await;
    let idle_node_kib = chain.resident_kib(0)?;
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let client = chain.client(0).await?;
        client.subscribe(PATTERN).await?;
        clients.push(client);
    }
    tokio::time::sleep(SETTLE).await;
    let with_sessions_kib = chain.resident_kib(0)?;
    for client in clients {
        client.close().await;
    }
    Ok(MemoryReport {
        peers: chain.last(),
        sessions,
        idle_node_kib,
        with_sessions_kib,
        per_session_kib: with_sessions_kib.saturating_sub(idle_node_kib) as f64 / sessions.max(1) as f64,
    })
}

/// The binary to start nodes with: this one.
pub fn node_command(durability: crate::store::Durability) -> Result<NodeCommand, BenchError> {
    Ok(NodeCommand {
        binary: std::env::current_exe().map_err(setup)?,
        durability,
    })
}
