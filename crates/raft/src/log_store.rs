//! The Raft log and vote, in their own RocksDB database.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// The Raft log: entries keyed by index (big-endian), the vote, the
/// committed and last purged log IDs.
///
/// # Guarantees
/// `append` reports entries flushed, and `save_vote` returns, only after the
/// write-ahead log is synced to disk: an acknowledged entry or vote survives
/// a crash.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl LogStore {
    /// Opens (or creates) the log database in `path`.
    pub fn open(path: &Path) -> Result<LogStore, String> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        let cfs = [CF_LOG, CF_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") {
                format!(
                    "{}: the Raft log is locked, probably by another running member ({msg})",
                    path.display()
                )
            } else {
                format!("{}: cannot open the Raft log: {msg}", path.display())
            }
        })?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_cf(self.cf(CF_META), key).map_err(read_err)? {
            None => Ok(None),
            Some(b) => Ok(Some(bincode::deserialize(&b).map_err(read_err)?)),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value).map_err(write_err)?;
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_META), key, bytes);
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db.write_opt(wb, &opts).map_err(write_err)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self
            .db
            .iterator_cf(self.cf(CF_LOG), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                Ok(Some(bincode::deserialize(&v).map_err(read_err)?))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let from = start.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, v) = item.map_err(read_err)?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::fmt::Error))?,
            );
            if !range.contains(&idx) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let this = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || this.put_meta(KEY_VOTE, &vote, true))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a lost committed index is learned again from the leader.
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut wb = WriteBatch::default();
        for e in entries {
            let bytes = bincode::serialize(&e).map_err(write_err)?;
            wb.put_cf(self.cf(CF_LOG), e.log_id.index.to_be_bytes(), bytes);
        }
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || db.write_opt(wb, &synced()))
            .await
            .map_err(write_err)?;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.clone().into_string());
                callback.log_io_completed(Err(io));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes log_id.index and everything after it.
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_LOG),
            log_id.index.to_be_bytes(),
            u64::MAX.to_be_bytes(),
        );
        wb.delete_cf(self.cf(CF_LOG), u64::MAX.to_be_bytes());
        self.db.write_opt(wb, &synced()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: entries missing below it are expected.
        self.put_meta(KEY_PURGED, &log_id, true)?;
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_LOG),
            0u64.to_be_bytes(),
            (log_id.index + 1).to_be_bytes(),
        );
        self.db
            .write_opt(wb, &WriteOptions::default())
            .map_err(write_err)
    }
}
