//! The register workload: reads, writes and compare-and-sets.
//!
//! Operations go to a small group of keys (`r/<generation>/<k>`); after a
//! fixed number of operations per key the workers move to a fresh group,
//! so that each key's history stays small enough for an exhaustive
//! linearizability search. Written values are unique across the run.
//! A write is a `Put`; a cas is a `Txn` comparing the key's value with the
//! expected one and putting the new one if equal (`succeeded: false` is
//! recorded as a `fail` with error `compare-failed`: it executed and saw
//! another value).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde_json::{json, Value};

use super::{failed, Completion, Planned};
use crate::checker::register::COMPARE_FAILED;
use crate::history::EventType;
use crate::rng::Rng;

/// The register operation generator.
pub struct Registers {
    keys_per_group: u64,
    ops_per_key: u64,
    issued: AtomicU64,
    last_value: AtomicU64,
    /// The last value seen on each key, to make compare-and-sets that can
    /// succeed.
    seen: Mutex<HashMap<String, u64>>,
}

impl Registers {
    /// `keys_per_group` keys at a time, about `ops_per_key` ops each.
    pub fn new(keys_per_group: u64, ops_per_key: u64) -> Self {
        Registers {
            keys_per_group: keys_per_group.max(1),
            ops_per_key: ops_per_key.max(1),
            issued: AtomicU64::new(0),
            last_value: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn fresh_value(&self) -> u64 {
        self.last_value.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The next operation.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let group = n / (self.keys_per_group * self.ops_per_key);
        let key = format!("r/{group:05}/{}", rng.below(self.keys_per_group));
        match rng.below(100) {
            0..50 => Planned {
                f: "read",
                key,
                args: Value::Null,
            },
            50..75 => Planned {
                f: "write",
                key,
                args: json!(self.fresh_value()),
            },
            _ => {
                let seen = self
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .copied();
                let expected = match seen {
                    Some(v) if rng.chance(0.8) => v,
                    _ => {
                        let last = self.last_value.load(Ordering::Relaxed);
                        last.saturating_sub(rng.below(5)).max(1)
                    }
                };
                Planned {
                    f: "cas",
                    key,
                    args: json!([expected, self.fresh_value()]),
                }
            }
        }
    }

    /// Remembers values seen, for later compare-and-sets.
    pub fn observe(&self, op: &Planned, done: &Completion) {
        if done.0 != EventType::Ok {
            return;
        }
        let v = match op.f {
            "read" => done.1.as_u64(),
            "write" => op.args.as_u64(),
            "cas" => op.args.get(1).and_then(Value::as_u64),
            _ => None,
        };
        if let Some(v) = v {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(op.key.clone(), v);
        }
    }
}

/// Performs a register operation.
pub async fn execute(c: &mut Client, op: &Planned) -> Completion {
    match op.f {
        "read" => match c.get(op.key.as_str(), None).await {
            Ok(r) => {
                let v = match r.kvs().first() {
                    None => Value::Null,
                    Some(kv) => {
                        let s = String::from_utf8_lossy(kv.value());
                        s.parse::<u64>().map(|n| json!(n)).unwrap_or(json!(s))
                    }
                };
                (EventType::Ok, v, None)
            }
            Err(e) => failed(e),
        },
        "write" => {
            let v = op.args.as_u64().unwrap_or_default();
            match c.put(op.key.as_str(), v.to_string(), None).await {
                Ok(_) => (EventType::Ok, op.args.clone(), None),
                Err(e) => failed(e),
            }
        }
        "cas" => {
            let (Some(e), Some(n)) = (
                op.args.get(0).and_then(Value::as_u64),
                op.args.get(1).and_then(Value::as_u64),
            ) else {
                return (EventType::Fail, Value::Null, Some("bad cas".into()));
            };
            let txn = Txn::new()
                .when([Compare::value(
                    op.key.as_str(),
                    CompareOp::Equal,
                    e.to_string(),
                )])
                .and_then([TxnOp::put(op.key.as_str(), n.to_string(), None)]);
            match c.txn(txn).await {
                Ok(r) if r.succeeded() => (EventType::Ok, op.args.clone(), None),
                Ok(_) => (
                    EventType::Fail,
                    op.args.clone(),
                    Some(COMPARE_FAILED.to_string()),
                ),
                Err(e) => failed(e),
            }
        }
        other => (
            EventType::Fail,
            Value::Null,
            Some(format!("unknown op {other}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_rotate_and_values_are_unique() {
        let g = Registers::new(2, 5);
        let mut rng = Rng::new(1);
        let ops: Vec<Planned> = (0..40).map(|_| g.next(&mut rng)).collect();
        assert!(ops[..10].iter().all(|o| o.key.starts_with("r/00000/")));
        assert!(ops[10..20].iter().all(|o| o.key.starts_with("r/00001/")));
        let mut written: Vec<u64> = ops
            .iter()
            .filter_map(|o| match o.f {
                "write" => o.args.as_u64(),
                "cas" => o.args[1].as_u64(),
                _ => None,
            })
            .collect();
        let n = written.len();
        written.sort_unstable();
        written.dedup();
        assert_eq!(written.len(), n);
        assert!(ops.iter().any(|o| o.f == "read"));
    }
}
