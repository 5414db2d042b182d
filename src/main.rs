//! The `entente` command line: argument parsing and dispatch only.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use entente::admin::{self, AdminCommand, AdminReply};
use entente::audit;
use entente::bench;
use entente::client::{delivery_json, delivery_line, escape_text, Client, ClientOptions, Overrides};
use entente::config::{load_network, PolicySource, DEFAULT_COALITION_FILE, DEFAULT_NETWORK_FILE};
use entente::hostile::Hostility;
use entente::label::Nation;
use entente::node::{self, NodeConfig, NodeSettings};
use entente::pki::{self, PkiLayout, DEFAULT_CERTS_DIR};
use entente::sim;
use entente::store::Durability;

/// mimalloc instead of glibc's malloc: the message path allocates and frees
/// small buffers on several threads, and glibc's allocator took about 15 %
/// of a 1-hop throughput run's CPU (BENCHMARKS.md). Without
/// transparent huge pages (its `no_thp` feature): see ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "entente",
    version,
    about = "Federated, security-label-aware message broker for sharing classified intelligence between nations",
    after_help = "Quick start:
  entente up                                   # the sample network, on loopback
  entente sub --as fra.analyst --topic 'sigint.>' --json
  entente pub --as gbr.analyst --topic sigint.ru.launch --label 'SECRET//REL TO GBR, FRA' 'launch detected'
  entente explain 'S//REL TO NORDIC'"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every node of the network in this process, on loopback, until Ctrl-C.
    #[command(after_help = "Example (creates certs/ on first run):
  entente up
  entente up --network config/network.toml --certs certs")]
    Up {
        #[arg(long, default_value = DEFAULT_NETWORK_FILE)]
        network: PathBuf,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
        /// Parent of each node's data folder (audit log): DIR/<NATION>/.
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Run one nation's broker node until Ctrl-C.
    #[command(after_help = "Example:
  entente node --nation GBR
  entente node --nation FRA --listen 0.0.0.0:7402 --data /var/lib/entente/FRA
  entente node --coalition config/coalition.toml --national config/national/GBR.toml --certs gbr-certs")]
    Node {
        /// The nation whose node this is, such as GBR [default: the
        /// national file's].
        #[arg(long, required_unless_present = "national")]
        nation: Option<String>,
        #[command(flatten)]
        network: NetworkArgs,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
        /// Address to listen on [default: the nation's address in the network file].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data folder, holding audit.jsonl [default: data/<NATION>].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Sessions one principal may hold at once.
        #[arg(long, default_value_t = node::DEFAULT_MAX_SESSIONS_PER_PRINCIPAL, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_sessions_per_principal: usize,
        /// Inbound connections (sessions and peer links) held at once.
        #[arg(long, default_value_t = node::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_connections: usize,
        /// sync: every message this node takes custody of is in
        /// <data>/store.redb before it is acknowledged, so a crash loses
        /// nothing acknowledged; memory: nothing on disk (faster; a crash
        /// loses what the node held).
        #[arg(long, default_value = "sync")]
        durability: Durability,
        /// How long a message may wait for a durable subscription whose
        /// subscriber is away, such as 24h or 30m; older ones are dropped
        /// and audited (durable-expired).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        durable_max_age: Duration,
        /// Bytes of messages one durable subscription may hold waiting,
        /// such as 64MiB; past it the oldest are dropped and audited
        /// (durable-full).
        #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
        durable_max_bytes: usize,
    },
    /// Publish one labelled message; exits 0 only once the node has acknowledged it.
    #[command(after_help = "Examples:
  entente pub --as gbr.analyst --topic sigint.ru.launch --label 'SECRET//REL TO GBR, FRA' 'launch detected'
  echo 'from stdin' | entente pub --as gbr.analyst --topic sigint.ru --label 'S//REL TO NORDIC'
  entente pub --as gbr.analyst --topic imagery.ru --label 'C//REL TO NATO' --file photo.jpg")]
    Pub {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The topic, such as sigint.ru.launch.
        #[arg(long)]
        topic: String,
        /// The marking, such as 'SECRET//REL TO GBR, FRA'.
        #[arg(long)]
        label: String,
        /// Read the payload from this file.
        #[arg(long, conflicts_with = "data")]
        file: Option<PathBuf>,
        /// The payload; standard input is read when neither this nor --file is given.
        data: Option<String>,
    },
    /// Subscribe and print each message delivered.
    #[command(after_help = "Examples:
  entente sub --as fra.analyst --topic 'sigint.>' --json
  entente sub --as pol.airdef --topic '*.missile' --count 1 --timeout 30s
  entente sub --as fra.analyst --topic 'sigint.>' --durable watch")]
    Sub {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Pattern: `.`-separated tokens; `*` matches one token, `>` the rest.
        #[arg(long)]
        topic: String,
        /// Subscribe under this durable name: the node keeps what matches
        /// while you are away, and delivers what was not acknowledged
        /// again, in order, when you come back under the same name. Each
        /// message is acknowledged once printed. Without it, `sub` still
        /// reconnects by itself, and says how many messages it missed.
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long, such as 30s, 500ms or 2m.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// One JSON object per line: id, origin, publisher, topic, marking,
        /// and payload (or payload_b64 when it is not UTF-8). Without it,
        /// one line per message, with control characters escaped (\n,
        /// \x1b, \u{202e}, and \\ for a backslash).
        #[arg(long)]
        json: bool,
    },
    /// Measure latency, throughput and memory over real node processes.
    #[command(
        subcommand,
        after_help = "Examples:
  entente bench latency --hops 1
  entente bench throughput --subscribers 100 --json
  entente bench memory"
    )]
    Bench(BenchCommand),
    /// Run admin commands on nodes (status, reload, cut, restore), each as
    /// its own nation's admin principal.
    #[command(
        subcommand,
        after_help = "Examples:
  entente admin status
  entente admin status --nation GBR --json
  entente admin cut USA
  entente admin restore USA
  entente admin reload --as gbr.admin"
    )]
    Admin(AdminCli),
    /// Model the network: every node in this process over real QUIC and
    /// mutual TLS, emulated WAN links, traffic and timed events (such as
    /// cutting a partner out), checked by an independent oracle.
    #[command(
        after_help = "Runs with no set-up: the PKI is generated in a temporary folder.
Exits non-zero on any leak, duplicate, unexplained loss or broken audit chain.

Examples:
  entente simulate
  entente simulate config/scenarios/nordic-air-command.toml --duration 20s
  entente simulate --out /tmp/report --json > report.json"
    )]
    Simulate {
        /// The scenario file.
        #[arg(default_value = DEFAULT_SCENARIO)]
        scenario: PathBuf,
        /// Where report.json and report.html go.
        #[arg(long, default_value = "target/entente-report")]
        out: PathBuf,
        /// Run traffic this long instead of the scenario's duration (such as
        /// 20s); events given as a share of the duration move with it.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Print the whole report as JSON on standard output instead of the
        /// summary.
        #[arg(long)]
        json: bool,
        /// Keep the run's PKI, data folders and audit logs in DIR (by
        /// default they live in a temporary folder, deleted afterwards).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Manage the national PKI of a network.
    #[command(
        subcommand,
        after_help = "Example:
  entente certs init --out /tmp/pki"
    )]
    Certs(CertsCommand),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check audit logs' hash chains, and search them.
    #[command(
        subcommand,
        after_help = "Examples:
  entente audit verify                                 # every data/<NATION>/audit.jsonl
  entente audit verify data/GBR/audit.jsonl
  entente audit query --id 3f2a9c --table
  entente audit query data/GBR/audit.jsonl --nation DEU --decision deny --since 2025-03-01T12:00:00Z"
    )]
    Audit(AuditCommand),
    /// Show who may see a marking, and why a nation or principal may or may not.
    #[command(after_help = "Examples:
  entente explain 'S//REL TO NORDIC'
  entente explain 'SECRET//REL TO GBR' --to gbr.clerk
  entente explain 'SECRET//REL TO COALITION' --from GBR      # and the path to each nation
  entente explain 'SECRET//REL TO NATO' --to TUR --from GBR --json")]
    Explain {
        /// The marking, such as 'SECRET//REL TO GBR, FRA'.
        marking: String,
        /// A nation code or principal name to decide for.
        #[arg(long)]
        to: Option<String>,
        /// The originating nation: it always may see its own messages, its
        /// release ceilings apply, and each nation's path through the
        /// delivery tree is shown.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value = DEFAULT_NETWORK_FILE)]
        network: PathBuf,
        /// Print one JSON object with marking, nations, principals (paths
        /// with --from; decision, reason and detail with --to).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Split a whole-network file into the coalition file every member
    /// shares (OUT/coalition.toml: levels, compartments, communities,
    /// nodes, links, CA fingerprints, resolution rules) and one national
    /// file per nation (OUT/national/<NATION>.toml: its principals,
    /// admins and release ceilings), which that nation alone keeps.
    #[command(after_help = "Example:
  entente config split --network config/network.toml --out split
  entente node --coalition split/coalition.toml --national split/national/GBR.toml")]
    Split {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_NETWORK_FILE)]
        network: PathBuf,
        /// The folder to write into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that each record's `prev` is the hash of the record before it;
    /// name the first line where the chain breaks (an edited or deleted
    /// record). Exits non-zero if a chain is broken.
    #[command(
        after_help = "Each line holds `seq` (its place in the chain) and `prev` (the SHA-256 of
the line before it, 64 zeros for the first). An edited record breaks the
next record's prev; a deleted one also leaves a gap in seq. A torn line
(a write cut short by a crash) is reported but does not break the chain.
Keep the last hash it prints elsewhere: records removed from the end of a
log show only against it.

Examples:
  entente audit verify                                 # every data/<NATION>/audit.jsonl
  entente audit verify data/GBR/audit.jsonl data/FRA/audit.jsonl
  entente audit verify new.jsonl --prev <last hash of the older file>"
    )]
    Verify {
        /// Audit logs [default: every data/<NATION>/audit.jsonl].
        files: Vec<PathBuf>,
        /// The hash the first record follows, when the file continues an
        /// older one (as verify printed it for that file).
        #[arg(long, value_name = "HASH", value_parser = parse_chain_hash)]
        prev: Option<[u8; 32]>,
    },
    /// Print the records that match every filter given: as stored (JSON
    /// lines), or as a table.
    #[command(
        after_help = "--nation matches the record's node, its subject or subjects (the nation or
one of its principals, such as gbr.analyst), or a peer of a forward record;
with --decision or --reason, a forward record matches on that peer's own
outcome. Times are RFC 3339 (2025-03-01T12:00:00Z) or microseconds since
the epoch; a summary of counted refusals matches if its span overlaps.

Examples:
  entente audit query --id 3f2a9c                      # every node's records of one message
  entente audit query data/GBR/audit.jsonl --nation DEU --decision deny --table
  entente audit query --principal gbr.analyst --event deliver
  entente audit query --reason bad-signature --since 2025-03-01T12:00:00Z --until 2025-03-01T13:00:00Z"
    )]
    Query {
        /// Audit logs [default: every data/<NATION>/audit.jsonl].
        files: Vec<PathBuf>,
        /// A message id, or its start.
        #[arg(long)]
        id: Option<String>,
        /// A nation code, such as DEU.
        #[arg(long)]
        nation: Option<String>,
        /// A principal, such as gbr.analyst (the record's subject or one of its subjects).
        #[arg(long)]
        principal: Option<String>,
        #[arg(long, value_parser = ["allow", "deny"])]
        decision: Option<String>,
        /// A reason code, such as not-releasable or bad-signature.
        #[arg(long, value_name = "CODE")]
        reason: Option<String>,
        /// An event: admit, refuse, publish, deliver, forward, drop or disconnect.
        #[arg(long, value_parser = ["admit", "refuse", "publish", "deliver", "forward", "drop", "disconnect"])]
        event: Option<String>,
        /// Records at or after this time.
        #[arg(long, value_name = "TIME", value_parser = audit::query::parse_time)]
        since: Option<u64>,
        /// Records at or before this time.
        #[arg(long, value_name = "TIME", value_parser = audit::query::parse_time)]
        until: Option<u64>,
        /// A table (time, node, event, decision, reason, subject, id) instead of JSON lines.
        #[arg(long)]
        table: bool,
    },
}

fn parse_chain_hash(text: &str) -> Result<[u8; 32], String> {
    audit::chain::parse_hash(text).ok_or_else(|| format!("`{text}` is not a hash of 64 hex digits"))
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One-way latency at a fixed, open-loop send rate (p50 … max, loss).
    #[command(after_help = "Examples:
  entente bench latency                       # 0 hops, 1 KiB, 1000 msg/s, 10 s
  entente bench latency --hops 4 --json       # 5 nodes: 3 relays between the two ends")]
    Latency {
        /// Links between publisher and subscriber, 0 to 4: 0 = both on one
        /// node; each link past the first adds a relay node.
        #[arg(long, default_value_t = 0)]
        hops: usize,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to send, such as 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Each node's durability: memory (nothing on disk, like NATS core
        /// and Zenoh) or sync (custody on disk before each ack).
        #[arg(long, default_value = "memory")]
        durability: Durability,
    },
    /// Resident memory of an idle node with its peer links up, and per idle
    /// client session (Linux: reads /proc).
    #[command(after_help = "Examples:
  entente bench memory                        # a hub with 14 peer links, 200 sessions
  entente bench memory --peers 3 --sessions 50 --json")]
    Memory {
        /// Peer links of the measured node (its star of peers, at most 14).
        #[arg(long, default_value_t = 14)]
        peers: usize,
        /// Idle client sessions opened to it for the per-session figure.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Each node's durability: memory (nothing on disk, like NATS core
        /// and Zenoh) or sync (custody on disk before each ack).
        #[arg(long, default_value = "memory")]
        durability: Durability,
    },
    /// Messages per second delivered, as fast as the chain delivers them.
    #[command(after_help = "Examples:
  entente bench throughput --hops 2
  entente bench throughput --subscribers 100 --size 64 --json
  entente bench throughput --hops 1 --hostile trickle   # a third, hostile peer asks for the same traffic")]
    Throughput {
        /// Links between publisher and subscribers, 0 to 4: 0 = all on one
        /// node; each link past the first adds a relay node.
        #[arg(long, default_value_t = 0)]
        hops: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        /// Subscribers on the last node.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Give the first node a hostile peer (a genuine node certificate)
        /// that asks for the same traffic, then stops reading or trickles.
        #[arg(long, value_enum)]
        hostile: Option<HostileArg>,
        #[arg(long)]
        json: bool,
        /// Each node's durability: memory (nothing on disk, like NATS core
        /// and Zenoh) or sync (custody on disk before each ack).
        #[arg(long, default_value = "memory")]
        durability: Durability,
    },
}

/// How the bench's hostile peer behaves (`entente bench throughput --hostile`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum HostileArg {
    /// Stops reading once its link is up.
    Stuck,
    /// Reads a little every so often: never silent, always behind.
    Trickle,
}

#[derive(Subcommand)]
enum AdminCli {
    /// Show each node's peers, sessions, queue depths, cut-out nations,
    /// counters and policy digest.
    #[command(after_help = "Examples:
  entente admin status                 # every node whose admin certificate is in certs/
  entente admin status --nation GBR --json")]
    Status {
        #[command(flatten)]
        nodes: AdminNodes,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make nodes re-read the network file, the CAs and the CRLs (as
    /// SIGHUP does to a node process). A broken file is refused whole:
    /// the node keeps its old policy and says why.
    #[command(after_help = "Examples:
  entente admin reload
  entente admin reload --nation GBR")]
    Reload {
        #[command(flatten)]
        nodes: AdminNodes,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Cut a nation out, on every other node, in parallel: each stops
    /// trusting its CA, closes its links, drops it from every
    /// releasability, community and delivery tree, purges what was queued
    /// for it, and refuses its messages. Returns once every node has
    /// applied it; exits non-zero, naming the node, if one did not.
    #[command(after_help = "Examples:
  entente admin cut USA
  entente admin cut USA --as gbr.admin      # on GBR's node only")]
    Cut {
        /// The nation to cut out, such as USA.
        nation: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Undo a cut, on every other node, in parallel.
    #[command(after_help = "Example:
  entente admin restore USA")]
    Restore {
        /// The nation to restore, such as USA.
        nation: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Propose a coalition resolution, signed as your nation's admin: it
    /// takes effect on every node once the admins of a quorum of nations
    /// (the network file's `[resolutions] quorum`) have signed it. Prints
    /// its id, for the others' `entente admin sign`.
    #[command(after_help = "Examples:
  entente admin propose cut USA --as gbr.admin
  entente admin sign 3f2a9c0e11d4b7a8 --as fra.admin")]
    Propose {
        /// `cut` or `restore`.
        #[arg(value_parser = ["cut", "restore"])]
        action: String,
        /// The nation it names, such as USA.
        nation: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add your nation's admin's signature to a resolution your node
    /// holds (its id, as `propose` or `resolutions` prints it).
    #[command(after_help = "Example:
  entente admin sign 3f2a9c0e11d4b7a8 --as fra.admin")]
    Sign {
        /// The resolution's id: 16 hex digits.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the coalition resolutions each node holds: in force, or
    /// gathering signatures.
    #[command(after_help = "Examples:
  entente admin resolutions --nation GBR")]
    Resolutions {
        #[command(flatten)]
        nodes: AdminNodes,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which nodes a status or reload goes to.
#[derive(Args)]
struct AdminNodes {
    /// Only this nation's node, as that nation's admin.
    #[arg(long, conflicts_with = "all")]
    nation: Option<String>,
    /// Every node whose admin certificate is in the certs folder (the default).
    #[arg(long)]
    all: bool,
}

/// Where the policy comes from: the whole network in one file, or the
/// coalition's file with one nation's own.
#[derive(Args, Clone)]
struct NetworkArgs {
    /// The whole network in one file (a demo coalition on one machine).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_NETWORK_FILE)]
    network: PathBuf,
    /// The coalition file every member shares; with --national, instead
    /// of --network [default: config/coalition.toml].
    #[arg(long, value_name = "FILE", requires = "national", conflicts_with = "network")]
    coalition: Option<PathBuf>,
    /// Your nation's own file: its principals, admins and release
    /// ceilings. Read with the coalition file, instead of --network.
    #[arg(long, value_name = "FILE", conflicts_with = "network")]
    national: Option<PathBuf>,
}

impl NetworkArgs {
    fn source(&self) -> PolicySource {
        match &self.national {
            Some(national) => PolicySource::Split {
                coalition: self
                    .coalition
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_COALITION_FILE)),
                national: national.clone(),
            },
            None => PolicySource::Network(self.network.clone()),
        }
    }

    fn load(&self) -> anyhow::Result<entente::policy::Policy> {
        Ok(self.source().load()?)
    }
}

/// As whom, and how long to wait.
#[derive(Args)]
struct AdminArgs {
    /// Act as this admin principal, on its own nation's node only
    /// [default: each nation's admin found in the certs folder, on its node].
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: Option<String>,
    #[command(flatten)]
    network: NetworkArgs,
    #[arg(long, default_value = DEFAULT_CERTS_DIR)]
    certs: PathBuf,
    /// How long each node has to answer, connecting included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// One JSON object with every node's answer.
    #[arg(long)]
    json: bool,
}

/// How a client finds its node, certificate, key and CA.
#[derive(Args)]
struct ConnectArgs {
    /// The principal to act as, such as gbr.analyst.
    #[arg(long = "as", value_name = "PRINCIPAL")]
    principal: String,
    #[command(flatten)]
    network: NetworkArgs,
    #[arg(long, default_value = DEFAULT_CERTS_DIR)]
    certs: PathBuf,
    /// The node's host:port [default: from the network file].
    #[arg(long)]
    node: Option<String>,
    /// Client certificate (PEM) [default: CERTS/<NATION>/<PRINCIPAL>.crt].
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (PEM) [default: CERTS/<NATION>/<PRINCIPAL>.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// The CA of your nation, which issued the node's certificate [default: CERTS/<NATION>/ca.crt].
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl ConnectArgs {
    /// Where and as whom to connect, read once: a reconnect uses the same.
    fn options(&self) -> anyhow::Result<ClientOptions> {
        let overrides = Overrides {
            node: self.node.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        };
        let all_given = [
            overrides.node.is_some(),
            overrides.cert.is_some(),
            overrides.key.is_some(),
            overrides.ca.is_some(),
        ]
        .iter()
        .all(|given| *given);
        let policy = if all_given {
            None
        } else {
            Some(self.network.load()?)
        };
        Ok(ClientOptions::for_principal(
            &self.principal,
            policy.as_ref(),
            &PkiLayout::new(&self.certs),
            &overrides,
        )?)
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.options()?).await?)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    entente::sim::scenario::parse_duration(text)
}

/// A size such as 64MiB, 512KiB, 1GiB or a plain number of bytes.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|_| {
        format!("`{text}` is not a size: use a number of bytes, or KiB, MiB or GiB, such as 64MiB")
    })?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("`{other}` is not a unit of size: use B, KiB, MiB or GiB")),
    };
    match number.checked_mul(scale) {
        Some(0) | None => Err(format!(
            "`{text}` is not a usable size: it must be above 0 and fit in memory"
        )),
        Some(bytes) => Ok(bytes),
    }
}

const DEFAULT_SCENARIO: &str = "config/scenarios/europe-cut-usa.toml";

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA, a node certificate and the principals' certificates:
    /// for one nation with --nation (what a nation's operator runs: no
    /// other nation's key is made), or for every nation (the whole
    /// coalition on one machine, for `up`, `simulate` and the tests).
    #[command(after_help = "Examples:
  entente certs init --nation GBR --out /etc/entente/certs
  entente certs init --out /tmp/pki          # every nation: a demo coalition on one machine
  openssl verify -CAfile /tmp/pki/GBR/ca.crt /tmp/pki/GBR/node.crt")]
    Init {
        #[command(flatten)]
        network: NetworkArgs,
        /// Folder to write the PKI into.
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        out: PathBuf,
        /// Only this nation's CA, node and principals.
        #[arg(long)]
        nation: Option<String>,
        /// Overwrite existing keys.
        #[arg(long)]
        force: bool,
    },
    /// Write the member bundle a nation gives its partners: its CA
    /// certificate, its node's certificate and address, and its CRL.
    /// Nothing in it is secret.
    #[command(after_help = "Example:
  entente certs export --nation GBR --out gbr.bundle.toml")]
    Export {
        /// The nation whose bundle to write, such as GBR.
        #[arg(long)]
        nation: String,
        #[command(flatten)]
        network: NetworkArgs,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
        /// The bundle file [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Add a partner's member bundle to the certs folder. Refused if its
    /// CA did not issue its node certificate, if that certificate is
    /// expired or claims another identity, or if its CRL is not its CA's.
    #[command(after_help = "Example:
  entente certs import fra.bundle.toml")]
    Import {
        /// The bundle file, as `certs export` wrote it.
        bundle: PathBuf,
        #[command(flatten)]
        network: NetworkArgs,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
    },
    /// Issue, or renew, one principal's certificate and key under its
    /// nation's CA, touching nothing else. The principal must be in the
    /// network file.
    #[command(after_help = "Example:
  entente certs issue gbr.analyst")]
    Issue {
        /// The principal, such as gbr.analyst.
        principal: String,
        #[command(flatten)]
        network: NetworkArgs,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
    },
    /// Re-sign a nation's CRL with its CA, every revocation kept, valid
    /// for another 30 days: nodes refuse a nation's certificates once its
    /// CRL is past its next update.
    #[command(
        name = "renew-crl",
        after_help = "Example:
  entente certs renew-crl --nation GBR"
    )]
    RenewCrl {
        /// The nation, such as GBR.
        #[arg(long)]
        nation: String,
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
    },
    /// Revoke one node or principal certificate: add it to its nation's
    /// CRL (<certs>/<NATION>/ca.crl), signed by the nation's CA.
    #[command(
        group(clap::ArgGroup::new("whose").required(true).args(["principal", "node"])),
        after_help = "Examples:
  entente certs revoke --nation GBR --principal gbr.analyst
  entente certs revoke --nation FRA --node --certs /tmp/pki
  openssl crl -in certs/GBR/ca.crl -CAfile certs/GBR/ca.crt -noout -text"
    )]
    Revoke {
        /// The nation whose CA issued the certificate, such as GBR.
        #[arg(long)]
        nation: String,
        /// Revoke this principal's certificate; it must be one of the nation's.
        #[arg(long)]
        principal: Option<String>,
        /// Revoke the nation's node certificate.
        #[arg(long)]
        node: bool,
        /// Folder holding the PKI.
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        certs: PathBuf,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// One thread for one node (or one bench client process): no hand-offs
/// between worker threads on the message path, which measured faster on
/// two cores than the multi-threaded runtime (BENCHMARKS.md).
fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What `sub` subscribes to.
struct Subscription {
    pattern: String,
    durable: Option<String>,
}

impl Subscription {
    /// Subscribes: under the durable name, or as a plain subscription with
    /// a watch of this process's own (`watch`), so that after a
    /// reconnection the node says how many messages were missed.
    async fn on(&self, client: &Client, watch: &str) -> Result<Option<u64>, entente::client::ClientError> {
        match &self.durable {
            Some(name) => client.subscribe_durable(name, &self.pattern).await.map(|()| None),
            None => client.subscribe_watched(watch, &self.pattern).await,
        }
    }
}

/// Message ids `sub` remembers having printed, so a message delivered
/// again after a reconnect (printed, but its acknowledgement lost with the
/// connection) is printed once.
const PRINTED_IDS: usize = 64 * 1024;
/// The first and the longest wait between reconnection attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_LONGEST: Duration = Duration::from_secs(5);

async fn subscribe(
    connect: ConnectArgs,
    subscription: Subscription,
    count: Option<u64>,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let options = connect.options()?;
    // The first connection must work: a mistake in the options, or a node
    // that is not there, is said at once rather than retried for ever.
    let mut client = Client::connect(options.clone()).await?;
    let watch = format!("sub-{:016x}", rand_u64()?);
    subscription
        .on(&client, &watch)
        .await
        .context("subscribe failed")?;
    let pattern = &subscription.pattern;
    let durable = match &subscription.durable {
        Some(name) => format!(" (durable {name})"),
        None => String::new(),
    };
    // On stderr even with --json, so scripts know when publishing is safe.
    // The principal's name is the node's word for it, so it is escaped.
    eprintln!(
        "subscribed to {pattern}{durable} as {} ({})",
        escape_text(client.principal()),
        client.nation()
    );
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut received = 0u64;
    let mut printed = std::collections::HashSet::new();
    let mut printed_order = std::collections::VecDeque::new();
    let outcome = loop {
        if count.is_some_and(|n| received >= n) {
            break Ok(ExitCode::SUCCESS);
        }
        let next = client.next_received();
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                Ok(next) => next,
                Err(_) => break timed_out(count, received),
            },
            None => tokio::select! {
                next = next => next,
                () = ctrl_c() => break Ok(ExitCode::SUCCESS),
            },
        };
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                eprintln!("lost the node: {err}; reconnecting");
                let lost = tokio::time::Instant::now();
                let missed;
                (client, missed) = match reconnect(&options, (&subscription, &watch), deadline).await {
                    Reconnected::Yes(client, missed) => (*client, missed),
                    Reconnected::Refused(err) => {
                        break Err(err.context("subscribe failed after reconnecting"))
                    }
                    Reconnected::Deadline => break timed_out(count, received),
                    Reconnected::Interrupted => break Ok(ExitCode::SUCCESS),
                };
                let away = lost.elapsed().as_secs_f64();
                match (&subscription.durable, missed) {
                    (Some(_), _) => eprintln!("reconnected after {away:.1}s; resuming{durable}"),
                    (None, Some(missed)) => eprintln!(
                        "reconnected after {away:.1}s; missed {missed} message(s) that reached the node meanwhile (use --durable NAME to keep them)"
                    ),
                    (None, None) => eprintln!(
                        "reconnected after {away:.1}s; missed an unknown number of messages: the node no longer knew this subscription (it restarted without a store, or it was away over 10 minutes); use --durable NAME to keep them"
                    ),
                }
                continue;
            }
        };
        let id = message.delivery.id;
        if printed.insert(id) {
            printed_order.push_back(id);
            if printed_order.len() > PRINTED_IDS {
                if let Some(oldest) = printed_order.pop_front() {
                    printed.remove(&oldest);
                }
            }
            received += 1;
            let line = if json {
                delivery_json(&message.delivery).to_string()
            } else {
                delivery_line(&message.delivery)
            };
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
        }
        // Acknowledged once printed: a crash before this gets it again.
        if let Some(cursor) = message.durable {
            // A lost connection shows at the next read.
            let _ = client.ack(&cursor.name, cursor.seq).await;
        }
    };
    client.close().await;
    outcome
}

/// 64 bits from the system's random source.
fn rand_u64() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// How a reconnection ended.
enum Reconnected {
    /// With, for a plain subscription, how many messages it missed.
    Yes(Box<Client>, Option<u64>),
    /// Connected, but the node refused the subscription.
    Refused(anyhow::Error),
    Deadline,
    Interrupted,
}

/// Connects and subscribes again, with a growing pause between attempts,
/// until it works, the node refuses the subscription, the deadline
/// passes or the user interrupts.
async fn reconnect(
    options: &ClientOptions,
    (subscription, watch): (&Subscription, &str),
    deadline: Option<tokio::time::Instant>,
) -> Reconnected {
    let mut pause = RECONNECT_FIRST;
    let mut said = false;
    loop {
        let wake = tokio::time::Instant::now() + pause;
        let wake = deadline.map_or(wake, |deadline| wake.min(deadline));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = ctrl_c() => return Reconnected::Interrupted,
        }
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return Reconnected::Deadline;
        }
        match Client::connect(options.clone()).await {
            Ok(client) => match subscription.on(&client, watch).await {
                Ok(missed) => return Reconnected::Yes(Box::new(client), missed),
                Err(err @ entente::client::ClientError::Refused { .. }) => {
                    return Reconnected::Refused(err.into())
                }
                // Lost again before the answer: try again.
                Err(_) => {}
            },
            Err(err) => {
                if !said {
                    eprintln!("cannot reach the node yet ({err}); retrying");
                    said = true;
                }
            }
        }
        pause = (pause * 2).min(RECONNECT_LONGEST);
    }
}

fn timed_out(count: Option<u64>, received: u64) -> anyhow::Result<ExitCode> {
    match count {
        Some(count) => bail!("timed out after receiving {received} of {count} messages"),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator's nodes log what they refuse and cut, which is the
    // point of a scenario: it goes into the report, not over the progress
    // bar.
    let quiet = matches!(cli.command, Command::Simulate { .. });
    init_tracing(cli.verbose, quiet);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match verbose {
        0 if quiet => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Reloads every node on each SIGHUP, as `entente admin reload` would,
/// and says on standard error what each did.
fn reload_on_sighup(controls: Vec<node::NodeControl>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed here, not in the task, so SIGHUP is handled from the
        // moment this returns.
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return eprintln!("cannot listen for SIGHUP; use `entente admin reload`");
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                for control in &controls {
                    match control.reload().await {
                        Ok(applied) => eprintln!(
                            "{}: reloaded, policy {}, closed {}",
                            applied.node,
                            applied.policy_digest,
                            applied.closed.len()
                        ),
                        Err(err) => eprintln!("reload failed: {err}"),
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(controls);
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up { network, certs, data } => cmd_up(network, certs, data),
        Command::Node {
            nation,
            network,
            certs,
            listen,
            data,
            max_sessions_per_principal,
            max_connections,
            durability,
            durable_max_age,
            durable_max_bytes,
        } => cmd_node(
            nation,
            network,
            certs,
            listen,
            data,
            NodeSettings {
                max_sessions_per_principal,
                max_connections,
                durability,
                durable_max_age,
                durable_max_bytes,
                ..NodeSettings::default()
            },
        ),
        Command::Pub {
            connect,
            topic,
            label,
            file,
            data,
        } => cmd_pub(connect, topic, label, file, data),
        Command::Sub {
            connect,
            topic,
            durable,
            count,
            timeout,
            json,
        } => cmd_sub(
            connect,
            Subscription {
                pattern: topic,
                durable,
            },
            count,
            timeout,
            json,
        ),
        Command::Bench(BenchCommand::Memory {
            peers,
            sessions,
            json,
            durability,
        }) => cmd_bench_memory(peers, sessions, json, durability),
        Command::Bench(BenchCommand::Latency {
            hops,
            size,
            rate,
            duration,
            json,
            durability,
        }) => cmd_bench_latency(hops, size, rate, duration, json, durability),
        Command::Bench(BenchCommand::Throughput {
            hops,
            size,
            duration,
            subscribers,
            hostile,
            json,
            durability,
        }) => cmd_bench_throughput(hops, size, duration, subscribers, hostile, json, durability),
        Command::Certs(CertsCommand::Init {
            network,
            out,
            nation,
            force,
        }) => cmd_certs_init(network, out, nation, force),
        Command::Certs(CertsCommand::Export {
            nation,
            network,
            certs,
            out,
        }) => {
            let policy = network.load()?;
            let bundle = pki::export_bundle(&policy, &PkiLayout::new(&certs), parse_nation(&nation)?)?;
            let text = toml::to_string(&bundle).context("encoding the bundle")?;
            match out {
                Some(out) => {
                    pki::write_file(&out, &text, false)?;
                    eprintln!("wrote {nation}'s member bundle to {}", out.display());
                }
                None => print!("{text}"),
            }
            // On standard error, so the bundle alone goes to standard output.
            eprintln!(
                "{nation}'s CA fingerprint, for [nations.{nation}] ca_fingerprint in the coalition file: {}",
                bundle.ca_fingerprint()?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Import {
            bundle,
            network,
            certs,
        }) => {
            let policy = network.load()?;
            let nation = pki::import_bundle(&policy, &PkiLayout::new(&certs), &bundle)?;
            println!(
                "imported {nation}'s CA, node certificate and CRL into {}; running nodes take them on reload",
                certs.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Issue {
            principal,
            network,
            certs,
        }) => {
            let policy = network.load()?;
            let layout = PkiLayout::new(&certs);
            let identity = pki::issue_principal(&policy, &layout, &principal)?;
            let (cert, key) = layout.cert_and_key(&identity);
            println!("issued {identity}: {} and {}", cert.display(), key.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::RenewCrl { nation, certs }) => {
            let (path, listed) = pki::renew_crl(&PkiLayout::new(&certs), parse_nation(&nation)?)?;
            println!(
                "re-signed {}: {listed} certificate(s) listed, valid for 30 days; give it to every node (a new bundle, or the file) and reload them",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            scenario,
            out,
            duration,
            json,
            keep,
        } => cmd_simulate(scenario, out, duration, json, keep),
        Command::Admin(AdminCli::Status { nodes, admin }) => {
            cmd_admin(admin, Some(nodes), AdminCommand::Status)
        }
        Command::Admin(AdminCli::Reload { nodes, admin }) => {
            cmd_admin(admin, Some(nodes), AdminCommand::Reload)
        }
        Command::Admin(AdminCli::Cut { nation, admin }) => {
            cmd_admin(admin, None, AdminCommand::Cut(parse_nation(&nation)?))
        }
        Command::Admin(AdminCli::Restore { nation, admin }) => {
            cmd_admin(admin, None, AdminCommand::Restore(parse_nation(&nation)?))
        }
        Command::Admin(AdminCli::Resolutions { nodes, admin }) => {
            cmd_admin(admin, Some(nodes), AdminCommand::Resolutions)
        }
        Command::Admin(AdminCli::Propose {
            action,
            nation,
            admin,
        }) => {
            let action = if action == "cut" {
                entente::resolution::Action::Cut
            } else {
                entente::resolution::Action::Restore
            };
            cmd_resolution(admin, ResolutionCall::Propose(action, parse_nation(&nation)?))
        }
        Command::Admin(AdminCli::Sign { id, admin }) => {
            let id = id.parse().map_err(|err: String| anyhow::anyhow!(err))?;
            cmd_resolution(admin, ResolutionCall::Sign(id))
        }
        Command::Certs(CertsCommand::Revoke {
            nation,
            principal,
            node: _,
            certs,
        }) => cmd_certs_revoke(&nation, principal, certs),
        Command::Config(ConfigCommand::Split { network, out }) => cmd_config_split(network, out),
        Command::Explain {
            marking,
            to,
            from,
            network,
            json,
        } => cmd_explain(marking, to, from, network, json),
        Command::Audit(command) => cmd_audit(command),
    }
}

/// The logs named, or every data/<NATION>/audit.jsonl.
fn audit_logs(files: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if !files.is_empty() {
        return Ok(files);
    }
    let logs = audit::command::default_logs(std::path::Path::new("data"));
    if logs.is_empty() {
        bail!("no audit log found in data/<NATION>/audit.jsonl; name one, such as data/GBR/audit.jsonl");
    }
    Ok(logs)
}

fn cmd_audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        AuditCommand::Verify { files, prev } => {
            let intact = audit::command::verify(&audit_logs(files)?, prev, &mut stdout)?;
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Query {
            files,
            id,
            nation,
            principal,
            decision,
            reason,
            event,
            since,
            until,
            table,
        } => {
            let filter = audit::query::Filter {
                id,
                nation,
                principal,
                decision,
                reason,
                event,
                since_us: since,
                until_us: until,
            };
            audit::command::query(&audit_logs(files)?, &filter, table, &mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_simulate(
    scenario: PathBuf,
    out: PathBuf,
    duration: Option<Duration>,
    json: bool,
    keep: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let scenario = sim::scenario::Scenario::load(&scenario)?;
    if let Some(duration) = duration {
        sim::scenario::check_duration(duration).map_err(|err| anyhow::anyhow!("--duration: {err}"))?;
    }
    let bar = indicatif::ProgressBar::new(duration.unwrap_or(scenario.duration).as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let shown = bar.clone();
    let options = sim::SimOptions {
        duration,
        keep,
        progress: Some(Arc::new(move |p: &sim::Progress| {
            shown.set_position(p.elapsed.as_millis() as u64);
            let event = p
                .last_event
                .as_deref()
                .map(|e| format!(", last event: {e}"))
                .unwrap_or_default();
            shown.set_message(format!(
                "{:.1}/{:.1} s  {}: {} published, {} delivered{event}",
                p.elapsed.as_secs_f64(),
                p.duration.as_secs_f64(),
                p.stage,
                p.published,
                p.delivered
            ));
        })),
        ..sim::SimOptions::default()
    };
    let report = runtime()?.block_on(sim::simulate(&scenario, options))?;
    bar.finish_and_clear();
    let (json_path, html_path) = sim::report::write(&report, &out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
        println!("report: {}  {}", html_path.display(), json_path.display());
    }
    Ok(if report.verdict.passed {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the run found leaks, duplicates, unexplained losses or a broken audit chain: see the report"
        );
        ExitCode::FAILURE
    })
}

fn cmd_up(network: PathBuf, certs: PathBuf, data: PathBuf) -> anyhow::Result<ExitCode> {
    let policy = Arc::new(load_network(&network)?);
    let layout = PkiLayout::new(&certs);
    runtime()?.block_on(node::run_network(
        policy,
        Some(&network),
        &layout,
        &data,
        |nodes| {
            println!("entente network running; Ctrl-C to stop, SIGHUP to reload");
            for (nation, addr, _) in nodes {
                println!("  {nation}  {addr}");
            }
            reload_on_sighup(nodes.iter().map(|(_, _, control)| control.clone()).collect());
            println!(
                "certs: {}   audit logs: {}/<NATION>/audit.jsonl",
                certs.display(),
                data.display()
            );
        },
        ctrl_c(),
    ))?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn cmd_node(
    nation: Option<String>,
    network: NetworkArgs,
    certs: PathBuf,
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    settings: NodeSettings,
) -> anyhow::Result<ExitCode> {
    let source = network.source();
    let national = source.own_nation()?;
    let nation = match (nation, national) {
        (Some(text), national) => {
            let nation =
                Nation::parse(&text).with_context(|| format!("`{text}` is not a nation code such as GBR"))?;
            if let Some(national) = national.filter(|&n| n != nation) {
                bail!("--nation {nation}, but the national file is {national}'s: run each nation's node from its own national file");
            }
            nation
        }
        (None, Some(national)) => national,
        (None, None) => bail!("say which nation's node this is: --nation GBR"),
    };
    let policy = Arc::new(source.load()?);
    let data = data.unwrap_or_else(|| PathBuf::from("data").join(nation.as_str()));
    let mut config = NodeConfig::load(nation, policy, &PkiLayout::new(&certs), data)?;
    config.settings = settings;
    config.policy_source = Some(source);
    let addr = match listen {
        Some(addr) => addr,
        None => config.listen_address()?,
    };
    single_thread_runtime()?.block_on(async {
        let endpoint = node::bind(&config, addr)?;
        let local = endpoint.local_addr()?;
        let node = node::Node::start(config, endpoint)?;
        // Before saying it listens: a SIGHUP from then on reloads.
        reload_on_sighup(vec![node.control()]);
        println!("{nation} node listening on {local}");
        node.run(ctrl_c()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_pub(
    connect: ConnectArgs,
    topic: String,
    label: String,
    file: Option<PathBuf>,
    data: Option<String>,
) -> anyhow::Result<ExitCode> {
    let payload = match (data, file) {
        (Some(data), _) => data.into_bytes(),
        (None, Some(path)) => {
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => {
            let mut buffer = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buffer)
                .context("cannot read standard input")?;
            buffer
        }
    };
    runtime()?.block_on(async {
        let client = connect.connect().await?;
        let result = client.publish(&topic, &label, payload).await;
        client.close().await;
        let id = result.context("publish failed")?;
        println!("published {id} on {topic}");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_sub(
    connect: ConnectArgs,
    subscription: Subscription,
    count: Option<u64>,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(subscribe(connect, subscription, count, timeout, json))
}

fn cmd_bench_memory(
    peers: usize,
    sessions: usize,
    json: bool,
    durability: Durability,
) -> anyhow::Result<ExitCode> {
    let star = bench::Chain::star(peers, &bench::node_command(durability)?)?;
    let report = single_thread_runtime()?.block_on(bench::memory(&star, sessions))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "memory: idle node with {peers} peer links {} KiB resident; with {sessions} idle sessions {} KiB, {:.1} KiB per session",
            report.idle_node_kib, report.with_sessions_kib, report.per_session_kib
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench_latency(
    hops: usize,
    size: usize,
    rate: u64,
    duration: Duration,
    json: bool,
    durability: Durability,
) -> anyhow::Result<ExitCode> {
    let chain = bench::Chain::start(hops, &bench::node_command(durability)?)?;
    let report = single_thread_runtime()?.block_on(bench::latency(&chain, size, rate, duration))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "latency, {hops} hops, {size} B at {rate} msg/s: p50 {:.0} µs  p90 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  max {:.0} µs",
            report.p50_us, report.p90_us, report.p99_us, report.p999_us, report.max_us
        );
        println!(
            "sent {}  received {}  lost {}  (sender's worst lag behind schedule: {:.0} µs)",
            report.sent, report.received, report.lost, report.max_send_lag_us
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench_throughput(
    hops: usize,
    size: usize,
    duration: Duration,
    subscribers: usize,
    hostile: Option<HostileArg>,
    json: bool,
    durability: Durability,
) -> anyhow::Result<ExitCode> {
    let hostile = hostile.map(|h| match h {
        HostileArg::Stuck => Hostility::Stuck,
        HostileArg::Trickle => Hostility::Trickle,
    });
    let chain = bench::Chain::start_with(hops, hostile.is_some(), &bench::node_command(durability)?)?;
    let report =
        single_thread_runtime()?.block_on(bench::throughput(&chain, size, duration, subscribers, hostile))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "throughput, {hops} hops, {size} B, {} subscribers: {:.0} msg/s delivered ({:.1} MiB/s)",
            report.subscribers, report.msgs_per_s, report.mib_per_s
        );
        println!(
            "sent {}  received {}  lost {}",
            report.sent, report.received, report.lost
        );
        if let (Some(hostile), Some(cuts)) = (report.hostile, report.hostile_cuts) {
            println!("hostile peer ({hostile}) of the first node: its link was cut {cuts} times");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_certs_init(
    network: NetworkArgs,
    out: PathBuf,
    nation: Option<String>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let source = network.source();
    let policy = source.load()?;
    let layout = PkiLayout::new(&out);
    // With a national file, only that nation's PKI: its file names no
    // other nation's principals, and no other nation's key belongs here.
    let nation = match (
        nation.as_deref().map(parse_nation).transpose()?,
        source.own_nation()?,
    ) {
        (Some(nation), Some(own)) if nation != own => {
            bail!("--nation {nation}, but the national file is {own}'s: a nation makes only its own PKI")
        }
        (nation, own) => nation.or(own),
    };
    let summary = match nation {
        Some(nation) => pki::generate_nation(&policy, &layout, nation, force)?,
        None => pki::generate(&policy, &layout, force)?,
    };
    println!(
        "wrote {} national CAs, {} node certificates and {} principal certificates to {}",
        summary.nations,
        summary.nodes,
        summary.principals,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_config_split(network: PathBuf, out: PathBuf) -> anyhow::Result<ExitCode> {
    // Refuse to split a file that would not load: the parts would not either.
    load_network(&network)?;
    let file = entente::config::read_network_file(&network)?;
    let (coalition, nationals) = entente::config::split_network(&file);
    let write = |path: PathBuf, header: String, body: String| -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, format!("{header}\n{body}"))
            .with_context(|| format!("writing {}", path.display()))
    };
    let coalition_path = out.join("coalition.toml");
    write(
        coalition_path.clone(),
        format!(
            "# The coalition file, split from {}: the same at every member's node.\n\
             # Pin each nation's CA with ca_fingerprint = \"...\" (entente certs export prints it).\n",
            network.display()
        ),
        toml::to_string(&coalition).context("encoding the coalition file")?,
    )?;
    for (nation, national) in &nationals {
        write(
            out.join("national").join(format!("{nation}.toml")),
            format!(
                "# {nation}'s national file, split from {}: {nation}'s own, shared with no one.\n",
                network.display()
            ),
            toml::to_string(national).context("encoding a national file")?,
        )?;
    }
    println!(
        "wrote {} and {} national files in {}",
        coalition_path.display(),
        nationals.len(),
        out.join("national").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_certs_revoke(nation: &str, principal: Option<String>, certs: PathBuf) -> anyhow::Result<ExitCode> {
    let nation =
        Nation::parse(nation).with_context(|| format!("`{nation}` is not a nation code such as GBR"))?;
    // clap lets through exactly one of --principal and --node.
    let identity = match principal {
        Some(name) => entente::identity::Identity::Principal { nation, name },
        None => entente::identity::Identity::Node(nation),
    };
    let revocation = pki::revoke(&PkiLayout::new(&certs), &identity)?;
    let done = if revocation.already_revoked {
        "already revoked"
    } else {
        "revoked"
    };
    println!(
        "{done} {identity}, serial {}; {} now lists {} certificate(s). \
         Running nodes apply it on reload: entente admin reload --nation {nation}",
        revocation.serial,
        revocation.crl.display(),
        revocation.listed
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_explain(
    marking: String,
    to: Option<String>,
    from: Option<String>,
    network: PathBuf,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let policy = load_network(&network)?;
    let explanation = entente::explain::explain(&policy, &marking, to.as_deref(), from.as_deref())?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&explanation).context("encoding JSON")?
        );
    } else {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.join(", ")
            }
        };
        println!("marking:    {}", explanation.marking);
        println!(
            "nations:    {}",
            list(explanation.nations.iter().map(|n| n.to_string()).collect())
        );
        println!("principals: {}", list(explanation.principals.clone()));
        let mut heading = "paths:     ";
        for (nation, path) in &explanation.paths {
            let route = match path {
                Some(path) => path.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" → "),
                None => "no path of nations that may see it reaches it".to_owned(),
            };
            println!("{heading} {nation}  {route}");
            heading = "           ";
        }
        if let Some(decision) = explanation.decision {
            match (&explanation.reason, &explanation.detail) {
                (Some(reason), Some(detail)) => {
                    println!("decision:   {decision} ({reason}): {detail}")
                }
                _ => println!("decision:   {decision}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_nation(text: &str) -> anyhow::Result<Nation> {
    Nation::parse(text)
        .filter(|nation| nation.as_str() == text)
        .with_context(|| format!("`{text}` is not a nation code such as USA (three upper-case letters)"))
}

enum ResolutionCall {
    Propose(entente::resolution::Action, Nation),
    Sign(entente::resolution::ResolutionId),
}

/// Proposes or signs a resolution as one admin, on its own node, and
/// prints where it stands.
fn cmd_resolution(args: AdminArgs, call: ResolutionCall) -> anyhow::Result<ExitCode> {
    let Some(principal) = args.principal.as_deref() else {
        bail!("say as which admin: --as gbr.admin (a resolution is signed by one nation's admin, on its own node)");
    };
    let policy = args.network.load()?;
    let layout = PkiLayout::new(&args.certs);
    let targets = admin::admin_targets(&policy, &layout, Some(principal), None)?;
    let Some((_, options)) = admin::connect_options(&policy, &layout, &targets)?
        .into_iter()
        .next()
    else {
        bail!("no node to ask for {principal}");
    };
    if let ResolutionCall::Propose(_, nation) = &call {
        if policy.nation(*nation).is_none() {
            bail!("{nation} is not a nation of {}", args.network.source());
        }
    }
    let status = runtime()?.block_on(async {
        match call {
            ResolutionCall::Propose(action, nation) => {
                admin::propose(options, action, nation, args.timeout).await
            }
            ResolutionCall::Sign(id) => admin::sign(options, id, args.timeout).await,
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("encoding JSON")?
        );
    } else {
        println!("{}", escape_text(&status.to_text()));
        if !status.in_force {
            println!(
                "other nations' admins sign it with: entente admin sign {} --as <their admin>",
                status.signed.resolution.id()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` on the nodes asked for, in parallel, and prints each
/// answer; fails naming every node that did not answer or refused.
fn cmd_admin(args: AdminArgs, nodes: Option<AdminNodes>, command: AdminCommand) -> anyhow::Result<ExitCode> {
    let policy = args.network.load()?;
    let layout = PkiLayout::new(&args.certs);
    let only: Option<Vec<Nation>> = match nodes.as_ref().and_then(|n| n.nation.as_deref()) {
        Some(nation) => Some(vec![parse_nation(nation)?]),
        None => None,
    };
    if let AdminCommand::Cut(nation) | AdminCommand::Restore(nation) = command {
        if policy.nation(nation).is_none() {
            bail!("{nation} is not a nation of {}", args.network.source());
        }
    }
    let mut targets = admin::admin_targets(&policy, &layout, args.principal.as_deref(), only.as_deref())?;
    // A cut goes to every other node: the cut nation's own node is the
    // one being cut off.
    if let AdminCommand::Cut(cut) | AdminCommand::Restore(cut) = command {
        if args.principal.is_none() {
            targets.retain(|target| target.nation != cut);
        }
    }
    let nodes = admin::connect_options(&policy, &layout, &targets)?;
    let answers = runtime()?.block_on(admin::run_on_nodes(nodes, &command, args.timeout));
    let total = answers.iter().map(|a| a.elapsed).max().unwrap_or_default();
    let failed: Vec<String> = answers
        .iter()
        .filter(|a| a.reply.is_err())
        .map(|a| a.nation.to_string())
        .collect();
    if args.json {
        let nodes: Vec<serde_json::Value> = answers
            .iter()
            .map(|answer| {
                let mut value = serde_json::json!({
                    "node": answer.nation.to_string(),
                    "elapsed_us": answer.elapsed.as_micros() as u64,
                });
                match &answer.reply {
                    Ok(AdminReply::Status(status)) => {
                        value["status"] = serde_json::to_value(status).unwrap_or_default()
                    }
                    Ok(AdminReply::Applied(applied)) => {
                        value["applied"] = serde_json::to_value(applied).unwrap_or_default()
                    }
                    Ok(AdminReply::Resolutions(held)) => {
                        value["resolutions"] = serde_json::to_value(held).unwrap_or_default()
                    }
                    Ok(AdminReply::Resolution(status)) => {
                        value["resolution"] = serde_json::to_value(status).unwrap_or_default()
                    }
                    Err(err) => value["error"] = err.to_string().into(),
                }
                value
            })
            .collect();
        let report = serde_json::json!({
            "command": command.to_string(),
            "total_us": total.as_micros() as u64,
            "failed": failed,
            "nodes": nodes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding JSON")?
        );
    } else {
        print_admin_answers(&command, &answers, total);
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{command} was not applied on {}", failed.join(", "))
    }
}

fn print_admin_answers(command: &AdminCommand, answers: &[admin::NodeAnswer], total: Duration) {
    let millis = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let mut digests = std::collections::BTreeSet::new();
    for answer in answers {
        match &answer.reply {
            Ok(AdminReply::Status(status)) => {
                digests.insert(status.policy_digest.clone());
                for line in status.to_text().lines() {
                    println!("{}", escape_text(line));
                }
            }
            Ok(AdminReply::Applied(applied)) => {
                digests.insert(applied.policy_digest.clone());
                let closed = if applied.closed.is_empty() {
                    String::new()
                } else {
                    format!("  closed: {}", applied.closed.join(", "))
                };
                let purged = if applied.purged > 0 {
                    format!("  purged {} queued message(s)", applied.purged)
                } else {
                    String::new()
                };
                println!(
                    "  {}  applied in {:>8}  acknowledged at {:>8}  policy {}{closed}{purged}",
                    answer.nation,
                    millis(Duration::from_micros(applied.apply_us)),
                    millis(answer.elapsed),
                    applied.policy_digest,
                );
            }
            Ok(AdminReply::Resolutions(held)) => {
                println!("node {}   next number {}", answer.nation, held.next_seq);
                if held.held.is_empty() {
                    println!("  no resolutions");
                }
                for status in &held.held {
                    println!("  {}", escape_text(&status.to_text()));
                }
            }
            Ok(AdminReply::Resolution(status)) => {
                println!("  {}  {}", answer.nation, escape_text(&status.to_text()))
            }
            Err(err) => println!("  {}  FAILED: {}", answer.nation, escape_text(&err.to_string())),
        }
    }
    if !matches!(command, AdminCommand::Status | AdminCommand::Resolutions) {
        println!(
            "{command}: {} node(s) acknowledged; {} from start to the last acknowledgement",
            answers.iter().filter(|a| a.reply.is_ok()).count(),
            millis(total)
        );
    }
    if digests.len() > 1 {
        println!(
            "warning: the nodes run {} different policies (digests differ)",
            digests.len()
        );
    }
}
