//! The watch checker and the committed-writes checker.
//!
//! The committed history is what every member returns, after the run and
//! after healing, for a watch of all keys from just above the highest
//! compaction `F` (revision 1 without compaction; `F` is the highest
//! `compact` of the nemesis that may have applied). It must be the same on
//! every member, with one event per revision from `F + 1` on and key
//! versions counting up by one. Each session of each live watcher (from
//! its start revision until its stream broke or the run ended) must equal
//! the committed history from that revision on, above `F`: no gap,
//! duplicate, reordering or invented event. At or below `F` the committed
//! history is gone; there the sessions must have no gap (one revision
//! after the other from their start) and all watchers must have received
//! the same events at each revision. A session starts where the previous
//! one of its watcher stopped, except after the member canceled it with a
//! `compact_revision`: then it starts there, and the revisions skipped are
//! a violation unless a compaction at or above `compact_revision - 1` was
//! requested (ok or unknown outcome) before the cancellation. The last
//! session must reach the final revision (every watcher catches up).
//!
//! The committed history is also checked against the client operations:
//! every acknowledged write is in it, every value in it was written by an
//! operation not known to have failed, and no value is applied twice. At or
//! below `F` the watchers' events stand in for it: an acknowledged write
//! not found must have been invoked before the compaction at `F` was
//! requested (its revision can be at or below `F`), and is a violation
//! only if the watchers saw every revision up to `F`; otherwise it is left
//! to the linearizability checker (for register keys), and the summary
//! says how many were.

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

/// The `f` of watch sessions, events and errors (process `watch-<node>`);
/// a session canceled by a compaction ends with an `info` of value
/// `{"canceled": true, "compact_revision": N}`.
pub const F_WATCH: &str = "watch";
/// The `f` of the end-of-run history read (process `final-<node>`), invoke
/// value `{"from": first revision read, "to": R}`.
pub const F_FINAL: &str = "final-watch";
/// The `f` of the end of that read, value `{"revision": R, "from": ..}`.
pub const F_FINAL_END: &str = "final-watch-end";
/// The `f` of the nemesis's compactions (process `nemesis`), invoke value
/// `{"revision": C, ..}`; a `fail` completion did not apply.
pub const F_COMPACT: &str = "compact";

fn events_of(v: &Value) -> Result<Vec<WatchEvent>, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("malformed watch events: {e}"))
}

/// One watcher session: its start revision, what it received, and the
/// compact revision it was canceled with (and when), if it was.
#[derive(Debug, Default)]
struct Session {
    from: i64,
    events: Vec<WatchEvent>,
    compacted: Option<(i64, u64)>,
}

/// One member's end-of-run history read.
#[derive(Debug, Default)]
struct Final {
    from: Option<i64>,
    invoked: Option<u64>,
    events: Vec<WatchEvent>,
    end: Option<i64>,
}

/// A compaction: revision, invocation time, whether it may have applied
/// (ok, info or no completion).
#[derive(Debug)]
struct Compaction {
    revision: i64,
    invoked: u64,
    may_apply: bool,
}

/// Per process name, the sessions (watchers) or the history (finals).
#[derive(Default)]
struct Parsed {
    watchers: BTreeMap<String, Vec<Session>>,
    finals: BTreeMap<String, Final>,
    compactions: Vec<Compaction>,
    errors: Vec<String>,
}

impl Parsed {
    /// The highest compaction that may have applied, and the first revision
    /// the final histories read (0 if nothing was compacted).
    fn floor(&self) -> i64 {
        let compacted = self
            .compactions
            .iter()
            .filter(|c| c.may_apply)
            .map(|c| c.revision)
            .max()
            .unwrap_or(0);
        let read_from = self
            .finals
            .values()
            .filter_map(|f| f.from)
            .max()
            .unwrap_or(1);
        compacted.max(read_from - 1).max(0)
    }

    /// When the compaction at `floor` was first requested (writes at or
    /// below it were invoked before); without one, when the final read
    /// began; `u64::MAX` if neither is known.
    fn floor_time(&self, floor: i64) -> u64 {
        self.compactions
            .iter()
            .filter(|c| c.may_apply && c.revision >= floor)
            .map(|c| c.invoked)
            .min()
            .or_else(|| self.finals.values().filter_map(|f| f.invoked).min())
            .unwrap_or(u64::MAX)
    }
}

fn parse(events: &[Event]) -> Parsed {
    let mut p = Parsed::default();
    for e in events {
        let Process::Named(name) = &e.process else {
            continue;
        };
        match (e.f.as_str(), e.kind) {
            (F_COMPACT, kind) if name == "nemesis" => {
                let rev = e.value.get("revision").and_then(Value::as_i64);
                match (kind, rev) {
                    (EventType::Invoke, Some(revision)) => p.compactions.push(Compaction {
                        revision,
                        invoked: e.time,
                        may_apply: true,
                    }),
                    (EventType::Fail, _) => {
                        if let Some(c) = p.compactions.last_mut() {
                            c.may_apply = false;
                        }
                    }
                    _ => {}
                }
            }
            (F_WATCH, EventType::Invoke) => {
                let from = e.value.get("from").and_then(Value::as_i64).unwrap_or(1);
                p.watchers.entry(name.clone()).or_default().push(Session {
                    from,
                    ..Session::default()
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
            (F_WATCH, EventType::Info) => {
                let cr = e.value.get("compact_revision").and_then(Value::as_i64);
                if let (Some(cr), Some(s)) =
                    (cr, p.watchers.get_mut(name).and_then(|s| s.last_mut()))
                {
                    s.compacted = Some((cr, e.time));
                }
            }
            (F_FINAL, EventType::Invoke) => {
                let f = p.finals.entry(name.clone()).or_default();
                f.from = e.value.get("from").and_then(Value::as_i64);
                f.invoked = Some(e.time);
            }
            (F_FINAL, EventType::Ok) => match events_of(&e.value) {
                Ok(evs) => p.finals.entry(name.clone()).or_default().events.extend(evs),
                Err(err) => p.errors.push(format!("{name}: {err}")),
            },
            (F_FINAL_END, EventType::Ok) => {
                let f = p.finals.entry(name.clone()).or_default();
                f.end = e.value.get("revision").and_then(Value::as_i64);
                if f.from.is_none() {
                    f.from = e.value.get("from").and_then(Value::as_i64);
                }
            }
            _ => {}
        }
    }
    p
}

/// The committed history above `floor`, if every member that answered
/// returned the same complete one; else why not (`Err(true, ..)` if
/// members disagree).
fn committed(p: &Parsed, floor: i64) -> Result<(Vec<WatchEvent>, i64), (bool, String)> {
    let complete: Vec<(&String, Vec<WatchEvent>, i64)> = p
        .finals
        .iter()
        .filter_map(|(n, f)| {
            let evs = f.events.iter().filter(|e| e.0 > floor).cloned().collect();
            f.end.map(|r| (n, evs, r))
        })
        .collect();
    let Some((first_name, first, rev)) = complete.first() else {
        return Err((false, "no member returned the final history".into()));
    };
    for (n, evs, r) in &complete[1..] {
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
    Ok((first.clone(), *rev))
}

/// Internal consistency of the committed history above `floor`: revisions
/// `floor + 1`, ... (from 2) with no gap (every write is watched; the
/// events of one transaction share a revision) and versions counting up
/// per key (from 1 unless the key's earlier versions may be compacted
/// away).
fn consistency(h: &[WatchEvent], floor: i64, rev: i64) -> Option<String> {
    let mut version: HashMap<&str, i64> = HashMap::new();
    let mut expect = (floor + 1).max(2);
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
        let known = version.get(e.1.as_str()).copied();
        let v = version.entry(e.1.as_str()).or_insert(0);
        match &e.2 {
            // Above a compaction a key's first event may be at any version.
            Some(_) if known.is_none() && floor > 1 => *v = e.3,
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
    if expect - 1 != rev.max(floor.max(1)) {
        return Some(format!(
            "the history ends at revision {} but the members are at revision {rev}",
            expect - 1
        ));
    }
    None
}

/// Whether a compaction that may have applied, at `cr - 1` or above, was
/// requested before `time`: it explains a cancellation with compact
/// revision `cr`.
fn explained(p: &Parsed, cr: i64, time: u64) -> bool {
    p.compactions
        .iter()
        .any(|c| c.may_apply && c.invoked <= time && c.revision >= cr - 1)
}

/// What one session is checked against.
struct Check<'a> {
    p: &'a Parsed,
    hist: &'a [WatchEvent],
    floor: i64,
    rev: i64,
}

/// A problem found in a session: what, and details to show.
type Found = Option<(String, Value)>;

/// Events at or below the floor by revision, as the first watcher to
/// deliver them saw them.
type SeenBelow<'a> = BTreeMap<i64, (String, Vec<&'a WatchEvent>)>;

impl Check<'_> {
    /// Session `k` starts where the previous ones stopped (`expected`: the
    /// revision after the last received), or skips compacted revisions
    /// after a cancellation that a compaction explains (recorded in
    /// `gaps`).
    fn start(
        &self,
        sessions: &[Session],
        k: usize,
        expected: i64,
        gaps: &mut Vec<Value>,
        name: &str,
    ) -> Found {
        let from = sessions[k].from;
        if k == 0 || from == expected || (expected == 2 && from == 1) {
            return None;
        }
        if from < expected {
            return Some((
                format!(
                    "started at {from} although revision {} was already received",
                    expected - 1
                ),
                Value::Null,
            ));
        }
        match sessions[k - 1].compacted {
            Some((cr, t)) if cr == from && explained(self.p, cr, t) => {
                gaps.push(json!({ "watcher": name, "session": k, "skipped": [expected, cr - 1] }));
                None
            }
            Some((cr, _)) if cr == from => Some((
                format!(
                    "revisions {expected}..{} skipped: canceled as compacted at {cr}, but no compaction at or above {} was requested before",
                    cr - 1,
                    cr - 1
                ),
                Value::Null,
            )),
            _ => Some((
                format!(
                    "revisions {expected}..{} skipped without a compaction cancel",
                    from - 1
                ),
                Value::Null,
            )),
        }
    }

    /// Revisions never go down; above the floor the session equals the
    /// committed history from its start; at or below it, no revision is
    /// skipped, up to the floor itself when the session goes beyond it.
    fn events(&self, s: &Session) -> Found {
        if let Some(i) = (1..s.events.len()).find(|&i| s.events[i].0 < s.events[i - 1].0) {
            return Some((
                "revision went down".into(),
                json!({ "index": i, "got": s.events[i], "previous": s.events[i - 1] }),
            ));
        }
        // Writes whose outcome was unknown may apply after the final
        // revision was taken; what lies beyond it cannot be checked.
        let upto = s.events.partition_point(|e| e.0 <= self.rev);
        let lo = s.events.partition_point(|e| e.0 <= self.floor).min(upto);
        let start = self
            .hist
            .partition_point(|e| e.0 < s.from.max(self.floor + 1));
        let expected = &self.hist[start..];
        if let Some(i) = (lo..upto).find(|&i| expected.get(i - lo) != Some(&s.events[i])) {
            return Some((
                "deviates from the committed history".into(),
                json!({
                    "index": i,
                    "got": s.events[i],
                    "expected": expected.get(i - lo),
                    "previous": i.checked_sub(1).map(|j| &s.events[j]),
                }),
            ));
        }
        let mut prev = s.from.max(2) - 1;
        for (i, e) in s.events[..lo].iter().enumerate() {
            let ok = e.0 == prev + 1 || (i > 0 && e.0 == prev);
            if !ok {
                return Some((
                    "a gap at or below the compaction".into(),
                    json!({ "index": i, "got": e, "expected_revision": prev + 1 }),
                ));
            }
            prev = e.0;
        }
        if lo > 0 && lo < upto && prev != self.floor {
            return Some((
                "a gap at the compaction".into(),
                json!({ "index": lo, "got": s.events[lo], "previous": s.events[lo - 1] }),
            ));
        }
        None
    }

    /// At or below the floor, every watcher received the same events at
    /// each revision.
    fn agree<'a>(&self, s: &'a Session, name: &str, seen: &mut SeenBelow<'a>) -> Found {
        let lo = s.events.partition_point(|e| e.0 <= self.floor);
        let mut i = 0;
        while i < lo {
            let r = s.events[i].0;
            let j = i + s.events[i..lo].iter().take_while(|e| e.0 == r).count();
            let here: Vec<&WatchEvent> = s.events[i..j].iter().collect();
            match seen.get(&r) {
                Some((other, theirs)) if *theirs != here => {
                    return Some((
                        format!(
                            "at revision {r} (compacted) it received other events than {other}"
                        ),
                        json!({ "index": i, "got": here, "other": theirs }),
                    ))
                }
                Some(_) => {}
                None => {
                    seen.insert(r, (name.to_string(), here));
                }
            }
            i = j;
        }
        None
    }
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
    let floor = p.floor();
    let (hist, rev) = match committed(&p, floor) {
        Ok(c) => c,
        Err((true, why)) => return mk(Verdict::Invalid, why, Value::Null),
        Err((false, why)) => return mk(Verdict::Unknown, why, Value::Null),
    };
    if let Some(why) = consistency(&hist, floor, rev) {
        return mk(
            Verdict::Invalid,
            format!("committed history: {why}"),
            Value::Null,
        );
    }
    let mut problems = Vec::new();
    let mut lagging = Vec::new();
    let mut delivered = 0usize;
    let mut below = 0usize;
    let mut gaps = Vec::new();
    // At or below the floor: the events each revision had, as the first
    // watcher to deliver it saw them.
    let mut seen_below = SeenBelow::new();
    for (name, sessions) in &p.watchers {
        // The revision the next session must start at (the first at 2).
        let mut next = 2;
        for (k, s) in sessions.iter().enumerate() {
            delivered += s.events.len();
            below += s.events.iter().filter(|e| e.0 <= floor).count();
            let expected_from = next;
            let last = s.events.last().map_or(s.from - 1, WatchEvent::revision);
            next = next.max(s.from).max(last + 1);
            let check = Check {
                p: &p,
                hist: &hist,
                floor,
                rev,
            };
            let found = check
                .start(sessions, k, expected_from, &mut gaps, name)
                .or_else(|| check.events(s))
                .or_else(|| check.agree(s, name, &mut seen_below));
            if let Some((what, extra)) = found {
                let mut v =
                    json!({ "watcher": name, "session": k, "from": s.from, "problem": what });
                if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
                    o.extend(x.clone());
                }
                problems.push(v);
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
        "compacted": floor,
        "committed_events": hist.len(),
        "watchers": p.watchers.len(),
        "delivered": delivered,
        "delivered_at_or_below_compaction": below,
        "skipped_by_compaction": gaps,
        "problems": problems,
        "lagging": lagging,
    });
    if p.watchers.is_empty() {
        return mk(Verdict::Unknown, "no watcher ran".into(), details);
    }
    if let Some(first) = problems.first() {
        let summary = format!(
            "{} watch sessions deviate from the committed history (first: {} session {}: {})",
            problems.len(),
            first["watcher"].as_str().unwrap_or("?"),
            first["session"],
            first["problem"].as_str().unwrap_or("?"),
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
    let summary = if floor > 1 {
        format!(
            "{} watchers, {delivered} events; above the compaction at revision {floor} all equal to the committed history (revisions {}..{rev}); the {below} at or below it (compacted away, not comparable) have no gap and agree among watchers{}",
            p.watchers.len(),
            floor + 1,
            if gaps.is_empty() {
                String::new()
            } else {
                format!("; {} resumptions skipped compacted revisions after a compaction cancel", gaps.len())
            }
        )
    } else {
        format!(
            "{} watchers, {delivered} events, all equal to the committed history (revision {rev})",
            p.watchers.len()
        )
    };
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
    let floor = p.floor();
    let (hist, _) = match committed(&p, floor) {
        Ok(c) => c,
        Err((_, why)) => return mk(Verdict::Unknown, why, Value::Null),
    };
    // At or below the floor: the watchers' events, one set per revision.
    let mut below: BTreeMap<i64, Vec<&WatchEvent>> = BTreeMap::new();
    for s in p.watchers.values().flatten() {
        for e in s.events.iter().take_while(|e| e.0 <= floor) {
            let at = below.entry(e.0).or_default();
            if !at.contains(&e) {
                at.push(e);
            }
        }
    }
    // Every revision from 2 to the floor was delivered to some watcher.
    let covered = floor <= 1 || (2..=floor).all(|r| below.contains_key(&r));
    // (key, value) -> the ops that wrote it.
    let mut writes: HashMap<(&str, String), Vec<&Op>> = HashMap::new();
    for op in ops {
        if let (Some(k), Some(v)) = (op.key.as_deref(), written(op)) {
            writes.entry((k, v)).or_default().push(op);
        }
    }
    let mut seen: HashMap<(&str, &str), i64> = HashMap::new();
    let mut problems = Vec::new();
    let all = below.values().flatten().copied().chain(hist.iter());
    for e in all {
        let Some(v) = e.2.as_deref() else { continue };
        // The append and lock workloads check their own keys.
        if std::iter::once(crate::workloads::append::KEY_PREFIX)
            .chain(crate::workloads::lock::KEY_PREFIXES)
            .any(|p| e.1.starts_with(p))
        {
            continue;
        }
        let whose = if e.0 <= floor {
            " (seen by a watcher)"
        } else {
            ""
        };
        match seen.insert((e.1.as_str(), v), e.0) {
            Some(prev) if prev != e.0 => problems.push(format!(
                "{}={v} was applied twice (revisions {prev} and {}){whose}",
                e.1, e.0
            )),
            _ => {}
        }
        match writes.get(&(e.1.as_str(), v.to_string())) {
            None => problems.push(format!(
                "{}={v} at revision {}{whose} was never written by a client",
                e.1, e.0
            )),
            Some(w) if w.iter().all(|o| o.kind == EventType::Fail) => problems.push(format!(
                "{}={v} at revision {}{whose} was written by an operation reported as failed",
                e.1, e.0
            )),
            Some(_) => {}
        }
    }
    let floor_time = p.floor_time(floor);
    let (mut acked, mut below_seen, mut unchecked) = (0usize, 0usize, 0usize);
    for ((k, v), w) in &writes {
        let Some(first) = w.iter().filter(|o| acknowledged(o)).map(|o| o.start).min() else {
            continue;
        };
        acked += 1;
        match seen.get(&(*k, v.as_str())) {
            Some(&r) if r <= floor => below_seen += 1,
            Some(_) => {}
            // Invoked before the compaction at the floor was requested: its
            // revision may be at or below the floor, where only the
            // watchers' events can tell.
            None if first < floor_time && !covered => unchecked += 1,
            None if first < floor_time => problems.push(format!(
                "acknowledged write {k}={v} is neither in the history above revision {floor} nor in the watchers' events up to it"
            )),
            None => problems.push(format!("acknowledged write {k}={v} is not in the history")),
        }
    }
    problems.sort();
    let details = json!({
        "acknowledged": acked,
        "committed": hist.len(),
        "compacted": floor,
        "acknowledged_at_or_below_compaction_seen_by_watchers": below_seen,
        "acknowledged_not_checked": unchecked,
        "watchers_cover_compacted_revisions": covered,
        "problems": problems,
    });
    if let Some(p1) = problems.first() {
        return mk(
            Verdict::Invalid,
            format!("{} problems, e.g. {p1}", problems.len()),
            details,
        );
    }
    let summary = if floor > 1 {
        let rest = if unchecked > 0 {
            format!(
                "; {unchecked} acknowledged writes invoked before the compaction were not checked here (no watcher stream covers every revision up to it; register writes are covered by the linearizability checker)"
            )
        } else {
            String::new()
        };
        format!(
            "compacted at revision {floor}: the history above it ({} writes) checked against the clients; {acked} acknowledged writes, {} committed above the compaction, {below_seen} at or below it as seen by the watchers{rest}",
            hist.len(),
            acked - below_seen - unchecked,
        )
    } else {
        format!(
            "{acked} acknowledged writes all committed, {} committed writes all accounted for",
            hist.len()
        )
    };
    mk(Verdict::Valid, summary, details)
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

    // A run compacted at revision 4: the committed history is 2..=7, the
    // members return 5..=7.
    fn full() -> Vec<WatchEvent> {
        vec![
            w(2, "a", 1, 1),
            w(3, "b", 2, 1),
            w(4, "a", 3, 2),
            w(5, "b", 4, 2),
            w(6, "a", 5, 3),
            w(7, "b", 6, 3),
        ]
    }
    fn at(mut e: Event, t: u64) -> Event {
        e.time = t;
        e
    }
    /// The compaction at 4 requested at t = 100, the finals from 5.
    fn compacted_finals() -> Vec<Event> {
        let h = full();
        let mut out = vec![
            at(
                ev(
                    "nemesis",
                    EventType::Invoke,
                    F_COMPACT,
                    json!({"revision": 4}),
                ),
                100,
            ),
            at(
                ev("nemesis", EventType::Ok, F_COMPACT, json!({"revision": 4})),
                110,
            ),
        ];
        for n in ["final-n1", "final-n2"] {
            out.push(at(
                ev(n, EventType::Invoke, F_FINAL, json!({"from": 5, "to": 7})),
                1000,
            ));
            out.push(at(ev(n, EventType::Ok, F_FINAL, json!(h[3..])), 1001));
            out.push(at(
                ev(
                    n,
                    EventType::Ok,
                    F_FINAL_END,
                    json!({"revision": 7, "from": 5}),
                ),
                1002,
            ));
        }
        out
    }
    /// Writes of the values 1..=6 (and `extra`), invoked at t = 10 + value
    /// unless given.
    fn writes_upto6(extra: &[(&str, u64, u64)]) -> Vec<Op> {
        let mut out = Vec::new();
        let all = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5), ("b", 6)];
        let with_t = all
            .iter()
            .map(|&(k, v)| (k, v, 10 + v))
            .chain(extra.iter().copied());
        for (p, (k, v, t)) in with_t.enumerate() {
            let p = p as u64;
            out.push(at(
                Event::new(Process::Worker(p), EventType::Invoke, "write", json!(v)).key(k),
                t,
            ));
            out.push(at(
                Event::new(Process::Worker(p), EventType::Ok, "write", json!(v)).key(k),
                t + 1,
            ));
        }
        client_ops(&out)
    }
    fn cancel(name: &str, cr: i64, t: u64) -> Event {
        at(
            ev(
                name,
                EventType::Info,
                F_WATCH,
                json!({"canceled": true, "compact_revision": cr}),
            )
            .error("canceled: mvcc: required revision has been compacted"),
            t,
        )
    }

    #[test]
    fn valid_with_a_compaction() {
        let h = full();
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h));
        e.extend(session("watch-n2", 2, &h[..2]));
        e.push(ev("watch-n2", EventType::Info, F_WATCH, Value::Null).error("broken"));
        e.extend(session("watch-n2", 4, &h[2..]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert!(
            r.summary.contains("above the compaction at revision 4"),
            "{}",
            r.summary
        );
        assert_eq!(r.details["delivered_at_or_below_compaction"], 6);
        let r = check_committed(&e, &writes_upto6(&[]));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert!(
            r.summary.contains("compacted at revision 4")
                && r.summary
                    .contains("3 committed above the compaction, 3 at or below it"),
            "{}",
            r.summary
        );
        // Without the compaction's events, the finals' start says it too.
        let e2: Vec<Event> = e.iter().filter(|x| x.f != F_COMPACT).cloned().collect();
        assert_eq!(check_watch(&e2).verdict, Verdict::Valid);
    }

    #[test]
    fn gaps_and_disagreements_below_the_compaction_are_caught() {
        let h = full();
        // Revision 3 skipped (below the compaction).
        let mut e = compacted_finals();
        let mut skip = h.clone();
        skip.remove(1);
        e.extend(session("watch-n1", 2, &skip));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("gap"), "{}", r.summary);
        // Revision 4 (the compaction point) skipped.
        let mut e = compacted_finals();
        let mut skip = h.clone();
        skip.remove(2);
        e.extend(session("watch-n1", 2, &skip));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("at the compaction"), "{}", r.summary);
        // Two watchers see different events at a compacted revision.
        let mut e = compacted_finals();
        let mut other = h.clone();
        other[1] = w(3, "b", 99, 1);
        e.extend(session("watch-n1", 2, &h));
        e.extend(session("watch-n2", 2, &other));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("other events"), "{}", r.summary);
        // ... and the phantom value is caught against the clients.
        let r = check_committed(&e, &writes_upto6(&[]));
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("b=99"), "{}", r.summary);
        // Above the compaction, deviations are caught as before.
        let mut e = compacted_finals();
        let mut dup = h.clone();
        dup.insert(4, h[3].clone());
        e.extend(session("watch-n1", 2, &dup));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_compaction_cancel_explains_a_gap_only_if_a_compaction_came_first() {
        let h = full();
        // Canceled at t = 200 with compact revision 5, resumed there:
        // revisions 3 and 4 skipped, explained by the compaction at 4.
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h[..1]));
        e.push(cancel("watch-n1", 5, 200));
        e.extend(session("watch-n1", 5, &h[3..]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert!(r.summary.contains("1 resumptions skipped"), "{}", r.summary);
        assert_eq!(
            r.details["skipped_by_compaction"][0]["skipped"],
            json!([3, 4])
        );
        // The same cancel before any compaction was requested.
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h[..1]));
        e.push(cancel("watch-n1", 5, 50));
        e.extend(session("watch-n1", 5, &h[3..]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("no compaction"), "{}", r.summary);
        // A compact revision beyond what the compaction explains.
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h[..1]));
        e.push(cancel("watch-n1", 7, 200));
        e.extend(session("watch-n1", 7, &h[5..]));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
        // A gap after an ordinary break: the watcher was not told.
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h[..1]));
        e.push(at(
            ev("watch-n1", EventType::Info, F_WATCH, Value::Null).error("broken"),
            200,
        ));
        e.extend(session("watch-n1", 5, &h[3..]));
        let r = check_watch(&e);
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(
            r.summary.contains("without a compaction cancel"),
            "{}",
            r.summary
        );
        // A failed compaction explains nothing.
        let mut e = compacted_finals();
        e[1].kind = EventType::Fail;
        e.extend(session("watch-n1", 2, &h[..1]));
        e.push(cancel("watch-n1", 5, 200));
        e.extend(session("watch-n1", 5, &h[3..]));
        assert_eq!(check_watch(&e).verdict, Verdict::Invalid);
    }

    #[test]
    fn lost_writes_around_a_compaction() {
        let h = full();
        // a=7 acknowledged but nowhere, invoked after the compaction was
        // requested: its revision is above 4, so it must be in the history.
        let e = compacted_finals();
        let r = check_committed(&e, &writes_upto6(&[("a", 7, 150)]));
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(
            r.summary.contains("a=7 is not in the history"),
            "{}",
            r.summary
        );
        // Invoked before it, and no watcher stream covers 2..=4: it may be
        // compacted away; not checked here, and the summary says so.
        let r = check_committed(&e, &writes_upto6(&[("a", 7, 50)]));
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert_eq!(r.details["acknowledged_not_checked"], 4);
        assert!(
            r.summary
                .contains("4 acknowledged writes invoked before the compaction were not checked"),
            "{}",
            r.summary
        );
        // Invoked before it, but the watchers saw every revision up to 4
        // and it is not there either: lost.
        let mut e = compacted_finals();
        e.extend(session("watch-n1", 2, &h));
        let r = check_committed(&e, &writes_upto6(&[("a", 7, 50)]));
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.summary.contains("a=7 is neither"), "{}", r.summary);
        // A value applied twice, once below and once above the compaction.
        let mut e = compacted_finals();
        let mut twice = h.clone();
        twice[1] = w(3, "b", 4, 1);
        e.extend(session("watch-n1", 2, &twice[..3]));
        let r = check_committed(&e, &writes_upto6(&[]));
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        let problems = r.details["problems"].as_array().unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.as_str().unwrap().contains("b=4 was applied twice")),
            "{problems:?}"
        );
    }
}
