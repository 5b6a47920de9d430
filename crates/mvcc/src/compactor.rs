//! Physical compaction: removing old versions from disk in the background.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};
use rocksdb::{IteratorMode, WriteBatch};

use crate::revision::Revision;
use crate::schema::{i64_bytes, CF_KV, CF_META, META_FINISHED_COMPACT};
use crate::store::Inner;

/// How many old versions one delete batch removes.
const DELETES_PER_BATCH: usize = 10_000;

/// Removes the versions a compaction made unreachable, one compaction at a
/// time, in revision order, and records when each is done.
///
/// A crash mid-way leaves the scheduled compaction recorded and the finished
/// one behind it; the store resumes the work when it opens.
pub(crate) struct Compactor {
    state: Mutex<CompactorState>,
    changed: Condvar,
    /// Held while a compaction job runs; [`Compactor::pause`] takes it.
    work: Mutex<()>,
}

struct CompactorState {
    /// Jobs with the epoch they were scheduled in.
    queue: VecDeque<(u64, i64, HashSet<Revision>)>,
    /// Bumped by [`Compactor::pause`]: jobs of an older epoch are stale.
    epoch: u64,
    finished: i64,
    stopped: bool,
}

impl Compactor {
    pub fn new(finished: i64) -> Self {
        Compactor {
            state: Mutex::new(CompactorState {
                queue: VecDeque::new(),
                epoch: 0,
                finished,
                stopped: false,
            }),
            changed: Condvar::new(),
            work: Mutex::new(()),
        }
    }

    /// Waits for the running job to end and drops queued ones; no job runs
    /// until the guard is dropped. The caller reschedules what is still due.
    pub fn pause(&self) -> parking_lot::MutexGuard<'_, ()> {
        let guard = self.work.lock();
        let mut st = self.state.lock();
        st.queue.clear();
        st.epoch += 1;
        guard
    }

    /// Records where physical compaction stands (after a snapshot install).
    pub fn set_finished(&self, finished: i64) {
        self.state.lock().finished = finished;
        self.changed.notify_all();
    }

    /// Starts the background thread. It holds the store only while it
    /// works on a compaction; the returned guard stops and joins it.
    pub fn start(inner: &Arc<Inner>) -> CompactorGuard {
        let weak = Arc::downgrade(inner);
        let shared = inner.compactor.clone();
        let handle = std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || run(shared, weak))
            .expect("spawn compactor thread");
        CompactorGuard {
            compactor: inner.compactor.clone(),
            handle: Some(handle),
        }
    }

    /// Queues the removal of every version at or before `rev` not in `keep`.
    pub fn schedule(&self, rev: i64, keep: HashSet<Revision>) {
        let mut st = self.state.lock();
        let epoch = st.epoch;
        st.queue.push_back((epoch, rev, keep));
        drop(st);
        self.changed.notify_all();
    }

    /// Blocks until compaction `rev` has finished (or the compactor stopped).
    pub fn wait_finished(&self, rev: i64) {
        let mut st = self.state.lock();
        while st.finished < rev && !st.stopped {
            self.changed.wait(&mut st);
        }
    }

    fn stop(&self) {
        self.state.lock().stopped = true;
        self.changed.notify_all();
    }
}

fn run(shared: Arc<Compactor>, weak: Weak<Inner>) {
    loop {
        let (epoch, rev, keep) = {
            let mut st = shared.state.lock();
            loop {
                if st.stopped {
                    return;
                }
                if let Some(job) = st.queue.pop_front() {
                    break job;
                }
                shared.changed.wait(&mut st);
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        let work = shared.work.lock();
        {
            let st = shared.state.lock();
            if st.epoch != epoch || st.finished >= rev {
                continue;
            }
        }
        let res = remove_old_versions(&inner, &shared, rev, &keep);
        drop(work);
        match res {
            Ok(Some(removed)) => {
                tracing::debug!(revision = rev, removed, "compaction finished");
                shared.state.lock().finished = rev;
                shared.changed.notify_all();
            }
            Ok(None) => return,
            Err(e) => {
                tracing::error!(revision = rev, error = %e, "compaction failed; it resumes at the next start");
                shared.stop();
                return;
            }
        }
    }
}

/// Stops the compactor thread and waits for it when the last store handle
/// goes, so the database is closed when the store is dropped.
pub(crate) struct CompactorGuard {
    compactor: Arc<Compactor>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CompactorGuard {
    fn drop(&mut self) {
        self.compactor.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Deletes every stored version at or before `rev` that is not in `keep`,
/// then records the compaction as finished.
/// Returns `None` if the compactor was stopped first (the work resumes at
/// the next start).
fn remove_old_versions(
    inner: &Inner,
    shared: &Compactor,
    rev: i64,
    keep: &HashSet<Revision>,
) -> Result<Option<usize>, rocksdb::Error> {
    let kv = inner.cf(CF_KV);
    let end = Revision::new(rev + 1, 0).to_key(false);
    let mut removed = 0;
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    for item in inner.db.iterator_cf(kv, IteratorMode::Start) {
        let (k, _) = item?;
        if k.as_ref() >= end.as_slice() {
            break;
        }
        match Revision::from_key(&k) {
            Some((r, _)) if keep.contains(&r) => continue,
            _ => {}
        }
        batch.delete_cf(kv, &k);
        in_batch += 1;
        if in_batch == DELETES_PER_BATCH {
            inner.db.write(std::mem::take(&mut batch))?;
            removed += in_batch;
            in_batch = 0;
            if shared.state.lock().stopped {
                return Ok(None);
            }
        }
    }
    removed += in_batch;
    batch.put_cf(inner.cf(CF_META), META_FINISHED_COMPACT, i64_bytes(rev));
    inner.db.write_opt(batch, &inner.write_opts)?;
    Ok(Some(removed))
}
