//! Audit records: one JSON line per release decision or connection event,
//! appended to `<data dir>/audit.jsonl` by a dedicated writer thread fed by
//! a bounded channel. When the channel is full, the caller waits: a record
//! is never dropped.
//!
//! A hostile member or a stranger can make a node refuse things as fast as
//! it can send them, so repeated identical refusals are counted rather than
//! written one by one ([`Aggregator`]): every decision is still accounted
//! for, and the log stays readable.
//!
//! The lines form a hash chain ([`chain`]: `seq` and `prev` on each), so an
//! edited or deleted record shows, and `entente audit verify` names it
//! ([`command`], searching with [`query`]). A log that cannot be written
//! keeps its records and retries, and [`Audit::failure`] says why, so the
//! node can refuse new work rather than act unaccountably (invariant 7).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::envelope::{Envelope, MessageId};
use crate::label::Nation;

pub mod chain;
pub mod command;
pub mod query;
mod writer;

use writer::Message;

/// Sized so that ingress does not wait at the target message rates: the
/// writer drains tens of thousands of lines per millisecond burst.
const CHANNEL_CAPACITY: usize = 64 * 1024;
/// The writer's pause between drains while records keep coming: a few
/// large appends rather than many small ones. At 2 ms, the writer's wake-ups
/// and ext4 appends cost the message path about 30 µs at p50 on a 2-core
/// machine (the same bench with the logs on tmpfs was that much faster;
/// BENCHMARKS.md). The channel holds far more than 10 ms of records at any rate
/// the node reaches.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause while the log is idle: it bounds how long a record
/// waits in memory before it reaches the file.
const IDLE_PAUSE: Duration = Duration::from_millis(50);

/// The reason of a `forward` record whose peers had different outcomes.
pub const MIXED: &str = "mixed";

/// What happened: the kind of decision or connection event a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A connection, or an inbound envelope, seal or announcement, was accepted.
    Admit,
    /// A connection, or an inbound envelope, seal or announcement, was refused.
    Refuse,
    /// A principal asked to publish a message.
    Publish,
    /// A message was (or was not) delivered to a local subscriber.
    Deliver,
    /// A message was (or was not) forwarded to a peer nation.
    Forward,
    /// A message was discarded: a duplicate, its link went down, it could not
    /// be encoded, or a peer may not have it.
    Drop,
    /// A session or link ended.
    Disconnect,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// One audit record: a decision or connection event, with what it was about.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the record was made, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// What happened.
    pub event: Event,
    /// Whether it was allowed.
    pub decision: Verdict,
    /// A stable code: a policy reason such as `clearance-too-low`, or a
    /// node reason such as `bad-signature` or `slow-consumer`.
    pub reason: &'static str,
    /// The message id, when the record is about a message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The message's marking, when the record is about a message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marking: Option<String>,
    /// The principal or nation the decision was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Every principal or nation one decision was about, when it was the
    /// same for all of them (such as one message delivered to many
    /// subscribers): one line instead of one per recipient.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// A sentence for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Present only on the summary of repeated identical refusals
    /// ([`Aggregator`]); boxed, because every record travels through
    /// channels and queues and summaries are rare.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Box<Summary>>,
    /// Each peer's outcome in a `forward` record: the forward decisions
    /// for one message are one record, whatever the number of peers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerOutcome>,
}

/// What a summary line adds: how many refusals it stands for, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// How many decisions this one line stands for (a line without it
    /// stands for one).
    pub count: u64,
    /// The time of the first decision it counts.
    pub first_us: u64,
    /// The time of the last decision it counts.
    pub last_us: u64,
    /// When the refusals were about messages: the ids of the first of them,
    /// at most [`SUMMARY_IDS`]; the rest are only counted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// One peer's part in the forward decisions for one message, written in a
/// `forward` record's `peers` as `{"peer":"FRA","decision":"allow","reason":"policy-allows"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerOutcome {
    /// The peer nation.
    pub peer: Nation,
    /// Whether the message went to it.
    pub decision: Verdict,
    /// Why: `policy-allows`; a policy reason such as `not-releasable`; or
    /// why it was dropped, such as `peer-stalled` or `link-down`.
    pub reason: &'static str,
}

impl Record {
    /// A record made now.
    pub fn new(event: Event, decision: Verdict, reason: &'static str) -> Record {
        Record::at(now_us(), event, decision, reason)
    }

    /// A record made at `time_us`, for code that has no clock of its own.
    pub fn at(time_us: u64, event: Event, decision: Verdict, reason: &'static str) -> Record {
        Record {
            time_us,
            event,
            decision,
            reason,
            id: None,
            marking: None,
            subject: None,
            subjects: Vec::new(),
            detail: None,
            summary: None,
            peers: Vec::new(),
        }
    }

    /// The one `forward` record of a message, listing each peer's outcome.
    /// It is allowed if the message went to any peer; its own reason is
    /// the peers' reason when they all share one, and `mixed` otherwise.
    pub fn forward(peers: Vec<PeerOutcome>) -> Record {
        let decision = if peers.iter().any(|p| p.decision == Verdict::Allow) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let reason = match peers.first() {
            Some(first) if peers.iter().all(|p| p.reason == first.reason) => first.reason,
            _ => MIXED,
        };
        let mut record = Record::new(Event::Forward, decision, reason);
        record.peers = peers;
        record
    }

    /// Sets the principal or nation the decision was about.
    pub fn subject(mut self, subject: impl ToString) -> Record {
        self.subject = Some(subject.to_string());
        self
    }

    /// Sets every principal or nation one decision was about.
    pub fn subjects(mut self, subjects: Vec<String>) -> Record {
        self.subjects = subjects;
        self
    }

    /// Sets the sentence for people.
    pub fn detail(mut self, detail: impl ToString) -> Record {
        self.detail = Some(detail.to_string());
        self
    }

    /// Sets the message the record is about: its id and marking.
    pub fn message(self, envelope: &Envelope, marking: &str) -> Record {
        self.about(envelope.id, marking)
    }

    /// The message by its id and marking alone.
    pub fn about(mut self, id: MessageId, marking: &str) -> Record {
        self.id = Some(id.to_string());
        self.marking = Some(marking.to_owned());
        self
    }
}

/// How long identical refusals are gathered into one summary.
pub const AGGREGATE_WINDOW_US: u64 = 10_000_000;
/// Identical refusals written in full at the start of each window, so a
/// reader sees a few whole examples (with their details) before counting
/// starts, as syslog rate limits do.
pub const AGGREGATE_BURST: u64 = 8;
/// The most kinds of refusal gathered at once; past that, refusals of a
/// new subject share one group per event and reason, so a source that
/// varies its subject cannot grow the table or the log.
pub const AGGREGATE_GROUPS: usize = 1024;
/// The most message ids a summary lists.
pub const SUMMARY_IDS: usize = 16;

/// What makes two refusals identical: the same event, reason and subject
/// (or subjects). The message id, marking and detail are left out, so a
/// peer's flood of refused envelopes gathers into one group however it
/// varies them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    event: Event,
    reason: &'static str,
    subject: Option<String>,
    subjects: Vec<String>,
    /// The group of new subjects that arrived while the table was full.
    overflow: bool,
}

#[derive(Debug)]
struct Group {
    opened_us: u64,
    written: u64,
    counted: u64,
    first_us: u64,
    last_us: u64,
    ids: Vec<String>,
    detail: Option<String>,
}

/// Gathers repeated identical refusals into summaries. Sans-IO: it is given
/// records and times and hands back what to write, so it is tested without
/// a clock or a file.
///
/// A refusal is a record whose decision is deny and whose event is
/// `refuse`, `drop` or `disconnect`: what a source sent, or a connection it
/// made, was turned away. Decisions about delivering, forwarding or
/// publishing one message keep a line each, and allowed decisions are never
/// gathered. In each window (from the first refusal of a kind), the first
/// [`AGGREGATE_BURST`] are written as they come; the rest are counted, and
/// one summary with `count`, `first_us`, `last_us` (and up to
/// [`SUMMARY_IDS`] message ids) is written when the window ends, or at close.
#[derive(Debug)]
pub struct Aggregator {
    window_us: u64,
    burst: u64,
    capacity: usize,
    groups: HashMap<Key, Group>,
    /// Groups that are not overflow groups; only they count toward capacity.
    ordinary: usize,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(AGGREGATE_WINDOW_US, AGGREGATE_BURST, AGGREGATE_GROUPS)
    }
}

fn is_refusal(record: &Record) -> bool {
    record.decision == Verdict::Deny
        && matches!(record.event, Event::Refuse | Event::Drop | Event::Disconnect)
        && record.summary.is_none()
}

impl Aggregator {
    /// An aggregator with its own window, burst and table size.
    pub fn new(window_us: u64, burst: u64, capacity: usize) -> Aggregator {
        Aggregator {
            window_us,
            burst,
            capacity,
            groups: HashMap::new(),
            ordinary: 0,
        }
    }

    /// Takes one record and appends to `out` what to write now: the record
    /// itself, nothing (it was counted), and perhaps the summary of a window
    /// it ended.
    pub fn offer(&mut self, record: Record, out: &mut Vec<Record>) {
        if !is_refusal(&record) {
            out.push(record);
            return;
        }
        let mut key = Key {
            event: record.event,
            reason: record.reason,
            subject: record.subject.clone(),
            subjects: record.subjects.clone(),
            overflow: false,
        };
        if !self.groups.contains_key(&key) && self.ordinary >= self.capacity {
            key.subject = None;
            key.subjects = Vec::new();
            key.overflow = true;
        }
        let now = record.time_us;
        if let Some(group) = self.groups.get(&key) {
            if now >= group.opened_us.saturating_add(self.window_us) {
                if let Some(group) = self.groups.remove(&key) {
                    if !key.overflow {
                        self.ordinary -= 1;
                    }
                    out.extend(summary(&key, group, now));
                }
            }
        }
        match self.groups.get_mut(&key) {
            Some(group) if group.written < self.burst => {
                group.written += 1;
                out.push(record);
            }
            Some(group) => {
                if group.counted == 0 {
                    group.first_us = now;
                    group.detail = record.detail.clone();
                }
                group.counted += 1;
                group.first_us = group.first_us.min(now);
                group.last_us = group.last_us.max(now);
                if let Some(id) = record.id {
                    if group.ids.len() < SUMMARY_IDS {
                        group.ids.push(id);
                    }
                }
            }
            None => {
                if !key.overflow {
                    self.ordinary += 1;
                }
                self.groups.insert(
                    key,
                    Group {
                        opened_us: now,
                        written: 1,
                        counted: 0,
                        first_us: now,
                        last_us: now,
                        ids: Vec::new(),
                        detail: None,
                    },
                );
                out.push(record);
            }
        }
    }

    /// Ends every window that is over at `now_us`, appending their
    /// summaries to `out`, oldest first.
    pub fn expire(&mut self, now_us: u64, out: &mut Vec<Record>) {
        let window = self.window_us;
        self.end_where(now_us, out, |group| {
            now_us >= group.opened_us.saturating_add(window)
        });
    }

    /// Ends every window, as the log closes: the summary of each group
    /// with counted refusals is appended to `out`, oldest first.
    pub fn finish(&mut self, now_us: u64, out: &mut Vec<Record>) {
        self.end_where(now_us, out, |_| true);
    }

    /// How many kinds of refusal are being gathered.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    fn end_where(&mut self, now_us: u64, out: &mut Vec<Record>, ended: impl Fn(&Group) -> bool) {
        if self.groups.is_empty() {
            return;
        }
        let keys: Vec<Key> = self
            .groups
            .iter()
            .filter(|(_, group)| ended(group))
            .map(|(key, _)| key.clone())
            .collect();
        let start = out.len();
        for key in keys {
            if let Some(group) = self.groups.remove(&key) {
                if !key.overflow {
                    self.ordinary -= 1;
                }
                out.extend(summary(&key, group, now_us));
            }
        }
        out[start..].sort_by_key(|record| record.summary.as_ref().map(|s| s.first_us));
    }
}

/// The one line that stands for a group's counted refusals, if it has any.
fn summary(key: &Key, group: Group, now_us: u64) -> Option<Record> {
    if group.counted == 0 {
        return None;
    }
    let whose = if key.overflow {
        "from subjects beyond the audit's table of sources, "
    } else {
        ""
    };
    let detail = format!(
        "{} more refusals like the {} written in full before, {whose}counted instead of written; the first of them: {}",
        group.counted,
        group.written,
        group.detail.as_deref().unwrap_or("(no detail)")
    );
    let mut record = Record::at(now_us.max(group.last_us), key.event, Verdict::Deny, key.reason)
        .subjects(key.subjects.clone())
        .detail(detail);
    record.subject = key.subject.clone();
    record.summary = Some(Box::new(Summary {
        count: group.counted,
        first_us: group.first_us,
        last_us: group.last_us,
        ids: group.ids,
    }));
    Some(record)
}

/// The current time, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Why an audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log file or its folder could not be created, opened or
    /// given a writer thread.
    #[error("cannot open audit log {path}: {cause}")]
    Open {
        /// The log file's path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A handle to a node's audit log; cheap to clone.
///
/// The writer thread runs until every handle is dropped: records sent by any
/// task, even after [`Audit::close`], reach the file, and dropping the last
/// handle waits until the writer has written everything it was given.
#[derive(Clone, Debug)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `Some` until the last handle is dropped.
    tx: Option<mpsc::Sender<Message>>,
    writer: Option<std::thread::JoinHandle<()>>,
    health: Arc<Health>,
    /// Denials recorded so far, by reason code, for `admin status`.
    denials: Mutex<BTreeMap<&'static str, u64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Disconnects the channel: the writer writes what it holds and ends.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

impl Audit {
    /// Opens (appending) `<data_dir>/audit.jsonl` and starts its writer.
    pub fn open(data_dir: &Path, node: Nation) -> Result<Audit, AuditError> {
        let path = data_dir.join("audit.jsonl");
        let error = |cause| AuditError::Open {
            path: path.clone(),
            cause,
        };
        std::fs::create_dir_all(data_dir).map_err(error)?;
        let health = Arc::new(Health::default());
        let writer = writer::Writer::open(path.clone(), node, health.clone()).map_err(error)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name(format!("audit-{node}"))
            .spawn(move || writer::run(rx, writer))
            .map_err(error)?;
        Ok(Audit {
            inner: Arc::new(Inner {
                tx: Some(tx),
                writer: Some(thread),
                health,
                denials: Mutex::default(),
            }),
        })
    }

    /// How many denials were recorded so far, by reason code (each record
    /// counts as its summary's count, or 1).
    pub fn denials(&self) -> BTreeMap<String, u64> {
        self.inner
            .denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(&code, &count)| (code.to_owned(), count))
            .collect()
    }

    /// Why the log is not being written, if it is not: `None` while records
    /// reach the file; `Some(cause)`, a sentence naming the file and the I/O
    /// error, from the moment a write fails until a later write succeeds.
    /// Records that failed are kept and retried, never dropped. Cheap (one
    /// atomic load while the log is healthy): the node asks before each
    /// publish and subscribe, and refuses them while the log fails.
    pub fn failure(&self) -> Option<String> {
        self.inner.health.get()
    }

    /// Queues a record for the writer; waits while the channel is full, so a
    /// record is never dropped.
    pub async fn record(&self, record: Record) {
        if record.decision == Verdict::Deny {
            let count = record.summary.as_ref().map_or(1, |summary| summary.count);
            *self
                .inner
                .denials
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(record.reason)
                .or_default() += count;
        }
        if let Some(tx) = &self.inner.tx {
            // Fails only if the writer thread died, which it does not.
            let _ = tx.send(Message::Record(record)).await;
        }
    }

    /// Flushes everything recorded so far and waits for it: returns once
    /// every record sent before this call is in the file, or at once if the
    /// log is failing ([`Audit::failure`] says why; those records stay
    /// pending and are retried). The log stays open: records sent after it
    /// are written too, until the last handle is dropped.
    pub async fn close(&self) {
        let Some(tx) = &self.inner.tx else { return };
        let (done, wait) = oneshot::channel();
        if tx.send(Message::Close(done)).await.is_ok() {
            if let Some(writer) = &self.inner.writer {
                writer.thread().unpark();
            }
            let _ = wait.await;
        }
    }
}

/// Whether the log is being written; shared by the handles and the writer.
#[derive(Debug, Default)]
struct Health {
    failed: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl Health {
    fn fail(&self, cause: String) {
        *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = Some(cause);
        self.failed.store(true, Ordering::Release);
    }

    fn recover(&self) {
        self.failed.store(false, Ordering::Release);
        *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn get(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.cause.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: u64 = 10_000;
    const BURST: u64 = 3;

    fn refusal(time_us: u64, subject: &str) -> Record {
        Record::at(time_us, Event::Refuse, Verdict::Deny, "handshake-failed")
            .subject(subject)
            .detail(format!("attempt at {time_us}"))
    }

    /// How many decisions some lines stand for.
    fn accounted(records: &[Record]) -> u64 {
        records
            .iter()
            .map(|r| r.summary.as_ref().map_or(1, |s| s.count))
            .sum()
    }

    fn offer_all(aggregator: &mut Aggregator, records: Vec<Record>) -> Vec<Record> {
        let mut out = Vec::new();
        for record in records {
            aggregator.offer(record, &mut out);
        }
        out
    }

    #[test]
    fn allowed_decisions_and_per_message_denials_are_never_gathered() {
        let mut aggregator = Aggregator::new(WINDOW, BURST, 8);
        let mut records = Vec::new();
        for t in 0..50 {
            records.push(Record::at(t, Event::Admit, Verdict::Allow, "own-principal").subject("gbr.analyst"));
            records
                .push(Record::at(t, Event::Deliver, Verdict::Deny, "clearance-too-low").subject("gbr.clerk"));
            records.push(Record::at(t, Event::Forward, Verdict::Deny, "not-releasable").subject("USA"));
            records.push(
                Record::at(t, Event::Publish, Verdict::Deny, "topic-not-permitted").subject("gbr.clerk"),
            );
        }
        let out = offer_all(&mut aggregator, records);
        assert_eq!(out.len(), 200);
        assert_eq!(aggregator.groups(), 0);
    }

    #[test]
    fn identical_refusals_past_the_burst_become_one_summary_when_the_window_ends() {
        let mut aggregator = Aggregator::new(WINDOW, BURST, 8);
        let mut out = offer_all(
            &mut aggregator,
            (0..100).map(|t| refusal(1_000 + t, "192.0.2.7")).collect(),
        );
        assert_eq!(out.len(), BURST as usize, "only the burst is written at once");
        aggregator.expire(1_000 + WINDOW - 1, &mut out);
        assert_eq!(
            out.len(),
            BURST as usize,
            "nothing is written before the window ends"
        );
        aggregator.expire(1_000 + WINDOW, &mut out);
        assert_eq!(out.len(), BURST as usize + 1);
        let summary = &out[BURST as usize];
        let counted = summary.summary.as_deref().unwrap();
        assert_eq!(counted.count, 100 - BURST);
        assert_eq!(counted.first_us, 1_000 + BURST);
        assert_eq!(counted.last_us, 1_099);
        assert_eq!(summary.subject.as_deref(), Some("192.0.2.7"));
        assert_eq!(
            (summary.event, summary.decision, summary.reason),
            (Event::Refuse, Verdict::Deny, "handshake-failed")
        );
        assert!(
            summary.detail.as_deref().unwrap().contains("attempt at 1003"),
            "{summary:?}"
        );
        assert_eq!(accounted(&out), 100);
        assert_eq!(aggregator.groups(), 0);
    }

    #[test]
    fn a_window_with_nothing_counted_ends_without_a_summary() {
        let mut aggregator = Aggregator::new(WINDOW, BURST, 8);
        let mut out = offer_all(&mut aggregator, vec![refusal(0, "a"), refusal(1, "a")]);
        aggregator.expire(WINDOW, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.summary.is_none()));
        assert_eq!(aggregator.groups(), 0);
    }

    #[test]
    fn a_refusal_after_the_window_ends_it_and_opens_the_next() {
        let mut aggregator = Aggregator::new(WINDOW, BURST, 8);
        let mut out = offer_all(&mut aggregator, (0..10).map(|t| refusal(t, "a")).collect());
        // No drain came between: the late refusal itself ends the window.
        aggregator.offer(refusal(WINDOW + 5, "a"), &mut out);
        assert_eq!(out.len(), BURST as usize + 2);
        assert_eq!(out[BURST as usize].summary.as_ref().unwrap().count, 10 - BURST);
        assert_eq!(out[BURST as usize + 1].time_us, WINDOW + 5);
        assert!(out[BURST as usize + 1].summary.is_none(), "written in full");
        assert_eq!(accounted(&out), 11);
    }

    #[test]
    fn different_subjects_reasons_or_events_are_not_identical() {
        let mut aggregator = Aggregator::new(WINDOW, 1, 8);
        let records = vec![
            refusal(0, "a"),
            refusal(0, "b"),
            Record::at(0, Event::Refuse, Verdict::Deny, "no-identity").subject("a"),
            Record::at(0, Event::Disconnect, Verdict::Deny, "handshake-failed").subject("a"),
        ];
        let out = offer_all(&mut aggregator, records);
        assert_eq!(out.len(), 4);
        assert_eq!(aggregator.groups(), 4);
    }

    #[test]
    fn refused_messages_from_one_peer_are_counted_with_a_sample_of_their_ids() {
        let mut aggregator = Aggregator::new(WINDOW, BURST, 8);
        let records = (0..1000u64)
            .map(|n| {
                let mut record = Record::at(n, Event::Refuse, Verdict::Deny, "bad-signature").subject("FRA");
                record.id = Some(format!("{n:032x}"));
                record.marking = Some(if n % 2 == 0 { "SECRET" } else { "TOP SECRET" }.into());
                record
            })
            .collect();
        let mut out = offer_all(&mut aggregator, records);
        aggregator.finish(2_000, &mut out);
        assert_eq!(out.len(), BURST as usize + 1);
        let summary = out.last().unwrap();
        let counted = summary.summary.as_deref().unwrap();
        assert_eq!(counted.count, 1000 - BURST);
        assert_eq!(counted.ids.len(), SUMMARY_IDS);
        assert_eq!(counted.ids[0], format!("{BURST:032x}"));
        assert!(summary.id.is_none() && summary.marking.is_none());
        assert_eq!(accounted(&out), 1000);
    }

    #[test]
    fn a_source_that_varies_its_subject_cannot_grow_the_table_or_the_log() {
        let capacity = 4;
        let mut aggregator = Aggregator::new(WINDOW, BURST, capacity);
        let mut out = offer_all(
            &mut aggregator,
            (0..10_000u64)
                .map(|n| refusal(n / 10, &format!("198.51.100.{n}")))
                .collect(),
        );
        assert_eq!(
            aggregator.groups(),
            capacity + 1,
            "one overflow group for the rest"
        );
        aggregator.finish(WINDOW, &mut out);
        // Each subject in the table writes its first; the overflow group
        // its burst, then one summary.
        assert_eq!(out.len(), capacity + BURST as usize + 1);
        let summary = out.last().unwrap();
        assert!(summary.subject.is_none(), "{summary:?}");
        assert!(
            summary.detail.as_deref().unwrap().contains("beyond"),
            "{summary:?}"
        );
        assert_eq!(accounted(&out), 10_000);
    }

    #[test]
    fn summaries_serialize_with_count_and_window() {
        let mut aggregator = Aggregator::new(WINDOW, 1, 8);
        let mut out = offer_all(
            &mut aggregator,
            vec![refusal(5, "a"), refusal(6, "a"), refusal(9, "a")],
        );
        aggregator.finish(20, &mut out);
        let line = serde_json::to_value(&out[1]).unwrap();
        assert_eq!(line["count"], 2);
        assert_eq!(line["first_us"], 6);
        assert_eq!(line["last_us"], 9);
        assert_eq!(line["time_us"], 20);
        let first = serde_json::to_value(&out[0]).unwrap();
        for key in ["count", "first_us", "last_us", "ids"] {
            assert!(first.get(key).is_none(), "{key} on a plain record: {first}");
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    fn admit(subject: &str) -> Record {
        Record::new(Event::Admit, Verdict::Allow, "own-principal").subject(subject)
    }

    fn subjects(path: &Path) -> Vec<String> {
        lines(path)
            .iter()
            .map(|line| line["subject"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_written_is_kept_until_the_log_is_writable_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(dir.path(), "GBR".parse().unwrap()).unwrap();
        audit.record(admit("one")).await;
        audit.close().await;
        assert_eq!(audit.failure(), None);
        // The log is moved away and a folder takes its name: the writer
        // notices the path is no longer its file, and cannot reopen it.
        let aside = dir.path().join("aside.jsonl");
        std::fs::rename(&path, &aside).unwrap();
        std::fs::create_dir(&path).unwrap();
        audit.record(admit("two")).await;
        audit.record(admit("three")).await;
        audit.close().await;
        let cause = audit.failure().expect("the failure is reported");
        assert!(cause.contains(&path.display().to_string()), "{cause}");
        assert!(cause.contains("audit log"), "{cause}");
        assert_eq!(subjects(&aside), ["one"]);
        // Put back: the next pass writes what was kept, in order.
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        for _ in 0..500 {
            if audit.failure().is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(audit.failure(), None, "recovers once writable");
        audit.record(admit("four")).await;
        audit.close().await;
        assert_eq!(subjects(&path), ["one", "two", "three", "four"]);
        let report = chain::verify_file(&path, None).unwrap();
        assert!(report.intact() && report.torn.is_empty(), "{report:?}");
    }

    #[tokio::test]
    async fn the_chain_continues_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(dir.path(), "GBR".parse().unwrap()).unwrap();
        audit.record(admit("one")).await;
        audit.record(admit("two")).await;
        drop(audit);
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("{\"node\":\"GBR\""), "{first}");
        let audit = Audit::open(dir.path(), "GBR".parse().unwrap()).unwrap();
        audit.record(admit("three")).await;
        drop(audit);
        let all = lines(&path);
        assert_eq!(all[0]["prev"], chain::GENESIS);
        let last_of_first = first.lines().last().unwrap();
        assert_eq!(
            all[2]["prev"],
            chain::hex(&chain::hash_line(last_of_first.as_bytes()))
        );
        assert_eq!(
            all.iter().map(|l| l["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let report = chain::verify_file(&path, None).unwrap();
        assert!(report.intact() && report.records == 3, "{report:?}");
    }

    #[tokio::test]
    async fn records_sent_after_close_are_written_before_the_last_handle_goes() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), "GBR".parse().unwrap()).unwrap();
        let task = audit.clone();
        audit.record(admit("before")).await;
        audit.close().await;
        assert_eq!(subjects(&dir.path().join("audit.jsonl")), ["before"]);
        task.record(admit("after")).await;
        drop(audit);
        drop(task);
        // Dropping the last handle waited for the writer.
        assert_eq!(subjects(&dir.path().join("audit.jsonl")), ["before", "after"]);
    }

    proptest! {
        /// Whatever arrives, and whenever the writer drains: every decision
        /// is accounted for exactly once, and allowed ones are all written.
        #[test]
        fn every_decision_is_accounted_for(
            steps in proptest::collection::vec((0u64..3_000, 0usize..4, 0usize..3, any::<bool>(), any::<bool>()), 0..400),
        ) {
            let mut aggregator = Aggregator::new(WINDOW, BURST, 2);
            let reasons = ["handshake-failed", "bad-signature", "stale", "duplicate"];
            let subjects = ["a", "b", "c"];
            let mut now = 0;
            let mut out = Vec::new();
            let mut allowed = 0;
            for (gap, reason, subject, allow, drain) in steps.iter().copied() {
                now += gap;
                let verdict = if allow { Verdict::Allow } else { Verdict::Deny };
                allowed += u64::from(allow);
                aggregator.offer(Record::at(now, Event::Refuse, verdict, reasons[reason]).subject(subjects[subject]), &mut out);
                if drain {
                    aggregator.expire(now, &mut out);
                }
            }
            aggregator.finish(now, &mut out);
            prop_assert_eq!(accounted(&out), steps.len() as u64);
            prop_assert_eq!(out.iter().filter(|r| r.decision == Verdict::Allow).count() as u64, allowed);
            prop_assert!(aggregator.groups() == 0);
        }
    }
}
