//! The Raft log and vote, in the metadata store's own RocksDB (column families `raft_log` and
//! `raft_state`). Every append, truncation and vote is synced before it is reported: a server
//! that acknowledged an entry or a vote still has it after a power cut. The WAL sync is the
//! store's grouped one, so concurrent appends and the state machine share it.

use super::{io_err, TypeConfig};
use crate::namespace::Namespace;
use crate::store::{Batch, Cf};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, StorageError, StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub(super) fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding a raft record")
}

pub(super) fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v).map_err(|e| format!("corrupt raft record: {e}"))
}

#[derive(Clone)]
pub struct LogStore {
    ns: Arc<Namespace>,
}

impl LogStore {
    pub fn new(ns: Arc<Namespace>) -> Self {
        LogStore { ns }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, String> {
        match self.ns.store().get(Cf::RaftState, key).map_err(|e| e.to_string())? {
            Some(v) => dec(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Write `batch` and wait for the WAL sync, off the async threads.
    async fn write_synced(&self, batch: Batch) -> Result<(), String> {
        let ns = self.ns.clone();
        tokio::task::spawn_blocking(move || {
            let t = ns.store().apply(batch)?;
            ns.store().wait_durable(t)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Delete every entry with an index in `[from, to)`.
    fn delete_range(&self, b: &mut Batch, from: u64, to: u64) -> Result<(), String> {
        for (k, _) in self.ns.store().range(Cf::RaftLog, &index_key(from), &index_key(to)).map_err(|e| e.to_string())? {
            b.delete(Cf::RaftLog, k);
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(&mut self, range: RB) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self.ns.store().range(Cf::RaftLog, &index_key(from), &index_key(to)).map_err(|e| io_err(StorageIOError::read_logs, e))?;
        rows.iter().map(|(_, v)| dec(v).map_err(|e| io_err(StorageIOError::read_logs, e))).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let purged: Option<LogId<u64>> = self.get(KEY_PURGED).map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let last = match self.ns.store().last(Cf::RaftLog).map_err(|e| io_err(StorageIOError::read_logs, e))? {
            Some((_, v)) => Some(dec::<Entry<TypeConfig>>(&v).map_err(|e| io_err(StorageIOError::read_logs, e))?.log_id),
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut b = Batch::default();
        b.put(Cf::RaftState, KEY_VOTE.to_vec(), enc(vote));
        self.write_synced(b).await.map_err(|e| io_err(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.get(KEY_VOTE).map_err(|e| io_err(StorageIOError::read_vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        // Not synced: a lost commit index is learned again from the leader.
        let mut b = Batch::default();
        b.put(Cf::RaftState, KEY_COMMITTED.to_vec(), enc(&committed));
        self.ns.store().apply(b).map(|_| ()).map_err(|e| io_err(StorageIOError::write, e.to_string()))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.get::<Option<LogId<u64>>>(KEY_COMMITTED).map_err(|e| io_err(StorageIOError::read, e))?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut b = Batch::default();
        for e in entries {
            b.put(Cf::RaftLog, index_key(e.log_id.index).to_vec(), enc(&e));
        }
        let r = self.write_synced(b).await;
        callback.log_io_completed(r.clone().map_err(std::io::Error::other));
        r.map_err(|e| io_err(StorageIOError::write_logs, e))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut b = Batch::default();
        self.delete_range(&mut b, log_id.index, u64::MAX).map_err(|e| io_err(StorageIOError::write_logs, e))?;
        self.write_synced(b).await.map_err(|e| io_err(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut b = Batch::default();
        b.put(Cf::RaftState, KEY_PURGED.to_vec(), enc(&log_id));
        self.delete_range(&mut b, 0, log_id.index + 1).map_err(|e| io_err(StorageIOError::write_logs, e))?;
        self.write_synced(b).await.map_err(|e| io_err(StorageIOError::write_logs, e))
    }
}
