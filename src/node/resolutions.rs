//! The coalition's resolutions on this node: the log, kept in
//! `<data dir>/resolutions.json`; signatures checked against the trust
//! store (an admin's certificate under its own nation's CA); what is in
//! force applied as the node's cuts and restores; what is new flooded to
//! every link; and the exchange of logs that opens every link, before any
//! envelope (invariant 5).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::connection::{read_frame, write_frame, StreamError};
use super::control::{self, ControlError, Cuts};
use super::queue::QueueSender;
use super::{Reason, Shared};
use crate::audit::{now_us, Event, Record, Verdict};
use crate::identity::{ed25519_public_key, has_admin_role, Identity, TrustStore, ADMIN_ROLE_URI};
use crate::label::Nation;
use crate::policy::Policy;
use crate::resolution::{Action, ResolutionLog, SignedResolution, SignerCheck};
use crate::routing::announce::{Pace, Paced};
use crate::wire::{self, Frame};

/// The file in a node's data directory that holds its resolution log.
pub(super) const LOG_FILE: &str = "resolutions.json";

/// Resolution frames one link's opening exchange may carry, at most: a
/// log holds at most `PENDING_PER_NATION` + 1 per nation.
const EXCHANGE_MAX: usize = (crate::resolution::PENDING_PER_NATION + 1) * crate::routing::MAX_NATIONS;

/// An admin's certificate checked against the trust store: it chains to
/// its nation's own CA (not revoked), names a principal of that nation,
/// and carries the admin role.
pub(super) struct AdminCheck<'a> {
    pub(super) trust: &'a TrustStore,
}

impl SignerCheck for AdminCheck<'_> {
    fn admin_key(&self, nation: Nation, chain: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let leaf = chain.first().ok_or("it carries no certificate")?;
        let identity = self
            .trust
            .identify_client(&chain, UnixTime::now())
            .map_err(|err| err.to_string())?;
        match &identity {
            Identity::Principal { nation: of, .. } if *of == nation => {}
            other => {
                return Err(format!(
                    "the certificate is {other}'s, not one of {nation}'s admins'"
                ))
            }
        }
        if !has_admin_role(leaf).map_err(|err| err.to_string())? {
            return Err(format!(
                "{identity} is not an admin: its certificate does not carry {ADMIN_ROLE_URI} (an admin's certificate issued before roles were marked needs issuing again)"
            ));
        }
        ed25519_public_key(leaf).map_err(|err| err.to_string())
    }
}

/// The cuts and restores in force by `log`.
pub(super) fn coalition_cuts(log: &ResolutionLog) -> Cuts {
    Cuts {
        suspended: log.cut_out(),
        restored: log.restored(),
    }
}

/// What `own`'s node enforces of them: never a cut of its own nation,
/// which would stop it dialing, so that it would never hear of its
/// restore. Cut, it is refused by every partner, and holds nothing for
/// them (`Shared::cut_out_by`).
pub(super) fn enforced_cuts(log: &ResolutionLog, own: Nation) -> Cuts {
    let mut cuts = coalition_cuts(log);
    cuts.suspended.remove(&own);
    cuts.restored.remove(&own);
    cuts
}

/// Reads the log a node kept, each resolution checked again as if it had
/// just come (a CRL may have revoked a signer since). An empty log if
/// there is no file.
pub(super) fn load(
    data_dir: &Path,
    policy: &Policy,
    trust: &TrustStore,
) -> Result<ResolutionLog, ControlError> {
    let mut log = ResolutionLog::new(policy.nations().keys().copied().collect(), policy.quorum());
    let path = data_dir.join(LOG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(log),
        Err(err) => return Err(file_error(path, err.to_string())),
    };
    let held: Vec<SignedResolution> = serde_json::from_str(&text).map_err(|err| {
        file_error(
            path.clone(),
            format!("{err}; it is this node's copy of the coalition's resolutions, which its peers send again when it links"),
        )
    })?;
    let now = now_us();
    for signed in held {
        if let Err(err) = log.offer(signed, &AdminCheck { trust }, now) {
            warn!(cause = %err, "a stored resolution no longer checks out; dropped");
        }
    }
    Ok(log)
}

fn file_error(path: PathBuf, cause: String) -> ControlError {
    ControlError::CutOutFile { path, cause }
}

/// Writes the log whole (aside, then renamed).
fn save(data_dir: &Path, log: &[SignedResolution]) -> Result<(), ControlError> {
    let path = data_dir.join(LOG_FILE);
    let error = |cause: std::io::Error| file_error(path.clone(), cause.to_string());
    let text = serde_json::to_string(log).map_err(|err| error(err.into()))?;
    std::fs::create_dir_all(data_dir).map_err(error)?;
    let staging = data_dir.join(format!("{LOG_FILE}.new"));
    std::fs::write(&staging, text).map_err(error)?;
    std::fs::rename(&staging, &path).map_err(error)
}

/// Writes the log each time it changed, off the path of the flood: the
/// file is written on a blocking thread, and changes made while it is
/// written are taken together by the next write. Once more at shutdown,
/// so a node that stops keeps everything it took. A crash may lose the
/// last change a peer brought; its peers send it again when the node
/// links.
pub(super) async fn write_forever(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut changed = shared.log_changed.subscribe();
    loop {
        let stopping = tokio::select! {
            biased;
            _ = shutdown.changed() => true,
            _ = changed.changed() => false,
        };
        if stopping && !changed.has_changed().unwrap_or(false) {
            return;
        }
        changed.mark_unchanged();
        write_now(&shared).await;
        if stopping {
            return;
        }
    }
}

/// Every resolution the log holds now.
fn held(shared: &Shared) -> Vec<SignedResolution> {
    shared
        .resolutions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .all()
}

/// Writes the log as it is now, on a blocking thread.
async fn write_now(shared: &Shared) {
    let log = held(shared);
    let data_dir = shared.data_dir.clone();
    match tokio::task::spawn_blocking(move || save(&data_dir, &log)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            warn!(cause = %err, "the resolution log could not be written; peers send it again at the next link")
        }
        Err(err) => warn!(cause = %err, "writing the resolution log failed"),
    }
}

/// What taking resolutions changed.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// Whether any signature was new here.
    pub(super) added: bool,
    /// The first refusal, as a sentence (every one is audited).
    pub(super) refused: Option<String>,
    /// How many signatures or resolutions were refused.
    pub(super) refusals: u64,
}

/// How many refused signatures a link's flood may cost this node's checks
/// (each one a certificate path and a signature): a burst, then ten a
/// second. An honest peer passes on only what it verified itself, so it
/// stays far below; past it, what the link sends is not checked until the
/// budget refills (genuine signatures come again by other links and with
/// the next link's opening exchange).
pub(super) const REFUSED_PACE: Pace = Pace {
    interval_us: 100_000,
    burst: 64,
};

/// Where a peer's link stands against [`REFUSED_PACE`].
#[derive(Debug, Default)]
pub(super) struct RefusedBudget {
    paced: Paced,
    /// Whether its being over the pace has been audited, since it last had
    /// its whole burst.
    audited: bool,
}

/// Takes what a peer's link flooded, one resolution at a time, while the
/// peer is within its budget of refused signatures; past it, audits that
/// once and takes nothing more until the budget refills.
pub(super) async fn take_flooded(shared: &Arc<Shared>, peer: Nation, offered: Vec<SignedResolution>) {
    for signed in offered {
        let now = now_us();
        // `Some(audit_until)` once over the budget: when it refills, if
        // this is the first time since it was last within it.
        let over = {
            let mut budget = shared.refused_resolutions.entry(peer).or_default();
            let next_us = budget.paced.next_us(REFUSED_PACE);
            if next_us <= now {
                // Audited again only once the whole burst is back: one
                // record for a flood, not one for each refill.
                if budget.paced.next_us(Pace {
                    burst: 1,
                    ..REFUSED_PACE
                }) <= now
                {
                    budget.audited = false;
                }
                None
            } else {
                let first = !std::mem::replace(&mut budget.audited, true);
                Some(first.then_some(next_us))
            }
        };
        match over {
            Some(None) => return,
            None => {
                let taken = take(shared, Some(peer), vec![signed]).await;
                let mut budget = shared.refused_resolutions.entry(peer).or_default();
                for _ in 0..taken.refusals {
                    budget.paced.take(REFUSED_PACE, now);
                }
            }
            Some(Some(until_us)) => {
                warn!(%peer, "a peer's link sends refused resolutions faster than they may be checked");
                shared
                    .audit(
                        Record::new(Event::Refuse, Verdict::Deny, Reason::ResolutionRate.code())
                            .subject(peer.to_string())
                            .detail(format!(
                                "{peer} sent more than {} refused resolution signatures at once, or more than {} a \
                                 second: what its link sends is not checked for the next {} ms",
                                REFUSED_PACE.burst,
                                1_000_000 / REFUSED_PACE.interval_us,
                                until_us.saturating_sub(now) / 1_000
                            )),
                    )
                    .await;
                return;
            }
        }
    }
}

/// How many resolutions flooded back on this node's links may wait to be
/// taken; past it, they are dropped (each comes again with the next
/// link's exchange, and by the other link of each pair).
pub(super) const RETURNED_QUEUE: usize = 1024;

/// Takes what peers flooded back on this node's links, one at a time, in
/// a task of the node's own: a link that ends mid-way does not cut short
/// the cuts a resolution puts in force.
pub(super) async fn take_returned(
    shared: Arc<Shared>,
    mut returned: mpsc::Receiver<(Nation, SignedResolution)>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            next = returned.recv() => match next {
                Some((peer, signed)) => take_flooded(&shared, peer, vec![signed]).await,
                None => return,
            },
        }
    }
}

/// Why a resolution in force changes nothing.
fn superseded_by(log: &ResolutionLog, nation: Nation) -> String {
    let newer = log.standing(nation).map_or_else(String::new, |s| {
        format!(" ({} {nation}, resolution {})", s.action, s.id)
    });
    format!("a newer resolution about {nation} is in force{newer}, so it changes nothing")
}

/// Takes `offered` (from the link of `from`, or this node's admin): keeps
/// every valid signature, audits each refusal, writes the log, passes
/// what is new on to every other link, and applies the cuts and restores
/// now in force. Returns once they are applied.
pub(super) async fn take(
    shared: &Arc<Shared>,
    from: Option<Nation>,
    offered: Vec<SignedResolution>,
) -> Taken {
    // A node made to forget (a test's fault) takes nothing from a peer.
    if offered.is_empty() || (from.is_some() && shared.forgets_resolutions()) {
        return Taken::default();
    }
    let rules = shared.rules();
    let check = AdminCheck { trust: &rules.trust };
    let now = now_us();
    let mut records = Vec::new();
    let mut new = Vec::new();
    let mut taken = Taken::default();
    let (before, after) = {
        let mut log = shared.resolutions.lock().unwrap_or_else(PoisonError::into_inner);
        let before = coalition_cuts(&log);
        for signed in offered {
            let id = signed.resolution.id();
            let text = signed.resolution.to_string();
            let signed_nation = signed.resolution.nation;
            match log.offer(signed, &check, now) {
                Ok(outcome) => {
                    for refusal in &outcome.refused {
                        taken.refusals += 1;
                        taken.refused.get_or_insert_with(|| refusal.to_string());
                        records.push(refused(from, refusal.to_string()));
                    }
                    if outcome.added.is_empty() {
                        continue;
                    }
                    taken.added = true;
                    let signers: Vec<String> = outcome.added.iter().map(Nation::to_string).collect();
                    let needed = log.get(&id).map_or(0, |held| log.needed(&held.resolution));
                    let mut detail = format!(
                        "{text}: signed by {} ({} of the {needed} needed)",
                        signers.join(", "),
                        log.signatures(&id),
                    );
                    if outcome.took_effect {
                        detail.push_str("; in force");
                    }
                    if outcome.superseded {
                        let why = superseded_by(&log, signed_nation);
                        detail.push_str(&format!("; {why}"));
                        taken
                            .refused
                            .get_or_insert_with(|| format!("resolution {id}: {why}"));
                    }
                    let mut record =
                        Record::new(Event::Admit, Verdict::Allow, Reason::Resolution.code()).detail(detail);
                    if let Some(from) = from {
                        record = record.subject(from);
                    }
                    records.push(record);
                    // Only what was new here goes on: each signature
                    // crosses each link once, not again with every later one.
                    if let Some(held) = log.get(&id) {
                        new.push(SignedResolution {
                            signatures: held
                                .signatures
                                .into_iter()
                                .filter(|signature| outcome.added.contains(&signature.nation))
                                .collect(),
                            resolution: held.resolution,
                        });
                    }
                }
                Err(err) => {
                    taken.refusals += 1;
                    taken.refused.get_or_insert_with(|| err.to_string());
                    records.push(refused(from, err.to_string()));
                }
            }
        }
        // Passed on first: every hop's delay adds up to the time a cut
        // takes to reach the far side of the coalition.
        flood(shared, from, &new);
        if taken.added {
            shared.log_changed.send_modify(|version| *version += 1);
        }
        (before, coalition_cuts(&log))
    };
    if taken.added && from.is_none() {
        // An admin's own signature is on disk before the admin hears that
        // it was taken.
        write_now(shared).await;
    }
    for record in records {
        shared.audit(record).await;
    }
    if before != after {
        if let Err(err) = control::apply_cuts(shared, "coalition resolution").await {
            warn!(cause = %err, "the coalition's cuts could not be applied");
        }
        if after.suspended.contains(&shared.nation) && !before.suspended.contains(&shared.nation) {
            // This nation is the one cut: every partner has cut it.
            let peers: Vec<Nation> = shared
                .rules()
                .loaded
                .nation(shared.nation)
                .map(|table| table.peers.iter().copied().collect())
                .unwrap_or_default();
            for peer in peers {
                shared
                    .cut_out_by(peer, "a coalition resolution in force cuts this nation out")
                    .await;
            }
        }
    }
    taken
}

fn refused(from: Option<Nation>, why: String) -> Record {
    let record = Record::new(Event::Refuse, Verdict::Deny, Reason::BadResolution.code()).detail(why);
    match from {
        Some(from) => record.subject(from),
        None => record,
    }
}

/// Offers what is new to every peer but the one it came from, on both
/// links of each (never awaited, like announcements: a link that misses
/// it gets the whole log when it next comes up).
fn flood(shared: &Shared, from: Option<Nation>, new: &[SignedResolution]) {
    if new.is_empty() {
        return;
    }
    let peers: Vec<Nation> = shared
        .rules()
        .loaded
        .nation(shared.nation)
        .map(|table| table.peers.iter().copied().filter(|&p| Some(p) != from).collect())
        .unwrap_or_default();
    for signed in new {
        let Ok(frame) = wire::encode(&Frame::Resolution(signed.clone())) else {
            warn!(resolution = %signed.resolution, "a resolution too large to send");
            continue;
        };
        let frame = Bytes::from(frame);
        // Both ways on every pair of links: the way back on the link a
        // peer dialed carries no messages, so a resolution there does not
        // wait behind a batch of them; the first to arrive counts.
        let back = shared.router.return_paths(&peers);
        let forward = shared
            .router
            .targets(&peers)
            .into_iter()
            .map(|t| (t.nation, t.queue));
        for (to, queue) in back.into_iter().chain(forward) {
            if queue.offer(frame.clone()).is_err() {
                warn!(%to, "link queue full: a resolution was not sent; it goes with the next link");
            }
        }
    }
}

/// Sends this node's whole log, then `ResolutionsSent`: what opens every
/// link, from both ends. Returns the version of the log it sent, for
/// [`send_missed`].
pub(super) async fn send_log(shared: &Shared, send: &mut SendStream) -> Result<u64, StreamError> {
    let version = *shared.log_changed.borrow();
    let all = held(shared);
    for signed in all {
        write_frame(send, &Frame::Resolution(signed)).await?;
    }
    write_frame(send, &Frame::ResolutionsSent).await?;
    Ok(version)
}

/// Offers the whole log on a link registered just now, if the log changed
/// since the link's opening exchange sent version `sent` of it: what was
/// flooded in between went only to the links registered then. The peer
/// takes each signature once and drops the rest.
pub(super) fn send_missed(shared: &Shared, sent: u64, queue: &QueueSender) {
    if *shared.log_changed.borrow() == sent {
        return;
    }
    let all = held(shared);
    for signed in all {
        let Ok(frame) = wire::encode(&Frame::Resolution(signed)) else {
            continue;
        };
        if queue.offer(Bytes::from(frame)).is_err() {
            warn!("link queue full: a resolution was not sent; it goes with the next link");
            return;
        }
    }
}

/// Reads the peer's log, up to its `ResolutionsSent`, within the
/// first-frame timeout, and takes it: a node that was down when a cut was
/// made applies it here, before it sends or accepts any envelope.
pub(super) async fn receive_log(
    shared: &Arc<Shared>,
    peer: Nation,
    recv: &mut RecvStream,
) -> Result<(), StreamError> {
    // Each resolution is taken as it comes: what the peer sends is held
    // one frame at a time, however many it sends.
    let read = async {
        let (mut count, mut added) = (0usize, false);
        loop {
            match read_frame(recv).await? {
                Some(Frame::Resolution(signed)) if count < EXCHANGE_MAX => {
                    count += 1;
                    added |= take(shared, Some(peer), vec![signed]).await.added;
                }
                Some(Frame::ResolutionsSent) => return Ok((count, added)),
                Some(Frame::Resolution(_)) => {
                    return Err(StreamError::Unexpected("Resolution past the log's bound"))
                }
                Some(_) => {
                    return Err(StreamError::Unexpected(
                        "frame before the peer's resolution log ended",
                    ))
                }
                None => return Err(StreamError::Timeout("ResolutionsSent")),
            }
        }
    };
    let (count, added) = tokio::time::timeout(shared.settings.first_frame_timeout, read)
        .await
        .map_err(|_| StreamError::Timeout("ResolutionsSent"))??;
    if added {
        info!(%peer, count, "took resolutions from a link's opening exchange");
    }
    // Another link's exchange may have brought the same resolutions a
    // moment before and be applying them still: this link waits for that
    // too (nothing to do if the rules already match the log).
    control::apply_cuts(shared, "coalition resolution")
        .await
        .map_err(|err| StreamError::Resolutions(err.to_string()))?;
    Ok(())
}

/// Whether `nation` is cut out by a resolution in force (so only another
/// resolution restores it).
pub(super) fn cut_by_coalition(shared: &Shared, nation: Nation) -> Option<String> {
    let log = shared.resolutions.lock().unwrap_or_else(PoisonError::into_inner);
    log.standing(nation)
        .filter(|standing| standing.action == Action::Cut)
        .map(|standing| standing.id.to_string())
}
