//! `?watch=true`: a chunked stream of `{"type":…,"object":…}` JSON lines.
//!
//! * From `resourceVersion=N`: every change with revision > N, in order,
//!   straight from one etcd watch (`start_revision = N + 1`, `prev_kv`).
//! * From `""`/`"0"`, or with `sendInitialEvents=true`: synthetic `ADDED`
//!   events for the current state (one consistent list at revision R), then
//!   changes after R; with `sendInitialEvents` a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end` separates the two.
//! * Label and field selectors are applied to the old and the new object:
//!   an object that leaves the selection is sent as `DELETED`.
//! * `allowWatchBookmarks=true`: periodic `BOOKMARK`s with the latest
//!   revision known to be complete (from etcd progress notifications).
//! * A compacted start revision ends the stream with an `ERROR` event
//!   carrying a 410 Expired Status; `timeoutSeconds` ends it cleanly.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::registry::generic::{parse_rv, storage_error, Registry};
use crate::registry::Strategy;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::storage::{StorageError, StorageEvent, Stored};
use crate::table::{self, IncludeObject};
use crate::watchcache::{Msg, WatchCaches};

/// How often a BOOKMARK is sent when allowed (and etcd progress asked).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// Where a watcher's changes come from.
enum Source {
    /// The shared cache: a replayed window, then live messages.
    Cache {
        replay: std::collections::VecDeque<Arc<StorageEvent>>,
        live: tokio::sync::broadcast::Receiver<Msg>,
    },
    /// A watch of its own on etcd.
    Direct(mpsc::Receiver<StorageEvent>),
}

impl Source {
    /// The next change or progress; None when the stream should end
    /// (a lagging subscriber is ended; clients resume from their last RV).
    async fn next(&mut self) -> Option<Arc<StorageEvent>> {
        match self {
            Source::Cache { replay, live } => {
                if let Some(e) = replay.pop_front() {
                    return Some(e);
                }
                match live.recv().await {
                    Ok(Msg::Event(e)) => Some(e),
                    Ok(Msg::Progress(r)) => Some(Arc::new(StorageEvent::Progress(r))),
                    Ok(Msg::Failed(m)) => Some(Arc::new(StorageEvent::Error(m))),
                    Err(_) => None,
                }
            }
            Source::Direct(rx) => rx.recv().await.map(Arc::new),
        }
    }
}

/// Parsed watch parameters.
#[derive(Debug, Clone)]
pub struct WatchParams {
    /// `resourceVersion`.
    pub resource_version: String,
    /// `resourceVersionMatch`.
    pub resource_version_match: String,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents` (None when absent).
    pub send_initial_events: Option<bool>,
    /// `timeoutSeconds` (None: server default).
    pub timeout: Option<Duration>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// Wrap each object in a one-row Table (kubectl `get -w`).
    pub table: Option<IncludeObject>,
}

/// Validates the parameter combinations as apimachinery does.
pub fn validate(p: &WatchParams) -> ApiResult<()> {
    match p.send_initial_events {
        Some(true) => {
            if p.resource_version_match != "NotOlderThan" {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    vec![crate::status::Cause::forbidden(
                        "sendInitialEvents",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )],
                ));
            }
            if !p.bookmarks {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    vec![crate::status::Cause::forbidden(
                        "allowWatchBookmarks",
                        "allowWatchBookmarks must be set to true when sendInitialEvents is set",
                    )],
                ));
            }
        }
        _ => {
            if !p.resource_version_match.is_empty() {
                return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", vec![crate::status::Cause::forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")]));
            }
        }
    }
    parse_rv(&p.resource_version).map(|_| ())
}

struct Emitter {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    strategy: Arc<dyn Strategy>,
    table: Option<IncludeObject>,
    columns_sent: bool,
}

impl Emitter {
    /// Sends one event; false when the client is gone.
    async fn send(&mut self, kind: &str, object: &Value) -> bool {
        let rows;
        let object = match (self.table, kind) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                rows = table::table(
                    self.strategy.as_ref(),
                    std::slice::from_ref(object),
                    include,
                    "",
                    "",
                    !self.columns_sent,
                );
                self.columns_sent = true;
                &rows
            }
            _ => object,
        };
        let encoded = serde_json::to_vec(object).unwrap_or_default();
        self.send_json(kind, &encoded).await
    }

    /// Sends a stored object, reusing its encoding (shared by all the
    /// watchers of a watch-cache event).
    async fn send_stored(&mut self, kind: &str, st: &Stored) -> bool {
        match self.table {
            Some(_) => self.send(kind, &st.object).await,
            None => self.send_json(kind, st.json()).await,
        }
    }

    /// `{"type":…,"object":…}` (kube's order) around an encoded object.
    async fn send_json(&mut self, kind: &str, object: &[u8]) -> bool {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn bookmark(&mut self, revision: i64, initial_end: bool) -> bool {
        let info = self.strategy.info();
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta});
        self.send("BOOKMARK", &obj).await
    }

    async fn error(&mut self, e: ApiError) {
        let _ = self.send("ERROR", &e.to_status()).await;
    }
}

fn with_rv(obj: &Value, revision: i64) -> Value {
    let mut o = obj.clone();
    crate::object::meta_mut(&mut o).insert("resourceVersion".into(), json!(revision.to_string()));
    o
}

/// Starts a watch and returns the streaming body. Errors before the stream
/// starts (bad parameters) are returned as ordinary Status answers.
pub async fn start(
    registry: Arc<Registry>,
    caches: WatchCaches,
    strategy: Arc<dyn Strategy>,
    ns: String,
    params: WatchParams,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> ApiResult<Body> {
    validate(&params)?;
    registry.check_fields(strategy.as_ref(), &params.fields)?;
    let rv = parse_rv(&params.resource_version)?;
    let initial = params.send_initial_events.unwrap_or(rv == 0);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let timeout = params.timeout.unwrap_or_else(|| {
        Duration::from_secs(1800 + u64::from(crate::object::random_below(1800)))
    });
    tokio::spawn(async move {
        let mut em = Emitter {
            tx,
            strategy: strategy.clone(),
            table: params.table,
            columns_sent: false,
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let s = strategy.as_ref();
        let matches = |o: &Value| Registry::matches(s, o, &params.labels, &params.fields);
        // 1. The starting point: a consistent list, or the given revision.
        let mut last = rv;
        if initial {
            // Start the shared watch first, so the list below is inside its window.
            if let Err(e) = caches
                .ensure(&registry.collection_prefix(strategy.info(), ""))
                .await
            {
                return em.error(storage_error(strategy.info(), "", e)).await;
            }
            let opts = crate::registry::generic::ListOptions {
                labels: params.labels.clone(),
                fields: params.fields.clone(),
                ..Default::default()
            };
            match registry.list(s, &ns, &opts).await {
                Ok(list) => {
                    last = list.revision;
                    for item in &list.items {
                        if !em.send("ADDED", item).await {
                            return;
                        }
                    }
                    if params.send_initial_events == Some(true) && !em.bookmark(last, true).await {
                        return;
                    }
                }
                Err(e) => return em.error(e).await,
            }
        }
        // 2. Changes after it: from the shared watch cache, or straight
        //    from etcd when the start is older than the cache's window.
        let prefix = registry.collection_prefix(strategy.info(), &ns);
        let resource_prefix = registry.collection_prefix(strategy.info(), "");
        let mut source = match caches.subscribe(&resource_prefix, last).await {
            Ok(Some(sub)) => Source::Cache {
                replay: sub.replay.into(),
                live: sub.live,
            },
            Ok(None) => {
                let progress = if params.bookmarks {
                    BOOKMARK_EVERY
                } else {
                    Duration::from_secs(300)
                };
                match registry.storage().watch(&prefix, last + 1, progress).await {
                    Ok(rx) => Source::Direct(rx),
                    Err(e) => return em.error(storage_error(strategy.info(), "", e)).await,
                }
            }
            Err(e) => return em.error(storage_error(strategy.info(), "", e)).await,
        };
        let mut shutdown = shutdown;
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        let mut bookmarked = last;
        loop {
            let ev = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = em.tx.closed() => return,
                _ = ticker.tick(), if params.bookmarks => {
                    if last > bookmarked {
                        bookmarked = last;
                        if !em.bookmark(last, false).await { return; }
                    }
                    continue;
                }
                ev = source.next() => ev,
            };
            let Some(ev) = ev else { return };
            match ev.as_ref() {
                StorageEvent::Progress(r) => last = last.max(*r),
                StorageEvent::Error(StorageError::Compacted { compacted, .. }) => {
                    return em
                        .error(ApiError::expired(format!(
                            "too old resource version: {rv} ({compacted})"
                        )))
                        .await;
                }
                StorageEvent::Error(e) => {
                    return em
                        .error(ApiError::internal(format!(
                            "watch of {} failed: {e}",
                            strategy.info().resource
                        )))
                        .await;
                }
                StorageEvent::Change {
                    key,
                    object,
                    prev,
                    revision,
                } => {
                    if *revision <= last || !key.starts_with(&prefix) {
                        continue;
                    }
                    last = *revision;
                    let old_in = prev.as_ref().is_some_and(|p| matches(&p.object));
                    let new_in = object.as_ref().is_some_and(|o| matches(&o.object));
                    let sent = match (object, old_in, new_in) {
                        (Some(o), false, true) => em.send_stored("ADDED", o).await,
                        (Some(o), true, true) => em.send_stored("MODIFIED", o).await,
                        (_, true, false) => match prev {
                            Some(p) => em.send("DELETED", &with_rv(&p.object, *revision)).await,
                            None => true,
                        },
                        _ => true,
                    };
                    if !sent {
                        return;
                    }
                }
            }
        }
    });
    Ok(Body::from_stream(ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> WatchParams {
        WatchParams {
            resource_version: String::new(),
            resource_version_match: String::new(),
            bookmarks: false,
            send_initial_events: None,
            timeout: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
            table: None,
        }
    }

    #[test]
    fn parameter_rules() {
        assert!(validate(&params()).is_ok());
        let mut p = params();
        p.send_initial_events = Some(true);
        assert!(validate(&p).is_err());
        p.resource_version_match = "NotOlderThan".into();
        assert!(validate(&p).is_err());
        p.bookmarks = true;
        assert!(validate(&p).is_ok());
        let mut p = params();
        p.resource_version_match = "Exact".into();
        assert!(validate(&p).is_err());
        let mut p = params();
        p.resource_version = "abc".into();
        assert!(validate(&p).is_err());
    }
}
