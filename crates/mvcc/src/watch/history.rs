//! Reading watch events back from the stored history, and `prev_kv`.

use ballast_proto::mvccpb::{event::EventType, Event};
use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};

use super::{delete_event, put_event, RevEvents};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::schema::CF_KV;
use crate::store::{decode_kv, Inner};

/// What one catch-up read found.
pub(crate) struct Scanned {
    /// Revisions with at least one event `keep` accepted, ascending.
    pub revs: Vec<RevEvents>,
    /// Every event up to this revision (from the first requested one) is
    /// in `revs`.
    pub end: i64,
}

/// Reads the events of revisions `from..=upto` from `snap`, keeping those
/// whose key `keep` accepts. Stops early, at a revision boundary, once
/// `max_bytes` of events are kept (at least one revision is always read).
pub(crate) fn scan(
    inner: &Inner,
    snap: &SnapshotWithThreadMode<'_, DB>,
    from: i64,
    upto: i64,
    max_bytes: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Scanned> {
    let start = Revision::new(from, 0).to_key(false);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(Revision::new(upto + 1, 0).to_key(false));
    let iter = snap.iterator_cf_opt(
        inner.cf(CF_KV),
        opts,
        IteratorMode::From(&start, Direction::Forward),
    );
    let mut revs: Vec<RevEvents> = Vec::new();
    let mut bytes = 0;
    for item in iter {
        let (k, v) = item?;
        let (rev, tombstone) = Revision::from_key(&k)
            .ok_or_else(|| Error::Corrupt(format!("bad revision key {k:?}")))?;
        if rev.main > upto {
            break;
        }
        if bytes >= max_bytes && revs.last().is_some_and(|r| r.rev != rev.main) {
            // Everything before this revision has been read.
            return Ok(Scanned {
                revs,
                end: rev.main - 1,
            });
        }
        let kv = decode_kv(&v)?;
        if !keep(&kv.key) {
            continue;
        }
        let ev = if tombstone {
            delete_event(kv.key, rev.main)
        } else {
            put_event(kv)
        };
        bytes += super::event_size(&ev);
        match revs.last_mut() {
            Some(last) if last.rev == rev.main => last.push(ev),
            _ => {
                let mut re = RevEvents::new(rev.main);
                re.push(ev);
                revs.push(re);
            }
        }
    }
    Ok(Scanned { revs, end: upto })
}

/// Every event of revision `rev` as stored now (before a compaction at
/// `rev` removes its tombstones).
pub(crate) fn read_revision(inner: &Inner, rev: i64) -> Result<RevEvents> {
    let snap = inner.db.snapshot();
    let scanned = scan(inner, &snap, rev, rev, usize::MAX, |_| true)?;
    Ok(scanned
        .revs
        .into_iter()
        .next()
        .unwrap_or_else(|| RevEvents::new(rev)))
}

/// True for a PUT that created its key (etcd's `IsCreateEvent`).
fn is_create(ev: &Event) -> bool {
    ev.r#type == EventType::Put as i32
        && ev
            .kv
            .as_ref()
            .is_some_and(|kv| kv.create_revision == kv.mod_revision)
}

/// Fills `prev_kv` of every event but creations with the key's version at
/// the event's revision - 1, as etcd's watch server does with a Range at
/// that revision: left empty if that revision is compacted or the key did
/// not exist then.
pub(crate) fn fill_prev_kv(inner: &Inner, events: &mut [Event]) {
    let mut wanted = Vec::new();
    let snap = {
        let ix = inner.index.read();
        for (i, ev) in events.iter().enumerate() {
            let Some(kv) = &ev.kv else { continue };
            let at = kv.mod_revision - 1;
            if is_create(ev) || at < ix.compact_rev || at < 1 {
                continue;
            }
            if let Some(k) = ix.tree.get(&kv.key, at) {
                wanted.push((i, k.modified));
            }
        }
        if wanted.is_empty() {
            return;
        }
        // Taken under the index lock: a later compaction cannot remove
        // what the index pointed at.
        inner.db.snapshot()
    };
    let cf = inner.cf(CF_KV);
    let keys: Vec<Vec<u8>> = wanted.iter().map(|(_, r)| r.to_key(false)).collect();
    for ((i, rev), got) in wanted
        .iter()
        .zip(snap.multi_get_cf(keys.iter().map(|k| (cf, k))))
    {
        match got.map_err(Error::from).and_then(|v| {
            v.ok_or_else(|| Error::Corrupt(format!("revision {rev} is indexed but not stored")))
        }) {
            Ok(bytes) => match decode_kv(&bytes) {
                Ok(kv) => events[*i].prev_kv = Some(kv),
                Err(e) => tracing::error!(error = %e, "watch: reading prev_kv"),
            },
            Err(e) => tracing::error!(error = %e, "watch: reading prev_kv"),
        }
    }
}
