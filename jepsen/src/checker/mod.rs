//! Checkers: each reads the history and gives a verdict.

pub mod append;
pub mod cluster;
pub mod linearizable;
pub mod lock;
pub mod register;
pub mod shrink;
pub mod watch;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{client_ops, Event, Process};

/// A checker's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The property holds.
    Valid,
    /// It could not be decided (time bound, missing data).
    Unknown,
    /// It is violated.
    Invalid,
}

impl Verdict {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }

    /// The process exit code for this overall verdict: 0, 1 or 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

/// One checker's verdict, a one-line summary and machine-readable details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The checker's name.
    pub name: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// One line for people.
    pub summary: String,
    /// What the report draws (failing windows, problems).
    pub details: Value,
}

/// The worst verdict: invalid over unknown over valid.
pub fn overall(results: &[CheckResult]) -> Verdict {
    results
        .iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Verdict::Unknown)
}

/// Runs every checker that has something to check in `events`; the
/// linearizability search gets at most `budget`.
pub fn check_all(events: &[Event], budget: Duration) -> Vec<CheckResult> {
    let ops = client_ops(events);
    let mut out = Vec::new();
    if ops
        .iter()
        .any(|o| matches!(o.f.as_str(), "read" | "write" | "cas"))
    {
        out.push(register::check_registers(&ops, budget));
    }
    let named = |prefix: &str| {
        events
            .iter()
            .any(|e| matches!(&e.process, Process::Named(n) if n.starts_with(prefix)))
    };
    if ops.iter().any(|o| o.f == crate::workloads::append::F_TXN) {
        out.push(append::check_append(events, &ops));
    }
    if named(crate::workloads::lock::PROCESS_PREFIX) {
        out.push(lock::check_lock(events));
    }
    if named("watch-") {
        out.push(watch::check_watch(events));
    }
    if named("final-") {
        out.push(watch::check_committed(events, &ops));
    }
    if named("convergence") {
        out.push(cluster::check_convergence(events));
    }
    out.push(cluster::check_crashes(events));
    out
}

/// The verdict table printed at the end of a run and by `check`.
pub fn table(results: &[CheckResult]) -> String {
    let w = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut s = format!("{:<w$}  {:<8} summary\n", "checker", "verdict");
    for r in results {
        s.push_str(&format!(
            "{:<w$}  {:<8} {}\n",
            r.name,
            r.verdict.as_str(),
            r.summary
        ));
    }
    s.push_str(&format!(
        "{:<w$}  {}\n",
        "overall",
        overall(results).as_str().to_uppercase()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_is_the_worst() {
        let r = |v| CheckResult {
            name: "x".into(),
            verdict: v,
            summary: String::new(),
            details: Value::Null,
        };
        assert_eq!(overall(&[r(Verdict::Valid)]), Verdict::Valid);
        assert_eq!(
            overall(&[r(Verdict::Valid), r(Verdict::Unknown)]),
            Verdict::Unknown
        );
        assert_eq!(
            overall(&[r(Verdict::Invalid), r(Verdict::Unknown)]),
            Verdict::Invalid
        );
        assert_eq!(overall(&[]), Verdict::Unknown);
        assert!(table(&[r(Verdict::Valid)]).contains("VALID"));
    }
}
