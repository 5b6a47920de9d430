//! Charts of a `scripts/bench-compare.sh` run, from the JSON lines it
//! collects (`ballast-bench chart`).
//!
//! Three kinds of line are read, told apart by their fields:
//!
//! - a **run**: `ballast-bench`'s report plus `system` (`ballast` or
//!   `etcd`), `round`, `wl` (workload: `put`, `range-l`, ...) and
//!   `other_cpu` (CPUs the rest of the machine used during the run);
//! - a **member** record: `system`, `member`, `vmhwm_kb` (peak RSS),
//!   `du_kb` and `apparent_kb` (data directory), read at the end of a round;
//! - the same with `"stage": "load-1m"`: read after loading a fresh cluster
//!   with a million keys. A run line with that stage is the load itself.
//!
//! Figures are medians over the runs that did not fail (as in the doc's
//! tables); member figures are the highest over the rounds.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chart::{BarChart, Group, Series};

/// The systems, in bar order, with their legend names and colours.
pub const SYSTEMS: [(&str, &str, &str); 2] = [
    ("ballast", "Ballast", "#3367d6"),
    ("etcd", "etcd 3.4", "#e8710a"),
];

/// The stage of the records read after loading a million keys.
pub const LOAD_STAGE: &str = "load-1m";

/// One measured run of one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// `ballast` or `etcd`.
    pub system: String,
    /// Workload name as bench-compare calls it (`put`, `range-l`, ...).
    pub wl: String,
    /// Successful requests per second.
    pub qps: f64,
    /// p99 latency in ms (`None` if nothing succeeded).
    pub p99_ms: Option<f64>,
    /// The run failed: its figures are not a measurement.
    pub failed_run: bool,
    /// CPUs the rest of the machine used during the run, if recorded.
    pub other_cpu: Option<f64>,
}

/// One member's footprint, at the end of a round or after the 1M load.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// `ballast` or `etcd`.
    pub system: String,
    /// `m1`, `m2`, `m3`.
    pub member: String,
    /// Peak RSS (VmHWM) in KiB, if it could be read.
    pub vmhwm_kb: Option<f64>,
    /// Data directory, blocks allocated, KiB.
    pub du_kb: Option<f64>,
    /// After loading a million keys (else after a round's workloads).
    pub load_1m: bool,
    /// Keys loaded (`keys`), for the 1M-key records.
    pub keys: Option<u64>,
}

/// Everything read from the input files.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Workload runs (not the 1M load).
    pub runs: Vec<Run>,
    /// Member records.
    pub members: Vec<Member>,
}

fn num(v: &Value, field: &str) -> Option<f64> {
    v.get(field).and_then(Value::as_f64)
}

fn text(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_string)
}

impl Results {
    /// Reads JSON lines (blank lines are skipped; lines of other kinds are
    /// ignored).
    ///
    /// # Errors
    /// A line that is not JSON, naming `source` and the line number.
    pub fn add_lines(&mut self, source: &str, lines: &str) -> Result<(), String> {
        for (n, line) in lines.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{source}:{}: not JSON: {e}", n + 1))?;
            let Some(system) = text(&v, "system") else {
                continue;
            };
            let load_1m = text(&v, "stage").as_deref() == Some(LOAD_STAGE);
            if let Some(member) = text(&v, "member") {
                self.members.push(Member {
                    system,
                    member,
                    vmhwm_kb: num(&v, "vmhwm_kb"),
                    du_kb: num(&v, "du_kb"),
                    load_1m,
                    keys: v.get("keys").and_then(Value::as_u64),
                });
            } else if let (Some(wl), Some(qps), false) = (text(&v, "wl"), num(&v, "qps"), load_1m) {
                self.runs.push(Run {
                    system,
                    wl,
                    qps,
                    p99_ms: num(&v, "p99_ms"),
                    failed_run: v.get("failed_run").and_then(Value::as_bool) == Some(true),
                    other_cpu: num(&v, "other_cpu"),
                });
            }
        }
        Ok(())
    }

    /// Reads each file with [`Results::add_lines`].
    ///
    /// # Errors
    /// A file that cannot be read, or a line that is not JSON.
    pub fn read(paths: &[PathBuf]) -> Result<Results, String> {
        let mut r = Results::default();
        for p in paths {
            let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            r.add_lines(&p.display().to_string(), &s)?;
        }
        Ok(r)
    }
}

/// The median (the mean of the two middle values for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Workloads in the doc's order, then any other in name order.
fn workloads(runs: &[Run]) -> Vec<String> {
    const ORDER: [&str; 4] = ["put", "range-l", "range-s", "txn-put"];
    let mut wls: Vec<String> = ORDER
        .iter()
        .filter(|w| runs.iter().any(|r| r.wl == **w))
        .map(|w| w.to_string())
        .collect();
    let mut rest: Vec<String> = runs
        .iter()
        .map(|r| r.wl.clone())
        .filter(|w| !ORDER.contains(&w.as_str()))
        .collect();
    rest.sort();
    rest.dedup();
    wls.extend(rest);
    wls
}

fn workload_label(wl: &str) -> String {
    match wl {
        "range-l" => "range\nlinearizable".into(),
        "range-s" => "range\nserializable".into(),
        "txn-put" => "txn-put\n(read + CAS)".into(),
        w => w.into(),
    }
}

fn series() -> Vec<Series> {
    SYSTEMS
        .iter()
        .map(|(_, name, color)| Series {
            name: name.to_string(),
            color: color.to_string(),
        })
        .collect()
}

fn ratio_label() -> Option<String> {
    Some(format!("{}/{}", SYSTEMS[0].1, SYSTEMS[1].0))
}

/// Medians per workload of `value` over the valid runs of each system
/// whose other CPU was below `max_other_cpu` (if given).
fn run_groups(
    r: &Results,
    max_other_cpu: Option<f64>,
    value: impl Fn(&Run) -> Option<f64>,
) -> Vec<Group> {
    let valid: Vec<&Run> = r
        .runs
        .iter()
        .filter(|run| !run.failed_run)
        .filter(|run| match (max_other_cpu, run.other_cpu) {
            (Some(max), Some(o)) => o < max,
            _ => true,
        })
        .collect();
    workloads(&r.runs)
        .into_iter()
        .map(|wl| Group {
            label: workload_label(&wl),
            values: SYSTEMS
                .iter()
                .map(|(sys, _, _)| {
                    median(
                        valid
                            .iter()
                            .filter(|run| run.system == *sys && run.wl == wl)
                            .filter_map(|run| value(run))
                            .collect(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// A key count as `1M`, `20k` or `1234`.
fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Per member (`m1`, ...), the highest of `value` in MiB over the records
/// of each system, after the rounds and (if recorded) after the 1M load.
fn member_groups(r: &Results, value: impl Fn(&Member) -> Option<f64>) -> Vec<Group> {
    let mut names: Vec<String> = r.members.iter().map(|m| m.member.clone()).collect();
    names.sort();
    names.dedup();
    let mut groups = Vec::new();
    let keys = r
        .members
        .iter()
        .filter(|m| m.load_1m)
        .find_map(|m| m.keys)
        .unwrap_or(1_000_000);
    for load_1m in [false, true] {
        if !r.members.iter().any(|m| m.load_1m == load_1m) {
            continue;
        }
        for name in &names {
            let values = SYSTEMS
                .iter()
                .map(|(sys, _, _)| {
                    r.members
                        .iter()
                        .filter(|m| m.system == *sys && &m.member == name && m.load_1m == load_1m)
                        .filter_map(&value)
                        .fold(None, |acc: Option<f64>, v| {
                            Some(acc.map_or(v, |a| a.max(v)))
                        })
                        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
                })
                .collect();
            groups.push(Group {
                label: if load_1m {
                    format!("{name}\nafter {} keys", short_count(keys))
                } else {
                    format!("{name}\nafter the rounds")
                },
                values,
            });
        }
    }
    groups
}

/// The charts of `r`, by file name: `throughput.svg`, `latency-p99.svg`
/// (if there are runs), `rss.svg` and `data-dir.svg` (if there are member
/// records). `max_other_cpu`: only runs during which the rest of the
/// machine used fewer CPUs; `scope` says which runs, in the subtitles.
pub fn charts(r: &Results, max_other_cpu: Option<f64>, scope: &str) -> Vec<(String, BarChart)> {
    let mut out = Vec::new();
    let chart = |title: &str, subtitle: String, unit: &str, groups| BarChart {
        title: title.into(),
        subtitle,
        unit: unit.into(),
        series: series(),
        groups,
        ratio_label: ratio_label(),
    };
    if !r.runs.is_empty() {
        out.push((
            "throughput.svg".to_string(),
            chart(
                "Throughput, three members each",
                format!("successful requests/s, median of {scope}; higher is better"),
                "requests/s",
                run_groups(r, max_other_cpu, |run| Some(run.qps)),
            ),
        ));
        out.push((
            "latency-p99.svg".to_string(),
            chart(
                "p99 latency, three members each",
                format!("ms per request as the client saw it, median of {scope}; lower is better"),
                "ms",
                run_groups(r, max_other_cpu, |run| run.p99_ms),
            ),
        ));
    }
    if !r.members.is_empty() {
        let when = if r.members.iter().any(|m| m.load_1m) {
            "highest at the end of the rounds, and after the key load"
        } else {
            "highest at the end of the rounds"
        };
        out.push((
            "rss.svg".to_string(),
            chart(
                "Peak RSS per member",
                format!("VmHWM in MiB, {when}; lower is better"),
                "MiB",
                member_groups(r, |m| m.vmhwm_kb),
            ),
        ));
        out.push((
            "data-dir.svg".to_string(),
            chart(
                "Data directory per member",
                format!("MiB allocated on disk (du), {when}; lower is better"),
                "MiB",
                member_groups(r, |m| m.du_kb),
            ),
        ));
    }
    out
}

/// Writes [`charts`] of `r` into `dir` (created if needed) and returns the
/// paths written.
///
/// # Errors
/// If the directory or a file cannot be written.
pub fn write_charts(
    r: &Results,
    dir: &Path,
    max_other_cpu: Option<f64>,
    scope: &str,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, chart) in charts(r, max_other_cpu, scope) {
        let path = dir.join(name);
        std::fs::write(&path, chart.to_svg()).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::chart::tests::check_well_formed;

    /// The values of each group of `chart`, by label.
    fn values_by_label(chart: &BarChart) -> BTreeMap<String, Vec<Option<f64>>> {
        chart
            .groups
            .iter()
            .map(|g| (g.label.clone(), g.values.clone()))
            .collect()
    }

    fn run(system: &str, wl: &str, qps: f64, p99: f64, failed: bool, other: f64) -> String {
        format!(
            r#"{{"workload":"put","failed_run":{failed},"qps":{qps},"p99_ms":{p99},"system":"{system}","round":1,"wl":"{wl}","loadavg":"1.0 1.0 1.0","other_cpu":{other},"own_cpu":1.5}}"#
        )
    }

    fn sample() -> Results {
        let mut lines = vec![
            run("ballast", "put", 4651.6, 36.43, false, 0.83),
            run("ballast", "put", 7864.6, 20.554, false, 0.0),
            run("ballast", "put", 10295.1, 15.944, false, 0.0),
            run("ballast", "put", 99999.0, 1.0, true, 0.0),
            run("etcd", "put", 7704.6, 28.408, false, 0.0),
            run("etcd", "put", 5846.0, 44.531, false, 0.41),
            run("ballast", "range-s", 27390.6, 11.235, false, 0.0),
            run("etcd", "range-s", 15572.0, 26.43, false, 0.0),
            run("etcd", "watch", 1.0, 1.0, false, 0.0),
        ];
        lines.push(String::new());
        lines.push(r#"{"system":"ballast","round":1,"member":"m1","vmhwm_kb":73420,"du_kb":152576,"apparent_kb":23756}"#.into());
        lines.push(r#"{"system":"ballast","round":2,"member":"m1","vmhwm_kb":70000,"du_kb":1024,"apparent_kb":23756}"#.into());
        lines.push(r#"{"system":"etcd","round":1,"member":"m1","vmhwm_kb":146944,"du_kb":139776,"apparent_kb":139776}"#.into());
        lines.push(r#"{"system":"ballast","stage":"load-1m","keys":1000000,"member":"m1","vmhwm_kb":204800,"du_kb":512000,"apparent_kb":1}"#.into());
        lines.push(r#"{"system":"etcd","stage":"load-1m","member":"m1","vmhwm_kb":null,"du_kb":1048576,"apparent_kb":1}"#.into());
        lines.push(r#"{"system":"ballast","stage":"load-1m","wl":"put","qps":5000}"#.into());
        let mut r = Results::default();
        r.add_lines("sample", &lines.join("\n")).unwrap();
        r
    }

    #[test]
    fn reads_runs_and_members() {
        let r = sample();
        assert_eq!(r.runs.len(), 9, "the 1M load is not a workload run");
        assert_eq!(r.members.len(), 5);
        assert_eq!(r.members.iter().filter(|m| m.load_1m).count(), 2);
        assert!(r.runs[3].failed_run);
        assert_eq!(r.runs[0].other_cpu, Some(0.83));
        let mut bad = Results::default();
        let e = bad.add_lines("f.jsonl", "{}\nnot json").unwrap_err();
        assert!(e.starts_with("f.jsonl:2:"), "{e}");
    }

    #[test]
    fn medians_of_valid_runs() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let r = sample();
        let all = charts(&r, None, "all valid runs");
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "throughput.svg",
                "latency-p99.svg",
                "rss.svg",
                "data-dir.svg"
            ]
        );
        let qps = values_by_label(&all[0].1);
        // The failed run (99999) is left out.
        assert_eq!(
            qps["put"],
            vec![Some(7864.6), Some((7704.6 + 5846.0) / 2.0)]
        );
        assert_eq!(
            qps["range\nserializable"],
            vec![Some(27390.6), Some(15572.0)]
        );
        assert_eq!(qps["watch"], vec![None, Some(1.0)]);
        // Order: the doc's workloads first.
        assert_eq!(all[0].1.groups[0].label, "put");
        assert_eq!(all[0].1.groups.last().unwrap().label, "watch");
        let p99 = values_by_label(&all[1].1);
        assert_eq!(p99["put"][0], Some(20.554));
        // Quiet runs only.
        let quiet = charts(&r, Some(0.2), "quiet runs");
        let qps = values_by_label(&quiet[0].1);
        assert_eq!(
            qps["put"],
            vec![Some((7864.6 + 10295.1) / 2.0), Some(7704.6)]
        );
    }

    #[test]
    fn member_charts_take_the_highest_and_show_the_1m_load() {
        let r = sample();
        let all = charts(&r, None, "all valid runs");
        let rss = values_by_label(&all[2].1);
        assert_eq!(rss["m1\nafter the rounds"], vec![Some(71.7), Some(143.5)]);
        assert_eq!(rss["m1\nafter 1M keys"], vec![Some(200.0), None]);
        let du = values_by_label(&all[3].1);
        assert_eq!(du["m1\nafter the rounds"], vec![Some(149.0), Some(136.5)]);
        assert_eq!(du["m1\nafter 1M keys"], vec![Some(500.0), Some(1024.0)]);
        assert_eq!(short_count(1_000_000), "1M");
        assert_eq!(short_count(20_000), "20k");
        assert_eq!(short_count(1234), "1234");
    }

    #[test]
    fn writes_valid_svg_files_with_values_and_ratios() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("charts");
        let written = write_charts(&sample(), &out, None, "all valid runs").unwrap();
        assert_eq!(written.len(), 4);
        let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        for t in [
            "7,865",
            "6,775",
            "27,391",
            "Ballast/etcd 1.16×",
            "Ballast/etcd 1.76×",
        ] {
            assert!(svg.contains(t), "missing {t:?} in\n{svg}");
        }
        let svg = std::fs::read_to_string(out.join("rss.svg")).unwrap();
        check_well_formed(&svg).unwrap();
        for t in ["71.7", "144", "200", "after 1M keys", "Ballast/etcd 0.50×"] {
            assert!(svg.contains(t), "missing {t:?} in\n{svg}");
        }
        // Nothing to chart: no file.
        let none = write_charts(&Results::default(), &out.join("empty"), None, "x").unwrap();
        assert!(none.is_empty());
    }
}
