//! The watch workload: a watcher of all keys on every member for the whole
//! run, and (in a run without the register workload) blind puts for it to
//! see. After the run, the committed history is read from every member
//! with a watch from just above the highest compaction (revision 1 if
//! there was none).
//!
//! A watcher session starts at revision `last + 1` (2 at first), where
//! `last` is the last revision it received; when its stream breaks it
//! records the error and starts a new session on the same member. A
//! session canceled because its revision was compacted is recorded with
//! the `compact_revision` the member gave, and the next one starts there
//! (the revisions in between are gone).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType as EtcdEventType, WatchOptions, WatchResponse};
use serde_json::{json, Value};
use tokio::sync::watch as signal;

use super::{failed, Completion, Planned};
use crate::checker::watch::{WatchEvent, F_FINAL, F_FINAL_END, F_WATCH};
use crate::client;
use crate::history::{Event, EventType, Process, Recorder};
use crate::rng::Rng;

/// Blind puts of unique values to a few keys.
#[derive(Default)]
pub struct Puts {
    last_value: AtomicU64,
}

impl Puts {
    /// The next put.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let v = self.last_value.fetch_add(1, Ordering::Relaxed) + 1;
        Planned {
            f: "put",
            key: format!("w/{}", rng.below(8)),
            args: json!(v),
        }
    }
}

/// Performs a put.
pub async fn execute_put(c: &mut Client, op: &Planned) -> Completion {
    let v = op.args.as_u64().unwrap_or_default();
    match c.put(op.key.as_str(), v.to_string(), None).await {
        Ok(_) => (EventType::Ok, op.args.clone(), None),
        Err(e) => failed(e),
    }
}

/// The watch events of a response, or why they cannot be read.
fn convert(resp: &WatchResponse) -> Result<Vec<WatchEvent>, String> {
    let mut out = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let kv = ev.kv().ok_or("watch event without key-value")?;
        // The client library panics on an event type it does not know.
        let kind = std::panic::catch_unwind(AssertUnwindSafe(|| ev.event_type()))
            .map_err(|_| "watch event of unknown type".to_string())?;
        let value = match kind {
            EtcdEventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
            EtcdEventType::Delete => None,
        };
        out.push(WatchEvent(
            kv.mod_revision(),
            String::from_utf8_lossy(kv.key()).into_owned(),
            value,
            kv.version(),
        ));
    }
    Ok(out)
}

/// The last revision each watcher received, by member.
pub struct Progress(Vec<AtomicI64>);

impl Progress {
    /// For `n` members, all at revision 1 (nothing received).
    pub fn new(n: usize) -> Self {
        Progress((0..n).map(|_| AtomicI64::new(1)).collect())
    }

    /// The last revision member `i`'s watcher received.
    pub fn last(&self, i: usize) -> i64 {
        self.0.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

/// Opens a watch of all keys from `from`.
async fn open(endpoint: &str, from: i64) -> Result<etcd_client::WatchStream, String> {
    let mut c = client::connect(endpoint, Duration::from_secs(5)).await?;
    let opts = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(from);
    client::timed(Duration::from_secs(5), c.watch("", Some(opts))).await
}

/// Watches member `i` until `stop` is raised, recording every delivery
/// under process `watch-<name>`.
pub async fn watcher(
    recorder: Arc<Recorder>,
    endpoint: String,
    name: String,
    i: usize,
    progress: Arc<Progress>,
    mut stop: signal::Receiver<bool>,
) {
    let process = Process::named(format!("watch-{name}"));
    let rec = |kind, value, error: Option<String>| {
        let mut e = Event::new(process.clone(), kind, F_WATCH, value).node(name.clone());
        e.error = error;
        recorder.record(e);
    };
    let mut last = 1i64;
    while !*stop.borrow() {
        rec(EventType::Invoke, json!({ "from": last + 1 }), None);
        let ended = tokio::select! {
            r = session(&endpoint, &mut last, &rec, &progress, i) => r,
            _ = stop.changed() => return,
        };
        match ended {
            Ended::Compacted {
                reason,
                compact_revision,
            } => {
                rec(
                    EventType::Info,
                    json!({ "canceled": true, "compact_revision": compact_revision }),
                    Some(reason),
                );
                // Resume where the member can serve: the events in between
                // are compacted away (the checker asks whether a
                // compaction explains that gap).
                last = last.max(compact_revision - 1);
                if let Some(p) = progress.0.get(i) {
                    p.store(last, Ordering::Relaxed);
                }
            }
            Ended::Error(e) => rec(EventType::Info, Value::Null, Some(e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Why a watch session ended.
enum Ended {
    /// Canceled by the member because the revision it needed was
    /// compacted; it can serve from `compact_revision` on.
    Compacted {
        reason: String,
        compact_revision: i64,
    },
    /// Anything else.
    Error(String),
}

/// One watch session; returns why it ended.
async fn session(
    endpoint: &str,
    last: &mut i64,
    rec: &impl Fn(EventType, Value, Option<String>),
    progress: &Progress,
    i: usize,
) -> Ended {
    let mut stream = match open(endpoint, *last + 1).await {
        Ok(s) => s,
        Err(e) => return Ended::Error(e),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ended::Error("the stream ended".into()),
            Err(e) => return Ended::Error(e.to_string()),
        };
        if resp.canceled() {
            let reason = format!(
                "canceled: {} (compact revision {})",
                resp.cancel_reason(),
                resp.compact_revision()
            );
            return if resp.compact_revision() > 0 {
                Ended::Compacted {
                    reason,
                    compact_revision: resp.compact_revision(),
                }
            } else {
                Ended::Error(reason)
            };
        }
        match convert(&resp) {
            Ok(evs) if evs.is_empty() => {}
            Ok(evs) => {
                let top = evs.iter().map(WatchEvent::revision).max().unwrap_or(*last);
                rec(EventType::Ok, json!(evs), None);
                *last = (*last).max(top);
                if let Some(p) = progress.0.get(i) {
                    p.store(*last, Ordering::Relaxed);
                }
            }
            Err(e) => return Ended::Error(e),
        }
    }
}

/// Reads member `name`'s history of revisions `from..=upto` with a watch
/// from `from` (1 reads it all; after a compaction at `C`, `C + 1`) and
/// records it under `final-<name>`; at most `timeout`.
pub async fn final_history(
    recorder: &Recorder,
    endpoint: &str,
    name: &str,
    from: i64,
    upto: i64,
    timeout: Duration,
) -> bool {
    let from = from.max(1);
    let process = Process::named(format!("final-{name}"));
    let deadline = Instant::now() + timeout;
    let fail = |error: String| {
        recorder.record(
            Event::new(process.clone(), EventType::Info, F_FINAL_END, Value::Null)
                .node(name)
                .error(error),
        );
        false
    };
    recorder.record(
        Event::new(
            process.clone(),
            EventType::Invoke,
            F_FINAL,
            json!({ "from": from, "to": upto }),
        )
        .node(name),
    );
    // Revision 1 (a new store) has no events.
    let mut last = from.max(2) - 1;
    let mut chunk: Vec<WatchEvent> = Vec::new();
    let flush = |chunk: &mut Vec<WatchEvent>| {
        if !chunk.is_empty() {
            recorder.record(
                Event::new(process.clone(), EventType::Ok, F_FINAL, json!(chunk)).node(name),
            );
            chunk.clear();
        }
    };
    if upto > last {
        let mut stream = match open(endpoint, last + 1).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        while last < upto {
            let left = deadline.saturating_duration_since(Instant::now());
            let resp = match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return fail("the stream ended".into()),
                Ok(Err(e)) => return fail(e.to_string()),
                Err(_) => {
                    flush(&mut chunk);
                    return fail(format!("only revision {last} of {upto} within {timeout:?}"));
                }
            };
            if resp.canceled() {
                return fail(format!("canceled: {}", resp.cancel_reason()));
            }
            match convert(&resp) {
                Ok(evs) => {
                    last = evs.iter().map(WatchEvent::revision).fold(last, i64::max);
                    // Late writes beyond `upto` are not part of the history.
                    chunk.extend(evs.into_iter().filter(|e| e.0 <= upto));
                    if chunk.len() >= 500 {
                        flush(&mut chunk);
                    }
                }
                Err(e) => return fail(e),
            }
        }
    }
    flush(&mut chunk);
    recorder.record(
        Event::new(
            process.clone(),
            EventType::Ok,
            F_FINAL_END,
            json!({ "revision": upto.max(1), "from": from }),
        )
        .node(name),
    );
    true
}
