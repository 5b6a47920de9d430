//! The watch checker and the committed-writes checker.
//!
//! The committed history is what every member returns, after the run and
//! after healing, for a watch of all keys from revision 1 (nothing is
//! compacted during a run). It must be the same on every member, with one
//! event per revision from 2 on and key versions counting up by one.
//! Each session of each live watcher (from its start revision until its
//! stream broke or the run ended) must equal the committed history from
//! that revision on: no gap, duplicate, reordering or invented event. The
//! last session must reach the final revision (every watcher catches up).
//!
//! The committed history is also checked against the client operations:
//! every acknowledged write is in it, every value in it was written by an
//! operation not known to have failed, and no value is applied twice.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CheckResult, Verdict};
use crate::history::{Event, EventType, Op, Process};

/// One watch event: `[revision, key, value or null for a delete, version]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent(pub i64, pub String, pub Option<String>, pub i64);

impl WatchEvent {
    /// The revision.
    pub fn revision(&self) -> i64 {
        self.0
    }
}

/// The `f` of watch sessions, events and errors (process `watch-<node>`).
pub const F_WATCH: &str = "watch";
/// The `f` of the end-of-run history read (process `final-<node>`).
pub const F_FINAL: &str = "final-watch";
/// The `f` of the end of that read, value `{"revision": R}`.
pub const F_FINAL_END: &str = "final-watch-end";

fn events_of(v: &Value) -> Result<Vec<WatchEvent>, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("malformed watch events: {e}"))
}

/// One watcher session: its start revision and what it received.
#[derive(Debug, Default)]
struct Session {
    from: i64,
    events: Vec<WatchEvent>,
}

/// Per process name, the sessions (watchers) or the history (finals).
#[derive(Default)]
struct Parsed {
    watchers: BTreeMap<String, Vec<Session>>,
    finals: BTreeMap<String, (Vec<WatchEvent>, Option<i64>)>,
    errors: Vec<String>,
}

fn parse(events: &[Event]) -> Parsed {
    let mut p = Parsed::default();
    for e in events {
        let Process::Named(name) = &e.process else {
            continue;
        };
        match (e.f.as_str(), e.kind) {
            (F_WATCH, EventType::Invoke) => {
                let from = e.value.get("from").and_then(Value::as_i64).unwrap_or(1);
                p.watchers.entry(name.clone()).or_default().push(Session {
                    from,
                    events: Vec::new(),
                });
            }
            (F_WATCH, EventType::Ok) => match events_of(&e.value) {
                Ok(evs) => match p.watchers.get_mut(name).and_then(|s| s.last_mut()) {
                    Some(s) => s.events.extend(evs),
                    None => p
                        .errors
                        .push(format!("{name}: events before a session start")),
                },
                Err(err) => p.errors.push(format!("{name}: {err}")),
            },
            (F_FINAL, EventType::Ok) => match events_of(&e.value) {
                Ok(evs) => p.finals.entry(name.clone()).or_default().0.extend(evs),
                Err(err) => p.errors.push(format!("{name}: {err}")),
            },
            (F_FINAL_END, EventType::Ok) => {
                p.finals.entry(name.clone()).or_default().1 =
                    e.value.get("revision").and_then(Value::as_i64);
            }
            _ => {}
        }
    }
    p
}

/// The committed history, if every member that answered returned the same
/// complete one; else why not (`Err(true, ..)` if members disagree).
fn committed(p: &Parsed) -> Result<(Vec<WatchEvent>, i64), (bool, String)> {
    let complete: Vec<(&String, &Vec<WatchEvent>, i64)> = p
        .finals
        .iter()
        .filter_map(|(n, (evs, end))| end.map(|r| (n, evs, r)))
        .collect();
    let Some(&(first_name, first, rev)) = complete.first() else {
        return Err((false, "no member returned the final history".into()));
    };
    for &(n, evs, r) in &complete[1..] {
        if r != rev || evs != first {
            let at = first
                .iter()
                .zip(evs.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(evs.len()));
            return Err((
                true,
                format!(
                    "{first_name} and {n} return different histories (revision {rev} vs {r}; first difference at event {at}: {:?} vs {:?})",
                    first.get(at),
                    evs.get(at)
                ),
            ));
        }
    }
    Ok((first.clone(), rev))
}

/// Internal consistency of the committed history: revisions 2, 3, ...
/// with no gap (every write is watched; the events of one transaction
/// share a revision) and versions counting up per key.
fn consistency(h: &[WatchEvent], rev: i64) -> Option<String> {
    let mut version: HashMap<&str, i64> = HashMap::new();
    let mut expect = 2;
    for (i, e) in h.iter().enumerate() {
        // Another event of the previous revision's transaction.
        let same_txn = i > 0 && e.0 == expect - 1;
        if e.0 != expect && !same_txn {
            return Some(format!(
                "event {i} has revision {} where {expect} was expected",
                e.0
            ));
        }
        if !same_txn {
            expect += 1;
        }
        let v = version.entry(e.1.as_str()).or_insert(0);
        match &e.2 {
            Some(_) if e.3 != *v + 1 => {
                return Some(format!(
                    "event {i} (revision {}) puts {} at version {} after version {}",
                    e.0, e.1, e.3, v
                ))
            }
            Some(_) => *v = e.3,
            None => *v = 0,
        }
    }
    if expect - 1 != rev.max(1) {
        return Some(format!(
            "the history ends at revision {} but the members are at revision {rev}",
            expect - 1
        ));
    }
    None
}

/// Checks the live watchers against the committed history.
pub fn check_watch(events: &[Event]) -> CheckResult {
    let p = parse(events);
    let mk = |verdict, summary: String, details| CheckResult {
        name: "watch".into(),
        verdict,
        summary,
        details,
    };
    if !p.errors.is_empty() {
        return mk(Verdict::Unknown, p.errors[0].clone(), json!(p.errors));
    }
    let (hist, rev) = match committed(&p) {
        Ok(c) => c,
        Err((true, why)) => return mk(Verdict::Invalid, why, Value::Null),
        Err((false, why)) => return mk(Verdict::Unknown, why, Value::Null),
    };
    if let Some(why) = consistency(&hist, rev) {
        return mk(
            Verdict::Invalid,
            format!("committed history: {why}"),
            Value::Null,
        );
    }
    let mut problems = Vec::new();
    let mut lagging = Vec::new();
    let mut delivered = 0usize;
    for (name, sessions) in &p.watchers {
        for (k, s) in sessions.iter().enumerate() {
            delivered += s.events.len();
            if let Some(i) = (1..s.events.len()).find(|&i| s.events[i].0 < s.events[i - 1].0) {
                problems.push(json!({
                    "watcher": name,
                    "session": k,
                    "from": s.from,
                    "index": i,
                    "got": s.events[i],
                    "previous": s.events[i - 1],
                    "problem": "revision went down",
                }));
                continue;
            }
            // Writes whose outcome was unknown may apply after the final
            // revision was taken; what lies beyond it cannot be checked.
            let upto = s.events.partition_point(|e| e.0 <= rev);
            let start = hist.partition_point(|e| e.0 < s.from);
            let expected = &hist[start..];
            if let Some(i) = (0..upto).find(|&i| expected.get(i) != Some(&s.events[i])) {
                problems.push(json!({
                    "watcher": name,
                    "session": k,
                    "from": s.from,
                    "index": i,
                    "got": s.events[i],
                    "expected": expected.get(i),
                    "previous": i.checked_sub(1).map(|j| &s.events[j]),
                }));
            }
        }
        let last = sessions
            .iter()
            .filter_map(|s| s.events.last().map(WatchEvent::revision))
            .max()
            .unwrap_or(1);
        if last < rev {
            lagging.push(json!({ "watcher": name, "last": last, "final": rev }));
        }
    }
    let details = json!({
        "revision": rev,
        "committed_events": hist.len(),
        "watchers": p.watchers.len(),
        "delivered": delivered,
        "problems": problems,
        "lagging": lagging,
    });
    if p.watchers.is_empty() {
        return mk(Verdict::Unknown, "no watcher ran".into(), details);
    }
    if let Some(first) = problems.first() {
        let summary = format!(
            "{} watch sessions deviate from the committed history (first: {} session {} at event {})",
            problems.len(),
            first["watcher"].as_str().unwrap_or("?"),
            first["session"],
            first["index"]
        );
        return mk(Verdict::Invalid, summary, details);
    }
    if let Some(l) = lagging.first() {
        let summary = format!(
            "watcher {} stopped at revision {} of {rev} after the cluster healed",
            l["watcher"].as_str().unwrap_or("?"),
            l["last"]
        );
        return mk(Verdict::Invalid, summary, details);
    }
    let summary = format!(
        "{} watchers, {delivered} events, all equal to the committed history (revision {rev})",
        p.watchers.len()
    );
    mk(Verdict::Valid, summary, details)
}

/// The values a client operation tried to write, by key.
fn written(op: &Op) -> Option<String> {
    match op.f.as_str() {
        "write" | "put" => op.args.as_u64().map(|v| v.to_string()),
        "cas" => op
            .args
            .as_array()
            .and_then(|a| a.get(1))
            .and_then(Value::as_u64)
            .map(|v| v.to_string()),
        _ => None,
    }
}

/// Whether the op is known to have taken effect.
fn acknowledged(op: &Op) -> bool {
    op.kind == EventType::Ok
}

/// Checks the committed history against the client writes.
pub fn check_committed(events: &[Event], ops: &[Op]) -> CheckResult {
    let mk = |verdict, summary: String, details| CheckResult {
        name: "committed-writes".into(),
        verdict,
        summary,
        details,
    };
    let p = parse(events);
    let (hist, _) = match committed(&p) {
        Ok(c) => c,
        Err((_, why)) => return mk(Verdict::Unknown, why, Value::Null),
    };
    // (key, value) -> the ops that wrote it.
    let mut writes: HashMap<(&str, String), Vec<&Op>> = HashMap::new();
    for op in ops {
        if let (Some(k), Some(v)) = (op.key.as_deref(), written(op)) {
            writes.entry((k, v)).or_default().push(op);
        }
    }
    let mut seen: HashMap<(&str, &str), i64> = HashMap::new();
    let mut problems = Vec::new();
    for e in &hist {
        let Some(v) = e.2.as_deref() else { continue };
        // The append and lock workloads check their own keys.
        if ["a/", "lock/", "lock-fence/"]
            .iter()
            .any(|p| e.1.starts_with(p))
        {
            continue;
        }
        if let Some(prev) = seen.insert((e.1.as_str(), v), e.0) {
            problems.push(format!(
                "{}={v} was applied twice (revisions {prev} and {})",
                e.1, e.0
            ));
        }
        match writes.get(&(e.1.as_str(), v.to_string())) {
            None => problems.push(format!(
                "{}={v} at revision {} was never written by a client",
                e.1, e.0
            )),
            Some(w) if w.iter().all(|o| o.kind == EventType::Fail) => problems.push(format!(
                "{}={v} at revision {} was written by an operation reported as failed",
                e.1, e.0
            )),
            Some(_) => {}
        }
    }
    let mut acked = 0usize;
    for ((k, v), w) in &writes {
        if w.iter().any(|o| acknowledged(o)) {
            acked += 1;
            if !seen.contains_key(&(*k, v.as_str())) {
                problems.push(format!("acknowledged write {k}={v} is not in the history"));
            }
        }
    }
    problems.sort();
    let details = json!({ "acknowledged": acked, "committed": hist.len(), "problems": problems });
    match problems.first() {
        Some(p1) => mk(
            Verdict::Invalid,
            format!("{} problems, e.g. {p1}", problems.len()),
            details,
        ),
        None => mk(
            Verdict::Valid,
            format!(
                "{acked} acknowledged writes all committed, {} committed writes all accounted for",
                hist.len()
            ),
            details,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{client_ops, Event};

    fn ev(process: &str, kind: EventType, f: &str, value: Value) -> Event {
        Event::new(Process::named(process), kind, f, value)
    }
    fn w(rev: i64, key: &str, v: u64, ver: i64) -> WatchEvent {
        WatchEvent(rev, key.into(), Some(v.to_string()), ver)
    }
    fn committed_history() -> Vec<WatchEvent> {
        vec![w(2, "a", 1, 1), w(3, "b", 2, 1), w(4, "a", 3, 2)]
    }
    fn finals(h: &[WatchEvent]) -> Vec<Event> {
        let mut out = Vec::new();
        for n in ["final-n1", "final-n2"] {
            out.push(ev(n, EventType::Ok, F_FINAL, json!(h)));
            out.push(ev(n, EventType::Ok, F_FINAL_END, json!({"revision": 4})));
        }
        out
    }
    fn session(name: &str, from: i64, evs: &[WatchEvent]) -> Vec<Event> {
        vec![
            ev(name, EventType::Invoke, F_WATCH, json!({ "from": from })),
            ev(name, EventType::Ok, F_WATCH, json!(evs)),
        ]
    }
    fn writes() -> Vec<Event> {
        let mut out = Vec::new();
        for (p, k, v) in [(0, "a", 1), (1, "b", 2), (0, "a", 3)] {
            out.push(Event::new(Process::Worker(p), EventType::Invoke, "write", json!(v)).key(k));
            out.push(Event::new(Process::Worker(p), EventType::Ok, "write", json!(v)).key(k));
        }
        out
    }

    #[test]
    fn valid_watchers_with_a_restart() {
        let h = committed_history();
        let mut e = finals(&h);
        e.extend(session("watch-n1", 1, &h));
        e.extend(session("watch-n2", 1, &h[..1]));
        e.push(ev("watch-n2", EventType::Info, F_WATCH, Value::Null).error("broken"));
        e.extend(session("watch-n2", 3, &h[1..]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        let r = check_committed(&e, &client_ops(&writes()));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
    }

    #[test]
    fn gaps_duplicates_and_lag_are_caught() {
        let h = committed_history();
        // A gap: revision 3 skipped.
        let mut e = finals(&h);
        e.extend(session("watch-n1", 1, &[h[0].clone(), h[2].clone()]));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
        // A duplicate across a restart from the right revision.
        let mut e = finals(&h);
        e.extend(session("watch-n1", 1, &h[..2]));
        e.extend(session("watch-n1", 4, &h[1..]));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
        // A watcher that never caught up.
        let mut e = finals(&h);
        e.extend(session("watch-n1", 1, &h[..2]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.summary.contains("stopped at revision 3"), "{}", r.summary);
    }

    #[test]
    fn events_beyond_the_final_revision_are_not_judged() {
        let h = committed_history();
        let mut e = finals(&h);
        let mut more = h.clone();
        more.push(w(5, "b", 9, 2));
        e.extend(session("watch-n1", 1, &more));
        assert_eq!(check_watch(&e).verdict, Verdict::Valid);
        // But revisions never go down.
        let mut back = h.clone();
        back.push(w(3, "b", 2, 1));
        let mut e = finals(&h);
        e.extend(session("watch-n1", 1, &back));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
    }

    #[test]
    fn disagreeing_members_and_bad_histories() {
        let h = committed_history();
        let mut e = finals(&h);
        e[2] = ev("final-n2", EventType::Ok, F_FINAL, json!(h[..2]));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
        // Version not counting up.
        let bad = vec![w(2, "a", 1, 1), w(3, "b", 2, 1), w(4, "a", 3, 3)];
        let e = finals(&bad);
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
        // No final history: unknown.
        let e = session("watch-n1", 1, &h);
        assert_eq!(check_watch(&e).verdict, Verdict::Unknown);
    }

    #[test]
    fn lost_and_phantom_writes() {
        let h = committed_history();
        // b=2 lost.
        let lost = vec![w(2, "a", 1, 1), w(3, "a", 3, 2)];
        let mut e = finals(&lost);
        e[1] = ev(
            "final-n1",
            EventType::Ok,
            F_FINAL_END,
            json!({"revision": 3}),
        );
        e[3] = ev(
            "final-n2",
            EventType::Ok,
            F_FINAL_END,
            json!({"revision": 3}),
        );
        let r = check_committed(&e, &client_ops(&writes()));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.summary.contains("b=2"), "{}", r.summary);
        // A value nobody wrote.
        let e = finals(&h);
        let mut ws = writes();
        ws.truncate(4);
        let r = check_committed(&e, &client_ops(&ws));
        assert_eq!(r.verdict, Verdict::Invalid);
        // Reported failed, but applied.
        let mut ws = writes();
        ws[5].kind = EventType::Fail;
        let r = check_committed(&e, &client_ops(&ws));
        assert_eq!(r.verdict, Verdict::Invalid);
        // Unknown outcome, applied: fine.
        ws[5].kind = EventType::Info;
        let r = check_committed(&e, &client_ops(&ws));
        assert_eq!(r.verdict, Verdict::Valid);
    }
}
