//! The register workload's checker: splits the history by key and checks
//! each key's operations for linearizability (linearizability is local, so
//! the keys can be checked apart).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::linearizable::{check, Limits, LinOp, Outcome, RegOp, GARBLED};
use super::shrink::shrink;
use super::{CheckResult, Verdict};
use crate::history::{EventType, Op};

/// The `error` of a `fail`ed cas whose comparison was false: it executed,
/// and saw a value other than the expected one.
pub const COMPARE_FAILED: &str = "compare-failed";

/// How a register value is stored in the history: a number, or `null`
/// for an absent key; anything else is garbled.
pub fn parse_value(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => Some(n.as_u64().unwrap_or(GARBLED)),
        Value::String(s) => Some(s.parse().unwrap_or(GARBLED)),
        _ => None,
    }
}

fn pair(v: &Value) -> Option<(u64, u64)> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => Some((a.as_u64()?, b.as_u64()?)),
        _ => None,
    }
}

/// The checker's view of one history operation; `Ok(None)` if it does not
/// constrain the register (failed, or a read without result).
fn to_lin(op: &Op) -> Result<Option<LinOp>, String> {
    let ret = match op.kind {
        EventType::Ok => op.end,
        _ => None,
    };
    let bad = || {
        format!(
            "malformed {} op of process {}: {}",
            op.f, op.process, op.args
        )
    };
    let reg = match (op.f.as_str(), op.kind) {
        ("read", EventType::Ok) => {
            if !op.result.is_null() && !op.result.is_number() && !op.result.is_string() {
                return Err(bad());
            }
            RegOp::Read(parse_value(&op.result))
        }
        ("read", _) => return Ok(None),
        ("write", EventType::Fail) | ("cas", EventType::Fail)
            if op.error.as_deref() != Some(COMPARE_FAILED) =>
        {
            return Ok(None)
        }
        ("write", _) => RegOp::Write(op.args.as_u64().ok_or_else(bad)?),
        ("cas", EventType::Fail) => {
            let (e, _) = pair(&op.args).ok_or_else(bad)?;
            return Ok(Some(LinOp {
                call: op.start,
                ret: op.end,
                op: RegOp::CasFailed(e),
            }));
        }
        ("cas", _) => {
            let (e, n) = pair(&op.args).ok_or_else(bad)?;
            RegOp::Cas(e, n)
        }
        _ => return Ok(None),
    };
    Ok(Some(LinOp {
        call: op.start,
        ret,
        op: reg,
    }))
}

/// One operation as the report draws it.
pub(crate) fn op_json(op: &Op) -> Value {
    json!({
        "process": op.process,
        "f": op.f,
        "type": op.kind.as_str(),
        "args": op.args,
        "result": op.result,
        "error": op.error,
        "node": op.node,
        "start": op.start,
        "end": op.end,
    })
}

/// The operations around a failure: those overlapping the stuck operation
/// and the few that completed just before it.
fn window(ops: &[&Op], stuck: usize) -> Vec<Value> {
    let s = ops[stuck];
    let s_end = s.end.unwrap_or(u64::MAX);
    let mut before: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].end.is_some_and(|e| e < s.start))
        .collect();
    before.sort_by_key(|&i| ops[i].end);
    let keep_before: Vec<usize> = before.iter().rev().take(8).copied().collect();
    let mut idx: Vec<usize> = (0..ops.len())
        .filter(|&i| {
            keep_before.contains(&i)
                || (ops[i].start <= s_end && ops[i].end.unwrap_or(u64::MAX) >= s.start)
        })
        .collect();
    idx.sort_by_key(|&i| ops[i].start);
    idx.truncate(60);
    idx.into_iter().map(|i| op_json(ops[i])).collect()
}

/// The window (see `window`) around `op`, one of `ops`.
pub(crate) fn window_around(ops: &[&Op], op: &Op) -> Vec<Value> {
    match ops.iter().position(|o| std::ptr::eq(*o, op)) {
        Some(i) => window(ops, i),
        None => vec![op_json(op)],
    }
}

/// Checks every key's register operations within `budget` in total.
pub fn check_registers(ops: &[Op], budget: Duration) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| matches!(o.f.as_str(), "read" | "write" | "cas"))
    {
        if let Some(k) = op.key.as_deref() {
            by_key.entry(k).or_default().push(op);
        }
    }
    let deadline = Instant::now() + budget;
    let (mut valid, mut failures, mut unknown) = (0usize, Vec::new(), Vec::new());
    let keys = by_key.len();
    for (n, (key, key_ops)) in by_key.iter().enumerate() {
        let mut lin = Vec::new();
        let mut origin = Vec::new();
        let mut malformed = None;
        for (i, op) in key_ops.iter().enumerate() {
            match to_lin(op) {
                Ok(Some(l)) => {
                    lin.push(l);
                    origin.push(i);
                }
                Ok(None) => {}
                Err(e) => malformed = Some(e),
            }
        }
        if let Some(e) = malformed {
            unknown.push(json!({ "key": key, "reason": e }));
            continue;
        }
        // Share what is left of the budget among the keys left, but give
        // each at least a second.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = (left / (keys - n) as u32).max(Duration::from_secs(1));
        let limits = Limits {
            deadline: Instant::now() + share,
            max_bytes: 512 << 20,
        };
        match check(&lin, limits) {
            Outcome::Linearizable => valid += 1,
            Outcome::Unknown(why) => unknown.push(json!({ "key": key, "reason": why })),
            Outcome::NotLinearizable(f) => {
                let stuck = origin[f.op];
                // The smallest failing window if shrinking finishes in
                // time, else the operations around the stuck one.
                let until = Instant::now() + share.min(Duration::from_secs(10));
                let shrunk = shrink(&lin, until).map(|w| {
                    let mut ops: Vec<&Op> = w.iter().map(|&i| key_ops[origin[i]]).collect();
                    ops.sort_by_key(|o| o.start);
                    ops.into_iter().map(op_json).collect::<Vec<_>>()
                });
                failures.push(json!({
                    "key": key,
                    "op": op_json(key_ops[stuck]),
                    "linearized": f.linearized,
                    "possible_values": f.states,
                    "shrunk": shrunk.is_some(),
                    "window": shrunk.unwrap_or_else(|| window(key_ops, stuck)),
                }));
            }
        }
    }
    let total_ops: usize = by_key.values().map(Vec::len).sum();
    let (verdict, summary) = if !failures.is_empty() {
        (
            Verdict::Invalid,
            format!(
                "{} of {keys} keys not linearizable (first: {})",
                failures.len(),
                failures[0]["key"].as_str().unwrap_or("?")
            ),
        )
    } else if !unknown.is_empty() {
        (
            Verdict::Unknown,
            format!("{} of {keys} keys could not be decided", unknown.len()),
        )
    } else {
        (
            Verdict::Valid,
            format!("{keys} keys, {total_ops} ops linearizable"),
        )
    };
    CheckResult {
        name: "linearizable".into(),
        verdict,
        summary,
        details: json!({
            "keys": keys,
            "ops": total_ops,
            "valid_keys": valid,
            "failures": failures,
            "unknown": unknown,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;

    fn op(p: u64, f: &str, kind: EventType, args: Value, result: Value, t: (u64, u64)) -> Op {
        Op {
            process: Process::Worker(p),
            f: f.into(),
            key: Some("k".into()),
            node: None,
            args,
            kind,
            result,
            error: None,
            start: t.0,
            end: (kind != EventType::Info).then_some(t.1),
        }
    }

    #[test]
    fn valid_and_invalid_histories() {
        let ok = EventType::Ok;
        let mut h = vec![
            op(0, "write", ok, json!(1), json!(1), (0, 10)),
            op(1, "read", ok, Value::Null, json!(1), (20, 30)),
            op(0, "cas", ok, json!([1, 2]), json!([1, 2]), (40, 50)),
            op(1, "read", ok, Value::Null, json!(2), (60, 70)),
            // Failed outright (e.g. connection refused): ignored.
            op(2, "write", EventType::Fail, json!(9), Value::Null, (70, 75)),
            op(
                3,
                "read",
                EventType::Info,
                Value::Null,
                Value::Null,
                (70, 75),
            ),
        ];
        let r = check_registers(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        // A cas that found a value other than the current one.
        let mut cf = op(
            2,
            "cas",
            EventType::Fail,
            json!([2, 3]),
            json!([2, 3]),
            (80, 90),
        );
        cf.error = Some(COMPARE_FAILED.into());
        h.push(cf);
        let r = check_registers(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert_eq!(r.details["failures"][0]["key"], "k");
        // Shrunk to the cas that found another value and what it needs.
        assert_eq!(r.details["failures"][0]["shrunk"], true, "{r:?}");
        let w = r.details["failures"][0]["window"].as_array().unwrap();
        assert!(!w.is_empty() && w.len() < h.len(), "{w:?}");
    }

    #[test]
    fn malformed_ops_make_the_key_unknown() {
        let h = vec![op(0, "write", EventType::Ok, json!("x"), json!(1), (0, 10))];
        let r = check_registers(&h, Duration::from_secs(5));
        assert_eq!(r.verdict, Verdict::Unknown);
    }
}
