//! Durable subscriptions: a principal's named subscription that its node
//! keeps while the principal is away. What matches waits in the node (in
//! memory, and with `sync` in its store, in the same commit as the custody
//! it came with), bounded by age and bytes; a session that attaches gets it
//! in order, a window at a time, until it acknowledges. Each one is a
//! session of the routing core of its own, so its interest is announced and
//! the policy admits each message to it as to any session; the policy is
//! asked again when a message is handed to the subscriber, so a clearance
//! lowered or a principal removed while messages waited lets none through.
//! A plain subscription's watch is the same without the keeping: while its
//! subscriber is away it counts what it misses, to tell it on return.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::queue::{OfferError, QueueSender};
use super::{Reason, Shared};
use crate::audit::{now_us, Event, Record, Verdict};
use crate::envelope::Envelope;
use crate::label::Label;
use crate::policy::{Decision, Principal};
use crate::routing::SessionId;
use crate::store::{Change, StoredDurable};
use crate::topic::{Pattern, Topic};
use crate::wire::{self, Delivery, Frame};

/// Durable subscriptions one principal may hold: each holds up to
/// `durable_max_bytes`, so this bounds what one principal can make its
/// node keep.
pub const MAX_PER_PRINCIPAL: usize = 8;
/// The longest durable subscription name.
pub const MAX_NAME_LEN: usize = 64;
/// Watches one principal may hold: past it, the one let go of longest ago
/// is forgotten to make room.
pub const MAX_WATCHES_PER_PRINCIPAL: usize = 16;
/// How long a watch nobody holds keeps counting before it is forgotten:
/// a subscriber away longer learns only that it missed an unknown number.
const WATCH_KEPT_US: u64 = 10 * 60 * 1_000_000;
/// How often every subscription is pumped, even untouched: one that found
/// its session's queue full tries again.
const PUMP_EVERY: Duration = Duration::from_millis(100);
/// How often waiting messages are checked for age.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Why a durable subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// The name is empty, too long, or has characters other than letters,
    /// digits, `-`, `_` and `.`.
    #[error("durable subscription name {0:?} is not valid: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// The principal holds [`MAX_PER_PRINCIPAL`] already.
    #[error("a principal may hold at most {MAX_PER_PRINCIPAL} durable subscriptions")]
    TooMany,
    /// The name is taken by a subscription to another pattern.
    #[error(
        "durable subscription {name:?} exists with pattern {existing}; use that pattern or another name"
    )]
    OtherPattern {
        /// The name asked for.
        name: String,
        /// The pattern it has.
        existing: String,
    },
    /// The name is taken by a subscription of the other kind (durable, or
    /// a plain one's watch).
    #[error("{0:?} names a subscription of the other kind (durable, or watched); use another name")]
    OtherKind(String),
    /// Every watch of the principal is held by a session.
    #[error("a principal may hold at most {MAX_WATCHES_PER_PRINCIPAL} watched subscriptions at once")]
    TooManyWatches,
}

impl DurableError {
    /// The stable code a refusal carries.
    pub fn code(&self) -> &'static str {
        match self {
            DurableError::BadName(_) => "bad-durable-name",
            DurableError::TooMany => "too-many-durables",
            DurableError::OtherPattern { .. } => "durable-pattern-mismatch",
            DurableError::OtherKind(_) => "durable-name-taken",
            DurableError::TooManyWatches => "too-many-watches",
        }
    }
}

/// Checks a durable subscription's name.
pub fn check_name(name: &str) -> Result<(), DurableError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(DurableError::BadName(
            name.chars().take(MAX_NAME_LEN + 1).collect(),
        ))
    }
}

/// A message waiting for a durable subscription, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// When this node took it for the subscription, microseconds since the
    /// epoch: its age counts from here.
    held_us: u64,
    label: Label,
    delivery: Delivery,
}

/// A message waiting for a durable subscription.
struct Waiting {
    seq: u64,
    held_us: u64,
    topic: Topic,
    label: Label,
    delivery: Delivery,
    /// What it counts against the subscription's bytes.
    bytes: usize,
    /// Refused when it was to be handed out (the principal may no longer
    /// see it): never offered, and gone once what is before it is.
    denied: bool,
}

impl Waiting {
    fn encode(&self) -> Option<Bytes> {
        let stored = Stored {
            held_us: self.held_us,
            label: self.label.clone(),
            delivery: self.delivery.clone(),
        };
        bincode::serde::encode_to_vec(&stored, bincode::config::standard())
            .ok()
            .map(Bytes::from)
    }

    fn decode(seq: u64, bytes: &[u8]) -> Option<Waiting> {
        let (stored, _): (Stored, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()?;
        let topic = Topic::new(stored.delivery.topic.clone()).ok()?;
        Some(Waiting {
            seq,
            held_us: stored.held_us,
            topic,
            label: stored.label,
            bytes: cost(&stored.delivery),
            delivery: stored.delivery,
            denied: false,
        })
    }
}

/// What a waiting message counts against its subscription's bytes: its
/// payload and the text around it.
fn cost(delivery: &Delivery) -> usize {
    delivery.payload.len() + delivery.topic.len() + delivery.marking.len() + delivery.publisher.len() + 64
}

/// The session a durable subscription is handed to, and how far.
struct Attached {
    session: SessionId,
    queue: QueueSender,
    /// The last sequence number offered to the session.
    sent_through: u64,
}

struct State {
    waiting: VecDeque<Waiting>,
    bytes: usize,
    next_seq: u64,
    acked_through: u64,
    attached: Option<Attached>,
    /// What a watch counted while nobody held it.
    missed: u64,
    /// When a session last let go of it (or the node started).
    let_go_us: u64,
}

impl State {
    fn new(acked_through: u64, waiting: VecDeque<Waiting>) -> State {
        let last = waiting.back().map_or(acked_through, |w| w.seq);
        State {
            bytes: waiting.iter().map(|w| w.bytes).sum(),
            waiting,
            next_seq: last.max(acked_through) + 1,
            acked_through,
            attached: None,
            missed: 0,
            let_go_us: now_us(),
        }
    }

    /// Drops the oldest waiting while `drop_next` says so, each audited as
    /// not delivered to `principal` for `reason` (`why` says it); returns
    /// the last sequence number dropped.
    fn drop_oldest(
        &mut self,
        principal: &str,
        (reason, why): (Reason, &str),
        drop_next: impl Fn(&State) -> bool,
        records: &mut Vec<Record>,
    ) -> Option<u64> {
        let mut through = None;
        while drop_next(self) {
            let Some(old) = self.waiting.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
            records.push(
                Record::new(Event::Deliver, Verdict::Deny, reason.code())
                    .about(old.delivery.id, &old.delivery.marking)
                    .subject(principal)
                    .detail(why),
            );
            through = Some(old.seq);
        }
        if let (Some(through), Some(attached)) = (through, &mut self.attached) {
            attached.sent_through = attached.sent_through.max(through);
        }
        through
    }
}

/// One durable subscription, or a plain one's watch: a session of the
/// routing core that keeps what it takes for the principal, or only
/// counts it while nobody holds it.
pub(super) struct Durable {
    pub(super) principal: String,
    pub(super) name: String,
    pattern: Pattern,
    keeps: bool,
    core_session: SessionId,
    state: Mutex<State>,
}

impl Durable {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscription(&self, acked_through: u64) -> Change {
        Change::DurableSubscription {
            principal: self.principal.clone(),
            name: self.name.clone(),
            pattern: self.pattern.as_str().to_owned(),
            keeps: self.keeps,
            acked_through,
        }
    }

    fn forget(&self) -> Change {
        Change::DurableForget {
            principal: self.principal.clone(),
            name: self.name.clone(),
        }
    }

    fn release(&self, through: u64) -> Change {
        Change::DurableRelease {
            principal: self.principal.clone(),
            name: self.name.clone(),
            through,
        }
    }
}

/// The limits of every durable subscription of a node.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_age: Duration,
    pub(super) max_bytes: usize,
    /// Deliveries a subscriber may have unacknowledged, and their bytes:
    /// kept well inside its session's queue, so waiting messages never
    /// make it a slow consumer.
    window: usize,
    window_bytes: usize,
    /// Whether subscriptions and what waits for them are stored.
    stored: bool,
}

impl Limits {
    pub(super) fn new(settings: &super::NodeSettings) -> Limits {
        Limits {
            max_age: settings.durable_max_age,
            max_bytes: settings.durable_max_bytes.max(1),
            window: (settings.session_queue / 4).max(1),
            window_bytes: (settings.session_queue_bytes / 2).max(1),
            stored: settings.durability == crate::store::Durability::Sync,
        }
    }
}

/// Every durable subscription of the node, by principal and name, and by
/// the routing core's session number.
pub(super) struct Durables {
    limits: Limits,
    by_name: Mutex<HashMap<(String, String), Arc<Durable>>>,
    by_session: dashmap::DashMap<SessionId, Arc<Durable>>,
    /// Subscriptions with something to hand out, for [`pump_forever`].
    dirty: Mutex<BTreeSet<(String, String)>>,
    wake: tokio::sync::Notify,
}

impl Durables {
    pub(super) fn new(limits: Limits) -> Durables {
        Durables {
            limits,
            by_name: Mutex::default(),
            by_session: dashmap::DashMap::new(),
            dirty: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn by_name(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Durable>>> {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark(&self, durable: &Durable) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((durable.principal.clone(), durable.name.clone()));
        self.wake.notify_one();
    }

    /// The subscription the core knows as `session`, if it is a durable one.
    pub(super) fn of_session(&self, session: SessionId) -> Option<Arc<Durable>> {
        self.by_session.get(&session).map(|entry| entry.clone())
    }

    /// Takes `envelope` for `durable`: it waits, in order, until its
    /// subscriber acknowledges it. Past the byte bound the oldest waiting
    /// go, each audited (`durable-full`). A watch only counts it, and
    /// audits it (`subscriber-away`), while nobody holds the watch.
    /// Whether it was kept.
    pub(super) fn hold(
        &self,
        durable: &Durable,
        envelope: &Envelope,
        marking: &str,
        changes: &mut Vec<Change>,
        records: &mut Vec<Record>,
    ) -> bool {
        if !durable.keeps {
            let mut state = durable.state();
            if state.attached.is_none() {
                state.missed += 1;
                records.push(
                    Record::new(Event::Deliver, Verdict::Deny, Reason::SubscriberAway.code())
                        .message(envelope, marking)
                        .subject(&durable.principal)
                        .detail(format!(
                            "its subscriber (watch {}) was away; not kept, as its subscription is not durable",
                            durable.name
                        )),
                );
            }
            return false;
        }
        let delivery = Delivery {
            id: envelope.id,
            origin: envelope.origin,
            publisher: envelope.publisher.clone(),
            topic: envelope.topic.as_str().to_owned(),
            marking: marking.to_owned(),
            created_us: envelope.created_us,
            payload: envelope.payload.clone(),
        };
        let mut state = durable.state();
        let waiting = Waiting {
            seq: state.next_seq,
            held_us: now_us(),
            topic: envelope.topic.clone(),
            label: envelope.label.clone(),
            bytes: cost(&delivery),
            delivery,
            denied: false,
        };
        state.next_seq += 1;
        if self.limits.stored {
            if let Some(held) = waiting.encode() {
                changes.push(Change::DurableHold {
                    principal: durable.principal.clone(),
                    name: durable.name.clone(),
                    seq: waiting.seq,
                    held,
                });
            }
        }
        state.bytes += waiting.bytes;
        state.waiting.push_back(waiting);
        let max_bytes = self.limits.max_bytes;
        let why = format!(
            "durable subscription {} holds at most {max_bytes} bytes; its oldest message was dropped, never delivered",
            durable.name
        );
        let full = |state: &State| state.bytes > max_bytes;
        let dropped = state.drop_oldest(&durable.principal, (Reason::DurableFull, &why), full, records);
        if let (Some(through), true) = (dropped, self.limits.stored) {
            changes.push(durable.release(through));
        }
        drop(state);
        self.mark(durable);
        true
    }
}

/// Creates (or finds) `principal`'s subscription `name` to `pattern`,
/// durable (`keeps`) or a plain one's watch, and hands it to `session`,
/// whose queue is `queue`. A durable one then hands out every message not
/// yet acknowledged, in order, taken from any session it was handed to
/// before. Returns, for a watch the node knew, what it counted while
/// nobody held it.
pub(super) async fn attach(
    shared: &Shared,
    principal: &Arc<Principal>,
    (name, pattern, keeps): (&str, &Pattern, bool),
    session: SessionId,
    queue: QueueSender,
) -> Result<Option<u64>, AttachError> {
    check_name(name)?;
    let durables = &shared.durables;
    let key = (principal.name.clone(), name.to_owned());
    // Looked up and created under one lock, so two sessions attaching to
    // a new name at once make one subscription.
    let (durable, created, evicted) = {
        let mut by_name = durables.by_name();
        match by_name.get(&key) {
            Some(durable) if durable.keeps != keeps => {
                return Err(DurableError::OtherKind(name.to_owned()).into())
            }
            Some(durable) if durable.pattern != *pattern => {
                return Err(DurableError::OtherPattern {
                    name: name.to_owned(),
                    existing: durable.pattern.as_str().to_owned(),
                }
                .into())
            }
            Some(durable) => (durable.clone(), false, None),
            None => {
                let evicted = make_room(&by_name, &principal.name, keeps)?;
                if let Some(evicted) = &evicted {
                    unregister(shared, evicted, &mut by_name);
                }
                let durable = Arc::new(Durable {
                    principal: principal.name.clone(),
                    name: name.to_owned(),
                    pattern: pattern.clone(),
                    keeps,
                    core_session: shared.router.new_session_id(),
                    state: Mutex::new(State::new(0, VecDeque::new())),
                });
                register(shared, principal.clone(), &durable, &mut by_name).map_err(AttachError::Refused)?;
                (durable, true, evicted)
            }
        }
    };
    if durables.limits.stored {
        let mut changes = Vec::new();
        if let Some(evicted) = evicted {
            changes.push(evicted.forget());
        }
        if created {
            changes.push(durable.subscription(0));
        }
        // On disk before the subscriber hears it exists.
        if !changes.is_empty() {
            shared.custody.commit(changes).await.map_err(AttachError::Store)?;
        }
    }
    let missed = {
        let mut state = durable.state();
        state.attached = Some(Attached {
            session,
            queue,
            sent_through: state.acked_through,
        });
        let missed = std::mem::take(&mut state.missed);
        (!created).then_some(missed)
    };
    durables.mark(&durable);
    Ok(missed)
}

/// Whether `principal` may have one more subscription of its kind; for a
/// watch, the one let go of longest ago makes room if every one is taken.
fn make_room(
    by_name: &HashMap<(String, String), Arc<Durable>>,
    principal: &str,
    keeps: bool,
) -> Result<Option<Arc<Durable>>, DurableError> {
    let mine: Vec<&Arc<Durable>> = by_name
        .values()
        .filter(|d| d.principal == principal && d.keeps == keeps)
        .collect();
    if keeps {
        return if mine.len() >= MAX_PER_PRINCIPAL {
            Err(DurableError::TooMany)
        } else {
            Ok(None)
        };
    }
    if mine.len() < MAX_WATCHES_PER_PRINCIPAL {
        return Ok(None);
    }
    mine.into_iter()
        .filter_map(|d| {
            let state = d.state();
            state.attached.is_none().then_some((state.let_go_us, d))
        })
        .min_by_key(|(let_go_us, _)| *let_go_us)
        .map(|(_, d)| Some(d.clone()))
        .ok_or(DurableError::TooManyWatches)
}

/// Why a session could not attach to a durable subscription.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttachError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The routing core refused the subscription: its code and sentence.
    #[error("{}", .0 .1)]
    Refused((&'static str, String)),
    #[error("the node could not store the subscription: {0}")]
    Store(String),
}

/// Makes `durable` a session of the routing core, subscribed to its
/// pattern, and names it in the tables.
fn register(
    shared: &Shared,
    principal: Arc<Principal>,
    durable: &Arc<Durable>,
    by_name: &mut HashMap<(String, String), Arc<Durable>>,
) -> Result<(), (&'static str, String)> {
    let session = durable.core_session;
    let pattern = durable.pattern.clone();
    let (subscribed, actions) = shared.router.core(|core, now| {
        core.open_session(session, principal);
        let subscribed = core.subscribe(session, pattern, now);
        if subscribed.is_err() {
            core.close_session(session, now);
        }
        subscribed
    });
    shared.router.defer(actions);
    subscribed.map_err(|err| (err.code(), err.to_string()))?;
    shared.durables.by_session.insert(session, durable.clone());
    by_name.insert((durable.principal.clone(), durable.name.clone()), durable.clone());
    Ok(())
}

/// Forgets `durable`: it leaves the core (its interest with it) and the
/// tables. The caller removes it from the store ([`Durable::forget`]).
fn unregister(shared: &Shared, durable: &Durable, by_name: &mut HashMap<(String, String), Arc<Durable>>) {
    by_name.remove(&(durable.principal.clone(), durable.name.clone()));
    shared.durables.by_session.remove(&durable.core_session);
    let session = durable.core_session;
    let actions = shared.router.core(|core, now| core.close_session(session, now)).1;
    shared.router.defer(actions);
}

/// Takes back the durable subscriptions a restarted node stored, with
/// what waits for them. One whose principal is no longer in the rules is
/// left in the store, unserved, until it is again.
pub(super) fn restore(shared: &Shared, stored: Vec<StoredDurable>) {
    let rules = shared.rules();
    for entry in stored {
        let Some(principal) = rules.policy.principal(&entry.principal) else {
            warn!(principal = %entry.principal, name = %entry.name, "a stored durable subscription's principal is not in the rules: not served");
            continue;
        };
        let Ok(pattern) = Pattern::new(entry.pattern.clone()) else {
            continue;
        };
        let mut waiting: VecDeque<Waiting> = entry
            .held
            .iter()
            .filter_map(|(seq, bytes)| Waiting::decode(*seq, bytes))
            .filter(|w| w.seq > entry.acked_through)
            .collect();
        waiting.make_contiguous().sort_by_key(|w| w.seq);
        let durable = Arc::new(Durable {
            principal: entry.principal.clone(),
            name: entry.name.clone(),
            pattern,
            keeps: entry.keeps,
            core_session: shared.router.new_session_id(),
            state: Mutex::new(State::new(entry.acked_through, waiting)),
        });
        let registered = register(
            shared,
            Arc::new(principal.clone()),
            &durable,
            &mut shared.durables.by_name(),
        );
        if let Err((_, why)) = registered {
            warn!(principal = %entry.principal, name = %entry.name, %why, "a stored durable subscription is no longer permitted: not served");
        }
    }
}

/// The subscriber of `principal`'s durable subscription `name` has every
/// message up to `through`: they are forgotten, and more are handed out.
pub(super) fn acknowledge(shared: &Shared, principal: &str, name: &str, through: u64) {
    let Some(durable) = shared
        .durables
        .by_name()
        .get(&(principal.to_owned(), name.to_owned()))
        .cloned()
    else {
        return;
    };
    let mut state = durable.state();
    // Only what was handed out can be acknowledged.
    let sent = state
        .attached
        .as_ref()
        .map_or(state.acked_through, |a| a.sent_through);
    let through = through.min(sent);
    if through <= state.acked_through {
        return;
    }
    state.acked_through = through;
    while state.waiting.front().is_some_and(|w| w.seq <= through) {
        if let Some(gone) = state.waiting.pop_front() {
            state.bytes -= gone.bytes;
        }
    }
    drop(state);
    if shared.durables.limits.stored {
        shared
            .custody
            .write_later(vec![durable.release(through), durable.subscription(through)]);
    }
    shared.durables.mark(&durable);
}

/// The session has ended: whatever it was handed and did not acknowledge
/// goes to the next session that attaches, and a watch starts counting.
/// A watch whose subscriber left on purpose (`ended_by_client`) is
/// forgotten: nobody will ask what it missed.
pub(super) fn detach(shared: &Shared, session: SessionId, ended_by_client: bool) {
    let mut forgotten = Vec::new();
    {
        let mut by_name = shared.durables.by_name();
        let held: Vec<Arc<Durable>> = by_name
            .values()
            .filter(|d| d.state().attached.as_ref().is_some_and(|a| a.session == session))
            .cloned()
            .collect();
        for durable in held {
            if !durable.keeps && ended_by_client {
                unregister(shared, &durable, &mut by_name);
                forgotten.push(durable.forget());
                continue;
            }
            let mut state = durable.state();
            state.attached = None;
            state.let_go_us = now_us();
        }
    }
    if shared.durables.limits.stored && !forgotten.is_empty() {
        shared.custody.write_later(forgotten);
    }
}

/// Forgets the watches nobody has held for [`WATCH_KEPT_US`].
fn forget_old_watches(shared: &Shared) {
    let before_us = now_us().saturating_sub(WATCH_KEPT_US);
    let mut forgotten = Vec::new();
    {
        let mut by_name = shared.durables.by_name();
        let old: Vec<Arc<Durable>> = by_name
            .values()
            .filter(|d| {
                let state = d.state();
                !d.keeps && state.attached.is_none() && state.let_go_us < before_us
            })
            .cloned()
            .collect();
        for durable in old {
            unregister(shared, &durable, &mut by_name);
            forgotten.push(durable.forget());
        }
    }
    if shared.durables.limits.stored && !forgotten.is_empty() {
        shared.custody.write_later(forgotten);
    }
}

/// Hands out what waits, to each attached subscriber, a window at a time;
/// drops what waited past the age limit. Runs until shutdown.
pub(super) async fn pump_forever(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut last_sweep = tokio::time::Instant::now();
    let mut last_expiry = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shared.durables.wake.notified() => {}
            () = tokio::time::sleep(PUMP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let durables = &shared.durables;
        let mut due = std::mem::take(&mut *durables.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        // Every one now and then, however busy some are: a queue that was
        // full may have room, and what waits for one nobody touches ages.
        let expire = last_expiry.elapsed() >= EXPIRE_EVERY;
        if expire {
            last_expiry = tokio::time::Instant::now();
            forget_old_watches(&shared);
        }
        if expire || last_sweep.elapsed() >= PUMP_EVERY {
            last_sweep = tokio::time::Instant::now();
            due.extend(durables.by_name().keys().cloned());
        }
        let mut records = Vec::new();
        for key in due {
            let Some(durable) = durables.by_name().get(&key).cloned() else {
                continue;
            };
            if expire {
                expire_waiting(&shared, &durable, &mut records);
            }
            pump(&shared, &durable, &mut records);
        }
        for record in records {
            shared.audit(record).await;
        }
    }
}

/// Drops what waited for `durable` past the age limit, each audited.
fn expire_waiting(shared: &Shared, durable: &Durable, records: &mut Vec<Record>) {
    let limits = shared.durables.limits;
    let max_age = u64::try_from(limits.max_age.as_micros()).unwrap_or(u64::MAX);
    let before_us = now_us().saturating_sub(max_age);
    let why = format!(
        "waited for durable subscription {} longer than {:?}; expired, never delivered",
        durable.name, limits.max_age
    );
    let old = |state: &State| state.waiting.front().is_some_and(|w| w.held_us < before_us);
    let expired =
        durable
            .state()
            .drop_oldest(&durable.principal, (Reason::DurableExpired, &why), old, records);
    if let (Some(through), true) = (expired, limits.stored) {
        shared.custody.write_later(vec![durable.release(through)]);
    }
}

/// Offers the attached subscriber what waits past what it was offered,
/// within its window. Each message is admitted again under the rules in
/// force: one the principal may no longer see is audited and never
/// offered; it goes once everything before it is acknowledged.
fn pump(shared: &Shared, durable: &Durable, records: &mut Vec<Record>) {
    let limits = shared.durables.limits;
    let rules = shared.rules();
    // Removed from the roster: its sessions are closed, and what waits
    // for it stays until it expires or the principal is back.
    let Some(principal) = rules.policy.principal(&durable.principal) else {
        return;
    };
    let mut state = durable.state();
    let Some(mut attached) = state.attached.take() else {
        return;
    };
    let mut in_flight = 0;
    let mut in_flight_bytes = 0;
    let mut closed = false;
    for entry in state.waiting.iter_mut() {
        if entry.seq <= attached.sent_through {
            if !entry.denied {
                in_flight += 1;
                in_flight_bytes += entry.bytes;
            }
            continue;
        }
        if in_flight >= limits.window
            || (in_flight > 0 && in_flight_bytes + entry.bytes > limits.window_bytes)
        {
            break;
        }
        let verdict = rules
            .policy
            .may_deliver(principal, &entry.topic, &entry.label, entry.delivery.origin);
        if let Decision::Deny { reason, message } = verdict {
            records.push(
                Record::new(Event::Deliver, Verdict::Deny, reason.code())
                    .about(entry.delivery.id, &entry.delivery.marking)
                    .subject(&durable.principal)
                    .detail(format!(
                        "waited for durable subscription {}; not delivered: {message}",
                        durable.name
                    )),
            );
            entry.denied = true;
            attached.sent_through = entry.seq;
            continue;
        }
        let frame = Frame::DurableDeliver {
            name: durable.name.clone(),
            seq: entry.seq,
            delivery: entry.delivery.clone(),
        };
        let Ok(frame) = wire::encode(&frame) else {
            continue;
        };
        match attached.queue.offer(Bytes::from(frame)) {
            Ok(()) => {
                attached.sent_through = entry.seq;
                in_flight += 1;
                in_flight_bytes += entry.bytes;
            }
            // Tried again at the next pump.
            Err(OfferError::Full) => break,
            Err(OfferError::Closed) => {
                closed = true;
                break;
            }
        }
    }
    if !closed {
        state.attached = Some(attached);
    }
    // Refused ones at the front have nothing unacknowledged before them.
    let mut released = None;
    while state.waiting.front().is_some_and(|w| w.denied) {
        if let Some(gone) = state.waiting.pop_front() {
            state.bytes -= gone.bytes;
            state.acked_through = gone.seq;
            released = Some(gone.seq);
        }
    }
    drop(state);
    if let (Some(through), true) = (released, limits.stored) {
        shared
            .custody
            .write_later(vec![durable.release(through), durable.subscription(through)]);
    }
}
