//! The append workload: transactions that read lists and append unique
//! elements to them, over a few keys at a time (`a/<generation>/<k>`).
//!
//! A key's value is its list, as comma-separated decimal numbers (absent:
//! the empty list). etcd has no append, so one operation (`f` = `txn`) is
//! two requests: a `Txn` of gets reads every key the operation touches at
//! one revision; then a `Txn` that compares each of those keys'
//! `mod_revision` with what was read and, if none changed, puts the
//! appended lists. Reads return what the first request saw, which is still
//! the state when the second commits. A false comparison is recorded as a
//! `fail` with error `compare-failed`: nothing was written.
//!
//! The history value is a list of micro-operations, `["append", key, n]`
//! and `["r", key, list]` (the list `null` on invocation).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde_json::{json, Value};

use super::{failed, Completion, Planned};
use crate::checker::register::COMPARE_FAILED;
use crate::history::{Event, EventType, Process, Recorder};
use crate::rng::Rng;

/// The `f` of an append operation.
pub const F_TXN: &str = "txn";

/// Prefix of every key this workload writes.
pub const KEY_PREFIX: &str = "a/";

/// The process of the end-of-run reads of every list.
pub const FINAL_PROCESS: &str = "append-final";

/// The append operation generator.
pub struct Appends {
    keys_per_group: u64,
    ops_per_key: u64,
    issued: AtomicU64,
    last_element: AtomicU64,
}

impl Appends {
    /// `keys_per_group` keys at a time, about `ops_per_key` operations
    /// touching each.
    pub fn new(keys_per_group: u64, ops_per_key: u64) -> Self {
        Appends {
            keys_per_group: keys_per_group.max(1),
            ops_per_key: ops_per_key.max(1),
            issued: AtomicU64::new(0),
            last_element: AtomicU64::new(0),
        }
    }

    /// The next transaction: one to three micro-operations, each a read or
    /// an append of a fresh element.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let group = n / (self.keys_per_group * self.ops_per_key);
        let mut mops = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let key = format!("{KEY_PREFIX}{group:05}/{}", rng.below(self.keys_per_group));
            if rng.chance(0.5) {
                mops.push(json!(["r", key, null]));
            } else {
                let e = self.last_element.fetch_add(1, Ordering::Relaxed) + 1;
                mops.push(json!(["append", key, e]));
            }
        }
        Planned {
            f: F_TXN,
            key: format!("{KEY_PREFIX}{group:05}"),
            args: Value::Array(mops),
        }
    }

    /// Every key used so far (for the end-of-run reads).
    pub fn keys(&self) -> Vec<String> {
        let issued = self.issued.load(Ordering::Relaxed);
        let per_group = self.keys_per_group * self.ops_per_key;
        let groups = issued.div_ceil(per_group);
        (0..groups)
            .flat_map(|g| (0..self.keys_per_group).map(move |k| format!("{KEY_PREFIX}{g:05}/{k}")))
            .collect()
    }
}

/// A micro-operation of the history: (function, key, argument).
pub fn micro_op(v: &Value) -> Option<(&str, &str, &Value)> {
    match v.as_array().map(Vec::as_slice) {
        Some([f, k, a]) => Some((f.as_str()?, k.as_str()?, a)),
        _ => None,
    }
}

/// A stored list; `None` if it is not comma-separated numbers.
pub fn decode_list(raw: &[u8]) -> Option<Vec<u64>> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|p| p.parse().ok()).collect()
}

fn encode_list(l: &[u64]) -> String {
    l.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Reads `keys` at one revision: each key's list and `mod_revision` (0
/// when absent).
async fn read_lists(
    c: &mut Client,
    keys: &[String],
) -> Result<BTreeMap<String, (Vec<u64>, i64)>, Completion> {
    let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
    let r = c.txn(Txn::new().and_then(gets)).await.map_err(failed)?;
    let mut out = BTreeMap::new();
    for (k, resp) in keys.iter().zip(r.op_responses()) {
        let TxnOpResponse::Get(g) = resp else {
            return Err(failed("etcdserver: txn answered a get with another kind"));
        };
        let entry = match g.kvs().first() {
            None => (Vec::new(), 0),
            Some(kv) => match decode_list(kv.value()) {
                Some(l) => (l, kv.mod_revision()),
                None => {
                    return Err((
                        EventType::Fail,
                        Value::Null,
                        Some(format!("key {k} holds a value that is not a list")),
                    ))
                }
            },
        };
        out.insert(k.clone(), entry);
    }
    Ok(out)
}

/// Performs an append transaction.
pub async fn execute(c: &mut Client, op: &Planned) -> Completion {
    let Some(mops) = op.args.as_array() else {
        return (EventType::Fail, Value::Null, Some("bad txn".into()));
    };
    let mut keys: Vec<String> = Vec::new();
    for m in mops {
        let Some((_, k, _)) = micro_op(m) else {
            return (EventType::Fail, Value::Null, Some("bad micro-op".into()));
        };
        if !keys.iter().any(|x| x == k) {
            keys.push(k.to_string());
        }
    }
    let read = match read_lists(c, &keys).await {
        Ok(r) => r,
        Err(done) => return done,
    };
    // Apply the micro-operations in order to the lists read.
    let mut lists: BTreeMap<String, Vec<u64>> = read
        .iter()
        .map(|(k, (l, _))| (k.clone(), l.clone()))
        .collect();
    let mut written: Vec<String> = Vec::new();
    let mut result = Vec::new();
    for m in mops {
        let Some((f, k, a)) = micro_op(m) else {
            return (EventType::Fail, Value::Null, Some("bad micro-op".into()));
        };
        let list = lists.entry(k.to_string()).or_default();
        match (f, a.as_u64()) {
            ("append", Some(e)) => {
                list.push(e);
                if !written.iter().any(|x| x == k) {
                    written.push(k.to_string());
                }
                result.push(m.clone());
            }
            ("r", _) => result.push(json!(["r", k, list.clone()])),
            _ => return (EventType::Fail, Value::Null, Some("bad micro-op".into())),
        }
    }
    let compares: Vec<Compare> = read
        .iter()
        .map(|(k, (_, rev))| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
        .collect();
    let puts: Vec<TxnOp> = written
        .iter()
        .map(|k| TxnOp::put(k.as_str(), encode_list(&lists[k]), None))
        .collect();
    match c.txn(Txn::new().when(compares).and_then(puts)).await {
        Ok(r) if r.succeeded() => (EventType::Ok, Value::Array(result), None),
        Ok(_) => (
            EventType::Fail,
            Value::Null,
            Some(COMPARE_FAILED.to_string()),
        ),
        Err(e) => failed(e),
    }
}

/// After the run: reads every list through `endpoint` (linearizable) and
/// records each as an `ok` read of process `final-append`, so the checker
/// sees every acknowledged append that survived.
pub async fn final_reads(recorder: &Recorder, endpoint: &str, node: &str, keys: &[String]) {
    let mut c = match crate::client::connect(endpoint, crate::client::PROBE_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            recorder.record(
                Event::new(
                    Process::named(FINAL_PROCESS),
                    EventType::Info,
                    F_TXN,
                    Value::Null,
                )
                .node(node)
                .error(e),
            );
            return;
        }
    };
    for chunk in keys.chunks(32) {
        let done =
            tokio::time::timeout(std::time::Duration::from_secs(5), read_lists(&mut c, chunk))
                .await;
        let e = match done {
            Ok(Ok(lists)) => {
                let reads: Vec<Value> = lists
                    .into_iter()
                    .map(|(k, (l, _))| json!(["r", k, l]))
                    .collect();
                Event::new(
                    Process::named(FINAL_PROCESS),
                    EventType::Ok,
                    F_TXN,
                    Value::Array(reads),
                )
            }
            Ok(Err((_, _, e))) => Event::new(
                Process::named(FINAL_PROCESS),
                EventType::Info,
                F_TXN,
                Value::Null,
            )
            .error(e.unwrap_or_default()),
            Err(_) => Event::new(
                Process::named(FINAL_PROCESS),
                EventType::Info,
                F_TXN,
                Value::Null,
            )
            .error("timeout after 5s"),
        };
        recorder.record(e.node(node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        assert_eq!(decode_list(b""), Some(vec![]));
        assert_eq!(decode_list(b"1,22,3"), Some(vec![1, 22, 3]));
        assert_eq!(decode_list(b"1,x"), None);
        assert_eq!(
            decode_list(encode_list(&[4, 5]).as_bytes()),
            Some(vec![4, 5])
        );
    }

    #[test]
    fn elements_are_unique_and_keys_rotate() {
        let g = Appends::new(2, 3);
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..30 {
            let p = g.next(&mut rng);
            assert_eq!(p.f, F_TXN);
            for m in p.args.as_array().unwrap() {
                let (f, k, a) = micro_op(m).unwrap();
                assert!(k.starts_with(&p.key));
                if f == "append" {
                    assert!(seen.insert(a.as_u64().unwrap()));
                }
            }
        }
        // 30 ops over groups of 2 keys x 3 ops: 5 groups of 2 keys.
        assert_eq!(g.keys().len(), 10);
    }
}
