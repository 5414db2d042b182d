//! The audit log's writer thread: it drains the channel on its own
//! schedule, serializes records into lines, and appends them to the file.
//!
//! A line that could not be written is kept (in `pending`, bounded) and
//! retried on every pass, reopening the file, so a log that was made
//! unwritable and then writable again, or whose folder was removed and put
//! back, catches up without losing a record. While it cannot, the shared
//! [`Health`] says why, and the node refuses new work.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, Link};
use super::{now_us, Aggregator, Health, Record, BUSY_PAUSE, IDLE_PAUSE};
use crate::label::Nation;

/// The most bytes of lines held back while the file cannot be written;
/// past it the writer stops taking records, the channel fills, and senders
/// wait: nothing is dropped, and memory stays bounded.
const MAX_PENDING: usize = 8 * 1024 * 1024;

pub(super) enum Message {
    Record(Record),
    Close(oneshot::Sender<()>),
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
    }
}

/// One line of the log: the record, stamped with the node that wrote it,
/// and chained to the line before it (`seq`, `prev`: see [`chain`]).
#[derive(Serialize)]
struct Line<'a> {
    node: Nation,
    #[serde(flatten)]
    record: &'a Record,
    seq: u64,
    prev: &'a str,
}

/// The open log file, and which file it is, to notice it being moved,
/// removed or replaced under the writer.
struct OpenLog {
    file: File,
    identity: Option<(u64, u64)>,
}

pub(super) struct Writer {
    path: PathBuf,
    node: Nation,
    log: Option<OpenLog>,
    /// Whole lines, each ending in a newline, not yet in the file. They are
    /// chained when made: a line that fails is written again as it was.
    pending: Vec<u8>,
    /// Where the chain stands after the last line made.
    link: Link,
    health: Arc<Health>,
}

impl Writer {
    /// Opens the log at `path`, creating it, for appending.
    pub(super) fn open(path: PathBuf, node: Nation, health: Arc<Health>) -> io::Result<Writer> {
        let mut log = open_log(&path)?;
        let link = chain::last_link(&mut log.file)?;
        Ok(Writer {
            path,
            node,
            log: Some(log),
            pending: Vec::new(),
            link,
            health,
        })
    }

    /// Serializes records into pending lines.
    fn add(&mut self, records: &mut Vec<Record>) {
        for record in records.drain(..) {
            let start = self.pending.len();
            let prev = chain::hex(&self.link.prev);
            let line = Line {
                node: self.node,
                record: &record,
                seq: self.link.seq,
                prev: &prev,
            };
            match serde_json::to_writer(&mut self.pending, &line) {
                Ok(()) => {
                    self.link = Link {
                        prev: chain::hash_line(&self.pending[start..]),
                        seq: self.link.seq.saturating_add(1),
                    };
                    self.pending.push(b'\n');
                }
                Err(err) => {
                    self.pending.truncate(start);
                    tracing::error!(cause = %err, "cannot encode an audit record");
                }
            }
        }
    }

    /// Appends the pending lines to the file; on failure keeps the ones not
    /// wholly written and says why in `health`, until a later pass succeeds.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.try_write() {
            Ok(()) => {
                if self.health.get().is_some() {
                    tracing::warn!(path = %self.path.display(), "the audit log is written again");
                    self.health.recover();
                }
            }
            Err(cause) => {
                // Reopened on the next pass, whatever went wrong.
                self.log = None;
                if self.health.get().is_none() {
                    tracing::error!(path = %self.path.display(), %cause, "cannot write the audit log; records are kept and retried");
                }
                self.health.fail(cause);
            }
        }
    }

    fn try_write(&mut self) -> Result<(), String> {
        let path = self.path.display().to_string();
        let file = reopened(&self.path, &mut self.log)
            .map_err(|err| format!("cannot open the audit log {path}: {err}"))?;
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Ok(());
            }
            match file.write(&self.pending[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        let cut = committed(&self.pending, written);
        self.pending.drain(..cut);
        result.map_err(|err| format!("cannot write the audit log {path}: {err}"))
    }
}

/// The open log, reopened if it is not open or if the path no longer names
/// the file being written (moved, removed or replaced).
fn reopened<'a>(path: &Path, log: &'a mut Option<OpenLog>) -> io::Result<&'a mut File> {
    if let Some(open) = log {
        if identity_of_path(path) != open.identity {
            tracing::warn!(path = %path.display(), "the audit log was moved, removed or replaced; reopening it");
            *log = None;
        }
    }
    let open = match log.take() {
        Some(open) => open,
        None => open_log(path)?,
    };
    Ok(&mut log.insert(open).file)
}

/// How many leading bytes of `pending` are in the file once `written` of
/// them were written: every whole line, and a line whose text was all
/// written but not its newline (reopening the file adds that newline).
fn committed(pending: &[u8], written: usize) -> usize {
    if written >= pending.len() {
        return pending.len();
    }
    if pending[written] == b'\n' {
        return written + 1;
    }
    pending[..written]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

/// Opens the log for appending (and reading its tail), creating it; if it
/// ends in a line cut short (a crash, a failed write), starts a new line
/// so the next record is whole.
fn open_log(path: &Path) -> io::Result<OpenLog> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        file.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    let identity = identity_of_file(&file);
    Ok(OpenLog { file, identity })
}

#[cfg(unix)]
fn identity_of_file(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(unix)]
fn identity_of_path(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity_of_file(_: &File) -> Option<(u64, u64)> {
    None
}

#[cfg(not(unix))]
fn identity_of_path(_: &Path) -> Option<(u64, u64)> {
    None
}

/// The writer thread: runs until every [`super::Audit`] handle is dropped.
pub(super) fn run(mut rx: mpsc::Receiver<Message>, mut writer: Writer) {
    let mut aggregator = Aggregator::default();
    let mut ready = Vec::new();
    // The writer polls the channel on its own schedule instead of sleeping
    // in `blocking_recv`: a parked receiver would make every record's
    // sender pay a futex wake-up on the message path. Only `close` and the
    // last handle's drop wake it early.
    let mut pause = BUSY_PAUSE;
    loop {
        let mut took = false;
        let mut closers = Vec::new();
        let mut disconnected = false;
        while writer.pending.len() < MAX_PENDING {
            match rx.try_recv() {
                Ok(Message::Record(record)) => {
                    took = true;
                    aggregator.offer(record, &mut ready);
                    writer.add(&mut ready);
                }
                Ok(Message::Close(done)) => {
                    // Nothing counted goes unwritten: every open window
                    // ends here.
                    closers.push(done);
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if disconnected || !closers.is_empty() {
            aggregator.finish(now_us(), &mut ready);
        } else {
            aggregator.expire(now_us(), &mut ready);
        }
        took |= !ready.is_empty();
        writer.add(&mut ready);
        writer.write_pending();
        for done in closers {
            let _ = done.send(());
        }
        let failing = !writer.pending.is_empty();
        if disconnected {
            if failing {
                tracing::error!(
                    path = %writer.path.display(),
                    bytes = writer.pending.len(),
                    "the audit log closed with records that could not be written"
                );
            }
            return;
        }
        pause = if failing {
            IDLE_PAUSE
        } else if took {
            BUSY_PAUSE
        } else {
            (pause * 2).min(IDLE_PAUSE)
        };
        std::thread::park_timeout(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::committed;

    #[test]
    fn a_write_cut_short_keeps_every_line_not_wholly_written() {
        let pending = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";
        assert_eq!(committed(pending, pending.len()), pending.len());
        assert_eq!(committed(pending, 0), 0);
        assert_eq!(committed(pending, 3), 0, "a torn first line is written again");
        assert_eq!(committed(pending, 8), 8, "exactly one whole line");
        assert_eq!(committed(pending, 12), 8);
        // The text of the second line is in, only its newline is not: it
        // is not written twice (reopening adds the newline).
        assert_eq!(committed(pending, 15), 16);
    }
}
