//! The history of one key: its generations and revisions.

use std::collections::HashSet;

use crate::revision::Revision;

/// The revisions of one key, grouped into generations.
///
/// A generation runs from the key's creation to its deletion (the tombstone
/// is the generation's last revision). After a deletion an empty generation
/// is opened, so the last generation is empty exactly when the key does not
/// exist now. For example, `put(1) put(2) del(3) put(4) put(5)` gives
///
/// ```text
/// generations: [ {1.0, 2.0, 3.0(t)}, {4.0, 5.0} ]
/// ```
///
/// and compacting at revision 4 keeps `[ {4.0, 5.0} ]`: the whole first
/// generation ends at or before 4, and inside the second only the newest
/// revision not after 4 (and everything newer) is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndex {
    /// The newest revision of the key, a tombstone included.
    pub modified: Revision,
    generations: Vec<Generation>,
}

/// One life of a key, from creation to deletion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Version of the key at the newest revision of this generation.
    ver: i64,
    /// Revision the key was created at (`create_revision`).
    created: Revision,
    /// Revisions in ascending order; a tombstone is always last.
    revs: Vec<Revision>,
}

/// What a key looked like at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// Revision of the change visible at the requested revision.
    pub modified: Revision,
    /// Revision of the key's creation in that generation.
    pub created: Revision,
    /// The key's version at that change.
    pub version: i64,
}

impl KeyIndex {
    /// Records a put at `rev` (newer than every recorded revision).
    pub fn put(&mut self, rev: Revision) {
        self.put_restored(rev, None, None);
    }

    /// Records a put while rebuilding the index from disk, taking the
    /// creation revision and version from the stored value, since older
    /// revisions of the generation may already be compacted away.
    pub fn put_restored(&mut self, rev: Revision, created: Option<Revision>, version: Option<i64>) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("one generation");
        if g.revs.is_empty() {
            g.created = created.unwrap_or(rev);
            g.ver = 0;
        }
        g.revs.push(rev);
        g.ver = version.unwrap_or(g.ver + 1);
        self.modified = rev;
    }

    /// Records a deletion at `rev`; returns false (and records nothing) if
    /// the key does not exist now.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last() {
            Some(g) if !g.revs.is_empty() => {}
            _ => return false,
        }
        let g = self.generations.last_mut().expect("checked");
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
        self.generations.push(Generation::default());
        true
    }

    /// The key as of revision `at`, or `None` if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.find_generation(at)?;
        let n = g.revs.iter().rposition(|r| r.main <= at)?;
        let newer = (g.revs.len() - 1 - n) as i64;
        Some(KeyAt {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - newer,
        })
    }

    /// The key now (including changes not yet visible to readers).
    pub fn latest(&self) -> Option<KeyAt> {
        self.get(i64::MAX)
    }

    /// The generation alive at `at`, if the key existed then.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if i != last {
                let tomb = g.revs.last().expect("non-empty").main;
                if tomb <= at {
                    return None;
                }
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    /// Drops the history that no read at or after revision `at` can see,
    /// adding to `keep` the revisions at or before `at` that stay visible.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() {
            return;
        }
        // The first generation still alive after `at`, or the last one.
        let mut gi = 0;
        while gi < self.generations.len() - 1 {
            let g = &self.generations[gi];
            match g.revs.last() {
                Some(tomb) if tomb.main <= at => gi += 1,
                _ => break,
            }
        }
        let is_last = gi == self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if !g.revs.is_empty() {
            if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
                keep.insert(g.revs[n]);
                g.revs.drain(..n);
            }
            // A lone tombstone hides nothing: drop its generation too.
            if g.revs.len() == 1 && !is_last {
                keep.remove(&g.revs[0]);
                gi += 1;
            }
        }
        self.generations.drain(..gi);
    }

    /// Adds to `keep` the revision a compaction at `at` would keep for this
    /// key, without changing anything (etcd's `keyIndex.keep`): the newest
    /// revision at or before `at` of the generation alive after `at`, unless
    /// it is a tombstone ending its generation.
    pub fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() {
            return;
        }
        let mut gi = 0;
        while gi < self.generations.len() - 1 {
            match self.generations[gi].revs.last() {
                Some(tomb) if tomb.main <= at => gi += 1,
                _ => break,
            }
        }
        let is_last = gi == self.generations.len() - 1;
        let g = &self.generations[gi];
        if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
            if n != g.revs.len() - 1 || is_last {
                keep.insert(g.revs[n]);
            }
        }
    }

    /// True when nothing of the key is left (it was compacted away).
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }

    /// Every recorded revision, oldest first (tests and checks).
    pub fn revisions(&self) -> Vec<Revision> {
        self.generations
            .iter()
            .flat_map(|g| g.revs.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn sample() -> KeyIndex {
        // put(2) put(4) del(6) put(8) put(10) del(12) put(14) put(16)
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(r(16));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        let at = |rev| {
            ki.get(rev)
                .map(|k| (k.modified.main, k.created.main, k.version))
        };
        assert_eq!(at(2), Some((2, 2, 1)));
        assert_eq!(at(5), Some((4, 2, 2)));
        assert_eq!(at(6), None);
        assert_eq!(at(7), None);
        assert_eq!(at(9), Some((8, 8, 1)));
        assert_eq!(at(11), Some((10, 8, 2)));
        assert_eq!(at(12), None);
        assert_eq!(at(15), Some((14, 14, 1)));
        assert_eq!(at(100), Some((16, 14, 2)));
        assert!(!KeyIndex::default().tombstone(r(1)));
    }

    #[test]
    fn compact_keeps_what_reads_can_see() {
        let cases: &[(i64, &[i64], &[i64])] = &[
            (1, &[2, 4, 6, 8, 10, 12, 14, 16], &[]),
            (2, &[2, 4, 6, 8, 10, 12, 14, 16], &[2]),
            (5, &[4, 6, 8, 10, 12, 14, 16], &[4]),
            (6, &[8, 10, 12, 14, 16], &[]),
            (7, &[8, 10, 12, 14, 16], &[]),
            (9, &[8, 10, 12, 14, 16], &[8]),
            (12, &[14, 16], &[]),
            (15, &[14, 16], &[14]),
            (16, &[16], &[16]),
            (20, &[16], &[16]),
        ];
        for (at, left, kept) in cases {
            let mut ki = sample();
            let mut keep = HashSet::new();
            ki.compact(*at, &mut keep);
            let mains: Vec<i64> = ki.revisions().iter().map(|r| r.main).collect();
            assert_eq!(&mains, left, "compact at {at}");
            let mut k: Vec<i64> = keep.iter().map(|r| r.main).collect();
            k.sort();
            assert_eq!(&k, kept, "keep at {at}");
            // `keep` predicts compaction's keep set without changing anything.
            let orig = sample();
            let mut predicted = HashSet::new();
            orig.keep(*at, &mut predicted);
            assert_eq!(predicted, keep, "keep at {at}");
            // Reads at or after the compaction point are unchanged.
            for rev in *at..20 {
                assert_eq!(ki.get(rev), orig.get(rev), "compact {at}, read {rev}");
            }
        }
    }

    #[test]
    fn compact_deleted_key_empties_index() {
        let mut ki = KeyIndex::default();
        ki.put(r(1));
        ki.tombstone(r(2));
        let mut keep = HashSet::new();
        ki.compact(2, &mut keep);
        assert!(ki.is_empty());
        assert!(keep.is_empty());
    }
}
