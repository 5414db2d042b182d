//! Runs a scenario: every node in this process through `node::run`'s
//! parts on emulated WAN sockets, a PKI in a temporary folder, clients
//! publishing and subscribing over real QUIC and mutual TLS, the timed
//! events through the nodes' admin calls, then the oracle's verdict.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::oracle::World;
use super::report::{EventReport, Report};
use super::scenario::{Action, EventSpec, Scenario, PAYLOAD_HEADER};
use super::wan::{EmulatedSocket, Wan};
use super::{analyse, Delivered, Sent};
use crate::client::{Client, ClientError, ClientOptions, Overrides};
use crate::identity::Identity;
use crate::label::Nation;
use crate::node::{self, NodeConfig, NodeControl, NodeError, NodeSettings};
use crate::pki::{self, PkiError, PkiLayout};

/// Why a simulation could not run (as opposed to what it found, which
/// is in the report).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The temporary folder, or the one `--keep` names, could not be made.
    #[error("cannot set up the simulation's folder (a temporary one, or --keep's): {0}")]
    TempDir(std::io::Error),
    /// `--keep` names a folder that is not empty.
    #[error("{0} is not empty: --keep needs a new or empty folder, so no PKI or log is overwritten")]
    KeepNotEmpty(PathBuf),
    /// The PKI could not be generated, or a revocation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A node would not start.
    #[error("a node would not start: {0}")]
    Node(#[from] NodeError),
    /// A socket could not be bound.
    #[error("cannot bind a UDP socket on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    /// The emulated WAN's thread could not start.
    #[error("cannot start the emulated WAN's thread: {0}")]
    Wan(std::io::Error),
    /// The events do not fit the run (such as one past its end, with
    /// `--duration`).
    #[error("the scenario's events: {0}")]
    Events(String),
    /// A client could not connect or subscribe during set-up.
    #[error("{principal} could not start: {cause}")]
    Client {
        /// The principal.
        principal: String,
        /// Why.
        cause: ClientError,
    },
}

/// Called with what the simulation is doing.
pub type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How to run.
#[derive(Clone, Default)]
pub struct SimOptions {
    /// Overrides the scenario's duration.
    pub duration: Option<Duration>,
    /// Keeps the run's PKI, data directories and audit logs here instead
    /// of in a temporary folder that is deleted.
    pub keep: Option<PathBuf>,
    /// Called about five times a second with what is going on.
    pub progress: Option<ProgressCallback>,
    /// Test only: lets one delivery the policy refuses through, so a test
    /// can show the oracle catches it.
    #[cfg(feature = "fault-injection")]
    pub leak_once: bool,
    /// Test only: a node restarted after a crash forgets every coalition
    /// resolution, so a test can show the oracle catches the leak.
    #[cfg(feature = "fault-injection")]
    pub forget_cuts_on_restart: bool,
    /// Test only: a restore releases the cut nation's backlog.
    #[cfg(feature = "fault-injection")]
    pub release_cut_backlog: bool,
}

/// What the simulation is doing, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `starting`, `warming up`, `running` or `draining`.
    pub stage: &'static str,
    /// Time into the traffic.
    pub elapsed: Duration,
    /// The traffic's duration.
    pub duration: Duration,
    /// Messages acknowledged so far.
    pub published: u64,
    /// Messages delivered so far.
    pub delivered: u64,
    /// The last event applied.
    pub last_event: Option<String>,
}

/// How long set-up may wait for every eligible subscriber to hear from
/// every publisher (interest announced, links up).
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);
/// How long a publish or a connection may take before the client counts
/// as cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// After traffic stops, deliveries must stop for this long before the
/// run ends (everything in flight has arrived)...
const QUIET_FOR: Duration = Duration::from_secs(1);
/// ...or this long has passed.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Between re-connection attempts of a client whose node is gone.
const RECONNECT_EVERY: Duration = Duration::from_millis(300);

/// Payload kinds: probes prove a path during warm-up; data is counted.
const PROBE: u8 = 0;
const DATA: u8 = 1;

/// Runs `scenario` and returns what it found. The run's PKI, data and
/// audit logs live in a temporary folder, deleted afterwards.
pub async fn simulate(scenario: &Scenario, options: SimOptions) -> Result<Report, SimError> {
    let wall = std::time::Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut scenario = scenario.clone();
    let scenario_duration = scenario.duration;
    if let Some(duration) = options.duration {
        scenario.duration = duration;
    }
    let scenario = scenario;
    let events = scenario.events().map_err(SimError::Events)?;
    let progress = Reporter::new(options.progress.clone(), scenario.duration);
    progress.stage("starting");

    let temp = tempfile::tempdir().map_err(SimError::TempDir)?;
    let root = match &options.keep {
        Some(keep) => {
            // Never over a real certs folder or an earlier run's logs.
            if std::fs::read_dir(keep).is_ok_and(|mut entries| entries.next().is_some()) {
                return Err(SimError::KeepNotEmpty(keep.clone()));
            }
            std::fs::create_dir_all(keep).map_err(SimError::TempDir)?;
            keep.clone()
        }
        None => temp.path().to_owned(),
    };
    let layout = PkiLayout::new(root.join("certs"));
    pki::generate(&scenario.policy, &layout, false)?;
    let wan = Wan::new(&scenario.links).map_err(SimError::Wan)?;
    let (settings, leak) = node_settings(&options);
    let mut nodes = Nodes::start(&scenario, &layout, root.join("data"), wan.clone(), settings)?;

    let counters = Arc::new(Counters::default());
    let (stop_subscribers, subscribers_stop) = watch::channel(false);
    let probes: Arc<Mutex<HashSet<(usize, usize)>>> = Arc::default();
    let clock = Clock::new();
    let mut subscriber_tasks = Vec::new();
    for (index, spec) in scenario.subscribers.iter().enumerate() {
        let connect = nodes.connector(&spec.principal, spec.nation);
        let client = connect_and_subscribe(&connect, &spec.pattern)
            .await
            .map_err(|cause| SimError::Client {
                principal: spec.principal.clone(),
                cause,
            })?;
        subscriber_tasks.push(tokio::spawn(subscribe_loop(
            index,
            client,
            connect,
            spec.pattern.clone(),
            subscribers_stop.clone(),
            probes.clone(),
            counters.clone(),
            clock.clone(),
        )));
    }
    let mut publishers = Vec::new();
    for spec in &scenario.publishers {
        let connect = nodes.connector(&spec.principal, spec.nation);
        let client = connect_with_timeout(&connect)
            .await
            .map_err(|cause| SimError::Client {
                principal: spec.principal.clone(),
                cause,
            })?;
        publishers.push((client, connect));
    }

    progress.stage("warming up");
    let warm_up_missing = warm_up(&scenario, &nodes, &publishers, &probes).await;
    if !warm_up_missing.is_empty() {
        warn!(pairs = ?warm_up_missing, "some subscribers never heard from an eligible publisher during warm-up");
    }

    // Traffic from here: the clock's zero.
    clock.start();
    if let Some(leak) = leak {
        leak.store(true, Ordering::SeqCst);
    }
    progress.stage("running");
    let start = Instant::now();
    let end = start + scenario.duration;
    let mut publisher_tasks = Vec::new();
    for (index, ((client, connect), spec)) in publishers.into_iter().zip(&scenario.publishers).enumerate() {
        publisher_tasks.push(tokio::spawn(publish_loop(
            index,
            spec.clone(),
            client,
            connect,
            start + Duration::from_micros(index as u64 * 997 % 10_000),
            end,
            counters.clone(),
            clock.clone(),
        )));
    }
    let ticker = progress.spawn_ticker(counters.clone(), clock.clone());

    let mut applied = Vec::new();
    for event in &events {
        tokio::time::sleep_until(start + event.at).await;
        let report = nodes.apply(event, &clock).await;
        info!(event = %report.action, ok = report.ok, detail = %report.detail, "event");
        progress.event(&report.action);
        applied.push(report);
    }

    let mut sent = Vec::new();
    for task in publisher_tasks {
        sent.push(task.await.unwrap_or_default());
    }
    progress.stage("draining");
    let drain_start = Instant::now();
    let mut last = counters.delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while drain_start.elapsed() < DRAIN_LIMIT && quiet_since.elapsed() < QUIET_FOR {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counters.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let _ = stop_subscribers.send(true);
    let mut delivered = Vec::new();
    for task in subscriber_tasks {
        delivered.push(task.await.unwrap_or_default());
    }
    ticker.abort();
    let ran = clock.now_us();
    let end_state = nodes.end_state();
    nodes.shutdown().await;

    let mut report = analyse::analyse(&analyse::Run {
        scenario: &scenario,
        events: &events,
        applied,
        sent,
        delivered,
        wan: &wan,
        end_state,
        duration_us: ran.max(scenario.duration.as_micros() as u64),
    });
    report.duration_us = scenario.duration.as_micros() as u64;
    report.scenario_duration_us = scenario_duration.as_micros() as u64;
    report.started_at = started_at;
    report.wall_time_us = wall.elapsed().as_micros() as u64;
    report.verdict.audit_logs = check_audit_logs(&root.join("data"), &scenario);
    report.verdict.passed &= report.verdict.audit_logs.iter().all(|log| log.intact);
    report.verdict.warm_up_missing = warm_up_missing
        .into_iter()
        .map(|(publisher, subscriber)| format!("{publisher} → {subscriber}"))
        .collect();
    Ok(report)
}

/// Checks each node's audit log chain (invariant 7), once every node has
/// stopped.
fn check_audit_logs(data_root: &std::path::Path, scenario: &Scenario) -> Vec<super::report::AuditCheck> {
    scenario
        .policy
        .nations()
        .keys()
        .map(|nation| {
            let path = data_root.join(nation.as_str()).join("audit.jsonl");
            let (records, intact, detail) = match crate::audit::chain::verify_file(&path, None) {
                Ok(found) => (
                    found.records,
                    found.intact(),
                    found
                        .breaks
                        .first()
                        .map_or_else(|| format!("last hash {}", found.last_hash), |b| b.problem.clone()),
                ),
                Err(err) => (0, false, format!("cannot read {}: {err}", path.display())),
            };
            super::report::AuditCheck {
                nation: nation.to_string(),
                records,
                intact,
                detail,
            }
        })
        .collect()
}

/// The nodes' settings, and the test-only leak switch they share (armed
/// once traffic starts, so a probe cannot use it up).
fn node_settings(options: &SimOptions) -> (NodeSettings, Option<Arc<std::sync::atomic::AtomicBool>>) {
    #[cfg(feature = "fault-injection")]
    {
        let leak = options
            .leak_once
            .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let settings = NodeSettings {
            leak_once: leak.clone(),
            cut_faults: crate::node::CutFaults {
                release_backlog: options.release_cut_backlog,
                forget_resolutions: options.forget_cuts_on_restart,
            },
            ..NodeSettings::default()
        };
        (settings, leak)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = options;
        (NodeSettings::default(), None)
    }
}

/// Microseconds since traffic started; before that, 0.
#[derive(Clone)]
struct Clock(Arc<Mutex<Option<std::time::Instant>>>);

impl Clock {
    fn new() -> Clock {
        Clock(Arc::default())
    }

    fn start(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    fn now_us(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0, |start| start.elapsed().as_micros() as u64)
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
}

/// Calls the progress callback, if any.
struct Reporter {
    callback: Option<ProgressCallback>,
    state: Arc<Mutex<Progress>>,
}

impl Reporter {
    fn new(callback: Option<ProgressCallback>, duration: Duration) -> Reporter {
        Reporter {
            callback,
            state: Arc::new(Mutex::new(Progress {
                stage: "starting",
                elapsed: Duration::ZERO,
                duration,
                published: 0,
                delivered: 0,
                last_event: None,
            })),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        let snapshot = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut state);
            state.clone()
        };
        if let Some(callback) = &self.callback {
            callback(&snapshot);
        }
    }

    fn stage(&self, stage: &'static str) {
        self.update(|p| p.stage = stage);
    }

    fn event(&self, action: &str) {
        self.update(|p| p.last_event = Some(action.to_owned()));
    }

    fn spawn_ticker(&self, counters: Arc<Counters>, clock: Clock) -> JoinHandle<()> {
        let reporter = Reporter {
            callback: self.callback.clone(),
            state: self.state.clone(),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                reporter.update(|p| {
                    p.elapsed = Duration::from_micros(clock.now_us()).min(p.duration);
                    p.published = counters.published.load(Ordering::Relaxed);
                    p.delivered = counters.delivered.load(Ordering::Relaxed);
                });
            }
        })
    }
}

/// Makes a client of one principal, connected to its nation's node.
#[derive(Clone)]
struct Connector {
    principal: String,
    layout: PkiLayout,
    policy: Arc<crate::policy::Policy>,
    node: SocketAddr,
}

impl Connector {
    fn options(&self) -> Result<ClientOptions, ClientError> {
        let overrides = Overrides {
            node: Some(self.node.to_string()),
            ..Overrides::default()
        };
        ClientOptions::for_principal(&self.principal, Some(&self.policy), &self.layout, &overrides)
    }
}

async fn connect_with_timeout(connect: &Connector) -> Result<Client, ClientError> {
    let options = connect.options()?;
    tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(options))
        .await
        .unwrap_or_else(|_| Err(ClientError::Closed("connecting timed out".into())))
}

async fn connect_and_subscribe(connect: &Connector, pattern: &str) -> Result<Client, ClientError> {
    let client = connect_with_timeout(connect).await?;
    tokio::time::timeout(REQUEST_TIMEOUT, client.subscribe(pattern))
        .await
        .unwrap_or_else(|_| Err(ClientError::Closed("subscribing timed out".into())))?;
    Ok(client)
}

/// The identifying start of every payload: kind, publisher, sequence.
fn payload(kind: u8, publisher: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(PAYLOAD_HEADER));
    payload.push(kind);
    payload.extend_from_slice(&(publisher as u32).to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(size.max(PAYLOAD_HEADER), b'.');
    payload
}

fn read_payload(payload: &[u8]) -> Option<(u8, usize, u64)> {
    let kind = *payload.first()?;
    let publisher = u32::from_be_bytes(payload.get(1..5)?.try_into().ok()?) as usize;
    let seq = u64::from_be_bytes(payload.get(5..13)?.try_into().ok()?);
    Some((kind, publisher, seq))
}

/// Waits until every node has both links to every peer up (a handshake
/// whose packets the emulated WAN lost can take seconds), then publishes
/// probes until every subscriber the oracle says may hear from each
/// publisher has: so traffic starts on a settled network, not while trees
/// still change. Returns the (publisher, subscriber) pairs still missing
/// at the limit.
async fn warm_up(
    scenario: &Scenario,
    nodes: &Nodes,
    publishers: &[(Client, Connector)],
    probes: &Mutex<HashSet<(usize, usize)>>,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + WARM_UP_LIMIT;
    let all_links_up = || {
        nodes.controls(None).iter().all(|(_, control)| {
            control
                .status()
                .is_ok_and(|status| status.peers.iter().all(|peer| peer.outbound && peer.inbound))
        })
    };
    while !all_links_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wanted = analyse::expected_pairs(scenario);
    let mut probe_seq = 0;
    loop {
        let missing: BTreeSet<(usize, usize)> = {
            let heard = probes.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|pair| !heard.contains(pair))
                .copied()
                .collect()
        };
        if missing.is_empty() || Instant::now() >= deadline {
            return missing
                .into_iter()
                .map(|(p, s)| {
                    (
                        scenario.publishers[p].principal.clone(),
                        scenario.subscribers[s].principal.clone(),
                    )
                })
                .collect();
        }
        let silent: BTreeSet<usize> = missing.iter().map(|&(p, _)| p).collect();
        probe_seq += 1;
        for p in silent {
            let spec = &scenario.publishers[p];
            let (client, _) = &publishers[p];
            let _ = tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.publish(
                    &spec.topic,
                    &spec.marking,
                    payload(PROBE, p, probe_seq, PAYLOAD_HEADER),
                ),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    index: usize,
    spec: super::scenario::PublisherSpec,
    client: Client,
    connect: Connector,
    first: Instant,
    end: Instant,
    counters: Arc<Counters>,
    clock: Clock,
) -> Vec<Sent> {
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let mut client = Some(client);
    let mut sent = Vec::new();
    let mut next = first;
    let mut seq = 0;
    while next < end {
        tokio::time::sleep_until(next).await;
        next += interval;
        // A publisher that fell behind (its node was down) does not burst.
        next = next.max(Instant::now());
        if client.is_none() {
            client = connect_with_timeout(&connect).await.ok();
            if client.is_none() {
                continue;
            }
        }
        let Some(connected) = &client else { continue };
        seq += 1;
        let sent_us = clock.now_us();
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            connected.publish(
                &spec.topic,
                &spec.marking,
                payload(DATA, index, seq, spec.payload),
            ),
        )
        .await;
        let acked = match outcome {
            Ok(Ok(_)) => true,
            Ok(Err(ClientError::Refused { .. })) => false,
            Ok(Err(_)) | Err(_) => {
                client = None;
                false
            }
        };
        if acked {
            counters.published.fetch_add(1, Ordering::Relaxed);
        }
        sent.push(Sent { seq, sent_us, acked });
    }
    if let Some(client) = client {
        client.close().await;
    }
    sent
}

#[allow(clippy::too_many_arguments)]
async fn subscribe_loop(
    index: usize,
    client: Client,
    connect: Connector,
    pattern: String,
    mut stop: watch::Receiver<bool>,
    probes: Arc<Mutex<HashSet<(usize, usize)>>>,
    counters: Arc<Counters>,
    clock: Clock,
) -> Vec<Delivered> {
    let mut received = Vec::new();
    let mut client = Some(client);
    loop {
        let Some(connected) = &client else {
            tokio::select! {
                _ = stop.changed() => return received,
                () = tokio::time::sleep(RECONNECT_EVERY) => {}
            }
            client = connect_and_subscribe(&connect, &pattern).await.ok();
            continue;
        };
        tokio::select! {
            _ = stop.changed() => {
                if let Some(client) = client.take() {
                    client.close().await;
                }
                return received;
            }
            delivery = connected.next_delivery() => match delivery {
                Ok(delivery) => {
                    let at_us = clock.now_us();
                    match read_payload(&delivery.payload) {
                        Some((PROBE, publisher, _)) => {
                            probes.lock().unwrap_or_else(|p| p.into_inner()).insert((publisher, index));
                        }
                        Some((DATA, publisher, seq)) => {
                            counters.delivered.fetch_add(1, Ordering::Relaxed);
                            received.push(Delivered { publisher, seq, at_us });
                        }
                        _ => warn!(subscriber = index, "a delivery the simulation did not publish"),
                    }
                }
                Err(_) => client = None,
            }
        }
    }
}

/// One running node and what it takes to crash and restart it.
struct SimNode {
    socket: Arc<EmulatedSocket>,
    control: NodeControl,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), NodeError>>,
    released: node::Released,
}

/// A node is never left running by a run that stops early (an error in
/// set-up, a panic): its tasks end with its handle.
impl Drop for SimNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every node of the run.
struct Nodes {
    policy: Arc<crate::policy::Policy>,
    network_file: PathBuf,
    layout: PkiLayout,
    data_root: PathBuf,
    wan: Arc<Wan>,
    settings: NodeSettings,
    addresses: BTreeMap<Nation, SocketAddr>,
    running: BTreeMap<Nation, SimNode>,
    /// The real sockets of crashed nodes, kept for their restart, and
    /// what says the crashed node has let go of its data folder.
    crashed: BTreeMap<Nation, (Arc<dyn quinn::AsyncUdpSocket>, node::Released)>,
    world: World,
}

impl Nodes {
    fn start(
        scenario: &Scenario,
        layout: &PkiLayout,
        data_root: PathBuf,
        wan: Arc<Wan>,
        settings: NodeSettings,
    ) -> Result<Nodes, SimError> {
        let mut sockets = BTreeMap::new();
        for &nation in scenario.policy.nations().keys() {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(SimError::Bind)?;
            let socket = quinn::TokioRuntime
                .wrap_udp_socket(socket)
                .map_err(SimError::Bind)?;
            let addr = socket.local_addr().map_err(SimError::Bind)?;
            wan.register(nation, addr);
            sockets.insert(nation, socket);
        }
        let mut nodes = Nodes {
            policy: scenario.policy.clone(),
            network_file: scenario.network_file.clone(),
            layout: layout.clone(),
            data_root,
            wan,
            settings,
            addresses: sockets
                .iter()
                .map(|(&nation, socket)| {
                    (
                        nation,
                        socket
                            .local_addr()
                            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
                    )
                })
                .collect(),
            running: BTreeMap::new(),
            crashed: BTreeMap::new(),
            world: World::default(),
        };
        for (nation, socket) in sockets {
            let node = nodes.spawn(nation, socket, false)?;
            nodes.running.insert(nation, node);
        }
        Ok(nodes)
    }

    /// Starts `nation`'s node on `socket`; `restarted` after a crash.
    fn spawn(
        &self,
        nation: Nation,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        restarted: bool,
    ) -> Result<SimNode, SimError> {
        let mut config = NodeConfig::load(
            nation,
            self.policy.clone(),
            &self.layout,
            self.data_root.join(nation.as_str()),
        )?;
        config.policy_source = Some(crate::config::PolicySource::Network(self.network_file.clone()));
        config.peer_addresses = self.addresses.clone();
        config.settings = self.settings.clone();
        // The run's settings ask for forgetting on restart (see
        // `node_settings`); a node started with the run forgets nothing.
        #[cfg(feature = "fault-injection")]
        {
            config.settings.cut_faults.forget_resolutions &= restarted;
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = restarted;
        let socket = self.wan.socket(nation, socket);
        let endpoint = node::endpoint_on(&config, socket.clone())?;
        let node = node::Node::start(config, endpoint)?;
        let control = node.control();
        let released = node.released();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(node.run(async move {
            let _ = stopped.changed().await;
        }));
        Ok(SimNode {
            socket,
            control,
            stop,
            task,
            released,
        })
    }

    fn connector(&self, principal: &str, nation: Nation) -> Connector {
        Connector {
            principal: principal.to_owned(),
            layout: self.layout.clone(),
            policy: self.policy.clone(),
            node: self.addresses[&nation],
        }
    }

    /// The nodes' controls, all but `except`'s.
    fn controls(&self, except: Option<Nation>) -> Vec<(Nation, NodeControl)> {
        self.running
            .iter()
            .filter(|(&n, _)| Some(n) != except)
            .map(|(&n, node)| (n, node.control.clone()))
            .collect()
    }

    /// A coalition resolution cutting or restoring `nation`, as the
    /// admins would make it: proposed by the first running nation with an
    /// admin, signed by the next until the quorum, each on its own node.
    /// Returns once every running node but `nation`'s has applied it, with
    /// how long that took after the last signature.
    async fn resolve(&self, cut: bool, nation: Nation) -> Result<String, String> {
        use crate::resolution::Action as Resolved;
        let action = if cut { Resolved::Cut } else { Resolved::Restore };
        let voters: Vec<(Nation, &str)> = self
            .running
            .keys()
            .filter(|&&n| n != nation)
            .filter_map(|&n| {
                let admin = self.policy.principals().find(|p| p.nation == n && p.is_admin())?;
                Some((n, admin.name.as_str()))
            })
            .collect();
        let members = self.policy.nations().len();
        let needed = self.policy.quorum().needed(members.saturating_sub(1));
        if voters.len() < needed {
            return Err(format!(
                "{action} {nation} needs {needed} nations' admins to sign, and only {} nodes with an admin are running",
                voters.len()
            ));
        }
        let first = &self.running[&voters[0].0].control;
        let next_seq = first.resolutions().map_err(|err| err.to_string())?.next_seq;
        let resolution = crate::resolution::Resolution {
            seq: next_seq,
            action,
            nation,
            created_us: crate::audit::now_us(),
        };
        for &(voter, admin) in voters.iter().take(needed) {
            let identity = Identity::Principal {
                nation: voter,
                name: admin.to_owned(),
            };
            let (cert, key) = self.layout.cert_and_key(&identity);
            let chain = vec![pki::read_cert(&cert).map_err(|err| err.to_string())?];
            let key = pki::read_key(&key).map_err(|err| err.to_string())?;
            let signature =
                crate::admin::signature(&resolution, &chain, &key).map_err(|err| err.to_string())?;
            let signed = crate::resolution::SignedResolution {
                resolution: resolution.clone(),
                signatures: vec![signature],
            };
            self.running[&voter]
                .control
                .submit(signed)
                .await
                .map_err(|err| format!("{voter}'s admin signing: {err}"))?;
        }
        let last_signature = std::time::Instant::now();
        let applied =
            |control: &NodeControl| control.suspends(nation).is_ok_and(|suspended| suspended == cut);
        let mut waiting = self.controls(Some(nation));
        let nodes = waiting.len();
        let mut slowest = None;
        while !waiting.is_empty() {
            waiting.retain(|(n, control)| {
                let done = applied(control);
                if done {
                    slowest = Some((*n, last_signature.elapsed()));
                }
                !done
            });
            if waiting.is_empty() {
                break;
            }
            if last_signature.elapsed() > Duration::from_secs(10) {
                let behind: Vec<String> = waiting.iter().map(|(n, _)| n.to_string()).collect();
                return Err(format!(
                    "resolution {} in force, but not applied on {} after 10 s",
                    resolution.id(),
                    behind.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (last, took) = slowest.unwrap_or((nation, Duration::ZERO));
        Ok(format!(
            "resolution {} signed by {needed} nations' admins; applied by all {nodes} running nodes {:.1} ms after the last signature (the last: {last})",
            resolution.id(),
            took.as_secs_f64() * 1000.0
        ))
    }

    /// Applies one event; reports when it started and took effect.
    async fn apply(&mut self, event: &EventSpec, clock: &Clock) -> EventReport {
        let started_us = clock.now_us();
        let outcome = self.act(&event.action).await;
        let applied_us = clock.now_us();
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        EventReport {
            action: event.action.to_string(),
            at_us: event.at.as_micros() as u64,
            started_us,
            applied_us,
            ok,
            detail,
            explained_losses: 0,
        }
    }

    async fn act(&mut self, action: &Action) -> Result<String, String> {
        match action {
            Action::Cut { nation } | Action::Restore { nation } => {
                let cut = matches!(action, Action::Cut { .. });
                let outcome = self.resolve(cut, *nation).await;
                if cut {
                    self.world.cut.insert(*nation);
                } else {
                    self.world.cut.remove(nation);
                }
                outcome
            }
            Action::LinkDown { between: [a, b] } | Action::LinkUp { between: [a, b] } => {
                let up = matches!(action, Action::LinkUp { .. });
                self.wan.set_link_up(*a, *b, up);
                let key = super::scenario::ordered(*a, *b);
                if up {
                    self.world.down_links.remove(&key);
                } else {
                    self.world.down_links.insert(key);
                }
                Ok(format!(
                    "the emulated link {a}–{b} is {}",
                    if up { "up" } else { "down" }
                ))
            }
            Action::NodeCrash { nation } => {
                let Some(node) = self.running.remove(nation) else {
                    return Err(format!("{nation}'s node is not running"));
                };
                node.socket.crash();
                self.wan.set_node_up(*nation, false);
                node.task.abort();
                self.crashed
                    .insert(*nation, (node.socket.inner(), node.released.clone()));
                self.world.down_nodes.insert(*nation);
                Ok(format!(
                    "{nation}'s node stopped at once, without closing anything"
                ))
            }
            Action::NodeRestart { nation } => {
                let Some((socket, released)) = self.crashed.remove(nation) else {
                    return Err(format!("{nation}'s node has not crashed"));
                };
                // The crashed node's tasks are aborted, but let go of its
                // custody store (a file lock) and audit log only as they
                // unwind, on other threads: a real process restart has the
                // OS do it.
                if tokio::time::timeout(Duration::from_secs(10), released.clone().data())
                    .await
                    .is_err()
                {
                    self.crashed.insert(*nation, (socket, released));
                    return Err(format!(
                        "{nation}'s crashed node did not let go of its data folder"
                    ));
                }
                match self.spawn(*nation, socket.clone(), true) {
                    Ok(node) => {
                        self.running.insert(*nation, node);
                        self.wan.set_node_up(*nation, true);
                        self.world.down_nodes.remove(nation);
                        Ok(format!("{nation}'s node started again from its data directory"))
                    }
                    Err(err) => {
                        self.crashed.insert(*nation, (socket, released));
                        Err(format!("{nation}'s node would not restart: {err}"))
                    }
                }
            }
            Action::Revoke { principal } => {
                let Some(nation) = self.policy.principal(principal).map(|p| p.nation) else {
                    return Err(format!("{principal} is not a principal"));
                };
                let identity = Identity::Principal {
                    nation,
                    name: principal.clone(),
                };
                if let Err(err) = pki::revoke(&self.layout, &identity) {
                    return Err(format!("revoking {principal}: {err}"));
                }
                let calls = self
                    .controls(None)
                    .into_iter()
                    .map(|(n, control)| async move { (n, control.reload().await) });
                let results = futures_join_all(calls).await;
                self.world.revoked.insert(principal.clone());
                summarise(results, |applied| applied.closed.len() as u64)
            }
        }
    }

    fn end_state(&self) -> World {
        self.world.clone()
    }

    async fn shutdown(mut self) {
        for node in self.running.values() {
            let _ = node.stop.send(true);
        }
        // One that has not stopped in time is aborted as it is dropped.
        for node in self.running.values_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut node.task).await;
        }
    }
}

/// Runs every future at once and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        if let Ok(output) = handle.await {
            outputs.push(output);
        }
    }
    outputs
}

/// One line about an admin change across nodes: every node's result, or
/// which failed.
fn summarise(
    results: Vec<(Nation, Result<crate::admin::Applied, crate::node::ControlError>)>,
    count: impl Fn(&crate::admin::Applied) -> u64,
) -> Result<String, String> {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|err| format!("{n}: {err}")))
        .collect();
    if !failed.is_empty() {
        return Err(format!("failed on {}", failed.join("; ")));
    }
    let slowest = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|a| a.apply_us))
        .max()
        .unwrap_or(0);
    let total: u64 = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(&count))
        .sum();
    Ok(format!(
        "applied by {} nodes (slowest {:.1} ms); {total} purged or closed",
        results.len(),
        slowest as f64 / 1000.0
    ))
}
