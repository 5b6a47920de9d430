//! The storage layer, as kube-apiserver's `storage/etcd3` uses etcd:
//!
//! * create: `Txn(mod_revision(key) == 0 → Put)`;
//! * update/delete: `Txn(mod_revision(key) == rv → Put/Delete, else Get)`;
//! * the resourceVersion of an object is its `mod_revision`, the one of a
//!   list is the header revision the list was read at;
//! * lists are ranges pinned to one revision, paged with `limit`;
//! * watches start at `rv + 1` with `prev_kv`;
//! * compaction follows kube's `compact_rev_key` protocol.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; it is set
//! from the `mod_revision` on every read.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// The key kube-apiserver uses to coordinate compaction between servers.
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

/// How long one unary etcd call may take before the request fails with 504.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the storage layer; the registry maps them to `metav1.Status`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist (or no longer exists).
    #[error("key not found")]
    NotFound,
    /// A create found the key already present.
    #[error("key exists")]
    AlreadyExists,
    /// The precondition `mod_revision == rv` failed; carries the current value.
    #[error("revision conflict")]
    Conflict(Option<Box<Stored>>),
    /// The requested revision has been compacted.
    #[error("revision {requested} compacted (compacted up to {compacted})")]
    Compacted {
        /// The revision that was asked for.
        requested: i64,
        /// The compaction revision, when known (0 otherwise).
        compacted: i64,
    },
    /// The requested revision is newer than the store.
    #[error("revision is in the future")]
    FutureRevision,
    /// The stored bytes are not a JSON object.
    #[error("stored object at {0} is not valid JSON")]
    Corrupt(String),
    /// The store is unreachable or answered an error.
    #[error("etcd: {0}")]
    Backend(String),
    /// The call took longer than the deadline.
    #[error("etcd call timed out")]
    Timeout,
    /// The store refused the request for its size (etcd's `--max-request-bytes`).
    #[error("{0}")]
    TooLarge(String),
}

/// An object read from the store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object, with `metadata.resourceVersion` set.
    pub object: Value,
    /// The key's `mod_revision`.
    pub mod_revision: i64,
    /// `object` as JSON, encoded on first use: a watch-cache event is
    /// encoded once for all its watchers.
    json: std::sync::OnceLock<Vec<u8>>,
}

impl Stored {
    /// An object at a revision.
    pub fn new(object: Value, mod_revision: i64) -> Self {
        Stored {
            object,
            mod_revision,
            json: Default::default(),
        }
    }

    /// The object as JSON (encoded once; `object` must not change after).
    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| serde_json::to_vec(&self.object).unwrap_or_default())
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object && self.mod_revision == other.mod_revision
    }
}

/// One page of a range read.
#[derive(Debug, Clone)]
pub struct Page {
    /// `(key, object)` in key order.
    pub items: Vec<(String, Stored)>,
    /// The revision the page was read at (the pinned one, or the store's
    /// revision at read time for a latest read).
    pub revision: i64,
    /// More keys follow in the range.
    pub more: bool,
    /// Keys remaining after this page (`count - len`).
    pub remaining: i64,
}

/// A change seen by a storage watch.
#[derive(Debug, Clone)]
pub enum StorageEvent {
    /// A put (create or update) or a delete, in revision order.
    Change {
        /// The key.
        key: String,
        /// The new object; `None` for a delete.
        object: Option<Stored>,
        /// The previous object, if there was one.
        prev: Option<Stored>,
        /// The revision of the change.
        revision: i64,
    },
    /// Every change up to this revision has been delivered.
    Progress(i64),
    /// The watch cannot continue (e.g. compacted); carries the error.
    Error(StorageError),
}

/// A handle to the etcd v3 store (cheap to clone).
#[derive(Clone)]
pub struct Storage {
    client: Client,
}

fn map_err(e: etcd_client::Error) -> StorageError {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        StorageError::Compacted {
            requested: 0,
            compacted: 0,
        }
    } else if text.contains("required revision is a future revision") {
        StorageError::FutureRevision
    } else if let Some(m) = [
        "etcdserver: request is too large",
        "grpc: received message larger than max",
        "grpc: trying to send message larger than max",
    ]
    .into_iter()
    .find(|m| text.contains(m))
    {
        StorageError::TooLarge(m.to_string())
    } else {
        StorageError::Backend(text)
    }
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(StorageError::Timeout),
    }
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(key: &[u8], value: &[u8], mod_revision: i64) -> Result<Stored, StorageError> {
    let mut object: Value = serde_json::from_slice(value)
        .map_err(|_| StorageError::Corrupt(String::from_utf8_lossy(key).into_owned()))?;
    let Some(map) = object.as_object_mut() else {
        return Err(StorageError::Corrupt(
            String::from_utf8_lossy(key).into_owned(),
        ));
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(m) = meta.as_object_mut() {
        m.insert(
            "resourceVersion".into(),
            Value::String(mod_revision.to_string()),
        );
    }
    Ok(Stored::new(object, mod_revision))
}

/// Encodes an object for storage (without `metadata.resourceVersion`).
pub fn encode(object: &Value) -> Vec<u8> {
    let mut copy = object.clone();
    if let Some(m) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&copy).unwrap_or_default()
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The largest etcd response accepted: kube-apiserver's etcd client allows
/// `math.MaxInt32`; tonic's default (4 MiB) would fail lists of a few
/// thousand objects.
const MAX_RESPONSE: usize = i32::MAX as usize;

impl Storage {
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE)
    }

    /// Connects to the etcd endpoints (lazily retried by the client).
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Storage { client })
    }

    /// Reads one key at the latest revision.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, StorageError> {
        let mut kv = self.kv();
        let resp = bounded(kv.get(key, None)).await?;
        match resp.kvs().first() {
            Some(item) => Ok(Some(decode(item.key(), item.value(), item.mod_revision())?)),
            None => Ok(None),
        }
    }

    /// Creates the key if absent; returns the new revision.
    pub async fn create(&self, key: &str, object: &Value) -> Result<i64, StorageError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(object), None)]);
        let mut kv = self.kv();
        let resp = bounded(kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Replaces the key if its `mod_revision` is still `expected`; returns
    /// the new revision, or `Conflict` with the current value.
    pub async fn update(
        &self,
        key: &str,
        expected: i64,
        object: &Value,
    ) -> Result<i64, StorageError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, encode(object), None)])
            .or_else([TxnOp::get(key, None)]);
        self.conditional(key, txn).await
    }

    /// Deletes the key if its `mod_revision` is still `expected`; returns the
    /// revision of the delete.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<i64, StorageError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        self.conditional(key, txn).await
    }

    async fn conditional(&self, key: &str, txn: Txn) -> Result<i64, StorageError> {
        let mut kv = self.kv();
        let resp = bounded(kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision())),
            _ => None,
        });
        match current {
            None => Err(StorageError::NotFound),
            Some((k, v, rev)) => {
                let stored = decode(&k, &v, rev)?;
                let _ = key;
                Err(StorageError::Conflict(Some(Box::new(stored))))
            }
        }
    }

    /// Reads up to `limit` keys (0 = all) of `[start, end of prefix)` at
    /// `revision` (0 = latest).
    pub async fn list(
        &self,
        prefix: &str,
        start: &str,
        revision: i64,
        limit: i64,
    ) -> Result<Page, StorageError> {
        let from = if start.is_empty() { prefix } else { start };
        let mut opts = GetOptions::new().with_range(prefix_end(prefix));
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        let mut kv = self.kv();
        let resp = bounded(kv.get(from, Some(opts)))
            .await
            .map_err(|e| match e {
                StorageError::Compacted { compacted, .. } => StorageError::Compacted {
                    requested: revision,
                    compacted,
                },
                other => other,
            })?;
        let mut items = Vec::with_capacity(resp.kvs().len());
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key()).into_owned();
            items.push((key, decode(item.key(), item.value(), item.mod_revision())?));
        }
        let remaining = (resp.count() - items.len() as i64).max(0);
        Ok(Page {
            // etcd's header carries the current revision even for a read
            // at an older one: a pinned read keeps its own.
            revision: if revision > 0 {
                revision
            } else {
                resp.header().map(|h| h.revision()).unwrap_or_default()
            },
            more: resp.more(),
            remaining,
            items,
        })
    }

    /// The store's current revision (a linearizable read of `prefix`).
    pub async fn current_revision(&self, prefix: &str) -> Result<i64, StorageError> {
        let mut kv = self.kv();
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        let resp = bounded(kv.get(prefix, Some(opts))).await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Watches every key under `prefix` from revision `start` (inclusive),
    /// with previous values. Events arrive on the returned channel in
    /// revision order; the watch ends when the receiver is dropped.
    /// `progress_every` asks etcd for a progress notification that often.
    pub async fn watch(
        &self,
        prefix: &str,
        start: i64,
        progress_every: Duration,
    ) -> Result<mpsc::Receiver<StorageEvent>, StorageError> {
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let mut wc = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE);
        let stream = bounded(wc.watch(prefix, Some(opts))).await?;
        let (mut sender, mut responses) = stream.split();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(progress_every);
            tick.tick().await;
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {
                        if sender.request_progress().await.is_err() {
                            let _ = tx.send(StorageEvent::Error(StorageError::Backend("watch progress request failed".into()))).await;
                            return;
                        }
                        continue;
                    }
                    m = responses.next() => m,
                };
                let resp = match msg {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        let _ = tx.send(StorageEvent::Error(map_err(e))).await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(StorageEvent::Error(StorageError::Backend(
                                "watch closed".into(),
                            )))
                            .await;
                        return;
                    }
                };
                if resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        StorageError::Compacted {
                            requested: start,
                            compacted: resp.compact_revision(),
                        }
                    } else {
                        StorageError::Backend(format!("watch canceled: {}", resp.cancel_reason()))
                    };
                    let _ = tx.send(StorageEvent::Error(err)).await;
                    return;
                }
                let header_rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                if resp.events().is_empty() {
                    if !resp.created()
                        && header_rev > 0
                        && tx.send(StorageEvent::Progress(header_rev)).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let prev = match ev.prev_kv() {
                        Some(p) if !p.value().is_empty() => {
                            decode(p.key(), p.value(), p.mod_revision()).ok()
                        }
                        _ => None,
                    };
                    let (object, revision) = match ev.event_type() {
                        EventType::Put => match decode(kv.key(), kv.value(), kv.mod_revision()) {
                            Ok(o) => (Some(o), kv.mod_revision()),
                            Err(_) => continue,
                        },
                        EventType::Delete => (None, kv.mod_revision()),
                    };
                    if tx
                        .send(StorageEvent::Change {
                            key,
                            object,
                            prev,
                            revision,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// One round of kube's compaction protocol: if `compact_rev_key` still has
    /// version `last_time`, record `last_rev` there and compact to it.
    /// Returns the new `(time, revision)` pair for the next round.
    pub async fn compact_round(
        &self,
        last_time: i64,
        last_rev: i64,
    ) -> Result<(i64, i64), StorageError> {
        let txn = Txn::new()
            .when([Compare::version(
                COMPACT_REV_KEY,
                CompareOp::Equal,
                last_time,
            )])
            .and_then([TxnOp::put(COMPACT_REV_KEY, last_rev.to_string(), None)])
            .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
        let mut kv = self.kv();
        let resp = bounded(kv.txn(txn)).await?;
        let current_rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        if !resp.succeeded() {
            // Another server compacted; adopt its version counter.
            let time = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                    _ => None,
                })
                .unwrap_or_default();
            return Ok((time, current_rev));
        }
        if last_rev > 0 {
            let mut kv = self.kv();
            match bounded(kv.compact(last_rev, None)).await {
                Ok(_) | Err(StorageError::Compacted { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((last_time + 1, current_rev))
    }

    /// Runs [`Storage::compact_round`] every `interval` until `stop` resolves.
    pub async fn run_compactor(self, interval: Duration, stop: tokio::sync::watch::Receiver<bool>) {
        let mut stop = stop;
        let (mut time, mut rev) = (0i64, 0i64);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            match self.compact_round(time, rev).await {
                Ok((t, r)) => {
                    if r > rev && t > time {
                        tracing::debug!(compacted = rev, "etcd compaction round");
                    }
                    time = t;
                    rev = r;
                }
                Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn encode_strips_resource_version_and_decode_sets_it() {
        let obj = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "9"}});
        let bytes = encode(&obj);
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = decode(b"k", &bytes, 42).unwrap();
        assert_eq!(back.object["metadata"]["resourceVersion"], "42");
        assert!(decode(b"k", b"[1]", 1).is_err());
    }
}
