//! The Raft state machine: the MVCC engine, with the applied log position
//! and membership stored atomically with the data; snapshots as files.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_mvcc::Store;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Engine meta record: the last applied log ID (bincode).
pub const META_APPLIED_LOG: &[u8] = b"raft_applied_log_id";
/// Engine meta record: the last applied membership (bincode).
pub const META_MEMBERSHIP: &[u8] = b"raft_membership";

/// The state machine over the engine.
///
/// # Guarantees
/// The applied log ID and membership are written in the same synced batch
/// as the entries' changes, so after a restart the engine is exactly at its
/// recorded position: nothing is lost or applied twice.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    snap_dir: PathBuf,
    applied: Arc<watch::Sender<u64>>,
}

/// Which snapshot file is current, and its metadata.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    file: String,
    meta: SnapshotMeta,
}

fn sm_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn sm_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshot files in `snap_dir`.
    pub fn new(store: Store, snap_dir: PathBuf) -> Result<StateMachine, String> {
        std::fs::create_dir_all(&snap_dir).map_err(|e| format!("{}: {e}", snap_dir.display()))?;
        let sm = StateMachine {
            store,
            snap_dir,
            applied: Arc::new(watch::channel(0).0),
        };
        let applied = sm.read_applied().map_err(|e| e.to_string())?;
        sm.applied
            .send_replace(applied.map(|l| l.index).unwrap_or(0));
        Ok(sm)
    }

    /// Follows the index of the last applied log entry.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The engine.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn read_applied(&self) -> Result<Option<LogId>, StorageError> {
        match self.store.meta(META_APPLIED_LOG).map_err(sm_read)? {
            None => Ok(None),
            Some(b) => bincode::deserialize(&b).map_err(sm_read),
        }
    }

    fn read_membership(&self) -> Result<StoredMembership, StorageError> {
        match self.store.meta(META_MEMBERSHIP).map_err(sm_read)? {
            None => Ok(StoredMembership::default()),
            Some(b) => bincode::deserialize(&b).map_err(sm_read),
        }
    }

    fn current_file(&self) -> PathBuf {
        self.snap_dir.join("current.json")
    }

    fn read_current(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        match std::fs::read(self.current_file()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(sm_read)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_read(e)),
        }
    }

    /// Makes `file` (in the snapshot directory) the current snapshot and
    /// removes older snapshot files.
    fn set_current(&self, file: &str, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let cur = CurrentSnapshot {
            file: file.to_string(),
            meta: meta.clone(),
        };
        let bytes = serde_json::to_vec(&cur).map_err(snap_err)?;
        let tmp = self.snap_dir.join("current.json.tmp");
        std::fs::write(&tmp, bytes).map_err(snap_err)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(snap_err)?;
        std::fs::rename(&tmp, self.current_file()).map_err(snap_err)?;
        std::fs::File::open(&self.snap_dir)
            .and_then(|f| f.sync_all())
            .map_err(snap_err)?;
        if let Ok(entries) = std::fs::read_dir(&self.snap_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".snap") && name != file {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

/// The engine's command index for the `i`th command of log entry `log_index`:
/// strictly increasing in log order, as the engine requires.
pub(crate) fn engine_index(log_index: u64, i: usize) -> u64 {
    (log_index << 16) | i as u64
}

/// Most commands one log entry may carry.
pub(crate) const MAX_COMMANDS_PER_ENTRY: usize = 1 << 16;

fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos}.snap")
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let name = unique_name("built");
        let path = self.snap_dir.join(&name);
        let store = self.store.clone();
        let p = path.clone();
        let values =
            tokio::task::spawn_blocking(move || -> Result<Vec<Option<Vec<u8>>>, String> {
                let f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
                let mut w = BufWriter::new(f);
                let v = store
                    .write_snapshot(&mut w, &[META_APPLIED_LOG, META_MEMBERSHIP])
                    .map_err(|e| e.to_string())?;
                let f = w.into_inner().map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
                Ok(v)
            })
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        let last_log_id: Option<LogId> = match &values[0] {
            None => None,
            Some(b) => bincode::deserialize(b).map_err(snap_err)?,
        };
        let last_membership: StoredMembership = match &values[1] {
            None => StoredMembership::default(),
            Some(b) => bincode::deserialize(b).map_err(snap_err)?,
        };
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, name),
            None => format!("empty-{name}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.set_current(&name, &meta)?;
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.read_applied()?, self.read_membership()?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut commands = Vec::new();
        // How many commands each entry carries (0 for blank and membership).
        let mut counts = Vec::new();
        let mut last = None;
        let mut membership = None;
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => counts.push(0),
                EntryPayload::Normal(req) => {
                    counts.push(req.commands.len());
                    for (i, c) in req.commands.into_iter().enumerate() {
                        commands.push((engine_index(e.log_id.index, i), c));
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m));
                    counts.push(0);
                }
            }
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let applied = bincode::serialize(&Some(last)).map_err(sm_write)?;
        let membership = membership
            .map(|m| bincode::serialize(&m))
            .transpose()
            .map_err(sm_write)?;
        let store = self.store.clone();
        let mut results = tokio::task::spawn_blocking(move || {
            let mut meta: Vec<(&[u8], &[u8])> = vec![(META_APPLIED_LOG, &applied)];
            if let Some(m) = &membership {
                meta.push((META_MEMBERSHIP, m));
            }
            store.apply_with_meta(&commands, &meta)
        })
        .await
        .map_err(sm_write)?
        .map_err(sm_write)?
        .into_iter();
        let out = counts
            .into_iter()
            .map(|n| Response {
                results: results.by_ref().take(n).collect(),
            })
            .collect();
        self.applied.send_replace(last.index);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snap_dir.join(unique_name("incoming"));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let mut snapshot = *snapshot;
        snapshot.flush().await.map_err(snap_err)?;
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snap_err)?;
        let file = snapshot.into_std().await;
        let name = unique_name("installed");
        let keep = self.snap_dir.join(&name);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            file.sync_all().map_err(|e| e.to_string())?;
            let mut copy = file.try_clone().map_err(|e| e.to_string())?;
            store
                .install_snapshot(&mut BufReader::new(&file))
                .map_err(|e| e.to_string())?;
            // Keep the received image as the current snapshot.
            use std::io::{Seek, SeekFrom};
            copy.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&keep).map_err(|e| e.to_string())?;
            std::io::copy(&mut copy, &mut out).map_err(|e| e.to_string())?;
            out.sync_all().map_err(|e| e.to_string())
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        let applied = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.set_current(&name, meta)?;
        self.applied.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(cur) = self.read_current()? else {
            return Ok(None);
        };
        match tokio::fs::File::open(self.snap_dir.join(&cur.file)).await {
            Ok(f) => Ok(Some(Snapshot {
                meta: cur.meta,
                snapshot: Box::new(f),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_read(e)),
        }
    }
}
