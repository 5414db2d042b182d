//! The custody store: each peer's outbox (what this node must still hand
//! to that peer, in order, until it acknowledges custody) and the message
//! ids already seen (so resends after a restart are recognised), in an
//! embedded database (redb) at `<data dir>/store.redb`.
//!
//! Writes come in groups (one transaction per batch), so `sync`
//! durability costs one disk flush per batch, not per message.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::label::Nation;

/// (peer, sequence number) → created time (8 bytes, big-endian), then the
/// encoded envelope.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// Peer → the next sequence number to give.
const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");
/// Message id → until when it counts as seen (microseconds since the epoch).
const SEEN: TableDefinition<&[u8], u64> = TableDefinition::new("seen");

/// How hard the store holds on to what it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every batch is on disk before it is acknowledged: a crash loses
    /// nothing acknowledged.
    #[default]
    Sync,
    /// Nothing touches the disk: as fast as memory, and a crash loses
    /// everything held (for benchmarks and like-for-like comparisons).
    Memory,
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

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its place in the peer's order.
    pub seq: u64,
    /// When it was stored, microseconds since the epoch.
    pub created_us: u64,
    /// The encoded envelope.
    pub bytes: Vec<u8>,
}

/// A node's custody store.
pub struct Store {
    db: Database,
    durability: Durability,
}

impl Store {
    /// Opens `<data_dir>/store.redb` (creating it), or an in-memory store
    /// for `Durability::Memory`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        let path = data_dir.join("store.redb");
        let open_error = |cause: String| StoreError::Open {
            path: path.clone(),
            cause,
        };
        let db = match durability {
            Durability::Sync => {
                std::fs::create_dir_all(data_dir).map_err(|err| open_error(err.to_string()))?;
                Database::create(&path)
            }
            Durability::Memory => {
                Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
            }
        }
        .map_err(|err| open_error(err.to_string()))?;
        let store = Store { db, durability };
        // Create the tables, so readers never meet a missing one.
        store.write(|txn| {
            txn.open_table(OUTBOX).or_fail()?;
            txn.open_table(NEXT_SEQ).or_fail()?;
            txn.open_table(SEEN).or_fail()?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `change` in one write transaction and commits it, durably for
    /// `Sync`.
    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(match self.durability {
            Durability::Sync => redb::Durability::Immediate,
            Durability::Memory => redb::Durability::None,
        });
        let out = change(&txn)?;
        txn.commit().map_err(failed)?;
        Ok(out)
    }

    /// Appends a batch to `peer`'s outbox in one commit; returns each
    /// entry's sequence number, in order.
    pub fn append(&self, peer: Nation, created_us: u64, batch: &[&[u8]]) -> Result<Vec<u64>, StoreError> {
        self.write(|txn| {
            let mut next = txn.open_table(NEXT_SEQ).or_fail()?;
            let first = next.get(peer.as_str()).or_fail()?.map_or(1, |v| v.value());
            let mut outbox = txn.open_table(OUTBOX).or_fail()?;
            let mut seqs = Vec::with_capacity(batch.len());
            let mut value = Vec::new();
            for (offset, bytes) in batch.iter().enumerate() {
                let seq = first + offset as u64;
                value.clear();
                value.extend_from_slice(&created_us.to_be_bytes());
                value.extend_from_slice(bytes);
                outbox.insert((peer.as_str(), seq), value.as_slice()).or_fail()?;
                seqs.push(seq);
            }
            next.insert(peer.as_str(), first + batch.len() as u64).or_fail()?;
            Ok(seqs)
        })
    }

    /// `peer` has custody of everything up to `upto`: forget it. Returns
    /// how many entries went.
    pub fn acknowledge(&self, peer: Nation, upto: u64) -> Result<u64, StoreError> {
        self.write(|txn| {
            let mut outbox = txn.open_table(OUTBOX).or_fail()?;
            let mut removed = 0;
            outbox
                .retain_in((peer.as_str(), 0)..=(peer.as_str(), upto), |_, _| {
                    removed += 1;
                    false
                })
                .or_fail()?;
            Ok(removed)
        })
    }

    /// What `peer` has not acknowledged, in order.
    pub fn pending(&self, peer: Nation) -> Result<Vec<Held>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let outbox = txn.open_table(OUTBOX).map_err(failed)?;
        let mut held = Vec::new();
        for entry in outbox
            .range((peer.as_str(), 0)..=(peer.as_str(), u64::MAX))
            .map_err(failed)?
        {
            let (key, value) = entry.map_err(failed)?;
            held.push(decode(key.value().1, value.value())?);
        }
        Ok(held)
    }

    /// Removes and returns every entry, of any peer, that `drop` picks
    /// (one stored before the age limit, one for a nation cut out), so
    /// each can be audited.
    pub fn remove_where(
        &self,
        mut drop: impl FnMut(Nation, &Held) -> bool,
    ) -> Result<Vec<(Nation, Held)>, StoreError> {
        self.write(|txn| {
            let mut outbox = txn.open_table(OUTBOX).or_fail()?;
            let mut removed = Vec::new();
            outbox
                .retain(|(peer, seq), value| {
                    let (Some(nation), Ok(held)) = (Nation::parse(peer), decode(seq, value)) else {
                        // Not something this code wrote: it cannot be sent.
                        return false;
                    };
                    if drop(nation, &held) {
                        removed.push((nation, held));
                        false
                    } else {
                        true
                    }
                })
                .or_fail()?;
            Ok(removed)
        })
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

    /// Remembers message ids as seen until `until_us`, in one commit.
    pub fn remember_seen(&self, ids: &[[u8; 16]], until_us: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut seen = txn.open_table(SEEN).or_fail()?;
            for id in ids {
                seen.insert(id.as_slice(), until_us).or_fail()?;
            }
            Ok(())
        })
    }

    /// The ids still counting as seen at `now_us`, after forgetting the
    /// rest: what a restarted node's replay window starts from.
    pub fn seen(&self, now_us: u64) -> Result<Vec<([u8; 16], u64)>, StoreError> {
        self.write(|txn| {
            let mut seen = txn.open_table(SEEN).or_fail()?;
            let mut kept = Vec::new();
            seen.retain(|id, until| {
                let Ok(id) = <[u8; 16]>::try_from(id) else {
                    return false;
                };
                if until > now_us {
                    kept.push((id, until));
                    true
                } else {
                    false
                }
            })
            .or_fail()?;
            Ok(kept)
        })
    }
}

fn decode(seq: u64, value: &[u8]) -> Result<Held, StoreError> {
    let (created, bytes) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Database(format!("outbox entry {seq} is shorter than its header")))?;
    Ok(Held {
        seq,
        created_us: u64::from_be_bytes(*created),
        bytes: bytes.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    #[test]
    fn an_outbox_keeps_order_per_peer_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        let (fra, usa) = (nation("FRA"), nation("USA"));
        assert_eq!(store.append(fra, 10, &[b"a", b"b"]).unwrap(), vec![1, 2]);
        assert_eq!(store.append(usa, 11, &[b"x"]).unwrap(), vec![1]);
        assert_eq!(store.append(fra, 12, &[b"c"]).unwrap(), vec![3]);
        let held: Vec<Vec<u8>> = store.pending(fra).unwrap().into_iter().map(|h| h.bytes).collect();
        assert_eq!(held, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(store.acknowledge(fra, 2).unwrap(), 2);
        let left = store.pending(fra).unwrap();
        assert_eq!((left.len(), left[0].seq, left[0].created_us), (1, 3, 12));
        assert_eq!(
            store.pending(usa).unwrap().len(),
            1,
            "another peer's outbox is untouched"
        );
        // An acknowledgement of what is gone already changes nothing.
        assert_eq!(store.acknowledge(fra, 2).unwrap(), 0);
        // Sequence numbers never go back, even once the outbox is empty.
        store.acknowledge(fra, 3).unwrap();
        assert_eq!(store.append(fra, 13, &[b"d"]).unwrap(), vec![4]);
    }

    #[test]
    fn a_synced_store_survives_a_restart_and_a_memory_one_does_not_touch_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let id = [7u8; 16];
        {
            let store = Store::open(dir.path(), Durability::Sync).unwrap();
            store.append(nation("FRA"), 5, &[b"kept"]).unwrap();
            store.remember_seen(&[id], 1_000).unwrap();
        }
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        assert_eq!(store.pending(nation("FRA")).unwrap()[0].bytes, b"kept");
        assert_eq!(store.seen(999).unwrap(), vec![(id, 1_000)]);
        assert_eq!(store.append(nation("FRA"), 6, &[b"next"]).unwrap(), vec![2]);

        let elsewhere = tempfile::tempdir().unwrap();
        let memory = Store::open(elsewhere.path(), Durability::Memory).unwrap();
        memory.append(nation("FRA"), 5, &[b"gone"]).unwrap();
        assert_eq!(memory.len().unwrap(), 1);
        assert!(!elsewhere.path().join("store.redb").exists());
    }

    #[test]
    fn seen_ids_expire_and_entries_can_be_removed_for_auditing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        store.remember_seen(&[[1; 16]], 100).unwrap();
        store.remember_seen(&[[2; 16]], 200).unwrap();
        assert_eq!(store.seen(150).unwrap(), vec![([2; 16], 200)]);
        assert_eq!(store.seen(150).unwrap().len(), 1, "the expired id is forgotten");

        store.append(nation("USA"), 10, &[b"old", b"old2"]).unwrap();
        store.append(nation("FRA"), 50, &[b"new"]).unwrap();
        let removed = store
            .remove_where(|peer, held| peer == nation("USA") || held.created_us < 20)
            .unwrap();
        assert_eq!(removed.len(), 2);
        assert!(removed.iter().all(|(peer, _)| *peer == nation("USA")));
        assert_eq!(store.len().unwrap(), 1);
        assert!(!store.is_empty().unwrap());
    }

    #[test]
    fn a_store_held_by_another_process_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), Durability::Sync).unwrap();
        let second = Store::open(dir.path(), Durability::Sync);
        let err = second.err().expect("redb refuses a second open").to_string();
        assert!(err.contains("store.redb"), "{err}");
    }

    #[test]
    fn durability_reads_from_config_text() {
        assert_eq!("sync".parse::<Durability>(), Ok(Durability::Sync));
        assert_eq!("memory".parse::<Durability>(), Ok(Durability::Memory));
        assert!("fast"
            .parse::<Durability>()
            .unwrap_err()
            .contains("sync or memory"));
    }
}
