//! One watcher: its key range, filters and position in history, and the
//! delivery of events to its stream.

use std::sync::Arc;

use ballast_proto::mvccpb::{event::EventType, Event};

use super::stream::Out;
use super::{RevEvents, WatchLimits};
use crate::index::KeyRange;

/// Revisions merged into one message at most (etcd's `watchBatchMaxRevs`).
const MAX_REVS_PER_MESSAGE: usize = 1000;

/// An owned key range with etcd's conventions (see [`KeyRange`]).
#[derive(Clone, Debug)]
pub(crate) struct WatchRange {
    pub start: Vec<u8>,
    /// `None`: the single key `start`; `Some(empty)`: every key from
    /// `start` on; otherwise `[start, end)`.
    pub end: Option<Vec<u8>>,
}

impl WatchRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let r = KeyRange::from_request(key, range_end);
        WatchRange {
            start: r.start.to_vec(),
            end: r.end.map(<[u8]>::to_vec),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        KeyRange {
            start: &self.start,
            end: self.end.as_deref(),
        }
        .contains(key)
    }

    /// The key, if the range is one key.
    pub fn single(&self) -> Option<&[u8]> {
        self.end.is_none().then_some(self.start.as_slice())
    }

    /// True when `end` is set and not after `start` (etcd refuses it).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, Some(e) if !e.is_empty() && e.as_slice() <= self.start.as_slice())
    }
}

/// A registered watcher.
pub(crate) struct Watcher {
    pub stream: u64,
    pub watch_id: i64,
    pub range: WatchRange,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
    /// The first revision the watcher has not seen. For a synced watcher it
    /// may lag behind the hub's revision + 1 (revisions without matching
    /// events do not move it); the effective value is then the larger one.
    pub next_rev: i64,
    pub synced: bool,
    pub out: Arc<Out>,
}

impl Watcher {
    /// True if the event passes the watcher's filters (NOPUT / NODELETE).
    pub fn passes(&self, ev: &Event) -> bool {
        let put = ev.r#type == EventType::Put as i32;
        !(put && self.no_put || !put && self.no_delete)
    }

    /// True if the event is in the watcher's range and passes its filters.
    pub fn wants(&self, ev: &Event) -> bool {
        ev.kv
            .as_ref()
            .is_some_and(|kv| self.range.contains(&kv.key))
            && self.passes(ev)
    }

    /// Queues the watcher's events of `revs` (ascending revisions), up to
    /// and including revision `upto`, merging revisions into messages of at
    /// most `limits.message_bytes` (one revision is never split).
    ///
    /// Returns true when everything up to `upto` is queued (`next_rev` is
    /// then `upto + 1`); false when the watcher's budget ran out (`next_rev`
    /// is the first revision not queued, and the stream will signal when it
    /// has room again).
    pub fn deliver<'a>(
        &mut self,
        gid: u64,
        limits: &WatchLimits,
        revs: impl IntoIterator<Item = &'a RevEvents>,
        upto: i64,
    ) -> bool {
        let mut msg: Vec<Arc<Event>> = Vec::new();
        let mut bytes = 0;
        let mut first = 0;
        let mut nrevs = 0;
        for re in revs {
            if re.rev < self.next_rev {
                continue;
            }
            if re.rev > upto {
                break;
            }
            let mut matched = Vec::new();
            let mut mbytes = 0;
            for (ev, size) in &re.events {
                if self.wants(ev) {
                    matched.push(ev.clone());
                    mbytes += size;
                }
            }
            if matched.is_empty() {
                continue;
            }
            if !msg.is_empty()
                && (bytes + mbytes > limits.message_bytes || nrevs >= MAX_REVS_PER_MESSAGE)
            {
                // Everything before this revision is in `msg`.
                if !self.push(gid, re.rev - 1, std::mem::take(&mut msg), bytes) {
                    self.next_rev = first;
                    return false;
                }
                self.next_rev = re.rev;
                bytes = 0;
                nrevs = 0;
            }
            if msg.is_empty() {
                first = re.rev;
            }
            msg.extend(matched);
            bytes += mbytes;
            nrevs += 1;
        }
        if !msg.is_empty() && !self.push(gid, upto, msg, bytes) {
            self.next_rev = first;
            return false;
        }
        self.next_rev = self.next_rev.max(upto + 1);
        true
    }

    /// Queues one events message, within the watcher's budget.
    pub fn push(&self, gid: u64, revision: i64, events: Vec<Arc<Event>>, bytes: usize) -> bool {
        self.out.try_push_events(
            gid,
            self.watch_id,
            revision,
            events,
            bytes,
            self.prev_kv,
            self.fragment,
        )
    }
}
