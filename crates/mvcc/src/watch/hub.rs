//! The hub: every watcher of a store, synced or unsynced, the cache of
//! recent revisions, and the background syncer.
//!
//! # Synced, unsynced, and the hand-over
//! The hub's revision `rev` is the newest revision whose events it has
//! dispatched; it only changes in [`HubShared::notify`] (and on a snapshot
//! install), under the hub's lock, after the batch is durable.
//!
//! - A *synced* watcher has seen every event up to `rev`: `notify` queues
//!   each new revision's matching events for it, then advances `rev`. If
//!   its budget is exhausted it becomes unsynced at that revision.
//! - An *unsynced* watcher has seen everything before its `next_rev`
//!   (`next_rev <= rev`). The syncer thread queues the missing events,
//!   from the cache of recent revisions (which holds every revision in
//!   `(cache_floor, rev]`) when it reaches back far enough, otherwise from a
//!   RocksDB snapshot taken under the hub's lock together with the `end =
//!   rev` it will read up to. After the read, again under the lock, the
//!   watcher gets the events of `[next_rev, end]`, then those of `(end,
//!   rev]` from the cache (`rev` may have moved on meanwhile), and only if
//!   that reaches `rev` does it become synced, still under the same lock.
//!   From then on `notify` gives it exactly the revisions after `rev`: no
//!   revision is skipped and none is given twice. If the cache no longer
//!   reaches back to `end + 1`, the watcher stays unsynced at `end + 1` and
//!   the next round reads on from there.
//! - Compaction: a watcher whose `next_rev` is below the compaction point
//!   is canceled with the compaction revision (etcd's `ErrCompacted`). At
//!   exactly the compaction point, the revision's tombstones are already
//!   gone from disk, so the hub captures the whole revision when the
//!   compaction is applied (etcd bug #18089 lost those DELETE events); if
//!   it has no capture (after a restart), the watcher is canceled too. The
//!   cancel's `compact_revision` is the first revision the hub can serve:
//!   the compaction point if captured, else the one after it, so that a
//!   client resuming from `compact_revision` (as etcd advises) is not
//!   canceled again and again.
//! - A snapshot install replaces history: every watcher becomes unsynced
//!   at its `next_rev`, the cache is emptied, and the syncer catches them
//!   up (or cancels them) against the new content.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::history;
use super::stream::{Out, Waker, WatchStream};
use super::watcher::{WatchRange, Watcher};
use super::{RevEvents, WatchError, WatchLimits, WatchOptions};
use crate::store::Inner;

/// Watchers caught up per syncer round at most (etcd's `maxWatchersPerSync`).
const MAX_WATCHERS_PER_SYNC: usize = 512;
/// The syncer looks for work at least this often.
const SYNC_POLL: Duration = Duration::from_millis(100);

/// Wakes the syncer thread.
pub(crate) struct SyncSignal {
    pending: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
}

impl SyncSignal {
    pub fn notify(&self) {
        *self.pending.lock() = true;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let mut p = self.pending.lock();
        if !*p {
            self.cv.wait_for(&mut p, timeout);
        }
        *p = false;
    }
}

/// The state shared by a hub's handles, its streams and its syncer.
pub(crate) struct HubShared {
    state: Mutex<HubState>,
    pub inner: Weak<Inner>,
    /// The syncer thread, joined by [`HubShared::stop_and_join`].
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub limits: WatchLimits,
    pub signal: Arc<SyncSignal>,
}

struct HubState {
    /// Every event up to here has been dispatched to synced watchers.
    rev: i64,
    /// The store's compaction point, as of the last compaction seen.
    compact_rev: i64,
    /// The events of revision `compact_rev`, captured before the
    /// compaction removed its tombstones from disk.
    at_compact: Option<Arc<RevEvents>>,
    /// Recent revisions with events: every one in `(cache_floor, rev]`.
    cache: VecDeque<Arc<RevEvents>>,
    cache_floor: i64,
    cache_bytes: usize,
    watchers: HashMap<u64, Watcher>,
    /// Synced single-key watchers by key.
    by_key: HashMap<Vec<u8>, BTreeSet<u64>>,
    /// Synced range watchers.
    ranged: BTreeSet<u64>,
    unsynced: BTreeSet<u64>,
    streams: HashMap<u64, StreamEntry>,
    next_id: u64,
    /// Bumped when the store's content is replaced: reads of the old
    /// content are discarded.
    epoch: u64,
}

struct StreamEntry {
    /// Client watch ID → hub-wide watcher ID.
    ids: HashMap<i64, u64>,
    next_auto: i64,
    /// How many of the stream's watchers are unsynced.
    unsynced: usize,
    /// A progress request waits for every watcher to be synced.
    progress_pending: bool,
    out: Arc<Out>,
}

/// A store's watch hub: makes [`WatchStream`]s. Cloning gives another
/// handle to the same hub; get it with [`crate::Store::watch_hub`].
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<HubShared>,
}

impl WatchHub {
    pub(crate) fn from_shared(shared: Arc<HubShared>) -> Self {
        WatchHub { shared }
    }

    /// A new stream; receive its messages with
    /// [`WatchStream::recv_timeout`] or [`WatchStream::try_recv_many`].
    pub fn stream(&self) -> WatchStream {
        WatchStream::new(self.shared.clone(), None)
    }

    /// A new stream that calls `waker` whenever it queues a message (for
    /// example to wake an async task, which then takes the messages with
    /// [`WatchStream::try_recv_many`]). `waker` must not block.
    pub fn stream_with_waker(&self, waker: impl Fn() + Send + Sync + 'static) -> WatchStream {
        WatchStream::new(self.shared.clone(), Some(Box::new(waker) as Waker))
    }

    /// The hub's revision: every event up to it has been dispatched.
    pub fn revision(&self) -> i64 {
        self.shared.revision()
    }

    /// How many watchers are synced and unsynced now.
    pub fn watcher_counts(&self) -> (usize, usize) {
        let st = self.shared.state.lock();
        (st.watchers.len() - st.unsynced.len(), st.unsynced.len())
    }
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("revision", &self.revision())
            .finish()
    }
}

impl HubShared {
    /// A hub at revision `rev`, with its syncer thread.
    pub fn start(inner: Weak<Inner>, limits: WatchLimits, rev: i64, compact_rev: i64) -> Arc<Self> {
        let shared = Arc::new(HubShared {
            state: Mutex::new(HubState {
                rev,
                compact_rev,
                at_compact: None,
                cache: VecDeque::new(),
                cache_floor: rev,
                cache_bytes: 0,
                watchers: HashMap::new(),
                by_key: HashMap::new(),
                ranged: BTreeSet::new(),
                unsynced: BTreeSet::new(),
                streams: HashMap::new(),
                next_id: 0,
                epoch: 0,
            }),
            inner,
            limits,
            syncer: Mutex::new(None),
            signal: Arc::new(SyncSignal {
                pending: Mutex::new(false),
                cv: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("mvcc-watch-sync".into())
            .spawn(move || run_syncer(s))
            .expect("spawn the watch syncer thread");
        *shared.syncer.lock() = Some(handle);
        shared
    }

    /// Stops the syncer and waits for it, so it holds no reference to the
    /// store afterwards (called when the last store handle goes).
    pub fn stop_and_join(&self) {
        self.stop();
        let handle = self.syncer.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Stops the syncer (the store is gone).
    pub fn stop(&self) {
        self.signal.stop.store(true, Ordering::Release);
        self.signal.notify();
    }

    pub fn revision(&self) -> i64 {
        self.state.lock().rev
    }

    // ----- streams and watchers -----

    pub fn add_stream(&self, out: Arc<Out>) -> u64 {
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.streams.insert(
            id,
            StreamEntry {
                ids: HashMap::new(),
                next_auto: 0,
                unsynced: 0,
                progress_pending: false,
                out,
            },
        );
        id
    }

    pub fn remove_stream(&self, sid: u64) {
        let mut st = self.state.lock();
        let gids: Vec<u64> = match st.streams.get(&sid) {
            Some(s) => s.ids.values().copied().collect(),
            None => return,
        };
        for g in gids {
            st.remove_watcher(g, None);
        }
        st.streams.remove(&sid);
    }

    pub fn watch(&self, sid: u64, opts: WatchOptions) -> Result<i64, WatchError> {
        if opts.start_revision < 0 {
            return Err(WatchError::Compacted);
        }
        let range = WatchRange::new(&opts.key, &opts.range_end);
        if range.is_empty() {
            return Err(WatchError::EmptyRange);
        }
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let rev = st.rev;
        let gid = st.next_id;
        let stream = st.streams.get_mut(&sid).expect("the stream is registered");
        let id = if opts.watch_id == 0 {
            // etcd 3.5: the lowest free ID from the stream's counter on.
            while stream.ids.contains_key(&stream.next_auto) {
                stream.next_auto += 1;
            }
            stream.next_auto += 1;
            stream.next_auto - 1
        } else if stream.ids.contains_key(&opts.watch_id) {
            return Err(WatchError::DuplicateId);
        } else {
            opts.watch_id
        };
        st.next_id += 1;
        stream.ids.insert(id, gid);
        stream.unsynced += 1;
        stream.out.push_created(id, rev, opts.fragment);
        let synced = opts.start_revision == 0 || opts.start_revision > rev;
        st.watchers.insert(
            gid,
            Watcher {
                stream: sid,
                watch_id: id,
                range,
                no_put: opts.no_put,
                no_delete: opts.no_delete,
                prev_kv: opts.prev_kv,
                fragment: opts.fragment,
                next_rev: if opts.start_revision == 0 {
                    rev + 1
                } else {
                    opts.start_revision
                },
                synced: false,
                out: stream.out.clone(),
            },
        );
        st.unsynced.insert(gid);
        if synced {
            st.make_synced(gid);
        } else {
            drop(guard);
            self.signal.notify();
        }
        Ok(id)
    }

    pub fn cancel(&self, sid: u64, watch_id: i64) -> bool {
        let mut st = self.state.lock();
        let Some(gid) = st
            .streams
            .get(&sid)
            .and_then(|s| s.ids.get(&watch_id))
            .copied()
        else {
            return false;
        };
        st.remove_watcher(gid, Some(0));
        true
    }

    pub fn progress_all(&self, sid: u64) {
        let mut st = self.state.lock();
        let rev = st.rev;
        if let Some(s) = st.streams.get_mut(&sid) {
            if s.unsynced == 0 {
                s.out.push_progress(-1, rev);
            } else {
                s.progress_pending = true;
            }
        }
    }

    pub fn progress_one(&self, sid: u64, watch_id: i64) {
        let st = self.state.lock();
        let Some(gid) = st.streams.get(&sid).and_then(|s| s.ids.get(&watch_id)) else {
            return;
        };
        if let Some(w) = st.watchers.get(gid) {
            if w.synced {
                w.out.push_progress(watch_id, st.rev);
            }
        }
    }

    // ----- the write path -----

    /// Dispatches the events of newly committed revisions (ascending) and
    /// advances the hub to `new_rev`.
    pub fn notify(&self, revs: Vec<RevEvents>, new_rev: i64) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let mut fell_behind = false;
        for re in revs {
            if re.rev <= st.rev {
                continue;
            }
            let re = Arc::new(re);
            // Which synced watchers want which events of this revision.
            let mut hits: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, (ev, _)) in re.events.iter().enumerate() {
                let Some(kv) = &ev.kv else { continue };
                if let Some(set) = st.by_key.get(&kv.key) {
                    for g in set {
                        hits.entry(*g).or_default().push(i);
                    }
                }
                for g in &st.ranged {
                    if st.watchers[g].range.contains(&kv.key) {
                        hits.entry(*g).or_default().push(i);
                    }
                }
            }
            for (g, idx) in hits {
                let w = st.watchers.get_mut(&g).expect("indexed watchers exist");
                if re.rev < w.next_rev {
                    continue; // it starts at a later revision
                }
                let mut evs = Vec::new();
                let mut bytes = 0;
                for i in idx {
                    let (ev, size) = &re.events[i];
                    if w.passes(ev) {
                        evs.push(ev.clone());
                        bytes += size;
                    }
                }
                if !evs.is_empty() && !w.push(g, re.rev, evs, bytes) {
                    st.make_unsynced(g, re.rev);
                    fell_behind = true;
                }
            }
            st.rev = re.rev;
            st.cache_push(re, &self.limits);
        }
        st.rev = st.rev.max(new_rev);
        drop(guard);
        if fell_behind {
            self.signal.notify();
        }
    }

    /// A compaction at `rev` was applied: record it, with the events of
    /// revision `rev` (its tombstones are about to be removed from disk).
    pub fn compacted(&self, inner: &Inner, rev: i64) {
        let cached = {
            let st = self.state.lock();
            (rev > st.cache_floor && rev <= st.rev).then(|| {
                st.cache
                    .iter()
                    .find(|r| r.rev == rev)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RevEvents::new(rev)))
            })
        };
        let captured = cached.or_else(|| match history::read_revision(inner, rev) {
            Ok(re) if re.bytes <= self.limits.compact_capture_bytes => Some(Arc::new(re)),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(revision = rev, error = %e, "watch: reading the compacted revision");
                None
            }
        });
        let mut st = self.state.lock();
        st.compact_rev = rev;
        st.at_compact = captured;
        drop(st);
        self.signal.notify();
    }

    /// The store's content was replaced (snapshot install): every watcher
    /// catches up again against the new content.
    pub fn reset(&self, rev: i64, compact_rev: i64) {
        let mut st = self.state.lock();
        st.epoch += 1;
        let old = st.rev;
        let synced: Vec<u64> = st
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(g, _)| *g)
            .collect();
        for g in synced {
            let next = st.watchers[&g].next_rev.max(old + 1);
            st.make_unsynced(g, next);
        }
        st.rev = rev;
        st.compact_rev = compact_rev;
        st.at_compact = None;
        st.cache.clear();
        st.cache_bytes = 0;
        st.cache_floor = rev;
        drop(st);
        self.signal.notify();
    }

    // ----- the syncer -----

    /// One round of catching up unsynced watchers; true if anything moved.
    fn sync_round(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        let limits = &self.limits;
        let mut progressed = false;
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let candidates: Vec<u64> = st
            .unsynced
            .iter()
            .copied()
            .filter(|g| st.watchers[g].out.has_room(*g))
            .take(MAX_WATCHERS_PER_SYNC)
            .collect();
        let mut group: Vec<(u64, i64, WatchRange)> = Vec::new();
        for g in candidates {
            let next = st.watchers[&g].next_rev;
            if next > st.rev {
                // Nothing to read (a future start, or after an install).
                st.make_synced(g);
                progressed = true;
                continue;
            }
            let captured = st.at_compact.as_ref().filter(|c| c.rev == next).cloned();
            if next < st.compact_rev || (next == st.compact_rev && captured.is_none()) {
                st.cancel_compacted(g);
                progressed = true;
                continue;
            }
            if let Some(cap) = captured {
                let w = st.watchers.get_mut(&g).expect("candidate exists");
                let done = w.deliver(g, limits, [&*cap], cap.rev);
                progressed |= w.next_rev != next;
                if !done {
                    continue;
                }
                if w.next_rev > st.rev {
                    st.make_synced(g);
                    continue;
                }
            }
            let w = &st.watchers[&g];
            if w.next_rev > st.cache_floor {
                progressed |= st.catch_up_from_cache(g, limits);
                continue;
            }
            group.push((g, w.next_rev, w.range.clone()));
        }
        if group.is_empty() {
            return progressed;
        }
        // Read up to the hub's revision now, from a snapshot taken under
        // the lock: a compaction not yet seen by the hub has not scheduled
        // any removal yet, so the snapshot holds every revision read.
        let epoch = st.epoch;
        let end = st.rev;
        let snap = inner.db.snapshot();
        drop(guard);

        let from = group.iter().map(|(_, n, _)| *n).min().expect("non-empty");
        let upto = end.min(from.saturating_add(limits.sync_revisions.max(1) - 1));
        let scanned = match history::scan(&inner, &snap, from, upto, limits.sync_bytes, |k| {
            group.iter().any(|(_, _, r)| r.contains(k))
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "watch: reading history to catch up watchers");
                return progressed;
            }
        };
        drop(snap);

        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.epoch != epoch {
            return true; // the content was replaced meanwhile
        }
        for (g, next, _) in group {
            let Some(w) = st.watchers.get_mut(&g) else {
                continue; // canceled meanwhile
            };
            if w.synced || w.next_rev != next || next > scanned.end {
                continue;
            }
            let done = w.deliver(g, limits, &scanned.revs, scanned.end);
            progressed |= w.next_rev != next;
            if !done {
                continue;
            }
            let next = w.next_rev;
            if next > st.rev {
                st.make_synced(g);
            } else if next > st.cache_floor {
                // The revisions committed during the read are in the cache.
                st.catch_up_from_cache(g, limits);
            }
        }
        progressed
    }
}

fn run_syncer(shared: Arc<HubShared>) {
    loop {
        if shared.inner.strong_count() == 0 {
            // The store is gone: so is its hub.
            return;
        }
        if shared.signal.stop.load(Ordering::Acquire) {
            return;
        }
        if !shared.sync_round() {
            shared.signal.wait(SYNC_POLL);
        }
    }
}

impl HubState {
    fn stream_mut(&mut self, sid: u64) -> Option<&mut StreamEntry> {
        self.streams.get_mut(&sid)
    }

    /// Makes an unsynced watcher synced: it has seen everything up to `rev`.
    fn make_synced(&mut self, gid: u64) {
        let rev = self.rev;
        let Some(w) = self.watchers.get_mut(&gid) else {
            return;
        };
        if w.synced {
            return;
        }
        w.synced = true;
        w.next_rev = w.next_rev.max(rev + 1);
        let sid = w.stream;
        match w.range.single() {
            Some(k) => {
                self.by_key.entry(k.to_vec()).or_default().insert(gid);
            }
            None => {
                self.ranged.insert(gid);
            }
        }
        self.unsynced.remove(&gid);
        if let Some(s) = self.stream_mut(sid) {
            s.unsynced -= 1;
        }
        self.maybe_progress(sid);
    }

    /// Makes a synced watcher unsynced: it has seen everything before `next`.
    fn make_unsynced(&mut self, gid: u64, next: i64) {
        let Some(w) = self.watchers.get_mut(&gid) else {
            return;
        };
        w.next_rev = next;
        if !w.synced {
            return;
        }
        w.synced = false;
        let sid = w.stream;
        self.unindex(gid);
        self.unsynced.insert(gid);
        if let Some(s) = self.stream_mut(sid) {
            s.unsynced += 1;
        }
    }

    fn unindex(&mut self, gid: u64) {
        let Some(w) = self.watchers.get(&gid) else {
            return;
        };
        match w.range.single() {
            Some(k) => {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(&gid);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            None => {
                self.ranged.remove(&gid);
            }
        }
    }

    /// Removes a watcher; with `canceled` (a compaction revision, or 0),
    /// queues its `Canceled` message (before any progress notification
    /// the removal allows).
    fn remove_watcher(&mut self, gid: u64, canceled: Option<i64>) -> Option<Watcher> {
        if self.watchers.get(&gid)?.synced {
            self.unindex(gid);
        }
        let w = self.watchers.remove(&gid)?;
        if let Some(compact_revision) = canceled {
            w.out.push_canceled(w.watch_id, self.rev, compact_revision);
        }
        let was_unsynced = self.unsynced.remove(&gid);
        if let Some(s) = self.stream_mut(w.stream) {
            s.ids.remove(&w.watch_id);
            if was_unsynced {
                s.unsynced -= 1;
            }
        }
        w.out.forget(gid);
        self.maybe_progress(w.stream);
        Some(w)
    }

    /// Cancels a watcher that needs compacted history, with the first
    /// revision it can resume from (see the module documentation).
    fn cancel_compacted(&mut self, gid: u64) {
        let c = self.compact_rev;
        let captured = self.at_compact.as_ref().is_some_and(|a| a.rev == c);
        self.remove_watcher(gid, Some(if captured { c } else { c + 1 }));
    }

    /// Answers the stream's pending progress request once all its
    /// watchers are synced.
    fn maybe_progress(&mut self, sid: u64) {
        let rev = self.rev;
        if let Some(s) = self.stream_mut(sid) {
            if s.progress_pending && s.unsynced == 0 {
                s.progress_pending = false;
                s.out.push_progress(-1, rev);
            }
        }
    }

    fn cache_push(&mut self, re: Arc<RevEvents>, limits: &WatchLimits) {
        self.cache_bytes += re.bytes;
        self.cache.push_back(re);
        while self.cache.len() > limits.cache_revisions || self.cache_bytes > limits.cache_bytes {
            let Some(old) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= old.bytes;
            self.cache_floor = old.rev;
        }
    }

    /// Queues the revisions from an unsynced watcher's `next_rev` (above
    /// `cache_floor`) to `rev` from the cache, and makes it synced if they
    /// all fit. True if the watcher moved.
    fn catch_up_from_cache(&mut self, gid: u64, limits: &WatchLimits) -> bool {
        let rev = self.rev;
        let Some(w) = self.watchers.get_mut(&gid) else {
            return false;
        };
        debug_assert!(w.next_rev > self.cache_floor);
        let before = w.next_rev;
        let start = self.cache.partition_point(|r| r.rev < w.next_rev);
        let done = w.deliver(gid, limits, self.cache.range(start..).map(|r| &**r), rev);
        if done {
            self.make_synced(gid);
            return true;
        }
        self.watchers[&gid].next_rev != before
    }
}
