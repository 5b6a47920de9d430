//! The verdict on a run, the table and the JSON line.
//!
//! A run is **failed** (`failed_run: true`, exit status 1) when nothing
//! succeeded, or when more than `max_error_ratio` (10% by default) of the
//! requests sent failed: its throughput is then printed, but marked as not
//! a valid measurement. A run stopped by its deadline before `total`
//! requests is **incomplete**: its figures are over the requests done, and
//! a note says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::runner::{RunOptions, RunResult};
use crate::stats::{latency, Latency};
use crate::workload::Workload;

/// A judged run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Workload name (`put`, `range`, `txn-put`).
    pub workload: String,
    /// Workload parameters.
    pub params: Value,
    /// Run options.
    pub options: RunOptions,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// Requests never sent or cut off by the deadline.
    pub unfinished: u64,
    /// `txn-put` conflicts (compare failed), among `ok`.
    pub conflicts: u64,
    /// Seconds from the first request to the end.
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub qps: f64,
    /// Latency of successful requests.
    pub latency: Option<Latency>,
    /// Failed requests by class.
    pub errors: BTreeMap<String, u64>,
    /// Connections that could not be set up, by class.
    pub connect_errors: BTreeMap<String, u64>,
    /// Stopped by the deadline before all requests were done.
    pub deadline_reached: bool,
    /// The figures are not a valid measurement.
    pub failed_run: bool,
    /// Why, and other things to know.
    pub notes: Vec<String>,
}

impl Report {
    /// Judges `r`, a run of `workload` with `options`; a run fails if more
    /// than `max_error_ratio` of its requests failed, or none succeeded.
    pub fn new(
        workload: &Workload,
        options: &RunOptions,
        mut r: RunResult,
        max_error_ratio: f64,
    ) -> Report {
        let lat = latency(&mut r.latencies_ns);
        let done = r.ok + r.failed;
        let unfinished = options.total.saturating_sub(done);
        let elapsed_s = r.elapsed.as_secs_f64();
        let qps = if elapsed_s > 0.0 {
            r.ok as f64 / elapsed_s
        } else {
            0.0
        };
        let mut notes = Vec::new();
        let mut failed_run = false;
        // The first note is the reason of a failed run.
        if r.conns_up == 0 {
            failed_run = true;
            notes.push(format!(
                "no connection could be set up to {}",
                options.endpoints.join(",")
            ));
        } else if r.ok == 0 {
            failed_run = true;
            notes.push(format!(
                "no request succeeded ({} failed, {} not done)",
                r.failed, unfinished
            ));
        } else if r.failed as f64 > max_error_ratio * done as f64 {
            failed_run = true;
            notes.push(format!(
                "{:.1}% of the requests sent failed (more than {:.0}%)",
                100.0 * r.failed as f64 / done as f64,
                100.0 * max_error_ratio
            ));
        }
        if failed_run {
            // The reason first, then what it means.
            notes[0] = format!(
                "FAILED RUN: {}; the throughput and latencies are not a valid measurement",
                notes[0]
            );
        } else if r.failed > 0 {
            notes.push(format!(
                "{} request(s) failed; latencies are of the {} that succeeded",
                r.failed, r.ok
            ));
        }
        if !r.connect_errors.is_empty() && r.conns_up > 0 {
            notes.push(format!(
                "only {} of {} connections could be set up",
                r.conns_up, options.conns
            ));
        }
        if r.deadline_reached {
            notes.push(format!(
                "stopped at the --deadline ({}) after {done} of {} requests: figures are over the \
                 requests done",
                crate::duration::show(options.deadline),
                options.total
            ));
        }
        Report {
            workload: workload.name().to_string(),
            params: workload.params(),
            options: options.clone(),
            ok: r.ok,
            failed: r.failed,
            unfinished,
            conflicts: r.conflicts,
            elapsed_s,
            qps,
            latency: lat,
            errors: r.errors,
            connect_errors: r.connect_errors,
            deadline_reached: r.deadline_reached,
            failed_run,
            notes,
        }
    }

    /// The report as one line of JSON, its fields in a fixed order
    /// (`workload` first).
    pub fn json_line(&self) -> String {
        let l = self.latency;
        let ms = |v: Option<f64>| v.map_or(Value::Null, |x| json!((x * 1000.0).round() / 1000.0));
        let fields: Vec<(&str, Value)> = vec![
            ("workload", json!(self.workload)),
            ("failed_run", json!(self.failed_run)),
            ("qps", json!((self.qps * 10.0).round() / 10.0)),
            ("p50_ms", ms(l.map(|l| l.p50_ms))),
            ("p90_ms", ms(l.map(|l| l.p90_ms))),
            ("p99_ms", ms(l.map(|l| l.p99_ms))),
            ("p999_ms", ms(l.map(|l| l.p999_ms))),
            ("min_ms", ms(l.map(|l| l.min_ms))),
            ("max_ms", ms(l.map(|l| l.max_ms))),
            ("avg_ms", ms(l.map(|l| l.avg_ms))),
            ("ok", json!(self.ok)),
            ("failed", json!(self.failed)),
            ("unfinished", json!(self.unfinished)),
            ("conflicts", json!(self.conflicts)),
            ("errors", json!(self.errors)),
            ("connect_errors", json!(self.connect_errors)),
            (
                "elapsed_s",
                json!((self.elapsed_s * 1000.0).round() / 1000.0),
            ),
            ("deadline_reached", json!(self.deadline_reached)),
            ("notes", json!(self.notes)),
            ("endpoints", json!(self.options.endpoints)),
            ("conns", json!(self.options.conns)),
            ("clients", json!(self.options.clients)),
            ("total", json!(self.options.total)),
            ("rate", json!(self.options.rate)),
            ("timeout_ms", json!(self.options.timeout.as_millis() as u64)),
            (
                "deadline_ms",
                json!(self.options.deadline.as_millis() as u64),
            ),
            ("params", self.params.clone()),
        ];
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{}:{}", Value::from(k), v))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let o = &self.options;
        let _ = writeln!(
            s,
            "\n{} against {} ({} clients over {} connection(s){})",
            self.workload,
            o.endpoints.join(","),
            o.clients,
            o.conns,
            if o.rate > 0.0 {
                format!(", at most {} req/s", o.rate)
            } else {
                String::new()
            }
        );
        if self.failed_run {
            let _ = writeln!(
                s,
                "*** FAILED RUN: the figures below are NOT a valid measurement ***"
            );
        }
        let mut rows: Vec<(&str, String)> = vec![
            (
                "requests",
                format!("{} of {}", self.ok + self.failed, o.total),
            ),
            ("succeeded", self.ok.to_string()),
            ("failed", self.failed.to_string()),
            ("not done", self.unfinished.to_string()),
        ];
        if self.workload == "txn-put" {
            rows.push(("txn conflicts", self.conflicts.to_string()));
        }
        rows.push(("elapsed", format!("{:.3} s", self.elapsed_s)));
        rows.push(("qps (ok/s)", format!("{:.1}", self.qps)));
        if let Some(l) = self.latency {
            for (name, v) in [
                ("p50", l.p50_ms),
                ("p90", l.p90_ms),
                ("p99", l.p99_ms),
                ("p99.9", l.p999_ms),
                ("min", l.min_ms),
                ("max", l.max_ms),
                ("avg", l.avg_ms),
            ] {
                rows.push((name, format!("{v:.3} ms")));
            }
        } else {
            rows.push(("latency", "none (no request succeeded)".into()));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let vw = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let line = format!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(vw));
        let _ = writeln!(s, "{line}");
        for (k, v) in &rows {
            let _ = writeln!(s, "| {k:<w$} | {v:>vw$} |");
        }
        let _ = writeln!(s, "{line}");
        if !self.errors.is_empty() || !self.connect_errors.is_empty() {
            let _ = writeln!(s, "errors (count, class):");
            for (class, n) in self.connect_errors.iter().chain(&self.errors) {
                let _ = writeln!(s, "  {n:>8}  {class}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}
