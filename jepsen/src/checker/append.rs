//! The append workload's checker.
//!
//! What it requires of the store (etcd promises strict serializability):
//! * every list read is built of elements that some not-failed transaction
//!   appended to that key, each once (no garbage, no aborted or duplicated
//!   element), and ends with the last element its transaction appended to
//!   that key when it appended any (no intermediate read);
//! * all reads of one key are prefixes of one order (the list never forks
//!   or reorders);
//! * a read never misses an element whose append was acknowledged before
//!   the read began (no lost or stale write), the end-of-run reads
//!   included;
//! * the committed transactions have no dependency cycle of write-write,
//!   write-read and read-write edges (Adya's G0, G1c and G2), so they are
//!   serializable.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use super::register::{op_json, window_around};
use super::{CheckResult, Verdict};
use crate::history::{Event, EventType, Op, Process};
use crate::workloads::append::{micro_op, FINAL_PROCESS, F_TXN};

/// How many problems are listed in the details.
const MAX_PROBLEMS: usize = 20;

/// A transaction as the checker sees it.
struct Txn<'a> {
    op: &'a Op,
    kind: EventType,
    /// `(key, element)` appended, in order.
    appends: Vec<(&'a str, u64)>,
    /// `(key, list)` read, in order (only for `ok`).
    reads: Vec<(&'a str, Vec<u64>)>,
    /// For each read: the last element this transaction appended to that
    /// key before it, if any.
    own_last: Vec<Option<u64>>,
}

fn parse_list(v: &Value) -> Option<Vec<u64>> {
    v.as_array()?.iter().map(Value::as_u64).collect()
}

fn parse<'a>(op: &'a Op, kind: EventType) -> Result<Txn<'a>, String> {
    let bad = || format!("malformed txn of process {}: {}", op.process, op.args);
    let mut t = Txn {
        op,
        kind,
        appends: Vec::new(),
        reads: Vec::new(),
        own_last: Vec::new(),
    };
    for m in op.args.as_array().ok_or_else(bad)? {
        let (f, k, a) = micro_op(m).ok_or_else(bad)?;
        if f == "append" {
            t.appends.push((k, a.as_u64().ok_or_else(bad)?));
        }
    }
    if kind == EventType::Ok {
        let mut own: HashMap<&str, u64> = HashMap::new();
        for m in op.result.as_array().ok_or_else(bad)? {
            let (f, k, a) = micro_op(m).ok_or_else(bad)?;
            if f == "r" {
                t.reads.push((k, parse_list(a).ok_or_else(bad)?));
                t.own_last.push(own.get(k).copied());
            } else if let Some(e) = a.as_u64() {
                own.insert(k, e);
            }
        }
    }
    Ok(t)
}

/// The end-of-run reads as operations that begin and end at their time.
fn final_ops(events: &[Event]) -> Vec<Op> {
    events
        .iter()
        .filter(|e| {
            e.kind == EventType::Ok
                && e.f == F_TXN
                && matches!(&e.process, Process::Named(n) if n == FINAL_PROCESS)
        })
        .map(|e| Op {
            process: e.process.clone(),
            f: e.f.clone(),
            key: None,
            node: e.node.clone(),
            args: Value::Array(Vec::new()),
            kind: EventType::Ok,
            result: e.value.clone(),
            error: None,
            start: e.time,
            end: Some(e.time),
        })
        .collect()
}

/// Checks the append transactions of `ops` and the end-of-run reads in
/// `events`.
pub fn check_append(events: &[Event], ops: &[Op]) -> CheckResult {
    let finals = final_ops(events);
    let mut txns: Vec<Txn> = Vec::new();
    let mut malformed = Vec::new();
    for op in ops.iter().filter(|o| o.f == F_TXN) {
        let kind = match (op.kind, op.error.as_deref()) {
            // A false comparison wrote nothing; neither did a refused call.
            (EventType::Fail, _) => EventType::Fail,
            (k, _) => k,
        };
        match parse(op, kind) {
            Ok(t) => txns.push(t),
            Err(e) => malformed.push(json!(e)),
        }
    }
    for op in &finals {
        let mut t = Txn {
            op,
            kind: EventType::Ok,
            appends: Vec::new(),
            reads: Vec::new(),
            own_last: Vec::new(),
        };
        for m in op.result.as_array().into_iter().flatten() {
            match micro_op(m).and_then(|(_, k, a)| Some((k, parse_list(a)?))) {
                Some(r) => {
                    t.reads.push(r);
                    t.own_last.push(None);
                }
                None => malformed.push(json!(format!("malformed final read: {m}"))),
            }
        }
        txns.push(t);
    }
    let worker_ops: Vec<&Op> = ops.iter().filter(|o| o.f == F_TXN).collect();
    let mut problems: Vec<Value> = Vec::new();
    let mut windows: Vec<Value> = Vec::new();
    let mut problem = |text: String, at: Option<&Op>| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(json!(text));
            if let Some(op) = at.filter(|_| windows.len() < 5) {
                windows.push(json!({
                    "title": text,
                    "key": op.key,
                    "window": window_around(&worker_ops, op),
                }));
            }
        }
    };

    // Who appended each element, and whether that can have taken effect.
    let mut appended: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for &(k, e) in &t.appends {
            if appended.insert((k, e), i).is_some() {
                malformed.push(json!(format!("element {e} appended to {k} twice")));
            }
        }
    }

    // Elements, duplicates, intermediate reads; the longest read per key.
    let mut longest: BTreeMap<&str, &Vec<u64>> = BTreeMap::new();
    let mut reads_checked = 0usize;
    for t in &txns {
        for (j, (k, list)) in t.reads.iter().enumerate() {
            reads_checked += 1;
            let mut seen = HashSet::new();
            for &e in list {
                if !seen.insert(e) {
                    problem(
                        format!("duplicate element {e} in a read of {k}: {list:?}"),
                        Some(t.op),
                    );
                }
                match appended.get(&(*k, e)) {
                    None => problem(
                        format!("read of {k} holds {e}, which nobody appended there"),
                        Some(t.op),
                    ),
                    Some(&w) if txns[w].kind == EventType::Fail => problem(
                        format!(
                            "read of {k} holds {e}, appended by a transaction that failed ({})",
                            txns[w].op.error.as_deref().unwrap_or("?")
                        ),
                        Some(t.op),
                    ),
                    Some(_) => {}
                }
            }
            // A transaction that appended to k and then read k must see
            // its own last append at the end.
            if let Some(last) = t.own_last[j] {
                if list.last() != Some(&last) {
                    problem(
                        format!("a transaction appended {last} to {k} and then read {list:?}"),
                        Some(t.op),
                    );
                }
            }
            if let Some(l) = longest.get(k) {
                if l.len() >= list.len() {
                    continue;
                }
            }
            longest.insert(k, list);
        }
    }
    // Every read is a prefix of the longest one.
    for t in &txns {
        for (k, list) in &t.reads {
            let l = longest[k];
            if l[..list.len()] != list[..] {
                problem(
                    format!(
                        "reads of {k} disagree on the order: {list:?} is not a prefix of {l:?}"
                    ),
                    Some(t.op),
                );
            }
        }
    }
    // No read misses an append acknowledged before it began.
    let mut acked: Vec<(u64, &str, u64, &Op)> = txns
        .iter()
        .filter(|t| t.kind == EventType::Ok)
        .flat_map(|t| {
            t.appends
                .iter()
                .map(move |&(k, e)| (t.op.end.unwrap_or(u64::MAX), k, e, t.op))
        })
        .collect();
    acked.sort_by_key(|a| a.0);
    let mut lost = 0usize;
    for t in &txns {
        for (k, list) in &t.reads {
            let have: HashSet<u64> = list.iter().copied().collect();
            for &(end, ak, e, by) in acked.iter().take_while(|a| a.0 < t.op.start) {
                if ak == *k && !have.contains(&e) {
                    lost += 1;
                    let what = if t.op.process == Process::named(FINAL_PROCESS) {
                        "the end-of-run read"
                    } else {
                        "a read"
                    };
                    problem(
                        format!(
                            "{what} of {k} at {} ns misses {e}, whose append was acknowledged at {end} ns",
                            t.op.start
                        ),
                        Some(if t.op.process.is_worker() { t.op } else { by }),
                    );
                }
            }
        }
    }
    // Dependency cycles among committed transactions.
    let committed: Vec<usize> = (0..txns.len())
        .filter(|&i| txns[i].kind == EventType::Ok && txns[i].op.process.is_worker())
        .collect();
    let cycle = dependency_cycle(&txns, &committed, &longest, &appended);
    if let Some(c) = &cycle {
        let text: Vec<String> = c
            .iter()
            .map(|(i, edge)| format!("{} -{edge}->", txns[*i].op.args))
            .collect();
        problem(
            format!("dependency cycle: {}", text.join(" ")),
            Some(txns[c[0].0].op),
        );
    }

    let keys = longest.len();
    let (verdict, summary) = if !problems.is_empty() {
        (
            Verdict::Invalid,
            format!(
                "{} problem(s) over {keys} lists (first: {})",
                problems.len(),
                problems[0].as_str().unwrap_or("?")
            ),
        )
    } else if !malformed.is_empty() {
        (
            Verdict::Unknown,
            format!("{} malformed entries", malformed.len()),
        )
    } else {
        (
            Verdict::Valid,
            format!(
                "{} txns ({} committed), {reads_checked} reads of {keys} lists: consistent, nothing lost, no cycle",
                worker_ops.len(),
                committed.len()
            ),
        )
    };
    CheckResult {
        name: "append".into(),
        verdict,
        summary,
        details: json!({
            "txns": worker_ops.len(),
            "committed": committed.len(),
            "lists": keys,
            "lost": lost,
            "problems": problems,
            "windows": windows,
            "unknown": malformed,
            "cycle": cycle.map(|c| c.iter().map(|(i, e)| json!({"op": op_json(txns[*i].op), "edge": e})).collect::<Vec<_>>()),
        }),
    }
}

/// A cycle among `nodes` of the dependency graph, as (transaction, edge
/// to the next one) pairs; edges: `ww` (appended earlier in the key's
/// order), `wr` (its element is the last one another read), `rw` (read a
/// list that the other's element extends next).
fn dependency_cycle(
    txns: &[Txn],
    nodes: &[usize],
    longest: &BTreeMap<&str, &Vec<u64>>,
    appended: &HashMap<(&str, u64), usize>,
) -> Option<Vec<(usize, &'static str)>> {
    let is_node: HashSet<usize> = nodes.iter().copied().collect();
    let mut edges: HashMap<usize, Vec<(usize, &'static str)>> = HashMap::new();
    let mut add = |a: usize, b: usize, kind: &'static str| {
        if a != b && is_node.contains(&a) && is_node.contains(&b) {
            edges.entry(a).or_default().push((b, kind));
        }
    };
    for (k, order) in longest {
        let writer = |e: u64| appended.get(&(*k, e)).copied();
        for pair in order.windows(2) {
            if let (Some(a), Some(b)) = (writer(pair[0]), writer(pair[1])) {
                add(a, b, "ww");
            }
        }
        for &i in nodes {
            for (rk, list) in &txns[i].reads {
                if rk != k {
                    continue;
                }
                if let Some(w) = list.last().and_then(|&e| writer(e)) {
                    add(w, i, "wr");
                }
                if let Some(w) = order.get(list.len()).and_then(|&e| writer(e)) {
                    add(i, w, "rw");
                }
            }
        }
    }
    // Depth-first search for a back edge, iteratively.
    let mut state: HashMap<usize, u8> = HashMap::new(); // 1 on stack, 2 done
    for &root in nodes {
        if state.contains_key(&root) {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        let mut path: Vec<(usize, &'static str)> = vec![(root, "")];
        state.insert(root, 1);
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let out = edges.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&(w, kind)) = out.get(*next) {
                *next += 1;
                match state.get(&w) {
                    Some(1) => {
                        if let Some(last) = path.last_mut() {
                            last.1 = kind;
                        }
                        let from = path.iter().position(|(n, _)| *n == w).unwrap_or(0);
                        return Some(path[from..].to_vec());
                    }
                    Some(_) => {}
                    None => {
                        if let Some(last) = path.last_mut() {
                            last.1 = kind;
                        }
                        state.insert(w, 1);
                        stack.push((w, 0));
                        path.push((w, ""));
                    }
                }
            } else {
                state.insert(v, 2);
                stack.pop();
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::register::COMPARE_FAILED;

    fn txn(p: u64, kind: EventType, mops: Value, result: Value, t: (u64, u64)) -> Op {
        Op {
            process: Process::Worker(p),
            f: F_TXN.into(),
            key: Some("a/00000".into()),
            node: None,
            args: mops,
            kind,
            result,
            error: (kind == EventType::Fail).then(|| COMPARE_FAILED.to_string()),
            start: t.0,
            end: (kind != EventType::Info).then_some(t.1),
        }
    }

    fn ok(p: u64, mops: Value, result: Value, t: (u64, u64)) -> Op {
        txn(p, EventType::Ok, mops, result, t)
    }

    fn check(ops: &[Op]) -> CheckResult {
        check_append(&[], ops)
    }

    #[test]
    fn a_serial_history_is_valid() {
        let h = vec![
            ok(
                0,
                json!([["append", "x", 1]]),
                json!([["append", "x", 1]]),
                (0, 10),
            ),
            ok(
                1,
                json!([["append", "x", 2], ["r", "x", null]]),
                json!([["append", "x", 2], ["r", "x", [1, 2]]]),
                (20, 30),
            ),
            ok(
                0,
                json!([["r", "x", null]]),
                json!([["r", "x", [1, 2]]]),
                (40, 50),
            ),
            // Failed: its element must never show up, and it does not.
            txn(
                2,
                EventType::Fail,
                json!([["append", "x", 3]]),
                Value::Null,
                (41, 45),
            ),
            // Unknown outcome: may show up later.
            txn(
                3,
                EventType::Info,
                json!([["append", "x", 4]]),
                Value::Null,
                (42, 0),
            ),
            ok(
                1,
                json!([["r", "x", null]]),
                json!([["r", "x", [1, 2, 4]]]),
                (60, 70),
            ),
        ];
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
    }

    #[test]
    fn lost_element_is_invalid() {
        let h = vec![
            ok(
                0,
                json!([["append", "x", 1]]),
                json!([["append", "x", 1]]),
                (0, 10),
            ),
            ok(
                1,
                json!([["r", "x", null]]),
                json!([["r", "x", []]]),
                (20, 30),
            ),
        ];
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("misses 1"), "{}", r.summary);
        assert_eq!(r.details["windows"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn lost_at_the_end_of_the_run_is_invalid() {
        let h = vec![ok(
            0,
            json!([["append", "x", 1]]),
            json!([["append", "x", 1]]),
            (0, 10),
        )];
        let mut fin = Event::new(
            Process::named(FINAL_PROCESS),
            EventType::Ok,
            F_TXN,
            json!([["r", "x", []]]),
        );
        fin.time = 100;
        let r = check_append(&[fin], &h);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("end-of-run"), "{}", r.summary);
    }

    #[test]
    fn forked_order_aborted_and_phantom_elements_are_invalid() {
        let base = || {
            vec![
                ok(
                    0,
                    json!([["append", "x", 1]]),
                    json!([["append", "x", 1]]),
                    (0, 10),
                ),
                ok(
                    1,
                    json!([["append", "x", 2]]),
                    json!([["append", "x", 2]]),
                    (0, 10),
                ),
            ]
        };
        let mut h = base();
        h.push(ok(
            2,
            json!([["r", "x", null]]),
            json!([["r", "x", [1, 2]]]),
            (20, 30),
        ));
        h.push(ok(
            3,
            json!([["r", "x", null]]),
            json!([["r", "x", [2, 1]]]),
            (20, 30),
        ));
        assert_eq!(check(&h).verdict, Verdict::Invalid);

        let mut h = base();
        h.push(txn(
            4,
            EventType::Fail,
            json!([["append", "x", 3]]),
            Value::Null,
            (0, 5),
        ));
        h.push(ok(
            2,
            json!([["r", "x", null]]),
            json!([["r", "x", [1, 2, 3]]]),
            (20, 30),
        ));
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.summary.contains("failed"), "{}", r.summary);

        let mut h = base();
        h.push(ok(
            2,
            json!([["r", "x", null]]),
            json!([["r", "x", [1, 2, 9]]]),
            (20, 30),
        ));
        assert!(check(&h).summary.contains("nobody appended"));

        let mut h = base();
        h.push(ok(
            2,
            json!([["r", "x", null]]),
            json!([["r", "x", [1, 1, 2]]]),
            (20, 30),
        ));
        assert!(check(&h).summary.contains("duplicate"));
    }

    #[test]
    fn a_write_skew_cycle_is_invalid() {
        // T1 reads x=[] and appends to y; T2 reads y=[] and appends to x;
        // both commit concurrently: rw edges both ways (G2).
        let h = vec![
            ok(
                0,
                json!([["r", "x", null], ["append", "y", 1]]),
                json!([["r", "x", []], ["append", "y", 1]]),
                (0, 10),
            ),
            ok(
                1,
                json!([["r", "y", null], ["append", "x", 2]]),
                json!([["r", "y", []], ["append", "x", 2]]),
                (0, 10),
            ),
            ok(
                2,
                json!([["r", "x", null], ["r", "y", null]]),
                json!([["r", "x", [2]], ["r", "y", [1]]]),
                (20, 30),
            ),
        ];
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("cycle"), "{}", r.summary);
    }

    #[test]
    fn own_append_must_be_read() {
        let h = vec![ok(
            0,
            json!([["append", "x", 1], ["r", "x", null]]),
            json!([["append", "x", 1], ["r", "x", []]]),
            (0, 10),
        )];
        assert_eq!(check(&h).verdict, Verdict::Invalid);
    }
}
