//! Watches: the events of committed write transactions, delivered to
//! watchers of key ranges from any retained revision on, in revision order,
//! with no gap and no duplicate (etcd's `watchable_store.go` semantics).
//!
//! # How it fits together
//! - `WriteTxn` records every change of a batch as it is made
//!   (a `Change` per put or deletion, in revision order) when the store
//!   has a [`WatchHub`].
//! - After the batch is written and `committed_rev` published, the commit
//!   path hands the batch's events, grouped per main revision, to the hub
//!   (`publish`). Nothing a watcher sees is ever not durable.
//! - A watcher is *synced* when it has seen every event up to the hub's
//!   revision: the hub pushes each new revision's matching events into its
//!   stream's queue, bounded per watcher. A watcher that starts in the past,
//!   or whose budget is exhausted, is *unsynced*: a background thread
//!   catches it up from the hub's cache of recent revisions or from the
//!   `kv` column family (through a RocksDB snapshot, a bounded chunk at a
//!   time) and moves it back to synced under the hub's lock, exactly at the
//!   hub's revision (see `hub.rs`).
//! - A [`WatchStream`] is one client stream: its watchers share one ordered
//!   output queue of [`WatchMessage`]s (created, events, progress,
//!   canceled), which the server drains.
//!
//! The hub lives in the store (created on first use); the store's last
//! handle stops and joins its syncer thread.

mod history;
pub(crate) mod hub;
mod stream;
mod watcher;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use ballast_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

use crate::revision::Revision;
use crate::store::{Inner, Store};

pub use hub::WatchHub;
pub use stream::WatchStream;

/// One change of a write transaction, recorded for watchers. A put's new
/// version is taken from the batch's overlay when the batch commits.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// A put stored at this revision.
    Put(Revision),
    /// A deletion (tombstone) of the key at this revision.
    Delete(Revision, Vec<u8>),
}

/// What a watcher watches and how (etcd's `WatchCreateRequest`, as the
/// engine takes it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// The client's watch ID; 0 lets the stream pick the lowest unused one
    /// (etcd's `AutoWatchID`).
    pub watch_id: i64,
    /// First key of the range (etcd's conventions: see [`crate::KeyRange`]).
    pub key: Vec<u8>,
    /// End of the range: empty = the single key `key`, `"\0"` = every key
    /// from `key` on, otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// First revision to report; 0 = the next revision. Events before it
    /// are not reported.
    pub start_revision: i64,
    /// Leave out PUT events.
    pub no_put: bool,
    /// Leave out DELETE events.
    pub no_delete: bool,
    /// Fill each event's `prev_kv` (except for creations) with the key's
    /// version before it, when that is still retained.
    pub prev_kv: bool,
    /// Passed through to the watcher's messages ([`WatchMessage::fragment`]):
    /// the client accepts responses split in fragments.
    pub fragment: bool,
}

/// Why a watch could not be created. The messages are etcd's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The stream already has a watcher with the client's watch ID.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    /// `range_end` is not after `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// A negative start revision (etcd answers it as compacted).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
}

/// One message of a [`WatchStream`], in the order the client must see it.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchMessage {
    /// The watcher's ID; -1 for a progress notification of the whole stream.
    pub watch_id: i64,
    /// The revision for the response header: the store revision when the
    /// watcher was created or canceled; for events, the revision up to which
    /// the watcher has now seen everything; for progress, a revision such
    /// that every later event of the watcher (or stream) is newer.
    pub revision: i64,
    /// What happened.
    pub kind: MessageKind,
    /// The watcher asked for fragmented responses.
    pub fragment: bool,
}

/// The kinds of [`WatchMessage`].
#[derive(Clone, Debug, PartialEq)]
pub enum MessageKind {
    /// The watcher exists now; its events follow.
    Created,
    /// The watcher is gone: canceled by the client (`compact_revision` 0),
    /// or because the history it needs was compacted (etcd's
    /// `ErrCompacted`; `compact_revision` is the first revision a watch can
    /// start from: the compaction point, or the one after it when the hub
    /// no longer holds the compaction point's events).
    Canceled {
        /// The first revision a watch can start from, or 0.
        compact_revision: i64,
    },
    /// Events in revision order; those of one revision are never split
    /// between messages.
    Events(Vec<Event>),
    /// No events: a progress notification at `revision`.
    Progress,
    /// A create request was refused ([`WatchStream::refuse`]); etcd answers
    /// it as created and canceled at once, watch ID -1, with this reason.
    Refused(String),
}

/// Memory bounds and batch sizes of a hub. The defaults suit a server.
#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// Bytes of events a watcher may have queued and not yet taken; beyond
    /// it the watcher falls back to catching up from history.
    pub pending_bytes: usize,
    /// Messages a watcher may have queued and not yet taken.
    pub pending_messages: usize,
    /// Events of several revisions are merged into one message up to this
    /// size (a single revision may exceed it).
    pub message_bytes: usize,
    /// Recent revisions kept in memory for catching up.
    pub cache_revisions: usize,
    /// Bytes of recent events kept in memory for catching up.
    pub cache_bytes: usize,
    /// Revisions read from disk per catch-up step (etcd: 1000).
    pub sync_revisions: i64,
    /// Bytes of matching events read from disk per catch-up step.
    pub sync_bytes: usize,
    /// Largest compacted revision kept in memory so that watchers can still
    /// start exactly at the compaction point (see `HubState::at_compact`).
    pub compact_capture_bytes: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            pending_bytes: 4 << 20,
            pending_messages: 1024,
            message_bytes: 1 << 20,
            cache_revisions: 4096,
            cache_bytes: 8 << 20,
            sync_revisions: 1000,
            sync_bytes: 8 << 20,
            compact_capture_bytes: 4 << 20,
        }
    }
}

/// The events of one main revision, in sub-revision order, each with its
/// size for the memory bounds.
#[derive(Debug)]
pub(crate) struct RevEvents {
    pub rev: i64,
    pub events: Vec<(Arc<Event>, usize)>,
    pub bytes: usize,
}

impl RevEvents {
    pub fn new(rev: i64) -> Self {
        RevEvents {
            rev,
            events: Vec::new(),
            bytes: 0,
        }
    }

    pub fn push(&mut self, ev: Event) {
        let size = event_size(&ev);
        self.bytes += size;
        self.events.push((Arc::new(ev), size));
    }
}

/// Approximate bytes an event takes in memory and on the wire.
pub(crate) fn event_size(ev: &Event) -> usize {
    ev.kv.as_ref().map_or(0, |kv| kv.encoded_len()) + 16
}

/// A PUT event with the new version.
pub(crate) fn put_event(kv: KeyValue) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// A DELETE event: the key and the deletion's revision (etcd's).
pub(crate) fn delete_event(key: Vec<u8>, rev: i64) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key,
            mod_revision: rev,
            ..Default::default()
        }),
        prev_kv: None,
    }
}

impl Store {
    /// The store's watch hub, created on first use with default limits.
    /// Every handle to the store shares it.
    pub fn watch_hub(&self) -> WatchHub {
        self.watch_hub_with_limits(WatchLimits::default())
    }

    /// Like [`Store::watch_hub`]; `limits` apply only if the hub does not
    /// exist yet.
    pub fn watch_hub_with_limits(&self, limits: WatchLimits) -> WatchHub {
        let inner = &self.inner;
        // Under the writer lock no batch is in flight, so the hub starts at
        // the committed revision and every later batch collects its changes.
        let _writer = inner.writer.lock();
        let hub = inner.watch.get_or_init(|| {
            let rev = inner
                .committed_rev
                .load(std::sync::atomic::Ordering::Acquire);
            let compact_rev = inner.index.read().compact_rev;
            hub::HubShared::start(Arc::downgrade(inner), limits, rev, compact_rev)
        });
        WatchHub::from_shared(hub.clone())
    }
}

// ----- hooks called by the write path -----

/// A change collector for a new batch: `Some` when the store has a hub.
/// (A hub is created only under the writer lock, so it cannot appear in
/// the middle of a batch.)
pub(crate) fn collector(inner: &Inner) -> Option<Vec<Change>> {
    inner.watch.get().map(|_| Vec::new())
}

/// Hands a committed batch's changes to the hub: called after the batch is
/// durable and `committed_rev` is `rev`, under the writer lock.
pub(crate) fn publish(
    inner: &Inner,
    rev: i64,
    changes: Option<Vec<Change>>,
    mut overlay: HashMap<Revision, KeyValue>,
) {
    let Some(hub) = inner.watch.get() else {
        return;
    };
    let mut revs: Vec<RevEvents> = Vec::new();
    for change in changes.unwrap_or_default() {
        let (r, ev) = match change {
            Change::Put(r) => match overlay.remove(&r) {
                Some(kv) => (r, put_event(kv)),
                None => {
                    tracing::error!(revision = %r, "watch: a put of the batch is missing");
                    continue;
                }
            },
            Change::Delete(r, key) => (r, delete_event(key, r.main)),
        };
        match revs.last_mut() {
            Some(last) if last.rev == r.main => last.push(ev),
            _ => {
                let mut re = RevEvents::new(r.main);
                re.push(ev);
                revs.push(re);
            }
        }
    }
    hub.notify(revs, rev);
}

/// Called when a compaction at `rev` has been committed and applied to the
/// index, before its old versions are scheduled for removal.
pub(crate) fn compacted(inner: &Inner, rev: i64) {
    if let Some(hub) = inner.watch.get() {
        hub.compacted(inner, rev);
    }
}

/// Called when the store's content was replaced by a snapshot image (under
/// the writer lock): every watcher must catch up again.
pub(crate) fn installed(inner: &Inner, rev: i64, compact_rev: i64) {
    if let Some(hub) = inner.watch.get() {
        hub.reset(rev, compact_rev);
    }
}
