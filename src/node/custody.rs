//! Custody of what this node must forward: every peer's outbox, and, with
//! `durability = "sync"`, the store thread that writes outboxes and seen
//! ids to `<data dir>/store.redb` in groups, so that nothing is
//! acknowledged (to a publisher, or to the peer that handed it over)
//! before it is on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::outbox::{Entry, Full, Outbox};
use super::release::{holding, LetGo};
use super::sealer::ToSeal;
use crate::envelope::{Envelope, Hash, MessageId};
use crate::label::Nation;
use crate::store::{Change, Durability, SeenId, Store, StoreError};
use crate::wire::{self, Frame};

/// Store jobs waiting for the thread; past it, senders wait.
const STORE_QUEUE: usize = 4096;
/// The most jobs one commit takes together.
const GROUP: usize = 1024;

/// A group of changes for the store thread, and who waits for them.
struct Job {
    changes: Vec<Change>,
    /// `None`: nobody waits, and the changes need not reach the disk
    /// before the next commit that someone waits for.
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Every peer's outbox, and the store behind them.
pub(super) struct Custody {
    outboxes: DashMap<Nation, Arc<Outbox>>,
    max_frames: usize,
    max_bytes: usize,
    store: CustodyHandle,
}

/// Where changes go to be stored: nowhere for `durability = "memory"`.
#[derive(Clone)]
pub(super) struct CustodyHandle {
    store: Option<mpsc::Sender<Job>>,
}

/// What a restarted node finds in its store.
pub(super) struct Loaded {
    pub(super) custody: Custody,
    pub(super) seen: Vec<SeenId>,
    /// Per origin, the newest creation time of an id the store forgot to
    /// keep its bound.
    pub(super) seen_floors: BTreeMap<Nation, u64>,
    /// The newest announcement of each nation, as encoded frames.
    pub(super) announcements: Vec<Bytes>,
    /// Every durable subscription, with what waits for it.
    pub(super) durables: Vec<crate::store::StoredDurable>,
    /// Resolves once the store thread has ended and closed the store
    /// (with `sync`): it ends when the last handle to it is dropped.
    pub(super) store_released: Option<LetGo>,
}

impl Custody {
    /// Opens the store for `durability = "sync"` and loads every outbox
    /// and seen id written before a restart; for `memory`, empty outboxes
    /// and no store. `seen_since_us`: ids created before it are stale
    /// anyway, and forgotten.
    pub(super) fn open(
        data_dir: &Path,
        durability: Durability,
        (max_frames, max_bytes): (usize, usize),
        seen_since_us: u64,
    ) -> Result<Loaded, StoreError> {
        let custody = |store| Custody {
            outboxes: DashMap::new(),
            max_frames,
            max_bytes,
            store: CustodyHandle { store },
        };
        if durability == Durability::Memory {
            return Ok(Loaded {
                custody: custody(None),
                seen: Vec::new(),
                seen_floors: BTreeMap::new(),
                announcements: Vec::new(),
                durables: Vec::new(),
                store_released: None,
            });
        }
        let store = Store::open(data_dir)?;
        let seen = store.seen(seen_since_us)?;
        let seen_floors = store.seen_floors()?;
        let announcements = store.announcements()?;
        let durables = store.durables()?;
        let outboxes = store.outboxes()?;
        let (jobs, receiver) = mpsc::channel(STORE_QUEUE);
        let (held, store_released) = holding();
        std::thread::Builder::new()
            .name("entente-store".into())
            .spawn(move || {
                write_forever(&store, receiver);
                // The database's file lock goes before the signal does.
                drop(store);
                drop(held);
            })
            .map_err(|err| StoreError::Database(format!("cannot start the store thread: {err}")))?;
        let loaded = custody(Some(jobs));
        for (peer, held) in outboxes {
            let entries = held
                .into_iter()
                .map(|held| Entry {
                    seq: held.seq,
                    queued_us: held.queued_us,
                    frame: held.frame,
                })
                .collect();
            loaded
                .outboxes
                .insert(peer, Arc::new(Outbox::new(max_frames, max_bytes, entries)));
        }
        Ok(Loaded {
            custody: loaded,
            seen,
            seen_floors,
            announcements,
            durables,
            store_released: Some(store_released),
        })
    }

    /// Whether what is handed over must be stored before it is
    /// acknowledged.
    pub(super) fn durable(&self) -> bool {
        self.store.store.is_some()
    }

    /// Where changes go, for a task of its own.
    pub(super) fn handle(&self) -> CustodyHandle {
        self.store.clone()
    }

    /// See [`CustodyHandle::commit`].
    pub(super) async fn commit(&self, changes: Vec<Change>) -> Result<(), String> {
        self.store.commit(changes).await
    }

    /// See [`CustodyHandle::submit`].
    pub(super) async fn submit(&self, changes: Vec<Change>) -> Committed {
        self.store.submit(changes).await
    }

    /// As [`Custody::submit`], and waits for every group handed over
    /// before it even if `changes` is empty (with a store).
    pub(super) async fn submit_barrier(&self, changes: Vec<Change>) -> Committed {
        self.store.submit_job(changes).await
    }

    /// See [`CustodyHandle::write_later`].
    pub(super) fn write_later(&self, changes: Vec<Change>) {
        self.store.write_later(changes);
    }

    /// `peer`'s outbox, created empty the first time.
    pub(super) fn outbox(&self, peer: Nation) -> Arc<Outbox> {
        if let Some(outbox) = self.outboxes.get(&peer) {
            return outbox.clone();
        }
        self.outboxes
            .entry(peer)
            .or_insert_with(|| Arc::new(Outbox::new(self.max_frames, self.max_bytes, Vec::new())))
            .clone()
    }

    /// The envelopes the outboxes hold without the seals that follow them
    /// (a crash came between the two): each to be sealed again for the
    /// peer whose outbox holds it.
    pub(super) fn unsealed(&self) -> Vec<ToSeal> {
        let mut reseal = Vec::new();
        for entry in self.outboxes.iter() {
            let mut waiting: Vec<(MessageId, Hash)> = Vec::new();
            for frame in entry.value().frames() {
                // Frames this node encoded and stored: they decode.
                match frame.get(wire::LENGTH_PREFIX..).map(wire::decode) {
                    Some(Ok(Frame::Forward(envelope))) if !envelope.is_signed() => {
                        waiting.push((envelope.id, envelope.leaf()));
                    }
                    Some(Ok(Frame::Seals(batch))) => {
                        waiting.retain(|(id, _)| !batch.proofs.iter().any(|proof| proof.id == *id));
                    }
                    _ => {}
                }
            }
            reseal.extend(waiting.into_iter().map(|(id, leaf)| ToSeal {
                id,
                leaf,
                carried_by: vec![*entry.key()],
            }));
        }
        reseal
    }

    /// The peers that have an outbox.
    pub(super) fn peers(&self) -> Vec<Nation> {
        self.outboxes.iter().map(|entry| *entry.key()).collect()
    }

    /// Queues `frame` in `peer`'s outbox, and the change that stores it
    /// in `changes` (for the caller to [`Custody::commit`]).
    pub(super) fn hand_over(
        &self,
        peer: Nation,
        frame: Bytes,
        queued_us: u64,
        bounded: bool,
        changes: &mut Vec<Change>,
    ) -> Result<(), Full> {
        // The frame is shared with the store only when there is one.
        let stored = self.durable().then(|| frame.clone());
        let seq = self.outbox(peer).push(frame, queued_us, bounded)?;
        if let Some(frame) = stored {
            changes.push(Change::Append {
                peer,
                seq,
                queued_us,
                frame,
            });
        }
        Ok(())
    }
}

/// A group of changes handed to the store, to wait for.
pub(super) enum Committed {
    /// Nothing to wait for (no store, or no changes), or handing over failed.
    Now(Result<(), String>),
    /// The store thread answers once the group is on disk.
    Later(oneshot::Receiver<Result<(), String>>),
}

impl Committed {
    /// Waits until the changes are on disk.
    pub(super) async fn wait(self) -> Result<(), String> {
        match self {
            Committed::Now(result) => result,
            Committed::Later(committed) => committed
                .await
                .unwrap_or_else(|_| Err("the store thread has stopped".into())),
        }
    }
}

impl CustodyHandle {
    /// Writes `changes` and waits until they are on disk; at once without
    /// a store.
    pub(super) async fn commit(&self, changes: Vec<Change>) -> Result<(), String> {
        self.submit(changes).await.wait().await
    }

    /// Hands `changes` to the store thread (waiting only if it is far
    /// behind) and returns what to wait on for them to be on disk, so the
    /// caller can go on meanwhile.
    pub(super) async fn submit(&self, changes: Vec<Change>) -> Committed {
        if changes.is_empty() {
            return Committed::Now(Ok(()));
        }
        self.submit_job(changes).await
    }

    /// Hands `changes` (even none) to the store thread: done once they,
    /// and every group handed over before, are on disk.
    async fn submit_job(&self, changes: Vec<Change>) -> Committed {
        let Some(store) = &self.store else {
            return Committed::Now(Ok(()));
        };
        let (done, committed) = oneshot::channel();
        let job = Job {
            changes,
            done: Some(done),
        };
        if store.send(job).await.is_err() {
            return Committed::Now(Err("the store thread has stopped".into()));
        }
        Committed::Later(committed)
    }

    /// Writes `changes` with the next group, without waiting: for what
    /// costs only a resend if a crash loses it (forgetting acknowledged
    /// entries) or what is repaired at start (seals).
    pub(super) fn write_later(&self, changes: Vec<Change>) {
        let Some(store) = &self.store else { return };
        if changes.is_empty() {
            return;
        }
        if store.try_send(Job { changes, done: None }).is_err() {
            // Forgetting is cumulative and seals are remade at start, so a
            // change dropped here costs a resend after a crash, no more.
            // Said once in a while, not once a change.
            static DROPPED: AtomicU64 = AtomicU64::new(0);
            let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "the store is behind: changes that need no flush were not queued"
                );
            }
        }
    }
}

/// The envelopes among outbox frames (seals carry none), each with its
/// seal attached where the frames hold one (a `Seals` frame follows its
/// envelopes in an outbox), so a copy routed again needs no new seal.
pub(super) fn envelopes(frames: impl IntoIterator<Item = Bytes>) -> Vec<Envelope> {
    let mut envelopes: Vec<Envelope> = Vec::new();
    let mut unsealed: HashMap<MessageId, usize> = HashMap::new();
    for frame in frames {
        // Frames this node encoded itself: they decode.
        match frame.get(wire::LENGTH_PREFIX..).map(wire::decode) {
            Some(Ok(Frame::Forward(envelope))) => {
                if !envelope.is_signed() {
                    unsealed.insert(envelope.id, envelopes.len());
                }
                envelopes.push(envelope);
            }
            Some(Ok(Frame::Seals(batch))) => {
                for proof in batch.proofs {
                    if let Some(index) = unsealed.remove(&proof.id) {
                        envelopes[index].attach(&batch.signature, &batch.tags, proof);
                    }
                }
            }
            _ => {}
        }
    }
    envelopes
}

/// The store thread: takes every job waiting, commits them as one
/// transaction (durably if anyone waits), and answers each.
fn write_forever(store: &Store, mut jobs: mpsc::Receiver<Job>) {
    let mut group = Vec::new();
    while jobs.blocking_recv_many(&mut group, GROUP) > 0 {
        let durable = group.iter().any(|job: &Job| job.done.is_some());
        let changes: Vec<Change> = group
            .iter_mut()
            .flat_map(|job| std::mem::take(&mut job.changes))
            .collect();
        let result = store.commit(&changes, durable).map_err(|err| err.to_string());
        if let Err(err) = &result {
            error!(cause = %err, "the custody store failed a commit");
        }
        for job in group.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
    }
}
