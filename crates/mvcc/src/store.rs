//! The store: opening and restoring the database, and the read path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use ballast_proto::etcdserverpb::{RangeRequest, RangeResponse};
use ballast_proto::mvccpb::KeyValue;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::alarm::AlarmTable;
use crate::compactor::{Compactor, CompactorGuard};
use crate::error::{Error, Result};
use crate::index::TreeIndex;
use crate::range;
use crate::revision::Revision;
use crate::schema::*;
use crate::watch::hub::HubShared;

/// How to open a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sync the write-ahead log before [`Store::apply`] returns (on by
    /// default). A replicated member turns it off: its Raft log is synced
    /// before anything is acknowledged and replays what a crash loses;
    /// [`Store::write_snapshot`] syncs everything its image covers, so the
    /// log may be purged behind it.
    pub sync_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { sync_writes: true }
    }
}

/// A multi-version key-value store with etcd v3 semantics, on RocksDB.
///
/// Cloning gives another handle to the same store.
///
/// # Guarantees
/// - Commands change the store only through [`Store::apply`], in log order;
///   the same commands give the same revisions and data on every member.
/// - A write transaction (a put, a delete, a txn) is one main revision; a
///   command that changes nothing takes no revision.
/// - When `apply` returns, its changes and the applied index are durable
///   together (one synced write batch), and visible to readers.
/// - Reads see a consistent snapshot at one revision; a read at any revision
///   between the compaction point and the current revision is answered.
#[derive(Clone)]
pub struct Store {
    // Declared first so it is dropped first: it joins the background
    // threads, after which `inner` is released and the database closed.
    _shutdown: Arc<Shutdown>,
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: DB,
    pub path: PathBuf,
    /// The key index and compaction point. Lock order: `writer`, then `index`.
    pub index: RwLock<IndexState>,
    /// The newest revision whose changes are durable and readable.
    pub committed_rev: AtomicI64,
    /// Serializes writers; holds the writer's view of the log.
    pub writer: Mutex<WriterState>,
    /// Set when a write to disk failed: memory may be ahead of disk.
    pub poisoned: AtomicBool,
    pub compactor: Arc<Compactor>,
    /// The watch hub, created on first use ([`Store::watch_hub`]).
    pub watch: OnceLock<Arc<HubShared>>,
    pub write_opts: WriteOptions,
    /// The alarms as of `committed_rev` (the writer's own copy may be ahead).
    pub alarms: RwLock<AlarmTable>,
    /// The lease table, changed by the writer as it applies (see `lease.rs`).
    pub leases: Mutex<crate::lease::LeaseTable>,
}

/// Stops the store's background threads when its last handle goes: the
/// watch syncer, then (when the guard's fields drop) the compactor.
struct Shutdown {
    inner: Weak<Inner>,
    _compactor: CompactorGuard,
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            if let Some(hub) = inner.watch.get() {
                hub.stop_and_join();
            }
        }
    }
}

pub(crate) struct IndexState {
    pub tree: TreeIndex,
    /// Reads below this revision fail with [`Error::Compacted`].
    pub compact_rev: i64,
}

pub(crate) struct WriterState {
    /// Index of the last applied command.
    pub applied_index: u64,
    /// The newest revision, including changes not yet committed.
    pub rev: i64,
    /// The alarms, including changes not yet committed.
    pub alarms: AlarmTable,
}

impl Inner {
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }
}

impl Store {
    /// Opens the store in directory `path`, creating it if it does not exist,
    /// and rebuilds the in-memory index from disk.
    ///
    /// # Errors
    /// [`Error::Open`] if the directory holds something else (another format
    /// or version, a corrupt database) or is locked by a running process;
    /// nothing is changed on disk then.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let fresh = is_fresh(&path)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(fresh);
        db_opts.create_missing_column_families(fresh);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        let cfs = [CF_KV, CF_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(|e| open_error(&path, e))?;
        let meta = db.cf_handle(CF_META).expect("meta cf");
        if fresh {
            let mut wb = WriteBatch::default();
            wb.put_cf(meta, META_FORMAT, FORMAT_VERSION);
            wb.put_cf(meta, META_CURRENT_REV, i64_bytes(FIRST_REVISION));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(wb, &wo)?;
        } else {
            match db.get_cf(meta, META_FORMAT)? {
                Some(f) if f == FORMAT_VERSION => {}
                Some(f) => {
                    return Err(Error::Open(format!(
                        "{}: data format {:?} is not supported by this build (expects {:?})",
                        path.display(),
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT_VERSION)
                    )))
                }
                None => {
                    return Err(Error::Open(format!(
                        "{}: not a Ballast database (no format marker)",
                        path.display()
                    )))
                }
            }
        }
        if db.get_cf(meta, crate::snapshot::META_INSTALLING)?.is_some() {
            return Err(Error::Open(format!(
                "{}: a snapshot install was interrupted and the store is incomplete; \
                 remove this data directory and let the member catch up again",
                path.display()
            )));
        }
        let applied_index = read_u64_meta(&db, META_APPLIED_INDEX, 0)?;
        let current_rev = read_u64_meta(&db, META_CURRENT_REV, 0)? as i64;
        let scheduled = read_i64_meta(&db, META_SCHEDULED_COMPACT, NO_COMPACTION)?;
        let finished = read_i64_meta(&db, META_FINISHED_COMPACT, NO_COMPACTION)?;

        let (mut tree, max_rev, attached) = restore_index(&db)?;
        if max_rev > current_rev {
            return Err(Error::Corrupt(format!(
                "stored revision {max_rev} is past the recorded store revision {current_rev}"
            )));
        }
        let keep = (scheduled != NO_COMPACTION).then(|| tree.compact(scheduled));
        let alarms = AlarmTable::load(&db)?;
        let leases = crate::lease::LeaseTable::load(&db, attached)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes);
        let inner = Arc::new(Inner {
            db,
            path,
            index: RwLock::new(IndexState {
                tree,
                compact_rev: scheduled,
            }),
            committed_rev: AtomicI64::new(current_rev),
            writer: Mutex::new(WriterState {
                applied_index,
                rev: current_rev,
                alarms: alarms.clone(),
            }),
            poisoned: AtomicBool::new(false),
            compactor: Arc::new(Compactor::new(finished)),
            watch: OnceLock::new(),
            write_opts,
            alarms: RwLock::new(alarms),
            leases: Mutex::new(leases),
        });
        let guard = Compactor::start(&inner);
        if let Some(keep) = keep {
            if finished < scheduled {
                tracing::info!(revision = scheduled, "resuming an interrupted compaction");
                inner.compactor.schedule(scheduled, keep);
            }
        }
        Ok(Store {
            _shutdown: Arc::new(Shutdown {
                inner: Arc::downgrade(&inner),
                _compactor: guard,
            }),
            inner,
        })
    }

    /// Checks, without changing anything, that `path` can hold a store:
    /// it is absent, empty, or holds a database.
    ///
    /// # Errors
    /// [`Error::Open`] naming the problem.
    pub fn check_path(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match std::fs::read_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Open(format!("{}: {e}", path.display()))),
            Ok(mut entries) => {
                if entries.next().is_none() || path.join("CURRENT").exists() {
                    Ok(())
                } else {
                    Err(Error::Open(format!(
                        "{}: directory is not empty and holds no Ballast database",
                        path.display()
                    )))
                }
            }
        }
    }

    /// The newest committed revision.
    pub fn current_revision(&self) -> i64 {
        self.inner.committed_rev.load(Ordering::Acquire)
    }

    /// The compaction point: reads below it fail with [`Error::Compacted`].
    /// -1 ([`crate::schema::NO_COMPACTION`]) before the first compaction,
    /// as etcd's `compactMainRev`.
    pub fn compact_revision(&self) -> i64 {
        self.inner.index.read().compact_rev
    }

    /// Log index of the last command applied.
    pub fn applied_index(&self) -> u64 {
        self.inner.writer.lock().applied_index
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Answers a range read at the requested revision (or the newest).
    ///
    /// The response header carries only the revision; the caller adds the
    /// cluster identity.
    ///
    /// # Errors
    /// [`Error::Compacted`], [`Error::FutureRev`], or a storage error.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let index = self.inner.index.read();
        // Loaded under the index lock: a compaction is published before the
        // index is compacted, so this revision is never below its point.
        let current = self.current_revision();
        let plan = range::plan(&index.tree, req, current, index.compact_rev)?;
        // The snapshot is taken under the index lock, so a compaction that
        // starts later cannot remove what the plan points at.
        let snapshot = self.inner.db.snapshot();
        drop(index);
        let kv_cf = self.inner.cf(CF_KV);
        let keys: Vec<Vec<u8>> = plan.revs.iter().map(|r| r.to_key(false)).collect();
        let mut kvs = Vec::with_capacity(keys.len());
        for (rev, got) in plan
            .revs
            .iter()
            .zip(snapshot.multi_get_cf(keys.iter().map(|k| (kv_cf, k))))
        {
            let bytes = got?.ok_or_else(|| {
                Error::Corrupt(format!("revision {rev} is indexed but not stored"))
            })?;
            kvs.push(decode_kv(&bytes)?);
        }
        Ok(range::finish(req, plan, kvs))
    }

    /// Reads a meta record written with [`Store::apply_with_meta`].
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.db.get_cf(self.inner.cf(CF_META), name)?)
    }

    /// Blocks until the old versions of compaction `rev` (and earlier ones)
    /// are removed from disk.
    pub fn wait_compacted(&self, rev: i64) {
        self.inner.compactor.wait_finished(rev);
    }

    /// Every stored revision key in the kv column family, oldest first
    /// (for tests and consistency checks).
    pub fn stored_revisions(&self) -> Result<Vec<(Revision, bool)>> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.inner.cf(CF_KV), IteratorMode::Start)
        {
            let (k, _) = item?;
            out.push(
                Revision::from_key(&k).ok_or_else(|| Error::Corrupt("bad revision key".into()))?,
            );
        }
        Ok(out)
    }
}

/// A directory is fresh when it does not exist or is empty. A non-empty
/// directory without a RocksDB database is refused rather than reused.
fn is_fresh(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::Open(format!("{}: {e}", path.display())))?;
            Ok(true)
        }
        Err(e) => Err(Error::Open(format!("{}: {e}", path.display()))),
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(true);
            }
            if path.join("CURRENT").exists() {
                Ok(false)
            } else {
                Err(Error::Open(format!(
                    "{}: directory is not empty and holds no Ballast database",
                    path.display()
                )))
            }
        }
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.into_string();
    if msg.contains("lock") || msg.contains("Resource temporarily unavailable") {
        Error::Open(format!(
            "{}: the database is locked, probably by another running member ({msg})",
            path.display()
        ))
    } else {
        Error::Open(format!(
            "{}: cannot open the database: {msg}",
            path.display()
        ))
    }
}

/// Reads an 8-byte meta record; `default` when it is absent.
pub(crate) fn read_u64_meta(db: &DB, name: &[u8], default: u64) -> Result<u64> {
    let meta = db.cf_handle(CF_META).expect("meta cf");
    match db.get_cf(meta, name)? {
        None => Ok(default),
        Some(v) => decode_u64(&v).ok_or_else(|| Error::Corrupt(format!("meta {name:?}"))),
    }
}

/// Reads an i64 meta record; `default` when it is absent.
pub(crate) fn read_i64_meta(db: &DB, name: &[u8], default: i64) -> Result<i64> {
    Ok(read_u64_meta(db, name, default as u64)? as i64)
}

pub(crate) fn decode_kv(bytes: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(bytes).map_err(|e| Error::Corrupt(format!("stored key-value: {e}")))
}

/// Rebuilds the key index from every stored revision; returns it with the
/// newest revision found and the lease of every live key that has one.
pub(crate) fn restore_index(db: &DB) -> Result<(TreeIndex, i64, HashMap<Vec<u8>, i64>)> {
    let mut tree = TreeIndex::default();
    let mut attached = HashMap::new();
    let mut max_rev = 0;
    let cf = db.cf_handle(CF_KV).expect("kv cf");
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item?;
        let (rev, tombstone) = Revision::from_key(&k)
            .ok_or_else(|| Error::Corrupt(format!("bad revision key {k:?}")))?;
        let kv = decode_kv(&v)?;
        if tombstone {
            // A tombstone whose generation was partly compacted away hides
            // nothing; it is dropped by the next compaction.
            attached.remove(&kv.key);
            tree.tombstone(&kv.key, rev);
        } else {
            if kv.lease != 0 {
                attached.insert(kv.key.clone(), kv.lease);
            } else {
                attached.remove(&kv.key);
            }
            tree.put_restored(
                &kv.key,
                rev,
                Revision::new(kv.create_revision, 0),
                kv.version,
            );
        }
        max_rev = max_rev.max(rev.main);
    }
    Ok((tree, max_rev, attached))
}
