//! The lock workload's checker.
//!
//! * **Mutual exclusion, by fencing token**: once a session has seen its
//!   key lowest (it holds the lock) at revision `X`, no session with a
//!   smaller token may write the fenced key at revision `X` or later: its
//!   key was deleted before `X`, so its guarded write must fail.
//! * **No early lease expiry**: a session's lease must not be gone (its
//!   key missing, a keep-alive answering TTL 0, a guarded write finding the
//!   key deleted) before the TTL granted by its last successful grant or
//!   keep-alive has run out, counted from that request's invocation.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{CheckResult, Verdict};
use crate::history::{Event, EventType, Process};
use crate::workloads::lock::{LOCK_LOST, PROCESS_PREFIX};

/// How many problems are listed in the details.
const MAX_PROBLEMS: usize = 20;

/// One step of a session: invocation and completion.
struct Step<'a> {
    f: &'a str,
    kind: EventType,
    value: &'a Value,
    error: Option<&'a str>,
    start: u64,
    end: u64,
}

fn sessions(events: &[Event]) -> BTreeMap<&str, Vec<Step<'_>>> {
    let mut open: BTreeMap<&str, &Event> = BTreeMap::new();
    let mut out: BTreeMap<&str, Vec<Step>> = BTreeMap::new();
    for e in events {
        let Process::Named(p) = &e.process else {
            continue;
        };
        if !p.starts_with(PROCESS_PREFIX) {
            continue;
        }
        if e.kind == EventType::Invoke {
            open.insert(p, e);
            continue;
        }
        if let Some(inv) = open.remove(p.as_str()) {
            out.entry(p).or_default().push(Step {
                f: &e.f,
                kind: e.kind,
                value: &e.value,
                error: e.error.as_deref(),
                start: inv.time,
                end: e.time,
            });
        }
    }
    out
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Checks the lock sessions in `events`.
pub fn check_lock(events: &[Event]) -> CheckResult {
    let sessions = sessions(events);
    let mut problems: Vec<Value> = Vec::new();
    let mut problem = |p: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(json!(p));
        }
    };
    // (token, revision, session) of acquisitions and of fenced writes.
    let mut acquired: Vec<(i64, i64, &str)> = Vec::new();
    let mut written: Vec<(i64, i64, &str)> = Vec::new();
    let mut early = 0usize;
    for (name, steps) in &sessions {
        let token = steps
            .iter()
            .find(|s| s.f == "grant" && s.kind == EventType::Ok)
            .and_then(|s| s.value["token"].as_i64());
        // Lease liveness: alive at least until this instant (ns).
        let mut alive_until: Option<(u64, u64)> = None; // (until, granted at)
        for s in steps {
            if s.kind != EventType::Ok && s.error != Some(LOCK_LOST) {
                continue;
            }
            let gone = match s.f {
                "grant" | "keepalive" => {
                    let ttl = s.value["ttl"].as_i64().unwrap_or(0);
                    if ttl > 0 {
                        let until = s.start + ttl as u64 * 1_000_000_000;
                        if alive_until.is_none_or(|(u, _)| until > u) {
                            alive_until = Some((until, s.start));
                        }
                        false
                    } else {
                        true
                    }
                }
                "poll" => {
                    if s.value["holder"] == true {
                        if let Some(t) = token {
                            acquired.push((t, s.value["revision"].as_i64().unwrap_or(0), name));
                        }
                    }
                    s.value["present"] == false
                }
                "fenced-write" if s.kind == EventType::Ok => {
                    let t = s.value["token"].as_i64().or(token).unwrap_or(0);
                    written.push((t, s.value["revision"].as_i64().unwrap_or(0), name));
                    false
                }
                "fenced-write" => true,
                _ => false,
            };
            if gone {
                if let Some((until, at)) = alive_until.filter(|(u, _)| s.end < *u) {
                    early += 1;
                    problem(format!(
                        "{name}: its lease was gone ({} answered at {:.0} ms: {}) {:.0} ms before the TTL granted at {:.0} ms ran out",
                        s.f,
                        ms(s.end),
                        if s.kind == EventType::Ok { s.value.to_string() } else { s.error.unwrap_or_default().to_string() },
                        ms(until - s.end),
                        ms(at)
                    ));
                }
            }
        }
    }
    // Mutual exclusion: no write by a smaller token at or after a later
    // holder's acquisition.
    let mut overlaps = 0usize;
    for &(t2, x, s2) in &acquired {
        for &(t1, w, s1) in &written {
            if t1 < t2 && w >= x {
                overlaps += 1;
                problem(format!(
                    "{s1} (token {t1}) wrote the fenced key at revision {w}, but {s2} (token {t2}) held the lock from revision {x}"
                ));
            }
        }
    }
    // The fenced key's writes in revision order carry non-decreasing
    // tokens.
    let mut by_rev = written.clone();
    by_rev.sort_by_key(|&(_, r, _)| r);
    for pair in by_rev.windows(2) {
        if pair[1].0 < pair[0].0 {
            problem(format!(
                "fenced writes out of token order: token {} at revision {} after token {} at revision {}",
                pair[1].0, pair[1].1, pair[0].0, pair[0].1
            ));
        }
    }
    let (verdict, summary) = if !problems.is_empty() {
        (
            Verdict::Invalid,
            format!(
                "{} problem(s) (first: {})",
                problems.len(),
                problems[0].as_str().unwrap_or("?")
            ),
        )
    } else if acquired.is_empty() {
        (
            Verdict::Unknown,
            format!(
                "{} sessions, but none took the lock: nothing to check",
                sessions.len()
            ),
        )
    } else {
        (
            Verdict::Valid,
            format!(
                "{} sessions, {} acquisitions, {} fenced writes: mutually exclusive, no lease expired early",
                sessions.len(),
                acquired.len(),
                written.len()
            ),
        )
    };
    CheckResult {
        name: "lock".into(),
        verdict,
        summary,
        details: json!({
            "sessions": sessions.len(),
            "acquisitions": acquired.len(),
            "fenced_writes": written.len(),
            "early_expiries": early,
            "overlaps": overlaps,
            "problems": problems,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ev(p: &str, kind: EventType, f: &str, value: Value, t: u64) -> Event {
        let mut e = Event::new(Process::named(p), kind, f, value);
        e.time = t;
        e
    }

    /// A session: grant at `t0` (TTL 2 s, token), poll as holder at
    /// revision `acq`, fenced writes at `writes` revisions, release.
    fn session(p: &str, token: i64, t0: u64, acq: i64, writes: &[i64]) -> Vec<Event> {
        let ok = EventType::Ok;
        let inv = EventType::Invoke;
        let mut h = vec![
            ev(p, inv, "grant", json!({}), t0),
            ev(
                p,
                ok,
                "grant",
                json!({"lease": token, "ttl": 2, "token": token}),
                t0 + 1,
            ),
            ev(p, inv, "poll", json!({}), t0 + 2),
            ev(
                p,
                ok,
                "poll",
                json!({"present": true, "holder": true, "revision": acq}),
                t0 + 3,
            ),
        ];
        for (i, &w) in writes.iter().enumerate() {
            let t = t0 + 10 + i as u64 * 10;
            h.push(ev(p, inv, "fenced-write", json!({"token": token}), t));
            h.push(ev(
                p,
                ok,
                "fenced-write",
                json!({"token": token, "revision": w}),
                t + 1,
            ));
        }
        h.push(ev(p, inv, "release", json!({}), t0 + 100));
        h.push(ev(p, ok, "release", Value::Null, t0 + 101));
        h
    }

    #[test]
    fn serial_holders_are_valid() {
        let mut h = session("lock-0.1", 10, 0, 11, &[12, 13]);
        h.extend(session("lock-1.1", 11, 200, 15, &[16, 17]));
        let r = check_lock(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
    }

    #[test]
    fn overlapping_holders_are_invalid() {
        // Token 11 held from revision 15, but token 10 still wrote at 16.
        let mut h = session("lock-0.1", 10, 0, 11, &[12, 16]);
        h.extend(session("lock-1.1", 11, 200, 15, &[17]));
        let r = check_lock(&h);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("held the lock"), "{}", r.summary);
    }

    #[test]
    fn early_expiry_is_invalid_and_late_expiry_is_not() {
        let p = "lock-0.1";
        let ok = EventType::Ok;
        let inv = EventType::Invoke;
        let base = || {
            vec![
                ev(p, inv, "grant", json!({}), 0),
                ev(
                    p,
                    ok,
                    "grant",
                    json!({"lease": 1, "ttl": 2, "token": 5}),
                    10,
                ),
                ev(p, inv, "keepalive", json!({}), S / 2),
                ev(p, ok, "keepalive", json!({"ttl": 2}), S / 2 + 10),
            ]
        };
        // Key missing 1 s after a keep-alive that granted 2 s.
        let mut h = base();
        h.push(ev(p, inv, "poll", json!({}), S + S / 2));
        h.push(ev(
            p,
            ok,
            "poll",
            json!({"present": false, "holder": false, "revision": 9}),
            S + S / 2 + 10,
        ));
        let r = check_lock(&h);
        assert_eq!(r.details["early_expiries"], 1, "{r:?}");
        assert_eq!(r.verdict, Verdict::Invalid);
        // The same 3 s after: the TTL ran out, nothing wrong.
        let mut h = base();
        h.push(ev(p, inv, "fenced-write", json!({}), 3 * S));
        let mut lost = ev(
            p,
            EventType::Fail,
            "fenced-write",
            json!({"token": 5}),
            3 * S + 10,
        );
        lost.error = Some(LOCK_LOST.into());
        h.push(lost);
        let r = check_lock(&h);
        assert_eq!(r.details["early_expiries"], 0, "{r:?}");
        assert_ne!(r.verdict, Verdict::Invalid);
    }
}
