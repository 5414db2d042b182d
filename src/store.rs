//! The custody store: each peer's outbox (what this node must still hand
//! to that peer, in order, until it acknowledges custody) and the message
//! ids already seen (so resends after a restart are recognised), in an
//! embedded database (redb) at `<data dir>/store.redb`.
//!
//! Changes come in groups ([`Store::commit`], one transaction for what
//! many tasks handed over together), so `sync` durability costs one disk
//! flush per group, not per message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::envelope::MessageId;
use crate::label::Nation;

/// (peer, outbox sequence number) → when it was queued (8 bytes,
/// big-endian, microseconds since the epoch), then the encoded frame.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// (origin, the message's creation time in microseconds since the epoch,
/// the 16 id bytes) → nothing. Keyed by origin, then time, so an origin's
/// oldest ids go in one range, whether past the replay window or past the
/// bound ([`Store::open_bounded`]).
const SEEN: TableDefinition<(&str, u64, &[u8]), ()> = TableDefinition::new("seen_by_origin");
/// The layout before ids were bounded per origin: (time, origin and id).
/// Moved into [`SEEN`] when a store is opened.
const SEEN_BY_TIME: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("seen");
/// Origin → the newest creation time of an id forgotten to keep the bound:
/// anything from that origin not newer is refused as stale, so an id is
/// either remembered or refused, across restarts too.
const SEEN_FLOORS: TableDefinition<&str, u64> = TableDefinition::new("seen_floors");
/// Nation → its newest signed announcement, as an encoded frame: what a
/// restarted node knows of the others' links and interest before they
/// announce again (checked again, signature and all, when loaded).
const ANNOUNCEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("announcements");
/// (principal, durable subscription name) → the last sequence number its
/// subscriber acknowledged (8 bytes, big-endian), whether it keeps what
/// it takes (1) or only counts it (0), then its pattern's text.
const DURABLE_SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("durable_subscriptions");
/// (principal, durable subscription name, sequence number) → a message
/// waiting for that subscription (`node::durable` encodes it).
const DURABLE_HELD: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("durable_held");

/// How hard a node holds on to what it takes custody of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every group is on disk before anything in it is acknowledged: a
    /// crash loses nothing acknowledged.
    #[default]
    Sync,
    /// Nothing touches the disk: custody still spans link outages, but a
    /// crash loses what the node held (for benchmarks and like-for-like
    /// comparisons with brokers that keep nothing).
    Memory,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Sync => "sync",
            Durability::Memory => "memory",
        })
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sync" => Ok(Durability::Sync),
            "memory" => Ok(Durability::Memory),
            _ => Err(format!("`{text}` is not a durability: use sync or memory")),
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created or opened (another node
    /// process may hold it).
    #[error("cannot open the custody store {path}: {cause}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The database's error.
        cause: String,
    },
    /// A read or write failed.
    #[error("the custody store failed: {0}")]
    Database(String),
}

fn failed(err: impl std::fmt::Display) -> StoreError {
    StoreError::Database(err.to_string())
}

/// `?` for the database's errors inside a write.
trait OrFail<T> {
    fn or_fail(self) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self) -> Result<T, StoreError> {
        self.map_err(failed)
    }
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A frame joins `peer`'s outbox as entry `seq`.
    Append {
        /// Whose outbox.
        peer: Nation,
        /// Its place in the outbox's order.
        seq: u64,
        /// When it was queued, microseconds since the epoch.
        queued_us: u64,
        /// The encoded frame, length prefix included.
        frame: Bytes,
    },
    /// `peer`'s entries up to `through` are gone (acknowledged, expired).
    Forget {
        /// Whose outbox.
        peer: Nation,
        /// The last entry to forget.
        through: u64,
    },
    /// Everything held for `peer` is gone (a cut purged it).
    ForgetAll {
        /// Whose outbox.
        peer: Nation,
    },
    /// `nation`'s newest announcement, as an encoded `Announce` frame.
    Announcement {
        /// Whose.
        nation: Nation,
        /// The frame.
        frame: Bytes,
    },
    /// The ids created before this time are past the replay window.
    ForgetSeenBefore(u64),
    /// A durable subscription, created or acknowledged up to `acked_through`.
    DurableSubscription {
        /// Whose.
        principal: String,
        /// Its name.
        name: String,
        /// Its topic pattern.
        pattern: String,
        /// Whether it keeps what it takes, or only counts it.
        keeps: bool,
        /// The last sequence number its subscriber acknowledged.
        acked_through: u64,
    },
    /// A durable subscription, and everything held for it, is gone.
    DurableForget {
        /// Whose.
        principal: String,
        /// Its name.
        name: String,
    },
    /// A message waits for a durable subscription as its entry `seq`.
    DurableHold {
        /// Whose subscription.
        principal: String,
        /// Its name.
        name: String,
        /// The message's place in the subscription's order.
        seq: u64,
        /// The message, encoded.
        held: Bytes,
    },
    /// A durable subscription's entries up to `through` are gone
    /// (acknowledged, expired, dropped for room).
    DurableRelease {
        /// Whose subscription.
        principal: String,
        /// Its name.
        name: String,
        /// The last entry to forget.
        through: u64,
    },
    /// A message was taken: a copy that comes again is a duplicate.
    Seen {
        /// Its origin.
        origin: Nation,
        /// Its id.
        id: MessageId,
        /// When its origin created it, microseconds since the epoch.
        created_us: u64,
    },
}

/// One outbox entry, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its place in the peer's order.
    pub seq: u64,
    /// When it was queued, microseconds since the epoch.
    pub queued_us: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

/// A message id remembered as seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenId {
    /// Its origin.
    pub origin: Nation,
    /// Its id.
    pub id: MessageId,
    /// When its origin created it.
    pub created_us: u64,
}

/// A durable subscription, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDurable {
    /// Whose.
    pub principal: String,
    /// Its name.
    pub name: String,
    /// Its topic pattern.
    pub pattern: String,
    /// Whether it keeps what it takes, or only counts it.
    pub keeps: bool,
    /// The last sequence number its subscriber acknowledged.
    pub acked_through: u64,
    /// What waits for it, in order: each entry's sequence number and
    /// encoded message.
    pub held: Vec<(u64, Bytes)>,
}

/// A node's custody store.
pub struct Store {
    db: Database,
    /// Seen ids held per origin, as in the file.
    seen_counts: Mutex<BTreeMap<Nation, u64>>,
    seen_capacity: u64,
}

impl Store {
    /// Opens `<data_dir>/store.redb`, creating it, with the replay
    /// window's own bound on seen ids.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_bounded(data_dir, crate::routing::seen::DEFAULT_CAPACITY)
    }

    /// Opens `<data_dir>/store.redb`, holding at most `seen_capacity` seen
    /// ids. Past it, the origin holding the most forgets its oldest and its
    /// floor rises (as in the replay window, `routing::seen`): the file
    /// stays bounded whatever one member sends, and the flood costs only
    /// the flooder.
    pub fn open_bounded(data_dir: &Path, seen_capacity: usize) -> Result<Store, StoreError> {
        let path = data_dir.join("store.redb");
        let open_error = |cause: String| StoreError::Open {
            path: path.clone(),
            cause,
        };
        std::fs::create_dir_all(data_dir).map_err(|err| open_error(err.to_string()))?;
        let db = Database::create(&path).map_err(|err| open_error(err.to_string()))?;
        let store = Store {
            db,
            seen_counts: Mutex::default(),
            seen_capacity: u64::try_from(seen_capacity.max(1)).unwrap_or(u64::MAX),
        };
        store.move_seen_by_time()?;
        // Create the tables, so readers never meet a missing one.
        store.commit(&[], true)?;
        let mut counts = BTreeMap::new();
        {
            let txn = store.db.begin_read().map_err(failed)?;
            for entry in txn.open_table(SEEN).map_err(failed)?.iter().map_err(failed)? {
                let (key, _) = entry.map_err(failed)?;
                if let Some(origin) = Nation::parse(key.value().0) {
                    *counts.entry(origin).or_insert(0) += 1;
                }
            }
        }
        *store.seen_counts() = counts;
        Ok(store)
    }

    fn seen_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<Nation, u64>> {
        self.seen_counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the seen ids of the earlier layout (keyed by time) into
    /// [`SEEN`], once.
    fn move_seen_by_time(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        let old: Vec<(u64, Vec<u8>)> = match txn.open_table(SEEN_BY_TIME) {
            Ok(table) => table
                .iter()
                .map_err(failed)?
                .filter_map(Result::ok)
                .map(|(key, _)| (key.value().0, key.value().1.to_vec()))
                .collect(),
            Err(_) => Vec::new(),
        };
        {
            let mut seen = txn.open_table(SEEN).or_fail()?;
            for (created_us, key) in &old {
                if let Some((origin, id)) = key.split_first_chunk::<3>() {
                    if let Ok(origin) = std::str::from_utf8(origin) {
                        seen.insert((origin, *created_us, id), ()).or_fail()?;
                    }
                }
            }
        }
        txn.delete_table(SEEN_BY_TIME).or_fail()?;
        txn.commit().map_err(failed)
    }

    /// Applies `changes` in one transaction. `durable` waits for the disk
    /// (one flush); otherwise the changes become durable with the next
    /// durable commit, which suits forgetting (a forget lost in a crash
    /// costs a resend, and resends are harmless).
    pub fn commit(&self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        });
        {
            let mut outbox = txn.open_table(OUTBOX).or_fail()?;
            let mut seen = txn.open_table(SEEN).or_fail()?;
            let mut floors = txn.open_table(SEEN_FLOORS).or_fail()?;
            let mut counts = self.seen_counts();
            let mut announcements = txn.open_table(ANNOUNCEMENTS).or_fail()?;
            let mut durables = txn.open_table(DURABLE_SUBSCRIPTIONS).or_fail()?;
            let mut durable_held = txn.open_table(DURABLE_HELD).or_fail()?;
            let mut value = Vec::new();
            for change in changes {
                match change {
                    Change::Append {
                        peer,
                        seq,
                        queued_us,
                        frame,
                    } => {
                        value.clear();
                        value.extend_from_slice(&queued_us.to_be_bytes());
                        value.extend_from_slice(frame);
                        outbox.insert((peer.as_str(), *seq), value.as_slice()).or_fail()?;
                    }
                    Change::Forget { peer, through } => {
                        outbox
                            .retain_in((peer.as_str(), 0)..=(peer.as_str(), *through), |_, _| false)
                            .or_fail()?;
                    }
                    Change::ForgetAll { peer } => {
                        outbox
                            .retain_in((peer.as_str(), 0)..=(peer.as_str(), u64::MAX), |_, _| false)
                            .or_fail()?;
                    }
                    Change::Announcement { nation, frame } => {
                        announcements.insert(nation.as_str(), frame.as_ref()).or_fail()?;
                    }
                    Change::Seen {
                        origin,
                        id,
                        created_us,
                    } => {
                        let key = (origin.as_str(), *created_us, id.0.as_slice());
                        if seen.insert(key, ()).or_fail()?.is_none() {
                            *counts.entry(*origin).or_insert(0) += 1;
                        }
                    }
                    Change::DurableSubscription {
                        principal,
                        name,
                        pattern,
                        keeps,
                        acked_through,
                    } => {
                        value.clear();
                        value.extend_from_slice(&acked_through.to_be_bytes());
                        value.push(u8::from(*keeps));
                        value.extend_from_slice(pattern.as_bytes());
                        durables
                            .insert((principal.as_str(), name.as_str()), value.as_slice())
                            .or_fail()?;
                    }
                    Change::DurableHold {
                        principal,
                        name,
                        seq,
                        held,
                    } => {
                        durable_held
                            .insert((principal.as_str(), name.as_str(), *seq), held.as_ref())
                            .or_fail()?;
                    }
                    Change::DurableForget { principal, name } => {
                        let (principal, name) = (principal.as_str(), name.as_str());
                        durables.remove((principal, name)).or_fail()?;
                        durable_held
                            .retain_in((principal, name, 0)..=(principal, name, u64::MAX), |_, _| false)
                            .or_fail()?;
                    }
                    Change::DurableRelease {
                        principal,
                        name,
                        through,
                    } => {
                        let (principal, name) = (principal.as_str(), name.as_str());
                        durable_held
                            .retain_in((principal, name, 0)..=(principal, name, *through), |_, _| false)
                            .or_fail()?;
                    }
                    Change::ForgetSeenBefore(before_us) => {
                        for (origin, count) in counts.iter_mut() {
                            let range = (origin.as_str(), 0, &[][..])..(origin.as_str(), *before_us, &[][..]);
                            let mut gone = 0;
                            seen.retain_in(range, |_, _| {
                                gone += 1;
                                false
                            })
                            .or_fail()?;
                            *count -= gone.min(*count);
                        }
                    }
                }
            }
            keep_seen_bound(&mut seen, &mut floors, &mut counts, self.seen_capacity)?;
        }
        txn.commit().map_err(failed)
    }

    /// Each origin's floor: the newest creation time of its ids forgotten
    /// to keep the bound.
    pub fn seen_floors(&self) -> Result<BTreeMap<Nation, u64>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(SEEN_FLOORS).map_err(failed)?;
        let mut floors = BTreeMap::new();
        for entry in table.iter().map_err(failed)? {
            let (origin, floor) = entry.map_err(failed)?;
            if let Some(origin) = Nation::parse(origin.value()) {
                floors.insert(origin, floor.value());
            }
        }
        Ok(floors)
    }

    /// Every peer's outbox, each in order.
    pub fn outboxes(&self) -> Result<BTreeMap<Nation, Vec<Held>>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let outbox = txn.open_table(OUTBOX).map_err(failed)?;
        let mut all: BTreeMap<Nation, Vec<Held>> = BTreeMap::new();
        for entry in outbox.iter().map_err(failed)? {
            let (key, value) = entry.map_err(failed)?;
            let (peer, seq) = key.value();
            // Not something this code wrote: it cannot be sent.
            let Some(peer) = Nation::parse(peer) else { continue };
            all.entry(peer).or_default().push(decode(seq, value.value())?);
        }
        Ok(all)
    }

    /// Every nation's newest announcement, as stored (encoded frames).
    pub fn announcements(&self) -> Result<Vec<Bytes>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(ANNOUNCEMENTS).map_err(failed)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(failed)? {
            let (_, value) = entry.map_err(failed)?;
            all.push(Bytes::copy_from_slice(value.value()));
        }
        Ok(all)
    }

    /// Every durable subscription, with what waits for it.
    pub fn durables(&self) -> Result<Vec<StoredDurable>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let subscriptions = txn.open_table(DURABLE_SUBSCRIPTIONS).map_err(failed)?;
        let held = txn.open_table(DURABLE_HELD).map_err(failed)?;
        let mut all = Vec::new();
        for entry in subscriptions.iter().map_err(failed)? {
            let (key, value) = entry.map_err(failed)?;
            let (principal, name) = key.value();
            let value = value.value();
            // Not something this code wrote: nothing to resume.
            let Some((acked, rest)) = value.split_first_chunk::<8>() else {
                continue;
            };
            let Some((&keeps, pattern)) = rest.split_first() else {
                continue;
            };
            let Ok(pattern) = std::str::from_utf8(pattern) else {
                continue;
            };
            let mut durable = StoredDurable {
                principal: principal.to_owned(),
                name: name.to_owned(),
                pattern: pattern.to_owned(),
                keeps: keeps != 0,
                acked_through: u64::from_be_bytes(*acked),
                held: Vec::new(),
            };
            for entry in held
                .range((principal, name, 0)..=(principal, name, u64::MAX))
                .map_err(failed)?
            {
                let (key, value) = entry.map_err(failed)?;
                durable
                    .held
                    .push((key.value().2, Bytes::copy_from_slice(value.value())));
            }
            all.push(durable);
        }
        Ok(all)
    }

    /// Entries held for every peer together.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        txn.open_table(OUTBOX).map_err(failed)?.len().map_err(failed)
    }

    /// Whether nothing is held for anyone.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// The ids created after `since_us` (older ones are stale anyway, and
    /// forgotten here): what a restarted node's replay window starts from.
    pub fn seen(&self, since_us: u64) -> Result<Vec<SeenId>, StoreError> {
        self.commit(&[Change::ForgetSeenBefore(since_us.saturating_add(1))], true)?;
        let txn = self.db.begin_read().map_err(failed)?;
        let seen = txn.open_table(SEEN).map_err(failed)?;
        let mut kept = Vec::new();
        for entry in seen.iter().map_err(failed)? {
            let (key, _) = entry.map_err(failed)?;
            let (origin, created_us, id) = key.value();
            // Not something this code wrote: nothing to remember.
            if let (Some(origin), Ok(id)) = (Nation::parse(origin), <[u8; 16]>::try_from(id)) {
                kept.push(SeenId {
                    origin,
                    id: MessageId(id),
                    created_us,
                });
            }
        }
        Ok(kept)
    }
}

/// Past `capacity` seen ids, the origin holding the most forgets its
/// oldest, and its floor rises to the newest of them.
fn keep_seen_bound(
    seen: &mut redb::Table<(&str, u64, &[u8]), ()>,
    floors: &mut redb::Table<&str, u64>,
    counts: &mut BTreeMap<Nation, u64>,
    capacity: u64,
) -> Result<(), StoreError> {
    loop {
        let total: u64 = counts.values().sum();
        let Some((&fullest, &held)) = counts.iter().max_by_key(|(_, &count)| count) else {
            return Ok(());
        };
        if total <= capacity || held == 0 {
            return Ok(());
        }
        // At most what the next origin would keep, so the fullest gives
        // way only until it is level with it.
        let next = counts
            .iter()
            .filter(|(&origin, _)| origin != fullest)
            .map(|(_, &count)| count)
            .max()
            .unwrap_or(0);
        let excess = (total - capacity).min(held - next.min(held - 1)).max(1);
        let origin = fullest.as_str();
        let mut oldest = Vec::new();
        for entry in seen
            .range((origin, 0, &[][..])..=(origin, u64::MAX, &[0xff; 16][..]))
            .or_fail()?
            .take(usize::try_from(excess).unwrap_or(usize::MAX))
        {
            let (key, _) = entry.or_fail()?;
            let (_, created_us, id) = key.value();
            oldest.push((created_us, id.to_vec()));
        }
        let Some(&(floor_us, _)) = oldest.last() else {
            counts.insert(fullest, 0);
            continue;
        };
        for (created_us, id) in &oldest {
            seen.remove((origin, *created_us, id.as_slice())).or_fail()?;
        }
        let floor_us = floor_us.max(floors.get(origin).or_fail()?.map_or(0, |f| f.value()));
        floors.insert(origin, floor_us).or_fail()?;
        counts.insert(fullest, held - oldest.len() as u64);
    }
}

fn decode(seq: u64, value: &[u8]) -> Result<Held, StoreError> {
    let (queued, frame) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Database(format!("outbox entry {seq} is shorter than its header")))?;
    Ok(Held {
        seq,
        queued_us: u64::from_be_bytes(*queued),
        frame: Bytes::copy_from_slice(frame),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn append(peer: &str, seq: u64, frame: &'static [u8]) -> Change {
        Change::Append {
            peer: nation(peer),
            seq,
            queued_us: seq * 10,
            frame: Bytes::from_static(frame),
        }
    }

    fn frames(store: &Store, peer: &str) -> Vec<(u64, Bytes)> {
        store
            .outboxes()
            .unwrap()
            .remove(&nation(peer))
            .unwrap_or_default()
            .into_iter()
            .map(|held| (held.seq, held.frame))
            .collect()
    }

    #[test]
    fn an_outbox_keeps_order_per_peer_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .commit(
                &[
                    append("FRA", 1, b"a"),
                    append("FRA", 2, b"b"),
                    append("USA", 1, b"x"),
                ],
                true,
            )
            .unwrap();
        store.commit(&[append("FRA", 3, b"c")], true).unwrap();
        assert_eq!(
            frames(&store, "FRA"),
            vec![
                (1, Bytes::from_static(b"a")),
                (2, Bytes::from_static(b"b")),
                (3, Bytes::from_static(b"c"))
            ]
        );
        store
            .commit(
                &[Change::Forget {
                    peer: nation("FRA"),
                    through: 2,
                }],
                false,
            )
            .unwrap();
        assert_eq!(frames(&store, "FRA"), vec![(3, Bytes::from_static(b"c"))]);
        assert_eq!(
            frames(&store, "USA").len(),
            1,
            "another peer's outbox is untouched"
        );
        assert_eq!(store.outboxes().unwrap()[&nation("FRA")][0].queued_us, 30);
        store
            .commit(&[Change::ForgetAll { peer: nation("USA") }], true)
            .unwrap();
        assert!(frames(&store, "USA").is_empty());
        assert_eq!(store.len().unwrap(), 1);
        assert!(!store.is_empty().unwrap());
    }

    #[test]
    fn what_was_committed_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = MessageId([7u8; 16]);
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .commit(
                    &[
                        append("FRA", 5, b"kept"),
                        Change::Seen {
                            origin: nation("GBR"),
                            id,
                            created_us: 1_000,
                        },
                        Change::Announcement {
                            nation: nation("DEU"),
                            frame: Bytes::from_static(b"old"),
                        },
                        Change::Announcement {
                            nation: nation("DEU"),
                            frame: Bytes::from_static(b"newest"),
                        },
                    ],
                    true,
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(frames(&store, "FRA"), vec![(5, Bytes::from_static(b"kept"))]);
        assert_eq!(
            store.announcements().unwrap(),
            vec![Bytes::from_static(b"newest")]
        );
        assert_eq!(
            store.seen(999).unwrap(),
            vec![SeenId {
                origin: nation("GBR"),
                id,
                created_us: 1_000
            }]
        );
    }

    #[test]
    fn seen_ids_older_than_the_window_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seen = |byte: u8, created_us| Change::Seen {
            origin: nation("FRA"),
            id: MessageId([byte; 16]),
            created_us,
        };
        store
            .commit(&[seen(1, 100), seen(2, 200), seen(3, 300)], true)
            .unwrap();
        let kept: Vec<MessageId> = store.seen(150).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(kept, vec![MessageId([2; 16]), MessageId([3; 16])]);
        assert_eq!(
            store.seen(0).unwrap().len(),
            2,
            "the old id is gone from the file"
        );
        store.commit(&[Change::ForgetSeenBefore(300)], false).unwrap();
        assert_eq!(
            store.seen(0).unwrap().len(),
            1,
            "a running node forgets in one range"
        );
    }

    /// One member sending fresh ids without end: the file holds at most
    /// the bound, the flooder forgets its own oldest (its floor, kept
    /// across a reopen, rises with them), and another origin keeps all.
    #[test]
    fn seen_ids_are_bounded_and_a_flood_forgets_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let seen = |origin: &str, n: u32| Change::Seen {
            origin: nation(origin),
            id: MessageId(
                [n.to_be_bytes(), [0; 4], [0; 4], [0; 4]]
                    .concat()
                    .try_into()
                    .unwrap(),
            ),
            created_us: 1_000 + u64::from(n),
        };
        {
            let store = Store::open_bounded(dir.path(), 100).unwrap();
            store
                .commit(&(0..10).map(|n| seen("GBR", n)).collect::<Vec<_>>(), true)
                .unwrap();
            for batch in 0..50 {
                let flood: Vec<Change> = (0..64).map(|n| seen("USA", batch * 64 + n)).collect();
                store.commit(&flood, false).unwrap();
            }
            store.commit(&[], true).unwrap();
        }
        let store = Store::open_bounded(dir.path(), 100).unwrap();
        let ids = store.seen(0).unwrap();
        assert_eq!(ids.len(), 100);
        let gbr = ids.iter().filter(|id| id.origin == nation("GBR")).count();
        assert_eq!(gbr, 10, "the honest origin keeps every id");
        // USA's newest 90 are kept; its floor is the newest it forgot.
        let oldest_usa = ids
            .iter()
            .filter(|id| id.origin == nation("USA"))
            .map(|id| id.created_us)
            .min()
            .unwrap();
        assert_eq!(oldest_usa, 1_000 + 50 * 64 - 90);
        assert_eq!(
            store.seen_floors().unwrap(),
            BTreeMap::from([(nation("USA"), oldest_usa - 1)])
        );
    }

    #[test]
    fn seen_ids_of_the_earlier_layout_are_moved_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("store.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = txn.open_table(SEEN_BY_TIME).unwrap();
                let mut key = b"FRA".to_vec();
                key.extend_from_slice(&[4; 16]);
                old.insert((500, key.as_slice()), ()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.seen(0).unwrap(),
            vec![SeenId {
                origin: nation("FRA"),
                id: MessageId([4; 16]),
                created_us: 500
            }]
        );
    }

    #[test]
    fn durable_subscriptions_keep_their_entries_per_name_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hold = |principal: &str, name: &str, seq: u64| Change::DurableHold {
            principal: principal.into(),
            name: name.into(),
            seq,
            held: Bytes::from(format!("{principal}/{name}/{seq}")),
        };
        let subscription = |principal: &str, name: &str, acked_through| Change::DurableSubscription {
            principal: principal.into(),
            name: name.into(),
            pattern: "sigint.>".into(),
            keeps: true,
            acked_through,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let mut changes = vec![subscription("fra.a", "w", 0), subscription("fra.a", "x", 0)];
            changes.extend((1..=4).map(|seq| hold("fra.a", "w", seq)));
            changes.push(hold("fra.a", "x", 1));
            store.commit(&changes, true).unwrap();
            let release = Change::DurableRelease {
                principal: "fra.a".into(),
                name: "w".into(),
                through: 2,
            };
            store
                .commit(&[release, subscription("fra.a", "w", 2)], true)
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let durables = store.durables().unwrap();
        assert_eq!(durables.len(), 2);
        let w = &durables[0];
        assert_eq!(
            (w.name.as_str(), w.pattern.as_str(), w.acked_through),
            ("w", "sigint.>", 2)
        );
        let held: Vec<(u64, &[u8])> = w.held.iter().map(|(seq, b)| (*seq, b.as_ref())).collect();
        assert_eq!(held, [(3, &b"fra.a/w/3"[..]), (4, &b"fra.a/w/4"[..])]);
        // Releasing one subscription's entries leaves the other's.
        assert_eq!(durables[1].held.len(), 1);
        let forget = Change::DurableForget {
            principal: "fra.a".into(),
            name: "w".into(),
        };
        store.commit(&[forget], true).unwrap();
        let left: Vec<String> = store.durables().unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(left, ["x"]);
    }

    #[test]
    fn a_store_held_by_another_process_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path());
        let err = second.err().expect("redb refuses a second open").to_string();
        assert!(err.contains("store.redb"), "{err}");
    }

    #[test]
    fn durability_reads_from_config_text() {
        assert_eq!("sync".parse::<Durability>(), Ok(Durability::Sync));
        assert_eq!("memory".parse::<Durability>(), Ok(Durability::Memory));
        assert_eq!(Durability::Memory.to_string(), "memory");
        assert!("fast"
            .parse::<Durability>()
            .unwrap_err()
            .contains("sync or memory"));
    }
}
