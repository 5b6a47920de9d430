//! The history of a run: every client operation as an invocation and a
//! completion (`ok`, `fail` or `info`), nemesis actions, watch deliveries
//! and end-of-run probes, with monotonic timestamps; stored as JSON lines.

use std::fmt;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who performed an event: a client worker's process number (a worker
/// takes a new number after an indeterminate operation), or a named actor
/// (`nemesis`, `watch-n1`, `final-n1`, `convergence`, `monitor`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    /// A client worker.
    Worker(u64),
    /// Anything else.
    Named(String),
}

impl Process {
    /// A named process.
    pub fn named(name: impl Into<String>) -> Self {
        Process::Named(name.into())
    }

    /// Whether this is a client worker.
    pub fn is_worker(&self) -> bool {
        matches!(self, Process::Worker(_))
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Worker(n) => write!(f, "{n}"),
            Process::Named(s) => f.write_str(s),
        }
    }
}

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// An operation begins.
    Invoke,
    /// It took effect (or, for reads, returned this value).
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// It may or may not have taken effect (timeout, lost connection).
    Info,
}

impl EventType {
    /// The lowercase name used in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Who did it.
    pub process: Process,
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The function: `read`, `write`, `cas`, `put`, `kill`, `watch`, ...
    pub f: String,
    /// The key it is about, if any.
    #[serde(default)]
    pub key: Option<String>,
    /// Arguments (on invoke) or results (on completion).
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time: u64,
    /// The member the operation was sent to, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The error text of a `fail` or `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event without key, node or error, stamped later by the recorder.
    pub fn new(process: Process, kind: EventType, f: &str, value: Value) -> Self {
        Event {
            process,
            kind,
            f: f.to_string(),
            key: None,
            value,
            time: 0,
            node: None,
            error: None,
        }
    }

    /// With a key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With the member it was sent to.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// With an error text.
    pub fn error(mut self, e: impl Into<String>) -> Self {
        self.error = Some(e.into());
        self
    }
}

/// Collects the events of a run, thread-safe, with a shared monotonic
/// clock and counters of client completions for the progress line.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    ok: AtomicU64,
    fail: AtomicU64,
    info: AtomicU64,
}

/// Client completions so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Operations that took effect.
    pub ok: u64,
    /// Operations that certainly did not.
    pub fail: u64,
    /// Operations whose outcome is unknown.
    pub info: u64,
}

impl Counts {
    /// All completed operations.
    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }

    /// ok / total (1 when there were none).
    pub fn availability(&self) -> f64 {
        if self.total() == 0 {
            1.0
        } else {
            self.ok as f64 / self.total() as f64
        }
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            ok: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Stamps `e` with the current time and appends it.
    pub fn record(&self, mut e: Event) -> u64 {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        // Stamped under the lock, so the file is in time order.
        e.time = self.now();
        let t = e.time;
        if e.process.is_worker() {
            let c = match e.kind {
                EventType::Ok => Some(&self.ok),
                EventType::Fail => Some(&self.fail),
                EventType::Info => Some(&self.info),
                EventType::Invoke => None,
            };
            if let Some(c) = c {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        events.push(e);
        t
    }

    /// Client completions so far.
    pub fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            fail: self.fail.load(Ordering::Relaxed),
            info: self.info.load(Ordering::Relaxed),
        }
    }

    /// A copy of the events so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Writes `events` as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut w = BufWriter::new(f);
    for e in events {
        serde_json::to_writer(&mut w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Reads a `history.jsonl`; blank lines are skipped, a bad line is an
/// error naming its number.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        out.push(e);
    }
    Ok(out)
}

/// A client operation: an invocation and its completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// The worker process.
    pub process: Process,
    /// The function.
    pub f: String,
    /// The key.
    pub key: Option<String>,
    /// The member it was sent to.
    pub node: Option<String>,
    /// The invocation's value (the arguments).
    pub args: Value,
    /// How it completed; `Info` also when no completion was recorded.
    pub kind: EventType,
    /// The completion's value (the result).
    pub result: Value,
    /// The completion's error text.
    pub error: Option<String>,
    /// Invocation time (ns).
    pub start: u64,
    /// Completion time (ns); `None` for an operation that never completed.
    pub end: Option<u64>,
}

impl Op {
    /// Latency, if it completed.
    pub fn latency(&self) -> Option<u64> {
        self.end.map(|e| e.saturating_sub(self.start))
    }
}

/// Pairs each worker invocation with the next completion of the same
/// process; an invocation without completion becomes an `info` op.
pub fn client_ops(events: &[Event]) -> Vec<Op> {
    let mut open: std::collections::HashMap<&Process, usize> = std::collections::HashMap::new();
    let mut ops: Vec<Op> = Vec::new();
    for e in events.iter().filter(|e| e.process.is_worker()) {
        match e.kind {
            EventType::Invoke => {
                open.insert(&e.process, ops.len());
                ops.push(Op {
                    process: e.process.clone(),
                    f: e.f.clone(),
                    key: e.key.clone(),
                    node: e.node.clone(),
                    args: e.value.clone(),
                    kind: EventType::Info,
                    result: Value::Null,
                    error: None,
                    start: e.time,
                    end: None,
                });
            }
            kind => {
                if let Some(i) = open.remove(&e.process) {
                    let op = &mut ops[i];
                    op.kind = kind;
                    op.result = e.value.clone();
                    op.error = e.error.clone();
                    op.end = Some(e.time);
                }
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_pairing() {
        let r = Recorder::new();
        r.record(Event::new(Process::Worker(0), EventType::Invoke, "write", json!(1)).key("k"));
        r.record(Event::new(Process::Worker(1), EventType::Invoke, "read", json!(null)).key("k"));
        r.record(Event::new(
            Process::named("nemesis"),
            EventType::Invoke,
            "kill",
            json!(["n1"]),
        ));
        r.record(Event::new(Process::Worker(0), EventType::Ok, "write", json!(1)).key("k"));
        assert_eq!(
            r.counts(),
            Counts {
                ok: 1,
                fail: 0,
                info: 0
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        write_jsonl(&p, &r.snapshot()).unwrap();
        let back = read_jsonl(&p).unwrap();
        assert_eq!(back, r.snapshot());
        let ops = client_ops(&back);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].kind, EventType::Ok);
        assert!(ops[0].end.is_some());
        assert_eq!(ops[1].kind, EventType::Info);
        assert_eq!(ops[1].end, None);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.lines().next().unwrap().contains("\"type\":\"invoke\""));
    }

    #[test]
    fn bad_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        std::fs::write(&p, "{\"process\":0}\n").unwrap();
        assert!(read_jsonl(&p).unwrap_err().to_string().contains("line 1"));
    }
}
