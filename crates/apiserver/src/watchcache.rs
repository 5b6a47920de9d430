//! The watch cache: one etcd watch per resource, shared by every watcher
//! of that resource (kube-apiserver's `Cacher`, reduced to its event
//! window).
//!
//! For each resource prefix (`/registry/pods/`) a pump task follows one
//! etcd watch (with `prev_kv`) and keeps the last [`WINDOW`] events in a
//! ring buffer, broadcasting each to the subscribers. A watcher starting
//! at revision `S` gets the buffered events after `S` and then the live
//! ones, with no gap or duplicate: both are taken under one lock. When `S`
//! is older than the window, [`WatchCaches::subscribe`] answers `None` and
//! the caller watches etcd directly (which replays the history, or reports
//! the compaction as 410).
//!
//! A subscriber that falls more than [`CHANNEL`] events behind is ended
//! (clients resume from their last resourceVersion), as kube's cacher
//! drops slow watchers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::storage::{Storage, StorageError, StorageEvent};

/// Events kept per resource for watchers that resume from the past.
pub const WINDOW: usize = 4096;
/// Live events a subscriber may lag behind before it is ended.
pub const CHANNEL: usize = 1024;

/// What the pump broadcasts.
#[derive(Debug, Clone)]
pub enum Msg {
    /// A change (always `StorageEvent::Change`).
    Event(Arc<StorageEvent>),
    /// Everything up to this revision has been broadcast.
    Progress(i64),
    /// The underlying etcd watch failed; the cache is gone.
    Failed(StorageError),
}

struct State {
    events: VecDeque<Arc<StorageEvent>>,
    /// Watchers from any revision `>= oldest` can be served from the window.
    oldest: i64,
    tx: broadcast::Sender<Msg>,
}

struct Cache {
    state: Mutex<State>,
}

/// A watcher's view: the replayed window, then the live channel.
pub struct Subscription {
    /// Buffered events after the requested revision, in order.
    pub replay: Vec<Arc<StorageEvent>>,
    /// Live messages.
    pub live: broadcast::Receiver<Msg>,
}

/// The per-resource caches (cheap to clone).
#[derive(Clone)]
pub struct WatchCaches {
    storage: Storage,
    caches: Arc<tokio::sync::Mutex<HashMap<String, Arc<Cache>>>>,
    progress_every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

fn revision_of(ev: &StorageEvent) -> i64 {
    match ev {
        StorageEvent::Change { revision, .. } => *revision,
        StorageEvent::Progress(r) => *r,
        StorageEvent::Error(_) => 0,
    }
}

impl WatchCaches {
    /// Caches over `storage`; etcd progress is requested every
    /// `progress_every` (it drives bookmarks); pumps stop on `shutdown`.
    pub fn new(
        storage: Storage,
        progress_every: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        WatchCaches {
            storage,
            caches: Default::default(),
            progress_every,
            shutdown,
        }
    }

    /// Makes sure the cache of `prefix` runs (so that a list taken next is
    /// inside its window).
    pub async fn ensure(&self, prefix: &str) -> Result<(), StorageError> {
        self.cache(prefix).await.map(|_| ())
    }

    async fn cache(&self, prefix: &str) -> Result<Arc<Cache>, StorageError> {
        let mut caches = self.caches.lock().await;
        if let Some(c) = caches.get(prefix) {
            return Ok(c.clone());
        }
        let start = self.storage.current_revision(prefix).await?;
        let mut rx = self
            .storage
            .watch(prefix, start + 1, self.progress_every)
            .await?;
        let (tx, _) = broadcast::channel(CHANNEL);
        let cache = Arc::new(Cache {
            state: Mutex::new(State {
                events: VecDeque::new(),
                oldest: start,
                tx,
            }),
        });
        caches.insert(prefix.to_string(), cache.clone());
        let (pump, all, key) = (cache.clone(), self.caches.clone(), prefix.to_string());
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let failure = loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = shutdown.changed() => break StorageError::Backend("apiserver shutting down".into()),
                };
                match ev {
                    Some(StorageEvent::Error(e)) => break e,
                    None => break StorageError::Backend("watch ended".into()),
                    Some(StorageEvent::Progress(r)) => {
                        let st = pump.state.lock().expect("watch cache lock");
                        let _ = st.tx.send(Msg::Progress(r));
                    }
                    Some(change) => {
                        let ev = Arc::new(change);
                        let mut st = pump.state.lock().expect("watch cache lock");
                        st.events.push_back(ev.clone());
                        while st.events.len() > WINDOW {
                            if let Some(old) = st.events.pop_front() {
                                st.oldest = revision_of(&old);
                            }
                        }
                        let _ = st.tx.send(Msg::Event(ev));
                    }
                }
            };
            tracing::debug!(prefix = %key, reason = %failure, "watch cache stopped");
            let mut caches = all.lock().await;
            if caches.get(&key).is_some_and(|c| Arc::ptr_eq(c, &pump)) {
                caches.remove(&key);
            }
            let st = pump.state.lock().expect("watch cache lock");
            let _ = st.tx.send(Msg::Failed(failure));
        });
        Ok(cache)
    }

    /// Subscribes to changes of `prefix` after revision `after`; `None`
    /// when `after` is older than the cache's window.
    pub async fn subscribe(
        &self,
        prefix: &str,
        after: i64,
    ) -> Result<Option<Subscription>, StorageError> {
        let cache = self.cache(prefix).await?;
        let st = cache.state.lock().expect("watch cache lock");
        if after < st.oldest {
            return Ok(None);
        }
        let replay = st
            .events
            .iter()
            .filter(|e| revision_of(e) > after)
            .cloned()
            .collect();
        Ok(Some(Subscription {
            replay,
            live: st.tx.subscribe(),
        }))
    }

    /// Number of resources with a running cache (for tests and metrics).
    pub async fn len(&self) -> usize {
        self.caches.lock().await.len()
    }

    /// True when no cache runs.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}
