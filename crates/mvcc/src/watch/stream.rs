//! A watch stream: the watchers of one client stream and their shared,
//! ordered output queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::mvccpb::Event;
use parking_lot::{Condvar, Mutex};

use super::history;
use super::hub::{HubShared, SyncSignal};
use super::{MessageKind, WatchError, WatchLimits, WatchMessage, WatchOptions};

/// Called whenever a message is queued (e.g. to wake an async task).
pub(crate) type Waker = Box<dyn Fn() + Send + Sync>;

/// The output queue of one stream. Control messages (created, canceled,
/// progress) are always queued; events count against their watcher's
/// budget ([`WatchLimits::pending_bytes`] and `pending_messages`).
///
/// Lock order: the hub's state, then this queue.
pub(crate) struct Out {
    queue: Mutex<Queue>,
    ready: Condvar,
    waker: Option<Waker>,
    signal: Arc<SyncSignal>,
    limits: WatchLimits,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Per watcher (hub-wide ID): what it has queued.
    budgets: HashMap<u64, Budget>,
}

#[derive(Default)]
struct Budget {
    messages: usize,
    bytes: usize,
    /// A push failed for lack of room: signal the hub's syncer when there
    /// is room again.
    blocked: bool,
}

struct Item {
    gid: u64,
    watch_id: i64,
    revision: i64,
    kind: ItemKind,
    bytes: usize,
    prev_kv: bool,
    fragment: bool,
}

enum ItemKind {
    Refused(String),
    Created,
    Canceled(i64),
    Events(Vec<Arc<Event>>),
    Progress,
}

impl Out {
    pub fn new(waker: Option<Waker>, signal: Arc<SyncSignal>, limits: WatchLimits) -> Self {
        Out {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            waker,
            signal,
            limits,
        }
    }

    fn wake(&self) {
        self.ready.notify_all();
        if let Some(w) = &self.waker {
            w();
        }
    }

    pub fn push_created(&self, watch_id: i64, revision: i64, fragment: bool) {
        self.push_control(watch_id, revision, ItemKind::Created, fragment);
    }

    pub fn push_canceled(&self, watch_id: i64, revision: i64, compact_revision: i64) {
        self.push_control(
            watch_id,
            revision,
            ItemKind::Canceled(compact_revision),
            false,
        );
    }

    pub fn push_progress(&self, watch_id: i64, revision: i64) {
        self.push_control(watch_id, revision, ItemKind::Progress, false);
    }

    pub fn push_refused(&self, revision: i64, reason: String) {
        self.push_control(-1, revision, ItemKind::Refused(reason), false);
    }

    fn push_control(&self, watch_id: i64, revision: i64, kind: ItemKind, fragment: bool) {
        self.queue.lock().items.push_back(Item {
            gid: u64::MAX,
            watch_id,
            revision,
            kind,
            bytes: 0,
            prev_kv: false,
            fragment,
        });
        self.wake();
    }

    /// True if the watcher may queue more events now (a blocked watcher
    /// waits for the consumer to take one of its messages).
    pub fn has_room(&self, gid: u64) -> bool {
        let q = self.queue.lock();
        q.budgets.get(&gid).is_none_or(|b| {
            !b.blocked
                && (b.messages == 0
                    || (b.messages < self.limits.pending_messages
                        && b.bytes < self.limits.pending_bytes))
        })
    }

    /// Queues events of watcher `gid` if its budget allows (a watcher with
    /// nothing queued may always queue one message). Merges them into the
    /// last queued message when that is the same watcher's and small
    /// enough. On refusal the watcher is marked blocked.
    #[allow(clippy::too_many_arguments)]
    pub fn try_push_events(
        &self,
        gid: u64,
        watch_id: i64,
        revision: i64,
        events: Vec<Arc<Event>>,
        bytes: usize,
        prev_kv: bool,
        fragment: bool,
    ) -> bool {
        let mut q = self.queue.lock();
        let q = &mut *q;
        let b = q.budgets.entry(gid).or_default();
        let merge = match q.items.back() {
            Some(last) => {
                last.gid == gid
                    && matches!(last.kind, ItemKind::Events(_))
                    && last.bytes + bytes <= self.limits.message_bytes
            }
            None => false,
        };
        let fits = b.messages == 0
            || (b.bytes + bytes <= self.limits.pending_bytes
                && (merge || b.messages < self.limits.pending_messages));
        if !fits {
            b.blocked = true;
            return false;
        }
        b.bytes += bytes;
        if merge {
            let last = q.items.back_mut().expect("checked");
            if let ItemKind::Events(evs) = &mut last.kind {
                evs.extend(events);
            }
            last.bytes += bytes;
            last.revision = revision;
        } else {
            b.messages += 1;
            q.items.push_back(Item {
                gid,
                watch_id,
                revision,
                kind: ItemKind::Events(events),
                bytes,
                prev_kv,
                fragment,
            });
        }
        self.wake();
        true
    }

    /// Forgets a removed watcher's budget (its queued messages stay).
    pub fn forget(&self, gid: u64) {
        self.queue.lock().budgets.remove(&gid);
    }

    /// Takes the next message; signals the syncer when this gives room to
    /// a blocked watcher.
    fn pop(&self) -> Option<Item> {
        let mut q = self.queue.lock();
        let item = q.items.pop_front()?;
        let mut unblocked = false;
        if matches!(item.kind, ItemKind::Events(_)) {
            if let Some(b) = q.budgets.get_mut(&item.gid) {
                b.messages -= 1;
                b.bytes -= item.bytes;
                if b.blocked {
                    b.blocked = false;
                    unblocked = true;
                }
            }
        }
        drop(q);
        if unblocked {
            self.signal.notify();
        }
        Some(item)
    }

    fn wait(&self, deadline: Instant) -> bool {
        let mut q = self.queue.lock();
        while q.items.is_empty() {
            if self.ready.wait_until(&mut q, deadline).timed_out() {
                return !q.items.is_empty();
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }
}

/// The watchers of one client stream, with one ordered output.
///
/// Messages come out in the order the client must see them: a watcher's
/// `Created` before its events, its events in revision order with no gap or
/// duplicate, a progress notification after every event it covers, and
/// `Canceled` last. Dropping the stream removes its watchers.
pub struct WatchStream {
    hub: Arc<HubShared>,
    id: u64,
    out: Arc<Out>,
}

impl WatchStream {
    pub(crate) fn new(hub: Arc<HubShared>, waker: Option<Waker>) -> WatchStream {
        let out = Arc::new(Out::new(waker, hub.signal.clone(), hub.limits));
        let id = hub.add_stream(out.clone());
        WatchStream { hub, id, out }
    }

    /// Creates a watcher and returns its watch ID. Its `Created` message is
    /// queued before any of its events.
    ///
    /// # Errors
    /// A duplicate client watch ID, an empty range or a negative start
    /// revision (nothing is queued then).
    pub fn watch(&self, opts: WatchOptions) -> Result<i64, WatchError> {
        self.hub.watch(self.id, opts)
    }

    /// Queues the answer to a create request that was refused (by
    /// [`WatchStream::watch`] or by the caller's own checks), in order with
    /// the stream's other messages: watch ID -1, the hub's revision, and
    /// `reason`.
    pub fn refuse(&self, reason: impl Into<String>) {
        self.out.push_refused(self.hub.revision(), reason.into());
    }

    /// Cancels a watcher: its `Canceled` message is queued after its last
    /// events. False if the stream has no such watcher.
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.hub.cancel(self.id, watch_id)
    }

    /// Asks for a progress notification of the whole stream (watch ID -1):
    /// queued at once if every watcher of the stream is synced, otherwise
    /// as soon as they all are. Its revision is the hub's revision then, so
    /// every later event of these watchers is newer. One pending request
    /// covers any number of further requests.
    pub fn request_progress(&self) {
        self.hub.progress_all(self.id);
    }

    /// Asks for a progress notification of one watcher; sent only if it is
    /// synced now (etcd's `progress_notify` ticks).
    pub fn request_watcher_progress(&self, watch_id: i64) {
        self.hub.progress_one(self.id, watch_id);
    }

    /// The hub's revision: every event up to it has been handed to synced
    /// watchers.
    pub fn revision(&self) -> i64 {
        self.hub.revision()
    }

    /// Messages queued and not yet taken.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Takes up to `max` queued messages without waiting, filling `prev_kv`
    /// where the watcher asked for it (this reads the store).
    pub fn try_recv_many(&self, max: usize) -> Vec<WatchMessage> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.out.pop() else { break };
            out.push(self.finish(item));
        }
        out
    }

    /// Takes the next message, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<WatchMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.out.pop() {
                return Some(self.finish(item));
            }
            if !self.out.wait(deadline) {
                return None;
            }
        }
    }

    fn finish(&self, item: Item) -> WatchMessage {
        let kind = match item.kind {
            ItemKind::Created => MessageKind::Created,
            ItemKind::Canceled(c) => MessageKind::Canceled {
                compact_revision: c,
            },
            ItemKind::Progress => MessageKind::Progress,
            ItemKind::Refused(reason) => MessageKind::Refused(reason),
            ItemKind::Events(evs) => {
                let mut evs: Vec<Event> = evs.iter().map(|e| (**e).clone()).collect();
                if item.prev_kv {
                    if let Some(inner) = self.hub.inner.upgrade() {
                        history::fill_prev_kv(&inner, &mut evs);
                    }
                }
                MessageKind::Events(evs)
            }
        };
        WatchMessage {
            watch_id: item.watch_id,
            revision: item.revision,
            kind,
            fragment: item.fragment,
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.remove_stream(self.id);
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").field("id", &self.id).finish()
    }
}
