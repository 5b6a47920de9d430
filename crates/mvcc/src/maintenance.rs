//! Maintenance of the database files: their size, defragmentation, and
//! turning a restored image into a new member's store.

use std::sync::atomic::Ordering;

use ballast_proto::etcdserverpb::AlarmMember;
use rocksdb::{BottommostLevelCompaction, CompactOptions, IteratorMode, WriteBatch, WriteOptions};

use crate::error::Result;
use crate::schema::{is_engine_meta, CF_KV, CF_META};
use crate::store::Store;

impl Store {
    /// Size of the database files in bytes: every file of the store's
    /// directory (sorted tables, write-ahead log, manifest, options) but
    /// RocksDB's own info logs. This is what the backend quota is checked
    /// against, as etcd checks its bolt file's size.
    pub fn db_size(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(&self.inner.path) else {
            return 0;
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with("LOG") && name != "LOCK"
            })
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// Estimated bytes of [`Store::db_size`] that hold live data: the size
    /// less what RocksDB estimates compaction would reclaim from the sorted
    /// tables (overwritten and deleted entries). Like etcd's "in use" size,
    /// the difference is what [`Store::defragment`] can give back.
    pub fn db_size_in_use(&self) -> u64 {
        let db = &self.inner.db;
        let mut garbage = 0u64;
        for name in [CF_KV, CF_META] {
            let cf = self.inner.cf(name);
            let prop = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            let live_files = prop("rocksdb.live-sst-files-size");
            let live_data = prop("rocksdb.estimate-live-data-size");
            garbage += live_files.saturating_sub(live_data);
        }
        self.db_size().saturating_sub(garbage)
    }

    /// Rewrites every column family in full (RocksDB manual compaction down
    /// to the last level): the memtables are flushed and the space of
    /// deleted and compacted-away versions is given back to the file
    /// system. Content and revisions do not change, so this is local to the
    /// member and not a replicated command (as etcd's defragmentation).
    /// Blocks until done; reads and writes continue meanwhile.
    pub fn defragment(&self) -> Result<()> {
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for name in [CF_KV, CF_META] {
            self.inner.db.compact_range_cf_opt(
                self.inner.cf(name),
                None::<&[u8]>,
                None::<&[u8]>,
                &opts,
            );
        }
        Ok(())
    }

    /// The active alarms, as of the last committed write, ordered by member
    /// ID then type.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.inner.alarms.read().members()
    }

    /// True once a failed disk write stopped the store from accepting
    /// writes (reads of committed data go on).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Makes a store just restored from an image (see
    /// [`Store::install_snapshot`]) the store of a new member with a new
    /// log: forgets the applied log index and every meta record that is not
    /// the engine's own (a replication layer's log position and
    /// membership), keeping the data, revision, compaction point and alarms.
    /// Only for the offline restore of a backup into a new data directory,
    /// as etcd's `snapshot restore` starts a new cluster: on a running
    /// member state changes only through [`Store::apply`].
    pub fn reset_log_position(&self) -> Result<()> {
        let inner = &*self.inner;
        let mut w = inner.writer.lock();
        let meta = inner.cf(CF_META);
        let mut wb = WriteBatch::default();
        for item in inner.db.iterator_cf(meta, IteratorMode::Start) {
            let (k, _) = item?;
            if !is_engine_meta(&k) {
                wb.delete_cf(meta, &k);
            }
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        inner.db.write_opt(wb, &sync)?;
        w.applied_index = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ballast_proto::ballastpb::{command::Op, Command};
    use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
    use ballast_proto::etcdserverpb::{
        AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest, PutRequest,
    };

    use crate::schema::META_APPLIED_INDEX;
    use crate::{Store, StoreOptions};

    fn put(k: &str, len: usize) -> Command {
        Command {
            op: Some(Op::Put(PutRequest {
                key: k.into(),
                value: vec![b'x'; len],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn defragment_gives_back_deleted_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let empty = store.db_size();
        let cmds: Vec<(u64, Command)> = (0..20)
            .map(|i| (i + 1, put(&format!("k{i}"), 50_000)))
            .collect();
        store.apply(&cmds).unwrap();
        let full = store.db_size();
        assert!(full > empty + 20 * 50_000, "{empty} -> {full}");
        assert!(store.db_size_in_use() <= full);
        let del = Command {
            op: Some(Op::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                ..Default::default()
            })),
        };
        store.apply(&[(21, del)]).unwrap();
        let rev = store.current_revision();
        let compact = Command {
            op: Some(Op::Compaction(CompactionRequest {
                revision: rev,
                physical: true,
            })),
        };
        store.apply(&[(22, compact)]).unwrap();
        store.wait_compacted(rev);
        store.defragment().unwrap();
        // Obsolete files are deleted right after the compaction, sometimes
        // by a background thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.db_size() > full / 4 {
            assert!(
                Instant::now() < deadline,
                "size {} after defragment",
                store.db_size()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.current_revision(), rev);
    }

    #[test]
    fn restored_image_keeps_content_and_alarms_but_not_the_log_position() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        let alarm = Command {
            op: Some(Op::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: 9,
                alarm: AlarmType::Nospace as i32,
            })),
        };
        a.apply_with_meta(&[(1, put("a", 3)), (2, alarm)], &[(b"raft_pos", b"x")])
            .unwrap();
        let mut image = Vec::new();
        a.write_snapshot(&mut image, &[]).unwrap();

        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        b.install_snapshot(&mut image.as_slice()).unwrap();
        assert_eq!(b.alarms(), a.alarms());
        assert_eq!(b.applied_index(), 2);
        assert_eq!(b.hash().unwrap(), a.hash().unwrap());
        b.reset_log_position().unwrap();
        assert_eq!(b.applied_index(), 0);
        assert_eq!(b.meta(b"raft_pos").unwrap(), None);
        assert_eq!(b.meta(META_APPLIED_INDEX).unwrap(), None);
        drop(b);
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(b.applied_index(), 0);
        assert_eq!(b.current_revision(), a.current_revision());
        assert_eq!(b.alarms(), a.alarms());
        // Same content: the whole-store hash ignores the log position.
        assert_eq!(b.hash().unwrap(), a.hash().unwrap());
        assert_eq!(b.hash_kv(0).unwrap(), a.hash_kv(0).unwrap());
    }
}
