//! Content hashes for consistency checks between members: etcd's `HashKV`
//! (CRC-32C over the key history, revision order) and a whole-store hash.
//!
//! Both are deterministic functions of the replicated state: equal stores
//! at equal revisions give equal hashes on every member and across
//! restarts, whatever the background compactor has physically removed yet.
//! Stored versions are byte-for-byte etcd's (revision keys and protobuf
//! `mvccpb.KeyValue` values), so `hash_kv` gives the same number etcd gives
//! for the same history.

use std::collections::HashSet;

use rocksdb::IteratorMode;

use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::schema::{is_engine_meta, CF_KV, CF_META, META_FINISHED_COMPACT, NO_COMPACTION};
use crate::store::Store;

/// CRC-32 with the Castagnoli polynomial (CRC-32C, as Go's
/// `crc32.MakeTable(crc32.Castagnoli)`), computed slicing-by-8.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c {
    state: u32,
}

const POLY: u32 = 0x82f6_3b78;

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = tables();

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// An empty hash.
    pub fn new() -> Self {
        Crc32c { state: !0 }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        let t = &TABLES;
        let mut c = self.state;
        let mut chunks = data.chunks_exact(8);
        for b in &mut chunks {
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][b[4] as usize]
                ^ t[2][b[5] as usize]
                ^ t[1][b[6] as usize]
                ^ t[0][b[7] as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ t[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        self.state = c;
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> u32 {
        !self.state
    }
}

/// The name etcd hashes first: its key bucket's.
const KEY_BUCKET: &[u8] = b"key";

/// The result of [`Store::hash_kv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C of the key history up to `hash_revision`.
    pub hash: u32,
    /// The compaction point when the hash was taken (-1 if the store was
    /// never compacted, as etcd reports).
    pub compact_revision: i64,
    /// The revision hashed.
    pub hash_revision: i64,
    /// The store's revision when the hash was taken.
    pub current_revision: i64,
}

impl Store {
    /// etcd 3.5's `HashKV` at `rev` (0 or less: the current revision).
    ///
    /// CRC-32C of `"key"`, then of each stored version's revision key and
    /// value, in revision order: every version with `compact < main <= rev`,
    /// and of the versions at or below the compaction point those a
    /// compaction at `rev` would keep (if there are none, those the last
    /// compaction kept — what etcd finds on disk then). Taken under the
    /// index lock with a RocksDB snapshot, so concurrent writes and the
    /// compactor do not change it.
    ///
    /// # Errors
    /// [`Error::Compacted`] if `rev` is below the compaction point,
    /// [`Error::FutureRev`] if it is above the current revision.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        let inner = &*self.inner;
        let index = inner.index.read();
        let current = self.current_revision();
        let compact = index.compact_rev;
        if rev > 0 && rev < compact {
            return Err(Error::Compacted);
        }
        if rev > current {
            return Err(Error::FutureRev);
        }
        let at = if rev <= 0 { current } else { rev };
        let mut keep = index.tree.keep(at);
        if keep.is_empty() && compact != NO_COMPACTION {
            keep = index.tree.keep(compact);
        }
        let snapshot = inner.db.snapshot();
        drop(index);

        let mut h = Crc32c::new();
        h.update(KEY_BUCKET);
        let end = Revision::new(at.saturating_add(1), 0).to_key(false);
        for item in snapshot.iterator_cf(inner.cf(CF_KV), IteratorMode::Start) {
            let (k, v) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            if included(&k, compact, &keep)? {
                h.update(&k);
                h.update(&v);
            }
        }
        Ok(KvHash {
            hash: h.finish(),
            compact_revision: compact,
            hash_revision: at,
            current_revision: current,
        })
    }

    /// A hash of the whole replicated content at the current revision
    /// (etcd's `Hash`, which hashes every bucket): the key history as
    /// [`Store::hash_kv`] sees it, then the engine's meta records (format,
    /// revision, compaction point, alarms) but not the compactor's progress
    /// nor a member's log position and other layers' records (as etcd's
    /// leaves out its consistent index and term). Returns the hash and the
    /// revision it was taken at.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let inner = &*self.inner;
        let index = inner.index.read();
        let current = self.current_revision();
        let compact = index.compact_rev;
        let mut keep = index.tree.keep(current);
        if keep.is_empty() && compact != NO_COMPACTION {
            keep = index.tree.keep(compact);
        }
        let snapshot = inner.db.snapshot();
        drop(index);

        let mut h = Crc32c::new();
        h.update(CF_KV.as_bytes());
        let end = Revision::new(current.saturating_add(1), 0).to_key(false);
        for item in snapshot.iterator_cf(inner.cf(CF_KV), IteratorMode::Start) {
            let (k, v) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            if included(&k, compact, &keep)? {
                h.update(&k);
                h.update(&v);
            }
        }
        h.update(CF_META.as_bytes());
        for item in snapshot.iterator_cf(inner.cf(CF_META), IteratorMode::Start) {
            let (k, v) = item?;
            // The engine's own records, less the compactor's progress.
            if !is_engine_meta(&k) || k.as_ref() == META_FINISHED_COMPACT {
                continue;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok((h.finish(), current))
    }
}

fn included(key: &[u8], compact: i64, keep: &HashSet<Revision>) -> Result<bool> {
    let (r, _) = Revision::from_key(key)
        .ok_or_else(|| Error::Corrupt(format!("bad revision key {key:?}")))?;
    Ok(r.main > compact || keep.contains(&r))
}

#[cfg(test)]
mod tests {
    use ballast_proto::ballastpb::{command::Op, Command};
    use ballast_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

    use super::*;
    use crate::StoreOptions;

    #[test]
    fn crc32c_known_values() {
        let crc = |d: &[u8]| {
            let mut h = Crc32c::new();
            h.update(d);
            h.finish()
        };
        assert_eq!(crc(b""), 0);
        assert_eq!(crc(b"123456789"), 0xe306_9283);
        assert_eq!(crc(&[0u8; 32]), 0x8a91_36aa);
        // Split updates equal one update, across the 8-byte fast path.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut h = Crc32c::new();
        h.update(&data[..13]);
        h.update(&data[13..500]);
        h.update(&data[500..]);
        assert_eq!(h.finish(), crc(&data));
        let mut bytewise = !0u32;
        for &b in &data {
            bytewise = (bytewise >> 8) ^ TABLES[0][((bytewise ^ u32::from(b)) & 0xff) as usize];
        }
        assert_eq!(!bytewise, crc(&data));
    }

    fn put(k: &str, v: &str) -> Command {
        Command {
            op: Some(Op::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str) -> Command {
        Command {
            op: Some(Op::DeleteRange(DeleteRangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn compact(rev: i64) -> Command {
        Command {
            op: Some(Op::Compaction(CompactionRequest {
                revision: rev,
                physical: true,
            })),
        }
    }

    fn history() -> Vec<Command> {
        vec![
            put("a", "1"),
            put("b", "2"),
            put("a", "3"),
            del("b"),
            put("c", "4"),
        ]
    }

    fn numbered(cmds: Vec<Command>, first: u64) -> Vec<(u64, Command)> {
        cmds.into_iter()
            .enumerate()
            .map(|(i, c)| (first + i as u64, c))
            .collect()
    }

    #[test]
    fn hash_kv_is_deterministic_and_survives_reopen() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        let base = a.current_revision();
        // The same commands at other log indexes: the log position is not content.
        a.apply(&numbered(history(), 1)).unwrap();
        b.apply(&numbered(history(), 100)).unwrap();
        let last = base + 5;
        assert_eq!(a.current_revision(), last);
        for rev in 0..=last {
            assert_eq!(
                a.hash_kv(rev).unwrap(),
                b.hash_kv(rev).unwrap(),
                "rev {rev}"
            );
        }
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        let h = a.hash_kv(0).unwrap();
        assert_eq!(
            h,
            KvHash {
                hash: h.hash,
                compact_revision: -1,
                hash_revision: last,
                current_revision: last
            }
        );
        // Every revision hashes differently: each adds a version.
        let all: HashSet<u32> = (base + 1..=last)
            .map(|r| a.hash_kv(r).unwrap().hash)
            .collect();
        assert_eq!(all.len(), 5);
        assert_eq!(a.hash_kv(last + 1), Err(Error::FutureRev));

        drop(a);
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(a.hash_kv(0).unwrap(), h);
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
    }

    #[test]
    fn fresh_store_hashes_as_etcd() {
        // etcd 3.4's HashKV of a new store: revision 1, never compacted,
        // CRC-32C of the bucket name only.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let want = KvHash {
            hash: 1_084_519_789,
            compact_revision: -1,
            hash_revision: 1,
            current_revision: 1,
        };
        assert_eq!(store.hash_kv(0).unwrap(), want);
        assert_eq!(store.hash_kv(1).unwrap(), want);
        assert_eq!(store.hash_kv(2), Err(Error::FutureRev));
    }

    #[test]
    fn hash_kv_changes_with_content() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        let base = a.current_revision();
        a.apply(&numbered(history(), 1)).unwrap();
        let mut other = history();
        other[4] = put("c", "5");
        b.apply(&numbered(other, 1)).unwrap();
        assert_eq!(a.hash_kv(base + 4).unwrap(), b.hash_kv(base + 4).unwrap());
        assert_ne!(
            a.hash_kv(base + 5).unwrap().hash,
            b.hash_kv(base + 5).unwrap().hash
        );
        assert_ne!(a.hash().unwrap().0, b.hash().unwrap().0);
    }

    #[test]
    fn hash_kv_respects_compaction() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        let b = Store::open(b_dir.path(), StoreOptions::default()).unwrap();
        // Revision of the n-th command of `history()`.
        let base = a.current_revision();
        let r = |n: i64| base + n;
        a.apply(&numbered(history(), 1)).unwrap();
        b.apply(&numbered(history(), 1)).unwrap();
        let before = a.hash_kv(r(5)).unwrap();

        a.apply(&[(6, compact(r(3)))]).unwrap();
        a.wait_compacted(r(3));
        // Below the compaction point: etcd's ErrCompacted; at it: answered.
        assert_eq!(a.hash_kv(r(2)), Err(Error::Compacted));
        let at = a.hash_kv(r(5)).unwrap();
        assert_eq!(at.compact_revision, r(3));
        // Versions a compaction dropped are not hashed any more.
        assert_ne!(at.hash, before.hash);
        assert!(a.hash_kv(r(3)).is_ok());

        // The hash does not depend on whether the old versions are already
        // gone from disk: b hashes the same whether or not its compactor
        // has removed them yet.
        b.apply(&[(6, compact(r(3)))]).unwrap();
        assert_eq!(b.hash_kv(r(5)).unwrap().hash, at.hash);
        assert_eq!(b.hash_kv(r(4)).unwrap(), a.hash_kv(r(4)).unwrap());

        // etcd's value for the same history: at 5, a@3, b's tombstone at 4
        // and c@5; a@1 is compacted away, and b@2, kept on disk for reads at
        // 3, is not hashed at 5 (a compaction at 5 would drop it).
        let mut expect = Crc32c::new();
        expect.update(b"key");
        for (n, tomb) in [(3, false), (4, true), (5, false)] {
            let k = Revision::new(r(n), 0).to_key(tomb);
            let v = a
                .inner
                .db
                .get_cf(a.inner.cf(CF_KV), &k)
                .unwrap()
                .expect("stored");
            expect.update(&k);
            expect.update(&v);
        }
        assert_eq!(at.hash, expect.finish());

        // Survives reopening, compaction point included.
        drop(a);
        let a = Store::open(a_dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(a.hash_kv(r(5)).unwrap(), at);
    }
}
