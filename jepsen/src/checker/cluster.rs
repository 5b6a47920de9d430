//! Checkers of the cluster as a whole: after healing, every member has the
//! same key-value hash at the same revision; no member exited on its own.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{CheckResult, Verdict};
use crate::history::{Event, EventType, Process};

/// The `f` of a member's `HashKV` answer (process `convergence`), value
/// `{"revision": R, "hash": H, "compact": C}`.
pub const F_HASH: &str = "hash-kv";
/// The `f` of an unexpected member exit (process `monitor`).
pub const F_CRASH: &str = "crash";
/// The `f` of a member the harness could not start again (process
/// `monitor`).
pub const F_START_FAILED: &str = "start-failed";

/// Every member answered `HashKV` at the same revision with the same hash.
pub fn check_convergence(events: &[Event]) -> CheckResult {
    let mk = |verdict, summary: String, details| CheckResult {
        name: "convergence".into(),
        verdict,
        summary,
        details,
    };
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    let mut missing = Vec::new();
    for e in events.iter().filter(|e| {
        e.f == F_HASH && e.process == Process::named("convergence") && e.kind != EventType::Invoke
    }) {
        let node = e.node.clone().unwrap_or_default();
        if e.kind == EventType::Ok {
            answers.insert(node, e.value.clone());
        } else {
            missing.push(format!("{node}: {}", e.error.clone().unwrap_or_default()));
        }
    }
    let details = json!({ "answers": answers, "missing": missing });
    if answers.is_empty() && missing.is_empty() {
        return mk(Verdict::Unknown, "no HashKV was taken".into(), details);
    }
    let distinct: Vec<(&Value, &Value)> = {
        let mut d: Vec<(&Value, &Value)> = Vec::new();
        for v in answers.values() {
            let key = (&v["revision"], &v["hash"]);
            if !d.contains(&key) {
                d.push(key);
            }
        }
        d
    };
    if distinct.len() > 1 {
        let list = answers
            .iter()
            .map(|(n, v)| format!("{n}: rev {} hash {}", v["revision"], v["hash"]))
            .collect::<Vec<_>>()
            .join(", ");
        return mk(Verdict::Invalid, format!("members differ: {list}"), details);
    }
    if !missing.is_empty() {
        return mk(
            Verdict::Unknown,
            format!("no answer from {}", missing.join("; ")),
            details,
        );
    }
    let (rev, hash) = distinct[0];
    mk(
        Verdict::Valid,
        format!(
            "{} members agree: revision {rev}, hash {hash}",
            answers.len()
        ),
        details,
    )
}

/// No member exited unless killed; members the harness could not start
/// again make the verdict unknown.
pub fn check_crashes(events: &[Event]) -> CheckResult {
    let mk = |verdict, summary: String, details| CheckResult {
        name: "crashes".into(),
        verdict,
        summary,
        details,
    };
    let describe = |e: &Event| {
        format!(
            "{} at {:.1}s: {}",
            e.node.as_deref().unwrap_or("?"),
            e.time as f64 / 1e9,
            e.error.as_deref().unwrap_or("")
        )
    };
    let of = |f: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.process == Process::named("monitor") && e.f == f)
            .map(describe)
            .collect()
    };
    let (crashes, unstarted) = (of(F_CRASH), of(F_START_FAILED));
    let details = json!({ "crashes": crashes, "start_failures": unstarted });
    if !crashes.is_empty() {
        mk(
            Verdict::Invalid,
            format!("member exited by itself: {}", crashes.join("; ")),
            details,
        )
    } else if !unstarted.is_empty() {
        mk(
            Verdict::Unknown,
            format!("could not restart: {}", unstarted.join("; ")),
            details,
        )
    } else {
        mk(Verdict::Valid, "no member exited by itself".into(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(node: &str, rev: i64, h: u64) -> Event {
        Event::new(
            Process::named("convergence"),
            EventType::Ok,
            F_HASH,
            json!({"revision": rev, "hash": h, "compact": 0}),
        )
        .node(node)
    }

    #[test]
    fn convergence() {
        let same = [hash("n1", 9, 5), hash("n2", 9, 5), hash("n3", 9, 5)];
        assert_eq!(check_convergence(&same).verdict, Verdict::Valid);
        let differ = [hash("n1", 9, 5), hash("n2", 9, 6)];
        assert_eq!(check_convergence(&differ).verdict, Verdict::Invalid);
        let mut partial = vec![hash("n1", 9, 5)];
        partial.push(
            Event::new(
                Process::named("convergence"),
                EventType::Info,
                F_HASH,
                Value::Null,
            )
            .node("n2")
            .error("timeout"),
        );
        assert_eq!(check_convergence(&partial).verdict, Verdict::Unknown);
        assert_eq!(check_convergence(&[]).verdict, Verdict::Unknown);
    }

    #[test]
    fn crashes() {
        assert_eq!(check_crashes(&[]).verdict, Verdict::Valid);
        let c = Event::new(
            Process::named("monitor"),
            EventType::Info,
            F_CRASH,
            Value::Null,
        )
        .node("n1")
        .error("exit status: 2");
        assert_eq!(check_crashes(&[c]).verdict, Verdict::Invalid);
    }
}
