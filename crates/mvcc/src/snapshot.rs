//! Whole-store images: writing a consistent copy of the store to a stream,
//! and replacing the store's content with one.
//!
//! Format: the magic `BLSTSNP1`, then records `tag (u8) | key length (u32
//! LE) | key | value length (u32 LE) | value` with tag 1 for the `kv`
//! column family and 2 for `meta`, then tag 0 and the record count (u64 LE).

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use crate::error::{Error, Result};
use crate::schema::*;
use crate::store::{read_i64_meta, read_u64_meta, restore_index, Store};

const MAGIC: &[u8; 8] = b"BLSTSNP1";
const TAG_END: u8 = 0;
const TAG_KV: u8 = 1;
const TAG_META: u8 = 2;
/// Bytes buffered before a write batch is flushed during an install.
const INSTALL_BATCH_BYTES: usize = 32 << 20;
/// Marks an install in progress; a store opened with it set is incomplete.
pub(crate) const META_INSTALLING: &[u8] = b"installing_snapshot";
/// Upper bound of every key in the engine's column families.
const KEY_MAX: [u8; 32] = [0xff; 32];

fn io(e: std::io::Error) -> Error {
    Error::Storage(format!("snapshot stream: {e}"))
}

impl Store {
    /// Writes a consistent image of the whole store (every retained
    /// version and every meta record) to `w`, and returns the values the
    /// meta records `names` have in that image.
    pub fn write_snapshot(
        &self,
        w: &mut dyn Write,
        names: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let inner = &*self.inner;
        // Every apply is one atomic write, so any point-in-time view is a
        // state between two batches. Under the writer lock, the view is
        // also made durable first: a log may be purged behind this image
        // even when the store writes unsynced.
        let snap = {
            let _writer = inner.writer.lock();
            inner.db.flush_wal(true)?;
            inner.db.snapshot()
        };
        w.write_all(MAGIC).map_err(io)?;
        let mut count: u64 = 0;
        for (tag, cf) in [(TAG_KV, CF_KV), (TAG_META, CF_META)] {
            for item in snap.iterator_cf(inner.cf(cf), IteratorMode::Start) {
                let (k, v) = item?;
                if k.as_ref() == META_INSTALLING {
                    continue;
                }
                w.write_all(&[tag]).map_err(io)?;
                w.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
                w.write_all(&k).map_err(io)?;
                w.write_all(&(v.len() as u32).to_le_bytes()).map_err(io)?;
                w.write_all(&v).map_err(io)?;
                count += 1;
            }
        }
        w.write_all(&[TAG_END]).map_err(io)?;
        w.write_all(&count.to_le_bytes()).map_err(io)?;
        w.flush().map_err(io)?;
        names
            .iter()
            .map(|n| Ok(snap.get_cf(inner.cf(CF_META), n)?))
            .collect()
    }

    /// Replaces the store's whole content with an image written by
    /// [`Store::write_snapshot`], and rebuilds the index.
    ///
    /// Writers wait meanwhile; readers see either the old or the new store.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the stream is not a valid image: the store is
    /// then left marked incomplete and refuses to open until it is replaced.
    pub fn install_snapshot(&self, r: &mut dyn Read) -> Result<()> {
        let inner = &*self.inner;
        let mut w = inner.writer.lock();
        let _paused = inner.compactor.pause();
        let mut index = inner.index.write();
        let (kv, meta) = (inner.cf(CF_KV), inner.cf(CF_META));
        let mut sync = WriteOptions::default();
        sync.set_sync(true);

        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(Error::Corrupt("not a Ballast snapshot (bad magic)".into()));
        }
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(kv, &[][..], &KEY_MAX[..]);
        wb.delete_range_cf(meta, &[][..], &KEY_MAX[..]);
        wb.put_cf(meta, META_INSTALLING, b"1");
        inner.db.write_opt(wb, &sync)?;

        let loaded = load_records(inner, r).and_then(|()| {
            let db = &inner.db;
            let (tree, _, attached) = restore_index(db)?;
            Ok((
                tree,
                read_i64_meta(db, META_SCHEDULED_COMPACT, NO_COMPACTION)?,
                read_i64_meta(db, META_FINISHED_COMPACT, NO_COMPACTION)?,
                read_u64_meta(db, META_APPLIED_INDEX, 0)?,
                read_u64_meta(db, META_CURRENT_REV, 0)? as i64,
                crate::alarm::AlarmTable::load(db)?,
                crate::lease::LeaseTable::load(db, attached)?,
            ))
        });
        let (mut tree, scheduled, finished, applied_index, rev, alarms, leases) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // The old content is gone and the new one incomplete.
                inner.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let keep = (scheduled != NO_COMPACTION).then(|| tree.compact(scheduled));
        index.tree = tree;
        index.compact_rev = scheduled;
        w.applied_index = applied_index;
        w.rev = rev;
        w.alarms = alarms;
        *inner.alarms.write() = w.alarms.clone();
        *inner.leases.lock() = leases;
        inner.committed_rev.store(w.rev, Ordering::Release);
        inner.poisoned.store(false, Ordering::Release);
        inner.compactor.set_finished(finished);
        // Watchers catch up again against the new content.
        crate::watch::installed(inner, w.rev, scheduled);
        drop(_paused);
        if let Some(keep) = keep {
            if finished < scheduled {
                inner.compactor.schedule(scheduled, keep);
            }
        }
        Ok(())
    }
}

/// Loads the records of an image (after its magic) into the emptied store.
fn load_records(inner: &crate::store::Inner, r: &mut dyn Read) -> Result<()> {
    let (kv, meta) = (inner.cf(CF_KV), inner.cf(CF_META));
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut wb = WriteBatch::default();
    let mut count: u64 = 0;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(io)?;
        let cf = match tag[0] {
            TAG_END => break,
            TAG_KV => kv,
            TAG_META => meta,
            t => return Err(Error::Corrupt(format!("snapshot record tag {t}"))),
        };
        let k = read_chunk(r)?;
        let v = read_chunk(r)?;
        wb.put_cf(cf, k, v);
        count += 1;
        if wb.size_in_bytes() >= INSTALL_BATCH_BYTES {
            inner.db.write(std::mem::take(&mut wb))?;
        }
    }
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(io)?;
    if u64::from_le_bytes(n) != count {
        return Err(Error::Corrupt(
            "snapshot record count does not match".into(),
        ));
    }
    wb.delete_cf(meta, META_INSTALLING);
    inner.db.write_opt(wb, &sync)?;

    Ok(())
}

fn read_chunk(r: &mut dyn Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > (1 << 30) {
        return Err(Error::Corrupt(format!("snapshot record of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use ballast_proto::ballastpb::{command::Op, Command};
    use ballast_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};

    use crate::{Store, StoreOptions};

    fn put(k: &str, v: &str) -> Command {
        Command {
            op: Some(Op::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn snapshot_round_trip_replaces_content() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        // A new store is at revision 1: the puts are revisions 2, 3 and 4.
        a.apply(&[(1, put("x", "1")), (2, put("y", "2")), (3, put("x", "3"))])
            .unwrap();
        let compact = Command {
            op: Some(Op::Compaction(CompactionRequest {
                revision: 3,
                physical: true,
            })),
        };
        a.apply_with_meta(&[(4, compact)], &[(b"raft", b"pos")])
            .unwrap();
        a.wait_compacted(3);
        b.apply(&[(1, put("old", "gone"))]).unwrap();

        let mut image = Vec::new();
        let got = a
            .write_snapshot(&mut image, &[b"raft", b"nothing"])
            .unwrap();
        assert_eq!(got, vec![Some(b"pos".to_vec()), None]);
        b.install_snapshot(&mut image.as_slice()).unwrap();

        assert_eq!(b.current_revision(), 4);
        assert_eq!(b.compact_revision(), 3);
        assert_eq!(b.applied_index(), 4);
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        assert_eq!(a.range(&all).unwrap(), b.range(&all).unwrap());
        let old = RangeRequest {
            key: b"x".to_vec(),
            revision: 2,
            ..Default::default()
        };
        assert!(b.range(&old).is_err());
        assert_eq!(b.stored_revisions().unwrap(), a.stored_revisions().unwrap());
        // Writes continue from the installed revision, and survive reopening.
        b.apply(&[(5, put("z", "4"))]).unwrap();
        drop(b);
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(b.current_revision(), 5);
        assert!(b.range(&all).unwrap().kvs.iter().all(|kv| kv.key != b"old"));

        let mut bad = image.clone();
        bad[0] = b'X';
        assert!(b.install_snapshot(&mut bad.as_slice()).is_err());
        // A rejected header leaves the store untouched.
        assert_eq!(b.current_revision(), 5);
    }
}
