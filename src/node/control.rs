//! The node's side of admin commands: status, reload (network file, CAs,
//! CRLs), cut and restore. Each change builds new [`Rules`] first (a
//! broken file changes nothing), records cuts in the data directory, then
//! applies the rules as one step: new handshakes, the routing core, and
//! closing every session and link they no longer admit, purging what was
//! queued for a cut nation. [`NodeControl`] is the library call the
//! simulator and tests use; admin sessions go through the same code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Instant;

use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{custody, load_node_keys, outbound, tls, NodeError, PeerKeys, Reason, Rules, Shared};
use crate::admin::{
    AdminCommand, AdminReply, Applied, NodeStatus, PeerStatus, ResolutionStatus, ResolutionsHeld,
    SessionStatus, StatusCounters,
};
use crate::audit::{Event, Record, Verdict};
use crate::config::ConfigError;
use crate::identity::Identity;
use crate::label::Nation;
use crate::pki::{self, PkiError};
use crate::policy::{Policy, Principal};
use crate::resolution::{ResolutionId, ResolutionLog, SignedResolution};
use crate::store::Change;

/// The file in a node's data directory that records the nations cut out,
/// so a cut survives a restart.
const CUT_OUT_FILE: &str = "cut-out.json";

/// Why an admin command failed; the node's rules are then unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The network file is broken or fails validation.
    #[error("reload refused, the node keeps its old policy: {0}")]
    Config(#[from] ConfigError),
    /// A CA, CRL or node certificate could not be read.
    #[error("reload refused, the node keeps its old policy: {0}")]
    Pki(#[from] PkiError),
    /// The new files load but cannot be used.
    #[error("the change was refused, the node keeps its old policy: {0}")]
    Node(Box<NodeError>),
    /// The new network file no longer lists this node's nation.
    #[error("reload refused, the node keeps its old policy: the network file has no [nations.{0}], the nation this node serves")]
    LostNation(Nation),
    /// The nation is not in the network file.
    #[error("{0} is not a nation of the network file")]
    UnknownNation(Nation),
    /// A node cannot cut its own nation out.
    #[error("{0} is this node's own nation; cut it on the other nations' nodes")]
    OwnNation(Nation),
    /// The record of cut-out nations could not be read or written.
    #[error("{path}: {cause}")]
    CutOutFile {
        /// The file.
        path: PathBuf,
        /// What went wrong, and what to do.
        cause: String,
    },
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// A resolution, or a signature of it, was refused.
    #[error("{0}")]
    Resolution(String),
    /// A local restore of a nation the coalition cut out.
    #[error("{nation} is cut out by coalition resolution {id}; only a restore resolution brings it back: `entente admin propose restore {nation}`")]
    CoalitionCut {
        /// The nation.
        nation: Nation,
        /// The resolution in force.
        id: String,
    },
}

impl From<NodeError> for ControlError {
    fn from(err: NodeError) -> Self {
        ControlError::Node(Box::new(err))
    }
}

impl ControlError {
    /// The stable code an admin client gets with the error.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Config(_)
            | ControlError::Pki(_)
            | ControlError::Node(_)
            | ControlError::LostNation(_) => "reload-refused",
            ControlError::UnknownNation(_) => "unknown-nation",
            ControlError::OwnNation(_) => "own-nation",
            ControlError::CutOutFile { .. } => "cut-out-file",
            ControlError::Stopped => "stopped",
            ControlError::CoalitionCut { .. } => "coalition-cut",
            ControlError::Resolution(_) => "bad-resolution",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CutOutFile {
    /// The nations cut out, as ISO codes.
    cut_out: Vec<String>,
    /// Nations this node restored, with when (microseconds since the
    /// epoch): what they created before then is refused.
    #[serde(default)]
    restored: BTreeMap<String, u64>,
}

/// The nations cut out, and those restored with when: this node's own
/// (sovereign) cuts, the coalition's resolutions, or both together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Cuts {
    pub(super) suspended: BTreeSet<Nation>,
    pub(super) restored: BTreeMap<Nation, u64>,
}

impl Cuts {
    /// Both together: cut by either, and restored by both at the later
    /// time.
    pub(super) fn and(&self, other: &Cuts) -> Cuts {
        let suspended: BTreeSet<Nation> = self.suspended.union(&other.suspended).copied().collect();
        let mut restored = self.restored.clone();
        for (&nation, &at) in &other.restored {
            let entry = restored.entry(nation).or_insert(at);
            *entry = (*entry).max(at);
        }
        restored.retain(|nation, _| !suspended.contains(nation));
        Cuts { suspended, restored }
    }
}

/// This node's own cuts, as its data directory records them, among the
/// nations of `policy` (a nation the network file no longer has is
/// ignored).
pub(super) fn read_local_cuts(data_dir: &Path, policy: &Policy) -> Result<Cuts, ControlError> {
    let path = data_dir.join(CUT_OUT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Cuts::default()),
        Err(err) => {
            return Err(ControlError::CutOutFile {
                path,
                cause: err.to_string(),
            })
        }
    };
    let file: CutOutFile = serde_json::from_str(&text).map_err(|err| ControlError::CutOutFile {
        path: path.clone(),
        cause: format!(
            "{err}; it should read {{\"cut_out\": [\"USA\"]}}, or be deleted to restore every nation"
        ),
    })?;
    let known = |code: &String| {
        let nation = Nation::parse(code).filter(|n| policy.nation(*n).is_some());
        if nation.is_none() {
            warn!(path = %path.display(), nation = %code, "a nation recorded as cut out or restored is not in the network file; ignored");
        }
        nation
    };
    Ok(Cuts {
        suspended: file.cut_out.iter().filter_map(known).collect(),
        restored: file
            .restored
            .iter()
            .filter_map(|(code, &at)| Some((known(code)?, at)))
            .collect(),
    })
}

/// Records this node's own cuts, replacing the file whole (written aside,
/// then renamed), so a crash leaves the old record or the new one.
fn write_local_cuts(data_dir: &Path, cuts: &Cuts) -> Result<(), ControlError> {
    let path = data_dir.join(CUT_OUT_FILE);
    let error = |cause: std::io::Error| ControlError::CutOutFile {
        path: path.clone(),
        cause: cause.to_string(),
    };
    let file = CutOutFile {
        cut_out: cuts.suspended.iter().map(Nation::to_string).collect(),
        restored: cuts.restored.iter().map(|(n, &at)| (n.to_string(), at)).collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|err| error(err.into()))?;
    std::fs::create_dir_all(data_dir).map_err(error)?;
    let staging = data_dir.join(format!("{CUT_OUT_FILE}.new"));
    std::fs::write(&staging, text + "\n").map_err(error)?;
    std::fs::rename(&staging, &path).map_err(error)
}

/// Runs admin commands on one node, as a library call. It holds the node
/// weakly: once the node has stopped, every call fails with `Stopped`.
#[derive(Clone)]
pub struct NodeControl {
    shared: Weak<Shared>,
}

impl NodeControl {
    pub(super) fn new(shared: &Arc<Shared>) -> NodeControl {
        NodeControl {
            shared: Arc::downgrade(shared),
        }
    }

    fn shared(&self) -> Result<Arc<Shared>, ControlError> {
        self.shared.upgrade().ok_or(ControlError::Stopped)
    }

    /// Runs `command`, as an admin session would.
    pub async fn run(&self, command: &AdminCommand) -> Result<AdminReply, ControlError> {
        run(&self.shared()?, command).await
    }

    /// The node's status.
    pub fn status(&self) -> Result<NodeStatus, ControlError> {
        Ok(status(&*self.shared()?))
    }

    /// Re-reads the network file, the CAs and the CRLs.
    pub async fn reload(&self) -> Result<Applied, ControlError> {
        reload(&self.shared()?).await
    }

    /// Cuts `nation` out; returns once this node has applied it.
    pub async fn cut(&self, nation: Nation) -> Result<Applied, ControlError> {
        set_cut(&self.shared()?, nation, true).await
    }

    /// Undoes a cut of `nation`.
    pub async fn restore(&self, nation: Nation) -> Result<Applied, ControlError> {
        set_cut(&self.shared()?, nation, false).await
    }

    /// Adds a resolution, or signatures of it, as this node's admin
    /// would; returns once what it put in force is applied here.
    pub async fn submit(&self, signed: SignedResolution) -> Result<ResolutionStatus, ControlError> {
        submit(&self.shared()?, signed).await
    }

    /// Whether this node has `nation` cut out now (cheap: for polling).
    pub fn suspends(&self, nation: Nation) -> Result<bool, ControlError> {
        Ok(self.shared()?.rules().policy.is_suspended(nation))
    }

    /// The resolutions this node holds.
    pub fn resolutions(&self) -> Result<ResolutionsHeld, ControlError> {
        Ok(resolutions_held(&*self.shared()?))
    }
}

pub(super) async fn run(shared: &Arc<Shared>, command: &AdminCommand) -> Result<AdminReply, ControlError> {
    Ok(match command {
        AdminCommand::Status => AdminReply::Status(status(shared)),
        AdminCommand::Reload => AdminReply::Applied(reload(shared).await?),
        AdminCommand::Cut(nation) => AdminReply::Applied(set_cut(shared, *nation, true).await?),
        AdminCommand::Restore(nation) => AdminReply::Applied(set_cut(shared, *nation, false).await?),
        AdminCommand::Resolutions => AdminReply::Resolutions(resolutions_held(shared)),
        AdminCommand::Submit(signed) => AdminReply::Resolution(submit(shared, signed.clone()).await?),
    })
}

fn resolution_status(log: &ResolutionLog, id: &ResolutionId) -> Option<ResolutionStatus> {
    let signed = log.get(id)?;
    Some(ResolutionStatus {
        needed: log.needed(&signed.resolution) as u64,
        in_force: log.is_in_force(id),
        signed,
    })
}

fn resolutions_held(shared: &Shared) -> ResolutionsHeld {
    let log = shared.resolutions.lock().unwrap_or_else(PoisonError::into_inner);
    let held = log
        .all()
        .iter()
        .filter_map(|signed| resolution_status(&log, &signed.resolution.id()))
        .collect();
    ResolutionsHeld {
        next_seq: log.next_seq(crate::audit::now_us()),
        held,
    }
}

/// Takes a resolution (or signatures of one) from this node's admin; each
/// signature must check out, or the whole is refused with the reason.
async fn submit(shared: &Arc<Shared>, signed: SignedResolution) -> Result<ResolutionStatus, ControlError> {
    let id = signed.resolution.id();
    let taken = super::resolutions::take(shared, None, vec![signed]).await;
    if let Some(refusal) = taken.refused {
        return Err(ControlError::Resolution(refusal));
    }
    let log = shared.resolutions.lock().unwrap_or_else(PoisonError::into_inner);
    resolution_status(&log, &id).ok_or_else(|| {
        ControlError::Resolution(format!(
            "resolution {id} carries no signature this node could take"
        ))
    })
}

fn status(shared: &Shared) -> NodeStatus {
    let rules = shared.rules();
    let router = &shared.router;
    let peers = rules
        .loaded
        .nation(shared.nation)
        .map(|table| {
            table
                .peers
                .iter()
                .map(|&peer| {
                    let (held, _) = shared.custody.outbox(peer).depth();
                    PeerStatus {
                        nation: peer.to_string(),
                        outbound: router.has_link(peer),
                        inbound: router.has_inbound(peer),
                        queued: held as u64,
                        cut: rules.policy.is_suspended(peer),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut sessions: Vec<SessionStatus> = router
        .session_depths()
        .into_iter()
        .map(|(principal, queued)| SessionStatus {
            principal,
            queued: queued as u64,
        })
        .collect();
    sessions.sort_by(|a, b| a.principal.cmp(&b.principal));
    let (counters, _) = router.core(|core, _| core.counters().clone());
    NodeStatus {
        node: shared.nation.to_string(),
        policy_digest: rules.digest.clone(),
        uptime_s: shared.started.elapsed().as_secs(),
        peers,
        sessions,
        suspended: rules.policy.suspended().iter().map(Nation::to_string).collect(),
        expired_crls: rules
            .material
            .expired_crls
            .iter()
            .map(|(nation, at)| (nation.to_string(), at.clone()))
            .collect(),
        mismatched_cas: rules
            .material
            .mismatched_cas
            .iter()
            .map(|(nation, found)| (nation.to_string(), found.clone()))
            .collect(),
        missing_cas: rules.material.missing_cas.iter().map(Nation::to_string).collect(),
        counters: StatusCounters {
            published: counters.published,
            delivered: counters.delivered,
            forwarded: counters.forwarded,
            refused: shared.audit.denials(),
            unreachable: counters.unreachable + counters.no_route,
        },
    }
}

/// A change that failed leaves the rules as they were, and a record of
/// why, whoever asked for it (an admin, SIGHUP, the simulator).
async fn audited(
    shared: &Shared,
    command: AdminCommand,
    result: Result<Applied, ControlError>,
) -> Result<Applied, ControlError> {
    if let Err(err) = &result {
        warn!(%command, cause = %err, "admin change refused");
        shared
            .audit(Record::new(Event::Refuse, Verdict::Deny, err.code()).detail(format!("{command}: {err}")))
            .await;
    }
    result
}

async fn reload(shared: &Arc<Shared>) -> Result<Applied, ControlError> {
    audited(shared, AdminCommand::Reload, try_reload(shared).await).await
}

async fn set_cut(shared: &Arc<Shared>, nation: Nation, cut: bool) -> Result<Applied, ControlError> {
    let command = if cut {
        AdminCommand::Cut(nation)
    } else {
        AdminCommand::Restore(nation)
    };
    audited(shared, command, try_set_cut(shared, nation, cut).await).await
}

async fn try_reload(shared: &Arc<Shared>) -> Result<Applied, ControlError> {
    let _one_at_a_time = shared.admin_changes.lock().await;
    let start = Instant::now();
    let current = shared.rules();
    let loaded = match &shared.policy_source {
        Some(source) => Arc::new(source.load()?),
        None => current.loaded.clone(),
    };
    if loaded.nation(shared.nation).is_none() {
        return Err(ControlError::LostNation(shared.nation));
    }
    let material = pki::read_trust_material(&loaded, &shared.layout)?;
    let node_keys = load_node_keys(shared.nation, &loaded, &material, &shared.layout)?;
    let cuts = current_cuts(shared, &loaded)?;
    let peer_keys = PeerKeys::new(node_keys, &shared.signer);
    let rules = Rules::new(loaded, material, Arc::new(peer_keys), &cuts)?;
    apply(shared, rules, AdminCommand::Reload, start).await
}

async fn try_set_cut(shared: &Arc<Shared>, nation: Nation, cut: bool) -> Result<Applied, ControlError> {
    let _one_at_a_time = shared.admin_changes.lock().await;
    let start = Instant::now();
    let current = shared.rules();
    if current.loaded.nation(nation).is_none() {
        return Err(ControlError::UnknownNation(nation));
    }
    if nation == shared.nation {
        return Err(ControlError::OwnNation(nation));
    }
    let mut local = read_local_cuts(&shared.data_dir, &current.loaded)?;
    let command = if cut {
        local.suspended.insert(nation);
        local.restored.remove(&nation);
        AdminCommand::Cut(nation)
    } else {
        if let Some(id) = super::resolutions::cut_by_coalition(shared, nation) {
            return Err(ControlError::CoalitionCut { nation, id });
        }
        if local.suspended.remove(&nation) {
            local.restored.insert(nation, crate::audit::now_us());
        }
        AdminCommand::Restore(nation)
    };
    let rules = with_cuts(&current, &local.and(&coalition(shared)))?;
    // Recorded before it applies: a cut acknowledged is a cut that
    // survives a restart.
    write_local_cuts(&shared.data_dir, &local)?;
    apply(shared, rules, command, start).await
}

/// The coalition's cuts and restores in force on this node.
fn coalition(shared: &Shared) -> Cuts {
    super::resolutions::enforced_cuts(
        &shared.resolutions.lock().unwrap_or_else(PoisonError::into_inner),
        shared.nation,
    )
}

/// This node's own cuts and the coalition's, among the nations of `loaded`.
fn current_cuts(shared: &Shared, loaded: &Policy) -> Result<Cuts, ControlError> {
    let mut cuts = read_local_cuts(&shared.data_dir, loaded)?.and(&coalition(shared));
    cuts.suspended.retain(|&nation| loaded.nation(nation).is_some());
    cuts.restored.retain(|&nation, _| loaded.nation(nation).is_some());
    Ok(cuts)
}

/// Applies the cuts and restores now in force (the coalition's log
/// changed), as `what` says.
pub(super) async fn apply_cuts(shared: &Arc<Shared>, what: &str) -> Result<Applied, ControlError> {
    let _one_at_a_time = shared.admin_changes.lock().await;
    let start = Instant::now();
    let current = shared.rules();
    let cuts = current_cuts(shared, &current.loaded)?;
    if &cuts.suspended == current.policy.suspended() && cuts.restored == current.restored {
        return Ok(applied_nothing(shared, &current, what));
    }
    let rules = with_cuts(&current, &cuts)?;
    apply(shared, rules, AdminCommand::Resolutions, start).await
}

/// The rules in force, with `cuts` instead of theirs.
fn with_cuts(current: &Rules, cuts: &Cuts) -> Result<Rules, ControlError> {
    Ok(Rules::new(
        current.loaded.clone(),
        current.material.clone(),
        current.all_node_keys.clone(),
        cuts,
    )?)
}

fn applied_nothing(shared: &Shared, rules: &Rules, what: &str) -> Applied {
    Applied {
        node: shared.nation.to_string(),
        command: what.to_owned(),
        apply_us: 0,
        policy_digest: rules.digest.clone(),
        closed: Vec::new(),
        purged: 0,
        suspended: rules.policy.suspended().iter().map(Nation::to_string).collect(),
    }
}

/// Applies `rules` as one step. Everything that can fail was built before
/// this point, except the server config, which is built first here.
async fn apply(
    shared: &Arc<Shared>,
    rules: Rules,
    command: AdminCommand,
    start: Instant,
) -> Result<Applied, ControlError> {
    let server = tls::server_config(
        &rules.trust,
        shared.cert_chain.clone(),
        shared.key.clone_key(),
        shared.token_key.clone(),
    )
    .map_err(NodeError::from)?;
    // New handshakes from here on see the new CAs and CRLs. The server
    // keeps no TLS sessions to resume (`tls::server_config`), so no
    // handshake skips the check.
    shared.endpoint.set_server_config(Some(server));
    let rules = Arc::new(rules);
    *shared.rules.write().unwrap_or_else(PoisonError::into_inner) = rules.clone();
    let (_, mut actions) = shared.router.core(|core, _| {
        core.set_node_keys(rules.node_keys.clone());
        core.set_policy(rules.policy.clone());
        core.set_restored(rules.restored.clone());
    });
    // Seals proven under a key these rules may have replaced vouch for
    // nothing more: the next batch of each origin is checked again.
    shared.verifier().clear();

    let here = shared.nation;
    let now = UnixTime::now();
    // Only a reload reads CAs and CRLs again; a cut or restore keeps them,
    // and its cut nation's identities fail `admit` already. A path check
    // for every connection would double what applying a cut costs.
    let certificates_changed = matches!(command, AdminCommand::Reload);
    let admits = |identity: &Identity,
                  chain: &[CertificateDer<'static>],
                  principal: Option<&Principal>|
     -> Result<(), (String, &'static str)> {
        let admitted = rules
            .policy
            .admit(here, identity)
            .map_err(|refusal| (refusal.message, refusal.reason.code()))?;
        if let (Some(before), crate::policy::Admission::Principal(now)) = (principal, admitted) {
            if before != now {
                return Err((
                    format!(
                        "the network file's entry for {} changed; reconnect to work under it",
                        now.name
                    ),
                    Reason::PrincipalChanged.code(),
                ));
            }
        }
        if !certificates_changed {
            return Ok(());
        }
        rules
            .trust
            .identify_client(chain, now)
            .map(|_| ())
            .map_err(|err| (err.to_string(), Reason::CertificateRejected.code()))
    };
    let mut records = Vec::new();
    let (sessions, links, inbound, closing_actions) =
        shared.router.close_unadmitted(here, admits, &mut records);
    actions.extend(closing_actions);
    shared.rules_changed.send_modify(|version| *version += 1);
    shared.peers_added.notify_one();
    for record in records {
        shared.audit(record).await;
    }
    shared.carry_out(actions).await;

    let mut closed = sessions;
    closed.extend(inbound.iter().map(|peer| format!("link from {peer}")));
    closed.extend(links.iter().map(|peer| format!("link to {peer}")));
    // What was held for a peer the rules no longer admit, its link up or
    // down, is purged: from here on nothing more is sent to it.
    let mut purged = 0;
    for peer in shared.custody.peers() {
        if links.contains(&peer) || !rules.links_to(here, peer) {
            purged += purge(shared, &rules, peer).await;
        }
    }
    audit_trust_problems(shared, &rules).await;
    let apply_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let suspended: Vec<String> = rules.policy.suspended().iter().map(Nation::to_string).collect();
    let digest = rules.digest.clone();
    info!(%command, apply_us, closed = closed.len(), purged, policy = %digest, "rules changed");
    shared
        .audit(
            Record::new(Event::Admit, Verdict::Allow, Reason::PolicyChanged.code()).detail(format!(
                "{command}: policy {digest}; cut out: {}; closed: {}; purged {purged} queued message(s); applied in {apply_us} µs",
                if suspended.is_empty() { "none".to_owned() } else { suspended.join(", ") },
                if closed.is_empty() { "none".to_owned() } else { closed.join(", ") },
            )),
        )
        .await;
    Ok(Applied {
        node: here.to_string(),
        command: command.to_string(),
        apply_us,
        policy_digest: digest,
        closed,
        purged,
        suspended,
    })
}

/// Records each CRL of `rules` that is past its next update: that
/// nation's certificates are refused in every handshake until its CA
/// re-signs it.
pub(super) async fn audit_trust_problems(shared: &Shared, rules: &Rules) {
    for (nation, found) in &rules.material.mismatched_cas {
        warn!(%nation, %found, "a CA is not the one the coalition file pins: the nation is not trusted");
        shared
            .audit(
                Record::new(Event::Refuse, Verdict::Deny, Reason::CaMismatch.code())
                    .subject(nation.to_string())
                    .detail(format!(
                        "{}: {nation}'s CA has the fingerprint {found}, not the one the coalition file pins; \
                         none of {nation}'s certificates or seals is trusted until {nation}'s genuine bundle is imported \
                         (entente certs import) or the coalition file is corrected",
                        shared.layout.ca_cert(*nation).display()
                    )),
            )
            .await;
    }
    for (nation, at) in &rules.material.expired_crls {
        warn!(%nation, expired = %at, "a CRL is past its next update: the nation's certificates are refused");
        shared
            .audit(
                Record::new(Event::Refuse, Verdict::Deny, Reason::CrlExpired.code())
                    .subject(nation.to_string())
                    .detail(format!(
                        "{nation}'s CRL expired at {at}: every {nation} certificate is refused until its CA \
                         re-signs it (entente certs renew-crl --nation {nation}) and this node has the new one"
                    )),
            )
            .await;
    }
}

/// Audits each message held for `peer`, which the rules no longer admit,
/// as purged (`cut` when its nation is cut out), forgets them, and returns
/// how many there were. Seals carry no message and go unrecorded.
async fn purge(shared: &Shared, rules: &Rules, peer: Nation) -> u64 {
    let code = if rules.policy.is_suspended(peer) {
        Reason::Cut
    } else {
        Reason::NoLongerAdmitted
    };
    purge_for(shared, rules, peer, code).await
}

/// As [`purge`], each message audited with `code`: `cut-by` when it is
/// the peer that cut this nation out.
pub(super) async fn purge_for(shared: &Shared, rules: &Rules, peer: Nation, code: Reason) -> u64 {
    let (held, recent) = shared.custody.outbox(peer).take_all();
    if held.is_empty() && recent.is_empty() {
        return 0;
    }
    let why = if code == Reason::CutBy {
        "which cut this nation out"
    } else {
        "which this node no longer admits"
    };
    let code = code.code();
    let mut purged = 0;
    for envelope in custody::envelopes(held.iter().map(|entry| entry.frame.clone())) {
        purged += 1;
        let marking = rules.policy.scheme().format(&envelope.label);
        shared
            .audit(
                Record::new(Event::Drop, Verdict::Deny, code)
                    .message(&envelope, &marking)
                    .subject(peer)
                    .detail(format!("it was held for {peer}, {why}; purged, never sent")),
            )
            .await;
    }
    // What the peer held (or had lately taken, and may not have passed
    // on) goes to the others along the tree as it is without it.
    let frames: Vec<_> = held.into_iter().chain(recent).map(|entry| entry.frame).collect();
    outbound::reroute(shared, peer, frames, None).await;
    if let Err(err) = shared.custody.commit(vec![Change::ForgetAll { peer }]).await {
        warn!(cause = %err, "the purge could not be stored; it is repeated after a restart");
    }
    if purged > 0 {
        warn!(%peer, purged, "messages held for a peer no longer admitted were purged");
    }
    purged
}

/// A principal's refusal of an admin command, for its session to audit
/// and answer.
pub(super) fn not_admin(principal: &Principal, command: &AdminCommand) -> (Record, String) {
    let message = format!(
        "{} may not run admin commands: only a principal with roles = [\"admin\"] may ({command} was asked)",
        principal.name
    );
    (
        Record::new(Event::Refuse, Verdict::Deny, Reason::NotAdmin.code())
            .subject(&principal.name)
            .detail(&message),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_out_record_round_trips_and_a_broken_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::config::load_network(Path::new(crate::config::DEFAULT_NETWORK_FILE)).unwrap();
        let (usa, fra) = (Nation::parse("USA").unwrap(), Nation::parse("FRA").unwrap());
        assert_eq!(read_local_cuts(dir.path(), &policy).unwrap(), Cuts::default());
        let cuts = Cuts {
            suspended: BTreeSet::from([usa]),
            restored: BTreeMap::from([(fra, 42)]),
        };
        write_local_cuts(dir.path(), &cuts).unwrap();
        assert_eq!(read_local_cuts(dir.path(), &policy).unwrap(), cuts);
        // A record from before restore times were kept still reads.
        std::fs::write(dir.path().join(CUT_OUT_FILE), "{\"cut_out\": [\"USA\"]}").unwrap();
        assert_eq!(
            read_local_cuts(dir.path(), &policy).unwrap().suspended,
            BTreeSet::from([usa])
        );
        std::fs::write(dir.path().join(CUT_OUT_FILE), "{\"cut_out\": [\"USA\"").unwrap();
        let err = read_local_cuts(dir.path(), &policy).unwrap_err().to_string();
        assert!(err.contains(CUT_OUT_FILE) && err.contains("cut_out"), "{err}");
    }

    #[test]
    fn cuts_combine_by_union_and_the_later_restore() {
        let n = |code| Nation::parse(code).unwrap();
        let local = Cuts {
            suspended: BTreeSet::from([n("USA")]),
            restored: BTreeMap::from([(n("FRA"), 10), (n("DEU"), 5)]),
        };
        let coalition = Cuts {
            suspended: BTreeSet::from([n("DEU")]),
            restored: BTreeMap::from([(n("FRA"), 20)]),
        };
        let both = local.and(&coalition);
        assert_eq!(both.suspended, BTreeSet::from([n("USA"), n("DEU")]));
        assert_eq!(both.restored, BTreeMap::from([(n("FRA"), 20)]));
    }
}
