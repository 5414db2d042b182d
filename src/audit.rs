//! Audit records: one JSON line per release decision or connection event,
//! appended to `<data dir>/audit.jsonl` by a dedicated writer thread fed by
//! a bounded channel. When the channel is full, the caller waits: a record
//! is never dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::envelope::Envelope;
use crate::label::Nation;

/// Sized so that ingress does not wait at the target message rates: the
/// writer drains tens of thousands of lines per millisecond burst.
const CHANNEL_CAPACITY: usize = 64 * 1024;
/// The writer's pause between drains while records keep coming.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause while the log is idle: it bounds how long a record
/// waits in memory before it reaches the file.
const IDLE_PAUSE: Duration = Duration::from_millis(50);

/// The reason of a `forward` record whose peers had different outcomes.
pub const MIXED: &str = "mixed";

/// What happened: the kind of decision or connection event a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Each peer's outcome in a `forward` record: the forward decisions
    /// for one message are one record, whatever the number of peers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerOutcome>,
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
    pub fn message(mut self, envelope: &Envelope, marking: &str) -> Record {
        self.id = Some(envelope.id.to_string());
        self.marking = Some(marking.to_owned());
        self
    }
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

enum Message {
    Record(Record),
    Close(oneshot::Sender<()>),
}

/// A handle to a node's audit log; cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
}

/// One line of the log: the record, stamped with the node that wrote it.
#[derive(Serialize)]
struct Line<'a> {
    node: Nation,
    #[serde(flatten)]
    record: &'a Record,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(error)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name(format!("audit-{node}"))
            .spawn(move || write_records(rx, BufWriter::new(file), writer_path, node))
            .map_err(error)?;
        Ok(Audit { tx })
    }

    /// Queues a record for the writer; waits while the channel is full, so a
    /// record is never dropped.
    pub async fn record(&self, record: Record) {
        // Fails only once the writer has stopped, after `close`.
        let _ = self.tx.send(Message::Record(record)).await;
    }

    /// Flushes everything recorded so far and stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn write_records(mut rx: mpsc::Receiver<Message>, mut out: BufWriter<File>, path: PathBuf, node: Nation) {
    let mut failed = false;
    let mut write = |out: &mut BufWriter<File>, record: &Record| {
        let result = serde_json::to_writer(&mut *out, &Line { node, record })
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(err) = result {
            if !failed {
                tracing::error!(path = %path.display(), cause = %err, "cannot write the audit log");
                failed = true;
            }
        }
    };
    // The writer polls the channel on its own schedule instead of sleeping
    // in `blocking_recv`: a parked receiver would make every record's
    // sender pay a futex wake-up on the message path.
    let mut pause = BUSY_PAUSE;
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Message::Record(record)) => {
                    write(&mut out, &record);
                    wrote = true;
                }
                Ok(Message::Close(done)) => {
                    let _ = out.flush();
                    let _ = done.send(());
                    return;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
            pause = BUSY_PAUSE;
        } else {
            pause = (pause * 2).min(IDLE_PAUSE);
        }
        std::thread::sleep(pause);
    }
}
