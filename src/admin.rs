//! Admin commands (status, reload, cut, restore): what an admin principal
//! asks its own node over the same mutual-TLS QUIC as any client, what the
//! node answers, and `run_on_nodes`, which asks many nodes in parallel,
//! each as its own nation's admin, and times each answer. The node's side
//! lives in `node::control`; the simulator calls it directly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, ClientOptions, Overrides};
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::PkiLayout;
use crate::policy::Policy;
use crate::resolution::{Action, Resolution, ResolutionId, SignedResolution};

/// What an admin principal asks its node to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Report peers, sessions, queues, suspensions, counters and the
    /// policy digest.
    Status,
    /// Re-read the network file, the CAs and the CRLs.
    Reload,
    /// Cut a nation out of the network.
    Cut(Nation),
    /// Undo a cut.
    Restore(Nation),
    /// List the coalition's resolutions this node holds, and the number a
    /// new one would take.
    Resolutions,
    /// Add a resolution, or signatures of one, to the node's log (flooded
    /// to the coalition once taken).
    Submit(SignedResolution),
}

impl std::fmt::Display for AdminCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminCommand::Status => f.write_str("status"),
            AdminCommand::Reload => f.write_str("reload"),
            AdminCommand::Cut(nation) => write!(f, "cut {nation}"),
            AdminCommand::Restore(nation) => write!(f, "restore {nation}"),
            AdminCommand::Resolutions => f.write_str("resolutions"),
            AdminCommand::Submit(signed) => write!(f, "submit {}", signed.resolution),
        }
    }
}

/// A node's answer to an admin command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// The answer to `Status`.
    Status(NodeStatus),
    /// The answer to `Reload`, `Cut` and `Restore`: applied.
    Applied(Applied),
    /// The answer to `Resolutions`.
    Resolutions(ResolutionsHeld),
    /// The answer to `Submit`: where the resolution stands now.
    Resolution(ResolutionStatus),
}

/// The resolutions one node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionsHeld {
    /// The number a resolution proposed now would take.
    pub next_seq: u64,
    /// Each resolution held, in force or gathering signatures.
    pub held: Vec<ResolutionStatus>,
}

/// One resolution, as a node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionStatus {
    /// The resolution and its valid signatures.
    pub signed: SignedResolution,
    /// Signatures it needs to be in force.
    pub needed: u64,
    /// Whether it is in force.
    pub in_force: bool,
}

impl ResolutionStatus {
    /// One line for people: `cut USA (resolution …, number …): signed by
    /// GBR, FRA (2 of 8 needed)`.
    pub fn to_text(&self) -> String {
        let signers: Vec<String> = self
            .signed
            .signatures
            .iter()
            .map(|s| s.nation.to_string())
            .collect();
        format!(
            "{}: signed by {} ({} of {} needed){}",
            self.signed.resolution,
            if signers.is_empty() {
                "nobody".to_owned()
            } else {
                signers.join(", ")
            },
            signers.len(),
            self.needed,
            if self.in_force { ", in force" } else { "" }
        )
    }
}

/// What a reload, cut or restore changed on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The node that applied it.
    pub node: String,
    /// The command, as text (`cut USA`).
    pub command: String,
    /// How long the node took to apply it, in microseconds.
    pub apply_us: u64,
    /// The digest of the policy the node runs now.
    pub policy_digest: String,
    /// Sessions and links the node closed because its new policy no
    /// longer admits them.
    pub closed: Vec<String>,
    /// Messages that were queued for a cut nation, dropped and audited.
    pub purged: u64,
    /// The nations cut out now.
    pub suspended: Vec<String>,
}

/// One node's state, for `entente admin status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's nation.
    pub node: String,
    /// A digest of what it enforces (network file, cuts, CAs and CRLs):
    /// nodes that differ run different policies or trust.
    pub policy_digest: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Each configured peer, and whether its links are up.
    pub peers: Vec<PeerStatus>,
    /// The client sessions it holds.
    pub sessions: Vec<SessionStatus>,
    /// The nations cut out.
    pub suspended: Vec<String>,
    /// Each nation whose CRL is past its next update, with when: its
    /// certificates are refused until its CA re-signs the CRL.
    #[serde(default)]
    pub expired_crls: BTreeMap<String, String>,
    /// Each nation whose CA is not the one the coalition file pins, with
    /// the fingerprint it has: none of its identities is trusted.
    #[serde(default)]
    pub mismatched_cas: BTreeMap<String, String>,
    /// Each nation none of whose bundle is imported yet: none of its
    /// identities is trusted.
    #[serde(default)]
    pub missing_cas: Vec<String>,
    /// What it has decided since it started.
    pub counters: StatusCounters,
}

/// One peer of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's nation.
    pub nation: String,
    /// Whether the link this node dialed (the one it sends on) is up.
    pub outbound: bool,
    /// Whether the link the peer dialed (the one it sends on) is up.
    pub inbound: bool,
    /// Frames held for the peer (its outbox: sent or not, not yet
    /// acknowledged), whether its link is up or down.
    pub queued: u64,
    /// Whether the peer is cut out (then it has no links).
    pub cut: bool,
}

/// One client session of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The principal.
    pub principal: String,
    /// Frames waiting in its queue.
    pub queued: u64,
}

/// A node's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounters {
    /// Messages its principals published.
    pub published: u64,
    /// Deliveries to its subscribers.
    pub delivered: u64,
    /// Message copies sent to peers.
    pub forwarded: u64,
    /// Denials by reason code, from its audit records.
    pub refused: BTreeMap<String, u64>,
    /// Message × nation pairs that no path of eligible nations reached.
    pub unreachable: u64,
}

impl NodeStatus {
    /// The status as lines of text for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "node {}   policy {}   up {}s",
            self.node, self.policy_digest, self.uptime_s
        );
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                let state = match (p.cut, p.outbound, p.inbound) {
                    (true, _, _) => "cut".to_owned(),
                    (false, true, true) => "up".to_owned(),
                    (false, false, false) => "down".to_owned(),
                    (false, out, _) => format!("half ({} only)", if out { "out" } else { "in" }),
                };
                if p.queued > 0 {
                    format!("{} {state} ({} queued)", p.nation, p.queued)
                } else {
                    format!("{} {state}", p.nation)
                }
            })
            .collect();
        let _ = writeln!(out, "  peers:     {}", none_or(peers));
        let sessions: Vec<String> = self
            .sessions
            .iter()
            .map(|s| {
                if s.queued > 0 {
                    format!("{} ({} queued)", s.principal, s.queued)
                } else {
                    s.principal.clone()
                }
            })
            .collect();
        let _ = writeln!(out, "  sessions:  {}", none_or(sessions));
        let _ = writeln!(out, "  cut out:   {}", none_or(self.suspended.clone()));
        for (nation, at) in &self.expired_crls {
            let _ = writeln!(
                out,
                "  WARNING:   {nation}'s CRL expired at {at}: {nation}'s certificates are refused until its CA re-signs it (entente certs renew-crl --nation {nation}, then a bundle or a copy of ca.crl to every node)"
            );
        }
        for (nation, found) in &self.mismatched_cas {
            let _ = writeln!(
                out,
                "  WARNING:   {nation}'s CA (fingerprint {found}) is not the one the coalition file pins: nothing of {nation} is trusted until its genuine bundle is imported"
            );
        }
        if !self.missing_cas.is_empty() {
            let _ = writeln!(
                out,
                "  no bundle: {} (nothing of theirs is trusted until it is imported: entente certs import)",
                self.missing_cas.join(", ")
            );
        }
        let c = &self.counters;
        let _ = writeln!(
            out,
            "  counters:  published {}  delivered {}  forwarded {}  unreachable {}",
            c.published, c.delivered, c.forwarded, c.unreachable
        );
        let refused: Vec<String> = c.refused.iter().map(|(code, n)| format!("{code} {n}")).collect();
        let _ = write!(out, "  refused:   {}", none_or(refused));
        out
    }
}

fn none_or(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Why an admin command could not be run on a node.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No admin principal's certificate was found for any node asked for.
    #[error("no admin credentials found in {certs} for {which}; an admin is a principal with roles = [\"admin\"] whose certificate and key are in the certs folder")]
    NoCredentials {
        /// The certs folder.
        certs: String,
        /// Which nodes were asked for.
        which: String,
    },
    /// `--as` named a principal that is not an admin of the network file.
    #[error("`{0}` is not an admin principal of the network file (roles = [\"admin\"])")]
    NotAnAdmin(String),
    /// The network has no such nation.
    #[error("{0} is not a nation of the network file")]
    UnknownNation(String),
    /// Connecting or asking failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The admin's own credentials cannot sign.
    #[error("the admin's certificate or key cannot sign a resolution: {0}")]
    Credentials(String),
    /// The node answered something else than asked.
    #[error("the node answered {0}, not what was asked")]
    Unexpected(String),
    /// The node holds no resolution with this id.
    #[error("the node holds no resolution {0}; `entente admin resolutions` lists those it holds")]
    NoSuchResolution(ResolutionId),
}

/// Signs `resolution` as the admin of `options` (its certificate and
/// key), now.
fn sign_as(
    options: &ClientOptions,
    resolution: &Resolution,
) -> Result<crate::resolution::Signature, AdminError> {
    signature(resolution, &options.cert_chain, &options.key)
}

/// Signs `resolution`, now, as the admin whose certificate chain (leaf
/// first) and private key these are.
pub fn signature(
    resolution: &Resolution,
    cert_chain: &[rustls_pki_types::CertificateDer<'static>],
    key: &rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<crate::resolution::Signature, AdminError> {
    let leaf = cert_chain
        .first()
        .ok_or_else(|| AdminError::Credentials("no certificate".into()))?;
    let nation = match crate::identity::claimed_identity(leaf) {
        Ok(Identity::Principal { nation, .. }) => nation,
        Ok(other) => return Err(AdminError::Credentials(format!("the certificate is {other}'s"))),
        Err(err) => return Err(AdminError::Credentials(err.to_string())),
    };
    let key = crate::envelope::Signer::from_pkcs8(key.secret_der())
        .map_err(|err| AdminError::Credentials(err.to_string()))?;
    let chain = cert_chain.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(resolution.sign(nation, crate::audit::now_us(), chain, &key))
}

async fn ask(
    options: ClientOptions,
    command: AdminCommand,
    timeout: Duration,
) -> Result<AdminReply, AdminError> {
    let asked = async {
        let client = Client::connect(options).await?;
        let reply = client.admin(command).await;
        client.close().await;
        Ok::<_, AdminError>(reply?)
    };
    tokio::time::timeout(timeout, asked)
        .await
        .map_err(|_| AdminError::Timeout(timeout))?
}

/// The resolutions the node of `options` (its admin's) holds.
pub async fn resolutions(options: ClientOptions, timeout: Duration) -> Result<ResolutionsHeld, AdminError> {
    match ask(options, AdminCommand::Resolutions, timeout).await? {
        AdminReply::Resolutions(held) => Ok(held),
        other => Err(AdminError::Unexpected(format!("{other:?}"))),
    }
}

async fn submit(
    options: ClientOptions,
    signed: SignedResolution,
    timeout: Duration,
) -> Result<ResolutionStatus, AdminError> {
    match ask(options, AdminCommand::Submit(signed), timeout).await? {
        AdminReply::Resolution(status) => Ok(status),
        other => Err(AdminError::Unexpected(format!("{other:?}"))),
    }
}

/// Proposes `action` on `nation` as the admin of `options`: takes the
/// next number from its node, signs, and submits. The node floods it; it
/// takes effect once a quorum of nations' admins have signed it.
pub async fn propose(
    options: ClientOptions,
    action: Action,
    nation: Nation,
    timeout: Duration,
) -> Result<ResolutionStatus, AdminError> {
    let held = resolutions(options.clone(), timeout).await?;
    let resolution = Resolution {
        seq: held.next_seq,
        action,
        nation,
        created_us: crate::audit::now_us(),
    };
    let signature = sign_as(&options, &resolution)?;
    let signed = SignedResolution {
        resolution,
        signatures: vec![signature],
    };
    submit(options, signed, timeout).await
}

/// Adds the signature of the admin of `options` to resolution `id`, as its
/// node holds it.
pub async fn sign(
    options: ClientOptions,
    id: ResolutionId,
    timeout: Duration,
) -> Result<ResolutionStatus, AdminError> {
    let held = resolutions(options.clone(), timeout).await?;
    let status = held
        .held
        .into_iter()
        .find(|status| status.signed.resolution.id() == id)
        .ok_or(AdminError::NoSuchResolution(id))?;
    let resolution = status.signed.resolution;
    let signature = sign_as(&options, &resolution)?;
    let signed = SignedResolution {
        resolution,
        signatures: vec![signature],
    };
    submit(options, signed, timeout).await
}

/// A node to ask, and as whom.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// The node's nation.
    pub nation: Nation,
    /// The admin principal to connect as.
    pub principal: String,
}

/// Whom to ask: each nation's first admin principal whose certificate is
/// in the certs folder (or only `as_principal`, on its own node), limited
/// to `nations` when given.
pub fn admin_targets(
    policy: &Policy,
    layout: &PkiLayout,
    as_principal: Option<&str>,
    nations: Option<&[Nation]>,
) -> Result<Vec<AdminTarget>, AdminError> {
    if let Some(name) = as_principal {
        let principal = policy
            .principal(name)
            .filter(|p| p.is_admin())
            .ok_or_else(|| AdminError::NotAnAdmin(name.to_owned()))?;
        return Ok(vec![AdminTarget {
            nation: principal.nation,
            principal: principal.name.clone(),
        }]);
    }
    let wanted: Vec<Nation> = match nations {
        Some(nations) => {
            for nation in nations {
                if policy.nation(*nation).is_none() {
                    return Err(AdminError::UnknownNation(nation.to_string()));
                }
            }
            nations.to_vec()
        }
        None => policy.nations().keys().copied().collect(),
    };
    let targets: Vec<AdminTarget> = wanted
        .iter()
        .filter_map(|&nation| {
            policy
                .principals()
                .filter(|p| p.nation == nation && p.is_admin())
                .find(|p| {
                    let identity = Identity::Principal {
                        nation,
                        name: p.name.clone(),
                    };
                    let (cert, key) = layout.cert_and_key(&identity);
                    cert.exists() && key.exists()
                })
                .map(|p| AdminTarget {
                    nation,
                    principal: p.name.clone(),
                })
        })
        .collect();
    if targets.is_empty() {
        return Err(AdminError::NoCredentials {
            certs: layout.root().display().to_string(),
            which: match nations {
                Some(nations) => nations
                    .iter()
                    .map(Nation::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "any node".to_owned(),
            },
        });
    }
    Ok(targets)
}

/// One node's answer, and how long it took.
#[derive(Debug)]
pub struct NodeAnswer {
    /// The node asked.
    pub nation: Nation,
    /// Its answer, or why there was none.
    pub reply: Result<AdminReply, AdminError>,
    /// From the start of the whole run to this node's answer.
    pub elapsed: Duration,
}

/// How to connect to each target as its admin (its node's address, its
/// certificate and key), read before anything is sent, so that a missing
/// file stops the command before any node has applied it.
pub fn connect_options(
    policy: &Policy,
    layout: &PkiLayout,
    targets: &[AdminTarget],
) -> Result<Vec<(Nation, ClientOptions)>, AdminError> {
    targets
        .iter()
        .map(|target| {
            let options =
                ClientOptions::for_principal(&target.principal, Some(policy), layout, &Overrides::default())?;
            Ok((target.nation, options))
        })
        .collect()
}

/// Asks every node the same command in parallel, each connection as its
/// nation's admin, with `timeout` for each (connecting included). Answers
/// come back in the order given; each one's `elapsed` runs from the start
/// of the whole run.
pub async fn run_on_nodes(
    nodes: Vec<(Nation, ClientOptions)>,
    command: &AdminCommand,
    timeout: Duration,
) -> Vec<NodeAnswer> {
    let start = Instant::now();
    let nations: Vec<Nation> = nodes.iter().map(|(nation, _)| *nation).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (nation, options)) in nodes.into_iter().enumerate() {
        let command = command.clone();
        tasks.spawn(async move {
            let ask = async {
                let client = Client::connect(options).await?;
                let reply = client.admin(command).await;
                Ok::<_, AdminError>((client, reply?))
            };
            let answered = tokio::time::timeout(timeout, ask).await;
            let elapsed = start.elapsed();
            let reply = match answered {
                Ok(Ok((client, reply))) => {
                    client.close().await;
                    Ok(reply)
                }
                Ok(Err(err)) => Err(err),
                Err(_) => Err(AdminError::Timeout(timeout)),
            };
            (
                index,
                NodeAnswer {
                    nation,
                    reply,
                    elapsed,
                },
            )
        });
    }
    let mut answers: Vec<Option<NodeAnswer>> = nations.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, answer)) = joined {
            answers[index] = Some(answer);
        }
    }
    answers
        .into_iter()
        .zip(nations)
        .map(|(answer, nation)| {
            answer.unwrap_or(NodeAnswer {
                nation,
                reply: Err(AdminError::Timeout(timeout)),
                elapsed: start.elapsed(),
            })
        })
        .collect()
}
