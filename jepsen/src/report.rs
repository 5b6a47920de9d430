//! `report.html`: one self-contained page (inline SVG, no scripts) with the
//! verdicts, throughput and latency over time with the faults shaded, and,
//! for a linearizability violation, the operations of the failing key
//! around the point where the search got stuck.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::checker::register::COMPARE_FAILED;
use crate::checker::{overall, CheckResult, Verdict};
use crate::history::{client_ops, Event, EventType, Op, Process};

const W: f64 = 960.0;
const H: f64 = 220.0;
const ML: f64 = 60.0;
const MR: f64 = 20.0;
const MT: f64 = 14.0;
const MB: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(kind: EventType) -> &'static str {
    match kind {
        EventType::Ok => "#2e7d32",
        EventType::Fail => "#c62828",
        EventType::Info => "#ef6c00",
        EventType::Invoke => "#555",
    }
}

/// A fault, from its start to its end (seconds).
struct Interval {
    from: f64,
    to: f64,
    label: String,
}

/// Member names of a JSON list.
fn names(v: &Value) -> String {
    v.as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// "kill n2 (leader)", "partition n1 n3 | n2 (leader n2)", "bridge n1 |
/// n2 | n3 (leader n1)", "member-remove n2 (leader)".
fn fault_label(e: &Event) -> String {
    let v = &e.value;
    let what = if e.f == "partition" || e.f == "bridge" {
        let groups = v["groups"]
            .as_array()
            .map(|gs| gs.iter().map(names).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default();
        match v["leader"].as_str() {
            Some(l) => format!("{groups} (leader {l})"),
            None => groups,
        }
    } else {
        let leader = if v["leader"] == true { " (leader)" } else { "" };
        format!("{}{leader}", v["node"].as_str().unwrap_or("?"))
    };
    format!("{} {what}", e.f)
}

/// The faults in force, from the nemesis events; a compaction lasts from
/// its request to the end of the defragmentations after it.
fn faults(events: &[Event], end: f64) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    let mut compaction: Option<Interval> = None;
    for e in events
        .iter()
        .filter(|e| e.process == Process::named("nemesis"))
    {
        let t = e.time as f64 / 1e9;
        match (e.f.as_str(), e.kind) {
            ("kill" | "pause" | "partition" | "bridge", EventType::Ok) => {
                open = Some((t, fault_label(e)))
            }
            // Removed, or perhaps: the member is out either way.
            ("member-remove", EventType::Ok | EventType::Info) => open = Some((t, fault_label(e))),
            ("restart" | "resume" | "heal" | "member-add", EventType::Ok | EventType::Info) => {
                if let Some((from, label)) = open.take() {
                    out.push(Interval { from, to: t, label });
                }
            }
            ("compact", EventType::Invoke) => {
                out.extend(compaction.take());
                compaction = Some(Interval {
                    from: t,
                    to: t,
                    label: format!("compact at {}", e.value["revision"]),
                });
            }
            ("compact" | "defragment", _) => {
                if let Some(c) = compaction.as_mut() {
                    c.to = t;
                }
            }
            _ => {}
        }
    }
    out.extend(compaction);
    if let Some((from, label)) = open {
        out.push(Interval {
            from,
            to: end,
            label,
        });
    }
    out.sort_by(|a, b| a.from.total_cmp(&b.from));
    out
}

/// An SVG chart frame: x in seconds over `[0, tmax]`, y over `[0, ymax]`
/// (log10 if `log`), faults shaded; `body` draws with the given scales.
fn chart(
    title: &str,
    tmax: f64,
    ymax: f64,
    log: bool,
    shades: &[Interval],
    body: impl Fn(&dyn Fn(f64) -> f64, &dyn Fn(f64) -> f64) -> String,
) -> String {
    let sx = move |t: f64| ML + (t / tmax.max(1e-9)) * (W - ML - MR);
    let ymin_log = 0.1f64;
    let sy = move |v: f64| {
        let f = if log {
            let (lo, hi) = (ymin_log.log10(), ymax.max(ymin_log * 10.0).log10());
            (v.max(ymin_log).log10() - lo) / (hi - lo)
        } else {
            v / ymax.max(1e-9)
        };
        H - MB - f.clamp(0.0, 1.0) * (H - MT - MB)
    };
    let mut s = format!(
        "<h3>{}</h3><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"11\" font-family=\"sans-serif\">",
        esc(title)
    );
    for f in shades {
        let (x0, x1) = (sx(f.from), sx(f.to));
        let _ = write!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{MT}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#ffcdd2\" opacity=\"0.6\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#b71c1c\">{}</text>",
            (x1 - x0).max(1.0),
            H - MT - MB,
            esc(&f.label),
            x0 + 2.0,
            MT + 10.0,
            esc(&f.label)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{ML}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/><line x1=\"{ML}\" y1=\"{MT}\" x2=\"{ML}\" y2=\"{0}\" stroke=\"#333\"/>",
        H - MB,
        W - MR
    );
    let step = nice_step(tmax / 10.0);
    let mut t = 0.0;
    while t <= tmax + 1e-9 {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}s</text>",
            sx(t),
            H - MB + 14.0
        );
        t += step;
    }
    let ticks: Vec<f64> = if log {
        let mut v = Vec::new();
        let mut x = ymin_log;
        while x <= ymax * 1.01 {
            v.push(x);
            x *= 10.0;
        }
        v
    } else {
        (0..=4).map(|k| ymax * k as f64 / 4.0).collect()
    };
    for y in ticks {
        let label = if y >= 10.0 || y == 0.0 {
            format!("{y:.0}")
        } else {
            format!("{y}")
        };
        let _ = write!(
            s,
            "<text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text><line x1=\"{ML}\" y1=\"{ly:.1}\" x2=\"{lx:.1}\" y2=\"{ly:.1}\" stroke=\"#eee\"/>",
            tx = ML - 4.0,
            ty = sy(y) + 4.0,
            ly = sy(y),
            lx = W - MR,
        );
    }
    s.push_str(&body(&sx, &sy));
    s.push_str("</svg>");
    s
}

fn nice_step(raw: f64) -> f64 {
    for s in [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if s >= raw {
            return s;
        }
    }
    1200.0
}

fn throughput(ops: &[Op], tmax: f64, shades: &[Interval]) -> String {
    let buckets = tmax.ceil().max(1.0) as usize;
    let mut counts = vec![[0u32; 3]; buckets + 1];
    for op in ops {
        let Some(end) = op.end else { continue };
        let b = ((end as f64 / 1e9) as usize).min(buckets);
        let k = match op.kind {
            EventType::Ok => 0,
            EventType::Fail => 1,
            _ => 2,
        };
        counts[b][k] += 1;
    }
    let ymax = counts
        .iter()
        .flat_map(|c| c.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    chart(
        "Throughput (completions per second)",
        tmax,
        ymax,
        false,
        shades,
        |sx, sy| {
            let mut s = String::new();
            for (k, kind) in [EventType::Ok, EventType::Fail, EventType::Info]
                .iter()
                .enumerate()
            {
                let pts: Vec<String> = counts
                    .iter()
                    .enumerate()
                    .map(|(b, c)| format!("{:.1},{:.1}", sx(b as f64 + 0.5), sy(c[k] as f64)))
                    .collect();
                let _ = write!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                    color(*kind),
                    pts.join(" ")
                );
            }
            s
        },
    )
}

fn latency(ops: &[Op], tmax: f64, shades: &[Interval]) -> String {
    let done: Vec<&Op> = ops.iter().filter(|o| o.end.is_some()).collect();
    let every = (done.len() / 20_000).max(1);
    let ymax = done.iter().filter_map(|o| o.latency()).max().unwrap_or(1) as f64 / 1e6;
    chart(
        "Latency (ms, log scale) by invocation time",
        tmax,
        ymax.max(1.0),
        true,
        shades,
        |sx, sy| {
            let mut s = String::new();
            for op in done.iter().step_by(every) {
                let lat = op.latency().unwrap_or(0) as f64 / 1e6;
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"{}\" opacity=\"0.7\"/>",
                    sx(op.start as f64 / 1e9),
                    sy(lat),
                    color(op.kind)
                );
            }
            s
        },
    )
}

fn op_label(o: &Value) -> String {
    let f = o["f"].as_str().unwrap_or("?");
    let ty = o["type"].as_str().unwrap_or("?");
    match (f, ty) {
        ("read", "ok") => format!("read → {}", o["result"]),
        ("read", _) => format!("read ({ty})"),
        ("cas", "fail") if o["error"] == "compare-failed" => format!("cas {} ✗", o["args"]),
        _ => format!("{f} {} ({ty})", o["args"]),
    }
}

/// The failing window of one key: one lane per process, a bar per op.
fn timeline(f: &Value) -> String {
    let Some(window) = f["window"].as_array() else {
        return String::new();
    };
    let stuck = &f["op"];
    let t0 = window
        .iter()
        .filter_map(|o| o["start"].as_u64())
        .min()
        .unwrap_or(0);
    let t1 = window
        .iter()
        .filter_map(|o| o["end"].as_u64().or(o["start"].as_u64()))
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    let span = (t1 - t0) as f64 * 1.15;
    let mut lanes: Vec<String> = Vec::new();
    for o in window {
        let p = o["process"].to_string();
        if !lanes.contains(&p) {
            lanes.push(p);
        }
    }
    let lane_h = 26.0;
    let h = MT + lanes.len() as f64 * lane_h + MB;
    let sx = |t: u64| 90.0 + ((t - t0) as f64 / span) * (W - 110.0);
    let mut s =
        format!("<svg width=\"{W}\" height=\"{h}\" font-size=\"10\" font-family=\"sans-serif\">");
    for (k, p) in lanes.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\">process {}</text>",
            MT + k as f64 * lane_h + 16.0,
            esc(p)
        );
    }
    for o in window {
        let me = o["process"].to_string();
        let lane = lanes.iter().position(|p| *p == me).unwrap_or(0);
        let start = o["start"].as_u64().unwrap_or(t0);
        let (end, open) = match o["end"].as_u64() {
            Some(e) => (e, false),
            None => (t0 + span as u64, true),
        };
        let ty = o["type"].as_str().unwrap_or("info");
        let fill = match ty {
            "ok" => "#c8e6c9",
            "fail" => "#ffcdd2",
            _ => "#ffe0b2",
        };
        let is_stuck = o["start"] == stuck["start"] && o["process"] == stuck["process"];
        let y = MT + lane as f64 * lane_h + 3.0;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"{}\" stroke-width=\"{}\"{}><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            sx(start),
            (sx(end) - sx(start)).max(2.0),
            lane_h - 6.0,
            if is_stuck { "#c62828" } else { "#666" },
            if is_stuck { 2 } else { 1 },
            if open { " stroke-dasharray=\"4 2\"" } else { "" },
            esc(&o.to_string()),
            sx(start) + 3.0,
            y + 13.0,
            esc(&op_label(o))
        );
    }
    let _ = write!(
        s,
        "<text x=\"90\" y=\"{:.1}\">{:.3}s … {:.3}s (dashed: outcome unknown, open until the end; red: the operation that could not be linearized)</text></svg>",
        h - 8.0,
        t0 as f64 / 1e9,
        t1 as f64 / 1e9
    );
    s
}

fn verdict_style(v: Verdict) -> &'static str {
    match v {
        Verdict::Valid => "background:#c8e6c9",
        Verdict::Invalid => "background:#ffcdd2",
        Verdict::Unknown => "background:#ffe0b2",
    }
}

/// Writes the report.
pub fn write(
    path: &Path,
    title: &str,
    events: &[Event],
    results: &[CheckResult],
) -> anyhow::Result<()> {
    std::fs::write(path, render(title, events, results))
        .with_context(|| format!("{}", path.display()))
}

/// The report as HTML.
pub fn render(title: &str, events: &[Event], results: &[CheckResult]) -> String {
    let ops = client_ops(events);
    let tmax = events.iter().map(|e| e.time).max().unwrap_or(0) as f64 / 1e9;
    let shades = faults(events, tmax);
    let mut h = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>ballast-jepsen report</title>\
         <style>body{font-family:sans-serif;margin:20px;max-width:1000px}td,th{padding:3px 8px;text-align:left;vertical-align:top}\
         table{border-collapse:collapse}tr{border-bottom:1px solid #ddd}code{font-size:12px}</style></head><body>",
    );
    let v = overall(results);
    let _ = write!(
        h,
        "<h1>ballast-jepsen: <span style=\"{}\">{}</span></h1><p>{}</p>",
        verdict_style(v),
        v.as_str().to_uppercase(),
        esc(title)
    );
    h.push_str("<table><tr><th>checker</th><th>verdict</th><th>summary</th></tr>");
    for r in results {
        let _ = write!(
            h,
            "<tr><td>{}</td><td style=\"{}\">{}</td><td>{}</td></tr>",
            esc(&r.name),
            verdict_style(r.verdict),
            r.verdict.as_str(),
            esc(&r.summary)
        );
    }
    let count = |k: EventType| ops.iter().filter(|o| o.kind == k).count();
    let (ok, fail, info) = (
        count(EventType::Ok),
        count(EventType::Fail),
        count(EventType::Info),
    );
    let total = (ok + fail + info).max(1);
    let compare_false = ops
        .iter()
        .filter(|o| o.error.as_deref() == Some(COMPARE_FAILED))
        .count();
    let _ = write!(
        h,
        "</table><p>{} client operations: <b style=\"color:{}\">{ok} ok</b>, <b style=\"color:{}\">{fail} fail</b>, \
         <b style=\"color:{}\">{info} info</b> (outcome unknown); {compare_false} of the failures are cas operations that found another value; \
         availability (answered / all) {:.1}%. Shaded: faults in force.</p>",
        ok + fail + info,
        color(EventType::Ok),
        color(EventType::Fail),
        color(EventType::Info),
        100.0 * (ok + compare_false) as f64 / total as f64
    );
    h.push_str(&throughput(&ops, tmax, &shades));
    h.push_str(&latency(&ops, tmax, &shades));
    for r in results {
        if let Some(fails) = r.details["failures"].as_array() {
            for f in fails.iter().take(5) {
                let _ = write!(
                    h,
                    "<h3>Not linearizable: key <code>{}</code></h3><p>Stuck at {} after linearizing {} ops; values possible before it: <code>{}</code>. {}</p>",
                    esc(f["key"].as_str().unwrap_or("?")),
                    esc(&op_label(&f["op"])),
                    f["linearized"],
                    esc(&f["possible_values"].to_string()),
                    if f["shrunk"] == true {
                        format!(
                            "The {} operations below are not linearizable on their own, whatever the key held before them (the smallest window found).",
                            f["window"].as_array().map_or(0, Vec::len)
                        )
                    } else {
                        "The operations around it:".to_string()
                    }
                );
                h.push_str(&timeline(f));
            }
        }
        if let Some(wins) = r.details["windows"].as_array() {
            for w in wins.iter().take(5) {
                let _ = write!(
                    h,
                    "<h3>{}: {}</h3>",
                    esc(&r.name),
                    esc(w["title"].as_str().unwrap_or("?"))
                );
                h.push_str(&timeline(w));
            }
        }
        for field in [
            "problems",
            "lagging",
            "unknown",
            "crashes",
            "missing",
            "skipped_by_compaction",
        ] {
            if let Some(list) = r.details[field].as_array().filter(|l| !l.is_empty()) {
                let _ = write!(h, "<h3>{}: {field}</h3><ul>", esc(&r.name));
                for p in list.iter().take(20) {
                    let text = p
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| p.to_string());
                    let _ = write!(h, "<li><code>{}</code></li>", esc(&text));
                }
                h.push_str("</ul>");
            }
        }
    }
    h.push_str("<h3>Faults</h3><table><tr><th>from</th><th>to</th><th>fault</th></tr>");
    for f in &shades {
        let _ = write!(
            h,
            "<tr><td>{:.1}s</td><td>{:.1}s</td><td>{}</td></tr>",
            f.from,
            f.to,
            esc(&f.label)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::check_all;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn renders_a_failure() {
        let mut events = Vec::new();
        let mut push = |p: u64, kind, f: &str, v: Value, t: u64| {
            let mut e = Event::new(Process::Worker(p), kind, f, v).key("k");
            e.time = t;
            events.push(e);
        };
        push(0, EventType::Invoke, "write", json!(1), 0);
        push(0, EventType::Ok, "write", json!(1), 1_000_000);
        push(0, EventType::Invoke, "write", json!(2), 2_000_000);
        push(0, EventType::Ok, "write", json!(2), 3_000_000);
        push(1, EventType::Invoke, "read", Value::Null, 4_000_000);
        push(1, EventType::Ok, "read", json!(1), 5_000_000);
        let mut k = Event::new(
            Process::named("nemesis"),
            EventType::Ok,
            "kill",
            json!({"node": "n1"}),
        );
        k.time = 500_000;
        events.push(k);
        let results = check_all(&events, Duration::from_secs(2));
        let html = render("t<1>", &events, &results);
        assert!(html.contains("INVALID"));
        assert!(html.contains("Not linearizable"));
        assert!(html.contains("kill n1"));
        assert!(html.contains("t&lt;1&gt;"));
        assert!(html.contains("<svg"));
    }

    #[test]
    fn new_faults_are_shaded() {
        let at = |f: &str, kind, v: Value, t: u64| {
            let mut e = Event::new(Process::named("nemesis"), kind, f, v);
            e.time = t * 1_000_000_000;
            e
        };
        let events = vec![
            at("member-remove", EventType::Invoke, json!({"node": "n2"}), 1),
            at(
                "member-remove",
                EventType::Ok,
                json!({"node": "n2", "leader": true}),
                2,
            ),
            at("member-add", EventType::Invoke, json!({"node": "n2"}), 4),
            at("member-add", EventType::Ok, json!({"node": "n2"}), 5),
            at("compact", EventType::Invoke, json!({"revision": 40}), 6),
            at("compact", EventType::Ok, json!({"revision": 40}), 6),
            at("defragment", EventType::Invoke, json!({"node": "n1"}), 6),
            at("defragment", EventType::Ok, json!({"node": "n1"}), 7),
            at(
                "bridge",
                EventType::Ok,
                json!({"groups": [["n1"], ["n2"], ["n3"]], "bridge": "n2", "leader": "n1"}),
                8,
            ),
            at("heal", EventType::Ok, Value::Null, 9),
        ];
        let f = faults(&events, 10.0);
        let labels: Vec<(f64, f64, &str)> =
            f.iter().map(|i| (i.from, i.to, i.label.as_str())).collect();
        assert_eq!(
            labels,
            vec![
                (2.0, 5.0, "member-remove n2 (leader)"),
                (6.0, 7.0, "compact at 40"),
                (8.0, 9.0, "bridge n1 | n2 | n3 (leader n1)"),
            ]
        );
    }
}
