//! Entente's integration-test harness: a real network, with a PKI
//! generated in a temporary folder and in-process nodes on 127.0.0.1:0
//! talking real QUIC and TLS, and raw connections that speak the wire
//! protocol by hand to play a misbehaving client or a hostile member.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use entente::client::{Client, ClientOptions, Overrides};
use entente::identity::Identity;
use entente::label::Nation;
use entente::node::{self, NodeConfig, NodeError, NodeSettings};
use entente::pki::{self, PkiLayout};
use entente::policy::Policy;
use entente::wire::{self, Frame};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// GBR links to FRA and DEU; FRA and DEU are not linked to each other.
pub const NETWORK: &str = r#"
[classification]
compartments = ["SIGINT", "AIRDEF"]

[communities]
WEST = ["GBR", "FRA", "DEU"]

[nations.GBR]
address = "127.0.0.1:1"
peers = ["FRA", "DEU"]
default_ceiling = "SECRET"
ceilings = { FRA = "TOP SECRET", DEU = "CONFIDENTIAL" }

[nations.FRA]
address = "127.0.0.1:2"
peers = ["GBR"]
default_ceiling = "SECRET"

[nations.DEU]
address = "127.0.0.1:3"
peers = ["GBR"]
default_ceiling = "SECRET"

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "gbr.clerk"
nation = "GBR"
clearance = "RESTRICTED"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "gbr.sigint"
nation = "GBR"
clearance = "TOP SECRET"
compartments = ["SIGINT"]
publish = [">"]
subscribe = [">"]

[[principals]]
name = "fra.analyst"
nation = "FRA"
clearance = "TOP SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "fra.junior"
nation = "FRA"
clearance = "CONFIDENTIAL"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "deu.analyst"
nation = "DEU"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "gbr.admin"
nation = "GBR"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "fra.admin"
nation = "FRA"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "deu.admin"
nation = "DEU"
clearance = "UNCLASSIFIED"
roles = ["admin"]
"#;

/// Six nations on a ring with a spur, so most pairs reach each other only
/// through relays, and some by two paths; every nation has an analyst.
///
/// ```text
///   FIN ── EST ── LVA
///           │      │
///          GBR    LTU
///           │      │
///           └─ POL ┘
/// ```
pub const RING: &str = r#"
[communities]
RING = ["GBR", "EST", "LVA", "LTU", "POL", "FIN"]

[nations.GBR]
address = "127.0.0.1:1"
peers = ["EST", "POL"]
default_ceiling = "SECRET"

[nations.EST]
address = "127.0.0.1:2"
peers = ["GBR", "LVA", "FIN"]
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

[nations.FIN]
address = "127.0.0.1:6"
peers = ["EST"]
default_ceiling = "SECRET"

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "fin.analyst"
nation = "FIN"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "lva.analyst"
nation = "LVA"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "ltu.analyst"
nation = "LTU"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "gbr.admin"
nation = "GBR"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "est.admin"
nation = "EST"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "lva.admin"
nation = "LVA"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "ltu.admin"
nation = "LTU"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "pol.admin"
nation = "POL"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "fin.admin"
nation = "FIN"
clearance = "UNCLASSIFIED"
roles = ["admin"]
"#;

pub fn nation(code: &str) -> Nation {
    Nation::parse(code).expect("a nation code")
}

struct RunningNode {
    addr: SocketAddr,
    control: node::NodeControl,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

pub struct TestNetwork {
    pub dir: tempfile::TempDir,
    pub policy: Arc<Policy>,
    pub layout: PkiLayout,
    settings: NodeSettings,
    addresses: BTreeMap<Nation, SocketAddr>,
    nodes: BTreeMap<Nation, RunningNode>,
}

fn spawn_node(
    mut config: NodeConfig,
    endpoint: node::NodeEndpoint,
    addresses: &BTreeMap<Nation, SocketAddr>,
) -> RunningNode {
    config.peer_addresses = addresses.clone();
    let addr = addresses[&config.nation];
    let (stop, stopped) = oneshot::channel::<()>();
    let node = node::Node::start(config, endpoint).expect("node starts");
    let control = node.control();
    let task = tokio::spawn(node.run(async move {
        let _ = stopped.await;
    }));
    RunningNode {
        addr,
        control,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestNetwork {
    pub async fn start() -> TestNetwork {
        TestNetwork::start_with(NodeSettings::default()).await
    }

    pub async fn start_with(settings: NodeSettings) -> TestNetwork {
        TestNetwork::start_from(NETWORK, settings).await
    }

    /// Generates the PKI of the network file `network`, binds every node
    /// on port 0, then runs them all with each other's real addresses.
    pub async fn start_from(network: &str, settings: NodeSettings) -> TestNetwork {
        let dir = tempfile::tempdir().expect("temp dir");
        let network_path = dir.path().join("network.toml");
        std::fs::write(&network_path, network).expect("write network file");
        let policy = Arc::new(entente::config::load_network(&network_path).expect("valid network"));
        let layout = PkiLayout::new(dir.path().join("certs"));
        pki::generate(&policy, &layout, false).expect("generate PKI");

        let mut bound = Vec::new();
        for &nation in policy.nations().keys() {
            let config = node_config(&policy, &layout, dir.path(), &settings, nation);
            let endpoint = node::bind(&config, "127.0.0.1:0".parse().unwrap()).expect("bind");
            bound.push((config, endpoint));
        }
        let addresses: BTreeMap<Nation, SocketAddr> = bound
            .iter()
            .map(|(config, endpoint)| (config.nation, endpoint.local_addr().unwrap()))
            .collect();
        let nodes = bound
            .into_iter()
            .map(|(config, endpoint)| (config.nation, spawn_node(config, endpoint, &addresses)))
            .collect();
        let network = TestNetwork {
            dir,
            policy,
            layout,
            settings,
            addresses,
            nodes,
        };
        for (&from, nation_policy) in network.policy.nations() {
            for &to in &nation_policy.peers {
                network
                    .wait_for_audit(from, |line| {
                        line.contains("\"reason\":\"link-up\"")
                            && line.contains(&format!("\"subject\":\"{to}\""))
                    })
                    .await;
            }
        }
        // Every node has heard every other announce all its links, so
        // every delivery tree is complete.
        for &at in network.policy.nations().keys() {
            for (&of, of_policy) in network.policy.nations() {
                if at == of {
                    continue;
                }
                let links: Vec<&str> = of_policy.peers.iter().map(Nation::as_str).collect();
                let expected = format!("links: {};", links.join(", "));
                network
                    .wait_for_audit(at, |line| {
                        line.contains("\"reason\":\"announcement\"")
                            && line.contains(&format!("\"subject\":\"{of}\""))
                            && line.contains(&expected)
                    })
                    .await;
            }
        }
        network
    }

    pub fn addr(&self, nation: Nation) -> SocketAddr {
        self.nodes[&nation].addr
    }

    /// The admin handle of a running node (reload, cut, restore, status).
    pub fn control(&self, nation: Nation) -> node::NodeControl {
        self.nodes[&nation].control.clone()
    }

    /// The network file the nodes reload from.
    pub fn network_path(&self) -> PathBuf {
        self.dir.path().join("network.toml")
    }

    /// Stops a node and starts a new one on the same address.
    pub async fn restart(&mut self, nation: Nation) {
        self.stop(nation).await.expect("clean stop");
        self.start_again(nation).await;
    }

    /// Starts a stopped node again on its address, with its data folder.
    pub async fn start_again(&mut self, nation: Nation) {
        let config = node_config(
            &self.policy,
            &self.layout,
            self.dir.path(),
            &self.settings,
            nation,
        );
        // A stopped node has let go of its port and its data folder.
        let endpoint = node::bind(&config, self.addresses[&nation]).expect("rebind the same address");
        self.nodes
            .insert(nation, spawn_node(config, endpoint, &self.addresses));
    }

    fn audit_path(&self, nation: Nation) -> PathBuf {
        data_dir(self.dir.path(), nation).join("audit.jsonl")
    }

    /// The whole lines of `nation`'s audit log: a line the writer is
    /// still appending (read without its newline) is left for next time.
    pub fn audit_lines(&self, nation: Nation) -> Vec<String> {
        whole_lines(&std::fs::read_to_string(self.audit_path(nation)).unwrap_or_default())
    }

    /// Waits until a line of `nation`'s audit log matches. Panics after a
    /// generous limit, which only a broken feature reaches.
    pub async fn wait_for_audit(&self, nation: Nation, matches: impl Fn(&str) -> bool) -> String {
        for _ in 0..1000 {
            if let Some(line) = self.audit_lines(nation).into_iter().find(|l| matches(l)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no matching audit record in {nation}'s log:\n{}",
            self.audit_lines(nation).join("\n")
        );
    }

    /// Waits until at least `count` lines of `nation`'s audit log match,
    /// then returns how many do.
    pub async fn wait_for_audit_count(
        &self,
        nation: Nation,
        count: usize,
        matches: impl Fn(&str) -> bool,
    ) -> usize {
        let current = || self.audit_lines(nation).iter().filter(|l| matches(l)).count();
        for _ in 0..1000 {
            if current() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        current()
    }

    /// Waits until `at`'s node has heard that `of` is interested in
    /// `pattern` (its announcement lists the pattern), so a message
    /// published at `at` after this will be routed there.
    pub async fn wait_for_interest(&self, at: Nation, of: Nation, pattern: &str) {
        self.wait_for_audit(at, |line| {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            record["reason"] == "announcement"
                && record["subject"] == of.as_str()
                && record["detail"]
                    .as_str()
                    .and_then(|d| d.split("interest: ").nth(1))
                    .is_some_and(|list| list.split(", ").any(|p| p == pattern))
        })
        .await;
    }

    pub fn options(&self, principal: &str) -> ClientOptions {
        let nation = self.policy.principal(principal).expect("known principal").nation;
        let overrides = Overrides {
            node: Some(self.addr(nation).to_string()),
            ..Overrides::default()
        };
        ClientOptions::for_principal(principal, Some(&self.policy), &self.layout, &overrides)
            .expect("options")
    }

    pub async fn client(&self, principal: &str) -> Client {
        Client::connect(self.options(principal))
            .await
            .expect("client connects")
    }

    /// The configuration `nation`'s node runs with in this network.
    pub fn node_config(&self, nation: Nation) -> NodeConfig {
        node_config(
            &self.policy,
            &self.layout,
            self.dir.path(),
            &self.settings,
            nation,
        )
    }

    /// The certificate and key files of a node or principal.
    pub fn identity_files(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        self.layout.cert_and_key(identity)
    }

    /// Stops one node and waits for it to finish.
    pub async fn stop(&mut self, nation: Nation) -> Result<(), NodeError> {
        let node = self.nodes.get_mut(&nation).expect("running node");
        if let Some(stop) = node.stop.take() {
            let _ = stop.send(());
        }
        match node.task.take() {
            Some(task) => task.await.expect("node task does not panic"),
            None => Ok(()),
        }
    }

    /// Plays `member`'s node towards `to`'s node: stops the real one
    /// first (a node keeps one inbound link per peer, and the real one
    /// would take its link back when it re-dials), then opens a link with
    /// `member`'s genuine node certificate, past `Hello`.
    pub async fn play_node(&mut self, member: Nation, to: Nation) -> RawConnection {
        self.stop(member).await.expect("the real node stops cleanly");
        let mut link = RawConnection::open(self, &Identity::Node(member), to)
            .await
            .expect("a link as the member's node");
        assert_eq!(link.hello().await, Frame::PeerWelcome { nation: to });
        link
    }

    pub async fn shutdown(mut self) {
        let nations: Vec<Nation> = self.nodes.keys().copied().collect();
        for nation in nations {
            self.stop(nation).await.expect("clean shutdown");
        }
    }
}

fn node_config(
    policy: &Arc<Policy>,
    layout: &PkiLayout,
    root: &Path,
    settings: &NodeSettings,
    nation: Nation,
) -> NodeConfig {
    let mut config =
        NodeConfig::load(nation, policy.clone(), layout, data_dir(root, nation)).expect("node config");
    config.settings = settings.clone();
    config.policy_source = Some(entente::config::PolicySource::Network(root.join("network.toml")));
    config
}

/// The lines of `text` that end in a newline: a log read while its writer
/// appends may end in part of a line.
pub fn whole_lines(text: &str) -> Vec<String> {
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole.lines().map(str::to_owned).collect()
}

fn data_dir(root: &Path, nation: Nation) -> PathBuf {
    root.join("data").join(nation.as_str())
}

/// A raw connection that speaks the wire protocol by hand, to send what a
/// well-behaved client never would. It presents `identity`'s certificate
/// and expects the node of `node_nation`.
pub struct RawConnection {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RawConnection {
    pub async fn open(
        net: &TestNetwork,
        identity: &Identity,
        node_nation: Nation,
    ) -> Result<RawConnection, String> {
        Self::open_with_alpn(net, identity, node_nation, wire::ALPN).await
    }

    /// As `open`, offering `alpn` as the TLS application protocol.
    pub async fn open_with_alpn(
        net: &TestNetwork,
        identity: &Identity,
        node_nation: Nation,
        alpn: &[u8],
    ) -> Result<RawConnection, String> {
        Self::connect(net, identity, node_nation, net.addr(node_nation), alpn).await
    }

    /// As `open`, but dialing `addr`, which need not be `node_nation`'s
    /// node: to see what a dialer does when another node answers.
    pub async fn open_at(
        net: &TestNetwork,
        identity: &Identity,
        node_nation: Nation,
        addr: SocketAddr,
    ) -> Result<RawConnection, String> {
        Self::connect(net, identity, node_nation, addr, wire::ALPN).await
    }

    async fn connect(
        net: &TestNetwork,
        identity: &Identity,
        node_nation: Nation,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<RawConnection, String> {
        let (cert, key) = net.identity_files(identity);
        let trust = pki::load_trust_store(&net.policy, &net.layout).map_err(|e| e.to_string())?;
        let config = entente::tls::client_config_for_protocol(
            &trust,
            vec![pki::read_cert(&cert).unwrap()],
            pki::read_key(&key).unwrap(),
            Identity::Node(node_nation),
            alpn,
        )
        .map_err(|e| e.to_string())?;
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connection = endpoint
            .connect_with(config, addr, "127.0.0.1")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        Ok(RawConnection {
            endpoint,
            connection,
            send,
            recv,
        })
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        self.send.write_all(&wire::encode(frame).unwrap()).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The node may already have closed the connection; that is what
        // some tests want, so a failed write is not an error here.
        let _ = self.send.write_all(bytes).await;
    }

    /// Says `Hello` and returns the node's answer. As a node, it then
    /// exchanges resolution logs as a link opens: it sends none, and reads
    /// the node's up to its `ResolutionsSent`.
    pub async fn hello(&mut self) -> Frame {
        self.send_frame(&Frame::Hello {
            version: wire::PROTOCOL_VERSION,
        })
        .await;
        let answer = self.next_frame().await;
        if matches!(answer, Frame::PeerWelcome { .. }) {
            self.send_frame(&Frame::ResolutionsSent).await;
            while !matches!(self.next_frame().await, Frame::ResolutionsSent) {}
        }
        answer
    }

    async fn next_frame(&mut self) -> Frame {
        entente::stream::read_frame(&mut self.recv)
            .await
            .expect("a frame from the node")
            .expect("a frame, not the end of the stream")
    }

    /// The reason the node gave when it closed the connection.
    pub async fn close_reason(&self) -> String {
        match self.connection.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => other.to_string(),
        }
    }
}

// ----- A hostile member (tests/containment.rs) -----

/// `nation`'s node turned hostile: it holds its genuine certificate, greets
/// the link `at` dials to it, has announced interest in `patterns` to
/// `at`, and treats every link dialed to it the `hostility` way.
pub struct HostilePeer {
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
    /// Its one inbound link at `at`, which carried the announcement.
    pub announcer: quinn::Connection,
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
        self.task.abort();
    }
}

impl TestNetwork {
    /// Stops `nation`'s real node and runs a hostile one in its place, on
    /// its address and with its certificate; returns once `at` has a live
    /// link to it and has heard its interest in every pattern.
    pub async fn hostile_peer(
        &mut self,
        nation: Nation,
        at: Nation,
        hostility: entente::hostile::Hostility,
        patterns: &[&str],
    ) -> HostilePeer {
        let link_up = |l: &str| {
            l.contains("\"reason\":\"link-up\"") && l.contains(&format!("\"subject\":\"{nation}\""))
        };
        let links_before = self.audit_lines(at).iter().filter(|l| link_up(l)).count();
        self.stop(nation).await.expect("clean stop");
        let config = self.node_config(nation);
        let endpoint = node::bind(&config, self.addr(nation))
            .expect("bind the hostile node")
            .endpoint()
            .clone();
        let task = tokio::spawn(entente::hostile::serve(endpoint.clone(), nation, hostility));
        self.wait_for_audit_count(at, links_before + 1, link_up).await;
        let announcer = entente::hostile::announce_interest(&config, &endpoint, at, self.addr(at), patterns)
            .await
            .expect("the hostile node announces its interest");
        for pattern in patterns {
            self.wait_for_interest(at, nation, pattern).await;
        }
        HostilePeer {
            endpoint,
            task,
            announcer,
        }
    }
}
