//! The in-memory index from user keys to their revision history.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use crate::key_index::{KeyAt, KeyIndex};
use crate::revision::Revision;

/// An ordered map from each user key to its [`KeyIndex`].
///
/// Values live on disk under their revision; the index answers which
/// revision of which key is visible at a given store revision. It is rebuilt
/// from disk when the store opens.
#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// A key range as etcd defines it: `end == None` is the single key `start`;
/// an empty `end` means every key from `start` on; otherwise `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct KeyRange<'a> {
    /// First key of the range.
    pub start: &'a [u8],
    /// End of the range (see the type's doc).
    pub end: Option<&'a [u8]>,
}

/// The start and end bounds of a [`KeyRange`] in the index's map.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

impl<'a> KeyRange<'a> {
    /// Builds a range from a request's `key` and `range_end` fields:
    /// an absent `range_end` is one key, `"\0"` means "from `key` on".
    pub fn from_request(key: &'a [u8], range_end: &'a [u8]) -> Self {
        let end = match range_end {
            [] => None,
            [0] => Some(&[][..]),
            e => Some(e),
        };
        KeyRange { start: key, end }
    }

    /// True if `key` falls inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            None => key == self.start,
            Some([]) => key >= self.start,
            Some(end) => key >= self.start && key < end,
        }
    }

    fn bounds(&self) -> Option<KeyBounds<'a>> {
        match self.end {
            None => Some((Bound::Included(self.start), Bound::Included(self.start))),
            Some([]) => Some((Bound::Included(self.start), Bound::Unbounded)),
            Some(end) if end <= self.start => None,
            Some(end) => Some((Bound::Included(self.start), Bound::Excluded(end))),
        }
    }
}

impl TreeIndex {
    /// Records a put of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        self.keys.entry(key.to_vec()).or_default().put(rev);
    }

    /// Records a put found on disk while restoring (see [`KeyIndex::put_restored`]).
    pub fn put_restored(&mut self, key: &[u8], rev: Revision, created: Revision, version: i64) {
        self.keys
            .entry(key.to_vec())
            .or_default()
            .put_restored(rev, Some(created), Some(version));
    }

    /// Records a deletion of `key` at `rev`; false if the key does not exist now.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys
            .get_mut(key)
            .map(|ki| ki.tombstone(rev))
            .unwrap_or(false)
    }

    /// The key as of revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Keys of `range` that exist at revision `at`, in key order, with the
    /// revision visible for each: at most `limit` of them (0 = no limit).
    /// Also returns how many keys exist in the range at `at` in total.
    pub fn range(
        &self,
        range: KeyRange<'_>,
        at: i64,
        limit: usize,
    ) -> (Vec<(&[u8], KeyAt)>, usize) {
        let mut out = Vec::new();
        let mut count = 0;
        let Some(bounds) = range.bounds() else {
            return (out, 0);
        };
        for (k, ki) in self.keys.range::<[u8], _>(bounds) {
            if let Some(at) = ki.get(at) {
                count += 1;
                if limit == 0 || out.len() < limit {
                    out.push((k.as_slice(), at));
                }
            }
        }
        (out, count)
    }

    /// How many keys of `range` exist at revision `at`.
    pub fn count(&self, range: KeyRange<'_>, at: i64) -> usize {
        let Some(bounds) = range.bounds() else {
            return 0;
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter(|(_, ki)| ki.get(at).is_some())
            .count()
    }

    /// Compacts every key at revision `at` and returns the revisions at or
    /// before `at` that must stay on disk; keys left empty are removed.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, ki| {
            ki.compact(at, &mut keep);
            !ki.is_empty()
        });
        keep
    }

    /// The revisions at or before `at` that a compaction at `at` would keep,
    /// without compacting (etcd's `treeIndex.Keep`).
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }

    /// Number of keys with any history in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut ti = TreeIndex::default();
        for (i, k) in [&b"a"[..], b"b", b"c", b"d"].iter().enumerate() {
            ti.put(k, Revision::new(i as i64 + 1, 0));
        }
        assert!(ti.tombstone(b"b", Revision::new(5, 0)));
        let keys = |r: KeyRange<'_>, at| {
            ti.range(r, at, 0)
                .0
                .iter()
                .map(|(k, _)| k.to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(KeyRange::from_request(b"b", b""), 4),
            vec![b"b".to_vec()]
        );
        assert_eq!(
            keys(KeyRange::from_request(b"b", b""), 5),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(keys(KeyRange::from_request(b"b", b"\0"), 5).len(), 2);
        assert_eq!(keys(KeyRange::from_request(b"a", b"c"), 4).len(), 2);
        // range_end before key: empty, as in etcd.
        assert_eq!(keys(KeyRange::from_request(b"c", b"a"), 4).len(), 0);
        let (page, total) = ti.range(KeyRange::from_request(b"a", b"\0"), 4, 2);
        assert_eq!((page.len(), total), (2, 4));
        assert_eq!(ti.count(KeyRange::from_request(b"a", b"\0"), 5), 3);
        assert!(!ti.tombstone(b"b", Revision::new(6, 0)));
        assert!(!ti.tombstone(b"zz", Revision::new(6, 0)));
    }
}
